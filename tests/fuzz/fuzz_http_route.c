/*
 * fuzz_http_route.c - what the HTTP layer does with a request before a handler's own logic:
 * route lookup in the real route table (server/routes.c) with its path placeholders and the
 * 405 Allow list, the id check of {id}-like placeholders, integer query parameters, and the
 * JSON body: parse (duplicates refused), the typed field getters every endpoint validates
 * with, the extension's DOM-selection context check, and the compact dump the server stores.
 *
 * Input: "METHOD\nPATH\nQUERY-INT\nBODY" (BODY is the rest, any bytes).
 */
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "server/api/api.h"
#include "server/extension.h"
#include "server/http.h"

#include "fuzzlib.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_ERROR);
    return 0;
}

/* The id grammar, written out independently of util_valid_id. */
static int is_id(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

static void check_route(const char *method, const char *path)
{
    struct path_params pp, again;
    char allow[128];
    memset(allow, 'x', sizeof allow);
    const struct route *rt = http_route_find(http_routes, method, path, &pp, allow, sizeof allow);
    FZ_CHECK(memchr(allow, 0, sizeof allow) != NULL);
    if (!rt) {
        return;
    }
    FZ_CHECK(strcmp(rt->method, "*") == 0 || strcmp(rt->method, method) == 0 ||
             (strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0));
    FZ_CHECK(http_match(rt->pattern, path, &again) == 1);
    FZ_CHECK(pp.n >= 0 && pp.n <= HTTP_MAX_PARAMS && pp.n == again.n);
    for (int i = 0; i < pp.n; i++) {
        const char *v = pp.p[i].value;
        FZ_CHECK(v >= pp.buf && v < pp.buf + sizeof pp.buf);
        FZ_CHECK(strlen(v) < (size_t)(pp.buf + sizeof pp.buf - v));
        FZ_CHECK(strcmp(v, again.p[i].value) == 0);
        int rest = pp.p[i].name_len > 0 && pp.p[i].name[-1] == '*';
        if (!rest) {
            /* One whole, non-empty segment of the path. */
            FZ_CHECK(*v && !strchr(v, '/') && strstr(path, v));
        }
        size_t n = pp.p[i].name_len;
        if (n >= 2 && memcmp(pp.p[i].name + n - 2, "id", 2) == 0) {
            FZ_CHECK(util_valid_id(v) == is_id(v));
        }
    }
}

static void check_int(const char *s)
{
    int64_t v = 0;
    if (util_parse_i64(s, &v) != 0) {
        return;
    }
    /* Accepted: the whole string is a decimal integer that fits, and strtoll agrees. */
    char *end = NULL;
    long long w = strtoll(s, &end, 10);
    FZ_CHECK(*s && end && *end == 0 && w == v);
}

static void check_field(json_t *obj, const char *key, json_t *v)
{
    char msg[256];
    const char *s = NULL;
    int64_t i = 0;
    int b = 0;
    json_t *o = NULL, *a = NULL;
    int null = json_is_null(v);
    FZ_CHECK((jx_str(obj, key, &s, msg, sizeof msg) == 0) == (null || json_is_string(v)));
    FZ_CHECK((jx_int(obj, key, &i, msg, sizeof msg) == 0) == (null || json_is_integer(v)));
    FZ_CHECK((jx_bool(obj, key, &b, msg, sizeof msg) == 0) == (null || json_is_boolean(v)));
    FZ_CHECK((jx_obj(obj, key, &o, msg, sizeof msg) == 0) == (null || json_is_object(v)));
    FZ_CHECK((jx_arr(obj, key, &a, msg, sizeof msg) == 0) == (null || json_is_array(v)));
    if (json_is_object(v)) {
        /* A message's `context` is checked this way whatever its key here. */
        (void)ext_is_dom_selection(v);
        (void)ext_context_check(v, msg, sizeof msg);
    }
}

static void check_body(const char *body, size_t len)
{
    char msg[256];
    json_t *obj = NULL;
    if (jx_parse_object(body, len, &obj, msg, sizeof msg) != 0) {
        FZ_CHECK(obj == NULL && memchr(msg, 0, sizeof msg));
        return;
    }
    FZ_CHECK(json_is_object(obj));
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        check_field(obj, key, v);
    }
    (void)ext_context_check(obj, msg, sizeof msg);
    /* What the server stores (messages.context_json, event data) parses back to the same. */
    char *dump = jx_dump(obj);
    json_t *back = json_loads(dump, JSON_DECODE_ANY, NULL);
    FZ_CHECK(back && json_equal(back, obj));
    json_decref(back);
    free(dump);
    json_decref(obj);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = {data, size};
    size_t body_len;
    char *method = fz_field(&f, NULL);
    char *path = fz_field(&f, NULL);
    char *qint = fz_field(&f, NULL);
    char *body = fz_rest(&f, &body_len);
    check_route(method, path);
    check_int(qint);
    check_body(body, body_len);
    free(method);
    free(path);
    free(qint);
    free(body);
    return 0;
}
