/*
 * meta.c - the SQL of the `meta` table's session state (see meta.h).
 *
 * Thread context: inside a session's group commit or read (its lock held).
 */
#include "storage/meta.h"

#include "common/err.h"
#include "common/xmem.h"
#include "storage/storage_int.h"
#include "storage/store.h"

#include <string.h>

int meta_ended(struct sess_rd *rd, int *ended)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT value FROM meta WHERE key='state'");
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    const unsigned char *v = r == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    *ended = v && strcmp((const char *)v, "ended") == 0;
    sqlite3_reset(st);
    return r == SQLITE_ROW || r == SQLITE_DONE ? 0 : ERR_DB;
}

static int exec_cached(struct sess_tx *tx, const char *sql)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, sql);
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}

int meta_set_ended(struct sess_tx *tx)
{
    return exec_cached(tx, "INSERT OR REPLACE INTO meta(key,value) VALUES('state','ended')");
}

int meta_clear_ended(struct sess_tx *tx)
{
    return exec_cached(tx, "DELETE FROM meta WHERE key='state'");
}

int meta_agent(struct sess_rd *rd, char **agent)
{
    *agent = NULL;
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT value FROM meta WHERE key='agent'");
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    const unsigned char *v = r == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    *agent = v ? xstrdup((const char *)v) : NULL;
    sqlite3_reset(st);
    return r == SQLITE_ROW || r == SQLITE_DONE ? 0 : ERR_DB;
}

int meta_output_bytes(struct sess_rd *rd, int64_t *n)
{
    sqlite3_stmt *st =
        sess_rd_prepare(rd, "SELECT CAST(value AS INTEGER) FROM meta WHERE key='output_bytes'");
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    *n = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return r == SQLITE_ROW || r == SQLITE_DONE ? 0 : ERR_DB;
}

int meta_add_output_bytes(struct sess_tx *tx, int64_t n)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "INSERT INTO meta(key, value) VALUES('output_bytes', ?) "
                                           "ON CONFLICT(key) DO UPDATE SET "
                                           "value = CAST(value AS INTEGER) + excluded.value");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_int64(st, 1, n);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}
