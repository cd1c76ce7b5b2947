/*
 * git_int.h - internals shared by the files of the git module (git.c: init, errors, transfer
 * callbacks, clone / sync / shared stores / push; git_open.c: opening a workspace or a store
 * without trusting its .git; git_commit.c: status, index refresh, commits). Never included
 * outside them.
 */
#ifndef SESSIOND_GIT_INT_H
#define SESSIOND_GIT_INT_H

#include "workspace/git.h"

#include <git2.h>
#include <stddef.h>

/** Map a libgit2 error to ours, logging libgit2's message (what names the operation). */
int gitxi_err(int grc, const char *what);
/** refs/heads/<branch> into ref (n bytes) if branch is a valid branch name, else ERR_INVALID. */
int gitxi_valid_branch(const char *branch, char *ref, size_t n);
/** The 40-hex text of oid. */
void gitxi_oid_hex(const git_oid *oid, char out[41]);

/** Replace repo's configuration with ours, before anything (index, refdb, odb) has read it. */
int gitxi_own_config(git_repository *repo);
/** Open the workspace dir; shared (may be NULL) is its repository's shared object store.
 * *out: git_repository_free(). See git_open.c for what is checked and never read. */
int gitxi_open_repo(const char *dir, const char *shared, git_repository **out);
/** The remote of every fetch and push: an anonymous remote from the registry's URL.
 * *out: git_remote_free(). */
int gitxi_safe_remote(git_repository *repo, const char *url, git_remote **out);

#endif
