/*
 * slack.h - the Slack integration: POST /v1/slack/events (Events API webhook target).
 *
 * Every request is verified (HMAC-SHA256 signature over "v0:{timestamp}:{raw body}" with the
 * signing secret, constant-time compare, timestamp within 5 minutes) before anything else.
 * url_verification is answered with the challenge; event_callback is answered 200 at once
 * and handed to a worker thread (Slack retries after 3 s), de-duplicated by event_id in the
 * registry kv. An app_mention starts (or continues, for a reply in the same thread) a session
 * in the repository chosen by slack_pick_repo(), forwards the prompt with the Slack user as
 * author, and posts the result in the thread with Block Kit blocks when the prompt finishes.
 *
 * Threads: slack_handle_events() is called from HTTP threads; the worker and the result
 * watcher are threads owned by struct slack. The pure helpers (slack_verify, slack_strip_
 * mention, slack_pick_repo, slack_result_blocks) are thread safe.
 */
#ifndef SESSIOND_SLACK_H
#define SESSIOND_SLACK_H

#include "storage/prompts.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct app;
struct config;
struct req;
struct slack;

/** Default Web API base URL. */
#define SLACK_DEFAULT_API_BASE "https://slack.com/api"
/** Requests whose timestamp is further than this from now are refused (replay window). */
#define SLACK_MAX_SKEW_S 300

/** A repository the router can choose. Borrowed strings. */
struct slack_repo {
    const char *name;
    const char *description;  /* may be NULL */
    const char *const *hints; /* keywords or short phrases; may be NULL */
    size_t nhints;
};

/** Configuration. Strings are copied by slack_new(). NULL members take their defaults. */
struct slack_config {
    const char *signing_secret; /* required for the endpoint to work (else 503) */
    const char *bot_token;      /* xoxb-…; Web API calls are skipped (logged) when NULL */
    const char *api_base;       /* default SLACK_DEFAULT_API_BASE */
    const char *public_url;     /* for links to the web UI; may be NULL */
    const char *classifier_url; /* OpenAI-compatible chat-completions URL; may be NULL */
    const char *classifier_key; /* bearer key for it; may be NULL */
    const char *classifier_model;
    json_t *repos; /* fallback repository list [{name,description,hints:[…]}] */
    int poll_ms;   /* unused: results arrive as session events (slack_on_event) */
};

/** Fill sc from the server configuration (slack.* keys; the environment variables
 * SESSIOND_SLACK_* are applied by config.c). Strings borrow from c; sc->repos is a new
 * reference built from slack.repos entries "name:hint;hint|description", which the caller
 * decrefs after slack_new(). */
void slack_config_from(struct slack_config *sc, const struct config *c);

/** Create the integration and start its threads. app may be NULL in unit tests (then events
 * are verified and queued but not acted upon). *out owned by the caller: slack_free(). */
int slack_new(const struct slack_config *cfg, struct app *app, struct slack **out);
/** Tell the integration where our own web UI listens ("http://127.0.0.1:8080"), for the
 * "Open session" link when no public_url is set (sessions and prompts are created in process,
 * server/ops.h). Thread safe. */
void slack_set_local_url(struct slack *sl, const char *base_url);
/** The same from the listen setting ("HOST:PORT", wildcard hosts become loopback) and the
 * port actually bound. NULL sl is a no-op. */
void slack_set_local_address(struct slack *sl, const char *listen, int port);
/** Stop the threads (pending work is dropped); slack_on_event stays callable (it only
 * queues) until slack_free. NULL is a no-op. */
void slack_stop(struct slack *sl);
/** Stop (if not yet) and free. Call only once no thread can call slack_on_event any more
 * (after the store is closed). NULL is a no-op. */
void slack_free(struct slack *sl);

/** The store's event observer (store_event_fn; ctx is the struct slack, NULL is a no-op):
 * copies events of sessions with a Slack prompt in flight to the watcher thread. Called under
 * the session's lock; never blocks beyond the integration's own short lock. */
void slack_on_event(void *ctx, const char *session_id, int64_t seq, const char *json, size_t len);

/** Whether a signing secret is configured (the endpoint answers 503 otherwise). */
int slack_enabled(const struct slack *sl);

/** The webhook. ts and sig are the X-Slack-Request-Timestamp and X-Slack-Signature headers
 * (may be NULL). Sets *status and *body_out (a JSON body the caller frees, never NULL).
 * sl may be NULL (not configured: 503). Never blocks on the network. */
void slack_handle_events(struct slack *sl, const char *ts, const char *sig, const char *body,
                         size_t len, int *status, char **body_out);

/** POST /v1/slack/events (route handler, ROUTE_PUBLIC: Slack signs, it has no token). */
int api_slack_events(struct req *r);

/** Verify a request signature. now_s is the current epoch time in seconds.
 * Returns 0, or ERR_AUTH (bad, missing or stale), or ERR_UNAVAILABLE (no secret). */
int slack_verify(const char *secret, const char *ts, const char *sig, const char *body, size_t len,
                 int64_t now_s);

/** The message text with bot mentions (<@U…>, <@U…|name>) removed and whitespace trimmed.
 * Other Slack markup (<http://…|label>, <#C…|name>) is unwrapped to its label or URL.
 * The caller frees. Never NULL. */
char *slack_strip_mention(const char *text);

/** text with Slack's control characters escaped (& < > as &amp; &lt; &gt;), so mentions
 * (<!channel>, <@U…>) and links in it are shown literally; at most max bytes, never cut inside
 * an entity or a UTF-8 sequence. The caller frees. Never NULL. */
char *slack_escape(const char *text, size_t max);

/** Score each repository against the channel name, thread context and message
 * (deterministic, no network). Returns the index of the single best repository, or -1 when
 * no repository scores or two tie for the top. scores (may be NULL, n entries) gets each. */
int slack_pick_repo(const struct slack_repo *repos, size_t n, const char *channel_name,
                    const char *thread_text, const char *message, int *scores);

/** Block Kit blocks for a finished prompt: the summary, the PR link (may be NULL) and a link
 * to the session in the web UI (session_url may be NULL). state is how the prompt ended
 * (completed, failed or cancelled). New reference. */
json_t *slack_result_blocks(const char *repo, enum prompt_state state, const char *summary,
                            const char *pr_url, const char *session_url);

/** Counters (tests, /metrics). */
struct slack_stats {
    uint64_t received;   /* verified event_callbacks */
    uint64_t duplicates; /* retries dropped by event_id */
    uint64_t rejected;   /* bad signatures */
    uint64_t posted;     /* Web API messages posted */
};
void slack_get_stats(struct slack *sl, struct slack_stats *out);

#endif
