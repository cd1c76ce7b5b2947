/*
 * main.c - sessiond: configuration, start-up of every subsystem in dependency order, signal
 * handling and a graceful shutdown in the reverse order.
 *
 * Thread context: the main thread builds struct app, starts the subsystems (which start their
 * own threads), then waits in sigwait() for SIGINT/SIGTERM. SIGINT/SIGTERM/SIGHUP are blocked
 * in every thread (the mask is inherited), so only this wait sees them.
 *
 * Adding a subsystem: one start line in the "start" section (after what it needs) and one stop
 * line in the "stop" section (before what it needs), plus its pointer in struct app.
 */
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/api/api_agents.h"
#include "server/api/api_sandbox.h"
#include "server/api/api_repos.h"
#include "server/app.h"
#include "server/metrics.h"
#include "server/ratelimit.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/http.h"
#include "server/ws/hub.h"
#include "server/slack/slack.h"
#include "server/static.h"
#include "server/ws/ws_guard.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Raise the soft fd limit to the hard limit; returns the resulting soft limit. */
static rlim_t raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 1024;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max == RLIM_INFINITY ? 1048576 : rl.rlim_max;
        struct rlimit nr = {want, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nr) == 0) {
            rl.rlim_cur = want;
        }
    }
    return rl.rlim_cur == RLIM_INFINITY ? 1048576 : rl.rlim_cur;
}

/* Connections MHD may hold: the fd limit minus ~3 fds per open session file and a reserve
 * for the registry, logs, sandboxes' pipes and WebSocket sockets being handed over. */
static unsigned connection_limit(rlim_t nofile, const struct config *cfg)
{
    int64_t reserve = 3 * cfg->max_open_sessions + 256;
    int64_t lim = (int64_t)nofile - reserve;
    if (lim > (int64_t)nofile / 2 + 1) {
        lim = (int64_t)nofile / 2 + 1; /* leave half for WebSocket clients and sandboxes */
    }
    if (lim < 64) {
        lim = 64;
    }
    return (unsigned)lim;
}

static int write_port_file(const char *path, int port)
{
    char *tmp = xasprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "we");
    int rc = ERR_IO;
    if (f) {
        int ok = fprintf(f, "%d\n", port) > 0;
        ok = (fclose(f) == 0) && ok;
        if (ok && rename(tmp, path) == 0) {
            rc = 0;
        }
    }
    if (rc) {
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

/* The data dir holds the registry (token hashes), the session files and the master key: an
 * existing one made world-readable by hand or by an image (mkdir /data is 0755) is tightened,
 * and said so, rather than trusted. */
static void tighten_data_dir(const char *dir)
{
    unsigned was = 0;
    if (util_dir_private(dir, &was) != 0) {
        LOG_WARN("main: cannot make data_dir %s private (mode %04o): %s", dir, was,
                 strerror(errno));
    } else if (was & 07067) {
        LOG_WARN("main: data_dir %s was mode %04o, now %04o (private to this user)", dir, was,
                 was & 0710);
    }
}

/* Who hears of each committed event: the WebSocket hub always, the Slack integration once it
 * exists (it starts after the store, whose runner may already commit events; hence atomic). */
struct event_fanout {
    struct hub *hub;
    struct slack *_Atomic slack;
};

/* The store's on_event observer: called under the session's lock, so each target only
 * queues. */
static void fanout_event(void *ctx, const char *session_id, int64_t seq, const char *json,
                         size_t len)
{
    struct event_fanout *f = ctx;
    hub_on_event(f->hub, session_id, seq, json, len);
    struct slack *sl = atomic_load_explicit(&f->slack, memory_order_acquire);
    if (sl) {
        slack_on_event(sl, session_id, seq, json, len);
    }
}

int main(int argc, char **argv)
{
    struct config *cfg = NULL;
    struct store *st = NULL;
    struct http *http = NULL;
    struct hub *hub = NULL;
    struct event_fanout fan = {0};
    struct app app;
    char msg[512];
    int rc, exit_code = 1;
    sigset_t sigs;

    memset(&app, 0, sizeof(app));
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            config_usage(stdout, argv[0]);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("sessiond %s\n", SESSIOND_VERSION);
            return 0;
        }
    }
    rc = config_load(argc, argv, NULL, &cfg, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "sessiond: %s\n", msg);
        return 2;
    }
    int level;
    if (log_parse_level(cfg->log_level, &level) == 0) {
        log_set_level(level);
    }
    app.cfg = cfg;
    app.metrics = metrics_new();
    rl_new(cfg->max_sessions_per_minute, &app.session_rate); /* the config checked the range */

    /* Signals: block them here so every thread started below inherits the mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    rlim_t nofile = raise_nofile();
    {
        char *dump = config_dump(cfg);
        LOG_INFO("sessiond %s starting; fd limit %llu; config %s", SESSIOND_VERSION,
                 (unsigned long long)nofile, dump);
        free(dump);
    }

    /* ---- start, in dependency order ---- */
    if (util_mkdir_p(cfg->data_dir, 0700) != 0) {
        LOG_ERROR("main: cannot create data_dir %s", cfg->data_dir);
        goto out;
    }
    tighten_data_dir(cfg->data_dir);
    struct hub_config hcfg = {.max_frame = (size_t)cfg->ws_max_frame,
                              .send_queue_max = (size_t)cfg->ws_send_queue_max,
                              .ping_secs = (int)cfg->ws_ping_interval};
    hub_new(&hcfg, &hub);
    fan.hub = hub;
    struct store_config scfg = {
        .data_dir = cfg->data_dir,
        .durability_full = strcmp(cfg->durability, "full") == 0,
        .max_open = (int)cfg->max_open_sessions,
        .cache_kib = (int)cfg->session_cache_kib,
        .no_spool = !cfg->park_comments,
        .on_event = fanout_event, /* the WebSocket hub and Slack hear committed events */
        .on_event_ctx = &fan,
    };
    rc = store_open(&scfg, &st);
    if (rc) {
        if (rc != ERR_CORRUPT) { /* the store said which file and what to do, in one line */
            LOG_ERROR("main: cannot open the store in %s: %s", cfg->data_dir, err_str(rc));
        }
        goto out;
    }
    app.store = st;
    app.reg = store_registry(st);
    rc = auth_bootstrap_admin(app.reg, cfg);
    if (rc) {
        goto out;
    }

    /* (other subsystems start here: hub, runner, repos, slack, ...) */
    if (agents_start(&app) != 0) { /* named agents + egress proxy */
        goto out;
    }
    if (sandbox_start(&app) != 0) { /* output pump and the sandbox backend */
        goto out;
    }
    if (api_repos_start(&app) != 0) { /* repos, images, warm pools, master key */
        goto out;
    }
    if (sandbox_runner_start(&app) != 0) { /* the prompt runner, on the repository layer */
        goto out;
    }
    app.hub = hub;
    if (hub_start(hub, &app) != 0) {
        goto out;
    }
    if (cfg->ws_require_mask && wsg_new(&app.wsg) != 0) {
        goto out;
    }

    static_set_config(cfg); /* the web UI's CSP (frame-ancestors: extension origins) */
    {
        struct slack_config slc; /* Slack: answers 503 until a signing secret is set */
        slack_config_from(&slc, cfg);
        slack_new(&slc, &app, &app.slack);
        atomic_store_explicit(&fan.slack, app.slack, memory_order_release);
        json_decref(slc.repos);
    }
    rc = http_start(&app, connection_limit(nofile, cfg), &http);
    if (rc) {
        goto out;
    }
    if (*cfg->port_file && write_port_file(cfg->port_file, http_port(http)) != 0) {
        LOG_ERROR("main: cannot write the port file %s", cfg->port_file);
        goto out;
    }
    slack_set_local_address(app.slack, cfg->listen, http_port(http));
    LOG_INFO("main: listening on %s (port %d), data in %s", cfg->listen, http_port(http),
             cfg->data_dir);

    /* ---- run until SIGINT/SIGTERM ---- */
    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0) {
            continue;
        }
        if (sig == SIGHUP) {
            LOG_INFO("main: SIGHUP ignored (restart to apply configuration changes)");
            continue;
        }
        LOG_INFO("main: signal %d, shutting down", sig);
        break;
    }
    exit_code = 0;

out:
    /* ---- stop, in reverse order ---- */
    app.shutting_down = 1;
    http_stop(http, (int)cfg->shutdown_grace); /* stop accepting, finish requests in flight */
    /* (other subsystems stop here, before the store) */
    api_repos_stop(&app);  /* its threads and warm pool, before the sandboxes its builds use */
    sandbox_stop(&app);    /* grace for running prompts, then cancel; sandboxes down */
    api_repos_free(&app);  /* after the runner, which holds it */
    agents_stop(&app);     /* after the runner */
    slack_stop(app.slack); /* its threads call into the store and the runner */
    hub_free(hub);         /* after everything that writes events, before the store */
    wsg_free(app.wsg);     /* after the hub: its last close frames go through the guard */
    store_close(st);
    atomic_store_explicit(&fan.slack, NULL, memory_order_release);
    slack_free(app.slack); /* after the store: no event can reach it any more */
    app.slack = NULL;
    LOG_INFO("main: stopped");
    config_free(cfg);
    metrics_free(app.metrics);
    rl_free(app.session_rate);
    return exit_code;
}
