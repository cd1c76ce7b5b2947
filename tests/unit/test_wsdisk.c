/*
 * test_wsdisk.c - workspace disks (sandbox/wsdisk.h): a write past the size fails with ENOSPC,
 * a disk moves with its image, removal unmounts and deletes it, and a restart adopts what it
 * finds (mounts a lost mount again, removes a staging disk and the images no mount uses), and a
 * removal reaches a mount namespace copied before it (a sandbox's). Needs root and loop devices:
 * without them each test only checks that the quota reports itself not enforced.
 */
#include "testlib.h"

#include "common/err.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/wsdisk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>

static char g_tmp[256];

/* A data dir and a wsdisk on it with disks of mib MiB; NULL if disks cannot be made here. */
static struct wsdisk *open_disk(int64_t mib)
{
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_wsdisk.XXXXXX");
    ASSERT(mkdtemp(g_tmp) != NULL);
    struct wsdisk_config cfg = {.data_dir = g_tmp, .mib = mib};
    struct wsdisk *d = NULL;
    ASSERT_EQ(wsdisk_open(&cfg, &d), 0);
    if (!wsdisk_enforced(d)) {
        ASSERT(mib == 0 || wsdisk_reason(d)[0] != 0); /* it says why */
        wsdisk_close(d);
        return NULL;
    }
    return d;
}

static void done(struct wsdisk *d)
{
    char *ws = xasprintf("%s/workspaces", g_tmp);
    DIR *dp = opendir(ws);
    struct dirent *de;
    while (dp && (de = readdir(dp)) != NULL) {
        char *p = xasprintf("%s/%s", ws, de->d_name);
        if (de->d_name[0] != '.' && wsdisk_is_disk(p)) {
            wsdisk_remove(d, p);
        }
        free(p);
    }
    if (dp) {
        closedir(dp);
    }
    free(ws);
    wsdisk_close(d);
    util_rm_rf(g_tmp);
}

static int exists(const char *p)
{
    struct stat sb;
    return lstat(p, &sb) == 0;
}

/* Write n MiB into path; 0, or the errno of the first failed write. */
static int write_mib(const char *path, int n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT(fd >= 0);
    char *buf = xcalloc(1, 1 << 20);
    int err = 0;
    for (int i = 0; i < n && !err; i++) {
        if (write(fd, buf, 1 << 20) != 1 << 20) {
            err = errno ? errno : EIO;
        }
    }
    if (!err && fsync(fd) != 0) {
        err = errno;
    }
    close(fd);
    free(buf);
    return err;
}

TEST(write_past_the_size_is_enospc)
{
    struct wsdisk *d = open_disk(16);
    if (!d) {
        return;
    }
    char *ws = xasprintf("%s/workspaces/a", g_tmp);
    ASSERT_EQ(wsdisk_make(d, ws), 0);
    ASSERT(wsdisk_is_disk(ws));
    char *lf = xasprintf("%s/lost+found", ws);
    ASSERT(!exists(lf));
    char *f = xasprintf("%s/big", ws);
    ASSERT_EQ(write_mib(f, 32), ENOSPC);
    unlink(f);
    ASSERT_EQ(write_mib(f, 4), 0);    /* room again once deleted */
    ASSERT_EQ(wsdisk_make(d, ws), 0); /* an existing disk is left as it is */
    ASSERT(exists(f));
    free(f);
    free(lf);
    free(ws);
    done(d);
}

TEST(move_takes_mount_and_image)
{
    struct wsdisk *d = open_disk(16);
    if (!d) {
        return;
    }
    char *from = xasprintf("%s/repos/r/warm/x", g_tmp);
    char *to = xasprintf("%s/workspaces/b", g_tmp);
    char *fimg = xasprintf("%s.disk", from), *timg = xasprintf("%s.disk", to);
    ASSERT_EQ(wsdisk_make(d, from), 0);
    char *f = xasprintf("%s/file", from), *g = xasprintf("%s/file", to);
    ASSERT_EQ(write_mib(f, 1), 0);
    ASSERT_EQ(wsdisk_move(d, from, to), 0);
    ASSERT(!exists(from) && !exists(fimg));
    ASSERT(wsdisk_is_disk(to) && exists(timg) && exists(g));
    /* removal: unmounted, image and mount point gone; a plain directory is the caller's */
    ASSERT_EQ(wsdisk_remove(d, to), 0);
    ASSERT(!exists(to) && !exists(timg));
    ASSERT_EQ(util_mkdir_p(to, 0755), 0);
    ASSERT_EQ(wsdisk_remove(d, to), ERR_NOT_FOUND);
    ASSERT_EQ(wsdisk_move(d, to, from), 0); /* a plain directory is renamed */
    ASSERT(exists(from) && !exists(to));
    free(f);
    free(g);
    free(fimg);
    free(timg);
    free(from);
    free(to);
    done(d);
}

TEST(restart_adopts_and_sweeps)
{
    struct wsdisk *d = open_disk(16);
    if (!d) {
        return;
    }
    char *ws = xasprintf("%s/workspaces/c", g_tmp);
    char *fill = xasprintf("%s/workspaces/.c.fill", g_tmp);
    char *warm = xasprintf("%s/repos/r/warm/y", g_tmp);
    ASSERT_EQ(wsdisk_make(d, ws), 0);
    ASSERT_EQ(wsdisk_make(d, fill), 0);
    ASSERT_EQ(wsdisk_make(d, warm), 0);
    char *f = xasprintf("%s/marker", ws);
    ASSERT_EQ(write_mib(f, 1), 0);
    /* a stop keeps the session workspace and removes the others */
    wsdisk_close(d);
    char *fimg = xasprintf("%s.disk", fill);
    ASSERT(wsdisk_is_disk(ws) && exists(f));
    ASSERT(!exists(warm) && !exists(fill) && !exists(fimg));
    /* a reboot loses the mounts: the next start mounts the session workspace again and
     * deletes an image of a fill that did not finish */
    ASSERT_EQ(umount2(ws, 0), 0);
    ASSERT(!exists(f));
    ASSERT_EQ(write_mib(fimg, 1), 0);
    struct wsdisk_config cfg = {.data_dir = g_tmp, .mib = 16};
    ASSERT_EQ(wsdisk_open(&cfg, &d), 0);
    ASSERT(wsdisk_is_disk(ws) && exists(f));
    ASSERT(!exists(fimg));
    free(fimg);
    free(f);
    free(warm);
    free(fill);
    free(ws);
    done(d);
}

/* 1 if /dev/loop<minor> still has a backing file (the disk's loop device is attached). */
static int loop_attached(unsigned minor)
{
    char *p = xasprintf("/sys/block/loop%u/loop/backing_file", minor);
    int yes = exists(p);
    free(p);
    return yes;
}

TEST(removal_reaches_a_namespace_copied_before)
{
    struct wsdisk *d = open_disk(16);
    if (!d) {
        return;
    }
    char *ws = xasprintf("%s/workspaces/e", g_tmp);
    ASSERT_EQ(wsdisk_make(d, ws), 0);
    char *f = xasprintf("%s/data", ws);
    ASSERT_EQ(write_mib(f, 4), 0);
    struct stat sb;
    ASSERT_EQ(stat(ws, &sb), 0);
    ASSERT_EQ(major(sb.st_dev), 7u); /* a loop device */
    unsigned minor_no = minor(sb.st_dev);
    /* what a sandbox's staging namespace is (sbx_local.c stage_mounts): a private copy of
     * ours, made while the disk is mounted, that lives on */
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        int ok =
            unshare(CLONE_NEWNS) == 0 && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0;
        ssize_t w = write(ready[1], ok ? "y" : "n", 1);
        (void)w;
        pause();
        _exit(0);
    }
    char c = 0;
    ASSERT_EQ(read(ready[0], &c, 1), 1);
    ASSERT_EQ(c, 'y');
    ASSERT_EQ(wsdisk_remove(d, ws), 0);
    /* the removal reached the copy (with the mount point): the loop device is let go while the
     * namespace lives */
    for (int i = 0; i < 100 && loop_attached(minor_no); i++) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int attached = loop_attached(minor_no);
    ASSERT_EQ(kill(pid, 0), 0); /* the copy still exists */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    ASSERT_EQ(attached, 0);
    close(ready[0]);
    close(ready[1]);
    free(f);
    free(ws);
    done(d);
}

TEST(start_deletes_images_no_mount_uses)
{
    struct wsdisk *d = open_disk(16);
    if (!d) {
        return;
    }
    wsdisk_close(d);
    /* a start that stopped between mkfs and mount (or a reboot that lost the mounts) leaves
     * images of warm and build disks behind */
    char *warm = xasprintf("%s/repos/r/warm/w1", g_tmp);
    char *build = xasprintf("%s/repos/r/build-1", g_tmp);
    char *wimg = xasprintf("%s.disk", warm), *bimg = xasprintf("%s.disk", build);
    char *snap = xasprintf("%s/repos/r/warm/w1.snap", g_tmp);
    char *other = xasprintf("%s/repos/r/objects.git", g_tmp);
    ASSERT_EQ(util_mkdir_p(warm, 0755), 0);
    ASSERT_EQ(util_mkdir_p(snap, 0755), 0);
    ASSERT_EQ(util_mkdir_p(other, 0755), 0);
    ASSERT_EQ(write_mib(wimg, 1), 0);
    ASSERT_EQ(write_mib(bimg, 1), 0);
    struct wsdisk_config cfg = {.data_dir = g_tmp, .mib = 16};
    ASSERT_EQ(wsdisk_open(&cfg, &d), 0);
    ASSERT(!exists(wimg) && !exists(warm) && !exists(bimg));
    ASSERT(exists(snap) && exists(other)); /* what is not a disk is not wsdisk's */
    free(warm);
    free(build);
    free(wimg);
    free(bimg);
    free(snap);
    free(other);
    done(d);
}

TEST(off_makes_plain_directories)
{
    struct wsdisk *d = NULL;
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_wsdisk.XXXXXX");
    ASSERT(mkdtemp(g_tmp) != NULL);
    struct wsdisk_config cfg = {.data_dir = g_tmp, .mib = 0};
    ASSERT_EQ(wsdisk_open(&cfg, &d), 0);
    ASSERT(!wsdisk_enforced(d));
    char *ws = xasprintf("%s/workspaces/p", g_tmp);
    ASSERT_EQ(wsdisk_make(d, ws), 0);
    ASSERT(exists(ws) && !wsdisk_is_disk(ws));
    free(ws);
    wsdisk_close(d);
    util_rm_rf(g_tmp);
}

static const struct test_case tests[] = {
    T(write_past_the_size_is_enospc),      T(move_takes_mount_and_image),
    T(restart_adopts_and_sweeps),          T(removal_reaches_a_namespace_copied_before),
    T(start_deletes_images_no_mount_uses), T(off_makes_plain_directories),
};
TEST_MAIN(tests)
