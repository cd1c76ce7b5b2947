/*
 * hub.c - the WebSocket hub (libwebsockets 4.1, one service thread) and its SQLite workers.
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
#include "server/ws/hub.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/app.h"
#include "server/ops.h"
#include "storage/participants.h"
#include "storage/store.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define RING_MIN          16u
#define RING_MAX          16384u
#define RETAIN            64u
#define BATCH_MAX_EVENTS  512
#define BATCH_MAX_BYTES   (256u * 1024u)
#define MAP_BUCKETS       4096u
#define STUCK_KILL_SECS   3
#define MAX_CLIENT_WRITES 8     /* prompt/cancel frames in flight per connection */
#define PRESENCE_MIN_MS   200   /* typing/status broadcasts per connection: at most 5/s */
#define NWRITERS          2     /* writer threads; one session's writes stay on one, in order */
#define MAX_TICKETS       10000 /* outstanding (unused, unexpired) WebSocket tickets */
#define SHUTDOWN_FLUSH_MS 300   /* time to send close frames (1001) at shutdown */
#define LAT_BUCKET_US     10
#define LAT_BUCKETS       20000 /* 10 us .. 200 ms, then one overflow bucket */
#define REVOKE_MEMORY_MS  60000 /* revocations kept to refuse hand-offs authenticated before */
#define REVOKE_MAX        1024  /* ... at most this many; older ones refuse by time (floor) */

static const char EV_PREFIX[] = "{\"type\":\"event\",\"event\":";
static const char EVS_PREFIX[] = "{\"type\":\"events\",\"events\":[";
#define EV_PREFIX_LEN  (sizeof(EV_PREFIX) - 1)
#define EVS_PREFIX_LEN (sizeof(EVS_PREFIX) - 1)

/* ---- data structures ---- */

struct evref {
    int64_t seq;
    uint32_t off; /* of the event object inside the frame payload */
    uint32_t len;
};

/* A frame shared by all clients of a session. lws thread only. */
struct chunk {
    void *owner;        /* what to free */
    unsigned char *pay; /* payload; LWS_PRE writable bytes precede it */
    size_t len;
    uint64_t off;        /* stream offset of the chunk's first byte */
    int64_t first, last; /* seq range; both 0 for frames without events (presence) */
    int64_t t_ns;        /* CLOCK_MONOTONIC when its (first) event was committed; 0 = n/a */
    int n;
    struct evref *ev; /* n entries; &one when n == 1 */
    struct evref one;
};

/* A frame for one client (hello, replay page, ack, error, gap, pong). lws thread only. */
enum pf_kind { PF_PLAIN, PF_PAGE, PF_GAP };
struct pframe {
    struct pframe *next;
    int kind;
    int events; /* events inside (stats) */
    size_t len;
    unsigned char *pay; /* LWS_PRE bytes before it belong to the same allocation */
    void *owner;
};

struct puser { /* guarded by h->map_lock */
    struct puser *next;
    int conns;
    char status[8];
    char id[160];
    char name[160];
};

enum cstate { C_REFUSED, C_HELLO, C_REPLAY, C_LIVE, C_CLOSING };

struct hsess;

struct client { /* lws thread only */
    struct hub *h;
    struct lws *wsi; /* NULL once closed */
    struct hsess *hs;
    struct client *prev, *next;
    int state;
    int jobs;          /* worker jobs in flight */
    int64_t after;     /* ?after from the handshake (-1 none) */
    int64_t delivered; /* highest seq queued for this client */
    uint64_t tail;     /* next ring chunk (C_LIVE) */
    struct pframe *pq, *pq_tail;
    int page_wait;   /* a page job in flight */
    int page_more;   /* post the next page once pq is written */
    int gap_pending; /* a gap frame not yet written */
    int close_code;
    char close_reason[96];
    int can_write;
    int writes;               /* prompt/cancel jobs in flight (bounded: MAX_CLIENT_WRITES) */
    int64_t last_presence_ms; /* typing/status throttle */
    char role[16];
    struct auth_info who;
    struct buf rx; /* reassembly of fragmented client messages, capped */
};

struct hsess {
    struct hsess *hnext; /* hash chain; changed under map_lock by the lws thread */
    char id[72];
    /* presence: guarded by h->map_lock */
    struct puser *users;
    int nclients;
    /* lws thread only */
    struct client *clients;
    struct chunk **ring;
    uint32_t cap;
    uint64_t base, head; /* chunk numbers retained: [base, head) */
    uint64_t head_off;   /* stream offset after the last chunk */
    int64_t max_seq;     /* highest seq pushed into the ring */
    struct inmsg *pend, *pend_tail;
    int npend;
    struct hsess *tnext; /* touched list during a drain */
    int touched;
};

/* A revocation: a token (token_id) or one user's participation in a session (sid + user). */
struct revoked {
    struct revoked *next;
    int64_t at_ns; /* clock_mono_ns() when it was posted, after the registry change */
    char token_id[40];
    char sid[72];
    char user[160];
};

enum in_kind { IN_EVENT, IN_ADOPT, IN_RESULT, IN_REVOKE };
struct inmsg {
    struct inmsg *next;
    int kind;
    int64_t seq;
    int64_t t_ns;       /* IN_EVENT: when hub_on_event ran (right after the commit) */
    size_t len;         /* IN_EVENT: frame payload length */
    unsigned char *pay; /* IN_EVENT: payload (inside this allocation, after LWS_PRE) */
    struct hub_handoff *ho;
    struct job *job;
    struct revoked *rv; /* IN_REVOKE */
    char sid[72];
};

enum job_kind { J_HELLO, J_PAGE, J_JOIN, J_LEAVE, J_PROMPT, J_CANCEL };
struct job {
    struct job *next;
    int kind;
    struct client *c; /* opaque to the worker: only handed back */
    char sid[72];
    int64_t after;
    struct auth_info who;
    char role[16];
    json_t *body; /* J_PROMPT / J_CANCEL: the client's frame */
    /* results */
    int rc;
    char msg[200];
    struct buf out; /* the frame, LWS_PRE bytes of padding first */
    int count;
    int64_t last;
};

struct jqueue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *head, *tail;
    int stop;
};

struct ticket {
    struct ticket *next;
    char hash[65];
    char sid[72];
    char role[16];
    int64_t expires_ms;
    struct auth_info who;
};

struct hub {
    struct hub_config cfg;
    struct app *app;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    pthread_t lws_thread;
    int lws_started;
    atomic_int stopping;

    pthread_mutex_t in_lock; /* guards in_head/in_tail */
    struct inmsg *in_head, *in_tail;

    pthread_mutex_t map_lock; /* guards the map structure and presence */
    struct hsess *map[MAP_BUCKETS];
    int nsessions;

    struct jqueue rq;
    struct jqueue wq[NWRITERS]; /* writes of a session always go to wq[hash(sid) % NWRITERS] */
    pthread_t *readers;
    int nreaders;
    pthread_t writers[NWRITERS];
    int nwriters;

    pthread_mutex_t tk_lock;
    struct ticket *tickets;

    /* lws thread only */
    struct revoked *revoked;  /* newest first, younger than REVOKE_MEMORY_MS */
    int64_t revoked_floor_ns; /* hand-offs authenticated at or before it are refused (0: none) */
    struct hub_handoff *adopting;
    int adopt_consumed;
    struct hsess *touched;
    struct buf scratch; /* coalescing of lagging clients' frames */
    uint64_t *lat_hist; /* commit -> lws_write of live event frames, LAT_BUCKET_US buckets */

    /* stats (atomics: read by other threads) */
    atomic_ullong st_events_in, st_frames_out, st_events_out, st_gaps, st_culled;
    atomic_int st_clients;
};

/* ---- small helpers ---- */

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

/* Caller holds map_lock, or is the lws thread (the only writer of the structure). */
static struct hsess *map_find(struct hub *h, const char *sid)
{
    for (struct hsess *hs = h->map[hash_str(sid) & (MAP_BUCKETS - 1)]; hs; hs = hs->hnext) {
        if (strcmp(hs->id, sid) == 0) {
            return hs;
        }
    }
    return NULL;
}

/* A private frame holding a copy of s (n bytes). */
static struct pframe *pframe_new(const char *s, size_t n, int kind)
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
static struct pframe *pframe_from_buf(struct buf *b, int kind)
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

static void pq_push(struct client *c, struct pframe *f)
{
    if (c->pq_tail) {
        c->pq_tail->next = f;
    } else {
        c->pq = f;
    }
    c->pq_tail = f;
}

static void wake(struct client *c)
{
    if (c->wsi) {
        lws_callback_on_writable(c->wsi);
    }
}

/* Queue {"type":"error",...}; close_code != 0 closes the connection after it. */
static void client_error(struct client *c, int err, const char *msg, int close_code)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"type\":\"error\",\"code\":");
    buf_json_str(&b, err_code(err), strlen(err_code(err)));
    buf_puts(&b, ",\"message\":");
    const char *m = msg && *msg ? msg : err_str(err);
    buf_json_str(&b, m, strlen(m));
    buf_puts(&b, "}");
    pq_push(c, pframe_new(b.data, b.len, PF_PLAIN));
    buf_free(&b);
    if (close_code) {
        c->close_code = close_code;
        snprintf(c->close_reason, sizeof(c->close_reason), "%s", err_code(err));
        c->state = C_CLOSING;
    }
    wake(c);
}

static void pad_pre(struct buf *b)
{
    static const char zeros[LWS_PRE] = {0};
    buf_append(b, zeros, LWS_PRE);
}

/* ---- job queues ---- */

static void jq_init(struct jqueue *q)
{
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->head = q->tail = NULL;
    q->stop = 0;
}

static void jq_push(struct jqueue *q, struct job *j)
{
    pthread_mutex_lock(&q->lock);
    j->next = NULL;
    if (q->tail) {
        q->tail->next = j;
    } else {
        q->head = j;
    }
    q->tail = j;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* NULL when stopping and (drain == 0 or the queue is empty). */
static struct job *jq_pop(struct jqueue *q, int drain)
{
    pthread_mutex_lock(&q->lock);
    while (!q->head && !q->stop) {
        pthread_cond_wait(&q->cond, &q->lock);
    }
    struct job *j = NULL;
    if (q->head && (!q->stop || drain)) {
        j = q->head;
        q->head = j->next;
        if (!q->head) {
            q->tail = NULL;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return j;
}

static void job_free(struct job *j)
{
    if (j) {
        json_decref(j->body);
        buf_free(&j->out);
        free(j);
    }
}

static struct job *job_new(int kind, struct client *c, const char *sid)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->kind = kind;
    j->c = c;
    snprintf(j->sid, sizeof(j->sid), "%s", sid);
    buf_init(&j->out, 0);
    return j;
}

/* The writer queue of a session: per-session order (join before leave, prompts of a client in
 * order) with sessions spread over NWRITERS threads, so one slow session file does not hold
 * up the presence and prompts of every other session. */
static struct jqueue *writer_queue(struct hub *h, const char *sid)
{
    return &h->wq[hash_str(sid) % NWRITERS];
}

/* ---- the inbox ---- */

static void inbox_push(struct hub *h, struct inmsg *m)
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

static void post_result(struct hub *h, struct job *j)
{
    struct inmsg *m = xcalloc(1, sizeof(*m));
    m->kind = IN_RESULT;
    m->job = j;
    inbox_push(h, m);
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
    int watched = map_find(h, session_id) != NULL;
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
    inbox_push(h, m);
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
    inbox_push(h, m);
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

static void client_gap(struct client *c);

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
static void ring_trim(struct hsess *hs)
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
    pq_push(c, pframe_new(tmp, (size_t)n, PF_GAP));
    c->gap_pending = 1;
    c->tail = hs->head;
    if (hs->max_seq > c->delivered) {
        c->delivered = hs->max_seq;
    }
    wake(c);
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
        wake(c);
    }
    ring_trim(hs);
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

static void flush_touched(struct hub *h)
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
static void hs_broadcast(struct hub *h, struct hsess *hs, const char *s, size_t n)
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

static struct hsess *hs_get(struct hub *h, const char *sid)
{
    struct hsess *hs = map_find(h, sid);
    if (hs) {
        return hs;
    }
    hs = xcalloc(1, sizeof(*hs));
    snprintf(hs->id, sizeof(hs->id), "%s", sid);
    pthread_mutex_lock(&h->map_lock);
    uint32_t b = hash_str(sid) & (MAP_BUCKETS - 1);
    hs->hnext = h->map[b];
    h->map[b] = hs;
    h->nsessions++;
    pthread_mutex_unlock(&h->map_lock);
    return hs;
}

static void hs_maybe_free(struct hub *h, struct hsess *hs)
{
    if (hs->clients || hs->touched) {
        return;
    }
    pthread_mutex_lock(&h->map_lock);
    struct hsess **pp = &h->map[hash_str(hs->id) & (MAP_BUCKETS - 1)];
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

/* Count a connection of who in hs; returns 1 if the user just became present. */
static int presence_add(struct hub *h, struct hsess *hs, const struct auth_info *who)
{
    int joined = 0;
    pthread_mutex_lock(&h->map_lock);
    struct puser *u = hs->users;
    while (u && strcmp(u->id, who->user_id) != 0) {
        u = u->next;
    }
    if (!u) {
        u = xcalloc(1, sizeof(*u));
        snprintf(u->id, sizeof(u->id), "%s", who->user_id);
        snprintf(u->name, sizeof(u->name), "%s", who->name);
        snprintf(u->status, sizeof(u->status), "active");
        u->next = hs->users;
        hs->users = u;
    }
    if (u->conns++ == 0) {
        joined = 1;
    }
    hs->nclients++;
    pthread_mutex_unlock(&h->map_lock);
    return joined;
}

/* Returns 1 if the user's last connection to hs just went away. */
static int presence_remove(struct hub *h, struct hsess *hs, const char *user_id)
{
    int left = 0;
    pthread_mutex_lock(&h->map_lock);
    struct puser **pp = &hs->users;
    while (*pp && strcmp((*pp)->id, user_id) != 0) {
        pp = &(*pp)->next;
    }
    if (*pp && --(*pp)->conns == 0) {
        struct puser *u = *pp;
        *pp = u->next;
        free(u);
        left = 1;
    }
    hs->nclients--;
    pthread_mutex_unlock(&h->map_lock);
    return left;
}

json_t *hub_presence(struct hub *h, const char *sid)
{
    json_t *arr = json_array();
    if (!h) {
        return arr;
    }
    pthread_mutex_lock(&h->map_lock);
    struct hsess *hs = map_find(h, sid);
    for (struct puser *u = hs ? hs->users : NULL; u; u = u->next) {
        json_array_append_new(arr, json_pack("{s:s,s:s,s:i,s:s}", "id", u->id, "name", u->name,
                                             "connections", u->conns, "status", u->status));
    }
    pthread_mutex_unlock(&h->map_lock);
    return arr;
}

/* ---- replay → live (lws thread) ---- */

static void post_page(struct client *c)
{
    struct job *j = job_new(J_PAGE, c, c->hs->id);
    j->after = c->delivered;
    c->jobs++;
    c->page_wait = 1;
    jq_push(&c->h->rq, j);
}

/* Start live delivery after c->delivered if the ring still holds what follows; else page. */
static void try_go_live(struct client *c)
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
            post_page(c);
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
        post_page(c);
        return;
    }
    if (ch->first <= d) {
        /* A batch straddles d: send only the events after d, privately. */
        struct buf b;
        buf_init(&b, 0);
        pad_pre(&b);
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
        struct pframe *f = pframe_from_buf(&b, PF_PLAIN);
        f->events = n;
        pq_push(c, f);
        c->delivered = ch->last;
        i++;
    }
    c->state = C_LIVE;
    c->tail = i;
    wake(c);
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

static void client_maybe_free(struct client *c)
{
    if (c->wsi || c->jobs > 0) {
        return;
    }
    struct pframe *f = c->pq;
    while (f) {
        struct pframe *nx = f->next;
        pframe_free(f);
        f = nx;
    }
    buf_free(&c->rx);
    free(c);
}

static void handle_result(struct hub *h, struct job *j)
{
    struct client *c = j->c;
    if (!c) {
        job_free(j);
        return;
    }
    c->jobs--;
    if (!c->wsi || c->state == C_CLOSING) {
        client_maybe_free(c);
        job_free(j);
        return;
    }
    switch (j->kind) {
    case J_HELLO:
        if (j->rc) {
            client_error(c, j->rc, j->msg, err_ws_close(j->rc));
            break;
        }
        pq_push(c, pframe_from_buf(&j->out, PF_PLAIN));
        if (c->after >= 0) {
            c->delivered = c->after;
            if (c->after < j->last) {
                c->state = C_REPLAY;
                post_page(c);
                break;
            }
        } else {
            c->delivered = j->last;
        }
        try_go_live(c);
        break;
    case J_PAGE:
        c->page_wait = 0;
        if (j->rc) {
            client_error(c, j->rc, j->msg, err_ws_close(j->rc));
            break;
        }
        if (j->count > 0) {
            struct pframe *f = pframe_from_buf(&j->out, PF_PAGE);
            f->events = j->count;
            pq_push(c, f);
            c->delivered = j->last;
        }
        if (j->count >= h->cfg.replay_page) {
            c->page_more = 1; /* the next page once this one is written */
        } else {
            try_go_live(c);
        }
        break;
    case J_PROMPT:
    case J_CANCEL:
        c->writes--;
        if (j->rc) {
            client_error(c, j->rc, j->msg, 0);
        } else if (j->out.len) {
            pq_push(c, pframe_new(j->out.data, j->out.len, PF_PLAIN));
        }
        break;
    default:
        break;
    }
    wake(c);
    job_free(j);
}

/* ---- lws thread: revocations ---- */

/* Drop what is queued for c and close it: the error frame goes first, then the close code. A
 * peer that does not read is dropped without a close frame after STUCK_KILL_SECS. */
static void client_kick(struct client *c, int err, const char *msg)
{
    if (c->state == C_CLOSING || c->state == C_REFUSED) {
        return;
    }
    struct pframe *f = c->pq;
    while (f) {
        struct pframe *nx = f->next;
        pframe_free(f);
        f = nx;
    }
    c->pq = c->pq_tail = NULL;
    c->gap_pending = 0;
    client_error(c, err, msg, err_ws_close(err));
    if (c->wsi) {
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, STUCK_KILL_SECS);
    }
}

static int revoke_hits(const struct revoked *rv, const char *sid, const struct auth_info *who)
{
    if (rv->token_id[0]) {
        return strcmp(rv->token_id, who->token_id) == 0;
    }
    return strcmp(rv->sid, sid) == 0 && strcmp(rv->user, who->user_id) == 0 &&
           strcmp(who->role, "admin") != 0;
}

/* Forget revocations older than REVOKE_MEMORY_MS, and the oldest beyond REVOKE_MAX (their time
 * becomes the floor: every hand-off authenticated before it is refused, which errs on the
 * side of closing). */
static void revoked_prune(struct hub *h)
{
    int64_t old = clock_mono_ns() - (int64_t)REVOKE_MEMORY_MS * 1000000;
    struct revoked **pp = &h->revoked;
    int n = 0;
    while (*pp) {
        struct revoked *rv = *pp;
        if (rv->at_ns < old || n >= REVOKE_MAX) {
            if (rv->at_ns >= old && rv->at_ns > h->revoked_floor_ns) {
                h->revoked_floor_ns = rv->at_ns;
            }
            *pp = rv->next;
            free(rv);
        } else {
            pp = &rv->next;
            n++;
        }
    }
}

static void apply_revoke(struct hub *h, struct revoked *rv)
{
    revoked_prune(h);
    rv->next = h->revoked;
    h->revoked = rv;
    int err = rv->token_id[0] ? ERR_AUTH : ERR_FORBIDDEN;
    const char *msg =
        rv->token_id[0] ? "the token was revoked" : "you were removed from this session";
    int kicked = 0;
    for (uint32_t b = 0; b < MAP_BUCKETS; b++) {
        for (struct hsess *hs = h->map[b]; hs; hs = hs->hnext) {
            if (!rv->token_id[0] && strcmp(hs->id, rv->sid) != 0) {
                continue;
            }
            for (struct client *c = hs->clients; c; c = c->next) {
                if (revoke_hits(rv, hs->id, &c->who) && c->state != C_CLOSING) {
                    client_kick(c, err, msg);
                    kicked++;
                }
            }
        }
    }
    if (kicked) {
        LOG_INFO("hub: closed %d connection(s): %s", kicked,
                 rv->token_id[0] ? "token revoked" : "participant removed");
    }
}

/* A hand-off authenticated before a revocation that concerns it: refuse it (0 = fine). The
 * registry change happened before the revocation was posted, so one authenticated later has
 * seen it already. */
static int handoff_revoked(struct hub *h, const struct hub_handoff *ho)
{
    revoked_prune(h);
    if (h->revoked_floor_ns && ho->auth_ns <= h->revoked_floor_ns) {
        return ERR_AUTH;
    }
    /* The whole list: two revocations posted at once may reach it out of time order. */
    for (struct revoked *rv = h->revoked; rv; rv = rv->next) {
        if (rv->at_ns >= ho->auth_ns && revoke_hits(rv, ho->sid, &ho->who)) {
            return rv->token_id[0] ? ERR_AUTH : ERR_FORBIDDEN;
        }
    }
    return 0;
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
            struct hsess *hs = map_find(h, m->sid);
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
            flush_touched(h);
            do_adopt(h, m->ho);
            free(m);
            break;
        case IN_RESULT:
            /* Everything before the result goes into the rings first (hand-over order). */
            flush_touched(h);
            handle_result(h, m->job);
            free(m);
            break;
        case IN_REVOKE:
            apply_revoke(h, m->rv);
            free(m);
            break;
        }
        m = nx;
    }
    flush_touched(h);
}

/* ---- lws thread: client messages ---- */

static void client_typing_status(struct client *c, const char *kind, const char *field, json_t *v)
{
    json_t *o = json_pack("{s:s,s:{s:s,s:s}}", "type", kind, "user", "id", c->who.user_id, "name",
                          c->who.name);
    json_object_set(o, field, v);
    char *s = jx_dump(o);
    hs_broadcast(c->h, c->hs, s, strlen(s));
    free(s);
    json_decref(o);
}

/*
 * Client frames are parsed without touching any client or hub state (hub_frame_parse), then
 * acted upon on the lws thread (client_message). Typing/status floods are dropped before their
 * fields are judged, as they always were: hence the kind is known even when parsing fails.
 */
int hub_frame_parse(const char *data, size_t len, struct hub_frame *out, char *msg, size_t n)
{
    json_t *o = NULL;
    const char *type = NULL;
    int rc;
    memset(out, 0, sizeof *out);
    out->typing = 1;
    rc = jx_parse_object(data, len, &o, msg, n);
    if (rc) {
        return rc;
    }
    if (jx_str(o, "type", &type, msg, n) || !type) {
        if (!type) {
            snprintf(msg, n, "frame needs a string field 'type'");
        }
        rc = ERR_INVALID;
        goto out;
    }
    if (strcmp(type, "ping") == 0) {
        out->kind = HUB_FRAME_PING;
    } else if (strcmp(type, "typing") == 0) {
        out->kind = HUB_FRAME_TYPING;
        rc = jx_bool(o, "typing", &out->typing, msg, n);
    } else if (strcmp(type, "status") == 0) {
        out->kind = HUB_FRAME_STATUS;
        if (jx_str(o, "status", &out->status, msg, n) || !out->status ||
            (strcmp(out->status, "active") && strcmp(out->status, "idle") &&
             strcmp(out->status, "away"))) {
            snprintf(msg, n, "field 'status' must be active, idle or away");
            out->status = NULL;
            rc = ERR_INVALID;
        }
    } else if (strcmp(type, "prompt") == 0) {
        out->kind = HUB_FRAME_PROMPT;
    } else if (strcmp(type, "cancel") == 0) {
        out->kind = HUB_FRAME_CANCEL;
    } else {
        snprintf(msg, n, "unknown frame type '%.60s'", type);
        rc = ERR_INVALID;
    }
out:
    if (rc) {
        json_decref(o);
        o = NULL;
    }
    out->obj = o;
    return rc;
}

static void client_message(struct client *c, const char *data, size_t len)
{
    struct hub *h = c->h;
    char msg[200];
    struct hub_frame fr;
    if (c->state == C_REFUSED || c->state == C_CLOSING) {
        return;
    }
    int rc = hub_frame_parse(data, len, &fr, msg, sizeof(msg));
    if ((fr.kind == HUB_FRAME_TYPING || fr.kind == HUB_FRAME_STATUS) &&
        clock_mono_ms() - c->last_presence_ms < PRESENCE_MIN_MS) {
        /* Ephemeral and fanned out to everyone: a flood is dropped, not queued. */
        goto out;
    }
    if (fr.kind == HUB_FRAME_TYPING || fr.kind == HUB_FRAME_STATUS) {
        c->last_presence_ms = clock_mono_ms();
    }
    if (rc) {
        client_error(c, ERR_INVALID, msg, 0);
        goto out;
    }
    if (fr.kind == HUB_FRAME_PING) {
        json_t *p = json_pack("{s:s}", "type", "pong");
        json_t *id = json_object_get(fr.obj, "id");
        if (id) {
            json_object_set(p, "id", id);
        }
        char *s = jx_dump(p);
        pq_push(c, pframe_new(s, strlen(s), PF_PLAIN));
        free(s);
        json_decref(p);
        wake(c);
    } else if (fr.kind == HUB_FRAME_TYPING) {
        client_typing_status(c, "presence.typing", "typing",
                             fr.typing ? json_true() : json_false());
    } else if (fr.kind == HUB_FRAME_STATUS) {
        pthread_mutex_lock(&h->map_lock);
        for (struct puser *u = c->hs->users; u; u = u->next) {
            if (strcmp(u->id, c->who.user_id) == 0) {
                snprintf(u->status, sizeof(u->status), "%s", fr.status);
            }
        }
        pthread_mutex_unlock(&h->map_lock);
        json_t *sv = json_string(fr.status);
        client_typing_status(c, "presence.status", "status", sv);
        json_decref(sv);
    } else { /* prompt, cancel */
        if (!c->can_write) {
            client_error(c, ERR_FORBIDDEN, "read-only access to this session", 0);
            goto out;
        }
        if (c->writes >= MAX_CLIENT_WRITES) {
            client_error(c, ERR_LIMIT, "too many prompt/cancel frames in flight", 0);
            goto out;
        }
        c->writes++;
        struct job *j = job_new(fr.kind == HUB_FRAME_PROMPT ? J_PROMPT : J_CANCEL, c, c->hs->id);
        j->who = c->who;
        snprintf(j->role, sizeof(j->role), "%s", c->role);
        j->body = fr.obj;
        fr.obj = NULL;
        c->jobs++;
        jq_push(writer_queue(h, j->sid), j);
    }
out:
    json_decref(fr.obj);
}

static int on_receive(struct client *c, struct lws *wsi, const char *in, size_t len)
{
    if (lws_frame_is_binary(wsi)) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
                         (unsigned char *)"binary frames are not accepted", 30);
        return -1;
    }
    int final = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
    if (final && c->rx.len == 0) {
        client_message(c, in, len);
        return 0;
    }
    if (buf_append(&c->rx, in, len)) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
                         (unsigned char *)"message too large", 17);
        return -1;
    }
    if (final) {
        client_message(c, c->rx.data, c->rx.len);
        buf_free(&c->rx);
        buf_init(&c->rx, c->h->cfg.max_frame);
    }
    return 0;
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

static int on_writeable(struct hub *h, struct client *c, struct lws *wsi)
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
            post_page(c);
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
            pad_pre(b);
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
        client_kick(c, ERR_AUTH, "the token expired");
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
        client_error(c, ERR_INTERNAL, "connection without a hand-off", 1011);
        return;
    }
    int fromopaque = ho != h->adopting;
    if (!ho->err && (ho->err = handoff_revoked(h, ho)) != 0) {
        LOG_INFO("hub: refusing a connection of %s to %s authenticated before a revocation",
                 ho->who.user_id, ho->sid);
        snprintf(ho->err_msg, sizeof(ho->err_msg), "%s",
                 ho->err == ERR_AUTH ? "the token was revoked"
                                     : "you were removed from this session");
    }
    if (ho->err) {
        c->state = C_REFUSED;
        client_error(c, ho->err, ho->err_msg, err_ws_close(ho->err));
        c->state = C_REFUSED;
    } else {
        c->who = ho->who;
        c->can_write = ho->can_write;
        c->after = ho->after;
        snprintf(c->role, sizeof(c->role), "%s", ho->role);
        c->state = C_HELLO;
        struct hsess *hs = hs_get(h, ho->sid);
        c->hs = hs;
        c->next = hs->clients;
        if (hs->clients) {
            hs->clients->prev = c;
        }
        hs->clients = c;
        if (presence_add(h, hs, &c->who)) {
            struct job *j = job_new(J_JOIN, NULL, hs->id);
            j->who = c->who;
            jq_push(writer_queue(h, j->sid), j);
        }
        struct job *j = job_new(J_HELLO, c, hs->id);
        j->who = c->who;
        snprintf(j->role, sizeof(j->role), "%s", c->role);
        c->jobs++;
        jq_push(&h->rq, j);
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
        if (presence_remove(h, hs, c->who.user_id)) {
            struct job *j = job_new(J_LEAVE, NULL, hs->id);
            j->who = c->who;
            jq_push(writer_queue(h, j->sid), j);
        }
        c->hs = NULL;
        ring_trim(hs);
        hs_maybe_free(h, hs);
    }
    client_maybe_free(c);
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
        return on_writeable(h, *pss, wsi);
    case LWS_CALLBACK_RECEIVE:
        if (!pss || !*pss) {
            return -1;
        }
        return on_receive(*pss, wsi, in, len);
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
                wake(c);
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

/* ---- workers ---- */

struct hello_read {
    json_t *participants;
    int64_t last;
};

/* One participant as the hello frame shows it (times in epoch ms). */
static int hello_participant(void *ctx, const struct participant_row *pr)
{
    json_t *p = json_pack("{s:s,s:s?,s:I}", "id", pr->user_id, "name", pr->name, "joined_at",
                          (json_int_t)(pr->joined_at < 0 ? 0 : pr->joined_at));
    if (pr->last_seen >= 0) {
        json_object_set_new(p, "last_seen", json_integer(pr->last_seen));
    }
    json_array_append_new(ctx, p);
    return 0;
}

static int hello_read_fn(struct sess_rd *rd, void *arg)
{
    struct hello_read *hr = arg;
    hr->participants = json_array();
    int rc = sess_rd_max_seq(rd, &hr->last);
    if (!rc) {
        rc = participants_list(rd, hello_participant, hr->participants);
    }
    return rc;
}

static void do_hello(struct hub *h, struct job *j)
{
    struct sess *s = NULL;
    json_t *row = NULL;
    struct hello_read hr = {NULL, 0};
    int rc = store_session_get(h->app->store, j->sid, &s);
    if (rc) {
        snprintf(j->msg, sizeof(j->msg), "no session %s", j->sid);
        goto out;
    }
    rc = registry_session_get(h->app->reg, j->sid, &row);
    if (rc) {
        snprintf(j->msg, sizeof(j->msg), "no session %s", j->sid);
        goto out;
    }
    /* Under the session lock: every event <= last has been handed to the hub already. */
    rc = sess_view(s, hello_read_fn, &hr);
    if (rc) {
        goto out;
    }
    json_t *connected = hub_presence(h, j->sid);
    size_t i;
    json_t *p;
    json_array_foreach(hr.participants, i, p)
    {
        const char *id = json_string_value(json_object_get(p, "id"));
        const char *status = NULL;
        size_t k;
        json_t *cp;
        json_array_foreach(connected, k, cp)
        {
            if (id && strcmp(id, json_string_value(json_object_get(cp, "id"))) == 0) {
                status = json_string_value(json_object_get(cp, "status"));
            }
        }
        json_object_set_new(p, "connected", json_boolean(status != NULL));
        json_object_set_new(p, "status", status ? json_string(status) : json_null());
    }
    json_object_set_new(row, "connected", connected);
    json_t *hello = json_pack("{s:s,s:o,s:I,s:o,s:{s:s,s:s,s:s}}", "type", "hello", "session", row,
                              "last_seq", (json_int_t)hr.last, "participants", hr.participants,
                              "you", "id", j->who.user_id, "name", j->who.name, "role", j->role);
    row = NULL;
    hr.participants = NULL;
    char *txt = jx_dump(hello);
    json_decref(hello);
    pad_pre(&j->out);
    buf_puts(&j->out, txt);
    free(txt);
    j->last = hr.last;
out:
    json_decref(row);
    json_decref(hr.participants);
    sess_put(s);
    j->rc = rc;
}

static void do_page(struct hub *h, struct job *j)
{
    struct sess *s = NULL;
    int rc = store_session_get(h->app->store, j->sid, &s);
    if (rc) {
        snprintf(j->msg, sizeof(j->msg), "no session %s", j->sid);
        goto out;
    }
    pad_pre(&j->out);
    buf_puts(&j->out, EVS_PREFIX);
    rc = sess_events(s, j->after, h->cfg.replay_page, &j->out, &j->count, &j->last);
    buf_puts(&j->out, "]}");
out:
    sess_put(s);
    j->rc = rc;
}

static void do_presence(struct hub *h, struct job *j)
{
    struct ops_answer ans = {0};
    int rc = ops_session_join(h->app, &j->who, j->sid, j->kind == J_JOIN, &ans);
    if (rc) {
        LOG_WARN("hub: presence %s in session %s: %s", j->kind == J_JOIN ? "join" : "leave", j->sid,
                 err_str(rc));
    }
}

static void do_client_write(struct hub *h, struct job *j)
{
    json_t *res = NULL;
    const char *ref = NULL;
    char msg[200] = "";
    jx_str(j->body, "id", &ref, msg, sizeof(msg));
    int rc = j->kind == J_PROMPT ? hub_api_prompt(h->app, j->sid, &j->who, j->role, j->body, &res,
                                                  j->msg, sizeof(j->msg))
                                 : hub_api_cancel(h->app, j->sid, &j->who, j->role, j->body, &res,
                                                  j->msg, sizeof(j->msg));
    j->rc = rc;
    if (!rc) {
        json_t *ack = json_pack("{s:s,s:s,s:o}", "type", "ack", "for",
                                j->kind == J_PROMPT ? "prompt" : "cancel", "result",
                                res ? res : json_object());
        if (ref) {
            json_object_set_new(ack, "id", json_string(ref));
        }
        char *txt = jx_dump(ack);
        buf_puts(&j->out, txt);
        free(txt);
        json_decref(ack);
    }
}

static void *reader_main(void *arg)
{
    struct hub *h = arg;
    pthread_setname_np(pthread_self(), "hub-reader");
    struct job *j;
    while ((j = jq_pop(&h->rq, 0))) {
        if (j->kind == J_HELLO) {
            do_hello(h, j);
        } else {
            do_page(h, j);
        }
        post_result(h, j);
    }
    return NULL;
}

struct writer_arg {
    struct hub *h;
    int q;
};

static void *writer_main(void *arg)
{
    struct writer_arg *wa = arg;
    struct hub *h = wa->h;
    struct jqueue *q = &h->wq[wa->q];
    free(wa);
    pthread_setname_np(pthread_self(), "hub-writer");
    struct job *j;
    /* Drains on stop so the last participant.left rows are written. */
    while ((j = jq_pop(q, 1))) {
        if (j->kind == J_JOIN || j->kind == J_LEAVE) {
            do_presence(h, j);
            job_free(j);
            continue;
        }
        if (atomic_load(&h->stopping)) {
            job_free(j);
            continue;
        }
        do_client_write(h, j);
        post_result(h, j);
    }
    return NULL;
}

/* ---- tickets ---- */

int hub_ticket_create(struct hub *h, const char *sid, const struct auth_info *who, const char *role,
                      int64_t ttl_ms, char out[65])
{
    struct ticket *t = xcalloc(1, sizeof(*t));
    int n = 0;
    util_random_hex(out, 32);
    util_sha256_hex(out, 64, t->hash);
    snprintf(t->sid, sizeof(t->sid), "%s", sid);
    snprintf(t->role, sizeof(t->role), "%s", role ? role : "viewer");
    t->who = *who;
    int64_t now = clock_mono_ms();
    t->expires_ms = now + ttl_ms;
    pthread_mutex_lock(&h->tk_lock);
    /* Sweep expired ones while we are here. */
    struct ticket **pp = &h->tickets;
    while (*pp) {
        if ((*pp)->expires_ms <= now) {
            struct ticket *d = *pp;
            *pp = d->next;
            free(d);
        } else {
            pp = &(*pp)->next;
            n++;
        }
    }
    if (n >= MAX_TICKETS) {
        pthread_mutex_unlock(&h->tk_lock);
        free(t);
        out[0] = 0;
        return ERR_LIMIT;
    }
    t->next = h->tickets;
    h->tickets = t;
    pthread_mutex_unlock(&h->tk_lock);
    return 0;
}

int hub_ticket_take(struct hub *h, const char *ticket, const char *sid, struct auth_info *who,
                    char role[16])
{
    char hash[65];
    int rc = ERR_AUTH;
    util_sha256_hex(ticket, strlen(ticket), hash);
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&h->tk_lock);
    for (struct ticket **pp = &h->tickets; *pp; pp = &(*pp)->next) {
        struct ticket *t = *pp;
        if (util_ct_equal(t->hash, 64, hash, 64)) {
            *pp = t->next; /* one use, whatever the outcome */
            if (t->expires_ms > now && strcmp(t->sid, sid) == 0) {
                *who = t->who;
                snprintf(role, 16, "%s", t->role);
                rc = 0;
            }
            free(t);
            break;
        }
    }
    pthread_mutex_unlock(&h->tk_lock);
    return rc;
}

/* Void the unused tickets of token_id, or of user in sid (admin tokens' tickets are kept). */
static void tickets_void(struct hub *h, const struct revoked *rv)
{
    pthread_mutex_lock(&h->tk_lock);
    struct ticket **pp = &h->tickets;
    while (*pp) {
        struct ticket *t = *pp;
        if (revoke_hits(rv, t->sid, &t->who)) {
            *pp = t->next;
            free(t);
        } else {
            pp = &t->next;
        }
    }
    pthread_mutex_unlock(&h->tk_lock);
}

static void revoke_post(struct hub *h, struct revoked *rv)
{
    rv->at_ns = clock_mono_ns();
    tickets_void(h, rv);
    if (!h->ctx || atomic_load(&h->stopping)) {
        free(rv);
        return;
    }
    struct inmsg *m = xcalloc(1, sizeof(*m));
    m->kind = IN_REVOKE;
    m->rv = rv;
    inbox_push(h, m);
}

void hub_revoke_token(struct hub *h, const char *token_id)
{
    if (!h || !token_id || !*token_id) {
        return;
    }
    struct revoked *rv = xcalloc(1, sizeof(*rv));
    snprintf(rv->token_id, sizeof(rv->token_id), "%s", token_id);
    revoke_post(h, rv);
}

void hub_revoke_member(struct hub *h, const char *sid, const char *user_id)
{
    if (!h || !sid || !user_id) {
        return;
    }
    struct revoked *rv = xcalloc(1, sizeof(*rv));
    snprintf(rv->sid, sizeof(rv->sid), "%s", sid);
    snprintf(rv->user, sizeof(rv->user), "%s", user_id);
    revoke_post(h, rv);
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
    jq_init(&h->rq);
    for (int i = 0; i < NWRITERS; i++) {
        jq_init(&h->wq[i]);
    }
    *out = h;
    return 0;
}

int hub_start(struct hub *h, struct app *app)
{
    static lws_retry_bo_t retry;
    struct lws_context_creation_info info;
    h->app = app;

    /* lws sizes its fd table from the limit at context creation: allow many connections. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max && rl.rlim_cur < 65536) {
        rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    lws_set_log_level(LLL_ERR | (log_threshold <= LOG_LEVEL_DEBUG ? LLL_WARN : 0), lws_log);

    retry.secs_since_valid_ping = (uint16_t)h->cfg.ping_secs;
    retry.secs_since_valid_hangup = (uint16_t)(h->cfg.ping_secs * 2 + 10);
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.protocols = protocols;
    info.user = h;
    info.max_http_header_data = 16384;
    info.max_http_header_pool = 64;
    info.timeout_secs = 20;
    info.retry_and_idle_policy = &retry;
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
        if (pthread_create(&h->readers[i], NULL, reader_main, h) != 0) {
            return ERR_INTERNAL;
        }
        h->nreaders++;
    }
    for (int i = 0; i < NWRITERS; i++) {
        struct writer_arg *wa = xmalloc(sizeof(*wa));
        wa->h = h;
        wa->q = i;
        if (pthread_create(&h->writers[i], NULL, writer_main, wa) != 0) {
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

static void jq_stop(struct jqueue *q)
{
    pthread_mutex_lock(&q->lock);
    q->stop = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
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
    jq_stop(&h->rq);
    for (int i = 0; i < NWRITERS; i++) {
        jq_stop(&h->wq[i]);
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
                client_maybe_free(c);
            }
            job_free(m->job);
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
                client_maybe_free(j->c);
            }
            job_free(j);
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
