/*
 * pr_pull.c - pushes that someone else makes to a session's pull request branch: a reviewer's
 * fix, a suggestion applied on GitHub. The webhook (push) or the poller (the pull request's
 * head moved) marks the session "remote ahead"; before its next prompt the runner asks for the
 * pull (repos_pull_begin), which fetches the branch into the workspace and fast-forwards it
 * on a thread of its own while the prompt waits like for a workspace sync (repos_syncing).
 * A branch that went both ways is left alone: pr.push_failed says so and the workspace keeps
 * what the agent made.
 *
 * Threads: repos__pr_remote_ahead from the webhook and the poller, repos_pull_begin from the
 * runner's control thread (non-blocking); the pull itself on a detached thread counted in
 * r->bg_syncs. r->remote_ahead is guarded by r->lock.
 */
#include "workspace/workspace_int.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/prs_db.h"
#include "workspace/ghapp.h"
#include "workspace/gitjob.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct pull {
    struct repos *r;
    char sid[72];
};

void repos__pr_remote_ahead(struct repos *r, const char *sid, const char *sha)
{
    if (!util_valid_id(sid)) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    json_object_set_new(r->remote_ahead, sid, json_string(sha ? sha : ""));
    pthread_mutex_unlock(&r->lock);
    LOG_INFO("repos: session %s: its pull request branch moved on the remote (%s): pulled before "
             "the next prompt",
             sid, sha ? sha : "?");
}

/* The installation token for url, else github.token, as for the automatic pull request; NULL
 * without either (a public repository is still readable). Caller wipes (ghapp_wipe). */
static char *pull_token(struct repos *r, const char *url)
{
    char *tok = NULL;
    if (ghapp_token_for_url(r->cfg.ghapp, url, NULL, &tok) != 0) {
        tok = NULL;
    }
    if (!tok && r->cfg.github_token && *r->cfg.github_token) {
        tok = xstrdup(r->cfg.github_token);
    }
    return tok;
}

static void pull_run(struct repos *r, const char *sid)
{
    json_t *row = NULL;
    char *ws = NULL, *shared = NULL, *tok = NULL;
    char remote[41] = "", local[41] = "";
    int moved = 0;
    int rc = repos__session_row(r, sid, &row);
    const char *url = json_string_value(json_object_get(row, "url"));
    const char *branch = json_string_value(json_object_get(row, "branch"));
    if (rc == 0 && (!url || !branch)) {
        rc = ERR_NOT_FOUND; /* the repository was deleted */
    }
    if (rc != 0) {
        goto out;
    }
    /* the previous prompt's end (its commit) goes first: the pull starts from that commit */
    pthread_mutex_lock(&r->lock);
    repos__wait_not_in(r, sid, r->ending, NULL, r->cfg.sync_wait_ms);
    pthread_mutex_unlock(&r->lock);
    ws = repos__default_workspace(r, sid);
    shared = repos__session_shared(r, sid);
    tok = pull_token(r, url);
    struct gitx_cred cred = {"x-access-token", tok};
    rc = gitjob_ff(&r->git, ws, shared, url, branch, tok ? &cred : NULL, remote, local, &moved);
    if (rc == 0) {
        /* the pull request's head as we now know it: the poller compares with it */
        prs_db_pushed(r->prs, sid, remote, clock_now_ms());
    }
    if (rc == 0 && moved) {
        repos__emit(
            r, sid, "pr.pulled",
            json_pack("{s:s, s:s, s:s}", "sha", remote, "previous", local, "branch", branch));
    } else if (rc != 0) {
        const char *reason = rc == ERR_CONFLICT        ? "not_fast_forward"
                             : rc == ERR_UNPROCESSABLE ? "local_changes"
                                                       : "fetch_failed";
        LOG_WARN("repos: session %s: the pull request branch was not pulled: %s (%s)", sid, reason,
                 err_str(rc));
        repos__emit(r, sid, "pr.push_failed",
                    json_pack("{s:s, s:s?, s:s?, s:s}", "reason", reason, "remote_sha",
                              remote[0] ? remote : NULL, "local_sha", local[0] ? local : NULL,
                              "error", err_str(rc)));
    }
out:
    ghapp_wipe(tok);
    free(shared);
    free(ws);
    json_decref(row);
}

static void *pull_main(void *arg)
{
    struct pull *p = arg;
    struct repos *r = p->r;
    char sid[72];
    snprintf(sid, sizeof(sid), "%s", p->sid);
    free(p);
    pull_run(r, sid);
    repos__sync_end(r, sid);
    return NULL;
}

int repos_pull_begin(struct repos *rp, const char *sid)
{
    struct repos *r = repos__hook_enter(rp);
    int started = 0;
    if (!r) {
        return 0;
    }
    pthread_mutex_lock(&r->lock);
    int due = r->remote_ahead && json_object_get(r->remote_ahead, sid) != NULL &&
              !json_object_get(r->syncing, sid) && !r->closing;
    if (due) {
        json_object_del(r->remote_ahead, sid);
        json_object_set_new(r->syncing, sid, json_true());
        r->bg_syncs++;
    }
    pthread_mutex_unlock(&r->lock);
    if (due) {
        struct pull *p = xcalloc(1, sizeof(*p));
        p->r = r;
        snprintf(p->sid, sizeof(p->sid), "%s", sid);
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, pull_main, p) == 0) {
            started = 1;
        } else {
            LOG_WARN("repos: session %s: cannot start the pull thread", sid);
            free(p);
            pthread_mutex_lock(&r->lock);
            json_object_del(r->syncing, sid);
            r->bg_syncs--;
            pthread_cond_broadcast(&r->sync_cv);
            pthread_cond_broadcast(&r->pool_done);
            pthread_mutex_unlock(&r->lock);
        }
        pthread_attr_destroy(&at);
    }
    repos__hook_leave(r);
    return started;
}
