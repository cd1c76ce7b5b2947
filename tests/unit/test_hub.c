/*
 * test_hub.c - the WebSocket hub without sockets: one-use tickets, presence of an unknown
 * session, events of unwatched sessions, and a clean start/stop of the lws thread and workers
 * against a real store (the socket paths are covered by tests/integration/test_ws*.mjs).
 */
#include "common/err.h"
#include "common/util.h"
#include "server/app.h"
#include "server/ws/hub.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "testlib.h"

#include <jansson.h>
#include <string.h>
#include <unistd.h>

static struct auth_info who(const char *user, const char *role)
{
    struct auth_info a;
    memset(&a, 0, sizeof(a));
    snprintf(a.user_id, sizeof(a.user_id), "%s", user);
    snprintf(a.role, sizeof(a.role), "%s", role);
    snprintf(a.token_id, sizeof(a.token_id), "tok_%s", role);
    return a;
}

static struct auth_info alice(void)
{
    struct auth_info a;
    memset(&a, 0, sizeof(a));
    snprintf(a.user_id, sizeof(a.user_id), "token:alice");
    snprintf(a.name, sizeof(a.name), "Alice");
    snprintf(a.role, sizeof(a.role), "user");
    return a;
}

TEST(ticket_is_one_use)
{
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    struct auth_info a = alice(), got;
    char t[65], role[16];
    ASSERT_EQ(hub_ticket_create(h, "s_1", &a, "writer", 60000, t), 0);
    ASSERT_EQ(strlen(t), 64);
    ASSERT_EQ(hub_ticket_take(h, t, "s_1", &got, role), 0);
    ASSERT_STREQ(got.user_id, "token:alice");
    ASSERT_STREQ(role, "writer");
    ASSERT_EQ(hub_ticket_take(h, t, "s_1", &got, role), ERR_AUTH);
    hub_free(h);
}

TEST(ticket_is_bound_to_its_session_and_burnt_by_a_wrong_use)
{
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    struct auth_info a = alice(), got;
    char t[65], role[16];
    ASSERT_EQ(hub_ticket_create(h, "s_1", &a, "viewer", 60000, t), 0);
    ASSERT_EQ(hub_ticket_take(h, t, "s_2", &got, role), ERR_AUTH);
    ASSERT_EQ(hub_ticket_take(h, t, "s_1", &got, role), ERR_AUTH);
    ASSERT_EQ(hub_ticket_take(h, "not-a-ticket", "s_1", &got, role), ERR_AUTH);
    hub_free(h);
}

TEST(ticket_expires)
{
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    struct auth_info a = alice(), got;
    char t[65], role[16];
    ASSERT_EQ(hub_ticket_create(h, "s_1", &a, "writer", 1, t), 0);
    usleep(5000);
    ASSERT_EQ(hub_ticket_take(h, t, "s_1", &got, role), ERR_AUTH);
    hub_free(h);
}

/* ---- WebSocket tickets: identity, roles, revocation, expiry, cap ---- */

TEST(tickets_carry_identity_and_role_and_are_single_use)
{
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    struct auth_info a = who("token:alice", "user"), got;
    char t1[65], t2[65], role[16];
    ASSERT_EQ(hub_ticket_create(h, "s1", &a, "owner", 60000, t1), 0);
    ASSERT_EQ(hub_ticket_create(h, "s1", &a, NULL, 60000, t2), 0);
    ASSERT(strcmp(t1, t2) != 0);
    ASSERT_EQ(hub_ticket_take(h, t2, "s1", &got, role), 0);
    ASSERT_STREQ(role, "viewer"); /* no role given: the least */
    ASSERT_EQ(hub_ticket_take(h, t1, "s1", &got, role), 0);
    ASSERT_STREQ(role, "owner");
    ASSERT_STREQ(got.user_id, "token:alice");
    ASSERT_STREQ(got.token_id, "tok_user");
    ASSERT_EQ(hub_ticket_take(h, t1, "s1", &got, role), ERR_AUTH);
    /* A ticket differing in one character is not a ticket. */
    ASSERT_EQ(hub_ticket_create(h, "s1", &a, "writer", 60000, t1), 0);
    char wrong[65];
    memcpy(wrong, t1, 65);
    wrong[0] = wrong[0] == 'a' ? 'b' : 'a';
    ASSERT_EQ(hub_ticket_take(h, wrong, "s1", &got, role), ERR_AUTH);
    ASSERT_EQ(hub_ticket_take(h, t1, "s1", &got, role), 0);
    hub_free(h);
}

TEST(tickets_are_voided_when_their_token_or_membership_ends)
{
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    struct auth_info alice = who("token:alice", "user"), bob = who("token:bob", "user"),
                     root = who("token:bob", "admin"), got;
    snprintf(alice.token_id, sizeof(alice.token_id), "tok_alice");
    snprintf(bob.token_id, sizeof(bob.token_id), "tok_bob");
    snprintf(root.token_id, sizeof(root.token_id), "tok_root");
    char ta1[65], ta2[65], tb1[65], tb2[65], tr[65], role[16];
    ASSERT_EQ(hub_ticket_create(h, "s1", &alice, "writer", 60000, ta1), 0);
    ASSERT_EQ(hub_ticket_create(h, "s2", &alice, "writer", 60000, ta2), 0);
    ASSERT_EQ(hub_ticket_create(h, "s1", &bob, "writer", 60000, tb1), 0);
    ASSERT_EQ(hub_ticket_create(h, "s2", &bob, "writer", 60000, tb2), 0);
    ASSERT_EQ(hub_ticket_create(h, "s1", &root, "owner", 60000, tr), 0);
    /* Alice's token is revoked: all her tickets, in every session, are void. */
    hub_revoke_token(h, "tok_alice");
    ASSERT_EQ(hub_ticket_take(h, ta1, "s1", &got, role), ERR_AUTH);
    ASSERT_EQ(hub_ticket_take(h, ta2, "s2", &got, role), ERR_AUTH);
    /* Bob leaves s1: his ticket for s1 is void, the one for s2 is not, and the same user's
     * admin token keeps its ticket (admins see every session). */
    hub_revoke_member(h, "s1", "token:bob");
    ASSERT_EQ(hub_ticket_take(h, tb1, "s1", &got, role), ERR_AUTH);
    ASSERT_EQ(hub_ticket_take(h, tb2, "s2", &got, role), 0);
    ASSERT_EQ(hub_ticket_take(h, tr, "s1", &got, role), 0);
    ASSERT_STREQ(got.role, "admin");
    hub_revoke_token(NULL, "tok_x");
    hub_revoke_token(h, "");
    hub_revoke_member(h, NULL, "x");
    hub_free(h);
}

TEST(tickets_expire_and_are_capped)
{
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    struct auth_info a = who("token:alice", "user"), got;
    char t[65], role[16];
    ASSERT_EQ(hub_ticket_create(h, "s1", &a, "writer", 50, t), 0);
    usleep(80000);
    ASSERT_EQ(hub_ticket_take(h, t, "s1", &got, role), ERR_AUTH);
    /* 10,000 outstanding: the next is refused, until some are used. */
    char first[65];
    int i;
    for (i = 0; i < 10000; i++) {
        ASSERT_EQ(hub_ticket_create(h, "s1", &a, "writer", 60000, i == 0 ? first : t), 0);
    }
    ASSERT_EQ(hub_ticket_create(h, "s1", &a, "writer", 60000, t), ERR_LIMIT);
    ASSERT_EQ(t[0], 0);
    ASSERT_EQ(hub_ticket_take(h, first, "s1", &got, role), 0);
    ASSERT_EQ(hub_ticket_create(h, "s1", &a, "writer", 60000, t), 0);
    hub_free(h);
}

TEST(presence_of_unknown_session_is_empty)
{
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    json_t *p = hub_presence(h, "s_nobody");
    ASSERT(json_is_array(p));
    ASSERT_EQ(json_array_size(p), 0);
    json_decref(p);
    hub_free(h);
    hub_free(NULL);
}

TEST(start_publish_stop)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-hub.XXXXXX");
    ASSERT(mkdtemp(dir));
    struct hub *h = NULL;
    ASSERT_EQ(hub_new(NULL, &h), 0);
    struct store_config cfg = {.data_dir = dir, .on_event = hub_on_event, .on_event_ctx = h};
    struct store *st = NULL;
    ASSERT_EQ(store_open(&cfg, &st), 0);
    struct app app;
    memset(&app, 0, sizeof(app));
    app.store = st;
    app.reg = store_registry(st);
    app.hub = h;
    ASSERT_EQ(hub_start(h, &app), 0);
    struct session_new n = {.id = "s_hub", .title = "t", .visibility = "org", .created_by = "x"};
    ASSERT_EQ(registry_session_create(app.reg, &n, NULL), 0);
    ASSERT_EQ(store_session_create(st, "s_hub"), 0);
    struct sess *s = NULL;
    ASSERT_EQ(store_session_get(st, "s_hub", &s), 0);
    for (int i = 0; i < 100; i++) {
        ASSERT_EQ(sess_append(s, "message", NULL, "{\"content\":\"x\"}", NULL), 0);
    }
    sess_put(s);
    struct hub_stats hs;
    hub_get_stats(h, &hs);
    ASSERT(hs.events_in >= 100);
    ASSERT_EQ(hs.clients, 0);
    ASSERT_EQ(hs.sessions, 0);
    hub_free(h);
    store_close(st);
    util_rm_rf(dir);
}

/* Client frames: kinds, field checks, and the kind kept on a field error (floods of typing or
 * status frames are dropped before their fields are judged). */
TEST(frame_parse)
{
    struct hub_frame f;
    char msg[200];
#define PARSE(s) hub_frame_parse((s), strlen(s), &f, msg, sizeof msg)
    ASSERT_EQ(PARSE("{\"type\":\"ping\",\"id\":3}"), 0);
    ASSERT_EQ(f.kind, HUB_FRAME_PING);
    json_decref(f.obj);
    ASSERT_EQ(PARSE("{\"type\":\"typing\"}"), 0);
    ASSERT(f.kind == HUB_FRAME_TYPING && f.typing == 1);
    json_decref(f.obj);
    ASSERT_EQ(PARSE("{\"type\":\"typing\",\"typing\":false}"), 0);
    ASSERT_EQ(f.typing, 0);
    json_decref(f.obj);
    ASSERT_EQ(PARSE("{\"type\":\"typing\",\"typing\":1}"), ERR_INVALID);
    ASSERT(f.kind == HUB_FRAME_TYPING && f.obj == NULL);
    ASSERT_EQ(PARSE("{\"type\":\"status\",\"status\":\"away\"}"), 0);
    ASSERT_STREQ(f.status, "away");
    json_decref(f.obj);
    ASSERT_EQ(PARSE("{\"type\":\"status\",\"status\":\"gone\"}"), ERR_INVALID);
    ASSERT(f.kind == HUB_FRAME_STATUS && f.status == NULL);
    ASSERT_STREQ(msg, "field 'status' must be active, idle or away");
    ASSERT_EQ(PARSE("{\"type\":\"prompt\",\"content\":\"x\"}"), 0);
    ASSERT_EQ(f.kind, HUB_FRAME_PROMPT);
    json_decref(f.obj);
    ASSERT_EQ(PARSE("{\"type\":\"cancel\"}"), 0);
    ASSERT_EQ(f.kind, HUB_FRAME_CANCEL);
    json_decref(f.obj);
    ASSERT_EQ(PARSE("{\"type\":7}"), ERR_INVALID);
    ASSERT_STREQ(msg, "frame needs a string field 'type'");
    ASSERT_EQ(PARSE("{\"type\":\"shout\"}"), ERR_INVALID);
    ASSERT(f.kind == 0 && strstr(msg, "unknown frame type 'shout'"));
    ASSERT_EQ(PARSE("[1]"), ERR_INVALID);
    ASSERT_EQ(hub_frame_parse("{\"type\":\"ping\"}", 5, &f, msg, sizeof msg), ERR_INVALID);
#undef PARSE
}

static const struct test_case tests[] = {
    T(ticket_is_one_use),
    T(ticket_is_bound_to_its_session_and_burnt_by_a_wrong_use),
    T(ticket_expires),
    T(tickets_carry_identity_and_role_and_are_single_use),
    T(tickets_are_voided_when_their_token_or_membership_ends),
    T(tickets_expire_and_are_capped),
    T(presence_of_unknown_session_is_empty),
    T(start_publish_stop),
    T(frame_parse),
};
TEST_MAIN(tests)
