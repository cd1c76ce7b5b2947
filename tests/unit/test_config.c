/*
 * test_config.c - configuration: defaults, JSON file, env, flags, precedence, errors.
 */
#include "common/err.h"
#include "server/config.h"
#include "testlib.h"

#include <stdint.h>

static struct config *load(int argc, char **argv, char **envp)
{
    struct config *c = NULL;
    char msg[256] = "";
    int rc = config_load(argc, argv, envp, &c, msg, sizeof(msg));
    if (rc) {
        TFAIL("config_load: %s", msg);
    }
    return c;
}

static int load_err(int argc, char **argv, char **envp, char *msg, size_t n)
{
    struct config *c = NULL;
    int rc = config_load(argc, argv, envp, &c, msg, n);
    config_free(c);
    return rc;
}

static char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/test_config.XXXXXX");
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    return path;
}

TEST(defaults)
{
    char *argv[] = {"sessiond", NULL};
    char *envp[] = {NULL};
    struct config *c = load(1, argv, envp);
    ASSERT_STREQ(c->listen, "127.0.0.1:8080");
    ASSERT_STREQ(c->data_dir, "./data");
    ASSERT_STREQ(c->durability, "normal");
    ASSERT_STREQ(c->admin_token, "");
    ASSERT_EQ(c->threads, 4);
    ASSERT_EQ(c->max_body, 1048576);
    ASSERT_EQ(c->max_content_chars, 64000);
    ASSERT_EQ(c->max_artifact_bytes, 16 * 1024 * 1024);
    ASSERT_EQ(c->max_open_sessions, 256);
    ASSERT_EQ(c->max_unfinished_prompts, 10);
    ASSERT_EQ(c->request_log, 1);
    ASSERT_EQ(c->origins.n, 0);
    config_free(c);
}

TEST(flags_both_forms)
{
    char *argv[] = {
        "sessiond", "--listen",      "0.0.0.0:9000", "--data-dir=/tmp/x",     "--threads",
        "8",        "--request-log", "false",        "--max-open-sessions=3", NULL};
    char *envp[] = {NULL};
    struct config *c = load(9, argv, envp);
    ASSERT_STREQ(c->listen, "0.0.0.0:9000");
    ASSERT_STREQ(c->data_dir, "/tmp/x");
    ASSERT_EQ(c->threads, 8);
    ASSERT_EQ(c->request_log, 0);
    ASSERT_EQ(c->max_open_sessions, 3);
    config_free(c);
}

TEST(bare_boolean_flag)
{
    char *argv[] = {"sessiond", "--request-log", "--threads", "2", NULL};
    char *envp[] = {NULL};
    struct config *c = load(4, argv, envp);
    ASSERT_EQ(c->request_log, 1);
    ASSERT_EQ(c->threads, 2);
    config_free(c);
}

TEST(env_vars)
{
    char *argv[] = {"sessiond", NULL};
    char *envp[] = {"SESSIOND_LISTEN=127.0.0.1:0",
                    "SESSIOND_ADMIN_TOKEN=s3cret",
                    "SESSIOND_MAX_BODY=2048",
                    "SESSIOND_ORIGINS=https://a.example, https://b.example",
                    "OTHER=1",
                    NULL};
    struct config *c = load(1, argv, envp);
    ASSERT_STREQ(c->listen, "127.0.0.1:0");
    ASSERT_STREQ(c->admin_token, "s3cret");
    ASSERT_EQ(c->max_body, 2048);
    ASSERT_EQ(c->origins.n, 2);
    ASSERT_STREQ(c->origins.v[1], "https://b.example");
    config_free(c);
}

TEST(file_env_flag_precedence)
{
    char *path = write_tmp("{\"listen\":\"127.0.0.1:1111\",\"threads\":2,\"data_dir\":\"/f\","
                           "\"origins\":[\"https://x.example\"],\"request_log\":false}");
    char *argv[] = {"sessiond", "--config", path, "--threads", "6", NULL};
    char *envp[] = {"SESSIOND_LISTEN=127.0.0.1:2222", "SESSIOND_THREADS=5", NULL};
    struct config *c = load(5, argv, envp);
    ASSERT_STREQ(c->listen, "127.0.0.1:2222"); /* env beats file */
    ASSERT_EQ(c->threads, 6);                  /* flag beats env */
    ASSERT_STREQ(c->data_dir, "/f");           /* file beats default */
    ASSERT_EQ(c->origins.n, 1);
    ASSERT_EQ(c->request_log, 0);
    ASSERT_STREQ(c->config_file, path);
    config_free(c);
    unlink(path);
}

TEST(config_file_from_env)
{
    char *path = write_tmp("{\"durability\":\"full\"}");
    char env[128];
    snprintf(env, sizeof(env), "SESSIOND_CONFIG=%s", path);
    char *argv[] = {"sessiond", NULL};
    char *envp[] = {env, NULL};
    struct config *c = load(1, argv, envp);
    ASSERT_STREQ(c->durability, "full");
    config_free(c);
    unlink(path);
}

TEST(errors)
{
    char msg[256];
    char *envp[] = {NULL};
    char *a1[] = {"sessiond", "--no-such-flag", "1", NULL};
    ASSERT_EQ(load_err(3, a1, envp, msg, sizeof(msg)), ERR_INVALID);
    ASSERT(strstr(msg, "--no-such-flag"));
    char *a2[] = {"sessiond", "--threads", "many", NULL};
    ASSERT_EQ(load_err(3, a2, envp, msg, sizeof(msg)), ERR_INVALID);
    char *a3[] = {"sessiond", "--threads", "0", NULL};
    ASSERT_EQ(load_err(3, a3, envp, msg, sizeof(msg)), ERR_INVALID);
    char *a4[] = {"sessiond", "--durability", "sometimes", NULL};
    ASSERT_EQ(load_err(3, a4, envp, msg, sizeof(msg)), ERR_INVALID);
    char *a5[] = {"sessiond", "--listen", "nowhere", NULL};
    ASSERT_EQ(load_err(3, a5, envp, msg, sizeof(msg)), ERR_INVALID);
    char *a6[] = {"sessiond", "--listen", NULL};
    ASSERT_EQ(load_err(2, a6, envp, msg, sizeof(msg)), ERR_INVALID);
    char *a7[] = {"sessiond", "positional", NULL};
    ASSERT_EQ(load_err(2, a7, envp, msg, sizeof(msg)), ERR_INVALID);
    char *path = write_tmp("{\"listen\":8080}");
    char *a8[] = {"sessiond", "--config", path, NULL};
    ASSERT_EQ(load_err(3, a8, envp, msg, sizeof(msg)), ERR_INVALID);
    ASSERT(strstr(msg, "listen"));
    unlink(path);
    path = write_tmp("{\"lisen\":\"x\"}");
    char *a9[] = {"sessiond", "--config", path, NULL};
    ASSERT_EQ(load_err(3, a9, envp, msg, sizeof(msg)), ERR_INVALID);
    ASSERT(strstr(msg, "unknown key 'lisen'"));
    unlink(path);
    path = write_tmp("{not json");
    char *a10[] = {"sessiond", "--config", path, NULL};
    ASSERT_EQ(load_err(3, a10, envp, msg, sizeof(msg)), ERR_INVALID);
    unlink(path);
    char *a11[] = {"sessiond", "--config", "/nonexistent/sessiond.json", NULL};
    ASSERT_EQ(load_err(3, a11, envp, msg, sizeof(msg)), ERR_INVALID);
    char *a12[] = {"sessiond", NULL};
    char *e12[] = {"SESSIOND_MAX_BODY=lots", NULL};
    ASSERT_EQ(load_err(1, a12, e12, msg, sizeof(msg)), ERR_INVALID);
    ASSERT(strstr(msg, "SESSIOND_MAX_BODY"));
}

TEST(split_listen)
{
    char host[64];
    int port = -1;
    ASSERT_EQ(config_split_listen("127.0.0.1:8080", host, sizeof(host), &port), 0);
    ASSERT_STREQ(host, "127.0.0.1");
    ASSERT_EQ(port, 8080);
    ASSERT_EQ(config_split_listen("[::1]:0", host, sizeof(host), &port), 0);
    ASSERT_STREQ(host, "::1");
    ASSERT_EQ(port, 0);
    ASSERT_EQ(config_split_listen(":9000", host, sizeof(host), &port), 0);
    ASSERT_STREQ(host, "127.0.0.1");
    ASSERT_EQ(port, 9000);
    ASSERT_EQ(config_split_listen("9001", host, sizeof(host), &port), 0);
    ASSERT_EQ(port, 9001);
    ASSERT_EQ(config_split_listen("localhost:65536", host, sizeof(host), &port), ERR_INVALID);
    ASSERT_EQ(config_split_listen("::1:80", host, sizeof(host), &port), ERR_INVALID);
    ASSERT_EQ(config_split_listen("host:", host, sizeof(host), &port), ERR_INVALID);
    ASSERT_EQ(config_split_listen("", host, sizeof(host), &port), ERR_INVALID);
}

TEST(origins)
{
    char *argv[] = {"sessiond",  "--public-url",           "https://agents.example.com/base/",
                    "--origins", "chrome-extension://abc", NULL};
    char *envp[] = {NULL};
    struct config *c = load(5, argv, envp);
    ASSERT(config_origin_allowed(c, "https://agents.example.com"));
    ASSERT(config_origin_allowed(c, "chrome-extension://abc"));
    ASSERT(!config_origin_allowed(c, "https://evil.example"));
    ASSERT(!config_origin_allowed(c, "https://agents.example.com.evil.example"));
    ASSERT(!config_origin_allowed(c, NULL));
    config_free(c);
}

TEST(blocked_commands)
{
    char *argv[] = {"sessiond", "--blocked-commands", "/usr/bin/curl, wget", NULL};
    char *envp[] = {NULL};
    struct config *c = load(3, argv, envp);
    ASSERT_EQ((long)c->blocked_commands.n, 2L);
    ASSERT(!strcmp(c->blocked_commands.v[0], "/usr/bin/curl"));
    ASSERT(!strcmp(c->blocked_commands.v[1], "wget"));
    config_free(c);
    static const char *const bad[] = {
        "bin/curl", "/usr/../bin/curl", "/usr/bin/", "/usr//curl", "/./curl", "..", "/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *av[] = {"sessiond", "--blocked-commands", (char *)bad[i], NULL};
        char msg[256] = "";
        ASSERT_EQ(load_err(3, av, envp, msg, sizeof msg), ERR_INVALID);
        ASSERT(strstr(msg, "blocked_commands"));
    }
}

/* egress.default entries are checked and normalised; egress.hosts is an object of DNS name ->
 * IP address, from the file's nested object or as JSON text. */
TEST(egress_settings)
{
    char *path = write_tmp("{\"egress\":{\"default\":[\"Registry.NPMjs.org.:443\"],"
                           "\"hosts\":{\"registry.internal\":\"10.0.0.5\"}}}");
    char *argv[] = {"sessiond", "--config", path, NULL};
    char *envp[] = {NULL};
    struct config *c = load(3, argv, envp);
    ASSERT_EQ((long)c->egress_default.n, 1L);
    ASSERT_STREQ(c->egress_default.v[0], "registry.npmjs.org:443");
    ASSERT(strstr(c->egress_hosts, "\"registry.internal\":\"10.0.0.5\"") != NULL);
    config_free(c);
    unlink(path);
    static const char *const bad[][2] = {
        {"--egress-default", "registry.npmjs.org"},
        {"--egress-hosts", "[\"registry.internal\"]"},
        {"--egress-hosts", "{\"registry.internal\":5}"},
        {"--egress-hosts", "{\"registry.internal\":\"registry.other\"}"},
        {"--egress-hosts", "{\"10.0.0.5\":\"10.0.0.5\"}"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *av[] = {"sessiond", (char *)bad[i][0], (char *)bad[i][1], NULL};
        char msg[256] = "";
        ASSERT_EQ(load_err(3, av, envp, msg, sizeof msg), ERR_INVALID);
        ASSERT(strstr(msg, "egress."));
    }
}

TEST(dump_masks_secrets)
{
    char *argv[] = {"sessiond", "--admin-token", "topsecret", NULL};
    char *envp[] = {NULL};
    struct config *c = load(3, argv, envp);
    char *d = config_dump(c);
    ASSERT(!strstr(d, "topsecret"));
    ASSERT(strstr(d, "\"listen\":\"127.0.0.1:8080\""));
    free(d);
    config_free(c);
}

/* github.app_token is the old name of github.token: honoured when github.token is unset. */
TEST(github_token_alias)
{
    char *envp[] = {"SESSIOND_GITHUB_APP_TOKEN=old_name_tok", NULL};
    char *argv[] = {"sessiond", NULL};
    struct config *c = load(1, argv, envp);
    ASSERT_STREQ(c->github_token, "old_name_tok");
    config_free(c);
    char *argv2[] = {"sessiond", "--github-token", "new_name_tok", NULL};
    c = load(3, argv2, envp);
    ASSERT_STREQ(c->github_token, "new_name_tok");
    char *d = config_dump(c);
    ASSERT(!strstr(d, "name_tok"));
    free(d);
    config_free(c);
    char *argv3[] = {"sessiond", "--github-app-id", "123", "--github-installation-id", "9", NULL};
    char *none[] = {NULL};
    c = load(5, argv3, none);
    ASSERT_EQ(c->github_app_id, 123);
    ASSERT_EQ(c->github_installation_id, 9);
    ASSERT_STREQ(c->github_token, "");
    config_free(c);
}

static const struct test_case tests[] = {
    T(defaults),
    T(flags_both_forms),
    T(bare_boolean_flag),
    T(env_vars),
    T(file_env_flag_precedence),
    T(config_file_from_env),
    T(errors),
    T(split_listen),
    T(origins),
    T(blocked_commands),
    T(egress_settings),
    T(dump_masks_secrets),
    T(github_token_alias),
};
TEST_MAIN(tests)
