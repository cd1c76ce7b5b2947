/*
 * test_store.c - the session store: seq numbering, group commit under concurrency, rollback
 * without gaps, LRU hibernation, migrations, the event shape, and the registry.
 */
#include "common/buf.h"
#include "common/err.h"
#include "storage/event.h"
#include "storage/migrate.h"
#include "storage/registry.h"
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
        struct sess *s = NULL;
        if (store_session_get(c->st, id, &s) || sess_append(s, "m", NULL, "{}", NULL)) {
            c->fails++;
        } else {
            c->counts[k]++;
        }
        sess_put(s);
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

TEST(registry_tokens)
{
    struct store *st = open_store(0);
    struct registry *r = store_registry(st);
    json_t *tok = NULL;
    ASSERT_EQ(registry_token_create(r, "token:alice", "Alice", "a@x", "user", 0, &tok), 0);
    const char *secret = json_string_value(json_object_get(tok, "token"));
    struct auth_info ai;
    ASSERT_EQ(registry_token_auth(r, secret, &ai), 0);
    ASSERT_STREQ(ai.user_id, "token:alice");
    ASSERT_STREQ(ai.name, "Alice");
    ASSERT_STREQ(ai.role, "user");
    ASSERT_EQ(registry_token_auth(r, "sk_wrong", &ai), ERR_AUTH);
    ASSERT_EQ(registry_token_create(r, "token:x", "X", "", "root", 0, &tok), ERR_INVALID);
    json_t *list = NULL;
    ASSERT_EQ(registry_token_list(r, "token:alice", &list), 0);
    ASSERT_EQ(json_array_size(json_object_get(list, "tokens")), 1);
    ASSERT(!json_object_get(json_array_get(json_object_get(list, "tokens"), 0), "token"));
    json_decref(list);
    ASSERT_EQ(registry_token_delete(r, ai.token_id, "token:bob"), ERR_NOT_FOUND);
    ASSERT_EQ(registry_token_delete(r, ai.token_id, "token:alice"), 0);
    ASSERT_EQ(registry_token_auth(r, secret, &ai), ERR_AUTH);
    json_decref(tok);
    /* Expired tokens are refused. */
    ASSERT_EQ(registry_token_create(r, "token:old", "", "", "user", 1, &tok), 0);
    ASSERT_EQ(registry_token_auth(r, json_string_value(json_object_get(tok, "token")), &ai),
              ERR_AUTH);
    json_decref(tok);
    store_close(st);
}

TEST(registry_sessions_paging_and_access)
{
    struct store *st = open_store(0);
    struct registry *r = store_registry(st);
    char id[16];
    for (int i = 0; i < 7; i++) {
        snprintf(id, sizeof(id), "p%d", i);
        struct session_new n = {
            .id = id, .visibility = i == 3 ? "private" : "org", .created_by = "token:owner"};
        ASSERT_EQ(registry_session_create(r, &n, NULL), 0);
    }
    struct session_new dup = {.id = "p0", .created_by = "x"};
    ASSERT_EQ(registry_session_create(r, &dup, NULL), ERR_CONFLICT);
    /* Page through as another user: 6 visible (p3 is private). */
    int seen = 0;
    char cursor[128] = "";
    for (int page = 0; page < 10; page++) {
        json_t *out = NULL;
        ASSERT_EQ(registry_session_list(r, "token:other", 0, 4, cursor[0] ? cursor : NULL, &out),
                  0);
        seen += (int)json_array_size(json_object_get(out, "sessions"));
        json_t *next = json_object_get(out, "next_cursor");
        int more = json_is_string(next);
        if (more) {
            snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        }
        json_decref(out);
        if (!more) {
            break;
        }
    }
    ASSERT_EQ(seen, 6);
    struct auth_info other = {.user_id = "token:other", .role = "user"};
    struct auth_info viewer = {.user_id = "token:v", .role = "viewer"};
    const char *role = NULL;
    ASSERT_EQ(registry_session_access(r, "p3", &other, &role), 0);
    ASSERT(role == NULL);
    ASSERT_EQ(registry_member_add(r, "p3", "token:other", "writer"), 0);
    ASSERT_EQ(registry_session_access(r, "p3", &other, &role), 0);
    ASSERT_STREQ(role, "writer");
    ASSERT_EQ(registry_session_access(r, "p1", &viewer, &role), 0);
    ASSERT_STREQ(role, "viewer");
    ASSERT_EQ(registry_session_set_state(r, "p1", "purged"), 0);
    ASSERT_EQ(registry_session_access(r, "p1", &other, &role), ERR_GONE);
    json_t *row = NULL;
    ASSERT_EQ(registry_session_get(r, "p1", &row), ERR_GONE);
    ASSERT_EQ(registry_session_get(r, "zz", &row), ERR_NOT_FOUND);
    int ins = 0;
    ASSERT_EQ(registry_kv_put_new(r, "slack:e1", "1", &ins), 0);
    ASSERT_EQ(ins, 1);
    ASSERT_EQ(registry_kv_put_new(r, "slack:e1", "1", &ins), 0);
    ASSERT_EQ(ins, 0);
    store_close(st);
}

static const struct test_case tests[] = {
    T(append_assigns_consecutive_seq),
    T(failed_op_leaves_no_gap),
    T(concurrent_writers_group_commit),
    T(on_event_hook_in_order_after_commit),
    T(lru_hibernates_and_reopens),
    T(lru_churn_many_threads_no_gap),
    T(unknown_and_bad_ids),
    T(migrates_v1_file_and_refuses_newer),
    T(event_shape),
    T(registry_tokens),
    T(registry_sessions_paging_and_access),
};
TEST_MAIN(tests)
