/*
 * test_github.c - pull request creation against a local stand-in for the GitHub API (a tiny
 * HTTP server thread in this file) checking path, headers (the author's token) and the JSON
 * body; error mapping; repository URL parsing.
 */
#include "testlib.h"

#include "common/err.h"
#include "common/xmem.h"
#include "workspace/github.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

struct standin {
    int lfd;
    int port;
    int status;         /* what to answer */
    const char *answer; /* body to answer */
    char req[65536];    /* the request received (headers + body) */
    size_t req_len;
    pthread_t th;
};

static void *standin_main(void *arg)
{
    struct standin *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) {
        return NULL;
    }
    size_t body_want = (size_t)-1, hdr_end = 0;
    while (s->req_len < sizeof(s->req) - 1) {
        ssize_t r = read(fd, s->req + s->req_len, sizeof(s->req) - 1 - s->req_len);
        if (r <= 0) {
            break;
        }
        s->req_len += (size_t)r;
        s->req[s->req_len] = 0;
        char *e = strstr(s->req, "\r\n\r\n");
        if (e && body_want == (size_t)-1) {
            hdr_end = (size_t)(e - s->req) + 4;
            char *cl = strcasestr(s->req, "\r\ncontent-length:");
            body_want = cl ? (size_t)strtoul(cl + 17, NULL, 10) : 0;
        }
        if (body_want != (size_t)-1 && s->req_len >= hdr_end + body_want) {
            break;
        }
    }
    char resp[4096];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     s->status, strlen(s->answer), s->answer);
    ASSERT(write(fd, resp, (size_t)n) == n);
    close(fd);
    return NULL;
}

static void standin_start(struct standin *s, int status, const char *answer)
{
    memset(s, 0, sizeof(*s));
    s->status = status;
    s->answer = answer;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT_EQ(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    ASSERT_EQ(listen(s->lfd, 4), 0);
    socklen_t al = sizeof(a);
    getsockname(s->lfd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    pthread_create(&s->th, NULL, standin_main, s);
}

static void standin_join(struct standin *s)
{
    pthread_join(s->th, NULL);
    close(s->lfd);
}

static const char *header(const struct standin *s, const char *name)
{
    static char val[1024];
    char pat[128];
    snprintf(pat, sizeof(pat), "\r\n%s:", name);
    const char *h = strcasestr(s->req, pat);
    if (!h) {
        return NULL;
    }
    h += strlen(pat);
    while (*h == ' ') {
        h++;
    }
    size_t l = strcspn(h, "\r\n");
    snprintf(val, sizeof(val), "%.*s", (int)l, h);
    return val;
}

TEST(pr_request_reaches_standin)
{
    struct standin s;
    standin_start(&s, 201,
                  "{\"number\":42,\"html_url\":\"https://github.example/octo/hello/pull/42\","
                  "\"url\":\"https://api.example/repos/octo/hello/pulls/42\"}");
    char base[128], msg[256];
    snprintf(base, sizeof(base), "http://127.0.0.1:%d/api/v3/", s.port);
    struct github_pr pr = {.api_base = base,
                           .owner = "octo",
                           .repo = "hello",
                           .token = "ghp_alice_token",
                           .title = "Fix the \"login\" bug",
                           .body = "Made by sessiond\nsession s_1",
                           .head = "sessiond/s_1",
                           .base = "main"};
    json_t *out = NULL;
    ASSERT_EQ(github_create_pr(&pr, &out, msg, sizeof(msg)), 0);
    standin_join(&s);
    const char *line1 = "POST /api/v3/repos/octo/hello/pulls HTTP/1.1\r\n";
    ASSERT(strncmp(s.req, line1, strlen(line1)) == 0);
    ASSERT_STREQ(header(&s, "Authorization"), "Bearer ghp_alice_token");
    ASSERT_STREQ(header(&s, "Accept"), "application/vnd.github+json");
    ASSERT_STREQ(header(&s, "X-GitHub-Api-Version"), "2022-11-28");
    ASSERT_STREQ(header(&s, "Content-Type"), "application/json");
    const char *body = strstr(s.req, "\r\n\r\n") + 4;
    json_t *j = json_loads(body, 0, NULL);
    ASSERT(j != NULL);
    ASSERT_STREQ(json_string_value(json_object_get(j, "title")), "Fix the \"login\" bug");
    ASSERT_STREQ(json_string_value(json_object_get(j, "head")), "sessiond/s_1");
    ASSERT_STREQ(json_string_value(json_object_get(j, "base")), "main");
    ASSERT_STREQ(json_string_value(json_object_get(j, "body")), "Made by sessiond\nsession s_1");
    ASSERT(json_is_false(json_object_get(j, "draft")));
    json_decref(j);
    ASSERT_EQ(json_integer_value(json_object_get(out, "number")), 42);
    ASSERT_STREQ(json_string_value(json_object_get(out, "url")),
                 "https://github.example/octo/hello/pull/42");
    json_decref(out);
}

TEST(pr_errors_map)
{
    struct standin s;
    standin_start(&s, 422,
                  "{\"message\":\"Validation Failed\",\"errors\":[{\"message\":\"No commits "
                  "between main and sessiond/s_1\"}]}");
    char base[128], msg[256];
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", s.port);
    struct github_pr pr = {.api_base = base,
                           .owner = "octo",
                           .repo = "hello",
                           .token = "ghp_secret_value",
                           .title = "t",
                           .head = "h",
                           .base = "main"};
    json_t *out = NULL;
    ASSERT_EQ(github_create_pr(&pr, &out, msg, sizeof(msg)), ERR_UNPROCESSABLE);
    standin_join(&s);
    ASSERT(strstr(msg, "No commits between") != NULL);
    ASSERT(strstr(msg, "ghp_secret_value") == NULL);
    ASSERT(out == NULL);

    standin_start(&s, 401, "{\"message\":\"Bad credentials\"}");
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", s.port);
    ASSERT_EQ(github_create_pr(&pr, &out, msg, sizeof(msg)), ERR_AUTH);
    standin_join(&s);

    /* nothing listening */
    ASSERT_EQ(github_create_pr(&(struct github_pr){.api_base = "http://127.0.0.1:1",
                                                   .owner = "o",
                                                   .repo = "r",
                                                   .token = "t",
                                                   .title = "t",
                                                   .head = "h",
                                                   .base = "b"},
                               &out, msg, sizeof(msg)),
              ERR_UNAVAILABLE);
    /* bad owner */
    ASSERT_EQ(github_create_pr(&(struct github_pr){.api_base = base,
                                                   .owner = "../x",
                                                   .repo = "r",
                                                   .token = "t",
                                                   .title = "t",
                                                   .head = "h",
                                                   .base = "b"},
                               &out, msg, sizeof(msg)),
              ERR_INVALID);
}

TEST(parse_urls)
{
    char *o = NULL, *r = NULL;
    ASSERT_EQ(github_parse_url("https://github.com/octo/hello.git", &o, &r), 0);
    ASSERT_STREQ(o, "octo");
    ASSERT_STREQ(r, "hello");
    free(o);
    free(r);
    ASSERT_EQ(github_parse_url("git@github.com:octo/hello-world.git", &o, &r), 0);
    ASSERT_STREQ(r, "hello-world");
    free(o);
    free(r);
    ASSERT_EQ(github_parse_url("https://ghe.corp:8443/team/repo/", &o, &r), 0);
    ASSERT_STREQ(o, "team");
    ASSERT_STREQ(r, "repo");
    free(o);
    free(r);
    ASSERT_EQ(github_parse_url("/srv/git/repo.git", &o, &r), ERR_INVALID);
    ASSERT_EQ(github_parse_url("https://github.com/a/b/c", &o, &r), ERR_INVALID);
}

static const struct test_case tests[] = {
    T(pr_request_reaches_standin),
    T(pr_errors_map),
    T(parse_urls),
};
TEST_MAIN(tests)
