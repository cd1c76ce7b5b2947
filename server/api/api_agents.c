/*
 * api_agents.c - GET /v1/agents (api_agents.h).
 *
 * Threads: HTTP pool threads; the handler only reads the immutable agents table.
 */
#include "server/api/api_agents.h"

#include "agents/agents.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/config.h"

int api_agents_list(struct req *r)
{
    struct app *app = req_app(r);
    return req_reply_json(r, 200, agents_list_json(app->agents, app->cfg->agent));
}
