/*
 * err.c - error strings and the single error -> HTTP status / WebSocket close mapping.
 * Pure functions, thread safe.
 */
#include "err.h"

struct err_info {
    int err;
    const char *code;
    const char *str;
    int http;
    int ws;
};

static const struct err_info table[] = {
    {ERR_OK, "ok", "success", 200, 1000},
    {ERR_NOMEM, "internal", "out of memory", 500, 1011},
    {ERR_INVALID, "invalid", "invalid request", 400, 1008},
    {ERR_NOT_FOUND, "not_found", "not found", 404, 4404},
    {ERR_CONFLICT, "conflict", "conflict", 409, 1008},
    {ERR_IO, "io", "input/output error", 500, 1011},
    {ERR_DB, "storage", "storage error", 500, 1011},
    {ERR_TOO_LARGE, "too_large", "too large", 413, 1009},
    {ERR_LIMIT, "rate_limited", "too many requests", 429, 1008},
    {ERR_AUTH, "unauthorized", "missing or invalid credentials", 401, 4401},
    {ERR_FORBIDDEN, "forbidden", "forbidden", 403, 4403},
    {ERR_GONE, "gone", "gone", 410, 4404},
    {ERR_UNSUPPORTED, "unsupported_media_type", "unsupported media type", 415, 1003},
    {ERR_METHOD, "method_not_allowed", "method not allowed", 405, 1008},
    {ERR_UNPROCESSABLE, "unprocessable", "unprocessable request", 422, 1008},
    {ERR_UNAVAILABLE, "unavailable", "service unavailable", 503, 1013},
    {ERR_TIMEOUT, "timeout", "timed out", 504, 1011},
    {ERR_CANCELLED, "cancelled", "cancelled", 409, 1000},
    {ERR_INTERNAL, "internal", "internal error", 500, 1011},
    {ERR_NEWER, "newer_format", "file written by a newer version", 500, 1011},
    /* The client cannot fix either: the words say what happened and where an operator looks. */
    {ERR_CORRUPT, "storage",
     "its file is corrupt and was moved to <data_dir>/quarantine/ (docs/operations.md, "
     "\"Corrupt files\")",
     500, 1011},
    {ERR_NOSPACE, "disk_full", "no space left on the server's data volume; nothing was stored", 507,
     1011},
};

static const struct err_info *find(int err)
{
    for (unsigned i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (table[i].err == err) {
            return &table[i];
        }
    }
    return find(ERR_INTERNAL); /* an unknown code is a bug; ERR_INTERNAL is in the table */
}

const char *err_str(int err)
{
    return find(err)->str;
}

const char *err_code(int err)
{
    return find(err)->code;
}

int err_http_status(int err)
{
    return find(err)->http;
}

int err_ws_close(int err)
{
    return find(err)->ws;
}
