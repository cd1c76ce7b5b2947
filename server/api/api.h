/*
 * api.h - what an HTTP endpoint sees: the request object and reply helpers (implemented by
 * server/http.c), the route table (server/routes.c, handed to http by app.c) and the helpers the
 * api_*.c handlers share. Handlers are thin: a session is changed by the transport-neutral
 * operations of server/ops.h, and other parts are reached through struct app.
 *
 * Adding an endpoint = one handler function plus one line in the route table in
 * server/routes.c:
 *
 *     {"POST", "/v1/sessions/{id}/exec", sbx_api_exec, 0},
 *
 * A handler runs on a libmicrohttpd pool thread once the whole request (headers and body, the
 * body capped) has arrived. It may block (a group commit, a registry query): that occupies one
 * pool thread, nothing else. It answers with exactly one req_reply_* call and returns 0, or
 * returns a negative err.h code, in which case the error reply is built from that code (and
 * the message set by req_fail, if any):
 *
 *     static int api_thing(struct req *r)
 *     {
 *         json_t *body;
 *         int rc = req_json_body(r, &body);        // 400/415 reply already set on error
 *         if (rc)
 *             return rc;
 *         ...
 *         return req_reply_json(r, 200, json_pack("{s:s}", "ok", "yes"));
 *     }
 *
 * Errors are {"error":{"code":"not_found","message":"…"}} with the status from
 * err_http_status(): use req_fail(r, ERR_NOT_FOUND, "no session %s", id).
 *
 * Routing: patterns are literal segments and {name} placeholders matching one non-empty path
 * segment; a final {*name} matches the rest of the path (possibly empty, slashes included).
 * Placeholders named "id" or ending in "id" ({id}, {aid}) must be valid ids
 * ([A-Za-z0-9_-]{1,64}) or the request gets 400 before the handler runs. The first matching
 * route wins; a path that matches with another method gets 405 with an Allow header. HEAD
 * is served by GET routes. Routes are authenticated (Bearer token, checked from the headers
 * before the body is read; the body of a refused request is drained, never buffered) unless
 * ROUTE_PUBLIC.
 *
 * Threads: a struct req belongs to the one pool thread running its handler; it and every
 * string it returns live until the reply has been sent.
 */
#ifndef SESSIOND_API_H
#define SESSIOND_API_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct app;
struct auth_info;
struct buf;
struct req;
struct MHD_Connection;

/** A handler: reply with req_reply_* and return 0, or return a negative err.h code. */
typedef int (*api_handler)(struct req *r);

enum route_flags {
    ROUTE_PUBLIC = 1,        /* no bearer token required (healthz, webhooks, static UI) */
    ROUTE_ARTIFACT_BODY = 2, /* body cap is cfg->max_artifact_bytes instead of max_body */
    ROUTE_WEBSOCKET = 4,     /* GET with Upgrade: websocket is handed to the hub (ws_upgrade.h) */
    ROUTE_RAW_BODY = 8,      /* informational: the handler reads raw bytes, not JSON */
};

struct route {
    const char *method;  /* "GET", "POST", "PUT", "DELETE", "PATCH", or "*" for any */
    const char *pattern; /* "/v1/sessions/{id}/messages" */
    api_handler fn;
    unsigned flags; /* enum route_flags */
};

/** The route table (server/routes.c), terminated by an entry with method NULL. */
extern const struct route http_routes[];

/* ---- the request ---- */

struct app *req_app(struct req *r);
/** "GET", "POST", … ("GET" for HEAD requests). */
const char *req_method(struct req *r);
/** The decoded path without the query ("/v1/sessions/s_1"). */
const char *req_path(struct req *r);
/** The raw request target as sent, query included (never log it: use log_redact_uri). */
const char *req_raw_uri(struct req *r);
/** A path placeholder by name ("id"), or NULL. */
const char *req_param(struct req *r, const char *name);
/** A decoded query parameter, or NULL when absent. */
const char *req_query(struct req *r, const char *name);
/** A request header (case-insensitive name), or NULL. */
const char *req_header(struct req *r, const char *name);
/** The body (NUL terminated for convenience; may contain NULs). len may be NULL. */
const char *req_body(struct req *r, size_t *len);
/** The caller's identity (NULL on ROUTE_PUBLIC routes unless req_authenticate succeeded). */
const struct auth_info *req_auth(struct req *r);
/** Authenticate on a public route; 0 or ERR_AUTH (no reply is set). */
int req_authenticate(struct req *r);
/** The libmicrohttpd connection (for suspend/resume or the WebSocket hand-off). */
struct MHD_Connection *req_conn(struct req *r);

/** Parse the body as a JSON object. Content-Type must be absent or JSON (else 415). On error
 * the error reply is set and ERR_INVALID/ERR_UNSUPPORTED returned. *out: new reference. */
int req_json_body(struct req *r, json_t **out);
/** Query parameter as an integer in [min, max]; def when absent; 400 reply set on error. */
int req_query_int(struct req *r, const char *name, int64_t def, int64_t min, int64_t max,
                  int64_t *out);

/* ---- replies (exactly one per request) ---- */

/** Reply with a JSON value (steals the reference; NULL body = 500). Returns 0. */
int req_reply_json(struct req *r, int status, json_t *body);
/** Reply with already serialized bytes; takes b's memory (b is left empty). Returns 0. */
int req_reply_buf(struct req *r, int status, const char *content_type, struct buf *b);
/** Reply with bytes (copied). Returns 0. */
int req_reply_bytes(struct req *r, int status, const char *content_type, const void *data,
                    size_t len);
/** Reply with the contents of an open file (takes ownership of fd; size bytes from offset 0).
 * Streamed by libmicrohttpd without loading it into memory. Returns 0. */
int req_reply_fd(struct req *r, int status, const char *content_type, int fd, uint64_t size);
/** Reply with no body (204, or any status). Returns 0. */
int req_reply_empty(struct req *r, int status);
/** Set the error reply {"error":{"code","message"}} and return err (so `return req_fail(…)`).
 * A NULL fmt uses err_str(err). */
int req_fail(struct req *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/** Set the error reply with an explicit status and code (statuses outside err.h: 426, 501). */
int req_fail_status(struct req *r, int status, const char *code, const char *message);
/** Add a header to the reply (call before or after the req_reply_* call). Copied. */
void req_add_header(struct req *r, const char *name, const char *value);

/* ---- deferred replies: a handler that must wait (a synchronous exec) never blocks its
 * libmicrohttpd pool thread, which serves other connections too ---- */

/** From the handler (HTTP thread): suspend the connection and return 0 with no reply set.
 * Exactly one later req_resume() must follow. */
void req_defer(struct req *r);
/** From any thread, after req_defer: set the reply first (req_reply_* / req_fail), then call
 * this; the pool thread sends it. r must not be touched afterwards. */
void req_resume(struct req *r);

/* ---- the REST endpoints (server/api/) ---- */

int api_healthz(struct req *r);
int api_me(struct req *r);
int api_sessions_create(struct req *r);
int api_sessions_list(struct req *r);
int api_session_get(struct req *r);
int api_session_delete(struct req *r);
int api_session_participants_add(struct req *r);
int api_session_participants_list(struct req *r);
int api_session_participant_remove(struct req *r);
int api_session_export(struct req *r);
int api_session_ws_plain(struct req *r);
/** POST /v1/sessions/{id}/ws-ticket: a one-use, short-lived credential for ?ticket= (browsers
 * cannot set headers on a WebSocket). 201 {"ticket","expires_in","url"}. */
int api_session_ws_ticket(struct req *r);
int api_messages_post(struct req *r);
int api_messages_list(struct req *r);
int api_events_list(struct req *r);
int api_artifacts_post(struct req *r);
int api_artifacts_list(struct req *r);
int api_artifact_get(struct req *r);
int api_tokens_create(struct req *r);
int api_tokens_list(struct req *r);
int api_tokens_delete(struct req *r);

/* ---- shared by the api_*.c files ---- */

/** Look up the session {id} for the caller with the needed access (AUTH_READ / AUTH_WRITE /
 * AUTH_OWNER, auth.h). Sets the error reply (404, 410, 403) on failure. *role_out may be
 * NULL. */
int api_session_access(struct req *r, const char *sid, int need, const char **role_out);

/** Answer a page of a registry listing (rc and page from the listing call; page stolen): 200,
 * or 400 "malformed cursor" for ERR_INVALID, or the error of rc. */
int api_reply_page(struct req *r, int rc, json_t *page);

struct sess;
/** Open session sid's file for this request (*out: sess_put when done). On error the reply
 * "cannot open session <sid>: <reason>" is set. */
int api_session_open(struct req *r, const char *sid, struct sess **out);

#endif
