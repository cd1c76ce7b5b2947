/*
 * participants.h - the `participants` table of a session file: who joined the session (created
 * it, was added, or connected), with when they joined and were last seen.
 *
 * Thread safety: as sess_tx / sess_rd (the session's lock is held).
 */
#ifndef SESSIOND_PARTICIPANTS_H
#define SESSIOND_PARTICIPANTS_H

#include <stdint.h>

struct sess_rd;
struct sess_tx;

/** A participant; strings borrowed (NULL = SQL NULL). */
struct participant_row {
    const char *user_id, *name, *email;
    int64_t joined_at; /* epoch ms, -1 when NULL */
    int64_t last_seen; /* epoch ms, -1 when NULL (never connected) */
};

/** Add user_id, joined now, unless already there (the session's creator). */
int participants_add_new(struct sess_tx *tx, const char *user_id, const char *name,
                         const char *email);
/** Add user_id, joined now; if already there, fill in its name/email where given (a member
 * added by the owner). */
int participants_upsert(struct sess_tx *tx, const char *user_id, const char *name,
                        const char *email);
/** user_id connected now: add it (joined and seen now) or refresh its name, email and
 * last_seen. */
int participants_join(struct sess_tx *tx, const char *user_id, const char *name, const char *email);
/** user_id was seen now (it disconnected); nothing when it is not a participant. */
int participants_seen(struct sess_tx *tx, const char *user_id);
/** Remove user_id; *removed (may be NULL) = whether there was a row. */
int participants_remove(struct sess_tx *tx, const char *user_id, int *removed);

/** Called for each row; valid during the call only. */
typedef int (*participants_row_fn)(void *ctx, const struct participant_row *p);
/** fn for every participant in joining order; fn's error stops the walk. */
int participants_list(struct sess_rd *rd, participants_row_fn fn, void *ctx);

#endif
