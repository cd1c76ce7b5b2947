/*
 * bench/agents_parse.c - sessiond's own cost per agent event: the CLI adapters' line parsers
 * (issue 7), fed with the stream lines recorded from the real CLIs (tests/fixtures).
 *
 *   build/bench/agents_parse [ROUNDS]     (run from the repository root)
 *
 * Each fixture is parsed ROUNDS times (default 2000) with a callback that only counts the
 * protocol lines; prints, per CLI, microseconds per CLI line and per emitted protocol line.
 * (The commit and WebSocket fan-out after that are measured by bench/sandbox and bench/ws.)
 */
#include "common/clock.h"
#include "agents/adapt_claude.h"
#include "agents/adapt_codex.h"
#include "agents/adapt_opencode.h"
#include "agents/agents.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long emitted;

static void on_line(void *ctx, enum agent_msg type, const char *json, size_t len)
{
    (void)ctx;
    (void)type;
    (void)json;
    (void)len;
    emitted++;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 2000;
    static const struct {
        const char *name;
        const struct agent_adapter *ad;
        const char *path;
    } runs[] = {
        {"claude-code", &adapt_claude, "tests/fixtures/claude-ok.jsonl"},
        {"codex", &adapt_codex, "tests/fixtures/codex-ok.jsonl"},
        {"opencode", &adapt_opencode, "tests/fixtures/opencode-ok.jsonl"},
    };
    const char *secrets[] = {"sk-bench-secret-0123456789", NULL};
    for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
        size_t n;
        char *data = slurp(runs[r].path, &n);
        long lines = 0;
        for (size_t i = 0; i < n; i++) {
            lines += data[i] == '\n';
        }
        emitted = 0;
        int64_t t0 = clock_mono_ns();
        for (int k = 0; k < rounds; k++) {
            struct agent_parser *p;
            agent_parser_new_adapter(runs[r].ad, secrets, on_line, NULL, &p);
            agent_parser_feed(p, data, n);
            agent_parser_finish(p, 0);
            agent_parser_free(p);
        }
        double ns = (double)(clock_mono_ns() - t0);
        printf("{\"bench\":\"agents_parse\",\"agent\":\"%s\",\"rounds\":%d,\"cli_lines\":%ld,"
               "\"bytes\":%zu,\"us_per_cli_line\":%.2f,\"us_per_event\":%.2f,\"MB_s\":%.1f}\n",
               runs[r].name, rounds, lines, n, ns / 1000.0 / (double)(lines * rounds),
               ns / 1000.0 / (double)emitted, (double)n * rounds / (ns / 1e9) / 1e6);
        free(data);
    }
    return 0;
}
