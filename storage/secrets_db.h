/*
 * secrets_db.h - the admin-managed secrets of registry.db (migrations/registry/0005_secrets.sql):
 * global ones (repo "") and per-repository ones, each a sealed text (server/secrets.h) that this
 * module stores and hands back without knowing what it is. Plus the one re-sealing pass over
 * every sealed value of the file (secrets and user_credentials) that a key rotation needs.
 *
 * Thread safe: every function takes the registry's lock (registry.h) for its statements and
 * never holds it across a callback that could block on anything but memory.
 */
#ifndef SESSIOND_SECRETS_DB_H
#define SESSIOND_SECRETS_DB_H

#include <jansson.h>
#include <stdint.h>

struct registry;

/** Insert or replace secret name of repo ("" = global) with its sealed text. */
int secrets_db_put(struct registry *reg, const char *repo, const char *name, const char *sealed,
                   const char *set_by, int64_t now_ms);
/** ERR_NOT_FOUND if there was none. */
int secrets_db_delete(struct registry *reg, const char *repo, const char *name);
/** The secrets of repo ("" = the global ones), by name, without their values:
 * *out = [{name, updated_at, set_by}] (new reference). */
int secrets_db_list(struct registry *reg, const char *repo, json_t **out);

/** How many secrets there are, global and per repository: *n. */
int secrets_db_count(struct registry *reg, int64_t *n);

/** Called for each secret that applies to a repository: its scope (repo or "") and sealed
 * text, borrowed for the call. Return 0 to go on. */
typedef int (*secrets_db_row_fn)(void *ctx, const char *repo, const char *name, const char *sealed);
/** The global secrets and those of repo (the repository's first, then the global ones, each
 * by name), one fn call each, lock not held during the calls. */
int secrets_db_for_repo(struct registry *reg, const char *repo, secrets_db_row_fn fn, void *ctx);

/** What a re-seal sees of one sealed value: table is "secrets" (a = repo, b = name) or
 * "user_credentials" (a = user id, b = provider). *resealed: a new sealed text the function
 * allocates (freed here). Return non-zero to abort the whole pass. */
typedef int (*secrets_db_reseal_fn)(void *ctx, const char *table, const char *a, const char *b,
                                    const char *sealed, char **resealed);
/** Re-seal every sealed value of the registry in one transaction: all or nothing. *n: how
 * many values were re-sealed. */
int secrets_db_reseal_all(struct registry *reg, secrets_db_reseal_fn fn, void *ctx, int *n);

#endif
