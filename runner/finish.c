/*
 * finish.c - the end of a prompt (runner_int.h): its state, exit code and final event in one
 * transaction (after every output event of the prompt: the same commitq FIFO), then the
 * prompt-end commit and snapshot of the workspace, then the session may take its next prompt.
 *
 * Thread context: finish_run on the pump thread (or the control thread when the agent never
 * started); finish_done on a commit worker; the snapshot on a thread of its own.
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
#include "storage/meta.h"
#include "storage/prompts.h"
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

/* ---- finishing a prompt ---- */

struct finish_op {
    struct run *run;
    enum prompt_state state; /* completed, failed or cancelled */
    char *event;             /* type */
    char *data;              /* event data */
    char *reason;            /* prompts.reason */
    int exit_code;
    int has_exit;
    int started; /* the agent ran: the sandbox goes back from busy to idle */
};

static int finish_tx(struct sess_tx *tx, void *arg)
{
    struct finish_op *f = arg;
    int rc =
        prompts_finish(tx, f->run->pid, f->state, f->has_exit ? &f->exit_code : NULL, f->reason);
    int ended_elsewhere = rc == ERR_NOT_FOUND;
    if (ended_elsewhere) {
        /* The prompt is not running in the file any more. Only this run ends its prompt once
         * start_tx has marked it running, so this means the file was changed under us; the
         * file is the truth: no second end event contradicts it. Its output is stored all the
         * same (budget) and its sandbox is idle again, so the rest of the end is written. */
        LOG_WARN("runner: session %s prompt %s: not running at its end; %s not recorded",
                 f->run->sid, f->run->pid, f->event);
        rc = 0;
    }
    if (!rc && f->run->out_bytes) {
        /* The session's running total of stored agent output, for the next prompt's budget
         * (max_session_output_bytes), in the transaction that ends the prompt. */
        rc = meta_add_output_bytes(tx, f->run->out_bytes);
    }
    if (!rc && !ended_elsewhere) {
        rc = sess_tx_append(tx, f->event, NULL, f->data, NULL);
    }
    if (!rc && f->started) {
        char *d = runneri_json_obj_str("prompt_id", f->run->pid, NULL, NULL);
        rc = sess_tx_append(tx, "sandbox.idle", NULL, d, NULL);
        free(d);
    }
    return rc;
}

/* The end of a run once its final event is committed: the session may take its next prompt.
 * Commit worker or prompt-end thread. */
static void finish_tail(struct finish_op *f)
{
    struct run *run = f->run;
    struct runner *r = run->r;
    pthread_mutex_lock(&r->lock);
    if (run->rs->run == run) {
        run->rs->run = NULL;
    }
    run->rs->last_used_ms = clock_mono_ms();
    r->running--;
    if (f->state == PROMPT_COMPLETED) {
        r->n_completed++;
    } else if (f->state == PROMPT_FAILED) {
        r->n_failed++;
    } else {
        r->n_cancelled++;
    }
    runneri_push_job(r, run->rs->ended ? JOB_ENDED : JOB_KICK, run->sid);
    runneri_wake_parked(r); /* its sandbox may be idle now: a parked start can take its slot */
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    free(f->event);
    free(f->data);
    free(f->reason);
    free(f);
    runneri_run_unref(run);
}

/* The prompt-end commit + snapshot, on a thread of its own: prompt.completed and the
 * answer are already committed (clients have them), a commit worker is not held for hundreds
 * of ms (other sessions' output goes on), and the session stays busy (rs->run) until the
 * snapshot has captured the turn, so its next prompt waits. */
static void *prompt_end_main(void *arg)
{
    struct finish_op *f = arg;
    struct runner *r = f->run->r;
    repos_prompt_end(r->cfg.repos, f->run->sid, f->run->pid);
    finish_tail(f);
    pthread_mutex_lock(&r->lock);
    r->threads_out--;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static int spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &at, fn, arg) == 0 ? 0 : ERR_IO;
    pthread_attr_destroy(&at);
    return rc;
}

static void finish_done(void *arg, int rc)
{
    struct finish_op *f = arg;
    struct run *run = f->run;
    struct runner *r = run->r;
    if (rc) {
        LOG_ERROR("runner: session %s prompt %s: cannot record its end: %s", run->sid, run->pid,
                  err_str(rc));
    }
    if (!f->started) {
        finish_tail(f); /* the agent never ran: nothing to commit or snapshot */
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->threads_out++;
    pthread_mutex_unlock(&r->lock);
    if (spawn_detached(prompt_end_main, f) != 0) {
        pthread_mutex_lock(&r->lock);
        r->threads_out--;
        pthread_mutex_unlock(&r->lock);
        repos_prompt_end(r->cfg.repos, run->sid, run->pid); /* no thread: here, as before */
        finish_tail(f);
    }
}

/* Build and submit the final job of a run. Any thread (pump thread normally). */
void runneri_finish_run(struct run *run, const struct sbx_exit *st, const char *fail_reason)
{
    struct runner *r = run->r;
    struct finish_op *f = xcalloc(1, sizeof *f);
    f->run = run; /* takes the caller's reference */
    pthread_mutex_lock(&r->lock);
    const char *cancel = run->cancel_reason;
    pthread_mutex_unlock(&r->lock);
    int64_t dur_ms = (clock_mono_us() - run->start_us) / 1000;
    json_t *d = json_pack("{s:s}", "prompt_id", run->pid);
    f->started = run->ex != NULL || st != NULL;
    if (st) {
        f->has_exit = 1;
        f->exit_code = st->exit_code;
        json_object_set_new(d, "exit_code",
                            st->exit_code >= 0 ? json_integer(st->exit_code) : json_null());
        if (st->signal) {
            json_object_set_new(d, "signal", json_integer(st->signal));
        }
    }
    json_object_set_new(d, "duration_ms", json_integer(dur_ms));
    if (run->truncated) {
        json_object_set_new(d, "truncated", json_true());
    }
    char why[512];
    if (cancel) {
        f->state = PROMPT_CANCELLED;
        f->event = xstrdup("prompt.cancelled");
        f->reason = xstrdup(cancel);
    } else if (fail_reason || !st || st->exit_code != 0 || run->error_reason) {
        f->state = PROMPT_FAILED;
        f->event = xstrdup("prompt.failed");
        if (fail_reason) {
            snprintf(why, sizeof why, "%s", fail_reason);
        } else if (st->lost) {
            snprintf(why, sizeof why, "the sandbox stopped while the agent ran");
        } else if (st->timed_out) {
            snprintf(why, sizeof why, "timeout: the agent ran longer than %d s",
                     r->cfg.prompt_timeout_s);
        } else if (run->error_reason) {
            snprintf(why, sizeof why, "%s", run->error_reason);
        } else if (st->start_failed) {
            snprintf(why, sizeof why, "the agent could not be started");
        } else if (st->oom) {
            snprintf(why, sizeof why, "the agent was killed: the sandbox's memory limit was hit");
        } else if (st->signal == SIGKILL) {
            snprintf(why, sizeof why,
                     "the agent was killed (signal 9: memory limit or sandbox limit)");
        } else if (st->signal) {
            snprintf(why, sizeof why, "the agent was killed by signal %d", st->signal);
        } else {
            snprintf(why, sizeof why, "the agent exited with code %d", st->exit_code);
        }
        f->reason = xstrdup(why);
    } else {
        f->state = PROMPT_COMPLETED;
        f->event = xstrdup("prompt.completed");
        json_object_set_new(d, "time_to_first_token_ms",
                            run->first_us ? json_integer((run->first_us - run->start_us) / 1000)
                                          : json_null());
        if (run->ar) {
            agent_run_completion(run->ar, d); /* the CLI's usage and turns */
        }
    }
    if (f->reason) {
        json_object_set_new(d, "reason", json_string(f->reason));
    }
    f->data = jx_dump(d);
    json_decref(d);
    struct cq_job *j = cq_job_new(run->sid);
    cq_job_op(j, finish_tx, f);
    cq_job_done(j, finish_done, f);
    runneri_submit(run, j); /* behind the run's pending file_changed diffs (their deadline
                             * bounds the wait) */
}
