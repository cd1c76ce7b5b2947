/*
 * spool.h - the SQL of the spool: comments written to hibernated sessions, parked in one shared
 * file (<data_dir>/spool.db, table `parked`) so that such a write does not wake the session
 * file, then folded into that file when the session next opens (store.c decides when).
 *
 * Why: waking a session file costs ~400 us of CPU (open, WAL recovery, schema parse,
 * statements, close: bench/store_open), so writes spread over more sessions than the
 * open-session cap were bound by wake-ups. A parked write is one row appended to a file that
 * stays open and is group-committed like any session (DESIGN-NOTES.md "The spool").
 *
 * The spool is itself a struct sess (store.c opens it with the spool migrations and keeps it
 * out of the LRU): inserts run inside its group commit (spool_tx_insert from a sess_tx_fn),
 * reads and deletes go through sess_read / sess_write. The parked table has no index: the
 * store remembers the rowids of each session's rows, so every insert appends to the last page.
 * Thread safety: as sess_*; spool_apply runs on a session connection its caller owns.
 */
#ifndef SESSIOND_SPOOL_H
#define SESSIOND_SPOOL_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

struct author;
struct buf;
struct sess;
struct sess_tx;

/** A comment (a message with run:false) to park. Borrowed strings. */
struct spool_msg {
    const char *message_id;
    const char *content;
    size_t content_len;
    const struct author *author;  /* author->id required */
    const char *event_data;       /* the `message` event's data, a JSON object */
    const char *crid;             /* client_request_id or NULL */
    const char *crid_user;        /* with a crid: the token's user id (the key is theirs) */
    const char *crid_fingerprint; /* with a crid: the request's fingerprint (requests.h) */
    /* With a crid: writes the answer stored for idempotent replays, given the seq. */
    int (*answer)(struct buf *out, const struct spool_msg *m, int64_t seq);
};

/** A parked row read back. Owned strings (spool_rows_free). */
struct spool_row {
    int64_t rowid, seq, created_at;
    char *session_id, *type, *data_json, *author_id, *author_name, *author_email;
    char *message_id, *content, *crid, *response_json;
    char *crid_user, *crid_fingerprint; /* NULL in rows parked before they existed */
};

/** Inside a transaction of the spool: append one parked row; *rowid gets its rowid. */
int spool_tx_insert(struct sess_tx *tx, const char *session_id, int64_t seq,
                    const struct spool_msg *m, int64_t *rowid);
/** Read the rows with these rowids (missing ones are skipped), in seq order. *out owned by the
 * caller (spool_rows_free), *nout rows. */
int spool_fetch(struct sess *spool, const int64_t *rowids, int n, struct spool_row **out,
                int *nout);
/** Every row's (rowid, session_id, seq), in rowid order: recovery after a restart. */
typedef void (*spool_scan_fn)(void *ctx, int64_t rowid, const char *session_id, int64_t seq);
int spool_scan(struct sess *spool, spool_scan_fn fn, void *ctx);
/** Delete the rows with these rowids in one transaction. */
int spool_delete(struct sess *spool, const int64_t *rowids, int n);
void spool_rows_free(struct spool_row *rows, int n);

/** Fold rows (seq order) into a session file through its connection db, in one transaction:
 * each row with seq > last_seq becomes its `events`, `messages` and (with a crid) `requests`
 * rows (keyed by the row's crid_user, '' for an old row without one); rows at or below last_seq are
 * already there (a fold interrupted by a crash) and are skipped. *new_last / *new_ts get the
 * highest seq and its created_at (unchanged if none). */
int spool_apply(sqlite3 *db, const struct spool_row *rows, int n, int64_t last_seq,
                int64_t *new_last, int64_t *new_ts);

#endif
