/*
 * messages.h - the `messages` table of a session file: what people and agents said, each row
 * tied to the seq of its `message` event.
 *
 * Thread safety: as sess_tx / sess_rd (the session's lock is held).
 */
#ifndef SESSIOND_MESSAGES_H
#define SESSIOND_MESSAGES_H

#include <stddef.h>
#include <stdint.h>

struct author;
struct sess_rd;
struct sess_tx;

/** A message; strings borrowed (NULL = SQL NULL). */
struct message_row {
    const char *id;
    const char *role; /* "user" | "assistant" */
    const char *content;
    size_t content_len;
    const char *author_id, *author_name, *author_email;
    const char *context_json; /* the client's context object, serialized */
    int64_t seq;              /* of its `message` event */
    int64_t created_at;       /* epoch ms (messages_insert: the transaction's time) */
};

/** Insert m (created_at is the transaction's time; m->created_at is ignored). */
int messages_insert(struct sess_tx *tx, const struct message_row *m);

/** Called for each row; the row's strings are valid during the call only. */
typedef int (*messages_row_fn)(void *ctx, const struct message_row *m);
/** fn for the messages with seq > after, in seq order, at most limit; fn's error stops. */
int messages_list(struct sess_rd *rd, int64_t after, int64_t limit, messages_row_fn fn, void *ctx);
/** How many messages the session has. */
int messages_count(struct sess_rd *rd, int64_t *n);

#endif
