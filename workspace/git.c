/*
 * git.c - libgit2 clone / sync / status / commit / push for workspaces.
 *
 * Threads: libgit2 is initialised once (pthread_once) and is thread safe for distinct
 * repository objects; every function here opens and frees its own. libgit2 errors are
 * per-thread; they are logged here (never with credentials: tokens only travel through the
 * credential callback, never in URLs) and mapped to our codes.
 */

#include "workspace/git.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <git2.h>
#include <git2/sys/config.h>
#include <git2/sys/odb_backend.h>
#include <git2/sys/repository.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_ca_file[512];
static char g_ca_dir[512];
static int g_init_rc;
static int g_no_tls; /* gitx_init_local(): no CA locations (set before the once) */

static void init_once(void)
{
    if (git_libgit2_init() < 0) {
        g_init_rc = ERR_INTERNAL;
        return;
    }
    /* libgit2's safe.directory check guards a user against config files another user planted
     * in a repository. We never read a workspace's config at all (open_repo installs our own),
     * and a workspace is owned by the sandbox uid while the server may be root: the check would
     * only refuse work, never protect. */
    git_libgit2_opts(GIT_OPT_SET_OWNER_VALIDATION, 0);
    /* Host-side git uses no configuration file of the machine either (root's ~/.gitconfig,
     * /etc/gitconfig): what it does must not depend on who set up the host. */
    static const int levels[] = {GIT_CONFIG_LEVEL_SYSTEM, GIT_CONFIG_LEVEL_XDG,
                                 GIT_CONFIG_LEVEL_GLOBAL, GIT_CONFIG_LEVEL_PROGRAMDATA};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, levels[i], "");
    }
    const char *file = g_ca_file[0] ? g_ca_file : NULL;
    const char *dir = g_ca_dir[0] ? g_ca_dir : NULL;
    if ((file || dir) && !g_no_tls) {
        if (git_libgit2_opts(GIT_OPT_SET_SSL_CERT_LOCATIONS, file, dir) < 0) {
            const git_error *e = git_error_last();
            LOG_WARN("git: cannot set the CA locations: %s", e ? e->message : "?");
        }
    }
}

int gitx_init(const char *ca_file, const char *ca_dir)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!g_ca_file[0] && !g_ca_dir[0]) {
        if (ca_file) {
            snprintf(g_ca_file, sizeof(g_ca_file), "%s", ca_file);
        } else if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0) {
            snprintf(g_ca_file, sizeof(g_ca_file), "%s", "/etc/ssl/certs/ca-certificates.crt");
        }
        if (ca_dir) {
            snprintf(g_ca_dir, sizeof(g_ca_dir), "%s", ca_dir);
        } else if (access("/etc/ssl/certs", R_OK) == 0) {
            snprintf(g_ca_dir, sizeof(g_ca_dir), "%s", "/etc/ssl/certs");
        }
    }
    pthread_mutex_unlock(&mu);
    pthread_once(&g_once, init_once);
    return g_init_rc;
}

int gitx_init_local(void)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!g_ca_file[0] && !g_ca_dir[0]) {
        g_no_tls = 1;
    }
    pthread_mutex_unlock(&mu);
    pthread_once(&g_once, init_once);
    return g_init_rc;
}

/* Map a libgit2 error to ours, logging libgit2's message. */
static int gerr(int grc, const char *what)
{
    const git_error *e = git_error_last();
    int rc;
    switch (grc) {
    case GIT_ENOTFOUND:
        rc = ERR_NOT_FOUND;
        break;
    case GIT_EAUTH:
        rc = ERR_AUTH;
        break;
    case GIT_ENONFASTFORWARD:
    case GIT_ECONFLICT:
    case GIT_ELOCKED:
        rc = ERR_CONFLICT;
        break;
    case GIT_EINVALIDSPEC:
        rc = ERR_INVALID;
        break;
    case GIT_ECERTIFICATE:
        rc = ERR_FORBIDDEN;
        break;
    default:
        rc = ERR_IO;
        /* libgit2 reports a 401/403 from HTTP as a generic error with this text */
        if (e && e->message &&
            (strstr(e->message, "authentication") || strstr(e->message, "401"))) {
            rc = ERR_AUTH;
        }
    }
    LOG_WARN("git: %s failed: %s", what, e && e->message ? e->message : "unknown error");
    return rc;
}

/* ---------------------------------------------------------------- credentials */

struct cbctx {
    const struct gitx_cred *cred;
    int attempts;
    int rejected; /* a push_update_reference reported a refusal */
};

static int cred_cb(git_credential **out, const char *url, const char *user_from_url,
                   unsigned int allowed, void *payload)
{
    struct cbctx *c = payload;
    (void)url;
    (void)user_from_url;
    if (!c->cred || !c->cred->password || !(allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT)) {
        git_error_set_str(GIT_ERROR_NET, "authentication required but no credentials");
        return GIT_EAUTH;
    }
    if (c->attempts++ > 0) {
        /* libgit2 asks again after a 401: the token was refused, do not loop */
        git_error_set_str(GIT_ERROR_NET, "authentication refused by the remote");
        return GIT_EAUTH;
    }
    return git_credential_userpass_plaintext_new(
        out, c->cred->username ? c->cred->username : "x-access-token", c->cred->password);
}

static int push_ref_cb(const char *refname, const char *status, void *payload)
{
    struct cbctx *c = payload;
    if (status) {
        LOG_WARN("git: remote refused %s: %s", refname, status);
        c->rejected = 1;
    }
    return 0;
}

/* Set by gitx_cancel_all() at shutdown (any thread); read by the transfer callbacks of every
 * git thread, which stop at their next call. Process-wide like libgit2 itself. */
static atomic_int g_cancel;

void gitx_cancel_all(int on)
{
    atomic_store(&g_cancel, on);
}

int gitx_cancelled(void)
{
    return atomic_load(&g_cancel);
}

static int progress_cb(const git_indexer_progress *stats, void *payload)
{
    (void)stats;
    (void)payload;
    if (atomic_load(&g_cancel)) {
        git_error_set_str(GIT_ERROR_NET, "cancelled: the server is stopping");
        return -1;
    }
    return 0;
}

static void set_callbacks(git_remote_callbacks *cb, struct cbctx *c)
{
    cb->transfer_progress = progress_cb;
    cb->credentials = cred_cb;
    cb->push_update_reference = push_ref_cb;
    cb->payload = c;
}

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
static int own_config(git_repository *repo)
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
    return grc < 0 ? gerr(grc, "config") : 0;
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
    return grc < 0 ? gerr(grc, "object database") : 0;
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
static int open_repo(const char *dir, const char *shared, git_repository **out)
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
        rc = gerr(grc, "open");
        goto out;
    }
    rc = opened_what_we_checked(repo, dir);
    if (rc == 0) {
        rc = own_config(repo);
    }
    if (rc == 0) {
        rc = workspace_odb(repo, shared);
    }
    if (rc == 0) {
        grc = git_repository_set_workdir(repo, dir, 0);
        rc = grc < 0 ? gerr(grc, "workdir") : 0;
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
    return grc < 0 ? gerr(grc, "remote") : 0;
}

/* The remote of every fetch and push: an anonymous remote from the registry's URL, on a
 * repository that carries our configuration only (open_repo, or own_config for a store). */
static int safe_remote(git_repository *repo, const char *url, git_remote **out)
{
    return anon_remote(repo, url, out);
}

static int valid_branch(const char *branch, char *ref, size_t n)
{
    int valid = 0;
    if (!branch || !*branch || strlen(branch) > 200) {
        return ERR_INVALID;
    }
    snprintf(ref, n, "refs/heads/%s", branch);
    if (git_reference_name_is_valid(&valid, ref) < 0 || !valid) {
        return ERR_INVALID;
    }
    return 0;
}

static void oid_hex(const git_oid *oid, char out[41])
{
    git_oid_tostr(out, 41, oid);
}

/* ---------------------------------------------------------------- clone / sync */

int gitx_clone(const char *url, const char *branch, const char *dir, const struct gitx_cred *cred,
               char head[41])
{
    git_repository *repo = NULL;
    git_reference *ref = NULL;
    char refname[256];
    struct cbctx cb = {.cred = cred};
    int rc = gitx_init(NULL, NULL);
    if (rc != 0) {
        return rc;
    }
    rc = valid_branch(branch, refname, sizeof(refname));
    if (rc != 0) {
        return rc;
    }
    git_clone_options o;
    git_clone_options_init(&o, GIT_CLONE_OPTIONS_VERSION);
    o.checkout_branch = branch;
    o.checkout_opts.checkout_strategy = GIT_CHECKOUT_SAFE;
    set_callbacks(&o.fetch_opts.callbacks, &cb);
    o.fetch_opts.proxy_opts.type = GIT_PROXY_NONE;
    int grc = git_clone(&repo, url, dir, &o);
    if (grc < 0) {
        rc = gerr(grc, "clone");
        goto out;
    }
    if (head) {
        grc = git_repository_head(&ref, repo);
        if (grc < 0) {
            rc = gerr(grc, "head");
            goto out;
        }
        oid_hex(git_reference_target(ref), head);
    }
out:
    git_reference_free(ref);
    git_repository_free(repo);
    return rc;
}

int gitx_sync(const char *dir, const char *shared, const char *url, const char *branch,
              const struct gitx_cred *cred, char head[41])
{
    git_repository *repo = NULL;
    git_remote *remote = NULL;
    git_object *target = NULL;
    char refname[256], spec[600], tracking[300];
    struct cbctx cb = {.cred = cred};
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = valid_branch(branch, refname, sizeof(refname));
    }
    if (rc == 0) {
        rc = open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        goto out;
    }
    /* Fetch into a ref of our own namespace so that nothing the agent set up interferes. */
    snprintf(tracking, sizeof(tracking), "refs/sessiond/upstream/%s", branch);
    snprintf(spec, sizeof(spec), "+%s:%s", refname, tracking);
    rc = safe_remote(repo, url, &remote);
    if (rc != 0) {
        goto out;
    }
    git_fetch_options fo;
    git_fetch_options_init(&fo, GIT_FETCH_OPTIONS_VERSION);
    set_callbacks(&fo.callbacks, &cb);
    fo.proxy_opts.type = GIT_PROXY_NONE;
    fo.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
    char *specs[] = {spec};
    git_strarray sa = {specs, 1};
    int grc = git_remote_fetch(remote, &sa, &fo, NULL);
    if (grc < 0) {
        rc = gerr(grc, "fetch");
        goto out;
    }
    grc = git_revparse_single(&target, repo, tracking);
    if (grc < 0) {
        rc = gerr(grc, "fetched branch");
        goto out;
    }
    git_checkout_options co;
    git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
    co.checkout_strategy = GIT_CHECKOUT_FORCE;
    grc = git_reset(repo, target, GIT_RESET_HARD, &co);
    if (grc < 0) {
        rc = gerr(grc, "reset");
        goto out;
    }
    if (head) {
        oid_hex(git_object_id(target), head);
    }
out:
    git_object_free(target);
    git_remote_free(remote);
    git_repository_free(repo);
    return rc;
}

/* An ls-remote: connect, read the advertised refs, disconnect; no object is transferred. The
 * remote is detached (no repository), so no configuration of anyone's (insteadOf, proxies,
 * credential helpers) takes part; transfers go without a proxy, like every fetch here. */
int gitx_remote_head(const char *url, const char *branch, const struct gitx_cred *cred,
                     char head[41])
{
    git_remote *remote = NULL;
    const git_remote_head **refs = NULL;
    size_t n = 0;
    char refname[256];
    struct cbctx cb = {.cred = cred};
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = valid_branch(branch, refname, sizeof(refname));
    }
    if (rc != 0) {
        return rc;
    }
    int grc = git_remote_create_detached(&remote, url);
    if (grc < 0) {
        rc = gerr(grc, "remote");
        goto out;
    }
    git_remote_callbacks rcb;
    git_remote_init_callbacks(&rcb, GIT_REMOTE_CALLBACKS_VERSION);
    set_callbacks(&rcb, &cb);
    git_proxy_options po;
    git_proxy_options_init(&po, GIT_PROXY_OPTIONS_VERSION);
    po.type = GIT_PROXY_NONE;
    grc = git_remote_connect(remote, GIT_DIRECTION_FETCH, &rcb, &po, NULL);
    if (grc == 0) {
        grc = git_remote_ls(&refs, &n, remote);
    }
    if (grc < 0) {
        rc = gerr(grc, "ls-remote");
        goto out;
    }
    rc = ERR_NOT_FOUND;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(refs[i]->name, refname) == 0) {
            oid_hex(&refs[i]->oid, head);
            rc = 0;
            break;
        }
    }
out:
    git_remote_free(remote); /* disconnects */
    return rc;
}

/* ---------------------------------------------------------------- shared object stores */

int gitx_mirror_fetch(const char *gitdir, const char *url, const char *branch,
                      const struct gitx_cred *cred, char head[41])
{
    git_repository *repo = NULL;
    git_remote *remote = NULL;
    git_reference *ref = NULL;
    char refname[256], spec[600];
    struct cbctx cb = {.cred = cred};
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = valid_branch(branch, refname, sizeof(refname));
    }
    if (rc != 0) {
        return rc;
    }
    struct stat sb;
    if (stat(gitdir, &sb) != 0) {
        /* The first fetch is a bare clone, built aside and renamed into place: for a remote
         * on a local path libgit2 then copies (or hard-links) its object files instead of
         * packing every object anew (12 s instead of 2 s for 100 MiB); the fetch below then
         * has nothing left to transfer. */
        char *tmp = xasprintf("%s.tmp", gitdir);
        git_clone_options o;
        git_clone_options_init(&o, GIT_CLONE_OPTIONS_VERSION);
        o.bare = 1;
        o.checkout_branch = branch;
        set_callbacks(&o.fetch_opts.callbacks, &cb);
        o.fetch_opts.proxy_opts.type = GIT_PROXY_NONE;
        o.fetch_opts.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
        util_rm_rf(tmp);
        int crc = git_clone(&repo, url, tmp, &o);
        git_repository_free(repo);
        repo = NULL;
        if (crc < 0) {
            rc = gerr(crc, "clone into the shared store");
        } else if (rename(tmp, gitdir) != 0) {
            LOG_WARN("git: rename %s: %s", tmp, strerror(errno));
            rc = ERR_IO;
        }
        util_rm_rf(tmp);
        free(tmp);
        if (rc != 0) {
            goto out;
        }
    }
    int grc = git_repository_open_bare(&repo, gitdir);
    if (grc < 0) {
        rc = gerr(grc, "shared store");
        goto out;
    }
    rc = own_config(repo);
    if (rc == 0) {
        rc = safe_remote(repo, url, &remote);
    }
    if (rc != 0) {
        goto out;
    }
    snprintf(spec, sizeof(spec), "+%s:%s", refname, refname);
    git_fetch_options fo;
    git_fetch_options_init(&fo, GIT_FETCH_OPTIONS_VERSION);
    set_callbacks(&fo.callbacks, &cb);
    fo.proxy_opts.type = GIT_PROXY_NONE;
    fo.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
    char *specs[] = {spec};
    git_strarray sa = {specs, 1};
    grc = git_remote_fetch(remote, &sa, &fo, NULL);
    if (grc == 0) {
        grc = git_reference_lookup(&ref, repo, refname);
    }
    if (grc < 0) {
        rc = gerr(grc, "fetch into the shared store");
        goto out;
    }
    if (head) {
        oid_hex(git_reference_target(ref), head);
    }
out:
    git_reference_free(ref);
    git_remote_free(remote);
    git_repository_free(repo);
    return rc;
}

int gitx_checkout_shared(const char *dir, const char *shared, const char *url, const char *branch,
                         const char *commit)
{
    git_repository *repo = NULL;
    git_commit *c = NULL;
    git_reference *ref = NULL, *rref = NULL;
    git_config *cfg = NULL;
    git_oid oid;
    char refname[256], key[300];
    FILE *f = NULL;
    char *alt = NULL;
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = valid_branch(branch, refname, sizeof(refname));
    }
    if (rc == 0 && (!shared || shared[0] != '/' || strchr(shared, '\n') || !commit ||
                    git_oid_fromstr(&oid, commit) < 0)) {
        rc = ERR_INVALID;
    }
    if (rc != 0) {
        return rc;
    }
    git_repository_init_options io;
    git_repository_init_options_init(&io, GIT_REPOSITORY_INIT_OPTIONS_VERSION);
    io.flags = GIT_REPOSITORY_INIT_MKPATH | GIT_REPOSITORY_INIT_NO_REINIT;
    io.initial_head = branch;
    int grc = git_repository_init_ext(&repo, dir, &io);
    if (grc < 0) {
        rc = gerr(grc, "init");
        goto out;
    }
    /* What a clone leaves in .git/config: origin and the branch set to track it. Written
     * through the repository just made here (nothing else has had it yet); every later open
     * goes through open_repo, which never reads that file. */
    git_remote *origin = NULL;
    grc = git_remote_create(&origin, repo, "origin", url);
    git_remote_free(origin);
    if (grc == 0) {
        grc = git_repository_config(&cfg, repo);
    }
    if (grc == 0) {
        snprintf(key, sizeof(key), "branch.%s.remote", branch);
        grc = git_config_set_string(cfg, key, "origin");
    }
    if (grc == 0) {
        snprintf(key, sizeof(key), "branch.%s.merge", branch);
        grc = git_config_set_string(cfg, key, refname);
    }
    git_repository_free(repo);
    repo = NULL;
    if (grc < 0) {
        rc = gerr(grc, "shared checkout config");
        goto out;
    }
    /* The file the sandbox's git follows (we never read it back: see workspace_odb). */
    alt = xasprintf("%s/.git/objects/info/alternates", dir);
    f = fopen(alt, "wx");
    if (!f || fprintf(f, "%s\n", shared) < 0 || fclose(f) != 0) {
        LOG_WARN("git: cannot write %s: %s", alt, strerror(errno));
        f = NULL;
        rc = ERR_IO;
        goto out;
    }
    f = NULL;
    rc = open_repo(dir, shared, &repo);
    if (rc != 0) {
        goto out;
    }
    /* The rest of what a clone leaves: origin's tracking ref and the branch. */
    grc = git_commit_lookup(&c, repo, &oid);
    if (grc == 0) {
        snprintf(key, sizeof(key), "refs/remotes/origin/%s", branch);
        grc = git_reference_create(&rref, repo, key, &oid, 1, "sessiond: shared checkout");
    }
    if (grc == 0) {
        grc = git_reference_create(&ref, repo, refname, &oid, 1, "sessiond: shared checkout");
    }
    if (grc == 0) {
        grc = git_repository_set_head(repo, refname);
    }
    if (grc == 0) {
        git_checkout_options co;
        git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
        co.checkout_strategy = GIT_CHECKOUT_FORCE;
        grc = git_checkout_head(repo, &co);
    }
    if (grc < 0) {
        rc = gerr(grc, "shared checkout");
    }
out:
    if (f) {
        fclose(f);
    }
    free(alt);
    git_config_free(cfg);
    git_reference_free(rref);
    git_reference_free(ref);
    git_commit_free(c);
    git_repository_free(repo);
    return rc;
}

int gitx_head(const char *dir, const char *shared, char head[41], char **branch_out)
{
    git_repository *repo = NULL;
    git_reference *ref = NULL;
    int rc = gitx_init(NULL, NULL);
    if (branch_out) {
        *branch_out = NULL;
    }
    if (rc == 0) {
        rc = open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        goto out;
    }
    int grc = git_repository_head(&ref, repo);
    if (grc == GIT_EUNBORNBRANCH || grc == GIT_ENOTFOUND) {
        rc = ERR_NOT_FOUND;
        goto out;
    }
    if (grc < 0) {
        rc = gerr(grc, "head");
        goto out;
    }
    if (head) {
        oid_hex(git_reference_target(ref), head);
    }
    if (branch_out && git_reference_is_branch(ref)) {
        *branch_out = xstrdup(git_reference_shorthand(ref));
    }
out:
    git_reference_free(ref);
    git_repository_free(repo);
    return rc;
}

/* ---------------------------------------------------------------- status / commit */

int gitx_changed(const char *dir, const char *shared, json_t **out)
{
    git_repository *repo = NULL;
    git_status_list *list = NULL;
    json_t *arr = json_array();
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = open_repo(dir, shared, &repo);
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
        rc = gerr(grc, "status");
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
    return gitx_commit_n(dir, shared, branch, who, message, sha, committed, NULL);
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
        return gerr(grc, "index");
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
    return grc < 0 ? gerr(grc, "index restat") : 0;
}

int gitx_refresh_index(const char *dir, const char *shared)
{
    git_repository *repo = NULL;
    git_index *idx = NULL;
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = open_repo(dir, shared, &repo);
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
        rc = gerr(grc, "index refresh");
    }
    git_index_free(idx);
    git_repository_free(repo);
    return rc;
}

int gitx_commit_n(const char *dir, const char *shared, const char *branch,
                  const struct gitx_ident *who, const char *message, char sha[41], int *committed,
                  size_t *files)
{
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
        rc = valid_branch(branch, refname, sizeof(refname));
    }
    if (rc == 0 && (!who || !who->name || !who->name[0] || !message)) {
        rc = ERR_INVALID;
    }
    if (rc == 0) {
        rc = open_repo(dir, shared, &repo);
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
        rc = gerr(grc, "stage");
        goto out;
    }
    grc = git_repository_head(&head, repo);
    if (grc == 0) {
        grc = git_reference_peel((git_object **)&parent, head, GIT_OBJECT_COMMIT);
        if (grc < 0) {
            rc = gerr(grc, "head commit");
            goto out;
        }
        if (git_oid_equal(git_commit_tree_id(parent), &tree_oid)) {
            goto out; /* nothing changed */
        }
    } else if (grc != GIT_EUNBORNBRANCH && grc != GIT_ENOTFOUND) {
        rc = gerr(grc, "head");
        goto out;
    }
    grc = git_tree_lookup(&tree, repo, &tree_oid);
    if (grc == 0) {
        grc = git_signature_now(&sig, who->name, who->email ? who->email : "");
    }
    if (grc < 0) {
        rc = gerr(grc, "commit setup");
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
        rc = gerr(grc, "commit");
        goto out;
    }
    *committed = 1;
    if (sha) {
        oid_hex(&commit_oid, sha);
    }
    if (files) {
        git_diff *diff = NULL;
        git_tree *ptree = NULL;
        if (parent) {
            git_commit_tree(&ptree, parent);
        }
        if (git_diff_tree_to_tree(&diff, repo, ptree, tree, NULL) == 0) {
            *files = git_diff_num_deltas(diff);
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

int gitx_push(const char *dir, const char *shared, const char *url, const char *branch,
              const struct gitx_cred *cred)
{
    git_repository *repo = NULL;
    git_remote *remote = NULL;
    git_reference *ref = NULL;
    char refname[256], spec[600];
    struct cbctx cb = {.cred = cred};
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = valid_branch(branch, refname, sizeof(refname));
    }
    if (rc == 0) {
        rc = open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        goto out;
    }
    int grc = git_reference_lookup(&ref, repo, refname);
    if (grc < 0) {
        rc = grc == GIT_ENOTFOUND ? ERR_NOT_FOUND : gerr(grc, "branch");
        goto out;
    }
    rc = safe_remote(repo, url, &remote);
    if (rc != 0) {
        goto out;
    }
    snprintf(spec, sizeof(spec), "+%s:%s", refname, refname);
    git_push_options po;
    git_push_options_init(&po, GIT_PUSH_OPTIONS_VERSION);
    set_callbacks(&po.callbacks, &cb);
    po.proxy_opts.type = GIT_PROXY_NONE;
    char *specs[] = {spec};
    git_strarray sa = {specs, 1};
    grc = git_remote_push(remote, &sa, &po);
    if (grc < 0) {
        rc = gerr(grc, "push");
        goto out;
    }
    if (cb.rejected) {
        rc = ERR_CONFLICT;
    }
out:
    git_reference_free(ref);
    git_remote_free(remote);
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
