/*
 * test_auth.c - bearer tokens and session access (server/auth.h) over a real registry: header
 * parsing, the token and access caches (what they keep, for how long, and what drops them),
 * expiry, roles against needs, the admin token bootstrap and its rotation. (The one-use
 * WebSocket tickets the hub hands out are tested with the hub, in test_hub.c.)
 *
 * The caches belong to a struct auth made by open_reg(); each test starts with empty ones.
 * Links auth.o and audit.o of server/, storage/ and common/ only.
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/util.h"
#include "server/auth.h"
#include "server/config.h"
#include "storage/registry.h"
#include "testlib.h"

#include <jansson.h>
#include <pthread.h>
#include <sys/stat.h>

static char dir[256];
static struct auth *au; /* the caches under test, over the registry of open_reg() */

static struct registry *open_reg(void)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-auth.XXXXXX");
    ASSERT(mkdtemp(dir));
    char path[320];
    snprintf(path, sizeof(path), "%s/registry.db", dir);
    struct registry *r = NULL;
    ASSERT_EQ(registry_open(path, 0, &r), 0);
    ASSERT_EQ(auth_new(r, &au), 0);
    return r;
}

static void close_reg(struct registry *r)
{
    auth_free(au);
    au = NULL;
    registry_close(r);
    util_rm_rf(dir);
}

/* A new token; *secret and *id (caller frees) */
static void mint(struct registry *r, const char *user, const char *role, int64_t exp, char **secret,
                 char **id)
{
    json_t *tok = NULL;
    ASSERT_EQ(registry_token_create(r, user, user, "", role, exp, &tok), 0);
    *secret = strdup(json_string_value(json_object_get(tok, "token")));
    if (id) {
        *id = strdup(json_string_value(json_object_get(tok, "id")));
    }
    json_decref(tok);
}

static char *bearer(const char *fmt, const char *secret)
{
    char *h = NULL;
    ASSERT(asprintf(&h, fmt, secret) > 0);
    return h;
}

static int auth_as(struct registry *r, const char *fmt, const char *secret, struct auth_info *out)
{
    (void)r; /* au (over r) answers */
    char *h = bearer(fmt, secret);
    int rc = auth_bearer(au, h, out);
    free(h);
    return rc;
}

/* ---- bearer ---- */

TEST(bearer_header_forms)
{
    struct registry *r = open_reg();
    char *secret = NULL, *id = NULL;
    mint(r, "token:alice", "user", 0, &secret, &id);
    struct auth_info ai;
    const char *good[] = {"Bearer %s",     "bearer %s",   "BEARER %s",
                          "  Bearer   %s", "Bearer %s  ", "Bearer %s\t"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        memset(&ai, 0, sizeof(ai));
        if (auth_as(r, good[i], secret, &ai) != 0) {
            TFAIL("\"%s\" was refused", good[i]);
        }
        ASSERT_STREQ(ai.user_id, "token:alice");
        ASSERT_STREQ(ai.token_id, id);
        ASSERT_STREQ(ai.role, "user");
    }
    const char *bad[] = {"%s",
                         "Basic %s",
                         "Bearer",
                         "Bearer ",
                         "Bearer    ",
                         "Bearer\t%s",
                         "Bearer%s",
                         "Bearer %s extra",
                         "Bearer x%s",
                         "Bearer %s%s",
                         "Token %s",
                         "",
                         "Bearer \"%s\"",
                         "Bearer %.10s",
                         "Bearer %sx",
                         "Bearer sk_nope"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *h = NULL;
        ASSERT(asprintf(&h, bad[i], secret, secret) >= 0);
        if (auth_bearer(au, h, &ai) != ERR_AUTH) {
            TFAIL("\"%s\" was accepted", h);
        }
        free(h);
    }
    ASSERT_EQ(auth_bearer(au, NULL, &ai), ERR_AUTH);
    /* Secrets longer than any of ours are refused without a lookup, at any length. */
    char big[1200];
    memcpy(big, "Bearer ", 7);
    memset(big + 7, 'k', sizeof(big) - 8);
    big[sizeof(big) - 1] = 0;
    ASSERT_EQ(auth_bearer(au, big, &ai), ERR_AUTH);
    big[7 + 255] = 0; /* 255 characters: the longest accepted, still unknown */
    ASSERT_EQ(auth_bearer(au, big, &ai), ERR_AUTH);
    free(secret);
    free(id);
    close_reg(r);
}

/* A revoked token keeps working only while its cache entry lives (AUTH_CACHE_TTL_MS), and not
 * at all once auth_cache_invalidate() has run. Failures are never cached. */
TEST(token_cache_lifetime_and_invalidation)
{
    struct registry *r = open_reg();
    char *s1 = NULL, *id1 = NULL, *s2 = NULL, *id2 = NULL;
    mint(r, "token:a", "user", 0, &s1, &id1);
    mint(r, "token:b", "user", 0, &s2, &id2);
    struct auth_info ai;
    ASSERT_EQ(auth_as(r, "Bearer %s", s1, &ai), 0);
    ASSERT_EQ(auth_as(r, "Bearer %s", s2, &ai), 0);
    ASSERT_EQ(registry_token_delete(r, id1, NULL), 0);
    ASSERT_EQ(registry_token_delete(r, id2, NULL), 0);
    /* Cached: still accepted (this is the documented window) ... */
    ASSERT_EQ(auth_as(r, "Bearer %s", s1, &ai), 0);
    ASSERT_STREQ(ai.user_id, "token:a");
    /* ... until an invalidation, */
    auth_cache_invalidate(au);
    ASSERT_EQ(auth_as(r, "Bearer %s", s1, &ai), ERR_AUTH);
    /* or the end of the entry's life without one. */
    int64_t t0 = clock_mono_ms();
    mint(r, "token:c", "user", 0, &s2, &id2);
    ASSERT_EQ(auth_as(r, "Bearer %s", s2, &ai), 0);
    ASSERT_EQ(registry_token_delete(r, id2, NULL), 0);
    while (clock_mono_ms() - t0 < AUTH_CACHE_TTL_MS - 200) {
        ASSERT_EQ(auth_as(r, "Bearer %s", s2, &ai), 0);
        usleep(50000);
    }
    usleep((AUTH_CACHE_TTL_MS + 100) * 1000);
    ASSERT_EQ(auth_as(r, "Bearer %s", s2, &ai), ERR_AUTH);
    /* An unknown secret that becomes known works at once: refusals are not cached. */
    ASSERT_EQ(auth_as(r, "Bearer %s", "sk_registered_later", &ai), ERR_AUTH);
    char tid[40];
    ASSERT_EQ(registry_token_ensure(r, "sk_registered_later", "token:admin", "admin", tid), 0);
    ASSERT_EQ(auth_as(r, "Bearer %s", "sk_registered_later", &ai), 0);
    ASSERT_STREQ(ai.token_id, tid);
    ASSERT(auth_is_admin(&ai));
    free(s1);
    free(id1);
    free(s2);
    free(id2);
    close_reg(r);
}

/* A token that expires while its owner is cached stops working at its expiry, not up to a
 * cache lifetime later. */
TEST(cached_token_stops_at_its_expiry)
{
    struct registry *r = open_reg();
    char *s = NULL, *id = NULL;
    int64_t exp = clock_now_ms() + 400;
    mint(r, "token:short", "user", exp, &s, &id);
    struct auth_info ai;
    ASSERT_EQ(auth_as(r, "Bearer %s", s, &ai), 0);
    ASSERT_EQ(ai.expires_at_ms, exp);
    /* Keep the entry fresh right up to the expiry (each miss would refill it). */
    while (clock_now_ms() < exp - 50) {
        ASSERT_EQ(auth_as(r, "Bearer %s", s, &ai), 0);
        usleep(20000);
    }
    while (clock_now_ms() <= exp + 5) {
        usleep(5000);
    }
    ASSERT_EQ(auth_as(r, "Bearer %s", s, &ai), ERR_AUTH);
    free(s);
    free(id);
    close_reg(r);
}

/* Many tokens (more than the cache has slots) each map to their own owner, from several
 * threads at once, with invalidations in between. */
struct hammer {
    struct registry *r;
    char **secrets;
    char **users;
    int n;
    int wrong;
    int seed;
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    unsigned x = (unsigned)h->seed * 2654435761u + 1;
    for (int k = 0; k < 3000; k++) {
        x = x * 1103515245u + 12345u;
        int i = (int)((x >> 8) % (unsigned)h->n);
        struct auth_info ai;
        if (auth_as(h->r, "Bearer %s", h->secrets[i], &ai) != 0 ||
            strcmp(ai.user_id, h->users[i]) != 0) {
            h->wrong++;
        }
        if (k % 500 == 0) {
            auth_cache_invalidate(au);
        }
    }
    return NULL;
}

TEST(token_cache_never_mixes_up_owners)
{
    struct registry *r = open_reg();
    enum { N = 700, NT = 4 };
    static char *secrets[N], *users[N];
    for (int i = 0; i < N; i++) {
        char u[32];
        snprintf(u, sizeof(u), "token:u%d", i);
        users[i] = strdup(u);
        mint(r, u, i % 7 == 0 ? "viewer" : "user", 0, &secrets[i], NULL);
    }
    pthread_t th[NT];
    struct hammer h[NT];
    for (int t = 0; t < NT; t++) {
        h[t] = (struct hammer){r, secrets, users, N, 0, t};
        ASSERT_EQ(pthread_create(&th[t], NULL, hammer_main, &h[t]), 0);
    }
    for (int t = 0; t < NT; t++) {
        pthread_join(th[t], NULL);
        ASSERT_EQ(h[t].wrong, 0);
    }
    for (int i = 0; i < N; i++) {
        struct auth_info ai;
        ASSERT_EQ(auth_as(r, "Bearer %s", secrets[i], &ai), 0);
        ASSERT_STREQ(ai.user_id, users[i]);
        ASSERT_STREQ(ai.role, i % 7 == 0 ? "viewer" : "user");
        free(secrets[i]);
        free(users[i]);
    }
    close_reg(r);
}

/* ---- session access ---- */

static struct auth_info who(const char *user, const char *role)
{
    struct auth_info a;
    memset(&a, 0, sizeof(a));
    snprintf(a.user_id, sizeof(a.user_id), "%s", user);
    snprintf(a.role, sizeof(a.role), "%s", role);
    snprintf(a.token_id, sizeof(a.token_id), "tok_%s", role);
    return a;
}

TEST(session_roles_against_needs)
{
    struct registry *r = open_reg();
    struct session_new org = {.id = "org", .visibility = "org", .created_by = "token:alice"};
    struct session_new priv = {.id = "priv", .visibility = "private", .created_by = "token:alice"};
    ASSERT_EQ(registry_session_create(r, &org, NULL), 0);
    ASSERT_EQ(registry_session_create(r, &priv, NULL), 0);
    ASSERT_EQ(registry_member_add(r, "priv", "token:vie", "viewer"), 0);
    struct {
        const char *sid, *user, *trole;
        int need;
        int want_rc;
        const char *want_role;
    } cases[] = {
        {"org", "token:alice", "user", AUTH_OWNER, 0, "owner"},
        {"org", "token:bob", "user", AUTH_WRITE, 0, "writer"},
        {"org", "token:bob", "user", AUTH_OWNER, ERR_FORBIDDEN, NULL},
        {"org", "token:bob", "viewer", AUTH_READ, 0, "viewer"},
        {"org", "token:bob", "viewer", AUTH_WRITE, ERR_FORBIDDEN, NULL},
        {"org", "token:root", "admin", AUTH_OWNER, 0, "owner"},
        {"priv", "token:bob", "user", AUTH_READ, ERR_NOT_FOUND, NULL}, /* not even confirmed */
        {"priv", "token:bob", "bot", AUTH_READ, ERR_NOT_FOUND, NULL},
        {"priv", "token:vie", "user", AUTH_READ, 0, "viewer"},
        {"priv", "token:vie", "user", AUTH_WRITE, ERR_FORBIDDEN, NULL},
        {"priv", "token:root", "admin", AUTH_OWNER, 0, "owner"},
        {"nope", "token:root", "admin", AUTH_READ, ERR_NOT_FOUND, NULL},
    };
    /* Twice: the second round is answered from the access cache and must agree. */
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            struct auth_info a = who(cases[i].user, cases[i].trole);
            const char *role = NULL;
            int rc = auth_session(au, cases[i].sid, &a, cases[i].need, &role);
            if (rc != cases[i].want_rc) {
                TFAIL("round %d case %zu: rc %d, want %d", round, i, rc, cases[i].want_rc);
            }
            if (cases[i].want_role && (!role || strcmp(role, cases[i].want_role) != 0)) {
                TFAIL("round %d case %zu: role %s, want %s", round, i, role ? role : "(null)",
                      cases[i].want_role);
            }
        }
    }
    struct auth_info a = who("token:alice", "user");
    ASSERT_EQ(auth_session(au, "org", &a, AUTH_READ, NULL), 0); /* role_out may be NULL */
    /* The cache is keyed by the token's role too: the same user with a viewer token does not
     * inherit the writer decision cached for their user token. */
    struct auth_info bob_user = who("token:bob", "user"), bob_viewer = who("token:bob", "viewer");
    ASSERT_EQ(auth_session(au, "org", &bob_user, AUTH_WRITE, NULL), 0);
    ASSERT_EQ(auth_session(au, "org", &bob_viewer, AUTH_WRITE, NULL), ERR_FORBIDDEN);
    close_reg(r);
}

TEST(access_cache_follows_membership_and_purge_after_invalidation)
{
    struct registry *r = open_reg();
    struct session_new priv = {.id = "priv", .visibility = "private", .created_by = "token:alice"};
    ASSERT_EQ(registry_session_create(r, &priv, NULL), 0);
    struct auth_info bob = who("token:bob", "user");
    /* No access is never cached: adding a member takes effect at once. */
    ASSERT_EQ(auth_session(au, "priv", &bob, AUTH_READ, NULL), ERR_NOT_FOUND);
    ASSERT_EQ(registry_member_add(r, "priv", "token:bob", "writer"), 0);
    ASSERT_EQ(auth_session(au, "priv", &bob, AUTH_WRITE, NULL), 0);
    /* Removal: cached until invalidated. */
    ASSERT_EQ(registry_member_remove(r, "priv", "token:bob"), 0);
    ASSERT_EQ(auth_session(au, "priv", &bob, AUTH_WRITE, NULL), 0);
    auth_cache_invalidate(au);
    ASSERT_EQ(auth_session(au, "priv", &bob, AUTH_READ, NULL), ERR_NOT_FOUND);
    /* Purge: likewise, then 410. */
    struct auth_info alice = who("token:alice", "user");
    ASSERT_EQ(auth_session(au, "priv", &alice, AUTH_OWNER, NULL), 0);
    ASSERT_EQ(registry_session_set_state(r, "priv", "purged"), 0);
    auth_cache_invalidate(au);
    ASSERT_EQ(auth_session(au, "priv", &alice, AUTH_READ, NULL), ERR_GONE);
    /* Without an invalidation the decision ends with the entry's life. */
    struct session_new org = {.id = "org", .visibility = "org", .created_by = "token:alice"};
    ASSERT_EQ(registry_session_create(r, &org, NULL), 0);
    ASSERT_EQ(auth_session(au, "org", &bob, AUTH_WRITE, NULL), 0);
    ASSERT_EQ(registry_session_set_state(r, "org", "purged"), 0);
    usleep((AUTH_CACHE_TTL_MS + 100) * 1000);
    ASSERT_EQ(auth_session(au, "org", &bob, AUTH_READ, NULL), ERR_GONE);
    close_reg(r);
}

TEST(admin_and_impersonation_by_role)
{
    struct auth_info a = who("token:x", "admin"), b = who("token:x", "bot"),
                     u = who("token:x", "user"), v = who("token:x", "viewer");
    ASSERT_EQ(auth_is_admin(&a), 1);
    ASSERT_EQ(auth_is_admin(&b), 0);
    ASSERT_EQ(auth_is_admin(&u), 0);
    ASSERT_EQ(auth_is_admin(NULL), 0);
    ASSERT_EQ(auth_may_impersonate(&a), 1);
    ASSERT_EQ(auth_may_impersonate(&b), 1);
    ASSERT_EQ(auth_may_impersonate(&u), 0);
    ASSERT_EQ(auth_may_impersonate(&v), 0);
    ASSERT_EQ(auth_may_impersonate(NULL), 0);
}

/* ---- the admin token bootstrap ---- */

static int count_tokens(struct registry *r)
{
    json_t *list = NULL;
    ASSERT_EQ(registry_token_list(r, NULL, &list), 0);
    int n = (int)json_array_size(json_object_get(list, "tokens"));
    json_decref(list);
    return n;
}

TEST(bootstrap_writes_reuses_and_rotates_the_admin_token)
{
    struct registry *r = open_reg();
    struct config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.data_dir = dir;
    cfg.admin_token = "";
    /* First start: a new secret in <data_dir>/admin.token, mode 0600, that works as admin. */
    ASSERT_EQ(auth_bootstrap_admin(au, &cfg), 0);
    char file[400];
    snprintf(file, sizeof(file), "%s/admin.token", dir);
    struct stat sb;
    ASSERT_EQ(stat(file, &sb), 0);
    ASSERT_EQ(sb.st_mode & 0777, 0600);
    char *secret = tout1("cat %s", file);
    ASSERT(strlen(secret) > 32);
    struct auth_info ai;
    ASSERT_EQ(auth_as(r, "Bearer %s", secret, &ai), 0);
    ASSERT(auth_is_admin(&ai));
    char first_id[40];
    snprintf(first_id, sizeof(first_id), "%s", ai.token_id);
    /* Second start: the same file, the same token, nothing new. */
    ASSERT_EQ(auth_bootstrap_admin(au, &cfg), 0);
    ASSERT_EQ(count_tokens(r), 1);
    /* An admin minted through the API survives rotations. */
    char *api_secret = NULL;
    mint(r, "token:ops", "admin", 0, &api_secret, NULL);
    ASSERT_EQ(auth_as(r, "Bearer %s", api_secret, &ai), 0);
    /* The environment names another secret: the old bootstrap token is revoked at once, even
     * while it sits in the cache, and the rotation is audited. */
    cfg.admin_token = "sk_rotated_admin_secret_000000000000";
    ASSERT_EQ(auth_bootstrap_admin(au, &cfg), 0);
    ASSERT_EQ(auth_as(r, "Bearer %s", secret, &ai), ERR_AUTH);
    ASSERT_EQ(auth_as(r, "Bearer %s", cfg.admin_token, &ai), 0);
    ASSERT(auth_is_admin(&ai));
    ASSERT_EQ(auth_as(r, "Bearer %s", api_secret, &ai), 0);
    ASSERT_EQ(count_tokens(r), 2);
    json_t *out = NULL;
    ASSERT_EQ(registry_audit_list(r, "admin.token_rotated", NULL, 10, NULL, &out), 0);
    json_t *e = json_array_get(json_object_get(out, "entries"), 0);
    ASSERT(e);
    ASSERT_STREQ(json_string_value(json_object_get(e, "target")), first_id);
    char *dump = json_dumps(out, 0);
    ASSERT(!strstr(dump, secret)); /* the audit names ids, never secrets */
    ASSERT(!strstr(dump, cfg.admin_token));
    free(dump);
    json_decref(out);
    free(secret);
    free(api_secret);
    close_reg(r);
}

TEST(bootstrap_refuses_an_unusable_admin_token_file)
{
    struct registry *r = open_reg();
    struct config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.data_dir = dir;
    cfg.admin_token = "";
    tsh("printf '' > %s/admin.token", dir); /* empty: not a secret */
    ASSERT(auth_bootstrap_admin(au, &cfg) < 0);
    ASSERT_EQ(count_tokens(r), 0);
    tsh("rm %s/admin.token && mkdir %s/admin.token", dir, dir); /* unreadable */
    ASSERT(auth_bootstrap_admin(au, &cfg) < 0);
    ASSERT_EQ(count_tokens(r), 0);
    close_reg(r);
}

/* The caches belong to their instance: an invalidation of one leaves another's entries. */
TEST(caches_belong_to_their_instance)
{
    struct registry *r = open_reg();
    struct auth *other = NULL;
    ASSERT_EQ(auth_new(r, &other), 0);
    char *s = NULL, *id = NULL;
    mint(r, "token:a", "user", 0, &s, &id);
    char *h = bearer("Bearer %s", s);
    struct auth_info ai;
    ASSERT_EQ(auth_bearer(au, h, &ai), 0);
    ASSERT_EQ(auth_bearer(other, h, &ai), 0);
    ASSERT_EQ(registry_token_delete(r, id, NULL), 0);
    auth_cache_invalidate(other);
    ASSERT_EQ(auth_bearer(other, h, &ai), ERR_AUTH);
    ASSERT_EQ(auth_bearer(au, h, &ai), 0); /* still within its own cache entry's life */
    auth_cache_invalidate(NULL);           /* a no-op */
    auth_free(other);
    auth_free(NULL);
    free(h);
    free(s);
    free(id);
    close_reg(r);
}

static const struct test_case tests[] = {
    T(bearer_header_forms),
    T(token_cache_lifetime_and_invalidation),
    T(cached_token_stops_at_its_expiry),
    T(token_cache_never_mixes_up_owners),
    T(session_roles_against_needs),
    T(access_cache_follows_membership_and_purge_after_invalidation),
    T(admin_and_impersonation_by_role),
    T(bootstrap_writes_reuses_and_rotates_the_admin_token),
    T(bootstrap_refuses_an_unusable_admin_token_file),
    T(caches_belong_to_their_instance),
};
TEST_MAIN(tests)
