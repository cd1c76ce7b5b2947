/*
 * repos.h - repositories: the registry of repos, image builds, warm pools of synced
 * workspaces, per-session workspace preparation, per-prompt snapshots and commits, push.
 *
 * Layout under <data_dir>:
 *   repos/<name>/images/        snapshot store (snap.h) holding the images of a repo: an
 *                               image is a snapshot of a built workspace, so images share
 *                               unchanged files and a cold start is a fast parallel restore
 *   repos/<name>/objects.git/   the repository's shared object store (bare, append-only):
 *                               images and the workspaces made from them have no copy of its
 *                               objects, only .git/objects/info/alternates naming it (git.h)
 *   repos/<name>/build-<id>/    an image being built (removed after)
 *   repos/<name>/warm/<rand>/   warm workspaces: restored from the latest image and synced to
 *                               the branch head; claimed by renaming into the session's
 *                               workspace (the sandbox namespace is created at claim, ~8 ms)
 *   snapshots/<session-id>/     the session's snapshot store
 *   workspaces/<session-id>/    the session's workspace (sbx.h default)
 *
 * registry.db tables repos, images, session_repos, user_credentials
 * (migrations/registry/0002_repos.sql), through storage/repos_db.h on the store's registry.
 *
 * Threads: every function is thread safe. One builder thread runs image builds in order; one
 * pool thread runs the schedule (rebuilds every image_interval_min, pool top-up, expiry).
 * Calls that touch a workspace (prepare, after_prompt, rollback, push) must be serialized per
 * session by the caller (the runner runs one prompt at a time; the API refuses a rollback
 * while a prompt runs).
 */
#ifndef SESSIOND_REPOS_H
#define SESSIOND_REPOS_H

#include <jansson.h>
#include <stdint.h>

struct repos;
struct redact_set;
struct store;
struct sbx;
struct sbx_backend;
struct sbx_spec;
struct author;
struct ghapp;
struct egress;

struct repos_config {
    const char *data_dir;    /* required */
    struct store *store;     /* required: events on sessions, registry.db */
    struct sbx_backend *sbx; /* runs image setup commands; NULL: setup steps fail */
    int snapshot_keep;       /* per session; default 20 */
    int64_t snapshot_quota;  /* bytes per session; default 2 GiB */
    int image_keep;          /* ready images kept per repo; default 3 */
    int pool_max_age_s;      /* warm workspace lifetime; default 1500 (25 min) */
    int tick_ms;             /* scheduler period; default 30000 */
    const char *ca_file;     /* HTTPS CA bundle for git; NULL = system */
    struct ghapp *ghapp;     /* borrowed, NULL: none. Clones and fetches of repositories it
                                covers use its installation tokens (ghapp.h) */
    int no_threads;          /* tests: no builder/pool threads; builds run inline */
    int sync_wait_ms;        /* bound of repos_wait_synced; default 30000 (config
                                repos.sync_wait_ms) */
    int sync_delay_ms;       /* tests: a background sync sleeps this long first (env
                                SESSIOND_TEST_SYNC_DELAY_MS) */
    /* 1 if name may be a repository's default agent (a configured agent); NULL:
     * any well-formed name is accepted. Called on HTTP / main threads. */
    int (*agent_known)(void *ctx, const char *name);
    void *agent_ctx;
    /* The egress proxy the setup steps of image builds reach the network through (with the
     * repository's egress list plus egress_default); NULL: setup steps have no network. */
    struct egress *egress;
    /* "host:port" pairs every sandbox may reach besides its repository's list (the
     * egress.default setting, normalised); borrowed. */
    const char *const *egress_default;
    size_t n_egress_default;
    /* The secrets of repository repo (sid NULL) or of session sid's repository: put into the
     * environment of setup steps and scrubbed from their log, scanned for in every commit
     * before a push. *out: a new reference or NULL (none). NULL = no secrets. Any thread. */
    int (*secrets)(void *ctx, const char *sid, const char *repo, struct redact_set **out);
    void *secrets_ctx;
    /* Pull requests (repos_pr_*): the REST API base (github.api_base), the static token
     * (github.token; secret, used for automatic pull requests when the app has none), the
     * server's public URL for the session links (may be NULL), and how many background
     * workers push and open them (default 2). Borrowed. */
    const char *github_api_base;
    const char *github_token;
    const char *public_url;
    int pr_workers;
    /* The poller (github.poll_interval_s): every that many seconds the state and combined CI
     * state of each open pull request are read from GitHub; 0 = off (webhooks only). */
    int poll_interval_s;
};

/** Open (registry.db must have been migrated by the store). *out: repos_close(). */
int repos_open(const struct repos_config *cfg, struct repos **out);
/** Stop the threads, destroy the warm pool (and its sandboxes) and wait for the background
 * syncs and snapshots (a running build is abandoned and marked failed); the runner's calls
 * answer "no repository" from then on. The instance stays valid for the calls of those who
 * hold it (the runner) until repos_close(). A second call is a no-op. */
void repos_shutdown(struct repos *r);
/** repos_shutdown() if not done, then free. NULL is a no-op. */
void repos_close(struct repos *r);

/* ---- the registry ---- */

/** Create from {name, url, default_branch?, setup?, hints?, description?, pool_size?,
 * image_interval_min?, egress?, agent?}. egress: at most 64 "host:port" entries (agents.h
 * egress_entry_norm; stored normalised, duplicates dropped) its sessions' sandboxes may reach
 * besides the model endpoint; agent: a configured agent used when a session names none (null
 * or "" = the server default). ERR_INVALID (msg says why), ERR_CONFLICT if the name exists.
 * *out (may be NULL) = the repo as JSON. */
int repos_create(struct repos *r, json_t *spec, json_t **out, char *msg, size_t n);
int repos_get(struct repos *r, const char *name, json_t **out);
/** {"repos":[…]} by name. */
int repos_list(struct repos *r, json_t **out);
/** Change the given fields (name cannot change). */
int repos_update(struct repos *r, const char *name, json_t *patch, json_t **out, char *msg,
                 size_t n);
/** The egress policy and default agent of repository name: *egress (may be NULL) =
 * a new JSON array of normalised "host:port" (caller decrefs): the repository's list, then the
 * server-wide egress_default entries it lacks; agent gets its default agent or "" (n >= 65).
 * ERR_NOT_FOUND. */
int repos_repo_policy(struct repos *r, const char *name, json_t **egress, char *agent, size_t n);
/** The same for the registered repository of session sid (its `repo`: a name or a URL):
 * egress_default alone and "" when it has none, an empty list if r is NULL (returns 0). The runner
 * asks before each prompt: the list is read anew, so a PATCH applies from the next prompt on. */
int repos_session_policy(struct repos *r, const char *sid, json_t **egress, char *agent, size_t n);
/** Delete the repo, its images and warm workspaces (sessions keep their workspaces). */
int repos_delete(struct repos *r, const char *name);
/** Delete the tree at path, which nobody can reach any more (the workspace of a purged session
 * whose sandbox is gone), giving its inodes to the spare directories of the layer's snapshot
 * stores (snap_discard_tree); r NULL: deleted now. Valid until repos_close(). 0 or ERR_IO. */
int repos_discard_tree(struct repos *r, const char *path);

/* ---- images and the warm pool ---- */

/** Queue an image build (or run it now with no_threads). *out = the image row
 * {id, repo, state, …}. ERR_CONFLICT if a build of that repo is already queued/running. */
int repos_image_build(struct repos *r, const char *name, json_t **out);
/** {"images":[{id,state,step,commit_sha,started_at,built_at,duration_ms,size_bytes,files,
 * error,log_tail}]} newest first. */
int repos_images(struct repos *r, const char *name, json_t **out);
/** The "user started typing" hint: top the pool up now (in the background).
 * *out = {"pool_size":N,"warm":M,"image_id":…|null}. */
int repos_warm(struct repos *r, const char *name, json_t **out);
/** Top up the pools now and wait for it (tests, benchmarks). */
int repos_pool_fill(struct repos *r, const char *name);

/* ---- sessions ---- */

/** Fill the workspace of a new or restarted session of repository repo, before its sandbox
 * is created: the session's latest snapshot if it has one, else a warm workspace of the
 * latest image, else a restore of the latest image + sync, else a clone. source (>= 16 bytes)
 * gets "snapshot" | "warm" | "image" | "clone", *ms the time taken. The runner emits
 * `sandbox.ready` {source, ms}. workspace must not exist or be empty. */
int repos_prepare_workspace(struct repos *r, const char *session_id, const char *repo,
                            const char *workspace, char *source, int64_t *ms);

/** The end of a prompt (the runner calls it after the agent exited, before the next prompt
 * starts): commit the changes on the session branch as `who` (if the session has a repo and
 * the workspace changed; a Co-authored-by trailer when who has no stored GitHub credential,
 * since the push will then use the app token), then snapshot the workspace and prune.
 * Emits `git.commit` {sha, branch, author, files} and `session.snapshot` {snapshot_id, turn,
 * files, bytes, ms}. *out (may be NULL) = {snapshot_id, turn, commit|null}. */
int repos_after_prompt(struct repos *r, const char *session_id, const char *workspace,
                       const char *prompt_id, const struct author *who, const char *prompt_text,
                       json_t **out);
/** Snapshot now (DELETE of a session, before its sandbox is freed). label may be NULL. */
int repos_snapshot(struct repos *r, const char *session_id, const char *workspace,
                   const char *label, json_t **out);
/** {"snapshots":[…]} oldest first (snap_list). */
int repos_snapshots(struct repos *r, const char *session_id, json_t **out);
/** Restore snapshot_id into workspace (sandbox stopped or idle). */
int repos_rollback(struct repos *r, const char *session_id, const char *snapshot_id,
                   const char *workspace, json_t **out);
/** What repos_diff compares and its bounds (0: the helper's maximum). Borrowed strings. */
struct repos_diff_opts {
    int against_head;    /* 1: the uncommitted part (working tree against the session branch) */
    const char *path;    /* one file (workspace-relative, already checked), or NULL */
    size_t cap;          /* bytes of diff text */
    size_t file_cap;     /* larger files are not read: listed as binary and large */
    size_t max_files;    /* files listed */
    int per_file;        /* 1: each file keeps its own "diff" text; 0: one "diff" text for all */
    unsigned deadline_s; /* the helper is ended after this many seconds (0: its default, 30) */
};
/** The workspace of session_id against its base commit (where its branch left the default
 * branch) or its branch tip, computed in the sessiond-git helper as the sandbox user (gitjob.h,
 * git.h gitx_diff): *out = {against, base, head, files:[{path, status, additions, deletions,
 * binary, large, truncated}], files_total, additions, deletions, truncated, diff}. ERR_NOT_FOUND
 * if the session has no repository, ERR_CONFLICT if its workspace does not exist yet. */
int repos_diff(struct repos *r, const char *session_id, const char *workspace,
               const struct repos_diff_opts *o, json_t **out);
/** Push the session branch to the repository's registry URL with the given token
 * (username x-access-token). *out = {branch, sha, url}. */
int repos_push(struct repos *r, const char *session_id, const char *workspace, const char *token,
               json_t **out);
/** The session's repository state {repo, branch, url, default_branch, source, pr_url…}
 * (ERR_NOT_FOUND if the session has no repository). */
int repos_session_info(struct repos *r, const char *session_id, json_t **out);
/** Remember the PR URL of a session. */
int repos_session_set_pr(struct repos *r, const char *session_id, const char *url);

/* ---- calls of the runner ----
 * The runner is handed the instance in its config (runner.h); server/ calls the same. Each
 * accepts r == NULL and, once repos_shutdown() has begun, answers as if there were no
 * repository layer (the runner outlives the layer's threads at a stop). */

/** What the runner provides to the warm pool and the sync, registered by runner_start() with
 * repos_set_runner() (the runner is started after the layer, which it needs). make_sandbox
 * creates a sandbox for a warm workspace (blocking) on the runner's long-lived starter threads,
 * as a sandbox dies with the thread that created it; without it the pool holds workspaces
 * only. synced(ctx, sid) is called from a sync thread each time a workspace sync ends (the
 * runner kicks the session: a prompt that waited for the sync starts then). */
struct repos_runner {
    int (*make_sandbox)(void *ctx, const struct sbx_spec *spec, struct sbx **out);
    void (*synced)(void *ctx, const char *sid);
    void *ctx;
};
/** Register ops (copied), or unregister with NULL: returns once no callback is in progress. */
void repos_set_runner(struct repos *r, const struct repos_runner *ops);

/** Before the runner creates the sandbox of session sid (control or HTTP thread): if the
 * session names a registered repository (by name or URL) and its workspace does not exist,
 * fill it (snapshot, warm, image or clone) and remember the source for the ready event. */
void repos_sandbox_start(struct repos *r, const char *sid);
/** The data of `sandbox.ready`: {"source": what repos_sandbox_start did for sid (consumed),
 * else "empty", "ms": ms, "syncing": true while its sync runs}. Caller frees. Also releases
 * the session's background sync, which waits for the sandbox to be ready (at most 100 ms) so
 * that it does not compete with the start for the CPUs. */
char *repos_ready_json(struct repos *r, const char *sid, int64_t ms);

/* The workspace sync. A session started from an image (or a warm workspace synced more than a
 * few seconds ago, or its own snapshot) is usable as soon as the files are in place: the
 * fetch + hard reset to the branch head (and the index refresh) then run in the background.
 * While they run, file reads proceed on the workspace as it is; writes (PUT files, exec) and
 * the agent wait for the end (git.synced {head, previous, ms} or git.sync_failed {error}). */

/** 1 if the workspace of sid is being synced now (non-blocking; the runner's control thread
 * asks this before it starts a prompt). */
int repos_syncing(struct repos *r, const char *sid);
/** The sandbox that came with the warm workspace repos_sandbox_start claimed for sid
 * (created ahead for the pool, already given the session's name and workspace), or NULL. The
 * caller owns it (sbx_destroy). */
struct sbx *repos_take_sandbox(struct repos *r, const char *sid);
/** 1 if session sid names a registered repository (by name or URL): its sandbox is started at
 * creation (a session with an unknown `repo` string gets an empty workspace on first use). */
int repos_session_has_repo(struct repos *r, const char *sid);
/** Wait until the workspace sync of sid (if any) is over: 0, or ERR_TIMEOUT after timeout_ms
 * (< 0: the configured sync_wait_ms), ERR_UNAVAILABLE if the layer is closing. */
int repos_wait_synced(struct repos *r, const char *sid, int timeout_ms);
/** Before a prompt of sid starts (runner control thread, non-blocking): when its pull request
 * branch moved on the remote (a push by someone else, seen by the webhook or the poller),
 * start fetching and fast-forwarding its workspace to it (pr.pulled, or pr.push_failed when
 * the branch went both ways). 1: started, sid is syncing (repos_syncing) until it ends and the
 * runner's synced callback runs; 0: nothing to pull. */
int repos_pull_begin(struct repos *r, const char *sid);
/** The configured bound of a wait for a sync (sync_wait_ms; 30000 without a layer). */
int repos_sync_wait_ms(struct repos *r);
/** A prompt of sid ended (any final state), before the next one may start: commit its changes
 * as its author and snapshot the workspace (repos_after_prompt, reading the prompt's author
 * and text from the session file). Blocks for the commit + snapshot (tens to hundreds of ms):
 * the runner calls it on a thread of its own, after prompt.completed is committed, and starts
 * the next prompt of the session only when it returns. A rollback or a manual snapshot of
 * the session waits for it. */
void repos_prompt_end(struct repos *r, const char *sid, const char *prompt_id);
/** The uncommitted change of one file of sid's workspace (against the session branch tip), for
 * an agent.file_changed event: repos_diff with path, per_file and o's bounds on the session's
 * own workspace (o->path is the file; against_head is implied). Blocks for the helper (tens of
 * ms; o->deadline_s at most). *out as repos_diff's (caller decrefs). ERR_NOT_FOUND when the
 * session has no repository (no git: no diff), ERR_UNAVAILABLE once the layer is closing. */
int repos_diff_file(struct repos *r, const char *sid, const struct repos_diff_opts *o,
                    json_t **out);
/** The session ended and its sandbox is stopped: snapshot its workspace in the background
 * (a purged session's snapshots and repository state are deleted instead). */
void repos_session_end(struct repos *r, const char *sid);

/** The shared object store the sandbox `name` over host directory `workspace` must see
 * read-only at the same absolute path (sbx_spec.shared_objects), so that the workspace's
 * .git/objects/info/alternates resolves inside. Decided from our own records, never from the
 * workspace (whose alternates file the agent can rewrite): a workspace under
 * <data_dir>/repos/<repo>/ (an image build, a warm workspace) belongs to <repo>; a session's to
 * the repository it was prepared from. Returns the objects directory (caller frees), or NULL:
 * no repos layer, no repository, or no store yet. Any thread. */
char *repos_shared_objects(struct repos *r, const char *name, const char *workspace);

/* ---- pull requests ----
 * A repository's `pr` setting says what happens after a prompt that committed changes: off
 * (nothing), draft or ready: a background worker pushes the session branch (never forced
 * over another history: it is sessiond/<id>, which only this session writes) with the GitHub
 * App's installation token (else github.token), then opens the session's one pull request
 * (draft or ready for review) or updates the one it has. The record is prs_db.h's. Events:
 * pr.created, pr.updated, pr.failed {reason, message} (once per reason until an attempt
 * succeeds), pr.merged, pr.closed. */

enum repos_pr_mode { REPOS_PR_OFF, REPOS_PR_DRAFT, REPOS_PR_READY };
/** "off" | "draft" | "ready": 0 and *out (may be NULL), else ERR_INVALID. */
int repos_pr_mode_parse(const char *s, enum repos_pr_mode *out);

/** One call of repos_pr_sync. Borrowed strings. */
struct repos_pr_req {
    const char *token; /* secret: the push and the API calls */
    const char *kind;  /* "user" | "app" | "token": an app token refused is renewed once */
    const char *title; /* create: NULL = the session title or its first prompt's first line */
    const char *body;  /* create: text above the generated block; NULL = none */
    int draft;         /* create: 1 draft, 0 ready; update: 0 = mark ready, 1 = back to
                          draft, -1 = leave as is */
    const char *by;    /* user id that asked (the artifact's author), NULL = automatic */
};
/** Push the session branch and open its pull request, or update the one it has: its body is
 * regenerated between the <!-- sessiond --> markers (text outside them is kept), the draft
 * flag changed as asked; the title is never changed. One call per session at a time (others
 * wait). *out = {number, url, api_url, state, draft, branch, base, title, head_sha,
 * credentials} (caller decrefs), *created = 1 if it was opened now. Emits pr.created (with a
 * "pr" artifact) or pr.updated. Errors: ERR_NOT_FOUND (no repository), ERR_CONFLICT (its pull
 * request was merged or closed), ERR_UNPROCESSABLE (the URL names no OWNER/REPO), ERR_AUTH
 * (refused), others from the push or the API; msg (size n) says why, without the token. */
int repos_pr_sync(struct repos *r, const char *sid, const struct repos_pr_req *q, json_t **out,
                  int *created, char *msg, size_t n);
/** Record what GitHub says of sid's pull request (a webhook, a poller, a GET): state, draft
 * (< 0: unknown), at_ms the time of the change. Emits pr.merged or pr.closed when the state
 * changed to it. ERR_NOT_FOUND if sid has no pull request. */
int repos_pr_note_state(struct repos *r, const char *sid, const char *state, int draft,
                        int64_t at_ms);
/** A GitHub webhook delivery's id (X-GitHub-Delivery, at most 63 bytes): *fresh = 1 the first
 * time it is seen, 0 for a replay (the last REPOS_HOOK_SEEN ids within 24 hours are kept in
 * memory: GitHub's redeliveries come within that, and a restart forgets them). Any thread. */
#define REPOS_HOOK_SEEN 4096
int repos_gh_delivery(struct repos *r, const char *delivery, int *fresh);
/** Apply a verified webhook delivery of type event (X-GitHub-Event) with its payload:
 * pull_request closed/reopened -> repos_pr_note_state; check_suite and status -> the combined
 * CI state (pr.ci when it changed). *what (size n) says what was done for the log and the
 * answer. ERR_NOT_FOUND: no session has this pull request (ignored by the caller); 0 also for
 * events and actions that need nothing. Any thread; no network I/O. */
int repos_gh_event(struct repos *r, const char *event, json_t *payload, char *what, size_t n);
/** A comment delivery (issue_comment or pull_request_review_comment, action created) on a
 * session's pull request whose body contains mention: sid (>= 72 bytes) is that session, and
 * *trusted = 1 when the commenter's author_association is OWNER, MEMBER or COLLABORATOR (no
 * one else may prompt: anyone can comment on a public repository). ERR_NOT_FOUND: not a
 * comment for sessiond (no mention, not a session's pull request, another action). */
int repos_gh_comment(struct repos *r, const char *event, json_t *payload, const char *mention,
                     char *sid, int *trusted);
/** What a verified webhook delivery asks for, read from its payload alone: the pure half of
 * repos_gh_event and repos_gh_comment (no database, no state), so the payload parsing can be
 * tested and fuzzed on its own. */
enum gh_hook_kind {
    GH_HOOK_IGNORE,   /* ping, an event or action sessiond does not follow */
    GH_HOOK_PR_STATE, /* pull_request closed or reopened: pr_url is now state */
    GH_HOOK_CI,       /* check_suite or status: CI state for sha in repo_url */
    GH_HOOK_COMMENT,  /* a person's new comment on pr_url that contains the mention */
};
struct gh_hook {
    enum gh_hook_kind kind;
    const char *pr_url;   /* PR_STATE, COMMENT; may be NULL (the payload has none) */
    const char *repo_url; /* CI: the repository's html_url; may be NULL */
    const char *sha;      /* CI: the commit; may be NULL */
    const char *state;    /* PR_STATE: open|merged|closed; CI: pending|success|failure|error */
    int draft;            /* PR_STATE: 1, 0, or -1 when the payload does not say */
    json_t *suite_prs;    /* CI of a check suite: its pull_requests (any JSON, may be NULL) */
    int trusted;          /* COMMENT: author_association is OWNER, MEMBER or COLLABORATOR */
};
/** Fill *out from event (X-GitHub-Event, may be NULL) and payload (any JSON, may be NULL);
 * mention NULL or "": comments are ignored. Strings and suite_prs are borrowed from payload.
 * Always 0. Any thread. */
int repos_gh_parse(const char *event, json_t *payload, const char *mention, struct gh_hook *out);
/** Queue a comment with body on the pull request of sid; posted by the pull request follower
 * thread with the App's installation token (else github.token). Any thread; no I/O. */
void repos_gh_reply(struct repos *r, const char *sid, const char *body);
/** Prompt prompt_id of sid (user message message_id) came from a pull request comment by
 * login: when it ends, the agent's answer is posted as a reply mentioning login. At most
 * REPOS_GH_WATCH prompts are watched (kept in memory: a restart forgets them). Any thread. */
#define REPOS_GH_WATCH 1000
void repos_gh_watch(struct repos *r, const char *sid, const char *prompt_id, const char *message_id,
                    const char *login);
/** The session's pull request as GET /v1/sessions/{id} shows it ({number, url, state, draft,
 * ci_state, head_sha, created_at, merged_at}) or json null. New reference. */
json_t *repos_pr_json(struct repos *r, const char *sid);
/** Counts for /metrics (prs_db.h prs_counts: created, merged, closed). */
struct prs_counts;
int repos_pr_counts(struct repos *r, struct prs_counts *out);

/* ---- users' sealed credentials (opaque here: sealed by server/secrets.h) ---- */

int repos_cred_put(struct repos *r, const char *user_id, const char *provider, const char *sealed);
/** *sealed: caller frees. ERR_NOT_FOUND if none. */
int repos_cred_get(struct repos *r, const char *user_id, const char *provider, char **sealed);
int repos_cred_delete(struct repos *r, const char *user_id, const char *provider);

#endif
