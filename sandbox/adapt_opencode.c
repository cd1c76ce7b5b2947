/*
 * adapt_opencode.c - OpenCode: launch and `opencode run --format json` parser (see
 * adapt_opencode.h).
 *
 * The stream (one JSON object per line, each {"type","timestamp","sessionID","part"|"error"}):
 *   step_start   {part:{type:"step-start"}}
 *   tool_use     {part:{tool, callID, state:{status:"completed"|"error", input, output, error}}}
 *                (printed once the tool has finished: call and result come together)
 *   text         {part:{text}}  (a whole text part, printed when it is complete)
 *   reasoning    {part:{text}}
 *   step_finish  {part:{reason:"tool-calls"|"stop"|…, tokens:{input, output, reasoning,
 *                                                           cache:{read, write}}}}
 *   error        {error:{name:"APIError", data:{message, statusCode, …}}}
 * There is no final line: a clean exit after the last step_finish is the end of the run, so
 * done is emitted by finish() with the tokens summed over the steps and turns = steps.
 *
 * Threads: a parser state belongs to its parser's thread.
 */
#include "adapt_opencode.h"

#include "common/buf.h"
#include "common/xmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct opencode_state {
    int texts;
    int steps;
    int64_t in, out, reasoning, cache_read, cache_write;
    char *last_text;
};

static void *state_new(void)
{
    return xcalloc(1, sizeof(struct opencode_state));
}

static void state_free(void *p)
{
    struct opencode_state *st = p;
    if (!st) {
        return;
    }
    free(st->last_text);
    free(st);
}

static void on_tool(json_t *part, struct agent_parser *p)
{
    json_t *state = json_object_get(part, "state");
    const char *status = agent_jstr(state, "status");
    const char *id = agent_jstr(part, "callID");
    if (!status || (strcmp(status, "completed") != 0 && strcmp(status, "error") != 0)) {
        return; /* pending/running states (not printed by `run`, handled in case they are) */
    }
    agent_emit_tool_call(p, id, agent_jstr(part, "tool"), json_object_get(state, "input"));
    /* A shell command that exits non-zero is "completed" for OpenCode; for us it failed. */
    json_t *exit_code = json_object_get(json_object_get(state, "metadata"), "exit");
    int is_error = strcmp(status, "error") == 0 ||
                   (json_is_integer(exit_code) && json_integer_value(exit_code) != 0);
    json_t *o = json_object_get(state, strcmp(status, "error") == 0 ? "error" : "output");
    char *text = json_is_string(o) ? xstrdup(json_string_value(o))
                 : o               ? json_dumps(o, JSON_COMPACT)
                                   : xstrdup("");
    agent_emit_tool_result(p, id, text, strlen(text), is_error);
    free(text);
}

static void on_error(json_t *line, struct agent_parser *p)
{
    json_t *e = json_object_get(line, "error");
    json_t *data = json_object_get(e, "data");
    const char *name = agent_jstr(e, "name");
    const char *msg = agent_jstr(data, "message");
    if (!msg) {
        msg = agent_jstr(e, "message");
    }
    json_int_t code = (json_int_t)agent_jint(data, "statusCode", 0);
    char reason[2048];
    if (code) {
        snprintf(reason, sizeof(reason), "%s %lld: %s", name ? name : "error", (long long)code,
                 msg ? msg : "model request failed");
    } else {
        snprintf(reason, sizeof(reason), "%s%s%s", name ? name : "error", msg ? ": " : "",
                 msg ? msg : "");
    }
    agent_emit_error(p, reason);
}

static void on_line(void *sp, json_t *line, struct agent_parser *p)
{
    struct opencode_state *st = sp;
    const char *t = agent_jstr(line, "type");
    json_t *part = json_object_get(line, "part");
    if (!t) {
        return;
    }
    if (strcmp(t, "tool_use") == 0) {
        on_tool(part, p);
    } else if (strcmp(t, "text") == 0) {
        const char *text = agent_jstr(part, "text");
        if (text && *text) {
            if (st->texts++) {
                agent_emit_output(p, "\n\n", 2);
            }
            agent_emit_output(p, text, strlen(text));
            free(st->last_text);
            st->last_text = xstrdup(text);
        }
    } else if (strcmp(t, "step_finish") == 0) {
        json_t *tok = json_object_get(part, "tokens");
        json_t *cache = json_object_get(tok, "cache");
        st->steps++;
        st->in += agent_jint(tok, "input", 0);
        st->out += agent_jint(tok, "output", 0);
        st->reasoning += agent_jint(tok, "reasoning", 0);
        st->cache_read += agent_jint(cache, "read", 0);
        st->cache_write += agent_jint(cache, "write", 0);
    } else if (strcmp(t, "error") == 0) {
        on_error(line, p);
    }
}

static void finish(void *sp, struct agent_parser *p, int exit_code)
{
    struct opencode_state *st = sp;
    if (exit_code != 0 || st->steps == 0) {
        return; /* the framework reports the failure */
    }
    json_t *usage =
        json_pack("{s:I, s:I, s:I, s:I, s:I}", "input_tokens", (json_int_t)st->in, "output_tokens",
                  (json_int_t)st->out, "cache_read_input_tokens", (json_int_t)st->cache_read,
                  "cache_creation_input_tokens", (json_int_t)st->cache_write, "reasoning_tokens",
                  (json_int_t)st->reasoning);
    agent_emit_done(p, st->last_text, usage, st->steps);
    json_decref(usage);
}

static int launch(const struct agent_def *d, const char *key, const struct agent_launch_in *in,
                  struct agent_launch *out)
{
    char base[4096], data[4200], cfg[4200], cache[4200], state[4200];
    const char *key_env = *d->api_key_env ? d->api_key_env : adapt_opencode.default_key_env;
    const char *model = *d->model ? d->model : adapt_opencode.default_model;
    snprintf(base, sizeof(base), "%s/opencode", in->home);
    snprintf(data, sizeof(data), "%s/data", base);
    snprintf(cfg, sizeof(cfg), "%s/config", base);
    snprintf(cache, sizeof(cache), "%s/cache", base);
    snprintf(state, sizeof(state), "%s/state", base);
    const char *dirs[] = {data, cfg, cache, state, NULL};
    agent_launch_mkdirs(out, dirs);
    agent_strv_addf(&out->argv, "%s/%s", in->agents_dir, adapt_opencode.bin);
    agent_strv_add(&out->argv, "run");
    agent_strv_add(&out->argv, "--format");
    agent_strv_add(&out->argv, "json");
    agent_strv_add(&out->argv, "--auto");

    /* The config travels in the environment (no file to write); the key is referenced by
     * name ({env:NAME}) so the config itself holds no secret. */
    json_t *c = json_pack("{s:b, s:s}", "autoupdate", 0, "share", "disabled");
    if (*d->api_base) {
        char ref[300];
        snprintf(ref, sizeof(ref), "{env:%s}", key_env);
        json_t *models = json_object();
        json_object_set_new(models, model, json_pack("{s:s, s:b}", "name", model, "tool_call", 1));
        /* No "npm" key: a custom provider is OpenAI-compatible by default, and naming the
         * package makes OpenCode try to install it from the registry first (refused by the
         * egress proxy, then a fallback that costs seconds per model request). */
        json_t *prov =
            json_pack("{s:{s:s, s:{s:s, s:s}, s:o}}", "sessiond", "name", "sessiond", "options",
                      "baseURL", d->api_base, "apiKey", ref, "models", models);
        json_object_set_new(c, "provider", prov);
        char m[512];
        snprintf(m, sizeof(m), "sessiond/%s", model);
        json_object_set_new(c, "model", json_string(m));
    } else {
        json_object_set_new(c, "model", json_string(model));
    }
    char *cs = json_dumps(c, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(c);
    agent_strv_addf(&out->env, "OPENCODE_CONFIG_CONTENT=%s", cs);
    free(cs);
    agent_strv_addf(&out->env, "XDG_DATA_HOME=%s", data);
    agent_strv_addf(&out->env, "XDG_CONFIG_HOME=%s", cfg);
    agent_strv_addf(&out->env, "XDG_CACHE_HOME=%s", cache);
    agent_strv_addf(&out->env, "XDG_STATE_HOME=%s", state);
    agent_strv_add(&out->env, "OPENCODE_DISABLE_AUTOUPDATE=1");
    agent_strv_add(&out->env, "OPENCODE_DISABLE_MODELS_FETCH=1");
    agent_strv_add(&out->env, "OPENCODE_DISABLE_LSP_DOWNLOAD=1");
    if (key) {
        agent_strv_addf(&out->secrets, "%s=%s", key_env, key);
    }
    return 0;
}

const struct agent_adapter adapt_opencode = {
    .kind = "opencode",
    .bin = "node_modules/.bin/opencode",
    .default_model = "anthropic/claude-sonnet-4-5",
    .default_api_base = "https://api.anthropic.com",
    .default_key_env = "ANTHROPIC_API_KEY",
    .launch = launch,
    .state_new = state_new,
    .state_free = state_free,
    .line = on_line,
    .finish = finish,
};
