/*
 * park.c - the stubs of hibernated sessions: what the store keeps of a closed session so that
 * a comment can be parked in the spool without opening its file (store_park), the fold of the
 * parked rows into the file when the session opens, the stubs' share of the flusher's pass
 * and their rebuild from the spool at start. Structs and lock order: store_int.h, store.c.
 */
#include "storage/store.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/event.h"
#include "storage/registry.h"
#include "storage/spool.h"
#include "storage/storage_int.h"
#include "storage/store_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- stubs of hibernated sessions (st->lock guards the table; see struct stub) ---- */

static unsigned stub_hash(const char *id)
{
    return fnv1a(id) % STUB_HASH;
}

/* An idempotency key is its user's own: the hash covers (user id, key), with the NUL between
 * them so that ("ab","c") and ("a","bc") differ. */
static uint64_t crid_hash(const char *user, const char *c)
{
    uint64_t h = 14695981039346656037ull;
    for (; *user; user++) {
        h = (h ^ (unsigned char)*user) * 1099511628211ull;
    }
    h = h * 1099511628211ull; /* the NUL */
    for (; *c; c++) {
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    }
    return h;
}

static struct stub *stub_new(const char *id)
{
    struct stub *k = xcalloc(1, sizeof(*k));
    snprintf(k->id, sizeof(k->id), "%s", id);
    pthread_mutex_init(&k->lock, NULL);
    k->taken = 1;
    return k;
}

static void stub_free(struct stub *k)
{
    if (!k) {
        return;
    }
    pthread_mutex_destroy(&k->lock);
    free(k->rowids);
    free(k->crids);
    free(k);
}

static struct stub *stub_find(struct store *st, const char *id)
{
    for (struct stub *k = st->stubs[stub_hash(id)]; k; k = k->hnext) {
        if (strcmp(k->id, id) == 0) {
            return k;
        }
    }
    return NULL;
}

/* Remove id's stub from the table (st->lock held); the caller then sets its `taken`. */
struct stub *stub_take(struct store *st, const char *id)
{
    struct stub **pp = &st->stubs[stub_hash(id)];
    while (*pp && strcmp((*pp)->id, id) != 0) {
        pp = &(*pp)->hnext;
    }
    struct stub *k = *pp;
    if (k) {
        *pp = k->hnext;
        k->hnext = NULL;
        st->nstubs--;
    }
    return k;
}

/* Mark a stub taken: waits for a parker inside it to finish. No other lock needed. */
void stub_mark_taken(struct stub *k)
{
    pthread_mutex_lock(&k->lock);
    k->taken = 1;
    pthread_mutex_unlock(&k->lock);
}

/* Free a stub out of the table, or leave that to its last user (st->lock held). */
void stub_drop_locked(struct store *st, struct stub *k)
{
    (void)st;
    if (k->refs > 0) {
        k->orphan = 1;
    } else {
        stub_free(k);
    }
}

/* Put a taken stub (back) into the table, or drop it when the table is full or another stub
 * is there (st->lock held). */
void stub_insert_locked(struct store *st, struct stub *k)
{
    if (st->nstubs >= STUB_MAX || stub_find(st, k->id)) {
        stub_drop_locked(st, k);
        return;
    }
    unsigned h = stub_hash(k->id);
    k->hnext = st->stubs[h];
    st->stubs[h] = k;
    st->nstubs++;
    /* st->lock then k->lock: k->lock is only ever held briefly by a parker that finds it
     * taken, or by the flusher. */
    pthread_mutex_lock(&k->lock);
    k->taken = 0;
    pthread_mutex_unlock(&k->lock);
}

static void stub_unref(struct store *st, struct stub *k)
{
    pthread_mutex_lock(&st->lock);
    int last = --k->refs == 0 && k->orphan;
    pthread_mutex_unlock(&st->lock);
    if (last) {
        stub_free(k);
    }
}

static int stub_crid_maybe(const struct stub *k, uint64_t h)
{
    if (k->crids_unknown) {
        return 1;
    }
    for (int i = 0; i < k->ncrids; i++) {
        if (k->crids[i] == h) {
            return 1;
        }
    }
    return 0;
}

static void stub_add_crid(struct stub *k, uint64_t h)
{
    if (k->ncrids >= STUB_CRIDS) {
        k->crids_unknown = 1;
        return;
    }
    k->crids = xrealloc(k->crids, (size_t)(k->ncrids + 1) * sizeof(*k->crids));
    k->crids[k->ncrids++] = h;
}

static void stub_add_row(struct stub *k, int64_t rowid)
{
    if (k->nrows == k->caprows) {
        k->caprows = k->caprows ? k->caprows * 2 : 8;
        k->rowids = xrealloc(k->rowids, (size_t)k->caprows * sizeof(*k->rowids));
    }
    if (k->nrows == 0) {
        k->oldest_ms = clock_mono_ms();
    }
    k->rowids[k->nrows++] = rowid;
}

/* The stub a closing session leaves behind (s->lock held, s->db still open): its seq and
 * activity, and the client_request_ids its file knows. NULL when it should leave none. */
struct stub *stub_at_close(struct sess *s, int *keep)
{
    struct stub *k = s->stub;
    s->stub = NULL;
    *keep = 0;
    if (!s->db || s->doomed || s->is_spool) {
        return k; /* the caller drops it */
    }
    *keep = 1;
    if (!k) {
        k = stub_new(s->id);
    }
    pthread_mutex_lock(&k->lock);
    k->last_seq = s->last_seq;
    k->last_activity = s->last_activity;
    k->flushed_seq = s->flushed_seq;
    k->flushed_activity = s->flushed_activity;
    k->seq_unknown = 0;
    k->ncrids = 0;
    k->crids_unknown = 0;
    sqlite3_stmt *q = sess_stmt_cached(s, STUB_CRIDS_SQL);
    if (!q) {
        k->crids_unknown = 1;
    } else {
        int r;
        while ((r = sqlite3_step(q)) == SQLITE_ROW && !k->crids_unknown) {
            const char *u = (const char *)sqlite3_column_text(q, 0);
            const char *c = (const char *)sqlite3_column_text(q, 1);
            stub_add_crid(k, crid_hash(u ? u : "", c ? c : ""));
        }
        if (r != SQLITE_ROW && r != SQLITE_DONE) {
            k->crids_unknown = 1;
        }
        sqlite3_reset(q);
    }
    pthread_mutex_unlock(&k->lock);
    return k;
}

/* Fold k's parked rows into s's file (s->lock held, s->db open, k out of the table). */
int stub_fold(struct sess *s, struct stub *k)
{
    struct store *st = s->st;
    struct spool_row *rows = NULL;
    int nrows = 0;
    int rc = 0;
    pthread_mutex_lock(&k->lock);
    k->taken = 1; /* a parker still inside finishes first (we waited for k->lock) */
    if (k->nrows == 0) {
        goto out;
    }
    rc = spool_fetch(st->spool, k->rowids, k->nrows, &rows, &nrows);
    if (!rc) {
        int64_t last = s->last_seq, ts = s->last_activity;
        rc = spool_apply(s->db, rows, nrows, s->last_seq, &last, &ts);
        if (!rc) {
            s->last_seq = last;
            s->last_activity = ts;
        }
    }
    if (rc) {
        LOG_ERROR("store: %s: cannot fold %d parked rows: %s", s->id, k->nrows, err_str(rc));
        goto out;
    }
    /* Folded: the spool's copies may go. If that fails they stay behind, harmless (their seq
     * is in the file now, so a later fold skips them) until the next start deletes them. */
    int drc = spool_delete(st->spool, k->rowids, k->nrows);
    if (drc) {
        LOG_WARN("store: %s: cannot delete %d folded spool rows: %s", s->id, k->nrows,
                 err_str(drc));
    }
    __atomic_fetch_add(&st->stats.folds, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->stats.folded, (uint64_t)k->nrows, __ATOMIC_RELAXED);
    k->nrows = 0;
    if (k->flushed_seq) {
        /* What the registry holds: the stub's flushes were made while it was hibernated. */
        s->flushed_seq = k->flushed_seq;
        s->flushed_activity = k->flushed_activity;
    }
out:
    pthread_mutex_unlock(&k->lock);
    spool_rows_free(rows, nrows);
    return rc;
}

/* Write the lazy registry columns of n sessions in one registry transaction. The sessions
 * are referenced or being closed by the caller. */
/* ---- parking comments in the spool ---- */

struct park_args {
    const char *id;
    const struct spool_msg *m;
    int64_t seq;
    int64_t rowid, now; /* out */
};

static int park_tx(struct sess_tx *tx, void *arg)
{
    struct park_args *pa = arg;
    pa->now = sess_tx_now(tx);
    return spool_tx_insert(tx, pa->id, pa->seq, pa->m, &pa->rowid);
}

int store_park(struct store *st, const char *id, const struct spool_msg *m, int64_t *seq_out,
               int *parked)
{
    struct stub *k = NULL;
    int rc = 0;
    *parked = 0;
    if (!st->spool || st->cfg.no_spool || !m->author || !util_valid_id(id)) {
        return 0;
    }
    uint64_t h = m->crid ? crid_hash(m->crid_user ? m->crid_user : "", m->crid) : 0;
    pthread_mutex_lock(&st->lock);
    if (!st->stopping && !store_table_find(st, id)) {
        k = stub_find(st, id);
        if (k) {
            k->refs++;
        }
    }
    pthread_mutex_unlock(&st->lock);
    if (!k) {
        return 0;
    }
    /* k->lock is the hibernated session's actor lock: held across the spool commit, so the
     * session's seq order is the commit order, and an opener (stub_fold) waits for us. */
    pthread_mutex_lock(&k->lock);
    if (k->taken || k->seq_unknown || (m->crid && stub_crid_maybe(k, h))) {
        goto out;
    }
    struct park_args pa = {id, m, k->last_seq + 1, 0, 0};
    rc = sess_write(st->spool, park_tx, &pa);
    if (rc) {
        goto out;
    }
    k->last_seq = pa.seq;
    k->last_activity = pa.now;
    stub_add_row(k, pa.rowid);
    if (m->crid) {
        stub_add_crid(k, h);
    }
    *parked = 1;
    *seq_out = pa.seq;
    __atomic_fetch_add(&st->stats.parked, 1, __ATOMIC_RELAXED);
    if (st->cfg.on_event) {
        struct buf ev;
        buf_init(&ev, 0);
        const char *aid = m->author->id;
        if (event_serialize(&ev, pa.seq, "message", pa.now, aid, aid ? m->author->name : NULL,
                            m->event_data) == 0) {
            st->cfg.on_event(st->cfg.on_event_ctx, id, pa.seq, ev.data, ev.len);
        }
        buf_free(&ev);
    }
out:
    pthread_mutex_unlock(&k->lock);
    stub_unref(st, k);
    return rc;
}

/* The stubs' share of the flusher's pass: their lazy registry columns, and (fold) the
 * background folding of sessions with many or old parked rows, by opening them. */
void stubs_flush(struct store *st, int fold)
{
    struct stub **list = NULL;
    size_t n = 0;
    pthread_mutex_lock(&st->lock);
    if (st->nstubs > 0) {
        list = xmalloc((size_t)st->nstubs * sizeof(*list));
        for (int h = 0; h < STUB_HASH; h++) {
            for (struct stub *k = st->stubs[h]; k; k = k->hnext) {
                k->refs++;
                list[n++] = k;
            }
        }
    }
    pthread_mutex_unlock(&st->lock);
    if (!n) {
        return;
    }
    struct registry_touch t[CLOSE_BATCH];
    struct stub *tk[CLOSE_BATCH];
    char(*folds)[65] = fold ? xmalloc(FOLD_PER_PASS * sizeof(*folds)) : NULL;
    int nt = 0, nfold = 0;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i <= n; i++) {
        if (i < n) {
            struct stub *k = list[i];
            pthread_mutex_lock(&k->lock);
            if (!k->taken &&
                (k->last_seq != k->flushed_seq || k->last_activity != k->flushed_activity)) {
                t[nt] = (struct registry_touch){k->id, k->last_seq, k->last_activity};
                tk[nt++] = k;
            }
            if (folds && !k->taken && k->nrows > 0 && nfold < FOLD_PER_PASS &&
                (k->nrows >= FOLD_ROWS || now - k->oldest_ms >= FOLD_AGE_MS)) {
                memcpy(folds[nfold++], k->id, sizeof(k->id));
            }
            pthread_mutex_unlock(&k->lock);
        }
        if (nt == CLOSE_BATCH || (i == n && nt > 0)) {
            if (registry_session_touch_many(st->reg, t, (size_t)nt) == 0) {
                for (int j = 0; j < nt; j++) {
                    pthread_mutex_lock(&tk[j]->lock);
                    tk[j]->flushed_seq = t[j].last_seq;
                    tk[j]->flushed_activity = t[j].last_activity_ms;
                    pthread_mutex_unlock(&tk[j]->lock);
                }
            }
            nt = 0;
        }
    }
    for (size_t i = 0; i < n; i++) {
        stub_unref(st, list[i]);
    }
    free(list);
    /* Folding = opening: store_get_or_open folds the parked rows into the file. */
    for (int i = 0; i < nfold; i++) {
        struct sess *s = NULL;
        if (store_get_or_open(st, folds[i], 0, &s) == 0) {
            sess_put(s);
        }
    }
    free(folds);
}

/* ---- the spool at start and stop ---- */

struct recovered {
    int64_t *rowids;
    char (*ids)[65];
    size_t n, cap;
};

static void recover_row(void *ctx, int64_t rowid, const char *sid, int64_t seq)
{
    struct recovered *rv = ctx;
    (void)seq;
    if (rv->n == rv->cap) {
        rv->cap = rv->cap ? rv->cap * 2 : 256;
        rv->rowids = xrealloc(rv->rowids, rv->cap * sizeof(*rv->rowids));
        rv->ids = xrealloc(rv->ids, rv->cap * sizeof(*rv->ids));
    }
    rv->rowids[rv->n] = rowid;
    snprintf(rv->ids[rv->n], sizeof(rv->ids[0]), "%s", sid ? sid : "");
    rv->n++;
}

/* Rows left in the spool by the previous process (its stubs died with it): rebuild stubs
 * for them and fold each session at once, so every later park has an exact seq. */
int stubs_recover(struct store *st)
{
    struct recovered rv = {0};
    int rc = spool_scan(st->spool, recover_row, &rv);
    int nsess = 0, ngone = 0;
    if (rc || rv.n == 0) {
        goto out;
    }
    pthread_mutex_lock(&st->lock);
    for (size_t i = 0; i < rv.n; i++) {
        if (!util_valid_id(rv.ids[i])) {
            continue;
        }
        struct stub *k = stub_find(st, rv.ids[i]);
        if (!k) {
            k = stub_new(rv.ids[i]); /* taken: nothing parks before its fold */
            k->seq_unknown = 1;
            unsigned h = stub_hash(k->id);
            k->hnext = st->stubs[h];
            st->stubs[h] = k;
            st->nstubs++;
        }
        stub_add_row(k, rv.rowids[i]);
    }
    pthread_mutex_unlock(&st->lock);
    for (size_t i = 0; i < rv.n; i++) {
        int64_t *mine = NULL;
        int nmine = 0;
        pthread_mutex_lock(&st->lock);
        struct stub *k = stub_find(st, rv.ids[i]);
        if (k && k->seq_unknown && k->nrows) {
            mine = xmalloc((size_t)k->nrows * sizeof(*mine));
            memcpy(mine, k->rowids, (size_t)k->nrows * sizeof(*mine));
            nmine = k->nrows;
        }
        pthread_mutex_unlock(&st->lock);
        if (!mine) {
            continue; /* folded already, or not a valid id */
        }
        struct sess *s = NULL;
        int r = store_get_or_open(st, rv.ids[i], 0, &s);
        sess_put(s);
        if (r == ERR_NOT_FOUND) {
            spool_delete(st->spool, mine, nmine); /* its session was purged */
            ngone += nmine;
        } else if (r) {
            LOG_ERROR("store: spool: cannot fold session %s: %s (its %d rows stay parked)",
                      rv.ids[i], err_str(r), nmine);
        } else {
            nsess++;
        }
        free(mine);
    }
    /* Rows under an invalid id cannot belong to any session. */
    for (size_t i = 0; i < rv.n; i++) {
        if (!util_valid_id(rv.ids[i])) {
            spool_delete(st->spool, &rv.rowids[i], 1);
            ngone++;
        }
    }
    LOG_INFO("store: spool: %zu parked rows from the last run: folded into %d sessions, %d "
             "dropped (session gone)",
             rv.n, nsess, ngone);
out:
    free(rv.rowids);
    free(rv.ids);
    return rc;
}

/* Stop: wait for parkers still inside, write the stubs' registry columns, free them. */
void stubs_close(struct store *st)
{
    pthread_mutex_lock(&st->lock);
    for (;;) {
        int busy = 0;
        for (int h = 0; h < STUB_HASH && !busy; h++) {
            for (struct stub *k = st->stubs[h]; k && !busy; k = k->hnext) {
                busy = k->refs > 0;
            }
        }
        if (!busy) {
            break;
        }
        pthread_mutex_unlock(&st->lock);
        usleep(1000); /* rare: a request still parking while the server stops */
        pthread_mutex_lock(&st->lock);
    }
    pthread_mutex_unlock(&st->lock);
    if (st->reg) {
        stubs_flush(st, 0);
    }
    pthread_mutex_lock(&st->lock);
    for (int h = 0; h < STUB_HASH; h++) {
        while (st->stubs[h]) {
            struct stub *k = st->stubs[h];
            st->stubs[h] = k->hnext;
            stub_free(k);
        }
    }
    st->nstubs = 0;
    pthread_mutex_unlock(&st->lock);
}
