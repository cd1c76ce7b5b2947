/*
 * bench/ws.c - WebSocket fan-out load client (lean raw sockets + epoll, one receive thread).
 *
 * Opens N WebSocket clients over M sessions of a running server, drives events through the
 * REST API (`run: false` messages whose 200-byte content carries a CLOCK_MONOTONIC send time
 * in nanoseconds and an event index), and prints deliveries/s and post-to-delivery latency
 * p50/p99 per delivery and for "all clients of the session have it".
 *
 *   ws --base http://127.0.0.1:8080 --token T [--clients 1000] [--sessions 1] [--rate 200]
 *      [--duration 60] [--producers 4] [--idle] [--pid PID] [--ref]
 *
 * --idle        connect, hold the connections, report the server's RSS (--pid), no events.
 * --ref         talk to the reference broadcast server (bench/ws_ref_server.mjs) instead:
 *               ws://host/s/<session>, POST /s/<session> with the same body.
 * --sessions-from FILE  use existing session ids (one a line) instead of creating them.
 * Sessions are created through the REST API with the token (sessiond mode).
 *
 * Not thread safe beyond its own design: one receiver thread (main), P producer threads.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HBUCKET_US 10
#define HBUCKETS   200000 /* 10 us .. 2 s */

static char host[256] = "127.0.0.1";
static int port = 8080;
static const char *token = "";
static int nclients = 1000, nsessions = 1, rate = 200, duration = 60, nproducers = 4;
static int idle_mode = 0, ref_mode = 0;
static long server_pid = 0;
static char (*sids)[72];

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *m)
{
    perror(m);
    exit(2);
}

static int tcp_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        die("connect");
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

/* One HTTP/1.1 request on a keep-alive connection; returns status, body in out (cap n). */
static int http_req(int fd, const char *method, const char *path, const char *body, char *out,
                    size_t n)
{
    char req[2048];
    int len = snprintf(req, sizeof(req),
                       "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                       "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                       method, path, host, token, body ? strlen(body) : 0, body ? body : "");
    write_all(fd, req, (size_t)len);
    static __thread char buf[65536];
    size_t have = 0;
    char *hend = NULL;
    while (!hend) {
        ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);
        if (r <= 0) {
            die("read http");
        }
        have += (size_t)r;
        buf[have] = 0;
        hend = strstr(buf, "\r\n\r\n");
    }
    int status = (int)strtol(buf + 9, NULL, 10);
    long cl = 0;
    char *p = strcasestr(buf, "Content-Length:");
    if (p && p < hend) {
        cl = strtol(p + 15, NULL, 10);
    }
    size_t need = (size_t)(hend + 4 - buf) + (size_t)cl;
    while (have < need) {
        ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);
        if (r <= 0) {
            die("read http body");
        }
        have += (size_t)r;
    }
    buf[have] = 0;
    if (out) {
        snprintf(out, n, "%.*s", (int)cl, hend + 4);
    }
    return status;
}

/* ---- latency bookkeeping (receiver thread only, except sent_ns written by producers) ---- */

struct evstat {
    _Atomic int64_t sent_ns;
    int count;
};
static struct evstat *evs;
static size_t evs_cap;
static atomic_size_t next_idx;
static uint64_t hist_one[HBUCKETS + 1], hist_all[HBUCKETS + 1];
static uint64_t deliveries, all_done, frames;
static _Atomic uint64_t hist_post[HBUCKETS + 1]; /* POST round trips (producers) */

static void hist_add(uint64_t *h, int64_t ns)
{
    int64_t b = ns / 1000 / HBUCKET_US;
    if (b < 0) {
        b = 0;
    }
    if (b > HBUCKETS) {
        b = HBUCKETS;
    }
    h[b]++;
}

static double hist_pct(const uint64_t *h, double p)
{
    uint64_t total = 0, acc = 0;
    for (int i = 0; i <= HBUCKETS; i++) {
        total += h[i];
    }
    if (!total) {
        return 0;
    }
    for (int i = 0; i <= HBUCKETS; i++) {
        acc += h[i];
        if ((double)acc >= p * (double)total) {
            return (i + 0.5) * HBUCKET_US / 1000.0; /* ms */
        }
    }
    return 0;
}

/* ---- producers ---- */

static atomic_int stop_producers;
static atomic_ullong posted;

static void *producer(void *arg)
{
    long id = (long)arg;
    int fd = tcp_connect();
    double per = (double)rate / nproducers;
    int64_t interval = per > 0 ? (int64_t)(1e9 / per) : 1000000000;
    int64_t next = now_ns();
    char body[512], path[256], pad[200];
    memset(pad, 'x', sizeof(pad));
    int k = (int)id;
    while (!atomic_load(&stop_producers)) {
        int64_t t = now_ns();
        if (t < next) {
            struct timespec ts = {0, (long)(next - t)};
            nanosleep(&ts, NULL);
        }
        next += interval;
        size_t idx = atomic_fetch_add(&next_idx, 1);
        if (idx >= evs_cap) {
            break;
        }
        const char *sid = sids[k++ % nsessions];
        int64_t sent = now_ns();
        atomic_store(&evs[idx].sent_ns, sent);
        /* 200 bytes of content: marker, index, send time, padding. */
        char head[64];
        int hl = snprintf(head, sizeof(head), "B%zu:%" PRId64 ":", idx, sent);
        snprintf(body, sizeof(body), "{\"content\":\"%s%.*s\",\"run\":false}", head, 200 - hl, pad);
        if (ref_mode) {
            snprintf(path, sizeof(path), "/s/%s", sid);
        } else {
            snprintf(path, sizeof(path), "/v1/sessions/%s/messages", sid);
        }
        int st = http_req(fd, "POST", path, body, NULL, 0);
        int64_t b = (now_ns() - sent) / 1000 / HBUCKET_US;
        atomic_fetch_add(&hist_post[b > HBUCKETS ? HBUCKETS : b], 1);
        if (st != 202 && st != 200) {
            fprintf(stderr, "post: status %d\n", st);
        }
        atomic_fetch_add(&posted, 1);
    }
    close(fd);
    return NULL;
}

/* ---- WebSocket clients ---- */

struct conn {
    int fd;
    int sess;
    int state; /* 0 handshake, 3 upgraded, 1 open (hello seen), 2 dead */
    size_t len;
    unsigned char buf[1 << 16];
    unsigned char *big; /* frames larger than buf */
    size_t bigcap;
};

static int per_session;

static uint64_t gaps;

static void on_text(const unsigned char *p, size_t n, int64_t t)
{
    frames++;
    if (n > 12 && memcmp(p, "{\"type\":\"gap\"", 12) == 0) {
        gaps++;
        return;
    }
    const unsigned char *end = p + n;
    const unsigned char *q = p;
    while (q < end) {
        const unsigned char *m = memmem(q, (size_t)(end - q), "\"content\":\"B", 12);
        if (!m) {
            break;
        }
        m += 12;
        char *e;
        size_t idx = strtoull((const char *)m, &e, 10);
        int64_t sent = strtoll(e + 1, NULL, 10);
        q = (const unsigned char *)e;
        if (idx < evs_cap) {
            int64_t lat = t - sent;
            hist_add(hist_one, lat);
            deliveries++;
            if (++evs[idx].count == per_session) {
                hist_add(hist_all, lat);
                all_done++;
            }
        }
    }
}

static void send_pong(struct conn *c, const unsigned char *p, size_t n)
{
    unsigned char f[2 + 4 + 125];
    if (n > 125) {
        n = 125;
    }
    f[0] = 0x8A;
    f[1] = (unsigned char)(0x80 | n);
    memset(f + 2, 0, 4); /* zero mask key: payload unchanged */
    memcpy(f + 6, p, n);
    (void)!write(c->fd, f, 6 + n);
}

/* Parse complete frames in c->buf; returns 0 or -1 (close). */
static int parse_frames(struct conn *c, int64_t t)
{
    size_t off = 0;
    for (;;) {
        if (c->len - off < 2) {
            break;
        }
        unsigned char *b = c->buf + off;
        int op = b[0] & 15;
        uint64_t pl = b[1] & 127;
        size_t hl = 2;
        if (pl == 126) {
            if (c->len - off < 4) {
                break;
            }
            pl = ((uint64_t)b[2] << 8) | b[3];
            hl = 4;
        } else if (pl == 127) {
            if (c->len - off < 10) {
                break;
            }
            pl = 0;
            for (int i = 0; i < 8; i++) {
                pl = (pl << 8) | b[2 + i];
            }
            hl = 10;
        }
        if (hl + pl > sizeof(c->buf)) {
            /* Large frame: collect it in c->big. */
            size_t have = c->len - off;
            size_t need = hl + pl;
            if (c->bigcap < need) {
                c->big = realloc(c->big, need);
                c->bigcap = need;
            }
            memcpy(c->big, b, have);
            while (have < need) {
                ssize_t r = read(c->fd, c->big + have, need - have);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) {
                        struct timespec ts = {0, 100000};
                        nanosleep(&ts, NULL);
                        continue;
                    }
                    return -1;
                }
                have += (size_t)r;
            }
            if (op == 1) {
                on_text(c->big + hl, pl, t);
            }
            c->len = 0;
            return 0;
        }
        if (c->len - off < hl + pl) {
            break;
        }
        if (op == 1) {
            on_text(b + hl, pl, t);
        } else if (op == 9) {
            send_pong(c, b + hl, pl);
        } else if (op == 8) {
            return -1;
        }
        off += hl + pl;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    return 0;
}

static long rss_kib(long pid)
{
    char path[64], line[256];
    long v = -1;
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            v = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return v;
}

static void create_sessions(void)
{
    sids = calloc((size_t)nsessions, sizeof(*sids));
    if (ref_mode) {
        for (int i = 0; i < nsessions; i++) {
            snprintf(sids[i], sizeof(sids[i]), "r%d", i);
        }
        return;
    }
    int fd = tcp_connect();
    char out[4096];
    for (int i = 0; i < nsessions; i++) {
        int st = http_req(fd, "POST", "/v1/sessions", "{\"title\":\"bench\"}", out, sizeof(out));
        char *p = strstr(out, "\"id\":\"");
        if (st != 201 || !p) {
            fprintf(stderr, "create session: %d %s\n", st, out);
            exit(2);
        }
        p += 6;
        char *e = strchr(p, '"');
        snprintf(sids[i], sizeof(sids[i]), "%.*s", (int)(e - p), p);
    }
    close(fd);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--base")) {
            sscanf(v, "http://%255[^:]:%d", host, &port);
            i++;
        } else if (!strcmp(a, "--token")) {
            token = v;
            i++;
        } else if (!strcmp(a, "--clients")) {
            nclients = (int)strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--sessions")) {
            nsessions = (int)strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--rate")) {
            rate = (int)strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--duration")) {
            duration = (int)strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--producers")) {
            nproducers = (int)strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--pid")) {
            server_pid = strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--idle")) {
            idle_mode = 1;
        } else if (!strcmp(a, "--ref")) {
            ref_mode = 1;
        } else {
            fprintf(stderr, "usage: see the comment at the top of bench/ws.c\n");
            return 2;
        }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    per_session = nclients / nsessions;
    evs_cap = (size_t)rate * (size_t)(duration + 5) + 1000;
    evs = calloc(evs_cap, sizeof(*evs));
    create_sessions();

    long rss0 = server_pid ? rss_kib(server_pid) : -1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn **cs = calloc((size_t)nclients, sizeof(*cs));
    int64_t t0 = now_ns();
    for (int i = 0; i < nclients; i++) {
        struct conn *c = calloc(1, sizeof(*c));
        c->fd = tcp_connect();
        c->sess = i % nsessions;
        char req[1024];
        int n;
        if (ref_mode) {
            n = snprintf(req, sizeof(req),
                         "GET /s/%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: "
                         "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n",
                         sids[c->sess], host);
        } else {
            n = snprintf(req, sizeof(req),
                         "GET /v1/sessions/%s/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n",
                         sids[c->sess], host, token);
        }
        write_all(c->fd, req, (size_t)n);
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        cs[i] = c;
    }
    /* Wait for every handshake. */
    int open_n = 0, dead = 0;
    struct epoll_event evts[512];
    while (open_n + dead < nclients && now_ns() - t0 < 120e9) {
        int n = epoll_wait(ep, evts, 512, 1000);
        for (int i = 0; i < n; i++) {
            struct conn *c = evts[i].data.ptr;
            ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) {
                    continue;
                }
                if (c->state != 2) {
                    c->state = 2;
                    dead++;
                }
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->len += (size_t)r;
            if (c->state == 0) {
                unsigned char *e = memmem(c->buf, c->len, "\r\n\r\n", 4);
                if (!e) {
                    continue;
                }
                if (memcmp(c->buf, "HTTP/1.1 101", 12) != 0) {
                    fprintf(stderr, "handshake refused: %.60s\n", c->buf);
                    c->state = 2;
                    dead++;
                    continue;
                }
                size_t hl = (size_t)(e + 4 - c->buf);
                memmove(c->buf, c->buf + hl, c->len - hl);
                c->len -= hl;
                c->state = 3; /* upgraded, waiting for the hello frame */
            }
            if (c->state == 3 && c->len > 0) {
                c->state = 1; /* the hello (first frame) is here: live from now on */
                open_n++;
            }
            parse_frames(c, now_ns());
        }
    }
    double setup_s = (double)(now_ns() - t0) / 1e9;
    printf("connected %d/%d clients over %d sessions in %.1f s (%d failed)\n", open_n, nclients,
           nsessions, setup_s, dead);
    if (idle_mode) {
        /* Let hellos and joins settle, then measure. */
        int64_t end = now_ns() + (int64_t)duration * 1000000000;
        while (now_ns() < end) {
            int n = epoll_wait(ep, evts, 512, 200);
            for (int i = 0; i < n; i++) {
                struct conn *c = evts[i].data.ptr;
                ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
                if (r > 0) {
                    c->len += (size_t)r;
                    parse_frames(c, now_ns());
                }
            }
        }
        long rss1 = server_pid ? rss_kib(server_pid) : -1;
        printf("server RSS: %.1f MiB before, %.1f MiB with %d idle connections (%.1f KiB each)\n",
               rss0 / 1024.0, rss1 / 1024.0, open_n, open_n ? (double)(rss1 - rss0) / open_n : 0.0);
        return 0;
    }
    memset(hist_one, 0, sizeof(hist_one));
    memset(hist_all, 0, sizeof(hist_all));
    deliveries = all_done = frames = 0;
    pthread_t *pt = calloc((size_t)nproducers, sizeof(*pt));
    for (long i = 0; i < nproducers; i++) {
        pthread_create(&pt[i], NULL, producer, (void *)i);
    }
    int64_t start = now_ns();
    int64_t end = start + (int64_t)duration * 1000000000;
    int64_t drain_end = 0;
    int64_t last_report = start;
    uint64_t last_del = 0;
    for (;;) {
        int64_t t = now_ns();
        if (!drain_end && t >= end) {
            atomic_store(&stop_producers, 1);
            drain_end = t + 2000000000;
        }
        if (drain_end && t >= drain_end) {
            break;
        }
        if (t - last_report >= 5000000000LL) {
            fprintf(stderr, "  %5.1f s: %.0f deliveries/s\n", (double)(t - start) / 1e9,
                    (double)(deliveries - last_del) / ((double)(t - last_report) / 1e9));
            last_report = t;
            last_del = deliveries;
        }
        int n = epoll_wait(ep, evts, 512, 100);
        int64_t tr = now_ns();
        for (int i = 0; i < n; i++) {
            struct conn *c = evts[i].data.ptr;
            for (;;) {
                ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
                if (r <= 0) {
                    if (r == 0 || errno != EAGAIN) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        if (c->state != 2) {
                            c->state = 2;
                            dead++;
                        }
                    }
                    break;
                }
                c->len += (size_t)r;
                if (parse_frames(c, tr) < 0) {
                    break;
                }
                if ((size_t)r < sizeof(c->buf) / 2) {
                    break;
                }
            }
        }
    }
    for (int i = 0; i < nproducers; i++) {
        pthread_join(pt[i], NULL);
    }
    double secs = (double)duration;
    uint64_t np = atomic_load(&posted);
    uint64_t expected = np * (uint64_t)per_session;
    printf("mode %s: %d clients x %d sessions, %.0f s, posted %" PRIu64 " events (%.0f/s)\n",
           ref_mode ? "reference" : "sessiond", nclients, nsessions, secs, np, (double)np / secs);
    printf("deliveries: %" PRIu64 " of %" PRIu64 " expected (%.2f%%), %.0f deliveries/s, "
           "%" PRIu64 " frames (%.1f events/frame), %" PRIu64 " gap notices, %d connections lost\n",
           deliveries, expected, expected ? 100.0 * (double)deliveries / (double)expected : 0,
           (double)deliveries / secs, frames, frames ? (double)deliveries / (double)frames : 0,
           gaps, dead);
    printf("latency post->delivery: p50 %.2f ms  p99 %.2f ms\n", hist_pct(hist_one, 0.5),
           hist_pct(hist_one, 0.99));
    printf("latency post->all clients have it: p50 %.2f ms  p99 %.2f ms (%" PRIu64 " events)\n",
           hist_pct(hist_all, 0.5), hist_pct(hist_all, 0.99), all_done);
    static uint64_t hp[HBUCKETS + 1];
    for (int i = 0; i <= HBUCKETS; i++) {
        hp[i] = atomic_load(&hist_post[i]);
    }
    printf("REST POST round trip (included above): p50 %.2f ms  p99 %.2f ms\n", hist_pct(hp, 0.5),
           hist_pct(hp, 0.99));
    if (server_pid) {
        printf("server RSS: %.1f MiB\n", rss_kib(server_pid) / 1024.0);
    }
    return 0;
}
