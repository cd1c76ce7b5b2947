/*
 * api_tokens.c - POST/GET /v1/tokens, DELETE /v1/tokens/{id}.
 * Admins create tokens for anyone and see all of them; other tokens see and delete only
 * their own user's tokens. A secret is returned once, by the create call, and never again.
 * Thread context: MHD pool threads.
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/api/api_audit.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/ws/hub.h"
#include "storage/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int api_tokens_create(struct req *r)
{
    const struct auth_info *a = req_auth(r);
    json_t *body = NULL, *out = NULL;
    const char *user = NULL, *name = NULL, *email = NULL, *role = "user";
    int64_t expires_in = 0;
    char *uid = NULL;
    char msg[160];
    int rc;
    if (!auth_is_admin(a)) {
        return req_fail(r, ERR_FORBIDDEN, "only an admin token may create tokens");
    }
    rc = req_json_body(r, &body);
    if (rc) {
        return rc;
    }
    rc = jx_str(body, "user_id", &user, msg, sizeof(msg));
    if (!rc) {
        rc = jx_str(body, "name", &name, msg, sizeof(msg));
    }
    if (!rc) {
        rc = jx_str(body, "email", &email, msg, sizeof(msg));
    }
    if (!rc) {
        rc = jx_str(body, "role", &role, msg, sizeof(msg));
    }
    if (!rc) {
        rc = jx_int(body, "expires_in", &expires_in, msg, sizeof(msg));
    }
    if (rc) {
        rc = req_fail(r, rc, "%s", msg);
        goto out;
    }
    if (!user || !*user) {
        rc = req_fail(r, ERR_INVALID, "field 'user_id' is required (e.g. \"alice\")");
        goto out;
    }
    if (strlen(user) > 140 || (name && strlen(name) > 150) || (email && strlen(email) > 150)) {
        rc = req_fail(r, ERR_INVALID, "user_id, name and email are capped at 140/150 bytes");
        goto out;
    }
    if (strcmp(role, "user") != 0 && strcmp(role, "viewer") != 0 && strcmp(role, "bot") != 0 &&
        strcmp(role, "admin") != 0) {
        rc = req_fail(r, ERR_INVALID, "field 'role' must be user, viewer, bot or admin");
        goto out;
    }
    if (expires_in < 0 || expires_in > (int64_t)10 * 366 * 86400) {
        rc = req_fail(r, ERR_INVALID, "field 'expires_in' must be seconds in [1, 10 years]");
        goto out;
    }
    uid = strchr(user, ':') ? xstrdup(user) : xasprintf("token:%s", user);
    rc = registry_token_create(req_app(r)->reg, uid, name ? name : user, email ? email : "", role,
                               expires_in ? clock_now_ms() + expires_in * 1000 : 0, &out);
    if (rc) {
        rc = req_fail(r, rc, "cannot create the token: %s", err_str(rc));
        goto out;
    }
    LOG_INFO("api: token for %s (%s) created by %s", uid, role, a->user_id);
    audit_req(r, "token.create", json_string_value(json_object_get(out, "id")),
              json_pack("{s:s,s:s,s:O}", "user_id", uid, "role", role, "expires_at",
                        json_object_get(out, "expires_at")));
    rc = req_reply_json(r, 201, out);
out:
    json_decref(body);
    free(uid);
    return rc;
}

int api_tokens_list(struct req *r)
{
    const struct auth_info *a = req_auth(r);
    json_t *out = NULL;
    int rc = registry_token_list(req_app(r)->reg, auth_is_admin(a) ? NULL : a->user_id, &out);
    if (rc) {
        return req_fail(r, rc, NULL);
    }
    return req_reply_json(r, 200, out);
}

int api_tokens_delete(struct req *r)
{
    struct app *app = req_app(r);
    const struct auth_info *a = req_auth(r);
    const char *id = req_param(r, "id");
    struct auth_info gone;
    /* Who it belonged to, for the audit entry (read before it is gone; the delete below
     * decides whether the caller may). */
    int known = registry_token_get(app->reg, id, &gone) == 0;
    int rc = registry_token_delete(app->reg, id, auth_is_admin(a) ? NULL : a->user_id);
    auth_cache_invalidate(
        req_app(r)->auth); /* the token stops working now, not after the cache TTL */
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "no token %s", id);
    }
    if (rc) {
        return req_fail(r, rc, NULL);
    }
    /* What was opened with it ends too: its WebSockets (4401) and its unused tickets. */
    hub_revoke_token(app->hub, id);
    LOG_INFO("api: token %s deleted by %s", id, a->user_id);
    audit_req(r, "token.revoke", id,
              known ? json_pack("{s:s,s:s}", "user_id", gone.user_id, "role", gone.role) : NULL);
    return req_reply_empty(r, 204);
}
