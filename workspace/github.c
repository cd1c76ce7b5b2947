/*
 * github.c - pull requests through the GitHub REST API with libcurl.
 *
 * The token is put in one header and nowhere else (not in logs, not in error messages).
 * Redirects are not followed (a redirect must not carry the token elsewhere). Responses are
 * read into a capped buffer. Threads: any; one easy handle per call.
 */

#include "workspace/github.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MAX_RESPONSE (1 << 20)

static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void curl_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_data(char *p, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    if (buf_append(b, p, size * nmemb) != 0) {
        return 0; /* over the cap: abort the transfer */
    }
    return size * nmemb;
}

/* Path segment check for owner/repo: GitHub's own character set. */
static int valid_seg(const char *s)
{
    if (!s || !*s || strlen(s) > 100 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
        return 0;
    }
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.')) {
            return 0;
        }
    }
    return 1;
}

int github_parse_url(const char *url, char **owner, char **repo)
{
    const char *p = NULL;
    *owner = *repo = NULL;
    if (!url) {
        return ERR_INVALID;
    }
    if (strncmp(url, "https://", 8) == 0 || strncmp(url, "http://", 7) == 0 ||
        strncmp(url, "ssh://", 6) == 0) {
        p = strstr(url, "://") + 3;
        p = strchr(p, '/'); /* after host[:port] */
        if (p) {
            p++;
        }
    } else if (strncmp(url, "git@", 4) == 0) {
        p = strchr(url, ':');
        if (p) {
            p++;
        }
    }
    if (!p) {
        return ERR_INVALID;
    }
    const char *slash = strchr(p, '/');
    if (!slash) {
        return ERR_INVALID;
    }
    char *o = xstrndup(p, (size_t)(slash - p));
    char *r = xstrdup(slash + 1);
    size_t rl = strlen(r);
    while (rl > 0 && r[rl - 1] == '/') {
        r[--rl] = 0;
    }
    if (rl > 4 && strcmp(r + rl - 4, ".git") == 0) {
        r[rl - 4] = 0;
    }
    if (!valid_seg(o) || !valid_seg(r)) {
        free(o);
        free(r);
        return ERR_INVALID;
    }
    *owner = o;
    *repo = r;
    return 0;
}

static int status_err(long status)
{
    switch (status) {
    case 401:
        return ERR_AUTH;
    case 403:
        return ERR_FORBIDDEN;
    case 404:
        return ERR_NOT_FOUND;
    case 409:
        return ERR_CONFLICT;
    case 422:
        return ERR_UNPROCESSABLE;
    default:
        return status >= 500 ? ERR_UNAVAILABLE : ERR_INVALID;
    }
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return __atomic_load_n((const int *)ud, __ATOMIC_RELAXED) ? 1 : 0;
}

/* One REST (or GraphQL) call: method on url with the token, the JSON body reqj (may be NULL);
 * *rj = the parsed answer (may be NULL). An answer other than want fills msg and maps the
 * status to an error. what names the call in the log (never the token). */
static int gh_call(const struct github_pr *req, const char *method, const char *url, json_t *reqj,
                   long want, json_t **rj, const char *what, char *msg, size_t n)
{
    CURL *c = NULL;
    struct curl_slist *hdr = NULL;
    struct buf resp;
    char *body = NULL, *auth = NULL;
    int rc = 0;
    long status = 0;

    *rj = NULL;
    buf_init(&resp, MAX_RESPONSE);
    pthread_once(&g_once, curl_once);
    body = reqj ? json_dumps(reqj, JSON_COMPACT) : NULL;
    auth = xasprintf("Authorization: Bearer %s", req->token);
    hdr = curl_slist_append(hdr, auth);
    hdr = curl_slist_append(hdr, "Accept: application/vnd.github+json");
    hdr = curl_slist_append(hdr, "X-GitHub-Api-Version: 2022-11-28");
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Expect:");
    c = curl_easy_init();
    if (!c || (reqj && !body)) {
        rc = ERR_NOMEM;
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_USERAGENT, "sessiond");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : 30000L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    if (req->ca_file && req->ca_file[0]) {
        curl_easy_setopt(c, CURLOPT_CAINFO, req->ca_file);
    } else if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0) {
        curl_easy_setopt(c, CURLOPT_CAINFO, "/etc/ssl/certs/ca-certificates.crt");
    }
    if (req->cancel) {
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)req->cancel);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    }
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        snprintf(msg, n, "GitHub API unreachable: %s", curl_easy_strerror(cc));
        LOG_WARN("github: %s %s/%s: %s", what, req->owner, req->repo, curl_easy_strerror(cc));
        rc = ERR_UNAVAILABLE;
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    *rj = json_loadb(resp.data ? resp.data : "", resp.len, 0, NULL);
    if (status != want) {
        const char *m = *rj ? json_string_value(json_object_get(*rj, "message")) : NULL;
        /* 422 details live in errors[].message */
        json_t *errs = *rj ? json_object_get(*rj, "errors") : NULL;
        const char *detail = NULL;
        if (json_is_array(errs) && json_array_size(errs) > 0) {
            detail = json_string_value(json_object_get(json_array_get(errs, 0), "message"));
        }
        snprintf(msg, n, "GitHub answered %ld: %s%s%s", status, m ? m : "error", detail ? ": " : "",
                 detail ? detail : "");
        LOG_WARN("github: %s %s/%s answered %ld", what, req->owner, req->repo, status);
        rc = status_err(status);
        json_decref(*rj);
        *rj = NULL;
    }
out:
    if (c) {
        curl_easy_cleanup(c);
    }
    curl_slist_free_all(hdr);
    if (auth) {
        OPENSSL_cleanse(auth, strlen(auth));
        free(auth);
    }
    free(body);
    buf_free(&resp);
    return rc;
}

static int check_req(const struct github_pr *req, char *msg, size_t n)
{
    if (msg && n) {
        msg[0] = 0;
    }
    if (!req->api_base || !req->token || !req->token[0] || !valid_seg(req->owner) ||
        !valid_seg(req->repo)) {
        snprintf(msg, n, "missing or invalid pull request field");
        return ERR_INVALID;
    }
    return 0;
}

/* {api_base}/repos/{owner}/{repo}/pulls{suffix} (caller frees). */
static char *pulls_url(const struct github_pr *req, const char *suffix)
{
    size_t bl = strlen(req->api_base);
    while (bl > 0 && req->api_base[bl - 1] == '/') {
        bl--;
    }
    return xasprintf("%.*s/repos/%s/%s/pulls%s", (int)bl, req->api_base, req->owner, req->repo,
                     suffix);
}

/* The pull request fields sessiond keeps, from a GitHub pull request object. */
static json_t *pr_fields(json_t *rj)
{
    json_t *num = json_object_get(rj, "number");
    const char *html = json_string_value(json_object_get(rj, "html_url"));
    if (!json_is_integer(num) || !html) {
        return NULL;
    }
    const char *api = json_string_value(json_object_get(rj, "url"));
    const char *node = json_string_value(json_object_get(rj, "node_id"));
    const char *state = json_string_value(json_object_get(rj, "state"));
    const char *body = json_string_value(json_object_get(rj, "body"));
    const char *head = json_string_value(json_object_get(json_object_get(rj, "head"), "sha"));
    const char *merged_at = json_string_value(json_object_get(rj, "merged_at"));
    int merged = json_is_true(json_object_get(rj, "merged")) || merged_at != NULL;
    return json_pack("{s:I, s:s, s:s, s:s, s:s, s:b, s:b, s:s?, s:s?}", "number",
                     json_integer_value(num), "url", html, "api_url", api ? api : "", "node_id",
                     node ? node : "", "state", state ? state : "open", "merged", merged, "draft",
                     json_is_true(json_object_get(rj, "draft")), "body", body, "head_sha", head);
}

int github_create_pr(const struct github_pr *req, json_t **out, char *msg, size_t n)
{
    json_t *reqj = NULL, *rj = NULL;
    char *url = NULL;
    *out = NULL;
    int rc = check_req(req, msg, n);
    if (rc == 0 && (!req->title || !req->head || !req->base)) {
        snprintf(msg, n, "missing or invalid pull request field");
        rc = ERR_INVALID;
    }
    if (rc != 0) {
        return rc;
    }
    url = pulls_url(req, "");
    reqj = json_pack("{s:s, s:s, s:s, s:b}", "title", req->title, "head", req->head, "base",
                     req->base, "draft", req->draft ? 1 : 0);
    if (!reqj) {
        snprintf(msg, n, "pull request fields are not valid UTF-8");
        rc = ERR_INVALID;
        goto out;
    }
    if (req->body) {
        json_object_set_new(reqj, "body", json_string(req->body));
    }
    rc = gh_call(req, "POST", url, reqj, 201, &rj, "POST pulls", msg, n);
    if (rc == 0) {
        *out = pr_fields(rj);
        if (!*out) {
            snprintf(msg, n, "GitHub answered 201 without a pull request");
            rc = ERR_UNAVAILABLE;
        }
    }
out:
    free(url);
    json_decref(reqj);
    json_decref(rj);
    return rc;
}

int github_get_pr(const struct github_pr *req, int64_t number, json_t **out, char *msg, size_t n)
{
    json_t *rj = NULL;
    char sfx[32];
    *out = NULL;
    int rc = check_req(req, msg, n);
    if (rc != 0) {
        return rc;
    }
    snprintf(sfx, sizeof(sfx), "/%lld", (long long)number);
    char *url = pulls_url(req, sfx);
    rc = gh_call(req, "GET", url, NULL, 200, &rj, "GET pull", msg, n);
    if (rc == 0 && !(*out = pr_fields(rj))) {
        snprintf(msg, n, "GitHub answered 200 without a pull request");
        rc = ERR_UNAVAILABLE;
    }
    free(url);
    json_decref(rj);
    return rc;
}

int github_update_pr(const struct github_pr *req, int64_t number, json_t **out, char *msg, size_t n)
{
    json_t *rj = NULL, *reqj = NULL;
    char sfx[32];
    *out = NULL;
    int rc = check_req(req, msg, n);
    if (rc != 0) {
        return rc;
    }
    reqj = json_object();
    if (req->body) {
        json_object_set_new(reqj, "body", json_string(req->body));
    }
    if (req->title) {
        json_object_set_new(reqj, "title", json_string(req->title));
    }
    snprintf(sfx, sizeof(sfx), "/%lld", (long long)number);
    char *url = pulls_url(req, sfx);
    rc = gh_call(req, "PATCH", url, reqj, 200, &rj, "PATCH pull", msg, n);
    if (rc == 0 && !(*out = pr_fields(rj))) {
        snprintf(msg, n, "GitHub answered 200 without a pull request");
        rc = ERR_UNAVAILABLE;
    }
    free(url);
    json_decref(reqj);
    json_decref(rj);
    return rc;
}

int github_set_draft(const struct github_pr *req, const char *node_id, int draft, char *msg,
                     size_t n)
{
    json_t *rj = NULL, *reqj = NULL;
    int rc = check_req(req, msg, n);
    if (rc == 0 && (!node_id || !*node_id)) {
        snprintf(msg, n, "the pull request has no node id");
        rc = ERR_INVALID;
    }
    if (rc != 0) {
        return rc;
    }
    /* REST cannot change the draft flag: GitHub's GraphQL endpoint is {api_base}/graphql, or
     * https://HOST/api/graphql for an Enterprise api_base https://HOST/api/v3 */
    size_t bl = strlen(req->api_base);
    while (bl > 0 && req->api_base[bl - 1] == '/') {
        bl--;
    }
    char *url = bl >= 7 && strncmp(req->api_base + bl - 7, "/api/v3", 7) == 0
                    ? xasprintf("%.*s/api/graphql", (int)(bl - 7), req->api_base)
                    : xasprintf("%.*s/graphql", (int)bl, req->api_base);
    const char *mutation =
        draft ? "mutation($id:ID!){convertPullRequestToDraft(input:{pullRequestId:$id})"
                "{pullRequest{isDraft}}}"
              : "mutation($id:ID!){markPullRequestReadyForReview(input:{pullRequestId:$id})"
                "{pullRequest{isDraft}}}";
    reqj = json_pack("{s:s, s:{s:s}}", "query", mutation, "variables", "id", node_id);
    rc = gh_call(req, "POST", url, reqj, 200, &rj, "graphql draft", msg, n);
    if (rc == 0 && json_is_array(json_object_get(rj, "errors")) &&
        json_array_size(json_object_get(rj, "errors")) > 0) {
        const char *m = json_string_value(
            json_object_get(json_array_get(json_object_get(rj, "errors"), 0), "message"));
        snprintf(msg, n, "GitHub refused the draft change: %s", m ? m : "error");
        rc = ERR_UNPROCESSABLE;
    }
    free(url);
    json_decref(reqj);
    json_decref(rj);
    return rc;
}

int github_ci_state(const struct github_pr *req, const char *sha, char state[16], char *msg,
                    size_t n)
{
    json_t *rj = NULL;
    state[0] = 0;
    int rc = check_req(req, msg, n);
    if (rc != 0) {
        return rc;
    }
    if (!sha || strlen(sha) != 40 || strspn(sha, "0123456789abcdef") != 40) {
        snprintf(msg, n, "invalid commit sha");
        return ERR_INVALID;
    }
    size_t bl = strlen(req->api_base);
    while (bl > 0 && req->api_base[bl - 1] == '/') {
        bl--;
    }
    char *url = xasprintf("%.*s/repos/%s/%s/commits/%s/status", (int)bl, req->api_base, req->owner,
                          req->repo, sha);
    rc = gh_call(req, "GET", url, NULL, 200, &rj, "GET combined status", msg, n);
    if (rc == 0) {
        const char *st = json_string_value(json_object_get(rj, "state"));
        /* no status at all reads "pending" on GitHub: that is "no CI", not a pending one */
        if (st && json_integer_value(json_object_get(rj, "total_count")) > 0 &&
            (strcmp(st, "pending") == 0 || strcmp(st, "success") == 0 ||
             strcmp(st, "failure") == 0 || strcmp(st, "error") == 0)) {
            snprintf(state, 16, "%s", st);
        }
    }
    free(url);
    json_decref(rj);
    return rc;
}

int github_add_comment(const struct github_pr *req, int64_t number, const char *body, char *msg,
                       size_t n)
{
    json_t *rj = NULL, *reqj = NULL;
    int rc = check_req(req, msg, n);
    if (rc != 0) {
        return rc;
    }
    size_t bl = strlen(req->api_base);
    while (bl > 0 && req->api_base[bl - 1] == '/') {
        bl--;
    }
    char *url = xasprintf("%.*s/repos/%s/%s/issues/%lld/comments", (int)bl, req->api_base,
                          req->owner, req->repo, (long long)number);
    reqj = json_pack("{s:s}", "body", body ? body : "");
    if (!reqj) {
        snprintf(msg, n, "the comment is not valid UTF-8");
        rc = ERR_INVALID;
    } else {
        rc = gh_call(req, "POST", url, reqj, 201, &rj, "POST comment", msg, n);
    }
    free(url);
    json_decref(reqj);
    json_decref(rj);
    return rc;
}
