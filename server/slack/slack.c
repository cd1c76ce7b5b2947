/*
 * slack.c - the Slack Events API webhook target and the bot that works in Slack threads.
 *
 * Files: slack.c (instance, configuration, the HTTP endpoint), text.c (signature check,
 * escaping, repository scoring, result blocks; no I/O), api.c (Slack Web API calls),
 * worker.c (the worker thread), watch.c (result watches, the watcher thread); slack_int.h
 * holds what they share.
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
#include "server/slack/slack_int.h"
/* ------------------------------------------------------------------------------------------ */
/* configuration                                                                               */

const char *sl_obj_str(json_t *obj, const char *key)
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

char *sl_dup_or_null(const char *s)
{
    return s && *s ? xstrdup(s) : NULL;
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
            auth_cache_invalidate(sl->app->auth);
            LOG_INFO("slack: revoked the integration's old loopback token");
        }
        registry_kv_put(reg, "slack:bot_token_id", "");
    }
    free(old);
}

int slack_new(const struct slack_config *cfg, struct app *app, struct slack **out)
{
    struct slack *sl = xcalloc(1, sizeof(*sl));
    sl->signing_secret = sl_dup_or_null(cfg->signing_secret);
    sl->bot_token = sl_dup_or_null(cfg->bot_token);
    sl->api_base =
        xstrdup(cfg->api_base && *cfg->api_base ? cfg->api_base : SLACK_DEFAULT_API_BASE);
    size_t n = strlen(sl->api_base);
    while (n > 0 && sl->api_base[n - 1] == '/') {
        sl->api_base[--n] = 0;
    }
    sl->public_url = sl_dup_or_null(cfg->public_url);
    if (sl->public_url) {
        size_t m = strlen(sl->public_url);
        while (m > 0 && sl->public_url[m - 1] == '/') {
            sl->public_url[--m] = 0;
        }
    }
    sl->classifier_url = sl_dup_or_null(cfg->classifier_url);
    sl->classifier_key = sl_dup_or_null(cfg->classifier_key);
    sl->classifier_model = sl_dup_or_null(cfg->classifier_model);
    sl->repos = cfg->repos ? json_deep_copy(cfg->repos) : NULL;
    sl->app = app;
    pthread_mutex_init(&sl->lock, NULL);
    pthread_cond_init(&sl->cond, NULL);
    pthread_cond_init(&sl->wcond, NULL);
    sl_curl_init();
    sl->persist = json_object();
    pthread_mutex_init(&sl->save_lock, NULL);
    if (sl->signing_secret) {
        revoke_old_token(sl);
        sl_load_watches(sl);
        if (pthread_create(&sl->worker, NULL, sl_worker_main, sl) == 0) {
            sl->threads |= 1;
        }
        if (pthread_create(&sl->watcher, NULL, sl_watcher_main, sl) == 0) {
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
    sl->local_url = sl_dup_or_null(base_url);
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
        sl_sevent_free(e);
    }
    while (sl->pr_head) {
        struct sevent *e = sl->pr_head;
        sl->pr_head = e->next;
        sl_sevent_free(e);
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
        sl_watch_free(w);
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
    const char *type = sl_obj_str(j, "type");
    if (!json_is_object(j) || !type) {
        json_decref(j);
        *status = 400;
        *body_out = err_body(ERR_INVALID, "body must be a Slack event JSON object");
        return;
    }
    if (strcmp(type, "url_verification") == 0) {
        const char *ch = sl_obj_str(j, "challenge");
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
    const char *eid = sl_obj_str(j, "event_id");
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
