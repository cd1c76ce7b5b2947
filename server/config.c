/*
 * config.c - configuration from defaults, a JSON file, SESSIOND_* env vars and flags.
 *
 * Everything is driven by one table of fields (key, type, offset, default, help): parsing,
 * env names, flag names, --help text and the start-up dump all come from it, so a new setting
 * is one struct field plus one table line. Precedence: default < file < env < flag.
 * Thread context: main thread at start-up only.
 */
#include "server/config.h"

#include "common/err.h"
#include "common/jsonx.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/egress/egress.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern char **environ;

enum cfg_type { CFG_STR, CFG_SECRET, CFG_INT, CFG_BOOL, CFG_LIST };

struct cfg_field {
    const char *key;
    enum cfg_type type;
    size_t off;
    const char *def;     /* text form of the default ("" for none) */
    int64_t min, max;    /* integers only (min == max: unchecked) */
    const char *choices; /* strings only: "a|b|c" or NULL */
    const char *help;
};

#define FS(key, field, def, choices, help)                                                         \
    {                                                                                              \
        key, CFG_STR, offsetof(struct config, field), def, 0, 0, choices, help                     \
    }
#define FSECRET(key, field, help)                                                                  \
    {                                                                                              \
        key, CFG_SECRET, offsetof(struct config, field), "", 0, 0, NULL, help                      \
    }
#define FI(key, field, def, min, max, help)                                                        \
    {                                                                                              \
        key, CFG_INT, offsetof(struct config, field), def, min, max, NULL, help                    \
    }
#define FB(key, field, def, help)                                                                  \
    {                                                                                              \
        key, CFG_BOOL, offsetof(struct config, field), def, 0, 0, NULL, help                       \
    }
#define FL(key, field, help)                                                                       \
    {                                                                                              \
        key, CFG_LIST, offsetof(struct config, field), "", 0, 0, NULL, help                        \
    }

/* The one table. Keep it in the order of --help. */
static const struct cfg_field fields[] = {
    FS("listen", listen, "127.0.0.1:8080", NULL, "HOST:PORT to listen on (port 0: any free port)"),
    FS("data_dir", data_dir, "./data", NULL, "directory for registry.db and session files"),
    FS("config", config_file, "", NULL, "JSON config file (keys as below)"),
    FS("port_file", port_file, "", NULL, "write the bound port to this file once listening"),
    FS("public_url", public_url, "", NULL, "external base URL (links, origin checks)"),
    FS("log_level", log_level, "info", "debug|info|warn|error|off", "log threshold"),
    FSECRET("admin_token", admin_token, "admin bearer token (else generated in data_dir)"),
    FS("durability", durability, "normal", "normal|full", "full: fsync every commit"),
    FI("threads", threads, "4", 1, 256, "HTTP worker threads"),
    FI("max_body", max_body, "1048576", 1024, (int64_t)1 << 32, "request body cap (bytes)"),
    FI("max_content_chars", max_content_chars, "64000", 1, 100000000, "message content cap"),
    FI("max_artifact_bytes", max_artifact_bytes, "16777216", 1024, (int64_t)1 << 32,
       "artifact upload cap (bytes)"),
    FI("max_open_sessions", max_open_sessions, "256", 1, 1000000, "open session files (LRU)"),
    FI("session_cache_kib", session_cache_kib, "64", 16, 1048576,
       "SQLite page cache per open session file (KiB)"),
    FB("park_comments", park_comments, "true",
       "comments to hibernated sessions go to the spool (no wake-up)"),
    FI("max_unfinished_prompts", max_unfinished_prompts, "10", 1, 100000,
       "queued+running prompts per session"),
    FI("idle_timeout", idle_timeout, "120", 1, 86400, "idle HTTP connection timeout (s)"),
    FI("shutdown_grace", shutdown_grace, "10", 0, 3600, "seconds for in-flight requests on stop"),
    FB("request_log", request_log, "true", "one log line per HTTP request"),
    FL("origins", origins, "extra allowed browser origins (comma separated)"),
    FI("ws.max_frame", ws_max_frame, "1048576", 1024, (int64_t)1 << 30,
       "WebSocket message cap (bytes)"),
    FI("ws.send_queue_max", ws_send_queue_max, "1048576", 4096, (int64_t)1 << 32,
       "WebSocket per-client lag before a gap (bytes)"),
    FI("ws.ping_interval", ws_ping_interval, "30", 1, 3600, "WebSocket keepalive ping (s)"),
    FB("ws.require_mask", ws_require_mask, "true",
       "close WebSocket clients that send unmasked frames (1002); costs 2 fds per client"),
    FSECRET("slack.signing_secret", slack_signing_secret, "Slack signing secret (enables Slack)"),
    FSECRET("slack.bot_token", slack_bot_token, "Slack bot token (xoxb-...) for replies"),
    FS("slack.api_base", slack_api_base, "https://slack.com/api", NULL, "Slack Web API base URL"),
    FS("slack.classifier_url", slack_classifier_url, "", NULL, "OpenAI-compatible chat URL"),
    FSECRET("slack.classifier_key", slack_classifier_key, "bearer key for slack.classifier_url"),
    FS("slack.classifier_model", slack_classifier_model, "", NULL, "model name for the classifier"),
    FL("slack.repos", slack_repos, "repos for Slack when no registry: name:hint;hint|description"),
    FS("sandbox", sandbox, "local", "local|process", "sandbox backend (process: NO isolation)"),
    FS("agent", agent, "shell", NULL, "default agent: shell | NAME | PATH | \"COMMAND ARGS\""),
    FI("sandbox_uid", sandbox_uid, "0", 0, 2147483647,
       "one host uid shared by all sandboxes (legacy; not with sandbox_uid_range)"),
    FS("sandbox_uid_range", sandbox_uid_range, "", NULL,
       "LO-HI: host uids, one per sandbox (\"\": 200000-265535 unless sandbox_uid is set)"),
    FI("sandbox_memory_mib", sandbox_memory_mib, "2048", 16, 1 << 20, "memory per sandbox (MiB)"),
    FI("sandbox_disk_mib", sandbox_disk_mib, "10240", 0, 1 << 24,
       "disk per sandbox workspace (MiB; a loop-mounted file system each; 0: no quota)"),
    FI("sandbox_pids", sandbox_pids, "512", 8, 1 << 22, "processes per sandbox"),
    FI("sandbox_cpus", sandbox_cpus, "0", 0, 1024, "CPUs per sandbox (cgroup quota; 0: no cap)"),
    FI("sandbox_idle_stop", sandbox_idle_stop, "600", 1, 1 << 30, "stop idle sandboxes after (s)"),
    FI("exec_timeout", exec_timeout, "600", 1, 1 << 30, "default exec timeout (s)"),
    FI("prompt_timeout", prompt_timeout, "5400", 1, 1 << 30, "default prompt timeout (s)"),
    FI("cancel_grace_ms", cancel_grace_ms, "5000", 0, 600000,
       "cancel: SIGTERM, SIGKILL after (ms)"),
    FL("blocked_commands", blocked_commands,
       "programs sandboxes may not run (absolute paths or names in /usr/bin:/bin; a policy, "
       "not a boundary: a copy still runs)"),
    FL("egress.default", egress_default,
       "\"host:port\" pairs every sandbox may reach through the egress proxy, besides its "
       "repository's egress list (package registries)"),
    FS("egress.hosts", egress_hosts, "", NULL,
       "JSON {\"name\":\"IP\"}: names the egress proxy connects to that address (private "
       "ones too), e.g. an internal registry"),
    FI("max_sandboxes", max_sandboxes, "32", 1, 100000,
       "live sandboxes server-wide (sessions + warm pools)"),
    FI("max_sandboxes_per_user", max_sandboxes_per_user, "8", 1, 100000,
       "live session sandboxes per session creator (admins: server cap only)"),
    FI("max_execs_per_session", max_execs_per_session, "8", 1, 10000,
       "concurrent execs per session (429 above)"),
    FI("max_sessions_per_minute", max_sessions_per_minute, "60", 1, 1000000,
       "sessions a user may create per minute (429 above; admins exempt)"),
    FI("max_prompt_output_bytes", max_prompt_output_bytes, "16777216", 4096, (int64_t)1 << 40,
       "agent output stored per prompt (bytes; then agent.truncated)"),
    FI("max_session_output_bytes", max_session_output_bytes, "268435456", 4096, (int64_t)1 << 40,
       "agent output stored per session (bytes, all prompts)"),
    /* secret: it may hold inline "api_key"s, so config_dump must not print it */
    FSECRET("agents", agents,
            "named coding agents: JSON {\"claude\":{\"kind\":\"claude-code\",...}}"),
    FS("secrets.key_file", secrets_key_file, "", NULL,
       "master key file for stored user tokens (\"\": <data_dir>/secrets.key, created)"),
    FS("secrets.key_env", secrets_key_env, "SESSIOND_SECRETS_KEY", NULL,
       "environment variable holding the master key (hex or base64), used if set"),
    FS("github.api_base", github_api_base, "https://api.github.com", NULL,
       "GitHub REST API base (Enterprise: https://HOST/api/v3)"),
    FI("github.app_id", github_app_id, "0", 0, INT64_MAX,
       "GitHub App id (with github.app_key_file: installation tokens for git and pull requests)"),
    FS("github.app_key_file", github_app_key_file, "", NULL,
       "the GitHub App's private key (PEM; mode 0600 or 0400)"),
    FI("github.installation_id", github_installation_id, "0", 0, INT64_MAX,
       "the App installation to use (0: looked up per repository owner)"),
    FSECRET("github.token", github_token,
            "static token to push with when neither the user nor the App has one"),
    FSECRET("github.app_token", github_app_token, "deprecated name of github.token"),
    FSECRET("github.webhook_secret", github_webhook_secret,
            "secret of the GitHub webhook (POST /v1/github/webhook; \"\": it answers 503)"),
    FS("github.mention", github_mention, "@sessiond", NULL,
       "what a pull request comment must contain to prompt its session"),
    FI("github.poll_interval_s", github_poll_interval, "300", 0, 86400,
       "read open pull requests' state and CI from GitHub this often (s; 0 = off)"),
    FS("git.ca_file", git_ca_file, "", NULL, "CA bundle for HTTPS git and GitHub (\"\": system)"),
    FI("repos.snapshot_keep", repos_snapshot_keep, "20", 1, 10000, "snapshots kept per session"),
    FI("repos.snapshot_quota_mib", repos_snapshot_quota_mib, "2048", 1, 1 << 30,
       "snapshot disk quota per session (MiB)"),
    FI("repos.image_keep", repos_image_keep, "3", 1, 1000, "ready images kept per repository"),
    FI("repos.pool_max_age", repos_pool_max_age, "1500", 1, 1 << 30, "warm workspace lifetime (s)"),
    FI("repos.sync_wait_ms", repos_sync_wait_ms, "30000", 1, 3600000,
       "writes and the agent wait this long for a new workspace's git sync (ms)"),
    FI("repos.tick_ms", repos_tick_ms, "30000", 50, 86400000,
       "image schedule and warm pool period (ms)"),
    FS("repos.file", repos_file, "", NULL,
       "JSON file: [{name,url,default_branch,setup,hints,...}] added or updated at start"),
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static void *field_ptr(struct config *c, const struct cfg_field *f)
{
    return (char *)c + f->off;
}

static const struct cfg_field *find_field(const char *key, size_t keylen)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        const char *k = fields[i].key;
        if (strlen(k) != keylen) {
            continue;
        }
        /* '-' and '_' are the same; '.' only matches '.'. */
        size_t j = 0;
        for (; j < keylen; j++) {
            char a = k[j], b = key[j];
            if (a == '_' && b == '-') {
                b = '_';
            }
            if (a != b) {
                break;
            }
        }
        if (j == keylen) {
            return &fields[i];
        }
    }
    return NULL;
}

static void list_free(struct config_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i]);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void list_add(struct config_list *l, const char *s, size_t n)
{
    while (n && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n && isspace((unsigned char)s[n - 1])) {
        n--;
    }
    if (!n) {
        return;
    }
    l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = xstrndup(s, n);
}

/* blocked_commands entries: an absolute path of non-empty components other than "." and ".."
 * (it names a file of the sandbox's system directories), or a program name without '/'. */
static int blocked_entry_ok(const char *e)
{
    size_t n = strlen(e);
    if (n >= 4096 || !strcmp(e, ".") || !strcmp(e, "..")) {
        return 0;
    }
    if (e[0] != '/') {
        return !strchr(e, '/');
    }
    for (const char *p = e; *p;) {
        const char *c = p + 1; /* a component starts after each '/' */
        size_t cl = strcspn(c, "/");
        if (!cl || (cl == 1 && c[0] == '.') || (cl == 2 && c[0] == '.' && c[1] == '.')) {
            return 0;
        }
        p = c + cl;
    }
    return 1;
}

static int check_blocked(const struct config_list *l, char *msg, size_t msglen)
{
    for (size_t i = 0; i < l->n; i++) {
        if (!blocked_entry_ok(l->v[i])) {
            snprintf(msg, msglen,
                     "config: blocked_commands entry '%s' must be an absolute path or a program "
                     "name",
                     l->v[i]);
            return ERR_INVALID;
        }
    }
    return 0;
}

/* egress.default: each entry a valid "host:port" (stored normalised, as a repository's egress
 * list is); egress.hosts: a JSON object of DNS name -> IP address. */
static int check_egress(struct config *c, char *msg, size_t msglen)
{
    char norm[EGRESS_ENTRY_MAX], why[160];
    const char *k;
    json_t *v, *hosts = NULL;
    int rc = 0;
    for (size_t i = 0; i < c->egress_default.n; i++) {
        if (egress_entry_norm(c->egress_default.v[i], norm, sizeof(norm), why, sizeof(why))) {
            snprintf(msg, msglen, "config: egress.default entry '%s': %s", c->egress_default.v[i],
                     why);
            return ERR_INVALID;
        }
        free(c->egress_default.v[i]);
        c->egress_default.v[i] = xstrdup(norm);
    }
    if (!*c->egress_hosts) {
        return 0;
    }
    hosts = json_loads(c->egress_hosts, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(hosts)) {
        snprintf(msg, msglen, "config: egress.hosts must be an object {\"name\": \"IP\"}");
        rc = ERR_INVALID;
        goto out;
    }
    json_object_foreach(hosts, k, v)
    {
        if (!json_is_string(v)) {
            snprintf(msg, msglen, "config: egress.hosts \"%s\" must map to an IP address string",
                     k);
            rc = ERR_INVALID;
            goto out;
        }
        if (egress_host_check(k, json_string_value(v), why, sizeof(why))) {
            snprintf(msg, msglen, "config: egress.hosts \"%s\": %s", k, why);
            rc = ERR_INVALID;
            goto out;
        }
    }
out:
    json_decref(hosts);
    return rc;
}

static int parse_bool(const char *s, int *out)
{
    if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") ||
        !strcasecmp(s, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") ||
        !strcasecmp(s, "off")) {
        *out = 0;
        return 0;
    }
    return ERR_INVALID;
}

static int choice_ok(const char *choices, const char *v)
{
    size_t vl = strlen(v);
    const char *p = choices;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == vl && strncmp(p, v, n) == 0) {
            return 1;
        }
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* Set a field from its text form (flags, env, defaults). */
static int set_text(struct config *c, const struct cfg_field *f, const char *v, char *msg,
                    size_t msglen)
{
    void *p = field_ptr(c, f);
    switch (f->type) {
    case CFG_STR:
    case CFG_SECRET:
        if (f->choices && !choice_ok(f->choices, v)) {
            snprintf(msg, msglen, "config: %s must be one of %s", f->key, f->choices);
            return ERR_INVALID;
        }
        free(*(char **)p);
        *(char **)p = xstrdup(v);
        return 0;
    case CFG_INT: {
        int64_t x;
        if (util_parse_i64(v, &x) != 0) {
            snprintf(msg, msglen, "config: %s must be an integer", f->key);
            return ERR_INVALID;
        }
        if (f->min != f->max && (x < f->min || x > f->max)) {
            snprintf(msg, msglen, "config: %s must be between %lld and %lld", f->key,
                     (long long)f->min, (long long)f->max);
            return ERR_INVALID;
        }
        *(int64_t *)p = x;
        return 0;
    }
    case CFG_BOOL:
        if (parse_bool(v, (int *)p) != 0) {
            snprintf(msg, msglen, "config: %s must be true or false", f->key);
            return ERR_INVALID;
        }
        return 0;
    case CFG_LIST: {
        struct config_list *l = p;
        list_free(l);
        for (const char *s = v; *s;) {
            const char *comma = strchr(s, ',');
            size_t n = comma ? (size_t)(comma - s) : strlen(s);
            list_add(l, s, n);
            s += n + (comma ? 1 : 0);
        }
        return 0;
    }
    }
    return ERR_INTERNAL;
}

/* Set a field from a JSON value (config file). */
static int set_json(struct config *c, const struct cfg_field *f, json_t *v, char *msg,
                    size_t msglen)
{
    char num[32];
    switch (f->type) {
    case CFG_STR:
    case CFG_SECRET:
        if (json_is_object(v) && (!strcmp(f->key, "agents") || !strcmp(f->key, "egress.hosts"))) {
            /* The structured settings: kept as JSON text, validated by their owner. */
            char *js = jx_dump(v);
            int rc = set_text(c, f, js, msg, msglen);
            free(js);
            return rc;
        }
        if (!json_is_string(v)) {
            snprintf(msg, msglen, "config: %s must be a string", f->key);
            return ERR_INVALID;
        }
        return set_text(c, f, json_string_value(v), msg, msglen);
    case CFG_INT:
        if (!json_is_integer(v)) {
            snprintf(msg, msglen, "config: %s must be an integer", f->key);
            return ERR_INVALID;
        }
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        return set_text(c, f, num, msg, msglen);
    case CFG_BOOL:
        if (!json_is_boolean(v)) {
            snprintf(msg, msglen, "config: %s must be true or false", f->key);
            return ERR_INVALID;
        }
        *(int *)field_ptr(c, f) = json_is_true(v);
        return 0;
    case CFG_LIST: {
        struct config_list *l = field_ptr(c, f);
        size_t i;
        json_t *e;
        if (json_is_string(v)) {
            return set_text(c, f, json_string_value(v), msg, msglen);
        }
        if (!json_is_array(v)) {
            snprintf(msg, msglen, "config: %s must be an array of strings", f->key);
            return ERR_INVALID;
        }
        list_free(l);
        json_array_foreach(v, i, e)
        {
            if (!json_is_string(e)) {
                snprintf(msg, msglen, "config: %s must be an array of strings", f->key);
                return ERR_INVALID;
            }
            list_add(l, json_string_value(e), strlen(json_string_value(e)));
        }
        return 0;
    }
    }
    return ERR_INTERNAL;
}

/* Walk a JSON object; nested objects extend the dotted key ("slack" + "token"). */
static int apply_json(struct config *c, json_t *obj, const char *prefix, char *msg, size_t msglen)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        char key[256];
        snprintf(key, sizeof(key), "%s%s%s", prefix, *prefix ? "." : "", k);
        const struct cfg_field *f = find_field(key, strlen(key));
        int rc;
        if (f) {
            rc = set_json(c, f, v, msg, msglen);
        } else if (json_is_object(v)) {
            rc = apply_json(c, v, key, msg, msglen);
        } else {
            snprintf(msg, msglen, "config: unknown key '%s'", key);
            rc = ERR_INVALID;
        }
        if (rc) {
            return rc;
        }
    }
    return 0;
}

static int load_file(struct config *c, const char *path, char *msg, size_t msglen)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    int rc;
    if (!root) {
        snprintf(msg, msglen, "config: %s: line %d: %s", path, jerr.line, jerr.text);
        return ERR_INVALID;
    }
    if (!json_is_object(root)) {
        snprintf(msg, msglen, "config: %s: must contain a JSON object", path);
        json_decref(root);
        return ERR_INVALID;
    }
    rc = apply_json(c, root, "", msg, msglen);
    json_decref(root);
    return rc;
}

/* "slack.signing_secret" -> "SESSIOND_SLACK_SIGNING_SECRET" */
static void env_name(const char *key, char *out, size_t n)
{
    size_t o = (size_t)snprintf(out, n, "SESSIOND_");
    for (const char *p = key; *p && o + 1 < n; p++) {
        char ch = *p;
        out[o++] = (ch == '.' || ch == '-') ? '_' : (char)toupper((unsigned char)ch);
    }
    out[o] = 0;
}

/* "slack.signing_secret" -> "slack-signing-secret" */
static void flag_name(const char *key, char *out, size_t n)
{
    size_t o = 0;
    for (const char *p = key; *p && o + 1 < n; p++) {
        out[o++] = (*p == '.' || *p == '_') ? '-' : *p;
    }
    out[o] = 0;
}

static const char *env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; e && *e; e++) {
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') {
            return *e + n + 1;
        }
    }
    return NULL;
}

static const struct cfg_field *find_flag(const char *name, size_t n)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        char fl[128];
        flag_name(fields[i].key, fl, sizeof(fl));
        if (strlen(fl) == n && strncmp(fl, name, n) == 0) {
            return &fields[i];
        }
    }
    return NULL;
}

int config_set(struct config *c, const char *key, const char *value, char *msg, size_t msglen)
{
    const struct cfg_field *f = find_field(key, strlen(key));
    if (!f) {
        snprintf(msg, msglen, "config: unknown key '%s'", key);
        return ERR_INVALID;
    }
    return set_text(c, f, value, msg, msglen);
}

/* Parse argv into (field, value) pairs; apply them when apply != 0. Run twice: once to find
 * --config (and reject bad flags early), once after file+env to let flags win. */
static int apply_flags(struct config *c, int argc, char *const *argv, int apply, char *msg,
                       size_t msglen)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(msg, msglen, "unexpected argument '%s' (see --help)", a);
            return ERR_INVALID;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t n = eq ? (size_t)(eq - name) : strlen(name);
        const struct cfg_field *f = find_flag(name, n);
        const char *v = NULL;
        if (!f) {
            snprintf(msg, msglen, "unknown option '%.*s' (see --help)", (int)(n + 2), a);
            return ERR_INVALID;
        }
        if (eq) {
            v = eq + 1;
        } else if (f->type == CFG_BOOL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0 ||
                                           parse_bool(argv[i + 1], &(int){0}) != 0)) {
            v = "true"; /* a bare boolean flag */
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            snprintf(msg, msglen, "option '%s' needs a value", a);
            return ERR_INVALID;
        }
        if (apply || f->off == offsetof(struct config, config_file)) {
            int rc = set_text(c, f, v, msg, msglen);
            if (rc) {
                return rc;
            }
        }
    }
    return 0;
}

/* sandbox_uid_range "LO-HI" into sandbox_uid_lo/hi: one host uid per sandbox. Both it and the
 * legacy shared sandbox_uid would leave it unclear which one the sandboxes run as: refused. */
static int check_uid_range(struct config *c, char *msg, size_t msglen)
{
    const char *r = c->sandbox_uid_range;
    c->sandbox_uid_lo = c->sandbox_uid_hi = 0;
    if (!*r) {
        if (c->sandbox_uid == 0) {
            c->sandbox_uid_lo = 200000;
            c->sandbox_uid_hi = 265535;
        }
        return 0;
    }
    if (c->sandbox_uid > 0) {
        snprintf(msg, msglen,
                 "config: sandbox_uid and sandbox_uid_range are both set: give only "
                 "sandbox_uid_range (one uid per sandbox)");
        return ERR_INVALID;
    }
    const char *dash = strchr(r, '-');
    char lo_s[32];
    int64_t lo = 0, hi = 0;
    size_t ll = dash ? (size_t)(dash - r) : 0;
    if (!dash || ll == 0 || ll >= sizeof(lo_s)) {
        goto bad;
    }
    memcpy(lo_s, r, ll);
    lo_s[ll] = 0;
    if (util_parse_i64(lo_s, &lo) != 0 || util_parse_i64(dash + 1, &hi) != 0) {
        goto bad;
    }
    /* uid 0 is root, and the top of the 32-bit space holds (uid_t)-1 and the overflow ids */
    if (lo <= 0 || hi < lo || hi >= 2147483647 || hi - lo + 1 > 65536) {
        goto bad;
    }
    c->sandbox_uid_lo = lo;
    c->sandbox_uid_hi = hi;
    return 0;
bad:
    snprintf(msg, msglen,
             "config: sandbox_uid_range must be LO-HI with 0 < LO <= HI < 2147483647 and at "
             "most 65536 uids, got '%s'",
             r);
    return ERR_INVALID;
}

int config_load(int argc, char *const *argv, char *const *envp, struct config **out, char *msg,
                size_t msglen)
{
    struct config *c = xcalloc(1, sizeof(*c));
    int rc = 0;
    char name[160];
    *out = NULL;
    if (!envp) {
        envp = environ;
    }
    for (size_t i = 0; i < NFIELDS; i++) {
        rc = set_text(c, &fields[i], fields[i].def, msg, msglen);
        if (rc) {
            goto out;
        }
    }
    /* The config file's name may come from the env or a flag. */
    const char *cf = env_get(envp, "SESSIOND_CONFIG");
    if (cf) {
        rc = set_text(c, find_field("config", 6), cf, msg, msglen);
        if (rc) {
            goto out;
        }
    }
    rc = apply_flags(c, argc, argv, 0, msg, msglen);
    if (rc) {
        goto out;
    }
    if (*c->config_file) {
        rc = load_file(c, c->config_file, msg, msglen);
        if (rc) {
            goto out;
        }
    }
    for (size_t i = 0; i < NFIELDS; i++) {
        env_name(fields[i].key, name, sizeof(name));
        const char *v = env_get(envp, name);
        if (v && fields[i].off != offsetof(struct config, config_file)) {
            rc = set_text(c, &fields[i], v, msg, msglen);
            if (rc) {
                /* Name the variable, not the key, so the user finds it. */
                snprintf(msg, msglen, "config: environment variable %s has a bad value", name);
                goto out;
            }
        }
    }
    rc = apply_flags(c, argc, argv, 1, msg, msglen);
    if (rc) {
        goto out;
    }
    {
        char host[256];
        int port;
        if (config_split_listen(c->listen, host, sizeof(host), &port) != 0) {
            snprintf(msg, msglen, "config: listen must be HOST:PORT, got '%s'", c->listen);
            rc = ERR_INVALID;
            goto out;
        }
    }
    if (!*c->data_dir) {
        snprintf(msg, msglen, "config: data_dir must not be empty");
        rc = ERR_INVALID;
        goto out;
    }
    rc = check_blocked(&c->blocked_commands, msg, msglen);
    if (rc) {
        goto out;
    }
    rc = check_uid_range(c, msg, msglen);
    if (rc) {
        goto out;
    }
    if (*c->github_app_token && !*c->github_token) {
        /* the old name of the static token: still honoured, and said so at start */
        free(c->github_token);
        c->github_token = xstrdup(c->github_app_token);
    }
    rc = check_egress(c, msg, msglen);
    if (rc) {
        goto out;
    }
    *out = c;
    c = NULL;
out:
    config_free(c);
    return rc;
}

void config_free(struct config *c)
{
    if (!c) {
        return;
    }
    for (size_t i = 0; i < NFIELDS; i++) {
        void *p = field_ptr(c, &fields[i]);
        if (fields[i].type == CFG_STR || fields[i].type == CFG_SECRET) {
            free(*(char **)p);
        } else if (fields[i].type == CFG_LIST) {
            list_free(p);
        }
    }
    free(c);
}

void config_usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [options]\n\n"
            "sessiond - a self-hosted session server for background coding agents.\n\n"
            "Every option may also be set in the JSON config file (--config) by its key, or\n"
            "by the environment variable SESSIOND_<KEY>. Precedence: flag > env > file.\n\n",
            prog);
    for (size_t i = 0; i < NFIELDS; i++) {
        char fl[128], env[160], left[200];
        const struct cfg_field *fd = &fields[i];
        flag_name(fd->key, fl, sizeof(fl));
        env_name(fd->key, env, sizeof(env));
        snprintf(left, sizeof(left), "--%s %s", fl,
                 fd->type == CFG_INT    ? "N"
                 : fd->type == CFG_BOOL ? "[BOOL]"
                 : fd->type == CFG_LIST ? "A,B"
                                        : "VALUE");
        fprintf(f, "  %-34s %s", left, fd->help);
        if (fd->choices) {
            fprintf(f, " (%s)", fd->choices);
        }
        if (*fd->def) {
            fprintf(f, " [%s]", fd->def);
        }
        fprintf(f, "\n  %-34s env %s\n", "", env);
    }
    fprintf(f, "  %-34s %s\n  %-34s %s\n", "--help", "show this help", "--version",
            "show the version");
}

char *config_dump(const struct config *c)
{
    json_t *o = json_object();
    for (size_t i = 0; i < NFIELDS; i++) {
        const struct cfg_field *f = &fields[i];
        const void *p = (const char *)c + f->off;
        json_t *v = NULL;
        switch (f->type) {
        case CFG_STR:
            v = json_string(*(char *const *)p);
            break;
        case CFG_SECRET:
            v = json_string(**(char *const *)p ? "(set)" : "");
            break;
        case CFG_INT:
            v = json_integer(*(const int64_t *)p);
            break;
        case CFG_BOOL:
            v = json_boolean(*(const int *)p);
            break;
        case CFG_LIST: {
            const struct config_list *l = p;
            v = json_array();
            for (size_t j = 0; j < l->n; j++) {
                json_array_append_new(v, json_string(l->v[j]));
            }
            break;
        }
        }
        json_object_set_new(o, f->key, v ? v : json_null());
    }
    char *s = jx_dump(o);
    json_decref(o);
    return s;
}

int config_split_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    const char *colon;
    const char *hs = listen;
    size_t hl;
    int64_t p;
    if (!listen || !*listen) {
        return ERR_INVALID;
    }
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':') {
            return ERR_INVALID;
        }
        hs = listen + 1;
        hl = (size_t)(close - hs);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon) {
            hl = 0;
            colon = listen - 1; /* "8080" */
        } else {
            if (memchr(listen, ':', (size_t)(colon - listen))) {
                return ERR_INVALID; /* a bare IPv6 address needs brackets */
            }
            hl = (size_t)(colon - listen);
        }
    }
    if (util_parse_i64(colon + 1, &p) != 0 || p < 0 || p > 65535) {
        return ERR_INVALID;
    }
    if (hl == 0) {
        hs = "127.0.0.1";
        hl = strlen(hs);
    }
    if (hl + 1 > hostlen) {
        return ERR_INVALID;
    }
    memcpy(host, hs, hl);
    host[hl] = 0;
    *port = (int)p;
    return 0;
}

/* The origin ("scheme://host[:port]") of a URL, into out. */
static void url_origin(const char *url, char *out, size_t n)
{
    const char *s = strstr(url, "://");
    size_t len = strlen(url);
    if (s) {
        const char *slash = strchr(s + 3, '/');
        if (slash) {
            len = (size_t)(slash - url);
        }
    }
    snprintf(out, n, "%.*s", (int)len, url);
}

int config_origin_allowed(const struct config *c, const char *origin)
{
    char pub[512];
    if (!origin || !*origin) {
        return 0;
    }
    if (*c->public_url) {
        url_origin(c->public_url, pub, sizeof(pub));
        if (strcasecmp(pub, origin) == 0) {
            return 1;
        }
    }
    for (size_t i = 0; i < c->origins.n; i++) {
        if (strcmp(c->origins.v[i], "*") == 0 || strcasecmp(c->origins.v[i], origin) == 0) {
            return 1;
        }
    }
    return 0;
}
