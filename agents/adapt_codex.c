/*
 * adapt_codex.c - Codex CLI: launch and `codex exec --json` parser (see adapt_codex.h).
 *
 * The stream (one JSON object per line):
 *   {"type":"thread.started","thread_id":…}  {"type":"turn.started"}
 *   {"type":"item.started"|"item.updated"|"item.completed","item":{"id":"item_0","type":…}}
 *     item types: command_execution {command, aggregated_output, exit_code, status},
 *     file_change {changes:[{path,kind}], status}, mcp_tool_call {server, tool, arguments,
 *     result, error, status}, web_search {query}, agent_message {text}, reasoning {text},
 *     todo_list, error {message} (a warning; the turn goes on)
 *   {"type":"turn.completed","usage":{input_tokens, cached_input_tokens, output_tokens,
 *                                     reasoning_output_tokens}}
 *   {"type":"turn.failed","error":{"message":…}}   {"type":"error","message":…}
 * The error messages of a failed API request are the response body as a JSON string; the
 * reason we report is its error.message. Codex prints whole agent messages (no deltas): each
 * is one output (a new message after earlier ones is separated by a blank line).
 * Codex does not report how many model requests it made: turns = tool results + 1, which is
 * exact when tool calls run one per request (what this CLI does).
 *
 * Threads: a parser state belongs to its parser's thread.
 */
#include "agents/adapt_codex.h"

#include "common/buf.h"
#include "common/xmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OPEN 64 /* tool items started and not completed that we remember */

struct codex_state {
    char *started[MAX_OPEN];
    int nstarted;
    int messages;
    int tool_results;
    char *last_text;
    char *pending_error;
};

static void *state_new(void)
{
    return xcalloc(1, sizeof(struct codex_state));
}

static void state_free(void *p)
{
    struct codex_state *st = p;
    if (!st) {
        return;
    }
    for (int i = 0; i < st->nstarted; i++) {
        free(st->started[i]);
    }
    free(st->last_text);
    free(st->pending_error);
    free(st);
}

/* Remember id as started; returns 1 if it was already. */
static int mark_started(struct codex_state *st, const char *id)
{
    for (int i = 0; i < st->nstarted; i++) {
        if (strcmp(st->started[i], id) == 0) {
            return 1;
        }
    }
    if (st->nstarted == MAX_OPEN) {
        free(st->started[0]);
        memmove(st->started, st->started + 1, (MAX_OPEN - 1) * sizeof(char *));
        st->nstarted--;
    }
    st->started[st->nstarted++] = xstrdup(id);
    return 0;
}

static void forget(struct codex_state *st, const char *id)
{
    for (int i = 0; i < st->nstarted; i++) {
        if (strcmp(st->started[i], id) == 0) {
            free(st->started[i]);
            memmove(st->started + i, st->started + i + 1,
                    (size_t)(st->nstarted - i - 1) * sizeof(char *));
            st->nstarted--;
            return;
        }
    }
}

/* The reason inside an API error message: '{"error":{"message":"…"}}' -> "…". Caller frees. */
static char *error_reason(const char *msg)
{
    if (!msg) {
        return xstrdup("codex reported an error");
    }
    if (msg[0] == '{') {
        json_t *o = json_loads(msg, 0, NULL);
        json_t *e = json_object_get(o, "error");
        const char *m = json_is_string(e) ? json_string_value(e) : agent_jstr(e, "message");
        if (!m) {
            m = agent_jstr(o, "message");
        }
        char *r = m ? xstrdup(m) : NULL;
        json_decref(o);
        if (r) {
            return r;
        }
    }
    return xstrdup(msg);
}

static int is_tool(const char *t)
{
    return strcmp(t, "command_execution") == 0 || strcmp(t, "file_change") == 0 ||
           strcmp(t, "mcp_tool_call") == 0 || strcmp(t, "web_search") == 0;
}

static void emit_call(json_t *item, const char *type, struct agent_parser *p)
{
    const char *id = agent_jstr(item, "id");
    json_t *input;
    char name[256];
    if (strcmp(type, "command_execution") == 0) {
        snprintf(name, sizeof(name), "shell");
        input = json_pack("{s:O?}", "command", json_object_get(item, "command"));
    } else if (strcmp(type, "file_change") == 0) {
        snprintf(name, sizeof(name), "apply_patch");
        input = json_pack("{s:O?}", "changes", json_object_get(item, "changes"));
    } else if (strcmp(type, "mcp_tool_call") == 0) {
        const char *srv = agent_jstr(item, "server");
        const char *tool = agent_jstr(item, "tool");
        snprintf(name, sizeof(name), "%s.%s", srv ? srv : "mcp", tool ? tool : "tool");
        json_t *args = json_object_get(item, "arguments");
        input = json_is_object(args) ? json_incref(args) : json_pack("{s:O?}", "arguments", args);
    } else {
        snprintf(name, sizeof(name), "%s", type);
        input = json_pack("{s:O?}", "query", json_object_get(item, "query"));
    }
    agent_emit_tool_call(p, id, name, input);
    json_decref(input);
}

static void emit_result(struct codex_state *st, json_t *item, const char *type,
                        struct agent_parser *p)
{
    const char *id = agent_jstr(item, "id");
    const char *status = agent_jstr(item, "status");
    int failed = status && (strcmp(status, "failed") == 0 || strcmp(status, "declined") == 0);
    struct buf out;
    buf_init(&out, 0);
    if (strcmp(type, "command_execution") == 0) {
        const char *o = agent_jstr(item, "aggregated_output");
        buf_puts(&out, o ? o : "");
        json_t *ec = json_object_get(item, "exit_code");
        failed |= json_is_integer(ec) && json_integer_value(ec) != 0;
    } else if (strcmp(type, "file_change") == 0) {
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(item, "changes"), i, c)
        {
            const char *kind = agent_jstr(c, "kind");
            const char *path = agent_jstr(c, "path");
            buf_printf(&out, "%s%s %s", i ? "\n" : "", kind ? kind : "change", path ? path : "");
        }
    } else if (strcmp(type, "mcp_tool_call") == 0) {
        json_t *err = json_object_get(item, "error");
        json_t *res = json_object_get(item, "result");
        if (err && !json_is_null(err)) {
            const char *m =
                json_is_string(err) ? json_string_value(err) : agent_jstr(err, "message");
            buf_puts(&out, m ? m : "error");
            failed = 1;
        } else if (res) {
            char *t = agent_content_text(json_object_get(res, "content"));
            buf_puts(&out, t);
            free(t);
        }
    }
    agent_emit_tool_result(p, id, out.data ? out.data : "", out.len, failed);
    buf_free(&out);
    st->tool_results++;
}

static void on_item(struct codex_state *st, json_t *line, int completed, struct agent_parser *p)
{
    json_t *item = json_object_get(line, "item");
    const char *type = agent_jstr(item, "type");
    const char *id = agent_jstr(item, "id");
    if (!type || !id) {
        return;
    }
    if (is_tool(type)) {
        if (!mark_started(st, id)) {
            emit_call(item, type, p);
        }
        if (completed) {
            emit_result(st, item, type, p);
            forget(st, id);
        }
        return;
    }
    if (!completed) {
        return;
    }
    if (strcmp(type, "agent_message") == 0) {
        const char *t = agent_jstr(item, "text");
        if (t && *t) {
            if (st->messages++) {
                agent_emit_output(p, "\n\n", 2);
            }
            agent_emit_output(p, t, strlen(t));
            free(st->last_text);
            st->last_text = xstrdup(t);
        }
    } else if (strcmp(type, "error") == 0) {
        json_t *f =
            json_pack("{s:s, s:s?}", "agent", "codex", "message", agent_jstr(item, "message"));
        agent_emit_status(p, "warning", f);
        json_decref(f);
    }
}

static void on_line(void *sp, json_t *line, struct agent_parser *p)
{
    struct codex_state *st = sp;
    const char *t = agent_jstr(line, "type");
    if (!t) {
        return;
    }
    if (strcmp(t, "item.started") == 0) {
        on_item(st, line, 0, p);
    } else if (strcmp(t, "item.completed") == 0) {
        on_item(st, line, 1, p);
    } else if (strcmp(t, "turn.completed") == 0) {
        json_t *u = json_object_get(line, "usage");
        json_t *usage = json_pack(
            "{s:I, s:I, s:I, s:I}", "input_tokens", (json_int_t)agent_jint(u, "input_tokens", 0),
            "output_tokens", (json_int_t)agent_jint(u, "output_tokens", 0),
            "cache_read_input_tokens", (json_int_t)agent_jint(u, "cached_input_tokens", 0),
            "reasoning_tokens", (json_int_t)agent_jint(u, "reasoning_output_tokens", 0));
        agent_emit_done(p, st->last_text, usage, st->tool_results + 1);
        json_decref(usage);
    } else if (strcmp(t, "turn.failed") == 0) {
        char *r = error_reason(agent_jstr(json_object_get(line, "error"), "message"));
        agent_emit_error(p, r);
        free(r);
    } else if (strcmp(t, "error") == 0) {
        free(st->pending_error);
        st->pending_error = error_reason(agent_jstr(line, "message"));
    } else if (strcmp(t, "thread.started") == 0) {
        json_t *f = json_pack("{s:s}", "agent", "codex");
        agent_emit_status(p, "agent_started", f);
        json_decref(f);
    }
}

static void finish(void *sp, struct agent_parser *p, int exit_code)
{
    struct codex_state *st = sp;
    (void)exit_code;
    if (st->pending_error) {
        agent_emit_error(p, st->pending_error);
    }
}

/* A TOML basic string. */
static void toml_str(struct buf *b, const char *s)
{
    buf_putc(b, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, *s);
        } else if ((unsigned char)*s < 0x20) {
            buf_printf(b, "\\u%04x", (unsigned char)*s);
        } else {
            buf_putc(b, *s);
        }
    }
    buf_putc(b, '"');
}

static void add_c(struct agent_launch *out, const char *key, const char *toml_value)
{
    agent_strv_add(&out->argv, "-c");
    agent_strv_addf(&out->argv, "%s=%s", key, toml_value);
}

static int launch(const struct agent_def *d, const char *key, const struct agent_launch_in *in,
                  struct agent_launch *out)
{
    char dir[4096];
    struct buf b;
    const char *key_env = *d->api_key_env ? d->api_key_env : adapt_codex.default_key_env;
    snprintf(dir, sizeof(dir), "%s/codex", in->home);
    const char *dirs[] = {dir, NULL};
    agent_launch_mkdirs(out, dirs);
    agent_strv_addf(&out->argv, "%s/%s", in->agents_dir, adapt_codex.bin);
    static const char *const args[] = {"exec",
                                       "--json",
                                       "--dangerously-bypass-approvals-and-sandbox",
                                       "--ephemeral",
                                       "--skip-git-repo-check",
                                       NULL};
    for (int i = 0; args[i]; i++) {
        agent_strv_add(&out->argv, args[i]);
    }
    buf_init(&b, 0);
    toml_str(&b, *d->model ? d->model : adapt_codex.default_model);
    add_c(out, "model", b.data);
    add_c(out, "model_provider", "\"sessiond\"");
    /* The provider: Responses API at api_base, key from a secret env variable. */
    buf_reset(&b);
    buf_puts(&b, "{name=\"sessiond\",base_url=");
    toml_str(&b, *d->api_base ? d->api_base : adapt_codex.default_api_base);
    buf_puts(&b, ",env_key=");
    toml_str(&b, key_env);
    buf_puts(&b, ",wire_api=\"responses\"");
    if (d->max_retries >= 0) {
        buf_printf(&b, ",request_max_retries=%d,stream_max_retries=%d", d->max_retries,
                   d->max_retries);
    }
    buf_puts(&b, "}");
    add_c(out, "model_providers.sessiond", b.data);
    buf_free(&b);
    add_c(out, "approval_policy", "\"never\"");
    add_c(out, "sandbox_mode", "\"danger-full-access\"");
    add_c(out, "check_for_update_on_startup", "false");
    add_c(out, "analytics.enabled", "false");
    add_c(out, "feedback.enabled", "false");
    add_c(out, "history.persistence", "\"none\"");
    /* Nothing but the model endpoint: no plugin/app/update traffic (the egress proxy would
     * refuse it and report each refusal), no endless reconnects. */
    static const char *const off[] = {"plugins",
                                      "remote_plugin",
                                      "plugin_sharing",
                                      "apps",
                                      "in_app_updates",
                                      "skill_mcp_dependency_install",
                                      "unbounded_connection_retries",
                                      NULL};
    for (int i = 0; off[i]; i++) {
        agent_strv_add(&out->argv, "--disable");
        agent_strv_add(&out->argv, off[i]);
    }
    agent_strv_add(&out->argv, "-"); /* the prompt comes on stdin */

    agent_strv_addf(&out->env, "CODEX_HOME=%s", dir);
    if (key) {
        agent_strv_addf(&out->secrets, "%s=%s", key_env, key);
    }
    return 0;
}

const struct agent_adapter adapt_codex = {
    .kind = "codex",
    .bin = "node_modules/.bin/codex",
    .default_model = "gpt-5.5",
    .default_api_base = "https://api.openai.com/v1",
    .default_key_env = "OPENAI_API_KEY",
    .launch = launch,
    .state_new = state_new,
    .state_free = state_free,
    .line = on_line,
    .finish = finish,
};
