/*
 * runner.h - the agent runner: per-session FIFO prompt queue, one prompt at a time, each run
 * by the agent command in the session's sandbox; the sandboxes of sessions (start on first
 * use, stop when idle); the streaming of agent output into events.
 *
 * The queue is the `prompts` table of each session file (state queued → running →
 * completed | failed | cancelled), so it survives restarts: at start the runner marks prompts
 * left `running` by a crash as failed and resumes the queues. Every state change of a prompt
 * row is committed in the same transaction as the event that reports it.
 *
 * Events: sandbox.waiting {reason "capacity"} (no sandbox slot: the prompt waits for one),
 * sandbox.starting/ready/stopped/failed, prompt.started, agent.output (merged text,
 * ≤16 KiB), agent.tool_call, agent.tool_result, agent.file_changed, agent.artifact,
 * agent.status, agent.done, agent.error, agent.truncated, message (role assistant, from the
 * agent's `done` summary), prompt.completed {exit_code, duration_ms,
 * time_to_first_token_ms}, prompt.failed {reason}, prompt.cancelled {reason}.
 * Protocol: docs/agent-protocol.md.
 *
 * Threads: every function is thread safe. One control thread starts prompts and sandboxes;
 * agent output is parsed on the output pump thread and committed by commitq workers.
 */
#ifndef SESSIOND_RUNNER_H
#define SESSIOND_RUNNER_H

#include <stdint.h>

struct runner;
struct redact_set;
struct store;
struct sbx;
struct sbx_backend;
struct outpump;
struct commitq;
struct author;
struct agents;
struct repos;
struct egress;

struct runner_config {
    /* The default agent: "shell" (default) | a name under agents/bundled | a path to an
     * executable | "COMMAND ARGS" (run with /bin/sh -c inside the sandbox). */
    const char *agent;
    int prompt_timeout_s;       /* default 5400 (90 min) */
    int cancel_grace_ms;        /* SIGTERM → SIGKILL; default 5000 */
    int shutdown_grace_s;       /* wait this long for running prompts on stop; default 10 */
    int64_t prompt_output_cap;  /* bytes of agent events stored per prompt; default 16 MiB */
    int64_t session_output_cap; /* the same over all prompts of a session; default 256 MiB */
    int max_sandboxes;          /* live sandboxes (sessions + warm pools); default 32 */
    int max_sandboxes_per_user; /* live session sandboxes per session creator; default 8 */
    int max_execs_per_session;  /* concurrent runner_exec_begin holders; default 8 */
    int idle_stop_s;            /* stop a sandbox idle this long; default 600 */
    int no_recover;             /* tests: skip the start-up scan of sessions */
    /* Named coding agents (agents.h): an agent name found here runs its CLI through
     * its adapter instead of as a command. NULL = none. */
    const struct agents *agents;
    /* The repository layer (workspaces, warm pool, syncs, per-prompt commits); it must
     * outlive the runner (repos_shutdown() before runner_stop(), repos_close() after). NULL =
     * none: sessions get empty workspaces. */
    struct repos *repos;
    /* The egress proxy command agents reach the network through (the session's repository's
     * egress list plus egress.default; CLI agents get theirs from agents). NULL: none. */
    struct egress *egress;
    /* The secrets of session sid (the server's vault): their values go into the environment
     * of its agent and execs, and every form of them is replaced by [REDACTED:NAME] in their
     * output before it becomes an event. *out: a new reference or NULL (none). Called on the
     * control thread and HTTP threads; may read the registry. NULL = no secrets. */
    int (*secrets)(void *ctx, const char *sid, const char *repo, struct redact_set **out);
    void *secrets_ctx;
};

/** "NAME=value" for each secret of set, appended to env[0..*n) (grown; NULL terminated).
 * The caller wipes and frees them with runner_env_free. */
void runner_env_add_secrets(char ***env, size_t *n, const struct redact_set *set);
/** Wipe and free a NULL-terminated env built with runner_env_add_secrets. NULL is a no-op. */
void runner_env_free(char **env);
/** The secrets of session sid (runner_config.secrets): *out a new reference or NULL. A failed
 * lookup is logged and gives none. */
void runner_secrets(struct runner *r, const char *sid, struct redact_set **out);

/** Start the runner (and its commit workers). be and pump must outlive it. *out:
 * runner_stop(). The start-up recovery runs in the background. */
int runner_start(struct store *st, struct sbx_backend *be, struct outpump *pump,
                 const struct runner_config *cfg, struct runner **out);
/** Stop: no new prompt starts; wait shutdown_grace_s for running ones, then cancel them
 * (reason "shutdown"); stop every sandbox; commit what is pending. NULL is a no-op. */
void runner_stop(struct runner *r);

/** A prompt was queued in session sid: start it if the session is idle. Never blocks. */
void runner_kick(struct runner *r, const char *sid);
/** Start the sandbox of session sid now, in the background (a session created with a
 * repository gets its workspace and sandbox before its first prompt; `sandbox.ready` reports
 * the path taken). Never blocks; a no-op if it has a sandbox or one is starting. */
void runner_prestart(struct runner *r, const char *sid);
/** Cancel prompt_id (queued: removed; running: SIGTERM, SIGKILL after the grace period), or
 * the running prompt when prompt_id is NULL. ERR_NOT_FOUND if there is no such unfinished
 * prompt. who (may be NULL) is recorded in the event. */
int runner_cancel(struct runner *r, const char *sid, const char *prompt_id,
                  const struct author *who);
/** The session ended (DELETE): cancel every queued and running prompt and stop its sandbox;
 * purge: also delete its workspace. */
void runner_session_ended(struct runner *r, const char *sid, int purge);

/** The session's sandbox, started if needed (sandbox.ready event). Counts as a use: the
 * sandbox is not stopped for idleness until runner_release(). *created_ms = start time in
 * ms, or -1 if it was already running. ERR_LIMIT when it must start but no slot is free (the
 * server's or the session creator's sandbox cap, with every counted sandbox in use); the
 * caller answers 429 and does not wait (a prompt's start waits instead: sandbox.waiting). */
int runner_acquire(struct runner *r, const char *sid, struct sbx **out, int64_t *created_ms);
void runner_release(struct runner *r, const char *sid);
/** Take one of the session's concurrent exec slots (max_execs_per_session): 0, or
 * ERR_LIMIT when all are taken. runner_exec_end() gives it back. */
int runner_exec_begin(struct runner *r, const char *sid);
void runner_exec_end(struct runner *r, const char *sid);
/** The commit queue (for exec output events). */
struct commitq *runner_commitq(struct runner *r);

/** Counters for /metrics and benchmarks. */
struct runner_stats {
    int sandboxes; /* live sandboxes */
    int running;   /* prompts running */
    uint64_t started, completed, failed, cancelled;
    int slots_used;            /* sandbox slots taken: live counted sandboxes + starts */
    int pool_sandboxes;        /* of which warm-pool sandboxes (no session yet) */
    int waiting;               /* prompt starts waiting for a slot now */
    uint64_t sandbox_refused;  /* runner_acquire answered ERR_LIMIT */
    uint64_t sandbox_waits;    /* prompt starts that had to wait for a slot */
    uint64_t sandbox_evicted;  /* idle sandboxes stopped to free a slot */
    uint64_t exec_refused;     /* runner_exec_begin answered ERR_LIMIT */
    uint64_t output_truncated; /* prompts whose output hit a cap */
};
void runner_get_stats(struct runner *r, struct runner_stats *out);

/** The repository layer the runner was given (NULL: none). */
struct repos *runner_repos(struct runner *r);

#endif
