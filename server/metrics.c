/*
 * metrics.c - Prometheus text exposition. Counters are relaxed atomics written by the HTTP
 * pool threads; the scrape reads them and pulls the subsystems' stats. Thread safe.
 */
#include "server/metrics.h"

#include "common/buf.h"
#include "common/xmem.h"
#include "runner/runner.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/ws/hub.h"
#include "server/slack/slack.h"
#include "server/ratelimit.h"
#include "storage/store.h"

#include <stdlib.h>

/* Latency buckets in microseconds (upper bounds); the last is +Inf. */
static const int64_t bucket_us[] = {250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 1000000};
#define NBUCKETS (sizeof(bucket_us) / sizeof(bucket_us[0]))

struct metrics {
    uint64_t by_class[6]; /* index status/100: 1xx..5xx; 0 = aborted */
    uint64_t buckets[NBUCKETS + 1];
    uint64_t sum_us;
    uint64_t count;
};

struct metrics *metrics_new(void)
{
    return xcalloc(1, sizeof(struct metrics));
}

void metrics_free(struct metrics *m)
{
    free(m);
}

void metrics_http_observe(struct metrics *m, int status, int64_t us)
{
    if (!m) {
        return;
    }
    int cls = status / 100;
    if (cls < 0 || cls > 5) {
        cls = 0;
    }
    size_t b = 0;
    while (b < NBUCKETS && us > bucket_us[b]) {
        b++;
    }
    __atomic_fetch_add(&m->by_class[cls], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&m->buckets[b], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&m->sum_us, (uint64_t)(us > 0 ? us : 0), __ATOMIC_RELAXED);
    __atomic_fetch_add(&m->count, 1, __ATOMIC_RELAXED);
}

static uint64_t ld(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void metric(struct buf *b, const char *name, const char *type, const char *help,
                   double value)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

int api_metrics(struct req *r)
{
    struct app *app = req_app(r);
    struct metrics *m = app->metrics;
    struct buf b;
    buf_init(&b, 0);
    if (m) {
        static const char *cls[] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
        buf_puts(&b, "# HELP sessiond_http_requests_total HTTP requests by status class.\n"
                     "# TYPE sessiond_http_requests_total counter\n");
        for (int i = 0; i < 6; i++) {
            buf_printf(&b, "sessiond_http_requests_total{class=\"%s\"} %llu\n", cls[i],
                       (unsigned long long)ld(&m->by_class[i]));
        }
        buf_puts(&b, "# HELP sessiond_http_request_duration_seconds Request latency.\n"
                     "# TYPE sessiond_http_request_duration_seconds histogram\n");
        uint64_t cum = 0;
        for (size_t i = 0; i <= NBUCKETS; i++) {
            cum += ld(&m->buckets[i]);
            if (i < NBUCKETS) {
                buf_printf(&b, "sessiond_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                           (double)bucket_us[i] / 1e6, (unsigned long long)cum);
            } else {
                buf_printf(&b, "sessiond_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                           (unsigned long long)cum);
            }
        }
        buf_printf(&b, "sessiond_http_request_duration_seconds_sum %.6f\n",
                   (double)ld(&m->sum_us) / 1e6);
        buf_printf(&b, "sessiond_http_request_duration_seconds_count %llu\n",
                   (unsigned long long)ld(&m->count));
    }
    if (app->store) {
        struct store_stats s;
        store_get_stats(app->store, &s);
        metric(&b, "sessiond_sessions_open", "gauge", "Session files open now (LRU).",
               (double)s.open_now);
        metric(&b, "sessiond_session_opens_total", "counter", "Session files opened (LRU misses).",
               (double)s.opens);
        metric(&b, "sessiond_session_cache_hits_total", "counter",
               "Session lookups served by an open session.", (double)s.hits);
        metric(&b, "sessiond_session_hibernations_total", "counter",
               "Session files closed by the LRU or idleness.", (double)s.closes);
        metric(&b, "sessiond_session_rescues_total", "counter",
               "Lookups of a session evicted but not yet closed (taken back open).",
               (double)s.rescues);
        metric(&b, "sessiond_session_parked_total", "counter",
               "Comments to hibernated sessions parked in the spool (no wake-up).",
               (double)s.parked);
        metric(&b, "sessiond_spool_folds_total", "counter",
               "Sessions that folded parked comments into their file.", (double)s.folds);
        metric(&b, "sessiond_spool_folded_total", "counter",
               "Parked comments folded into their session file.", (double)s.folded);
        metric(&b, "sessiond_sqlite_page_cache_bytes", "gauge",
               "SQLite page cache of the open session files (at their last commit).",
               (double)s.cache_bytes);
        metric(&b, "sessiond_store_quarantined_total", "counter",
               "Corrupt session files moved to <data_dir>/quarantine/.", (double)s.quarantined);
        metric(&b, "sessiond_wal_checkpoints_total", "counter",
               "Session WAL checkpoints (background, at close, or inline).", (double)s.checkpoints);
        metric(&b, "sessiond_commits_total", "counter", "Group-commit transactions.",
               (double)s.commits);
        metric(&b, "sessiond_commit_ops_total", "counter",
               "Write operations committed (ops/commits = batching).", (double)s.ops);
    }
    if (app->hub) {
        struct hub_stats h;
        hub_get_stats(app->hub, &h);
        metric(&b, "sessiond_ws_clients", "gauge", "WebSocket clients connected.",
               (double)h.clients);
        metric(&b, "sessiond_ws_sessions", "gauge", "Sessions with a connected client.",
               (double)h.sessions);
        metric(&b, "sessiond_ws_events_in_total", "counter", "Events received by the hub.",
               (double)h.events_in);
        metric(&b, "sessiond_ws_event_deliveries_total", "counter",
               "Event deliveries (one event to one client).", (double)h.events_out);
        metric(&b, "sessiond_ws_frames_out_total", "counter", "WebSocket frames written.",
               (double)h.frames_out);
        metric(&b, "sessiond_ws_gaps_total", "counter", "gap frames sent to lagging clients.",
               (double)h.gaps);
        metric(&b, "sessiond_ws_culled_total", "counter", "Clients closed for being stuck.",
               (double)h.culled);
    }
    if (app->runner) {
        struct runner_stats rs;
        runner_get_stats(app->runner, &rs);
        metric(&b, "sessiond_sandboxes", "gauge", "Live sandboxes.", (double)rs.sandboxes);
        metric(&b, "sessiond_prompts_running", "gauge", "Prompts running now.", (double)rs.running);
        metric(&b, "sessiond_prompts_started_total", "counter", "Prompts started.",
               (double)rs.started);
        metric(&b, "sessiond_prompts_completed_total", "counter", "Prompts completed.",
               (double)rs.completed);
        metric(&b, "sessiond_prompts_failed_total", "counter", "Prompts failed.",
               (double)rs.failed);
        metric(&b, "sessiond_prompts_cancelled_total", "counter", "Prompts cancelled.",
               (double)rs.cancelled);
        metric(&b, "sessiond_sandbox_slots_used", "gauge",
               "Sandbox slots taken (live counted sandboxes and starts; max_sandboxes).",
               (double)rs.slots_used);
        metric(&b, "sessiond_sandbox_pool_slots_used", "gauge",
               "Of which warm-pool sandboxes not yet given to a session.",
               (double)rs.pool_sandboxes);
        metric(&b, "sessiond_sandbox_waiting", "gauge",
               "Prompt starts waiting for a sandbox slot now.", (double)rs.waiting);
        metric(&b, "sessiond_sandbox_limit_refused_total", "counter",
               "Sandbox starts answered 429 sandbox_limit.", (double)rs.sandbox_refused);
        metric(&b, "sessiond_sandbox_limit_waits_total", "counter",
               "Prompt starts that waited for a sandbox slot.", (double)rs.sandbox_waits);
        metric(&b, "sessiond_sandbox_evicted_total", "counter",
               "Idle sandboxes stopped to give their slot to a start.", (double)rs.sandbox_evicted);
        metric(&b, "sessiond_exec_limit_refused_total", "counter",
               "Execs refused: max_execs_per_session running.", (double)rs.exec_refused);
        metric(&b, "sessiond_prompt_output_truncated_total", "counter",
               "Prompts whose stored output hit a cap (agent.truncated).",
               (double)rs.output_truncated);
    }
    if (app->session_rate) {
        metric(&b, "sessiond_session_create_limited_total", "counter",
               "Session creations refused: max_sessions_per_minute.",
               (double)rl_refused(app->session_rate));
    }
    if (app->slack) {
        struct slack_stats ss;
        slack_get_stats(app->slack, &ss);
        metric(&b, "sessiond_slack_events_total", "counter", "Verified Slack event callbacks.",
               (double)ss.received);
        metric(&b, "sessiond_slack_duplicates_total", "counter", "Slack retries dropped.",
               (double)ss.duplicates);
        metric(&b, "sessiond_slack_rejected_total", "counter", "Slack requests refused.",
               (double)ss.rejected);
        metric(&b, "sessiond_slack_posted_total", "counter", "Slack messages posted.",
               (double)ss.posted);
    }
    return req_reply_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
}
