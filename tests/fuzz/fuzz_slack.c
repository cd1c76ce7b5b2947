/*
 * fuzz_slack.c - the Slack webhook (POST /v1/slack/events) as an attacker sees it: signature
 * and timestamp verification, then the event JSON, then what an app_mention's text goes
 * through (mention stripping, the repository router) and the Block Kit reply builder.
 *
 * Input: "MODE\nTIMESTAMP\nSIGNATURE\nCHANNEL-NAME\nTHREAD-TEXT\nBODY". MODE's first byte
 * picks how the request is signed: 'v' (or anything else) correctly, now; 'x' with the given
 * TIMESTAMP and SIGNATURE as they are; 's' correctly but with the given TIMESTAMP.
 * Properties: a request is accepted only with the right HMAC over "v0:TS:BODY" and a fresh
 * timestamp; every answer is a JSON object with a status of 200, 400 or 401; a url_verification
 * answer echoes the challenge; the router picks an existing repository or none.
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "server/slack/slack.h"

#include "fuzzlib.h"

#include <inttypes.h>

#define SECRET "8f742231b10e8888abcd99yyyzzz85a5"

static struct slack *sl; /* this harness process's one integration (app NULL: no actions) */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_OFF);
    struct slack_config c = {.signing_secret = SECRET, .poll_ms = 1000};
    FZ_CHECK(slack_new(&c, NULL, &sl) == 0);
    return 0;
}

static void sign(const char *ts, const char *body, size_t len, char out[70])
{
    char *base = malloc(strlen(ts) + len + 5);
    size_t n = (size_t)snprintf(base, strlen(ts) + 5, "v0:%s:", ts);
    memcpy(base + n, body, len);
    char mac[65];
    util_hmac_sha256_hex(SECRET, strlen(SECRET), base, n + len, mac);
    snprintf(out, 70, "v0=%s", mac);
    free(base);
}

static void check_verify(const char *ts, const char *sig, const char *body, size_t len, int64_t now)
{
    char want[70];
    int64_t t;
    int rc = slack_verify(SECRET, ts, sig, body, len, now);
    FZ_CHECK(rc == 0 || rc == ERR_AUTH);
    if (rc == 0) {
        sign(ts, body, len, want);
        FZ_CHECK(strcmp(sig, want) == 0);
        FZ_CHECK(util_parse_i64(ts, &t) == 0 && t - now <= SLACK_MAX_SKEW_S &&
                 now - t <= SLACK_MAX_SKEW_S);
    }
    FZ_CHECK(slack_verify(NULL, ts, sig, body, len, now) == ERR_UNAVAILABLE);
}

static void check_text(json_t *payload, const char *chan, const char *thread)
{
    static const char *const hints_a[] = {"billing", "invoice pdf"};
    static const char *const hints_b[] = {"frontend", "react"};
    static const struct slack_repo repos[] = {
        {"acme/billing-api", "Billing service: invoices, payments and refunds", hints_a, 2},
        {"acme/web", "The web frontend", hints_b, 2},
        {"tools", NULL, NULL, 0},
    };
    int scores[3];
    json_t *ev = json_object_get(payload, "event");
    const char *text = json_string_value(json_object_get(ev, "text"));
    char *msg = slack_strip_mention(text);
    FZ_CHECK(msg != NULL);
    int best = slack_pick_repo(repos, 3, chan, thread, msg, scores);
    FZ_CHECK(best >= -1 && best < 3);
    if (best >= 0) {
        for (int i = 0; i < 3; i++) {
            FZ_CHECK(scores[i] >= 0 && (i == best || scores[i] < scores[best]));
        }
    }
    json_t *blocks = slack_result_blocks(best >= 0 ? repos[best].name : NULL, PROMPT_COMPLETED, msg,
                                         json_string_value(json_object_get(ev, "pr")), text);
    char *s = json_dumps(blocks, JSON_COMPACT);
    FZ_CHECK(s != NULL);
    free(s);
    json_decref(blocks);
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = {data, size};
    size_t len;
    char *mode = fz_field(&f, NULL);
    char *ts_in = fz_field(&f, NULL);
    char *sig_in = fz_field(&f, NULL);
    char *chan = fz_field(&f, NULL);
    char *thread = fz_field(&f, NULL);
    char *body = fz_rest(&f, &len);
    int64_t now = clock_now_ms() / 1000;
    char ts[32], sig[70];
    const char *use_ts = ts, *use_sig = sig;
    snprintf(ts, sizeof ts, "%" PRId64, now);
    if (mode[0] == 'x') {
        use_ts = ts_in;
        use_sig = sig_in;
    } else if (mode[0] == 's') {
        use_ts = ts_in;
        sign(ts_in, body, len, sig);
    } else {
        sign(ts, body, len, sig);
    }
    check_verify(use_ts, use_sig, body, len, now);

    int status = 0;
    char *out = NULL;
    slack_handle_events(sl, use_ts, use_sig, body, len, &status, &out);
    FZ_CHECK(status == 200 || status == 400 || status == 401);
    json_t *ans = json_loads(out, 0, NULL);
    FZ_CHECK(json_is_object(ans));
    json_t *payload = json_loadb(body, len, 0, NULL);
    const char *type = json_string_value(json_object_get(payload, "type"));
    if (status == 200 && type && strcmp(type, "url_verification") == 0) {
        const char *ch = json_string_value(json_object_get(payload, "challenge"));
        const char *echo = json_string_value(json_object_get(ans, "challenge"));
        FZ_CHECK(echo && strcmp(echo, ch ? ch : "") == 0);
    }
    if (status == 200 && json_is_object(payload)) {
        check_text(payload, chan, thread);
    }
    json_decref(payload);
    json_decref(ans);
    free(out);
    free(mode);
    free(ts_in);
    free(sig_in);
    free(chan);
    free(thread);
    free(body);
    return 0;
}
