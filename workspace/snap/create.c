/*
 * create.c - snapshot creation: the workspace walk, the worker threads, hashing files
 * into the store and snap_create.
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
int within_bounds(const struct ent *e)
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

static void *par_thread(void *arg)
{
    struct par_job *j = arg;
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
size_t *group_by_dir(struct ent **jobs, size_t n, size_t *ngroups)
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
void par_run(struct par_job *j)
{
    long cpus = j->cpus > 0 ? j->cpus : sysconf(_SC_NPROCESSORS_ONLN);
    size_t par_min = j->par_min ? j->par_min : PAR_MIN_JOBS;
    int nt = j->n < par_min ? 1 : (int)(cpus < 1 ? 1 : cpus > MAX_WORKERS ? MAX_WORKERS : cpus);
    pthread_t th[MAX_WORKERS];
    int started = 0;
    atomic_store(&j->next, 0);
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&th[started], NULL, par_thread, j) == 0) {
            pthread_setname_np(th[started], "snap-worker");
            started++;
        }
    }
    par_thread(j);
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
int walk_tree(int rootfd, struct entv *out)
{
    return walk_tree_n(rootfd, out, 0);
}

/* walk_tree() counting with cpus CPUs (0: ask sysconf). */
int walk_tree_n(int rootfd, struct entv *out, int cpus)
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
    struct par_job pj = {.n = nd, .par_min = 2, .cpus = cpus, .ctx = &wc, .fn = subwalk_job};
    par_run(&pj);
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
    struct walker *walker; /* opens the files (jobs[i] is its i-th) */
    dev_t dev;             /* the workspace's file system */
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

void obj_name(const char *hash, char out[68])
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

/* A new object being written: into a spare (name set) or an O_TMPFILE (name empty). */
struct objtmp {
    int fd;
    int sparedfd;
    char name[24];
};

static int objtmp_open(struct snap_store *st, struct objtmp *o)
{
    o->fd = spare_take(st->spares, o->name, &o->sparedfd);
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
        if (renameat2(o->sparedfd, o->name, st->objfd, name, RENAME_NOREPLACE) == 0) {
            o->name[0] = 0;
            *created = 1;
            return 0;
        }
        if (errno != ENOENT) {
            break;
        }
        char sub[3] = {hash[0], hash[1], 0};
        if (spare_mkdir(st->spares, st->objfd, sub) != 0 && errno != EEXIST) {
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
    spare_put(st->spares, o->fd, o->name);
    o->name[0] = 0;
    return rc;
}

/* Read a small file whole into t->buf: want is one byte more than its size, so that *grew tells
 * that it grew while we read. */
static int read_whole(int fd, struct htls *t, size_t want, uint64_t *total, int *grew)
{
    if (want > t->cap) {
        t->cap = want;
        t->buf = xrealloc(t->buf, t->cap);
    }
    *total = 0;
    while (*total < want) {
        ssize_t r = read(fd, t->buf + *total, want - *total);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return ERR_IO;
        }
        if (r == 0) {
            break;
        }
        *total += (uint64_t)r;
    }
    *grew = *total == want;
    return 0;
}

/* Hash the total bytes of t->buf (a small file read whole) and store them unless the store has
 * them already: into the snapshot's pack when there is one, else as a loose object. *tb gets the
 * time the store part began (the rest counts as reading). */
static int store_whole(struct hctx *c, struct htls *t, struct ent *e, uint64_t total, int64_t *tb)
{
    unsigned char dg[32];
    unsigned int dlen = 0;
    int tfd = -1, rc = 0;

    EVP_DigestUpdate(t->md, t->buf, total);
    EVP_DigestFinal_ex(t->md, dg, &dlen);
    hex32(dg, e->hash);
    e->size = total;
    *tb = clock_mono_us();
    if (pidx_get(c->st->px, e->hash) || obj_exists(c->st->objfd, e->hash)) {
        goto out;
    }
    atomic_fetch_add(&c->n_new, 1);
    if (c->pw) {
        if (pack_append(c->pw, t->buf, total, &e->poff) != 0) {
            rc = ERR_IO;
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
        rc = ERR_IO;
        goto out;
    }
    if (created) {
        atomic_fetch_add(&c->new_bytes, total);
    }
out:
    if (tfd >= 0) {
        close(tfd);
    }
    return rc;
}

/* A large file (or one that grew while read whole): stream it from fd (at offset 0, digest
 * initialised) into an anonymous object file while hashing. */
static int store_stream(struct hctx *c, struct htls *t, struct ent *e, int fd)
{
    unsigned char dg[32];
    unsigned int dlen = 0;
    uint64_t total = 0;
    int rc = 0;
    struct objtmp o;
    int ok = objtmp_open(c->st, &o) == 0;
    int tfd = o.fd;

    if (!ok) {
        rc = ERR_IO;
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
            rc = ERR_IO;
            goto out;
        }
        if (r == 0) {
            break;
        }
        if (total + (uint64_t)r > SNAP_MAX_FILE) {
            /* grew past the bound while we read: left out, as the walk would have */
            e->flag |= F_GONE;
            if (o.name[0]) {
                spare_put(c->st->spares, tfd, o.name);
            }
            goto out;
        }
        /* Runs of zeros stay holes: a sparse file costs the store what it costs the disk. */
        int zero = t->buf[0] == 0 && memcmp(t->buf, t->buf + 1, (size_t)r - 1) == 0;
        if (zero ? lseek(tfd, r, SEEK_CUR) < 0 : write_all(tfd, t->buf, (size_t)r) != 0) {
            rc = ERR_IO;
            goto out;
        }
        EVP_DigestUpdate(t->md, t->buf, (size_t)r);
        total += (uint64_t)r;
    }
    if (ftruncate(tfd, (off_t)total) != 0) { /* a trailing hole */
        rc = ERR_IO;
        goto out;
    }
    EVP_DigestFinal_ex(t->md, dg, &dlen);
    hex32(dg, e->hash);
    e->size = total;
    int created = 0;
    if (objtmp_commit(c->st, &o, e->hash, &created) != 0) {
        rc = ERR_IO;
        goto out;
    }
    if (created) {
        atomic_fetch_add(&c->new_bytes, total);
    }
out:
    if (tfd >= 0) {
        close(tfd);
    }
    return rc;
}

/* Hash one workspace file and make sure its object exists. Updates e->hash, e->size and the
 * stat fields from the open file; sets F_GONE if it vanished or is no longer a file. */
static void hash_one(void *vctx, size_t i, void *vtls)
{
    struct hctx *c = vctx;
    struct htls *t = vtls;
    struct ent *e = c->jobs[i];
    int fd = -1, rc = 0;
    int64_t ta = clock_mono_us(), tb = 0;

    /* The walk child opened it as it walked (beneath the root, no symlink, O_NONBLOCK: a
     * file swapped for a FIFO does not block). Only a regular file of the workspace's file
     * system is read: whatever the child hands us, nothing else reaches the store. */
    rc = walker_fd(c->walker, i, &fd);
    if (rc != 0) {
        goto out;
    }
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_dev != c->dev) {
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
        uint64_t total = 0;
        int grew = 0;
        rc = read_whole(fd, t, (size_t)sb.st_size + 1, &total, &grew);
        if (rc == 0 && !grew) {
            rc = store_whole(c, t, e, total, &tb);
            goto out;
        }
        /* grew while we read: fall back to streaming */
        if (rc == 0 && lseek(fd, 0, SEEK_SET) != 0) {
            rc = ERR_IO;
        }
        if (rc != 0) {
            goto out;
        }
        EVP_DigestInit_ex(t->md, sha256_md(), NULL);
    }
    rc = store_stream(c, t, e, fd);
out:
    if (rc != 0) {
        atomic_store(&c->err, rc);
    }
    if (fd >= 0) {
        close(fd);
    }
    int64_t tc = clock_mono_us();
    atomic_fetch_add(&c->read_us, (tb ? tb : tc) - ta);
    atomic_fetch_add(&c->store_us, tb ? tc - tb : 0);
}

static void hash_job(void *ctx, size_t i, void *tls)
{
    hash_one(ctx, i, tls);
}

/* Load the workspace stat cache if it describes this very workspace directory. */
int load_cache(struct snap_store *st, const struct stat *root, struct mhdr *h, struct entv *v)
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
int cache_trusted(const struct ent *c, const struct ent *e, int64_t cache_ns)
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

/* Log what the walk left out of the snapshot, if anything. */
static void warn_omitted(const char *workspace, const struct snap_info *om)
{
    if (om->too_deep + om->too_long + om->too_big > 0) {
        LOG_WARN("snap: %s: left out of its snapshot: %llu entries deeper than %d levels, %llu "
                 "with a path longer than %d bytes, %llu files larger than %llu MiB (see "
                 "docs/repos.md, snapshot limits)",
                 workspace, (unsigned long long)om->too_deep, SNAP_MAX_DEPTH,
                 (unsigned long long)om->too_long, SNAP_MAX_PATH, (unsigned long long)om->too_big,
                 (unsigned long long)(SNAP_MAX_FILE >> 20));
    }
}

/* The files of cur that must be read: those the stat cache (made at cache_ns) cannot vouch
 * for, and those a seeded store could not adopt from its seed. Trusted ones take their hash
 * from the cache. Fills jobs (room for cur->n) and returns their number. */
static size_t pick_jobs(struct snap_store *st, struct entv *cur, const struct entv *cache,
                        int64_t cache_ns, int seedfd, int *seedpacks, struct pidx **seedx,
                        struct ent **jobs)
{
    size_t nj = 0;
    for (size_t i = 0; i < cur->n; i++) {
        struct ent *e = &cur->v[i];
        if (e->type != 'f') {
            continue;
        }
        struct ent *c = entv_find(cache, e->path);
        if (cache_trusted(c, e, cache_ns)) {
            memcpy(e->hash, c->hash, 65);
            /* A seeded store (snap_restore_seed) takes the objects of its cache from the
             * store it was restored from, once, by hard link. */
            if (seedfd >= 0 && adopt(st, seedfd, seedpacks, seedx, e->hash) != 0) {
                jobs[nj++] = e; /* the seed lost it: read the file */
            }
        } else {
            jobs[nj++] = e;
        }
    }
    return nj;
}

/* Hash the nj jobs of hc (st, rootfd and jobs set) on the worker threads and store their new
 * objects: into the pack of pw when there are many, else as loose objects. The pack is
 * complete with its index on success. 0 or ERR_IO. */
static int hash_jobs(struct hctx *hc, struct pwriter *pw, size_t nj)
{
    size_t pack_min = atomic_load(&hc->st->ctx->pack_min);
    if (pack_min > 0 && nj >= pack_min) {
        hc->pw = pw; /* many new objects likely: one pack instead of nj inodes */
    }
    atomic_init(&hc->new_bytes, 0);
    atomic_init(&hc->err, 0);
    atomic_init(&hc->read_us, 0);
    atomic_init(&hc->store_us, 0);
    atomic_init(&hc->n_spare, 0);
    atomic_init(&hc->n_tmpfile, 0);
    atomic_init(&hc->n_new, 0);
    size_t ngroups = 0;
    size_t *starts = group_by_dir(hc->jobs, nj, &ngroups);
    struct par_job pj = {.n = nj,
                         .starts = starts,
                         .ngroups = ngroups,
                         .ctx = hc,
                         .fn = hash_job,
                         .tls_new = htls_new,
                         .tls_free = htls_free};
    par_run(&pj);
    free(starts);
    int rc = atomic_load(&hc->err);
    /* the pack's index before the manifest (and before the syncfs of a durable snapshot) */
    int prc = pack_finish(hc->st, pw, hc->jobs, nj, rc != 0);
    return rc != 0 ? rc : prc;
}

/* Count the entries of cur into h and write the manifest text (h, then the entries) into m.
 * Entries under a vanished directory are still listed (the walk saw them); only files that
 * vanished between the walk and the hashing are dropped. */
static void build_manifest(struct buf *m, struct mhdr *h, const struct entv *cur, int64_t t0)
{
    for (size_t i = 0; i < cur->n; i++) {
        const struct ent *e = &cur->v[i];
        if (e->flag & F_GONE) {
            continue;
        }
        h->entries++;
        if (e->type == 'f') {
            h->files++;
            h->bytes += e->size;
        }
    }
    h->duration_us = clock_mono_us() - t0;
    put_header(m, h);
    for (size_t i = 0; i < cur->n; i++) {
        if (!(cur->v[i].flag & F_GONE)) {
            put_ent(m, &cur->v[i]);
        }
    }
}

/* Timings of one snap_create, for its snap_info and its log line. */
struct ctimes {
    int64_t t0, cpu0, cpu_us;
    int64_t lock_us, pidx_us, spares_us, cache_us, tree_us, walk_us, hash_us, write_us;
    int64_t tm; /* when the manifest phase began */
    struct rusage ru0;
    int bg0, rest0; /* background threads and restores running when it began */
};

/* The snap_info of a new snapshot (header h, left out om). */
static void fill_info(struct snap_info *out, const char *id, const struct mhdr *h,
                      const struct snap_info *om, const struct ctimes *ct)
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
    out->walk_us = ct->walk_us;
    out->hash_us = ct->hash_us;
    out->manifest_us = clock_mono_us() - ct->tm;
    out->lock_us = ct->lock_us;
    out->cache_us = ct->cache_us;
    out->cpu_us = ct->cpu_us;
    out->special = om->special;
    out->too_deep = om->too_deep;
    out->too_long = om->too_long;
    out->too_big = om->too_big;
}

/* One log line per snapshot with where its time went: the numbers to look at first when a
 * prompt waits for its snapshot. */
static void log_created(const char *id, const char *workspace, const struct mhdr *h,
                        struct hctx *hc, const struct ctimes *ct)
{
    struct rusage ru1;
    getrusage(RUSAGE_THREAD, &ru1);
    LOG_INFO(
        "snap: %s of %s: %llu files, %llu hashed, %llu new bytes in %lld ms (lock %lld, "
        "pack index %lld, spares %lld, cache %lld, walk %lld, compare %lld, hash %lld [read "
        "%lld, store %lld ms of threads; %llu new objects, loose ones: %llu in spares, %llu "
        "in tmpfiles], manifest %lld [write %lld] ms; cpu %lld ms, %ld in-blocks, %ld/%ld "
        "vol/invol switches; background threads %d, restores %d)",
        id, workspace, (unsigned long long)h->files, (unsigned long long)h->hashed,
        (unsigned long long)h->new_bytes, (long long)h->duration_us / 1000,
        (long long)ct->lock_us / 1000, (long long)ct->pidx_us / 1000,
        (long long)ct->spares_us / 1000, (long long)ct->cache_us / 1000,
        (long long)ct->tree_us / 1000,
        (long long)(ct->walk_us - ct->lock_us - ct->pidx_us - ct->spares_us - ct->cache_us -
                    ct->tree_us) /
            1000,
        (long long)ct->hash_us / 1000, (long long)atomic_load(&hc->read_us) / 1000,
        (long long)atomic_load(&hc->store_us) / 1000, (unsigned long long)atomic_load(&hc->n_new),
        (unsigned long long)atomic_load(&hc->n_spare),
        (unsigned long long)atomic_load(&hc->n_tmpfile),
        (long long)(clock_mono_us() - ct->tm) / 1000, (long long)ct->write_us / 1000,
        (long long)ct->cpu_us / 1000, ru1.ru_inblock - ct->ru0.ru_inblock,
        ru1.ru_nvcsw - ct->ru0.ru_nvcsw, ru1.ru_nivcsw - ct->ru0.ru_nivcsw, ct->bg0, ct->rest0);
}

/* One snap_create: its inputs, what it holds until create_end, and its figures. */
struct create {
    struct snap_store *st;
    const char *workspace, *label;
    int rootfd, seedfd, seedpacks; /* the workspace; the seed store's objects/ and packs/ */
    struct stat rsb;               /* the workspace directory */
    struct pidx *seedx;            /* the seed store's packs (adopt) */
    struct walker *walker;         /* the walk child (walker.c) */
    struct entv cur, cache;        /* the workspace now; the stat cache */
    struct mhdr ch, h;             /* the cache's header; the new manifest's */
    struct snap_info om;           /* what the walk left out */
    struct ent **jobs;             /* files of cur to read */
    size_t nj;
    struct pwriter pw;
    struct hctx hc;
    struct buf m; /* the manifest text */
    int locked, spares_checked;
    struct ctimes ct;
    int64_t started_ns;
    char id[32];
};

/* Take the store (its lock, the spares, the pack index), open the workspace and start its walk
 * child, then load what the walk will be compared with (the stat cache, the seed store). */
static int create_begin(struct create *c)
{
    int64_t t0 = c->ct.t0;
    pthread_mutex_lock(&c->st->lock);
    c->locked = 1;
    c->ct.lock_us = clock_mono_us() - t0;
    /* Spare-making and recycling wait while we run, as they do for a restore: a user waits for
     * this snapshot (the session's next prompt does). */
    restoring_begin(&c->st->ctx->spares);
    pidx_of(c->st);
    c->ct.pidx_us = clock_mono_us() - t0 - c->ct.lock_us;
    c->rootfd = open(c->workspace, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (c->rootfd < 0) {
        return errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
    }
    if (fstat(c->rootfd, &c->rsb) != 0) {
        return ERR_IO;
    }
    /* the child walks while we load the cache */
    int64_t tp = clock_mono_us();
    int rc = walker_start(c->rootfd, &c->walker);
    c->ct.tree_us = clock_mono_us() - tp;
    if (rc != 0) {
        return rc;
    }
    tp = clock_mono_us();
    spares_check(c->st->spares);
    c->spares_checked = 1;
    c->pw.spares = c->st->spares;
    c->ct.spares_us = clock_mono_us() - tp;
    tp = clock_mono_us();
    load_cache(c->st, &c->rsb, &c->ch, &c->cache);
    c->seedfd = open_seed(c->st);
    c->ct.cache_us = clock_mono_us() - tp;
    return 0;
}

/* Receive the walk, drop what a snapshot leaves out, and pick the files to read; the child
 * starts opening them. */
static int create_walk(struct create *c)
{
    int64_t tp = clock_mono_us();
    int rc = walker_entries(c->walker, &c->cur);
    c->ct.tree_us += clock_mono_us() - tp;
    if (rc != 0) {
        return rc;
    }
    drop_omitted(&c->cur, &c->om);
    warn_omitted(c->workspace, &c->om);
    c->jobs = xmalloc((c->cur.n + 1) * sizeof(*c->jobs));
    c->nj = pick_jobs(c->st, &c->cur, &c->cache, c->ch.started_ns, c->seedfd, &c->seedpacks,
                      &c->seedx, c->jobs);
    walker_plan(c->walker, c->jobs, c->nj);
    c->ct.walk_us = clock_mono_us() - c->ct.t0;
    return 0;
}

/* Read, hash and store the picked files (their fds come from the walk child). */
static int create_hash(struct create *c)
{
    int64_t tp = clock_mono_us();
    c->hc.st = c->st;
    c->hc.walker = c->walker;
    c->hc.dev = c->rsb.st_dev;
    c->hc.jobs = c->jobs;
    int rc = hash_jobs(&c->hc, &c->pw, c->nj);
    c->ct.hash_us = clock_mono_us() - tp;
    return rc;
}

/* Write the manifest (after every object it names is complete), make it the cache, and report
 * the new snapshot into out (may be NULL). */
static int create_commit(struct create *c, struct snap_info *out)
{
    struct snap_store *st = c->st;
    struct mhdr *h = &c->h;
    char name[40];
    c->ct.tm = clock_mono_us();
    h->created_ms = clock_now_ms();
    h->started_ns = c->started_ns;
    h->dev = (uint64_t)c->rsb.st_dev;
    h->root_ino = (uint64_t)c->rsb.st_ino;
    h->hashed = c->nj;
    h->new_bytes = atomic_load(&c->hc.new_bytes);
    snprintf(h->label, sizeof(h->label), "%s", c->label ? c->label : "");
    build_manifest(&c->m, h, &c->cur, c->ct.t0);
    snap_id_of(st->next_seq, c->id, sizeof(c->id));
    snprintf(name, sizeof(name), "%s.m", c->id);
    /* Durability. The manifest is written after every object it names is complete under its
     * name, so a crash of the process at any point leaves no manifest or a whole snapshot
     * (the page cache outlives the process). Against power loss (snap_set_durable): one
     * syncfs for the objects (cheaper than an fsync per object, and ordered before the
     * manifest), then the manifest and its directory entry are fsynced. */
    int durable = atomic_load(&c->st->ctx->durable);
    if (durable && h->new_bytes > 0 && syncfs(st->objfd) != 0) {
        return ERR_IO;
    }
    int64_t tw = clock_mono_us();
    int rc = write_new_file(st->spares, st->snapfd, name, c->m.data, c->m.len, durable);
    if (rc != 0) {
        return rc;
    }
    st->next_seq++;
    /* The cache is the same text: another name of the manifest (immutable, never edited). */
    link_atomic(st->snapfd, name, st->dirfd, "cache");
    if (c->seedfd >= 0) {
        unlinkat(st->dirfd, "seed", 0); /* every object of the snapshot is ours now */
    }
    c->ct.write_us = clock_mono_us() - tw;
    h->duration_us = clock_mono_us() - c->ct.t0;
    c->ct.cpu_us = thread_cpu_us() - c->ct.cpu0;
    if (out) {
        fill_info(out, c->id, h, &c->om, &c->ct);
    }
    /* Spares for the next snapshot or restore of this workspace (in the background). */
    spares_kick(st->spares, (size_t)h->files, (size_t)(h->entries - h->files));
    log_created(c->id, c->workspace, h, &c->hc, &c->ct);
    return 0;
}

/* Release what create_begin and the steps after it took (whether they succeeded or not). */
static void create_end(struct create *c)
{
    walker_free(c->walker);
    if (c->spares_checked) {
        spares_release(c->st->spares);
    }
    if (c->locked) {
        restoring_end(&c->st->ctx->spares);
        pthread_mutex_unlock(&c->st->lock);
    }
    if (c->rootfd >= 0) {
        close(c->rootfd);
    }
    if (c->seedfd >= 0) {
        close(c->seedfd);
    }
    if (c->seedpacks >= 0) {
        close(c->seedpacks);
    }
    pidx_free(c->seedx);
    pthread_mutex_destroy(&c->pw.mu);
    free(c->jobs);
    entv_free(&c->cur);
    entv_free(&c->cache);
    buf_free(&c->m);
}

/* The story of a snapshot: take the store, walk the workspace (in the walk child), read what
 * the stat cache cannot vouch for, write the manifest. */
int snap_create(struct snap_store *st, const char *workspace, const char *label,
                struct snap_info *out)
{
    struct create *c = xcalloc(1, sizeof(*c));
    c->st = st;
    c->workspace = workspace;
    c->label = label;
    c->rootfd = c->seedfd = c->seedpacks = -1;
    c->pw.packfd = st->packfd;
    c->pw.fd = c->pw.sparedfd = -1;
    pthread_mutex_init(&c->pw.mu, NULL);
    atomic_init(&c->pw.end, 0);
    buf_init(&c->m, 0);
    c->ct.t0 = clock_mono_us();
    c->ct.cpu0 = thread_cpu_us();
    c->started_ns = now_real_ns();
    getrusage(RUSAGE_THREAD, &c->ct.ru0);
    c->ct.bg0 = bg_running(&c->st->ctx->spares);
    c->ct.rest0 = atomic_load(&c->st->ctx->spares.restoring);

    int rc = create_begin(c);
    if (rc == 0) {
        rc = create_walk(c);
    }
    if (rc == 0) {
        rc = create_hash(c);
    }
    if (rc == 0) {
        rc = create_commit(c, out);
    }
    create_end(c);
    free(c);
    return rc;
}
