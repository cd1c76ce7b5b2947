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
 * - An object's name is the SHA-256 of its bytes; objects are created complete (written into
 *   a spare inode or an O_TMPFILE, then renamed/linked to their name) and never modified, so
 *   a manifest that names an object names those bytes. A manifest is written after all its
 *   objects exist (see snap_set_durable for power loss).
 * - An object is either a file objects/xx/<hash> or a range of a pack (packs/p-*.pack, listed
 *   in its .idx; see "packs" below). A pack is complete before its index exists, and never
 *   modified; manifests do not say where an object lives.
 * - Workspace files are never hard-linked to objects: restore copies (copy_file_range).
 * - The stat cache is only a hint: an entry is trusted only if size, mtime, ctime and inode
 *   all match and its mtime is older than the cache's creation minus RACY_NS (the "racily
 *   clean" rule of git: a file modified within the same timestamp tick as our stat could
 *   otherwise keep identical stat data with new contents).
 * - GC treats every manifest and the cache as roots.
 * - Restores never write through a symlink (openat2 beneath the root, O_NOFOLLOW) nor through
 *   a hard link (a file is rewritten in place only if its link count is 1); a spare is used
 *   only if it is still an empty, singly-linked file (or empty directory) of ours.
 *
 * Threads: the public functions take st->lock. Inside, walking, hashing and copying are
 * spread over a few short-lived worker threads that share nothing but an atomic job index and
 * atomic counters. Spare-inode pools (shared by sibling stores, guarded by their own mutex)
 * are topped up by detached filler threads, and trash is deleted (or recycled into the pools)
 * by detached janitor threads; snap_background_wait() waits for both. Fillers wait while a
 * restore or a snapshot runs, recyclers unless it is short of spares (restore_yield).
 */

#include "workspace/snap/snap.h"

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

#define RACY_NS        (100LL * 1000 * 1000) /* 100 ms: well above a jiffy-coarse timestamp */
#define SMALL_FILE     (4u << 20)            /* read whole files up to this size */
#define CHUNK          (1u << 20)
#define MAX_WORKERS    4
#define PAR_MIN_JOBS   32
#define MANIFEST_MAGIC "sessiond-snap"

struct snap_store {
    pthread_mutex_t lock;
    char *dir;
    int dirfd;       /* the store directory */
    int objfd;       /* objects/ */
    int snapfd;      /* snaps/ */
    int packfd;      /* packs/ */
    struct pidx *px; /* pack index, loaded on first use (pidx_load); guarded by lock */
    int64_t next_seq;
    struct spool *pool; /* spare inodes (shared with sibling stores) */
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
    char type;          /* 'f' 'd' 'l'; 'x' (walk only): left out, see walk_pre */
    unsigned char flag; /* per-operation marks */
    unsigned char omit; /* type 'x' (walk only): OMIT_* */
    uint32_t mode;
    uint32_t uid, gid;
    uint64_t size;
    int64_t mtime_ns, ctime_ns;
    uint64_t ino;
    uint32_t nlink; /* from the walk; not stored */
    uint64_t poff;  /* F_PACKED: offset of its new object in the snapshot's pack */
    char hash[65];
};

enum {
    F_NONE = 0,
    F_HASH = 1,
    F_GONE = 2,
    F_PRESENT = 4,
    F_REWRITE = 8,
    F_FIXMETA = 16,
    F_PACKED = 32
};

/* Why the walk left an entry out of snapshots (type 'x'). */
enum { OMIT_NONE = 0, OMIT_SPECIAL, OMIT_DEEP, OMIT_LONG, OMIT_BIG };

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

static int64_t thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
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

/* snap_set_durable(): manifests reach the disk before snap_create returns. */
static _Atomic int g_durable;

void snap_set_durable(int on)
{
    atomic_store(&g_durable, on ? 1 : 0);
}

/* Write data to dirfd/name atomically (tmp + rename; with fsyncs if durable). */
static int write_file_atomic_d(int dirfd, const char *name, const char *data, size_t len,
                               int durable)
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

static int write_file_atomic(int dirfd, const char *name, const char *data, size_t len)
{
    return write_file_atomic_d(dirfd, name, data, len, 0);
}

/* Make dirfd/name another name of fromfd/from (atomically replacing it). Best effort. */
static void link_atomic(int fromfd, const char *from, int dirfd, const char *name)
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

static int rm_at(int dfd, const char *name);
static int split_path(const char *path, char **parent, char **leaf);
static void trash_later(char *path, int recycle);

/* ---------------------------------------------------------------- spare inodes, janitor */

/*
 * Why a pool of spare inodes: ext4 without a journal (this host's root file system) refuses to
 * reuse an inode freed in the last 60 s (360 s while its inode table block is dirty):
 * find_inode_bit() calls recently_deleted() -- a buffer-cache lookup -- for every free slot
 * from the start of the group until it finds an older one. After any mass delete in the group
 * (a workspace, an old image, a pruned snapshot, anybody's test tree), every create costs
 * O(recently freed inodes), and the 10,000 creates of a restore take 2-4 s instead of 0.2 s
 * (perf: 75% of the restore in find_get_block/recently_deleted). User space cannot steer the
 * allocator, so inode allocation leaves the critical path: a directory of empty files
 * ("spares", named by a hex counter) next to the stores is topped up by a background thread;
 * restore and snapshot write a spare through its fd and rename it to its final name
 * (renameat2 RENAME_NOREPLACE: a rename allocates no inode, and the file appears complete).
 * With a journal the scan does not exist and the pool only takes the ordinary create cost
 * off the critical path.
 *
 * One pool per directory <parent of the store>/.snap-spare (sessions' stores share
 * <data>/snapshots/.snap-spare, a repository's image store <data>/repos/<name>/.snap-spare).
 * Pools live as long as the process (a handful of small structs). A spare is a file we created
 * empty, or a file of a dead tree recycled under the checks of "Recycling" below (no xattrs,
 * no flags, one link, open nowhere), which leave it indistinguishable from a new one.
 */
#define SPARE_DIR    "/.snap-spare"
#define SPARE_MODE   0644 /* the usual mode of a file: most restored files need no chmod */
#define TRASH_PREFIX "t-" /* a discarded tree waiting in a pool directory (snap_discard_tree) */

enum { SP_FILE = 0, SP_DIR = 1 }; /* kinds of spares: empty files "<hex>", empty dirs "d<hex>" */

struct spool {
    pthread_mutex_t mu;
    char *dir;           /* immutable */
    int dfd;             /* the pool directory, -1 until opened; guarded by mu */
    unsigned gen;        /* bumped when dfd is reopened; guarded by mu */
    uint64_t *names[2];  /* spares ready to take, per kind (stacks); guarded by mu */
    size_t n[2], cap[2]; /* guarded by mu */
    uint64_t next_name;  /* next name to create (shared by the kinds); guarded by mu */
    size_t want[2];      /* target sizes; guarded by mu */
    int filling;         /* a filler thread runs; guarded by mu */
    int users;           /* operations between pool_check and pool_release; guarded by mu */
    dev_t dev;           /* file system of dfd (recycling only goes there); guarded by mu */
    struct spool *next;  /* set before the pool is published in g_pools, then immutable */
};

static pthread_mutex_t g_pools_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_bg_cv = PTHREAD_COND_INITIALIZER;
static struct spool *g_pools; /* guarded by g_pools_mu */
static int g_bg_running;      /* background threads alive; guarded by g_pools_mu */
static _Atomic size_t g_spare_max = 65536;

void snap_set_spare_max(size_t n)
{
    atomic_store(&g_spare_max, n);
}

/* Restores running now (snapshots count too). The spare filler and the recycler wait for them:
 * a restore that shares the file system with a thread creating inodes or freeing blocks copies
 * slower, and the restore is what a user waits for (so is a snapshot: the session's next prompt
 * starts after it, and on 2 cores a filler's creates, CPU-bound in ext4's inode scan, took a
 * CPU from it).
 * The filler waits even for a restore that ran out of spares (g_restore_short): its create
 * costs the same inode scan as the restore's own, on a CPU the restore's workers need, and
 * it holds the pool directory's lock for the whole scan -- the lock each rename of a spare
 * out of that directory takes (with the file system's rename mutex held meanwhile, which
 * stalls the other workers' renames too). Measured with a filler that kept going for
 * restores marked short: image starts of 10,000 files in bench/pool.sh copied for 1.1-9.5 s
 * instead of 0.3-0.5 s (perf: 45% of all samples in the filler's ext4_create ->
 * recently_deleted, 12% in the workers' rwsem_spin_on_owner under lock_two_directories);
 * bench/snap's back-to-back restores took 4.5-6.3 s with 9,500-10,000 spares, 0.3-0.8 s
 * with the filler waiting.
 * The recycler keeps going for a short restore: a recycled spare costs no inode scan (a
 * truncate and a rename) and saves the restore a create (measured: always yielding left
 * image starts short of 4-6,000 spares, 3-4 s each). */
static pthread_mutex_t g_rest_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_rest_cv = PTHREAD_COND_INITIALIZER;
static _Atomic int g_restoring;     /* written under g_rest_mu; read without it as a hint */
static _Atomic int g_restore_short; /* a running restore found its pool empty */
#define YIELD_MAX_MS 3000           /* a restore longer than this no longer holds the others */

static void restoring_begin(void)
{
    pthread_mutex_lock(&g_rest_mu);
    atomic_fetch_add(&g_restoring, 1);
    pthread_mutex_unlock(&g_rest_mu);
}

static void restoring_end(void)
{
    pthread_mutex_lock(&g_rest_mu);
    if (atomic_fetch_sub(&g_restoring, 1) == 1) {
        atomic_store(&g_restore_short, 0);
    }
    pthread_cond_broadcast(&g_rest_cv);
    pthread_mutex_unlock(&g_rest_mu);
}

/* A restore found its pool empty: wake the recyclers that wait in restore_yield(). */
static void restore_mark_short(void)
{
    pthread_mutex_lock(&g_rest_mu);
    atomic_store(&g_restore_short, 1);
    pthread_cond_broadcast(&g_rest_cv);
    pthread_mutex_unlock(&g_rest_mu);
}

/* Wait (at most YIELD_MAX_MS) until no restore runs; unless one is short of spares and
 * feed_short is set (the recycler: see above). Never call it from a restore. */
static void restore_yield(int feed_short)
{
    if (atomic_load(&g_restoring) == 0 || (feed_short && atomic_load(&g_restore_short))) {
        return;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += YIELD_MAX_MS / 1000;
    pthread_mutex_lock(&g_rest_mu);
    while (atomic_load(&g_restoring) > 0 && !(feed_short && atomic_load(&g_restore_short))) {
        if (pthread_cond_timedwait(&g_rest_cv, &g_rest_mu, &dl) == ETIMEDOUT) {
            break;
        }
    }
    pthread_mutex_unlock(&g_rest_mu);
}

static void bg_enter(void)
{
    pthread_mutex_lock(&g_pools_mu);
    g_bg_running++;
    pthread_mutex_unlock(&g_pools_mu);
}

static void bg_leave(void)
{
    pthread_mutex_lock(&g_pools_mu);
    g_bg_running--;
    pthread_cond_broadcast(&g_bg_cv);
    pthread_mutex_unlock(&g_pools_mu);
}

void snap_background_wait(void)
{
    pthread_mutex_lock(&g_pools_mu);
    while (g_bg_running > 0) {
        pthread_cond_wait(&g_bg_cv, &g_pools_mu);
    }
    pthread_mutex_unlock(&g_pools_mu);
}

/* Start fn(arg) on a detached thread counted by snap_background_wait(). -1 if it could not. */
static int bg_start(void *(*fn)(void *), void *arg)
{
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    bg_enter();
    int rc = pthread_create(&th, &at, fn, arg);
    pthread_attr_destroy(&at);
    if (rc != 0) {
        bg_leave();
        return -1;
    }
    return 0;
}

/* The pool for the store directory store_dir (created on first use; never freed). */
static struct spool *pool_for(const char *store_dir)
{
    char *dir = NULL;
    const char *slash = strrchr(store_dir, '/');
    if (!slash) {
        dir = xstrdup(SPARE_DIR + 1);
    } else {
        dir = xasprintf("%.*s%s", (int)(slash - store_dir), store_dir, SPARE_DIR);
    }
    pthread_mutex_lock(&g_pools_mu);
    struct spool *p = g_pools;
    while (p && strcmp(p->dir, dir) != 0) {
        p = p->next;
    }
    if (!p) {
        p = xcalloc(1, sizeof(*p));
        pthread_mutex_init(&p->mu, NULL);
        p->dir = dir;
        dir = NULL;
        p->dfd = -1;
        p->next = g_pools;
        g_pools = p;
    }
    pthread_mutex_unlock(&g_pools_mu);
    free(dir);
    return p;
}

static void pool_push_locked(struct spool *p, int kind, uint64_t name)
{
    if (p->n[kind] == p->cap[kind]) {
        p->cap[kind] = p->cap[kind] ? p->cap[kind] * 2 : 1024;
        p->names[kind] = xrealloc(p->names[kind], p->cap[kind] * sizeof(*p->names[kind]));
    }
    p->names[kind][p->n[kind]++] = name;
}

static void spare_name(int kind, uint64_t v, char name[24])
{
    snprintf(name, 24, "%s%llx", kind == SP_DIR ? "d-" : "f-", (unsigned long long)v);
}

/* Make sure the pool directory is open and still linked (someone may have deleted the tree
 * it lives in); on (re)open, take stock of the spares a previous process left. */
static void pool_check(struct spool *p)
{
    pthread_mutex_lock(&p->mu);
    p->users++;
    if (atomic_load(&g_spare_max) == 0) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    struct stat sb;
    /* closed only when no operation of a sibling store uses it (it holds no lock of ours) */
    if (p->dfd >= 0 && p->users == 1 && (fstat(p->dfd, &sb) != 0 || sb.st_nlink == 0)) {
        close(p->dfd);
        p->dfd = -1;
    }
    if (p->dfd < 0) {
        p->n[SP_FILE] = p->n[SP_DIR] = 0;
        p->next_name = 0;
        p->gen++;
        if (mkdir(p->dir, 0700) == 0 || errno == EEXIST) {
            p->dfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (p->dfd >= 0) {
            fchmod(p->dfd, 0700); /* no set-gid bit: spares get our group */
            p->dev = fstat(p->dfd, &sb) == 0 ? sb.st_dev : 0;
        }
        int fd = p->dfd >= 0 ? dup(p->dfd) : -1;
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            const char *nm = de->d_name;
            if (strncmp(nm, TRASH_PREFIX, 2) == 0) {
                /* a discarded tree a previous process did not finish recycling */
                trash_later(xasprintf("%s/%s", p->dir, nm), 1);
                continue;
            }
            int kind = strncmp(nm, "d-", 2) == 0 ? SP_DIR : SP_FILE;
            char *end = NULL;
            if ((kind == SP_FILE && strncmp(nm, "f-", 2) != 0) || !nm[2] || strlen(nm) > 18 ||
                nm[2] == '-' || nm[2] == '+' || nm[2] == ' ') {
                continue;
            }
            nm += 2;
            uint64_t v = strtoull(nm, &end, 16);
            if (*end == 0) {
                pool_push_locked(p, kind, v);
                if (v >= p->next_name) {
                    p->next_name = v + 1;
                }
            }
        }
        if (d) {
            closedir(d);
        } else if (fd >= 0) {
            close(fd);
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/* The end of an operation that called pool_check(). */
static void pool_release(struct spool *p)
{
    pthread_mutex_lock(&p->mu);
    p->users--;
    pthread_mutex_unlock(&p->mu);
}

struct filler {
    struct spool *p;
    int dfd; /* our own dup of the pool directory */
    unsigned gen;
};

static void *filler_main(void *arg)
{
    struct filler *f = arg;
    struct spool *p = f->p;
    pthread_setname_np(pthread_self(), "snap-filler");
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int kind = p->n[SP_FILE] < p->want[SP_FILE] ? SP_FILE
                   : p->n[SP_DIR] < p->want[SP_DIR] ? SP_DIR
                                                    : -1;
        if (p->gen != f->gen || kind < 0) {
            if (p->gen == f->gen) {
                p->filling = 0;
            }
            pthread_mutex_unlock(&p->mu);
            break;
        }
        uint64_t v = p->next_name++;
        pthread_mutex_unlock(&p->mu);
        restore_yield(0);
        char nm[24];
        spare_name(kind, v, nm);
        int ok = 0;
        if (kind == SP_FILE) {
            int fd = openat(f->dfd, nm, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, SPARE_MODE);
            if (fd >= 0) {
                fchmod(fd, SPARE_MODE); /* whatever the umask: restores skip their fchmod */
                close(fd);
                ok = 1;
            }
        } else {
            ok = mkdirat(f->dfd, nm, 0700) == 0;
        }
        if (!ok && errno == EEXIST) {
            continue;
        }
        pthread_mutex_lock(&p->mu);
        if (!ok) {
            /* the directory is gone or full: stop until the next operation looks again */
            if (p->gen == f->gen) {
                p->filling = 0;
                p->want[SP_FILE] = p->want[SP_DIR] = 0;
            }
            pthread_mutex_unlock(&p->mu);
            break;
        }
        if (p->gen == f->gen) {
            pool_push_locked(p, kind, v);
        }
        pthread_mutex_unlock(&p->mu);
    }
    close(f->dfd);
    free(f);
    bg_leave();
    return NULL;
}

/* Ask for at least files spare files and dirs spare directories (capped); starts a filler if
 * none runs. */
static void pool_kick(struct spool *p, size_t files, size_t dirs)
{
    size_t max = atomic_load(&g_spare_max);
    size_t want[2] = {files < max ? files : max, dirs < max ? dirs : max};
    pthread_mutex_lock(&p->mu);
    for (int k = 0; k < 2; k++) {
        if (want[k] > p->want[k]) {
            p->want[k] = want[k];
        }
    }
    if (!p->filling && p->dfd >= 0 &&
        (p->n[SP_FILE] < p->want[SP_FILE] || p->n[SP_DIR] < p->want[SP_DIR])) {
        struct filler *f = xcalloc(1, sizeof(*f));
        f->p = p;
        f->gen = p->gen;
        f->dfd = dup(p->dfd);
        if (f->dfd >= 0 && bg_start(filler_main, f) == 0) {
            p->filling = 1;
        } else {
            if (f->dfd >= 0) {
                close(f->dfd);
            }
            free(f);
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/* Pop a spare name of kind. 0, or -1 if the pool is empty or unusable. */
static int spare_pop(struct spool *p, int kind, char name[24], int *pooldfd)
{
    if (!p || atomic_load(&g_spare_max) == 0) {
        return -1;
    }
    pthread_mutex_lock(&p->mu);
    if (p->n[kind] == 0 || p->dfd < 0) {
        pthread_mutex_unlock(&p->mu);
        return -1;
    }
    spare_name(kind, p->names[kind][--p->n[kind]], name);
    *pooldfd = p->dfd;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* Take a spare file: an fd open for reading and writing on an empty file of ours with
 * SPARE_MODE, and its name in name. -1 if the pool is empty or unusable. The caller renames
 * it away or gives it back (spare_put). The pool directory fd stays valid until the caller's
 * pool_release(). */
static int spare_take(struct spool *p, char name[24], int *pooldfd)
{
    for (int tries = 0; tries < 4; tries++) {
        int dfd = -1;
        if (spare_pop(p, SP_FILE, name, &dfd) != 0) {
            return -1;
        }
        /* Not O_TRUNC: ext4 marks a file truncated to 0 for a forced block allocation and
         * writeback on close (auto_da_alloc), which would cost every restored file an I/O
         * submission. */
        int fd = openat(dfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        struct stat sb;
        int ok = fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_nlink == 1 &&
                 sb.st_size == 0 && (sb.st_mode & 07777) == SPARE_MODE && sb.st_uid == geteuid();
        if (ok) {
            *pooldfd = dfd;
            return fd;
        }
        if (fd >= 0) {
            unlinkat(dfd, name, 0); /* not a spare as we make them */
            close(fd);
        }
    }
    return -1;
}

/* For a walk over the pools that may lend own spares: own's device, its spare file count
 * (own_files, may be NULL) and the head of the process-wide list. -1 when own is closed or
 * spares are off. */
static int sibling_pools(struct spool *own, dev_t *dev, size_t *own_files, struct spool **head)
{
    pthread_mutex_lock(&own->mu);
    int open_ = own->dfd >= 0;
    *dev = own->dev;
    if (own_files) {
        *own_files = open_ ? own->n[SP_FILE] : 0;
    }
    pthread_mutex_unlock(&own->mu);
    if (!open_ || atomic_load(&g_spare_max) == 0) {
        return -1;
    }
    pthread_mutex_lock(&g_pools_mu);
    *head = g_pools; /* nodes are never freed, their next never changes */
    pthread_mutex_unlock(&g_pools_mu);
    return 0;
}

/* Take a spare file from another open pool on own's file system when own is empty: the
 * sessions' pool and each repository's share one file system, and a rename from a sibling
 * pool costs what one from our own does, where a create may cost milliseconds (a restore
 * short of a few hundred spares took 3 s more). Like spare_take(); *from gets the pool it
 * came from, held (pool_release() after the rename; spare_put() to it if unused). */
static int spare_borrow(struct spool *own, char name[24], int *pooldfd, struct spool **from)
{
    *from = NULL;
    dev_t dev;
    struct spool *head = NULL;
    if (!own || sibling_pools(own, &dev, NULL, &head) != 0) {
        return -1;
    }
    for (struct spool *p = head; p; p = p->next) {
        if (p == own) {
            continue;
        }
        pthread_mutex_lock(&p->mu);
        int ok = p->dfd >= 0 && p->dev == dev && p->n[SP_FILE] > 0;
        if (ok) {
            p->users++; /* its dfd stays open until pool_release */
        }
        pthread_mutex_unlock(&p->mu);
        if (!ok) {
            continue;
        }
        int fd = spare_take(p, name, pooldfd);
        if (fd >= 0) {
            *from = p;
            return fd;
        }
        pool_release(p);
    }
    return -1;
}

/* The spare files a restore from own's pool can take: its own and those spare_borrow() may
 * take from the other open pools on its file system. */
static size_t spares_in_reach(struct spool *own)
{
    size_t n = 0;
    dev_t dev;
    struct spool *head = NULL;
    if (sibling_pools(own, &dev, &n, &head) != 0) {
        return 0;
    }
    for (struct spool *p = head; p; p = p->next) {
        if (p == own) {
            continue;
        }
        pthread_mutex_lock(&p->mu);
        if (p->dfd >= 0 && p->dev == dev) {
            n += p->n[SP_FILE];
        }
        pthread_mutex_unlock(&p->mu);
    }
    return n;
}

/* Give an unused spare file back (its contents are dropped). */
static void spare_put(struct spool *p, int fd, const char *name)
{
    if (ftruncate(fd, 0) != 0 || fchmod(fd, SPARE_MODE) != 0) {
        return; /* leave it: the next scan of the directory takes it */
    }
    uint64_t v = strtoull(name + 2, NULL, 16);
    pthread_mutex_lock(&p->mu);
    pool_push_locked(p, SP_FILE, v);
    pthread_mutex_unlock(&p->mu);
}

/* Make the directory pfd/name (mode 0700, as mkdirat(..., 0700)) from a spare if there is
 * one. Returns like mkdirat. */
static int spare_mkdir(struct spool *p, int pfd, const char *name)
{
    char sname[24];
    int dfd = -1;
    struct stat sb;
    if (spare_pop(p, SP_DIR, sname, &dfd) == 0) {
        /* only an empty directory of ours */
        if (fstatat(dfd, sname, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(sb.st_mode) &&
            sb.st_nlink == 2 && sb.st_uid == geteuid() && sb.st_size <= 4096 &&
            renameat2(dfd, sname, pfd, name, RENAME_NOREPLACE) == 0) {
            return 0;
        }
        int saved = errno;
        unlinkat(dfd, sname, AT_REMOVEDIR); /* rare (EEXIST, EXDEV): drop it */
        if (saved == EEXIST) {
            errno = EEXIST;
            return -1;
        }
    }
    return mkdirat(pfd, name, 0700);
}

/* Give the complete file fd, the spare pooldfd/spare, the name dirfd/name (which must not
 * exist: a random or new name). If the rename fails (EXDEV: the store is a mount point of
 * its own), the bytes are copied into a file created under that name. 0 or ERR_IO; either way
 * the spare is no longer in the pool directory on success. */
static int file_commit(int fd, int pooldfd, const char *spare, int dirfd, const char *name)
{
    if (renameat2(pooldfd, spare, dirfd, name, RENAME_NOREPLACE) == 0) {
        return 0;
    }
    if (errno == EEXIST) {
        return ERR_IO;
    }
    struct stat sb;
    loff_t off = 0;
    int rc = fstat(fd, &sb) == 0 ? 0 : ERR_IO;
    int nfd = rc == 0 ? openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444) : -1;
    if (nfd < 0) {
        return ERR_IO;
    }
    while (rc == 0 && off < sb.st_size) {
        ssize_t r = copy_file_range(fd, &off, nfd, NULL, (size_t)(sb.st_size - off), 0);
        if (r <= 0 && !(r < 0 && errno == EINTR)) {
            rc = ERR_IO;
        }
    }
    close(nfd);
    if (rc != 0) {
        unlinkat(dirfd, name, 0);
    }
    return rc;
}

/* write_file_atomic_d() into a spare of pool (NULL: none) when there is one, so that writing a
 * manifest or a pack index allocates no inode; the spare is renamed over name (replacing it).
 * Caller holds pool (pool_check). */
static int write_new_file(struct spool *pool, int dirfd, const char *name, const char *data,
                          size_t len, int durable)
{
    char spare[24];
    int pooldfd = -1;
    int fd = pool ? spare_take(pool, spare, &pooldfd) : -1;
    if (fd < 0) {
        return write_file_atomic_d(dirfd, name, data, len, durable);
    }
    int ok = write_all(fd, data, len) == 0 && (!durable || fsync(fd) == 0) &&
             fchmod(fd, 0444) == 0 && renameat(pooldfd, spare, dirfd, name) == 0;
    if (!ok) {
        spare_put(pool, fd, spare);
        close(fd);
        return write_file_atomic_d(dirfd, name, data, len, durable);
    }
    close(fd);
    if (durable && fsync(dirfd) != 0) {
        return ERR_IO;
    }
    return 0;
}

/*
 * Recycling: deleting a tree frees its inodes, which is what makes the next creates slow (see
 * above), and the filler then pays again to create the spares a restore takes. So a tree that
 * nobody but us can reach any more (the workspace of a destroyed sandbox, a restore's staging
 * directory) gives its plain files and empty directories to a spare pool of the same file
 * system instead: truncated, chmod-ed and renamed in, without freeing or allocating an inode.
 * A recycled inode ends up in another session's workspace, so it must carry nothing of its
 * past and nobody may still reach it:
 * - only a regular file with ONE link: a file with more links shares its inode with another
 *   name (a snapshot object, a pack a store adopted, a file an agent linked elsewhere), and
 *   truncating it would destroy that other file. Such files are only unlinked, never opened
 *   for writing;
 * - owned by our uid and gid (what spare_take accepts), no extended attributes (an ACL, a
 *   label, user.* data an agent chose), no inode flags but the file system's own (an agent
 *   may set sync/noatime/nodump... on its files);
 * - no open file description anywhere: a write lease is granted only when no other process
 *   (nor another fd of ours, e.g. a file read in flight) has the file open;
 * - directories: empty, ours, one block, no xattrs (a default ACL would reach the files
 *   later created in it).
 * Anything else is deleted as before. The pool that needs spares most gets each one, up to
 * the cap (snap_set_spare_max); past it, files are deleted.
 * Not recycled: the trash of an in-place restore (the workspace's sandbox still runs and may
 * hold an O_PATH fd or a cwd that no lease reveals) and snapshot stores (their objects may be
 * read through open fds by a restore).
 */
#define RECYCLE_FLAGS_OK (FS_EXTENT_FL | FS_INLINE_DATA_FL) /* set by ext4 itself */
#define LEASE_SIG        SIGWINCH /* default action: ignore; the server never handles it */

struct recycler {
    uid_t euid;
    gid_t egid;
    uint64_t files, dirs; /* recycled */
};

/* The open pool on dev that should get a spare of kind: the largest shortfall against its
 * target first, else the fewest spares under the cap. Returned with users held (pool_release)
 * and its directory fd in *dfd. NULL if none has room. */
static struct spool *recycle_pool(dev_t dev, int kind, int *dfd)
{
    size_t max = atomic_load(&g_spare_max);
    pthread_mutex_lock(&g_pools_mu);
    struct spool *head = g_pools; /* nodes are never freed, their next never changes */
    pthread_mutex_unlock(&g_pools_mu);
    struct spool *best = NULL;
    long long best_score = 0;
    for (struct spool *p = head; p; p = p->next) {
        pthread_mutex_lock(&p->mu);
        if (p->dfd >= 0 && p->dev == dev && p->n[kind] < max) {
            long long need = (long long)p->want[kind] - (long long)p->n[kind];
            /* shortfall first (positive), then the emptiest (negative: fewer is better) */
            long long score = need > 0 ? need : -(long long)p->n[kind] - 1;
            if (!best || score > best_score) {
                best = p;
                best_score = score;
            }
        }
        pthread_mutex_unlock(&p->mu);
    }
    if (!best) {
        return NULL;
    }
    pthread_mutex_lock(&best->mu);
    if (best->dfd < 0) { /* closed meanwhile */
        pthread_mutex_unlock(&best->mu);
        return NULL;
    }
    best->users++;
    *dfd = best->dfd;
    pthread_mutex_unlock(&best->mu);
    return best;
}

/* Rename dfd/name (checked by the caller) into a pool as a spare of kind. 0 if done. leasefd
 * (-1 for a directory) holds our write lease on the file: if somebody started opening it, the
 * lease is being broken, and after the rename the opener would hold a spare. Such a file is
 * unlinked from the pool instead (it is gone either way). The lease is released before the
 * spare is published, so a restore that takes it does not wait on it. */
static int recycle_into_pool(dev_t dev, int kind, int dfd, const char *name, int leasefd)
{
    int pdfd = -1;
    struct spool *p = recycle_pool(dev, kind, &pdfd);
    if (!p) {
        return -1;
    }
    pthread_mutex_lock(&p->mu);
    uint64_t v = p->next_name++;
    pthread_mutex_unlock(&p->mu);
    char nm[24];
    spare_name(kind, v, nm);
    int rc = renameat2(dfd, name, pdfd, nm, RENAME_NOREPLACE);
    if (rc == 0 && leasefd >= 0) {
        int broken = fcntl(leasefd, F_GETLEASE) != F_WRLCK;
        fcntl(leasefd, F_SETLEASE, F_UNLCK);
        if (broken) {
            LOG_INFO("snap: discard: %s was being opened while recycled; deleted instead", name);
            unlinkat(pdfd, nm, 0);
            rc = 1; /* removed, not recycled */
        }
    }
    pthread_mutex_lock(&p->mu);
    if (rc == 0) {
        pool_push_locked(p, kind, v);
    }
    p->users--;
    pthread_mutex_unlock(&p->mu);
    return rc == 0 ? 0 : rc > 0 ? 1 : -1;
}

/* 1 if fd has no extended attribute and no inode flag of its own. */
static int plain_inode(int fd)
{
    ssize_t xl = flistxattr(fd, NULL, 0);
    if (xl != 0 && !(xl < 0 && errno == ENOTSUP)) {
        return 0;
    }
    unsigned int fl = 0; /* the ioctl takes an int, whatever its header says */
    if (ioctl(fd, FS_IOC_GETFLAGS, &fl) == 0 && (fl & ~(unsigned int)RECYCLE_FLAGS_OK) != 0) {
        return 0;
    }
    return 1;
}

/* Recycle the regular file dfd/name (lstat data in sb) into a pool. 0 if done (or the file is
 * gone); else the caller unlinks it. A file with other links is never opened for writing; one
 * that somebody opens while we hold its lease may already be empty when they get it (it was
 * being deleted either way). */
static int recycle_file(struct recycler *rc, int dfd, const char *name, const struct stat *sb)
{
    /* The link count first, from the lstat: a shared inode is never even opened for writing. */
    if (!S_ISREG(sb->st_mode) || sb->st_nlink != 1 || sb->st_uid != rc->euid ||
        sb->st_gid != rc->egid || (!(sb->st_mode & S_IWUSR) && rc->euid != 0)) {
        return -1;
    }
    int fd = openat(dfd, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    int leased = 0, ok = 0;
    struct stat fsb;
    /* again on the inode we opened: still the same, still one link */
    if (fstat(fd, &fsb) != 0 || fsb.st_ino != sb->st_ino || fsb.st_dev != sb->st_dev ||
        !S_ISREG(fsb.st_mode) || fsb.st_nlink != 1 || fsb.st_uid != rc->euid) {
        goto out;
    }
    /* A lease break is signalled to us (SIGIO by default, which would end the process): a
     * signal ignored by default stands in, and the lease is polled (recycle_into_pool). */
    if (fcntl(fd, F_SETSIG, LEASE_SIG) != 0 || fcntl(fd, F_SETLEASE, F_WRLCK) != 0) {
        goto out; /* open elsewhere (or leases are off) */
    }
    leased = 1;
    if (!plain_inode(fd)) {
        goto out;
    }
    /* nlink is re-read: a link made since the fstat would show here (nobody should) */
    if ((fsb.st_size > 0 && ftruncate(fd, 0) != 0) || fstat(fd, &fsb) != 0 || fsb.st_nlink != 1 ||
        ((fsb.st_mode & 07777) != SPARE_MODE && fchmod(fd, SPARE_MODE) != 0)) {
        goto out;
    }
    if (fcntl(fd, F_GETLEASE) != F_WRLCK) {
        goto out; /* somebody is opening it: deleted by the caller, as before */
    }
    int r = recycle_into_pool(fsb.st_dev, SP_FILE, dfd, name, fd);
    leased = 0; /* released there when the rename was done */
    if (r < 0) {
        leased = 1; /* not renamed: still ours, still leased */
    } else if (r == 0) {
        rc->files++;
    }
    ok = r >= 0; /* recycled, or already gone */
out:
    if (leased) {
        fcntl(fd, F_SETLEASE, F_UNLCK);
    }
    close(fd); /* also ends ext4's forced writeback of a truncated file: it is empty now */
    return ok ? 0 : -1;
}

/* Recycle the directory cfd (= dfd/name, emptied by the caller) into a pool. 0 if done. */
static int recycle_dir(struct recycler *rc, int cfd, int dfd, const char *name)
{
    struct stat sb;
    if (fstat(cfd, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_nlink != 2 || sb.st_uid != rc->euid ||
        sb.st_gid != rc->egid || sb.st_size > 4096 || !plain_inode(cfd)) {
        return -1;
    }
    if ((sb.st_mode & 07777) != 0700 && fchmod(cfd, 0700) != 0) {
        return -1;
    }
    if (recycle_into_pool(sb.st_dev, SP_DIR, dfd, name, -1) != 0) {
        return -1;
    }
    rc->dirs++;
    return 0;
}

static int recycle_file_op(void *ctx, int dfd, const char *name, const struct stat *sb)
{
    /* Truncating frees blocks (a discard to the device on this mount): wait while a restore
     * that has its spares runs. One short of spares does not wait: each recycled file is one
     * create less for it (measured: always yielding left image starts short of 4-6,000
     * spares, 3-4 s each). */
    restore_yield(1);
    return recycle_file(ctx, dfd, name, sb);
}

static int recycle_dir_op(void *ctx, int fd, int dfd, const char *name)
{
    return recycle_dir(ctx, fd, dfd, name);
}

/* Remove dfd/name (any type, its whole tree however deep, never following a symlink: an
 * iterative fswalk_rm), recycling what can be (see above). 0, or -1 if something stayed. */
static int recycle_at(struct recycler *rc, int dfd, const char *name)
{
    struct fswalk_rm_ops ops = {.file = recycle_file_op, .dir = recycle_dir_op, .ctx = rc};
    return fswalk_rm(dfd, name, &ops) == 0 ? 0 : -1;
}

/* recycle_at() on a path. */
static int recycle_path(const char *path, struct recycler *rc)
{
    char *parent = NULL, *leaf = NULL;
    if (split_path(path, &parent, &leaf) != 0) {
        return -1;
    }
    int res = -1;
    int dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        res = recycle_at(rc, dfd, leaf);
        close(dfd);
    }
    free(parent);
    free(leaf);
    return res;
}

struct trash_job {
    char *path;
    int recycle; /* nobody else can reach it: recycle its inodes (else delete) */
};

/* Remove the tree at path with rm_at (fd-relative, never following a symlink: a trash
 * directory holds what an agent made). */
static void rm_path(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : xstrdup(".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        rm_at(dfd, slash ? slash + 1 : path);
        close(dfd);
    }
    free(dir);
}

static void *trash_main(void *arg)
{
    struct trash_job *j = arg;
    pthread_setname_np(pthread_self(), j->recycle ? "snap-recycler" : "snap-trash");
    if (j->recycle) {
        struct recycler rc = {.euid = geteuid(), .egid = getegid()};
        int64_t t0 = clock_mono_us();
        recycle_path(j->path, &rc);
        if (rc.files + rc.dirs > 0) {
            LOG_INFO("snap: discarded %s: %llu files and %llu dirs recycled as spares, %lld ms",
                     j->path, (unsigned long long)rc.files, (unsigned long long)rc.dirs,
                     (long long)(clock_mono_us() - t0) / 1000);
        }
    } else {
        rm_path(j->path);
    }
    free(j->path);
    free(j);
    bg_leave();
    return NULL;
}

/* Delete the tree at path (ours: a trash or staging directory) in the background, or now if
 * no thread can be started. Takes ownership of path. */
static void trash_later(char *path, int recycle)
{
    struct trash_job *j = xcalloc(1, sizeof(*j));
    j->path = path;
    j->recycle = recycle;
    if (bg_start(trash_main, j) != 0) {
        rm_path(path);
        free(path);
        free(j);
    }
}

/* The tree of a discard waits in the directory of a pool of its file system, named
 * TRASH_PREFIX<random>: out of its caller's way at once, recycled by a janitor thread, and
 * found again by pool_check() after a crash. */

int snap_discard_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        return errno == ENOENT ? 0 : ERR_IO;
    }
    if (S_ISDIR(sb.st_mode)) {
        int pdfd = -1;
        struct spool *p = recycle_pool(sb.st_dev, SP_FILE, &pdfd);
        if (p) {
            char rnd[17], nm[24];
            util_random_hex(rnd, 8);
            snprintf(nm, sizeof(nm), TRASH_PREFIX "%s", rnd);
            char *tpath = NULL;
            if (renameat(AT_FDCWD, path, pdfd, nm) == 0) {
                tpath = xasprintf("%s/%s", p->dir, nm);
            }
            pool_release(p);
            if (tpath) {
                trash_later(tpath, 1);
                return 0;
            }
        }
    }
    /* no pool with room on its file system (or not a directory): now, recycling if it can */
    struct recycler rc = {.euid = geteuid(), .egid = getegid()};
    return recycle_path(path, &rc) == 0 ? 0 : ERR_IO;
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

/* The walk is iterative and bounded (common/fswalk). What it finds beyond the bounds of a
 * snapshot (SNAP_MAX_*), and FIFOs, sockets and devices, become 'x' entries: listed so that a
 * restore in place removes them like anything else the snapshot lacks, never recorded. */
struct walk {
    struct entv *out;
    dev_t dev;
    int shallow; /* do not descend (the top level of a parallel walk) */
};

static int walk_pre(void *ctx, const struct fswalk_ent *fe)
{
    struct walk *w = ctx;
    const struct stat *sb = fe->st;
    char type;
    unsigned char why = 0;
    if (S_ISREG(sb->st_mode)) {
        type = 'f';
    } else if (S_ISDIR(sb->st_mode)) {
        type = 'd';
        if (sb->st_dev != w->dev) {
            return 0; /* a mount point: not part of the workspace */
        }
    } else if (S_ISLNK(sb->st_mode)) {
        type = 'l';
    } else {
        type = 'x'; /* fifos, sockets, devices are not snapshotted (nor ever opened) */
        why = OMIT_SPECIAL;
    }
    if (fe->depth > SNAP_MAX_DEPTH) {
        why = OMIT_DEEP;
    } else if (fe->path_len > SNAP_MAX_PATH) {
        why = OMIT_LONG;
    } else if (type == 'f' && (uint64_t)sb->st_size > SNAP_MAX_FILE) {
        why = OMIT_BIG;
    }
    struct ent *e = entv_push(w->out);
    e->path = xstrndup(fe->path, fe->path_len);
    e->type = why ? 'x' : type;
    e->omit = why;
    e->mode = sb->st_mode & 07777;
    e->uid = sb->st_uid;
    e->gid = sb->st_gid;
    e->size = type == 'f' || type == 'l' ? (uint64_t)sb->st_size : 0;
    e->mtime_ns = ts_ns(&sb->st_mtim);
    e->ctime_ns = ts_ns(&sb->st_ctim);
    e->ino = sb->st_ino;
    e->nlink = (uint32_t)sb->st_nlink;
    if (e->type == 'l') {
        char tgt[SNAP_MAX_PATH + 2];
        ssize_t n = readlinkat(fe->dirfd, fe->name, tgt, sizeof(tgt) - 1);
        tgt[n < 0 ? 0 : n] = 0;
        e->target = xstrdup(tgt);
    }
    return e->type == 'd' && !w->shallow ? FSWALK_ENTER : 0;
}

/* Walk dfd (prefix: its path in the workspace, at depth depth0) into out. */
static int walk_dir(struct walk *w, int dfd, const char *prefix, int depth0)
{
    struct fswalk fw = {.prefix = prefix, .depth0 = depth0, .pre = walk_pre, .ctx = w};
    return fswalk_run(dfd, &fw);
}

/* Take the 'x' entries out of v (after a walk), counting them by reason into out. */
static void drop_omitted(struct entv *v, struct snap_info *out)
{
    size_t k = 0;
    for (size_t i = 0; i < v->n; i++) {
        struct ent *e = &v->v[i];
        if (e->type != 'x') {
            v->v[k++] = *e;
            continue;
        }
        out->special += e->omit == OMIT_SPECIAL;
        out->too_deep += e->omit == OMIT_DEEP;
        out->too_long += e->omit == OMIT_LONG;
        out->too_big += e->omit == OMIT_BIG;
        ent_free_fields(e);
    }
    v->n = k;
}

/* 1 if a manifest entry lies within the bounds of a snapshot. Manifests written before the
 * bounds existed may name deeper or longer paths: a restore leaves those out, as a snapshot
 * taken now would (and open_beneath could not reach them anyway). */
static int within_bounds(const struct ent *e)
{
    size_t len = strlen(e->path);
    if (len > SNAP_MAX_PATH) {
        return 0;
    }
    int depth = 1;
    for (const char *p = e->path; *p; p++) {
        depth += *p == '/';
    }
    return depth <= SNAP_MAX_DEPTH;
}

/* ---------------------------------------------------------------- workers */

struct pool_job {
    size_t n;
    /* Optional grouping: jobs [starts[g], starts[g + 1]) go to one thread together (files of
     * one directory, so that threads do not fight over the same directory's lock). */
    const size_t *starts;
    size_t ngroups;
    _Atomic size_t next;
    size_t par_min; /* fewer jobs than this run on the calling thread (0: PAR_MIN_JOBS) */
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
    size_t par_min = j->par_min ? j->par_min : PAR_MIN_JOBS;
    int nt = j->n < par_min ? 1 : (int)(cpus < 1 ? 1 : cpus > MAX_WORKERS ? MAX_WORKERS : cpus);
    pthread_t th[MAX_WORKERS];
    int started = 0;
    atomic_store(&j->next, 0);
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&th[started], NULL, pool_thread, j) == 0) {
            pthread_setname_np(th[started], "snap-worker");
            started++;
        }
    }
    pool_thread(j);
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
    }
}

/* One top-level directory of a parallel walk. */
struct subwalk {
    const char *path; /* borrowed from the top-level entry */
    struct entv out;
    int err;
};

struct wctx {
    int rootfd;
    dev_t dev;
    struct subwalk *subs;
};

static void subwalk_job(void *vctx, size_t i, void *tls)
{
    struct wctx *c = vctx;
    struct subwalk *sw = &c->subs[i];
    (void)tls;
    int fd = open_beneath(c->rootfd, sw->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
    if (fd < 0) {
        return; /* vanished or replaced meanwhile: its entry stays, its contents do not */
    }
    struct walk w = {.out = &sw->out, .dev = c->dev, .shallow = 0};
    sw->err = walk_dir(&w, fd, sw->path, 1);
    close(fd);
}

/* Walk the tree under rootfd into out, in pre-order, without following symlinks or crossing
 * mount points, bounded (SNAP_MAX_*: see walk_pre). The top-level directories are walked in
 * parallel (a walk is stat-bound: on a loaded 2-core machine two walkers get twice the CPU), then
 * stitched back in order. */
static int walk_tree(int rootfd, struct entv *out)
{
    struct stat sb;
    if (fstat(rootfd, &sb) != 0) {
        return ERR_IO;
    }
    struct entv top = {0};
    struct walk w = {.out = &top, .dev = sb.st_dev, .shallow = 1};
    int trc = walk_dir(&w, rootfd, "", 0);
    if (trc != 0) {
        entv_free(&top);
        return trc;
    }
    size_t nd = 0;
    for (size_t i = 0; i < top.n; i++) {
        nd += top.v[i].type == 'd';
    }
    struct subwalk *subs = xcalloc(nd + 1, sizeof(*subs));
    size_t k = 0;
    for (size_t i = 0; i < top.n; i++) {
        if (top.v[i].type == 'd') {
            subs[k++].path = top.v[i].path;
        }
    }
    struct wctx wc = {.rootfd = rootfd, .dev = sb.st_dev, .subs = subs};
    struct pool_job pj = {.n = nd, .par_min = 2, .ctx = &wc, .fn = subwalk_job};
    pool_run(&pj);
    /* stitch: each top-level entry, then (for a directory) its subtree; fields are moved */
    int rc = 0;
    k = 0;
    for (size_t i = 0; i < top.n; i++) {
        *entv_push(out) = top.v[i];
        if (top.v[i].type != 'd') {
            continue;
        }
        struct subwalk *sw = &subs[k++];
        if (sw->err) {
            rc = sw->err;
        }
        for (size_t j = 0; j < sw->out.n; j++) {
            *entv_push(out) = sw->out.v[j];
        }
        free(sw->out.v);
        free(sw->out.map);
    }
    free(top.v);
    free(top.map);
    free(subs);
    return rc;
}

/* ---------------------------------------------------------------- hashing into the store */

struct hctx {
    struct snap_store *st;
    int rootfd;
    struct ent **jobs;
    struct pwriter *pw; /* non-NULL: new small objects go into this pack */
    _Atomic uint64_t new_bytes;
    _Atomic int err;
    /* figures for the log, summed over the workers */
    _Atomic int64_t read_us;  /* open, read, hash */
    _Atomic int64_t store_us; /* writing new objects */
    _Atomic uint64_t n_spare, n_tmpfile, n_new;
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

/* ---------------------------------------------------------------- packs */

/*
 * Why packs: a snapshot that adds thousands of objects (the first snapshot of a store, an
 * `npm install`) would create thousands of inodes, and on ext4 without a journal every create
 * scans past the inodes freed in the last minutes (see the spare pools above): 10,000 creates
 * took 3.4-6.9 s under load right after a mass delete. A snapshot (one that reads at least
 * g_pack_min files: by default any) instead appends its new small objects (up to SMALL_FILE) to
 * one pack file, packs/p-<random>.pack, written in parallel at reserved offsets, and lists them in
 * packs/p-<random>.idx ("sessiond-pack 1 <count> <size>" then "<hash> <offset> <length>" a
 * line), written atomically after the pack is complete and before the manifest. A pack
 * without an index is an unfinished one (a crash) and is deleted by the GC. Packs are
 * immutable like objects: a restore copies ranges out of them (copy_file_range), a seeded
 * store hard-links the seed's packs (never a workspace file). GC deletes packs with no live
 * object and rewrites those less than half live; their whole size counts for the quota.
 * Big files keep one object file each (loose objects), and so do all objects when packs are
 * off (snap_set_pack_min(0)).
 * Small snapshots pack too: in the server, a turn that changed 1% of 10,000 files made ~200
 * loose objects (its files plus git's), i.e. ~200 inode creates and ~140 mkdirs of objects/xx/
 * while a warm-pool refill and the spare filler ran: 300-530 ms instead of ~50 ms (perf: 35% of
 * all samples in find_inode_bit/recently_deleted). The pack and its index (and the manifest)
 * are written into spare inodes and renamed into place, so such a snapshot creates no inode.
 */
#define PACK_MAGIC "sessiond-pack"

static _Atomic size_t g_pack_min = 1;

void snap_set_pack_min(size_t n)
{
    atomic_store(&g_pack_min, n);
}

struct ploc {
    char hash[65]; /* "" = empty slot */
    uint32_t pack; /* index into pidx.packs */
    uint64_t off, len;
};

struct pack {
    char name[32]; /* "p-<hex>" (files <name>.pack and <name>.idx) */
    int fd;        /* read-only */
    uint64_t size;
};

/* The packs of a store and where each packed object is (hash -> pack, offset, length; the
 * first pack listing a hash wins). Read by a store's worker threads, changed only by the
 * thread holding the store's lock while no worker runs. */
struct pidx {
    struct ploc *v;
    size_t cap, n;
    struct pack *packs;
    size_t np, pcap;
};

static void pidx_free(struct pidx *x)
{
    if (!x) {
        return;
    }
    for (size_t i = 0; i < x->np; i++) {
        if (x->packs[i].fd >= 0) {
            close(x->packs[i].fd);
        }
    }
    free(x->packs);
    free(x->v);
    free(x);
}

static const struct ploc *pidx_get(const struct pidx *x, const char *hash)
{
    if (!x || !x->cap) {
        return NULL;
    }
    size_t j = fnv1a(hash) & (x->cap - 1);
    while (x->v[j].hash[0]) {
        if (memcmp(x->v[j].hash, hash, 64) == 0) {
            return &x->v[j];
        }
        j = (j + 1) & (x->cap - 1);
    }
    return NULL;
}

static void pidx_put(struct pidx *x, const char *hash, uint32_t pack, uint64_t off, uint64_t len)
{
    if ((x->n + 1) * 2 > x->cap) {
        size_t ncap = x->cap ? x->cap * 2 : 1024;
        struct ploc *nv = xcalloc(ncap, sizeof(*nv));
        for (size_t i = 0; i < x->cap; i++) {
            if (x->v[i].hash[0]) {
                size_t j = fnv1a(x->v[i].hash) & (ncap - 1);
                while (nv[j].hash[0]) {
                    j = (j + 1) & (ncap - 1);
                }
                nv[j] = x->v[i];
            }
        }
        free(x->v);
        x->v = nv;
        x->cap = ncap;
    }
    size_t j = fnv1a(hash) & (x->cap - 1);
    while (x->v[j].hash[0]) {
        if (memcmp(x->v[j].hash, hash, 64) == 0) {
            return;
        }
        j = (j + 1) & (x->cap - 1);
    }
    memcpy(x->v[j].hash, hash, 65);
    x->v[j].pack = pack;
    x->v[j].off = off;
    x->v[j].len = len;
    x->n++;
}

/* Add the pack name (in the directory dfd) and its objects to x. 0, or ERR_IO/ERR_NOT_FOUND
 * if its index or data is missing or malformed (the pack is then ignored). */
static int pack_add(struct pidx *x, int dfd, const char *name)
{
    char fn[48];
    char *data = NULL;
    size_t len = 0;
    struct stat sb;
    int rc = 0, fd = -1;
    if (strlen(name) >= sizeof(x->packs[0].name)) {
        return ERR_INVALID;
    }
    snprintf(fn, sizeof(fn), "%s.pack", name);
    fd = openat(dfd, fn, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = ERR_NOT_FOUND;
        goto out;
    }
    snprintf(fn, sizeof(fn), "%s.idx", name);
    rc = read_file_at(dfd, fn, &data, &len);
    if (rc != 0) {
        goto out;
    }
    char *nl = memchr(data, '\n', len);
    if (!nl || strncmp(data, PACK_MAGIC " 1 ", strlen(PACK_MAGIC) + 3) != 0) {
        rc = ERR_IO;
        goto out;
    }
    if (x->np == x->pcap) {
        x->pcap = x->pcap ? x->pcap * 2 : 8;
        x->packs = xrealloc(x->packs, x->pcap * sizeof(*x->packs));
    }
    uint32_t pi = (uint32_t)x->np++;
    snprintf(x->packs[pi].name, sizeof(x->packs[pi].name), "%s", name);
    x->packs[pi].fd = fd;
    x->packs[pi].size = (uint64_t)sb.st_size;
    fd = -1;
    char *end = data + len;
    for (char *p = nl + 1; p < end;) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) {
            break;
        }
        *e = 0;
        char *f[3];
        uint64_t off = 0, olen = 0;
        if (split(p, f, 3) == 3 && strlen(f[0]) == 64 && parse_u64(f[1], &off) == 0 &&
            parse_u64(f[2], &olen) == 0 && off + olen >= off &&
            off + olen <= (uint64_t)sb.st_size) {
            pidx_put(x, f[0], pi, off, olen);
        }
        p = e + 1;
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    free(data);
    return rc;
}

/* Load every pack of the directory dfd into a new index. */
static struct pidx *pidx_read(int dfd)
{
    struct pidx *x = xcalloc(1, sizeof(*x));
    int fd = dfd >= 0 ? openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0) {
            close(fd);
        }
        return x;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 6 && l < 40 && strncmp(de->d_name, "p-", 2) == 0 &&
            strcmp(de->d_name + l - 4, ".idx") == 0) {
            char name[40];
            snprintf(name, sizeof(name), "%.*s", (int)(l - 4), de->d_name);
            if (pack_add(x, dfd, name) != 0) {
                LOG_WARN("snap: pack %s is unreadable; ignored", name);
            }
        }
    }
    closedir(d);
    return x;
}

/* The store's pack index (loaded on first use). Caller holds st->lock. */
static struct pidx *pidx_of(struct snap_store *st)
{
    if (!st->px) {
        st->px = pidx_read(st->packfd);
    }
    return st->px;
}

/* Drop the loaded index (it is read again on next use). Caller holds st->lock. */
static void pidx_reset(struct snap_store *st)
{
    pidx_free(st->px);
    st->px = NULL;
}

/* One pack being written by a snapshot's workers. The pack is written into a spare inode
 * when the pool has one (renamed to packs/<name>.pack by pack_finish), else created in place:
 * a snapshot then creates no inode at all (see the spare pools above). */
struct pwriter {
    pthread_mutex_t mu;
    int packfd;           /* the store's packs/ */
    struct spool *pool;   /* spares (held by the caller's pool_check), or NULL */
    int fd;               /* -1 until the first object; guarded by mu */
    int failed;           /* guarded by mu */
    char name[32];        /* set with fd */
    char spare[24];       /* fd is this spare of pool (pooldfd) until renamed; "" if not */
    int pooldfd;          /* valid until the caller's pool_release */
    int named;            /* packs/<name>.pack is ours (created or renamed there) */
    _Atomic uint64_t end; /* next free offset */
};

/* Append len bytes to the pack (created on first use); *off gets their offset. */
static int pack_append(struct pwriter *w, const void *data, size_t len, uint64_t *off)
{
    pthread_mutex_lock(&w->mu);
    if (w->fd < 0 && !w->failed) {
        char rnd[17], fn[48];
        util_random_hex(rnd, 8);
        snprintf(w->name, sizeof(w->name), "p-%s", rnd);
        snprintf(fn, sizeof(fn), "%s.pack", w->name);
        w->spare[0] = 0;
        w->fd = w->pool ? spare_take(w->pool, w->spare, &w->pooldfd) : -1;
        if (w->fd < 0) {
            w->spare[0] = 0;
            w->fd = openat(w->packfd, fn, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
            w->named = w->fd >= 0;
        }
        w->failed = w->fd < 0;
    }
    int fd = w->fd;
    pthread_mutex_unlock(&w->mu);
    if (fd < 0) {
        return ERR_IO;
    }
    uint64_t o = atomic_fetch_add(&w->end, (uint64_t)len);
    const char *c = data;
    size_t done = 0;
    while (done < len) {
        ssize_t r = pwrite(fd, c + done, len - done, (off_t)(o + done));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return ERR_IO;
        }
        done += (size_t)r;
    }
    *off = o;
    return 0;
}

/* Finish the pack of a snapshot: write its index (jobs flagged F_PACKED) and add it to the
 * store's index. On failure (or fail != 0) the pack is deleted. Caller holds st->lock. */
static int pack_finish(struct snap_store *st, struct pwriter *w, struct ent **jobs, size_t nj,
                       int fail)
{
    char fn[48];
    int rc = 0;
    if (w->fd < 0) {
        return fail ? 0 : (w->failed ? ERR_IO : 0);
    }
    if (!fail && w->spare[0]) {
        /* the pack is complete: give it its name (before its index exists) */
        snprintf(fn, sizeof(fn), "%s.pack", w->name);
        rc = fchmod(w->fd, 0444) == 0 ? file_commit(w->fd, w->pooldfd, w->spare, w->packfd, fn)
                                      : ERR_IO;
        if (rc == 0) {
            w->spare[0] = 0;
            w->named = 1;
        }
    }
    if (!fail && rc == 0) {
        struct buf b;
        buf_init(&b, 0);
        size_t cnt = 0;
        for (size_t i = 0; i < nj; i++) {
            cnt += (jobs[i]->flag & F_PACKED) != 0;
        }
        buf_printf(&b, "%s 1 %zu %llu\n", PACK_MAGIC, cnt,
                   (unsigned long long)atomic_load(&w->end));
        for (size_t i = 0; i < nj; i++) {
            const struct ent *e = jobs[i];
            if (e->flag & F_PACKED) {
                buf_printf(&b, "%s %llu %llu\n", e->hash, (unsigned long long)e->poff,
                           (unsigned long long)e->size);
            }
        }
        snprintf(fn, sizeof(fn), "%s.idx", w->name);
        rc = write_new_file(w->pool, w->packfd, fn, b.data, b.len, 0);
        buf_free(&b);
        if (rc == 0) {
            rc = pack_add(pidx_of(st), w->packfd, w->name);
        }
    }
    if (w->spare[0]) {
        spare_put(w->pool, w->fd, w->spare); /* never renamed: truncated and given back */
        w->spare[0] = 0;
    }
    close(w->fd);
    w->fd = -1;
    if (fail || rc != 0) {
        snprintf(fn, sizeof(fn), "%s.idx", w->name);
        unlinkat(w->packfd, fn, 0);
        snprintf(fn, sizeof(fn), "%s.pack", w->name);
        if (w->named) {
            unlinkat(w->packfd, fn, 0);
        }
        pidx_reset(st);
    }
    return fail ? 0 : rc;
}

/* Make our own the pack of the seed store (seedpacks = its packs/) holding hash: hard links
 * of its .pack then its .idx (immutable, like objects). 0 if the object is ours now,
 * ERR_NOT_FOUND if the seed has no pack with it. Caller holds st->lock. */
static int pack_adopt(struct snap_store *st, int seedpacks, const struct pidx *seedx,
                      const char *hash)
{
    const struct ploc *pl = pidx_get(seedx, hash);
    if (!pl) {
        return ERR_NOT_FOUND;
    }
    const char *name = seedx->packs[pl->pack].name;
    char fn[48];
    const char *ext[2] = {"pack", "idx"};
    for (int k = 0; k < 2; k++) {
        snprintf(fn, sizeof(fn), "%s.%s", name, ext[k]);
        if (linkat(seedpacks, fn, st->packfd, fn, 0) != 0 && errno != EEXIST) {
            return ERR_IO;
        }
    }
    if (pack_add(pidx_of(st), st->packfd, name) != 0) {
        return ERR_IO;
    }
    return pidx_get(st->px, hash) ? 0 : ERR_IO;
}

/* A new object being written: into a spare (name set) or an O_TMPFILE (name empty). */
struct objtmp {
    int fd;
    int pooldfd;
    char name[24];
};

static int objtmp_open(struct snap_store *st, struct objtmp *o)
{
    o->fd = spare_take(st->pool, o->name, &o->pooldfd);
    if (o->fd >= 0) {
        return 0;
    }
    o->name[0] = 0;
    o->fd = openat(st->objfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0444);
    return o->fd >= 0 ? 0 : -1;
}

/* Give the written bytes the name hash in objects/ (*created = 1) unless that object exists
 * (*created = 0; the same bytes by definition). The caller still closes o->fd. */
static int objtmp_commit(struct snap_store *st, struct objtmp *o, const char *hash, int *created)
{
    char name[68];
    *created = 0;
    if (!o->name[0]) {
        return obj_link(st->objfd, o->fd, hash, created);
    }
    obj_name(hash, name);
    if (fchmod(o->fd, 0444) != 0) {
        return ERR_IO;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        if (renameat2(o->pooldfd, o->name, st->objfd, name, RENAME_NOREPLACE) == 0) {
            o->name[0] = 0;
            *created = 1;
            return 0;
        }
        if (errno != ENOENT) {
            break;
        }
        char sub[3] = {hash[0], hash[1], 0};
        if (spare_mkdir(st->pool, st->objfd, sub) != 0 && errno != EEXIST) {
            break;
        }
    }
    int rc = 0;
    if (errno != EEXIST) {
        /* EXDEV (the store is a mount point of its own) or the like: copy into an O_TMPFILE */
        int tfd = openat(st->objfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0444);
        struct stat sb;
        loff_t off = 0;
        rc = tfd >= 0 && fstat(o->fd, &sb) == 0 ? 0 : ERR_IO;
        while (rc == 0 && off < sb.st_size) {
            ssize_t r = copy_file_range(o->fd, &off, tfd, NULL, (size_t)(sb.st_size - off), 0);
            if (r <= 0 && !(r < 0 && errno == EINTR)) {
                rc = ERR_IO;
            }
        }
        if (rc == 0) {
            rc = obj_link(st->objfd, tfd, hash, created);
        }
        if (tfd >= 0) {
            close(tfd);
        }
    }
    spare_put(st->pool, o->fd, o->name);
    o->name[0] = 0;
    return rc;
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
    int64_t ta = clock_mono_us(), tb = 0;

    /* The walk saw a regular file; if it was swapped since, O_NONBLOCK keeps a FIFO from
     * blocking, O_NOCTTY a terminal from becoming ours, and nothing but a regular file is
     * read (below). */
    fd = open_beneath(c->rootfd, e->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0);
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
            tb = clock_mono_us();
            if (pidx_get(c->st->px, e->hash) || obj_exists(objfd, e->hash)) {
                goto out;
            }
            atomic_fetch_add(&c->n_new, 1);
            if (c->pw) {
                if (pack_append(c->pw, t->buf, total, &e->poff) != 0) {
                    atomic_store(&c->err, ERR_IO);
                    goto out;
                }
                e->flag |= F_PACKED;
                atomic_fetch_add(&c->new_bytes, total);
                goto out;
            }
            struct objtmp o;
            int created = 0;
            int ok = objtmp_open(c->st, &o) == 0;
            atomic_fetch_add(o.name[0] ? &c->n_spare : &c->n_tmpfile, 1);
            tfd = o.fd;
            if (!ok || write_all(tfd, t->buf, total) != 0 ||
                objtmp_commit(c->st, &o, e->hash, &created) != 0) {
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
    struct objtmp o;
    int ok = objtmp_open(c->st, &o) == 0;
    tfd = o.fd;
    if (!ok) {
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
        if (r < 0) {
            atomic_store(&c->err, ERR_IO);
            goto out;
        }
        if (r == 0) {
            break;
        }
        if (total + (uint64_t)r > SNAP_MAX_FILE) {
            /* grew past the bound while we read: left out, as the walk would have */
            e->flag |= F_GONE;
            if (o.name[0]) {
                spare_put(c->st->pool, tfd, o.name);
            }
            goto out;
        }
        /* Runs of zeros stay holes: a sparse file costs the store what it costs the disk. */
        int zero = t->buf[0] == 0 && memcmp(t->buf, t->buf + 1, (size_t)r - 1) == 0;
        if (zero ? lseek(tfd, r, SEEK_CUR) < 0 : write_all(tfd, t->buf, (size_t)r) != 0) {
            atomic_store(&c->err, ERR_IO);
            goto out;
        }
        EVP_DigestUpdate(t->md, t->buf, (size_t)r);
        total += (uint64_t)r;
    }
    if (ftruncate(tfd, (off_t)total) != 0) { /* a trailing hole */
        atomic_store(&c->err, ERR_IO);
        goto out;
    }
    EVP_DigestFinal_ex(t->md, dg, &dlen);
    hex32(dg, e->hash);
    e->size = total;
    int created = 0;
    if (objtmp_commit(c->st, &o, e->hash, &created) != 0) {
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
    int64_t tc = clock_mono_us();
    atomic_fetch_add(&c->read_us, (tb ? tb : tc) - ta);
    atomic_fetch_add(&c->store_us, tb ? tc - tb : 0);
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
    st->dirfd = st->objfd = st->snapfd = st->packfd = -1;
    pthread_mutex_init(&st->lock, NULL);
    st->dir = xstrdup(dir);
    st->pool = pool_for(dir);
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
    mkdirat(st->dirfd, "packs", 0700);
    st->objfd = openat(st->dirfd, "objects", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    st->snapfd = openat(st->dirfd, "snaps", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    st->packfd = openat(st->dirfd, "packs", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (st->objfd < 0 || st->snapfd < 0 || st->packfd < 0) {
        rc = ERR_IO;
        goto out;
    }
    /* objects/xx/ subdirectories are made on first use: opening a store stays cheap */
    int64_t *seqs = NULL;
    size_t n = 0;
    rc = list_seqs(st, &seqs, &n);
    st->next_seq = n ? seqs[n - 1] + 1 : 1;
    free(seqs);
    /* A store that knows its workspace's size (the cache) gets its spares made now, in the
     * background: an image store opened for a rebuild has them by the time the build's
     * snapshot runs. A new store waits for its first operation to say how many it needs. */
    struct mhdr ch;
    if (rc == 0 && load_header_at(st->dirfd, "cache", &ch) == 0 && ch.entries >= ch.files) {
        pool_check(st->pool);
        pool_kick(st->pool, (size_t)ch.files, (size_t)(ch.entries - ch.files));
        pool_release(st->pool);
    }
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
    if (st->packfd >= 0) {
        close(st->packfd);
    }
    pidx_free(st->px);
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

/* Make object hash ours, taking it from the seed store (seedfd = its objects/): a hard link
 * of the pack holding it, else of its object file. *seedpacks and *seedx cache the seed's
 * packs (opened on first use; the caller closes and frees them). Caller holds st->lock. */
static int adopt(struct snap_store *st, int seedfd, int *seedpacks, struct pidx **seedx,
                 const char *hash)
{
    if (pidx_get(pidx_of(st), hash)) {
        return 0;
    }
    if (!*seedx) {
        *seedpacks = openat(seedfd, "../packs", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        *seedx = pidx_read(*seedpacks);
    }
    int rc = pack_adopt(st, *seedpacks, *seedx, hash);
    if (rc != ERR_NOT_FOUND) {
        return rc;
    }
    return obj_adopt(seedfd, st->objfd, hash);
}

int snap_create(struct snap_store *st, const char *workspace, const char *label,
                struct snap_info *out)
{
    struct entv cur = {0}, cache = {0};
    struct mhdr ch, h;
    struct buf m;
    struct snap_info om; /* what the walk left out */
    struct ent **jobs = NULL;
    int rootfd = -1, seedfd = -1, seedpacks = -1;
    struct pidx *seedx = NULL;
    struct pwriter pw = {.packfd = st->packfd, .fd = -1, .pooldfd = -1};
    int rc = 0, pool_checked = 0;
    int64_t t0 = clock_mono_us(), tp = t0, walk_us = 0, hash_us = 0;
    int64_t cpu0 = thread_cpu_us(), lock_us = 0, pool_us = 0, cache_us = 0, tree_us = 0;
    int64_t write_us = 0, pidx_us = 0;
    int64_t started_ns = now_real_ns();
    char id[32], name[40];
    struct rusage ru0;
    getrusage(RUSAGE_THREAD, &ru0);
    pthread_mutex_lock(&g_pools_mu);
    int bg0 = g_bg_running;
    pthread_mutex_unlock(&g_pools_mu);
    int rest0 = atomic_load(&g_restoring);

    buf_init(&m, 0);
    memset(&h, 0, sizeof(h));
    memset(&om, 0, sizeof(om));
    pthread_mutex_init(&pw.mu, NULL);
    atomic_init(&pw.end, 0);
    pthread_mutex_lock(&st->lock);
    lock_us = clock_mono_us() - t0;
    /* Spare-making and recycling wait while we run, as they do for a restore: a user waits for
     * this snapshot (the session's next prompt does). */
    restoring_begin();
    pidx_of(st);
    pidx_us = clock_mono_us() - t0 - lock_us;
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
    tp = clock_mono_us();
    pool_check(st->pool);
    pool_checked = 1;
    pw.pool = st->pool;
    pool_us = clock_mono_us() - tp;
    tp = clock_mono_us();
    load_cache(st, &rsb, &ch, &cache);
    seedfd = open_seed(st);
    cache_us = clock_mono_us() - tp;
    tp = clock_mono_us();
    rc = walk_tree(rootfd, &cur);
    tree_us = clock_mono_us() - tp;
    if (rc != 0) {
        goto out;
    }
    drop_omitted(&cur, &om);
    if (om.too_deep + om.too_long + om.too_big > 0) {
        LOG_WARN("snap: %s: left out of its snapshot: %llu entries deeper than %d levels, %llu "
                 "with a path longer than %d bytes, %llu files larger than %llu MiB (see "
                 "docs/repos.md, snapshot limits)",
                 workspace, (unsigned long long)om.too_deep, SNAP_MAX_DEPTH,
                 (unsigned long long)om.too_long, SNAP_MAX_PATH, (unsigned long long)om.too_big,
                 (unsigned long long)(SNAP_MAX_FILE >> 20));
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
            if (seedfd >= 0 && adopt(st, seedfd, &seedpacks, &seedx, e->hash) != 0) {
                jobs[nj++] = e; /* the seed lost it: read the file */
            }
        } else {
            jobs[nj++] = e;
        }
    }
    walk_us = clock_mono_us() - t0;
    tp = clock_mono_us();
    struct hctx hc = {.st = st, .rootfd = rootfd, .jobs = jobs};
    size_t pack_min = atomic_load(&g_pack_min);
    if (pack_min > 0 && nj >= pack_min) {
        hc.pw = &pw; /* many new objects likely: one pack instead of nj inodes */
    }
    atomic_init(&hc.new_bytes, 0);
    atomic_init(&hc.err, 0);
    atomic_init(&hc.read_us, 0);
    atomic_init(&hc.store_us, 0);
    atomic_init(&hc.n_spare, 0);
    atomic_init(&hc.n_tmpfile, 0);
    atomic_init(&hc.n_new, 0);
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
    /* the pack's index before the manifest (and before the syncfs of a durable snapshot) */
    int prc = pack_finish(st, &pw, jobs, nj, rc != 0);
    if (rc == 0) {
        rc = prc;
    }
    hash_us = clock_mono_us() - tp;
    tp = clock_mono_us();
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
    /* Durability. The manifest is written after every object it names is complete under its
     * name, so a crash of the process at any point leaves no manifest or a whole snapshot
     * (the page cache outlives the process). Against power loss (snap_set_durable): one
     * syncfs for the objects (cheaper than an fsync per object, and ordered before the
     * manifest), then the manifest and its directory entry are fsynced. */
    int durable = atomic_load(&g_durable);
    if (durable && h.new_bytes > 0 && syncfs(st->objfd) != 0) {
        rc = ERR_IO;
        goto out;
    }
    int64_t tw = clock_mono_us();
    rc = write_new_file(st->pool, st->snapfd, name, m.data, m.len, durable);
    if (rc != 0) {
        goto out;
    }
    st->next_seq++;
    /* The cache is the same text: another name of the manifest (immutable, never edited). */
    link_atomic(st->snapfd, name, st->dirfd, "cache");
    if (seedfd >= 0) {
        unlinkat(st->dirfd, "seed", 0); /* every object of the snapshot is ours now */
    }
    write_us = clock_mono_us() - tw;
    h.duration_us = clock_mono_us() - t0;
    int64_t cpu_us = thread_cpu_us() - cpu0;
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
        out->walk_us = walk_us;
        out->hash_us = hash_us;
        out->manifest_us = clock_mono_us() - tp;
        out->lock_us = lock_us;
        out->cache_us = cache_us;
        out->cpu_us = cpu_us;
        out->special = om.special;
        out->too_deep = om.too_deep;
        out->too_long = om.too_long;
        out->too_big = om.too_big;
    }
    /* Spares for the next snapshot or restore of this workspace (in the background). */
    pool_kick(st->pool, (size_t)h.files, (size_t)(h.entries - h.files));
    struct rusage ru1;
    getrusage(RUSAGE_THREAD, &ru1);
    LOG_INFO(
        "snap: %s of %s: %llu files, %llu hashed, %llu new bytes in %lld ms (lock %lld, "
        "pack index %lld, pool %lld, cache %lld, walk %lld, compare %lld, hash %lld [read "
        "%lld, store %lld ms of threads; %llu new objects, loose ones: %llu in spares, %llu "
        "in tmpfiles], manifest %lld [write %lld] ms; cpu %lld ms, %ld in-blocks, %ld/%ld "
        "vol/invol switches; background threads %d, restores %d)",
        id, workspace, (unsigned long long)h.files, (unsigned long long)h.hashed,
        (unsigned long long)h.new_bytes, (long long)h.duration_us / 1000, (long long)lock_us / 1000,
        (long long)pidx_us / 1000, (long long)pool_us / 1000, (long long)cache_us / 1000,
        (long long)tree_us / 1000,
        (long long)(walk_us - lock_us - pidx_us - pool_us - cache_us - tree_us) / 1000,
        (long long)hash_us / 1000, (long long)atomic_load(&hc.read_us) / 1000,
        (long long)atomic_load(&hc.store_us) / 1000, (unsigned long long)atomic_load(&hc.n_new),
        (unsigned long long)atomic_load(&hc.n_spare),
        (unsigned long long)atomic_load(&hc.n_tmpfile), (long long)(clock_mono_us() - tp) / 1000,
        (long long)write_us / 1000, (long long)cpu_us / 1000, ru1.ru_inblock - ru0.ru_inblock,
        ru1.ru_nvcsw - ru0.ru_nvcsw, ru1.ru_nivcsw - ru0.ru_nivcsw, bg0, rest0);
out:
    if (pool_checked) {
        pool_release(st->pool);
    }
    restoring_end();
    pthread_mutex_unlock(&st->lock);
    if (rootfd >= 0) {
        close(rootfd);
    }
    if (seedfd >= 0) {
        close(seedfd);
    }
    if (seedpacks >= 0) {
        close(seedpacks);
    }
    pidx_free(seedx);
    pthread_mutex_destroy(&pw.mu);
    free(jobs);
    entv_free(&cur);
    entv_free(&cache);
    buf_free(&m);
    return rc;
}

/* ---------------------------------------------------------------- restore */

/* Remove name (any type, its whole tree, however deep) relative to dfd without following
 * symlinks. */
static int rm_at(int dfd, const char *name)
{
    return fswalk_rm(dfd, name, NULL) == 0 ? 0 : -1;
}

struct rctx {
    struct snap_store *st;
    int rootfd;
    struct ent **jobs;
    int as_root;
    uid_t euid;
    gid_t egid;
    _Atomic uint64_t bytes;
    _Atomic uint64_t rewritten;
    _Atomic uint64_t spares;
    _Atomic int no_spares; /* a rename out of the pool failed (EXDEV): create in place */
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

/* Open pfd/leaf for rewriting if it is still a regular file with one link (so that no other
 * path shares the inode we are about to change). -1 otherwise. Not truncated here: the new
 * contents are written over the old and the file cut to size after (a truncation to 0 would
 * make ext4 force a writeback at close, see spare_take). */
static int open_rewrite(int pfd, const char *leaf)
{
    int fd = openat(pfd, leaf, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat sb;
    if (fd >= 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_nlink != 1)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Create pfd/leaf exclusively, replacing whatever appeared there meanwhile. */
static int create_excl(int pfd, const char *leaf, mode_t mode)
{
    int fd = openat(pfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0 && errno == EEXIST) {
        /* Something is there (a process in the sandbox, or a file we could not rewrite). */
        rm_at(pfd, leaf);
        fd = openat(pfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    }
    return fd;
}

/* Write one file of the snapshot into the workspace: an existing file is rewritten in place
 * (F_REWRITE), a new one is a spare inode renamed into place and then written (or a file
 * created in place when there is no spare). Records the new stat data in e. */
static void copy_one(void *vctx, size_t i, void *vtls)
{
    struct rctx *c = vctx;
    struct rtls *t = vtls;
    struct ent *e = c->jobs[i];
    const char *leaf = NULL;
    int src = -1, dst = -1, pooldfd = -1;
    int src_shared = 0; /* src is a pack's fd (the index owns it) */
    uint64_t base = 0;  /* offset of the contents in src */
    int known = 0;      /* dst is a spare: its owner and mode are known without a stat */
    char sname[24] = "";
    int pfd = pdir_get(&t->pd, c->rootfd, e->path, &leaf);
    if (pfd < 0) {
        if (atomic_exchange(&c->err, ERR_IO) == 0) {
            LOG_WARN("snap: restore: parent of %s is unusable (errno %d)", e->path, errno);
        }
        return;
    }
    const struct ploc *pl = e->size > 0 ? pidx_get(c->st->px, e->hash) : NULL;
    if (pl && pl->len == e->size) {
        src = c->st->px->packs[pl->pack].fd;
        src_shared = 1;
        base = pl->off;
    } else if (e->size > 0) {
        char name[68];
        obj_name(e->hash, name);
        src = openat(c->st->objfd, name, O_RDONLY | O_CLOEXEC);
        if (src < 0) {
            LOG_ERROR("snap: restore: object %s is missing", e->hash);
            atomic_store(&c->err, ERR_IO);
            goto out;
        }
    }
    int rewrite = 0;
    if (e->flag & F_REWRITE) {
        dst = open_rewrite(pfd, leaf);
        if (dst >= 0) {
            rewrite = 1;
            atomic_fetch_add(&c->rewritten, 1);
        }
    }
    struct spool *from = c->st->pool, *borrowed = NULL;
    if (dst < 0 && !atomic_load(&c->no_spares)) {
        dst = spare_take(c->st->pool, sname, &pooldfd);
        if (dst < 0) {
            dst = spare_borrow(c->st->pool, sname, &pooldfd, &borrowed);
            from = borrowed ? borrowed : from;
        }
        if (dst < 0 && !atomic_load(&g_restore_short)) {
            restore_mark_short();
        }
        if (dst >= 0) {
            /* Into place first (its contents follow through the fd): one stat at the end
             * then serves for the cache. */
            int ok = renameat2(pooldfd, sname, pfd, leaf, RENAME_NOREPLACE) == 0;
            if (!ok && errno == EEXIST && rm_at(pfd, leaf) == 0) {
                ok = renameat2(pooldfd, sname, pfd, leaf, RENAME_NOREPLACE) == 0;
            }
            if (!ok) {
                /* EXDEV (the workspace is another mount) or the like: no spares here */
                atomic_store(&c->no_spares, 1);
                spare_put(from, dst, sname);
                close(dst);
                dst = -1;
            } else {
                atomic_fetch_add(&c->spares, 1);
                known = 1; /* ours, SPARE_MODE */
            }
        }
        if (borrowed) {
            pool_release(borrowed);
        }
    }
    if (dst < 0) {
        dst = create_excl(pfd, leaf, e->mode & 0777);
    }
    if (dst < 0) {
        atomic_store(&c->err, ERR_IO);
        goto out;
    }
    uint64_t done = 0;
    while (done < e->size) {
        loff_t off = (loff_t)(base + done);
        ssize_t r = copy_file_range(src, &off, dst, NULL, e->size - done, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        done += (uint64_t)r;
    }
    if (done != e->size || (rewrite && ftruncate(dst, (off_t)e->size) != 0)) {
        LOG_ERROR("snap: restore: object %s is short or unreadable", e->hash);
        atomic_store(&c->err, ERR_IO);
        goto out;
    }
    atomic_fetch_add(&c->bytes, done);
    struct stat sb;
    if (known) {
        sb.st_uid = c->euid;
        sb.st_gid = c->egid;
        sb.st_mode = S_IFREG | SPARE_MODE;
    } else if (fstat(dst, &sb) != 0) {
        atomic_store(&c->err, ERR_IO);
        goto out;
    }
    /* owner before mode: fchown clears set-id bits */
    if (c->as_root && (sb.st_uid != e->uid || sb.st_gid != e->gid)) {
        if (fchown(dst, e->uid, e->gid) != 0) {
            atomic_store(&c->err, ERR_IO);
        }
        sb.st_mode = 0; /* set-id bits may be gone: set the mode */
    }
    if ((sb.st_mode & 07777) != e->mode) {
        fchmod(dst, e->mode);
    }
    struct timespec ts[2] = {
        {.tv_sec = 0, .tv_nsec = UTIME_OMIT},
        {.tv_sec = e->mtime_ns / 1000000000LL, .tv_nsec = e->mtime_ns % 1000000000LL}};
    futimens(dst, ts);
    if (fstat(dst, &sb) == 0) {
        e->ino = sb.st_ino;
        e->ctime_ns = ts_ns(&sb.st_ctim);
        e->mtime_ns = ts_ns(&sb.st_mtim);
    }
out:
    if (src >= 0 && !src_shared) {
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

/* Where a restore puts what it takes out of the workspace: a directory next to the workspace
 * (same file system: a rename, whatever the size of the tree), deleted in the background
 * once the restore is done, so that a restore never waits for a mass delete. */
struct trash {
    const char *parent; /* the workspace's parent directory */
    const char *leaf;   /* the workspace's name */
    char *path;
    int fd;
    unsigned n;
    int failed;
};

/* Take name (relative to pfd, any type) out of the workspace. */
static int discard_at(struct trash *tr, int pfd, const char *name)
{
    if (tr->fd < 0 && !tr->failed) {
        char rnd[9];
        util_random_hex(rnd, 4);
        tr->path = xasprintf("%s/.%s.snap-trash-%s", tr->parent, tr->leaf, rnd);
        if (mkdir(tr->path, 0700) == 0) {
            tr->fd = open(tr->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (tr->fd < 0) {
            rmdir(tr->path);
            free(tr->path);
            tr->path = NULL;
            tr->failed = 1;
        }
    }
    if (tr->fd >= 0) {
        char nm[16];
        snprintf(nm, sizeof(nm), "%x", tr->n++);
        if (renameat(pfd, name, tr->fd, nm) == 0 || errno == ENOENT) {
            return 0;
        }
        /* EXDEV (a mount inside the workspace) and the like: delete it now */
    }
    return rm_at(pfd, name);
}

static void trash_done(struct trash *tr)
{
    if (tr->fd >= 0) {
        close(tr->fd);
        tr->fd = -1;
    }
    if (tr->path) {
        trash_later(tr->path, 0); /* the sandbox may still reach these inodes */
        tr->path = NULL;
    }
}

/* Leftovers of restores into parent/leaf that did not finish (a crash): staging and trash
 * directories. Queued for deletion. */
static void sweep_leftovers(const char *parent, const char *leaf)
{
    DIR *d = opendir(parent);
    if (!d) {
        return;
    }
    char *stage = xasprintf(".%s.snap-restore", leaf);
    char *trash = xasprintf(".%s.snap-trash-", leaf);
    size_t tl = strlen(trash);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int is_stage = strcmp(de->d_name, stage) == 0;
        if (!is_stage && strncmp(de->d_name, trash, tl) != 0) {
            continue;
        }
        char *path = xasprintf("%s/%s", parent, de->d_name);
        if (is_stage) {
            /* moved aside first: this restore is about to reuse the name */
            char rnd[9];
            util_random_hex(rnd, 4);
            char *aside = xasprintf("%s/%s%s", parent, trash, rnd);
            if (rename(path, aside) != 0) {
                rm_at(dirfd(d), de->d_name);
                free(aside);
                free(path);
                continue;
            }
            free(path);
            path = aside;
        }
        /* a staging tree was never seen by a sandbox; a trash may have been */
        trash_later(path, is_stage);
    }
    closedir(d);
    free(stage);
    free(trash);
}

/* Split path into its parent directory and last component (both new strings). */
static int split_path(const char *path, char **parent, char **leaf)
{
    char *p = xstrdup(path);
    size_t l = strlen(p);
    while (l > 1 && p[l - 1] == '/') {
        p[--l] = 0;
    }
    char *s = strrchr(p, '/');
    const char *lf = s ? s + 1 : p;
    if (!*lf || strcmp(lf, ".") == 0 || strcmp(lf, "..") == 0) {
        free(p);
        return ERR_INVALID;
    }
    *leaf = xstrdup(lf);
    if (!s) {
        *parent = xstrdup(".");
    } else if (s == p) {
        *parent = xstrdup("/");
    } else {
        *s = 0;
        *parent = xstrdup(p);
    }
    free(p);
    return 0;
}

static int restore_impl(struct snap_store *st, const char *id, const char *workspace,
                        const char *seed_dir, struct snap_restore_info *out)
{
    struct entv tgt = {0}, cur = {0}, cache = {0};
    struct mhdr th, ch, nh;
    struct ent **jobs = NULL;
    struct pdir pd = {.path = NULL, .fd = -1};
    struct buf m;
    struct trash tr = {.fd = -1};
    struct snap_restore_info ri;
    int rootfd = -1;
    int rc = 0, pool_checked = 0;
    int64_t t0 = clock_mono_us(), tp = t0;
    int64_t started_ns = now_real_ns();
    int as_root = geteuid() == 0;
    char name[40];
    char *gone = NULL; /* the last removed directory: skip what was under it */
    size_t gone_len = 0;
    char *parent = NULL, *leaf = NULL, *stage = NULL;
    size_t nj = 0;

    buf_init(&m, 0);
    memset(&ri, 0, sizeof(ri));
    if (!snap_valid_id(id)) {
        return ERR_NOT_FOUND;
    }
    if (split_path(workspace, &parent, &leaf) != 0) {
        return ERR_INVALID;
    }
    pthread_mutex_lock(&st->lock);
    pidx_of(st);
    snprintf(name, sizeof(name), "%s.m", id);
    rc = load_manifest_at(st->snapfd, name, &th, &tgt);
    if (rc != 0) {
        goto out;
    }
    size_t kept_n = 0;
    for (size_t i = 0; i < tgt.n; i++) {
        if (within_bounds(&tgt.v[i])) {
            tgt.v[kept_n++] = tgt.v[i];
        } else {
            ent_free_fields(&tgt.v[i]);
        }
    }
    if (kept_n < tgt.n) {
        LOG_WARN("snap: restore of %s into %s: %zu entries beyond the snapshot limits left out", id,
                 workspace, tgt.n - kept_n);
        tgt.n = kept_n;
    }
    entv_index(&tgt);
    pool_check(st->pool);
    pool_checked = 1;
    restoring_begin();
    tr.parent = parent;
    tr.leaf = leaf;

    /* A workspace that does not exist is built aside and renamed into place at the end: a
     * crash leaves no half-restored workspace (only a staging directory the next restore
     * sweeps away). An existing one is updated in place: it may be bind-mounted into a
     * running sandbox, which must keep seeing the same directory. */
    struct stat wsb;
    if (lstat(workspace, &wsb) != 0) {
        if (errno != ENOENT || util_mkdir_p(parent, 0755) != 0) {
            rc = ERR_IO;
            goto out;
        }
        ri.fresh = 1;
        sweep_leftovers(parent, leaf);
        stage = xasprintf("%s/.%s.snap-restore", parent, leaf);
        if (mkdir(stage, 0755) != 0) {
            LOG_WARN("snap: restore: cannot create %s: %s", stage, strerror(errno));
            free(stage);
            stage = NULL;
            rc = ERR_IO;
            goto out;
        }
        rootfd = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    } else {
        rootfd = open(workspace, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    }
    struct stat rsb;
    if (rootfd < 0 || fstat(rootfd, &rsb) != 0) {
        rc = ERR_IO;
        goto out;
    }
    if (!ri.fresh) {
        load_cache(st, &rsb, &ch, &cache);
        rc = walk_tree(rootfd, &cur);
        if (rc != 0) {
            goto out;
        }
    }
    ri.walk_us = clock_mono_us() - tp;
    tp = clock_mono_us();

    /* 1. Take out what the snapshot does not have (or has with another type). A file with
     * other contents stays: it is rewritten in place (same inode) unless it has other links. */
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
                if (!keep && w->nlink == 1) {
                    t->flag |= F_REWRITE;
                    continue;
                }
            }
        }
        if (keep) {
            t->flag |= F_PRESENT;
            if (t->type != 'd' && (t->mode != w->mode || t->mtime_ns != w->mtime_ns ||
                                   (as_root && (t->uid != w->uid || t->gid != w->gid)))) {
                t->flag |= F_FIXMETA;
            }
            if (t->type == 'f') {
                ri.kept++;
                /* remember the live stat for the new cache */
                t->ino = w->ino;
                t->ctime_ns = w->ctime_ns;
                if (!(t->flag & F_FIXMETA)) {
                    t->mtime_ns = w->mtime_ns;
                }
            }
            continue;
        }
        const char *lf = NULL;
        int pfd = pdir_get(&pd, rootfd, w->path, &lf);
        if (pfd < 0 || discard_at(&tr, pfd, lf) != 0) {
            LOG_WARN("snap: restore: cannot remove an entry of %s", workspace);
            rc = ERR_IO;
            goto out;
        }
        ri.removed++;
        if (w->type == 'd') {
            free(gone);
            gone = xstrdup(w->path);
            gone_len = strlen(gone);
        }
    }
    ri.remove_us = clock_mono_us() - tp;
    tp = clock_mono_us();

    /* 2. Directories and symlinks in order; files become copy jobs. */
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
                    const char *lf = NULL;
                    int pfd = pdir_get(&pd, rootfd, t->path, &lf);
                    struct stat sb;
                    if (pfd >= 0 && fstatat(pfd, lf, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
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
        const char *lf = NULL;
        int pfd = pdir_get(&pd, rootfd, t->path, &lf);
        if (pfd < 0) {
            rc = ERR_IO;
            goto out;
        }
        if (t->type == 'd') {
            if (spare_mkdir(st->pool, pfd, lf) != 0 && errno != EEXIST) {
                rc = ERR_IO;
                goto out;
            }
        } else {
            if (symlinkat(t->target ? t->target : "", pfd, lf) != 0) {
                rc = ERR_IO;
                goto out;
            }
            fix_meta(&pd, rootfd, t, as_root);
        }
    }
    pdir_close(&pd);
    ri.dirs_us = clock_mono_us() - tp;
    tp = clock_mono_us();

    /* 3. Copy the files, in parallel. Spares that cannot cover them all make this restore
     * "short" from the start: the recycler, which feeds the pools, must not wait for it. The
     * spares of the sibling pools count (copy_one borrows them): counting only our own, an
     * image start right after another (which drained the image's pool) was short while the
     * sessions' pool held thousands (seen: 820 of its own, 10,967 in reach). */
    pthread_mutex_lock(&st->pool->mu);
    size_t own = st->pool->n[SP_FILE];
    pthread_mutex_unlock(&st->pool->mu);
    size_t in_reach = own < nj ? spares_in_reach(st->pool) : own;
    if (own < nj) {
        LOG_INFO("snap: restore of %s into %s: %zu files, %zu spare inodes in its pool, %zu in "
                 "reach%s",
                 id, workspace, nj, own, in_reach, in_reach < nj ? ": short" : "");
    }
    if (in_reach < nj && !atomic_load(&g_restore_short)) {
        restore_mark_short();
    }
    struct rctx rcx = {.st = st,
                       .rootfd = rootfd,
                       .jobs = jobs,
                       .as_root = as_root,
                       .euid = geteuid(),
                       .egid = getegid()};
    atomic_init(&rcx.bytes, 0);
    atomic_init(&rcx.rewritten, 0);
    atomic_init(&rcx.spares, 0);
    atomic_init(&rcx.no_spares, 0);
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
    ri.copy_us = clock_mono_us() - tp;
    tp = clock_mono_us();
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

    /* 5. Into place (a fresh workspace), then the new cache: the snapshot's entries with the
     * workspace's stat data. A crash before the cache is written costs the next snapshot a
     * full read, never a wrong one. */
    if (stage) {
        if (renameat2(AT_FDCWD, stage, AT_FDCWD, workspace, RENAME_NOREPLACE) != 0 &&
            (errno != EEXIST || rename(stage, workspace) != 0)) {
            /* rename() replaces an empty directory someone made meanwhile, nothing else */
            LOG_WARN("snap: restore: cannot move the restored tree to %s: %s", workspace,
                     strerror(errno));
            rc = ERR_IO;
            goto out;
        }
        free(stage);
        stage = NULL;
    }
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
    ri.meta_us = clock_mono_us() - tp;

    ri.copied = nj;
    ri.copied_bytes = atomic_load(&rcx.bytes);
    ri.rewritten = atomic_load(&rcx.rewritten);
    ri.spares = atomic_load(&rcx.spares);
    ri.duration_us = clock_mono_us() - t0;
    if (out) {
        *out = ri;
    }
    LOG_DEBUG("snap: restored %s into %s: %zu copied (%llu rewritten, %llu spares), %llu kept, "
              "%llu removed, %lld us",
              id, workspace, nj, (unsigned long long)ri.rewritten, (unsigned long long)ri.spares,
              (unsigned long long)ri.kept, (unsigned long long)ri.removed,
              (long long)ri.duration_us);
out:
    if (rc != 0) {
        /* The workspace is in between: make sure the next snapshot rehashes everything. */
        unlinkat(st->dirfd, "cache", 0);
    }
    if (pool_checked) {
        pool_release(st->pool);
        restoring_end();
    }
    pthread_mutex_unlock(&st->lock);
    pdir_close(&pd);
    if (rootfd >= 0) {
        close(rootfd);
    }
    trash_done(&tr);
    if (stage) {
        /* a failed fresh restore leaves no workspace behind */
        sweep_leftovers(parent, leaf);
        free(stage);
    }
    /* Top the spare pool up for the next restore of this size (in the background). */
    if (tgt.n > 0) {
        pool_kick(st->pool, (size_t)th.files, (size_t)(th.entries - th.files));
    }
    free(parent);
    free(leaf);
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

/* Write the live objects of pack pi of x into a new pack of the store (and its index). */
static int pack_rewrite(struct snap_store *st, const struct pidx *x, uint32_t pi,
                        const struct hset *refs)
{
    char rnd[17], name[32], fn[48];
    struct buf b;
    int rc = 0;
    loff_t noff = 0;
    size_t cnt = 0;
    util_random_hex(rnd, 8);
    snprintf(name, sizeof(name), "p-%s", rnd);
    snprintf(fn, sizeof(fn), "%s.pack", name);
    int fd = openat(st->packfd, fn, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0) {
        return ERR_IO;
    }
    buf_init(&b, 0);
    for (size_t i = 0; rc == 0 && i < x->cap; i++) {
        const struct ploc *l = &x->v[i];
        if (!l->hash[0] || l->pack != pi || !hset_has(refs, l->hash)) {
            continue;
        }
        buf_printf(&b, "%s %llu %llu\n", l->hash, (unsigned long long)noff,
                   (unsigned long long)l->len);
        cnt++;
        loff_t off = (loff_t)l->off;
        uint64_t left = l->len;
        while (left > 0) {
            ssize_t r = copy_file_range(x->packs[pi].fd, &off, fd, &noff, left, 0);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                rc = ERR_IO;
                break;
            }
            left -= (uint64_t)r;
        }
    }
    if (rc == 0 && atomic_load(&g_durable) && fsync(fd) != 0) {
        rc = ERR_IO;
    }
    close(fd);
    if (rc == 0) {
        struct buf hb;
        buf_init(&hb, 0);
        buf_printf(&hb, "%s 1 %zu %llu\n", PACK_MAGIC, cnt, (unsigned long long)noff);
        buf_append(&hb, b.data, b.len);
        snprintf(fn, sizeof(fn), "%s.idx", name);
        rc = write_file_atomic_d(st->packfd, fn, hb.data, hb.len, atomic_load(&g_durable));
        buf_free(&hb);
    }
    if (rc != 0) {
        snprintf(fn, sizeof(fn), "%s.pack", name);
        unlinkat(st->packfd, fn, 0);
    }
    buf_free(&b);
    return rc;
}

static void pack_unlink(int dfd, const char *name)
{
    char fn[48];
    snprintf(fn, sizeof(fn), "%s.idx", name); /* the index first: no half-visible pack */
    unlinkat(dfd, fn, 0);
    snprintf(fn, sizeof(fn), "%s.pack", name);
    unlinkat(dfd, fn, 0);
}

/* GC of packs: delete packs with no live object, rewrite packs less than half live, delete
 * unfinished packs (no index) and indexes without a pack. Caller holds st->lock. */
static void gc_packs(struct snap_store *st, const struct hset *refs, uint64_t *kept,
                     uint64_t *freed)
{
    pidx_reset(st); /* from the disk, as it is now */
    struct pidx *x = pidx_of(st);
    uint64_t *live = xcalloc(x->np + 1, sizeof(*live));
    for (size_t i = 0; i < x->cap; i++) {
        if (x->v[i].hash[0] && hset_has(refs, x->v[i].hash)) {
            live[x->v[i].pack] += x->v[i].len;
        }
    }
    for (uint32_t p = 0; p < x->np; p++) {
        const struct pack *pk = &x->packs[p];
        if (live[p] == 0) {
            pack_unlink(st->packfd, pk->name);
            *freed += pk->size;
        } else if (live[p] * 2 < pk->size && pack_rewrite(st, x, p, refs) == 0) {
            pack_unlink(st->packfd, pk->name);
            *freed += pk->size - live[p];
            *kept += live[p];
        } else {
            *kept += pk->size;
        }
    }
    free(live);
    pidx_reset(st);
    int fd = openat(st->packfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0) {
            close(fd);
        }
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        int is_pack = l > 7 && strcmp(de->d_name + l - 5, ".pack") == 0;
        int is_idx = l > 6 && strcmp(de->d_name + l - 4, ".idx") == 0;
        if (strncmp(de->d_name, "p-", 2) != 0 || l >= 40 || (!is_pack && !is_idx)) {
            continue;
        }
        char other[48];
        snprintf(other, sizeof(other), "%.*s.%s", (int)(l - (is_pack ? 5 : 4)), de->d_name,
                 is_pack ? "idx" : "pack");
        struct stat sb;
        if (faccessat(dirfd(d), other, F_OK, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT &&
            fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
            unlinkat(dirfd(d), de->d_name, 0) == 0) {
            *freed += (uint64_t)sb.st_size;
        }
    }
    closedir(d);
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
    gc_packs(st, &refs, &kept, &freed);
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
