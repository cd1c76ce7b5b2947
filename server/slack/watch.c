/*
 * watch.c - result watches: the store's event observer (slack_on_event) feeding a bounded queue,
 * the watcher thread that catches up from the session file and posts how a prompt ended, and the
 * watches saved in the registry kv.
 */
#include "server/slack/slack_int.h"
/* Save the set of watches, so results are still posted after a restart. save_lock keeps the
 * kv writes in the order of the snapshots. */
static void persist_save(struct slack *sl)
{
    pthread_mutex_lock(&sl->save_lock);
    pthread_mutex_lock(&sl->lock);
    char *s = jx_dump(sl->persist);
    pthread_mutex_unlock(&sl->lock);
    sl_kv_put(sl, "slack:watches", s);
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

void sl_add_watch(struct slack *sl, const char *sid, const char *pid, int64_t after,
                  const char *channel, const char *thread_ts, const char *repo)
{
    struct watch *w = xcalloc(1, sizeof(*w));
    w->session_id = xstrdup(sid);
    w->prompt_id = xstrdup(pid);
    w->channel = xstrdup(channel);
    w->thread_ts = xstrdup(thread_ts);
    w->repo = sl_dup_or_null(repo);
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

/* ------------------------------------------------------------------------------------------ */
/* the watcher: post results when prompts end                                                  */

void sl_watch_free(struct watch *w)
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
    const char *type = sl_obj_str(e, "type");
    json_t *d = json_object_get(e, "data");
    const char *pid = sl_obj_str(d, "prompt_id");
    if (!type) {
        return 0;
    }
    int mine = !pid || strcmp(pid, w->prompt_id) == 0;
    if (strcmp(type, "message") == 0 && mine) {
        const char *role = sl_obj_str(d, "role");
        const char *content = sl_obj_str(d, "content");
        if (role && strcmp(role, "assistant") == 0 && content) {
            free(w->summary);
            w->summary = xstrdup(content);
        }
    } else if (strncmp(type, "agent.", 6) == 0 && mine) {
        const char *s = sl_obj_str(d, "summary");
        if (s) {
            free(w->summary);
            w->summary = xstrdup(s);
        }
        const char *pr = sl_obj_str(d, "pr_url");
        if (!pr) {
            pr = sl_obj_str(d, "url");
        }
        if (is_pr_url(pr)) {
            free(w->pr_url);
            w->pr_url = xstrdup(pr);
        }
        const char *text = sl_obj_str(d, "text");
        if (!text) {
            text = sl_obj_str(d, "data");
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
        const char *u = sl_obj_str(d, "url");
        if (is_pr_url(u)) {
            free(w->pr_url);
            w->pr_url = xstrdup(u);
        }
    } else if (strcmp(type, "artifact") == 0 || strcmp(type, "artifact.created") == 0) {
        const char *t = sl_obj_str(d, "type");
        const char *u = sl_obj_str(d, "url");
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
    char *url = sl_session_url(sl, w->session_id);
    json_t *blocks = slack_result_blocks(w->repo, w->state, summary, w->pr_url, url);
    char *fallback =
        xasprintf("%s in %s", sl_state_verb(w->state), w->repo ? w->repo : "the session");
    sl_post_message(sl, w->channel, w->thread_ts, fallback, blocks);
    free(fallback);
    json_decref(blocks);
    free(url);
}

/* ------------------------------------------------------------------------------------------ */
/* pull request lines: the thread that started a session hears when its pull request is opened
 * and when it is merged (kv "slack:session:{sid}" -> {channel, thread_ts})                     */

void sl_map_session(struct slack *sl, const char *sid, const char *channel, const char *root)
{
    char *key = xasprintf("slack:session:%s", sid);
    json_t *v = json_pack("{s:s, s:s}", "channel", channel, "thread_ts", root);
    char *s = jx_dump(v);
    sl_kv_put(sl, key, s);
    free(s);
    json_decref(v);
    free(key);
}

/* 1 if the event json (our serializer's: "type" is its second key) is a pull request line. */
static int is_pr_line(const char *json, size_t len)
{
    static const char *const types[] = {"\"type\":\"pr.created\"", "\"type\":\"pr.merged\""};
    size_t head = len < 96 ? len : 96;
    for (size_t i = 0; i < 2; i++) {
        if (memmem(json, head, types[i], strlen(types[i]))) {
            return 1;
        }
    }
    return 0;
}

/* Post the line of one pr.created / pr.merged event in its session's thread, if Slack
 * started the session. Watcher thread. */
static void pr_note_post(struct slack *sl, struct sevent *e)
{
    char *key = xasprintf("slack:session:%s", e->session_id);
    char *v = sl_kv_get(sl, key);
    json_t *where = v ? json_loads(v, 0, NULL) : NULL;
    json_t *ev = json_loadb(e->json, e->len, 0, NULL);
    const char *ch = sl_obj_str(where, "channel"), *ts = sl_obj_str(where, "thread_ts");
    const char *type = sl_obj_str(ev, "type");
    json_t *d = json_object_get(ev, "data");
    const char *url = sl_obj_str(d, "url");
    json_t *num = json_object_get(d, "number");
    if (ch && ts && type && is_pr_url(url) && json_is_integer(num)) {
        int merged = strcmp(type, "pr.merged") == 0;
        int draft = json_is_true(json_object_get(d, "draft"));
        /* Slack link syntax <url|text>: the URL comes from GitHub's answer (is_pr_url) and
         * holds no '|' or '>' GitHub would put there */
        char *text =
            merged ? xasprintf(":tada: Pull request <%s|#%lld> was merged.", url,
                               (long long)json_integer_value(num))
                   : xasprintf(":arrow_heading_up: Opened %spull request <%s|#%lld>.",
                               draft ? "draft " : "", url, (long long)json_integer_value(num));
        if (!strpbrk(url, "|<> ")) {
            sl_post_message(sl, ch, ts, text, NULL);
        }
        free(text);
    }
    json_decref(ev);
    json_decref(where);
    free(v);
    free(key);
}

void sl_sevent_free(struct sevent *e)
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
    if (!sl->stopping && is_pr_line(json, len)) {
        if (sl->npr < MAX_PR_NOTES) {
            struct sevent *e = xcalloc(1, sizeof(*e));
            e->session_id = xstrdup(session_id);
            e->seq = seq;
            e->json = xmalloc(len + 1);
            memcpy(e->json, json, len);
            e->json[len] = 0;
            e->len = len;
            if (sl->pr_tail) {
                sl->pr_tail->next = e;
            } else {
                sl->pr_head = e;
            }
            sl->pr_tail = e;
            sl->npr++;
            pthread_cond_broadcast(&sl->wcond);
        } else {
            LOG_WARN("slack: too many pull request lines queued: %s's is dropped", session_id);
        }
    }
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
    sl_watch_free(w);
}

void *sl_watcher_main(void *arg)
{
    struct slack *sl = arg;
    for (;;) {
        pthread_mutex_lock(&sl->lock);
        while (!sl->stopping && !sl->ev_head && !sl->pr_head && !any_resync(sl)) {
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
        struct sevent *notes = sl->pr_head;
        sl->pr_head = sl->pr_tail = NULL;
        sl->npr = 0;
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
            sl_sevent_free(e);
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
        /* after the results: a pull request opened at the end of a prompt comes after the
         * prompt's result in the thread */
        while (notes) {
            struct sevent *e = notes;
            notes = e->next;
            pr_note_post(sl, e);
            sl_sevent_free(e);
        }
    }
    return NULL;
}

/* Resume the watches of prompts that were running when the server stopped. */
void sl_load_watches(struct slack *sl)
{
    char *v = sl_kv_get(sl, "slack:watches");
    json_t *o = v ? json_loads(v, 0, NULL) : NULL;
    free(v);
    const char *k;
    json_t *w;
    json_object_foreach(o, k, w)
    {
        const char *sid = sl_obj_str(w, "session_id"), *pid = sl_obj_str(w, "prompt_id");
        const char *ch = sl_obj_str(w, "channel"), *ts = sl_obj_str(w, "thread_ts");
        json_t *after = json_object_get(w, "after");
        if (sid && pid && ch && ts) {
            sl_add_watch(sl, sid, pid, json_is_integer(after) ? json_integer_value(after) : 0, ch,
                         ts, sl_obj_str(w, "repo"));
        }
    }
    if (json_object_size(o)) {
        LOG_INFO("slack: resumed %zu pending result(s)", json_object_size(o));
    }
    json_decref(o);
}
