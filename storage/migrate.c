/*
 * migrate.c - apply the embedded schema migrations, tracked by PRAGMA user_version.
 *
 * Each migration runs in its own BEGIN IMMEDIATE transaction together with the user_version
 * bump, so a crash leaves the file at a whole version. Caller has exclusive use of db.
 */
#include "storage/migrate.h"

#include "common/err.h"
#include "common/log.h"

#include <stdio.h>

int migrate_latest(const struct migration *list)
{
    int v = 0;
    for (const struct migration *m = list; m->version; m++) {
        if (m->version > v) {
            v = m->version;
        }
    }
    return v;
}

static int user_version(sqlite3 *db, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = ERR_DB;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK) {
        goto out;
    }
    if (sqlite3_step(st) != SQLITE_ROW) {
        goto out;
    }
    *out = sqlite3_column_int(st, 0);
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

int migrate_apply(sqlite3 *db, const struct migration *list, const char *what)
{
    int cur = 0;
    int rc = user_version(db, &cur);
    if (rc) {
        return rc;
    }
    int latest = migrate_latest(list);
    if (cur > latest) {
        LOG_ERROR("migrate: %s has schema version %d, newer than this build's %d; refusing", what,
                  cur, latest);
        return ERR_NEWER;
    }
    for (const struct migration *m = list; m->version; m++) {
        if (m->version <= cur) {
            continue;
        }
        char *errmsg = NULL;
        char bump[64];
        snprintf(bump, sizeof(bump), "PRAGMA user_version=%d", m->version);
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &errmsg) != SQLITE_OK ||
            sqlite3_exec(db, m->sql, NULL, NULL, &errmsg) != SQLITE_OK ||
            sqlite3_exec(db, bump, NULL, NULL, &errmsg) != SQLITE_OK ||
            sqlite3_exec(db, "COMMIT", NULL, NULL, &errmsg) != SQLITE_OK) {
            LOG_ERROR("migrate: %s: migration %s failed: %s", what, m->name, errmsg ? errmsg : "?");
            sqlite3_free(errmsg);
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return ERR_DB;
        }
        if (cur > 0) {
            LOG_INFO("migrate: %s upgraded to schema %d (%s)", what, m->version, m->name);
        }
    }
    return 0;
}
