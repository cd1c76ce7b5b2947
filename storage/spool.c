/*
 * spool.c - the SQL of the spool of parked comments (see spool.h).
 */
#include "storage/spool.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"
#include "storage/storage_int.h"
#include "storage/store.h"

#include <stdlib.h>
#include <string.h>

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? xstrdup((const char *)t) : NULL;
}

int spool_tx_insert(struct sess_tx *tx, const char *session_id, int64_t seq,
                    const struct spool_msg *m, int64_t *rowid)
{
    sqlite3_stmt *st = sess_tx_prepare(
        tx, "INSERT INTO parked(session_id,seq,created_at,type,data_json,author_id,author_name,"
            "author_email,message_id,content,client_request_id,response_json,request_user,"
            "request_fingerprint) VALUES(?,?,?,'message',?,?,?,?,?,?,?,?,?,?)");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_int64(st, 3, sess_tx_now(tx));
    sqlite3_bind_text(st, 4, m->event_data, -1, SQLITE_STATIC);
    sql_bind_text_opt(st, 5, m->author->id);
    sql_bind_text_opt(st, 6, m->author->name);
    sql_bind_text_opt(st, 7, m->author->email);
    sqlite3_bind_text(st, 8, m->message_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, m->content, (int)m->content_len, SQLITE_STATIC);
    struct buf answer;
    buf_init(&answer, 0);
    sql_bind_text_opt(st, 10, m->crid);
    if (m->crid && m->answer) {
        if (m->answer(&answer, m, seq)) {
            buf_free(&answer);
            return ERR_NOMEM;
        }
        sqlite3_bind_text(st, 11, answer.data, (int)answer.len, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 11);
    }
    sql_bind_text_opt(st, 12, m->crid ? m->crid_user : NULL);
    sql_bind_text_opt(st, 13, m->crid ? m->crid_fingerprint : NULL);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    buf_free(&answer);
    if (r != SQLITE_DONE) {
        LOG_ERROR("spool: insert for %s: %s", session_id, sqlite3_errmsg(sess_tx_db(tx)));
        return ERR_DB;
    }
    *rowid = sqlite3_last_insert_rowid(sess_tx_db(tx));
    return 0;
}

void spool_rows_free(struct spool_row *rows, int n)
{
    for (int i = 0; rows && i < n; i++) {
        struct spool_row *r = &rows[i];
        free(r->session_id);
        free(r->type);
        free(r->data_json);
        free(r->author_id);
        free(r->author_name);
        free(r->author_email);
        free(r->message_id);
        free(r->content);
        free(r->crid);
        free(r->response_json);
        free(r->crid_user);
        free(r->crid_fingerprint);
    }
    free(rows);
}

struct fetch_args {
    const int64_t *rowids;
    int n;
    struct spool_row *rows;
    int nrows;
};

static int fetch_rd(sqlite3 *db, void *arg)
{
    struct fetch_args *fa = arg;
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT session_id,seq,created_at,type,data_json,author_id,author_name,"
                           "author_email,message_id,content,client_request_id,response_json,"
                           "request_user,request_fingerprint FROM parked WHERE rowid=?",
                           -1, &st, NULL) != SQLITE_OK) {
        LOG_ERROR("spool: prepare fetch: %s", sqlite3_errmsg(db));
        return ERR_DB;
    }
    fa->rows = xcalloc((size_t)(fa->n > 0 ? fa->n : 1), sizeof(*fa->rows));
    for (int i = 0; i < fa->n; i++) {
        sqlite3_bind_int64(st, 1, fa->rowids[i]);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            struct spool_row *row = &fa->rows[fa->nrows++];
            row->rowid = fa->rowids[i];
            row->session_id = col_dup(st, 0);
            row->seq = sqlite3_column_int64(st, 1);
            row->created_at = sqlite3_column_int64(st, 2);
            row->type = col_dup(st, 3);
            row->data_json = col_dup(st, 4);
            row->author_id = col_dup(st, 5);
            row->author_name = col_dup(st, 6);
            row->author_email = col_dup(st, 7);
            row->message_id = col_dup(st, 8);
            row->content = col_dup(st, 9);
            row->crid = col_dup(st, 10);
            row->response_json = col_dup(st, 11);
            row->crid_user = col_dup(st, 12);
            row->crid_fingerprint = col_dup(st, 13);
        } else if (r != SQLITE_DONE) {
            LOG_ERROR("spool: fetch: %s", sqlite3_errmsg(db));
            rc = ERR_DB;
            break;
        }
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return rc;
}

static int by_seq(const void *a, const void *b)
{
    const struct spool_row *x = a, *y = b;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

int spool_fetch(struct sess *spool, const int64_t *rowids, int n, struct spool_row **out, int *nout)
{
    struct fetch_args fa = {rowids, n, NULL, 0};
    int rc = sess_read(spool, fetch_rd, &fa);
    if (rc) {
        spool_rows_free(fa.rows, fa.nrows);
        *out = NULL;
        *nout = 0;
        return rc;
    }
    qsort(fa.rows, (size_t)fa.nrows, sizeof(*fa.rows), by_seq);
    *out = fa.rows;
    *nout = fa.nrows;
    return 0;
}

struct scan_args {
    spool_scan_fn fn;
    void *ctx;
};

static int scan_rd(sqlite3 *db, void *arg)
{
    struct scan_args *sa = arg;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT rowid,session_id,seq FROM parked ORDER BY rowid", -1, &st,
                           NULL) != SQLITE_OK) {
        return ERR_DB;
    }
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        sa->fn(sa->ctx, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
               sqlite3_column_int64(st, 2));
    }
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}

int spool_scan(struct sess *spool, spool_scan_fn fn, void *ctx)
{
    struct scan_args sa = {fn, ctx};
    return sess_read(spool, scan_rd, &sa);
}

struct del_args {
    const int64_t *rowids;
    int n;
};

static int delete_tx(struct sess_tx *tx, void *arg)
{
    struct del_args *da = arg;
    sqlite3_stmt *st = sess_tx_prepare(tx, "DELETE FROM parked WHERE rowid=?");
    if (!st) {
        return ERR_DB;
    }
    for (int i = 0; i < da->n; i++) {
        sqlite3_bind_int64(st, 1, da->rowids[i]);
        int r = sqlite3_step(st);
        sqlite3_reset(st);
        if (r != SQLITE_DONE) {
            return ERR_DB;
        }
    }
    return 0;
}

int spool_delete(struct sess *spool, const int64_t *rowids, int n)
{
    struct del_args da = {rowids, n};
    return n > 0 ? sess_write(spool, delete_tx, &da) : 0;
}

/* ---- folding into a session file ---- */

static int step_done(sqlite3 *db, sqlite3_stmt *st, const char *what)
{
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (r != SQLITE_DONE) {
        LOG_ERROR("spool: fold: %s: %s", what, sqlite3_errmsg(db));
        return ERR_DB;
    }
    return 0;
}

int spool_apply(sqlite3 *db, const struct spool_row *rows, int n, int64_t last_seq,
                int64_t *new_last, int64_t *new_ts)
{
    static const char *sql[3] = {
        "INSERT INTO events(seq,type,data_json,author_id,author_name,created_at) "
        "VALUES(?,?,?,?,?,?)",
        "INSERT INTO messages(id,role,content,author_id,author_name,author_email,context_json,"
        "seq,created_at) VALUES(?,'user',?,?,?,?,NULL,?,?)",
        "INSERT OR IGNORE INTO requests(user_id,client_request_id,fingerprint,response_json,"
        "created_at) VALUES(?,?,?,?,?)"};
    sqlite3_stmt *st[3] = {NULL, NULL, NULL};
    int64_t last = last_seq, ts = 0;
    int rc = 0, began = 0;
    for (int i = 0; i < 3; i++) {
        if (sqlite3_prepare_v2(db, sql[i], -1, &st[i], NULL) != SQLITE_OK) {
            LOG_ERROR("spool: fold: prepare: %s", sqlite3_errmsg(db));
            rc = ERR_DB;
            goto out;
        }
    }
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = ERR_DB;
        goto out;
    }
    began = 1;
    for (int i = 0; i < n && !rc; i++) {
        const struct spool_row *r = &rows[i];
        if (r->seq <= last) {
            continue; /* folded before a crash cut the spool's delete short */
        }
        if (r->seq != last + 1) {
            /* Never expected (seq is assigned under the stub lock from the file's last seq):
             * refuse rather than leave a gap. */
            LOG_ERROR("spool: fold: row seq %lld after %lld: gap", (long long)r->seq,
                      (long long)last);
            rc = ERR_INTERNAL;
            break;
        }
        sqlite3_bind_int64(st[0], 1, r->seq);
        sqlite3_bind_text(st[0], 2, r->type, -1, SQLITE_STATIC);
        sqlite3_bind_text(st[0], 3, r->data_json, -1, SQLITE_STATIC);
        sql_bind_text_opt(st[0], 4, r->author_id);
        sql_bind_text_opt(st[0], 5, r->author_id ? r->author_name : NULL);
        sqlite3_bind_int64(st[0], 6, r->created_at);
        rc = step_done(db, st[0], "event");
        if (rc) {
            break;
        }
        sqlite3_bind_text(st[1], 1, r->message_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st[1], 2, r->content, -1, SQLITE_STATIC);
        sql_bind_text_opt(st[1], 3, r->author_id);
        sql_bind_text_opt(st[1], 4, r->author_name);
        sql_bind_text_opt(st[1], 5, r->author_email);
        sqlite3_bind_int64(st[1], 6, r->seq);
        sqlite3_bind_int64(st[1], 7, r->created_at);
        rc = step_done(db, st[1], "message");
        if (!rc && r->crid && r->response_json) {
            /* A row parked before keys had owners folds under '', which no user matches. */
            sqlite3_bind_text(st[2], 1, r->crid_user ? r->crid_user : "", -1, SQLITE_STATIC);
            sqlite3_bind_text(st[2], 2, r->crid, -1, SQLITE_STATIC);
            sql_bind_text_opt(st[2], 3, r->crid_fingerprint);
            sqlite3_bind_text(st[2], 4, r->response_json, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st[2], 5, r->created_at);
            rc = step_done(db, st[2], "request");
        }
        last = r->seq;
        ts = r->created_at;
    }
    if (!rc && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        LOG_ERROR("spool: fold: commit: %s", sqlite3_errmsg(db));
        rc = ERR_DB;
    }
out:
    if (rc && began) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    for (int i = 0; i < 3; i++) {
        sqlite3_finalize(st[i]);
    }
    if (!rc && last > last_seq) {
        *new_last = last;
        *new_ts = ts;
    }
    return rc;
}
