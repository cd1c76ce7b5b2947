/*
 * github.h - the GitHub REST calls sessiond makes: open a pull request.
 *
 * POST {api_base}/repos/{owner}/{repo}/pulls with the *author's* token, so the pull request
 * is theirs. api_base is https://api.github.com or a GitHub Enterprise
 * https://HOST/api/v3 (configurable; tests point it at a local stand-in).
 *
 * Thread safety: thread safe (one curl easy handle per call; curl_global_init is done once).
 */
#ifndef SESSIOND_GITHUB_H
#define SESSIOND_GITHUB_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct github_pr {
    const char *api_base; /* no trailing slash needed */
    const char *owner;
    const char *repo;
    const char *token; /* secret; sent only as "Authorization: Bearer …" */
    const char *title;
    const char *body; /* may be NULL */
    const char *head; /* branch with the changes, e.g. "sessiond/s_abc" */
    const char *base; /* target branch, e.g. "main" */
    int draft;
    const char *ca_file; /* may be NULL: the system bundle */
    long timeout_ms;     /* 0 = 30 s */
    const int *cancel;   /* may be NULL; non-zero (read atomically) aborts a call in progress
                            with ERR_UNAVAILABLE: a server stop does not wait for GitHub */
};

/** Open the pull request. On success *out = {"number":N,"url":"https://github.com/…/pull/N",
 * "api_url":"…","node_id":"…","state":"open","merged":false,"draft":bool,"body":…,
 * "head_sha":…} (caller decrefs; the same shape for the calls below). On failure the API's message
 * (never the token) goes into msg (size n) and the status maps to ERR_AUTH (401), ERR_FORBIDDEN
 * (403), ERR_NOT_FOUND (404), ERR_UNPROCESSABLE (422: no commits, PR exists…), ERR_UNAVAILABLE
 * (network, 5xx). */
int github_create_pr(const struct github_pr *req, json_t **out, char *msg, size_t n);

/** GET pull request number (title, head, base and draft of req are not used). */
int github_get_pr(const struct github_pr *req, int64_t number, json_t **out, char *msg, size_t n);
/** PATCH pull request number: its body (req->body) and title (req->title), each only when
 * non-NULL; the other fields of req are not used. */
int github_update_pr(const struct github_pr *req, int64_t number, json_t **out, char *msg,
                     size_t n);
/** Mark the pull request with GraphQL id node_id ready for review (draft 0) or convert it back
 * to a draft (draft 1): GitHub's REST API cannot change the flag. */
int github_set_draft(const struct github_pr *req, const char *node_id, int draft, char *msg,
                     size_t n);

/** The combined commit status of sha (40 lowercase hex) (GET …/commits/{sha}/status): state =
 * pending | success | failure | error, or "" when the commit has no status at all. */
int github_ci_state(const struct github_pr *req, const char *sha, char state[16], char *msg,
                    size_t n);

/** Comment body on issue or pull request number (POST …/issues/{number}/comments). */
int github_add_comment(const struct github_pr *req, int64_t number, const char *body, char *msg,
                       size_t n);

/** Split a repository URL (https://github.com/OWNER/REPO(.git), git@github.com:OWNER/REPO.git,
 * ssh://git@host/OWNER/REPO) into owner and repo (caller frees both). ERR_INVALID otherwise. */
int github_parse_url(const char *url, char **owner, char **repo);

#endif
