/*
 * meta.h - the `meta` table of a session file (key/value): whether the session was ended
 * (DELETE ends it, a later prompt reopens it), the session's own agent, and the running total
 * of agent output stored (the budget of max_session_output_bytes).
 *
 * Thread safety: as sess_tx / sess_rd (the session's lock is held).
 */
#ifndef SESSIOND_META_H
#define SESSIOND_META_H

#include <stdint.h>

struct sess_rd;
struct sess_tx;

/** *ended = 1 when the session was ended and not reopened since. */
int meta_ended(struct sess_rd *rd, int *ended);
/** Mark the session ended. */
int meta_set_ended(struct sess_tx *tx);
/** Reopen an ended session (a no-op when it is not ended). */
int meta_clear_ended(struct sess_tx *tx);

/** The session's agent (meta 'agent'): *agent is the caller's to free, NULL when unset. */
int meta_agent(struct sess_rd *rd, char **agent);
/** Agent output bytes stored so far (0 when none). */
int meta_output_bytes(struct sess_rd *rd, int64_t *n);
/** Add n to the stored agent output bytes, in the transaction that ends a prompt. */
int meta_add_output_bytes(struct sess_tx *tx, int64_t n);

#endif
