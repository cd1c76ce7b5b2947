/*
 * artifacts.c - the SQL of the `artifacts` table (see artifacts.h).
 *
 * Thread context: inside a session's group commit or read (its lock held).
 */
#include "storage/artifacts.h"

#include "common/buf.h"
#include "common/err.h"
#include "storage/storage_int.h"
#include "storage/store.h"

#include <stdio.h>

int artifacts_insert(struct sess_tx *tx, const struct artifact_row *a)
{
    sqlite3_stmt *st = sess_tx_prepare(
        tx, "INSERT INTO artifacts(id,type,path,mime,content,size,author_id,created_at) "
            "VALUES(?,?,?,?,?,?,?,?)");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->type, -1, SQLITE_STATIC);
    sql_bind_text_opt(st, 3, a->path);
    sqlite3_bind_text(st, 4, a->mime, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 5, a->data ? a->data : "", a->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)a->len);
    sql_bind_text_opt(st, 7, a->author_id);
    sqlite3_bind_int64(st, 8, sess_tx_now(tx));
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}

int artifacts_list(struct sess_rd *rd, artifacts_row_fn fn, void *ctx)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT id,type,path,mime,size,author_id,created_at "
                                           "FROM artifacts ORDER BY created_at, rowid");
    if (!st) {
        return ERR_DB;
    }
    int r, rc = 0;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        struct artifact_row a = {
            .id = (const char *)sqlite3_column_text(st, 0),
            .type = (const char *)sqlite3_column_text(st, 1),
            .path = (const char *)sqlite3_column_text(st, 2),
            .mime = (const char *)sqlite3_column_text(st, 3),
            .len = (size_t)sqlite3_column_int64(st, 4),
            .author_id = (const char *)sqlite3_column_text(st, 5),
            .created_at = sqlite3_column_int64(st, 6),
        };
        rc = fn(ctx, &a);
    }
    if (!rc && r != SQLITE_DONE) {
        rc = ERR_DB;
    }
    sqlite3_reset(st);
    return rc;
}

int artifacts_get(struct sess_rd *rd, const char *id, struct buf *data, char *mime, size_t mimecap)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT mime, content FROM artifacts WHERE id=?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = 0;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        snprintf(mime, mimecap, "%s", (const char *)sqlite3_column_text(st, 0));
        const void *p = sqlite3_column_blob(st, 1);
        int n = sqlite3_column_bytes(st, 1);
        rc = buf_append(data, p ? p : "", (size_t)n);
    } else {
        rc = r == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
    }
    sqlite3_reset(st);
    return rc;
}
