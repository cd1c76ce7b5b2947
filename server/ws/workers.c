/*
 * workers.c - the hub's SQLite workers: job queues, readers (hello, replay pages) and writers
 * (presence rows, prompts, cancels). They never touch a wsi: results go back to the lws thread
 * through the inbox.
 */
#include "server/ws/ws_int.h"
/* ---- job queues ---- */

void ws_jq_init(struct jqueue *q)
{
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->head = q->tail = NULL;
    q->stop = 0;
}

void ws_jq_push(struct jqueue *q, struct job *j)
{
    pthread_mutex_lock(&q->lock);
    j->next = NULL;
    if (q->tail) {
        q->tail->next = j;
    } else {
        q->head = j;
    }
    q->tail = j;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* NULL when stopping and (drain == 0 or the queue is empty). */
static struct job *jq_pop(struct jqueue *q, int drain)
{
    pthread_mutex_lock(&q->lock);
    while (!q->head && !q->stop) {
        pthread_cond_wait(&q->cond, &q->lock);
    }
    struct job *j = NULL;
    if (q->head && (!q->stop || drain)) {
        j = q->head;
        q->head = j->next;
        if (!q->head) {
            q->tail = NULL;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return j;
}

void ws_job_free(struct job *j)
{
    if (j) {
        json_decref(j->body);
        buf_free(&j->out);
        free(j);
    }
}

struct job *ws_job_new(int kind, struct client *c, const char *sid)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->kind = kind;
    j->c = c;
    snprintf(j->sid, sizeof(j->sid), "%s", sid);
    buf_init(&j->out, 0);
    return j;
}

/* The writer queue of a session: per-session order (join before leave, prompts of a client in
 * order) with sessions spread over NWRITERS threads, so one slow session file does not hold
 * up the presence and prompts of every other session. */
struct jqueue *ws_writer_queue(struct hub *h, const char *sid)
{
    return &h->wq[ws_hash_str(sid) % NWRITERS];
}

static void post_result(struct hub *h, struct job *j)
{
    struct inmsg *m = xcalloc(1, sizeof(*m));
    m->kind = IN_RESULT;
    m->job = j;
    ws_inbox_push(h, m);
}

/* ---- workers ---- */

struct hello_read {
    json_t *participants;
    int64_t last;
};

/* One participant as the hello frame shows it (times in epoch ms). */
static int hello_participant(void *ctx, const struct participant_row *pr)
{
    json_t *p = json_pack("{s:s,s:s?,s:I}", "id", pr->user_id, "name", pr->name, "joined_at",
                          (json_int_t)(pr->joined_at < 0 ? 0 : pr->joined_at));
    if (pr->last_seen >= 0) {
        json_object_set_new(p, "last_seen", json_integer(pr->last_seen));
    }
    json_array_append_new(ctx, p);
    return 0;
}

static int hello_read_fn(struct sess_rd *rd, void *arg)
{
    struct hello_read *hr = arg;
    hr->participants = json_array();
    int rc = sess_rd_max_seq(rd, &hr->last);
    if (!rc) {
        rc = participants_list(rd, hello_participant, hr->participants);
    }
    return rc;
}

static void do_hello(struct hub *h, struct job *j)
{
    struct sess *s = NULL;
    json_t *row = NULL;
    struct hello_read hr = {NULL, 0};
    int rc = store_session_get(h->app->store, j->sid, &s);
    if (rc) {
        snprintf(j->msg, sizeof(j->msg), "no session %s", j->sid);
        goto out;
    }
    rc = registry_session_get(h->app->reg, j->sid, &row);
    if (rc) {
        snprintf(j->msg, sizeof(j->msg), "no session %s", j->sid);
        goto out;
    }
    /* Under the session lock: every event <= last has been handed to the hub already. */
    rc = sess_view(s, hello_read_fn, &hr);
    if (rc) {
        goto out;
    }
    json_t *connected = hub_presence(h, j->sid);
    size_t i;
    json_t *p;
    json_array_foreach(hr.participants, i, p)
    {
        const char *id = json_string_value(json_object_get(p, "id"));
        const char *status = NULL;
        size_t k;
        json_t *cp;
        json_array_foreach(connected, k, cp)
        {
            if (id && strcmp(id, json_string_value(json_object_get(cp, "id"))) == 0) {
                status = json_string_value(json_object_get(cp, "status"));
            }
        }
        json_object_set_new(p, "connected", json_boolean(status != NULL));
        json_object_set_new(p, "status", status ? json_string(status) : json_null());
    }
    json_object_set_new(row, "connected", connected);
    json_t *hello = json_pack("{s:s,s:o,s:I,s:o,s:{s:s,s:s,s:s}}", "type", "hello", "session", row,
                              "last_seq", (json_int_t)hr.last, "participants", hr.participants,
                              "you", "id", j->who.user_id, "name", j->who.name, "role", j->role);
    row = NULL;
    hr.participants = NULL;
    char *txt = jx_dump(hello);
    json_decref(hello);
    ws_pad_pre(&j->out);
    buf_puts(&j->out, txt);
    free(txt);
    j->last = hr.last;
out:
    json_decref(row);
    json_decref(hr.participants);
    sess_put(s);
    j->rc = rc;
}

static void do_page(struct hub *h, struct job *j)
{
    struct sess *s = NULL;
    int rc = store_session_get(h->app->store, j->sid, &s);
    if (rc) {
        snprintf(j->msg, sizeof(j->msg), "no session %s", j->sid);
        goto out;
    }
    ws_pad_pre(&j->out);
    buf_puts(&j->out, EVS_PREFIX);
    rc = sess_events(s, j->after, h->cfg.replay_page, &j->out, &j->count, &j->last);
    buf_puts(&j->out, "]}");
out:
    sess_put(s);
    j->rc = rc;
}

static void do_presence(struct hub *h, struct job *j)
{
    struct ops_answer ans = {0};
    int rc = ops_session_join(h->app, &j->who, j->sid, j->kind == J_JOIN, &ans);
    if (rc) {
        LOG_WARN("hub: presence %s in session %s: %s", j->kind == J_JOIN ? "join" : "leave", j->sid,
                 err_str(rc));
    }
}

static void do_client_write(struct hub *h, struct job *j)
{
    json_t *res = NULL;
    const char *ref = NULL;
    char msg[200] = "";
    jx_str(j->body, "id", &ref, msg, sizeof(msg));
    int rc = j->kind == J_PROMPT ? hub_api_prompt(h->app, j->sid, &j->who, j->role, j->body, &res,
                                                  j->msg, sizeof(j->msg))
                                 : hub_api_cancel(h->app, j->sid, &j->who, j->role, j->body, &res,
                                                  j->msg, sizeof(j->msg));
    j->rc = rc;
    if (!rc) {
        json_t *ack = json_pack("{s:s,s:s,s:o}", "type", "ack", "for",
                                j->kind == J_PROMPT ? "prompt" : "cancel", "result",
                                res ? res : json_object());
        if (ref) {
            json_object_set_new(ack, "id", json_string(ref));
        }
        char *txt = jx_dump(ack);
        buf_puts(&j->out, txt);
        free(txt);
        json_decref(ack);
    }
}

void *ws_reader_main(void *arg)
{
    struct hub *h = arg;
    pthread_setname_np(pthread_self(), "hub-reader");
    struct job *j;
    while ((j = jq_pop(&h->rq, 0))) {
        if (j->kind == J_HELLO) {
            do_hello(h, j);
        } else {
            do_page(h, j);
        }
        post_result(h, j);
    }
    return NULL;
}

void *ws_writer_main(void *arg)
{
    struct writer_arg *wa = arg;
    struct hub *h = wa->h;
    struct jqueue *q = &h->wq[wa->q];
    free(wa);
    pthread_setname_np(pthread_self(), "hub-writer");
    struct job *j;
    /* Drains on stop so the last participant.left rows are written. */
    while ((j = jq_pop(q, 1))) {
        if (j->kind == J_JOIN || j->kind == J_LEAVE) {
            do_presence(h, j);
            ws_job_free(j);
            continue;
        }
        if (atomic_load(&h->stopping)) {
            ws_job_free(j);
            continue;
        }
        do_client_write(h, j);
        post_result(h, j);
    }
    return NULL;
}

void ws_jq_stop(struct jqueue *q)
{
    pthread_mutex_lock(&q->lock);
    q->stop = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}
