/*
 * bench/store.c - the storage ceiling: T threads append 200-byte events into one session
 * (group commit), then into S sessions chosen at random with a small LRU cap.
 * Usage: build/bench/store [threads] [events_per_thread] [sessions] [max_open]
 * Prints events/s, commits (transactions) and the LRU hit rate.
 */
#include "common/clock.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

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
    int64_t t0 = clock_mono_ns();
    for (int i = 0; i < threads; i++) {
        pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
    }
    double secs = (double)(clock_mono_ns() - t0) / 1e9;
    store_get_stats(st, &b);
    uint64_t gets = (b.hits - a.hits) + (b.opens - a.opens);
    printf("%-28s %9.0f events/s  %llu commits for %llu ops  hit rate %.1f%%\n", label,
           (double)(b.ops - a.ops) / secs, (unsigned long long)(b.commits - a.commits),
           (unsigned long long)(b.ops - a.ops),
           gets ? 100.0 * (double)(b.hits - a.hits) / (double)gets : 0.0);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 4;
    per_thread = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 20000;
    int many = argc > 3 ? (int)strtol(argv[3], NULL, 10) : 1000;
    int max_open = argc > 4 ? (int)strtol(argv[4], NULL, 10) : 256;
    char dir[] = "/tmp/sessiond-bench-store.XXXXXX";
    if (!mkdtemp(dir) || threads < 1 || threads > 64) {
        return 2;
    }
    snprintf(data, sizeof(data), "{\"content\":\"%0200d\"}", 0);
    struct store_config cfg = {.data_dir = dir, .max_open = max_open};
    if (store_open(&cfg, &st)) {
        return 1;
    }
    char id[32];
    for (int i = 0; i < many; i++) {
        snprintf(id, sizeof(id), "b%d", i);
        struct session_new n = {.id = id, .created_by = "bench"};
        registry_session_create(store_registry(st), &n, NULL);
        store_session_create(st, id);
    }
    nsessions = 1;
    run(threads, "one session");
    nsessions = many;
    run(threads, "random over sessions");
    store_close(st);
    printf("data dir: %s\n", dir);
    return 0;
}
