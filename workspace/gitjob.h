/*
 * gitjob.h - the git operations on a workspace (head, changed files, commit, index refresh,
 * sync, push), each run in a helper process, build/sessiond-git, that holds only its pipes and
 * has dropped root before libgit2 touches the workspace.
 *
 * Why: a workspace is written by an untrusted agent, and libgit2 follows paths (symlinked
 * refs/, logs/, objects/xx) as whoever runs it. gitx_* (git.h) never obey the workspace's
 * config; this is the second wall: a bug or a path trick in that code can then write only
 * where the sandbox user could already write, the workspace itself.
 *
 * The helper (gitjob_serve) reads one JSON request on stdin and writes one JSON answer on
 * stdout. It is started by posix_spawn with an empty environment (the server's holds tokens)
 * and no descriptor but 0, 1, 2; push credentials travel in the request, never in argv or the
 * environment. As root it first makes a private mount namespace in which the whole host tree
 * is read-only, binds the workspace (opened O_NOFOLLOW) read-write and the shared object store
 * read-only under a private tmpfs, then drops to cfg.uid/cfg.gid (the sandbox user) with
 * no_new_privs, and runs the gitx_* operation on the staged paths. Exception: a push into a
 * repository on this machine (a path or file:// URL) writes that repository's files, which are
 * the server's: that job keeps root, confined to the workspace and that repository (everything
 * else read-only, no devices). Not root: no namespace, no uid to drop to; the operation still
 * runs in the helper with gitx_*'s own protections.
 *
 * Every function here has the contract of its gitx_* namesake in git.h. ERR_UNAVAILABLE if the
 * helper cannot be started, ERR_INTERNAL if it died or answered nonsense, ERR_CANCELLED after
 * gitx_cancel_all(1) for a sync or a push (the helper is killed; local jobs run to the end).
 * Thread safe: each call spawns its own helper.
 */
#ifndef SESSIOND_GITJOB_H
#define SESSIOND_GITJOB_H

#include "workspace/git.h"

#include <jansson.h>
#include <stddef.h>

struct redact_set;

/** How helpers are run. Borrowed strings. */
struct gitjob_cfg {
    const char *bin;     /* the helper program (gitjob_default_bin()) */
    int uid, gid;        /* the user the helper becomes when started as root; -1: stays root
                            (no sandbox user: the process backend) */
    const char *ca_file; /* HTTPS CA bundle for sync/push, or NULL */
    /* > 0: one uid per sandbox (sbx_config.uid_lo..uid_hi). A workspace whose directory
     * belongs to a uid of this range is worked on as, and chowned to, that uid instead of
     * uid/gid above (which then own only workspaces no sandbox holds). */
    int owner_lo, owner_hi;
};

/** The helper's path: $SESSIOND_GIT_BIN, else sessiond-git next to the running program (or
 * one directory up, for unit tests in build/tests/). Caller frees. */
char *gitjob_default_bin(void);

int gitjob_head(const struct gitjob_cfg *c, const char *dir, const char *shared, char head[41],
                char **branch_out);
int gitjob_changed(const struct gitjob_cfg *c, const char *dir, const char *shared, json_t **out);
/** gitx_diff in the helper, as the sandbox user. ERR_INTERNAL also when it ran past its deadline
 * (a read the sandbox made block). */
int gitjob_diff(const struct gitjob_cfg *c, const char *dir, const char *shared,
                const struct gitx_diff_req *q, json_t **out);
/** gitx_commit_n in the helper; *paths (may be NULL) as there. */
int gitjob_commit_n(const struct gitjob_cfg *c, const char *dir, const char *shared,
                    const char *branch, const struct gitx_ident *who, const char *message,
                    char sha[41], int *committed, size_t *files, json_t **paths);
int gitjob_refresh_index(const struct gitjob_cfg *c, const char *dir, const char *shared);
int gitjob_sync(const struct gitjob_cfg *c, const char *dir, const char *shared, const char *url,
                const char *branch, const struct gitx_cred *cred, char head[41]);
/** gitx_ff in the helper (remote and local as there, filled on a refusal too). */
int gitjob_ff(const struct gitjob_cfg *c, const char *dir, const char *shared, const char *url,
              const char *branch, const struct gitx_cred *cred, char remote[41], char local[41],
              int *moved);
/** What a push scan found: the secret's name and the file it is in ("" for a commit
 * message). */
struct gitjob_blocked {
    char secret[72];
    char path[512];
};
/** Push branch. scan (may be NULL) holds secrets the commits being pushed must not contain:
 * the helper first walks them (gitx_scan_branch) and, if a commit message or a file it adds or
 * changes holds any form of any value, pushes nothing and returns ERR_UNPROCESSABLE with
 * *blocked filled in (blocked may be NULL). The values travel to the helper in its request
 * pipe, like cred, never in argv or the environment. */
int gitjob_push(const struct gitjob_cfg *c, const char *dir, const char *shared, const char *url,
                const char *branch, const struct gitx_cred *cred, const struct redact_set *scan,
                struct gitjob_blocked *blocked);

/** Give the tree dir to cfg's uid:gid (files the server wrote there as root: a clone, a
 * restore). The helper walks it by descriptors (openat O_NOFOLLOW|O_DIRECTORY from the
 * parent's descriptor, fchownat AT_SYMLINK_NOFOLLOW), never through a symlink, never onto
 * another file system, skipping files with other links, at most 128 directories deep; it runs
 * as uid:gid (not root) with CAP_CHOWN and CAP_DAC_READ_SEARCH only, in the read-only
 * namespace where only dir is writable. A no-op without a sandbox user (uid <= 0). */
int gitjob_chown(const struct gitjob_cfg *c, const char *dir);

/** In a sanitizer build the server may hand the helper an unnamed report file as this
 * descriptor (gitjob.c, san_open); the helper's main makes it the sanitizer report
 * descriptor. Never open in a release build. */
#define GITJOB_REPORT_FD 3

/** The helper's main: one request from in_fd, one answer to out_fd. Returns the exit status. */
int gitjob_serve(int in_fd, int out_fd);

#endif
