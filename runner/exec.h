/*
 * exec.h - the exec pipeline: commands run in a session's sandbox on request (REST
 * POST /v1/sessions/{id}/exec), beside its prompts. One instance per server, created by the
 * server's composition after the runner and handed to whoever serves exec requests.
 *
 * An exec takes one of the session's exec slots (runner_exec_begin) and a use of its sandbox
 * (runner_acquire) until its exit is committed; its output becomes exec.output events (capped
 * at the sandbox's exec_output_cap), its start and end exec.started / exec.exited, all
 * through the runner's commit queue, in order. A synchronous exec also keeps its output in
 * memory for the answer; their number is bounded (max_sync) because of that.
 *
 * Threads: every function is thread safe. The waiter callbacks run on a commit worker (or in
 * rexec_start / rexec_abort_waiters on the caller's thread) and must not block.
 */
#ifndef SESSIOND_RUNNER_EXEC_H
#define SESSIOND_RUNNER_EXEC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct runner;
struct runner_exec;
struct author;
struct sbx_exit;
struct egress;

struct rexec_config {
    int64_t output_cap; /* bytes of output kept (and stored as events) per exec */
    int max_sync;       /* synchronous execs waiting for their command at once; >= 1 */
    /* Programs commands may not run (sandbox/blocked.h); borrowed, like the sandbox's. */
    const char *const *blocked_commands;
    size_t n_blocked_commands;
    /* The egress proxy commands reach the network through, with the session's repository's
     * egress list plus egress.default, read at each exec; NULL: no network. */
    struct egress *egress;
};

/** What a finished synchronous exec hands its waiter. Valid during the callback only. */
struct rexec_result {
    const char *xid;
    const char *out, *err; /* what the command wrote, up to the output cap */
    size_t out_len, err_len;
    const struct sbx_exit *st; /* NULL when aborted */
    int truncated;             /* the output cap cut the output */
    int aborted;               /* the server stops: the command was not waited for */
};

/** The waiter of a synchronous exec (the transport's pending request). */
struct rexec_waiter {
    /* Called once, with the exec's lock held, when the command is still running after
     * rexec_start launched it: the transport parks its request (it must not block). */
    void (*suspend)(void *arg);
    /* Called once with the result. suspended: suspend() was called before (the transport
     * resumes its request now); 0: called from rexec_start itself. */
    void (*done)(void *arg, const struct rexec_result *res, int suspended);
    void *arg;
};

/** A command to run. Strings are borrowed for the call. */
struct rexec_req {
    const char *sid;
    const char *const *argv; /* argv[0] is checked against blocked_commands */
    json_t *argv_json;       /* or script_json (a string): what exec.started records */
    json_t *script_json;
    const char *stdin_data;
    size_t stdin_len;
    int timeout_s;                   /* 0: the sandbox's default */
    const struct author *who;        /* exec.started's author (may be NULL) */
    const struct rexec_waiter *wait; /* NULL: asynchronous (answered at once) */
};

/** The stage at which rexec_start refused a command (how the transport answers). */
enum rexec_stage {
    REXEC_BLOCKED = 1, /* argv[0] is in blocked_commands (ERR_FORBIDDEN) */
    REXEC_SYNC_LIMIT,  /* max_sync synchronous execs are waiting (ERR_LIMIT) */
    REXEC_EXEC_LIMIT,  /* the session's exec slots are taken (ERR_LIMIT: retry soon) */
    REXEC_SANDBOX,     /* runner_acquire failed: the error is runner_acquire's */
    REXEC_SYNCING,     /* the workspace sync did not finish */
    REXEC_SPAWN,       /* the sandbox could not run it (exec.exited {error} is recorded) */
};

/** Create the pipeline over runner r (which must outlive it). *out: rexec_free(). */
int rexec_new(struct runner *r, const struct rexec_config *cfg, struct runner_exec **out);
/** Free it, after runner_stop (every exec has ended then). NULL is a no-op. */
void rexec_free(struct runner_exec *e);

/** Start a command in session sid's sandbox (started if needed; waits for a workspace sync in
 * progress). 0: running, xid (≥ 40 bytes) names it; a synchronous one reports to req->wait
 * (maybe before this returns). Else an err.h code, *stage and msg say why; xid is set from
 * REXEC_SPAWN on. */
int rexec_start(struct runner_exec *e, const struct rexec_req *req, char *xid, size_t xid_n,
                enum rexec_stage *stage, char *msg, size_t n);
/** Signal the running exec xid of session sid (sbx_exec_kill). ERR_NOT_FOUND if none. */
int rexec_kill(struct runner_exec *e, const char *sid, const char *xid, int sig, int grace_ms);
/** Shutdown: every suspended waiter gets done(aborted) now; the commands go on. */
void rexec_abort_waiters(struct runner_exec *e);

#endif
