/*
 * secrets_db.c - the secrets table of registry.db and the re-sealing pass (secrets_db.h).
 *
 * Threads: any; each function prepares its statements on the registry's connection under the
 * registry's lock (storage_int.h) and finalizes them before giving the lock back. Secret
 * operations are rare (an admin call, a sandbox start, an exec), so no statement is cached.
 */
#include "storage/secrets_db.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"
#include "storage/registry.h"
#include "storage/storage_int.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

static const char *col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? (const char *)t : NULL;
}

/* Prepare sql on db (lock held); logs the error. */
static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        LOG_ERROR("secrets_db: prepare: %s", sqlite3_errmsg(db));
        return ERR_DB;
    }
    return 0;
}

int secrets_db_put(struct registry *reg, const char *repo, const char *name, const char *sealed,
                   const char *set_by, int64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db = registry_db_lock(reg);
    int rc = prepare(db,
                     "INSERT INTO secrets(repo, name, sealed, set_by, updated_at) "
                     "VALUES(?,?,?,?,?) ON CONFLICT(repo, name) DO UPDATE SET "
                     "sealed=excluded.sealed, set_by=excluded.set_by, "
                     "updated_at=excluded.updated_at",
                     &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, sealed, -1, SQLITE_STATIC);
    sql_bind_text_opt(st, 4, set_by);
    sqlite3_bind_int64(st, 5, now_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        LOG_ERROR("secrets_db: put: %s", sqlite3_errmsg(db));
        rc = ERR_DB;
    }
out:
    sqlite3_finalize(st);
    registry_db_unlock(reg);
    return rc;
}

int secrets_db_delete(struct registry *reg, const char *repo, const char *name)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db = registry_db_lock(reg);
    int rc = prepare(db, "DELETE FROM secrets WHERE repo=? AND name=?", &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = ERR_DB;
    } else if (sqlite3_changes(db) == 0) {
        rc = ERR_NOT_FOUND;
    }
out:
    sqlite3_finalize(st);
    registry_db_unlock(reg);
    return rc;
}

int secrets_db_list(struct registry *reg, const char *repo, json_t **out)
{
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    sqlite3 *db = registry_db_lock(reg);
    int rc =
        prepare(db, "SELECT name, updated_at, set_by FROM secrets WHERE repo=? ORDER BY name", &st);
    *out = NULL;
    if (rc) {
        goto out;
    }
    sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *row = json_pack("{s:s, s:I}", "name", col(st, 0), "updated_at",
                                (json_int_t)sqlite3_column_int64(st, 1));
        json_object_set_new(row, "set_by", col(st, 2) ? json_string(col(st, 2)) : json_null());
        json_array_append_new(arr, row);
    }
    rc = s == SQLITE_DONE ? 0 : ERR_DB;
out:
    sqlite3_finalize(st);
    registry_db_unlock(reg);
    if (rc == 0) {
        *out = arr;
        arr = NULL;
    }
    json_decref(arr);
    return rc;
}

int secrets_db_count(struct registry *reg, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db = registry_db_lock(reg);
    int rc = prepare(db, "SELECT count(*) FROM secrets", &st);
    *n = 0;
    if (rc == 0) {
        if (sqlite3_step(st) == SQLITE_ROW) {
            *n = sqlite3_column_int64(st, 0);
        } else {
            rc = ERR_DB;
        }
    }
    sqlite3_finalize(st);
    registry_db_unlock(reg);
    return rc;
}

struct row3 {
    char *repo, *name, *sealed;
};

static void rows_free(struct row3 *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].repo);
        free(rows[i].name);
        if (rows[i].sealed) {
            explicit_bzero(rows[i].sealed, strlen(rows[i].sealed));
            free(rows[i].sealed);
        }
    }
    free(rows);
}

int secrets_db_for_repo(struct registry *reg, const char *repo, secrets_db_row_fn fn, void *ctx)
{
    sqlite3_stmt *st = NULL;
    struct row3 *rows = NULL;
    size_t n = 0, cap = 0;
    sqlite3 *db = registry_db_lock(reg);
    /* The repository's rows sort first (repo != '' is 1 there), so a caller taking the first
     * of each name gets the repository's value over the global one. */
    int rc = prepare(db,
                     "SELECT repo, name, sealed FROM secrets WHERE repo='' OR repo=? "
                     "ORDER BY repo='' , name",
                     &st);
    if (rc) {
        registry_db_unlock(reg);
        goto out;
    }
    sqlite3_bind_text(st, 1, repo ? repo : "", -1, SQLITE_STATIC);
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            rows = xrealloc(rows, cap * sizeof(*rows));
        }
        rows[n].repo = xstrdup(col(st, 0));
        rows[n].name = xstrdup(col(st, 1));
        rows[n].sealed = xstrdup(col(st, 2));
        n++;
    }
    rc = s == SQLITE_DONE ? 0 : ERR_DB;
    sqlite3_finalize(st);
    registry_db_unlock(reg);
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = fn(ctx, rows[i].repo, rows[i].name, rows[i].sealed);
    }
out:
    rows_free(rows, n);
    return rc;
}

/* Re-seal every row of one table inside the open transaction (lock held). */
static int reseal_table(sqlite3 *db, const char *table, const char *sel, const char *upd,
                        secrets_db_reseal_fn fn, void *ctx, int *n)
{
    sqlite3_stmt *st = NULL, *up = NULL;
    int rc = prepare(db, sel, &st);
    if (rc || (rc = prepare(db, upd, &up))) {
        goto out;
    }
    int s;
    while (rc == 0 && (s = sqlite3_step(st)) == SQLITE_ROW) {
        char *fresh = NULL;
        rc = fn(ctx, table, col(st, 0), col(st, 1), col(st, 2), &fresh);
        if (rc) {
            break;
        }
        sqlite3_bind_text(up, 1, fresh, -1, SQLITE_STATIC);
        sqlite3_bind_text(up, 2, col(st, 0), -1, SQLITE_STATIC);
        sqlite3_bind_text(up, 3, col(st, 1), -1, SQLITE_STATIC);
        if (sqlite3_step(up) != SQLITE_DONE) {
            LOG_ERROR("secrets_db: reseal %s: %s", table, sqlite3_errmsg(db));
            rc = ERR_DB;
        }
        sqlite3_reset(up);
        sqlite3_clear_bindings(up);
        free(fresh);
        (*n)++;
    }
    if (rc == 0 && s != SQLITE_DONE) {
        rc = ERR_DB;
    }
out:
    sqlite3_finalize(st);
    sqlite3_finalize(up);
    return rc;
}

int secrets_db_reseal_all(struct registry *reg, secrets_db_reseal_fn fn, void *ctx, int *n)
{
    sqlite3 *db = registry_db_lock(reg);
    int rc = 0;
    *n = 0;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        LOG_ERROR("secrets_db: begin: %s", sqlite3_errmsg(db));
        registry_db_unlock(reg);
        return ERR_DB;
    }
    rc = reseal_table(db, "secrets", "SELECT repo, name, sealed FROM secrets",
                      "UPDATE secrets SET sealed=? WHERE repo=? AND name=?", fn, ctx, n);
    if (rc == 0) {
        rc = reseal_table(
            db, "user_credentials", "SELECT user_id, provider, sealed FROM user_credentials",
            "UPDATE user_credentials SET sealed=? WHERE user_id=? AND provider=?", fn, ctx, n);
    }
    if (rc == 0 && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        LOG_ERROR("secrets_db: commit: %s", sqlite3_errmsg(db));
        rc = ERR_DB;
    }
    if (rc != 0) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        *n = 0;
    }
    registry_db_unlock(reg);
    return rc;
}
