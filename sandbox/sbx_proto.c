/*
 * sbx_proto.c - the client side of the sandbox-init protocol (sandbox/init/proto.h), shared
 * by the backends that run sandbox-init: frames to and from the control socket, the command
 * table, attach / shutdown, exec and its stdin, signals and flow control.
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
#include "common/xmem.h"
#include "sandbox/init/proto.h"
#include "sandbox/outpump.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
