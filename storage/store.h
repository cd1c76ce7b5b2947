/*
 * store.h - the session store: registry.db plus one SQLite file per session, opened on demand
 * and kept in an LRU of open sessions (hibernation).
 *
 * Layout: <data_dir>/registry.db, <data_dir>/sessions/<id>.db.
 *
 * Threads: every function here is thread safe. A struct sess is a counted reference obtained
 * with store_session_get() and given back with sess_put(); while held, the session stays open.
 * Do not hold one across long waits (a WebSocket client keeps only the id): the LRU closes
 * unreferenced sessions beyond the cap and reopens them transparently on the next get.
 *
 * Writes (the session actor): all writes to one session go through its lock and its own
 * sqlite3* connection. sess_write() enqueues an operation; whichever writer holds the lock
 * commits every pending operation in one transaction (group commit), each inside its own
 * SAVEPOINT, and assigns event seq numbers inside it. An operation that fails is rolled back
 * alone and leaves no gap in seq. sess_write() returns after the commit, so a caller that
 * answers 2xx afterwards has acknowledged a durable write. Committed events are handed, in
 * seq order, to the on_event hook (still under the session lock) before sess_write returns.
 */
#ifndef SESSIOND_STORE_H
#define SESSIOND_STORE_H

#include <stddef.h>
#include <stdint.h>

struct buf;
struct registry;
struct store;
struct sess;
struct sess_tx;
struct sess_rd;

/** Called for each committed event of any session, in seq order per session, under that
 * session's lock: it must be quick and must not call back into the store. json is the
 * serialized event (event.h), valid only during the call. */
typedef void (*store_event_fn)(void *ctx, const char *session_id, int64_t seq, const char *json,
                               size_t len);

struct store_config {
    const char *data_dir;    /* required; created if missing */
    int durability_full;     /* 1: synchronous=FULL (power-loss safe); 0: NORMAL */
    int max_open;            /* LRU cap on open session files; 0 = 256 */
    int no_spool;            /* 1: store_park never parks (every write wakes its session) */
    int cache_kib;           /* SQLite page cache of each open session file; 0 = 64 KiB */
    store_event_fn on_event; /* may be NULL */
    void *on_event_ctx;
};

/** Who wrote something. Borrowed strings; id NULL means "the system". */
struct author {
    const char *id; /* "token:alice", "slack:U123" */
    const char *name;
    const char *email;
};

/** Open (create, migrate) the store. *out owned by the caller: store_close(). */
int store_open(const struct store_config *cfg, struct store **out);
/** Flush lazy registry columns, close every session file and the registry. NULL is a no-op.
 * No other thread may use the store any more. */
void store_close(struct store *st);
/** The registry (owned by the store; thread safe). */
struct registry *store_registry(struct store *st);
const char *store_data_dir(struct store *st);

/** Create the session file for a new id (the caller has created the registry row). */
int store_session_create(struct store *st, const char *id);
/** Get a reference to an existing session, opening its file if it is hibernated.
 * ERR_NOT_FOUND if there is no such file, ERR_INVALID for a malformed id. */
int store_session_get(struct store *st, const char *id, struct sess **out);
/** Close (if open) and delete a session's file(s). The caller holds no reference to it. */
int store_session_delete_file(struct store *st, const char *id);
/** Write a consistent copy of the session file to path (sqlite3_backup). */
int store_session_backup(struct store *st, const char *id, const char *path);

/** Wait until every session queued for closing is closed (tests, benchmarks, shutdown
 * paths that must see the registry columns written). */
void store_drain(struct store *st);

/** Counters for /metrics and the LRU benchmark. */
struct store_stats {
    uint64_t opens;       /* session files opened (misses) */
    uint64_t hits;        /* gets served by an already open session */
    uint64_t closes;      /* hibernations */
    uint64_t rescues;     /* gets of a session evicted but not yet closed (taken back) */
    uint64_t parked;      /* comments parked in the spool (no wake-up) */
    uint64_t folds;       /* sessions that folded parked rows into their file */
    uint64_t folded;      /* rows folded */
    uint64_t checkpoints; /* WAL checkpoints (background, at close, or inline) */
    uint64_t commits;     /* group-commit transactions */
    uint64_t ops;         /* operations committed */
    uint64_t quarantined; /* corrupt session files moved to <data_dir>/quarantine/ */
    int64_t cache_bytes;  /* SQLite page cache of the open session files (at their last commit) */
    int open_now;
};
void store_get_stats(struct store *st, struct store_stats *out);

struct spool_msg;
/** Write a comment (a message with run:false, see spool.h) to a hibernated session without
 * waking it: when the store remembers the session (it was closed by this process) and the
 * message's client_request_id (if any) is certainly new to it, the event is appended to the
 * spool in its group commit, with the session's next seq, and handed to on_event; *parked = 1
 * and *seq_out gets the seq. Otherwise (*parked = 0, returns 0) the caller writes through
 * store_session_get + sess_write as usual, which folds the parked rows into the file first.
 * Returns ERR_DB if the spool commit failed (nothing written). */
int store_park(struct store *st, const char *id, const struct spool_msg *m, int64_t *seq_out,
               int *parked);

/** Give back a reference. NULL is a no-op. */
void sess_put(struct sess *s);
const char *sess_id(const struct sess *s);
/** Highest committed seq (0 when the session has no event). */
int64_t sess_last_seq(struct sess *s);

/** An operation run inside a group-commit transaction; return 0 or a negative error. */
typedef int (*sess_tx_fn)(struct sess_tx *tx, void *arg);

/** Run fn in the session's next group commit and wait until it is committed.
 * Returns fn's error (its changes rolled back), ERR_DB if the commit failed, or 0. */
int sess_write(struct sess *s, sess_tx_fn fn, void *arg);
/** The transaction as a read handle: the typed reads of storage/ (prompts_count, ...) work
 * inside a write too. Valid until the operation returns. */
struct sess_rd *sess_tx_rd(struct sess_tx *tx);
/** The transaction's timestamp (epoch ms), the same for all its events. */
int64_t sess_tx_now(struct sess_tx *tx);
/** Append an event inside an operation; *seq_out (may be NULL) gets its seq.
 * data_json must be a serialized JSON object (NULL = {}). */
int sess_tx_append(struct sess_tx *tx, const char *type, const struct author *a,
                   const char *data_json, int64_t *seq_out);
/** Convenience: one event in its own operation. */
int sess_append(struct sess *s, const char *type, const struct author *a, const char *data_json,
                int64_t *seq_out);

/** A read under the session lock: fn gets a read handle for the typed reads of storage/
 * (messages_list, prompts_count, ...), valid during the call. Keep it short (page big reads).
 * ERR_UNAVAILABLE if the session is closed under the caller. */
typedef int (*sess_view_fn)(struct sess_rd *rd, void *arg);
int sess_view(struct sess *s, sess_view_fn fn, void *arg);
/** Inside a read: the highest seq in the events table (0 when there is none). */
int sess_rd_max_seq(struct sess_rd *rd, int64_t *out);

/** Append the serialized events with seq > after (at most limit, ordered) to out, separated
 * by commas (no brackets). *count gets how many, *last gets the last seq appended (or after). */
int sess_events(struct sess *s, int64_t after, int limit, struct buf *out, int *count,
                int64_t *last);

#endif
