/*
 * agents.c - named agents from the config, launch building, and the line parser framework
 * shared by the CLI adapters (adapt_claude.c, adapt_codex.c, adapt_opencode.c).
 *
 * Threads: struct agents is built once and read-only afterwards. A parser is used by one
 * thread at a time (see agents.h).
 *
 * Invariants: every emitted line is one JSON object of our agent protocol, scrubbed of every
 * registered secret; at most one terminal line (done or error) per parser; nothing after it.
 */
#include "agents/agents.h"

#include "agents/adapt_claude.h"
#include "agents/adapt_codex.h"
#include "agents/adapt_opencode.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/fswalk.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/egress/egress.h"
#include "sandbox/sbx_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE_MAX_BYTES  (16u << 20) /* a longer CLI line is dropped (counted as bad) */
#define TOOL_OUTPUT_MAX (64u << 10) /* tool_result output kept per call */
#define STDERR_TAIL_MAX 2048

static const struct agent_adapter *const adapters[] = {&adapt_claude, &adapt_codex,
                                                       &adapt_opencode};

struct agents {
    struct agent_def *defs;
    size_t n;
    char *dir_host;
    agent_egress_fn egress_fn;
    agent_egress_close_fn egress_close_fn;
    void *egress_ctx;
};

/* ---- workspace snapshots (file_changed is computed by sessiond, not trusted from CLIs) ---- */

#define WS_MAX_ENTRIES 50000
#define WS_MAX_DEPTH   48
#define WS_SLOW_US     50000 /* a scan slower than this makes the run diff only at its end */

struct wsent {
    char *path; /* relative to the workspace */
    int64_t size, mtime_ns, ctime_ns;
    uint64_t ino;
    unsigned mode;
};

struct wsnap {
    struct wsent *e;
    size_t n, cap;
    int overflow;
};

static void wsnap_free(struct wsnap *w)
{
    for (size_t i = 0; i < w->n; i++) {
        free(w->e[i].path);
    }
    free(w->e);
    memset(w, 0, sizeof(*w));
}

/* One entry of the workspace walk (fswalk: iterative, bounded, never follows a symlink). */
static int ws_pre(void *ctx, const struct fswalk_ent *e)
{
    struct wsnap *w = ctx;
    const struct stat *st = e->st;
    if (e->depth == 1 && !strcmp(e->name, ".git")) {
        return 0;
    }
    if (S_ISDIR(st->st_mode)) {
        return e->depth <= WS_MAX_DEPTH ? FSWALK_ENTER : 0;
    }
    if (w->n == WS_MAX_ENTRIES) {
        w->overflow = 1;
        return ERR_LIMIT;
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 256;
        w->e = xrealloc(w->e, w->cap * sizeof(*w->e));
    }
    w->e[w->n++] = (struct wsent){
        .path = xstrndup(e->path, e->path_len),
        .size = st->st_size,
        .mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
        .ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec,
        .ino = st->st_ino,
        .mode = st->st_mode,
    };
    return 0;
}

static int wsent_cmp(const void *a, const void *b)
{
    return strcmp(((const struct wsent *)a)->path, ((const struct wsent *)b)->path);
}

static void ws_scan(const char *root, struct wsnap *w)
{
    memset(w, 0, sizeof(*w));
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        struct fswalk fw = {.pre = ws_pre, .ctx = w};
        fswalk_run(fd, &fw); /* ERR_LIMIT: w->overflow says so */
        close(fd);
    }
    if (w->n > 1) {
        qsort(w->e, w->n, sizeof(*w->e), wsent_cmp);
    }
}

const struct agent_adapter *agents_adapter(const char *kind)
{
    for (size_t i = 0; kind && i < sizeof(adapters) / sizeof(adapters[0]); i++) {
        if (strcmp(adapters[i]->kind, kind) == 0) {
            return adapters[i];
        }
    }
    return NULL;
}

/* ---- strv / launch ---- */

void agent_strv_add(struct agent_strv *s, const char *str)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = xrealloc(s->v, s->cap * sizeof(char *));
    }
    s->v[s->n++] = xstrdup(str);
    s->v[s->n] = NULL;
}

void agent_strv_addf(struct agent_strv *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *str = NULL;
    if (vasprintf(&str, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    agent_strv_add(s, str);
    free(str);
}

static void strv_free(struct agent_strv *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i]);
    }
    free(s->v);
    memset(s, 0, sizeof(*s));
}

void agent_launch_free(struct agent_launch *l)
{
    if (!l) {
        return;
    }
    /* Secrets are wiped before the memory goes back to the allocator. */
    for (size_t i = 0; i < l->secrets.n; i++) {
        explicit_bzero(l->secrets.v[i], strlen(l->secrets.v[i]));
    }
    strv_free(&l->argv);
    strv_free(&l->env);
    strv_free(&l->secrets);
}

static void shell_quote(struct buf *b, const char *s)
{
    buf_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'') {
            buf_puts(b, "'\\''");
        } else {
            buf_putc(b, *s);
        }
    }
    buf_putc(b, '\'');
}

void agent_launch_mkdirs(struct agent_launch *l, const char *const *dirs)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "mkdir -p -m 700 --");
    for (size_t i = 0; dirs && dirs[i]; i++) {
        buf_putc(&b, ' ');
        shell_quote(&b, dirs[i]);
    }
    buf_puts(&b, " && exec \"$@\"");
    agent_strv_add(&l->argv, "/bin/sh");
    agent_strv_add(&l->argv, "-c");
    agent_strv_add(&l->argv, b.data);
    agent_strv_add(&l->argv, "sessiond-agent"); /* $0 */
    buf_free(&b);
}

/* ---- named agents ---- */

static void def_free(struct agent_def *d)
{
    free(d->name);
    free(d->kind);
    free(d->model);
    free(d->api_base);
    free(d->api_key_env);
    if (d->api_key) {
        explicit_bzero(d->api_key, strlen(d->api_key));
        free(d->api_key);
    }
}

void agents_free(struct agents *a)
{
    if (!a) {
        return;
    }
    for (size_t i = 0; i < a->n; i++) {
        def_free(&a->defs[i]);
    }
    free(a->defs);
    free(a->dir_host);
    free(a);
}

static int get_str(json_t *o, const char *name, const char *key, char **out, char *msg,
                   size_t msglen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = xstrdup("");
        return 0;
    }
    if (!json_is_string(v)) {
        snprintf(msg, msglen, "agents: %s.%s must be a string", name, key);
        return ERR_INVALID;
    }
    *out = xstrdup(json_string_value(v));
    return 0;
}

static int valid_env_name(const char *s)
{
    if (!*s || (*s >= '0' && *s <= '9')) {
        return 0;
    }
    for (; *s; s++) {
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_')) {
            return 0;
        }
    }
    return 1;
}

static int load_def(const char *name, json_t *o, struct agent_def *d, char *msg, size_t msglen)
{
    static const char *const known[] = {"kind",    "model",       "api_base", "api_key_env",
                                        "api_key", "max_retries", NULL};
    const char *k;
    json_t *v;
    int rc;
    memset(d, 0, sizeof(*d));
    d->name = xstrdup(name);
    d->max_retries = -1;
    if (!json_is_object(o)) {
        snprintf(msg, msglen, "agents: %s must be an object", name);
        return ERR_INVALID;
    }
    json_object_foreach(o, k, v)
    {
        int ok = 0;
        for (int i = 0; known[i]; i++) {
            ok |= strcmp(known[i], k) == 0;
        }
        if (!ok) {
            snprintf(msg, msglen, "agents: %s: unknown key '%s'", name, k);
            return ERR_INVALID;
        }
    }
    if ((rc = get_str(o, name, "kind", &d->kind, msg, msglen)) ||
        (rc = get_str(o, name, "model", &d->model, msg, msglen)) ||
        (rc = get_str(o, name, "api_base", &d->api_base, msg, msglen)) ||
        (rc = get_str(o, name, "api_key_env", &d->api_key_env, msg, msglen))) {
        return rc;
    }
    d->adapter = agents_adapter(d->kind);
    if (!d->adapter) {
        snprintf(msg, msglen, "agents: %s: kind must be claude-code, codex or opencode", name);
        return ERR_INVALID;
    }
    if (*d->api_key_env && !valid_env_name(d->api_key_env)) {
        snprintf(msg, msglen, "agents: %s: api_key_env must be an environment variable name", name);
        return ERR_INVALID;
    }
    v = json_object_get(o, "api_key");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v)) {
            snprintf(msg, msglen, "agents: %s.api_key must be a string", name);
            return ERR_INVALID;
        }
        d->api_key = xstrdup(json_string_value(v));
    }
    v = json_object_get(o, "max_retries");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > 100) {
            snprintf(msg, msglen, "agents: %s.max_retries must be an integer -1..100", name);
            return ERR_INVALID;
        }
        d->max_retries = (int)json_integer_value(v);
    }
    if (*d->api_base) {
        char host[256];
        int port;
        if (agents_endpoint(d, host, sizeof(host), &port)) {
            snprintf(msg, msglen, "agents: %s.api_base must be an http(s) URL", name);
            return ERR_INVALID;
        }
    }
    return 0;
}

int agents_load(const char *agents_json, const char *agents_dir_host, struct agents **out,
                char *msg, size_t msglen)
{
    struct agents *a = xcalloc(1, sizeof(*a));
    json_t *root = NULL;
    json_error_t jerr;
    int rc = 0;
    *out = NULL;
    a->dir_host = xstrdup(agents_dir_host ? agents_dir_host : "agents/bundled");
    if (agents_json && *agents_json) {
        root = json_loads(agents_json, JSON_REJECT_DUPLICATES, &jerr);
        if (!root || !json_is_object(root)) {
            snprintf(msg, msglen, "agents: must be a JSON object of named agents%s%s",
                     root ? "" : ": ", root ? "" : jerr.text);
            rc = ERR_INVALID;
            goto out;
        }
        const char *name;
        json_t *v;
        a->defs = xcalloc(json_object_size(root) + 1, sizeof(*a->defs));
        json_object_foreach(root, name, v)
        {
            if (!*name || strlen(name) > 64) {
                snprintf(msg, msglen, "agents: names must be 1-64 characters");
                rc = ERR_INVALID;
                goto out;
            }
            rc = load_def(name, v, &a->defs[a->n], msg, msglen);
            a->n++; /* counted even on error so agents_free frees it */
            if (rc) {
                goto out;
            }
        }
    }
out:
    json_decref(root);
    if (rc) {
        agents_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

const struct agent_def *agents_find(const struct agents *a, const char *name)
{
    for (size_t i = 0; a && name && i < a->n; i++) {
        if (strcmp(a->defs[i].name, name) == 0) {
            return &a->defs[i];
        }
    }
    return NULL;
}

int agents_installed(const struct agents *a, const struct agent_def *d)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", a->dir_host, d->adapter->bin);
    return access(path, X_OK) == 0;
}

const char *agents_key(const struct agent_def *d)
{
    const char *env = *d->api_key_env ? d->api_key_env : d->adapter->default_key_env;
    const char *v = env ? getenv(env) : NULL;
    if (v && *v) {
        return v;
    }
    return d->api_key && *d->api_key ? d->api_key : NULL;
}

json_t *agents_list_json(const struct agents *a, const char *default_name)
{
    json_t *arr = json_array();
    for (size_t i = 0; a && i < a->n; i++) {
        const struct agent_def *d = &a->defs[i];
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:b, s:b}", "name", d->name, "kind", d->kind,
                      "model", *d->model ? d->model : d->adapter->default_model, "api_base",
                      *d->api_base ? d->api_base : d->adapter->default_api_base, "api_key_env",
                      *d->api_key_env ? d->api_key_env : d->adapter->default_key_env, "api_key_set",
                      agents_key(d) != NULL, "installed", agents_installed(a, d), "default",
                      default_name && strcmp(default_name, d->name) == 0);
        json_array_append_new(arr, o);
    }
    return json_pack("{s:o}", "agents", arr);
}

int agents_endpoint(const struct agent_def *d, char *host, size_t hostlen, int *port)
{
    const char *url = *d->api_base ? d->api_base : d->adapter->default_api_base;
    const char *p;
    int dport;
    if (strncmp(url, "https://", 8) == 0) {
        p = url + 8;
        dport = 443;
    } else if (strncmp(url, "http://", 7) == 0) {
        p = url + 7;
        dport = 80;
    } else {
        return ERR_INVALID;
    }
    size_t hl = strcspn(p, ":/?#");
    const char *hs = p;
    if (*p == '[') { /* [v6]:port */
        const char *e = strchr(p, ']');
        if (!e) {
            return ERR_INVALID;
        }
        hs = p + 1;
        hl = (size_t)(e - hs);
        p = e + 1;
    } else {
        p += hl;
    }
    if (hl == 0 || hl >= hostlen) {
        return ERR_INVALID;
    }
    memcpy(host, hs, hl);
    host[hl] = '\0';
    *port = dport;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 1 || v > 65535 || (*end && *end != '/')) {
            return ERR_INVALID;
        }
        *port = (int)v;
    }
    return 0;
}

int agents_launch(const struct agent_def *d, const struct agent_launch_in *in,
                  struct agent_launch *out)
{
    int rc = d->adapter->launch(d, agents_key(d), in, out);
    if (rc) {
        agent_launch_free(out);
        return rc;
    }
    if (in->proxy_url && *in->proxy_url) {
        /* Every CLI here honours the usual proxy variables; nothing bypasses the proxy. */
        agent_strv_addf(&out->env, "HTTPS_PROXY=%s", in->proxy_url);
        agent_strv_addf(&out->env, "HTTP_PROXY=%s", in->proxy_url);
        agent_strv_addf(&out->env, "https_proxy=%s", in->proxy_url);
        agent_strv_addf(&out->env, "http_proxy=%s", in->proxy_url);
        agent_strv_add(&out->env, "NO_PROXY=");
        agent_strv_add(&out->env, "no_proxy=");
    }
    return 0;
}

/* ---- the parser ---- */

struct agent_parser {
    const struct agent_adapter *ad;
    void *st;
    agent_line_fn fn;
    void *ctx;
    struct buf line;   /* the partial stdout line */
    int line_overflow; /* the current line passed LINE_MAX_BYTES: drop it */
    char *errtail;     /* the last STDERR_TAIL_MAX bytes of stderr */
    size_t errlen;
    char *errscrub;             /* scrubbed copy returned by agent_parser_stderr_tail */
    struct redact_set *secrets; /* replaced by [REDACTED:NAME] in every emitted line */
    int ended;
    int finished;
    struct agent_parser_stats stats;
    char *ws_root; /* host path of the workspace, or NULL: no file_changed */
    struct wsnap snap;
    json_t *done_usage; /* of the done line, for prompt.completed */
    int done_turns;
    int cancelled; /* the runner cancelled the run: no error line at the end */
    int ws_slow;   /* the workspace is too big to rescan after every tool result */
};

static void emit_json(struct agent_parser *p, enum agent_msg type, json_t *o);

/* Rescan the workspace and emit file_changed for every difference with the last scan. */
static void ws_check(struct agent_parser *p, int final)
{
    if (!p->ws_root || p->ended || (p->ws_slow && !final)) {
        return;
    }
    struct wsnap now;
    int64_t t0 = clock_mono_us();
    ws_scan(p->ws_root, &now);
    if (!p->ws_slow && clock_mono_us() - t0 > WS_SLOW_US) {
        /* The scan runs on the output thread that serves every sandbox: a workspace this big
         * is diffed only once more, when the run ends. */
        p->ws_slow = 1;
        LOG_WARN("agents: workspace scan of %zu files took %lld ms: file_changed only at the "
                 "end of this run",
                 now.n, (long long)(clock_mono_us() - t0) / 1000);
    }
    size_t i = 0, k = 0;
    while (i < p->snap.n || k < now.n) {
        int c = i == p->snap.n ? 1 : k == now.n ? -1 : strcmp(p->snap.e[i].path, now.e[k].path);
        const char *change = NULL, *path = NULL;
        if (c < 0) {
            change = "deleted";
            path = p->snap.e[i++].path;
        } else if (c > 0) {
            change = "created";
            path = now.e[k++].path;
        } else {
            const struct wsent *a = &p->snap.e[i++], *b = &now.e[k++];
            if (a->size != b->size || a->mtime_ns != b->mtime_ns || a->ctime_ns != b->ctime_ns ||
                a->ino != b->ino || a->mode != b->mode) {
                change = "modified";
                path = b->path;
            }
        }
        if (change) {
            emit_json(p, AGENT_MSG_FILE_CHANGED,
                      json_pack("{s:s, s:s, s:s, s:s}", "type", "file_changed", "path", path,
                                "action", change, "source", "workspace"));
        }
    }
    wsnap_free(&p->snap);
    p->snap = now;
}

/* "NAME=value", or a bare value named after the adapter's key variable. Values shorter than
 * REDACT_MIN_LEN are not registered (they would scrub ordinary words). */
static void add_secret(struct agent_parser *p, const char *s)
{
    const char *eq = s ? strchr(s, '=') : NULL;
    size_t nl = eq ? (size_t)(eq - s) : 0;
    int named = eq && nl > 0 && nl <= 64 && strlen(eq + 1) >= REDACT_MIN_LEN;
    for (size_t i = 0; named && i < nl; i++) {
        named = (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '_' || (i && s[i] >= '0' && s[i] <= '9');
    }
    if (!s) {
        return;
    }
    if (named) {
        char *name = xstrndup(s, nl);
        redact_set_add(p->secrets, name, eq + 1, strlen(eq + 1));
        free(name);
    } else {
        const char *name = p->ad->default_key_env ? p->ad->default_key_env : "API_KEY";
        redact_set_add(p->secrets, name, s, strlen(s));
    }
}

int agent_parser_new_adapter(const struct agent_adapter *ad, const char *const *secrets,
                             agent_line_fn fn, void *ctx, struct agent_parser **out)
{
    struct agent_parser *p = xcalloc(1, sizeof(*p));
    p->ad = ad;
    p->st = ad->state_new ? ad->state_new() : NULL;
    p->fn = fn;
    p->ctx = ctx;
    buf_init(&p->line, 0);
    p->errtail = xmalloc(STDERR_TAIL_MAX + 1);
    p->errtail[0] = '\0';
    p->secrets = redact_set_new();
    for (size_t i = 0; secrets && secrets[i]; i++) {
        add_secret(p, secrets[i]);
    }
    *out = p;
    return 0;
}

int agent_parser_new(const struct agent_def *d, agent_line_fn fn, void *ctx,
                     struct agent_parser **out)
{
    const char *key = agents_key(d);
    const char *env =
        d->api_key_env && *d->api_key_env ? d->api_key_env : d->adapter->default_key_env;
    char *named = key ? xasprintf("%s=%s", env ? env : "API_KEY", key) : NULL;
    const char *sec[2] = {named, NULL};
    int rc = agent_parser_new_adapter(d->adapter, named ? sec : NULL, fn, ctx, out);
    if (named) {
        explicit_bzero(named, strlen(named));
        free(named);
    }
    return rc;
}

void agent_parser_free(struct agent_parser *p)
{
    if (!p) {
        return;
    }
    if (p->ad->state_free) {
        p->ad->state_free(p->st);
    }
    buf_free(&p->line);
    redact_set_unref(p->secrets);
    free(p->errtail);
    free(p->errscrub);
    free(p->ws_root);
    wsnap_free(&p->snap);
    json_decref(p->done_usage);
    free(p);
}

/* Replace every secret in s[0..n) by its marker; returns a new string (caller frees). */
static char *scrub(const struct agent_parser *p, const char *s, size_t n, size_t *outlen)
{
    return redact_str(p->secrets, s, n, outlen);
}

static void emit_json(struct agent_parser *p, enum agent_msg type, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s) {
        return;
    }
    size_t n;
    char *clean = scrub(p, s, strlen(s), &n);
    free(s);
    p->fn(p->ctx, type, clean, n);
    free(clean);
}

/* A JSON string of at most max bytes (cut on a UTF-8 boundary), invalid UTF-8 replaced. */
static json_t *jstr_n(const char *s, size_t n, size_t max, int *truncated)
{
    struct buf b;
    buf_init(&b, 0);
    if (truncated) {
        *truncated = n > max;
    }
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) {
            n--;
        }
    }
    json_t *v = json_stringn(s, n);
    if (!v) { /* invalid UTF-8 or NUL: repair byte by byte */
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c >= 0x20 && c < 0x7F) {
                buf_putc(&b, (char)c);
            } else if (c == '\n' || c == '\t') {
                buf_putc(&b, (char)c);
            } else {
                buf_puts(&b, "\xEF\xBF\xBD");
            }
        }
        v = json_stringn(b.data ? b.data : "", b.len);
    }
    buf_free(&b);
    return v ? v : json_string("");
}

void agent_emit_output(struct agent_parser *p, const char *text, size_t n)
{
    if (p->ended || n == 0) {
        return;
    }
    if (!p->stats.first_output_us) {
        p->stats.first_output_us = clock_mono_us();
    }
    p->stats.outputs++;
    emit_json(p, AGENT_MSG_OUTPUT,
              json_pack("{s:s, s:o}", "type", "output", "text", jstr_n(text, n, 1u << 20, NULL)));
}

void agent_emit_tool_call(struct agent_parser *p, const char *id, const char *name, json_t *input)
{
    if (p->ended) {
        return;
    }
    p->stats.tool_calls++;
    json_t *in = input ? json_incref(input) : json_object();
    emit_json(p, AGENT_MSG_TOOL_CALL,
              json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_call", "id", id ? id : "", "name",
                        name ? name : "tool", "input", in));
}

void agent_emit_tool_result(struct agent_parser *p, const char *id, const char *output, size_t n,
                            int is_error)
{
    if (p->ended) {
        return;
    }
    int trunc = 0;
    p->stats.tool_results++;
    json_t *o =
        json_pack("{s:s, s:s, s:o, s:b}", "type", "tool_result", "id", id ? id : "", "output",
                  jstr_n(output ? output : "", output ? n : 0, TOOL_OUTPUT_MAX, &trunc), "is_error",
                  is_error);
    if (trunc) {
        json_object_set_new(o, "truncated", json_true());
    }
    emit_json(p, AGENT_MSG_TOOL_RESULT, o);
    ws_check(p, 0);
}

void agent_emit_done(struct agent_parser *p, const char *summary, json_t *usage, int turns)
{
    ws_check(p, 1);
    if (p->ended) {
        return;
    }
    p->ended = 1;
    const char *s = summary ? summary : "";
    json_t *u = usage ? json_incref(usage) : json_object();
    p->done_usage = json_incref(u);
    p->done_turns = turns;
    emit_json(p, AGENT_MSG_DONE,
              json_pack("{s:s, s:o, s:o, s:i}", "type", "done", "summary",
                        jstr_n(s, strlen(s), 1u << 20, NULL), "usage", u, "turns", turns));
}

void agent_emit_error(struct agent_parser *p, const char *reason)
{
    ws_check(p, 1);
    if (p->ended) {
        return;
    }
    p->ended = 1;
    const char *r = reason && *reason ? reason : "the agent failed";
    emit_json(p, AGENT_MSG_ERROR,
              json_pack("{s:s, s:o}", "type", "error", "reason", jstr_n(r, strlen(r), 4096, NULL)));
}

void agent_emit_status(struct agent_parser *p, const char *status, json_t *fields)
{
    if (p->ended) {
        return;
    }
    json_t *o = json_pack("{s:s, s:s}", "type", "status", "status", status);
    if (fields) {
        json_object_update_missing(o, fields);
    }
    emit_json(p, AGENT_MSG_STATUS, o);
}

static void parse_line(struct agent_parser *p, const char *s, size_t n)
{
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ')) {
        n--;
    }
    if (n == 0) {
        return;
    }
    p->stats.lines++;
    json_error_t jerr;
    json_t *o = NULL;
    if (s[0] == '{') {
        o = json_loadb(s, n, 0, &jerr);
    }
    if (!o || !json_is_object(o)) {
        /* Not part of the CLI's JSON stream (a warning printed to stdout): not agent output. */
        p->stats.bad_lines++;
        json_decref(o);
        return;
    }
    p->ad->line(p->st, o, p);
    json_decref(o);
}

void agent_parser_feed(struct agent_parser *p, const char *data, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(data, '\n', n);
        size_t take = nl ? (size_t)(nl - data) : n;
        if (!p->line_overflow) {
            if (p->line.len + take > LINE_MAX_BYTES) {
                p->line_overflow = 1;
                buf_reset(&p->line);
            } else {
                buf_append(&p->line, data, take);
            }
        }
        if (!nl) {
            return;
        }
        if (p->line_overflow) {
            p->stats.lines++;
            p->stats.bad_lines++;
            LOG_WARN("agents: dropped a %s line longer than %u bytes", p->ad->kind, LINE_MAX_BYTES);
            p->line_overflow = 0;
        } else {
            parse_line(p, p->line.data ? p->line.data : "", p->line.len);
        }
        buf_reset(&p->line);
        data += take + 1;
        n -= take + 1;
    }
}

void agent_parser_stderr(struct agent_parser *p, const char *data, size_t n)
{
    if (n >= STDERR_TAIL_MAX) {
        data += n - STDERR_TAIL_MAX;
        n = STDERR_TAIL_MAX;
    }
    if (p->errlen + n > STDERR_TAIL_MAX) {
        size_t drop = p->errlen + n - STDERR_TAIL_MAX;
        memmove(p->errtail, p->errtail + drop, p->errlen - drop);
        p->errlen -= drop;
    }
    memcpy(p->errtail + p->errlen, data, n);
    p->errlen += n;
    p->errtail[p->errlen] = '\0';
}

const char *agent_parser_stderr_tail(struct agent_parser *p)
{
    /* The last two non-empty lines, trimmed. */
    size_t end = p->errlen;
    while (end > 0 && (p->errtail[end - 1] == '\n' || p->errtail[end - 1] == ' ' ||
                       p->errtail[end - 1] == '\r')) {
        end--;
    }
    size_t start = end;
    int lines = 0;
    while (start > 0) {
        if (p->errtail[start - 1] == '\n' && ++lines == 2) {
            break;
        }
        start--;
    }
    free(p->errscrub);
    size_t n;
    p->errscrub = scrub(p, p->errtail + start, end - start, &n);
    for (size_t i = 0; i < n; i++) {
        if (p->errscrub[i] == '\n' || p->errscrub[i] == '\r') {
            p->errscrub[i] = ' ';
        }
    }
    return p->errscrub;
}

void agent_parser_finish(struct agent_parser *p, int exit_code)
{
    if (p->finished) {
        return;
    }
    p->finished = 1;
    if (p->line.len && !p->line_overflow) {
        parse_line(p, p->line.data, p->line.len);
        buf_reset(&p->line);
    }
    if (p->ad->finish) {
        p->ad->finish(p->st, p, exit_code);
    }
    ws_check(p, 1); /* files changed since the last tool result */
    if (!p->ended && !p->cancelled) {
        char reason[4096];
        const char *tail = agent_parser_stderr_tail(p);
        if (exit_code < 0) {
            snprintf(reason, sizeof(reason), "%s was killed before it finished%s%s", p->ad->kind,
                     *tail ? ": " : "", tail);
        } else {
            snprintf(reason, sizeof(reason), "%s exited with status %d without a result%s%s",
                     p->ad->kind, exit_code, *tail ? ": " : "", tail);
        }
        agent_emit_error(p, reason);
    }
}

void agent_parser_set_workspace(struct agent_parser *p, const char *root)
{
    free(p->ws_root);
    wsnap_free(&p->snap);
    p->ws_root = xstrdup(root);
    ws_scan(p->ws_root, &p->snap);
}

int agent_parser_ended(const struct agent_parser *p)
{
    return p->ended;
}

void agent_parser_stats(const struct agent_parser *p, struct agent_parser_stats *out)
{
    *out = p->stats;
}

/* ---- JSON helpers ---- */

const char *agent_jstr(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int64_t agent_jint(json_t *obj, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

char *agent_content_text(json_t *content)
{
    if (json_is_string(content)) {
        return xstrdup(json_string_value(content));
    }
    struct buf b;
    buf_init(&b, 0);
    size_t i;
    json_t *e;
    json_array_foreach(content, i, e)
    {
        const char *t = json_is_string(e) ? json_string_value(e) : agent_jstr(e, "text");
        if (t) {
            if (b.len) {
                buf_putc(&b, '\n');
            }
            buf_puts(&b, t);
        }
    }
    size_t n;
    return buf_detach(&b, &n);
}

/* ---- running a named agent in a sandbox ---- */

#define PROXY_PORT  3128 /* the loopback port inside an isolated sandbox (its own netns) */
#define INIT_INSIDE "/run/sessiond-init" /* where sbx_local.c binds sandbox-init */

struct agent_run {
    struct agent_launch launch;
    struct agent_strv argv; /* the full command (with the egress forwarder when proxied) */
    struct agent_parser *parser;
    const struct agents *a;
    char *egress_name; /* the listener this run opened, closed when it exits; or NULL */
};

struct redact_set *agent_run_secrets(struct agent_run *ar)
{
    return ar && ar->parser ? redact_set_ref(ar->parser->secrets) : NULL;
}

void agents_set_egress(struct agents *a, agent_egress_fn fn, agent_egress_close_fn close_fn,
                       void *ctx)
{
    a->egress_fn = fn;
    a->egress_close_fn = close_fn;
    a->egress_ctx = ctx;
}

int agent_run_new(const struct agents *a, const char *name, struct sbx *sbx, const char *sid,
                  const char *const *extra_allow, agent_line_fn fn, void *ctx,
                  struct agent_run **out)
{
    const struct agent_def *d = agents_find(a, name);
    struct agent_run *ar = NULL;
    char *home = NULL, *sock_host = NULL, *sock_inside = NULL, *proxy = NULL;
    int rc = 0;
    *out = NULL;
    if (!d) {
        return ERR_NOT_FOUND;
    }
    if (!agents_installed(a, d)) {
        LOG_WARN("agents: %s: the %s CLI is not installed (run make agents)", d->name, d->kind);
        return ERR_UNAVAILABLE;
    }
    ar = xcalloc(1, sizeof(*ar));
    int isolated = strcmp(sbx_backend_name(sbx->b), "local") == 0;
    /* Writable config dirs outside /workspace: the sandbox's own /tmp when isolated, the
     * private dir (a host directory) for the unisolated process backend. */
    home = isolated ? xstrdup("/tmp/sessiond-agent") : xasprintf("%s/agent-home", sbx->priv_host);
    if (a->egress_fn) {
        char host[256];
        int port;
        rc = agents_endpoint(d, host, sizeof(host), &port);
        if (rc) {
            goto out;
        }
        char entry[300];
        snprintf(entry, sizeof(entry), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
        /* The policy: the model endpoint, then the repository's list (validated when it was
         * stored; checked again here so a bad row can only shrink the policy). */
        size_t nextra = 0;
        while (extra_allow && extra_allow[nextra]) {
            nextra++;
        }
        if (nextra > EGRESS_LIST_MAX) {
            nextra = EGRESS_LIST_MAX;
        }
        char(*norm)[EGRESS_ENTRY_MAX] = xcalloc(nextra + 1, sizeof(*norm));
        const char **allow = xcalloc(nextra + 2, sizeof(*allow));
        size_t na = 0;
        allow[na++] = entry;
        for (size_t i = 0; i < nextra; i++) {
            if (egress_entry_norm(extra_allow[i], norm[i], sizeof(norm[i]), NULL, 0) == 0) {
                allow[na++] = norm[i];
            } else {
                LOG_WARN("agents: session %s: ignoring a malformed egress entry", sid);
            }
        }
        /* Isolated: a Unix socket in the private dir (bound into the sandbox), reached
         * through a loopback forwarder inside. Unisolated (process backend, shared network):
         * a loopback port of the host; the proxy then only keeps the agent's own HTTP
         * honest, it is no boundary. */
        int pport = 0;
        if (isolated) {
            sock_host = xasprintf("%s/egress.sock", sbx->priv_host);
            sock_inside = xasprintf("%s/egress.sock", sbx->priv_inside);
        }
        rc = a->egress_fn(a->egress_ctx, sid, allow, sock_host, &pport);
        free(allow);
        free(norm);
        if (rc) {
            goto out;
        }
        ar->a = a;
        ar->egress_name = xstrdup(sid);
        if (na > 1) {
            LOG_INFO("agents: session %s: egress allows the model endpoint and %zu repository "
                     "entr%s",
                     sid, na - 1, na == 2 ? "y" : "ies");
        }
        proxy = xasprintf("http://127.0.0.1:%d", isolated ? PROXY_PORT : pport);
    }
    struct agent_launch_in in = {
        .agents_dir = sbx->agents_inside,
        .home = home,
        .workspace = sbx->ws_inside,
        .proxy_url = proxy,
    };
    rc = agents_launch(d, &in, &ar->launch);
    if (rc) {
        goto out;
    }
    agent_strv_addf(&ar->launch.env, "HOME=%s", home);
    if (sock_inside) {
        /* sandbox-init's forwarder mode listens on the sandbox's loopback, then execs the
         * CLI (sandbox/init/egress_fwd.c). */
        agent_strv_add(&ar->argv, INIT_INSIDE);
        agent_strv_add(&ar->argv, "--egress-forward");
        agent_strv_addf(&ar->argv, "%d", PROXY_PORT);
        agent_strv_add(&ar->argv, sock_inside);
        agent_strv_add(&ar->argv, "--");
    }
    if (!isolated) {
        /* The process backend runs commands with the host's paths: make the home first. */
        util_mkdir_p(home, 0700);
    }
    for (size_t i = 0; i < ar->launch.argv.n; i++) {
        agent_strv_add(&ar->argv, ar->launch.argv.v[i]);
    }
    rc = agent_parser_new(d, fn, ctx, &ar->parser);
    if (rc) {
        goto out;
    }
    agent_parser_set_workspace(ar->parser, sbx->ws_host);
    LOG_INFO("agents: session %s: running agent %s (%s%s)", sid, d->name, d->kind,
             proxy ? ", egress through the proxy" : "");
out:
    free(home);
    free(sock_host);
    free(sock_inside);
    free(proxy);
    if (rc) {
        agent_run_free(ar);
        return rc;
    }
    *out = ar;
    return 0;
}

void agent_run_free(struct agent_run *ar)
{
    if (!ar) {
        return;
    }
    agent_launch_free(&ar->launch);
    strv_free(&ar->argv);
    agent_parser_free(ar->parser);
    free(ar->egress_name);
    free(ar);
}

const char *const *agent_run_argv(struct agent_run *ar)
{
    return (const char *const *)ar->argv.v;
}

char **agent_run_env(struct agent_run *ar, const char *const *base)
{
    struct agent_strv e = {0};
    for (size_t i = 0; base && base[i]; i++) {
        agent_strv_add(&e, base[i]);
    }
    for (size_t i = 0; i < ar->launch.env.n; i++) {
        agent_strv_add(&e, ar->launch.env.v[i]);
    }
    for (size_t i = 0; i < ar->launch.secrets.n; i++) {
        agent_strv_add(&e, ar->launch.secrets.v[i]);
    }
    if (!e.v) {
        agent_strv_add(&e, "SESSIOND_AGENT=1");
    }
    return e.v;
}

void agent_run_env_free(char **env)
{
    for (char **p = env; p && *p; p++) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
    }
    free(env);
}

void agent_run_stdout(struct agent_run *ar, const char *data, size_t n)
{
    agent_parser_feed(ar->parser, data, n);
}

void agent_run_stderr(struct agent_run *ar, const char *data, size_t n)
{
    agent_parser_stderr(ar->parser, data, n);
}

void agent_run_exit(struct agent_run *ar, int exit_code)
{
    if (ar->egress_name && ar->a->egress_close_fn) {
        ar->a->egress_close_fn(ar->a->egress_ctx, ar->egress_name);
    }
    free(ar->egress_name);
    ar->egress_name = NULL;
    if (exit_code == AGENT_EXIT_CANCELLED) {
        ar->parser->cancelled = 1;
        exit_code = -1;
    }
    agent_parser_finish(ar->parser, exit_code);
}

void agent_run_completion(struct agent_run *ar, json_t *obj)
{
    if (ar->parser->done_usage) {
        json_object_set(obj, "usage", ar->parser->done_usage);
        json_object_set_new(obj, "turns", json_integer(ar->parser->done_turns));
    }
}
