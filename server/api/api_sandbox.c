/*
 * api_sandbox.c - the sandbox endpoints and the glue between the server and sandbox/
 * (api_sandbox.h): exec (sync and async), files (confined to the workspace), cancel, and the
 * api_prompt_queued / api_session_ended / api_prompt_cancel hooks of the other subsystems.
 *
 * Threads: handlers run on HTTP pool threads and may block (a synchronous exec waits on a
 * condition variable for its exit). Output callbacks run on the output pump thread and only
 * queue events on the commit queue. An exec context is shared by both (atomic refcount).
 */
#include "server/api/api_sandbox.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/commitq.h"
#include "sandbox/blocked.h"
#include "sandbox/outpump.h"
#include "workspace/repos.h"
#include "runner/runner.h"
#include "sandbox/sbx.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/audit.h"
#include "server/auth.h"
#include "server/config.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define EXEC_BACKLOG_HIGH (8u << 20)
#define EXEC_BACKLOG_LOW  (2u << 20)
#define FILE_READ_MAX     ((size_t)64 << 20)

static struct outpump *g_pump; /* main thread writes once at start/stop */
static struct sbx_config g_sbx_cfg;

/* ---- start / stop ---- */

int sandbox_start(struct app *app)
{
    const struct config *cfg = app->cfg;
    int rc = outpump_start(&g_pump);
    if (rc) {
        return rc;
    }
    g_sbx_cfg = (struct sbx_config){
        .backend = cfg->sandbox,
        .data_dir = cfg->data_dir,
        .uid = (int)cfg->sandbox_uid,
        .memory_mib = (int)cfg->sandbox_memory_mib,
        .pids = (int)cfg->sandbox_pids,
        .cpus = (int)cfg->sandbox_cpus,
        .exec_timeout_s = (int)cfg->exec_timeout,
        .idle_stop_s = (int)cfg->sandbox_idle_stop,
        .blocked_commands = (const char *const *)cfg->blocked_commands.v,
        .n_blocked_commands = cfg->blocked_commands.n,
    };
    sbx_config_defaults(&g_sbx_cfg);
    rc = sbx_backend_open(&g_sbx_cfg, g_pump, &app->sbx);
    if (rc) {
        /* the backend logged the one line saying why and what to do */
        outpump_stop(g_pump);
        g_pump = NULL;
    }
    return rc;
}

int sandbox_runner_start(struct app *app)
{
    const struct config *cfg = app->cfg;
    struct runner_config rcfg = {
        .agent = cfg->agent,
        .prompt_timeout_s = (int)cfg->prompt_timeout,
        .cancel_grace_ms = (int)cfg->cancel_grace_ms,
        .shutdown_grace_s = (int)cfg->shutdown_grace,
        .idle_stop_s = (int)cfg->sandbox_idle_stop,
        .agents = app->agents, /* issue 7 */
        .prompt_output_cap = cfg->max_prompt_output_bytes,
        .session_output_cap = cfg->max_session_output_bytes,
        .max_sandboxes = (int)cfg->max_sandboxes,
        .max_sandboxes_per_user = (int)cfg->max_sandboxes_per_user,
        .max_execs_per_session = (int)cfg->max_execs_per_session,
        .repos = app->repos,
    };
    return runner_start(app->store, app->sbx, g_pump, &rcfg, &app->runner);
}

void sandbox_stop(struct app *app)
{
    runner_stop(app->runner);
    app->runner = NULL;
    sbx_backend_free(app->sbx);
    app->sbx = NULL;
    outpump_stop(g_pump);
    g_pump = NULL;
}

/* ---- hooks ---- */

void api_prompt_queued(struct app *app, const char *session_id)
{
    runner_kick(app->runner, session_id);
}

void api_session_ended(struct app *app, const char *session_id, int purged)
{
    runner_session_ended(app->runner, session_id, purged);
}

void api_session_started(struct app *app, const char *session_id)
{
    if (repos_session_has_repo(app->repos, session_id)) {
        runner_prestart(app->runner, session_id);
    }
}

/* issue 5: writes wait for the session's workspace sync (reads do not). 0, or the request
 * failed with 503 after the bounded wait. */
static int wait_for_sync(struct req *r, const char *sid, const char *what)
{
    int rc = repos_wait_synced(req_app(r)->repos, sid, -1);
    if (rc == ERR_TIMEOUT) {
        return req_fail(r, ERR_UNAVAILABLE,
                        "the workspace is still syncing with the repository after %d s: %s "
                        "refused, retry later",
                        repos_sync_wait_ms(req_app(r)->repos) / 1000, what);
    }
    if (rc) {
        return req_fail(r, rc, "the workspace sync did not finish: %s", err_str(rc));
    }
    return 0;
}

#define SANDBOX_RETRY_AFTER "5" /* seconds: a busy sandbox's command usually ends by then */

/* runner_acquire failed: reply. No free sandbox slot is a 429 `sandbox_limit` with
 * Retry-After (the caller retries; nothing waits on the server's side). */
static int acquire_failed(struct req *r, int rc)
{
    if (rc != ERR_LIMIT) {
        return req_fail(r, rc, "the sandbox could not start: %s", err_str(rc));
    }
    const struct config *cfg = req_app(r)->cfg;
    char msg[300];
    snprintf(msg, sizeof msg,
             "no sandbox slot is free: the session creator's sandboxes (max_sandboxes_per_user "
             "%lld) or the server's (max_sandboxes %lld) are all in use; retry later",
             (long long)cfg->max_sandboxes_per_user, (long long)cfg->max_sandboxes);
    req_add_header(r, "Retry-After", SANDBOX_RETRY_AFTER);
    return req_fail_status(r, 429, "sandbox_limit", msg);
}

/* The REST cancel without HTTP (also used by the WebSocket `cancel` frame, ws_api.c). */
int api_prompt_cancel(struct app *app, const char *sid, const struct auth_info *who, json_t *body,
                      json_t **out, char *msg, size_t n)
{
    const char *pid = NULL;
    int rc = body ? jx_str(body, "prompt_id", &pid, msg, n) : 0;
    if (rc) {
        return rc;
    }
    if (pid && !util_valid_id(pid)) {
        snprintf(msg, n, "prompt_id is not a valid id");
        return ERR_INVALID;
    }
    if (!app->runner) {
        snprintf(msg, n, "the sandbox runner is not running");
        return ERR_UNAVAILABLE;
    }
    struct author a = {who ? who->user_id : NULL, who ? who->name : NULL, NULL};
    rc = runner_cancel(app->runner, sid, pid, &a);
    if (rc == ERR_NOT_FOUND) {
        snprintf(msg, n, pid ? "prompt %s is not queued or running" : "no prompt is running", pid);
        return rc;
    }
    if (rc) {
        snprintf(msg, n, "cannot cancel: %s", err_str(rc));
        return rc;
    }
    *out = json_pack("{s:b,s:s?}", "cancelled", 1, "prompt_id", pid);
    return 0;
}

/* ---- POST /v1/sessions/{id}/cancel ---- */

int api_cancel(struct req *r)
{
    const char *sid = req_param(r, "id");
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    json_t *body = NULL;
    size_t blen = 0;
    req_body(r, &blen);
    if (blen) {
        rc = req_json_body(r, &body);
        if (rc) {
            return rc;
        }
    }
    char msg[256];
    json_t *out = NULL;
    rc = api_prompt_cancel(req_app(r), sid, req_auth(r), body, &out, msg, sizeof msg);
    json_decref(body);
    if (rc) {
        return req_fail(r, rc, "%s", msg);
    }
    return req_reply_json(r, 200, out);
}

/* ---- exec ---- */

struct xctx {
    _Atomic int refs;
    struct runner *runner;
    struct commitq *cq;
    char sid[72];
    char xid[40];
    int async;
    size_t cap;
    size_t bytes;  /* pump thread */
    int truncated; /* pump thread, read after done */
    struct sbx_exec *_Atomic ex;
    _Atomic int paused;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done; /* exited event committed; guarded by lock */
    /* A synchronous exec's suspended request (req_defer), answered by x_exit_done; guarded
     * by lock. waiter_counted: it holds a g_sync_waiting slot. */
    struct req *waiter;
    int waiter_counted;
    struct buf out, err;
    struct sbx_exit st;
    struct xctx *rnext; /* g_running, guarded by g_xlock */
};

/* Running execs by id, for POST …/exec/{xid}/kill. Each entry holds a reference. */
static pthread_mutex_t g_xlock = PTHREAD_MUTEX_INITIALIZER;
static struct xctx *g_running;
static int g_sync_waiting; /* synchronous execs waiting for their command; g_xlock */

static void running_add(struct xctx *x)
{
    atomic_fetch_add(&x->refs, 1);
    pthread_mutex_lock(&g_xlock);
    x->rnext = g_running;
    g_running = x;
    pthread_mutex_unlock(&g_xlock);
}

/* Returns 1 if x was listed (its reference now belongs to the caller). */
static int running_remove(struct xctx *x)
{
    pthread_mutex_lock(&g_xlock);
    for (struct xctx **pp = &g_running; *pp; pp = &(*pp)->rnext) {
        if (*pp == x) {
            *pp = x->rnext;
            pthread_mutex_unlock(&g_xlock);
            return 1;
        }
    }
    pthread_mutex_unlock(&g_xlock);
    return 0;
}

static void x_unref(struct xctx *x);

void api_abort_deferred(struct app *app)
{
    (void)app;
    pthread_mutex_lock(&g_xlock);
    for (struct xctx *x = g_running; x; x = x->rnext) {
        pthread_mutex_lock(&x->lock);
        struct req *w = x->waiter;
        int counted = x->waiter_counted;
        x->waiter = NULL;
        pthread_mutex_unlock(&x->lock);
        if (w) {
            req_fail(w, ERR_UNAVAILABLE, "the server is shutting down; exec %s was not waited for",
                     x->xid);
            if (counted) {
                g_sync_waiting--; /* g_xlock held */
            }
            req_resume(w);
            x_unref(x); /* the waiter's reference; the list still holds one */
        }
    }
    pthread_mutex_unlock(&g_xlock);
}

static void x_unref(struct xctx *x)
{
    if (atomic_fetch_sub(&x->refs, 1) != 1) {
        return;
    }
    sbx_exec_put(atomic_load(&x->ex));
    buf_free(&x->out);
    buf_free(&x->err);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->cond);
    free(x);
}

static void x_job_done(void *arg, int rc)
{
    (void)rc;
    struct xctx *x = arg;
    struct sbx_exec *ex = atomic_load(&x->ex);
    if (atomic_load(&x->paused) && ex && commitq_backlog(x->cq, x->sid) < EXEC_BACKLOG_LOW) {
        atomic_store(&x->paused, 0);
        sbx_exec_resume(ex);
    }
    x_unref(x);
}

static int x_output(void *ctx, struct sbx_exec *ex, int stream, const char *data, size_t n)
{
    (void)ex;
    struct xctx *x = ctx;
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
    commitq_submit(x->cq, j);
    if (commitq_backlog(x->cq, x->sid) > EXEC_BACKLOG_HIGH) {
        atomic_store(&x->paused, 1);
        return SBX_PAUSE;
    }
    return 0;
}

/* The answer of a synchronous exec (after its exit event is committed). */
static void x_reply(struct xctx *x, struct req *r)
{
    json_t *res = json_pack("{s:s,s:s%,s:s%,s:o,s:o,s:b,s:b,s:I,s:b}", "exec_id", x->xid, "stdout",
                            x->out.data ? x->out.data : "", x->out.len, "stderr",
                            x->err.data ? x->err.data : "", x->err.len, "exit_code",
                            x->st.exit_code >= 0 ? json_integer(x->st.exit_code) : json_null(),
                            "signal", x->st.signal ? json_integer(x->st.signal) : json_null(),
                            "truncated", x->truncated, "timed_out", x->st.timed_out, "duration_ms",
                            (json_int_t)(x->st.duration_us / 1000), "oom", x->st.oom);
    req_reply_json(r, 200, res);
}

static void x_exit_done(void *arg, int rc)
{
    (void)rc;
    struct xctx *x = arg;
    if (running_remove(x)) {
        x_unref(x);
    }
    runner_exec_end(x->runner, x->sid);
    runner_release(x->runner, x->sid);
    pthread_mutex_lock(&x->lock);
    x->done = 1;
    struct req *w = x->waiter;
    int counted = x->waiter_counted;
    x->waiter = NULL;
    pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
    if (w) {
        /* The suspended request of a synchronous exec: answer it now (commit queue thread). */
        x_reply(x, w);
        if (counted) {
            pthread_mutex_lock(&g_xlock);
            g_sync_waiting--;
            pthread_mutex_unlock(&g_xlock);
        }
        req_resume(w);
        x_unref(x); /* the waiter's reference */
    }
    x_unref(x);
}

static void x_exit(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st)
{
    (void)ex;
    struct xctx *x = ctx;
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
    commitq_submit(x->cq, j);
}

static const struct sbx_exec_cb x_cb = {x_output, x_exit};

static int str_array(json_t *a, const char ***out, size_t max)
{
    size_t n = json_array_size(a);
    if (!n || n > max) {
        return ERR_INVALID;
    }
    const char **v = xcalloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++) {
        v[i] = json_string_value(json_array_get(a, i));
        if (!v[i]) {
            free(v);
            return ERR_INVALID;
        }
    }
    *out = v;
    return 0;
}

int api_exec(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    json_t *body = NULL, *argv_j = NULL;
    const char *script = NULL, *stdin_s = NULL;
    const char **argv = NULL;
    int64_t timeout_s = 0;
    int async = 0, acquired = 0, counted = 0, exec_slot = 0;
    char msg[256];
    struct xctx *x = NULL;
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    rc = req_json_body(r, &body);
    if (rc) {
        return rc;
    }
    if ((rc = jx_arr(body, "argv", &argv_j, msg, sizeof msg)) ||
        (rc = jx_str(body, "script", &script, msg, sizeof msg)) ||
        (rc = jx_str(body, "stdin", &stdin_s, msg, sizeof msg)) ||
        (rc = jx_int(body, "timeout_s", &timeout_s, msg, sizeof msg)) ||
        (rc = jx_bool(body, "async", &async, msg, sizeof msg))) {
        rc = req_fail(r, rc, "%s", msg);
        goto out;
    }
    if (!!argv_j == !!script) {
        rc = req_fail(r, ERR_INVALID, "give exactly one of 'argv' (array of strings) or 'script'");
        goto out;
    }
    if (timeout_s < 0 || timeout_s > 86400) {
        rc = req_fail(r, ERR_INVALID, "timeout_s must be between 1 and 86400");
        goto out;
    }
    if (argv_j && str_array(argv_j, &argv, 4096)) {
        rc = req_fail(r, ERR_INVALID, "'argv' must be a non-empty array of strings");
        goto out;
    }
    if (script) {
        argv = xcalloc(4, sizeof *argv);
        argv[0] = "/bin/bash";
        argv[1] = "-c";
        argv[2] = script;
    }
    char *blocked = NULL;
    if (blocked_match(g_sbx_cfg.blocked_commands, g_sbx_cfg.n_blocked_commands, argv[0],
                      &blocked)) {
        /* Refused before anything is recorded; inside the sandbox the file is masked too. */
        rc =
            req_fail(r, ERR_FORBIDDEN, "%s (%s) is blocked by the server's blocked_commands policy",
                     argv[0], blocked);
        free(blocked);
        goto out;
    }
    if (!app->runner) {
        rc = req_fail(r, ERR_UNAVAILABLE, "the sandbox is not running");
        goto out;
    }
    if (!async) {
        /* A synchronous exec no longer holds an HTTP thread (its request is suspended), but
         * it buffers up to the output cap in memory until its command ends: keep their number
         * bounded (half the HTTP threads, as the API has always promised). */
        int max_sync = (int)app->cfg->threads / 2 > 0 ? (int)app->cfg->threads / 2 : 1;
        pthread_mutex_lock(&g_xlock);
        int ok = g_sync_waiting < max_sync;
        g_sync_waiting += ok;
        pthread_mutex_unlock(&g_xlock);
        if (!ok) {
            rc = req_fail(r, ERR_LIMIT,
                          "%d synchronous execs are running; retry, or use \"async\": true",
                          max_sync);
            goto out;
        }
        counted = 1;
    }
    rc = runner_exec_begin(app->runner, sid);
    if (rc) {
        req_add_header(r, "Retry-After", "1");
        rc = req_fail(r, rc, "%lld execs are running in this session (max_execs_per_session)",
                      (long long)app->cfg->max_execs_per_session);
        goto out;
    }
    exec_slot = 1;
    struct sbx *sbx = NULL;
    rc = runner_acquire(app->runner, sid, &sbx, NULL);
    if (rc) {
        rc = acquire_failed(r, rc);
        goto out;
    }
    acquired = 1;
    rc = wait_for_sync(r, sid, "exec"); /* a command may write */
    if (rc) {
        goto out;
    }
    x = xcalloc(1, sizeof *x);
    atomic_store(&x->refs, 1);
    x->runner = app->runner;
    x->cq = runner_commitq(app->runner);
    snprintf(x->sid, sizeof x->sid, "%s", sid);
    char *xid = util_new_id("x_");
    snprintf(x->xid, sizeof x->xid, "%s", xid);
    free(xid);
    x->async = async;
    x->cap = (size_t)g_sbx_cfg.exec_output_cap;
    buf_init(&x->out, 0);
    buf_init(&x->err, 0);
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->cond, NULL);

    /* exec.started, queued before any output of the command. */
    const struct auth_info *who = req_auth(r);
    struct author a = {who ? who->user_id : NULL, who ? who->name : NULL, NULL};
    json_t *d = json_pack("{s:s}", "exec_id", x->xid);
    if (script) {
        json_object_set(d, "script", json_object_get(body, "script"));
    } else {
        json_object_set(d, "argv", argv_j);
    }
    json_object_set_new(d, "async", json_boolean(async));
    struct cq_job *j = cq_job_new(sid);
    cq_job_event(j, "exec.started", &a, jx_dump(d));
    json_decref(d);
    commitq_submit(x->cq, j);
    audit_exec(r, sid, x->xid, argv_j, script);

    struct sbx_exec_req er = {
        .argv = argv,
        .timeout_ms = timeout_s ? (int)timeout_s * 1000 : 0,
        .stdin_data = stdin_s,
        .stdin_len = stdin_s ? json_string_length(json_object_get(body, "stdin")) : 0,
    };
    atomic_fetch_add(&x->refs, 1); /* the callbacks' */
    struct sbx_exec *ex = NULL;
    rc = sbx_exec(sbx, &er, &x_cb, x, &ex);
    if (rc) {
        atomic_fetch_sub(&x->refs, 1);
        char *ed = xasprintf("{\"exec_id\":\"%s\",\"exit_code\":null,\"error\":\"%s\"}", x->xid,
                             err_str(rc));
        j = cq_job_new(sid);
        cq_job_event(j, "exec.exited", NULL, ed);
        commitq_submit(x->cq, j);
        rc = req_fail(r, ERR_UNAVAILABLE, "cannot run the command: %s", err_str(rc));
        goto out;
    }
    atomic_store(&x->ex, ex);
    running_add(x);
    if (atomic_load(&x->paused) && commitq_backlog(x->cq, sid) < EXEC_BACKLOG_LOW) {
        atomic_store(&x->paused, 0); /* paused before ex was published */
        sbx_exec_resume(ex);
    }
    acquired = 0;  /* released by x_exit_done */
    exec_slot = 0; /* likewise */
    if (async) {
        rc = req_reply_json(r, 202, json_pack("{s:s}", "exec_id", x->xid));
        goto out;
    }
    /* Wait without holding the HTTP pool thread (it serves other connections too): suspend
     * the request; x_exit_done answers and resumes it. Suspended under x->lock so the exit
     * cannot resume it before it is suspended. */
    pthread_mutex_lock(&x->lock);
    if (x->done) {
        pthread_mutex_unlock(&x->lock);
        x_reply(x, r);
        rc = 0;
        goto out;
    }
    req_defer(r);
    atomic_fetch_add(&x->refs, 1); /* the waiter's, dropped by x_exit_done */
    x->waiter = r;
    x->waiter_counted = counted;
    counted = 0; /* released by x_exit_done */
    pthread_mutex_unlock(&x->lock);
    rc = 0;
out:
    if (counted) {
        pthread_mutex_lock(&g_xlock);
        g_sync_waiting--;
        pthread_mutex_unlock(&g_xlock);
    }
    if (acquired) {
        runner_release(app->runner, sid);
    }
    if (exec_slot) {
        runner_exec_end(app->runner, sid);
    }
    if (x) {
        x_unref(x);
    }
    free(argv);
    json_decref(body);
    return rc;
}

/* ---- POST /v1/sessions/{id}/exec/{xid}/kill {signal?: "TERM"|"KILL"|"INT", grace_ms?} ---- */

int api_exec_kill(struct req *r)
{
    const char *sid = req_param(r, "id");
    const char *xid = req_param(r, "xid");
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    json_t *body = NULL;
    size_t blen = 0;
    req_body(r, &blen);
    if (blen && (rc = req_json_body(r, &body)) != 0) {
        return rc;
    }
    const char *sig_s = NULL;
    int64_t grace = 5000;
    char msg[200];
    if (body && ((rc = jx_str(body, "signal", &sig_s, msg, sizeof msg)) ||
                 (rc = jx_int(body, "grace_ms", &grace, msg, sizeof msg)))) {
        json_decref(body);
        return req_fail(r, rc, "%s", msg);
    }
    int sig = SIGTERM;
    if (sig_s && !strcmp(sig_s, "KILL")) {
        sig = SIGKILL;
    } else if (sig_s && !strcmp(sig_s, "INT")) {
        sig = SIGINT;
    } else if (sig_s && strcmp(sig_s, "TERM")) {
        json_decref(body);
        return req_fail(r, ERR_INVALID, "signal must be TERM, KILL or INT");
    }
    json_decref(body);
    if (grace < 0 || grace > 600000) {
        return req_fail(r, ERR_INVALID, "grace_ms must be between 0 and 600000");
    }
    struct xctx *x = NULL;
    pthread_mutex_lock(&g_xlock);
    for (struct xctx *c = g_running; c; c = c->rnext) {
        if (!strcmp(c->xid, xid) && !strcmp(c->sid, sid)) {
            x = c;
            atomic_fetch_add(&x->refs, 1);
            break;
        }
    }
    pthread_mutex_unlock(&g_xlock);
    if (!x) {
        return req_fail(r, ERR_NOT_FOUND, "no running exec %s in this session", xid);
    }
    rc = sbx_exec_kill(atomic_load(&x->ex), sig, (int)grace);
    x_unref(x);
    if (rc) {
        return req_fail(r, rc, "cannot signal the command: %s", err_str(rc));
    }
    return req_reply_json(r, 200, json_pack("{s:s,s:b}", "exec_id", xid, "signalled", 1));
}

/* ---- files ---- */

/* The path query parameter, checked: not absolute, no "..", no NUL (%00 in the raw URI). */
static int file_path(struct req *r, const char **out, int allow_root)
{
    const char *p = req_query(r, "path");
    const char *raw = req_raw_uri(r);
    if (raw && strcasestr(raw, "%00")) {
        return req_fail(r, ERR_INVALID, "the path contains a NUL byte");
    }
    if (!p || !*p || !strcmp(p, ".") || !strcmp(p, "/")) {
        if (allow_root) {
            *out = "";
            return 0;
        }
        return req_fail(r, ERR_INVALID, "query parameter 'path' is required");
    }
    if (sbx_path_check(p, strlen(p))) {
        return req_fail(r, ERR_INVALID,
                        "path must be relative to the workspace, without '..' components");
    }
    *out = p;
    return 0;
}

int api_files_get(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    const char *path = NULL;
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc) {
        return rc;
    }
    rc = file_path(r, &path, 1);
    if (rc) {
        return rc;
    }
    if (!app->runner) {
        return req_fail(r, ERR_UNAVAILABLE, "the sandbox is not running");
    }
    struct sbx *sbx = NULL;
    rc = runner_acquire(app->runner, sid, &sbx, NULL);
    if (rc) {
        return acquire_failed(r, rc);
    }
    struct buf b;
    buf_init(&b, FILE_READ_MAX);
    rc = *path ? sbx_read_file(sbx, path, &b) : ERR_CONFLICT;
    if (rc == ERR_CONFLICT) {
        json_t *list = NULL;
        rc = sbx_list_files(sbx, path, &list);
        if (!rc) {
            rc = req_reply_json(r, 200, list);
        }
    } else if (!rc) {
        rc = req_reply_buf(r, 200, "application/octet-stream", &b);
    }
    runner_release(app->runner, sid);
    buf_free(&b);
    if (rc == ERR_INVALID) {
        return req_fail(r, rc, "the path leaves the workspace or is not a regular file");
    }
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "no such file in the workspace: %s", path);
    }
    if (rc == ERR_TOO_LARGE) {
        return req_fail(r, rc, "the file is larger than %zu bytes", FILE_READ_MAX);
    }
    return rc ? req_fail(r, rc, NULL) : 0;
}

int api_files_put(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    const char *path = NULL;
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    rc = file_path(r, &path, 0);
    if (rc) {
        return rc;
    }
    if (!app->runner) {
        return req_fail(r, ERR_UNAVAILABLE, "the sandbox is not running");
    }
    size_t n = 0;
    const char *data = req_body(r, &n);
    struct sbx *sbx = NULL;
    rc = runner_acquire(app->runner, sid, &sbx, NULL);
    if (rc) {
        return acquire_failed(r, rc);
    }
    rc = wait_for_sync(r, sid, "the write");
    if (rc) {
        runner_release(app->runner, sid);
        return rc;
    }
    rc = sbx_write_file(sbx, path, data, n);
    runner_release(app->runner, sid);
    if (rc == ERR_INVALID) {
        return req_fail(r, rc, "the path leaves the workspace (or goes through a symlink)");
    }
    if (rc == ERR_CONFLICT) {
        return req_fail(r, rc, "%s is a directory", path);
    }
    if (rc) {
        return req_fail(r, rc, "cannot write %s: %s", path, err_str(rc));
    }
    return req_reply_json(r, 200, json_pack("{s:s,s:I}", "path", path, "size", (json_int_t)n));
}
