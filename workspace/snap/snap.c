/*
 * snap.c - the context (snap_ctx: settings, open stores, spares), store open/close (one
 * instance per directory in a context), listing and delete.
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

/* ---------------------------------------------------------------- context */

int snap_ctx_new(struct snap_ctx **out)
{
    struct snap_ctx *ctx = xcalloc(1, sizeof(*ctx));
    spares_init(&ctx->spares);
    atomic_init(&ctx->durable, 0);
    atomic_init(&ctx->pack_min, 1);
    pthread_mutex_init(&ctx->stores_mu, NULL);
    *out = ctx;
    return 0;
}

void snap_ctx_free(struct snap_ctx *ctx)
{
    if (!ctx) {
        return;
    }
    if (ctx->stores) {
        /* a store outliving its ctx would reach freed spares: a caller's bug */
        LOG_ERROR("snap: a store is still open (%s) when its context is freed", ctx->stores->dir);
    }
    spares_fini(&ctx->spares);
    pthread_mutex_destroy(&ctx->stores_mu);
    free(ctx);
}

void snap_set_durable(struct snap_ctx *ctx, int on)
{
    atomic_store(&ctx->durable, on ? 1 : 0);
}

void snap_set_pack_min(struct snap_ctx *ctx, size_t n)
{
    atomic_store(&ctx->pack_min, n);
}

/* ---------------------------------------------------------------- store */

void snap_id_of(int64_t seq, char *out, size_t n)
{
    snprintf(out, n, "snap-%06lld", (long long)seq);
}

/* Ids of all manifests, sorted by seq ascending. Caller frees *ids. */
int list_seqs(struct snap_store *st, int64_t **ids, size_t *n)
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

static int store_new(struct snap_ctx *ctx, const char *dir, struct snap_store **out)
{
    struct snap_store *st = xcalloc(1, sizeof(*st));
    int rc = 0;
    st->dirfd = st->objfd = st->snapfd = st->packfd = -1;
    pthread_mutex_init(&st->lock, NULL);
    st->dir = xstrdup(dir);
    st->ctx = ctx;
    st->spares = spares_for(&ctx->spares, dir);
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
        spares_check(st->spares);
        spares_kick(st->spares, (size_t)ch.files, (size_t)(ch.entries - ch.files));
        spares_release(st->spares);
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

int snap_store_open(struct snap_ctx *ctx, const char *dir, struct snap_store **out)
{
    struct stat sb;
    *out = NULL;
    if (util_mkdir_p(dir, 0700) != 0 || stat(dir, &sb) != 0) {
        LOG_ERROR("snap: cannot create the store directory %s", dir);
        return ERR_IO;
    }
    pthread_mutex_lock(&ctx->stores_mu);
    for (struct snap_store *p = ctx->stores; p; p = p->next) {
        if (p->dev == sb.st_dev && p->ino == sb.st_ino) {
            p->refs++;
            *out = p;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->stores_mu);
    if (*out) {
        return 0;
    }
    struct snap_store *st = NULL;
    int rc = store_new(ctx, dir, &st);
    if (rc != 0) {
        return rc;
    }
    st->dev = sb.st_dev;
    st->ino = sb.st_ino;
    st->refs = 1;
    pthread_mutex_lock(&ctx->stores_mu);
    for (struct snap_store *p = ctx->stores; p; p = p->next) {
        if (p->dev == st->dev && p->ino == st->ino) {
            p->refs++; /* another thread opened it meanwhile: use theirs */
            *out = p;
            break;
        }
    }
    if (!*out) {
        st->next = ctx->stores;
        ctx->stores = st;
        *out = st;
        st = NULL;
    }
    pthread_mutex_unlock(&ctx->stores_mu);
    store_free(st);
    return 0;
}

void snap_store_close(struct snap_store *st)
{
    if (!st) {
        return;
    }
    struct snap_ctx *ctx = st->ctx;
    pthread_mutex_lock(&ctx->stores_mu);
    if (--st->refs > 0) {
        pthread_mutex_unlock(&ctx->stores_mu);
        return;
    }
    for (struct snap_store **pp = &ctx->stores; *pp; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->stores_mu);
    store_free(st);
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

int delete_locked(struct snap_store *st, const char *id)
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
