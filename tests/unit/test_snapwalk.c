/*
 * test_snapwalk.c - the second wall around the snapshot walk (workspace/snap/walker.c).
 *
 * The walk of a workspace, which a sandbox built to be hostile, runs in a child of the server.
 * The first wall is the walk's own care (no symlink followed, nothing opened outside the root);
 * these tests assume it failed, and check what is left to a walker with a bug:
 *   - the real walk child, inspected from /proc while it serves: not uid 0, no capability but
 *     CAP_DAC_READ_SEARCH, no_new_privs, RLIMIT_FSIZE 0, rooted (chroot) in the workspace,
 *     holding the workspace, its socket and /dev/null only; it still reads what the sandbox
 *     made unreadable (mode 0000 file and directory), as the walk did as root;
 *   - a process confined by the very function the child runs (walker_confine) then does what
 *     a buggy walker would: follows a symlink the sandbox planted to a root-only file outside
 *     the workspace, opens /etc/shadow, climbs out with "..", writes, truncates, chmods,
 *     chowns, unlinks a root-owned file of the workspace, creates files, regains root, opens a
 *     file by handle, chroots out. Every one fails, and every file stays as it was.
 * Run as root (as the server is); as another user they are skipped (reported ok).
 */
#include "testlib.h"
#include "common/err.h"
#include "common/xmem.h"
#include "workspace/snap/snap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[256];

static void mk_tmp(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(g_tmp, sizeof(g_tmp), "%s/test_snapwalk.XXXXXX", t && *t ? t : "/tmp");
    ASSERT(mkdtemp(g_tmp) != NULL);
    ASSERT_EQ(chmod(g_tmp, 0755), 0);
}

static char *P(const char *rel)
{
    return xasprintf("%s/%s", g_tmp, rel);
}

static void put(const char *rel, const char *data, mode_t mode)
{
    char *p = P(rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, data, strlen(data)), (ssize_t)strlen(data));
    ASSERT_EQ(fchmod(fd, mode), 0);
    close(fd);
    free(p);
}

static void mkd(const char *rel, mode_t mode)
{
    char *p = P(rel);
    ASSERT_EQ(mkdir(p, 0700), 0);
    ASSERT_EQ(chmod(p, mode), 0);
    free(p);
}

static void lnk(const char *target, const char *rel)
{
    char *p = P(rel);
    ASSERT_EQ(symlink(target, p), 0);
    free(p);
}

/* The contents of rel ("" if it cannot be read). Caller frees. */
static char *slurp(const char *rel)
{
    char *p = P(rel), buf[256];
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : 0;
    buf[n < 0 ? 0 : n] = 0;
    if (fd >= 0) {
        close(fd);
    }
    free(p);
    return xstrdup(buf);
}

/* A workspace as a sandbox (or a restore as root) leaves it, and one root-only file beside it:
 *   outside/victim      root 0600, outside the workspace: what an escape would hit
 *   ws/                 root 0755 (a restored workspace)
 *   ws/victim           -> <abs>/outside/victim (planted symlink)
 *   ws/shadow           -> /etc/shadow (planted symlink)
 *   ws/up               -> ../outside/victim
 *   ws/rootfile         root 0644
 *   ws/shared           root 0666
 *   ws/secret           0000 "s3cret\n"; ws/closed/ 0000 with inner "hidden\n" */
static void make_tree(void)
{
    mkd("outside", 0700);
    put("outside/victim", "original\n", 0600);
    mkd("ws", 0755);
    char *victim = P("outside/victim");
    lnk(victim, "ws/victim");
    free(victim);
    lnk("/etc/shadow", "ws/shadow");
    lnk("../outside/victim", "ws/up");
    put("ws/rootfile", "root's\n", 0644);
    put("ws/shared", "shared\n", 0666);
    put("ws/secret", "s3cret\n", 0000);
    mkd("ws/closed", 0755);
    put("ws/closed/inner", "hidden\n", 0644);
    char *cl = P("ws/closed");
    ASSERT_EQ(chmod(cl, 0), 0);
    free(cl);
}

/* The value of the line "key:\t..." of /proc/<pid>/<file> (trimmed). Caller frees. */
static char *proc_field(pid_t pid, const char *file, const char *key)
{
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
    FILE *f = fopen(path, "r");
    ASSERT(f != NULL);
    char *val = NULL;
    size_t kl = strlen(key);
    while (!val && fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, kl) == 0) {
            char *v = line + kl;
            while (*v == ':' || *v == ' ' || *v == '\t') {
                v++;
            }
            v[strcspn(v, "\n")] = 0;
            val = xstrdup(v);
        }
    }
    fclose(f);
    ASSERT(val != NULL);
    return val;
}

static char *proc_link(pid_t pid, const char *what)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, what);
    ssize_t n = readlink(path, buf, sizeof(buf) - 1);
    ASSERT(n > 0);
    buf[n] = 0;
    return xstrdup(buf);
}

static int skip_unless_root(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "# not root: skipped\n");
        return 1;
    }
    return 0;
}

/* The index of the entry with path p in v, or -1. */
static long find(const struct entv *v, const char *p)
{
    for (size_t i = 0; i < v->n; i++) {
        if (strcmp(v->v[i].path, p) == 0) {
            return (long)i;
        }
    }
    return -1;
}

TEST(walk_child_runs_unprivileged_with_only_its_descriptors)
{
    if (skip_unless_root()) {
        return;
    }
    mk_tmp();
    make_tree();
    char *ws = P("ws");
    int rootfd = open(ws, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT(rootfd >= 0);
    struct walker *w = NULL;
    ASSERT_EQ(walker_start(rootfd, &w), 0);
    struct entv v = {0};
    ASSERT_EQ(walker_entries(w, &v), 0);
    /* the walk as root saw: inside the unreadable directory too; symlinks as links */
    ASSERT(find(&v, "closed/inner") >= 0);
    long sh = find(&v, "shadow");
    ASSERT(sh >= 0);
    ASSERT_EQ(v.v[sh].type, 'l');
    ASSERT_STREQ(v.v[sh].target, "/etc/shadow");

    /* the child, now serving opens: who it is, what it holds */
    pid_t pid = walker_pid(w);
    char *s = proc_field(pid, "status", "Uid");
    ASSERT_STREQ(s, "65534\t65534\t65534\t65534");
    free(s);
    s = proc_field(pid, "status", "Gid");
    ASSERT_STREQ(s, "65534\t65534\t65534\t65534");
    free(s);
    s = proc_field(pid, "status", "Groups");
    ASSERT_STREQ(s, "");
    free(s);
    s = proc_field(pid, "status", "CapEff");
    ASSERT_STREQ(s, "0000000000000004"); /* CAP_DAC_READ_SEARCH alone */
    free(s);
    s = proc_field(pid, "status", "CapPrm");
    ASSERT_STREQ(s, "0000000000000004");
    free(s);
    s = proc_field(pid, "status", "CapAmb");
    ASSERT_STREQ(s, "0000000000000000");
    free(s);
    s = proc_field(pid, "status", "NoNewPrivs");
    ASSERT_STREQ(s, "1");
    free(s);
    s = proc_field(pid, "status", "Seccomp");
    ASSERT_STREQ(s, "2"); /* filtered: no open by handle */
    free(s);
    s = proc_field(pid, "limits", "Max file size");
    ASSERT(strncmp(s, "0 ", 2) == 0);
    free(s);
    s = proc_link(pid, "root");
    ASSERT_STREQ(s, ws); /* chrooted into the workspace */
    free(s);
    char fddir[64];
    snprintf(fddir, sizeof(fddir), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(fddir);
    ASSERT(d != NULL);
    int nfd = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] != '.') {
            nfd++;
        }
    }
    closedir(d);
    ASSERT_EQ(nfd, 5);
    s = proc_link(pid, "fd/0");
    ASSERT_STREQ(s, "/dev/null");
    free(s);
    s = proc_link(pid, "fd/3");
    ASSERT_STREQ(s, ws);
    free(s);
    s = proc_link(pid, "fd/4");
    ASSERT(strncmp(s, "socket:", 7) == 0);
    free(s);

    /* it opens what the walk as root could read: a file the sandbox made unreadable */
    struct ent *jobs[2] = {&v.v[find(&v, "secret")], &v.v[find(&v, "closed/inner")]};
    walker_plan(w, jobs, 2);
    for (int i = 0; i < 2; i++) {
        int fd = -1;
        char buf[32] = "";
        ASSERT_EQ(walker_fd(w, (size_t)i, &fd), 0);
        ASSERT(fd >= 0);
        ASSERT(read(fd, buf, sizeof(buf) - 1) > 0);
        ASSERT_STREQ(buf, i == 0 ? "s3cret\n" : "hidden\n");
        close(fd);
    }
    walker_free(w);
    ASSERT_EQ(kill(pid, 0), -1); /* reaped */
    entv_free(&v);
    close(rootfd);
    free(ws);
}

/* What a buggy walker would try; each gets an errno (0: it worked). */
enum {
    A_FOLLOW_WRITE, /* open the planted absolute symlink for writing */
    A_FOLLOW_TRUNC, /* ... with O_TRUNC, through the workspace fd */
    A_UP_WRITE,     /* the relative one, "../outside/victim" */
    A_DOTDOT_READ,  /* openat(ws, "../outside/victim"), a path that climbs out */
    A_SHADOW_READ,  /* the planted /etc/shadow link, followed */
    A_ABS_SHADOW,   /* "/etc/shadow" itself */
    A_ROOTFILE_W,   /* a root-owned file of the workspace, for writing */
    A_SHARED_WRITE, /* write() into a world-writable file */
    A_CHMOD,        /* chmod a root-owned file */
    A_CHOWN,        /* chown it to us */
    A_UNLINK,       /* unlink it (the workspace directory is root's) */
    A_CREATE,       /* create a file in the workspace */
    A_SETUID,       /* become root again */
    A_CHROOT,       /* chroot elsewhere (the classic way out of a chroot) */
    A_BY_HANDLE,    /* open a file by handle, bypassing paths (with CAP_DAC_READ_SEARCH) */
    A_N
};

static struct {
    struct file_handle fh;
    unsigned char b[MAX_HANDLE_SZ];
} g_handle;

static int try_open(int dfd, const char *path, int flags)
{
    int fd = openat(dfd, path, flags | O_CLOEXEC, 0644);
    if (fd < 0) {
        return errno;
    }
    close(fd);
    return 0;
}

static void attack(int *res)
{
    int fd;
    res[A_FOLLOW_WRITE] = try_open(AT_FDCWD, "victim", O_WRONLY);
    res[A_FOLLOW_TRUNC] = try_open(3, "victim", O_WRONLY | O_TRUNC);
    res[A_UP_WRITE] = try_open(3, "up", O_WRONLY);
    res[A_DOTDOT_READ] = try_open(3, "../outside/victim", O_RDONLY);
    res[A_SHADOW_READ] = try_open(3, "shadow", O_RDONLY);
    res[A_ABS_SHADOW] = try_open(AT_FDCWD, "/etc/shadow", O_RDONLY);
    res[A_ROOTFILE_W] = try_open(3, "rootfile", O_WRONLY);
    fd = openat(3, "shared", O_WRONLY | O_CLOEXEC);
    res[A_SHARED_WRITE] = fd < 0 ? errno : write(fd, "pwned\n", 6) < 0 ? errno : 0;
    if (fd >= 0) {
        close(fd);
    }
    res[A_CHMOD] = fchmodat(3, "rootfile", 0777, 0) != 0 ? errno : 0;
    res[A_CHOWN] =
        fchownat(3, "rootfile", getuid(), getgid(), AT_SYMLINK_NOFOLLOW) != 0 ? errno : 0;
    res[A_UNLINK] = unlinkat(3, "rootfile", 0) != 0 ? errno : 0;
    res[A_CREATE] = try_open(3, "planted", O_WRONLY | O_CREAT | O_EXCL);
    res[A_SETUID] = setuid(0) != 0 ? errno : 0;
    res[A_CHROOT] = chroot("closed") != 0 ? errno : 0;
    /* the handle of the root-only file outside, made before: what an attacker would bring */
    int fdm = open("/.", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    fd = open_by_handle_at(fdm, &g_handle.fh, O_RDONLY);
    res[A_BY_HANDLE] = fd < 0 ? errno : 0;
    if (fd >= 0) {
        close(fd);
    }
    if (fdm >= 0) {
        close(fdm);
    }
}

TEST(a_buggy_walker_is_contained)
{
    if (skip_unless_root()) {
        return;
    }
    mk_tmp();
    make_tree();
    char *ws = P("ws");
    int rootfd = open(ws, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT(rootfd >= 0);
    char *victim = P("outside/victim");
    int mnt = 0;
    g_handle.fh.handle_bytes = MAX_HANDLE_SZ;
    ASSERT_EQ(name_to_handle_at(AT_FDCWD, victim, &g_handle.fh, &mnt, 0), 0);
    free(victim);
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    pid_t me = getpid();
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        const char *step = NULL;
        int res[A_N];
        memset(res, 0, sizeof(res));
        if (walker_confine(rootfd, sv[1], me, &step) != 0) {
            _exit(2);
        }
        attack(res);
        _exit(send(4, res, sizeof(res), 0) == (ssize_t)sizeof(res) ? 0 : 3);
    }
    close(sv[1]);
    int res[A_N];
    ASSERT_EQ(recv(sv[0], res, sizeof(res), 0), (ssize_t)sizeof(res));
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* outside the workspace: no path leads there (chroot), whatever is followed */
    ASSERT_EQ(res[A_FOLLOW_WRITE], ENOENT);
    ASSERT_EQ(res[A_FOLLOW_TRUNC], ENOENT);
    ASSERT_EQ(res[A_UP_WRITE], ENOENT);
    ASSERT_EQ(res[A_DOTDOT_READ], ENOENT);
    ASSERT_EQ(res[A_SHADOW_READ], ENOENT);
    ASSERT_EQ(res[A_ABS_SHADOW], ENOENT);
    /* inside it: root's files are not ours to change */
    ASSERT_EQ(res[A_ROOTFILE_W], EACCES);
    ASSERT_EQ(res[A_SHARED_WRITE], EFBIG); /* RLIMIT_FSIZE 0 */
    ASSERT_EQ(res[A_CHMOD], EPERM);
    ASSERT_EQ(res[A_CHOWN], EPERM);
    ASSERT_EQ(res[A_UNLINK], EACCES);
    ASSERT_EQ(res[A_CREATE], EACCES);
    ASSERT_EQ(res[A_SETUID], EPERM);
    ASSERT_EQ(res[A_CHROOT], EPERM);
    ASSERT_EQ(res[A_BY_HANDLE], EPERM); /* seccomp: CAP_DAC_READ_SEARCH does not reach it */
    char *s = slurp("outside/victim");
    ASSERT_STREQ(s, "original\n");
    free(s);
    s = slurp("ws/rootfile");
    ASSERT_STREQ(s, "root's\n");
    free(s);
    s = slurp("ws/shared");
    ASSERT_STREQ(s, "shared\n");
    free(s);
    struct stat sb;
    char *p = P("ws/rootfile");
    ASSERT_EQ(stat(p, &sb), 0);
    ASSERT_EQ(sb.st_mode & 07777, 0644);
    ASSERT_EQ(sb.st_uid, 0);
    free(p);
    p = P("ws/planted");
    ASSERT_EQ(access(p, F_OK), -1);
    free(p);
    close(sv[0]);
    close(rootfd);
    free(ws);
}

static const struct test_case tests[] = {
    T(walk_child_runs_unprivileged_with_only_its_descriptors),
    T(a_buggy_walker_is_contained),
};

TEST_MAIN(tests)
