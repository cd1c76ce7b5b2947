/*
 * ws_api.c - client -> server `prompt` and `cancel` frames: the same effect as the REST
 * endpoints, through the functions those endpoints use (never a second copy of their
 * transaction).
 *
 * Both call the transport-neutral operations of server/ops.h:
 *   ops_message_create()  - what POST /v1/sessions/{id}/messages does
 *   ops_prompt_cancel()   - what POST /v1/sessions/{id}/cancel does
 *
 * Threads: called on the hub's writer thread; may block on the session's group commit.
 */
#include "common/err.h"
#include "common/jsonx.h"
#include "server/app.h"
#include "server/ops.h"
#include "server/ws/hub.h"

#include <stdio.h>
#include <string.h>

int hub_api_prompt(struct app *app, const char *sid, const struct auth_info *who, const char *role,
                   json_t *frame, json_t **out, char *msg, size_t n)
{
    (void)role;
    json_t *content = json_object_get(frame, "content");
    if (!json_is_string(content) || json_string_length(content) == 0) {
        snprintf(msg, n, "prompt needs a non-empty string field 'content'");
        return ERR_INVALID;
    }
    /* The frame is the REST body plus "type" (and an optional client "id" echoed in the
     * ack): pass the REST fields only, so both paths validate the same object. */
    json_t *body = json_deep_copy(frame);
    json_object_del(body, "type");
    json_object_del(body, "id");
    json_object_del(body, "author"); /* impersonation is a REST-only feature of bot tokens */
    struct ops_answer ans = {0};
    int rc = ops_message_create(app, who, sid, body, &ans);
    json_decref(body);
    *out = ans.json;
    snprintf(msg, n, "%s", ans.msg);
    return rc;
}

int hub_api_cancel(struct app *app, const char *sid, const struct auth_info *who, const char *role,
                   json_t *frame, json_t **out, char *msg, size_t n)
{
    (void)role;
    json_t *body = json_deep_copy(frame);
    json_object_del(body, "type");
    json_object_del(body, "id");
    struct ops_answer ans = {0};
    int rc = ops_prompt_cancel(app, who, sid, body, &ans);
    json_decref(body);
    *out = ans.json;
    snprintf(msg, n, "%s", ans.msg);
    return rc;
}
