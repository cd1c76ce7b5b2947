/*
 * audit.c - writing the audit log (see audit.h); the REST side (the caller's address, exec
 * entries, GET /v1/audit) is server/api/api_audit.c.
 *
 * Entries are written synchronously by the thread doing the action: every audited action is
 * rare next to messages and reads (which are never audited), and one INSERT into the registry
 * (WAL, synchronous=NORMAL: no fsync per commit) costs tens of microseconds. A failed write
 * is logged and the action goes on: the log is evidence, not a gate.
 * Threads: any; the registry serializes the writes.
 */
#include "server/audit.h"

#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "storage/registry.h"

#include <stdlib.h>

void audit_log(struct registry *reg, const struct auth_info *actor, const char *ip,
               const char *action, const char *target, json_t *detail)
{
    char *txt = detail ? jx_dump(detail) : NULL;
    struct registry_audit e = {
        .actor_user_id = actor ? actor->user_id : NULL,
        .actor_token_id = actor && actor->token_id[0] ? actor->token_id : NULL,
        .action = action,
        .target = target,
        .detail_json = txt,
        .request_ip = ip,
    };
    int rc = reg ? registry_audit_add(reg, &e) : ERR_INVALID;
    if (rc) {
        LOG_ERROR("audit: cannot record %s on %s: %s", action, target ? target : "-", err_str(rc));
    }
    free(txt);
    json_decref(detail);
}
