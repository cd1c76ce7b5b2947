/*
 * egress_policy.c - what a sandbox may reach through the egress proxy (see egress.h): the
 * address rules (loopback, private, link-local... are refused unless named as a literal), the
 * parsing of "host:port" pairs and allow-list entries, and the upstream connect that applies
 * them to one request.
 *
 * Threads: pure functions, except open_upstream, which runs on a connection thread.
 *
 * Invariants: a connection is forwarded only to an address that came out of its own
 * resolution of an allowed host:port pair, and never to a restricted address unless the pair
 * names that address literally.
 */
#include "sandbox/egress/egress_int.h"

#include "common/err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

int egri_is_literal(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* Split "host:port" / "[v6]:port" into a normalised host and a port. */
int egri_split_hostport(const char *s, size_t n, char *host, int *port)
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
int egri_split_authority(const char *a, size_t n, char *host, int *port)
{
    const char *after = a; /* where a ":port" may start */
    if (n > 0 && a[0] == '[') {
        after = memchr(a, ']', n);
        if (!after) {
            return ERR_INVALID;
        }
    }
    if (memchr(after, ':', n - (size_t)(after - a))) {
        return egri_split_hostport(a, n, host, port);
    }
    *port = 80;
    return norm_host(a, n, host);
}

/* ---- allow-list entries ---- */

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

/* ---- the operator's host map ---- */

int egress_host_check(const char *name, const char *addr, char *why, size_t whylen)
{
    char norm[EGRESS_ENTRY_MAX], entry[300];
    unsigned char bin[16];
    if (!name || !addr || strlen(name) > 254) {
        return egress_fail(why, whylen, "the name must be a DNS name");
    }
    snprintf(entry, sizeof(entry), "%s:1", name);
    if (name[0] == '[' || strspn(name, "0123456789.") == strlen(name)) {
        return egress_fail(why, whylen, "the name must be a DNS name, not an address");
    }
    if (egress_entry_norm(entry, norm, sizeof(norm), NULL, 0) != 0) {
        return egress_fail(why, whylen, "the name must be a DNS name");
    }
    if (inet_pton(AF_INET, addr, bin) != 1 && inet_pton(AF_INET6, addr, bin) != 1) {
        return egress_fail(why, whylen,
                           "the address must be an IPv4 or IPv6 address (\"10.0.0.5\", "
                           "\"fd00::5\")");
    }
    return 0;
}

int egri_hostmap_norm(const char *name, const char *addr, struct hostmap *out)
{
    unsigned char bin[16];
    int v4 = inet_pton(AF_INET, addr, bin) == 1;
    if (!v4 && inet_pton(AF_INET6, addr, bin) != 1) {
        return ERR_INVALID;
    }
    if (!inet_ntop(v4 ? AF_INET : AF_INET6, bin, out->addr, sizeof(out->addr))) {
        return ERR_INVALID;
    }
    return norm_host(name, strlen(name), out->host);
}

/* The mapped address of host (normalised) in the operator's host map, or NULL. */
static const char *mapped_addr(const struct egress *e, const char *host)
{
    for (size_t i = 0; i < e->nhosts; i++) {
        if (strcmp(e->hosts[i].host, host) == 0) {
            return e->hosts[i].addr;
        }
    }
    return NULL;
}

/* ---- the upstream connection ---- */

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

/* Check the policy, resolve and connect j->c->ufd. Replies (403/502) and returns non-zero
 * when the request must not go on. */
int egri_open_upstream(struct job *j, const char *host, int port)
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
        egri_deny(j, host, port, "not on this sandbox's egress allow-list");
        return ERR_FORBIDDEN;
    }
    /* Resolve ourselves; connect only to addresses that pass the address rules. A name of the
     * operator's host map is not looked up: it means its mapped address and only that one,
     * which the operator vouched for, so the address rules do not apply to it. */
    const char *mapped = a->literal ? NULL : mapped_addr(j->e, host);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    char pstr[8];
    snprintf(pstr, sizeof(pstr), "%d", port);
    if (a->literal || mapped) {
        hints.ai_flags = AI_NUMERICHOST;
    }
    if (getaddrinfo(mapped ? mapped : host, pstr, &hints, &res) != 0 || !res) {
        egri_reply(j->c->cfd, 502, "Bad Gateway", "sessiond egress: cannot resolve host");
        egri_count(j->e, &j->e->st.failed, 1);
        return ERR_IO;
    }
    int tried = 0, restricted = 0;
    for (struct addrinfo *ai = res; ai && j->c->ufd < 0; ai = ai->ai_next) {
        if (egress_addr_restricted(ai->ai_addr) && !a->literal && !mapped) {
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
            egri_deny(j, host, port,
                      "resolves to a private, loopback or link-local address (list it as an IP "
                      "literal, or have an admin map the name in egress.hosts)");
            return ERR_FORBIDDEN;
        }
        egri_reply(j->c->cfd, 502, "Bad Gateway", "sessiond egress: cannot connect upstream");
        egri_count(j->e, &j->e->st.failed, 1);
        return ERR_IO;
    }
    egri_count(j->e, &j->e->st.allowed, 1);
    return 0;
}
