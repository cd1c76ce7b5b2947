/*
 * sbx.h - the sandbox backend interface.
 *
 * A backend (struct sbx_backend) creates sandboxes (struct sbx); a sandbox runs commands
 * (struct sbx_exec) whose output is streamed to callbacks, and gives access to the files of
 * its workspace. Backends are a table of function pointers (struct sbx_ops) so that further
 * ones (a remote sandbox host, Kubernetes, hosted services) plug in without touching the
 * server. Shipped: "local" (a long-lived bubblewrap namespace per sandbox with sandbox-init
 * inside, sbx_local.c) and "process" (sandbox-init as a plain child, no isolation, only when
 * chosen explicitly; sbx_process.c).
 *
 * Threads: every function here is thread safe. Output and exit callbacks run on the output
 * pump thread (outpump.h): they must be quick and must never block (no SQLite, no locks held
 * for long); hand the work to a queue.
 *
 * Lifetimes: sbx_create() returns a sandbox owned by the caller, freed by sbx_destroy() (which
 * kills everything in it first). sbx_exec() returns a command handle owned by the caller and
 * released with sbx_exec_put(); on_exit is called exactly once per successfully started
 * command (also when the sandbox dies), and no callback runs after on_exit.
 */
#ifndef SESSIOND_SBX_H
#define SESSIOND_SBX_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct outpump;
struct sbx;
struct sbx_backend;
struct sbx_exec;
struct wsdisk;

/** Sandbox configuration shared by every backend (filled from flags and the config file). */
struct sbx_config {
    const char *backend;    /* "local" (default) | "process" */
    const char *data_dir;   /* workspaces at <data_dir>/workspaces/<name>, private dirs at
                             * <data_dir>/sandboxes/<name> */
    const char *init_path;  /* the sandbox-init binary; NULL = next to the server binary */
    const char *agents_dir; /* agents/bundled; NULL = <server binary dir>/../agents/bundled */
    const char *user;       /* host user the sandboxes run as (local backend, when root);
                             * NULL = "sessiond-sbx", created if missing */
    int uid;                /* > 0: run as this uid instead of looking up user (all share it) */
    /* > 0: each sandbox of the local backend (when root) runs as its own uid (gid the same
     * number) from uid_lo..uid_hi, free again when it is destroyed: no processes, keyring or
     * files shared between sandboxes. 0: every sandbox runs as uid / user. */
    int uid_lo, uid_hi;
    /* Called (when set) before a sandbox with its own uid starts, to give its workspace tree to
     * that uid (the tree may hold files of root or of an earlier sandbox). Any thread; may
     * block. A failure is logged by the callee and does not stop the sandbox. */
    void (*own_workspace)(void *arg, const char *dir, int uid, int gid);
    void *own_workspace_arg;
    int memory_mib;          /* per sandbox (cgroup); default 2048 */
    int pids;                /* per sandbox (cgroup) and RLIMIT_NPROC; default 512 */
    int cpus;                /* per sandbox (cgroup cpu quota); default 0 = no cap */
    int cpu_s;               /* per command RLIMIT_CPU; default 0 = none */
    int64_t fsize_bytes;     /* per command RLIMIT_FSIZE; default 4 GiB */
    int64_t data_bytes;      /* per command RLIMIT_DATA; default 0 = memory_mib */
    int64_t disk_mib;        /* per workspace file system (wsdisk.h, local backend); 0 = none */
    int nofile;              /* per command RLIMIT_NOFILE; default 4096 */
    int exec_timeout_s;      /* default per-exec wall clock timeout; default 600 */
    int64_t exec_output_cap; /* per exec; default 10 MiB */
    int idle_stop_s;         /* stop a sandbox idle this long; default 600 */
    /* Programs commands may not run (blocked.h): masked in every sandbox, refused by
     * sandbox-init. Borrowed, like the strings above. */
    const char *const *blocked_commands;
    size_t n_blocked_commands;
};

/** Fill unset (zero/NULL) fields with defaults. */
void sbx_config_defaults(struct sbx_config *c);

/** What a sandbox is created from. Borrowed strings. */
struct sbx_spec {
    const char *name;       /* unique; [A-Za-z0-9_-]{1,64} (the session id) */
    const char *workspace;  /* host directory; NULL = <data_dir>/workspaces/<name>. Created. */
    const char *image;      /* image id to start from (repository issue), NULL = empty */
    int memory_mib;         /* 0 = config default */
    int cpus;               /* 0 = no limit */
    int pids;               /* 0 = config default */
    int timeout_s;          /* default per-command timeout; 0 = config default */
    const char *const *env; /* extra "NAME=value" entries, NULL terminated (or NULL) */
    /* "NAME=value" secrets resolved by the server: put into the environment of commands
     * only, never logged, never returned. */
    const char *const *secrets;
    int egress;                /* 0: no network (default); 1: the host network (trusted only) */
    const char *const *labels; /* "key=value", informational */
    /* Host directory bound read-only at the same path inside (NULL = none): the objects of a
     * repository's shared object store, which the workspace's .git/objects/info/alternates
     * names. The caller (the workspace layer) knows which store a workspace uses. */
    const char *shared_objects;
    /* Called once on the output pump thread when the sandbox's control channel closes
     * (destroyed, stopped, or died), after its commands were reported lost, so that whoever
     * counts sandboxes frees the slot at once. Must not block. NULL = none. */
    void (*on_end)(void *arg, struct sbx *s);
    void *on_end_arg;
};

/** Where the local backend mounts agents/bundled (read-only) inside a sandbox. */
#define SBX_AGENTS_INSIDE "/run/sessiond-agents"

enum sbx_stream { SBX_STDOUT = 1, SBX_STDERR = 2 };

/** A command to run. Borrowed; copied by sbx_exec(). */
struct sbx_exec_req {
    const char *const *argv; /* NULL terminated, argv[0] looked up in PATH */
    const char *const *env;  /* extra "NAME=value" (or NULL) */
    const char *cwd;         /* inside the sandbox; NULL = the workspace */
    int timeout_ms;          /* 0 = the sandbox default; < 0 = none */
    const void *stdin_data;  /* written to the command's stdin (may be NULL) */
    size_t stdin_len;
    int stdin_keep_open; /* 1: stdin stays open for sbx_exec_write/sbx_exec_close_stdin */
    int64_t cpu_s;       /* 0 = config default */
};

struct sbx_exit {
    int exit_code;    /* -1 when killed by a signal */
    int signal;       /* 0 if none */
    int timed_out;    /* killed by the wall-clock timeout */
    int killed;       /* killed on request (sbx_exec_kill) */
    int start_failed; /* could not start (exit_code 127; the reason went to stderr) */
    int lost;         /* the sandbox died under it */
    int oom;          /* the sandbox's memory limit killed a process meanwhile */
    int64_t duration_us;
    int64_t maxrss_kib;
};

#define SBX_PAUSE 1

struct sbx_exec_cb {
    /** Merged output (at most 16 KiB, at most ~10 ms old, one stream). Return 0, or SBX_PAUSE
     * to stop reading this sandbox's output until sbx_exec_resume(). Output thread. */
    int (*on_output)(void *ctx, struct sbx_exec *ex, int stream, const char *data, size_t n);
    /** The command ended; its output was all delivered before. Output thread. */
    void (*on_exit)(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st);
};

/** The table a backend fills. Functions not supported may be NULL (-> ERR_UNSUPPORTED). */
struct sbx_ops {
    const char *name;
    int (*create)(struct sbx_backend *b, const struct sbx_spec *spec, struct sbx **out);
    int (*exec)(struct sbx *s, const struct sbx_exec_req *req, const struct sbx_exec_cb *cb,
                void *ctx, struct sbx_exec **out);
    int (*read_file)(struct sbx *s, const char *path, struct buf *out);
    int (*write_file)(struct sbx *s, const char *path, const void *data, size_t n);
    int (*list_files)(struct sbx *s, const char *path, json_t **out);
    /* A file in the sandbox's private directory (outside the workspace, read-only for the
     * sandbox), e.g. the prompt. *path_inside (caller frees) is its path as seen inside. */
    int (*put_private)(struct sbx *s, const char *name, const void *data, size_t n, int executable,
                       char **path_inside);
    int (*stop)(struct sbx *s);
    void (*destroy)(struct sbx *s);
    int (*health)(struct sbx_backend *b, char *msg, size_t n);
    void (*free)(struct sbx_backend *b);
};

/** Every backend's instance starts with this. */
struct sbx_backend {
    const struct sbx_ops *ops;
    struct sbx_config cfg; /* strings borrowed from the caller of sbx_backend_open */
    struct outpump *pump;  /* not owned */
    struct wsdisk *disk;   /* the workspaces' disks (local backend; owned), or NULL */
};

/** Open the configured backend (cfg->backend). For "local", checks that bubblewrap works and
 * fails with ERR_UNAVAILABLE (and one clear log line) if it does not. "process" logs a
 * warning. pump must outlive the backend. *out: sbx_backend_free(). */
int sbx_backend_open(const struct sbx_config *cfg, struct outpump *pump, struct sbx_backend **out);
void sbx_backend_free(struct sbx_backend *b);
const char *sbx_backend_name(const struct sbx_backend *b);
/** The workspaces' disks of the backend (wsdisk.h: the per-sandbox disk quota), or NULL (the
 * process backend, or b NULL). Valid until sbx_backend_free. */
struct wsdisk *sbx_backend_disk(struct sbx_backend *b);
/** 0 if the backend can start sandboxes; else an error with a reason in msg. */
int sbx_health(struct sbx_backend *b, char *msg, size_t n);

int sbx_create(struct sbx_backend *b, const struct sbx_spec *spec, struct sbx **out);
/** Kill everything in the sandbox and free it. NULL is a no-op. The workspace is kept. */
void sbx_destroy(struct sbx *s);
/** Kill the running commands and stop the namespace; the handle stays valid (sbx_alive 0). */
int sbx_stop(struct sbx *s);
/** 1 while the sandbox can run commands. */
int sbx_alive(struct sbx *s);
const char *sbx_name(const struct sbx *s);
/** Host path of the workspace (local backends), or NULL. */
const char *sbx_workspace_host(const struct sbx *s);
/** The host uid the sandbox's commands run as, or -1 when the backend does not switch uid. */
int sbx_uid(const struct sbx *s);
/** The workspace path as seen by commands ("/workspace" when isolated). */
const char *sbx_workspace_inside(const struct sbx *s);
/** Give a sandbox created ahead of time (a warm pool's) its session: the caller has
 * already renamed its workspace directory to workspace; its private directory is renamed to
 * <data_dir>/sandboxes/<name> (the mounts inside follow the renames) and its name becomes
 * name. Only while no other thread uses the sandbox and no command runs in it. ERR_IO if the
 * private directory cannot be moved (the sandbox is then unchanged). */
int sbx_rehome(struct sbx *s, const char *name, const char *workspace);

int sbx_exec(struct sbx *s, const struct sbx_exec_req *req, const struct sbx_exec_cb *cb, void *ctx,
             struct sbx_exec **out);
/** Send sig to the command's process group; grace_ms > 0 sends SIGKILL after that long. */
int sbx_exec_kill(struct sbx_exec *ex, int sig, int grace_ms);
/** Write to / close the stdin of a command started with stdin_keep_open. */
int sbx_exec_write(struct sbx_exec *ex, const void *data, size_t n);
int sbx_exec_close_stdin(struct sbx_exec *ex);
/** Resume reading output after on_output returned SBX_PAUSE. Any thread. */
void sbx_exec_resume(struct sbx_exec *ex);
/** Release the caller's reference. NULL is a no-op. */
void sbx_exec_put(struct sbx_exec *ex);

int sbx_read_file(struct sbx *s, const char *path, struct buf *out);
int sbx_write_file(struct sbx *s, const char *path, const void *data, size_t n);
/** {"path":…,"entries":[{"name","type":"file|dir|link|other","size"}]} */
int sbx_list_files(struct sbx *s, const char *path, json_t **out);
int sbx_put_private(struct sbx *s, const char *name, const void *data, size_t n, int executable,
                    char **path_inside);
/** The shipped agents directory (agents/bundled) as seen by commands. */
const char *sbx_agents_inside(const struct sbx *s);

/** Validate a workspace-relative path from a client: not empty, not absolute, no ".."
 * component, no NUL (len is the decoded length), at most 4096 bytes. 0 or ERR_INVALID. */
int sbx_path_check(const char *path, size_t len);

/** Run argv synchronously and collect output (capped at cap bytes per stream; truncated set
 * to 1 when cut). For tests, tools and the synchronous exec API. Blocks the calling thread
 * (never call it on the output thread). */
struct sbx_result {
    struct sbx_exit exit;
    char *out, *err; /* NUL terminated; caller frees */
    size_t out_len, err_len;
    int truncated;
};
int sbx_run(struct sbx *s, const struct sbx_exec_req *req, size_t cap, struct sbx_result *res);
void sbx_result_free(struct sbx_result *res);

#endif
