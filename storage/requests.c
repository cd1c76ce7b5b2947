/*
 * requests.c - the SQL of the `requests` table (see requests.h): idempotency records of
 * message posts, keyed by (user_id, client_request_id), with the request's fingerprint.
 *
 * Thread context: inside a session's group commit (its lock held).
 */
#include "storage/requests.h"

#include "common/err.h"
#include "common/xmem.h"
#include "storage/storage_int.h"
#include "storage/store.h"

#include <sqlite3.h>
#include <stdint.h>

int requests_tx_find(struct sess_tx *tx, const char *user_id, const char *key, char **fingerprint,
                     char **response)
{
    *fingerprint = NULL;
    *response = NULL;
    sqlite3_stmt *st = sess_tx_prepare(tx, "SELECT fingerprint, response_json FROM requests "
                                           "WHERE user_id=? AND client_request_id=?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    int rc = s == SQLITE_ROW ? 0 : s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
    if (s == SQLITE_ROW) {
        const char *fp = (const char *)sqlite3_column_text(st, 0);
        *fingerprint = fp ? xstrdup(fp) : NULL;
        *response = xstrdup((const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int requests_tx_insert(struct sess_tx *tx, const char *user_id, const char *key,
                       const char *fingerprint, const char *response, size_t response_len)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "INSERT INTO requests(user_id,client_request_id,"
                                           "fingerprint,response_json,created_at) "
                                           "VALUES(?,?,?,?,?)");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    if (fingerprint) {
        sqlite3_bind_text(st, 3, fingerprint, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 3);
    }
    sqlite3_bind_text(st, 4, response, (int)response_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, sess_tx_now(tx));
    int s = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return s == SQLITE_DONE ? 0 : ERR_DB;
}
