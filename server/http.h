/*
 * http.h - the libmicrohttpd daemon: listening socket, request collection, routing, replies,
 * CORS, the request log and the WebSocket hand-off. The route table (api.h/routes.c), the
 * hand-off itself (ws/) and the shutdown of deferred requests are handed in by app.c through
 * struct http_config, so this file knows no endpoint and no part above it.
 *
 * Threads: http_start/http_stop are called by app.c only. Requests run on the MHD thread
 * pool (cfg->threads, epoll, TURBO); each request's state belongs to the thread serving it.
 */
#ifndef SESSIOND_HTTP_H
#define SESSIOND_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct app;
struct http;
struct route;
struct MHD_Connection;

/** What the daemon serves and whom it tells at shutdown (filled by app.c). */
struct http_config {
    const struct route *routes; /* the route table (api.h), terminated by method NULL */
    unsigned conn_limit;        /* simultaneous connections (matched to RLIMIT_NOFILE) */
    /* Called by http_stop (main thread) after the grace period when requests are still in
     * flight: it must answer every deferred request (req_defer) so none is freed while
     * suspended. May be NULL. */
    void (*abort_deferred)(void *ctx);
    void *ctx;
    /* The WebSocket hand-off (server/ws/ws_upgrade.h: ws_upgrade_begin/complete), for routes
     * flagged ROUTE_WEBSOCKET. NULL: upgrades are answered 501. */
    int (*upgrade_begin)(struct app *app, struct MHD_Connection *c, const char *raw_uri,
                         void **upgrade_ctx);
    void (*upgrade_complete)(struct app *app, void *upgrade_ctx);
};

/** Bind app->cfg->listen and start serving hc->routes (hc is copied). *out owned by the
 * caller: http_stop(). */
int http_start(struct app *app, const struct http_config *hc, struct http **out);
/** The port actually bound (useful with port 0). */
int http_port(const struct http *h);
/** Stop accepting, let requests in flight finish (at most grace_s seconds), stop the threads
 * and free h. NULL is a no-op. */
void http_stop(struct http *h, int grace_s);

/* ---- routing, exposed for unit tests ---- */

#define HTTP_MAX_PARAMS 6

/** Values of the placeholders of a matched pattern. Names point into the pattern (not NUL
 * terminated: name_len), values into buf. */
struct path_params {
    int n;
    struct {
        const char *name;
        size_t name_len;
        const char *value;
    } p[HTTP_MAX_PARAMS];
    char buf[2048];
};

/** 1 if path matches pattern (filling pp), else 0. */
int http_match(const char *pattern, const char *path, struct path_params *pp);
/** Find the route for (method, path) in table (terminated by method NULL). Returns it, or
 * NULL: then *allow (size n) lists the methods the path does accept ("" = 404, else 405).
 * HEAD matches GET routes. */
const struct route *http_route_find(const struct route *table, const char *method, const char *path,
                                    struct path_params *pp, char *allow, size_t n);
/** 0 if the path part of a raw request URI (before '?') holds an encoded '/' or NUL ("%2F",
 * "%00"), which decoding would turn into a separator or an early end; else 1. */
int http_raw_path_ok(const char *uri);

#endif
