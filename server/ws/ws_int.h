/*
 * ws_int.h - the hub's internals shared by its files (hub.c, clients.c, frames.c, tickets.c,
 * workers.c): limits, the structures and which thread owns each field (see hub.c for the threading
 * model). Not for use outside server/ws/.
 */
#ifndef SESSIOND_WS_INT_H
#define SESSIOND_WS_INT_H

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
    lws_retry_bo_t retry; /* ping/hang-up policy: lws keeps a pointer to it for ctx's life */
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

/* A writer thread's argument: its hub and its queue, h->wq[q]. */
struct writer_arg {
    struct hub *h;
    int q;
};

/* clients.c */
uint32_t ws_hash_str(const char *s);
struct hsess *ws_map_find(struct hub *h, const char *sid);
struct pframe *ws_pframe_new(const char *s, size_t n, int kind);
struct pframe *ws_pframe_from_buf(struct buf *b, int kind);
void ws_pq_push(struct client *c, struct pframe *f);
void ws_wake(struct client *c);
void ws_client_error(struct client *c, int err, const char *msg, int close_code);
void ws_pad_pre(struct buf *b);
void ws_ring_trim(struct hsess *hs);
void ws_flush_touched(struct hub *h);
void ws_hs_broadcast(struct hub *h, struct hsess *hs, const char *s, size_t n);
struct hsess *ws_hs_get(struct hub *h, const char *sid);
void ws_hs_maybe_free(struct hub *h, struct hsess *hs);
void ws_post_page(struct client *c);
void ws_try_go_live(struct client *c);
void ws_client_maybe_free(struct client *c);
void ws_client_kick(struct client *c, int err, const char *msg);
int ws_on_writeable(struct hub *h, struct client *c, struct lws *wsi);

/* workers.c */
void ws_jq_init(struct jqueue *q);
void ws_jq_push(struct jqueue *q, struct job *j);
void ws_job_free(struct job *j);
struct job *ws_job_new(int kind, struct client *c, const char *sid);
struct jqueue *ws_writer_queue(struct hub *h, const char *sid);
void *ws_reader_main(void *arg);
void *ws_writer_main(void *arg);
void ws_jq_stop(struct jqueue *q);

/* hub.c */
void ws_inbox_push(struct hub *h, struct inmsg *m);

/* frames.c */
int ws_presence_add(struct hub *h, struct hsess *hs, const struct auth_info *who);
int ws_presence_remove(struct hub *h, struct hsess *hs, const char *user_id);
int ws_on_receive(struct client *c, struct lws *wsi, const char *in, size_t len);

/* tickets.c */
void ws_apply_revoke(struct hub *h, struct revoked *rv);
int ws_handoff_revoked(struct hub *h, const struct hub_handoff *ho);

#endif
