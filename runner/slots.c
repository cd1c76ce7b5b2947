/*
 * slots.c - the sandbox caps (runner_int.h). Every sandbox the runner creates (a session's,
 * or a warm pool's through the pool factory) holds a slot in r->live until the pump reports
 * its end (runneri_sbx_ended) or the runner destroys it; a start takes its slot
 * (rs->reserving) before it creates anything. The server-wide cap counts all of them, the
 * per-user cap a session's sandbox against the session's creator. A full cap first stops the
 * least recently used idle sandbox in reach (it is only a cache of a workspace kept on disk);
 * else runner_acquire answers ERR_LIMIT and a prompt's start parks (rs->cap_ticket,
 * sandbox.waiting) until wake_parked finds room for it: called wherever a slot is freed or a
 * sandbox becomes idle, never by a timer.
 *
 * Thread context: any; r->lock held unless a function says otherwise.
 */
#include "runner/runner_int.h"

#include "agents/agents.h"
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/commitq.h"
#include "sandbox/sbx.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "workspace/repos.h"
#include "workspace/snap/snap.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- sandbox caps (r->lock held unless said otherwise) ---- */

static struct live *live_find(struct runner *r, const struct sbx *s)
{
    for (struct live *l = r->live; l; l = l->next) {
        if (l->s == s) {
            return l;
        }
    }
    return NULL;
}

void runneri_live_add(struct runner *r, struct sbx *s, const char *owner, int exempt)
{
    struct live *l = xcalloc(1, sizeof *l);
    l->s = s;
    l->owner = owner ? xstrdup(owner) : NULL;
    l->exempt = exempt;
    l->next = r->live;
    r->live = l;
}

/* The runner destroys s now: its slot is free at once (the pump reports the end later). */
void runneri_live_gone(struct runner *r, const struct sbx *s)
{
    struct live *l = live_find(r, s);
    if (l) {
        l->gone = 1;
    }
    runneri_wake_parked(r);
}

int runneri_slots_server(struct runner *r, int *pool)
{
    int n = r->reserving, p = 0;
    for (struct live *l = r->live; l; l = l->next) {
        n += !l->gone;
        p += !l->gone && !l->owner;
    }
    if (pool) {
        *pool = p;
    }
    return n;
}

static int slots_user(struct runner *r, const char *owner)
{
    int n = 0;
    for (struct live *l = r->live; l; l = l->next) {
        n += !l->gone && l->owner && !strcmp(l->owner, owner);
    }
    for (struct rs *x = r->sessions; x; x = x->next) {
        n += x->reserving && x->owner && !strcmp(x->owner, owner);
    }
    return n;
}

static int user_full(struct runner *r, const struct rs *x)
{
    return !x->exempt && slots_user(r, x->owner) >= r->cfg.max_sandboxes_per_user;
}

/* The least recently used idle session sandbox other than self's, of owner (NULL: anyone's). */
static struct rs *idle_victim(struct runner *r, const struct rs *self, const char *owner)
{
    struct rs *v = NULL;
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (x == self || !x->sbx || x->run || x->users || x->picking || x->starting ||
            x->reserving || (owner && (!x->owner || strcmp(x->owner, owner)))) {
            continue;
        }
        struct live *l = live_find(r, x->sbx);
        if (l && !l->gone && (!v || x->last_used_ms < v->last_used_ms)) {
            v = x;
        }
    }
    return v;
}

/* Could x take a slot now, directly or by stopping an idle sandbox? */
static int slot_in_reach(struct runner *r, const struct rs *x)
{
    int ufull = user_full(r, x);
    if (!ufull && runneri_slots_server(r, NULL) < r->cfg.max_sandboxes) {
        return 1;
    }
    return idle_victim(r, x, ufull ? x->owner : NULL) != NULL;
}

/* Take a slot for x's start. A full cap first takes the slot of the least recently used idle
 * sandbox in reach (the creator's own for the per-user cap, anyone's for the server cap): it
 * is detached here and handed back in *vsbx and *victim for the caller to destroy, r->lock not
 * held. ERR_LIMIT when every counted sandbox in reach is in use. */
int runneri_slot_take(struct runner *r, struct rs *x, struct rs **victim, struct sbx **vsbx)
{
    *victim = NULL;
    *vsbx = NULL;
    int ufull = user_full(r, x);
    if (ufull || runneri_slots_server(r, NULL) >= r->cfg.max_sandboxes) {
        struct rs *v = idle_victim(r, x, ufull ? x->owner : NULL);
        if (!v) {
            return ERR_LIMIT;
        }
        struct live *l = live_find(r, v->sbx);
        l->gone = 1; /* no wake_parked: this slot goes to x */
        *vsbx = v->sbx;
        *victim = v;
        v->sbx = NULL;
        r->n_evicted++;
    }
    x->reserving = 1;
    r->reserving++;
    return 0;
}

/* The start of x ended: its slot goes to ns (NULL: the start failed, the slot is free). A
 * warm-pool sandbox taken over counts against x's creator from now on. */
void runneri_slot_done(struct runner *r, struct rs *x, struct sbx *ns)
{
    if (!x->reserving) {
        return;
    }
    x->reserving = 0;
    r->reserving--;
    if (ns) {
        struct live *l = live_find(r, ns);
        if (!l) {
            if (sbx_alive(ns)) { /* dead: its end was reported already, nothing to count */
                runneri_live_add(r, ns, x->owner, x->exempt);
            }
        } else if (!l->owner) {
            l->owner = xstrdup(x->owner ? x->owner : "");
            l->exempt = x->exempt;
        }
    } else {
        runneri_wake_parked(r);
    }
}

/* The sbx_spec on_end hook of every sandbox the runner creates (pump thread): the sandbox
 * was destroyed or died, its slot is free. */
void runneri_sbx_ended(void *arg, struct sbx *s)
{
    struct runner *r = arg;
    pthread_mutex_lock(&r->lock);
    for (struct live **pp = &r->live; *pp; pp = &(*pp)->next) {
        if ((*pp)->s == s) {
            struct live *l = *pp;
            *pp = l->next;
            free(l->owner);
            free(l);
            break;
        }
    }
    runneri_wake_parked(r);
    pthread_cond_broadcast(&r->cond); /* runner_stop waits for r->live to empty */
    pthread_mutex_unlock(&r->lock);
}

/* Who x's sandbox counts against: the session's creator, and whether that user holds an admin
 * token (an admin can mint users at will, so a per-user cap on admins would be for show: they
 * get the server cap only). Read once per session, r->lock NOT held. */
void runneri_load_owner(struct runner *r, struct rs *x)
{
    pthread_mutex_lock(&r->lock);
    int have = x->owner != NULL;
    pthread_mutex_unlock(&r->lock);
    if (have) {
        return;
    }
    struct registry *reg = store_registry(r->st);
    json_t *row = NULL, *toks = NULL;
    char *owner = NULL;
    int exempt = 0;
    if (registry_session_get(reg, x->id, &row) == 0) {
        const char *cb = json_string_value(json_object_get(row, "created_by"));
        owner = xstrdup(cb ? cb : "");
    }
    if (owner && *owner && registry_token_list(reg, owner, &toks) == 0) {
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(toks, "tokens"), i, t)
        {
            const char *role = json_string_value(json_object_get(t, "role"));
            exempt |= role && !strcmp(role, "admin");
        }
    }
    json_decref(row);
    json_decref(toks);
    pthread_mutex_lock(&r->lock);
    if (!x->owner) {
        x->owner = owner ? owner : xstrdup(""); /* "" (no registry row): counted as one user */
        x->exempt = exempt;
        owner = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    free(owner);
}

/* A slot was freed or a sandbox became idle: the parked prompt starts that can now take a
 * slot go back to the starters, oldest first (a start that loses the race parks again with
 * its ticket, silently). */
void runneri_wake_parked(struct runner *r)
{
    struct rs *best = NULL;
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (x->cap_parked && (!best || x->cap_ticket < best->cap_ticket) && slot_in_reach(r, x)) {
            best = x;
        }
    }
    if (best) {
        /* One per call: its start has not taken the slot yet, so waking more would only make
         * them race for it; every further freed slot or idle sandbox calls again. */
        best->cap_parked = 0;
        runneri_queue_start_locked(r, best, 1);
    }
}

/* A background start found no slot. A prompt's start parks until wake_parked finds room
 * (the first time with a sandbox.waiting event); a start ahead of any prompt (a session
 * created with a repository) is dropped: the first prompt starts the sandbox, waiting then.
 * r->lock NOT held. */
void runneri_park_start(struct runner *r, struct rs *x, int for_prompt)
{
    pthread_mutex_lock(&r->lock);
    int park = for_prompt && !x->ended && r->accepting;
    int first = park && !x->cap_ticket;
    if (first) {
        x->cap_ticket = ++r->next_ticket;
        r->n_waits++;
    }
    int user = x->owner && user_full(r, x);
    int limit = user ? r->cfg.max_sandboxes_per_user : r->cfg.max_sandboxes;
    pthread_mutex_unlock(&r->lock);
    if (first) { /* before it can be woken: sandbox.waiting precedes sandbox.starting */
        json_t *d = json_pack("{s:s,s:s,s:i}", "reason", "capacity", "scope",
                              user ? "user" : "server", "limit", limit);
        runneri_emit(r, x->id, "sandbox.waiting", jx_dump(d));
        json_decref(d);
        LOG_INFO("runner: session %s waits for a sandbox slot (%s cap %d)", x->id,
                 user ? "per-user" : "server", limit);
    }
    if (!park) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    if (x->cap_ticket && !x->ended) {
        x->cap_parked = 1;
        runneri_wake_parked(r); /* a slot may have come free while this start tried */
    }
    pthread_mutex_unlock(&r->lock);
}
