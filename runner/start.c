/*
 * start.c - starting a session's next prompt (runner_int.h), on the control thread: pick the
 * head of the queue, check its output budget and the sandbox (started in the background by
 * sandbox.c, then the workspace sync), choose the agent, write the prompt files, mark the
 * prompt running, exec the agent with the output callbacks of output.c.
 *
 * Thread context: the control thread only; it never waits for a sandbox start.
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

/* ---- starting a prompt (control thread) ---- */

struct next_prompt {
    char *id, *mid, *author_id, *author_name, *author_email, *content, *context;
    char *agent;
    int64_t out_used; /* agent output the session's file holds already (meta output_bytes) */
};

/* The head of the queue with the session's agent and output total, in one read. */
static int read_next(struct sess_rd *rd, void *arg)
{
    struct next_prompt *np = arg;
    struct prompt_info info;
    int rc = prompts_next(rd, &info);
    if (!rc) {
        rc = meta_agent(rd, &np->agent);
    }
    if (!rc) {
        rc = meta_output_bytes(rd, &np->out_used);
    }
    if (rc) {
        prompt_info_free(&info);
        return rc;
    }
    /* the strings move to np (next_free frees them) */
    np->id = info.id;
    np->mid = info.message_id;
    np->author_id = info.author_id;
    np->author_name = info.author_name;
    np->author_email = info.author_email;
    /* a prompt's message_id references its message (schema); should the row be missing
     * anyway, the agent gets an empty prompt rather than a NULL one */
    np->content = info.content ? info.content : xstrdup("");
    np->context = info.context_json;
    return 0;
}

static void next_free(struct next_prompt *np)
{
    free(np->id);
    free(np->mid);
    free(np->author_id);
    free(np->author_name);
    free(np->author_email);
    free(np->content);
    free(np->context);
    free(np->agent);
}

struct start_op {
    const char *pid;
    char *data;      /* prompt.started (sandbox.ready is the start's own event) */
    char *busy_data; /* sandbox.busy */
    int changed;
};

static int start_tx(struct sess_tx *tx, void *arg)
{
    struct start_op *o = arg;
    int rc = prompts_start(tx, o->pid);
    if (rc == ERR_NOT_FOUND) {
        return 0; /* no longer queued: cancelled meanwhile (o->changed stays 0) */
    }
    if (rc) {
        return rc;
    }
    o->changed = 1;
    rc = sess_tx_append(tx, "prompt.started", NULL, o->data, NULL);
    if (!rc) {
        rc = sess_tx_append(tx, "sandbox.busy", NULL, o->busy_data, NULL);
    }
    return rc;
}

/* The argv of the agent for a prompt. The prompt is never in argv or env. */
static int agent_argv(struct runner *r, struct sbx *sbx, const char *agent, char ***argv_out,
                      char **name_out)
{
    char **av = xcalloc(4, sizeof *av);
    const char *a = agent && *agent ? agent : r->cfg.agent;
    if (strchr(a, ' ')) {
        av[0] = xstrdup("/bin/sh");
        av[1] = xstrdup("-c");
        av[2] = xstrdup(a);
        *name_out = xstrdup("command");
    } else if (strchr(a, '/')) {
        /* A host path: copy it into the sandbox's private dir (the host is invisible). Only
         * the server's own --agent may name one: a session's agent (chosen by any user)
         * naming a host file would copy it into the sandbox (/etc/shadow, the data dir...). */
        if (a != r->cfg.agent) {
            free(av);
            return ERR_FORBIDDEN;
        }
        struct buf b;
        buf_init(&b, 64 << 20);
        FILE *f = fopen(a, "rb");
        char tmp[65536];
        size_t n;
        int rc = f ? 0 : ERR_NOT_FOUND;
        while (f && (n = fread(tmp, 1, sizeof tmp, f)) > 0 && !rc) {
            rc = buf_append(&b, tmp, n);
        }
        if (f) {
            fclose(f);
        }
        char *inside = NULL;
        if (!rc) {
            rc = sbx_put_private(sbx, "agent-bin", b.data, b.len, 1, &inside);
        }
        buf_free(&b);
        if (rc) {
            free(av);
            return rc;
        }
        av[0] = inside;
        const char *base = strrchr(a, '/');
        *name_out = xstrdup(base + 1);
    } else {
        if (!util_valid_id(a)) {
            free(av);
            return ERR_INVALID;
        }
        av[0] = xasprintf("%s/%s", sbx_agents_inside(sbx), a);
        *name_out = xstrdup(a);
    }
    *argv_out = av;
    return 0;
}

static void argv_free(char **av)
{
    for (char **p = av; p && *p; p++) {
        free(*p);
    }
    free(av);
}

/* A prompt being started: what each step of start_next_picked reads and leaves for the next.
 * Control thread only. */
struct start {
    struct runner *r;
    struct rs *x;
    const char *sid;
    struct next_prompt np;
    struct sbx *sbx;     /* the session's sandbox when the prompt was picked */
    int alive;           /* and it was running */
    int64_t budget;      /* bytes of agent output the prompt may store */
    int out_full;        /* the session's file holds its whole output allowance */
    char *start_err;     /* the sandbox start for this prompt failed: why */
    int sync_timeout;    /* the workspace sync outlasted its bound */
    struct run *run;     /* from start_run_new on */
    char **argv;         /* the agent's */
    char *prompt_inside; /* PROMPT_FILE and CONTEXT_FILE, as the sandbox sees them */
    char *ctx_inside;
    struct sbx_egress route; /* a command agent's route to the egress proxy */
    char reason[512];        /* why the prompt fails without running, when a step failed */
};

/* Step 1: the head of the session's queue, unless the session is busy (a run, a sandbox
 * start, stopping). 0, or nonzero: nothing to start now (a running start or run kicks the
 * session again when it ends). */
static int start_pick(struct start *p)
{
    struct runner *r = p->r;
    pthread_mutex_lock(&r->lock);
    int busy = p->x->run != NULL || !r->accepting || p->x->ended || p->x->starting;
    p->sbx = p->x->sbx;
    pthread_mutex_unlock(&r->lock);
    if (busy) {
        return ERR_CONFLICT;
    }
    struct sess *s = NULL;
    int rc = store_session_get(r->st, p->sid, &s);
    if (rc) {
        return rc;
    }
    rc = sess_view(s, read_next, &p->np);
    sess_put(s);
    if (rc && rc != ERR_NOT_FOUND) {
        LOG_ERROR("runner: session %s: cannot read its queue: %s", p->sid, err_str(rc));
    }
    return rc;
}

/* Step 2: the prompt's output budget and the sandbox. A session whose file holds its whole
 * output allowance fails the prompt at once: the agent's output could not be stored (and no
 * sandbox slot is taken for it). Without a live sandbox, one starts on a starter thread
 * (filling a workspace from an image takes seconds and must not hold this thread, which
 * starts every session's prompts) and kicks the session when it is done: nonzero, wait. */
static int start_budget_and_sandbox(struct start *p)
{
    struct runner *r = p->r;
    pthread_mutex_lock(&r->lock);
    p->start_err = p->x->start_err;
    p->x->start_err = NULL;
    pthread_mutex_unlock(&r->lock);
    p->budget = r->cfg.session_output_cap - p->np.out_used;
    p->out_full = p->budget <= 0;
    if (p->budget > r->cfg.prompt_output_cap) {
        p->budget = r->cfg.prompt_output_cap;
    }
    p->alive = p->sbx && sbx_alive(p->sbx);
    if (p->alive || p->out_full) {
        free(p->start_err);
        p->start_err = NULL;
    } else if (!p->start_err) {
        runneri_start_in_background(r, p->x, 1);
        return ERR_UNAVAILABLE;
    }
    return 0;
}

/* Step 3: a live sandbox's workspace may still be syncing with its repository: the agent
 * waits for it (synced_cb kicks the session at its end; the idle tick re-checks the bound),
 * then runs anyway and the prompt fails with a timeout. Nonzero: wait. */
static int start_sync_wait(struct start *p)
{
    struct runner *r = p->r;
    /* A push by someone else to the session's pull request branch comes in first: the pull
     * counts as a sync (the agent must see those commits) */
    if (p->alive) {
        repos_pull_begin(p->r->cfg.repos, p->sid);
    }
    if (p->alive && repos_syncing(p->r->cfg.repos, p->sid)) {
        int64_t now = clock_mono_ms();
        pthread_mutex_lock(&r->lock);
        if (!p->x->sync_wait_since) {
            p->x->sync_wait_since = now;
        }
        int64_t waited = now - p->x->sync_wait_since;
        pthread_mutex_unlock(&r->lock);
        if (waited < repos_sync_wait_ms(p->r->cfg.repos)) {
            return ERR_UNAVAILABLE;
        }
        p->sync_timeout = 1;
    }
    pthread_mutex_lock(&r->lock);
    p->x->sync_wait_since = 0;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

/* Step 4: the run, the session's from now on (rs->run: the session is busy). */
static void start_run_new(struct start *p)
{
    struct runner *r = p->r;
    if (!p->np.agent) {
        /* The session's own agent (POST /v1/sessions {agent}), else the server default. */
        json_t *row = NULL;
        if (registry_session_get(store_registry(r->st), p->sid, &row) == 0) {
            const char *ag = json_string_value(json_object_get(row, "agent"));
            if (ag && *ag) {
                p->np.agent = xstrdup(ag);
            }
            json_decref(row);
        }
    }
    struct run *run = xcalloc(1, sizeof *run);
    atomic_store(&run->refs, 1);
    runneri_seq_init(run);
    run->r = r;
    run->rs = p->x;
    snprintf(run->sid, sizeof run->sid, "%s", p->sid);
    snprintf(run->pid, sizeof run->pid, "%s", p->np.id);
    snprintf(run->mid, sizeof run->mid, "%s", p->np.mid ? p->np.mid : "");
    buf_init(&run->hold, 0);
    buf_init(&run->text, 0);
    buf_init(&run->errtext, 0);
    run->out_budget = p->budget;
    pthread_mutex_lock(&r->lock);
    p->x->run = run;
    r->running++;
    pthread_mutex_unlock(&r->lock);
    p->run = run;
}

/* Step 5: a reason found before the agent is chosen (output allowance, sandbox start, sync)
 * fails the prompt without running it. 0 or the error, with p->reason set. */
static int start_precheck(struct start *p)
{
    struct runner *r = p->r;
    if (p->out_full) {
        snprintf(p->reason, sizeof p->reason,
                 "output limit: the session's file holds %lld bytes of agent output, its total "
                 "cap (max_session_output_bytes %lld); start a new session",
                 (long long)p->np.out_used, (long long)r->cfg.session_output_cap);
        return ERR_LIMIT;
    }
    if (p->start_err) { /* sandbox.failed was emitted by the start */
        snprintf(p->reason, sizeof p->reason, "%s", p->start_err);
        return ERR_UNAVAILABLE;
    }
    if (p->sync_timeout) {
        snprintf(p->reason, sizeof p->reason,
                 "timeout: the workspace was still syncing with the repository after %d s",
                 repos_sync_wait_ms(p->r->cfg.repos) / 1000);
        return ERR_TIMEOUT;
    }
    return 0;
}

/* A command agent goes through the egress proxy like exec: argv behind the route. The
 * commands' listener is set anew for every prompt, a CLI agent's too (its own listener adds
 * the model endpoint), so that what the sandbox may reach is the list of this prompt. */
static void command_route(struct start *p, json_t *list, int command)
{
    if (!p->r->cfg.egress) {
        return;
    }
    sbx_egress_open_json(p->r->cfg.egress, p->sbx, list, &p->route);
    if (command && p->argv) {
        char **av = sbx_egress_argv(&p->route, (const char *const *)p->argv);
        argv_free(p->argv);
        p->argv = av;
    }
}

/* Step 6: the agent and its argv. The session's repository names the agent when neither the
 * prompt nor the session does, and adds its egress list to the policy (both read anew for
 * each prompt: a PATCH of the repository applies from the next prompt on). A configured agent
 * name runs its CLI through its adapter; anything else is a command (agent_argv). */
static int start_choose_agent(struct start *p)
{
    struct runner *r = p->r;
    struct run *run = p->run;
    json_t *reg = NULL;
    char ragent[80];
    repos_session_policy(p->r->cfg.repos, p->sid, &reg, ragent, sizeof ragent);
    if (!p->np.agent && ragent[0]) {
        p->np.agent = xstrdup(ragent);
    }
    size_t ne = json_array_size(reg);
    const char **extra = xcalloc(ne + 1, sizeof *extra);
    for (size_t i = 0; i < ne; i++) {
        extra[i] = json_string_value(json_array_get(reg, i));
    }
    const char *aname = p->np.agent && *p->np.agent ? p->np.agent : r->cfg.agent;
    int rc = agent_run_new(r->cfg.agents, aname, p->sbx, p->sid, extra, runneri_adapter_line, run,
                           &run->ar);
    free(extra);
    if (!rc) {
        const char *const *av = agent_run_argv(run->ar);
        size_t na = 0;
        while (av[na]) {
            na++;
        }
        p->argv = xcalloc(na + 1, sizeof *p->argv);
        for (size_t i = 0; i < na; i++) {
            p->argv[i] = xstrdup(av[i]);
        }
        run->agent_name = xstrdup(aname);
    } else if (rc == ERR_NOT_FOUND) {
        rc = agent_argv(r, p->sbx, p->np.agent, &p->argv, &run->agent_name);
    }
    if (!rc) {
        command_route(p, reg, run->ar == NULL);
    }
    json_decref(reg);
    if (rc) {
        snprintf(p->reason, sizeof p->reason, "the agent command is not usable: %s", err_str(rc));
    }
    return rc;
}

/* Step 7: the prompt and its context as files in the sandbox's private dir (outside
 * /workspace: the prompt is never in argv or env). */
static int start_write_files(struct start *p)
{
    const char *c = p->np.context ? p->np.context : "{}";
    int rc = sbx_put_private(p->sbx, "prompt.txt", p->np.content, strlen(p->np.content), 0,
                             &p->prompt_inside);
    if (!rc) {
        rc = sbx_put_private(p->sbx, "context.json", c, strlen(c), 0, &p->ctx_inside);
        if (rc) {
            snprintf(p->reason, sizeof p->reason, "cannot write the prompt file: %s", err_str(rc));
        }
    }
    return rc;
}

/* Step 8: the prompt is running (prompt.started, sandbox.busy), unless it was cancelled
 * meanwhile (or the file is gone): then the run is dropped and the next prompt tried.
 * 0, or nonzero: dropped. */
static int start_mark_running(struct start *p)
{
    struct runner *r = p->r;
    struct start_op so = {.pid = p->np.id};
    json_t *d = json_pack("{s:s,s:s?,s:s?,s:{s:s?,s:s?}}", "prompt_id", p->np.id, "message_id",
                          p->np.mid, "agent", p->run->agent_name, "author", "id", p->np.author_id,
                          "name", p->np.author_name);
    so.data = jx_dump(d);
    json_decref(d);
    so.busy_data = runneri_json_obj_str("prompt_id", p->np.id, NULL, NULL);
    int wrc = runneri_write_op(r, p->sid, start_tx, &so);
    free(so.data);
    free(so.busy_data);
    if (wrc || !so.changed) {
        pthread_mutex_lock(&r->lock);
        p->x->run = NULL;
        r->running--;
        runneri_push_job(r, JOB_KICK, p->sid);
        pthread_mutex_unlock(&r->lock);
        runneri_run_unref(p->run);
        p->run = NULL;
        return wrc ? wrc : ERR_NOT_FOUND;
    }
    pthread_mutex_lock(&r->lock);
    r->n_started++;
    pthread_mutex_unlock(&r->lock);
    p->run->start_us = clock_mono_us();
    return 0;
}

/* The agent's environment: where its files are, who it works for (git author). Caller frees
 * env[0..n-1]; returns n. */
static int agent_env(const struct start *p, char **env)
{
    const struct next_prompt *np = &p->np;
    const char *name = np->author_name && *np->author_name ? np->author_name : "sessiond";
    const char *email =
        np->author_email && *np->author_email ? np->author_email : "sessiond@localhost";
    int ne = 0;
    env[ne++] = xasprintf("PROMPT_FILE=%s", p->prompt_inside);
    env[ne++] = xasprintf("CONTEXT_FILE=%s", p->ctx_inside);
    env[ne++] = xasprintf("SESSION_ID=%s", p->sid);
    env[ne++] = xasprintf("PROMPT_ID=%s", np->id);
    env[ne++] = xasprintf("MESSAGE_ID=%s", np->mid ? np->mid : "");
    env[ne++] = xasprintf("GIT_AUTHOR_NAME=%s", name);
    env[ne++] = xasprintf("GIT_AUTHOR_EMAIL=%s", email);
    env[ne++] = xasprintf("GIT_COMMITTER_NAME=%s", name);
    env[ne++] = xasprintf("GIT_COMMITTER_EMAIL=%s", email);
    env[ne++] = xasprintf("AGENT_NAME=%s", p->run->agent_name);
    env[ne] = NULL;
    return ne;
}

/* Step 9: exec the agent with the prompt on stdin; its output goes to output.c. A failed exec
 * finishes the run as failed. */
static void start_launch(struct start *p)
{
    struct runner *r = p->r;
    struct run *run = p->run;
    char *base[12];
    int nb = agent_env(p, base);
    size_t ne = (size_t)nb;
    char **env = xcalloc(ne + 1, sizeof(char *));
    memcpy(env, base, ne * sizeof(char *));
    /* The repository's secrets join the environment; their forms are scrubbed from the
     * output (output.c) from the first byte on, so the redactors exist before the exec. */
    runner_secrets(r, p->sid, &run->secrets);
    if (run->secrets) {
        runner_env_add_secrets(&env, &ne, run->secrets);
        run->red[0] = redactor_new(run->secrets);
        run->red[1] = redactor_new(run->secrets);
    }
    /* a CLI adapter adds its key to the environment (and wipes it below); a command agent
     * its proxy variables */
    char **aenv = run->ar ? agent_run_env(run->ar, (const char *const *)env) : NULL;
    char **cenv = run->ar ? NULL : sbx_egress_env(&p->route, (const char *const *)env);
    struct sbx_exec_req req = {
        .argv = (const char *const *)p->argv,
        .env = (const char *const *)(aenv ? aenv : cenv),
        .timeout_ms = r->cfg.prompt_timeout_s > 0 ? r->cfg.prompt_timeout_s * 1000 : -1,
        .stdin_data = p->np.content,
        .stdin_len = strlen(p->np.content),
    };
    /* The pump may call back before sbx_exec returns: hold a reference for the callbacks and
     * publish ex under the lock. */
    atomic_fetch_add(&run->refs, 1);
    struct sbx_exec *ex = NULL;
    pthread_mutex_lock(&r->lock);
    int rc = sbx_exec(p->sbx, &req, &runneri_run_cb, run, &ex);
    run->ex = ex;
    const char *cancel = run->cancel_reason;
    pthread_mutex_unlock(&r->lock);
    runner_env_free(env);
    agent_run_env_free(aenv);
    sbx_egress_strv_free(cenv);
    if (rc) {
        runneri_run_unref(run); /* the callbacks' reference: they will not run */
        snprintf(p->reason, sizeof p->reason, "the agent could not be started: %s", err_str(rc));
        runneri_finish_run(run, NULL, p->reason);
        return;
    }
    if (cancel) {
        sbx_exec_kill(ex, SIGTERM, r->cfg.cancel_grace_ms);
    }
    /* Output may have paused the sandbox before ex was published (job_done could not resume
     * it then). */
    if (atomic_load(&run->paused) && commitq_backlog(r->cq, p->sid) < BACKLOG_LOW) {
        atomic_store(&run->paused, 0);
        sbx_exec_resume(ex);
    }
    runneri_run_unref(run); /* ours: rs->run and the callbacks hold the run now */
}

/* The story of a prompt's start: pick it, make sure of its budget and sandbox, wait for the
 * workspace sync, choose its agent, write its files, mark it running, launch the agent. A
 * failed step after the run exists finishes the prompt as failed with the step's reason. */
static void start_next_picked(struct runner *r, struct rs *x, const char *sid)
{
    struct start p = {.r = r, .x = x, .sid = sid};
    if (start_pick(&p) || start_budget_and_sandbox(&p) || start_sync_wait(&p)) {
        goto out;
    }
    start_run_new(&p);
    int rc = start_precheck(&p);
    if (!rc) {
        rc = start_choose_agent(&p);
    }
    if (!rc) {
        rc = start_write_files(&p);
    }
    if (start_mark_running(&p)) {
        goto out;
    }
    if (rc) {
        runneri_finish_run(p.run, NULL, p.reason);
        goto out;
    }
    start_launch(&p);
out:
    free(p.start_err);
    argv_free(p.argv);
    free(p.prompt_inside);
    free(p.ctx_inside);
    sbx_egress_free(&p.route);
    next_free(&p.np);
}

/* Start the session's next prompt (control thread). Idle stops run on this thread too, but an
 * eviction for another start (slot_take) may run on any: x->picking keeps it off the sandbox
 * that start_next_picked holds without a run yet. */
void runneri_start_next(struct runner *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    struct rs *x = runneri_rs_get(r, sid);
    x->picking++;
    pthread_mutex_unlock(&r->lock);
    start_next_picked(r, x, sid);
    pthread_mutex_lock(&r->lock);
    x->picking--;
    if (!x->picking && !x->run) {
        runneri_wake_parked(r); /* it may be evictable again */
    }
    pthread_mutex_unlock(&r->lock);
}
