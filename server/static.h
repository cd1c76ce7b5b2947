/*
 * static.h - the web UI, embedded in the binary at build time (tools/embed_web.sh writes
 * build/gen/webfiles.c from web/), served at "/" (index.html) and "/ui/<file>".
 *
 * Every UI response carries a strict Content-Security-Policy (no inline script, no eval,
 * connections to our own origin only, framing by our origin and the configured
 * chrome-extension:// origins, for the extension's side panel), a strong ETag (If-None-Match
 * gets 304) and "Cache-Control: no-cache" (always revalidated, so a new binary's UI is picked
 * up at once). CORS for the extension's origins is answered by http.c for every route.
 *
 * Threads: read-only and thread safe.
 */
#ifndef SESSIOND_STATIC_H
#define SESSIOND_STATIC_H

#include <stddef.h>

struct config;
struct req;

/** One embedded file. The table static_files[] ends with an entry whose path is NULL. */
struct static_file {
    const char *path; /* "/index.html", "/app.js" (relative to web/) */
    const unsigned char *data;
    size_t len;
    const char *ctype;
    const char *etag; /* quoted */
};

extern const struct static_file static_files[];

/** The embedded file for a path relative to web/ ("/app.js"), or NULL. "/" is index.html. */
const struct static_file *static_find(const char *path);

/** The result of a lookup: what to send. */
struct static_reply {
    int status; /* 200, 304 or 404 */
    const struct static_file *file;
};

/** Resolve a request for url_path ("/", "/ui/app.js") with its If-None-Match header (may be
 * NULL). */
void static_lookup(const char *url_path, const char *if_none_match, struct static_reply *out);

/** The Content-Security-Policy header value for the configuration (frame-ancestors gets the
 * chrome-extension:// origins of cfg->origins; cfg NULL: the base policy). Caller frees; app.c
 * keeps it in app->csp, which api_static sends. */
char *static_csp_new(const struct config *cfg);

/** GET / and GET /ui/{*path} (route handler, ROUTE_PUBLIC). */
int api_static(struct req *r);

#endif
