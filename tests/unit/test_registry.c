/*
 * test_registry.c - registry.db (storage/registry.h) opened on its own, without the store:
 * tokens (secret shown once, only its hash on disk, expiry, revocation, bootstrap rotation),
 * the sessions index (paging, visibility, states, touch), access and members, the audit log
 * (paging with a cursor, filters, bad input), key/value, migrations (fresh file, old file,
 * refusal of a newer one, not a database) and use from many threads at once.
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/util.h"
#include "storage/migrate.h"
#include "storage/registry.h"
#include "testlib.h"

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>

static char dir[256];
static char path[320];

static struct registry *open_reg(void)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-registry.XXXXXX");
    ASSERT(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/registry.db", dir);
    struct registry *r = NULL;
    ASSERT_EQ(registry_open(path, 0, &r), 0);
    ASSERT(r != NULL);
    return r;
}

static void close_reg(struct registry *r)
{
    registry_close(r);
    registry_close(NULL);
    util_rm_rf(dir);
}

static int user_version(const char *p)
{
    sqlite3 *db = NULL;
    ASSERT_EQ(sqlite3_open(p, &db), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(q), SQLITE_ROW);
    int v = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

/* 1 if needle occurs anywhere in the file at p (a missing file has nothing). */
static int file_contains(const char *p, const char *needle)
{
    FILE *f = fopen(p, "rb");
    if (!f) {
        return 0;
    }
    size_t cap = 1 << 20, len = 0;
    char *b = malloc(cap);
    ASSERT(b);
    size_t r;
    while ((r = fread(b + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            cap *= 2;
            b = realloc(b, cap);
            ASSERT(b);
        }
    }
    fclose(f);
    int found = memmem(b, len, needle, strlen(needle)) != NULL;
    free(b);
    return found;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* ---- tokens ---- */

TEST(registry_tokens)
{
    struct registry *r = open_reg();
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
    close_reg(r);
}

/* The secret is returned once and never written: the file (and its WAL) hold only its
 * SHA-256, and no listing shows either. */
TEST(token_secret_is_never_stored_in_clear)
{
    struct registry *r = open_reg();
    json_t *tok = NULL;
    ASSERT_EQ(registry_token_create(r, "token:alice", "Alice", "", "user", 0, &tok), 0);
    char secret[128], hash[65];
    snprintf(secret, sizeof(secret), "%s", jstr(tok, "token"));
    ASSERT(strlen(secret) >= 32);
    util_sha256_hex(secret, strlen(secret), hash);
    char id1[40], id2[40];
    ASSERT_EQ(registry_token_ensure(r, "sk_bootstrap_secret_value_0123456789", "token:admin",
                                    "admin", id1),
              0);
    char wal[400];
    snprintf(wal, sizeof(wal), "%s-wal", path);
    ASSERT(file_contains(path, hash) || file_contains(wal, hash)); /* the search works */
    ASSERT(!file_contains(path, secret));
    ASSERT(!file_contains(wal, secret));
    ASSERT(!file_contains(path, "sk_bootstrap_secret_value_0123456789"));
    ASSERT(!file_contains(wal, "sk_bootstrap_secret_value_0123456789"));
    json_t *list = NULL;
    ASSERT_EQ(registry_token_list(r, NULL, &list), 0);
    char *dump = json_dumps(list, 0);
    ASSERT(!strstr(dump, secret));
    ASSERT(!strstr(dump, hash));
    ASSERT(!strstr(dump, "sk_bootstrap"));
    free(dump);
    ASSERT_EQ(json_array_size(json_object_get(list, "tokens")), 2);
    json_decref(list);
    /* Ensure with the same secret finds the same token (by its hash). */
    ASSERT_EQ(registry_token_ensure(r, "sk_bootstrap_secret_value_0123456789", "token:admin",
                                    "admin", id2),
              0);
    ASSERT_STREQ(id1, id2);
    json_decref(tok);
    close_reg(r);
}

TEST(token_create_refuses_bad_input_and_stores_nothing)
{
    struct registry *r = open_reg();
    json_t *tok = (json_t *)1;
    char longu[200];
    memset(longu, 'u', 151);
    longu[151] = 0;
    ASSERT_EQ(registry_token_create(r, "", "", "", "user", 0, &tok), ERR_INVALID);
    ASSERT(tok == NULL);
    ASSERT_EQ(registry_token_create(r, NULL, "", "", "user", 0, &tok), ERR_INVALID);
    ASSERT_EQ(registry_token_create(r, longu, "", "", "user", 0, &tok), ERR_INVALID);
    ASSERT_EQ(registry_token_create(r, "token:a", "", "", NULL, 0, &tok), ERR_INVALID);
    ASSERT_EQ(registry_token_create(r, "token:a", "", "", "Admin", 0, &tok), ERR_INVALID);
    json_t *list = NULL;
    ASSERT_EQ(registry_token_list(r, NULL, &list), 0);
    ASSERT_EQ(json_array_size(json_object_get(list, "tokens")), 0);
    json_decref(list);
    /* Every valid role works and is what auth reports. */
    const char *roles[] = {"user", "viewer", "bot", "admin"};
    for (int i = 0; i < 4; i++) {
        ASSERT_EQ(registry_token_create(r, "token:a", NULL, NULL, roles[i], 0, &tok), 0);
        struct auth_info ai;
        ASSERT_EQ(registry_token_auth(r, jstr(tok, "token"), &ai), 0);
        ASSERT_STREQ(ai.role, roles[i]);
        ASSERT_STREQ(ai.token_id, jstr(tok, "id"));
        ASSERT(json_is_null(json_object_get(tok, "expires_at")));
        json_decref(tok);
    }
    /* Secrets that cannot be ours are refused before any lookup. */
    struct auth_info ai;
    char huge[400];
    memset(huge, 'k', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = 0;
    ASSERT_EQ(registry_token_auth(r, "", &ai), ERR_AUTH);
    ASSERT_EQ(registry_token_auth(r, NULL, &ai), ERR_AUTH);
    ASSERT_EQ(registry_token_auth(r, huge, &ai), ERR_AUTH);
    close_reg(r);
}

TEST(token_expires_at_its_time_for_auth_and_get)
{
    struct registry *r = open_reg();
    json_t *tok = NULL;
    int64_t exp = clock_now_ms() + 300;
    ASSERT_EQ(registry_token_create(r, "token:t", "T", "", "user", exp, &tok), 0);
    ASSERT(json_is_string(json_object_get(tok, "expires_at")));
    struct auth_info ai;
    ASSERT_EQ(registry_token_auth(r, jstr(tok, "token"), &ai), 0);
    ASSERT_EQ(ai.expires_at_ms, exp);
    ASSERT_EQ(registry_token_get(r, jstr(tok, "id"), &ai), 0);
    ASSERT_EQ(registry_token_get(r, jstr(tok, "id"), NULL), 0);
    while (clock_now_ms() <= exp) {
        usleep(20000);
    }
    ASSERT_EQ(registry_token_auth(r, jstr(tok, "token"), &ai), ERR_AUTH);
    ASSERT_EQ(registry_token_get(r, jstr(tok, "id"), &ai), ERR_AUTH);
    ASSERT_EQ(registry_token_get(r, "tok_nope", &ai), ERR_NOT_FOUND);
    /* Revoking (by an admin: no owner restriction) ends it for good. */
    ASSERT_EQ(registry_token_delete(r, jstr(tok, "id"), NULL), 0);
    ASSERT_EQ(registry_token_get(r, jstr(tok, "id"), NULL), ERR_NOT_FOUND);
    ASSERT_EQ(registry_token_delete(r, jstr(tok, "id"), NULL), ERR_NOT_FOUND);
    json_decref(tok);
    close_reg(r);
}

TEST(registry_bootstrap_rotation_members_audit)
{
    struct registry *r = open_reg();
    char id1[40], id1b[40], id2[40];
    struct auth_info ai;
    json_t *tok = NULL, *gone = NULL, *out = NULL;
    /* The bootstrap token: the same secret is the same token; a new one revokes the old. */
    ASSERT_EQ(registry_token_ensure(r, "adm_one", "token:admin", "admin", id1), 0);
    ASSERT_EQ(registry_token_ensure(r, "adm_one", "token:admin", "admin", id1b), 0);
    ASSERT_STREQ(id1, id1b);
    ASSERT_EQ(registry_token_revoke_bootstrap(r, id1, &gone), 0);
    ASSERT_EQ(json_array_size(gone), 0);
    json_decref(gone);
    ASSERT_EQ(registry_token_create(r, "token:admin", "Ops", "", "admin", 0, &tok), 0);
    ASSERT_EQ(registry_token_ensure(r, "adm_two", "token:admin", "admin", id2), 0);
    ASSERT_EQ(registry_token_revoke_bootstrap(r, id2, &gone), 0);
    ASSERT_EQ(json_array_size(gone), 1);
    ASSERT_STREQ(json_string_value(json_array_get(gone, 0)), id1);
    json_decref(gone);
    ASSERT_EQ(registry_token_auth(r, "adm_one", &ai), ERR_AUTH);
    ASSERT_EQ(registry_token_get(r, id1, NULL), ERR_NOT_FOUND);
    ASSERT_EQ(registry_token_auth(r, "adm_two", &ai), 0);
    ASSERT_EQ(registry_token_get(r, id2, &ai), 0);
    ASSERT_STREQ(ai.role, "admin");
    /* An admin token minted through the API is not a bootstrap token: it survives. */
    ASSERT_EQ(registry_token_auth(r, json_string_value(json_object_get(tok, "token")), &ai), 0);
    json_decref(tok);

    /* Members: add, list, remove (twice: not found). */
    struct session_new sn = {.id = "m1", .visibility = "private", .created_by = "token:alice"};
    ASSERT_EQ(registry_session_create(r, &sn, NULL), 0);
    ASSERT_EQ(registry_member_add(r, "m1", "token:bob", "writer"), 0);
    ASSERT_EQ(registry_member_list(r, "m1", &out), 0);
    ASSERT_EQ(json_array_size(out), 1);
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(out, 0), "role")), "writer");
    json_decref(out);
    ASSERT_EQ(registry_member_remove(r, "m1", "token:bob"), 0);
    ASSERT_EQ(registry_member_remove(r, "m1", "token:bob"), ERR_NOT_FOUND);

    /* Audit: newest first, pages that cover everything once, filters, bad input. */
    const char *actions[] = {"token.create", "exec", "exec", "participant.remove", "exec"};
    for (int i = 0; i < 5; i++) {
        struct registry_audit e = {i % 2 ? "token:alice" : "token:bob", "tok_x", actions[i], "t",
                                   i == 4 ? "{\"n\":4}" : NULL,         NULL};
        ASSERT_EQ(registry_audit_add(r, &e), 0);
    }
    char cursor[64] = "";
    int seen = 0, pages = 0;
    int64_t prev = INT64_MAX;
    for (;;) {
        ASSERT_EQ(registry_audit_list(r, NULL, NULL, 2, cursor[0] ? cursor : NULL, &out), 0);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(out, "entries"), i, e)
        {
            int64_t id = json_integer_value(json_object_get(e, "id"));
            ASSERT(id < prev);
            prev = id;
            seen++;
        }
        pages++;
        int more = json_is_true(json_object_get(out, "has_more"));
        if (more) {
            snprintf(cursor, sizeof(cursor), "%s",
                     json_string_value(json_object_get(out, "next_cursor")));
        }
        json_decref(out);
        if (!more) {
            break;
        }
    }
    ASSERT_EQ(seen, 5);
    ASSERT_EQ(pages, 3);
    ASSERT_EQ(registry_audit_list(r, "exec", NULL, 100, NULL, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "entries")), 3);
    ASSERT_EQ(
        json_integer_value(json_object_get(
            json_object_get(json_array_get(json_object_get(out, "entries"), 0), "detail"), "n")),
        4);
    json_decref(out);
    ASSERT_EQ(registry_audit_list(r, "exec", "token:alice", 100, NULL, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "entries")), 1);
    json_decref(out);
    ASSERT_EQ(registry_audit_list(r, NULL, NULL, 0, NULL, &out), ERR_INVALID);
    ASSERT_EQ(registry_audit_list(r, NULL, NULL, 1001, NULL, &out), ERR_INVALID);
    ASSERT_EQ(registry_audit_list(r, NULL, NULL, 10, "12", &out), ERR_INVALID);
    ASSERT_EQ(registry_audit_list(r, NULL, NULL, 10, "a-1", &out), ERR_INVALID);
    close_reg(r);
}

/* ---- sessions ---- */

TEST(registry_sessions_paging_and_access)
{
    struct registry *r = open_reg();
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
    close_reg(r);
}

/* Sessions created within the same millisecond still page without a duplicate or a hole
 * (the cursor carries the id as a tie-break); purged sessions are left out; admins see
 * private sessions, members see theirs. */
TEST(session_pages_cover_each_visible_session_once)
{
    struct registry *r = open_reg();
    enum { N = 60 };
    char id[16];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "s%02d", i);
        struct session_new n = {.id = id,
                                .title = "t",
                                .visibility = i % 5 == 0 ? "private" : "org",
                                .created_by = i % 10 == 0 ? "token:carol" : "token:owner"};
        ASSERT_EQ(registry_session_create(r, &n, NULL), 0);
    }
    ASSERT_EQ(registry_session_set_state(r, "s01", "purged"), 0);
    ASSERT_EQ(registry_session_set_state(r, "s02", "ended"), 0);
    ASSERT_EQ(registry_member_add(r, "s05", "token:carol", "viewer"), 0);
    struct {
        const char *user;
        int admin;
        int want;
    } who[] = {
        {"token:other", 0, N - N / 5 - 1},         /* org only, minus the purged one */
        {"token:carol", 0, N - N / 5 - 1 + 6 + 1}, /* + her 6 private + s05 as a member */
        {"token:admin", 1, N - 1},                 /* everything but the purged one */
    };
    for (int w = 0; w < 3; w++) {
        char seen[N] = {0};
        int total = 0;
        char cursor[128] = "";
        for (int page = 0; page < 100; page++) {
            json_t *out = NULL;
            ASSERT_EQ(registry_session_list(r, who[w].user, who[w].admin, 7,
                                            cursor[0] ? cursor : NULL, &out),
                      0);
            size_t i;
            json_t *s;
            json_array_foreach(json_object_get(out, "sessions"), i, s)
            {
                int k = (int)strtol(jstr(s, "id") + 1, NULL, 10);
                ASSERT(k >= 0 && k < N);
                ASSERT_EQ(seen[k], 0);
                seen[k] = 1;
                total++;
                ASSERT(strcmp(jstr(s, "state"), "purged") != 0);
            }
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
        ASSERT_EQ(total, who[w].want);
    }
    json_t *out = NULL;
    ASSERT_EQ(registry_session_list(r, "token:other", 0, 5, "garbage", &out), ERR_INVALID);
    ASSERT_EQ(registry_session_list(r, "token:other", 0, 5, "12.../x", &out), ERR_INVALID);
    ASSERT_EQ(registry_session_list(r, "token:other", 0, 5, "x1.s01", &out), ERR_INVALID);
    ASSERT_EQ(registry_session_list(r, "token:other", 0, 5, "123456789012345678901234.s01", &out),
              ERR_INVALID);
    /* limit out of range falls back to the default page (50), it is not an error */
    ASSERT_EQ(registry_session_list(r, "token:admin", 1, 0, NULL, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "sessions")), 50);
    json_decref(out);
    close_reg(r);
}

TEST(session_rows_state_and_touch)
{
    struct registry *r = open_reg();
    json_t *row = NULL;
    struct session_new bad = {.id = "../x", .created_by = "token:a"};
    ASSERT_EQ(registry_session_create(r, &bad, &row), ERR_INVALID);
    char longid[80];
    memset(longid, 'a', 65);
    longid[65] = 0;
    bad.id = longid;
    ASSERT_EQ(registry_session_create(r, &bad, &row), ERR_INVALID);
    longid[64] = 0;
    bad.id = longid; /* 64 is the longest valid id */
    ASSERT_EQ(registry_session_create(r, &bad, NULL), 0);
    struct session_new n = {.id = "s1",
                            .title = "Fix it",
                            .repo = "web",
                            .visibility = "private",
                            .agent = "echo",
                            .created_by = "token:alice"};
    ASSERT_EQ(registry_session_create(r, &n, &row), 0);
    ASSERT_STREQ(jstr(row, "id"), "s1");
    ASSERT_STREQ(jstr(row, "title"), "Fix it");
    ASSERT_STREQ(jstr(row, "repo"), "web");
    ASSERT_STREQ(jstr(row, "visibility"), "private");
    ASSERT_STREQ(jstr(row, "agent"), "echo");
    ASSERT_STREQ(jstr(row, "state"), "active");
    ASSERT_STREQ(jstr(row, "created_by"), "token:alice");
    ASSERT_EQ(json_integer_value(json_object_get(row, "last_seq")), 0);
    json_decref(row);
    /* The lazy columns, one at a time and in a batch. */
    ASSERT_EQ(registry_session_touch(r, "s1", 42, 1795435200123LL), 0);
    ASSERT_EQ(registry_session_get(r, "s1", &row), 0);
    ASSERT_EQ(json_integer_value(json_object_get(row, "last_seq")), 42);
    ASSERT_STREQ(jstr(row, "last_activity"), "2026-11-23T12:00:00.123Z");
    json_decref(row);
    struct registry_touch t[2] = {{"s1", 43, 1795435200124LL}, {longid, 7, 1795435200125LL}};
    ASSERT_EQ(registry_session_touch_many(r, t, 2), 0);
    ASSERT_EQ(registry_session_touch_many(r, t, 0), 0);
    ASSERT_EQ(registry_session_get(r, longid, &row), 0);
    ASSERT_EQ(json_integer_value(json_object_get(row, "last_seq")), 7);
    json_decref(row);
    ASSERT_EQ(registry_session_get(r, "s1", &row), 0);
    ASSERT_EQ(json_integer_value(json_object_get(row, "last_seq")), 43);
    json_decref(row);
    ASSERT_EQ(registry_session_set_state(r, "s1", "ended"), 0);
    ASSERT_EQ(registry_session_get(r, "s1", &row), 0);
    ASSERT_STREQ(jstr(row, "state"), "ended");
    json_decref(row);
    ASSERT_EQ(registry_session_set_state(r, "nope", "ended"), ERR_NOT_FOUND);
    close_reg(r);
}

/* Who gets which role on which session (registry_session_access), all cases at once. */
TEST(access_matrix)
{
    struct registry *r = open_reg();
    struct session_new org = {.id = "org", .visibility = "org", .created_by = "token:alice"};
    struct session_new priv = {.id = "priv", .visibility = "private", .created_by = "token:alice"};
    ASSERT_EQ(registry_session_create(r, &org, NULL), 0);
    ASSERT_EQ(registry_session_create(r, &priv, NULL), 0);
    ASSERT_EQ(registry_member_add(r, "priv", "token:wri", "writer"), 0);
    ASSERT_EQ(registry_member_add(r, "priv", "token:vie", "viewer"), 0);
    ASSERT_EQ(registry_member_add(r, "priv", "token:vtok", "writer"), 0);
    struct {
        const char *sid, *user, *trole, *want;
    } cases[] = {
        {"org", "token:alice", "user", "owner"},    {"org", "token:bob", "user", "writer"},
        {"org", "token:bob", "bot", "writer"},      {"org", "token:bob", "viewer", "viewer"},
        {"org", "token:root", "admin", "owner"},    {"org", "token:alice", "viewer", "viewer"},
        {"priv", "token:alice", "user", "owner"},   {"priv", "token:bob", "user", NULL},
        {"priv", "token:bob", "bot", NULL},         {"priv", "token:root", "admin", "owner"},
        {"priv", "token:wri", "user", "writer"},    {"priv", "token:vie", "user", "viewer"},
        {"priv", "token:vtok", "viewer", "viewer"}, /* a viewer token never writes */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct auth_info who;
        memset(&who, 0, sizeof(who));
        snprintf(who.user_id, sizeof(who.user_id), "%s", cases[i].user);
        snprintf(who.role, sizeof(who.role), "%s", cases[i].trole);
        const char *role = "unset";
        ASSERT_EQ(registry_session_access(r, cases[i].sid, &who, &role), 0);
        if (!cases[i].want) {
            if (role) {
                TFAIL("case %zu: %s as %s on %s got %s, want none", i, cases[i].user,
                      cases[i].trole, cases[i].sid, role);
            }
        } else if (!role || strcmp(role, cases[i].want) != 0) {
            TFAIL("case %zu: %s as %s on %s got %s, want %s", i, cases[i].user, cases[i].trole,
                  cases[i].sid, role ? role : "none", cases[i].want);
        }
    }
    struct auth_info bob = {.user_id = "token:bob", .role = "user"};
    const char *role = NULL;
    ASSERT_EQ(registry_session_access(r, "nope", &bob, &role), ERR_NOT_FOUND);
    /* Members: bad roles refused, re-adding changes the role, removing ends access. */
    ASSERT_EQ(registry_member_add(r, "priv", "token:bob", "owner"), ERR_INVALID);
    ASSERT_EQ(registry_member_add(r, "priv", "token:bob", NULL), ERR_INVALID);
    ASSERT_EQ(registry_member_add(r, "priv", "", "writer"), ERR_INVALID);
    ASSERT_EQ(registry_member_add(r, "priv", "token:bob", "viewer"), 0);
    ASSERT_EQ(registry_session_access(r, "priv", &bob, &role), 0);
    ASSERT_STREQ(role, "viewer");
    ASSERT_EQ(registry_member_add(r, "priv", "token:bob", "writer"), 0);
    ASSERT_EQ(registry_session_access(r, "priv", &bob, &role), 0);
    ASSERT_STREQ(role, "writer");
    ASSERT_EQ(registry_member_remove(r, "priv", "token:bob"), 0);
    ASSERT_EQ(registry_session_access(r, "priv", &bob, &role), 0);
    ASSERT(role == NULL);
    /* The member list names users who have a token, in user id order. */
    json_t *tok = NULL;
    ASSERT_EQ(registry_token_create(r, "token:vie", "Vi", "vi@x", "user", 0, &tok), 0);
    json_decref(tok);
    json_t *out = NULL;
    ASSERT_EQ(registry_member_list(r, "priv", &out), 0);
    ASSERT_EQ(json_array_size(out), 3);
    ASSERT_STREQ(jstr(json_array_get(out, 0), "user_id"), "token:vie");
    ASSERT_STREQ(jstr(json_array_get(out, 0), "name"), "Vi");
    ASSERT_STREQ(jstr(json_array_get(out, 0), "email"), "vi@x");
    ASSERT_STREQ(jstr(json_array_get(out, 1), "user_id"), "token:vtok");
    ASSERT(json_is_null(json_object_get(json_array_get(out, 1), "name")));
    ASSERT_STREQ(jstr(json_array_get(out, 2), "user_id"), "token:wri");
    json_decref(out);
    close_reg(r);
}

/* ---- audit ---- */

TEST(audit_pages_with_filters_and_refuses_bad_cursors)
{
    struct registry *r = open_reg();
    struct registry_audit none = {.action = NULL};
    ASSERT_EQ(registry_audit_add(r, &none), ERR_INVALID);
    none.action = "";
    ASSERT_EQ(registry_audit_add(r, &none), ERR_INVALID);
    /* 25 entries: every third one is alice's exec. */
    for (int i = 0; i < 25; i++) {
        char detail[64], target[16];
        snprintf(detail, sizeof(detail), "{\"i\":%d}", i);
        snprintf(target, sizeof(target), "t%d", i);
        struct registry_audit e = {i % 3 == 0 ? "token:alice" : "token:bob",
                                   "tok_1",
                                   i % 3 == 0 ? "exec" : "token.create",
                                   target,
                                   detail,
                                   "127.0.0.1"};
        ASSERT_EQ(registry_audit_add(r, &e), 0);
    }
    /* alice's execs in pages of 2 with the filter kept across pages: 9 entries, newest first. */
    char cursor[64] = "";
    int seen = 0, expect_i = 24;
    for (int page = 0; page < 20; page++) {
        json_t *out = NULL;
        ASSERT_EQ(registry_audit_list(r, "exec", "token:alice", 2, cursor[0] ? cursor : NULL, &out),
                  0);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(out, "entries"), i, e)
        {
            ASSERT_STREQ(jstr(e, "action"), "exec");
            ASSERT_STREQ(jstr(e, "actor_user_id"), "token:alice");
            ASSERT_STREQ(jstr(e, "actor_token_id"), "tok_1");
            ASSERT_STREQ(jstr(e, "request_ip"), "127.0.0.1");
            ASSERT(json_is_string(json_object_get(e, "at")));
            ASSERT_EQ(json_integer_value(json_object_get(json_object_get(e, "detail"), "i")),
                      expect_i);
            expect_i -= 3;
            seen++;
        }
        int more = json_is_true(json_object_get(out, "has_more"));
        ASSERT_EQ(more, json_is_string(json_object_get(out, "next_cursor")));
        if (more) {
            snprintf(cursor, sizeof(cursor), "%s", jstr(out, "next_cursor"));
        }
        json_decref(out);
        if (!more) {
            break;
        }
    }
    ASSERT_EQ(seen, 9);
    /* A page that ends exactly at the last entry says so. */
    json_t *out = NULL;
    ASSERT_EQ(registry_audit_list(r, "exec", NULL, 9, NULL, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "entries")), 9);
    ASSERT(json_is_false(json_object_get(out, "has_more")));
    ASSERT(json_is_null(json_object_get(out, "next_cursor")));
    json_decref(out);
    ASSERT_EQ(registry_audit_list(r, "nothing", NULL, 10, NULL, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "entries")), 0);
    json_decref(out);
    const char *bad[] = {"", "a", "a0", "b5", "a5x", "a99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        out = (json_t *)1;
        if (registry_audit_list(r, NULL, NULL, 10, bad[i], &out) != ERR_INVALID) {
            TFAIL("cursor \"%s\" was accepted", bad[i]);
        }
        ASSERT(out == NULL);
    }
    close_reg(r);
}

/* ---- key/value ---- */

TEST(kv_put_get_and_put_new)
{
    struct registry *r = open_reg();
    char *v = NULL;
    ASSERT_EQ(registry_kv_get(r, "k", &v), ERR_NOT_FOUND);
    ASSERT(v == NULL);
    ASSERT_EQ(registry_kv_put(r, "k", "one"), 0);
    ASSERT_EQ(registry_kv_get(r, "k", &v), 0);
    ASSERT_STREQ(v, "one");
    free(v);
    ASSERT_EQ(registry_kv_put(r, "k", "two"), 0);
    ASSERT_EQ(registry_kv_get(r, "k", &v), 0);
    ASSERT_STREQ(v, "two");
    free(v);
    int ins = -1;
    ASSERT_EQ(registry_kv_put_new(r, "k", "three", &ins), 0);
    ASSERT_EQ(ins, 0);
    ASSERT_EQ(registry_kv_get(r, "k", &v), 0);
    ASSERT_STREQ(v, "two"); /* put_new never overwrites */
    free(v);
    ASSERT_EQ(registry_kv_put(r, "n", NULL), 0);
    ASSERT_EQ(registry_kv_get(r, "n", &v), ERR_NOT_FOUND);
    close_reg(r);
}

/* ---- migrations ---- */

TEST(fresh_file_is_migrated_to_the_latest_schema_and_reopens)
{
    struct registry *r = open_reg();
    json_t *tok = NULL;
    ASSERT_EQ(registry_token_create(r, "token:a", "A", "", "user", 0, &tok), 0);
    registry_close(r);
    ASSERT_EQ(user_version(path), migrate_latest(migrations_registry));
    ASSERT(migrate_latest(migrations_registry) >= 4);
    /* Reopening applies nothing twice and keeps the data. */
    ASSERT_EQ(registry_open(path, 1, &r), 0);
    struct auth_info ai;
    ASSERT_EQ(registry_token_auth(r, jstr(tok, "token"), &ai), 0);
    json_decref(tok);
    close_reg(r);
}

TEST(old_file_is_migrated_keeping_its_rows)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-registry.XXXXXX");
    ASSERT(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/registry.db", dir);
    sqlite3 *db = NULL;
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, migrations_registry[0].sql, NULL, NULL, NULL), SQLITE_OK);
    char hash[65], sql[512];
    util_sha256_hex("sk_old", 6, hash);
    snprintf(sql, sizeof(sql),
             "INSERT INTO tokens(id,hash,user_id,role,created_at) VALUES('tok_old','%s',"
             "'token:old','admin',1);"
             "INSERT INTO sessions(id,created_at,created_by) VALUES('s_old',1,'token:old');"
             "PRAGMA user_version=1",
             hash);
    ASSERT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    struct registry *r = NULL;
    ASSERT_EQ(registry_open(path, 0, &r), 0);
    struct auth_info ai;
    ASSERT_EQ(registry_token_auth(r, "sk_old", &ai), 0);
    ASSERT_STREQ(ai.token_id, "tok_old");
    json_t *row = NULL;
    ASSERT_EQ(registry_session_get(r, "s_old", &row), 0);
    json_decref(row);
    /* Tokens from before the origin column are 'api': a bootstrap rotation keeps them. */
    char id[40];
    ASSERT_EQ(registry_token_ensure(r, "sk_new_admin", "token:admin", "admin", id), 0);
    json_t *gone = NULL;
    ASSERT_EQ(registry_token_revoke_bootstrap(r, id, &gone), 0);
    ASSERT_EQ(json_array_size(gone), 0);
    json_decref(gone);
    /* The audit table (version 4) exists. */
    struct registry_audit e = {.action = "x"};
    ASSERT_EQ(registry_audit_add(r, &e), 0);
    registry_close(r);
    ASSERT_EQ(user_version(path), migrate_latest(migrations_registry));
    util_rm_rf(dir);
}

TEST(newer_file_and_non_database_are_refused)
{
    struct registry *r = open_reg();
    registry_close(r);
    sqlite3 *db = NULL;
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", migrate_latest(migrations_registry) + 1);
    ASSERT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    r = (struct registry *)1;
    ASSERT_EQ(registry_open(path, 0, &r), ERR_NEWER);
    ASSERT(r == NULL);
    /* The refused file is left as it was. */
    ASSERT_EQ(user_version(path), migrate_latest(migrations_registry) + 1);
    char junk[400];
    snprintf(junk, sizeof(junk), "%s/junk.db", dir);
    FILE *f = fopen(junk, "w");
    ASSERT(f);
    for (int i = 0; i < 200; i++) {
        fputs("this is not an SQLite database file at all. ", f);
    }
    fclose(f);
    ASSERT_EQ(registry_open(junk, 0, &r), ERR_CORRUPT);
    ASSERT(r == NULL);
    char nodir[400];
    snprintf(nodir, sizeof(nodir), "%s/missing/dir/registry.db", dir);
    ASSERT(registry_open(nodir, 0, &r) < 0);
    ASSERT(r == NULL);
    util_rm_rf(dir);
}

/* ---- threads ---- */

struct worker_arg {
    struct registry *r;
    int n;
    int failures;
    char secrets[40][80];
    char ids[40][40];
};

static void *hammer(void *arg)
{
    struct worker_arg *w = arg;
    char user[32], sid[32];
    snprintf(user, sizeof(user), "token:w%d", w->n);
    for (int i = 0; i < 40; i++) {
        json_t *tok = NULL;
        if (registry_token_create(w->r, user, user, "", "user", 0, &tok) != 0) {
            w->failures++;
            continue;
        }
        snprintf(w->secrets[i], sizeof(w->secrets[i]), "%s", jstr(tok, "token"));
        snprintf(w->ids[i], sizeof(w->ids[i]), "%s", jstr(tok, "id"));
        json_decref(tok);
        struct auth_info ai;
        if (registry_token_auth(w->r, w->secrets[i], &ai) != 0 || strcmp(ai.user_id, user) != 0) {
            w->failures++;
        }
        snprintf(sid, sizeof(sid), "w%d_%d", w->n, i);
        struct session_new n = {.id = sid, .visibility = "private", .created_by = user};
        const char *role = NULL;
        if (registry_session_create(w->r, &n, NULL) != 0 ||
            registry_session_access(w->r, sid, &ai, &role) != 0 || !role ||
            strcmp(role, "owner") != 0) {
            w->failures++;
        }
        struct registry_audit e = {.actor_user_id = user, .action = "exec", .target = sid};
        if (registry_audit_add(w->r, &e) != 0 || registry_session_touch(w->r, sid, i, i) != 0) {
            w->failures++;
        }
    }
    return NULL;
}

TEST(many_threads_at_once)
{
    struct registry *r = open_reg();
    enum { NT = 8 };
    pthread_t th[NT];
    static struct worker_arg w[NT];
    for (int i = 0; i < NT; i++) {
        w[i].r = r;
        w[i].n = i;
        ASSERT_EQ(pthread_create(&th[i], NULL, hammer, &w[i]), 0);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(w[i].failures, 0);
    }
    json_t *list = NULL;
    ASSERT_EQ(registry_token_list(r, NULL, &list), 0);
    ASSERT_EQ(json_array_size(json_object_get(list, "tokens")), NT * 40);
    json_decref(list);
    /* Every secret still opens its own token, and only that one. */
    for (int i = 0; i < NT; i++) {
        for (int k = 0; k < 40; k++) {
            struct auth_info ai;
            ASSERT_EQ(registry_token_auth(r, w[i].secrets[k], &ai), 0);
            ASSERT_STREQ(ai.token_id, w[i].ids[k]);
        }
    }
    json_t *out = NULL;
    ASSERT_EQ(registry_audit_list(r, "exec", NULL, 1000, NULL, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "entries")), NT * 40);
    json_decref(out);
    ASSERT_EQ(registry_session_list(r, NULL, 1, 200, NULL, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "sessions")), 200);
    json_decref(out);
    close_reg(r);
}

static const struct test_case tests[] = {
    T(registry_tokens),
    T(token_secret_is_never_stored_in_clear),
    T(token_create_refuses_bad_input_and_stores_nothing),
    T(token_expires_at_its_time_for_auth_and_get),
    T(registry_bootstrap_rotation_members_audit),
    T(registry_sessions_paging_and_access),
    T(session_pages_cover_each_visible_session_once),
    T(session_rows_state_and_touch),
    T(access_matrix),
    T(audit_pages_with_filters_and_refuses_bad_cursors),
    T(kv_put_get_and_put_new),
    T(fresh_file_is_migrated_to_the_latest_schema_and_reopens),
    T(old_file_is_migrated_keeping_its_rows),
    T(newer_file_and_non_database_are_refused),
    T(many_threads_at_once),
};
TEST_MAIN(tests)
