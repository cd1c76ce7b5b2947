/*
 * git_commit.c - the local half of the git module (see git.h): the changed files of a
 * workspace, the refresh of its index after a restore, per-author commits on the session
 * branch, and commit messages.
 *
 * Threads: thread safe for distinct directories; every call opens its own repository.
 */
#include "workspace/git_int.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/xmem.h"

#include <fcntl.h>
#include <git2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- status / commit */

int gitx_changed(const char *dir, const char *shared, json_t **out)
{
    git_repository *repo = NULL;
    git_status_list *list = NULL;
    json_t *arr = json_array();
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = gitxi_open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        goto out;
    }
    git_status_options so;
    git_status_options_init(&so, GIT_STATUS_OPTIONS_VERSION);
    so.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
    so.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS |
               GIT_STATUS_OPT_RENAMES_HEAD_TO_INDEX | GIT_STATUS_OPT_SORT_CASE_SENSITIVELY;
    int grc = git_status_list_new(&list, repo, &so);
    if (grc < 0) {
        rc = gitxi_err(grc, "status");
        goto out;
    }
    size_t n = git_status_list_entrycount(list);
    for (size_t i = 0; i < n; i++) {
        const git_status_entry *e = git_status_byindex(list, i);
        const git_diff_delta *d = e->head_to_index ? e->head_to_index : e->index_to_workdir;
        unsigned s = e->status;
        const char *st = "modified";
        if (s & (GIT_STATUS_WT_NEW | GIT_STATUS_INDEX_NEW)) {
            st = "added";
        } else if (s & (GIT_STATUS_WT_DELETED | GIT_STATUS_INDEX_DELETED)) {
            st = "deleted";
        } else if (s & (GIT_STATUS_WT_RENAMED | GIT_STATUS_INDEX_RENAMED)) {
            st = "renamed";
        } else if (s & (GIT_STATUS_WT_TYPECHANGE | GIT_STATUS_INDEX_TYPECHANGE)) {
            st = "typechange";
        } else if (s == GIT_STATUS_CURRENT || (s & GIT_STATUS_IGNORED)) {
            continue;
        }
        const char *path = d ? (d->new_file.path ? d->new_file.path : d->old_file.path) : NULL;
        if (!path) {
            continue;
        }
        json_array_append_new(arr, json_pack("{s:s, s:s}", "path", path, "status", st));
    }
out:
    git_status_list_free(list);
    git_repository_free(repo);
    if (rc != 0) {
        json_decref(arr);
        arr = NULL;
    }
    *out = arr;
    return rc;
}

/* Stage every change of the working tree (adds, edits, deletions; .gitignore respected)
 * with one status pass that also refreshes the index's stat cache. */
static int stage_changes(git_repository *repo, git_index *idx)
{
    git_status_list *list = NULL;
    git_status_options so;
    git_status_options_init(&so, GIT_STATUS_OPTIONS_VERSION);
    so.show = GIT_STATUS_SHOW_WORKDIR_ONLY;
    so.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS |
               GIT_STATUS_OPT_UPDATE_INDEX;
    int grc = git_status_list_new(&list, repo, &so);
    size_t n = grc == 0 ? git_status_list_entrycount(list) : 0;
    for (size_t i = 0; grc == 0 && i < n; i++) {
        const git_status_entry *e = git_status_byindex(list, i);
        const git_diff_delta *d = e->index_to_workdir;
        if (!d) {
            continue;
        }
        if (e->status & GIT_STATUS_WT_DELETED) {
            grc = git_index_remove_bypath(idx, d->old_file.path);
        } else if (e->status & (GIT_STATUS_WT_NEW | GIT_STATUS_WT_MODIFIED |
                                GIT_STATUS_WT_TYPECHANGE | GIT_STATUS_WT_RENAMED)) {
            grc = git_index_add_bypath(idx, d->new_file.path);
        }
    }
    git_status_list_free(list);
    return grc;
}

int gitx_commit(const char *dir, const char *shared, const char *branch,
                const struct gitx_ident *who, const char *message, char sha[41], int *committed)
{
    return gitx_commit_n(dir, shared, branch, who, message, sha, committed, NULL, NULL);
}

/* Same file as when the index recorded it? Size, mode and mtime equal, and the entry not
 * "racily clean" (mtime before the index file's own mtime: an edit within the same clock
 * tick as the index write could otherwise hide behind equal stat data). */
static int stat_matches(const git_index_entry *e, const struct stat *sb, const struct stat *isb)
{
    if ((uint32_t)sb->st_size != e->file_size || (int32_t)sb->st_mtim.tv_sec != e->mtime.seconds ||
        (e->mtime.nanoseconds && (uint32_t)sb->st_mtim.tv_nsec != e->mtime.nanoseconds)) {
        return 0;
    }
    if (S_ISLNK(sb->st_mode)
            ? e->mode != GIT_FILEMODE_LINK
            : !S_ISREG(sb->st_mode) ||
                  (e->mode != GIT_FILEMODE_BLOB && e->mode != GIT_FILEMODE_BLOB_EXECUTABLE) ||
                  ((sb->st_mode & 0100) != 0) != (e->mode == GIT_FILEMODE_BLOB_EXECUTABLE)) {
        return 0;
    }
    int64_t em = (int64_t)e->mtime.seconds * 1000000000LL + e->mtime.nanoseconds;
    int64_t im = (int64_t)isb->st_mtim.tv_sec * 1000000000LL + isb->st_mtim.tv_nsec;
    return em < im;
}

/* The cheap half of a refresh after a restore (git's core.checkStat=minimal, which libgit2
 * lacks): a restore reproduces contents, sizes and mtimes exactly but gives every file a new
 * inode, ctime and device, which libgit2 takes for a possible change and answers by hashing
 * the file. For entries whose size, mode and mtime still match, copy the new inode/ctime/
 * dev/uid/gid into the index without reading the file. *fixed = entries updated, *left =
 * entries it could not vouch for (changed, racy, missing): only those need a status pass. */
static int restat_index(git_repository *repo, const char *dir, size_t *fixed, size_t *left)
{
    git_index *idx = NULL;
    struct stat isb, sb;
    size_t n = 0, nleft = 0;
    *fixed = 0;
    *left = SIZE_MAX;
    int grc = git_repository_index(&idx, repo);
    if (grc < 0) {
        return gitxi_err(grc, "index");
    }
    char *ipath = xasprintf("%s/.git/index", dir);
    int have = stat(ipath, &isb) == 0;
    free(ipath);
    int dfd = have ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    size_t count = dfd >= 0 ? git_index_entrycount(idx) : 0;
    for (size_t i = 0; i < count && grc == 0; i++) {
        const git_index_entry *e = git_index_get_byindex(idx, i);
        if (!e || GIT_INDEX_ENTRY_STAGE(e) != 0 ||
            fstatat(dfd, e->path, &sb, AT_SYMLINK_NOFOLLOW)) {
            nleft++;
            continue;
        }
        if (!stat_matches(e, &sb, &isb)) {
            nleft++; /* changed or racy: the status pass decides */
            continue;
        }
        if ((uint32_t)sb.st_ino == e->ino &&
            (uint32_t)sb.st_ctim.tv_sec == (uint32_t)e->ctime.seconds &&
            (uint32_t)sb.st_dev == e->dev) {
            continue; /* already fresh */
        }
        git_index_entry c = *e;
        c.ctime.seconds = (int32_t)sb.st_ctim.tv_sec;
        c.ctime.nanoseconds = (uint32_t)sb.st_ctim.tv_nsec;
        c.dev = (uint32_t)sb.st_dev;
        c.ino = (uint32_t)sb.st_ino;
        c.uid = (uint32_t)sb.st_uid;
        c.gid = (uint32_t)sb.st_gid;
        grc = git_index_add(idx, &c);
        n++;
    }
    if (dfd >= 0) {
        close(dfd);
    }
    if (grc == 0 && n > 0) {
        grc = git_index_write(idx);
    }
    git_index_free(idx);
    *fixed = n;
    if (dfd >= 0) {
        *left = nleft;
    }
    return grc < 0 ? gitxi_err(grc, "index restat") : 0;
}

int gitx_refresh_index(const char *dir, const char *shared)
{
    git_repository *repo = NULL;
    git_index *idx = NULL;
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = gitxi_open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        return rc;
    }
    size_t fixed = 0, left = 0;
    rc = restat_index(repo, dir, &fixed, &left); /* then the status pass reads what is left */
    if (rc != 0 || left == 0) {
        git_repository_free(repo); /* every entry vouched for: no status pass (~10k stats) */
        return rc;
    }
    git_status_list *list = NULL;
    git_status_options so;
    git_status_options_init(&so, GIT_STATUS_OPTIONS_VERSION);
    so.show = GIT_STATUS_SHOW_WORKDIR_ONLY;
    so.flags = GIT_STATUS_OPT_UPDATE_INDEX; /* stores fresh stat data of unchanged files */
    int grc = git_status_list_new(&list, repo, &so);
    git_status_list_free(list);
    if (grc < 0) {
        rc = gitxi_err(grc, "index refresh");
    }
    git_index_free(idx);
    git_repository_free(repo);
    return rc;
}

/* The paths a diff touches (new path; the old one of a deletion), at most max, as JSON
 * strings (names that are not UTF-8 are skipped). */
static json_t *diff_paths(git_diff *diff, size_t max)
{
    json_t *arr = json_array();
    size_t n = git_diff_num_deltas(diff);
    for (size_t i = 0; i < n && json_array_size(arr) < max; i++) {
        const git_diff_delta *d = git_diff_get_delta(diff, i);
        const char *p = d->status == GIT_DELTA_DELETED ? d->old_file.path : d->new_file.path;
        json_t *s = p ? json_string(p) : NULL;
        if (s) {
            json_array_append_new(arr, s);
        }
    }
    return arr;
}

int gitx_commit_n(const char *dir, const char *shared, const char *branch,
                  const struct gitx_ident *who, const char *message, char sha[41], int *committed,
                  size_t *files, json_t **paths)
{
    if (paths) {
        *paths = NULL;
    }
    git_repository *repo = NULL;
    git_index *idx = NULL;
    git_reference *head = NULL, *bref = NULL;
    git_commit *parent = NULL;
    git_tree *tree = NULL;
    git_signature *sig = NULL;
    git_oid tree_oid, commit_oid;
    char refname[256];
    int rc = gitx_init(NULL, NULL);
    int grc;
    *committed = 0;
    if (rc == 0) {
        rc = gitxi_valid_branch(branch, refname, sizeof(refname));
    }
    if (rc == 0 && (!who || !who->name || !who->name[0] || !message)) {
        rc = ERR_INVALID;
    }
    if (rc == 0) {
        rc = gitxi_open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        goto out;
    }
    grc = git_repository_index(&idx, repo);
    /* One status pass finds the changes and, with UPDATE_INDEX, stores fresh stat data for
     * unchanged files (stale after a restore or a reset: every later scan would re-read
     * every file); then only the changed paths are staged. */
    if (grc == 0) {
        grc = stage_changes(repo, idx);
    }
    if (grc == 0) {
        grc = git_index_write_tree(&tree_oid, idx);
    }
    if (grc == 0) {
        grc = git_index_write(idx);
    }
    if (grc < 0) {
        rc = gitxi_err(grc, "stage");
        goto out;
    }
    grc = git_repository_head(&head, repo);
    if (grc == 0) {
        grc = git_reference_peel((git_object **)&parent, head, GIT_OBJECT_COMMIT);
        if (grc < 0) {
            rc = gitxi_err(grc, "head commit");
            goto out;
        }
        if (git_oid_equal(git_commit_tree_id(parent), &tree_oid)) {
            goto out; /* nothing changed */
        }
    } else if (grc != GIT_EUNBORNBRANCH && grc != GIT_ENOTFOUND) {
        rc = gitxi_err(grc, "head");
        goto out;
    }
    grc = git_tree_lookup(&tree, repo, &tree_oid);
    if (grc == 0) {
        grc = git_signature_now(&sig, who->name, who->email ? who->email : "");
    }
    if (grc < 0) {
        rc = gitxi_err(grc, "commit setup");
        goto out;
    }
    const git_commit *parents[1] = {parent};
    grc = git_commit_create(&commit_oid, repo, NULL, sig, sig, "UTF-8", message, tree,
                            parent ? 1 : 0, parents);
    if (grc == 0) {
        grc = git_reference_create(&bref, repo, refname, &commit_oid, 1, "sessiond: commit");
    }
    if (grc == 0 && !(head && strcmp(git_reference_name(head), refname) == 0)) {
        grc = git_repository_set_head(repo, refname);
    }
    if (grc < 0) {
        rc = gitxi_err(grc, "commit");
        goto out;
    }
    *committed = 1;
    if (sha) {
        gitxi_oid_hex(&commit_oid, sha);
    }
    if (files || paths) {
        git_diff *diff = NULL;
        git_tree *ptree = NULL;
        if (parent) {
            git_commit_tree(&ptree, parent);
        }
        if (git_diff_tree_to_tree(&diff, repo, ptree, tree, NULL) == 0) {
            if (files) {
                *files = git_diff_num_deltas(diff);
            }
            if (paths) {
                *paths = diff_paths(diff, GITX_PATHS_MAX);
            }
        }
        git_diff_free(diff);
        git_tree_free(ptree);
    }
out:
    git_signature_free(sig);
    git_tree_free(tree);
    git_commit_free(parent);
    git_reference_free(bref);
    git_reference_free(head);
    git_index_free(idx);
    git_repository_free(repo);
    return rc;
}

char *gitx_message(const char *prompt, const struct gitx_ident *coauthor)
{
    struct buf b;
    buf_init(&b, 0);
    const char *p = prompt ? prompt : "";
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') {
        p++;
    }
    size_t first = strcspn(p, "\r\n");
    if (first == 0) {
        buf_puts(&b, "sessiond: agent changes");
    } else if (first <= 72) {
        buf_append(&b, p, first);
    } else {
        /* cut at a UTF-8 boundary */
        size_t cut = 69;
        while (cut > 0 && ((unsigned char)p[cut] & 0xC0) == 0x80) {
            cut--;
        }
        buf_append(&b, p, cut);
        buf_puts(&b, "...");
    }
    size_t plen = strlen(p);
    if (plen > first || first > 72) {
        size_t cap = plen > 4096 ? 4096 : plen;
        while (cap > 0 && cap < plen && ((unsigned char)p[cap] & 0xC0) == 0x80) {
            cap--;
        }
        buf_puts(&b, "\n\nPrompt:\n");
        buf_append(&b, p, cap);
        if (cap < plen) {
            buf_puts(&b, "\n[...]");
        }
    }
    if (coauthor && coauthor->name && coauthor->name[0]) {
        buf_printf(&b, "\n\nCo-authored-by: %s <%s>", coauthor->name,
                   coauthor->email ? coauthor->email : "");
    }
    buf_putc(&b, '\n');
    return buf_detach(&b, NULL);
}
