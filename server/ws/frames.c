/*
 * frames.c - what clients send: frame parsing (hub_frame_parse), prompt/cancel/typing/status
 * handling and presence bookkeeping. Runs on the lws thread, except hub_presence (any thread,
 * map_lock).
 */
#include "server/ws/ws_int.h"
/* Count a connection of who in hs; returns 1 if the user just became present. */
int ws_presence_add(struct hub *h, struct hsess *hs, const struct auth_info *who)
{
    int joined = 0;
    pthread_mutex_lock(&h->map_lock);
    struct puser *u = hs->users;
    while (u && strcmp(u->id, who->user_id) != 0) {
        u = u->next;
    }
    if (!u) {
        u = xcalloc(1, sizeof(*u));
        snprintf(u->id, sizeof(u->id), "%s", who->user_id);
        snprintf(u->name, sizeof(u->name), "%s", who->name);
        snprintf(u->status, sizeof(u->status), "active");
        u->next = hs->users;
        hs->users = u;
    }
    if (u->conns++ == 0) {
        joined = 1;
    }
    hs->nclients++;
    pthread_mutex_unlock(&h->map_lock);
    return joined;
}

/* Returns 1 if the user's last connection to hs just went away. */
int ws_presence_remove(struct hub *h, struct hsess *hs, const char *user_id)
{
    int left = 0;
    pthread_mutex_lock(&h->map_lock);
    struct puser **pp = &hs->users;
    while (*pp && strcmp((*pp)->id, user_id) != 0) {
        pp = &(*pp)->next;
    }
    if (*pp && --(*pp)->conns == 0) {
        struct puser *u = *pp;
        *pp = u->next;
        free(u);
        left = 1;
    }
    hs->nclients--;
    pthread_mutex_unlock(&h->map_lock);
    return left;
}

json_t *hub_presence(struct hub *h, const char *sid)
{
    json_t *arr = json_array();
    if (!h) {
        return arr;
    }
    pthread_mutex_lock(&h->map_lock);
    struct hsess *hs = ws_map_find(h, sid);
    for (struct puser *u = hs ? hs->users : NULL; u; u = u->next) {
        json_array_append_new(arr, json_pack("{s:s,s:s,s:i,s:s}", "id", u->id, "name", u->name,
                                             "connections", u->conns, "status", u->status));
    }
    pthread_mutex_unlock(&h->map_lock);
    return arr;
}

/* ---- lws thread: client messages ---- */

static void client_typing_status(struct client *c, const char *kind, const char *field, json_t *v)
{
    json_t *o = json_pack("{s:s,s:{s:s,s:s}}", "type", kind, "user", "id", c->who.user_id, "name",
                          c->who.name);
    json_object_set(o, field, v);
    char *s = jx_dump(o);
    ws_hs_broadcast(c->h, c->hs, s, strlen(s));
    free(s);
    json_decref(o);
}

/*
 * Client frames are parsed without touching any client or hub state (hub_frame_parse), then
 * acted upon on the lws thread (client_message). Typing/status floods are dropped before their
 * fields are judged, as they always were: hence the kind is known even when parsing fails.
 */
int hub_frame_parse(const char *data, size_t len, struct hub_frame *out, char *msg, size_t n)
{
    json_t *o = NULL;
    const char *type = NULL;
    int rc;
    memset(out, 0, sizeof *out);
    out->typing = 1;
    rc = jx_parse_object(data, len, &o, msg, n);
    if (rc) {
        return rc;
    }
    if (jx_str(o, "type", &type, msg, n) || !type) {
        if (!type) {
            snprintf(msg, n, "frame needs a string field 'type'");
        }
        rc = ERR_INVALID;
        goto out;
    }
    if (strcmp(type, "ping") == 0) {
        out->kind = HUB_FRAME_PING;
    } else if (strcmp(type, "typing") == 0) {
        out->kind = HUB_FRAME_TYPING;
        rc = jx_bool(o, "typing", &out->typing, msg, n);
    } else if (strcmp(type, "status") == 0) {
        out->kind = HUB_FRAME_STATUS;
        if (jx_str(o, "status", &out->status, msg, n) || !out->status ||
            (strcmp(out->status, "active") && strcmp(out->status, "idle") &&
             strcmp(out->status, "away"))) {
            snprintf(msg, n, "field 'status' must be active, idle or away");
            out->status = NULL;
            rc = ERR_INVALID;
        }
    } else if (strcmp(type, "prompt") == 0) {
        out->kind = HUB_FRAME_PROMPT;
    } else if (strcmp(type, "cancel") == 0) {
        out->kind = HUB_FRAME_CANCEL;
    } else {
        snprintf(msg, n, "unknown frame type '%.60s'", type);
        rc = ERR_INVALID;
    }
out:
    if (rc) {
        json_decref(o);
        o = NULL;
    }
    out->obj = o;
    return rc;
}

static void client_message(struct client *c, const char *data, size_t len)
{
    struct hub *h = c->h;
    char msg[200];
    struct hub_frame fr;
    if (c->state == C_REFUSED || c->state == C_CLOSING) {
        return;
    }
    int rc = hub_frame_parse(data, len, &fr, msg, sizeof(msg));
    if ((fr.kind == HUB_FRAME_TYPING || fr.kind == HUB_FRAME_STATUS) &&
        clock_mono_ms() - c->last_presence_ms < PRESENCE_MIN_MS) {
        /* Ephemeral and fanned out to everyone: a flood is dropped, not queued. */
        goto out;
    }
    if (fr.kind == HUB_FRAME_TYPING || fr.kind == HUB_FRAME_STATUS) {
        c->last_presence_ms = clock_mono_ms();
    }
    if (rc) {
        ws_client_error(c, ERR_INVALID, msg, 0);
        goto out;
    }
    if (fr.kind == HUB_FRAME_PING) {
        json_t *p = json_pack("{s:s}", "type", "pong");
        json_t *id = json_object_get(fr.obj, "id");
        if (id) {
            json_object_set(p, "id", id);
        }
        char *s = jx_dump(p);
        ws_pq_push(c, ws_pframe_new(s, strlen(s), PF_PLAIN));
        free(s);
        json_decref(p);
        ws_wake(c);
    } else if (fr.kind == HUB_FRAME_TYPING) {
        client_typing_status(c, "presence.typing", "typing",
                             fr.typing ? json_true() : json_false());
    } else if (fr.kind == HUB_FRAME_STATUS) {
        pthread_mutex_lock(&h->map_lock);
        for (struct puser *u = c->hs->users; u; u = u->next) {
            if (strcmp(u->id, c->who.user_id) == 0) {
                snprintf(u->status, sizeof(u->status), "%s", fr.status);
            }
        }
        pthread_mutex_unlock(&h->map_lock);
        json_t *sv = json_string(fr.status);
        client_typing_status(c, "presence.status", "status", sv);
        json_decref(sv);
    } else { /* prompt, cancel */
        if (!c->can_write) {
            ws_client_error(c, ERR_FORBIDDEN, "read-only access to this session", 0);
            goto out;
        }
        if (c->writes >= MAX_CLIENT_WRITES) {
            ws_client_error(c, ERR_LIMIT, "too many prompt/cancel frames in flight", 0);
            goto out;
        }
        c->writes++;
        struct job *j = ws_job_new(fr.kind == HUB_FRAME_PROMPT ? J_PROMPT : J_CANCEL, c, c->hs->id);
        j->who = c->who;
        snprintf(j->role, sizeof(j->role), "%s", c->role);
        j->body = fr.obj;
        fr.obj = NULL;
        c->jobs++;
        ws_jq_push(ws_writer_queue(h, j->sid), j);
    }
out:
    json_decref(fr.obj);
}

int ws_on_receive(struct client *c, struct lws *wsi, const char *in, size_t len)
{
    if (lws_frame_is_binary(wsi)) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
                         (unsigned char *)"binary frames are not accepted", 30);
        return -1;
    }
    int final = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
    if (final && c->rx.len == 0) {
        client_message(c, in, len);
        return 0;
    }
    if (buf_append(&c->rx, in, len)) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
                         (unsigned char *)"message too large", 17);
        return -1;
    }
    if (final) {
        client_message(c, c->rx.data, c->rx.len);
        buf_free(&c->rx);
        buf_init(&c->rx, c->h->cfg.max_frame);
    }
    return 0;
}
