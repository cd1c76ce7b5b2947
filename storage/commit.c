/*
 * commit.c - the group commit of a session: sess_write queues an operation, whoever holds
 * s->lock commits every queued one in one transaction, assigns seq inside it (restored if the
 * batch fails, so there is never a gap), then publishes the batch's events (on_event). Also
 * the statement cache and the handles an operation is given (sess_tx, sess_rd). Lock order and
 * the reasoning behind the batch: the comment at the top of store.c.
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

const char *sess_id(const struct sess *s)
{
    return s->id;
}

int64_t sess_last_seq(struct sess *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t v = s->last_seq;
    pthread_mutex_unlock(&s->lock);
    return v;
}

sqlite3 *sess_tx_db(struct sess_tx *tx)
{
    return tx->s->db;
}

int64_t sess_tx_now(struct sess_tx *tx)
{
    return tx->now;
}

sqlite3_stmt *sess_stmt_cached(struct sess *s, const char *sql)
{
    for (int i = 0; i < s->nstmts; i++) {
        if (strcmp(s->stmts[i].sql, sql) == 0) {
            sqlite3_reset(s->stmts[i].stmt);
            sqlite3_clear_bindings(s->stmts[i].stmt);
            return s->stmts[i].stmt;
        }
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        LOG_ERROR("store: prepare failed: %s", sqlite3_errmsg(s->db));
        return NULL;
    }
    s->stmts = xrealloc(s->stmts, (size_t)(s->nstmts + 1) * sizeof(*s->stmts));
    s->stmts[s->nstmts].sql = xstrdup(sql); /* the caller's string may not be a literal */
    s->stmts[s->nstmts].stmt = st;
    s->nstmts++;
    return st;
}

sqlite3_stmt *sess_tx_prepare(struct sess_tx *tx, const char *sql)
{
    return sess_stmt_cached(tx->s, sql);
}

struct sess_rd *sess_tx_rd(struct sess_tx *tx)
{
    return &tx->rd;
}

sqlite3_stmt *sess_rd_prepare(struct sess_rd *rd, const char *sql)
{
    return sess_stmt_cached(rd->s, sql);
}

sqlite3 *sess_rd_db(struct sess_rd *rd)
{
    return rd->s->db;
}

int sess_tx_append(struct sess_tx *tx, const char *type, const struct author *a,
                   const char *data_json, int64_t *seq_out)
{
    struct sess *s = tx->s;
    const char *data = data_json && *data_json ? data_json : "{}";
    const char *aid = a ? a->id : NULL;
    const char *aname = a && a->id ? a->name : NULL;
    sqlite3_stmt *st = sess_stmt_cached(s, "INSERT INTO events(seq,type,data_json,author_id,"
                                           "author_name,created_at) VALUES(?,?,?,?,?,?)");
    if (!st) {
        return ERR_DB;
    }
    int64_t seq = s->last_seq + 1;
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, data, -1, SQLITE_STATIC);
    if (aid) {
        sqlite3_bind_text(st, 4, aid, -1, SQLITE_STATIC);
    }
    if (aname) {
        sqlite3_bind_text(st, 5, aname, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(st, 6, tx->now);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (r != SQLITE_DONE) {
        LOG_ERROR("store: %s: insert event: %s", s->id, sqlite3_errmsg(s->db));
        return ERR_DB;
    }
    size_t off = tx->events->len;
    int rc = event_serialize(tx->events, seq, type, tx->now, aid, aname, data);
    if (rc) {
        return rc;
    }
    if (tx->npubs == tx->cappubs) {
        tx->cappubs = tx->cappubs ? tx->cappubs * 2 : 16;
        tx->pubs = xrealloc(tx->pubs, tx->cappubs * sizeof(*tx->pubs));
    }
    tx->pubs[tx->npubs++] = (struct pub){seq, off, tx->events->len - off};
    s->last_seq = seq;
    if (seq_out) {
        *seq_out = seq;
    }
    return 0;
}

/* Run a cached transaction-control statement (BEGIN, SAVEPOINT, ...): parsing them for every
 * operation was a measurable share of a commit. */
/* The error of a failed write: a full volume is told apart (507: the client may retry later,
 * an operator must free space), everything else is ERR_DB. */
static int write_err(sqlite3 *db)
{
    return (sqlite3_errcode(db) & 0xff) == SQLITE_FULL ? ERR_NOSPACE : ERR_DB;
}

static int tx_ctl(struct sess *s, const char *sql)
{
    sqlite3_stmt *st = sess_stmt_cached(s, sql);
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        LOG_ERROR("store: %s: %s: %s", s->id, sql, sqlite3_errmsg(s->db));
        return write_err(s->db);
    }
    return 0;
}

/* Run one batch (s->lock held). Marks every operation done with its result. */
static void commit_batch(struct sess *s, struct pending *batch)
{
    struct sess_tx tx = {.rd = {s}, .s = s, .now = clock_now_ms(), .events = &s->batch};
    int64_t seq_before = s->last_seq;
    int commit_rc = 0;
    buf_reset(&s->batch);

    /* A batch of one operation needs no savepoint: if it fails, the whole transaction is
     * rolled back instead (two statements fewer per commit, and two fewer to prepare after
     * each wake-up, the common case when writes are spread over many sessions). */
    int single = batch && !batch->next;
    commit_rc = tx_ctl(s, "BEGIN IMMEDIATE");
    for (struct pending *p = batch; p && !commit_rc; p = p->next) {
        int64_t seq_op = s->last_seq;
        size_t npubs_op = tx.npubs;
        size_t len_op = s->batch.len;
        if (!single && tx_ctl(s, "SAVEPOINT op")) {
            p->rc = ERR_DB;
            continue;
        }
        p->rc = p->fn(&tx, p->arg);
        if (p->rc == ERR_DB) {
            p->rc = write_err(s->db); /* a statement that hit a full volume */
        }
        if (p->rc) {
            if (!single) {
                tx_ctl(s, "ROLLBACK TO op");
            }
            s->last_seq = seq_op;
            tx.npubs = npubs_op;
            s->batch.len = len_op;
        }
        if (!single) {
            tx_ctl(s, "RELEASE op");
        }
    }
    if (!commit_rc && single && batch->rc) {
        /* The only operation failed: undo it by rolling the transaction back; its own error
         * stays its result. */
        if (tx_ctl(s, "ROLLBACK")) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        }
    } else if (!commit_rc) {
        commit_rc = tx_ctl(s, "COMMIT");
    }
    if (commit_rc) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        s->last_seq = seq_before;
        for (struct pending *p = batch; p; p = p->next) {
            p->rc = commit_rc;
        }
    } else {
        if (tx.npubs) {
            s->last_activity = tx.now;
        }
        struct store *st = s->st;
        if (st->cfg.on_event) {
            for (size_t i = 0; i < tx.npubs; i++) {
                st->cfg.on_event(st->cfg.on_event_ctx, s->id, tx.pubs[i].seq,
                                 s->batch.data + tx.pubs[i].off, tx.pubs[i].len);
            }
        }
    }
    free(tx.pubs);
    int n = 0;
    pthread_mutex_lock(&s->qlock);
    for (struct pending *p = batch; p; p = p->next) {
        p->done = 1;
        n++;
    }
    pthread_mutex_unlock(&s->qlock);
    /* Atomics, not st->lock: the order is st->lock before s->lock, and we hold s->lock. */
    __atomic_fetch_add(&s->st->stats.commits, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&s->st->stats.ops, (uint64_t)n, __ATOMIC_RELAXED);
}

int sess_write(struct sess *s, sess_tx_fn fn, void *arg)
{
    struct pending me = {.fn = fn, .arg = arg};
    pthread_mutex_lock(&s->qlock);
    if (s->qtail) {
        s->qtail->next = &me;
    } else {
        s->qhead = &me;
    }
    s->qtail = &me;
    pthread_mutex_unlock(&s->qlock);

    pthread_mutex_lock(&s->lock);
    pthread_mutex_lock(&s->qlock);
    int done = me.done;
    struct pending *batch = NULL;
    if (!done) {
        batch = s->qhead;
        s->qhead = s->qtail = NULL;
    }
    pthread_mutex_unlock(&s->qlock);
    if (!done) {
        if (!s->db) {
            pthread_mutex_lock(&s->qlock);
            for (struct pending *p = batch; p; p = p->next) {
                p->rc = ERR_UNAVAILABLE;
                p->done = 1;
            }
            pthread_mutex_unlock(&s->qlock);
        } else {
            commit_batch(s, batch);
        }
    }
    pthread_mutex_unlock(&s->lock);
    /* me.done was set under qlock by whoever committed us; reading rc is safe now that we
     * have held s->lock after it. */
    return me.rc;
}

struct append_args {
    const char *type;
    const struct author *a;
    const char *data;
    int64_t seq;
};

static int append_op(struct sess_tx *tx, void *arg)
{
    struct append_args *aa = arg;
    return sess_tx_append(tx, aa->type, aa->a, aa->data, &aa->seq);
}

int sess_append(struct sess *s, const char *type, const struct author *a, const char *data_json,
                int64_t *seq_out)
{
    struct append_args aa = {type, a, data_json, 0};
    int rc = sess_write(s, append_op, &aa);
    if (!rc && seq_out) {
        *seq_out = aa.seq;
    }
    return rc;
}
