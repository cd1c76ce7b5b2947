/*
 * ops.c - the transport-neutral operations of ops.h: creating a session, posting a message
 * (and its prompt), cancelling a prompt, joining or leaving a session. REST handlers
 * (server/api/), the WebSocket hub (server/ws/) and the Slack worker (server/slack/) call
 * these with an explicit actor, so every transport gets the same validation, transaction,
 * events and idempotency, and none reaches another through HTTP.
 *
 * A posted message is one group-commit operation (one SAVEPOINT in the session's next
 * transaction): idempotency lookup, unfinished-prompt limit, the `message` event, the
 * messages row, the prompts row and the requests row all commit together or not at all, and
 * the answer exists only after the commit. Everything that does not need the session lock
 * (ids, the event's JSON) is prepared before, so the critical section is a handful of
 * statements.
 *
 * Thread context: callers' threads (HTTP pool, hub writer, Slack worker); may block on a
 * session's group commit or the registry.
 */
#include "server/ops.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/runner.h"
#include "workspace/repos.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/extension.h"
#include "server/vault.h"
#include "server/ratelimit.h"
#include "storage/messages.h"
#include "storage/meta.h"
#include "storage/participants.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/requests.h"
#include "storage/spool.h"
#include "storage/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ops_answer_free(struct ops_answer *ans)
{
    if (ans) {
        json_decref(ans->json);
        ans->json = NULL;
    }
}

/* The wall clock in ms leads the hex part so ids sort by creation time: messages.id and
 * prompts.id are TEXT primary keys, and random ids would scatter every insert over the whole
 * index b-tree (one more random page per message in the WAL and the page cache); time-ordered
 * ids append to its rightmost leaf. 12 hex digits of ms + 8 random. */
char *ops_new_id(const char *prefix)
{
    char rnd[9];
    util_random_hex(rnd, 4);
    return xasprintf("%s%012llx%s", prefix, (unsigned long long)clock_now_ms(), rnd);
}

int ops_tx_append_json(struct sess_tx *tx, const char *type, const struct author *by, json_t *data,
                       int64_t *seq_out)
{
    char *js = jx_dump(data);
    json_decref(data);
    int rc = sess_tx_append(tx, type, by, js, seq_out);
    free(js);
    return rc;
}

int ops_session_access(struct app *app, const struct auth_info *actor, const char *sid, int need,
                       struct ops_answer *ans)
{
    int rc = auth_session(app->auth, sid, actor, need, NULL);
    switch (rc) {
    case 0:
        break;
    case ERR_NOT_FOUND:
        snprintf(ans->msg, sizeof(ans->msg), "no session %s", sid);
        break;
    case ERR_GONE:
        snprintf(ans->msg, sizeof(ans->msg), "session %s was purged", sid);
        break;
    case ERR_FORBIDDEN:
        snprintf(ans->msg, sizeof(ans->msg), "%s",
                 need == AUTH_OWNER ? "only the session's owner may do this"
                                    : "your role may only read this session");
        break;
    default:
        snprintf(ans->msg, sizeof(ans->msg), "%s", err_str(rc));
        break;
    }
    return rc;
}

/* ---- messages ---- */

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
    /* a DOM selection also becomes a dom_selection artifact (server/extension.h) */
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

/* A message request's fields, checked (message_parse) before anything is written. */
struct msg_req {
    const char *content;
    size_t clen;
    const char *crid; /* client_request_id or NULL */
    int run;
    char *context_json; /* owned; NULL if none */
    struct author who;  /* the token's user, or `author` when a bot or admin sets it */
    char fingerprint[65];
};

/* The body's fields in the order their errors are reported; nothing is written yet. */
static int message_parse(const struct config *cfg, const struct auth_info *a, json_t *body,
                         struct msg_req *rq, char *emsg, size_t n)
{
    json_t *context = NULL, *author_obj = NULL;
    int rc = jx_str(body, "content", &rq->content, emsg, n);
    if (!rc) {
        rc = jx_obj(body, "context", &context, emsg, n);
    }
    if (!rc) {
        rc = jx_str(body, "client_request_id", &rq->crid, emsg, n);
    }
    if (!rc) {
        rc = jx_bool(body, "run", &rq->run, emsg, n);
    }
    if (!rc) {
        rc = jx_obj(body, "author", &author_obj, emsg, n);
    }
    if (rc) {
        return rc;
    }
    if (!rq->content) {
        snprintf(emsg, n, "field 'content' is required");
        return ERR_INVALID;
    }
    rq->clen = json_string_length(json_object_get(body, "content"));
    if (rq->clen == 0) {
        snprintf(emsg, n, "field 'content' must not be empty");
        return ERR_INVALID;
    }
    if (utf8_chars(rq->content, rq->clen) > (size_t)cfg->max_content_chars) {
        snprintf(emsg, n, "content is longer than %lld characters",
                 (long long)cfg->max_content_chars);
        return ERR_TOO_LARGE;
    }
    if (rq->crid && (!*rq->crid || strlen(rq->crid) > 128)) {
        snprintf(emsg, n, "client_request_id must be 1 to 128 bytes");
        return ERR_INVALID;
    }
    if (author_obj) {
        if (!auth_may_impersonate(a)) {
            snprintf(emsg, n, "only bot and admin tokens may set 'author'");
            return ERR_FORBIDDEN;
        }
        rc = parse_author(author_obj, &rq->who, emsg, n);
        if (rc) {
            return rc;
        }
    }
    if (context) {
        if (ext_context_check(context, emsg, n)) { /* DOM selection shape */
            return ERR_INVALID;
        }
        rq->context_json = jx_dump(context);
    }
    if (rq->crid) {
        request_fingerprint(body, rq->run, rq->fingerprint);
    }
    return 0;
}

/* The event's data, built outside the session lock. */
static void message_event(struct buf *ev, const struct msg_req *rq, const char *mid,
                          const char *pid)
{
    buf_puts(ev, "{\"message_id\":");
    buf_json_str(ev, mid, strlen(mid));
    buf_puts(ev, ",\"prompt_id\":");
    if (pid) {
        buf_json_str(ev, pid, strlen(pid));
    } else {
        buf_puts(ev, "null");
    }
    buf_puts(ev, ",\"role\":\"user\",\"content\":");
    buf_json_str(ev, rq->content, rq->clen);
    if (rq->context_json) {
        buf_puts(ev, ",\"context\":");
        buf_puts(ev, rq->context_json);
    }
    buf_putc(ev, '}');
}

/* A comment to a hibernated session is parked in the spool instead of waking the session
 * file (store_park; it declines when the session is open or unknown): *parked says which. */
static int message_park(struct app *app, const char *sid, struct msg_op *op, int *parked,
                        char *emsg, size_t n)
{
    struct spool_msg pm = {.message_id = op->message_id,
                           .content = op->content,
                           .content_len = op->content_len,
                           .author = op->author,
                           .event_data = op->event_data,
                           .crid = op->crid,
                           .crid_user = op->crid_user,
                           .crid_fingerprint = op->fingerprint,
                           .answer = park_answer};
    int rc = store_park(app->store, sid, &pm, &op->seq, parked);
    if (rc) {
        snprintf(emsg, n, "cannot store the message: %s", err_str(rc));
    }
    return rc;
}

/* The message (and its prompt) in one transaction of the session file. The caller puts *ps,
 * after the answer is built, as before the split. */
static int message_write(struct app *app, const char *sid, struct msg_op *op, struct sess **ps,
                         struct ops_answer *ans)
{
    char *emsg = ans->msg;
    size_t n = sizeof(ans->msg);
    int rc = store_session_get(app->store, sid, ps);
    if (rc) {
        snprintf(emsg, n, "cannot open session %s: %s", sid, err_str(rc));
        return rc;
    }
    rc = sess_write(*ps, msg_tx, op);
    if (rc == ERR_LIMIT) {
        snprintf(emsg, n, "this session already has %lld unfinished prompts",
                 (long long)op->max_unfinished);
        return rc;
    }
    if (op->mismatch) {
        ans->mismatch = 1;
        snprintf(emsg, n,
                 "client_request_id '%s' was already used by you for a different request "
                 "(content, context, run, author or agent differ)",
                 op->crid);
        return rc;
    }
    if (rc) {
        snprintf(emsg, n, "cannot store the message: %s", err_str(rc));
    }
    return rc;
}

int ops_secrets_for(void *ctx, const char *sid, const char *repo, struct redact_set **out)
{
    struct app *app = ctx;
    json_t *info = NULL;
    *out = NULL;
    if (!vault_any(app->vault)) {
        return 0; /* the common case: no lookup at all */
    }
    if (!repo && sid && app->repos && repos_session_info(app->repos, sid, &info) == 0) {
        repo = json_string_value(json_object_get(info, "repo"));
    }
    int rc = vault_repo_set(app->vault, repo, out);
    json_decref(info);
    return rc;
}

/*
 * The message path, shared by POST …/messages, the WebSocket `prompt` frame and the Slack
 * worker, so all validate the same object and write the same transaction.
 */
/* A secret value pasted into a message is stored, broadcast and handed to the agent as its
 * marker, like the agent's own output (the agent reads the value from its environment).
 * Returns the scrubbed copy rq now points at (caller frees), or NULL if nothing changed. */
static char *scrub_content(struct app *app, const char *sid, struct msg_req *rq)
{
    struct redact_set *sec = NULL;
    char *clean = NULL;
    size_t off = 0, len = 0;
    const char *name = NULL;
    ops_secrets_for(app, sid, NULL, &sec);
    if (sec && rq->content && redact_find(sec, rq->content, rq->clen, &off, &len, &name)) {
        clean = redact_str(sec, rq->content, rq->clen, &rq->clen);
        rq->content = clean;
    }
    redact_set_unref(sec);
    return clean;
}

int ops_message_create(struct app *app, const struct auth_info *a, const char *sid, json_t *body,
                       struct ops_answer *ans)
{
    const struct config *cfg = app->cfg;
    struct msg_req rq = {.run = 1, .who = {a->user_id, a->name, a->email}};
    char *mid = NULL, *pid = NULL, *scrubbed = NULL;
    struct sess *s = NULL;
    struct buf ev;
    struct msg_op op;
    int rc;
    buf_init(&ev, 0);
    memset(&op, 0, sizeof(op));
    json_t **out = &ans->json;
    *out = NULL;
    ans->replayed = 0;
    ans->mismatch = 0;
    rc = message_parse(cfg, a, body, &rq, ans->msg, sizeof(ans->msg));
    if (rc) {
        goto out;
    }
    scrubbed = scrub_content(app, sid, &rq);
    mid = ops_new_id("m_");
    if (rq.run) {
        pid = ops_new_id("p_");
    }
    message_event(&ev, &rq, mid, pid);
    op.message_id = mid;
    op.prompt_id = pid;
    op.content = rq.content;
    op.content_len = rq.clen;
    op.context_json = rq.context_json;
    op.crid = rq.crid;
    op.crid_user = a->user_id;
    op.fingerprint = rq.fingerprint;
    op.author = &rq.who;
    op.event_data = ev.data;
    op.max_unfinished = cfg->max_unfinished_prompts;

    if (!pid && !rq.context_json) {
        int parked = 0;
        rc = message_park(app, sid, &op, &parked, ans->msg, sizeof(ans->msg));
        if (rc) {
            goto out;
        }
        if (parked) {
            goto answer; /* no prompt, no replay, nothing reopened */
        }
    }
    rc = message_write(app, sid, &op, &s, ans);
    if (rc || op.mismatch) {
        goto out;
    }
    if (op.replay) {
        ans->replayed = 1;
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
        runner_kick(app->runner, sid); /* committed: the runner may start it */
    }
answer:
    *out =
        json_pack("{s:s,s:s?,s:I}", "message_id", mid, "prompt_id", pid, "seq", (json_int_t)op.seq);
out:
    sess_put(s);
    free(rq.context_json);
    free(scrubbed);
    free(mid);
    free(pid);
    free(op.replay);
    buf_free(&ev);
    return rc;
}

/* ---- sessions ---- */

struct create_op {
    const struct author *creator;
    const char *data_json;
};

static int create_tx(struct sess_tx *tx, void *arg)
{
    struct create_op *op = arg;
    int rc = participants_add_new(tx, op->creator->id, op->creator->name, op->creator->email);
    if (rc) {
        return rc;
    }
    return sess_tx_append(tx, "session.created", op->creator, op->data_json, NULL);
}

/* Session creations per user and minute (max_sessions_per_minute): each one is a file, a
 * registry row and, with a repository, a workspace and a sandbox start. Admin tokens are
 * exempt (they can mint users at will: a per-user cap would not bind them). */
int ops_session_admit(struct app *app, const struct auth_info *a, struct ops_answer *ans)
{
    int retry = 0;
    if (strcmp(a->role, "viewer") == 0) {
        snprintf(ans->msg, sizeof(ans->msg), "a viewer token cannot create sessions");
        return ERR_FORBIDDEN;
    }
    if (auth_is_admin(a) || !app->session_rate ||
        rl_take(app->session_rate, a->user_id, clock_mono_ms(), &retry) == 0) {
        return 0;
    }
    ans->retry_after = retry;
    snprintf(ans->msg, sizeof(ans->msg),
             "%s created %lld sessions in the last minute "
             "(max_sessions_per_minute); retry in %d s",
             a->user_id, (long long)app->cfg->max_sessions_per_minute, retry);
    return ERR_LIMIT;
}

/* Check a user-supplied optional string: type (via jx_str) and a byte cap. */
static int opt_str(json_t *body, const char *key, size_t max, const char **out,
                   struct ops_answer *ans)
{
    int rc = jx_str(body, key, out, ans->msg, sizeof(ans->msg));
    if (rc) {
        return rc;
    }
    if (*out && strlen(*out) > max) {
        snprintf(ans->msg, sizeof(ans->msg), "field '%s' is longer than %zu bytes", key, max);
        return ERR_INVALID;
    }
    return 0;
}

int ops_session_create(struct app *app, const struct auth_info *a, json_t *body, int admitted,
                       struct ops_answer *ans)
{
    json_t *row = NULL, *ev = NULL;
    const char *title = NULL, *repo = NULL, *vis = "org", *agent = NULL;
    char *id = NULL, *data = NULL;
    struct sess *s = NULL;
    int rc = 0;
    ans->json = NULL;
    if (!admitted) {
        rc = ops_session_admit(app, a, ans);
        if (rc) {
            goto out;
        }
    }
    rc = opt_str(body, "title", 500, &title, ans);
    if (!rc) {
        rc = opt_str(body, "repo", 500, &repo, ans);
    }
    if (!rc) {
        rc = opt_str(body, "visibility", 16, &vis, ans);
    }
    if (!rc) {
        rc = opt_str(body, "agent", 200, &agent, ans);
    }
    if (rc) {
        goto out;
    }
    if (strcmp(vis, "org") != 0 && strcmp(vis, "private") != 0) {
        snprintf(ans->msg, sizeof(ans->msg), "field 'visibility' must be \"org\" or \"private\"");
        rc = ERR_INVALID;
        goto out;
    }
    id = util_new_id("s_");
    struct session_new n = {id, title, repo, vis, agent, a->user_id};
    rc = registry_session_create(app->reg, &n, &row);
    if (rc) {
        snprintf(ans->msg, sizeof(ans->msg), "cannot create the session: %s", err_str(rc));
        goto out;
    }
    rc = store_session_create(app->store, id);
    if (!rc) {
        rc = store_session_get(app->store, id, &s);
    }
    if (!rc) {
        struct author who = {a->user_id, a->name, a->email};
        ev = json_pack("{s:s?,s:s?,s:s,s:s?}", "title", title, "repo", repo, "visibility", vis,
                       "agent", agent);
        data = jx_dump(ev);
        struct create_op op = {&who, data};
        rc = sess_write(s, create_tx, &op);
    }
    if (rc) {
        LOG_ERROR("api: session %s: cannot create its file: %s", id, err_str(rc));
        registry_session_set_state(app->reg, id, "purged");
        auth_cache_invalidate(app->auth);
        snprintf(ans->msg, sizeof(ans->msg), "cannot create the session file");
        goto out;
    }
    json_object_set_new(row, "last_seq", json_integer(sess_last_seq(s)));
    ans->json = row;
    row = NULL;
    LOG_INFO("api: session %s created by %s", id, a->user_id);
    if (repo && *repo && repos_session_has_repo(app->repos, id)) {
        runner_prestart(app->runner, id); /* workspace + sandbox in the background now */
    }
out:
    sess_put(s);
    json_decref(row);
    json_decref(ev);
    free(data);
    free(id);
    return rc;
}

/* ---- prompts ---- */

int ops_prompt_cancel(struct app *app, const struct auth_info *who, const char *sid, json_t *body,
                      struct ops_answer *ans)
{
    const char *pid = NULL;
    char *msg = ans->msg;
    size_t n = sizeof(ans->msg);
    int rc = body ? jx_str(body, "prompt_id", &pid, msg, n) : 0;
    if (rc) {
        return rc;
    }
    if (pid && !util_valid_id(pid)) {
        snprintf(msg, n, "prompt_id is not a valid id");
        return ERR_INVALID;
    }
    if (!app->runner) {
        snprintf(msg, n, "the sandbox runner is not running");
        return ERR_UNAVAILABLE;
    }
    struct author a = {who ? who->user_id : NULL, who ? who->name : NULL, NULL};
    rc = runner_cancel(app->runner, sid, pid, &a);
    if (rc == ERR_NOT_FOUND) {
        snprintf(msg, n, pid ? "prompt %s is not queued or running" : "no prompt is running", pid);
        return rc;
    }
    if (rc) {
        snprintf(msg, n, "cannot cancel: %s", err_str(rc));
        return rc;
    }
    ans->json = json_pack("{s:b,s:s?}", "cancelled", 1, "prompt_id", pid);
    return 0;
}

/* ---- presence ---- */

struct presence_op {
    const struct auth_info *who;
    int join;
};

static int presence_tx(struct sess_tx *tx, void *arg)
{
    struct presence_op *po = arg;
    int rc = po->join ? participants_join(tx, po->who->user_id, po->who->name, po->who->email)
                      : participants_seen(tx, po->who->user_id);
    if (rc) {
        return rc;
    }
    struct buf d;
    buf_init(&d, 0);
    buf_puts(&d, "{\"user\":{\"id\":");
    buf_json_str(&d, po->who->user_id, strlen(po->who->user_id));
    buf_puts(&d, ",\"name\":");
    buf_json_str(&d, po->who->name, strlen(po->who->name));
    buf_puts(&d, "}}");
    struct author a = {po->who->user_id, po->who->name, po->who->email};
    rc = sess_tx_append(tx, po->join ? "participant.joined" : "participant.left", &a, d.data, NULL);
    buf_free(&d);
    return rc;
}

int ops_session_join(struct app *app, const struct auth_info *actor, const char *sid, int join,
                     struct ops_answer *ans)
{
    struct sess *s = NULL;
    int rc = store_session_get(app->store, sid, &s);
    if (!rc) {
        struct presence_op po = {actor, join};
        rc = sess_write(s, presence_tx, &po);
    }
    if (rc) {
        snprintf(ans->msg, sizeof(ans->msg), "cannot record the %s: %s", join ? "join" : "leave",
                 err_str(rc));
    }
    sess_put(s);
    return rc;
}
