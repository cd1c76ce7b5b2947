/*
 * app.h - the application object: pointers to every subsystem, built by main.c and handed to
 * every handler. main.c owns it and everything it points to; the pointers do not change after
 * start-up, so any thread may read them. A subsystem that is not configured is NULL.
 */
#ifndef SESSIOND_APP_H
#define SESSIOND_APP_H

#include <stdatomic.h>

struct config;
struct store;
struct registry;
struct hub;         /* server/ws/hub.h: WebSocket fan-out */
struct runner;      /* runner/runner.h: prompt queue + agent runner */
struct runner_exec; /* runner/exec.h: the exec pipeline */
struct outpump;     /* sandbox/outpump.h: the output pump of every sandbox */
struct sbx_backend;
struct slack;     /* server/slack/slack.h */
struct repos;     /* workspace/repos.h: repositories, images, warm pools */
struct egress;    /* sandbox/egress/egress.h: the allow-list proxy */
struct metrics;   /* server/metrics.h */
struct agents;    /* agents/agents.h: named coding agents */
struct secrets;   /* server/secrets.h: sealing of stored user tokens */
struct ratelimit; /* server/ratelimit.h */
struct wsg;       /* server/ws/ws_guard.h: refuses unmasked WebSocket client frames */
struct vault;     /* server/vault.h: admin-managed secrets */

struct app {
    const struct config *cfg;
    struct store *store;
    struct registry *reg;
    struct hub *hub;
    struct runner *runner;
    struct runner_exec *exec;
    struct outpump *pump;
    struct sbx_backend *sbx;
    struct slack *slack;
    struct repos *repos;
    struct egress *egress;
    struct metrics *metrics;
    struct agents *agents;
    struct secrets *secrets;        /* NULL: no master key, user tokens cannot be stored */
    struct ratelimit *session_rate; /* session creations per user (max_sessions_per_minute) */
    struct wsg *wsg;                /* between WebSocket clients and the hub's lws */
    struct vault *vault;            /* admin-managed secrets (NULL before the master key) */
    atomic_int shutting_down;       /* set by the signal path in main.c, read by any thread */
};

#endif
