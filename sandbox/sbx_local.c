/*
 * sbx_local.c - the "local" backend: one long-lived bubblewrap namespace per sandbox, with
 * sandbox-init inside running commands on request (DESIGN §5).
 *
 * Isolation: system directories read-only, the workspace read-write at /workspace, the private
 * dir (prompt files) read-only at /run/sessiond, fresh /tmp (size-capped), /proc and /dev;
 * the repository's shared object store (sbx_spec.shared_objects) read-only at its host path,
 * which the workspace's .git/objects/info/alternates names; each blocked_commands program
 * masked by an empty 0444 file (blocked.h); new user/pid/ipc/uts/cgroup namespaces and no
 * network unless the spec allows egress;
 * --die-with-parent, --new-session, --cap-drop ALL, --disable-userns, an environment built
 * from scratch. Host paths are handed to bwrap as file descriptors (--bind-fd), so the data
 * dir needs no permission bits for the sandbox user, and every other descriptor of the server
 * is closed before bwrap runs (close_range) — the sandbox inherits none.
 *
 * When the server runs as root the sandbox runs under a dedicated unprivileged host uid
 * (user "sessiond-sbx", created at first start with useradd, or sandbox.uid), because the
 * kernel does not enforce RLIMIT_NPROC for uid 0; pids and memory are capped per sandbox by
 * cgroups (v1 or v2 controllers, whichever is writable; one clear log line when neither is).
 *
 * Threads: create/destroy from any thread; fork() happens in the calling thread, so bwrap's
 * --die-with-parent is tied to that thread: call sbx_create from long-lived threads only.
 */
#include "sandbox/sbx_int.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/blocked.h"
#include "sandbox/outpump.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BWRAP            "/usr/bin/bwrap"
#define START_TIMEOUT_MS 10000
#define STAGE            "/run/sessiond-stage" /* mount point for bind sources (as root) */

struct local_backend {
    struct sbx_backend base;
    char *init_path;
    char *agents_dir;
    int as_root; /* the server is root: drop to uid/gid */
    uid_t uid;   /* the shared sandbox user (no uid range), else the owner of workspaces that
                  * no sandbox holds (resolve_user: the workspace layer's git helper uses it) */
    gid_t gid;
    /* cfg.uid_lo..uid_hi: one uid per sandbox; bit i of uid_used set while uid_lo + i is a
     * live sandbox's. Guarded by uid_mu. */
    pthread_mutex_t uid_mu;
    unsigned char *uid_used;
    char *cg_pids; /* parent cgroup dirs (v1 or v2), NULL when unavailable */
    char *cg_mem;
    char *cg_cpu;
    int pids_v2, mem_v2, cpu_v2;
    int health_rc;
    char health_msg[512];
    int quiet; /* self-test: keep the failure in health_msg instead of logging it */

    char **masks; /* blocked_commands resolved (blocked.h): files masked in every sandbox */
    size_t nmasks;
    char *empty; /* the empty 0444 file bound over them when bwrap gets host paths */
};

struct local_sbx {
    char *cg_pids; /* this sandbox's cgroup dirs */
    char *cg_mem;
    char *cg_cpu; /* only when the sandbox has a cpu cap */
    int mem_v2;
    char *log_path;
    int own_uid; /* 1: s->uid was taken from the backend's range (released at free) */
};

/* ---- helpers ---- */

static int write_file_str(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t w = write(fd, s, strlen(s));
    int e = errno;
    close(fd);
    errno = e;
    return w == (ssize_t)strlen(s) ? 0 : -1;
}

static char *read_small(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return NULL;
    }
    char b[4096];
    ssize_t n = read(fd, b, sizeof b - 1);
    close(fd);
    if (n < 0) {
        return NULL;
    }
    b[n] = 0;
    return xstrdup(b);
}

/* This process's path in the hierarchy of a v1 controller ("memory") or v2 (ctrl NULL). */
static char *own_cgroup(const char *ctrl)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f) {
        return NULL;
    }
    char line[1024];
    char *res = NULL;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) {
            continue;
        }
        *c2 = 0;
        const char *list = c1 + 1;
        int match = 0;
        if (!ctrl) {
            match = !strcmp(line, "0") && !*list;
        } else {
            char tmp[256];
            snprintf(tmp, sizeof tmp, ",%s,", list);
            char want[64];
            snprintf(want, sizeof want, ",%s,", ctrl);
            match = strstr(tmp, want) != NULL;
        }
        if (match) {
            res = xstrdup(c2 + 1);
            break;
        }
    }
    fclose(f);
    return res;
}

/* Where cgroup2 is mounted, or NULL. */
static char *cgroup2_mount(void)
{
    FILE *f = fopen("/proc/self/mounts", "re");
    if (!f) {
        return NULL;
    }
    char line[1024];
    char *res = NULL;
    while (fgets(line, sizeof line, f)) {
        char dev[256], dir[512], type[64];
        if (sscanf(line, "%255s %511s %63s", dev, dir, type) == 3 && !strcmp(type, "cgroup2")) {
            res = xstrdup(dir);
            break;
        }
    }
    fclose(f);
    return res;
}

/* Make <base>/sessiond for a v1 controller; NULL if not possible. */
static char *setup_v1(const char *ctrl, const char *probe_file)
{
    char *own = own_cgroup(ctrl);
    if (!own) {
        return NULL;
    }
    char *dir = xasprintf("/sys/fs/cgroup/%s%s%ssessiond", ctrl, own,
                          own[strlen(own) - 1] == '/' ? "" : "/");
    free(own);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        free(dir);
        return NULL;
    }
    char *probe = xasprintf("%s/%s", dir, probe_file);
    int ok = access(probe, W_OK) == 0;
    free(probe);
    if (!ok) {
        free(dir);
        return NULL;
    }
    if (!strcmp(ctrl, "memory")) {
        char *h = xasprintf("%s/memory.use_hierarchy", dir);
        write_file_str(h, "1");
        free(h);
    }
    return dir;
}

static char *setup_v2(const char *ctrl)
{
    char *mnt = cgroup2_mount();
    char *own = own_cgroup(NULL);
    char *res = NULL;
    if (!mnt || !own) {
        goto out;
    }
    char *base = xasprintf("%s%s", mnt, strcmp(own, "/") ? own : "");
    char *ctrls = xasprintf("%s/cgroup.controllers", base);
    char *have = read_small(ctrls);
    free(ctrls);
    if (!have || !strstr(have, ctrl)) {
        free(have);
        free(base);
        goto out;
    }
    free(have);
    char *plus = xasprintf("+%s", ctrl);
    char *sc = xasprintf("%s/cgroup.subtree_control", base);
    write_file_str(sc, plus); /* fails if our cgroup has processes and is not the root */
    free(sc);
    char *dir = xasprintf("%s/sessiond", base);
    free(base);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        free(dir);
        free(plus);
        goto out;
    }
    sc = xasprintf("%s/cgroup.subtree_control", dir);
    int ok = write_file_str(sc, plus) == 0;
    free(sc);
    free(plus);
    if (!ok) {
        free(dir);
        goto out;
    }
    res = dir;
out:
    free(mnt);
    free(own);
    return res;
}

static int resolve_user(struct local_backend *lb, const struct sbx_config *c)
{
    if (c->uid > 0) {
        lb->uid = (uid_t)c->uid;
        struct passwd pw, *pp = NULL;
        char b[4096];
        getpwuid_r(lb->uid, &pw, b, sizeof b, &pp);
        lb->gid = pp ? pp->pw_gid : (gid_t)c->uid;
        return 0;
    }
    const char *user = c->user ? c->user : "sessiond-sbx";
    for (int attempt = 0; attempt < 2; attempt++) {
        struct passwd pw, *pp = NULL;
        char b[4096];
        getpwnam_r(user, &pw, b, sizeof b, &pp);
        if (pp) {
            if (pp->pw_uid == 0) {
                LOG_ERROR("sandbox: user %s has uid 0; refusing", user);
                return ERR_INVALID;
            }
            lb->uid = pp->pw_uid;
            lb->gid = pp->pw_gid;
            return 0;
        }
        if (attempt) {
            break;
        }
        LOG_INFO("sandbox: creating system user %s for sandboxes", user);
        pid_t pid = fork();
        if (pid == 0) {
            int nul = open("/dev/null", O_RDWR);
            dup2(nul, 1);
            execl("/usr/sbin/useradd", "useradd", "--system", "--user-group", "--no-create-home",
                  "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user, (char *)NULL);
            _exit(127);
        }
        int st = 0;
        if (pid > 0) {
            waitpid(pid, &st, 0);
        }
    }
    LOG_ERROR("sandbox: no user %s and useradd failed; set sandbox.uid", user);
    return ERR_UNAVAILABLE;
}

/* bubblewrap resolves bind sources as the sandbox user: it must be able to traverse dir.
 * Grant search (x) to the sandbox group only, never to others. */
static int grant_traverse(const char *dir, gid_t gid)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        return -1;
    }
    if (st.st_mode & S_IXOTH) {
        return 0;
    }
    if (st.st_gid != gid && st.st_gid != 0) {
        LOG_WARN("sandbox: %s belongs to group %d: cannot grant the sandbox group access", dir,
                 (int)st.st_gid);
        return -1;
    }
    if (chown(dir, (uid_t)-1, gid) < 0 || chmod(dir, (st.st_mode & 07777) | S_IXGRP) < 0) {
        LOG_WARN("sandbox: cannot grant the sandbox group search access to %s: %s", dir,
                 strerror(errno));
        return -1;
    }
    return 0;
}

/* blocked_commands: resolve each entry to the file it names in a sandbox (an entry that names
 * nothing there is logged and skipped: there is nothing to mask), and when bwrap is handed host
 * paths (not root: no staging), make the empty file it binds over them. */
static int resolve_masks(struct local_backend *lb)
{
    const struct sbx_config *c = &lb->base.cfg;
    for (size_t i = 0; i < c->n_blocked_commands; i++) {
        char *p = NULL;
        if (blocked_resolve(c->blocked_commands[i], &p)) {
            LOG_WARN("sandbox: blocked_commands: %s is no file of the sandboxes' system "
                     "directories: nothing to mask",
                     c->blocked_commands[i]);
            continue;
        }
        lb->masks = xrealloc(lb->masks, (lb->nmasks + 1) * sizeof *lb->masks);
        lb->masks[lb->nmasks++] = p;
        LOG_INFO("sandbox: blocked_commands: %s masked in every sandbox", p);
    }
    if (!lb->nmasks || lb->as_root) {
        return 0;
    }
    lb->empty = xasprintf("%s/sandboxes/blocked-empty", c->data_dir);
    int fd = open(lb->empty, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0444);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != 0 ||
        (st.st_mode & 0333)) {
        LOG_ERROR("sandbox: %s must be an empty file of mode 0444 (blocked_commands)", lb->empty);
        if (fd >= 0) {
            close(fd);
        }
        return ERR_IO;
    }
    close(fd);
    return 0;
}

/* ---- one uid per sandbox ---- */

/* The lowest free uid of the range, marked used; ERR_LIMIT when every one is taken. */
static int uid_take(struct local_backend *lb, uid_t *out)
{
    const struct sbx_config *c = &lb->base.cfg;
    int rc = ERR_LIMIT;
    pthread_mutex_lock(&lb->uid_mu);
    for (int i = 0; i <= c->uid_hi - c->uid_lo; i++) {
        if (!(lb->uid_used[i / 8] & (1u << (i % 8)))) {
            lb->uid_used[i / 8] |= (unsigned char)(1u << (i % 8));
            *out = (uid_t)(c->uid_lo + i);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&lb->uid_mu);
    return rc;
}

static void uid_release(struct local_backend *lb, uid_t uid)
{
    const struct sbx_config *c = &lb->base.cfg;
    if ((int64_t)uid < c->uid_lo || (int64_t)uid > c->uid_hi) {
        return;
    }
    int i = (int)(uid - (uid_t)c->uid_lo);
    pthread_mutex_lock(&lb->uid_mu);
    lb->uid_used[i / 8] &= (unsigned char)~(1u << (i % 8));
    pthread_mutex_unlock(&lb->uid_mu);
}

/* ---- create ---- */

static void local_impl_stop(struct sbx *s)
{
    struct local_sbx *ls = s->impl;
    if (!ls) {
        return;
    }
    char *dirs[3] = {ls->cg_pids, ls->cg_mem, ls->cg_cpu};
    for (int i = 0; i < 3; i++) {
        if (!dirs[i]) {
            continue;
        }
        /* Kill anything left (the pid namespace normally took care of it), then remove. */
        for (int tries = 0; tries < 100; tries++) {
            if (rmdir(dirs[i]) == 0 || errno == ENOENT) {
                break;
            }
            char *procs = xasprintf("%s/cgroup.procs", dirs[i]);
            char *list = read_small(procs);
            free(procs);
            for (char *p = list; p && *p;) {
                long pid = strtol(p, &p, 10);
                if (pid > 1) {
                    kill((pid_t)pid, SIGKILL);
                }
                while (*p == '\n') {
                    p++;
                }
            }
            free(list);
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

/* OOM kills in the sandbox's memory cgroup (v1 memory.oom_control, v2 memory.events). */
static long local_oom_kills(struct sbx *s)
{
    struct local_sbx *ls = s->impl;
    if (!ls || !ls->cg_mem) {
        return -1;
    }
    char *f = xasprintf("%s/%s", ls->cg_mem,
                        access(ls->cg_mem, F_OK) == 0 && ls->mem_v2 ? "memory.events"
                                                                    : "memory.oom_control");
    char *t = read_small(f);
    free(f);
    const char *k = t ? strstr(t, "oom_kill ") : NULL;
    long v = k ? strtol(k + 9, NULL, 10) : -1;
    free(t);
    return v;
}

static void local_impl_free(struct sbx *s)
{
    struct local_sbx *ls = s->impl;
    if (!ls) {
        return;
    }
    if (ls->own_uid) {
        /* only now: until the sandbox is freed its processes may still hold the uid */
        uid_release((struct local_backend *)s->b, s->uid);
    }
    free(ls->cg_pids);
    free(ls->cg_mem);
    free(ls->cg_cpu);
    free(ls->log_path);
    free(ls);
    s->impl = NULL;
}

static char *make_cgroup(const char *parent, const char *name, int v2, const char *file,
                         const char *value)
{
    if (!parent) {
        return NULL;
    }
    char *dir = xasprintf("%s/%s", parent, name);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        LOG_WARN("sandbox: mkdir %s: %s", dir, strerror(errno));
        free(dir);
        return NULL;
    }
    char *f = xasprintf("%s/%s", dir, file);
    if (write_file_str(f, value) < 0) {
        LOG_WARN("sandbox: write %s: %s", f, strerror(errno));
    }
    free(f);
    if (v2 && !strcmp(file, "memory.max")) {
        f = xasprintf("%s/memory.swap.max", dir);
        write_file_str(f, "0");
        free(f);
    }
    return dir;
}

static void arg(const char ***av, size_t *n, size_t *cap, const char *a)
{
    if (*n + 2 > *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *av = xrealloc(*av, *cap * sizeof **av);
    }
    (*av)[(*n)++] = a;
    (*av)[*n] = NULL;
}

/* Add the system directories: a symlink where the host has one (merged /usr), else ro-bind. */
static void add_system_dirs(const char ***av, size_t *n, size_t *cap, char **keep, int *nkeep)
{
    static const char *dirs[] = {"/usr",   "/bin",    "/sbin", "/lib", "/lib64",
                                 "/lib32", "/libx32", "/etc",  "/opt"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        struct stat st;
        if (lstat(dirs[i], &st) < 0) {
            continue;
        }
        if (S_ISLNK(st.st_mode)) {
            char t[4096];
            ssize_t l = readlink(dirs[i], t, sizeof t - 1);
            if (l <= 0) {
                continue;
            }
            t[l] = 0;
            keep[*nkeep] = xstrdup(t);
            arg(av, n, cap, "--symlink");
            arg(av, n, cap, keep[(*nkeep)++]);
            arg(av, n, cap, dirs[i]);
        } else if (S_ISDIR(st.st_mode)) {
            arg(av, n, cap, "--ro-bind");
            arg(av, n, cap, dirs[i]);
            arg(av, n, cap, dirs[i]);
        }
    }
}

/* Everything local_create hands to its child, prepared before fork(): the child of a threaded
 * process may make async-signal-safe calls only, so it allocates and formats nothing. */
struct launch {
    struct sbx *s;
    struct local_backend *lb;
    int sp[2]; /* sp[0]: the server's end (sbxi_attach); sp[1]: sandbox-init's fd 3 */
    int ws_fd, priv_fd, init_fd, agents_fd, log_fd, objs_fd;
    char *objs;     /* the shared object store to bind read-only, or NULL */
    char *procs[3]; /* cgroup.procs of the pids, memory and cpu cgroups, or NULL */
    char tmpsize[32];
    const char **av; /* bwrap's argv */
    size_t n, cap;
    char *keep[16]; /* strings av points at (symlink targets) */
    int nkeep;
};

static void launch_add(struct launch *L, const char *a)
{
    arg(&L->av, &L->n, &L->cap, a);
}

/* The sandbox's host uid: one of the range (the workspace becomes its), else the shared
 * sandbox user; the workspace is chowned to it when the server is root. */
static int take_identity(struct local_backend *lb, const struct sbx_spec *spec, struct sbx *s,
                         struct local_sbx *ls)
{
    struct sbx_backend *b = &lb->base;
    if (lb->as_root && lb->uid_used) {
        uid_t u = 0;
        int rc = uid_take(lb, &u);
        if (rc) {
            LOG_ERROR("sandbox: %s: every uid of sandbox_uid_range %d-%d is in use", spec->name,
                      b->cfg.uid_lo, b->cfg.uid_hi);
            return rc;
        }
        ls->own_uid = 1;
        s->uid = u;
        s->gid = (gid_t)u;
        /* the tree may hold files of root (a clone, a restore) or of the uid an earlier
         * sandbox of this workspace had: all of it becomes this sandbox's before it starts */
        if (b->cfg.own_workspace) {
            b->cfg.own_workspace(b->cfg.own_workspace_arg, s->ws_host, (int)u, (int)u);
        }
    } else if (lb->as_root) {
        s->uid = lb->uid;
        s->gid = lb->gid;
    }
    if (lb->as_root && chown(s->ws_host, s->uid, s->gid) < 0) {
        LOG_WARN("sandbox: chown %s: %s", s->ws_host, strerror(errno));
    }
    return 0;
}

/* This sandbox's pids, memory and cpu cgroups, and the cgroup.procs files the child joins. */
static void make_cgroups(struct launch *L, const struct sbx_spec *spec, struct local_sbx *ls,
                         int mem)
{
    struct local_backend *lb = L->lb;
    struct sbx_backend *b = &lb->base;
    int pids = spec->pids ? spec->pids : b->cfg.pids;
    char val[64];
    snprintf(val, sizeof val, "%d", pids);
    ls->cg_pids = make_cgroup(lb->cg_pids, spec->name, lb->pids_v2, "pids.max", val);
    snprintf(val, sizeof val, "%lld", (long long)mem << 20);
    ls->cg_mem = make_cgroup(lb->cg_mem, spec->name, lb->mem_v2,
                             lb->mem_v2 ? "memory.max" : "memory.limit_in_bytes", val);
    int cpus = spec->cpus ? spec->cpus : b->cfg.cpus;
    if (cpus > 0 && lb->cg_cpu) {
        /* cpus CPUs' worth of time per 100 ms period */
        snprintf(val, sizeof val, lb->cpu_v2 ? "%lld 100000" : "%lld", (long long)cpus * 100000);
        ls->cg_cpu = make_cgroup(lb->cg_cpu, spec->name, lb->cpu_v2,
                                 lb->cpu_v2 ? "cpu.max" : "cpu.cfs_quota_us", val);
    }
    L->procs[0] = ls->cg_pids ? xasprintf("%s/cgroup.procs", ls->cg_pids) : NULL;
    L->procs[1] = ls->cg_mem ? xasprintf("%s/cgroup.procs", ls->cg_mem) : NULL;
    L->procs[2] = ls->cg_cpu ? xasprintf("%s/cgroup.procs", ls->cg_cpu) : NULL;
}

/* The log file (the child's stderr), the bind sources as fds, and the socket pair to
 * sandbox-init; every fd the child keeps is moved above 64. */
static int open_sources(struct launch *L, const struct sbx_spec *spec, struct local_sbx *ls)
{
    struct local_backend *lb = L->lb;
    struct sbx *s = L->s;
    ls->log_path = xasprintf("%s/sandboxes/%s.log", lb->base.cfg.data_dir, spec->name);
    L->log_fd = open(ls->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    L->ws_fd = open(s->ws_host, O_PATH | O_DIRECTORY | O_CLOEXEC);
    L->priv_fd = open(s->priv_host, O_PATH | O_DIRECTORY | O_CLOEXEC);
    L->init_fd = open(lb->init_path, O_PATH | O_CLOEXEC);
    L->agents_fd = open(lb->agents_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    L->objs = spec->shared_objects ? xstrdup(spec->shared_objects) : NULL;
    if (L->objs) {
        L->objs_fd = open(L->objs, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (L->objs_fd < 0) {
            LOG_WARN("sandbox: %s: cannot open the shared object store %s: %s", spec->name, L->objs,
                     strerror(errno));
            free(L->objs);
            L->objs = NULL;
        }
    }
    if (L->ws_fd < 0 || L->priv_fd < 0 || L->init_fd < 0 || L->log_fd < 0) {
        LOG_ERROR("sandbox: %s: cannot open %s (%s)", spec->name,
                  L->init_fd < 0 ? lb->init_path : s->ws_host, strerror(errno));
        return ERR_IO;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, L->sp) < 0) {
        return ERR_IO;
    }
    /* Move the child's fds above 64 so the dup2() to 0..8 in the child never clobbers one. */
    int *mv[] = {&L->sp[1],     &L->ws_fd,  &L->priv_fd, &L->init_fd,
                 &L->agents_fd, &L->log_fd, &L->objs_fd};
    for (size_t i = 0; i < sizeof mv / sizeof mv[0]; i++) {
        if (*mv[i] >= 0 && *mv[i] < 64) {
            int nfd = fcntl(*mv[i], F_DUPFD_CLOEXEC, 64);
            if (nfd >= 0) {
                close(*mv[i]);
                *mv[i] = nfd;
            }
        }
    }
    return 0;
}

/* The bind mounts of the workspace, the private dir, sandbox-init, the agents and the object
 * store. As root, the child stages them in a private mount namespace under STAGE (see
 * stage_mounts), because bwrap resolves sources as the sandbox user, who may not traverse
 * the data dir's parents. Otherwise bwrap gets the fds (child_exec numbers them 4..8). */
static void add_binds(struct launch *L)
{
    int stage = L->lb->as_root;
    launch_add(L, stage ? "--bind" : "--bind-fd");
    launch_add(L, stage ? STAGE "/ws" : "4");
    launch_add(L, "/workspace");
    launch_add(L, stage ? "--ro-bind" : "--ro-bind-fd");
    launch_add(L, stage ? STAGE "/priv" : "5");
    launch_add(L, "/run/sessiond");
    launch_add(L, stage ? "--ro-bind" : "--ro-bind-fd");
    launch_add(L, stage ? STAGE "/init" : "6");
    launch_add(L, "/run/sessiond-init");
    if (L->agents_fd >= 0) {
        launch_add(L, stage ? "--ro-bind" : "--ro-bind-fd");
        launch_add(L, stage ? STAGE "/agents" : "7");
        launch_add(L, SBX_AGENTS_INSIDE);
    }
    if (L->objs) {
        /* read-only: the store is shared by every session of the repository */
        launch_add(L, stage ? "--ro-bind" : "--ro-bind-fd");
        launch_add(L, stage ? STAGE "/objs" : "8");
        launch_add(L, L->objs);
    }
}

/* bwrap's argv: namespaces, an environment from scratch, the system dirs, the blocked
 * command masks, /proc, /dev, /tmp, the binds, then sandbox-init and its arguments. */
static void build_argv(struct launch *L, const struct sbx_spec *spec, int mem)
{
    struct local_backend *lb = L->lb;
    snprintf(L->tmpsize, sizeof L->tmpsize, "%lld", (long long)mem << 20);
    launch_add(L, BWRAP);
    launch_add(L, "--unshare-all");
    if (spec->egress) {
        launch_add(L, "--share-net");
    }
    launch_add(L, "--unshare-user"); /* explicit: --disable-userns needs it */
    launch_add(L, "--disable-userns");
    launch_add(L, "--die-with-parent");
    /* sandbox-init is pid 1 itself (it reaps orphans; see its header): without this flag
     * bwrap leaves a monitor of its own as pid 1, a process of the sandbox's uid that runs
     * outside sandbox-init's seccomp filter and Landlock domain. */
    launch_add(L, "--as-pid-1");
    launch_add(L, "--new-session");
    launch_add(L, "--cap-drop");
    launch_add(L, "ALL");
    launch_add(L, "--clearenv");
    launch_add(L, "--setenv");
    launch_add(L, "PATH");
    launch_add(L, "/usr/bin:/bin");
    launch_add(L, "--hostname");
    launch_add(L, "sandbox");
    add_system_dirs(&L->av, &L->n, &L->cap, L->keep, &L->nkeep);
    /* blocked_commands: an empty, non-executable file over each (after the system dirs they
     * lie in). A policy, not a boundary: a copy of the program still runs. */
    for (size_t i = 0; i < lb->nmasks; i++) {
        launch_add(L, "--ro-bind");
        launch_add(L, lb->as_root ? STAGE "/empty" : lb->empty);
        launch_add(L, lb->masks[i]);
    }
    launch_add(L, "--proc");
    launch_add(L, "/proc");
    launch_add(L, "--dev");
    launch_add(L, "/dev");
    launch_add(L, "--size");
    launch_add(L, L->tmpsize);
    launch_add(L, "--tmpfs");
    launch_add(L, "/tmp");
    add_binds(L);
    launch_add(L, "--remount-ro"); /* the sandbox's own root tmpfs: no stray writes */
    launch_add(L, "/");
    launch_add(L, "--chdir");
    launch_add(L, "/workspace");
    launch_add(L, "/run/sessiond-init");
    launch_add(L, "--fd");
    launch_add(L, "3");
    for (size_t i = 0; i < lb->nmasks; i++) {
        launch_add(L, "--block"); /* sandbox-init refuses to start them, with a reason */
        launch_add(L, lb->masks[i]);
    }
}

/* Child only (async-signal-safe): a mount namespace of our own (it dies with the sandbox:
 * nothing to clean up) with a tmpfs on STAGE and the bind sources mounted in it, traversable
 * by all. By path: an fd opened in the old namespace cannot be bind-mounted here. Exits 124
 * with the failed step on stderr (the sandbox log). */
static void stage_mounts(const struct launch *L)
{
    static const char *const what[] = {"unshare",   "make-private", "tmpfs",
                                       "mkdir",     "bind ws",      "bind priv",
                                       "bind init", "bind agents",  "bind objects"};
    const struct local_backend *lb = L->lb;
    int step = -1;
    if (unshare(CLONE_NEWNS) < 0) {
        step = 0;
    } else if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        step = 1;
    } else if (mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16k") < 0) {
        step = 2;
    } else if (mkdir(STAGE "/ws", 0755) < 0 || mkdir(STAGE "/priv", 0755) < 0 ||
               mkdir(STAGE "/agents", 0755) < 0 || mkdir(STAGE "/objs", 0755) < 0 ||
               close(open(STAGE "/init", O_WRONLY | O_CREAT, 0755)) < 0 ||
               close(open(STAGE "/empty", O_WRONLY | O_CREAT, 0444)) < 0) {
        step = 3;
    } else if (mount(L->s->ws_host, STAGE "/ws", NULL, MS_BIND, NULL) < 0) {
        step = 4;
    } else if (mount(L->s->priv_host, STAGE "/priv", NULL, MS_BIND, NULL) < 0) {
        step = 5;
    } else if (mount(lb->init_path, STAGE "/init", NULL, MS_BIND, NULL) < 0) {
        step = 6;
    } else if (L->agents_fd >= 0 &&
               mount(lb->agents_dir, STAGE "/agents", NULL, MS_BIND, NULL) < 0) {
        step = 7;
    } else if (L->objs && mount(L->objs, STAGE "/objs", NULL, MS_BIND, NULL) < 0) {
        step = 8;
    }
    if (step >= 0) {
        const char *e = strerror(errno); /* not async-signal-safe in theory; we exit */
        ssize_t w = write(2, "sandbox: staging mounts: ", 25);
        w = write(2, what[step], strlen(what[step]));
        w = write(2, ": ", 2);
        w = write(2, e, strlen(e));
        w = write(2, "\n", 1);
        (void)w;
        _exit(124);
    }
}

/* Child only (async-signal-safe: no malloc, no stdio): join the cgroups, set up fds 0..8,
 * stage the binds (as root), drop to the sandbox's uid and exec bwrap. Never returns. */
static _Noreturn void child_exec(const struct launch *L)
{
    const struct local_backend *lb = L->lb;
    char me[] = "0";
    for (int i = 0; i < 3; i++) {
        const char *pp = L->procs[i];
        if (pp) {
            int cfd = open(pp, O_WRONLY);
            if (cfd >= 0) {
                ssize_t w = write(cfd, me, 1);
                (void)w;
                close(cfd);
            }
        }
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int nul = open("/dev/null", O_RDWR);
    if (dup2(L->sp[1], 3) < 0 || dup2(L->ws_fd, 4) < 0 || dup2(L->priv_fd, 5) < 0 ||
        dup2(L->init_fd, 6) < 0 || (L->agents_fd >= 0 && dup2(L->agents_fd, 7) < 0) ||
        (L->objs_fd >= 0 && dup2(L->objs_fd, 8) < 0) || dup2(nul, 0) < 0 || dup2(nul, 1) < 0 ||
        dup2(L->log_fd, 2) < 0) {
        _exit(126);
    }
    close_range(9, ~0U, 0);
    if (lb->as_root) {
        stage_mounts(L);
    }
    if (lb->as_root) {
        if (setgroups(0, NULL) < 0 || setgid(L->s->gid) < 0 || setuid(L->s->uid) < 0) {
            _exit(125);
        }
    }
    /* bwrap gets an empty environment, not ours: it stays pid 1's ancestor inside the
     * sandbox (its pid-1 monitor is a fork of it), so /proc/1/environ shows whatever it
     * was exec'd with, and --clearenv only clears the environment of its child. */
    static char *const no_env[] = {NULL};
    execve(BWRAP, (char *const *)L->av, no_env);
    _exit(127);
}

/* sandbox-init never said it was ready: reap bwrap if it exited and say why, with the first
 * line of the sandbox log (in health_msg for the self-test, else in the server log). */
static void report_start_failure(struct local_backend *lb, const struct sbx_spec *spec,
                                 struct sbx *s, struct local_sbx *ls, pid_t pid)
{
    int st = 0;
    char status[64] = "";
    if (waitpid(pid, &st, WNOHANG) == pid) {
        s->reaped = 1;
        snprintf(status, sizeof status, " (exit status %d)",
                 WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    char *why = read_small(ls->log_path);
    if (why) {
        why[strcspn(why, "\n")] = 0;
    }
    if (lb->quiet) {
        /* the self-test reports it, in its one line */
        snprintf(lb->health_msg, sizeof lb->health_msg, "bubblewrap did not start%s: %s", status,
                 why && *why ? why : "no ready signal from sandbox-init");
    } else {
        LOG_ERROR("sandbox: %s: bubblewrap did not start%s: %s", spec->name, status,
                  why && *why ? why : "no ready signal from sandbox-init");
    }
    free(why);
}

static int local_create(struct sbx_backend *b, const struct sbx_spec *spec, struct sbx **out)
{
    struct local_backend *lb = (struct local_backend *)b;
    struct sbx *s = NULL;
    struct local_sbx *ls = NULL;
    struct launch L = {.lb = lb,
                       .sp = {-1, -1},
                       .ws_fd = -1,
                       .priv_fd = -1,
                       .init_fd = -1,
                       .agents_fd = -1,
                       .log_fd = -1,
                       .objs_fd = -1};
    int rc = sbxi_new(b, spec, "/workspace", "/run/sessiond", &s);
    if (rc) {
        return rc;
    }
    L.s = s;
    ls = xcalloc(1, sizeof *ls);
    s->agents_inside = xstrdup(SBX_AGENTS_INSIDE);
    s->impl = ls;
    s->impl_stop = local_impl_stop;
    s->impl_free = local_impl_free;
    s->impl_oom_kills = local_oom_kills;
    ls->mem_v2 = lb->mem_v2;
    rc = take_identity(lb, spec, s, ls);
    if (rc) {
        goto out;
    }
    int mem = spec->memory_mib ? spec->memory_mib : b->cfg.memory_mib;
    make_cgroups(&L, spec, ls, mem);
    rc = open_sources(&L, spec, ls);
    if (rc) {
        goto out;
    }
    build_argv(&L, spec, mem);
    pid_t pid = fork();
    if (pid < 0) {
        rc = ERR_IO;
        goto out;
    }
    if (pid == 0) {
        child_exec(&L);
    }
    close(L.sp[1]);
    L.sp[1] = -1;
    rc = sbxi_attach(s, L.sp[0], pid, START_TIMEOUT_MS);
    L.sp[0] = -1; /* owned by s now */
    if (rc) {
        report_start_failure(lb, spec, s, ls, pid);
        goto out;
    }
    *out = s;
    s = NULL;
out:
    if (s) {
        sbxi_destroy(s);
    }
    int fds[] = {L.sp[0], L.sp[1], L.ws_fd, L.priv_fd, L.init_fd, L.agents_fd, L.log_fd, L.objs_fd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    for (int i = 0; i < L.nkeep; i++) {
        free(L.keep[i]);
    }
    free(L.av);
    free(L.objs);
    for (int i = 0; i < 3; i++) {
        free(L.procs[i]);
    }
    return rc;
}

static int local_health(struct sbx_backend *b, char *msg, size_t n)
{
    struct local_backend *lb = (struct local_backend *)b;
    snprintf(msg, n, "%s", lb->health_msg);
    return lb->health_rc;
}

static void local_free(struct sbx_backend *b)
{
    struct local_backend *lb = (struct local_backend *)b;
    free(lb->init_path);
    free(lb->agents_dir);
    free(lb->cg_pids);
    free(lb->cg_mem);
    free(lb->cg_cpu);
    for (size_t i = 0; i < lb->nmasks; i++) {
        free(lb->masks[i]);
    }
    free(lb->masks);
    free(lb->empty);
    free(lb->uid_used);
    pthread_mutex_destroy(&lb->uid_mu);
    free(lb);
}

static const struct sbx_ops local_ops = {
    .name = "local",
    .create = local_create,
    .exec = sbxi_exec,
    .read_file = sbxi_read_file,
    .write_file = sbxi_write_file,
    .list_files = sbxi_list_files,
    .put_private = sbxi_put_private,
    .stop = sbxi_stop,
    .destroy = sbxi_destroy,
    .health = local_health,
    .free = local_free,
};

/* Start a throw-away sandbox and run `true` in it: the one reliable test that bubblewrap,
 * the uid switch and sandbox-init work on this host. */
static int self_test(struct local_backend *lb)
{
    char name[64];
    snprintf(name, sizeof name, "selftest-%d", (int)getpid());
    char *ws = xasprintf("%s/sandboxes/%s.ws", lb->base.cfg.data_dir, name);
    struct sbx_spec spec = {.name = name, .workspace = ws};
    struct sbx *s = NULL;
    int64_t t0 = clock_mono_us();
    lb->quiet = 1;
    int rc = local_create(&lb->base, &spec, &s);
    lb->quiet = 0;
    if (!rc) {
        const char *argv[] = {"true", NULL};
        struct sbx_exec_req req = {.argv = argv};
        struct sbx_result res;
        rc = sbx_run(s, &req, 4096, &res);
        if (!rc && res.exit.exit_code != 0) {
            snprintf(lb->health_msg, sizeof lb->health_msg, "`true` exited %d in a sandbox: %s",
                     res.exit.exit_code, res.err ? res.err : "");
            rc = ERR_UNAVAILABLE;
        }
        if (!rc) {
            sbx_result_free(&res);
        }
        sbxi_destroy(s);
    } else if (!lb->health_msg[0]) {
        snprintf(lb->health_msg, sizeof lb->health_msg, "bubblewrap cannot create a sandbox (%s)",
                 err_str(rc));
    }
    char *priv = xasprintf("%s/sandboxes/%s", lb->base.cfg.data_dir, name);
    char *log = xasprintf("%s.log", priv);
    util_rm_rf(ws);
    util_rm_rf(priv);
    unlink(log);
    free(priv);
    free(log);
    free(ws);
    if (!rc) {
        LOG_INFO("sandbox: local backend ready (bubblewrap self-test %lld us)",
                 (long long)(clock_mono_us() - t0));
    }
    return rc;
}

/* The parent cgroups of the pids, cpu and memory controllers, v1 where writable, else v2;
 * one warning when pids or memory has neither. */
static void find_cgroups(struct local_backend *lb)
{
    char *v1 = setup_v1("pids", "cgroup.procs");
    if (v1) {
        lb->cg_pids = v1;
    } else if ((lb->cg_pids = setup_v2("pids")) != NULL) {
        lb->pids_v2 = 1;
    }
    v1 = setup_v1("cpu", "cpu.cfs_quota_us");
    if (v1) {
        lb->cg_cpu = v1;
    } else if ((lb->cg_cpu = setup_v2("cpu")) != NULL) {
        lb->cpu_v2 = 1;
    }
    v1 = setup_v1("memory", "cgroup.procs");
    if (v1) {
        lb->cg_mem = v1;
    } else if ((lb->cg_mem = setup_v2("memory")) != NULL) {
        lb->mem_v2 = 1;
    }
    if (!lb->cg_pids || !lb->cg_mem) {
        LOG_WARN("sandbox: cgroup %s%s%s controller not writable (v1 or v2): sandboxes run "
                 "without a %s cap, only per-command rlimits",
                 lb->cg_pids ? "" : "pids", !lb->cg_pids && !lb->cg_mem ? " and " : "",
                 lb->cg_mem ? "" : "memory", !lb->cg_mem ? "memory" : "process count");
    }
}

int sbx_local_open(const struct sbx_config *cfg, struct outpump *pump, struct sbx_backend **out)
{
    struct local_backend *lb = xcalloc(1, sizeof *lb);
    int rc = 0;
    lb->base.ops = &local_ops;
    lb->base.cfg = *cfg;
    lb->base.pump = pump;
    lb->init_path = sbxi_init_path(cfg);
    lb->agents_dir = sbxi_agents_dir(cfg);
    pthread_mutex_init(&lb->uid_mu, NULL);
    if (access(BWRAP, X_OK) != 0) {
        LOG_ERROR("sandbox: %s not found: install bubblewrap (make deps) or run with "
                  "--sandbox process (no isolation)",
                  BWRAP);
        rc = ERR_UNAVAILABLE;
        goto out;
    }
    if (access(lb->init_path, X_OK) != 0) {
        LOG_ERROR("sandbox: sandbox-init not found at %s (make builds it)", lb->init_path);
        rc = ERR_UNAVAILABLE;
        goto out;
    }
    if (geteuid() == 0 && mkdir(STAGE, 0755) < 0 && errno != EEXIST) {
        LOG_ERROR("sandbox: cannot create %s: %s", STAGE, strerror(errno));
    }
    char *sd = xasprintf("%s/sandboxes", cfg->data_dir);
    char *wd = xasprintf("%s/workspaces", cfg->data_dir);
    util_mkdir_p(sd, 0700);
    util_mkdir_p(wd, 0700);
    free(sd);
    free(wd);
    lb->as_root = geteuid() == 0;
    rc = resolve_masks(lb);
    if (rc) {
        goto out;
    }
    if (lb->as_root) {
        rc = resolve_user(lb, cfg);
        if (rc) {
            goto out;
        }
        if (cfg->uid_lo > 0) {
            if (cfg->uid_hi < cfg->uid_lo || cfg->uid_hi - cfg->uid_lo >= 65536 ||
                ((int64_t)lb->uid >= cfg->uid_lo && (int64_t)lb->uid <= cfg->uid_hi)) {
                LOG_ERROR("sandbox: sandbox_uid_range %d-%d is empty, wider than 65536 uids, or "
                          "holds the uid %d of the workspaces no sandbox holds",
                          cfg->uid_lo, cfg->uid_hi, (int)lb->uid);
                rc = ERR_INVALID;
                goto out;
            }
            lb->uid_used = xcalloc((size_t)(cfg->uid_hi - cfg->uid_lo) / 8 + 1, 1);
        }
        const char *sub[] = {"", "/workspaces", "/sandboxes"};
        for (size_t i = 0; i < 3; i++) {
            char *d = xasprintf("%s%s", cfg->data_dir, sub[i]);
            grant_traverse(d, lb->gid);
            free(d);
        }
        find_cgroups(lb);
        if (lb->uid_used) {
            LOG_INFO("sandbox: each sandbox runs as its own uid from %d-%d", cfg->uid_lo,
                     cfg->uid_hi);
        } else {
            LOG_WARN("sandbox: every sandbox runs as the one uid %d (sandbox_uid): sandboxes can "
                     "see and signal each other's processes; use sandbox_uid_range",
                     (int)lb->uid);
        }
        LOG_INFO("sandbox: sandboxes run as uid %d; cgroups pids=%s%s memory=%s%s", (int)lb->uid,
                 lb->cg_pids ? lb->cg_pids : "none",
                 lb->cg_pids ? (lb->pids_v2 ? " (v2)" : " (v1)") : "",
                 lb->cg_mem ? lb->cg_mem : "none",
                 lb->cg_mem ? (lb->mem_v2 ? " (v2)" : " (v1)") : "");
    } else {
        LOG_INFO("sandbox: not root: sandboxes run as uid %d without cgroup limits",
                 (int)geteuid());
    }
    rc = self_test(lb);
    if (rc) {
        LOG_ERROR("sandbox: the local (bubblewrap) sandbox does not work here: %s. Refusing "
                  "to start: fix it, or choose --sandbox process (NO isolation) explicitly",
                  lb->health_msg);
        rc = ERR_UNAVAILABLE;
        goto out;
    }
    *out = &lb->base;
    return 0;
out:
    local_free(&lb->base);
    return rc;
}
