/*
 * prs_db.h - the pull request of each session (registry.db table pull_requests,
 * migrations/registry/0006_pull_requests.sql): what sessiond opened for it on GitHub, its
 * state as last known (open, merged, closed; draft; combined CI state; the head it was last
 * pushed at), and the last failure to open it (so that pr.failed is said once).
 *
 * One row per session. A row is created by the first attempt (prs_db_failed or
 * prs_db_created) and kept after the session ends: the rows are the adoption figures
 * (created, merged, time to merge, repository).
 *
 * Who writes what: the repository layer (workspace/pr.c) creates the pull request and records
 * pushes (prs_db_created, prs_db_pushed, prs_db_set_draft, prs_db_failed); whatever follows
 * GitHub afterwards (a webhook, a poller) records what GitHub says with prs_db_update_state
 * and prs_db_set_ci, finding the session with prs_db_find_url or listing prs_db_list_open.
 *
 * Thread safe: statements run on the registry's connection under its lock (as repos_db.h).
 */
#ifndef SESSIOND_PRS_DB_H
#define SESSIOND_PRS_DB_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct prs_db;
struct registry;

/** The states of a pull request; names in one place (pr_state_name / pr_state_parse). */
enum pr_state { PR_OPEN, PR_MERGED, PR_CLOSED };
/** "open", "merged", "closed" (static); NULL out of range. */
const char *pr_state_name(enum pr_state s);
/** The state named s: 0, or ERR_INVALID. */
int pr_state_parse(const char *s, enum pr_state *out);

/** A session's row. Strings are "" when unknown (number 0: no pull request yet). */
struct pr_rec {
    char session_id[72];
    char repo[72];
    int64_t number;
    char url[512];
    char api_url[512];
    char node_id[128];
    enum pr_state state;
    int draft;
    char ci_state[16]; /* pending | success | failure | error | "" */
    char head_sha[41];
    char title[300];
    char credentials[8];                                  /* user | app | token */
    int64_t created_at, updated_at, merged_at, closed_at; /* epoch ms, 0 = not yet */
    char failed_reason[300];                              /* "" unless the last attempt failed */
    json_t *files; /* the changed paths (a new reference: prs_rec_clear) */
};
/** Release rec->files. */
void prs_rec_clear(struct pr_rec *rec);

/** Bind to reg (migrated; must outlive it). *out: prs_db_close(). */
int prs_db_open(struct registry *reg, struct prs_db **out);
void prs_db_close(struct prs_db *d);

/** The row of session sid. ERR_NOT_FOUND. */
int prs_db_get(struct prs_db *d, const char *sid, struct pr_rec *out);

/** The pull request of sid was opened (state open, failure cleared). Fields of rec used:
 * session_id, repo, number, url, api_url, node_id, draft, head_sha, title, credentials. */
int prs_db_created(struct prs_db *d, const struct pr_rec *rec, int64_t now_ms);
/** The session branch was pushed at head (40 hex) and the pull request's body updated. */
int prs_db_pushed(struct prs_db *d, const char *sid, const char *head, int64_t now_ms);
/** The draft flag changed (draft <-> ready for review). */
int prs_db_set_draft(struct prs_db *d, const char *sid, int draft, int64_t now_ms);
/** Merge paths (a JSON array of strings) into the row's changed files, capped at max entries;
 * creates the row (with repo) if needed. */
int prs_db_add_files(struct prs_db *d, const char *sid, const char *repo, json_t *paths, size_t max,
                     int64_t now_ms);
/** An attempt failed with reason. *first = 1 if the row did not already hold this reason (the
 * caller then says pr.failed), 0 if it did (said already). Creates the row if needed. */
int prs_db_failed(struct prs_db *d, const char *sid, const char *repo, const char *reason,
                  int64_t now_ms, int *first);
/** An attempt succeeded: forget the last failure. */
int prs_db_clear_failed(struct prs_db *d, const char *sid);

/** What GitHub says of the pull request of sid: open, merged (merged_at = at_ms) or closed
 * (closed_at = at_ms); draft < 0 leaves the flag. *changed = 1 if the state changed (the
 * caller then says pr.merged / pr.closed). ERR_NOT_FOUND if sid has no pull request. */
int prs_db_update_state(struct prs_db *d, const char *sid, enum pr_state st, int draft,
                        int64_t at_ms, int *changed);
/** The combined check state (pending | success | failure | error, or NULL) of sid's pull
 * request at head (may be NULL: any). *changed = 1 if it changed. */
int prs_db_set_ci(struct prs_db *d, const char *sid, const char *ci_state, int *changed);
/** The session whose pull request has html url: sid (>= 72 bytes). ERR_NOT_FOUND. */
int prs_db_find_url(struct prs_db *d, const char *url, char *sid);
/** The sessions whose pull request is open, oldest first, at most limit: *out = a JSON array
 * of {session_id, repo, number, url, api_url, head_sha} (caller decrefs). */
int prs_db_list_open(struct prs_db *d, int limit, json_t **out);

/** Counts over every row: pull requests created, merged and closed (unmerged). */
struct prs_counts {
    int64_t created, merged, closed;
};
int prs_db_counts(struct prs_db *d, struct prs_counts *out);

/** The public JSON of a row, as GET /v1/sessions/{id} shows it: {number, url, state, draft,
 * ci_state, head_sha, created_at, merged_at} (null when rec has no number). New reference. */
json_t *prs_rec_json(const struct pr_rec *rec);

#endif
