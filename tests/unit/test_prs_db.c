/*
 * test_prs_db.c - the pull_requests table (storage/prs_db.h) and the repositories' `pr`
 * setting: repositories registered before the setting migrate to "off"; a failure reason is
 * reported once until it changes or an attempt succeeds; state changes are reported once;
 * merged/closed counts; changed files merged without duplicates under a cap; the session row
 * of the registry carries its pull request.
 */
#include "common/err.h"
#include "common/util.h"
#include "storage/migrate.h"
#include "storage/prs_db.h"
#include "storage/registry.h"
#include "storage/repos_db.h"
#include "testlib.h"

#include <jansson.h>
#include <sqlite3.h>
#include <string.h>

static char dir[256];
static char path[320];

/* A registry file at schema 4 (before pull requests) with one repository, then opened. */
static struct registry *open_old_reg(void)
{
    snprintf(dir, sizeof(dir), "/tmp/sessiond-test-prs.XXXXXX");
    ASSERT(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/registry.db", dir);
    sqlite3 *db = NULL;
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    for (const struct migration *m = migrations_registry; m->version && m->version <= 4; m++) {
        ASSERT_EQ(sqlite3_exec(db, m->sql, NULL, NULL, NULL), SQLITE_OK);
    }
    ASSERT_EQ(sqlite3_exec(db,
                           "INSERT INTO repos(name,url,created_at,updated_at) "
                           "VALUES('old','https://github.com/acme/old.git',1,1);"
                           "PRAGMA user_version=4",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    struct registry *r = NULL;
    ASSERT_EQ(registry_open(path, 0, &r), 0);
    return r;
}

TEST(existing_repositories_migrate_to_off_new_rows_keep_their_setting)
{
    struct registry *reg = open_old_reg();
    struct repos_db *d = NULL;
    ASSERT_EQ(repos_db_open(reg, &d), 0);
    json_t *row = NULL;
    ASSERT_EQ(repos_db_repo_get(d, "old", &row), 0);
    ASSERT_STREQ(json_string_value(json_object_get(row, "pr")), "off");
    json_object_set_new(row, "pr", json_string("ready"));
    ASSERT_EQ(repos_db_repo_put(d, row, 0, 2), 0);
    json_decref(row);
    ASSERT_EQ(repos_db_repo_get(d, "old", &row), 0);
    ASSERT_STREQ(json_string_value(json_object_get(row, "pr")), "ready");
    json_decref(row);
    repos_db_close(d);
    registry_close(reg);
    util_rm_rf(dir);
}

TEST(failures_once_state_once_counts_files_and_the_session_row)
{
    struct registry *reg = open_old_reg();
    struct prs_db *d = NULL;
    struct pr_rec rec;
    int first = -1, changed = -1;
    ASSERT_EQ(prs_db_open(reg, &d), 0);
    struct session_new sn = {.id = "s_1", .repo = "old", .created_by = "token:a"};
    ASSERT_EQ(registry_session_create(reg, &sn, NULL), 0);

    /* a failure is said once per reason in a row, again after a success */
    ASSERT_EQ(prs_db_failed(d, "s_1", "old", "no_credentials", 10, &first), 0);
    ASSERT_EQ(first, 1);
    ASSERT_EQ(prs_db_failed(d, "s_1", "old", "no_credentials", 11, &first), 0);
    ASSERT_EQ(first, 0);
    ASSERT_EQ(prs_db_failed(d, "s_1", "old", "push_refused", 12, &first), 0);
    ASSERT_EQ(first, 1);
    ASSERT_EQ(prs_db_clear_failed(d, "s_1"), 0);
    ASSERT_EQ(prs_db_failed(d, "s_1", "old", "push_refused", 13, &first), 0);
    ASSERT_EQ(first, 1);

    /* no pull request yet: the session row says null, the counts zero */
    json_t *row = NULL;
    ASSERT_EQ(registry_session_get(reg, "s_1", &row), 0);
    ASSERT(json_is_null(json_object_get(row, "pr")));
    json_decref(row);
    ASSERT_EQ(prs_db_update_state(d, "s_1", PR_MERGED, -1, 20, &changed), ERR_NOT_FOUND);

    /* files: merged without duplicates, capped */
    json_t *p1 = json_pack("[s,s]", "a.c", "b.c");
    json_t *p2 = json_pack("[s,s,s]", "b.c", "c.c", "d.c");
    ASSERT_EQ(prs_db_add_files(d, "s_1", "old", p1, 3, 1), 0);
    ASSERT_EQ(prs_db_add_files(d, "s_1", "old", p2, 3, 1), 0);
    json_decref(p1);
    json_decref(p2);

    struct pr_rec in = {.number = 7, .draft = 1};
    snprintf(in.session_id, sizeof(in.session_id), "s_1");
    snprintf(in.repo, sizeof(in.repo), "old");
    snprintf(in.url, sizeof(in.url), "https://github.com/acme/old/pull/7");
    snprintf(in.head_sha, sizeof(in.head_sha), "%040d", 1);
    snprintf(in.credentials, sizeof(in.credentials), "app");
    ASSERT_EQ(prs_db_created(d, &in, 1000), 0);
    ASSERT_EQ(prs_db_get(d, "s_1", &rec), 0);
    ASSERT_EQ(rec.number, 7);
    ASSERT_EQ(rec.state, PR_OPEN);
    ASSERT_EQ(rec.draft, 1);
    ASSERT_STREQ(rec.failed_reason, ""); /* a success forgets the failure */
    ASSERT_EQ(json_array_size(rec.files), 3);
    ASSERT_STREQ(json_string_value(json_array_get(rec.files, 2)), "c.c");
    prs_rec_clear(&rec);

    char sid[72];
    ASSERT_EQ(prs_db_find_url(d, "https://github.com/acme/old/pull/7", sid), 0);
    ASSERT_STREQ(sid, "s_1");
    json_t *open = NULL;
    ASSERT_EQ(prs_db_list_open(d, 10, &open), 0);
    ASSERT_EQ(json_array_size(open), 1);
    json_decref(open);

    ASSERT_EQ(prs_db_set_ci(d, "s_1", "pending", &changed), 0);
    ASSERT_EQ(changed, 1);
    ASSERT_EQ(prs_db_set_ci(d, "s_1", "pending", &changed), 0);
    ASSERT_EQ(changed, 0);

    ASSERT_EQ(registry_session_get(reg, "s_1", &row), 0);
    json_t *pr = json_object_get(row, "pr");
    ASSERT_EQ(json_integer_value(json_object_get(pr, "number")), 7);
    ASSERT_STREQ(json_string_value(json_object_get(pr, "state")), "open");
    ASSERT_STREQ(json_string_value(json_object_get(pr, "ci_state")), "pending");
    ASSERT(json_is_true(json_object_get(pr, "draft")));
    json_decref(row);

    /* merged once; the time to merge is kept */
    ASSERT_EQ(prs_db_update_state(d, "s_1", PR_MERGED, 0, 61000, &changed), 0);
    ASSERT_EQ(changed, 1);
    ASSERT_EQ(prs_db_update_state(d, "s_1", PR_MERGED, -1, 99000, &changed), 0);
    ASSERT_EQ(changed, 0);
    ASSERT_EQ(prs_db_get(d, "s_1", &rec), 0);
    ASSERT_EQ(rec.merged_at - rec.created_at, 60000);
    ASSERT_EQ(rec.draft, 0);
    prs_rec_clear(&rec);
    ASSERT_EQ(prs_db_list_open(d, 10, &open), 0);
    ASSERT_EQ(json_array_size(open), 0);
    json_decref(open);

    struct prs_counts c;
    ASSERT_EQ(prs_db_counts(d, &c), 0);
    ASSERT_EQ(c.created, 1);
    ASSERT_EQ(c.merged, 1);
    ASSERT_EQ(c.closed, 0);

    enum pr_state st;
    ASSERT_EQ(pr_state_parse("closed", &st), 0);
    ASSERT_EQ(st, PR_CLOSED);
    ASSERT_EQ(pr_state_parse("reopened", &st), ERR_INVALID);

    prs_db_close(d);
    prs_db_close(NULL);
    registry_close(reg);
    util_rm_rf(dir);
}

static const struct test_case tests[] = {
    T(existing_repositories_migrate_to_off_new_rows_keep_their_setting),
    T(failures_once_state_once_counts_files_and_the_session_row),
};
TEST_MAIN(tests)
