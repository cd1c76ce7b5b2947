/*
 * meta.h - the `meta` table of a session file (key/value): whether the session was ended
 * (DELETE ends it, a later prompt reopens it).
 *
 * Thread safety: as sess_tx / sess_rd (the session's lock is held).
 */
#ifndef SESSIOND_META_H
#define SESSIOND_META_H

struct sess_rd;
struct sess_tx;

/** *ended = 1 when the session was ended and not reopened since. */
int meta_ended(struct sess_rd *rd, int *ended);
/** Mark the session ended. */
int meta_set_ended(struct sess_tx *tx);
/** Reopen an ended session (a no-op when it is not ended). */
int meta_clear_ended(struct sess_tx *tx);

#endif
