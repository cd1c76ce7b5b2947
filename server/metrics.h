/*
 * metrics.h - Prometheus metrics: GET /metrics.
 *
 * HTTP request counters live here (fed by http.c); everything else is pulled from the
 * subsystems' own stats at scrape time (store, hub, runner, slack), so no hot path pays for a
 * metric it already counts. A struct metrics is thread safe (relaxed atomics).
 */
#ifndef SESSIOND_METRICS_H
#define SESSIOND_METRICS_H

#include <stdint.h>

struct metrics;
struct req;

/** Allocate the counters (main.c owns them; metrics_free(NULL) is a no-op). */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);
/** Count one finished HTTP request. m may be NULL. */
void metrics_http_observe(struct metrics *m, int status, int64_t us);
/** GET /metrics: Prometheus text exposition format 0.0.4. */
int api_metrics(struct req *r);

#endif
