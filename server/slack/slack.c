/*
 * slack.c - the Slack Events API webhook target and the bot that works in Slack threads.
 *
 * Flow: an HTTP thread calls slack_handle_events(); it verifies the signature, answers
 * url_verification at once, and for an event_callback records the event_id in the registry
 * kv (a retry finds it there and is dropped), queues the payload for the worker thread and
 * answers 200 — all without network I/O, well inside Slack's 3-second budget.
 *
 * The worker handles app_mention events: it strips the mention, reads the channel name and
 * the thread (conversations.info / conversations.replies) and picks a repository
 * (slack_pick_repo over hints and descriptions, optionally an OpenAI-compatible classifier
 * first, with the hints as the fallback on any error). It then starts or continues the
 * session mapped to the thread (kv "slack:thread:{channel}:{thread_ts}" -> session id) and
 * forwards the prompt. Sessions and messages are created in process through the operations
 * every transport uses (server/ops.h), as the actor "slack:bot" (role bot), so a Slack prompt
 * gets exactly the same validation, idempotency (client_request_id = event_id) and queueing
 * as any client, and the Slack user is the author (bots may pass `author`). No token exists
 * for the integration and no request goes back to our own HTTP port.
 *
 * The watcher thread learns how a prompt ends from the session's events: the store's event
 * observer (slack_on_event, on the committing thread under the session lock) copies each
 * event of a watched session into a bounded queue and wakes the watcher, never blocking.
 * A new or resumed watch (and one whose events overflowed the queue) first reads what it
 * missed from the session file; events are de-duplicated by seq. When the prompt ends the
 * result is posted in the thread as Block Kit blocks. The watches are saved in the registry kv
 * ("slack:watches") and resumed at start, so a result is posted even across a restart.
 *
 * Threads: HTTP threads (handle_events), one worker, one watcher. Shared state (queue,
 * watches, counters) is guarded by sl->lock. Slack Web API calls honour 429 Retry-After.
 * Secrets (signing secret, bot token) never reach a log line.
 */
#include "server/slack/slack.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/ops.h"
#include "workspace/repos.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <ctype.h>
#include <errno.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_QUEUE      1000
#define MAX_WATCHES    1000
#define MAX_EVENTS     4096 /* queued events of watched sessions; beyond, a re-read */
#define MAX_RESP       (4u << 20)
#define MAX_SUMMARY    2800 /* Slack section text limit is 3000 */
#define API_TRIES      4
#define SLACK_ACTOR_ID "slack:bot" /* sessions the integration starts are owned by it */
#define MAX_RETRY_WAIT 30

struct job {
    struct job *next;
    json_t *payload; /* the event_callback body; owned */
};

struct watch {
    struct watch *next;
    char *session_id;
    char *prompt_id;
    char *channel;
    char *thread_ts;
    char *repo;
    int64_t after;     /* last seq seen */
    struct buf output; /* tail of agent output, fallback summary */
    char *summary;     /* from an assistant message / agent done */
    char *pr_url;
    int64_t started_ms;
    int resync;              /* read the file after `after` first; guarded by sl->lock */
    int done, gone, catchup; /* watcher thread only */
    enum prompt_state state; /* watcher thread only: how the prompt ended */
};

/* An event of a watched session, copied by slack_on_event for the watcher. */
struct sevent {
    struct sevent *next;
    char *session_id;
    int64_t seq;
    char *json;
    size_t len;
};

struct slack {
    char *signing_secret;
    char *bot_token;
    char *api_base;
    char *public_url;
    char *classifier_url;
    char *classifier_key;
    char *classifier_model;
    json_t *repos; /* config fallback list */
    struct app *app;

    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t cond;  /* worker wake-up */
    pthread_cond_t wcond; /* watcher wake-up */
    int stopping;         /* also read without the lock (atomic) by the curl progress callback */
    struct job *head, *tail;
    int qlen;
    struct watch *watches; /* added by the worker, removed (and freed) by the watcher only */
    int nwatches;
    struct sevent *ev_head, *ev_tail; /* from slack_on_event to the watcher */
    int nev;
    char *local_url; /* http://127.0.0.1:PORT, for links when public_url is not set */
    struct slack_stats stats;

    json_t *persist;           /* {"sid/pid": {watch}}: the watches, saved in kv "slack:watches" */
    pthread_mutex_t save_lock; /* orders the kv writes of persist (taken before lock) */

    pthread_t worker, watcher;
    int threads;
};

/* ------------------------------------------------------------------------------------------ */
/* configuration                                                                               */

static const char *obj_str(json_t *obj, const char *key)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    return json_is_string(v) && json_string_length(v) ? json_string_value(v) : NULL;
}

static const char *nonempty(const char *s)
{
    return s && *s ? s : NULL;
}

void slack_config_from(struct slack_config *sc, const struct config *c)
{
    memset(sc, 0, sizeof(*sc));
    sc->signing_secret = nonempty(c->slack_signing_secret);
    sc->bot_token = nonempty(c->slack_bot_token);
    sc->api_base = nonempty(c->slack_api_base);
    sc->public_url = nonempty(c->public_url);
    sc->classifier_url = nonempty(c->slack_classifier_url);
    sc->classifier_key = nonempty(c->slack_classifier_key);
    sc->classifier_model = nonempty(c->slack_classifier_model);
    sc->repos = json_array();
    for (size_t i = 0; i < c->slack_repos.n; i++) {
        /* "name:hint;hint|description" */
        const char *spec = c->slack_repos.v[i];
        const char *colon = strchr(spec, ':');
        const char *bar = strchr(spec, '|');
        size_t nlen = colon ? (size_t)(colon - spec) : bar ? (size_t)(bar - spec) : strlen(spec);
        char *name = xstrndup(spec, nlen);
        json_t *o = json_pack("{s:s, s:[]}", "name", name, "hints");
        free(name);
        if (colon) {
            const char *h = colon + 1;
            const char *hend = bar && bar > colon ? bar : spec + strlen(spec);
            while (h < hend) {
                const char *semi = memchr(h, ';', (size_t)(hend - h));
                const char *e = semi ? semi : hend;
                const char *t = e;
                while (h < t && *h == ' ') {
                    h++;
                }
                while (t > h && t[-1] == ' ') {
                    t--;
                }
                if (t > h) {
                    json_array_append_new(json_object_get(o, "hints"),
                                          json_stringn(h, (size_t)(t - h)));
                }
                h = e + 1;
            }
        }
        if (bar) {
            json_object_set_new(o, "description", json_string(bar + 1));
        }
        json_array_append_new(sc->repos, o);
    }
}

static char *dup_or_null(const char *s)
{
    return s && *s ? xstrdup(s) : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* verification                                                                                */

int slack_verify(const char *secret, const char *ts, const char *sig, const char *body, size_t len,
                 int64_t now_s)
{
    if (!secret || !*secret) {
        return ERR_UNAVAILABLE;
    }
    if (!ts || !sig || strncmp(sig, "v0=", 3) != 0) {
        return ERR_AUTH;
    }
    int64_t t = 0;
    if (util_parse_i64(ts, &t) != 0) {
        return ERR_AUTH;
    }
    /* ts is the sender's, any int64: compare against the window's ends rather than computing
     * now_s - t, which overflows for timestamps near INT64_MIN and came out "fresh". */
    if (t < now_s - SLACK_MAX_SKEW_S || t > now_s + SLACK_MAX_SKEW_S) {
        return ERR_AUTH;
    }
    struct buf base;
    buf_init(&base, 0);
    buf_printf(&base, "v0:%s:", ts);
    buf_append(&base, body, len);
    char mac[65];
    util_hmac_sha256_hex(secret, strlen(secret), base.data, base.len, mac);
    buf_free(&base);
    /* Slack sends lowercase hex; compare the whole "v0=<hex>" in constant time. */
    char want[70];
    snprintf(want, sizeof(want), "v0=%s", mac);
    return util_ct_equal(want, strlen(want), sig, strlen(sig)) ? 0 : ERR_AUTH;
}

/* ------------------------------------------------------------------------------------------ */
/* text helpers                                                                                */

char *slack_strip_mention(const char *text)
{
    struct buf out;
    buf_init(&out, 0);
    buf_puts(&out, "");
    const char *p = text ? text : "";
    while (*p) {
        if (*p == '<') {
            const char *end = strchr(p, '>');
            if (end) {
                const char *in = p + 1;
                size_t n = (size_t)(end - in);
                const char *bar = memchr(in, '|', n);
                if (n > 0 && in[0] == '@') {
                    /* a user mention: dropped */
                } else if (n > 0 && (in[0] == '#' || in[0] == '!')) {
                    /* channel / special mention: keep the label if any */
                    if (bar) {
                        buf_append(&out, bar + 1, (size_t)(end - bar - 1));
                    }
                } else if (bar) {
                    buf_append(&out, bar + 1, (size_t)(end - bar - 1)); /* <url|label> */
                } else {
                    buf_append(&out, in, n); /* <url> */
                }
                p = end + 1;
                continue;
            }
        }
        buf_putc(&out, *p++);
    }
    /* Slack escapes &, <, > in message text. */
    struct buf dec;
    buf_init(&dec, 0);
    buf_puts(&dec, "");
    for (size_t i = 0; i < out.len;) {
        if (strncmp(out.data + i, "&amp;", 5) == 0) {
            buf_putc(&dec, '&');
            i += 5;
        } else if (strncmp(out.data + i, "&lt;", 4) == 0) {
            buf_putc(&dec, '<');
            i += 4;
        } else if (strncmp(out.data + i, "&gt;", 4) == 0) {
            buf_putc(&dec, '>');
            i += 4;
        } else {
            buf_putc(&dec, out.data[i++]);
        }
    }
    buf_free(&out);
    size_t start = 0, end = dec.len;
    while (start < end && isspace((unsigned char)dec.data[start])) {
        start++;
    }
    while (end > start && isspace((unsigned char)dec.data[end - 1])) {
        end--;
    }
    char *r = xstrndup(dec.data + start, end - start);
    buf_free(&dec);
    return r;
}

char *slack_escape(const char *text, size_t max)
{
    struct buf out;
    buf_init(&out, 0);
    buf_puts(&out, "");
    for (const char *p = text ? text : ""; *p; p++) {
        const char *piece = *p == '&' ? "&amp;" : *p == '<' ? "&lt;" : *p == '>' ? "&gt;" : NULL;
        size_t n = piece ? strlen(piece) : 1;
        if (out.len + n > max) {
            break; /* never half an entity */
        }
        if (piece) {
            buf_puts(&out, piece);
        } else {
            buf_putc(&out, *p);
        }
    }
    /* Entities are ASCII, so a cut between pieces can only split a UTF-8 sequence. */
    out.len = util_utf8_complete_prefix(out.data, out.len);
    out.data[out.len] = 0;
    size_t len;
    return buf_detach(&out, &len);
}

/* Lowercase s into a new string where every run of non-alphanumerics is one space, with a
 * space at both ends, so " word " and " two words " match on word boundaries. */
static char *normalize(const char *s)
{
    struct buf b;
    buf_init(&b, 0);
    buf_putc(&b, ' ');
    int space = 1;
    for (const char *p = s ? s : ""; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) || c >= 0x80) {
            buf_putc(&b, (char)tolower(c));
            space = 0;
        } else if (!space) {
            buf_putc(&b, ' ');
            space = 1;
        }
    }
    if (!space) {
        buf_putc(&b, ' ');
    }
    size_t n;
    return buf_detach(&b, &n);
}

/* 1 if the normalized phrase (" a b ") occurs in the normalized text. */
static int has_phrase(const char *text, const char *phrase)
{
    return phrase[0] && phrase[1] && strstr(text, phrase) != NULL;
}

static const char *const stopwords[] = {
    "the", "and",  "for",  "with", "that",       "this", "from",    "into",   "your",
    "our", "are",  "was",  "not",  "but",        "can",  "all",     "any",    "its",
    "has", "have", "will", "repo", "repository", "code", "service", "please", "fix",
    "add", "make", "used", "uses", "using",      NULL};

static int is_stop(const char *w, size_t n)
{
    if (n < 4) {
        return 1;
    }
    for (int i = 0; stopwords[i]; i++) {
        if (strlen(stopwords[i]) == n && memcmp(stopwords[i], w, n) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * The score of one repository. Weights: an explicit name in the message wins (+10), the name
 * in the channel (+6) or thread (+4); each hint in the message (+5), channel name (+4) or
 * thread (+2); each distinct description word of 4+ letters (not a stop word) in the message
 * (+1) or thread (+1, capped at 3 per repository for the thread). Everything is computed on
 * normalized text, so the result does not depend on case or punctuation.
 */
static int score_one(const struct slack_repo *r, const char *chan, const char *thread,
                     const char *msg)
{
    int score = 0;
    char *name = normalize(r->name);
    /* "org/name" -> also try the last path part. */
    const char *slash = r->name ? strrchr(r->name, '/') : NULL;
    char *base = slash ? normalize(slash + 1) : NULL;
    if (has_phrase(msg, name) || (base && has_phrase(msg, base))) {
        score += 10;
    }
    if (has_phrase(chan, name) || (base && has_phrase(chan, base))) {
        score += 6;
    }
    if (has_phrase(thread, name) || (base && has_phrase(thread, base))) {
        score += 4;
    }
    free(name);
    free(base);
    for (size_t i = 0; i < r->nhints; i++) {
        char *h = normalize(r->hints[i]);
        if (has_phrase(chan, h)) {
            score += 4;
        }
        if (has_phrase(msg, h)) {
            score += 5;
        }
        if (has_phrase(thread, h)) {
            score += 2;
        }
        free(h);
    }
    if (r->description) {
        char *d = normalize(r->description);
        int thread_hits = 0;
        /* Walk the distinct words of the description. */
        for (char *w = d + 1; *w;) {
            char *e = strchr(w, ' ');
            if (!e) {
                break;
            }
            size_t n = (size_t)(e - w);
            int seen = 0;
            for (char *q = d + 1; q < w; q++) {
                if ((q == d + 1 || q[-1] == ' ') && strncmp(q, w, n) == 0 && q[n] == ' ') {
                    seen = 1;
                    break;
                }
            }
            if (!seen && !is_stop(w, n)) {
                char pat[80];
                if (n + 3 <= sizeof(pat)) {
                    pat[0] = ' ';
                    memcpy(pat + 1, w, n);
                    pat[n + 1] = ' ';
                    pat[n + 2] = 0;
                    if (strstr(msg, pat)) {
                        score += 1;
                    }
                    if (thread_hits < 3 && strstr(thread, pat)) {
                        score += 1;
                        thread_hits++;
                    }
                }
            }
            w = e + 1;
        }
        free(d);
    }
    return score;
}

int slack_pick_repo(const struct slack_repo *repos, size_t n, const char *channel_name,
                    const char *thread_text, const char *message, int *scores)
{
    char *chan = normalize(channel_name);
    char *thread = normalize(thread_text);
    char *msg = normalize(message);
    int best = -1, best_score = 0, tie = 0;
    for (size_t i = 0; i < n; i++) {
        int s = score_one(&repos[i], chan, thread, msg);
        if (scores) {
            scores[i] = s;
        }
        if (s > best_score) {
            best = (int)i;
            best_score = s;
            tie = 0;
        } else if (s == best_score && s > 0) {
            tie = 1;
        }
    }
    free(chan);
    free(thread);
    free(msg);
    return tie ? -1 : best;
}

/* What Slack calls the end of a prompt ("Done" for completed and anything else). */
static const char *state_verb(enum prompt_state state)
{
    return state == PROMPT_FAILED ? "Failed" : state == PROMPT_CANCELLED ? "Cancelled" : "Done";
}

json_t *slack_result_blocks(const char *repo, enum prompt_state state, const char *summary,
                            const char *pr_url, const char *session_url)
{
    const char *icon = ":white_check_mark:";
    const char *verb = state_verb(state);
    if (state == PROMPT_FAILED) {
        icon = ":x:";
    } else if (state == PROMPT_CANCELLED) {
        icon = ":no_entry_sign:";
    }
    json_t *blocks = json_array();
    char *erepo = slack_escape(repo ? repo : "session", 200);
    char *head = xasprintf("%s *%s* in `%s`", icon, verb, erepo);
    free(erepo);
    json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s}}", "type", "section", "text",
                                            "type", "mrkdwn", "text", head));
    free(head);
    if (summary && *summary) {
        /* The summary is the agent's output: escaped, so <!channel>, <@U…> and <url|label>
         * in it are shown as text, never pinged or linked. */
        char *s = slack_escape(summary, MAX_SUMMARY);
        json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s}}", "type", "section", "text",
                                                "type", "mrkdwn", "text", s));
        free(s);
    }
    json_t *elements = json_array();
    if (pr_url && *pr_url) {
        json_array_append_new(elements,
                              json_pack("{s:s, s:{s:s, s:s}, s:s, s:s}", "type", "button", "text",
                                        "type", "plain_text", "text", "Open pull request", "url",
                                        pr_url, "action_id", "open_pr"));
    }
    if (session_url && *session_url) {
        json_array_append_new(elements,
                              json_pack("{s:s, s:{s:s, s:s}, s:s, s:s}", "type", "button", "text",
                                        "type", "plain_text", "text", "Open session", "url",
                                        session_url, "action_id", "open_session"));
    }
    if (json_array_size(elements)) {
        json_array_append_new(blocks,
                              json_pack("{s:s, s:o}", "type", "actions", "elements", elements));
    } else {
        json_decref(elements);
    }
    return blocks;
}

/* ------------------------------------------------------------------------------------------ */
/* HTTP client (libcurl)                                                                       */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct buf *b = ud;
    return buf_append(b, p, size * n) == 0 ? size * n : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    long *retry_after = ud;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0) {
        char tmp[32];
        size_t k = len - 12 < sizeof(tmp) - 1 ? len - 12 : sizeof(tmp) - 1;
        memcpy(tmp, p + 12, k);
        tmp[k] = 0;
        *retry_after = strtol(tmp, NULL, 10);
    }
    return len;
}

/* One HTTP request. body may be NULL (GET). resp gets the body (capped). Returns 0 when a
 * response arrived (any status), ERR_IO otherwise. */
/* libcurl progress callback: abort the transfer once the integration is stopping, so a slow
 * Slack API never holds up the server's shutdown. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return __atomic_load_n((const int *)ud, __ATOMIC_RELAXED) ? 1 : 0;
}

static int http_do(const int *abort_flag, const char *method, const char *url, const char *bearer,
                   const char *ctype, const char *body, long timeout_ms, long *status,
                   struct buf *resp, long *retry_after)
{
    pthread_once(&curl_once, curl_init_once);
    CURL *c = curl_easy_init();
    if (!c) {
        return ERR_NOMEM;
    }
    struct curl_slist *h = NULL;
    char *auth = NULL;
    if (bearer) {
        auth = xasprintf("Authorization: Bearer %s", bearer);
        h = curl_slist_append(h, auth);
    }
    if (ctype) {
        char *ct = xasprintf("Content-Type: %s", ctype);
        h = curl_slist_append(h, ct);
        free(ct);
    }
    h = curl_slist_append(h, "Expect:");
    *retry_after = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, retry_after);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)abort_flag);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode cc = curl_easy_perform(c);
    int rc = 0;
    if (cc != CURLE_OK) {
        LOG_WARN("slack: %s request failed: %s", method, curl_easy_strerror(cc));
        rc = ERR_IO;
    } else {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    }
    curl_slist_free_all(h);
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    curl_easy_cleanup(c);
    return rc;
}

static int is_stopping(struct slack *sl)
{
    pthread_mutex_lock(&sl->lock);
    int s = sl->stopping;
    pthread_mutex_unlock(&sl->lock);
    return s;
}

/* Sleep up to sec seconds, waking early when the integration stops. */
static void nap(struct slack *sl, long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    /* wcond is also signalled for every event of a watched session: sleep on until the
     * deadline, or a Retry-After would be cut short. */
    pthread_mutex_lock(&sl->lock);
    while (!sl->stopping && pthread_cond_timedwait(&sl->wcond, &sl->lock, &ts) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&sl->lock);
}

/*
 * Call a Slack Web API method with a JSON body (chat.postMessage) or a form body (the read
 * methods, which take form arguments). A 429 is retried after its Retry-After (capped), up to
 * API_TRIES times. *out (may be NULL) gets the parsed response when "ok" is true.
 */
static int slack_api(struct slack *sl, const char *method, json_t *args, int form, json_t **out)
{
    if (out) {
        *out = NULL;
    }
    if (!sl->bot_token) {
        LOG_WARN("slack: no bot token configured, not calling %s", method);
        return ERR_UNAVAILABLE;
    }
    char *url = xasprintf("%s/%s", sl->api_base, method);
    char *body = NULL;
    if (form) {
        struct buf f;
        buf_init(&f, 0);
        buf_puts(&f, "");
        const char *k;
        json_t *v;
        json_object_foreach(args, k, v)
        {
            char *val = json_is_string(v) ? xstrdup(json_string_value(v)) : jx_dump(v);
            char *esc = curl_easy_escape(NULL, val, 0);
            buf_printf(&f, "%s%s=%s", f.len ? "&" : "", k, esc ? esc : "");
            curl_free(esc);
            free(val);
        }
        body = buf_detach(&f, &(size_t){0});
    } else {
        body = jx_dump(args);
    }
    int rc = ERR_IO;
    for (int attempt = 0; attempt < API_TRIES && !is_stopping(sl); attempt++) {
        struct buf resp;
        buf_init(&resp, MAX_RESP);
        long status = 0, retry = 0;
        rc = http_do(&sl->stopping, "POST", url, sl->bot_token,
                     form ? "application/x-www-form-urlencoded" : "application/json; charset=utf-8",
                     body, 15000, &status, &resp, &retry);
        if (rc == 0 && status == 429) {
            long wait = retry > 0 ? retry : 1;
            if (wait > MAX_RETRY_WAIT) {
                wait = MAX_RETRY_WAIT;
            }
            LOG_INFO("slack: %s rate limited, retrying after %ld s", method, wait);
            buf_free(&resp);
            rc = ERR_LIMIT;
            nap(sl, wait * 1000);
            continue;
        }
        if (rc == 0) {
            json_t *j = resp.len ? json_loadb(resp.data, resp.len, 0, NULL) : NULL;
            if (status / 100 == 2 && j && json_is_true(json_object_get(j, "ok"))) {
                if (out) {
                    *out = j;
                    j = NULL;
                }
                rc = 0;
            } else {
                const char *e = j ? json_string_value(json_object_get(j, "error")) : NULL;
                LOG_WARN("slack: %s failed: status %ld, error %s", method, status,
                         e ? e : "(none)");
                rc = ERR_IO;
            }
            json_decref(j);
            buf_free(&resp);
            break;
        }
        buf_free(&resp);
        nap(sl, 500L << attempt);
    }
    free(body);
    free(url);
    return rc;
}

static int post_message(struct slack *sl, const char *channel, const char *thread_ts,
                        const char *text, json_t *blocks)
{
    json_t *a = json_pack("{s:s, s:s}", "channel", channel, "text", text);
    if (thread_ts) {
        json_object_set_new(a, "thread_ts", json_string(thread_ts));
    }
    if (blocks) {
        json_object_set(a, "blocks", blocks);
    }
    int rc = slack_api(sl, "chat.postMessage", a, 0, NULL);
    json_decref(a);
    if (rc == 0) {
        pthread_mutex_lock(&sl->lock);
        sl->stats.posted++;
        pthread_mutex_unlock(&sl->lock);
    }
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* repositories                                                                                */

struct repo_list {
    json_t *arr; /* owned: [{name, description, hints}] */
    struct slack_repo *r;
    const char **hints; /* flat storage for all hints */
    size_t n;
};

static void repo_list_free(struct repo_list *l)
{
    free(l->r);
    free(l->hints);
    json_decref(l->arr);
}

/* The repositories: the repository registry (sandbox/repos.h) when it has any, else the
 * list from the configuration (slack.repos). */
static void repo_list_load(struct slack *sl, struct repo_list *l)
{
    memset(l, 0, sizeof(*l));
    json_t *resp = NULL;
    if (sl->app && sl->app->repos && repos_list(sl->app->repos, &resp) == 0) {
        json_t *a = json_object_get(resp, "repos");
        if (json_is_array(a) && json_array_size(a)) {
            l->arr = json_incref(a);
        }
    }
    json_decref(resp);
    if (!l->arr) {
        l->arr = sl->repos ? json_incref(sl->repos) : json_array();
    }
    size_t n = json_array_size(l->arr), nh = 0;
    for (size_t i = 0; i < n; i++) {
        nh += json_array_size(json_object_get(json_array_get(l->arr, i), "hints"));
    }
    l->r = xcalloc(n ? n : 1, sizeof(*l->r));
    l->hints = xcalloc(nh ? nh : 1, sizeof(*l->hints));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(l->arr, i);
        const char *name = obj_str(o, "name");
        if (!name) {
            name = obj_str(o, "id");
        }
        if (!name) {
            continue;
        }
        struct slack_repo *r = &l->r[l->n++];
        r->name = name;
        r->description = obj_str(o, "description");
        r->hints = &l->hints[k];
        json_t *h = json_object_get(o, "hints");
        for (size_t j = 0; j < json_array_size(h); j++) {
            const char *s = json_string_value(json_array_get(h, j));
            if (s) {
                l->hints[k++] = s;
                r->nhints++;
            }
        }
    }
}

/* Ask the optional classifier; returns the index of the repository it names, or -1. */
static int classify(struct slack *sl, const struct repo_list *l, const char *chan,
                    const char *thread, const char *msg)
{
    if (!sl->classifier_url || l->n == 0) {
        return -1;
    }
    struct buf sys;
    buf_init(&sys, 0);
    buf_puts(&sys, "Choose the repository a coding request is about. Answer with exactly one "
                   "repository name from this list, or 'unknown'.\n");
    for (size_t i = 0; i < l->n; i++) {
        buf_printf(&sys, "- %s: %s\n", l->r[i].name,
                   l->r[i].description ? l->r[i].description : "");
    }
    char *user = xasprintf("Channel: #%s\nThread:\n%s\nRequest:\n%s", chan ? chan : "",
                           thread ? thread : "", msg ? msg : "");
    json_t *req =
        json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:i}", "model",
                  sl->classifier_model ? sl->classifier_model : "gpt-4o-mini", "messages", "role",
                  "system", "content", sys.data, "role", "user", "content", user, "max_tokens", 20);
    buf_free(&sys);
    free(user);
    char *body = jx_dump(req);
    json_decref(req);
    struct buf resp;
    buf_init(&resp, MAX_RESP);
    long status = 0, retry = 0;
    int pick = -1;
    int rc = http_do(&sl->stopping, "POST", sl->classifier_url, sl->classifier_key,
                     "application/json", body, 10000, &status, &resp, &retry);
    free(body);
    json_t *j = rc == 0 && status == 200 ? json_loadb(resp.data, resp.len, 0, NULL) : NULL;
    json_t *msgo = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    const char *ans = json_string_value(json_object_get(msgo, "content"));
    if (ans) {
        char *a = normalize(ans);
        for (size_t i = 0; i < l->n; i++) {
            char *nm = normalize(l->r[i].name);
            if (strcmp(a, nm) == 0) {
                pick = (int)i;
            }
            free(nm);
        }
        free(a);
    }
    if (pick < 0) {
        LOG_INFO("slack: classifier gave no usable answer (status %ld), using hints", status);
    }
    json_decref(j);
    buf_free(&resp);
    return pick;
}

/* ------------------------------------------------------------------------------------------ */
/* the worker                                                                                  */

static char *kv_get(struct slack *sl, const char *key)
{
    char *v = NULL;
    if (sl->app && sl->app->reg && registry_kv_get(sl->app->reg, key, &v) == 0) {
        return v;
    }
    return NULL;
}

static void kv_put(struct slack *sl, const char *key, const char *val)
{
    if (sl->app && sl->app->reg) {
        registry_kv_put(sl->app->reg, key, val);
    }
}

/* Save the set of watches, so results are still posted after a restart. save_lock keeps the
 * kv writes in the order of the snapshots. */
static void persist_save(struct slack *sl)
{
    pthread_mutex_lock(&sl->save_lock);
    pthread_mutex_lock(&sl->lock);
    char *s = jx_dump(sl->persist);
    pthread_mutex_unlock(&sl->lock);
    kv_put(sl, "slack:watches", s);
    pthread_mutex_unlock(&sl->save_lock);
    free(s);
}

static void persist_set(struct slack *sl, const char *sid, const char *pid, json_t *w)
{
    char *key = xasprintf("%s/%s", sid, pid);
    pthread_mutex_lock(&sl->lock);
    if (w) {
        json_object_set_new(sl->persist, key, w);
    } else {
        json_object_del(sl->persist, key);
    }
    pthread_mutex_unlock(&sl->lock);
    free(key);
    persist_save(sl);
}

static void add_watch(struct slack *sl, const char *sid, const char *pid, int64_t after,
                      const char *channel, const char *thread_ts, const char *repo)
{
    struct watch *w = xcalloc(1, sizeof(*w));
    w->session_id = xstrdup(sid);
    w->prompt_id = xstrdup(pid);
    w->channel = xstrdup(channel);
    w->thread_ts = xstrdup(thread_ts);
    w->repo = dup_or_null(repo);
    w->after = after > 0 ? after - 1 : 0; /* see our own message event too */
    w->started_ms = clock_now_ms();
    w->resync = 1; /* events committed before the watch was added: read them from the file */
    buf_init(&w->output, 64 * 1024);
    pthread_mutex_lock(&sl->lock);
    if (sl->nwatches < MAX_WATCHES) {
        w->next = sl->watches;
        sl->watches = w;
        sl->nwatches++;
        w = NULL;
    }
    pthread_cond_broadcast(&sl->wcond);
    pthread_mutex_unlock(&sl->lock);
    if (!w) {
        persist_set(sl, sid, pid,
                    json_pack("{s:s,s:s,s:s,s:s,s:s?,s:I}", "session_id", sid, "prompt_id", pid,
                              "channel", channel, "thread_ts", thread_ts, "repo", repo, "after",
                              (json_int_t)after));
    } else {
        LOG_WARN("slack: too many prompts in flight, result of %s will not be posted", pid);
        free(w->session_id);
        free(w->prompt_id);
        free(w->channel);
        free(w->thread_ts);
        free(w->repo);
        buf_free(&w->output);
        free(w);
    }
}

/* The Slack user's display name and email (users.info); falls back to the user id. */
static void user_info(struct slack *sl, const char *uid, char **name, char **email)
{
    *name = NULL;
    *email = NULL;
    json_t *r = NULL;
    json_t *a = json_pack("{s:s}", "user", uid);
    if (slack_api(sl, "users.info", a, 1, &r) == 0) {
        json_t *u = json_object_get(r, "user");
        json_t *p = json_object_get(u, "profile");
        const char *n = obj_str(p, "real_name");
        if (!n) {
            n = obj_str(u, "real_name");
        }
        if (!n) {
            n = obj_str(p, "display_name");
        }
        if (!n) {
            n = obj_str(u, "name");
        }
        *name = dup_or_null(n);
        *email = dup_or_null(obj_str(p, "email"));
    }
    json_decref(a);
    json_decref(r);
    if (!*name) {
        *name = xstrdup(uid);
    }
}

static char *channel_name(struct slack *sl, const char *channel)
{
    json_t *r = NULL;
    json_t *a = json_pack("{s:s}", "channel", channel);
    char *name = NULL;
    if (slack_api(sl, "conversations.info", a, 1, &r) == 0) {
        name = dup_or_null(obj_str(json_object_get(r, "channel"), "name"));
    }
    json_decref(a);
    json_decref(r);
    return name ? name : xstrdup("");
}

/* The text of the thread's earlier messages (conversations.replies), capped. */
static char *thread_text(struct slack *sl, const char *channel, const char *thread_ts,
                         const char *skip_ts)
{
    struct buf b;
    buf_init(&b, 32 * 1024);
    buf_puts(&b, "");
    json_t *r = NULL;
    json_t *a = json_pack("{s:s, s:s, s:s}", "channel", channel, "ts", thread_ts, "limit", "50");
    if (slack_api(sl, "conversations.replies", a, 1, &r) == 0) {
        json_t *m;
        size_t i;
        json_array_foreach(json_object_get(r, "messages"), i, m)
        {
            const char *ts = obj_str(m, "ts");
            const char *t = obj_str(m, "text");
            if (t && !(ts && skip_ts && strcmp(ts, skip_ts) == 0)) {
                buf_puts(&b, t);
                buf_putc(&b, '\n');
            }
        }
    }
    json_decref(a);
    json_decref(r);
    return buf_detach(&b, &(size_t){0});
}

static char *session_url(struct slack *sl, const char *sid)
{
    const char *base = sl->public_url;
    pthread_mutex_lock(&sl->lock);
    char *u = base ? xasprintf("%s/#/s/%s", base, sid)
                   : (sl->local_url ? xasprintf("%s/#/s/%s", sl->local_url, sid) : NULL);
    pthread_mutex_unlock(&sl->lock);
    if (u) {
        size_t n = strlen(u);
        /* public_url may end with '/': avoid "//#" */
        char *dbl = strstr(u, "//#");
        if (dbl) {
            memmove(dbl + 1, dbl + 2, n - (size_t)(dbl + 2 - u) + 1);
        }
    }
    return u;
}

static void handle_mention(struct slack *sl, json_t *payload, json_t *ev)
{
    const char *channel = obj_str(ev, "channel");
    const char *user = obj_str(ev, "user");
    const char *ts = obj_str(ev, "ts");
    const char *thread_ts = obj_str(ev, "thread_ts");
    const char *event_id = obj_str(payload, "event_id");
    const char *root = thread_ts ? thread_ts : ts;
    char *text = slack_strip_mention(obj_str(ev, "text"));
    char *uname = NULL, *email = NULL, *chan = NULL, *thread = NULL;
    char *kthread = NULL, *kpending = NULL, *sid = NULL, *prompt = NULL, *repo = NULL;
    struct repo_list rl = {0};
    json_t *body = NULL;
    struct ops_answer ans = {0};
    struct auth_info actor;
    memset(&actor, 0, sizeof(actor));
    /* The integration's identity: a bot, which may name the Slack user as the author. */
    snprintf(actor.user_id, sizeof(actor.user_id), "%s", SLACK_ACTOR_ID);
    snprintf(actor.name, sizeof(actor.name), "Slack");
    snprintf(actor.role, sizeof(actor.role), "bot");
    if (!channel || !user || !root) {
        LOG_WARN("slack: app_mention without channel/user/ts ignored");
        goto out;
    }
    if (!*text) {
        post_message(sl, channel, root,
                     "Hi! Mention me with what you want done, e.g. `@sessiond fix the flaky "
                     "login test in webapp`.",
                     NULL);
        goto out;
    }
    kthread = xasprintf("slack:thread:%s:%s", channel, root);
    kpending = xasprintf("slack:pending:%s:%s", channel, root);
    sid = kv_get(sl, kthread);
    prompt = xstrdup(text);
    if (!sid) {
        /* A new thread (or one where we asked which repository): pick the repository. */
        repo_list_load(sl, &rl);
        chan = channel_name(sl, channel);
        thread = thread_ts ? thread_text(sl, channel, thread_ts, ts) : xstrdup("");
        int pick = classify(sl, &rl, chan, thread, text);
        if (pick < 0) {
            pick = slack_pick_repo(rl.r, rl.n, chan, thread, text, NULL);
        }
        char *pending = kv_get(sl, kpending);
        if (pending && !*pending) {
            free(pending); /* "" = answered earlier */
            pending = NULL;
        }
        if (pick < 0) {
            struct buf q;
            buf_init(&q, 0);
            buf_puts(&q, "Which repository should I work in? Reply in this thread mentioning me "
                         "and the repository name");
            if (rl.n) {
                buf_puts(&q, ": ");
                for (size_t i = 0; i < rl.n && i < 20; i++) {
                    buf_printf(&q, "%s`%s`", i ? ", " : "", rl.r[i].name);
                }
            }
            buf_puts(&q, ".");
            post_message(sl, channel, root, q.data, NULL);
            buf_free(&q);
            if (!pending) {
                kv_put(sl, kpending, text);
            }
            free(pending);
            goto out;
        }
        repo = xstrdup(rl.r[pick].name);
        if (pending) {
            /* The reply named the repository: run the original request (plus the reply when
             * it says more than the repository's name). */
            char *nr = normalize(text), *nn = normalize(repo);
            free(prompt);
            prompt = strcmp(nr, nn) == 0 ? xstrdup(pending) : xasprintf("%s\n\n%s", pending, text);
            free(nr);
            free(nn);
            free(pending);
            kv_put(sl, kpending, "");
        }
    }
    user_info(sl, user, &uname, &email);
    char uid[160];
    snprintf(uid, sizeof(uid), "slack:%s", user);
    json_t *author = json_pack("{s:s, s:s}", "id", uid, "name", uname);
    if (email) {
        json_object_set_new(author, "email", json_string(email));
    }
    if (!sid) {
        char title[81];
        size_t n = util_utf8_complete_prefix(prompt, strlen(prompt) > 80 ? 80 : strlen(prompt));
        memcpy(title, prompt, n);
        title[n] = 0;
        for (char *p = title; *p; p++) {
            if (*p == '\n') {
                *p = ' ';
            }
        }
        body = json_pack("{s:s, s:s}", "title", title, "repo", repo);
        struct ops_answer cans = {0};
        int crc = ops_session_create(sl->app, &actor, body, 0, &cans);
        const char *id = crc ? NULL : obj_str(cans.json, "id");
        sid = id ? xstrdup(id) : NULL;
        ops_answer_free(&cans);
        json_decref(body);
        body = NULL;
        if (!sid) {
            LOG_WARN("slack: creating a session failed: %s", err_str(crc ? crc : ERR_INTERNAL));
            post_message(sl, channel, root, ":warning: I could not start a session.", NULL);
            json_decref(author);
            goto out;
        }
        kv_put(sl, kthread, sid);
        char *msg = xasprintf("Starting work in `%s`…", repo);
        post_message(sl, channel, root, msg, NULL);
        free(msg);
    }
    body = json_pack("{s:s, s:O}", "content", prompt, "author", author);
    json_decref(author);
    if (event_id) {
        json_object_set_new(body, "client_request_id", json_string(event_id));
    }
    int rc = ops_session_access(sl->app, &actor, sid, AUTH_WRITE, &ans);
    if (!rc) {
        rc = ops_message_create(sl->app, &actor, sid, body, &ans);
    }
    if (rc) {
        LOG_WARN("slack: forwarding the prompt failed: %s", err_str(rc));
        char *em = slack_escape(ans.msg[0] ? ans.msg : "server error", 1000);
        char *msg = xasprintf(":warning: I could not queue that: %s", em);
        free(em);
        post_message(sl, channel, root, msg, NULL);
        free(msg);
        goto out;
    }
    const char *pid = obj_str(ans.json, "prompt_id");
    json_t *seqv = json_object_get(ans.json, "seq");
    if (pid) {
        if (!repo) {
            json_t *srow = NULL;
            if (registry_session_get(sl->app->reg, sid, &srow) == 0) {
                repo = dup_or_null(obj_str(srow, "repo"));
            }
            json_decref(srow);
        }
        add_watch(sl, sid, pid, json_is_integer(seqv) ? json_integer_value(seqv) : 0, channel, root,
                  repo);
    }
    LOG_INFO("slack: prompt forwarded to session %s", sid);
out:
    ops_answer_free(&ans);
    json_decref(body);
    repo_list_free(&rl);
    free(text);
    free(uname);
    free(email);
    free(chan);
    free(thread);
    free(kthread);
    free(kpending);
    free(sid);
    free(prompt);
    free(repo);
}

static void process(struct slack *sl, json_t *payload)
{
    json_t *ev = json_object_get(payload, "event");
    const char *type = obj_str(ev, "type");
    if (!type) {
        return;
    }
    if (strcmp(type, "app_mention") == 0) {
        /* Ignore our own messages and edits. */
        if (obj_str(ev, "bot_id") || obj_str(ev, "subtype")) {
            return;
        }
        handle_mention(sl, payload, ev);
    } else {
        LOG_DEBUG("slack: event %s ignored", type);
    }
}

static void *worker_main(void *arg)
{
    struct slack *sl = arg;
    for (;;) {
        pthread_mutex_lock(&sl->lock);
        while (!sl->stopping && !sl->head) {
            pthread_cond_wait(&sl->cond, &sl->lock);
        }
        if (sl->stopping) {
            pthread_mutex_unlock(&sl->lock);
            break;
        }
        struct job *j = sl->head;
        sl->head = j->next;
        if (!sl->head) {
            sl->tail = NULL;
        }
        sl->qlen--;
        pthread_mutex_unlock(&sl->lock);
        if (sl->app && j->payload) {
            process(sl, j->payload);
        }
        json_decref(j->payload);
        free(j);
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* the watcher: post results when prompts end                                                  */

static void watch_free(struct watch *w)
{
    free(w->session_id);
    free(w->prompt_id);
    free(w->channel);
    free(w->thread_ts);
    free(w->repo);
    free(w->summary);
    free(w->pr_url);
    buf_free(&w->output);
    free(w);
}

static int is_pr_url(const char *s)
{
    return s && strncmp(s, "http", 4) == 0 &&
           (strstr(s, "/pull/") || strstr(s, "/merge_requests/"));
}

/* Look at one event of a watched session. Returns 1 when the watched prompt has ended. */
static int watch_event(struct watch *w, json_t *e, enum prompt_state *state)
{
    const char *type = obj_str(e, "type");
    json_t *d = json_object_get(e, "data");
    const char *pid = obj_str(d, "prompt_id");
    if (!type) {
        return 0;
    }
    int mine = !pid || strcmp(pid, w->prompt_id) == 0;
    if (strcmp(type, "message") == 0 && mine) {
        const char *role = obj_str(d, "role");
        const char *content = obj_str(d, "content");
        if (role && strcmp(role, "assistant") == 0 && content) {
            free(w->summary);
            w->summary = xstrdup(content);
        }
    } else if (strncmp(type, "agent.", 6) == 0 && mine) {
        const char *s = obj_str(d, "summary");
        if (s) {
            free(w->summary);
            w->summary = xstrdup(s);
        }
        const char *pr = obj_str(d, "pr_url");
        if (!pr) {
            pr = obj_str(d, "url");
        }
        if (is_pr_url(pr)) {
            free(w->pr_url);
            w->pr_url = xstrdup(pr);
        }
        const char *text = obj_str(d, "text");
        if (!text) {
            text = obj_str(d, "data");
        }
        if (strcmp(type, "agent.output") == 0 && text) {
            if (buf_puts(&w->output, text) != 0) {
                /* keep the tail: drop the first half */
                size_t half = w->output.len / 2;
                memmove(w->output.data, w->output.data + half, w->output.len - half + 1);
                w->output.len -= half;
                buf_puts(&w->output, text);
            }
        }
    } else if (strcmp(type, "pr.created") == 0) {
        const char *u = obj_str(d, "url");
        if (is_pr_url(u)) {
            free(w->pr_url);
            w->pr_url = xstrdup(u);
        }
    } else if (strcmp(type, "artifact") == 0 || strcmp(type, "artifact.created") == 0) {
        const char *t = obj_str(d, "type");
        const char *u = obj_str(d, "url");
        if (t && strcmp(t, "pr") == 0 && is_pr_url(u)) {
            free(w->pr_url);
            w->pr_url = xstrdup(u);
        }
    } else if (pid && strcmp(pid, w->prompt_id) == 0) {
        if (strcmp(type, "prompt.completed") == 0) {
            *state = PROMPT_COMPLETED;
            return 1;
        }
        if (strcmp(type, "prompt.failed") == 0) {
            *state = PROMPT_FAILED;
            return 1;
        }
        if (strcmp(type, "prompt.cancelled") == 0) {
            *state = PROMPT_CANCELLED;
            return 1;
        }
    }
    return 0;
}

/* Feed one event to the watch unless it was seen already (the catch-up read and the queue may
 * both carry it). */
static void watch_feed(struct watch *w, json_t *e)
{
    json_t *sq = json_object_get(e, "seq");
    if (w->done || !json_is_integer(sq) || json_integer_value(sq) <= w->after) {
        return;
    }
    w->after = json_integer_value(sq);
    w->done = watch_event(w, e, &w->state);
}

/* Read the session's events after w->after from its file (in process, no HTTP): what was
 * committed before the watch was registered, or what overflowed the event queue. */
static void watch_catch_up(struct slack *sl, struct watch *w)
{
    struct sess *s = NULL;
    int rc = store_session_get(sl->app->store, w->session_id, &s);
    if (rc == ERR_NOT_FOUND || rc == ERR_GONE) {
        w->done = w->gone = 1; /* the session is gone: nobody to tell */
        return;
    }
    if (rc) {
        LOG_WARN("slack: session %s: cannot read its events: %s", w->session_id, err_str(rc));
        return;
    }
    for (int page = 0; page < 1000 && !w->done; page++) {
        struct buf b;
        int count = 0;
        int64_t last = 0;
        buf_init(&b, 0);
        buf_putc(&b, '[');
        rc = sess_events(s, w->after, 500, &b, &count, &last);
        buf_putc(&b, ']');
        json_t *evs = rc ? NULL : json_loadb(b.data, b.len, 0, NULL);
        buf_free(&b);
        size_t i;
        json_t *e;
        json_array_foreach(evs, i, e)
        {
            watch_feed(w, e);
        }
        json_decref(evs);
        if (rc || count < 500) {
            break;
        }
    }
    sess_put(s);
}

/* The prompt ended: post its result in the thread. */
static void watch_post(struct slack *sl, struct watch *w)
{
    const char *summary = w->summary;
    if (!summary || !*summary) {
        summary = w->output.len ? w->output.data : "(no output)";
    }
    char *url = session_url(sl, w->session_id);
    json_t *blocks = slack_result_blocks(w->repo, w->state, summary, w->pr_url, url);
    char *fallback = xasprintf("%s in %s", state_verb(w->state), w->repo ? w->repo : "the session");
    post_message(sl, w->channel, w->thread_ts, fallback, blocks);
    free(fallback);
    json_decref(blocks);
    free(url);
}

static void sevent_free(struct sevent *e)
{
    free(e->session_id);
    free(e->json);
    free(e);
}

/* Whether a watch waits for its catch-up read. Caller holds sl->lock. */
static int any_resync(struct slack *sl)
{
    for (struct watch *w = sl->watches; w; w = w->next) {
        if (w->resync) {
            return 1;
        }
    }
    return 0;
}

/* The store's event observer: runs on the committing thread under the session's lock, so it
 * only copies the event of a watched session into the queue (bounded: on overflow the watch
 * re-reads the file instead) and wakes the watcher. */
void slack_on_event(void *ctx, const char *session_id, int64_t seq, const char *json, size_t len)
{
    struct slack *sl = ctx;
    if (!sl) {
        return;
    }
    pthread_mutex_lock(&sl->lock);
    int watched = 0;
    for (struct watch *w = sl->watches; w; w = w->next) {
        if (strcmp(w->session_id, session_id) == 0) {
            watched = 1;
            if (sl->nev >= MAX_EVENTS) {
                w->resync = 1;
            }
        }
    }
    if (watched && !sl->stopping && sl->nev < MAX_EVENTS) {
        struct sevent *e = xcalloc(1, sizeof(*e));
        e->session_id = xstrdup(session_id);
        e->seq = seq;
        e->json = xmalloc(len + 1);
        memcpy(e->json, json, len);
        e->json[len] = 0;
        e->len = len;
        if (sl->ev_tail) {
            sl->ev_tail->next = e;
        } else {
            sl->ev_head = e;
        }
        sl->ev_tail = e;
        sl->nev++;
    }
    if (watched) {
        pthread_cond_broadcast(&sl->wcond);
    }
    pthread_mutex_unlock(&sl->lock);
}

/* Unlink a finished watch (only this thread removes watches) and free it. */
static void watch_remove(struct slack *sl, struct watch *w)
{
    pthread_mutex_lock(&sl->lock);
    for (struct watch **pp = &sl->watches; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            sl->nwatches--;
            break;
        }
    }
    pthread_mutex_unlock(&sl->lock);
    persist_set(sl, w->session_id, w->prompt_id, NULL);
    watch_free(w);
}

static void *watcher_main(void *arg)
{
    struct slack *sl = arg;
    for (;;) {
        pthread_mutex_lock(&sl->lock);
        while (!sl->stopping && !sl->ev_head && !any_resync(sl)) {
            pthread_cond_wait(&sl->wcond, &sl->lock);
        }
        if (sl->stopping) {
            pthread_mutex_unlock(&sl->lock);
            break;
        }
        /* Take the queued events and note which watches need a catch-up read. The watch list
         * is walked without the lock afterwards: the worker only prepends to it and only
         * this thread unlinks, so the nodes from this head on stay valid. */
        struct sevent *evs = sl->ev_head;
        sl->ev_head = sl->ev_tail = NULL;
        sl->nev = 0;
        struct watch *list = sl->watches;
        for (struct watch *w = list; w; w = w->next) {
            w->catchup = w->resync;
            w->resync = 0;
        }
        pthread_mutex_unlock(&sl->lock);
        for (struct watch *w = list; w; w = w->next) {
            if (w->catchup && !w->done) {
                watch_catch_up(sl, w);
            }
        }
        while (evs) {
            struct sevent *e = evs;
            evs = e->next;
            json_t *j = NULL;
            for (struct watch *w = list; w; w = w->next) {
                if (w->done || e->seq <= w->after || strcmp(w->session_id, e->session_id) != 0) {
                    continue;
                }
                if (!j) {
                    j = json_loadb(e->json, e->len, 0, NULL);
                }
                if (j) {
                    watch_feed(w, j);
                }
            }
            json_decref(j);
            sevent_free(e);
        }
        struct watch *w = list;
        while (w) {
            struct watch *next = w->next;
            if (w->done) {
                if (!w->gone) {
                    watch_post(sl, w);
                }
                watch_remove(sl, w);
            }
            w = next;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* lifecycle                                                                                   */

/* Earlier versions reached our REST API over loopback with a bot token they minted for
 * themselves at start (id in kv "slack:bot_token_id"). Nothing uses it any more: revoke it, so
 * no live credential for "slack:bot" is left in the registry. */
static void revoke_old_token(struct slack *sl)
{
    struct registry *reg = sl->app && sl->app->reg ? sl->app->reg : NULL;
    char *old = NULL;
    if (!reg) {
        return;
    }
    if (registry_kv_get(reg, "slack:bot_token_id", &old) == 0 && old && *old) {
        if (registry_token_delete(reg, old, NULL) == 0) {
            auth_cache_invalidate();
            LOG_INFO("slack: revoked the integration's old loopback token");
        }
        registry_kv_put(reg, "slack:bot_token_id", "");
    }
    free(old);
}

/* Resume the watches of prompts that were running when the server stopped. */
static void load_watches(struct slack *sl)
{
    char *v = kv_get(sl, "slack:watches");
    json_t *o = v ? json_loads(v, 0, NULL) : NULL;
    free(v);
    const char *k;
    json_t *w;
    json_object_foreach(o, k, w)
    {
        const char *sid = obj_str(w, "session_id"), *pid = obj_str(w, "prompt_id");
        const char *ch = obj_str(w, "channel"), *ts = obj_str(w, "thread_ts");
        json_t *after = json_object_get(w, "after");
        if (sid && pid && ch && ts) {
            add_watch(sl, sid, pid, json_is_integer(after) ? json_integer_value(after) : 0, ch, ts,
                      obj_str(w, "repo"));
        }
    }
    if (json_object_size(o)) {
        LOG_INFO("slack: resumed %zu pending result(s)", json_object_size(o));
    }
    json_decref(o);
}

int slack_new(const struct slack_config *cfg, struct app *app, struct slack **out)
{
    struct slack *sl = xcalloc(1, sizeof(*sl));
    sl->signing_secret = dup_or_null(cfg->signing_secret);
    sl->bot_token = dup_or_null(cfg->bot_token);
    sl->api_base =
        xstrdup(cfg->api_base && *cfg->api_base ? cfg->api_base : SLACK_DEFAULT_API_BASE);
    size_t n = strlen(sl->api_base);
    while (n > 0 && sl->api_base[n - 1] == '/') {
        sl->api_base[--n] = 0;
    }
    sl->public_url = dup_or_null(cfg->public_url);
    if (sl->public_url) {
        size_t m = strlen(sl->public_url);
        while (m > 0 && sl->public_url[m - 1] == '/') {
            sl->public_url[--m] = 0;
        }
    }
    sl->classifier_url = dup_or_null(cfg->classifier_url);
    sl->classifier_key = dup_or_null(cfg->classifier_key);
    sl->classifier_model = dup_or_null(cfg->classifier_model);
    sl->repos = cfg->repos ? json_deep_copy(cfg->repos) : NULL;
    sl->app = app;
    pthread_mutex_init(&sl->lock, NULL);
    pthread_cond_init(&sl->cond, NULL);
    pthread_cond_init(&sl->wcond, NULL);
    pthread_once(&curl_once, curl_init_once);
    sl->persist = json_object();
    pthread_mutex_init(&sl->save_lock, NULL);
    if (sl->signing_secret) {
        revoke_old_token(sl);
        load_watches(sl);
        if (pthread_create(&sl->worker, NULL, worker_main, sl) == 0) {
            sl->threads |= 1;
        }
        if (pthread_create(&sl->watcher, NULL, watcher_main, sl) == 0) {
            sl->threads |= 2;
        }
        LOG_INFO("slack: enabled (api %s, %s)", sl->api_base,
                 sl->bot_token ? "bot token set" : "no bot token: replies disabled");
    } else {
        LOG_INFO("slack: disabled (no signing secret); /v1/slack/events answers 503");
    }
    *out = sl;
    return 0;
}

void slack_set_local_url(struct slack *sl, const char *base_url)
{
    if (!sl) {
        return;
    }
    pthread_mutex_lock(&sl->lock);
    free(sl->local_url);
    sl->local_url = dup_or_null(base_url);
    pthread_mutex_unlock(&sl->lock);
}

void slack_set_local_address(struct slack *sl, const char *listen, int port)
{
    char host[256] = "127.0.0.1";
    int p = 0;
    if (!sl) {
        return;
    }
    if (listen && config_split_listen(listen, host, sizeof(host), &p) != 0) {
        snprintf(host, sizeof(host), "127.0.0.1");
    }
    if (!*host || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0) {
        snprintf(host, sizeof(host), "127.0.0.1");
    } else if (strcmp(host, "::") == 0 || strcmp(host, "[::]") == 0) {
        snprintf(host, sizeof(host), "::1");
    }
    char *url = strchr(host, ':') && host[0] != '[' ? xasprintf("http://[%s]:%d", host, port)
                                                    : xasprintf("http://%s:%d", host, port);
    slack_set_local_url(sl, url);
    free(url);
}

void slack_stop(struct slack *sl)
{
    if (!sl) {
        return;
    }
    pthread_mutex_lock(&sl->lock);
    __atomic_store_n(&sl->stopping, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&sl->cond);
    pthread_cond_broadcast(&sl->wcond);
    pthread_mutex_unlock(&sl->lock);
    if (sl->threads & 1) {
        pthread_join(sl->worker, NULL);
    }
    if (sl->threads & 2) {
        pthread_join(sl->watcher, NULL);
    }
    sl->threads = 0;
}

void slack_free(struct slack *sl)
{
    if (!sl) {
        return;
    }
    slack_stop(sl);
    while (sl->ev_head) {
        struct sevent *e = sl->ev_head;
        sl->ev_head = e->next;
        sevent_free(e);
    }
    while (sl->head) {
        struct job *j = sl->head;
        sl->head = j->next;
        json_decref(j->payload);
        free(j);
    }
    while (sl->watches) {
        struct watch *w = sl->watches;
        sl->watches = w->next;
        watch_free(w);
    }
    pthread_cond_destroy(&sl->cond);
    pthread_cond_destroy(&sl->wcond);
    pthread_mutex_destroy(&sl->lock);
    pthread_mutex_destroy(&sl->save_lock);
    json_decref(sl->persist);
    if (sl->signing_secret) {
        memset(sl->signing_secret, 0, strlen(sl->signing_secret));
    }
    free(sl->signing_secret);
    free(sl->bot_token);
    free(sl->api_base);
    free(sl->public_url);
    free(sl->classifier_url);
    free(sl->classifier_key);
    free(sl->classifier_model);
    free(sl->local_url);
    json_decref(sl->repos);
    free(sl);
}

int slack_enabled(const struct slack *sl)
{
    return sl && sl->signing_secret != NULL;
}

void slack_get_stats(struct slack *sl, struct slack_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!sl) {
        return;
    }
    pthread_mutex_lock(&sl->lock);
    *out = sl->stats;
    pthread_mutex_unlock(&sl->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* the webhook                                                                                 */

static char *err_body(int err, const char *msg)
{
    json_t *j = json_pack("{s:{s:s, s:s}}", "error", "code", err_code(err), "message", msg);
    char *s = jx_dump(j);
    json_decref(j);
    return s;
}

void slack_handle_events(struct slack *sl, const char *ts, const char *sig, const char *body,
                         size_t len, int *status, char **body_out)
{
    if (!slack_enabled(sl)) {
        *status = 503;
        *body_out = err_body(ERR_UNAVAILABLE, "Slack is not configured: set slack.signing_secret "
                                              "or SESSIOND_SLACK_SIGNING_SECRET");
        return;
    }
    int rc = slack_verify(sl->signing_secret, ts, sig, body, len, clock_now_ms() / 1000);
    if (rc != 0) {
        pthread_mutex_lock(&sl->lock);
        sl->stats.rejected++;
        pthread_mutex_unlock(&sl->lock);
        LOG_WARN("slack: request refused: %s",
                 !ts || !sig ? "missing signature headers" : "bad or stale signature");
        *status = 401;
        *body_out = err_body(ERR_AUTH, "invalid Slack signature");
        return;
    }
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *type = obj_str(j, "type");
    if (!json_is_object(j) || !type) {
        json_decref(j);
        *status = 400;
        *body_out = err_body(ERR_INVALID, "body must be a Slack event JSON object");
        return;
    }
    if (strcmp(type, "url_verification") == 0) {
        const char *ch = obj_str(j, "challenge");
        json_t *r = json_pack("{s:s}", "challenge", ch ? ch : "");
        *status = 200;
        *body_out = jx_dump(r);
        json_decref(r);
        json_decref(j);
        return;
    }
    if (strcmp(type, "event_callback") != 0) {
        json_decref(j);
        *status = 200;
        *body_out = xstrdup("{\"ok\":true}");
        return;
    }
    /* De-duplicate retries: the first delivery of an event_id wins. */
    const char *eid = obj_str(j, "event_id");
    int fresh = 1;
    if (eid && sl->app && sl->app->reg) {
        char *key = xasprintf("slack:event:%s", eid);
        char now[32];
        snprintf(now, sizeof(now), "%lld", (long long)clock_now_ms());
        if (registry_kv_put_new(sl->app->reg, key, now, &fresh) != 0) {
            fresh = 1; /* better a rare double than a lost request */
        }
        free(key);
    }
    pthread_mutex_lock(&sl->lock);
    if (!fresh) {
        sl->stats.duplicates++;
    } else if (sl->qlen >= MAX_QUEUE) {
        LOG_WARN("slack: event queue full, event dropped");
    } else {
        sl->stats.received++;
        struct job *jb = xcalloc(1, sizeof(*jb));
        /* A copy, not a shared reference: jansson's json_decref reads the refcount
         * non-atomically before its atomic decrement, a data race (TSan) when two threads
         * drop references to one value. */
        jb->payload = json_deep_copy(j);
        if (sl->tail) {
            sl->tail->next = jb;
        } else {
            sl->head = jb;
        }
        sl->tail = jb;
        sl->qlen++;
        pthread_cond_signal(&sl->cond);
    }
    pthread_mutex_unlock(&sl->lock);
    json_decref(j);
    *status = 200;
    *body_out = xstrdup("{\"ok\":true}");
}

int api_slack_events(struct req *r)
{
    struct app *app = req_app(r);
    size_t len = 0;
    const char *body = req_body(r, &len);
    int status = 0;
    char *out = NULL;
    slack_handle_events(app ? app->slack : NULL, req_header(r, "X-Slack-Request-Timestamp"),
                        req_header(r, "X-Slack-Signature"), body ? body : "", len, &status, &out);
    int rc = req_reply_bytes(r, status, "application/json", out, strlen(out));
    free(out);
    return rc;
}
