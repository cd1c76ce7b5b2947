/*
 * api_repos.c - repository, snapshot, push / pull request and credential endpoints
 * (api_repos.h). The sandbox/ modules do the work; this file does access control, JSON in and
 * out, and the secrets: user GitHub tokens are sealed here (server/secrets.h) and handed to
 * sandbox/ only as plain strings for one call, never stored or logged in clear, never
 * returned.
 *
 * Access: repositories are organisation configuration: any user may read them, admins
 * create/change/delete them; any non-viewer may request an image build or a warm-up. Session
 * endpoints use the session's access rules (api_session_access).
 *
 * Threads: HTTP pool threads; everything called is thread safe.
 */
#include "server/api/api_repos.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "workspace/ghapp.h"
#include "workspace/github.h"
#include "workspace/repos.h"
#include "workspace/snap/snap.h"
#include "server/api/api.h"
#include "server/api/api_audit.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/secrets.h"
#include "storage/artifacts.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static struct repos *R(struct req *r)
{
    return req_app(r)->repos;
}

static int need_repos(struct req *r)
{
    if (!R(r)) {
        return req_fail(r, ERR_UNAVAILABLE, "the repository layer is not running");
    }
    return 0;
}

static int need_admin(struct req *r)
{
    if (!auth_is_admin(req_auth(r))) {
        return req_fail(r, ERR_FORBIDDEN, "only an admin token may change repositories");
    }
    return 0;
}

static int need_writer(struct req *r)
{
    const struct auth_info *a = req_auth(r);
    if (!a || strcmp(a->role, "viewer") == 0) {
        return req_fail(r, ERR_FORBIDDEN, "viewer tokens are read-only");
    }
    return 0;
}

static int repo_name(struct req *r, const char **out)
{
    const char *name = req_param(r, "name");
    if (!util_valid_id(name)) {
        return req_fail(r, ERR_INVALID, "repository names match [A-Za-z0-9_-]{1,64}");
    }
    *out = name;
    return 0;
}

static int repo_fail(struct req *r, int rc, const char *name)
{
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "no repository %s", name);
    }
    return req_fail(r, rc, "%s", err_str(rc));
}

static char *workspace_of(struct req *r, const char *sid)
{
    return xasprintf("%s/workspaces/%s", req_app(r)->cfg->data_dir, sid);
}

static char *aad_for(const char *user_id)
{
    return xasprintf("github:%s", user_id);
}

/* The caller's own GitHub token, unsealed (caller wipes with secrets_wipe), or NULL. */
static char *own_token(struct req *r, size_t *len)
{
    const struct auth_info *a = req_auth(r);
    char *sealed = NULL, *tok = NULL;
    *len = 0;
    if (!req_app(r)->secrets || repos_cred_get(R(r), a->user_id, "github", &sealed) != 0) {
        return NULL;
    }
    char *aad = aad_for(a->user_id);
    if (secrets_unseal(req_app(r)->secrets, aad, sealed, &tok, len) != 0) {
        LOG_WARN("api: the stored GitHub token of %s does not open (master key changed?)",
                 a->user_id);
        tok = NULL;
    }
    free(aad);
    free(sealed);
    return tok;
}

/* ---- repositories ---- */

int api_repos_create(struct req *r)
{
    json_t *body = NULL, *out = NULL;
    char msg[200] = "";
    int rc = need_repos(r);
    if (rc || (rc = need_admin(r)) || (rc = req_json_body(r, &body))) {
        return rc;
    }
    rc = repos_create(R(r), body, &out, msg, sizeof(msg));
    json_decref(body);
    if (rc != 0) {
        return req_fail(r, rc, "%s", msg[0] ? msg : err_str(rc));
    }
    return req_reply_json(r, 201, out);
}

int api_repos_list(struct req *r)
{
    json_t *out = NULL;
    int rc = need_repos(r);
    if (rc || (rc = repos_list(R(r), &out))) {
        return rc ? rc : req_fail(r, rc, NULL);
    }
    return req_reply_json(r, 200, out);
}

int api_repo_get(struct req *r)
{
    const char *name = NULL;
    json_t *out = NULL;
    int rc = need_repos(r);
    if (rc || (rc = repo_name(r, &name))) {
        return rc;
    }
    rc = repos_get(R(r), name, &out);
    if (rc != 0) {
        return repo_fail(r, rc, name);
    }
    return req_reply_json(r, 200, out);
}

int api_repo_patch(struct req *r)
{
    const char *name = NULL;
    json_t *body = NULL, *out = NULL;
    char msg[200] = "";
    int rc = need_repos(r);
    if (rc || (rc = need_admin(r)) || (rc = repo_name(r, &name)) ||
        (rc = req_json_body(r, &body))) {
        return rc;
    }
    rc = repos_update(R(r), name, body, &out, msg, sizeof(msg));
    json_decref(body);
    if (rc == ERR_NOT_FOUND) {
        return repo_fail(r, rc, name);
    }
    if (rc != 0) {
        return req_fail(r, rc, "%s", msg[0] ? msg : err_str(rc));
    }
    return req_reply_json(r, 200, out);
}

int api_repo_delete(struct req *r)
{
    const char *name = NULL;
    int rc = need_repos(r);
    if (rc || (rc = need_admin(r)) || (rc = repo_name(r, &name))) {
        return rc;
    }
    rc = repos_delete(R(r), name);
    if (rc != 0) {
        return repo_fail(r, rc, name);
    }
    return req_reply_empty(r, 204);
}

int api_repo_images_build(struct req *r)
{
    const char *name = NULL;
    json_t *out = NULL;
    int rc = need_repos(r);
    if (rc || (rc = need_writer(r)) || (rc = repo_name(r, &name))) {
        return rc;
    }
    rc = repos_image_build(R(r), name, &out);
    if (rc == ERR_CONFLICT) {
        return req_fail(r, rc, "an image of %s is already being built", name);
    }
    if (rc != 0) {
        return repo_fail(r, rc, name);
    }
    return req_reply_json(r, 202, out);
}

int api_repo_images_list(struct req *r)
{
    const char *name = NULL;
    json_t *out = NULL;
    int rc = need_repos(r);
    if (rc || (rc = repo_name(r, &name))) {
        return rc;
    }
    rc = repos_images(R(r), name, &out);
    if (rc != 0) {
        json_decref(out);
        return repo_fail(r, rc, name);
    }
    return req_reply_json(r, 200, out);
}

int api_repo_warm(struct req *r)
{
    const char *name = NULL;
    json_t *out = NULL;
    int rc = need_repos(r);
    if (rc || (rc = need_writer(r)) || (rc = repo_name(r, &name))) {
        return rc;
    }
    rc = repos_warm(R(r), name, &out);
    if (rc != 0) {
        return repo_fail(r, rc, name);
    }
    return req_reply_json(r, 202, out);
}

/* ---- snapshots ---- */

int api_snapshots_list(struct req *r)
{
    const char *sid = req_param(r, "id");
    json_t *out = NULL;
    int rc = need_repos(r);
    if (rc || (rc = api_session_access(r, sid, AUTH_READ, NULL))) {
        return rc;
    }
    rc = repos_snapshots(R(r), sid, &out);
    if (rc != 0) {
        return req_fail(r, rc, NULL);
    }
    return req_reply_json(r, 200, out);
}

struct running_arg {
    int running;
};

static int count_running(struct sess_rd *rd, void *arg)
{
    struct running_arg *a = arg;
    int64_t n = 0;
    int rc = prompts_count(rd, PROMPT_RUNNING, &n);
    a->running = (int)n;
    return rc;
}

/* 409 while a prompt of the session runs (the workspace is the agent's then). */
static int refuse_if_running(struct req *r, const char *sid, const char *what)
{
    struct sess *s = NULL;
    struct running_arg a = {0};
    int rc = store_session_get(req_app(r)->store, sid, &s);
    if (rc == 0) {
        rc = sess_view(s, count_running, &a);
        sess_put(s);
    }
    if (rc != 0) {
        return req_fail(r, rc, "cannot read session %s: %s", sid, err_str(rc));
    }
    if (a.running > 0) {
        return req_fail(r, ERR_CONFLICT, "a prompt is running: %s refused until it ends", what);
    }
    return 0;
}

int api_snapshots_create(struct req *r)
{
    const char *sid = req_param(r, "id");
    json_t *out = NULL;
    int rc = need_repos(r);
    if (rc || (rc = api_session_access(r, sid, AUTH_WRITE, NULL))) {
        return rc;
    }
    char *ws = workspace_of(r, sid);
    rc = repos_snapshot(R(r), sid, ws, "manual", &out);
    free(ws);
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, ERR_CONFLICT, "session %s has no workspace yet", sid);
    }
    if (rc != 0) {
        return req_fail(r, rc, NULL);
    }
    return req_reply_json(r, 201, out);
}

int api_rollback(struct req *r)
{
    const char *sid = req_param(r, "id");
    const char *snap = NULL;
    json_t *body = NULL, *out = NULL;
    char msg[160];
    int rc = need_repos(r);
    if (rc || (rc = api_session_access(r, sid, AUTH_WRITE, NULL)) ||
        (rc = req_json_body(r, &body))) {
        return rc;
    }
    rc = jx_str(body, "snapshot_id", &snap, msg, sizeof(msg));
    if (rc != 0) {
        rc = req_fail(r, rc, "%s", msg);
        goto out;
    }
    if (!snap || !snap_valid_id(snap)) {
        rc = req_fail(r, ERR_INVALID, "snapshot_id (\"snap-000001\") is required");
        goto out;
    }
    rc = refuse_if_running(r, sid, "rollback");
    if (rc != 0) {
        goto out;
    }
    char *ws = workspace_of(r, sid);
    rc = repos_rollback(R(r), sid, snap, ws, &out);
    free(ws);
    if (rc == ERR_NOT_FOUND) {
        rc = req_fail(r, rc, "no snapshot %s in session %s", snap, sid);
        goto out;
    }
    if (rc != 0) {
        rc = req_fail(r, rc, NULL);
        goto out;
    }
    rc = req_reply_json(r, 200, out);
out:
    json_decref(body);
    return rc;
}

/* ---- push and pull requests ---- */

/* The credentials of a push or a pull request. */
struct cred {
    char *tok;        /* owned, wiped by cred_wipe; NULL: none */
    size_t len;       /* the bytes to wipe */
    const char *kind; /* the answers' `credentials`: "user" | "app" | "token" | "none" */
};

/* In order: the caller's stored token; the GitHub App's installation token when the app
 * covers url (its host, installed for the repository); github.token if static_ok (pushes);
 * none. */
static void cred_pick(struct req *r, const char *url, int static_ok, struct cred *c)
{
    const struct config *cfg = req_app(r)->cfg;
    memset(c, 0, sizeof(*c));
    c->tok = own_token(r, &c->len);
    c->kind = "user";
    if (c->tok) {
        return;
    }
    if (ghapp_token_for_url(req_app(r)->ghapp, url, NULL, &c->tok) == 0 && c->tok) {
        c->len = strlen(c->tok);
        c->kind = "app";
        return;
    }
    c->tok = NULL;
    if (static_ok && cfg->github_token && *cfg->github_token) {
        c->tok = xstrdup(cfg->github_token);
        c->len = strlen(c->tok);
        c->kind = "token";
        return;
    }
    c->kind = "none";
}

/* The remote or the API refused c: if it is the app's token, take a renewed one (the cached
 * one may have expired or been revoked early). 1 if there is a new token to retry with. */
static int cred_renew(struct req *r, const char *url, struct cred *c)
{
    char *fresh = NULL;
    if (strcmp(c->kind, "app") != 0 ||
        ghapp_token_for_url(req_app(r)->ghapp, url, c->tok, &fresh) != 0 || !fresh) {
        return 0;
    }
    LOG_INFO("api: %s refused the installation token: retrying once with a renewed one", url);
    secrets_wipe(c->tok, c->len);
    c->tok = fresh;
    c->len = strlen(fresh);
    return 1;
}

static void cred_wipe(struct cred *c)
{
    secrets_wipe(c->tok, c->len);
    c->tok = NULL;
}

/* The session's registry URL (caller frees), or NULL. */
static char *session_url(struct req *r, const char *sid)
{
    json_t *info = NULL;
    char *url = NULL;
    if (repos_session_info(R(r), sid, &info) == 0) {
        const char *u = json_string_value(json_object_get(info, "url"));
        url = u ? xstrdup(u) : NULL;
    }
    json_decref(info);
    return url;
}

/* repos_push with c, retried once with a renewed installation token after a refusal. */
static int push_with(struct req *r, const char *sid, const char *url, struct cred *c, json_t **out)
{
    char *ws = workspace_of(r, sid);
    int rc = repos_push(R(r), sid, ws, c->tok, out);
    if (rc == ERR_AUTH && cred_renew(r, url, c)) {
        rc = repos_push(R(r), sid, ws, c->tok, out);
    }
    free(ws);
    return rc;
}

int api_push(struct req *r)
{
    const char *sid = req_param(r, "id");
    json_t *out = NULL;
    struct cred c;
    int rc = need_repos(r);
    if (rc || (rc = api_session_access(r, sid, AUTH_WRITE, NULL))) {
        return rc;
    }
    char *url = session_url(r, sid);
    cred_pick(r, url, 1, &c);
    rc = push_with(r, sid, url, &c, &out);
    cred_wipe(&c);
    free(url);
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "session %s has no repository branch to push", sid);
    }
    if (rc == ERR_AUTH) {
        return req_fail(r, ERR_FORBIDDEN, "the remote refused the credentials");
    }
    if (rc == ERR_UNPROCESSABLE && out) { /* git.push_blocked: the change holds a secret */
        rc = req_fail(r, rc, "push blocked: the secret %s is in %s",
                      json_string_value(json_object_get(out, "secret")),
                      *json_string_value(json_object_get(out, "path"))
                          ? json_string_value(json_object_get(out, "path"))
                          : "a commit message");
        json_decref(out);
        return rc;
    }
    if (rc != 0) {
        json_decref(out);
        return req_fail(r, rc, "push failed: %s", err_str(rc));
    }
    json_object_set_new(out, "credentials", json_string(c.kind));
    return req_reply_json(r, 200, out);
}

int api_pull_request(struct req *r)
{
    const char *sid = req_param(r, "id");
    const char *title = NULL, *prbody = NULL;
    json_t *body = NULL, *out = NULL;
    struct cred c = {0};
    char msg[400];
    int draft = 0, created = 0;
    int rc = need_repos(r);
    if (rc || (rc = api_session_access(r, sid, AUTH_WRITE, NULL)) ||
        (rc = req_json_body(r, &body))) {
        return rc;
    }
    if ((rc = jx_str(body, "title", &title, msg, sizeof(msg))) ||
        (rc = jx_str(body, "body", &prbody, msg, sizeof(msg))) ||
        (rc = jx_bool(body, "draft", &draft, msg, sizeof(msg)))) {
        rc = req_fail(r, rc, "%s", msg);
        goto out;
    }
    if ((title && strlen(title) > 256) || (prbody && strlen(prbody) > 65536)) {
        rc = req_fail(r, ERR_INVALID, "title is capped at 256 bytes, body at 64 KiB");
        goto out;
    }
    char *url = session_url(r, sid);
    if (!url) {
        rc = req_fail(r, ERR_CONFLICT, "session %s has no repository", sid);
        goto out;
    }
    cred_pick(r, url, 0, &c);
    free(url);
    if (!c.tok) {
        rc = req_fail(r, ERR_FORBIDDEN,
                      "a pull request is opened with your own GitHub token (store it with "
                      "PUT /v1/me/credentials/github) or by the GitHub App installed for the "
                      "repository");
        goto out;
    }
    /* draft: on a new pull request its flag (default false); on the session's existing one,
     * a change of flag (false: ready for review) only when the field is given */
    struct repos_pr_req q = {
        .token = c.tok,
        .kind = c.kind,
        .title = title,
        .body = prbody,
        .draft = json_object_get(body, "draft") ? draft : -1,
        .by = req_auth(r)->user_id,
    };
    rc = repos_pr_sync(R(r), sid, &q, &out, &created, msg, sizeof(msg));
    if (rc != 0) {
        /* not found: no repository (or no branch to push yet), a state of the session */
        rc = req_fail(r,
                      rc == ERR_AUTH        ? ERR_FORBIDDEN
                      : rc == ERR_NOT_FOUND ? ERR_CONFLICT
                                            : rc,
                      "%s", msg[0] ? msg : err_str(rc));
        goto out;
    }
    rc = req_reply_json(r, created ? 201 : 200, out);
    out = NULL;
out:
    cred_wipe(&c);
    json_decref(body);
    json_decref(out);
    return rc;
}

/* ---- credentials ---- */

int api_credentials_list(struct req *r)
{
    char *sealed = NULL;
    int rc = need_repos(r);
    if (rc) {
        return rc;
    }
    int have = repos_cred_get(R(r), req_auth(r)->user_id, "github", &sealed) == 0;
    free(sealed);
    return req_reply_json(r, 200,
                          json_pack("{s:{s:b}, s:b}", "github", "stored", have, "available",
                                    req_app(r)->secrets != NULL));
}

int api_credentials_github_put(struct req *r)
{
    json_t *body = NULL;
    const char *token = NULL;
    char msg[160], *sealed = NULL, *aad = NULL;
    int rc = need_repos(r);
    if (rc || (rc = need_writer(r)) || (rc = req_json_body(r, &body))) {
        return rc;
    }
    rc = jx_str(body, "token", &token, msg, sizeof(msg));
    if (rc != 0) {
        rc = req_fail(r, rc, "%s", msg);
        goto out;
    }
    if (!token || !*token || strlen(token) > 1024 || strpbrk(token, " \t\r\n")) {
        rc = req_fail(r, ERR_INVALID, "token must be a non-empty string without spaces");
        goto out;
    }
    if (!req_app(r)->secrets) {
        rc = req_fail(r, ERR_UNAVAILABLE, "no master key is configured (secrets.key_file)");
        goto out;
    }
    aad = aad_for(req_auth(r)->user_id);
    rc = secrets_seal(req_app(r)->secrets, aad, token, strlen(token), &sealed);
    if (rc == 0) {
        rc = repos_cred_put(R(r), req_auth(r)->user_id, "github", sealed);
    }
    if (rc != 0) {
        rc = req_fail(r, rc, "cannot store the token");
        goto out;
    }
    LOG_INFO("api: GitHub token stored for %s", req_auth(r)->user_id);
    audit_req(r, "secret.set", req_auth(r)->user_id, json_pack("{s:s}", "secret", "github"));
    rc = req_reply_empty(r, 204);
out:
    free(sealed);
    free(aad);
    json_decref(body); /* the token string lives in body; jansson frees it */
    return rc;
}

int api_credentials_github_delete(struct req *r)
{
    int rc = need_repos(r);
    if (rc) {
        return rc;
    }
    rc = repos_cred_delete(R(r), req_auth(r)->user_id, "github");
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "no GitHub token is stored for you");
    }
    if (rc != 0) {
        return req_fail(r, rc, NULL);
    }
    audit_req(r, "secret.delete", req_auth(r)->user_id, json_pack("{s:s}", "secret", "github"));
    return req_reply_empty(r, 204);
}
