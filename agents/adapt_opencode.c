/*
 * adapt_opencode.c - OpenCode: launch and parser (see adapt_opencode.h).
 *
 * The CLI runs in `serve` mode under a small driver, agents/bundled/opencode-serve.mjs, run
 * by the OpenCode binary itself acting as Bun (BUN_BE_BUN=1): `run --format json` prints a
 * text part only once complete, the server's event feed has every model delta. The driver
 * prints the lines of `opencode run --format json` plus
 *   text_delta   {part:{id, messageID}, delta}   (each model delta of an assistant text part;
 *                                                the whole `text` line of that part follows)
 * so this parser reads both (the recorded `run` fixtures still pass through it).
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
#include "agents/adapt_opencode.h"

#include "common/buf.h"
#include "common/xmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct opencode_state {
    int texts;
    char *delta_part; /* the text part the last delta belonged to */
    json_t *streamed; /* ids of the text parts already sent as deltas */
    int steps;
    int64_t in, out, reasoning, cache_read, cache_write;
    char *last_text;
};

static void *state_new(void)
{
    struct opencode_state *st = xcalloc(1, sizeof(struct opencode_state));
    st->streamed = json_object();
    return st;
}

static void state_free(void *p)
{
    struct opencode_state *st = p;
    if (!st) {
        return;
    }
    free(st->last_text);
    free(st->delta_part);
    json_decref(st->streamed);
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
    /* any JSON value the agent printed (a number too: json_dumps refuses scalars without
     * JSON_ENCODE_ANY and gave NULL, which reached strlen: a crash an agent could cause) */
    char *text = json_is_string(o) ? xstrdup(json_string_value(o))
                 : o               ? json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY)
                                   : NULL;
    if (!text) {
        text = xstrdup("");
    }
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
    } else if (strcmp(t, "text_delta") == 0) {
        const char *id = agent_jstr(part, "id");
        const char *delta = agent_jstr(line, "delta");
        if (delta && *delta) {
            if (!st->delta_part || strcmp(st->delta_part, id ? id : "") != 0) {
                /* the first delta of a new part: separate it from the previous text */
                if (st->texts++) {
                    agent_emit_output(p, "\n\n", 2);
                }
                free(st->delta_part);
                st->delta_part = xstrdup(id ? id : "");
                json_object_set_new(st->streamed, st->delta_part, json_true());
            }
            agent_emit_output(p, delta, strlen(delta));
        }
    } else if (strcmp(t, "text") == 0) {
        const char *text = agent_jstr(part, "text");
        const char *id = agent_jstr(part, "id");
        if (text && *text) {
            /* A part already streamed as deltas is only the final answer's candidate. */
            if (!(id && json_object_get(st->streamed, id))) {
                if (st->texts++) {
                    agent_emit_output(p, "\n\n", 2);
                }
                agent_emit_output(p, text, strlen(text));
            }
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
    /* BUN_BE_BUN=1 opencode opencode-serve.mjs opencode  < prompt  (see the top comment) */
    agent_strv_addf(&out->argv, "%s/%s", in->agents_dir, adapt_opencode.bin);
    agent_strv_addf(&out->argv, "%s/opencode-serve.mjs", in->agents_dir);
    agent_strv_addf(&out->argv, "%s/%s", in->agents_dir, adapt_opencode.bin);
    agent_strv_add(&out->env, "BUN_BE_BUN=1");

    /* The config travels in the environment (no file to write); the key is referenced by
     * name ({env:NAME}) so the config itself holds no secret. */
    /* No title agent: OpenCode would spend a model request per session on a title that
     * sessiond does not use. */
    json_t *c = json_pack("{s:b, s:s, s:{s:{s:b}}}", "autoupdate", 0, "share", "disabled", "agent",
                          "title", "disable", 1);
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
    /* The default plugins are npm packages fetched at every start in a fresh home: a request
     * the egress proxy refuses (and records) on each run, for auth flows we do not use. */
    agent_strv_add(&out->env, "OPENCODE_DISABLE_DEFAULT_PLUGINS=1");
    /* OpenCode is a Bun binary. Bun reserves ~70 GB of writable address space at start (a
     * 1 GiB mimalloc arena, a 1 GiB JIT pool, the gigacages…); under the sandbox's per-command
     * RLIMIT_DATA (sandbox_memory_mib, 2 GiB by default) those reservations fail and the JS
     * heap runs in a few hundred MiB: the GC then runs almost continuously and a run took
     * 15-25 s of CPU before its first model request (3-4 s without the limit). Smaller
     * reservations keep it inside the limit (VmData ~1.4 GB, RSS ~360 MB): ~4 s again. These
     * are Bun/JSC tuning variables of the pinned version (an unknown BUN_JSC_ name is fatal,
     * which the CLI test would catch on an upgrade). */
    agent_strv_add(&out->env, "MIMALLOC_ARENA_RESERVE=64MiB");
    agent_strv_add(&out->env, "BUN_JSC_jitMemoryReservationSize=134217728");
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
