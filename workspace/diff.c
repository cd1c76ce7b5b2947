/*
 * diff.c - the diff of a session's workspace for the API and the events (repos.h repos_diff,
 * repos_diff_file): which commits to compare (the session branch and the repository's default
 * branch, from the registry), computed by the sessiond-git helper as the sandbox user
 * (gitjob_diff): no git code reads the workspace as root, nothing in its .git is obeyed.
 *
 * Threads: thread safe; each call runs its own helper. A diff may run while the agent writes:
 * it then shows a state of the files between two writes, as `git diff` would.
 */
#include "workspace/workspace_int.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/repos_db.h"
#include "workspace/gitjob.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* One text from the per-file texts of the helper's answer (which then drops them): the API
 * answers the unified diff once, with the counts per file beside it. */
static void join_texts(json_t *d)
{
    struct buf b;
    size_t i;
    json_t *f;
    buf_init(&b, 0);
    json_array_foreach(json_object_get(d, "files"), i, f)
    {
        const char *t = json_string_value(json_object_get(f, "diff"));
        if (t) {
            buf_append(&b, t, json_string_length(json_object_get(f, "diff")));
        }
        json_object_del(f, "diff");
    }
    json_object_set_new(d, "diff", json_stringn(b.data ? b.data : "", b.len));
    buf_free(&b);
}

int repos_diff(struct repos *r, const char *session_id, const char *workspace,
               const struct repos_diff_opts *o, json_t **out)
{
    json_t *row = NULL, *repo = NULL;
    char *shared = NULL;
    struct stat sb;
    *out = NULL;
    if (!r || !util_valid_id(session_id)) {
        return ERR_NOT_FOUND;
    }
    int rc = repos__session_row(r, session_id, &row);
    if (rc != 0) {
        return rc; /* no repository: no git, no diff */
    }
    if (stat(workspace, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        rc = ERR_CONFLICT; /* not prepared yet */
        goto out;
    }
    const char *name = json_string_value(json_object_get(row, "repo"));
    const char *base_branch = NULL;
    if (name && repos__repo_load(r, name, &repo) == 0) {
        base_branch = json_string_value(json_object_get(repo, "default_branch"));
    }
    shared = repos__shared_if_any(r, name);
    struct gitx_diff_req q = {
        .branch = json_string_value(json_object_get(row, "branch")),
        .base_branch = base_branch,
        .against_head = o->against_head,
        .path = o->path,
        .cap = o->cap,
        .file_cap = o->file_cap,
        .max_files = o->max_files,
        .deadline_s = o->deadline_s,
    };
    rc = gitjob_diff(&r->git, workspace, shared, &q, out);
    if (rc == 0 && !o->per_file) {
        join_texts(*out);
    }
out:
    free(shared);
    json_decref(repo);
    json_decref(row);
    return rc;
}

int repos_diff_file(struct repos *rp, const char *sid, const struct repos_diff_opts *o,
                    json_t **out)
{
    *out = NULL;
    struct repos *r = repos__hook_enter(rp);
    if (!r) {
        return ERR_UNAVAILABLE;
    }
    if (!o || !o->path || !util_valid_id(sid)) {
        repos__hook_leave(r);
        return ERR_INVALID;
    }
    struct repos_diff_opts q = *o;
    q.against_head = 1;
    q.per_file = 1;
    char *ws = repos__default_workspace(r, sid);
    int rc = repos_diff(r, sid, ws, &q, out);
    free(ws);
    repos__hook_leave(r);
    return rc;
}
