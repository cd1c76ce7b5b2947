/*
 * walker.c - the workspace side of snap_create (the walk, and opening the files to read) in a
 * child process that cannot write as root: the second wall around the snapshot walk.
 *
 * Why: a workspace is built by a hostile sandbox (symlinks swapped in mid-walk, deep trees,
 * FIFOs, unreadable directories). The walk resolves every path beneath the workspace without
 * following a symlink (fswalk, open_beneath); if a bug there ever let a path escape, the code
 * that follows it must not be root. So snap_create forks one child per snapshot that
 *   - holds the workspace directory (fd 3), its socket to the server (fd 4) and /dev/null on
 *     0-2, nothing else (close_range: no store, no session file, no listening socket);
 *   - is chrooted into the workspace (no path leads out of it; no /proc, no /etc);
 *   - has no supplementary groups and uid/gid WALK_UID/WALK_GID (65534, "nobody": owns no file
 *     of the server's nor of a sandbox's, outside the sandbox uid range), keeps one
 *     capability, CAP_DAC_READ_SEARCH (the walk as root read files and directories the sandbox
 *     made unreadable, mode 0000; it still does, and changes nothing), has no_new_privs, is not
 *     dumpable, has RLIMIT_FSIZE 0 (a write into any file fails: the walk writes none), cannot
 *     open files by handle (seccomp: the one way CAP_DAC_READ_SEARCH leads past a chroot) and
 *     dies with the server (PDEATHSIG);
 *   - resets every signal handler the server installed (they would write to the server's
 *     descriptors).
 * It walks (readdir, lstat, readlink), sends the entries to the server, then opens the files
 * the server asks for (open_beneath, O_RDONLY) and passes their descriptors (SCM_RIGHTS): the
 * server reads and hashes them and writes the store, which stays root's and which the child
 * never sees. Of a descriptor the server trusts only what it checks (hash_one: fstat, a regular
 * file on the workspace's file system); what it reads there is workspace content, as before.
 *
 * Protocol (SOCK_SEQPACKET: one message, one unit; all integers in host order):
 *   child -> server  'W' then records (struct wrec + path + target), the walk in pre-order,
 *                    in messages of at most MSG_MAX bytes; then 'E' with rc, errno, step
 *   server -> child  'O' then (u32 length + path) for at most BATCH files: open these
 *   child -> server  'R' then one i32 a file (0: its fd is attached, else the errno), fds in
 *                    order
 *   the server closes its end (or kills the child): the child exits.
 *
 * Threads: a walker belongs to one snap_create; walker_fd is called by its hash workers at once
 * (guarded by mu). The child is forked from the threaded server: until it leaves (_exit) it calls
 * only what glibc makes safe after fork (system calls, malloc, opendir, pthread_create), never
 * the log (its mutex may be held by a thread that does not exist in the child) nor OpenSSL.
 */
#include "workspace/snap/snap_int.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#define WALK_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define WALK_ARCH AUDIT_ARCH_AARCH64
#else
#error "walker: no seccomp architecture constant for this target"
#endif

#define MSG_MAX (64 * 1024) /* one message of the walk or of open requests */
#define BATCH   64          /* files a request names (and fds a reply carries) at most */
#define WINDOW  (4 * BATCH) /* files requested and not yet answered at most */
#define FD_ROOT 3
#define FD_SOCK 4
/* A record's path: an entry the walk left out for its length is one name (NAME_MAX) past the
 * longest path it enters; a symlink's target is read into SNAP_MAX_PATH + 1 bytes. */
#define REC_PATH_MAX   (SNAP_MAX_PATH + 1 + 255)
#define REC_TARGET_MAX (SNAP_MAX_PATH + 1)

/* One walk entry on the wire (followed by path_len bytes of path, target_len of target). */
struct wrec {
    uint8_t type, omit;
    uint16_t pad;
    uint32_t mode, uid, gid, nlink;
    uint32_t path_len, target_len;
    uint64_t size, ino;
    int64_t mtime_ns, ctime_ns;
};

/* The end of the walk: its result, and for a failure the errno and the step. */
struct wend {
    int32_t rc, err;
    char step[32];
};

struct walker {
    pid_t pid;
    int sock;
    pthread_mutex_t mu;
    struct ent **jobs; /* the plan (walker_plan); borrowed */
    size_t n;
    size_t sent;     /* jobs requested from the child; guarded by mu */
    size_t answered; /* jobs it answered; guarded by mu */
    int *fds;        /* per job: its fd until walker_fd takes it, else -1; guarded by mu */
    int broken;      /* the child died or broke the protocol; guarded by mu */
};

/* ---------------------------------------------------------------- the child */

static int send_msg(int sock, const void *p, size_t n, const int *fds, size_t nfds)
{
    struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(BATCH * sizeof(int))];
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    for (;;) {
        ssize_t w = sendmsg(sock, &mh, MSG_NOSIGNAL);
        if (w == (ssize_t)n) {
            return 0;
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        return -1;
    }
}

static void send_end(int sock, int rc, int err, const char *step)
{
    char m[1 + sizeof(struct wend)];
    struct wend e = {.rc = rc, .err = err};
    snprintf(e.step, sizeof(e.step), "%s", step ? step : "");
    m[0] = 'E';
    memcpy(m + 1, &e, sizeof(e));
    send_msg(sock, m, sizeof(m), NULL, 0);
}

/* Leave the server's signal handlers behind (they write to descriptors the child no longer
 * has, or to others under the same numbers); a write into a file fails rather than kills. */
static void reset_signals(void)
{
    sigset_t none;
    for (int s = 1; s < NSIG; s++) {
        signal(s, SIG_DFL);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Only the workspace (FD_ROOT), the socket (FD_SOCK) and /dev/null on 0-2. */
static int keep_fds(int rootfd, int sock)
{
    int r = fcntl(rootfd, F_DUPFD, FD_SOCK + 1);
    int s = fcntl(sock, F_DUPFD, FD_SOCK + 1);
    int nul = open("/dev/null", O_RDWR);
    if (r < 0 || s < 0 || nul < 0) {
        return -1;
    }
    /* /dev/null first: it may have landed on FD_ROOT or FD_SOCK (r and s cannot) */
    if (dup2(nul, 0) < 0 || dup2(nul, 1) < 0 || dup2(nul, 2) < 0 || dup2(r, FD_ROOT) < 0 ||
        dup2(s, FD_SOCK) < 0) {
        return -1;
    }
    return close_range(FD_SOCK + 1, ~0U, 0);
}

/* Root's uid and groups for WALK_UID/WALK_GID, keeping CAP_DAC_READ_SEARCH alone. */
static int drop_root(const char **step)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    uid_t ru, eu, su;
    *step = "chroot";
    if (fchdir(FD_ROOT) != 0 || chroot(".") != 0 || chdir("/") != 0) {
        return -1;
    }
    *step = "setuid";
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 || setgroups(0, NULL) != 0 ||
        setresgid(WALK_GID, WALK_GID, WALK_GID) != 0 ||
        setresuid(WALK_UID, WALK_UID, WALK_UID) != 0) {
        return -1;
    }
    *step = "capset";
    memset(d, 0, sizeof(d));
    d[0].effective = d[0].permitted = 1U << CAP_DAC_READ_SEARCH;
    if (syscall(SYS_capset, &h, d) != 0 || prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 ||
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) {
        return -1;
    }
    *step = "check uid";
    if (setuid(0) == 0 || getresuid(&ru, &eu, &su) != 0 || ru != WALK_UID || eu != WALK_UID ||
        su != WALK_UID) {
        errno = EPERM;
        return -1;
    }
    return 0;
}

/* CAP_DAC_READ_SEARCH also opens any file of a file system by handle (open_by_handle_at), past
 * the chroot: the one way it gives out of the workspace. The walk never needs it. */
static int deny_handles(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (__u32)offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, WALK_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (__u32)offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
        /* the x32 ABI: the same arch value, numbers with bit 30 set */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 2, 0),
#else
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),
#endif
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_open_by_handle_at, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_name_to_handle_at, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof(f) / sizeof(f[0])), .filter = f};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

int walker_confine(int rootfd, int sock, pid_t parent, const char **step)
{
    struct rlimit nofile = {0, 0};
    *step = "prctl";
    if (prctl(PR_SET_NAME, "snap-walk", 0, 0, 0) != 0) {
        return -1;
    }
    reset_signals();
    *step = "descriptors";
    if (keep_fds(rootfd, sock) != 0) {
        return -1;
    }
    if (geteuid() == 0 && drop_root(step) != 0) {
        return -1;
    }
    *step = "limits";
    if (setrlimit(RLIMIT_FSIZE, &nofile) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        return -1;
    }
    *step = "seccomp";
    if (deny_handles() != 0) {
        return -1;
    }
    /* after the credential change, which cleared it: never outlive the server */
    *step = "parent death signal";
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != parent) {
        errno = ESRCH;
        return -1;
    }
    return 0;
}

/* Append e to the walk message in b (sending b first when e does not fit). */
static int put_rec(int sock, struct buf *b, const struct ent *e)
{
    size_t pl = strlen(e->path), tl = e->target ? strlen(e->target) : 0;
    struct wrec r = {.type = (uint8_t)e->type,
                     .omit = e->omit,
                     .mode = e->mode,
                     .uid = e->uid,
                     .gid = e->gid,
                     .nlink = e->nlink,
                     .path_len = (uint32_t)pl,
                     .target_len = (uint32_t)tl,
                     .size = e->size,
                     .ino = e->ino,
                     .mtime_ns = e->mtime_ns,
                     .ctime_ns = e->ctime_ns};
    if (b->len + sizeof(r) + pl + tl > MSG_MAX) {
        if (send_msg(sock, b->data, b->len, NULL, 0) != 0) {
            return -1;
        }
        b->len = 1; /* keep the 'W' */
    }
    if (buf_append(b, &r, sizeof(r)) != 0 || buf_append(b, e->path, pl) != 0 ||
        buf_append(b, e->target, tl) != 0) {
        return -1;
    }
    return 0;
}

static int send_walk(int sock, int threads)
{
    struct entv v = {0};
    struct buf b;
    buf_init(&b, MSG_MAX);
    buf_append(&b, "W", 1);
    int rc = walk_tree_n(FD_ROOT, &v, threads);
    for (size_t i = 0; rc == 0 && i < v.n; i++) {
        if (put_rec(sock, &b, &v.v[i]) != 0) {
            rc = ERR_IO;
        }
    }
    if (rc == 0 && b.len > 1 && send_msg(sock, b.data, b.len, NULL, 0) != 0) {
        rc = ERR_IO;
    }
    send_end(sock, rc, rc ? errno : 0, rc ? "walk" : NULL);
    buf_free(&b);
    entv_free(&v);
    return rc;
}

/* Open the files one request names (m, n bytes after its 'O') and send their fds back. */
static int answer(int sock, const char *m, size_t n)
{
    char reply[1 + BATCH * sizeof(int32_t)];
    int fds[BATCH];
    size_t k = 0, nfds = 0, off = 0;
    int rc = 0;
    reply[0] = 'R';
    while (off < n && k < BATCH) {
        uint32_t len;
        char path[SNAP_MAX_PATH + 1];
        if (n - off < sizeof(len)) {
            return -1;
        }
        memcpy(&len, m + off, sizeof(len));
        off += sizeof(len);
        if (len == 0 || len > SNAP_MAX_PATH || n - off < len) {
            return -1;
        }
        memcpy(path, m + off, len);
        path[len] = 0;
        off += len;
        /* O_NONBLOCK: a file swapped for a FIFO since the walk does not block us; O_NOCTTY:
         * nor does a terminal become ours */
        int fd = open_beneath(FD_ROOT, path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0);
        int32_t err = fd >= 0 ? 0 : (errno ? errno : EIO);
        memcpy(reply + 1 + k * sizeof(err), &err, sizeof(err));
        if (fd >= 0) {
            fds[nfds++] = fd;
        }
        k++;
    }
    if (off != n || send_msg(sock, reply, 1 + k * sizeof(int32_t), fds, nfds) != 0) {
        rc = -1;
    }
    for (size_t i = 0; i < nfds; i++) {
        close(fds[i]);
    }
    return rc;
}

static void serve_opens(int sock)
{
    char *m = xmalloc(MSG_MAX);
    for (;;) {
        ssize_t r = recv(sock, m, MSG_MAX, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0 || m[0] != 'O' || answer(sock, m + 1, (size_t)r - 1) != 0) {
            break; /* the server is done (or we are lost): either way, leave */
        }
    }
    free(m);
}

static _Noreturn void child_main(int rootfd, int sock, pid_t parent, int threads)
{
    const char *step = NULL;
    if (walker_confine(rootfd, sock, parent, &step) != 0) {
        send_end(sock, ERR_FORBIDDEN, errno, step);
        _exit(1);
    }
    if (send_walk(FD_SOCK, threads) == 0) {
        serve_opens(FD_SOCK);
    }
    _exit(0);
}

/* ---------------------------------------------------------------- the server's side */

int walker_start(int rootfd, struct walker **out)
{
    int sv[2];
    *out = NULL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        return ERR_IO;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN); /* the child cannot ask: no /sys */
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer cannot follow threads started in the fork child of a threaded process
     * ("dup thread with used id"): under it the child walks on its own thread. */
    cpus = 1;
#endif
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        child_main(rootfd, sv[1], parent, cpus < 1 ? 1 : (int)cpus);
    }
    close(sv[1]);
    if (pid < 0) {
        LOG_ERROR("snap: cannot fork the walk: %s", strerror(errno));
        close(sv[0]);
        return ERR_IO;
    }
    struct walker *w = xcalloc(1, sizeof(*w));
    w->pid = pid;
    w->sock = sv[0];
    pthread_mutex_init(&w->mu, NULL);
    *out = w;
    return 0;
}

pid_t walker_pid(const struct walker *w)
{
    return w->pid;
}

/* Take the records of one 'W' message (p, n bytes after the tag) into out. */
static int take_recs(const char *p, size_t n, struct entv *out)
{
    size_t off = 0;
    while (off < n) {
        struct wrec r;
        if (n - off < sizeof(r)) {
            return ERR_IO;
        }
        memcpy(&r, p + off, sizeof(r));
        off += sizeof(r);
        int ok = strchr("fdlx", r.type) && r.type && r.omit <= OMIT_BIG && r.path_len > 0 &&
                 r.path_len <= REC_PATH_MAX && r.target_len <= REC_TARGET_MAX &&
                 (r.type == 'l' || r.target_len == 0) && n - off >= r.path_len + r.target_len;
        if (!ok || memchr(p + off, 0, r.path_len) ||
            memchr(p + off + r.path_len, 0, r.target_len)) {
            return ERR_IO;
        }
        struct ent *e = entv_push(out);
        e->type = (char)r.type;
        e->omit = r.omit;
        e->mode = r.mode & 07777;
        e->uid = r.uid;
        e->gid = r.gid;
        e->nlink = r.nlink;
        e->size = r.size;
        e->ino = r.ino;
        e->mtime_ns = r.mtime_ns;
        e->ctime_ns = r.ctime_ns;
        e->path = xstrndup(p + off, r.path_len);
        off += r.path_len;
        if (r.type == 'l') {
            e->target = xstrndup(p + off, r.target_len);
        }
        off += r.target_len;
    }
    return 0;
}

int walker_entries(struct walker *w, struct entv *out)
{
    char *m = xmalloc(MSG_MAX + 1);
    int rc = ERR_IO;
    for (;;) {
        ssize_t r = recv(w->sock, m, MSG_MAX + 1, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0 || r > MSG_MAX) {
            LOG_ERROR("snap: the walk child %s", r == 0 ? "died" : "sent nonsense");
            break;
        }
        if (m[0] == 'W') {
            if (take_recs(m + 1, (size_t)r - 1, out) != 0) {
                LOG_ERROR("snap: the walk child sent a bad entry");
                break;
            }
            continue;
        }
        struct wend e;
        if (m[0] != 'E' || (size_t)r != 1 + sizeof(e)) {
            LOG_ERROR("snap: the walk child sent nonsense");
            break;
        }
        memcpy(&e, m + 1, sizeof(e));
        e.step[sizeof(e.step) - 1] = 0;
        rc = e.rc != 0 ? ERR_IO : 0;
        if (rc != 0) {
            LOG_ERROR("snap: the walk child failed at %s: %s", e.step, strerror(e.err));
        }
        break;
    }
    free(m);
    if (rc != 0) {
        w->broken = 1;
    }
    return rc;
}

void walker_plan(struct walker *w, struct ent **jobs, size_t n)
{
    w->jobs = jobs;
    w->n = n;
    w->fds = xmalloc((n + 1) * sizeof(*w->fds));
    for (size_t i = 0; i < n; i++) {
        w->fds[i] = -1;
    }
}

/* Request the next files while fewer than WINDOW are pending. Caller holds mu. */
static int request_more(struct walker *w)
{
    char *m = xmalloc(MSG_MAX);
    int rc = 0;
    while (rc == 0 && w->sent < w->n && w->sent - w->answered < WINDOW) {
        size_t len = 1, k = 0;
        m[0] = 'O';
        while (w->sent + k < w->n && k < BATCH) {
            const char *p = w->jobs[w->sent + k]->path;
            uint32_t pl = (uint32_t)strlen(p);
            if (len + sizeof(pl) + pl > MSG_MAX) {
                break;
            }
            memcpy(m + len, &pl, sizeof(pl));
            memcpy(m + len + sizeof(pl), p, pl);
            len += sizeof(pl) + pl;
            k++;
        }
        rc = send_msg(w->sock, m, len, NULL, 0) == 0 ? 0 : ERR_IO;
        w->sent += k;
    }
    free(m);
    return rc;
}

/* Receive one answer: the fds of the next pending files. Caller holds mu. */
static int receive_answer(struct walker *w)
{
    char m[1 + BATCH * sizeof(int32_t) + 1];
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(BATCH * sizeof(int))];
    } u;
    struct iovec iov = {.iov_base = m, .iov_len = sizeof(m)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t r;
    do {
        r = recvmsg(w->sock, &mh, MSG_CMSG_CLOEXEC);
    } while (r < 0 && errno == EINTR);
    int fds[BATCH], nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (nfds < BATCH) {
                    fds[nfds++] = fd;
                } else {
                    close(fd);
                }
            }
        }
    }
    size_t k = r > 1 ? (size_t)(r - 1) / sizeof(int32_t) : 0;
    int ok = r > 1 && m[0] == 'R' && (size_t)(r - 1) % sizeof(int32_t) == 0 && k > 0 &&
             k <= w->sent - w->answered && !(mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC));
    int used = 0;
    for (size_t i = 0; ok && i < k; i++) {
        int32_t err;
        memcpy(&err, m + 1 + i * sizeof(err), sizeof(err));
        if (err == 0 && used < nfds) {
            w->fds[w->answered + i] = fds[used++];
        } else if (err == 0) {
            ok = 0; /* a file said opened without its fd */
        }
    }
    if (!ok || used != nfds) {
        for (int i = used; i < nfds; i++) {
            close(fds[i]);
        }
        LOG_ERROR("snap: the walk child %s", r == 0 ? "died" : "answered nonsense");
        return ERR_IO;
    }
    w->answered += k;
    return 0;
}

int walker_fd(struct walker *w, size_t i, int *fd)
{
    int rc = 0;
    *fd = -1;
    pthread_mutex_lock(&w->mu);
    while (!w->broken && i < w->n && i >= w->answered) {
        if (request_more(w) != 0 || receive_answer(w) != 0) {
            w->broken = 1;
        }
    }
    if (w->broken) {
        rc = ERR_IO;
    } else if (i < w->n) {
        *fd = w->fds[i];
        w->fds[i] = -1;
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void walker_free(struct walker *w)
{
    if (!w) {
        return;
    }
    /* Nothing is left to ask of it, whatever it is doing: a child still walking (a failed
     * snapshot) is not waited for. */
    kill(w->pid, SIGKILL);
    close(w->sock);
    while (waitpid(w->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    for (size_t i = 0; w->fds && i < w->n; i++) {
        if (w->fds[i] >= 0) {
            close(w->fds[i]);
        }
    }
    free(w->fds);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
