/*
 * app.h - the application object and its composition root (server/app.c): pointers to every
 * part, created, wired, started and stopped in order by app.c alone, and handed to every
 * handler. Within server/, a part reaches its peers through these pointers; a part that is not
 * configured is NULL.
 *
 * Lifetime: app_create() -> app_start() -> (serve) -> app_stop() -> app_destroy(), all on the
 * main thread. The pointers do not change between the end of app_start() and the start of
 * app_stop(), so any thread may read them while the server serves.
 */
#ifndef SESSIOND_APP_H
#define SESSIOND_APP_H

#include <stdatomic.h>

struct config;
struct store;
struct registry;
struct auth;        /* server/auth.h: token and access caches over the registry */
struct hub;         /* server/ws/hub.h: WebSocket fan-out */
struct runner;      /* runner/runner.h: prompt queue + agent runner */
struct runner_exec; /* runner/exec.h: the exec pipeline */
struct outpump;     /* sandbox/outpump.h: the output pump of every sandbox */
struct sbx_backend;
struct slack;     /* server/slack/slack.h */
struct repos;     /* workspace/repos.h: repositories, images, warm pools */
struct ghapp;     /* workspace/ghapp.h: GitHub App installation tokens */
struct egress;    /* sandbox/egress/egress.h: the allow-list proxy */
struct metrics;   /* server/metrics.h */
struct agents;    /* agents/agents.h: named coding agents */
struct secrets;   /* server/secrets.h: sealing of stored user tokens */
struct ratelimit; /* server/ratelimit.h */
struct wsg;       /* server/ws/ws_guard.h: refuses unmasked WebSocket client frames */
struct http;      /* server/http.h: the listening daemon */
struct vault;     /* server/vault.h: admin-managed secrets */

struct app {
    const struct config *cfg;
    struct store *store;
    struct registry *reg;
    struct auth *auth;
    struct hub *hub;
    struct runner *runner;
    struct runner_exec *exec;
    struct outpump *pump;
    struct sbx_backend *sbx;
    struct slack *slack;
    struct repos *repos;
    struct ghapp *ghapp; /* the GitHub App (github.app_id), NULL: none */
    struct egress *egress;
    struct metrics *metrics;
    struct agents *agents;
    struct secrets *secrets;        /* NULL: no master key, user tokens cannot be stored */
    struct ratelimit *session_rate; /* session creations per user (max_sessions_per_minute) */
    struct wsg *wsg;                /* between WebSocket clients and the hub's lws */
    struct vault *vault;            /* admin-managed secrets (NULL before the master key) */
    struct http *http;
    char *csp;                /* the web UI's Content-Security-Policy (static_csp_new) */
    atomic_int shutting_down; /* set by app_stop, read by any thread */
};

/** Build the application around cfg (taken: app_destroy frees it) and the parts that run no
 * thread yet (metrics, the session rate limit). *out: app_destroy(). */
int app_create(struct config *cfg, struct app **out);

/** Start every part in dependency order (data dir, store, admin token, agents and egress,
 * sandbox backend, repositories, runner and exec pipeline, hub, Slack, HTTP), then write the
 * port file. 0, or a negative error after one log line saying why: the caller then calls
 * app_stop(), which stops whatever had started. Signals the server waits for must be blocked
 * before this call (every thread started here inherits the mask). */
int app_start(struct app *app);

/** Stop every part in the reverse order (requests in flight get cfg->shutdown_grace seconds,
 * running prompts a grace period). Idempotent; safe after a failed or partial app_start(). */
void app_stop(struct app *app);

/** Free what app_create() made, and the configuration. NULL is a no-op. */
void app_destroy(struct app *app);

#endif
