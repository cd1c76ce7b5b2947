/*
 * test_prompts.c - the prompt state machine (storage/prompts.h): the names of the states, every
 * allowed transition and every refused one, in the table and against a real session file
 * (a transition from the wrong state changes nothing and says ERR_NOT_FOUND).
 */
#include "common/err.h"
#include "common/util.h"
#include "storage/messages.h"
#include "storage/meta.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const enum prompt_state all[] = {PROMPT_QUEUED, PROMPT_RUNNING, PROMPT_COMPLETED,
                                        PROMPT_FAILED, PROMPT_CANCELLED};

/* The edges of the machine as prompts.h draws them. */
static int expected(enum prompt_state from, enum prompt_state to)
{
    if (from == PROMPT_QUEUED) {
        return to == PROMPT_RUNNING || to == PROMPT_FAILED || to == PROMPT_CANCELLED;
    }
    if (from == PROMPT_RUNNING) {
        return to == PROMPT_COMPLETED || to == PROMPT_FAILED || to == PROMPT_CANCELLED;
    }
    return 0;
}

TEST(names_round_trip)
{
    static const char *const want[] = {"queued", "running", "completed", "failed", "cancelled"};
    for (int i = 0; i < PROMPT_NSTATES; i++) {
        enum prompt_state st;
        ASSERT_STREQ(prompt_state_str(all[i]), want[i]);
        ASSERT_EQ(prompt_state_parse(want[i], &st), 0);
        ASSERT_EQ(st, all[i]);
    }
    enum prompt_state st = PROMPT_QUEUED;
    ASSERT_EQ(prompt_state_parse("done", &st), ERR_INVALID);
    ASSERT_EQ(prompt_state_parse("Queued", &st), ERR_INVALID);
    ASSERT_EQ(prompt_state_parse("", &st), ERR_INVALID);
    ASSERT_EQ(prompt_state_parse(NULL, &st), ERR_INVALID);
    ASSERT(prompt_state_str((enum prompt_state)PROMPT_NSTATES) == NULL);
    ASSERT(prompt_state_str((enum prompt_state) - 1) == NULL);
}

TEST(transition_table)
{
    int allowed = 0;
    for (int f = 0; f < PROMPT_NSTATES; f++) {
        for (int t = 0; t < PROMPT_NSTATES; t++) {
            int ok = prompt_transition_ok(all[f], all[t]);
            if (ok != expected(all[f], all[t])) {
                TFAIL("%s -> %s: %d", prompt_state_str(all[f]), prompt_state_str(all[t]), ok);
            }
            allowed += ok;
        }
        ASSERT_EQ(prompt_state_terminal(all[f]), f >= PROMPT_COMPLETED);
    }
    ASSERT_EQ(allowed, 6);
    ASSERT_EQ(prompt_transition_ok(PROMPT_QUEUED, (enum prompt_state)PROMPT_NSTATES), 0);
    ASSERT_EQ(prompt_transition_ok((enum prompt_state) - 1, PROMPT_RUNNING), 0);
}

/* ---- against a session file ---- */

static char dir[256];

static struct sess *open_session(struct store **stp)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/sessiond-test-prompts.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ASSERT(mkdtemp(dir));
    struct store_config cfg = {.data_dir = dir};
    struct store *st = NULL;
    ASSERT_EQ(store_open(&cfg, &st), 0);
    struct session_new n = {.id = "s1", .title = "t", .visibility = "org", .created_by = "token:a"};
    ASSERT_EQ(registry_session_create(store_registry(st), &n, NULL), 0);
    ASSERT_EQ(store_session_create(st, "s1"), 0);
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "s1", &s), 0);
    *stp = st;
    return s;
}

static void close_session(struct store *st, struct sess *s)
{
    sess_put(s);
    store_close(st);
    util_rm_rf(dir);
}

/* One operation on one prompt, run in its own transaction. */
enum op {
    OP_QUEUE,
    OP_START,
    OP_COMPLETE,
    OP_FINISH_FAILED,
    OP_FINISH_CANCELLED,
    OP_FAIL,
    OP_CANCEL
};

struct op_arg {
    enum op op;
    const char *id;
};

static int op_tx(struct sess_tx *tx, void *arg)
{
    struct op_arg *o = arg;
    int code = 3;
    switch (o->op) {
    case OP_QUEUE: {
        char mid[64];
        snprintf(mid, sizeof mid, "m_%s", o->id);
        struct author a = {"token:a", "A", NULL};
        struct message_row m = {.id = mid,
                                .role = "user",
                                .content = "hi",
                                .content_len = 2,
                                .author_id = a.id,
                                .author_name = a.name,
                                .seq = 0};
        int rc = messages_insert(tx, &m);
        return rc ? rc : prompts_queue(tx, o->id, mid, &a);
    }
    case OP_START:
        return prompts_start(tx, o->id);
    case OP_COMPLETE:
        return prompts_finish(tx, o->id, PROMPT_COMPLETED, &code, NULL);
    case OP_FINISH_FAILED:
        return prompts_finish(tx, o->id, PROMPT_FAILED, NULL, "agent failed");
    case OP_FINISH_CANCELLED:
        return prompts_finish(tx, o->id, PROMPT_CANCELLED, NULL, "cancelled");
    case OP_FAIL:
        return prompts_fail(tx, o->id, "no sandbox");
    case OP_CANCEL:
        return prompts_cancel(tx, o->id, "cancelled");
    }
    return ERR_INVALID;
}

static int run(struct sess *s, enum op op, const char *id)
{
    struct op_arg o = {op, id};
    return sess_write(s, op_tx, &o);
}

struct state_arg {
    const char *id;
    enum prompt_state st;
};

static int state_rd(struct sess_rd *rd, void *arg)
{
    struct state_arg *a = arg;
    return prompts_state(rd, a->id, &a->st);
}

static enum prompt_state state_of(struct sess *s, const char *id)
{
    struct state_arg a = {id, (enum prompt_state) - 1};
    ASSERT_EQ(sess_view(s, state_rd, &a), 0);
    return a.st;
}

/* Bring a new prompt id into state st through allowed transitions. */
static void reach(struct sess *s, const char *id, enum prompt_state st)
{
    ASSERT_EQ(run(s, OP_QUEUE, id), 0);
    if (st == PROMPT_QUEUED) {
        return;
    }
    if (st == PROMPT_FAILED) {
        ASSERT_EQ(run(s, OP_FAIL, id), 0);
        return;
    }
    if (st == PROMPT_CANCELLED) {
        ASSERT_EQ(run(s, OP_CANCEL, id), 0);
        return;
    }
    ASSERT_EQ(run(s, OP_START, id), 0);
    if (st == PROMPT_COMPLETED) {
        ASSERT_EQ(run(s, OP_COMPLETE, id), 0);
    }
}

/* What each operation does from each state: the state it leads to, or -1 (refused). */
TEST(transitions_in_the_file)
{
    static const enum op ops[] = {OP_START, OP_COMPLETE, OP_FINISH_FAILED, OP_FINISH_CANCELLED,
                                  OP_FAIL,  OP_CANCEL};
    static const int to[PROMPT_NSTATES][6] = {
        /* from queued */ {PROMPT_RUNNING, -1, -1, -1, PROMPT_FAILED, PROMPT_CANCELLED},
        /* from running */ {-1, PROMPT_COMPLETED, PROMPT_FAILED, PROMPT_CANCELLED, -1, -1},
        /* terminal states refuse everything */
        {-1, -1, -1, -1, -1, -1},
        {-1, -1, -1, -1, -1, -1},
        {-1, -1, -1, -1, -1, -1},
    };
    struct store *st = NULL;
    struct sess *s = open_session(&st);
    int n = 0;
    for (int f = 0; f < PROMPT_NSTATES; f++) {
        for (int o = 0; o < 6; o++) {
            char id[32];
            snprintf(id, sizeof id, "p_%d", n++);
            reach(s, id, all[f]);
            ASSERT_EQ(state_of(s, id), all[f]);
            int rc = run(s, ops[o], id);
            if (to[f][o] < 0) {
                if (rc != ERR_NOT_FOUND) {
                    TFAIL("op %d from %s: %d, want refused", o, prompt_state_str(all[f]), rc);
                }
                ASSERT_EQ(state_of(s, id), all[f]); /* nothing changed */
            } else {
                ASSERT_EQ(rc, 0);
                ASSERT_EQ(state_of(s, id), to[f][o]);
                ASSERT(prompt_transition_ok(all[f], (enum prompt_state)to[f][o]));
            }
        }
    }
    /* queue refuses an id that exists (whatever its state) */
    ASSERT(run(s, OP_QUEUE, "p_0") != 0);
    close_session(st, s);
}

static int finish_to_tx(struct sess_tx *tx, void *arg)
{
    return prompts_finish(tx, arg, PROMPT_QUEUED, NULL, NULL);
}

TEST(finish_refuses_a_non_terminal_target)
{
    struct store *st = NULL;
    struct sess *s = open_session(&st);
    reach(s, "p_r", PROMPT_RUNNING);
    ASSERT_EQ(sess_write(s, finish_to_tx, "p_r"), ERR_INVALID);
    ASSERT_EQ(state_of(s, "p_r"), PROMPT_RUNNING);
    struct state_arg a = {"p_none", PROMPT_QUEUED};
    ASSERT_EQ(sess_view(s, state_rd, &a), ERR_NOT_FOUND);
    close_session(st, s);
}

struct recover_arg {
    int64_t cancelled;
    int seen;
    char ids[4][32];
};

static int cancel_all_tx(struct sess_tx *tx, void *arg)
{
    struct recover_arg *r = arg;
    return prompts_cancel_queued(tx, "session ended", &r->cancelled);
}

static int note_id(void *ctx, const char *id)
{
    struct recover_arg *r = ctx;
    if (r->seen < 4) {
        snprintf(r->ids[r->seen], sizeof r->ids[0], "%s", id);
    }
    r->seen++;
    return 0;
}

static int recover_tx(struct sess_tx *tx, void *arg)
{
    return prompts_recover(tx, "server restarted", note_id, arg);
}

struct counts {
    int64_t q, r, c, f, unfinished;
    struct recover_arg queued;
};

static int counts_rd(struct sess_rd *rd, void *arg)
{
    struct counts *c = arg;
    int rc = prompts_count(rd, PROMPT_QUEUED, &c->q);
    rc = rc ? rc : prompts_count(rd, PROMPT_RUNNING, &c->r);
    rc = rc ? rc : prompts_count(rd, PROMPT_CANCELLED, &c->c);
    rc = rc ? rc : prompts_count(rd, PROMPT_FAILED, &c->f);
    rc = rc ? rc : prompts_count_unfinished(rd, &c->unfinished);
    rc = rc ? rc : prompts_each(rd, PROMPT_QUEUED, note_id, &c->queued);
    return rc;
}

TEST(bulk_cancel_and_recover)
{
    struct store *st = NULL;
    struct sess *s = open_session(&st);
    reach(s, "p_q1", PROMPT_QUEUED);
    reach(s, "p_q2", PROMPT_QUEUED);
    reach(s, "p_r1", PROMPT_RUNNING);
    reach(s, "p_r2", PROMPT_RUNNING);
    reach(s, "p_done", PROMPT_COMPLETED);
    struct counts c = {0};
    ASSERT_EQ(sess_view(s, counts_rd, &c), 0);
    ASSERT_EQ(c.q, 2);
    ASSERT_EQ(c.r, 2);
    ASSERT_EQ(c.unfinished, 4);
    ASSERT_EQ(c.queued.seen, 2);
    ASSERT_STREQ(c.queued.ids[0], "p_q1"); /* oldest first */
    ASSERT_STREQ(c.queued.ids[1], "p_q2");

    /* recover: running -> failed, each one reported; queued ones untouched */
    struct recover_arg r = {0};
    ASSERT_EQ(sess_write(s, recover_tx, &r), 0);
    ASSERT_EQ(r.seen, 2);
    ASSERT_EQ(state_of(s, "p_r1"), PROMPT_FAILED);
    ASSERT_EQ(state_of(s, "p_r2"), PROMPT_FAILED);
    ASSERT_EQ(state_of(s, "p_q1"), PROMPT_QUEUED);
    ASSERT_EQ(state_of(s, "p_done"), PROMPT_COMPLETED);

    /* the session ends: queued -> cancelled, nothing else */
    ASSERT_EQ(sess_write(s, cancel_all_tx, &r), 0);
    ASSERT_EQ(r.cancelled, 2);
    memset(&c, 0, sizeof c);
    ASSERT_EQ(sess_view(s, counts_rd, &c), 0);
    ASSERT_EQ(c.q, 0);
    ASSERT_EQ(c.r, 0);
    ASSERT_EQ(c.c, 2);
    ASSERT_EQ(c.f, 2);
    ASSERT_EQ(c.unfinished, 0);
    ASSERT_EQ(state_of(s, "p_done"), PROMPT_COMPLETED);
    close_session(st, s);
}

struct info_arg {
    const char *id; /* NULL: prompts_next */
    struct prompt_info p;
    int64_t out_bytes;
    char *agent;
};

static int info_rd(struct sess_rd *rd, void *arg)
{
    struct info_arg *a = arg;
    int rc = a->id ? prompts_get(rd, a->id, &a->p) : prompts_next(rd, &a->p);
    if (!rc) {
        rc = meta_output_bytes(rd, &a->out_bytes);
    }
    if (!rc) {
        rc = meta_agent(rd, &a->agent);
    }
    return rc;
}

static int add_bytes_tx(struct sess_tx *tx, void *arg)
{
    (void)arg;
    int rc = meta_add_output_bytes(tx, 100);
    return rc ? rc : meta_add_output_bytes(tx, 23);
}

/* What the runner reads to start the next prompt, and what the workspace reads of one. */
TEST(next_and_get)
{
    struct store *st = NULL;
    struct sess *s = open_session(&st);
    struct info_arg a = {0};
    ASSERT_EQ(sess_view(s, info_rd, &a), ERR_NOT_FOUND);
    reach(s, "p_a", PROMPT_RUNNING);
    reach(s, "p_b", PROMPT_QUEUED);
    reach(s, "p_c", PROMPT_QUEUED);
    ASSERT_EQ(sess_write(s, add_bytes_tx, NULL), 0);
    ASSERT_EQ(sess_view(s, info_rd, &a), 0);
    ASSERT_STREQ(a.p.id, "p_b"); /* the oldest queued one; the running one is not next */
    ASSERT_STREQ(a.p.message_id, "m_p_b");
    ASSERT_STREQ(a.p.author_id, "token:a");
    ASSERT_STREQ(a.p.author_name, "A");
    ASSERT(a.p.author_email == NULL);
    ASSERT_STREQ(a.p.content, "hi");
    ASSERT(a.p.context_json == NULL);
    ASSERT_EQ(a.out_bytes, 123);
    ASSERT(a.agent == NULL);
    prompt_info_free(&a.p);
    struct info_arg g = {.id = "p_a"};
    ASSERT_EQ(sess_view(s, info_rd, &g), 0);
    ASSERT_STREQ(g.p.id, "p_a");
    ASSERT_STREQ(g.p.content, "hi");
    prompt_info_free(&g.p);
    prompt_info_free(NULL);
    struct info_arg none = {.id = "p_zz"};
    ASSERT_EQ(sess_view(s, info_rd, &none), ERR_NOT_FOUND);
    close_session(st, s);
}

static const struct test_case tests[] = {
    T(names_round_trip),        T(transition_table),
    T(transitions_in_the_file), T(finish_refuses_a_non_terminal_target),
    T(bulk_cancel_and_recover), T(next_and_get),
};

TEST_MAIN(tests)
