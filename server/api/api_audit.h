/*
 * api_audit.h - the audit log (server/audit.h) as the REST handlers write it, and its endpoint
 * GET /v1/audit (admins only).
 *
 * Threads: HTTP pool threads.
 */
#ifndef SESSIOND_API_AUDIT_H
#define SESSIOND_API_AUDIT_H

#include <jansson.h>

struct req;

/** Longest argv/script text kept in an exec entry (bytes); longer ones are cut and marked
 * "truncated": true. */
#define AUDIT_EXEC_MAX 1024

/** audit_log() for the caller of an API request (its token and the connection's peer
 * address). detail: a JSON object or NULL; stolen. */
void audit_req(struct req *r, const char *action, const char *target, json_t *detail);
/** Record an exec in session sid: argv (a JSON array of strings) or script, whichever is
 * set, cut to AUDIT_EXEC_MAX bytes. */
void audit_exec(struct req *r, const char *sid, const char *exec_id, json_t *argv,
                const char *script);

/** GET /v1/audit?limit=&cursor=&action=&user_id= (admins only, 403 otherwise). */
int api_audit_list(struct req *r);

#endif
