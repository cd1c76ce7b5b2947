/*
 * static.c - serves the embedded web UI (see static.h).
 *
 * The files live in static_files[] (build/gen/webfiles.c, generated from web/ by
 * tools/embed_web.sh), so the installed binary needs no web root on disk. Lookups are a
 * linear scan of a dozen entries: cheaper than anything else we could build.
 *
 * Threads: any; the CSP is app->csp, built once by app.c before the HTTP threads start.
 */
#include "server/static.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/config.h"

#include <string.h>

#define CSP_BASE                                                                                   \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "        \
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "                  \
    "form-action 'none'; object-src 'none'; frame-ancestors 'self'"

const struct static_file *static_find(const char *path)
{
    if (!path || !*path || strcmp(path, "/") == 0) {
        path = "/index.html";
    }
    /* No dot segments, no encoded tricks: embedded paths are plain. */
    if (strstr(path, "..") || strchr(path, '\\') || strchr(path, '%')) {
        return NULL;
    }
    for (const struct static_file *f = static_files; f->path; f++) {
        if (strcmp(f->path, path) == 0) {
            return f;
        }
    }
    return NULL;
}

/* 1 if the If-None-Match list contains etag (or is "*"). */
static int etag_matches(const char *inm, const char *etag)
{
    if (!inm) {
        return 0;
    }
    size_t el = strlen(etag);
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == ',') {
            p++;
        }
        if (*p == '*') {
            return 1;
        }
        if (p[0] == 'W' && p[1] == '/') {
            p += 2; /* weak comparison is fine for GET */
        }
        if (strncmp(p, etag, el) == 0 && (p[el] == 0 || p[el] == ',' || p[el] == ' ')) {
            return 1;
        }
        const char *c = strchr(p, ',');
        if (!c) {
            break;
        }
        p = c;
    }
    return 0;
}

void static_lookup(const char *url_path, const char *if_none_match, struct static_reply *out)
{
    const char *rel = url_path;
    if (rel && strncmp(rel, "/ui/", 4) == 0) {
        rel += 3; /* "/ui/app.js" -> "/app.js" */
    } else if (rel && strcmp(rel, "/") != 0 && strcmp(rel, "/index.html") != 0) {
        rel = NULL;
    }
    out->file = rel ? static_find(rel) : NULL;
    if (!out->file) {
        out->status = 404;
        return;
    }
    out->status = etag_matches(if_none_match, out->file->etag) ? 304 : 200;
}

char *static_csp_new(const struct config *cfg)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, CSP_BASE);
    if (cfg) {
        for (size_t i = 0; i < cfg->origins.n; i++) {
            const char *o = cfg->origins.v[i];
            /* Only extension origins may frame the UI (the side panel). Refuse anything that
             * could break out of the header value. */
            if (strncmp(o, "chrome-extension://", 19) == 0 && !strpbrk(o, " ;,\r\n'\"")) {
                buf_printf(&b, " %s", o);
            }
        }
    }
    return buf_detach(&b, &(size_t){0});
}

int api_static(struct req *r)
{
    struct static_reply sr;
    static_lookup(req_path(r), req_header(r, "If-None-Match"), &sr);
    if (sr.status == 404) {
        return req_fail(r, ERR_NOT_FOUND, "no such file");
    }
    req_add_header(r, "ETag", sr.file->etag);
    req_add_header(r, "Cache-Control", "no-cache");
    req_add_header(r, "X-Content-Type-Options", "nosniff");
    req_add_header(r, "Referrer-Policy", "no-referrer");
    if (strncmp(sr.file->ctype, "text/html", 9) == 0) {
        const char *csp = req_app(r)->csp;
        req_add_header(r, "Content-Security-Policy", csp ? csp : CSP_BASE);
        req_add_header(r, "Cross-Origin-Opener-Policy", "same-origin");
    }
    if (sr.status == 304) {
        return req_reply_empty(r, 304);
    }
    return req_reply_bytes(r, 200, sr.file->ctype, sr.file->data, sr.file->len);
}
