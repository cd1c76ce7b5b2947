/*
 * prompts.h - the `prompts` table of a session file and the prompt state machine. A prompt is
 * queued with its message, started by the runner, and ends completed, failed or cancelled:
 *
 *   (new) --queue--> queued --start--> running --finish--> completed | failed | cancelled
 *                    queued --fail---> failed      running --recover--> failed (restart)
 *                    queued --cancel-> cancelled
 *
 * Every change of a prompt's state goes through a function here, and each checks the state it
 * leaves in the same statement (a prompt cancelled meanwhile is not started). The strings of
 * the states are the ones stored in the file and shown in JSON (prompt_state_str).
 *
 * Thread safety: as sess_tx / sess_rd (the session's lock is held by whoever runs the
 * transaction or read function these are called from).
 */
#ifndef SESSIOND_PROMPTS_H
#define SESSIOND_PROMPTS_H

#include <stdint.h>

struct author;
struct sess_rd;
struct sess_tx;

enum prompt_state {
    PROMPT_QUEUED,
    PROMPT_RUNNING,
    PROMPT_COMPLETED,
    PROMPT_FAILED,
    PROMPT_CANCELLED,
};
#define PROMPT_NSTATES 5

/** "queued", "running", "completed", "failed", "cancelled" (static); NULL out of range. */
const char *prompt_state_str(enum prompt_state st);
/** The state named s: 0, or ERR_INVALID for an unknown name (or NULL). */
int prompt_state_parse(const char *s, enum prompt_state *out);
/** Whether the machine allows from -> to: 1 or 0. A terminal state goes nowhere. */
int prompt_transition_ok(enum prompt_state from, enum prompt_state to);
/** 1 for completed, failed and cancelled. */
int prompt_state_terminal(enum prompt_state st);

/** queue: insert prompt id for message_id, queued now, by a (its strings may be NULL). */
int prompts_queue(struct sess_tx *tx, const char *id, const char *message_id,
                  const struct author *a);
/** start: queued -> running, started_at now. ERR_NOT_FOUND when id is not queued (cancelled
 * meanwhile, or no such prompt). */
int prompts_start(struct sess_tx *tx, const char *id);
/** finish: running -> to (completed, failed or cancelled), finished_at now, with the agent's
 * exit code (exit_code NULL: none) and reason (may be NULL). ERR_INVALID for another to;
 * ERR_NOT_FOUND when id is not running. */
int prompts_finish(struct sess_tx *tx, const char *id, enum prompt_state to, const int *exit_code,
                   const char *reason);
/** fail: queued -> failed (it could not start), finished_at now. ERR_NOT_FOUND when id is
 * not queued. */
int prompts_fail(struct sess_tx *tx, const char *id, const char *reason);
/** cancel: queued -> cancelled, finished_at now. ERR_NOT_FOUND when id is not queued. */
int prompts_cancel(struct sess_tx *tx, const char *id, const char *reason);
/** cancel every queued prompt (the session ended); *n (may be NULL) gets how many. */
int prompts_cancel_queued(struct sess_tx *tx, const char *reason, int64_t *n);
/** Called by prompts_recover for each prompt it failed, inside the transaction. */
typedef int (*prompts_id_fn)(void *ctx, const char *id);
/** recover: every running prompt -> failed with reason (the server restarted while it ran);
 * fn (may be NULL) is called after each, and its error stops the recovery. */
int prompts_recover(struct sess_tx *tx, const char *reason, prompts_id_fn fn, void *ctx);

/** How many prompts are in state st. */
int prompts_count(struct sess_rd *rd, enum prompt_state st, int64_t *n);
/** How many prompts are queued or running. */
int prompts_count_unfinished(struct sess_rd *rd, int64_t *n);
/** fn for the id of each prompt in state st, oldest first; fn's error stops the walk. */
int prompts_each(struct sess_rd *rd, enum prompt_state st, prompts_id_fn fn, void *ctx);
/** A prompt with what it asks (its message). Strings owned: prompt_info_free(). */
struct prompt_info {
    char *id, *message_id;
    char *author_id, *author_name, *author_email; /* the prompt's, else its message's */
    char *content, *context_json;                 /* of its message (NULL if it has none) */
};
/** The oldest queued prompt (what the runner starts next): 0, or ERR_NOT_FOUND. */
int prompts_next(struct sess_rd *rd, struct prompt_info *out);
/** Prompt id with its message: 0, or ERR_NOT_FOUND. */
int prompts_get(struct sess_rd *rd, const char *id, struct prompt_info *out);
/** Free the strings of p (not p). NULL is a no-op. */
void prompt_info_free(struct prompt_info *p);

/** The state of prompt id: 0, or ERR_NOT_FOUND. */
int prompts_state(struct sess_rd *rd, const char *id, enum prompt_state *out);

#endif
