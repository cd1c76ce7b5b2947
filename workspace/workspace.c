/*
 * workspace.c - a session's workspace after it started: the commit and snapshot that end each
 * prompt, manual snapshots, rollback, push, and the snapshot at the end of the session.
 *
 * Threads: calls that touch a workspace are serialized per session by the caller (repos.h);
 * a rollback or a manual snapshot waits for the session's sync and prompt end (wait_quiet).
 * End-of-session snapshots run on detached threads counted in r->bg_snapshots.
 */
#include "workspace/workspace_int.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/redact.h"
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

/* Before a rollback or a manual snapshot: the session's sync and prompt end are over. */
static int wait_quiet(struct repos *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    int rc = repos__wait_not_in(r, sid, r->syncing, r->ending, r->cfg.sync_wait_ms);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static int snapshot_and_prune(struct repos *r, const char *sid, const char *ws, const char *label,
                              int64_t turn, json_t **out)
{
    struct snap_store *ss = NULL;
    struct snap_info si;
    int rc = repos__open_session_store(r, sid, &ss);
    if (rc == 0) {
        rc = snap_create(ss, ws, label, &si);
    }
    if (rc == 0) {
        snap_prune(ss, r->cfg.snapshot_keep, (uint64_t)r->cfg.snapshot_quota, NULL);
        json_t *ev = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "snapshot_id", si.id, "turn",
                               (json_int_t)turn, "files", (json_int_t)si.files, "bytes",
                               (json_int_t)si.bytes, "hashed", (json_int_t)si.hashed, "ms",
                               (json_int_t)(si.duration_us / 1000));
        if (si.too_deep + si.too_long + si.too_big > 0) {
            /* the tree went past the snapshot limits (docs/repos.md): say so, the session
             * goes on with what the snapshot holds */
            LOG_WARN("repos: snapshot %s of session %s left out %llu too deep, %llu too long, "
                     "%llu too big entries",
                     si.id, sid, (unsigned long long)si.too_deep, (unsigned long long)si.too_long,
                     (unsigned long long)si.too_big);
        }
        if (si.too_deep + si.too_long + si.too_big + si.special > 0) {
            json_object_set_new(
                ev, "omitted",
                json_pack("{s:I, s:I, s:I, s:I}", "too_deep", (json_int_t)si.too_deep, "too_long",
                          (json_int_t)si.too_long, "too_big", (json_int_t)si.too_big, "special",
                          (json_int_t)si.special));
        }
        if (out) {
            *out = json_deep_copy(ev);
        }
        repos__emit(r, sid, "session.snapshot", ev);
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
    if (repos__session_row(r, session_id, &row) == 0) {
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
    int has_repo = repos__session_row(r, session_id, &row) == 0;
    if (has_repo) {
        repos_db_session_next_turn(r->db, session_id);
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
        char *shared = repos__shared_if_any(r, json_string_value(json_object_get(row, "repo")));
        /* in the helper, as the sandbox user: what it writes is the sandbox user's already */
        json_t *paths = NULL;
        int rc = gitjob_commit_n(&r->git, workspace, shared, branch, &id, msg, sha, &committed,
                                 &nfiles, &paths);
        free(shared);
        if (rc == 0 && committed) {
            json_decref(commit);
            commit = json_pack("{s:s, s:s, s:{s:s, s:s}, s:I, s:s?}", "sha", sha, "branch", branch,
                               "author", "name", name, "email", email, "files", (json_int_t)nfiles,
                               "prompt_id", prompt_id);
            repos__emit(r, session_id, "git.commit", json_deep_copy(commit));
            /* the repository's `pr` setting: push and open or update the pull request, on a
             * worker (the next prompt does not wait for GitHub) */
            repos__pr_after_commit(r, session_id, json_string_value(json_object_get(row, "repo")),
                                   paths);
        } else if (rc != 0) {
            LOG_WARN("repos: commit in session %s failed: %s", session_id, err_str(rc));
        }
        json_decref(paths);
        free(msg);
        free(email);
    } else {
        /* no repository: count turns by snapshots */
        struct snap_store *ss = NULL;
        json_t *list = NULL;
        if (repos__open_session_store(r, session_id, &ss) == 0 && snap_list(ss, &list) == 0) {
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
    int rc = repos__open_session_store(r, session_id, &ss);
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
        rc = repos__open_session_store(r, session_id, &ss);
    }
    if (rc == 0 && stat(workspace, &wst) != 0 && wsdisk_enforced(r->disk)) {
        /* no workspace (never started, or purged files): a disk of its own, as a start makes */
        rc = wsdisk_make(r->disk, workspace);
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
        repos__emit(r, session_id, "session.rollback", ev);
    }
    return rc;
}

int repos_push(struct repos *r, const char *session_id, const char *workspace, const char *token,
               json_t **out)
{
    json_t *row = NULL;
    char sha[41] = "";
    char *cur = NULL, *shared = NULL;
    struct redact_set *scan = NULL;
    *out = NULL;
    int rc = repos__session_row(r, session_id, &row);
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
    const char *repo = json_string_value(json_object_get(row, "repo"));
    shared = repos__shared_if_any(r, repo);
    /* The repository's secrets must not leave in what is pushed (a setup step that wrote an
     * .npmrc into the image, an agent that pasted a token into a file). */
    if (r->cfg.secrets && r->cfg.secrets(r->cfg.secrets_ctx, session_id, repo, &scan) != 0) {
        rc = ERR_UNAVAILABLE; /* a push that cannot be checked is not made */
        goto out;
    }
    struct gitjob_blocked blocked = {0};
    rc = gitjob_push(&r->git, workspace, shared, url, branch, token ? &cred : NULL, scan, &blocked);
    if (rc == ERR_UNPROCESSABLE && blocked.secret[0]) {
        LOG_WARN("repos: session %s: push blocked: the secret %s is in %s", session_id,
                 blocked.secret, blocked.path[0] ? blocked.path : "a commit message");
        repos__emit(r, session_id, "git.push_blocked",
                    json_pack("{s:s, s:s}", "secret", blocked.secret, "path", blocked.path));
        *out = json_pack("{s:s, s:s}", "secret", blocked.secret, "path", blocked.path);
    }
    if (rc != 0) {
        goto out;
    }
    if (gitjob_head(&r->git, workspace, shared, sha, &cur) != 0 || !cur ||
        strcmp(cur, branch) != 0) {
        sha[0] = 0; /* HEAD moved off the branch (the agent): report no sha */
    }
    repos_db_session_set_pushed(r->db, session_id, sha[0] ? sha : NULL);
    *out = json_pack("{s:s, s:s?, s:s}", "branch", branch, "sha", sha[0] ? sha : NULL, "url", url);
    repos__emit(r, session_id, "git.pushed", json_deep_copy(*out));
out:
    redact_set_unref(scan);
    free(cur);
    free(shared);
    json_decref(row);
    return rc;
}

void repos_prompt_end(struct repos *rp, const char *sid, const char *prompt_id)
{
    struct repos *r = repos__hook_enter(rp);
    if (!r) {
        return;
    }
    struct repos_db_prompt p = {0};
    struct sess *s = NULL;
    struct stat sb;
    char *ws = repos__default_workspace(r, sid);
    if (!util_valid_id(sid)) {
        free(ws);
        repos__hook_leave(r);
        return;
    }
    pthread_mutex_lock(&r->lock);
    /* a prompt only runs after the sync; one that failed to start may not have waited */
    repos__wait_not_in(r, sid, r->syncing, NULL, r->cfg.sync_wait_ms);
    json_object_set_new(r->ending, sid, json_true());
    pthread_mutex_unlock(&r->lock);
    if (r->cfg.store && stat(ws, &sb) == 0 && store_session_get(r->cfg.store, sid, &s) == 0) {
        int rc = repos_db_prompt_read(s, prompt_id, &p);
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
    repos__gh_prompt_end(r, sid, prompt_id); /* a pull request comment's prompt: the answer */
    repos_db_prompt_free(&p);
    free(ws);
    repos__hook_leave(r);
}

struct bg_snap {
    struct repos *r;
    char sid[72];
};

static void *bg_snap_main(void *arg)
{
    struct bg_snap *b = arg;
    struct repos *r = b->r;
    char *ws = repos__default_workspace(r, b->sid);
    struct stat sb;
    json_t *row = NULL;
    int st = r->cfg.store ? registry_session_get(store_registry(r->cfg.store), b->sid, &row)
                          : ERR_NOT_FOUND;
    json_decref(row);
    if (st == ERR_GONE || st == ERR_NOT_FOUND) {
        /* purged: its snapshots and repository state go with it */
        char *dir = repos__session_snap_dir(r, b->sid);
        util_rm_rf(dir);
        free(dir);
        repos_db_session_delete(r->db, b->sid);
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

void repos_session_end(struct repos *rp, const char *sid)
{
    struct repos *r = repos__hook_enter(rp);
    if (!r) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    json_object_del(r->remote_ahead, sid); /* no next prompt to pull for */
    pthread_mutex_unlock(&r->lock);
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
    repos__hook_leave(r);
}
