/*
 * restore.c - restoring a snapshot into a workspace (and seeding a store from another).
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
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- restore */

/* Remove name (any type, its whole tree, however deep) relative to dfd without following
 * symlinks. */
int rm_at(int dfd, const char *name)
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
    _Atomic int no_spares; /* a rename out of a spare directory failed (EXDEV): create in place */
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

/* The object of e to copy from: a range of a pack (*shared: the pack index owns the fd) or a
 * loose object file. *src stays -1 for an empty file. */
static int open_source(struct rctx *c, const struct ent *e, int *src, int *shared, uint64_t *base)
{
    const struct ploc *pl = e->size > 0 ? pidx_get(c->st->px, e->hash) : NULL;
    if (pl && pl->len == e->size) {
        *src = c->st->px->packs[pl->pack].fd;
        *shared = 1;
        *base = pl->off;
    } else if (e->size > 0) {
        char name[68];
        obj_name(e->hash, name);
        *src = openat(c->st->objfd, name, O_RDONLY | O_CLOEXEC);
        if (*src < 0) {
            LOG_ERROR("snap: restore: object %s is missing", e->hash);
            return ERR_IO;
        }
    }
    return 0;
}

/* Rename a spare inode (ours or a sibling's) to pfd/leaf and return an fd on it, or -1 when
 * there is none or the workspace cannot take one (then no more are tried). Into place first,
 * its contents follow through the fd: one stat at the end then serves for the cache. */
static int place_spare(struct rctx *c, int pfd, const char *leaf)
{
    struct spare_dir *from = c->st->spares, *borrowed = NULL;
    struct snap_spares *ss = &c->st->ctx->spares;
    char sname[24] = "";
    int sparedfd = -1;
    int dst = spare_take(c->st->spares, sname, &sparedfd);
    if (dst < 0) {
        dst = spare_borrow(c->st->spares, sname, &sparedfd, &borrowed);
        from = borrowed ? borrowed : from;
    }
    if (dst < 0 && !atomic_load(&ss->restore_short)) {
        restore_mark_short(ss);
    }
    if (dst >= 0) {
        int ok = renameat2(sparedfd, sname, pfd, leaf, RENAME_NOREPLACE) == 0;
        if (!ok && errno == EEXIST && rm_at(pfd, leaf) == 0) {
            ok = renameat2(sparedfd, sname, pfd, leaf, RENAME_NOREPLACE) == 0;
        }
        if (!ok) {
            /* EXDEV (the workspace is another mount) or the like: no spares here */
            atomic_store(&c->no_spares, 1);
            spare_put(from, dst, sname);
            close(dst);
            dst = -1;
        } else {
            atomic_fetch_add(&c->spares, 1);
        }
    }
    if (borrowed) {
        spares_release(borrowed);
    }
    return dst;
}

/* Copy size bytes at base of src into dst (at its offset 0). The bytes copied. Between two file
 * systems (a workspace that is a disk of its own, sandbox/wsdisk.h) copy_file_range answers
 * EXDEV: sendfile copies there, in the kernel as well. */
static uint64_t copy_range(int src, uint64_t base, int dst, uint64_t size)
{
    uint64_t done = 0;
    int cross = 0;
    while (done < size) {
        loff_t off = (loff_t)(base + done);
        ssize_t r = cross ? sendfile(dst, src, &off, size - done)
                          : copy_file_range(src, &off, dst, NULL, size - done, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && errno == EXDEV && !cross) {
            cross = 1;
            continue;
        }
        if (r <= 0) {
            break;
        }
        done += (uint64_t)r;
    }
    return done;
}

/* Give the written file dst the owner, mode and mtime of e, and record its new stat data in e.
 * known: dst is a spare (ours, SPARE_MODE), so no stat is needed first. */
static int set_file_meta(struct rctx *c, struct ent *e, int dst, int known)
{
    int rc = 0;
    struct stat sb;
    if (known) {
        sb.st_uid = c->euid;
        sb.st_gid = c->egid;
        sb.st_mode = S_IFREG | SPARE_MODE;
    } else if (fstat(dst, &sb) != 0) {
        return ERR_IO;
    }
    /* owner before mode: fchown clears set-id bits */
    if (c->as_root && (sb.st_uid != e->uid || sb.st_gid != e->gid)) {
        if (fchown(dst, e->uid, e->gid) != 0) {
            rc = ERR_IO;
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
    return rc;
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
    int src = -1, dst = -1, rc = 0;
    int src_shared = 0; /* src is a pack's fd (the index owns it) */
    uint64_t base = 0;  /* offset of the contents in src */
    int known = 0;      /* dst is a spare: its owner and mode are known without a stat */
    int rewrite = 0;
    int pfd = pdir_get(&t->pd, c->rootfd, e->path, &leaf);
    if (pfd < 0) {
        if (atomic_exchange(&c->err, ERR_IO) == 0) {
            LOG_WARN("snap: restore: parent of %s is unusable (errno %d)", e->path, errno);
        }
        return;
    }
    rc = open_source(c, e, &src, &src_shared, &base);
    if (rc != 0) {
        goto out;
    }
    if (e->flag & F_REWRITE) {
        dst = open_rewrite(pfd, leaf);
        if (dst >= 0) {
            rewrite = 1;
            atomic_fetch_add(&c->rewritten, 1);
        }
    }
    if (dst < 0 && !atomic_load(&c->no_spares)) {
        dst = place_spare(c, pfd, leaf);
        known = dst >= 0;
    }
    if (dst < 0) {
        dst = create_excl(pfd, leaf, e->mode & 0777);
    }
    if (dst < 0) {
        rc = ERR_IO;
        goto out;
    }
    uint64_t done = copy_range(src, base, dst, e->size);
    if (done != e->size || (rewrite && ftruncate(dst, (off_t)e->size) != 0)) {
        LOG_ERROR("snap: restore: object %s is short or unreadable", e->hash);
        rc = ERR_IO;
        goto out;
    }
    atomic_fetch_add(&c->bytes, done);
    rc = set_file_meta(c, e, dst, known);
out:
    if (rc != 0) {
        atomic_store(&c->err, rc);
    }
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
    int rc = snap_store_open(st->ctx, seed_dir, &dst);
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
    struct snap_spares *ss; /* its janitor's */
    const char *parent;     /* the workspace's parent directory */
    const char *leaf;       /* the workspace's name */
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
        trash_later(tr->ss, tr->path, 0); /* the sandbox may still reach these inodes */
        tr->path = NULL;
    }
}

/* Leftovers of restores into parent/leaf that did not finish (a crash): staging and trash
 * directories. Queued for deletion. */
static void sweep_leftovers(struct snap_spares *ss, const char *parent, const char *leaf)
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
        trash_later(ss, path, is_stage);
    }
    closedir(d);
    free(stage);
    free(trash);
}

/* Split path into its parent directory and last component (both new strings). */
int split_path(const char *path, char **parent, char **leaf)
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

/* Leave out (with a warning) the entries of tgt beyond the snapshot limits: a manifest written
 * by another version, or edited, must not make a restore build what a snapshot would refuse. */
static void drop_out_of_bounds(struct entv *tgt, const char *id, const char *workspace)
{
    size_t kept_n = 0;
    for (size_t i = 0; i < tgt->n; i++) {
        if (within_bounds(&tgt->v[i])) {
            tgt->v[kept_n++] = tgt->v[i];
        } else {
            ent_free_fields(&tgt->v[i]);
        }
    }
    if (kept_n < tgt->n) {
        LOG_WARN("snap: restore of %s into %s: %zu entries beyond the snapshot limits left out", id,
                 workspace, tgt->n - kept_n);
        tgt->n = kept_n;
    }
}

/* Open the directory to restore into (*rootfd). A workspace that does not exist is built aside
 * (*stage, *fresh set) and renamed into place at the end: a crash leaves no half-restored
 * workspace (only a staging directory the next restore sweeps away). An existing one is updated
 * in place: it may be bind-mounted into a running sandbox, which must keep seeing the same
 * directory. */
static int open_root(struct snap_spares *ss, const char *workspace, const char *parent,
                     const char *leaf, char **stage, int *fresh, int *rootfd)
{
    struct stat wsb;
    if (lstat(workspace, &wsb) != 0) {
        if (errno != ENOENT || util_mkdir_p(parent, 0755) != 0) {
            return ERR_IO;
        }
        *fresh = 1;
        sweep_leftovers(ss, parent, leaf);
        *stage = xasprintf("%s/.%s.snap-restore", parent, leaf);
        if (mkdir(*stage, 0755) != 0) {
            LOG_WARN("snap: restore: cannot create %s: %s", *stage, strerror(errno));
            free(*stage);
            *stage = NULL;
            return ERR_IO;
        }
        *rootfd = open(*stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    } else {
        *rootfd = open(workspace, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    }
    return 0;
}

/* Step 1: take out of the workspace (entries cur, stat cache made at cache_ns) what the snapshot
 * (tgt) does not have, or has with another type. A file with other contents stays: it is marked
 * F_REWRITE and rewritten in place (same inode) unless it has other links. Entries that stay
 * are marked F_PRESENT (and F_FIXMETA when their metadata differs). */
static int remove_extra(struct entv *cur, struct entv *tgt, const struct entv *cache,
                        int64_t cache_ns, struct pdir *pd, int rootfd, struct trash *tr,
                        struct snap_restore_info *ri, const char *workspace)
{
    int as_root = geteuid() == 0;
    char *gone = NULL; /* the last removed directory: skip what was under it */
    size_t gone_len = 0;
    int rc = 0;
    for (size_t i = 0; i < cur->n; i++) {
        struct ent *w = &cur->v[i];
        if (gone && is_under(w->path, gone, gone_len)) {
            continue;
        }
        struct ent *t = entv_find(tgt, w->path);
        int keep = 0;
        if (t && t->type == w->type) {
            if (w->type == 'd') {
                keep = 1;
            } else if (w->type == 'l') {
                keep = strcmp(t->target ? t->target : "", w->target ? w->target : "") == 0;
            } else {
                struct ent *c = entv_find(cache, w->path);
                keep = cache_trusted(c, w, cache_ns) && strcmp(c->hash, t->hash) == 0;
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
                ri->kept++;
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
        int pfd = pdir_get(pd, rootfd, w->path, &lf);
        if (pfd < 0 || discard_at(tr, pfd, lf) != 0) {
            LOG_WARN("snap: restore: cannot remove an entry of %s", workspace);
            rc = ERR_IO;
            goto out;
        }
        ri->removed++;
        if (w->type == 'd') {
            free(gone);
            gone = xstrdup(w->path);
            gone_len = strlen(gone);
        }
    }
out:
    free(gone);
    return rc;
}

/* Step 2: directories and symlinks of tgt in order (fixing the metadata of those present);
 * files become copy jobs (*nj of them in jobs). Directories' metadata is fixed last. */
static int make_dirs_links(struct snap_store *st, struct entv *tgt, struct pdir *pd, int rootfd,
                           int as_root, int spares_ok, struct ent **jobs, size_t *nj)
{
    for (size_t i = 0; i < tgt->n; i++) {
        struct ent *t = &tgt->v[i];
        if (t->flag & F_PRESENT) {
            if (t->flag & F_FIXMETA) {
                if (t->type == 'd') {
                    continue; /* directories are fixed last */
                }
                fix_meta(pd, rootfd, t, as_root);
                if (t->type == 'f') {
                    /* chmod/utimes changed ctime: re-stat for the cache */
                    const char *lf = NULL;
                    int pfd = pdir_get(pd, rootfd, t->path, &lf);
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
            jobs[(*nj)++] = t;
            continue;
        }
        const char *lf = NULL;
        int pfd = pdir_get(pd, rootfd, t->path, &lf);
        if (pfd < 0) {
            return ERR_IO;
        }
        if (t->type == 'd') {
            int mrc = spares_ok ? spare_mkdir(st->spares, pfd, lf) : mkdirat(pfd, lf, 0700);
            if (mrc != 0 && errno != EEXIST) {
                return ERR_IO;
            }
        } else {
            if (symlinkat(t->target ? t->target : "", pfd, lf) != 0) {
                return ERR_IO;
            }
            fix_meta(pd, rootfd, t, as_root);
        }
    }
    return 0;
}

/* Step 3: copy the nj files of jobs, in parallel; the counts go to ri. Spares that cannot cover
 * them all make this restore "short" from the start: the recycler, which feeds the spare
 * directories, must not wait for it. The spares of the sibling spare directories count
 * (copy_one borrows them): counting only our own, an image start right after another (which
 * drained the image's spares) was short while the sessions' spares held thousands (seen: 820 of
 * its own, 10,967 in reach). */
static int copy_files(struct snap_store *st, const char *id, const char *workspace, int rootfd,
                      int spares_ok, struct ent **jobs, size_t nj, struct snap_restore_info *ri)
{
    int as_root = geteuid() == 0;
    pthread_mutex_lock(&st->spares->mu);
    size_t own = spares_ok ? st->spares->n[SP_FILE] : nj;
    pthread_mutex_unlock(&st->spares->mu);
    size_t in_reach = own < nj ? spares_in_reach(st->spares) : own;
    if (own < nj) {
        LOG_INFO("snap: restore of %s into %s: %zu files, %zu spare inodes in its spares, %zu in "
                 "reach%s",
                 id, workspace, nj, own, in_reach, in_reach < nj ? ": short" : "");
    }
    if (in_reach < nj && !atomic_load(&st->ctx->spares.restore_short)) {
        restore_mark_short(&st->ctx->spares);
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
    atomic_init(&rcx.no_spares, !spares_ok);
    atomic_init(&rcx.err, 0);
    size_t ngroups = 0;
    size_t *starts = group_by_dir(jobs, nj, &ngroups);
    struct par_job pj = {.n = nj,
                         .starts = starts,
                         .ngroups = ngroups,
                         .ctx = &rcx,
                         .fn = copy_job,
                         .tls_new = rtls_new,
                         .tls_free = rtls_free};
    par_run(&pj);
    free(starts);
    ri->copied_bytes = atomic_load(&rcx.bytes);
    ri->rewritten = atomic_load(&rcx.rewritten);
    ri->spares = atomic_load(&rcx.spares);
    return atomic_load(&rcx.err);
}

/* Step 5: the new stat cache of the store: the snapshot's entries (th, tgt) with the workspace's
 * stat data (root rsb); and with seed_dir, the seed of that other store. */
static int write_cache(struct snap_store *st, const char *id, const struct mhdr *th,
                       const struct entv *tgt, const struct stat *rsb, int64_t started_ns,
                       const char *seed_dir)
{
    struct mhdr nh;
    struct buf m;
    int rc = 0;
    buf_init(&m, 0);
    memset(&nh, 0, sizeof(nh));
    nh.created_ms = clock_now_ms();
    nh.started_ns = started_ns;
    nh.dev = (uint64_t)rsb->st_dev;
    nh.root_ino = (uint64_t)rsb->st_ino;
    nh.files = th->files;
    nh.entries = th->entries;
    nh.bytes = th->bytes;
    snprintf(nh.label, sizeof(nh.label), "restore of %s", id);
    put_header(&m, &nh);
    for (size_t i = 0; i < tgt->n; i++) {
        put_ent(&m, &tgt->v[i]);
    }
    write_file_atomic(st->dirfd, "cache", m.data, m.len);
    if (seed_dir) {
        rc = seed_store(st, seed_dir, m.data, m.len);
        if (rc != 0) {
            goto out;
        }
    }
out:
    buf_free(&m);
    return rc;
}

/* The manifest of snapshot id (header th, entries tgt, indexed), without the entries beyond
 * the snapshot limits. */
static int load_target(struct snap_store *st, const char *id, const char *workspace,
                       struct mhdr *th, struct entv *tgt)
{
    char name[40];
    snprintf(name, sizeof(name), "%s.m", id);
    int rc = load_manifest_at(st->snapfd, name, th, tgt);
    if (rc != 0) {
        return rc;
    }
    drop_out_of_bounds(tgt, id, workspace);
    entv_index(tgt);
    return 0;
}

/* Rename the staging directory of a fresh restore to the workspace path. */
static int move_into_place(const char *stage, const char *workspace)
{
    if (renameat2(AT_FDCWD, stage, AT_FDCWD, workspace, RENAME_NOREPLACE) != 0 &&
        (errno != EEXIST || rename(stage, workspace) != 0)) {
        /* rename() replaces an empty directory someone made meanwhile, nothing else */
        LOG_WARN("snap: restore: cannot move the restored tree to %s: %s", workspace,
                 strerror(errno));
        return ERR_IO;
    }
    return 0;
}

/* One restore of snapshot id into workspace: what its steps share. */
struct restore {
    struct snap_store *st;
    const char *id, *workspace;
    const char *seed_dir; /* snap_restore_seed: the store to seed, else NULL */
    char *parent, *leaf;  /* of workspace */
    char *stage;          /* a fresh restore's staging directory until it is in place */
    int rootfd;           /* the directory restored into (stage or workspace) */
    struct stat rsb;      /* its stat */
    struct mhdr th, ch;   /* headers of the snapshot and of the workspace's stat cache */
    struct entv tgt, cur; /* the snapshot's entries and the live workspace's */
    struct entv cache;    /* the stat cache (an existing workspace only) */
    struct ent **jobs;    /* files to copy */
    size_t nj;
    struct pdir pd;  /* parent directory handle of the sequential steps */
    struct trash tr; /* what the workspace had and the snapshot has not */
    struct snap_restore_info ri;
    int as_root;
    int spares_ok;      /* the workspace is on the spares' file system (not a disk of its own) */
    int spares_held;    /* spares_check and restoring_begin done */
    int64_t t0, tp;     /* start, start of the current phase (clock_mono_us) */
    int64_t started_ns; /* wall clock at the start, for the new cache */
};

/* Load the snapshot, take the spares and open the directory to restore into; an existing
 * workspace is walked (with its stat cache). Caller holds st->lock. */
static int restore_load(struct restore *r)
{
    struct snap_store *st = r->st;
    pidx_of(st);
    int rc = load_target(st, r->id, r->workspace, &r->th, &r->tgt);
    if (rc != 0) {
        return rc;
    }
    spares_check(st->spares);
    restoring_begin(&st->ctx->spares);
    r->spares_held = 1;
    rc = open_root(&st->ctx->spares, r->workspace, r->parent, r->leaf, &r->stage, &r->ri.fresh,
                   &r->rootfd);
    if (rc != 0) {
        return rc;
    }
    if (r->rootfd < 0 || fstat(r->rootfd, &r->rsb) != 0) {
        return ERR_IO;
    }
    /* A workspace on another file system than the spares (a disk of its own,
     * sandbox/wsdisk.h) cannot take spare inodes: created in place, none taken. */
    pthread_mutex_lock(&st->spares->mu);
    r->spares_ok = st->spares->dfd < 0 || st->spares->dev == r->rsb.st_dev;
    pthread_mutex_unlock(&st->spares->mu);
    if (!r->ri.fresh) {
        load_cache(st, &r->rsb, &r->ch, &r->cache);
        rc = walk_tree(r->rootfd, &r->cur);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* The time since the last phase mark; sets the mark to now. */
static int64_t phase_us(struct restore *r)
{
    int64_t now = clock_mono_us();
    int64_t d = now - r->tp;
    r->tp = now;
    return d;
}

/* Make the tree under rootfd identical to the snapshot, in four steps. */
static int restore_apply(struct restore *r)
{
    /* 1. Take out what the snapshot does not have (or has with another type). */
    int rc = remove_extra(&r->cur, &r->tgt, &r->cache, r->ch.started_ns, &r->pd, r->rootfd, &r->tr,
                          &r->ri, r->workspace);
    if (rc != 0) {
        return rc;
    }
    r->ri.remove_us = phase_us(r);

    /* 2. Directories and symlinks in order; files become copy jobs. */
    r->jobs = xmalloc((r->tgt.n + 1) * sizeof(*r->jobs));
    rc = make_dirs_links(r->st, &r->tgt, &r->pd, r->rootfd, r->as_root, r->spares_ok, r->jobs,
                         &r->nj);
    if (rc != 0) {
        return rc;
    }
    pdir_close(&r->pd);
    r->ri.dirs_us = phase_us(r);

    /* 3. Copy the files, in parallel. */
    rc = copy_files(r->st, r->id, r->workspace, r->rootfd, r->spares_ok, r->jobs, r->nj, &r->ri);
    r->ri.copy_us = phase_us(r);
    if (rc != 0) {
        return rc;
    }

    /* 4. Directory modes and mtimes, deepest first (creating entries changed the mtimes). */
    for (size_t i = r->tgt.n; i-- > 0;) {
        struct ent *t = &r->tgt.v[i];
        if (t->type == 'd') {
            fix_meta(&r->pd, r->rootfd, t, r->as_root);
        }
    }
    return 0;
}

/* 5. Into place (a fresh workspace), then the new cache: the snapshot's entries with the
 * workspace's stat data. A crash before the cache is written costs the next snapshot a full
 * read, never a wrong one. */
static int restore_commit(struct restore *r)
{
    if (r->stage) {
        int rc = move_into_place(r->stage, r->workspace);
        if (rc != 0) {
            return rc;
        }
        free(r->stage);
        r->stage = NULL;
    }
    int rc = write_cache(r->st, r->id, &r->th, &r->tgt, &r->rsb, r->started_ns, r->seed_dir);
    r->ri.meta_us = phase_us(r);
    return rc;
}

/* The end of every restore, done or failed (rc): give back the spares and the store's lock,
 * queue the trash, sweep a failed fresh restore away, top the spares up. */
static void restore_release(struct restore *r, int rc)
{
    struct snap_store *st = r->st;
    if (rc != 0) {
        /* The workspace is in between: make sure the next snapshot rehashes everything. */
        unlinkat(st->dirfd, "cache", 0);
    }
    if (r->spares_held) {
        spares_release(st->spares);
        restoring_end(&st->ctx->spares);
    }
    pthread_mutex_unlock(&st->lock);
    pdir_close(&r->pd);
    if (r->rootfd >= 0) {
        close(r->rootfd);
    }
    trash_done(&r->tr);
    if (r->stage) {
        /* a failed fresh restore leaves no workspace behind */
        sweep_leftovers(&st->ctx->spares, r->parent, r->leaf);
        free(r->stage);
    }
    /* Top the spares up for the next restore of this size (in the background). */
    if (r->tgt.n > 0) {
        spares_kick(st->spares, (size_t)r->th.files, (size_t)(r->th.entries - r->th.files));
    }
    free(r->parent);
    free(r->leaf);
    free(r->jobs);
    entv_free(&r->tgt);
    entv_free(&r->cur);
    entv_free(&r->cache);
}

static int restore_impl(struct snap_store *st, const char *id, const char *workspace,
                        const char *seed_dir, struct snap_restore_info *out)
{
    if (!snap_valid_id(id)) {
        return ERR_NOT_FOUND;
    }
    struct restore r = {.st = st,
                        .id = id,
                        .workspace = workspace,
                        .seed_dir = seed_dir,
                        .rootfd = -1,
                        .pd = {.path = NULL, .fd = -1},
                        .tr = {.ss = &st->ctx->spares, .fd = -1},
                        .as_root = geteuid() == 0,
                        .started_ns = now_real_ns()};
    r.t0 = r.tp = clock_mono_us();
    if (split_path(workspace, &r.parent, &r.leaf) != 0) {
        return ERR_INVALID;
    }
    r.tr.parent = r.parent;
    r.tr.leaf = r.leaf;
    pthread_mutex_lock(&st->lock);
    int rc = restore_load(&r);
    if (rc == 0) {
        r.ri.walk_us = phase_us(&r);
        rc = restore_apply(&r);
    }
    if (rc == 0) {
        rc = restore_commit(&r);
    }
    if (rc == 0) {
        r.ri.copied = r.nj;
        r.ri.duration_us = clock_mono_us() - r.t0;
        if (out) {
            *out = r.ri;
        }
        LOG_DEBUG("snap: restored %s into %s: %zu copied (%llu rewritten, %llu spares), %llu "
                  "kept, %llu removed, %lld us",
                  id, workspace, r.nj, (unsigned long long)r.ri.rewritten,
                  (unsigned long long)r.ri.spares, (unsigned long long)r.ri.kept,
                  (unsigned long long)r.ri.removed, (long long)r.ri.duration_us);
    }
    restore_release(&r, rc);
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
