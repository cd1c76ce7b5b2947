/*
 * recover.c - the start-up recovery (runner_int.h): prompts a crash left `running` are
 * marked failed (prompt.failed {reason}) in the transaction that reports it, and every
 * session with queued prompts is kicked, so a queue acknowledged before a crash runs.
 *
 * Thread context: the control thread (its first job).
 */
#include "runner/runner_int.h"

#include "agents/agents.h"
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/commitq.h"
#include "sandbox/sbx.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "workspace/repos.h"
#include "workspace/snap/snap.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- recovery ---- */

/* Each prompt prompts_recover failed is reported in the same transaction. */
static int report_failed(void *ctx, const char *id)
{
    struct sess_tx *tx = ctx;
    char *d = runneri_json_obj_str("prompt_id", id, "reason",
                                   "the server restarted while the prompt ran");
    int rc = sess_tx_append(tx, "prompt.failed", NULL, d, NULL);
    free(d);
    return rc;
}

static int recover_tx(struct sess_tx *tx, void *arg)
{
    int64_t *queued = arg;
    int rc = prompts_recover(tx, "server restarted", report_failed, tx);
    if (rc) {
        return rc;
    }
    return prompts_count(sess_tx_rd(tx), PROMPT_QUEUED, queued);
}

void runneri_recover(struct runner *r)
{
    struct registry *reg = store_registry(r->st);
    char *cursor = NULL;
    int n = 0, resumed = 0;
    for (;;) {
        json_t *page = NULL;
        if (registry_session_list(reg, "", 1, 200, cursor, &page)) {
            break;
        }
        free(cursor);
        cursor = NULL;
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(page, "sessions"), i, v)
        {
            const char *sid = json_string_value(json_object_get(v, "id"));
            if (!sid) {
                continue;
            }
            int64_t queued = 0;
            if (runneri_write_op(r, sid, recover_tx, &queued) == 0 && queued) {
                runner_kick(r, sid);
                resumed++;
            }
            n++;
        }
        const char *nc = json_string_value(json_object_get(page, "next_cursor"));
        cursor = nc ? xstrdup(nc) : NULL;
        json_decref(page);
        if (!cursor) {
            break;
        }
    }
    free(cursor);
    LOG_INFO("runner: recovery scanned %d sessions, resumed %d queues", n, resumed);
}
