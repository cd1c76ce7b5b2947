/*
 * remote.c - the repository layer's clones and fetches with the GitHub App's credentials
 * (ghapp.h): an installation token when the app covers the URL (its own host, installed for
 * the repository), none otherwise; a token the remote refuses is renewed once and the
 * operation retried, so a token that expired mid-session costs one retry, not a failure.
 *
 * Threads: any (ghapp and the gitx_/gitjob_ calls are thread safe). The token is wiped as soon
 * as the operation ends; it reaches the sessiond-git helper only in its request on stdin.
 */
#include "workspace/workspace_int.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "workspace/ghapp.h"

#include <string.h>

enum remote_op { OP_SYNC, OP_CLONE, OP_MIRROR };

struct remote_job {
    enum remote_op op;
    const char *dir; /* the workspace (sync, clone) or the bare store (mirror) */
    const char *shared;
    const char *url;
    const char *branch;
    char *head; /* 41 bytes or NULL */
};

static int run_op(struct repos *r, const struct remote_job *j, const struct gitx_cred *cred)
{
    switch (j->op) {
    case OP_SYNC:
        return gitjob_sync(&r->git, j->dir, j->shared, j->url, j->branch, cred, j->head);
    case OP_CLONE:
        return gitx_clone(j->url, j->branch, j->dir, cred, j->head);
    case OP_MIRROR:
        return gitx_mirror_fetch(j->dir, j->url, j->branch, cred, j->head);
    }
    return ERR_INTERNAL;
}

/* Run j with the app's token for its URL, renewing the token once if the remote refuses it.
 * Without a token (no app, another host, not installed, GitHub unreachable) it runs without
 * credentials: a public repository is still readable. */
static int run_with_app(struct repos *r, const struct remote_job *j)
{
    char *tok = NULL;
    int rc = 0;
    for (int attempt = 0;; attempt++) {
        char *stale = tok;
        tok = NULL;
        if (ghapp_token_for_url(r->cfg.ghapp, j->url, stale, &tok) != 0) {
            tok = NULL; /* logged there */
        }
        ghapp_wipe(stale);
        struct gitx_cred cred = {"x-access-token", tok};
        rc = run_op(r, j, tok ? &cred : NULL);
        if (rc != ERR_AUTH || !tok || attempt > 0) {
            break;
        }
        LOG_INFO("repos: %s refused the installation token: renewing it and retrying once", j->url);
        if (j->op == OP_CLONE) {
            util_rm_rf(j->dir); /* a clone wants an empty directory */
        }
    }
    ghapp_wipe(tok);
    return rc;
}

int repos__sync(struct repos *r, const char *dir, const char *shared, const char *url,
                const char *branch, char head[41])
{
    struct remote_job j = {OP_SYNC, dir, shared, url, branch, head};
    return run_with_app(r, &j);
}

int repos__clone(struct repos *r, const char *url, const char *branch, const char *dir)
{
    struct remote_job j = {OP_CLONE, dir, NULL, url, branch, NULL};
    return run_with_app(r, &j);
}

int repos__mirror_fetch(struct repos *r, const char *gitdir, const char *url, const char *branch,
                        char head[41])
{
    struct remote_job j = {OP_MIRROR, gitdir, NULL, url, branch, head};
    return run_with_app(r, &j);
}
