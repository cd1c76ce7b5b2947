/*
 * test_exec.c - the exec pipeline (runner/exec.h) without the HTTP server: a synchronous
 * exec's waiter gets the output and the exit, events are recorded in order, the output cap,
 * the blocked_commands policy, the bound on synchronous execs, kill. Uses the process backend
 * (fast; isolation is tested in test_sbx).
 */
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "runner/exec.h"
#include "runner/runner.h"
#include "sandbox/outpump.h"
#include "sandbox/sbx.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "testlib.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

static char dir[256];
static struct store *st;
static struct outpump *pump;
static struct sbx_backend *be;
static struct runner *rn;
static struct runner_exec *ex;

static void up(int64_t cap, int max_sync, const char *const *blocked, size_t nblocked)
{
    log_set_level(LOG_LEVEL_WARN);
    snprintf(dir, sizeof dir, "/tmp/test_exec.XXXXXX");
    ASSERT(mkdtemp(dir));
    struct store_config sc = {.data_dir = dir};
    ASSERT_EQ(store_open(&sc, &st), 0);
    ASSERT_EQ(outpump_start(&pump), 0);
    struct sbx_config c = {.backend = "process", .data_dir = dir};
    ASSERT_EQ(sbx_backend_open(&c, pump, &be), 0);
    struct runner_config rc = {.agent = "shell", .no_recover = 1};
    ASSERT_EQ(runner_start(st, be, pump, &rc, &rn), 0);
    struct rexec_config xc = {.output_cap = cap,
                              .max_sync = max_sync,
                              .blocked_commands = blocked,
                              .n_blocked_commands = nblocked};
    ASSERT_EQ(rexec_new(rn, &xc, &ex), 0);
    struct session_new n = {.id = "s1", .visibility = "org", .created_by = "token:admin"};
    ASSERT_EQ(registry_session_create(store_registry(st), &n, NULL), 0);
    ASSERT_EQ(store_session_create(st, "s1"), 0);
}

static void down(void)
{
    runner_stop(rn);
    rexec_free(ex);
    sbx_backend_free(be);
    outpump_stop(pump);
    store_close(st);
    util_rm_rf(dir);
}

/* A waiter as a transport would hold it: the result copied out, under a lock. */
struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int suspended, done, done_suspended, aborted, truncated, exit_code, signal;
    char out[256];
};

static void w_suspend(void *arg)
{
    struct waiter *w = arg;
    w->suspended = 1; /* called with the exec's lock held: no lock of ours */
}

static void w_done(void *arg, const struct rexec_result *res, int suspended)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&w->lock);
    w->done++;
    w->done_suspended = suspended;
    w->aborted = res->aborted;
    if (!res->aborted) {
        snprintf(w->out, sizeof w->out, "%.*s", (int)res->out_len, res->out);
        w->truncated = res->truncated;
        w->exit_code = res->st->exit_code;
        w->signal = res->st->signal;
    }
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void w_init(struct waiter *w)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
}

static void w_wait(struct waiter *w)
{
    pthread_mutex_lock(&w->lock);
    while (!w->done) {
        pthread_cond_wait(&w->cond, &w->lock);
    }
    pthread_mutex_unlock(&w->lock);
}

static int start(const char *const *argv, struct waiter *w, char *xid, enum rexec_stage *stage)
{
    struct rexec_waiter rw = {w_suspend, w_done, w};
    struct rexec_req req = {.sid = "s1", .argv = argv, .wait = w ? &rw : NULL};
    char msg[300];
    return rexec_start(ex, &req, xid, 40, stage, msg, sizeof msg);
}

/* The types of the session's exec events, in order, as "a,b,c". */
static void exec_events(char *out, size_t n)
{
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "s1", &s), 0);
    struct buf b;
    buf_init(&b, 0);
    buf_putc(&b, '[');
    int count = 0;
    int64_t last = 0;
    ASSERT_EQ(sess_events(s, 0, 1000, &b, &count, &last), 0);
    buf_putc(&b, ']');
    sess_put(s);
    json_t *evs = json_loads(b.data, 0, NULL);
    buf_free(&b);
    ASSERT(evs);
    out[0] = 0;
    size_t i, len = 0;
    json_t *e;
    json_array_foreach(evs, i, e)
    {
        const char *t = json_string_value(json_object_get(e, "type"));
        if (t && !strncmp(t, "exec.", 5)) {
            len += (size_t)snprintf(out + len, n - len, "%s%s", len ? "," : "", t);
        }
    }
    json_decref(evs);
}

TEST(sync_exec_answers_with_output_and_records_events)
{
    up(1 << 20, 4, NULL, 0);
    struct waiter w;
    w_init(&w);
    const char *argv[] = {"/bin/sh", "-c", "echo hello", NULL};
    char xid[40];
    enum rexec_stage stage = 0;
    ASSERT_EQ(start(argv, &w, xid, &stage), 0);
    w_wait(&w);
    ASSERT_EQ(w.done, 1);
    ASSERT_EQ(w.done_suspended, w.suspended); /* resumed only what it suspended */
    ASSERT_STREQ(w.out, "hello\n");
    ASSERT_EQ(w.exit_code, 0);
    char types[256];
    exec_events(types, sizeof types);
    ASSERT_STREQ(types, "exec.started,exec.output,exec.exited");
    down();
}

TEST(output_cap_truncates)
{
    up(4, 4, NULL, 0);
    struct waiter w;
    w_init(&w);
    const char *argv[] = {"/bin/sh", "-c", "echo 0123456789", NULL};
    char xid[40];
    enum rexec_stage stage = 0;
    ASSERT_EQ(start(argv, &w, xid, &stage), 0);
    w_wait(&w);
    ASSERT_STREQ(w.out, "0123");
    ASSERT_EQ(w.truncated, 1);
    down();
}

TEST(blocked_command_is_refused_before_anything_is_recorded)
{
    const char *blocked[] = {"/bin/true"};
    up(1 << 20, 4, blocked, 1);
    const char *argv[] = {"true", NULL};
    char xid[40];
    enum rexec_stage stage = 0;
    ASSERT_EQ(start(argv, NULL, xid, &stage), ERR_FORBIDDEN);
    ASSERT_EQ(stage, REXEC_BLOCKED);
    char types[256];
    exec_events(types, sizeof types);
    ASSERT_STREQ(types, "");
    down();
}

TEST(sync_bound_and_kill)
{
    up(1 << 20, 1, NULL, 0);
    struct waiter w1, w2;
    w_init(&w1);
    w_init(&w2);
    const char *slow[] = {"/bin/sleep", "30", NULL};
    char xid[40], xid2[40];
    enum rexec_stage stage = 0;
    ASSERT_EQ(start(slow, &w1, xid, &stage), 0);
    ASSERT_EQ(w1.suspended, 1);
    /* the one synchronous slot is taken; an asynchronous exec is not bounded by it */
    ASSERT_EQ(start(slow, &w2, xid2, &stage), ERR_LIMIT);
    ASSERT_EQ(stage, REXEC_SYNC_LIMIT);
    ASSERT_EQ(start(slow, NULL, xid2, &stage), 0);
    ASSERT_EQ(rexec_kill(ex, "s1", "x_nope", SIGKILL, 0), ERR_NOT_FOUND);
    ASSERT_EQ(rexec_kill(ex, "s2", xid, SIGKILL, 0), ERR_NOT_FOUND);
    ASSERT_EQ(rexec_kill(ex, "s1", xid, SIGKILL, 0), 0);
    ASSERT_EQ(rexec_kill(ex, "s1", xid2, SIGKILL, 0), 0);
    w_wait(&w1);
    ASSERT_EQ(w1.done_suspended, 1);
    ASSERT_EQ(w1.signal, SIGKILL);
    /* its slot is free again */
    const char *quick[] = {"/bin/true", NULL};
    ASSERT_EQ(start(quick, &w2, xid2, &stage), 0);
    w_wait(&w2);
    ASSERT_EQ(w2.exit_code, 0);
    down();
}

TEST(abort_answers_suspended_waiters)
{
    up(1 << 20, 2, NULL, 0);
    struct waiter w;
    w_init(&w);
    const char *slow[] = {"/bin/sleep", "30", NULL};
    char xid[40];
    enum rexec_stage stage = 0;
    ASSERT_EQ(start(slow, &w, xid, &stage), 0);
    rexec_abort_waiters(ex);
    ASSERT_EQ(w.done, 1);
    ASSERT_EQ(w.aborted, 1);
    ASSERT_EQ(w.done_suspended, 1);
    ASSERT_EQ(rexec_kill(ex, "s1", xid, SIGKILL, 0), 0); /* the command went on */
    down();
}

static const struct test_case tests[] = {
    T(sync_exec_answers_with_output_and_records_events),
    T(output_cap_truncates),
    T(blocked_command_is_refused_before_anything_is_recorded),
    T(sync_bound_and_kill),
    T(abort_answers_suspended_waiters),
};
TEST_MAIN(tests)
