/*
 * test_commitq.c - the commit queue (runner/commitq.h) against a real store: submission order
 * per session, batching under a cap, sessions that never wait on each other, one worker per
 * session at a time, the backlog, failing jobs isolated from their batch, a session that cannot
 * be opened, and a stop that commits what is pending.
 *
 * Workers are held inside a transaction with a gate (an op that waits on a condition), which
 * makes the batching and backlog cases deterministic instead of timing-dependent.
 */
#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/commitq.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "testlib.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static char dir[256];

static struct store *open_store(void)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-commitq.XXXXXX");
    ASSERT(mkdtemp(dir));
    struct store_config cfg = {.data_dir = dir};
    struct store *st = NULL;
    ASSERT_EQ(store_open(&cfg, &st), 0);
    return st;
}

static void close_store(struct store *st)
{
    store_close(st);
    util_rm_rf(dir);
}

static void new_session(struct store *st, const char *id)
{
    struct session_new n = {.id = id, .title = "t", .visibility = "org", .created_by = "token:a"};
    ASSERT_EQ(registry_session_create(store_registry(st), &n, NULL), 0);
    ASSERT_EQ(store_session_create(st, id), 0);
}

/* Every event of sid as a JSON array (new reference). */
static json_t *events_of(struct store *st, const char *sid)
{
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, sid, &s), 0);
    struct buf b;
    buf_init(&b, 0);
    buf_putc(&b, '[');
    int count = 0;
    int64_t last = 0;
    ASSERT_EQ(sess_events(s, 0, 1000000, &b, &count, &last), 0);
    buf_putc(&b, ']');
    sess_put(s);
    json_t *arr = json_loads(b.data, 0, NULL);
    ASSERT(arr);
    ASSERT_EQ(json_array_size(arr), count);
    buf_free(&b);
    return arr;
}

static json_int_t ev_int(json_t *arr, size_t i, const char *key)
{
    return json_integer_value(
        json_object_get(json_object_get(json_array_get(arr, i), "data"), key));
}

static char *jdata(const char *key, long long v)
{
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "{\"%s\":%lld}", key, v);
    return xstrdup(tmp);
}

/* ---- a gate that holds a worker inside a transaction ---- */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open, gate_entered;

static int gate_op(struct sess_tx *tx, void *arg)
{
    (void)tx;
    (void)arg;
    pthread_mutex_lock(&gate_mu);
    gate_entered++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open) {
        pthread_cond_wait(&gate_cv, &gate_mu);
    }
    pthread_mutex_unlock(&gate_mu);
    return 0;
}

static void gate_wait_entered(int n)
{
    pthread_mutex_lock(&gate_mu);
    while (gate_entered < n) {
        pthread_cond_wait(&gate_cv, &gate_mu);
    }
    pthread_mutex_unlock(&gate_mu);
}

static void gate_release(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* Submit a job whose op blocks its worker (in sid's transaction) until gate_release(). */
static void hold_worker(struct commitq *q, const char *sid)
{
    struct cq_job *j = cq_job_new(sid);
    cq_job_event(j, "gate", NULL, NULL);
    cq_job_op(j, gate_op, NULL);
    commitq_submit(q, j);
}

/* ---- done callbacks ---- */

struct done_rec {
    _Atomic int calls;
    _Atomic int failures;
    _Atomic int last_rc;
    _Atomic int on_submitter; /* a done callback that ran on the submitting thread */
    pthread_t submitter;
};

static void done_count(void *arg, int rc)
{
    struct done_rec *d = arg;
    if (rc) {
        atomic_fetch_add(&d->failures, 1);
    }
    atomic_store(&d->last_rc, rc);
    if (pthread_equal(pthread_self(), d->submitter)) {
        atomic_store(&d->on_submitter, 1);
    }
    atomic_fetch_add(&d->calls, 1);
}

static void submit_n(struct commitq *q, const char *sid, int from, int n, struct done_rec *d)
{
    for (int i = from; i < from + n; i++) {
        struct cq_job *j = cq_job_new(sid);
        cq_job_event(j, "agent.output", NULL, jdata("n", i));
        ASSERT_EQ(cq_job_count(j), 1);
        if (d) {
            cq_job_done(j, done_count, d);
        }
        commitq_submit(q, j);
    }
}

/* ---- tests ---- */

TEST(jobs_commit_in_submission_order_and_done_runs_on_a_worker)
{
    struct store *st = open_store();
    new_session(st, "s1");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 3, &q), 0);
    struct done_rec d = {.submitter = pthread_self()};
    /* Jobs of several events: the events of one job stay together and in order. */
    for (int i = 0; i < 200; i++) {
        struct cq_job *j = cq_job_new("s1");
        cq_job_event(j, "a", NULL, jdata("n", 2 * i));
        cq_job_event(j, "b", NULL, jdata("n", 2 * i + 1));
        ASSERT_EQ(cq_job_count(j), 2);
        cq_job_done(j, done_count, &d);
        commitq_submit(q, j);
    }
    commitq_flush(q, "s1");
    /* flush returns once every job is committed and its done callback has run */
    ASSERT_EQ(atomic_load(&d.calls), 200);
    ASSERT_EQ(atomic_load(&d.failures), 0);
    ASSERT_EQ(atomic_load(&d.on_submitter), 0);
    ASSERT_EQ(commitq_backlog(q, "s1"), 0);
    json_t *ev = events_of(st, "s1");
    ASSERT_EQ(json_array_size(ev), 400);
    for (size_t i = 0; i < 400; i++) {
        ASSERT_EQ(ev_int(ev, i, "n"), (long long)i);
        ASSERT_EQ(json_integer_value(json_object_get(json_array_get(ev, i), "seq")),
                  (long long)i + 1);
    }
    json_decref(ev);
    commitq_stop(q);
    close_store(st);
}

TEST(authors_are_copied_and_null_is_the_system)
{
    struct store *st = open_store();
    new_session(st, "s1");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 1, &q), 0);
    char id[32] = "token:alice", name[32] = "Alice";
    struct author a = {id, name, NULL};
    struct cq_job *j = cq_job_new("s1");
    cq_job_event(j, "m", &a, NULL);
    cq_job_event(j, "m", NULL, xstrdup("{\"k\":1}"));
    /* The job owns copies: the caller's buffers may change before the commit. */
    snprintf(id, sizeof(id), "token:mallory");
    snprintf(name, sizeof(name), "Mallory");
    commitq_submit(q, j);
    commitq_flush(q, "s1");
    json_t *ev = events_of(st, "s1");
    ASSERT_EQ(json_array_size(ev), 2);
    json_t *au = json_object_get(json_array_get(ev, 0), "author");
    ASSERT_STREQ(json_string_value(json_object_get(au, "id")), "token:alice");
    ASSERT_STREQ(json_string_value(json_object_get(au, "name")), "Alice");
    ASSERT(json_is_null(json_object_get(json_array_get(ev, 1), "author")));
    ASSERT_EQ(ev_int(ev, 1, "k"), 1);
    json_decref(ev);
    commitq_stop(q);
    close_store(st);
}

TEST(pending_jobs_are_batched_under_the_cap)
{
    struct store *st = open_store();
    new_session(st, "s1");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 1, &q), 0);
    hold_worker(q, "s1");
    gate_wait_entered(1);
    struct store_stats before, after;
    store_get_stats(st, &before);
    struct done_rec d = {.submitter = pthread_self()};
    submit_n(q, "s1", 0, 600, &d);
    /* Queued bytes are accounted while the worker is held. */
    size_t backlog = commitq_backlog(q, "s1");
    ASSERT(backlog >= 600 * strlen("{\"n\":0}"));
    gate_release();
    commitq_flush(q, "s1");
    store_get_stats(st, &after);
    ASSERT_EQ(atomic_load(&d.calls), 600);
    ASSERT_EQ(commitq_backlog(q, "s1"), 0);
    /* The held transaction, then 600 jobs in batches of at most 256: 3 transactions (not 600,
     * and not 1: a batch has a cap). */
    uint64_t commits = after.commits - before.commits;
    ASSERT(commits >= 1 + 3);
    ASSERT(commits <= 1 + 3 + 1);
    json_t *ev = events_of(st, "s1");
    ASSERT_EQ(json_array_size(ev), 601);
    for (size_t i = 1; i < 601; i++) {
        ASSERT_EQ(ev_int(ev, i, "n"), (long long)i - 1);
    }
    json_decref(ev);
    commitq_stop(q);
    close_store(st);
}

TEST(a_held_session_does_not_hold_the_others)
{
    struct store *st = open_store();
    new_session(st, "slow");
    new_session(st, "fast");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 2, &q), 0);
    hold_worker(q, "slow");
    gate_wait_entered(1);
    submit_n(q, "slow", 0, 10, NULL);
    struct done_rec d = {.submitter = pthread_self()};
    submit_n(q, "fast", 0, 50, &d);
    commitq_flush(q, "fast"); /* would hang (test timeout) if "fast" waited on "slow" */
    ASSERT_EQ(atomic_load(&d.calls), 50);
    json_t *ev = events_of(st, "fast");
    ASSERT_EQ(json_array_size(ev), 50);
    json_decref(ev);
    ASSERT(commitq_backlog(q, "slow") > 0); /* still pending behind the gate */
    gate_release();
    commitq_flush(q, "slow");
    ev = events_of(st, "slow");
    ASSERT_EQ(json_array_size(ev), 11);
    json_decref(ev);
    commitq_stop(q);
    close_store(st);
}

/* One session is never committed by two workers at once, and each producer's jobs keep their
 * order even with several producers and several workers. */
static _Atomic int inside, overlap;

static int exclusive_op(struct sess_tx *tx, void *arg)
{
    (void)tx;
    (void)arg;
    if (atomic_fetch_add(&inside, 1) != 0) {
        atomic_store(&overlap, 1);
    }
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
    atomic_fetch_sub(&inside, 1);
    return 0;
}

struct producer {
    struct commitq *q;
    int id;
};

static void *produce(void *arg)
{
    struct producer *p = arg;
    for (int i = 0; i < 300; i++) {
        struct cq_job *j = cq_job_new("s1");
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "{\"p\":%d,\"i\":%d}", p->id, i);
        cq_job_event(j, "x", NULL, xstrdup(tmp));
        cq_job_op(j, exclusive_op, NULL);
        commitq_submit(p->q, j);
    }
    return NULL;
}

TEST(one_worker_per_session_and_order_per_producer)
{
    struct store *st = open_store();
    new_session(st, "s1");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 4, &q), 0);
    pthread_t th[4];
    struct producer p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = (struct producer){q, i};
        ASSERT_EQ(pthread_create(&th[i], NULL, produce, &p[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    commitq_flush(q, "s1");
    ASSERT_EQ(atomic_load(&overlap), 0);
    json_t *ev = events_of(st, "s1");
    ASSERT_EQ(json_array_size(ev), 1200);
    int next[4] = {0};
    for (size_t i = 0; i < 1200; i++) {
        int who = (int)ev_int(ev, i, "p");
        ASSERT(who >= 0 && who < 4);
        ASSERT_EQ(ev_int(ev, i, "i"), next[who]);
        next[who]++;
    }
    json_decref(ev);
    commitq_stop(q);
    close_store(st);
}

/* A job whose op fails is dropped alone: the jobs batched with it are committed, and only
 * its done callback sees the error. */
static int fail_op(struct sess_tx *tx, void *arg)
{
    (void)tx;
    (void)arg;
    return ERR_CONFLICT;
}

TEST(failing_job_is_isolated_from_its_batch)
{
    struct store *st = open_store();
    new_session(st, "s1");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 1, &q), 0);
    hold_worker(q, "s1");
    gate_wait_entered(1);
    struct done_rec good = {.submitter = pthread_self()};
    struct done_rec bad = {.submitter = pthread_self()};
    submit_n(q, "s1", 0, 5, &good);
    struct cq_job *j = cq_job_new("s1");
    cq_job_event(j, "doomed", NULL, jdata("n", -1));
    cq_job_op(j, fail_op, NULL);
    cq_job_done(j, done_count, &bad);
    commitq_submit(q, j);
    submit_n(q, "s1", 5, 5, &good);
    gate_release();
    commitq_flush(q, "s1");
    ASSERT_EQ(atomic_load(&good.calls), 10);
    ASSERT_EQ(atomic_load(&good.failures), 0);
    ASSERT_EQ(atomic_load(&bad.calls), 1);
    ASSERT_EQ(atomic_load(&bad.last_rc), ERR_CONFLICT);
    ASSERT_EQ(commitq_backlog(q, "s1"), 0);
    json_t *ev = events_of(st, "s1");
    ASSERT_EQ(json_array_size(ev), 11); /* the gate + 10: the doomed event left no trace */
    for (size_t i = 1; i < 11; i++) {
        ASSERT_EQ(ev_int(ev, i, "n"), (long long)i - 1);
        ASSERT_EQ(json_integer_value(json_object_get(json_array_get(ev, i), "seq")),
                  (long long)i + 1);
    }
    json_decref(ev);
    /* Alone in its batch, a failing job reports its error too. */
    struct done_rec alone = {.submitter = pthread_self()};
    j = cq_job_new("s1");
    cq_job_op(j, fail_op, NULL);
    cq_job_done(j, done_count, &alone);
    commitq_submit(q, j);
    commitq_flush(q, "s1");
    ASSERT_EQ(atomic_load(&alone.calls), 1);
    ASSERT_EQ(atomic_load(&alone.last_rc), ERR_CONFLICT);
    commitq_stop(q);
    close_store(st);
}

TEST(a_session_without_a_file_fails_its_jobs_and_frees_its_backlog)
{
    struct store *st = open_store();
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 2, &q), 0);
    struct done_rec d = {.submitter = pthread_self()};
    submit_n(q, "ghost", 0, 20, &d);
    commitq_flush(q, "ghost");
    ASSERT_EQ(atomic_load(&d.calls), 20);
    ASSERT_EQ(atomic_load(&d.failures), 20);
    ASSERT_EQ(atomic_load(&d.last_rc), ERR_NOT_FOUND);
    ASSERT_EQ(commitq_backlog(q, "ghost"), 0);
    ASSERT_EQ(commitq_backlog(q, "never-seen"), 0);
    commitq_flush(q, "never-seen"); /* returns at once */
    commitq_stop(q);
    close_store(st);
}

/* The done callback sees the backlog already given back (the pump resumes on it), and may
 * submit the next job itself. */
struct chain {
    struct commitq *q;
    _Atomic int left;
    _Atomic long long backlog_in_done;
};

static void chain_done(void *arg, int rc)
{
    struct chain *c = arg;
    ASSERT_EQ(rc, 0);
    atomic_store(&c->backlog_in_done, (long long)commitq_backlog(c->q, "s1"));
    int left = atomic_fetch_sub(&c->left, 1) - 1;
    if (left > 0) {
        struct cq_job *j = cq_job_new("s1");
        cq_job_event(j, "chain", NULL, jdata("left", left));
        cq_job_done(j, chain_done, c);
        commitq_submit(c->q, j);
    }
}

TEST(stop_commits_pending_and_chained_jobs)
{
    struct store *st = open_store();
    new_session(st, "s1");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 2, &q), 0);
    struct chain c = {.q = q, .left = 5, .backlog_in_done = -1};
    struct done_rec d = {.submitter = pthread_self()};
    submit_n(q, "s1", 0, 500, &d);
    struct cq_job *j = cq_job_new("s1");
    cq_job_event(j, "chain", NULL, jdata("left", 5));
    cq_job_done(j, chain_done, &c);
    commitq_submit(q, j);
    /* No flush: stop itself must commit everything, including jobs submitted by done
     * callbacks while it stops. */
    commitq_stop(q);
    ASSERT_EQ(atomic_load(&d.calls), 500);
    ASSERT_EQ(atomic_load(&c.left), 0);
    ASSERT_EQ(atomic_load(&c.backlog_in_done), 0);
    json_t *ev = events_of(st, "s1");
    ASSERT_EQ(json_array_size(ev), 505);
    ASSERT_EQ(ev_int(ev, 504, "left"), 1);
    json_decref(ev);
    commitq_stop(NULL);
    close_store(st);
}

TEST(an_empty_job_still_calls_done)
{
    struct store *st = open_store();
    new_session(st, "s1");
    struct commitq *q = NULL;
    ASSERT_EQ(commitq_start(st, 0, &q), 0); /* 0 = the default number of workers */
    struct done_rec d = {.submitter = pthread_self()};
    struct cq_job *j = cq_job_new("s1");
    ASSERT_EQ(cq_job_count(j), 0);
    cq_job_done(j, done_count, &d);
    commitq_submit(q, j);
    commitq_flush(q, "s1");
    ASSERT_EQ(atomic_load(&d.calls), 1);
    ASSERT_EQ(atomic_load(&d.last_rc), 0);
    json_t *ev = events_of(st, "s1");
    ASSERT_EQ(json_array_size(ev), 0);
    json_decref(ev);
    /* "Just freed": it does not even need the session to exist. */
    struct done_rec ghost = {.submitter = pthread_self()};
    j = cq_job_new("ghost");
    cq_job_done(j, done_count, &ghost);
    commitq_submit(q, j);
    commitq_flush(q, "ghost");
    ASSERT_EQ(atomic_load(&ghost.calls), 1);
    ASSERT_EQ(atomic_load(&ghost.last_rc), 0);
    commitq_stop(q);
    close_store(st);
}

static const struct test_case tests[] = {
    T(jobs_commit_in_submission_order_and_done_runs_on_a_worker),
    T(authors_are_copied_and_null_is_the_system),
    T(pending_jobs_are_batched_under_the_cap),
    T(a_held_session_does_not_hold_the_others),
    T(one_worker_per_session_and_order_per_producer),
    T(failing_job_is_isolated_from_its_batch),
    T(a_session_without_a_file_fails_its_jobs_and_frees_its_backlog),
    T(stop_commits_pending_and_chained_jobs),
    T(an_empty_job_still_calls_done),
};
TEST_MAIN(tests)
