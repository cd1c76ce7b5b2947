/*
 * prepare.c - a session's workspace at the start of its sandbox: its latest snapshot, else a
 * warm workspace, else the latest image, else a clone; the background sync to the branch head
 * that follows, and the runner's calls around a sandbox start (sandbox.ready, the handed-over
 * warm sandbox, waits for the sync).
 *
 * Threads: one filler per session (r->preparing); sync threads are detached and counted in
 * r->bg_syncs, which repos_shutdown() waits for; r->sync_cv reports their ends.
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

static void sync_req_set(struct sync_req *q, const char *url, const char *branch)
{
    q->want = 1;
    q->url = url ? xstrdup(url) : NULL;
    q->branch = branch ? xstrdup(branch) : NULL;
}

/* Whether the warm workspace w is at the branch head of this moment, the session's base: the
 * pool syncs it every RESYNC_MS, and a commit pushed since (even a second before the session
 * was created) must be in it. A ls-remote costs a round trip and no transfer; when it fails,
 * or the head moved, the caller syncs (fetch + reset) as for any restored tree. */
static int warm_at_head(const char *sid, const struct warm *w, const char *url, const char *branch)
{
    char head[41] = "";
    int64_t t0 = clock_mono_us();
    int rc = w->head[0] ? gitx_remote_head(url, branch, NULL, head) : ERR_NOT_FOUND;
    int same = rc == 0 && strcmp(head, w->head) == 0;
    LOG_INFO("repos: session %s: remote head check %lld us: %s", sid,
             (long long)(clock_mono_us() - t0),
             rc != 0 ? err_str(rc)
             : same  ? "the warm workspace is at the head"
                     : "moved: sync");
    return same;
}

/* Step 2 of prepare: move the claimed warm workspace w (taken over) into workspace, with its
 * running sandbox (handed over to the runner through r->handoffs) and its seeded snapshot store
 * (which becomes the session's unless the session has snapshots already). 0, or an error
 * after which w is freed and the caller tries the next source. */
static int from_warm(struct repos *r, const char *sid, struct warm *w, const char *workspace,
                     const char *sdir, int had_snaps, const char *url, const char *branch,
                     struct sync_req *defer)
{
    /* a rename, or with the disk quota the move of its mount (and image) */
    if (wsdisk_move(r->disk, w->dir, workspace) != 0) {
        LOG_WARN("repos: the move of a warm workspace failed");
        repos__warm_free(r, w);
        return ERR_IO;
    }
    if (defer && !warm_at_head(sid, w, url, branch)) {
        sync_req_set(defer, url, branch);
    }
    if (w->sbx && defer && sbx_alive(w->sbx) && sbx_rehome(w->sbx, sid, workspace) == 0) {
        struct handoff *h = xcalloc(1, sizeof(*h));
        snprintf(h->sid, sizeof(h->sid), "%s", sid);
        h->sbx = w->sbx;
        pthread_mutex_lock(&r->lock);
        h->next = r->handoffs;
        r->handoffs = h;
        pthread_mutex_unlock(&r->lock);
        free(w->sbx_priv); /* now the session's private dir */
    } else if (w->sbx) {
        repos__pool_sbx_free(w->sbx, w->sbx_priv); /* the caller starts its own */
    }
    w->sbx = NULL;
    w->sbx_priv = NULL;
    /* its seeded snapshot store becomes the session's (no snapshot exists yet) */
    char *wsnap = xasprintf("%s.snap", w->dir);
    if (!had_snaps) { /* never replace a store that holds snapshots */
        util_rm_rf(sdir);
        char *parent_s = xasprintf("%s/snapshots", r->data_dir);
        util_mkdir_p(parent_s, 0700);
        free(parent_s);
    }
    if (had_snaps || rename(wsnap, sdir) != 0) {
        util_rm_rf(wsnap); /* the first snapshot will read everything */
    }
    free(wsnap);
    free(w->repo);
    free(w->dir);
    free(w->image_id);
    free(w);
    return 0;
}

/* Step 3 of prepare: restore image snapshot snap of repo into workspace (seeding the session's
 * snapshot store sdir), then sync it to url/branch, or leave the sync to the background when
 * defer is given. */
static int from_image(struct repos *r, const char *sid, const char *repo, const char *snap,
                      const char *workspace, const char *sdir, const char *url, const char *branch,
                      struct sync_req *defer)
{
    struct snap_store *is = NULL;
    struct snap_restore_info ri;
    memset(&ri, 0, sizeof(ri));
    int64_t t1 = clock_mono_us(), t2 = 0;
    int rc = repos__open_image_store(r, repo, &is);
    if (rc == 0) {
        rc = snap_restore_seed(is, snap, workspace, sdir, &ri);
    }
    snap_store_close(is);
    if (rc != 0) {
        return rc;
    }
    t2 = clock_mono_us();
    if (defer) {
        /* in the background, after sandbox.ready (the ownership fix first) */
        sync_req_set(defer, url, branch);
    } else {
        /* restored as root: the sandbox user's before git runs as it */
        repos__chown_tree(r, workspace);
        char *shared = repos__shared_if_any(r, repo);
        rc = repos__sync(r, workspace, shared, url, branch, NULL);
        free(shared);
    }
    LOG_INFO("repos: session %s: image restore %lld ms (%llu files, %llu spare inodes, "
             "%llu MiB; walk %lld, "
             "dirs %lld, copy %lld, meta %lld ms), sync %lld ms%s",
             sid, (long long)(t2 - t1) / 1000, (unsigned long long)ri.copied,
             (unsigned long long)ri.spares, (unsigned long long)(ri.copied_bytes >> 20),
             (long long)ri.walk_us / 1000, (long long)ri.dirs_us / 1000,
             (long long)ri.copy_us / 1000, (long long)ri.meta_us / 1000,
             (long long)(clock_mono_us() - t2) / 1000, defer ? " (deferred)" : "");
    return rc;
}

/* 1 if dir is an empty directory. */
static int dir_is_empty(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int empty = d != NULL;
    while (d && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            empty = 0;
            break;
        }
    }
    if (d) {
        closedir(d);
    }
    return empty;
}

/* Where prepare_ws fills the workspace from a snapshot, an image or a clone (made on first use
 * in *fill): with the disk quota, a disk of its own (wsdisk.h) mounted on a staging path next to
 * the workspace and moved into place when full, so that a crash leaves a staging disk (removed
 * at the next start) and never a half-filled workspace; else the workspace itself (a restore
 * stages a fresh tree by itself). A warm workspace is moved into place directly. */
static const char *fill_dir(struct repos *r, const char *workspace, char **fill)
{
    if (*fill) {
        return *fill;
    }
    const char *slash = strrchr(workspace, '/');
    if (!wsdisk_enforced(r->disk) || !slash) {
        *fill = xstrdup(workspace);
        return *fill;
    }
    *fill = xasprintf("%.*s/.%s.fill", (int)(slash - workspace), workspace, slash + 1);
    if (wsdisk_remove(r->disk, *fill) != 0) {
        util_rm_rf(*fill); /* a leftover */
    }
    if (wsdisk_make(r->disk, *fill) != 0) {
        LOG_WARN("repos: no disk for %s: it is filled without the quota", workspace);
        free(*fill);
        *fill = xstrdup(workspace);
    }
    return *fill;
}

/* Empty the fill directory after a failed source, for the next one. */
static void fill_drop(struct repos *r, char **fill)
{
    if (*fill && wsdisk_remove(r->disk, *fill) != 0) {
        util_rm_rf(*fill);
    }
    free(*fill);
    *fill = NULL;
}

/* repos_prepare_workspace(); with defer, the sync (or index refresh) is not done here but
 * described in *defer for the caller to run in the background. */
static int prepare_ws(struct repos *r, const char *session_id, const char *repo,
                      const char *workspace, char *source, int64_t *ms, struct sync_req *defer)
{
    json_t *j = NULL;
    struct snap_store *ss = NULL;
    char img[64] = "", snap[64], latest[32];
    const char *src = NULL;
    char *sdir = NULL, *fill = NULL;
    int64_t t0 = clock_mono_us();
    int rc = util_valid_id(session_id) ? repos__repo_load(r, repo, &j) : ERR_INVALID;
    if (rc != 0) {
        return rc;
    }
    const char *url = json_string_value(json_object_get(j, "url"));
    const char *branch = json_string_value(json_object_get(j, "default_branch"));
    char *sbranch = xasprintf("sessiond/%s", session_id);
    repos_db_session_add(r->db, session_id, repo, sbranch, clock_now_ms());
    /* The target must be absent or an empty directory (rmdir fails otherwise); an empty disk
     * (wsdisk.h) goes too: a source is filled aside and moved there. */
    if (rmdir(workspace) != 0 && errno != ENOENT &&
        !(errno == EBUSY && dir_is_empty(workspace) && wsdisk_remove(r->disk, workspace) == 0)) {
        LOG_WARN("repos: workspace %s exists and is not empty", workspace);
        rc = ERR_CONFLICT;
        goto out;
    }
    char *parent = xstrdup(workspace);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        util_mkdir_p(parent, 0755);
    }
    free(parent);

    /* 1. the session's own latest snapshot (a reopened session keeps its work) */
    sdir = repos__session_snap_dir(r, session_id);
    char *ssnaps = xasprintf("%s/snaps", sdir);
    struct stat ssb;
    int has_store = stat(ssnaps, &ssb) == 0;
    free(ssnaps);
    int had_snaps = 0;
    if (has_store && repos__open_session_store(r, session_id, &ss) == 0 &&
        snap_latest(ss, latest, sizeof(latest)) == 0) {
        had_snaps = 1;
        rc = snap_restore(ss, latest, fill_dir(r, workspace, &fill), NULL);
        if (rc == 0) {
            src = "snapshot";
            if (defer) {
                sync_req_set(defer, NULL, NULL); /* restored inodes: refresh the index */
            }
            goto done;
        }
        LOG_WARN("repos: %s: restore of %s failed; starting fresh", session_id, latest);
        fill_drop(r, &fill);
        util_rm_rf(workspace);
    }
    int have_image = repos__latest_image(r, repo, img, snap, NULL) == 0;
    /* 2. a warm workspace of the latest image */
    struct warm *w = have_image ? repos__warm_claim(r, repo, img) : NULL;
    if (w) {
        snap_store_close(ss); /* a claimed workspace may bring its own store */
        ss = NULL;
        if (from_warm(r, session_id, w, workspace, sdir, had_snaps, url, branch, defer) == 0) {
            src = "warm";
            goto done;
        }
    }
    /* 3. a cold start from the latest image */
    if (have_image) {
        rc = from_image(r, session_id, repo, snap, fill_dir(r, workspace, &fill), sdir, url, branch,
                        defer);
        if (rc == 0) {
            src = "image";
            goto done;
        }
        LOG_WARN("repos: %s: start from image %s failed: %s; cloning", session_id, img,
                 err_str(rc));
        fill_drop(r, &fill);
        util_rm_rf(workspace);
        img[0] = 0;
    }
    /* 4. a plain clone */
    rc = repos__clone(r, url, branch, fill_dir(r, workspace, &fill));
    if (rc != 0) {
        goto out;
    }
    repos__chown_tree(r, fill);
    src = "clone";
    img[0] = 0;
done:
    if (fill && strcmp(fill, workspace) != 0) {
        rc = wsdisk_move(r->disk, fill, workspace); /* the filled disk into place */
        if (rc != 0) {
            goto out;
        }
    }
    free(fill);
    fill = NULL;
    rc = 0;
    int64_t took = (clock_mono_us() - t0) / 1000;
    repos_db_session_ready(r->db, session_id, src, took, img[0] ? img : NULL);
    snprintf(source, 16, "%s", src);
    if (ms) {
        *ms = took;
    }
    LOG_INFO("repos: session %s workspace ready from %s in %lld ms", session_id, src,
             (long long)took);
out:
    if (fill && strcmp(fill, workspace) != 0) {
        fill_drop(r, &fill); /* a failed fill leaves no disk behind */
    }
    free(fill);
    snap_store_close(ss);
    free(sdir);
    free(sbranch);
    json_decref(j);
    return rc;
}

int repos_prepare_workspace(struct repos *r, const char *session_id, const char *repo,
                            const char *workspace, char *source, int64_t *ms)
{
    return prepare_ws(r, session_id, repo, workspace, source, ms, NULL);
}

struct bg_sync {
    struct repos *r;
    char sid[72];
    char *ws;
    struct sync_req q;
};

/* Wait on r->sync_cv (r->lock held) until deadline (mono ms) at most. */
static void sync_cv_wait_until(struct repos *r, int64_t deadline)
{
    int64_t left = deadline - clock_mono_ms();
    if (left <= 0) {
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ns = ts.tv_nsec + left * 1000000;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(&r->sync_cv, &r->lock, &ts);
}

static void *bg_sync_main(void *arg)
{
    struct bg_sync *b = arg;
    struct repos *r = b->r;
    char before[41] = "", head[41] = "";
    int rc = 0;
    /* Let the sandbox start first (sandbox.ready releases us), then the test delay. */
    pthread_mutex_lock(&r->lock);
    int64_t hold = clock_mono_ms() + SYNC_HOLD_MS;
    while (!r->closing && !json_object_get(r->released, b->sid) && clock_mono_ms() < hold) {
        sync_cv_wait_until(r, hold);
    }
    json_object_del(r->released, b->sid);
    int64_t t0 = clock_mono_us();
    int64_t until = clock_mono_ms() + r->cfg.sync_delay_ms;
    while (!r->closing && clock_mono_ms() < until) {
        sync_cv_wait_until(r, until);
    }
    int closing = r->closing;
    pthread_mutex_unlock(&r->lock);
    char *shared = closing ? NULL : repos__session_shared(r, b->sid);
    if (!closing) {
        /* a restore (as root) may have made the workspace: the sandbox user's before git
         * runs as that user */
        repos__chown_tree(r, b->ws);
    }
    if (closing) {
        rc = ERR_CANCELLED;
    } else if (b->q.url) {
        gitjob_head(&r->git, b->ws, shared, before, NULL);
        rc = repos__sync(r, b->ws, shared, b->q.url, b->q.branch, head);
    }
    if (rc == 0) {
        /* the restore (and the reset) left stale stat data: refresh now, before the agent's
         * git or the first commit would re-read every file */
        int64_t t1 = clock_mono_us();
        int frc = gitjob_refresh_index(&r->git, b->ws, shared);
        LOG_INFO("repos: session %s: index refresh %lld ms (%s)", b->sid,
                 (long long)(clock_mono_us() - t1) / 1000, err_str(frc));
    }
    int64_t ms = (clock_mono_us() - t0) / 1000;
    if (rc == 0 && b->q.url) {
        repos__emit(r, b->sid, "git.synced",
                    json_pack("{s:s, s:s?, s:I}", "head", head, "previous",
                              before[0] ? before : NULL, "ms", (json_int_t)ms));
    } else if (rc != 0) {
        LOG_WARN("repos: session %s: workspace sync failed: %s", b->sid, err_str(rc));
        repos__emit(r, b->sid, "git.sync_failed",
                    json_pack("{s:s, s:I}", "error", err_str(rc), "ms", (json_int_t)ms));
    }
    LOG_INFO("repos: session %s: background %s done in %lld ms", b->sid,
             b->q.url ? "sync" : "index refresh", (long long)ms);
    free(shared);
    char sid[72];
    snprintf(sid, sizeof(sid), "%s", b->sid);
    free(b->ws);
    free(b->q.url);
    free(b->q.branch);
    free(b);
    repos__sync_end(r, sid);
    return NULL;
}

void repos__sync_end(struct repos *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    json_object_del(r->syncing, sid);
    pthread_cond_broadcast(&r->sync_cv);
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&r->runner_mu);
    if (r->runner.synced) {
        r->runner.synced(r->runner.ctx, sid);
    }
    pthread_mutex_unlock(&r->runner_mu);
    pthread_mutex_lock(&r->lock);
    r->bg_syncs--; /* last touch of r: repos_close may free it after this */
    pthread_cond_broadcast(&r->pool_done);
    pthread_mutex_unlock(&r->lock);
}

/* Mark sid syncing and start the sync of ws described by q (taken over). */
static void start_bg_sync(struct repos *r, const char *sid, const char *ws, struct sync_req *q)
{
    struct bg_sync *b = xcalloc(1, sizeof(*b));
    b->r = r;
    snprintf(b->sid, sizeof(b->sid), "%s", sid);
    b->ws = xstrdup(ws);
    b->q = *q;
    memset(q, 0, sizeof(*q));
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&r->lock);
    json_object_set_new(r->syncing, sid, json_true());
    json_object_del(r->released, sid);
    r->bg_syncs++;
    pthread_mutex_unlock(&r->lock);
    if (pthread_create(&th, &at, bg_sync_main, b) != 0) {
        LOG_WARN("repos: session %s: cannot start the workspace sync thread", sid);
        pthread_mutex_lock(&r->lock);
        json_object_del(r->syncing, sid);
        r->bg_syncs--;
        pthread_cond_broadcast(&r->sync_cv);
        pthread_mutex_unlock(&r->lock);
        free(b->ws);
        free(b->q.url);
        free(b->q.branch);
        free(b);
    }
    pthread_attr_destroy(&at);
}

struct sbx *repos_take_sandbox(struct repos *rp, const char *sid)
{
    struct repos *r = repos__hook_enter(rp);
    struct sbx *s = NULL;
    if (r) {
        pthread_mutex_lock(&r->lock);
        for (struct handoff **pp = &r->handoffs; *pp; pp = &(*pp)->next) {
            if (strcmp((*pp)->sid, sid) == 0) {
                struct handoff *h = *pp;
                *pp = h->next;
                s = h->sbx;
                free(h);
                json_object_set_new(r->ready_src_sbx, sid, json_true()); /* for the event */
                break;
            }
        }
        pthread_mutex_unlock(&r->lock);
        repos__hook_leave(r);
    }
    return s;
}

int repos_syncing(struct repos *rp, const char *sid)
{
    struct repos *r = repos__hook_enter(rp);
    int on = 0;
    if (r) {
        pthread_mutex_lock(&r->lock);
        on = json_object_get(r->syncing, sid) != NULL;
        pthread_mutex_unlock(&r->lock);
        repos__hook_leave(r);
    }
    return on;
}

int repos_session_has_repo(struct repos *rp, const char *sid)
{
    struct repos *r = repos__hook_enter(rp);
    char *name = NULL;
    if (r) {
        name = util_valid_id(sid) ? repos__session_repo_name(r, sid) : NULL;
        repos__hook_leave(r);
    }
    int has = name != NULL;
    free(name);
    return has;
}

int repos_sync_wait_ms(struct repos *rp)
{
    struct repos *r = repos__hook_enter(rp);
    int ms = 30000;
    if (r) {
        ms = r->cfg.sync_wait_ms;
        repos__hook_leave(r);
    }
    return ms;
}

/* Wait (r->lock held) until sid is in none of the given sets, or the deadline. */
int repos__wait_not_in(struct repos *r, const char *sid, json_t *a, json_t *b, int timeout_ms)
{
    int64_t deadline = clock_mono_ms() + timeout_ms;
    for (;;) {
        if (r->closing) {
            return ERR_UNAVAILABLE;
        }
        if (!json_object_get(a, sid) && (!b || !json_object_get(b, sid))) {
            return 0;
        }
        if (clock_mono_ms() >= deadline) {
            return ERR_TIMEOUT;
        }
        sync_cv_wait_until(r, deadline);
    }
}

int repos_wait_synced(struct repos *rp, const char *sid, int timeout_ms)
{
    struct repos *r = repos__hook_enter(rp);
    int rc = 0;
    if (r) {
        pthread_mutex_lock(&r->lock);
        rc = repos__wait_not_in(r, sid, r->syncing, NULL,
                                timeout_ms < 0 ? r->cfg.sync_wait_ms : timeout_ms);
        pthread_mutex_unlock(&r->lock);
        repos__hook_leave(r);
    }
    return rc;
}

void repos_sandbox_start(struct repos *rp, const char *sid)
{
    struct repos *r = repos__hook_enter(rp);
    if (!r) {
        return;
    }
    struct stat sb;
    char *ws = repos__default_workspace(r, sid);
    char *name = NULL;
    /* One filler per session: a prompt and a files request may start the sandbox at once. */
    pthread_mutex_lock(&r->lock);
    while (json_object_get(r->preparing, sid)) {
        pthread_cond_wait(&r->prep_cv, &r->lock);
    }
    json_object_set_new(r->preparing, sid, json_true());
    pthread_mutex_unlock(&r->lock);
    /* An existing non-empty workspace is the session's state: leave it alone. */
    int empty = stat(ws, &sb) != 0;
    if (!empty && S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(ws);
        struct dirent *de;
        empty = 1;
        while (d && (de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                empty = 0;
                break;
            }
        }
        if (d) {
            closedir(d);
        }
    }
    if (empty && util_valid_id(sid)) {
        name = repos__session_repo_name(r, sid);
    }
    if (name) {
        char source[16];
        int64_t ms = 0;
        struct sync_req q = {0};
        int rc = prepare_ws(r, sid, name, ws, source, &ms, &q);
        if (rc == 0) {
            pthread_mutex_lock(&r->lock);
            json_object_set_new(r->ready_src, sid, json_string(source));
            pthread_mutex_unlock(&r->lock);
            if (q.want) {
                start_bg_sync(r, sid, ws, &q); /* marked syncing before we return */
            }
        }
        free(q.url);
        free(q.branch);
        if (rc != 0) {
            LOG_WARN("repos: session %s: cannot prepare the workspace of %s: %s", sid, name,
                     err_str(rc));
        }
    }
    pthread_mutex_lock(&r->lock);
    json_object_del(r->preparing, sid);
    pthread_cond_broadcast(&r->prep_cv);
    pthread_mutex_unlock(&r->lock);
    free(name);
    free(ws);
    repos__hook_leave(r);
}

char *repos_ready_json(struct repos *rp, const char *sid, int64_t ms)
{
    char source[16] = "empty";
    int syncing = 0, pooled = 0;
    struct repos *r = repos__hook_enter(rp);
    if (r) {
        pthread_mutex_lock(&r->lock);
        pooled = json_object_get(r->ready_src_sbx, sid) != NULL;
        json_object_del(r->ready_src_sbx, sid);
        const char *s = json_string_value(json_object_get(r->ready_src, sid));
        if (s) {
            snprintf(source, sizeof(source), "%s", s);
            json_object_del(r->ready_src, sid);
        }
        syncing = json_object_get(r->syncing, sid) != NULL;
        if (syncing) {
            json_object_set_new(r->released, sid, json_true()); /* the sync may start */
            pthread_cond_broadcast(&r->sync_cv);
        }
        pthread_mutex_unlock(&r->lock);
        repos__hook_leave(r);
    }
    return xasprintf("{\"source\":\"%s\",\"ms\":%lld,\"sandbox\":\"%s\"%s}", source, (long long)ms,
                     pooled ? "pool" : "new", syncing ? ",\"syncing\":true" : "");
}
