/*
 * sbx_process.c - the "process" backend: sandbox-init runs as a plain child of the server in
 * the workspace directory. NO ISOLATION: commands see the whole host with the server's uid.
 * Only for hosts where bubblewrap cannot run, chosen explicitly (--sandbox process), with a
 * warning at start. Commands still get their own process group, rlimits, timeout and a clean
 * environment; paths inside are host paths (WORKSPACE, PROMPT_FILE tell the agent where).
 *
 * Threads: as sbx_local.c (fork in the calling thread).
 */
#include "sandbox/sbx_int.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"
#include "sandbox/blocked.h"
#include "sandbox/outpump.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct process_backend {
    struct sbx_backend base;
    char *init_path;
    char *agents_dir;
    const char **init_argv; /* sandbox-init's command line, with --block for blocked_commands */
};

static int process_create(struct sbx_backend *b, const struct sbx_spec *spec, struct sbx **out)
{
    struct process_backend *pb = (struct process_backend *)b;
    struct sbx *s = NULL;
    int sp[2] = {-1, -1};
    int rc = sbxi_new(b, spec, NULL, NULL, &s);
    if (rc) {
        return rc;
    }
    s->agents_inside = xstrdup(pb->agents_dir);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
        rc = ERR_IO;
        goto out;
    }
    if (sp[1] < 64) {
        int nfd = fcntl(sp[1], F_DUPFD_CLOEXEC, 64);
        if (nfd >= 0) {
            close(sp[1]);
            sp[1] = nfd;
        }
    }
    pid_t pid = fork();
    if (pid < 0) {
        rc = ERR_IO;
        goto out;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int nul = open("/dev/null", O_RDWR);
        if (dup2(sp[1], 3) < 0 || dup2(nul, 0) < 0 || dup2(nul, 1) < 0) {
            _exit(126);
        }
        close_range(4, ~0U, 0);
        setsid();
        if (chdir(s->ws_host) < 0) {
            _exit(126);
        }
        /* Nothing of the server's environment (tokens, keys) reaches the commands: sandbox-init
         * starts from an empty one and builds each command's from the request. */
        static char *const no_env[] = {NULL};
        execve(pb->init_path, (char *const *)pb->init_argv, no_env);
        _exit(127);
    }
    close(sp[1]);
    sp[1] = -1;
    rc = sbxi_attach(s, sp[0], pid, 10000);
    sp[0] = -1;
    if (rc) {
        LOG_ERROR("sandbox: %s: sandbox-init (%s) did not start", spec->name, pb->init_path);
        goto out;
    }
    *out = s;
    s = NULL;
out:
    if (s) {
        sbxi_destroy(s);
    }
    if (sp[0] >= 0) {
        close(sp[0]);
    }
    if (sp[1] >= 0) {
        close(sp[1]);
    }
    return rc;
}

static void process_free(struct sbx_backend *b)
{
    struct process_backend *pb = (struct process_backend *)b;
    free(pb->init_path);
    free(pb->agents_dir);
    for (size_t i = 3; pb->init_argv && pb->init_argv[i]; i += 2) {
        free((char *)pb->init_argv[i + 1]);
    }
    free(pb->init_argv);
    free(pb);
}

static const struct sbx_ops process_ops = {
    .name = "process",
    .create = process_create,
    .exec = sbxi_exec,
    .read_file = sbxi_read_file,
    .write_file = sbxi_write_file,
    .list_files = sbxi_list_files,
    .put_private = sbxi_put_private,
    .stop = sbxi_stop,
    .destroy = sbxi_destroy,
    .free = process_free,
};

int sbx_process_open(const struct sbx_config *cfg, struct outpump *pump, struct sbx_backend **out)
{
    struct process_backend *pb = xcalloc(1, sizeof *pb);
    pb->base.ops = &process_ops;
    pb->base.cfg = *cfg;
    pb->base.pump = pump;
    pb->init_path = sbxi_init_path(cfg);
    pb->agents_dir = sbxi_agents_dir(cfg);
    /* "sandbox-init --fd 3 [--block FILE]...": no mask here (no namespace to mount in), but
     * sandbox-init still refuses to start a blocked program. */
    size_t na = 3;
    pb->init_argv = xcalloc(3 + 2 * cfg->n_blocked_commands + 1, sizeof *pb->init_argv);
    pb->init_argv[0] = "sandbox-init";
    pb->init_argv[1] = "--fd";
    pb->init_argv[2] = "3";
    for (size_t i = 0; i < cfg->n_blocked_commands; i++) {
        char *p = NULL;
        if (blocked_resolve(cfg->blocked_commands[i], &p)) {
            LOG_WARN("sandbox: blocked_commands: %s is no file of the system directories",
                     cfg->blocked_commands[i]);
            continue;
        }
        pb->init_argv[na++] = "--block";
        pb->init_argv[na++] = p;
    }
    if (access(pb->init_path, X_OK) != 0) {
        LOG_ERROR("sandbox: sandbox-init not found at %s (make builds it)", pb->init_path);
        process_free(&pb->base);
        return ERR_UNAVAILABLE;
    }
    LOG_WARN("sandbox: WARNING: the \"process\" backend gives NO ISOLATION: agents and exec "
             "commands run as uid %d with full access to this host and its network",
             (int)geteuid());
    *out = &pb->base;
    return 0;
}
