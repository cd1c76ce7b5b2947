/*
 * test_egress.c - the egress allow-list proxy against a loopback upstream: allowed CONNECT
 * tunnels and absolute-URI forwards, refused hosts and ports, names resolving to private
 * addresses, malformed requests, the Unix socket listener, replacing and closing listeners.
 */
#include "testlib.h"

#include "common/err.h"
#include "sandbox/egress/egress.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

/* ---- a loopback upstream: answers every request with its own request head as the body ---- */

static int up_fd = -1;
static int up_port;

static void *upstream_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    for (;;) { /* one request per connection; CONNECT tunnels send theirs through */
        char head[8192];
        size_t n = 0;
        while (n < sizeof(head) - 1) {
            ssize_t r = recv(fd, head + n, sizeof(head) - 1 - n, 0);
            if (r <= 0) {
                close(fd);
                return NULL;
            }
            n += (size_t)r;
            head[n] = '\0';
            if (strstr(head, "\r\n\r\n")) {
                break;
            }
        }
        if (strstr(head, " /chunked ")) {
            /* A chunked response on a connection the upstream keeps open (as some servers do
             * despite Connection: close): the proxy must find its end by the framing. */
            static const char ch[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                     "Connection: keep-alive\r\n\r\n"
                                     "5;ext=1\r\nhello\r\n7\r\n chunky\r\n0\r\nX-T: 1\r\n\r\n";
            if (send(fd, ch, sizeof(ch) - 1, MSG_NOSIGNAL) > 0) {
                sleep(20);
            }
            break;
        }
        char resp[9000];
        int k = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                         strlen(head), head);
        if (send(fd, resp, (size_t)k, MSG_NOSIGNAL) < 0) {
            break;
        }
        break;
    }
    close(fd);
    return NULL;
}

static void *upstream_main(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(up_fd, NULL, NULL);
        if (c < 0) {
            return NULL;
        }
        pthread_t t;
        pthread_create(&t, NULL, upstream_conn, (void *)(intptr_t)c);
        pthread_detach(t);
    }
}

static void upstream_start(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7F000001)};
    socklen_t sl = sizeof(sin);
    up_fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(up_fd >= 0);
    ASSERT_EQ(bind(up_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    ASSERT_EQ(listen(up_fd, 16), 0);
    ASSERT_EQ(getsockname(up_fd, (struct sockaddr *)&sin, &sl), 0);
    up_port = ntohs(sin.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, upstream_main, NULL);
    pthread_detach(t);
}

/* ---- the proxy and its deny callback ---- */

static pthread_mutex_t deny_lock = PTHREAD_MUTEX_INITIALIZER;
static int denies;
static char deny_last[512];

static void on_deny(void *ctx, const char *name, const char *host, int port, const char *reason)
{
    (void)ctx;
    pthread_mutex_lock(&deny_lock);
    denies++;
    snprintf(deny_last, sizeof(deny_last), "%s %s:%d %s", name, host, port, reason);
    pthread_mutex_unlock(&deny_lock);
}

static struct egress *start_proxy(void)
{
    struct egress_config cfg = {.connect_timeout_ms = 2000, .on_deny = on_deny};
    struct egress *e;
    ASSERT_EQ(egress_start(&cfg, &e), 0);
    return e;
}

static int tcp_connect(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(0x7F000001)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(fd >= 0);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_str(int fd, const char *s)
{
    ASSERT_EQ(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Read until the peer closes (or 5 s pass); the bytes go to out (NUL terminated). */
static size_t read_all(int fd, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 5000) <= 0 || n + 1 >= cap) {
            break;
        }
        ssize_t r = recv(fd, out + n, cap - 1 - n, 0);
        if (r <= 0) {
            break;
        }
        n += (size_t)r;
    }
    out[n] = '\0';
    return n;
}

/* Read one response head (through the blank line). */
static void read_head(int fd, char *out, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        ASSERT(poll(&pf, 1, 5000) > 0);
        ssize_t r = recv(fd, out + n, 1, 0);
        ASSERT(r == 1);
        n++;
        out[n] = '\0';
        if (n >= 4 && memcmp(out + n - 4, "\r\n\r\n", 4) == 0) {
            return;
        }
    }
    TFAIL("response head too long");
}

/* Read one response with a Content-Length body; returns its length in out. */
static void read_response(int fd, char *out, size_t cap)
{
    read_head(fd, out, cap);
    const char *cl = strstr(out, "Content-Length: ");
    ASSERT(cl != NULL);
    size_t body = (size_t)strtoul(cl + 16, NULL, 10), n = strlen(out);
    ASSERT(n + body < cap);
    while (body > 0) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        ASSERT(poll(&pf, 1, 5000) > 0);
        ssize_t r = recv(fd, out + n, body, 0);
        ASSERT(r > 0);
        n += (size_t)r;
        body -= (size_t)r;
    }
    out[n] = '\0';
}

static int open_tcp(struct egress *e, const char *const *allow)
{
    int port = 0;
    ASSERT_EQ(egress_open(e, "s_test", allow, NULL, &port), 0);
    ASSERT(port > 0);
    return port;
}

TEST(connect_allowed)
{
    upstream_start();
    struct egress *e = start_proxy();
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "127.0.0.1:%d", up_port);
    const char *allow[] = {allow0, NULL};
    int port = open_tcp(e, allow);
    int fd = tcp_connect(port);
    char req[256], resp[16384];
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
             up_port, up_port);
    send_str(fd, req);
    read_head(fd, resp, sizeof(resp));
    ASSERT(strncmp(resp, "HTTP/1.1 200", 12) == 0);
    send_str(fd, "GET /through-the-tunnel HTTP/1.1\r\nHost: x\r\n\r\n");
    read_all(fd, resp, sizeof(resp));
    ASSERT(strstr(resp, "200 OK") != NULL);
    ASSERT(strstr(resp, "GET /through-the-tunnel HTTP/1.1") != NULL);
    close(fd);
    struct egress_stats st;
    egress_get_stats(e, &st);
    ASSERT_EQ(st.allowed, 1);
    ASSERT_EQ(st.denied, 0);
    ASSERT(st.bytes > 0);
    egress_stop(e);
}

TEST(http_forward)
{
    upstream_start();
    struct egress *e = start_proxy();
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "127.0.0.1:%d", up_port);
    const char *allow[] = {allow0, NULL};
    int fd = tcp_connect(open_tcp(e, allow));
    char req[512], resp[16384];
    snprintf(req, sizeof(req),
             "POST http://127.0.0.1:%d/v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
             "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n"
             "Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
             up_port, up_port);
    send_str(fd, req);
    read_response(fd, resp, sizeof(resp));
    ASSERT(strstr(resp, "HTTP/1.1 200 OK") != NULL);
    /* the upstream saw an origin-form request without proxy headers, with Connection: close */
    ASSERT(strstr(resp, "POST /v1/messages?beta=true HTTP/1.1\r\n") != NULL);
    ASSERT(strstr(resp, "Proxy-") == NULL);
    ASSERT(strstr(resp, "keep-alive") == NULL);
    ASSERT(strstr(resp, "Connection: close\r\n\r\n") != NULL);
    /* the client's connection stays usable: two pipelined requests, two responses, in order
     * (Bun's fetch pipelines requests through a proxy) */
    snprintf(req, sizeof(req),
             "GET http://127.0.0.1:%d/first HTTP/1.1\r\nHost: h\r\n\r\n"
             "POST http://127.0.0.1:%d/second HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
             up_port, up_port);
    send_str(fd, req);
    read_response(fd, resp, sizeof(resp));
    ASSERT(strstr(resp, "GET /first HTTP/1.1") != NULL);
    *strstr(resp, "\r\n\r\n") = '\0'; /* the response head says nothing of closing */
    ASSERT(strstr(resp, "Connection:") == NULL);
    read_response(fd, resp, sizeof(resp));
    ASSERT(strstr(resp, "POST /second HTTP/1.1") != NULL);
    /* a chunked request body (Bun sends them), then a pipelined request */
    snprintf(req, sizeof(req),
             "POST http://127.0.0.1:%d/chunked-req HTTP/1.1\r\nHost: h\r\n"
             "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
             "GET http://127.0.0.1:%d/next HTTP/1.1\r\nHost: h\r\n\r\n",
             up_port, up_port);
    send_str(fd, req);
    read_response(fd, resp, sizeof(resp));
    ASSERT(strstr(resp, "POST /chunked-req HTTP/1.1") != NULL);
    read_response(fd, resp, sizeof(resp));
    ASSERT(strstr(resp, "GET /next HTTP/1.1") != NULL);
    /* a chunked response from an upstream that does not close, then another request */
    snprintf(req, sizeof(req),
             "GET http://127.0.0.1:%d/chunked HTTP/1.1\r\nHost: h\r\n\r\n"
             "GET http://127.0.0.1:%d/after HTTP/1.1\r\nHost: h\r\n\r\n",
             up_port, up_port);
    send_str(fd, req);
    read_head(fd, resp, sizeof(resp));
    ASSERT(strstr(resp, "Transfer-Encoding: chunked") != NULL);
    static const char body[] = "5;ext=1\r\nhello\r\n7\r\n chunky\r\n0\r\nX-T: 1\r\n\r\n";
    char got[128];
    size_t n = 0;
    while (n < sizeof(body) - 1) {
        ssize_t r = recv(fd, got + n, sizeof(body) - 1 - n, 0);
        ASSERT(r > 0);
        n += (size_t)r;
    }
    ASSERT(memcmp(got, body, sizeof(body) - 1) == 0);
    read_response(fd, resp, sizeof(resp)); /* arrives although /chunked's upstream is open */
    ASSERT(strstr(resp, "GET /after HTTP/1.1") != NULL);
    close(fd);
    egress_stop(e);
}

static void expect_denied(int port, const char *req, const char *what)
{
    char resp[4096];
    int before;
    pthread_mutex_lock(&deny_lock);
    before = denies;
    pthread_mutex_unlock(&deny_lock);
    int fd = tcp_connect(port);
    send_str(fd, req);
    read_all(fd, resp, sizeof(resp));
    close(fd);
    if (strncmp(resp, "HTTP/1.1 403", 12) != 0) {
        TFAIL("%s: expected 403, got: %.80s", what, resp);
    }
    ASSERT(strstr(resp, "X-Sessiond-Egress: denied") != NULL);
    pthread_mutex_lock(&deny_lock);
    ASSERT_EQ(denies, before + 1);
    pthread_mutex_unlock(&deny_lock);
}

TEST(denied_host_and_port)
{
    upstream_start();
    struct egress *e = start_proxy();
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "127.0.0.1:%d", up_port);
    const char *allow[] = {allow0, "api.example.com:443", NULL};
    int port = open_tcp(e, allow);
    expect_denied(port, "CONNECT evil.example.org:443 HTTP/1.1\r\n\r\n", "other host");
    ASSERT(strstr(deny_last, "s_test evil.example.org:443 not on") != NULL);
    expect_denied(port, "CONNECT api.example.com:8443 HTTP/1.1\r\n\r\n", "other port");
    expect_denied(port, "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n",
                  "metadata");
    ASSERT(strstr(deny_last, "169.254.169.254:80") != NULL);
    char req[128];
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", up_port + 1);
    expect_denied(port, req, "allowed host, other port");
    struct egress_stats st;
    egress_get_stats(e, &st);
    ASSERT_EQ(st.denied, 4);
    ASSERT_EQ(st.allowed, 0);
    egress_stop(e);
}

TEST(private_address_by_name_refused)
{
    upstream_start();
    struct egress *e = start_proxy();
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "localhost:%d", up_port);
    const char *allow[] = {allow0, NULL};
    int port = open_tcp(e, allow);
    char req[128];
    snprintf(req, sizeof(req), "CONNECT localhost:%d HTTP/1.1\r\n\r\n", up_port);
    expect_denied(port, req, "localhost by name");
    ASSERT(strstr(deny_last, "private") != NULL);
    egress_stop(e);
}

/* The operator's host map: a mapped name reaches its (loopback) address when listed; the map
 * applies to exactly that name (not a subdomain, not another name of the same address), and a
 * refusal goes to the listener's owner and its own count. */
TEST(host_map)
{
    upstream_start();
    struct egress_host map[] = {{"Registry.Test.", "127.0.0.1"}};
    struct egress_config cfg = {
        .connect_timeout_ms = 2000, .on_deny = on_deny, .hosts = map, .nhosts = 1};
    struct egress *e;
    ASSERT_EQ(egress_start(&cfg, &e), 0);
    char a0[64], a1[64], a2[64];
    snprintf(a0, sizeof(a0), "registry.test:%d", up_port);
    snprintf(a1, sizeof(a1), "sub.registry.test:%d", up_port);
    snprintf(a2, sizeof(a2), "localhost:%d", up_port);
    const char *allow[] = {a0, a1, a2, NULL};
    int port = 0;
    ASSERT_EQ(egress_open_owned(e, "s_map/cmd", "s_map", allow, NULL, &port), 0);
    char req[256], resp[16384];
    int fd = tcp_connect(port);
    snprintf(req, sizeof(req),
             "GET http://registry.test:%d/pkg.tgz HTTP/1.1\r\nHost: registry.test\r\n\r\n",
             up_port);
    send_str(fd, req);
    read_all(fd, resp, sizeof(resp));
    close(fd);
    ASSERT(strstr(resp, "GET /pkg.tgz HTTP/1.1") != NULL);
    ASSERT_EQ(egress_denials(e, "s_map/cmd", NULL, 0), 0);
    snprintf(req, sizeof(req), "CONNECT localhost:%d HTTP/1.1\r\n\r\n", up_port);
    expect_denied(port, req, "another name of the mapped address");
    ASSERT(strncmp(deny_last, "s_map localhost:", 16) == 0);
    char last[256];
    ASSERT_EQ(egress_denials(e, "s_map/cmd", last, sizeof(last)), 1);
    ASSERT(strstr(last, "localhost:") != NULL && strstr(last, "egress.hosts") != NULL);
    /* a subdomain is not mapped: it is looked up (and does not resolve) */
    fd = tcp_connect(port);
    snprintf(req, sizeof(req), "CONNECT sub.registry.test:%d HTTP/1.1\r\n\r\n", up_port);
    send_str(fd, req);
    read_all(fd, resp, sizeof(resp));
    close(fd);
    ASSERT(strncmp(resp, "HTTP/1.1 200", 12) != 0);
    egress_stop(e);
    /* bad entries are refused at start */
    struct egress_host bad[][1] = {{{"10.0.0.5", "10.0.0.5"}},
                                   {{"registry.test", "registry.other"}},
                                   {{"bad_name!", "10.0.0.5"}}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct egress_config bc = {.hosts = bad[i], .nhosts = 1};
        ASSERT_EQ(egress_start(&bc, &e), ERR_INVALID);
    }
}

TEST(addr_rules)
{
    static const char *const restricted[] = {"10.1.2.3",
                                             "127.0.0.1",
                                             "169.254.169.254",
                                             "172.16.5.4",
                                             "172.31.255.255",
                                             "192.168.0.1",
                                             "100.64.0.1",
                                             "0.0.0.0",
                                             "224.0.0.1",
                                             "255.255.255.255",
                                             "::1",
                                             "::",
                                             "fe80::1",
                                             "fd00:ec2::254",
                                             "fc00::1",
                                             "ff02::1",
                                             "::ffff:10.0.0.1",
                                             "::ffff:127.0.0.1",
                                             "64:ff9b::a9fe:a9fe",
                                             NULL};
    static const char *const open_[] = {
        "8.8.8.8",        "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111",
        "::ffff:8.8.8.8", NULL};
    for (int k = 0; k < 2; k++) {
        const char *const *list = k ? open_ : restricted;
        for (int i = 0; list[i]; i++) {
            struct sockaddr_storage ss;
            memset(&ss, 0, sizeof(ss));
            if (strchr(list[i], ':')) {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
                s6->sin6_family = AF_INET6;
                ASSERT_EQ(inet_pton(AF_INET6, list[i], &s6->sin6_addr), 1);
            } else {
                struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
                s4->sin_family = AF_INET;
                ASSERT_EQ(inet_pton(AF_INET, list[i], &s4->sin_addr), 1);
            }
            if (egress_addr_restricted(&ss) != !k) {
                TFAIL("%s should be %s", list[i], k ? "allowed" : "restricted");
            }
        }
    }
}

TEST(bad_requests)
{
    struct egress *e = start_proxy();
    const char *allow[] = {"api.example.com:443", NULL};
    int port = open_tcp(e, allow);
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        "CONNECT api.example.com HTTP/1.1\r\n\r\n",
        "CONNECT api.example.com:99999 HTTP/1.1\r\n\r\n",
        "GET https://api.example.com/ HTTP/1.1\r\n\r\n",
        "GET http://user@api.example.com:443/ HTTP/1.1\r\n\r\n",
        "hello\r\n\r\n",
        NULL,
    };
    for (int i = 0; bad[i]; i++) {
        char resp[2048];
        int fd = tcp_connect(port);
        send_str(fd, bad[i]);
        read_all(fd, resp, sizeof(resp));
        close(fd);
        if (strncmp(resp, "HTTP/1.1 400", 12) != 0) {
            TFAIL("request %d: expected 400, got %.60s", i, resp);
        }
    }
    /* a head that never ends is cut at the cap */
    int fd = tcp_connect(port);
    char big[20000];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET http://x/", 13);
    send(fd, big, sizeof(big), MSG_NOSIGNAL);
    char resp[2048];
    read_all(fd, resp, sizeof(resp));
    close(fd);
    ASSERT(strncmp(resp, "HTTP/1.1 431", 12) == 0);
    const char *badallow[] = {"no-port", NULL};
    ASSERT_EQ(egress_open(e, "s_bad", badallow, NULL, &port), ERR_INVALID);
    egress_stop(e);
}

TEST(unix_listener_replace_close)
{
    upstream_start();
    struct egress *e = start_proxy();
    char dir[] = "/tmp/egress-test-XXXXXX";
    ASSERT(mkdtemp(dir) != NULL);
    char path[64];
    snprintf(path, sizeof(path), "%s/egress.sock", dir);
    const char *none[] = {NULL};
    ASSERT_EQ(egress_open(e, "s_unix", none, path, NULL), 0);
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "127.0.0.1:%d", up_port);
    const char *allow[] = {allow0, NULL};
    ASSERT_EQ(egress_open(e, "s_unix", allow, path, NULL), 0); /* replaced: now allowed */
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_EQ(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    char req[256], resp[16384];
    snprintf(req, sizeof(req),
             "GET http://127.0.0.1:%d/unix HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
             up_port);
    send_str(fd, req);
    read_all(fd, resp, sizeof(resp));
    close(fd);
    ASSERT(strstr(resp, "GET /unix HTTP/1.1") != NULL);
    ASSERT_EQ(egress_close(e, "s_unix"), 0);
    ASSERT_EQ(egress_close(e, "s_unix"), ERR_NOT_FOUND);
    ASSERT(access(path, F_OK) != 0); /* the socket file is gone */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT(connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0);
    close(fd);
    rmdir(dir);
    egress_stop(e);
}

/* Setting a listener's list anew keeps its socket: a TCP listener keeps its port (commands
 * already given it keep their route) and the new list applies to the next connection. */
TEST(reopen_keeps_port)
{
    upstream_start();
    struct egress *e = start_proxy();
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "127.0.0.1:%d", up_port);
    const char *allow[] = {allow0, NULL};
    const char *other[] = {"example.com:443", NULL};
    int p1 = 0, p2 = 0;
    ASSERT_EQ(egress_open_owned(e, "s_keep/cmd", "s_keep", allow, NULL, &p1), 0);
    ASSERT_EQ(egress_open_owned(e, "s_keep/cmd", "s_keep", other, NULL, &p2), 0);
    ASSERT_EQ(p1, p2);
    char req[128];
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", up_port);
    expect_denied(p1, req, "the old list no longer applies");
    ASSERT(strncmp(deny_last, "s_keep 127.0.0.1:", 17) == 0);
    ASSERT_EQ(egress_open_owned(e, "s_keep/cmd", "s_keep", allow, NULL, &p2), 0);
    ASSERT_EQ(p1, p2);
    int fd = tcp_connect(p1);
    char resp[1024];
    send_str(fd, req);
    read_head(fd, resp, sizeof(resp));
    ASSERT(strncmp(resp, "HTTP/1.1 200", 12) == 0);
    close(fd);
    egress_stop(e);
}

/* Stopping with a tunnel open returns (the tunnel is shut down). */
TEST(stop_with_open_tunnel)
{
    upstream_start();
    struct egress *e = start_proxy();
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "127.0.0.1:%d", up_port);
    const char *allow[] = {allow0, NULL};
    int fd = tcp_connect(open_tcp(e, allow));
    char req[128], resp[1024];
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", up_port);
    send_str(fd, req);
    read_head(fd, resp, sizeof(resp));
    ASSERT(strncmp(resp, "HTTP/1.1 200", 12) == 0);
    struct egress_stats st;
    egress_get_stats(e, &st);
    ASSERT_EQ(st.active, 1);
    egress_stop(e);
    close(fd);
}

static const struct test_case tests[] = {
    T(connect_allowed),
    T(http_forward),
    T(denied_host_and_port),
    T(private_address_by_name_refused),
    T(host_map),
    T(addr_rules),
    T(bad_requests),
    T(unix_listener_replace_close),
    T(reopen_keeps_port),
    T(stop_with_open_tunnel),
};

TEST_MAIN(tests)
