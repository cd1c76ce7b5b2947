/*
 * test_store.c - the session store: seq numbering, group commit under concurrency, rollback
 * without gaps, LRU hibernation, migrations and the event shape. The registry on its own is
 * tested in test_registry.c.
 */
#include "common/buf.h"
#include "common/err.h"
#include "storage/event.h"
#include "storage/migrate.h"
#include "storage/registry.h"
#include "storage/spool.h"
#include "storage/storage_int.h"
#include "storage/store.h"
#include "testlib.h"

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>

static char dir[256];

static struct store *open_store(int max_open)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-store.XXXXXX");
    ASSERT(mkdtemp(dir));
    struct store_config cfg = {.data_dir = dir, .max_open = max_open};
    struct store *st = NULL;
    ASSERT_EQ(store_open(&cfg, &st), 0);
    return st;
}

static void new_session(struct store *st, const char *id)
{
    struct session_new n = {.id = id, .title = "t", .visibility = "org", .created_by = "token:a"};
    ASSERT_EQ(registry_session_create(store_registry(st), &n, NULL), 0);
    ASSERT_EQ(store_session_create(st, id), 0);
}

static void check_seqs(struct store *st, const char *id, int64_t n)
{
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, id, &s), 0);
    ASSERT_EQ(sess_last_seq(s), n);
    struct buf b;
    buf_init(&b, 0);
    buf_putc(&b, '[');
    int count = 0;
    int64_t last = 0;
    ASSERT_EQ(sess_events(s, 0, 1000000, &b, &count, &last), 0);
    buf_putc(&b, ']');
    ASSERT_EQ(count, n);
    ASSERT_EQ(last, n);
    json_t *arr = json_loads(b.data, 0, NULL);
    ASSERT(arr);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        ASSERT_EQ(json_integer_value(json_object_get(json_array_get(arr, i), "seq")),
                  (long long)i + 1);
    }
    json_decref(arr);
    buf_free(&b);
    sess_put(s);
}

TEST(append_assigns_consecutive_seq)
{
    struct store *st = open_store(0);
    new_session(st, "s1");
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "s1", &s), 0);
    struct author a = {"token:alice", "Alice", "a@x"};
    for (int i = 1; i <= 50; i++) {
        int64_t seq = 0;
        ASSERT_EQ(sess_append(s, "message", &a, "{\"n\":1}", &seq), 0);
        ASSERT_EQ(seq, i);
    }
    sess_put(s);
    check_seqs(st, "s1", 50);
    store_close(st);
}

static int failing_op(struct sess_tx *tx, void *arg)
{
    (void)arg;
    int rc = sess_tx_append(tx, "x", NULL, NULL, NULL);
    ASSERT_EQ(rc, 0);
    return ERR_INVALID; /* after appending: the event must be rolled back */
}

TEST(failed_op_leaves_no_gap)
{
    struct store *st = open_store(0);
    new_session(st, "s1");
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "s1", &s), 0);
    ASSERT_EQ(sess_append(s, "a", NULL, NULL, NULL), 0);
    ASSERT_EQ(sess_write(s, failing_op, NULL), ERR_INVALID);
    int64_t seq = 0;
    ASSERT_EQ(sess_append(s, "b", NULL, NULL, &seq), 0);
    ASSERT_EQ(seq, 2);
    sess_put(s);
    check_seqs(st, "s1", 2);
    store_close(st);
}

struct worker {
    struct store *st;
    int n;
    int fails;
};

static void *writer(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        struct sess *s = NULL;
        if (store_session_get(w->st, "hot", &s) || sess_append(s, "m", NULL, "{}", NULL)) {
            w->fails++;
        }
        sess_put(s);
    }
    return NULL;
}

TEST(concurrent_writers_group_commit)
{
    struct store *st = open_store(0);
    new_session(st, "hot");
    pthread_t th[8];
    struct worker w[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct worker){st, 500, 0};
        pthread_create(&th[i], NULL, writer, &w[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(w[i].fails, 0);
    }
    check_seqs(st, "hot", 4000);
    struct store_stats stats;
    store_get_stats(st, &stats);
    ASSERT_EQ(stats.ops, 4000);
    ASSERT(stats.commits <= stats.ops);
    store_close(st);
}

static int64_t hook_last;
static int hook_calls;
static int hook_bad;

static void hook(void *ctx, const char *sid, int64_t seq, const char *json, size_t len)
{
    (void)ctx;
    (void)sid;
    if (seq != hook_last + 1 || len == 0 || json[0] != '{' || json[len - 1] != '}') {
        hook_bad++;
    }
    hook_last = seq;
    hook_calls++;
}

TEST(on_event_hook_in_order_after_commit)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-store.XXXXXX");
    ASSERT(mkdtemp(dir));
    struct store_config cfg = {.data_dir = dir, .on_event = hook};
    struct store *st = NULL;
    ASSERT_EQ(store_open(&cfg, &st), 0);
    new_session(st, "hot");
    pthread_t th[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){st, 250, 0};
        pthread_create(&th[i], NULL, writer, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    ASSERT_EQ(hook_calls, 1000);
    ASSERT_EQ(hook_bad, 0);
    store_close(st);
}

TEST(lru_hibernates_and_reopens)
{
    struct store *st = open_store(2);
    char id[16];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof(id), "s%d", i);
        new_session(st, id);
        struct sess *s = NULL;
        ASSERT_EQ(store_session_get(st, id, &s), 0);
        for (int j = 0; j <= i; j++) {
            ASSERT_EQ(sess_append(s, "m", NULL, NULL, NULL), 0);
        }
        sess_put(s);
    }
    store_drain(st); /* closes run on the store's workers */
    struct store_stats stats;
    store_get_stats(st, &stats);
    ASSERT(stats.open_now <= 2);
    ASSERT(stats.closes >= 4);
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof(id), "s%d", i);
        check_seqs(st, id, i + 1);
    }
    /* The lazy registry columns are flushed when a session hibernates. */
    json_t *row = NULL;
    ASSERT_EQ(registry_session_get(store_registry(st), "s0", &row), 0);
    ASSERT_EQ(json_integer_value(json_object_get(row, "last_seq")), 1);
    json_decref(row);
    store_close(st);
}

/* One event through the ordinary path (get, group commit, put). */
static int append_one(struct store *st, const char *id)
{
    struct sess *s = NULL;
    int rc = store_session_get(st, id, &s);
    if (!rc) {
        rc = sess_append(s, "m", NULL, "{}", NULL);
    }
    sess_put(s);
    return rc;
}

/* Many threads writing to more sessions than the cap: sessions are evicted, closed by the
 * workers, taken back while queued (rescues) and reopened while others write. Every session
 * must end with seq 1..N, no gap, no duplicate, no lost event. */
struct churn {
    struct store *st;
    unsigned seed;
    int n;
    int fails;
    int counts[24];
};

static void *churner(void *arg)
{
    struct churn *c = arg;
    char id[16];
    for (int i = 0; i < c->n; i++) {
        int k = (int)(rand_r(&c->seed) % 24);
        snprintf(id, sizeof(id), "c%d", k);
        if (append_one(c->st, id)) {
            c->fails++;
        } else {
            c->counts[k]++;
        }
    }
    return NULL;
}

TEST(lru_churn_many_threads_no_gap)
{
    struct store *st = open_store(3);
    char id[16];
    for (int k = 0; k < 24; k++) {
        snprintf(id, sizeof(id), "c%d", k);
        new_session(st, id);
    }
    pthread_t th[6];
    struct churn c[6];
    for (int i = 0; i < 6; i++) {
        c[i] = (struct churn){.st = st, .seed = (unsigned)i + 7, .n = 1500};
        pthread_create(&th[i], NULL, churner, &c[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
    }
    store_drain(st);
    struct store_stats stats;
    store_get_stats(st, &stats);
    ASSERT(stats.open_now <= 3);
    ASSERT(stats.opens > 24); /* it did churn */
    for (int k = 0; k < 24; k++) {
        int total = 0;
        for (int i = 0; i < 6; i++) {
            ASSERT_EQ(c[i].fails, 0);
            total += c[i].counts[k];
        }
        snprintf(id, sizeof(id), "c%d", k);
        check_seqs(st, id, total);
    }
    /* The registry's lazy columns of a closed session are written by its close. */
    store_drain(st);
    store_close(st);
    struct store *st2 = NULL;
    struct store_config cfg = {.data_dir = dir, .max_open = 3};
    ASSERT_EQ(store_open(&cfg, &st2), 0);
    json_t *row = NULL;
    ASSERT_EQ(registry_session_get(store_registry(st2), "c0", &row), 0);
    int total0 = 0;
    for (int i = 0; i < 6; i++) {
        total0 += c[i].counts[0];
    }
    ASSERT_EQ(json_integer_value(json_object_get(row, "last_seq")), total0);
    json_decref(row);
    store_close(st2);
}

/* ---- the spool: comments to hibernated sessions parked without waking them ---- */

static const struct author park_author = {"token:pat", "Pat", "pat@example.com"};

static int test_answer(struct buf *out, const struct spool_msg *m, int64_t seq)
{
    return buf_printf(out, "{\"message_id\":\"%s\",\"seq\":%lld}", m->message_id, (long long)seq);
}

/* Park one comment; returns parked (0/1), *seq its seq. */
static int park(struct store *st, const char *id, const char *mid, const char *crid, int64_t *seq)
{
    char data[128];
    snprintf(data, sizeof(data), "{\"message_id\":\"%s\",\"content\":\"hi\"}", mid);
    struct spool_msg m = {mid, "hi", 2, &park_author, data, crid, "token:park", "fp", test_answer};
    int parked = -1;
    ASSERT_EQ(store_park(st, id, &m, seq, &parked), 0);
    return parked;
}

struct count_args {
    const char *sql;
    int64_t n;
};

static int count_rd(sqlite3 *db, void *arg)
{
    struct count_args *a = arg;
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(db, a->sql, -1, &q, NULL) != SQLITE_OK) {
        return ERR_DB;
    }
    if (sqlite3_step(q) == SQLITE_ROW) {
        a->n = sqlite3_column_int64(q, 0);
    }
    sqlite3_finalize(q);
    return 0;
}

static int64_t count_rows(struct store *st, const char *id, const char *sql)
{
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, id, &s), 0);
    struct count_args a = {sql, -1};
    ASSERT_EQ(sess_read(s, count_rd, &a), 0);
    sess_put(s);
    return a.n;
}

TEST(spool_parks_and_folds)
{
    struct store *st = open_store(1);
    new_session(st, "pa");
    new_session(st, "pb"); /* cap 1: pa is evicted and closed */
    int64_t seq = 0;
    ASSERT_EQ(park(st, "pb", "m0", NULL, &seq), 0); /* open: not parked */
    store_drain(st);
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "pa", &s), 0);
    ASSERT_EQ(sess_append(s, "x", NULL, NULL, NULL), 0);
    sess_put(s);
    ASSERT_EQ(store_session_get(st, "pb", &s), 0); /* pa out again */
    sess_put(s);
    store_drain(st);
    ASSERT_EQ(park(st, "pa", "m1", NULL, &seq), 1);
    ASSERT_EQ(seq, 2);
    ASSERT_EQ(park(st, "pa", "m2", "r1", &seq), 1);
    ASSERT_EQ(seq, 3);
    /* The same client_request_id again: the store cannot answer it from memory, so it
     * declines (the caller wakes the session, whose requests table replays). */
    ASSERT_EQ(park(st, "pa", "m3", "r1", &seq), 0);
    ASSERT_EQ(park(st, "nope", "m4", NULL, &seq), 0); /* unknown session */
    struct store_stats stats;
    store_get_stats(st, &stats);
    ASSERT_EQ(stats.parked, 2);
    ASSERT_EQ(stats.folds, 0);
    check_seqs(st, "pa", 3); /* opening folds */
    store_get_stats(st, &stats);
    ASSERT_EQ(stats.folds, 1);
    ASSERT_EQ(stats.folded, 2);
    ASSERT_EQ(count_rows(st, "pa",
                         "SELECT count(*) FROM messages WHERE author_email="
                         "'pat@example.com'"),
              2);
    ASSERT_EQ(count_rows(st, "pa",
                         "SELECT count(*) FROM requests WHERE client_request_id='r1' "
                         "AND response_json LIKE '%\"seq\":3%'"),
              1);
    /* Hibernated again, the stub remembers r1 from the file. */
    ASSERT_EQ(store_session_get(st, "pb", &s), 0);
    sess_put(s);
    store_drain(st);
    ASSERT_EQ(park(st, "pa", "m5", "r1", &seq), 0);
    ASSERT_EQ(park(st, "pa", "m6", "r2", &seq), 1);
    ASSERT_EQ(seq, 4);
    /* A key is its user's own: another user's r1 is not a hit, it parks. */
    struct spool_msg other = {"m7", "hi",          2,     &park_author, "{\"message_id\":\"m7\"}",
                              "r1", "token:other", "fp2", test_answer};
    int parked = -1;
    ASSERT_EQ(store_park(st, "pa", &other, &seq, &parked), 0);
    ASSERT_EQ(parked, 1);
    ASSERT_EQ(seq, 5);
    check_seqs(st, "pa", 5); /* folds both users' records, each under its user */
    ASSERT_EQ(count_rows(st, "pa",
                         "SELECT count(*) FROM requests WHERE client_request_id='r1' AND "
                         "((user_id='token:park' AND fingerprint='fp') OR "
                         "(user_id='token:other' AND fingerprint='fp2'))"),
              2);
    store_close(st);
}

static int spool_count(const char *where)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/spool.db", dir);
    sqlite3 *db = NULL;
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM parked %s", where);
    sqlite3_stmt *q = NULL;
    ASSERT_EQ(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(q), SQLITE_ROW);
    int n = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return n;
}

static void spool_exec(const char *sql)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/spool.db", dir);
    sqlite3 *db = NULL;
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

TEST(spool_survives_restart_and_interrupted_folds)
{
    struct store *st = open_store(1);
    new_session(st, "ra");
    new_session(st, "rb");
    store_drain(st);
    int64_t seq = 0;
    for (int i = 0; i < 5; i++) {
        char mid[16];
        snprintf(mid, sizeof(mid), "m%d", i);
        ASSERT_EQ(park(st, "ra", mid, NULL, &seq), 1);
        ASSERT_EQ(seq, i + 1);
    }
    store_close(st); /* the rows stay parked: no fold at stop */
    ASSERT_EQ(spool_count("WHERE session_id='ra'"), 5);
    /* What a crash between a fold's commit and the spool delete leaves (a row whose seq is in
     * the file already), a row of a purged session, and a row with an impossible id. */
    spool_exec("INSERT INTO parked(session_id,seq,created_at,type,data_json,message_id,content) "
               "SELECT session_id,seq,created_at,type,data_json,message_id||'x',content FROM "
               "parked WHERE seq=1;"
               "INSERT INTO parked(session_id,seq,created_at,type,data_json,message_id,content) "
               "VALUES('gone',1,1,'message','{}','mg','c'),('../x',1,1,'message','{}','mh','c')");
    struct store_config cfg = {.data_dir = dir, .max_open = 1};
    ASSERT_EQ(store_open(&cfg, &st), 0); /* folds at start */
    check_seqs(st, "ra", 5);
    ASSERT_EQ(count_rows(st, "ra", "SELECT count(*) FROM messages"), 5);
    json_t *row = NULL;
    store_close(st);
    ASSERT_EQ(spool_count(""), 0); /* (the store holds spool.db exclusively while open) */
    ASSERT_EQ(store_open(&cfg, &st), 0);
    ASSERT_EQ(registry_session_get(store_registry(st), "ra", &row), 0);
    ASSERT_EQ(json_integer_value(json_object_get(row, "last_seq")), 5);
    json_decref(row);
    /* Purging a session with parked rows deletes them. */
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "ra", &s), 0); /* a stub needs a close by this process */
    sess_put(s);
    ASSERT_EQ(store_session_get(st, "rb", &s), 0); /* ra hibernates */
    sess_put(s);
    store_drain(st);
    ASSERT_EQ(park(st, "ra", "m9", NULL, &seq), 1);
    ASSERT_EQ(seq, 6);
    ASSERT_EQ(store_session_delete_file(st, "ra"), 0);
    ASSERT_EQ(park(st, "ra", "m10", NULL, &seq), 0);
    ASSERT_EQ(store_session_get(st, "ra", &s), ERR_NOT_FOUND);
    store_close(st);
    ASSERT_EQ(spool_count(""), 0);
}

/* Parkers and ordinary writers on more sessions than the cap, from many threads: every
 * session ends with seq 1..N, and on_event saw each session's events in seq order. */
static pthread_mutex_t mix_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t mix_last[24];
static int mix_bad;

static void mix_hook(void *ctx, const char *sid, int64_t seq, const char *json, size_t len)
{
    (void)ctx;
    (void)json;
    (void)len;
    int k = (int)strtol(sid + 1, NULL, 10);
    pthread_mutex_lock(&mix_lock);
    if (seq != mix_last[k] + 1) {
        mix_bad++;
    }
    mix_last[k] = seq;
    pthread_mutex_unlock(&mix_lock);
}

struct mixer {
    struct store *st;
    unsigned seed;
    int n, fails, parked;
    int counts[24];
};

static void *mixer_main(void *arg)
{
    struct mixer *c = arg;
    char id[16], mid[32];
    for (int i = 0; i < c->n; i++) {
        int k = (int)(rand_r(&c->seed) % 24);
        snprintf(id, sizeof(id), "x%d", k);
        snprintf(mid, sizeof(mid), "m%u-%d", c->seed, i);
        int64_t seq = 0;
        int parked = 0;
        char data[96];
        snprintf(data, sizeof(data), "{\"message_id\":\"%s\"}", mid);
        struct spool_msg m = {mid, "hi", 2, &park_author, data, NULL, NULL, NULL, NULL};
        if (rand_r(&c->seed) % 2 && store_park(c->st, id, &m, &seq, &parked)) {
            c->fails++;
            continue;
        }
        if (parked) {
            c->parked++;
            c->counts[k]++;
            continue;
        }
        if (append_one(c->st, id)) {
            c->fails++;
        } else {
            c->counts[k]++;
        }
    }
    return NULL;
}

TEST(spool_mixed_with_writers_no_gap)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-store.XXXXXX");
    ASSERT(mkdtemp(dir));
    struct store_config cfg = {.data_dir = dir, .max_open = 3, .on_event = mix_hook};
    struct store *st = NULL;
    ASSERT_EQ(store_open(&cfg, &st), 0);
    char id[16];
    for (int k = 0; k < 24; k++) {
        snprintf(id, sizeof(id), "x%d", k);
        new_session(st, id);
    }
    store_drain(st);
    pthread_t th[6];
    struct mixer c[6];
    for (int i = 0; i < 6; i++) {
        c[i] = (struct mixer){.st = st, .seed = (unsigned)i + 11, .n = 1500};
        pthread_create(&th[i], NULL, mixer_main, &c[i]);
    }
    int parked = 0;
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(c[i].fails, 0);
        parked += c[i].parked;
    }
    ASSERT(parked > 100); /* it did park */
    ASSERT_EQ(mix_bad, 0);
    for (int k = 0; k < 24; k++) {
        int total = 0;
        for (int i = 0; i < 6; i++) {
            total += c[i].counts[k];
        }
        snprintf(id, sizeof(id), "x%d", k);
        check_seqs(st, id, total);
        ASSERT_EQ(mix_last[k], total);
    }
    store_close(st);
    ASSERT_EQ(spool_count(""), 0);
}

TEST(unknown_and_bad_ids)
{
    struct store *st = open_store(0);
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "nope", &s), ERR_NOT_FOUND);
    ASSERT_EQ(store_session_get(st, "../x", &s), ERR_INVALID);
    ASSERT_EQ(store_session_get(st, "", &s), ERR_INVALID);
    char long_id[70];
    memset(long_id, 'a', 65);
    long_id[65] = 0;
    ASSERT_EQ(store_session_get(st, long_id, &s), ERR_INVALID);
    store_close(st);
}

TEST(migrates_v1_file_and_refuses_newer)
{
    struct store *st = open_store(0);
    char path[400];
    sqlite3 *db = NULL;
    /* A file written by the first schema only. */
    snprintf(path, sizeof(path), "%s/sessions/old.db", dir);
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, migrations_session[0].sql, NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "INSERT INTO events VALUES(1,'message','{\"x\":1}','token:a','A',1);"
                           "PRAGMA user_version=1",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "old", &s), 0);
    ASSERT_EQ(sess_last_seq(s), 1);
    int64_t seq = 0;
    ASSERT_EQ(sess_append(s, "m", NULL, NULL, &seq), 0);
    ASSERT_EQ(seq, 2);
    sess_put(s);
    store_close(st);
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL);
    ASSERT_EQ(sqlite3_step(q), SQLITE_ROW);
    ASSERT_EQ(sqlite3_column_int(q, 0), migrate_latest(migrations_session));
    sqlite3_finalize(q);
    /* From the future: refused. */
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=999", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    st = open_store(0);
    char newpath[400];
    snprintf(newpath, sizeof(newpath), "%s/sessions/old.db", dir);
    ASSERT_EQ(rename(path, newpath), 0);
    ASSERT_EQ(store_session_get(st, "old", &s), ERR_NEWER);
    store_close(st);
}

TEST(event_shape)
{
    struct buf b;
    buf_init(&b, 0);
    ASSERT_EQ(
        event_serialize(&b, 7, "message", 1795435200123LL, "token:a", "A \"q\"", "{\"k\":[1]}"), 0);
    ASSERT_STREQ(b.data, "{\"seq\":7,\"type\":\"message\",\"ts\":\"2026-11-23T12:00:00.123Z\","
                         "\"author\":{\"id\":\"token:a\",\"name\":\"A \\\"q\\\"\"},"
                         "\"data\":{\"k\":[1]}}");
    buf_reset(&b);
    ASSERT_EQ(event_serialize(&b, 1, "x", 0, NULL, NULL, NULL), 0);
    ASSERT_STREQ(b.data,
                 "{\"seq\":1,\"type\":\"x\",\"ts\":\"1970-01-01T00:00:00.000Z\",\"author\":null,"
                 "\"data\":{}}");
    buf_free(&b);
}

static const struct test_case tests[] = {
    T(append_assigns_consecutive_seq),
    T(failed_op_leaves_no_gap),
    T(concurrent_writers_group_commit),
    T(on_event_hook_in_order_after_commit),
    T(lru_hibernates_and_reopens),
    T(lru_churn_many_threads_no_gap),
    T(spool_parks_and_folds),
    T(spool_survives_restart_and_interrupted_folds),
    T(spool_mixed_with_writers_no_gap),
    T(unknown_and_bad_ids),
    T(migrates_v1_file_and_refuses_newer),
    T(event_shape),
};
TEST_MAIN(tests)
