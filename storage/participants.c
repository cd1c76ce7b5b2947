/*
 * participants.c - the SQL of the `participants` table (see participants.h).
 *
 * Thread context: inside a session's group commit or read (its lock held).
 */
#include "storage/participants.h"

#include "common/err.h"
#include "storage/storage_int.h"
#include "storage/store.h"

/* Run an insert of (user_id, name, email, now) with the statement sql. */
static int put(struct sess_tx *tx, const char *sql, const char *user_id, const char *name,
               const char *email)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, sql);
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sql_bind_text_opt(st, 2, name);
    sql_bind_text_opt(st, 3, email);
    sqlite3_bind_int64(st, 4, sess_tx_now(tx));
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}

int participants_add_new(struct sess_tx *tx, const char *user_id, const char *name,
                         const char *email)
{
    return put(tx,
               "INSERT OR IGNORE INTO participants(user_id,name,email,joined_at) VALUES(?,?,?,?)",
               user_id, name, email);
}

int participants_upsert(struct sess_tx *tx, const char *user_id, const char *name,
                        const char *email)
{
    return put(tx,
               "INSERT INTO participants(user_id,name,email,joined_at) VALUES(?,?,?,?) "
               "ON CONFLICT(user_id) DO UPDATE SET name=coalesce(excluded.name,name),"
               "email=coalesce(excluded.email,email)",
               user_id, name, email);
}

int participants_join(struct sess_tx *tx, const char *user_id, const char *name, const char *email)
{
    return put(tx,
               "INSERT INTO participants(user_id,name,email,joined_at,last_seen) "
               "VALUES(?1,?2,?3,?4,?4) ON CONFLICT(user_id) DO UPDATE SET "
               "name=excluded.name,email=excluded.email,last_seen=excluded.last_seen",
               user_id, name, email);
}

int participants_seen(struct sess_tx *tx, const char *user_id)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "UPDATE participants SET last_seen=? WHERE user_id=?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_int64(st, 1, sess_tx_now(tx));
    sqlite3_bind_text(st, 2, user_id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}

int participants_remove(struct sess_tx *tx, const char *user_id, int *removed)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "DELETE FROM participants WHERE user_id=?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        return ERR_DB;
    }
    if (removed) {
        *removed = sqlite3_changes(sess_tx_db(tx)) > 0;
    }
    return 0;
}

static int64_t ms_or_none(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, i);
}

int participants_list(struct sess_rd *rd, participants_row_fn fn, void *ctx)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT user_id,name,email,joined_at,last_seen FROM "
                                           "participants ORDER BY joined_at, user_id");
    if (!st) {
        return ERR_DB;
    }
    int r, rc = 0;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        struct participant_row p = {
            .user_id = (const char *)sqlite3_column_text(st, 0),
            .name = (const char *)sqlite3_column_text(st, 1),
            .email = (const char *)sqlite3_column_text(st, 2),
            .joined_at = ms_or_none(st, 3),
            .last_seen = ms_or_none(st, 4),
        };
        rc = fn(ctx, &p);
    }
    if (!rc && r != SQLITE_DONE) {
        rc = ERR_DB;
    }
    sqlite3_reset(st);
    return rc;
}
