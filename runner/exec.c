/*
 * exec.c - the exec pipeline (exec.h): running execs, their output as events, kill, the
 * limits, and the waiters of synchronous execs.
 *
 * Thread context: rexec_start and rexec_kill on the caller's thread (HTTP pool threads);
 * output callbacks on the output pump thread, which only queue events on the commit queue;
 * the exit is handled on a commit worker once exec.exited is committed (x_exit_done), which
 * gives back the exec slot and the sandbox use and answers a synchronous waiter. An exec
 * context is shared by all of them (atomic refcount).
 *
 * Locks: e->lock guards the running list and the count of synchronous waiters; x->lock an
 * exec's waiter and done flag. Order: e->lock, then x->lock.
 */
#include "runner/exec.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/commitq.h"
#include "runner/runner.h"
#include "sandbox/blocked.h"
#include "sandbox/sbx.h"
#include "sandbox/sbx_egress.h"
#include "storage/store.h"
#include "workspace/repos.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXEC_BACKLOG_HIGH (8u << 20) /* pause a command's output above this many pending bytes */
#define EXEC_BACKLOG_LOW  (2u << 20) /* and resume below this */

struct runner_exec {
    struct runner *runner;
    struct commitq *cq;
    struct rexec_config cfg;
    pthread_mutex_t lock;
    struct xctx *running; /* by id, for rexec_kill; each entry holds a reference */
    int sync_waiting;     /* synchronous execs waiting for their command */
};

struct xctx {
    _Atomic int refs;
    struct runner_exec *e;
    char sid[72];
    char xid[40];
    int async;
    size_t cap;
    size_t bytes;  /* pump thread */
    int truncated; /* pump thread, read after done */
    struct sbx_exec *_Atomic ex;
    _Atomic int paused;
    pthread_mutex_t lock;
    int done; /* exited event committed; guarded by lock */
    /* A synchronous exec's suspended waiter, answered by x_exit_done; guarded by lock.
     * waiter_counted: it holds an e->sync_waiting slot. */
    struct rexec_waiter waiter;
    int has_waiter;
    int waiter_counted;
    struct buf out, err;
    struct sbx_exit st;
    struct xctx *rnext; /* e->running, guarded by e->lock */
    /* The session's secrets (in the command's environment) and the redactors of stdout (0)
     * and stderr (1) that scrub them from its output; pump thread after the launch. */
    struct redact_set *secrets;
    struct redactor *red[2];
};

int rexec_new(struct runner *r, const struct rexec_config *cfg, struct runner_exec **out)
{
    struct runner_exec *e = xcalloc(1, sizeof *e);
    e->runner = r;
    e->cq = runner_commitq(r);
    e->cfg = *cfg;
    if (e->cfg.max_sync < 1) {
        e->cfg.max_sync = 1;
    }
    pthread_mutex_init(&e->lock, NULL);
    *out = e;
    return 0;
}

void rexec_free(struct runner_exec *e)
{
    if (!e) {
        return;
    }
    pthread_mutex_lock(&e->lock);
    int left = e->running != NULL;
    pthread_mutex_unlock(&e->lock);
    if (left) {
        /* An exit not committed yet still points at e: keep it (a leak at exit) rather than
         * let that commit write into freed memory. */
        LOG_WARN("exec: commands still running at stop; the exec pipeline is not freed");
        return;
    }
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* ---- the exec context ---- */

static void x_unref(struct xctx *x)
{
    if (atomic_fetch_sub(&x->refs, 1) != 1) {
        return;
    }
    sbx_exec_put(atomic_load(&x->ex));
    redactor_free(x->red[0]);
    redactor_free(x->red[1]);
    redact_set_unref(x->secrets);
    buf_free(&x->out);
    buf_free(&x->err);
    pthread_mutex_destroy(&x->lock);
    free(x);
}

static void running_add(struct runner_exec *e, struct xctx *x)
{
    atomic_fetch_add(&x->refs, 1);
    pthread_mutex_lock(&e->lock);
    x->rnext = e->running;
    e->running = x;
    pthread_mutex_unlock(&e->lock);
}

/* Returns 1 if x was listed (its reference now belongs to the caller). */
static int running_remove(struct runner_exec *e, struct xctx *x)
{
    int found = 0;
    pthread_mutex_lock(&e->lock);
    for (struct xctx **pp = &e->running; *pp; pp = &(*pp)->rnext) {
        if (*pp == x) {
            *pp = x->rnext;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return found;
}

static void sync_release(struct runner_exec *e)
{
    pthread_mutex_lock(&e->lock);
    e->sync_waiting--;
    pthread_mutex_unlock(&e->lock);
}

static void x_result(const struct xctx *x, struct rexec_result *res)
{
    *res = (struct rexec_result){
        .xid = x->xid,
        .out = x->out.data ? x->out.data : "",
        .out_len = x->out.len,
        .err = x->err.data ? x->err.data : "",
        .err_len = x->err.len,
        .st = &x->st,
        .truncated = x->truncated,
    };
}

void rexec_abort_waiters(struct runner_exec *e)
{
    if (!e) {
        return;
    }
    pthread_mutex_lock(&e->lock);
    for (struct xctx *x = e->running; x; x = x->rnext) {
        pthread_mutex_lock(&x->lock);
        struct rexec_waiter w = x->waiter;
        int has = x->has_waiter, counted = x->waiter_counted;
        x->has_waiter = 0;
        pthread_mutex_unlock(&x->lock);
        if (has) {
            if (counted) {
                e->sync_waiting--; /* e->lock held */
            }
            struct rexec_result res = {.xid = x->xid, .aborted = 1};
            w.done(w.arg, &res, 1);
            x_unref(x); /* the waiter's reference; the list still holds one */
        }
    }
    pthread_mutex_unlock(&e->lock);
}

/* ---- output and exit (pump thread, then a commit worker) ---- */

static void x_job_done(void *arg, int rc)
{
    (void)rc;
    struct xctx *x = arg;
    struct sbx_exec *ex = atomic_load(&x->ex);
    if (atomic_load(&x->paused) && ex && commitq_backlog(x->e->cq, x->sid) < EXEC_BACKLOG_LOW) {
        atomic_store(&x->paused, 0);
        sbx_exec_resume(ex);
    }
    x_unref(x);
}

/* Output the secrets are scrubbed from: kept for a synchronous answer and queued as an
 * exec.output event, up to the cap. */
static int x_emit(struct xctx *x, int stream, const char *data, size_t n)
{
    if (x->truncated) {
        return 0;
    }
    if (x->bytes + n > x->cap) {
        n = util_utf8_complete_prefix(data, x->cap - x->bytes);
        x->truncated = 1;
    }
    x->bytes += n;
    if (!n) {
        return 0;
    }
    if (!x->async) {
        buf_append(stream == SBX_STDERR ? &x->err : &x->out, data, n);
    }
    struct buf d;
    buf_init(&d, 0);
    buf_puts(&d, "{\"exec_id\":");
    buf_json_str(&d, x->xid, strlen(x->xid));
    buf_puts(&d, stream == SBX_STDERR ? ",\"stream\":\"stderr\"" : ",\"stream\":\"stdout\"");
    buf_puts(&d, ",\"data\":");
    buf_json_str(&d, data, n);
    buf_putc(&d, '}');
    struct cq_job *j = cq_job_new(x->sid);
    cq_job_event(j, "exec.output", NULL, buf_detach(&d, NULL));
    atomic_fetch_add(&x->refs, 1);
    cq_job_done(j, x_job_done, x);
    commitq_submit(x->e->cq, j);
    if (commitq_backlog(x->e->cq, x->sid) > EXEC_BACKLOG_HIGH) {
        atomic_store(&x->paused, 1);
        return SBX_PAUSE;
    }
    return 0;
}

static int x_output(void *ctx, struct sbx_exec *ex, int stream, const char *data, size_t n)
{
    (void)ex;
    struct xctx *x = ctx;
    struct redactor *red = x->red[stream == SBX_STDERR];
    if (!red) {
        return x_emit(x, stream, data, n);
    }
    /* A value split across two chunks is held back until it can be seen whole. */
    struct buf clean;
    buf_init(&clean, 0);
    redactor_feed(red, data, n, &clean);
    int rc = clean.len ? x_emit(x, stream, clean.data, clean.len) : 0;
    buf_free(&clean);
    return rc;
}

/* The held-back tails, before exec.exited. */
static void x_flush(struct xctx *x)
{
    for (int i = 0; i < 2; i++) {
        if (x->red[i]) {
            struct buf clean;
            buf_init(&clean, 0);
            redactor_flush(x->red[i], &clean);
            if (clean.len) {
                x_emit(x, i ? SBX_STDERR : SBX_STDOUT, clean.data, clean.len);
            }
            buf_free(&clean);
        }
    }
}

/* exec.exited is committed: the exec slot and the sandbox use go back, and a synchronous
 * waiter gets its answer (commit worker). */
static void x_exit_done(void *arg, int rc)
{
    (void)rc;
    struct xctx *x = arg;
    struct runner_exec *e = x->e;
    if (running_remove(e, x)) {
        x_unref(x);
    }
    runner_exec_end(e->runner, x->sid);
    runner_release(e->runner, x->sid);
    pthread_mutex_lock(&x->lock);
    x->done = 1;
    struct rexec_waiter w = x->waiter;
    int has = x->has_waiter, counted = x->waiter_counted;
    x->has_waiter = 0;
    pthread_mutex_unlock(&x->lock);
    if (has) {
        if (counted) {
            sync_release(e);
        }
        struct rexec_result res;
        x_result(x, &res);
        w.done(w.arg, &res, 1);
        x_unref(x); /* the waiter's reference */
    }
    x_unref(x);
}

static void x_exit(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st)
{
    (void)ex;
    struct xctx *x = ctx;
    x_flush(x);
    x->st = *st;
    json_t *d = json_pack("{s:s,s:o,s:o,s:I,s:b,s:b}", "exec_id", x->xid, "exit_code",
                          st->exit_code >= 0 ? json_integer(st->exit_code) : json_null(), "signal",
                          st->signal ? json_integer(st->signal) : json_null(), "duration_ms",
                          (json_int_t)(st->duration_us / 1000), "truncated", x->truncated,
                          "timed_out", st->timed_out);
    if (st->lost) {
        json_object_set_new(d, "error", json_string("the sandbox stopped"));
    }
    if (st->oom) {
        json_object_set_new(d, "oom", json_true());
        json_object_set_new(d, "error", json_string("killed: the sandbox's memory limit"));
    }
    struct cq_job *j = cq_job_new(x->sid);
    cq_job_event(j, "exec.exited", NULL, jx_dump(d));
    json_decref(d);
    cq_job_done(j, x_exit_done, x); /* takes over the callbacks' reference */
    commitq_submit(x->e->cq, j);
}

static const struct sbx_exec_cb x_cb = {x_output, x_exit};

/* ---- starting an exec ---- */

/* The claims an exec holds before it runs; given back by x_exit_done once it does. */
struct claims {
    int sync;      /* an e->sync_waiting slot */
    int exec_slot; /* runner_exec_begin */
    int acquired;  /* runner_acquire */
};

static void claims_release(struct runner_exec *e, const char *sid, struct claims *c)
{
    if (c->sync) {
        sync_release(e);
    }
    if (c->acquired) {
        runner_release(e->runner, sid);
    }
    if (c->exec_slot) {
        runner_exec_end(e->runner, sid);
    }
    *c = (struct claims){0};
}

/* Step 1: the policy and the limits, then the sandbox and its workspace sync. */
static int x_admit(struct runner_exec *e, const struct rexec_req *req, struct claims *c,
                   struct sbx **sbx, enum rexec_stage *stage, char *msg, size_t n)
{
    char *blocked = NULL;
    if (blocked_match(e->cfg.blocked_commands, e->cfg.n_blocked_commands, req->argv[0], &blocked)) {
        /* Refused before anything is recorded; inside the sandbox the file is masked too. */
        snprintf(msg, n, "%s (%s) is blocked by the server's blocked_commands policy", req->argv[0],
                 blocked);
        free(blocked);
        *stage = REXEC_BLOCKED;
        return ERR_FORBIDDEN;
    }
    if (req->wait) {
        /* A synchronous exec holds no thread while it waits, but it buffers up to the output
         * cap in memory until its command ends: keep their number bounded. */
        pthread_mutex_lock(&e->lock);
        c->sync = e->sync_waiting < e->cfg.max_sync;
        e->sync_waiting += c->sync;
        pthread_mutex_unlock(&e->lock);
        if (!c->sync) {
            snprintf(msg, n, "%d synchronous execs are running; retry, or use \"async\": true",
                     e->cfg.max_sync);
            *stage = REXEC_SYNC_LIMIT;
            return ERR_LIMIT;
        }
    }
    int rc = runner_exec_begin(e->runner, req->sid);
    if (rc) {
        *stage = REXEC_EXEC_LIMIT;
        return rc;
    }
    c->exec_slot = 1;
    rc = runner_acquire(e->runner, req->sid, sbx, NULL);
    if (rc) {
        *stage = REXEC_SANDBOX;
        return rc;
    }
    c->acquired = 1;
    rc = repos_wait_synced(runner_repos(e->runner), req->sid, -1); /* a command may write */
    if (rc) {
        *stage = REXEC_SYNCING;
        if (rc == ERR_TIMEOUT) {
            snprintf(msg, n,
                     "the workspace is still syncing with the repository after %d s: exec "
                     "refused, retry later",
                     repos_sync_wait_ms(runner_repos(e->runner)) / 1000);
            return ERR_UNAVAILABLE;
        }
        snprintf(msg, n, "the workspace sync did not finish: %s", err_str(rc));
    }
    return rc;
}

static struct xctx *x_new(struct runner_exec *e, const struct rexec_req *req)
{
    struct xctx *x = xcalloc(1, sizeof *x);
    atomic_store(&x->refs, 1);
    x->e = e;
    snprintf(x->sid, sizeof x->sid, "%s", req->sid);
    char *xid = util_new_id("x_");
    snprintf(x->xid, sizeof x->xid, "%s", xid);
    free(xid);
    x->async = !req->wait;
    x->cap = (size_t)e->cfg.output_cap;
    buf_init(&x->out, 0);
    buf_init(&x->err, 0);
    pthread_mutex_init(&x->lock, NULL);
    runner_secrets(e->runner, req->sid, &x->secrets);
    if (x->secrets) {
        x->red[0] = redactor_new(x->secrets);
        x->red[1] = redactor_new(x->secrets);
    }
    return x;
}

/* Step 2: exec.started, queued before any output of the command. */
static void x_started_event(struct xctx *x, const struct rexec_req *req)
{
    json_t *d = json_pack("{s:s}", "exec_id", x->xid);
    if (req->script_json) {
        json_object_set(d, "script", req->script_json);
    } else {
        json_object_set(d, "argv", req->argv_json);
    }
    json_object_set_new(d, "async", json_boolean(x->async));
    char *data = jx_dump(d);
    json_decref(d);
    if (x->secrets) { /* a value typed into the command line is scrubbed like its output */
        char *clean = redact_str(x->secrets, data, strlen(data), NULL);
        free(data);
        data = clean;
    }
    struct cq_job *j = cq_job_new(x->sid);
    cq_job_event(j, "exec.started", req->who, data);
    commitq_submit(x->e->cq, j);
}

/* The command's route to the network: the egress proxy with the session's list of this moment
 * (its repository's egress plus egress.default), argv and env set for it; none when empty. */
static void x_route(struct runner_exec *e, const char *sid, struct sbx *sbx,
                    const struct rexec_req *req, const char *const *base, char ***argv, char ***env)
{
    json_t *list = NULL;
    struct sbx_egress route = {0};
    if (e->cfg.egress) {
        repos_session_policy(runner_repos(e->runner), sid, &list, NULL, 0);
        sbx_egress_open_json(e->cfg.egress, sbx, list, &route);
    }
    *argv = sbx_egress_argv(&route, req->argv);
    *env = sbx_egress_env(&route, base);
    sbx_egress_free(&route);
    json_decref(list);
}

/* Step 3: run it. The claims pass to the exec (x_exit_done gives them back). */
static int x_launch(struct xctx *x, struct sbx *sbx, const struct rexec_req *req, struct claims *c)
{
    struct runner_exec *e = x->e;
    /* the session's secrets, then the route's proxy variables */
    char **argv = NULL, **env = NULL, **senv = NULL;
    size_t ne = 0;
    runner_env_add_secrets(&senv, &ne, x->secrets);
    x_route(e, x->sid, sbx, req, (const char *const *)senv, &argv, &env);
    runner_env_free(senv);
    struct sbx_exec_req er = {
        .argv = (const char *const *)argv,
        .env = (const char *const *)env,
        .timeout_ms = req->timeout_s ? req->timeout_s * 1000 : 0,
        .stdin_data = req->stdin_data,
        .stdin_len = req->stdin_len,
    };
    atomic_fetch_add(&x->refs, 1); /* the callbacks' */
    struct sbx_exec *ex = NULL;
    int rc = sbx_exec(sbx, &er, &x_cb, x, &ex);
    sbx_egress_strv_free(argv);
    sbx_egress_strv_free(env); /* sbx_exec copied it (wiped: it holds the secrets) */
    if (rc) {
        atomic_fetch_sub(&x->refs, 1);
        char *ed = xasprintf("{\"exec_id\":\"%s\",\"exit_code\":null,\"error\":\"%s\"}", x->xid,
                             err_str(rc));
        struct cq_job *j = cq_job_new(x->sid);
        cq_job_event(j, "exec.exited", NULL, ed);
        commitq_submit(e->cq, j);
        return rc;
    }
    atomic_store(&x->ex, ex);
    running_add(e, x);
    if (atomic_load(&x->paused) && commitq_backlog(e->cq, x->sid) < EXEC_BACKLOG_LOW) {
        atomic_store(&x->paused, 0); /* paused before ex was published */
        sbx_exec_resume(ex);
    }
    c->acquired = 0;
    c->exec_slot = 0;
    return 0;
}

/* Step 4: a synchronous exec's waiter. Registered under x->lock, after suspend(), so the
 * exit cannot answer it before the transport has parked its request. */
static void x_wait(struct xctx *x, const struct rexec_waiter *w, struct claims *c)
{
    pthread_mutex_lock(&x->lock);
    if (x->done) {
        pthread_mutex_unlock(&x->lock);
        struct rexec_result res;
        x_result(x, &res);
        w->done(w->arg, &res, 0);
        return; /* c->sync is given back by the caller */
    }
    w->suspend(w->arg);
    atomic_fetch_add(&x->refs, 1); /* the waiter's, dropped by x_exit_done */
    x->waiter = *w;
    x->has_waiter = 1;
    x->waiter_counted = c->sync;
    c->sync = 0; /* given back by x_exit_done */
    pthread_mutex_unlock(&x->lock);
}

int rexec_start(struct runner_exec *e, const struct rexec_req *req, char *xid, size_t xid_n,
                enum rexec_stage *stage, char *msg, size_t n)
{
    struct claims c = {0};
    struct sbx *sbx = NULL;
    struct xctx *x = NULL;
    *stage = 0;
    snprintf(msg, n, "%s", "");
    int rc = x_admit(e, req, &c, &sbx, stage, msg, n);
    if (rc) {
        goto out;
    }
    x = x_new(e, req);
    snprintf(xid, xid_n, "%s", x->xid);
    x_started_event(x, req);
    rc = x_launch(x, sbx, req, &c);
    if (rc) {
        *stage = REXEC_SPAWN;
        snprintf(msg, n, "cannot run the command: %s", err_str(rc));
        goto out;
    }
    if (req->wait) {
        x_wait(x, req->wait, &c);
    }
out:
    claims_release(e, req->sid, &c);
    if (x) {
        x_unref(x);
    }
    return rc;
}

int rexec_kill(struct runner_exec *e, const char *sid, const char *xid, int sig, int grace_ms)
{
    struct xctx *x = NULL;
    pthread_mutex_lock(&e->lock);
    for (struct xctx *c = e->running; c; c = c->rnext) {
        if (!strcmp(c->xid, xid) && !strcmp(c->sid, sid)) {
            x = c;
            atomic_fetch_add(&x->refs, 1);
            break;
        }
    }
    pthread_mutex_unlock(&e->lock);
    if (!x) {
        return ERR_NOT_FOUND;
    }
    int rc = sbx_exec_kill(atomic_load(&x->ex), sig, grace_ms);
    x_unref(x);
    return rc;
}
