/*
 * prs_db.c - the pull_requests table of registry.db (prs_db.h).
 *
 * Threads: like repos_db.c, the statements are prepared once on the registry's connection and
 * run under the registry's lock (storage_int.h), one short statement at a time; none is held
 * across anything slow. The state names live here and nowhere else.
 */
#include "storage/prs_db.h"

#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/xmem.h"
#include "storage/registry.h"
#include "storage/storage_int.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PR_COLS                                                                                    \
    "session_id,repo,number,url,api_url,node_id,state,draft,ci_state,head_sha,title,credentials,"  \
    "created_at,updated_at,merged_at,closed_at,failed_reason,files"

enum q {
    Q_GET,
    Q_ENSURE,
    Q_CREATED,
    Q_PUSHED,
    Q_DRAFT,
    Q_FILES,
    Q_FAILED,
    Q_CLEAR_FAILED,
    Q_STATE,
    Q_CI,
    Q_FIND_URL,
    Q_LIST_OPEN,
    Q_COUNTS,
    Q_COUNT
};

static const char *const sql_of[Q_COUNT] = {
    [Q_GET] = "SELECT " PR_COLS " FROM pull_requests WHERE session_id=?",
    [Q_ENSURE] = "INSERT OR IGNORE INTO pull_requests(session_id, repo) VALUES(?,?)",
    [Q_CREATED] = "UPDATE pull_requests SET number=?2, url=?3, api_url=?4, node_id=?5, "
                  "state='open', draft=?6, head_sha=?7, title=?8, credentials=?9, "
                  "created_at=?10, updated_at=?10, merged_at=NULL, closed_at=NULL, "
                  "failed_reason=NULL, failed_at=NULL WHERE session_id=?1",
    [Q_PUSHED] = "UPDATE pull_requests SET head_sha=?2, updated_at=?3 WHERE session_id=?1",
    [Q_DRAFT] = "UPDATE pull_requests SET draft=?2, updated_at=?3 WHERE session_id=?1",
    [Q_FILES] = "UPDATE pull_requests SET files=?2 WHERE session_id=?1",
    [Q_FAILED] = "UPDATE pull_requests SET failed_reason=?2, failed_at=?3 WHERE session_id=?1 "
                 "AND failed_reason IS NOT ?2",
    [Q_CLEAR_FAILED] = "UPDATE pull_requests SET failed_reason=NULL, failed_at=NULL "
                       "WHERE session_id=?1",
    [Q_STATE] = "UPDATE pull_requests SET state=?2, draft=CASE WHEN ?3 < 0 THEN draft ELSE ?3 END, "
                "merged_at=CASE WHEN ?2='merged' THEN coalesce(merged_at, ?4) ELSE merged_at END, "
                "closed_at=CASE WHEN ?2='closed' THEN coalesce(closed_at, ?4) "
                "WHEN ?2='open' THEN NULL ELSE closed_at END, updated_at=?4 "
                "WHERE session_id=?1 AND number IS NOT NULL",
    [Q_CI] = "UPDATE pull_requests SET ci_state=?2 WHERE session_id=?1 AND number IS NOT NULL "
             "AND ci_state IS NOT ?2",
    [Q_FIND_URL] = "SELECT session_id FROM pull_requests WHERE url=? LIMIT 1",
    [Q_LIST_OPEN] = "SELECT session_id, repo, number, url, api_url, head_sha FROM pull_requests "
                    "WHERE number IS NOT NULL AND state='open' ORDER BY created_at LIMIT ?",
    [Q_COUNTS] = "SELECT count(number), count(merged_at), "
                 "sum(CASE WHEN state='closed' THEN 1 ELSE 0 END) FROM pull_requests",
};

struct prs_db {
    struct registry *reg;
    sqlite3 *db;
    sqlite3_stmt *st[Q_COUNT]; /* guarded by the registry's lock */
};

static const char *const state_names[] = {
    [PR_OPEN] = "open", [PR_MERGED] = "merged", [PR_CLOSED] = "closed"};

const char *pr_state_name(enum pr_state s)
{
    return (unsigned)s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : NULL;
}

int pr_state_parse(const char *s, enum pr_state *out)
{
    for (size_t i = 0; s && i < sizeof(state_names) / sizeof(state_names[0]); i++) {
        if (strcmp(s, state_names[i]) == 0) {
            *out = (enum pr_state)i;
            return 0;
        }
    }
    return ERR_INVALID;
}

void prs_rec_clear(struct pr_rec *rec)
{
    if (rec) {
        json_decref(rec->files);
        rec->files = NULL;
    }
}

int prs_db_open(struct registry *reg, struct prs_db **out)
{
    struct prs_db *d = xcalloc(1, sizeof(*d));
    int rc = 0;
    *out = NULL;
    d->reg = reg;
    d->db = registry_db_lock(reg);
    for (int i = 0; i < Q_COUNT && rc == 0; i++) {
        if (sqlite3_prepare_v3(d->db, sql_of[i], -1, SQLITE_PREPARE_PERSISTENT, &d->st[i], NULL) !=
            SQLITE_OK) {
            LOG_ERROR("prs_db: prepare: %s", sqlite3_errmsg(d->db));
            rc = ERR_DB;
        }
    }
    registry_db_unlock(reg);
    if (rc != 0) {
        prs_db_close(d);
        return rc;
    }
    *out = d;
    return 0;
}

void prs_db_close(struct prs_db *d)
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

static sqlite3_stmt *begin(struct prs_db *d, enum q q)
{
    registry_db_lock(d->reg);
    return d->st[q];
}

static void end(struct prs_db *d, sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    registry_db_unlock(d->reg);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s && *s) {
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

static void copy_col(sqlite3_stmt *st, int i, char *dst, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(dst, n, "%s", t ? (const char *)t : "");
}

/* Step st (no row expected): 0 or ERR_DB (logged); *changes (may be NULL). Lock held. */
static int step_done(struct prs_db *d, sqlite3_stmt *st, int *changes)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    if (rc != 0) {
        LOG_ERROR("prs_db: %s", sqlite3_errmsg(d->db));
    }
    if (changes) {
        *changes = sqlite3_changes(d->db);
    }
    return rc;
}

/* The row of sid exists (with repo); lock held. */
static int ensure_locked(struct prs_db *d, const char *sid, const char *repo)
{
    sqlite3_stmt *st = d->st[Q_ENSURE];
    bind_text(st, 1, sid);
    bind_text(st, 2, repo ? repo : "");
    int rc = step_done(d, st, NULL);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int prs_db_get(struct prs_db *d, const char *sid, struct pr_rec *out)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *st = begin(d, Q_GET);
    bind_text(st, 1, sid);
    int s = sqlite3_step(st);
    int rc = s == SQLITE_ROW ? 0 : s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
    if (rc == 0) {
        char state[16];
        copy_col(st, 0, out->session_id, sizeof(out->session_id));
        copy_col(st, 1, out->repo, sizeof(out->repo));
        out->number = sqlite3_column_int64(st, 2);
        copy_col(st, 3, out->url, sizeof(out->url));
        copy_col(st, 4, out->api_url, sizeof(out->api_url));
        copy_col(st, 5, out->node_id, sizeof(out->node_id));
        copy_col(st, 6, state, sizeof(state));
        if (pr_state_parse(state, &out->state) != 0) {
            out->state = PR_OPEN;
        }
        out->draft = sqlite3_column_int(st, 7);
        copy_col(st, 8, out->ci_state, sizeof(out->ci_state));
        copy_col(st, 9, out->head_sha, sizeof(out->head_sha));
        copy_col(st, 10, out->title, sizeof(out->title));
        copy_col(st, 11, out->credentials, sizeof(out->credentials));
        out->created_at = sqlite3_column_int64(st, 12);
        out->updated_at = sqlite3_column_int64(st, 13);
        out->merged_at = sqlite3_column_int64(st, 14);
        out->closed_at = sqlite3_column_int64(st, 15);
        copy_col(st, 16, out->failed_reason, sizeof(out->failed_reason));
        const unsigned char *f = sqlite3_column_text(st, 17);
        out->files = f ? json_loads((const char *)f, 0, NULL) : NULL;
        if (!json_is_array(out->files)) {
            json_decref(out->files);
            out->files = json_array();
        }
    }
    end(d, st);
    return rc;
}

int prs_db_created(struct prs_db *d, const struct pr_rec *rec, int64_t now_ms)
{
    registry_db_lock(d->reg);
    int rc = ensure_locked(d, rec->session_id, rec->repo);
    registry_db_unlock(d->reg);
    if (rc != 0) {
        return rc;
    }
    sqlite3_stmt *st = begin(d, Q_CREATED);
    bind_text(st, 1, rec->session_id);
    sqlite3_bind_int64(st, 2, rec->number);
    bind_text(st, 3, rec->url);
    bind_text(st, 4, rec->api_url);
    bind_text(st, 5, rec->node_id);
    sqlite3_bind_int(st, 6, rec->draft ? 1 : 0);
    bind_text(st, 7, rec->head_sha);
    bind_text(st, 8, rec->title);
    bind_text(st, 9, rec->credentials);
    sqlite3_bind_int64(st, 10, now_ms);
    rc = step_done(d, st, NULL);
    end(d, st);
    return rc;
}

int prs_db_pushed(struct prs_db *d, const char *sid, const char *head, int64_t now_ms)
{
    sqlite3_stmt *st = begin(d, Q_PUSHED);
    bind_text(st, 1, sid);
    bind_text(st, 2, head);
    sqlite3_bind_int64(st, 3, now_ms);
    int rc = step_done(d, st, NULL);
    end(d, st);
    return rc;
}

int prs_db_set_draft(struct prs_db *d, const char *sid, int draft, int64_t now_ms)
{
    sqlite3_stmt *st = begin(d, Q_DRAFT);
    bind_text(st, 1, sid);
    sqlite3_bind_int(st, 2, draft ? 1 : 0);
    sqlite3_bind_int64(st, 3, now_ms);
    int rc = step_done(d, st, NULL);
    end(d, st);
    return rc;
}

int prs_db_add_files(struct prs_db *d, const char *sid, const char *repo, json_t *paths, size_t max,
                     int64_t now_ms)
{
    struct pr_rec cur;
    (void)now_ms;
    registry_db_lock(d->reg);
    int rc = ensure_locked(d, sid, repo);
    registry_db_unlock(d->reg);
    if (rc == 0) {
        rc = prs_db_get(d, sid, &cur);
    }
    if (rc != 0) {
        return rc;
    }
    /* one writer per session (the layer's per-session PR slot): read-modify-write is safe */
    size_t i, j;
    json_t *p, *have;
    json_array_foreach(paths, i, p)
    {
        int dup = 0;
        if (!json_is_string(p) || json_array_size(cur.files) >= max) {
            continue;
        }
        json_array_foreach(cur.files, j, have)
        {
            dup |= json_equal(have, p);
        }
        if (!dup) {
            json_array_append(cur.files, p);
        }
    }
    char *s = jx_dump(cur.files);
    prs_rec_clear(&cur);
    sqlite3_stmt *st = begin(d, Q_FILES);
    bind_text(st, 1, sid);
    bind_text(st, 2, s);
    rc = step_done(d, st, NULL);
    end(d, st);
    free(s);
    return rc;
}

int prs_db_failed(struct prs_db *d, const char *sid, const char *repo, const char *reason,
                  int64_t now_ms, int *first)
{
    int changes = 0;
    *first = 0;
    registry_db_lock(d->reg);
    int rc = ensure_locked(d, sid, repo);
    if (rc == 0) {
        sqlite3_stmt *st = d->st[Q_FAILED];
        bind_text(st, 1, sid);
        bind_text(st, 2, reason ? reason : "failed");
        sqlite3_bind_int64(st, 3, now_ms);
        rc = step_done(d, st, &changes);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    registry_db_unlock(d->reg);
    *first = rc == 0 && changes > 0;
    return rc;
}

int prs_db_clear_failed(struct prs_db *d, const char *sid)
{
    sqlite3_stmt *st = begin(d, Q_CLEAR_FAILED);
    bind_text(st, 1, sid);
    int rc = step_done(d, st, NULL);
    end(d, st);
    return rc;
}

int prs_db_update_state(struct prs_db *d, const char *sid, enum pr_state st_new, int draft,
                        int64_t at_ms, int *changed)
{
    struct pr_rec cur;
    *changed = 0;
    int rc = prs_db_get(d, sid, &cur);
    prs_rec_clear(&cur);
    if (rc == 0 && cur.number == 0) {
        rc = ERR_NOT_FOUND;
    }
    if (rc != 0) {
        return rc;
    }
    int changes = 0;
    sqlite3_stmt *st = begin(d, Q_STATE);
    bind_text(st, 1, sid);
    bind_text(st, 2, pr_state_name(st_new));
    sqlite3_bind_int(st, 3, draft < 0 ? -1 : draft ? 1 : 0);
    sqlite3_bind_int64(st, 4, at_ms);
    rc = step_done(d, st, &changes);
    end(d, st);
    *changed = rc == 0 && changes > 0 && cur.state != st_new;
    return rc;
}

int prs_db_set_ci(struct prs_db *d, const char *sid, const char *ci_state, int *changed)
{
    int changes = 0;
    sqlite3_stmt *st = begin(d, Q_CI);
    bind_text(st, 1, sid);
    bind_text(st, 2, ci_state);
    int rc = step_done(d, st, &changes);
    end(d, st);
    *changed = rc == 0 && changes > 0;
    return rc;
}

int prs_db_find_url(struct prs_db *d, const char *url, char *sid)
{
    sqlite3_stmt *st = begin(d, Q_FIND_URL);
    bind_text(st, 1, url);
    int rc = ERR_NOT_FOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        copy_col(st, 0, sid, 72);
        rc = 0;
    }
    end(d, st);
    return rc;
}

int prs_db_list_open(struct prs_db *d, int limit, json_t **out)
{
    json_t *arr = json_array();
    sqlite3_stmt *st = begin(d, Q_LIST_OPEN);
    sqlite3_bind_int(st, 1, limit > 0 ? limit : 100);
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        json_array_append_new(arr, json_pack("{s:s?, s:s?, s:I, s:s?, s:s?, s:s?}", "session_id",
                                             (const char *)sqlite3_column_text(st, 0), "repo",
                                             (const char *)sqlite3_column_text(st, 1), "number",
                                             (json_int_t)sqlite3_column_int64(st, 2), "url",
                                             (const char *)sqlite3_column_text(st, 3), "api_url",
                                             (const char *)sqlite3_column_text(st, 4), "head_sha",
                                             (const char *)sqlite3_column_text(st, 5)));
    }
    end(d, st);
    *out = arr;
    return s == SQLITE_DONE ? 0 : ERR_DB;
}

int prs_db_counts(struct prs_db *d, struct prs_counts *out)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *st = begin(d, Q_COUNTS);
    int rc = ERR_DB;
    if (sqlite3_step(st) == SQLITE_ROW) {
        out->created = sqlite3_column_int64(st, 0);
        out->merged = sqlite3_column_int64(st, 1);
        out->closed = sqlite3_column_int64(st, 2);
        rc = 0;
    }
    end(d, st);
    return rc;
}

json_t *prs_rec_json(const struct pr_rec *rec)
{
    if (!rec || rec->number <= 0) {
        return json_null();
    }
    json_t *j = json_pack(
        "{s:I, s:s, s:s, s:b, s:s?, s:s?, s:I}", "number", (json_int_t)rec->number, "url", rec->url,
        "state", pr_state_name(rec->state), "draft", rec->draft, "ci_state",
        rec->ci_state[0] ? rec->ci_state : NULL, "head_sha",
        rec->head_sha[0] ? rec->head_sha : NULL, "created_at", (json_int_t)rec->created_at);
    json_object_set_new(j, "merged_at",
                        rec->merged_at ? json_integer(rec->merged_at) : json_null());
    return j;
}
