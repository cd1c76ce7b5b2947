/*
 * test_http_route.c - route pattern matching and lookup (server/http.c) and the real route
 * table (server/routes.c): every route is reached by its own method and path with its
 * parameters extracted, overlapping patterns resolve to the first one listed, unknown paths
 * are 404 and known paths with another method 405 with the right Allow list, and paths that
 * are not what they seem (ids outside [A-Za-z0-9_-]{1,64}, "..", encoded slashes, NUL bytes,
 * over-long paths) never reach a handler with a usable id.
 *
 * What the dispatcher does after the lookup (check_ids(), the raw-URI check) is static in
 * http.c; the same rules are checked here through util_valid_id() and http_raw_path_ok(), and
 * against the real server in tests/integration/test_trust_routes.sh.
 */
#include "common/util.h"
#include "server/api/api.h"
#include "server/http.h"
#include "testlib.h"

static int h_a(struct req *r)
{
    (void)r;
    return 0;
}

static int h_b(struct req *r)
{
    (void)r;
    return 1;
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

/* ---- the real table ---- */

#define MAX_SEGS 16

/* Split a pattern or path after its leading '/' into segments (pointers into a copy). */
static int split(const char *s, char *copy, size_t n, char **seg)
{
    snprintf(copy, n, "%s", s + 1);
    int k = 0;
    char *p = copy;
    for (;;) {
        ASSERT(k < MAX_SEGS);
        seg[k++] = p;
        char *e = strchr(p, '/');
        if (!e) {
            break;
        }
        *e = 0;
        p = e + 1;
    }
    return k;
}

static int is_param(const char *seg)
{
    return seg[0] == '{' && seg[strlen(seg) - 1] == '}';
}

static int is_rest(const char *seg)
{
    return seg[0] == '{' && seg[1] == '*';
}

/* A concrete path for a pattern: each {name} becomes "v-name" (a valid id), {*rest} becomes
 * "css/app.css". */
static void sample_path(const char *pattern, char *out, size_t n)
{
    char copy[256], *seg[MAX_SEGS];
    int k = split(pattern, copy, sizeof(copy), seg);
    size_t used = 0;
    for (int i = 0; i < k; i++) {
        const char *v = seg[i];
        char tmp[64];
        if (is_rest(v)) {
            v = "css/app.css";
        } else if (is_param(v)) {
            snprintf(tmp, sizeof(tmp), "v-%.*s", (int)strlen(v) - 2, v + 1);
            v = tmp;
        }
        used += (size_t)snprintf(out + used, n - used, "/%s", v);
        ASSERT(used < n);
    }
}

static const char *pparam(struct path_params *pp, const char *name, size_t len)
{
    for (int i = 0; i < pp->n; i++) {
        if (pp->p[i].name_len == len && !memcmp(pp->p[i].name, name, len)) {
            return pp->p[i].value;
        }
    }
    return NULL;
}

static size_t nroutes(void)
{
    size_t n = 0;
    while (http_routes[n].method) {
        n++;
    }
    return n;
}

TEST(every_route_is_reached_by_its_own_method_and_path)
{
    size_t n = nroutes();
    ASSERT(n >= 40);
    for (size_t i = 0; i < n; i++) {
        const struct route *rt = &http_routes[i];
        char path[512];
        sample_path(rt->pattern, path, sizeof(path));
        const char *m = strcmp(rt->method, "*") == 0 ? "GET" : rt->method;
        struct path_params pp;
        char allow[96];
        const struct route *got = http_route_find(http_routes, m, path, &pp, allow, sizeof(allow));
        if (got != rt) {
            TFAIL("%s %s (sample %s) found %s %s", m, rt->pattern, path,
                  got ? got->method : "nothing", got ? got->pattern : "");
        }
        /* Each placeholder comes back with its own value. */
        char copy[256], *seg[MAX_SEGS];
        int k = split(rt->pattern, copy, sizeof(copy), seg);
        int params = 0;
        for (int j = 0; j < k; j++) {
            if (!is_param(seg[j])) {
                continue;
            }
            params++;
            int rest = is_rest(seg[j]);
            const char *name = seg[j] + 1 + rest;
            size_t len = strlen(seg[j]) - 2 - (size_t)rest;
            char want[64];
            snprintf(want, sizeof(want), "v-%.*s", (int)len, name);
            const char *v = pparam(&pp, name, len);
            ASSERT(v != NULL);
            ASSERT_STREQ(v, rest ? "css/app.css" : want);
        }
        ASSERT_EQ(pp.n, params);
        /* HEAD is GET without a body. */
        if (!strcmp(rt->method, "GET")) {
            ASSERT(http_route_find(http_routes, "HEAD", path, &pp, allow, sizeof(allow)) == rt);
        }
    }
}

/* 1 if some path matches both patterns; witness gets one such path. */
static int overlap(const char *a, const char *b, char *witness, size_t n)
{
    char ca[256], cb[256], *sa[MAX_SEGS], *sb[MAX_SEGS];
    int ka = split(a, ca, sizeof(ca), sa), kb = split(b, cb, sizeof(cb), sb);
    size_t used = 0;
    witness[0] = 0;
    for (int i = 0;; i++) {
        int ea = i >= ka, eb = i >= kb;
        if (!ea && is_rest(sa[i])) {
            for (; i < kb; i++) { /* the rest of b, with samples for its placeholders */
                used += (size_t)snprintf(witness + used, n - used, "/%s",
                                         is_param(sb[i]) ? "w" : sb[i]);
            }
            if (used == 0 || witness[used - 1] == '/') {
                used += (size_t)snprintf(witness + used, n - used, "/");
            }
            return 1;
        }
        if (!eb && is_rest(sb[i])) {
            return overlap(b, a, witness, n);
        }
        if (ea || eb) {
            return ea && eb;
        }
        const char *v;
        if (!is_param(sa[i])) {
            v = sa[i];
            if (!is_param(sb[i]) && strcmp(sa[i], sb[i]) != 0) {
                return 0;
            }
        } else {
            v = is_param(sb[i]) ? "w" : sb[i];
        }
        if (!*v) {
            return 0; /* an empty literal segment (trailing '/') never meets a placeholder */
        }
        used += (size_t)snprintf(witness + used, n - used, "/%s", v);
    }
}

/* Pairs of routes of one method that some path matches both, not listed in allowed (pairs of
 * patterns, NULL-terminated). Each overlap must resolve to the route listed first. */
static int unlisted_overlaps(const struct route *tab, const char *const (*allowed)[2])
{
    int unlisted = 0;
    for (size_t i = 0; tab[i].method; i++) {
        for (size_t j = i + 1; tab[j].method; j++) {
            const struct route *a = &tab[i], *b = &tab[j];
            if (strcmp(a->method, b->method) != 0 && strcmp(a->method, "*") != 0 &&
                strcmp(b->method, "*") != 0) {
                continue;
            }
            if (!strcmp(a->pattern, b->pattern)) {
                TFAIL("%s %s is listed twice", a->method, a->pattern);
            }
            char w[512];
            if (!overlap(a->pattern, b->pattern, w, sizeof(w))) {
                continue;
            }
            int listed = 0;
            for (size_t k = 0; allowed[k][0]; k++) {
                listed |= !strcmp(allowed[k][0], a->pattern) && !strcmp(allowed[k][1], b->pattern);
            }
            if (!listed) {
                fprintf(stderr, "# %s %s and %s overlap (e.g. %s)\n", a->method, a->pattern,
                        b->pattern, w);
                unlisted++;
            }
            struct path_params pp;
            char allow[96];
            const char *m = strcmp(a->method, "*") == 0 ? b->method : a->method;
            const struct route *got = http_route_find(tab, m, w, &pp, allow, sizeof(allow));
            ASSERT(got != NULL && got <= a);
        }
    }
    return unlisted;
}

/* Overlaps in the real table would be deliberate and few (there are none today); each resolves
 * to the route listed first (routes.c: "the first match wins"). A new route that shadows
 * another, or is shadowed, fails here until it is listed on purpose. */
TEST(overlapping_routes_resolve_to_the_first_listed)
{
    static const char *const allowed[][2] = {
        {NULL, NULL},
    };
    ASSERT_EQ(unlisted_overlaps(http_routes, allowed), 0);
    /* The rule itself, on a table made to overlap: a literal listed before a placeholder
     * takes its own path and leaves the others to the placeholder; listed after, it is
     * never reached. */
    static const struct route lit_first[] = {
        {"GET", "/v1/sessions/search", h_a, 0},
        {"GET", "/v1/sessions/{id}", h_b, 0},
        {NULL, NULL, NULL, 0},
    };
    static const struct route lit_last[] = {
        {"GET", "/v1/sessions/{id}", h_b, 0},
        {"GET", "/v1/sessions/search", h_a, 0},
        {NULL, NULL, NULL, 0},
    };
    static const char *const listed[][2] = {
        {"/v1/sessions/search", "/v1/sessions/{id}"},
        {NULL, NULL},
    };
    ASSERT_EQ(unlisted_overlaps(lit_first, allowed), 1); /* the check finds it */
    ASSERT_EQ(unlisted_overlaps(lit_first, listed), 0);
    struct path_params pp;
    char allow[96], w[128];
    ASSERT(overlap(lit_first[0].pattern, lit_first[1].pattern, w, sizeof(w)));
    ASSERT_STREQ(w, "/v1/sessions/search");
    ASSERT(!overlap("/v1/sessions/{id}", "/v1/sessions/{id}/messages", w, sizeof(w)));
    ASSERT(!overlap("/v1/a/{x}", "/v1/b/{x}", w, sizeof(w)));
    ASSERT(overlap("/ui/{*path}", "/ui/{x}/y", w, sizeof(w)));
    ASSERT(http_route_find(lit_first, "GET", "/v1/sessions/search", &pp, allow, 96) ==
           &lit_first[0]);
    ASSERT(http_route_find(lit_first, "GET", "/v1/sessions/s_1", &pp, allow, 96) == &lit_first[1]);
    ASSERT(http_route_find(lit_last, "GET", "/v1/sessions/search", &pp, allow, 96) == &lit_last[0]);
    ASSERT_STREQ(param(&pp, "id"), "search");
}

/* Every path the table knows answers 405 (with the methods it does accept in Allow) to every
 * other method; paths it does not know are 404 (empty Allow). */
TEST(wrong_method_is_405_with_allow_and_unknown_path_is_404)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    size_t n = nroutes();
    for (size_t i = 0; i < n; i++) {
        char path[512];
        sample_path(http_routes[i].pattern, path, sizeof(path));
        /* The methods the table has for this path, in table order. */
        char want[96] = "";
        size_t used = 0;
        for (size_t j = 0; j < n; j++) {
            struct path_params pp;
            if (http_match(http_routes[j].pattern, path, &pp) &&
                !strstr(want, http_routes[j].method)) {
                used += (size_t)snprintf(want + used, sizeof(want) - used, "%s%s", used ? ", " : "",
                                         http_routes[j].method);
            }
        }
        for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
            struct path_params pp;
            char allow[96] = "junk";
            const struct route *got =
                http_route_find(http_routes, methods[m], path, &pp, allow, sizeof(allow));
            if (strstr(want, methods[m])) {
                ASSERT(got != NULL);
                continue;
            }
            if (got) {
                TFAIL("%s %s reached %s %s", methods[m], path, got->method, got->pattern);
            }
            ASSERT(allow[0] != 0); /* 405, not 404 */
            ASSERT_STREQ(allow, want);
        }
    }
    const char *unknown[] = {"/v2/sessions",
                             "/v1/sessionsx",
                             "/v1/session",
                             "/v1/sessions/s_1/nope",
                             "/healthz/x",
                             "/v1/sessions/s_1/",
                             "/v1/sessions//messages",
                             "//v1/sessions",
                             "/v1//sessions",
                             "v1/sessions",
                             "",
                             "/V1/SESSIONS",
                             "/v1/tokens/",
                             "/v1/repos/r/images/x",
                             "/metrics/"};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        struct path_params pp;
        char allow[96] = "junk";
        const struct route *got =
            http_route_find(http_routes, "GET", unknown[i], &pp, allow, sizeof(allow));
        if (got) {
            TFAIL("GET \"%s\" reached %s", unknown[i], got->pattern);
        }
        ASSERT_STREQ(allow, "");
    }
    /* A small Allow buffer is cut, never overrun. */
    struct {
        char allow[6];
        char guard[8];
    } small;
    memset(&small, 'G', sizeof(small));
    struct path_params pp;
    ASSERT(http_route_find(http_routes, "PUT", "/v1/repos/r", &pp, small.allow, 6) == NULL);
    ASSERT(memchr(small.allow, 0, 6) != NULL);
    for (size_t i = 0; i < sizeof(small.guard); i++) {
        ASSERT_EQ(small.guard[i], 'G');
    }
}

/* Placeholders whose name ends in "id" are checked by the dispatcher with util_valid_id()
 * before any handler runs (check_ids() in http.c). The lookup itself is structural: it hands
 * such values over, and they must fail that check; values with a '/' never match one
 * segment. */
TEST(ids_that_are_not_ids_are_caught_after_the_match)
{
    char longid[80];
    memset(longid, 'a', 65);
    longid[65] = 0;
    const char *bad[] = {"..", ".",   "a.b",  "a b",  "a%2Fb",   "a%00",
                         "é",  "a:b", "a\\b", longid, "s_1\x7f", "~"};
    size_t n = nroutes();
    int checked = 0;
    for (size_t i = 0; i < n; i++) {
        const struct route *rt = &http_routes[i];
        if (!strstr(rt->pattern, "id}")) {
            continue;
        }
        for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
            /* Put the bad value in the first id placeholder, valid samples elsewhere. */
            char path[512], copy[256], *seg[MAX_SEGS];
            int k = split(rt->pattern, copy, sizeof(copy), seg);
            size_t used = 0;
            int placed = 0;
            for (int j = 0; j < k; j++) {
                const char *v = seg[j];
                size_t l = strlen(v);
                if (is_param(v) && !placed && l >= 4 && !memcmp(v + l - 3, "id}", 3)) {
                    v = bad[b];
                    placed = 1;
                } else if (is_rest(v)) {
                    v = "x";
                } else if (is_param(v)) {
                    v = "ok";
                }
                used += (size_t)snprintf(path + used, sizeof(path) - used, "/%s", v);
            }
            struct path_params pp;
            char allow[96];
            const char *m = strcmp(rt->method, "*") == 0 ? "GET" : rt->method;
            const struct route *got =
                http_route_find(http_routes, m, path, &pp, allow, sizeof(allow));
            ASSERT(got == rt);
            int refused = 0;
            for (int p = 0; p < pp.n; p++) {
                size_t nl = pp.p[p].name_len;
                if (nl >= 2 && !memcmp(pp.p[p].name + nl - 2, "id", 2) &&
                    !util_valid_id(pp.p[p].value)) {
                    refused = 1;
                }
            }
            if (!refused) {
                TFAIL("%s %s: id \"%s\" would reach the handler", m, rt->pattern, bad[b]);
            }
            checked++;
        }
    }
    ASSERT(checked > 100);
    /* A '/' inside a value is a separator: the route for one segment is not reached. */
    struct path_params pp;
    char allow[96];
    const struct route *got =
        http_route_find(http_routes, "DELETE", "/v1/sessions/a/b", &pp, allow, sizeof(allow));
    ASSERT(got == NULL);
    ASSERT_STREQ(allow, "");
}

/* The router works on the decoded path: an encoded '/' would become a separator and an
 * encoded NUL would end the string early, so the raw URI is checked before routing. */
TEST(raw_paths_with_encoded_slash_or_nul_are_refused)
{
    const char *ok[] = {"/v1/sessions/s_1",     "/v1/sessions/s_1?after=%2F%00", "/",
                        "/ui/app%20x.css",      "/v1/sessions/%2e%2e",           "/v1/a%2",
                        "/v1/sessions/s_1#%2F", "/v1/sessions/s%25_2F"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (!http_raw_path_ok(ok[i])) {
            TFAIL("\"%s\" was refused", ok[i]);
        }
    }
    const char *bad[] = {"/v1/sessions/s_1%2Fmessages",  "/v1/sessions/s_1%2fmessages",
                         "/v1/sessions/s_1%00/messages", "/ui/..%2F..%2Fetc%2Fpasswd",
                         "/v1/sessions/s_1%00",          "%2F"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (http_raw_path_ok(bad[i])) {
            TFAIL("\"%s\" was accepted", bad[i]);
        }
    }
}

/* Paths longer than the parameter buffer do not match (404 before any handler); MHD itself
 * refuses request lines past its own limit (414). */
TEST(over_long_paths_match_nothing)
{
    static char path[70000];
    memcpy(path, "/v1/sessions/", 13);
    memset(path + 13, 'a', sizeof(path) - 14);
    path[sizeof(path) - 1] = 0;
    struct path_params pp;
    char allow[96];
    ASSERT(http_route_find(http_routes, "GET", path, &pp, allow, sizeof(allow)) == NULL);
    ASSERT_STREQ(allow, "");
    /* Within the buffer, the same route matches (the id check then refuses it). */
    path[13 + 100] = 0;
    ASSERT(http_route_find(http_routes, "GET", path, &pp, allow, sizeof(allow)) != NULL);
    ASSERT(!util_valid_id(pp.p[0].value));
    /* Many short segments: no pattern has that many. */
    size_t used = 0;
    for (int i = 0; i < 2000; i++) {
        used += (size_t)snprintf(path + used, sizeof(path) - used, "/s");
    }
    ASSERT(http_route_find(http_routes, "GET", path, &pp, allow, sizeof(allow)) == NULL);
}

static const struct test_case tests[] = {
    T(match_literals),
    T(match_params),
    T(match_rest),
    T(match_long_path),
    T(find_routes),
    T(real_table_is_well_formed),
    T(every_route_is_reached_by_its_own_method_and_path),
    T(overlapping_routes_resolve_to_the_first_listed),
    T(wrong_method_is_405_with_allow_and_unknown_path_is_404),
    T(ids_that_are_not_ids_are_caught_after_the_match),
    T(raw_paths_with_encoded_slash_or_nul_are_refused),
    T(over_long_paths_match_nothing),
};
TEST_MAIN(tests)
