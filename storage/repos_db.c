/*
 * repos_db.c - the repository tables of registry.db (repos, images, session_repos,
 * user_credentials) and the prompt read of a session file that a commit needs.
 *
 * Threads: the statements live on the registry's connection and run under the registry's lock
 * (storage_int.h): one connection per file, so a repository write never waits on SQLite's file
 * lock behind a token lookup. Each is prepared once at open (which also checks that the
 * migration ran) and reset after each use, lock held; none is held across anything slow.
 */
#include "storage/repos_db.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/registry.h"
#include "storage/storage_int.h"
#include "storage/store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPO_COLS                                                                                  \
    "name,url,default_branch,setup,hints,description,pool_size,image_interval_min,created_at,"     \
    "updated_at,egress,agent,pr"
#define IMAGE_COLS                                                                                 \
    "id,repo,state,step,commit_sha,snapshot_id,started_at,built_at,duration_ms,size_bytes,"        \
    "files,error,substr(log,-4000)"

enum q {
    Q_REPO_GET,
    Q_REPO_LIST,
    Q_REPO_INSERT,
    Q_REPO_UPDATE,
    Q_REPO_DELETE,
    Q_REPO_IMAGES_DELETED,
    Q_REPO_BY_URL,
    Q_IMAGE_NEW,
    Q_IMAGE_GET,
    Q_IMAGE_LIST,
    Q_IMAGE_LATEST,
    Q_IMAGE_LAST_START,
    Q_IMAGE_SET_STEP,
    Q_IMAGE_SET_COMMIT,
    Q_IMAGE_SET_STATE,
    Q_IMAGE_LOG,
    Q_IMAGE_READY,
    Q_IMAGE_FAILED,
    Q_IMAGE_BEYOND,
    Q_IMAGE_INTERRUPT,
    Q_SESSION_ADD,
    Q_SESSION_READY,
    Q_SESSION_GET,
    Q_SESSION_REPO,
    Q_SESSION_TURN,
    Q_SESSION_PUSHED,
    Q_SESSION_PR,
    Q_SESSION_DELETE,
    Q_CRED_PUT,
    Q_CRED_GET,
    Q_CRED_DELETE,
    Q_COUNT
};

static const char *const sql_of[Q_COUNT] = {
    [Q_REPO_GET] = "SELECT " REPO_COLS " FROM repos WHERE name=?",
    [Q_REPO_LIST] = "SELECT " REPO_COLS " FROM repos ORDER BY name",
    [Q_REPO_INSERT] = "INSERT INTO repos(url,default_branch,setup,hints,description,pool_size,"
                      "image_interval_min,updated_at,created_at,name,egress,agent,pr) "
                      "VALUES(?,?,?,?,?,?,?,?,?,?,?11,?12,?13)",
    [Q_REPO_UPDATE] = "UPDATE repos SET url=?,default_branch=?,setup=?,hints=?,description=?,"
                      "pool_size=?,image_interval_min=?,updated_at=?,egress=?11,agent=?12,pr=?13 "
                      "WHERE ?9 IS NOT NULL AND name=?10",
    [Q_REPO_DELETE] = "DELETE FROM repos WHERE name=?",
    [Q_REPO_IMAGES_DELETED] = "UPDATE images SET state='deleted' WHERE repo=?",
    [Q_REPO_BY_URL] = "SELECT name FROM repos WHERE url=? ORDER BY name LIMIT 1",
    [Q_IMAGE_NEW] = "INSERT INTO images(id, repo, state, step, started_at) SELECT ?, ?, "
                    "'building', 'queued', ? WHERE NOT EXISTS (SELECT 1 FROM images WHERE "
                    "repo=?2 AND state='building')",
    [Q_IMAGE_GET] = "SELECT " IMAGE_COLS " FROM images WHERE id=?",
    [Q_IMAGE_LIST] = "SELECT " IMAGE_COLS " FROM images WHERE repo=? AND state!='deleted' "
                     "ORDER BY started_at DESC, rowid DESC LIMIT 50",
    [Q_IMAGE_LATEST] = "SELECT id, snapshot_id, started_at FROM images WHERE repo=? AND "
                       "state='ready' ORDER BY started_at DESC, rowid DESC LIMIT 1",
    [Q_IMAGE_LAST_START] = "SELECT max(started_at) FROM images WHERE repo=?",
    [Q_IMAGE_SET_STEP] = "UPDATE images SET step=? WHERE id=?",
    [Q_IMAGE_SET_COMMIT] = "UPDATE images SET commit_sha=? WHERE id=?",
    [Q_IMAGE_SET_STATE] = "UPDATE images SET state=? WHERE id=?",
    [Q_IMAGE_LOG] = "UPDATE images SET log = CASE WHEN length(log) > ?3 THEN log ELSE log || ?1 "
                    "END WHERE id=?2",
    [Q_IMAGE_READY] = "UPDATE images SET state='ready', step=NULL, snapshot_id=?, built_at=?, "
                      "duration_ms=?, size_bytes=?, files=? WHERE id=?",
    [Q_IMAGE_FAILED] = "UPDATE images SET state='failed', error=?, duration_ms=?, built_at=? "
                       "WHERE id=?",
    [Q_IMAGE_BEYOND] = "SELECT id, snapshot_id FROM images WHERE repo=? AND state='ready' "
                       "ORDER BY started_at DESC, rowid DESC LIMIT ? OFFSET ?",
    [Q_IMAGE_INTERRUPT] = "UPDATE images SET state='failed', error=? WHERE state='building'",
    [Q_SESSION_ADD] = "INSERT OR IGNORE INTO session_repos(session_id, repo, branch, created_at) "
                      "VALUES(?,?,?,?)",
    [Q_SESSION_READY] = "UPDATE session_repos SET source=?, ready_ms=?, image_id=? "
                        "WHERE session_id=?",
    [Q_SESSION_GET] = "SELECT s.repo, s.branch, r.url, r.default_branch, s.source, s.ready_ms, "
                      "s.image_id, s.turn, s.pushed_sha, s.pr_url FROM session_repos s "
                      "LEFT JOIN repos r ON r.name = s.repo WHERE s.session_id=?",
    [Q_SESSION_REPO] = "SELECT repo FROM session_repos WHERE session_id=?",
    [Q_SESSION_TURN] = "UPDATE session_repos SET turn=turn+1 WHERE session_id=?",
    [Q_SESSION_PUSHED] = "UPDATE session_repos SET pushed_sha=? WHERE session_id=?",
    [Q_SESSION_PR] = "UPDATE session_repos SET pr_url=? WHERE session_id=?",
    [Q_SESSION_DELETE] = "DELETE FROM session_repos WHERE session_id=?",
    [Q_CRED_PUT] = "INSERT INTO user_credentials(user_id, provider, sealed, updated_at) "
                   "VALUES(?,?,?,?) ON CONFLICT(user_id, provider) DO UPDATE SET "
                   "sealed=excluded.sealed, updated_at=excluded.updated_at",
    [Q_CRED_GET] = "SELECT sealed FROM user_credentials WHERE user_id=? AND provider=?",
    [Q_CRED_DELETE] = "DELETE FROM user_credentials WHERE user_id=? AND provider=?",
};

struct repos_db {
    struct registry *reg;
    sqlite3 *db;               /* the registry's; used only under its lock */
    sqlite3_stmt *st[Q_COUNT]; /* guarded by the registry's lock */
};

int repos_db_open(struct registry *reg, struct repos_db **out)
{
    struct repos_db *d = xcalloc(1, sizeof(*d));
    int rc = 0;
    *out = NULL;
    d->reg = reg;
    d->db = registry_db_lock(reg);
    for (int i = 0; i < Q_COUNT && rc == 0; i++) {
        if (sqlite3_prepare_v3(d->db, sql_of[i], -1, SQLITE_PREPARE_PERSISTENT, &d->st[i], NULL) !=
            SQLITE_OK) {
            /* the migrations are applied by registry_open(): a missing table means they
             * did not run on this file */
            LOG_ERROR("repos_db: prepare: %s", sqlite3_errmsg(d->db));
            rc = ERR_DB;
        }
    }
    registry_db_unlock(reg);
    if (rc != 0) {
        repos_db_close(d);
        return rc;
    }
    *out = d;
    return 0;
}

void repos_db_close(struct repos_db *d)
{
    if (!d) {
        return;
    }
    registry_db_lock(d->reg);
    for (int i = 0; i < Q_COUNT; i++) {
        sqlite3_finalize(d->st[i]);
    }
    registry_db_unlock(d->reg);
    free(d);
}

/* Take the lock and hand out statement q, ready to bind. */
static sqlite3_stmt *begin(struct repos_db *d, enum q q)
{
    registry_db_lock(d->reg);
    return d->st[q];
}

/* Reset st (its text bindings may point at the caller's strings) and give the lock back. */
static void end(struct repos_db *d, sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    registry_db_unlock(d->reg);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s) {
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

static const char *col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? (const char *)t : NULL;
}

/* Step a statement that returns no row: 0, or ERR_DB (logged). *changes (may be NULL) = the
 * rows it changed. Lock held. */
static int step_done(struct repos_db *d, sqlite3_stmt *st, int *changes)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    if (rc != 0) {
        LOG_ERROR("repos_db: %s", sqlite3_errmsg(d->db));
    }
    if (changes) {
        *changes = sqlite3_changes(d->db);
    }
    return rc;
}

/* One statement with text bindings args[0..n-1]. */
static int exec_text(struct repos_db *d, enum q q, int n, const char *const *args, int *changes)
{
    sqlite3_stmt *st = begin(d, q);
    for (int i = 0; i < n; i++) {
        bind_text(st, i + 1, args[i]);
    }
    int rc = step_done(d, st, changes);
    end(d, st);
    return rc;
}

/* ---------------------------------------------------------------- repos */

static json_t *json_or_empty_array(const char *s)
{
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    if (!json_is_array(j)) {
        json_decref(j);
        j = json_array();
    }
    return j;
}

static json_t *repo_row_json(sqlite3_stmt *st)
{
    const char *agent = col_text(st, 11);
    return json_pack(
        "{s:s, s:s, s:s, s:o, s:o, s:s, s:I, s:I, s:I, s:I, s:o, s:s?, s:s}", "name",
        col_text(st, 0), "url", col_text(st, 1), "default_branch", col_text(st, 2), "setup",
        json_or_empty_array(col_text(st, 3)), "hints", json_or_empty_array(col_text(st, 4)),
        "description", col_text(st, 5) ? col_text(st, 5) : "", "pool_size",
        (json_int_t)sqlite3_column_int64(st, 6), "image_interval_min",
        (json_int_t)sqlite3_column_int64(st, 7), "created_at",
        (json_int_t)sqlite3_column_int64(st, 8), "updated_at",
        (json_int_t)sqlite3_column_int64(st, 9), "egress", json_or_empty_array(col_text(st, 10)),
        "agent", agent && *agent ? agent : NULL, "pr", col_text(st, 12) ? col_text(st, 12) : "off");
}

int repos_db_repo_get(struct repos_db *d, const char *name, json_t **out)
{
    *out = NULL;
    sqlite3_stmt *st = begin(d, Q_REPO_GET);
    bind_text(st, 1, name);
    int s = sqlite3_step(st);
    int rc = 0;
    if (s == SQLITE_ROW) {
        *out = repo_row_json(st);
    } else {
        rc = s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
    }
    end(d, st);
    return rc;
}

int repos_db_repo_list(struct repos_db *d, json_t **out)
{
    json_t *arr = json_array();
    int rc = 0;
    sqlite3_stmt *st = begin(d, Q_REPO_LIST);
    for (;;) {
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            json_array_append_new(arr, repo_row_json(st));
            continue;
        }
        rc = s == SQLITE_DONE ? 0 : ERR_DB;
        break;
    }
    end(d, st);
    if (rc != 0) {
        json_decref(arr);
        arr = NULL;
    }
    *out = arr;
    return rc;
}

int repos_db_repo_put(struct repos_db *d, json_t *j, int create, int64_t now_ms)
{
    char *setup = jx_dump(json_object_get(j, "setup"));
    char *hints = jx_dump(json_object_get(j, "hints"));
    json_t *eg = json_object_get(j, "egress");
    json_t *none = json_array();
    char *egress = jx_dump(json_is_array(eg) ? eg : none);
    json_decref(none);
    const char *agent = json_string_value(json_object_get(j, "agent"));
    int rc = 0;
    sqlite3_stmt *st = begin(d, create ? Q_REPO_INSERT : Q_REPO_UPDATE);
    bind_text(st, 1, json_string_value(json_object_get(j, "url")));
    bind_text(st, 2, json_string_value(json_object_get(j, "default_branch")));
    bind_text(st, 3, setup);
    bind_text(st, 4, hints);
    bind_text(st, 5, json_string_value(json_object_get(j, "description")));
    sqlite3_bind_int64(st, 6, json_integer_value(json_object_get(j, "pool_size")));
    sqlite3_bind_int64(st, 7, json_integer_value(json_object_get(j, "image_interval_min")));
    sqlite3_bind_int64(st, 8, now_ms);
    sqlite3_bind_int64(st, 9, now_ms);
    bind_text(st, 10, json_string_value(json_object_get(j, "name")));
    bind_text(st, 11, egress);
    bind_text(st, 12, agent ? agent : "");
    const char *pr = json_string_value(json_object_get(j, "pr"));
    bind_text(st, 13, pr ? pr : "off");
    int s = sqlite3_step(st);
    if (s == SQLITE_CONSTRAINT) {
        rc = ERR_CONFLICT;
    } else if (s != SQLITE_DONE) {
        LOG_ERROR("repos_db: store: %s", sqlite3_errmsg(d->db));
        rc = ERR_DB;
    } else if (!create && sqlite3_changes(d->db) == 0) {
        rc = ERR_NOT_FOUND;
    }
    end(d, st);
    free(setup);
    free(hints);
    free(egress);
    return rc;
}

int repos_db_repo_delete(struct repos_db *d, const char *name)
{
    const char *args[] = {name};
    int changes = 0;
    int rc = exec_text(d, Q_REPO_DELETE, 1, args, &changes);
    if (rc == 0 && changes == 0) {
        return ERR_NOT_FOUND;
    }
    if (rc == 0) {
        exec_text(d, Q_REPO_IMAGES_DELETED, 1, args, NULL);
    }
    return rc;
}

/* The first text column of the row q returns for key (two keys when key2 is non-NULL):
 * *out (caller frees). ERR_NOT_FOUND. */
static int text_of(struct repos_db *d, enum q q, const char *key, const char *key2, char **out)
{
    *out = NULL;
    sqlite3_stmt *st = begin(d, q);
    bind_text(st, 1, key);
    if (key2) {
        bind_text(st, 2, key2);
    }
    if (sqlite3_step(st) == SQLITE_ROW && col_text(st, 0)) {
        *out = xstrdup(col_text(st, 0));
    }
    end(d, st);
    return *out ? 0 : ERR_NOT_FOUND;
}

int repos_db_repo_by_url(struct repos_db *d, const char *url, char **name)
{
    return text_of(d, Q_REPO_BY_URL, url, NULL, name);
}

/* ---------------------------------------------------------------- images */

static json_t *image_row_json(sqlite3_stmt *st)
{
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:I}", "id", col_text(st, 0), "repo", col_text(st, 1), "state",
                  col_text(st, 2), "started_at", (json_int_t)sqlite3_column_int64(st, 6));
    static const char *const tnames[] = {NULL, NULL, NULL, "step", "commit_sha", "snapshot_id"};
    for (int i = 3; i <= 5; i++) {
        json_object_set_new(j, tnames[i],
                            col_text(st, i) ? json_string(col_text(st, i)) : json_null());
    }
    static const char *const inames[] = {"built_at", "duration_ms", "size_bytes", "files"};
    for (int i = 7; i <= 10; i++) {
        json_object_set_new(j, inames[i - 7],
                            sqlite3_column_type(st, i) == SQLITE_NULL
                                ? json_null()
                                : json_integer(sqlite3_column_int64(st, i)));
    }
    json_object_set_new(j, "error", col_text(st, 11) ? json_string(col_text(st, 11)) : json_null());
    const char *log = col_text(st, 12);
    struct buf b;
    buf_init(&b, 0);
    util_utf8_sanitize(log ? log : "", log ? strlen(log) : 0, &b);
    json_object_set_new(j, "log_tail", json_string(b.data ? b.data : ""));
    buf_free(&b);
    return j;
}

int repos_db_image_new(struct repos_db *d, const char *id, const char *repo, int64_t now_ms)
{
    int changes = 0;
    sqlite3_stmt *st = begin(d, Q_IMAGE_NEW);
    bind_text(st, 1, id);
    bind_text(st, 2, repo);
    sqlite3_bind_int64(st, 3, now_ms);
    int rc = step_done(d, st, &changes);
    end(d, st);
    return rc == 0 && changes == 0 ? ERR_CONFLICT : rc;
}

int repos_db_image_get(struct repos_db *d, const char *id, json_t **out)
{
    *out = NULL;
    sqlite3_stmt *st = begin(d, Q_IMAGE_GET);
    bind_text(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *out = image_row_json(st);
    }
    end(d, st);
    return *out ? 0 : ERR_NOT_FOUND;
}

int repos_db_image_list(struct repos_db *d, const char *repo, json_t **out)
{
    json_t *arr = json_array();
    sqlite3_stmt *st = begin(d, Q_IMAGE_LIST);
    bind_text(st, 1, repo);
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_array_append_new(arr, image_row_json(st));
    }
    end(d, st);
    *out = arr;
    return 0;
}

int repos_db_image_latest(struct repos_db *d, const char *repo, char *id, char *snap,
                          int64_t *started)
{
    int rc = 0;
    sqlite3_stmt *st = begin(d, Q_IMAGE_LATEST);
    bind_text(st, 1, repo);
    if (sqlite3_step(st) == SQLITE_ROW && col_text(st, 0) && col_text(st, 1)) {
        snprintf(id, 64, "%s", col_text(st, 0));
        snprintf(snap, 64, "%s", col_text(st, 1));
        if (started) {
            *started = sqlite3_column_int64(st, 2);
        }
    } else {
        rc = ERR_NOT_FOUND;
    }
    end(d, st);
    return rc;
}

int repos_db_image_last_start(struct repos_db *d, const char *repo, int64_t *started)
{
    *started = 0;
    sqlite3_stmt *st = begin(d, Q_IMAGE_LAST_START);
    bind_text(st, 1, repo);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *started = sqlite3_column_int64(st, 0);
    }
    end(d, st);
    return 0;
}

int repos_db_image_set(struct repos_db *d, const char *id, enum repos_db_image_col col,
                       const char *val)
{
    static const enum q qs[] = {[REPOS_DB_IMAGE_STEP] = Q_IMAGE_SET_STEP,
                                [REPOS_DB_IMAGE_COMMIT] = Q_IMAGE_SET_COMMIT,
                                [REPOS_DB_IMAGE_STATE] = Q_IMAGE_SET_STATE};
    const char *args[] = {val, id};
    return exec_text(d, qs[col], 2, args, NULL);
}

int repos_db_image_log(struct repos_db *d, const char *id, const char *text, size_t n, int64_t cap)
{
    sqlite3_stmt *st = begin(d, Q_IMAGE_LOG);
    sqlite3_bind_text(st, 1, text, (int)n, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, cap);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    end(d, st);
    return rc;
}

int repos_db_image_ready(struct repos_db *d, const char *id, const struct repos_db_built *b)
{
    sqlite3_stmt *st = begin(d, Q_IMAGE_READY);
    bind_text(st, 1, b->snapshot_id);
    sqlite3_bind_int64(st, 2, b->built_at);
    sqlite3_bind_int64(st, 3, b->duration_ms);
    sqlite3_bind_int64(st, 4, b->size_bytes);
    sqlite3_bind_int64(st, 5, b->files);
    bind_text(st, 6, id);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    end(d, st);
    return rc;
}

int repos_db_image_failed(struct repos_db *d, const char *id, const char *error,
                          int64_t duration_ms, int64_t built_at)
{
    sqlite3_stmt *st = begin(d, Q_IMAGE_FAILED);
    bind_text(st, 1, error);
    sqlite3_bind_int64(st, 2, duration_ms);
    sqlite3_bind_int64(st, 3, built_at);
    bind_text(st, 4, id);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    end(d, st);
    return rc;
}

int repos_db_image_beyond(struct repos_db *d, const char *repo, int keep, int max, char **ids,
                          char **snaps, int *n)
{
    *n = 0;
    sqlite3_stmt *st = begin(d, Q_IMAGE_BEYOND);
    bind_text(st, 1, repo);
    sqlite3_bind_int(st, 2, max);
    sqlite3_bind_int(st, 3, keep);
    while (*n < max && sqlite3_step(st) == SQLITE_ROW) {
        ids[*n] = xstrdup(col_text(st, 0));
        snaps[*n] = xstrdup(col_text(st, 1) ? col_text(st, 1) : "");
        (*n)++;
    }
    end(d, st);
    return 0;
}

int repos_db_image_interrupt(struct repos_db *d, const char *why)
{
    const char *args[] = {why};
    return exec_text(d, Q_IMAGE_INTERRUPT, 1, args, NULL);
}

/* ---------------------------------------------------------------- session_repos */

int repos_db_session_add(struct repos_db *d, const char *sid, const char *repo, const char *branch,
                         int64_t now_ms)
{
    sqlite3_stmt *st = begin(d, Q_SESSION_ADD);
    bind_text(st, 1, sid);
    bind_text(st, 2, repo);
    bind_text(st, 3, branch);
    sqlite3_bind_int64(st, 4, now_ms);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    end(d, st);
    return rc;
}

int repos_db_session_ready(struct repos_db *d, const char *sid, const char *source, int64_t ms,
                           const char *image_id)
{
    sqlite3_stmt *st = begin(d, Q_SESSION_READY);
    bind_text(st, 1, source);
    sqlite3_bind_int64(st, 2, ms);
    bind_text(st, 3, image_id);
    bind_text(st, 4, sid);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    end(d, st);
    return rc;
}

int repos_db_session_get(struct repos_db *d, const char *sid, json_t **out)
{
    static const char *const names[] = {"repo", "branch",   "url", "default_branch", "source",
                                        NULL,   "image_id", NULL,  "pushed_sha",     "pr_url"};
    *out = NULL;
    sqlite3_stmt *st = begin(d, Q_SESSION_GET);
    bind_text(st, 1, sid);
    if (sqlite3_step(st) == SQLITE_ROW) {
        json_t *j = json_object();
        for (int i = 0; i < 10; i++) {
            if (!names[i]) {
                continue;
            }
            json_object_set_new(j, names[i],
                                col_text(st, i) ? json_string(col_text(st, i)) : json_null());
        }
        json_object_set_new(j, "ready_ms", json_integer(sqlite3_column_int64(st, 5)));
        json_object_set_new(j, "turn", json_integer(sqlite3_column_int64(st, 7)));
        *out = j;
    }
    end(d, st);
    return *out ? 0 : ERR_NOT_FOUND;
}

int repos_db_session_repo(struct repos_db *d, const char *sid, char **repo)
{
    return text_of(d, Q_SESSION_REPO, sid, NULL, repo);
}

int repos_db_session_next_turn(struct repos_db *d, const char *sid)
{
    const char *args[] = {sid};
    return exec_text(d, Q_SESSION_TURN, 1, args, NULL);
}

int repos_db_session_set_pushed(struct repos_db *d, const char *sid, const char *sha)
{
    const char *args[] = {sha, sid};
    return exec_text(d, Q_SESSION_PUSHED, 2, args, NULL);
}

int repos_db_session_set_pr(struct repos_db *d, const char *sid, const char *url)
{
    const char *args[] = {url, sid};
    return exec_text(d, Q_SESSION_PR, 2, args, NULL);
}

int repos_db_session_delete(struct repos_db *d, const char *sid)
{
    const char *args[] = {sid};
    return exec_text(d, Q_SESSION_DELETE, 1, args, NULL);
}

/* ---------------------------------------------------------------- user_credentials */

int repos_db_cred_put(struct repos_db *d, const char *user_id, const char *provider,
                      const char *sealed, int64_t now_ms)
{
    sqlite3_stmt *st = begin(d, Q_CRED_PUT);
    bind_text(st, 1, user_id);
    bind_text(st, 2, provider);
    bind_text(st, 3, sealed);
    sqlite3_bind_int64(st, 4, now_ms);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    end(d, st);
    return rc;
}

int repos_db_cred_get(struct repos_db *d, const char *user_id, const char *provider, char **sealed)
{
    return text_of(d, Q_CRED_GET, user_id, provider, sealed);
}

int repos_db_cred_delete(struct repos_db *d, const char *user_id, const char *provider)
{
    const char *args[] = {user_id, provider};
    int changes = 0;
    int rc = exec_text(d, Q_CRED_DELETE, 2, args, &changes);
    return rc == 0 && changes == 0 ? ERR_NOT_FOUND : rc;
}

/* ---------------------------------------------------------------- a session file */

struct prompt_arg {
    const char *pid;
    struct repos_db_prompt *p;
};

static int read_prompt(sqlite3 *db, void *arg)
{
    struct prompt_arg *a = arg;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT p.author_id, coalesce(p.author_name, m.author_name), "
                           "coalesce(p.author_email, m.author_email), m.content FROM prompts p "
                           "LEFT JOIN messages m ON m.id = p.message_id WHERE p.id=?",
                           -1, &st, NULL) != SQLITE_OK) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, a->pid, -1, SQLITE_STATIC);
    int rc = ERR_NOT_FOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        char **fields[] = {&a->p->author_id, &a->p->author_name, &a->p->author_email,
                           &a->p->content};
        for (int i = 0; i < 4; i++) {
            const char *t = col_text(st, i);
            *fields[i] = t ? xstrdup(t) : NULL;
        }
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

int repos_db_prompt_read(struct sess *s, const char *pid, struct repos_db_prompt *out)
{
    struct prompt_arg a = {pid, out};
    memset(out, 0, sizeof(*out));
    return sess_read(s, read_prompt, &a);
}

void repos_db_prompt_free(struct repos_db_prompt *p)
{
    free(p->author_id);
    free(p->author_name);
    free(p->author_email);
    free(p->content);
    memset(p, 0, sizeof(*p));
}
