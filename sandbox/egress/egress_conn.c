/*
 * egress_conn.c - one client connection of the egress proxy (see egress.h): its request heads,
 * one after the other; a CONNECT becomes a tunnel relayed both ways, an absolute-URI request
 * goes to egress_http.c; refusals and errors are answered here.
 *
 * Threads: runs on the connection's own thread; e->lock only for the counters and the
 * connection's descriptors (egress_stop shuts them down from another thread).
 */
#include "sandbox/egress/egress_int.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

void egri_count(struct egress *e, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&e->lock);
    *field += n;
    pthread_mutex_unlock(&e->lock);
}

int egri_write_all(int fd, const char *p, size_t n)
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

void egri_reply(int fd, int status, const char *text, const char *msg)
{
    char b[1024];
    int n = snprintf(b, sizeof(b),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "X-Sessiond-Egress: %s\r\nConnection: close\r\n\r\n%s\n",
                     status, text, strlen(msg) + 1, status == 403 ? "denied" : "error", msg);
    if (n > 0) {
        egri_write_all(fd, b, (size_t)n < sizeof(b) ? (size_t)n : sizeof(b) - 1);
    }
}

void egri_deny(struct job *j, const char *host, int port, const char *reason)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "sessiond egress: %s:%d refused: %s", host, port, reason);
    egri_reply(j->c->cfd, 403, "Forbidden", msg);
    pthread_mutex_lock(&j->e->lock);
    j->e->st.denied++;
    for (size_t i = 0; i < j->e->nls; i++) {
        struct listener *l = j->e->ls[i];
        if (strcmp(l->name, j->name) == 0) {
            l->denials++;
            snprintf(l->last, sizeof(l->last), "%s:%d refused: %s", host, port, reason);
            break;
        }
    }
    pthread_mutex_unlock(&j->e->lock);
    LOG_INFO("egress: %s: refused %s:%d: %s", j->name, host, port, reason);
    if (j->e->cfg.on_deny) {
        j->e->cfg.on_deny(j->e->cfg.ctx, j->owner, host, port, reason);
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
            egri_count(j->e, &j->e->st.bytes, (uint64_t)n);
            if (egri_write_all(fds[1 - i], b, (size_t)n)) {
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

/* Parse the request line of the head in b[0..head_len) and the destination it names:
 * CONNECT host:port, or an absolute http:// URI (no userinfo). Replies 400 and returns
 * ERR_INVALID when it is neither. */
static int parse_request(struct job *j, const struct buf *b, size_t head_len, struct req_line *rl)
{
    int rc;
    /* Request line: METHOD SP TARGET SP HTTP/1.x */
    char *line_end = memmem(b->data, head_len, "\r\n", 2);
    char *sp1 = memchr(b->data, ' ', (size_t)(line_end - b->data));
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        egri_reply(j->c->cfd, 400, "Bad Request", "sessiond egress: malformed request line");
        egri_count(j->e, &j->e->st.failed, 1);
        return ERR_INVALID;
    }
    const char *target = sp1 + 1;
    size_t tlen = (size_t)(sp2 - target);
    rl->sp1 = sp1;
    rl->sp2 = sp2;
    rl->line_end = line_end;
    rl->path = "/";
    rl->plen = 1;
    rl->port = 0;
    rl->is_connect = (size_t)(sp1 - b->data) == 7 && memcmp(b->data, "CONNECT", 7) == 0;
    if (rl->is_connect) {
        rc = egri_split_hostport(target, tlen, rl->host, &rl->port);
    } else if (tlen > 7 && strncasecmp(target, "http://", 7) == 0) {
        const char *auth = target + 7;
        const char *slash = memchr(auth, '/', tlen - 7);
        size_t alen = slash ? (size_t)(slash - auth) : tlen - 7;
        if (slash) {
            rl->path = slash;
            rl->plen = tlen - (size_t)(slash - target);
        }
        rc = memchr(auth, '@', alen) ? ERR_INVALID
                                     : egri_split_authority(auth, alen, rl->host, &rl->port);
    } else {
        rc = ERR_INVALID;
    }
    if (rc) {
        egri_reply(j->c->cfd, 400, "Bad Request",
                   "sessiond egress: use CONNECT host:port or an absolute http:// URI");
        egri_count(j->e, &j->e->st.failed, 1);
        return ERR_INVALID;
    }
    return 0;
}

/* Serve the requests of one client connection: a CONNECT tunnel, or plain-http requests one
 * after the other (pipelined ones too), each checked and sent on its own upstream
 * connection with Connection: close. */
void egri_serve(struct job *j)
{
    struct buf b;
    buf_init(&b, HEAD_MAX + RELAY_BUF);
    for (int nreq = 0;; nreq++) {
        size_t head_len = 0;
        struct req_line rl;
        int rc = read_head(j, &b, &head_len);
        if (rc) {
            if (rc == ERR_TOO_LARGE) {
                egri_reply(j->c->cfd, 431, "Request Header Fields Too Large",
                           "request head too large");
            }
            if (rc == ERR_TOO_LARGE || b.len > 0 || nreq == 0) {
                egri_count(j->e, &j->e->st.failed, 1);
            }
            break;
        }
        if (parse_request(j, &b, head_len, &rl) || egri_open_upstream(j, rl.host, rl.port)) {
            break;
        }
        if (rl.is_connect) {
            static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
            if (egri_write_all(j->c->cfd, ok, sizeof(ok) - 1)) {
                break;
            }
            /* Bytes the client sent after the head (a TLS ClientHello). */
            if (b.len > head_len &&
                egri_write_all(j->c->ufd, b.data + head_len, b.len - head_len)) {
                break;
            }
            relay(j);
            break;
        }
        int keep = 0;
        if (egri_http_forward(j, &b, head_len, &rl, &keep) || !keep) {
            break;
        }
        close_upstream(j);
    }
    buf_free(&b);
}
