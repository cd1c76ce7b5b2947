/*
 * api_agents.h - GET /v1/agents: the named coding agents (loaded, with the egress proxy, by
 * server/app.c).
 *
 * Threads: the handler runs on HTTP pool threads.
 */
#ifndef SESSIOND_API_AGENTS_H
#define SESSIOND_API_AGENTS_H

struct app;
struct req;

/** GET /v1/agents: {"agents":[{name, kind, model, api_base, api_key_env, api_key_set,
 * installed, default}]} — never a key. */
int api_agents_list(struct req *r);

#endif
