/*
 * repos_db.h - the repository tables of registry.db: repos, images, session_repos and
 * user_credentials (migrations/registry/0002_repos.sql, 0003_repo_egress_agent.sql), and the
 * one read of a session file the workspace needs (a prompt's author and text).
 *
 * Thread safe: every function takes the registry's lock (registry.h) for its statements, which
 * are prepared once on the registry's connection and kept until repos_db_close(). Results that
 * are JSON are new references the caller decrefs.
 */
#ifndef SESSIOND_REPOS_DB_H
#define SESSIOND_REPOS_DB_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct repos_db;
struct registry;
struct sess;

/** Bind to reg (which must outlive it and be migrated). ERR_DB if the repos tables are
 * missing. *out: repos_db_close(). */
int repos_db_open(struct registry *reg, struct repos_db **out);
/** Finalize the statements. NULL is a no-op. */
void repos_db_close(struct repos_db *d);

/* ---- repos ---- */

/** The row as {name,url,default_branch,setup,hints,description,pool_size,image_interval_min,
 * created_at,updated_at,egress,agent?}. ERR_NOT_FOUND. */
int repos_db_repo_get(struct repos_db *d, const char *name, json_t **out);
/** Every row as above, by name: *out = a JSON array. */
int repos_db_repo_list(struct repos_db *d, json_t **out);
/** Write the whole row j (the fields above, validated by the caller; setup, hints and egress as
 * arrays) with INSERT (create; ERR_CONFLICT if the name exists) or UPDATE (ERR_NOT_FOUND). */
int repos_db_repo_put(struct repos_db *d, json_t *j, int create, int64_t now_ms);
/** Delete the row and mark its images deleted. ERR_NOT_FOUND. */
int repos_db_repo_delete(struct repos_db *d, const char *name);
/** The name of the first repository (by name) whose url is url: *name (caller frees).
 * ERR_NOT_FOUND. */
int repos_db_repo_by_url(struct repos_db *d, const char *url, char **name);

/* ---- images ---- */

/** Insert image id of repo (state building, step queued) unless one of repo is building:
 * ERR_CONFLICT then. */
int repos_db_image_new(struct repos_db *d, const char *id, const char *repo, int64_t now_ms);
/** The row as {id,repo,state,step,commit_sha,snapshot_id,started_at,built_at,duration_ms,
 * size_bytes,files,error,log_tail}. ERR_NOT_FOUND. */
int repos_db_image_get(struct repos_db *d, const char *id, json_t **out);
/** The 50 newest images of repo not deleted, as above: *out = a JSON array. */
int repos_db_image_list(struct repos_db *d, const char *repo, json_t **out);
/** The latest ready image of repo: id and snapshot id (buffers of 64), started (may be NULL).
 * ERR_NOT_FOUND. */
int repos_db_image_latest(struct repos_db *d, const char *repo, char *id, char *snap,
                          int64_t *started);
/** The start of the latest image of repo in any state (0 if none). */
int repos_db_image_last_start(struct repos_db *d, const char *repo, int64_t *started);

enum repos_db_image_col { REPOS_DB_IMAGE_STEP, REPOS_DB_IMAGE_COMMIT, REPOS_DB_IMAGE_STATE };
/** Set one text column of image id. */
int repos_db_image_set(struct repos_db *d, const char *id, enum repos_db_image_col col,
                       const char *val);
/** Append n bytes to the build log of image id, unless the log is over cap bytes already. */
int repos_db_image_log(struct repos_db *d, const char *id, const char *text, size_t n, int64_t cap);
struct repos_db_built {
    const char *snapshot_id;
    int64_t built_at, duration_ms, size_bytes, files;
};
/** The build of image id ended well: state ready. */
int repos_db_image_ready(struct repos_db *d, const char *id, const struct repos_db_built *b);
/** The build of image id failed: state failed, with the error. */
int repos_db_image_failed(struct repos_db *d, const char *id, const char *error,
                          int64_t duration_ms, int64_t built_at);
/** Ready images of repo beyond the newest keep, at most max: ids[i] and snaps[i] ("" when it
 * has none) are the caller's to free, *n their count. */
int repos_db_image_beyond(struct repos_db *d, const char *repo, int keep, int max, char **ids,
                          char **snaps, int *n);
/** Mark every image still building failed with error why (a build never survives a stop). */
int repos_db_image_interrupt(struct repos_db *d, const char *why);

/* ---- session_repos ---- */

/** Remember that session sid works on repo, on branch (kept if the row exists). */
int repos_db_session_add(struct repos_db *d, const char *sid, const char *repo, const char *branch,
                         int64_t now_ms);
/** How the workspace of sid was filled: source, ms, image_id (may be NULL). */
int repos_db_session_ready(struct repos_db *d, const char *sid, const char *source, int64_t ms,
                           const char *image_id);
/** The row joined with its repo: {repo,branch,url,default_branch,source,ready_ms,image_id,turn,
 * pushed_sha,pr_url} (url and default_branch null when the repo was deleted). ERR_NOT_FOUND. */
int repos_db_session_get(struct repos_db *d, const char *sid, json_t **out);
/** The repo of session sid: *repo (caller frees). ERR_NOT_FOUND. */
int repos_db_session_repo(struct repos_db *d, const char *sid, char **repo);
/** Count one more turn of sid. */
int repos_db_session_next_turn(struct repos_db *d, const char *sid);
/** The sha last pushed (NULL: unknown) and the PR url of sid. */
int repos_db_session_set_pushed(struct repos_db *d, const char *sid, const char *sha);
int repos_db_session_set_pr(struct repos_db *d, const char *sid, const char *url);
/** Forget session sid (purged). */
int repos_db_session_delete(struct repos_db *d, const char *sid);

/* ---- user_credentials (sealed by the caller; opaque here) ---- */

int repos_db_cred_put(struct repos_db *d, const char *user_id, const char *provider,
                      const char *sealed, int64_t now_ms);
/** *sealed: caller frees. ERR_NOT_FOUND. */
int repos_db_cred_get(struct repos_db *d, const char *user_id, const char *provider, char **sealed);
/** ERR_NOT_FOUND if there was none. */
int repos_db_cred_delete(struct repos_db *d, const char *user_id, const char *provider);

/* ---- a session file ---- */

/** The author and text of prompt pid of session s (the prompt's author, else its message's).
 * Every field may be NULL; the caller frees them with repos_db_prompt_free(). ERR_NOT_FOUND. */
struct repos_db_prompt {
    char *author_id, *author_name, *author_email, *content;
};
int repos_db_prompt_read(struct sess *s, const char *pid, struct repos_db_prompt *out);
void repos_db_prompt_free(struct repos_db_prompt *p);

#endif
