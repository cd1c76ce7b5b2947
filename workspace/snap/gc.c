/*
 * gc.c - garbage collection of objects and packs, and pruning old snapshots.
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
    if (rc == 0 && atomic_load(&st->ctx->durable) && fsync(fd) != 0) {
        rc = ERR_IO;
    }
    close(fd);
    if (rc == 0) {
        struct buf hb;
        buf_init(&hb, 0);
        buf_printf(&hb, "%s 1 %zu %llu\n", PACK_MAGIC, cnt, (unsigned long long)noff);
        buf_append(&hb, b.data, b.len);
        snprintf(fn, sizeof(fn), "%s.idx", name);
        rc = write_file_atomic_d(st->packfd, fn, hb.data, hb.len, atomic_load(&st->ctx->durable));
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
