/*
 * snap.c - incremental immutable snapshots: a content-addressed object store + manifests.
 *
 * Manifest format (snaps/<id>.m, text, one entry a line, fields separated by one space):
 *   sessiond-snap 1 <created_ms> <started_ns> <dev> <root_ino> <files> <entries> <bytes>
 *                 <new_bytes> <hashed> <duration_us> <label>
 *   <type f|d|l> <mode octal> <uid> <gid> <size> <mtime_ns> <ctime_ns> <ino> <hash|target|-> <path>
 * Paths, symlink targets and the label are escaped: bytes <= 0x20, 0x7f and '%' become %XX;
 * an empty string is "-" (and "-" itself is "%2D"). Entries are in pre-order (a directory
 * before its contents). The root directory itself is not an entry.
 *
 * Invariants:
 * - An object's name is the SHA-256 of its bytes; objects are created complete (O_TMPFILE +
 *   linkat) and never modified, so a manifest that names an object names those bytes.
 * - Workspace files are never hard-linked to objects: restore copies (copy_file_range).
 * - The stat cache is only a hint: an entry is trusted only if size, mtime, ctime and inode
 *   all match and its mtime is older than the cache's creation minus RACY_NS (the "racily
 *   clean" rule of git: a file modified within the same timestamp tick as our stat could
 *   otherwise keep identical stat data with new contents).
 * - GC treats every manifest and the cache as roots.
 *
 * Threads: the public functions take st->lock. Inside, hashing and copying are spread over
 * a few short-lived worker threads that share nothing but an atomic job index and atomic
 * counters.
 */

#include "snap.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define RACY_NS        (100LL * 1000 * 1000) /* 100 ms: well above a jiffy-coarse timestamp */
#define SMALL_FILE     (4u << 20)            /* read whole files up to this size */
#define CHUNK          (1u << 20)
#define MAX_WORKERS    4
#define PAR_MIN_JOBS   32
#define MANIFEST_MAGIC "sessiond-snap"

struct snap_store {
    pthread_mutex_t lock;
    char *dir;
    int dirfd;  /* the store directory */
    int objfd;  /* objects/ */
    int snapfd; /* snaps/ */
    int64_t next_seq;
    /* One instance per directory in the process (g_stores), so that every user of a store
     * shares its lock: a GC must never run while another writer links objects that its
     * manifest does not name yet, and two creates must not pick the same id. */
    dev_t dev;
    ino_t ino;
    int refs;                /* guarded by g_stores_mu */
    struct snap_store *next; /* guarded by g_stores_mu */
};

static pthread_mutex_t g_stores_mu = PTHREAD_MUTEX_INITIALIZER;
static struct snap_store *g_stores;

/* One workspace entry (or manifest line). */
struct ent {
    char *path;         /* relative, no leading '/'; owned */
    char *target;       /* symlink target; owned; NULL otherwise */
    char type;          /* 'f' 'd' 'l' */
    unsigned char flag; /* per-operation marks */
    uint32_t mode;
    uint32_t uid, gid;
    uint64_t size;
    int64_t mtime_ns, ctime_ns;
    uint64_t ino;
    char hash[65];
};

enum { F_NONE = 0, F_HASH = 1, F_GONE = 2, F_PRESENT = 4, F_COPY = 8, F_FIXMETA = 16 };

struct entv {
    struct ent *v;
    size_t n, cap;
    /* path -> index + 1 (0 = empty slot), open addressing */
    uint32_t *map;
    size_t mapcap;
};

struct mhdr {
    int64_t created_ms, started_ns;
    uint64_t dev, root_ino, files, entries, bytes, new_bytes, hashed;
    int64_t duration_us;
    char label[128];
};

/* ---------------------------------------------------------------- small helpers */

static int64_t now_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec;
}

static void ent_free_fields(struct ent *e)
{
    free(e->path);
    free(e->target);
}

static void entv_free(struct entv *v)
{
    for (size_t i = 0; i < v->n; i++) {
        ent_free_fields(&v->v[i]);
    }
    free(v->v);
    free(v->map);
    memset(v, 0, sizeof(*v));
}

static struct ent *entv_push(struct entv *v)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 256;
        v->v = xrealloc(v->v, v->cap * sizeof(*v->v));
    }
    struct ent *e = &v->v[v->n++];
    memset(e, 0, sizeof(*e));
    return e;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void entv_index(struct entv *v)
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

static struct ent *entv_find(const struct entv *v, const char *path)
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

static int esc_put(struct buf *b, const char *s)
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
static int unesc(char *s)
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

static int64_t id_seq(const char *id)
{
    int64_t v = 0;
    if (!snap_valid_id(id) || util_parse_i64(id + 5, &v) != 0) {
        return -1;
    }
    return v;
}

/* Open path beneath rootfd without following any symlink or leaving the tree. */
static int open_beneath(int rootfd, const char *path, int flags, mode_t mode)
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

/* A cached handle on the parent directory of the entries being processed (one per thread). */
struct pdir {
    char *path; /* "" = root */
    int fd;
};

static void pdir_close(struct pdir *p)
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
static int pdir_get(struct pdir *pd, int rootfd, const char *path, const char **leaf)
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

static int write_all(int fd, const void *p, size_t n)
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
static int read_file_at(int dirfd, const char *name, char **out, size_t *len)
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

/* Write data to dirfd/name atomically (tmp + fsync-less rename). */
static int write_file_atomic(int dirfd, const char *name, const char *data, size_t len)
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
    close(fd);
    if (rc == 0 && renameat(dirfd, tmp, dirfd, name) != 0) {
        rc = ERR_IO;
    }
    if (rc != 0) {
        unlinkat(dirfd, tmp, 0);
    }
    return rc;
}

/* ---------------------------------------------------------------- manifests */

static void put_header(struct buf *b, const struct mhdr *h)
{
    buf_printf(b, "%s 1 %lld %lld %llu %llu %llu %llu %llu %llu %llu %lld ", MANIFEST_MAGIC,
               (long long)h->created_ms, (long long)h->started_ns, (unsigned long long)h->dev,
               (unsigned long long)h->root_ino, (unsigned long long)h->files,
               (unsigned long long)h->entries, (unsigned long long)h->bytes,
               (unsigned long long)h->new_bytes, (unsigned long long)h->hashed,
               (long long)h->duration_us);
    esc_put(b, h->label);
    buf_putc(b, '\n');
}

static void put_ent(struct buf *b, const struct ent *e)
{
    buf_printf(b, "%c %04o %u %u %llu %lld %lld %llu ", e->type, (unsigned)e->mode, e->uid, e->gid,
               (unsigned long long)e->size, (long long)e->mtime_ns, (long long)e->ctime_ns,
               (unsigned long long)e->ino);
    if (e->type == 'f') {
        buf_puts(b, e->hash);
    } else if (e->type == 'l') {
        esc_put(b, e->target);
    } else {
        buf_putc(b, '-');
    }
    buf_putc(b, ' ');
    esc_put(b, e->path);
    buf_putc(b, '\n');
}

/* Split line (modified in place) into at most max space-separated fields. */
static int split(char *line, char **f, int max)
{
    int n = 0;
    char *p = line;
    while (n < max) {
        f[n++] = p;
        char *sp = strchr(p, ' ');
        if (!sp) {
            break;
        }
        *sp = 0;
        p = sp + 1;
    }
    return n;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) {
        return ERR_INVALID;
    }
    *out = v;
    return 0;
}

static int parse_i64f(const char *s, int64_t *out)
{
    return util_parse_i64(s, out);
}

static int parse_header(char *line, struct mhdr *h)
{
    char *f[13];
    memset(h, 0, sizeof(*h));
    if (split(line, f, 13) != 13 || strcmp(f[0], MANIFEST_MAGIC) != 0 || strcmp(f[1], "1") != 0) {
        return ERR_INVALID;
    }
    if (parse_i64f(f[2], &h->created_ms) || parse_i64f(f[3], &h->started_ns) ||
        parse_u64(f[4], &h->dev) || parse_u64(f[5], &h->root_ino) || parse_u64(f[6], &h->files) ||
        parse_u64(f[7], &h->entries) || parse_u64(f[8], &h->bytes) ||
        parse_u64(f[9], &h->new_bytes) || parse_u64(f[10], &h->hashed) ||
        parse_i64f(f[11], &h->duration_us) || unesc(f[12])) {
        return ERR_INVALID;
    }
    snprintf(h->label, sizeof(h->label), "%s", f[12]);
    return 0;
}

/* Parse a manifest (data is modified). Entries are appended to v (if not NULL). */
static int parse_manifest(char *data, size_t len, struct mhdr *h, struct entv *v)
{
    char *end = data + len;
    char *nl = memchr(data, '\n', len);
    if (!nl) {
        return ERR_INVALID;
    }
    *nl = 0;
    int rc = parse_header(data, h);
    if (rc != 0 || !v) {
        return rc;
    }
    for (char *p = nl + 1; p < end;) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) {
            return ERR_INVALID;
        }
        *e = 0;
        char *f[10];
        uint64_t mode = 0, uid = 0, gid = 0, ino = 0;
        struct ent *x = NULL;
        if (split(p, f, 10) != 10 || strlen(f[0]) != 1) {
            return ERR_INVALID;
        }
        x = entv_push(v);
        x->type = f[0][0];
        char *mend = NULL;
        mode = strtoull(f[1], &mend, 8);
        if (*mend || parse_u64(f[2], &uid) || parse_u64(f[3], &gid) || parse_u64(f[4], &x->size) ||
            parse_i64f(f[5], &x->mtime_ns) || parse_i64f(f[6], &x->ctime_ns) ||
            parse_u64(f[7], &ino) || unesc(f[9]) || !f[9][0]) {
            return ERR_INVALID;
        }
        x->mode = (uint32_t)mode;
        x->uid = (uint32_t)uid;
        x->gid = (uint32_t)gid;
        x->ino = ino;
        if (x->type == 'f') {
            if (strlen(f[8]) != 64) {
                return ERR_INVALID;
            }
            memcpy(x->hash, f[8], 65);
        } else if (x->type == 'l') {
            if (unesc(f[8])) {
                return ERR_INVALID;
            }
            x->target = xstrdup(f[8]);
        } else if (x->type != 'd') {
            return ERR_INVALID;
        }
        x->path = xstrdup(f[9]);
        p = e + 1;
    }
    return 0;
}

static int load_manifest_at(int dirfd, const char *name, struct mhdr *h, struct entv *v)
{
    char *data = NULL;
    size_t len = 0;
    int rc = read_file_at(dirfd, name, &data, &len);
    if (rc == 0) {
        rc = parse_manifest(data, len, h, v);
        if (rc != 0) {
            LOG_WARN("snap: corrupt manifest %s", name);
            rc = ERR_IO;
        }
    }
    free(data);
    return rc;
}

/* Read only the header line of a manifest. */
static int load_header_at(int dirfd, const char *name, struct mhdr *h)
{
    char line[1024];
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        return errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
    }
    ssize_t r = pread(fd, line, sizeof(line) - 1, 0);
    close(fd);
    if (r <= 0) {
        return ERR_IO;
    }
    line[r] = 0;
    char *nl = strchr(line, '\n');
    if (!nl) {
        return ERR_IO;
    }
    *nl = 0;
    return parse_header(line, h) == 0 ? 0 : ERR_IO;
}

/* ---------------------------------------------------------------- workspace walk */

struct walk {
    struct entv *out;
    dev_t dev;
    int err;
};

static void walk_dir(struct walk *w, int dfd, const char *prefix)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        w->err = ERR_IO;
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]))) {
            continue;
        }
        struct stat sb;
        if (fstatat(dirfd(d), name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
            continue; /* vanished meanwhile */
        }
        char type;
        if (S_ISREG(sb.st_mode)) {
            type = 'f';
        } else if (S_ISDIR(sb.st_mode)) {
            type = 'd';
            if (sb.st_dev != w->dev) {
                continue; /* a mount point: not part of the workspace */
            }
        } else if (S_ISLNK(sb.st_mode)) {
            type = 'l';
        } else {
            continue; /* fifos, sockets, devices are not snapshotted */
        }
        struct ent *e = entv_push(w->out);
        e->path = prefix[0] ? xasprintf("%s/%s", prefix, name) : xstrdup(name);
        e->type = type;
        e->mode = sb.st_mode & 07777;
        e->uid = sb.st_uid;
        e->gid = sb.st_gid;
        e->size = type == 'd' ? 0 : (uint64_t)sb.st_size;
        e->mtime_ns = ts_ns(&sb.st_mtim);
        e->ctime_ns = ts_ns(&sb.st_ctim);
        e->ino = sb.st_ino;
        if (type == 'l') {
            char tgt[4096];
            ssize_t n = readlinkat(dirfd(d), name, tgt, sizeof(tgt) - 1);
            tgt[n < 0 ? 0 : n] = 0;
            e->target = xstrdup(tgt);
        } else if (type == 'd') {
            int cfd = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd >= 0) {
                char *sub = xstrdup(e->path); /* e may move when the vector grows */
                walk_dir(w, cfd, sub);
                free(sub);
            }
        }
    }
    closedir(d);
}

static int walk_tree(int rootfd, struct entv *out)
{
    struct stat sb;
    if (fstat(rootfd, &sb) != 0) {
        return ERR_IO;
    }
    int fd = openat(rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return ERR_IO;
    }
    struct walk w = {.out = out, .dev = sb.st_dev, .err = 0};
    walk_dir(&w, fd, "");
    return w.err;
}

/* ---------------------------------------------------------------- workers */

struct pool_job {
    size_t n;
    /* Optional grouping: jobs [starts[g], starts[g + 1]) go to one thread together (files of
     * one directory, so that threads do not fight over the same directory's lock). */
    const size_t *starts;
    size_t ngroups;
    _Atomic size_t next;
    void *ctx;
    void (*fn)(void *ctx, size_t i, void *tls);
    void *(*tls_new)(void *ctx);
    void (*tls_free)(void *tls);
};

static void *pool_thread(void *arg)
{
    struct pool_job *j = arg;
    void *tls = j->tls_new ? j->tls_new(j->ctx) : NULL;
    for (;;) {
        size_t g = atomic_fetch_add(&j->next, 1);
        if (!j->starts) {
            if (g >= j->n) {
                break;
            }
            j->fn(j->ctx, g, tls);
            continue;
        }
        if (g >= j->ngroups) {
            break;
        }
        for (size_t i = j->starts[g]; i < j->starts[g + 1]; i++) {
            j->fn(j->ctx, i, tls);
        }
    }
    if (j->tls_free) {
        j->tls_free(tls);
    }
    return NULL;
}

/* Group consecutive jobs with the same parent directory (at most 128 a group). Returns the
 * starts array (ngroups + 1 entries, caller frees). */
static size_t *group_by_dir(struct ent **jobs, size_t n, size_t *ngroups)
{
    size_t *starts = xmalloc((n + 1) * sizeof(*starts));
    size_t g = 0;
    const char *prev = NULL;
    size_t prev_len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *slash = strrchr(jobs[i]->path, '/');
        size_t len = slash ? (size_t)(slash - jobs[i]->path) : 0;
        int same = prev && len == prev_len && strncmp(prev, jobs[i]->path, len) == 0;
        if (!same || i - starts[g - 1] >= 128) {
            starts[g++] = i;
        }
        prev = jobs[i]->path;
        prev_len = len;
    }
    starts[g] = n;
    *ngroups = g;
    return starts;
}

/* Run fn(ctx, i) for i in [0, n) on up to MAX_WORKERS threads (the caller is one of them). */
static void pool_run(struct pool_job *j)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = j->n < PAR_MIN_JOBS ? 1
                                 : (int)(cpus < 1             ? 1
                                         : cpus > MAX_WORKERS ? MAX_WORKERS
                                                              : cpus);
    pthread_t th[MAX_WORKERS];
    int started = 0;
    atomic_store(&j->next, 0);
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&th[started], NULL, pool_thread, j) == 0) {
            started++;
        }
    }
    pool_thread(j);
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
    }
}

/* ---------------------------------------------------------------- hashing into the store */

struct hctx {
    struct snap_store *st;
    int rootfd;
    struct ent **jobs;
    _Atomic uint64_t new_bytes;
    _Atomic int err;
};

struct htls {
    EVP_MD_CTX *md;
    char *buf;
    size_t cap;
};

static const EVP_MD *g_sha256;
static pthread_once_t g_sha256_once = PTHREAD_ONCE_INIT;

static void sha256_init(void)
{
    /* Fetch the implementation once: the implicit fetch of EVP_sha256() per digest costs. */
    g_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *sha256_md(void)
{
    pthread_once(&g_sha256_once, sha256_init);
    return g_sha256 ? g_sha256 : EVP_sha256();
}

static void *htls_new(void *ctx)
{
    (void)ctx;
    struct htls *t = xcalloc(1, sizeof(*t));
    t->md = EVP_MD_CTX_new();
    t->cap = 256 * 1024;
    t->buf = xmalloc(t->cap);
    return t;
}

static void htls_free(void *p)
{
    struct htls *t = p;
    EVP_MD_CTX_free(t->md);
    free(t->buf);
    free(t);
}

static void hex32(const unsigned char *d, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = 0;
}

static void obj_name(const char *hash, char out[68])
{
    out[0] = hash[0];
    out[1] = hash[1];
    out[2] = '/';
    memcpy(out + 3, hash, 65);
}

/* Link an O_TMPFILE fd into objects/ under hash. 0 if linked or already present. */
static int obj_link(int objfd, int tfd, const char *hash, int *created)
{
    char proc[64], name[68];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", tfd);
    obj_name(hash, name);
    *created = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (linkat(AT_FDCWD, proc, objfd, name, AT_SYMLINK_FOLLOW) == 0) {
            *created = 1;
            return 0;
        }
        if (errno == EEXIST) {
            return 0;
        }
        if (errno != ENOENT) {
            break;
        }
        char sub[3] = {hash[0], hash[1], 0};
        if (mkdirat(objfd, sub, 0700) != 0 && errno != EEXIST) {
            break;
        }
    }
    return ERR_IO;
}

/* Hard-link object hash from another store's objects (seedfd) into objfd. 0 if it is there
 * now, ERR_NOT_FOUND if the seed does not have it. Objects are immutable and read-only, so
 * two stores may share their inodes (never a workspace). */
static int obj_adopt(int seedfd, int objfd, const char *hash)
{
    char name[68];
    obj_name(hash, name);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (linkat(seedfd, name, objfd, name, 0) == 0 || errno == EEXIST) {
            return 0;
        }
        if (errno != ENOENT) {
            return ERR_IO;
        }
        /* ENOENT: our xx/ subdirectory or the seed's object is missing */
        if (faccessat(seedfd, name, F_OK, AT_SYMLINK_NOFOLLOW) != 0) {
            return ERR_NOT_FOUND;
        }
        char sub[3] = {hash[0], hash[1], 0};
        if (mkdirat(objfd, sub, 0700) != 0 && errno != EEXIST) {
            return ERR_IO;
        }
    }
    return ERR_IO;
}

static int obj_exists(int objfd, const char *hash)
{
    char name[68];
    obj_name(hash, name);
    return faccessat(objfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Hash one workspace file and make sure its object exists. Updates e->hash, e->size and the
 * stat fields from the open file; sets F_GONE if it vanished or is no longer a file. */
static void hash_one(void *vctx, size_t i, void *vtls)
{
    struct hctx *c = vctx;
    struct htls *t = vtls;
    struct ent *e = c->jobs[i];
    int objfd = c->st->objfd;
    int fd = -1, tfd = -1;
    unsigned char dg[32];
    unsigned int dlen = 0;
    uint64_t total = 0;

    fd = open_beneath(c->rootfd, e->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        e->flag |= F_GONE;
        goto out;
    }
    e->size = (uint64_t)sb.st_size;
    e->mtime_ns = ts_ns(&sb.st_mtim);
    e->ctime_ns = ts_ns(&sb.st_ctim);
    e->ino = sb.st_ino;
    e->mode = sb.st_mode & 07777;
    EVP_DigestInit_ex(t->md, sha256_md(), NULL);
    if ((uint64_t)sb.st_size <= SMALL_FILE) {
        /* Read it whole (one more byte to notice growth), hash, write only if new. */
        size_t want = (size_t)sb.st_size + 1;
        if (want > t->cap) {
            t->cap = want;
            t->buf = xrealloc(t->buf, t->cap);
        }
        int grew = 0;
        while (total < want) {
            ssize_t r = read(fd, t->buf + total, want - total);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0) {
                atomic_store(&c->err, ERR_IO);
                goto out;
            }
            if (r == 0) {
                break;
            }
            total += (uint64_t)r;
        }
        if (total == want) {
            grew = 1; /* grew while we read: fall back to streaming */
        }
        if (!grew) {
            EVP_DigestUpdate(t->md, t->buf, total);
            EVP_DigestFinal_ex(t->md, dg, &dlen);
            hex32(dg, e->hash);
            e->size = total;
            if (obj_exists(objfd, e->hash)) {
                goto out;
            }
            tfd = openat(objfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0444);
            int created = 0;
            if (tfd < 0 || write_all(tfd, t->buf, total) != 0 ||
                obj_link(objfd, tfd, e->hash, &created) != 0) {
                atomic_store(&c->err, ERR_IO);
                goto out;
            }
            if (created) {
                atomic_fetch_add(&c->new_bytes, total);
            }
            goto out;
        }
        if (lseek(fd, 0, SEEK_SET) != 0) {
            atomic_store(&c->err, ERR_IO);
            goto out;
        }
        EVP_DigestInit_ex(t->md, sha256_md(), NULL);
        total = 0;
    }
    /* Large file: stream into an anonymous object file while hashing. */
    tfd = openat(objfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0444);
    if (tfd < 0) {
        atomic_store(&c->err, ERR_IO);
        goto out;
    }
    if (t->cap < CHUNK) {
        t->cap = CHUNK;
        t->buf = xrealloc(t->buf, t->cap);
    }
    for (;;) {
        ssize_t r = read(fd, t->buf, CHUNK);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 || (r > 0 && write_all(tfd, t->buf, (size_t)r) != 0)) {
            atomic_store(&c->err, ERR_IO);
            goto out;
        }
        if (r == 0) {
            break;
        }
        EVP_DigestUpdate(t->md, t->buf, (size_t)r);
        total += (uint64_t)r;
    }
    EVP_DigestFinal_ex(t->md, dg, &dlen);
    hex32(dg, e->hash);
    e->size = total;
    int created = 0;
    if (obj_link(objfd, tfd, e->hash, &created) != 0) {
        atomic_store(&c->err, ERR_IO);
        goto out;
    }
    if (created) {
        atomic_fetch_add(&c->new_bytes, total);
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    if (tfd >= 0) {
        close(tfd);
    }
}

static void hash_job(void *ctx, size_t i, void *tls)
{
    hash_one(ctx, i, tls);
}

/* ---------------------------------------------------------------- store */

static void snap_id_of(int64_t seq, char *out, size_t n)
{
    snprintf(out, n, "snap-%06lld", (long long)seq);
}

/* Ids of all manifests, sorted by seq ascending. Caller frees *ids. */
static int list_seqs(struct snap_store *st, int64_t **ids, size_t *n)
{
    int fd = openat(st->snapfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    size_t cap = 16;
    *ids = xmalloc(cap * sizeof(**ids));
    *n = 0;
    if (!d) {
        if (fd >= 0) {
            close(fd);
        }
        return ERR_IO;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l < 3 || strcmp(de->d_name + l - 2, ".m") != 0) {
            continue;
        }
        char id[32];
        if (l - 2 >= sizeof(id)) {
            continue;
        }
        memcpy(id, de->d_name, l - 2);
        id[l - 2] = 0;
        int64_t s = id_seq(id);
        if (s < 0) {
            continue;
        }
        if (*n == cap) {
            cap *= 2;
            *ids = xrealloc(*ids, cap * sizeof(**ids));
        }
        (*ids)[(*n)++] = s;
    }
    closedir(d);
    /* insertion sort: a store holds tens of snapshots */
    for (size_t i = 1; i < *n; i++) {
        int64_t v = (*ids)[i];
        size_t j = i;
        while (j > 0 && (*ids)[j - 1] > v) {
            (*ids)[j] = (*ids)[j - 1];
            j--;
        }
        (*ids)[j] = v;
    }
    return 0;
}

static void store_free(struct snap_store *st);

static int store_new(const char *dir, struct snap_store **out)
{
    struct snap_store *st = xcalloc(1, sizeof(*st));
    int rc = 0;
    st->dirfd = st->objfd = st->snapfd = -1;
    pthread_mutex_init(&st->lock, NULL);
    st->dir = xstrdup(dir);
    if (util_mkdir_p(dir, 0700) != 0) {
        rc = ERR_IO;
        goto out;
    }
    st->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->dirfd < 0) {
        rc = ERR_IO;
        goto out;
    }
    mkdirat(st->dirfd, "objects", 0700);
    mkdirat(st->dirfd, "snaps", 0700);
    st->objfd = openat(st->dirfd, "objects", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    st->snapfd = openat(st->dirfd, "snaps", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (st->objfd < 0 || st->snapfd < 0) {
        rc = ERR_IO;
        goto out;
    }
    /* objects/xx/ subdirectories are made on first use: opening a store stays cheap */
    int64_t *seqs = NULL;
    size_t n = 0;
    rc = list_seqs(st, &seqs, &n);
    st->next_seq = n ? seqs[n - 1] + 1 : 1;
    free(seqs);
out:
    if (rc != 0) {
        LOG_ERROR("snap: cannot open store %s: %s", dir, err_str(rc));
        store_free(st);
        st = NULL;
    }
    *out = st;
    return rc;
}

static void store_free(struct snap_store *st)
{
    if (!st) {
        return;
    }
    if (st->dirfd >= 0) {
        close(st->dirfd);
    }
    if (st->objfd >= 0) {
        close(st->objfd);
    }
    if (st->snapfd >= 0) {
        close(st->snapfd);
    }
    pthread_mutex_destroy(&st->lock);
    free(st->dir);
    free(st);
}

int snap_store_open(const char *dir, struct snap_store **out)
{
    struct stat sb;
    *out = NULL;
    if (util_mkdir_p(dir, 0700) != 0 || stat(dir, &sb) != 0) {
        LOG_ERROR("snap: cannot create the store directory %s", dir);
        return ERR_IO;
    }
    pthread_mutex_lock(&g_stores_mu);
    for (struct snap_store *p = g_stores; p; p = p->next) {
        if (p->dev == sb.st_dev && p->ino == sb.st_ino) {
            p->refs++;
            *out = p;
            break;
        }
    }
    pthread_mutex_unlock(&g_stores_mu);
    if (*out) {
        return 0;
    }
    struct snap_store *st = NULL;
    int rc = store_new(dir, &st);
    if (rc != 0) {
        return rc;
    }
    st->dev = sb.st_dev;
    st->ino = sb.st_ino;
    st->refs = 1;
    pthread_mutex_lock(&g_stores_mu);
    for (struct snap_store *p = g_stores; p; p = p->next) {
        if (p->dev == st->dev && p->ino == st->ino) {
            p->refs++; /* another thread opened it meanwhile: use theirs */
            *out = p;
            break;
        }
    }
    if (!*out) {
        st->next = g_stores;
        g_stores = st;
        *out = st;
        st = NULL;
    }
    pthread_mutex_unlock(&g_stores_mu);
    store_free(st);
    return 0;
}

void snap_store_close(struct snap_store *st)
{
    if (!st) {
        return;
    }
    pthread_mutex_lock(&g_stores_mu);
    if (--st->refs > 0) {
        pthread_mutex_unlock(&g_stores_mu);
        return;
    }
    for (struct snap_store **pp = &g_stores; *pp; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    pthread_mutex_unlock(&g_stores_mu);
    store_free(st);
}

/* Load the workspace stat cache if it describes this very workspace directory. */
static int load_cache(struct snap_store *st, const struct stat *root, struct mhdr *h,
                      struct entv *v)
{
    int rc = load_manifest_at(st->dirfd, "cache", h, v);
    if (rc == 0 && (h->dev != (uint64_t)root->st_dev || h->root_ino != (uint64_t)root->st_ino)) {
        entv_free(v);
        rc = ERR_NOT_FOUND;
    }
    if (rc != 0) {
        entv_free(v);
        memset(h, 0, sizeof(*h));
        return rc;
    }
    entv_index(v);
    return 0;
}

/* The objects directory named by the store's "seed" file, or -1. */
static int open_seed(struct snap_store *st)
{
    char *path = NULL;
    size_t len = 0;
    int fd = -1;
    if (read_file_at(st->dirfd, "seed", &path, &len) == 0 && len > 0) {
        path[strcspn(path, "\n")] = 0;
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            unlinkat(st->dirfd, "seed", 0); /* the seed store is gone */
        }
    }
    free(path);
    return fd;
}

/* The cache entry for e proves e's content hash without reading the file. */
static int cache_trusted(const struct ent *c, const struct ent *e, int64_t cache_ns)
{
    return c && c->type == 'f' && e->type == 'f' && c->size == e->size &&
           c->mtime_ns == e->mtime_ns && c->ctime_ns == e->ctime_ns && c->ino == e->ino &&
           c->mtime_ns < cache_ns - RACY_NS;
}

int snap_create(struct snap_store *st, const char *workspace, const char *label,
                struct snap_info *out)
{
    struct entv cur = {0}, cache = {0};
    struct mhdr ch, h;
    struct buf m;
    struct ent **jobs = NULL;
    int rootfd = -1, seedfd = -1;
    int rc = 0;
    int64_t t0 = clock_mono_us();
    int64_t started_ns = now_real_ns();
    char id[32], name[40];

    buf_init(&m, 0);
    memset(&h, 0, sizeof(h));
    pthread_mutex_lock(&st->lock);
    rootfd = open(workspace, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (rootfd < 0) {
        rc = errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
        goto out;
    }
    struct stat rsb;
    if (fstat(rootfd, &rsb) != 0) {
        rc = ERR_IO;
        goto out;
    }
    load_cache(st, &rsb, &ch, &cache);
    seedfd = open_seed(st);
    rc = walk_tree(rootfd, &cur);
    if (rc != 0) {
        goto out;
    }
    size_t nj = 0;
    jobs = xmalloc((cur.n + 1) * sizeof(*jobs));
    for (size_t i = 0; i < cur.n; i++) {
        struct ent *e = &cur.v[i];
        if (e->type != 'f') {
            continue;
        }
        struct ent *c = entv_find(&cache, e->path);
        if (cache_trusted(c, e, ch.started_ns)) {
            memcpy(e->hash, c->hash, 65);
            /* A seeded store (snap_restore_seed) takes the objects of its cache from the
             * store it was restored from, once, by hard link. */
            if (seedfd >= 0 && obj_adopt(seedfd, st->objfd, e->hash) != 0) {
                jobs[nj++] = e; /* the seed lost it: read the file */
            }
        } else {
            jobs[nj++] = e;
        }
    }
    struct hctx hc = {.st = st, .rootfd = rootfd, .jobs = jobs};
    atomic_init(&hc.new_bytes, 0);
    atomic_init(&hc.err, 0);
    size_t ngroups = 0;
    size_t *starts = group_by_dir(jobs, nj, &ngroups);
    struct pool_job pj = {.n = nj,
                          .starts = starts,
                          .ngroups = ngroups,
                          .ctx = &hc,
                          .fn = hash_job,
                          .tls_new = htls_new,
                          .tls_free = htls_free};
    pool_run(&pj);
    free(starts);
    rc = atomic_load(&hc.err);
    if (rc != 0) {
        goto out;
    }

    h.created_ms = clock_now_ms();
    h.started_ns = started_ns;
    h.dev = (uint64_t)rsb.st_dev;
    h.root_ino = (uint64_t)rsb.st_ino;
    h.hashed = nj;
    h.new_bytes = atomic_load(&hc.new_bytes);
    snprintf(h.label, sizeof(h.label), "%s", label ? label : "");
    /* Entries under a vanished directory are still listed (the walk saw them); only files
     * that vanished between the walk and the hashing are dropped. */
    for (size_t i = 0; i < cur.n; i++) {
        struct ent *e = &cur.v[i];
        if (e->flag & F_GONE) {
            continue;
        }
        h.entries++;
        if (e->type == 'f') {
            h.files++;
            h.bytes += e->size;
        }
    }
    h.duration_us = clock_mono_us() - t0;
    put_header(&m, &h);
    for (size_t i = 0; i < cur.n; i++) {
        if (!(cur.v[i].flag & F_GONE)) {
            put_ent(&m, &cur.v[i]);
        }
    }
    snap_id_of(st->next_seq, id, sizeof(id));
    snprintf(name, sizeof(name), "%s.m", id);
    rc = write_file_atomic(st->snapfd, name, m.data, m.len);
    if (rc != 0) {
        goto out;
    }
    st->next_seq++;
    /* The cache is the same text; it is replaced, never edited, so sharing is fine. */
    write_file_atomic(st->dirfd, "cache", m.data, m.len);
    if (seedfd >= 0) {
        unlinkat(st->dirfd, "seed", 0); /* every object of the snapshot is ours now */
    }
    h.duration_us = clock_mono_us() - t0;
    if (out) {
        memset(out, 0, sizeof(*out));
        snprintf(out->id, sizeof(out->id), "%s", id);
        out->created_ms = h.created_ms;
        out->files = h.files;
        out->entries = h.entries;
        out->bytes = h.bytes;
        out->hashed = h.hashed;
        out->new_bytes = h.new_bytes;
        out->duration_us = h.duration_us;
        snprintf(out->label, sizeof(out->label), "%s", h.label);
    }
    LOG_DEBUG("snap: %s of %s: %llu files, %llu hashed, %llu new bytes, %lld us", id, workspace,
              (unsigned long long)h.files, (unsigned long long)h.hashed,
              (unsigned long long)h.new_bytes, (long long)h.duration_us);
out:
    pthread_mutex_unlock(&st->lock);
    if (rootfd >= 0) {
        close(rootfd);
    }
    if (seedfd >= 0) {
        close(seedfd);
    }
    free(jobs);
    entv_free(&cur);
    entv_free(&cache);
    buf_free(&m);
    return rc;
}

/* ---------------------------------------------------------------- restore */

/* Remove name (any type, recursively) relative to dfd without following symlinks. */
static int rm_at(int dfd, const char *name)
{
    if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT) {
        return 0;
    }
    if (errno != EISDIR && errno != EPERM) {
        return -1;
    }
    int cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (cfd < 0) {
        return -1;
    }
    DIR *d = fdopendir(cfd);
    if (!d) {
        close(cfd);
        return -1;
    }
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]))) {
            continue;
        }
        if (rm_at(dirfd(d), n) != 0) {
            rc = -1;
        }
    }
    closedir(d);
    if (unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
        rc = -1;
    }
    return rc;
}

struct rctx {
    struct snap_store *st;
    int rootfd;
    struct ent **jobs;
    int as_root;
    _Atomic uint64_t bytes;
    _Atomic int err;
};

struct rtls {
    struct pdir pd;
};

static void *rtls_new(void *ctx)
{
    (void)ctx;
    struct rtls *t = xcalloc(1, sizeof(*t));
    t->pd.fd = -1;
    return t;
}

static void rtls_free(void *p)
{
    struct rtls *t = p;
    pdir_close(&t->pd);
    free(t);
}

/* Copy one object out of the store into the workspace; records the new stat in e. */
static void copy_one(void *vctx, size_t i, void *vtls)
{
    struct rctx *c = vctx;
    struct rtls *t = vtls;
    struct ent *e = c->jobs[i];
    const char *leaf = NULL;
    int src = -1, dst = -1;
    int pfd = pdir_get(&t->pd, c->rootfd, e->path, &leaf);
    if (pfd < 0) {
        LOG_WARN("snap: restore: parent of an entry is unusable (errno %d)", errno);
        atomic_store(&c->err, ERR_IO);
        return;
    }
    mode_t cmode = e->mode & 0777;
    dst = openat(pfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, cmode);
    if (dst < 0 && errno == EEXIST) {
        /* Something appeared meanwhile (a process in the sandbox): replace it. */
        rm_at(pfd, leaf);
        dst = openat(pfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, cmode);
    }
    if (dst < 0) {
        atomic_store(&c->err, ERR_IO);
        goto out;
    }
    if (e->size > 0) {
        char name[68];
        obj_name(e->hash, name);
        src = openat(c->st->objfd, name, O_RDONLY | O_CLOEXEC);
        if (src < 0) {
            LOG_ERROR("snap: restore: object %s is missing", e->hash);
            atomic_store(&c->err, ERR_IO);
            goto out;
        }
        uint64_t done = 0;
        while (done < e->size) {
            ssize_t r = copy_file_range(src, NULL, dst, NULL, e->size - done, 0);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                break;
            }
            done += (uint64_t)r;
        }
        if (done != e->size) {
            LOG_ERROR("snap: restore: object %s is short or unreadable", e->hash);
            atomic_store(&c->err, ERR_IO);
            goto out;
        }
        atomic_fetch_add(&c->bytes, done);
    }
    if (c->as_root && (e->uid != 0 || e->gid != 0)) {
        if (fchown(dst, e->uid, e->gid) != 0) {
            atomic_store(&c->err, ERR_IO);
        }
    }
    struct timespec ts[2] = {
        {.tv_sec = 0, .tv_nsec = UTIME_OMIT},
        {.tv_sec = e->mtime_ns / 1000000000LL, .tv_nsec = e->mtime_ns % 1000000000LL}};
    futimens(dst, ts);
    struct stat sb;
    int have = fstat(dst, &sb) == 0;
    if (!have || (sb.st_mode & 07777) != e->mode) {
        /* the umask took bits away, or special bits: set them (rare) */
        fchmod(dst, e->mode);
        have = fstat(dst, &sb) == 0;
    }
    if (have) {
        e->ino = sb.st_ino;
        e->ctime_ns = ts_ns(&sb.st_ctim);
        e->mtime_ns = ts_ns(&sb.st_mtim);
    }
out:
    if (src >= 0) {
        close(src);
    }
    if (dst >= 0) {
        close(dst);
    }
}

static void copy_job(void *ctx, size_t i, void *tls)
{
    copy_one(ctx, i, tls);
}

/* Fix mode, owner and mtime of an existing entry (path relative to the root). */
static void fix_meta(struct pdir *pd, int rootfd, const struct ent *e, int as_root)
{
    const char *leaf = NULL;
    int pfd = pdir_get(pd, rootfd, e->path, &leaf);
    if (pfd < 0) {
        return;
    }
    if (as_root) {
        fchownat(pfd, leaf, e->uid, e->gid, AT_SYMLINK_NOFOLLOW);
    }
    if (e->type != 'l') {
        /* fchmodat cannot refuse symlinks on this glibc without /proc; the entry was just
         * checked (or created) as a non-symlink, and a swap would need a process racing us. */
        int fd = openat(pfd, leaf, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            char proc[64];
            snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
            struct stat sb;
            if (fstat(fd, &sb) == 0 && !S_ISLNK(sb.st_mode)) {
                chmod(proc, e->mode);
            }
            close(fd);
        }
    }
    struct timespec ts[2] = {
        {.tv_sec = 0, .tv_nsec = UTIME_OMIT},
        {.tv_sec = e->mtime_ns / 1000000000LL, .tv_nsec = e->mtime_ns % 1000000000LL}};
    utimensat(pfd, leaf, ts, AT_SYMLINK_NOFOLLOW);
}

static int is_under(const char *path, const char *dir, size_t dlen)
{
    return dlen > 0 && strncmp(path, dir, dlen) == 0 && path[dlen] == '/';
}

/* Make seed_dir a store whose cache is the restored workspace's (text m) and whose missing
 * objects come from st (the "seed" file), so its first snapshot reads nothing unchanged. */
static int seed_store(struct snap_store *st, const char *seed_dir, const char *m, size_t len)
{
    struct snap_store *dst = NULL;
    int rc = snap_store_open(seed_dir, &dst);
    if (rc != 0) {
        return rc;
    }
    char *objs = xasprintf("%s/objects\n", st->dir);
    rc = write_file_atomic(dst->dirfd, "seed", objs, strlen(objs));
    if (rc == 0) {
        rc = write_file_atomic(dst->dirfd, "cache", m, len);
    }
    free(objs);
    snap_store_close(dst);
    return rc;
}

static int restore_impl(struct snap_store *st, const char *id, const char *workspace,
                        const char *seed_dir, struct snap_restore_info *out)
{
    struct entv tgt = {0}, cur = {0}, cache = {0};
    struct mhdr th, ch, nh;
    struct ent **jobs = NULL;
    struct pdir pd = {.path = NULL, .fd = -1};
    struct buf m;
    int rootfd = -1;
    int rc = 0;
    int64_t t0 = clock_mono_us();
    int64_t started_ns = now_real_ns();
    int as_root = geteuid() == 0;
    char name[40];
    uint64_t removed = 0, kept = 0;
    char *gone = NULL; /* the last removed directory: skip what was under it */
    size_t gone_len = 0;

    buf_init(&m, 0);
    if (!snap_valid_id(id)) {
        return ERR_NOT_FOUND;
    }
    pthread_mutex_lock(&st->lock);
    snprintf(name, sizeof(name), "%s.m", id);
    rc = load_manifest_at(st->snapfd, name, &th, &tgt);
    if (rc != 0) {
        goto out;
    }
    entv_index(&tgt);
    if (util_mkdir_p(workspace, 0755) != 0) {
        rc = ERR_IO;
        goto out;
    }
    rootfd = open(workspace, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    struct stat rsb;
    if (rootfd < 0 || fstat(rootfd, &rsb) != 0) {
        rc = ERR_IO;
        goto out;
    }
    load_cache(st, &rsb, &ch, &cache);
    rc = walk_tree(rootfd, &cur);
    if (rc != 0) {
        goto out;
    }

    /* 1. Remove what the snapshot does not have (or has with another type or content). */
    for (size_t i = 0; i < cur.n; i++) {
        struct ent *w = &cur.v[i];
        if (gone && is_under(w->path, gone, gone_len)) {
            continue;
        }
        struct ent *t = entv_find(&tgt, w->path);
        int keep = 0;
        if (t && t->type == w->type) {
            if (w->type == 'd') {
                keep = 1;
            } else if (w->type == 'l') {
                keep = strcmp(t->target ? t->target : "", w->target ? w->target : "") == 0;
            } else {
                struct ent *c = entv_find(&cache, w->path);
                keep = cache_trusted(c, w, ch.started_ns) && strcmp(c->hash, t->hash) == 0;
            }
        }
        if (keep) {
            t->flag |= F_PRESENT;
            if (t->type != 'd' && (t->mode != w->mode || t->mtime_ns != w->mtime_ns ||
                                   (as_root && (t->uid != w->uid || t->gid != w->gid)))) {
                t->flag |= F_FIXMETA;
            }
            if (t->type == 'f') {
                kept++;
                /* remember the live stat for the new cache */
                t->ino = w->ino;
                t->ctime_ns = w->ctime_ns;
                if (!(t->flag & F_FIXMETA)) {
                    t->mtime_ns = w->mtime_ns;
                }
            }
            continue;
        }
        const char *leaf = NULL;
        int pfd = pdir_get(&pd, rootfd, w->path, &leaf);
        if (pfd < 0 || rm_at(pfd, leaf) != 0) {
            LOG_WARN("snap: restore: cannot remove an entry of %s", workspace);
            rc = ERR_IO;
            goto out;
        }
        removed++;
        if (w->type == 'd') {
            free(gone);
            gone = xstrdup(w->path);
            gone_len = strlen(gone);
        }
    }

    /* 2. Directories and symlinks in order; files become copy jobs. */
    size_t nj = 0;
    jobs = xmalloc((tgt.n + 1) * sizeof(*jobs));
    for (size_t i = 0; i < tgt.n; i++) {
        struct ent *t = &tgt.v[i];
        if (t->flag & F_PRESENT) {
            if (t->flag & F_FIXMETA) {
                if (t->type == 'd') {
                    continue; /* directories are fixed last */
                }
                fix_meta(&pd, rootfd, t, as_root);
                if (t->type == 'f') {
                    /* chmod/utimes changed ctime: re-stat for the cache */
                    const char *leaf = NULL;
                    int pfd = pdir_get(&pd, rootfd, t->path, &leaf);
                    struct stat sb;
                    if (pfd >= 0 && fstatat(pfd, leaf, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
                        t->ino = sb.st_ino;
                        t->ctime_ns = ts_ns(&sb.st_ctim);
                        t->mtime_ns = ts_ns(&sb.st_mtim);
                    }
                }
            }
            continue;
        }
        if (t->type == 'f') {
            jobs[nj++] = t;
            continue;
        }
        const char *leaf = NULL;
        int pfd = pdir_get(&pd, rootfd, t->path, &leaf);
        if (pfd < 0) {
            rc = ERR_IO;
            goto out;
        }
        if (t->type == 'd') {
            if (mkdirat(pfd, leaf, 0700) != 0 && errno != EEXIST) {
                rc = ERR_IO;
                goto out;
            }
        } else {
            if (symlinkat(t->target ? t->target : "", pfd, leaf) != 0) {
                rc = ERR_IO;
                goto out;
            }
            fix_meta(&pd, rootfd, t, as_root);
        }
    }
    pdir_close(&pd);

    /* 3. Copy the files, in parallel. */
    struct rctx rcx = {.st = st, .rootfd = rootfd, .jobs = jobs, .as_root = as_root};
    atomic_init(&rcx.bytes, 0);
    atomic_init(&rcx.err, 0);
    size_t ngroups = 0;
    size_t *starts = group_by_dir(jobs, nj, &ngroups);
    struct pool_job pj = {.n = nj,
                          .starts = starts,
                          .ngroups = ngroups,
                          .ctx = &rcx,
                          .fn = copy_job,
                          .tls_new = rtls_new,
                          .tls_free = rtls_free};
    pool_run(&pj);
    free(starts);
    rc = atomic_load(&rcx.err);
    if (rc != 0) {
        goto out;
    }

    /* 4. Directory modes and mtimes, deepest first (creating entries changed the mtimes). */
    for (size_t i = tgt.n; i-- > 0;) {
        struct ent *t = &tgt.v[i];
        if (t->type == 'd') {
            fix_meta(&pd, rootfd, t, as_root);
        }
    }

    /* 5. The new cache: the snapshot's entries with the workspace's stat data. */
    memset(&nh, 0, sizeof(nh));
    nh.created_ms = clock_now_ms();
    nh.started_ns = started_ns;
    nh.dev = (uint64_t)rsb.st_dev;
    nh.root_ino = (uint64_t)rsb.st_ino;
    nh.files = th.files;
    nh.entries = th.entries;
    nh.bytes = th.bytes;
    snprintf(nh.label, sizeof(nh.label), "restore of %s", id);
    put_header(&m, &nh);
    for (size_t i = 0; i < tgt.n; i++) {
        put_ent(&m, &tgt.v[i]);
    }
    write_file_atomic(st->dirfd, "cache", m.data, m.len);
    if (seed_dir) {
        rc = seed_store(st, seed_dir, m.data, m.len);
        if (rc != 0) {
            goto out;
        }
    }

    if (out) {
        out->copied = nj;
        out->copied_bytes = atomic_load(&rcx.bytes);
        out->kept = kept;
        out->removed = removed;
        out->duration_us = clock_mono_us() - t0;
    }
    LOG_DEBUG("snap: restored %s into %s: %zu copied, %llu kept, %llu removed", id, workspace, nj,
              (unsigned long long)kept, (unsigned long long)removed);
out:
    if (rc != 0) {
        /* The workspace is in between: make sure the next snapshot rehashes everything. */
        unlinkat(st->dirfd, "cache", 0);
    }
    pthread_mutex_unlock(&st->lock);
    pdir_close(&pd);
    if (rootfd >= 0) {
        close(rootfd);
    }
    free(gone);
    free(jobs);
    entv_free(&tgt);
    entv_free(&cur);
    entv_free(&cache);
    buf_free(&m);
    return rc;
}

int snap_restore(struct snap_store *st, const char *id, const char *workspace,
                 struct snap_restore_info *out)
{
    return restore_impl(st, id, workspace, NULL, out);
}

int snap_restore_seed(struct snap_store *st, const char *id, const char *workspace,
                      const char *seed_dir, struct snap_restore_info *out)
{
    return restore_impl(st, id, workspace, seed_dir, out);
}

/* ---------------------------------------------------------------- listing, pruning, gc */

static void info_from_header(const char *id, const struct mhdr *h, struct snap_info *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->id, sizeof(out->id), "%s", id);
    out->created_ms = h->created_ms;
    out->files = h->files;
    out->entries = h->entries;
    out->bytes = h->bytes;
    out->hashed = h->hashed;
    out->new_bytes = h->new_bytes;
    out->duration_us = h->duration_us;
    snprintf(out->label, sizeof(out->label), "%s", h->label);
}

int snap_get(struct snap_store *st, const char *id, struct snap_info *out)
{
    struct mhdr h;
    char name[40];
    if (!snap_valid_id(id)) {
        return ERR_NOT_FOUND;
    }
    snprintf(name, sizeof(name), "%s.m", id);
    pthread_mutex_lock(&st->lock);
    int rc = load_header_at(st->snapfd, name, &h);
    pthread_mutex_unlock(&st->lock);
    if (rc == 0) {
        info_from_header(id, &h, out);
    }
    return rc;
}

int snap_latest(struct snap_store *st, char *id, size_t n)
{
    int64_t *seqs = NULL;
    size_t cnt = 0;
    pthread_mutex_lock(&st->lock);
    int rc = list_seqs(st, &seqs, &cnt);
    pthread_mutex_unlock(&st->lock);
    if (rc == 0 && cnt == 0) {
        rc = ERR_NOT_FOUND;
    }
    if (rc == 0) {
        snap_id_of(seqs[cnt - 1], id, n);
    }
    free(seqs);
    return rc;
}

int snap_list(struct snap_store *st, json_t **out)
{
    int64_t *seqs = NULL;
    size_t cnt = 0;
    json_t *arr = json_array();
    pthread_mutex_lock(&st->lock);
    int rc = list_seqs(st, &seqs, &cnt);
    for (size_t i = 0; rc == 0 && i < cnt; i++) {
        char id[32], name[40];
        struct mhdr h;
        snap_id_of(seqs[i], id, sizeof(id));
        snprintf(name, sizeof(name), "%s.m", id);
        if (load_header_at(st->snapfd, name, &h) != 0) {
            continue;
        }
        json_array_append_new(
            arr,
            json_pack("{s:s, s:I, s:s, s:I, s:I, s:I, s:I, s:I}", "id", id, "created_at",
                      (json_int_t)h.created_ms, "label", h.label, "files", (json_int_t)h.files,
                      "bytes", (json_int_t)h.bytes, "new_bytes", (json_int_t)h.new_bytes, "hashed",
                      (json_int_t)h.hashed, "duration_ms", (json_int_t)(h.duration_us / 1000)));
    }
    pthread_mutex_unlock(&st->lock);
    free(seqs);
    if (rc != 0) {
        json_decref(arr);
        arr = NULL;
    }
    *out = arr;
    return rc;
}

static int delete_locked(struct snap_store *st, const char *id)
{
    char name[40];
    snprintf(name, sizeof(name), "%s.m", id);
    if (unlinkat(st->snapfd, name, 0) != 0) {
        return errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
    }
    return 0;
}

int snap_delete(struct snap_store *st, const char *id)
{
    if (!snap_valid_id(id)) {
        return ERR_NOT_FOUND;
    }
    pthread_mutex_lock(&st->lock);
    int rc = delete_locked(st, id);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* A set of object hashes (32 raw bytes each as hex text keys). */
struct hset {
    char (*v)[65];
    size_t cap, n;
};

static void hset_add(struct hset *s, const char *h)
{
    if ((s->n + 1) * 2 > s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 1024;
        char(*nv)[65] = xcalloc(ncap, 65);
        for (size_t i = 0; i < s->cap; i++) {
            if (s->v[i][0]) {
                size_t j = fnv1a(s->v[i]) & (ncap - 1);
                while (nv[j][0]) {
                    j = (j + 1) & (ncap - 1);
                }
                memcpy(nv[j], s->v[i], 65);
            }
        }
        free(s->v);
        s->v = nv;
        s->cap = ncap;
    }
    size_t j = fnv1a(h) & (s->cap - 1);
    while (s->v[j][0]) {
        if (memcmp(s->v[j], h, 64) == 0) {
            return;
        }
        j = (j + 1) & (s->cap - 1);
    }
    memcpy(s->v[j], h, 65);
    s->n++;
}

static int hset_has(const struct hset *s, const char *h)
{
    if (!s->cap) {
        return 0;
    }
    size_t j = fnv1a(h) & (s->cap - 1);
    while (s->v[j][0]) {
        if (memcmp(s->v[j], h, 64) == 0) {
            return 1;
        }
        j = (j + 1) & (s->cap - 1);
    }
    return 0;
}

static int add_refs(int dirfd, const char *name, struct hset *refs)
{
    struct entv v = {0};
    struct mhdr h;
    int rc = load_manifest_at(dirfd, name, &h, &v);
    for (size_t i = 0; rc == 0 && i < v.n; i++) {
        if (v.v[i].type == 'f') {
            hset_add(refs, v.v[i].hash);
        }
    }
    entv_free(&v);
    return rc;
}

static int gc_locked(struct snap_store *st, uint64_t *kept_out, uint64_t *freed_out)
{
    struct hset refs = {0};
    int64_t *seqs = NULL;
    size_t cnt = 0;
    uint64_t kept = 0, freed = 0;
    int rc = list_seqs(st, &seqs, &cnt);
    for (size_t i = 0; rc == 0 && i < cnt; i++) {
        char id[32], name[40];
        snap_id_of(seqs[i], id, sizeof(id));
        snprintf(name, sizeof(name), "%s.m", id);
        rc = add_refs(st->snapfd, name, &refs);
        if (rc == ERR_NOT_FOUND) {
            rc = 0;
        }
    }
    if (rc != 0) {
        /* Never collect with an unreadable root: we could delete live objects. */
        goto out;
    }
    int crc = add_refs(st->dirfd, "cache", &refs);
    if (crc != 0 && crc != ERR_NOT_FOUND) {
        unlinkat(st->dirfd, "cache", 0); /* corrupt: drop it, it is only a hint */
    }
    for (int sub = 0; sub < 256; sub++) {
        char sname[3];
        snprintf(sname, sizeof(sname), "%02x", sub);
        int sfd = openat(st->objfd, sname, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        DIR *d = sfd >= 0 ? fdopendir(sfd) : NULL;
        if (!d) {
            if (sfd >= 0) {
                close(sfd);
            }
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strlen(de->d_name) != 64) {
                continue;
            }
            struct stat sb;
            if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
                continue;
            }
            if (hset_has(&refs, de->d_name)) {
                kept += (uint64_t)sb.st_size;
            } else if (unlinkat(dirfd(d), de->d_name, 0) == 0) {
                freed += (uint64_t)sb.st_size;
            }
        }
        closedir(d);
    }
out:
    free(seqs);
    free(refs.v);
    if (kept_out) {
        *kept_out = kept;
    }
    if (freed_out) {
        *freed_out = freed;
    }
    return rc;
}

int snap_gc(struct snap_store *st, uint64_t *kept_bytes, uint64_t *freed_bytes)
{
    pthread_mutex_lock(&st->lock);
    int rc = gc_locked(st, kept_bytes, freed_bytes);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int snap_prune(struct snap_store *st, int keep, uint64_t quota_bytes, uint64_t *used_out)
{
    int64_t *seqs = NULL;
    size_t cnt = 0;
    uint64_t used = 0;
    pthread_mutex_lock(&st->lock);
    int rc = list_seqs(st, &seqs, &cnt);
    size_t first = 0;
    while (rc == 0 && keep > 0 && cnt - first > (size_t)keep) {
        char id[32];
        snap_id_of(seqs[first++], id, sizeof(id));
        rc = delete_locked(st, id);
    }
    if (rc == 0) {
        rc = gc_locked(st, &used, NULL);
    }
    while (rc == 0 && quota_bytes > 0 && used > quota_bytes && cnt - first > 1) {
        char id[32];
        snap_id_of(seqs[first++], id, sizeof(id));
        rc = delete_locked(st, id);
        if (rc == 0) {
            rc = gc_locked(st, &used, NULL);
        }
    }
    pthread_mutex_unlock(&st->lock);
    free(seqs);
    if (used_out) {
        *used_out = used;
    }
    return rc;
}
