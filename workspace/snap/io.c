/*
 * io.c - file helpers of the snapshot store: escaping, ids, openat2 beneath a root,
 * parent-directory cache, whole-file reads and atomic writes.
 */

#include "workspace/snap/snap_int.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/fswalk.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- small helpers */

int64_t now_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

int64_t ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec;
}

void ent_free_fields(struct ent *e)
{
    free(e->path);
    free(e->target);
}

void entv_free(struct entv *v)
{
    for (size_t i = 0; i < v->n; i++) {
        ent_free_fields(&v->v[i]);
    }
    free(v->v);
    free(v->map);
    memset(v, 0, sizeof(*v));
}

struct ent *entv_push(struct entv *v)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 256;
        v->v = xrealloc(v->v, v->cap * sizeof(*v->v));
    }
    struct ent *e = &v->v[v->n++];
    memset(e, 0, sizeof(*e));
    return e;
}

uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

void entv_index(struct entv *v)
{
    size_t cap = 64;
    while (cap < v->n * 2 + 1) {
        cap *= 2;
    }
    free(v->map);
    v->map = xcalloc(cap, sizeof(*v->map));
    v->mapcap = cap;
    for (size_t i = 0; i < v->n; i++) {
        size_t j = fnv1a(v->v[i].path) & (cap - 1);
        while (v->map[j]) {
            j = (j + 1) & (cap - 1);
        }
        v->map[j] = (uint32_t)(i + 1);
    }
}

struct ent *entv_find(const struct entv *v, const char *path)
{
    if (!v->map) {
        return NULL;
    }
    size_t j = fnv1a(path) & (v->mapcap - 1);
    while (v->map[j]) {
        struct ent *e = &v->v[v->map[j] - 1];
        if (strcmp(e->path, path) == 0) {
            return e;
        }
        j = (j + 1) & (v->mapcap - 1);
    }
    return NULL;
}

int esc_put(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    if (!s || !*s) {
        return buf_putc(b, '-');
    }
    if (strcmp(s, "-") == 0) {
        return buf_puts(b, "%2D");
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= 0x20 || *p == 0x7f || *p == '%') {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            buf_append(b, e, 3);
        } else {
            buf_putc(b, (char)*p);
        }
    }
    return 0;
}

/* Unescape s (NUL terminated) in place. Returns 0 or ERR_INVALID. */
int unesc(char *s)
{
    if (strcmp(s, "-") == 0) {
        s[0] = 0;
        return 0;
    }
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r == '%') {
            int a = util_hexval(r[1]);
            int c = a < 0 ? -1 : util_hexval(r[2]);
            if (a < 0 || c < 0) {
                return ERR_INVALID;
            }
            *w++ = (char)(a * 16 + c);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
    return 0;
}

int snap_valid_id(const char *s)
{
    if (!s || strncmp(s, "snap-", 5) != 0 || !s[5] || strlen(s) > 24) {
        return 0;
    }
    for (const char *p = s + 5; *p; p++) {
        if (*p < '0' || *p > '9') {
            return 0;
        }
    }
    return 1;
}

int64_t id_seq(const char *id)
{
    int64_t v = 0;
    if (!snap_valid_id(id) || util_parse_i64(id + 5, &v) != 0) {
        return -1;
    }
    return v;
}

/* Open path beneath rootfd without following any symlink or leaving the tree. */
int open_beneath(int rootfd, const char *path, int flags, mode_t mode)
{
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
    long fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
    if (fd >= 0 || errno != ENOSYS) {
        return (int)fd;
    }
    /* Old kernel: walk component by component with O_NOFOLLOW. */
    char *copy = xstrdup(path);
    int dfd = dup(rootfd);
    char *p = copy;
    int res = -1;
    while (dfd >= 0) {
        char *slash = strchr(p, '/');
        if (!slash) {
            res = openat(dfd, p, flags | O_NOFOLLOW | O_CLOEXEC, mode);
            break;
        }
        *slash = 0;
        if (strcmp(p, "..") == 0) {
            errno = EXDEV;
            break;
        }
        int nfd = openat(dfd, p, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(dfd);
        dfd = nfd;
        p = slash + 1;
    }
    int saved = errno;
    if (dfd >= 0) {
        close(dfd);
    }
    free(copy);
    errno = saved;
    return res;
}

void pdir_close(struct pdir *p)
{
    if (p->fd >= 0 && p->path && p->path[0]) {
        close(p->fd);
    }
    free(p->path);
    p->path = NULL;
    p->fd = -1;
}

/* Set *leaf to the last component of path and return an fd on its parent (cached in pd;
 * do not close it). -1 with errno on failure. */
int pdir_get(struct pdir *pd, int rootfd, const char *path, const char **leaf)
{
    const char *slash = strrchr(path, '/');
    size_t plen = slash ? (size_t)(slash - path) : 0;
    *leaf = slash ? slash + 1 : path;
    if (pd->path && strlen(pd->path) == plen && strncmp(pd->path, path, plen) == 0) {
        return pd->fd;
    }
    pdir_close(pd);
    pd->path = xstrndup(path, plen);
    if (plen == 0) {
        pd->fd = rootfd;
    } else {
        pd->fd = open_beneath(rootfd, pd->path, O_PATH | O_DIRECTORY, 0);
        if (pd->fd < 0) {
            int saved = errno;
            free(pd->path);
            pd->path = NULL;
            errno = saved;
        }
    }
    return pd->fd;
}

int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read a whole small file relative to dirfd. Caller frees *out. */
int read_file_at(int dirfd, const char *name, char **out, size_t *len)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int rc = 0;
    struct buf b;
    buf_init(&b, 0);
    if (fd < 0) {
        rc = errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
        goto out;
    }
    char tmp[65536];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof(tmp));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            rc = ERR_IO;
            goto out;
        }
        if (r == 0) {
            break;
        }
        buf_append(&b, tmp, (size_t)r);
    }
    *out = buf_detach(&b, len);
out:
    if (fd >= 0) {
        close(fd);
    }
    buf_free(&b);
    return rc;
}

/* Write data to dirfd/name atomically (tmp + rename; with fsyncs if durable). */
int write_file_atomic_d(int dirfd, const char *name, const char *data, size_t len, int durable)
{
    char tmp[96];
    char rnd[17];
    util_random_hex(rnd, 8);
    snprintf(tmp, sizeof(tmp), ".tmp-%s", rnd);
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0) {
        return ERR_IO;
    }
    int rc = write_all(fd, data, len) == 0 ? 0 : ERR_IO;
    if (rc == 0 && durable && fsync(fd) != 0) {
        rc = ERR_IO;
    }
    close(fd);
    if (rc == 0 && renameat(dirfd, tmp, dirfd, name) != 0) {
        rc = ERR_IO;
    }
    if (rc == 0 && durable && fsync(dirfd) != 0) {
        rc = ERR_IO;
    }
    if (rc != 0) {
        unlinkat(dirfd, tmp, 0);
    }
    return rc;
}

int write_file_atomic(int dirfd, const char *name, const char *data, size_t len)
{
    return write_file_atomic_d(dirfd, name, data, len, 0);
}

/* Make dirfd/name another name of fromfd/from (atomically replacing it). Best effort. */
void link_atomic(int fromfd, const char *from, int dirfd, const char *name)
{
    char tmp[96], rnd[17];
    util_random_hex(rnd, 8);
    snprintf(tmp, sizeof(tmp), ".tmp-%s", rnd);
    if (linkat(fromfd, from, dirfd, tmp, 0) != 0) {
        unlinkat(dirfd, name, 0); /* a stale cache would be worse than none */
        return;
    }
    if (renameat(dirfd, tmp, dirfd, name) != 0) {
        unlinkat(dirfd, tmp, 0);
        unlinkat(dirfd, name, 0);
    }
}
