/*
 * git.c - libgit2 clone / sync / status / commit / push for workspaces.
 *
 * Threads: libgit2 is initialised once (pthread_once) and is thread safe for distinct
 * repository objects; every function here opens and frees its own. libgit2 errors are
 * per-thread; they are logged here (never with credentials: tokens only travel through the
 * credential callback, never in URLs) and mapped to our codes.
 *
 * This file: libgit2's initialisation, the error mapping, the transfer callbacks (credentials,
 * cancellation) and the operations that talk to a remote or build a checkout (clone, sync,
 * shared stores, push). How a repository is opened without trusting its .git is in
 * git_open.c; status and commits are in git_commit.c.
 */

#include "workspace/git_int.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"

#include <errno.h>
#include <git2.h>
#include <pthread.h>
#include <stdatomic.h>
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
     * in a repository. We never read a workspace's config at all (gitxi_open_repo installs our
     * own), and a workspace is owned by the sandbox uid while the server may be root: the check
     * would only refuse work, never protect. */
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
int gitxi_err(int grc, const char *what)
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

int gitxi_valid_branch(const char *branch, char *ref, size_t n)
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

void gitxi_oid_hex(const git_oid *oid, char out[41])
{
    git_oid_tostr(out, 41, oid);
}

/* ---------------------------------------------------------------- clone / sync */

/* Fetch the one refspec spec through remote the way every fetch of ours does: our callbacks
 * (credentials, cancellation), no proxy, no tags. A libgit2 code. */
static int fetch_spec(git_remote *remote, char *spec, struct cbctx *cb)
{
    git_fetch_options fo;
    git_fetch_options_init(&fo, GIT_FETCH_OPTIONS_VERSION);
    set_callbacks(&fo.callbacks, cb);
    fo.proxy_opts.type = GIT_PROXY_NONE;
    fo.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
    char *specs[] = {spec};
    git_strarray sa = {specs, 1};
    return git_remote_fetch(remote, &sa, &fo, NULL);
}

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
    rc = gitxi_valid_branch(branch, refname, sizeof(refname));
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
        rc = gitxi_err(grc, "clone");
        goto out;
    }
    if (head) {
        grc = git_repository_head(&ref, repo);
        if (grc < 0) {
            rc = gitxi_err(grc, "head");
            goto out;
        }
        gitxi_oid_hex(git_reference_target(ref), head);
    }
out:
    git_reference_free(ref);
    git_repository_free(repo);
    return rc;
}

/* Open dir's repository and fetch branch of url into refs/sessiond/upstream/<branch>: a ref of
 * our own namespace, so that nothing the agent set up interferes. *repo: the caller frees it
 * (also on failure); refname (256 bytes) and tracking (300): the branch's ref and where it was
 * fetched. */
static int fetch_upstream(const char *dir, const char *shared, const char *url, const char *branch,
                          const struct gitx_cred *cred, git_repository **repo, char *refname,
                          char *tracking)
{
    git_remote *remote = NULL;
    char spec[600];
    struct cbctx cb = {.cred = cred};
    int rc = gitx_init(NULL, NULL);
    if (rc == 0) {
        rc = gitxi_valid_branch(branch, refname, 256);
    }
    if (rc == 0) {
        rc = gitxi_open_repo(dir, shared, repo);
    }
    if (rc == 0) {
        snprintf(tracking, 300, "refs/sessiond/upstream/%s", branch);
        snprintf(spec, sizeof(spec), "+%s:%s", refname, tracking);
        rc = gitxi_safe_remote(*repo, url, &remote);
    }
    if (rc == 0) {
        int grc = fetch_spec(remote, spec, &cb);
        rc = grc < 0 ? gitxi_err(grc, "fetch") : 0;
    }
    git_remote_free(remote);
    return rc;
}

int gitx_sync(const char *dir, const char *shared, const char *url, const char *branch,
              const struct gitx_cred *cred, char head[41])
{
    git_repository *repo = NULL;
    git_object *target = NULL;
    char refname[256], tracking[300];
    int rc = fetch_upstream(dir, shared, url, branch, cred, &repo, refname, tracking);
    if (rc != 0) {
        goto out;
    }
    int grc = git_revparse_single(&target, repo, tracking);
    if (grc < 0) {
        rc = gitxi_err(grc, "fetched branch");
        goto out;
    }
    git_checkout_options co;
    git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
    co.checkout_strategy = GIT_CHECKOUT_FORCE;
    grc = git_reset(repo, target, GIT_RESET_HARD, &co);
    if (grc < 0) {
        rc = gitxi_err(grc, "reset");
        goto out;
    }
    if (head) {
        gitxi_oid_hex(git_object_id(target), head);
    }
out:
    git_object_free(target);
    git_repository_free(repo);
    return rc;
}

/* Move the session branch (and, when HEAD is on it, the working tree) from local to remote,
 * which the caller has checked is a descendant. The checkout is SAFE: a change of the
 * workspace's own that the new commits would overwrite stops it before anything moved. */
static int ff_to(git_repository *repo, const char *refname, git_reference *local,
                 const git_oid *remote)
{
    git_object *target = NULL;
    git_reference *head = NULL, *moved = NULL;
    int rc = 0;
    int grc = git_object_lookup(&target, repo, remote, GIT_OBJECT_COMMIT);
    if (grc < 0) {
        rc = gitxi_err(grc, "fetched commit");
        goto out;
    }
    int on_branch =
        git_repository_head(&head, repo) == 0 && strcmp(git_reference_name(head), refname) == 0;
    if (on_branch) {
        git_checkout_options co;
        git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
        co.checkout_strategy = GIT_CHECKOUT_SAFE;
        grc = git_checkout_tree(repo, target, &co);
        if (grc < 0) {
            rc = grc == GIT_ECONFLICT ? ERR_UNPROCESSABLE : gitxi_err(grc, "checkout");
            goto out;
        }
    }
    grc = git_reference_set_target(&moved, local, remote, "sessiond: fast-forward");
    if (grc < 0) {
        rc = gitxi_err(grc, "update branch");
    }
out:
    git_reference_free(moved);
    git_reference_free(head);
    git_object_free(target);
    return rc;
}

int gitx_ff(const char *dir, const char *shared, const char *url, const char *branch,
            const struct gitx_cred *cred, char remote_sha[41], char local_sha[41], int *moved)
{
    git_repository *repo = NULL;
    git_reference *local = NULL, *fetched = NULL;
    char refname[256], tracking[300];
    *moved = 0;
    remote_sha[0] = local_sha[0] = 0;
    int rc = fetch_upstream(dir, shared, url, branch, cred, &repo, refname, tracking);
    if (rc != 0) {
        goto out;
    }
    int grc = git_reference_lookup(&fetched, repo, tracking);
    if (grc == 0) {
        grc = git_reference_lookup(&local, repo, refname);
    }
    if (grc < 0) {
        rc = gitxi_err(grc, "fetch");
        goto out;
    }
    const git_oid *r_oid = git_reference_target(fetched);
    const git_oid *l_oid = git_reference_target(local);
    if (!r_oid || !l_oid) {
        rc = ERR_INVALID; /* a symbolic session branch: not ours to move */
        goto out;
    }
    gitxi_oid_hex(r_oid, remote_sha);
    gitxi_oid_hex(l_oid, local_sha);
    if (git_oid_equal(r_oid, l_oid) || git_graph_descendant_of(repo, l_oid, r_oid) == 1) {
        goto out; /* nothing new there, or only what the next push publishes */
    }
    if (git_graph_descendant_of(repo, r_oid, l_oid) != 1) {
        rc = ERR_CONFLICT; /* both sides have commits the other lacks */
        goto out;
    }
    rc = ff_to(repo, refname, local, r_oid);
    *moved = rc == 0;
out:
    git_reference_free(fetched);
    git_reference_free(local);
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
        rc = gitxi_valid_branch(branch, refname, sizeof(refname));
    }
    if (rc != 0) {
        return rc;
    }
    int grc = git_remote_create_detached(&remote, url);
    if (grc < 0) {
        rc = gitxi_err(grc, "remote");
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
        rc = gitxi_err(grc, "ls-remote");
        goto out;
    }
    rc = ERR_NOT_FOUND;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(refs[i]->name, refname) == 0) {
            gitxi_oid_hex(&refs[i]->oid, head);
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
        rc = gitxi_valid_branch(branch, refname, sizeof(refname));
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
            rc = gitxi_err(crc, "clone into the shared store");
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
        rc = gitxi_err(grc, "shared store");
        goto out;
    }
    rc = gitxi_own_config(repo);
    if (rc == 0) {
        rc = gitxi_safe_remote(repo, url, &remote);
    }
    if (rc != 0) {
        goto out;
    }
    snprintf(spec, sizeof(spec), "+%s:%s", refname, refname);
    grc = fetch_spec(remote, spec, &cb);
    if (grc == 0) {
        grc = git_reference_lookup(&ref, repo, refname);
    }
    if (grc < 0) {
        rc = gitxi_err(grc, "fetch into the shared store");
        goto out;
    }
    if (head) {
        gitxi_oid_hex(git_reference_target(ref), head);
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
        rc = gitxi_valid_branch(branch, refname, sizeof(refname));
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
        rc = gitxi_err(grc, "init");
        goto out;
    }
    /* What a clone leaves in .git/config: origin and the branch set to track it. Written
     * through the repository just made here (nothing else has had it yet); every later open
     * goes through gitxi_open_repo, which never reads that file. */
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
        rc = gitxi_err(grc, "shared checkout config");
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
    rc = gitxi_open_repo(dir, shared, &repo);
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
        rc = gitxi_err(grc, "shared checkout");
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
        rc = gitxi_open_repo(dir, shared, &repo);
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
        rc = gitxi_err(grc, "head");
        goto out;
    }
    if (head) {
        gitxi_oid_hex(git_reference_target(ref), head);
    }
    if (branch_out && git_reference_is_branch(ref)) {
        *branch_out = xstrdup(git_reference_shorthand(ref));
    }
out:
    git_reference_free(ref);
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
        rc = gitxi_valid_branch(branch, refname, sizeof(refname));
    }
    if (rc == 0) {
        rc = gitxi_open_repo(dir, shared, &repo);
    }
    if (rc != 0) {
        goto out;
    }
    int grc = git_reference_lookup(&ref, repo, refname);
    if (grc < 0) {
        rc = grc == GIT_ENOTFOUND ? ERR_NOT_FOUND : gitxi_err(grc, "branch");
        goto out;
    }
    rc = gitxi_safe_remote(repo, url, &remote);
    if (rc != 0) {
        goto out;
    }
    /* Never forced: a published session branch is only ever fast-forwarded (a pull request
     * and its reviewers keep every commit they saw); the remote rejects anything else. */
    snprintf(spec, sizeof(spec), "%s:%s", refname, refname);
    git_push_options po;
    git_push_options_init(&po, GIT_PUSH_OPTIONS_VERSION);
    set_callbacks(&po.callbacks, &cb);
    po.proxy_opts.type = GIT_PROXY_NONE;
    char *specs[] = {spec};
    git_strarray sa = {specs, 1};
    grc = git_remote_push(remote, &sa, &po);
    if (grc < 0) {
        rc = gitxi_err(grc, "push");
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
