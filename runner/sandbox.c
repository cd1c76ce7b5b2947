/*
 * sandbox.c - starting the sandboxes of sessions (runner_int.h): NSTARTERS long-lived starter
 * threads create them (a workspace fill from an image takes seconds, and bubblewrap's
 * --die-with-parent ties a sandbox to the thread that created it: never a thread that exits),
 * one start per session at a time, each holding a slot of slots.c while it runs; the warm
 * pools' sandboxes are created on the same threads.
 *
 * Thread context: starter threads; runneri_ensure_sandbox also on HTTP threads
 * (runner_acquire). r->lock is taken around every shared field and never held while a
 * sandbox is created or destroyed.
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
#include "sandbox/sbx_egress.h"
#include "sandbox/wsdisk.h"
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

/* Make the session's workspace if the repository layer did not (a session without a
 * repository): with the disk quota, a file system of its own (wsdisk.h) that the sandbox then
 * finds in place. A failure leaves the sandbox to make a plain directory. */
static void make_workspace(struct runner *r, const char *sid)
{
    struct wsdisk *d = sbx_backend_disk(r->be);
    if (!wsdisk_enforced(d)) {
        return;
    }
    char *ws = xasprintf("%s/workspaces/%s", store_data_dir(r->st), sid);
    if (wsdisk_make(d, ws) != 0) {
        LOG_WARN("runner: session %s: no disk for its workspace: it runs without the quota", sid);
    }
    free(ws);
}

/* Ensure the session has a live sandbox. Called by a starter thread or by runner_acquire
 * (HTTP threads) with r->lock NOT held; one start per session at a time (x->starting: a second
 * caller waits for the first). Emits sandbox.starting, then sandbox.ready {source, ms} or
 * sandbox.failed {error}, before the next start may begin (so a prompt kicked meanwhile cannot
 * report prompt.started before sandbox.ready). *ready_ms = start time or -1. */
int runneri_ensure_sandbox(struct runner *r, struct rs *x, struct sbx **out, int64_t *ready_ms)
{
    *ready_ms = -1;
    pthread_mutex_lock(&r->lock);
    while (x->starting) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    x->starting = 1;
    struct sbx *s = x->sbx;
    pthread_mutex_unlock(&r->lock);
    struct sbx *ns = NULL, *old = NULL, *vsbx = NULL;
    struct rs *victim = NULL;
    int rc = 0;
    if (s && sbx_alive(s)) {
        *out = s;
        goto out;
    }
    runneri_load_owner(r, x);
    pthread_mutex_lock(&r->lock);
    rc = runneri_slot_take(r, x, &victim, &vsbx);
    pthread_mutex_unlock(&r->lock);
    if (vsbx) {
        sbx_egress_close(r->cfg.egress, vsbx);
        sbx_destroy(vsbx);
        runneri_emit(r, victim->id, "sandbox.stopped",
                     runneri_json_obj_str("reason", "capacity", NULL, NULL));
    }
    if (rc) {
        goto out;
    }
    if (s) {
        runneri_emit(r, x->id, "sandbox.stopped",
                     runneri_json_obj_str("reason", "died", NULL, NULL));
    }
    runneri_emit(r, x->id, "sandbox.starting", xstrdup("{}"));
    int64_t t0 = clock_mono_us();
    repos_sandbox_start(r->cfg.repos, x->id); /* fill a repository workspace first */
    make_workspace(r, x->id);
    char *objs = repos_shared_objects(r->cfg.repos, x->id, NULL);
    struct sbx_spec spec = {
        .name = x->id, .shared_objects = objs, .on_end = runneri_sbx_ended, .on_end_arg = r};
    ns = repos_take_sandbox(r->cfg.repos, x->id); /* the warm pool's, already running */
    if (ns && !sbx_alive(ns)) {
        sbx_destroy(ns);
        ns = NULL;
    }
    rc = ns ? 0 : sbx_create(r->be, &spec, &ns);
    free(objs);
    if (rc) {
        char why[160];
        snprintf(why, sizeof why, "the sandbox could not start: %s", err_str(rc));
        runneri_emit(r, x->id, "sandbox.failed", runneri_json_obj_str("error", why, NULL, NULL));
        goto out;
    }
    *ready_ms = (clock_mono_us() - t0) / 1000;
    pthread_mutex_lock(&r->lock);
    old = x->sbx; /* s, or NULL if it was stopped meanwhile */
    x->sbx = ns;
    x->cap_ticket = 0; /* a wait for a slot is over */
    x->cap_parked = 0;
    runneri_slot_done(r, x, ns);
    if (old) {
        runneri_live_gone(r, old);
    }
    pthread_mutex_unlock(&r->lock);
    if (old) {
        sbx_destroy(old);
    }
    runneri_emit(r, x->id, "sandbox.ready", repos_ready_json(r->cfg.repos, x->id, *ready_ms));
    *out = ns;
out:
    pthread_mutex_lock(&r->lock);
    x->starting = 0;
    runneri_slot_done(r, x, NULL); /* a failed start gives its slot back */
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void *runneri_starter_main(void *arg)
{
    struct runner *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        struct starter *st = r->sq_head;
        if (!st) {
            if (r->stopping) {
                break;
            }
            pthread_cond_wait(&r->cond, &r->lock);
            continue;
        }
        r->sq_head = st->next;
        if (!r->sq_head) {
            r->sq_tail = NULL;
        }
        pthread_mutex_unlock(&r->lock);
        if (!st->x) { /* a sandbox for the warm pool (pool_factory waits for it) */
            int crc = sbx_create(r->be, st->spec, st->out);
            pthread_mutex_lock(&r->lock);
            st->rc = crc;
            st->done = 1;
            r->threads_out--;
            pthread_cond_broadcast(&r->cond);
            continue;
        }
        struct rs *x = st->x;
        struct sbx *sbx = NULL;
        int64_t ms = -1;
        int rc = runneri_ensure_sandbox(r, x, &sbx, &ms);
        pthread_mutex_lock(&r->lock);
        int ended = x->ended, purge = x->purge;
        pthread_mutex_unlock(&r->lock);
        if (rc == 0 && ms >= 0 && ended) {
            /* DELETEd while it started: JOB_ENDED found nothing to stop */
            runneri_stop_sandbox(r, x, purge ? "session purged" : "session ended");
            if (purge) {
                runneri_purge_files(r, x, x->id);
            }
        }
        if (rc == ERR_LIMIT && st->for_prompt) {
            runneri_park_start(r, x, 1);
            pthread_mutex_lock(&r->lock);
        } else if (rc == ERR_LIMIT) {
            /* A start ahead of any prompt is dropped; a prompt queued meanwhile found it
             * running and waits for this kick to start (and park) its own. */
            pthread_mutex_lock(&r->lock);
            runneri_push_job(r, JOB_KICK, x->id);
        } else {
            pthread_mutex_lock(&r->lock);
            if (rc && st->for_prompt) {
                free(x->start_err);
                x->start_err = xasprintf("the sandbox could not start: %s", err_str(rc));
            }
            runneri_push_job(r, JOB_KICK, x->id);
        }
        r->threads_out--;
        pthread_cond_broadcast(&r->cond);
        free(st);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Queue a start of x's sandbox for the starter threads unless one is starting or the start
 * is parked (wake_parked queues it). r->lock held. */
void runneri_queue_start_locked(struct runner *r, struct rs *x, int for_prompt)
{
    if (x->starting || x->cap_parked || !r->accepting || !r->nstarters) {
        if (!r->nstarters && for_prompt) {
            free(x->start_err);
            x->start_err = xstrdup("the sandbox could not start: no starter thread");
            runneri_push_job(r, JOB_KICK, x->id);
        }
        return; /* a running start kicks the session when it ends */
    }
    for (struct starter *q = r->sq_head; q; q = q->next) {
        if (q->x == x) {
            q->for_prompt |= for_prompt;
            return; /* already queued */
        }
    }
    struct starter *st = xcalloc(1, sizeof *st);
    st->x = x;
    st->for_prompt = for_prompt;
    if (r->sq_tail) {
        r->sq_tail->next = st;
    } else {
        r->sq_head = st;
    }
    r->sq_tail = st;
    r->threads_out++;
    pthread_cond_broadcast(&r->cond);
}

void runneri_start_in_background(struct runner *r, struct rs *x, int for_prompt)
{
    pthread_mutex_lock(&r->lock);
    runneri_queue_start_locked(r, x, for_prompt);
    pthread_mutex_unlock(&r->lock);
}

/* repos_runner.make_sandbox: create a sandbox for the warm pool on a starter thread
 * (they live until runner_stop: a sandbox dies with the thread that created it) and wait. */
int runneri_pool_factory(void *arg, const struct sbx_spec *spec, struct sbx **out)
{
    struct runner *r = arg;
    struct sbx_spec sp = *spec;
    sp.on_end = runneri_sbx_ended;
    sp.on_end_arg = r;
    struct starter st = {.spec = &sp, .out = out};
    int pool = 0;
    pthread_mutex_lock(&r->lock);
    if (!r->accepting || !r->nstarters) {
        pthread_mutex_unlock(&r->lock);
        return ERR_UNAVAILABLE;
    }
    /* Warm-pool sandboxes count against the server cap only, take a free slot only (they
     * never stop a session's) and at most a quarter of the cap, so that pools, which the
     * runner cannot stop, never keep the sessions' prompts waiting. ERR_UNAVAILABLE: the
     * workspace is kept warm without a sandbox (repos logs nothing for it). */
    if (runneri_slots_server(r, &pool) >= r->cfg.max_sandboxes ||
        pool >= r->cfg.max_sandboxes / 4) {
        pthread_mutex_unlock(&r->lock);
        return ERR_UNAVAILABLE;
    }
    r->reserving++;
    if (r->sq_tail) {
        r->sq_tail->next = &st;
    } else {
        r->sq_head = &st;
    }
    r->sq_tail = &st;
    r->threads_out++;
    pthread_cond_broadcast(&r->cond);
    while (!st.done) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    r->reserving--;
    if (!st.rc && sbx_alive(*out)) {
        runneri_live_add(r, *out, NULL, 0);
    } else {
        runneri_wake_parked(r);
    }
    pthread_mutex_unlock(&r->lock);
    return st.rc;
}

void runner_prestart(struct runner *r, const char *sid)
{
    if (!r || !util_valid_id(sid)) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    int skip = x->sbx != NULL || x->ended;
    pthread_mutex_unlock(&r->lock);
    if (!skip) {
        runneri_start_in_background(r, x, 0);
    }
}
