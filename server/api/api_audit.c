/*
 * api_audit.c - the REST side of the audit log (api_audit.h): entries for the caller of a
 * request (its token and peer address), exec entries cut to size, and GET /v1/audit.
 *
 * Threads: HTTP pool threads; the registry serializes the writes.
 */
#include "server/api/api_audit.h"

#include "common/err.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/audit.h"
#include "server/auth.h"
#include "storage/registry.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* The peer address of the request's connection (the reverse proxy's, behind one: the
 * forwarded headers are the client's word and are not trusted here). */
static void peer_ip(struct req *r, char *out, size_t n)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req_conn(r), MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    out[0] = 0;
    if (!ci || !ci->client_addr) {
        return;
    }
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)n);
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)n);
    }
}

void audit_req(struct req *r, const char *action, const char *target, json_t *detail)
{
    char ip[INET6_ADDRSTRLEN];
    peer_ip(r, ip, sizeof(ip));
    audit_log(req_app(r)->reg, req_auth(r), ip[0] ? ip : NULL, action, target, detail);
}

/* Length of s cut to at most max bytes without splitting a UTF-8 sequence (jansson refuses
 * invalid UTF-8). */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max) {
        return len;
    }
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) {
        n--;
    }
    return n;
}

void audit_exec(struct req *r, const char *sid, const char *exec_id, json_t *argv,
                const char *script)
{
    json_t *d = json_pack("{s:s,s:s}", "session_id", sid, "exec_id", exec_id);
    int truncated = 0;
    if (script) {
        size_t len = strlen(script);
        size_t n = utf8_cut(script, len, AUDIT_EXEC_MAX);
        truncated = n < len;
        json_object_set_new(d, "script", json_stringn(script, n));
    } else {
        /* Whole arguments while they fit, then the start of the one that does not. */
        json_t *kept = json_array();
        size_t used = 0, i;
        json_t *a;
        json_array_foreach(argv, i, a)
        {
            const char *s = json_string_value(a);
            size_t len = json_string_length(a);
            size_t n = used < AUDIT_EXEC_MAX ? utf8_cut(s, len, AUDIT_EXEC_MAX - used) : 0;
            if (n < len) {
                truncated = 1;
                if (n) {
                    json_array_append_new(kept, json_stringn(s, n));
                }
                break;
            }
            json_array_append_new(kept, json_stringn(s, n));
            used += n;
        }
        json_object_set_new(d, "argv", kept);
    }
    if (truncated) {
        json_object_set_new(d, "truncated", json_true());
    }
    audit_req(r, "exec", sid, d);
}

int api_audit_list(struct req *r)
{
    const char *action = req_query(r, "action");
    const char *user = req_query(r, "user_id");
    const char *cursor = req_query(r, "cursor");
    json_t *out = NULL;
    int64_t limit = 100;
    if (!auth_is_admin(req_auth(r))) {
        return req_fail(r, ERR_FORBIDDEN, "the audit log is for admin tokens only");
    }
    int rc = req_query_int(r, "limit", 100, 1, 1000, &limit);
    if (rc) {
        return rc;
    }
    rc = registry_audit_list(req_app(r)->reg, action && *action ? action : NULL,
                             user && *user ? user : NULL, (int)limit,
                             cursor && *cursor ? cursor : NULL, &out);
    return api_reply_page(r, rc, out);
}
