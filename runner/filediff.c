/*
 * filediff.c - the diff in agent.file_changed (runner_int.h): each event carries the file's
 * uncommitted change as unified text (`diff`), computed by the sessiond-git helper as the
 * sandbox user (repos_diff_file: never git code as root on the workspace).
 *
 * A helper takes tens of ms: it never runs on the output pump thread (shared by every
 * sandbox). The pump queues the event in the run's ordered queue (struct run_seq) and a worker
 * thread of the run computes the diff, then submits the event. Every other job of the run
 * (output, the answer, the prompt's final event) goes through the same queue: submitted at
 * once while nothing waits, else behind the pending diffs. So the session's events keep the
 * order the agent caused them in, prompt.completed follows every file_changed, and the
 * prompt-end commit (after prompt.completed) sees every diff done; a slow diff delays only its
 * own session's events, by at most its deadline.
 *
 * Bounds, per prompt: FILEDIFF_MAX diffs of FILEDIFF_CAP bytes of text each (longer:
 * `diff_truncated`), FILEDIFF_TOTAL bytes in all, and no diff starts once the prompt's diffs
 * have taken FILEDIFF_BUSY_MS in all (the most its events are held back); past any of them the
 * event carries `diff_omitted: true` instead. A helper that runs past its deadline (at most
 * FILEDIFF_DEADLINE s) gives `diff_error`. A session without a repository (no
 * git) gets no diff fields. Fields named diff* that an agent wrote into its own file_changed
 * line are dropped: the diff is sessiond's. Its text is scrubbed of the session's secrets and
 * the agent's key like the agent's own output.
 *
 * Threads: runneri_submit and runneri_seq_held from any thread; runneri_file_changed on the
 * pump thread; the worker is a detached thread per run while its queue holds a diff, counted
 * in r->threads_out (runner_stop waits for it) and holding a reference to the run.
 */
#include "runner/runner_int.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/xmem.h"
#include "runner/commitq.h"
#include "sandbox/sbx.h"
#include "workspace/repos.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define FILEDIFF_MAX      50                /* diffs per prompt */
#define FILEDIFF_CAP      (64 * 1024)       /* bytes of diff text per event */
#define FILEDIFF_TOTAL    (1024 * 1024)     /* bytes of diff text per prompt */
#define FILEDIFF_FILE_CAP (2 * 1024 * 1024) /* a larger file is not read (binary, large) */
#define FILEDIFF_DEADLINE 5                 /* s: one helper at most */
#define FILEDIFF_BUSY_MS  15000 /* helper time per prompt: the most a session's events wait */

/* A queued job, or (d != NULL) a file_changed event waiting for its diff. */
struct seq_ent {
    struct cq_job *job;
    json_t *d;
    struct seq_ent *next;
};

void runneri_seq_init(struct run *run)
{
    pthread_mutex_init(&run->seq.mu, NULL);
}

void runneri_seq_free(struct run *run)
{
    struct seq_ent *e = run->seq.head;
    while (e) { /* empty at the last unref: the worker holds a reference while it drains */
        struct seq_ent *n = e->next;
        json_decref(e->d);
        free(e);
        e = n;
    }
    pthread_mutex_destroy(&run->seq.mu);
}

static void push_locked(struct run_seq *q, struct seq_ent *e)
{
    if (q->tail) {
        q->tail->next = e;
    } else {
        q->head = e;
    }
    q->tail = e;
    q->held++;
}

void runneri_submit(struct run *run, struct cq_job *j)
{
    struct run_seq *q = &run->seq;
    /* Our own reference while mu is held: the job may carry the run's last other reference
     * (the prompt's final event does), and the commit thread may finish it and free the run
     * before we unlock (ThreadSanitizer saw the mutex destroyed while locked). */
    atomic_fetch_add(&run->refs, 1);
    pthread_mutex_lock(&q->mu);
    if (!q->head) {
        /* under mu: a worker draining the queue cannot submit in between */
        commitq_submit(run->r->cq, j);
    } else {
        struct seq_ent *e = xcalloc(1, sizeof *e);
        e->job = j;
        push_locked(q, e);
    }
    pthread_mutex_unlock(&q->mu);
    runneri_run_unref(run);
}

int runneri_seq_held(struct run *run)
{
    pthread_mutex_lock(&run->seq.mu);
    int n = run->seq.held;
    pthread_mutex_unlock(&run->seq.mu);
    return n;
}

/* The diff text with the session's secrets and the agent's key replaced by their markers, as
 * in the agent's output: a file the agent wrote may hold a value it was given. */
static json_t *scrubbed(struct run *run, const char *text, size_t n)
{
    if (!text) {
        return json_string("");
    }
    struct redact_set *key = agent_run_secrets(run->ar);
    char *a = redact_str(run->secrets, text, n, &n);
    char *b = redact_str(key, a, n, &n);
    json_t *j = json_stringn(b, n);
    free(a);
    free(b);
    redact_set_unref(key);
    return j ? j : json_string("");
}

/* The diff of d's path into d (worker thread, no lock held). Returns the bytes of text put. */
static size_t fill_diff(struct run *run, json_t *d, int64_t wall_left_ms, size_t total_left)
{
    const char *path = json_string_value(json_object_get(d, "path"));
    size_t plen = json_string_length(json_object_get(d, "path"));
    if (!path || !*path || plen != strlen(path) || path[0] == '/' ||
        sbx_path_check(path, plen) != 0) {
        json_object_set_new(d, "diff_error", json_string("not a workspace path"));
        return 0;
    }
    unsigned dl = (unsigned)((wall_left_ms + 999) / 1000);
    struct repos_diff_opts o = {
        .path = path,
        .cap = total_left < FILEDIFF_CAP ? total_left : FILEDIFF_CAP,
        .file_cap = FILEDIFF_FILE_CAP,
        .max_files = 1,
        .deadline_s = dl < FILEDIFF_DEADLINE ? dl : FILEDIFF_DEADLINE,
    };
    json_t *out = NULL;
    int rc = repos_diff_file(run->r->cfg.repos, run->sid, &o, &out);
    if (rc == ERR_NOT_FOUND) {
        pthread_mutex_lock(&run->seq.mu);
        run->seq.no_repo = 1; /* no git: this and the next events go without a diff */
        pthread_mutex_unlock(&run->seq.mu);
        return 0;
    }
    if (rc) {
        LOG_WARN("runner: session %s: diff of a changed file failed: %s", run->sid, err_str(rc));
        json_object_set_new(d, "diff_error",
                            json_string(rc == ERR_INTERNAL ? "the diff failed or ran past its "
                                                             "deadline"
                                                           : err_str(rc)));
        json_decref(out);
        return 0;
    }
    json_t *f = json_array_get(json_object_get(out, "files"), 0);
    json_t *text = json_object_get(f, "diff");
    size_t n = json_string_length(text);
    json_object_set_new(d, "diff", scrubbed(run, json_string_value(text), n));
    if (json_is_true(json_object_get(out, "truncated")) ||
        json_is_true(json_object_get(f, "truncated"))) {
        json_object_set_new(d, "diff_truncated", json_true());
    }
    if (json_is_true(json_object_get(f, "binary"))) {
        json_object_set_new(d, "diff_binary", json_true());
    }
    json_decref(out);
    return n;
}

/* Resume a sandbox the pump paused for this queue's length once it is short again. */
static void maybe_resume(struct run *run)
{
    if (atomic_load(&run->paused) && runneri_seq_held(run) < SEQ_HELD_LOW &&
        commitq_backlog(run->r->cq, run->sid) < BACKLOG_LOW) {
        atomic_store(&run->paused, 0);
        if (run->ex) {
            sbx_exec_resume(run->ex);
        }
    }
}

/* Drain the queue: submit jobs, diff files, in order, until it is empty. */
static void *seq_main(void *arg)
{
    struct run *run = arg;
    struct run_seq *q = &run->seq;
    struct runner *r = run->r;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        struct seq_ent *e = q->head;
        if (!e) {
            q->worker = 0;
            break;
        }
        if (e->d && !q->no_repo) {
            int64_t left = FILEDIFF_BUSY_MS - q->busy_ms;
            size_t total_left = FILEDIFF_TOTAL - q->diff_bytes;
            if (left <= 0 || !total_left) {
                json_object_set_new(e->d, "diff_omitted", json_true());
            } else {
                pthread_mutex_unlock(&q->mu); /* the pump keeps queueing meanwhile */
                int64_t t0 = clock_mono_ms();
                size_t n = fill_diff(run, e->d, left, total_left);
                pthread_mutex_lock(&q->mu);
                q->busy_ms += clock_mono_ms() - t0;
                q->diff_bytes += n < total_left ? n : total_left;
            }
        }
        q->head = e->next;
        if (!q->head) {
            q->tail = NULL;
        }
        q->held--;
        struct cq_job *j = e->job;
        if (e->d) {
            j = cq_job_new(run->sid);
            cq_job_event(j, "agent.file_changed", NULL, jx_dump(e->d));
            json_decref(e->d);
        }
        commitq_submit(r->cq, j); /* under mu: in order with runneri_submit */
        free(e);
    }
    pthread_mutex_unlock(&q->mu);
    maybe_resume(run);
    runneri_run_unref(run);
    pthread_mutex_lock(&r->lock);
    r->threads_out--;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Start a worker for q (q->mu held). 0, or an error: the caller handles the entry itself. */
static int start_worker_locked(struct run *run)
{
    struct runner *r = run->r;
    pthread_mutex_lock(&r->lock);
    r->threads_out++;
    pthread_mutex_unlock(&r->lock);
    atomic_fetch_add(&run->refs, 1);
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &at, seq_main, run) == 0 ? 0 : ERR_IO;
    pthread_attr_destroy(&at);
    if (rc) {
        atomic_fetch_sub(&run->refs, 1); /* the caller still holds one */
        pthread_mutex_lock(&r->lock);
        r->threads_out--;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
        return rc;
    }
    run->seq.worker = 1;
    return 0;
}

void runneri_file_changed(struct run *run, json_t *d, struct cq_job **job)
{
    struct run_seq *q = &run->seq;
    /* The diff fields are sessiond's own: an agent's line does not supply them. */
    static const char *const own[] = {"diff", "diff_truncated", "diff_omitted", "diff_error",
                                      "diff_binary"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        json_object_del(d, own[i]);
    }
    pthread_mutex_lock(&q->mu);
    int inline_ev = !run->r->cfg.repos || q->no_repo;
    if (!inline_ev && q->diffs >= FILEDIFF_MAX) {
        json_object_set_new(d, "diff_omitted", json_true());
        inline_ev = 1;
    }
    if (!inline_ev) {
        if (*job) { /* what came before goes first */
            struct cq_job *j = *job;
            *job = NULL;
            pthread_mutex_unlock(&q->mu);
            runneri_submit(run, j);
            pthread_mutex_lock(&q->mu);
        }
        if (q->worker || start_worker_locked(run) == 0) {
            struct seq_ent *e = xcalloc(1, sizeof *e);
            e->d = d;
            push_locked(q, e);
            q->diffs++;
            pthread_mutex_unlock(&q->mu);
            return;
        }
        /* no worker: nothing waits in the queue either, the event goes now */
        json_object_set_new(d, "diff_error", json_string("no thread for the diff"));
    }
    pthread_mutex_unlock(&q->mu);
    if (!*job) {
        *job = cq_job_new(run->sid);
    }
    cq_job_event(*job, "agent.file_changed", NULL, jx_dump(d));
    json_decref(d);
}
