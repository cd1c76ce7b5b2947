/*
 * sbx.c - the backend-independent sandbox API (sbx.h) plus the pieces shared by the backends
 * that run sandbox-init: the sandbox object, the paths of our own files, the synchronous
 * sbx_run() helper. The protocol client is in sbx_proto.c, the workspace file access in
 * sbx_files.c.
 *
 * Threads: the protocol client is driven by the output pump thread (on_data/on_close) and by
 * callers on any thread (exec, kill, stdin). s->lock guards the command table, the
 * reference counts and writes to the control socket. Callbacks into consumers (on_output,
 * on_exit) run on the pump thread without s->lock held.
 *
 * Invariant: an exec is in s->execs from sbxi_exec until its EXIT frame (or the death of the
 * sandbox); on_exit is called once, after its sink was flushed.
 */
#include "sandbox/sbx_int.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/outpump.h"
#include "sandbox/wsdisk.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void sbx_config_defaults(struct sbx_config *c)
{
    if (!c->backend) {
        c->backend = "local";
    }
    if (!c->memory_mib) {
        c->memory_mib = 2048;
    }
    if (!c->pids) {
        c->pids = 512;
    }
    if (!c->fsize_bytes) {
        c->fsize_bytes = (int64_t)4 << 30;
    }
    if (!c->nofile) {
        c->nofile = 4096;
    }
    if (!c->exec_timeout_s) {
        c->exec_timeout_s = 600;
    }
    if (!c->exec_output_cap) {
        c->exec_output_cap = (int64_t)10 << 20;
    }
    if (!c->idle_stop_s) {
        c->idle_stop_s = 600;
    }
}

/* ---- public wrappers ---- */

int sbx_backend_open(const struct sbx_config *cfg, struct outpump *pump, struct sbx_backend **out)
{
    struct sbx_config c = *cfg;
    sbx_config_defaults(&c);
    if (!strcmp(c.backend, "local")) {
        int rc = sbx_local_open(&c, pump, out);
        if (rc == 0) {
            /* the disks of the workspaces (wsdisk.h): adopted before any sandbox starts */
            struct wsdisk_config dc = {.data_dir = c.data_dir, .mib = c.disk_mib};
            rc = wsdisk_open(&dc, &(*out)->disk);
        }
        return rc;
    }
    if (!strcmp(c.backend, "process")) {
        if (c.disk_mib > 0) {
            LOG_WARN("sandbox: disk quota NOT enforced (sandbox_disk_mib %lld): the process "
                     "backend keeps workspaces as plain directories",
                     (long long)c.disk_mib);
        }
        return sbx_process_open(&c, pump, out);
    }
    LOG_ERROR("sandbox: unknown backend \"%s\" (local | process)", c.backend);
    return ERR_INVALID;
}

void sbx_backend_free(struct sbx_backend *b)
{
    if (b) {
        struct wsdisk *d = b->disk;
        b->ops->free(b);
        wsdisk_close(d); /* after every sandbox is gone: removes the warm and build disks */
    }
}

struct wsdisk *sbx_backend_disk(struct sbx_backend *b)
{
    return b ? b->disk : NULL;
}

const char *sbx_backend_name(const struct sbx_backend *b)
{
    return b->ops->name;
}

int sbx_health(struct sbx_backend *b, char *msg, size_t n)
{
    if (!b->ops->health) {
        return 0;
    }
    return b->ops->health(b, msg, n);
}

int sbx_create(struct sbx_backend *b, const struct sbx_spec *spec, struct sbx **out)
{
    if (!spec->name || !util_valid_id(spec->name)) {
        return ERR_INVALID;
    }
    return b->ops->create(b, spec, out);
}

void sbx_destroy(struct sbx *s)
{
    if (s) {
        s->b->ops->destroy(s);
    }
}

int sbx_stop(struct sbx *s)
{
    return s->b->ops->stop ? s->b->ops->stop(s) : ERR_UNSUPPORTED;
}

int sbx_alive(struct sbx *s)
{
    pthread_mutex_lock(&s->lock);
    int a = s->alive && s->ready;
    pthread_mutex_unlock(&s->lock);
    return a;
}

const char *sbx_name(const struct sbx *s)
{
    return s->name;
}

const char *sbx_workspace_host(const struct sbx *s)
{
    return s->ws_host;
}

int sbx_uid(const struct sbx *s)
{
    return s->uid == (uid_t)-1 ? -1 : (int)s->uid;
}

const char *sbx_workspace_inside(const struct sbx *s)
{
    return s->ws_inside;
}

/* Replace the env entry starting with prefix ("NAME=") by prefix + value. */
static void env_set(char **env, const char *prefix, const char *value)
{
    size_t pl = strlen(prefix);
    for (char **e = env; e && *e; e++) {
        if (strncmp(*e, prefix, pl) == 0) {
            free(*e);
            *e = xasprintf("%s%s", prefix, value);
            return;
        }
    }
}

int sbx_rehome(struct sbx *s, const char *name, const char *workspace)
{
    if (!s || !util_valid_id(name) || !workspace) {
        return ERR_INVALID;
    }
    const struct sbx_config *c = &s->b->cfg;
    char *priv = xasprintf("%s/sandboxes/%s", c->data_dir, name);
    char *oldlog = xasprintf("%s.log", s->priv_host), *newlog = xasprintf("%s.log", priv);
    util_rm_rf(priv); /* a private dir left by an earlier sandbox of that name */
    if (rename(s->priv_host, priv) != 0) {
        LOG_WARN("sandbox: %s: cannot move %s to %s: %s", s->name, s->priv_host, priv,
                 strerror(errno));
        free(priv);
        free(oldlog);
        free(newlog);
        return ERR_IO;
    }
    rename(oldlog, newlog); /* best effort: only read when a start fails */
    free(oldlog);
    free(newlog);
    /* The bind mounts inside follow the renamed directories; the host paths (and, without
     * isolation, the inside paths, which are the host paths) are the new ones. */
    pthread_mutex_lock(&s->lock);
    if (strcmp(s->ws_inside, s->ws_host) == 0) {
        free(s->ws_inside);
        s->ws_inside = xstrdup(workspace);
        env_set(s->env, "WORKSPACE=", workspace);
    }
    if (strcmp(s->priv_inside, s->priv_host) == 0) {
        free(s->priv_inside);
        s->priv_inside = xstrdup(priv);
        env_set(s->env, "SESSIOND_PRIVATE_DIR=", priv);
    }
    env_set(s->env, "SESSIOND_SANDBOX=", name);
    free(s->ws_host);
    s->ws_host = xstrdup(workspace);
    free(s->priv_host);
    s->priv_host = priv;
    free(s->name);
    s->name = xstrdup(name);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int sbx_exec(struct sbx *s, const struct sbx_exec_req *req, const struct sbx_exec_cb *cb, void *ctx,
             struct sbx_exec **out)
{
    if (!req->argv || !req->argv[0]) {
        return ERR_INVALID;
    }
    return s->b->ops->exec(s, req, cb, ctx, out);
}

#define OP_OR_UNSUPPORTED(s, op, ...)                                                              \
    ((s)->b->ops->op ? (s)->b->ops->op(__VA_ARGS__) : ERR_UNSUPPORTED)

int sbx_read_file(struct sbx *s, const char *path, struct buf *out)
{
    return OP_OR_UNSUPPORTED(s, read_file, s, path, out);
}

int sbx_write_file(struct sbx *s, const char *path, const void *data, size_t n)
{
    return OP_OR_UNSUPPORTED(s, write_file, s, path, data, n);
}

int sbx_list_files(struct sbx *s, const char *path, json_t **out)
{
    return OP_OR_UNSUPPORTED(s, list_files, s, path, out);
}

int sbx_put_private(struct sbx *s, const char *name, const void *data, size_t n, int executable,
                    char **path_inside)
{
    return OP_OR_UNSUPPORTED(s, put_private, s, name, data, n, executable, path_inside);
}

const char *sbx_agents_inside(const struct sbx *s)
{
    return s->agents_inside;
}

int sbx_path_check(const char *path, size_t len)
{
    if (!path || !len || len > 4096 || strlen(path) != len || path[0] == '/') {
        return ERR_INVALID;
    }
    const char *p = path;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 2 && p[0] == '.' && p[1] == '.') {
            return ERR_INVALID;
        }
        p += l;
        if (*p == '/') {
            p++;
        }
    }
    return 0;
}

/* ---- the sandbox object ---- */

static char **env_build(const struct sbx_spec *spec, const char *ws_inside, const char *priv)
{
    struct buf b;
    size_t n = 0, cap = 16;
    char **env = xcalloc(cap, sizeof *env);
#define ENV_ADD(str)                                                                               \
    do {                                                                                           \
        if (n + 2 > cap) {                                                                         \
            cap *= 2;                                                                              \
            env = xrealloc(env, cap * sizeof *env);                                                \
        }                                                                                          \
        env[n++] = (str);                                                                          \
    } while (0)
    ENV_ADD(xstrdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    ENV_ADD(xstrdup("HOME=/tmp"));
    ENV_ADD(xstrdup("LANG=C.UTF-8"));
    ENV_ADD(xstrdup("TERM=dumb"));
    ENV_ADD(xasprintf("WORKSPACE=%s", ws_inside));
    ENV_ADD(xasprintf("SESSIOND_PRIVATE_DIR=%s", priv));
    ENV_ADD(xasprintf("SESSIOND_SANDBOX=%s", spec->name));
    for (const char *const *e = spec->env; e && *e; e++) {
        if (strchr(*e, '=')) {
            ENV_ADD(xstrdup(*e));
        }
    }
    for (const char *const *e = spec->secrets; e && *e; e++) {
        if (strchr(*e, '=')) {
            ENV_ADD(xstrdup(*e));
        }
    }
    env[n] = NULL;
    (void)b;
#undef ENV_ADD
    return env;
}

int sbxi_new(struct sbx_backend *b, const struct sbx_spec *spec, const char *ws_inside,
             const char *priv_inside, struct sbx **out)
{
    const struct sbx_config *c = &b->cfg;
    struct sbx *s = xcalloc(1, sizeof *s);
    s->b = b;
    s->name = xstrdup(spec->name);
    s->ws_host = spec->workspace ? xstrdup(spec->workspace)
                                 : xasprintf("%s/workspaces/%s", c->data_dir, spec->name);
    s->priv_host = xasprintf("%s/sandboxes/%s", c->data_dir, spec->name);
    s->ws_inside = xstrdup(ws_inside ? ws_inside : s->ws_host);
    s->priv_inside = xstrdup(priv_inside ? priv_inside : s->priv_host);
    s->env = env_build(spec, s->ws_inside, s->priv_inside);
    int tmo = spec->timeout_s ? spec->timeout_s : c->exec_timeout_s;
    s->timeout_ms = tmo > 0 ? tmo * 1000 : 0;
    int mem = spec->memory_mib ? spec->memory_mib : c->memory_mib;
    s->data_bytes = c->data_bytes ? c->data_bytes : (int64_t)mem << 20;
    s->fsize_bytes = c->fsize_bytes;
    s->nofile = c->nofile;
    s->nproc = spec->pids ? spec->pids : c->pids;
    s->cpu_s = c->cpu_s;
    s->on_end = spec->on_end;
    s->on_end_arg = spec->on_end_arg;
    s->uid = (uid_t)-1;
    s->gid = (gid_t)-1;
    s->fd = -1;
    s->pid = -1;
    s->refs = 1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (util_mkdir_p(s->ws_host, 0755) || util_mkdir_p(s->priv_host, 0755)) {
        LOG_ERROR("sandbox: cannot create %s or %s: %s", s->ws_host, s->priv_host, strerror(errno));
        sbxi_unref(s);
        return ERR_IO;
    }
    *out = s;
    return 0;
}

void sbxi_ref(struct sbx *s)
{
    pthread_mutex_lock(&s->lock);
    s->refs++;
    pthread_mutex_unlock(&s->lock);
}

void sbxi_unref(struct sbx *s)
{
    pthread_mutex_lock(&s->lock);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (!last) {
        return;
    }
    if (s->impl_free) {
        s->impl_free(s);
    }
    if (s->src) {
        outpump_src_free(s->src);
    }
    if (s->fd >= 0) {
        close(s->fd);
    }
    for (char **e = s->env; e && *e; e++) {
        free(*e);
    }
    free(s->env);
    free(s->name);
    free(s->ws_host);
    free(s->ws_inside);
    free(s->priv_host);
    free(s->priv_inside);
    free(s->agents_inside);
    free(s->rb);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

/* ---- paths of our own files ---- */

static char *exe_dir(void)
{
    char p[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", p, sizeof p - 1);
    if (n <= 0) {
        return xstrdup(".");
    }
    p[n] = 0;
    char *slash = strrchr(p, '/');
    if (slash) {
        *slash = 0;
    }
    return xstrdup(p);
}

char *sbxi_init_path(const struct sbx_config *c)
{
    if (c->init_path) {
        return xstrdup(c->init_path);
    }
    const char *env = getenv("SANDBOX_INIT_BIN");
    if (env && *env) {
        return xstrdup(env);
    }
    char *d = exe_dir();
    char *p = xasprintf("%s/sandbox-init", d);
    if (access(p, X_OK) != 0) {
        /* unit tests live in build/tests/ */
        free(p);
        p = xasprintf("%s/../sandbox-init", d);
    }
    free(d);
    return p;
}

char *sbxi_agents_dir(const struct sbx_config *c)
{
    if (c->agents_dir) {
        return xstrdup(c->agents_dir);
    }
    char *d = exe_dir();
    char *p = NULL;
    const char *cands[] = {"%s/../agents/bundled", "%s/../../agents/bundled",
                           "%s/../../../agents/bundled", "%s/../share/sessiond/agents"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        char *q = xasprintf(cands[i], d);
        char real[PATH_MAX];
        if (realpath(q, real)) {
            free(q);
            p = xstrdup(real);
            break;
        }
        free(q);
    }
    free(d);
    return p ? p : xstrdup("/usr/share/sessiond/agents");
}

/* ---- synchronous helper ---- */

struct run_ctx {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct buf out, err;
    int truncated;
    int done;
    struct sbx_exit st;
};

static int run_output(void *ctx, struct sbx_exec *ex, int stream, const char *data, size_t n)
{
    (void)ex;
    struct run_ctx *r = ctx;
    pthread_mutex_lock(&r->lock);
    struct buf *b = stream == SBX_STDERR ? &r->err : &r->out;
    if (buf_append(b, data, n)) {
        size_t room = b->max > b->len ? b->max - b->len : 0;
        if (room) {
            buf_append(b, data, util_utf8_complete_prefix(data, room));
        }
        r->truncated = 1;
    }
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static void run_exit(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st)
{
    (void)ex;
    struct run_ctx *r = ctx;
    pthread_mutex_lock(&r->lock);
    r->st = *st;
    r->done = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

int sbx_run(struct sbx *s, const struct sbx_exec_req *req, size_t cap, struct sbx_result *res)
{
    struct run_ctx r;
    memset(&r, 0, sizeof r);
    memset(res, 0, sizeof *res);
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.cond, NULL);
    buf_init(&r.out, cap);
    buf_init(&r.err, cap);
    static const struct sbx_exec_cb cb = {run_output, run_exit};
    struct sbx_exec *ex = NULL;
    int rc = sbx_exec(s, req, &cb, &r, &ex);
    if (!rc) {
        pthread_mutex_lock(&r.lock);
        while (!r.done) {
            pthread_cond_wait(&r.cond, &r.lock);
        }
        pthread_mutex_unlock(&r.lock);
        sbx_exec_put(ex);
        res->exit = r.st;
        res->truncated = r.truncated;
        res->out_len = r.out.len;
        res->err_len = r.err.len;
        res->out = buf_detach(&r.out, NULL);
        res->err = buf_detach(&r.err, NULL);
    }
    buf_free(&r.out);
    buf_free(&r.err);
    pthread_mutex_destroy(&r.lock);
    pthread_cond_destroy(&r.cond);
    return rc;
}

void sbx_result_free(struct sbx_result *res)
{
    free(res->out);
    free(res->err);
    res->out = res->err = NULL;
}
