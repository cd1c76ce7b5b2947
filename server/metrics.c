/*
 * metrics.c - the server's own counters (HTTP requests by status class and latency) and their
 * Prometheus text. Counters are relaxed atomics written by the HTTP pool threads and read by
 * the scrape (server/api/api_metrics.c, which adds the other parts' stats). Thread safe.
 */
#include "server/metrics.h"

#include "common/buf.h"
#include "common/xmem.h"

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

void metrics_write_http(struct metrics *m, struct buf *b)
{
    static const char *const cls[] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
    if (!m) {
        return;
    }
    buf_puts(b, "# HELP sessiond_http_requests_total HTTP requests by status class.\n"
                "# TYPE sessiond_http_requests_total counter\n");
    for (int i = 0; i < 6; i++) {
        buf_printf(b, "sessiond_http_requests_total{class=\"%s\"} %llu\n", cls[i],
                   (unsigned long long)ld(&m->by_class[i]));
    }
    buf_puts(b, "# HELP sessiond_http_request_duration_seconds Request latency.\n"
                "# TYPE sessiond_http_request_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i <= NBUCKETS; i++) {
        cum += ld(&m->buckets[i]);
        if (i < NBUCKETS) {
            buf_printf(b, "sessiond_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                       (double)bucket_us[i] / 1e6, (unsigned long long)cum);
        } else {
            buf_printf(b, "sessiond_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                       (unsigned long long)cum);
        }
    }
    buf_printf(b, "sessiond_http_request_duration_seconds_sum %.6f\n",
               (double)ld(&m->sum_us) / 1e6);
    buf_printf(b, "sessiond_http_request_duration_seconds_count %llu\n",
               (unsigned long long)ld(&m->count));
}
