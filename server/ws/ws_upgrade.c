/*
 * ws_upgrade.c - the WebSocket side of the HTTP server: the hand-off of an upgrade request to
 * the hub, WebSocket authentication (bearer header, one-use ?ticket=, ?token=), the origin
 * allow-list. (The tickets are minted by POST /v1/sessions/{id}/ws-ticket, server/api.)
 *
 * Authentication happens here, on the libmicrohttpd thread (registry reads are short), but a
 * refusal is not answered with an HTTP status: browsers only see 1006 for that and retry
 * forever. The connection is handed over anyway, flagged with the error; the hub completes
 * the handshake, sends an `error` frame and closes with err_ws_close() (4401, 4403, 4404).
 *
 * The request bytes lws reads are rebuilt without secrets: the request line carries only the
 * path (no query: ?token= and ?ticket= never reach lws or its logs) and the Authorization
 * header is dropped.
 *
 * Threads: every function runs on an MHD pool thread; the hub functions used are thread safe.
 */
#include "server/ws/ws_upgrade.h"
#include "server/ws/ws_guard.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/ws/hub.h"
#include "storage/registry.h"

#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_REQUEST (16 * 1024)

struct hdr_walk {
    struct buf *out;
    const char *origin;
    const char *host;
    const char *authorization;
    int too_large;
};

static enum MHD_Result hdr_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value)
{
    struct hdr_walk *w = cls;
    (void)kind;
    if (!key) {
        return MHD_YES;
    }
    if (strcasecmp(key, "Authorization") == 0) {
        w->authorization = value;
        return MHD_YES; /* lws does not need it; keep secrets out of its buffers */
    }
    if (strcasecmp(key, "Origin") == 0) {
        w->origin = value;
    } else if (strcasecmp(key, "Host") == 0) {
        w->host = value;
    }
    if (buf_puts(w->out, key) || buf_puts(w->out, ": ") || buf_puts(w->out, value ? value : "") ||
        buf_puts(w->out, "\r\n")) {
        w->too_large = 1;
        return MHD_NO;
    }
    return MHD_YES;
}

int ws_upgrade_query_get(const char *query, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = query;
    while (p && *p) {
        const char *amp = strchr(p, '&');
        size_t seg = amp ? (size_t)(amp - p) : strlen(p);
        if (seg > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t o = 0;
            for (size_t i = nl + 1; i < seg && o + 1 < n; i++) {
                char ch = p[i];
                if (ch == '%' && i + 2 < seg + 1 && util_hexval(p[i + 1]) >= 0 &&
                    util_hexval(p[i + 2]) >= 0) {
                    ch = (char)(util_hexval(p[i + 1]) * 16 + util_hexval(p[i + 2]));
                    i += 2;
                } else if (ch == '+') {
                    ch = ' ';
                }
                out[o++] = ch;
            }
            out[o] = 0;
            return 1;
        }
        if (seg == nl && strncmp(p, name, nl) == 0) {
            out[0] = 0;
            return 1;
        }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

int ws_upgrade_path_sid(const char *uri, char *sid, size_t n)
{
    static const char pre[] = "/v1/sessions/";
    if (strncmp(uri, pre, sizeof(pre) - 1) != 0) {
        return ERR_INVALID;
    }
    const char *s = uri + sizeof(pre) - 1;
    const char *e = strchr(s, '/');
    if (!e || strncmp(e, "/ws", 3) != 0 || (e[3] && e[3] != '?')) {
        return ERR_INVALID;
    }
    size_t len = (size_t)(e - s);
    if (len == 0 || len >= n) {
        return ERR_INVALID;
    }
    memcpy(sid, s, len);
    sid[len] = 0;
    return util_valid_id(sid) ? 0 : ERR_INVALID;
}

/* 1 if origin is the page's own origin: scheme + the Host the browser connected to (the web
 * UI served by sessiond itself, also behind a proxy that keeps Host). */
static int same_origin(const char *origin, const char *host)
{
    if (!host || !*host) {
        return 0;
    }
    const char *p = NULL;
    if (strncasecmp(origin, "http://", 7) == 0) {
        p = origin + 7;
    } else if (strncasecmp(origin, "https://", 8) == 0) {
        p = origin + 8;
    }
    return p && strcasecmp(p, host) == 0;
}

/* Decide who is connecting and whether they may: fills ho->who/role/can_write or ho->err. */
static void ws_authenticate(struct app *app, struct hub_handoff *ho, const char *query,
                            const char *origin, const char *host, const char *authorization)
{
    char val[512];
    const char *role = NULL;
    int rc;
    /* Before any credential is read: the hub refuses the connection if a revocation that
     * concerns it is posted after this instant (it may not have been visible to us). */
    ho->auth_ns = clock_mono_ns();
    if (origin && *origin && !same_origin(origin, host) &&
        !config_origin_allowed(app->cfg, origin)) {
        ho->err = ERR_FORBIDDEN;
        snprintf(ho->err_msg, sizeof(ho->err_msg), "origin not allowed");
        return;
    }
    if (query && ws_upgrade_query_get(query, "after", val, sizeof(val))) {
        if (util_parse_i64(val, &ho->after) || ho->after < 0) {
            ho->err = ERR_INVALID;
            snprintf(ho->err_msg, sizeof(ho->err_msg), "after must be a non-negative integer");
            return;
        }
    }
    if (query && ws_upgrade_query_get(query, "ticket", val, sizeof(val))) {
        char trole[16];
        rc = hub_ticket_take(app->hub, val, ho->sid, &ho->who, trole);
        if (!rc) {
            /* The ticket outlives nothing: the token it was minted with must still be valid. */
            rc = registry_token_get(app->reg, ho->who.token_id, NULL);
        }
        if (rc) {
            ho->err = ERR_AUTH;
            snprintf(ho->err_msg, sizeof(ho->err_msg), "invalid, used or expired ticket");
            return;
        }
    } else if (authorization) {
        rc = auth_bearer(app->auth, authorization, &ho->who);
        if (rc) {
            ho->err = ERR_AUTH;
            snprintf(ho->err_msg, sizeof(ho->err_msg), "invalid bearer token");
            return;
        }
    } else if (query && ws_upgrade_query_get(query, "token", val, sizeof(val))) {
        char hdr[600];
        snprintf(hdr, sizeof(hdr), "Bearer %s", val);
        rc = auth_bearer(app->auth, hdr, &ho->who);
        if (rc) {
            ho->err = ERR_AUTH;
            snprintf(ho->err_msg, sizeof(ho->err_msg), "invalid token");
            return;
        }
    } else {
        ho->err = ERR_AUTH;
        snprintf(ho->err_msg, sizeof(ho->err_msg),
                 "credentials required: Authorization header, ?ticket= or ?token=");
        return;
    }
    /* Access is checked now even for a ticket: membership may have changed since. */
    rc = auth_session(app->auth, ho->sid, &ho->who, AUTH_READ, &role);
    if (rc) {
        ho->err = rc == ERR_GONE ? ERR_NOT_FOUND : rc;
        snprintf(ho->err_msg, sizeof(ho->err_msg), "%s",
                 rc == ERR_FORBIDDEN ? "no access to this session" : "no such session");
        return;
    }
    snprintf(ho->role, sizeof(ho->role), "%s", role ? role : "viewer");
    ho->can_write = role && (strcmp(role, "owner") == 0 || strcmp(role, "writer") == 0);
}

int ws_upgrade_begin(struct app *app, struct MHD_Connection *c, const char *raw_uri,
                     void **upgrade_ctx)
{
    struct hub_handoff *ho = NULL;
    struct buf b;
    struct hdr_walk w = {&b, NULL, NULL, NULL, 0};
    int rc = 0;
    int fd = -1;
    buf_init(&b, MAX_REQUEST);
    *upgrade_ctx = NULL;
    if (!app->hub) {
        return ERR_UNSUPPORTED;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) {
        return ERR_INTERNAL;
    }
    ho = xcalloc(1, sizeof(*ho));
    ho->after = -1;
    /* A malformed id is refused like an unknown session: upgraded, then 4404. */
    int bad_id = ws_upgrade_path_sid(raw_uri, ho->sid, sizeof(ho->sid)) != 0;
    buf_printf(&b, "GET /v1/sessions/%s/ws HTTP/1.1\r\n", bad_id ? "_" : ho->sid);
    MHD_get_connection_values(c, MHD_HEADER_KIND, hdr_cb, &w);
    if (w.too_large || buf_puts(&b, "\r\n")) {
        rc = ERR_TOO_LARGE;
        goto out;
    }
    const char *q = strchr(raw_uri, '?');
    if (bad_id) {
        ho->err = ERR_NOT_FOUND;
        snprintf(ho->err_msg, sizeof(ho->err_msg), "no such session (malformed id)");
    } else {
        ws_authenticate(app, ho, q ? q + 1 : NULL, w.origin, w.host, w.authorization);
    }
    fd = fcntl(ci->connect_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        rc = ERR_IO;
        goto out;
    }
    /* Event frames are small and latency matters: no Nagle delay on the socket. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (app->wsg) {
        /* lws 4.1 cannot refuse unmasked client frames: it adopts the guard's end instead. */
        int lfd = -1;
        rc = wsg_wrap(app->wsg, fd, &lfd); /* takes fd over, also on failure */
        fd = lfd;
        if (rc) {
            goto out;
        }
    }
    ho->fd = fd;
    ho->bytes = buf_detach(&b, &ho->len);
    *upgrade_ctx = ho;
    ho = NULL;
out:
    buf_free(&b);
    free(ho);
    return rc;
}

void ws_upgrade_complete(struct app *app, void *upgrade_ctx)
{
    struct hub_handoff *ho = upgrade_ctx;
    if (!ho) {
        return;
    }
    hub_adopt(app->hub, ho);
}
