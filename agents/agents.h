/*
 * agents.h - named coding agents (Claude Code, Codex, OpenCode) and the adapter framework that
 * runs their CLIs in a session sandbox and maps their JSON streams onto our agent protocol.
 *
 * Configuration: the server config's "agents" object names agents,
 *   {"claude": {"kind": "claude-code", "model": "claude-sonnet-4-5",
 *               "api_base": "https://api.anthropic.com", "api_key_env": "ANTHROPIC_API_KEY"},
 *    "codex":  {"kind": "codex", "model": "gpt-5.5", "api_key_env": "OPENAI_API_KEY"}, ...}
 * kind is one of "claude-code" | "codex" | "opencode". The API key is read from the server's
 * own environment variable named by api_key_env (or "api_key" in the config file); it is put
 * into the agent command's environment only (as a secret), never into an event, a log line
 * or a response. Every line the parser emits is scrubbed of the key as well (a shell tool
 * running `env` would otherwise print it).
 *
 * The parser turns the CLI's stdout into lines of our agent protocol (docs/agent-protocol.md):
 *   {"type":"output","text":"…"}                                 text deltas, never cumulative
 *   {"type":"tool_call","id":"…","name":"…","input":{…}}
 *   {"type":"tool_result","id":"…","output":"…","is_error":false}
 *   {"type":"done","summary":"…","usage":{…},"turns":N}          the final answer
 *   {"type":"error","reason":"…"}                                the prompt failed
 * At most one of done/error is emitted per run; agent_parser_finish() emits an error if the
 * CLI ended without either.
 *
 * Threads: struct agents is immutable after agents_load() and may be read by any thread. A
 * struct agent_parser belongs to one thread at a time (the output pump thread, normally).
 */
#ifndef SESSIOND_AGENTS_H
#define SESSIOND_AGENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct agents;
struct agent_parser;

/** One named agent from the config. Strings owned by struct agents. */
struct agent_def {
    char *name;        /* the config key: "claude" */
    char *kind;        /* "claude-code" | "codex" | "opencode" */
    char *model;       /* "" = the adapter's default */
    char *api_base;    /* "" = the CLI's default endpoint */
    char *api_key_env; /* name of the server env var holding the key; "" = adapter default */
    char *api_key;     /* from the config file (secret), or NULL */
    int max_retries;   /* model request retries; -1 = the CLI's default */
    const struct agent_adapter *adapter;
};

/** Where the command runs (paths as seen inside the sandbox). Borrowed strings. */
struct agent_launch_in {
    const char *agents_dir; /* agents/bundled as mounted inside (read-only) */
    const char *home;       /* a writable directory outside /workspace for the CLI's config */
    const char *workspace;  /* the working directory, "/workspace" */
    const char *proxy_url;  /* "http://127.0.0.1:PORT" (egress proxy inside), or NULL */
};

/** A NULL-terminated, owned list of strings. */
struct agent_strv {
    char **v;
    size_t n, cap;
};

/** What to run. argv and env ("NAME=value") are plain; secrets ("NAME=value") must go to the
 * command's environment only and never be logged. The prompt is given on stdin (and in
 * PROMPT_FILE by the runner); it never appears in argv. Free with agent_launch_free(). */
struct agent_launch {
    struct agent_strv argv;
    struct agent_strv env;
    struct agent_strv secrets;
};

/** The interface each CLI adapter (adapt_claude.c, adapt_codex.c, adapt_opencode.c) fills. */
struct agent_adapter {
    const char *kind;             /* "claude-code" */
    const char *bin;              /* path under the agents dir: "node_modules/.bin/claude" */
    const char *default_model;    /* used when the config names none */
    const char *default_api_base; /* for the egress allow-list when api_base is "" */
    const char *default_key_env;  /* env var name of the key when api_key_env is "" */
    /** Fill out (argv, env, secrets) to run the CLI. key may be NULL (no key configured). */
    int (*launch)(const struct agent_def *def, const char *key, const struct agent_launch_in *in,
                  struct agent_launch *out);
    void *(*state_new)(void);
    void (*state_free)(void *st);
    /** One JSON object line of the CLI's stdout: call the agent_emit_* functions. */
    void (*line)(void *st, json_t *obj, struct agent_parser *p);
    /** The CLI exited (exit_code -1 if killed). May emit done/error; the framework emits an
     * error afterwards if none was emitted. */
    void (*finish)(void *st, struct agent_parser *p, int exit_code);
};

/* ---- named agents ---- */

/** Parse the "agents" config object (NULL or "" = none configured) and resolve adapters.
 * agents_dir_host is agents/bundled on the host (for the installed check). On error returns
 * ERR_INVALID with a message in msg. *out: agents_free(). */
int agents_load(const char *agents_json, const char *agents_dir_host, struct agents **out,
                char *msg, size_t msglen);
void agents_free(struct agents *a);
/** The agent named name, or NULL. */
const struct agent_def *agents_find(const struct agents *a, const char *name);
/** The adapter for a kind ("claude-code"…), or NULL. */
const struct agent_adapter *agents_adapter(const char *kind);
/** 1 if the agent's CLI is installed under agents_dir_host (make agents). */
int agents_installed(const struct agents *a, const struct agent_def *d);
/** {"agents":[{"name","kind","model","api_base","api_key_env","api_key_set","installed"}]},
 * no secret. New reference. default_name (may be NULL) marks "default": true. */
json_t *agents_list_json(const struct agents *a, const char *default_name);
/** The model endpoint host and port (for the egress allow-list): from api_base or the
 * adapter's default. 0 or ERR_INVALID. */
int agents_endpoint(const struct agent_def *d, char *host, size_t hostlen, int *port);
/** The key value from the server env (api_key_env or the adapter default) or the config, or
 * NULL. Borrowed (environment or config storage): never log it. */
const char *agents_key(const struct agent_def *d);

/** Build the launch for a named agent. *out must be zeroed; free with agent_launch_free(). */
int agents_launch(const struct agent_def *d, const struct agent_launch_in *in,
                  struct agent_launch *out);
void agent_launch_free(struct agent_launch *l);
/** Start argv with a /bin/sh wrapper that creates the NULL-terminated dirs (mode 700) and then
 * execs the rest of argv (which the adapter appends): CLIs need their config dirs to exist. */
void agent_launch_mkdirs(struct agent_launch *l, const char *const *dirs);
void agent_strv_add(struct agent_strv *s, const char *str);
void agent_strv_addf(struct agent_strv *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- the stream parser ---- */

enum agent_msg {
    AGENT_MSG_OUTPUT = 1,
    AGENT_MSG_TOOL_CALL,
    AGENT_MSG_TOOL_RESULT,
    AGENT_MSG_DONE,
    AGENT_MSG_ERROR,
    AGENT_MSG_STATUS,
    AGENT_MSG_FILE_CHANGED, /* {"type":"file_changed","path","action":created|modified|deleted,
                               "source":"workspace"}: computed by sessiond, not the CLI */
};

/** Receives each protocol line (JSON object text without newline, scrubbed of secrets). */
typedef void (*agent_line_fn)(void *ctx, enum agent_msg type, const char *json, size_t len);

/** A parser for one run of agent d (its key, if any, is registered for scrubbing).
 * *out: agent_parser_free(). */
int agent_parser_new(const struct agent_def *d, agent_line_fn fn, void *ctx,
                     struct agent_parser **out);
/** Same, for an adapter and explicit secrets (NULL-terminated, may be NULL). Tests. */
int agent_parser_new_adapter(const struct agent_adapter *ad, const char *const *secrets,
                             agent_line_fn fn, void *ctx, struct agent_parser **out);
void agent_parser_free(struct agent_parser *p);
/** Feed stdout bytes (any split). Complete lines are parsed at once. */
void agent_parser_feed(struct agent_parser *p, const char *data, size_t n);
/** Feed stderr bytes: only the last few lines are kept, for the failure reason. */
void agent_parser_stderr(struct agent_parser *p, const char *data, size_t n);
/** The CLI exited: parse a last unterminated line, let the adapter conclude, and emit an error
 * if neither done nor error was emitted. exit_code -1 when killed by a signal. */
void agent_parser_finish(struct agent_parser *p, int exit_code);
/** Report file changes in the host directory root (a workspace): it is scanned now, and again
 * after every tool result and at the end; differences become file_changed lines. */
void agent_parser_set_workspace(struct agent_parser *p, const char *root);
/** 1 once done or error was emitted. */
int agent_parser_ended(const struct agent_parser *p);

/** Counters of one run (for tests and metrics). */
struct agent_parser_stats {
    int lines, bad_lines, outputs, tool_calls, tool_results;
    int64_t first_output_us; /* monotonic time of the first output, 0 if none */
};
void agent_parser_stats(const struct agent_parser *p, struct agent_parser_stats *out);

/* For adapters: emit one protocol message (all strings are copied, scrubbed). */
void agent_emit_output(struct agent_parser *p, const char *text, size_t n);
void agent_emit_tool_call(struct agent_parser *p, const char *id, const char *name, json_t *input);
void agent_emit_tool_result(struct agent_parser *p, const char *id, const char *output, size_t n,
                            int is_error);
/** usage: {"input_tokens":…,"output_tokens":…,…} (borrowed, may be NULL). */
void agent_emit_done(struct agent_parser *p, const char *summary, json_t *usage, int turns);
void agent_emit_error(struct agent_parser *p, const char *reason);
/** {"type":"status","status":status,…fields} (fields borrowed, may be NULL). */
void agent_emit_status(struct agent_parser *p, const char *status, json_t *fields);
/** The last stderr line(s) kept (scrubbed), "" if none. Valid until the next feed. */
const char *agent_parser_stderr_tail(struct agent_parser *p);

/* ---- running a named agent in a sandbox (the runner's hook) ---- */

struct sbx;
struct agent_run;
struct redact_set;

/** Opens the egress listener of sandbox name with the allow-list (NULL terminated
 * "host:port"): at unix_path, or (unix_path NULL) on a loopback TCP port put in *port_out.
 * Provided by the server (server/egress.c) through agents_set_egress(), since sandbox/
 * never includes server headers. */
typedef int (*agent_egress_fn)(void *ctx, const char *name, const char *const *allow,
                               const char *unix_path, int *port_out);
/** Closes the egress listener of sandbox name (the run ended). Quick; any thread. */
typedef void (*agent_egress_close_fn)(void *ctx, const char *name);
/** Call once at start-up, before any run. close_fn may be NULL. */
void agents_set_egress(struct agents *a, agent_egress_fn fn, agent_egress_close_fn close_fn,
                       void *ctx);

/** Prepare a run of the agent named name in sbx for session sid: the launch (argv, env with
 * the key), the egress policy (the model endpoint plus extra_allow, the NULL-terminated
 * "host:port" entries of the session's repository, or NULL; an isolated sandbox reaches them
 * through the proxy), the parser (lines go to fn) and a snapshot of the workspace for
 * file_changed. The policy is set anew for every run, so a changed repository list applies
 * from the next prompt on. ERR_NOT_FOUND if name is not a configured agent (the caller runs
 * it as a command), ERR_UNAVAILABLE if its CLI is not installed. *out: agent_run_free(). */
int agent_run_new(const struct agents *a, const char *name, struct sbx *sbx, const char *sid,
                  const char *const *extra_allow, agent_line_fn fn, void *ctx,
                  struct agent_run **out);
void agent_run_free(struct agent_run *ar);
/** The command (NULL terminated); valid until agent_run_free. */
const char *const *agent_run_argv(struct agent_run *ar);
/** base ("NAME=value", NULL terminated) plus the agent's variables and its key: a new array
 * the caller frees with agent_run_env_free (it wipes the key). */
char **agent_run_env(struct agent_run *ar, const char *const *base);
void agent_run_env_free(char **env);
/** Output of the command (pump thread): stdout is parsed, stderr kept for the reason. */
void agent_run_stdout(struct agent_run *ar, const char *data, size_t n);
void agent_run_stderr(struct agent_run *ar, const char *data, size_t n);
#define AGENT_EXIT_CANCELLED (-1000)
/** The command ended (exit_code -1 if killed, AGENT_EXIT_CANCELLED when the caller cancelled
 * it): its egress listener is closed (the sandbox keeps no route to the model endpoint once
 * the CLI is gone), then last lines, file changes, then done or error (no error for a
 * cancelled run). */
void agent_run_exit(struct agent_run *ar, int exit_code);
/** The values the run's output is scrubbed of (its key): a new reference the caller drops with
 * redact_set_unref, or NULL. Immutable once the run exists: any thread may use it. */
struct redact_set *agent_run_secrets(struct agent_run *ar);
/** {"usage":{…},"turns":N} of the run's done line into obj (for prompt.completed). */
void agent_run_completion(struct agent_run *ar, json_t *obj);

/* Small JSON helpers the adapters share. */
/** obj[key] as a string or NULL. */
const char *agent_jstr(json_t *obj, const char *key);
/** obj[key] as an integer or dflt. */
int64_t agent_jint(json_t *obj, const char *key, int64_t dflt);
/** Text of a content value: a string, or an array of {"type":"text","text":…} blocks joined.
 * Caller frees. Never NULL. */
char *agent_content_text(json_t *content);

#endif
