/*
 * runner.c - prompt queues, agent runs and session sandboxes (runner.h): the session table,
 * the job queue and the control thread, and the public API. The phases of a prompt live in
 * files of their own (runner_int.h lists them).
 *
 * Thread context:
 *   - the control thread (ctl_main) runs jobs: start the next prompt of a session (start.c),
 *     stop sandboxes of ended or idle sessions, the start-up recovery (recover.c);
 *   - starter threads create sandboxes (sandbox.c), each holding a slot (slots.c);
 *   - the output pump thread calls the run callbacks (output.c): agent lines are parsed into
 *     events and handed to commitq (never SQLite here);
 *   - commitq workers commit them and finish the prompt (finish.c), which frees the session
 *     for its next prompt (a KICK job).
 * r->lock guards the session table (struct rs), each rs and the job queue. A struct run is
 * shared by the three (atomic refcount); its parser state belongs to the pump thread.
 *
 * Ordering: all events of a prompt go through the session's commitq FIFO, and the final
 * prompt.completed/failed/cancelled job is submitted from on_exit after the last output, so
 * it is committed after every output event of the prompt.
 */
#include "runner/runner_int.h"

#include "agents/agents.h"
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/commitq.h"
#include "sandbox/sbx.h"
#include "sandbox/sbx_egress.h"
#include "sandbox/wsdisk.h"
#include "storage/prompts.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "workspace/repos.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---- */

struct rs *runneri_rs_get(struct runner *r, const char *sid)
{
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (!strcmp(x->id, sid)) {
            return x;
        }
    }
    struct rs *x = xcalloc(1, sizeof *x);
    snprintf(x->id, sizeof x->id, "%s", sid);
    x->last_used_ms = clock_mono_ms();
    x->next = r->sessions;
    r->sessions = x;
    return x;
}

void runneri_push_job(struct runner *r, enum job_kind kind, const char *sid)
{
    struct rjob *j = xcalloc(1, sizeof *j);
    j->kind = kind;
    if (sid) {
        snprintf(j->sid, sizeof j->sid, "%s", sid);
    }
    if (r->jtail) {
        r->jtail->next = j;
    } else {
        r->jhead = j;
    }
    r->jtail = j;
    pthread_cond_broadcast(&r->cond);
}

void runner_kick(struct runner *r, const char *sid)
{
    if (!r || !util_valid_id(sid)) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    runneri_rs_get(r, sid)->ended = 0; /* a prompt on an ended session reopens it */
    runneri_push_job(r, JOB_KICK, sid);
    pthread_mutex_unlock(&r->lock);
}

char *runneri_json_obj_str(const char *k1, const char *v1, const char *k2, const char *v2)
{
    json_t *o = json_object();
    if (k1 && v1) {
        json_object_set_new(o, k1, json_string(v1));
    }
    if (k2 && v2) {
        json_object_set_new(o, k2, json_string(v2));
    }
    char *s = jx_dump(o);
    json_decref(o);
    return s;
}

/* Cancel a prompt that never started (queued -> cancelled) with its event. */
struct cancel_op {
    const char *pid;
    const char *reason; /* prompts.reason */
    char *data;         /* prompt.cancelled */
};

static int cancel_queued_tx(struct sess_tx *tx, void *arg)
{
    struct cancel_op *o = arg;
    int rc = prompts_cancel(tx, o->pid, o->reason); /* ERR_NOT_FOUND: no longer queued */
    if (rc) {
        return rc;
    }
    return sess_tx_append(tx, "prompt.cancelled", NULL, o->data, NULL);
}

int runneri_write_op(struct runner *r, const char *sid, sess_tx_fn fn, void *arg)
{
    struct sess *s = NULL;
    int rc = store_session_get(r->st, sid, &s);
    if (rc) {
        return rc;
    }
    rc = sess_write(s, fn, arg);
    sess_put(s);
    return rc;
}

int runneri_emit(struct runner *r, const char *sid, const char *type, char *data)
{
    struct sess *s = NULL;
    int rc = store_session_get(r->st, sid, &s);
    if (!rc) {
        rc = sess_append(s, type, NULL, data, NULL);
        sess_put(s);
    }
    free(data);
    return rc;
}

/* ---- cancel / end ---- */

int runner_cancel(struct runner *r, const char *sid, const char *prompt_id,
                  const struct author *who)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    struct run *run = x->run;
    if (run && (!prompt_id || !strcmp(prompt_id, run->pid))) {
        if (!run->cancel_reason) {
            run->cancel_reason = "cancelled";
        }
        struct sbx_exec *ex = run->ex;
        int grace = r->cfg.cancel_grace_ms;
        /* sbx_exec_kill takes the sandbox's lock only; the exec stays valid while run is
         * referenced by rs->run (we hold r->lock). */
        if (ex) {
            sbx_exec_kill(ex, SIGTERM, grace);
        }
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    pthread_mutex_unlock(&r->lock);
    if (!prompt_id) {
        return ERR_NOT_FOUND;
    }
    json_t *d = json_pack("{s:s,s:s}", "prompt_id", prompt_id, "reason", "cancelled");
    if (who && who->id) {
        json_object_set_new(d, "by", json_pack("{s:s,s:s?}", "id", who->id, "name", who->name));
    }
    struct cancel_op o = {prompt_id, "cancelled", jx_dump(d)};
    json_decref(d);
    int rc = runneri_write_op(r, sid, cancel_queued_tx, &o);
    free(o.data);
    return rc;
}

static int append_id(void *ctx, const char *id)
{
    json_array_append_new(ctx, json_string(id));
    return 0;
}

static int list_queued(struct sess_rd *rd, void *arg)
{
    return prompts_each(rd, PROMPT_QUEUED, append_id, arg);
}

void runner_session_ended(struct runner *r, const char *sid, int purge)
{
    if (!r || !util_valid_id(sid)) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    x->ended = 1;
    x->purge = x->purge || purge;
    x->cap_parked = 0; /* nothing to start any more */
    x->cap_ticket = 0;
    struct run *run = x->run;
    if (run) {
        run->cancel_reason = "session ended";
        if (run->ex) {
            sbx_exec_kill(run->ex, SIGTERM, r->cfg.cancel_grace_ms);
        }
    } else {
        runneri_push_job(r, JOB_ENDED, sid);
    }
    pthread_mutex_unlock(&r->lock);
    /* Queued prompts are cancelled now. */
    struct sess *s = NULL;
    if (store_session_get(r->st, sid, &s)) {
        return;
    }
    json_t *ids = json_array();
    sess_view(s, list_queued, ids);
    sess_put(s);
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *pid = json_string_value(v);
        char *data = runneri_json_obj_str("prompt_id", pid, "reason", "session ended");
        struct cancel_op o = {pid, "session ended", data};
        runneri_write_op(r, sid, cancel_queued_tx, &o);
        free(data);
    }
    json_decref(ids);
}

/* ---- sandboxes for exec/files ---- */

int runner_acquire(struct runner *r, const char *sid, struct sbx **out, int64_t *created_ms)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    x->users++;
    x->ended = 0;
    x->last_used_ms = clock_mono_ms();
    pthread_mutex_unlock(&r->lock);
    int64_t ms = -1;
    int rc = runneri_ensure_sandbox(r, x, out, &ms); /* emits sandbox.ready / sandbox.failed */
    if (rc || ms >= 0) {
        pthread_mutex_lock(&r->lock);
        r->n_refused += rc == ERR_LIMIT;
        runneri_push_job(r, JOB_KICK, sid); /* a prompt may have waited for this start */
        pthread_mutex_unlock(&r->lock);
    }
    if (rc) {
        runner_release(r, sid);
        return rc;
    }
    if (created_ms) {
        *created_ms = ms;
    }
    return 0;
}

void runner_release(struct runner *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    if (x->users > 0) {
        x->users--;
    }
    x->last_used_ms = clock_mono_ms();
    if (!x->users) {
        runneri_wake_parked(r);
    }
    pthread_mutex_unlock(&r->lock);
}

int runner_exec_begin(struct runner *r, const char *sid)
{
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    if (x->execs >= r->cfg.max_execs_per_session) {
        r->n_exec_refused++;
        rc = ERR_LIMIT;
    } else {
        x->execs++;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void runner_exec_end(struct runner *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    if (x->execs > 0) {
        x->execs--;
    }
    pthread_mutex_unlock(&r->lock);
}

struct commitq *runner_commitq(struct runner *r)
{
    return r->cq;
}

/* Stop the sandbox of x if nobody uses it. Control thread. */
void runneri_stop_sandbox(struct runner *r, struct rs *x, const char *why)
{
    pthread_mutex_lock(&r->lock);
    struct sbx *s = NULL;
    if (!x->run && !x->users && x->sbx) {
        s = x->sbx;
        x->sbx = NULL;
        runneri_live_gone(r, s);
    }
    pthread_mutex_unlock(&r->lock);
    if (s) {
        sbx_egress_close(r->cfg.egress, s); /* its commands' listener, if they had one */
        sbx_destroy(s);
        runneri_emit(r, x->id, "sandbox.stopped", runneri_json_obj_str("reason", why, NULL, NULL));
    }
}

/* Delete the workspace and private dir of a purged session (local backends), after
 * runneri_stop_sandbox(). When the sandbox is really gone its inodes go to the snapshot spares
 * (repos_discard_tree: deleting 10k files makes ext4 without a journal slow at creating files
 * for minutes, which is what image starts and restores do); a sandbox still in use
 * (stop_sandbox skips it) may hold files there, so its tree is only deleted. */
void runneri_purge_files(struct runner *r, struct rs *x, const char *sid)
{
    const char *dd = store_data_dir(r->st);
    const char *sub[] = {"workspaces", "sandboxes"};
    pthread_mutex_lock(&r->lock);
    int gone = x->sbx == NULL;
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < 2; i++) {
        char *p = xasprintf("%s/%s/%s", dd, sub[i], sid);
        if (i == 0 && wsdisk_remove(sbx_backend_disk(r->be), p) == 0) {
            free(p); /* a disk of its own (wsdisk.h): unmounted and its image deleted */
            continue;
        }
        if ((gone ? repos_discard_tree(r->cfg.repos, p) : util_rm_rf(p)) != 0) {
            LOG_WARN("runner: session %s: cannot remove %s", sid, p);
        }
        free(p);
    }
}

/* ---- the control thread ---- */

static void idle_check(struct runner *r)
{
    int64_t now = clock_mono_ms();
    for (;;) {
        struct rs *victim = NULL;
        pthread_mutex_lock(&r->lock);
        for (struct rs *x = r->sessions; x; x = x->next) {
            if (x->sbx && !x->run && !x->users &&
                now - x->last_used_ms > (int64_t)r->cfg.idle_stop_s * 1000) {
                victim = x;
                break;
            }
        }
        pthread_mutex_unlock(&r->lock);
        if (!victim) {
            return;
        }
        runneri_stop_sandbox(r, victim, "idle");
    }
}

static void *ctl_main(void *arg)
{
    struct runner *r = arg;
    int64_t next_idle = clock_mono_ms() + 1000;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->jhead && !r->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&r->cond, &r->lock, &ts);
            if (clock_mono_ms() >= next_idle) {
                break;
            }
        }
        if (r->stopping) {
            break;
        }
        struct rjob *j = r->jhead;
        if (j) {
            r->jhead = j->next;
            if (!r->jhead) {
                r->jtail = NULL;
            }
        }
        pthread_mutex_unlock(&r->lock);
        if (j) {
            if (j->kind == JOB_KICK) {
                runneri_start_next(r, j->sid);
            } else if (j->kind == JOB_RECOVER) {
                runneri_recover(r);
            } else if (j->kind == JOB_ENDED) {
                pthread_mutex_lock(&r->lock);
                struct rs *x = runneri_rs_get(r, j->sid);
                int purge = x->purge && x->ended && !x->run;
                pthread_mutex_unlock(&r->lock);
                runneri_stop_sandbox(r, x, purge ? "session purged" : "session ended");
                if (purge) {
                    runneri_purge_files(r, x, j->sid);
                }
                repos_session_end(r->cfg.repos, j->sid); /* its last snapshot, in the background */
            }
            free(j);
        }
        if (clock_mono_ms() >= next_idle) {
            idle_check(r);
            next_idle = clock_mono_ms() + 1000;
            /* prompts waiting for a workspace sync: check the bound */
            pthread_mutex_lock(&r->lock);
            for (struct rs *x = r->sessions; x; x = x->next) {
                if (x->sync_wait_since) {
                    runneri_push_job(r, JOB_KICK, x->id);
                }
            }
            pthread_mutex_unlock(&r->lock);
        }
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* repos_runner.synced: a workspace sync ended, a prompt may wait for it. Unlike
 * runner_kick this does not reopen an ended session. */
static void synced_cb(void *arg, const char *sid)
{
    struct runner *r = arg;
    pthread_mutex_lock(&r->lock);
    runneri_push_job(r, JOB_KICK, sid);
    pthread_mutex_unlock(&r->lock);
}

int runner_start(struct store *st, struct sbx_backend *be, struct outpump *pump,
                 const struct runner_config *cfg, struct runner **out)
{
    struct runner *r = xcalloc(1, sizeof *r);
    r->st = st;
    r->be = be;
    r->pump = pump;
    r->cfg = *cfg;
    if (!r->cfg.agent || !*r->cfg.agent) {
        r->cfg.agent = "shell";
    }
    if (!r->cfg.prompt_timeout_s) {
        r->cfg.prompt_timeout_s = 5400;
    }
    if (!r->cfg.cancel_grace_ms) {
        r->cfg.cancel_grace_ms = 5000;
    }
    if (!r->cfg.shutdown_grace_s) {
        r->cfg.shutdown_grace_s = 10;
    }
    if (!r->cfg.prompt_output_cap) {
        r->cfg.prompt_output_cap = (int64_t)16 << 20;
    }
    if (!r->cfg.session_output_cap) {
        r->cfg.session_output_cap = (int64_t)256 << 20;
    }
    if (!r->cfg.max_sandboxes) {
        r->cfg.max_sandboxes = 32;
    }
    if (!r->cfg.max_sandboxes_per_user) {
        r->cfg.max_sandboxes_per_user = 8;
    }
    if (!r->cfg.max_execs_per_session) {
        r->cfg.max_execs_per_session = 8;
    }
    if (!r->cfg.idle_stop_s) {
        r->cfg.idle_stop_s = 600;
    }
    r->accepting = 1;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    int rc = commitq_start(st, 2, &r->cq);
    if (rc) {
        free(r);
        return rc;
    }
    /* Starters before the control thread: recovery (the control thread's first job) kicks
     * every session with queued prompts, and a kick that found no starter thread yet failed
     * to start the sandbox, so a queue acknowledged before a crash was not resumed (seen
     * under load: "recovery ... resumed 1 queues" logged before "runner: started", then
     * nothing ran). nstarters is still written under r->lock: starters read it (TSan). */
    for (int i = 0; i < NSTARTERS; i++) {
        if (pthread_create(&r->starters[i], NULL, runneri_starter_main, r) != 0) {
            break;
        }
        pthread_mutex_lock(&r->lock);
        r->nstarters++;
        pthread_mutex_unlock(&r->lock);
    }
    if (!cfg->no_recover) {
        pthread_mutex_lock(&r->lock); /* the starters already share r->cond */
        runneri_push_job(r, JOB_RECOVER, NULL);
        pthread_mutex_unlock(&r->lock);
    }
    if (pthread_create(&r->ctl, NULL, ctl_main, r) != 0) {
        pthread_mutex_lock(&r->lock);
        r->stopping = 1;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
        for (int i = 0; i < r->nstarters; i++) {
            pthread_join(r->starters[i], NULL);
        }
        commitq_stop(r->cq);
        free(r);
        return ERR_IO;
    }
    struct repos_runner ops = {.make_sandbox = runneri_pool_factory, .synced = synced_cb, .ctx = r};
    repos_set_runner(r->cfg.repos, &ops);
    LOG_INFO("runner: started (agent %s, sandbox %s, prompt timeout %d s)", r->cfg.agent,
             sbx_backend_name(be), r->cfg.prompt_timeout_s);
    *out = r;
    return 0;
}

static void wait_idle(struct runner *r, int64_t ms)
{
    int64_t end = clock_mono_ms() + ms;
    pthread_mutex_lock(&r->lock);
    while (r->running > 0 && clock_mono_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cond, &r->lock, &ts);
    }
    pthread_mutex_unlock(&r->lock);
}

/* Wait up to ms for the pump to report the end of every sandbox the runner created (the
 * warm pools' were destroyed by repos_close before). 1 when none is left. */
static int wait_ends(struct runner *r, int64_t ms)
{
    int64_t end = clock_mono_ms() + ms;
    pthread_mutex_lock(&r->lock);
    while (r->live && clock_mono_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&r->cond, &r->lock, &ts);
    }
    int none = r->live == NULL;
    pthread_mutex_unlock(&r->lock);
    return none;
}

void runner_stop(struct runner *r)
{
    if (!r) {
        return;
    }
    repos_set_runner(r->cfg.repos, NULL);
    pthread_mutex_lock(&r->lock);
    r->accepting = 0;
    int running = r->running;
    pthread_mutex_unlock(&r->lock);
    if (running) {
        LOG_INFO("runner: waiting up to %d s for %d running prompt(s)", r->cfg.shutdown_grace_s,
                 running);
        wait_idle(r, (int64_t)r->cfg.shutdown_grace_s * 1000);
    }
    pthread_mutex_lock(&r->lock);
    for (struct rs *x = r->sessions; x; x = x->next) {
        if (x->run && x->run->ex) {
            x->run->cancel_reason = "shutdown";
            sbx_exec_kill(x->run->ex, SIGTERM, 2000);
        }
    }
    pthread_mutex_unlock(&r->lock);
    wait_idle(r, 5000);
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->ctl, NULL);
    /* Background starts and prompt ends hold r: wait for them (a start in progress would
     * otherwise leave a sandbox nobody stops). */
    pthread_mutex_lock(&r->lock);
    while (r->threads_out > 0) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < r->nstarters; i++) {
        pthread_join(r->starters[i], NULL); /* r->stopping and no job left: they exit */
    }
    /* Stop every sandbox; a run still going is reported lost and finishes. */
    for (struct rs *x = r->sessions; x; x = x->next) {
        pthread_mutex_lock(&r->lock);
        struct sbx *s = x->sbx;
        x->sbx = NULL;
        if (s) {
            runneri_live_gone(r, s);
        }
        pthread_mutex_unlock(&r->lock);
        sbx_destroy(s);
    }
    wait_idle(r, 3000);
    commitq_stop(r->cq); /* commit what the runs left */
    if (!wait_ends(r, 10000)) {
        /* The pump still owes a sandbox's end report, which points at r: keep r (a leak at
         * exit) rather than let that report write into freed memory. */
        LOG_ERROR("runner: sandboxes still running at stop; the runner is not freed");
        return;
    }
    struct rs *x = r->sessions;
    while (x) {
        struct rs *n = x->next;
        free(x->start_err);
        free(x->owner);
        free(x);
        x = n;
    }
    struct rjob *j = r->jhead;
    while (j) {
        struct rjob *n = j->next;
        free(j);
        j = n;
    }
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}

void runner_get_stats(struct runner *r, struct runner_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&r->lock);
    for (struct rs *x = r->sessions; x; x = x->next) {
        out->sandboxes += x->sbx != NULL;
    }
    out->running = r->running;
    out->started = r->n_started;
    out->completed = r->n_completed;
    out->failed = r->n_failed;
    out->cancelled = r->n_cancelled;
    out->slots_used = runneri_slots_server(r, &out->pool_sandboxes);
    for (struct rs *x = r->sessions; x; x = x->next) {
        out->waiting += x->cap_ticket != 0;
    }
    out->sandbox_refused = r->n_refused;
    out->sandbox_waits = r->n_waits;
    out->sandbox_evicted = r->n_evicted;
    out->exec_refused = r->n_exec_refused;
    out->output_truncated = r->n_truncated;
    pthread_mutex_unlock(&r->lock);
}

struct repos *runner_repos(struct runner *r)
{
    return r->cfg.repos;
}

void runner_secrets(struct runner *r, const char *sid, struct redact_set **out)
{
    *out = NULL;
    if (r->cfg.secrets && r->cfg.secrets(r->cfg.secrets_ctx, sid, NULL, out) != 0) {
        LOG_WARN("runner: session %s: cannot read its secrets", sid);
        *out = NULL;
    }
}

void runner_env_add_secrets(char ***env, size_t *n, const struct redact_set *set)
{
    size_t k = redact_set_count(set);
    if (!k) {
        return;
    }
    *env = xrealloc(*env, (*n + k + 1) * sizeof(char *));
    for (size_t i = 0; i < k; i++) {
        size_t vn = 0;
        const char *v = redact_set_value(set, i, &vn);
        (*env)[(*n)++] = xasprintf("%s=%s", redact_set_name(set, i), v);
    }
    (*env)[*n] = NULL;
}

void runner_env_free(char **env)
{
    for (size_t i = 0; env && env[i]; i++) {
        explicit_bzero(env[i], strlen(env[i]));
        free(env[i]);
    }
    free(env);
}
