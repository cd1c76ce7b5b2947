/*
 * audit.h - the audit log of security-relevant actions (registry table `audit`). The REST side
 * (entries for a request's caller, GET /v1/audit) is server/api/api_audit.h.
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

/** Record action on target by actor (NULL = the server itself) from ip (may be NULL).
 * detail: a JSON object or NULL; stolen. */
void audit_log(struct registry *reg, const struct auth_info *actor, const char *ip,
               const char *action, const char *target, json_t *detail);

#endif
