/*
 * runner.c - prompt queues, agent runs and session sandboxes (runner.h).
 *
 * Thread context:
 *   - the control thread (ctl_main) runs jobs: start the next prompt of a session (read the
 *     queue, start the sandbox, mark the prompt running, exec the agent), stop sandboxes of
 *     ended or idle sessions, the start-up recovery;
 *   - the output pump thread calls run_output/run_exit: agent lines are parsed into events
 *     and handed to commitq (never SQLite here);
 *   - commitq workers commit them and call job_done/finish_done, which free the session for
 *     its next prompt (a KICK job).
 * r->lock guards the session table (struct rs), each rs and the job queue. A struct run is
 * shared by the three (atomic refcount); its parser state belongs to the pump thread.
 *
 * Ordering: all events of a prompt go through the session's commitq FIFO, and the final
 * prompt.completed/failed/cancelled job is submitted from on_exit after the last output, so
 * it is committed after every output event of the prompt.
 *
 * Caps: every sandbox the runner creates (a session's, or a warm pool's through pool_factory)
 * holds a slot in r->live until the pump reports its end (sbx_ended) or the runner destroys
 * it; a start takes its slot (rs->reserving) before it creates anything. The server-wide cap
 * counts all of them, the per-user cap a session's sandbox against the session's creator.
 * A full cap first stops the least recently used idle sandbox in reach (it is only a cache of
 * a workspace kept on disk); else runner_acquire answers ERR_LIMIT and a prompt's start parks
 * (rs->cap_ticket, sandbox.waiting) until wake_parked finds room for it: called wherever a
 * slot is freed or a sandbox becomes idle, never by a timer.
 */
#include "runner/runner.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "agents/agents.h"
#include "runner/commitq.h"
#include "workspace/repos.h"
#include "sandbox/sbx.h"
#include "workspace/snap/snap.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BACKLOG_HIGH  (8u << 20) /* pause a sandbox's output above this many pending bytes */
#define BACKLOG_LOW   (2u << 20) /* and resume below this */
#define LINE_MAX_HOLD (1u << 20) /* longest JSON line held back across chunks */

enum job_kind { JOB_KICK, JOB_ENDED, JOB_RECOVER };

#define EVENT_OVERHEAD 64 /* bytes an event costs in the file beyond its data (row, seq, type) */

#define NSTARTERS 4 /* concurrent background sandbox starts (a workspace fill takes seconds) */

struct rjob {
    enum job_kind kind;
    char sid[72];
    struct rjob *next;
};

struct run;

/* One session known to the runner. Guarded by r->lock. Never freed before runner_stop. */
struct rs {
    char id[72];
    struct sbx *sbx;
    int users; /* runner_acquire holders */
    int64_t last_used_ms;
    struct run *run; /* the prompt being started or running */
    int ended;       /* DELETEd: stop the sandbox once idle */
    int purge;       /* and delete its workspace */
    /* issue 5: sandboxes start off the control thread (a workspace fill from an image takes
     * seconds); one start at a time per session. */
    int starting;            /* ensure_sandbox is creating the sandbox now */
    char *start_err;         /* why the last start for a prompt failed (start_next fails it) */
    int64_t sync_wait_since; /* mono ms: the head prompt waits for the workspace sync */
    /* Caps. owner/exempt are loaded once from the registry (load_owner) before a start. */
    char *owner;         /* the session's creator, whom its sandbox counts against */
    int exempt;          /* the creator holds an admin token: only the server cap applies */
    int reserving;       /* a slot is taken for the start in progress */
    uint64_t cap_ticket; /* > 0: a prompt's start waits for a slot (oldest first) */
    int cap_parked;      /* and is parked until wake_parked queues it again */
    int execs;           /* runner_exec_begin holders */
    int picking;         /* start_next uses x->sbx without a run yet: not to be evicted */
    struct rs *next;
};

/* A sandbox the runner created (a session's or a warm pool's), from its creation until the
 * pump reports its end (sbx_ended). Guarded by r->lock. */
struct live {
    struct sbx *s;
    char *owner; /* the session creator it counts against; NULL: a warm-pool sandbox */
    int exempt;
    int gone; /* destroyed by the runner: counted no more, its end not reported yet */
    struct live *next;
};

struct run {
    _Atomic int refs;
    struct runner *r;
    struct rs *rs;
    char sid[72];
    char pid[72];
    char mid[72];
    char *agent_name;
    struct sbx_exec *ex;       /* set by the control thread before output can arrive */
    const char *cancel_reason; /* guarded by r->lock */
    int64_t start_us;
    /* pump thread only */
    struct buf hold; /* partial line of stdout */
    struct buf text; /* merged output text of the current chunk */
    struct buf errtext;
    struct cq_job *job;
    int64_t out_bytes;  /* stored bytes charged to the prompt (event data + EVENT_OVERHEAD) */
    int64_t out_budget; /* the prompt's cap, or less: what the session's total has left */
    int truncated;
    int finals_kept; /* bits: a `done` (1) / `error` (2) line kept after the cap */
    int64_t first_us;
    char *error_reason;
    _Atomic int paused;
    struct agent_run *ar; /* issue 7: a named agent's CLI adapter (agents.h), or NULL */
};

struct runner {
    struct store *st;
    struct sbx_backend *be;
    struct outpump *pump;
    struct commitq *cq;
    struct runner_config cfg;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* jobs available / a run finished */
    struct rs *sessions;
    struct rjob *jhead, *jtail;
    int stopping;  /* control thread should exit */
    int accepting; /* new prompts may start */
    int running;
    uint64_t n_started, n_completed, n_failed, n_cancelled;
    int threads_out; /* queued/running starts and prompt-end threads (runner_stop waits) */
    /* issue 5: background sandbox starts run on NSTARTERS long-lived threads (bubblewrap's
     * --die-with-parent ties a sandbox to the thread that created it: never a thread that
     * exits). Jobs in r->sq_head, guarded by r->lock; r->cond wakes the starters. */
    struct starter *sq_head, *sq_tail;
    pthread_t starters[NSTARTERS];
    int nstarters;
    pthread_t ctl;
    /* Caps (see the top of the file), guarded by r->lock. */
    struct live *live;
    int reserving; /* slots taken by starts in progress (sessions and pool) */
    uint64_t next_ticket;
    uint64_t n_refused, n_waits, n_evicted, n_exec_refused, n_truncated;
};

static const struct sbx_exec_cb run_cb;
static void wake_parked(struct runner *r);

/* ---- small helpers ---- */

static struct rs *rs_get(struct runner *r, const char *sid)
{
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (!strcmp(x->id, sid)) {
            return x;
        }
    }
    struct rs *x = xcalloc(1, sizeof *x);
    snprintf(x->id, sizeof x->id, "%s", sid);
    x->last_used_ms = clock_mono_ms();
    x->next = r->sessions;
    r->sessions = x;
    return x;
}

static void push_job(struct runner *r, enum job_kind kind, const char *sid)
{
    struct rjob *j = xcalloc(1, sizeof *j);
    j->kind = kind;
    if (sid) {
        snprintf(j->sid, sizeof j->sid, "%s", sid);
    }
    if (r->jtail) {
        r->jtail->next = j;
    } else {
        r->jhead = j;
    }
    r->jtail = j;
    pthread_cond_broadcast(&r->cond);
}

void runner_kick(struct runner *r, const char *sid)
{
    if (!r || !util_valid_id(sid)) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    rs_get(r, sid)->ended = 0; /* a prompt on an ended session reopens it */
    push_job(r, JOB_KICK, sid);
    pthread_mutex_unlock(&r->lock);
}

static void run_unref(struct run *run)
{
    if (atomic_fetch_sub(&run->refs, 1) != 1) {
        return;
    }
    sbx_exec_put(run->ex);
    buf_free(&run->hold);
    buf_free(&run->text);
    buf_free(&run->errtext);
    free(run->agent_name);
    free(run->error_reason);
    agent_run_free(run->ar);
    free(run);
}

static char *json_obj_str(const char *k1, const char *v1, const char *k2, const char *v2)
{
    json_t *o = json_object();
    if (k1 && v1) {
        json_object_set_new(o, k1, json_string(v1));
    }
    if (k2 && v2) {
        json_object_set_new(o, k2, json_string(v2));
    }
    char *s = jx_dump(o);
    json_decref(o);
    return s;
}

/* ---- agent output → events (pump thread) ---- */

/* Charge an event of n data bytes (what it adds to the session file) to the prompt's output
 * budget. 0: store it. 1: over the budget: drop it; the first time, agent.truncated says
 * so and what the cap was (the agent keeps running: its exit status and final answer still
 * count). Escaped bytes are counted, not the agent's raw ones: a control byte costs six in
 * the file. */
static int over_budget(struct run *run, size_t n)
{
    int64_t cost = (int64_t)n + EVENT_OVERHEAD;
    if (!run->truncated && run->out_bytes + cost <= run->out_budget) {
        run->out_bytes += cost;
        return 0;
    }
    if (run->truncated) {
        return 1;
    }
    run->truncated = 1;
    int session = run->out_budget < run->r->cfg.prompt_output_cap;
    if (session) {
        run->out_bytes = run->out_budget; /* the session's allowance is used up: the next
                                           * prompt fails at once instead of storing crumbs */
    }
    json_t *d =
        json_pack("{s:s,s:I,s:s,s:s}", "prompt_id", run->pid, "limit_bytes",
                  (json_int_t)run->out_budget, "scope", session ? "session" : "prompt", "message",
                  session ? "…truncated: the session's stored agent output reached its total cap "
                            "(max_session_output_bytes); further output of this prompt is dropped"
                          : "…truncated: the prompt's agent output reached its cap "
                            "(max_prompt_output_bytes); further output is dropped");
    if (!run->job) {
        run->job = cq_job_new(run->sid);
    }
    cq_job_event(run->job, "agent.truncated", NULL, jx_dump(d));
    json_decref(d);
    pthread_mutex_lock(&run->r->lock);
    run->r->n_truncated++;
    pthread_mutex_unlock(&run->r->lock);
    return 1;
}

static void flush_text(struct run *run)
{
    struct buf *bs[2] = {&run->text, &run->errtext};
    for (int i = 0; i < 2; i++) {
        if (!bs[i]->len) {
            continue;
        }
        struct buf d;
        buf_init(&d, 0);
        buf_puts(&d, "{\"prompt_id\":");
        buf_json_str(&d, run->pid, strlen(run->pid));
        if (i) {
            buf_puts(&d, ",\"stream\":\"stderr\"");
        }
        buf_puts(&d, ",\"text\":");
        buf_json_str(&d, bs[i]->data, bs[i]->len);
        buf_putc(&d, '}');
        buf_reset(bs[i]);
        if (over_budget(run, d.len)) {
            buf_free(&d);
            continue;
        }
        if (!run->job) {
            run->job = cq_job_new(run->sid);
        }
        cq_job_event(run->job, "agent.output", NULL, buf_detach(&d, NULL));
    }
}

static void add_text(struct run *run, int err, const char *p, size_t n)
{
    if (run->truncated) {
        return;
    }
    struct buf *b = err ? &run->errtext : &run->text;
    if (b->len + n > 64 * 1024) { /* merged text stays one modest event (flushed per chunk) */
        flush_text(run);
    }
    buf_append(b, p, n);
}

struct msg_op {
    char sid[72];
    char pid[72];
    char *agent;
    char *content;
};

/* The agent's final answer, stored as an assistant message with its `message` event. */
static int assistant_tx(struct sess_tx *tx, void *arg)
{
    struct msg_op *m = arg;
    char *mid = util_new_id("m_");
    char *aid = xasprintf("agent:%s", m->agent);
    struct author a = {aid, m->agent, NULL};
    json_t *d = json_pack("{s:s,s:s,s:s,s:s}", "message_id", mid, "prompt_id", m->pid, "role",
                          "assistant", "content", m->content);
    char *data = jx_dump(d);
    json_decref(d);
    int64_t seq = 0;
    int rc = sess_tx_append(tx, "message", &a, data, &seq);
    if (!rc) {
        sqlite3_stmt *st = sess_tx_prepare(
            tx, "INSERT INTO messages(id, role, content, author_id, author_name, seq, "
                "created_at) VALUES(?, 'assistant', ?, ?, ?, ?, ?)");
        if (!st) {
            rc = ERR_DB;
        } else {
            sqlite3_bind_text(st, 1, mid, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 2, m->content, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 3, aid, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 4, m->agent, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 5, seq);
            sqlite3_bind_int64(st, 6, sess_tx_now(tx));
            rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_DB;
        }
    }
    free(data);
    free(mid);
    free(aid);
    return rc;
}

static void msg_done(void *arg, int rc)
{
    (void)rc;
    struct msg_op *m = arg;
    free(m->agent);
    free(m->content);
    free(m);
}

static void job_done(void *arg, int rc);

static void submit_job(struct run *run)
{
    flush_text(run);
    if (!run->job) {
        return;
    }
    atomic_fetch_add(&run->refs, 1);
    cq_job_done(run->job, job_done, run);
    commitq_submit(run->r->cq, run->job);
    run->job = NULL;
}

static int valid_type(const char *t)
{
    size_t n = strlen(t);
    if (!n || n > 32) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!((t[i] >= 'a' && t[i] <= 'z') || t[i] == '_')) {
            return 0;
        }
    }
    return 1;
}

static void handle_line(struct run *run, const char *line, size_t n)
{
    if (n && line[0] == '{') {
        json_t *o = json_loadb(line, n, 0, NULL);
        const char *type = o ? json_string_value(json_object_get(o, "type")) : NULL;
        if (type && json_is_object(o) && valid_type(type)) {
            if (!strcmp(type, "output")) {
                const char *t = json_string_value(json_object_get(o, "text"));
                if (t) {
                    add_text(run, 0, t, json_string_length(json_object_get(o, "text")));
                }
                json_decref(o);
                return;
            }
            flush_text(run);
            json_t *d = json_deep_copy(o);
            json_object_del(d, "type");
            json_object_set_new(d, "prompt_id", json_string(run->pid));
            char *data = jx_dump(d);
            json_decref(d);
            /* Every event the agent causes counts (a `done` twice: its summary is stored as a
             * message too). Past the cap one `done` and one `error` are still kept: they are
             * the prompt's answer and its failure reason. */
            int final = !strcmp(type, "done") ? 1 : !strcmp(type, "error") ? 2 : 0;
            if (over_budget(run, strlen(data) * (final == 1 ? 2 : 1))) {
                if (!final || (run->finals_kept & final)) {
                    free(data);
                    json_decref(o);
                    return;
                }
                run->finals_kept |= final;
            }
            char *etype = xasprintf("agent.%s", type);
            if (!run->job) {
                run->job = cq_job_new(run->sid);
            }
            cq_job_event(run->job, etype, NULL, data);
            free(etype);
            if (!strcmp(type, "done")) {
                const char *sum = json_string_value(json_object_get(o, "summary"));
                if (!sum) {
                    sum = json_string_value(json_object_get(o, "text"));
                }
                if (sum && *sum) {
                    /* The assistant message goes in its own operation, after the events so
                     * far, in order. */
                    submit_job(run);
                    struct msg_op *m = xcalloc(1, sizeof *m);
                    snprintf(m->sid, sizeof m->sid, "%s", run->sid);
                    snprintf(m->pid, sizeof m->pid, "%s", run->pid);
                    m->agent = xstrdup(run->agent_name);
                    m->content = xstrdup(sum);
                    struct cq_job *j = cq_job_new(run->sid);
                    cq_job_op(j, assistant_tx, m);
                    cq_job_done(j, msg_done, m);
                    commitq_submit(run->r->cq, j);
                }
            } else if (!strcmp(type, "error")) {
                const char *why = json_string_value(json_object_get(o, "reason"));
                if (!why) {
                    why = json_string_value(json_object_get(o, "message"));
                }
                free(run->error_reason);
                run->error_reason = xstrdup(why ? why : "the agent reported an error");
            }
            json_decref(o);
            return;
        }
        json_decref(o);
    }
    add_text(run, 0, line, n);
    add_text(run, 0, "\n", 1);
}

/* issue 7: protocol lines produced by a CLI adapter from the CLI's own stream. */
static void adapter_line(void *ctx, enum agent_msg type, const char *json, size_t len)
{
    (void)type;
    handle_line(ctx, json, len);
}

static void parse_stdout(struct run *run, const char *p, size_t n)
{
    while (n) {
        const char *nl = memchr(p, '\n', n);
        if (!nl) {
            /* A partial line: hold back what may be a JSON object, pass plain text on now
             * (first-byte latency matters more than line boundaries for plain output). */
            if ((run->hold.len && run->hold.data[0] == '{') || (!run->hold.len && p[0] == '{')) {
                if (run->hold.len + n <= LINE_MAX_HOLD) {
                    buf_append(&run->hold, p, n);
                    return;
                }
            }
            if (run->hold.len) {
                add_text(run, 0, run->hold.data, run->hold.len);
                buf_reset(&run->hold);
            }
            add_text(run, 0, p, n);
            return;
        }
        size_t l = (size_t)(nl - p);
        if (run->hold.len) {
            buf_append(&run->hold, p, l);
            handle_line(run, run->hold.data, run->hold.len);
            buf_reset(&run->hold);
        } else {
            handle_line(run, p, l);
        }
        p = nl + 1;
        n -= l + 1;
    }
}

static void job_done(void *arg, int rc)
{
    (void)rc;
    struct run *run = arg;
    if (atomic_load(&run->paused) && commitq_backlog(run->r->cq, run->sid) < BACKLOG_LOW) {
        atomic_store(&run->paused, 0);
        if (run->ex) {
            sbx_exec_resume(run->ex);
        }
    }
    run_unref(run);
}

static int run_output(void *ctx, struct sbx_exec *ex, int stream, const char *data, size_t n)
{
    (void)ex;
    struct run *run = ctx;
    if (!run->first_us) {
        run->first_us = clock_mono_us();
    }
    if (run->ar) { /* issue 7: the adapter parses stdout; stderr only feeds failure reasons */
        (stream == SBX_STDERR ? agent_run_stderr : agent_run_stdout)(run->ar, data, n);
    } else if (stream == SBX_STDERR) {
        add_text(run, 1, data, n);
    } else {
        parse_stdout(run, data, n);
    }
    submit_job(run);
    if (commitq_backlog(run->r->cq, run->sid) > BACKLOG_HIGH) {
        atomic_store(&run->paused, 1);
        return SBX_PAUSE;
    }
    return 0;
}

/* ---- finishing a prompt ---- */

struct finish_op {
    struct run *run;
    char state[16];
    char *event;  /* type */
    char *data;   /* event data */
    char *reason; /* prompts.reason */
    int exit_code;
    int has_exit;
    int started; /* the agent ran: the sandbox goes back from busy to idle */
};

static int finish_tx(struct sess_tx *tx, void *arg)
{
    struct finish_op *f = arg;
    sqlite3_stmt *st = sess_tx_prepare(tx, "UPDATE prompts SET state=?, finished_at=?, "
                                           "exit_code=?, reason=? WHERE id=?");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, f->state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sess_tx_now(tx));
    if (f->has_exit) {
        sqlite3_bind_int(st, 3, f->exit_code);
    } else {
        sqlite3_bind_null(st, 3);
    }
    if (f->reason) {
        sqlite3_bind_text(st, 4, f->reason, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 4);
    }
    sqlite3_bind_text(st, 5, f->run->pid, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        return ERR_DB;
    }
    if (f->run->out_bytes) {
        /* The session's running total of stored agent output, for the next prompt's budget
         * (max_session_output_bytes), in the transaction that ends the prompt. */
        st = sess_tx_prepare(tx, "INSERT INTO meta(key, value) VALUES('output_bytes', ?) "
                                 "ON CONFLICT(key) DO UPDATE SET "
                                 "value = CAST(value AS INTEGER) + excluded.value");
        if (!st) {
            return ERR_DB;
        }
        sqlite3_bind_int64(st, 1, f->run->out_bytes);
        if (sqlite3_step(st) != SQLITE_DONE) {
            return ERR_DB;
        }
    }
    int rc = sess_tx_append(tx, f->event, NULL, f->data, NULL);
    if (!rc && f->started) {
        char *d = json_obj_str("prompt_id", f->run->pid, NULL, NULL);
        rc = sess_tx_append(tx, "sandbox.idle", NULL, d, NULL);
        free(d);
    }
    return rc;
}

/* The end of a run once its final event is committed: the session may take its next prompt.
 * Commit worker or prompt-end thread. */
static void finish_tail(struct finish_op *f)
{
    struct run *run = f->run;
    struct runner *r = run->r;
    pthread_mutex_lock(&r->lock);
    if (run->rs->run == run) {
        run->rs->run = NULL;
    }
    run->rs->last_used_ms = clock_mono_ms();
    r->running--;
    if (!strcmp(f->state, "completed")) {
        r->n_completed++;
    } else if (!strcmp(f->state, "failed")) {
        r->n_failed++;
    } else {
        r->n_cancelled++;
    }
    push_job(r, run->rs->ended ? JOB_ENDED : JOB_KICK, run->sid);
    wake_parked(r); /* its sandbox may be idle now: a parked start can take its slot */
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    free(f->event);
    free(f->data);
    free(f->reason);
    free(f);
    run_unref(run);
}

/* issue 5: the prompt-end commit + snapshot, on a thread of its own: prompt.completed and the
 * answer are already committed (clients have them), a commit worker is not held for hundreds
 * of ms (other sessions' output goes on), and the session stays busy (rs->run) until the
 * snapshot has captured the turn, so its next prompt waits. */
static void *prompt_end_main(void *arg)
{
    struct finish_op *f = arg;
    struct runner *r = f->run->r;
    repos_prompt_end(r->cfg.repos, f->run->sid, f->run->pid);
    finish_tail(f);
    pthread_mutex_lock(&r->lock);
    r->threads_out--;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static int spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &at, fn, arg) == 0 ? 0 : ERR_IO;
    pthread_attr_destroy(&at);
    return rc;
}

static void finish_done(void *arg, int rc)
{
    struct finish_op *f = arg;
    struct run *run = f->run;
    struct runner *r = run->r;
    if (rc) {
        LOG_ERROR("runner: session %s prompt %s: cannot record its end: %s", run->sid, run->pid,
                  err_str(rc));
    }
    if (!f->started) {
        finish_tail(f); /* the agent never ran: nothing to commit or snapshot */
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->threads_out++;
    pthread_mutex_unlock(&r->lock);
    if (spawn_detached(prompt_end_main, f) != 0) {
        pthread_mutex_lock(&r->lock);
        r->threads_out--;
        pthread_mutex_unlock(&r->lock);
        repos_prompt_end(r->cfg.repos, run->sid, run->pid); /* no thread: here, as before */
        finish_tail(f);
    }
}

/* Build and submit the final job of a run. Any thread (pump thread normally). */
static void finish_run(struct run *run, const struct sbx_exit *st, const char *fail_reason)
{
    struct runner *r = run->r;
    struct finish_op *f = xcalloc(1, sizeof *f);
    f->run = run; /* takes the caller's reference */
    pthread_mutex_lock(&r->lock);
    const char *cancel = run->cancel_reason;
    pthread_mutex_unlock(&r->lock);
    int64_t dur_ms = (clock_mono_us() - run->start_us) / 1000;
    json_t *d = json_pack("{s:s}", "prompt_id", run->pid);
    f->started = run->ex != NULL || st != NULL;
    if (st) {
        f->has_exit = 1;
        f->exit_code = st->exit_code;
        json_object_set_new(d, "exit_code",
                            st->exit_code >= 0 ? json_integer(st->exit_code) : json_null());
        if (st->signal) {
            json_object_set_new(d, "signal", json_integer(st->signal));
        }
    }
    json_object_set_new(d, "duration_ms", json_integer(dur_ms));
    if (run->truncated) {
        json_object_set_new(d, "truncated", json_true());
    }
    char why[512];
    if (cancel) {
        snprintf(f->state, sizeof f->state, "cancelled");
        f->event = xstrdup("prompt.cancelled");
        f->reason = xstrdup(cancel);
    } else if (fail_reason || !st || st->exit_code != 0 || run->error_reason) {
        snprintf(f->state, sizeof f->state, "failed");
        f->event = xstrdup("prompt.failed");
        if (fail_reason) {
            snprintf(why, sizeof why, "%s", fail_reason);
        } else if (st->lost) {
            snprintf(why, sizeof why, "the sandbox stopped while the agent ran");
        } else if (st->timed_out) {
            snprintf(why, sizeof why, "timeout: the agent ran longer than %d s",
                     r->cfg.prompt_timeout_s);
        } else if (run->error_reason) {
            snprintf(why, sizeof why, "%s", run->error_reason);
        } else if (st->start_failed) {
            snprintf(why, sizeof why, "the agent could not be started");
        } else if (st->oom) {
            snprintf(why, sizeof why, "the agent was killed: the sandbox's memory limit was hit");
        } else if (st->signal == SIGKILL) {
            snprintf(why, sizeof why,
                     "the agent was killed (signal 9: memory limit or sandbox limit)");
        } else if (st->signal) {
            snprintf(why, sizeof why, "the agent was killed by signal %d", st->signal);
        } else {
            snprintf(why, sizeof why, "the agent exited with code %d", st->exit_code);
        }
        f->reason = xstrdup(why);
    } else {
        snprintf(f->state, sizeof f->state, "completed");
        f->event = xstrdup("prompt.completed");
        json_object_set_new(d, "time_to_first_token_ms",
                            run->first_us ? json_integer((run->first_us - run->start_us) / 1000)
                                          : json_null());
        if (run->ar) {
            agent_run_completion(run->ar, d); /* issue 7: usage, turns */
        }
    }
    if (f->reason) {
        json_object_set_new(d, "reason", json_string(f->reason));
    }
    f->data = jx_dump(d);
    json_decref(d);
    struct cq_job *j = cq_job_new(run->sid);
    cq_job_op(j, finish_tx, f);
    cq_job_done(j, finish_done, f);
    commitq_submit(r->cq, j);
}

static void run_exit(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st)
{
    (void)ex;
    struct run *run = ctx;
    if (run->ar) { /* issue 7: a cancelled run gets no agent.error of its own */
        pthread_mutex_lock(&run->r->lock);
        int cancelled = run->cancel_reason != NULL;
        pthread_mutex_unlock(&run->r->lock);
        agent_run_exit(run->ar, cancelled                ? AGENT_EXIT_CANCELLED
                                : st->signal || st->lost ? -1
                                                         : st->exit_code);
    }
    if (run->hold.len) {
        handle_line(run, run->hold.data, run->hold.len);
        buf_reset(&run->hold);
    }
    submit_job(run);
    finish_run(run, st, NULL); /* takes over the callbacks' reference */
}

static const struct sbx_exec_cb run_cb = {run_output, run_exit};

/* ---- starting a prompt (control thread) ---- */

struct next_prompt {
    char *id, *mid, *author_id, *author_name, *author_email, *content, *context;
    char *agent;
    int64_t out_used; /* agent output the session's file holds already (meta output_bytes) */
};

static char *col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? xstrdup((const char *)t) : NULL;
}

static int read_next(sqlite3 *db, void *arg)
{
    struct next_prompt *np = arg;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        db,
        "SELECT p.id, p.message_id, p.author_id, p.author_name, p.author_email, m.content, "
        "m.context_json, (SELECT value FROM meta WHERE key='agent'), "
        "(SELECT CAST(value AS INTEGER) FROM meta WHERE key='output_bytes') FROM prompts p "
        "JOIN messages m ON m.id = p.message_id WHERE p.state='queued' "
        "ORDER BY p.queued_at, p.rowid LIMIT 1",
        -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return ERR_DB;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        np->id = col(st, 0);
        np->mid = col(st, 1);
        np->author_id = col(st, 2);
        np->author_name = col(st, 3);
        np->author_email = col(st, 4);
        np->content = col(st, 5);
        np->context = col(st, 6);
        np->agent = col(st, 7);
        np->out_used = sqlite3_column_int64(st, 8);
        rc = 0;
    } else {
        rc = rc == SQLITE_DONE ? ERR_NOT_FOUND : ERR_DB;
    }
    sqlite3_finalize(st);
    return rc;
}

static void next_free(struct next_prompt *np)
{
    free(np->id);
    free(np->mid);
    free(np->author_id);
    free(np->author_name);
    free(np->author_email);
    free(np->content);
    free(np->context);
    free(np->agent);
}

struct start_op {
    const char *pid;
    char *data;      /* prompt.started (sandbox.ready is the start's own event, issue 5) */
    char *busy_data; /* sandbox.busy */
    int changed;
};

static int start_tx(struct sess_tx *tx, void *arg)
{
    struct start_op *o = arg;
    sqlite3_stmt *st = sess_tx_prepare(
        tx, "UPDATE prompts SET state='running', started_at=? WHERE id=? AND state='queued'");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_int64(st, 1, sess_tx_now(tx));
    sqlite3_bind_text(st, 2, o->pid, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        return ERR_DB;
    }
    o->changed = sqlite3_changes(sess_tx_db(tx));
    if (!o->changed) {
        return 0; /* cancelled meanwhile */
    }
    int rc = sess_tx_append(tx, "prompt.started", NULL, o->data, NULL);
    if (!rc) {
        rc = sess_tx_append(tx, "sandbox.busy", NULL, o->busy_data, NULL);
    }
    return rc;
}

struct fail_op {
    const char *pid;
    const char *state; /* failed | cancelled */
    const char *event;
    const char *reason;
    const char *where; /* SQL condition on state */
    char *data;
};

static int fail_queued_tx(struct sess_tx *tx, void *arg)
{
    struct fail_op *o = arg;
    sqlite3_stmt *st = sess_tx_prepare(tx, "UPDATE prompts SET state=?, finished_at=?, reason=? "
                                           "WHERE id=? AND state='queued'");
    if (!st) {
        return ERR_DB;
    }
    sqlite3_bind_text(st, 1, o->state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sess_tx_now(tx));
    sqlite3_bind_text(st, 3, o->reason, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, o->pid, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        return ERR_DB;
    }
    if (!sqlite3_changes(sess_tx_db(tx))) {
        return ERR_NOT_FOUND;
    }
    return sess_tx_append(tx, o->event, NULL, o->data, NULL);
}

static int write_op(struct runner *r, const char *sid, sess_tx_fn fn, void *arg)
{
    struct sess *s = NULL;
    int rc = store_session_get(r->st, sid, &s);
    if (rc) {
        return rc;
    }
    rc = sess_write(s, fn, arg);
    sess_put(s);
    return rc;
}

static int emit(struct runner *r, const char *sid, const char *type, char *data)
{
    struct sess *s = NULL;
    int rc = store_session_get(r->st, sid, &s);
    if (!rc) {
        rc = sess_append(s, type, NULL, data, NULL);
        sess_put(s);
    }
    free(data);
    return rc;
}

/* The argv of the agent for a prompt. The prompt is never in argv or env. */
static int agent_argv(struct runner *r, struct sbx *sbx, const char *agent, char ***argv_out,
                      char **name_out)
{
    char **av = xcalloc(4, sizeof *av);
    const char *a = agent && *agent ? agent : r->cfg.agent;
    if (strchr(a, ' ')) {
        av[0] = xstrdup("/bin/sh");
        av[1] = xstrdup("-c");
        av[2] = xstrdup(a);
        *name_out = xstrdup("command");
    } else if (strchr(a, '/')) {
        /* A host path: copy it into the sandbox's private dir (the host is invisible). Only
         * the server's own --agent may name one: a session's agent (chosen by any user)
         * naming a host file would copy it into the sandbox (/etc/shadow, the data dir...). */
        if (a != r->cfg.agent) {
            free(av);
            return ERR_FORBIDDEN;
        }
        struct buf b;
        buf_init(&b, 64 << 20);
        FILE *f = fopen(a, "rb");
        char tmp[65536];
        size_t n;
        int rc = f ? 0 : ERR_NOT_FOUND;
        while (f && (n = fread(tmp, 1, sizeof tmp, f)) > 0 && !rc) {
            rc = buf_append(&b, tmp, n);
        }
        if (f) {
            fclose(f);
        }
        char *inside = NULL;
        if (!rc) {
            rc = sbx_put_private(sbx, "agent-bin", b.data, b.len, 1, &inside);
        }
        buf_free(&b);
        if (rc) {
            free(av);
            return rc;
        }
        av[0] = inside;
        const char *base = strrchr(a, '/');
        *name_out = xstrdup(base + 1);
    } else {
        if (!util_valid_id(a)) {
            free(av);
            return ERR_INVALID;
        }
        av[0] = xasprintf("%s/%s", sbx_agents_inside(sbx), a);
        *name_out = xstrdup(a);
    }
    *argv_out = av;
    return 0;
}

static void argv_free(char **av)
{
    for (char **p = av; p && *p; p++) {
        free(*p);
    }
    free(av);
}

/* ---- sandbox caps (r->lock held unless said otherwise) ---- */

static struct live *live_find(struct runner *r, const struct sbx *s)
{
    for (struct live *l = r->live; l; l = l->next) {
        if (l->s == s) {
            return l;
        }
    }
    return NULL;
}

static void live_add(struct runner *r, struct sbx *s, const char *owner, int exempt)
{
    struct live *l = xcalloc(1, sizeof *l);
    l->s = s;
    l->owner = owner ? xstrdup(owner) : NULL;
    l->exempt = exempt;
    l->next = r->live;
    r->live = l;
}

/* The runner destroys s now: its slot is free at once (the pump reports the end later). */
static void live_gone(struct runner *r, const struct sbx *s)
{
    struct live *l = live_find(r, s);
    if (l) {
        l->gone = 1;
    }
    wake_parked(r);
}

static int slots_server(struct runner *r, int *pool)
{
    int n = r->reserving, p = 0;
    for (struct live *l = r->live; l; l = l->next) {
        n += !l->gone;
        p += !l->gone && !l->owner;
    }
    if (pool) {
        *pool = p;
    }
    return n;
}

static int slots_user(struct runner *r, const char *owner)
{
    int n = 0;
    for (struct live *l = r->live; l; l = l->next) {
        n += !l->gone && l->owner && !strcmp(l->owner, owner);
    }
    for (struct rs *x = r->sessions; x; x = x->next) {
        n += x->reserving && x->owner && !strcmp(x->owner, owner);
    }
    return n;
}

static int user_full(struct runner *r, const struct rs *x)
{
    return !x->exempt && slots_user(r, x->owner) >= r->cfg.max_sandboxes_per_user;
}

/* The least recently used idle session sandbox other than self's, of owner (NULL: anyone's). */
static struct rs *idle_victim(struct runner *r, const struct rs *self, const char *owner)
{
    struct rs *v = NULL;
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (x == self || !x->sbx || x->run || x->users || x->picking || x->starting ||
            x->reserving || (owner && (!x->owner || strcmp(x->owner, owner)))) {
            continue;
        }
        struct live *l = live_find(r, x->sbx);
        if (l && !l->gone && (!v || x->last_used_ms < v->last_used_ms)) {
            v = x;
        }
    }
    return v;
}

/* Could x take a slot now, directly or by stopping an idle sandbox? */
static int slot_in_reach(struct runner *r, const struct rs *x)
{
    int ufull = user_full(r, x);
    if (!ufull && slots_server(r, NULL) < r->cfg.max_sandboxes) {
        return 1;
    }
    return idle_victim(r, x, ufull ? x->owner : NULL) != NULL;
}

/* Take a slot for x's start. A full cap first takes the slot of the least recently used idle
 * sandbox in reach (the creator's own for the per-user cap, anyone's for the server cap): it
 * is detached here and handed back in *vsbx and *victim for the caller to destroy, r->lock not
 * held. ERR_LIMIT when every counted sandbox in reach is in use. */
static int slot_take(struct runner *r, struct rs *x, struct rs **victim, struct sbx **vsbx)
{
    *victim = NULL;
    *vsbx = NULL;
    int ufull = user_full(r, x);
    if (ufull || slots_server(r, NULL) >= r->cfg.max_sandboxes) {
        struct rs *v = idle_victim(r, x, ufull ? x->owner : NULL);
        if (!v) {
            return ERR_LIMIT;
        }
        struct live *l = live_find(r, v->sbx);
        l->gone = 1; /* no wake_parked: this slot goes to x */
        *vsbx = v->sbx;
        *victim = v;
        v->sbx = NULL;
        r->n_evicted++;
    }
    x->reserving = 1;
    r->reserving++;
    return 0;
}

/* The start of x ended: its slot goes to ns (NULL: the start failed, the slot is free). A
 * warm-pool sandbox taken over counts against x's creator from now on. */
static void slot_done(struct runner *r, struct rs *x, struct sbx *ns)
{
    if (!x->reserving) {
        return;
    }
    x->reserving = 0;
    r->reserving--;
    if (ns) {
        struct live *l = live_find(r, ns);
        if (!l) {
            if (sbx_alive(ns)) { /* dead: its end was reported already, nothing to count */
                live_add(r, ns, x->owner, x->exempt);
            }
        } else if (!l->owner) {
            l->owner = xstrdup(x->owner ? x->owner : "");
            l->exempt = x->exempt;
        }
    } else {
        wake_parked(r);
    }
}

/* The sbx_spec on_end hook of every sandbox the runner creates (pump thread): the sandbox
 * was destroyed or died, its slot is free. */
static void sbx_ended(void *arg, struct sbx *s)
{
    struct runner *r = arg;
    pthread_mutex_lock(&r->lock);
    for (struct live **pp = &r->live; *pp; pp = &(*pp)->next) {
        if ((*pp)->s == s) {
            struct live *l = *pp;
            *pp = l->next;
            free(l->owner);
            free(l);
            break;
        }
    }
    wake_parked(r);
    pthread_cond_broadcast(&r->cond); /* runner_stop waits for r->live to empty */
    pthread_mutex_unlock(&r->lock);
}

/* Who x's sandbox counts against: the session's creator, and whether that user holds an admin
 * token (an admin can mint users at will, so a per-user cap on admins would be for show: they
 * get the server cap only). Read once per session, r->lock NOT held. */
static void load_owner(struct runner *r, struct rs *x)
{
    pthread_mutex_lock(&r->lock);
    int have = x->owner != NULL;
    pthread_mutex_unlock(&r->lock);
    if (have) {
        return;
    }
    struct registry *reg = store_registry(r->st);
    json_t *row = NULL, *toks = NULL;
    char *owner = NULL;
    int exempt = 0;
    if (registry_session_get(reg, x->id, &row) == 0) {
        const char *cb = json_string_value(json_object_get(row, "created_by"));
        owner = xstrdup(cb ? cb : "");
    }
    if (owner && *owner && registry_token_list(reg, owner, &toks) == 0) {
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(toks, "tokens"), i, t)
        {
            const char *role = json_string_value(json_object_get(t, "role"));
            exempt |= role && !strcmp(role, "admin");
        }
    }
    json_decref(row);
    json_decref(toks);
    pthread_mutex_lock(&r->lock);
    if (!x->owner) {
        x->owner = owner ? owner : xstrdup(""); /* "" (no registry row): counted as one user */
        x->exempt = exempt;
        owner = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    free(owner);
}

static void queue_start_locked(struct runner *r, struct rs *x, int for_prompt);
static void park_start(struct runner *r, struct rs *x, int for_prompt);

/* A slot was freed or a sandbox became idle: the parked prompt starts that can now take a
 * slot go back to the starters, oldest first (a start that loses the race parks again with
 * its ticket, silently). */
static void wake_parked(struct runner *r)
{
    struct rs *best = NULL;
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (x->cap_parked && (!best || x->cap_ticket < best->cap_ticket) && slot_in_reach(r, x)) {
            best = x;
        }
    }
    if (best) {
        /* One per call: its start has not taken the slot yet, so waking more would only make
         * them race for it; every further freed slot or idle sandbox calls again. */
        best->cap_parked = 0;
        queue_start_locked(r, best, 1);
    }
}

/* Ensure the session has a live sandbox. Called by a starter thread or by runner_acquire
 * (HTTP threads) with r->lock NOT held; one start per session at a time (x->starting: a second
 * caller waits for the first). Emits sandbox.starting, then sandbox.ready {source, ms} or
 * sandbox.failed {error}, before the next start may begin (so a prompt kicked meanwhile cannot
 * report prompt.started before sandbox.ready). *ready_ms = start time or -1. */
static int ensure_sandbox(struct runner *r, struct rs *x, struct sbx **out, int64_t *ready_ms)
{
    *ready_ms = -1;
    pthread_mutex_lock(&r->lock);
    while (x->starting) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    x->starting = 1;
    struct sbx *s = x->sbx;
    pthread_mutex_unlock(&r->lock);
    struct sbx *ns = NULL, *old = NULL, *vsbx = NULL;
    struct rs *victim = NULL;
    int rc = 0;
    if (s && sbx_alive(s)) {
        *out = s;
        goto out;
    }
    load_owner(r, x);
    pthread_mutex_lock(&r->lock);
    rc = slot_take(r, x, &victim, &vsbx);
    pthread_mutex_unlock(&r->lock);
    if (vsbx) {
        sbx_destroy(vsbx);
        emit(r, victim->id, "sandbox.stopped", json_obj_str("reason", "capacity", NULL, NULL));
    }
    if (rc) {
        goto out;
    }
    if (s) {
        emit(r, x->id, "sandbox.stopped", json_obj_str("reason", "died", NULL, NULL));
    }
    emit(r, x->id, "sandbox.starting", xstrdup("{}"));
    int64_t t0 = clock_mono_us();
    repos_sandbox_start(r->cfg.repos, x->id); /* issue 5: fill a repository workspace first */
    char *objs = repos_shared_objects(r->cfg.repos, x->id, NULL);
    struct sbx_spec spec = {
        .name = x->id, .shared_objects = objs, .on_end = sbx_ended, .on_end_arg = r};
    ns = repos_take_sandbox(r->cfg.repos, x->id); /* issue 5: the warm pool's, already running */
    if (ns && !sbx_alive(ns)) {
        sbx_destroy(ns);
        ns = NULL;
    }
    rc = ns ? 0 : sbx_create(r->be, &spec, &ns);
    free(objs);
    if (rc) {
        char why[160];
        snprintf(why, sizeof why, "the sandbox could not start: %s", err_str(rc));
        emit(r, x->id, "sandbox.failed", json_obj_str("error", why, NULL, NULL));
        goto out;
    }
    *ready_ms = (clock_mono_us() - t0) / 1000;
    pthread_mutex_lock(&r->lock);
    old = x->sbx; /* s, or NULL if it was stopped meanwhile */
    x->sbx = ns;
    x->cap_ticket = 0; /* a wait for a slot is over */
    x->cap_parked = 0;
    slot_done(r, x, ns);
    if (old) {
        live_gone(r, old);
    }
    pthread_mutex_unlock(&r->lock);
    if (old) {
        sbx_destroy(old);
    }
    emit(r, x->id, "sandbox.ready", repos_ready_json(r->cfg.repos, x->id, *ready_ms)); /* issue 5 */
    *out = ns;
out:
    pthread_mutex_lock(&r->lock);
    x->starting = 0;
    slot_done(r, x, NULL); /* a failed start gives its slot back */
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* A start in the background (issue 5). for_prompt: a failure is kept in x->start_err for
 * start_next to fail the waiting prompt with. The session is kicked at the end. */
struct starter {
    struct rs *x; /* a start of x's sandbox, or (x NULL) a sandbox for the warm pool: */
    int for_prompt;
    const struct sbx_spec *spec; /* create this one (the caller waits for done) */
    struct sbx **out;
    int rc, done;
    struct starter *next;
};

static void stop_sandbox(struct runner *r, struct rs *x, const char *why);
static void purge_files(struct runner *r, struct rs *x, const char *sid);

static void *starter_main(void *arg)
{
    struct runner *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        struct starter *st = r->sq_head;
        if (!st) {
            if (r->stopping) {
                break;
            }
            pthread_cond_wait(&r->cond, &r->lock);
            continue;
        }
        r->sq_head = st->next;
        if (!r->sq_head) {
            r->sq_tail = NULL;
        }
        pthread_mutex_unlock(&r->lock);
        if (!st->x) { /* a sandbox for the warm pool (pool_factory waits for it) */
            int crc = sbx_create(r->be, st->spec, st->out);
            pthread_mutex_lock(&r->lock);
            st->rc = crc;
            st->done = 1;
            r->threads_out--;
            pthread_cond_broadcast(&r->cond);
            continue;
        }
        struct rs *x = st->x;
        struct sbx *sbx = NULL;
        int64_t ms = -1;
        int rc = ensure_sandbox(r, x, &sbx, &ms);
        pthread_mutex_lock(&r->lock);
        int ended = x->ended, purge = x->purge;
        pthread_mutex_unlock(&r->lock);
        if (rc == 0 && ms >= 0 && ended) {
            /* DELETEd while it started: JOB_ENDED found nothing to stop */
            stop_sandbox(r, x, purge ? "session purged" : "session ended");
            if (purge) {
                purge_files(r, x, x->id);
            }
        }
        if (rc == ERR_LIMIT && st->for_prompt) {
            park_start(r, x, 1);
            pthread_mutex_lock(&r->lock);
        } else if (rc == ERR_LIMIT) {
            /* A start ahead of any prompt is dropped; a prompt queued meanwhile found it
             * running and waits for this kick to start (and park) its own. */
            pthread_mutex_lock(&r->lock);
            push_job(r, JOB_KICK, x->id);
        } else {
            pthread_mutex_lock(&r->lock);
            if (rc && st->for_prompt) {
                free(x->start_err);
                x->start_err = xasprintf("the sandbox could not start: %s", err_str(rc));
            }
            push_job(r, JOB_KICK, x->id);
        }
        r->threads_out--;
        pthread_cond_broadcast(&r->cond);
        free(st);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Queue a start of x's sandbox for the starter threads unless one is starting or the start
 * is parked (wake_parked queues it). r->lock held. */
static void queue_start_locked(struct runner *r, struct rs *x, int for_prompt)
{
    if (x->starting || x->cap_parked || !r->accepting || !r->nstarters) {
        if (!r->nstarters && for_prompt) {
            free(x->start_err);
            x->start_err = xstrdup("the sandbox could not start: no starter thread");
            push_job(r, JOB_KICK, x->id);
        }
        return; /* a running start kicks the session when it ends */
    }
    for (struct starter *q = r->sq_head; q; q = q->next) {
        if (q->x == x) {
            q->for_prompt |= for_prompt;
            return; /* already queued */
        }
    }
    struct starter *st = xcalloc(1, sizeof *st);
    st->x = x;
    st->for_prompt = for_prompt;
    if (r->sq_tail) {
        r->sq_tail->next = st;
    } else {
        r->sq_head = st;
    }
    r->sq_tail = st;
    r->threads_out++;
    pthread_cond_broadcast(&r->cond);
}

static void start_in_background(struct runner *r, struct rs *x, int for_prompt)
{
    pthread_mutex_lock(&r->lock);
    queue_start_locked(r, x, for_prompt);
    pthread_mutex_unlock(&r->lock);
}

/* A background start found no slot. A prompt's start parks until wake_parked finds room
 * (the first time with a sandbox.waiting event); a start ahead of any prompt (a session
 * created with a repository) is dropped: the first prompt starts the sandbox, waiting then.
 * r->lock NOT held. */
static void park_start(struct runner *r, struct rs *x, int for_prompt)
{
    pthread_mutex_lock(&r->lock);
    int park = for_prompt && !x->ended && r->accepting;
    int first = park && !x->cap_ticket;
    if (first) {
        x->cap_ticket = ++r->next_ticket;
        r->n_waits++;
    }
    int user = x->owner && user_full(r, x);
    int limit = user ? r->cfg.max_sandboxes_per_user : r->cfg.max_sandboxes;
    pthread_mutex_unlock(&r->lock);
    if (first) { /* before it can be woken: sandbox.waiting precedes sandbox.starting */
        json_t *d = json_pack("{s:s,s:s,s:i}", "reason", "capacity", "scope",
                              user ? "user" : "server", "limit", limit);
        emit(r, x->id, "sandbox.waiting", jx_dump(d));
        json_decref(d);
        LOG_INFO("runner: session %s waits for a sandbox slot (%s cap %d)", x->id,
                 user ? "per-user" : "server", limit);
    }
    if (!park) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    if (x->cap_ticket && !x->ended) {
        x->cap_parked = 1;
        wake_parked(r); /* a slot may have come free while this start tried */
    }
    pthread_mutex_unlock(&r->lock);
}

/* repos_runner.make_sandbox: create a sandbox for the warm pool on a starter thread
 * (they live until runner_stop: a sandbox dies with the thread that created it) and wait. */
static int pool_factory(void *arg, const struct sbx_spec *spec, struct sbx **out)
{
    struct runner *r = arg;
    struct sbx_spec sp = *spec;
    sp.on_end = sbx_ended;
    sp.on_end_arg = r;
    struct starter st = {.spec = &sp, .out = out};
    int pool = 0;
    pthread_mutex_lock(&r->lock);
    if (!r->accepting || !r->nstarters) {
        pthread_mutex_unlock(&r->lock);
        return ERR_UNAVAILABLE;
    }
    /* Warm-pool sandboxes count against the server cap only, take a free slot only (they
     * never stop a session's) and at most a quarter of the cap, so that pools, which the
     * runner cannot stop, never keep the sessions' prompts waiting. ERR_UNAVAILABLE: the
     * workspace is kept warm without a sandbox (repos logs nothing for it). */
    if (slots_server(r, &pool) >= r->cfg.max_sandboxes || pool >= r->cfg.max_sandboxes / 4) {
        pthread_mutex_unlock(&r->lock);
        return ERR_UNAVAILABLE;
    }
    r->reserving++;
    if (r->sq_tail) {
        r->sq_tail->next = &st;
    } else {
        r->sq_head = &st;
    }
    r->sq_tail = &st;
    r->threads_out++;
    pthread_cond_broadcast(&r->cond);
    while (!st.done) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    r->reserving--;
    if (!st.rc && sbx_alive(*out)) {
        live_add(r, *out, NULL, 0);
    } else {
        wake_parked(r);
    }
    pthread_mutex_unlock(&r->lock);
    return st.rc;
}

void runner_prestart(struct runner *r, const char *sid)
{
    if (!r || !util_valid_id(sid)) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    int skip = x->sbx != NULL || x->ended;
    pthread_mutex_unlock(&r->lock);
    if (!skip) {
        start_in_background(r, x, 0);
    }
}

static void start_next_picked(struct runner *r, const char *sid);

/* Start the session's next prompt (control thread). Idle stops run on this thread too, but an
 * eviction for another start (slot_take) may run on any: x->picking keeps it off the sandbox
 * that start_next_picked holds without a run yet. */
static void start_next(struct runner *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    x->picking++;
    pthread_mutex_unlock(&r->lock);
    start_next_picked(r, sid);
    pthread_mutex_lock(&r->lock);
    x->picking--;
    if (!x->picking && !x->run) {
        wake_parked(r); /* it may be evictable again */
    }
    pthread_mutex_unlock(&r->lock);
}

static void start_next_picked(struct runner *r, const char *sid)
{
    struct next_prompt np = {0};
    struct run *run = NULL;
    char **argv = NULL;
    char *prompt_inside = NULL, *ctx_inside = NULL;
    struct sess *s = NULL;
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    int busy = x->run != NULL || !r->accepting || x->ended || x->starting;
    struct sbx *sbx = x->sbx;
    pthread_mutex_unlock(&r->lock);
    if (busy) {
        return; /* a running start kicks the session again when it ends */
    }
    int rc = store_session_get(r->st, sid, &s);
    if (rc) {
        return;
    }
    rc = sess_read(s, read_next, &np);
    sess_put(s);
    if (rc) {
        if (rc != ERR_NOT_FOUND) {
            LOG_ERROR("runner: session %s: cannot read its queue: %s", sid, err_str(rc));
        }
        return;
    }
    /* issue 5: the sandbox starts on a thread of its own (filling a workspace from an image
     * takes seconds and must not hold this thread, which starts every session's prompts); the
     * starter kicks the session when it is done. Then the agent waits for the workspace sync
     * (synced_cb kicks us at its end; the idle tick re-checks the bound). */
    pthread_mutex_lock(&r->lock);
    char *start_err = x->start_err;
    x->start_err = NULL;
    pthread_mutex_unlock(&r->lock);
    /* A session whose file holds its whole output allowance fails the prompt at once: the
     * agent's output could not be stored (and no sandbox slot is taken for it). */
    int64_t budget = r->cfg.session_output_cap - np.out_used;
    int out_full = budget <= 0;
    if (budget > r->cfg.prompt_output_cap) {
        budget = r->cfg.prompt_output_cap;
    }
    int alive = sbx && sbx_alive(sbx);
    if (alive || out_full) {
        free(start_err);
        start_err = NULL;
    } else if (!start_err) {
        start_in_background(r, x, 1);
        next_free(&np);
        return;
    }
    int sync_timeout = 0;
    if (alive && repos_syncing(r->cfg.repos, sid)) {
        int64_t now = clock_mono_ms();
        pthread_mutex_lock(&r->lock);
        if (!x->sync_wait_since) {
            x->sync_wait_since = now;
        }
        int64_t waited = now - x->sync_wait_since;
        pthread_mutex_unlock(&r->lock);
        if (waited < repos_sync_wait_ms(r->cfg.repos)) {
            next_free(&np);
            return;
        }
        sync_timeout = 1;
    }
    pthread_mutex_lock(&r->lock);
    x->sync_wait_since = 0;
    pthread_mutex_unlock(&r->lock);
    if (!np.agent) {
        /* The session's own agent (POST /v1/sessions {agent}), else the server default. */
        json_t *row = NULL;
        if (registry_session_get(store_registry(r->st), sid, &row) == 0) {
            const char *ag = json_string_value(json_object_get(row, "agent"));
            if (ag && *ag) {
                np.agent = xstrdup(ag);
            }
            json_decref(row);
        }
    }
    run = xcalloc(1, sizeof *run);
    atomic_store(&run->refs, 1);
    run->r = r;
    run->rs = x;
    snprintf(run->sid, sizeof run->sid, "%s", sid);
    snprintf(run->pid, sizeof run->pid, "%s", np.id);
    snprintf(run->mid, sizeof run->mid, "%s", np.mid ? np.mid : "");
    buf_init(&run->hold, 0);
    buf_init(&run->text, 0);
    buf_init(&run->errtext, 0);
    run->out_budget = budget;
    pthread_mutex_lock(&r->lock);
    x->run = run;
    r->running++;
    pthread_mutex_unlock(&r->lock);

    char reason[512] = "";
    if (out_full) {
        snprintf(reason, sizeof reason,
                 "output limit: the session's file holds %lld bytes of agent output, its total "
                 "cap (max_session_output_bytes %lld); start a new session",
                 (long long)np.out_used, (long long)r->cfg.session_output_cap);
        rc = ERR_LIMIT;
    } else if (start_err) { /* sandbox.failed was emitted by the start */
        snprintf(reason, sizeof reason, "%s", start_err);
        rc = ERR_UNAVAILABLE;
        free(start_err);
    } else if (sync_timeout) {
        snprintf(reason, sizeof reason,
                 "timeout: the workspace was still syncing with the repository after %d s",
                 repos_sync_wait_ms(r->cfg.repos) / 1000);
        rc = ERR_TIMEOUT;
    }
    if (!rc) {
        /* issue 7: the session's repository names the agent when neither the prompt nor the
         * session does, and adds its egress list to the policy (both read anew for each
         * prompt: a PATCH of the repository applies from the next prompt on). */
        json_t *reg = NULL;
        char ragent[80];
        repos_session_policy(r->cfg.repos, sid, &reg, ragent, sizeof ragent);
        if (!np.agent && ragent[0]) {
            np.agent = xstrdup(ragent);
        }
        size_t ne = json_array_size(reg);
        const char **extra = xcalloc(ne + 1, sizeof *extra);
        for (size_t i = 0; i < ne; i++) {
            extra[i] = json_string_value(json_array_get(reg, i));
        }
        /* issue 7: a configured agent name runs its CLI through its adapter. */
        const char *aname = np.agent && *np.agent ? np.agent : r->cfg.agent;
        rc = agent_run_new(r->cfg.agents, aname, sbx, sid, extra, adapter_line, run, &run->ar);
        free(extra);
        json_decref(reg);
        if (!rc) {
            const char *const *av = agent_run_argv(run->ar);
            size_t na = 0;
            while (av[na]) {
                na++;
            }
            argv = xcalloc(na + 1, sizeof *argv);
            for (size_t i = 0; i < na; i++) {
                argv[i] = xstrdup(av[i]);
            }
            run->agent_name = xstrdup(aname);
        } else if (rc == ERR_NOT_FOUND) {
            rc = agent_argv(r, sbx, np.agent, &argv, &run->agent_name);
        }
        if (rc) {
            snprintf(reason, sizeof reason, "the agent command is not usable: %s", err_str(rc));
        }
    }
    if (!rc) {
        rc = sbx_put_private(sbx, "prompt.txt", np.content, strlen(np.content), 0, &prompt_inside);
    }
    if (!rc) {
        const char *c = np.context ? np.context : "{}";
        rc = sbx_put_private(sbx, "context.json", c, strlen(c), 0, &ctx_inside);
        if (rc) {
            snprintf(reason, sizeof reason, "cannot write the prompt file: %s", err_str(rc));
        }
    }
    /* Mark it running (with sandbox.ready if we just started the sandbox). */
    struct start_op so = {.pid = np.id};
    json_t *d =
        json_pack("{s:s,s:s?,s:s?,s:{s:s?,s:s?}}", "prompt_id", np.id, "message_id", np.mid,
                  "agent", run->agent_name, "author", "id", np.author_id, "name", np.author_name);
    so.data = jx_dump(d);
    json_decref(d);
    so.busy_data = json_obj_str("prompt_id", np.id, NULL, NULL);
    int wrc = write_op(r, sid, start_tx, &so);
    free(so.data);
    free(so.busy_data);
    if (wrc || !so.changed) {
        /* Cancelled before it started (or the file is gone): try the next one. */
        pthread_mutex_lock(&r->lock);
        x->run = NULL;
        r->running--;
        push_job(r, JOB_KICK, sid);
        pthread_mutex_unlock(&r->lock);
        run_unref(run);
        goto out;
    }
    pthread_mutex_lock(&r->lock);
    r->n_started++;
    pthread_mutex_unlock(&r->lock);
    run->start_us = clock_mono_us();
    if (rc) {
        finish_run(run, NULL, reason);
        goto out;
    }
    const char *name = np.author_name && *np.author_name ? np.author_name : "sessiond";
    const char *email =
        np.author_email && *np.author_email ? np.author_email : "sessiond@localhost";
    char *env[12];
    int ne = 0;
    env[ne++] = xasprintf("PROMPT_FILE=%s", prompt_inside);
    env[ne++] = xasprintf("CONTEXT_FILE=%s", ctx_inside);
    env[ne++] = xasprintf("SESSION_ID=%s", sid);
    env[ne++] = xasprintf("PROMPT_ID=%s", np.id);
    env[ne++] = xasprintf("MESSAGE_ID=%s", np.mid ? np.mid : "");
    env[ne++] = xasprintf("GIT_AUTHOR_NAME=%s", name);
    env[ne++] = xasprintf("GIT_AUTHOR_EMAIL=%s", email);
    env[ne++] = xasprintf("GIT_COMMITTER_NAME=%s", name);
    env[ne++] = xasprintf("GIT_COMMITTER_EMAIL=%s", email);
    env[ne++] = xasprintf("AGENT_NAME=%s", run->agent_name);
    env[ne] = NULL;
    char **aenv = run->ar ? agent_run_env(run->ar, (const char *const *)env) : NULL; /* issue 7 */
    struct sbx_exec_req req = {
        .argv = (const char *const *)argv,
        .env = (const char *const *)(aenv ? aenv : env),
        .timeout_ms = r->cfg.prompt_timeout_s > 0 ? r->cfg.prompt_timeout_s * 1000 : -1,
        .stdin_data = np.content,
        .stdin_len = strlen(np.content),
    };
    /* The pump may call back before sbx_exec returns: hold a reference for the callbacks and
     * publish ex under the lock. */
    atomic_fetch_add(&run->refs, 1);
    struct sbx_exec *ex = NULL;
    pthread_mutex_lock(&r->lock);
    rc = sbx_exec(sbx, &req, &run_cb, run, &ex);
    run->ex = ex;
    const char *cancel = run->cancel_reason;
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < ne; i++) {
        free(env[i]);
    }
    agent_run_env_free(aenv); /* issue 7: wipes the key */
    if (rc) {
        run_unref(run); /* the callbacks' reference: they will not run */
        snprintf(reason, sizeof reason, "the agent could not be started: %s", err_str(rc));
        finish_run(run, NULL, reason);
        goto out;
    }
    if (cancel) {
        sbx_exec_kill(ex, SIGTERM, r->cfg.cancel_grace_ms);
    }
    /* Output may have paused the sandbox before ex was published (job_done could not resume
     * it then). */
    if (atomic_load(&run->paused) && commitq_backlog(r->cq, sid) < BACKLOG_LOW) {
        atomic_store(&run->paused, 0);
        sbx_exec_resume(ex);
    }
    run_unref(run); /* ours: rs->run and the callbacks hold the run now */
    run = NULL;
out:
    argv_free(argv);
    free(prompt_inside);
    free(ctx_inside);
    next_free(&np);
}

/* ---- cancel / end ---- */

int runner_cancel(struct runner *r, const char *sid, const char *prompt_id,
                  const struct author *who)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    struct run *run = x->run;
    if (run && (!prompt_id || !strcmp(prompt_id, run->pid))) {
        if (!run->cancel_reason) {
            run->cancel_reason = "cancelled";
        }
        struct sbx_exec *ex = run->ex;
        int grace = r->cfg.cancel_grace_ms;
        /* sbx_exec_kill takes the sandbox's lock only; the exec stays valid while run is
         * referenced by rs->run (we hold r->lock). */
        if (ex) {
            sbx_exec_kill(ex, SIGTERM, grace);
        }
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    pthread_mutex_unlock(&r->lock);
    if (!prompt_id) {
        return ERR_NOT_FOUND;
    }
    json_t *d = json_pack("{s:s,s:s}", "prompt_id", prompt_id, "reason", "cancelled");
    if (who && who->id) {
        json_object_set_new(d, "by", json_pack("{s:s,s:s?}", "id", who->id, "name", who->name));
    }
    struct fail_op o = {prompt_id, "cancelled", "prompt.cancelled", "cancelled", NULL, jx_dump(d)};
    json_decref(d);
    int rc = write_op(r, sid, fail_queued_tx, &o);
    free(o.data);
    return rc;
}

static int list_queued(sqlite3 *db, void *arg)
{
    json_t *arr = arg;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT id FROM prompts WHERE state='queued'", -1, &st, NULL) !=
        SQLITE_OK) {
        return ERR_DB;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_array_append_new(arr, json_string((const char *)sqlite3_column_text(st, 0)));
    }
    sqlite3_finalize(st);
    return 0;
}

void runner_session_ended(struct runner *r, const char *sid, int purge)
{
    if (!r || !util_valid_id(sid)) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    x->ended = 1;
    x->purge = x->purge || purge;
    x->cap_parked = 0; /* nothing to start any more */
    x->cap_ticket = 0;
    struct run *run = x->run;
    if (run) {
        run->cancel_reason = "session ended";
        if (run->ex) {
            sbx_exec_kill(run->ex, SIGTERM, r->cfg.cancel_grace_ms);
        }
    } else {
        push_job(r, JOB_ENDED, sid);
    }
    pthread_mutex_unlock(&r->lock);
    /* Queued prompts are cancelled now. */
    struct sess *s = NULL;
    if (store_session_get(r->st, sid, &s)) {
        return;
    }
    json_t *ids = json_array();
    sess_read(s, list_queued, ids);
    sess_put(s);
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *pid = json_string_value(v);
        char *data = json_obj_str("prompt_id", pid, "reason", "session ended");
        struct fail_op o = {pid, "cancelled", "prompt.cancelled", "session ended", NULL, data};
        write_op(r, sid, fail_queued_tx, &o);
        free(data);
    }
    json_decref(ids);
}

/* ---- sandboxes for exec/files ---- */

int runner_acquire(struct runner *r, const char *sid, struct sbx **out, int64_t *created_ms)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    x->users++;
    x->ended = 0;
    x->last_used_ms = clock_mono_ms();
    pthread_mutex_unlock(&r->lock);
    int64_t ms = -1;
    int rc = ensure_sandbox(r, x, out, &ms); /* emits sandbox.ready / sandbox.failed */
    if (rc || ms >= 0) {
        pthread_mutex_lock(&r->lock);
        r->n_refused += rc == ERR_LIMIT;
        push_job(r, JOB_KICK, sid); /* a prompt may have waited for this start */
        pthread_mutex_unlock(&r->lock);
    }
    if (rc) {
        runner_release(r, sid);
        return rc;
    }
    if (created_ms) {
        *created_ms = ms;
    }
    return 0;
}

void runner_release(struct runner *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    if (x->users > 0) {
        x->users--;
    }
    x->last_used_ms = clock_mono_ms();
    if (!x->users) {
        wake_parked(r);
    }
    pthread_mutex_unlock(&r->lock);
}

int runner_exec_begin(struct runner *r, const char *sid)
{
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    if (x->execs >= r->cfg.max_execs_per_session) {
        r->n_exec_refused++;
        rc = ERR_LIMIT;
    } else {
        x->execs++;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void runner_exec_end(struct runner *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = rs_get(r, sid);
    if (x->execs > 0) {
        x->execs--;
    }
    pthread_mutex_unlock(&r->lock);
}

struct commitq *runner_commitq(struct runner *r)
{
    return r->cq;
}

/* Stop the sandbox of x if nobody uses it. Control thread. */
static void stop_sandbox(struct runner *r, struct rs *x, const char *why)
{
    pthread_mutex_lock(&r->lock);
    struct sbx *s = NULL;
    if (!x->run && !x->users && x->sbx) {
        s = x->sbx;
        x->sbx = NULL;
        live_gone(r, s);
    }
    pthread_mutex_unlock(&r->lock);
    if (s) {
        sbx_destroy(s);
        emit(r, x->id, "sandbox.stopped", json_obj_str("reason", why, NULL, NULL));
    }
}

/* Delete the workspace and private dir of a purged session (local backends), after
 * stop_sandbox(). When the sandbox is really gone its inodes go to the spare pools
 * (snap_discard_tree: deleting 10k files makes ext4 without a journal slow at creating files
 * for minutes, which is what image starts and restores do); a sandbox still in use
 * (stop_sandbox skips it) may hold files there, so its tree is only deleted. */
static void purge_files(struct runner *r, struct rs *x, const char *sid)
{
    const char *dd = store_data_dir(r->st);
    const char *sub[] = {"workspaces", "sandboxes"};
    pthread_mutex_lock(&r->lock);
    int gone = x->sbx == NULL;
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < 2; i++) {
        char *p = xasprintf("%s/%s/%s", dd, sub[i], sid);
        if ((gone ? snap_discard_tree(p) : util_rm_rf(p)) != 0) {
            LOG_WARN("runner: session %s: cannot remove %s", sid, p);
        }
        free(p);
    }
}

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
        char *d = json_obj_str("prompt_id", json_string_value(v), "reason",
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

static void recover(struct runner *r)
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
            if (write_op(r, sid, recover_tx, &queued) == 0 && queued) {
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

/* ---- the control thread ---- */

static void idle_check(struct runner *r)
{
    int64_t now = clock_mono_ms();
    for (;;) {
        struct rs *victim = NULL;
        pthread_mutex_lock(&r->lock);
        for (struct rs *x = r->sessions; x; x = x->next) {
            if (x->sbx && !x->run && !x->users &&
                now - x->last_used_ms > (int64_t)r->cfg.idle_stop_s * 1000) {
                victim = x;
                break;
            }
        }
        pthread_mutex_unlock(&r->lock);
        if (!victim) {
            return;
        }
        stop_sandbox(r, victim, "idle");
    }
}

static void *ctl_main(void *arg)
{
    struct runner *r = arg;
    int64_t next_idle = clock_mono_ms() + 1000;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->jhead && !r->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&r->cond, &r->lock, &ts);
            if (clock_mono_ms() >= next_idle) {
                break;
            }
        }
        if (r->stopping) {
            break;
        }
        struct rjob *j = r->jhead;
        if (j) {
            r->jhead = j->next;
            if (!r->jhead) {
                r->jtail = NULL;
            }
        }
        pthread_mutex_unlock(&r->lock);
        if (j) {
            if (j->kind == JOB_KICK) {
                start_next(r, j->sid);
            } else if (j->kind == JOB_RECOVER) {
                recover(r);
            } else if (j->kind == JOB_ENDED) {
                pthread_mutex_lock(&r->lock);
                struct rs *x = rs_get(r, j->sid);
                int purge = x->purge && x->ended && !x->run;
                pthread_mutex_unlock(&r->lock);
                stop_sandbox(r, x, purge ? "session purged" : "session ended");
                if (purge) {
                    purge_files(r, x, j->sid);
                }
                repos_session_end(r->cfg.repos, j->sid); /* issue 5: snapshot in the background */
            }
            free(j);
        }
        if (clock_mono_ms() >= next_idle) {
            idle_check(r);
            next_idle = clock_mono_ms() + 1000;
            /* issue 5: prompts waiting for a workspace sync: check the bound */
            pthread_mutex_lock(&r->lock);
            for (struct rs *x = r->sessions; x; x = x->next) {
                if (x->sync_wait_since) {
                    push_job(r, JOB_KICK, x->id);
                }
            }
            pthread_mutex_unlock(&r->lock);
        }
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* repos_runner.synced: a workspace sync ended, a prompt may wait for it. Unlike
 * runner_kick this does not reopen an ended session. */
static void synced_cb(void *arg, const char *sid)
{
    struct runner *r = arg;
    pthread_mutex_lock(&r->lock);
    push_job(r, JOB_KICK, sid);
    pthread_mutex_unlock(&r->lock);
}

int runner_start(struct store *st, struct sbx_backend *be, struct outpump *pump,
                 const struct runner_config *cfg, struct runner **out)
{
    struct runner *r = xcalloc(1, sizeof *r);
    r->st = st;
    r->be = be;
    r->pump = pump;
    r->cfg = *cfg;
    if (!r->cfg.agent || !*r->cfg.agent) {
        r->cfg.agent = "shell";
    }
    if (!r->cfg.prompt_timeout_s) {
        r->cfg.prompt_timeout_s = 5400;
    }
    if (!r->cfg.cancel_grace_ms) {
        r->cfg.cancel_grace_ms = 5000;
    }
    if (!r->cfg.shutdown_grace_s) {
        r->cfg.shutdown_grace_s = 10;
    }
    if (!r->cfg.prompt_output_cap) {
        r->cfg.prompt_output_cap = (int64_t)16 << 20;
    }
    if (!r->cfg.session_output_cap) {
        r->cfg.session_output_cap = (int64_t)256 << 20;
    }
    if (!r->cfg.max_sandboxes) {
        r->cfg.max_sandboxes = 32;
    }
    if (!r->cfg.max_sandboxes_per_user) {
        r->cfg.max_sandboxes_per_user = 8;
    }
    if (!r->cfg.max_execs_per_session) {
        r->cfg.max_execs_per_session = 8;
    }
    if (!r->cfg.idle_stop_s) {
        r->cfg.idle_stop_s = 600;
    }
    r->accepting = 1;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    int rc = commitq_start(st, 2, &r->cq);
    if (rc) {
        free(r);
        return rc;
    }
    /* Starters before the control thread: recovery (the control thread's first job) kicks
     * every session with queued prompts, and a kick that found no starter thread yet failed
     * to start the sandbox, so a queue acknowledged before a crash was not resumed (seen
     * under load: "recovery ... resumed 1 queues" logged before "runner: started", then
     * nothing ran). nstarters is still written under r->lock: starters read it (TSan). */
    for (int i = 0; i < NSTARTERS; i++) {
        if (pthread_create(&r->starters[i], NULL, starter_main, r) != 0) {
            break;
        }
        pthread_mutex_lock(&r->lock);
        r->nstarters++;
        pthread_mutex_unlock(&r->lock);
    }
    if (!cfg->no_recover) {
        pthread_mutex_lock(&r->lock); /* the starters already share r->cond */
        push_job(r, JOB_RECOVER, NULL);
        pthread_mutex_unlock(&r->lock);
    }
    if (pthread_create(&r->ctl, NULL, ctl_main, r) != 0) {
        pthread_mutex_lock(&r->lock);
        r->stopping = 1;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
        for (int i = 0; i < r->nstarters; i++) {
            pthread_join(r->starters[i], NULL);
        }
        commitq_stop(r->cq);
        free(r);
        return ERR_IO;
    }
    struct repos_runner ops = {.make_sandbox = pool_factory, .synced = synced_cb, .ctx = r};
    repos_set_runner(r->cfg.repos, &ops);
    LOG_INFO("runner: started (agent %s, sandbox %s, prompt timeout %d s)", r->cfg.agent,
             sbx_backend_name(be), r->cfg.prompt_timeout_s);
    *out = r;
    return 0;
}

static void wait_idle(struct runner *r, int64_t ms)
{
    int64_t end = clock_mono_ms() + ms;
    pthread_mutex_lock(&r->lock);
    while (r->running > 0 && clock_mono_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cond, &r->lock, &ts);
    }
    pthread_mutex_unlock(&r->lock);
}

/* Wait up to ms for the pump to report the end of every sandbox the runner created (the
 * warm pools' were destroyed by repos_close before). 1 when none is left. */
static int wait_ends(struct runner *r, int64_t ms)
{
    int64_t end = clock_mono_ms() + ms;
    pthread_mutex_lock(&r->lock);
    while (r->live && clock_mono_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&r->cond, &r->lock, &ts);
    }
    int none = r->live == NULL;
    pthread_mutex_unlock(&r->lock);
    return none;
}

void runner_stop(struct runner *r)
{
    if (!r) {
        return;
    }
    repos_set_runner(r->cfg.repos, NULL);
    pthread_mutex_lock(&r->lock);
    r->accepting = 0;
    int running = r->running;
    pthread_mutex_unlock(&r->lock);
    if (running) {
        LOG_INFO("runner: waiting up to %d s for %d running prompt(s)", r->cfg.shutdown_grace_s,
                 running);
        wait_idle(r, (int64_t)r->cfg.shutdown_grace_s * 1000);
    }
    pthread_mutex_lock(&r->lock);
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (x->run && x->run->ex) {
            x->run->cancel_reason = "shutdown";
            sbx_exec_kill(x->run->ex, SIGTERM, 2000);
        }
    }
    pthread_mutex_unlock(&r->lock);
    wait_idle(r, 5000);
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->ctl, NULL);
    /* Background starts and prompt ends hold r: wait for them (a start in progress would
     * otherwise leave a sandbox nobody stops). */
    pthread_mutex_lock(&r->lock);
    while (r->threads_out > 0) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < r->nstarters; i++) {
        pthread_join(r->starters[i], NULL); /* r->stopping and no job left: they exit */
    }
    /* Stop every sandbox; a run still going is reported lost and finishes. */
    for (struct rs *x = r->sessions; x; x = x->next) {
        pthread_mutex_lock(&r->lock);
        struct sbx *s = x->sbx;
        x->sbx = NULL;
        if (s) {
            live_gone(r, s);
        }
        pthread_mutex_unlock(&r->lock);
        sbx_destroy(s);
    }
    wait_idle(r, 3000);
    commitq_stop(r->cq); /* commit what the runs left */
    if (!wait_ends(r, 10000)) {
        /* The pump still owes a sandbox's end report, which points at r: keep r (a leak at
         * exit) rather than let that report write into freed memory. */
        LOG_ERROR("runner: sandboxes still running at stop; the runner is not freed");
        return;
    }
    struct rs *x = r->sessions;
    while (x) {
        struct rs *n = x->next;
        free(x->start_err);
        free(x->owner);
        free(x);
        x = n;
    }
    struct rjob *j = r->jhead;
    while (j) {
        struct rjob *n = j->next;
        free(j);
        j = n;
    }
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}

void runner_get_stats(struct runner *r, struct runner_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&r->lock);
    for (struct rs *x = r->sessions; x; x = x->next) {
        out->sandboxes += x->sbx != NULL;
    }
    out->running = r->running;
    out->started = r->n_started;
    out->completed = r->n_completed;
    out->failed = r->n_failed;
    out->cancelled = r->n_cancelled;
    out->slots_used = slots_server(r, &out->pool_sandboxes);
    for (struct rs *x = r->sessions; x; x = x->next) {
        out->waiting += x->cap_ticket != 0;
    }
    out->sandbox_refused = r->n_refused;
    out->sandbox_waits = r->n_waits;
    out->sandbox_evicted = r->n_evicted;
    out->exec_refused = r->n_exec_refused;
    out->output_truncated = r->n_truncated;
    pthread_mutex_unlock(&r->lock);
}
