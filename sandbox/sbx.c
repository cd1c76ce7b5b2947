/*
 * sbx.c - the backend-independent sandbox API (sbx.h) plus the pieces shared by the backends
 * that run sandbox-init: the protocol client, the workspace file access, the synchronous
 * sbx_run() helper.
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
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/init/proto.h"
#include "sandbox/outpump.h"
#include "sandbox/wsdisk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
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

/* ---- protocol client ---- */

/* Write all of p to the (non-blocking) control socket. Called with s->lock held. */
static int send_all(struct sbx *s, const void *p, size_t n)
{
    const unsigned char *c = p;
    int64_t give_up = clock_mono_ms() + 10000;
    while (n) {
        ssize_t w = send(s->fd, c, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN && clock_mono_ms() < give_up) {
                struct pollfd pfd = {.fd = s->fd, .events = POLLOUT};
                poll(&pfd, 1, 100);
                continue;
            }
            return ERR_IO;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_frame(struct sbx *s, int type, uint32_t id, const void *p, size_t n)
{
    unsigned char h[INIT_HDR];
    init_put32(h, (uint32_t)n);
    h[4] = (unsigned char)type;
    init_put32(h + 5, id);
    int rc = send_all(s, h, sizeof h);
    if (!rc && n) {
        rc = send_all(s, p, n);
    }
    return rc;
}

static void exec_unref_locked(struct sbx_exec *ex, int *free_it)
{
    *free_it = --ex->refs == 0;
}

void sbx_exec_put(struct sbx_exec *ex)
{
    if (!ex) {
        return;
    }
    struct sbx *s = ex->s;
    int f;
    pthread_mutex_lock(&s->lock);
    exec_unref_locked(ex, &f);
    pthread_mutex_unlock(&s->lock);
    if (f) {
        free(ex);
        sbxi_unref(s);
    }
}

static struct sbx_exec *take_exec(struct sbx *s, uint32_t id)
{
    struct sbx_exec **pp = &s->execs;
    while (*pp) {
        if ((*pp)->id == id) {
            struct sbx_exec *ex = *pp;
            *pp = ex->next;
            ex->next = NULL;
            return ex;
        }
        pp = &(*pp)->next;
    }
    return NULL;
}

static struct sbx_exec *find_exec(struct sbx *s, uint32_t id)
{
    for (struct sbx_exec *ex = s->execs; ex; ex = ex->next) {
        if (ex->id == id) {
            return ex;
        }
    }
    return NULL;
}

static int exec_flush(void *ctx, int stream, const char *data, size_t n)
{
    struct sbx_exec *ex = ctx;
    if (!ex->cb.on_output) {
        return 0;
    }
    return ex->cb.on_output(ex->ctx, ex, stream, data, n);
}

/* Deliver the end of a command: flush its output, call on_exit, drop the table's ref. Pump
 * thread; ex already removed from s->execs. */
static void finish_exec(struct sbx_exec *ex, const struct sbx_exit *st)
{
    op_sink_free(ex->sink);
    ex->sink = NULL;
    pthread_mutex_lock(&ex->s->lock);
    ex->done = 1;
    pthread_mutex_unlock(&ex->s->lock);
    if (ex->cb.on_exit) {
        ex->cb.on_exit(ex->ctx, ex, st);
    }
    sbx_exec_put(ex);
}

static void handle_frame(struct sbx *s, int type, uint32_t id, const unsigned char *p, size_t n)
{
    if (type == INIT_READY) {
        pthread_mutex_lock(&s->lock);
        s->ready = 1;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        return;
    }
    if (type == INIT_PONG || type == INIT_STARTED) {
        return;
    }
    if (type == INIT_STDOUT || type == INIT_STDERR) {
        pthread_mutex_lock(&s->lock);
        struct sbx_exec *ex = find_exec(s, id);
        pthread_mutex_unlock(&s->lock);
        if (!ex) {
            return;
        }
        if (!ex->sink) {
            ex->sink = op_sink_new(s->b->pump, s->src, exec_flush, ex);
        }
        op_sink_write(ex->sink, type == INIT_STDOUT ? SBX_STDOUT : SBX_STDERR, (const char *)p, n);
        return;
    }
    if (type == INIT_EXIT && n >= 32) {
        pthread_mutex_lock(&s->lock);
        struct sbx_exec *ex = take_exec(s, id);
        pthread_mutex_unlock(&s->lock);
        if (!ex) {
            return;
        }
        struct sbx_exit st = {0};
        st.exit_code = (int)init_get32(p);
        st.signal = (int)init_get32(p + 4);
        uint32_t flags = init_get32(p + 8);
        st.timed_out = !!(flags & INIT_F_TIMEOUT);
        st.killed = !!(flags & INIT_F_KILLED);
        st.start_failed = !!(flags & INIT_F_NOEXEC);
        st.duration_us = (int64_t)init_get64(p + 16);
        st.maxrss_kib = (int64_t)init_get64(p + 24);
        if (st.signal == SIGKILL && s->impl_oom_kills) {
            long k = s->impl_oom_kills(s);
            if (k > s->oom_seen) {
                st.oom = 1;
                s->oom_seen = k;
            }
        }
        finish_exec(ex, &st);
    }
}

/* Handle the complete frames in buf[0..len); returns the bytes consumed, or -1 on a bad
 * frame. */
static long parse_frames(struct sbx *s, const unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (len - off >= INIT_HDR) {
        uint32_t flen = init_get32(buf + off);
        if (flen > INIT_MAX_FRAME) {
            return -1;
        }
        if (len - off < INIT_HDR + flen) {
            break;
        }
        handle_frame(s, buf[off + 4], init_get32(buf + off + 5), buf + off + INIT_HDR, flen);
        off += INIT_HDR + flen;
    }
    return (long)off;
}

/* Frames are parsed straight from the pump's read buffer; only a partial frame at the end
 * is copied into s->rb (so an idle sandbox keeps no big buffer). */
static void on_data(void *ctx, const unsigned char *p, size_t n)
{
    struct sbx *s = ctx;
    if (s->rb_len) {
        /* Complete the pending frame first. */
        size_t need = INIT_HDR;
        if (s->rb_len >= INIT_HDR) {
            need += init_get32(s->rb);
        }
        while (s->rb_len < need && n) {
            if (s->rb_len < INIT_HDR) {
                size_t take = INIT_HDR - s->rb_len < n ? INIT_HDR - s->rb_len : n;
                memcpy(s->rb + s->rb_len, p, take);
                s->rb_len += take;
                p += take;
                n -= take;
                if (s->rb_len == INIT_HDR) {
                    uint32_t flen = init_get32(s->rb);
                    if (flen > INIT_MAX_FRAME) {
                        goto bad;
                    }
                    need = INIT_HDR + flen;
                    if (s->rb_cap < need) {
                        s->rb = xrealloc(s->rb, need);
                        s->rb_cap = need;
                    }
                }
                continue;
            }
            size_t take = need - s->rb_len < n ? need - s->rb_len : n;
            memcpy(s->rb + s->rb_len, p, take);
            s->rb_len += take;
            p += take;
            n -= take;
        }
        if (s->rb_len < need) {
            return;
        }
        if (parse_frames(s, s->rb, s->rb_len) < 0) {
            goto bad;
        }
        s->rb_len = 0;
        if (s->rb_cap > 2 * INIT_CHUNK) {
            free(s->rb);
            s->rb = NULL;
            s->rb_cap = 0;
        }
    }
    long used = parse_frames(s, p, n);
    if (used < 0) {
        goto bad;
    }
    size_t rest = n - (size_t)used;
    if (rest) {
        size_t want = rest >= INIT_HDR ? INIT_HDR + init_get32(p + used) : INIT_HDR;
        if (want < rest) {
            want = rest;
        }
        if (s->rb_cap < want) {
            s->rb = xrealloc(s->rb, want);
            s->rb_cap = want;
        }
        memcpy(s->rb, p + used, rest);
        s->rb_len = rest;
    }
    return;
bad:
    LOG_ERROR("sandbox: %s: bad frame from sandbox-init; stopping it", s->name);
    s->rb_len = 0;
    outpump_close(s->src);
}

/* The control socket is gone: every command still listed is lost. Pump thread. */
static void on_close(void *ctx)
{
    struct sbx *s = ctx;
    pthread_mutex_lock(&s->lock);
    s->alive = 0;
    struct sbx_exec *list = s->execs;
    s->execs = NULL;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    while (list) {
        struct sbx_exec *ex = list;
        list = ex->next;
        ex->next = NULL;
        struct sbx_exit st = {.exit_code = -1, .signal = SIGKILL, .lost = 1};
        finish_exec(ex, &st);
    }
    if (s->on_end) {
        s->on_end(s->on_end_arg, s); /* s stays valid: we still hold the pump's reference */
    }
    sbxi_unref(s); /* the pump's reference */
}

static const struct op_src_ops src_ops = {on_data, on_close};

int sbxi_attach(struct sbx *s, int fd, pid_t pid, int timeout_ms)
{
    s->fd = fd;
    s->pid = pid;
    s->alive = 1;
    sbxi_ref(s); /* for the pump, dropped in on_close */
    int rc = outpump_add(s->b->pump, fd, &src_ops, s, &s->src);
    if (rc) {
        s->alive = 0;
        s->refs--;
        return rc;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (!s->ready && s->alive) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &dl) == ETIMEDOUT) {
            break;
        }
    }
    int ok = s->ready && s->alive;
    pthread_mutex_unlock(&s->lock);
    return ok ? 0 : ERR_UNAVAILABLE;
}

void sbxi_shutdown(struct sbx *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->fd >= 0) {
        shutdown(s->fd, SHUT_RDWR);
    }
    pid_t pid = s->reaped ? -1 : s->pid;
    s->reaped = 1;
    pthread_mutex_unlock(&s->lock);
    if (pid > 0) {
        /* sandbox-init exits as soon as it sees EOF; bwrap follows. Give it a moment. */
        for (int i = 0; i < 200; i++) {
            int st;
            pid_t r = waitpid(pid, &st, WNOHANG);
            if (r == pid || (r < 0 && errno == ECHILD)) {
                pid = -1;
                break;
            }
            struct timespec ts = {0, 5 * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
    }
    if (s->impl_stop) {
        s->impl_stop(s);
    }
}

int sbxi_stop(struct sbx *s)
{
    sbxi_shutdown(s);
    return 0;
}

void sbxi_destroy(struct sbx *s)
{
    sbxi_shutdown(s);
    sbxi_unref(s);
}

static void kv(struct buf *b, const char *k, const char *v)
{
    buf_puts(b, k);
    buf_puts(b, v);
    buf_putc(b, 0);
}

static void kvi(struct buf *b, const char *k, int64_t v)
{
    buf_printf(b, "%s%lld", k, (long long)v);
    buf_putc(b, 0);
}

static int env_name_in(const char *e, const char *const *list)
{
    size_t l = strcspn(e, "=");
    for (; list && *list; list++) {
        if (!strncmp(*list, e, l) && (*list)[l] == '=') {
            return 1;
        }
    }
    return 0;
}

int sbxi_exec(struct sbx *s, const struct sbx_exec_req *req, const struct sbx_exec_cb *cb,
              void *ctx, struct sbx_exec **out)
{
    struct buf b;
    int rc = 0;
    buf_init(&b, INIT_MAX_FRAME);
    for (const char *const *a = req->argv; *a; a++) {
        kv(&b, "arg=", *a);
    }
    for (char **e = s->env; *e; e++) {
        if (!env_name_in(*e, req->env)) {
            kv(&b, "env=", *e);
        }
    }
    for (const char *const *e = req->env; e && *e; e++) {
        if (strchr(*e, '=')) {
            kv(&b, "env=", *e);
        }
    }
    kv(&b, "cwd=", req->cwd ? req->cwd : s->ws_inside);
    int tmo = req->timeout_ms ? (req->timeout_ms < 0 ? 0 : req->timeout_ms) : s->timeout_ms;
    kvi(&b, "timeout_ms=", tmo);
    kvi(&b, "cpu_s=", req->cpu_s ? req->cpu_s : s->cpu_s);
    kvi(&b, "data_bytes=", s->data_bytes);
    kvi(&b, "fsize_bytes=", s->fsize_bytes);
    kvi(&b, "nofile=", s->nofile);
    if (s->uid != (uid_t)-1 && s->uid != 0) {
        kvi(&b, "nproc=", s->nproc); /* meaningless (and harmful) for uid 0 */
    }
    if (req->stdin_data || req->stdin_keep_open) {
        kv(&b, "stdin=", "1");
    }
    if (b.len > INIT_MAX_FRAME - 16) {
        rc = ERR_TOO_LARGE;
        goto out;
    }
    struct sbx_exec *ex = xcalloc(1, sizeof *ex);
    ex->s = s;
    ex->refs = 2; /* caller + table */
    ex->cb = *cb;
    ex->ctx = ctx;
    pthread_mutex_lock(&s->lock);
    if (!s->alive || !s->ready) {
        pthread_mutex_unlock(&s->lock);
        free(ex);
        rc = ERR_UNAVAILABLE;
        goto out;
    }
    s->refs++;
    ex->id = ++s->next_id;
    ex->next = s->execs;
    s->execs = ex;
    rc = send_frame(s, INIT_EXEC, ex->id, b.data, b.len);
    const unsigned char *in = req->stdin_data;
    size_t left = req->stdin_data ? req->stdin_len : 0;
    while (!rc && left) {
        size_t part = left < (1u << 20) ? left : (1u << 20);
        rc = send_frame(s, INIT_STDIN, ex->id, in, part);
        in += part;
        left -= part;
    }
    if (!rc && req->stdin_data && !req->stdin_keep_open) {
        rc = send_frame(s, INIT_CLOSE, ex->id, NULL, 0);
    }
    if (rc) {
        /* The socket broke: on_close will report the exec as lost. Tell the caller now. */
        take_exec(s, ex->id);
        ex->refs = 0;
        s->refs--;
        pthread_mutex_unlock(&s->lock);
        free(ex);
        goto out;
    }
    pthread_mutex_unlock(&s->lock);
    *out = ex;
out:
    buf_free(&b);
    return rc;
}

int sbx_exec_kill(struct sbx_exec *ex, int sig, int grace_ms)
{
    struct sbx *s = ex->s;
    unsigned char p[8];
    init_put32(p, (uint32_t)sig);
    init_put32(p + 4, (uint32_t)(grace_ms > 0 ? grace_ms : 0));
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->alive && !ex->done && find_exec(s, ex->id) == ex) {
        rc = send_frame(s, INIT_KILL, ex->id, p, sizeof p);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int sbx_exec_write(struct sbx_exec *ex, const void *data, size_t n)
{
    struct sbx *s = ex->s;
    int rc = ERR_GONE;
    pthread_mutex_lock(&s->lock);
    if (s->alive && !ex->done) {
        rc = send_frame(s, INIT_STDIN, ex->id, data, n);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int sbx_exec_close_stdin(struct sbx_exec *ex)
{
    struct sbx *s = ex->s;
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    if (s->alive && !ex->done) {
        rc = send_frame(s, INIT_CLOSE, ex->id, NULL, 0);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void sbx_exec_resume(struct sbx_exec *ex)
{
    if (ex->s->src) {
        outpump_resume(ex->s->src);
    }
}

/* ---- workspace files ---- */

static int open_beneath(int dirfd, const char *path, int flags, int mode, int nosymlinks)
{
    struct open_how how = {0};
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & O_CREAT) ? (uint64_t)mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (nosymlinks ? RESOLVE_NO_SYMLINKS : 0);
    long fd;
    do {
        fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (fd < 0 && errno == EAGAIN);
    return (int)fd;
}

static int map_errno(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return ERR_NOT_FOUND;
    case EXDEV:
    case ELOOP:
    case EINVAL:
    case ENAMETOOLONG:
        return ERR_INVALID; /* the path leaves the workspace */
    case EACCES:
    case EPERM:
        return ERR_FORBIDDEN;
    case EFBIG:
    case ENOSPC:
        return ERR_TOO_LARGE;
    default:
        return ERR_IO;
    }
}

static int ws_root(struct sbx *s)
{
    int fd = open(s->ws_host, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd;
}

int sbxi_read_file(struct sbx *s, const char *path, struct buf *out)
{
    int root = -1, fd = -1, rc = 0;
    if (sbx_path_check(path, strlen(path))) {
        return ERR_INVALID;
    }
    root = ws_root(s);
    if (root < 0) {
        return ERR_NOT_FOUND;
    }
    fd = open_beneath(root, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0, 0);
    if (fd < 0) {
        rc = map_errno(errno);
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = ERR_IO;
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = ERR_CONFLICT; /* a directory: the caller lists it instead */
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ERR_INVALID;
        goto out;
    }
    char tmp[65536];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            rc = ERR_IO;
            goto out;
        }
        if (r == 0) {
            break;
        }
        rc = buf_append(out, tmp, (size_t)r);
        if (rc) {
            goto out;
        }
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    if (root >= 0) {
        close(root);
    }
    return rc;
}

int sbxi_write_file(struct sbx *s, const char *path, const void *data, size_t n)
{
    int dir = -1, fd = -1, rc = 0;
    char *copy = NULL;
    if (sbx_path_check(path, strlen(path))) {
        return ERR_INVALID;
    }
    dir = ws_root(s);
    if (dir < 0) {
        return ERR_NOT_FOUND;
    }
    copy = xstrdup(path);
    /* Walk the parents one component at a time, creating them, never following a symlink:
     * the sandbox may be changing the tree while we write. */
    char *p = copy;
    for (;;) {
        char *slash = strchr(p, '/');
        if (!slash) {
            break;
        }
        *slash = 0;
        if (*p && strcmp(p, ".")) {
            if (mkdirat(dir, p, 0755) == 0 && s->uid != (uid_t)-1) {
                if (fchownat(dir, p, s->uid, s->gid, AT_SYMLINK_NOFOLLOW) < 0) {
                    LOG_WARN("sandbox: chown %s: %s", p, strerror(errno));
                }
            }
            int nd = open_beneath(dir, p, O_RDONLY | O_DIRECTORY, 0, 1);
            if (nd < 0) {
                rc = map_errno(errno);
                goto out;
            }
            close(dir);
            dir = nd;
        }
        p = slash + 1;
    }
    if (!*p || !strcmp(p, ".")) {
        rc = ERR_INVALID;
        goto out;
    }
    fd = open_beneath(dir, p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK,
                      0644, 1);
    if (fd < 0) {
        rc = errno == EISDIR ? ERR_CONFLICT : map_errno(errno);
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = ERR_INVALID;
        goto out;
    }
    if (s->uid != (uid_t)-1 && fchown(fd, s->uid, s->gid) < 0) {
        LOG_WARN("sandbox: chown %s: %s", path, strerror(errno));
    }
    const char *c = data;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            rc = map_errno(errno);
            goto out;
        }
        c += w;
        n -= (size_t)w;
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    if (dir >= 0) {
        close(dir);
    }
    free(copy);
    return rc;
}

/* A file name as a JSON string. Names are bytes a sandbox chose: jansson refuses invalid
 * UTF-8, which would drop the entry from a listing (hiding it) or fail the whole listing, so
 * invalid bytes are shown as U+FFFD instead. Never NULL. */
static json_t *name_json(const char *name)
{
    json_t *v = json_string(name);
    if (v) {
        return v;
    }
    struct buf b;
    buf_init(&b, 0);
    util_utf8_sanitize(name, strlen(name), &b);
    v = json_stringn(b.data ? b.data : "", b.len);
    buf_free(&b);
    return v ? v : json_string("\xef\xbf\xbd");
}

int sbxi_list_files(struct sbx *s, const char *path, json_t **out)
{
    int root = -1, fd = -1, rc = 0;
    DIR *d = NULL;
    int is_root = !path || !*path || !strcmp(path, ".");
    if (!is_root && sbx_path_check(path, strlen(path))) {
        return ERR_INVALID;
    }
    root = ws_root(s);
    if (root < 0) {
        return ERR_NOT_FOUND;
    }
    fd = is_root ? dup(root) : open_beneath(root, path, O_RDONLY | O_DIRECTORY, 0, 0);
    if (fd < 0) {
        rc = map_errno(errno);
        goto out;
    }
    d = fdopendir(fd);
    if (!d) {
        rc = ERR_IO;
        goto out;
    }
    fd = -1;
    json_t *entries = json_array();
    struct dirent *de;
    int count = 0;
    while ((de = readdir(d)) != NULL && count < 10000) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) {
            continue;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            continue;
        }
        const char *type = S_ISREG(st.st_mode)   ? "file"
                           : S_ISDIR(st.st_mode) ? "dir"
                           : S_ISLNK(st.st_mode) ? "link"
                                                 : "other";
        json_array_append_new(entries, json_pack("{s:o,s:s,s:I}", "name", name_json(de->d_name),
                                                 "type", type, "size", (json_int_t)st.st_size));
        count++;
    }
    *out = json_pack("{s:o,s:o}", "path", name_json(is_root ? "" : path), "entries", entries);
out:
    if (d) {
        closedir(d);
    }
    if (fd >= 0) {
        close(fd);
    }
    if (root >= 0) {
        close(root);
    }
    return rc;
}

int sbxi_put_private(struct sbx *s, const char *name, const void *data, size_t n, int executable,
                     char **path_inside)
{
    if (!util_valid_id(name) && !(strchr(name, '.') && !strchr(name, '/') && name[0] != '.')) {
        return ERR_INVALID;
    }
    char *host = xasprintf("%s/%s", s->priv_host, name);
    char *tmp = xasprintf("%s/.%s.tmp", s->priv_host, name);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        rc = ERR_IO;
        goto out;
    }
    fchmod(fd, executable ? 0755 : 0644);
    const char *c = data;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            rc = ERR_IO;
            break;
        }
        c += w;
        n -= (size_t)w;
    }
    close(fd);
    if (!rc && rename(tmp, host) < 0) {
        rc = ERR_IO;
    }
    if (!rc && path_inside) {
        *path_inside = xasprintf("%s/%s", s->priv_inside, name);
    }
out:
    if (rc) {
        unlink(tmp);
    }
    free(host);
    free(tmp);
    return rc;
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
