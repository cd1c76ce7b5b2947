/*
 * read.c - reads of a session under its lock: raw (sess_read), typed (sess_view) and the
 * events pager behind GET .../events and the WebSocket catch-up (sess_events).
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

int sess_read(struct sess *s, sess_read_fn fn, void *arg)
{
    pthread_mutex_lock(&s->lock);
    int rc = s->db ? fn(s->db, arg) : ERR_UNAVAILABLE;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int sess_view(struct sess *s, sess_view_fn fn, void *arg)
{
    struct sess_rd rd = {s};
    pthread_mutex_lock(&s->lock);
    int rc = s->db ? fn(&rd, arg) : ERR_UNAVAILABLE;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int sess_rd_max_seq(struct sess_rd *rd, int64_t *out)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT coalesce(max(seq),0) FROM events");
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    *out = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return r == SQLITE_ROW ? 0 : ERR_DB;
}

int sess_events(struct sess *s, int64_t after, int limit, struct buf *out, int *count,
                int64_t *last)
{
    int rc = 0;
    int n = 0;
    int64_t lastseq = after;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st = s->db
                           ? sess_stmt_cached(s, "SELECT seq,type,data_json,author_id,author_name,"
                                                 "created_at FROM events WHERE seq>? ORDER BY seq "
                                                 "LIMIT ?")
                           : NULL;
    if (!st) {
        rc = ERR_DB;
        goto out;
    }
    sqlite3_bind_int64(st, 1, after);
    sqlite3_bind_int(st, 2, limit);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (n > 0) {
            rc = buf_putc(out, ',');
            if (rc) {
                break;
            }
        }
        lastseq = sqlite3_column_int64(st, 0);
        rc = event_serialize(out, lastseq, (const char *)sqlite3_column_text(st, 1),
                             sqlite3_column_int64(st, 5), (const char *)sqlite3_column_text(st, 3),
                             (const char *)sqlite3_column_text(st, 4),
                             (const char *)sqlite3_column_text(st, 2));
        if (rc) {
            break;
        }
        n++;
    }
    if (!rc && r != SQLITE_DONE) {
        rc = ERR_DB;
    }
    sqlite3_reset(st);
out:
    pthread_mutex_unlock(&s->lock);
    if (count) {
        *count = n;
    }
    if (last) {
        *last = lastseq;
    }
    return rc;
}
