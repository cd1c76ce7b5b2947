/*
 * runner_int.h - what the files of runner/ share and nobody else sees: the runner's state
 * (struct runner, the per-session struct rs, a prompt's struct run, the sandbox slots of
 * struct live) and the steps one file of the runner calls in another.
 *
 *   runner.c   the queue of jobs, the control thread, the public API (runner.h)
 *   start.c    starting a session's next prompt: pick, budget, agent, files, exec
 *   sandbox.c  starting a session's sandbox: the starter threads, warm-pool sandboxes
 *   slots.c    the sandbox caps: slots, eviction of idle sandboxes, parked starts
 *   output.c   agent output → events, with the output caps (output pump thread)
 *   finish.c   the end of a prompt: its final event, snapshot, the next kick
 *   filediff.c a prompt's jobs in order behind the diffs of its agent.file_changed events
 *   recover.c  the start-up recovery of prompts a crash left running
 *
 * Locking: r->lock guards the session table (struct rs), each rs, the job and start queues,
 * the slot accounting and the counters. A function whose name ends in _locked, and every
 * function of slots.c unless it says otherwise, expects r->lock held.
 */
#ifndef SESSIOND_RUNNER_INT_H
#define SESSIOND_RUNNER_INT_H

#include "agents/agents.h"
#include "common/buf.h"
#include "runner/runner.h"
#include "sandbox/sbx.h"
#include "storage/store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

struct agent_run;
struct cq_job;

#define BACKLOG_HIGH  (8u << 20) /* pause a sandbox's output above this many pending bytes */
#define BACKLOG_LOW   (2u << 20) /* and resume below this */
#define LINE_MAX_HOLD (1u << 20) /* longest JSON line held back across chunks */
#define SEQ_HELD_HIGH 64         /* pause a sandbox whose jobs wait behind this many (diffs) */
#define SEQ_HELD_LOW  16         /* and resume below this */

enum job_kind { JOB_KICK, JOB_ENDED, JOB_RECOVER };

#define EVENT_OVERHEAD 64 /* bytes an event costs in the file beyond its data (row, seq, type) */

#define NSTARTERS 4 /* concurrent background sandbox starts (a workspace fill takes seconds) */

struct rjob {
    enum job_kind kind;
    char sid[72];
    struct rjob *next;
};

struct run;

/* The ordered submission of a run's commit jobs (filediff.c). A file_changed event waits for
 * its file's diff, computed by a worker thread of the run in the sessiond-git helper; jobs the
 * run submits meanwhile queue behind it, so the session's events keep their order and its
 * final event follows every diff, while the pump thread never waits. Guarded by mu; lock
 * order: mu, then r->lock or the commit queue's lock (never mu under r->lock). */
struct seq_ent;
struct run_seq {
    pthread_mutex_t mu;
    struct seq_ent *head, *tail;
    int held;          /* entries queued (jobs and diffs) */
    int worker;        /* a worker thread is draining the queue */
    int diffs;         /* diffs queued this prompt (at most FILEDIFF_MAX) */
    size_t diff_bytes; /* diff text put in this prompt's events */
    int no_repo;       /* the session has no repository: file_changed carries no diff */
    int64_t busy_ms;   /* helper time of the prompt's diffs (its events wait for them) */
};

/* One session known to the runner. Guarded by r->lock. Never freed before runner_stop. */
struct rs {
    char id[72];
    struct sbx *sbx;
    int users; /* runner_acquire holders */
    int64_t last_used_ms;
    struct run *run; /* the prompt being started or running */
    int ended;       /* DELETEd: stop the sandbox once idle */
    int purge;       /* and delete its workspace */
    /* Sandboxes start off the control thread (a workspace fill from an image takes
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
    struct agent_run *ar; /* a named agent's CLI adapter (agents.h), or NULL */
    /* The session's secrets (runner_secrets), or NULL; set before the exec. red[0] (stdout)
     * and red[1] (stderr) scrub them from the raw output, pump thread only. */
    struct redact_set *secrets;
    struct redactor *red[2];
    struct run_seq seq;
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
    /* Background sandbox starts run on NSTARTERS long-lived threads (bubblewrap's
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

/* A start in the background. for_prompt: a failure is kept in x->start_err for
 * start_next to fail the waiting prompt with. The session is kicked at the end. */
struct starter {
    struct rs *x; /* a start of x's sandbox, or (x NULL) a sandbox for the warm pool: */
    int for_prompt;
    const struct sbx_spec *spec; /* create this one (the caller waits for done) */
    struct sbx **out;
    int rc, done;
    struct starter *next;
};

/* ---- runner.c ---- */

/** The runner's record of session sid, created on first use. r->lock held. */
struct rs *runneri_rs_get(struct runner *r, const char *sid);
/** Queue a job for the control thread and wake it. r->lock held. */
void runneri_push_job(struct runner *r, enum job_kind kind, const char *sid);
/** {"k1":v1,"k2":v2} (NULL keys or values left out). Caller frees. */
char *runneri_json_obj_str(const char *k1, const char *v1, const char *k2, const char *v2);
/** Run fn in a write transaction of session sid. */
int runneri_write_op(struct runner *r, const char *sid, sess_tx_fn fn, void *arg);
/** Append an event of its own to session sid; takes data (freed). */
int runneri_emit(struct runner *r, const char *sid, const char *type, char *data);
/** Stop x's sandbox if nobody uses it (sandbox.stopped {reason why}). r->lock NOT held. */
void runneri_stop_sandbox(struct runner *r, struct rs *x, const char *why);
/** Delete the workspace and private dir of a purged session, after runneri_stop_sandbox. */
void runneri_purge_files(struct runner *r, struct rs *x, const char *sid);

/* ---- start.c (control thread) ---- */

/** Start the session's next queued prompt, if it is idle and its sandbox is ready. */
void runneri_start_next(struct runner *r, const char *sid);

/* ---- sandbox.c ---- */

/** Ensure x has a live sandbox (r->lock NOT held). *ready_ms = start time or -1. */
int runneri_ensure_sandbox(struct runner *r, struct rs *x, struct sbx **out, int64_t *ready_ms);
/** The body of each starter thread (arg: the runner). */
void *runneri_starter_main(void *arg);
/** Queue a background start of x's sandbox. r->lock held. */
void runneri_queue_start_locked(struct runner *r, struct rs *x, int for_prompt);
/** The same, r->lock NOT held. */
void runneri_start_in_background(struct runner *r, struct rs *x, int for_prompt);
/** The warm pool's sandbox factory (repos_runner.make_sandbox); arg: the runner. */
int runneri_pool_factory(void *arg, const struct sbx_spec *spec, struct sbx **out);

/* ---- slots.c (r->lock held unless said otherwise) ---- */

void runneri_live_add(struct runner *r, struct sbx *s, const char *owner, int exempt);
/** The runner destroys s now: its slot is free at once. */
void runneri_live_gone(struct runner *r, const struct sbx *s);
/** Slots taken server-wide; *pool (may be NULL) = of which warm-pool sandboxes. */
int runneri_slots_server(struct runner *r, int *pool);
int runneri_slot_take(struct runner *r, struct rs *x, struct rs **victim, struct sbx **vsbx);
void runneri_slot_done(struct runner *r, struct rs *x, struct sbx *ns);
/** The sbx_spec on_end hook of every sandbox the runner creates (pump thread, lock NOT held). */
void runneri_sbx_ended(void *arg, struct sbx *s);
/** Load who x's sandbox counts against, once (r->lock NOT held). */
void runneri_load_owner(struct runner *r, struct rs *x);
/** A slot was freed or a sandbox became idle: requeue the oldest parked start in reach. */
void runneri_wake_parked(struct runner *r);
/** A background start found no slot: park it (r->lock NOT held). */
void runneri_park_start(struct runner *r, struct rs *x, int for_prompt);

/* ---- output.c (output pump thread) ---- */

/** The exec callbacks of a prompt's agent (ctx: the struct run). */
extern const struct sbx_exec_cb runneri_run_cb;
/** A protocol line of a CLI adapter (agent_run_new's on_line; ctx: the struct run). */
void runneri_adapter_line(void *ctx, enum agent_msg type, const char *json, size_t len);
/** Drop a reference to run; the last frees it. */
void runneri_run_unref(struct run *run);

/* ---- filediff.c (any thread) ---- */

/** Set up / tear down run->seq (start.c / the last unref). */
void runneri_seq_init(struct run *run);
void runneri_seq_free(struct run *run);
/** Submit a job of run to the commit queue, in order behind its pending diffs. */
void runneri_submit(struct run *run, struct cq_job *j);
/** An agent.file_changed event of run (d: its data, taken): queued for its diff when the run's
 * session has a repository and the prompt's diff bounds allow, else appended to *job at once
 * (created if NULL), with diff_omitted when a bound was reached. Pump thread. */
void runneri_file_changed(struct run *run, json_t *d, struct cq_job **job);
/** Entries waiting in run's queue (the pump pauses a sandbox whose queue grows). */
int runneri_seq_held(struct run *run);

/* ---- finish.c ---- */

/** Build and submit the final job of a run; takes the caller's reference. Any thread. */
void runneri_finish_run(struct run *run, const struct sbx_exit *st, const char *fail_reason);

/* ---- recover.c (control thread) ---- */

/** Fail the prompts a crash left running and kick every session with queued prompts. */
void runneri_recover(struct runner *r);

#endif
