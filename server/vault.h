/*
 * vault.h - admin-managed secrets: global ones and per-repository ones, sealed at rest with the
 * server's master key (server/secrets.h, the aad "secret:<repo>:<name>") in registry.db
 * (storage/secrets_db.h), handed out only as a redaction set (common/redact.h) that carries
 * the values for the environment of a session's commands and the patterns its output is
 * scrubbed of.
 *
 * Names match [A-Z_][A-Z0-9_]{0,63} and are not reserved (the variables the sandbox, the agents
 * and the egress proxy set: PATH, HOME, the proxy variables, the agents' key variables, ...);
 * values are 8 to 4096 bytes without NUL. The value of a repository's secret beats the global
 * one of the same name. A session without a repository gets no secrets.
 *
 * The set of a repository is cached until any secret changes (a generation counter), so a
 * sandbox start or an exec costs no unsealing in the steady state.
 *
 * Threads: thread safe; the cache is guarded by the vault's mutex, never held across SQLite or
 * a seal.
 */
#ifndef SESSIOND_VAULT_H
#define SESSIOND_VAULT_H

#include <jansson.h>
#include <stddef.h>

struct registry;
struct secrets;
struct redact_set;
struct vault;

/** A vault over reg and the master key sec (both must outlive it; sec may be NULL: puts fail
 * with ERR_UNAVAILABLE and sets are empty). extra_reserved: more reserved names (the configured
 * agents' key variables), NULL terminated, copied; may be NULL. *out: vault_free(). */
int vault_new(struct registry *reg, const struct secrets *sec, const char *const *extra_reserved,
              struct vault **out);
void vault_free(struct vault *v);

/** 0 if name is a valid, unreserved secret name; else ERR_INVALID with why in msg. */
int vault_check_name(const struct vault *v, const char *name, char *msg, size_t n);
/** Set secret name of repo ("" = global) to value (n bytes), recording set_by. ERR_INVALID
 * (msg says why), ERR_UNAVAILABLE (no master key). */
int vault_put(struct vault *v, const char *repo, const char *name, const char *value, size_t n,
              const char *set_by, char *msg, size_t msgn);
/** ERR_NOT_FOUND if there was none. */
int vault_delete(struct vault *v, const char *repo, const char *name);
/** [{name, updated_at, set_by}] of repo ("" = global): never a value. New reference. */
int vault_list(struct vault *v, const char *repo, json_t **out);
/** 1 if any secret exists (global or of any repository): a cheap test before a lookup on a
 * hot path. */
int vault_any(struct vault *v);
/** The secrets that apply to repository repo (its own, then the global ones it does not
 * override): *out is a new reference (redact_set_unref) or NULL when there are none or repo
 * is NULL/"". A value that no longer opens (another master key) is skipped with a warning. */
int vault_repo_set(struct vault *v, const char *repo, struct redact_set **out);

#endif
