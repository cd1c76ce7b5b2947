/*
 * ws_upgrade.h - the hand-off of a WebSocket upgrade request from libmicrohttpd to the
 * libwebsockets hub. http.c calls these; server/ws/ws_upgrade.c implements them.
 *
 * Flow (one port, libmicrohttpd owns the listening socket, MHD_USE_TURBO is set):
 *  1. ws_upgrade_begin() is called on the MHD pool thread, on the first call of the access
 *     handler for `GET /v1/sessions/{id}/ws` with `Upgrade: websocket`, before anything was
 *     sent. It takes its own reference to the socket (F_DUPFD_CLOEXEC on
 *     MHD_CONNECTION_INFO_CONNECTION_FD), rebuilds the request bytes (raw_uri is the request
 *     target with its query; headers from MHD_get_connection_values) and stores its state in
 *     *upgrade_ctx. It returns 0 to take the connection, in which case http.c returns MHD_NO
 *     and MHD closes its side without sending anything; or a negative err.h code, and http.c
 *     answers with an error status instead (*upgrade_ctx must then be NULL).
 *  2. ws_upgrade_complete() is called from MHD_OPTION_NOTIFY_COMPLETED for that request, when
 *     MHD will never touch the socket again: queue {fd, bytes} to the lws thread and call
 *     lws_cancel_service(). It owns upgrade_ctx from then on (frees it).
 * If the server stops between 1 and 2, ws_upgrade_complete is still called once by MHD.
 */
#ifndef SESSIOND_WS_UPGRADE_H
#define SESSIOND_WS_UPGRADE_H

#include <stddef.h>

struct app;
struct MHD_Connection;

/** Take over a WebSocket upgrade request (see above). 0 or a negative err.h code. */
int ws_upgrade_begin(struct app *app, struct MHD_Connection *c, const char *raw_uri,
                     void **upgrade_ctx);
/** Finish the hand-off once MHD has let go of the connection; frees upgrade_ctx. */
void ws_upgrade_complete(struct app *app, void *upgrade_ctx);

/* ---- the request target's parsers (pure; exposed for the fuzz harness) ---- */

/** Copy the %-decoded value ('+' = space) of query parameter name from query (the part after
 * '?') into out (size n, truncated, NUL terminated). 1 if present, else 0. */
int ws_upgrade_query_get(const char *query, const char *name, char *out, size_t n);
/** "/v1/sessions/{id}/ws[?…]" -> the id into sid (size n). 0, or ERR_INVALID when the target
 * has another shape or the id is not [A-Za-z0-9_-]{1,64}. */
int ws_upgrade_path_sid(const char *uri, char *sid, size_t n);

#endif
