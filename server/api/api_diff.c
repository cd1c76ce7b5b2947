/*
 * api_diff.c - GET /v1/sessions/{id}/diff: the unified diff of a session's workspace against
 * its base commit (?against=head: the uncommitted part), with counts per file, capped; ?path=
 * for one file. The work is repos_diff's (in the sessiond-git helper); this file does access
 * control and the query.
 *
 * Threads: HTTP pool threads. The helper answers in tens of milliseconds for a workspace of
 * ten thousand files; it is bounded by its own deadline.
 */
#include "server/api/api_diff.h"

#include "common/err.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/auth.h"
#include "sandbox/sbx.h"
#include "server/app.h"
#include "server/config.h"
#include "workspace/repos.h"

#include <stdlib.h>
#include <string.h>

#define DIFF_CAP       (2 * 1024 * 1024) /* bytes of diff text in one answer */
#define DIFF_FILE_CAP  (1024 * 1024)     /* a larger file is not read: binary, large */
#define DIFF_MAX_FILES 5000

/* ?against=base|head and ?path=, checked like the files endpoint's path. */
static int diff_query(struct req *r, struct repos_diff_opts *o)
{
    const char *against = req_query(r, "against");
    const char *path = req_query(r, "path");
    const char *raw = req_raw_uri(r);
    if (against && strcmp(against, "base") != 0 && strcmp(against, "head") != 0) {
        return req_fail(r, ERR_INVALID, "against must be \"base\" or \"head\"");
    }
    o->against_head = against && strcmp(against, "head") == 0;
    if (path && raw && strcasestr(raw, "%00")) {
        return req_fail(r, ERR_INVALID, "the path contains a NUL byte");
    }
    if (path && (!*path || sbx_path_check(path, strlen(path)) != 0 || path[0] == '/')) {
        return req_fail(r, ERR_INVALID,
                        "path must be relative to the workspace, without '..' components");
    }
    o->path = path;
    return 0;
}

int api_diff(struct req *r)
{
    const char *sid = req_param(r, "id");
    struct repos_diff_opts o = {
        .cap = DIFF_CAP, .file_cap = DIFF_FILE_CAP, .max_files = DIFF_MAX_FILES};
    json_t *out = NULL;
    struct app *app = req_app(r);
    int rc = api_session_access(r, sid, AUTH_READ, NULL);
    if (rc || (rc = diff_query(r, &o))) {
        return rc;
    }
    if (!app->repos) {
        return req_fail(r, ERR_UNAVAILABLE, "the repository layer is not running");
    }
    char *ws = xasprintf("%s/workspaces/%s", app->cfg->data_dir, sid);
    rc = repos_diff(app->repos, sid, ws, &o, &out);
    free(ws);
    if (rc == ERR_NOT_FOUND) {
        return req_fail(r, rc, "session %s has no repository", sid);
    }
    if (rc == ERR_CONFLICT) {
        return req_fail(r, rc, "session %s has no workspace yet", sid);
    }
    if (rc != 0) {
        return req_fail(r, rc, "diff failed: %s", err_str(rc));
    }
    return req_reply_json(r, 200, out);
}
