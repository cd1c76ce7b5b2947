/*
 * api_messages.c - POST/GET /v1/sessions/{id}/messages and GET …/events.
 *
 * POST is parse → access check → ops_message_create (server/ops.c, the one transaction the
 * WebSocket and Slack share) → the 202, or 422 idempotency_mismatch, or the error.
 *
 * Thread context: MHD pool threads.
 */
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
#include "server/extension.h"
#include "server/ops.h"
#include "storage/messages.h"
#include "storage/meta.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/requests.h"
#include "storage/spool.h"
#include "storage/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int api_messages_post(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    json_t *body = NULL;
    struct ops_answer ans = {0};
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    rc = req_json_body(r, &body);
    if (rc) {
        return rc;
    }
    rc = ops_message_create(app, req_auth(r), sid, body, &ans);
    json_decref(body);
    if (ans.mismatch) {
        return req_fail_status(r, 422, "idempotency_mismatch", ans.msg);
    }
    if (rc) {
        return req_fail(r, rc, "%s", ans.msg);
    }
    if (ans.replayed) {
        req_add_header(r, "Idempotent-Replayed", "true");
    }
    rc = req_reply_json(r, 202, ans.json);
    ans.json = NULL;
    return rc;
}

/* ---- GET messages ---- */

struct list_rd {
    int64_t after;
    int64_t limit;
    json_t *arr;
    int64_t last;
};

static json_t *text_or_null(const char *t)
{
    return t ? json_string(t) : json_null();
}

static int message_json(void *ctx, const struct message_row *m)
{
    struct list_rd *lr = ctx;
    char ts[32];
    json_t *author = json_null(), *cx = json_null();
    if (m->author_id) {
        author = json_pack("{s:s,s:o,s:o}", "id", m->author_id, "name",
                           text_or_null(m->author_name), "email", text_or_null(m->author_email));
    }
    if (m->context_json) {
        json_t *c = json_loads(m->context_json, 0, NULL);
        if (c) {
            json_decref(cx);
            cx = c;
        }
    }
    clock_iso8601(m->created_at, ts, sizeof(ts));
    lr->last = m->seq;
    json_array_append_new(
        lr->arr, json_pack("{s:o,s:o,s:o,s:o,s:o,s:I,s:s}", "id", text_or_null(m->id), "role",
                           text_or_null(m->role), "content", text_or_null(m->content), "author",
                           author, "context", cx, "seq", (json_int_t)m->seq, "created_at", ts));
    return 0;
}

static int messages_rd(struct sess_rd *rd, void *arg)
{
    struct list_rd *lr = arg;
    return messages_list(rd, lr->after, lr->limit, message_json, lr);
}

int api_messages_list(struct req *r)
{
    const char *sid = req_param(r, "id");
    struct sess *s = NULL;
    struct list_rd lr = {0, 0, NULL, 0};
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc) {
        return rc;
    }
    rc = req_query_int(r, "after", 0, 0, INT64_MAX, &lr.after);
    if (!rc) {
        rc = req_query_int(r, "limit", 100, 1, 1000, &lr.limit);
    }
    if (rc) {
        return rc;
    }
    rc = api_session_open(r, sid, &s);
    if (rc) {
        return rc;
    }
    lr.arr = json_array();
    lr.last = lr.after;
    rc = sess_view(s, messages_rd, &lr);
    sess_put(s);
    if (rc) {
        json_decref(lr.arr);
        return req_fail(r, rc, "cannot read messages: %s", err_str(rc));
    }
    size_t n = json_array_size(lr.arr);
    return req_reply_json(r, 200,
                          json_pack("{s:o,s:I,s:b}", "messages", lr.arr, "next_after",
                                    (json_int_t)lr.last, "has_more", n == (size_t)lr.limit));
}

/* ---- GET events ---- */

int api_events_list(struct req *r)
{
    const char *sid = req_param(r, "id");
    struct sess *s = NULL;
    int64_t after, limit, last = 0, last_seq;
    int count = 0;
    struct buf b;
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc) {
        return rc;
    }
    rc = req_query_int(r, "after", 0, 0, INT64_MAX, &after);
    if (!rc) {
        rc = req_query_int(r, "limit", 100, 1, 1000, &limit);
    }
    if (rc) {
        return rc;
    }
    rc = api_session_open(r, sid, &s);
    if (rc) {
        return rc;
    }
    buf_init(&b, 0);
    buf_puts(&b, "{\"events\":[");
    rc = sess_events(s, after, (int)limit, &b, &count, &last);
    last_seq = sess_last_seq(s);
    sess_put(s);
    if (rc) {
        buf_free(&b);
        return req_fail(r, rc, "cannot read events: %s", err_str(rc));
    }
    if (last_seq < last) {
        last_seq = last; /* appended between the two reads */
    }
    buf_printf(&b, "],\"next_after\":%lld,\"last_seq\":%lld,\"has_more\":%s}", (long long)last,
               (long long)last_seq, last < last_seq ? "true" : "false");
    return req_reply_buf(r, 200, "application/json", &b);
}
