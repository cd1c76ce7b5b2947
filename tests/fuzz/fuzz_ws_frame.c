/*
 * fuzz_ws_frame.c - what the WebSocket side parses from a client: the upgrade request target
 * (the session id in the path, the %-decoded after/ticket/token query parameters, and the
 * request log's redaction of the last two) and every
 * client -> server text frame (hub_frame_parse: ping, typing, status, prompt, cancel).
 *
 * Input: "REQUEST-TARGET\nFRAME" (FRAME is the rest: one reassembled text message).
 */
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "server/ws/hub.h"
#include "server/ws/ws_upgrade.h"

#include "fuzzlib.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_ERROR);
    return 0;
}

static void check_target(const char *uri)
{
    char sid[72], val[160], tiny[4];
    if (ws_upgrade_path_sid(uri, sid, sizeof sid) == 0) {
        FZ_CHECK(util_valid_id(sid) && strncmp(uri, "/v1/sessions/", 13) == 0);
        FZ_CHECK(strncmp(uri + 13 + strlen(sid), "/ws", 3) == 0);
    }
    const char *q = strchr(uri, '?');
    if (!q) {
        return;
    }
    static const char *const names[] = {"after", "ticket", "token"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        memset(val, 'x', sizeof val);
        if (ws_upgrade_query_get(q + 1, names[i], val, sizeof val)) {
            FZ_CHECK(memchr(val, 0, sizeof val) != NULL);
            FZ_CHECK(strstr(q, names[i]) != NULL);
        }
        memset(tiny, 'x', sizeof tiny);
        if (ws_upgrade_query_get(q + 1, names[i], tiny, sizeof tiny)) {
            FZ_CHECK(memchr(tiny, 0, sizeof tiny) != NULL);
        }
    }
}

/* What the request log prints of a target hides whatever the server would take from it as
 * a token or ticket: parsing the logged target gives "REDACTED" (or nothing) in their place. */
static void check_redacted(const char *uri)
{
    size_t n = 2 * strlen(uri) + 64;
    char *out = malloc(n), val[160];
    FZ_CHECK(out != NULL);
    log_redact_uri(uri, out, n);
    const char *q = strchr(out, '?');
    static const char *const secret[] = {"token", "ticket"};
    for (size_t i = 0; q && i < 2; i++) {
        if (ws_upgrade_query_get(q + 1, secret[i], val, sizeof val)) {
            FZ_CHECK(val[0] == 0 || strcmp(val, "REDACTED") == 0);
        }
    }
    free(out);
}

static void check_frame(const char *data, size_t len)
{
    char msg[200];
    struct hub_frame fr;
    memset(msg, 'x', sizeof msg);
    int rc = hub_frame_parse(data, len, &fr, msg, sizeof msg);
    FZ_CHECK(fr.kind >= 0 && fr.kind <= HUB_FRAME_CANCEL);
    if (rc) {
        FZ_CHECK(rc == ERR_INVALID && fr.obj == NULL && memchr(msg, 0, sizeof msg));
        return;
    }
    FZ_CHECK(fr.kind != 0 && json_is_object(fr.obj));
    FZ_CHECK(json_is_string(json_object_get(fr.obj, "type")));
    if (fr.kind == HUB_FRAME_STATUS) {
        FZ_CHECK(fr.status && (!strcmp(fr.status, "active") || !strcmp(fr.status, "idle") ||
                               !strcmp(fr.status, "away")));
    } else {
        FZ_CHECK(fr.status == NULL);
    }
    FZ_CHECK(fr.typing == 0 || fr.typing == 1);
    json_decref(fr.obj);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = {data, size};
    size_t len;
    char *uri = fz_field(&f, NULL);
    char *frame = fz_rest(&f, &len);
    check_target(uri);
    check_redacted(uri);
    check_frame(frame, len);
    free(uri);
    free(frame);
    return 0;
}
