/*
 * auth.h - bearer tokens and access checks on top of the registry.
 *
 * Identity comes from "Authorization: Bearer <secret>" (registry_token_auth hashes the secret
 * with SHA-256; secrets are never stored or logged). Access to a session comes from
 * registry_session_access(): owner (creator, admins), writer, viewer, or none. Both go through
 * the caches of a struct auth (one per registry; app.c makes it and holds it in struct app).
 * Thread safe.
 */
#ifndef SESSIOND_AUTH_H
#define SESSIOND_AUTH_H

#include <stddef.h>

struct auth;
struct auth_info;
struct config;
struct registry;

/** What a caller needs on a session. */
enum auth_need {
    AUTH_READ = 1,  /* any role: owner, writer, viewer */
    AUTH_WRITE = 2, /* owner or writer (viewers get 403) */
    AUTH_OWNER = 3, /* owner only (creator or admin) */
};

/** Empty token and access caches in front of reg (borrowed: it must outlive the auth).
 * *out: auth_free(). */
int auth_new(struct registry *reg, struct auth **out);
/** NULL is a no-op. */
void auth_free(struct auth *a);

/** Resolve an Authorization header value to its token's owner. ERR_AUTH if absent, not a
 * Bearer credential, unknown, revoked or expired. */
int auth_bearer(struct auth *a, const char *authorization, struct auth_info *out);

/** Check who's access to session sid. 0 with *role_out ("owner"|"writer"|"viewer", static
 * storage; may be NULL), ERR_NOT_FOUND (also when the caller may not even see it), ERR_GONE
 * (purged), or ERR_FORBIDDEN (visible but not enough). */
int auth_session(struct auth *a, const char *sid, const struct auth_info *who, int need,
                 const char **role_out);

/** Forget every cached token and access decision (see auth.c): call after revoking a token,
 * changing a membership or purging a session outside the API handlers (which
 * already do). Without it such a change takes effect within AUTH_CACHE_TTL_MS. NULL a is a
 * no-op. */
void auth_cache_invalidate(struct auth *a);
#define AUTH_CACHE_TTL_MS 1000

/** 1 for an admin token. */
int auth_is_admin(const struct auth_info *who);
/** 1 for a token that may act for someone else (bot or admin: the `author` field). */
int auth_may_impersonate(const struct auth_info *who);

/** Make sure an admin token exists: cfg->admin_token if set, else the secret stored in
 * <data_dir>/admin.token, else a new random one written there with mode 0600 (its path is
 * logged, never the secret). A bootstrap admin token of an earlier start with another secret
 * is revoked (and the rotation audited); admin tokens minted through the API are kept. */
int auth_bootstrap_admin(struct auth *a, const struct config *cfg);

#endif
