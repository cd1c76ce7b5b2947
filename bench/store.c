/*
 * bench/store.c - the storage ceiling: T threads append 200-byte events into one session
 * (group commit), then into S sessions chosen at random with a small LRU cap.
 * Usage: build/bench/store [threads] [events_per_thread] [sessions] [max_open]
 * (STORE_BENCH_CACHE_KIB: page cache per session file)
 * Prints events/s, commits (transactions) and the LRU hit rate.
 */
#include "common/clock.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static struct store *st;
static int per_thread = 20000;
static int nsessions = 1;
static char data[300];

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    char id[32];
    for (int i = 0; i < per_thread; i++) {
        struct sess *s = NULL;
        snprintf(id, sizeof(id), "b%d", nsessions > 1 ? (int)(rand_r(&seed) % nsessions) : 0);
        if (store_session_get(st, id, &s) == 0) {
            sess_append(s, "message", NULL, data, NULL);
            sess_put(s);
        }
    }
    return NULL;
}

static void run(int threads, const char *label)
{
    pthread_t th[64];
    struct store_stats a, b;
    store_get_stats(st, &a);
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    int64_t t0 = clock_mono_ns();
    for (int i = 0; i < threads; i++) {
        pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
    }
    double secs = (double)(clock_mono_ns() - t0) / 1e9;
    getrusage(RUSAGE_SELF, &ru1);
    /* CPU time per op stays meaningful when other processes compete for the cores. */
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec -
                          ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec -
                          ru0.ru_stime.tv_usec) /
                     1e6;
    store_get_stats(st, &b);
    uint64_t gets = (b.hits - a.hits) + (b.opens - a.opens);
    printf("%-22s %8.0f events/s  %6.1f us CPU/op  %llu commits for %llu ops  hit rate %.1f%%  "
           "rescues %llu  checkpoints %llu\n",
           label, (double)(b.ops - a.ops) / secs, 1e6 * cpu / (double)(b.ops - a.ops),
           (unsigned long long)(b.commits - a.commits), (unsigned long long)(b.ops - a.ops),
           gets ? 100.0 * (double)(b.hits - a.hits) / (double)gets : 0.0,
           (unsigned long long)(b.rescues - a.rescues),
           (unsigned long long)(b.checkpoints - a.checkpoints));
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 4;
    per_thread = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 20000;
    int many = argc > 3 ? (int)strtol(argv[3], NULL, 10) : 1000;
    int max_open = argc > 4 ? (int)strtol(argv[4], NULL, 10) : 256;
    /* STORE_BENCH_DIR=D reuses the sessions of an earlier run in D (created if missing), so
     * a profiler attached to this run sees the measured phases, not the setup. */
    char tmpl[] = "/tmp/sessiond-bench-store.XXXXXX";
    const char *dir = getenv("STORE_BENCH_DIR");
    int reuse = dir && access(dir, F_OK) == 0;
    if (!dir) {
        dir = mkdtemp(tmpl);
    }
    if (!dir || threads < 1 || threads > 64) {
        return 2;
    }
    snprintf(data, sizeof(data), "{\"content\":\"%0200d\"}", 0);
    /* STORE_BENCH_CACHE_KIB=N: the page cache of each session file (the store's default if
     * unset), to weigh memory against speed. */
    const char *ck = getenv("STORE_BENCH_CACHE_KIB");
    struct store_config cfg = {
        .data_dir = dir, .max_open = max_open, .cache_kib = ck ? (int)strtol(ck, NULL, 10) : 0};
    if (store_open(&cfg, &st)) {
        return 1;
    }
    char id[32];
    for (int i = 0; i < many && !reuse; i++) {
        snprintf(id, sizeof(id), "b%d", i);
        struct session_new n = {.id = id, .created_by = "bench"};
        registry_session_create(store_registry(st), &n, NULL);
        store_session_create(st, id);
    }
    nsessions = 1;
    run(threads, "one session");
    nsessions = many;
    run(threads, "random over sessions");
    run(threads, "random, again");
    store_close(st);
    printf("data dir: %s\n", dir);
    return 0;
}
