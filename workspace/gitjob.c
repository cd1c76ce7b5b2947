/*
 * gitjob.c - run the gitx_* operations on a workspace in the sessiond-git helper (gitjob.h):
 * the server side (spawn, request, answer, cancel) and the helper side (stage, drop, serve).
 *
 * Threads: the client functions are called on any server thread; each spawns its own helper
 * with posix_spawn (no fork of the threaded server: libgit2's and the TLS library's locks may
 * be held by another thread at that moment) and waits for it. The helper is single threaded.
 *
 * Invariants: the helper gets an empty environment and descriptors 0, 1, 2 only (a sanitizer
 * build adds its sanitizer options and a report file: see san_open); it never
 * runs libgit2 on a workspace as root when the request names a user; an answer is at most
 * ANSWER_CAP bytes and a request REQUEST_CAP.
 */
#include "workspace/gitjob.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/xmem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define REQUEST_CAP (1024 * 1024)
#define ANSWER_CAP  (8 * 1024 * 1024)
/* Bounds of a diff answer: its text (escaped in JSON: at most ~2x for text libgit2 does not
 * call binary) and its list must stay well under ANSWER_CAP. */
#define DIFF_CAP_MAX    (2 * 1024 * 1024)
#define DIFF_FILES_MAX  5000
#define DIFF_DEADLINE_S 30
/* The helper's private staging point: a tmpfs mounted in its own mount namespace only (the
 * local sandbox backend stages its binds at the same place, in namespaces of their own). */
#define STAGE        "/run/sessiond-stage"
#define STAGE_WS     STAGE "/ws"
#define STAGE_OBJS   STAGE "/objs"
#define STAGE_REMOTE STAGE "/remote"

/* ---------------------------------------------------------------- server side */

char *gitjob_default_bin(void)
{
    const char *env = getenv("SESSIOND_GIT_BIN");
    if (env && *env) {
        return xstrdup(env);
    }
    char p[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", p, sizeof(p) - 1);
    if (n <= 0) {
        return xstrdup("sessiond-git");
    }
    p[n] = 0;
    char *slash = strrchr(p, '/');
    if (slash) {
        *slash = 0;
    }
    char *bin = xasprintf("%s/sessiond-git", p);
    if (access(bin, X_OK) != 0) {
        free(bin);
        bin = xasprintf("%s/../sessiond-git", p); /* unit tests live in build/tests/ */
    }
    return bin;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return ERR_IO;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read fd to EOF into b (capped by b's max). While waiting for a network job (net), a server
 * shutdown (gitx_cancel_all) kills the helper: a fetch or push may otherwise wait on the
 * network. Local jobs (an end-of-prompt commit during the shutdown grace) run to the end, as
 * they did in the server's process. */
static int read_answer(int fd, pid_t pid, int net, struct buf *b)
{
    char chunk[16384];
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 500);
        if (pr < 0 && errno != EINTR) {
            return ERR_IO;
        }
        if (net && gitx_cancelled()) {
            kill(pid, SIGKILL);
            return ERR_CANCELLED;
        }
        if (pr <= 0) {
            continue;
        }
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return ERR_IO;
        }
        if (r == 0) {
            return 0;
        }
        if (buf_append(b, chunk, (size_t)r) != 0) {
            LOG_WARN("gitjob: the helper's answer is over %d bytes: killed", ANSWER_CAP);
            kill(pid, SIGKILL);
            return ERR_TOO_LARGE;
        }
    }
}

/* ---- sanitizer builds: the helper's reports go where the server's go ----
 *
 * A sanitizer writes a report to its log_path when its options name one, opening the file
 * when the report is written. The helper cannot do that: its environment is empty, and by
 * then it is confined (the host tree read-only in its mount namespace) and usually runs as a
 * sandbox uid. So in a sanitizer build only, and only when the server's own options name a
 * log_path, the server opens an unnamed file (O_TMPFILE) in that directory and hands it to
 * the helper as descriptor GITJOB_REPORT_FD, which the helper makes its report descriptor
 * before anything else (gitjob/sessiond-git.c); the helper also gets the server's sanitizer
 * option variables (ASAN_OPTIONS and its kin, nothing else of the environment), so it halts,
 * checks leaks and suppresses as the server does. A file the helper wrote to is linked in
 * as <log_path>.<helper pid>, where the test runner counts reports; an empty one vanishes
 * with its descriptor. Safe: a release build compiles none of this, the variables are the
 * operator's sanitizer settings (no secret), and the descriptor names a file nobody else
 * has. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SAN_BUILD 1
#else
#define SAN_BUILD 0
#endif

struct san_report {
    int fd;              /* the unnamed report file, or -1 */
    char path[PATH_MAX]; /* the server's log_path */
    char *env[5];        /* the sanitizer option variables set in the server, NULL-ended */
};

#if SAN_BUILD
static const char *const SAN_VARS[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS",
                                       "TSAN_OPTIONS"};

/* The value of log_path in a sanitizer option string (options are separated by ':', ','
 * or blanks), copied into out; 0 if there is none. */
static int san_log_path(const char *opts, char *out, size_t cap)
{
    for (const char *p = opts; p && *p;) {
        size_t n = strcspn(p, ":, \t\n");
        if (n > 9 && strncmp(p, "log_path=", 9) == 0 && n - 9 < cap) {
            memcpy(out, p + 9, n - 9);
            out[n - 9] = 0;
            return 1;
        }
        p += n + (p[n] ? 1 : 0);
    }
    return 0;
}
#endif

static void san_open(struct san_report *r)
{
    memset(r, 0, sizeof(*r));
    r->fd = -1;
#if SAN_BUILD
    int nenv = 0, found = 0;
    for (size_t i = 0; i < sizeof(SAN_VARS) / sizeof(SAN_VARS[0]); i++) {
        const char *v = getenv(SAN_VARS[i]);
        if (!v) {
            continue;
        }
        r->env[nenv++] = xasprintf("%s=%s", SAN_VARS[i], v);
        found = found || san_log_path(v, r->path, sizeof(r->path));
    }
    char dir[PATH_MAX];
    const char *slash = found ? strrchr(r->path, '/') : NULL;
    if (slash && slash != r->path && (size_t)(slash - r->path) < sizeof(dir)) {
        memcpy(dir, r->path, (size_t)(slash - r->path));
        dir[slash - r->path] = 0;
        r->fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    }
#endif
}

/* After the helper exited: keep what it reported, free the rest. */
static void san_close(struct san_report *r, pid_t pid)
{
    struct stat sb;
    if (r->fd >= 0 && pid > 0 && fstat(r->fd, &sb) == 0 && sb.st_size > 0) {
        char proc[64], dst[PATH_MAX + 32];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", r->fd);
        snprintf(dst, sizeof(dst), "%s.%d", r->path, (int)pid);
        if (linkat(AT_FDCWD, proc, AT_FDCWD, dst, AT_SYMLINK_FOLLOW) != 0) {
            LOG_ERROR("gitjob: the helper's sanitizer report: cannot link %s: %s", dst,
                      strerror(errno));
        }
    }
    if (r->fd >= 0) {
        close(r->fd);
    }
    for (int i = 0; r->env[i]; i++) {
        free(r->env[i]);
        r->env[i] = NULL;
    }
    r->fd = -1;
}

static int spawn_helper(const char *bin, int in_fd, int out_fd, const struct san_report *san,
                        pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, all;
    char *const argv[] = {"sessiond-git", NULL};
    char *const *envp = san->env; /* empty but in a sanitizer build */
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
    posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    if (san->fd >= 0) {
        posix_spawn_file_actions_adddup2(&fa, san->fd, GITJOB_REPORT_FD);
    }
    posix_spawn_file_actions_addclosefrom_np(&fa, san->fd >= 0 ? GITJOB_REPORT_FD + 1 : 3);
    posix_spawnattr_init(&at);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all); /* the server ignores SIGPIPE */
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int e = posix_spawn(pid, bin, &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (e != 0) {
        LOG_ERROR("gitjob: cannot start %s: %s", bin, strerror(e));
        return ERR_UNAVAILABLE;
    }
    return 0;
}

/* Run one request (taken over) in a helper; *ans = its answer object, whose "rc" is returned. */
static int run_job(const struct gitjob_cfg *c, json_t *req, json_t **ans)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    pid_t pid = -1;
    char *text = NULL;
    struct buf b;
    struct san_report san;
    buf_init(&b, ANSWER_CAP);
    san_open(&san);
    *ans = NULL;
    json_object_set_new(req, "uid", json_integer(c->uid));
    json_object_set_new(req, "gid", json_integer(c->gid));
    if (c->owner_lo > 0 && c->owner_hi >= c->owner_lo) {
        json_object_set_new(req, "owner_lo", json_integer(c->owner_lo));
        json_object_set_new(req, "owner_hi", json_integer(c->owner_hi));
    }
    json_object_set_new(req, "ca_file", c->ca_file ? json_string(c->ca_file) : json_null());
    json_object_set_new(req, "log", json_integer(log_threshold));
    int net = json_object_get(req, "url") != NULL;
    int rc = net && gitx_cancelled() ? ERR_CANCELLED : 0;
    if (rc == 0 && (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0)) {
        rc = ERR_IO;
    }
    if (rc == 0) {
        rc = spawn_helper(c->bin, in[0], out[1], &san, &pid);
    }
    if (rc != 0) {
        goto out;
    }
    close(in[0]);
    close(out[1]);
    in[0] = out[1] = -1;
    text = json_dumps(req, JSON_COMPACT);
    /* a helper that died early leaves a broken pipe: its exit status says why */
    int wrc = text ? write_all(in[1], text, strlen(text)) : ERR_NOMEM;
    close(in[1]);
    in[1] = -1;
    rc = read_answer(out[0], pid, net, &b);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    san_close(&san, pid);
    if (rc != 0) {
        goto out;
    }
    json_t *a = b.len ? json_loadb(b.data, b.len, 0, NULL) : NULL;
    json_t *jrc = json_object_get(a, "rc");
    if (wrc != 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || !json_is_integer(jrc)) {
        LOG_ERROR("gitjob: %s: the helper failed (%s %d)",
                  json_string_value(json_object_get(req, "op")),
                  WIFEXITED(st) ? "exit status" : "signal",
                  WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        json_decref(a);
        rc = ERR_INTERNAL;
        goto out;
    }
    rc = (int)json_integer_value(jrc);
    *ans = a;
out:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0) {
            close(in[i]);
        }
        if (out[i] >= 0) {
            close(out[i]);
        }
    }
    if (text) { /* it held the credentials and the scanned secrets */
        explicit_bzero(text, strlen(text));
    }
    san_close(&san, -1);
    free(text);
    buf_free(&b);
    json_decref(req);
    return rc;
}

static json_t *request(const char *op, const char *dir, const char *shared)
{
    return json_pack("{s:s, s:s, s:s?}", "op", op, "dir", dir, "shared", shared);
}

static void copy_sha(json_t *ans, const char *key, char out[41])
{
    const char *s = json_string_value(json_object_get(ans, key));
    if (out && s && strlen(s) == 40) {
        memcpy(out, s, 41);
    }
}

static json_t *cred_json(const struct gitx_cred *cred)
{
    if (!cred) {
        return json_null();
    }
    return json_pack("{s:s?, s:s?}", "username", cred->username, "password", cred->password);
}

int gitjob_head(const struct gitjob_cfg *c, const char *dir, const char *shared, char head[41],
                char **branch_out)
{
    json_t *ans = NULL;
    if (branch_out) {
        *branch_out = NULL;
    }
    int rc = run_job(c, request("head", dir, shared), &ans);
    if (rc == 0) {
        copy_sha(ans, "head", head);
        const char *br = json_string_value(json_object_get(ans, "branch"));
        if (branch_out && br) {
            *branch_out = xstrdup(br);
        }
    }
    json_decref(ans);
    return rc;
}

int gitjob_changed(const struct gitjob_cfg *c, const char *dir, const char *shared, json_t **out)
{
    json_t *ans = NULL;
    *out = NULL;
    int rc = run_job(c, request("changed", dir, shared), &ans);
    if (rc == 0) {
        json_t *list = json_object_get(ans, "changed");
        *out = json_is_array(list) ? json_incref(list) : json_array();
    }
    json_decref(ans);
    return rc;
}

int gitjob_diff(const struct gitjob_cfg *c, const char *dir, const char *shared,
                const struct gitx_diff_req *q, json_t **out)
{
    json_t *ans = NULL;
    *out = NULL;
    json_t *req = request("diff", dir, shared);
    json_object_set_new(req, "diff",
                        json_pack("{s:s?, s:s?, s:b, s:s?, s:I, s:I, s:I}", "branch", q->branch,
                                  "base_branch", q->base_branch, "against_head", q->against_head,
                                  "path", q->path, "cap", (json_int_t)q->cap, "file_cap",
                                  (json_int_t)q->file_cap, "max_files", (json_int_t)q->max_files));
    if (q->deadline_s > 0) {
        json_object_set_new(json_object_get(req, "diff"), "deadline_s",
                            json_integer((json_int_t)q->deadline_s));
    }
    int rc = run_job(c, req, &ans);
    if (rc == 0) {
        json_t *d = json_object_get(ans, "diff");
        *out = json_is_object(d) ? json_incref(d) : NULL;
        rc = *out ? 0 : ERR_INTERNAL;
    }
    json_decref(ans);
    return rc;
}

int gitjob_commit_n(const struct gitjob_cfg *c, const char *dir, const char *shared,
                    const char *branch, const struct gitx_ident *who, const char *message,
                    char sha[41], int *committed, size_t *files, json_t **paths)
{
    json_t *ans = NULL;
    *committed = 0;
    if (paths) {
        *paths = NULL;
    }
    if (!branch || !who || !who->name || !message) {
        return ERR_INVALID;
    }
    json_t *req = request("commit", dir, shared);
    json_object_set_new(req, "branch", json_string(branch));
    json_object_set_new(req, "name", json_string(who->name));
    json_object_set_new(req, "email", json_string(who->email ? who->email : ""));
    json_object_set_new(req, "message", json_string(message));
    int rc = run_job(c, req, &ans);
    if (rc == 0) {
        *committed = json_is_true(json_object_get(ans, "committed"));
        copy_sha(ans, "sha", sha);
        if (files) {
            *files = (size_t)json_integer_value(json_object_get(ans, "files"));
        }
        json_t *pl = json_object_get(ans, "paths");
        if (paths && json_is_array(pl)) {
            /* what the helper answers is the sandbox user's: strings only, capped */
            *paths = json_array();
            size_t i;
            json_t *e;
            json_array_foreach(pl, i, e)
            {
                if (json_is_string(e) && json_array_size(*paths) < GITX_PATHS_MAX) {
                    json_array_append(*paths, e);
                }
            }
        }
    }
    json_decref(ans);
    return rc;
}

int gitjob_refresh_index(const struct gitjob_cfg *c, const char *dir, const char *shared)
{
    json_t *ans = NULL;
    int rc = run_job(c, request("refresh_index", dir, shared), &ans);
    json_decref(ans);
    return rc;
}

int gitjob_sync(const struct gitjob_cfg *c, const char *dir, const char *shared, const char *url,
                const char *branch, const struct gitx_cred *cred, char head[41])
{
    json_t *ans = NULL;
    if (!url || !branch) {
        return ERR_INVALID;
    }
    json_t *req = request("sync", dir, shared);
    json_object_set_new(req, "url", json_string(url));
    json_object_set_new(req, "branch", json_string(branch));
    json_object_set_new(req, "cred", cred_json(cred));
    int rc = run_job(c, req, &ans);
    if (rc == 0) {
        copy_sha(ans, "head", head);
    }
    json_decref(ans);
    return rc;
}

int gitjob_ff(const struct gitjob_cfg *c, const char *dir, const char *shared, const char *url,
              const char *branch, const struct gitx_cred *cred, char remote[41], char local[41],
              int *moved)
{
    json_t *ans = NULL;
    *moved = 0;
    remote[0] = local[0] = 0;
    if (!url || !branch) {
        return ERR_INVALID;
    }
    json_t *req = request("ff", dir, shared);
    json_object_set_new(req, "url", json_string(url));
    json_object_set_new(req, "branch", json_string(branch));
    json_object_set_new(req, "cred", cred_json(cred));
    int rc = run_job(c, req, &ans);
    copy_sha(ans, "remote", remote);
    copy_sha(ans, "local", local);
    *moved = rc == 0 && json_is_true(json_object_get(ans, "moved"));
    json_decref(ans);
    return rc;
}

int gitjob_push(const struct gitjob_cfg *c, const char *dir, const char *shared, const char *url,
                const char *branch, const struct gitx_cred *cred, const struct redact_set *scan,
                struct gitjob_blocked *blocked)
{
    json_t *ans = NULL;
    if (!url || !branch) {
        return ERR_INVALID;
    }
    json_t *req = request("push", dir, shared);
    json_object_set_new(req, "url", json_string(url));
    json_object_set_new(req, "branch", json_string(branch));
    json_object_set_new(req, "cred", cred_json(cred));
    if (redact_set_count(scan) > 0) {
        json_t *list = json_array();
        for (size_t i = 0; i < redact_set_count(scan); i++) {
            size_t n = 0;
            const char *v = redact_set_value(scan, i, &n);
            json_array_append_new(
                list, json_pack("{s:s, s:s%}", "name", redact_set_name(scan, i), "value", v, n));
        }
        json_object_set_new(req, "scan", list);
    }
    int rc = run_job(c, req, &ans);
    json_t *b = json_object_get(ans, "blocked");
    if (rc == ERR_UNPROCESSABLE && json_is_object(b) && blocked) {
        snprintf(blocked->secret, sizeof(blocked->secret), "%s",
                 json_string_value(json_object_get(b, "secret")) ?: "");
        snprintf(blocked->path, sizeof(blocked->path), "%s",
                 json_string_value(json_object_get(b, "path")) ?: "");
    }
    json_decref(ans);
    return rc;
}

int gitjob_chown(const struct gitjob_cfg *c, const char *dir)
{
    json_t *ans = NULL;
    if (c->uid <= 0 || c->gid < 0) {
        return 0; /* no sandbox user to give the tree to */
    }
    int rc = run_job(c, request("chown", dir, NULL), &ans);
    json_decref(ans);
    return rc;
}

/* ---------------------------------------------------------------- helper side */

static int fail_at(const char *what)
{
    LOG_ERROR("sessiond-git: %s: %s", what, strerror(errno));
    return ERR_FORBIDDEN;
}

/* The directory of a remote on this machine (a path or a file:// URL; the registry's, not the
 * sandbox's), or NULL for a network remote. */
static const char *local_remote(const char *url)
{
    if (!url) {
        return NULL;
    }
    if (strncmp(url, "file://", 7) == 0) {
        return url + 7;
    }
    return url[0] == '/' ? url : NULL;
}

/* Bind the directory fd (opened in this namespace) at at; read-only if ro. */
static int bind_fd(int fd, const char *at, int ro)
{
    char src[64];
    snprintf(src, sizeof(src), "/proc/self/fd/%d", fd);
    if (mount(src, at, NULL, MS_BIND, NULL) != 0) {
        return -1;
    }
    struct mount_attr a = {.attr_set = ro ? MOUNT_ATTR_RDONLY : 0};
    return ro ? mount_setattr(AT_FDCWD, at, 0, &a, sizeof(a)) : 0;
}

/* As root: a private mount namespace where the host tree is read-only, the workspace is bound
 * read-write at STAGE_WS and the shared store read-only at STAGE_OBJS (under a private tmpfs,
 * traversable by the sandbox user, who may not traverse the data dir). Both are opened with
 * O_NOFOLLOW and bound through their descriptors: what is mounted is the directory the server
 * named, never what a symlink the sandbox planted points at. A remote on this machine
 * (remote, or NULL) is bound at STAGE_REMOTE, read-write if remote_rw. nodev: device nodes
 * too are closed (a read-only mount does not stop writes to a device), for a helper that
 * stays root. */
static int stage(const char *dir, const char *shared, const char *remote, int remote_rw, int nodev)
{
    int wfd = -1, ofd = -1, rfd = -1, rc = 0;
    struct stat sb;
    if (unshare(CLONE_NEWNS) != 0) {
        return errno == EPERM ? ERR_UNSUPPORTED : fail_at("unshare");
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        return fail_at("make / private");
    }
    /* opened after the unshare: a bind source must belong to this namespace */
    wfd = open(dir, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
    if (wfd < 0 || fstat(wfd, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        rc = fail_at(dir);
        goto out;
    }
    if (shared) {
        ofd = open(shared, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
        if (ofd < 0) {
            rc = fail_at(shared);
            goto out;
        }
    }
    if (remote) {
        rfd = open(remote, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (rfd < 0) {
            rc = fail_at(remote);
            goto out;
        }
    }
    if (mkdir(STAGE, 0755) != 0 && errno != EEXIST) {
        rc = fail_at("mkdir " STAGE);
        goto out;
    }
    if (mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16k") != 0 ||
        mkdir(STAGE_WS, 0755) != 0 || mkdir(STAGE_OBJS, 0755) != 0 ||
        mkdir(STAGE_REMOTE, 0755) != 0) {
        rc = fail_at("staging tmpfs");
        goto out;
    }
    if (bind_fd(wfd, STAGE_WS, 0) != 0) {
        rc = fail_at("bind the workspace");
        goto out;
    }
    if (ofd >= 0 && bind_fd(ofd, STAGE_OBJS, 1) != 0) {
        rc = fail_at("bind the shared store");
        goto out;
    }
    if (rfd >= 0 && bind_fd(rfd, STAGE_REMOTE, !remote_rw) != 0) {
        rc = fail_at("bind the remote");
        goto out;
    }
    /* Everything read-only (and no set-id programs), then the workspace (and a local remote
     * being pushed to) writable again: the only places this process can write, whatever a path
     * it follows says. */
    struct mount_attr ro = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID |
                                        (nodev ? MOUNT_ATTR_NODEV : 0)};
    struct mount_attr rw = {.attr_clr = MOUNT_ATTR_RDONLY, .attr_set = MOUNT_ATTR_NODEV};
    if (mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, &ro, sizeof(ro)) != 0) {
        rc = fail_at("read-only host tree");
        goto out;
    }
    if (mount_setattr(AT_FDCWD, STAGE_WS, 0, &rw, sizeof(rw)) != 0 ||
        (rfd >= 0 && remote_rw && mount_setattr(AT_FDCWD, STAGE_REMOTE, 0, &rw, sizeof(rw)) != 0)) {
        rc = fail_at("writable workspace");
        goto out;
    }
out:
    if (wfd >= 0) {
        close(wfd);
    }
    if (ofd >= 0) {
        close(ofd);
    }
    if (rfd >= 0) {
        close(rfd);
    }
    return rc;
}

/* Become uid/gid for good: no supplementary groups, no way back, no new privileges. */
static int drop_to(int uid, int gid)
{
    if (setgroups(0, NULL) != 0 || setgid((gid_t)gid) != 0 || setuid((uid_t)uid) != 0) {
        return fail_at("drop privileges");
    }
    if (setuid(0) == 0 || geteuid() != (uid_t)uid) {
        LOG_ERROR("sessiond-git: still able to regain root: refused");
        return ERR_FORBIDDEN;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        return fail_at("prctl");
    }
    /* the credential change cleared it: the helper must not outlive the server */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() == 1) {
        return fail_at("parent death signal");
    }
    return 0;
}

#define CHOWN_MAX_DEPTH 128 /* directories open at once in chown_tree */

/* Own one entry of the directory dfd (stat'ed as *sb) to uid:gid. Never through a symlink
 * (AT_SYMLINK_NOFOLLOW changes the link itself), and never a file with other links: its
 * inode may belong to another tree as well (a snapshot store's, a local remote's objects). */
static void chown_entry(int dfd, const char *name, const struct stat *sb, uid_t uid, gid_t gid)
{
    if (sb->st_uid == uid && sb->st_gid == gid) {
        return;
    }
    if (!S_ISDIR(sb->st_mode) && sb->st_nlink > 1) {
        return;
    }
    if (fchownat(dfd, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0 && errno != ENOENT) {
        LOG_DEBUG("sessiond-git: chown %s: %s", name, strerror(errno));
    }
}

/* Give the tree dir to uid:gid (files the server wrote as root: a clone, a restore).
 * The tree may be the sandbox's, changing under us: the walk goes by descriptors only
 * (openat O_NOFOLLOW|O_DIRECTORY from the parent's descriptor, fchownat(AT_SYMLINK_NOFOLLOW)),
 * so a directory swapped for a symlink mid-walk is not entered and a symlink's target is never
 * chowned; it stays on dir's file system and stops CHOWN_MAX_DEPTH levels down. Iterative:
 * the stack of open directories is bounded, whatever the depth of the tree. */
static void chown_walk(const char *dir, uid_t uid, gid_t gid)
{
    DIR *stack[CHOWN_MAX_DEPTH];
    int n = 0, deep = 0;
    struct stat top;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &top) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        return;
    }
    if (top.st_uid != uid || top.st_gid != gid) {
        if (fchown(fd, uid, gid) != 0) {
            LOG_DEBUG("sessiond-git: chown %s: %s", dir, strerror(errno));
        }
    }
    stack[n] = fdopendir(fd);
    if (!stack[n]) {
        close(fd);
        return;
    }
    n++;
    while (n > 0) {
        DIR *d = stack[n - 1];
        struct dirent *e = readdir(d);
        if (!e) {
            closedir(d);
            n--;
            continue;
        }
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        struct stat sb;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            sb.st_dev != top.st_dev) {
            continue; /* gone, or another file system mounted there: not ours to change */
        }
        chown_entry(dirfd(d), e->d_name, &sb, uid, gid);
        if (!S_ISDIR(sb.st_mode)) {
            continue;
        }
        if (n >= CHOWN_MAX_DEPTH) {
            deep = 1;
            continue;
        }
        int cfd = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        struct stat cs;
        if (cfd >= 0 &&
            (fstat(cfd, &cs) != 0 || cs.st_dev != sb.st_dev || cs.st_ino != sb.st_ino)) {
            close(cfd); /* swapped between the stat and the open: skip what is there now */
            cfd = -1;
        }
        DIR *cd = cfd >= 0 ? fdopendir(cfd) : NULL;
        if (cd) {
            stack[n++] = cd;
        } else if (cfd >= 0) {
            close(cfd);
        }
    }
    if (deep) {
        LOG_WARN("sessiond-git: %s is deeper than %d directories: the rest keeps its owner", dir,
                 CHOWN_MAX_DEPTH);
    }
}

/* Become uid/gid (the owner-to-be: the tree goes to it anyway) keeping only the capabilities an
 * ownership walk needs: change owners, read any directory. Not root's uid: a process of uid 0
 * may still signal every root process, write every root-owned file its mount namespace leaves
 * writable, and connect to root-only sockets; no CAP_SYS_ADMIN (no remount of the read-only
 * host tree), no CAP_DAC_OVERRIDE, no CAP_FOWNER. */
static int keep_chown_caps_only(int uid, int gid)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 || setgroups(0, NULL) != 0 ||
        setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0 ||
        setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) {
        return fail_at("drop privileges");
    }
    memset(d, 0, sizeof(d));
    unsigned keep = (1U << CAP_CHOWN) | (1U << CAP_DAC_READ_SEARCH);
    d[0].effective = d[0].permitted = keep;
    if (syscall(SYS_capset, &h, d) != 0 || prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) {
        return fail_at("capset");
    }
    if (setuid(0) == 0 || geteuid() != (uid_t)uid) {
        LOG_ERROR("sessiond-git: still able to regain root: refused");
        return ERR_FORBIDDEN;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        return fail_at("prctl");
    }
    /* the credential change cleared it: the helper must not outlive the server */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() == 1) {
        return fail_at("parent death signal");
    }
    return 0;
}

static int read_request(int fd, json_t **out)
{
    struct buf b;
    char chunk[16384];
    int rc = 0;
    buf_init(&b, REQUEST_CAP);
    *out = NULL;
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            rc = ERR_IO;
            break;
        }
        if (r == 0) {
            break;
        }
        rc = buf_append(&b, chunk, (size_t)r);
        if (rc != 0) {
            break;
        }
    }
    if (rc == 0) {
        *out = json_loadb(b.data, b.len, 0, NULL);
        rc = json_is_object(*out) ? 0 : ERR_INVALID;
    }
    buf_free(&b);
    return rc;
}

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

struct scan_ctx {
    struct redact_set *set;
    const char *name; /* of the secret found */
    char *path;       /* where ("" for a commit message) */
};

static int scan_blob(void *ctx, const char *path, const void *data, size_t n)
{
    struct scan_ctx *sc = ctx;
    size_t off = 0, len = 0;
    if (!redact_find(sc->set, data, n, &off, &len, &sc->name)) {
        return 0;
    }
    sc->path = xstrdup(path ? path : "");
    return ERR_UNPROCESSABLE;
}

/* The secrets of the request's "scan" list must not be in what the push sends: 0, or
 * ERR_UNPROCESSABLE with ans.blocked = {secret, path} (nothing is pushed then). */
static int scan_before_push(json_t *req, const char *dir, const char *shared, const char *branch,
                            json_t *ans)
{
    json_t *list = json_object_get(req, "scan");
    struct scan_ctx sc = {redact_set_new(), NULL, NULL};
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        json_t *v = json_object_get(e, "value");
        const char *name = json_string_value(json_object_get(e, "name"));
        if (name && json_is_string(v)) {
            redact_set_add(sc.set, name, json_string_value(v), json_string_length(v));
        }
    }
    int rc = 0;
    if (redact_set_count(sc.set) > 0) {
        rc = gitx_scan_branch(dir, shared, branch, scan_blob, &sc);
    }
    if (rc == ERR_UNPROCESSABLE && sc.path) {
        json_object_set_new(ans, "blocked",
                            json_pack("{s:s, s:s}", "secret", sc.name, "path", sc.path));
    }
    free(sc.path);
    redact_set_unref(sc.set);
    return rc;
}

/* The diff job: its parameters (bounded here again: the answer must fit ANSWER_CAP) and a
 * deadline, since a file the sandbox swaps for a FIFO between the walk and the read would
 * block the open for good (SIGALRM's default action ends the helper; the server reports an
 * error). */
static int dispatch_diff(json_t *p, const char *dir, const char *shared, json_t *ans)
{
    json_int_t cap = json_integer_value(json_object_get(p, "cap"));
    json_int_t fcap = json_integer_value(json_object_get(p, "file_cap"));
    json_int_t nmax = json_integer_value(json_object_get(p, "max_files"));
    struct gitx_diff_req q = {
        .branch = jstr(p, "branch"),
        .base_branch = jstr(p, "base_branch"),
        .against_head = json_is_true(json_object_get(p, "against_head")),
        .path = jstr(p, "path"),
        .cap = cap > 0 && cap <= DIFF_CAP_MAX ? (size_t)cap : DIFF_CAP_MAX,
        .file_cap = fcap > 0 && fcap <= DIFF_CAP_MAX ? (size_t)fcap : DIFF_CAP_MAX,
        .max_files = nmax > 0 && nmax <= DIFF_FILES_MAX ? (size_t)nmax : DIFF_FILES_MAX,
    };
    json_int_t dl = json_integer_value(json_object_get(p, "deadline_s"));
    json_t *d = NULL;
    alarm(dl > 0 && dl < DIFF_DEADLINE_S ? (unsigned)dl : DIFF_DEADLINE_S);
    int rc = gitx_diff(dir, shared, &q, &d);
    alarm(0);
    if (rc == 0) {
        json_object_set_new(ans, "diff", d);
    }
    return rc;
}

/* Run the operation req names on dir/shared (already staged; url too, when not NULL);
 * fills ans. */
static int dispatch(json_t *req, const char *dir, const char *shared, const char *url, json_t *ans)
{
    const char *op = jstr(req, "op");
    const char *branch = jstr(req, "branch");
    json_t *jc = json_object_get(req, "cred");
    struct gitx_cred cred = {jstr(jc, "username"), jstr(jc, "password")};
    const struct gitx_cred *cp = json_is_object(jc) ? &cred : NULL;
    char sha[41] = "";
    int rc = ERR_INVALID;
    if (!op) {
        return rc;
    }
    if (strcmp(op, "head") == 0) {
        char *br = NULL;
        rc = gitx_head(dir, shared, sha, &br);
        if (rc == 0) {
            json_object_set_new(ans, "head", json_string(sha));
            json_object_set_new(ans, "branch", br ? json_string(br) : json_null());
        }
        free(br);
    } else if (strcmp(op, "changed") == 0) {
        json_t *list = NULL;
        rc = gitx_changed(dir, shared, &list);
        if (rc == 0) {
            json_object_set_new(ans, "changed", list);
        }
    } else if (strcmp(op, "commit") == 0) {
        struct gitx_ident who = {jstr(req, "name"), jstr(req, "email")};
        int committed = 0;
        size_t files = 0;
        json_t *paths = NULL;
        rc = gitx_commit_n(dir, shared, branch, &who, jstr(req, "message"), sha, &committed, &files,
                           &paths);
        if (rc == 0) {
            json_object_set_new(ans, "committed", json_boolean(committed));
            json_object_set_new(ans, "sha", committed ? json_string(sha) : json_null());
            json_object_set_new(ans, "files", json_integer((json_int_t)files));
            json_object_set_new(ans, "paths", paths ? paths : json_array());
            paths = NULL;
        }
        json_decref(paths);
    } else if (strcmp(op, "diff") == 0) {
        rc = dispatch_diff(json_object_get(req, "diff"), dir, shared, ans);
    } else if (strcmp(op, "refresh_index") == 0) {
        rc = gitx_refresh_index(dir, shared);
    } else if (strcmp(op, "sync") == 0) {
        rc = url ? gitx_sync(dir, shared, url, branch, cp, sha) : ERR_INVALID;
        if (rc == 0) {
            json_object_set_new(ans, "head", json_string(sha));
        }
    } else if (strcmp(op, "ff") == 0) {
        char local[41] = "";
        int moved = 0;
        rc = url ? gitx_ff(dir, shared, url, branch, cp, sha, local, &moved) : ERR_INVALID;
        /* the two ends go back on a refusal too: the caller reports them */
        json_object_set_new(ans, "remote", sha[0] ? json_string(sha) : json_null());
        json_object_set_new(ans, "local", local[0] ? json_string(local) : json_null());
        json_object_set_new(ans, "moved", json_boolean(moved));
    } else if (strcmp(op, "push") == 0) {
        rc = url ? scan_before_push(req, dir, shared, branch, ans) : ERR_INVALID;
        if (rc == 0) {
            rc = gitx_push(dir, shared, url, branch, cp);
        }
    }
    return rc;
}

/* With one uid per sandbox (owner_lo..owner_hi in the request), a workspace whose directory
 * belongs to a uid of that range is that sandbox's: the job runs as (or gives the tree to) that
 * uid, so what git writes stays the sandbox's. A sandbox cannot change who owns its workspace
 * directory (no CAP_CHOWN), and a directory of any other owner (root after a restore) gets the
 * request's uid. Opened without following a symlink, as root, before anything is staged. */
static void owner_of(json_t *req, const char *dir, json_int_t *uid, json_int_t *gid)
{
    json_int_t lo = json_integer_value(json_object_get(req, "owner_lo"));
    json_int_t hi = json_integer_value(json_object_get(req, "owner_hi"));
    struct stat st;
    if (lo <= 0 || hi < lo || !dir || dir[0] != '/') {
        return;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    if (fstat(fd, &st) == 0 && (json_int_t)st.st_uid >= lo && (json_int_t)st.st_uid <= hi) {
        *uid = (json_int_t)st.st_uid;
        *gid = (json_int_t)st.st_uid;
    }
    close(fd);
}

int gitjob_serve(int in_fd, int out_fd)
{
    json_t *req = NULL, *ans = json_object();
    /* never outlive the server (the thread that started us waits for the answer) */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() == 1) {
        return 1;
    }
    int rc = read_request(in_fd, &req);
    const char *op = jstr(req, "op");
    const char *dir = jstr(req, "dir"), *shared = jstr(req, "shared");
    json_int_t uid = json_integer_value(json_object_get(req, "uid"));
    json_int_t gid = json_integer_value(json_object_get(req, "gid"));
    owner_of(req, dir, &uid, &gid);
    json_t *lvl = json_object_get(req, "log");
    if (json_is_integer(lvl)) {
        log_set_level((int)json_integer_value(lvl));
    }
    if (rc == 0 && (!dir || dir[0] != '/' || (shared && shared[0] != '/'))) {
        rc = ERR_INVALID;
    }
    const char *url = jstr(req, "url");
    const char *remote = local_remote(url);
    /* A push into a repository on this machine writes that repository's files, which belong to
     * the server, not to the sandbox user: that one job keeps root, confined to the workspace
     * and that repository (everything else read-only, no devices). */
    int push_local = remote && op && strcmp(op, "push") == 0;
    /* The ownership walk needs CAP_CHOWN: it keeps root's uid with that capability only, in the
     * same namespace (only the tree it walks is writable). */
    int do_chown = op && strcmp(op, "chown") == 0;
    int valid_user = uid > 0 && gid >= 0 && uid <= INT_MAX && gid <= INT_MAX;
    int drop = valid_user && !push_local && !do_chown;
    int staged_root = rc == 0 && geteuid() == 0; /* the ownership walk needs to start as root */
    if (staged_root) {
        rc = stage(dir, shared, remote, push_local, !drop);
        if (rc == ERR_UNSUPPORTED && !valid_user) {
            /* root without CAP_SYS_ADMIN (a restricted container) and no sandbox user: the
             * process backend, unisolated by the operator's choice. The first wall holds. */
            LOG_WARN("sessiond-git: no mount namespace here (EPERM): running unconfined");
            rc = 0;
        } else if (rc == ERR_UNSUPPORTED) {
            rc = fail_at("unshare");
        } else {
            dir = STAGE_WS;
            shared = shared ? STAGE_OBJS : NULL;
            url = remote ? STAGE_REMOTE : url;
        }
        if (rc == 0 && drop) {
            rc = drop_to((int)uid, (int)gid);
        }
        if (rc == 0 && do_chown) {
            /* no user to give the tree to: nothing is changed (below), as nobody */
            rc = valid_user ? keep_chown_caps_only((int)uid, (int)gid)
                            : keep_chown_caps_only(65534, 65534);
        }
    }
    if (rc == 0 && do_chown) {
        if (staged_root && valid_user) {
            chown_walk(dir, (uid_t)uid, (gid_t)gid);
        }
        goto answer;
    }
    if (rc == 0) {
        /* only a sync or a push over the network needs the CA bundle (~100 ms to load) */
        int tls = url && !remote;
        rc = tls ? gitx_init(jstr(req, "ca_file"), NULL) : gitx_init_local();
    }
    if (rc == 0) {
        rc = dispatch(req, dir, shared, url, ans);
    }
answer:
    json_object_set_new(ans, "rc", json_integer(rc));
    char *text = json_dumps(ans, JSON_COMPACT);
    int wrc = text ? write_all(out_fd, text, strlen(text)) : ERR_NOMEM;
    free(text);
    json_decref(ans);
    json_decref(req);
    return wrc == 0 ? 0 : 1;
}
