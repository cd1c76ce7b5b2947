/*
 * test_http_route.c - route pattern matching and lookup (server/http.c).
 */
#include "server/api/api.h"
#include "server/http.h"
#include "testlib.h"

static int h_a(struct req *r)
{
    (void)r;
    return 0;
}

static const struct route table[] = {
    {"GET", "/healthz", h_a, ROUTE_PUBLIC},
    {"POST", "/v1/sessions", h_a, 0},
    {"GET", "/v1/sessions", h_a, 0},
    {"GET", "/v1/sessions/{id}", h_a, 0},
    {"DELETE", "/v1/sessions/{id}", h_a, 0},
    {"GET", "/v1/sessions/{id}/artifacts/{aid}", h_a, 0},
    {"*", "/v1/any/{x}", h_a, 0},
    {"GET", "/static/{*path}", h_a, ROUTE_PUBLIC},
    {NULL, NULL, NULL, 0},
};

static const char *param(struct path_params *pp, const char *name)
{
    for (int i = 0; i < pp->n; i++) {
        if (pp->p[i].name_len == strlen(name) && !memcmp(pp->p[i].name, name, strlen(name))) {
            return pp->p[i].value;
        }
    }
    return NULL;
}

TEST(match_literals)
{
    struct path_params pp;
    ASSERT(http_match("/healthz", "/healthz", &pp));
    ASSERT_EQ(pp.n, 0);
    ASSERT(!http_match("/healthz", "/healthz/", &pp));
    ASSERT(!http_match("/healthz", "/health", &pp));
    ASSERT(!http_match("/healthz", "/healthzz", &pp));
    ASSERT(!http_match("/v1/sessions", "/v1", &pp));
    ASSERT(!http_match("/v1", "/v1/sessions", &pp));
    ASSERT(!http_match("/healthz", "healthz", &pp));
}

TEST(match_params)
{
    struct path_params pp;
    ASSERT(http_match("/v1/sessions/{id}", "/v1/sessions/s_1", &pp));
    ASSERT_EQ(pp.n, 1);
    ASSERT_STREQ(param(&pp, "id"), "s_1");
    ASSERT(http_match("/v1/sessions/{id}/artifacts/{aid}", "/v1/sessions/s_1/artifacts/a_2", &pp));
    ASSERT_EQ(pp.n, 2);
    ASSERT_STREQ(param(&pp, "id"), "s_1");
    ASSERT_STREQ(param(&pp, "aid"), "a_2");
    ASSERT(!http_match("/v1/sessions/{id}", "/v1/sessions/", &pp)); /* empty segment */
    ASSERT(!http_match("/v1/sessions/{id}", "/v1/sessions//", &pp));
    ASSERT(!http_match("/v1/sessions/{id}", "/v1/sessions/a/b", &pp));
    ASSERT(http_match("/v1/sessions/{id}", "/v1/sessions/..", &pp)); /* ids are checked later */
}

TEST(match_rest)
{
    struct path_params pp;
    ASSERT(http_match("/static/{*path}", "/static/css/app.css", &pp));
    ASSERT_STREQ(param(&pp, "path"), "css/app.css");
    ASSERT(http_match("/static/{*path}", "/static/", &pp));
    ASSERT_STREQ(param(&pp, "path"), "");
    ASSERT(http_match("/{*path}", "/", &pp));
    ASSERT(http_match("/{*path}", "/index.html", &pp));
    ASSERT_STREQ(param(&pp, "path"), "index.html");
}

TEST(match_long_path)
{
    struct path_params pp;
    char path[5000] = "/v1/sessions/";
    memset(path + 13, 'a', 4000);
    path[4013] = 0;
    ASSERT(!http_match("/v1/sessions/{id}", path, &pp)); /* longer than the value buffer */
}

TEST(find_routes)
{
    struct path_params pp;
    char allow[64];
    const struct route *r = http_route_find(table, "GET", "/v1/sessions/s_1", &pp, allow, 64);
    ASSERT(r == &table[3]);
    r = http_route_find(table, "DELETE", "/v1/sessions/s_1", &pp, allow, 64);
    ASSERT(r == &table[4]);
    r = http_route_find(table, "HEAD", "/healthz", &pp, allow, 64);
    ASSERT(r == &table[0]);
    r = http_route_find(table, "PATCH", "/v1/any/1", &pp, allow, 64);
    ASSERT(r == &table[6]);
    r = http_route_find(table, "GET", "/v1/nothing", &pp, allow, 64);
    ASSERT(r == NULL);
    ASSERT_STREQ(allow, "");
    r = http_route_find(table, "PUT", "/v1/sessions", &pp, allow, 64);
    ASSERT(r == NULL);
    ASSERT_STREQ(allow, "POST, GET");
    r = http_route_find(table, "POST", "/v1/sessions/s_1", &pp, allow, 64);
    ASSERT(r == NULL);
    ASSERT_STREQ(allow, "GET, DELETE");
}

TEST(real_table_is_well_formed)
{
    /* Every pattern starts with '/', braces balance, methods are known. */
    for (const struct route *r = http_routes; r->method; r++) {
        ASSERT(r->pattern[0] == '/');
        ASSERT(r->fn != NULL);
        int depth = 0;
        for (const char *p = r->pattern; *p; p++) {
            depth += *p == '{';
            depth -= *p == '}';
            ASSERT(depth == 0 || depth == 1);
        }
        ASSERT_EQ(depth, 0);
        ASSERT(!strcmp(r->method, "GET") || !strcmp(r->method, "POST") ||
               !strcmp(r->method, "PUT") || !strcmp(r->method, "DELETE") ||
               !strcmp(r->method, "PATCH") || !strcmp(r->method, "*"));
    }
    struct path_params pp;
    char allow[64];
    const struct route *r =
        http_route_find(http_routes, "POST", "/v1/sessions/s_1/messages", &pp, allow, 64);
    ASSERT(r && r->fn == api_messages_post);
}

static const struct test_case tests[] = {
    T(match_literals),  T(match_params), T(match_rest),
    T(match_long_path), T(find_routes),  T(real_table_is_well_formed),
};
TEST_MAIN(tests)
