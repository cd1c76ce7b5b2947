/*
 * adapt_claude.c - Claude Code: launch and stream-json parser (see adapt_claude.h).
 *
 * The stream (claude -p --output-format stream-json --verbose --include-partial-messages):
 *   {"type":"system","subtype":"init","model":…}
 *   {"type":"stream_event","event":{raw Anthropic SSE event},"parent_tool_use_id":null,…}
 *   {"type":"assistant","message":{"id":…,"content":[{"type":"tool_use","id","name","input"}|
 *                                                  {"type":"text","text"}]}}
 *   {"type":"user","message":{"content":[{"type":"tool_result","tool_use_id","content",
 *                                         "is_error"}]}}
 *   {"type":"result","is_error":false,"result":"…","num_turns":3,"usage":{…}}
 * Text is taken from the text_delta stream events (true deltas); the assistant line repeats
 * the whole text, so it is used only for a message that had no deltas (partial messages off).
 * A failed model request appears as an assistant message marked is_api_error_message and a
 * result with is_error: the reason is the result text ("API Error: 400 …").
 *
 * Threads: a parser state belongs to its parser's thread.
 */
#include "agents/adapt_claude.h"

#include "common/xmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct claude_state {
    char *streamed_msg; /* id of the last message whose text came as deltas */
    char *last_text;    /* the last assistant text (summary fallback) */
};

static void *state_new(void)
{
    return xcalloc(1, sizeof(struct claude_state));
}

static void state_free(void *p)
{
    struct claude_state *st = p;
    if (!st) {
        return;
    }
    free(st->streamed_msg);
    free(st->last_text);
    free(st);
}

static void set_str(char **dst, const char *s)
{
    free(*dst);
    *dst = s ? xstrdup(s) : NULL;
}

static void on_stream_event(struct claude_state *st, json_t *line, struct agent_parser *p)
{
    json_t *ev = json_object_get(line, "event");
    const char *et = agent_jstr(ev, "type");
    if (!et || !json_is_null(json_object_get(line, "parent_tool_use_id"))) {
        return; /* a subagent's text stays inside its tool call */
    }
    if (strcmp(et, "message_start") == 0) {
        set_str(&st->streamed_msg, NULL);
        return;
    }
    if (strcmp(et, "content_block_delta") != 0) {
        return;
    }
    json_t *d = json_object_get(ev, "delta");
    const char *dt = agent_jstr(d, "type");
    const char *text = agent_jstr(d, "text");
    if (dt && strcmp(dt, "text_delta") == 0 && text) {
        const char *mid = agent_jstr(line, "api_message_id");
        set_str(&st->streamed_msg, mid ? mid : "?");
        agent_emit_output(p, text, strlen(text));
    }
}

static void on_assistant(struct claude_state *st, json_t *line, struct agent_parser *p)
{
    json_t *msg = json_object_get(line, "message");
    const char *mid = agent_jstr(msg, "id");
    int streamed = st->streamed_msg && (strcmp(st->streamed_msg, "?") == 0 ||
                                        (mid && strcmp(st->streamed_msg, mid) == 0));
    int api_error = json_is_true(json_object_get(line, "is_api_error_message"));
    int top = json_is_null(json_object_get(line, "parent_tool_use_id")) ||
              !json_object_get(line, "parent_tool_use_id");
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(msg, "content"), i, b)
    {
        const char *bt = agent_jstr(b, "type");
        if (!bt) {
            continue;
        }
        if (strcmp(bt, "tool_use") == 0 || strcmp(bt, "server_tool_use") == 0) {
            agent_emit_tool_call(p, agent_jstr(b, "id"), agent_jstr(b, "name"),
                                 json_object_get(b, "input"));
        } else if (strcmp(bt, "text") == 0 && top && !api_error) {
            const char *t = agent_jstr(b, "text");
            if (t) {
                set_str(&st->last_text, t);
                if (!streamed) {
                    agent_emit_output(p, t, strlen(t));
                }
            }
        }
    }
}

static void on_user(json_t *line, struct agent_parser *p)
{
    json_t *content = json_object_get(json_object_get(line, "message"), "content");
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *bt = agent_jstr(b, "type");
        if (!bt || strcmp(bt, "tool_result") != 0) {
            continue;
        }
        char *out = agent_content_text(json_object_get(b, "content"));
        agent_emit_tool_result(p, agent_jstr(b, "tool_use_id"), out, strlen(out),
                               json_is_true(json_object_get(b, "is_error")));
        free(out);
    }
}

static void on_result(struct claude_state *st, json_t *line, struct agent_parser *p)
{
    const char *subtype = agent_jstr(line, "subtype");
    const char *result = agent_jstr(line, "result");
    int is_error = json_is_true(json_object_get(line, "is_error")) ||
                   (subtype && strncmp(subtype, "error", 5) == 0);
    if (is_error) {
        char reason[1024];
        json_t *errs = json_object_get(line, "errors");
        if (result && *result) {
            snprintf(reason, sizeof(reason), "%s", result);
        } else if (json_array_size(errs) > 0 && json_is_string(json_array_get(errs, 0))) {
            snprintf(reason, sizeof(reason), "%s", json_string_value(json_array_get(errs, 0)));
        } else {
            snprintf(reason, sizeof(reason), "claude-code ended with %s",
                     subtype ? subtype : "an error");
        }
        agent_emit_error(p, reason);
        return;
    }
    json_t *u = json_object_get(line, "usage");
    json_t *usage =
        json_pack("{s:I, s:I}", "input_tokens", (json_int_t)agent_jint(u, "input_tokens", 0),
                  "output_tokens", (json_int_t)agent_jint(u, "output_tokens", 0));
    static const char *const extra[] = {"cache_read_input_tokens", "cache_creation_input_tokens",
                                        NULL};
    for (int i = 0; extra[i]; i++) {
        if (json_is_integer(json_object_get(u, extra[i]))) {
            json_object_set(usage, extra[i], json_object_get(u, extra[i]));
        }
    }
    agent_emit_done(p, result ? result : st->last_text, usage,
                    (int)agent_jint(line, "num_turns", 0));
    json_decref(usage);
}

static void on_line(void *sp, json_t *line, struct agent_parser *p)
{
    struct claude_state *st = sp;
    const char *t = agent_jstr(line, "type");
    if (!t) {
        return;
    }
    if (strcmp(t, "stream_event") == 0) {
        on_stream_event(st, line, p);
    } else if (strcmp(t, "assistant") == 0) {
        on_assistant(st, line, p);
    } else if (strcmp(t, "user") == 0) {
        on_user(line, p);
    } else if (strcmp(t, "result") == 0) {
        on_result(st, line, p);
    } else if (strcmp(t, "system") == 0) {
        const char *sub = agent_jstr(line, "subtype");
        if (sub && strcmp(sub, "init") == 0) {
            json_t *f = json_pack("{s:s, s:s}", "agent", "claude-code", "model",
                                  agent_jstr(line, "model") ? agent_jstr(line, "model") : "");
            agent_emit_status(p, "agent_started", f);
            json_decref(f);
        }
    }
}

static int launch(const struct agent_def *d, const char *key, const struct agent_launch_in *in,
                  struct agent_launch *out)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/claude", in->home);
    const char *dirs[] = {dir, NULL};
    agent_launch_mkdirs(out, dirs);
    agent_strv_addf(&out->argv, "%s/%s", in->agents_dir, adapt_claude.bin);
    static const char *const args[] = {"-p",
                                       "--output-format",
                                       "stream-json",
                                       "--verbose",
                                       "--include-partial-messages",
                                       "--dangerously-skip-permissions",
                                       "--bare",
                                       "--no-session-persistence",
                                       "--model",
                                       NULL};
    for (int i = 0; args[i]; i++) {
        agent_strv_add(&out->argv, args[i]);
    }
    agent_strv_add(&out->argv, *d->model ? d->model : adapt_claude.default_model);

    agent_strv_addf(&out->env, "CLAUDE_CONFIG_DIR=%s", dir);
    /* Running as root inside the sandbox namespace: the CLI allows skip-permissions only
     * when it is told it is in a sandbox (it is). */
    agent_strv_add(&out->env, "IS_SANDBOX=1");
    agent_strv_add(&out->env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1");
    agent_strv_add(&out->env, "DISABLE_AUTOUPDATER=1");
    agent_strv_add(&out->env, "DISABLE_TELEMETRY=1");
    if (*d->api_base) {
        agent_strv_addf(&out->env, "ANTHROPIC_BASE_URL=%s", d->api_base);
    }
    if (d->max_retries >= 0) {
        agent_strv_addf(&out->env, "CLAUDE_CODE_MAX_RETRIES=%d", d->max_retries);
    }
    if (key) {
        agent_strv_addf(&out->secrets, "ANTHROPIC_API_KEY=%s", key);
    }
    return 0;
}

const struct agent_adapter adapt_claude = {
    .kind = "claude-code",
    .bin = "node_modules/.bin/claude",
    .default_model = "claude-sonnet-4-5",
    .default_api_base = "https://api.anthropic.com",
    .default_key_env = "ANTHROPIC_API_KEY",
    .launch = launch,
    .state_new = state_new,
    .state_free = state_free,
    .line = on_line,
    .finish = NULL,
};
