/*
 * repos.c - the repository layer's instance (open, shutdown, close), the registry of
 * repositories (create, update, delete, the egress policy and default agent), users' sealed
 * credentials, and the helpers the other files of the layer share (workspace_int.h).
 * repos.h holds the layout under <data_dir> and the contracts.
 *
 * Threads: the repository tables are reached through r->db (storage/repos_db.h, thread
 * safe). r->lock guards the warm list, the build queue and the flags; it is never held
 * across file system or network work: entries are unlinked under the lock, then worked on.
 * The runner's calls enter through repos__hook_enter(), which repos_shutdown() closes and
 * waits on; lock order: hook_mu, runner_mu and lock are never held together, except
 * runner_mu around a runner callback that takes the runner's own locks.
 */
#include "workspace/workspace_int.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/egress/egress.h"
#include "sandbox/sbx.h"
#include "sandbox/wsdisk.h"
#include "storage/registry.h"
#include "storage/repos_db.h"
#include "storage/store.h"
#include "workspace/git.h"
#include "workspace/gitjob.h"
#include "workspace/snap/snap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The runner's calls (repos.h "calls of the runner") enter the instance: r, or NULL when
 * there is none or repos_shutdown() has begun, when the call answers as if there were no
 * repository layer. repos_shutdown() waits for the calls inside to leave. */
struct repos *repos__hook_enter(struct repos *r)
{
    if (!r) {
        return NULL;
    }
    pthread_mutex_lock(&r->hook_mu);
    int in = !r->shut;
    if (in) {
        r->hooks_in++;
    }
    pthread_mutex_unlock(&r->hook_mu);
    return in ? r : NULL;
}

void repos__hook_leave(struct repos *r)
{
    pthread_mutex_lock(&r->hook_mu);
    r->hooks_in--;
    pthread_cond_broadcast(&r->hook_cv);
    pthread_mutex_unlock(&r->hook_mu);
}

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
void repos__chown_tree(struct repos *r, const char *dir)
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
void repos__emit(struct repos *r, const char *sid, const char *type, json_t *data)
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

/* The repo row as JSON. */
int repos__repo_load(struct repos *r, const char *name, json_t **out)
{
    return repos_db_repo_get(r->db, name, out);
}

/* Check the fields of spec (create: all required ones present; else a patch). */
static int validate(json_t *spec, int create, char *msg, size_t n)
{
    static const char *const known[] = {
        "name",        "url",       "default_branch",     "setup",  "hints",
        "description", "pool_size", "image_interval_min", "egress", "agent",
        "pr",          NULL};
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
    v = json_object_get(spec, "pr");
    if (v && repos_pr_mode_parse(json_string_value(v), NULL) != 0) {
        set_msg(msg, n, "%s", "pr must be \"off\", \"draft\" or \"ready\"");
        return ERR_INVALID;
    }
    return 0;
}

/* Check the egress list and the default agent of spec (what its sessions may reach and run).
 * *egress_out = the normalised, de-duplicated list when spec has one (caller decrefs), else NULL.
 */
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

/* Write the full row j (validated) with INSERT (create) or UPDATE. */
static int repo_store(struct repos *r, json_t *j, int create)
{
    return repos_db_repo_put(r->db, j, create, clock_now_ms());
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
    /* new repositories get draft pull requests; rows from before the setting keep "off" */
    json_t *j = json_pack("{s:s, s:[], s:[], s:s, s:i, s:i, s:s}", "default_branch", "main",
                          "setup", "hints", "description", "", "pool_size", 2, "image_interval_min",
                          30, "pr", "draft");
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
        repos__kick_pool(r); /* first image build, pool */
        if (out) {
            rc = repos__repo_load(r, json_string_value(json_object_get(spec, "name")), out);
        }
    }
    return rc;
}

int repos_get(struct repos *r, const char *name, json_t **out)
{
    return repos__repo_load(r, name, out);
}

int repos_list(struct repos *r, json_t **out)
{
    json_t *arr = NULL;
    *out = NULL;
    int rc = repos_db_repo_list(r->db, &arr);
    if (rc == 0) {
        *out = json_pack("{s:o}", "repos", arr);
    }
    return rc;
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
        rc = repos__repo_load(r, name, &cur);
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
        repos__kick_pool(r);
        if (out) {
            rc = repos__repo_load(r, name, out);
        }
    }
    return rc;
}

char *repos__repo_dir(struct repos *r, const char *name, const char *sub)
{
    return sub ? xasprintf("%s/repos/%s/%s", r->data_dir, name, sub)
               : xasprintf("%s/repos/%s", r->data_dir, name);
}

/* The objects directory of repo's shared object store (docs/repos.md "Shared object store"):
 * an absolute path, since it is written into workspaces' alternates files and bound at the same
 * path inside sandboxes. Caller frees. */
char *repos__shared_objects(struct repos *r, const char *repo)
{
    return xasprintf("%s/repos/%s/objects.git/objects", r->abs_data_dir, repo);
}

/* repos__shared_objects() if that store exists (its repo has built an image since stores exist),
 * else NULL: what the gitx_* calls on a workspace of repo get. Caller frees. */
char *repos__shared_if_any(struct repos *r, const char *repo)
{
    struct stat sb;
    if (!repo || !util_valid_id(repo)) {
        return NULL;
    }
    char *p = repos__shared_objects(r, repo);
    if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        free(p);
        return NULL;
    }
    return p;
}

/* repos__shared_if_any() of the repository session sid was prepared from. Caller frees. */
char *repos__session_shared(struct repos *r, const char *sid)
{
    char *repo = NULL;
    repos_db_session_repo(r->db, sid, &repo);
    char *p = repos__shared_if_any(r, repo);
    free(repo);
    return p;
}

int repos_delete(struct repos *r, const char *name)
{
    if (!util_valid_id(name)) {
        return ERR_NOT_FOUND;
    }
    int rc = repos_db_repo_delete(r->db, name); /* its images are marked deleted too */
    if (rc != 0) {
        return rc;
    }
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
        wsdisk_remove(r->disk, w->dir); /* a disk of its own (wsdisk.h): its mount first */
        free(w->repo);
        free(w->dir);
        free(w->image_id);
        free(w);
    }
    /* Everything but the shared object store: the workspaces and snapshots of its sessions
     * (which outlive the repository) still borrow objects from it (docs/repos.md). */
    char *dir = repos__repo_dir(r, name, NULL);
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

int repos_open(const struct repos_config *cfg, struct repos **out)
{
    struct repos *r = xcalloc(1, sizeof(*r));
    int rc = 0;
    *out = NULL;
    r->cfg = *cfg;
    snap_ctx_new(&r->snap);
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
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->hook_mu, NULL);
    pthread_cond_init(&r->hook_cv, NULL);
    pthread_mutex_init(&r->runner_mu, NULL);
    pthread_cond_init(&r->cond, NULL);
    pthread_cond_init(&r->pool_done, NULL);
    pthread_cond_init(&r->sync_cv, NULL);
    r->syncing = json_object();
    r->remote_ahead = json_object();
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
    if (!cfg->store) {
        LOG_ERROR("repos: no store (registry.db holds the repository tables)");
        rc = ERR_INVALID;
    } else {
        rc = repos_db_open(store_registry(cfg->store), &r->db);
    }
    if (rc == 0) {
        rc = repos__pr_start(r);
    }
    if (rc == 0) {
        rc = repos__hook_start(r);
    }
    if (rc == 0) {
        /* Builds interrupted by a stop or a crash will never finish. */
        repos_db_image_interrupt(r->db, "interrupted by a server restart");
        char *warm_glob = xasprintf("%s/repos", r->data_dir);
        util_mkdir_p(warm_glob, 0700);
        free(warm_glob);
        char *abs = realpath(r->data_dir, NULL);
        r->abs_data_dir = abs ? xstrdup(abs) : xstrdup(r->data_dir);
        r->disk = sbx_backend_disk(cfg->sbx);
        free(abs);
    }
    if (rc == 0 && !cfg->no_threads) {
        if (pthread_create(&r->builder, NULL, repos__builder_main, r) == 0) {
            r->threads |= 1;
        }
        if (pthread_create(&r->pooler, NULL, repos__pool_main, r) == 0) {
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
    *out = r;
    return 0;
}

void repos_shutdown(struct repos *r)
{
    if (!r) {
        return;
    }
    pthread_mutex_lock(&r->hook_mu);
    int again = r->shut;
    r->shut = 1; /* the runner's calls from now on answer "no repository" */
    pthread_mutex_unlock(&r->hook_mu);
    if (again) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->closing = 1; /* calls waiting for a sync give up now */
    pthread_cond_broadcast(&r->sync_cv);
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&r->hook_mu);
    while (r->hooks_in > 0) {
        pthread_cond_wait(&r->hook_cv, &r->hook_mu);
    }
    pthread_mutex_unlock(&r->hook_mu);
    pthread_mutex_lock(&r->lock);
    __atomic_store_n(&r->stopping, 1, __ATOMIC_RELAXED); /* also read by GitHub calls (pr.c) */
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
    repos__hook_stop(r); /* the poller's API call in progress is cancelled like the workers' */
    repos__pr_stop(r);   /* a push or API call in progress ends first (cancelled or timed out) */
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
        repos__warm_free(r, w);
    }
    if (r->db) {
        repos_db_image_interrupt(r->db, "interrupted by a server stop");
    }
}

void repos_close(struct repos *r)
{
    if (!r) {
        return;
    }
    repos_shutdown(r);
    repos__hook_free(r);
    repos__pr_free(r);
    repos_db_close(r->db);
    json_decref(r->ready_src);
    json_decref(r->preparing);
    json_decref(r->syncing);
    json_decref(r->remote_ahead);
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
    pthread_mutex_destroy(&r->hook_mu);
    pthread_cond_destroy(&r->hook_cv);
    pthread_mutex_destroy(&r->runner_mu);
    snap_ctx_free(r->snap); /* no store is open any more: joins the spares' threads */
    free(r->data_dir);
    free(r->abs_data_dir);
    free(r->ca_file);
    free(r->git_bin);
    free(r);
}

char *repos__session_snap_dir(struct repos *r, const char *sid)
{
    return xasprintf("%s/snapshots/%s", r->data_dir, sid);
}

int repos__open_session_store(struct repos *r, const char *sid, struct snap_store **out)
{
    if (!util_valid_id(sid)) {
        return ERR_INVALID;
    }
    char *dir = repos__session_snap_dir(r, sid);
    int rc = snap_store_open(r->snap, dir, out);
    free(dir);
    return rc;
}

int repos_discard_tree(struct repos *r, const char *path)
{
    return snap_discard_tree(r ? r->snap : NULL, path);
}

/* The session's repo row joined with the repo: repo, branch, url, default_branch. */
int repos__session_row(struct repos *r, const char *sid, json_t **out)
{
    return repos_db_session_get(r->db, sid, out);
}

int repos_session_info(struct repos *r, const char *session_id, json_t **out)
{
    return repos__session_row(r, session_id, out);
}

int repos_session_set_pr(struct repos *r, const char *session_id, const char *url)
{
    return repos_db_session_set_pr(r->db, session_id, url);
}

int repos_cred_put(struct repos *r, const char *user_id, const char *provider, const char *sealed)
{
    return repos_db_cred_put(r->db, user_id, provider, sealed, clock_now_ms());
}

int repos_cred_get(struct repos *r, const char *user_id, const char *provider, char **sealed)
{
    return repos_db_cred_get(r->db, user_id, provider, sealed);
}

int repos_cred_delete(struct repos *r, const char *user_id, const char *provider)
{
    return repos_db_cred_delete(r->db, user_id, provider);
}

char *repos__default_workspace(struct repos *r, const char *sid)
{
    return xasprintf("%s/workspaces/%s", r->data_dir, sid);
}

/* The registered repo a session names (its `repo` field: a name or a URL), or NULL. */
char *repos__session_repo_name(struct repos *r, const char *sid)
{
    json_t *row = NULL, *repo = NULL;
    char *name = NULL;
    if (!r->cfg.store || registry_session_get(store_registry(r->cfg.store), sid, &row) != 0) {
        return NULL;
    }
    const char *v = json_string_value(json_object_get(row, "repo"));
    if (v && *v) {
        if (util_valid_id(v) && repos__repo_load(r, v, &repo) == 0) {
            name = xstrdup(v);
        } else {
            repos_db_repo_by_url(r->db, v, &name);
        }
    }
    json_decref(repo);
    json_decref(row);
    return name;
}

/* list (an array, or NULL for a new one) plus the server-wide egress.default entries it lacks:
 * every sandbox may reach those. Returns the array (a new reference). */
static json_t *with_defaults(const struct repos *r, json_t *list)
{
    json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        json_array_append(out, v);
    }
    for (size_t d = 0; d < r->cfg.n_egress_default; d++) {
        int dup = 0;
        json_array_foreach(out, i, v)
        {
            const char *sv = json_string_value(v);
            dup |= sv && strcmp(sv, r->cfg.egress_default[d]) == 0;
        }
        if (!dup) {
            json_array_append_new(out, json_string(r->cfg.egress_default[d]));
        }
    }
    return out;
}

int repos_repo_policy(struct repos *r, const char *name, json_t **egress, char *agent, size_t n)
{
    json_t *row = NULL;
    if (egress) {
        *egress = NULL;
    }
    if (agent && n) {
        agent[0] = '\0';
    }
    int rc = repos__repo_load(r, name, &row);
    if (rc != 0) {
        return rc;
    }
    if (egress) {
        *egress = with_defaults(r, json_object_get(row, "egress"));
    }
    const char *a = json_string_value(json_object_get(row, "agent"));
    if (agent && n && a) {
        snprintf(agent, n, "%s", a);
    }
    json_decref(row);
    return 0;
}

int repos_session_policy(struct repos *rp, const char *sid, json_t **egress, char *agent, size_t n)
{
    struct repos *r = repos__hook_enter(rp);
    char *name = r ? repos__session_repo_name(r, sid) : NULL;
    int rc = name ? repos_repo_policy(r, name, egress, agent, n) : ERR_NOT_FOUND;
    free(name);
    if (r) {
        repos__hook_leave(r);
    }
    if (rc != 0) {
        if (egress) {
            *egress = r ? with_defaults(r, NULL) : json_array();
        }
        if (agent && n) {
            agent[0] = '\0';
        }
    }
    return 0;
}

void repos_set_runner(struct repos *r, const struct repos_runner *ops)
{
    if (!r) {
        return;
    }
    pthread_mutex_lock(&r->runner_mu);
    if (ops) {
        r->runner = *ops;
    } else {
        memset(&r->runner, 0, sizeof(r->runner));
    }
    pthread_mutex_unlock(&r->runner_mu);
    if (ops && ops->make_sandbox) {
        repos__kick_pool(r); /* the pool's workspaces made so far get their sandboxes */
    }
}

/* The shared object store a sandbox on workspace (session name) must see, or NULL. */
char *repos__shared_for(struct repos *r, const char *name, const char *workspace)
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
                out = repos__shared_if_any(r, repo);
                matched = 1;
            }
        }
    }
    if (!matched && name && util_valid_id(name)) {
        out = repos__session_shared(r, name);
    }
    return out;
}

char *repos_shared_objects(struct repos *rp, const char *name, const char *workspace)
{
    struct repos *r = repos__hook_enter(rp);
    if (!r) {
        return NULL;
    }
    char *out = repos__shared_for(r, name, workspace);
    repos__hook_leave(r);
    return out;
}
