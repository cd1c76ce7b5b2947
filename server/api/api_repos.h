/*
 * api_repos.h - the repository endpoints and their start/stop:
 *   POST/GET /v1/repos, GET/PATCH/DELETE /v1/repos/{name}, POST/GET /v1/repos/{name}/images,
 *   POST /v1/repos/{name}/warm, GET/POST /v1/sessions/{id}/snapshots,
 *   POST /v1/sessions/{id}/rollback, POST /v1/sessions/{id}/push,
 *   POST /v1/sessions/{id}/pull-request, GET /v1/me/credentials,
 *   PUT/DELETE /v1/me/credentials/github.
 *
 * Threads: api_repos_start/stop/free from the main thread (start after sandbox_start: image
 * setup commands run in app->sbx; and before sandbox_runner_start: the runner is handed
 * app->repos; stop before sandbox_stop, free after it); handlers on HTTP pool threads.
 */
#ifndef SESSIOND_API_REPOS_H
#define SESSIOND_API_REPOS_H

struct app;
struct req;

/** Open the master key (app->secrets; a missing key only disables stored tokens) and the
 * repository layer (app->repos). 0 or a negative error (the server must not start). */
int api_repos_start(struct app *app);
/** Stop the layer's threads and warm pool (repos_shutdown) and drop the master key. */
void api_repos_stop(struct app *app);
/** Free the layer (after the runner is stopped). */
void api_repos_free(struct app *app);

int api_repos_create(struct req *r);
int api_repos_list(struct req *r);
int api_repo_get(struct req *r);
int api_repo_patch(struct req *r);
int api_repo_delete(struct req *r);
int api_repo_images_build(struct req *r);
int api_repo_images_list(struct req *r);
int api_repo_warm(struct req *r);
int api_snapshots_list(struct req *r);
int api_snapshots_create(struct req *r);
int api_rollback(struct req *r);
int api_push(struct req *r);
int api_pull_request(struct req *r);
int api_credentials_list(struct req *r);
int api_credentials_github_put(struct req *r);
int api_credentials_github_delete(struct req *r);

#endif
