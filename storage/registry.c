/*
 * registry.c - registry.db: sessions index, users, tokens, membership, small key/value state.
 *
 * Thread safe: one connection (SQLITE_OPEN_NOMUTEX) guarded by r->lock; every public function
 * takes the lock for its whole duration. Hot statements (token lookup, touch) are prepared once.
 */
#include "storage/registry.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/migrate.h"
#include "storage/storage_int.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct registry {
    pthread_mutex_t lock;
    sqlite3 *db;
    sqlite3_stmt *auth_stmt;
    sqlite3_stmt *touch_stmt;
    sqlite3_stmt *access_stmt; /* every session request checks access: prepared once */
};

static int prep(struct registry *r, const char *sql, sqlite3_stmt **out)
{
    if (sqlite3_prepare_v2(r->db, sql, -1, out, NULL) != SQLITE_OK) {
        LOG_ERROR("registry: prepare: %s", sqlite3_errmsg(r->db));
        return ERR_DB;
    }
    return 0;
}

/* Run one write statement whose parameters are all text (NULL binds NULL), under the lock.
 * must_change: ERR_NOT_FOUND when it changed no row. */
static int exec_texts(struct registry *r, const char *sql, int n, const char *const *args,
                      int must_change)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&r->lock);
    int rc = prep(r, sql, &st);
    for (int i = 0; !rc && i < n; i++) {
        if (args[i]) {
            sqlite3_bind_text(st, i + 1, args[i], -1, SQLITE_TRANSIENT);
        } else {
            sqlite3_bind_null(st, i + 1);
        }
    }
    if (!rc) {
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    }
    if (!rc && must_change && sqlite3_changes(r->db) == 0) {
        rc = ERR_NOT_FOUND;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_open(const char *path, int durability_full, struct registry **out)
{
    struct registry *r = xcalloc(1, sizeof(*r));
    int rc = 0;
    *out = NULL;
    pthread_mutex_init(&r->lock, NULL);
    if (util_file_private(path) != 0) { /* 0600 for it and its -wal/-shm (SQLite copies it) */
        LOG_ERROR("registry: cannot create %s: %s", path, strerror(errno));
        rc = ERR_IO;
        goto out;
    }
    if (sqlite3_open_v2(path, &r->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        LOG_ERROR("registry: open %s: %s", path, r->db ? sqlite3_errmsg(r->db) : "no memory");
        rc = ERR_DB;
        goto out;
    }
    sqlite3_busy_timeout(r->db, 5000);
    const char *pragmas = durability_full ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                                            "PRAGMA foreign_keys=ON"
                                          : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                                            "PRAGMA foreign_keys=ON";
    if (sqlite3_exec(r->db, pragmas, NULL, NULL, NULL) != SQLITE_OK) {
        rc = ERR_DB;
        goto out;
    }
    rc = migrate_apply(r->db, migrations_registry, path);
    if (rc) {
        goto out;
    }
    rc = prep(r,
              "SELECT t.id, t.user_id, coalesce(u.name,''), coalesce(u.email,''), t.role, "
              "t.expires_at FROM tokens t LEFT JOIN users u ON u.id=t.user_id WHERE t.hash=?",
              &r->auth_stmt);
    if (!rc) {
        rc = prep(r, "UPDATE sessions SET last_seq=?, last_activity=? WHERE id=?", &r->touch_stmt);
    }
    if (!rc) {
        /* Prepared per request, under r->lock, it was a third of the server's CPU in a perf
         * profile of session requests (answered 404) and serialized every session request. */
        rc = prep(r,
                  "SELECT s.visibility, s.created_by, s.state, "
                  "(SELECT role FROM members m WHERE m.session_id=s.id AND m.user_id=?2) "
                  "FROM sessions s WHERE s.id=?1",
                  &r->access_stmt);
    }
    if (rc) {
        goto out;
    }
    *out = r;
    r = NULL;
out:
    if (rc == ERR_DB && r && r->db) {
        /* Not a database, or a damaged one: the caller refuses to start with the way out. */
        int ec = sqlite3_errcode(r->db) & 0xff;
        if (ec == SQLITE_CORRUPT || ec == SQLITE_NOTADB) {
            rc = ERR_CORRUPT;
        }
    }
    registry_close(r);
    return rc;
}

void registry_close(struct registry *r)
{
    if (!r) {
        return;
    }
    sqlite3_finalize(r->auth_stmt);
    sqlite3_finalize(r->touch_stmt);
    sqlite3_finalize(r->access_stmt);
    if (r->db) {
        sqlite3_close(r->db);
    }
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s) {
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

static json_t *col_json(sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_NULL:
        return json_null();
    case SQLITE_INTEGER:
        return json_integer(sqlite3_column_int64(st, i));
    default:
        return json_string((const char *)sqlite3_column_text(st, i));
    }
}

static json_t *ts_json(sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        return json_null();
    }
    char ts[32];
    clock_iso8601(sqlite3_column_int64(st, i), ts, sizeof(ts));
    return json_string(ts);
}

static int valid_role(const char *role)
{
    return role && (strcmp(role, "user") == 0 || strcmp(role, "viewer") == 0 ||
                    strcmp(role, "bot") == 0 || strcmp(role, "admin") == 0);
}

/* Insert or update the user row (r->lock held). Empty name/email keep existing values. */
static int upsert_user(struct registry *r, const char *user_id, const char *name, const char *email)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(r,
                  "INSERT INTO users(id,name,email,created_at) VALUES(?,?,?,?) "
                  "ON CONFLICT(id) DO UPDATE SET name=coalesce(nullif(excluded.name,''),name), "
                  "email=coalesce(nullif(excluded.email,''),email)",
                  &st);
    if (rc) {
        return rc;
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name ? name : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, email ? email : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, clock_now_ms());
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    sqlite3_finalize(st);
    return rc;
}

static int insert_token(struct registry *r, const char *id, const char *hash, const char *user_id,
                        const char *role, int64_t now, int64_t expires_at, const char *origin)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(r,
                  "INSERT INTO tokens(id,hash,user_id,role,created_at,expires_at,origin) "
                  "VALUES(?,?,?,?,?,?,?)",
                  &st);
    if (rc) {
        return rc;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, hash, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, user_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, role, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, now);
    if (expires_at > 0) {
        sqlite3_bind_int64(st, 6, expires_at);
    } else {
        sqlite3_bind_null(st, 6);
    }
    sqlite3_bind_text(st, 7, origin, -1, SQLITE_STATIC);
    int r2 = sqlite3_step(st);
    rc = r2 == SQLITE_DONE ? 0 : (r2 == SQLITE_CONSTRAINT ? ERR_CONFLICT : ERR_DB);
    sqlite3_finalize(st);
    return rc;
}

int registry_token_create(struct registry *r, const char *user_id, const char *name,
                          const char *email, const char *role, int64_t expires_at_ms, json_t **out)
{
    char secret[65], hash[65];
    char *id = NULL;
    char *token = NULL;
    int rc;
    *out = NULL;
    if (!user_id || !*user_id || strlen(user_id) > 150 || !valid_role(role)) {
        return ERR_INVALID;
    }
    util_random_hex(secret, 24);
    token = xasprintf("sk_%s", secret);
    util_sha256_hex(token, strlen(token), hash);
    id = util_new_id("tok_");
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&r->lock);
    sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    rc = upsert_user(r, user_id, name, email);
    if (!rc) {
        rc = insert_token(r, id, hash, user_id, role, now, expires_at_ms, "api");
    }
    sqlite3_exec(r->db, rc ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL);
    pthread_mutex_unlock(&r->lock);
    if (!rc) {
        char ts[32], ex[32];
        clock_iso8601(now, ts, sizeof(ts));
        clock_iso8601(expires_at_ms, ex, sizeof(ex));
        *out = json_pack("{s:s,s:s,s:s,s:s?,s:s?,s:s,s:s,s:o}", "id", id, "token", token, "user_id",
                         user_id, "name", name, "email", email, "role", role, "created_at", ts,
                         "expires_at", expires_at_ms > 0 ? json_string(ex) : json_null());
    }
    free(id);
    free(token);
    return rc;
}

int registry_token_ensure(struct registry *r, const char *secret, const char *user_id,
                          const char *role, char id_out[40])
{
    char hash[65];
    char *id = NULL;
    sqlite3_stmt *st = NULL;
    int rc;
    util_sha256_hex(secret, strlen(secret), hash);
    pthread_mutex_lock(&r->lock);
    rc = prep(r, "SELECT id FROM tokens WHERE hash=?", &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) {
        id = xstrdup((const char *)sqlite3_column_text(st, 0)); /* already there */
        goto out;
    }
    rc = upsert_user(r, user_id, "Administrator", "");
    if (!rc) {
        id = util_new_id("tok_");
        rc = insert_token(r, id, hash, user_id, role, clock_now_ms(), 0, "bootstrap");
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    if (!rc && id_out) {
        snprintf(id_out, 40, "%s", id);
    }
    free(id);
    return rc;
}

int registry_token_revoke_bootstrap(struct registry *r, const char *keep_id, json_t **revoked)
{
    sqlite3_stmt *st = NULL;
    json_t *ids = json_array();
    int rc, s;
    *revoked = NULL;
    pthread_mutex_lock(&r->lock);
    rc = prep(r, "DELETE FROM tokens WHERE origin='bootstrap' AND id!=?1 RETURNING id", &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_text(st, 1, keep_id, -1, SQLITE_TRANSIENT);
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        json_array_append_new(ids, json_string((const char *)sqlite3_column_text(st, 0)));
    }
    rc = s == SQLITE_DONE ? 0 : ERR_DB;
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    if (!rc) {
        *revoked = ids;
        ids = NULL;
    }
    json_decref(ids);
    return rc;
}

int registry_token_get(struct registry *r, const char *token_id, struct auth_info *out)
{
    sqlite3_stmt *st = NULL;
    int rc, s;
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              "SELECT t.id, t.user_id, coalesce(u.name,''), coalesce(u.email,''), t.role, "
              "t.expires_at FROM tokens t LEFT JOIN users u ON u.id=t.user_id WHERE t.id=?",
              &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_text(st, 1, token_id, -1, SQLITE_TRANSIENT);
    s = sqlite3_step(st);
    if (s != SQLITE_ROW) {
        rc = s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
        goto out;
    }
    if (sqlite3_column_type(st, 5) != SQLITE_NULL &&
        sqlite3_column_int64(st, 5) <= clock_now_ms()) {
        rc = ERR_AUTH;
        goto out;
    }
    if (out) {
        memset(out, 0, sizeof(*out));
        snprintf(out->token_id, sizeof(out->token_id), "%s", sqlite3_column_text(st, 0));
        snprintf(out->user_id, sizeof(out->user_id), "%s", sqlite3_column_text(st, 1));
        snprintf(out->name, sizeof(out->name), "%s", sqlite3_column_text(st, 2));
        snprintf(out->email, sizeof(out->email), "%s", sqlite3_column_text(st, 3));
        snprintf(out->role, sizeof(out->role), "%s", sqlite3_column_text(st, 4));
        out->expires_at_ms = sqlite3_column_int64(st, 5);
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_token_auth(struct registry *r, const char *secret, struct auth_info *out)
{
    char hash[65];
    int rc = ERR_AUTH;
    if (!secret || !*secret || strlen(secret) > 256) {
        return ERR_AUTH;
    }
    util_sha256_hex(secret, strlen(secret), hash);
    pthread_mutex_lock(&r->lock);
    sqlite3_stmt *st = r->auth_stmt;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        int expired = sqlite3_column_type(st, 5) != SQLITE_NULL &&
                      sqlite3_column_int64(st, 5) <= clock_now_ms();
        if (!expired) {
            memset(out, 0, sizeof(*out));
            snprintf(out->token_id, sizeof(out->token_id), "%s", sqlite3_column_text(st, 0));
            snprintf(out->user_id, sizeof(out->user_id), "%s", sqlite3_column_text(st, 1));
            snprintf(out->name, sizeof(out->name), "%s", sqlite3_column_text(st, 2));
            snprintf(out->email, sizeof(out->email), "%s", sqlite3_column_text(st, 3));
            snprintf(out->role, sizeof(out->role), "%s", sqlite3_column_text(st, 4));
            out->expires_at_ms = sqlite3_column_int64(st, 5); /* NULL reads as 0: never */
            rc = 0;
        }
    } else if (s != SQLITE_DONE) {
        rc = ERR_DB;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_token_list(struct registry *r, const char *user_id, json_t **out)
{
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    int rc;
    *out = NULL;
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              "SELECT t.id, t.user_id, u.name, u.email, t.role, t.created_at, t.expires_at "
              "FROM tokens t LEFT JOIN users u ON u.id=t.user_id "
              "WHERE (?1 IS NULL OR t.user_id=?1) ORDER BY t.created_at, t.id",
              &st);
    if (rc) {
        goto out;
    }
    bind_text_or_null(st, 1, user_id);
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        json_array_append_new(arr, json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "id", col_json(st, 0),
                                             "user_id", col_json(st, 1), "name", col_json(st, 2),
                                             "email", col_json(st, 3), "role", col_json(st, 4),
                                             "created_at", ts_json(st, 5), "expires_at",
                                             ts_json(st, 6)));
    }
    rc = s == SQLITE_DONE ? 0 : ERR_DB;
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    if (!rc) {
        *out = json_pack("{s:o}", "tokens", arr);
    } else {
        json_decref(arr);
    }
    return rc;
}

int registry_token_delete(struct registry *r, const char *token_id, const char *owner_user_id)
{
    const char *args[] = {token_id, owner_user_id};
    return exec_texts(r, "DELETE FROM tokens WHERE id=?1 AND (?2 IS NULL OR user_id=?2)", 2, args,
                      1);
}

/* ---- sessions ---- */

#define SESSION_COLS                                                                               \
    "s.id,s.title,s.repo,s.visibility,s.agent,s.state,s.created_by,s.created_at,s.last_seq,"       \
    "s.last_activity,p.number,p.url,p.state,p.draft,p.ci_state,p.head_sha,p.merged_at"
/* The session's pull request (prs_db.h) comes with its row: one indexed lookup per row, so the
 * sessions list shows it without a query per session. */
#define SESSION_FROM                                                                               \
    " FROM sessions s LEFT JOIN pull_requests p ON p.session_id = s.id AND p.number IS NOT NULL "

/* The pull request columns 10..16 of a SESSION_COLS row: {number,url,state,draft,ci_state,
 * head_sha,merged_at}, or null. */
static json_t *session_pr(sqlite3_stmt *st)
{
    if (sqlite3_column_type(st, 10) == SQLITE_NULL) {
        return json_null();
    }
    return json_pack("{s:I,s:o,s:o,s:b,s:o,s:o,s:o}", "number",
                     (json_int_t)sqlite3_column_int64(st, 10), "url", col_json(st, 11), "state",
                     col_json(st, 12), "draft", sqlite3_column_int(st, 13), "ci_state",
                     col_json(st, 14), "head_sha", col_json(st, 15), "merged_at", ts_json(st, 16));
}

static json_t *session_row(sqlite3_stmt *st)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "id", col_json(st, 0),
                     "title", col_json(st, 1), "repo", col_json(st, 2), "visibility",
                     col_json(st, 3), "agent", col_json(st, 4), "state", col_json(st, 5),
                     "created_by", col_json(st, 6), "created_at", ts_json(st, 7), "last_seq",
                     col_json(st, 8), "last_activity", ts_json(st, 9), "pr", session_pr(st));
}

/* (r->lock held) */
static int session_get_locked(struct registry *r, const char *id, json_t **out)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(r, "SELECT " SESSION_COLS SESSION_FROM "WHERE s.id=?", &st);
    if (rc) {
        return rc;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(st, 5);
        if (state && strcmp(state, "purged") == 0) {
            rc = ERR_GONE;
        } else if (out) {
            *out = session_row(st);
        }
    } else {
        rc = s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
    }
    sqlite3_finalize(st);
    return rc;
}

int registry_session_create(struct registry *r, const struct session_new *n, json_t **out)
{
    sqlite3_stmt *st = NULL;
    int rc;
    if (out) {
        *out = NULL;
    }
    if (!util_valid_id(n->id)) {
        return ERR_INVALID;
    }
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              "INSERT INTO sessions(id,title,repo,visibility,agent,state,created_by,created_at,"
              "last_activity) VALUES(?,?,?,?,?,'active',?,?,?)",
              &st);
    if (rc) {
        goto out;
    }
    int64_t now = clock_now_ms();
    sqlite3_bind_text(st, 1, n->id, -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 2, n->title);
    bind_text_or_null(st, 3, n->repo);
    sqlite3_bind_text(st, 4, n->visibility ? n->visibility : "org", -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 5, n->agent);
    bind_text_or_null(st, 6, n->created_by);
    sqlite3_bind_int64(st, 7, now);
    sqlite3_bind_int64(st, 8, now);
    int s = sqlite3_step(st);
    rc = s == SQLITE_DONE ? 0 : (s == SQLITE_CONSTRAINT ? ERR_CONFLICT : ERR_DB);
    if (!rc && out) {
        rc = session_get_locked(r, n->id, out);
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_session_get(struct registry *r, const char *id, json_t **out)
{
    *out = NULL;
    pthread_mutex_lock(&r->lock);
    int rc = session_get_locked(r, id, out);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_session_list(struct registry *r, const char *user_id, int is_admin, int limit,
                          const char *cursor, json_t **out)
{
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    int64_t cur_ts = INT64_MAX;
    const char *cur_id = "\x7f";
    char idbuf[80] = "";
    int rc;
    *out = NULL;
    if (limit <= 0 || limit > 200) {
        limit = 50;
    }
    if (cursor && *cursor) {
        /* The cursor is "<created_at>.<id>" of the last row of the previous page. */
        const char *dot = strchr(cursor, '.');
        char num[24];
        if (!dot || (size_t)(dot - cursor) >= sizeof(num) || !util_valid_id(dot + 1)) {
            json_decref(arr);
            return ERR_INVALID;
        }
        memcpy(num, cursor, (size_t)(dot - cursor));
        num[dot - cursor] = 0;
        if (util_parse_i64(num, &cur_ts)) {
            json_decref(arr);
            return ERR_INVALID;
        }
        snprintf(idbuf, sizeof(idbuf), "%s", dot + 1);
        cur_id = idbuf;
    }
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              "SELECT " SESSION_COLS SESSION_FROM "WHERE s.state!='purged' "
              "AND (s.created_at < ?1 OR (s.created_at = ?1 AND s.id < ?2)) "
              "AND (?3 OR s.visibility='org' OR s.created_by=?4 OR EXISTS (SELECT 1 FROM "
              "members m WHERE m.session_id=s.id AND m.user_id=?4)) "
              "ORDER BY s.created_at DESC, s.id DESC LIMIT ?5",
              &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_int64(st, 1, cur_ts);
    sqlite3_bind_text(st, 2, cur_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, is_admin ? 1 : 0);
    bind_text_or_null(st, 4, user_id);
    sqlite3_bind_int(st, 5, limit + 1);
    int s, n = 0;
    char next[128] = "";
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == limit) {
            break;
        }
        json_array_append_new(arr, session_row(st));
        snprintf(next, sizeof(next), "%lld.%s", (long long)sqlite3_column_int64(st, 7),
                 sqlite3_column_text(st, 0));
        n++;
    }
    rc = (s == SQLITE_DONE || s == SQLITE_ROW) ? 0 : ERR_DB;
    if (!rc) {
        *out = json_pack("{s:o,s:o}", "sessions", arr, "next_cursor",
                         s == SQLITE_ROW ? json_string(next) : json_null());
        arr = NULL;
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    json_decref(arr);
    return rc;
}

int registry_session_set_state(struct registry *r, const char *id, const char *state)
{
    const char *args[] = {state, id};
    return exec_texts(r, "UPDATE sessions SET state=? WHERE id=?", 2, args, 1);
}

int registry_session_touch(struct registry *r, const char *id, int64_t last_seq,
                           int64_t last_activity_ms)
{
    pthread_mutex_lock(&r->lock);
    sqlite3_stmt *st = r->touch_stmt;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, last_seq);
    sqlite3_bind_int64(st, 2, last_activity_ms);
    sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_session_touch_many(struct registry *r, const struct registry_touch *t, size_t n)
{
    int rc = 0;
    if (n == 0) {
        return 0;
    }
    pthread_mutex_lock(&r->lock);
    int in_tx = n > 1 && sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    sqlite3_stmt *st = r->touch_stmt;
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, t[i].last_seq);
        sqlite3_bind_int64(st, 2, t[i].last_activity_ms);
        sqlite3_bind_text(st, 3, t[i].id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = ERR_DB;
        }
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (in_tx && sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
        rc = ERR_DB;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_session_access(struct registry *r, const char *id, const struct auth_info *who,
                            const char **role_out)
{
    int rc = 0;
    *role_out = NULL;
    pthread_mutex_lock(&r->lock);
    sqlite3_stmt *st = r->access_stmt;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, who->user_id, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s != SQLITE_ROW) {
        rc = s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
        goto out;
    }
    const char *vis = (const char *)sqlite3_column_text(st, 0);
    const char *owner = (const char *)sqlite3_column_text(st, 1);
    const char *state = (const char *)sqlite3_column_text(st, 2);
    const char *member = (const char *)sqlite3_column_text(st, 3);
    int viewer_token = strcmp(who->role, "viewer") == 0;
    if (state && strcmp(state, "purged") == 0) {
        rc = ERR_GONE;
    } else if (strcmp(who->role, "admin") == 0 || (owner && strcmp(owner, who->user_id) == 0)) {
        *role_out = viewer_token ? "viewer" : "owner";
    } else if (member) {
        *role_out = (viewer_token || strcmp(member, "viewer") == 0) ? "viewer" : "writer";
    } else if (vis && strcmp(vis, "org") == 0) {
        *role_out = viewer_token ? "viewer" : "writer";
    }
out:
    sqlite3_reset(st);
    sqlite3_clear_bindings(st); /* the bound strings are the caller's */
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_member_add(struct registry *r, const char *session_id, const char *user_id,
                        const char *role)
{
    if (!role || (strcmp(role, "writer") != 0 && strcmp(role, "viewer") != 0) || !user_id ||
        !*user_id) {
        return ERR_INVALID;
    }
    const char *args[] = {session_id, user_id, role};
    return exec_texts(r,
                      "INSERT INTO members(session_id,user_id,role) VALUES(?,?,?) "
                      "ON CONFLICT(session_id,user_id) DO UPDATE SET role=excluded.role",
                      3, args, 0);
}

/* ---- key/value ---- */

int registry_kv_get(struct registry *r, const char *key, char **value_out)
{
    sqlite3_stmt *st = NULL;
    int rc;
    *value_out = NULL;
    pthread_mutex_lock(&r->lock);
    rc = prep(r, "SELECT value FROM kv WHERE key=?", &st);
    if (!rc) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            const char *v = (const char *)sqlite3_column_text(st, 0);
            *value_out = v ? xstrdup(v) : NULL;
            rc = v ? 0 : ERR_NOT_FOUND;
        } else {
            rc = s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static int kv_write(struct registry *r, const char *key, const char *value, int only_new,
                    int *inserted)
{
    sqlite3_stmt *st = NULL;
    int rc;
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              only_new ? "INSERT OR IGNORE INTO kv(key,value,updated_at) VALUES(?,?,?)"
                       : "INSERT INTO kv(key,value,updated_at) VALUES(?,?,?) ON CONFLICT(key) "
                         "DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
              &st);
    if (!rc) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
        bind_text_or_null(st, 2, value);
        sqlite3_bind_int64(st, 3, clock_now_ms());
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
        if (!rc && inserted) {
            *inserted = sqlite3_changes(r->db) > 0;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int registry_kv_put(struct registry *r, const char *key, const char *value)
{
    return kv_write(r, key, value, 0, NULL);
}

int registry_kv_put_new(struct registry *r, const char *key, const char *value, int *inserted)
{
    return kv_write(r, key, value, 1, inserted);
}

int registry_member_remove(struct registry *r, const char *session_id, const char *user_id)
{
    const char *args[] = {session_id, user_id};
    return exec_texts(r, "DELETE FROM members WHERE session_id=? AND user_id=?", 2, args, 1);
}

int registry_member_list(struct registry *r, const char *session_id, json_t **out)
{
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    int rc, s;
    *out = NULL;
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              "SELECT m.user_id, m.role, u.name, u.email FROM members m "
              "LEFT JOIN users u ON u.id=m.user_id WHERE m.session_id=? ORDER BY m.user_id",
              &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_text(st, 1, session_id, -1, SQLITE_TRANSIENT);
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        json_array_append_new(arr, json_pack("{s:o,s:o,s:o,s:o}", "user_id", col_json(st, 0),
                                             "role", col_json(st, 1), "name", col_json(st, 2),
                                             "email", col_json(st, 3)));
    }
    rc = s == SQLITE_DONE ? 0 : ERR_DB;
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    if (!rc) {
        *out = arr;
        arr = NULL;
    }
    json_decref(arr);
    return rc;
}

/* ---- audit log ---- */

int registry_audit_add(struct registry *r, const struct registry_audit *e)
{
    sqlite3_stmt *st = NULL;
    int rc;
    if (!e->action || !*e->action) {
        return ERR_INVALID;
    }
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              "INSERT INTO audit(at,actor_user_id,actor_token_id,action,target,detail_json,"
              "request_ip) VALUES(?,?,?,?,?,?,?)",
              &st);
    if (!rc) {
        sqlite3_bind_int64(st, 1, clock_now_ms());
        bind_text_or_null(st, 2, e->actor_user_id);
        bind_text_or_null(st, 3, e->actor_token_id);
        sqlite3_bind_text(st, 4, e->action, -1, SQLITE_STATIC);
        bind_text_or_null(st, 5, e->target);
        sqlite3_bind_text(st, 6, e->detail_json ? e->detail_json : "{}", -1, SQLITE_STATIC);
        bind_text_or_null(st, 7, e->request_ip);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static json_t *audit_row(sqlite3_stmt *st)
{
    const char *detail = (const char *)sqlite3_column_text(st, 6);
    json_t *d = detail ? json_loads(detail, 0, NULL) : NULL;
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "id", col_json(st, 0), "at",
                     ts_json(st, 1), "actor_user_id", col_json(st, 2), "actor_token_id",
                     col_json(st, 3), "action", col_json(st, 4), "target", col_json(st, 5),
                     "detail", d ? d : json_object(), "request_ip", col_json(st, 7));
}

int registry_audit_list(struct registry *r, const char *action, const char *user_id, int limit,
                        const char *cursor, json_t **out)
{
    sqlite3_stmt *st = NULL;
    json_t *arr = NULL;
    int64_t before = INT64_MAX;
    int rc, s, n = 0;
    *out = NULL;
    if (limit <= 0 || limit > 1000) {
        return ERR_INVALID;
    }
    /* The cursor is "a<id>" of the last entry of the previous page; the prefix lets the format
     * change without old cursors being read as something else. */
    if (cursor && (cursor[0] != 'a' || util_parse_i64(cursor + 1, &before) || before <= 0)) {
        return ERR_INVALID;
    }
    arr = json_array();
    pthread_mutex_lock(&r->lock);
    rc = prep(r,
              "SELECT id,at,actor_user_id,actor_token_id,action,target,detail_json,request_ip "
              "FROM audit WHERE id<?1 AND (?2 IS NULL OR action=?2) AND "
              "(?3 IS NULL OR actor_user_id=?3) ORDER BY id DESC LIMIT ?4",
              &st);
    if (rc) {
        goto out;
    }
    sqlite3_bind_int64(st, 1, before);
    bind_text_or_null(st, 2, action);
    bind_text_or_null(st, 3, user_id);
    sqlite3_bind_int(st, 4, limit + 1);
    int64_t last = 0;
    while ((s = sqlite3_step(st)) == SQLITE_ROW && n < limit) {
        json_array_append_new(arr, audit_row(st));
        last = sqlite3_column_int64(st, 0);
        n++;
    }
    rc = (s == SQLITE_DONE || s == SQLITE_ROW) ? 0 : ERR_DB;
    if (!rc) {
        int more = s == SQLITE_ROW;
        char next[32];
        snprintf(next, sizeof(next), "a%lld", (long long)last);
        *out = json_pack("{s:o,s:b,s:o}", "entries", arr, "has_more", more, "next_cursor",
                         more ? json_string(next) : json_null());
        arr = NULL;
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->lock);
    json_decref(arr);
    return rc;
}

sqlite3 *registry_db_lock(struct registry *r)
{
    pthread_mutex_lock(&r->lock);
    return r->db;
}

void registry_db_unlock(struct registry *r)
{
    pthread_mutex_unlock(&r->lock);
}
