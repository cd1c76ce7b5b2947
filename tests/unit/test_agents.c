/*
 * test_agents.c - the CLI adapters' line parsers, fed with stream lines recorded from the real
 * CLIs (the .jsonl files in tests/fixtures, recorded against tests/model-server.mjs), plus the
 * named agent config and the launch builder.
 */
#include "testlib.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "common/xmem.h"
#include "agents/adapt_claude.h"
#include "agents/adapt_codex.h"
#include "agents/adapt_opencode.h"
#include "agents/agents.h"
#include "sandbox/egress/egress.h"

#include <jansson.h>
#include <sys/stat.h>

#define FINAL "All done: created shell.txt with the shell tool and edit.txt with the edit tool."

/* Everything one parser run emitted. */
struct rec {
    json_t *lines; /* array of the parsed protocol lines */
    struct buf text;
    int outputs, calls, results, done, errors, statuses;
};

static void on_line(void *ctx, enum agent_msg type, const char *js, size_t len)
{
    struct rec *r = ctx;
    json_t *o = json_loadb(js, len, 0, NULL);
    if (!o) {
        TFAIL("emitted line is not JSON: %.*s", (int)len, js);
    }
    const char *t = json_string_value(json_object_get(o, "type"));
    ASSERT(t != NULL);
    switch (type) {
    case AGENT_MSG_OUTPUT:
        ASSERT_STREQ(t, "output");
        r->outputs++;
        buf_puts(&r->text, json_string_value(json_object_get(o, "text")));
        break;
    case AGENT_MSG_TOOL_CALL:
        ASSERT_STREQ(t, "tool_call");
        r->calls++;
        break;
    case AGENT_MSG_TOOL_RESULT:
        ASSERT_STREQ(t, "tool_result");
        r->results++;
        break;
    case AGENT_MSG_DONE:
        ASSERT_STREQ(t, "done");
        r->done++;
        break;
    case AGENT_MSG_ERROR:
        ASSERT_STREQ(t, "error");
        r->errors++;
        break;
    case AGENT_MSG_STATUS:
        ASSERT_STREQ(t, "status");
        r->statuses++;
        break;
    case AGENT_MSG_FILE_CHANGED:
        ASSERT_STREQ(t, "file_changed");
        break;
    }
    json_array_append_new(r->lines, o);
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        TFAIL("cannot open %s (run from the repository root)", path);
    }
    struct buf b;
    buf_init(&b, 0);
    char tmp[4096];
    size_t k;
    while ((k = fread(tmp, 1, sizeof(tmp), f)) > 0) {
        buf_append(&b, tmp, k);
    }
    fclose(f);
    return buf_detach(&b, n);
}

/* Feed a fixture in chunks of varying size (lines split anywhere), then finish. */
static void run_fixture(const struct agent_adapter *ad, const char *path, int exit_code,
                        const char *const *secrets, struct rec *r)
{
    size_t n;
    char *data = slurp(path, &n);
    struct agent_parser *p;
    memset(r, 0, sizeof(*r));
    r->lines = json_array();
    buf_init(&r->text, 0);
    ASSERT_EQ(agent_parser_new_adapter(ad, secrets, on_line, r, &p), 0);
    size_t off = 0, step = 1;
    while (off < n) {
        size_t k = n - off < step ? n - off : step;
        agent_parser_feed(p, data + off, k);
        off += k;
        step = step * 3 % 997 + 1;
    }
    agent_parser_finish(p, exit_code);
    ASSERT(agent_parser_ended(p));
    agent_parser_free(p);
    free(data);
}

static void rec_free(struct rec *r)
{
    json_decref(r->lines);
    buf_free(&r->text);
}

/* The n-th line of a type. */
static json_t *nth(struct rec *r, const char *type, int n)
{
    size_t i;
    json_t *o;
    json_array_foreach(r->lines, i, o)
    {
        if (strcmp(json_string_value(json_object_get(o, "type")), type) == 0 && n-- == 0) {
            return o;
        }
    }
    TFAIL("no %s line #%d", type, n);
}

static const char *sget(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* Every tool_result has the id of an earlier tool_call, in order; no call is left open. */
static void check_pairs(struct rec *r, int expect)
{
    ASSERT_EQ(r->calls, expect);
    ASSERT_EQ(r->results, expect);
    for (int i = 0; i < expect; i++) {
        json_t *c = nth(r, "tool_call", i);
        json_t *res = nth(r, "tool_result", i);
        ASSERT(*sget(c, "id"));
        ASSERT_STREQ(sget(c, "id"), sget(res, "id"));
        ASSERT(json_is_object(json_object_get(c, "input")));
        ASSERT(json_is_boolean(json_object_get(res, "is_error")));
        /* the call comes before its result */
        size_t i_c = 0, i_r = 0, k;
        json_t *o;
        json_array_foreach(r->lines, k, o)
        {
            if (o == c) {
                i_c = k;
            }
            if (o == res) {
                i_r = k;
            }
        }
        ASSERT(i_c < i_r);
    }
}

/* Deltas, not cumulative: several outputs whose concatenation is the final text once. */
static void check_text(struct rec *r, int min_outputs)
{
    ASSERT(r->outputs >= min_outputs);
    ASSERT_STREQ(r->text.data, FINAL);
}

static int64_t usage(struct rec *r, const char *k)
{
    return json_integer_value(json_object_get(json_object_get(nth(r, "done", 0), "usage"), k));
}

TEST(claude_ok)
{
    struct rec r;
    run_fixture(&adapt_claude, "tests/fixtures/claude-ok.jsonl", 0, NULL, &r);
    check_text(&r, 5);
    check_pairs(&r, 2);
    ASSERT_STREQ(sget(nth(&r, "tool_call", 0), "name"), "Bash");
    ASSERT_STREQ(sget(nth(&r, "tool_call", 1), "name"), "Edit");
    ASSERT_STREQ(sget(json_object_get(nth(&r, "tool_call", 0), "input"), "command"),
                 "echo made-by-shell > shell.txt");
    ASSERT(json_is_false(json_object_get(nth(&r, "tool_result", 0), "is_error")));
    ASSERT_EQ(r.done, 1);
    ASSERT_EQ(r.errors, 0);
    json_t *d = nth(&r, "done", 0);
    ASSERT_STREQ(sget(d, "summary"), FINAL);
    ASSERT_EQ(json_integer_value(json_object_get(d, "turns")), 3);
    ASSERT_EQ(usage(&r, "input_tokens"), 3431);
    ASSERT_EQ(usage(&r, "output_tokens"), 51);
    /* nothing after the terminal line */
    ASSERT_STREQ(sget(json_array_get(r.lines, json_array_size(r.lines) - 1), "type"), "done");
    rec_free(&r);
}

TEST(claude_fail400)
{
    struct rec r;
    run_fixture(&adapt_claude, "tests/fixtures/claude-fail400.jsonl", 1, NULL, &r);
    ASSERT_EQ(r.errors, 1);
    ASSERT_EQ(r.done, 0);
    ASSERT_EQ(r.outputs, 0); /* the synthetic "API Error" message is not agent text */
    const char *reason = sget(nth(&r, "error", 0), "reason");
    ASSERT(strstr(reason, "400") != NULL);
    ASSERT(strstr(reason, "scripted model error") != NULL);
    rec_free(&r);
}

TEST(claude_tool_error)
{
    struct rec r;
    run_fixture(&adapt_claude, "tests/fixtures/claude-toolerror.jsonl", 0, NULL, &r);
    check_pairs(&r, 1);
    json_t *res = nth(&r, "tool_result", 0);
    ASSERT(json_is_true(json_object_get(res, "is_error")));
    ASSERT(strstr(sget(res, "output"), "No such file or directory") != NULL);
    ASSERT_EQ(r.done, 1);
    rec_free(&r);
}

TEST(codex_ok)
{
    struct rec r;
    run_fixture(&adapt_codex, "tests/fixtures/codex-ok.jsonl", 0, NULL, &r);
    check_text(&r, 1);
    check_pairs(&r, 2);
    ASSERT_STREQ(sget(nth(&r, "tool_call", 0), "name"), "shell");
    ASSERT_STREQ(sget(nth(&r, "tool_call", 1), "name"), "apply_patch");
    ASSERT(strstr(sget(nth(&r, "tool_result", 1), "output"), "edit.txt") != NULL);
    ASSERT_EQ(r.done, 1);
    json_t *d = nth(&r, "done", 0);
    ASSERT_STREQ(sget(d, "summary"), FINAL);
    ASSERT_EQ(json_integer_value(json_object_get(d, "turns")), 3);
    ASSERT_EQ(usage(&r, "input_tokens"), 28831);
    ASSERT_EQ(usage(&r, "output_tokens"), 51);
    rec_free(&r);
}

TEST(codex_fail400)
{
    struct rec r;
    run_fixture(&adapt_codex, "tests/fixtures/codex-fail400.jsonl", 1, NULL, &r);
    ASSERT_EQ(r.errors, 1);
    ASSERT_EQ(r.done, 0);
    /* the API's own message, unwrapped from the JSON body */
    ASSERT_STREQ(sget(nth(&r, "error", 0), "reason"),
                 "scripted model error 400: this request was refused by the test model server");
    rec_free(&r);
}

TEST(codex_tool_error)
{
    struct rec r;
    run_fixture(&adapt_codex, "tests/fixtures/codex-toolerror.jsonl", 0, NULL, &r);
    check_pairs(&r, 1);
    ASSERT(json_is_true(json_object_get(nth(&r, "tool_result", 0), "is_error")));
    rec_free(&r);
}

TEST(opencode_ok)
{
    struct rec r;
    run_fixture(&adapt_opencode, "tests/fixtures/opencode-ok.jsonl", 0, NULL, &r);
    check_text(&r, 1);
    check_pairs(&r, 2);
    ASSERT_STREQ(sget(nth(&r, "tool_call", 0), "name"), "bash");
    ASSERT_STREQ(sget(nth(&r, "tool_call", 1), "name"), "write");
    ASSERT_EQ(r.done, 1);
    json_t *d = nth(&r, "done", 0);
    ASSERT_STREQ(sget(d, "summary"), FINAL);
    ASSERT_EQ(json_integer_value(json_object_get(d, "turns")), 3);
    ASSERT(usage(&r, "input_tokens") > 0);
    ASSERT_EQ(usage(&r, "output_tokens"), 51);
    rec_free(&r);
}

TEST(opencode_fail400)
{
    struct rec r;
    run_fixture(&adapt_opencode, "tests/fixtures/opencode-fail400.jsonl", 1, NULL, &r);
    ASSERT_EQ(r.errors, 1); /* OpenCode prints the error twice: reported once */
    ASSERT_EQ(r.done, 0);
    const char *reason = sget(nth(&r, "error", 0), "reason");
    ASSERT(strstr(reason, "400") != NULL);
    ASSERT(strstr(reason, "scripted model error") != NULL);
    rec_free(&r);
}

/* A tool's output that is a JSON scalar (a number, null): json_dumps gave NULL for it and the
 * adapter passed it to strlen, so an agent could crash the server with one line (found by the
 * adapt_opencode fuzz harness; its input is in the corpus). */
TEST(opencode_scalar_tool_output)
{
    struct rec r;
    run_fixture(&adapt_opencode, "tests/fixtures/opencode-scalar-output.jsonl", 0, NULL, &r);
    check_pairs(&r, 2);
    ASSERT_STREQ(sget(nth(&r, "tool_result", 0), "output"), "5");
    ASSERT(json_is_true(json_object_get(nth(&r, "tool_result", 1), "is_error")));
    rec_free(&r);
}

TEST(opencode_tool_error)
{
    struct rec r;
    run_fixture(&adapt_opencode, "tests/fixtures/opencode-toolerror.jsonl", 0, NULL, &r);
    check_pairs(&r, 1);
    ASSERT(json_is_true(json_object_get(nth(&r, "tool_result", 0), "is_error")));
    rec_free(&r);
}

/* A run that ends without a result: the reason says so and carries stderr's last line. */
static void no_result(const struct agent_adapter *ad)
{
    struct rec r;
    struct agent_parser *p;
    memset(&r, 0, sizeof(r));
    r.lines = json_array();
    ASSERT_EQ(agent_parser_new_adapter(ad, NULL, on_line, &r, &p), 0);
    agent_parser_feed(p, "not json at all\n", 16);
    agent_parser_stderr(p, "noise\nfatal: could not reach the model\n", 39);
    agent_parser_finish(p, 3);
    ASSERT_EQ(r.errors, 1);
    const char *reason = sget(nth(&r, "error", 0), "reason");
    ASSERT(strstr(reason, "status 3") != NULL);
    ASSERT(strstr(reason, "fatal: could not reach the model") != NULL);
    agent_parser_finish(p, 3); /* idempotent */
    ASSERT_EQ(r.errors, 1);
    struct agent_parser_stats s;
    agent_parser_stats(p, &s);
    ASSERT_EQ(s.bad_lines, 1);
    agent_parser_free(p);
    rec_free(&r);
}

TEST(no_result_is_error)
{
    no_result(&adapt_claude);
    no_result(&adapt_codex);
    no_result(&adapt_opencode);
}

TEST(killed_is_error)
{
    struct rec r;
    struct agent_parser *p;
    memset(&r, 0, sizeof(r));
    r.lines = json_array();
    ASSERT_EQ(agent_parser_new_adapter(&adapt_opencode, NULL, on_line, &r, &p), 0);
    agent_parser_feed(p, "{\"type\":\"step_start\",\"part\":{}}\n", 33);
    agent_parser_finish(p, -1);
    ASSERT_EQ(r.done, 0);
    ASSERT(strstr(sget(nth(&r, "error", 0), "reason"), "killed") != NULL);
    agent_parser_free(p);
    rec_free(&r);
}

/* A tool printing the environment must not put the key into an event. */
TEST(secret_scrubbed)
{
    const char *key = "sk-ant-TESTKEY-0123456789abcdef";
    const char *const secrets[] = {key, NULL};
    struct rec r;
    struct agent_parser *p;
    memset(&r, 0, sizeof(r));
    r.lines = json_array();
    buf_init(&r.text, 0);
    ASSERT_EQ(agent_parser_new_adapter(&adapt_claude, secrets, on_line, &r, &p), 0);
    char line[1024];
    snprintf(line, sizeof(line),
             "{\"type\":\"user\",\"message\":{\"content\":[{\"type\":\"tool_result\","
             "\"tool_use_id\":\"t1\",\"content\":\"ANTHROPIC_API_KEY=%s\\nHOME=/x\"}]}}\n"
             "{\"type\":\"stream_event\",\"parent_tool_use_id\":null,\"event\":{\"type\":"
             "\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"key %s!\"}}}\n",
             key, key);
    agent_parser_feed(p, line, strlen(line));
    agent_parser_stderr(p, key, strlen(key));
    agent_parser_finish(p, 1);
    char *all = json_dumps(r.lines, 0);
    ASSERT(strstr(all, key) == NULL);
    ASSERT(strstr(all, "ANTHROPIC_API_KEY=[REDACTED:ANTHROPIC_API_KEY]") != NULL);
    ASSERT_STREQ(r.text.data, "key [REDACTED:ANTHROPIC_API_KEY]!");
    free(all);
    agent_parser_free(p);
    rec_free(&r);
}

TEST(long_line_dropped)
{
    struct rec r;
    struct agent_parser *p;
    memset(&r, 0, sizeof(r));
    r.lines = json_array();
    buf_init(&r.text, 0);
    ASSERT_EQ(agent_parser_new_adapter(&adapt_codex, NULL, on_line, &r, &p), 0);
    size_t big = (17u << 20);
    char *s = xmalloc(big);
    memset(s, 'x', big);
    s[0] = '{';
    agent_parser_feed(p, s, big);
    agent_parser_feed(p, "\n", 1);
    free(s);
    const char *ok =
        "{\"type\":\"item.completed\",\"item\":{\"id\":\"i\",\"type\":\"agent_message\","
        "\"text\":\"hi\"}}\n{\"type\":\"turn.completed\",\"usage\":{}}\n";
    agent_parser_feed(p, ok, strlen(ok));
    agent_parser_finish(p, 0);
    ASSERT_STREQ(r.text.data, "hi");
    ASSERT_EQ(r.done, 1);
    agent_parser_free(p);
    rec_free(&r);
}

TEST(config_load)
{
    struct agents *a;
    char msg[256];
    const char *cfg = "{\"claude\":{\"kind\":\"claude-code\",\"model\":\"claude-x\","
                      "\"api_base\":\"http://127.0.0.1:9999\",\"api_key_env\":\"T_AGENTS_KEY\"},"
                      "\"cx\":{\"kind\":\"codex\"},"
                      "\"oc\":{\"kind\":\"opencode\",\"api_key\":\"sk-config-secret-123\"}}";
    setenv("T_AGENTS_KEY", "sk-env-secret-4567", 1);
    ASSERT_EQ(agents_load(cfg, "/nonexistent", &a, msg, sizeof(msg)), 0);
    const struct agent_def *d = agents_find(a, "claude");
    ASSERT(d != NULL);
    ASSERT_STREQ(d->adapter->kind, "claude-code");
    ASSERT_STREQ(agents_key(d), "sk-env-secret-4567");
    char host[256];
    int port;
    ASSERT_EQ(agents_endpoint(d, host, sizeof(host), &port), 0);
    ASSERT_STREQ(host, "127.0.0.1");
    ASSERT_EQ(port, 9999);
    ASSERT_EQ(agents_endpoint(agents_find(a, "cx"), host, sizeof(host), &port), 0);
    ASSERT_STREQ(host, "api.openai.com");
    ASSERT_EQ(port, 443);
    ASSERT(agents_find(a, "nope") == NULL);
    json_t *list = agents_list_json(a, "cx");
    char *s = json_dumps(list, 0);
    ASSERT(strstr(s, "sk-env-secret-4567") == NULL);
    ASSERT(strstr(s, "sk-config-secret-123") == NULL);
    ASSERT(strstr(s, "\"installed\": false") != NULL);
    ASSERT_EQ(json_array_size(json_object_get(list, "agents")), 3);
    ASSERT(json_is_true(
        json_object_get(json_array_get(json_object_get(list, "agents"), 1), "default")));
    free(s);
    json_decref(list);
    agents_free(a);

    static const char *const bad[] = {
        "[1]",
        "{\"x\":{\"kind\":\"cursor\"}}",
        "{\"x\":{\"kind\":\"codex\",\"model\":5}}",
        "{\"x\":{\"kind\":\"codex\",\"api_base\":\"ftp://h\"}}",
        "{\"x\":{\"kind\":\"codex\",\"api_key_env\":\"A B\"}}",
        "{\"x\":{\"kind\":\"codex\",\"surprise\":1}}",
        "{\"x\":{\"kind\":\"codex\",\"max_retries\":-5}}",
        "{nope",
        NULL,
    };
    for (int i = 0; bad[i]; i++) {
        msg[0] = '\0';
        if (agents_load(bad[i], NULL, &a, msg, sizeof(msg)) != ERR_INVALID) {
            TFAIL("accepted %s", bad[i]);
        }
        ASSERT(msg[0] != '\0');
    }
    ASSERT_EQ(agents_load(NULL, NULL, &a, msg, sizeof(msg)), 0);
    agents_free(a);
    agents_free(NULL);
}

static int has(const struct agent_strv *s, const char *needle)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strstr(s->v[i], needle)) {
            return 1;
        }
    }
    return 0;
}

TEST(launch_keeps_key_in_secrets)
{
    struct agents *a;
    char msg[256];
    const char *cfg = "{\"c\":{\"kind\":\"claude-code\",\"api_base\":\"http://h:1\","
                      "\"api_key\":\"sk-launch-secret-1\",\"max_retries\":0},"
                      "\"x\":{\"kind\":\"codex\",\"api_base\":\"http://h:2/v1\","
                      "\"api_key\":\"sk-launch-secret-2\"},"
                      "\"o\":{\"kind\":\"opencode\",\"api_base\":\"http://h:3/v1\",\"model\":\"m\","
                      "\"api_key_env\":\"OC_KEY\",\"api_key\":\"sk-launch-secret-3\"}}";
    unsetenv("ANTHROPIC_API_KEY");
    unsetenv("OPENAI_API_KEY");
    unsetenv("OC_KEY");
    ASSERT_EQ(agents_load(cfg, NULL, &a, msg, sizeof(msg)), 0);
    struct agent_launch_in in = {.agents_dir = "/opt/agents",
                                 .home = "/tmp/agent-home",
                                 .workspace = "/workspace",
                                 .proxy_url = "http://127.0.0.1:3128"};
    static const char *const names[] = {"c", "x", "o"};
    static const char *const keyvar[] = {"ANTHROPIC_API_KEY=sk-launch-secret-1",
                                         "OPENAI_API_KEY=sk-launch-secret-2",
                                         "OC_KEY=sk-launch-secret-3"};
    for (int i = 0; i < 3; i++) {
        struct agent_launch l;
        memset(&l, 0, sizeof(l));
        ASSERT_EQ(agents_launch(agents_find(a, names[i]), &in, &l), 0);
        ASSERT(l.argv.n > 4);
        ASSERT_STREQ(l.argv.v[0], "/bin/sh");
        ASSERT(l.argv.v[l.argv.n] == NULL);
        ASSERT(has(&l.argv, "/opt/agents/node_modules/.bin/"));
        ASSERT(has(&l.argv, "/tmp/agent-home/")); /* its config dir is created */
        ASSERT(!has(&l.argv, "sk-launch-secret"));
        ASSERT(!has(&l.env, "sk-launch-secret"));
        ASSERT(has(&l.env, "HTTPS_PROXY=http://127.0.0.1:3128"));
        ASSERT_EQ(l.secrets.n, 1);
        ASSERT_STREQ(l.secrets.v[0], keyvar[i]);
        agent_launch_free(&l);
    }
    agents_free(a);
}

static void put(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ASSERT(f != NULL);
    fputs(text, f);
    fclose(f);
}

static void tool_result(struct agent_parser *p, const char *id)
{
    char line[512];
    snprintf(line, sizeof(line),
             "{\"type\":\"user\",\"message\":{\"content\":[{\"type\":\"tool_result\","
             "\"tool_use_id\":\"%s\",\"content\":\"ok\"}]}}\n",
             id);
    agent_parser_feed(p, line, strlen(line));
}

/* file_changed comes from sessiond's own scan of the workspace, after each tool result. */
TEST(workspace_diff)
{
    char dir[] = "/tmp/test-agents-ws-XXXXXX";
    ASSERT(mkdtemp(dir) != NULL);
    char sub[600];
    snprintf(sub, sizeof(sub), "%s/src", dir);
    ASSERT_EQ(mkdir(sub, 0755), 0);
    snprintf(sub, sizeof(sub), "%s/.git", dir);
    ASSERT_EQ(mkdir(sub, 0755), 0);
    put(dir, "keep.txt", "same");
    put(dir, "change.txt", "v1");
    put(dir, "gone.txt", "bye");
    struct rec r;
    struct agent_parser *p;
    memset(&r, 0, sizeof(r));
    r.lines = json_array();
    buf_init(&r.text, 0);
    ASSERT_EQ(agent_parser_new_adapter(&adapt_claude, NULL, on_line, &r, &p), 0);
    agent_parser_set_workspace(p, dir);
    put(dir, "src/new.c", "int x;");
    put(dir, "change.txt", "version 2");
    put(dir, ".git/index", "ignored");
    snprintf(sub, sizeof(sub), "%s/gone.txt", dir);
    ASSERT_EQ(unlink(sub), 0);
    tool_result(p, "t1");
    /* sorted by path, each once */
    static const char *const want[][2] = {
        {"change.txt", "modified"}, {"gone.txt", "deleted"}, {"src/new.c", "created"}};
    size_t i, k = 0;
    json_t *o;
    json_array_foreach(r.lines, i, o)
    {
        if (strcmp(sget(o, "type"), "file_changed") != 0) {
            continue;
        }
        ASSERT(k < 3);
        ASSERT_STREQ(sget(o, "path"), want[k][0]);
        ASSERT_STREQ(sget(o, "action"), want[k][1]);
        ASSERT_STREQ(sget(o, "source"), "workspace");
        k++;
    }
    ASSERT_EQ(k, 3);
    /* nothing new: nothing reported; a file written after the last tool result is reported
     * at the end, before the terminal line */
    tool_result(p, "t2");
    put(dir, "late.txt", "x");
    const char *res =
        "{\"type\":\"result\",\"is_error\":false,\"result\":\"ok\",\"num_turns\":1}\n";
    agent_parser_feed(p, res, strlen(res));
    agent_parser_finish(p, 0);
    size_t n = json_array_size(r.lines);
    ASSERT_STREQ(sget(json_array_get(r.lines, n - 1), "type"), "done");
    ASSERT_STREQ(sget(json_array_get(r.lines, n - 2), "path"), "late.txt");
    ASSERT_STREQ(sget(json_array_get(r.lines, n - 2), "action"), "created");
    agent_parser_free(p);
    rec_free(&r);
    ASSERT_EQ(util_rm_rf(dir), 0);
}

/* OpenCode through the serve driver (agents/bundled/opencode-serve.mjs): real deltas, the
 * whole text of a streamed part is not sent again, the same tools, usage and turns. */
TEST(opencode_serve_ok)
{
    struct rec r;
    run_fixture(&adapt_opencode, "tests/fixtures/opencode-serve-ok.jsonl", 0, NULL, &r);
    check_text(&r, 5); /* the model server's five deltas, each its own output */
    check_pairs(&r, 2);
    ASSERT_STREQ(sget(nth(&r, "tool_call", 0), "name"), "bash");
    ASSERT_STREQ(sget(nth(&r, "tool_call", 1), "name"), "write");
    ASSERT_EQ(r.done, 1);
    json_t *d = nth(&r, "done", 0);
    ASSERT_STREQ(sget(d, "summary"), FINAL);
    ASSERT_EQ(json_integer_value(json_object_get(d, "turns")), 3);
    ASSERT(usage(&r, "output_tokens") > 0);
    rec_free(&r);
}

TEST(opencode_serve_fail400)
{
    struct rec r;
    run_fixture(&adapt_opencode, "tests/fixtures/opencode-serve-fail400.jsonl", 1, NULL, &r);
    ASSERT_EQ(r.errors, 1);
    ASSERT_EQ(r.done, 0);
    const char *reason = sget(nth(&r, "error", 0), "reason");
    ASSERT(strstr(reason, "400") != NULL);
    ASSERT(strstr(reason, "scripted model error") != NULL);
    rec_free(&r);
}

/* issue 7: a repository's egress entries are checked and normalised strictly. */
TEST(egress_entry)
{
    static const char *const good[][2] = {
        {"api.example.com:443", "api.example.com:443"},
        {"API.Example.COM.:443", "api.example.com:443"},
        {"127.0.0.1:8080", "127.0.0.1:8080"},
        {"[::1]:9000", "[::1]:9000"},
        {"[2001:DB8:0:0::1]:443", "[2001:db8::1]:443"},
        {"x-1.y:00080", "x-1.y:80"},
        {"localhost:1", "localhost:1"},
        {"a.b:65535", "a.b:65535"},
    };
    static const char *const bad[] = {
        "",
        "example.com",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        ":443",
        "::1:443",
        "[::1]",
        "[::1]443",
        "[nothost]:443",
        "1.2.3:80",
        "999.1.1.1:80",
        "-bad.com:443",
        "bad-.com:443",
        "a..b:443",
        "*.x:443",
        "a_b.com:443",
        "ex ample.com:443",
        "x.com:+80",
        "x.com:-1",
        "x.com:8a",
        "http://x:443",
        "x.com:443/path",
        "x.com:123456",
        "[::1]:80:80",
    };
    char norm[EGRESS_ENTRY_MAX], why[120];
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ASSERT_EQ(egress_entry_norm(good[i][0], norm, sizeof(norm), why, sizeof(why)), 0);
        ASSERT_STREQ(norm, good[i][1]);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = '\0';
        int rc = egress_entry_norm(bad[i], norm, sizeof(norm), why, sizeof(why));
        if (rc != ERR_INVALID) {
            fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
        }
        ASSERT_EQ(rc, ERR_INVALID);
        ASSERT(why[0] != '\0');
    }
    /* a 64-byte label and a 254-byte name are refused */
    char lab[80], longname[300];
    memset(lab, 'a', 64);
    snprintf(lab + 64, sizeof(lab) - 64, ".com:443");
    ASSERT_EQ(egress_entry_norm(lab, norm, sizeof(norm), NULL, 0), ERR_INVALID);
    size_t k = 0;
    while (k < 251) { /* 26 labels of 10 bytes + "com": 263 bytes */
        k += (size_t)snprintf(longname + k, sizeof(longname) - k, "abcdefghi.");
    }
    snprintf(longname + k, sizeof(longname) - k, "com:443");
    ASSERT_EQ(egress_entry_norm(longname, norm, sizeof(norm), NULL, 0), ERR_INVALID);
    ASSERT_EQ(egress_entry_norm(NULL, norm, sizeof(norm), NULL, 0), ERR_INVALID);
}

static const struct test_case tests[] = {
    T(claude_ok),           T(claude_fail400),
    T(claude_tool_error),   T(codex_ok),
    T(codex_fail400),       T(codex_tool_error),
    T(opencode_ok),         T(opencode_fail400),
    T(opencode_tool_error), T(opencode_scalar_tool_output),
    T(no_result_is_error),  T(killed_is_error),
    T(secret_scrubbed),     T(long_line_dropped),
    T(config_load),         T(launch_keeps_key_in_secrets),
    T(workspace_diff),      T(egress_entry),
    T(opencode_serve_ok),   T(opencode_serve_fail400),
};

TEST_MAIN(tests)
