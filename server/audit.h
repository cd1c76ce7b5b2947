/*
 * audit.h - the audit log of security-relevant actions (registry table `audit`) and its
 * endpoint GET /v1/audit (admins only).
 *
 * What is recorded: token mint and revoke (admin tokens included: detail.role), the rotation of
 * the bootstrap admin token at start, participant add/remove, stored secrets set/delete (never
 * the value), exec (argv or script, truncated). Messages and reads are not recorded. A write is
 * one short registry INSERT on the thread doing the action; a failure to record is logged and
 * never fails the action.
 * Thread safe.
 */
#ifndef SESSIOND_AUDIT_H
#define SESSIOND_AUDIT_H

#include <jansson.h>

struct auth_info;
struct registry;
struct req;

/** Longest argv/script text kept in an exec entry (bytes); longer ones are cut and marked
 * "truncated": true. */
#define AUDIT_EXEC_MAX 1024

/** Record action on target by actor (NULL = the server itself) from ip (may be NULL).
 * detail: a JSON object or NULL; stolen. */
void audit_log(struct registry *reg, const struct auth_info *actor, const char *ip,
               const char *action, const char *target, json_t *detail);
/** The same for the caller of an API request (its token and client address). */
void audit_req(struct req *r, const char *action, const char *target, json_t *detail);
/** Record an exec in session sid: argv (a JSON array of strings) or script, whichever is
 * set, cut to AUDIT_EXEC_MAX bytes. */
void audit_exec(struct req *r, const char *sid, const char *exec_id, json_t *argv,
                const char *script);

/** GET /v1/audit?limit=&cursor=&action=&user_id= (admins only, 403 otherwise). */
int api_audit_list(struct req *r);

#endif
