/*
 * api_secrets.h - the admin endpoints of global and per-repository secrets (server/vault.h).
 *
 *   PUT    /v1/secrets/{name}                 {value}   set a global secret (admin)
 *   GET    /v1/secrets                                   [{name, updated_at, set_by}] (admin)
 *   DELETE /v1/secrets/{name}                            (admin)
 *   PUT    /v1/repos/{name}/secrets/{secret}  {value}   the same for one repository
 *   GET    /v1/repos/{name}/secrets
 *   DELETE /v1/repos/{name}/secrets/{secret}
 *
 * A value is never returned, logged or written to the audit log (which records who set or
 * deleted which name). Threads: HTTP pool threads. The vault is opened by server/app.c; the
 * lookup of a session's secrets is ops_secrets_for (server/ops.h).
 */
#ifndef SESSIOND_API_SECRETS_H
#define SESSIOND_API_SECRETS_H

struct req;

int api_secrets_list(struct req *r);
int api_secrets_put(struct req *r);
int api_secrets_delete(struct req *r);
int api_repo_secrets_list(struct req *r);
int api_repo_secrets_put(struct req *r);
int api_repo_secrets_delete(struct req *r);

#endif
