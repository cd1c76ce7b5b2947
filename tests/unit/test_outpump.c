/*
 * test_outpump.c - the output pump (sandbox/outpump.h) with real pipes: bytes in order per
 * source, EOF, many sources at once, a paused consumer that slows nobody else, resume,
 * removal while bytes are pending, stop with sources left, calls run on the pump thread, and
 * the sinks: merging, stream changes, the chunk cap, the merge timer, UTF-8 boundaries and
 * pausing from a flush callback.
 *
 * Sinks may only be used on the pump thread, so those tests run their steps through
 * outpump_call() and wait for each step.
 */
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/xmem.h"
#include "sandbox/outpump.h"
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

/* ---- a source that records what it got ---- */

struct coll {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct buf got;
    int closes;
    int data_after_close;
    size_t max_call;
    int pause_on_data; /* pause the source on every on_data (a consumer that is behind) */
    struct op_src *src;
    int saw_null_src; /* on_data ran before outpump_add() had filled *out */
    pthread_t pump;
    int off_pump; /* a callback ran on another thread than the pump */
};

static void coll_init(struct coll *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    buf_init(&c->got, 0);
}

static void coll_free(struct coll *c)
{
    buf_free(&c->got);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

static void on_data(void *ctx, const unsigned char *p, size_t n)
{
    struct coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    if (!c->src) {
        c->saw_null_src = 1;
    }
    if (c->closes) {
        c->data_after_close = 1;
    }
    if (c->pump && !pthread_equal(c->pump, pthread_self())) {
        c->off_pump = 1;
    }
    c->pump = pthread_self();
    ASSERT_EQ(buf_append(&c->got, p, n), 0);
    if (n > c->max_call) {
        c->max_call = n;
    }
    int pause = c->pause_on_data;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (pause) {
        outpump_pause(c->src);
    }
}

static void on_close(void *ctx)
{
    struct coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->closes++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static const struct op_src_ops ops = {on_data, on_close};

/* Wait (at most ms) until c has at least n bytes (or is closed when n == SIZE_MAX). */
static int coll_wait(struct coll *c, size_t n, int want_close, int ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    int ok = 1;
    pthread_mutex_lock(&c->mu);
    while (c->got.len < n || (want_close && !c->closes)) {
        if (pthread_cond_timedwait(&c->cv, &c->mu, &dl) != 0) {
            ok = c->got.len >= n && (!want_close || c->closes);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static size_t coll_len(struct coll *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->got.len;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static void add_src(struct outpump *op, int fd, struct coll *c)
{
    /* c->src is the caller's *out: the pump may use it from the first on_data on. */
    ASSERT_EQ(outpump_add(op, fd, &ops, c, &c->src), 0);
}

static void fill_pattern(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (unsigned char)((i * 31 + seed * 7 + (i >> 11)) & 0xff);
    }
}

/* Write all of p to a blocking fd. */
static void write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        ASSERT(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

struct writer {
    int fd;
    const unsigned char *p;
    size_t n;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    size_t off = 0;
    while (off < w->n) {
        size_t k = w->n - off < 3001 ? w->n - off : 3001; /* odd sizes: reads cut anywhere */
        write_all(w->fd, w->p + off, k);
        off += k;
    }
    close(w->fd);
    return NULL;
}

/* ---- sources ---- */

TEST(bytes_arrive_in_order_then_eof_closes_once)
{
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    struct coll c;
    coll_init(&c);
    add_src(op, fds[0], &c);
    size_t n = 4 << 20;
    unsigned char *data = xmalloc(n);
    fill_pattern(data, n, 1);
    struct writer w = {fds[1], data, n};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, writer_main, &w), 0);
    ASSERT(coll_wait(&c, n, 1, 5000));
    pthread_join(th, NULL);
    ASSERT_EQ(c.got.len, n);
    ASSERT(memcmp(c.got.data, data, n) == 0);
    ASSERT_EQ(c.closes, 1);
    ASSERT_EQ(c.data_after_close, 0);
    ASSERT(c.max_call <= 256 * 1024);
    struct outpump_stats s;
    outpump_get_stats(op, &s);
    ASSERT_EQ(s.bytes_read, n);
    ASSERT_EQ(s.pauses, 0);
    outpump_src_free(c.src);
    outpump_stop(op); /* the closed source is not closed a second time */
    ASSERT_EQ(c.closes, 1);
    close(fds[0]);
    coll_free(&c);
    free(data);
    outpump_stop(NULL);
}

TEST(many_sources_at_once_each_in_order)
{
    enum { NSRC = 200, PER = 20000 };
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    static struct coll c[NSRC];
    static int rd[NSRC], wr[NSRC];
    static unsigned char data[NSRC][PER];
    for (int i = 0; i < NSRC; i++) {
        int fds[2];
        ASSERT_EQ(pipe(fds), 0);
        rd[i] = fds[0];
        wr[i] = fds[1];
        coll_init(&c[i]);
        add_src(op, rd[i], &c[i]);
        fill_pattern(data[i], PER, (unsigned)i);
    }
    /* Interleave the writers: 1000 bytes to each pipe in turn (PER fits in a pipe). */
    for (int off = 0; off < PER; off += 1000) {
        for (int i = 0; i < NSRC; i++) {
            write_all(wr[i], data[i] + off, 1000);
        }
    }
    for (int i = 0; i < NSRC; i++) {
        close(wr[i]);
    }
    for (int i = 0; i < NSRC; i++) {
        ASSERT(coll_wait(&c[i], PER, 1, 5000));
        ASSERT_EQ(c[i].got.len, PER);
        ASSERT(memcmp(c[i].got.data, data[i], PER) == 0);
        ASSERT_EQ(c[i].closes, 1);
        ASSERT_EQ(c[i].off_pump, 0);
        outpump_src_free(c[i].src);
    }
    outpump_stop(op);
    for (int i = 0; i < NSRC; i++) {
        close(rd[i]);
        coll_free(&c[i]);
    }
}

/* A consumer that is behind pauses its source: nothing more is read from it (its writer
 * blocks on a full pipe), while another source keeps flowing at full speed. One resume
 * undoes any number of pauses. */
TEST(a_paused_source_slows_nobody_else)
{
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    int a[2], b[2];
    ASSERT_EQ(pipe(a), 0);
    ASSERT_EQ(pipe(b), 0);
    ASSERT_EQ(fcntl(a[1], F_SETFL, O_NONBLOCK), 0);
    struct coll ca, cb;
    coll_init(&ca);
    coll_init(&cb);
    ca.pause_on_data = 1;
    add_src(op, a[0], &ca);
    add_src(op, b[0], &cb);
    unsigned char chunk[1000];
    fill_pattern(chunk, sizeof(chunk), 3);
    write_all(a[1], chunk, sizeof(chunk));
    ASSERT(coll_wait(&ca, sizeof(chunk), 0, 2000));
    /* Paused: fill its pipe; the pump must not drain it. */
    size_t queued = 0;
    for (;;) {
        ssize_t w = write(a[1], chunk, sizeof(chunk));
        if (w < 0) {
            ASSERT(errno == EAGAIN);
            break;
        }
        queued += (size_t)w;
    }
    ASSERT(queued >= 4096);
    /* The other source moves 8 MiB meanwhile. */
    size_t n = 8 << 20;
    unsigned char *data = xmalloc(n);
    fill_pattern(data, n, 4);
    struct writer w = {b[1], data, n};
    pthread_t th;
    int64_t t0 = clock_mono_ms();
    ASSERT_EQ(pthread_create(&th, NULL, writer_main, &w), 0);
    ASSERT(coll_wait(&cb, n, 1, 5000));
    pthread_join(th, NULL);
    ASSERT(clock_mono_ms() - t0 < 5000);
    ASSERT(memcmp(cb.got.data, data, n) == 0);
    ASSERT_EQ(coll_len(&ca), sizeof(chunk)); /* not one byte more while paused */
    struct outpump_stats s;
    outpump_get_stats(op, &s);
    ASSERT_EQ(s.pauses, 1);
    /* Pause again (not counted twice), then one resume reads everything that waited. */
    outpump_pause(ca.src);
    pthread_mutex_lock(&ca.mu);
    ca.pause_on_data = 0;
    pthread_mutex_unlock(&ca.mu);
    outpump_resume(ca.src);
    ASSERT(coll_wait(&ca, sizeof(chunk) + queued, 0, 2000));
    close(a[1]);
    ASSERT(coll_wait(&ca, sizeof(chunk) + queued, 1, 2000));
    for (size_t off = 0; off < ca.got.len; off += sizeof(chunk)) {
        ASSERT(memcmp(ca.got.data + off, chunk, sizeof(chunk)) == 0);
    }
    outpump_get_stats(op, &s);
    ASSERT_EQ(s.pauses, 1);
    outpump_src_free(ca.src);
    outpump_src_free(cb.src);
    outpump_stop(op);
    close(a[0]);
    close(b[0]);
    coll_free(&ca);
    coll_free(&cb);
    free(data);
}

/* outpump_close() with bytes still in the pipe, paused or not: on_close exactly once, no
 * on_data after it, and the fd is left open for its owner. */
TEST(close_with_bytes_pending)
{
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    struct coll c[2];
    int fds[2][2];
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(pipe(fds[i]), 0);
        coll_init(&c[i]);
        c[i].pause_on_data = 1;
        add_src(op, fds[i][0], &c[i]);
        write_all(fds[i][1], (const unsigned char *)"first", 5);
        ASSERT(coll_wait(&c[i], 5, 0, 2000));
        write_all(fds[i][1], (const unsigned char *)"pending", 7);
    }
    outpump_resume(c[1].src); /* one paused, one live with bytes to read */
    outpump_close(c[0].src);
    outpump_close(c[1].src);
    outpump_close(c[1].src); /* twice: still one on_close */
    ASSERT(coll_wait(&c[0], 0, 1, 2000));
    ASSERT(coll_wait(&c[1], 0, 1, 2000));
    usleep(20000);
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(c[i].closes, 1);
        ASSERT_EQ(c[i].data_after_close, 0);
        /* Resuming a closed source does not bring it back. */
        outpump_resume(c[i].src);
    }
    usleep(20000);
    ASSERT_EQ(coll_len(&c[0]), 5);
    ASSERT_EQ(c[0].data_after_close, 0);
    ASSERT_EQ(c[1].data_after_close, 0);
    for (int i = 0; i < 2; i++) {
        ASSERT(fcntl(fds[i][0], F_GETFD) >= 0); /* not closed by the pump */
        outpump_src_free(c[i].src);
    }
    outpump_stop(op);
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(c[i].closes, 1);
        close(fds[i][0]);
        close(fds[i][1]);
        coll_free(&c[i]);
    }
}

TEST(stop_closes_every_remaining_source_once)
{
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    struct coll c[3];
    int fds[3][2];
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(pipe(fds[i]), 0);
        coll_init(&c[i]);
        add_src(op, fds[i][0], &c[i]);
    }
    outpump_pause(c[1].src); /* a paused source is closed too */
    close(fds[2][1]);        /* this one ends by itself first */
    ASSERT(coll_wait(&c[2], 0, 1, 2000));
    outpump_stop(op);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(c[i].closes, 1);
        /* Owners free their sources with outpump_src_free() once on_close has run, but that
         * needs the pump, which outpump_stop() has freed: the API has no way to release a
         * source closed by the stop, so the test frees the allocation itself. */
        free(c[i].src);
        close(fds[i][0]);
        if (i != 2) {
            close(fds[i][1]);
        }
        coll_free(&c[i]);
    }
}

/* The owner learns its source through *out; the pump may call on_data as soon as the fd is
 * watched, so *out must be set by then (the sandbox client closes its source from on_data on
 * a bad frame). Data is already waiting when the source is added. */
TEST(out_is_set_before_the_first_callback)
{
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    for (int i = 0; i < 300; i++) {
        int fds[2];
        ASSERT_EQ(pipe(fds), 0);
        write_all(fds[1], (const unsigned char *)"x", 1);
        close(fds[1]);
        struct coll c;
        coll_init(&c);
        add_src(op, fds[0], &c);
        ASSERT(coll_wait(&c, 1, 1, 2000));
        ASSERT_EQ(c.saw_null_src, 0);
        outpump_src_free(c.src);
        close(fds[0]);
        coll_free(&c);
    }
    outpump_stop(op);
}

TEST(add_refuses_a_bad_fd)
{
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    struct coll c;
    coll_init(&c);
    struct op_src *src = (struct op_src *)&c;
    int fd = open("/dev/null", O_RDONLY); /* regular files cannot be watched by epoll */
    ASSERT(fd >= 0);
    ASSERT(outpump_add(op, fd, &ops, &c, &src) < 0);
    ASSERT(src == NULL);
    ASSERT_EQ(c.closes, 0);
    close(fd);
    outpump_stop(op);
    coll_free(&c);
}

/* ---- calls ---- */

struct calls {
    _Atomic int n;
    int order[100];
    pthread_t th[100];
};

struct call_arg {
    struct calls *c;
    int i;
};

static void record_call(void *arg)
{
    struct call_arg *a = arg;
    /* Only the pump thread writes: record, then publish the count. */
    int k = atomic_load(&a->c->n);
    a->c->order[k] = a->i;
    a->c->th[k] = pthread_self();
    atomic_store(&a->c->n, k + 1);
}

TEST(calls_run_in_order_on_the_pump_thread)
{
    struct outpump *op = NULL;
    ASSERT_EQ(outpump_start(&op), 0);
    struct calls c = {0};
    struct call_arg args[100];
    for (int i = 0; i < 100; i++) {
        args[i] = (struct call_arg){&c, i};
        outpump_call(op, record_call, &args[i]);
    }
    for (int t = 0; t < 200 && atomic_load(&c.n) < 100; t++) {
        usleep(10000);
    }
    ASSERT_EQ(atomic_load(&c.n), 100);
    for (int i = 0; i < 100; i++) {
        ASSERT_EQ(c.order[i], i);
        ASSERT(pthread_equal(c.th[i], c.th[0]));
        ASSERT(!pthread_equal(c.th[i], pthread_self()));
    }
    outpump_stop(op);
}

/* ---- sinks (pump thread only: each step is an outpump_call) ---- */

struct chunk {
    int stream;
    char *data;
    size_t n;
    int64_t at_ms;
};

struct sinkt {
    struct outpump *op;
    struct op_sink *k;
    struct op_src *src;
    struct coll c;
    int fds[2];
    struct chunk chunks[4096];
    int nchunks;
    int pause_next; /* the flush callback asks to pause */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int step_done;
};

static int flush_cb(void *ctx, int stream, const char *data, size_t n)
{
    struct sinkt *t = ctx;
    pthread_mutex_lock(&t->mu);
    ASSERT(t->nchunks < 4096);
    struct chunk *ch = &t->chunks[t->nchunks++];
    ch->stream = stream;
    ch->data = xmalloc(n + 1);
    memcpy(ch->data, data, n);
    ch->data[n] = 0;
    ch->n = n;
    ch->at_ms = clock_mono_ms();
    int pause = t->pause_next;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return pause;
}

struct step {
    struct sinkt *t;
    void (*fn)(struct sinkt *t, const void *arg);
    const void *arg;
};

static void step_main(void *arg)
{
    struct step *s = arg;
    s->fn(s->t, s->arg);
    pthread_mutex_lock(&s->t->mu);
    s->t->step_done++;
    pthread_cond_broadcast(&s->t->cv);
    pthread_mutex_unlock(&s->t->mu);
}

/* Run fn(t, arg) on the pump thread and wait for it. */
static void on_pump(struct sinkt *t, void (*fn)(struct sinkt *, const void *), const void *arg)
{
    struct step s = {t, fn, arg};
    pthread_mutex_lock(&t->mu);
    int want = t->step_done + 1;
    pthread_mutex_unlock(&t->mu);
    outpump_call(t->op, step_main, &s);
    pthread_mutex_lock(&t->mu);
    while (t->step_done < want) {
        pthread_cond_wait(&t->cv, &t->mu);
    }
    pthread_mutex_unlock(&t->mu);
}

static int nchunks(struct sinkt *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->nchunks;
    pthread_mutex_unlock(&t->mu);
    return n;
}

static void wait_chunks(struct sinkt *t, int n)
{
    for (int i = 0; i < 500 && nchunks(t) < n; i++) {
        usleep(2000);
    }
    ASSERT_EQ(nchunks(t), n);
}

static void s_new(struct sinkt *t, const void *arg)
{
    (void)arg;
    t->k = op_sink_new(t->op, t->src, flush_cb, t);
}

struct wr {
    int stream;
    const char *p;
    size_t n;
};

static void s_write(struct sinkt *t, const void *arg)
{
    const struct wr *w = arg;
    op_sink_write(t->k, w->stream, w->p, w->n);
}

static void s_writes(struct sinkt *t, const void *arg)
{
    for (const struct wr *w = arg; w->p; w++) {
        op_sink_write(t->k, w->stream, w->p, w->n);
    }
}

static void s_flush(struct sinkt *t, const void *arg)
{
    (void)arg;
    op_sink_flush(t->k);
}

static void s_free(struct sinkt *t, const void *arg)
{
    (void)arg;
    op_sink_free(t->k);
    op_sink_free(NULL);
    t->k = NULL;
}

static void sinkt_start(struct sinkt *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    ASSERT_EQ(outpump_start(&t->op), 0);
    ASSERT_EQ(pipe(t->fds), 0);
    coll_init(&t->c);
    ASSERT_EQ(outpump_add(t->op, t->fds[0], &ops, &t->c, &t->c.src), 0);
    t->src = t->c.src;
    on_pump(t, s_new, NULL);
}

static void sinkt_stop(struct sinkt *t)
{
    if (t->k) {
        on_pump(t, s_free, NULL);
    }
    outpump_close(t->src);
    ASSERT(coll_wait(&t->c, 0, 1, 2000));
    outpump_src_free(t->src);
    outpump_stop(t->op);
    close(t->fds[0]);
    close(t->fds[1]);
    coll_free(&t->c);
    for (int i = 0; i < t->nchunks; i++) {
        free(t->chunks[i].data);
    }
}

/* Everything the sink passed on, one stream, concatenated. */
static char *joined(struct sinkt *t, int stream, size_t *len)
{
    struct buf b;
    buf_init(&b, 0);
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->nchunks; i++) {
        if (t->chunks[i].stream == stream) {
            buf_append(&b, t->chunks[i].data, t->chunks[i].n);
        }
    }
    pthread_mutex_unlock(&t->mu);
    buf_putc(&b, 0);
    *len = b.len - 1;
    return buf_detach(&b, NULL);
}

TEST(sink_first_bytes_go_at_once_then_merge_until_the_timer)
{
    struct sinkt t;
    sinkt_start(&t);
    /* After a quiet period the first write goes out with no merge delay; what follows within
     * OP_MERGE_MS is merged and waits for the timer. */
    struct wr burst[] = {{1, "hello", 5}, {1, " wo", 3}, {1, "rld", 3}, {1, "!", 1}, {0, NULL, 0}};
    on_pump(&t, s_writes, burst);
    ASSERT_EQ(nchunks(&t), 1);
    wait_chunks(&t, 2);
    ASSERT_STREQ(t.chunks[0].data, "hello");
    ASSERT_STREQ(t.chunks[1].data, " world!");
    ASSERT(t.chunks[1].at_ms - t.chunks[0].at_ms >= OP_MERGE_MS - 1);
    ASSERT(t.chunks[1].at_ms - t.chunks[0].at_ms < 1000);
    sinkt_stop(&t);
}

TEST(sink_flushes_on_a_stream_change_in_order)
{
    struct sinkt t;
    sinkt_start(&t);
    struct wr ws[] = {{1, "a", 1}, {1, "b", 1}, {2, "E", 1},
                      {2, "F", 1}, {1, "c", 1}, {0, NULL, 0}};
    on_pump(&t, s_writes, ws);
    on_pump(&t, s_flush, NULL);
    ASSERT_EQ(nchunks(&t), 4);
    ASSERT(t.chunks[0].stream == 1 && !strcmp(t.chunks[0].data, "a"));
    ASSERT(t.chunks[1].stream == 1 && !strcmp(t.chunks[1].data, "b"));
    ASSERT(t.chunks[2].stream == 2 && !strcmp(t.chunks[2].data, "EF"));
    ASSERT(t.chunks[3].stream == 1 && !strcmp(t.chunks[3].data, "c"));
    sinkt_stop(&t);
}

/* A big write is cut into chunks of at most OP_MERGE_MAX, never inside a UTF-8 sequence, and
 * nothing is lost or altered. */
TEST(sink_caps_chunks_and_never_cuts_a_character)
{
    struct sinkt t;
    sinkt_start(&t);
    size_t n = 5 * OP_MERGE_MAX + 123;
    char *big = xmalloc(n);
    /* "é" (2 bytes) and "€" (3 bytes) after one ASCII byte: the cap falls inside them. */
    size_t i = 0;
    while (i < n) {
        if (i + 6 > n) {
            big[i++] = 'z';
            continue;
        }
        memcpy(big + i, "a\xc3\xa9\xe2\x82\xac", 6);
        i += 6;
    }
    struct wr w = {1, big, n};
    on_pump(&t, s_write, &w);
    on_pump(&t, s_flush, NULL);
    ASSERT(nchunks(&t) >= 6);
    for (int c = 0; c < nchunks(&t); c++) {
        ASSERT(t.chunks[c].n <= OP_MERGE_MAX);
        ASSERT(!strstr(t.chunks[c].data, "\xef\xbf\xbd")); /* no replacement character */
    }
    size_t len;
    char *all = joined(&t, 1, &len);
    ASSERT_EQ(len, n);
    ASSERT(memcmp(all, big, n) == 0);
    free(all);
    free(big);
    sinkt_stop(&t);
}

/* A character split across two reads arrives whole, also when its first byte is all a read
 * brought after a quiet period (the first-byte path) and when the timer fires in between. */
TEST(sink_keeps_a_split_character_whole)
{
    struct sinkt t;
    sinkt_start(&t);
    struct wr lead = {1, "\xe2", 1};
    on_pump(&t, s_write, &lead);
    struct wr rest = {1, "\x82\xac", 2};
    on_pump(&t, s_write, &rest);
    on_pump(&t, s_flush, NULL);
    usleep(3 * OP_MERGE_MS * 1000);
    struct wr lead2 = {1, "ok \xc3", 4};
    on_pump(&t, s_write, &lead2);
    struct wr rest2 = {1, "\xa9", 1};
    on_pump(&t, s_write, &rest2);
    on_pump(&t, s_flush, NULL);
    size_t len;
    char *all = joined(&t, 1, &len);
    ASSERT_STREQ(all, "\xe2\x82\xac"
                      "ok \xc3\xa9");
    free(all);
    sinkt_stop(&t);
}

TEST(sink_sanitizes_invalid_bytes)
{
    struct sinkt t;
    sinkt_start(&t);
    struct wr w = {1,
                   "a\xff"
                   "b\xc3(c",
                   6};
    on_pump(&t, s_write, &w);
    on_pump(&t, s_flush, NULL);
    struct wr nul = {2, "x\0y", 3};
    on_pump(&t, s_write, &nul);
    on_pump(&t, s_free, NULL); /* free flushes */
    size_t len;
    char *all = joined(&t, 1, &len);
    ASSERT_STREQ(all, "a\xef\xbf\xbd"
                      "b\xef\xbf\xbd(c");
    free(all);
    all = joined(&t, 2, &len);
    ASSERT_EQ(len, 5);
    ASSERT(memcmp(all, "x\xef\xbf\xbdy", 5) == 0); /* no NUL reaches an event */
    free(all);
    sinkt_stop(&t);
}

/* A flush callback that answers 1 pauses the sink's source: the pump stops reading that
 * sandbox until outpump_resume(). */
TEST(sink_flush_callback_pauses_its_source)
{
    struct sinkt t;
    sinkt_start(&t);
    pthread_mutex_lock(&t.mu);
    t.pause_next = 1;
    pthread_mutex_unlock(&t.mu);
    struct wr w = {1, "behind", 6};
    on_pump(&t, s_write, &w);
    ASSERT_EQ(nchunks(&t), 1);
    struct outpump_stats s;
    outpump_get_stats(t.op, &s);
    ASSERT_EQ(s.pauses, 1);
    write_all(t.fds[1], (const unsigned char *)"queued", 6);
    usleep(30000);
    ASSERT_EQ(coll_len(&t.c), 0); /* paused: not read */
    outpump_resume(t.src);
    ASSERT(coll_wait(&t.c, 6, 0, 2000));
    sinkt_stop(&t);
}

static const struct test_case tests[] = {
    T(bytes_arrive_in_order_then_eof_closes_once),
    T(many_sources_at_once_each_in_order),
    T(a_paused_source_slows_nobody_else),
    T(close_with_bytes_pending),
    T(stop_closes_every_remaining_source_once),
    T(out_is_set_before_the_first_callback),
    T(add_refuses_a_bad_fd),
    T(calls_run_in_order_on_the_pump_thread),
    T(sink_first_bytes_go_at_once_then_merge_until_the_timer),
    T(sink_flushes_on_a_stream_change_in_order),
    T(sink_caps_chunks_and_never_cuts_a_character),
    T(sink_keeps_a_split_character_whole),
    T(sink_sanitizes_invalid_bytes),
    T(sink_flush_callback_pauses_its_source),
};
TEST_MAIN(tests)
