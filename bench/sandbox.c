/*
 * bench/sandbox.c - the sandbox layer without the HTTP server: sandbox start (create → ready)
 * p50/p99, exec of `true` in a ready sandbox (start → exit) p50/p99, first output byte
 * latency, raw output throughput through the pump, and N idle + M busy sandboxes with this
 * process's RSS.
 *
 * Usage: build/bench/sandbox [local|process] [starts] [execs]
 * (bench/sandbox.sh measures the same end to end through the server, with WebSocket delivery.)
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/outpump.h"
#include "sandbox/sbx.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, int64_t *us, int n)
{
    qsort(us, (size_t)n, sizeof *us, cmp64);
    printf("%-34s n=%-5d p50 %8.3f ms   p99 %8.3f ms   max %8.3f ms\n", what, n, us[n / 2] / 1000.0,
           us[(n * 99) / 100 >= n ? n - 1 : (n * 99) / 100] / 1000.0, us[n - 1] / 1000.0);
}

struct lat {
    _Atomic int64_t first_us;
    _Atomic int done;
    _Atomic int64_t bytes;
};

static int on_out(void *ctx, struct sbx_exec *ex, int stream, const char *d, size_t n)
{
    (void)ex;
    (void)stream;
    (void)d;
    struct lat *l = ctx;
    int64_t zero = 0;
    atomic_compare_exchange_strong(&l->first_us, &zero, clock_mono_us());
    atomic_fetch_add(&l->bytes, (int64_t)n);
    return 0;
}

static void on_exit_cb(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st)
{
    (void)ex;
    (void)st;
    struct lat *l = ctx;
    atomic_store(&l->done, 1);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) {
            v = strtol(line + 6, NULL, 10);
        }
    }
    if (f) {
        fclose(f);
    }
    return v;
}

int main(int argc, char **argv)
{
    const char *backend = argc > 1 ? argv[1] : "local";
    int starts = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 100;
    int execs = argc > 3 ? (int)strtol(argv[3], NULL, 10) : 1000;
    log_set_level(LOG_LEVEL_WARN);
    char dir[] = "/tmp/bench-sandbox.XXXXXX";
    if (!mkdtemp(dir)) {
        return 1;
    }
    struct outpump *pump = NULL;
    struct sbx_backend *be = NULL;
    outpump_start(&pump);
    struct sbx_config c = {.backend = backend, .data_dir = dir};
    if (sbx_backend_open(&c, pump, &be)) {
        fprintf(stderr, "backend %s unavailable\n", backend);
        return 1;
    }
    printf("backend %s, %d starts, %d execs\n", backend, starts, execs);

    /* sandbox start: create → ready (sandbox-init's READY frame) */
    int64_t *us = calloc((size_t)(starts > execs ? starts : execs) + 1, sizeof *us);
    for (int i = 0; i < starts; i++) {
        char name[32];
        snprintf(name, sizeof name, "start%d", i);
        struct sbx_spec spec = {.name = name};
        struct sbx *s = NULL;
        int64_t t0 = clock_mono_us();
        if (sbx_create(be, &spec, &s)) {
            fprintf(stderr, "create failed\n");
            return 1;
        }
        us[i] = clock_mono_us() - t0;
        sbx_destroy(s);
    }
    report("sandbox start (create -> ready)", us, starts);

    struct sbx_spec spec = {.name = "exec"};
    struct sbx *s = NULL;
    sbx_create(be, &spec, &s);
    const char *targv[] = {"true", NULL};
    struct sbx_exec_req treq = {.argv = targv};
    static const struct sbx_exec_cb cb = {on_out, on_exit_cb};
    for (int i = 0; i < execs; i++) {
        struct lat l = {0};
        struct sbx_exec *ex = NULL;
        int64_t t0 = clock_mono_us();
        sbx_exec(s, &treq, &cb, &l, &ex);
        while (!atomic_load(&l.done)) {
            /* spin briefly: we measure latency, not CPU */
        }
        us[i] = clock_mono_us() - t0;
        sbx_exec_put(ex);
    }
    report("exec `true` (start -> exit)", us, execs);

    const char *eargv[] = {"/bin/sh", "-c", "echo x; sleep 0.05", NULL};
    struct sbx_exec_req ereq = {.argv = eargv};
    int nfirst = execs / 10 > 10 ? execs / 10 : 10;
    for (int i = 0; i < nfirst; i++) {
        struct lat l = {0};
        struct sbx_exec *ex = NULL;
        int64_t t0 = clock_mono_us();
        sbx_exec(s, &ereq, &cb, &l, &ex);
        while (!atomic_load(&l.first_us)) {
            usleep(50); /* do not steal the CPU from the command on 2 cores */
        }
        us[i] = atomic_load(&l.first_us) - t0;
        while (!atomic_load(&l.done)) {
            usleep(200);
        }
        sbx_exec_put(ex);
    }
    report("first output byte (exec -> callback)", us, nfirst);

    /* raw throughput of 100-byte lines through sandbox-init + pump (no SQLite) */
    const char *fargv[] = {"/bin/sh", "-c", "yes \"$(printf %099d 0)\" | head -c 200000000", NULL};
    struct sbx_exec_req freq = {.argv = fargv};
    struct lat l = {0};
    struct sbx_exec *ex = NULL;
    int64_t t0 = clock_mono_us();
    sbx_exec(s, &freq, &cb, &l, &ex);
    while (!atomic_load(&l.done)) {
        usleep(1000);
    }
    double secs = (double)(clock_mono_us() - t0) / 1e6;
    printf("%-34s %.0f MB/s (%lld bytes in %.2f s)\n", "pump throughput (100-byte lines)",
           (double)atomic_load(&l.bytes) / 1e6 / secs, (long long)atomic_load(&l.bytes), secs);
    sbx_exec_put(ex);
    sbx_destroy(s);

    /* 50 idle + 10 busy sandboxes */
    long rss0 = rss_kib();
    struct sbx *many[60];
    struct lat busy[10];
    struct sbx_exec *bex[10];
    memset(busy, 0, sizeof busy);
    t0 = clock_mono_us();
    for (int i = 0; i < 60; i++) {
        char name[32];
        snprintf(name, sizeof name, "many%d", i);
        struct sbx_spec sp = {.name = name};
        if (sbx_create(be, &sp, &many[i])) {
            fprintf(stderr, "create %d failed\n", i);
            return 1;
        }
    }
    double create_s = (double)(clock_mono_us() - t0) / 1e6;
    const char *bargv[] = {"/bin/sh", "-c", "yes \"$(printf %099d 0)\" | head -c 100000000", NULL};
    struct sbx_exec_req breq = {.argv = bargv};
    t0 = clock_mono_us();
    for (int i = 0; i < 10; i++) {
        sbx_exec(many[50 + i], &breq, &cb, &busy[i], &bex[i]);
    }
    usleep(300000);
    long rss_busy = rss_kib();
    int64_t total = 0;
    for (int i = 0; i < 10; i++) {
        while (!atomic_load(&busy[i].done)) {
            usleep(1000);
        }
        total += atomic_load(&busy[i].bytes);
        sbx_exec_put(bex[i]);
    }
    secs = (double)(clock_mono_us() - t0) / 1e6;
    printf("60 sandboxes started in %.2f s; 10 busy streamed %.0f MB/s in total; RSS %ld KiB "
           "before, %ld KiB with 50 idle + 10 busy\n",
           create_s, (double)total / 1e6 / secs, rss0, rss_busy);
    for (int i = 0; i < 60; i++) {
        sbx_destroy(many[i]);
    }
    sbx_backend_free(be);
    outpump_stop(pump);
    util_rm_rf(dir);
    free(us);
    return 0;
}
