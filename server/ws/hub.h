/*
 * hub.h - the WebSocket hub: one libwebsockets service thread that fans committed session
 * events out to connected clients, plus worker threads that do every SQLite read or write a
 * client needs (hello, replay pages, presence, prompts) so the lws thread only moves bytes.
 *
 * Flow: the store calls hub_on_event() for each committed event (under the session lock);
 * it copies the serialized event into a frame once, pushes it on the hub's inbox and calls
 * lws_cancel_service(). The lws thread drains the inbox, appends the frames to the session's
 * ring (several events drained together become one `events` frame), and wakes the clients.
 * Each client has a tail into its session's ring; a client whose lag exceeds the bounded
 * send queue gets a `gap` frame (or, if it stays stuck, is closed with 1008). The frame
 * protocol is documented in docs/events.md.
 *
 * Threads: hub_on_event(), hub_adopt(), hub_presence(), hub_revoke_*() and the ticket
 * functions are thread safe. hub_new/hub_start/hub_free are called by app.c only.
 */
#ifndef SESSIOND_HUB_H
#define SESSIOND_HUB_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/registry.h"

struct app;
struct hub;

/** Tunables (defaults when 0). */
struct hub_config {
    size_t max_frame;      /* largest client message (reassembled); default 1 MiB */
    size_t send_queue_max; /* per-client lag in bytes before a gap; default 1 MiB */
    int ping_secs;         /* protocol ping after this much silence; default 30 */
    int workers;           /* reader threads (hello, replay pages); default 2 */
    int replay_page;       /* events per replay page; default 256 */
};

/** A WebSocket connection handed over by the HTTP side (ws_upgrade.c), already authenticated
 * (or refused: err != 0 and the client gets an error frame then a close code). Owned by the
 * hub once passed to hub_adopt(). */
struct hub_handoff {
    int fd;      /* our own reference to the socket */
    char *bytes; /* the request as lws should read it (xmalloc'd) */
    size_t len;
    int err; /* 0, or the err.h code to refuse with (after the handshake) */
    char err_msg[160];
    char sid[72];
    int64_t after; /* ?after=K, or -1 for none */
    int can_write; /* role owner/writer: may send prompt / cancel */
    char role[16];
    struct auth_info who;
    int64_t auth_ns; /* clock_mono_ns() before the credentials were checked: a revocation
                        recorded after it refuses the connection (hub_revoke_*) */
};

/** Create the hub (no thread yet). *out owned by the caller: hub_free(). */
int hub_new(const struct hub_config *cfg, struct hub **out);
/** Start the lws thread and the workers. app must outlive the hub (store and registry set). */
int hub_start(struct hub *h, struct app *app);
/** Close every connection, stop the threads and free. Call before store_close(). NULL ok. */
void hub_free(struct hub *h);

/** The store's on_event hook (store_event_fn): ctx is the struct hub. Quick, never blocks on
 * anything but the hub's inbox mutex; drops events of sessions nobody watches. */
void hub_on_event(void *ctx, const char *session_id, int64_t seq, const char *json, size_t len);

/** Give a connection to the lws thread (consumes ho; closes its fd on failure). */
void hub_adopt(struct hub *h, struct hub_handoff *ho);

/** Who is connected to sid now: [{"id","name","connections","status"}] (new reference; an
 * empty array when nobody). */
json_t *hub_presence(struct hub *h, const char *sid);

/** One-use WebSocket tickets (POST /v1/sessions/{id}/ws-ticket): valid for ttl_ms, bound to
 * the session and the caller's identity. out gets 64 hex chars + NUL. Only a SHA-256 of the
 * ticket is kept. ERR_LIMIT when 10,000 unused tickets are outstanding. */
int hub_ticket_create(struct hub *h, const char *sid, const struct auth_info *who, const char *role,
                      int64_t ttl_ms, char out[65]);
/** Redeem a ticket for sid: 0 and *who/role filled, or ERR_AUTH (unknown, used, expired, or
 * for another session). */
int hub_ticket_take(struct hub *h, const char *ticket, const char *sid, struct auth_info *who,
                    char role[16]);

/** Access ended (the token was deleted): close every connection opened with token_id with
 * 4401, void its unused tickets, and refuse a hand-off authenticated with it before now.
 * Call after the registry change and auth_cache_invalidate(). Returns at once: the lws thread
 * closes the sockets. NULL h is a no-op. */
void hub_revoke_token(struct hub *h, const char *token_id);
/** user_id is no longer a participant of sid: close that user's connections to sid with 4403
 * (a client may reconnect if other access remains, e.g. an org session), void their tickets for
 * sid, refuse their hand-offs to sid authenticated before now. Connections of admin tokens are
 * kept (admins see every session). Same calling rules as hub_revoke_token(). */
void hub_revoke_member(struct hub *h, const char *sid, const char *user_id);

/** Client -> server `prompt` / `cancel` frames: the same effect as the REST endpoints
 * (server/ws/ws_api.c calls server/ops.h, as they do). Run on the hub's writer thread. frame is the
 * client's JSON object; *out (new reference, may stay NULL) is sent back in an `ack` frame. On
 * error returns a negative err.h code with a message in msg. */
int hub_api_prompt(struct app *app, const char *sid, const struct auth_info *who, const char *role,
                   json_t *frame, json_t **out, char *msg, size_t n);
int hub_api_cancel(struct app *app, const char *sid, const struct auth_info *who, const char *role,
                   json_t *frame, json_t **out, char *msg, size_t n);

/** The client -> server frames (docs/events.md). */
enum hub_frame_kind {
    HUB_FRAME_PING = 1,
    HUB_FRAME_TYPING,
    HUB_FRAME_STATUS,
    HUB_FRAME_PROMPT,
    HUB_FRAME_CANCEL,
};

/** One client text message, parsed and checked. */
struct hub_frame {
    int kind;           /* enum hub_frame_kind; 0 when the type is missing or unknown */
    json_t *obj;        /* the frame object (new reference, caller decrefs); NULL on error */
    int typing;         /* typing frames: the `typing` field (default 1) */
    const char *status; /* status frames: active | idle | away (borrowed from obj) */
};

/** Parse a client text message of len bytes (not NUL terminated): a JSON object whose `type`
 * is known, with valid fields for its kind. 0, or ERR_INVALID with a message in msg; out->kind
 * is set even then when the type was recognised (a typing/status flood is dropped before its
 * fields are judged). prompt/cancel bodies are checked later by hub_api_prompt/cancel.
 * Pure, thread safe. */
int hub_frame_parse(const char *data, size_t len, struct hub_frame *out, char *msg, size_t n);

/** Counters for /metrics and the benchmark. */
struct hub_stats {
    uint64_t events_in;  /* events received from the store */
    uint64_t frames_out; /* frames written (all kinds) */
    uint64_t events_out; /* event deliveries (one event to one client) */
    uint64_t gaps;       /* gap frames sent */
    uint64_t culled;     /* clients closed for being stuck */
    int clients;         /* connected now */
    int sessions;        /* sessions with at least one client */
};
void hub_get_stats(struct hub *h, struct hub_stats *out);

#endif
