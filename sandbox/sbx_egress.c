/*
 * sbx_egress.c - the route of a sandbox's commands to the egress proxy (sbx_egress.h).
 *
 * Threads: any; no state of its own (the listener table is the proxy's, under its lock).
 *
 * Invariant: a command gets proxy variables or the forwarder only when its sandbox's commands'
 * listener was just opened with a non-empty list; with an empty list the listener and its
 * socket file are gone, so nothing in the sandbox can reach the proxy through it.
 */
#include "sandbox/sbx_egress.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"
#include "sandbox/egress/egress.h"
#include "sandbox/sbx_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INIT_INSIDE "/run/sessiond-init" /* where sbx_local.c binds sandbox-init */
#define SOCK_NAME   "egress-cmd.sock"    /* in the private dir; the agents' is egress.sock */

static char *listener_name(const struct sbx *s)
{
    return xasprintf("%s/cmd", s->name);
}

static int isolated(const struct sbx *s)
{
    return strcmp(sbx_backend_name(s->b), "local") == 0;
}

/* allow normalised, malformed entries dropped, at most EGRESS_LIST_MAX: a new array of n
 * entries pointing into norm (n + 1 rows). */
static const char **checked_list(const struct sbx *s, const char *const *allow,
                                 char (*norm)[EGRESS_ENTRY_MAX], size_t *n)
{
    size_t na = 0;
    while (allow && allow[na] && na < EGRESS_LIST_MAX) {
        na++;
    }
    const char **v = xcalloc(na + 1, sizeof(*v));
    *n = 0;
    for (size_t i = 0; i < na; i++) {
        if (egress_entry_norm(allow[i], norm[i], EGRESS_ENTRY_MAX, NULL, 0) == 0) {
            v[(*n)++] = norm[i];
        } else {
            LOG_WARN("sandbox: %s: ignoring a malformed egress entry", s->name);
        }
    }
    return v;
}

int sbx_egress_open(struct egress *e, struct sbx *s, const char *const *allow,
                    struct sbx_egress *out)
{
    char *name = NULL, *sock_host = NULL;
    const char **list = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    memset(out, 0, sizeof(*out));
    if (!e) {
        return 0;
    }
    while (allow && allow[cap] && cap < EGRESS_LIST_MAX) {
        cap++;
    }
    char(*norm)[EGRESS_ENTRY_MAX] = xcalloc(cap + 1, sizeof(*norm));
    name = listener_name(s);
    list = checked_list(s, allow, norm, &n);
    if (n == 0) {
        egress_close(e, name); /* no list, no network (ERR_NOT_FOUND if it was not open) */
        goto out;
    }
    if (isolated(s)) {
        sock_host = xasprintf("%s/" SOCK_NAME, s->priv_host);
    }
    rc = egress_open_owned(e, name, s->name, list, sock_host, &out->port);
    if (rc) {
        LOG_WARN("sandbox: %s: cannot open its commands' egress listener: %s", s->name,
                 err_str(rc));
        goto out;
    }
    out->on = 1;
    if (sock_host) {
        out->sock = xasprintf("%s/" SOCK_NAME, s->priv_inside);
        out->port = 0;
    }
out:
    free(norm);
    free(list);
    free(name);
    free(sock_host);
    return rc;
}

int sbx_egress_open_json(struct egress *e, struct sbx *s, const json_t *allow,
                         struct sbx_egress *out)
{
    size_t n = json_array_size(allow), k = 0;
    const char **v = xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        const char *str = json_string_value(json_array_get(allow, i));
        if (str) {
            v[k++] = str;
        }
    }
    int rc = sbx_egress_open(e, s, v, out);
    free(v);
    return rc;
}

void sbx_egress_close(struct egress *e, struct sbx *s)
{
    if (!e || !s) {
        return;
    }
    char *name = listener_name(s);
    egress_close(e, name);
    free(name);
}

int sbx_egress_denials(struct egress *e, struct sbx *s, char *last, size_t n)
{
    if (last && n) {
        last[0] = '\0';
    }
    if (!e || !s) {
        return 0;
    }
    char *name = listener_name(s);
    int count = egress_denials(e, name, last, n);
    free(name);
    return count;
}

static size_t strv_len(const char *const *v)
{
    size_t n = 0;
    while (v && v[n]) {
        n++;
    }
    return n;
}

char **sbx_egress_argv(const struct sbx_egress *r, const char *const *argv)
{
    size_t n = strv_len(argv), k = 0;
    char **v = xcalloc(n + 6, sizeof(*v));
    if (r && r->on && r->sock) {
        /* sandbox-init's forwarder mode, port 0: a free port of the sandbox's loopback,
         * HTTP(S)_PROXY set to it for the command it then execs (sandbox/init/egress_fwd.c). */
        v[k++] = xstrdup(INIT_INSIDE);
        v[k++] = xstrdup("--egress-forward");
        v[k++] = xstrdup("0");
        v[k++] = xstrdup(r->sock);
        v[k++] = xstrdup("--");
    }
    for (size_t i = 0; i < n; i++) {
        v[k++] = xstrdup(argv[i]);
    }
    return v;
}

char **sbx_egress_env(const struct sbx_egress *r, const char *const *env)
{
    size_t n = strv_len(env), k = 0;
    char **v = xcalloc(n + 7, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[k++] = xstrdup(env[i]);
    }
    if (r && r->on && !r->sock && r->port > 0) {
        static const char *const names[] = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                            "https_proxy"};
        for (size_t i = 0; i < 4; i++) {
            v[k++] = xasprintf("%s=http://127.0.0.1:%d", names[i], r->port);
        }
        v[k++] = xstrdup("NO_PROXY=" SBX_EGRESS_NO_PROXY);
        v[k++] = xstrdup("no_proxy=" SBX_EGRESS_NO_PROXY);
    }
    return v;
}

void sbx_egress_strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++) {
        explicit_bzero(v[i], strlen(v[i])); /* an env may hold the session's secrets */
        free(v[i]);
    }
    free(v);
}

void sbx_egress_free(struct sbx_egress *r)
{
    if (!r) {
        return;
    }
    free(r->sock);
    r->sock = NULL;
    r->on = 0;
}
