/*
 * api_github.c - the GitHub webhook endpoint (api_github.h).
 *
 * A delivery is trusted only by its X-Hub-Signature-256: "sha256=" and the hex HMAC-SHA256 of
 * the raw body bytes under github.webhook_secret, compared in constant time; anything else is
 * 401 before the body is parsed. The body is capped by max_body like every request. A
 * verified delivery is then de-duplicated by X-GitHub-Delivery (a replay answers 200 and does
 * nothing) and applied by the repository layer (repos_gh_event), which does no network I/O:
 * GitHub waits 10 s at most for the answer.
 *
 * Threads: HTTP pool threads; no state of its own.
 */
#include "server/api/api_github.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/ops.h"
#include "storage/registry.h"
#include "workspace/repos.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

int api_github_verify(const char *secret, const char *sig, const char *body, size_t len)
{
    char mac[65], want[72];
    if (!sig || strncmp(sig, "sha256=", 7) != 0) {
        return ERR_AUTH;
    }
    util_hmac_sha256_hex(secret, strlen(secret), body, len, mac);
    snprintf(want, sizeof(want), "sha256=%s", mac);
    return util_ct_equal(want, strlen(want), sig, strlen(sig)) ? 0 : ERR_AUTH;
}

/* The comment without its first mention of sessiond (the agent is asked, not addressed).
 * Caller frees. */
static char *without_mention(const char *text, const char *mention)
{
    const char *at = text ? strstr(text, mention) : NULL;
    if (!at) {
        return xstrdup(text ? text : "");
    }
    const char *rest = at + strlen(mention);
    while (*rest == ' ' || *rest == ',' || *rest == ':') {
        rest++;
    }
    return xasprintf("%.*s%s", (int)(at - text), text, rest);
}

#define GITHUB_ACTOR_ID "github:bot" /* who creates the prompts of pull request comments */

/* A comment on a session's pull request that mentions sessiond (trusted: the commenter may
 * prompt): the comment becomes a prompt of the session, authored by github:<user id>; anyone
 * else gets a polite refusal. The answer and the refusal are posted by the repository layer's
 * follower thread. what (size n) says what was done. */
static void comment_prompt(struct app *app, json_t *p, const char *sid, int trusted,
                           const char *mention, const char *delivery, char *what, size_t n)
{
    json_t *c = json_object_get(p, "comment");
    json_t *user = json_object_get(c, "user");
    const char *login = json_string_value(json_object_get(user, "login"));
    json_t *id = json_object_get(user, "id");
    if (!trusted) {
        char *msg = xasprintf("Sorry @%s, only the repository's owners, members and collaborators "
                              "can ask me to work on this pull request.",
                              login ? login : "there");
        repos_gh_reply(app->repos, sid, msg);
        free(msg);
        snprintf(what, n, "session %s: comment by %s refused (not a collaborator)", sid,
                 login ? login : "?");
        return;
    }
    struct auth_info actor;
    struct ops_answer ans = {0};
    memset(&actor, 0, sizeof(actor));
    snprintf(actor.user_id, sizeof(actor.user_id), "%s", GITHUB_ACTOR_ID);
    snprintf(actor.name, sizeof(actor.name), "GitHub");
    snprintf(actor.role, sizeof(actor.role), "bot");
    char uid[64];
    snprintf(uid, sizeof(uid), "github:%lld", (long long)json_integer_value(id));
    char *content = without_mention(json_string_value(json_object_get(c, "body")), mention);
    json_t *body = json_pack("{s:s, s:{s:s, s:s}, s:s}", "content", content, "author", "id", uid,
                             "name", login ? login : uid, "client_request_id", delivery);
    /* the commenter's right to prompt was decided from author_association above: the
     * integration's bot identity holds no session of its own */
    int rc = body ? ops_message_create(app, &actor, sid, body, &ans) : ERR_INVALID;
    if (rc != 0) {
        char *msg = xasprintf("Sorry @%s, I could not queue that: %s", login ? login : "there",
                              ans.msg[0] ? ans.msg : err_str(rc));
        repos_gh_reply(app->repos, sid, msg);
        free(msg);
        snprintf(what, n, "session %s: comment not queued: %s", sid, err_str(rc));
    } else {
        repos_gh_watch(app->repos, sid, json_string_value(json_object_get(ans.json, "prompt_id")),
                       json_string_value(json_object_get(ans.json, "message_id")), login);
        snprintf(what, n, "session %s: comment by %s queued as a prompt", sid, uid);
    }
    ops_answer_free(&ans);
    json_decref(body);
    free(content);
}

int api_github_webhook(struct req *r)
{
    struct app *app = req_app(r);
    json_t *p = NULL;
    char what[300] = "";
    size_t len = 0;
    int fresh = 1, rc = 0;
    const char *secret = app && app->cfg ? app->cfg->github_webhook_secret : NULL;
    if (!secret || !*secret || !app->repos) {
        return req_fail(r, ERR_UNAVAILABLE,
                        "the GitHub webhook is not configured: set github.webhook_secret");
    }
    const char *body = req_body(r, &len);
    if (api_github_verify(secret, req_header(r, "X-Hub-Signature-256"), body ? body : "", len) !=
        0) {
        LOG_WARN("github: webhook delivery refused: %s",
                 req_header(r, "X-Hub-Signature-256") ? "bad signature" : "no signature");
        return req_fail(r, ERR_AUTH, "invalid X-Hub-Signature-256");
    }
    const char *event = req_header(r, "X-GitHub-Event");
    const char *delivery = req_header(r, "X-GitHub-Delivery");
    if (!event || !*event || repos_gh_delivery(app->repos, delivery, &fresh) != 0) {
        return req_fail(r, ERR_INVALID, "X-GitHub-Event and X-GitHub-Delivery are required");
    }
    if (!fresh) {
        LOG_INFO("github: delivery %s (%s) seen already: ignored", delivery, event);
        return req_reply_json(r, 200, json_pack("{s:b, s:b}", "ok", 1, "duplicate", 1));
    }
    p = json_loadb(body ? body : "", len, 0, NULL);
    if (!json_is_object(p)) {
        rc = req_fail(r, ERR_INVALID, "the body must be a JSON object");
        goto out;
    }
    char sid[72];
    int trusted = 0;
    const char *mention = app->cfg->github_mention && *app->cfg->github_mention
                              ? app->cfg->github_mention
                              : "@sessiond";
    if (repos_gh_comment(app->repos, event, p, mention, sid, &trusted) == 0) {
        comment_prompt(app, p, sid, trusted, mention, delivery, what, sizeof(what));
        LOG_INFO("github: delivery %s (%s): %s", delivery, event, what);
        rc = req_reply_json(r, 200, json_pack("{s:b, s:s}", "ok", 1, "done", what));
        goto out;
    }
    rc = repos_gh_event(app->repos, event, p, what, sizeof(what));
    LOG_INFO("github: delivery %s (%s): %s", delivery, event, what);
    if (rc == ERR_NOT_FOUND) {
        /* not ours (another tool's pull request in the same repository): nothing to retry */
        rc = req_reply_json(r, 202, json_pack("{s:b, s:s}", "ok", 1, "ignored", what));
        goto out;
    }
    if (rc != 0) {
        rc = req_fail(r, rc, "%s", what);
        goto out;
    }
    rc = req_reply_json(r, 200, json_pack("{s:b, s:s}", "ok", 1, "done", what));
out:
    json_decref(p);
    return rc;
}
