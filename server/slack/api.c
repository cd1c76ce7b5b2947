/*
 * api.c - calls to Slack's Web API (and the classifier) over libcurl: bounded responses, abortable
 * at shutdown, 429 Retry-After honoured; the user, channel and thread look-ups the worker needs.
 */
#include "server/slack/slack_int.h"
/* ------------------------------------------------------------------------------------------ */
/* HTTP client (libcurl)                                                                       */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* curl_global_init once per process, before the first handle (slack_new calls it). */
void sl_curl_init(void)
{
    pthread_once(&curl_once, curl_init_once);
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

int sl_http_do(const int *abort_flag, const char *method, const char *url, const char *bearer,
               const char *ctype, const char *body, long timeout_ms, long *status, struct buf *resp,
               long *retry_after)
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
        rc = sl_http_do(&sl->stopping, "POST", url, sl->bot_token,
                        form ? "application/x-www-form-urlencoded"
                             : "application/json; charset=utf-8",
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

int sl_post_message(struct slack *sl, const char *channel, const char *thread_ts, const char *text,
                    json_t *blocks)
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

/* The Slack user's display name and email (users.info); falls back to the user id. */
void sl_user_info(struct slack *sl, const char *uid, char **name, char **email)
{
    *name = NULL;
    *email = NULL;
    json_t *r = NULL;
    json_t *a = json_pack("{s:s}", "user", uid);
    if (slack_api(sl, "users.info", a, 1, &r) == 0) {
        json_t *u = json_object_get(r, "user");
        json_t *p = json_object_get(u, "profile");
        const char *n = sl_obj_str(p, "real_name");
        if (!n) {
            n = sl_obj_str(u, "real_name");
        }
        if (!n) {
            n = sl_obj_str(p, "display_name");
        }
        if (!n) {
            n = sl_obj_str(u, "name");
        }
        *name = sl_dup_or_null(n);
        *email = sl_dup_or_null(sl_obj_str(p, "email"));
    }
    json_decref(a);
    json_decref(r);
    if (!*name) {
        *name = xstrdup(uid);
    }
}

char *sl_channel_name(struct slack *sl, const char *channel)
{
    json_t *r = NULL;
    json_t *a = json_pack("{s:s}", "channel", channel);
    char *name = NULL;
    if (slack_api(sl, "conversations.info", a, 1, &r) == 0) {
        name = sl_dup_or_null(sl_obj_str(json_object_get(r, "channel"), "name"));
    }
    json_decref(a);
    json_decref(r);
    return name ? name : xstrdup("");
}

/* The text of the thread's earlier messages (conversations.replies), capped. */
char *sl_thread_text(struct slack *sl, const char *channel, const char *thread_ts,
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
            const char *ts = sl_obj_str(m, "ts");
            const char *t = sl_obj_str(m, "text");
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
