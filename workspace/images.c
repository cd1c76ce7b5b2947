/*
 * images.c - repository images: a build (fetch into the shared object store, check out, run
 * the setup commands in a sandbox, snapshot into the image store), the build queue and its
 * builder thread, the pruning of old images.
 *
 * Threads: builds run on the builder thread in order (inline with no_threads); the running
 * build's sandbox is published in r->build_sbx (r->lock) so that a shutdown can stop it.
 */
#include "workspace/workspace_int.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/egress/egress.h"
#include "sandbox/sbx.h"
#include "sandbox/wsdisk.h"
#include "sandbox/sbx_egress.h"
#include "storage/registry.h"
#include "storage/repos_db.h"
#include "storage/store.h"
#include "workspace/git.h"
#include "workspace/gitjob.h"
#include "workspace/snap/snap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int repos_images(struct repos *r, const char *name, json_t **out)
{
    json_t *repo = NULL, *arr = NULL;
    *out = NULL;
    int rc = repos__repo_load(r, name, &repo);
    json_decref(repo);
    if (rc != 0) {
        return rc;
    }
    rc = repos_db_image_list(r->db, name, &arr);
    *out = json_pack("{s:o}", "images", arr);
    return rc;
}

/* The latest ready image of repo: id and snapshot id (buffers of 64). ERR_NOT_FOUND. */
int repos__latest_image(struct repos *r, const char *repo, char *id, char *snap, int64_t *started)
{
    return repos_db_image_latest(r->db, repo, id, snap, started);
}

static void image_set(struct repos *r, const char *id, enum repos_db_image_col col, const char *val)
{
    repos_db_image_set(r->db, id, col, val);
}

static void image_log(struct repos *r, const char *id, const char *text, size_t n)
{
    repos_db_image_log(r->db, id, text, n, LOG_CAP);
}

/* A piece of the build log, scrubbed of the repository's secrets first. */
static void image_log_clean(struct repos *r, const char *id, const struct redact_set *secrets,
                            const char *text, size_t n)
{
    if (!secrets) {
        image_log(r, id, text, n);
        return;
    }
    size_t cn = 0;
    char *clean = redact_str(secrets, text, n, &cn);
    image_log(r, id, clean, cn);
    free(clean);
}

/* "NAME=value" for each secret of set appended to the NULL-terminated *env (*n entries). */
static void env_add_secrets(char ***env, size_t *n, const struct redact_set *set)
{
    size_t k = redact_set_count(set);
    *env = xrealloc(*env, (*n + k + 1) * sizeof(char *));
    for (size_t i = 0; i < k; i++) {
        (*env)[(*n)++] =
            xasprintf("%s=%s", redact_set_name(set, i), redact_set_value(set, i, NULL));
    }
    (*env)[*n] = NULL;
}

static void env_free(char **env)
{
    for (size_t i = 0; env && env[i]; i++) {
        explicit_bzero(env[i], strlen(env[i]));
        free(env[i]);
    }
    free(env);
}

int repos__open_image_store(struct repos *r, const char *repo, struct snap_store **out)
{
    char *dir = repos__repo_dir(r, repo, "images");
    int rc = snap_store_open(r->snap, dir, out);
    free(dir);
    return rc;
}

/* Delete ready images beyond the newest image_keep (their snapshots and objects). */
static void prune_images(struct repos *r, const char *repo)
{
    char *ids[64];
    char *snaps[64];
    int n = 0;
    int keep = r->cfg.image_keep;
    repos_db_image_beyond(r->db, repo, keep, 64, ids, snaps, &n);
    if (n == 0) {
        return;
    }
    struct snap_store *ss = NULL;
    repos__open_image_store(r, repo, &ss);
    for (int i = 0; i < n; i++) {
        image_set(r, ids[i], REPOS_DB_IMAGE_STATE, "deleted");
        if (ss && snaps[i][0]) {
            snap_delete(ss, snaps[i]);
        }
        LOG_INFO("repos: %s: image %s deleted (keeping %d)", repo, ids[i], keep);
        free(ids[i]);
        free(snaps[i]);
    }
    if (ss) {
        snap_gc(ss, NULL, NULL);
        snap_store_close(ss);
    }
}

/* The sandbox of a build's setup commands over dir, published in r->build_sbx: a shutdown
 * stops it, so that it does not wait for a long setup (npm ci). */
static int setup_sandbox(struct repos *r, const char *image_id, const char *dir,
                         const char *objects, struct sbx **out)
{
    char name[80];
    snprintf(name, sizeof(name), "img-%s", image_id);
    struct sbx_spec spec = {.name = name, .workspace = dir, .shared_objects = objects};
    int rc = sbx_create(r->cfg.sbx, &spec, out);
    if (rc != 0) {
        return rc;
    }
    pthread_mutex_lock(&r->lock);
    r->build_sbx = *out;
    int stopping = r->stopping;
    pthread_mutex_unlock(&r->lock);
    if (stopping) {
        sbx_stop(*out);
    }
    return 0;
}

/* The setup steps' route to the network: the egress proxy with the repository's egress list
 * plus egress.default, read when the build starts; none (no network) when both are empty. */
static void setup_route(struct repos *r, const char *repo, struct sbx *sb, struct sbx_egress *out)
{
    json_t *list = NULL;
    memset(out, 0, sizeof(*out));
    if (!r->cfg.egress || repos_repo_policy(r, repo, &list, NULL, 0) != 0) {
        return;
    }
    sbx_egress_open_json(r->cfg.egress, sb, list, out);
    json_decref(list);
}

/* A failed step whose connections the egress proxy refused says so: the refusal is the likely
 * cause, and where to list the host is the fix. */
static void setup_denials(struct repos *r, const char *image_id, struct sbx *sb, struct buf *err)
{
    char last[400];
    int n = sbx_egress_denials(r->cfg.egress, sb, last, sizeof(last));
    if (n == 0) {
        return;
    }
    buf_printf(err,
               "; the egress proxy refused %d connection%s (last: %s; list the host:port in the "
               "repository's egress or in egress.default)",
               n, n == 1 ? "" : "s", last);
    char *line = xasprintf("[sandbox.egress_denied %s]\n", last);
    image_log(r, image_id, line, strlen(line));
    free(line);
}

/* Run setup command cmd (step i of n) of a build in its sandbox sb, through route, its output
 * into the image's log. 0, or an error with the reason in *err. */
static int setup_step(struct repos *r, const char *image_id, struct sbx *sb,
                      const struct sbx_egress *route, const char *cmd, size_t i, size_t n,
                      const struct redact_set *secrets, struct buf *err)
{
    char step[160];
    snprintf(step, sizeof(step), "setup %zu/%zu", i + 1, n);
    image_set(r, image_id, REPOS_DB_IMAGE_STEP, step);
    char *hdr = xasprintf("$ %s\n", cmd);
    image_log_clean(r, image_id, secrets, hdr, strlen(hdr));
    free(hdr);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    /* The repository's secrets are in the environment of its setup steps (an npm token for
     * `npm ci`) and scrubbed from what they print; the route adds its proxy variables. */
    char **senv = NULL;
    size_t ne = 0;
    env_add_secrets(&senv, &ne, secrets);
    char **av = sbx_egress_argv(route, argv);
    char **env = sbx_egress_env(route, (const char *const *)senv);
    env_free(senv);
    struct sbx_exec_req req = {.argv = (const char *const *)av,
                               .env = (const char *const *)env,
                               .timeout_ms = 30 * 60 * 1000};
    struct sbx_result res;
    memset(&res, 0, sizeof(res));
    int rc = sbx_run(sb, &req, SETUP_OUT_CAP, &res);
    sbx_egress_strv_free(av);
    sbx_egress_strv_free(env);
    if (rc == 0) {
        image_log_clean(r, image_id, secrets, res.out ? res.out : "", res.out_len);
        image_log_clean(r, image_id, secrets, res.err ? res.err : "", res.err_len);
        char tail[64];
        snprintf(tail, sizeof(tail), "[exit %d%s]\n", res.exit.exit_code,
                 res.exit.timed_out ? ", timed out" : "");
        image_log(r, image_id, tail, strlen(tail));
        if (res.exit.exit_code != 0 || res.exit.signal != 0) {
            buf_printf(err, "setup step %zu (%s) failed with exit code %d", i + 1, cmd,
                       res.exit.exit_code);
            setup_denials(r, image_id, sb, err);
            rc = ERR_UNPROCESSABLE;
        }
    } else {
        buf_printf(err, "setup step %zu could not run: %s", i + 1, err_str(rc));
    }
    sbx_result_free(&res);
    return rc;
}

/* Build one image: clone, setup commands in a sandbox, snapshot into the image store. */
/* Fetch into the repository's shared object store (only what it lacks), then check out a
 * workspace in dir that borrows the objects from it: the image holds the files and a small
 * .git, never the packs (docs/repos.md "Shared object store"). *sha: the commit. */
static int build_fetch(struct repos *r, const char *repo, const char *image_id, const char *dir,
                       const char *url, const char *branch, const char *objects, char sha[41],
                       struct buf *err)
{
    image_set(r, image_id, REPOS_DB_IMAGE_STEP, "clone");
    LOG_INFO("repos: %s: image %s: fetching %s at %s", repo, image_id, url, branch);
    char *store = repos__repo_dir(r, repo, "objects.git");
    int64_t tf = clock_mono_ms(), tc = 0;
    int rc = repos__mirror_fetch(r, store, url, branch, sha);
    free(store);
    if (rc == 0) {
        tc = clock_mono_ms();
        rc = gitx_checkout_shared(dir, objects, url, branch, sha);
        LOG_INFO("repos: %s: image %s: fetch into the shared store %lld ms, checkout %lld ms", repo,
                 image_id, (long long)(tc - tf), (long long)(clock_mono_ms() - tc));
    }
    if (rc != 0) {
        buf_printf(err, "clone of %s (branch %s) failed: %s", url, branch, err_str(rc));
    }
    return rc;
}

/* Run the repository's setup commands on dir in a sandbox of their own, with the repository's
 * secrets in their environment (*secrets: kept for scrubbing the error) and its egress route.
 * The sandbox is gone on return. */
static int build_setup(struct repos *r, const char *repo, const char *image_id, const char *dir,
                       const char *objects, json_t *setup, struct redact_set **secrets,
                       struct buf *err)
{
    size_t nsteps = json_array_size(setup);
    struct sbx *sb = NULL;
    struct sbx_egress route = {0};
    int rc = 0;
    if (nsteps == 0) {
        return 0;
    }
    if (!r->cfg.sbx) {
        buf_printf(err, "no sandbox backend to run the setup commands");
        return ERR_UNAVAILABLE;
    }
    if (r->cfg.secrets && r->cfg.secrets(r->cfg.secrets_ctx, NULL, repo, secrets) != 0) {
        LOG_WARN("repos: %s: image %s: cannot read the repository's secrets", repo, image_id);
        *secrets = NULL;
    }
    rc = setup_sandbox(r, image_id, dir, objects, &sb);
    if (rc != 0) {
        buf_printf(err, "cannot start a sandbox for the setup: %s", err_str(rc));
        return rc;
    }
    setup_route(r, repo, sb, &route);
    for (size_t i = 0; i < nsteps && rc == 0; i++) {
        rc = setup_step(r, image_id, sb, &route, json_string_value(json_array_get(setup, i)), i,
                        nsteps, *secrets, err);
    }
    pthread_mutex_lock(&r->lock);
    r->build_sbx = NULL;
    pthread_mutex_unlock(&r->lock);
    sbx_egress_close(r->cfg.egress, sb);
    sbx_egress_free(&route);
    sbx_destroy(sb);
    return rc;
}

/* Snapshot the built workspace dir into the image store and mark the image ready. */
static int build_finish(struct repos *r, const char *repo, const char *image_id, const char *dir,
                        const char *sha, int64_t t0, struct buf *err)
{
    struct snap_store *ss = NULL;
    struct snap_info si;
    image_set(r, image_id, REPOS_DB_IMAGE_STEP, "snapshot");
    int rc = repos__open_image_store(r, repo, &ss);
    if (rc == 0) {
        rc = snap_create(ss, dir, image_id, &si);
    }
    snap_store_close(ss);
    if (rc != 0) {
        buf_printf(err, "snapshot of the built workspace failed: %s", err_str(rc));
        return rc;
    }
    int64_t ms = clock_mono_ms() - t0;
    struct repos_db_built built = {.snapshot_id = si.id,
                                   .built_at = clock_now_ms(),
                                   .duration_ms = ms,
                                   .size_bytes = (int64_t)si.bytes,
                                   .files = (int64_t)si.files};
    rc = repos_db_image_ready(r->db, image_id, &built);
    LOG_INFO("repos: %s: image %s ready (commit %.12s, %llu files, %lld ms)", repo, image_id, sha,
             (unsigned long long)si.files, (long long)ms);
    return rc;
}

static int build_image(struct repos *r, const char *repo, const char *image_id)
{
    json_t *j = NULL;
    struct redact_set *secrets = NULL;
    char sha[41] = "";
    char *dir = NULL, *sub = NULL, *objects = NULL;
    int64_t t0 = clock_mono_ms();
    struct buf err;
    int rc = repos__repo_load(r, repo, &j);
    buf_init(&err, 4096);
    if (rc != 0) {
        buf_printf(&err, "repository %s is gone", repo);
        goto out;
    }
    const char *url = json_string_value(json_object_get(j, "url"));
    const char *branch = json_string_value(json_object_get(j, "default_branch"));
    sub = xasprintf("build-%s", image_id);
    dir = repos__repo_dir(r, repo, sub);
    if (wsdisk_remove(r->disk, dir) != 0) {
        util_rm_rf(dir);
    }
    /* the setup commands run in a sandbox on it: with the disk quota, a disk of its own */
    if (wsdisk_enforced(r->disk) && wsdisk_make(r->disk, dir) != 0) {
        LOG_WARN("repos: %s: image %s: no disk for the build: it runs without the quota", repo,
                 image_id);
    }
    objects = repos__shared_objects(r, repo);
    rc = build_fetch(r, repo, image_id, dir, url, branch, objects, sha, &err);
    if (rc != 0) {
        goto out;
    }
    image_set(r, image_id, REPOS_DB_IMAGE_COMMIT, sha);
    repos__chown_tree(r, dir);
    rc = build_setup(r, repo, image_id, dir, objects, json_object_get(j, "setup"), &secrets, &err);
    if (rc == 0) {
        rc = build_finish(r, repo, image_id, dir, sha, t0, &err);
    }
out:
    if (rc != 0 && secrets && err.data) { /* the reason quotes the command */
        char *clean = redact_str(secrets, err.data, err.len, NULL);
        buf_reset(&err);
        buf_puts(&err, clean);
        free(clean);
    }
    redact_set_unref(secrets);
    if (rc != 0) {
        repos_db_image_failed(r->db, image_id, err.data ? err.data : err_str(rc),
                              clock_mono_ms() - t0, clock_now_ms());
        LOG_WARN("repos: %s: image %s failed: %s", repo, image_id,
                 err.data ? err.data : err_str(rc));
    }
    if (dir && wsdisk_remove(r->disk, dir) != 0) {
        snap_discard_tree(r->snap, dir); /* its sandbox is gone: inodes to the spares */
    }
    if (rc == 0) {
        prune_images(r, repo);
    }
    free(dir);
    free(sub);
    free(objects);
    buf_free(&err);
    json_decref(j);
    return rc;
}

/* Insert the image row (state building). ERR_CONFLICT if one is queued or running. */
static int image_new(struct repos *r, const char *repo, char **id_out)
{
    char *id = util_new_id("img_");
    int rc = repos_db_image_new(r->db, id, repo, clock_now_ms());
    if (rc != 0) {
        free(id);
        return rc;
    }
    *id_out = id;
    return 0;
}

static int image_row(struct repos *r, const char *id, json_t **out)
{
    return repos_db_image_get(r->db, id, out);
}

int repos_image_build(struct repos *r, const char *name, json_t **out)
{
    json_t *repo = NULL;
    char *id = NULL;
    if (out) {
        *out = NULL;
    }
    int rc = repos__repo_load(r, name, &repo);
    json_decref(repo);
    if (rc == 0) {
        rc = image_new(r, name, &id);
    }
    if (rc != 0) {
        return rc;
    }
    if (r->cfg.no_threads) {
        build_image(r, name, id);
    } else {
        struct job *jb = xcalloc(1, sizeof(*jb));
        jb->repo = xstrdup(name);
        jb->image_id = xstrdup(id);
        pthread_mutex_lock(&r->lock);
        if (r->jobs_tail) {
            r->jobs_tail->next = jb;
        } else {
            r->jobs = jb;
        }
        r->jobs_tail = jb;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
    }
    if (out) {
        image_row(r, id, out);
    }
    free(id);
    return 0;
}

void *repos__builder_main(void *arg)
{
    struct repos *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->stopping) {
        struct job *jb = r->jobs;
        if (!jb) {
            pthread_cond_wait(&r->cond, &r->lock);
            continue;
        }
        r->jobs = jb->next;
        if (!r->jobs) {
            r->jobs_tail = NULL;
        }
        r->building = jb->repo;
        pthread_mutex_unlock(&r->lock);
        int rc = build_image(r, jb->repo, jb->image_id);
        pthread_mutex_lock(&r->lock);
        r->building = NULL;
        if (rc == 0) {
            r->kick = 1; /* new image: refresh the pool */
            pthread_cond_broadcast(&r->cond);
        }
        free(jb->repo);
        free(jb->image_id);
        free(jb);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}
