/*
 * clients.c - per-session rings and per-client send queues on the lws thread: private frames, ring
 * push/trim, lag, gap and cull, replay-to-live hand-over and writing frames on
 * LWS_CALLBACK_SERVER_WRITEABLE. lws thread only (hub.c explains the model).
 */
#include "server/ws/ws_int.h"

static void client_gap(struct client *c);
/* ---- small helpers ---- */

uint32_t ws_hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

/* Caller holds map_lock, or is the lws thread (the only writer of the structure). */
struct hsess *ws_map_find(struct hub *h, const char *sid)
{
    for (struct hsess *hs = h->map[ws_hash_str(sid) & (MAP_BUCKETS - 1)]; hs; hs = hs->hnext) {
        if (strcmp(hs->id, sid) == 0) {
            return hs;
        }
    }
    return NULL;
}

/* A private frame holding a copy of s (n bytes). */
struct pframe *ws_pframe_new(const char *s, size_t n, int kind)
{
    struct pframe *f = xmalloc(sizeof(*f) + LWS_PRE + n);
    f->next = NULL;
    f->kind = kind;
    f->events = 0;
    f->len = n;
    f->pay = (unsigned char *)(f + 1) + LWS_PRE;
    f->owner = NULL;
    memcpy(f->pay, s, n);
    return f;
}

/* A private frame taking a buf whose first LWS_PRE bytes are padding. */
struct pframe *ws_pframe_from_buf(struct buf *b, int kind)
{
    struct pframe *f = xmalloc(sizeof(*f));
    size_t len;
    char *mem = buf_detach(b, &len);
    f->next = NULL;
    f->kind = kind;
    f->events = 0;
    f->owner = mem;
    f->pay = (unsigned char *)mem + LWS_PRE;
    f->len = len - LWS_PRE;
    return f;
}

static void pframe_free(struct pframe *f)
{
    if (f) {
        free(f->owner);
        free(f);
    }
}

/* Free a client's whole queue from its head f (the caller resets pq/pq_tail if it goes on). */
static void pframe_list_free(struct pframe *f)
{
    while (f) {
        struct pframe *nx = f->next;
        pframe_free(f);
        f = nx;
    }
}

void ws_pq_push(struct client *c, struct pframe *f)
{
    if (c->pq_tail) {
        c->pq_tail->next = f;
    } else {
        c->pq = f;
    }
    c->pq_tail = f;
}

void ws_wake(struct client *c)
{
    if (c->wsi) {
        lws_callback_on_writable(c->wsi);
    }
}

/* Queue {"type":"error",...}; close_code != 0 closes the connection after it. */
void ws_client_error(struct client *c, int err, const char *msg, int close_code)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"type\":\"error\",\"code\":");
    buf_json_str(&b, err_code(err), strlen(err_code(err)));
    buf_puts(&b, ",\"message\":");
    const char *m = msg && *msg ? msg : err_str(err);
    buf_json_str(&b, m, strlen(m));
    buf_puts(&b, "}");
    ws_pq_push(c, ws_pframe_new(b.data, b.len, PF_PLAIN));
    buf_free(&b);
    if (close_code) {
        c->close_code = close_code;
        snprintf(c->close_reason, sizeof(c->close_reason), "%s", err_code(err));
        c->state = C_CLOSING;
    }
    ws_wake(c);
}

void ws_pad_pre(struct buf *b)
{
    static const char zeros[LWS_PRE] = {0};
    buf_append(b, zeros, LWS_PRE);
}

/* ---- rings (lws thread only) ---- */

static struct chunk *ring_at(struct hsess *hs, uint64_t n)
{
    return hs->ring[n & (hs->cap - 1)];
}

static void chunk_free(struct chunk *ch)
{
    if (ch) {
        if (ch->ev != &ch->one) {
            free(ch->ev);
        }
        free(ch->owner);
        free(ch);
    }
}

static void ring_free_below(struct hsess *hs, uint64_t nb)
{
    while (hs->base < nb && hs->base < hs->head) {
        struct chunk **slot = &hs->ring[hs->base & (hs->cap - 1)];
        chunk_free(*slot);
        *slot = NULL;
        hs->base++;
    }
}

static void ring_push(struct hub *h, struct hsess *hs, struct chunk *ch)
{
    (void)h;
    if (hs->head - hs->base == hs->cap) {
        if (hs->cap < RING_MAX) {
            uint32_t ncap = hs->cap ? hs->cap * 2 : RING_MIN;
            struct chunk **nr = xcalloc(ncap, sizeof(*nr));
            for (uint64_t i = hs->base; i < hs->head; i++) {
                nr[i & (ncap - 1)] = hs->ring[i & (hs->cap - 1)];
            }
            free(hs->ring);
            hs->ring = nr;
            hs->cap = ncap;
        } else {
            /* Full at the hard cap: drop the oldest; whoever still needed it gets a gap. */
            for (struct client *c = hs->clients; c; c = c->next) {
                if (c->state == C_LIVE && c->tail == hs->base) {
                    client_gap(c);
                }
            }
            ring_free_below(hs, hs->base + 1);
        }
    }
    ch->off = hs->head_off;
    hs->head_off += ch->len;
    if (ch->n > 0 && ch->last > hs->max_seq) {
        hs->max_seq = ch->last;
    }
    hs->ring[hs->head & (hs->cap - 1)] = ch;
    hs->head++;
}

/* Free what no live client needs any more, keeping the RETAIN newest for hand-overs. */
void ws_ring_trim(struct hsess *hs)
{
    uint64_t min = hs->head;
    for (struct client *c = hs->clients; c; c = c->next) {
        if (c->state == C_LIVE && c->tail < min) {
            min = c->tail;
        }
    }
    uint64_t keep = hs->head > RETAIN ? hs->head - RETAIN : 0;
    ring_free_below(hs, min < keep ? min : keep);
}

/* Bytes queued for a live client in the ring. */
static uint64_t client_lag(struct client *c)
{
    struct hsess *hs = c->hs;
    if (c->tail >= hs->head) {
        return 0;
    }
    return hs->head_off - ring_at(hs, c->tail)->off;
}

/* The client fell behind: tell it what it missed and move it to the head; if the previous
 * gap notice is still unwritten the peer is not reading at all: close it (1008). */
static void client_gap(struct client *c)
{
    struct hub *h = c->h;
    struct hsess *hs = c->hs;
    if (c->gap_pending) {
        atomic_fetch_add(&h->st_culled, 1);
        LOG_INFO("hub: closing stuck client of session %s (user %s)", hs->id, c->who.user_id);
        c->state = C_CLOSING;
        c->close_code = LWS_CLOSE_STATUS_POLICY_VIOLATION;
        snprintf(c->close_reason, sizeof(c->close_reason), "too slow");
        if (c->wsi) {
            /* If it never becomes writable again, drop it without a close frame. */
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, STUCK_KILL_SECS);
            lws_callback_on_writable(c->wsi);
        }
        return;
    }
    atomic_fetch_add(&h->st_gaps, 1);
    char tmp[160];
    int n = snprintf(tmp, sizeof(tmp), "{\"type\":\"gap\",\"after_seq\":%lld,\"next_seq\":%lld}",
                     (long long)c->delivered, (long long)hs->max_seq + 1);
    ws_pq_push(c, ws_pframe_new(tmp, (size_t)n, PF_GAP));
    c->gap_pending = 1;
    c->tail = hs->head;
    if (hs->max_seq > c->delivered) {
        c->delivered = hs->max_seq;
    }
    ws_wake(c);
}

/* Wake live clients after new chunks and cut the laggards. */
static void hs_notify(struct hub *h, struct hsess *hs)
{
    uint64_t cap = h->cfg.send_queue_max;
    for (struct client *c = hs->clients; c; c = c->next) {
        if (c->state != C_LIVE) {
            continue;
        }
        if (client_lag(c) > cap) {
            client_gap(c);
        }
        ws_wake(c);
    }
    ws_ring_trim(hs);
}

/* Turn the pending events of hs into chunks (one frame per event, or `events` batches). */
static void hs_flush(struct hub *h, struct hsess *hs)
{
    struct inmsg *m = hs->pend;
    hs->pend = hs->pend_tail = NULL;
    int npend = hs->npend;
    hs->npend = 0;
    if (!m) {
        return;
    }
    if (npend == 1) {
        struct chunk *ch = xcalloc(1, sizeof(*ch));
        ch->owner = m;
        ch->pay = m->pay;
        ch->len = m->len;
        ch->first = ch->last = m->seq;
        ch->t_ns = m->t_ns;
        ch->n = 1;
        ch->ev = &ch->one;
        ch->one.seq = m->seq;
        ch->one.off = (uint32_t)EV_PREFIX_LEN;
        ch->one.len = (uint32_t)(m->len - EV_PREFIX_LEN - 1);
        ring_push(h, hs, ch);
    } else {
        while (m) {
            /* One batch: up to BATCH_MAX_EVENTS / BATCH_MAX_BYTES. */
            size_t total = EVS_PREFIX_LEN + 2;
            int n = 0;
            for (struct inmsg *p = m; p && n < BATCH_MAX_EVENTS; p = p->next) {
                size_t el = p->len - EV_PREFIX_LEN - 1;
                if (n > 0 && total + el + 1 > BATCH_MAX_BYTES) {
                    break;
                }
                total += el + 1;
                n++;
            }
            struct chunk *ch = xcalloc(1, sizeof(*ch));
            unsigned char *mem = xmalloc(LWS_PRE + total);
            ch->owner = mem;
            ch->pay = mem + LWS_PRE;
            ch->ev = xmalloc((size_t)n * sizeof(struct evref));
            ch->n = n;
            ch->t_ns = m->t_ns;
            size_t o = 0;
            memcpy(ch->pay, EVS_PREFIX, EVS_PREFIX_LEN);
            o += EVS_PREFIX_LEN;
            for (int i = 0; i < n; i++) {
                struct inmsg *p = m;
                m = m->next;
                size_t el = p->len - EV_PREFIX_LEN - 1;
                if (i > 0) {
                    ch->pay[o++] = ',';
                }
                ch->ev[i].seq = p->seq;
                ch->ev[i].off = (uint32_t)o;
                ch->ev[i].len = (uint32_t)el;
                memcpy(ch->pay + o, p->pay + EV_PREFIX_LEN, el);
                o += el;
                free(p);
            }
            ch->pay[o++] = ']';
            ch->pay[o++] = '}';
            ch->len = o;
            ch->first = ch->ev[0].seq;
            ch->last = ch->ev[n - 1].seq;
            ring_push(h, hs, ch);
        }
    }
    hs_notify(h, hs);
}

void ws_flush_touched(struct hub *h)
{
    struct hsess *hs = h->touched;
    h->touched = NULL;
    while (hs) {
        struct hsess *nx = hs->tnext;
        hs->touched = 0;
        hs->tnext = NULL;
        hs_flush(h, hs);
        hs = nx;
    }
}

/* A frame for everybody in the session, outside the seq stream (typing, status). */
void ws_hs_broadcast(struct hub *h, struct hsess *hs, const char *s, size_t n)
{
    struct chunk *ch = xcalloc(1, sizeof(*ch));
    unsigned char *mem = xmalloc(LWS_PRE + n);
    memcpy(mem + LWS_PRE, s, n);
    ch->owner = mem;
    ch->pay = mem + LWS_PRE;
    ch->len = n;
    ch->ev = &ch->one;
    ring_push(h, hs, ch);
    hs_notify(h, hs);
}

/* ---- sessions and presence (lws thread; map changes under map_lock) ---- */

struct hsess *ws_hs_get(struct hub *h, const char *sid)
{
    struct hsess *hs = ws_map_find(h, sid);
    if (hs) {
        return hs;
    }
    hs = xcalloc(1, sizeof(*hs));
    snprintf(hs->id, sizeof(hs->id), "%s", sid);
    pthread_mutex_lock(&h->map_lock);
    uint32_t b = ws_hash_str(sid) & (MAP_BUCKETS - 1);
    hs->hnext = h->map[b];
    h->map[b] = hs;
    h->nsessions++;
    pthread_mutex_unlock(&h->map_lock);
    return hs;
}

void ws_hs_maybe_free(struct hub *h, struct hsess *hs)
{
    if (hs->clients || hs->touched) {
        return;
    }
    pthread_mutex_lock(&h->map_lock);
    struct hsess **pp = &h->map[ws_hash_str(hs->id) & (MAP_BUCKETS - 1)];
    while (*pp && *pp != hs) {
        pp = &(*pp)->hnext;
    }
    if (*pp) {
        *pp = hs->hnext;
    }
    h->nsessions--;
    struct puser *u = hs->users;
    hs->users = NULL;
    pthread_mutex_unlock(&h->map_lock);
    while (u) {
        struct puser *nx = u->next;
        free(u);
        u = nx;
    }
    ring_free_below(hs, hs->head);
    free(hs->ring);
    struct inmsg *m = hs->pend;
    while (m) {
        struct inmsg *nx = m->next;
        free(m);
        m = nx;
    }
    free(hs);
}

/* ---- replay → live (lws thread) ---- */

void ws_post_page(struct client *c)
{
    struct job *j = ws_job_new(J_PAGE, c, c->hs->id);
    j->after = c->delivered;
    c->jobs++;
    c->page_wait = 1;
    ws_jq_push(&c->h->rq, j);
}

/* Start live delivery after c->delivered if the ring still holds what follows; else page. */
void ws_try_go_live(struct client *c)
{
    struct hsess *hs = c->hs;
    int64_t d = c->delivered;
    uint64_t i = hs->base;
    LOG_DEBUG("hub: go live after %lld: ring [%llu,%llu) max_seq %lld", (long long)d,
              (unsigned long long)hs->base, (unsigned long long)hs->head, (long long)hs->max_seq);
    while (i < hs->head) {
        struct chunk *ch = ring_at(hs, i);
        if (ch->n > 0 && ch->last > d) {
            break;
        }
        i++;
    }
    if (i == hs->head) {
        if (hs->max_seq > d) {
            /* What follows d has left the ring already: read it from the file. */
            c->state = C_REPLAY;
            ws_post_page(c);
            return;
        }
        c->state = C_LIVE;
        c->tail = hs->head;
        return;
    }
    struct chunk *ch = ring_at(hs, i);
    if (ch->first > d + 1) {
        /* The ring starts after a hole (d+1 .. first-1 was trimmed). */
        c->state = C_REPLAY;
        ws_post_page(c);
        return;
    }
    if (ch->first <= d) {
        /* A batch straddles d: send only the events after d, privately. */
        struct buf b;
        buf_init(&b, 0);
        ws_pad_pre(&b);
        buf_puts(&b, EVS_PREFIX);
        int n = 0;
        for (int k = 0; k < ch->n; k++) {
            if (ch->ev[k].seq <= d) {
                continue;
            }
            if (n++) {
                buf_putc(&b, ',');
            }
            buf_append(&b, ch->pay + ch->ev[k].off, ch->ev[k].len);
        }
        buf_puts(&b, "]}");
        struct pframe *f = ws_pframe_from_buf(&b, PF_PLAIN);
        f->events = n;
        ws_pq_push(c, f);
        c->delivered = ch->last;
        i++;
    }
    c->state = C_LIVE;
    c->tail = i;
    ws_wake(c);
}

void ws_client_maybe_free(struct client *c)
{
    if (c->wsi || c->jobs > 0) {
        return;
    }
    pframe_list_free(c->pq);
    buf_free(&c->rx);
    free(c);
}

/* ---- lws thread: revocations ---- */

/* Drop what is queued for c and close it: the error frame goes first, then the close code. A
 * peer that does not read is dropped without a close frame after STUCK_KILL_SECS. */
void ws_client_kick(struct client *c, int err, const char *msg)
{
    if (c->state == C_CLOSING || c->state == C_REFUSED) {
        return;
    }
    pframe_list_free(c->pq);
    c->pq = c->pq_tail = NULL;
    c->gap_pending = 0;
    ws_client_error(c, err, msg, err_ws_close(err));
    if (c->wsi) {
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, STUCK_KILL_SECS);
    }
}

/* Commit-to-write latency of one live frame to one client (lws thread only). */
static void lat_record(struct hub *h, int64_t t_ns)
{
    if (!h->lat_hist || !t_ns) {
        return;
    }
    int64_t b = (clock_mono_ns() - t_ns) / 1000 / LAT_BUCKET_US;
    h->lat_hist[b < 0 ? 0 : (b > LAT_BUCKETS ? LAT_BUCKETS : b)]++;
}

int ws_on_writeable(struct hub *h, struct client *c, struct lws *wsi)
{
    struct hsess *hs = c->hs;
    if (c->pq) {
        struct pframe *f = c->pq;
        c->pq = f->next;
        if (!c->pq) {
            c->pq_tail = NULL;
        }
        int w = lws_write(wsi, f->pay, f->len, LWS_WRITE_TEXT);
        if (f->kind == PF_GAP) {
            c->gap_pending = 0;
        }
        atomic_fetch_add(&h->st_frames_out, 1);
        atomic_fetch_add(&h->st_events_out, (unsigned long long)f->events);
        pframe_free(f);
        if (w < 0) {
            return -1;
        }
        if (!c->pq && c->state == C_REPLAY && c->page_more && !c->page_wait) {
            c->page_more = 0;
            ws_post_page(c);
        }
    } else if (c->state == C_LIVE && hs && c->tail < hs->head) {
        struct chunk *ch = ring_at(hs, c->tail);
        if (ch->n > 0 && c->tail + 1 < hs->head && ring_at(hs, c->tail + 1)->n > 0) {
            /* Behind by several event frames: send them as one `events` frame (one copy into
             * the scratch buffer beats one send() per frame; lws copies what the socket does
             * not take, so the scratch buffer is free again when lws_write returns). */
            struct buf *b = &h->scratch;
            int n = 0;
            int64_t t_first = ch->t_ns;
            buf_reset(b);
            ws_pad_pre(b);
            buf_puts(b, EVS_PREFIX);
            while (c->tail < hs->head) {
                ch = ring_at(hs, c->tail);
                if (ch->n == 0 || (n > 0 && b->len + ch->len > BATCH_MAX_BYTES)) {
                    break;
                }
                for (int k = 0; k < ch->n; k++) {
                    if (n++) {
                        buf_putc(b, ',');
                    }
                    buf_append(b, ch->pay + ch->ev[k].off, ch->ev[k].len);
                }
                c->delivered = ch->last;
                c->tail++;
            }
            buf_puts(b, "]}");
            int w = lws_write(wsi, (unsigned char *)b->data + LWS_PRE, b->len - LWS_PRE,
                              LWS_WRITE_TEXT);
            lat_record(h, t_first);
            atomic_fetch_add(&h->st_frames_out, 1);
            atomic_fetch_add(&h->st_events_out, (unsigned long long)n);
            if (b->cap > 4 * BATCH_MAX_BYTES) {
                buf_free(b);
            }
            if (w < 0) {
                return -1;
            }
        } else {
            c->tail++;
            if (ch->n > 0) {
                c->delivered = ch->last;
            }
            int w = lws_write(wsi, ch->pay, ch->len, LWS_WRITE_TEXT);
            lat_record(h, ch->t_ns);
            atomic_fetch_add(&h->st_frames_out, 1);
            atomic_fetch_add(&h->st_events_out, (unsigned long long)ch->n);
            if (w < 0) {
                return -1;
            }
        }
    } else if (c->close_code) {
        lws_close_reason(wsi, (enum lws_close_status)c->close_code,
                         (unsigned char *)c->close_reason, strlen(c->close_reason));
        return -1;
    } else {
        return 0;
    }
    if (c->pq || (c->state == C_LIVE && hs && c->tail < hs->head) || c->close_code) {
        lws_callback_on_writable(wsi);
    }
    return 0;
}
