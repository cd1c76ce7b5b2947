/*
 * test_pr_hook.c - repos_gh_parse (workspace/repos.h): what a verified GitHub webhook payload
 * asks for, read without a database: pull request state changes, the CI state of check suites
 * and statuses, comments that mention sessiond (only a person's, only on a pull request, and
 * trusted only for owners, members and collaborators), and everything else ignored.
 */
#include "workspace/repos.h"
#include "testlib.h"

#include <jansson.h>
#include <string.h>

static json_t *js(const char *text)
{
    json_t *p = json_loads(text, 0, NULL);
    ASSERT(p != NULL);
    return p;
}

static void pull_request_close_merge_reopen(void)
{
    struct gh_hook h;
    json_t *p = js("{\"action\":\"closed\",\"pull_request\":{\"html_url\":\"https://github.com/a/"
                   "b/pull/1\",\"merged\":true,\"draft\":false}}");
    ASSERT_EQ(repos_gh_parse("pull_request", p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_PR_STATE);
    ASSERT_STREQ(h.state, "merged");
    ASSERT_STREQ(h.pr_url, "https://github.com/a/b/pull/1");
    ASSERT_EQ(h.draft, 0);
    json_decref(p);
    p = js("{\"action\":\"reopened\",\"pull_request\":{\"merged\":true}}");
    ASSERT_EQ(repos_gh_parse("pull_request", p, NULL, &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_PR_STATE);
    ASSERT_STREQ(h.state, "open");
    ASSERT(h.pr_url == NULL);
    ASSERT_EQ(h.draft, -1);
    json_decref(p);
    p = js("{\"action\":\"synchronize\",\"pull_request\":{}}");
    ASSERT_EQ(repos_gh_parse("pull_request", p, NULL, &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    json_decref(p);
}

static void check_suites_and_statuses_give_a_ci_state(void)
{
    struct gh_hook h;
    json_t *p = js("{\"check_suite\":{\"status\":\"completed\",\"conclusion\":\"skipped\","
                   "\"head_sha\":\"abc\",\"pull_requests\":[{\"number\":3}]},"
                   "\"repository\":{\"html_url\":\"https://github.com/a/b\"}}");
    ASSERT_EQ(repos_gh_parse("check_suite", p, NULL, &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_CI);
    ASSERT_STREQ(h.state, "success");
    ASSERT_STREQ(h.sha, "abc");
    ASSERT_STREQ(h.repo_url, "https://github.com/a/b");
    ASSERT_EQ(json_array_size(h.suite_prs), 1);
    json_decref(p);
    p = js("{\"check_suite\":{\"status\":\"in_progress\"}}");
    ASSERT_EQ(repos_gh_parse("check_suite", p, NULL, &h), 0);
    ASSERT_STREQ(h.state, "pending");
    json_decref(p);
    p = js("{\"sha\":\"abc\",\"state\":\"error\"}");
    ASSERT_EQ(repos_gh_parse("status", p, NULL, &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_CI);
    ASSERT_STREQ(h.state, "error");
    json_decref(p);
    p = js("{\"sha\":\"abc\",\"state\":\"exploded\"}");
    ASSERT_EQ(repos_gh_parse("status", p, NULL, &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    json_decref(p);
}

static void comments_need_a_person_a_pull_request_and_the_mention(void)
{
    struct gh_hook h;
    const char *fmt = "{\"action\":\"created\",\"issue\":{\"html_url\":\"https://github.com/a/b/"
                      "pull/1\"%s},\"comment\":{\"body\":\"hi @sessiond fix it\",\"user\":{"
                      "\"type\":\"%s\"},\"author_association\":\"%s\"}}";
    char buf[512];
    snprintf(buf, sizeof buf, fmt, ",\"pull_request\":{}", "User", "MEMBER");
    json_t *p = js(buf);
    ASSERT_EQ(repos_gh_parse("issue_comment", p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_COMMENT);
    ASSERT_EQ(h.trusted, 1);
    ASSERT_STREQ(h.pr_url, "https://github.com/a/b/pull/1");
    ASSERT_EQ(repos_gh_parse("issue_comment", p, NULL, &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    ASSERT_EQ(repos_gh_parse("issue_comment", p, "@other", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    json_decref(p);
    snprintf(buf, sizeof buf, fmt, ",\"pull_request\":{}", "User", "CONTRIBUTOR");
    p = js(buf);
    ASSERT_EQ(repos_gh_parse("issue_comment", p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_COMMENT);
    ASSERT_EQ(h.trusted, 0);
    json_decref(p);
    snprintf(buf, sizeof buf, fmt, ",\"pull_request\":{}", "Bot", "OWNER");
    p = js(buf);
    ASSERT_EQ(repos_gh_parse("issue_comment", p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    json_decref(p);
    snprintf(buf, sizeof buf, fmt, "", "User", "OWNER"); /* an issue, not a pull request */
    p = js(buf);
    ASSERT_EQ(repos_gh_parse("issue_comment", p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    json_decref(p);
}

static void other_events_and_non_objects_are_ignored(void)
{
    struct gh_hook h;
    json_t *p = js("{\"zen\":\"hi\",\"action\":\"closed\"}");
    ASSERT_EQ(repos_gh_parse("ping", p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    ASSERT_EQ(repos_gh_parse(NULL, p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    json_decref(p);
    p = js("[1]");
    ASSERT_EQ(repos_gh_parse("status", p, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    ASSERT_EQ(repos_gh_parse("status", NULL, "@sessiond", &h), 0);
    ASSERT_EQ(h.kind, GH_HOOK_IGNORE);
    json_decref(p);
}

static const struct test_case tests[] = {
    T(pull_request_close_merge_reopen),
    T(check_suites_and_statuses_give_a_ci_state),
    T(comments_need_a_person_a_pull_request_and_the_mention),
    T(other_events_and_non_objects_are_ignored),
};
TEST_MAIN(tests)
