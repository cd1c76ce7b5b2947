/*
 * pool.c - the warm pool: workspaces restored from the latest image and synced to the branch
 * head ahead of sessions, each with a sandbox made by the runner's factory; the pool thread's
 * schedule (rebuilds every image_interval_min, top-up, expiry, re-sync) and the claim.
 *
 * Threads: the pool thread runs the ticks (repos_pool_fill runs one on the caller's thread,
 * never two at once). Invariant: a warm workspace belongs to exactly one of {the warm list,
 * a top-up in progress, a claim in progress}; only the owner touches its directory.
 */
#include "workspace/workspace_int.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/egress/egress.h"
#include "sandbox/sbx.h"
#include "sandbox/wsdisk.h"
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

/* Destroy a sandbox made for the pool and its private dir + log (priv: taken over). */
void repos__pool_sbx_free(struct sbx *s, char *priv)
{
    sbx_destroy(s);
    if (priv) {
        char *log = xasprintf("%s.log", priv);
        util_rm_rf(priv);
        unlink(log);
        free(log);
        free(priv);
    }
}

void repos__kick_pool(struct repos *r)
{
    pthread_mutex_lock(&r->lock);
    r->kick = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

void repos__warm_free(struct repos *r, struct warm *w)
{
    if (w) {
        if (w->sbx) {
            repos__pool_sbx_free(w->sbx, w->sbx_priv);
            w->sbx_priv = NULL;
        }
        free(w->sbx_priv);
        char *snapdir = xasprintf("%s.snap", w->dir);
        util_rm_rf(snapdir);
        free(snapdir);
        if (wsdisk_remove(r->disk, w->dir) != 0) {
            snap_discard_tree(r->snap, w->dir); /* its sandbox is gone: inodes to the spares */
        }
        free(w->repo);
        free(w->dir);
        free(w->image_id);
        free(w);
    }
}

/* Start the sandbox of a new warm workspace now (so that a claim costs a rename, not a
 * namespace setup), if the runner registered its factory. Failure only costs that gain. */
static void warm_sandbox(struct repos *r, struct warm *w)
{
    const char *base = strrchr(w->dir, '/');
    char name[64];
    snprintf(name, sizeof(name), "warm-%s", base ? base + 1 : "x");
    char *objs = repos__shared_for(r, name, w->dir);
    struct sbx_spec spec = {.name = name, .workspace = w->dir, .shared_objects = objs};
    int rc = ERR_UNAVAILABLE;
    pthread_mutex_lock(&r->runner_mu);
    if (r->runner.make_sandbox) {
        rc = r->runner.make_sandbox(r->runner.ctx, &spec, &w->sbx);
    }
    pthread_mutex_unlock(&r->runner_mu);
    free(objs);
    if (rc == 0) {
        w->sbx_priv = xasprintf("%s/sandboxes/%s", r->data_dir, name);
    } else {
        w->sbx = NULL;
        if (rc != ERR_UNAVAILABLE) {
            LOG_WARN("repos: cannot start a sandbox for warm workspace %s: %s", w->dir,
                     err_str(rc));
        }
    }
}

/* Restore the latest image into a fresh directory and sync it to the branch head. */
static int warm_make(struct repos *r, const char *repo, const char *url, const char *branch,
                     const char *image_id, const char *snap_id, struct warm **out)
{
    struct snap_store *ss = NULL;
    char rnd[17];
    util_random_hex(rnd, 8);
    char *sub = xasprintf("warm/%s", rnd);
    char *dir = repos__repo_dir(r, repo, sub);
    free(sub);
    char head[41] = "";
    /* <dir>.snap becomes the session's snapshot store at claim, seeded from the image */
    char *snapdir = xasprintf("%s.snap", dir);
    /* with the disk quota, a disk of its own (wsdisk.h) that the restore fills in place */
    int rc = wsdisk_enforced(r->disk) ? wsdisk_make(r->disk, dir) : 0;
    if (rc == 0) {
        rc = repos__open_image_store(r, repo, &ss);
    }
    if (rc == 0) {
        rc = snap_restore_seed(ss, snap_id, dir, snapdir, NULL);
    }
    snap_store_close(ss);
    char *shared = repos__shared_if_any(r, repo);
    if (rc == 0) {
        repos__chown_tree(r, dir); /* restored as root: the sandbox user's before git runs as it */
        rc = repos__sync(r, dir, shared, url, branch, head);
    }
    if (rc == 0) {
        /* in the background now, not in the first commit */
        gitjob_refresh_index(&r->git, dir, shared);
    }
    free(shared);
    free(snapdir);
    if (rc != 0) {
        LOG_WARN("repos: %s: cannot prepare a warm workspace: %s", repo, err_str(rc));
        if (wsdisk_remove(r->disk, dir) != 0) {
            util_rm_rf(dir);
        }
        snapdir = xasprintf("%s.snap", dir);
        util_rm_rf(snapdir);
        free(snapdir);
        free(dir);
        return rc;
    }
    struct warm *w = xcalloc(1, sizeof(*w));
    w->repo = xstrdup(repo);
    w->dir = dir;
    w->image_id = xstrdup(image_id);
    w->created_ms = w->synced_ms = clock_now_ms();
    memcpy(w->head, head, sizeof(head));
    *out = w;
    return 0;
}

/* One pass of the schedule for one repo: rebuild when due, expire, re-sync, top up. */
static void pool_tick_repo(struct repos *r, const char *repo, const char *url, const char *branch,
                           int64_t pool_size, int64_t interval_min, int filling)
{
    char img[64], snap[64];
    int64_t started = 0, now = clock_now_ms();
    int have_image = repos__latest_image(r, repo, img, snap, &started) == 0;
    if (interval_min > 0 && !filling && (!have_image || started + interval_min * 60000 <= now)) {
        json_t *row = NULL;
        /* ERR_CONFLICT = already building: fine. A failed build retries next interval. */
        int64_t last_any = 0;
        repos_db_image_last_start(r->db, repo, &last_any);
        if (last_any + interval_min * 60000 <= now) {
            repos_image_build(r, repo, &row);
            json_decref(row);
        }
    }
    /* Expire: too old, or made from an image that is no longer the latest. */
    struct warm *gone = NULL, *resync = NULL, *bare = NULL;
    int count = 0;
    /* Warm workspaces made before the runner registered its sandbox factory (the layer starts
     * first) get their sandbox now. */
    pthread_mutex_lock(&r->runner_mu);
    int factory = r->runner.make_sandbox != NULL;
    pthread_mutex_unlock(&r->runner_mu);
    pthread_mutex_lock(&r->lock);
    for (struct warm **pp = &r->warm; *pp;) {
        struct warm *w = *pp;
        if (strcmp(w->repo, repo) != 0) {
            pp = &w->next;
            continue;
        }
        int expired = w->created_ms + (int64_t)r->cfg.pool_max_age_s * 1000 <= now || !have_image ||
                      strcmp(w->image_id, img) != 0 || count >= pool_size;
        if (expired) {
            *pp = w->next;
            w->next = gone;
            gone = w;
        } else if (w->synced_ms + RESYNC_MS <= now) {
            *pp = w->next; /* taken out while it syncs */
            w->next = resync;
            resync = w;
        } else if (factory && !w->sbx) {
            *pp = w->next; /* taken out while its sandbox starts */
            w->next = bare;
            bare = w;
        } else {
            count++;
            pp = &w->next;
        }
    }
    pthread_mutex_unlock(&r->lock);
    while (gone) {
        struct warm *w = gone;
        gone = w->next;
        repos__warm_free(r, w);
    }
    while (bare) {
        struct warm *w = bare;
        bare = w->next;
        warm_sandbox(r, w);
        pthread_mutex_lock(&r->lock);
        w->next = r->warm;
        r->warm = w;
        count++;
        pthread_mutex_unlock(&r->lock);
    }
    while (resync) {
        struct warm *w = resync;
        resync = w->next;
        char head[41] = "";
        char *shared = repos__shared_if_any(r, repo);
        if (repos__sync(r, w->dir, shared, url, branch, head) != 0) {
            free(shared);
            repos__warm_free(r, w);
            continue;
        }
        if (strcmp(head, w->head) != 0) {
            /* the reset left stale stat data: pay it now */
            gitjob_refresh_index(&r->git, w->dir, shared);
            memcpy(w->head, head, sizeof(head));
        }
        free(shared);
        w->synced_ms = clock_now_ms();
        pthread_mutex_lock(&r->lock);
        w->next = r->warm;
        r->warm = w;
        count++;
        pthread_mutex_unlock(&r->lock);
    }
    while (have_image && count < pool_size) {
        struct warm *w = NULL;
        pthread_mutex_lock(&r->lock);
        int stop = r->stopping;
        pthread_mutex_unlock(&r->lock);
        if (stop || warm_make(r, repo, url, branch, img, snap, &w) != 0) {
            break;
        }
        warm_sandbox(r, w);
        pthread_mutex_lock(&r->lock);
        w->next = r->warm;
        r->warm = w;
        pthread_mutex_unlock(&r->lock);
        count++;
    }
}

/* One pass over every repo (or only `only`). */
static void pool_tick(struct repos *r, const char *only, int filling)
{
    json_t *list = NULL;
    if (repos_list(r, &list) != 0) {
        return;
    }
    size_t i;
    json_t *j;
    json_array_foreach(json_object_get(list, "repos"), i, j)
    {
        const char *name = json_string_value(json_object_get(j, "name"));
        if (only && strcmp(only, name) != 0) {
            continue;
        }
        pool_tick_repo(r, name, json_string_value(json_object_get(j, "url")),
                       json_string_value(json_object_get(j, "default_branch")),
                       json_integer_value(json_object_get(j, "pool_size")),
                       json_integer_value(json_object_get(j, "image_interval_min")), filling);
    }
    json_decref(list);
}

void *repos__pool_main(void *arg)
{
    struct repos *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->stopping) {
        int64_t now = clock_mono_ms();
        int due = r->kick || (r->refill_at_ms && now >= r->refill_at_ms) || now >= r->next_tick_ms;
        if (!due) {
            int64_t until = r->next_tick_ms;
            if (r->refill_at_ms && r->refill_at_ms < until) {
                until = r->refill_at_ms;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            int64_t ns = ts.tv_nsec + (until - now) * 1000000;
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&r->cond, &r->lock, &ts);
            continue;
        }
        r->kick = 0;
        r->refill_at_ms = 0;
        r->next_tick_ms = now + r->cfg.tick_ms;
        r->pool_running = 1;
        pthread_mutex_unlock(&r->lock);
        pool_tick(r, NULL, 0);
        pthread_mutex_lock(&r->lock);
        r->pool_running = 0;
        pthread_cond_broadcast(&r->pool_done);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static int warm_count(struct repos *r, const char *repo)
{
    int n = 0;
    pthread_mutex_lock(&r->lock);
    for (struct warm *w = r->warm; w; w = w->next) {
        n += strcmp(w->repo, repo) == 0;
    }
    pthread_mutex_unlock(&r->lock);
    return n;
}

int repos_warm(struct repos *r, const char *name, json_t **out)
{
    json_t *j = NULL;
    char img[64], snap[64];
    int rc = repos__repo_load(r, name, &j);
    if (rc != 0) {
        return rc;
    }
    repos__kick_pool(r);
    int have = repos__latest_image(r, name, img, snap, NULL) == 0;
    *out = json_pack("{s:O, s:i, s:s?}", "pool_size", json_object_get(j, "pool_size"), "warm",
                     warm_count(r, name), "image_id", have ? img : NULL);
    json_decref(j);
    return 0;
}

int repos_pool_fill(struct repos *r, const char *name)
{
    /* Wait for a running tick, then run one for this repo on the caller's thread. Two
     * ticks at once would only over-fill (the surplus expires at the next tick). */
    pthread_mutex_lock(&r->lock);
    while (r->pool_running) {
        pthread_cond_wait(&r->pool_done, &r->lock);
    }
    r->pool_running = 1;
    pthread_mutex_unlock(&r->lock);
    pool_tick(r, name, 1);
    pthread_mutex_lock(&r->lock);
    r->pool_running = 0;
    pthread_cond_broadcast(&r->pool_done);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

/* Take a valid warm workspace of repo made from image img out of the pool. */
struct warm *repos__warm_claim(struct repos *r, const char *repo, const char *img)
{
    struct warm *found = NULL;
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&r->lock);
    for (struct warm **pp = &r->warm; *pp; pp = &(*pp)->next) {
        struct warm *w = *pp;
        if (strcmp(w->repo, repo) == 0 && strcmp(w->image_id, img) == 0 &&
            w->created_ms + (int64_t)r->cfg.pool_max_age_s * 1000 > now) {
            *pp = w->next;
            found = w;
            break;
        }
    }
    /* Top the pool up again, a moment later: refilling (a 100 MiB restore) right now would
     * compete for the CPUs with the start of the session that just claimed. */
    if (!r->refill_at_ms) {
        r->refill_at_ms = clock_mono_ms() + REFILL_DELAY_MS;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}
