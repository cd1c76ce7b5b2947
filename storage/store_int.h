/*
 * store_int.h - the session store's internals, shared by its files inside storage/ and by
 * nobody else: the structs of the store, of a session and of a stub, and the steps one file
 * calls in another.
 *   store.c   opening and closing session files, the table and the LRU, hibernation (the
 *             close workers, the flusher, the WAL pre-syncer), quarantine, store_open/close
 *   commit.c  the group commit: sess_write, the pending queue, seq assignment, on_event
 *   park.c    stubs of hibernated sessions: parking comments in the spool, folding them in,
 *             rebuilding the stubs from the spool at start
 *   read.c    reads under the session lock, the events pager
 * Locks and their order: see the comment at the top of store.c.
 */
#ifndef SESSIOND_STORE_INT_H
#define SESSIOND_STORE_INT_H

#include "common/buf.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>

#define HASH_SIZE      4096
#define IDLE_CLOSE_MS  60000
#define FLUSH_EVERY_MS 1000
#define WORKERS        2    /* close workers */
#define CLOSE_BATCH    64   /* sessions closed per registry transaction */
#define CLOSE_BACKLOG  128  /* beyond this, evicting threads close sessions themselves */
#ifndef CLOSE_CKPT_PAGES    /* -D for bench runs: a trade-off measured with bench/rest.sh */
#define CLOSE_CKPT_PAGES 24 /* ~100 KiB of WAL: checkpoint + truncate at close above this */
#endif
#define CKPT_PAGES 256 /* checkpoint of a live session WAL above this (in a commit) */
/* The spool (spool.h): hibernated sessions are remembered by a stub, up to STUB_MAX of them
 * (~100 bytes each); a write to a session without a stub wakes it. A stub's parked rows are
 * folded into its file when the session opens, or by the flusher once there are FOLD_ROWS of
 * them or the oldest is FOLD_AGE_MS old (at most FOLD_PER_PASS sessions a second). */
#define STUB_HASH     16384
#define STUB_MAX      100000
#define FOLD_ROWS     256
#define FOLD_AGE_MS   30000
#define FOLD_PER_PASS 256
/* client_request_ids remembered per stub (8 bytes each); a session whose file holds more (they
 * are kept 24 h) has every request with one wake it, which answers exactly. */
#define STUB_CRIDS     256
#define STUB_CRIDS_SQL "SELECT user_id, client_request_id FROM requests LIMIT 257"

struct pending {
    sess_tx_fn fn;
    void *arg;
    int rc;
    int done;
    struct pending *next;
};

struct sync_req {
    struct sync_req *next;
    char path[]; /* the -wal file to fdatasync */
};

struct stmt_slot {
    char *sql; /* owned copy of the SQL text, the cache key */
    sqlite3_stmt *stmt;
};

/* A published event inside the batch buffer. */
struct pub {
    int64_t seq;
    size_t off, len;
};

/* A read handle: the session whose lock the reader holds. */
struct sess_rd {
    struct sess *s;
};

struct sess_tx {
    struct sess_rd rd; /* the same session, for the typed reads inside a write */
    struct sess *s;
    int64_t now;
    struct buf *events; /* serialized events of the batch, back to back */
    struct pub *pubs;
    size_t npubs, cappubs;
};

/* What the store remembers of a hibernated session so that a comment can be parked in the
 * spool without opening its file (store_park). Taken out of the stub table by whoever opens
 * the session (it folds the parked rows first) and put back when the session closes. */
struct stub {
    char id[65];
    struct stub *hnext;   /* st->stubs chain; st->lock */
    int refs;             /* st->lock: parkers and the flusher holding it */
    int orphan;           /* st->lock: dropped while referenced; the last unref frees it */
    pthread_mutex_t lock; /* serializes the parkers of the session; guards what follows */
    int taken;            /* not in the stub table (the session is open, or the stub dropped):
                           * a parker that got it earlier must not park any more */
    int seq_unknown;      /* rebuilt from the spool after a restart: fold before any park */
    int64_t last_seq, last_activity; /* the session's, parked rows included */
    int64_t flushed_seq, flushed_activity;
    int64_t *rowids; /* its rows in the spool, in seq order */
    int nrows, caprows;
    int64_t oldest_ms; /* clock_mono_ms() of the first parked row */
    /* FNV-1a hashes of the client_request_ids in the file and in the parked rows: a request
     * whose id hashes to one of them (or any, when crids_unknown) wakes the session instead,
     * whose `requests` table then answers exactly. */
    uint64_t *crids;
    int ncrids, crids_unknown;
};

/* A doubly linked list of sessions through lru_prev/lru_next (the LRU or the close list; a
 * session is on at most one, s->on says which). */
struct slist {
    struct sess *head, *tail;
    int len;
};

struct sess {
    struct store *st;
    char id[65];
    int refs;                         /* guarded by st->lock */
    int in_table;                     /* guarded by st->lock */
    int doomed;                       /* delete requested: close when refs drop to 0 */
    int closing;                      /* st->lock: on st->closeq or being closed */
    int close_taken;                  /* st->lock: a worker is closing it */
    struct sess *hnext;               /* hash chain, st->lock */
    struct sess *lru_prev, *lru_next; /* st->lru or st->closeq, st->lock */
    struct slist *on;                 /* the list it is on, or NULL; st->lock */
    int64_t last_used_ms;             /* st->lock */
    struct stub *stub;                /* taken out of the stub table at open; s->lock */

    pthread_mutex_t lock; /* the actor lock */
    int is_spool;         /* the spool actor: spool.db, spool migrations, no events */
    sqlite3 *db;
    int open_rc;
    int wal_pages;   /* frames in the WAL after the last commit of this open (wal hook) */
    int cache_bytes; /* page cache of s->db at its last commit (wal hook); counted in st */
    int presynced;   /* the WAL was handed to the syncer since it last restarted */
    int64_t last_seq;
    int64_t last_activity;
    int64_t flushed_seq;
    int64_t flushed_activity;
    /* Prepared statements by SQL text. Never evicted while open: the set of distinct SQL
     * strings is fixed by the code (literals), and a caller may hold one across calls that
     * prepare others within the same operation. */
    struct stmt_slot *stmts;
    int nstmts;
    struct buf batch;

    pthread_mutex_t qlock;
    struct pending *qhead, *qtail;
};

struct store {
    char *data_dir;
    char *sessions_dir;
    struct store_config cfg;
    struct registry *reg;

    pthread_mutex_t lock;
    struct sess *table[HASH_SIZE];
    struct slist lru;    /* unreferenced open sessions; head = most recently released */
    struct slist closeq; /* evicted sessions waiting for a worker; head = newest */
    int open_count;      /* sessions in the table, closing ones included */
    int nclosing;        /* sessions with `closing` set */

    struct sess *spool;            /* the spool actor (spool.h); never in the table */
    struct stub *stubs[STUB_HASH]; /* hibernated sessions; st->lock */
    int nstubs;
    struct store_stats stats;

    pthread_t flusher;
    int flusher_started;
    pthread_t workers[WORKERS];
    /* The WAL pre-syncer (see wal_hook): a queue of -wal paths under its own leaf lock,
     * since the hook runs under a session lock and must not take st->lock. */
    pthread_t syncer;
    int syncer_started;
    pthread_mutex_t sync_lock;
    pthread_cond_t sync_cond;
    struct sync_req *sync_head;
    int sync_stop;
    int nworkers;
    int stopping;
    pthread_cond_t stop_cond;   /* wakes the flusher at close */
    pthread_cond_t work_cond;   /* wakes the workers */
    pthread_cond_t closed_cond; /* a batch of closes finished */
};

/* FNV-1a of an id: the session table and the stub table index by it. */
static inline unsigned fnv1a(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++) {
        h = (h ^ (unsigned char)*id) * 16777619u;
    }
    return h;
}

/* store.c */
/** The open session id in the table, or NULL (st->lock held). */
struct sess *store_table_find(struct store *st, const char *id);
/** Take a reference to session id, opening its file (create: a new one) if needed. */
int store_get_or_open(struct store *st, const char *id, int create, struct sess **out);

/* commit.c */
/** A prepared statement from the session's cache (s->lock held); see sess_tx_prepare. */
sqlite3_stmt *sess_stmt_cached(struct sess *s, const char *sql);

/* park.c */
struct stub *stub_take(struct store *st, const char *id);
void stub_mark_taken(struct stub *k);
void stub_drop_locked(struct store *st, struct stub *k);
void stub_insert_locked(struct store *st, struct stub *k);
struct stub *stub_at_close(struct sess *s, int *keep);
int stub_fold(struct sess *s, struct stub *k);
/** The stubs' share of the flusher's pass (fold: also fold sessions with many parked rows). */
void stubs_flush(struct store *st, int fold);
/** Rebuild stubs from rows left in the spool by the previous process and fold them. */
int stubs_recover(struct store *st);
/** Stop: wait for parkers, write the stubs' registry columns, free them. */
void stubs_close(struct store *st);

#endif
