/*
 * api_sandbox.c - the sandbox endpoints and the glue between the server and sandbox/
 * (api_sandbox.h): exec (sync and async, over the exec pipeline of runner/exec.h), files
 * (confined to the workspace) and cancel (a thin handler over ops_prompt_cancel, server/ops.c).
 *
 * Threads: handlers run on HTTP pool threads and may block (a file write or an exec waits
 * for a workspace sync). A synchronous exec does not hold its thread while the command runs:
 * its request is suspended and answered from the commit worker that commits exec.exited.
 */
#include "server/api/api_sandbox.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/exec.h"
#include "workspace/repos.h"
#include "runner/runner.h"
#include "sandbox/sbx.h"
#include "server/api/api.h"
#include "server/api/api_audit.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/ops.h"
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

#define FILE_READ_MAX ((size_t)64 << 20)

/* ---- hooks ---- */

/* Writes wait for the session's workspace sync (reads do not). 0, or the request
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

/* ---- POST /v1/sessions/{id}/cancel ---- */

/* The caller's write access to session {id}, and its JSON body when it sent one (*body stays
 * NULL for an empty body; else a new reference). */
static int write_access_opt_body(struct req *r, json_t **body)
{
    size_t blen = 0;
    *body = NULL;
    int rc = api_session_access(r, req_param(r, "id"), AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    req_body(r, &blen);
    return blen ? req_json_body(r, body) : 0;
}

int api_cancel(struct req *r)
{
    const char *sid = req_param(r, "id");
    json_t *body = NULL;
    int rc = write_access_opt_body(r, &body);
    if (rc) {
        return rc;
    }
    struct ops_answer ans = {0};
    rc = ops_prompt_cancel(req_app(r), req_auth(r), sid, body, &ans);
    json_decref(body);
    if (rc) {
        return req_fail(r, rc, "%s", ans.msg);
    }
    rc = req_reply_json(r, 200, ans.json);
    ans.json = NULL;
    return rc;
}

/* ---- exec ---- */

/* The answer of a synchronous exec (after its exit event is committed). */
static void exec_reply(struct req *r, const struct rexec_result *x)
{
    const struct sbx_exit *st = x->st;
    json_t *res = json_pack("{s:s,s:s%,s:s%,s:o,s:o,s:b,s:b,s:I,s:b}", "exec_id", x->xid, "stdout",
                            x->out, x->out_len, "stderr", x->err, x->err_len, "exit_code",
                            st->exit_code >= 0 ? json_integer(st->exit_code) : json_null(),
                            "signal", st->signal ? json_integer(st->signal) : json_null(),
                            "truncated", x->truncated, "timed_out", st->timed_out, "duration_ms",
                            (json_int_t)(st->duration_us / 1000), "oom", st->oom);
    req_reply_json(r, 200, res);
}

/* The waiter of a synchronous exec: its request is suspended while the command runs (the
 * HTTP pool thread serves other connections meanwhile) and answered when it ends. */
static void exec_suspend(void *arg)
{
    req_defer(arg);
}

static void exec_done(void *arg, const struct rexec_result *res, int suspended)
{
    struct req *r = arg;
    if (res->aborted) {
        req_fail(r, ERR_UNAVAILABLE, "the server is shutting down; exec %s was not waited for",
                 res->xid);
    } else {
        exec_reply(r, res);
    }
    if (suspended) {
        req_resume(r);
    }
}

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

/* The body of POST …/exec: {argv | script, stdin?, timeout_s?, async?}, checked. *argv: the
 * command (caller frees the array, not the strings, which belong to *body). */
static int exec_parse(struct req *r, json_t **body, struct rexec_req *x, const char ***argv,
                      int *async)
{
    json_t *argv_j = NULL;
    const char *script = NULL, *stdin_s = NULL;
    int64_t timeout_s = 0;
    char msg[256];
    int rc = req_json_body(r, body);
    if (rc) {
        return rc;
    }
    if ((rc = jx_arr(*body, "argv", &argv_j, msg, sizeof msg)) ||
        (rc = jx_str(*body, "script", &script, msg, sizeof msg)) ||
        (rc = jx_str(*body, "stdin", &stdin_s, msg, sizeof msg)) ||
        (rc = jx_int(*body, "timeout_s", &timeout_s, msg, sizeof msg)) ||
        (rc = jx_bool(*body, "async", async, msg, sizeof msg))) {
        return req_fail(r, rc, "%s", msg);
    }
    if (!!argv_j == !!script) {
        return req_fail(r, ERR_INVALID,
                        "give exactly one of 'argv' (array of strings) or 'script'");
    }
    if (timeout_s < 0 || timeout_s > 86400) {
        return req_fail(r, ERR_INVALID, "timeout_s must be between 1 and 86400");
    }
    if (argv_j && str_array(argv_j, argv, 4096)) {
        return req_fail(r, ERR_INVALID, "'argv' must be a non-empty array of strings");
    }
    if (script) {
        *argv = xcalloc(4, sizeof **argv);
        (*argv)[0] = "/bin/bash";
        (*argv)[1] = "-c";
        (*argv)[2] = script;
    }
    x->argv = *argv;
    x->argv_json = argv_j;
    x->script_json = script ? json_object_get(*body, "script") : NULL;
    x->stdin_data = stdin_s;
    x->stdin_len = stdin_s ? json_string_length(json_object_get(*body, "stdin")) : 0;
    x->timeout_s = (int)timeout_s;
    return 0;
}

/* rexec_start refused: the answer for its stage. */
static int exec_refused(struct req *r, int rc, enum rexec_stage stage, const char *msg)
{
    if (stage == REXEC_SANDBOX) {
        return acquire_failed(r, rc);
    }
    if (stage == REXEC_EXEC_LIMIT) {
        req_add_header(r, "Retry-After", "1");
        return req_fail(r, rc, "%lld execs are running in this session (max_execs_per_session)",
                        (long long)req_app(r)->cfg->max_execs_per_session);
    }
    if (stage == REXEC_SPAWN) {
        return req_fail(r, ERR_UNAVAILABLE, "%s", msg);
    }
    return req_fail(r, rc, "%s", msg);
}

/* The audit entry of an exec, with the session's secrets scrubbed from its command line as
 * from its output: the audit log lives in registry.db, where no secret is kept in clear. */
static void audit_exec_clean(struct req *r, const char *sid, const char *xid, json_t *argv,
                             const char *script)
{
    struct redact_set *sec = NULL;
    ops_secrets_for(req_app(r), sid, NULL, &sec);
    if (!sec) {
        audit_exec(r, sid, xid, argv, script);
        return;
    }
    char *clean_script = script ? redact_str(sec, script, strlen(script), NULL) : NULL;
    json_t *clean_argv = NULL;
    if (argv) {
        size_t i;
        json_t *a;
        clean_argv = json_array();
        json_array_foreach(argv, i, a)
        {
            char *c = redact_str(sec, json_string_value(a), json_string_length(a), NULL);
            json_array_append_new(clean_argv, json_string(c));
            free(c);
        }
    }
    audit_exec(r, sid, xid, clean_argv, clean_script);
    json_decref(clean_argv);
    free(clean_script);
    redact_set_unref(sec);
}

int api_exec(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    json_t *body = NULL;
    const char **argv = NULL;
    int async = 0;
    struct rexec_req x = {.sid = sid};
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    rc = exec_parse(r, &body, &x, &argv, &async);
    if (rc) {
        goto out;
    }
    if (!app->exec) {
        rc = req_fail(r, ERR_UNAVAILABLE, "the sandbox is not running");
        goto out;
    }
    const struct auth_info *who = req_auth(r);
    struct author a = {who ? who->user_id : NULL, who ? who->name : NULL, NULL};
    struct rexec_waiter w = {exec_suspend, exec_done, r};
    x.who = &a;
    x.wait = async ? NULL : &w;
    char xid[40], msg[300];
    enum rexec_stage stage = 0;
    rc = rexec_start(app->exec, &x, xid, sizeof xid, &stage, msg, sizeof msg);
    if (!rc || stage == REXEC_SPAWN) {
        audit_exec_clean(r, sid, xid, x.argv_json,
                         x.script_json ? json_string_value(x.script_json) : NULL);
    }
    if (rc) {
        rc = exec_refused(r, rc, stage, msg);
    } else if (async) {
        rc = req_reply_json(r, 202, json_pack("{s:s}", "exec_id", xid));
    }
out:
    free(argv);
    json_decref(body);
    return rc;
}

/* ---- POST /v1/sessions/{id}/exec/{xid}/kill {signal?: "TERM"|"KILL"|"INT", grace_ms?} ---- */

int api_exec_kill(struct req *r)
{
    const char *sid = req_param(r, "id");
    const char *xid = req_param(r, "xid");
    json_t *body = NULL;
    int rc = write_access_opt_body(r, &body);
    if (rc) {
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
    rc = req_app(r)->exec ? rexec_kill(req_app(r)->exec, sid, xid, sig, (int)grace) : ERR_NOT_FOUND;
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, ERR_NOT_FOUND, "no running exec %s in this session", xid);
    }
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

/* The common start of a files request: the caller's access (need), the checked path, and the
 * session's sandbox, acquired (the caller releases it with runner_release). */
static int files_acquire(struct req *r, int need, int allow_root, const char **path,
                         struct sbx **sbx)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    int rc = api_session_access(r, sid, need, NULL);
    if (rc) {
        return rc;
    }
    rc = file_path(r, path, allow_root);
    if (rc) {
        return rc;
    }
    if (!app->runner) {
        return req_fail(r, ERR_UNAVAILABLE, "the sandbox is not running");
    }
    rc = runner_acquire(app->runner, sid, sbx, NULL);
    return rc ? acquire_failed(r, rc) : 0;
}

int api_files_get(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    const char *path = NULL;
    struct sbx *sbx = NULL;
    int rc = files_acquire(r, AUTH_READ, 1, &path, &sbx);
    if (rc) {
        return rc;
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
    struct sbx *sbx = NULL;
    size_t n = 0;
    const char *data = req_body(r, &n);
    int rc = files_acquire(r, AUTH_WRITE, 0, &path, &sbx);
    if (rc) {
        return rc;
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
