/*
 * http.c - libmicrohttpd glue: one daemon (epoll + thread pool + TURBO + suspend/resume),
 * per-request context, capped body collection, routing, replies, the JSON request log and
 * the WebSocket hand-off hook.
 *
 * Request life cycle (MHD 0.9.75):
 *   uri_log_cb        creates struct req (becomes *con_cls), keeps the raw URI and start time.
 *   on_request #1     headers are in: route lookup, WebSocket hand-off, early 413. We never
 *                     reply on this first call (MHD would answer "Connection: close").
 *   on_request #2..n  body chunks: appended to a capped buffer; past the cap the body is
 *                     drained and discarded for up to DRAIN_MAX_US (a 413 sent with unread
 *                     bytes in the socket would reach the client as a reset).
 *   on_request last   *upload_data_size == 0: auth, handler, queue the reply.
 *   completed_cb      request log line, http_config.upgrade_complete(), free.
 * Threads: a struct req is touched only by the pool thread that owns its connection.
 * http->inflight is atomic (read by http_stop on the main thread).
 */
#include "server/http.h"
#include "server/metrics.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "storage/registry.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A request body past its cap (or one nobody wants: 401, 404) is drained, read and dropped,
 * before the answer: MHD can only answer once the body is read, or before it is sent, and
 * closing a socket with unread bytes resets it, so a client that sends its whole body before
 * reading (most do) would see a reset instead of the 413. The drain is bounded in time, not
 * bytes: this many seconds after the request began the connection is closed. */
#define DRAIN_MAX_US      ((int64_t)30 * 1000000)
#define MAX_EXTRA_HEADERS 12

struct http {
    struct MHD_Daemon *d;
    struct app *app;
    struct http_config hc;
    int port;
    atomic_int inflight;
};

struct req {
    struct http *h;
    struct app *app;
    struct MHD_Connection *conn;
    char *raw_uri;
    int64_t t0_us;
    int phase; /* 0: not seen by on_request yet, 1: collecting the body, 2: replied */
    char method[16];
    const char *path; /* MHD's decoded url, valid for the request */
    const struct route *route;
    struct path_params pp;
    char allow[96];
    /* body */
    struct buf body;
    size_t body_max;
    uint64_t received;
    int too_large;
    int discard; /* body not wanted (no route, not authenticated): drained, not stored */
    /* auth */
    struct auth_info auth;
    int authed;
    /* WebSocket hand-off */
    void *upgrade_ctx;
    int upgraded;
    /* deferred reply: set by the handler (pool thread) before MHD_suspend_connection; the
     * resuming thread sets the reply fields, then resumes; MHD orders the two. */
    int deferred;
    /* reply */
    int reply_set;
    int status;
    char *rbody; /* malloc'd, freed by MHD (MUST_FREE) */
    size_t rlen;
    int rfd; /* -1 unless a file reply */
    uint64_t rfd_size;
    char ctype[128];
    int nextra;
    char *extra[MAX_EXTRA_HEADERS][2];
};

/* ---- routing ---- */

/* Next segment of a path/pattern starting at *p (after a '/'): [s, s+len). */
static const char *segment(const char *p, size_t *len)
{
    const char *e = strchr(p, '/');
    *len = e ? (size_t)(e - p) : strlen(p);
    return p;
}

int http_match(const char *pattern, const char *path, struct path_params *pp)
{
    const char *pt = pattern, *pa = path;
    size_t used = 0;
    pp->n = 0;
    if (*pt != '/' || *pa != '/') {
        return 0;
    }
    for (;;) {
        size_t tl, al;
        pt++;
        pa++;
        segment(pt, &tl);
        segment(pa, &al);
        if (tl >= 3 && pt[0] == '{' && pt[1] == '*' && pt[tl - 1] == '}') {
            /* {*rest}: everything that is left. */
            size_t rest = strlen(pa);
            if (pp->n >= HTTP_MAX_PARAMS || used + rest + 1 > sizeof(pp->buf)) {
                return 0;
            }
            memcpy(pp->buf + used, pa, rest + 1);
            pp->p[pp->n].name = pt + 2;
            pp->p[pp->n].name_len = tl - 3;
            pp->p[pp->n].value = pp->buf + used;
            pp->n++;
            return 1;
        }
        if (tl >= 2 && pt[0] == '{' && pt[tl - 1] == '}') {
            if (al == 0 || pp->n >= HTTP_MAX_PARAMS || used + al + 1 > sizeof(pp->buf)) {
                return 0;
            }
            memcpy(pp->buf + used, pa, al);
            pp->buf[used + al] = 0;
            pp->p[pp->n].name = pt + 1;
            pp->p[pp->n].name_len = tl - 2;
            pp->p[pp->n].value = pp->buf + used;
            pp->n++;
            used += al + 1;
        } else if (tl != al || memcmp(pt, pa, tl) != 0) {
            return 0;
        }
        pt += tl;
        pa += al;
        if (!*pt || !*pa) {
            return !*pt && !*pa;
        }
    }
}

const struct route *http_route_find(const struct route *table, const char *method, const char *path,
                                    struct path_params *pp, char *allow, size_t n)
{
    struct path_params tmp;
    size_t used = 0;
    if (strcmp(method, "HEAD") == 0) {
        method = "GET";
    }
    allow[0] = 0;
    for (const struct route *rt = table; rt->method; rt++) {
        int same = strcmp(rt->method, "*") == 0 || strcmp(rt->method, method) == 0;
        if (same) {
            if (http_match(rt->pattern, path, pp)) {
                return rt;
            }
        } else if (http_match(rt->pattern, path, &tmp) && !strstr(allow, rt->method)) {
            int w = snprintf(allow + used, n - used, "%s%s", used ? ", " : "", rt->method);
            if (w > 0 && (size_t)w < n - used) {
                used += (size_t)w;
            }
        }
    }
    return NULL;
}

/* Routing sees MHD's decoded path: "%2F" there is a '/' (another route: a proxy in front that
 * filtered on the raw path saw one segment) and "%00" ends the C string (the rest of the path is
 * silently dropped). Neither belongs in any of our paths, so such requests are refused. */
int http_raw_path_ok(const char *uri)
{
    for (const char *p = uri; *p && *p != '?' && *p != '#'; p++) {
        if (*p != '%' || !p[1] || !p[2]) {
            continue;
        }
        if ((p[1] == '2' && (p[2] == 'f' || p[2] == 'F')) || (p[1] == '0' && p[2] == '0')) {
            return 0;
        }
    }
    return 1;
}

/* ---- request accessors ---- */

struct app *req_app(struct req *r)
{
    return r->app;
}

const char *req_method(struct req *r)
{
    return r->method;
}

const char *req_path(struct req *r)
{
    return r->path;
}

const char *req_raw_uri(struct req *r)
{
    return r->raw_uri ? r->raw_uri : r->path;
}

const char *req_param(struct req *r, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < r->pp.n; i++) {
        if (r->pp.p[i].name_len == n && memcmp(r->pp.p[i].name, name, n) == 0) {
            return r->pp.p[i].value;
        }
    }
    return NULL;
}

const char *req_query(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *req_header(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *req_body(struct req *r, size_t *len)
{
    if (len) {
        *len = r->body.len;
    }
    return r->body.data ? r->body.data : "";
}

const struct auth_info *req_auth(struct req *r)
{
    return r->authed ? &r->auth : NULL;
}

int req_authenticate(struct req *r)
{
    if (r->authed) {
        return 0;
    }
    int rc = auth_bearer(r->app->auth, req_header(r, "Authorization"), &r->auth);
    if (rc == 0) {
        r->authed = 1;
    }
    return rc;
}

struct MHD_Connection *req_conn(struct req *r)
{
    return r->conn;
}

int req_json_body(struct req *r, json_t **out)
{
    char msg[256];
    const char *ct = req_header(r, "Content-Type");
    *out = NULL;
    if (ct && *ct) {
        size_t n = strcspn(ct, "; ");
        /* `curl -d` labels bodies application/x-www-form-urlencoded unless told otherwise;
         * accept that label (the body must still be a JSON object), refuse every other. */
        int json = (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
                   (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0) ||
                   (n == 33 && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0);
        if (!json) {
            return req_fail(r, ERR_UNSUPPORTED, "Content-Type must be application/json");
        }
    }
    int rc = jx_parse_object(r->body.data ? r->body.data : "", r->body.len, out, msg, sizeof(msg));
    if (rc) {
        return req_fail(r, rc, "%s", msg);
    }
    return 0;
}

int req_query_int(struct req *r, const char *name, int64_t def, int64_t min, int64_t max,
                  int64_t *out)
{
    const char *v = req_query(r, name);
    int64_t x;
    if (!v) {
        *out = def;
        return 0;
    }
    if (util_parse_i64(v, &x) != 0 || x < min || x > max) {
        return req_fail(r, ERR_INVALID, "query parameter '%s' must be an integer in [%lld, %lld]",
                        name, (long long)min, (long long)max);
    }
    *out = x;
    return 0;
}

/* ---- replies ---- */

static void reply_clear(struct req *r)
{
    free(r->rbody);
    r->rbody = NULL;
    r->rlen = 0;
    if (r->rfd >= 0) {
        close(r->rfd);
        r->rfd = -1;
    }
}

static void reply_set(struct req *r, int status, const char *ctype, char *body, size_t len)
{
    reply_clear(r);
    r->reply_set = 1;
    r->status = status;
    snprintf(r->ctype, sizeof(r->ctype), "%s", ctype ? ctype : "");
    r->rbody = body;
    r->rlen = len;
}

int req_reply_json(struct req *r, int status, json_t *body)
{
    if (!body) {
        return req_fail(r, ERR_INTERNAL, "could not build the response");
    }
    char *s = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(body);
    if (!s) {
        return req_fail(r, ERR_NOMEM, NULL);
    }
    reply_set(r, status, "application/json", s, strlen(s));
    return 0;
}

int req_reply_buf(struct req *r, int status, const char *content_type, struct buf *b)
{
    size_t len;
    char *p = buf_detach(b, &len);
    reply_set(r, status, content_type, p, len);
    return 0;
}

int req_reply_bytes(struct req *r, int status, const char *content_type, const void *data,
                    size_t len)
{
    char *p = xmalloc(len ? len : 1);
    if (len) {
        memcpy(p, data, len);
    }
    reply_set(r, status, content_type, p, len);
    return 0;
}

int req_reply_fd(struct req *r, int status, const char *content_type, int fd, uint64_t size)
{
    reply_set(r, status, content_type, NULL, 0);
    r->rfd = fd;
    r->rfd_size = size;
    return 0;
}

int req_reply_empty(struct req *r, int status)
{
    reply_set(r, status, NULL, NULL, 0);
    return 0;
}

static void error_body(struct req *r, int status, const char *code, const char *message)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"error\":{\"code\":");
    buf_json_str(&b, code, strlen(code));
    buf_puts(&b, ",\"message\":");
    buf_json_str(&b, message, strlen(message));
    buf_puts(&b, "}}");
    size_t len;
    char *p = buf_detach(&b, &len);
    reply_set(r, status, "application/json", p, len);
}

int req_fail(struct req *r, int err, const char *fmt, ...)
{
    char msg[512];
    if (err == 0) {
        err = ERR_INTERNAL;
    }
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
    } else {
        snprintf(msg, sizeof(msg), "%s", err_str(err));
    }
    error_body(r, err_http_status(err), err_code(err), msg);
    if (err == ERR_AUTH) {
        req_add_header(r, "WWW-Authenticate", "Bearer");
    }
    return err;
}

int req_fail_status(struct req *r, int status, const char *code, const char *message)
{
    error_body(r, status, code, message);
    return ERR_INVALID;
}

void req_add_header(struct req *r, const char *name, const char *value)
{
    if (r->nextra >= MAX_EXTRA_HEADERS) {
        LOG_WARN("http: too many reply headers, dropped %s", name);
        return;
    }
    r->extra[r->nextra][0] = xstrdup(name);
    r->extra[r->nextra][1] = xstrdup(value);
    r->nextra++;
}

/* ---- the request cycle ---- */

static void req_free(struct req *r)
{
    if (!r) {
        return;
    }
    reply_clear(r);
    buf_free(&r->body);
    for (int i = 0; i < r->nextra; i++) {
        free(r->extra[i][0]);
        free(r->extra[i][1]);
    }
    free(r->raw_uri);
    explicit_bzero(&r->auth, sizeof(r->auth));
    free(r);
}

static void *uri_log_cb(void *cls, const char *uri, struct MHD_Connection *c)
{
    struct http *h = cls;
    struct req *r = xcalloc(1, sizeof(*r));
    r->h = h;
    r->app = h->app;
    r->conn = c;
    r->raw_uri = xstrdup(uri ? uri : "");
    r->t0_us = clock_mono_us();
    r->rfd = -1;
    buf_init(&r->body, 0);
    atomic_fetch_add(&h->inflight, 1);
    return r;
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http *h = cls;
    struct req *r = *con_cls;
    (void)c;
    if (!r) {
        return;
    }
    *con_cls = NULL;
    if (r->upgrade_ctx) {
        void *u = r->upgrade_ctx;
        r->upgrade_ctx = NULL;
        h->hc.upgrade_complete(h->app, u); /* set with upgrade_begin, which made u */
    }
    int status = r->upgraded ? 101 : (r->phase == 2 ? r->status : 0);
    if (h->app->cfg->request_log && LOG_LEVEL_INFO >= log_threshold) {
        char path[1024];
        struct buf f;
        log_redact_uri(r->raw_uri, path, sizeof(path));
        buf_init(&f, 0);
        buf_puts(&f, "\"method\":");
        buf_json_str(&f, r->method, strlen(r->method));
        buf_puts(&f, ",\"path\":");
        buf_json_str(&f, path, strlen(path));
        buf_printf(&f, ",\"status\":%d,\"us\":%lld", status,
                   (long long)(clock_mono_us() - r->t0_us));
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && !r->upgraded) {
            buf_printf(&f, ",\"aborted\":%d", (int)toe);
        }
        log_write(LOG_LEVEL_INFO, f.data, "http: request");
        buf_free(&f);
    }
    metrics_http_observe(h->app->metrics, r->upgraded ? 101 : (r->phase == 2 ? r->status : 0),
                         clock_mono_us() - r->t0_us);
    atomic_fetch_sub(&h->inflight, 1);
    req_free(r);
}

void req_defer(struct req *r)
{
    r->deferred = 1;
    MHD_suspend_connection(r->conn);
}

void req_resume(struct req *r)
{
    MHD_resume_connection(r->conn);
}

/* Build the MHD response from the reply fields and queue it. */
static enum MHD_Result send_reply(struct req *r)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;
    if (!r->reply_set) {
        req_fail(r, ERR_INTERNAL, "the handler sent no reply");
    }
    if (r->rfd >= 0) {
        resp = MHD_create_response_from_fd64(r->rfd_size, r->rfd);
        if (resp) {
            r->rfd = -1; /* MHD closes it */
        }
    } else {
        resp = MHD_create_response_from_buffer(r->rlen, r->rbody ? r->rbody : (void *)"",
                                               r->rbody ? MHD_RESPMEM_MUST_FREE
                                                        : MHD_RESPMEM_PERSISTENT);
        if (resp) {
            r->rbody = NULL; /* MHD frees it */
        }
    }
    if (!resp) {
        return MHD_NO;
    }
    if (r->ctype[0]) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype);
    }
    if (strncmp(r->ctype, "application/json", 16) == 0) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    }
    for (int i = 0; i < r->nextra; i++) {
        MHD_add_response_header(resp, r->extra[i][0], r->extra[i][1]);
    }
    if (r->app->shutting_down || r->too_large) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    r->phase = 2;
    ret = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static int is_websocket_upgrade(struct req *r)
{
    const char *up = req_header(r, "Upgrade");
    return up && strcasecmp(up, "websocket") == 0;
}

/* Placeholders named "id" or "*id" must be valid ids. */
static int check_ids(struct req *r)
{
    for (int i = 0; i < r->pp.n; i++) {
        size_t n = r->pp.p[i].name_len;
        if (n >= 2 && memcmp(r->pp.p[i].name + n - 2, "id", 2) == 0 &&
            !util_valid_id(r->pp.p[i].value)) {
            return req_fail(r, ERR_INVALID, "malformed id in path (want [A-Za-z0-9_-]{1,64})");
        }
    }
    return 0;
}

/* MHD percent-decodes the path and the query into C strings, so a %00 silently cuts them:
 * DELETE /v1/sessions/ID%00/artifacts would be routed as DELETE /v1/sessions/ID, a request a
 * proxy or log in front of us saw as something else. Walk the raw URI the way MHD decodes it
 * and refuse a NUL anywhere, and any other control byte in the path (no route takes one).
 * A literal NUL byte never reaches us: MHD already cut the raw URI there, and proxies refuse
 * it in a request line. */
static int uri_has_control(const char *raw)
{
    int in_query = 0;
    for (const char *p = raw; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '?') {
            in_query = 1;
        } else if (c == '%' && util_hexval(p[1]) >= 0 && util_hexval(p[2]) >= 0) {
            c = (unsigned char)(util_hexval(p[1]) * 16 + util_hexval(p[2]));
            p += 2;
        }
        if (c == 0 || (!in_query && (c < 0x20 || c == 0x7f))) {
            return 1;
        }
    }
    return 0;
}

/* CORS, for every request with an Origin: Access-Control-* headers for an allowed one; a
 * preflight (OPTIONS) is answered here. Allowed origins are public_url's origin and cfg->origins
 * (configure the extension as "chrome-extension://<id>"). Allowed origins get credentials mode
 * too, so the extension may use cookies or the Authorization header alike; a preflight from any
 * other origin is refused with 403 and no CORS headers. */
static int cors(struct req *r, const char *origin, int preflight)
{
    struct app *app = req_app(r);
    int allowed = origin && app && app->cfg && config_origin_allowed(app->cfg, origin);
    req_add_header(r, "Vary", "Origin");
    if (allowed) {
        req_add_header(r, "Access-Control-Allow-Origin", origin);
        req_add_header(r, "Access-Control-Allow-Credentials", "true");
        req_add_header(r, "Access-Control-Expose-Headers", "ETag, Retry-After, Location");
    }
    if (!preflight) {
        return 0;
    }
    if (!allowed) {
        return req_fail(r, ERR_FORBIDDEN, "origin %s is not allowed", origin ? origin : "(none)");
    }
    req_add_header(r, "Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS");
    req_add_header(r, "Access-Control-Allow-Headers",
                   "Authorization, Content-Type, If-None-Match, X-Requested-With");
    req_add_header(r, "Access-Control-Max-Age", "600");
    return req_reply_empty(r, 204);
}

static void dispatch(struct req *r);

/* First call: headers are complete, nothing of the body has been read. */
static enum MHD_Result on_headers(struct req *r, const char *url, const char *method)
{
    const struct config *cfg = r->app->cfg;
    const char *cl;
    r->phase = 1;
    r->path = url;
    snprintf(r->method, sizeof(r->method), "%s", strcmp(method, "HEAD") == 0 ? "GET" : method);
    if (uri_has_control(r->raw_uri)) {
        /* Not routed at all: the body is drained and the 400 sent like any early refusal. */
        req_fail(r, ERR_INVALID, "the request path or query contains a NUL or control byte");
    } else if (!http_raw_path_ok(r->raw_uri)) {
        /* An encoded '/' would make the decoded path name another endpoint than the literal
         * one a proxy saw: neither authenticated, upgraded nor dispatched. */
        req_fail(r, ERR_INVALID, "encoded '/' or NUL byte in the path");
    } else {
        r->route =
            http_route_find(r->h->hc.routes, method, url, &r->pp, r->allow, sizeof(r->allow));
    }
    r->body_max = (size_t)cfg->max_body;
    if (r->route && (r->route->flags & ROUTE_ARTIFACT_BODY)) {
        r->body_max = (size_t)cfg->max_artifact_bytes;
    }
    buf_init(&r->body, r->body_max);
    /* Authenticate before reading the body: an anonymous client must not make us buffer up
     * to the cap (16 MiB for artifacts). The 401 itself is sent after the body is drained. */
    if (!r->route || (!(r->route->flags & ROUTE_PUBLIC) && req_authenticate(r) != 0)) {
        r->discard = 1;
    }
    if (r->route && (r->route->flags & ROUTE_WEBSOCKET) && strcmp(r->method, "GET") == 0 &&
        is_websocket_upgrade(r)) {
        void *ctx = NULL;
        int rc = r->h->hc.upgrade_begin ? r->h->hc.upgrade_begin(r->app, r->conn, r->raw_uri, &ctx)
                                        : ERR_UNSUPPORTED;
        if (rc == 0) {
            r->upgrade_ctx = ctx;
            r->upgraded = 1;
            return MHD_NO; /* MHD sends nothing and lets go of the socket */
        }
        if (rc == ERR_UNSUPPORTED) {
            req_fail_status(r, 501, "not_implemented", "WebSocket support is not available");
        } else {
            req_fail(r, rc, "WebSocket upgrade refused: %s", err_str(rc));
        }
    }
    const char *expect = req_header(r, "Expect");
    int waits = expect && strcasecmp(expect, "100-continue") == 0;
    cl = req_header(r, "Content-Length");
    if (cl) {
        int64_t n;
        if (util_parse_i64(cl, &n) == 0 && n > (int64_t)r->body_max) {
            r->too_large = 1;
            if (waits) {
                /* The client waits for our go-ahead: answer now, it sends no body. */
                req_fail(r, ERR_TOO_LARGE, "request body is larger than %zu bytes", r->body_max);
                return send_reply(r);
            }
        }
    }
    if (r->discard && waits) {
        dispatch(r); /* 401, 404 or 405 before the client sends a body we would drop */
        return send_reply(r);
    }
    return MHD_YES;
}

static void dispatch(struct req *r)
{
    const char *origin = req_header(r, "Origin");
    int rc;
    if (r->reply_set) {
        return; /* decided while reading the headers (e.g. a refused upgrade) */
    }
    if (r->too_large) {
        req_fail(r, ERR_TOO_LARGE, "request body is larger than %zu bytes", r->body_max);
        return;
    }
    if (strcmp(r->method, "OPTIONS") == 0) {
        cors(r, origin, 1);
        if (!r->reply_set) {
            req_reply_empty(r, 204);
        }
        return;
    }
    if (origin) {
        cors(r, origin, 0);
    }
    if (!r->route) {
        if (r->allow[0]) {
            req_add_header(r, "Allow", r->allow);
            req_fail(r, ERR_METHOD, "method %s is not allowed here (allowed: %s)", r->method,
                     r->allow);
        } else {
            req_fail(r, ERR_NOT_FOUND, "no such endpoint: %s %s", r->method, r->path);
        }
        return;
    }
    if (!(r->route->flags & ROUTE_PUBLIC)) {
        if (!r->authed) { /* tried once, before the body */
            req_fail(r, ERR_AUTH, "missing or invalid bearer token");
            return;
        }
    }
    if (check_ids(r) != 0) {
        return;
    }
    rc = r->route->fn(r);
    if (!r->deferred && !r->reply_set) { /* deferred: another thread may be setting it */
        if (rc) {
            req_fail(r, rc, NULL);
        } else {
            req_fail(r, ERR_INTERNAL, "the handler sent no reply");
        }
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct req *r = *con_cls;
    (void)cls;
    (void)version;
    if (!r) {
        return MHD_NO; /* the URI callback always runs first; be safe */
    }
    if (r->phase == 0) {
        r->conn = c;
        return on_headers(r, url, method);
    }
    if (r->deferred) {
        /* Called again after req_resume(): the reply was set by the resuming thread. */
        if (!r->reply_set) {
            req_fail(r, ERR_INTERNAL, "a deferred request was resumed without a reply");
        }
        r->deferred = 0;
        return send_reply(r);
    }
    if (r->phase == 2) {
        /* Replied early (413 on Expect); swallow anything MHD still hands us. */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        r->received += n;
        *upload_data_size = 0;
        if (!r->too_large && !r->discard && buf_append(&r->body, upload_data, n) == 0) {
            return MHD_YES;
        }
        if (!r->too_large && !r->discard) {
            r->too_large = 1;
            buf_free(&r->body);
        }
        if (clock_mono_us() - r->t0_us > DRAIN_MAX_US) {
            LOG_WARN("http: closing a connection still sending an unwanted body after %lld s "
                     "(%llu bytes)",
                     (long long)(DRAIN_MAX_US / 1000000), (unsigned long long)r->received);
            return MHD_NO;
        }
        return MHD_YES;
    }
    dispatch(r);
    if (r->deferred) {
        return MHD_YES; /* suspended: req_resume() brings us back here */
    }
    return send_reply(r);
}

static void mhd_log(void *cls, const char *fm, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fm, ap);
    /* Returning MHD_NO is how a WebSocket upgrade is handed over: expected, not an error. */
    if (strstr(msg, "Application reported internal error, closing connection")) {
        LOG_DEBUG("mhd: %s", msg);
        return;
    }
    LOG_WARN("mhd: %s", msg);
}

int http_start(struct app *app, const struct http_config *hc, struct http **out)
{
    const struct config *cfg = app->cfg;
    char host[256];
    int port;
    struct addrinfo hints, *ai = NULL;
    struct http *h = NULL;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    int rc;
    *out = NULL;
    rc = config_split_listen(cfg->listen, host, sizeof(host), &port);
    if (rc) {
        return rc;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai) {
        LOG_ERROR("http: cannot resolve listen host '%s'", host);
        return ERR_INVALID;
    }
    if (ai->ai_family == AF_INET6) {
        ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)port);
    }
    h = xcalloc(1, sizeof(*h));
    h->app = app;
    h->hc = *hc;
    atomic_init(&h->inflight, 0);
    h->d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, &on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads, MHD_OPTION_URI_LOG_CALLBACK,
        uri_log_cb, h, MHD_OPTION_NOTIFY_COMPLETED, completed_cb, h, MHD_OPTION_CONNECTION_LIMIT,
        hc->conn_limit, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        LOG_ERROR("http: cannot listen on %s", cfg->listen);
        free(h);
        return ERR_IO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : port;
    *out = h;
    return 0;
}

int http_port(const struct http *h)
{
    return h->port;
}

void http_stop(struct http *h, int grace_s)
{
    if (!h) {
        return;
    }
    MHD_socket lfd = MHD_quiesce_daemon(h->d);
    int64_t deadline = clock_mono_ms() + (int64_t)grace_s * 1000;
    while (atomic_load(&h->inflight) > 0 && clock_mono_ms() < deadline) {
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&h->inflight) > 0) {
        /* Deferred requests (suspended connections) must be answered before the daemon
         * stops: MHD would free them while another thread still holds them. */
        if (h->hc.abort_deferred) {
            h->hc.abort_deferred(h->hc.ctx);
        }
        deadline = clock_mono_ms() + 1000;
        while (atomic_load(&h->inflight) > 0 && clock_mono_ms() < deadline) {
            struct timespec ts = {0, 10000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (atomic_load(&h->inflight) > 0) {
        LOG_WARN("http: %d requests still in flight after %d s, stopping anyway",
                 atomic_load(&h->inflight), grace_s);
    }
    MHD_stop_daemon(h->d);
    if (lfd != MHD_INVALID_SOCKET) {
        close(lfd);
    }
    free(h);
}
