/*
 * api_sessions.c - /healthz, /v1/me and the session resource: create, list, status, end or
 * purge, participants, export; the plain (non-upgrade) GET of the WebSocket URL.
 *
 * Thread context: MHD pool threads; handlers may block on the registry or a group commit.
 * The session state "ended" is mirrored into the session file (meta key "state") so the
 * message hot path can notice a reopen without asking the registry (see api_messages.c).
 */
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/runner.h"
#include "sandbox/sbx.h"
#include "sandbox/wsdisk.h"
#include "workspace/repos.h"
#include "server/api/api.h"
#include "server/api/api_audit.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/ops.h"
#include "server/ws/hub.h"
#include "server/ratelimit.h"
#include "storage/messages.h"
#include "storage/meta.h"
#include "storage/participants.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---- */

int api_session_access(struct req *r, const char *sid, int need, const char **role_out)
{
    int rc = auth_session(req_app(r)->auth, sid, req_auth(r), need, role_out);
    switch (rc) {
    case 0:
        return 0;
    case ERR_NOT_FOUND:
        return req_fail(r, rc, "no session %s", sid);
    case ERR_GONE:
        return req_fail(r, rc, "session %s was purged", sid);
    case ERR_FORBIDDEN:
        return req_fail(r, rc,
                        need == AUTH_OWNER ? "only the session's owner may do this"
                                           : "your role may only read this session");
    default:
        return req_fail(r, rc, NULL);
    }
}

/* Get the open session or reply with the error. */
int api_reply_page(struct req *r, int rc, json_t *page)
{
    if (rc == ERR_INVALID) {
        return req_fail(r, rc, "malformed cursor");
    }
    return rc ? req_fail(r, rc, NULL) : req_reply_json(r, 200, page);
}

int api_session_open(struct req *r, const char *sid, struct sess **out)
{
    int rc = store_session_get(req_app(r)->store, sid, out);
    return rc ? req_fail(r, rc, "cannot open session %s: %s", sid, err_str(rc)) : 0;
}

/* The same, with a plainer answer for a session that has no file. */
static int get_sess(struct req *r, const char *sid, struct sess **out)
{
    int rc = store_session_get(req_app(r)->store, sid, out);
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "session %s has no data file", sid);
    }
    if (rc) {
        return req_fail(r, rc, "cannot open session %s: %s", sid, err_str(rc));
    }
    return 0;
}

static json_t *ts_json(int64_t ms)
{
    char ts[32];
    if (ms < 0) {
        return json_null();
    }
    clock_iso8601(ms, ts, sizeof(ts));
    return json_string(ts);
}

static json_t *text_json(const char *t)
{
    return t ? json_string(t) : json_null();
}

/* One participant as the REST API shows it, appended to the array ctx. */
static int participant_json(void *ctx, const struct participant_row *p)
{
    json_array_append_new(ctx, json_pack("{s:o,s:o,s:o,s:o,s:o}", "user_id", text_json(p->user_id),
                                         "name", text_json(p->name), "email", text_json(p->email),
                                         "joined_at", ts_json(p->joined_at), "last_seen",
                                         ts_json(p->last_seen)));
    return 0;
}

/* Check a user-supplied optional string: type (via jx_str) and a byte cap. */
static int opt_str(struct req *r, json_t *body, const char *key, size_t max, const char **out)
{
    char msg[160];
    int rc = jx_str(body, key, out, msg, sizeof(msg));
    if (rc) {
        return req_fail(r, rc, "%s", msg);
    }
    if (*out && strlen(*out) > max) {
        return req_fail(r, ERR_INVALID, "field '%s' is longer than %zu bytes", key, max);
    }
    return 0;
}

/* A user id as stored: "provider:id"; a bare name gets the "token:" provider. Caller frees. */
static char *normalize_user_id(const char *u)
{
    return strchr(u, ':') ? xstrdup(u) : xasprintf("token:%s", u);
}

/* ---- /healthz, /v1/me, plain GET …/ws ---- */

/* The per-sandbox disk quota (sandbox/wsdisk.h) as /healthz reports it: whether it is
 * enforced and, if not, why (an operator must see that workspaces can fill the host's disk). */
static json_t *disk_quota_json(struct app *app)
{
    int64_t mib = app->cfg->sandbox_disk_mib;
    struct wsdisk *d = sbx_backend_disk(app->sbx);
    if (mib == 0) {
        return json_pack("{s:b,s:I,s:s}", "enforced", 0, "mib", (json_int_t)0, "reason",
                         "off (sandbox_disk_mib is 0)");
    }
    if (wsdisk_enforced(d)) {
        return json_pack("{s:b,s:I}", "enforced", 1, "mib", (json_int_t)mib);
    }
    return json_pack("{s:b,s:I,s:s}", "enforced", 0, "mib", (json_int_t)mib, "reason",
                     d ? wsdisk_reason(d)
                       : "the process backend keeps workspaces as plain directories");
}

int api_healthz(struct req *r)
{
    if (req_app(r)->shutting_down) {
        return req_reply_json(r, 503, json_pack("{s:s}", "status", "stopping"));
    }
    return req_reply_json(r, 200,
                          json_pack("{s:s,s:s,s:o}", "status", "ok", "version", SESSIOND_VERSION,
                                    "disk_quota", disk_quota_json(req_app(r))));
}

int api_me(struct req *r)
{
    const struct auth_info *a = req_auth(r);
    return req_reply_json(r, 200,
                          json_pack("{s:s,s:s,s:s,s:s,s:s}", "user_id", a->user_id, "name", a->name,
                                    "email", a->email, "role", a->role, "token_id", a->token_id));
}

int api_session_ws_plain(struct req *r)
{
    req_add_header(r, "Upgrade", "websocket");
    return req_fail_status(r, 426, "upgrade_required",
                           "this endpoint speaks WebSocket: send Upgrade: websocket");
}

#define WS_TICKET_TTL_MS 60000

/* POST /v1/sessions/{id}/ws-ticket -> {"ticket","expires_in","url"}: a one-use credential for
 * browsers, which cannot set an Authorization header on a WebSocket. */
int api_session_ws_ticket(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    const char *role = NULL;
    char ticket[65];
    int rc = api_session_access(r, sid, AUTH_READ, &role);
    if (rc) {
        return rc;
    }
    if (!app->hub) {
        return req_fail(r, ERR_UNAVAILABLE, "WebSocket hub not running");
    }
    rc = hub_ticket_create(app->hub, sid, req_auth(r), role, WS_TICKET_TTL_MS, ticket);
    if (rc) {
        return rc;
    }
    char url[200];
    snprintf(url, sizeof(url), "/v1/sessions/%s/ws?ticket=%s", sid, ticket);
    return req_reply_json(r, 201,
                          json_pack("{s:s,s:i,s:s}", "ticket", ticket, "expires_in",
                                    WS_TICKET_TTL_MS / 1000, "url", url));
}

/* ---- create ---- */

int api_sessions_create(struct req *r)
{
    struct app *app = req_app(r);
    const struct auth_info *a = req_auth(r);
    struct ops_answer ans = {0};
    json_t *body = NULL;
    /* Admission first: a refused creation never has its body parsed. */
    int rc = ops_session_admit(app, a, &ans);
    if (rc) {
        if (ans.retry_after > 0) {
            char v[16];
            snprintf(v, sizeof v, "%d", ans.retry_after);
            req_add_header(r, "Retry-After", v);
        }
        return req_fail(r, rc, "%s", ans.msg);
    }
    rc = req_json_body(r, &body);
    if (rc) {
        return rc;
    }
    rc = ops_session_create(app, a, body, 1, &ans);
    json_decref(body);
    if (rc) {
        return req_fail(r, rc, "%s", ans.msg);
    }
    rc = req_reply_json(r, 201, ans.json);
    ans.json = NULL;
    return rc;
}

/* ---- list ---- */

int api_sessions_list(struct req *r)
{
    const struct auth_info *a = req_auth(r);
    json_t *out = NULL;
    int64_t limit;
    const char *cursor = req_query(r, "cursor");
    int rc = req_query_int(r, "limit", 50, 1, 200, &limit);
    if (rc) {
        return rc;
    }
    if (cursor && strlen(cursor) > 200) {
        return req_fail(r, ERR_INVALID, "malformed cursor");
    }
    rc = registry_session_list(req_app(r)->reg, a->user_id, auth_is_admin(a), (int)limit,
                               cursor && *cursor ? cursor : NULL, &out);
    return api_reply_page(r, rc, out);
}

/* ---- status ---- */

struct status_read {
    json_t *participants;
    int64_t queued, running, messages;
};

static int status_rd(struct sess_rd *rd, void *arg)
{
    struct status_read *sr = arg;
    int rc = participants_list(rd, participant_json, sr->participants);
    if (!rc) {
        rc = prompts_count(rd, PROMPT_QUEUED, &sr->queued);
    }
    if (!rc) {
        rc = prompts_count(rd, PROMPT_RUNNING, &sr->running);
    }
    if (!rc) {
        rc = messages_count(rd, &sr->messages);
    }
    return rc;
}

/* the agent a prompt of the session runs when it names none: the session's own, else
 * its repository's default, else the server default ("effective_agent", "agent_source"). */
static void session_effective_agent(struct app *app, const char *sid, json_t *row)
{
    const char *own = json_string_value(json_object_get(row, "agent"));
    char repo_agent[80] = "";
    const char *eff = own, *src = "session";
    if (!own || !*own) {
        if (app->repos) {
            repos_session_policy(app->repos, sid, NULL, repo_agent, sizeof(repo_agent));
        }
        eff = repo_agent[0] ? repo_agent : app->cfg->agent;
        src = repo_agent[0] ? "repo" : "default";
    }
    json_object_set_new(row, "effective_agent", eff ? json_string(eff) : json_null());
    json_object_set_new(row, "agent_source", json_string(src));
}

int api_session_get(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    const char *role = NULL;
    json_t *row = NULL, *presence = NULL;
    struct sess *s = NULL;
    struct status_read sr = {json_array(), 0, 0, 0};
    int rc = api_session_access(r, sid, AUTH_READ, &role);
    if (rc) {
        goto out;
    }
    rc = registry_session_get(app->reg, sid, &row);
    if (rc) {
        rc = req_fail(r, rc, NULL);
        goto out;
    }
    rc = get_sess(r, sid, &s);
    if (rc) {
        goto out;
    }
    rc = sess_view(s, status_rd, &sr);
    if (rc) {
        rc = req_fail(r, rc, "cannot read the session: %s", err_str(rc));
        goto out;
    }
    presence = hub_presence(app->hub, sid);
    json_object_set_new(row, "last_seq", json_integer(sess_last_seq(s)));
    json_object_set_new(row, "messages", json_integer(sr.messages));
    json_object_set_new(row, "queued_prompts", json_integer(sr.queued));
    json_object_set_new(row, "running_prompts", json_integer(sr.running));
    json_object_set_new(row, "participants", sr.participants);
    sr.participants = NULL;
    json_object_set_new(row, "connected", presence ? presence : json_array());
    json_object_set_new(row, "your_role", json_string(role));
    session_effective_agent(app, sid, row);
    rc = req_reply_json(r, 200, row);
    row = NULL;
out:
    sess_put(s);
    json_decref(row);
    json_decref(sr.participants);
    return rc;
}

/* ---- end / purge ---- */

struct end_op {
    const struct author *who;
};

static int end_tx(struct sess_tx *tx, void *arg)
{
    struct end_op *op = arg;
    int64_t cancelled = 0;
    char data[96];
    int rc = prompts_cancel_queued(tx, "session ended", &cancelled);
    if (!rc) {
        rc = meta_set_ended(tx);
    }
    if (rc) {
        return rc;
    }
    snprintf(data, sizeof(data), "{\"cancelled_prompts\":%lld}", (long long)cancelled);
    return sess_tx_append(tx, "session.ended", op->who, data, NULL);
}

int api_session_delete(struct req *r)
{
    struct app *app = req_app(r);
    const struct auth_info *a = req_auth(r);
    const char *sid = req_param(r, "id");
    const char *purge = req_query(r, "purge");
    struct sess *s = NULL;
    int do_purge = purge && (strcmp(purge, "true") == 0 || strcmp(purge, "1") == 0);
    int rc;
    if (purge && !do_purge && strcmp(purge, "false") != 0 && strcmp(purge, "0") != 0) {
        return req_fail(r, ERR_INVALID, "purge must be true or false");
    }
    rc = api_session_access(r, sid, AUTH_OWNER, NULL);
    if (rc) {
        return rc;
    }
    if (do_purge) {
        /* Registry first: from now on every request for the id answers 410. */
        rc = registry_session_set_state(app->reg, sid, "purged");
        auth_cache_invalidate(app->auth);
        if (rc) {
            return req_fail(r, rc, NULL);
        }
        runner_session_ended(app->runner, sid, 1); /* stop its sandbox */
        rc = store_session_delete_file(app->store, sid);
        if (rc && rc != ERR_NOT_FOUND) {
            LOG_ERROR("api: session %s: cannot delete its file: %s", sid, err_str(rc));
            return req_fail(r, rc, "the session is purged but its file could not be deleted");
        }
        LOG_INFO("api: session %s purged by %s", sid, a->user_id);
        return req_reply_json(r, 200, json_pack("{s:s,s:s}", "id", sid, "state", "purged"));
    }
    rc = get_sess(r, sid, &s);
    if (rc) {
        return rc;
    }
    struct author who = {a->user_id, a->name, a->email};
    struct end_op op = {&who};
    rc = sess_write(s, end_tx, &op);
    if (!rc) {
        rc = registry_session_set_state(app->reg, sid, "ended");
    }
    sess_put(s);
    if (rc) {
        return req_fail(r, rc, "cannot end the session: %s", err_str(rc));
    }
    runner_session_ended(app->runner, sid, 0); /* stop its sandbox */
    LOG_INFO("api: session %s ended by %s", sid, a->user_id);
    return req_reply_json(r, 200, json_pack("{s:s,s:s}", "id", sid, "state", "ended"));
}

/* ---- participants ---- */

struct member_op {
    const struct author *by;
    const char *user_id, *name, *email, *role;
};

static int member_tx(struct sess_tx *tx, void *arg)
{
    struct member_op *op = arg;
    int rc = participants_upsert(tx, op->user_id, op->name, op->email);
    if (rc) {
        return rc;
    }
    return ops_tx_append_json(tx, "participant.added", op->by,
                              json_pack("{s:s,s:s,s:s?,s:s?}", "user_id", op->user_id, "role",
                                        op->role, "name", op->name, "email", op->email),
                              NULL);
}

int api_session_participants_add(struct req *r)
{
    struct app *app = req_app(r);
    const struct auth_info *a = req_auth(r);
    const char *sid = req_param(r, "id");
    const char *user = NULL, *role = "writer", *name = NULL, *email = NULL;
    char *uid = NULL;
    json_t *body = NULL;
    struct sess *s = NULL;
    int rc = api_session_access(r, sid, AUTH_OWNER, NULL);
    if (rc) {
        return rc;
    }
    rc = req_json_body(r, &body);
    if (rc) {
        return rc;
    }
    rc = opt_str(r, body, "user_id", 150, &user);
    if (!rc) {
        rc = opt_str(r, body, "role", 16, &role);
    }
    if (!rc) {
        rc = opt_str(r, body, "name", 150, &name);
    }
    if (!rc) {
        rc = opt_str(r, body, "email", 150, &email);
    }
    if (rc) {
        goto out;
    }
    if (!user || !*user) {
        rc = req_fail(r, ERR_INVALID, "field 'user_id' is required");
        goto out;
    }
    if (strcmp(role, "writer") != 0 && strcmp(role, "viewer") != 0) {
        rc = req_fail(r, ERR_INVALID, "field 'role' must be \"writer\" or \"viewer\"");
        goto out;
    }
    uid = normalize_user_id(user);
    rc = registry_member_add(app->reg, sid, uid, role);
    auth_cache_invalidate(app->auth);
    if (rc) {
        rc = req_fail(r, rc, NULL);
        goto out;
    }
    rc = get_sess(r, sid, &s);
    if (rc) {
        goto out;
    }
    struct author by = {a->user_id, a->name, a->email};
    struct member_op op = {&by, uid, name, email, role};
    rc = sess_write(s, member_tx, &op);
    if (rc) {
        rc = req_fail(r, rc, NULL);
        goto out;
    }
    audit_req(r, "participant.add", sid, json_pack("{s:s,s:s}", "user_id", uid, "role", role));
    rc = req_reply_json(
        r, 201, json_pack("{s:s,s:s,s:s}", "session_id", sid, "user_id", uid, "role", role));
out:
    sess_put(s);
    json_decref(body);
    free(uid);
    return rc;
}

static int participants_rd(struct sess_rd *rd, void *arg)
{
    return participants_list(rd, participant_json, arg);
}

/* The member entry of uid in members, or NULL. */
static json_t *member_of(const char *uid, json_t *members)
{
    size_t i;
    json_t *m;
    json_array_foreach(members, i, m)
    {
        if (strcmp(uid, json_string_value(json_object_get(m, "user_id"))) == 0) {
            return m;
        }
    }
    return NULL;
}

/* Set p's role (the one that gives it access: "owner" for the creator, its member role, or
 * null for someone who joined an org session without being a member) and fill its missing
 * name/email from the registry. */
static void participant_fill(json_t *p, const char *created_by, json_t *members)
{
    const char *uid = json_string_value(json_object_get(p, "user_id"));
    json_t *m = uid ? member_of(uid, members) : NULL;
    const char *role = m ? json_string_value(json_object_get(m, "role")) : NULL;
    if (uid && created_by && strcmp(uid, created_by) == 0) {
        role = "owner";
    }
    json_object_set_new(p, "role", role ? json_string(role) : json_null());
    static const char *const fields[] = {"name", "email"};
    for (size_t i = 0; m && i < 2; i++) {
        if (json_is_null(json_object_get(p, fields[i]))) {
            json_object_set(p, fields[i], json_object_get(m, fields[i]));
        }
    }
}

static int in_list(json_t *arr, const char *key, const char *v)
{
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        const char *x = json_string_value(json_object_get(o, key));
        if (x && v && strcmp(x, v) == 0) {
            return 1;
        }
    }
    return 0;
}

/* GET /v1/sessions/{id}/participants: who joined the session (its file) and who is a member
 * (the registry), with the role that gives them access and whether they are connected. */
int api_session_participants_list(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    json_t *row = NULL, *members = NULL, *presence = NULL, *list = json_array();
    struct sess *s = NULL;
    size_t i;
    json_t *p;
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc) {
        goto out;
    }
    rc = registry_session_get(app->reg, sid, &row);
    if (!rc) {
        rc = registry_member_list(app->reg, sid, &members);
    }
    if (rc) {
        rc = req_fail(r, rc, NULL);
        goto out;
    }
    rc = get_sess(r, sid, &s);
    if (rc) {
        goto out;
    }
    rc = sess_view(s, participants_rd, list);
    if (rc) {
        rc = req_fail(r, rc, "cannot read the session: %s", err_str(rc));
        goto out;
    }
    json_array_foreach(members, i, p)
    {
        if (!in_list(list, "user_id", json_string_value(json_object_get(p, "user_id")))) {
            json_array_append_new(
                list, json_pack("{s:O,s:O,s:O,s:n,s:n}", "user_id", json_object_get(p, "user_id"),
                                "name", json_object_get(p, "name"), "email",
                                json_object_get(p, "email"), "joined_at", "last_seen"));
        }
    }
    const char *created_by = json_string_value(json_object_get(row, "created_by"));
    presence = hub_presence(app->hub, sid);
    json_array_foreach(list, i, p)
    {
        const char *uid = json_string_value(json_object_get(p, "user_id"));
        participant_fill(p, created_by, members);
        json_object_set_new(p, "connected", json_boolean(presence && in_list(presence, "id", uid)));
    }
    rc = req_reply_json(r, 200, json_pack("{s:O}", "participants", list));
out:
    sess_put(s);
    json_decref(row);
    json_decref(members);
    json_decref(presence);
    json_decref(list);
    return rc;
}

struct unmember_op {
    const struct author *by;
    const char *user_id;
    int was_member; /* the registry row existed */
};

static int unmember_tx(struct sess_tx *tx, void *arg)
{
    struct unmember_op *op = arg;
    int removed = 0;
    int rc = participants_remove(tx, op->user_id, &removed);
    if (rc) {
        return rc;
    }
    if (!removed && !op->was_member) {
        return ERR_NOT_FOUND;
    }
    return ops_tx_append_json(tx, "participant.removed", op->by,
                              json_pack("{s:s}", "user_id", op->user_id), NULL);
}

/* DELETE /v1/sessions/{id}/participants/{user}: the creator (with a non-viewer token) and
 * admins remove anyone but the creator; anyone may remove themselves. The user's access ends
 * now: the membership row goes, cached decisions are dropped, their sockets on the session
 * are closed (4403) and their unused tickets for it voided. */
int api_session_participant_remove(struct req *r)
{
    struct app *app = req_app(r);
    const struct auth_info *a = req_auth(r);
    const char *sid = req_param(r, "id");
    const char *user = req_param(r, "user");
    const char *role = NULL;
    json_t *row = NULL;
    struct sess *s = NULL;
    char *uid = NULL;
    int rc = api_session_access(r, sid, AUTH_READ, &role);
    if (rc) {
        return rc;
    }
    if (!user || !*user || strlen(user) > 150) {
        return req_fail(r, ERR_INVALID, "the user id must be 1 to 150 bytes");
    }
    uid = normalize_user_id(user);
    if (strcmp(uid, a->user_id) != 0 && strcmp(role, "owner") != 0) {
        rc = req_fail(r, ERR_FORBIDDEN,
                      "only the session's creator or an admin may remove a participant");
        goto out;
    }
    rc = registry_session_get(app->reg, sid, &row);
    if (rc) {
        rc = req_fail(r, rc, NULL);
        goto out;
    }
    const char *created_by = json_string_value(json_object_get(row, "created_by"));
    if (created_by && strcmp(created_by, uid) == 0) {
        rc = req_fail(r, ERR_CONFLICT, "the session's creator cannot be removed");
        goto out;
    }
    rc = get_sess(r, sid, &s);
    if (rc) {
        goto out;
    }
    int mrc = registry_member_remove(app->reg, sid, uid);
    auth_cache_invalidate(app->auth);
    if (mrc && mrc != ERR_NOT_FOUND) {
        rc = req_fail(r, mrc, NULL);
        goto out;
    }
    struct author by = {a->user_id, a->name, a->email};
    struct unmember_op op = {&by, uid, mrc == 0};
    rc = sess_write(s, unmember_tx, &op);
    if (rc == ERR_NOT_FOUND) {
        rc = req_fail(r, rc, "no participant %s in session %s", uid, sid);
        goto out;
    }
    /* After the registry change: a connection authenticated from now on sees it. */
    hub_revoke_member(app->hub, sid, uid);
    if (rc) {
        rc = req_fail(r, rc, NULL);
        goto out;
    }
    LOG_INFO("api: %s removed from session %s by %s", uid, sid, a->user_id);
    audit_req(r, "participant.remove", sid,
              json_pack("{s:s,s:b}", "user_id", uid, "was_member", mrc == 0));
    rc = req_reply_empty(r, 204);
out:
    sess_put(s);
    json_decref(row);
    free(uid);
    return rc;
}

/* ---- export ---- */

int api_session_export(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    char *dir = NULL, *path = NULL, *disp = NULL;
    char rnd[17];
    struct stat sb;
    int fd = -1;
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc) {
        return rc;
    }
    dir = xasprintf("%s/tmp", store_data_dir(app->store));
    util_random_hex(rnd, 8);
    path = xasprintf("%s/export-%s-%s.db", dir, sid, rnd);
    rc = util_mkdir_p(dir, 0700);
    if (!rc) {
        rc = store_session_backup(app->store, sid, path);
    }
    if (rc) {
        rc = req_fail(r, rc, "cannot export the session: %s", err_str(rc));
        goto out;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &sb) != 0) {
        rc = req_fail(r, ERR_IO, "cannot read the export");
        goto out;
    }
    disp = xasprintf("attachment; filename=\"%s.db\"", sid);
    req_add_header(r, "Content-Disposition", disp);
    rc = req_reply_fd(r, 200, "application/vnd.sqlite3", fd, (uint64_t)sb.st_size);
    fd = -1; /* the reply owns it; the name is gone below, the data lives until it is closed */
out:
    if (fd >= 0) {
        close(fd);
    }
    if (path) {
        unlink(path);
        char *aux = xasprintf("%s-journal", path);
        unlink(aux);
        free(aux);
    }
    free(disp);
    free(path);
    free(dir);
    return rc;
}
