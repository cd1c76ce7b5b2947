/*
 * fuzz_snap_walk.c - the snapshot walker over trees a sandbox could leave in its workspace:
 * the input is a small program that builds a tree in a temporary directory (odd names, deep
 * directory chains, symlinks anywhere, FIFOs, hard links, unreadable modes), which is then
 * snapshotted, restored into a new directory, and snapshotted again, through snap.h only.
 *
 * Input: the first line is the snapshot label; every further line is one operation, applied
 * in the current directory ('/' in names becomes '_'):
 *   d NAME        mkdir and enter it              u            leave the current directory
 *   f NAME=DATA   a file with DATA                l NAME=TARGET  a symlink (any target)
 *   p NAME        a FIFO                          h NAME=OLD   a hard link to OLD
 *   m NAME=OCTAL  chmod (symlinks untouched)      D NAME=N     a chain of N*64 nested dirs
 * Properties: the snapshot counts exactly the files, directories and symlinks made (FIFOs are
 * skipped, never followed or blocked on), or at most those when the tree goes beyond the
 * limits a bounded walker may apply (LIMIT_DEPTH, LIMIT_PATH); restoring it and snapshotting
 * the copy gives the same counts and bytes; nothing outside the temporary directory is
 * touched; no depth crashes the walk.
 */
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "workspace/snap/snap.h"

#include "fuzzlib.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_OPS   256
#define MAX_DEPTH 64 /* of 'd' (a 'D' chain is made and left at once) */

static char root[64];

static void remove_fixture(void)
{
    util_rm_rf(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_OFF);
    /* tmpfs when there is one: creating and deleting thousands of directories per input on
     * a disk file system is what would bound the executions per second. */
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/fuzz_snap_walk.XXXXXX", base);
    FZ_CHECK(mkdtemp(root) != NULL);
    atexit(remove_fixture);
    return 0;
}

/* A snapshot may leave out what lies deeper or has a longer path than this (the limits a
 * bounded walker applies: PATH_MAX - 1 bytes, a thousand levels); everything within them it
 * must record. */
#define LIMIT_DEPTH 1024
#define LIMIT_PATH  4095

struct made {
    uint64_t files, dirs, links, bytes;
    int over; /* something was made beyond LIMIT_DEPTH or LIMIT_PATH */
};

/* An entry was made at depth (1 = in the workspace) with a relative path of plen bytes. */
static void note(struct made *m, long depth, size_t plen)
{
    if (depth > LIMIT_DEPTH || plen > LIMIT_PATH) {
        m->over = 1;
    }
}

/* NAME[=ARG] of one operation line (after its letter); '/' in NAME becomes '_'. */
static void split(char *line, char **name, char **arg)
{
    char *eq = strchr(line, '=');
    *arg = eq ? eq + 1 : "";
    if (eq) {
        *eq = 0;
    }
    for (char *p = line; *p; p++) {
        if (*p == '/') {
            *p = '_';
        }
    }
    *name = line;
}

/* n nested directories named name in dfd (at depth, path length plen). */
static void chain(int dfd, int depth, size_t plen, const char *name, long n, struct made *m)
{
    int fd = dup(dfd);
    for (long i = 0; i < n && fd >= 0; i++) {
        if (mkdirat(fd, name, 0755) != 0) {
            break;
        }
        m->dirs++;
        plen += (plen ? 1 : 0) + strlen(name);
        note(m, depth + 1 + i, plen);
        int nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = nfd;
    }
    if (fd >= 0) {
        close(fd);
    }
}

static void file(int dfd, const char *name, const char *data, struct made *m)
{
    int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        return;
    }
    size_t n = strlen(data);
    FZ_CHECK(write(fd, data, n) == (ssize_t)n);
    close(fd);
    m->files++;
    m->bytes += n;
}

/* Run the program in lines (after the label) in ws. */
static void build(int wsfd, struct fz *f, struct made *m)
{
    int stack[MAX_DEPTH];
    size_t plens[MAX_DEPTH + 1]; /* path length of the current directory at each depth */
    int depth = 0, cur = wsfd;
    plens[0] = 0;
    for (int ops = 0; ops < MAX_OPS && f->n; ops++) {
        size_t len;
        char *line = fz_field(f, &len);
        char op = len == strlen(line) ? line[0] : 0; /* a NUL inside: the line is dropped */
        char *name, *arg;
        struct stat st;
        split(line[0] ? line + 1 : line, &name, &arg);
        size_t plen = plens[depth] + (depth ? 1 : 0) + strlen(name); /* of what op makes */
        if (op && strchr("dflhD", op)) {
            note(m, depth + 1, plen);
        }
        switch (op) {
        case 'd':
            if (mkdirat(cur, name, 0755) == 0) {
                m->dirs++;
            }
            if (depth < MAX_DEPTH) {
                int nfd = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (nfd >= 0) {
                    stack[depth++] = cur;
                    cur = nfd;
                    plens[depth] = plen;
                }
            }
            break;
        case 'u':
            if (depth > 0) {
                close(cur);
                cur = stack[--depth];
            }
            break;
        case 'f':
            file(cur, name, arg, m);
            break;
        case 'l':
            if (symlinkat(arg, cur, name) == 0) {
                m->links++;
            }
            break;
        case 'p':
            (void)mkfifoat(cur, name, 0644);
            break;
        case 'h':
            for (char *p = arg; *p; p++) {
                *p = *p == '/' ? '_' : *p;
            }
            if (fstatat(cur, arg, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
                linkat(cur, arg, cur, name, 0) == 0) {
                m->files++;
                m->bytes += (uint64_t)st.st_size;
            }
            break;
        case 'm':
            (void)fchmodat(cur, name, (mode_t)strtol(arg, NULL, 8) & 0777, AT_SYMLINK_NOFOLLOW);
            break;
        case 'D':
            chain(cur, depth, plens[depth], name, (strtol(arg, NULL, 10) & 127) * 64, m);
            break;
        default:
            break;
        }
        free(line);
    }
    while (depth > 0) {
        close(cur);
        cur = stack[--depth];
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = {data, size};
    char ws[128], ws2[128], store[128];
    struct snap_store *st = NULL;
    struct snap_info si, si2;
    struct made m = {0, 0, 0, 0, 0};
    char *label = fz_field(&f, NULL);
    snprintf(ws, sizeof ws, "%s/ws", root);
    snprintf(ws2, sizeof ws2, "%s/ws2", root);
    snprintf(store, sizeof store, "%s/store", root);
    FZ_CHECK(mkdir(ws, 0755) == 0);
    int wsfd = open(ws, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    FZ_CHECK(wsfd >= 0);
    build(wsfd, &f, &m);
    close(wsfd);
    struct snap_ctx *ctx = NULL;
    FZ_CHECK(snap_ctx_new(&ctx) == 0);
    snap_set_spare_max(ctx, 0); /* no spare directories: one input, one tree, all synchronous */
    FZ_CHECK(snap_store_open(ctx, store, &st) == 0);
    int rc = snap_create(st, ws, label, &si);
    FZ_CHECK(rc == 0);
    if (!m.over) {
        FZ_CHECK(si.files == m.files && si.entries == m.files + m.dirs + m.links);
        FZ_CHECK(si.bytes == m.bytes);
    } else {
        FZ_CHECK(si.files <= m.files && si.entries <= m.files + m.dirs + m.links);
    }
    FZ_CHECK(snap_valid_id(si.id));
    rc = snap_restore(st, si.id, ws2, NULL);
    FZ_CHECK(rc == 0);
    rc = snap_create(st, ws2, NULL, &si2);
    FZ_CHECK(rc == 0);
    FZ_CHECK(si2.files == si.files && si2.entries == si.entries && si2.bytes == si.bytes);
    snap_store_close(st);
    snap_ctx_free(ctx); /* joins its threads: the trash of the restore is gone */
    FZ_CHECK(util_rm_rf(ws) == 0 && util_rm_rf(ws2) == 0 && util_rm_rf(store) == 0);
    free(label);
    return 0;
}
