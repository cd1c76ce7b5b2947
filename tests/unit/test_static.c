/*
 * test_static.c - the embedded web UI lookup (paths, ETags, CSP) and the DOM-selection
 * context checks of server/extension.c.
 */
#include "common/err.h"
#include "server/config.h"
#include "server/extension.h"
#include "server/static.h"
#include "testlib.h"

#include <jansson.h>

TEST(embedded_files)
{
    const struct static_file *f = static_find("/");
    ASSERT(f != NULL);
    ASSERT_STREQ(f->path, "/index.html");
    ASSERT(strncmp(f->ctype, "text/html", 9) == 0);
    ASSERT(f->len > 100);
    ASSERT(memmem(f->data, f->len, "/ui/app.js", 10) != NULL);
    f = static_find("/app.js");
    ASSERT(f != NULL);
    ASSERT(strncmp(f->ctype, "text/javascript", 15) == 0);
    ASSERT(f->etag[0] == '"' && f->etag[strlen(f->etag) - 1] == '"');
    ASSERT(static_find("/style.css") != NULL);
    /* The extension is not served; neither are made-up or traversal paths. */
    ASSERT(static_find("/extension/manifest.json") == NULL);
    ASSERT(static_find("/../Makefile") == NULL);
    ASSERT(static_find("/%2e%2e/x") == NULL);
    ASSERT(static_find("/nope.js") == NULL);
}

TEST(lookup_and_etag)
{
    struct static_reply r;
    static_lookup("/", NULL, &r);
    ASSERT_EQ(r.status, 200);
    static_lookup("/index.html", NULL, &r);
    ASSERT_EQ(r.status, 200);
    static_lookup("/ui/app.js", NULL, &r);
    ASSERT_EQ(r.status, 200);
    const char *etag = r.file->etag;
    static_lookup("/ui/app.js", etag, &r);
    ASSERT_EQ(r.status, 304);
    char list[200];
    snprintf(list, sizeof(list), "\"zzz\", W/%s", etag);
    static_lookup("/ui/app.js", list, &r);
    ASSERT_EQ(r.status, 304);
    static_lookup("/ui/app.js", "\"other\"", &r);
    ASSERT_EQ(r.status, 200);
    static_lookup("/ui/app.js", "*", &r);
    ASSERT_EQ(r.status, 304);
    static_lookup("/app.js", NULL, &r); /* assets live under /ui/ only */
    ASSERT_EQ(r.status, 404);
    static_lookup("/ui/../index.html", NULL, &r);
    ASSERT_EQ(r.status, 404);
    static_lookup("/v1/sessions", NULL, &r);
    ASSERT_EQ(r.status, 404);
}

TEST(csp)
{
    char *c = static_csp_new(NULL);
    ASSERT(strstr(c, "default-src 'none'") != NULL);
    ASSERT(strstr(c, "script-src 'self';") != NULL);
    ASSERT(strstr(c, "unsafe") == NULL);
    struct config cfg;
    memset(&cfg, 0, sizeof(cfg));
    char *origins[] = {"chrome-extension://abcdefghijklmnopabcdefghijklmnop",
                       "https://other.example", "chrome-extension://x; script-src *"};
    cfg.origins.v = origins;
    cfg.origins.n = 3;
    free(c);
    c = static_csp_new(&cfg);
    ASSERT(
        strstr(c, "frame-ancestors 'self' chrome-extension://abcdefghijklmnopabcdefghijklmnop") !=
        NULL);
    ASSERT(strstr(c, "other.example") == NULL); /* only extensions may frame the UI */
    ASSERT(strstr(c, "script-src *") == NULL);  /* no header injection */
    free(c);
}

static json_t *sel(const char *text)
{
    return json_pack("{s:s, s:[{s:s, s:s, s:[s], s:{s:i, s:i, s:i, s:i}, s:n}]}", "type",
                     "dom_selection", "elements", "tag", "button", "text", text, "classes", "btn",
                     "rect", "x", 1, "y", 2, "width", 3, "height", 4, "reactComponent");
}

TEST(context_check)
{
    char msg[200];
    json_t *c = sel("Continue");
    ASSERT_EQ(ext_is_dom_selection(c), 1);
    ASSERT_EQ(ext_context_check(c, msg, sizeof(msg)), 0);
    json_decref(c);
    /* 100 characters (multi-byte) pass, 101 do not. */
    char t[400];
    size_t n = 0;
    for (int i = 0; i < 100; i++) {
        memcpy(t + n, "\xc3\xa9", 2); /* e-acute: 2 bytes, 1 character */
        n += 2;
    }
    t[n] = 0;
    c = sel(t);
    ASSERT_EQ(ext_context_check(c, msg, sizeof(msg)), 0);
    json_decref(c);
    t[n] = 'x';
    t[n + 1] = 0;
    c = sel(t);
    ASSERT_EQ(ext_context_check(c, msg, sizeof(msg)), ERR_INVALID);
    ASSERT(strstr(msg, "100") != NULL);
    json_decref(c);
    c = json_pack("{s:s, s:[i]}", "type", "dom_selection", "elements", 3);
    ASSERT_EQ(ext_context_check(c, msg, sizeof(msg)), ERR_INVALID);
    json_decref(c);
    c = json_pack("{s:s, s:s}", "type", "dom_selection", "elements", "x");
    ASSERT_EQ(ext_context_check(c, msg, sizeof(msg)), ERR_INVALID);
    json_decref(c);
    c = json_pack("{s:s, s:[{s:s, s:{s:s}}]}", "type", "dom_selection", "elements", "tag", "a",
                  "rect", "x", "1");
    ASSERT_EQ(ext_context_check(c, msg, sizeof(msg)), ERR_INVALID);
    json_decref(c);
    /* Other kinds of context are not ours to judge. */
    c = json_pack("{s:s}", "note", "anything");
    ASSERT_EQ(ext_is_dom_selection(c), 0);
    ASSERT_EQ(ext_context_check(c, msg, sizeof(msg)), 0);
    json_decref(c);
    c = json_pack("{s:[]}", "elements");
    ASSERT_EQ(ext_is_dom_selection(c), 1);
    json_decref(c);
}

static const struct test_case tests[] = {
    T(embedded_files),
    T(lookup_and_etag),
    T(csp),
    T(context_check),
};
TEST_MAIN(tests)
