/*
 * tickets.c - WebSocket tickets (hub_ticket_create/take, tk_lock) and revocation of tokens and
 * memberships: posted by HTTP threads through the inbox, applied to live clients and hand-offs on
 * the lws thread.
 */
#include "server/ws/ws_int.h"
static int revoke_hits(const struct revoked *rv, const char *sid, const struct auth_info *who)
{
    if (rv->token_id[0]) {
        return strcmp(rv->token_id, who->token_id) == 0;
    }
    return strcmp(rv->sid, sid) == 0 && strcmp(rv->user, who->user_id) == 0 &&
           strcmp(who->role, "admin") != 0;
}

/* Forget revocations older than REVOKE_MEMORY_MS, and the oldest beyond REVOKE_MAX (their time
 * becomes the floor: every hand-off authenticated before it is refused, which errs on the
 * side of closing). */
static void revoked_prune(struct hub *h)
{
    int64_t old = clock_mono_ns() - (int64_t)REVOKE_MEMORY_MS * 1000000;
    struct revoked **pp = &h->revoked;
    int n = 0;
    while (*pp) {
        struct revoked *rv = *pp;
        if (rv->at_ns < old || n >= REVOKE_MAX) {
            if (rv->at_ns >= old && rv->at_ns > h->revoked_floor_ns) {
                h->revoked_floor_ns = rv->at_ns;
            }
            *pp = rv->next;
            free(rv);
        } else {
            pp = &rv->next;
            n++;
        }
    }
}

void ws_apply_revoke(struct hub *h, struct revoked *rv)
{
    revoked_prune(h);
    rv->next = h->revoked;
    h->revoked = rv;
    int err = rv->token_id[0] ? ERR_AUTH : ERR_FORBIDDEN;
    const char *msg =
        rv->token_id[0] ? "the token was revoked" : "you were removed from this session";
    int kicked = 0;
    for (uint32_t b = 0; b < MAP_BUCKETS; b++) {
        for (struct hsess *hs = h->map[b]; hs; hs = hs->hnext) {
            if (!rv->token_id[0] && strcmp(hs->id, rv->sid) != 0) {
                continue;
            }
            for (struct client *c = hs->clients; c; c = c->next) {
                if (revoke_hits(rv, hs->id, &c->who) && c->state != C_CLOSING) {
                    ws_client_kick(c, err, msg);
                    kicked++;
                }
            }
        }
    }
    if (kicked) {
        LOG_INFO("hub: closed %d connection(s): %s", kicked,
                 rv->token_id[0] ? "token revoked" : "participant removed");
    }
}

/* A hand-off authenticated before a revocation that concerns it: refuse it (0 = fine). The
 * registry change happened before the revocation was posted, so one authenticated later has
 * seen it already. */
int ws_handoff_revoked(struct hub *h, const struct hub_handoff *ho)
{
    revoked_prune(h);
    if (h->revoked_floor_ns && ho->auth_ns <= h->revoked_floor_ns) {
        return ERR_AUTH;
    }
    /* The whole list: two revocations posted at once may reach it out of time order. */
    for (struct revoked *rv = h->revoked; rv; rv = rv->next) {
        if (rv->at_ns >= ho->auth_ns && revoke_hits(rv, ho->sid, &ho->who)) {
            return rv->token_id[0] ? ERR_AUTH : ERR_FORBIDDEN;
        }
    }
    return 0;
}

/* ---- tickets ---- */

int hub_ticket_create(struct hub *h, const char *sid, const struct auth_info *who, const char *role,
                      int64_t ttl_ms, char out[65])
{
    struct ticket *t = xcalloc(1, sizeof(*t));
    int n = 0;
    util_random_hex(out, 32);
    util_sha256_hex(out, 64, t->hash);
    snprintf(t->sid, sizeof(t->sid), "%s", sid);
    snprintf(t->role, sizeof(t->role), "%s", role ? role : "viewer");
    t->who = *who;
    int64_t now = clock_mono_ms();
    t->expires_ms = now + ttl_ms;
    pthread_mutex_lock(&h->tk_lock);
    /* Sweep expired ones while we are here. */
    struct ticket **pp = &h->tickets;
    while (*pp) {
        if ((*pp)->expires_ms <= now) {
            struct ticket *d = *pp;
            *pp = d->next;
            free(d);
        } else {
            pp = &(*pp)->next;
            n++;
        }
    }
    if (n >= MAX_TICKETS) {
        pthread_mutex_unlock(&h->tk_lock);
        free(t);
        out[0] = 0;
        return ERR_LIMIT;
    }
    t->next = h->tickets;
    h->tickets = t;
    pthread_mutex_unlock(&h->tk_lock);
    return 0;
}

int hub_ticket_take(struct hub *h, const char *ticket, const char *sid, struct auth_info *who,
                    char role[16])
{
    char hash[65];
    int rc = ERR_AUTH;
    util_sha256_hex(ticket, strlen(ticket), hash);
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&h->tk_lock);
    for (struct ticket **pp = &h->tickets; *pp; pp = &(*pp)->next) {
        struct ticket *t = *pp;
        if (util_ct_equal(t->hash, 64, hash, 64)) {
            *pp = t->next; /* one use, whatever the outcome */
            if (t->expires_ms > now && strcmp(t->sid, sid) == 0) {
                *who = t->who;
                snprintf(role, 16, "%s", t->role);
                rc = 0;
            }
            free(t);
            break;
        }
    }
    pthread_mutex_unlock(&h->tk_lock);
    return rc;
}

/* Void the unused tickets of token_id, or of user in sid (admin tokens' tickets are kept). */
static void tickets_void(struct hub *h, const struct revoked *rv)
{
    pthread_mutex_lock(&h->tk_lock);
    struct ticket **pp = &h->tickets;
    while (*pp) {
        struct ticket *t = *pp;
        if (revoke_hits(rv, t->sid, &t->who)) {
            *pp = t->next;
            free(t);
        } else {
            pp = &t->next;
        }
    }
    pthread_mutex_unlock(&h->tk_lock);
}

static void revoke_post(struct hub *h, struct revoked *rv)
{
    rv->at_ns = clock_mono_ns();
    tickets_void(h, rv);
    if (!h->ctx || atomic_load(&h->stopping)) {
        free(rv);
        return;
    }
    struct inmsg *m = xcalloc(1, sizeof(*m));
    m->kind = IN_REVOKE;
    m->rv = rv;
    ws_inbox_push(h, m);
}

void hub_revoke_token(struct hub *h, const char *token_id)
{
    if (!h || !token_id || !*token_id) {
        return;
    }
    struct revoked *rv = xcalloc(1, sizeof(*rv));
    snprintf(rv->token_id, sizeof(rv->token_id), "%s", token_id);
    revoke_post(h, rv);
}

void hub_revoke_member(struct hub *h, const char *sid, const char *user_id)
{
    if (!h || !sid || !user_id) {
        return;
    }
    struct revoked *rv = xcalloc(1, sizeof(*rv));
    snprintf(rv->sid, sizeof(rv->sid), "%s", sid);
    snprintf(rv->user, sizeof(rv->user), "%s", user_id);
    revoke_post(h, rv);
}
