/*
 * api_metrics.c - GET /metrics (api_metrics.h): one step per part, each a table of the part's
 * samples (name, type, help, value) written the same way. A part that is not running (NULL in
 * struct app) writes nothing.
 *
 * Threads: HTTP pool threads.
 */
#include "server/api/api_metrics.h"

#include "common/buf.h"
#include "runner/runner.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/metrics.h"
#include "server/ratelimit.h"
#include "server/slack/slack.h"
#include "storage/prs_db.h"
#include "workspace/repos.h"
#include "server/ws/hub.h"
#include "storage/store.h"

#include <stddef.h>

/* One sample of a part's stats, read at scrape time. */
struct sample {
    const char *name;
    const char *type; /* "counter" | "gauge" */
    const char *help;
    double value;
};

static void write_samples(struct buf *b, const struct sample *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", s[i].name, s[i].help, s[i].name,
                   s[i].type, s[i].name, s[i].value);
    }
}

#define WRITE_SAMPLES(b, arr) write_samples((b), (arr), sizeof(arr) / sizeof((arr)[0]))
#define C                     "counter"
#define G                     "gauge"

static void store_samples(struct buf *b, struct store *st)
{
    struct store_stats s;
    store_get_stats(st, &s);
    const struct sample v[] = {
        {"sessiond_sessions_open", G, "Session files open now (LRU).", s.open_now},
        {"sessiond_session_opens_total", C, "Session files opened (LRU misses).", s.opens},
        {"sessiond_session_cache_hits_total", C, "Session lookups served by an open session.",
         s.hits},
        {"sessiond_session_hibernations_total", C, "Session files closed by the LRU or idleness.",
         s.closes},
        {"sessiond_session_rescues_total", C,
         "Lookups of a session evicted but not yet closed (taken back open).", s.rescues},
        {"sessiond_session_parked_total", C,
         "Comments to hibernated sessions parked in the spool (no wake-up).", s.parked},
        {"sessiond_spool_folds_total", C, "Sessions that folded parked comments into their file.",
         s.folds},
        {"sessiond_spool_folded_total", C, "Parked comments folded into their session file.",
         s.folded},
        {"sessiond_store_quarantined_total", C,
         "Corrupt session files moved to <data_dir>/quarantine/.", s.quarantined},
        {"sessiond_wal_checkpoints_total", C,
         "Session WAL checkpoints (background, at close, or inline).", s.checkpoints},
        {"sessiond_commits_total", C, "Group-commit transactions.", s.commits},
        {"sessiond_commit_ops_total", C, "Write operations committed (ops/commits = batching).",
         s.ops},
        {"sessiond_sqlite_page_cache_bytes", G,
         "SQLite page cache of the open session files (at their last commit).", s.cache_bytes},
    };
    WRITE_SAMPLES(b, v);
}

static void hub_samples(struct buf *b, struct hub *hub)
{
    struct hub_stats h;
    hub_get_stats(hub, &h);
    const struct sample v[] = {
        {"sessiond_ws_clients", G, "WebSocket clients connected.", h.clients},
        {"sessiond_ws_sessions", G, "Sessions with a connected client.", h.sessions},
        {"sessiond_ws_events_in_total", C, "Events received by the hub.", h.events_in},
        {"sessiond_ws_event_deliveries_total", C, "Event deliveries (one event to one client).",
         h.events_out},
        {"sessiond_ws_frames_out_total", C, "WebSocket frames written.", h.frames_out},
        {"sessiond_ws_gaps_total", C, "gap frames sent to lagging clients.", h.gaps},
        {"sessiond_ws_culled_total", C, "Clients closed for being stuck.", h.culled},
    };
    WRITE_SAMPLES(b, v);
}

static void runner_samples(struct buf *b, struct runner *r)
{
    struct runner_stats rs;
    runner_get_stats(r, &rs);
    const struct sample v[] = {
        {"sessiond_sandboxes", G, "Live sandboxes.", rs.sandboxes},
        {"sessiond_prompts_running", G, "Prompts running now.", rs.running},
        {"sessiond_prompts_started_total", C, "Prompts started.", rs.started},
        {"sessiond_prompts_completed_total", C, "Prompts completed.", rs.completed},
        {"sessiond_prompts_failed_total", C, "Prompts failed.", rs.failed},
        {"sessiond_prompts_cancelled_total", C, "Prompts cancelled.", rs.cancelled},
        {"sessiond_sandbox_slots_used", G,
         "Sandbox slots taken (live counted sandboxes and starts; max_sandboxes).", rs.slots_used},
        {"sessiond_sandbox_pool_slots_used", G,
         "Of which warm-pool sandboxes not yet given to a session.", rs.pool_sandboxes},
        {"sessiond_sandbox_waiting", G, "Prompt starts waiting for a sandbox slot now.",
         rs.waiting},
        {"sessiond_sandbox_limit_refused_total", C, "Sandbox starts answered 429 sandbox_limit.",
         rs.sandbox_refused},
        {"sessiond_sandbox_limit_waits_total", C, "Prompt starts that waited for a sandbox slot.",
         rs.sandbox_waits},
        {"sessiond_sandbox_evicted_total", C,
         "Idle sandboxes stopped to give their slot to a start.", rs.sandbox_evicted},
        {"sessiond_exec_limit_refused_total", C, "Execs refused: max_execs_per_session running.",
         rs.exec_refused},
        {"sessiond_prompt_output_truncated_total", C,
         "Prompts whose stored output hit a cap (agent.truncated).", rs.output_truncated},
    };
    WRITE_SAMPLES(b, v);
}

static void limit_samples(struct buf *b, struct ratelimit *session_rate)
{
    const struct sample v[] = {
        {"sessiond_session_create_limited_total", C,
         "Session creations refused: max_sessions_per_minute.", rl_refused(session_rate)},
    };
    WRITE_SAMPLES(b, v);
}

static void slack_samples(struct buf *b, struct slack *sl)
{
    struct slack_stats ss;
    slack_get_stats(sl, &ss);
    const struct sample v[] = {
        {"sessiond_slack_events_total", C, "Verified Slack event callbacks.", ss.received},
        {"sessiond_slack_duplicates_total", C, "Slack retries dropped.", ss.duplicates},
        {"sessiond_slack_rejected_total", C, "Slack requests refused.", ss.rejected},
        {"sessiond_slack_posted_total", C, "Slack messages posted.", ss.posted},
    };
    WRITE_SAMPLES(b, v);
}

/* From the registry's records: they survive restarts, as GitHub's pull requests do. */
static void pr_samples(struct buf *b, struct repos *rp)
{
    struct prs_counts pc;
    if (repos_pr_counts(rp, &pc) != 0) {
        return;
    }
    buf_printf(b,
               "# HELP sessiond_pull_requests_total Pull requests opened by sessiond, and of "
               "those merged or closed unmerged.\n"
               "# TYPE sessiond_pull_requests_total counter\n"
               "sessiond_pull_requests_total{event=\"created\"} %lld\n"
               "sessiond_pull_requests_total{event=\"merged\"} %lld\n"
               "sessiond_pull_requests_total{event=\"closed\"} %lld\n",
               (long long)pc.created, (long long)pc.merged, (long long)pc.closed);
}

int api_metrics(struct req *r)
{
    struct app *app = req_app(r);
    struct buf b;
    buf_init(&b, 0);
    metrics_write_http(app->metrics, &b);
    if (app->store) {
        store_samples(&b, app->store);
    }
    if (app->hub) {
        hub_samples(&b, app->hub);
    }
    if (app->runner) {
        runner_samples(&b, app->runner);
    }
    if (app->session_rate) {
        limit_samples(&b, app->session_rate);
    }
    if (app->slack) {
        slack_samples(&b, app->slack);
    }
    if (app->repos) {
        pr_samples(&b, app->repos);
    }
    return req_reply_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
}
