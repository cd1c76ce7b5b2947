/*
 * adapt_harness.h - the body of the three agent stream harnesses (fuzz_adapt_*.c): one run of
 * an adapter's parser over hostile CLI output. Each harness file defines FUZZ_ADAPTER (the
 * struct agent_adapter) and includes this.
 *
 * Input: byte 0 picks the chunk sizes stdout is fed in (lines split anywhere), byte 1 the
 * exit code, then "STDERR\n" and the rest is stdout.
 * Properties: every emitted line is one JSON object whose "type" matches its kind; the
 * registered secret never appears in one; at most one terminal line (done or error), nothing
 * after it, and one once the run is finished.
 */
#ifndef SESSIOND_ADAPT_HARNESS_H
#define SESSIOND_ADAPT_HARNESS_H

#include "common/log.h"
#include "agents/agents.h"

#include "fuzzlib.h"

#define FUZZ_SECRET "sk-fuzz-7c1e5a9d"

struct run {
    int terminal; /* done/error lines seen */
    int after;    /* lines after the terminal one */
};

static void on_line(void *ctx, enum agent_msg type, const char *js, size_t len)
{
    static const char *const names[] = {"",     "output", "tool_call", "tool_result",
                                        "done", "error",  "status",    "file_changed"};
    struct run *r = ctx;
    FZ_CHECK(memchr(js, 0, len) == NULL);
    FZ_CHECK(!memmem(js, len, FUZZ_SECRET, strlen(FUZZ_SECRET)));
    json_t *o = json_loadb(js, len, 0, NULL);
    FZ_CHECK(json_is_object(o));
    const char *t = json_string_value(json_object_get(o, "type"));
    FZ_CHECK(t && type >= AGENT_MSG_OUTPUT && type <= AGENT_MSG_FILE_CHANGED);
    FZ_CHECK(strcmp(t, names[type]) == 0);
    json_decref(o);
    if (r->terminal) {
        r->after++;
    }
    if (type == AGENT_MSG_DONE || type == AGENT_MSG_ERROR) {
        r->terminal++;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_OFF);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const secrets[] = {FUZZ_SECRET, NULL};
    struct fz f = {data, size};
    struct run r = {0, 0};
    struct agent_parser *p = NULL;
    size_t step = fz_byte(&f) % 64 + 1;
    int exit_code = (int)fz_byte(&f) % 4 - 1; /* -1 (killed), 0, 1, 2 */
    size_t elen, olen;
    char *err = fz_field(&f, &elen);
    char *out = fz_rest(&f, &olen);
    FZ_CHECK(agent_parser_new_adapter(&FUZZ_ADAPTER, secrets, on_line, &r, &p) == 0);
    for (size_t off = 0; off < olen;) {
        size_t k = olen - off < step ? olen - off : step;
        agent_parser_feed(p, out + off, k);
        off += k;
        step = step * 7 % 61 + 1;
    }
    agent_parser_stderr(p, err, elen);
    const char *tail = agent_parser_stderr_tail(p);
    FZ_CHECK(tail && !strstr(tail, FUZZ_SECRET));
    agent_parser_finish(p, exit_code);
    FZ_CHECK(agent_parser_ended(p));
    FZ_CHECK(r.terminal == 1 && r.after == 0);
    agent_parser_finish(p, exit_code); /* idempotent */
    FZ_CHECK(r.terminal == 1);
    agent_parser_free(p);
    free(err);
    free(out);
    return 0;
}

#endif
