/*
 * git_open.c - opening a workspace (or a shared store) for host-side git without trusting
 * anything in its .git (see git.h): the checks of the git dir, the fixed in-memory
 * configuration that replaces .git/config, the object database built by hand (never from
 * .git/objects/info/alternates), the check that libgit2 opened what was checked, and the
 * anonymous remote of every fetch and push.
 *
 * Threads: thread safe; every call works on its own repository object.
 */
#include "workspace/git_int.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"

#include <git2.h>
#include <git2/sys/config.h>
#include <git2/sys/odb_backend.h>
#include <git2/sys/repository.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- repository checks */

/* The workspace's .git must be a plain directory of its own (see git.h). An alternates file is
 * allowed only when the caller names the shared store (allow_alternates): its content is then
 * never read here (see workspace_odb). */
static int check_gitdir(const char *dir, int allow_alternates)
{
    struct stat sb;
    char *p = xasprintf("%s/.git", dir);
    int rc = 0;
    if (lstat(p, &sb) != 0) {
        rc = ERR_NOT_FOUND;
        goto out;
    }
    if (!S_ISDIR(sb.st_mode)) {
        LOG_WARN("git: %s is not a directory (gitfile or symlink): refused", p);
        rc = ERR_FORBIDDEN;
        goto out;
    }
    static const char *const bad[] = {"commondir", "objects/info/alternates", NULL};
    for (int i = 0; bad[i]; i++) {
        if (allow_alternates && strcmp(bad[i], "objects/info/alternates") == 0) {
            continue;
        }
        char *q = xasprintf("%s/%s", p, bad[i]);
        int exists = lstat(q, &sb) == 0;
        free(q);
        if (exists) {
            LOG_WARN("git: %s/.git has %s: refused", dir, bad[i]);
            rc = ERR_FORBIDDEN;
            goto out;
        }
    }
    static const char *const dirs[] = {"objects", "refs", NULL};
    for (int i = 0; dirs[i]; i++) {
        char *q = xasprintf("%s/%s", p, dirs[i]);
        int ok = lstat(q, &sb) == 0 && S_ISDIR(sb.st_mode);
        free(q);
        if (!ok) {
            LOG_WARN("git: %s/.git/%s is not a directory: refused", dir, dirs[i]);
            rc = ERR_FORBIDDEN;
            goto out;
        }
    }
out:
    free(p);
    return rc;
}

/* ---------------------------------------------------------------- our own configuration */

/* The only configuration host-side git ever sees for a workspace or a store: a fixed, read-only
 * in-memory table. Whatever .git/config says (core.worktree, core.hooksPath, include.path,
 * filter drivers, url.*.insteadOf, a user.name for reflog lines) is never read. Reflogs are
 * off (core.logAllRefUpdates=false): a reflog is a file named by a ref, appended as root with
 * text the repository chose, and nothing of ours reads them. Keys are normalised (lower case
 * section and name), as libgit2 asks its backends for them. */
static const char *const g_own_config[][2] = {
    {"core.bare", "false"},       {"core.filemode", "true"},
    {"core.ignorecase", "false"}, {"core.logallrefupdates", "false"},
    {"core.symlinks", "true"},
};
#define OWN_CONFIG_N (sizeof(g_own_config) / sizeof(g_own_config[0]))

struct own_iter {
    git_config_iterator parent;
    size_t i;
    git_config_entry e;
};

static void own_entry_free(git_config_entry *e)
{
    free(e);
}

static int own_open(git_config_backend *b, git_config_level_t level, const git_repository *repo)
{
    (void)b;
    (void)level;
    (void)repo;
    return 0;
}

static int own_get(git_config_backend *b, const char *key, git_config_entry **out)
{
    (void)b;
    for (size_t i = 0; i < OWN_CONFIG_N; i++) {
        if (strcmp(key, g_own_config[i][0]) == 0) {
            git_config_entry *e = xcalloc(1, sizeof(*e));
            e->name = g_own_config[i][0];
            e->value = g_own_config[i][1];
            e->level = GIT_CONFIG_LEVEL_LOCAL;
            e->free = own_entry_free;
            *out = e;
            return 0;
        }
    }
    return GIT_ENOTFOUND;
}

static int own_readonly(void)
{
    git_error_set_str(GIT_ERROR_CONFIG, "sessiond: the configuration is read-only");
    return -1;
}

static int own_set(git_config_backend *b, const char *key, const char *value)
{
    (void)b;
    (void)key;
    (void)value;
    return own_readonly();
}

static int own_set_multivar(git_config_backend *b, const char *name, const char *re, const char *v)
{
    (void)b;
    (void)name;
    (void)re;
    (void)v;
    return own_readonly();
}

static int own_del(git_config_backend *b, const char *key)
{
    (void)b;
    (void)key;
    return own_readonly();
}

static int own_del_multivar(git_config_backend *b, const char *key, const char *re)
{
    (void)b;
    (void)key;
    (void)re;
    return own_readonly();
}

static int own_iter_next(git_config_entry **out, git_config_iterator *it)
{
    struct own_iter *o = (struct own_iter *)it;
    if (o->i >= OWN_CONFIG_N) {
        return GIT_ITEROVER;
    }
    memset(&o->e, 0, sizeof(o->e));
    o->e.name = g_own_config[o->i][0];
    o->e.value = g_own_config[o->i][1];
    o->e.level = GIT_CONFIG_LEVEL_LOCAL;
    o->i++;
    *out = &o->e;
    return 0;
}

static void own_iter_free(git_config_iterator *it)
{
    free(it);
}

static int own_iterator(git_config_iterator **out, git_config_backend *b)
{
    struct own_iter *o = xcalloc(1, sizeof(*o));
    o->parent.backend = b;
    o->parent.next = own_iter_next;
    o->parent.free = own_iter_free;
    *out = &o->parent;
    return 0;
}

static int own_lock(git_config_backend *b)
{
    (void)b;
    return 0;
}

static int own_unlock(git_config_backend *b, int success)
{
    (void)b;
    (void)success;
    return 0;
}

static void own_free(git_config_backend *b)
{
    free(b);
}

static git_config_backend *own_backend(void);

static int own_snapshot(git_config_backend **out, git_config_backend *b)
{
    (void)b;
    *out = own_backend();
    (*out)->readonly = 1;
    return 0;
}

static git_config_backend *own_backend(void)
{
    git_config_backend *b = xcalloc(1, sizeof(*b));
    git_config_init_backend(b, GIT_CONFIG_BACKEND_VERSION);
    b->open = own_open;
    b->get = own_get;
    b->set = own_set;
    b->set_multivar = own_set_multivar;
    b->del = own_del;
    b->del_multivar = own_del_multivar;
    b->iterator = own_iterator;
    b->snapshot = own_snapshot;
    b->lock = own_lock;
    b->unlock = own_unlock;
    b->free = own_free;
    return b;
}

/* Replace repo's configuration with ours, before anything (index, refdb, odb) has read it. */
int gitxi_own_config(git_repository *repo)
{
    git_config *cfg = NULL;
    git_config_backend *b = own_backend();
    int grc = git_config_new(&cfg);
    if (grc == 0) {
        grc = git_config_add_backend(cfg, b, GIT_CONFIG_LEVEL_LOCAL, repo, 0);
        b = grc == 0 ? NULL : b; /* owned by cfg once added */
    }
    if (grc == 0) {
        git_repository_set_config(repo, cfg);
    }
    if (b) {
        b->free(b);
    }
    git_config_free(cfg); /* the repository holds its own reference */
    return grc < 0 ? gitxi_err(grc, "config") : 0;
}

/* Give repo (the workspace dir) an object database made of its own .git/objects (loose objects
 * first, as libgit2 does, then packs) plus, when shared is not NULL, the shared store's objects
 * directory as an alternate. Built by hand, for every workspace, so that the host never reads
 * .git/objects/info/alternates, which the agent can rewrite: only the sandbox's git follows that
 * file, and inside the sandbox it can reach nothing but the store bound there read-only. The
 * alternate is read-only for libgit2 as well: writes (fetched packs, commits) go to the
 * workspace's own objects. */
static int workspace_odb(git_repository *repo, const char *shared)
{
    git_odb *odb = NULL;
    git_odb_backend *loose = NULL, *pack = NULL;
    char *objs = xasprintf("%sobjects", git_repository_path(repo)); /* path ends with '/' */
    int grc = git_odb_new(&odb);
    if (grc == 0) {
        grc = git_odb_backend_loose(&loose, objs, -1, 0, 0, 0);
    }
    if (grc == 0) {
        grc = git_odb_add_backend(odb, loose, 1);
        if (grc < 0) {
            loose->free(loose);
        }
    }
    if (grc == 0) {
        grc = git_odb_backend_pack(&pack, objs);
    }
    if (grc == 0) {
        grc = git_odb_add_backend(odb, pack, 2);
        if (grc < 0) {
            pack->free(pack);
        }
    }
    if (grc == 0 && shared) {
        grc = git_odb_add_disk_alternate(odb, shared); /* a missing store adds nothing */
    }
    if (grc == 0) {
        git_repository_set_odb(repo, odb);
    }
    git_odb_free(odb); /* the repository holds its own reference */
    free(objs);
    return grc < 0 ? gitxi_err(grc, "object database") : 0;
}

/* Did libgit2 open the directory we checked? It resolves symlinks when it opens, and the
 * sandbox may have swapped .git for a symlink, or added a `commondir`, after check_gitdir:
 * the repository must be <realpath of dir>/.git/ and be its own common dir. */
static int opened_what_we_checked(git_repository *repo, const char *dir)
{
    char real[PATH_MAX];
    if (!realpath(dir, real)) {
        return ERR_NOT_FOUND;
    }
    char *want = xasprintf("%s/.git/", strcmp(real, "/") == 0 ? "" : real);
    const char *got = git_repository_path(repo);
    const char *common = git_repository_commondir(repo);
    int ok = got && strcmp(got, want) == 0 && common && strcmp(common, got) == 0;
    if (!ok) {
        LOG_WARN("git: %s/.git opened as %s (common dir %s): refused", dir, got ? got : "?",
                 common ? common : "?");
    }
    free(want);
    return ok ? 0 : ERR_FORBIDDEN;
}

/* Open the workspace dir; shared (may be NULL) is its repository's shared object store.
 * Nothing in the workspace's .git decides what is opened or how: the git dir is opened as a
 * bare repository (libgit2 then reads no config, so no core.worktree, no gitfile), gets our
 * configuration and an object database of our making, and dir is set as its working tree. */
int gitxi_open_repo(const char *dir, const char *shared, git_repository **out)
{
    git_repository *repo = NULL;
    char *gitdir = xasprintf("%s/.git", dir);
    *out = NULL;
    int rc = check_gitdir(dir, shared != NULL);
    if (rc != 0) {
        goto out;
    }
    int grc = git_repository_open_bare(&repo, gitdir);
    if (grc < 0) {
        rc = gitxi_err(grc, "open");
        goto out;
    }
    rc = opened_what_we_checked(repo, dir);
    if (rc == 0) {
        rc = gitxi_own_config(repo);
    }
    if (rc == 0) {
        rc = workspace_odb(repo, shared);
    }
    if (rc == 0) {
        grc = git_repository_set_workdir(repo, dir, 0);
        rc = grc < 0 ? gitxi_err(grc, "workdir") : 0;
    }
    if (rc == 0) {
        *out = repo;
        repo = NULL;
    }
out:
    git_repository_free(repo);
    free(gitdir);
    return rc;
}

static int anon_remote(git_repository *repo, const char *url, git_remote **out)
{
    git_remote_create_options o;
    git_remote_create_options_init(&o, GIT_REMOTE_CREATE_OPTIONS_VERSION);
    o.repository = repo;
    o.name = NULL; /* anonymous */
    o.flags = GIT_REMOTE_CREATE_SKIP_INSTEADOF | GIT_REMOTE_CREATE_SKIP_DEFAULT_FETCHSPEC;
    int grc = git_remote_create_with_opts(out, url, &o);
    return grc < 0 ? gitxi_err(grc, "remote") : 0;
}

/* The remote of every fetch and push: an anonymous remote from the registry's URL, on a
 * repository that carries our configuration only (gitxi_open_repo, or gitxi_own_config for a
 * store). */
int gitxi_safe_remote(git_repository *repo, const char *url, git_remote **out)
{
    return anon_remote(repo, url, out);
}
