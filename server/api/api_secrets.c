/*
 * api_secrets.c - secrets endpoints and glue (api_secrets.h). Access control, JSON in and out
 * and the audit entries live here; validation, sealing and the sets in server/vault.c.
 *
 * Threads: HTTP pool threads. The vault is opened by app.c; the lookup the runner and the
 * repository layer are handed is ops_secrets_for (server/ops.c).
 */
#include "server/api/api_secrets.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/api/api_audit.h"
#include "server/auth.h"
#include "server/vault.h"
#include "storage/registry.h"
#include "workspace/repos.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* ---- handlers ---- */

static int need_admin(struct req *r)
{
    if (!auth_is_admin(req_auth(r))) {
        return req_fail(r, ERR_FORBIDDEN, "only an admin token may manage secrets");
    }
    if (!req_app(r)->vault) {
        return req_fail(r, ERR_UNAVAILABLE, "secrets are not available");
    }
    return 0;
}

/* The repository of a /v1/repos/{name}/secrets request, which must exist: *repo. */
static int repo_of(struct req *r, const char **repo)
{
    const char *name = req_param(r, "name");
    json_t *j = NULL;
    if (!util_valid_id(name)) {
        return req_fail(r, ERR_INVALID, "repository names match [A-Za-z0-9_-]{1,64}");
    }
    if (!req_app(r)->repos || repos_get(req_app(r)->repos, name, &j) != 0) {
        return req_fail(r, ERR_NOT_FOUND, "no repository %s", name);
    }
    json_decref(j);
    *repo = name;
    return 0;
}

static int list(struct req *r, const char *repo)
{
    json_t *rows = NULL;
    int rc = vault_list(req_app(r)->vault, repo, &rows);
    if (rc) {
        return req_fail(r, rc, "cannot list the secrets");
    }
    return req_reply_json(r, 200, json_pack("{s:o}", "secrets", rows));
}

static json_t *audit_detail(const char *repo, const char *name)
{
    json_t *d = json_pack("{s:s}", "secret", name);
    json_object_set_new(d, "repo", *repo ? json_string(repo) : json_null());
    return d;
}

static int put(struct req *r, const char *repo, const char *name)
{
    json_t *body = NULL, *v = NULL;
    char msg[200] = "";
    int rc = vault_check_name(req_app(r)->vault, name, msg, sizeof(msg));
    if (rc) {
        return req_fail(r, rc, "%s", msg);
    }
    rc = req_json_body(r, &body);
    if (rc) {
        return rc;
    }
    v = json_object_get(body, "value");
    if (!json_is_string(v)) {
        rc = req_fail(r, ERR_INVALID, "value must be a string");
        goto out;
    }
    rc = vault_put(req_app(r)->vault, repo, name, json_string_value(v), json_string_length(v),
                   req_auth(r)->user_id, msg, sizeof(msg));
    if (rc) {
        rc = req_fail(r, rc, "%s", msg[0] ? msg : "cannot store the secret");
        goto out;
    }
    LOG_INFO("api: secret %s set for %s by %s", name, *repo ? repo : "(global)",
             req_auth(r)->user_id);
    audit_req(r, "secret.set", *repo ? repo : "global", audit_detail(repo, name));
    rc = req_reply_json(r, 200,
                        json_pack("{s:s, s:s?, s:s}", "name", name, "repo", *repo ? repo : NULL,
                                  "set_by", req_auth(r)->user_id));
out:
    if (json_is_string(v)) {
        /* the value lives in the body until it is freed: wipe it first */
        explicit_bzero((char *)json_string_value(v), json_string_length(v));
    }
    json_decref(body);
    return rc;
}

static int del(struct req *r, const char *repo, const char *name)
{
    int rc = vault_delete(req_app(r)->vault, repo, name);
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "no secret %s", name);
    }
    if (rc) {
        return req_fail(r, rc, "cannot delete the secret");
    }
    audit_req(r, "secret.delete", *repo ? repo : "global", audit_detail(repo, name));
    return req_reply_empty(r, 204);
}

int api_secrets_list(struct req *r)
{
    int rc = need_admin(r);
    return rc ? rc : list(r, "");
}

int api_secrets_put(struct req *r)
{
    int rc = need_admin(r);
    return rc ? rc : put(r, "", req_param(r, "secret"));
}

int api_secrets_delete(struct req *r)
{
    int rc = need_admin(r);
    return rc ? rc : del(r, "", req_param(r, "secret"));
}

int api_repo_secrets_list(struct req *r)
{
    const char *repo = NULL;
    int rc = need_admin(r);
    if (rc || (rc = repo_of(r, &repo))) {
        return rc;
    }
    return list(r, repo);
}

int api_repo_secrets_put(struct req *r)
{
    const char *repo = NULL;
    int rc = need_admin(r);
    if (rc || (rc = repo_of(r, &repo))) {
        return rc;
    }
    return put(r, repo, req_param(r, "secret"));
}

int api_repo_secrets_delete(struct req *r)
{
    const char *repo = NULL;
    int rc = need_admin(r);
    if (rc || (rc = repo_of(r, &repo))) {
        return rc;
    }
    return del(r, repo, req_param(r, "secret"));
}
