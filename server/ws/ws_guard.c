/*
 * ws_guard.c - the relay between WebSocket clients and libwebsockets that refuses unmasked
 * client frames (see ws_guard.h for why it exists).
 *
 * One thread, one epoll set, non-blocking sockets. Bytes read (into one scratch buffer) are
 * written on at once; what a slow peer does not take is kept in that direction's buffer (up:
 * client -> lws, down: lws -> client), and that side is not read again until it is gone, so a
 * slow reader on one side slows the writer on the other (the hub's
 * lag detection still sees a client that does not read: the socketpair's send buffer is kept
 * small). Each direction's bytes go through a frame scanner that follows the frame headers:
 * upstream it refuses a header without the mask bit; downstream it only tells whether the
 * stream is between two frames (where a close frame of our own may be put).
 *
 * End of a connection: when lws closes its end, what it wrote is flushed to the client, the
 * client's write side is shut down, and what the client still sends is read and dropped for
 * at most LINGER_MS (closing a socket with unread bytes would reset it and could destroy the
 * close frame before the client read it). When the client goes away first, lws gets an end of
 * stream once the bytes before it are delivered.
 *
 * Threads: struct conn is touched by the guard thread only, after wsg_wrap made it; the list
 * of connections (for wsg_free) is guarded by g->lock.
 */
#include "server/ws/ws_guard.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE    16384
#define PAIR_SNDBUF (64 * 1024)
#define LINGER_MS   2000
#define MAX_EVENTS  256
#define END_CLI     1u /* tag in the low bit of an epoll event's conn pointer: the client end */

/* The frame layer of one direction of the stream. */
struct scan {
    int http; /* 1: inside an HTTP head (downstream: the handshake's answer) */
    int crlf; /* how much of the "\r\n\r\n" ending that head was seen */
    uint8_t hdr[14];
    size_t have;   /* header bytes collected; 0 between frames or inside a payload */
    size_t need;   /* header length, known from its second byte */
    uint64_t left; /* payload bytes of the current frame not seen yet */
};

struct dir {
    uint8_t *buf; /* NULL when empty: only bytes a slow peer has not taken yet */
    size_t off, len;
};

struct conn;

struct end {
    int fd;
    uint32_t events; /* registered with epoll */
};

struct conn {
    struct end cli, lws;
    struct dir up, down;
    struct scan sup, sdown;
    uint8_t tail[4]; /* our close frame, after the down buffer */
    size_t tail_len;
    int cli_eof, lws_eof; /* no more reads from that side */
    int up_shut, down_shut;
    int64_t linger_until; /* >0: the client's write side is shut: drain until then */
    int dead;             /* closed: freed after the current batch of events */
    struct conn *prev, *next;
    struct conn *next_dead;
};

struct wsg {
    int ep;
    int wake; /* eventfd: wsg_free */
    pthread_t thread;
    int started;
    atomic_int stop;
    pthread_mutex_t lock; /* guards the list */
    struct conn *head;
    struct conn *dead;         /* guard thread only: closed during the current batch */
    uint8_t scratch[BUF_SIZE]; /* the guard thread's read buffer */
};

static const uint8_t CLOSE_1002[4] = {0x88, 0x02, 0x03, 0xea};

/* Feed n bytes of one direction. want_mask: a frame header without the mask bit is refused:
 * returns 1 with *ok = the offset of that header's second byte in p (the caller drops the
 * whole chunk); else 0 with *ok = n. */
static int scan_feed(struct scan *s, const uint8_t *p, size_t n, int want_mask, size_t *ok)
{
    static const char end[] = "\r\n\r\n";
    size_t i = 0;
    while (i < n) {
        if (s->http) {
            s->crlf = p[i] == (uint8_t)end[s->crlf] ? s->crlf + 1 : (p[i] == '\r' ? 1 : 0);
            s->http = s->crlf < 4;
            i++;
            continue;
        }
        if (s->left > 0 && s->have == 0) {
            uint64_t take = n - i < s->left ? n - i : s->left;
            s->left -= take;
            i += (size_t)take;
            continue;
        }
        s->hdr[s->have++] = p[i];
        if (s->have == 2) {
            uint8_t len7 = s->hdr[1] & 0x7f;
            if (want_mask && !(s->hdr[1] & 0x80)) {
                *ok = i;
                return 1;
            }
            s->need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (s->hdr[1] & 0x80 ? 4 : 0);
        }
        i++;
        if (s->have >= 2 && s->have == s->need) {
            uint8_t len7 = s->hdr[1] & 0x7f;
            uint64_t len = len7;
            if (len7 == 126) {
                len = ((uint64_t)s->hdr[2] << 8) | s->hdr[3];
            } else if (len7 == 127) {
                len = 0;
                for (int k = 0; k < 8; k++) {
                    len = (len << 8) | s->hdr[2 + k];
                }
            }
            s->left = len;
            s->have = 0;
        }
    }
    *ok = n;
    return 0;
}

static int scan_between_frames(const struct scan *s)
{
    return !s->http && s->have == 0 && s->left == 0;
}

/* An end we want nothing from leaves the epoll set: a hung-up peer would else be reported
 * (EPOLLHUP cannot be masked) on every wait until we can take its bytes. */
static void set_events(struct wsg *g, struct conn *c, struct end *e, uint32_t want)
{
    if (e->fd < 0 || e->events == want) {
        return;
    }
    uintptr_t tag = e == &c->cli ? END_CLI : 0;
    struct epoll_event ev = {.events = want, .data.u64 = (uintptr_t)c | tag};
    int op = !want ? EPOLL_CTL_DEL : !e->events ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(g->ep, op, e->fd, &ev) == 0) {
        e->events = want;
    }
}

static void dir_clear(struct dir *d)
{
    free(d->buf);
    d->buf = NULL;
    d->off = d->len = 0;
}

static void conn_close(struct wsg *g, struct conn *c)
{
    pthread_mutex_lock(&g->lock);
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        g->head = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    pthread_mutex_unlock(&g->lock);
    /* Out of the epoll set before the close: the client socket is a dup of libmicrohttpd's,
     * and epoll drops a registration only when every descriptor of the file is closed, so a
     * close alone could leave events naming c coming after c is freed. */
    set_events(g, c, &c->cli, 0);
    set_events(g, c, &c->lws, 0);
    if (c->cli.fd >= 0) {
        close(c->cli.fd);
    }
    if (c->lws.fd >= 0) {
        close(c->lws.fd);
    }
    c->cli.fd = c->lws.fd = -1;
    dir_clear(&c->up);
    dir_clear(&c->down);
    /* Another event of this batch may name it still: freed when the batch is done. */
    c->dead = 1;
    c->next_dead = g->dead;
    g->dead = c;
}

static void free_dead(struct wsg *g)
{
    while (g->dead) {
        struct conn *c = g->dead;
        g->dead = c->next_dead;
        free(c);
    }
}

static void close_lws_side(struct wsg *g, struct conn *c)
{
    set_events(g, c, &c->lws, 0);
    if (c->lws.fd >= 0) {
        close(c->lws.fd); /* lws sees the end of its stream and drops the connection */
        c->lws.fd = -1;
    }
    c->lws_eof = 1;
    dir_clear(&c->up);
}

/* An unmasked frame: it never reaches lws; the client gets a close frame 1002 if the
 * server's side of the stream is between frames (else only the closed connection). */
static void refuse_unmasked(struct wsg *g, struct conn *c)
{
    LOG_INFO("ws_guard: a client sent an unmasked frame: closing the connection (1002)");
    close_lws_side(g, c);
    if (scan_between_frames(&c->sdown)) {
        memcpy(c->tail, CLOSE_1002, sizeof(CLOSE_1002));
        c->tail_len = sizeof(CLOSE_1002);
    } else {
        dir_clear(&c->down);
    }
}

static int would_block(ssize_t n)
{
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

/* Write d's pending bytes to fd. 1: something moved; 0: nothing (blocked or empty);
 * -1: the peer is gone. */
static int dir_flush(struct dir *d, int fd)
{
    if (d->off == d->len) {
        return 0;
    }
    ssize_t n = write(fd, d->buf + d->off, d->len - d->off);
    if (would_block(n)) {
        return 0;
    }
    if (n < 0) {
        return -1;
    }
    d->off += (size_t)n;
    if (d->off == d->len) {
        dir_clear(d);
    }
    return 1;
}

/* Send p[0..n) to fd; what does not go now is kept in d (empty before), which holds memory
 * only while a peer is slow: an idle connection costs no buffer. 0, or -1: the peer is gone. */
static int send_or_keep(struct dir *d, int fd, const uint8_t *p, size_t n)
{
    ssize_t w = write(fd, p, n);
    if (w < 0 && !would_block(w)) {
        return -1;
    }
    size_t sent = w > 0 ? (size_t)w : 0;
    if (sent < n) {
        d->buf = xmalloc(n - sent);
        memcpy(d->buf, p + sent, n - sent);
        d->off = 0;
        d->len = n - sent;
    }
    return 0;
}

/* Client -> lws (or dropped once lws is gone). Returns 1 if anything moved. */
static int client_to_lws(struct wsg *g, struct conn *c)
{
    if (c->cli_eof || (c->up.len && !c->lws_eof)) {
        return 0;
    }
    ssize_t n = read(c->cli.fd, g->scratch, BUF_SIZE);
    if (would_block(n)) {
        return 0;
    }
    if (n <= 0) {
        c->cli_eof = 1;
        return 1;
    }
    if (c->lws_eof) {
        return 1; /* lws is gone: what the client still sends is dropped */
    }
    size_t ok = 0;
    if (scan_feed(&c->sup, g->scratch, (size_t)n, 1, &ok)) {
        refuse_unmasked(g, c);
    } else if (send_or_keep(&c->up, c->lws.fd, g->scratch, (size_t)n) != 0) {
        close_lws_side(g, c);
    }
    return 1;
}

/* lws -> client. Returns 1 if anything moved. */
static int lws_to_client(struct wsg *g, struct conn *c)
{
    if (c->lws_eof || c->down.len) {
        return 0;
    }
    ssize_t n = read(c->lws.fd, g->scratch, BUF_SIZE);
    if (would_block(n)) {
        return 0;
    }
    if (n <= 0) {
        close_lws_side(g, c); /* lws is done: nothing more can go its way either */
        return 1;
    }
    size_t ok = 0;
    scan_feed(&c->sdown, g->scratch, (size_t)n, 0, &ok);
    if (send_or_keep(&c->down, c->cli.fd, g->scratch, (size_t)n) != 0) {
        c->cli_eof = 1;
        dir_clear(&c->down);
        close_lws_side(g, c);
    }
    return 1;
}

/* What waits in the buffers, our close frame last; the ends of the stream. */
static int flush(struct wsg *g, struct conn *c)
{
    int moved = 0, r;
    if (c->lws.fd >= 0 && (r = dir_flush(&c->up, c->lws.fd)) != 0) {
        moved = 1;
        if (r < 0) {
            close_lws_side(g, c);
        }
    }
    if (c->lws.fd >= 0 && c->cli_eof && !c->up.len && !c->up_shut) {
        shutdown(c->lws.fd, SHUT_WR);
        c->up_shut = 1;
    }
    if ((r = dir_flush(&c->down, c->cli.fd)) != 0) {
        moved = 1;
    }
    if (r >= 0 && !c->down.len && c->tail_len) {
        ssize_t n = write(c->cli.fd, c->tail, c->tail_len);
        if (n > 0) {
            memmove(c->tail, c->tail + n, c->tail_len - (size_t)n);
            c->tail_len -= (size_t)n;
            moved = 1;
        } else if (!would_block(n)) {
            r = -1;
        }
    }
    if (r < 0) {
        c->cli_eof = 1;
        dir_clear(&c->down);
        c->tail_len = 0;
        close_lws_side(g, c);
        return 1;
    }
    if (c->lws_eof && !c->down.len && !c->tail_len && !c->down_shut) {
        shutdown(c->cli.fd, SHUT_WR);
        c->down_shut = 1;
        c->linger_until = clock_mono_ms() + LINGER_MS;
        moved = 1;
    }
    return moved;
}

/* One end of c is ready: read that end once (what is read is written on at once), flush
 * what waits, then wait for what is missing. A read of the other end would mostly find
 * nothing: with a thousand clients of one session every event costs one read and one write. */
static void on_event(struct wsg *g, struct conn *c, int cli_end, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (cli_end) {
            client_to_lws(g, c);
        } else {
            lws_to_client(g, c);
        }
    }
    flush(g, c);
    if (c->cli_eof && c->lws_eof && !c->down.len && !c->tail_len) {
        conn_close(g, c);
        return;
    }
    uint32_t cli = 0, lws = 0;
    if (!c->cli_eof && (!c->up.len || c->lws_eof)) {
        cli |= EPOLLIN;
    }
    if (c->down.len || c->tail_len) {
        cli |= EPOLLOUT;
    }
    if (!c->lws_eof && !c->down.len) {
        lws |= EPOLLIN;
    }
    if (c->up.len) {
        lws |= EPOLLOUT;
    }
    set_events(g, c, &c->cli, cli);
    set_events(g, c, &c->lws, lws);
}

static void sweep_lingering(struct wsg *g)
{
    int64_t now = clock_mono_ms();
    struct conn *c, *next;
    pthread_mutex_lock(&g->lock);
    c = g->head;
    pthread_mutex_unlock(&g->lock);
    /* Only this thread removes connections, so the list can be walked without the lock
     * except for links wsg_wrap adds at the head (never after c). */
    for (; c; c = next) {
        next = c->next;
        if (c->linger_until && now >= c->linger_until) {
            conn_close(g, c);
        }
    }
}

static void *guard_main(void *arg)
{
    struct wsg *g = arg;
    struct epoll_event evs[MAX_EVENTS];
    int64_t last_sweep = clock_mono_ms();
    while (!atomic_load(&g->stop)) {
        int n = epoll_wait(g->ep, evs, MAX_EVENTS, 250);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 0) {
                uint64_t v;
                ssize_t r = read(g->wake, &v, sizeof(v));
                (void)r;
                continue;
            }
            struct conn *c = (struct conn *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)END_CLI);
            if (!c->dead) {
                on_event(g, c, (int)(evs[i].data.u64 & END_CLI), evs[i].events);
            }
        }
        if (clock_mono_ms() - last_sweep >= 250) {
            sweep_lingering(g);
            last_sweep = clock_mono_ms();
        }
        free_dead(g);
    }
    return NULL;
}

int wsg_new(struct wsg **out)
{
    struct wsg *g = xcalloc(1, sizeof(*g));
    *out = NULL;
    pthread_mutex_init(&g->lock, NULL);
    atomic_init(&g->stop, 0);
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    g->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (g->ep < 0 || g->wake < 0 || epoll_ctl(g->ep, EPOLL_CTL_ADD, g->wake, &ev) != 0 ||
        pthread_create(&g->thread, NULL, guard_main, g) != 0) {
        LOG_ERROR("ws_guard: cannot start: %s", strerror(errno));
        wsg_free(g);
        return ERR_IO;
    }
    g->started = 1;
    *out = g;
    return 0;
}

void wsg_free(struct wsg *g)
{
    if (!g) {
        return;
    }
    if (g->started) {
        atomic_store(&g->stop, 1);
        uint64_t one = 1;
        ssize_t w = write(g->wake, &one, sizeof(one));
        (void)w;
        pthread_join(g->thread, NULL);
    }
    while (g->head) {
        conn_close(g, g->head);
    }
    free_dead(g);
    if (g->ep >= 0) {
        close(g->ep);
    }
    if (g->wake >= 0) {
        close(g->wake);
    }
    pthread_mutex_destroy(&g->lock);
    free(g);
}

static int add_end(struct wsg *g, struct conn *c, struct end *e, uint32_t events)
{
    uintptr_t tag = e == &c->cli ? END_CLI : 0;
    struct epoll_event ev = {.events = events, .data.u64 = (uintptr_t)c | tag};
    e->events = events;
    return epoll_ctl(g->ep, EPOLL_CTL_ADD, e->fd, &ev);
}

int wsg_wrap(struct wsg *g, int client_fd, int *lws_fd)
{
    int sp[2] = {-1, -1};
    *lws_fd = -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
        close(client_fd);
        return ERR_IO;
    }
    int sndbuf = PAIR_SNDBUF;
    setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    struct conn *c = xcalloc(1, sizeof(*c));
    c->cli.fd = client_fd;
    c->lws.fd = sp[1];
    c->sdown.http = 1; /* lws answers the handshake first */
    fcntl(client_fd, F_SETFL, fcntl(client_fd, F_GETFL) | O_NONBLOCK);
    fcntl(sp[1], F_SETFL, fcntl(sp[1], F_GETFL) | O_NONBLOCK);
    pthread_mutex_lock(&g->lock);
    c->next = g->head;
    if (g->head) {
        g->head->prev = c;
    }
    g->head = c;
    /* Registered under the lock: the thread may use c as soon as an end is added. */
    int rc = add_end(g, c, &c->lws, EPOLLIN) || add_end(g, c, &c->cli, EPOLLIN) ? ERR_IO : 0;
    pthread_mutex_unlock(&g->lock);
    if (rc) {
        LOG_WARN("ws_guard: epoll_ctl: %s", strerror(errno));
        close(sp[0]); /* the connection ends: its peer end sees the close */
        return rc;
    }
    *lws_fd = sp[0];
    return 0;
}
