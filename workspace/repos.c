/*
 * repos.c - repository registry, images, warm pools, session workspaces, per-prompt commits
 * and snapshots (see repos.h for the layout and the contracts).
 *
 * Threads: r->db is one SQLite connection to registry.db guarded by r->dblock (statements
 * are short). r->lock guards the warm list, the build queue and the flags; it is never held
 * across file system or network work: entries are unlinked under the lock, then worked on.
 * The builder thread pops build jobs; the pool thread runs the schedule every tick_ms or when
 * kicked (repos_warm, a claim, a finished build).
 *
 * Invariant: a warm workspace belongs to exactly one of {the warm list, a top-up in progress,
 * a claim in progress}; only the owner touches its directory.
 */

#include "workspace/repos.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/egress/egress.h"
#include "workspace/git.h"
#include "workspace/gitjob.h"
#include "sandbox/sbx.h"
#include "workspace/snap/snap.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOG_CAP         (256 * 1024)
#define SETUP_OUT_CAP   (128 * 1024)
#define RESYNC_MS       60000
#define REFILL_DELAY_MS 250
#define CLAIM_RESYNC_MS 5000 /* a claimed warm workspace synced longer ago re-syncs */
#define SYNC_HOLD_MS    100  /* a background sync waits this long at most for sandbox.ready */

struct warm {
    struct warm *next;
    char *repo;
    char *dir;
    char *image_id;
    int64_t created_ms;
    int64_t synced_ms;
    char head[41];   /* the commit it is synced to */
    struct sbx *sbx; /* its sandbox, created ahead (through the runner's factory), or NULL */
    char *sbx_priv;  /* that sandbox's private dir (removed with an unclaimed one) */
};

/* A pre-created sandbox that came with a claimed warm workspace, until the runner takes it
 * (repos_hook_take_sandbox). In r->handoffs, guarded by r->lock. */
struct handoff {
    struct handoff *next;
    char sid[72];
    struct sbx *sbx;
};

/* The runner's sandbox factory (repos_hook_set_sandbox_factory): a sandbox dies with the
 * thread that created it (bubblewrap --die-with-parent), so the pool thread, which ends at
 * repos_close() while claimed sandboxes still run prompts, asks the runner's starter threads.
 * g_factory_mu is held across a call so that unregistering waits for it. */
static pthread_mutex_t g_factory_mu = PTHREAD_MUTEX_INITIALIZER;
static int (*g_factory)(void *arg, const struct sbx_spec *spec, struct sbx **out);
static void *g_factory_arg;

void repos_hook_set_sandbox_factory(int (*fn)(void *arg, const struct sbx_spec *spec,
                                              struct sbx **out),
                                    void *arg)
{
    pthread_mutex_lock(&g_factory_mu);
    g_factory = fn;
    g_factory_arg = arg;
    pthread_mutex_unlock(&g_factory_mu);
}

/* Destroy a sandbox made for the pool and its private dir + log (priv: taken over). */
static void pool_sbx_free(struct sbx *s, char *priv)
{
    sbx_destroy(s);
    if (priv) {
        char *log = xasprintf("%s.log", priv);
        util_rm_rf(priv);
        unlink(log);
        free(log);
        free(priv);
    }
}

struct job {
    struct job *next;
    char *repo;
    char *image_id;
};

struct repos {
    struct repos_config cfg;
    char *data_dir;
    char *abs_data_dir; /* realpath of data_dir: shared stores are named by absolute paths */
    char *ca_file;
    char *git_bin;         /* the sessiond-git helper */
    struct gitjob_cfg git; /* how workspace git operations run (gitjob.h); set at open */
    sqlite3 *db;
    pthread_mutex_t dblock;

    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t cond;
    struct warm *warm;
    struct job *jobs, *jobs_tail;
    char *building;        /* repo of the running build, or NULL */
    struct sbx *build_sbx; /* the sandbox of the running setup step, or NULL */
    int stopping;
    int kick;             /* pool thread: run a tick now */
    int64_t refill_at_ms; /* pool thread: run a tick then (after a claim); 0 = none */
    int64_t next_tick_ms; /* pool thread: the next scheduled tick */
    int pool_running;     /* a pool tick is in progress */
    pthread_cond_t pool_done;
    pthread_t builder, pooler;
    int threads;
    json_t *ready_src;      /* sid -> source of the last prepare, consumed by the ready event */
    json_t *preparing;      /* sids whose workspace a hook is filling now */
    pthread_cond_t prep_cv; /* signalled when one is done */
    int bg_snapshots;       /* background end-of-session snapshots running */
    /* Background workspace syncs (repos.h "The workspace sync") and prompt ends. */
    json_t *syncing;          /* sid -> true while its workspace sync runs */
    json_t *released;         /* sids whose sandbox.ready was built: their sync may start */
    json_t *ending;           /* sids whose prompt-end commit + snapshot runs now */
    struct handoff *handoffs; /* pre-created sandboxes of claimed warm workspaces */
    json_t *ready_src_sbx;    /* sids whose sandbox came from the pool, for sandbox.ready */
    pthread_cond_t sync_cv;   /* a sync or a prompt end finished, a release, or closing */
    int bg_syncs;             /* sync threads running (repos_close waits for them) */
    int closing;              /* repos_close started: waiters give up */
};

/* The instance the runner's hooks use (repos.h), and how many hooks are inside it:
 * repos_close() unpublishes it, then waits for the hooks to leave. Guarded by g_hook_mu. */
static pthread_mutex_t g_hook_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_hook_cv = PTHREAD_COND_INITIALIZER;
static struct repos *g_active;
static int g_hooks_in;

static struct repos *hook_enter(void)
{
    pthread_mutex_lock(&g_hook_mu);
    struct repos *r = g_active;
    if (r) {
        g_hooks_in++;
    }
    pthread_mutex_unlock(&g_hook_mu);
    return r;
}

static char *shared_for(struct repos *r, const char *name, const char *workspace);

static void hook_leave(void)
{
    pthread_mutex_lock(&g_hook_mu);
    g_hooks_in--;
    pthread_cond_broadcast(&g_hook_cv);
    pthread_mutex_unlock(&g_hook_mu);
}

/* ---------------------------------------------------------------- small helpers */

static int owner_of_sandboxes(struct repos *r, uid_t *uid, gid_t *gid)
{
    struct sbx_backend *b = r->cfg.sbx;
    if (!b || geteuid() != 0 || strcmp(sbx_backend_name(b), "local") != 0) {
        return 0;
    }
    if (b->cfg.uid > 0) {
        *uid = (uid_t)b->cfg.uid;
        *gid = (gid_t)b->cfg.uid;
        struct passwd pw, *pp = NULL;
        char tmp[1024];
        if (getpwuid_r(*uid, &pw, tmp, sizeof(tmp), &pp) == 0 && pp) {
            *gid = pp->pw_gid;
        }
        return 1;
    }
    struct passwd pw, *pp = NULL;
    char tmp[1024];
    const char *user = b->cfg.user ? b->cfg.user : "sessiond-sbx";
    if (getpwnam_r(user, &pw, tmp, sizeof(tmp), &pp) == 0 && pp && pp->pw_uid != 0) {
        *uid = pp->pw_uid;
        *gid = pp->pw_gid;
        return 1;
    }
    return 0;
}

/* Give a tree to the sandbox user (files we wrote as root: a clone, a restore, a checkout):
 * in the git helper (gitjob_chown), confined to that tree. */
static void chown_tree(struct repos *r, const char *dir)
{
    if (r->git.uid > 0) {
        gitjob_chown(&r->git, dir);
    }
}

static void set_msg(char *msg, size_t n, const char *fmt, const char *arg)
{
    if (msg && n) {
        snprintf(msg, n, fmt, arg);
    }
}

static int valid_branch_name(const char *b)
{
    size_t l = b ? strlen(b) : 0;
    if (l == 0 || l > 200 || b[0] == '/' || b[0] == '-' || b[l - 1] == '/' || b[l - 1] == '.' ||
        strstr(b, "..") || strstr(b, "//") || strstr(b, "@{") ||
        (l >= 5 && strcmp(b + l - 5, ".lock") == 0)) {
        return 0;
    }
    for (const char *p = b; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c == 0x7f || strchr("~^:?*[\\", c)) {
            return 0;
        }
    }
    return 1;
}

static int valid_url(const char *u)
{
    size_t l = u ? strlen(u) : 0;
    if (l == 0 || l > 2000) {
        return 0;
    }
    for (const char *p = u; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            return 0;
        }
    }
    return strncmp(u, "https://", 8) == 0 || strncmp(u, "http://", 7) == 0 ||
           strncmp(u, "file://", 7) == 0 || strncmp(u, "ssh://", 6) == 0 ||
           strncmp(u, "git@", 4) == 0 || u[0] == '/';
}

/* Append an event to a session (system author). Best effort: logged on failure. */
static void emit(struct repos *r, const char *sid, const char *type, json_t *data)
{
    struct sess *s = NULL;
    if (!r->cfg.store) {
        json_decref(data);
        return;
    }
    char *js = jx_dump(data);
    json_decref(data);
    int rc = store_session_get(r->cfg.store, sid, &s);
    if (rc == 0) {
        rc = sess_append(s, type, NULL, js, NULL);
        sess_put(s);
    }
    if (rc != 0) {
        LOG_WARN("repos: cannot append %s to session %s: %s", type, sid, err_str(rc));
    }
    free(js);
}

/* ---------------------------------------------------------------- database */

static int db_prep(struct repos *r, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(r->db, sql, -1, st, NULL) != SQLITE_OK) {
        LOG_ERROR("repos: prepare: %s", sqlite3_errmsg(r->db));
        return ERR_DB;
    }
    return 0;
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

static json_t *json_or_empty_array(const char *s)
{
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    if (!json_is_array(j)) {
        json_decref(j);
        j = json_array();
    }
    return j;
}

#define REPO_COLS                                                                                  \
    "name,url,default_branch,setup,hints,description,pool_size,image_interval_min,created_at,"     \
    "updated_at,egress,agent"

static json_t *repo_row_json(sqlite3_stmt *st)
{
    const char *agent = col_text(st, 11);
    return json_pack(
        "{s:s, s:s, s:s, s:o, s:o, s:s, s:I, s:I, s:I, s:I, s:o, s:s?}", "name", col_text(st, 0),
        "url", col_text(st, 1), "default_branch", col_text(st, 2), "setup",
        json_or_empty_array(col_text(st, 3)), "hints", json_or_empty_array(col_text(st, 4)),
        "description", col_text(st, 5) ? col_text(st, 5) : "", "pool_size",
        (json_int_t)sqlite3_column_int64(st, 6), "image_interval_min",
        (json_int_t)sqlite3_column_int64(st, 7), "created_at",
        (json_int_t)sqlite3_column_int64(st, 8), "updated_at",
        (json_int_t)sqlite3_column_int64(st, 9), "egress", json_or_empty_array(col_text(st, 10)),
        "agent", agent && *agent ? agent : NULL);
}

/* The repo row as JSON. Caller holds nothing; takes dblock. */
static int repo_load(struct repos *r, const char *name, json_t **out)
{
    sqlite3_stmt *st = NULL;
    *out = NULL;
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r, "SELECT " REPO_COLS " FROM repos WHERE name=?", &st);
    if (rc == 0) {
        bind_text(st, 1, name);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            *out = repo_row_json(st);
        } else {
            rc = s == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    return rc;
}

/* Run one statement with text/NULL bindings (NULL-terminated list of strings is not enough
 * for integers, so callers bind through a callback-free helper per shape). */
static int db_exec_text(struct repos *r, const char *sql, int n, const char *const *args,
                        int *changes)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r, sql, &st);
    if (rc == 0) {
        for (int i = 0; i < n; i++) {
            bind_text(st, i + 1, args[i]);
        }
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
        if (rc != 0) {
            LOG_ERROR("repos: %s", sqlite3_errmsg(r->db));
        }
        if (changes) {
            *changes = sqlite3_changes(r->db);
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    return rc;
}

/* ---------------------------------------------------------------- registry of repos */

/* Check the fields of spec (create: all required ones present; else a patch). */
static int validate(json_t *spec, int create, char *msg, size_t n)
{
    static const char *const known[] = {
        "name",        "url",       "default_branch",     "setup",  "hints",
        "description", "pool_size", "image_interval_min", "egress", "agent",
        NULL};
    const char *key;
    json_t *v;
    if (!json_is_object(spec)) {
        set_msg(msg, n, "%s", "body must be a JSON object");
        return ERR_INVALID;
    }
    json_object_foreach(spec, key, v)
    {
        int ok = 0;
        for (int i = 0; known[i]; i++) {
            ok |= strcmp(key, known[i]) == 0;
        }
        if (!ok) {
            set_msg(msg, n, "unknown field \"%s\"", key);
            return ERR_INVALID;
        }
    }
    v = json_object_get(spec, "name");
    if (create ? !json_is_string(v) || !util_valid_id(json_string_value(v)) : v != NULL) {
        set_msg(msg, n, "%s",
                create ? "name must match [A-Za-z0-9_-]{1,64}" : "name cannot be changed");
        return ERR_INVALID;
    }
    v = json_object_get(spec, "url");
    if ((create || v) && (!json_is_string(v) || !valid_url(json_string_value(v)))) {
        set_msg(msg, n, "%s", "url must be an https://, http://, ssh://, file:// URL or a path");
        return ERR_INVALID;
    }
    v = json_object_get(spec, "default_branch");
    if (v && (!json_is_string(v) || !valid_branch_name(json_string_value(v)))) {
        set_msg(msg, n, "%s", "default_branch is not a valid branch name");
        return ERR_INVALID;
    }
    static const char *const lists[] = {"setup", "hints"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(spec, lists[i]);
        if (!v) {
            continue;
        }
        size_t idx;
        json_t *e;
        int bad = !json_is_array(v) || json_array_size(v) > 50;
        json_array_foreach(v, idx, e)
        {
            bad |= !json_is_string(e) || json_string_length(e) == 0 ||
                   json_string_length(e) > (i == 0 ? 4096u : 200u);
        }
        if (bad) {
            set_msg(msg, n, "%s must be an array of at most 50 non-empty strings", lists[i]);
            return ERR_INVALID;
        }
    }
    v = json_object_get(spec, "description");
    if (v && (!json_is_string(v) || json_string_length(v) > 2000)) {
        set_msg(msg, n, "%s", "description must be a string of at most 2000 bytes");
        return ERR_INVALID;
    }
    v = json_object_get(spec, "pool_size");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 16)) {
        set_msg(msg, n, "%s", "pool_size must be an integer in [0, 16]");
        return ERR_INVALID;
    }
    v = json_object_get(spec, "image_interval_min");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10080)) {
        set_msg(msg, n, "%s", "image_interval_min must be an integer in [0, 10080] (0 = never)");
        return ERR_INVALID;
    }
    return 0;
}

/* issue 7: check egress and agent of spec. *egress_out = the normalised, de-duplicated list
 * when spec has one (caller decrefs), else NULL. */
static int validate_policy(struct repos *r, json_t *spec, json_t **egress_out, char *msg, size_t n)
{
    json_t *v = json_object_get(spec, "egress");
    *egress_out = NULL;
    if (v) {
        size_t idx;
        json_t *e;
        if (!json_is_array(v) || json_array_size(v) > EGRESS_LIST_MAX) {
            if (msg && n) {
                snprintf(msg, n, "egress must be an array of at most %d \"host:port\" strings",
                         EGRESS_LIST_MAX);
            }
            return ERR_INVALID;
        }
        json_t *norm = json_array();
        json_array_foreach(v, idx, e)
        {
            char one[EGRESS_ENTRY_MAX], why[120] = "";
            const char *str = json_string_value(e);
            if (!str || egress_entry_norm(str, one, sizeof(one), why, sizeof(why)) != 0) {
                if (msg && n) {
                    snprintf(msg, n, "egress[%zu]: %s", idx,
                             str ? why : "must be a \"host:port\" string");
                }
                json_decref(norm);
                return ERR_INVALID;
            }
            size_t j;
            json_t *have;
            int dup = 0;
            json_array_foreach(norm, j, have)
            {
                dup |= strcmp(json_string_value(have), one) == 0;
            }
            if (!dup) {
                json_array_append_new(norm, json_string(one));
            }
        }
        *egress_out = norm;
    }
    v = json_object_get(spec, "agent");
    if (v && !json_is_null(v)) {
        const char *a = json_string_value(v);
        if (!a || (*a && !util_valid_id(a))) {
            set_msg(msg, n, "%s", "agent must be the name of a configured agent, or null");
            goto bad;
        }
        if (*a && r->cfg.agent_known && !r->cfg.agent_known(r->cfg.agent_ctx, a)) {
            set_msg(msg, n, "agent \"%s\" is not a configured agent (see GET /v1/agents)", a);
            goto bad;
        }
    }
    return 0;
bad:
    json_decref(*egress_out);
    *egress_out = NULL;
    return ERR_INVALID;
}

static void kick_pool(struct repos *r)
{
    pthread_mutex_lock(&r->lock);
    r->kick = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Write the full row j (validated) with INSERT (create) or UPDATE. */
static int repo_store(struct repos *r, json_t *j, int create)
{
    sqlite3_stmt *st = NULL;
    int64_t now = clock_now_ms();
    char *setup = jx_dump(json_object_get(j, "setup"));
    char *hints = jx_dump(json_object_get(j, "hints"));
    json_t *eg = json_object_get(j, "egress");
    json_t *none = json_array();
    char *egress = jx_dump(json_is_array(eg) ? eg : none); /* issue 7 */
    json_decref(none);
    const char *agent = json_string_value(json_object_get(j, "agent"));
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r,
                     create ? "INSERT INTO repos(url,default_branch,setup,hints,description,"
                              "pool_size,image_interval_min,updated_at,created_at,name,egress,"
                              "agent) VALUES(?,?,?,?,?,?,?,?,?,?,?11,?12)"
                            : "UPDATE repos SET url=?,default_branch=?,setup=?,hints=?,"
                              "description=?,pool_size=?,image_interval_min=?,updated_at=?,"
                              "egress=?11,agent=?12 WHERE ?9 IS NOT NULL AND name=?10",
                     &st);
    if (rc == 0) {
        bind_text(st, 1, json_string_value(json_object_get(j, "url")));
        bind_text(st, 2, json_string_value(json_object_get(j, "default_branch")));
        bind_text(st, 3, setup);
        bind_text(st, 4, hints);
        bind_text(st, 5, json_string_value(json_object_get(j, "description")));
        sqlite3_bind_int64(st, 6, json_integer_value(json_object_get(j, "pool_size")));
        sqlite3_bind_int64(st, 7, json_integer_value(json_object_get(j, "image_interval_min")));
        sqlite3_bind_int64(st, 8, now);
        sqlite3_bind_int64(st, 9, now);
        bind_text(st, 10, json_string_value(json_object_get(j, "name")));
        bind_text(st, 11, egress);
        bind_text(st, 12, agent ? agent : "");
        int s = sqlite3_step(st);
        if (s == SQLITE_CONSTRAINT) {
            rc = ERR_CONFLICT;
        } else if (s != SQLITE_DONE) {
            LOG_ERROR("repos: store: %s", sqlite3_errmsg(r->db));
            rc = ERR_DB;
        } else if (!create && sqlite3_changes(r->db) == 0) {
            rc = ERR_NOT_FOUND;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    free(setup);
    free(hints);
    free(egress);
    return rc;
}

int repos_create(struct repos *r, json_t *spec, json_t **out, char *msg, size_t n)
{
    if (out) {
        *out = NULL;
    }
    json_t *egress = NULL;
    int rc = validate(spec, 1, msg, n);
    if (rc == 0) {
        rc = validate_policy(r, spec, &egress, msg, n);
    }
    if (rc != 0) {
        return rc;
    }
    json_t *j = json_pack("{s:s, s:[], s:[], s:s, s:i, s:i}", "default_branch", "main", "setup",
                          "hints", "description", "", "pool_size", 2, "image_interval_min", 30);
    json_object_update(j, spec);
    if (egress) {
        json_object_set_new(j, "egress", egress);
    }
    rc = repo_store(r, j, 1);
    json_decref(j);
    if (rc == ERR_CONFLICT) {
        set_msg(msg, n, "repository %s already exists",
                json_string_value(json_object_get(spec, "name")));
    }
    if (rc == 0) {
        LOG_INFO("repos: added %s", json_string_value(json_object_get(spec, "name")));
        kick_pool(r); /* first image build, pool */
        if (out) {
            rc = repo_load(r, json_string_value(json_object_get(spec, "name")), out);
        }
    }
    return rc;
}

int repos_get(struct repos *r, const char *name, json_t **out)
{
    return repo_load(r, name, out);
}

int repos_list(struct repos *r, json_t **out)
{
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r, "SELECT " REPO_COLS " FROM repos ORDER BY name", &st);
    while (rc == 0) {
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            json_array_append_new(arr, repo_row_json(st));
        } else {
            rc = s == SQLITE_DONE ? 1 : ERR_DB;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    if (rc < 0) {
        json_decref(arr);
        *out = NULL;
        return rc;
    }
    *out = json_pack("{s:o}", "repos", arr);
    return 0;
}

int repos_update(struct repos *r, const char *name, json_t *patch, json_t **out, char *msg,
                 size_t n)
{
    json_t *cur = NULL;
    if (out) {
        *out = NULL;
    }
    json_t *egress = NULL;
    int rc = validate(patch, 0, msg, n);
    if (rc == 0) {
        rc = validate_policy(r, patch, &egress, msg, n);
    }
    if (rc == 0) {
        rc = repo_load(r, name, &cur);
    }
    if (rc == 0) {
        json_object_update(cur, patch);
        if (egress) {
            json_object_set(cur, "egress", egress);
        }
        rc = repo_store(r, cur, 0);
    }
    json_decref(egress);
    json_decref(cur);
    if (rc == 0) {
        kick_pool(r);
        if (out) {
            rc = repo_load(r, name, out);
        }
    }
    return rc;
}

static char *repo_dir(struct repos *r, const char *name, const char *sub)
{
    return sub ? xasprintf("%s/repos/%s/%s", r->data_dir, name, sub)
               : xasprintf("%s/repos/%s", r->data_dir, name);
}

/* The objects directory of repo's shared object store (docs/repos.md "Shared object store"):
 * an absolute path, since it is written into workspaces' alternates files and bound at the same
 * path inside sandboxes. Caller frees. */
static char *shared_objects(struct repos *r, const char *repo)
{
    return xasprintf("%s/repos/%s/objects.git/objects", r->abs_data_dir, repo);
}

/* shared_objects() if that store exists (its repo has built an image since stores exist),
 * else NULL: what the gitx_* calls on a workspace of repo get. Caller frees. */
static char *shared_if_any(struct repos *r, const char *repo)
{
    struct stat sb;
    if (!repo || !util_valid_id(repo)) {
        return NULL;
    }
    char *p = shared_objects(r, repo);
    if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        free(p);
        return NULL;
    }
    return p;
}

/* shared_if_any() of the repository session sid was prepared from. Caller frees. */
static char *session_shared(struct repos *r, const char *sid)
{
    sqlite3_stmt *st = NULL;
    char *repo = NULL;
    pthread_mutex_lock(&r->dblock);
    if (db_prep(r, "SELECT repo FROM session_repos WHERE session_id=?", &st) == 0) {
        bind_text(st, 1, sid);
        if (sqlite3_step(st) == SQLITE_ROW && col_text(st, 0)) {
            repo = xstrdup(col_text(st, 0));
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    char *p = shared_if_any(r, repo);
    free(repo);
    return p;
}

int repos_delete(struct repos *r, const char *name)
{
    const char *args[] = {name};
    int changes = 0;
    if (!util_valid_id(name)) {
        return ERR_NOT_FOUND;
    }
    int rc = db_exec_text(r, "DELETE FROM repos WHERE name=?", 1, args, &changes);
    if (rc == 0 && changes == 0) {
        return ERR_NOT_FOUND;
    }
    if (rc != 0) {
        return rc;
    }
    db_exec_text(r, "UPDATE images SET state='deleted' WHERE repo=?", 1, args, NULL);
    /* Take its warm workspaces out of the pool, then delete the files. */
    struct warm *gone = NULL;
    pthread_mutex_lock(&r->lock);
    for (struct warm **pp = &r->warm; *pp;) {
        if (strcmp((*pp)->repo, name) == 0) {
            struct warm *w = *pp;
            *pp = w->next;
            w->next = gone;
            gone = w;
        } else {
            pp = &(*pp)->next;
        }
    }
    pthread_mutex_unlock(&r->lock);
    while (gone) {
        struct warm *w = gone;
        gone = w->next;
        free(w->repo);
        free(w->dir);
        free(w->image_id);
        free(w);
    }
    /* Everything but the shared object store: the workspaces and snapshots of its sessions
     * (which outlive the repository) still borrow objects from it (docs/repos.md). */
    char *dir = repo_dir(r, name, NULL);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            strcmp(de->d_name, "objects.git") == 0) {
            continue;
        }
        char *p = xasprintf("%s/%s", dir, de->d_name);
        util_rm_rf(p);
        free(p);
    }
    if (d) {
        closedir(d);
    }
    free(dir);
    LOG_INFO("repos: deleted %s (its shared object store stays)", name);
    return 0;
}

/* ---------------------------------------------------------------- images */

#define IMAGE_COLS                                                                                 \
    "id,repo,state,step,commit_sha,snapshot_id,started_at,built_at,duration_ms,size_bytes,"        \
    "files,error,substr(log,-4000)"

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

int repos_images(struct repos *r, const char *name, json_t **out)
{
    sqlite3_stmt *st = NULL;
    json_t *repo = NULL;
    *out = NULL;
    int rc = repo_load(r, name, &repo);
    json_decref(repo);
    if (rc != 0) {
        return rc;
    }
    json_t *arr = json_array();
    pthread_mutex_lock(&r->dblock);
    rc = db_prep(r,
                 "SELECT " IMAGE_COLS " FROM images WHERE repo=? AND state!='deleted' "
                 "ORDER BY started_at DESC, rowid DESC LIMIT 50",
                 &st);
    if (rc == 0) {
        bind_text(st, 1, name);
        while (sqlite3_step(st) == SQLITE_ROW) {
            json_array_append_new(arr, image_row_json(st));
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    *out = json_pack("{s:o}", "images", arr);
    return rc;
}

/* The latest ready image of repo: id and snapshot id (buffers of 64). ERR_NOT_FOUND. */
static int latest_image(struct repos *r, const char *repo, char *id, char *snap, int64_t *started)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r,
                     "SELECT id, snapshot_id, started_at FROM images WHERE repo=? AND "
                     "state='ready' ORDER BY started_at DESC, rowid DESC LIMIT 1",
                     &st);
    if (rc == 0) {
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
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    return rc;
}

static void image_set(struct repos *r, const char *id, const char *col, const char *val)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE images SET %s=? WHERE id=?", col);
    const char *args[] = {val, id};
    db_exec_text(r, sql, 2, args, NULL);
}

static void image_log(struct repos *r, const char *id, const char *text, size_t n)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&r->dblock);
    if (db_prep(r,
                "UPDATE images SET log = CASE WHEN length(log) > ?3 THEN log ELSE log || ?1 END "
                "WHERE id=?2",
                &st) == 0) {
        sqlite3_bind_text(st, 1, text, (int)n, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, LOG_CAP);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
}

static int open_image_store(struct repos *r, const char *repo, struct snap_store **out)
{
    char *dir = repo_dir(r, repo, "images");
    int rc = snap_store_open(dir, out);
    free(dir);
    return rc;
}

/* Delete ready images beyond the newest image_keep (their snapshots and objects). */
static void prune_images(struct repos *r, const char *repo)
{
    sqlite3_stmt *st = NULL;
    char *ids[64];
    char *snaps[64];
    int n = 0;
    int keep = r->cfg.image_keep;
    pthread_mutex_lock(&r->dblock);
    if (db_prep(r,
                "SELECT id, snapshot_id FROM images WHERE repo=? AND state='ready' "
                "ORDER BY started_at DESC, rowid DESC LIMIT 64 OFFSET ?",
                &st) == 0) {
        bind_text(st, 1, repo);
        sqlite3_bind_int(st, 2, keep);
        while (n < 64 && sqlite3_step(st) == SQLITE_ROW) {
            ids[n] = xstrdup(col_text(st, 0));
            snaps[n] = xstrdup(col_text(st, 1) ? col_text(st, 1) : "");
            n++;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    if (n == 0) {
        return;
    }
    struct snap_store *ss = NULL;
    open_image_store(r, repo, &ss);
    for (int i = 0; i < n; i++) {
        image_set(r, ids[i], "state", "deleted");
        if (ss && snaps[i][0]) {
            snap_delete(ss, snaps[i]);
        }
        LOG_INFO("repos: %s: image %s deleted (keeping %d)", repo, ids[i], keep);
        free(ids[i]);
        free(snaps[i]);
    }
    if (ss) {
        snap_gc(ss, NULL, NULL);
        snap_store_close(ss);
    }
}

/* Build one image: clone, setup commands in a sandbox, snapshot into the image store. */
static int build_image(struct repos *r, const char *repo, const char *image_id)
{
    json_t *j = NULL;
    struct sbx *sb = NULL;
    struct snap_store *ss = NULL;
    char sha[41] = "";
    char *dir = NULL, *sub = NULL, *store = NULL, *objects = NULL;
    int64_t t0 = clock_mono_ms();
    struct buf err;
    int rc = repo_load(r, repo, &j);
    buf_init(&err, 4096);
    if (rc != 0) {
        buf_printf(&err, "repository %s is gone", repo);
        goto out;
    }
    const char *url = json_string_value(json_object_get(j, "url"));
    const char *branch = json_string_value(json_object_get(j, "default_branch"));
    json_t *setup = json_object_get(j, "setup");
    sub = xasprintf("build-%s", image_id);
    dir = repo_dir(r, repo, sub);
    util_rm_rf(dir);
    /* Fetch into the repository's shared object store (only what it lacks), then check out
     * a workspace that borrows the objects from it: the image holds the files and a small
     * .git, never the packs (docs/repos.md "Shared object store"). */
    image_set(r, image_id, "step", "clone");
    LOG_INFO("repos: %s: image %s: fetching %s at %s", repo, image_id, url, branch);
    store = repo_dir(r, repo, "objects.git");
    objects = shared_objects(r, repo);
    int64_t tf = clock_mono_ms(), tc = 0;
    rc = gitx_mirror_fetch(store, url, branch, NULL, sha);
    if (rc == 0) {
        tc = clock_mono_ms();
        rc = gitx_checkout_shared(dir, objects, url, branch, sha);
        LOG_INFO("repos: %s: image %s: fetch into the shared store %lld ms, checkout %lld ms", repo,
                 image_id, (long long)(tc - tf), (long long)(clock_mono_ms() - tc));
    }
    if (rc != 0) {
        buf_printf(&err, "clone of %s (branch %s) failed: %s", url, branch, err_str(rc));
        goto out;
    }
    image_set(r, image_id, "commit_sha", sha);
    chown_tree(r, dir);
    size_t nsteps = json_array_size(setup);
    if (nsteps > 0 && !r->cfg.sbx) {
        buf_printf(&err, "no sandbox backend to run the setup commands");
        rc = ERR_UNAVAILABLE;
        goto out;
    }
    if (nsteps > 0) {
        char name[80];
        snprintf(name, sizeof(name), "img-%s", image_id);
        struct sbx_spec spec = {.name = name, .workspace = dir, .shared_objects = objects};
        rc = sbx_create(r->cfg.sbx, &spec, &sb);
        if (rc != 0) {
            buf_printf(&err, "cannot start a sandbox for the setup: %s", err_str(rc));
            goto out;
        }
        pthread_mutex_lock(&r->lock);
        r->build_sbx = sb; /* repos_close stops it: a shutdown does not wait for npm ci */
        int stopping = r->stopping;
        pthread_mutex_unlock(&r->lock);
        if (stopping) {
            sbx_stop(sb);
        }
    }
    for (size_t i = 0; i < nsteps; i++) {
        const char *cmd = json_string_value(json_array_get(setup, i));
        char step[160];
        snprintf(step, sizeof(step), "setup %zu/%zu", i + 1, nsteps);
        image_set(r, image_id, "step", step);
        char *hdr = xasprintf("$ %s\n", cmd);
        image_log(r, image_id, hdr, strlen(hdr));
        free(hdr);
        const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
        struct sbx_exec_req req = {.argv = argv, .timeout_ms = 30 * 60 * 1000};
        struct sbx_result res;
        memset(&res, 0, sizeof(res));
        rc = sbx_run(sb, &req, SETUP_OUT_CAP, &res);
        if (rc == 0) {
            image_log(r, image_id, res.out ? res.out : "", res.out_len);
            image_log(r, image_id, res.err ? res.err : "", res.err_len);
            char tail[64];
            snprintf(tail, sizeof(tail), "[exit %d%s]\n", res.exit.exit_code,
                     res.exit.timed_out ? ", timed out" : "");
            image_log(r, image_id, tail, strlen(tail));
            if (res.exit.exit_code != 0 || res.exit.signal != 0) {
                buf_printf(&err, "setup step %zu (%s) failed with exit code %d", i + 1, cmd,
                           res.exit.exit_code);
                rc = ERR_UNPROCESSABLE;
            }
        } else {
            buf_printf(&err, "setup step %zu could not run: %s", i + 1, err_str(rc));
        }
        sbx_result_free(&res);
        if (rc != 0) {
            goto out;
        }
    }
    pthread_mutex_lock(&r->lock);
    r->build_sbx = NULL;
    pthread_mutex_unlock(&r->lock);
    sbx_destroy(sb);
    sb = NULL;
    image_set(r, image_id, "step", "snapshot");
    struct snap_info si;
    rc = open_image_store(r, repo, &ss);
    if (rc == 0) {
        rc = snap_create(ss, dir, image_id, &si);
    }
    if (rc != 0) {
        buf_printf(&err, "snapshot of the built workspace failed: %s", err_str(rc));
        goto out;
    }
    int64_t ms = clock_mono_ms() - t0;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&r->dblock);
    if (db_prep(r,
                "UPDATE images SET state='ready', step=NULL, snapshot_id=?, built_at=?, "
                "duration_ms=?, size_bytes=?, files=? WHERE id=?",
                &st) == 0) {
        bind_text(st, 1, si.id);
        sqlite3_bind_int64(st, 2, clock_now_ms());
        sqlite3_bind_int64(st, 3, ms);
        sqlite3_bind_int64(st, 4, (int64_t)si.bytes);
        sqlite3_bind_int64(st, 5, (int64_t)si.files);
        bind_text(st, 6, image_id);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = ERR_DB;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    LOG_INFO("repos: %s: image %s ready (commit %.12s, %llu files, %lld ms)", repo, image_id, sha,
             (unsigned long long)si.files, (long long)ms);
out:
    if (sb) {
        pthread_mutex_lock(&r->lock);
        r->build_sbx = NULL;
        pthread_mutex_unlock(&r->lock);
    }
    sbx_destroy(sb);
    snap_store_close(ss);
    if (rc != 0) {
        sqlite3_stmt *fs = NULL;
        pthread_mutex_lock(&r->dblock);
        if (db_prep(r,
                    "UPDATE images SET state='failed', error=?, duration_ms=?, built_at=? "
                    "WHERE id=?",
                    &fs) == 0) {
            bind_text(fs, 1, err.data ? err.data : err_str(rc));
            sqlite3_bind_int64(fs, 2, clock_mono_ms() - t0);
            sqlite3_bind_int64(fs, 3, clock_now_ms());
            bind_text(fs, 4, image_id);
            sqlite3_step(fs);
        }
        sqlite3_finalize(fs);
        pthread_mutex_unlock(&r->dblock);
        LOG_WARN("repos: %s: image %s failed: %s", repo, image_id,
                 err.data ? err.data : err_str(rc));
    }
    if (dir) {
        snap_discard_tree(dir); /* its sandbox is gone: inodes to the spare pool */
    }
    if (rc == 0) {
        prune_images(r, repo);
    }
    free(dir);
    free(sub);
    free(store);
    free(objects);
    buf_free(&err);
    json_decref(j);
    return rc;
}

/* Insert the image row (state building). ERR_CONFLICT if one is queued or running. */
static int image_new(struct repos *r, const char *repo, char **id_out)
{
    sqlite3_stmt *st = NULL;
    char *id = util_new_id("img_");
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r,
                     "INSERT INTO images(id, repo, state, step, started_at) SELECT ?, ?, "
                     "'building', 'queued', ? WHERE NOT EXISTS (SELECT 1 FROM images WHERE "
                     "repo=?2 AND state='building')",
                     &st);
    if (rc == 0) {
        bind_text(st, 1, id);
        bind_text(st, 2, repo);
        sqlite3_bind_int64(st, 3, clock_now_ms());
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
        if (rc == 0 && sqlite3_changes(r->db) == 0) {
            rc = ERR_CONFLICT;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    if (rc != 0) {
        free(id);
        return rc;
    }
    *id_out = id;
    return 0;
}

static int image_row(struct repos *r, const char *id, json_t **out)
{
    sqlite3_stmt *st = NULL;
    *out = NULL;
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r, "SELECT " IMAGE_COLS " FROM images WHERE id=?", &st);
    if (rc == 0) {
        bind_text(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW) {
            *out = image_row_json(st);
        } else {
            rc = ERR_NOT_FOUND;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    return rc;
}

int repos_image_build(struct repos *r, const char *name, json_t **out)
{
    json_t *repo = NULL;
    char *id = NULL;
    if (out) {
        *out = NULL;
    }
    int rc = repo_load(r, name, &repo);
    json_decref(repo);
    if (rc == 0) {
        rc = image_new(r, name, &id);
    }
    if (rc != 0) {
        return rc;
    }
    if (r->cfg.no_threads) {
        build_image(r, name, id);
    } else {
        struct job *jb = xcalloc(1, sizeof(*jb));
        jb->repo = xstrdup(name);
        jb->image_id = xstrdup(id);
        pthread_mutex_lock(&r->lock);
        if (r->jobs_tail) {
            r->jobs_tail->next = jb;
        } else {
            r->jobs = jb;
        }
        r->jobs_tail = jb;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
    }
    if (out) {
        image_row(r, id, out);
    }
    free(id);
    return 0;
}

static void *builder_main(void *arg)
{
    struct repos *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->stopping) {
        struct job *jb = r->jobs;
        if (!jb) {
            pthread_cond_wait(&r->cond, &r->lock);
            continue;
        }
        r->jobs = jb->next;
        if (!r->jobs) {
            r->jobs_tail = NULL;
        }
        r->building = jb->repo;
        pthread_mutex_unlock(&r->lock);
        int rc = build_image(r, jb->repo, jb->image_id);
        pthread_mutex_lock(&r->lock);
        r->building = NULL;
        if (rc == 0) {
            r->kick = 1; /* new image: refresh the pool */
            pthread_cond_broadcast(&r->cond);
        }
        free(jb->repo);
        free(jb->image_id);
        free(jb);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* ---------------------------------------------------------------- warm pool */

static void warm_free(struct warm *w)
{
    if (w) {
        if (w->sbx) {
            pool_sbx_free(w->sbx, w->sbx_priv);
            w->sbx_priv = NULL;
        }
        free(w->sbx_priv);
        char *snapdir = xasprintf("%s.snap", w->dir);
        util_rm_rf(snapdir);
        free(snapdir);
        snap_discard_tree(w->dir); /* its sandbox is gone: inodes to the spare pool */
        free(w->repo);
        free(w->dir);
        free(w->image_id);
        free(w);
    }
}

/* Start the sandbox of a new warm workspace now (issue 5: a claim then costs a rename, not a
 * namespace setup), if the runner registered its factory. Failure only costs that gain. */
static void warm_sandbox(struct repos *r, struct warm *w)
{
    const char *base = strrchr(w->dir, '/');
    char name[64];
    snprintf(name, sizeof(name), "warm-%s", base ? base + 1 : "x");
    char *objs = shared_for(r, name, w->dir);
    struct sbx_spec spec = {.name = name, .workspace = w->dir, .shared_objects = objs};
    int rc = ERR_UNAVAILABLE;
    pthread_mutex_lock(&g_factory_mu);
    if (g_factory) {
        rc = g_factory(g_factory_arg, &spec, &w->sbx);
    }
    pthread_mutex_unlock(&g_factory_mu);
    free(objs);
    if (rc == 0) {
        w->sbx_priv = xasprintf("%s/sandboxes/%s", r->data_dir, name);
    } else {
        w->sbx = NULL;
        if (rc != ERR_UNAVAILABLE) {
            LOG_WARN("repos: cannot start a sandbox for warm workspace %s: %s", w->dir,
                     err_str(rc));
        }
    }
}

/* Restore the latest image into a fresh directory and sync it to the branch head. */
static int warm_make(struct repos *r, const char *repo, const char *url, const char *branch,
                     const char *image_id, const char *snap_id, struct warm **out)
{
    struct snap_store *ss = NULL;
    char rnd[17];
    util_random_hex(rnd, 8);
    char *sub = xasprintf("warm/%s", rnd);
    char *dir = repo_dir(r, repo, sub);
    free(sub);
    char head[41] = "";
    /* <dir>.snap becomes the session's snapshot store at claim, seeded from the image */
    char *snapdir = xasprintf("%s.snap", dir);
    int rc = open_image_store(r, repo, &ss);
    if (rc == 0) {
        rc = snap_restore_seed(ss, snap_id, dir, snapdir, NULL);
    }
    snap_store_close(ss);
    char *shared = shared_if_any(r, repo);
    if (rc == 0) {
        chown_tree(r, dir); /* restored as root: the sandbox user's before git runs as it */
        rc = gitjob_sync(&r->git, dir, shared, url, branch, NULL, head);
    }
    if (rc == 0) {
        /* in the background now, not in the first commit */
        gitjob_refresh_index(&r->git, dir, shared);
    }
    free(shared);
    free(snapdir);
    if (rc != 0) {
        LOG_WARN("repos: %s: cannot prepare a warm workspace: %s", repo, err_str(rc));
        util_rm_rf(dir);
        snapdir = xasprintf("%s.snap", dir);
        util_rm_rf(snapdir);
        free(snapdir);
        free(dir);
        return rc;
    }
    struct warm *w = xcalloc(1, sizeof(*w));
    w->repo = xstrdup(repo);
    w->dir = dir;
    w->image_id = xstrdup(image_id);
    w->created_ms = w->synced_ms = clock_now_ms();
    memcpy(w->head, head, sizeof(head));
    *out = w;
    return 0;
}

/* One pass of the schedule for one repo: rebuild when due, expire, re-sync, top up. */
static void pool_tick_repo(struct repos *r, const char *repo, const char *url, const char *branch,
                           int64_t pool_size, int64_t interval_min, int filling)
{
    char img[64], snap[64];
    int64_t started = 0, now = clock_now_ms();
    int have_image = latest_image(r, repo, img, snap, &started) == 0;
    if (interval_min > 0 && !filling && (!have_image || started + interval_min * 60000 <= now)) {
        json_t *row = NULL;
        /* ERR_CONFLICT = already building: fine. A failed build retries next interval. */
        int64_t last_any = 0;
        sqlite3_stmt *st = NULL;
        pthread_mutex_lock(&r->dblock);
        if (db_prep(r, "SELECT max(started_at) FROM images WHERE repo=?", &st) == 0) {
            bind_text(st, 1, repo);
            if (sqlite3_step(st) == SQLITE_ROW) {
                last_any = sqlite3_column_int64(st, 0);
            }
        }
        sqlite3_finalize(st);
        pthread_mutex_unlock(&r->dblock);
        if (last_any + interval_min * 60000 <= now) {
            repos_image_build(r, repo, &row);
            json_decref(row);
        }
    }
    /* Expire: too old, or made from an image that is no longer the latest. */
    struct warm *gone = NULL, *resync = NULL;
    int count = 0;
    pthread_mutex_lock(&r->lock);
    for (struct warm **pp = &r->warm; *pp;) {
        struct warm *w = *pp;
        if (strcmp(w->repo, repo) != 0) {
            pp = &w->next;
            continue;
        }
        int expired = w->created_ms + (int64_t)r->cfg.pool_max_age_s * 1000 <= now || !have_image ||
                      strcmp(w->image_id, img) != 0 || count >= pool_size;
        if (expired) {
            *pp = w->next;
            w->next = gone;
            gone = w;
        } else if (w->synced_ms + RESYNC_MS <= now) {
            *pp = w->next; /* taken out while it syncs */
            w->next = resync;
            resync = w;
        } else {
            count++;
            pp = &w->next;
        }
    }
    pthread_mutex_unlock(&r->lock);
    while (gone) {
        struct warm *w = gone;
        gone = w->next;
        warm_free(w);
    }
    while (resync) {
        struct warm *w = resync;
        resync = w->next;
        char head[41] = "";
        char *shared = shared_if_any(r, repo);
        if (gitjob_sync(&r->git, w->dir, shared, url, branch, NULL, head) != 0) {
            free(shared);
            warm_free(w);
            continue;
        }
        if (strcmp(head, w->head) != 0) {
            /* the reset left stale stat data: pay it now */
            gitjob_refresh_index(&r->git, w->dir, shared);
            memcpy(w->head, head, sizeof(head));
        }
        free(shared);
        w->synced_ms = clock_now_ms();
        pthread_mutex_lock(&r->lock);
        w->next = r->warm;
        r->warm = w;
        count++;
        pthread_mutex_unlock(&r->lock);
    }
    while (have_image && count < pool_size) {
        struct warm *w = NULL;
        pthread_mutex_lock(&r->lock);
        int stop = r->stopping;
        pthread_mutex_unlock(&r->lock);
        if (stop || warm_make(r, repo, url, branch, img, snap, &w) != 0) {
            break;
        }
        warm_sandbox(r, w);
        pthread_mutex_lock(&r->lock);
        w->next = r->warm;
        r->warm = w;
        pthread_mutex_unlock(&r->lock);
        count++;
    }
}

/* One pass over every repo (or only `only`). */
static void pool_tick(struct repos *r, const char *only, int filling)
{
    json_t *list = NULL;
    if (repos_list(r, &list) != 0) {
        return;
    }
    size_t i;
    json_t *j;
    json_array_foreach(json_object_get(list, "repos"), i, j)
    {
        const char *name = json_string_value(json_object_get(j, "name"));
        if (only && strcmp(only, name) != 0) {
            continue;
        }
        pool_tick_repo(r, name, json_string_value(json_object_get(j, "url")),
                       json_string_value(json_object_get(j, "default_branch")),
                       json_integer_value(json_object_get(j, "pool_size")),
                       json_integer_value(json_object_get(j, "image_interval_min")), filling);
    }
    json_decref(list);
}

static void *pool_main(void *arg)
{
    struct repos *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->stopping) {
        int64_t now = clock_mono_ms();
        int due = r->kick || (r->refill_at_ms && now >= r->refill_at_ms) || now >= r->next_tick_ms;
        if (!due) {
            int64_t until = r->next_tick_ms;
            if (r->refill_at_ms && r->refill_at_ms < until) {
                until = r->refill_at_ms;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            int64_t ns = ts.tv_nsec + (until - now) * 1000000;
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&r->cond, &r->lock, &ts);
            continue;
        }
        r->kick = 0;
        r->refill_at_ms = 0;
        r->next_tick_ms = now + r->cfg.tick_ms;
        r->pool_running = 1;
        pthread_mutex_unlock(&r->lock);
        pool_tick(r, NULL, 0);
        pthread_mutex_lock(&r->lock);
        r->pool_running = 0;
        pthread_cond_broadcast(&r->pool_done);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static int warm_count(struct repos *r, const char *repo)
{
    int n = 0;
    pthread_mutex_lock(&r->lock);
    for (struct warm *w = r->warm; w; w = w->next) {
        n += strcmp(w->repo, repo) == 0;
    }
    pthread_mutex_unlock(&r->lock);
    return n;
}

int repos_warm(struct repos *r, const char *name, json_t **out)
{
    json_t *j = NULL;
    char img[64], snap[64];
    int rc = repo_load(r, name, &j);
    if (rc != 0) {
        return rc;
    }
    kick_pool(r);
    int have = latest_image(r, name, img, snap, NULL) == 0;
    *out = json_pack("{s:O, s:i, s:s?}", "pool_size", json_object_get(j, "pool_size"), "warm",
                     warm_count(r, name), "image_id", have ? img : NULL);
    json_decref(j);
    return 0;
}

int repos_pool_fill(struct repos *r, const char *name)
{
    /* Wait for a running tick, then run one for this repo on the caller's thread. Two
     * ticks at once would only over-fill (the surplus expires at the next tick). */
    pthread_mutex_lock(&r->lock);
    while (r->pool_running) {
        pthread_cond_wait(&r->pool_done, &r->lock);
    }
    r->pool_running = 1;
    pthread_mutex_unlock(&r->lock);
    pool_tick(r, name, 1);
    pthread_mutex_lock(&r->lock);
    r->pool_running = 0;
    pthread_cond_broadcast(&r->pool_done);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

/* ---------------------------------------------------------------- open / close */

int repos_open(const struct repos_config *cfg, struct repos **out)
{
    struct repos *r = xcalloc(1, sizeof(*r));
    int rc = 0;
    *out = NULL;
    r->cfg = *cfg;
    r->data_dir = xstrdup(cfg->data_dir);
    r->ca_file = cfg->ca_file ? xstrdup(cfg->ca_file) : NULL;
    r->cfg.ca_file = r->ca_file;
    r->cfg.data_dir = r->data_dir;
    if (r->cfg.snapshot_keep <= 0) {
        r->cfg.snapshot_keep = 20;
    }
    if (r->cfg.snapshot_quota <= 0) {
        r->cfg.snapshot_quota = (int64_t)2 << 30;
    }
    if (r->cfg.image_keep <= 0) {
        r->cfg.image_keep = 3;
    }
    if (r->cfg.pool_max_age_s <= 0) {
        r->cfg.pool_max_age_s = 1500;
    }
    if (r->cfg.tick_ms <= 0) {
        r->cfg.tick_ms = 30000;
    }
    pthread_mutex_init(&r->dblock, NULL);
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    pthread_cond_init(&r->pool_done, NULL);
    pthread_cond_init(&r->sync_cv, NULL);
    r->syncing = json_object();
    r->ready_src_sbx = json_object();
    r->released = json_object();
    r->ending = json_object();
    {
        /* environment overrides (tests, operations) */
        /* the bound itself is the config's repos.sync_wait_ms (env SESSIOND_REPOS_SYNC_WAIT_MS) */
        int64_t v = 0;
        const char *e = getenv("SESSIOND_TEST_SYNC_DELAY_MS");
        if (e && util_parse_i64(e, &v) == 0 && v >= 0 && v <= 600000) {
            r->cfg.sync_delay_ms = (int)v;
        }
        if (r->cfg.sync_wait_ms <= 0) {
            r->cfg.sync_wait_ms = 30000;
        }
    }
    gitx_init(r->ca_file, NULL);
    {
        /* Workspace git runs in the helper, as the sandbox user when we are root (gitjob.h) */
        uid_t uid;
        gid_t gid;
        int drop = owner_of_sandboxes(r, &uid, &gid);
        r->git_bin = gitjob_default_bin();
        r->git.bin = r->git_bin;
        r->git.uid = drop ? (int)uid : -1;
        r->git.gid = drop ? (int)gid : -1;
        if (drop && r->cfg.sbx->cfg.uid_lo > 0) {
            /* one uid per sandbox: git runs as the uid that owns the workspace */
            r->git.owner_lo = r->cfg.sbx->cfg.uid_lo;
            r->git.owner_hi = r->cfg.sbx->cfg.uid_hi;
        }
        r->git.ca_file = r->ca_file;
        if (access(r->git_bin, X_OK) != 0) {
            /* no fallback into this process: that is the wall the helper is */
            LOG_ERROR("repos: the git helper %s is missing (make builds it): commits, syncs "
                      "and pushes of workspaces will fail",
                      r->git_bin);
        }
    }
    char *path = xasprintf("%s/registry.db", r->data_dir);
    if (sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        LOG_ERROR("repos: open %s: %s", path, r->db ? sqlite3_errmsg(r->db) : "no memory");
        rc = ERR_DB;
    }
    free(path);
    if (rc == 0) {
        sqlite3_busy_timeout(r->db, 5000);
        sqlite3_exec(r->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
        sqlite3_stmt *st = NULL;
        /* the migration is applied by registry_open(); make sure it ran */
        if (sqlite3_prepare_v2(r->db, "SELECT 1 FROM repos LIMIT 1", -1, &st, NULL) != SQLITE_OK) {
            LOG_ERROR("repos: registry.db has no repos table (migration 0002 not applied)");
            rc = ERR_DB;
        }
        sqlite3_finalize(st);
    }
    if (rc == 0) {
        /* Builds interrupted by a stop or a crash will never finish. */
        db_exec_text(r,
                     "UPDATE images SET state='failed', error='interrupted by a server restart' "
                     "WHERE state='building'",
                     0, NULL, NULL);
        char *warm_glob = xasprintf("%s/repos", r->data_dir);
        util_mkdir_p(warm_glob, 0700);
        free(warm_glob);
        char *abs = realpath(r->data_dir, NULL);
        r->abs_data_dir = abs ? xstrdup(abs) : xstrdup(r->data_dir);
        free(abs);
    }
    if (rc == 0 && !cfg->no_threads) {
        if (pthread_create(&r->builder, NULL, builder_main, r) == 0) {
            r->threads |= 1;
        }
        if (pthread_create(&r->pooler, NULL, pool_main, r) == 0) {
            r->threads |= 2;
        }
    }
    if (rc != 0) {
        repos_close(r);
        return rc;
    }
    r->ready_src = json_object();
    r->preparing = json_object();
    pthread_cond_init(&r->prep_cv, NULL);
    pthread_mutex_lock(&g_hook_mu);
    g_active = r;
    pthread_mutex_unlock(&g_hook_mu);
    *out = r;
    return 0;
}

void repos_close(struct repos *r)
{
    if (!r) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->closing = 1; /* hooks waiting for a sync give up now */
    pthread_cond_broadcast(&r->sync_cv);
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&g_hook_mu);
    if (g_active == r) {
        g_active = NULL;
        while (g_hooks_in > 0) {
            pthread_cond_wait(&g_hook_cv, &g_hook_mu);
        }
    }
    pthread_mutex_unlock(&g_hook_mu);
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    if (r->build_sbx) {
        sbx_stop(r->build_sbx); /* the running setup step ends now; the build fails */
    }
    if (r->threads) {
        gitx_cancel_all(1); /* a clone or sync in progress stops too */
    }
    pthread_cond_broadcast(&r->cond);
    while (r->bg_snapshots > 0 || r->bg_syncs > 0) {
        pthread_cond_wait(&r->pool_done, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    if (r->threads & 1) {
        pthread_join(r->builder, NULL);
    }
    if (r->threads & 2) {
        pthread_join(r->pooler, NULL);
    }
    while (r->jobs) {
        struct job *jb = r->jobs;
        r->jobs = jb->next;
        free(jb->repo);
        free(jb->image_id);
        free(jb);
    }
    while (r->handoffs) { /* claimed, never taken (the runner failed before) */
        struct handoff *h = r->handoffs;
        r->handoffs = h->next;
        sbx_destroy(h->sbx);
        free(h);
    }
    /* Warm workspaces do not survive a restart (their sync would be stale anyway). */
    while (r->warm) {
        struct warm *w = r->warm;
        r->warm = w->next;
        warm_free(w);
    }
    if (r->db) {
        db_exec_text(r,
                     "UPDATE images SET state='failed', error='interrupted by a server stop' "
                     "WHERE state='building'",
                     0, NULL, NULL);
        sqlite3_close(r->db);
    }
    json_decref(r->ready_src);
    json_decref(r->preparing);
    json_decref(r->syncing);
    json_decref(r->ready_src_sbx);
    json_decref(r->released);
    json_decref(r->ending);
    pthread_cond_destroy(&r->sync_cv);
    if (r->preparing) {
        pthread_cond_destroy(&r->prep_cv);
    }
    pthread_cond_destroy(&r->cond);
    pthread_cond_destroy(&r->pool_done);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->dblock);
    free(r->data_dir);
    free(r->abs_data_dir);
    free(r->ca_file);
    free(r->git_bin);
    free(r);
}

/* ---------------------------------------------------------------- sessions */

static char *session_snap_dir(struct repos *r, const char *sid)
{
    return xasprintf("%s/snapshots/%s", r->data_dir, sid);
}

static int open_session_store(struct repos *r, const char *sid, struct snap_store **out)
{
    if (!util_valid_id(sid)) {
        return ERR_INVALID;
    }
    char *dir = session_snap_dir(r, sid);
    int rc = snap_store_open(dir, out);
    free(dir);
    return rc;
}

/* The session's repo row joined with the repo: repo, branch, url, default_branch. */
static int session_row(struct repos *r, const char *sid, json_t **out)
{
    sqlite3_stmt *st = NULL;
    *out = NULL;
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r,
                     "SELECT s.repo, s.branch, r.url, r.default_branch, s.source, s.ready_ms, "
                     "s.image_id, s.turn, s.pushed_sha, s.pr_url FROM session_repos s "
                     "LEFT JOIN repos r ON r.name = s.repo WHERE s.session_id=?",
                     &st);
    if (rc == 0) {
        bind_text(st, 1, sid);
        if (sqlite3_step(st) == SQLITE_ROW) {
            json_t *j = json_object();
            static const char *const names[] = {
                "repo", "branch",   "url", "default_branch", "source",
                NULL,   "image_id", NULL,  "pushed_sha",     "pr_url"};
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
        } else {
            rc = ERR_NOT_FOUND;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    return rc;
}

int repos_session_info(struct repos *r, const char *session_id, json_t **out)
{
    return session_row(r, session_id, out);
}

int repos_session_set_pr(struct repos *r, const char *session_id, const char *url)
{
    const char *args[] = {url, session_id};
    return db_exec_text(r, "UPDATE session_repos SET pr_url=? WHERE session_id=?", 2, args, NULL);
}

/* Take a valid warm workspace of repo made from image img out of the pool. */
static struct warm *warm_claim(struct repos *r, const char *repo, const char *img)
{
    struct warm *found = NULL;
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&r->lock);
    for (struct warm **pp = &r->warm; *pp; pp = &(*pp)->next) {
        struct warm *w = *pp;
        if (strcmp(w->repo, repo) == 0 && strcmp(w->image_id, img) == 0 &&
            w->created_ms + (int64_t)r->cfg.pool_max_age_s * 1000 > now) {
            *pp = w->next;
            found = w;
            break;
        }
    }
    /* Top the pool up again, a moment later: refilling (a 100 MiB restore) right now would
     * compete for the CPUs with the start of the session that just claimed. */
    if (!r->refill_at_ms) {
        r->refill_at_ms = clock_mono_ms() + REFILL_DELAY_MS;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}

/* A sync that prepare_ws leaves to the background (repos.h "The workspace sync"): fetch +
 * hard reset to url/branch, or with url NULL only the index refresh after a restore. */
struct sync_req {
    int want;
    char *url, *branch;
};

static int wait_quiet(struct repos *r, const char *sid);

static void sync_req_set(struct sync_req *q, const char *url, const char *branch)
{
    q->want = 1;
    q->url = url ? xstrdup(url) : NULL;
    q->branch = branch ? xstrdup(branch) : NULL;
}

/* repos_prepare_workspace(); with defer, the sync (or index refresh) is not done here but
 * described in *defer for the caller to run in the background. */
static int prepare_ws(struct repos *r, const char *session_id, const char *repo,
                      const char *workspace, char *source, int64_t *ms, struct sync_req *defer)
{
    json_t *j = NULL;
    struct snap_store *ss = NULL;
    char img[64] = "", snap[64], latest[32];
    const char *src = NULL;
    char *sdir = NULL;
    int64_t t0 = clock_mono_us();
    int rc = util_valid_id(session_id) ? repo_load(r, repo, &j) : ERR_INVALID;
    if (rc != 0) {
        return rc;
    }
    const char *url = json_string_value(json_object_get(j, "url"));
    const char *branch = json_string_value(json_object_get(j, "default_branch"));
    char *sbranch = xasprintf("sessiond/%s", session_id);
    {
        sqlite3_stmt *st = NULL;
        pthread_mutex_lock(&r->dblock);
        if (db_prep(r,
                    "INSERT OR IGNORE INTO session_repos(session_id, repo, branch, created_at) "
                    "VALUES(?,?,?,?)",
                    &st) == 0) {
            bind_text(st, 1, session_id);
            bind_text(st, 2, repo);
            bind_text(st, 3, sbranch);
            sqlite3_bind_int64(st, 4, clock_now_ms());
            sqlite3_step(st);
        }
        sqlite3_finalize(st);
        pthread_mutex_unlock(&r->dblock);
    }
    /* The target must be absent or an empty directory (rmdir fails otherwise). */
    if (rmdir(workspace) != 0 && errno != ENOENT) {
        LOG_WARN("repos: workspace %s exists and is not empty", workspace);
        rc = ERR_CONFLICT;
        goto out;
    }
    char *parent = xstrdup(workspace);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        util_mkdir_p(parent, 0755);
    }
    free(parent);

    /* 1. the session's own latest snapshot (a reopened session keeps its work) */
    sdir = session_snap_dir(r, session_id);
    char *ssnaps = xasprintf("%s/snaps", sdir);
    struct stat ssb;
    int has_store = stat(ssnaps, &ssb) == 0;
    free(ssnaps);
    int had_snaps = 0;
    if (has_store && open_session_store(r, session_id, &ss) == 0 &&
        snap_latest(ss, latest, sizeof(latest)) == 0) {
        had_snaps = 1;
        rc = snap_restore(ss, latest, workspace, NULL);
        if (rc == 0) {
            src = "snapshot";
            if (defer) {
                sync_req_set(defer, NULL, NULL); /* restored inodes: refresh the index */
            }
            goto done;
        }
        LOG_WARN("repos: %s: restore of %s failed; starting fresh", session_id, latest);
        util_rm_rf(workspace);
    }
    int have_image = latest_image(r, repo, img, snap, NULL) == 0;
    /* 2. a warm workspace of the latest image */
    struct warm *w = have_image ? warm_claim(r, repo, img) : NULL;
    if (w) {
        if (rename(w->dir, workspace) == 0) {
            src = "warm";
            if (defer && w->synced_ms + CLAIM_RESYNC_MS <= clock_now_ms()) {
                sync_req_set(defer, url, branch); /* the head may have moved since */
            }
            if (w->sbx && defer && sbx_alive(w->sbx) &&
                sbx_rehome(w->sbx, session_id, workspace) == 0) {
                struct handoff *h = xcalloc(1, sizeof(*h));
                snprintf(h->sid, sizeof(h->sid), "%s", session_id);
                h->sbx = w->sbx;
                pthread_mutex_lock(&r->lock);
                h->next = r->handoffs;
                r->handoffs = h;
                pthread_mutex_unlock(&r->lock);
                free(w->sbx_priv); /* now the session's private dir */
            } else if (w->sbx) {
                pool_sbx_free(w->sbx, w->sbx_priv); /* the caller starts its own */
            }
            w->sbx = NULL;
            w->sbx_priv = NULL;
            /* its seeded snapshot store becomes the session's (no snapshot exists yet) */
            char *wsnap = xasprintf("%s.snap", w->dir);
            snap_store_close(ss);
            ss = NULL;
            if (!had_snaps) { /* never replace a store that holds snapshots */
                util_rm_rf(sdir);
                char *parent_s = xasprintf("%s/snapshots", r->data_dir);
                util_mkdir_p(parent_s, 0700);
                free(parent_s);
            }
            if (had_snaps || rename(wsnap, sdir) != 0) {
                util_rm_rf(wsnap); /* the first snapshot will read everything */
            }
            free(wsnap);
            free(w->repo);
            free(w->dir);
            free(w->image_id);
            free(w);
            goto done;
        }
        LOG_WARN("repos: rename of a warm workspace failed: %s", strerror(errno));
        warm_free(w);
    }
    /* 3. a cold start from the latest image */
    if (have_image) {
        struct snap_store *is = NULL;
        struct snap_restore_info ri;
        memset(&ri, 0, sizeof(ri));
        int64_t t1 = clock_mono_us(), t2 = 0;
        rc = open_image_store(r, repo, &is);
        if (rc == 0) {
            rc = snap_restore_seed(is, snap, workspace, sdir, &ri);
        }
        snap_store_close(is);
        if (rc == 0) {
            t2 = clock_mono_us();
            if (defer) {
                /* in the background, after sandbox.ready (the ownership fix first) */
                sync_req_set(defer, url, branch);
            } else {
                /* restored as root: the sandbox user's before git runs as it */
                chown_tree(r, workspace);
                char *shared = shared_if_any(r, repo);
                rc = gitjob_sync(&r->git, workspace, shared, url, branch, NULL, NULL);
                free(shared);
            }
            LOG_INFO("repos: session %s: image restore %lld ms (%llu files, %llu spare inodes, "
                     "%llu MiB; walk %lld, "
                     "dirs %lld, copy %lld, meta %lld ms), sync %lld ms%s",
                     session_id, (long long)(t2 - t1) / 1000, (unsigned long long)ri.copied,
                     (unsigned long long)ri.spares, (unsigned long long)(ri.copied_bytes >> 20),
                     (long long)ri.walk_us / 1000, (long long)ri.dirs_us / 1000,
                     (long long)ri.copy_us / 1000, (long long)ri.meta_us / 1000,
                     (long long)(clock_mono_us() - t2) / 1000, defer ? " (deferred)" : "");
        }
        if (rc == 0) {
            src = "image";
            goto done;
        }
        LOG_WARN("repos: %s: start from image %s failed: %s; cloning", session_id, img,
                 err_str(rc));
        util_rm_rf(workspace);
        img[0] = 0;
    }
    /* 4. a plain clone */
    rc = gitx_clone(url, branch, workspace, NULL, NULL);
    if (rc != 0) {
        goto out;
    }
    chown_tree(r, workspace);
    src = "clone";
    img[0] = 0;
done:
    rc = 0;
    int64_t took = (clock_mono_us() - t0) / 1000;
    {
        sqlite3_stmt *st = NULL;
        pthread_mutex_lock(&r->dblock);
        if (db_prep(r,
                    "UPDATE session_repos SET source=?, ready_ms=?, image_id=? "
                    "WHERE session_id=?",
                    &st) == 0) {
            bind_text(st, 1, src);
            sqlite3_bind_int64(st, 2, took);
            bind_text(st, 3, img[0] ? img : NULL);
            bind_text(st, 4, session_id);
            sqlite3_step(st);
        }
        sqlite3_finalize(st);
        pthread_mutex_unlock(&r->dblock);
    }
    snprintf(source, 16, "%s", src);
    if (ms) {
        *ms = took;
    }
    LOG_INFO("repos: session %s workspace ready from %s in %lld ms", session_id, src,
             (long long)took);
out:
    snap_store_close(ss);
    free(sdir);
    free(sbranch);
    json_decref(j);
    return rc;
}

int repos_prepare_workspace(struct repos *r, const char *session_id, const char *repo,
                            const char *workspace, char *source, int64_t *ms)
{
    return prepare_ws(r, session_id, repo, workspace, source, ms, NULL);
}

static int snapshot_and_prune(struct repos *r, const char *sid, const char *ws, const char *label,
                              int64_t turn, json_t **out)
{
    struct snap_store *ss = NULL;
    struct snap_info si;
    int rc = open_session_store(r, sid, &ss);
    if (rc == 0) {
        rc = snap_create(ss, ws, label, &si);
    }
    if (rc == 0) {
        snap_prune(ss, r->cfg.snapshot_keep, (uint64_t)r->cfg.snapshot_quota, NULL);
        json_t *ev = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "snapshot_id", si.id, "turn",
                               (json_int_t)turn, "files", (json_int_t)si.files, "bytes",
                               (json_int_t)si.bytes, "hashed", (json_int_t)si.hashed, "ms",
                               (json_int_t)(si.duration_us / 1000));
        if (out) {
            *out = json_deep_copy(ev);
        }
        emit(r, sid, "session.snapshot", ev);
    } else {
        LOG_WARN("repos: snapshot of session %s failed: %s", sid, err_str(rc));
    }
    snap_store_close(ss);
    return rc;
}

int repos_snapshot(struct repos *r, const char *session_id, const char *workspace,
                   const char *label, json_t **out)
{
    json_t *row = NULL;
    int64_t turn = 0;
    if (out) {
        *out = NULL;
    }
    int rc = util_valid_id(session_id) ? wait_quiet(r, session_id) : ERR_INVALID;
    if (rc != 0) {
        return rc;
    }
    if (session_row(r, session_id, &row) == 0) {
        turn = json_integer_value(json_object_get(row, "turn"));
    }
    json_decref(row);
    return snapshot_and_prune(r, session_id, workspace, label ? label : "manual", turn, out);
}

/* Plain ASCII local part from a user id ("token:alice" -> "token-alice"). */
static char *noreply_email(const char *id)
{
    struct buf b;
    buf_init(&b, 0);
    for (const char *p = id ? id : "user"; *p && b.len < 60; p++) {
        char c = *p;
        buf_putc(&b, ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_')
                         ? c
                         : '-');
    }
    buf_puts(&b, "@users.noreply.sessiond");
    return buf_detach(&b, NULL);
}

int repos_after_prompt(struct repos *r, const char *session_id, const char *workspace,
                       const char *prompt_id, const struct author *who, const char *prompt_text,
                       json_t **out)
{
    json_t *row = NULL, *commit = json_null(), *snapj = NULL;
    int64_t turn = 0;
    char label[64];
    if (out) {
        *out = NULL;
    }
    if (!util_valid_id(session_id)) {
        return ERR_INVALID;
    }
    int has_repo = session_row(r, session_id, &row) == 0;
    if (has_repo) {
        const char *args[] = {session_id};
        db_exec_text(r, "UPDATE session_repos SET turn=turn+1 WHERE session_id=?", 1, args, NULL);
        turn = json_integer_value(json_object_get(row, "turn")) + 1;
        const char *branch = json_string_value(json_object_get(row, "branch"));
        const char *name = who && who->name && who->name[0] ? who->name
                           : who && who->id                 ? who->id
                                                            : "sessiond";
        char *email = who && who->email && who->email[0] ? xstrdup(who->email)
                                                         : noreply_email(who ? who->id : NULL);
        struct gitx_ident id = {name, email};
        /* Without a stored token of their own, the push will use the app token: name the
         * author in a trailer so that the host credits them. */
        char *sealed = NULL;
        int own = who && who->id && repos_cred_get(r, who->id, "github", &sealed) == 0;
        free(sealed);
        char *msg = gitx_message(prompt_text, own ? NULL : &id);
        char sha[41];
        int committed = 0;
        size_t nfiles = 0;
        char *shared = shared_if_any(r, json_string_value(json_object_get(row, "repo")));
        /* in the helper, as the sandbox user: what it writes is the sandbox user's already */
        int rc =
            gitjob_commit_n(&r->git, workspace, shared, branch, &id, msg, sha, &committed, &nfiles);
        free(shared);
        if (rc == 0 && committed) {
            json_decref(commit);
            commit = json_pack("{s:s, s:s, s:{s:s, s:s}, s:I, s:s?}", "sha", sha, "branch", branch,
                               "author", "name", name, "email", email, "files", (json_int_t)nfiles,
                               "prompt_id", prompt_id);
            emit(r, session_id, "git.commit", json_deep_copy(commit));
        } else if (rc != 0) {
            LOG_WARN("repos: commit in session %s failed: %s", session_id, err_str(rc));
        }
        free(msg);
        free(email);
    } else {
        /* no repository: count turns by snapshots */
        struct snap_store *ss = NULL;
        json_t *list = NULL;
        if (open_session_store(r, session_id, &ss) == 0 && snap_list(ss, &list) == 0) {
            size_t n = json_array_size(list);
            const char *last =
                n ? json_string_value(json_object_get(json_array_get(list, n - 1), "label")) : NULL;
            int64_t t = 0;
            if (last && strncmp(last, "turn ", 5) == 0) {
                util_parse_i64(last + 5, &t);
            }
            turn = t + 1;
        }
        json_decref(list);
        snap_store_close(ss);
    }
    snprintf(label, sizeof(label), "turn %lld", (long long)turn);
    int rc = snapshot_and_prune(r, session_id, workspace, label, turn, &snapj);
    if (out) {
        *out = json_pack("{s:O?, s:I, s:o}", "snapshot_id",
                         snapj ? json_object_get(snapj, "snapshot_id") : NULL, "turn",
                         (json_int_t)turn, "commit", commit);
        commit = NULL;
    }
    json_decref(commit);
    json_decref(snapj);
    json_decref(row);
    return rc;
}

int repos_snapshots(struct repos *r, const char *session_id, json_t **out)
{
    struct snap_store *ss = NULL;
    json_t *list = NULL;
    *out = NULL;
    int rc = open_session_store(r, session_id, &ss);
    if (rc == 0) {
        rc = snap_list(ss, &list);
    }
    snap_store_close(ss);
    if (rc == 0) {
        *out = json_pack("{s:o}", "snapshots", list);
    }
    return rc;
}

int repos_rollback(struct repos *r, const char *session_id, const char *snapshot_id,
                   const char *workspace, json_t **out)
{
    struct snap_store *ss = NULL;
    struct snap_restore_info ri;
    if (out) {
        *out = NULL;
    }
    if (!snap_valid_id(snapshot_id)) {
        return ERR_NOT_FOUND;
    }
    int rc = wait_quiet(r, session_id); /* not under a sync or the last turn's snapshot */
    struct stat wst;
    int owned = r->git.owner_lo > 0 && stat(workspace, &wst) == 0 &&
                (int64_t)wst.st_uid >= r->git.owner_lo && (int64_t)wst.st_uid <= r->git.owner_hi;
    if (rc == 0) {
        rc = open_session_store(r, session_id, &ss);
    }
    if (rc == 0) {
        rc = snap_restore(ss, snapshot_id, workspace, &ri);
    }
    snap_store_close(ss);
    if (rc == 0 && owned) {
        /* the restore wrote the owners the snapshot recorded (maybe the uid of an earlier
         * sandbox of this session): the tree goes back to the running sandbox's uid */
        struct gitjob_cfg gc = r->git;
        gc.uid = gc.gid = (int)wst.st_uid;
        gc.owner_lo = gc.owner_hi = 0;
        gitjob_chown(&gc, workspace);
    }
    if (rc == 0) {
        json_t *ev = json_pack("{s:s, s:I, s:I, s:I, s:I}", "snapshot_id", snapshot_id, "copied",
                               (json_int_t)ri.copied, "kept", (json_int_t)ri.kept, "removed",
                               (json_int_t)ri.removed, "ms", (json_int_t)(ri.duration_us / 1000));
        if (out) {
            *out = json_deep_copy(ev);
        }
        emit(r, session_id, "session.rollback", ev);
    }
    return rc;
}

int repos_push(struct repos *r, const char *session_id, const char *workspace, const char *token,
               json_t **out)
{
    json_t *row = NULL;
    char sha[41] = "";
    char *cur = NULL, *shared = NULL;
    *out = NULL;
    int rc = session_row(r, session_id, &row);
    if (rc != 0) {
        return rc;
    }
    const char *url = json_string_value(json_object_get(row, "url"));
    const char *branch = json_string_value(json_object_get(row, "branch"));
    if (!url) {
        rc = ERR_NOT_FOUND; /* the repository was deleted */
        goto out;
    }
    struct gitx_cred cred = {"x-access-token", token};
    shared = shared_if_any(r, json_string_value(json_object_get(row, "repo")));
    rc = gitjob_push(&r->git, workspace, shared, url, branch, token ? &cred : NULL);
    if (rc != 0) {
        goto out;
    }
    if (gitjob_head(&r->git, workspace, shared, sha, &cur) != 0 || !cur ||
        strcmp(cur, branch) != 0) {
        sha[0] = 0; /* HEAD moved off the branch (the agent): report no sha */
    }
    const char *args[] = {sha[0] ? sha : NULL, session_id};
    db_exec_text(r, "UPDATE session_repos SET pushed_sha=? WHERE session_id=?", 2, args, NULL);
    *out = json_pack("{s:s, s:s?, s:s}", "branch", branch, "sha", sha[0] ? sha : NULL, "url", url);
    emit(r, session_id, "git.pushed", json_deep_copy(*out));
out:
    free(cur);
    free(shared);
    json_decref(row);
    return rc;
}

/* ---------------------------------------------------------------- credentials */

int repos_cred_put(struct repos *r, const char *user_id, const char *provider, const char *sealed)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r,
                     "INSERT INTO user_credentials(user_id, provider, sealed, updated_at) "
                     "VALUES(?,?,?,?) ON CONFLICT(user_id, provider) DO UPDATE SET "
                     "sealed=excluded.sealed, updated_at=excluded.updated_at",
                     &st);
    if (rc == 0) {
        bind_text(st, 1, user_id);
        bind_text(st, 2, provider);
        bind_text(st, 3, sealed);
        sqlite3_bind_int64(st, 4, clock_now_ms());
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    return rc;
}

int repos_cred_get(struct repos *r, const char *user_id, const char *provider, char **sealed)
{
    sqlite3_stmt *st = NULL;
    *sealed = NULL;
    pthread_mutex_lock(&r->dblock);
    int rc = db_prep(r, "SELECT sealed FROM user_credentials WHERE user_id=? AND provider=?", &st);
    if (rc == 0) {
        bind_text(st, 1, user_id);
        bind_text(st, 2, provider);
        if (sqlite3_step(st) == SQLITE_ROW && col_text(st, 0)) {
            *sealed = xstrdup(col_text(st, 0));
        } else {
            rc = ERR_NOT_FOUND;
        }
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dblock);
    return rc;
}

int repos_cred_delete(struct repos *r, const char *user_id, const char *provider)
{
    const char *args[] = {user_id, provider};
    int changes = 0;
    int rc = db_exec_text(r, "DELETE FROM user_credentials WHERE user_id=? AND provider=?", 2, args,
                          &changes);
    return rc == 0 && changes == 0 ? ERR_NOT_FOUND : rc;
}

/* ---------------------------------------------------------------- runner hooks */

static char *default_workspace(struct repos *r, const char *sid)
{
    return xasprintf("%s/workspaces/%s", r->data_dir, sid);
}

/* The registered repo a session names (its `repo` field: a name or a URL), or NULL. */
static char *session_repo_name(struct repos *r, const char *sid)
{
    json_t *row = NULL, *repo = NULL;
    char *name = NULL;
    if (!r->cfg.store || registry_session_get(store_registry(r->cfg.store), sid, &row) != 0) {
        return NULL;
    }
    const char *v = json_string_value(json_object_get(row, "repo"));
    if (v && *v) {
        if (util_valid_id(v) && repo_load(r, v, &repo) == 0) {
            name = xstrdup(v);
        } else {
            sqlite3_stmt *st = NULL;
            pthread_mutex_lock(&r->dblock);
            if (db_prep(r, "SELECT name FROM repos WHERE url=? ORDER BY name LIMIT 1", &st) == 0) {
                bind_text(st, 1, v);
                if (sqlite3_step(st) == SQLITE_ROW && col_text(st, 0)) {
                    name = xstrdup(col_text(st, 0));
                }
            }
            sqlite3_finalize(st);
            pthread_mutex_unlock(&r->dblock);
        }
    }
    json_decref(repo);
    json_decref(row);
    return name;
}

/* ---- issue 7: the egress list and default agent of a repository / a session's repository */

int repos_repo_policy(struct repos *r, const char *name, json_t **egress, char *agent, size_t n)
{
    json_t *row = NULL;
    if (egress) {
        *egress = NULL;
    }
    if (agent && n) {
        agent[0] = '\0';
    }
    int rc = repo_load(r, name, &row);
    if (rc != 0) {
        return rc;
    }
    if (egress) {
        *egress = json_incref(json_object_get(row, "egress"));
    }
    const char *a = json_string_value(json_object_get(row, "agent"));
    if (agent && n && a) {
        snprintf(agent, n, "%s", a);
    }
    json_decref(row);
    return 0;
}

int repos_session_policy(struct repos *r, const char *sid, json_t **egress, char *agent, size_t n)
{
    char *name = session_repo_name(r, sid);
    int rc = name ? repos_repo_policy(r, name, egress, agent, n) : ERR_NOT_FOUND;
    free(name);
    if (rc != 0) {
        if (egress) {
            *egress = json_array();
        }
        if (agent && n) {
            agent[0] = '\0';
        }
    }
    return 0;
}

void repos_hook_session_policy(const char *sid, json_t **egress, char *agent, size_t n)
{
    struct repos *r = hook_enter();
    if (!r) {
        if (egress) {
            *egress = json_array();
        }
        if (agent && n) {
            agent[0] = '\0';
        }
        return;
    }
    repos_session_policy(r, sid, egress, agent, n);
    hook_leave();
}

/* ---- the background workspace sync ---- */

/* The runner's "a sync ended" callback (repos_hook_set_synced_cb). g_cb_mu is held across a
 * call, so that unregistering waits for a call in progress. */
static pthread_mutex_t g_cb_mu = PTHREAD_MUTEX_INITIALIZER;
static void (*g_synced_cb)(void *arg, const char *sid);
static void *g_synced_arg;

void repos_hook_set_synced_cb(void (*cb)(void *arg, const char *sid), void *arg)
{
    pthread_mutex_lock(&g_cb_mu);
    g_synced_cb = cb;
    g_synced_arg = arg;
    pthread_mutex_unlock(&g_cb_mu);
}

struct bg_sync {
    struct repos *r;
    char sid[72];
    char *ws;
    struct sync_req q;
};

/* Wait on r->sync_cv (r->lock held) until deadline (mono ms) at most. */
static void sync_cv_wait_until(struct repos *r, int64_t deadline)
{
    int64_t left = deadline - clock_mono_ms();
    if (left <= 0) {
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ns = ts.tv_nsec + left * 1000000;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(&r->sync_cv, &r->lock, &ts);
}

static void *bg_sync_main(void *arg)
{
    struct bg_sync *b = arg;
    struct repos *r = b->r;
    char before[41] = "", head[41] = "";
    int rc = 0;
    /* Let the sandbox start first (sandbox.ready releases us), then the test delay. */
    pthread_mutex_lock(&r->lock);
    int64_t hold = clock_mono_ms() + SYNC_HOLD_MS;
    while (!r->closing && !json_object_get(r->released, b->sid) && clock_mono_ms() < hold) {
        sync_cv_wait_until(r, hold);
    }
    json_object_del(r->released, b->sid);
    int64_t t0 = clock_mono_us();
    int64_t until = clock_mono_ms() + r->cfg.sync_delay_ms;
    while (!r->closing && clock_mono_ms() < until) {
        sync_cv_wait_until(r, until);
    }
    int closing = r->closing;
    pthread_mutex_unlock(&r->lock);
    char *shared = closing ? NULL : session_shared(r, b->sid);
    if (!closing) {
        /* a restore (as root) may have made the workspace: the sandbox user's before git
         * runs as that user */
        chown_tree(r, b->ws);
    }
    if (closing) {
        rc = ERR_CANCELLED;
    } else if (b->q.url) {
        gitjob_head(&r->git, b->ws, shared, before, NULL);
        rc = gitjob_sync(&r->git, b->ws, shared, b->q.url, b->q.branch, NULL, head);
    }
    if (rc == 0) {
        /* the restore (and the reset) left stale stat data: refresh now, before the agent's
         * git or the first commit would re-read every file */
        int64_t t1 = clock_mono_us();
        int frc = gitjob_refresh_index(&r->git, b->ws, shared);
        LOG_INFO("repos: session %s: index refresh %lld ms (%s)", b->sid,
                 (long long)(clock_mono_us() - t1) / 1000, err_str(frc));
    }
    int64_t ms = (clock_mono_us() - t0) / 1000;
    if (rc == 0 && b->q.url) {
        emit(r, b->sid, "git.synced",
             json_pack("{s:s, s:s?, s:I}", "head", head, "previous", before[0] ? before : NULL,
                       "ms", (json_int_t)ms));
    } else if (rc != 0) {
        LOG_WARN("repos: session %s: workspace sync failed: %s", b->sid, err_str(rc));
        emit(r, b->sid, "git.sync_failed",
             json_pack("{s:s, s:I}", "error", err_str(rc), "ms", (json_int_t)ms));
    }
    LOG_INFO("repos: session %s: background %s done in %lld ms", b->sid,
             b->q.url ? "sync" : "index refresh", (long long)ms);
    free(shared);
    char sid[72];
    snprintf(sid, sizeof(sid), "%s", b->sid);
    free(b->ws);
    free(b->q.url);
    free(b->q.branch);
    free(b);
    pthread_mutex_lock(&r->lock);
    json_object_del(r->syncing, sid);
    pthread_cond_broadcast(&r->sync_cv);
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&g_cb_mu);
    if (g_synced_cb) {
        g_synced_cb(g_synced_arg, sid);
    }
    pthread_mutex_unlock(&g_cb_mu);
    pthread_mutex_lock(&r->lock);
    r->bg_syncs--; /* last touch of r: repos_close may free it after this */
    pthread_cond_broadcast(&r->pool_done);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Mark sid syncing and start the sync of ws described by q (taken over). */
static void start_bg_sync(struct repos *r, const char *sid, const char *ws, struct sync_req *q)
{
    struct bg_sync *b = xcalloc(1, sizeof(*b));
    b->r = r;
    snprintf(b->sid, sizeof(b->sid), "%s", sid);
    b->ws = xstrdup(ws);
    b->q = *q;
    memset(q, 0, sizeof(*q));
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&r->lock);
    json_object_set_new(r->syncing, sid, json_true());
    json_object_del(r->released, sid);
    r->bg_syncs++;
    pthread_mutex_unlock(&r->lock);
    if (pthread_create(&th, &at, bg_sync_main, b) != 0) {
        LOG_WARN("repos: session %s: cannot start the workspace sync thread", sid);
        pthread_mutex_lock(&r->lock);
        json_object_del(r->syncing, sid);
        r->bg_syncs--;
        pthread_cond_broadcast(&r->sync_cv);
        pthread_mutex_unlock(&r->lock);
        free(b->ws);
        free(b->q.url);
        free(b->q.branch);
        free(b);
    }
    pthread_attr_destroy(&at);
}

/* The shared object store a sandbox on workspace (session name) must see, or NULL. */
static char *shared_for(struct repos *r, const char *name, const char *workspace)
{
    char *out = NULL;
    /* Our own directories first: image builds and warm workspaces live under repos/<repo>/. */
    const char *roots[] = {r->data_dir, r->abs_data_dir};
    int matched = 0;
    for (int i = 0; i < 2 && workspace && !matched; i++) {
        size_t n = strlen(roots[i]);
        if (strncmp(workspace, roots[i], n) == 0 && strncmp(workspace + n, "/repos/", 7) == 0) {
            const char *p = workspace + n + 7;
            size_t len = strcspn(p, "/");
            if (len > 0 && len < 128 && p[len] == '/') {
                char repo[128];
                memcpy(repo, p, len);
                repo[len] = 0;
                out = shared_if_any(r, repo);
                matched = 1;
            }
        }
    }
    if (!matched && name && util_valid_id(name)) {
        out = session_shared(r, name);
    }
    return out;
}

char *repos_hook_shared_objects(const char *name, const char *workspace)
{
    struct repos *r = hook_enter();
    if (!r) {
        return NULL;
    }
    char *out = shared_for(r, name, workspace);
    hook_leave();
    return out;
}

struct sbx *repos_hook_take_sandbox(const char *sid)
{
    struct repos *r = hook_enter();
    struct sbx *s = NULL;
    if (r) {
        pthread_mutex_lock(&r->lock);
        for (struct handoff **pp = &r->handoffs; *pp; pp = &(*pp)->next) {
            if (strcmp((*pp)->sid, sid) == 0) {
                struct handoff *h = *pp;
                *pp = h->next;
                s = h->sbx;
                free(h);
                json_object_set_new(r->ready_src_sbx, sid, json_true()); /* for the event */
                break;
            }
        }
        pthread_mutex_unlock(&r->lock);
        hook_leave();
    }
    return s;
}

int repos_hook_syncing(const char *sid)
{
    struct repos *r = hook_enter();
    int on = 0;
    if (r) {
        pthread_mutex_lock(&r->lock);
        on = json_object_get(r->syncing, sid) != NULL;
        pthread_mutex_unlock(&r->lock);
        hook_leave();
    }
    return on;
}

int repos_hook_session_has_repo(const char *sid)
{
    struct repos *r = hook_enter();
    char *name = NULL;
    if (r) {
        name = util_valid_id(sid) ? session_repo_name(r, sid) : NULL;
        hook_leave();
    }
    int has = name != NULL;
    free(name);
    return has;
}

int repos_hook_sync_wait_ms(void)
{
    struct repos *r = hook_enter();
    int ms = 30000;
    if (r) {
        ms = r->cfg.sync_wait_ms;
        hook_leave();
    }
    return ms;
}

/* Wait (r->lock held) until sid is in none of the given sets, or the deadline. */
static int wait_not_in(struct repos *r, const char *sid, json_t *a, json_t *b, int timeout_ms)
{
    int64_t deadline = clock_mono_ms() + timeout_ms;
    for (;;) {
        if (r->closing) {
            return ERR_UNAVAILABLE;
        }
        if (!json_object_get(a, sid) && (!b || !json_object_get(b, sid))) {
            return 0;
        }
        if (clock_mono_ms() >= deadline) {
            return ERR_TIMEOUT;
        }
        sync_cv_wait_until(r, deadline);
    }
}

int repos_hook_wait_synced(const char *sid, int timeout_ms)
{
    struct repos *r = hook_enter();
    int rc = 0;
    if (r) {
        pthread_mutex_lock(&r->lock);
        rc = wait_not_in(r, sid, r->syncing, NULL,
                         timeout_ms < 0 ? r->cfg.sync_wait_ms : timeout_ms);
        pthread_mutex_unlock(&r->lock);
        hook_leave();
    }
    return rc;
}

/* Before a rollback or a manual snapshot: the session's sync and prompt end are over. */
static int wait_quiet(struct repos *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    int rc = wait_not_in(r, sid, r->syncing, r->ending, r->cfg.sync_wait_ms);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void repos_hook_sandbox_start(const char *sid)
{
    struct repos *r = hook_enter();
    if (!r) {
        return;
    }
    struct stat sb;
    char *ws = default_workspace(r, sid);
    char *name = NULL;
    /* One filler per session: a prompt and a files request may start the sandbox at once. */
    pthread_mutex_lock(&r->lock);
    while (json_object_get(r->preparing, sid)) {
        pthread_cond_wait(&r->prep_cv, &r->lock);
    }
    json_object_set_new(r->preparing, sid, json_true());
    pthread_mutex_unlock(&r->lock);
    /* An existing non-empty workspace is the session's state: leave it alone. */
    int empty = stat(ws, &sb) != 0;
    if (!empty && S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(ws);
        struct dirent *de;
        empty = 1;
        while (d && (de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                empty = 0;
                break;
            }
        }
        if (d) {
            closedir(d);
        }
    }
    if (empty && util_valid_id(sid)) {
        name = session_repo_name(r, sid);
    }
    if (name) {
        char source[16];
        int64_t ms = 0;
        struct sync_req q = {0};
        int rc = prepare_ws(r, sid, name, ws, source, &ms, &q);
        if (rc == 0) {
            pthread_mutex_lock(&r->lock);
            json_object_set_new(r->ready_src, sid, json_string(source));
            pthread_mutex_unlock(&r->lock);
            if (q.want) {
                start_bg_sync(r, sid, ws, &q); /* marked syncing before we return */
            }
        }
        free(q.url);
        free(q.branch);
        if (rc != 0) {
            LOG_WARN("repos: session %s: cannot prepare the workspace of %s: %s", sid, name,
                     err_str(rc));
        }
    }
    pthread_mutex_lock(&r->lock);
    json_object_del(r->preparing, sid);
    pthread_cond_broadcast(&r->prep_cv);
    pthread_mutex_unlock(&r->lock);
    free(name);
    free(ws);
    hook_leave();
}

char *repos_hook_ready_json(const char *sid, int64_t ms)
{
    char source[16] = "empty";
    int syncing = 0, pooled = 0;
    struct repos *r = hook_enter();
    if (r) {
        pthread_mutex_lock(&r->lock);
        pooled = json_object_get(r->ready_src_sbx, sid) != NULL;
        json_object_del(r->ready_src_sbx, sid);
        const char *s = json_string_value(json_object_get(r->ready_src, sid));
        if (s) {
            snprintf(source, sizeof(source), "%s", s);
            json_object_del(r->ready_src, sid);
        }
        syncing = json_object_get(r->syncing, sid) != NULL;
        if (syncing) {
            json_object_set_new(r->released, sid, json_true()); /* the sync may start */
            pthread_cond_broadcast(&r->sync_cv);
        }
        pthread_mutex_unlock(&r->lock);
        hook_leave();
    }
    return xasprintf("{\"source\":\"%s\",\"ms\":%lld,\"sandbox\":\"%s\"%s}", source, (long long)ms,
                     pooled ? "pool" : "new", syncing ? ",\"syncing\":true" : "");
}

struct prompt_row {
    const char *pid;
    char *author_id, *author_name, *author_email, *content;
};

static int read_prompt(sqlite3 *db, void *arg)
{
    struct prompt_row *p = arg;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT p.author_id, coalesce(p.author_name, m.author_name), "
                           "coalesce(p.author_email, m.author_email), m.content FROM prompts p "
                           "LEFT JOIN messages m ON m.id = p.message_id WHERE p.id=?",
                           -1, &st, NULL) != SQLITE_OK) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, p->pid, -1, SQLITE_STATIC);
    int rc = ERR_NOT_FOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        for (int i = 0; i < 4; i++) {
            const unsigned char *t = sqlite3_column_text(st, i);
            char *v = t ? xstrdup((const char *)t) : NULL;
            if (i == 0) {
                p->author_id = v;
            } else if (i == 1) {
                p->author_name = v;
            } else if (i == 2) {
                p->author_email = v;
            } else {
                p->content = v;
            }
        }
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

void repos_hook_prompt_end(const char *sid, const char *prompt_id)
{
    struct repos *r = hook_enter();
    if (!r) {
        return;
    }
    struct prompt_row p = {.pid = prompt_id};
    struct sess *s = NULL;
    struct stat sb;
    char *ws = default_workspace(r, sid);
    if (!util_valid_id(sid)) {
        free(ws);
        hook_leave();
        return;
    }
    pthread_mutex_lock(&r->lock);
    /* a prompt only runs after the sync; one that failed to start may not have waited */
    wait_not_in(r, sid, r->syncing, NULL, r->cfg.sync_wait_ms);
    json_object_set_new(r->ending, sid, json_true());
    pthread_mutex_unlock(&r->lock);
    if (r->cfg.store && stat(ws, &sb) == 0 && store_session_get(r->cfg.store, sid, &s) == 0) {
        int rc = sess_read(s, read_prompt, &p);
        sess_put(s);
        if (rc == 0) {
            struct author a = {p.author_id, p.author_name, p.author_email};
            repos_after_prompt(r, sid, ws, prompt_id, &a, p.content, NULL);
        }
    }
    pthread_mutex_lock(&r->lock);
    json_object_del(r->ending, sid);
    pthread_cond_broadcast(&r->sync_cv);
    pthread_mutex_unlock(&r->lock);
    free(p.author_id);
    free(p.author_name);
    free(p.author_email);
    free(p.content);
    free(ws);
    hook_leave();
}

struct bg_snap {
    struct repos *r;
    char sid[72];
};

static void *bg_snap_main(void *arg)
{
    struct bg_snap *b = arg;
    struct repos *r = b->r;
    char *ws = default_workspace(r, b->sid);
    struct stat sb;
    json_t *row = NULL;
    int st = r->cfg.store ? registry_session_get(store_registry(r->cfg.store), b->sid, &row)
                          : ERR_NOT_FOUND;
    json_decref(row);
    if (st == ERR_GONE || st == ERR_NOT_FOUND) {
        /* purged: its snapshots and repository state go with it */
        char *dir = session_snap_dir(r, b->sid);
        util_rm_rf(dir);
        free(dir);
        const char *args[] = {b->sid};
        db_exec_text(r, "DELETE FROM session_repos WHERE session_id=?", 1, args, NULL);
    } else if (stat(ws, &sb) == 0) {
        repos_snapshot(r, b->sid, ws, "session end", NULL);
    }
    free(ws);
    free(b);
    pthread_mutex_lock(&r->lock);
    r->bg_snapshots--;
    pthread_cond_broadcast(&r->pool_done);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

void repos_hook_session_end(const char *sid)
{
    struct repos *r = hook_enter();
    if (!r) {
        return;
    }
    if (util_valid_id(sid)) {
        struct bg_snap *b = xcalloc(1, sizeof(*b));
        b->r = r;
        snprintf(b->sid, sizeof(b->sid), "%s", sid);
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_mutex_lock(&r->lock);
        r->bg_snapshots++;
        pthread_mutex_unlock(&r->lock);
        if (pthread_create(&th, &at, bg_snap_main, b) != 0) {
            pthread_mutex_lock(&r->lock);
            r->bg_snapshots--;
            pthread_mutex_unlock(&r->lock);
            free(b);
        }
        pthread_attr_destroy(&at);
    }
    hook_leave();
}
