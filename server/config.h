/*
 * config.h - the server configuration: one struct, filled from defaults, a JSON config file,
 * SESSIOND_* environment variables and command-line flags (later sources win, in that order).
 *
 * Adding a setting is two lines: a field in struct config below and one entry in the field
 * table in config.c (key, type, field, default, help). The key names everything else:
 *   key "slack.signing_secret"  ->  JSON {"slack":{"signing_secret":"…"}} (or the dotted key),
 *                                   env SESSIOND_SLACK_SIGNING_SECRET,
 *                                   flag --slack-signing-secret VALUE (or --key=VALUE).
 * Types: strings (char *, never NULL after load), integers (int64_t, optional min/max),
 * booleans (int 0/1) and string lists (struct config_list; JSON array, or comma separated in
 * env and flags). Secret strings are never printed by config_dump().
 *
 * Threads: built once by main.c before any thread starts, read-only afterwards (any thread).
 */
#ifndef SESSIOND_CONFIG_H
#define SESSIOND_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/** The version printed by --version and /healthz. */
#define SESSIOND_VERSION "0.1.0"

struct config_list {
    char **v; /* n strings, owned by the config */
    size_t n;
};

struct config {
    /* ---- server ---- */
    char *listen;                   /* "HOST:PORT"; port 0 = a free port (see port_file) */
    char *data_dir;                 /* registry.db, sessions/, admin.token */
    char *config_file;              /* the JSON file read (informational) */
    char *port_file;                /* if set, the bound port is written there after listen */
    char *public_url;               /* external base URL behind a proxy; "" = http://listen */
    char *log_level;                /* debug | info | warn | error | off */
    char *admin_token;              /* SESSIOND_ADMIN_TOKEN; secret */
    char *durability;               /* normal | full (synchronous=FULL, power-loss safe) */
    int64_t threads;                /* libmicrohttpd thread pool size */
    int64_t max_body;               /* request body cap in bytes (413 above) */
    int64_t max_content_chars;      /* message content cap in characters */
    int64_t max_artifact_bytes;     /* artifact upload cap in bytes */
    int64_t max_open_sessions;      /* LRU cap on open session files */
    int64_t session_cache_kib;      /* SQLite page cache per open session file */
    int park_comments;              /* 0: store_config.no_spool */
    int64_t max_unfinished_prompts; /* per session; 429 above */
    int64_t idle_timeout;           /* seconds before an idle HTTP connection is closed */
    int64_t shutdown_grace;         /* seconds to let in-flight requests finish on SIGTERM */
    int request_log;                /* one log line per request */
    struct config_list origins;     /* extra allowed CORS / WebSocket origins */
    /* ---- other subsystems add their fields here (one line each + one table entry) ---- */
    int64_t ws_max_frame;           /* WebSocket: largest client message (bytes); 1009 above */
    int64_t ws_send_queue_max;      /* WebSocket: per-client lag (bytes) before a `gap` */
    int64_t ws_ping_interval;       /* WebSocket: protocol ping after this many idle seconds */
    int ws_require_mask;            /* WebSocket: unmasked client frames close with 1002 */
    char *slack_signing_secret;     /* slack.signing_secret (secret); "" = endpoint answers 503 */
    char *slack_bot_token;          /* slack.bot_token (secret) for the Web API */
    char *slack_api_base;           /* slack.api_base, default https://slack.com/api */
    char *slack_classifier_url;     /* slack.classifier_url: OpenAI-compatible chat completions */
    char *slack_classifier_key;     /* slack.classifier_key (secret) */
    char *slack_classifier_model;   /* slack.classifier_model */
    struct config_list slack_repos; /* slack.repos: "name:hint;hint|description" fallback list */
    char *sandbox;                  /* sandbox: local | process */
    char *agent;                    /* agent: shell | NAME | PATH | "COMMAND ARGS" */
    int64_t sandbox_uid;            /* sandbox_uid: one host uid shared by all sandboxes (legacy) */
    char *sandbox_uid_range;        /* sandbox_uid_range: "LO-HI", one uid per sandbox */
    int64_t sandbox_uid_lo;         /* parsed sandbox_uid_range (default 200000-265535 unless */
    int64_t sandbox_uid_hi;         /* sandbox_uid is set); 0 = none */
    int64_t sandbox_memory_mib;     /* sandbox_memory_mib: per-sandbox memory cap (cgroup) */
    int64_t sandbox_disk_mib;       /* sandbox_disk_mib: per-workspace disk quota (0 = none) */
    int64_t sandbox_pids;           /* sandbox_pids: per-sandbox process cap */
    int64_t sandbox_cpus;           /* sandbox_cpus: per-sandbox CPU cap (0 = none) */
    int64_t sandbox_idle_stop;      /* sandbox_idle_stop: stop idle sandboxes after (s) */
    int64_t exec_timeout;           /* exec_timeout: default exec timeout (s) */
    int64_t prompt_timeout;         /* prompt_timeout: default prompt timeout (s) */
    int64_t cancel_grace_ms;        /* cancel_grace_ms: SIGTERM -> SIGKILL on cancel (ms) */
    char *agents;                   /* agents: JSON object of named agents (agents/agents.h) */
    char *secrets_key_file;         /* secrets.key_file: master key for stored user tokens */
    char *secrets_key_env;          /* secrets.key_env: env var holding the master key instead */
    char *github_api_base;     /* github.api_base: REST API base (GitHub Enterprise: …/api/v3) */
    int64_t github_app_id;     /* github.app_id: GitHub App (0 = none) */
    char *github_app_key_file; /* github.app_key_file: its private key (PEM) */
    int64_t github_installation_id; /* github.installation_id: 0 = looked up per repository */
    char *github_token;          /* github.token (secret): push when neither user nor App has one */
    char *github_app_token;      /* github.app_token (secret): deprecated alias, copied into
                                    github_token at load when that is unset */
    char *git_ca_file;           /* git.ca_file: CA bundle for HTTPS git/GitHub ("" = system) */
    int64_t repos_snapshot_keep; /* repos.snapshot_keep: snapshots kept per session */
    int64_t repos_snapshot_quota_mib; /* repos.snapshot_quota_mib: snapshot disk per session */
    int64_t repos_image_keep;         /* repos.image_keep: ready images kept per repository */
    int64_t repos_pool_max_age;       /* repos.pool_max_age: warm workspace lifetime (s) */
    int64_t repos_tick_ms;            /* repos.tick_ms: image schedule / warm pool period (ms) */
    int64_t repos_sync_wait_ms;       /* repos.sync_wait_ms: bound of the wait for the sync */
    char *repos_file;                 /* repos.file: JSON array of repositories loaded at start */

    struct config_list blocked_commands; /* blocked_commands: programs masked in sandboxes */
    struct config_list egress_default;   /* egress.default: "host:port" every sandbox may reach */
    char *egress_hosts; /* egress.hosts: JSON {"name":"IP"} the egress proxy maps ("" = none) */
    /* ---- caps on what one user, session or prompt may take of the server ---- */
    int64_t max_sandboxes;            /* live sandboxes server-wide (sessions + warm pools) */
    int64_t max_sandboxes_per_user;   /* live session sandboxes per session creator */
    int64_t max_execs_per_session;    /* concurrent execs (sync + async) per session */
    int64_t max_sessions_per_minute;  /* session creations per user and minute */
    int64_t max_prompt_output_bytes;  /* agent output stored per prompt */
    int64_t max_session_output_bytes; /* agent output stored per session, all prompts */

    /* ---- following pull requests (webhook, poller, comments) ---- */
    char *github_webhook_secret;  /* github.webhook_secret (secret); "" = the webhook answers 503 */
    char *github_mention;         /* github.mention: what a comment mentions to prompt */
    int64_t github_poll_interval; /* github.poll_interval_s: the poller's period; 0 = off */
};

/** Build the configuration from argv (flags), envp (NULL = environ) and the JSON file named
 * by --config / SESSIOND_CONFIG. argv[0] is skipped. --help and --version are not handled
 * here (main.c looks for them first). On error returns ERR_INVALID with a message in msg.
 * *out is owned by the caller: config_free(). */
int config_load(int argc, char *const *argv, char *const *envp, struct config **out, char *msg,
                size_t msglen);
/** Free a configuration. NULL is a no-op. */
void config_free(struct config *c);
/** Set one setting from its text form ("listen", "127.0.0.1:0"), as a flag would. */
int config_set(struct config *c, const char *key, const char *value, char *msg, size_t msglen);
/** Print the flag reference (generated from the field table). */
void config_usage(FILE *f, const char *prog);
/** The effective configuration as one JSON object, secrets masked. Caller frees. */
char *config_dump(const struct config *c);
/** Split "HOST:PORT", "[v6]:PORT", ":PORT" or "PORT" into host (default 127.0.0.1) and
 * port. 0 or ERR_INVALID. */
int config_split_listen(const char *listen, char *host, size_t hostlen, int *port);
/** 1 if origin is allowed by config (public_url's origin or one of origins; "*" = any). */
int config_origin_allowed(const struct config *c, const char *origin);

#endif
