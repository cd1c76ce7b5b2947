/*
 * egress_fwd.c - `sandbox-init --egress-forward PORT SOCKET -- COMMAND ARGS...`.
 * Included by sandbox-init.c (one binary, no dependency but libc); owned by the egress work.
 *
 * Inside an isolated sandbox there is no network: sessiond's egress proxy is a Unix socket
 * bound into the sandbox (SOCKET). Coding-agent CLIs reach proxies only over TCP
 * (HTTPS_PROXY=http://127.0.0.1:PORT), so this listens on 127.0.0.1:PORT (the sandbox's own
 * loopback), and hands every connection to a child that pipes it to SOCKET. The listener is
 * bound before COMMAND is exec'd in this process, so the command's first request finds it.
 * The forwarder has the parent-death signal set: it dies with COMMAND. Its stdio is
 * /dev/null, so COMMAND's output pipes close when COMMAND ends. If PORT is taken (another
 * run of this sandbox forwards to the same socket), COMMAND runs without a new forwarder.
 *
 * PORT 0 (the sandbox's commands: setup steps, exec, command agents, several of which may run
 * at once): a free port of the loopback, and COMMAND gets HTTP_PROXY/HTTPS_PROXY (both cases)
 * pointing at it, with NO_PROXY naming the sandbox's own loopback. Each such command has its
 * own forwarder, so none loses its route when another ends.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#define FWD_BUF 65536

/* Copy both ways between a and b until both directions are closed. */
static void fwd_pipe(int a, int b)
{
    static char buf[FWD_BUF];
    int fds[2] = {a, b};
    int open_in[2] = {1, 1};
    while (open_in[0] || open_in[1]) {
        struct pollfd pf[2];
        int np = 0, map[2];
        for (int i = 0; i < 2; i++) {
            if (open_in[i]) {
                pf[np].fd = fds[i];
                pf[np].events = POLLIN;
                map[np++] = i;
            }
        }
        if (poll(pf, (nfds_t)np, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        for (int k = 0; k < np; k++) {
            if (!(pf[k].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            int i = map[k];
            ssize_t n = read(fds[i], buf, sizeof(buf));
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                open_in[i] = 0;
                shutdown(fds[1 - i], SHUT_WR);
                continue;
            }
            for (ssize_t off = 0; off < n;) {
                ssize_t w = send(fds[1 - i], buf + off, (size_t)(n - off), MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR) {
                    continue;
                }
                if (w <= 0) {
                    return;
                }
                off += w;
            }
        }
    }
}

static void fwd_serve(int lfd, const char *sock)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock);
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            return;
        }
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(lfd);
            int u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (u >= 0 && connect(u, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
                fwd_pipe(c, u);
            }
            _exit(0);
        }
        close(c);
    }
}

static int egress_forward_main(int argc, char **argv)
{
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: sandbox-init --egress-forward PORT SOCKET -- COMMAND ARGS...\n");
        return 2;
    }
    char *end = NULL;
    long port = strtol(argv[2], &end, 10);
    const char *sock = argv[3];
    if (end == argv[2] || *end || port < 0 || port > 65535 ||
        strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "sandbox-init: --egress-forward: bad port or socket path\n");
        return 2;
    }
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd >= 0) {
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(lfd, 64) < 0) {
            if (errno != EADDRINUSE) {
                fprintf(stderr, "sandbox-init: egress forwarder on port %ld: %s\n", port,
                        strerror(errno));
            }
            close(lfd);
            lfd = -1;
        }
    }
    if (lfd >= 0 && port == 0) {
        socklen_t sl = sizeof(sin);
        char url[64];
        if (getsockname(lfd, (struct sockaddr *)&sin, &sl) == 0) {
            snprintf(url, sizeof(url), "http://127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
            setenv("HTTP_PROXY", url, 1);
            setenv("HTTPS_PROXY", url, 1);
            setenv("http_proxy", url, 1);
            setenv("https_proxy", url, 1);
            setenv("NO_PROXY", "localhost,127.0.0.1,::1", 1);
            setenv("no_proxy", "localhost,127.0.0.1,::1", 1);
        }
    }
    if (lfd >= 0) {
        pid_t parent = getpid();
        pid_t f = fork();
        if (f == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) {
                _exit(0);
            }
            int nul = open("/dev/null", O_RDWR);
            if (nul >= 0) {
                dup2(nul, 0);
                dup2(nul, 1);
                dup2(nul, 2);
            }
            signal(SIGCHLD, SIG_IGN); /* connection children reap themselves */
            signal(SIGPIPE, SIG_IGN);
            fwd_serve(lfd, sock);
            _exit(0);
        }
        close(lfd);
    }
    execvp(argv[5], argv + 5);
    fprintf(stderr, "sandbox-init: %s: %s\n", argv[5], strerror(errno));
    return 127;
}
