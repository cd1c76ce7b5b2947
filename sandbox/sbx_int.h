/*
 * sbx_int.h - internals shared by the sandbox backends that run sandbox-init (local, process):
 * the sandbox object, the sandbox-init protocol client and the workspace file helpers.
 * Not part of the public interface (sbx.h).
 */
#ifndef SESSIOND_SBX_INT_H
#define SESSIOND_SBX_INT_H

#include "sandbox/sbx.h"

#include <pthread.h>
#include <sys/types.h>

struct op_src;
struct op_sink;

/* One sandbox. Fields above the lock are set at creation and then read-only. */
struct sbx {
    struct sbx_backend *b;
    char *name;
    char *ws_host;       /* host path of the workspace */
    char *ws_inside;     /* the workspace as commands see it */
    char *priv_host;     /* host path of the private dir (prompt files) */
    char *priv_inside;   /* the private dir as commands see it */
    char *agents_inside; /* agents/bundled as commands see it */
    char **env;          /* base environment for commands, NULL terminated */
    int timeout_ms;      /* default per-command timeout */
    int64_t data_bytes, fsize_bytes;
    int nofile, nproc, cpu_s;
    uid_t uid; /* owner of files written through the API; (uid_t)-1 = leave */
    gid_t gid;
    void *impl;                       /* backend data */
    void (*impl_stop)(struct sbx *s); /* backend: after the init process ended */
    void (*impl_free)(struct sbx *s);
    long (*impl_oom_kills)(struct sbx *s);    /* backend: OOM kills so far, or -1 */
    void (*on_end)(void *arg, struct sbx *s); /* sbx_spec.on_end */
    void *on_end_arg;

    pthread_mutex_t lock; /* guards everything below and writes to fd */
    pthread_cond_t cond;
    int refs;
    int fd;    /* our end of the control socket */
    pid_t pid; /* host pid of the process we started (bwrap or sandbox-init) */
    struct op_src *src;
    int ready; /* READY received */
    int alive; /* control socket open */
    int reaped;
    uint32_t next_id;
    struct sbx_exec *execs;

    /* pump thread only: frame reassembly */
    unsigned char *rb;
    size_t rb_len, rb_cap;
    long oom_seen; /* OOM kills already attributed */
};

struct sbx_exec {
    struct sbx *s;
    uint32_t id;
    int refs; /* guarded by s->lock */
    int done; /* on_exit called; guarded by s->lock */
    struct sbx_exec_cb cb;
    void *ctx;
    struct op_sink *sink; /* pump thread only */
    struct sbx_exec *next;
};

/** Allocate a sandbox object with its directories made and the base env built (no process). */
int sbxi_new(struct sbx_backend *b, const struct sbx_spec *spec, const char *ws_inside,
             const char *priv_inside, struct sbx **out);
/** Attach the control socket of a started sandbox-init, register it with the pump and wait
 * (up to timeout_ms) for its READY frame. On failure the caller still owns s (sbxi_unref). */
int sbxi_attach(struct sbx *s, int fd, pid_t pid, int timeout_ms);
void sbxi_ref(struct sbx *s);
void sbxi_unref(struct sbx *s);
/** Close the control socket (sandbox-init kills everything and exits), reap the process. */
void sbxi_shutdown(struct sbx *s);

/* Client side of the protocol (the ops of both backends). */
int sbxi_exec(struct sbx *s, const struct sbx_exec_req *req, const struct sbx_exec_cb *cb,
              void *ctx, struct sbx_exec **out);
int sbxi_read_file(struct sbx *s, const char *path, struct buf *out);
int sbxi_write_file(struct sbx *s, const char *path, const void *data, size_t n);
int sbxi_list_files(struct sbx *s, const char *path, json_t **out);
/* The backend-neutral snapshot/restore of the workspace (both backends keep it on the host):
 * dest_dir/src_dir is a snapshot store (sandbox/snap.h); restore takes its latest snapshot. */
int sbxi_put_private(struct sbx *s, const char *name, const void *data, size_t n, int executable,
                     char **path_inside);
int sbxi_stop(struct sbx *s);
void sbxi_destroy(struct sbx *s);

/** Resolve the sandbox-init binary and agents dir from the config / the server binary. */
char *sbxi_init_path(const struct sbx_config *c);
char *sbxi_agents_dir(const struct sbx_config *c);

/* Backends. */
int sbx_local_open(const struct sbx_config *cfg, struct outpump *pump, struct sbx_backend **out);
int sbx_process_open(const struct sbx_config *cfg, struct outpump *pump, struct sbx_backend **out);

#endif
