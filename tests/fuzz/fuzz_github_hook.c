/*
 * fuzz_github_hook.c - the GitHub webhook (POST /v1/github/webhook) as an attacker sees it:
 * the X-Hub-Signature-256 check over the raw body (api_github_verify), then, for a verified
 * delivery only, what api_github_webhook does with it: the X-GitHub-Delivery dedupe
 * (repos_gh_delivery), the payload parsing (repos_gh_parse) and its application to the pull
 * request records (repos_gh_comment, repos_gh_event) of a real repository layer on a temp data
 * dir holding two open pull requests.
 *
 * Input: "MODE\nEVENT\nDELIVERY\nSIGNATURE\nBODY". MODE's first byte picks the signature:
 * 'x' the given SIGNATURE as it is; 'b' the right one with its last hex digit changed; anything
 * else the right one, so most inputs get past the check to the parser.
 * Properties: the check accepts exactly "sha256=" + the HMAC of the body under the secret (so a
 * wrong signature never reaches the parser); a fresh delivery id is a duplicate when it comes
 * again; the parse names a known state for each kind, a comment only for the two comment
 * events with the mention in its body; the repository layer agrees with the parse and answers
 * 0 or ERR_NOT_FOUND.
 */
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "server/api/api_github.h"
#include "storage/prs_db.h"
#include "storage/store.h"
#include "workspace/repos.h"

#include "fuzzlib.h"

#include <sys/stat.h>
#include <unistd.h>

#define SECRET  "It's a Secret to Everybody"
#define MENTION "@sessiond"

/* This harness process's one fixture: a store and repository layer (no threads, no sandbox
 * backend) on a temp dir removed at exit. */
static char root[128];
static struct store *st;
static struct repos *repos;
static struct prs_db *prs;

static void remove_fixture(void)
{
    repos_close(repos);
    prs_db_close(prs);
    store_close(st);
    util_rm_rf(root);
}

static void add_pr(const char *sid, const char *url, const char *sha)
{
    struct pr_rec rec = {.number = 42, .draft = 0};
    snprintf(rec.session_id, sizeof rec.session_id, "%s", sid);
    snprintf(rec.repo, sizeof rec.repo, "web");
    snprintf(rec.url, sizeof rec.url, "%s", url);
    snprintf(rec.head_sha, sizeof rec.head_sha, "%s", sha);
    snprintf(rec.title, sizeof rec.title, "fuzz");
    snprintf(rec.credentials, sizeof rec.credentials, "token");
    FZ_CHECK(prs_db_created(prs, &rec, 1000) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char data[160];
    log_set_level(LOG_LEVEL_OFF);
    struct stat sb;
    const char *base = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/fuzz_github_hook.XXXXXX", base);
    FZ_CHECK(mkdtemp(root) != NULL);
    atexit(remove_fixture);
    snprintf(data, sizeof data, "%s/data", root);
    struct store_config sc = {.data_dir = data};
    FZ_CHECK(store_open(&sc, &st) == 0);
    FZ_CHECK(prs_db_open(store_registry(st), &prs) == 0);
    /* the seeds' pull requests: a payload about them reaches the state and CI updates */
    add_pr("s_fuzzpr1", "https://github.com/acme/web/pull/42",
           "6dcb09b5b57875f334f61aebed695e2e4193db5e");
    add_pr("s_fuzzpr2", "https://github.com/acme/api/pull/7",
           "ffac537e6cbbf934b08745a378932722df287a53");
    struct repos_config rc = {.data_dir = data, .store = st, .no_threads = 1};
    FZ_CHECK(repos_open(&rc, &repos) == 0);
    return 0;
}

static void sign(const char *body, size_t len, char out[72])
{
    char mac[65];
    util_hmac_sha256_hex(SECRET, strlen(SECRET), body, len, mac);
    snprintf(out, 72, "sha256=%s", mac);
}

static int one_of(const char *s, const char *const *set)
{
    for (; s && *set; set++) {
        if (strcmp(s, *set) == 0) {
            return 1;
        }
    }
    return 0;
}

static void check_parse(const char *event, json_t *p)
{
    static const char *const pr_states[] = {"open", "merged", "closed", NULL};
    static const char *const ci_states[] = {"pending", "success", "failure", "error", NULL};
    static const char *const ci_events[] = {"check_suite", "status", NULL};
    static const char *const comment_events[] = {"issue_comment", "pull_request_review_comment",
                                                 NULL};
    struct gh_hook h, quiet;
    FZ_CHECK(repos_gh_parse(event, p, MENTION, &h) == 0);
    FZ_CHECK(repos_gh_parse(event, p, NULL, &quiet) == 0);
    /* without a mention comments are ignored, and nothing else changes */
    FZ_CHECK(quiet.kind != GH_HOOK_COMMENT);
    if (h.kind != GH_HOOK_COMMENT) {
        FZ_CHECK(memcmp(&h, &quiet, sizeof h) == 0);
    }
    /* borrowed strings must be readable */
    size_t n = (h.pr_url ? strlen(h.pr_url) : 0) + (h.repo_url ? strlen(h.repo_url) : 0) +
               (h.sha ? strlen(h.sha) : 0);
    (void)n;
    switch (h.kind) {
    case GH_HOOK_IGNORE:
        FZ_CHECK(!h.pr_url && !h.state && !h.trusted && h.draft == -1);
        break;
    case GH_HOOK_PR_STATE:
        FZ_CHECK(strcmp(event, "pull_request") == 0 && one_of(h.state, pr_states));
        FZ_CHECK(h.draft >= -1 && h.draft <= 1 && !h.trusted);
        break;
    case GH_HOOK_CI:
        FZ_CHECK(one_of(event, ci_events) && one_of(h.state, ci_states) && !h.trusted);
        FZ_CHECK(!h.suite_prs || strcmp(event, "check_suite") == 0);
        break;
    case GH_HOOK_COMMENT: {
        FZ_CHECK(one_of(event, comment_events) && !h.state);
        const char *body =
            json_string_value(json_object_get(json_object_get(p, "comment"), "body"));
        FZ_CHECK(body && strstr(body, MENTION));
        break;
    }
    default:
        FZ_CHECK(!"unknown kind");
    }

    /* the repository layer, as api_github_webhook calls it */
    char sid[72], what[300];
    int trusted = -1;
    int rc = repos_gh_comment(repos, event, p, MENTION, sid, &trusted);
    FZ_CHECK(rc == 0 || rc == ERR_NOT_FOUND);
    if (rc == 0) {
        FZ_CHECK(h.kind == GH_HOOK_COMMENT && trusted == h.trusted);
        FZ_CHECK(strcmp(sid, "s_fuzzpr1") == 0 || strcmp(sid, "s_fuzzpr2") == 0);
        return;
    }
    FZ_CHECK(trusted == 0);
    rc = repos_gh_event(repos, event, p, what, sizeof what);
    FZ_CHECK(rc == 0 || rc == ERR_NOT_FOUND);
    FZ_CHECK(memchr(what, 0, sizeof what) != NULL);
    FZ_CHECK(rc == 0 || h.kind == GH_HOOK_PR_STATE || h.kind == GH_HOOK_CI);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = {data, size};
    size_t len, event_len;
    char *mode = fz_field(&f, NULL);
    char *event = fz_field(&f, &event_len);
    char *delivery = fz_field(&f, NULL);
    char *sig_in = fz_field(&f, NULL);
    char *body = fz_rest(&f, &len);
    char want[72], sig[72];
    const char *use_sig = sig;
    json_t *p = NULL;
    sign(body, len, want);
    snprintf(sig, sizeof sig, "%s", want);
    if (mode[0] == 'x') {
        use_sig = sig_in;
    } else if (mode[0] == 'b') {
        sig[70] = sig[70] == '0' ? '1' : '0';
    }

    int rc = api_github_verify(SECRET, use_sig, body, len);
    FZ_CHECK(rc == 0 || rc == ERR_AUTH);
    FZ_CHECK(api_github_verify(SECRET, NULL, body, len) == ERR_AUTH);
    /* accepted exactly when the signature is the HMAC of these bytes: anything else stops
     * here, before the body is parsed */
    FZ_CHECK((rc == 0) == (strcmp(use_sig, want) == 0));
    if (mode[0] == 'b') {
        FZ_CHECK(rc == ERR_AUTH);
    }
    if (rc != 0) {
        goto out;
    }

    int fresh = -1;
    rc = repos_gh_delivery(repos, delivery, &fresh);
    FZ_CHECK(rc == 0 || rc == ERR_INVALID);
    FZ_CHECK(rc == 0 || fresh == 1);
    if (rc == 0) {
        FZ_CHECK(*delivery && strlen(delivery) < 64 && (fresh == 0 || fresh == 1));
        FZ_CHECK(repos_gh_delivery(repos, delivery, &fresh) == 0 && fresh == 0);
    }
    if (!*event || strlen(event) != event_len) {
        goto out; /* the server refuses a missing header; a header holds no NUL */
    }
    p = json_loadb(body, len, 0, NULL);
    if (json_is_object(p)) {
        check_parse(event, p);
    }
out:
    json_decref(p);
    free(mode);
    free(event);
    free(delivery);
    free(sig_in);
    free(body);
    return 0;
}
