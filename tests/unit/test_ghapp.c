/*
 * test_ghapp.c - the GitHub App JWT checked by the openssl command line against the public
 * half of a key made by `openssl genrsa` (header, claims, RS256 signature); the key file
 * checks (mode, type, size of the key); which repository URLs may get an installation token.
 * The token exchange and its cache are tested end to end against a fake GitHub in
 * tests/integration/test_ghapp.sh.
 */
#include "testlib.h"

#include "common/err.h"
#include "common/xmem.h"
#include "workspace/ghapp.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <sys/stat.h>

static char g_dir[256];

static void make_dir(void)
{
    snprintf(g_dir, sizeof(g_dir), "%s/test_ghapp.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ASSERT(mkdtemp(g_dir) != NULL);
}

static void make_key(const char *name, int bits)
{
    tsh("openssl genrsa -out %s/%s %d 2>/dev/null && chmod 600 %s/%s", g_dir, name, bits, g_dir,
        name);
}

static struct ghapp *open_app(const char *key, int expect_rc)
{
    char path[512], msg[256] = "";
    struct ghapp *a = NULL;
    snprintf(path, sizeof(path), "%s/%s", g_dir, key);
    struct ghapp_config cfg = {
        .app_id = 4242, .key_file = path, .api_base = "https://api.github.com"};
    int rc = ghapp_open(&cfg, &a, msg, sizeof(msg));
    if (rc != expect_rc) {
        TFAIL("ghapp_open(%s) = %d (%s), expected %d", key, rc, msg, expect_rc);
    }
    return a;
}

/* base64url -> bytes (out holds at least strlen(s)); returns the length. */
static size_t unb64url(const char *s, size_t n, unsigned char *out)
{
    char *t = xmalloc(n + 4);
    size_t i = 0;
    for (; i < n; i++) {
        t[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    }
    size_t pad = (4 - n % 4) % 4;
    for (size_t k = 0; k < pad; k++) {
        t[i++] = '=';
    }
    int len = EVP_DecodeBlock(out, (unsigned char *)t, (int)i);
    ASSERT(len >= 0);
    free(t);
    return (size_t)len - pad;
}

static void write_file(const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    ASSERT(f != NULL);
    ASSERT_EQ(fwrite(p, 1, n, f), n);
    fclose(f);
}

TEST(jwt_verifies_with_the_public_key)
{
    make_dir();
    make_key("app.pem", 2048);
    tsh("openssl rsa -in %s/app.pem -pubout -out %s/app.pub 2>/dev/null", g_dir, g_dir);
    struct ghapp *a = open_app("app.pem", 0);
    char *jwt = NULL;
    ASSERT_EQ(ghapp_jwt(a, 1700000000, &jwt), 0);
    ASSERT(strspn(jwt, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") ==
           strlen(jwt));
    char *dot1 = strchr(jwt, '.');
    ASSERT(dot1 != NULL);
    char *dot2 = strchr(dot1 + 1, '.');
    ASSERT(dot2 != NULL && strchr(dot2 + 1, '.') == NULL);

    unsigned char buf[1024];
    size_t n = unb64url(jwt, (size_t)(dot1 - jwt), buf);
    json_t *h = json_loadb((char *)buf, n, 0, NULL);
    ASSERT(h != NULL);
    ASSERT_STREQ(json_string_value(json_object_get(h, "alg")), "RS256");
    ASSERT_STREQ(json_string_value(json_object_get(h, "typ")), "JWT");
    json_decref(h);
    n = unb64url(dot1 + 1, (size_t)(dot2 - dot1 - 1), buf);
    json_t *c = json_loadb((char *)buf, n, 0, NULL);
    ASSERT(c != NULL);
    ASSERT_EQ(json_integer_value(json_object_get(c, "iat")), 1700000000 - 60);
    ASSERT_EQ(json_integer_value(json_object_get(c, "exp")), 1700000000 + 540);
    ASSERT_EQ(json_integer_value(json_object_get(c, "iss")), 4242);
    json_decref(c);

    /* the signature, checked by openssl with the public key only */
    write_file("signed", jwt, (size_t)(dot2 - jwt));
    n = unb64url(dot2 + 1, strlen(dot2 + 1), buf);
    ASSERT_EQ(n, 256); /* RSA-2048 */
    write_file("sig", buf, n);
    tsh("openssl dgst -sha256 -verify %s/app.pub -signature %s/sig %s/signed >/dev/null", g_dir,
        g_dir, g_dir);
    /* and a changed claim does not verify */
    dot2[-1] = dot2[-1] == 'A' ? 'B' : 'A';
    write_file("signed", jwt, (size_t)(dot2 - jwt));
    char *res = tout1("openssl dgst -sha256 -verify %s/app.pub -signature %s/sig %s/signed "
                      "2>/dev/null; echo rc=$?",
                      g_dir, g_dir, g_dir);
    ASSERT(strstr(res, "rc=0") == NULL);
    free(res);
    ghapp_wipe(jwt);
    ghapp_free(a);
    tsh("rm -rf %s", g_dir);
}

TEST(key_file_checks)
{
    make_dir();
    make_key("ok.pem", 2048);
    ghapp_free(open_app("ok.pem", 0));
    tsh("cp %s/ok.pem %s/open.pem && chmod 640 %s/open.pem", g_dir, g_dir, g_dir);
    ASSERT(open_app("open.pem", ERR_FORBIDDEN) == NULL);
    tsh("chmod 604 %s/open.pem", g_dir);
    ASSERT(open_app("open.pem", ERR_FORBIDDEN) == NULL);
    tsh("chmod 400 %s/open.pem", g_dir);
    ghapp_free(open_app("open.pem", 0));
    tsh("mkdir -m 700 %s/dir.pem", g_dir);
    ASSERT(open_app("dir.pem", ERR_FORBIDDEN) == NULL);
    ASSERT(open_app("missing.pem", ERR_NOT_FOUND) == NULL);
    tsh("echo not a key > %s/junk.pem && chmod 600 %s/junk.pem", g_dir, g_dir);
    ASSERT(open_app("junk.pem", ERR_INVALID) == NULL);
    make_key("small.pem", 1024);
    ASSERT(open_app("small.pem", ERR_INVALID) == NULL);
    char msg[256];
    struct ghapp *a = NULL;
    struct ghapp_config no_id = {.key_file = "x", .api_base = "https://api.github.com"};
    ASSERT_EQ(ghapp_open(&no_id, &a, msg, sizeof(msg)), ERR_INVALID);
    tsh("rm -rf %s", g_dir);
}

static int covers(struct ghapp *a, const char *url)
{
    char *o = NULL, *r = NULL;
    int yes = ghapp_covers(a, url, &o, &r);
    if (yes) {
        ASSERT_STREQ(o, "octo");
        ASSERT_STREQ(r, "hello");
    }
    free(o);
    free(r);
    return yes;
}

TEST(token_only_for_the_app_host)
{
    make_dir();
    make_key("app.pem", 2048);
    char path[512], msg[256];
    snprintf(path, sizeof(path), "%s/app.pem", g_dir);
    struct ghapp *a = NULL;
    struct ghapp_config cfg = {
        .app_id = 1, .key_file = path, .api_base = "https://api.github.com/"};
    ASSERT_EQ(ghapp_open(&cfg, &a, msg, sizeof(msg)), 0);
    ASSERT(covers(a, "https://github.com/octo/hello.git"));
    ASSERT(covers(a, "https://GitHub.com/octo/hello"));
    ASSERT(!covers(a, "http://github.com/octo/hello.git"));
    ASSERT(!covers(a, "https://github.com.evil.example/octo/hello.git"));
    ASSERT(!covers(a, "https://github.com@evil.example/octo/hello.git"));
    ASSERT(!covers(a, "https://github.com:8443/octo/hello.git"));
    ASSERT(!covers(a, "https://api.github.com/octo/hello.git"));
    ASSERT(!covers(a, "git@github.com:octo/hello.git"));
    ASSERT(!covers(a, "/srv/git/octo/hello.git"));
    ASSERT(!covers(a, "https://github.com/octo/../hello"));
    ASSERT(!covers(NULL, "https://github.com/octo/hello.git"));
    char *tok = (char *)"x";
    ASSERT_EQ(ghapp_token_for_url(a, "https://evil.example/octo/hello.git", NULL, &tok), 0);
    ASSERT(tok == NULL);
    ghapp_free(a);

    cfg.api_base = "http://127.0.0.1:8080/api/v3";
    ASSERT_EQ(ghapp_open(&cfg, &a, msg, sizeof(msg)), 0);
    ASSERT(covers(a, "http://127.0.0.1:8080/octo/hello.git"));
    ASSERT(!covers(a, "http://127.0.0.1:8081/octo/hello.git"));
    ghapp_free(a);
    tsh("rm -rf %s", g_dir);
}

static const struct test_case tests[] = {
    {"jwt_verifies_with_the_public_key", jwt_verifies_with_the_public_key},
    {"key_file_checks", key_file_checks},
    {"token_only_for_the_app_host", token_only_for_the_app_host},
};

TEST_MAIN(tests)
