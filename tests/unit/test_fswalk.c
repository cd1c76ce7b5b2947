/*
 * test_fswalk.c - the iterative walker and remover on trees a hostile sandbox builds: deeper
 * than any bound, wider than a page of names, symlink loops, FIFOs nobody writes to, sockets,
 * directories swapped while walked. Deep walks run on a thread with a 64 KiB stack: a
 * recursive walk would overflow it within a few hundred levels.
 */
#include "testlib.h"

#include "common/err.h"
#include "common/fswalk.h"
#include "common/util.h"
#include "common/xmem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static char g_tmp[256];

static void mk_tmp(void)
{
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_fswalk.XXXXXX");
    ASSERT(mkdtemp(g_tmp) != NULL);
}

static int open_dir(const char *rel)
{
    char *p = xasprintf("%s/%s", g_tmp, rel);
    int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT(fd >= 0);
    free(p);
    return fd;
}

/* A chain of n nested directories named d under dfd (built by fd: no path gets long), each
 * with files "a" and "z" beside the next level when with_files. */
static void chain(int dfd, int n, int with_files)
{
    int fd = dup(dfd);
    for (int i = 0; i < n; i++) {
        if (with_files) {
            for (const char *f = "az"; *f; f++) {
                char nm[2] = {*f, 0};
                int ffd = openat(fd, nm, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
                ASSERT(ffd >= 0);
                close(ffd);
            }
        }
        ASSERT_EQ(mkdirat(fd, "d", 0755), 0);
        int nfd = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ASSERT(nfd >= 0);
        close(fd);
        fd = nfd;
    }
    close(fd);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    ASSERT(d != NULL);
    int n = 0;
    while (readdir(d)) {
        n++;
    }
    closedir(d);
    return n;
}

/* Run fn on a thread with a 64 KiB stack and wait for it. */
static void on_small_stack(void *(*fn)(void *), void *arg)
{
    pthread_attr_t a;
    pthread_t th;
    ASSERT_EQ(pthread_attr_init(&a), 0);
    ASSERT_EQ(pthread_attr_setstacksize(&a, 64 << 10), 0);
    ASSERT_EQ(pthread_create(&th, &a, fn, arg), 0);
    ASSERT_EQ(pthread_join(th, NULL), 0);
    pthread_attr_destroy(&a);
}

struct tally {
    long entries, dirs, max_depth;
    int fds_base, max_fds;
    long order_errors;
    char *last_dir; /* pre-order check: an entry's parent was reported before it */
};

static int tally_pre(void *ctx, const struct fswalk_ent *e)
{
    struct tally *t = ctx;
    t->entries++;
    if (e->depth > t->max_depth) {
        t->max_depth = e->depth;
    }
    if ((long)e->path_len != (long)strlen(e->path)) {
        t->order_errors++;
    }
    if (e->depth % 512 == 0) {
        int n = count_fds();
        if (n > t->max_fds) {
            t->max_fds = n;
        }
    }
    if (S_ISDIR(e->st->st_mode)) {
        t->dirs++;
        return FSWALK_ENTER;
    }
    return 0;
}

struct deep_job {
    int rootfd;
    int rc;
    struct tally t;
};

static void *deep_walk(void *arg)
{
    struct deep_job *j = arg;
    struct fswalk w = {.pre = tally_pre, .ctx = &j->t};
    j->rc = fswalk_run(j->rootfd, &w);
    return NULL;
}

TEST(walk_deeper_than_the_bound_on_a_small_stack)
{
    mk_tmp();
    int root = open_dir("");
    chain(root, FSWALK_MAX_DEPTH + 50, 0);
    struct deep_job j = {.rootfd = root};
    j.t.fds_base = count_fds();
    on_small_stack(deep_walk, &j);
    ASSERT_EQ(j.rc, 0);
    /* every level down to the bound is reported, the one at the bound is not entered */
    ASSERT_EQ(j.t.entries, FSWALK_MAX_DEPTH);
    ASSERT_EQ(j.t.max_depth, FSWALK_MAX_DEPTH);
    ASSERT_EQ(j.t.order_errors, 0);
    ASSERT(j.t.max_fds <= j.t.fds_base + FSWALK_MAX_FDS + 2);
    ASSERT_EQ(count_fds(), j.t.fds_base); /* nothing leaked */
    close(root);
    ASSERT_EQ(util_rm_rf(g_tmp), 0);
}

/* Siblings on both sides of the next level at every depth: frames whose fd was closed to stay
 * within FSWALK_MAX_FDS are reopened (through "..") and their remaining names still visited,
 * each once. */
TEST(walk_reopens_closed_frames_and_visits_each_entry_once)
{
    mk_tmp();
    int root = open_dir("");
    chain(root, 300, 1);
    struct deep_job j = {.rootfd = root};
    on_small_stack(deep_walk, &j);
    ASSERT_EQ(j.rc, 0);
    ASSERT_EQ(j.t.entries, 300 * 3);
    ASSERT_EQ(j.t.dirs, 300);
    close(root);
    ASSERT_EQ(util_rm_rf(g_tmp), 0);
}

struct rm_job {
    const char *path;
    int rc;
};

static void *rm_thread(void *arg)
{
    struct rm_job *j = arg;
    j->rc = util_rm_rf(j->path);
    return NULL;
}

/* Past the walk's depth bound: what lies beyond is moved up and removed by a later pass. */
TEST(rm_removes_a_tree_of_any_depth_on_a_small_stack)
{
    mk_tmp();
    char *top = xasprintf("%s/top", g_tmp);
    ASSERT_EQ(mkdir(top, 0755), 0);
    int fd = open_dir("top");
    chain(fd, FSWALK_MAX_DEPTH + 300, 1);
    close(fd);
    int fds = count_fds();
    struct rm_job j = {.path = top};
    on_small_stack(rm_thread, &j);
    ASSERT_EQ(j.rc, 0);
    struct stat sb;
    ASSERT(lstat(top, &sb) != 0 && errno == ENOENT);
    ASSERT_EQ(count_fds(), fds);
    ASSERT_EQ(util_rm_rf(top), 0); /* gone already: fine */
    free(top);
    ASSERT_EQ(util_rm_rf(g_tmp), 0);
}

struct names {
    struct tally t;
    int saw_fifo, saw_sock, saw_loop, saw_outside;
};

static int names_pre(void *ctx, const struct fswalk_ent *e)
{
    struct names *n = ctx;
    if (strstr(e->path, "outside")) {
        n->saw_outside++;
    }
    if (S_ISFIFO(e->st->st_mode)) {
        n->saw_fifo++;
    }
    if (S_ISSOCK(e->st->st_mode)) {
        n->saw_sock++;
    }
    if (S_ISLNK(e->st->st_mode)) {
        n->saw_loop++;
    }
    /* ask to enter everything: only real directories may be entered */
    tally_pre(&n->t, e);
    return FSWALK_ENTER;
}

/* A FIFO nobody writes to (opening it for reading would block the walk for ever: the test's
 * timeout), a socket, symlink loops and a symlink to a directory outside: none is opened or
 * followed, each is reported once. */
TEST(walk_never_opens_special_files_nor_follows_symlinks)
{
    mk_tmp();
    char *p = xasprintf("%s/outside", g_tmp);
    ASSERT_EQ(mkdir(p, 0755), 0);
    free(p);
    p = xasprintf("%s/outside/secret", g_tmp);
    int fd = open(p, O_WRONLY | O_CREAT, 0600);
    ASSERT(fd >= 0);
    close(fd);
    free(p);
    p = xasprintf("%s/ws", g_tmp);
    ASSERT_EQ(mkdir(p, 0755), 0);
    free(p);
    int root = open_dir("ws");
    ASSERT_EQ(mkfifoat(root, "fifo", 0644), 0);
    ASSERT_EQ(symlinkat("loop", root, "loop"), 0);
    ASSERT_EQ(symlinkat(".", root, "self"), 0);
    char *out = xasprintf("%s/outside", g_tmp);
    ASSERT_EQ(symlinkat(out, root, "escape"), 0);
    free(out);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char *sp = xasprintf("%s/ws/sock", g_tmp);
    ASSERT(strlen(sp) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, sp, strlen(sp) + 1);
    free(sp);
    ASSERT_EQ(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct names n;
    memset(&n, 0, sizeof(n));
    struct fswalk w = {.pre = names_pre, .ctx = &n};
    ASSERT_EQ(fswalk_run(root, &w), 0);
    ASSERT_EQ(n.saw_fifo, 1);
    ASSERT_EQ(n.saw_sock, 1);
    ASSERT_EQ(n.saw_loop, 3);
    ASSERT_EQ(n.saw_outside, 0);
    ASSERT_EQ(n.t.entries, 5);
    /* and the remover takes them all, the outside directory stays */
    close(root);
    close(s);
    p = xasprintf("%s/ws", g_tmp);
    ASSERT_EQ(util_rm_rf(p), 0);
    free(p);
    p = xasprintf("%s/outside/secret", g_tmp);
    struct stat sb;
    ASSERT_EQ(lstat(p, &sb), 0);
    free(p);
    ASSERT_EQ(util_rm_rf(g_tmp), 0);
}

/* A directory we may not read (as root we can: drop to nobody in a child) is reported,
 * walked as empty, and the walk goes on; the root unreadable is an error. */
TEST(walk_goes_past_unreadable_directories)
{
    mk_tmp();
    ASSERT_EQ(chmod(g_tmp, 0755), 0);
    char *p = xasprintf("%s/ws", g_tmp);
    ASSERT_EQ(mkdir(p, 0755), 0);
    char *q = xasprintf("%s/ws/closed", g_tmp);
    ASSERT_EQ(mkdir(q, 0755), 0);
    char *r = xasprintf("%s/ws/closed/inner", g_tmp);
    int fd = open(r, O_WRONLY | O_CREAT, 0644);
    ASSERT(fd >= 0);
    close(fd);
    ASSERT_EQ(chmod(q, 0), 0);
    char *o = xasprintf("%s/ws/open", g_tmp);
    fd = open(o, O_WRONLY | O_CREAT, 0644);
    ASSERT(fd >= 0);
    close(fd);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && setuid(65534) != 0) {
            _exit(2);
        }
        int root = open(p, O_RDONLY | O_DIRECTORY);
        struct tally t = {0};
        struct fswalk w = {.pre = tally_pre, .ctx = &t};
        int rc = fswalk_run(root, &w);
        /* closed and open are reported; inner is not readable */
        _exit(rc == 0 && t.entries == 2 ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* the remover (root) takes it whole */
    ASSERT_EQ(util_rm_rf(p), 0);
    free(p);
    free(q);
    free(r);
    free(o);
    ASSERT_EQ(util_rm_rf(g_tmp), 0);
}

static int stop_pre(void *ctx, const struct fswalk_ent *e)
{
    (void)e;
    long *n = ctx;
    return ++*n == 3 ? ERR_CANCELLED : FSWALK_ENTER;
}

TEST(callback_error_stops_the_walk)
{
    mk_tmp();
    int root = open_dir("");
    chain(root, 10, 0);
    long n = 0;
    struct fswalk w = {.pre = stop_pre, .ctx = &n};
    int fds = count_fds();
    ASSERT_EQ(fswalk_run(root, &w), ERR_CANCELLED);
    ASSERT_EQ(n, 3);
    ASSERT_EQ(count_fds(), fds);
    close(root);
    ASSERT_EQ(util_rm_rf(g_tmp), 0);
}

static const struct test_case tests[] = {
    T(walk_deeper_than_the_bound_on_a_small_stack),
    T(walk_reopens_closed_frames_and_visits_each_entry_once),
    T(rm_removes_a_tree_of_any_depth_on_a_small_stack),
    T(walk_never_opens_special_files_nor_follows_symlinks),
    T(walk_goes_past_unreadable_directories),
    T(callback_error_stops_the_walk),
};

TEST_MAIN(tests)
