/*
 * bench/egress.c - the egress proxy's added latency per request (issue 7).
 *
 *   build/bench/egress [N]
 *
 * A loopback upstream answers every request with a small HTTP response and closes. N requests
 * (default 2000), one at a time, each on a new connection, three ways: straight to the
 * upstream, through the proxy as an absolute-URI request (plain http), and through the proxy
 * as a CONNECT tunnel carrying the same request. Prints p50/p99 per way and the added
 * latency (p50 difference) in microseconds, as one JSON line.
 */
#include "common/clock.h"
#include "sandbox/egress/egress.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int up_fd;
static int up_port;

static void *upstream(void *arg)
{
    (void)arg;
    static const char resp[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    for (;;) {
        int c = accept(up_fd, NULL, NULL);
        if (c < 0) {
            return NULL;
        }
        char b[4096];
        size_t n = 0;
        while (n < sizeof(b) - 1) {
            ssize_t r = recv(c, b + n, sizeof(b) - 1 - n, 0);
            if (r <= 0) {
                break;
            }
            n += (size_t)r;
            b[n] = '\0';
            if (strstr(b, "\r\n\r\n")) {
                break;
            }
        }
        if (send(c, resp, sizeof(resp) - 1, MSG_NOSIGNAL) < 0) {
            perror("send");
        }
        close(c);
    }
}

static int dial(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(0x7F000001)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

/* Send req and read until the peer closes or the response "ok" body arrived. */
static void roundtrip(int fd, const char *req)
{
    char b[4096];
    size_t n = 0;
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) < 0) {
        perror("send");
        exit(1);
    }
    for (;;) {
        ssize_t r = recv(fd, b + n, sizeof(b) - 1 - n, 0);
        if (r <= 0) {
            break;
        }
        n += (size_t)r;
        b[n] = '\0';
        char *e = strstr(b, "\r\n\r\nok");
        if (e) {
            break;
        }
    }
}

static int cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 2000;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7F000001)};
    socklen_t sl = sizeof(sin);
    up_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(up_fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(up_fd, 512) ||
        getsockname(up_fd, (struct sockaddr *)&sin, &sl)) {
        perror("upstream");
        return 1;
    }
    up_port = ntohs(sin.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, upstream, NULL);

    struct egress_config cfg = {0};
    struct egress *e;
    if (egress_start(&cfg, &e)) {
        return 1;
    }
    char allow0[64];
    snprintf(allow0, sizeof(allow0), "127.0.0.1:%d", up_port);
    const char *allow[] = {allow0, NULL};
    int pport = 0;
    if (egress_open(e, "bench", allow, NULL, &pport)) {
        return 1;
    }
    char direct[256], absolute[256], connect_req[256];
    snprintf(direct, sizeof(direct), "GET /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", up_port);
    snprintf(
        absolute, sizeof(absolute),
        "GET http://127.0.0.1:%d/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
        up_port, up_port);
    snprintf(connect_req, sizeof(connect_req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", up_port);
    int64_t *lat[3];
    const char *names[3] = {"direct", "proxy_http", "proxy_connect"};
    for (int w = 0; w < 3; w++) {
        lat[w] = calloc((size_t)n, sizeof(int64_t));
        for (int i = 0; i < n; i++) {
            int64_t t0 = clock_mono_us();
            int fd = dial(w == 0 ? up_port : pport);
            if (w == 2) {
                char b[256];
                if (send(fd, connect_req, strlen(connect_req), MSG_NOSIGNAL) < 0 ||
                    recv(fd, b, sizeof(b), 0) <= 0) {
                    perror("connect tunnel");
                    return 1;
                }
            }
            roundtrip(fd, w == 1 ? absolute : direct);
            close(fd);
            lat[w][i] = clock_mono_us() - t0;
        }
        qsort(lat[w], (size_t)n, sizeof(int64_t), cmp);
    }
    printf("{\"bench\":\"egress\",\"requests\":%d", n);
    for (int w = 0; w < 3; w++) {
        printf(",\"%s_us\":{\"p50\":%lld,\"p99\":%lld}", names[w], (long long)lat[w][n / 2],
               (long long)lat[w][n * 99 / 100]);
    }
    printf(",\"added_p50_us\":{\"http\":%lld,\"connect\":%lld}}\n",
           (long long)(lat[1][n / 2] - lat[0][n / 2]), (long long)(lat[2][n / 2] - lat[0][n / 2]));
    egress_stop(e);
    return 0;
}
