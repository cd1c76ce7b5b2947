/*
 * api_agents.h - named coding agents and the egress proxy in the server:
 * GET /v1/agents, and the start-up glue that loads the "agents" config, starts the egress
 * proxy (server/egress.h) and records each refused request as a sandbox.egress_denied event.
 *
 * Threads: agents_start/agents_stop from the main thread (agents_start before sandbox_start,
 * agents_stop after sandbox_stop); the handler on HTTP pool threads.
 */
#ifndef SESSIOND_API_AGENTS_H
#define SESSIOND_API_AGENTS_H

struct app;
struct req;

/** Load cfg->agents into app->agents (ERR_INVALID with one log line on a bad config) and
 * start the egress proxy into app->egress. */
int agents_start(struct app *app);
void agents_stop(struct app *app);

/** GET /v1/agents: {"agents":[{name, kind, model, api_base, api_key_env, api_key_set,
 * installed, default}]} — never a key. */
int api_agents_list(struct req *r);

#endif
