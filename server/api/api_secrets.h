/*
 * api_secrets.h - the admin endpoints of global and per-repository secrets (server/vault.h),
 * and the glue that hands a session's secrets to the runner and the repository layer.
 *
 *   PUT    /v1/secrets/{name}                 {value}   set a global secret (admin)
 *   GET    /v1/secrets                                   [{name, updated_at, set_by}] (admin)
 *   DELETE /v1/secrets/{name}                            (admin)
 *   PUT    /v1/repos/{name}/secrets/{secret}  {value}   the same for one repository
 *   GET    /v1/repos/{name}/secrets
 *   DELETE /v1/repos/{name}/secrets/{secret}
 *
 * A value is never returned, logged or written to the audit log (which records who set or
 * deleted which name). Threads: HTTP pool threads; the glue any thread.
 */
#ifndef SESSIOND_API_SECRETS_H
#define SESSIOND_API_SECRETS_H

struct app;
struct req;
struct redact_set;

/** Create app->vault over app->reg and app->secrets (after the master key is loaded). */
int api_secrets_start(struct app *app);
void api_secrets_free(struct app *app);
/** The secrets of a repository (repo non-NULL) or of a session's repository (sid): the
 * observer the runner and the repository layer are handed (ctx = the app). *out: a new
 * reference or NULL (none). */
int api_secrets_for(void *ctx, const char *sid, const char *repo, struct redact_set **out);

int api_secrets_list(struct req *r);
int api_secrets_put(struct req *r);
int api_secrets_delete(struct req *r);
int api_repo_secrets_list(struct req *r);
int api_repo_secrets_put(struct req *r);
int api_repo_secrets_delete(struct req *r);

#endif
