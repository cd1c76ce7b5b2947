/*
 * hub.c - the WebSocket hub (libwebsockets 4.1, one service thread) and its SQLite workers.
 *
 * Files: hub.c (life cycle, the lws service thread, the protocol callback, the inbox),
 * clients.c (rings, client send queues, lag/gap/cull, writing), frames.c (what clients send,
 * presence), tickets.c (tickets, revocation), workers.c (SQLite workers); ws_int.h holds what
 * they share. Moving code between them never moves it to another thread.
 *
 * Threads and who touches what:
 *  - producers (any thread holding a session lock) call hub_on_event(): copy the event once
 *    into a frame {"type":"event","event":…} with LWS_PRE headroom, push it on the inbox
 *    (h->in_lock) and wake the lws thread with lws_cancel_service() when the inbox was empty;
 *  - HTTP threads call hub_adopt() (inbox again) and hub_presence() (h->map_lock);
 *  - the lws thread drains the inbox on LWS_CALLBACK_EVENT_WAIT_CANCELLED, owns the per-
 *    session rings, every client and every wsi; it never touches SQLite;
 *  - reader workers (hello, replay pages) and writer workers (presence rows and events,
 *    prompts, cancels; a session's writes always on the same writer, in order) take jobs
 *    from queues and send their results back through the inbox, so results and events
 *    reach the lws thread in one FIFO.
 *
 * Invariants:
 *  - A session's ring holds chunks (frames shared by every client of the session) in seq
 *    order; a chunk is freed once every live client has written it (keeping the RETAIN newest
 *    for replay hand-overs). A client's lag is bytes between its tail and the ring head;
 *    above send_queue_max it gets a `gap` frame and jumps to the head, and if it is still
 *    behind when the next gap is due it is closed with 1008.
 *  - Replay → live: every result and every event of a session arrives through the inbox in
 *    commit order, and a worker reads the file under the session lock, under which on_event
 *    has already run for every committed event. So when a page (or hello) that ends at seq L
 *    is processed, every event > L is either in the ring or still to come; the client starts
 *    at the first chunk holding L+1 (a batch straddling L is trimmed into a private frame),
 *    or pages again if the ring no longer holds L+1. Result: strictly increasing seq with no
 *    gap and no duplicate.
 *  - A struct client outlives its wsi while worker jobs for it are in flight (c->jobs, lws
 *    thread only); it is freed when both are gone.
 */
#include "server/ws/ws_int.h"
/* ---- the inbox ---- */

void ws_inbox_push(struct hub *h, struct inmsg *m)
{
    m->next = NULL;
    pthread_mutex_lock(&h->in_lock);
    int was_empty = h->in_head == NULL;
    if (h->in_tail) {
        h->in_tail->next = m;
    } else {
        h->in_head = m;
    }
    h->in_tail = m;
    pthread_mutex_unlock(&h->in_lock);
    /* One wake-up per non-empty transition: the lws thread takes the whole list at once. */
    if (was_empty && h->ctx) {
        lws_cancel_service(h->ctx);
    }
}

void hub_on_event(void *ctx, const char *session_id, int64_t seq, const char *json, size_t len)
{
    struct hub *h = ctx;
    if (!h || atomic_load(&h->stopping)) {
        return;
    }
    atomic_fetch_add(&h->st_events_in, 1);
    /* Skip sessions nobody watches. A session becomes watched (under map_lock) before its
     * first worker read, so nothing committed after that read is skipped. */
    pthread_mutex_lock(&h->map_lock);
    int watched = ws_map_find(h, session_id) != NULL;
    pthread_mutex_unlock(&h->map_lock);
    if (!watched) {
        LOG_DEBUG("hub: unwatched event %lld of %s", (long long)seq, session_id);
        return;
    }
    size_t flen = EV_PREFIX_LEN + len + 1;
    struct inmsg *m = xmalloc(sizeof(*m) + LWS_PRE + flen);
    memset(m, 0, sizeof(*m));
    m->kind = IN_EVENT;
    m->seq = seq;
    m->t_ns = clock_mono_ns();
    m->len = flen;
    m->pay = (unsigned char *)(m + 1) + LWS_PRE;
    memcpy(m->pay, EV_PREFIX, EV_PREFIX_LEN);
    memcpy(m->pay + EV_PREFIX_LEN, json, len);
    m->pay[flen - 1] = '}';
    snprintf(m->sid, sizeof(m->sid), "%s", session_id);
    ws_inbox_push(h, m);
}

void hub_adopt(struct hub *h, struct hub_handoff *ho)
{
    if (!h || !h->ctx || atomic_load(&h->stopping)) {
        if (ho) {
            close(ho->fd);
            free(ho->bytes);
            free(ho);
        }
        return;
    }
    struct inmsg *m = xcalloc(1, sizeof(*m));
    m->kind = IN_ADOPT;
    m->ho = ho;
    ws_inbox_push(h, m);
}

/* ---- lws thread: adopting and results ---- */

static void do_adopt(struct hub *h, struct hub_handoff *ho)
{
    h->adopting = ho;
    h->adopt_consumed = 0;
    struct lws *wsi = lws_adopt_socket_vhost_readbuf(h->vh, ho->fd, ho->bytes, ho->len);
    free(ho->bytes);
    ho->bytes = NULL;
    if (!wsi) {
        LOG_DEBUG("hub: adopting a connection failed");
    }
    if (h->adopt_consumed || !wsi) {
        free(ho);
    } else {
        /* Handshake not finished yet (waiting for a header table): keep it on the wsi. */
        lws_set_opaque_user_data(wsi, ho);
    }
    h->adopting = NULL;
}

static void handle_result(struct hub *h, struct job *j)
{
    struct client *c = j->c;
    if (!c) {
        ws_job_free(j);
        return;
    }
    c->jobs--;
    if (!c->wsi || c->state == C_CLOSING) {
        ws_client_maybe_free(c);
        ws_job_free(j);
        return;
    }
    switch (j->kind) {
    case J_HELLO:
        if (j->rc) {
            ws_client_error(c, j->rc, j->msg, err_ws_close(j->rc));
            break;
        }
        ws_pq_push(c, ws_pframe_from_buf(&j->out, PF_PLAIN));
        if (c->after >= 0) {
            c->delivered = c->after;
            if (c->after < j->last) {
                c->state = C_REPLAY;
                ws_post_page(c);
                break;
            }
        } else {
            c->delivered = j->last;
        }
        ws_try_go_live(c);
        break;
    case J_PAGE:
        c->page_wait = 0;
        if (j->rc) {
            ws_client_error(c, j->rc, j->msg, err_ws_close(j->rc));
            break;
        }
        if (j->count > 0) {
            struct pframe *f = ws_pframe_from_buf(&j->out, PF_PAGE);
            f->events = j->count;
            ws_pq_push(c, f);
            c->delivered = j->last;
        }
        if (j->count >= h->cfg.replay_page) {
            c->page_more = 1; /* the next page once this one is written */
        } else {
            ws_try_go_live(c);
        }
        break;
    case J_PROMPT:
    case J_CANCEL:
        c->writes--;
        if (j->rc) {
            ws_client_error(c, j->rc, j->msg, 0);
        } else if (j->out.len) {
            ws_pq_push(c, ws_pframe_new(j->out.data, j->out.len, PF_PLAIN));
        }
        break;
    default:
        break;
    }
    ws_wake(c);
    ws_job_free(j);
}

static void drain_inbox(struct hub *h)
{
    pthread_mutex_lock(&h->in_lock);
    struct inmsg *m = h->in_head;
    h->in_head = h->in_tail = NULL;
    pthread_mutex_unlock(&h->in_lock);
    while (m) {
        struct inmsg *nx = m->next;
        m->next = NULL;
        switch (m->kind) {
        case IN_EVENT: {
            struct hsess *hs = ws_map_find(h, m->sid);
            if (!hs) {
                LOG_DEBUG("hub: drop event %lld of %s", (long long)m->seq, m->sid);
                free(m);
                break;
            }
            if (hs->pend_tail) {
                hs->pend_tail->next = m;
            } else {
                hs->pend = m;
            }
            hs->pend_tail = m;
            hs->npend++;
            if (!hs->touched) {
                hs->touched = 1;
                hs->tnext = h->touched;
                h->touched = hs;
            }
            break;
        }
        case IN_ADOPT:
            ws_flush_touched(h);
            do_adopt(h, m->ho);
            free(m);
            break;
        case IN_RESULT:
            /* Everything before the result goes into the rings first (hand-over order). */
            ws_flush_touched(h);
            handle_result(h, m->job);
            free(m);
            break;
        case IN_REVOKE:
            ws_apply_revoke(h, m->rv);
            free(m);
            break;
        }
        m = nx;
    }
    ws_flush_touched(h);
}

/* A token with an expiry ends its connections when it expires, like a revoked one. Called
 * when the connection is accepted and again by its timer (which may fire early: the wall clock
 * and lws's monotonic clock drift apart). */
static void expiry_arm(struct client *c)
{
    if (c->who.expires_at_ms <= 0 || !c->wsi) {
        return;
    }
    int64_t left_ms = c->who.expires_at_ms - clock_now_ms();
    if (left_ms <= 0) {
        ws_client_kick(c, ERR_AUTH, "the token expired");
        return;
    }
    lws_set_timer_usecs(c->wsi, (lws_usec_t)left_ms * 1000);
}

static void on_established(struct hub *h, struct lws *wsi, struct client **pss)
{
    struct hub_handoff *ho = NULL;
    if (h->adopting && !h->adopt_consumed && lws_get_socket_fd(wsi) == h->adopting->fd) {
        ho = h->adopting;
        h->adopt_consumed = 1; /* do_adopt frees it */
    } else {
        ho = lws_get_opaque_user_data(wsi);
        lws_set_opaque_user_data(wsi, NULL);
    }
    struct client *c = xcalloc(1, sizeof(*c));
    c->h = h;
    c->wsi = wsi;
    c->after = -1;
    buf_init(&c->rx, h->cfg.max_frame);
    *pss = c;
    atomic_fetch_add(&h->st_clients, 1);
    if (!ho) {
        c->state = C_REFUSED;
        ws_client_error(c, ERR_INTERNAL, "connection without a hand-off", 1011);
        return;
    }
    int fromopaque = ho != h->adopting;
    if (!ho->err && (ho->err = ws_handoff_revoked(h, ho)) != 0) {
        LOG_INFO("hub: refusing a connection of %s to %s authenticated before a revocation",
                 ho->who.user_id, ho->sid);
        snprintf(ho->err_msg, sizeof(ho->err_msg), "%s",
                 ho->err == ERR_AUTH ? "the token was revoked"
                                     : "you were removed from this session");
    }
    if (ho->err) {
        c->state = C_REFUSED;
        ws_client_error(c, ho->err, ho->err_msg, err_ws_close(ho->err));
        c->state = C_REFUSED;
    } else {
        c->who = ho->who;
        c->can_write = ho->can_write;
        c->after = ho->after;
        snprintf(c->role, sizeof(c->role), "%s", ho->role);
        c->state = C_HELLO;
        struct hsess *hs = ws_hs_get(h, ho->sid);
        c->hs = hs;
        c->next = hs->clients;
        if (hs->clients) {
            hs->clients->prev = c;
        }
        hs->clients = c;
        if (ws_presence_add(h, hs, &c->who)) {
            struct job *j = ws_job_new(J_JOIN, NULL, hs->id);
            j->who = c->who;
            ws_jq_push(ws_writer_queue(h, j->sid), j);
        }
        struct job *j = ws_job_new(J_HELLO, c, hs->id);
        j->who = c->who;
        snprintf(j->role, sizeof(j->role), "%s", c->role);
        c->jobs++;
        ws_jq_push(&h->rq, j);
        expiry_arm(c);
    }
    if (fromopaque) {
        free(ho->bytes);
        free(ho);
    }
}

static void on_closed(struct hub *h, struct client *c)
{
    struct hsess *hs = c->hs;
    atomic_fetch_add(&h->st_clients, -1);
    c->wsi = NULL;
    if (hs) {
        if (c->prev) {
            c->prev->next = c->next;
        } else {
            hs->clients = c->next;
        }
        if (c->next) {
            c->next->prev = c->prev;
        }
        c->prev = c->next = NULL;
        /* Also at shutdown: the writers drain their queues before the store closes, so a
         * graceful restart leaves participant.left for everyone who was connected. */
        if (ws_presence_remove(h, hs, c->who.user_id)) {
            struct job *j = ws_job_new(J_LEAVE, NULL, hs->id);
            j->who = c->who;
            ws_jq_push(ws_writer_queue(h, j->sid), j);
        }
        c->hs = NULL;
        ws_ring_trim(hs);
        ws_hs_maybe_free(h, hs);
    }
    ws_client_maybe_free(c);
}

static int hub_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len)
{
    struct lws_context *ctx = lws_get_context(wsi);
    struct hub *h = ctx ? lws_context_user(ctx) : NULL;
    struct client **pss = user;
    if (!h) {
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_inbox(h);
        return 0;
    case LWS_CALLBACK_ESTABLISHED:
        on_established(h, wsi, pss);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!pss || !*pss) {
            return 0;
        }
        return ws_on_writeable(h, *pss, wsi);
    case LWS_CALLBACK_RECEIVE:
        if (!pss || !*pss) {
            return -1;
        }
        return ws_on_receive(*pss, wsi, in, len);
    case LWS_CALLBACK_TIMER:
        if (pss && *pss) {
            expiry_arm(*pss);
        }
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (pss && *pss) {
            on_closed(h, *pss);
            *pss = NULL;
        }
        return 0;
    case LWS_CALLBACK_WSI_DESTROY: {
        /* A hand-off whose handshake never completed. */
        struct hub_handoff *ho = lws_get_opaque_user_data(wsi);
        if (ho && ho != h->adopting) {
            lws_set_opaque_user_data(wsi, NULL);
            free(ho->bytes);
            free(ho);
        }
        return 0;
    }
    case LWS_CALLBACK_HTTP:
        /* Only upgrade requests are handed over; anything else is a bug upstream. */
        return -1;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"sessiond", hub_callback, sizeof(struct client *), 1024, 0, NULL, 1u << 22},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Shutdown: tell every client "going away" (1001) so it reconnects, instead of a reset. */
static void close_all(struct hub *h)
{
    for (uint32_t b = 0; b < MAP_BUCKETS; b++) {
        for (struct hsess *hs = h->map[b]; hs; hs = hs->hnext) {
            for (struct client *c = hs->clients; c; c = c->next) {
                c->state = C_CLOSING;
                c->close_code = LWS_CLOSE_STATUS_GOINGAWAY;
                snprintf(c->close_reason, sizeof(c->close_reason), "server restarting");
                if (c->wsi) {
                    /* Bounds the flush below for peers that do not read. */
                    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, 1);
                }
                ws_wake(c);
            }
        }
    }
}

static void *lws_main(void *arg)
{
    struct hub *h = arg;
    pthread_setname_np(pthread_self(), "hub-lws");
    while (!atomic_load(&h->stopping)) {
        if (lws_service(h->ctx, 0) < 0) {
            break;
        }
    }
    close_all(h);
    int64_t until = clock_mono_ms() + SHUTDOWN_FLUSH_MS;
    while (atomic_load(&h->st_clients) > 0 && clock_mono_ms() < until) {
        lws_service(h->ctx, 0);
    }
    return NULL;
}

/* ---- life cycle ---- */

static void lws_log(int level, const char *line)
{
    /* Known noise of the MHD -> lws hand-off (the adopted socket was already read by MHD). */
    if (strstr(line, "calling service")) {
        return;
    }
    if (level & LLL_ERR) {
        LOG_WARN("lws: %s", line);
    } else {
        LOG_DEBUG("lws: %s", line);
    }
}

int hub_new(const struct hub_config *cfg, struct hub **out)
{
    struct hub *h = xcalloc(1, sizeof(*h));
    if (cfg) {
        h->cfg = *cfg;
    }
    if (!h->cfg.max_frame) {
        h->cfg.max_frame = 1u << 20;
    }
    if (!h->cfg.send_queue_max) {
        h->cfg.send_queue_max = 1u << 20;
    }
    if (h->cfg.ping_secs <= 0) {
        h->cfg.ping_secs = 30;
    }
    if (h->cfg.workers <= 0) {
        h->cfg.workers = 2;
    }
    if (h->cfg.replay_page <= 0) {
        h->cfg.replay_page = 256;
    }
    pthread_mutex_init(&h->in_lock, NULL);
    pthread_mutex_init(&h->map_lock, NULL);
    pthread_mutex_init(&h->tk_lock, NULL);
    ws_jq_init(&h->rq);
    for (int i = 0; i < NWRITERS; i++) {
        ws_jq_init(&h->wq[i]);
    }
    *out = h;
    return 0;
}

int hub_start(struct hub *h, struct app *app)
{
    struct lws_context_creation_info info;
    lws_retry_bo_t *retry = &h->retry;
    h->app = app;

    /* lws sizes its fd table from the limit at context creation: allow many connections. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max && rl.rlim_cur < 65536) {
        rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    lws_set_log_level(LLL_ERR | (log_threshold <= LOG_LEVEL_DEBUG ? LLL_WARN : 0), lws_log);

    retry->secs_since_valid_ping = (uint16_t)h->cfg.ping_secs;
    retry->secs_since_valid_hangup = (uint16_t)(h->cfg.ping_secs * 2 + 10);
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.protocols = protocols;
    info.user = h;
    info.max_http_header_data = 16384;
    info.max_http_header_pool = 64;
    info.timeout_secs = 20;
    info.retry_and_idle_policy = retry;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_DISABLE_IPV6;
    info.vhost_name = "sessiond";
    h->ctx = lws_create_context(&info);
    if (!h->ctx) {
        LOG_ERROR("hub: lws_create_context failed");
        return ERR_INTERNAL;
    }
    h->vh = lws_get_vhost_by_name(h->ctx, "sessiond");
    if (!h->vh) {
        LOG_ERROR("hub: no vhost");
        return ERR_INTERNAL;
    }
    h->lat_hist = xcalloc(LAT_BUCKETS + 1, sizeof(uint64_t));
    h->readers = xcalloc((size_t)h->cfg.workers, sizeof(pthread_t));
    for (int i = 0; i < h->cfg.workers; i++) {
        if (pthread_create(&h->readers[i], NULL, ws_reader_main, h) != 0) {
            return ERR_INTERNAL;
        }
        h->nreaders++;
    }
    for (int i = 0; i < NWRITERS; i++) {
        struct writer_arg *wa = xmalloc(sizeof(*wa));
        wa->h = h;
        wa->q = i;
        if (pthread_create(&h->writers[i], NULL, ws_writer_main, wa) != 0) {
            free(wa);
            return ERR_INTERNAL;
        }
        h->nwriters++;
    }
    if (pthread_create(&h->lws_thread, NULL, lws_main, h) != 0) {
        return ERR_INTERNAL;
    }
    h->lws_started = 1;
    LOG_INFO("hub: started (send queue %zu bytes, max frame %zu bytes, ping %ds)",
             h->cfg.send_queue_max, h->cfg.max_frame, h->cfg.ping_secs);
    return 0;
}

void hub_free(struct hub *h)
{
    if (!h) {
        return;
    }
    atomic_store(&h->stopping, 1);
    if (h->lws_started) {
        lws_cancel_service(h->ctx);
        pthread_join(h->lws_thread, NULL);
    }
    ws_jq_stop(&h->rq);
    for (int i = 0; i < NWRITERS; i++) {
        ws_jq_stop(&h->wq[i]);
    }
    for (int i = 0; i < h->nreaders; i++) {
        pthread_join(h->readers[i], NULL);
    }
    for (int i = 0; i < h->nwriters; i++) {
        pthread_join(h->writers[i], NULL);
    }
    /* Closes every connection (CLOSED callbacks run here, on this thread, lws idle). */
    if (h->ctx) {
        lws_context_destroy(h->ctx);
        h->ctx = NULL;
    }
    /* Results and events nobody will deliver any more. */
    struct inmsg *m = h->in_head;
    while (m) {
        struct inmsg *nx = m->next;
        if (m->kind == IN_RESULT) {
            struct client *c = m->job->c;
            if (c) {
                c->jobs--;
                ws_client_maybe_free(c);
            }
            ws_job_free(m->job);
        } else if (m->kind == IN_ADOPT) {
            close(m->ho->fd);
            free(m->ho->bytes);
            free(m->ho);
        } else if (m->kind == IN_REVOKE) {
            free(m->rv);
        }
        free(m);
        m = nx;
    }
    struct job *queues[1 + NWRITERS];
    queues[0] = h->rq.head;
    for (int i = 0; i < NWRITERS; i++) {
        queues[1 + i] = h->wq[i].head;
    }
    for (int q = 0; q < 1 + NWRITERS; q++) {
        struct job *j = queues[q];
        while (j) {
            struct job *nx = j->next;
            if (j->c) {
                j->c->jobs--;
                ws_client_maybe_free(j->c);
            }
            ws_job_free(j);
            j = nx;
        }
    }
    struct ticket *t = h->tickets;
    while (t) {
        struct ticket *nx = t->next;
        free(t);
        t = nx;
    }
    struct revoked *rv = h->revoked;
    while (rv) {
        struct revoked *nx = rv->next;
        free(rv);
        rv = nx;
    }
    if (h->lat_hist) {
        uint64_t total = 0, acc = 0;
        double pct[3] = {0.5, 0.99, 0.999}, val[3] = {0, 0, 0};
        for (int i = 0; i <= LAT_BUCKETS; i++) {
            total += h->lat_hist[i];
        }
        for (int i = 0, k = 0; i <= LAT_BUCKETS && k < 3 && total; i++) {
            acc += h->lat_hist[i];
            while (k < 3 && (double)acc >= pct[k] * (double)total) {
                val[k++] = (i + 0.5) * LAT_BUCKET_US / 1000.0;
            }
        }
        if (total) {
            LOG_INFO("hub: commit-to-write latency of %llu live frames: p50 %.2f ms, p99 %.2f ms, "
                     "p99.9 %.2f ms; %llu events delivered, %llu gaps, %llu clients culled",
                     (unsigned long long)total, val[0], val[1], val[2],
                     (unsigned long long)atomic_load(&h->st_events_out),
                     (unsigned long long)atomic_load(&h->st_gaps),
                     (unsigned long long)atomic_load(&h->st_culled));
        }
        free(h->lat_hist);
    }
    free(h->readers);
    buf_free(&h->scratch);
    free(h);
}

void hub_get_stats(struct hub *h, struct hub_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!h) {
        return;
    }
    out->events_in = atomic_load(&h->st_events_in);
    out->frames_out = atomic_load(&h->st_frames_out);
    out->events_out = atomic_load(&h->st_events_out);
    out->gaps = atomic_load(&h->st_gaps);
    out->culled = atomic_load(&h->st_culled);
    out->clients = atomic_load(&h->st_clients);
    pthread_mutex_lock(&h->map_lock);
    out->sessions = h->nsessions;
    pthread_mutex_unlock(&h->map_lock);
}
