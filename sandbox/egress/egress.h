/*
 * egress.h - the egress allow-list: an HTTP forward proxy run by sessiond for its sandboxes.
 *
 * A sandbox has no network. What it may reach (its agent's model endpoint, its repository's
 * egress list) it reaches through this proxy: CONNECT host:port for https, absolute-URI
 * requests (GET http://host:port/path) for plain http. Each sandbox gets its own listener —
 * a Unix socket in its private directory (bound into the sandbox, where a loopback forwarder
 * run by sandbox-init makes it a TCP proxy address), or a loopback TCP port for the
 * unisolated process backend — with its own allow-list of exact "host:port" pairs.
 *
 * The proxy resolves names itself and connects to the address it resolved (no rebinding
 * between check and use). It refuses loopback, private, link-local (cloud metadata),
 * CGNAT, multicast and reserved addresses unless the allow-list names that address as an IP
 * literal ("127.0.0.1:8080"): a name that resolves to such an address is refused. The one
 * exception is the operator's host map (egress_config.hosts, the `egress.hosts` setting): a
 * name in it is not looked up but connects to its mapped address, restricted or not; the map
 * applies to exactly that name (no subdomain, no other name resolving to the address). Every
 * refusal answers 403 and calls on_deny (the server records a sandbox.egress_denied event).
 *
 * Threads: one acceptor thread; one short-lived thread per proxied connection. All functions
 * are thread safe. on_deny runs on a connection thread and may block briefly (a commit).
 */
#ifndef SESSIOND_EGRESS_H
#define SESSIOND_EGRESS_H

#include <stddef.h>
#include <stdint.h>

struct egress;

/** A refused request: owner is the listener's (the session id), reason a short sentence. */
typedef void (*egress_deny_fn)(void *ctx, const char *owner, const char *host, int port,
                               const char *reason);

/** One entry of the operator's host map: a DNS name and the IP literal it connects to. */
struct egress_host {
    const char *name; /* "registry.internal" (any case, one trailing dot allowed) */
    const char *addr; /* "10.0.0.5" or "fd00::5" (no brackets) */
};

struct egress_config {
    int connect_timeout_ms; /* 0 = 10000 */
    int idle_timeout_ms;    /* a tunnel with no traffic this long is closed; 0 = 600000 */
    int head_timeout_ms;    /* time to send the request head; 0 = 10000 */
    egress_deny_fn on_deny; /* may be NULL */
    void *ctx;
    /* The host map (borrowed for egress_start, which copies it): each name connects to its
     * address, even a restricted one, when an allow-list lists the name. */
    const struct egress_host *hosts;
    size_t nhosts;
};

/** Start the proxy (no listener yet). ERR_INVALID (logged) for a bad host map entry.
 * *out: egress_stop(). */
int egress_start(const struct egress_config *cfg, struct egress **out);
/** Check one host map entry: name a DNS name (as in an egress entry), addr an IPv4 or IPv6
 * literal. 0 or ERR_INVALID; why (may be NULL) gets a short reason. */
int egress_host_check(const char *name, const char *addr, char *why, size_t whylen);
/** Close every listener and connection, wait for the connection threads. NULL is a no-op. */
void egress_stop(struct egress *e);

/** Open (or replace) the listener of name with an allow-list of NULL-terminated "host:port"
 * entries (host a name, an IPv4 literal or a [IPv6] literal; case-insensitive). unix_path
 * non-NULL: a Unix socket at that path (an old file there is replaced; mode 0666 so the
 * sandbox's user can connect); NULL: a TCP listener on 127.0.0.1, its port in *port_out.
 * A listener of name already on the same endpoint keeps its socket (and port) and gets the
 * new list for the connections it accepts from now on.
 * ERR_INVALID for a malformed entry, ERR_IO if the socket cannot be bound. */
int egress_open(struct egress *e, const char *name, const char *const *allow, const char *unix_path,
                int *port_out);
/** The same, with refusals reported to on_deny as owner's instead of name's: one owner (a
 * session) may have several listeners (its coding agent's, its commands'). */
int egress_open_owned(struct egress *e, const char *name, const char *owner,
                      const char *const *allow, const char *unix_path, int *port_out);
/** Close the listener of name (its socket file is removed). Open tunnels finish on their
 * own. ERR_NOT_FOUND if there is none. */
int egress_close(struct egress *e, const char *name);
/** How many requests the listener of name refused since it was opened (0 if there is no such
 * listener); the last refusal's message ("host:port refused: why") into last (may be NULL). */
int egress_denials(struct egress *e, const char *name, char *last, size_t n);

struct egress_stats {
    uint64_t connections; /* accepted */
    uint64_t allowed;     /* requests forwarded */
    uint64_t denied;      /* requests refused by policy */
    uint64_t failed;      /* bad requests, unresolvable names, connect failures */
    uint64_t bytes;       /* relayed, both directions */
    int active;           /* connections open now */
};
void egress_get_stats(struct egress *e, struct egress_stats *out);

/** 1 if the address (struct sockaddr_in / sockaddr_in6) is one the proxy refuses unless
 * named explicitly (loopback, private, link-local, CGNAT, multicast, reserved…). */
int egress_addr_restricted(const void *sockaddr);

/** At most this many entries in a repository's egress list (the proxy holds 256 per sandbox). */
#define EGRESS_LIST_MAX 64
/** Room for one normalised egress entry ("[v6]:port" or a 253-byte name + ":65535"). */
#define EGRESS_ENTRY_MAX 272
/** Check one egress allow-list entry "host:port": host a DNS name (labels of letters, digits
 * and '-', not starting or ending with '-', 1-63 bytes each, 253 in all; one trailing dot
 * allowed), an IPv4 literal or a [IPv6] literal; port a decimal in 1-65535. Writes the normal
 * form (lower case, no trailing dot, canonical IP text, decimal port) to norm (n >=
 * EGRESS_ENTRY_MAX). 0 or ERR_INVALID; why (may be NULL) gets a short reason. */
int egress_entry_norm(const char *entry, char *norm, size_t n, char *why, size_t whylen);

#endif
