/*
 * worker.c - the worker thread: app_mention events from the queue to a repository choice, a session
 * (kv thread -> session map) and a prompt, through the operations of server/ops.h as "slack:bot".
 */
#include "server/slack/slack_int.h"
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
        const char *name = sl_obj_str(o, "name");
        if (!name) {
            name = sl_obj_str(o, "id");
        }
        if (!name) {
            continue;
        }
        struct slack_repo *r = &l->r[l->n++];
        r->name = name;
        r->description = sl_obj_str(o, "description");
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
    int rc = sl_http_do(&sl->stopping, "POST", sl->classifier_url, sl->classifier_key,
                        "application/json", body, 10000, &status, &resp, &retry);
    free(body);
    json_t *j = rc == 0 && status == 200 ? json_loadb(resp.data, resp.len, 0, NULL) : NULL;
    json_t *msgo = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    const char *ans = json_string_value(json_object_get(msgo, "content"));
    if (ans) {
        char *a = sl_normalize(ans);
        for (size_t i = 0; i < l->n; i++) {
            char *nm = sl_normalize(l->r[i].name);
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

char *sl_kv_get(struct slack *sl, const char *key)
{
    char *v = NULL;
    if (sl->app && sl->app->reg && registry_kv_get(sl->app->reg, key, &v) == 0) {
        return v;
    }
    return NULL;
}

void sl_kv_put(struct slack *sl, const char *key, const char *val)
{
    if (sl->app && sl->app->reg) {
        registry_kv_put(sl->app->reg, key, val);
    }
}

char *sl_session_url(struct slack *sl, const char *sid)
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

/* A new thread (or one where we asked which repository): picks the repository for text and
 * sets *repo, or asks in the thread which one and leaves *repo NULL. When the thread was
 * waiting for that answer, *prompt becomes the original request (plus the reply when it
 * says more than the repository's name). */
static void mention_pick_repo(struct slack *sl, const char *channel, const char *ts,
                              const char *thread_ts, const char *text, const char *kpending,
                              char **prompt, char **repo)
{
    const char *root = thread_ts ? thread_ts : ts;
    struct repo_list rl = {0};
    char *chan = NULL, *thread = NULL;
    repo_list_load(sl, &rl);
    chan = sl_channel_name(sl, channel);
    thread = thread_ts ? sl_thread_text(sl, channel, thread_ts, ts) : xstrdup("");
    int pick = classify(sl, &rl, chan, thread, text);
    if (pick < 0) {
        pick = slack_pick_repo(rl.r, rl.n, chan, thread, text, NULL);
    }
    char *pending = sl_kv_get(sl, kpending);
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
        sl_post_message(sl, channel, root, q.data, NULL);
        buf_free(&q);
        if (!pending) {
            sl_kv_put(sl, kpending, text);
        }
        free(pending);
        goto out; /* asked */
    }
    *repo = xstrdup(rl.r[pick].name);
    if (pending) {
        /* The reply named the repository: run the original request (plus the reply when
         * it says more than the repository's name). */
        char *nr = sl_normalize(text), *nn = sl_normalize(*repo);
        free(*prompt);
        *prompt = strcmp(nr, nn) == 0 ? xstrdup(pending) : xasprintf("%s\n\n%s", pending, text);
        free(nr);
        free(nn);
        free(pending);
        sl_kv_put(sl, kpending, "");
    }
out:
    repo_list_free(&rl);
    free(chan);
    free(thread);
}

/* Starts the thread's session in repo, titled after the prompt's first 80 bytes, and maps
 * the thread to it (kv kthread); NULL (and a warning in the thread) when it could not. */
static char *mention_new_session(struct slack *sl, const struct auth_info *actor,
                                 const char *prompt, const char *repo, const char *channel,
                                 const char *root, const char *kthread)
{
    json_t *body;
    char *sid;
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
    int crc = ops_session_create(sl->app, actor, body, 0, &cans);
    const char *id = crc ? NULL : sl_obj_str(cans.json, "id");
    sid = id ? xstrdup(id) : NULL;
    ops_answer_free(&cans);
    json_decref(body);
    if (!sid) {
        LOG_WARN("slack: creating a session failed: %s", err_str(crc ? crc : ERR_INTERNAL));
        sl_post_message(sl, channel, root, ":warning: I could not start a session.", NULL);
        return NULL;
    }
    sl_kv_put(sl, kthread, sid);
    sl_map_session(sl, sid, channel, root);
    char *msg = xasprintf("Starting work in `%s`…", repo);
    sl_post_message(sl, channel, root, msg, NULL);
    free(msg);
    return sid;
}

static void handle_mention(struct slack *sl, json_t *payload, json_t *ev)
{
    const char *channel = sl_obj_str(ev, "channel");
    const char *user = sl_obj_str(ev, "user");
    const char *ts = sl_obj_str(ev, "ts");
    const char *thread_ts = sl_obj_str(ev, "thread_ts");
    const char *event_id = sl_obj_str(payload, "event_id");
    const char *root = thread_ts ? thread_ts : ts;
    char *text = slack_strip_mention(sl_obj_str(ev, "text"));
    char *uname = NULL, *email = NULL;
    char *kthread = NULL, *kpending = NULL, *sid = NULL, *prompt = NULL, *repo = NULL;
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
        sl_post_message(sl, channel, root,
                        "Hi! Mention me with what you want done, e.g. `@sessiond fix the flaky "
                        "login test in webapp`.",
                        NULL);
        goto out;
    }
    kthread = xasprintf("slack:thread:%s:%s", channel, root);
    kpending = xasprintf("slack:pending:%s:%s", channel, root);
    sid = sl_kv_get(sl, kthread);
    prompt = xstrdup(text);
    if (!sid) {
        mention_pick_repo(sl, channel, ts, thread_ts, text, kpending, &prompt, &repo);
        if (!repo) {
            goto out; /* we asked which repository */
        }
    }
    sl_user_info(sl, user, &uname, &email);
    char uid[160];
    snprintf(uid, sizeof(uid), "slack:%s", user);
    json_t *author = json_pack("{s:s, s:s}", "id", uid, "name", uname);
    if (email) {
        json_object_set_new(author, "email", json_string(email));
    }
    if (!sid) {
        sid = mention_new_session(sl, &actor, prompt, repo, channel, root, kthread);
        if (!sid) {
            json_decref(author);
            goto out;
        }
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
        sl_post_message(sl, channel, root, msg, NULL);
        free(msg);
        goto out;
    }
    const char *pid = sl_obj_str(ans.json, "prompt_id");
    json_t *seqv = json_object_get(ans.json, "seq");
    if (pid) {
        if (!repo) {
            json_t *srow = NULL;
            if (registry_session_get(sl->app->reg, sid, &srow) == 0) {
                repo = sl_dup_or_null(sl_obj_str(srow, "repo"));
            }
            json_decref(srow);
        }
        sl_add_watch(sl, sid, pid, json_is_integer(seqv) ? json_integer_value(seqv) : 0, channel,
                     root, repo);
    }
    LOG_INFO("slack: prompt forwarded to session %s", sid);
out:
    ops_answer_free(&ans);
    json_decref(body);
    free(text);
    free(uname);
    free(email);
    free(kthread);
    free(kpending);
    free(sid);
    free(prompt);
    free(repo);
}

void sl_worker_process(struct slack *sl, json_t *payload)
{
    json_t *ev = json_object_get(payload, "event");
    const char *type = sl_obj_str(ev, "type");
    if (!type) {
        return;
    }
    if (strcmp(type, "app_mention") == 0) {
        /* Ignore our own messages and edits. */
        if (sl_obj_str(ev, "bot_id") || sl_obj_str(ev, "subtype")) {
            return;
        }
        handle_mention(sl, payload, ev);
    } else {
        LOG_DEBUG("slack: event %s ignored", type);
    }
}

void *sl_worker_main(void *arg)
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
            sl_worker_process(sl, j->payload);
        }
        json_decref(j->payload);
        free(j);
    }
    return NULL;
}
