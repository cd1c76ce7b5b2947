/*
 * output.c - agent output → events (runner_int.h): the pump thread parses what the agent
 * writes into events, charges each to the prompt's output budget and hands them to the commit
 * queue (never SQLite here); output is paused while the session's commit backlog is high.
 *
 * Thread context: the output pump thread only, except run_unref (any thread). The parser
 * state of a struct run (hold, text, job, budget) belongs to the pump thread.
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
#include "storage/messages.h"
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

void runneri_run_unref(struct run *run)
{
    if (atomic_fetch_sub(&run->refs, 1) != 1) {
        return;
    }
    sbx_exec_put(run->ex);
    runneri_seq_free(run);
    buf_free(&run->hold);
    buf_free(&run->text);
    buf_free(&run->errtext);
    free(run->agent_name);
    free(run->error_reason);
    agent_run_free(run->ar);
    redactor_free(run->red[0]);
    redactor_free(run->red[1]);
    redact_set_unref(run->secrets);
    free(run);
}

/* ---- agent output → events (pump thread) ---- */

/* Charge an event of n data bytes (what it adds to the session file) to the prompt's output
 * budget. 0: store it. 1: over the budget: drop it; the first time, agent.truncated says
 * so and what the cap was (the agent keeps running: its exit status and final answer still
 * count). Escaped bytes are counted, not the agent's raw ones: a control byte costs six in
 * the file. */
static int over_budget(struct run *run, size_t n)
{
    int64_t cost = (int64_t)n + EVENT_OVERHEAD;
    if (!run->truncated && run->out_bytes + cost <= run->out_budget) {
        run->out_bytes += cost;
        return 0;
    }
    if (run->truncated) {
        return 1;
    }
    run->truncated = 1;
    int session = run->out_budget < run->r->cfg.prompt_output_cap;
    if (session) {
        run->out_bytes = run->out_budget; /* the session's allowance is used up: the next
                                           * prompt fails at once instead of storing crumbs */
    }
    json_t *d =
        json_pack("{s:s,s:I,s:s,s:s}", "prompt_id", run->pid, "limit_bytes",
                  (json_int_t)run->out_budget, "scope", session ? "session" : "prompt", "message",
                  session ? "…truncated: the session's stored agent output reached its total cap "
                            "(max_session_output_bytes); further output of this prompt is dropped"
                          : "…truncated: the prompt's agent output reached its cap "
                            "(max_prompt_output_bytes); further output is dropped");
    if (!run->job) {
        run->job = cq_job_new(run->sid);
    }
    cq_job_event(run->job, "agent.truncated", NULL, jx_dump(d));
    json_decref(d);
    pthread_mutex_lock(&run->r->lock);
    run->r->n_truncated++;
    pthread_mutex_unlock(&run->r->lock);
    return 1;
}

static void flush_text(struct run *run)
{
    struct buf *bs[2] = {&run->text, &run->errtext};
    for (int i = 0; i < 2; i++) {
        if (!bs[i]->len) {
            continue;
        }
        struct buf d;
        buf_init(&d, 0);
        buf_puts(&d, "{\"prompt_id\":");
        buf_json_str(&d, run->pid, strlen(run->pid));
        if (i) {
            buf_puts(&d, ",\"stream\":\"stderr\"");
        }
        buf_puts(&d, ",\"text\":");
        buf_json_str(&d, bs[i]->data, bs[i]->len);
        buf_putc(&d, '}');
        buf_reset(bs[i]);
        if (over_budget(run, d.len)) {
            buf_free(&d);
            continue;
        }
        if (!run->job) {
            run->job = cq_job_new(run->sid);
        }
        cq_job_event(run->job, "agent.output", NULL, buf_detach(&d, NULL));
    }
}

static void add_text(struct run *run, int err, const char *p, size_t n)
{
    if (run->truncated) {
        return;
    }
    struct buf *b = err ? &run->errtext : &run->text;
    if (b->len + n > 64 * 1024) { /* merged text stays one modest event (flushed per chunk) */
        flush_text(run);
    }
    buf_append(b, p, n);
}

struct msg_op {
    char sid[72];
    char pid[72];
    char *agent;
    char *content;
};

/* The agent's final answer, stored as an assistant message with its `message` event. */
static int assistant_tx(struct sess_tx *tx, void *arg)
{
    struct msg_op *m = arg;
    char *mid = util_new_id("m_");
    char *aid = xasprintf("agent:%s", m->agent);
    struct author a = {aid, m->agent, NULL};
    json_t *d = json_pack("{s:s,s:s,s:s,s:s}", "message_id", mid, "prompt_id", m->pid, "role",
                          "assistant", "content", m->content);
    char *data = jx_dump(d);
    json_decref(d);
    int64_t seq = 0;
    int rc = sess_tx_append(tx, "message", &a, data, &seq);
    if (!rc) {
        rc = messages_insert(tx, &(struct message_row){.id = mid,
                                                       .role = "assistant",
                                                       .content = m->content,
                                                       .content_len = strlen(m->content),
                                                       .author_id = aid,
                                                       .author_name = m->agent,
                                                       .seq = seq});
    }
    free(data);
    free(mid);
    free(aid);
    return rc;
}

static void msg_done(void *arg, int rc)
{
    (void)rc;
    struct msg_op *m = arg;
    free(m->agent);
    free(m->content);
    free(m);
}

static void job_done(void *arg, int rc);

static void submit_job(struct run *run)
{
    flush_text(run);
    if (!run->job) {
        return;
    }
    atomic_fetch_add(&run->refs, 1);
    cq_job_done(run->job, job_done, run);
    runneri_submit(run, run->job);
    run->job = NULL;
}

static int valid_type(const char *t)
{
    size_t n = strlen(t);
    if (!n || n > 32) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!((t[i] >= 'a' && t[i] <= 'z') || t[i] == '_')) {
            return 0;
        }
    }
    return 1;
}

static void handle_line(struct run *run, const char *line, size_t n)
{
    if (n && line[0] == '{') {
        json_t *o = json_loadb(line, n, 0, NULL);
        const char *type = o ? json_string_value(json_object_get(o, "type")) : NULL;
        if (type && json_is_object(o) && valid_type(type)) {
            if (!strcmp(type, "output")) {
                const char *t = json_string_value(json_object_get(o, "text"));
                if (t) {
                    add_text(run, 0, t, json_string_length(json_object_get(o, "text")));
                }
                json_decref(o);
                return;
            }
            flush_text(run);
            json_t *d = json_deep_copy(o);
            json_object_del(d, "type");
            json_object_set_new(d, "prompt_id", json_string(run->pid));
            char *data = jx_dump(d);
            json_decref(d);
            /* Every event the agent causes counts (a `done` twice: its summary is stored as a
             * message too). Past the cap one `done` and one `error` are still kept: they are
             * the prompt's answer and its failure reason. */
            int final = !strcmp(type, "done") ? 1 : !strcmp(type, "error") ? 2 : 0;
            if (over_budget(run, strlen(data) * (final == 1 ? 2 : 1))) {
                if (!final || (run->finals_kept & final)) {
                    free(data);
                    json_decref(o);
                    return;
                }
                run->finals_kept |= final;
            }
            if (!strcmp(type, "file_changed")) {
                /* its diff is computed off this thread; the event keeps its place */
                free(data);
                json_t *fd = json_deep_copy(o);
                json_object_del(fd, "type");
                json_object_set_new(fd, "prompt_id", json_string(run->pid));
                runneri_file_changed(run, fd, &run->job);
                json_decref(o);
                return;
            }
            char *etype = xasprintf("agent.%s", type);
            if (!run->job) {
                run->job = cq_job_new(run->sid);
            }
            cq_job_event(run->job, etype, NULL, data);
            free(etype);
            if (!strcmp(type, "done")) {
                const char *sum = json_string_value(json_object_get(o, "summary"));
                if (!sum) {
                    sum = json_string_value(json_object_get(o, "text"));
                }
                if (sum && *sum) {
                    /* The assistant message goes in its own operation, after the events so
                     * far, in order. */
                    submit_job(run);
                    struct msg_op *m = xcalloc(1, sizeof *m);
                    snprintf(m->sid, sizeof m->sid, "%s", run->sid);
                    snprintf(m->pid, sizeof m->pid, "%s", run->pid);
                    m->agent = xstrdup(run->agent_name);
                    m->content = xstrdup(sum);
                    struct cq_job *j = cq_job_new(run->sid);
                    cq_job_op(j, assistant_tx, m);
                    cq_job_done(j, msg_done, m);
                    runneri_submit(run, j);
                }
            } else if (!strcmp(type, "error")) {
                const char *why = json_string_value(json_object_get(o, "reason"));
                if (!why) {
                    why = json_string_value(json_object_get(o, "message"));
                }
                free(run->error_reason);
                run->error_reason = xstrdup(why ? why : "the agent reported an error");
            }
            json_decref(o);
            return;
        }
        json_decref(o);
    }
    add_text(run, 0, line, n);
    add_text(run, 0, "\n", 1);
}

/* Protocol lines produced by a CLI adapter from the CLI's own stream. */
void runneri_adapter_line(void *ctx, enum agent_msg type, const char *json, size_t len)
{
    (void)type;
    handle_line(ctx, json, len);
}

static void parse_stdout(struct run *run, const char *p, size_t n)
{
    while (n) {
        const char *nl = memchr(p, '\n', n);
        if (!nl) {
            /* A partial line: hold back what may be a JSON object, pass plain text on now
             * (first-byte latency matters more than line boundaries for plain output). */
            if ((run->hold.len && run->hold.data[0] == '{') || (!run->hold.len && p[0] == '{')) {
                if (run->hold.len + n <= LINE_MAX_HOLD) {
                    buf_append(&run->hold, p, n);
                    return;
                }
            }
            if (run->hold.len) {
                add_text(run, 0, run->hold.data, run->hold.len);
                buf_reset(&run->hold);
            }
            add_text(run, 0, p, n);
            return;
        }
        size_t l = (size_t)(nl - p);
        if (run->hold.len) {
            buf_append(&run->hold, p, l);
            handle_line(run, run->hold.data, run->hold.len);
            buf_reset(&run->hold);
        } else {
            handle_line(run, p, l);
        }
        p = nl + 1;
        n -= l + 1;
    }
}

static void job_done(void *arg, int rc)
{
    (void)rc;
    struct run *run = arg;
    if (atomic_load(&run->paused) && commitq_backlog(run->r->cq, run->sid) < BACKLOG_LOW &&
        runneri_seq_held(run) < SEQ_HELD_LOW) {
        atomic_store(&run->paused, 0);
        if (run->ex) {
            sbx_exec_resume(run->ex);
        }
    }
    runneri_run_unref(run);
}

/* Output the secrets are scrubbed from already. */
static void run_clean_output(struct run *run, int stream, const char *data, size_t n)
{
    if (!n) {
        return;
    }
    if (run->ar) { /* the adapter parses stdout; stderr only feeds failure reasons */
        (stream == SBX_STDERR ? agent_run_stderr : agent_run_stdout)(run->ar, data, n);
    } else if (stream == SBX_STDERR) {
        add_text(run, 1, data, n);
    } else {
        parse_stdout(run, data, n);
    }
}

/* The held-back tails of both streams, at the end of the run. */
static void run_flush_redactors(struct run *run)
{
    for (int i = 0; i < 2; i++) {
        if (run->red[i]) {
            struct buf clean;
            buf_init(&clean, 0);
            redactor_flush(run->red[i], &clean);
            run_clean_output(run, i ? SBX_STDERR : SBX_STDOUT, clean.data, clean.len);
            buf_free(&clean);
        }
    }
}

static int run_output(void *ctx, struct sbx_exec *ex, int stream, const char *data, size_t n)
{
    (void)ex;
    struct run *run = ctx;
    if (!run->first_us) {
        run->first_us = clock_mono_us();
    }
    struct redactor *red = run->red[stream == SBX_STDERR];
    if (red) {
        /* A value split across two chunks is held back until it can be seen whole. */
        struct buf clean;
        buf_init(&clean, 0);
        redactor_feed(red, data, n, &clean);
        run_clean_output(run, stream, clean.data, clean.len);
        buf_free(&clean);
    } else {
        run_clean_output(run, stream, data, n);
    }
    submit_job(run);
    if (commitq_backlog(run->r->cq, run->sid) > BACKLOG_HIGH ||
        runneri_seq_held(run) > SEQ_HELD_HIGH) {
        atomic_store(&run->paused, 1);
        return SBX_PAUSE;
    }
    return 0;
}

static void run_exit(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st)
{
    (void)ex;
    struct run *run = ctx;
    run_flush_redactors(run);
    if (run->ar) { /* a cancelled run gets no agent.error of its own */
        pthread_mutex_lock(&run->r->lock);
        int cancelled = run->cancel_reason != NULL;
        pthread_mutex_unlock(&run->r->lock);
        agent_run_exit(run->ar, cancelled                ? AGENT_EXIT_CANCELLED
                                : st->signal || st->lost ? -1
                                                         : st->exit_code);
    }
    if (run->hold.len) {
        handle_line(run, run->hold.data, run->hold.len);
        buf_reset(&run->hold);
    }
    submit_job(run);
    runneri_finish_run(run, st, NULL); /* takes over the callbacks' reference */
}

const struct sbx_exec_cb runneri_run_cb = {run_output, run_exit};
