/*
 * git_diff.c - the diff of a workspace (see git.h gitx_diff): the working tree (index
 * included, untracked files too) against the session's base commit or the tip of the session
 * branch, as unified text per file with line counts, capped while it is generated.
 *
 * What a sandbox wrote is never obeyed: the repository is opened by gitxi_open_repo (our own
 * fixed configuration, so no diff.external, diff.<driver>.textconv, core.pager, core.worktree
 * or core.attributesFile from .git/config; libgit2 runs no external program in any case);
 * symlinks are diffed as links (their target text, read with readlink; core.symlinks=true);
 * FIFOs, sockets and devices are skipped by libgit2's working-tree walk; a file larger than
 * file_cap is never read (shown as binary, "large"); submodules are not opened. The text stops
 * at cap bytes: the files after that are listed without their text or counts.
 *
 * Threads: thread safe; every call opens its own repository. Run in the sessiond-git helper
 * (gitjob.h) by the server, as the sandbox user.
 */
#include "workspace/git_int.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"

#include <git2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The paths listed in one answer, in bytes (the helper's answer must stay under its cap
 * whatever the depth of the tree). */
#define DIFF_NAMES_CAP (1024 * 1024)

/* The text of one file, bounded by what is left of the whole answer's budget. */
struct print_ctx {
    struct buf *text;
    size_t left; /* bytes the whole diff may still take */
    int cut;     /* the budget ran out inside this file */
};

static int print_line(const git_diff_delta *d, const git_diff_hunk *h, const git_diff_line *l,
                      void *arg)
{
    struct print_ctx *c = arg;
    (void)d;
    (void)h;
    int prefixed = l->origin == GIT_DIFF_LINE_CONTEXT || l->origin == GIT_DIFF_LINE_ADDITION ||
                   l->origin == GIT_DIFF_LINE_DELETION;
    size_t need = l->content_len + (prefixed ? 1 : 0);
    if (need > c->left) {
        c->cut = 1;
        return GIT_EUSER; /* stops the print: nothing more of this diff is generated */
    }
    if (prefixed) {
        buf_putc(c->text, l->origin);
    }
    buf_append(c->text, l->content, l->content_len);
    c->left -= need;
    return 0;
}

static const char *status_name(git_delta_t s)
{
    switch (s) {
    case GIT_DELTA_ADDED:
    case GIT_DELTA_UNTRACKED:
        return "added";
    case GIT_DELTA_DELETED:
        return "deleted";
    case GIT_DELTA_RENAMED:
        return "renamed";
    case GIT_DELTA_TYPECHANGE:
        return "typechange";
    default:
        return "modified";
    }
}

/* The commit of a ref name, or NULL if it does not resolve to one. */
static git_commit *commit_of(git_repository *repo, const char *refname)
{
    git_object *o = NULL;
    if (git_revparse_single(&o, repo, refname) != 0) {
        return NULL;
    }
    git_commit *c = NULL;
    if (git_object_peel((git_object **)&c, o, GIT_OBJECT_COMMIT) != 0) {
        c = NULL;
    }
    git_object_free(o);
    return c;
}

/* The tip of the session branch (HEAD while the branch does not exist yet: before the first
 * commit the workspace is on the default branch) and the base: where the session branch left
 * the default branch (its merge base with the first of refs/heads/<base>,
 * refs/sessiond/upstream/<base>, refs/remotes/origin/<base> that resolves), else the tip. */
static int resolve(git_repository *repo, const struct gitx_diff_req *q, git_commit **tip,
                   git_commit **base)
{
    char ref[300];
    *tip = *base = NULL;
    if (q->branch && gitxi_valid_branch(q->branch, ref, sizeof(ref)) == 0) {
        *tip = commit_of(repo, ref);
    }
    if (!*tip) {
        *tip = commit_of(repo, "HEAD");
    }
    if (!*tip) {
        return 0; /* unborn: everything is added */
    }
    static const char *const forms[] = {"refs/heads/%s", "refs/sessiond/upstream/%s",
                                        "refs/remotes/origin/%s"};
    char check[300];
    int ok = !q->against_head && q->base_branch &&
             gitxi_valid_branch(q->base_branch, check, sizeof(check)) == 0;
    for (size_t i = 0; ok && !*base && i < sizeof(forms) / sizeof(forms[0]); i++) {
        snprintf(ref, sizeof(ref), forms[i], q->base_branch);
        git_commit *b = commit_of(repo, ref);
        git_oid mb;
        if (b && git_merge_base(&mb, repo, git_commit_id(*tip), git_commit_id(b)) == 0) {
            git_commit_lookup(base, repo, &mb);
        }
        git_commit_free(b);
    }
    if (!*base) {
        git_commit_dup(base, *tip);
    }
    return 0;
}

static git_diff_options diff_options(const struct gitx_diff_req *q, char **spec)
{
    git_diff_options o;
    git_diff_options_init(&o, GIT_DIFF_OPTIONS_VERSION);
    o.flags = GIT_DIFF_INCLUDE_UNTRACKED | GIT_DIFF_RECURSE_UNTRACKED_DIRS |
              GIT_DIFF_SHOW_UNTRACKED_CONTENT | GIT_DIFF_INCLUDE_TYPECHANGE;
    o.ignore_submodules = GIT_SUBMODULE_IGNORE_ALL; /* never open a nested repository */
    o.max_size = (git_off_t)q->file_cap;            /* larger files are not read */
    if (q->path) {
        spec[0] = (char *)q->path;
        o.pathspec.strings = spec;
        o.pathspec.count = 1;
        o.flags |= GIT_DIFF_DISABLE_PATHSPEC_MATCH; /* a literal path, no glob */
    }
    return o;
}

/* One file's entry: path, status, counts and text (NULL once the budget is spent). */
static json_t *file_entry(git_diff *diff, size_t i, struct print_ctx *c, size_t file_cap)
{
    const git_diff_delta *d = git_diff_get_delta(diff, i);
    git_patch *p = NULL;
    size_t add = 0, del = 0;
    json_t *f = json_pack("{s:s, s:s}", "path", d->new_file.path ? d->new_file.path : "", "status",
                          status_name(d->status));
    if (d->old_file.path && d->new_file.path && strcmp(d->old_file.path, d->new_file.path) != 0) {
        json_object_set_new(f, "old_path", json_string(d->old_file.path));
    }
    if (c->left == 0) {
        json_object_set_new(f, "additions", json_null());
        json_object_set_new(f, "deletions", json_null());
        json_object_set_new(f, "truncated", json_true());
        return f;
    }
    int grc = git_patch_from_diff(&p, diff, i);
    if (grc != 0) {
        /* unreadable (gone, swapped, unsupported size): listed without a text */
        const git_error *e = git_error_last();
        LOG_INFO("git: diff of %s: %s", d->new_file.path ? d->new_file.path : "?",
                 e && e->message ? e->message : "error");
        json_object_set_new(f, "additions", json_null());
        json_object_set_new(f, "deletions", json_null());
        json_object_set_new(f, "binary", json_true());
        json_object_set_new(f, "unreadable", json_true());
        json_object_set_new(f, "truncated", json_false());
        return f;
    }
    /* sizes as the load saw them: the walk's may be a 32-bit index field (4 GiB reads 0) */
    const git_diff_delta *pd = git_patch_get_delta(p);
    int large = (size_t)pd->new_file.size > file_cap || (size_t)pd->old_file.size > file_cap;
    git_patch_line_stats(NULL, &add, &del, p);
    struct buf t;
    buf_init(&t, 0);
    c->text = &t;
    c->cut = 0;
    git_patch_print(p, print_line, c);
    struct buf clean;
    buf_init(&clean, 0);
    util_utf8_sanitize(t.data, t.len, &clean); /* a JSON string must be UTF-8 */
    json_object_set_new(f, "additions", json_integer((json_int_t)add));
    json_object_set_new(f, "deletions", json_integer((json_int_t)del));
    json_object_set_new(f, "binary", json_boolean((pd->flags & GIT_DIFF_FLAG_BINARY) != 0));
    json_object_set_new(f, "large", json_boolean(large));
    json_object_set_new(f, "truncated", json_boolean(c->cut));
    json_object_set_new(f, "diff", json_stringn(clean.data ? clean.data : "", clean.len));
    if (c->cut) {
        c->left = 0;
    }
    buf_free(&clean);
    buf_free(&t);
    git_patch_free(p);
    return f;
}

static void set_sha(json_t *o, const char *key, const git_commit *c)
{
    char hex[41];
    if (!c) {
        json_object_set_new(o, key, json_null());
        return;
    }
    gitxi_oid_hex(git_commit_id(c), hex);
    json_object_set_new(o, key, json_string(hex));
}

int gitx_diff(const char *dir, const char *shared, const struct gitx_diff_req *q, json_t **out)
{
    git_repository *repo = NULL;
    git_commit *tip = NULL, *base = NULL;
    git_tree *tree = NULL;
    git_diff *diff = NULL;
    char *spec[1];
    json_t *files = NULL;
    *out = NULL;
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = gitxi_open_repo(dir, shared, &repo);
    }
    if (rc == 0) {
        rc = resolve(repo, q, &tip, &base);
    }
    if (rc != 0) {
        goto out;
    }
    if (base && git_commit_tree(&tree, base) != 0) {
        rc = gitxi_err(-1, "base tree");
        goto out;
    }
    git_diff_options o = diff_options(q, spec);
    int grc = git_diff_tree_to_workdir_with_index(&diff, repo, tree, &o);
    if (grc < 0) {
        rc = gitxi_err(grc, "diff");
        goto out;
    }
    size_t n = git_diff_num_deltas(diff);
    size_t shown = n < q->max_files ? n : q->max_files;
    struct print_ctx c = {.left = q->cap};
    int64_t adds = 0, dels = 0;
    files = json_array();
    size_t names = 0; /* bytes of paths listed: deep trees have long names */
    for (size_t i = 0; i < shown; i++) {
        const git_diff_delta *d = git_diff_get_delta(diff, i);
        names += (d->new_file.path ? strlen(d->new_file.path) : 0) +
                 (d->old_file.path ? strlen(d->old_file.path) : 0);
        if (names > DIFF_NAMES_CAP) {
            shown = i;
            break;
        }
        json_t *f = file_entry(diff, i, &c, q->file_cap);
        adds += json_integer_value(json_object_get(f, "additions"));
        dels += json_integer_value(json_object_get(f, "deletions"));
        json_array_append_new(files, f);
    }
    int truncated = shown < n || c.left == 0;
    *out = json_pack("{s:s, s:o, s:I, s:I, s:I, s:b}", "against", q->against_head ? "head" : "base",
                     "files", files, "files_total", (json_int_t)n, "additions", (json_int_t)adds,
                     "deletions", (json_int_t)dels, "truncated", truncated);
    files = NULL;
    set_sha(*out, "base", base);
    set_sha(*out, "head", tip);
out:
    json_decref(files);
    git_diff_free(diff);
    git_tree_free(tree);
    git_commit_free(base);
    git_commit_free(tip);
    git_repository_free(repo);
    return rc;
}
