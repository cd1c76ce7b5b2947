/*
 * workspace_int.h - internals shared by the files of the repository layer (repos.c, images.c,
 * pool.c, prepare.c, workspace.c); never included outside workspace/.
 */
#ifndef SESSIOND_WORKSPACE_INT_H
#define SESSIOND_WORKSPACE_INT_H

#include "workspace/gitjob.h"
#include "workspace/repos.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

struct sbx;
struct snap_ctx;
struct snap_store;
struct repos_db;
struct wsdisk;
struct prs_db;

#define LOG_CAP         (256 * 1024)
#define SETUP_OUT_CAP   (128 * 1024)
#define RESYNC_MS       60000
#define REFILL_DELAY_MS 250
#define SYNC_HOLD_MS    100 /* a background sync waits this long at most for sandbox.ready */

struct warm {
    struct warm *next;
    char *repo;
    char *dir;
    char *image_id;
    int64_t created_ms;
    int64_t synced_ms;
    char head[41];   /* the commit it is synced to */
    struct sbx *sbx; /* its sandbox, created ahead (through the runner's factory), or NULL */
    char *sbx_priv;  /* that sandbox's private dir (removed with an unclaimed one) */
};

/* A pre-created sandbox that came with a claimed warm workspace, until the runner takes it
 * (repos_take_sandbox). In r->handoffs, guarded by r->lock. */
struct handoff {
    struct handoff *next;
    char sid[72];
    struct sbx *sbx;
};

struct job {
    struct job *next;
    char *repo;
    char *image_id;
};

struct repos {
    struct repos_config cfg;
    char *data_dir;
    char *abs_data_dir; /* realpath of data_dir: shared stores are named by absolute paths */
    char *ca_file;
    char *git_bin;         /* the sessiond-git helper */
    struct gitjob_cfg git; /* how workspace git operations run (gitjob.h); set at open */
    struct wsdisk *disk;   /* the workspaces' disks (sandbox/wsdisk.h), or NULL; set at open */
    struct repos_db *db;   /* the repository tables (thread safe) */
    struct snap_ctx *snap; /* the snapshot stores' context: spares and their threads (thread
                              safe); freed last by repos_close */

    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t cond;
    struct warm *warm;
    struct job *jobs, *jobs_tail;
    char *building;        /* repo of the running build, or NULL */
    struct sbx *build_sbx; /* the sandbox of the running setup step, or NULL */
    int stopping;
    int kick;             /* pool thread: run a tick now */
    int64_t refill_at_ms; /* pool thread: run a tick then (after a claim); 0 = none */
    int64_t next_tick_ms; /* pool thread: the next scheduled tick */
    int pool_running;     /* a pool tick is in progress */
    pthread_cond_t pool_done;
    pthread_t builder, pooler;
    int threads;
    json_t *ready_src;      /* sid -> source of the last prepare, consumed by the ready event */
    json_t *preparing;      /* sids whose workspace a hook is filling now */
    pthread_cond_t prep_cv; /* signalled when one is done */
    int bg_snapshots;       /* background end-of-session snapshots running */
    /* Background workspace syncs (repos.h "The workspace sync") and prompt ends. */
    json_t *syncing;          /* sid -> true while its workspace sync runs */
    json_t *released;         /* sids whose sandbox.ready was built: their sync may start */
    json_t *ending;           /* sids whose prompt-end commit + snapshot runs now */
    struct handoff *handoffs; /* pre-created sandboxes of claimed warm workspaces */
    json_t *ready_src_sbx;    /* sids whose sandbox came from the pool, for sandbox.ready */
    pthread_cond_t sync_cv;   /* a sync or a prompt end finished, a release, or closing */
    int bg_syncs;             /* sync and pull threads running (repos_close waits for them) */
    json_t *remote_ahead;     /* sid -> sha: its pull request branch moved on the remote
                                 (pr_pull.c): pulled before its next prompt */
    int closing;              /* repos_shutdown started: waiters give up */

    /* The runner's calls in progress (repos__hook_enter) and the runner's callbacks
     * (repos_set_runner): runner_mu is held across a callback, so that unregistering waits
     * for a call in progress. */
    pthread_mutex_t hook_mu; /* guards shut, hooks_in */
    pthread_cond_t hook_cv;
    int shut;     /* repos_shutdown() began: the runner's calls answer "no repository" */
    int hooks_in; /* the runner's calls inside the instance */
    pthread_mutex_t runner_mu; /* guards runner */
    struct repos_runner runner;

    /* Pull requests (pr.c). prs guards itself (registry lock). The queue, the busy set and
     * the workers are guarded by lock. */
    struct prs_db *prs;
    struct pr_job *pr_head, *pr_tail; /* sessions waiting for their push + pull request */
    json_t *pr_busy;                  /* sid -> true while a push + pull request of it runs */
    pthread_cond_t pr_cv;             /* a job queued, a session's slot freed, or stopping */
    pthread_t *pr_threads;
    int pr_nthreads;

    /* GitHub webhooks and the poller (pr_hook.c). hook_seen (a ring of the last delivery ids)
     * and the poller's wake-up are guarded by lock. */
    struct hook_seen *hook_seen; /* HOOK_SEEN_MAX entries */
    int hook_seen_next;
    json_t *gh_watch;         /* prompt id -> {sid, message_id, login}: answer on the PR */
    struct gh_reply *replies; /* comments to post, oldest first */
    int nreplies;
    pthread_cond_t poll_cv; /* a reply queued, or stopping */
    pthread_t poller;
    int poller_running;
};

/* A session whose last prompt committed changes: push and open or update its pull request. */
struct pr_job {
    struct pr_job *next;
    char sid[72];
    int64_t queued_us; /* for the log: prompt end -> pull request */
};

/* A sync that prepare_ws leaves to the background (repos.h "The workspace sync"): fetch +
 * hard reset to url/branch, or with url NULL only the index refresh after a restore. */
struct sync_req {
    int want;
    char *url, *branch;
};

/* ---- shared helpers, by the file that defines them ---- */

/* images.c */
void *repos__builder_main(void *arg);
int repos__latest_image(struct repos *r, const char *repo, char *id, char *snap, int64_t *started);
int repos__open_image_store(struct repos *r, const char *repo, struct snap_store **out);

/* pool.c */
void repos__kick_pool(struct repos *r);
void *repos__pool_main(void *arg);
void repos__pool_sbx_free(struct sbx *s, char *priv);
struct warm *repos__warm_claim(struct repos *r, const char *repo, const char *img);
void repos__warm_free(struct repos *r, struct warm *w);

/* pr.c */
int repos__pr_start(struct repos *r);
void repos__pr_stop(struct repos *r);
void repos__pr_free(struct repos *r);
void repos__pr_after_commit(struct repos *r, const char *sid, const char *repo, json_t *paths);

/* prepare.c */
int repos__wait_not_in(struct repos *r, const char *sid, json_t *a, json_t *b, int timeout_ms);

/* remote.c: clone, sync and store fetch with the GitHub App's installation token when it
 * covers the URL (ghapp.h), renewed and retried once on a refusal */
int repos__sync(struct repos *r, const char *dir, const char *shared, const char *url,
                const char *branch, char head[41]);
int repos__clone(struct repos *r, const char *url, const char *branch, const char *dir);
int repos__mirror_fetch(struct repos *r, const char *gitdir, const char *url, const char *branch,
                        char head[41]);

/* pr_hook.c: the webhook's delivery ring and the poller thread */
int repos__hook_start(struct repos *r);
void repos__hook_stop(struct repos *r);
void repos__hook_free(struct repos *r);
void repos__gh_prompt_end(struct repos *r, const char *sid, const char *prompt_id);

/* repos.c */
void repos__chown_tree(struct repos *r, const char *dir);
char *repos__default_workspace(struct repos *r, const char *sid);
/* prepare.c: a background sync or pull of sid ended: unmark it, tell the runner, and drop the
 * thread's count (its last touch of r). */
void repos__sync_end(struct repos *r, const char *sid);
/* pr_pull.c: the pull request branch of sid is at sha on the remote, maybe ahead of the
 * workspace: pull it before the next prompt. */
void repos__pr_remote_ahead(struct repos *r, const char *sid, const char *sha);
void repos__emit(struct repos *r, const char *sid, const char *type, json_t *data);
struct repos *repos__hook_enter(struct repos *r);
void repos__hook_leave(struct repos *r);
int repos__open_session_store(struct repos *r, const char *sid, struct snap_store **out);
char *repos__repo_dir(struct repos *r, const char *name, const char *sub);
int repos__repo_load(struct repos *r, const char *name, json_t **out);
char *repos__session_repo_name(struct repos *r, const char *sid);
int repos__session_row(struct repos *r, const char *sid, json_t **out);
char *repos__session_shared(struct repos *r, const char *sid);
char *repos__session_snap_dir(struct repos *r, const char *sid);
char *repos__shared_for(struct repos *r, const char *name, const char *workspace);
char *repos__shared_if_any(struct repos *r, const char *repo);
char *repos__shared_objects(struct repos *r, const char *repo);

#endif
