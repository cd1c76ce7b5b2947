/*
 * egress.c - the egress allow-list forward proxy (see egress.h).
 *
 * Threads: the acceptor thread polls every listener plus a wake-up pipe; each accepted
 * connection is served by its own detached thread, which reads the request head, applies the
 * policy copied from its listener at accept time, resolves, connects and then relays bytes
 * both ways until both sides are done or the idle timeout passes. e->lock guards the
 * listener table, the connection list and the counters.
 *
 * Invariants: a connection is forwarded only to an address that came out of its own
 * resolution of an allowed host:port pair, and never to a restricted address unless the pair
 * names that address literally. A plain-http request is forwarded with "Connection: close"
 * so the client cannot reuse the upstream connection for another host.
 */
#include "sandbox/egress/egress.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define HEAD_MAX  16384
#define MAX_ALLOW 256
#define RELAY_BUF 65536
#define HOST_MAX  256

struct allow {
    char host[HOST_MAX]; /* lower case, no brackets, no trailing dot */
    int port;
    int literal; /* host is an IP literal */
};

struct listener {
    char *name;
    char *unix_path; /* NULL for TCP */
    int fd;
    struct allow *allow;
    size_t nallow;
};

struct conn {
    int cfd, ufd; /* client and upstream; -1 when closed */
    struct conn *next;
};

struct egress {
    struct egress_config cfg;
    pthread_mutex_t lock;
    pthread_cond_t idle; /* signalled when active drops to 0 */
    struct listener **ls;
    size_t nls;
    struct conn *conns;
    int wake[2];
    int stopping;
    pthread_t acceptor;
    struct egress_stats st;
};

/* ---- addresses ---- */

static int v4_restricted(uint32_t a)
{
    static const struct {
        uint32_t net, mask;
    } r[] = {
        {0x00000000, 0xFF000000}, /* 0/8 "this network" */
        {0x0A000000, 0xFF000000}, /* 10/8 */
        {0x64400000, 0xFFC00000}, /* 100.64/10 CGNAT */
        {0x7F000000, 0xFF000000}, /* 127/8 loopback */
        {0xA9FE0000, 0xFFFF0000}, /* 169.254/16 link-local, cloud metadata */
        {0xAC100000, 0xFFF00000}, /* 172.16/12 */
        {0xC0000000, 0xFFFFFF00}, /* 192.0.0/24 IETF */
        {0xC0000200, 0xFFFFFF00}, /* 192.0.2/24 TEST-NET-1 */
        {0xC0A80000, 0xFFFF0000}, /* 192.168/16 */
        {0xC6120000, 0xFFFE0000}, /* 198.18/15 benchmarking */
        {0xC6336400, 0xFFFFFF00}, /* 198.51.100/24 TEST-NET-2 */
        {0xCB007100, 0xFFFFFF00}, /* 203.0.113/24 TEST-NET-3 */
        {0xE0000000, 0xF0000000}, /* 224/4 multicast */
        {0xF0000000, 0xF0000000}, /* 240/4 reserved, broadcast */
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
        if ((a & r[i].mask) == r[i].net) {
            return 1;
        }
    }
    return 0;
}

int egress_addr_restricted(const void *sockaddr)
{
    const struct sockaddr *sa = sockaddr;
    if (sa->sa_family == AF_INET) {
        return v4_restricted(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    }
    if (sa->sa_family != AF_INET6) {
        return 1;
    }
    const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    static const unsigned char nat64[12] = {0, 0x64, 0xFF, 0x9B, 0, 0, 0, 0, 0, 0, 0, 0};
    if (memcmp(b, v4mapped, 12) == 0 || memcmp(b, nat64, 12) == 0) {
        uint32_t a = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15];
        return v4_restricted(a);
    }
    int zero = 1;
    for (int i = 0; i < 15; i++) {
        zero &= b[i] == 0;
    }
    if (zero) {
        return 1; /* :: and ::1 (and the deprecated v4-compatible range) */
    }
    if ((b[0] & 0xFE) == 0xFC) {
        return 1; /* fc00::/7 unique local (includes fd00:ec2::254, AWS metadata) */
    }
    if (b[0] == 0xFE && (b[1] & 0xC0) == 0x80) {
        return 1; /* fe80::/10 link-local */
    }
    if (b[0] == 0xFE && (b[1] & 0xC0) == 0xC0) {
        return 1; /* fec0::/10 site-local (deprecated) */
    }
    if (b[0] == 0xFF) {
        return 1; /* multicast */
    }
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0D && b[3] == 0xB8) {
        return 1; /* 2001:db8::/32 documentation */
    }
    return 0;
}

/* Normalise "Host", "[v6]" or "host." into lower case without brackets or trailing dot. */
static int norm_host(const char *s, size_t n, char *out)
{
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    while (n > 0 && s[n - 1] == '.') {
        n--;
    }
    if (n == 0 || n >= HOST_MAX) {
        return ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
              c == ':' || c == '_')) {
            return ERR_INVALID;
        }
        out[i] = c;
    }
    out[n] = '\0';
    return 0;
}

static int is_literal(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* Split "host:port" / "[v6]:port" into a normalised host and a port. */
static int split_hostport(const char *s, size_t n, char *host, int *port)
{
    const char *colon = NULL;
    if (n > 0 && s[0] == '[') {
        const char *e = memchr(s, ']', n);
        if (!e || (size_t)(e - s) + 1 >= n || e[1] != ':') {
            return ERR_INVALID;
        }
        colon = e + 1;
    } else {
        for (size_t i = n; i > 0; i--) {
            if (s[i - 1] == ':') {
                colon = s + i - 1;
                break;
            }
        }
    }
    if (!colon) {
        return ERR_INVALID;
    }
    char num[8];
    size_t pl = n - (size_t)(colon + 1 - s);
    if (pl == 0 || pl >= sizeof(num)) {
        return ERR_INVALID;
    }
    memcpy(num, colon + 1, pl);
    num[pl] = '\0';
    char *end;
    long p = strtol(num, &end, 10);
    if (*end || p < 1 || p > 65535) {
        return ERR_INVALID;
    }
    *port = (int)p;
    return norm_host(s, (size_t)(colon - s), host);
}

/* An absolute URI's authority: host | host:port | [v6] | [v6]:port; port 80 by default. */
static int split_authority(const char *a, size_t n, char *host, int *port)
{
    const char *after = a; /* where a ":port" may start */
    if (n > 0 && a[0] == '[') {
        after = memchr(a, ']', n);
        if (!after) {
            return ERR_INVALID;
        }
    }
    if (memchr(after, ':', n - (size_t)(after - a))) {
        return split_hostport(a, n, host, port);
    }
    *port = 80;
    return norm_host(a, n, host);
}

/* ---- listeners ---- */

static void listener_free(struct listener *l)
{
    if (!l) {
        return;
    }
    if (l->fd >= 0) {
        close(l->fd);
    }
    if (l->unix_path) {
        unlink(l->unix_path);
    }
    free(l->name);
    free(l->unix_path);
    free(l->allow);
    free(l);
}

static void wake(struct egress *e)
{
    char c = 1;
    ssize_t w = write(e->wake[1], &c, 1);
    (void)w;
}

int egress_open(struct egress *e, const char *name, const char *const *allow, const char *unix_path,
                int *port_out)
{
    struct listener *l = xcalloc(1, sizeof(*l));
    int rc = 0;
    l->fd = -1;
    l->name = xstrdup(name);
    for (size_t i = 0; allow && allow[i]; i++) {
        l->nallow++;
    }
    if (l->nallow > MAX_ALLOW) {
        rc = ERR_INVALID;
        goto out;
    }
    l->allow = xcalloc(l->nallow + 1, sizeof(*l->allow));
    for (size_t i = 0; i < l->nallow; i++) {
        if (split_hostport(allow[i], strlen(allow[i]), l->allow[i].host, &l->allow[i].port)) {
            LOG_WARN("egress: %s: malformed allow entry (want host:port)", name);
            rc = ERR_INVALID;
            goto out;
        }
        l->allow[i].literal = is_literal(l->allow[i].host);
    }
    if (unix_path) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof(sun.sun_path)) {
            rc = ERR_INVALID;
            goto out;
        }
        memcpy(sun.sun_path, unix_path, strlen(unix_path) + 1);
        l->unix_path = xstrdup(unix_path);
        l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        unlink(unix_path);
        if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
            chmod(unix_path, 0666) < 0 || listen(l->fd, 128) < 0) {
            LOG_ERROR("egress: %s: cannot listen on %s: %s", name, unix_path, strerror(errno));
            rc = ERR_IO;
            goto out;
        }
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7F000001)};
        socklen_t sl = sizeof(sin);
        l->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
            listen(l->fd, 128) < 0 || getsockname(l->fd, (struct sockaddr *)&sin, &sl) < 0) {
            LOG_ERROR("egress: %s: cannot listen on loopback: %s", name, strerror(errno));
            rc = ERR_IO;
            goto out;
        }
        if (port_out) {
            *port_out = ntohs(sin.sin_port);
        }
    }
    pthread_mutex_lock(&e->lock);
    struct listener *old = NULL;
    size_t i;
    for (i = 0; i < e->nls; i++) {
        if (strcmp(e->ls[i]->name, name) == 0) {
            old = e->ls[i];
            break;
        }
    }
    if (old) {
        /* Replacing: the old socket file is ours to remove only if it is another path. */
        if (old->unix_path && unix_path && strcmp(old->unix_path, unix_path) == 0) {
            free(old->unix_path);
            old->unix_path = NULL;
        }
        e->ls[i] = l;
    } else {
        e->ls = xrealloc(e->ls, (e->nls + 1) * sizeof(*e->ls));
        e->ls[e->nls++] = l;
    }
    pthread_mutex_unlock(&e->lock);
    wake(e);
    /* The acceptor may be inside poll() on the old fd: closing it is harmless (poll reports
     * POLLNVAL or nothing, and the table no longer has it). */
    listener_free(old);
    l = NULL;
out:
    listener_free(l);
    return rc;
}

int egress_close(struct egress *e, const char *name)
{
    struct listener *l = NULL;
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < e->nls; i++) {
        if (strcmp(e->ls[i]->name, name) == 0) {
            l = e->ls[i];
            e->ls[i] = e->ls[--e->nls];
            break;
        }
    }
    pthread_mutex_unlock(&e->lock);
    if (!l) {
        return ERR_NOT_FOUND;
    }
    wake(e);
    listener_free(l);
    return 0;
}

/* ---- one connection ---- */

struct job {
    struct egress *e;
    struct conn *c;
    char name[128];
    struct allow *allow;
    size_t nallow;
};

static void count(struct egress *e, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&e->lock);
    *field += n;
    pthread_mutex_unlock(&e->lock);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            if (poll(&pf, 1, 10000) <= 0) {
                return ERR_IO;
            }
            continue;
        }
        if (w <= 0) {
            return ERR_IO;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void reply(int fd, int status, const char *text, const char *msg)
{
    char b[1024];
    int n = snprintf(b, sizeof(b),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "X-Sessiond-Egress: %s\r\nConnection: close\r\n\r\n%s\n",
                     status, text, strlen(msg) + 1, status == 403 ? "denied" : "error", msg);
    if (n > 0) {
        write_all(fd, b, (size_t)n < sizeof(b) ? (size_t)n : sizeof(b) - 1);
    }
}

static void deny(struct job *j, const char *host, int port, const char *reason)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "sessiond egress: %s:%d refused: %s", host, port, reason);
    reply(j->c->cfd, 403, "Forbidden", msg);
    count(j->e, &j->e->st.denied, 1);
    LOG_INFO("egress: %s: refused %s:%d: %s", j->name, host, port, reason);
    if (j->e->cfg.on_deny) {
        j->e->cfg.on_deny(j->e->cfg.ctx, j->name, host, port, reason);
    }
}

/* Read until the end of the head; returns its length (leftover bytes follow in b). */
static int read_head(struct job *j, struct buf *b, size_t *head_len)
{
    int64_t deadline = clock_mono_ms() + j->e->cfg.head_timeout_ms;
    for (;;) {
        char *end = b->len >= 4 ? memmem(b->data, b->len, "\r\n\r\n", 4) : NULL;
        if (end) {
            *head_len = (size_t)(end - b->data) + 4;
            return 0;
        }
        if (b->len >= HEAD_MAX) {
            return ERR_TOO_LARGE;
        }
        int left = (int)(deadline - clock_mono_ms());
        struct pollfd pf = {.fd = j->c->cfd, .events = POLLIN};
        if (left <= 0 || poll(&pf, 1, left) <= 0) {
            return ERR_TIMEOUT;
        }
        char tmp[4096];
        ssize_t r = recv(j->c->cfd, tmp, sizeof(tmp), 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r <= 0) {
            return ERR_IO;
        }
        if (buf_append(b, tmp, (size_t)r)) {
            return ERR_TOO_LARGE;
        }
    }
}

/* Non-blocking connect with a timeout; 0 with *fd_out or an error. */
static int connect_to(const struct sockaddr *sa, socklen_t sl, int timeout_ms, int *fd_out)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return ERR_IO;
    }
    if (connect(fd, sa, sl) < 0) {
        if (errno != EINPROGRESS) {
            close(fd);
            return ERR_IO;
        }
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t el = sizeof(err);
        if (poll(&pf, 1, timeout_ms) <= 0) {
            close(fd);
            return ERR_TIMEOUT;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            close(fd);
            return ERR_IO;
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *fd_out = fd;
    return 0;
}

/* Copy both ways until both directions are closed or nothing moves for idle_timeout_ms. */
static void relay(struct job *j)
{
    int fds[2] = {j->c->cfd, j->c->ufd};
    int open_in[2] = {1, 1}; /* still reading from fds[i] */
    char *b = xmalloc(RELAY_BUF);
    while (open_in[0] || open_in[1]) {
        struct pollfd pf[2];
        int np = 0, map[2];
        for (int i = 0; i < 2; i++) {
            if (open_in[i]) {
                pf[np].fd = fds[i];
                pf[np].events = POLLIN;
                map[np++] = i;
            }
        }
        int r = poll(pf, (nfds_t)np, j->e->cfg.idle_timeout_ms);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break; /* idle timeout or error */
        }
        int fail = 0;
        for (int k = 0; k < np; k++) {
            if (!(pf[k].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL))) {
                continue;
            }
            int i = map[k];
            ssize_t n = recv(fds[i], b, RELAY_BUF, 0);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                continue;
            }
            if (n <= 0) {
                open_in[i] = 0;
                shutdown(fds[1 - i], SHUT_WR);
                if (n < 0) {
                    fail = 1;
                }
                continue;
            }
            count(j->e, &j->e->st.bytes, (uint64_t)n);
            if (write_all(fds[1 - i], b, (size_t)n)) {
                fail = 1;
                break;
            }
        }
        if (fail) {
            break;
        }
    }
    free(b);
}

/* The header name of a line (up to ':'), compared case-insensitively with name. */
static int header_is(const char *line, size_t n, const char *name)
{
    size_t k = strlen(name);
    return n > k && line[k] == ':' && strncasecmp(line, name, k) == 0;
}

/* Remove the first n bytes of b. */
static void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

/* The value of header name in head[0..len) (first match), copied into out; 0 or -1. */
static int header_value(const char *head, size_t len, const char *name, char *out, size_t n)
{
    const char *p = memmem(head, len, "\r\n", 2);
    const char *end = head + len;
    size_t k = strlen(name);
    while (p && p + 2 < end) {
        p += 2;
        const char *e = memmem(p, (size_t)(end - p), "\r\n", 2);
        size_t ln = e ? (size_t)(e - p) : (size_t)(end - p);
        if (ln > k && p[k] == ':' && strncasecmp(p, name, k) == 0) {
            const char *v = p + k + 1;
            while (v < p + ln && (*v == ' ' || *v == '\t')) {
                v++;
            }
            size_t vl = (size_t)(p + ln - v);
            if (vl >= n) {
                vl = n - 1;
            }
            memcpy(out, v, vl);
            out[vl] = '\0';
            return 0;
        }
        p = e;
    }
    return -1;
}

/* Wait until fd is readable (or the idle timeout); 1 readable, 0 timeout/error. */
static int wait_in(int fd, int ms)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int r;
    do {
        r = poll(&pf, 1, ms);
    } while (r < 0 && errno == EINTR);
    return r > 0;
}

/* Forward exactly n body bytes from the client (the buffered ones first) to the upstream. */
static int forward_body(struct job *j, struct buf *b, uint64_t n)
{
    size_t have = b->len < n ? b->len : (size_t)n;
    if (have && write_all(j->c->ufd, b->data, have)) {
        return ERR_IO;
    }
    buf_consume(b, have);
    n -= have;
    char tmp[16384];
    while (n > 0) {
        if (!wait_in(j->c->cfd, j->e->cfg.idle_timeout_ms)) {
            return ERR_TIMEOUT;
        }
        ssize_t r = recv(j->c->cfd, tmp, n < sizeof(tmp) ? (size_t)n : sizeof(tmp), 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r <= 0 || write_all(j->c->ufd, tmp, (size_t)r)) {
            return ERR_IO;
        }
        count(j->e, &j->e->st.bytes, (uint64_t)r);
        n -= (uint64_t)r;
    }
    return 0;
}

/* Where a chunked body ends, scanned as it streams by (RFC 9112 7.1): chunk-size line,
 * data, CRLF, ..., a last chunk of size 0, trailer lines, an empty line. */
struct chunk_scan {
    int st; /* 0 size line, 1 data, 2 data CRLF, 3 trailer line */
    uint64_t left;
    int hex_done; /* past the hex digits of the size line (extensions follow) */
    int line_len; /* bytes of the current trailer line before its LF */
};

/* Consume up to n bytes; returns how many belong to the body, *done = 1 at its end. */
static size_t chunk_feed(struct chunk_scan *c, const char *p, size_t n, int *done)
{
    size_t i = 0;
    *done = 0;
    while (i < n) {
        char ch = p[i];
        switch (c->st) {
        case 0:
            i++;
            if (ch == '\n') {
                c->st = c->left ? 1 : 3;
                c->hex_done = 0;
                c->line_len = 0;
            } else if (!c->hex_done && ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                                        (ch >= 'A' && ch <= 'F'))) {
                int d = ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
                c->left = c->left * 16 + (uint64_t)d;
            } else {
                c->hex_done = 1;
            }
            break;
        case 1: {
            size_t k = n - i < c->left ? n - i : (size_t)c->left;
            i += k;
            c->left -= k;
            if (!c->left) {
                c->st = 2;
            }
            break;
        }
        case 2:
            i++;
            if (ch == '\n') {
                c->st = 0;
            }
            break;
        case 3:
            i++;
            if (ch == '\n') {
                if (c->line_len == 0) {
                    *done = 1;
                    return i;
                }
                c->line_len = 0;
            } else if (ch != '\r') {
                c->line_len++;
            }
            break;
        }
    }
    return i;
}

/* Forward a chunked request body (Bun's fetch sends them) from the client to the upstream,
 * up to its end, so that the next request on the connection is seen as one. */
static int forward_chunked(struct job *j, struct buf *b)
{
    struct chunk_scan cs = {0};
    int done = 0;
    size_t take = chunk_feed(&cs, b->data ? b->data : "", b->len, &done);
    if (take && write_all(j->c->ufd, b->data, take)) {
        return ERR_IO;
    }
    buf_consume(b, take);
    char tmp[16384];
    while (!done) {
        if (!wait_in(j->c->cfd, j->e->cfg.idle_timeout_ms)) {
            return ERR_TIMEOUT;
        }
        ssize_t r = recv(j->c->cfd, tmp, sizeof(tmp), 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r <= 0) {
            return ERR_IO;
        }
        take = chunk_feed(&cs, tmp, (size_t)r, &done);
        if (write_all(j->c->ufd, tmp, take)) {
            return ERR_IO;
        }
        count(j->e, &j->e->st.bytes, take);
        if (take < (size_t)r && buf_append(b, tmp + take, (size_t)r - take)) {
            return ERR_TOO_LARGE; /* the start of a pipelined request: kept for the loop */
        }
    }
    return 0;
}

/* Relay one response (the upstream closes after it: we sent Connection: close). Its head is
 * rewritten without hop-by-hop headers; *keep = 1 if the client can find the end of the body
 * itself (Content-Length or chunked), so its connection can carry its next request. */
static int relay_response(struct job *j, int *keep)
{
    struct buf h;
    char tmp[RELAY_BUF];
    int rc = 0;
    size_t hl = 0;
    buf_init(&h, HEAD_MAX * 4);
    *keep = 0;
    for (;;) { /* the head */
        char *e = h.len >= 4 ? memmem(h.data, h.len, "\r\n\r\n", 4) : NULL;
        if (e) {
            hl = (size_t)(e - h.data) + 4;
            break;
        }
        if (!wait_in(j->c->ufd, j->e->cfg.idle_timeout_ms)) {
            rc = ERR_TIMEOUT;
            goto out;
        }
        ssize_t r = recv(j->c->ufd, tmp, sizeof(tmp), 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r <= 0 || buf_append(&h, tmp, (size_t)r)) {
            rc = ERR_IO;
            goto out;
        }
    }
    char v[128];
    int chunked = header_value(h.data, hl, "transfer-encoding", v, sizeof(v)) == 0 &&
                  strcasestr(v, "chunked") != NULL;
    int has_len = header_value(h.data, hl, "content-length", v, sizeof(v)) == 0;
    int status =
        h.len > 12 ? (h.data[9] - '0') * 100 + (h.data[10] - '0') * 10 + h.data[11] - '0' : 0;
    *keep = chunked || has_len || status == 204 || status == 304 || (status >= 100 && status < 200);
    struct buf out;
    buf_init(&out, 0);
    const char *p = memmem(h.data, hl, "\r\n", 2) + 2;
    buf_append(&out, h.data, (size_t)(p - h.data));
    const char *hend = h.data + hl - 2;
    while (p < hend) {
        const char *e = memmem(p, (size_t)(hend - p), "\r\n", 2);
        size_t n = e ? (size_t)(e - p) : (size_t)(hend - p);
        if (!header_is(p, n, "connection") && !header_is(p, n, "keep-alive") &&
            !header_is(p, n, "proxy-connection")) {
            buf_append(&out, p, n + 2);
        }
        p += n + 2;
    }
    buf_puts(&out, *keep ? "\r\n" : "Connection: close\r\n\r\n");
    /* The end of the body: found by its framing when it has one (an upstream may keep its
     * side open despite Connection: close), else the upstream's EOF. */
    uint64_t cl_left = has_len ? strtoull(v, NULL, 10) : 0;
    int framed = chunked || has_len || status == 204 || status == 304;
    struct chunk_scan cs = {0};
    int done = framed && !chunked && cl_left == 0;
    size_t rest = h.len - hl;
    if (framed && !done && rest) {
        size_t take = chunked ? chunk_feed(&cs, h.data + hl, rest, &done)
                              : (rest < cl_left ? rest : (size_t)cl_left);
        if (!chunked) {
            cl_left -= take;
            done = cl_left == 0;
        }
        rest = take;
    }
    buf_append(&out, h.data + hl, rest);
    rc = write_all(j->c->cfd, out.data, out.len);
    count(j->e, &j->e->st.bytes, out.len);
    buf_free(&out);
    while (!rc && !done) { /* the body */
        struct pollfd pf[2] = {{.fd = j->c->ufd, .events = POLLIN},
                               {.fd = j->c->cfd, .events = POLLRDHUP}};
        int r = poll(pf, 2, j->e->cfg.idle_timeout_ms);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0 || (pf[1].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            rc = ERR_IO; /* idle, or the client went away (a cancelled agent) */
            break;
        }
        ssize_t n = recv(j->c->ufd, tmp, sizeof(tmp), 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            if (framed) {
                rc = ERR_IO; /* cut short: the client cannot reuse its connection */
            }
            break;
        }
        size_t take = (size_t)n;
        if (chunked) {
            take = chunk_feed(&cs, tmp, (size_t)n, &done);
        } else if (has_len) {
            take = (uint64_t)n < cl_left ? (size_t)n : (size_t)cl_left;
            cl_left -= take;
            done = cl_left == 0;
        }
        count(j->e, &j->e->st.bytes, (uint64_t)take);
        rc = write_all(j->c->cfd, tmp, take);
    }
out:
    buf_free(&h);
    return rc;
}

/* Check the policy, resolve and connect j->c->ufd. Replies (403/502) and returns non-zero
 * when the request must not go on. */
static int open_upstream(struct job *j, const char *host, int port)
{
    const struct allow *a = NULL;
    struct addrinfo *res = NULL;
    for (size_t i = 0; i < j->nallow; i++) {
        if (j->allow[i].port == port && strcmp(j->allow[i].host, host) == 0) {
            a = &j->allow[i];
            break;
        }
    }
    if (!a) {
        deny(j, host, port, "not on this sandbox's egress allow-list");
        return ERR_FORBIDDEN;
    }
    /* Resolve ourselves; connect only to addresses that pass the address rules. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    char pstr[8];
    snprintf(pstr, sizeof(pstr), "%d", port);
    if (a->literal) {
        hints.ai_flags = AI_NUMERICHOST;
    }
    if (getaddrinfo(host, pstr, &hints, &res) != 0 || !res) {
        reply(j->c->cfd, 502, "Bad Gateway", "sessiond egress: cannot resolve host");
        count(j->e, &j->e->st.failed, 1);
        return ERR_IO;
    }
    int tried = 0, restricted = 0;
    for (struct addrinfo *ai = res; ai && j->c->ufd < 0; ai = ai->ai_next) {
        if (egress_addr_restricted(ai->ai_addr) && !a->literal) {
            restricted++;
            continue;
        }
        tried++;
        int fd;
        if (connect_to(ai->ai_addr, ai->ai_addrlen, j->e->cfg.connect_timeout_ms, &fd) == 0) {
            pthread_mutex_lock(&j->e->lock);
            j->c->ufd = fd;
            pthread_mutex_unlock(&j->e->lock);
        }
    }
    freeaddrinfo(res);
    if (j->c->ufd < 0) {
        if (!tried && restricted) {
            deny(j, host, port,
                 "resolves to a private, loopback or link-local address (name it as an IP "
                 "literal to allow it)");
            return ERR_FORBIDDEN;
        }
        reply(j->c->cfd, 502, "Bad Gateway", "sessiond egress: cannot connect upstream");
        count(j->e, &j->e->st.failed, 1);
        return ERR_IO;
    }
    count(j->e, &j->e->st.allowed, 1);
    return 0;
}

static void close_upstream(struct job *j)
{
    pthread_mutex_lock(&j->e->lock);
    int fd = j->c->ufd;
    j->c->ufd = -1;
    pthread_mutex_unlock(&j->e->lock);
    if (fd >= 0) {
        close(fd);
    }
}

/* Serve the requests of one client connection: a CONNECT tunnel, or plain-http requests one
 * after the other (pipelined ones too), each checked and sent on its own upstream
 * connection with Connection: close. */
static void serve(struct job *j)
{
    struct buf b;
    buf_init(&b, HEAD_MAX + RELAY_BUF);
    for (int nreq = 0;; nreq++) {
        size_t head_len = 0;
        char host[HOST_MAX];
        int port = 0;
        int rc = read_head(j, &b, &head_len);
        if (rc) {
            if (rc == ERR_TOO_LARGE) {
                reply(j->c->cfd, 431, "Request Header Fields Too Large", "request head too large");
            }
            if (rc == ERR_TOO_LARGE || b.len > 0 || nreq == 0) {
                count(j->e, &j->e->st.failed, 1);
            }
            break;
        }
        /* Request line: METHOD SP TARGET SP HTTP/1.x */
        char *line_end = memmem(b.data, head_len, "\r\n", 2);
        char *sp1 = memchr(b.data, ' ', (size_t)(line_end - b.data));
        char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
        if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
            reply(j->c->cfd, 400, "Bad Request", "sessiond egress: malformed request line");
            count(j->e, &j->e->st.failed, 1);
            break;
        }
        const char *target = sp1 + 1;
        size_t tlen = (size_t)(sp2 - target);
        const char *path = "/";
        size_t plen = 1;
        int is_connect = (size_t)(sp1 - b.data) == 7 && memcmp(b.data, "CONNECT", 7) == 0;
        if (is_connect) {
            rc = split_hostport(target, tlen, host, &port);
        } else if (tlen > 7 && strncasecmp(target, "http://", 7) == 0) {
            const char *auth = target + 7;
            const char *slash = memchr(auth, '/', tlen - 7);
            size_t alen = slash ? (size_t)(slash - auth) : tlen - 7;
            if (slash) {
                path = slash;
                plen = tlen - (size_t)(slash - target);
            }
            rc = memchr(auth, '@', alen) ? ERR_INVALID : split_authority(auth, alen, host, &port);
        } else {
            rc = ERR_INVALID;
        }
        if (rc) {
            reply(j->c->cfd, 400, "Bad Request",
                  "sessiond egress: use CONNECT host:port or an absolute http:// URI");
            count(j->e, &j->e->st.failed, 1);
            break;
        }
        if (open_upstream(j, host, port)) {
            break;
        }
        if (is_connect) {
            static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
            if (write_all(j->c->cfd, ok, sizeof(ok) - 1)) {
                break;
            }
            /* Bytes the client sent after the head (a TLS ClientHello). */
            if (b.len > head_len && write_all(j->c->ufd, b.data + head_len, b.len - head_len)) {
                break;
            }
            relay(j);
            break;
        }
        /* Plain http: origin-form request line, hop-by-hop and proxy headers dropped,
         * Connection: close to the upstream (one request per upstream connection). */
        char v[64];
        uint64_t body = 0;
        int client_close = header_value(b.data, head_len, "connection", v, sizeof(v)) == 0 &&
                           strcasestr(v, "close") != NULL;
        int chunked = header_value(b.data, head_len, "transfer-encoding", v, sizeof(v)) == 0;
        if (!chunked && header_value(b.data, head_len, "content-length", v, sizeof(v)) == 0) {
            char *end;
            unsigned long long cl = strtoull(v, &end, 10);
            if (*end || end == v) {
                reply(j->c->cfd, 400, "Bad Request", "sessiond egress: bad Content-Length");
                break;
            }
            body = cl;
        }
        struct buf h;
        buf_init(&h, 0);
        buf_append(&h, b.data, (size_t)(sp1 - b.data) + 1);
        buf_append(&h, path, plen);
        buf_append(&h, sp2, (size_t)(line_end - sp2) + 2);
        const char *p = line_end + 2;
        const char *hend = b.data + head_len - 2;
        while (p < hend) {
            const char *e = memmem(p, (size_t)(hend - p), "\r\n", 2);
            size_t n = e ? (size_t)(e - p) : (size_t)(hend - p);
            if (!header_is(p, n, "proxy-connection") && !header_is(p, n, "proxy-authorization") &&
                !header_is(p, n, "connection") && !header_is(p, n, "keep-alive")) {
                buf_append(&h, p, n + 2);
            }
            p += n + 2;
        }
        buf_puts(&h, "Connection: close\r\n\r\n");
        rc = write_all(j->c->ufd, h.data, h.len);
        buf_free(&h);
        buf_consume(&b, head_len);
        if (rc) {
            break;
        }
        int keep = 0;
        rc = chunked ? forward_chunked(j, &b) : forward_body(j, &b, body);
        if (rc || relay_response(j, &keep) || !keep || client_close) {
            break;
        }
        close_upstream(j);
    }
    buf_free(&b);
}

static void *conn_main(void *arg)
{
    struct job *j = arg;
    struct egress *e = j->e;
    serve(j);
    pthread_mutex_lock(&e->lock);
    for (struct conn **pp = &e->conns; *pp; pp = &(*pp)->next) {
        if (*pp == j->c) {
            *pp = j->c->next;
            break;
        }
    }
    if (j->c->cfd >= 0) {
        close(j->c->cfd);
    }
    if (j->c->ufd >= 0) {
        close(j->c->ufd);
    }
    if (--e->st.active == 0) {
        pthread_cond_broadcast(&e->idle);
    }
    pthread_mutex_unlock(&e->lock);
    free(j->c);
    free(j->allow);
    free(j);
    return NULL;
}

static void accept_one(struct egress *e, int lfd)
{
    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0) {
        return;
    }
    struct job *j = xcalloc(1, sizeof(*j));
    j->e = e;
    j->c = xcalloc(1, sizeof(*j->c));
    j->c->cfd = cfd;
    j->c->ufd = -1;
    pthread_mutex_lock(&e->lock);
    struct listener *l = NULL;
    for (size_t i = 0; i < e->nls; i++) {
        if (e->ls[i]->fd == lfd) {
            l = e->ls[i];
        }
    }
    if (!l || e->stopping) {
        pthread_mutex_unlock(&e->lock);
        close(cfd);
        free(j->c);
        free(j);
        return;
    }
    snprintf(j->name, sizeof(j->name), "%s", l->name);
    j->nallow = l->nallow;
    j->allow = xcalloc(l->nallow + 1, sizeof(*j->allow));
    memcpy(j->allow, l->allow, l->nallow * sizeof(*j->allow));
    j->c->next = e->conns;
    e->conns = j->c;
    e->st.active++;
    e->st.connections++;
    pthread_mutex_unlock(&e->lock);

    pthread_attr_t at;
    pthread_t t;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    if (pthread_create(&t, &at, conn_main, j) != 0) {
        LOG_ERROR("egress: cannot start a connection thread");
        conn_main(j); /* cleans up (serve on this thread would block the acceptor) */
    }
    pthread_attr_destroy(&at);
}

static void *acceptor_main(void *arg)
{
    struct egress *e = arg;
    struct pollfd *pf = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        if (e->stopping) {
            pthread_mutex_unlock(&e->lock);
            break;
        }
        if (e->nls + 1 > cap) {
            cap = e->nls + 16;
            pf = xrealloc(pf, cap * sizeof(*pf));
        }
        size_t n = 0;
        pf[n++] = (struct pollfd){.fd = e->wake[0], .events = POLLIN};
        for (size_t i = 0; i < e->nls; i++) {
            pf[n++] = (struct pollfd){.fd = e->ls[i]->fd, .events = POLLIN};
        }
        pthread_mutex_unlock(&e->lock);
        int r = poll(pf, (nfds_t)n, -1);
        if (r < 0 && errno != EINTR) {
            break;
        }
        if (r <= 0) {
            continue;
        }
        if (pf[0].revents & POLLIN) {
            char tmp[64];
            while (read(e->wake[0], tmp, sizeof(tmp)) > 0) {
            }
            continue; /* the table changed: rebuild before touching listener fds */
        }
        for (size_t i = 1; i < n; i++) {
            if (pf[i].revents & POLLIN) {
                accept_one(e, pf[i].fd);
            }
        }
    }
    free(pf);
    return NULL;
}

int egress_start(const struct egress_config *cfg, struct egress **out)
{
    struct egress *e = xcalloc(1, sizeof(*e));
    e->cfg = *cfg;
    if (e->cfg.connect_timeout_ms <= 0) {
        e->cfg.connect_timeout_ms = 10000;
    }
    if (e->cfg.idle_timeout_ms <= 0) {
        e->cfg.idle_timeout_ms = 600000;
    }
    if (e->cfg.head_timeout_ms <= 0) {
        e->cfg.head_timeout_ms = 10000;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->idle, NULL);
    if (pipe2(e->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(e);
        return ERR_IO;
    }
    if (pthread_create(&e->acceptor, NULL, acceptor_main, e) != 0) {
        close(e->wake[0]);
        close(e->wake[1]);
        free(e);
        return ERR_IO;
    }
    *out = e;
    return 0;
}

void egress_stop(struct egress *e)
{
    if (!e) {
        return;
    }
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    pthread_mutex_unlock(&e->lock);
    wake(e);
    pthread_join(e->acceptor, NULL);
    pthread_mutex_lock(&e->lock);
    /* Unblock every connection thread; they close their own descriptors. */
    for (struct conn *c = e->conns; c; c = c->next) {
        if (c->cfd >= 0) {
            shutdown(c->cfd, SHUT_RDWR);
        }
        if (c->ufd >= 0) {
            shutdown(c->ufd, SHUT_RDWR);
        }
    }
    while (e->st.active > 0) {
        pthread_cond_wait(&e->idle, &e->lock);
    }
    pthread_mutex_unlock(&e->lock);
    for (size_t i = 0; i < e->nls; i++) {
        listener_free(e->ls[i]);
    }
    free(e->ls);
    close(e->wake[0]);
    close(e->wake[1]);
    pthread_cond_destroy(&e->idle);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

void egress_get_stats(struct egress *e, struct egress_stats *out)
{
    pthread_mutex_lock(&e->lock);
    *out = e->st;
    pthread_mutex_unlock(&e->lock);
}

/* A DNS name: labels [A-Za-z0-9-]{1,63}, no '-' at either end of a label, 253 bytes in all. */
static int valid_dns_name(const char *h, size_t n)
{
    size_t label = 0;
    if (n == 0 || n > 253) {
        return 0;
    }
    for (size_t i = 0; i <= n; i++) {
        char c = i < n ? h[i] : '.';
        if (c == '.') {
            if (label == 0 || h[i - 1] == '-') {
                return 0;
            }
            label = 0;
            continue;
        }
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!(alnum || (c == '-' && label > 0)) || ++label > 63) {
            return 0;
        }
    }
    return 1;
}

static int egress_fail(char *why, size_t whylen, const char *text)
{
    if (why && whylen) {
        snprintf(why, whylen, "%s", text);
    }
    return ERR_INVALID;
}

int egress_entry_norm(const char *entry, char *norm, size_t n, char *why, size_t whylen)
{
    char host[256];
    const char *colon;
    size_t len = entry ? strlen(entry) : 0;
    int v6 = 0;
    if (len == 0 || len > 270 || n < EGRESS_ENTRY_MAX) {
        return egress_fail(why, whylen, "must be \"host:port\"");
    }
    if (entry[0] == '[') {
        const char *e = strchr(entry, ']');
        if (!e || e[1] != ':' || (size_t)(e - entry - 1) >= sizeof(host)) {
            return egress_fail(why, whylen, "an IPv6 entry must be \"[address]:port\"");
        }
        memcpy(host, entry + 1, (size_t)(e - entry - 1));
        host[e - entry - 1] = '\0';
        colon = e + 1;
        v6 = 1;
    } else {
        colon = strrchr(entry, ':');
        if (!colon) {
            return egress_fail(why, whylen, "must be \"host:port\" (the port is missing)");
        }
        size_t hl = (size_t)(colon - entry);
        if (memchr(entry, ':', hl)) {
            return egress_fail(why, whylen, "an IPv6 address must be in brackets: \"[::1]:443\"");
        }
        if (hl == 0 || hl >= sizeof(host)) {
            return egress_fail(why, whylen, "the host is empty or too long");
        }
        memcpy(host, entry, hl);
        host[hl] = '\0';
    }
    /* The port: 1-5 decimal digits, 1-65535. */
    const char *ps = colon + 1;
    size_t pl = strlen(ps);
    long port = 0;
    if (pl == 0 || pl > 5 || strspn(ps, "0123456789") != pl) {
        return egress_fail(why, whylen, "the port must be a number in 1-65535");
    }
    port = strtol(ps, NULL, 10);
    if (port < 1 || port > 65535) {
        return egress_fail(why, whylen, "the port must be a number in 1-65535");
    }
    unsigned char addr[16];
    char canon[64];
    if (v6) {
        if (inet_pton(AF_INET6, host, addr) != 1 ||
            !inet_ntop(AF_INET6, addr, canon, sizeof(canon))) {
            return egress_fail(why, whylen, "not a valid IPv6 address in brackets");
        }
        snprintf(norm, n, "[%s]:%ld", canon, port);
        return 0;
    }
    size_t hl = strlen(host);
    if (strspn(host, "0123456789.") == hl) {
        /* All digits and dots: it must be a dotted-quad IPv4 address, never a name. */
        if (inet_pton(AF_INET, host, addr) != 1 ||
            !inet_ntop(AF_INET, addr, canon, sizeof(canon))) {
            return egress_fail(why, whylen, "not a valid IPv4 address");
        }
        snprintf(norm, n, "%s:%ld", canon, port);
        return 0;
    }
    if (hl > 1 && host[hl - 1] == '.') {
        host[--hl] = '\0';
    }
    if (!valid_dns_name(host, hl)) {
        return egress_fail(why, whylen,
                           "the host must be a DNS name, an IPv4 address or an [IPv6] address");
    }
    for (size_t i = 0; i < hl; i++) {
        if (host[i] >= 'A' && host[i] <= 'Z') {
            host[i] = (char)(host[i] - 'A' + 'a');
        }
    }
    snprintf(norm, n, "%s:%ld", host, port);
    return 0;
}
