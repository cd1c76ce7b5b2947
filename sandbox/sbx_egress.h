/*
 * sbx_egress.h - how the commands of a sandbox (image setup steps, POST …/exec, command
 * agents) reach the egress allow-list proxy (sandbox/egress/egress.h), as coding-agent CLIs
 * do: through proxy variables and, in an isolated sandbox, a loopback forwarder to a Unix
 * socket in its private directory; no other route.
 *
 * A sandbox's commands share one listener of the proxy, named "<sandbox name>/cmd" (the
 * agent CLIs have their own, named after the sandbox, with their model endpoint added), whose
 * refusals are reported as the sandbox's (the session's). It is opened anew with the list of
 * the moment by each sbx_egress_open, so a list edited between two commands applies to the
 * second; an empty list closes it: the sandbox then has no network at all.
 *
 * Threads: thread safe (the proxy locks its own table). Calls for one sandbox that change its
 * list at the same time leave one of the two lists in force.
 */
#ifndef SESSIOND_SBX_EGRESS_H
#define SESSIOND_SBX_EGRESS_H

#include <jansson.h>
#include <stddef.h>

struct egress;
struct sbx;

/** The route a sandbox's commands take to the proxy. Fill with sbx_egress_open, release with
 * sbx_egress_free. on == 0: no route (no proxy, no network in an isolated sandbox). */
struct sbx_egress {
    int on;
    int port;   /* the listener's loopback port (unisolated backend), else 0 */
    char *sock; /* its socket as the sandbox sees it (isolated backend), else NULL */
};

/** Open (or replace) the commands' listener of s with allow (NULL-terminated "host:port",
 * normalised as egress_entry_norm does; malformed entries are dropped with a warning, at most
 * EGRESS_LIST_MAX are kept), or close it when allow is empty or NULL. e NULL: no proxy, no
 * route. *out (zeroed by the call) gets the route. 0 or an error of egress_open. */
int sbx_egress_open(struct egress *e, struct sbx *s, const char *const *allow,
                    struct sbx_egress *out);
/** The same with allow a JSON array of "host:port" strings (NULL or empty: close). */
int sbx_egress_open_json(struct egress *e, struct sbx *s, const json_t *allow,
                         struct sbx_egress *out);
/** Close the commands' listener of s (a sandbox whose commands are done: an image build). */
void sbx_egress_close(struct egress *e, struct sbx *s);
/** Requests the commands' listener of s refused since it was opened, the last one's message
 * ("host:port refused: why") into last (may be NULL). 0 without a proxy or a listener. */
int sbx_egress_denials(struct egress *e, struct sbx *s, char *last, size_t n);
/** argv behind the route: a new NULL-terminated array of new strings (sbx_egress_strv_free).
 * Isolated: sandbox-init's forwarder in front, which picks a free loopback port and gives the
 * command the proxy variables for it. Otherwise a copy of argv. */
char **sbx_egress_argv(const struct sbx_egress *r, const char *const *argv);
/** env (NULL-terminated "NAME=value", may be NULL) plus the proxy variables the command needs
 * (the unisolated backend's; the isolated forwarder sets its own): a new array of new strings
 * (sbx_egress_strv_free). */
char **sbx_egress_env(const struct sbx_egress *r, const char *const *env);
void sbx_egress_strv_free(char **v);
/** Release r's strings (not the listener). NULL is a no-op. */
void sbx_egress_free(struct sbx_egress *r);

/** What commands behind a route may reach directly: the sandbox's own loopback (NO_PROXY). */
#define SBX_EGRESS_NO_PROXY "localhost,127.0.0.1,::1"

#endif
