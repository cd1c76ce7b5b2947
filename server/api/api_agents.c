/*
 * api_agents.c - GET /v1/agents and the agents/egress start-up glue (api_agents.h).
 *
 * Threads: start/stop on the main thread. The egress deny callback runs on an egress
 * connection thread and appends an event (a short group commit). The handler runs on HTTP
 * pool threads and only reads the immutable agents table.
 */
#include "server/api/api_agents.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"
#include "agents/agents.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/config.h"
#include "sandbox/egress/egress.h"
#include "storage/store.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* agents/bundled on the host: the one the sandbox backend binds (next to the binary). */
static char *agents_dir_host(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        return xstrdup("agents/bundled");
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
        *slash = '\0';
    }
    char *d = xasprintf("%s/../agents/bundled", exe);
    char real[PATH_MAX];
    if (realpath(d, real)) {
        free(d);
        return xstrdup(real);
    }
    free(d);
    d = xasprintf("%s/../../agents/bundled", exe); /* build/asan/sessiond */
    if (realpath(d, real)) {
        free(d);
        return xstrdup(real);
    }
    free(d);
    return xstrdup("agents/bundled");
}

/* A refused egress request becomes a sandbox.egress_denied event of the session. */
static void on_deny(void *ctx, const char *owner, const char *host, int port, const char *reason)
{
    struct app *app = ctx;
    struct sess *s = NULL;
    if (!app->store || store_session_get(app->store, owner, &s) != 0) {
        /* not a session's (an image build's): that build reads its refusals itself */
        return;
    }
    json_t *d = json_pack("{s:s, s:i, s:s}", "host", host, "port", port, "reason", reason);
    char *js = json_dumps(d, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(d);
    int rc = sess_append(s, "sandbox.egress_denied", NULL, js, NULL);
    if (rc) {
        LOG_WARN("agents: session %s: cannot record an egress refusal: %s", owner, err_str(rc));
    }
    free(js);
    sess_put(s);
}

static int egress_hook(void *ctx, const char *name, const char *const *allow, const char *unix_path,
                       int *port_out)
{
    return egress_open(ctx, name, allow, unix_path, port_out);
}

static void egress_close_hook(void *ctx, const char *name)
{
    egress_close(ctx, name);
}

/* The egress.hosts setting (JSON text, checked by config_load) as the proxy's host map: the
 * entries point into *root, which the caller decrefs after egress_start. */
static struct egress_host *host_map(const char *text, json_t **root, size_t *n)
{
    const char *k;
    json_t *v;
    *n = 0;
    *root = *text ? json_loads(text, 0, NULL) : NULL;
    struct egress_host *h = xcalloc(json_object_size(*root) + 1, sizeof(*h));
    json_object_foreach(*root, k, v)
    {
        h[*n].name = k;
        h[(*n)++].addr = json_string_value(v);
    }
    return h;
}

int agents_start(struct app *app)
{
    char msg[512] = "";
    char *dir = agents_dir_host();
    int rc = agents_load(app->cfg->agents, dir, &app->agents, msg, sizeof(msg));
    free(dir);
    if (rc) {
        LOG_ERROR("main: %s", msg);
        return rc;
    }
    json_t *hosts_json = NULL;
    struct egress_config ecfg = {.on_deny = on_deny, .ctx = app};
    struct egress_host *hosts = host_map(app->cfg->egress_hosts, &hosts_json, &ecfg.nhosts);
    ecfg.hosts = hosts;
    rc = egress_start(&ecfg, &app->egress);
    free(hosts);
    json_decref(hosts_json);
    if (rc) {
        LOG_ERROR("main: cannot start the egress proxy: %s", err_str(rc));
        agents_free(app->agents);
        app->agents = NULL;
        return rc;
    }
    agents_set_egress(app->agents, egress_hook, egress_close_hook, app->egress);
    return 0;
}

void agents_stop(struct app *app)
{
    egress_stop(app->egress);
    app->egress = NULL;
    agents_free(app->agents);
    app->agents = NULL;
}

int api_agents_list(struct req *r)
{
    struct app *app = req_app(r);
    return req_reply_json(r, 200, agents_list_json(app->agents, app->cfg->agent));
}
