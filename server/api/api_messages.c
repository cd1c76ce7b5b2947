/*
 * api_messages.c - POST/GET /v1/sessions/{id}/messages and GET …/events.
 *
 * A POSTed message is one group-commit operation (one SAVEPOINT in the session's next
 * transaction): idempotency lookup, unfinished-prompt limit, the `message` event, the
 * messages row, the prompts row and the requests row all commit together or not at all, and
 * the 202 is sent only after the commit. Everything that does not need the session lock (ids,
 * the event's JSON) is prepared before, so the critical section is a handful of statements.
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

/* A new id whose hex part starts with the wall clock in ms, so ids sort by creation time.
 * messages.id and prompts.id are TEXT primary keys: random ids would scatter every insert
 * over the whole index b-tree (one more random page per message in the WAL and the page
 * cache); time-ordered ids append to its rightmost leaf. 12 hex digits of ms + 8 random.
 * Caller frees. */
char *api_new_sorted_id(const char *prefix)
{
    char rnd[9];
    util_random_hex(rnd, 4);
    return xasprintf("%s%012llx%s", prefix, (unsigned long long)clock_now_ms(), rnd);
}

/* Number of UTF-8 code points (the input is valid UTF-8: jansson checked it). */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    }
    return c;
}

struct msg_op {
    /* in */
    const char *message_id;
    const char *prompt_id; /* NULL: run false */
    const char *content;
    size_t content_len;
    const char *context_json; /* NULL if none */
    const char *crid;         /* client_request_id or NULL */
    const char *crid_user;    /* the token's user id: a key is this user's own */
    const char *fingerprint;  /* hex SHA-256 of the request's canonical JSON */
    const struct author *author;
    const char *event_data;
    int64_t max_unfinished;
    /* out */
    int64_t seq;
    char *replay; /* the stored answer of an earlier request with the same crid */
    int mismatch; /* the crid was used before by this user for another request */
    int reopened;
};

/* The 202 answer as stored for idempotent replays (same shape as the JSON reply). */
static void answer_json(struct buf *b, const char *mid, const char *pid, int64_t seq)
{
    buf_puts(b, "{\"message_id\":");
    buf_json_str(b, mid, strlen(mid));
    buf_puts(b, ",\"prompt_id\":");
    if (pid) {
        buf_json_str(b, pid, strlen(pid));
    } else {
        buf_puts(b, "null");
    }
    buf_printf(b, ",\"seq\":%lld}", (long long)seq);
}

static int msg_tx(struct sess_tx *tx, void *arg)
{
    struct msg_op *op = arg;
    int rc;
    if (op->crid) {
        char *fp = NULL, *answer = NULL;
        rc = requests_tx_find(tx, op->crid_user, op->crid, &fp, &answer);
        if (rc == 0) {
            /* A retry gets the first answer; the same key for another request is refused,
             * or the client would take the first request's answer for this one's. */
            op->mismatch = fp && strcmp(fp, op->fingerprint) != 0;
            free(fp);
            if (op->mismatch) {
                free(answer);
                return ERR_UNPROCESSABLE;
            }
            op->replay = answer;
            return 0; /* already done: write nothing */
        }
        if (rc != ERR_NOT_FOUND) {
            return rc;
        }
    }
    /* Only a prompt is limited and reopens an ended session ("DELETE ends it; a later prompt
     * reopens it"); a comment (run: false) needs neither check, which keeps the statement off
     * the hot path of chat-only traffic. */
    if (op->prompt_id) {
        int64_t unfinished = 0;
        int ended = 0;
        rc = prompts_count_unfinished(sess_tx_rd(tx), &unfinished);
        if (!rc) {
            rc = meta_ended(sess_tx_rd(tx), &ended);
        }
        if (rc) {
            return rc;
        }
        if (unfinished >= op->max_unfinished) {
            return ERR_LIMIT;
        }
        if (ended) {
            rc = meta_clear_ended(tx);
            if (rc) {
                return rc;
            }
            rc = sess_tx_append(tx, "session.reopened", op->author, NULL, NULL);
            if (rc) {
                return rc;
            }
            op->reopened = 1;
        }
    }
    rc = sess_tx_append(tx, "message", op->author, op->event_data, &op->seq);
    if (rc) {
        return rc;
    }
    struct message_row m = {
        .id = op->message_id,
        .role = "user",
        .content = op->content,
        .content_len = op->content_len,
        .author_id = op->author->id,
        .author_name = op->author->name,
        .author_email = op->author->email,
        .context_json = op->context_json,
        .seq = op->seq,
    };
    rc = messages_insert(tx, &m);
    if (rc) {
        return rc;
    }
    /* issue 6: a DOM selection also becomes a dom_selection artifact (server/extension.h) */
    rc = ext_context_store(tx, op->context_json, op->message_id, op->author);
    if (rc) {
        return rc;
    }
    if (op->prompt_id) {
        rc = prompts_queue(tx, op->prompt_id, op->message_id, op->author);
        if (rc) {
            return rc;
        }
    }
    if (op->crid) {
        /* TODO(lead): the requests table is never pruned; a retention (e.g. 7 days, needs an
         * index on created_at) belongs with the store's housekeeping (flusher). */
        struct buf b;
        buf_init(&b, 0);
        answer_json(&b, op->message_id, op->prompt_id, op->seq);
        rc = requests_tx_insert(tx, op->crid_user, op->crid, op->fingerprint, b.data, b.len);
        buf_free(&b);
        if (rc) {
            return rc;
        }
    }
    return 0;
}

static int park_answer(struct buf *out, const struct spool_msg *m, int64_t seq)
{
    answer_json(out, m->message_id, NULL, seq);
    return 0;
}

/* The request's fingerprint for its idempotency record: SHA-256 of the canonical JSON (keys
 * sorted, compact) of what makes the request what it is: content, context, run (as it takes
 * effect, so an omitted run equals run:true), author and agent. out: 65 bytes, hex. */
static void request_fingerprint(json_t *body, int run, char out[65])
{
    json_t *c =
        json_pack("{s:O?, s:O?, s:b, s:O?, s:O?}", "content", json_object_get(body, "content"),
                  "context", json_object_get(body, "context"), "run", run, "author",
                  json_object_get(body, "author"), "agent", json_object_get(body, "agent"));
    char *s = c ? json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    util_sha256_hex(s ? s : "", s ? strlen(s) : 0, out);
    free(s);
    json_decref(c);
}

/* Validate the optional `author` object of a bot/admin token. */
static int parse_author(json_t *obj, struct author *out, char *emsg, size_t n)
{
    char msg[160];
    const char *id = NULL, *name = NULL, *email = NULL;
    int rc;
    rc = jx_str(obj, "id", &id, msg, sizeof(msg));
    if (!rc) {
        rc = jx_str(obj, "name", &name, msg, sizeof(msg));
    }
    if (!rc) {
        rc = jx_str(obj, "email", &email, msg, sizeof(msg));
    }
    if (rc) {
        snprintf(emsg, n, "author: %s", msg);
        return rc;
    }
    if (!id || !*id || strlen(id) > 150 || !strchr(id, ':') || id[0] == ':') {
        snprintf(emsg, n, "author.id must be \"provider:id\" (e.g. \"slack:U123\")");
        return ERR_INVALID;
    }
    if ((name && strlen(name) > 150) || (email && strlen(email) > 150)) {
        snprintf(emsg, n, "author.name and author.email are capped at 150 bytes");
        return ERR_INVALID;
    }
    out->id = id;
    out->name = name;
    out->email = email;
    return 0;
}

/*
 * The message path without HTTP, shared by POST …/messages and the WebSocket `prompt` frame
 * (server/ws_api.c), so both validate the same object and write the same transaction.
 * The caller has checked write access. *out gets the 202 answer (new reference); *replayed
 * (may be NULL) is set when a repeated client_request_id returned the first answer.
 */
static int message_create(struct app *app, const char *sid, const struct auth_info *a, json_t *body,
                          json_t **out, int *replayed, int *mismatch, char *emsg, size_t n)
{
    const struct config *cfg = app->cfg;
    json_t *context = NULL, *author_obj = NULL;
    const char *content = NULL, *crid = NULL;
    char *context_json = NULL, *mid = NULL, *pid = NULL;
    int run = 1;
    struct sess *s = NULL;
    struct buf ev;
    struct author who = {a->user_id, a->name, a->email};
    struct msg_op op;
    char fingerprint[65] = "";
    int rc;
    buf_init(&ev, 0);
    memset(&op, 0, sizeof(op));
    *out = NULL;
    if (replayed) {
        *replayed = 0;
    }
    if (mismatch) {
        *mismatch = 0;
    }
    rc = jx_str(body, "content", &content, emsg, n);
    if (!rc) {
        rc = jx_obj(body, "context", &context, emsg, n);
    }
    if (!rc) {
        rc = jx_str(body, "client_request_id", &crid, emsg, n);
    }
    if (!rc) {
        rc = jx_bool(body, "run", &run, emsg, n);
    }
    if (!rc) {
        rc = jx_obj(body, "author", &author_obj, emsg, n);
    }
    if (rc) {
        goto out;
    }
    if (!content) {
        snprintf(emsg, n, "field 'content' is required");
        rc = ERR_INVALID;
        goto out;
    }
    size_t clen = json_string_length(json_object_get(body, "content"));
    if (clen == 0) {
        snprintf(emsg, n, "field 'content' must not be empty");
        rc = ERR_INVALID;
        goto out;
    }
    if (utf8_chars(content, clen) > (size_t)cfg->max_content_chars) {
        snprintf(emsg, n, "content is longer than %lld characters",
                 (long long)cfg->max_content_chars);
        rc = ERR_TOO_LARGE;
        goto out;
    }
    if (crid && (!*crid || strlen(crid) > 128)) {
        snprintf(emsg, n, "client_request_id must be 1 to 128 bytes");
        rc = ERR_INVALID;
        goto out;
    }
    if (author_obj) {
        if (!auth_may_impersonate(a)) {
            snprintf(emsg, n, "only bot and admin tokens may set 'author'");
            rc = ERR_FORBIDDEN;
            goto out;
        }
        rc = parse_author(author_obj, &who, emsg, n);
        if (rc) {
            goto out;
        }
    }
    if (context) {
        if (ext_context_check(context, emsg, n)) { /* issue 6: DOM selection shape */
            rc = ERR_INVALID;
            goto out;
        }
        context_json = jx_dump(context);
    }
    if (crid) {
        request_fingerprint(body, run, fingerprint);
    }
    mid = api_new_sorted_id("m_");
    if (run) {
        pid = api_new_sorted_id("p_");
    }
    /* The event's data, built outside the session lock. */
    buf_puts(&ev, "{\"message_id\":");
    buf_json_str(&ev, mid, strlen(mid));
    buf_puts(&ev, ",\"prompt_id\":");
    if (pid) {
        buf_json_str(&ev, pid, strlen(pid));
    } else {
        buf_puts(&ev, "null");
    }
    buf_puts(&ev, ",\"role\":\"user\",\"content\":");
    buf_json_str(&ev, content, clen);
    if (context_json) {
        buf_puts(&ev, ",\"context\":");
        buf_puts(&ev, context_json);
    }
    buf_putc(&ev, '}');

    if (!pid && !context_json) {
        /* A comment to a hibernated session is parked in the spool instead of waking the
         * session file (store_park; it declines when the session is open or unknown). */
        struct spool_msg pm = {.message_id = mid,
                               .content = content,
                               .content_len = clen,
                               .author = &who,
                               .event_data = ev.data,
                               .crid = crid,
                               .crid_user = a->user_id,
                               .crid_fingerprint = fingerprint,
                               .answer = park_answer};
        int parked = 0;
        rc = store_park(app->store, sid, &pm, &op.seq, &parked);
        if (rc) {
            snprintf(emsg, n, "cannot store the message: %s", err_str(rc));
            goto out;
        }
        if (parked) {
            goto answer; /* no prompt, no replay, nothing reopened */
        }
    }
    rc = store_session_get(app->store, sid, &s);
    if (rc) {
        snprintf(emsg, n, "cannot open session %s: %s", sid, err_str(rc));
        goto out;
    }
    op.message_id = mid;
    op.prompt_id = pid;
    op.content = content;
    op.content_len = clen;
    op.context_json = context_json;
    op.crid = crid;
    op.crid_user = a->user_id;
    op.fingerprint = fingerprint;
    op.author = &who;
    op.event_data = ev.data;
    op.max_unfinished = cfg->max_unfinished_prompts;
    rc = sess_write(s, msg_tx, &op);
    if (rc == ERR_LIMIT) {
        snprintf(emsg, n, "this session already has %lld unfinished prompts",
                 (long long)cfg->max_unfinished_prompts);
        goto out;
    }
    if (op.mismatch) {
        if (mismatch) {
            *mismatch = 1;
        }
        snprintf(emsg, n,
                 "client_request_id '%s' was already used by you for a different request "
                 "(content, context, run, author or agent differ)",
                 crid);
        goto out;
    }
    if (rc) {
        snprintf(emsg, n, "cannot store the message: %s", err_str(rc));
        goto out;
    }
    if (op.replay) {
        if (replayed) {
            *replayed = 1;
        }
        *out = json_loads(op.replay, 0, NULL);
        rc = *out ? 0 : ERR_INTERNAL;
        goto out;
    }
    if (op.reopened) {
        int r2 = registry_session_set_state(app->reg, sid, "active");
        if (r2) {
            LOG_WARN("api: session %s: cannot mark it active: %s", sid, err_str(r2));
        }
    }
    if (pid) {
        api_prompt_queued(app, sid);
    }
answer:
    *out =
        json_pack("{s:s,s:s?,s:I}", "message_id", mid, "prompt_id", pid, "seq", (json_int_t)op.seq);
out:
    sess_put(s);
    free(context_json);
    free(mid);
    free(pid);
    free(op.replay);
    buf_free(&ev);
    return rc;
}

int api_message_create(struct app *app, const char *sid, const struct auth_info *who, json_t *body,
                       json_t **out, char *msg, size_t n)
{
    return message_create(app, sid, who, body, out, NULL, NULL, msg, n);
}

int api_messages_post(struct req *r)
{
    struct app *app = req_app(r);
    const char *sid = req_param(r, "id");
    json_t *body = NULL, *answer = NULL;
    char msg[256];
    int replayed = 0, mismatch = 0;
    int rc = api_session_access(r, sid, AUTH_WRITE, NULL);
    if (rc) {
        return rc;
    }
    rc = req_json_body(r, &body);
    if (rc) {
        return rc;
    }
    rc = message_create(app, sid, req_auth(r), body, &answer, &replayed, &mismatch, msg,
                        sizeof(msg));
    json_decref(body);
    if (mismatch) {
        return req_fail_status(r, 422, "idempotency_mismatch", msg);
    }
    if (rc) {
        return req_fail(r, rc, "%s", msg);
    }
    if (replayed) {
        req_add_header(r, "Idempotent-Replayed", "true");
    }
    return req_reply_json(r, 202, answer);
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
    rc = store_session_get(req_app(r)->store, sid, &s);
    if (rc) {
        return req_fail(r, rc, "cannot open session %s: %s", sid, err_str(rc));
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
    rc = store_session_get(req_app(r)->store, sid, &s);
    if (rc) {
        return req_fail(r, rc, "cannot open session %s: %s", sid, err_str(rc));
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
