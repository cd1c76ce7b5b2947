/*
 * test_runner.c - the prompt runner against a real store, without the HTTP server: FIFO
 * order, the scripted agent's events and assistant message, output merging, cancel, crash
 * recovery at start. Uses the process backend (fast; isolation is tested in test_sbx).
 */
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/outpump.h"
#include "runner/runner.h"
#include "sandbox/sbx.h"
#include "storage/messages.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "testlib.h"

#include <jansson.h>

static char dir[256];
static struct store *st;
static struct outpump *pump;
static struct sbx_backend *be;
static struct runner *rn;

static void up(const char *agent, int recover)
{
    log_set_level(LOG_LEVEL_WARN);
    struct store_config sc = {.data_dir = dir};
    ASSERT_EQ(store_open(&sc, &st), 0);
    ASSERT_EQ(outpump_start(&pump), 0);
    struct sbx_config c = {.backend = "process", .data_dir = dir};
    ASSERT_EQ(sbx_backend_open(&c, pump, &be), 0);
    struct runner_config rc = {
        .agent = agent, .cancel_grace_ms = 200, .no_recover = !recover, .prompt_timeout_s = 20};
    ASSERT_EQ(runner_start(st, be, pump, &rc, &rn), 0);
}

static void down(void)
{
    runner_stop(rn);
    sbx_backend_free(be);
    outpump_stop(pump);
    store_close(st);
}

static void init_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/test_runner.XXXXXX");
    ASSERT(mkdtemp(dir));
}

static void new_session(const char *sid)
{
    struct session_new n = {.id = sid, .visibility = "org", .created_by = "token:admin"};
    ASSERT_EQ(registry_session_create(store_registry(st), &n, NULL), 0);
    ASSERT_EQ(store_session_create(st, sid), 0);
}

struct qp {
    const char *pid, *content, *author, *state;
};

/* A user's message and its prompt, queued; state "running" then starts it (a prompt a crash
 * left running, for the recovery test). */
static int queue_tx(struct sess_tx *tx, void *arg)
{
    struct qp *q = arg;
    char mid[80];
    snprintf(mid, sizeof mid, "m_%s", q->pid);
    int rc = messages_insert(tx, &(struct message_row){.id = mid,
                                                       .role = "user",
                                                       .content = q->content,
                                                       .content_len = strlen(q->content),
                                                       .author_id = q->author,
                                                       .author_name = q->author});
    struct author a = {q->author, q->author, "a@example.com"};
    if (!rc) {
        rc = prompts_queue(tx, q->pid, mid, &a);
    }
    if (!rc && q->state && !strcmp(q->state, "running")) {
        rc = prompts_start(tx, q->pid);
    }
    return rc;
}

static void queue(const char *sid, const char *pid, const char *content, const char *author,
                  const char *state)
{
    struct sess *s;
    ASSERT_EQ(store_session_get(st, sid, &s), 0);
    struct qp q = {pid, content, author, state};
    ASSERT_EQ(sess_write(s, queue_tx, &q), 0);
    sess_put(s);
}

struct stq {
    const char *pid;
    char state[32];
};

static int state_rd(struct sess_rd *rd, void *arg)
{
    struct stq *q = arg;
    enum prompt_state ps;
    q->state[0] = 0;
    if (!prompts_state(rd, q->pid, &ps)) {
        snprintf(q->state, sizeof q->state, "%s", prompt_state_str(ps));
    }
    return 0;
}

static const char *wait_state(const char *sid, const char *pid, const char *want, int secs)
{
    static struct stq q;
    q.pid = pid;
    for (int i = 0; i < secs * 50; i++) {
        struct sess *s;
        ASSERT_EQ(store_session_get(st, sid, &s), 0);
        sess_view(s, state_rd, &q);
        sess_put(s);
        if (!strcmp(q.state, want)) {
            break;
        }
        usleep(20000);
    }
    return q.state;
}

/* All events as a JSON array (new reference). */
static json_t *events(const char *sid)
{
    struct sess *s;
    ASSERT_EQ(store_session_get(st, sid, &s), 0);
    struct buf b;
    buf_init(&b, 0);
    buf_putc(&b, '[');
    int64_t after = 0;
    for (;;) {
        int n = 0;
        int64_t last = after;
        size_t before = b.len;
        if (b.len > 1) {
            buf_putc(&b, ',');
        }
        sess_events(s, after, 1000, &b, &n, &last);
        if (!n) {
            b.len = before;
            b.data[b.len] = 0;
            break;
        }
        after = last;
    }
    buf_putc(&b, ']');
    sess_put(s);
    json_t *j = json_loads(b.data, 0, NULL);
    buf_free(&b);
    ASSERT(j);
    return j;
}

static int count_type(json_t *evs, const char *type, const char *pid)
{
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(evs, i, e)
    {
        const char *t = json_string_value(json_object_get(e, "type"));
        const char *p = json_string_value(json_object_get(json_object_get(e, "data"), "prompt_id"));
        if (t && !strcmp(t, type) && (!pid || (p && !strcmp(p, pid)))) {
            n++;
        }
    }
    return n;
}

TEST(fifo_events_and_message)
{
    init_dir();
    up("scripted", 0);
    new_session("s1");
    queue("s1", "p1", "first prompt", "alice", NULL);
    queue("s1", "p2", "second prompt", "bob", NULL);
    queue("s1", "p3", "third prompt", "carol", NULL);
    runner_kick(rn, "s1");
    ASSERT_STREQ(wait_state("s1", "p3", "completed", 20), "completed");
    ASSERT_STREQ(wait_state("s1", "p1", "completed", 1), "completed");
    json_t *ev = events("s1");
    /* started in order, never overlapping */
    const char *order[6] = {0};
    int k = 0;
    size_t i;
    json_t *e;
    json_array_foreach(ev, i, e)
    {
        const char *t = json_string_value(json_object_get(e, "type"));
        if (!strcmp(t, "prompt.started") || !strcmp(t, "prompt.completed")) {
            ASSERT(k < 6);
            order[k++] =
                json_string_value(json_object_get(json_object_get(e, "data"), "prompt_id"));
        }
    }
    ASSERT_EQ(k, 6);
    ASSERT_STREQ(order[0], "p1");
    ASSERT_STREQ(order[1], "p1");
    ASSERT_STREQ(order[2], "p2");
    ASSERT_STREQ(order[4], "p3");
    ASSERT_EQ(count_type(ev, "agent.tool_call", "p2"), 1);
    ASSERT_EQ(count_type(ev, "agent.tool_result", "p2"), 1);
    ASSERT_EQ(count_type(ev, "agent.file_changed", "p2"), 1);
    ASSERT_EQ(count_type(ev, "agent.artifact", "p2"), 1);
    ASSERT_EQ(count_type(ev, "message", "p3"), 1);
    ASSERT_EQ(count_type(ev, "sandbox.ready", NULL), 1);
    json_decref(ev);
    down();
    util_rm_rf(dir);
}

TEST(output_merged_into_few_events)
{
    init_dir();
    up("scripted", 0);
    new_session("s2");
    queue("s2", "p1", "flood 20000", "alice", NULL);
    runner_kick(rn, "s2");
    ASSERT_STREQ(wait_state("s2", "p1", "completed", 30), "completed");
    json_t *ev = events("s2");
    size_t total = 0, i;
    int n = 0;
    json_t *e;
    json_array_foreach(ev, i, e)
    {
        if (!strcmp(json_string_value(json_object_get(e, "type")), "agent.output")) {
            size_t l = json_string_length(json_object_get(json_object_get(e, "data"), "text"));
            ASSERT(l <= 16384 + 200);
            total += l;
            n++;
        }
    }
    fprintf(stderr, "# 20000 lines -> %d agent.output events, %zu bytes\n", n, total);
    ASSERT_EQ(total, 20000 * 100);
    ASSERT(n < 20000 / 10);
    json_decref(ev);
    down();
    util_rm_rf(dir);
}

TEST(cancel_running_and_queued)
{
    init_dir();
    up("scripted", 0);
    new_session("s3");
    queue("s3", "p1", "ignore-term", "alice", NULL);
    queue("s3", "p2", "queued", "alice", NULL);
    queue("s3", "p3", "after", "alice", NULL);
    runner_kick(rn, "s3");
    ASSERT_STREQ(wait_state("s3", "p1", "running", 10), "running");
    ASSERT_EQ(runner_cancel(rn, "s3", "p2", NULL), 0);
    ASSERT_EQ(runner_cancel(rn, "s3", "p2", NULL), ERR_NOT_FOUND);
    usleep(300000); /* let the agent install its TERM trap */
    ASSERT_EQ(runner_cancel(rn, "s3", NULL, NULL), 0);
    ASSERT_STREQ(wait_state("s3", "p1", "cancelled", 10), "cancelled");
    ASSERT_STREQ(wait_state("s3", "p2", "cancelled", 1), "cancelled");
    ASSERT_STREQ(wait_state("s3", "p3", "completed", 10), "completed");
    down();
    util_rm_rf(dir);
}

TEST(recovery_fails_running_and_resumes)
{
    init_dir();
    /* A "crashed" server left p1 running and p2 queued. */
    struct store_config sc = {.data_dir = dir};
    ASSERT_EQ(store_open(&sc, &st), 0);
    new_session("s4");
    queue("s4", "p1", "was running", "alice", "running");
    queue("s4", "p2", "echo resumed", "alice", NULL);
    store_close(st);
    up("shell", 1);
    ASSERT_STREQ(wait_state("s4", "p2", "completed", 20), "completed");
    ASSERT_STREQ(wait_state("s4", "p1", "failed", 1), "failed");
    json_t *ev = events("s4");
    ASSERT_EQ(count_type(ev, "prompt.failed", "p1"), 1);
    json_decref(ev);
    down();
    util_rm_rf(dir);
}

static const struct test_case tests[] = {
    T(fifo_events_and_message),
    T(output_merged_into_few_events),
    T(cancel_running_and_queued),
    T(recovery_fails_running_and_resumes),
};
TEST_MAIN(tests)
