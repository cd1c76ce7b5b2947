/*
 * api_repos.h - the repository endpoints (the layer itself is started by server/app.c):
 *   POST/GET /v1/repos, GET/PATCH/DELETE /v1/repos/{name}, POST/GET /v1/repos/{name}/images,
 *   POST /v1/repos/{name}/warm, GET/POST /v1/sessions/{id}/snapshots,
 *   POST /v1/sessions/{id}/rollback, POST /v1/sessions/{id}/push,
 *   POST /v1/sessions/{id}/pull-request, GET /v1/me/credentials,
 *   PUT/DELETE /v1/me/credentials/github.
 *
 * Threads: handlers on HTTP pool threads.
 */
#ifndef SESSIOND_API_REPOS_H
#define SESSIOND_API_REPOS_H

struct app;
struct req;

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
