/*
 * registry.h - registry.db: the index of sessions, users and API tokens, session membership.
 *
 * Thread safe: one connection guarded by an internal mutex (statements are short).
 * Results that are JSON are new references the caller decrefs. Token secrets are stored only
 * as SHA-256 hashes; a secret is returned once, by registry_token_create().
 */
#ifndef SESSIOND_REGISTRY_H
#define SESSIOND_REGISTRY_H

#include <jansson.h>
#include <stdint.h>

struct registry;

/** Who a token belongs to. Filled by registry_token_auth(). */
struct auth_info {
    char token_id[40];
    char user_id[160]; /* "token:alice", "slack:U123" */
    char name[160];
    char email[160];
    char role[16];         /* user | viewer | bot | admin */
    int64_t expires_at_ms; /* epoch ms; 0 = never */
};

int registry_open(const char *path, int durability_full, struct registry **out);
void registry_close(struct registry *r);

/* ---- tokens ---- */

/** Create a token. *out = {"id","token"(secret, shown once),"user_id","name","email","role",
 * "created_at","expires_at"|null}. role must be user|viewer|bot|admin (else ERR_INVALID).
 * expires_at_ms 0 = never. */
int registry_token_create(struct registry *r, const char *user_id, const char *name,
                          const char *email, const char *role, int64_t expires_at_ms, json_t **out);
/** Create the admin token with a given secret if no token has that hash yet (bootstrap; the
 * new row is marked origin "bootstrap"). id_out (may be NULL) gets the id of the token that
 * has the secret, new or not. */
int registry_token_ensure(struct registry *r, const char *secret, const char *user_id,
                          const char *role, char id_out[40]);
/** Delete every bootstrap token except keep_id: a changed SESSIOND_ADMIN_TOKEN / admin.token
 * revokes the previous one (admin tokens minted through the API are never touched).
 * *revoked = JSON array of the deleted ids (new reference, possibly empty). */
int registry_token_revoke_bootstrap(struct registry *r, const char *keep_id, json_t **revoked);
/** The owner of token id (no secret involved). ERR_NOT_FOUND if revoked or unknown, ERR_AUTH if
 * expired. out may be NULL (a liveness check). */
int registry_token_get(struct registry *r, const char *token_id, struct auth_info *out);
/** Look up a bearer secret. ERR_AUTH if unknown, revoked or expired. */
int registry_token_auth(struct registry *r, const char *secret, struct auth_info *out);
/** {"tokens":[{id,user_id,name,email,role,created_at,expires_at}]}, no secrets; user_id NULL
 * lists all. */
int registry_token_list(struct registry *r, const char *user_id, json_t **out);
/** Delete a token. owner_user_id non-NULL restricts to that user's tokens (ERR_NOT_FOUND
 * otherwise). */
int registry_token_delete(struct registry *r, const char *token_id, const char *owner_user_id);

/* ---- sessions ---- */

struct session_new {
    const char *id;
    const char *title;      /* may be NULL */
    const char *repo;       /* may be NULL */
    const char *visibility; /* "org" | "private" */
    const char *agent;      /* may be NULL */
    const char *created_by; /* user id */
};

/** Insert a session row (state "active"). ERR_CONFLICT if the id exists. *out (may be NULL)
 * gets the row as JSON. */
int registry_session_create(struct registry *r, const struct session_new *n, json_t **out);
/** The row as JSON {id,title,repo,visibility,agent,state,created_by,created_at,last_seq,
 * last_activity}. ERR_NOT_FOUND, or ERR_GONE if purged. */
int registry_session_get(struct registry *r, const char *id, json_t **out);
/** Sessions visible to user (org ones + private ones they are a member of; admins see all),
 * newest first. cursor is the opaque next_cursor of the previous page or NULL.
 * *out = {"sessions":[…],"next_cursor":"…"|null}. */
int registry_session_list(struct registry *r, const char *user_id, int is_admin, int limit,
                          const char *cursor, json_t **out);
/** state: active | ended | purged. */
int registry_session_set_state(struct registry *r, const char *id, const char *state);
/** Lazy update of the columns that change on every write (called by the store's flusher). */
int registry_session_touch(struct registry *r, const char *id, int64_t last_seq,
                           int64_t last_activity_ms);
/** The same for n sessions in one transaction (one WAL commit instead of n). */
struct registry_touch {
    const char *id;
    int64_t last_seq;
    int64_t last_activity_ms;
};
int registry_session_touch_many(struct registry *r, const struct registry_touch *t, size_t n);

/** Access of a user to a session: *role_out = "owner" | "writer" | "viewer" | NULL (none).
 * Org sessions: every non-viewer user token writes, viewer tokens read. Private: creator +
 * members only. Admin tokens: "owner" everywhere. ERR_NOT_FOUND / ERR_GONE as above. */
int registry_session_access(struct registry *r, const char *id, const struct auth_info *who,
                            const char **role_out);
/** Add or update a member of a session (role "writer" | "viewer"). */
int registry_member_add(struct registry *r, const char *session_id, const char *user_id,
                        const char *role);
/** Remove a member of a session. ERR_NOT_FOUND if user_id was not one. */
int registry_member_remove(struct registry *r, const char *session_id, const char *user_id);
/** The members of a session: *out = [{"user_id","role","name","email"}] (name/email null when
 * the user has no token), ordered by user id. New reference. */
int registry_member_list(struct registry *r, const char *session_id, json_t **out);

/* ---- audit log ---- */

/** One entry of the audit log. Every field but action may be NULL. */
struct registry_audit {
    const char *actor_user_id;
    const char *actor_token_id;
    const char *action; /* "token.create", "participant.remove", "exec", … */
    const char *target;
    const char *detail_json; /* a JSON object as text; NULL = {} */
    const char *request_ip;
};
/** Append an entry (at = now). */
int registry_audit_add(struct registry *r, const struct registry_audit *e);
/** Entries newest first, at most limit (1..1000), optionally only one action and/or one actor.
 * cursor: the opaque next_cursor of the previous page, or NULL. ERR_INVALID for a malformed
 * cursor. *out = {"entries":[{id,at,actor_user_id,actor_token_id,action,target,detail,
 * request_ip}],"has_more":bool,"next_cursor":"…"|null} (new reference). */
int registry_audit_list(struct registry *r, const char *action, const char *user_id, int limit,
                        const char *cursor, json_t **out);

/** Generic key/value for small server state (e.g. slack event ids, metrics). */
int registry_kv_get(struct registry *r, const char *key, char **value_out);
int registry_kv_put(struct registry *r, const char *key, const char *value);
/** Insert key only if absent: *inserted = 1 if it was new (dedup of webhook retries). */
int registry_kv_put_new(struct registry *r, const char *key, const char *value, int *inserted);

#endif
