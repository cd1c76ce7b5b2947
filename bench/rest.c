/*
 * bench/rest.c - HTTP/1.1 load client for the REST API (raw sockets + epoll, keep-alive,
 * one thread), closed-loop or open-loop (fixed rate).
 *
 *   build/bench/rest --url http://127.0.0.1:8080 --token TOKEN --scenario single
 *        [--conns 32] [--duration 10] [--rate 0] [--sessions 1000] [--content 200]
 *
 * Scenarios:
 *   single   POST /v1/sessions/{id}/messages {content: 200 bytes, run: false} to one session
 *   spread   the same, each request to a session chosen uniformly at random among --sessions
 *   healthz  GET /healthz
 * Closed loop (--rate 0): every connection keeps one request in flight; reports the throughput.
 * Open loop (--rate R): requests are issued on a fixed schedule (R/s) whatever the server
 * does; latency is measured from the *scheduled* send time, so queueing (in the client or the
 * server) shows in p99 instead of being hidden (no coordinated omission).
 * Prints one line: scenario, mode, requests/s, p50/p90/p99/p99.9/max latency (µs), errors;
 * with --json, one JSON object instead.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct opts {
    char host[64];
    int port;
    const char *token;
    const char *scenario;
    int conns;
    double duration;
    double rate;
    int sessions;
    const char *ids_file;
    int content;
    int json;
    int warmup_ms;
};

static struct opts o = {"127.0.0.1", 8080, NULL, "single", 32, 10, 0, 1000, NULL, 200, 0, 500};

/* ---- blocking helpers for setup ---- */

static int connect_to(int nonblock)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)o.port);
    if (inet_pton(AF_INET, o.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad host %s (IPv4 only)\n", o.host);
        exit(2);
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        exit(2);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (nonblock) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    return fd;
}

/* Parse a complete response in buf[0..n): returns its total length, 0 if incomplete, -1 bad. */
static long parse_response(const char *buf, size_t n, int *status, int *close_after)
{
    const char *end = memmem(buf, n, "\r\n\r\n", 4);
    long clen = 0;
    if (!end) {
        return 0;
    }
    if (n < 12 || strncmp(buf, "HTTP/1.", 7) != 0) {
        return -1;
    }
    *status = (int)strtol(buf + 9, NULL, 10);
    *close_after = 0;
    for (const char *p = buf; p < end;) {
        const char *eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
        if (!eol) {
            break;
        }
        if ((size_t)(eol - p) > 15 && strncasecmp(p, "Content-Length:", 15) == 0) {
            clen = strtol(p + 15, NULL, 10);
        } else if ((size_t)(eol - p) > 11 && strncasecmp(p, "Connection:", 11) == 0 &&
                   memmem(p, (size_t)(eol - p), "close", 5)) {
            *close_after = 1;
        }
        p = eol + 2;
    }
    long total = (long)(end + 4 - buf) + clen;
    return (long)n >= total ? total : 0;
}

/* One blocking request on a fresh connection; returns the body (static buffer). */
static char *http_once(const char *method, const char *path, const char *body, int *status)
{
    static char resp[1 << 20];
    char req[4096];
    int fd = connect_to(0);
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     method, path, o.host, o.token, body ? strlen(body) : 0, body ? body : "");
    if (write(fd, req, (size_t)n) != n) {
        perror("write");
        exit(2);
    }
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0) {
        got += (size_t)r;
    }
    close(fd);
    resp[got] = 0;
    int cl;
    if (parse_response(resp, got, status, &cl) <= 0) {
        fprintf(stderr, "bad response to %s %s\n", method, path);
        exit(2);
    }
    char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : resp;
}

static char *create_session(void)
{
    int status;
    char *b = http_once("POST", "/v1/sessions", "{\"title\":\"bench\"}", &status);
    char *id = strstr(b, "\"id\":\"");
    if (status != 201 || !id) {
        fprintf(stderr, "create session: HTTP %d: %.200s\n", status, b);
        exit(2);
    }
    id += 6;
    char *q = strchr(id, '"');
    return strndup(id, (size_t)(q - id));
}

/* ---- the load loop ---- */

struct conn {
    int fd;
    int busy;
    int64_t t_start; /* scheduled (open loop) or actual (closed loop) send time */
    char out[1024];
    size_t out_len, out_off;
    char in[65536];
    size_t in_len;
};

static char **sids;
static int nsids;
static char body[8192];
static size_t body_len;
static uint32_t *lat;
static size_t nlat, caplat;
static uint64_t errors, status_err, reconnects;
static int measuring;

static uint64_t rng_state = 88172645463325252ull;
static uint64_t xorshift(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void build_request(struct conn *c)
{
    if (strcmp(o.scenario, "healthz") == 0) {
        c->out_len = (size_t)snprintf(c->out, sizeof(c->out),
                                      "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", o.host);
    } else {
        const char *sid = nsids == 1 ? sids[0] : sids[xorshift() % (uint64_t)nsids];
        c->out_len = (size_t)snprintf(c->out, sizeof(c->out),
                                      "POST /v1/sessions/%s/messages HTTP/1.1\r\nHost: %s\r\n"
                                      "Authorization: Bearer %s\r\nContent-Type: "
                                      "application/json\r\nContent-Length: %zu\r\n\r\n",
                                      sid, o.host, o.token, body_len);
    }
    c->out_off = 0;
}

static int ep;

static void conn_open(struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    c->fd = connect_to(1);
    c->busy = 0;
    c->in_len = 0;
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

/* Send the request (headers then body, with writev-like two writes folded into one buffer). */
static void conn_send(struct conn *c, int64_t t_start)
{
    build_request(c);
    if (strcmp(o.scenario, "healthz") != 0) {
        memcpy(c->out + c->out_len, body, body_len); /* out is sized for it (checked) */
        c->out_len += body_len;
    }
    c->busy = 1;
    c->t_start = t_start;
    ssize_t w = write(c->fd, c->out, c->out_len);
    if (w < 0 && errno != EAGAIN) {
        errors++;
        return;
    }
    c->out_off = w > 0 ? (size_t)w : 0;
    if (c->out_off < c->out_len) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void record(int64_t us)
{
    if (!measuring) {
        return;
    }
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 20;
        uint32_t *n = realloc(lat, caplat * sizeof(*lat));
        if (!n) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        lat = n;
    }
    lat[nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* Returns 1 when a response completed (the connection is idle again). */
static int conn_readable(struct conn *c)
{
    int done = 0;
    for (;;) {
        ssize_t r = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (r < 0 && errno == EAGAIN) {
            break;
        }
        if (r <= 0) {
            /* closed by the server: count, reconnect */
            if (c->busy) {
                errors++;
            }
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            reconnects++;
            conn_open(c);
            return 1;
        }
        c->in_len += (size_t)r;
        for (;;) {
            int status, cl;
            long total = parse_response(c->in, c->in_len, &status, &cl);
            if (total < 0) {
                fprintf(stderr, "bad response\n");
                exit(1);
            }
            if (total == 0) {
                break;
            }
            record(now_us() - c->t_start);
            if (!((status >= 200 && status < 300))) {
                status_err++;
                if (status_err < 5) {
                    fprintf(stderr, "HTTP %d: %.*s\n", status, (int)total, c->in);
                }
            }
            memmove(c->in, c->in + total, c->in_len - (size_t)total);
            c->in_len -= (size_t)total;
            c->busy = 0;
            done = 1;
            if (cl) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                reconnects++;
                conn_open(c);
                return 1;
            }
        }
    }
    return done;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr, "usage: rest --url http://HOST:PORT --token T [--scenario single|spread|"
                    "healthz] [--conns N] [--duration S] [--rate R] [--sessions N] [--ids FILE] "
                    "[--content BYTES] [--warmup-ms MS] [--json]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            o.json = 1;
            continue;
        }
        if (!v) {
            usage();
        }
        i++;
        if (!strcmp(a, "--url")) {
            if (sscanf(v, "http://%63[^:]:%d", o.host, &o.port) != 2) {
                usage();
            }
        } else if (!strcmp(a, "--token")) {
            o.token = v;
        } else if (!strcmp(a, "--scenario")) {
            o.scenario = v;
        } else if (!strcmp(a, "--conns")) {
            o.conns = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--duration")) {
            o.duration = strtod(v, NULL);
        } else if (!strcmp(a, "--rate")) {
            o.rate = strtod(v, NULL);
        } else if (!strcmp(a, "--ids")) {
            o.ids_file = v;
        } else if (!strcmp(a, "--sessions")) {
            o.sessions = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--content")) {
            o.content = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--warmup-ms")) {
            o.warmup_ms = (int)strtol(v, NULL, 10);
        } else {
            usage();
        }
    }
    if (!o.token || o.conns < 1 || o.content < 1 || o.content > 4000) {
        usage();
    }
    /* setup */
    if (strcmp(o.scenario, "healthz") != 0) {
        nsids = strcmp(o.scenario, "spread") == 0 ? o.sessions : 1;
        sids = calloc((size_t)nsids, sizeof(*sids));
        /* --ids FILE: reuse the sessions listed there (one id a line), creating and appending
         * what is missing, so repeated runs measure messages only, not session creation. */
        FILE *idf = o.ids_file ? fopen(o.ids_file, "r") : NULL;
        char line[128];
        int have = 0;
        while (idf && have < nsids && fgets(line, sizeof(line), idf)) {
            line[strcspn(line, "\r\n")] = 0;
            if (line[0]) {
                sids[have++] = strdup(line);
            }
        }
        if (idf) {
            fclose(idf);
        }
        idf = o.ids_file && have < nsids ? fopen(o.ids_file, "a") : NULL;
        for (int i = have; i < nsids; i++) {
            sids[i] = create_session();
            if (idf) {
                fprintf(idf, "%s\n", sids[i]);
            }
        }
        if (idf) {
            fclose(idf);
        }
        int n = snprintf(body, sizeof(body), "{\"content\":\"");
        memset(body + n, 'x', (size_t)o.content);
        n += o.content;
        n += snprintf(body + n, sizeof(body) - (size_t)n, "\",\"run\":false}");
        body_len = (size_t)n;
        if (body_len + 512 > sizeof(((struct conn *)0)->out)) {
            fprintf(stderr, "content too large for the request buffer\n");
            return 2;
        }
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc((size_t)o.conns, sizeof(*cs));
    for (int i = 0; i < o.conns; i++) {
        conn_open(&cs[i]);
    }
    int64_t t0 = now_us();
    int64_t t_measure = t0 + (int64_t)o.warmup_ms * 1000;
    int64_t t_end = t_measure + (int64_t)(o.duration * 1e6);
    uint64_t issued = 0;  /* open loop: requests scheduled so far */
    uint64_t backlog = 0; /* scheduled but not yet sent (no idle connection) */
    double interval = o.rate > 0 ? 1e6 / o.rate : 0;
    int64_t *pending = NULL; /* open loop: scheduled times waiting for a connection (ring) */
    size_t pcap = 1 << 20, phead = 0, ptail = 0;
    if (o.rate > 0) {
        pending = malloc(pcap * sizeof(*pending));
    }
    uint64_t done_measured = 0;
    int64_t measure_started = 0;
    struct epoll_event evs[256];

    if (o.rate <= 0) {
        for (int i = 0; i < o.conns; i++) {
            conn_send(&cs[i], now_us());
        }
    }
    for (;;) {
        int64_t now = now_us();
        if (!measuring && now >= t_measure) {
            measuring = 1;
            measure_started = now;
        }
        if (now >= t_end) {
            break;
        }
        int64_t timeout_us = 100000;
        if (o.rate > 0) {
            /* Schedule everything due; hand it to idle connections. */
            while (t0 + (int64_t)((double)issued * interval) <= now) {
                pending[ptail++ % pcap] = t0 + (int64_t)((double)issued * interval);
                issued++;
            }
            for (int i = 0; i < o.conns && phead < ptail; i++) {
                if (!cs[i].busy) {
                    conn_send(&cs[i], pending[phead++ % pcap]);
                }
            }
            backlog = ptail - phead;
            int64_t next = t0 + (int64_t)((double)issued * interval);
            timeout_us = next > now ? next - now : 0;
        }
        /* Microsecond timeout: at 2,000 req/s the next send is 500 us away, and a millisecond
         * epoll_wait would round it to 0 and spin, stealing a core from the server. */
        struct timespec tmo = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
        int n = epoll_pwait2(ep, evs, 256, &tmo, NULL);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (evs[i].events & EPOLLOUT) {
                ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
                if (w > 0) {
                    c->out_off += (size_t)w;
                }
                if (c->out_off >= c->out_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (conn_readable(c)) {
                    if (measuring) {
                        done_measured++;
                    }
                    if (o.rate <= 0) {
                        conn_send(c, now_us());
                    } else if (phead < ptail) {
                        conn_send(c, pending[phead++ % pcap]);
                    }
                }
            }
        }
    }
    double secs = (double)(now_us() - measure_started) / 1e6;
    qsort(lat, nlat, sizeof(*lat), cmp_u32);
#define PCT(p) (nlat ? lat[(size_t)((double)(nlat - 1) * (p))] : 0)
    double rps = (double)nlat / secs;
    if (o.json) {
        printf("{\"scenario\":\"%s\",\"mode\":\"%s\",\"rate\":%.0f,\"conns\":%d,\"sessions\":%d,"
               "\"requests\":%zu,\"seconds\":%.2f,\"rps\":%.0f,\"p50_us\":%u,\"p90_us\":%u,"
               "\"p99_us\":%u,\"p999_us\":%u,\"max_us\":%u,\"errors\":%llu,\"http_errors\":%llu,"
               "\"reconnects\":%llu,\"backlog_at_end\":%llu}\n",
               o.scenario, o.rate > 0 ? "open" : "closed", o.rate, o.conns, nsids, nlat, secs, rps,
               PCT(0.5), PCT(0.9), PCT(0.99), PCT(0.999), nlat ? lat[nlat - 1] : 0,
               (unsigned long long)errors, (unsigned long long)status_err,
               (unsigned long long)reconnects, (unsigned long long)backlog);
    } else {
        printf("%-8s %-6s conns=%-4d %s req/s=%-8.0f p50=%uus p90=%uus p99=%uus p99.9=%uus "
               "max=%uus n=%zu errors=%llu http_errors=%llu\n",
               o.scenario, o.rate > 0 ? "open" : "closed", o.conns,
               o.rate > 0 ? "(fixed rate)" : "", rps, PCT(0.5), PCT(0.9), PCT(0.99), PCT(0.999),
               nlat ? lat[nlat - 1] : 0, nlat, (unsigned long long)errors,
               (unsigned long long)status_err);
    }
    (void)done_measured;
    return (errors || status_err) ? 1 : 0;
}
