/*
 * jsonx.c - jansson helpers. Thread safe on distinct objects.
 */
#include "jsonx.h"

#include "err.h"
#include "xmem.h"

#include <stdio.h>
#include <stdlib.h>

int jx_parse_object(const char *data, size_t len, json_t **out, char *msg, size_t n)
{
    json_error_t jerr;
    *out = NULL;
    if (len == 0) {
        snprintf(msg, n, "request body must be a JSON object");
        return ERR_INVALID;
    }
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        snprintf(msg, n, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                 jerr.text);
        return ERR_INVALID;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        snprintf(msg, n, "request body must be a JSON object");
        return ERR_INVALID;
    }
    *out = v;
    return 0;
}

static int wrong(const char *key, const char *what, char *msg, size_t n)
{
    snprintf(msg, n, "field '%s' must be %s", key, what);
    return ERR_INVALID;
}

int jx_str(json_t *obj, const char *key, const char **out, char *msg, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        return 0;
    }
    if (!json_is_string(v)) {
        return wrong(key, "a string", msg, n);
    }
    *out = json_string_value(v);
    return 0;
}

int jx_int(json_t *obj, const char *key, int64_t *out, char *msg, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        return 0;
    }
    if (!json_is_integer(v)) {
        return wrong(key, "an integer", msg, n);
    }
    *out = (int64_t)json_integer_value(v);
    return 0;
}

int jx_bool(json_t *obj, const char *key, int *out, char *msg, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        return 0;
    }
    if (!json_is_boolean(v)) {
        return wrong(key, "a boolean", msg, n);
    }
    *out = json_is_true(v);
    return 0;
}

int jx_obj(json_t *obj, const char *key, json_t **out, char *msg, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        return 0;
    }
    if (!json_is_object(v)) {
        return wrong(key, "an object", msg, n);
    }
    *out = v;
    return 0;
}

int jx_arr(json_t *obj, const char *key, json_t **out, char *msg, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        return 0;
    }
    if (!json_is_array(v)) {
        return wrong(key, "an array", msg, n);
    }
    *out = v;
    return 0;
}

char *jx_dump(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    if (!s) {
        return xstrdup("null");
    }
    return s;
}
