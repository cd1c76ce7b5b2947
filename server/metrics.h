/*
 * metrics.h - the server's own Prometheus counters: HTTP requests (fed by http.c). Everything
 * else GET /metrics shows (server/api/api_metrics.h) is pulled from the parts' own stats at
 * scrape time (store, hub, runner, slack), so no hot path pays for a metric it already counts.
 * A struct metrics is thread safe (relaxed atomics).
 */
#ifndef SESSIOND_METRICS_H
#define SESSIOND_METRICS_H

#include <stdint.h>

struct buf;
struct metrics;

/** Allocate the counters (app.c owns them; metrics_free(NULL) is a no-op). */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);
/** Count one finished HTTP request. m may be NULL. */
void metrics_http_observe(struct metrics *m, int status, int64_t us);
/** Append the HTTP counters in Prometheus text exposition format 0.0.4. m may be NULL. */
void metrics_write_http(struct metrics *m, struct buf *b);

#endif
