/*
 * git.h - the git operations of sessiond, on libgit2 (never the git CLI): clone at a branch
 * head, sync (fetch + hard reset), changed files, per-author commits on the session branch,
 * push.
 *
 * Prefix gitx_: libgit2 owns the git_ namespace.
 *
 * Security rules (a workspace is written by an untrusted agent):
 * - Fetch and push go through an *anonymous* remote built from the URL the caller passes (the
 *   repository registry's), created with GIT_REMOTE_CREATE_SKIP_INSTEADOF so that
 *   url.*.insteadOf in the workspace's .git/config cannot redirect it, and with the
 *   repository's config replaced by an empty one for the network operation (no http.proxy,
 *   remote.*, credential helpers...). Credentials come only from the caller.
 * - A workspace's .git must be a real directory inside it, without `commondir`; otherwise
 *   ERR_FORBIDDEN. `objects/info/alternates` (which could point the host-side process at
 *   another session's repository) is refused too, unless the caller passes `shared`: the
 *   objects directory of the repository's shared object store (below). The file's content is
 *   then never read on the host: the object database is built from the workspace's own
 *   .git/objects plus `shared`, whatever the agent wrote into the file.
 *
 * Shared object stores. Images share one object store per repository (a bare repository,
 * fetched into by gitx_mirror_fetch, written by the host only); a workspace made by
 * gitx_checkout_shared (and everything restored from it) has no copy of those objects, only
 * `.git/objects/info/alternates` naming the store's objects directory by its absolute path,
 * which the sandbox sees read-only at the same path. Objects the workspace creates (commits,
 * fetched packs) go to its own .git/objects. `shared` parameters below: that objects
 * directory, or NULL for a self-contained workspace (whose alternates file is then refused).
 * - HTTPS: the CA location is set explicitly at init (Debian's libgit2 uses mbedTLS, which
 *   has no default trust store).
 *
 * Thread safety: every function is thread safe for distinct directories (libgit2 is
 * initialised once; each call opens its own repository handle). Two calls on the same
 * directory at once are the caller's problem (the session serializes them).
 */
#ifndef SESSIOND_GITX_H
#define SESSIOND_GITX_H

#include <jansson.h>
#include <stddef.h>

/** Credentials for an HTTPS remote: a token is sent as the password of username
 * ("x-access-token" for GitHub app and user tokens). Borrowed strings. */
struct gitx_cred {
    const char *username;
    const char *password;
};

/** A commit identity. Borrowed strings; name must be non-empty. */
struct gitx_ident {
    const char *name;
    const char *email;
};

/** Initialise libgit2 once. ca_file / ca_dir may be NULL: then the system bundle
 * (/etc/ssl/certs/ca-certificates.crt, /etc/ssl/certs) is used when present. Safe to call
 * more than once (the first call wins). */
int gitx_init(const char *ca_file, const char *ca_dir);

/** gitx_init() for a process that never talks HTTPS (the sessiond-git helper's local
 * operations): the CA locations are not loaded, which costs ~100 ms (the TLS library parses
 * the whole system bundle at once). Only the first initialisation of a process counts. */
int gitx_init_local(void);

/** Clone url into dir (must not exist or be empty) with branch checked out.
 * head (may be NULL) gets the 40-hex commit id. ERR_NOT_FOUND if the branch does not
 * exist, ERR_AUTH on refused credentials, ERR_IO otherwise. */
int gitx_clone(const char *url, const char *branch, const char *dir, const struct gitx_cred *cred,
               char head[41]);

/** Fetch branch from url and hard-reset the checked-out branch of dir to it (untracked
 * files stay). head (may be NULL) gets the new commit id. */
int gitx_sync(const char *dir, const char *shared, const char *url, const char *branch,
              const struct gitx_cred *cred, char head[41]);

/** Fetch branch from url and fast-forward the local branch to it: its ref, and the working
 * tree when HEAD is on it (a SAFE checkout: the workspace's own changes stay; one the new
 * commits would overwrite stops it before anything moved: ERR_UNPROCESSABLE). Nothing moves
 * when the local branch already has the remote's commits (*moved 0). ERR_CONFLICT when each
 * side has commits the other lacks. remote_sha and local_sha are filled once both are known.
 * Never a merge, never forced. */
int gitx_ff(const char *dir, const char *shared, const char *url, const char *branch,
            const struct gitx_cred *cred, char remote_sha[41], char local_sha[41], int *moved);

/** The commit id branch points at on url now (a ls-remote: nothing is fetched or written).
 * ERR_NOT_FOUND if the remote has no such branch; errors as gitx_clone otherwise. */
int gitx_remote_head(const char *url, const char *branch, const struct gitx_cred *cred,
                     char head[41]);

/** Fetch branch from url into the bare repository gitdir (created if missing) as
 * refs/heads/<branch>: the shared object store of a repository. Only what the store lacks is
 * transferred; objects are never deleted (see docs/repos.md). head (may be NULL) gets the
 * fetched commit id. Callers serialize fetches into one store; readers may run meanwhile
 * (packs appear complete, under their final name, or not at all). */
int gitx_mirror_fetch(const char *gitdir, const char *url, const char *branch,
                      const struct gitx_cred *cred, char head[41]);

/** Make dir (must not exist or be empty) a workspace at commit (40 hex, which must be in the
 * store) on branch, without a copy of the objects: .git/objects/info/alternates names shared
 * (an absolute objects directory), remote origin = url, refs/remotes/origin/<branch> and the
 * branch tracking it, as a clone leaves them; the files are checked out. */
int gitx_checkout_shared(const char *dir, const char *shared, const char *url, const char *branch,
                         const char *commit);

/** The commit id of HEAD (ERR_NOT_FOUND on an unborn branch) and, if branch_out is not NULL,
 * the short name of the checked-out branch (caller frees; NULL when detached). */
int gitx_head(const char *dir, const char *shared, char head[41], char **branch_out);

/** Changed files of the working tree against HEAD (untracked included, ignored excluded):
 * *out = [{"path":"a.c","status":"modified|added|deleted|renamed|typechange"}]. */
int gitx_changed(const char *dir, const char *shared, json_t **out);

/** What gitx_diff compares and how much it may say. Borrowed strings. */
struct gitx_diff_req {
    const char *branch;      /* the session branch (its tip; HEAD while it does not exist) */
    const char *base_branch; /* the repository's default branch, or NULL */
    int against_head;        /* 1: against the tip (the uncommitted part); 0: against the base */
    const char *path;        /* one file (a literal path), or NULL for all */
    size_t cap;              /* bytes of diff text at most, all files together */
    size_t file_cap;         /* a file larger than this is not read (shown as binary, large) */
    size_t max_files;        /* files listed at most */
    unsigned deadline_s;     /* the helper gives up after this many seconds (0: its default) */
};

/** The working tree of dir (index and untracked files included) against the base commit of
 * the session (the merge base of q->branch with q->base_branch) or, with q->against_head, the
 * tip of q->branch. Nothing in .git/config is obeyed, nothing is run, symlinks are diffed as
 * links, special files are skipped, the text stops at q->cap (see git_diff.c). *out =
 * {against, base, head, files:[{path, old_path?, status, additions, deletions, binary, large,
 * truncated, diff}], files_total, additions, deletions, truncated}; caller decrefs. */
int gitx_diff(const char *dir, const char *shared, const struct gitx_diff_req *q, json_t **out);

/** Stage every change (adds, edits, deletions; .gitignore respected) and commit it on
 * refs/heads/<branch> with who as author and committer, then make that branch HEAD (the
 * working tree is untouched). *committed = 0 and no commit when nothing changed.
 * sha (may be NULL) gets the new commit id. ERR_INVALID for a bad branch name. */
int gitx_commit(const char *dir, const char *shared, const char *branch,
                const struct gitx_ident *who, const char *message, char sha[41], int *committed);

/** At most this many paths in gitx_commit_n's *paths. */
#define GITX_PATHS_MAX 300
/** gitx_commit() that also reports how many files the commit changed (*files, may be NULL)
 * and which (*paths, may be NULL: a new JSON array of at most GITX_PATHS_MAX paths, caller
 * decrefs; NULL when nothing was committed). */
int gitx_commit_n(const char *dir, const char *shared, const char *branch,
                  const struct gitx_ident *who, const char *message, char sha[41], int *committed,
                  size_t *files, json_t **paths);

/** Refresh the stat data of the index entries (after a restore: new inodes and ctimes make
 * libgit2 and git re-read every file until the index is rewritten). Entries whose size, mode
 * and mtime still match (a restore keeps them) get the new inode/ctime without a read; only
 * the rest is hashed. */
int gitx_refresh_index(const char *dir, const char *shared);

/** Push refs/heads/<branch> of dir to the same branch at url, never forced: only a
 * fast-forward of what the remote has (after a rollback behind a pushed commit the remote
 * refuses it). ERR_AUTH on refused credentials, ERR_CONFLICT if the remote refused the
 * update. */
int gitx_push(const char *dir, const char *shared, const char *url, const char *branch,
              const struct gitx_cred *cred);

/** on = 1: every clone/fetch/push in progress or started later fails (server shutdown). */
void gitx_cancel_all(int on);

/** 1 after gitx_cancel_all(1): work about to start or waiting should give up. */
int gitx_cancelled(void);

/** A commit message from a prompt: first line (<= 72 chars) as subject, the prompt (capped
 * at 4 KiB) as body, and a "Co-authored-by: Name <email>" trailer when coauthor is not NULL.
 * Caller frees. */
char *gitx_message(const char *prompt, const struct gitx_ident *coauthor);

/** Called with each commit message (path NULL) and each added or changed file (its path and
 * contents) of the commits gitx_scan_branch walks; non-zero stops the walk and is returned. */
typedef int (*gitx_scan_fn)(void *ctx, const char *path, const void *data, size_t n);
/** Walk the commits of branch that no refs/remotes/ ref reaches (what a push of the branch
 * sends), newest first, at most 10000 of them, and show fn every commit message and the new
 * contents of every file each one adds or changes (files over 100 MiB are skipped: no forge
 * takes them). ERR_NOT_FOUND if the branch does not exist, ERR_TOO_LARGE past 10000 commits. */
int gitx_scan_branch(const char *dir, const char *shared, const char *branch, gitx_scan_fn fn,
                     void *ctx);

#endif
