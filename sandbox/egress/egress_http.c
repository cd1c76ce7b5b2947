/*
 * egress_http.c - plain-http requests through the egress proxy (see egress.h): the request
 * head is rewritten to origin form without hop-by-hop and proxy headers, sent with
 * "Connection: close" (so the client cannot reuse the upstream connection for another host),
 * its body forwarded up to its end (Content-Length or chunked), and the response relayed
 * with its own framing so the client connection can carry the next request.
 *
 * Threads: runs on the connection's own thread.
 */
#include "sandbox/egress/egress_int.h"

#include "common/err.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

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
    if (have && egri_write_all(j->c->ufd, b->data, have)) {
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
        if (r <= 0 || egri_write_all(j->c->ufd, tmp, (size_t)r)) {
            return ERR_IO;
        }
        egri_count(j->e, &j->e->st.bytes, (uint64_t)r);
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
    if (take && egri_write_all(j->c->ufd, b->data, take)) {
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
        if (egri_write_all(j->c->ufd, tmp, take)) {
            return ERR_IO;
        }
        egri_count(j->e, &j->e->st.bytes, take);
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
    rc = egri_write_all(j->c->cfd, out.data, out.len);
    egri_count(j->e, &j->e->st.bytes, out.len);
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
        egri_count(j->e, &j->e->st.bytes, (uint64_t)take);
        rc = egri_write_all(j->c->cfd, tmp, take);
    }
out:
    buf_free(&h);
    return rc;
}

/* Plain http: origin-form request line, hop-by-hop and proxy headers dropped, Connection:
 * close to the upstream (one request per upstream connection). */
int egri_http_forward(struct job *j, struct buf *b, size_t head_len, const struct req_line *rl,
                      int *keep)
{
    char v[64];
    uint64_t body = 0;
    int rc;
    *keep = 0;
    int client_close = header_value(b->data, head_len, "connection", v, sizeof(v)) == 0 &&
                       strcasestr(v, "close") != NULL;
    int chunked = header_value(b->data, head_len, "transfer-encoding", v, sizeof(v)) == 0;
    if (!chunked && header_value(b->data, head_len, "content-length", v, sizeof(v)) == 0) {
        char *end;
        unsigned long long cl = strtoull(v, &end, 10);
        if (*end || end == v) {
            egri_reply(j->c->cfd, 400, "Bad Request", "sessiond egress: bad Content-Length");
            return ERR_INVALID;
        }
        body = cl;
    }
    struct buf h;
    buf_init(&h, 0);
    buf_append(&h, b->data, (size_t)(rl->sp1 - b->data) + 1);
    buf_append(&h, rl->path, rl->plen);
    buf_append(&h, rl->sp2, (size_t)(rl->line_end - rl->sp2) + 2);
    const char *p = rl->line_end + 2;
    const char *hend = b->data + head_len - 2;
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
    rc = egri_write_all(j->c->ufd, h.data, h.len);
    buf_free(&h);
    buf_consume(b, head_len);
    if (rc) {
        return rc;
    }
    rc = chunked ? forward_chunked(j, b) : forward_body(j, b, body);
    if (rc) {
        return rc;
    }
    rc = relay_response(j, keep);
    if (rc) {
        return rc;
    }
    if (client_close) {
        *keep = 0;
    }
    return 0;
}
