/*
 * store.c - the session store: per-session SQLite files (open, close, quarantine), the LRU of
 * open sessions (hibernation), background closes and checkpoints, the lazy registry flusher.
 * The group commit is in commit.c, the stubs of hibernated sessions and the spool glue in
 * park.c, reads in read.c; what they share is in store_int.h.
 *
 * Threads and locks (take them in this order, never the reverse):
 *   st->lock  guards the hash table, the LRU and close lists, the checkpoint queue, refcounts
 *             and open counts.
 *   s->lock   the session actor lock: guards s->db, s->last_seq, the statement cache and
 *             everything written to the file. Held across a whole group commit.
 *   s->qlock  guards the pending-operation queue only (held for a few instructions).
 * A session is opened by the thread that inserted it into the table, while holding s->lock,
 * so a second getter simply blocks on s->lock until the open is done.
 *
 * Group commit (commit.c): sess_write() queues its operation, then takes s->lock. Whoever holds
 * s->lock takes every queued operation and commits them in one transaction; the others find their
 * operation done when they get the lock and return at once. seq is assigned inside the
 * transaction and restored if an operation or the commit fails, so there is never a gap.
 *
 * Life of an open session: in the table with refs > 0 (in use), or refs == 0 on the LRU list,
 * or `closing` (evicted beyond cfg.max_open, or idle for IDLE_CLOSE_MS) on the close list,
 * waiting for a close worker. A getter that finds a closing session not yet taken by a worker
 * takes it back (a "rescue", counted apart from hits); one taken by a worker is waited for
 * (closed_cond) and then opened anew. Closing is off the request path because it writes the
 * lazy registry columns (one registry transaction per batch of closes) and, when the session
 * wrote more than CLOSE_CKPT_PAGES to its WAL, checkpoints and truncates the WAL: the next
 * open replays the whole WAL to rebuild its index, a cost that grows with the WAL (the rest
 * of a wake-up is mostly SQLite's schema parse and statement preparation: bench/store_open
 * and perf).
 *
 * Locking: locking_mode=EXCLUSIVE (one connection per file is the design): the WAL index
 * lives in heap memory, no -shm file, no per-transaction file locks. Measured against the
 * normal mode with bench/store (same machine, same run): a commit costs 12.8 vs 20 us of CPU
 * and a wake-up far fewer syscalls (normal mode: ~36 fcntl and ~20 stat per operation when
 * spread over 1,000 sessions). The price: only this connection can checkpoint, so a WAL
 * checkpoint (CKPT_PAGES) runs inside a commit, under the session lock; no other process may
 * open a live session file (use store_session_backup / the export endpoint).
 * Tried and dropped: a background checkpointer on a second connection (normal locking mode).
 * Under continuous writes its PASSIVE checkpoint never catches up with the writer, so the WAL
 * never restarts, and the normal mode's locking cost more than the checkpoints it moved.
 */
#include "storage/store.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/event.h"
#include "storage/migrate.h"
#include "storage/registry.h"
#include "storage/spool.h"
#include "storage/sqlvfs.h"
#include "storage/storage_int.h"
#include "storage/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static unsigned hash_id(const char *id)
{
    return fnv1a(id) % HASH_SIZE;
}

/* ---- lists and the table (st->lock held) ---- */

static void list_remove(struct slist *l, struct sess *s)
{
    if (s->on != l) {
        return;
    }
    if (s->lru_prev) {
        s->lru_prev->lru_next = s->lru_next;
    } else {
        l->head = s->lru_next;
    }
    if (s->lru_next) {
        s->lru_next->lru_prev = s->lru_prev;
    } else {
        l->tail = s->lru_prev;
    }
    s->lru_prev = s->lru_next = NULL;
    s->on = NULL;
    l->len--;
}

static void list_push_front(struct slist *l, struct sess *s)
{
    s->lru_prev = NULL;
    s->lru_next = l->head;
    if (l->head) {
        l->head->lru_prev = s;
    }
    l->head = s;
    if (!l->tail) {
        l->tail = s;
    }
    s->on = l;
    l->len++;
}

static void table_remove(struct store *st, struct sess *s)
{
    struct sess **pp = &st->table[hash_id(s->id)];
    while (*pp && *pp != s) {
        pp = &(*pp)->hnext;
    }
    if (*pp) {
        *pp = s->hnext;
    }
    s->hnext = NULL;
    s->in_table = 0;
}

struct sess *store_table_find(struct store *st, const char *id)
{
    for (struct sess *s = st->table[hash_id(id)]; s; s = s->hnext) {
        if (strcmp(s->id, id) == 0) {
            return s;
        }
    }
    return NULL;
}

/* Mark an unreferenced session for closing and queue it for a worker. */
static void queue_close(struct store *st, struct sess *s)
{
    list_remove(&st->lru, s);
    s->closing = 1;
    st->nclosing++;
    list_push_front(&st->closeq, s);
}

/* ---- opening and closing one session file ---- */

static char *session_path(struct store *st, const char *id)
{
    return xasprintf("%s/%s.db", st->sessions_dir, id);
}

/* A file SQLite found damaged (or not a database at all): nothing a retry can fix. */
static int db_is_corrupt(sqlite3 *db)
{
    int ec = sqlite3_errcode(db) & 0xff;
    return ec == SQLITE_CORRUPT || ec == SQLITE_NOTADB;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        /* A corrupt file is logged once, by the open that quarantines it. */
        if (!db_is_corrupt(db)) {
            LOG_ERROR("store: %s: %s", sql, msg ? msg : sqlite3_errmsg(db));
        }
        sqlite3_free(msg);
        return ERR_DB;
    }
    return 0;
}

/* Idempotency records (client_request_id -> first answer) only need to outlive client
 * retries: drop those older than REQUEST_TTL_MS. Run when a session that wrote is closed with
 * a checkpoint (off the request path); the probe uses the index, so the common case (nothing
 * to prune) writes nothing. */
#define REQUEST_TTL_MS (24LL * 3600 * 1000)

static void prune_requests(sqlite3 *db)
{
    sqlite3_stmt *q = NULL;
    int64_t cutoff = clock_now_ms() - REQUEST_TTL_MS;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM requests WHERE created_at < ? LIMIT 1", -1, &q,
                           NULL) != SQLITE_OK) {
        return;
    }
    sqlite3_bind_int64(q, 1, cutoff);
    int old = sqlite3_step(q) == SQLITE_ROW;
    sqlite3_finalize(q);
    if (old && sqlite3_prepare_v2(db, "DELETE FROM requests WHERE created_at < ?", -1, &q, NULL) ==
                   SQLITE_OK) {
        sqlite3_bind_int64(q, 1, cutoff);
        sqlite3_step(q);
        sqlite3_finalize(q);
    }
}

/* The connection's wal hook (called after each commit, s->lock held): remember the WAL size
 * (the close worker checkpoints at close above CLOSE_CKPT_PAGES) and checkpoint above
 * CKPT_PAGES, as SQLite's autocheckpoint would. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct sess *s = arg;
    s->wal_pages = pages;
    /* What the page cache holds now: the store's sum is the memory the open files cost
     * (cache_size bounds each one; the sum is a metric, read without any session lock). */
    int cache = 0, hi = 0;
    if (sqlite3_db_status(db, SQLITE_DBSTATUS_CACHE_USED, &cache, &hi, 0) == SQLITE_OK) {
        __atomic_fetch_add(&s->st->stats.cache_bytes, (int64_t)(cache - s->cache_bytes),
                           __ATOMIC_RELAXED);
        s->cache_bytes = cache;
    }
    if (pages < CKPT_PAGES / 2) {
        s->presynced = 0;
    } else if (!s->presynced && s->st->syncer_started) {
        /* Half way to a checkpoint, have the syncer fdatasync the WAL now, outside the lock:
         * the checkpoint, which runs inside a commit under the session lock, then has only
         * the second half to sync (its fsyncs were the p99 tail of POST messages). */
        s->presynced = 1;
        struct store *st = s->st;
        const char *wal = sqlite3_filename_wal(sqlite3_db_filename(db, name));
        size_t n = strlen(wal) + 1;
        struct sync_req *q = xmalloc(sizeof(*q) + n);
        memcpy(q->path, wal, n);
        pthread_mutex_lock(&st->sync_lock);
        q->next = st->sync_head;
        st->sync_head = q;
        pthread_cond_signal(&st->sync_cond);
        pthread_mutex_unlock(&st->sync_lock);
    }
    if (pages >= CKPT_PAGES) {
        /* What SQLite's own autocheckpoint hook does (which this hook replaces). */
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        __atomic_fetch_add(&s->st->stats.checkpoints, 1, __ATOMIC_RELAXED);
    }
    return SQLITE_OK;
}

/* ---- quarantine: corrupt session files ---- */

/* Whether a session file of id was quarantined (<data_dir>/quarantine/<id>.db.<stamp>). Only
 * asked when the file is missing, so the directory read is off every common path. */
static int was_quarantined(struct store *st, const char *id)
{
    char *pat = xasprintf("%s/quarantine/%s.db.*", st->data_dir, id); /* ids hold no glob char */
    glob_t g;
    memset(&g, 0, sizeof(g));
    int found = glob(pat, GLOB_NOSORT, NULL, &g) == 0 && g.gl_pathc > 0;
    globfree(&g);
    free(pat);
    return found;
}

/* Move a corrupt session file away, to <data_dir>/quarantine/<id>.db.<UTC stamp> with its
 * -wal and -shm beside it under the same name (so `sqlite3 <file> .recover` sees the WAL), and
 * log it once. The session then answers ERR_CORRUPT (500 "storage", saying where the file went)
 * until an operator restores or purges it, instead of failing on every open or being recreated
 * empty. The -wal goes first: a stale WAL left next to a restored file would be replayed into
 * it. ERR_CORRUPT, or ERR_DB when the file could not be moved (it stays where it was). */
static int quarantine(struct store *st, const char *id, const char *path, const char *why)
{
    int64_t ms = clock_now_ms();
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char stamp[32] = "0";
    if (gmtime_r(&secs, &tm)) {
        strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", &tm);
    }
    char *dir = xasprintf("%s/quarantine", st->data_dir);
    char *dest = xasprintf("%s/%s.db.%s.%03dZ", dir, id, stamp, (int)(ms % 1000));
    int rc = ERR_CORRUPT;
    if (util_mkdir_p(dir, 0700) != 0) {
        goto fail;
    }
    static const char *const sidecars[] = {"-wal", "-shm"};
    for (size_t i = 0; i < sizeof(sidecars) / sizeof(sidecars[0]); i++) {
        char *from = xasprintf("%s%s", path, sidecars[i]);
        char *to = xasprintf("%s%s", dest, sidecars[i]);
        int bad = rename(from, to) != 0 && errno != ENOENT;
        free(from);
        free(to);
        if (bad) {
            goto fail;
        }
    }
    if (rename(path, dest) != 0) {
        goto fail;
    }
    __atomic_fetch_add(&st->stats.quarantined, 1, __ATOMIC_RELAXED);
    LOG_ERROR("store: session %s: its file is corrupt (%s); moved to %s: the session answers 500 "
              "storage until it is restored (docs/operations.md, \"Corrupt files\")",
              id, why, dest);
    goto out;
fail:
    LOG_ERROR("store: session %s: its file %s is corrupt (%s) and cannot be moved to %s: %s", id,
              path, why, dir, strerror(errno));
    rc = ERR_DB;
out:
    free(dir);
    free(dest);
    return rc;
}

/* Open s->db (s->lock held). create: make the file if missing. */
static int sess_open_db(struct sess *s, int create)
{
    struct store *st = s->st;
    char *path = s->is_spool ? xasprintf("%s/spool.db", st->data_dir) : session_path(st, s->id);
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int rc = 0;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);

    /* SQLite makes a new file 0644 (less the umask) and gives its -wal and -shm the file's
     * mode: the file is made 0600 first, so all three are private. Wake-ups (create 0) skip
     * the extra open. */
    if (create && util_file_private(path) != 0) {
        LOG_ERROR("store: cannot create %s: %s", path, strerror(errno));
        rc = ERR_IO;
        goto out;
    }
    if (sqlite3_open_v2(path, &db, flags, sqlvfs_name()) != SQLITE_OK) {
        if (!create && access(path, F_OK) != 0) {
            rc = !s->is_spool && was_quarantined(st, s->id) ? ERR_CORRUPT : ERR_NOT_FOUND;
        } else {
            LOG_ERROR("store: open %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
            rc = ERR_DB;
        }
        goto out;
    }
    /* Closing must be cheap (hibernation): the close worker decides about checkpoints. */
    sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    /* Keep the -wal file across close/open: creating and unlinking inodes on every
     * hibernate/reopen cycle dominated the cost of a reopen (measured with bench/store). */
    int one = 1;
    sqlite3_file_control(db, "main", SQLITE_FCNTL_PERSIST_WAL, &one);
    sqlite3_busy_timeout(db, 5000);
    /* One exec: each statement parsed separately was a visible share of a wake-up. The page
     * cache of a file holds its hot pages (the right edges of the append-only tables and
     * their indexes, the schema); beyond those it only follows the file as it grows, which is
     * memory every open session keeps (make soak: the largest part of the RSS growth). */
    char pragmas[200];
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; "
             "PRAGMA foreign_keys=ON; PRAGMA cache_size=-%d",
             st->cfg.durability_full ? "FULL" : "NORMAL", st->cfg.cache_kib);
    rc = exec_sql(db, pragmas);
    if (!rc) {
        rc = migrate_apply(db, s->is_spool ? migrations_spool : migrations_session, path);
    }
    if (rc) {
        goto out;
    }
    sqlite3_wal_hook(db, wal_hook, s);
    if (s->is_spool) {
        s->db = db;
        db = NULL;
        goto out;
    }
    /* The newest event by rowid: O(log n), where max(created_at) would scan the table. */
    if (sqlite3_prepare_v2(db, "SELECT seq, created_at FROM events ORDER BY seq DESC LIMIT 1", -1,
                           &q, NULL) != SQLITE_OK) {
        rc = ERR_DB;
        goto out;
    }
    int step = sqlite3_step(q);
    if (step == SQLITE_ROW) {
        s->last_seq = sqlite3_column_int64(q, 0);
        s->last_activity = sqlite3_column_int64(q, 1);
    } else if (step != SQLITE_DONE) {
        rc = ERR_DB;
        goto out;
    }
    s->flushed_seq = s->last_seq;
    s->flushed_activity = s->last_activity;
    s->db = db;
    db = NULL;
out:
    sqlite3_finalize(q);
    if (rc && db && db_is_corrupt(db)) {
        char why[128];
        snprintf(why, sizeof(why), "%s", sqlite3_errmsg(db));
        sqlite3_close(db);
        db = NULL;
        /* The spool holds acknowledged comments of many sessions: never moved aside; the
         * start refuses it instead (store_open). */
        rc = s->is_spool ? ERR_CORRUPT : quarantine(st, s->id, path, why);
    }
    if (db) {
        sqlite3_close(db);
    }
    free(path);
    return rc;
}

/* Close s->db. No other thread can reach the connection any more (refs == 0 and the session
 * is being closed, or it is doomed / failed to open). */
static void sess_close_db(struct sess *s)
{
    for (int i = 0; i < s->nstmts; i++) {
        sqlite3_finalize(s->stmts[i].stmt);
        free(s->stmts[i].sql);
    }
    free(s->stmts);
    s->stmts = NULL;
    s->nstmts = 0;
    if (s->db) {
        if (!s->doomed && s->wal_pages > CLOSE_CKPT_PAGES) {
            if (!s->is_spool) {
                prune_requests(s->db);
            }
            sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
            __atomic_fetch_add(&s->st->stats.checkpoints, 1, __ATOMIC_RELAXED);
        }
        sqlite3_close(s->db);
        s->db = NULL;
        __atomic_fetch_sub(&s->st->stats.cache_bytes, (int64_t)s->cache_bytes, __ATOMIC_RELAXED);
        s->cache_bytes = 0;
    }
}

static void sess_free(struct sess *s)
{
    if (s->stub) {
        pthread_mutex_lock(&s->st->lock);
        stub_drop_locked(s->st, s->stub);
        pthread_mutex_unlock(&s->st->lock);
    }
    buf_free(&s->batch);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->qlock);
    free(s);
}

/* Close and free a session nobody else can reach (doomed, failed open). */
static void sess_destroy(struct sess *s)
{
    pthread_mutex_lock(&s->lock);
    sess_close_db(s);
    pthread_mutex_unlock(&s->lock);
    sess_free(s);
}

static struct sess *sess_alloc(struct store *st, const char *id)
{
    struct sess *s = xcalloc(1, sizeof(*s));
    s->st = st;
    snprintf(s->id, sizeof(s->id), "%s", id);
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->qlock, NULL);
    buf_init(&s->batch, 0);
    return s;
}

static void flush_registry(struct store *st, struct sess **v, int n)
{
    struct registry_touch *t = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(*t));
    int64_t(*vals)[2] = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(*vals));
    int k = 0;
    for (int i = 0; i < n; i++) {
        struct sess *s = v[i];
        pthread_mutex_lock(&s->lock);
        if (s->db && !s->doomed &&
            (s->last_seq != s->flushed_seq || s->last_activity != s->flushed_activity)) {
            t[k] = (struct registry_touch){s->id, s->last_seq, s->last_activity};
            vals[k][0] = s->last_seq;
            vals[k][1] = s->last_activity;
            k++;
        }
        pthread_mutex_unlock(&s->lock);
    }
    if (k && registry_session_touch_many(st->reg, t, (size_t)k) == 0) {
        /* t[j] follows v[] in order: walk both to mark what was written. */
        int j = 0;
        for (int i = 0; i < n && j < k; i++) {
            if (t[j].id != v[i]->id) {
                continue;
            }
            pthread_mutex_lock(&v[i]->lock);
            v[i]->flushed_seq = vals[j][0];
            v[i]->flushed_activity = vals[j][1];
            pthread_mutex_unlock(&v[i]->lock);
            j++;
        }
    }
    free(vals);
    free(t);
}

/* Close up to CLOSE_BATCH sessions from the close list, oldest first: one registry
 * transaction for their lazy columns, then each file. st->lock held on entry and on return
 * (dropped meanwhile). Returns how many were closed. */
static int close_some_locked(struct store *st)
{
    struct sess *v[CLOSE_BATCH];
    struct stub *ks[CLOSE_BATCH];
    int keep[CLOSE_BATCH];
    int n = 0;
    while (n < CLOSE_BATCH && st->closeq.tail) {
        struct sess *s = st->closeq.tail;
        list_remove(&st->closeq, s);
        s->close_taken = 1;
        v[n++] = s;
    }
    if (!n) {
        return 0;
    }
    pthread_mutex_unlock(&st->lock);
    flush_registry(st, v, n);
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&v[i]->lock);
        ks[i] = stub_at_close(v[i], &keep[i]);
        sess_close_db(v[i]);
        pthread_mutex_unlock(&v[i]->lock);
    }
    pthread_mutex_lock(&st->lock);
    for (int i = 0; i < n; i++) {
        /* In the same critical section as the table removal: a getter waiting for the close
         * finds the stub when it opens the session anew. */
        if (ks[i] && keep[i]) {
            stub_insert_locked(st, ks[i]);
        } else if (ks[i]) {
            stub_drop_locked(st, ks[i]);
        }
        table_remove(st, v[i]);
        st->open_count--;
        st->nclosing--;
        st->stats.closes++;
    }
    pthread_cond_broadcast(&st->closed_cond);
    pthread_mutex_unlock(&st->lock);
    for (int i = 0; i < n; i++) {
        sess_free(v[i]);
    }
    pthread_mutex_lock(&st->lock);
    return n;
}

/* Evict unreferenced sessions beyond the cap (st->lock held): they go to the close list. */
static void evict_over_cap(struct store *st)
{
    int n = 0;
    while (st->open_count - st->nclosing > st->cfg.max_open && st->lru.tail) {
        queue_close(st, st->lru.tail);
        n++;
    }
    if (n) {
        pthread_cond_signal(&st->work_cond);
    }
}

/* The WAL pre-syncer. fdatasync through our own descriptor flushes the file's dirty pages
 * whoever wrote them. Closing that descriptor is safe: SQLite holds no POSIX lock on the -wal
 * file in exclusive locking mode (closing any descriptor of a file drops the process's locks
 * on it, the usual trap, which is why the database file itself is never opened here). */
static void *syncer_main(void *arg)
{
    struct store *st = arg;
    pthread_mutex_lock(&st->sync_lock);
    for (;;) {
        struct sync_req *q = st->sync_head;
        if (!q) {
            if (st->sync_stop) {
                break;
            }
            pthread_cond_wait(&st->sync_cond, &st->sync_lock);
            continue;
        }
        st->sync_head = q->next;
        pthread_mutex_unlock(&st->sync_lock);
        int fd = open(q->path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            fdatasync(fd);
            close(fd);
        }
        free(q);
        pthread_mutex_lock(&st->sync_lock);
    }
    pthread_mutex_unlock(&st->sync_lock);
    return NULL;
}

static void *worker_main(void *arg)
{
    struct store *st = arg;
    pthread_mutex_lock(&st->lock);
    for (;;) {
        if (close_some_locked(st)) {
            continue;
        }
        if (st->stopping) {
            break;
        }
        pthread_cond_wait(&st->work_cond, &st->lock);
    }
    pthread_mutex_unlock(&st->lock);
    return NULL;
}

/* The opener's open (or fold) failed with rc: unpublish the session (waiters holding refs
 * see open_rc) and put back or drop the stub k it took, if any. s->lock is not held. */
static void unpublish_failed(struct store *st, struct sess *s, struct stub *k, int rc)
{
    if (k) {
        stub_mark_taken(k);
    }
    pthread_mutex_lock(&st->lock);
    if (k && rc != ERR_NOT_FOUND && rc != ERR_CORRUPT) {
        stub_insert_locked(st, k); /* its parked rows wait for the next open */
    } else if (k) {
        /* The file is gone (or quarantined): no comment may be parked and acknowledged
         * for it any more; rows parked before stay in the spool. */
        stub_drop_locked(st, k);
    }
    if (s->in_table) {
        table_remove(st, s);
        st->open_count--;
    }
    int last = --s->refs == 0;
    pthread_mutex_unlock(&st->lock);
    if (last) {
        sess_destroy(s);
    }
}

int store_get_or_open(struct store *st, const char *id, int create, struct sess **out)
{
    struct sess *s = NULL;
    struct stub *k = NULL;
    int opener = 0;
    int rc = 0;

    *out = NULL;
    if (!util_valid_id(id)) {
        return ERR_INVALID;
    }
    pthread_mutex_lock(&st->lock);
    for (;;) {
        if (st->stopping) {
            pthread_mutex_unlock(&st->lock);
            return ERR_UNAVAILABLE;
        }
        s = store_table_find(st, id);
        if (!s || !s->closing) {
            break;
        }
        if (!s->close_taken) {
            /* Still open, waiting on the close list: take it back. */
            list_remove(&st->closeq, s);
            s->closing = 0;
            st->nclosing--;
            st->stats.rescues++;
            s->refs = 1;
            pthread_mutex_unlock(&st->lock);
            *out = s;
            return 0;
        }
        /* A worker is closing its file: wait, then open it anew. */
        pthread_cond_wait(&st->closed_cond, &st->lock);
    }
    if (s) {
        if (s->refs++ == 0) {
            list_remove(&st->lru, s);
        }
        st->stats.hits++;
    } else {
        s = sess_alloc(st, id);
        s->refs = 1;
        s->in_table = 1;
        unsigned h = hash_id(id);
        s->hnext = st->table[h];
        st->table[h] = s;
        st->open_count++;
        st->stats.opens++;
        /* Take the actor lock before anyone else can find the session: they wait for the open. */
        pthread_mutex_lock(&s->lock);
        opener = 1;
        /* Parked rows are folded in before anyone uses the session; from now on, writers find
         * the session in the table and no longer park. */
        k = stub_take(st, id);
        evict_over_cap(st);
        /* Backpressure: when the workers fall behind, whoever evicts closes too. */
        while (st->closeq.len > (st->nworkers ? CLOSE_BACKLOG : 0)) {
            if (!close_some_locked(st)) {
                break;
            }
        }
    }
    pthread_mutex_unlock(&st->lock);

    if (opener) {
        s->open_rc = sess_open_db(s, create);
        if (k && !s->open_rc) {
            s->open_rc = stub_fold(s, k);
        }
        rc = s->open_rc;
        if (k && !rc) {
            s->stub = k;
            k = NULL;
        }
        pthread_mutex_unlock(&s->lock);
        if (rc) {
            unpublish_failed(st, s, k, rc);
            return rc;
        }
    } else {
        pthread_mutex_lock(&s->lock);
        rc = s->open_rc;
        pthread_mutex_unlock(&s->lock);
        if (rc) {
            sess_put(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

void sess_put(struct sess *s)
{
    if (!s) {
        return;
    }
    struct store *st = s->st;
    int destroy = 0;
    pthread_mutex_lock(&st->lock);
    if (--s->refs == 0) {
        if (!s->in_table) {
            destroy = 1; /* doomed, or a failed open */
        } else {
            s->last_used_ms = clock_mono_ms();
            list_push_front(&st->lru, s);
            if (st->open_count - st->nclosing > st->cfg.max_open) {
                evict_over_cap(st); /* rescues can leave the LRU over its cap */
            }
        }
    }
    pthread_mutex_unlock(&st->lock);
    if (destroy) {
        sess_destroy(s);
    }
}

int store_session_create(struct store *st, const char *id)
{
    struct sess *s = NULL;
    int rc = store_get_or_open(st, id, 1, &s);
    sess_put(s);
    return rc;
}

int store_session_get(struct store *st, const char *id, struct sess **out)
{
    return store_get_or_open(st, id, 0, out);
}

int store_session_delete_file(struct store *st, const char *id)
{
    if (!util_valid_id(id)) {
        return ERR_INVALID;
    }
    struct sess *destroy = NULL;
    pthread_mutex_lock(&st->lock);
    struct stub *k = stub_take(st, id);
    struct sess *s;
    /* A worker closing the file right now: wait for it, the file must be closed first. */
    while ((s = store_table_find(st, id)) && s->closing && s->close_taken) {
        pthread_cond_wait(&st->closed_cond, &st->lock);
    }
    if (s) {
        if (s->closing) {
            list_remove(&st->closeq, s);
            s->closing = 0;
            st->nclosing--;
        }
        table_remove(st, s);
        st->open_count--;
        s->doomed = 1;
        if (s->refs == 0) {
            list_remove(&st->lru, s);
            destroy = s;
        }
    }
    pthread_mutex_unlock(&st->lock);
    if (destroy) {
        sess_destroy(destroy);
    }
    int rc = 0;
    if (k) {
        /* Its parked rows go with it (before the file: a crash in between leaves rows whose
         * session file is gone, which the next start drops). */
        stub_mark_taken(k);
        if (k->nrows && spool_delete(st->spool, k->rowids, k->nrows)) {
            rc = ERR_DB;
        }
        pthread_mutex_lock(&st->lock);
        stub_drop_locked(st, k);
        pthread_mutex_unlock(&st->lock);
    }
    static const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char *p = xasprintf("%s/%s.db%s", st->sessions_dir, id, suffix[i]);
        if (unlink(p) != 0 && errno != ENOENT) {
            rc = ERR_IO;
        }
        free(p);
    }
    return rc;
}

int store_session_backup(struct store *st, const char *id, const char *path)
{
    struct sess *s = NULL;
    sqlite3 *dst = NULL;
    sqlite3_backup *bk = NULL;
    int rc = store_session_get(st, id, &s);
    if (rc) {
        return rc;
    }
    if (util_file_private(path) != 0 ||
        sqlite3_open_v2(path, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK) {
        rc = ERR_IO;
        goto out;
    }
    pthread_mutex_lock(&s->lock);
    bk = sqlite3_backup_init(dst, "main", s->db, "main");
    if (!bk) {
        pthread_mutex_unlock(&s->lock);
        rc = ERR_DB;
        goto out;
    }
    /* Copy in steps, letting writers in between: changes made through s->db meanwhile are
     * carried into the copy by SQLite, so the result is one consistent snapshot. */
    for (;;) {
        int r = sqlite3_backup_step(bk, 256);
        if (r == SQLITE_DONE) {
            break;
        }
        if (r != SQLITE_OK && r != SQLITE_BUSY && r != SQLITE_LOCKED) {
            rc = ERR_DB;
            break;
        }
        pthread_mutex_unlock(&s->lock);
        pthread_mutex_lock(&s->lock);
    }
    if (sqlite3_backup_finish(bk) != SQLITE_OK && !rc) {
        rc = ERR_DB;
    }
    pthread_mutex_unlock(&s->lock);
    if (!rc) {
        /* A self-contained file: no WAL needed by whoever reads the copy. */
        sqlite3_exec(dst, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL);
    }
out:
    if (dst) {
        sqlite3_close(dst);
    }
    sess_put(s);
    return rc;
}

/* ---- the store ---- */

/* Flush lazy registry columns of open sessions (one registry transaction) and queue idle
 * ones for closing. Runs on the flusher thread. */
static void flush_pass(struct store *st, int64_t idle_ms)
{
    /* Collect referenced pointers under st->lock, work on them outside it. */
    struct sess **list = NULL;
    size_t n = 0, cap = 0;
    struct sess *victims = NULL;
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&st->lock);
    for (int h = 0; h < HASH_SIZE; h++) {
        for (struct sess *s = st->table[h]; s; s = s->hnext) {
            if (s->closing) {
                continue; /* its close writes its columns */
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                list = xrealloc(list, cap * sizeof(*list));
            }
            if (s->refs++ == 0) {
                list_remove(&st->lru, s);
            }
            list[n++] = s;
        }
    }
    pthread_mutex_unlock(&st->lock);
    for (size_t i = 0; i < n; i += CLOSE_BATCH) {
        size_t k = n - i < CLOSE_BATCH ? n - i : CLOSE_BATCH;
        flush_registry(st, list + i, (int)k);
    }
    pthread_mutex_lock(&st->lock);
    int queued = 0;
    for (size_t i = 0; i < n; i++) {
        struct sess *s = list[i];
        if (--s->refs == 0) {
            if (!s->in_table) {
                s->hnext = victims;
                victims = s;
            } else if (idle_ms > 0 && now - s->last_used_ms > idle_ms) {
                queue_close(st, s);
                queued++;
            } else {
                list_push_front(&st->lru, s);
            }
        }
    }
    if (queued) {
        pthread_cond_signal(&st->work_cond);
    }
    pthread_mutex_unlock(&st->lock);
    while (victims) {
        struct sess *next = victims->hnext;
        sess_destroy(victims);
        victims = next;
    }
    free(list);
}

static void *flusher_main(void *arg)
{
    struct store *st = arg;
    pthread_mutex_lock(&st->lock);
    while (!st->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += FLUSH_EVERY_MS / 1000;
        pthread_cond_timedwait(&st->stop_cond, &st->lock, &ts);
        if (st->stopping) {
            break;
        }
        pthread_mutex_unlock(&st->lock);
        flush_pass(st, IDLE_CLOSE_MS);
        stubs_flush(st, 1);
        pthread_mutex_lock(&st->lock);
    }
    pthread_mutex_unlock(&st->lock);
    return NULL;
}

static int spool_open(struct store *st)
{
    struct sess *sp = sess_alloc(st, "spool");
    sp->is_spool = 1;
    pthread_mutex_lock(&sp->lock);
    int rc = sess_open_db(sp, 1);
    pthread_mutex_unlock(&sp->lock);
    if (rc) {
        sess_free(sp);
        return rc;
    }
    st->spool = sp;
    return stubs_recover(st);
}

int store_open(const struct store_config *cfg, struct store **out)
{
    struct store *st = NULL;
    char *regpath = NULL;
    int rc = 0;
    *out = NULL;
    if (!cfg || !cfg->data_dir) {
        return ERR_INVALID;
    }
    st = xcalloc(1, sizeof(*st));
    st->cfg = *cfg;
    if (st->cfg.max_open <= 0) {
        st->cfg.max_open = 256;
    }
    if (st->cfg.cache_kib <= 0) {
        st->cfg.cache_kib = 64;
    }
    st->data_dir = xstrdup(cfg->data_dir);
    st->cfg.data_dir = st->data_dir;
    st->sessions_dir = xasprintf("%s/sessions", st->data_dir);
    pthread_mutex_init(&st->lock, NULL);
    pthread_cond_init(&st->stop_cond, NULL);
    pthread_cond_init(&st->work_cond, NULL);
    pthread_cond_init(&st->closed_cond, NULL);
    pthread_mutex_init(&st->sync_lock, NULL);
    pthread_cond_init(&st->sync_cond, NULL);
    if (util_mkdir_p(st->sessions_dir, 0700)) {
        LOG_ERROR("store: cannot create %s: %s", st->sessions_dir, strerror(errno));
        rc = ERR_IO;
        goto out;
    }
    /* Canonical once, so session paths need no symlink resolution at every open (sqlvfs.c). */
    char *real = realpath(st->sessions_dir, NULL);
    if (real) {
        free(st->sessions_dir);
        st->sessions_dir = real;
    }
    /* SQLite's memory statistics take one process-wide mutex on every allocation: with many
     * threads opening session files (schema parse, statement prepare) it was the hottest
     * futex of the spread benchmark. Only effective before SQLite initializes (the first
     * store_open of the process); later calls fail harmlessly. */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    regpath = xasprintf("%s/registry.db", st->data_dir);
    rc = registry_open(regpath, cfg->durability_full, &st->reg);
    if (rc == ERR_CORRUPT) {
        LOG_ERROR("store: %s is corrupt: refusing to start. Stop here, keep the file aside and "
                  "restore the last backup of it: docs/operations.md, \"Backups and restore\"",
                  regpath);
    }
    if (rc) {
        goto out;
    }
    if (pthread_create(&st->flusher, NULL, flusher_main, st) != 0) {
        rc = ERR_INTERNAL;
        goto out;
    }
    st->flusher_started = 1;
    st->syncer_started = pthread_create(&st->syncer, NULL, syncer_main, st) == 0;
    for (int i = 0; i < WORKERS; i++) {
        if (pthread_create(&st->workers[i], NULL, worker_main, st) != 0) {
            break; /* fewer workers: evicting threads close more themselves */
        }
        pthread_mutex_lock(&st->lock);
        st->nworkers++;
        pthread_mutex_unlock(&st->lock);
    }
    rc = spool_open(st);
    if (rc == ERR_CORRUPT) {
        LOG_ERROR("store: %s/spool.db is corrupt: refusing to start. Stop here, keep the file "
                  "aside and restore the last backup of it: docs/operations.md, \"Backups and "
                  "restore\"",
                  st->data_dir);
    } else if (rc) {
        LOG_ERROR("store: cannot open the spool %s/spool.db: %s", st->data_dir, err_str(rc));
    }
    if (rc) {
        goto out;
    }
    *out = st;
    st = NULL;
out:
    free(regpath);
    store_close(st);
    return rc;
}

void store_close(struct store *st)
{
    if (!st) {
        return;
    }
    pthread_mutex_lock(&st->lock);
    st->stopping = 1;
    pthread_cond_broadcast(&st->stop_cond);
    pthread_cond_broadcast(&st->work_cond);
    int nworkers = st->nworkers;
    pthread_mutex_unlock(&st->lock);
    if (st->flusher_started) {
        pthread_join(st->flusher, NULL);
    }
    /* The workers drain the checkpoint queue and the close list before they exit. */
    for (int i = 0; i < nworkers; i++) {
        pthread_join(st->workers[i], NULL);
    }
    pthread_mutex_lock(&st->lock);
    st->nworkers = 0;
    for (int h = 0; h < HASH_SIZE; h++) {
        for (struct sess *s = st->table[h]; s; s = s->hnext) {
            if (s->refs > 0) {
                LOG_WARN("store: session %s still referenced at close", s->id);
                s->refs = 0;
            }
            if (!s->closing) {
                queue_close(st, s);
            }
        }
    }
    while (close_some_locked(st)) {
    }
    pthread_mutex_unlock(&st->lock);
    stubs_close(st);
    if (st->spool) {
        sess_destroy(st->spool); /* its WAL is checkpointed at close like a session's */
        st->spool = NULL;
    }
    if (st->syncer_started) {
        pthread_mutex_lock(&st->sync_lock);
        st->sync_stop = 1;
        pthread_cond_signal(&st->sync_cond);
        pthread_mutex_unlock(&st->sync_lock);
        pthread_join(st->syncer, NULL);
    }
    while (st->sync_head) {
        struct sync_req *q = st->sync_head;
        st->sync_head = q->next;
        free(q);
    }
    pthread_cond_destroy(&st->sync_cond);
    pthread_mutex_destroy(&st->sync_lock);
    registry_close(st->reg);
    pthread_cond_destroy(&st->closed_cond);
    pthread_cond_destroy(&st->work_cond);
    pthread_cond_destroy(&st->stop_cond);
    pthread_mutex_destroy(&st->lock);
    free(st->sessions_dir);
    free(st->data_dir);
    free(st);
}

void store_drain(struct store *st)
{
    pthread_mutex_lock(&st->lock);
    while (st->nclosing > 0) {
        if (st->nworkers == 0) {
            close_some_locked(st);
            continue;
        }
        pthread_cond_signal(&st->work_cond);
        pthread_cond_wait(&st->closed_cond, &st->lock);
    }
    pthread_mutex_unlock(&st->lock);
}

struct registry *store_registry(struct store *st)
{
    return st->reg;
}

const char *store_data_dir(struct store *st)
{
    return st->data_dir;
}

void store_get_stats(struct store *st, struct store_stats *out)
{
    /* Field by field: the counters below are atomics, written without st->lock (a struct
     * copy read them plainly: a data race under TSan). */
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&st->lock);
    out->opens = st->stats.opens;
    out->hits = st->stats.hits;
    out->closes = st->stats.closes;
    out->rescues = st->stats.rescues;
    out->open_now = st->open_count;
    pthread_mutex_unlock(&st->lock);
    out->commits = __atomic_load_n(&st->stats.commits, __ATOMIC_RELAXED);
    out->ops = __atomic_load_n(&st->stats.ops, __ATOMIC_RELAXED);
    out->checkpoints = __atomic_load_n(&st->stats.checkpoints, __ATOMIC_RELAXED);
    out->parked = __atomic_load_n(&st->stats.parked, __ATOMIC_RELAXED);
    out->folds = __atomic_load_n(&st->stats.folds, __ATOMIC_RELAXED);
    out->folded = __atomic_load_n(&st->stats.folded, __ATOMIC_RELAXED);
    out->quarantined = __atomic_load_n(&st->stats.quarantined, __ATOMIC_RELAXED);
    out->cache_bytes = __atomic_load_n(&st->stats.cache_bytes, __ATOMIC_RELAXED);
}
