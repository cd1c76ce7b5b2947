/*
 * wsdisk.c - the per-sandbox disk quota (wsdisk.h): one loop-mounted ext4 image per workspace.
 *
 * Why a file system per workspace: the root file system of such hosts has no project quotas,
 * and per-uid quotas would not bound a workspace (its files keep the uid of whichever sandbox
 * wrote them) nor give an exact ENOSPC. A loop-mounted image does both, costs ~228 KiB of real
 * disk when empty (sparse) and a mkfs + mount per new workspace (tens of ms, measured in
 * docs/internal/DESIGN-NOTES.md).
 *
 * The image: ext4 without a journal (the workspace is scratch state whose durable copy is the
 * per-prompt snapshot on the host's file system; a machine crash is covered by e2fsck -p before
 * the next mount, and a journal would cost 4 MiB of real disk per workspace and a second write
 * of every metadata block), without resize_inode (never grown; 4 MiB less), with no reserved
 * blocks (the sandbox gets all of it), inode tables left for the kernel to treat as unused
 * (lazy_itable_init + mount option noinit_itable: zeroing them would write ~160 MiB into a
 * 10 GiB image). Mounted nodev,nosuid,noatime. The loop device is attached with
 * LO_FLAGS_AUTOCLEAR: it goes away with the last unmount of its file system.
 *
 * Threads: the struct is immutable after wsdisk_open; every call works on paths its caller
 * owns. Loop devices are allocated with LOOP_CTL_GET_FREE, retried when another thread (or
 * process) configured the same device first.
 */
#include "sandbox/wsdisk.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MKFS         "/usr/sbin/mke2fs"
#define FSCK         "/usr/sbin/e2fsck"
#define LOOP_CONTROL "/dev/loop-control"
#define IMG_SUFFIX   ".disk"
#define MOUNT_FLAGS  (MS_NODEV | MS_NOSUID | MS_NOATIME)
#define MOUNT_DATA   "noinit_itable"

struct wsdisk {
    char *data_dir; /* absolute */
    int64_t mib;
    int can_mount; /* root with loop devices and mke2fs: existing disks can be adopted */
    int enforced;  /* can_mount and mib > 0: new workspaces get a disk */
    char reason[192];
};

int wsdisk_enforced(const struct wsdisk *d)
{
    return d && d->enforced;
}

int64_t wsdisk_mib(const struct wsdisk *d)
{
    return d ? d->mib : 0;
}

const char *wsdisk_reason(const struct wsdisk *d)
{
    return d ? d->reason : "";
}

static char *img_path(const char *dir)
{
    size_t l = strlen(dir);
    while (l > 1 && dir[l - 1] == '/') {
        l--;
    }
    return xasprintf("%.*s" IMG_SUFFIX, (int)l, dir);
}

/* 1 if path is the root of a mount (not following a symlink). */
static int is_mount(const char *path)
{
    struct statx sx;
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_TYPE, &sx) != 0) {
        return 0;
    }
    if (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) {
        return (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
    }
    /* older kernels: a mount point is on another device than its parent */
    struct stat a, b;
    char *parent = xasprintf("%s/..", path);
    int m = lstat(path, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
    free(parent);
    return m;
}

int wsdisk_is_disk(const char *dir)
{
    char *img = img_path(dir);
    struct stat sb;
    int yes = lstat(img, &sb) == 0 && S_ISREG(sb.st_mode) && is_mount(dir);
    free(img);
    return yes;
}

/* 1 if dir is an empty directory. */
static int dir_empty(const char *dir)
{
    DIR *dp = opendir(dir);
    if (!dp) {
        return 0;
    }
    struct dirent *de;
    int empty = 1;
    while ((de = readdir(dp)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            empty = 0;
            break;
        }
    }
    closedir(dp);
    return empty;
}

/* Run argv (an absolute program) with an empty environment, its output to /dev/null. Its exit
 * status, or -1. posix_spawn: no fork of the threaded server. */
static int run_quiet(const char *const *argv)
{
    posix_spawn_file_actions_t fa;
    char *const no_env[] = {NULL};
    pid_t pid = -1;
    int st = 0;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, no_env);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        return -1;
    }
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            return -1;
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A loop device that already backs the image (st): its number, or -1. A file system still
 * mounted from it somewhere (another mount namespace holds it until its sandbox ends) must be
 * mounted through the same device: a second device on the same file would be a second,
 * diverging file system on one image. */
static int find_attached(const struct stat *img)
{
    DIR *dp = opendir("/sys/block");
    struct dirent *de;
    int found = -1;
    while (dp && found < 0 && (de = readdir(dp)) != NULL) {
        int64_t n = 0;
        if (strncmp(de->d_name, "loop", 4) != 0 || util_parse_i64(de->d_name + 4, &n) != 0) {
            continue;
        }
        char path[320], back[4096];
        snprintf(path, sizeof path, "/sys/block/%s/loop/backing_file", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue; /* not attached */
        }
        ssize_t len = read(fd, back, sizeof back - 1);
        close(fd);
        if (len <= 0) {
            continue;
        }
        back[len] = 0;
        back[strcspn(back, "\n")] = 0;
        struct stat sb;
        if (stat(back, &sb) == 0 && sb.st_dev == img->st_dev && sb.st_ino == img->st_ino) {
            found = (int)n;
        }
    }
    if (dp) {
        closedir(dp);
    }
    return found;
}

/* Open /dev/loop<n>, making the node if the /dev we have lacks it (a static /dev). */
static int open_loop(int n)
{
    char path[32];
    snprintf(path, sizeof path, "/dev/loop%d", n);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        char sys[64], dev[32] = "";
        snprintf(sys, sizeof sys, "/sys/block/loop%d/dev", n);
        int sfd = open(sys, O_RDONLY | O_CLOEXEC);
        ssize_t len = sfd >= 0 ? read(sfd, dev, sizeof dev - 1) : -1;
        if (sfd >= 0) {
            close(sfd);
        }
        unsigned maj = 0, min = 0;
        if (len > 0 && sscanf(dev, "%u:%u", &maj, &min) == 2 &&
            (mknod(path, S_IFBLK | 0600, makedev(maj, min)) == 0 || errno == EEXIST)) {
            fd = open(path, O_RDWR | O_CLOEXEC);
        }
    }
    return fd;
}

/* Attach the image fd to a free loop device (autoclear). The device's fd, its path in dev. */
static int loop_attach(int img_fd, char *dev, size_t n)
{
    int ctl = open(LOOP_CONTROL, O_RDWR | O_CLOEXEC);
    int lfd = -1;
    if (ctl < 0) {
        return -1;
    }
    for (int tries = 0; tries < 32 && lfd < 0; tries++) {
        int num = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (num < 0) {
            break;
        }
        lfd = open_loop(num);
        if (lfd < 0) {
            break;
        }
        struct loop_config lc;
        memset(&lc, 0, sizeof lc);
        lc.fd = (unsigned)img_fd;
        lc.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(lfd, LOOP_CONFIGURE, &lc) == 0) {
            snprintf(dev, n, "/dev/loop%d", num);
            break;
        }
        int e = errno;
        close(lfd);
        lfd = -1;
        if (e != EBUSY) {
            errno = e;
            break; /* EBUSY: another attach took it between GET_FREE and ours */
        }
    }
    int e = errno;
    close(ctl);
    errno = e;
    return lfd;
}

/* 1 if the ext4 image was unmounted cleanly (s_state has EXT2_VALID_FS and not
 * EXT2_ERROR_FS): the superblock is at 1024, s_state at 0x3A in it, little endian. */
static int fs_clean(int img_fd)
{
    unsigned char st[2];
    if (pread(img_fd, st, 2, 1024 + 0x3A) != 2) {
        return 0;
    }
    unsigned v = st[0] | (unsigned)st[1] << 8;
    return (v & 1) && !(v & 2);
}

/* Mount the image img on the directory dir (which exists). fresh: just made by mkfs (its
 * lost+found is removed). Else e2fsck -p first when it was not unmounted cleanly; a device
 * still attached to it is reused. */
static int mount_image(const char *img, const char *dir, int fresh)
{
    char dev[32] = "";
    int lfd = -1, rc = ERR_IO;
    int ifd = open(img, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    struct stat sb;
    if (ifd < 0 || fstat(ifd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        LOG_WARN("wsdisk: cannot open %s: %s", img, strerror(errno));
        goto out;
    }
    int attached = fresh ? -1 : find_attached(&sb);
    if (attached >= 0) {
        snprintf(dev, sizeof dev, "/dev/loop%d", attached);
    } else {
        if (!fresh && !fs_clean(ifd)) {
            const char *fsck[] = {FSCK, "-p", img, NULL};
            int x = run_quiet(fsck);
            LOG_WARN("wsdisk: %s was not unmounted cleanly: e2fsck -p exited %d", img, x);
            if (x < 0 || x >= 4) {
                goto out; /* errors left uncorrected */
            }
        }
        lfd = loop_attach(ifd, dev, sizeof dev);
        if (lfd < 0) {
            LOG_WARN("wsdisk: no loop device for %s: %s", img, strerror(errno));
            goto out;
        }
    }
    if (mount(dev, dir, "ext4", MOUNT_FLAGS, MOUNT_DATA) != 0) {
        LOG_WARN("wsdisk: cannot mount %s (%s) on %s: %s", img, dev, dir, strerror(errno));
        goto out;
    }
    if (fresh || attached < 0) {
        /* made by mkfs (or e2fsck): the agent and git status must not see it; a lost+found
         * that holds files e2fsck recovered stays */
        char *lf = xasprintf("%s/lost+found", dir);
        rmdir(lf);
        free(lf);
    }
    rc = 0;
out:
    if (lfd >= 0) {
        close(lfd); /* the mount holds the device now; without one, autoclear detaches it */
    }
    if (ifd >= 0) {
        close(ifd);
    }
    return rc;
}

/* Create the image img of mib MiB and make an ext4 file system in it. */
static int make_image(const char *img, int64_t mib)
{
    unlink(img); /* a leftover of a make that did not finish */
    int fd = open(img, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)mib << 20) != 0) {
        LOG_WARN("wsdisk: cannot create %s: %s", img, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(img);
        }
        return ERR_IO;
    }
    close(fd);
    const char *argv[] = {MKFS,
                          "-q",
                          "-F",
                          "-t",
                          "ext4",
                          "-m",
                          "0",
                          "-O",
                          "^has_journal,^resize_inode",
                          "-E",
                          "lazy_itable_init=1,nodiscard,root_owner=0:0",
                          img,
                          NULL};
    int x = run_quiet(argv);
    if (x != 0) {
        LOG_WARN("wsdisk: mke2fs of %s exited %d", img, x);
        unlink(img);
        return ERR_IO;
    }
    return 0;
}

int wsdisk_make(struct wsdisk *d, const char *dir)
{
    struct stat sb;
    if (!wsdisk_enforced(d)) {
        return util_mkdir_p(dir, 0755) == 0 ? 0 : ERR_IO;
    }
    if (is_mount(dir)) {
        return 0;
    }
    if (lstat(dir, &sb) == 0 && (!S_ISDIR(sb.st_mode) || !dir_empty(dir))) {
        LOG_INFO("wsdisk: %s existed before the disk quota: it stays a plain directory", dir);
        return 0;
    }
    int rc = util_mkdir_p(dir, 0755) == 0 ? 0 : ERR_IO;
    char *img = img_path(dir);
    int64_t t0 = clock_mono_us(), t1 = t0;
    if (rc == 0) {
        rc = make_image(img, d->mib);
        t1 = clock_mono_us();
    }
    if (rc == 0) {
        rc = mount_image(img, dir, 1);
        if (rc != 0) {
            unlink(img);
        }
    }
    if (rc == 0) {
        LOG_INFO("wsdisk: %s: disk of %lld MiB made in %lld us (mkfs %lld, mount %lld)", dir,
                 (long long)d->mib, (long long)(clock_mono_us() - t0), (long long)(t1 - t0),
                 (long long)(clock_mono_us() - t1));
    }
    free(img);
    return rc;
}

/* Remove the directory a disk was mounted on (unmounted or moved away here). Not only tidiness:
 * every mount namespace copied from ours while the disk was mounted there (each running
 * sandbox's staging namespace, sbx_local.c, which lives as long as its sandbox) holds a copy of
 * the mount, and with it the loop device and the image's blocks; the kernel detaches every
 * copy when the directory they are mounted on is removed (Linux 3.18 and later), and only
 * then. */
static void rm_mount_point(const char *dir)
{
    if (rmdir(dir) != 0 && errno != ENOENT) {
        LOG_WARN("wsdisk: cannot remove %s: %s; sandboxes started while its disk was mounted "
                 "keep that disk until they end",
                 dir, strerror(errno));
    }
}

int wsdisk_move(struct wsdisk *d, const char *from, const char *to)
{
    (void)d;
    if (!wsdisk_is_disk(from)) {
        if (rename(from, to) != 0) {
            LOG_WARN("wsdisk: rename %s to %s: %s", from, to, strerror(errno));
            return ERR_IO;
        }
        return 0;
    }
    if (mkdir(to, 0755) != 0 && (errno != EEXIST || is_mount(to) || !dir_empty(to))) {
        LOG_WARN("wsdisk: cannot move a disk to %s: %s", to, strerror(errno));
        return ERR_IO;
    }
    if (mount(from, to, NULL, MS_MOVE, NULL) != 0) {
        /* EINVAL: the mount lies under a shared mount, which cannot be moved: a bind at the
         * new place and a lazy unmount of the old one are the same move in two steps */
        if (errno != EINVAL || mount(from, to, NULL, MS_BIND, NULL) != 0) {
            LOG_WARN("wsdisk: cannot move the mount %s to %s: %s", from, to, strerror(errno));
            rmdir(to);
            return ERR_IO;
        }
        umount2(from, MNT_DETACH);
    }
    char *fi = img_path(from), *ti = img_path(to);
    if (rename(fi, ti) != 0) {
        LOG_WARN("wsdisk: rename %s to %s: %s", fi, ti, strerror(errno));
    }
    rm_mount_point(from);
    free(fi);
    free(ti);
    return 0;
}

int wsdisk_remove(struct wsdisk *d, const char *dir)
{
    if (!d) {
        return ERR_NOT_FOUND;
    }
    char *img = img_path(dir);
    struct stat sb;
    int has_img = lstat(img, &sb) == 0 && S_ISREG(sb.st_mode);
    int rc = ERR_NOT_FOUND;
    if (has_img && is_mount(dir)) {
        /* lazily: a sandbox that still runs on it keeps it until it ends; the image's blocks
         * are freed when the loop device lets go of the unlinked file */
        if (umount2(dir, MNT_DETACH) != 0) {
            LOG_WARN("wsdisk: cannot unmount %s: %s", dir, strerror(errno));
        } else {
            rm_mount_point(dir);
            rc = 0;
        }
    }
    if (has_img && (rc == 0 || !is_mount(dir))) {
        unlink(img);
    }
    free(img);
    return rc;
}

/* ---- start and stop ---- */

/* Undo the octal escapes of a mountinfo field (\040 for a space) in place. */
static void unescape(char *s)
{
    char *w = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
            p[3] >= '0' && p[3] <= '7') {
            *w++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 3;
        } else {
            *w++ = *p;
        }
    }
    *w = 0;
}

/* 1 if mp is <data_dir>/workspaces/<valid session id>: a workspace that outlives the server. */
static int is_session_ws(const struct wsdisk *d, const char *mp)
{
    size_t l = strlen(d->data_dir);
    return strncmp(mp, d->data_dir, l) == 0 && strncmp(mp + l, "/workspaces/", 12) == 0 &&
           util_valid_id(mp + l + 12);
}

/* Every disk mounted under the data dir but the session workspaces' (warm pool, builds, fills
 * in progress) is removed. The mount points are read first, then acted on (the table changes
 * under the reader otherwise). */
static void sweep_mounts(struct wsdisk *d)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL;
    size_t cap = 0, n = 0, ncap = 0;
    char **mps = NULL;
    size_t l = strlen(d->data_dir);
    while (f && getline(&line, &cap, f) > 0) {
        /* id parent major:minor root mount-point ... */
        char *p = line;
        for (int i = 0; i < 4 && p; i++) {
            p = strchr(p, ' ');
            p = p ? p + 1 : NULL;
        }
        if (!p) {
            continue;
        }
        p[strcspn(p, " ")] = 0;
        unescape(p);
        if (strncmp(p, d->data_dir, l) == 0 && p[l] == '/') {
            if (n == ncap) {
                ncap = ncap ? ncap * 2 : 16;
                mps = xrealloc(mps, ncap * sizeof *mps);
            }
            mps[n++] = xstrdup(p);
        }
    }
    free(line);
    if (f) {
        fclose(f);
    }
    for (size_t i = 0; i < n; i++) {
        const char *mp = mps[i];
        if (wsdisk_is_disk(mp) && !is_session_ws(d, mp)) {
            wsdisk_remove(d, mp);
        }
        free(mps[i]);
    }
    free(mps);
}

/* Mount the images of the session workspaces that are not mounted (after a reboot); delete
 * images of anything else (fills that did not finish). */
static void adopt_workspaces(struct wsdisk *d)
{
    char *wd = xasprintf("%s/workspaces", d->data_dir);
    DIR *dp = opendir(wd);
    struct dirent *de;
    int n = 0, failed = 0;
    while (dp && (de = readdir(dp)) != NULL) {
        size_t len = strlen(de->d_name);
        size_t sl = strlen(IMG_SUFFIX);
        if (len <= sl || strcmp(de->d_name + len - sl, IMG_SUFFIX) != 0) {
            continue;
        }
        char *name = xstrndup(de->d_name, len - sl);
        char *ws = xasprintf("%s/%s", wd, name);
        char *img = xasprintf("%s/%s", wd, de->d_name);
        if (!util_valid_id(name)) {
            if (wsdisk_remove(d, ws) != 0) {
                unlink(img);
            }
        } else if (!is_mount(ws)) {
            struct stat sb;
            int ok = (mkdir(ws, 0755) == 0 || (errno == EEXIST && lstat(ws, &sb) == 0 &&
                                               S_ISDIR(sb.st_mode) && dir_empty(ws))) &&
                     mount_image(img, ws, 0) == 0;
            if (ok) {
                n++;
            } else {
                /* never leave an empty directory where the workspace was: a snapshot of it
                 * would look like a session that deleted everything. Without it, a session
                 * with a repository starts again from its latest snapshot; the image is kept
                 * for a recovery by hand (e2fsck, then mount it). */
                char *aside = xasprintf("%s.broken", img);
                rename(img, aside);
                rmdir(ws);
                LOG_ERROR("wsdisk: the disk of workspace %s cannot be mounted: kept as %s; a "
                          "session with a repository restarts from its latest snapshot",
                          ws, aside);
                free(aside);
                failed++;
            }
        }
        free(img);
        free(ws);
        free(name);
    }
    if (dp) {
        closedir(dp);
    }
    free(wd);
    if (n || failed) {
        LOG_INFO("wsdisk: %d workspace disks mounted again, %d could not be", n, failed);
    }
}

/* Delete the images in dir that no mount uses (regular files <name>.disk whose <name> is not a
 * mount point), and the empty directory <name>. */
static void drop_unmounted_images(const char *dir)
{
    DIR *dp = opendir(dir);
    struct dirent *de;
    size_t sl = strlen(IMG_SUFFIX);
    while (dp && (de = readdir(dp)) != NULL) {
        size_t len = strlen(de->d_name);
        struct stat sb;
        if (len <= sl || strcmp(de->d_name + len - sl, IMG_SUFFIX) != 0 ||
            fstatat(dirfd(dp), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode)) {
            continue;
        }
        char *mp = xasprintf("%s/%.*s", dir, (int)(len - sl), de->d_name);
        if (!is_mount(mp)) {
            LOG_INFO("wsdisk: deleting %s%s, a disk no longer mounted", mp, IMG_SUFFIX);
            unlinkat(dirfd(dp), de->d_name, 0);
            rmdir(mp); /* the mount point, if empty */
        }
        free(mp);
    }
    if (dp) {
        closedir(dp);
    }
}

/* The images of warm workspaces and image builds that no mount uses: a server stopped between
 * mkfs and mount, or a reboot lost the mount (these disks are made again, never adopted). Left
 * there, each would keep what was written into it until its repository is deleted. Run after
 * sweep_mounts removed the mounted ones; only the two places such disks are made are looked at:
 * <data_dir>/repos/<repo>/build-<id> and <data_dir>/repos/<repo>/warm/<id>. */
static void sweep_repo_images(struct wsdisk *d)
{
    char *rd = xasprintf("%s/repos", d->data_dir);
    DIR *dp = opendir(rd);
    struct dirent *de;
    while (dp && (de = readdir(dp)) != NULL) {
        struct stat sb;
        if (de->d_name[0] == '.' || fstatat(dirfd(dp), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISDIR(sb.st_mode)) {
            continue;
        }
        char *repo = xasprintf("%s/%s", rd, de->d_name);
        char *warm = xasprintf("%s/warm", repo);
        drop_unmounted_images(repo);
        drop_unmounted_images(warm);
        free(warm);
        free(repo);
    }
    if (dp) {
        closedir(dp);
    }
    free(rd);
}

/* The checks that decide whether disks can be made here; reason set when not. */
static int probe(struct wsdisk *d)
{
    if (geteuid() != 0) {
        snprintf(d->reason, sizeof d->reason, "not root: loop devices cannot be mounted");
        return 0;
    }
    if (access(LOOP_CONTROL, R_OK | W_OK) != 0) {
        snprintf(d->reason, sizeof d->reason, "no loop devices here (%s: %s)", LOOP_CONTROL,
                 strerror(errno));
        return 0;
    }
    if (access(MKFS, X_OK) != 0) {
        snprintf(d->reason, sizeof d->reason, "%s is missing (install e2fsprogs)", MKFS);
        return 0;
    }
    return 1;
}

/* Make, write past and remove a small disk: the one reliable test that loop mounts work here
 * (a container may have /dev/loop-control and still refuse mounts). */
static int self_test(struct wsdisk *d)
{
    char rnd[9];
    util_random_hex(rnd, 4);
    char *dir = xasprintf("%s/workspaces/.selftest-%s", d->data_dir, rnd);
    char *img = img_path(dir);
    int ok =
        util_mkdir_p(dir, 0755) == 0 && make_image(img, 8) == 0 && mount_image(img, dir, 1) == 0;
    if (!ok) {
        snprintf(d->reason, sizeof d->reason, "a test disk could not be made or mounted (%s)",
                 strerror(errno));
    }
    if (wsdisk_remove(d, dir) != 0) {
        unlink(img);
        rmdir(dir);
    }
    free(img);
    free(dir);
    return ok;
}

int wsdisk_open(const struct wsdisk_config *cfg, struct wsdisk **out)
{
    struct wsdisk *d = xcalloc(1, sizeof *d);
    char *abs = realpath(cfg->data_dir, NULL);
    d->data_dir = abs ? abs : xstrdup(cfg->data_dir);
    d->mib = cfg->mib;
    char *wd = xasprintf("%s/workspaces", d->data_dir);
    util_mkdir_p(wd, 0700);
    free(wd);
    d->can_mount = probe(d);
    if (d->can_mount) {
        sweep_mounts(d);
        adopt_workspaces(d);
        sweep_repo_images(d);
    }
    if (d->mib > 0 && d->can_mount && self_test(d)) {
        d->enforced = 1;
    }
    if (d->mib == 0) {
        d->reason[0] = 0;
        LOG_INFO("wsdisk: sandbox_disk_mib is 0: workspaces have no disk quota");
    } else if (d->enforced) {
        LOG_INFO("wsdisk: disk quota enforced: each workspace is a file system of %lld MiB",
                 (long long)d->mib);
    } else {
        LOG_WARN("wsdisk: disk quota NOT enforced (sandbox_disk_mib %lld): %s; workspaces are "
                 "plain directories on the host's file system",
                 (long long)d->mib, d->reason);
    }
    *out = d;
    return 0;
}

void wsdisk_close(struct wsdisk *d)
{
    if (!d) {
        return;
    }
    if (d->can_mount) {
        sweep_mounts(d);
    }
    free(d->data_dir);
    free(d);
}
