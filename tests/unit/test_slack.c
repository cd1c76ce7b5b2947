/*
 * test_slack.c - the pure parts of the Slack integration: signature verification, mention
 * stripping, repository scoring, Block Kit result, and the webhook's answers without an app.
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/config.h"
#include "server/slack/slack.h"
#include "testlib.h"

#include <jansson.h>

static char *sign(const char *secret, const char *ts, const char *body)
{
    char *base = xasprintf("v0:%s:%s", ts, body);
    char mac[65];
    util_hmac_sha256_hex(secret, strlen(secret), base, strlen(base), mac);
    free(base);
    return xasprintf("v0=%s", mac);
}

TEST(verify_good)
{
    /* The worked example from Slack's documentation. */
    const char *secret = "8f742231b10e8888abcd99yyyzzz85a5";
    const char *ts = "1531420618";
    const char *body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
                       "channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name="
                       "roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2F"
                       "hooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZR"
                       "skXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6"
                       "703c";
    const char *sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    ASSERT_EQ(slack_verify(secret, ts, sig, body, strlen(body), 1531420618), 0);
    ASSERT_EQ(slack_verify(secret, ts, sig, body, strlen(body), 1531420618 + 299), 0);
}

TEST(verify_bad)
{
    const char *secret = "s3cret";
    const char *body = "{\"type\":\"event_callback\"}";
    char *sig = sign(secret, "1000000", body);
    ASSERT_EQ(slack_verify(secret, "1000000", sig, body, strlen(body), 1000000), 0);
    /* stale and future timestamps */
    ASSERT_EQ(slack_verify(secret, "1000000", sig, body, strlen(body), 1000000 + 301), ERR_AUTH);
    ASSERT_EQ(slack_verify(secret, "1000000", sig, body, strlen(body), 1000000 - 301), ERR_AUTH);
    /* timestamps whose distance from now does not fit in an int64 are stale too */
    static const char *const far[] = {"-9223372036854775808", "-9223372036854775000",
                                      "9223372036854775807", "-1"};
    for (size_t i = 0; i < sizeof far / sizeof far[0]; i++) {
        char *fs = sign(secret, far[i], body);
        ASSERT_EQ(slack_verify(secret, far[i], fs, body, strlen(body), 1000000), ERR_AUTH);
        free(fs);
    }
    /* tampered body, wrong secret, missing or malformed headers */
    ASSERT_EQ(slack_verify(secret, "1000000", sig, "{}", 2, 1000000), ERR_AUTH);
    ASSERT_EQ(slack_verify("other", "1000000", sig, body, strlen(body), 1000000), ERR_AUTH);
    ASSERT_EQ(slack_verify(secret, NULL, sig, body, strlen(body), 1000000), ERR_AUTH);
    ASSERT_EQ(slack_verify(secret, "1000000", NULL, body, strlen(body), 1000000), ERR_AUTH);
    ASSERT_EQ(slack_verify(secret, "10x", sig, body, strlen(body), 1000000), ERR_AUTH);
    ASSERT_EQ(slack_verify(secret, "1000000", sig + 3, body, strlen(body), 1000000), ERR_AUTH);
    char *up = xstrdup(sig);
    up[3] = up[3] == 'a' ? 'b' : 'a';
    ASSERT_EQ(slack_verify(secret, "1000000", up, body, strlen(body), 1000000), ERR_AUTH);
    ASSERT_EQ(slack_verify(NULL, "1000000", sig, body, strlen(body), 1000000), ERR_UNAVAILABLE);
    free(up);
    free(sig);
}

TEST(strip_mention)
{
    char *s = slack_strip_mention("<@U0BOT> fix the login bug");
    ASSERT_STREQ(s, "fix the login bug");
    free(s);
    s = slack_strip_mention("  <@U0BOT|sessiond>   hello &lt;b&gt; &amp; <https://x.io|x.io> ");
    ASSERT_STREQ(s, "hello <b> & x.io");
    free(s);
    s = slack_strip_mention("see <#C123|general> and <https://a.example/b>");
    ASSERT_STREQ(s, "see general and https://a.example/b");
    free(s);
    s = slack_strip_mention(NULL);
    ASSERT_STREQ(s, "");
    free(s);
    s = slack_strip_mention("<@U1>");
    ASSERT_STREQ(s, "");
    free(s);
    s = slack_strip_mention("unterminated <@U1");
    ASSERT_STREQ(s, "unterminated <@U1");
    free(s);
}

static const char *const web_hints[] = {"frontend", "react", "css", "login page"};
static const char *const api_hints[] = {"backend", "api", "database", "billing"};
static const char *const infra_hints[] = {"terraform", "kubernetes", "deploy"};

static const struct slack_repo repos[] = {
    {"acme/webapp", "The customer-facing single page application", web_hints, 4},
    {"acme/api", "REST service for accounts, billing and invoices", api_hints, 4},
    {"acme/infra", "Infrastructure as code for every environment", infra_hints, 3},
};

TEST(pick_repo)
{
    int scores[3];
    /* Message hints. */
    ASSERT_EQ(slack_pick_repo(repos, 3, "general", "", "the login page CSS is broken", scores), 0);
    ASSERT(scores[0] > 0);
    ASSERT_EQ(scores[2], 0);
    /* Explicit name wins over hints elsewhere. */
    ASSERT_EQ(slack_pick_repo(repos, 3, "frontend", "", "bump the deploy in infra", NULL), 2);
    /* Channel name alone. */
    ASSERT_EQ(slack_pick_repo(repos, 3, "team-billing", "", "the totals are off by one", NULL), 1);
    /* Thread context alone. */
    ASSERT_EQ(slack_pick_repo(repos, 3, "random", "we saw this in terraform plan yesterday",
                              "can you look", NULL),
              2);
    /* Description words. */
    ASSERT_EQ(slack_pick_repo(repos, 3, "random", "", "invoices have the wrong dates", NULL), 1);
    /* Nothing matches -> unknown; a tie -> unknown. */
    ASSERT_EQ(slack_pick_repo(repos, 3, "random", "", "what time is it", NULL), -1);
    ASSERT_EQ(slack_pick_repo(repos, 3, "random", "", "react and backend", scores), -1);
    ASSERT_EQ(scores[0], scores[1]);
    /* Word boundaries: "api" must not match inside "capital", case does not matter. */
    ASSERT_EQ(slack_pick_repo(repos, 3, "random", "", "Capitalize the TITLE", NULL), -1);
    ASSERT_EQ(slack_pick_repo(repos, 3, "random", "", "the API returns 500", NULL), 1);
    /* The message outweighs the channel; the result is deterministic. */
    for (int i = 0; i < 50; i++) {
        ASSERT_EQ(slack_pick_repo(repos, 3, "frontend", "", "kubernetes", NULL), 2);
    }
    ASSERT_EQ(slack_pick_repo(NULL, 0, "x", "y", "z", NULL), -1);
}

TEST(escape)
{
    char *s = slack_escape("<!channel> <@U123> <https://x.example|click> a&b", 1000);
    ASSERT_STREQ(s, "&lt;!channel&gt; &lt;@U123&gt; &lt;https://x.example|click&gt; a&amp;b");
    free(s);
    /* The cap never leaves half an entity or half a UTF-8 sequence. */
    s = slack_escape("ab<c", 5);
    ASSERT_STREQ(s, "ab");
    free(s);
    s = slack_escape("a\xc3\xa9", 2);
    ASSERT_STREQ(s, "a");
    free(s);
    s = slack_escape(NULL, 10);
    ASSERT_STREQ(s, "");
    free(s);
}

TEST(result_blocks)
{
    json_t *b =
        slack_result_blocks("acme/api", PROMPT_COMPLETED, "Fixed it. <b>",
                            "https://github.com/acme/api/pull/7", "https://s.example/#/s/s_1");
    ASSERT(json_is_array(b));
    ASSERT_EQ(json_array_size(b), 3);
    json_t *head = json_array_get(b, 0);
    ASSERT_STREQ(json_string_value(json_object_get(head, "type")), "section");
    const char *t = json_string_value(json_object_get(json_object_get(head, "text"), "text"));
    ASSERT(strstr(t, "acme/api") != NULL);
    const char *sum =
        json_string_value(json_object_get(json_object_get(json_array_get(b, 1), "text"), "text"));
    ASSERT_STREQ(sum, "Fixed it. &lt;b&gt;");
    json_t *act = json_array_get(b, 2);
    ASSERT_STREQ(json_string_value(json_object_get(act, "type")), "actions");
    ASSERT_EQ(json_array_size(json_object_get(act, "elements")), 2);
    json_decref(b);
    /* No links: no actions block; long summaries are cut under Slack's 3000 limit. */
    char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    b = slack_result_blocks(NULL, PROMPT_FAILED, big, NULL, NULL);
    ASSERT_EQ(json_array_size(b), 2);
    const char *s =
        json_string_value(json_object_get(json_object_get(json_array_get(b, 1), "text"), "text"));
    ASSERT(strlen(s) <= 3000);
    json_decref(b);
}

TEST(handler_without_app)
{
    int status = 0;
    char *body = NULL;
    slack_handle_events(NULL, "1", "v0=x", "{}", 2, &status, &body);
    ASSERT_EQ(status, 503);
    ASSERT(strstr(body, "signing_secret") != NULL);
    free(body);

    struct slack_config cfg = {0};
    cfg.signing_secret = "topsecret";
    struct slack *sl = NULL;
    ASSERT_EQ(slack_new(&cfg, NULL, &sl), 0);
    char ts[32];
    snprintf(ts, sizeof(ts), "%lld", (long long)(clock_now_ms() / 1000));
    const char *uv = "{\"type\":\"url_verification\",\"challenge\":\"abc123\"}";
    char *sig = sign("topsecret", ts, uv);
    slack_handle_events(sl, ts, sig, uv, strlen(uv), &status, &body);
    ASSERT_EQ(status, 200);
    ASSERT_STREQ(body, "{\"challenge\":\"abc123\"}");
    free(body);
    slack_handle_events(sl, ts, "v0=00", uv, strlen(uv), &status, &body);
    ASSERT_EQ(status, 401);
    free(body);
    slack_handle_events(sl, NULL, NULL, uv, strlen(uv), &status, &body);
    ASSERT_EQ(status, 401);
    free(body);
    free(sig);
    const char *ev = "{\"type\":\"event_callback\",\"event_id\":\"Ev1\",\"event\":{\"type\":"
                     "\"app_mention\",\"text\":\"<@U1> hi\"}}";
    sig = sign("topsecret", ts, ev);
    slack_handle_events(sl, ts, sig, ev, strlen(ev), &status, &body);
    ASSERT_EQ(status, 200);
    free(body);
    free(sig);
    const char *bad = "not json";
    sig = sign("topsecret", ts, bad);
    slack_handle_events(sl, ts, sig, bad, strlen(bad), &status, &body);
    ASSERT_EQ(status, 400);
    free(body);
    free(sig);
    struct slack_stats st;
    slack_get_stats(sl, &st);
    ASSERT_EQ(st.received, 1);
    ASSERT_EQ(st.rejected, 2);
    slack_free(sl);
    slack_free(NULL);
}

TEST(config_repos)
{
    struct config c;
    memset(&c, 0, sizeof(c));
    char *specs[] = {"webapp:frontend; react ;login page|The web app", "api", "infra|Terraform"};
    c.slack_repos.v = specs;
    c.slack_repos.n = 3;
    c.slack_signing_secret = "s";
    c.slack_bot_token = "";
    c.slack_api_base = "";
    c.public_url = "";
    c.slack_classifier_url = "";
    c.slack_classifier_key = "";
    c.slack_classifier_model = "";
    struct slack_config sc;
    slack_config_from(&sc, &c);
    ASSERT_STREQ(sc.signing_secret, "s");
    ASSERT(sc.bot_token == NULL);
    ASSERT(sc.api_base == NULL);
    ASSERT_EQ(json_array_size(sc.repos), 3);
    json_t *w = json_array_get(sc.repos, 0);
    ASSERT_STREQ(json_string_value(json_object_get(w, "name")), "webapp");
    ASSERT_STREQ(json_string_value(json_object_get(w, "description")), "The web app");
    json_t *h = json_object_get(w, "hints");
    ASSERT_EQ(json_array_size(h), 3);
    ASSERT_STREQ(json_string_value(json_array_get(h, 1)), "react");
    ASSERT_STREQ(json_string_value(json_array_get(h, 2)), "login page");
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(sc.repos, 1), "name")), "api");
    json_t *inf = json_array_get(sc.repos, 2);
    ASSERT_STREQ(json_string_value(json_object_get(inf, "name")), "infra");
    ASSERT_STREQ(json_string_value(json_object_get(inf, "description")), "Terraform");
    json_decref(sc.repos);
}

static const struct test_case tests[] = {
    T(verify_good), T(verify_bad),    T(strip_mention),       T(pick_repo),
    T(escape),      T(result_blocks), T(handler_without_app), T(config_repos),
};
TEST_MAIN(tests)
