/*
 * api_metrics.h - GET /metrics: Prometheus text exposition format 0.0.4 of the server's HTTP
 * counters (server/metrics.h) and the stats each running part keeps (store, hub, runner, the
 * session rate limit, Slack), read at scrape time.
 *
 * Threads: HTTP pool threads; every stats call is thread safe.
 */
#ifndef SESSIOND_API_METRICS_H
#define SESSIOND_API_METRICS_H

struct req;

/** GET /metrics (ROUTE_PUBLIC). */
int api_metrics(struct req *r);

#endif
