/*
 * messages.c - the SQL of the `messages` table (see messages.h). The statements come from the
 * session's statement cache: the insert is on the hot path of every POST …/messages.
 *
 * Thread context: inside a session's group commit or read (its lock held).
 */
#include "storage/messages.h"

#include "common/err.h"
#include "storage/storage_int.h"
#include "storage/store.h"

int messages_insert(struct sess_tx *tx, const struct message_row *m)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "INSERT INTO messages(id,role,content,author_id,"
                                           "author_name,author_email,context_json,seq,"
                                           "created_at) VALUES(?,?,?,?,?,?,?,?,?)");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->role, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, m->content, (int)m->content_len, SQLITE_STATIC);
    sql_bind_text_opt(st, 4, m->author_id);
    sql_bind_text_opt(st, 5, m->author_name);
    sql_bind_text_opt(st, 6, m->author_email);
    sql_bind_text_opt(st, 7, m->context_json);
    sqlite3_bind_int64(st, 8, m->seq);
    sqlite3_bind_int64(st, 9, sess_tx_now(tx));
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}

static const char *col(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* The messages_seq index (migration 0003) makes this paging O(log n). */
int messages_list(struct sess_rd *rd, int64_t after, int64_t limit, messages_row_fn fn, void *ctx)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT id,role,content,author_id,author_name,"
                                           "author_email,context_json,seq,created_at FROM "
                                           "messages WHERE seq>? ORDER BY seq LIMIT ?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_int64(st, 1, after);
    sqlite3_bind_int64(st, 2, limit);
    int r, rc = 0;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        struct message_row m = {
            .id = col(st, 0),
            .role = col(st, 1),
            .content = col(st, 2),
            .content_len = (size_t)sqlite3_column_bytes(st, 2),
            .author_id = col(st, 3),
            .author_name = col(st, 4),
            .author_email = col(st, 5),
            .context_json = col(st, 6),
            .seq = sqlite3_column_int64(st, 7),
            .created_at = sqlite3_column_int64(st, 8),
        };
        rc = fn(ctx, &m);
    }
    if (!rc && r != SQLITE_DONE) {
        rc = ERR_DB;
    }
    sqlite3_reset(st);
    return rc;
}

int messages_count(struct sess_rd *rd, int64_t *n)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT count(*) FROM messages");
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    *n = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return r == SQLITE_ROW ? 0 : ERR_DB;
}
