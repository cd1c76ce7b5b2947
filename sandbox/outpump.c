/*
 * outpump.c - one epoll thread reading the output of every sandbox (see outpump.h).
 *
 * Thread context: the pump thread owns the epoll set's dispatch, every sink and the list of
 * sinks with pending bytes (the merge timer). Other threads only add sources, queue calls
 * (mutex + eventfd wake-up) and resume sources; op->lock guards the source list, the call
 * queue and each source's paused/closed flags (epoll_ctl itself is thread safe).
 *
 * Invariants: a source is in the epoll set iff it is neither paused nor closed. on_close is
 * called exactly once per source. The pump never blocks on anything but epoll_wait: flush
 * callbacks queue work elsewhere.
 */
#include "sandbox/outpump.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define READ_MAX (256 * 1024) /* bytes read per wake-up per source (fairness) */

struct call {
    void (*fn)(void *);
    void *arg;
    struct call *next;
};

struct op_src {
    struct outpump *op;
    int fd;
    const struct op_src_ops *ops;
    void *ctx;
    int paused;                 /* guarded by op->lock */
    int closed;                 /* guarded by op->lock */
    struct op_src *prev, *next; /* op->srcs, guarded by op->lock */
};

struct op_sink {
    struct outpump *op;
    struct op_src *src;
    op_flush_fn fn;
    void *ctx;
    int stream;
    size_t len;
    int64_t deadline_us;   /* when the oldest pending byte must go */
    int queued;            /* in op->pend list */
    int64_t last_flush_us; /* when the last chunk went out */
    struct op_sink *pprev, *pnext;
    char data[OP_MERGE_MAX + 8];
};

struct outpump {
    pthread_t th;
    int ep;
    int evfd;
    pthread_mutex_t lock;
    struct call *calls, *calls_tail;       /* guarded by lock */
    struct op_src *srcs;                   /* guarded by lock */
    struct op_src *dead;                   /* freed sources, released between batches; lock */
    int stopping;                          /* guarded by lock */
    struct op_sink *pend_head, *pend_tail; /* pump thread only */
    struct buf tmp;                        /* pump thread only */
    unsigned char *rbuf;                   /* pump thread only */
    _Atomic uint64_t bytes_read, chunks, pauses;
};

static void wake(struct outpump *op)
{
    uint64_t one = 1;
    ssize_t w = write(op->evfd, &one, sizeof one);
    (void)w;
}

void outpump_call(struct outpump *op, void (*fn)(void *arg), void *arg)
{
    struct call *c = xmalloc(sizeof *c);
    c->fn = fn;
    c->arg = arg;
    c->next = NULL;
    pthread_mutex_lock(&op->lock);
    if (op->calls_tail) {
        op->calls_tail->next = c;
    } else {
        op->calls = c;
    }
    op->calls_tail = c;
    pthread_mutex_unlock(&op->lock);
    wake(op);
}

static void run_calls(struct outpump *op)
{
    pthread_mutex_lock(&op->lock);
    struct call *c = op->calls;
    op->calls = op->calls_tail = NULL;
    pthread_mutex_unlock(&op->lock);
    while (c) {
        struct call *n = c->next;
        c->fn(c->arg);
        free(c);
        c = n;
    }
}

/* Mark closed and call on_close once. Pump thread (or the stopper after the thread ended). */
static void src_close(struct op_src *src)
{
    struct outpump *op = src->op;
    pthread_mutex_lock(&op->lock);
    if (src->closed) {
        pthread_mutex_unlock(&op->lock);
        return;
    }
    src->closed = 1;
    if (!src->paused) {
        epoll_ctl(op->ep, EPOLL_CTL_DEL, src->fd, NULL);
    }
    if (src->prev) {
        src->prev->next = src->next;
    } else {
        op->srcs = src->next;
    }
    if (src->next) {
        src->next->prev = src->prev;
    }
    src->prev = src->next = NULL;
    pthread_mutex_unlock(&op->lock);
    src->ops->on_close(src->ctx);
}

static void src_read(struct outpump *op, struct op_src *src)
{
    ssize_t r = read(src->fd, op->rbuf, READ_MAX);
    if (r > 0) {
        atomic_fetch_add(&op->bytes_read, (uint64_t)r);
        src->ops->on_data(src->ctx, op->rbuf, (size_t)r);
        return;
    }
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
        return;
    }
    src_close(src);
}

/* ---- sinks ---- */

static void pend_remove(struct op_sink *k)
{
    struct outpump *op = k->op;
    if (!k->queued) {
        return;
    }
    if (k->pprev) {
        k->pprev->pnext = k->pnext;
    } else {
        op->pend_head = k->pnext;
    }
    if (k->pnext) {
        k->pnext->pprev = k->pprev;
    } else {
        op->pend_tail = k->pprev;
    }
    k->pprev = k->pnext = NULL;
    k->queued = 0;
}

static void pend_add(struct op_sink *k)
{
    struct outpump *op = k->op;
    if (k->queued) {
        return;
    }
    k->deadline_us = clock_mono_us() + OP_MERGE_MS * 1000;
    k->pprev = op->pend_tail;
    k->pnext = NULL;
    if (op->pend_tail) {
        op->pend_tail->pnext = k;
    } else {
        op->pend_head = k;
    }
    op->pend_tail = k;
    k->queued = 1;
}

/* Pass the complete UTF-8 prefix (everything when final) to the flush callback. */
static void sink_flush(struct op_sink *k, int final)
{
    struct outpump *op = k->op;
    if (!k->len) {
        pend_remove(k);
        return;
    }
    size_t n = final ? k->len : util_utf8_complete_prefix(k->data, k->len);
    if (n == 0) {
        n = k->len; /* a lone incomplete sequence that waited long enough */
    }
    buf_reset(&op->tmp);
    util_utf8_sanitize(k->data, n, &op->tmp);
    memmove(k->data, k->data + n, k->len - n);
    k->len -= n;
    pend_remove(k);
    if (k->len) {
        pend_add(k);
    }
    k->last_flush_us = clock_mono_us();
    atomic_fetch_add(&op->chunks, 1);
    if (k->fn(k->ctx, k->stream, op->tmp.data, op->tmp.len) && k->src) {
        outpump_pause(k->src);
    }
}

struct op_sink *op_sink_new(struct outpump *op, struct op_src *src, op_flush_fn fn, void *ctx)
{
    struct op_sink *k = xcalloc(1, sizeof *k);
    k->op = op;
    k->src = src;
    k->fn = fn;
    k->ctx = ctx;
    return k;
}

void op_sink_write(struct op_sink *k, int stream, const char *data, size_t n)
{
    if (k->len && k->stream != stream) {
        sink_flush(k, 1);
    }
    k->stream = stream;
    while (n) {
        size_t room = OP_MERGE_MAX - k->len;
        size_t take = n < room ? n : room;
        memcpy(k->data + k->len, data, take);
        k->len += take;
        data += take;
        n -= take;
        if (k->len >= OP_MERGE_MAX) {
            sink_flush(k, 0);
        }
    }
    if (k->len) {
        /* After a quiet period the first bytes go out at once (first-byte latency); what
         * follows within OP_MERGE_MS is merged. A read that brought only the start of a
         * character waits for the rest like merged output does, or it would go out as U+FFFD
         * and its continuation bytes after it. */
        if (!k->queued && clock_mono_us() - k->last_flush_us >= OP_MERGE_MS * 1000 &&
            util_utf8_complete_prefix(k->data, k->len) > 0) {
            sink_flush(k, 0);
        } else {
            pend_add(k);
        }
    }
}

void op_sink_flush(struct op_sink *k)
{
    while (k->len) {
        sink_flush(k, 1);
    }
}

void op_sink_free(struct op_sink *k)
{
    if (!k) {
        return;
    }
    op_sink_flush(k);
    pend_remove(k);
    free(k);
}

static int flush_due(struct outpump *op)
{
    int64_t now = clock_mono_us();
    while (op->pend_head && op->pend_head->deadline_us <= now) {
        sink_flush(op->pend_head, 0);
    }
    if (!op->pend_head) {
        return -1;
    }
    return (int)((op->pend_head->deadline_us - now + 999) / 1000);
}

/* ---- sources ---- */

int outpump_add(struct outpump *op, int fd, const struct op_src_ops *ops, void *ctx,
                struct op_src **out)
{
    struct op_src *src = xcalloc(1, sizeof *src);
    src->op = op;
    src->fd = fd;
    src->ops = ops;
    src->ctx = ctx;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    pthread_mutex_lock(&op->lock);
    if (op->stopping) {
        pthread_mutex_unlock(&op->lock);
        free(src);
        return ERR_UNAVAILABLE;
    }
    /* The pump may call on_data as soon as the fd is in the set, and callbacks reach the
     * source through the owner's copy of *out: publish it first (the pump takes op->lock
     * before it reads a source, which orders the two). */
    *out = src;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = src};
    if (epoll_ctl(op->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        *out = NULL;
        pthread_mutex_unlock(&op->lock);
        LOG_ERROR("outpump: epoll_ctl add: %s", strerror(errno));
        free(src);
        return ERR_IO;
    }
    src->next = op->srcs;
    if (op->srcs) {
        op->srcs->prev = src;
    }
    op->srcs = src;
    pthread_mutex_unlock(&op->lock);
    return 0;
}

static void close_call(void *arg)
{
    src_close(arg);
}

void outpump_close(struct op_src *src)
{
    outpump_call(src->op, close_call, src);
}

/* The pump may still hold the pointer in the current epoll batch: free between batches. */
void outpump_src_free(struct op_src *src)
{
    if (!src) {
        return;
    }
    struct outpump *op = src->op;
    pthread_mutex_lock(&op->lock);
    src->next = op->dead;
    op->dead = src;
    pthread_mutex_unlock(&op->lock);
}

static void free_dead(struct outpump *op)
{
    pthread_mutex_lock(&op->lock);
    struct op_src *d = op->dead;
    op->dead = NULL;
    pthread_mutex_unlock(&op->lock);
    while (d) {
        struct op_src *n = d->next;
        free(d);
        d = n;
    }
}

void outpump_pause(struct op_src *src)
{
    struct outpump *op = src->op;
    pthread_mutex_lock(&op->lock);
    if (!src->paused && !src->closed) {
        epoll_ctl(op->ep, EPOLL_CTL_DEL, src->fd, NULL);
        atomic_fetch_add(&op->pauses, 1);
    }
    src->paused = 1;
    pthread_mutex_unlock(&op->lock);
}

void outpump_resume(struct op_src *src)
{
    struct outpump *op = src->op;
    pthread_mutex_lock(&op->lock);
    if (src->paused && !src->closed) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = src};
        epoll_ctl(op->ep, EPOLL_CTL_ADD, src->fd, &ev);
    }
    src->paused = 0;
    pthread_mutex_unlock(&op->lock);
}

/* ---- the thread ---- */

static void *pump_main(void *arg)
{
    struct outpump *op = arg;
    struct epoll_event evs[64];
    for (;;) {
        free_dead(op);
        int timeout = flush_due(op);
        int n = epoll_wait(op->ep, evs, 64, timeout);
        if (n < 0 && errno != EINTR) {
            LOG_ERROR("outpump: epoll_wait: %s", strerror(errno));
            break;
        }
        int stop = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t v;
                ssize_t r = read(op->evfd, &v, sizeof v);
                (void)r;
                run_calls(op);
                pthread_mutex_lock(&op->lock);
                stop = op->stopping;
                pthread_mutex_unlock(&op->lock);
                continue;
            }
            struct op_src *src = evs[i].data.ptr;
            /* A source closed or paused earlier in this batch may still appear here. */
            pthread_mutex_lock(&op->lock);
            int skip = src->closed || src->paused;
            pthread_mutex_unlock(&op->lock);
            if (!skip) {
                src_read(op, src);
            }
        }
        if (stop) {
            break;
        }
    }
    return NULL;
}

int outpump_start(struct outpump **out)
{
    struct outpump *op = xcalloc(1, sizeof *op);
    op->ep = epoll_create1(EPOLL_CLOEXEC);
    op->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (op->ep < 0 || op->evfd < 0) {
        LOG_ERROR("outpump: epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    pthread_mutex_init(&op->lock, NULL);
    buf_init(&op->tmp, 0);
    op->rbuf = xmalloc(READ_MAX);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(op->ep, EPOLL_CTL_ADD, op->evfd, &ev);
    if (pthread_create(&op->th, NULL, pump_main, op) != 0) {
        goto fail;
    }
    *out = op;
    return 0;
fail:
    if (op->ep >= 0) {
        close(op->ep);
    }
    if (op->evfd >= 0) {
        close(op->evfd);
    }
    free(op->rbuf);
    free(op);
    return ERR_IO;
}

static void stop_call(void *arg)
{
    (void)arg;
}

void outpump_stop(struct outpump *op)
{
    if (!op) {
        return;
    }
    pthread_mutex_lock(&op->lock);
    op->stopping = 1;
    pthread_mutex_unlock(&op->lock);
    outpump_call(op, stop_call, NULL);
    pthread_join(op->th, NULL);
    run_calls(op);
    for (;;) {
        pthread_mutex_lock(&op->lock);
        struct op_src *src = op->srcs;
        pthread_mutex_unlock(&op->lock);
        if (!src) {
            break;
        }
        src_close(src);
    }
    run_calls(op);
    free_dead(op);
    while (op->pend_head) {
        sink_flush(op->pend_head, 1);
    }
    close(op->ep);
    close(op->evfd);
    buf_free(&op->tmp);
    free(op->rbuf);
    pthread_mutex_destroy(&op->lock);
    free(op);
}

void outpump_get_stats(struct outpump *op, struct outpump_stats *out)
{
    out->bytes_read = atomic_load(&op->bytes_read);
    out->chunks = atomic_load(&op->chunks);
    out->pauses = atomic_load(&op->pauses);
}
