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

static int recover_tx(struct sess_tx *tx, void *arg)
{
    int *queued = arg;
    sqlite3_stmt *st = sess_tx_prepare(tx, "SELECT id FROM prompts WHERE state='running'");
    if (!st) {
        return ERR_DB;
    }
    json_t *ids = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_array_append_new(ids, json_string((const char *)sqlite3_column_text(st, 0)));
    }
    sqlite3_reset(st);
    size_t i;
    json_t *v;
    int rc = 0;
    json_array_foreach(ids, i, v)
    {
        sqlite3_stmt *u = sess_tx_prepare(
            tx, "UPDATE prompts SET state='failed', finished_at=?, reason=? WHERE id=?");
        if (!u) {
            rc = ERR_DB;
            break;
        }
        sqlite3_bind_int64(u, 1, sess_tx_now(tx));
        sqlite3_bind_text(u, 2, "server restarted", -1, SQLITE_STATIC);
        sqlite3_bind_text(u, 3, json_string_value(v), -1, SQLITE_STATIC);
        if (sqlite3_step(u) != SQLITE_DONE) {
            rc = ERR_DB;
            break;
        }
        char *d = runneri_json_obj_str("prompt_id", json_string_value(v), "reason",
                                       "the server restarted while the prompt ran");
        rc = sess_tx_append(tx, "prompt.failed", NULL, d, NULL);
        free(d);
        if (rc) {
            break;
        }
    }
    json_decref(ids);
    if (rc) {
        return rc;
    }
    st = sess_tx_prepare(tx, "SELECT count(*) FROM prompts WHERE state='queued'");
    if (!st || sqlite3_step(st) != SQLITE_ROW) {
        return ERR_DB;
    }
    *queued = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return 0;
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
            int queued = 0;
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
