/*
 * sandbox-init - the tiny supervisor that runs inside every sandbox (libc only).
 *
 * sessiond starts it once per sandbox (inside bubblewrap for the local backend, as a plain
 * child for the process backend) with one end of a socketpair on --fd N (default 3). It then
 * runs commands on request and streams their output back, so that running a command in a
 * ready sandbox costs one fork+exec instead of a new namespace. Protocol: proto.h.
 *
 * Each command runs in its own process group with its own rlimits (CPU seconds, RLIMIT_DATA
 * rather than RLIMIT_AS, file size, open files, processes), a wall-clock timeout after which
 * the whole group is SIGKILLed, and stdout/stderr on pipes that are read here and framed onto
 * the control socket.
 *
 * Single threaded: one poll() loop over the control socket, every command's pipes and a
 * signalfd for SIGCHLD. Back-pressure: when more than OUT_HIGH bytes wait to be written to
 * the control socket (sessiond reads slowly, or paused this sandbox), the command pipes are
 * no longer polled, so the commands block on write; the control socket is still read, so a
 * kill request always gets through. When the control socket closes, every command's group
 * is killed and sandbox-init exits (which ends the sandbox's pid namespace).
 *
 * Before it reports ready it installs a seccomp filter on itself (filter.c) and enters a
 * Landlock domain (landlock.c), which every command and its descendants inherit. Programs named by
 * --block FILE (the server's blocked_commands, already resolved to canonical paths) are refused as
 * commands: exit code 126 and the reason on stderr.
 */
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OUT_HIGH (1u << 20) /* stop reading command pipes above this much pending output */
#define DRAIN_MS 200        /* after the main process exits, wait this long for pipe EOF */
#define MAX_CMDS 256
#define MAX_ARGS 4096

#define MAX_BLOCKED 256 /* --block arguments */

/* What the server forbids commands, from the command line: fixed after start. */
struct policy {
    const char *blocked[MAX_BLOCKED]; /* canonical paths (--block): refused as argv[0] */
    int nblocked;
};

struct obuf {
    unsigned char *p;
    size_t len, off, cap;
};

struct cmd {
    uint32_t id;
    pid_t pid;
    int out_fd, err_fd, in_fd;
    struct obuf in;
    int in_close; /* close stdin once in is drained */
    int64_t start_us;
    int64_t deadline_us; /* wall-clock timeout, 0 = none */
    int64_t kill_at_us;  /* SIGKILL after a grace period, 0 = none */
    int64_t drain_us;    /* give up waiting for pipe EOF at this time, 0 = not exited */
    int exited;
    int status;
    uint32_t flags;
    struct rusage ru;
    struct cmd *next;
};

static int ctl = 3;
static struct obuf out;    /* frames waiting for the control socket */
static unsigned char *inb; /* frames read from the control socket */
static size_t inb_len, inb_cap;
static struct cmd *cmds;
static int ncmds;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what)
{
    dprintf(2, "sandbox-init: %s: %s\n", what, strerror(errno));
    _exit(111);
}

static void obuf_add(struct obuf *b, const void *p, size_t n)
{
    if (b->off && b->off == b->len) {
        b->off = b->len = 0;
    }
    if (b->len + n > b->cap) {
        if (b->off) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        size_t ncap = b->cap ? b->cap : 65536;
        while (ncap < b->len + n) {
            ncap *= 2;
        }
        if (ncap != b->cap) {
            b->p = realloc(b->p, ncap);
            if (!b->p) {
                die("realloc");
            }
            b->cap = ncap;
        }
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static size_t obuf_pending(const struct obuf *b)
{
    return b->len - b->off;
}

static void send_frame(int type, uint32_t id, const void *p, size_t n)
{
    unsigned char h[INIT_HDR];
    init_put32(h, (uint32_t)n);
    h[4] = (unsigned char)type;
    init_put32(h + 5, id);
    obuf_add(&out, h, sizeof h);
    if (n) {
        obuf_add(&out, p, n);
    }
}

/* Write what the control socket takes without blocking. Returns -1 when the peer is gone. */
static int flush_out(void)
{
    while (obuf_pending(&out)) {
        ssize_t w = send(ctl, out.p + out.off, obuf_pending(&out), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                return 0;
            }
            return -1;
        }
        out.off += (size_t)w;
    }
    out.off = out.len = 0;
    return 0;
}

static struct cmd *find_cmd(uint32_t id)
{
    for (struct cmd *c = cmds; c; c = c->next) {
        if (c->id == id) {
            return c;
        }
    }
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void send_exit(struct cmd *c)
{
    unsigned char p[32];
    int code = -1, sig = 0;
    if (WIFEXITED(c->status)) {
        code = WEXITSTATUS(c->status);
    } else if (WIFSIGNALED(c->status)) {
        sig = WTERMSIG(c->status);
    }
    init_put32(p, (uint32_t)code);
    init_put32(p + 4, (uint32_t)sig);
    init_put32(p + 8, c->flags);
    init_put32(p + 12, 0);
    init_put64(p + 16, (uint64_t)(now_us() - c->start_us));
    init_put64(p + 24, (uint64_t)c->ru.ru_maxrss);
    send_frame(INIT_EXIT, c->id, p, sizeof p);
}

static void remove_cmd(struct cmd *c)
{
    struct cmd **pp = &cmds;
    while (*pp != c) {
        pp = &(*pp)->next;
    }
    *pp = c->next;
    close_fd(&c->out_fd);
    close_fd(&c->err_fd);
    close_fd(&c->in_fd);
    free(c->in.p);
    free(c);
    ncmds--;
}

static void kill_group(struct cmd *c, int sig);

/* A command is finished when its main process was reaped and its pipes hit EOF (or the drain
 * period passed: a background child may hold them open). */
static void maybe_finish(struct cmd *c)
{
    if (!c->exited) {
        return;
    }
    if (c->out_fd >= 0 || c->err_fd >= 0) {
        if (now_us() < c->drain_us) {
            return;
        }
    }
    /* What the command left running in its process group goes with it (a background fork
     * bomb would otherwise hold the sandbox at its pids limit). Use setsid to outlive it. */
    kill_group(c, SIGKILL);
    send_exit(c);
    remove_cmd(c);
}

static int sfd_global = -1;
static void reap(int sfd);

/* Send sig to the command's process group. For SIGKILL, repeat until the group is empty: a
 * fork bomb keeps adding members while the first kill is delivered. */
static void kill_group(struct cmd *c, int sig)
{
    if (c->pid <= 0) {
        return;
    }
    if (!c->exited) {
        kill(c->pid, sig);
    }
    kill(-c->pid, sig);
    if (sig != SIGKILL) {
        return;
    }
    for (int i = 0; i < 5000; i++) {
        if (kill(-c->pid, SIGKILL) < 0 && errno == ESRCH) {
            break;
        }
        if (sfd_global >= 0) {
            reap(sfd_global); /* zombies stay in the group until reaped (we are subreaper) */
        }
        if (i > 10) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
}

static void fail_start(uint32_t id, const char *what, int e)
{
    char msg[512];
    int n = snprintf(msg, sizeof msg, "sandbox-init: %s: %s\n", what, strerror(e));
    send_frame(INIT_STDERR, id, msg, (size_t)n);
    unsigned char p[32] = {0};
    init_put32(p, 127);
    init_put32(p + 8, INIT_F_NOEXEC);
    send_frame(INIT_EXIT, id, p, sizeof p);
}

static uint64_t num(const char *s)
{
    return strtoull(s, NULL, 10);
}

static void set_limit(int res, uint64_t v)
{
    if (v) {
        struct rlimit rl = {(rlim_t)v, (rlim_t)v};
        setrlimit(res, &rl);
    }
}

/* The file execvp would run for a0 with the current PATH, resolved through symlinks into real
 * (PATH_MAX bytes). -1 if there is none. Relative names are taken from cwd, the command's. */
static int resolve_cmd(const char *a0, const char *cwd, char *real)
{
    char cand[PATH_MAX];
    struct stat st;
    if (strchr(a0, '/')) {
        snprintf(cand, sizeof cand, "%s%s%s", a0[0] == '/' ? "" : cwd, a0[0] == '/' ? "" : "/", a0);
        return realpath(cand, real) ? 0 : -1;
    }
    const char *path = getenv("PATH");
    for (const char *d = path ? path : "/usr/bin:/bin"; *d;) {
        size_t l = strcspn(d, ":");
        if (l) {
            snprintf(cand, sizeof cand, "%s%s%.*s/%s", d[0] == '/' ? "" : cwd,
                     d[0] == '/' ? "" : "/", (int)l, d, a0);
            if (stat(cand, &st) == 0 && S_ISREG(st.st_mode)) {
                return realpath(cand, real) ? 0 : -1;
            }
        }
        d += l + (d[l] == ':');
    }
    return -1;
}

/* 1 (and a refusal sent for id) if the command's program is one the server blocks. */
static int refuse_blocked(const struct policy *pol, uint32_t id, const char *a0, const char *cwd)
{
    char real[PATH_MAX];
    if (!pol->nblocked || resolve_cmd(a0, cwd, real) < 0) {
        return 0;
    }
    for (int i = 0; i < pol->nblocked; i++) {
        if (!strcmp(real, pol->blocked[i])) {
            char msg[PATH_MAX + 512];
            int n = snprintf(msg, sizeof msg,
                             "sandbox-init: %.256s: %s is blocked by the server's "
                             "blocked_commands policy\n",
                             a0, real);
            send_frame(INIT_STDERR, id, msg, n > 0 && (size_t)n < sizeof msg ? (size_t)n : 0);
            unsigned char p[32] = {0};
            init_put32(p, 126);
            init_put32(p + 8, INIT_F_NOEXEC);
            send_frame(INIT_EXIT, id, p, sizeof p);
            return 1;
        }
    }
    return 0;
}

/* One EXEC request (proto.h): its strings point into the request's NUL-terminated copy. */
struct exec_req {
    char *argv[MAX_ARGS + 1];
    char *envp[MAX_ARGS + 1];
    int argc, envc, want_stdin;
    const char *cwd;
    uint64_t timeout_ms, cpu_s, data, fsize, nofile, nproc;
};

/* Read the NUL-separated key=value pairs of an EXEC frame, copy[0..n), into r (whose cwd is
 * the default). Unknown keys and arguments past MAX_ARGS are ignored. */
static void parse_exec(char *copy, size_t n, struct exec_req *r)
{
    for (size_t i = 0; i < n;) {
        char *kv = copy + i;
        size_t l = strlen(kv);
        i += l + 1;
        if (!strncmp(kv, "arg=", 4) && r->argc < MAX_ARGS) {
            r->argv[r->argc++] = kv + 4;
        } else if (!strncmp(kv, "env=", 4) && r->envc < MAX_ARGS) {
            r->envp[r->envc++] = kv + 4;
        } else if (!strncmp(kv, "cwd=", 4)) {
            r->cwd = kv + 4;
        } else if (!strncmp(kv, "timeout_ms=", 11)) {
            r->timeout_ms = num(kv + 11);
        } else if (!strncmp(kv, "cpu_s=", 6)) {
            r->cpu_s = num(kv + 6);
        } else if (!strncmp(kv, "data_bytes=", 11)) {
            r->data = num(kv + 11);
        } else if (!strncmp(kv, "fsize_bytes=", 12)) {
            r->fsize = num(kv + 12);
        } else if (!strncmp(kv, "nofile=", 7)) {
            r->nofile = num(kv + 7);
        } else if (!strncmp(kv, "nproc=", 6)) {
            r->nproc = num(kv + 6);
        } else if (!strcmp(kv, "stdin=1")) {
            r->want_stdin = 1;
        }
    }
    r->argv[r->argc] = NULL;
    r->envp[r->envc] = NULL;
}

/* In the child, when it cannot exec: errno to the parent on status_fd, exit 127. */
static _Noreturn void child_fail(int status_fd)
{
    int e = errno;
    ssize_t w = write(status_fd, &e, sizeof e);
    (void)w;
    _exit(127);
}

/* In the forked child: its own process group, stdio on the pipes (pi, po, pe: stdin, stdout,
 * stderr), the request's rlimits and cwd, then exec. status_fd is close-on-exec: the parent
 * reads EOF from it on a successful exec. */
static _Noreturn void child_exec(const struct exec_req *r, const int pi[2], const int po[2],
                                 const int pe[2], int status_fd)
{
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    int in = r->want_stdin ? pi[0] : open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(po[1], 1) < 0 || dup2(pe[1], 2) < 0) {
        child_fail(status_fd);
    }
    set_limit(RLIMIT_CPU, r->cpu_s);
    set_limit(RLIMIT_DATA, r->data);
    set_limit(RLIMIT_FSIZE, r->fsize);
    set_limit(RLIMIT_NOFILE, r->nofile);
    set_limit(RLIMIT_NPROC, r->nproc);
    set_limit(RLIMIT_CORE, 0);
    {
        struct rlimit z = {0, 0};
        setrlimit(RLIMIT_CORE, &z);
    }
    /* Under memory pressure the kernel should pick a command, not sandbox-init (or the
     * server, outside): raising one's own oom_score_adj needs no privilege. */
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        ssize_t w = write(oom, "1000", 4);
        (void)w;
        close(oom);
    }
    if (chdir(r->cwd) < 0) {
        child_fail(status_fd);
    }
    execvpe(r->argv[0], r->argv, r->envp);
    child_fail(status_fd);
}

/* Put a started command in the table, taking the parent's pipe ends (*out_r, *err_r, *in_w,
 * set to -1 here), and report STARTED with its pid. */
static void add_cmd(uint32_t id, pid_t pid, int64_t start, uint64_t timeout_ms, int *out_r,
                    int *err_r, int *in_w)
{
    struct cmd *c = calloc(1, sizeof *c);
    if (!c) {
        die("calloc");
    }
    c->id = id;
    c->pid = pid;
    c->out_fd = *out_r;
    c->err_fd = *err_r;
    c->in_fd = *in_w;
    *out_r = *err_r = *in_w = -1;
    if (c->in_fd >= 0) {
        fcntl(c->in_fd, F_SETFL, O_NONBLOCK);
    }
    fcntl(c->out_fd, F_SETFL, O_NONBLOCK);
    fcntl(c->err_fd, F_SETFL, O_NONBLOCK);
    c->start_us = start;
    c->deadline_us = timeout_ms ? start + (int64_t)timeout_ms * 1000 : 0;
    c->next = cmds;
    cmds = c;
    ncmds++;
    unsigned char pp[4];
    init_put32(pp, (uint32_t)pid);
    send_frame(INIT_STARTED, id, pp, sizeof pp);
}

static void do_exec(const struct policy *pol, uint32_t id, const char *p, size_t n)
{
    struct exec_req req = {.cwd = "/"};
    char *copy = NULL;
    int po[2] = {-1, -1}, pe[2] = {-1, -1}, pi[2] = {-1, -1}, ps[2] = {-1, -1};

    if (find_cmd(id) || ncmds >= MAX_CMDS) {
        fail_start(id, "exec", find_cmd(id) ? EEXIST : EAGAIN);
        return;
    }
    copy = malloc(n + 1);
    if (!copy) {
        die("malloc");
    }
    memcpy(copy, p, n);
    copy[n] = 0;
    parse_exec(copy, n, &req);
    if (!req.argc) {
        fail_start(id, "exec", EINVAL);
        goto out;
    }
    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC) || pipe2(ps, O_CLOEXEC) ||
        (req.want_stdin && pipe2(pi, O_CLOEXEC))) {
        fail_start(id, "pipe", errno);
        goto out;
    }
    /* Look the program up in the command's own PATH (execvpe reads the caller's environ). */
    for (int i = 0; i < req.envc; i++) {
        if (!strncmp(req.envp[i], "PATH=", 5)) {
            setenv("PATH", req.envp[i] + 5, 1);
        }
    }
    if (refuse_blocked(pol, id, req.argv[0], req.cwd)) {
        goto out;
    }
    int64_t start = now_us();
    pid_t pid = fork();
    if (pid < 0) {
        fail_start(id, "fork", errno);
        goto out;
    }
    if (pid == 0) {
        child_exec(&req, pi, po, pe, ps[1]);
    }
    close_fd(&po[1]);
    close_fd(&pe[1]);
    close_fd(&pi[0]);
    close_fd(&ps[1]);
    setpgid(pid, pid); /* also here, so a kill sent right away reaches the group */
    int e = 0;
    ssize_t r;
    do {
        r = read(ps[0], &e, sizeof e);
    } while (r < 0 && errno == EINTR);
    if (r == (ssize_t)sizeof e) {
        /* The child failed before exec; it exits 127 and is reaped by the SIGCHLD loop as an
         * unknown pid. */
        fail_start(id, req.argv[0], e);
        goto out;
    }
    add_cmd(id, pid, start, req.timeout_ms, &po[0], &pe[0], &pi[1]);
out:
    for (int i = 0; i < 2; i++) {
        if (po[i] >= 0)
            close(po[i]);
        if (pe[i] >= 0)
            close(pe[i]);
        if (pi[i] >= 0)
            close(pi[i]);
        if (ps[i] >= 0)
            close(ps[i]);
    }
    free(copy);
}

static void write_stdin(struct cmd *c)
{
    while (c->in_fd >= 0 && obuf_pending(&c->in)) {
        ssize_t w = write(c->in_fd, c->in.p + c->in.off, obuf_pending(&c->in));
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                return;
            }
            /* EPIPE: the command does not read its stdin any more; drop the rest. */
            c->in.off = c->in.len = 0;
            close_fd(&c->in_fd);
            return;
        }
        c->in.off += (size_t)w;
    }
    if (!obuf_pending(&c->in)) {
        c->in.off = c->in.len = 0;
        if (c->in_close) {
            close_fd(&c->in_fd);
        }
    }
}

static void handle_frame(const struct policy *pol, int type, uint32_t id, const unsigned char *p,
                         size_t n)
{
    struct cmd *c = find_cmd(id);
    switch (type) {
    case INIT_EXEC:
        do_exec(pol, id, (const char *)p, n);
        break;
    case INIT_STDIN:
        if (c && c->in_fd >= 0 && n) {
            obuf_add(&c->in, p, n);
            write_stdin(c);
        }
        break;
    case INIT_CLOSE:
        if (c) {
            c->in_close = 1;
            write_stdin(c);
        }
        break;
    case INIT_KILL:
        if (c && n >= 8) {
            int sig = (int)init_get32(p);
            uint32_t grace = init_get32(p + 4);
            c->flags |= INIT_F_KILLED;
            kill_group(c, sig);
            if (grace && sig != SIGKILL && !c->kill_at_us) {
                c->kill_at_us = now_us() + (int64_t)grace * 1000;
            }
        }
        break;
    case INIT_PING:
        send_frame(INIT_PONG, id, p, n);
        break;
    default:
        break;
    }
}

static void read_ctl(const struct policy *pol)
{
    for (;;) {
        if (inb_cap - inb_len < 65536) {
            inb_cap = inb_cap ? inb_cap * 2 : 131072;
            inb = realloc(inb, inb_cap);
            if (!inb) {
                die("realloc");
            }
        }
        ssize_t r = recv(ctl, inb + inb_len, inb_cap - inb_len, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && errno == EAGAIN) {
            break;
        }
        if (r <= 0) {
            /* sessiond is gone or stopped the sandbox: kill everything and leave. */
            for (struct cmd *c = cmds; c; c = c->next) {
                kill_group(c, SIGKILL);
            }
            _exit(0);
        }
        inb_len += (size_t)r;
        size_t off = 0;
        while (inb_len - off >= INIT_HDR) {
            uint32_t len = init_get32(inb + off);
            if (len > INIT_MAX_FRAME) {
                dprintf(2, "sandbox-init: frame too large (%u)\n", len);
                _exit(112);
            }
            if (inb_len - off < INIT_HDR + len) {
                break;
            }
            handle_frame(pol, inb[off + 4], init_get32(inb + off + 5), inb + off + INIT_HDR, len);
            off += INIT_HDR + len;
        }
        memmove(inb, inb + off, inb_len - off);
        inb_len -= off;
        if ((size_t)r < 65536) {
            break;
        }
    }
}

static void read_pipe(struct cmd *c, int *fd, int type)
{
    static unsigned char b[INIT_CHUNK];
    ssize_t r = read(*fd, b, sizeof b);
    if (r > 0) {
        send_frame(type, c->id, b, (size_t)r);
        return;
    }
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
        return;
    }
    close_fd(fd);
}

static void reap(int sfd)
{
    (void)sfd_global;
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) > 0) {
    }
    for (;;) {
        int st = 0;
        struct rusage ru;
        pid_t pid = wait4(-1, &st, WNOHANG, &ru);
        if (pid <= 0) {
            break;
        }
        for (struct cmd *c = cmds; c; c = c->next) {
            if (c->pid == pid && !c->exited) {
                c->exited = 1;
                c->status = st;
                c->ru = ru;
                c->drain_us = now_us() + DRAIN_MS * 1000;
                break;
            }
        }
    }
}

/* ---- the loopback forwarder to the egress proxy (egress_fwd.c) ---- */
#include "egress_fwd.c"

/* ---- the seccomp filter and the Landlock domain every command inherits ---- */
#include "filter.c"
#include "landlock.c"

/* The command line: --fd N (the control socket), --block FILE (repeatable), --version.
 * 1 if the program is done (it printed its version), else 0. */
static int parse_args(int argc, char **argv, struct policy *pol)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
            ctl = (int)strtol(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--block") && i + 1 < argc) {
            if (pol->nblocked == MAX_BLOCKED) {
                errno = E2BIG;
                die("--block");
            }
            pol->blocked[pol->nblocked++] = argv[++i];
        } else if (!strcmp(argv[i], "--version")) {
            puts(INIT_VERSION);
            return 1;
        }
    }
    return 0;
}

/* Everything before READY: close what the host left open, become the subreaper, undumpable,
 * take SIGCHLD through a signalfd (returned), install the seccomp filter and the Landlock
 * domain that every command inherits. */
static int setup_self(void)
{
    /* Nothing of the host may stay open in here (bwrap passes its fds through): keep only
     * stdio and the control socket. */
    if (ctl > 3) {
        close_range(3, (unsigned)ctl - 1, 0);
    }
    close_range((unsigned)ctl + 1, ~0U, 0);
    /* Orphans of our commands are re-parented to us and reaped here. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    /* Commands run as our uid: without this one could ptrace us and speak for us on the
     * control socket. (execve makes the commands themselves dumpable again.) */
    prctl(PR_SET_DUMPABLE, 0);
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        die("signalfd");
    }
    sfd_global = sfd;
    fcntl(ctl, F_SETFD, FD_CLOEXEC);
    if (filter_install() < 0) {
        die("seccomp filter");
    }
    const char *what = NULL;
    if (landlock_install(&what) < 0) {
        dprintf(2,
                "sandbox-init: %s: %s: no Landlock domain, so commands can reach the memory of "
                "processes of their uid outside the sandbox's commands (pid 1)\n",
                what, strerror(errno));
    }
    return sfd;
}

/* The descriptors of one poll round, each with the command it belongs to (NULL for the
 * control socket and the signalfd, always the first two). */
struct pollset {
    struct pollfd pfd[2 + 3 * MAX_CMDS];
    struct cmd *who[2 + 3 * MAX_CMDS];
    int n;
};

static void watch(struct pollset *ps, int fd, short events, struct cmd *c)
{
    ps->pfd[ps->n].fd = fd;
    ps->pfd[ps->n].events = events;
    ps->who[ps->n++] = c;
}

/* Kill the command whose timeout or kill grace period has passed; lower *next to its next
 * deadline (timeout, kill, or the end of its drain period once exited). */
static void check_deadlines(struct cmd *c, int64_t now, int64_t *next)
{
    if (c->deadline_us && !c->exited && now >= c->deadline_us) {
        c->flags |= INIT_F_TIMEOUT;
        c->deadline_us = 0;
        kill_group(c, SIGKILL);
    }
    if (c->kill_at_us && !c->exited && now >= c->kill_at_us) {
        c->kill_at_us = 0;
        kill_group(c, SIGKILL);
    }
    int64_t t[3] = {c->exited ? 0 : c->deadline_us, c->exited ? 0 : c->kill_at_us,
                    c->exited ? c->drain_us : 0};
    for (int k = 0; k < 3; k++) {
        if (t[k] && (*next < 0 || t[k] < *next)) {
            *next = t[k];
        }
    }
}

/* Fill ps for the next poll: the control socket (POLLOUT while frames wait), the signalfd,
 * and every command's pipes (its output only while less than OUT_HIGH waits for the control
 * socket: back-pressure). Enforces deadlines on the way; returns poll's timeout. */
static int build_pollset(struct pollset *ps, int sfd)
{
    ps->n = 0;
    watch(ps, ctl, POLLIN | (obuf_pending(&out) ? POLLOUT : 0), NULL);
    watch(ps, sfd, POLLIN, NULL);
    int64_t now = now_us(), next = -1;
    int reading = obuf_pending(&out) < OUT_HIGH;
    for (struct cmd *c = cmds; c; c = c->next) {
        check_deadlines(c, now, &next);
        if (reading && c->out_fd >= 0) {
            watch(ps, c->out_fd, POLLIN, c);
        }
        if (reading && c->err_fd >= 0) {
            watch(ps, c->err_fd, POLLIN, c);
        }
        if (c->in_fd >= 0 && obuf_pending(&c->in)) {
            watch(ps, c->in_fd, POLLOUT, c);
        }
    }
    int timeout = -1;
    if (next >= 0) {
        timeout = next <= now ? 0 : (int)((next - now + 999) / 1000);
    }
    return timeout;
}

/* Serve what poll reported ready: control frames, reaped children, command pipes. */
static void dispatch(const struct pollset *ps, const struct policy *pol, int sfd)
{
    const struct pollfd *pfd = ps->pfd;
    if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        read_ctl(pol);
    }
    if (pfd[1].revents & POLLIN) {
        reap(sfd);
    }
    for (int i = 2; i < ps->n; i++) {
        struct cmd *c = ps->who[i];
        if (!pfd[i].revents) { /* commands are only freed after this loop */
            continue;
        }
        if (pfd[i].fd == c->out_fd) {
            read_pipe(c, &c->out_fd, INIT_STDOUT);
        } else if (pfd[i].fd == c->err_fd) {
            read_pipe(c, &c->err_fd, INIT_STDERR);
        } else if (pfd[i].fd == c->in_fd) {
            if (pfd[i].revents & (POLLERR | POLLHUP)) {
                c->in.off = c->in.len = 0;
                close_fd(&c->in_fd);
            } else {
                write_stdin(c);
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--egress-forward")) { /* a separate mode */
        return egress_forward_main(argc, argv);
    }
    struct policy pol = {.nblocked = 0};
    if (parse_args(argc, argv, &pol)) {
        return 0;
    }
    int sfd = setup_self();
    send_frame(INIT_READY, 0, INIT_VERSION, strlen(INIT_VERSION));

    struct pollset ps;
    for (;;) {
        if (flush_out() < 0) {
            for (struct cmd *c = cmds; c; c = c->next) {
                kill_group(c, SIGKILL);
            }
            _exit(0);
        }
        int timeout = build_pollset(&ps, sfd);
        int r = poll(ps.pfd, (nfds_t)ps.n, timeout);
        if (r < 0 && errno != EINTR) {
            die("poll");
        }
        if (r > 0) {
            dispatch(&ps, &pol, sfd);
        }
        for (struct cmd *c = cmds, *nx; c; c = nx) {
            nx = c->next;
            maybe_finish(c);
        }
    }
}
