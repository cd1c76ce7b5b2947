/*
 * fuzz_ws_path.c - workspace path resolution: a client's path (GET/PUT …/files?path=) goes
 * through sbx_path_check and then sbx_read_file / sbx_write_file / sbx_list_files of a real
 * sandbox (the process backend), over a workspace that holds what a hostile sandbox leaves
 * there: symlinks out of it (relative and absolute), a symlink loop, a FIFO, names that are
 * not UTF-8.
 *
 * Input: byte 0 picks the operation (read, write, list, check only), then "PATH\nDATA"
 * (PATH any bytes, NULs included; DATA is what a write stores).
 * Properties: an accepted path is 1..4096 bytes, relative, without NUL or ".." component;
 * nothing outside the workspace is ever read, listed or written; a listing succeeds with a
 * result and shows every entry; no descriptor leaks.
 */
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/outpump.h"
#include "sandbox/sbx.h"

#include "fuzzlib.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define OUTSIDE_SECRET   "outside-secret-4f1d9c"
#define SECRET_NAME      "outside-name-7d2e"
#define WRITES_PER_RESET 256

/* The harness's fixture (this process only). */
static char root[64], ws[128], outside[128];
static struct sbx *sb;
static int writes;

static void put(const char *dir, const char *name, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    FZ_CHECK(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
}

/* The workspace a hostile sandbox prepared. */
static void make_workspace(void)
{
    char p[256], t[256];
    FZ_CHECK(util_rm_rf(ws) == 0 && mkdir(ws, 0755) == 0);
    snprintf(p, sizeof p, "%s/dir", ws);
    FZ_CHECK(mkdir(p, 0755) == 0);
    put(p, "file.txt", "inside\n");
    put(ws, "a.txt", "a\n");
    snprintf(p, sizeof p, "%s/up", ws);
    FZ_CHECK(symlink("../outside", p) == 0);
    snprintf(p, sizeof p, "%s/dir/escape", ws);
    FZ_CHECK(symlink("../../outside/" SECRET_NAME, p) == 0);
    snprintf(p, sizeof p, "%s/abs", ws);
    FZ_CHECK(symlink(outside, p) == 0);
    snprintf(p, sizeof p, "%s/dir/loop", ws);
    FZ_CHECK(symlink("loop", p) == 0);
    snprintf(p, sizeof p, "%s/dotdot", ws);
    snprintf(t, sizeof t, "%s/..", ws);
    FZ_CHECK(symlink(t, p) == 0);
    snprintf(p, sizeof p, "%s/fifo", ws);
    FZ_CHECK(mkfifo(p, 0644) == 0);
    /* Names are bytes: a sandbox need not use UTF-8. */
    put(ws, "latin1-\xe9t\xe9.txt", "x");
    snprintf(p, sizeof p, "%s/dir-\xff\xfe", ws);
    FZ_CHECK(mkdir(p, 0755) == 0);
    put(p, "inner-\xc3(", "y");
}

static void remove_fixture(void)
{
    util_rm_rf(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct outpump *pump = NULL;
    struct sbx_backend *be = NULL;
    char data[128];
    log_set_level(LOG_LEVEL_OFF);
    /* tmpfs when there is one (path resolution is the VFS's, whatever the file system): the
     * directories writes create and resets delete would otherwise bound the speed. */
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/fuzz_ws_path.XXXXXX", base);
    FZ_CHECK(mkdtemp(root) != NULL);
    atexit(remove_fixture);
    snprintf(ws, sizeof ws, "%s/ws", root);
    snprintf(outside, sizeof outside, "%s/outside", root);
    snprintf(data, sizeof data, "%s/data", root);
    FZ_CHECK(mkdir(outside, 0755) == 0 && mkdir(ws, 0755) == 0);
    put(outside, SECRET_NAME, OUTSIDE_SECRET "\n");
    make_workspace();
    FZ_CHECK(outpump_start(&pump) == 0);
    struct sbx_config c = {.backend = "process", .data_dir = data};
    FZ_CHECK(sbx_backend_open(&c, pump, &be) == 0);
    struct sbx_spec spec = {.name = "fuzz", .workspace = ws};
    FZ_CHECK(sbx_create(be, &spec, &sb) == 0);
    /* The sandbox lives as long as the process. */
    return 0;
}

/* The rule, written out independently of sbx_path_check. */
static int path_ok(const char *p, size_t len)
{
    if (len < 1 || len > 4096 || memchr(p, 0, len) || p[0] == '/') {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        int starts = i == 0 || p[i - 1] == '/';
        int ends = i + 2 == len || (i + 2 < len && p[i + 2] == '/');
        if (starts && p[i] == '.' && i + 1 < len && p[i + 1] == '.' && ends) {
            return 0;
        }
    }
    return 1;
}

static void check_outside(void)
{
    DIR *d = opendir(outside);
    struct dirent *de;
    int n = 0;
    FZ_CHECK(d != NULL);
    while ((de = readdir(d)) != NULL) {
        n++;
    }
    closedir(d);
    FZ_CHECK(n == 3); /* ".", "..", SECRET_NAME */
    char p[256], buf[64] = {0};
    snprintf(p, sizeof p, "%s/" SECRET_NAME, outside);
    int fd = open(p, O_RDONLY);
    FZ_CHECK(fd >= 0 && read(fd, buf, sizeof buf - 1) == (ssize_t)strlen(OUTSIDE_SECRET "\n"));
    close(fd);
    FZ_CHECK(strcmp(buf, OUTSIDE_SECRET "\n") == 0);
    /* Nothing escaped into the parent of the workspace either. */
    d = opendir(root);
    n = 0;
    FZ_CHECK(d != NULL);
    while ((de = readdir(d)) != NULL) {
        n++;
    }
    closedir(d);
    FZ_CHECK(n == 5); /* ".", "..", ws, outside, data */
}

/* Entries of directory dir, "." and ".." aside. */
static size_t count(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;
    FZ_CHECK(d != NULL);
    while ((de = readdir(d)) != NULL) {
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    }
    closedir(d);
    return n;
}

/* No descriptor of ours is left open on anything under the fixture (other threads of the
 * sandbox layer hold pipes and sockets: only paths under root count). */
static void check_no_fd_left(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    FZ_CHECK(d != NULL);
    while ((de = readdir(d)) != NULL) {
        char p[300], t[256];
        snprintf(p, sizeof p, "/proc/self/fd/%s", de->d_name);
        ssize_t n = readlink(p, t, sizeof t - 1);
        if (n > 0) {
            t[n] = 0;
            FZ_CHECK(strncmp(t, root, strlen(root)) != 0);
        }
    }
    closedir(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = {data, size};
    int op = fz_byte(&f) % 4;
    size_t plen, dlen;
    char *path = fz_field(&f, &plen);
    char *content = fz_rest(&f, &dlen);
    struct buf b;
    json_t *list = NULL;
    int rc, ok = sbx_path_check(path, plen) == 0;
    FZ_CHECK(ok == path_ok(path, plen));
    buf_init(&b, 1 << 20);
    switch (op) {
    case 0:
        rc = sbx_read_file(sb, path, &b);
        FZ_CHECK(rc <= 0);
        FZ_CHECK(!memmem(b.data ? b.data : "", b.len, OUTSIDE_SECRET, strlen(OUTSIDE_SECRET)));
        break;
    case 1:
        if (memmem(path, plen, SECRET_NAME, strlen(SECRET_NAME)) ||
            memmem(content, dlen, OUTSIDE_SECRET, strlen(OUTSIDE_SECRET))) {
            break; /* the workspace may hold anything but what marks the outside */
        }
        rc = sbx_write_file(sb, path, content, dlen);
        FZ_CHECK(rc <= 0);
        check_outside();
        if (++writes % WRITES_PER_RESET == 0) {
            make_workspace();
        }
        break;
    case 2:
        rc = sbx_list_files(sb, path, &list);
        FZ_CHECK(rc <= 0);
        if (rc == 0) {
            FZ_CHECK(json_is_object(list));
            char *s = json_dumps(list, JSON_COMPACT);
            FZ_CHECK(s && !strstr(s, SECRET_NAME));
            free(s);
            if (!*path || !strcmp(path, ".")) { /* every entry is listed, whatever its name */
                FZ_CHECK(json_array_size(json_object_get(list, "entries")) == count(ws));
            }
        }
        json_decref(list);
        break;
    default:
        break;
    }
    buf_free(&b);
    free(path);
    free(content);
    check_no_fd_left();
    return 0;
}
