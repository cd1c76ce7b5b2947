/*
 * git_scan.c - the scan of a branch's unpushed commits for secret values before a push
 * (gitx_scan_branch, workspace/git.h): each commit's message and every file it adds or changes.
 * Opened like every workspace repository (git_open.c): our own configuration, never the
 * workspace's. Threads: any (one repository per call).
 */
#include "workspace/git_int.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/xmem.h"

#include <git2.h>
#include <stdlib.h>
#include <string.h>

/* One commit of gitx_scan_branch: its message, then each file it adds or changes against its
 * first parent (against nothing for a root commit). */
static int scan_commit(git_repository *repo, const git_oid *oid, gitx_scan_fn fn, void *ctx)
{
    git_commit *c = NULL, *parent = NULL;
    git_tree *tree = NULL, *ptree = NULL;
    git_diff *diff = NULL;
    int rc = 0, grc = git_commit_lookup(&c, repo, oid);
    if (grc == 0) {
        grc = git_commit_tree(&tree, c);
    }
    if (grc == 0 && git_commit_parentcount(c) > 0) {
        grc = git_commit_parent(&parent, c, 0);
        if (grc == 0) {
            grc = git_commit_tree(&ptree, parent);
        }
    }
    if (grc == 0) {
        grc = git_diff_tree_to_tree(&diff, repo, ptree, tree, NULL);
    }
    if (grc < 0) {
        rc = gitxi_err(grc, "scan");
        goto out;
    }
    const char *msg = git_commit_message(c);
    rc = msg ? fn(ctx, NULL, msg, strlen(msg)) : 0;
    for (size_t i = 0; rc == 0 && i < git_diff_num_deltas(diff); i++) {
        const git_diff_delta *d = git_diff_get_delta(diff, i);
        git_blob *blob = NULL;
        if (d->status == GIT_DELTA_DELETED || d->new_file.mode == GIT_FILEMODE_COMMIT ||
            git_blob_lookup(&blob, repo, &d->new_file.id) != 0) {
            continue;
        }
        git_object_size_t n = git_blob_rawsize(blob);
        if (n <= ((git_object_size_t)100 << 20)) {
            rc = fn(ctx, d->new_file.path, git_blob_rawcontent(blob), (size_t)n);
        }
        git_blob_free(blob);
    }
out:
    git_diff_free(diff);
    git_tree_free(ptree);
    git_tree_free(tree);
    git_commit_free(parent);
    git_commit_free(c);
    return rc;
}

int gitx_scan_branch(const char *dir, const char *shared, const char *branch, gitx_scan_fn fn,
                     void *ctx)
{
    git_repository *repo = NULL;
    git_revwalk *walk = NULL;
    char refname[256];
    git_oid oid;
    int n = 0, grc;
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = gitxi_valid_branch(branch, refname, sizeof(refname));
    }
    if (rc == 0) {
        rc = gitxi_open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        goto out;
    }
    grc = git_revwalk_new(&walk, repo);
    if (grc == 0) {
        grc = git_revwalk_push_ref(walk, refname);
    }
    if (grc < 0) {
        rc = grc == GIT_ENOTFOUND ? ERR_NOT_FOUND : gitxi_err(grc, "scan");
        goto out;
    }
    /* What the remote has already (as of the last sync) is not sent again. */
    git_revwalk_hide_glob(walk, "refs/remotes/*");
    while (rc == 0 && git_revwalk_next(&oid, walk) == 0) {
        rc = ++n > 10000 ? ERR_TOO_LARGE : scan_commit(repo, &oid, fn, ctx);
    }
out:
    git_revwalk_free(walk);
    git_repository_free(repo);
    return rc;
}
