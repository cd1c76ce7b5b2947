/*
 * egress_int.h - internals shared by the files of the egress proxy; never included outside
 * sandbox/egress/.
 *
 *   egress.c         the proxy's life: listeners, the acceptor thread, connection threads,
 *                    start/stop and the counters
 *   egress_policy.c  what a sandbox may reach: the address rules, host:port parsing, the
 *                    allow-list entries, and the upstream connect that applies them
 *   egress_conn.c    one client connection: its request heads, CONNECT tunnels, the replies
 *   egress_http.c    plain-http requests: header rewriting, body framing, the response relay
 *
 * Threads and locking are those of egress.c: e->lock guards the listener table, the
 * connection list and the counters; a struct job belongs to its connection thread.
 */
#ifndef SESSIOND_EGRESS_INT_H
#define SESSIOND_EGRESS_INT_H

#include "sandbox/egress/egress.h"

#include "common/buf.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

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
    char *owner;     /* given to on_deny */
    char *unix_path; /* NULL for TCP */
    int fd;
    int port; /* TCP: the bound port */
    struct allow *allow;
    size_t nallow;
    int denials;               /* refused requests (egress_denials) */
    char last[HOST_MAX + 128]; /* the last refusal */
};

/* The operator's host map entry, normalised: host as struct allow's, addr an IP literal. */
struct hostmap {
    char host[HOST_MAX];
    char addr[64];
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
    struct hostmap *hosts; /* fixed after egress_start */
    size_t nhosts;
};

/* One accepted connection, owned by its thread: the policy was copied from its listener. */
struct job {
    struct egress *e;
    struct conn *c;
    char name[128];  /* the listener's */
    char owner[128]; /* its owner's (on_deny) */
    struct allow *allow;
    size_t nallow;
};

/* The request line of a head in a buffer (METHOD SP TARGET SP HTTP/1.x CRLF) and the
 * destination its target names. The pointers point into the buffer. */
struct req_line {
    const char *sp1, *sp2; /* the spaces after the method and after the target */
    const char *line_end;  /* its CRLF */
    const char *path;      /* the origin-form target of a plain-http request ("/" if none) */
    size_t plen;
    int is_connect;
    char host[HOST_MAX]; /* normalised (egri_split_hostport) */
    int port;
};

/* ---- egress_policy.c ---- */

/** Split "host:port" / "[v6]:port" into a normalised host (HOST_MAX) and a port. */
int egri_split_hostport(const char *s, size_t n, char *host, int *port);
/** An absolute URI's authority: host | host:port | [v6] | [v6]:port; port 80 by default. */
int egri_split_authority(const char *a, size_t n, char *host, int *port);
/** 1 if host is an IPv4 or IPv6 literal. */
int egri_is_literal(const char *host);
/** Normalise a checked host map entry (egress_host_check) into out. 0 or ERR_INVALID. */
int egri_hostmap_norm(const char *name, const char *addr, struct hostmap *out);
/** Check the policy, resolve and connect j->c->ufd. Replies (403/502) and returns non-zero
 * when the request must not go on. */
int egri_open_upstream(struct job *j, const char *host, int port);

/* ---- egress_conn.c ---- */

/** Serve the requests of one client connection until it is done (j stays the caller's). */
void egri_serve(struct job *j);
/** Add n to a counter of e->st under e->lock. */
void egri_count(struct egress *e, uint64_t *field, uint64_t n);
/** Send all of p[0..n) on a socket (waiting up to 10 s while it is full); 0 or ERR_IO. */
int egri_write_all(int fd, const char *p, size_t n);
/** Answer the client with a short text/plain status and Connection: close. */
void egri_reply(int fd, int status, const char *text, const char *msg);
/** Refuse host:port: answer 403, count it, log it and call on_deny. */
void egri_deny(struct job *j, const char *host, int port, const char *reason);

/* ---- egress_http.c ---- */

/** Forward the plain-http request whose head is b->data[0..head_len) (rl its request line) to
 * the open upstream, its body after it, then relay the response. *keep = 1 if the client's
 * connection can carry its next request (b then holds its first bytes). 0 or an error. */
int egri_http_forward(struct job *j, struct buf *b, size_t head_len, const struct req_line *rl,
                      int *keep);

#endif
