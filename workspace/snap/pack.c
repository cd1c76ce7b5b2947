/*
 * pack.c - packs: many small objects in one file, their index, writing and adopting them.
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

/* ---------------------------------------------------------------- packs */

void pidx_free(struct pidx *x)
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

const struct ploc *pidx_get(const struct pidx *x, const char *hash)
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
struct pidx *pidx_read(int dfd)
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
struct pidx *pidx_of(struct snap_store *st)
{
    if (!st->px) {
        st->px = pidx_read(st->packfd);
    }
    return st->px;
}

/* Drop the loaded index (it is read again on next use). Caller holds st->lock. */
void pidx_reset(struct snap_store *st)
{
    pidx_free(st->px);
    st->px = NULL;
}

/* Append len bytes to the pack (created on first use); *off gets their offset. */
int pack_append(struct pwriter *w, const void *data, size_t len, uint64_t *off)
{
    pthread_mutex_lock(&w->mu);
    if (w->fd < 0 && !w->failed) {
        char rnd[17], fn[48];
        util_random_hex(rnd, 8);
        snprintf(w->name, sizeof(w->name), "p-%s", rnd);
        snprintf(fn, sizeof(fn), "%s.pack", w->name);
        w->spare[0] = 0;
        w->fd = w->spares ? spare_take(w->spares, w->spare, &w->sparedfd) : -1;
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
int pack_finish(struct snap_store *st, struct pwriter *w, struct ent **jobs, size_t nj, int fail)
{
    char fn[48];
    int rc = 0;
    if (w->fd < 0) {
        return fail ? 0 : (w->failed ? ERR_IO : 0);
    }
    if (!fail && w->spare[0]) {
        /* the pack is complete: give it its name (before its index exists) */
        snprintf(fn, sizeof(fn), "%s.pack", w->name);
        rc = fchmod(w->fd, 0444) == 0 ? file_commit(w->fd, w->sparedfd, w->spare, w->packfd, fn)
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
        rc = write_new_file(w->spares, w->packfd, fn, b.data, b.len, 0);
        buf_free(&b);
        if (rc == 0) {
            rc = pack_add(pidx_of(st), w->packfd, w->name);
        }
    }
    if (w->spare[0]) {
        spare_put(w->spares, w->fd, w->spare); /* never renamed: truncated and given back */
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
int pack_adopt(struct snap_store *st, int seedpacks, const struct pidx *seedx, const char *hash)
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
