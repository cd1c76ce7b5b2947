/*
 * bench/redact.c - the cost of scrubbing secrets from sandbox output (common/redact.h).
 *
 *   build/bench/redact [MB] [CHUNK]      (defaults: 50 MB in 16 KiB chunks, the pump's size)
 *
 * For N = 0, 1, 10, 50 configured secrets, MB of log-like output (printable lines, a few
 * percent of them base64, none holding a secret, so every position is scanned) goes through
 * what an exec's output costs sessiond per chunk before SQLite: the exec.output event's JSON
 * (buf_json_str) with, for N > 0, a streaming redactor in front. Prints MB/s and the ratio to
 * N = 0. The pipeline behind (group commit, WebSocket fan-out) costs more than the JSON, so
 * the ratio here is an upper bound of the overhead end to end (bench/redact.sh measures that).
 */
#include "common/buf.h"
#include "common/clock.h"
#include "common/redact.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Lines like a build's: words, paths, numbers, now and then base64. */
static char *make_text(size_t n)
{
    static const char *const words[] = {"npm",
                                        "install",
                                        "added",
                                        "packages",
                                        "in",
                                        "12s",
                                        "warn",
                                        "deprecated",
                                        "src/index.ts",
                                        "error",
                                        "0.4.1",
                                        "node_modules/.bin/tsc",
                                        "--build",
                                        "=>",
                                        "ok",
                                        "PASS",
                                        "test/unit.spec.js"};
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *t = malloc(n);
    size_t i = 0;
    while (i < n) {
        if (next() % 20 == 0) {
            for (int k = 0; k < 76 && i < n; k++) {
                t[i++] = b64[next() % 64];
            }
        } else {
            int nw = 3 + (int)(next() % 10);
            for (int k = 0; k < nw && i < n; k++) {
                const char *w = words[next() % (sizeof(words) / sizeof(words[0]))];
                for (size_t j = 0; w[j] && i < n; j++) {
                    t[i++] = w[j];
                }
                if (i < n) {
                    t[i++] = ' ';
                }
            }
        }
        if (i < n) {
            t[i++] = '\n';
        }
    }
    return t;
}

static struct redact_set *make_set(int n)
{
    struct redact_set *s = redact_set_new();
    for (int i = 0; i < n; i++) {
        char name[32], val[48];
        snprintf(name, sizeof(name), "SECRET_%d", i);
        /* token-like values: a prefix real tokens share, then random characters */
        snprintf(val, sizeof(val), "%s_%016llx%08x", i % 2 ? "ghp" : "npm",
                 (unsigned long long)next(), (unsigned)next());
        redact_set_add(s, name, val, strlen(val));
    }
    return s;
}

/* CPU seconds of this thread: the machine is shared, wall time is not ours alone. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds to push text through (redactor +) event JSON, chunk bytes at a time. */
static double run(const char *text, size_t n, size_t chunk, struct redact_set *set, size_t *outb)
{
    struct redactor *r = set ? redactor_new(set) : NULL;
    struct buf clean, ev;
    buf_init(&clean, 0);
    buf_init(&ev, 0);
    *outb = 0;
    double t0 = cpu_s();
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        const char *p = text + off;
        if (r) {
            buf_reset(&clean);
            redactor_feed(r, p, len, &clean);
            p = clean.data;
            len = clean.len;
        }
        buf_reset(&ev);
        buf_puts(&ev, "{\"exec_id\":\"x_0123456789abcdef0123\",\"stream\":\"stdout\",\"data\":");
        buf_json_str(&ev, p ? p : "", len);
        buf_putc(&ev, '}');
        *outb += ev.len;
    }
    if (r) {
        buf_reset(&clean);
        redactor_flush(r, &clean);
        *outb += clean.len;
    }
    double s = cpu_s() - t0;
    redactor_free(r);
    buf_free(&clean);
    buf_free(&ev);
    return s;
}

int main(int argc, char **argv)
{
    size_t mb = argc > 1 ? strtoul(argv[1], NULL, 10) : 50;
    size_t chunk = argc > 2 ? strtoul(argv[2], NULL, 10) : 16384;
    size_t n = mb << 20;
    char *text = make_text(n);
    enum { NS = 4, ROUNDS = 7 };
    static const int ns[NS] = {0, 1, 10, 50};
    struct redact_set *sets[NS];
    double best[NS];
    size_t outb = 0;
    for (int i = 0; i < NS; i++) {
        sets[i] = ns[i] ? make_set(ns[i]) : NULL;
        best[i] = 1e9;
    }
    /* Interleaved rounds, best of each: other load on the machine hits every case alike. */
    for (int k = 0; k < ROUNDS; k++) {
        for (int i = 0; i < NS; i++) {
            double s = run(text, n, chunk, sets[i], &outb);
            best[i] = s < best[i] ? s : best[i];
        }
    }
    printf("redaction of %zu MB of output in %zu-byte chunks (CPU time, best of %d)\n", mb, chunk,
           (int)ROUNDS);
    for (int i = 0; i < NS; i++) {
        printf("%2d secrets: %7.1f MB/s  %7.1f ms  x%.3f of no secrets\n", ns[i],
               (double)mb / best[i], best[i] * 1000, best[i] / best[0]);
        redact_set_unref(sets[i]);
    }
    free(text);
    return 0;
}
