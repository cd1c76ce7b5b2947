/*
 * fswalk.c - iterative, bounded directory walks (see fswalk.h for the contract).
 *
 * A walk is a stack of frames, one per directory being walked. A frame reads its directory's
 * names whole when it is pushed (getdents64 into a name list), then hands them to the caller
 * one by one; a subdirectory the caller enters becomes the next frame. So the machine stack
 * stays flat whatever the depth, and a frame needs its fd only to stat and open its children:
 * when FSWALK_MAX_FDS are open, the shallowest frame's fd (never the root's) is closed, and
 * reopened on the way back up through its child's "..", accepted only if it is the same
 * directory (device + inode; a directory has one parent). If the sandbox moved it meanwhile,
 * the frame is reopened component by component from the nearest open ancestor (O_NOFOLLOW
 * each), and if that is not it either, its remaining entries are dropped.
 *
 * Threads: none of its own; all state is the walk's.
 */
#include "fswalk.h"

#include "err.h"
#include "xmem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DENTS_BUF (32u << 10)
#define DIR_OPEN  (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)

struct frame {
    int fd;    /* -1: closed to stay within FSWALK_MAX_FDS (or lost: dead) */
    int dead;  /* could not be reopened: its remaining names are dropped */
    dev_t dev; /* identity, checked when the frame is reopened */
    ino_t ino;
    size_t plen; /* length of this directory's path in the walk's path buffer */
    char *names; /* its entries, NUL-separated */
    size_t nlen; /* bytes used in names */
    size_t ncap; /* bytes allocated */
    size_t pos;  /* offset of the next name to hand out */
};

struct walker {
    const struct fswalk *w;
    struct frame *fr;
    size_t n, cap;
    size_t nopen; /* frames whose fd is open */
    size_t lo;    /* no frame below this index (except the root) has an open fd */
    char *path;
    size_t pathcap;
    char *dbuf; /* getdents64 buffer */
};

static void path_room(struct walker *k, size_t need)
{
    if (need <= k->pathcap) {
        return;
    }
    size_t cap = k->pathcap ? k->pathcap : 256;
    while (cap < need) {
        cap *= 2;
    }
    k->path = xrealloc(k->path, cap);
    k->pathcap = cap;
}

/* Read the names of f->fd (without "." and ".."). -1 if the directory cannot be read. */
static int read_names(struct walker *k, struct frame *f)
{
    for (;;) {
        ssize_t r = getdents64(f->fd, k->dbuf, DENTS_BUF);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return -1;
        }
        if (r == 0) {
            return 0;
        }
        for (ssize_t off = 0; off < r;) {
            const struct dirent64 *de = (const struct dirent64 *)(void *)(k->dbuf + off);
            off += de->d_reclen;
            const char *nm = de->d_name;
            if (nm[0] == '.' && (!nm[1] || (nm[1] == '.' && !nm[2]))) {
                continue;
            }
            size_t l = strlen(nm) + 1;
            if (f->nlen + l > f->ncap) {
                f->ncap = f->ncap ? f->ncap * 2 : 1024;
                while (f->nlen + l > f->ncap) {
                    f->ncap *= 2;
                }
                f->names = xrealloc(f->names, f->ncap);
            }
            memcpy(f->names + f->nlen, nm, l);
            f->nlen += l;
        }
    }
}

static int same_dir(int fd, dev_t dev, ino_t ino)
{
    struct stat sb;
    return fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode) && sb.st_dev == dev && sb.st_ino == ino;
}

/* Close the shallowest open fd (never the root's) to make room for one more. */
static void make_room(struct walker *k)
{
    if (k->nopen < FSWALK_MAX_FDS) {
        return;
    }
    for (size_t i = k->lo > 1 ? k->lo : 1; i + 1 < k->n; i++) {
        if (k->fr[i].fd >= 0) {
            close(k->fr[i].fd);
            k->fr[i].fd = -1;
            k->nopen--;
            k->lo = i + 1;
            return;
        }
    }
}

/* Reopen frame i (fd closed) by the components of its path below its nearest open
 * ancestor, never following a symlink. -1 if that is not the same directory any more. */
static int reopen_down(struct walker *k, size_t i)
{
    size_t a = i;
    while (a > 0 && k->fr[a].fd < 0) {
        a--;
    }
    if (k->fr[a].fd < 0) {
        return -1;
    }
    int fd = dup(k->fr[a].fd);
    for (size_t j = a + 1; j <= i && fd >= 0; j++) {
        /* the component of frame j: path[fr[j-1].plen (+1 for '/') .. fr[j].plen) */
        size_t s = k->fr[j - 1].plen;
        if (k->path[s] == '/') {
            s++;
        }
        char *nm = xstrndup(k->path + s, k->fr[j].plen - s);
        int nfd = openat(fd, nm, DIR_OPEN);
        free(nm);
        close(fd);
        fd = nfd;
    }
    if (fd >= 0 && !same_dir(fd, k->fr[i].dev, k->fr[i].ino)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Make frame i's fd open again, from child (its child's open fd) or from above. */
static void ensure_open(struct walker *k, size_t i, int child)
{
    struct frame *f = &k->fr[i];
    if (f->fd >= 0 || f->dead) {
        return;
    }
    int fd = child >= 0 ? openat(child, "..", DIR_OPEN) : -1;
    if (fd >= 0 && !same_dir(fd, f->dev, f->ino)) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        fd = reopen_down(k, i);
    }
    if (fd < 0) {
        f->dead = 1;
        return;
    }
    f->fd = fd;
    k->nopen++;
    if (k->lo > i) {
        k->lo = i;
    }
}

/* Push a frame for the directory fd (ours now) whose path is path[0..plen). -1 if its
 * entries could not be read (it is then walked as empty). */
static int push(struct walker *k, int fd, const struct stat *sb, size_t plen)
{
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 16;
        k->fr = xrealloc(k->fr, k->cap * sizeof(*k->fr));
    }
    struct frame *f = &k->fr[k->n++];
    memset(f, 0, sizeof(*f));
    f->fd = fd;
    f->dev = sb->st_dev;
    f->ino = sb->st_ino;
    f->plen = plen;
    k->nopen++;
    if (read_names(k, f) != 0) {
        f->nlen = 0; /* entered, contents unknown: reported as empty */
        return -1;
    }
    return 0;
}

/* Finish the top frame: post() on it (from its parent), close, pop. */
static int pop(struct walker *k)
{
    struct frame *f = &k->fr[k->n - 1];
    int rc = 0;
    if (k->n > 1) {
        struct frame *p = &k->fr[k->n - 2];
        ensure_open(k, k->n - 2, f->fd);
        struct stat sb;
        if (k->w->post && !p->dead && f->fd >= 0 && fstat(f->fd, &sb) == 0) {
            k->path[f->plen] = 0;
            size_t s = p->plen + (k->path[p->plen] == '/' ? 1 : 0);
            struct fswalk_ent e = {.path = k->path,
                                   .path_len = f->plen,
                                   .name = k->path + s,
                                   .depth = k->w->depth0 + (int)(k->n - 1),
                                   .dirfd = p->fd,
                                   .fd = f->fd,
                                   .st = &sb};
            rc = k->w->post(k->w->ctx, &e);
        }
    }
    if (f->fd >= 0) {
        close(f->fd);
        k->nopen--;
    }
    free(f->names);
    k->n--;
    if (k->lo > k->n) {
        k->lo = k->n;
    }
    return rc;
}

/* Hand out the next name of the top frame; enter it if asked. */
static int step(struct walker *k)
{
    struct frame *f = &k->fr[k->n - 1];
    const char *nm = f->names + f->pos;
    size_t l = strlen(nm);
    f->pos += l + 1;
    size_t plen = f->plen + (f->plen ? 1 : 0) + l;
    path_room(k, plen + 1);
    if (f->plen) {
        k->path[f->plen] = '/';
    }
    memcpy(k->path + plen - l, nm, l + 1);
    struct stat sb;
    if (fstatat(f->fd, nm, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
        return 0; /* vanished meanwhile */
    }
    int depth = k->w->depth0 + (int)k->n;
    struct fswalk_ent e = {.path = k->path,
                           .path_len = plen,
                           .name = k->path + plen - l,
                           .depth = depth,
                           .dirfd = f->fd,
                           .fd = -1,
                           .st = &sb};
    int rc = k->w->pre(k->w->ctx, &e);
    if (rc < 0) {
        return rc;
    }
    if (rc != FSWALK_ENTER || !S_ISDIR(sb.st_mode) || depth - k->w->depth0 >= FSWALK_MAX_DEPTH) {
        return 0;
    }
    int cfd = openat(f->fd, k->path + plen - l, DIR_OPEN);
    if (cfd < 0) {
        return 0;
    }
    if (!same_dir(cfd, sb.st_dev, sb.st_ino)) {
        close(cfd); /* swapped since the stat: not what the caller decided on */
        return 0;
    }
    make_room(k);
    push(k, cfd, &sb, plen); /* an unreadable directory is walked as empty */
    return 0;
}

int fswalk_run(int rootfd, const struct fswalk *w)
{
    struct walker k = {.w = w};
    int rc = 0;
    struct stat sb;
    int fd = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        if (fd >= 0) {
            close(fd);
        }
        return ERR_IO;
    }
    /* Our own open file description: getdents64 must start at the beginning, whatever
     * rootfd's offset. */
    int own = openat(fd, ".", DIR_OPEN);
    close(fd);
    if (own < 0) {
        return ERR_IO;
    }
    k.dbuf = xmalloc(DENTS_BUF);
    size_t pl = w->prefix ? strlen(w->prefix) : 0;
    path_room(&k, pl + 1);
    memcpy(k.path, w->prefix ? w->prefix : "", pl + 1);
    if (push(&k, own, &sb, pl) != 0) {
        rc = ERR_IO;
    }
    while (k.n > 0 && rc == 0) {
        struct frame *f = &k.fr[k.n - 1];
        if (f->dead || f->pos >= f->nlen) {
            rc = pop(&k);
            continue;
        }
        ensure_open(&k, k.n - 1, -1);
        if (f->dead) {
            continue;
        }
        rc = step(&k);
    }
    while (k.n > 0) {
        struct frame *f = &k.fr[--k.n];
        if (f->fd >= 0) {
            close(f->fd);
        }
        free(f->names);
    }
    free(k.fr);
    free(k.path);
    free(k.dbuf);
    return rc;
}

/* ---------------------------------------------------------------- removal */

struct rm {
    const struct fswalk_rm_ops *ops;
    int rootfd;
    unsigned seq;
    int hoisted;
    uint64_t failed;
    uint64_t *mark; /* failed when the directory at each depth was entered */
};

static int rm_file(struct rm *r, int dirfd, const char *name, const struct stat *sb)
{
    if (r->ops && r->ops->file && r->ops->file(r->ops->ctx, dirfd, name, sb) == 0) {
        return 0;
    }
    if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT) {
        r->failed++;
    }
    return 0;
}

/* Move the too-deep directory dirfd/name up into the root, for the next pass. */
static void hoist(struct rm *r, int dirfd, const char *name)
{
    for (int tries = 0; tries < 100; tries++) {
        char nm[40];
        snprintf(nm, sizeof(nm), ".fswalk-deep-%u", r->seq++);
        if (renameat2(dirfd, name, r->rootfd, nm, RENAME_NOREPLACE) == 0) {
            r->hoisted = 1;
            return;
        }
        if (errno != EEXIST) {
            break;
        }
    }
    r->failed++;
}

static int rm_pre(void *ctx, const struct fswalk_ent *e)
{
    struct rm *r = ctx;
    if (!S_ISDIR(e->st->st_mode)) {
        return rm_file(r, e->dirfd, e->name, e->st);
    }
    if (e->depth >= FSWALK_MAX_DEPTH) {
        hoist(r, e->dirfd, e->name);
        return 0;
    }
    r->mark[e->depth] = r->failed;
    return FSWALK_ENTER;
}

static int rm_post(void *ctx, const struct fswalk_ent *e)
{
    struct rm *r = ctx;
    /* the hook only gets a directory whose whole tree went */
    if (r->ops && r->ops->dir && r->failed == r->mark[e->depth] &&
        r->ops->dir(r->ops->ctx, e->fd, e->dirfd, e->name) == 0) {
        return 0;
    }
    if (unlinkat(e->dirfd, e->name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
        r->failed++;
    }
    return 0;
}

int fswalk_rm(int dirfd, const char *name, const struct fswalk_rm_ops *ops)
{
    struct rm r = {.ops = ops, .rootfd = -1};
    struct stat sb;
    int rc = 0;
    if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
        return errno == ENOENT ? 0 : ERR_IO;
    }
    if (!S_ISDIR(sb.st_mode)) {
        rm_file(&r, dirfd, name, &sb);
        return r.failed ? ERR_IO : 0;
    }
    r.rootfd = openat(dirfd, name, DIR_OPEN);
    if (r.rootfd < 0 || !same_dir(r.rootfd, sb.st_dev, sb.st_ino)) {
        rc = ERR_IO;
        goto out;
    }
    r.mark = xcalloc(FSWALK_MAX_DEPTH + 1, sizeof(*r.mark));
    struct fswalk w = {.pre = rm_pre, .post = rm_post, .ctx = &r};
    do {
        r.hoisted = 0;
        if (fswalk_run(r.rootfd, &w) != 0) {
            r.failed++;
        }
    } while (r.hoisted && r.failed == 0);
    if (r.failed == 0 && ops && ops->dir && ops->dir(ops->ctx, r.rootfd, dirfd, name) == 0) {
        goto out;
    }
    if (unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
        rc = ERR_IO;
    }
out:
    if (r.rootfd >= 0) {
        close(r.rootfd);
    }
    free(r.mark);
    return rc != 0 || r.failed ? ERR_IO : 0;
}
