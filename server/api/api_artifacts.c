/*
 * api_artifacts.c - POST/GET /v1/sessions/{id}/artifacts and GET …/artifacts/{aid}.
 *
 * Upload forms: a JSON body {type, path?, mime?, content? (text) | content_base64?}, or raw
 * bytes with any non-JSON Content-Type (which becomes the artifact's mime type) and
 * ?type=&path= in the query. The body cap is cfg->max_artifact_bytes (ROUTE_ARTIFACT_BODY).
 * The row and its `artifact.created` event are committed together.
 * Thread context: MHD pool threads.
 */
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/ops.h"
#include "server/auth.h"
#include "server/config.h"
#include "storage/artifacts.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const types[] = {"diff", "file", "screenshot", "dom_selection",
                                    "pr",   "log",  NULL};

static int valid_type(const char *t)
{
    for (int i = 0; types[i]; i++) {
        if (strcmp(types[i], t) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Decode standard base64 (whitespace not allowed). 0 or ERR_INVALID; *out malloc'd. */
static int b64_decode(const char *in, size_t n, unsigned char **out, size_t *outlen)
{
    if (n % 4 != 0) {
        return ERR_INVALID;
    }
    unsigned char *p = xmalloc(n / 4 * 3 + 1);
    int len = n ? EVP_DecodeBlock(p, (const unsigned char *)in, (int)n) : 0;
    if (len < 0) {
        free(p);
        return ERR_INVALID;
    }
    /* EVP_DecodeBlock counts padding as zero bytes. */
    if (n >= 1 && in[n - 1] == '=') {
        len--;
    }
    if (n >= 2 && in[n - 2] == '=') {
        len--;
    }
    *out = p;
    *outlen = (size_t)len;
    return 0;
}

struct art_op {
    const char *id, *type, *path, *mime;
    const void *data;
    size_t len;
    const struct author *author;
    int64_t seq;
    int64_t created_at;
};

static int art_tx(struct sess_tx *tx, void *arg)
{
    struct art_op *op = arg;
    struct artifact_row row = {
        .id = op->id,
        .type = op->type,
        .path = op->path,
        .mime = op->mime,
        .data = op->data,
        .len = op->len,
        .author_id = op->author->id,
    };
    op->created_at = sess_tx_now(tx);
    int rc = artifacts_insert(tx, &row);
    if (rc) {
        return rc;
    }
    return ops_tx_append_json(tx, "artifact.created", op->author,
                              json_pack("{s:s,s:s,s:s?,s:s,s:I}", "artifact_id", op->id, "type",
                                        op->type, "path", op->path, "mime", op->mime, "size",
                                        (json_int_t)op->len),
                              &op->seq);
}

static int is_json_ctype(const char *ct)
{
    if (!ct) {
        return 1; /* no type: treat as JSON, the documented default */
    }
    size_t n = strcspn(ct, "; ");
    return (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
           (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0);
}

int api_artifacts_post(struct req *r)
{
    const struct auth_info *a = req_auth(r);
    const char *sid = req_param(r, "id");
    const char *ctype = req_header(r, "Content-Type");
    json_t *body = NULL;
    const char *type = NULL, *path = NULL, *mime = NULL, *text = NULL, *b64 = NULL;
    unsigned char *decoded = NULL;
    char *mime_copy = NULL, *id = NULL;
    struct sess *s = NULL;
    struct art_op op;
    char msg[160];
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    memset(&op, 0, sizeof(op));
    if (is_json_ctype(ctype)) {
        rc = req_json_body(r, &body);
        if (rc) {
            goto out;
        }
        rc = jx_str(body, "type", &type, msg, sizeof(msg));
        if (!rc) {
            rc = jx_str(body, "path", &path, msg, sizeof(msg));
        }
        if (!rc) {
            rc = jx_str(body, "mime", &mime, msg, sizeof(msg));
        }
        if (!rc) {
            rc = jx_str(body, "content", &text, msg, sizeof(msg));
        }
        if (!rc) {
            rc = jx_str(body, "content_base64", &b64, msg, sizeof(msg));
        }
        if (rc) {
            rc = req_fail(r, rc, "%s", msg);
            goto out;
        }
        if (text && b64) {
            rc = req_fail(r, ERR_INVALID, "give either 'content' or 'content_base64', not both");
            goto out;
        }
        if (b64) {
            size_t dl;
            if (b64_decode(b64, strlen(b64), &decoded, &dl) != 0) {
                rc = req_fail(r, ERR_INVALID, "field 'content_base64' is not valid base64");
                goto out;
            }
            op.data = decoded;
            op.len = dl;
        } else if (text) {
            op.data = text;
            op.len = json_string_length(json_object_get(body, "content"));
        }
        if (!mime) {
            mime = b64 ? "application/octet-stream" : "text/plain; charset=utf-8";
        }
    } else {
        type = req_query(r, "type");
        path = req_query(r, "path");
        mime_copy = xstrdup(ctype);
        mime = mime_copy;
        op.data = req_body(r, &op.len);
    }
    if (!type) {
        type = "file";
    }
    if (!valid_type(type)) {
        rc = req_fail(r, ERR_INVALID,
                      "type must be one of diff, file, screenshot, dom_selection, pr, log");
        goto out;
    }
    if ((path && strlen(path) > 1024) || strlen(mime) > 127) {
        rc = req_fail(r, ERR_INVALID, "path (1024) or mime (127 bytes) too long");
        goto out;
    }
    rc = api_session_open(r, sid, &s);
    if (rc) {
        goto out;
    }
    id = ops_new_id("a_");
    struct author who = {a->user_id, a->name, a->email};
    op.id = id;
    op.type = type;
    op.path = path;
    op.mime = mime;
    op.author = &who;
    rc = sess_write(s, art_tx, &op);
    if (rc) {
        rc = req_fail(r, rc, "cannot store the artifact: %s", err_str(rc));
        goto out;
    }
    char ts[32];
    clock_iso8601(op.created_at, ts, sizeof(ts));
    rc = req_reply_json(r, 201,
                        json_pack("{s:s,s:s,s:s?,s:s,s:I,s:I,s:s}", "id", id, "type", type, "path",
                                  path, "mime", mime, "size", (json_int_t)op.len, "seq",
                                  (json_int_t)op.seq, "created_at", ts));
out:
    sess_put(s);
    json_decref(body);
    free(decoded);
    free(mime_copy);
    free(id);
    return rc;
}

struct art_list_rd {
    json_t *arr;
};

static int art_json(void *ctx, const struct artifact_row *a)
{
    struct art_list_rd *lr = ctx;
    char ts[32];
    clock_iso8601(a->created_at, ts, sizeof(ts));
    json_array_append_new(lr->arr,
                          json_pack("{s:s,s:s,s:s?,s:s,s:I,s:s?,s:s}", "id", a->id, "type", a->type,
                                    "path", a->path, "mime", a->mime, "size", (json_int_t)a->len,
                                    "author_id", a->author_id, "created_at", ts));
    return 0;
}

static int art_list_rd(struct sess_rd *rd, void *arg)
{
    return artifacts_list(rd, art_json, arg);
}

int api_artifacts_list(struct req *r)
{
    const char *sid = req_param(r, "id");
    struct sess *s = NULL;
    struct art_list_rd lr = {NULL};
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc) {
        return rc;
    }
    rc = api_session_open(r, sid, &s);
    if (rc) {
        return rc;
    }
    lr.arr = json_array();
    rc = sess_view(s, art_list_rd, &lr);
    sess_put(s);
    if (rc) {
        json_decref(lr.arr);
        return req_fail(r, rc, NULL);
    }
    return req_reply_json(r, 200, json_pack("{s:o}", "artifacts", lr.arr));
}

struct art_get_rd {
    const char *aid;
    struct buf data;
    char mime[128];
    int found;
};

static int art_get_rd(struct sess_rd *rd, void *arg)
{
    struct art_get_rd *g = arg;
    int rc = artifacts_get(rd, g->aid, &g->data, g->mime, sizeof(g->mime));
    if (rc == ERR_NOT_FOUND) {
        return 0; /* g->found stays 0: the caller's 404 names the artifact */
    }
    g->found = rc == 0;
    return rc;
}

int api_artifact_get(struct req *r)
{
    const char *sid = req_param(r, "id");
    struct sess *s = NULL;
    struct art_get_rd g;
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc) {
        return rc;
    }
    memset(&g, 0, sizeof(g));
    g.aid = req_param(r, "aid");
    buf_init(&g.data, 0);
    rc = api_session_open(r, sid, &s);
    if (rc) {
        return rc;
    }
    rc = sess_view(s, art_get_rd, &g);
    sess_put(s);
    if (!rc && !g.found) {
        rc = req_fail(r, ERR_NOT_FOUND, "no artifact %s in session %s", g.aid, sid);
    } else if (rc) {
        rc = req_fail(r, rc, NULL);
    } else {
        /* Artifacts are user content served from the API's origin: never let a browser run
         * them (an uploaded text/html must not script the web UI). */
        req_add_header(r, "X-Content-Type-Options", "nosniff");
        req_add_header(r, "Content-Security-Policy", "default-src 'none'; sandbox");
        rc = req_reply_buf(r, 200, g.mime, &g.data);
    }
    buf_free(&g.data);
    return rc;
}
