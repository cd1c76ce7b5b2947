/*
 * prompts.c - the prompt state machine and the SQL of the `prompts` table (see prompts.h).
 * Each transition is one UPDATE whose WHERE names the state it leaves, so a transition that
 * lost a race (the prompt was cancelled before it started) changes nothing and says so.
 *
 * Thread context: inside a session's group commit or read (its lock held).
 */
#include "storage/prompts.h"

#include "common/err.h"
#include "common/xmem.h"
#include "storage/storage_int.h"
#include "storage/store.h"

#include <stdlib.h>
#include <string.h>

static const char *const names[PROMPT_NSTATES] = {
    [PROMPT_QUEUED] = "queued", [PROMPT_RUNNING] = "running",     [PROMPT_COMPLETED] = "completed",
    [PROMPT_FAILED] = "failed", [PROMPT_CANCELLED] = "cancelled",
};

/* allowed[from][to]: the edges of the machine (prompts.h draws them). */
static const unsigned char allowed[PROMPT_NSTATES][PROMPT_NSTATES] = {
    [PROMPT_QUEUED] = {[PROMPT_RUNNING] = 1, [PROMPT_FAILED] = 1, [PROMPT_CANCELLED] = 1},
    [PROMPT_RUNNING] = {[PROMPT_COMPLETED] = 1, [PROMPT_FAILED] = 1, [PROMPT_CANCELLED] = 1},
};

const char *prompt_state_str(enum prompt_state st)
{
    return (unsigned)st < PROMPT_NSTATES ? names[st] : NULL;
}

int prompt_state_parse(const char *s, enum prompt_state *out)
{
    for (int i = 0; s && i < PROMPT_NSTATES; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum prompt_state)i;
            return 0;
        }
    }
    return ERR_INVALID;
}

int prompt_transition_ok(enum prompt_state from, enum prompt_state to)
{
    if ((unsigned)from >= PROMPT_NSTATES || (unsigned)to >= PROMPT_NSTATES) {
        return 0;
    }
    return allowed[from][to];
}

int prompt_state_terminal(enum prompt_state st)
{
    return st == PROMPT_COMPLETED || st == PROMPT_FAILED || st == PROMPT_CANCELLED;
}

/* Step an UPDATE of one prompt: 0 when it changed a row, ERR_NOT_FOUND when the prompt was
 * not in the state the statement leaves. */
static int step_one(struct sess_tx *tx, sqlite3_stmt *st)
{
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        return ERR_DB;
    }
    return sqlite3_changes(sess_tx_db(tx)) ? 0 : ERR_NOT_FOUND;
}

int prompts_queue(struct sess_tx *tx, const char *id, const char *message_id,
                  const struct author *a)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "INSERT INTO prompts(id,message_id,author_id,"
                                           "author_name,author_email,state,queued_at) "
                                           "VALUES(?,?,?,?,?,'queued',?)");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, message_id, -1, SQLITE_STATIC);
    sql_bind_text_opt(st, 3, a ? a->id : NULL);
    sql_bind_text_opt(st, 4, a ? a->name : NULL);
    sql_bind_text_opt(st, 5, a ? a->email : NULL);
    sqlite3_bind_int64(st, 6, sess_tx_now(tx));
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : ERR_DB;
}

int prompts_start(struct sess_tx *tx, const char *id)
{
    sqlite3_stmt *st = sess_tx_prepare(
        tx, "UPDATE prompts SET state='running', started_at=? WHERE id=? AND state='queued'");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_int64(st, 1, sess_tx_now(tx));
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    return step_one(tx, st);
}

int prompts_finish(struct sess_tx *tx, const char *id, enum prompt_state to, const int *exit_code,
                   const char *reason)
{
    if (!prompt_transition_ok(PROMPT_RUNNING, to)) {
        return ERR_INVALID;
    }
    sqlite3_stmt *st = sess_tx_prepare(tx, "UPDATE prompts SET state=?, finished_at=?, "
                                           "exit_code=?, reason=? WHERE id=? AND state='running'");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, names[to], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sess_tx_now(tx));
    if (exit_code) {
        sqlite3_bind_int(st, 3, *exit_code);
    } else {
        sqlite3_bind_null(st, 3);
    }
    sql_bind_text_opt(st, 4, reason);
    sqlite3_bind_text(st, 5, id, -1, SQLITE_STATIC);
    return step_one(tx, st);
}

/* queued -> to (failed or cancelled): the prompt never ran. */
static int end_queued(struct sess_tx *tx, const char *id, enum prompt_state to, const char *reason)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "UPDATE prompts SET state=?, finished_at=?, reason=? "
                                           "WHERE id=? AND state='queued'");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, names[to], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sess_tx_now(tx));
    sql_bind_text_opt(st, 3, reason);
    sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC);
    return step_one(tx, st);
}

int prompts_fail(struct sess_tx *tx, const char *id, const char *reason)
{
    return end_queued(tx, id, PROMPT_FAILED, reason);
}

int prompts_cancel(struct sess_tx *tx, const char *id, const char *reason)
{
    return end_queued(tx, id, PROMPT_CANCELLED, reason);
}

int prompts_cancel_queued(struct sess_tx *tx, const char *reason, int64_t *n)
{
    sqlite3_stmt *st = sess_tx_prepare(tx, "UPDATE prompts SET state='cancelled', reason=?, "
                                           "finished_at=? WHERE state='queued'");
    if (!st) {
        return ERR_DB;
    }
    sql_bind_text_opt(st, 1, reason);
    sqlite3_bind_int64(st, 2, sess_tx_now(tx));
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        return ERR_DB;
    }
    if (n) {
        *n = sqlite3_changes(sess_tx_db(tx));
    }
    return 0;
}

int prompts_recover(struct sess_tx *tx, const char *reason, prompts_id_fn fn, void *ctx)
{
    /* One row at a time: the running set is tiny (one prompt per session runs), and reading
     * the next id after each update needs no list of our own. */
    for (;;) {
        sqlite3_stmt *st =
            sess_tx_prepare(tx, "SELECT id FROM prompts WHERE state='running' LIMIT 1");
        if (!st) {
            return ERR_DB;
        }
        int r = sqlite3_step(st);
        if (r == SQLITE_DONE) {
            sqlite3_reset(st);
            return 0;
        }
        if (r != SQLITE_ROW) {
            sqlite3_reset(st);
            return ERR_DB;
        }
        char id[128];
        const unsigned char *t = sqlite3_column_text(st, 0);
        size_t len = t ? strlen((const char *)t) : 0;
        if (len >= sizeof id) {
            len = sizeof id - 1; /* ids are ours ("p_" + a short random part) */
        }
        memcpy(id, t ? (const char *)t : "", len);
        id[len] = '\0';
        sqlite3_reset(st);
        st = sess_tx_prepare(tx, "UPDATE prompts SET state='failed', finished_at=?, reason=? "
                                 "WHERE id=? AND state='running'");
        if (!st) {
            return ERR_DB;
        }
        sqlite3_bind_int64(st, 1, sess_tx_now(tx));
        sql_bind_text_opt(st, 2, reason);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        int rc = step_one(tx, st);
        if (!rc && fn) {
            rc = fn(ctx, id);
        }
        if (rc) {
            return rc;
        }
    }
}

int prompts_count(struct sess_rd *rd, enum prompt_state state, int64_t *n)
{
    if ((unsigned)state >= PROMPT_NSTATES) {
        return ERR_INVALID;
    }
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT count(*) FROM prompts WHERE state=?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, names[state], -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    *n = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return r == SQLITE_ROW ? 0 : ERR_DB;
}

int prompts_count_unfinished(struct sess_rd *rd, int64_t *n)
{
    sqlite3_stmt *st =
        sess_rd_prepare(rd, "SELECT count(*) FROM prompts WHERE state IN ('queued','running')");
    if (!st) {
        return ERR_DB;
    }
    int r = sqlite3_step(st);
    *n = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return r == SQLITE_ROW ? 0 : ERR_DB;
}

int prompts_each(struct sess_rd *rd, enum prompt_state state, prompts_id_fn fn, void *ctx)
{
    if ((unsigned)state >= PROMPT_NSTATES) {
        return ERR_INVALID;
    }
    sqlite3_stmt *st =
        sess_rd_prepare(rd, "SELECT id FROM prompts WHERE state=? ORDER BY queued_at, rowid");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, names[state], -1, SQLITE_STATIC);
    int r, rc = 0;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        rc = fn(ctx, (const char *)sqlite3_column_text(st, 0));
    }
    if (!rc && r != SQLITE_DONE) {
        rc = ERR_DB;
    }
    sqlite3_reset(st);
    return rc;
}

int prompts_state(struct sess_rd *rd, const char *id, enum prompt_state *out)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, "SELECT state FROM prompts WHERE id=?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    int rc = r == SQLITE_ROW    ? prompt_state_parse((const char *)sqlite3_column_text(st, 0), out)
             : r == SQLITE_DONE ? ERR_NOT_FOUND
                                : ERR_DB;
    sqlite3_reset(st);
    return rc;
}

static char *dup_col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? xstrdup((const char *)t) : NULL;
}

/* The prompt columns of struct prompt_info, in its order; the caller appends WHERE/ORDER. */
#define PROMPT_INFO_SELECT                                                                         \
    "SELECT p.id, p.message_id, p.author_id, coalesce(p.author_name, m.author_name), "             \
    "coalesce(p.author_email, m.author_email), m.content, m.context_json FROM prompts p "          \
    "LEFT JOIN messages m ON m.id = p.message_id "

static int info_step(sqlite3_stmt *st, struct prompt_info *out)
{
    memset(out, 0, sizeof(*out));
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        out->id = dup_col(st, 0);
        out->message_id = dup_col(st, 1);
        out->author_id = dup_col(st, 2);
        out->author_name = dup_col(st, 3);
        out->author_email = dup_col(st, 4);
        out->content = dup_col(st, 5);
        out->context_json = dup_col(st, 6);
    }
    sqlite3_reset(st);
    return r == SQLITE_ROW ? 0 : r == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
}

int prompts_next(struct sess_rd *rd, struct prompt_info *out)
{
    sqlite3_stmt *st =
        sess_rd_prepare(rd, PROMPT_INFO_SELECT "WHERE p.state='queued' "
                                               "ORDER BY p.queued_at, p.rowid LIMIT 1");
    if (!st) {
        memset(out, 0, sizeof(*out));
        return ERR_DB;
    }
    return info_step(st, out);
}

int prompts_get(struct sess_rd *rd, const char *id, struct prompt_info *out)
{
    sqlite3_stmt *st = sess_rd_prepare(rd, PROMPT_INFO_SELECT "WHERE p.id=?");
    if (!st) {
        memset(out, 0, sizeof(*out));
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return info_step(st, out);
}

void prompt_info_free(struct prompt_info *p)
{
    if (!p) {
        return;
    }
    free(p->id);
    free(p->message_id);
    free(p->author_id);
    free(p->author_name);
    free(p->author_email);
    free(p->content);
    free(p->context_json);
    memset(p, 0, sizeof(*p));
}
