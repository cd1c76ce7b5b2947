/*
 * spares.c - spare inodes next to the stores, their filler threads, recycling of dead
 * trees into spares, and the trash janitor.
 */

#include "workspace/snap/snap_int.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/fswalk.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- spare inodes, janitor */

/*
 * Why a directory of spare inodes: ext4 without a journal (this host's root file system) refuses to
 * reuse an inode freed in the last 60 s (360 s while its inode table block is dirty):
 * find_inode_bit() calls recently_deleted() -- a buffer-cache lookup -- for every free slot
 * from the start of the group until it finds an older one. After any mass delete in the group
 * (a workspace, an old image, a pruned snapshot, anybody's test tree), every create costs
 * O(recently freed inodes), and the 10,000 creates of a restore take 2-4 s instead of 0.2 s
 * (perf: 75% of the restore in find_get_block/recently_deleted). User space cannot steer the
 * allocator, so inode allocation leaves the critical path: a directory of empty files
 * ("spares", named by a hex counter) next to the stores is topped up by a background thread;
 * restore and snapshot write a spare through its fd and rename it to its final name
 * (renameat2 RENAME_NOREPLACE: a rename allocates no inode, and the file appears complete).
 * With a journal the scan does not exist and the spares only take the ordinary create cost
 * off the critical path.
 *
 * One spare directory per directory <parent of the store>/.snap-spare (sessions' stores share
 * <data>/snapshots/.snap-spare, a repository's image store <data>/repos/<name>/.snap-spare).
 * The struct of a spare directory lives as long as its snap_ctx (a handful of small structs). A
 * spare is a file we created empty, or a file of a dead tree recycled under the checks of
 * "Recycling" below (no xattrs, no flags, one link, open nowhere), which leave it
 * indistinguishable from a new one.
 */
#define SPARE_DIR    "/.snap-spare"
#define TRASH_PREFIX "t-" /* a discarded tree waiting in a spare directory (snap_discard_tree) */

void spares_init(struct snap_spares *ss)
{
    memset(ss, 0, sizeof(*ss));
    pthread_mutex_init(&ss->mu, NULL);
    pthread_cond_init(&ss->bg_cv, NULL);
    pthread_mutex_init(&ss->rest_mu, NULL);
    pthread_cond_init(&ss->rest_cv, NULL);
    atomic_init(&ss->stopping, 0);
    atomic_init(&ss->max, 65536);
    atomic_init(&ss->restoring, 0);
    atomic_init(&ss->restore_short, 0);
}

void snap_set_spare_max(struct snap_ctx *ctx, size_t n)
{
    atomic_store(&ctx->spares.max, n);
}

/* Restores running now (snapshots count too). The spare filler and the recycler wait for them:
 * a restore that shares the file system with a thread creating inodes or freeing blocks copies
 * slower, and the restore is what a user waits for (so is a snapshot: the session's next prompt
 * starts after it, and on 2 cores a filler's creates, CPU-bound in ext4's inode scan, took a
 * CPU from it).
 * The filler waits even for a restore that ran out of spares (restore_short): its create
 * costs the same inode scan as the restore's own, on a CPU the restore's workers need, and
 * it holds the spare directory's lock for the whole scan -- the lock each rename of a spare
 * out of that directory takes (with the file system's rename mutex held meanwhile, which
 * stalls the other workers' renames too). Measured with a filler that kept going for
 * restores marked short: image starts of 10,000 files in bench/pool.sh copied for 1.1-9.5 s
 * instead of 0.3-0.5 s (perf: 45% of all samples in the filler's ext4_create ->
 * recently_deleted, 12% in the workers' rwsem_spin_on_owner under lock_two_directories);
 * bench/snap's back-to-back restores took 4.5-6.3 s with 9,500-10,000 spares, 0.3-0.8 s
 * with the filler waiting.
 * The recycler keeps going for a short restore: a recycled spare costs no inode scan (a
 * truncate and a rename) and saves the restore a create (measured: always yielding left
 * image starts short of 4-6,000 spares, 3-4 s each). */
#define YIELD_MAX_MS 3000 /* a restore longer than this no longer holds the others */

void restoring_begin(struct snap_spares *ss)
{
    pthread_mutex_lock(&ss->rest_mu);
    atomic_fetch_add(&ss->restoring, 1);
    pthread_mutex_unlock(&ss->rest_mu);
}

void restoring_end(struct snap_spares *ss)
{
    pthread_mutex_lock(&ss->rest_mu);
    if (atomic_fetch_sub(&ss->restoring, 1) == 1) {
        atomic_store(&ss->restore_short, 0);
    }
    pthread_cond_broadcast(&ss->rest_cv);
    pthread_mutex_unlock(&ss->rest_mu);
}

/* A restore found its spares empty: wake the recyclers that wait in restore_yield(). */
void restore_mark_short(struct snap_spares *ss)
{
    pthread_mutex_lock(&ss->rest_mu);
    atomic_store(&ss->restore_short, 1);
    pthread_cond_broadcast(&ss->rest_cv);
    pthread_mutex_unlock(&ss->rest_mu);
}

/* 1 while the background threads of ss should wait for the restores that run (see above). */
static int must_yield(struct snap_spares *ss, int feed_short)
{
    return atomic_load(&ss->restoring) > 0 && !(feed_short && atomic_load(&ss->restore_short)) &&
           !atomic_load(&ss->stopping);
}

/* Wait (at most YIELD_MAX_MS) until no restore runs; unless one is short of spares and
 * feed_short is set (the recycler: see above), or ss is being freed. Never call it from a
 * restore. ss NULL: no wait. */
static void restore_yield(struct snap_spares *ss, int feed_short)
{
    if (!ss || !must_yield(ss, feed_short)) {
        return;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += YIELD_MAX_MS / 1000;
    pthread_mutex_lock(&ss->rest_mu);
    while (must_yield(ss, feed_short)) {
        if (pthread_cond_timedwait(&ss->rest_cv, &ss->rest_mu, &dl) == ETIMEDOUT) {
            break;
        }
    }
    pthread_mutex_unlock(&ss->rest_mu);
}

/* Background threads alive now (for the timing log of a snapshot). */
int bg_running(struct snap_spares *ss)
{
    pthread_mutex_lock(&ss->mu);
    int n = ss->running;
    pthread_mutex_unlock(&ss->mu);
    return n;
}

/* Unlink the threads of ss whose fn has returned (caller holds ss->mu). Their joins are left to
 * the caller (bg_join), outside the lock. */
static struct bg_thread *bg_take_done_locked(struct snap_spares *ss)
{
    struct bg_thread *done = NULL;
    for (struct bg_thread **pp = &ss->threads; *pp;) {
        struct bg_thread *t = *pp;
        if (t->done) {
            *pp = t->next;
            t->next = done;
            done = t;
        } else {
            pp = &t->next;
        }
    }
    return done;
}

/* Join and free a list from bg_take_done_locked(). Each has returned from fn: a join only waits
 * for its last instructions. */
static void bg_join(struct bg_thread *list)
{
    while (list) {
        struct bg_thread *t = list;
        list = t->next;
        pthread_join(t->th, NULL);
        free(t);
    }
}

static void *bg_main(void *arg)
{
    struct bg_thread *t = arg;
    struct snap_spares *ss = t->ss;
    t->fn(t->arg);
    pthread_mutex_lock(&ss->mu);
    t->done = 1;
    ss->running--;
    pthread_cond_broadcast(&ss->bg_cv);
    pthread_mutex_unlock(&ss->mu);
    return NULL;
}

/* Start fn(arg) on a thread of ss, joined by the next bg_start, snap_background_wait or
 * snap_ctx_free that finds it done. -1 if it could not (fn is not called). May be called with a
 * spare_dir's mu held. */
static int bg_start(struct snap_spares *ss, void *(*fn)(void *), void *arg)
{
    struct bg_thread *t = xcalloc(1, sizeof(*t));
    t->ss = ss;
    t->fn = fn;
    t->arg = arg;
    pthread_mutex_lock(&ss->mu);
    struct bg_thread *done = bg_take_done_locked(ss);
    int rc = pthread_create(&t->th, NULL, bg_main, t);
    if (rc == 0) {
        ss->running++;
        t->next = ss->threads;
        ss->threads = t;
    }
    pthread_mutex_unlock(&ss->mu);
    bg_join(done);
    if (rc != 0) {
        free(t);
        return -1;
    }
    return 0;
}

void snap_background_wait(struct snap_ctx *ctx)
{
    struct snap_spares *ss = &ctx->spares;
    pthread_mutex_lock(&ss->mu);
    while (ss->running > 0) {
        pthread_cond_wait(&ss->bg_cv, &ss->mu);
    }
    struct bg_thread *done = bg_take_done_locked(ss);
    pthread_mutex_unlock(&ss->mu);
    bg_join(done);
}

void spares_fini(struct snap_spares *ss)
{
    /* The fillers stop at their next spare; the janitors finish their tree (an in-place
     * restore's trash is found again only by a fresh restore into the same path) without
     * yielding to anybody. Nobody starts a thread any more: no operation runs. */
    pthread_mutex_lock(&ss->rest_mu);
    atomic_store(&ss->stopping, 1);
    pthread_cond_broadcast(&ss->rest_cv);
    pthread_mutex_unlock(&ss->rest_mu);
    pthread_mutex_lock(&ss->mu);
    while (ss->running > 0) {
        pthread_cond_wait(&ss->bg_cv, &ss->mu);
    }
    struct bg_thread *done = bg_take_done_locked(ss);
    pthread_mutex_unlock(&ss->mu);
    bg_join(done);
    while (ss->dirs) {
        struct spare_dir *p = ss->dirs;
        ss->dirs = p->next;
        if (p->dfd >= 0) {
            close(p->dfd);
        }
        free(p->names[SP_FILE]);
        free(p->names[SP_DIR]);
        free(p->dir);
        pthread_mutex_destroy(&p->mu);
        free(p);
    }
    pthread_mutex_destroy(&ss->mu);
    pthread_cond_destroy(&ss->bg_cv);
    pthread_mutex_destroy(&ss->rest_mu);
    pthread_cond_destroy(&ss->rest_cv);
}

/* The spare directory of ss for the store directory store_dir (created on first use; freed
 * with ss). */
struct spare_dir *spares_for(struct snap_spares *ss, const char *store_dir)
{
    char *dir = NULL;
    const char *slash = strrchr(store_dir, '/');
    if (!slash) {
        dir = xstrdup(SPARE_DIR + 1);
    } else {
        dir = xasprintf("%.*s%s", (int)(slash - store_dir), store_dir, SPARE_DIR);
    }
    pthread_mutex_lock(&ss->mu);
    struct spare_dir *p = ss->dirs;
    while (p && strcmp(p->dir, dir) != 0) {
        p = p->next;
    }
    if (!p) {
        p = xcalloc(1, sizeof(*p));
        p->ss = ss;
        pthread_mutex_init(&p->mu, NULL);
        p->dir = dir;
        dir = NULL;
        p->dfd = -1;
        p->next = ss->dirs;
        ss->dirs = p;
    }
    pthread_mutex_unlock(&ss->mu);
    free(dir);
    return p;
}

static void spares_push_locked(struct spare_dir *p, int kind, uint64_t name)
{
    if (p->n[kind] == p->cap[kind]) {
        p->cap[kind] = p->cap[kind] ? p->cap[kind] * 2 : 1024;
        p->names[kind] = xrealloc(p->names[kind], p->cap[kind] * sizeof(*p->names[kind]));
    }
    p->names[kind][p->n[kind]++] = name;
}

static void spare_name(int kind, uint64_t v, char name[24])
{
    snprintf(name, 24, "%s%llx", kind == SP_DIR ? "d-" : "f-", (unsigned long long)v);
}

/* Make sure the spare directory is open and still linked (someone may have deleted the tree
 * it lives in); on (re)open, take stock of the spares a previous process left. */
void spares_check(struct spare_dir *p)
{
    pthread_mutex_lock(&p->mu);
    p->users++;
    if (atomic_load(&p->ss->max) == 0) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    struct stat sb;
    /* closed only when no operation of a sibling store uses it (it holds no lock of ours) */
    if (p->dfd >= 0 && p->users == 1 && (fstat(p->dfd, &sb) != 0 || sb.st_nlink == 0)) {
        close(p->dfd);
        p->dfd = -1;
    }
    if (p->dfd < 0) {
        p->n[SP_FILE] = p->n[SP_DIR] = 0;
        p->next_name = 0;
        p->gen++;
        if (mkdir(p->dir, 0700) == 0 || errno == EEXIST) {
            p->dfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (p->dfd >= 0) {
            fchmod(p->dfd, 0700); /* no set-gid bit: spares get our group */
            p->dev = fstat(p->dfd, &sb) == 0 ? sb.st_dev : 0;
        }
        int fd = p->dfd >= 0 ? dup(p->dfd) : -1;
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            const char *nm = de->d_name;
            if (strncmp(nm, TRASH_PREFIX, 2) == 0) {
                /* a discarded tree a previous process did not finish recycling */
                trash_later(p->ss, xasprintf("%s/%s", p->dir, nm), 1);
                continue;
            }
            int kind = strncmp(nm, "d-", 2) == 0 ? SP_DIR : SP_FILE;
            char *end = NULL;
            if ((kind == SP_FILE && strncmp(nm, "f-", 2) != 0) || !nm[2] || strlen(nm) > 18 ||
                nm[2] == '-' || nm[2] == '+' || nm[2] == ' ') {
                continue;
            }
            nm += 2;
            uint64_t v = strtoull(nm, &end, 16);
            if (*end == 0) {
                spares_push_locked(p, kind, v);
                if (v >= p->next_name) {
                    p->next_name = v + 1;
                }
            }
        }
        if (d) {
            closedir(d);
        } else if (fd >= 0) {
            close(fd);
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/* The end of an operation that called spares_check(). */
void spares_release(struct spare_dir *p)
{
    pthread_mutex_lock(&p->mu);
    p->users--;
    pthread_mutex_unlock(&p->mu);
}

struct filler {
    struct spare_dir *p;
    int dfd; /* our own dup of the spare directory */
    unsigned gen;
};

static void *filler_main(void *arg)
{
    struct filler *f = arg;
    struct spare_dir *p = f->p;
    pthread_setname_np(pthread_self(), "snap-filler");
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int kind = p->n[SP_FILE] < p->want[SP_FILE] ? SP_FILE
                   : p->n[SP_DIR] < p->want[SP_DIR] ? SP_DIR
                                                    : -1;
        if (atomic_load(&p->ss->stopping)) {
            kind = -1; /* the ctx is being freed: what is made so far stays for the next one */
        }
        if (p->gen != f->gen || kind < 0) {
            if (p->gen == f->gen) {
                p->filling = 0;
            }
            pthread_mutex_unlock(&p->mu);
            break;
        }
        uint64_t v = p->next_name++;
        pthread_mutex_unlock(&p->mu);
        restore_yield(p->ss, 0);
        char nm[24];
        spare_name(kind, v, nm);
        int ok = 0;
        if (kind == SP_FILE) {
            int fd = openat(f->dfd, nm, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, SPARE_MODE);
            if (fd >= 0) {
                fchmod(fd, SPARE_MODE); /* whatever the umask: restores skip their fchmod */
                close(fd);
                ok = 1;
            }
        } else {
            ok = mkdirat(f->dfd, nm, 0700) == 0;
        }
        if (!ok && errno == EEXIST) {
            continue;
        }
        pthread_mutex_lock(&p->mu);
        if (!ok) {
            /* the directory is gone or full: stop until the next operation looks again */
            if (p->gen == f->gen) {
                p->filling = 0;
                p->want[SP_FILE] = p->want[SP_DIR] = 0;
            }
            pthread_mutex_unlock(&p->mu);
            break;
        }
        if (p->gen == f->gen) {
            spares_push_locked(p, kind, v);
        }
        pthread_mutex_unlock(&p->mu);
    }
    close(f->dfd);
    free(f);
    return NULL;
}

/* Ask for at least files spare files and dirs spare directories (capped); starts a filler if
 * none runs. */
void spares_kick(struct spare_dir *p, size_t files, size_t dirs)
{
    size_t max = atomic_load(&p->ss->max);
    size_t want[2] = {files < max ? files : max, dirs < max ? dirs : max};
    pthread_mutex_lock(&p->mu);
    for (int k = 0; k < 2; k++) {
        if (want[k] > p->want[k]) {
            p->want[k] = want[k];
        }
    }
    if (!p->filling && p->dfd >= 0 &&
        (p->n[SP_FILE] < p->want[SP_FILE] || p->n[SP_DIR] < p->want[SP_DIR])) {
        struct filler *f = xcalloc(1, sizeof(*f));
        f->p = p;
        f->gen = p->gen;
        f->dfd = dup(p->dfd);
        if (f->dfd >= 0 && bg_start(p->ss, filler_main, f) == 0) {
            p->filling = 1;
        } else {
            if (f->dfd >= 0) {
                close(f->dfd);
            }
            free(f);
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/* Pop a spare name of kind. 0, or -1 if the spare directory is empty or unusable. */
static int spare_pop(struct spare_dir *p, int kind, char name[24], int *sparedfd)
{
    if (!p || atomic_load(&p->ss->max) == 0) {
        return -1;
    }
    pthread_mutex_lock(&p->mu);
    if (p->n[kind] == 0 || p->dfd < 0) {
        pthread_mutex_unlock(&p->mu);
        return -1;
    }
    spare_name(kind, p->names[kind][--p->n[kind]], name);
    *sparedfd = p->dfd;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* Take a spare file: an fd open for reading and writing on an empty file of ours with
 * SPARE_MODE, and its name in name. -1 if the spare directory is empty or unusable. The caller
 * renames it away or gives it back (spare_put). The spare directory fd stays valid until the
 * caller's spares_release(). */
int spare_take(struct spare_dir *p, char name[24], int *sparedfd)
{
    for (int tries = 0; tries < 4; tries++) {
        int dfd = -1;
        if (spare_pop(p, SP_FILE, name, &dfd) != 0) {
            return -1;
        }
        /* Not O_TRUNC: ext4 marks a file truncated to 0 for a forced block allocation and
         * writeback on close (auto_da_alloc), which would cost every restored file an I/O
         * submission. */
        int fd = openat(dfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        struct stat sb;
        int ok = fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_nlink == 1 &&
                 sb.st_size == 0 && (sb.st_mode & 07777) == SPARE_MODE && sb.st_uid == geteuid();
        if (ok) {
            *sparedfd = dfd;
            return fd;
        }
        if (fd >= 0) {
            unlinkat(dfd, name, 0); /* not a spare as we make them */
            close(fd);
        }
    }
    return -1;
}

/* For a walk over the spare directories that may lend own spares: own's device, its spare file
 * count (own_files, may be NULL) and the head of its set's list. -1 when own is closed or
 * spares are off. */
static int sibling_spares(struct spare_dir *own, dev_t *dev, size_t *own_files,
                          struct spare_dir **head)
{
    pthread_mutex_lock(&own->mu);
    int open_ = own->dfd >= 0;
    *dev = own->dev;
    if (own_files) {
        *own_files = open_ ? own->n[SP_FILE] : 0;
    }
    pthread_mutex_unlock(&own->mu);
    if (!open_ || atomic_load(&own->ss->max) == 0) {
        return -1;
    }
    pthread_mutex_lock(&own->ss->mu);
    *head = own->ss->dirs; /* nodes live as long as the set, their next never changes */
    pthread_mutex_unlock(&own->ss->mu);
    return 0;
}

/* Take a spare file from another open spare directory on own's file system when own is empty: the
 * sessions' spares and each repository's share one file system, and a rename from a sibling
 * spare directory costs what one from our own does, where a create may cost milliseconds (a restore
 * short of a few hundred spares took 3 s more). Like spare_take(); *from gets the spare directory
 * it came from, held (spares_release() after the rename; spare_put() to it if unused). */
int spare_borrow(struct spare_dir *own, char name[24], int *sparedfd, struct spare_dir **from)
{
    *from = NULL;
    dev_t dev;
    struct spare_dir *head = NULL;
    if (!own || sibling_spares(own, &dev, NULL, &head) != 0) {
        return -1;
    }
    for (struct spare_dir *p = head; p; p = p->next) {
        if (p == own) {
            continue;
        }
        pthread_mutex_lock(&p->mu);
        int ok = p->dfd >= 0 && p->dev == dev && p->n[SP_FILE] > 0;
        if (ok) {
            p->users++; /* its dfd stays open until spares_release */
        }
        pthread_mutex_unlock(&p->mu);
        if (!ok) {
            continue;
        }
        int fd = spare_take(p, name, sparedfd);
        if (fd >= 0) {
            *from = p;
            return fd;
        }
        spares_release(p);
    }
    return -1;
}

/* The spare files a restore from own's spares can take: its own and those spare_borrow() may
 * take from the other open spare directories on its file system. */
size_t spares_in_reach(struct spare_dir *own)
{
    size_t n = 0;
    dev_t dev;
    struct spare_dir *head = NULL;
    if (sibling_spares(own, &dev, &n, &head) != 0) {
        return 0;
    }
    for (struct spare_dir *p = head; p; p = p->next) {
        if (p == own) {
            continue;
        }
        pthread_mutex_lock(&p->mu);
        if (p->dfd >= 0 && p->dev == dev) {
            n += p->n[SP_FILE];
        }
        pthread_mutex_unlock(&p->mu);
    }
    return n;
}

/* Give an unused spare file back (its contents are dropped). */
void spare_put(struct spare_dir *p, int fd, const char *name)
{
    if (ftruncate(fd, 0) != 0 || fchmod(fd, SPARE_MODE) != 0) {
        return; /* leave it: the next scan of the directory takes it */
    }
    uint64_t v = strtoull(name + 2, NULL, 16);
    pthread_mutex_lock(&p->mu);
    spares_push_locked(p, SP_FILE, v);
    pthread_mutex_unlock(&p->mu);
}

/* Make the directory pfd/name (mode 0700, as mkdirat(..., 0700)) from a spare if there is
 * one. Returns like mkdirat. */
int spare_mkdir(struct spare_dir *p, int pfd, const char *name)
{
    char sname[24];
    int dfd = -1;
    struct stat sb;
    if (spare_pop(p, SP_DIR, sname, &dfd) == 0) {
        /* only an empty directory of ours */
        if (fstatat(dfd, sname, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(sb.st_mode) &&
            sb.st_nlink == 2 && sb.st_uid == geteuid() && sb.st_size <= 4096 &&
            renameat2(dfd, sname, pfd, name, RENAME_NOREPLACE) == 0) {
            return 0;
        }
        int saved = errno;
        unlinkat(dfd, sname, AT_REMOVEDIR); /* rare (EEXIST, EXDEV): drop it */
        if (saved == EEXIST) {
            errno = EEXIST;
            return -1;
        }
    }
    return mkdirat(pfd, name, 0700);
}

/* Give the complete file fd, the spare sparedfd/spare, the name dirfd/name (which must not
 * exist: a random or new name). If the rename fails (EXDEV: the store is a mount point of
 * its own), the bytes are copied into a file created under that name. 0 or ERR_IO; either way
 * the spare is no longer in the spare directory on success. */
int file_commit(int fd, int sparedfd, const char *spare, int dirfd, const char *name)
{
    if (renameat2(sparedfd, spare, dirfd, name, RENAME_NOREPLACE) == 0) {
        return 0;
    }
    if (errno == EEXIST) {
        return ERR_IO;
    }
    struct stat sb;
    loff_t off = 0;
    int rc = fstat(fd, &sb) == 0 ? 0 : ERR_IO;
    int nfd = rc == 0 ? openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444) : -1;
    if (nfd < 0) {
        return ERR_IO;
    }
    while (rc == 0 && off < sb.st_size) {
        ssize_t r = copy_file_range(fd, &off, nfd, NULL, (size_t)(sb.st_size - off), 0);
        if (r <= 0 && !(r < 0 && errno == EINTR)) {
            rc = ERR_IO;
        }
    }
    close(nfd);
    if (rc != 0) {
        unlinkat(dirfd, name, 0);
    }
    return rc;
}

/* write_file_atomic_d() into a spare of spares (NULL: none) when there is one, so that writing a
 * manifest or a pack index allocates no inode; the spare is renamed over name (replacing it).
 * Caller holds spares (spares_check). */
int write_new_file(struct spare_dir *sp, int dirfd, const char *name, const char *data, size_t len,
                   int durable)
{
    char spare[24];
    int sparedfd = -1;
    int fd = sp ? spare_take(sp, spare, &sparedfd) : -1;
    if (fd < 0) {
        return write_file_atomic_d(dirfd, name, data, len, durable);
    }
    int ok = write_all(fd, data, len) == 0 && (!durable || fsync(fd) == 0) &&
             fchmod(fd, 0444) == 0 && renameat(sparedfd, spare, dirfd, name) == 0;
    if (!ok) {
        spare_put(sp, fd, spare);
        close(fd);
        return write_file_atomic_d(dirfd, name, data, len, durable);
    }
    close(fd);
    if (durable && fsync(dirfd) != 0) {
        return ERR_IO;
    }
    return 0;
}

/*
 * Recycling: deleting a tree frees its inodes, which is what makes the next creates slow (see
 * above), and the filler then pays again to create the spares a restore takes. So a tree that
 * nobody but us can reach any more (the workspace of a destroyed sandbox, a restore's staging
 * directory) gives its plain files and empty directories to a spare directory of the same file
 * system instead: truncated, chmod-ed and renamed in, without freeing or allocating an inode.
 * A recycled inode ends up in another session's workspace, so it must carry nothing of its
 * past and nobody may still reach it:
 * - only a regular file with ONE link: a file with more links shares its inode with another
 *   name (a snapshot object, a pack a store adopted, a file an agent linked elsewhere), and
 *   truncating it would destroy that other file. Such files are only unlinked, never opened
 *   for writing;
 * - owned by our uid and gid (what spare_take accepts), no extended attributes (an ACL, a
 *   label, user.* data an agent chose), no inode flags but the file system's own (an agent
 *   may set sync/noatime/nodump... on its files);
 * - no open file description anywhere: a write lease is granted only when no other process
 *   (nor another fd of ours, e.g. a file read in flight) has the file open;
 * - directories: empty, ours, one block, no xattrs (a default ACL would reach the files
 *   later created in it).
 * Anything else is deleted as before. The spare directory that needs spares most gets each one, up
 * to the cap (snap_set_spare_max); past it, files are deleted. Not recycled: the trash of an
 * in-place restore (the workspace's sandbox still runs and may hold an O_PATH fd or a cwd that no
 * lease reveals) and snapshot stores (their objects may be read through open fds by a restore).
 */
#define RECYCLE_FLAGS_OK (FS_EXTENT_FL | FS_INLINE_DATA_FL) /* set by ext4 itself */
#define LEASE_SIG        SIGWINCH /* default action: ignore; the server never handles it */

struct recycler {
    struct snap_spares *ss; /* where the spares go; NULL: nowhere (everything is deleted) */
    uid_t euid;
    gid_t egid;
    uint64_t files, dirs; /* recycled */
};

/* The open spare directory on dev that should get a spare of kind: the largest shortfall against
 * its target first, else the fewest spares under the cap. Returned with users held (spares_release)
 * and its directory fd in *dfd. NULL if none has room. */
static struct spare_dir *recycle_spares(struct snap_spares *ss, dev_t dev, int kind, int *dfd)
{
    if (!ss) {
        return NULL;
    }
    size_t max = atomic_load(&ss->max);
    pthread_mutex_lock(&ss->mu);
    struct spare_dir *head = ss->dirs; /* nodes live as long as ss, their next never changes */
    pthread_mutex_unlock(&ss->mu);
    struct spare_dir *best = NULL;
    long long best_score = 0;
    for (struct spare_dir *p = head; p; p = p->next) {
        pthread_mutex_lock(&p->mu);
        if (p->dfd >= 0 && p->dev == dev && p->n[kind] < max) {
            long long need = (long long)p->want[kind] - (long long)p->n[kind];
            /* shortfall first (positive), then the emptiest (negative: fewer is better) */
            long long score = need > 0 ? need : -(long long)p->n[kind] - 1;
            if (!best || score > best_score) {
                best = p;
                best_score = score;
            }
        }
        pthread_mutex_unlock(&p->mu);
    }
    if (!best) {
        return NULL;
    }
    pthread_mutex_lock(&best->mu);
    if (best->dfd < 0) { /* closed meanwhile */
        pthread_mutex_unlock(&best->mu);
        return NULL;
    }
    best->users++;
    *dfd = best->dfd;
    pthread_mutex_unlock(&best->mu);
    return best;
}

/* Rename dfd/name (checked by the caller) into a spare directory as a spare of kind. 0 if done.
 * leasefd
 * (-1 for a directory) holds our write lease on the file: if somebody started opening it, the
 * lease is being broken, and after the rename the opener would hold a spare. Such a file is
 * unlinked from the spare directory instead (it is gone either way). The lease is released before
 * the spare is published, so a restore that takes it does not wait on it. */
static int recycle_into_spares(struct snap_spares *ss, dev_t dev, int kind, int dfd,
                               const char *name, int leasefd)
{
    int pdfd = -1;
    struct spare_dir *p = recycle_spares(ss, dev, kind, &pdfd);
    if (!p) {
        return -1;
    }
    pthread_mutex_lock(&p->mu);
    uint64_t v = p->next_name++;
    pthread_mutex_unlock(&p->mu);
    char nm[24];
    spare_name(kind, v, nm);
    int rc = renameat2(dfd, name, pdfd, nm, RENAME_NOREPLACE);
    if (rc == 0 && leasefd >= 0) {
        int broken = fcntl(leasefd, F_GETLEASE) != F_WRLCK;
        fcntl(leasefd, F_SETLEASE, F_UNLCK);
        if (broken) {
            LOG_INFO("snap: discard: %s was being opened while recycled; deleted instead", name);
            unlinkat(pdfd, nm, 0);
            rc = 1; /* removed, not recycled */
        }
    }
    pthread_mutex_lock(&p->mu);
    if (rc == 0) {
        spares_push_locked(p, kind, v);
    }
    p->users--;
    pthread_mutex_unlock(&p->mu);
    return rc == 0 ? 0 : rc > 0 ? 1 : -1;
}

/* 1 if fd has no extended attribute and no inode flag of its own. */
static int plain_inode(int fd)
{
    ssize_t xl = flistxattr(fd, NULL, 0);
    if (xl != 0 && !(xl < 0 && errno == ENOTSUP)) {
        return 0;
    }
    unsigned int fl = 0; /* the ioctl takes an int, whatever its header says */
    if (ioctl(fd, FS_IOC_GETFLAGS, &fl) == 0 && (fl & ~(unsigned int)RECYCLE_FLAGS_OK) != 0) {
        return 0;
    }
    return 1;
}

/* Recycle the regular file dfd/name (lstat data in sb) into a spare directory. 0 if done (or the
 * file is gone); else the caller unlinks it. A file with other links is never opened for writing;
 * one that somebody opens while we hold its lease may already be empty when they get it (it was
 * being deleted either way). */
static int recycle_file(struct recycler *rc, int dfd, const char *name, const struct stat *sb)
{
    /* The link count first, from the lstat: a shared inode is never even opened for writing. */
    if (!S_ISREG(sb->st_mode) || sb->st_nlink != 1 || sb->st_uid != rc->euid ||
        sb->st_gid != rc->egid || (!(sb->st_mode & S_IWUSR) && rc->euid != 0)) {
        return -1;
    }
    int fd = openat(dfd, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    int leased = 0, ok = 0;
    struct stat fsb;
    /* again on the inode we opened: still the same, still one link */
    if (fstat(fd, &fsb) != 0 || fsb.st_ino != sb->st_ino || fsb.st_dev != sb->st_dev ||
        !S_ISREG(fsb.st_mode) || fsb.st_nlink != 1 || fsb.st_uid != rc->euid) {
        goto out;
    }
    /* A lease break is signalled to us (SIGIO by default, which would end the process): a
     * signal ignored by default stands in, and the lease is polled (recycle_into_spares). */
    if (fcntl(fd, F_SETSIG, LEASE_SIG) != 0 || fcntl(fd, F_SETLEASE, F_WRLCK) != 0) {
        goto out; /* open elsewhere (or leases are off) */
    }
    leased = 1;
    if (!plain_inode(fd)) {
        goto out;
    }
    /* nlink is re-read: a link made since the fstat would show here (nobody should) */
    if ((fsb.st_size > 0 && ftruncate(fd, 0) != 0) || fstat(fd, &fsb) != 0 || fsb.st_nlink != 1 ||
        ((fsb.st_mode & 07777) != SPARE_MODE && fchmod(fd, SPARE_MODE) != 0)) {
        goto out;
    }
    if (fcntl(fd, F_GETLEASE) != F_WRLCK) {
        goto out; /* somebody is opening it: deleted by the caller, as before */
    }
    int r = recycle_into_spares(rc->ss, fsb.st_dev, SP_FILE, dfd, name, fd);
    leased = 0; /* released there when the rename was done */
    if (r < 0) {
        leased = 1; /* not renamed: still ours, still leased */
    } else if (r == 0) {
        rc->files++;
    }
    ok = r >= 0; /* recycled, or already gone */
out:
    if (leased) {
        fcntl(fd, F_SETLEASE, F_UNLCK);
    }
    close(fd); /* also ends ext4's forced writeback of a truncated file: it is empty now */
    return ok ? 0 : -1;
}

/* Recycle the directory cfd (= dfd/name, emptied by the caller) into a spare directory. 0 if done.
 */
static int recycle_dir(struct recycler *rc, int cfd, int dfd, const char *name)
{
    struct stat sb;
    if (fstat(cfd, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_nlink != 2 || sb.st_uid != rc->euid ||
        sb.st_gid != rc->egid || sb.st_size > 4096 || !plain_inode(cfd)) {
        return -1;
    }
    if ((sb.st_mode & 07777) != 0700 && fchmod(cfd, 0700) != 0) {
        return -1;
    }
    if (recycle_into_spares(rc->ss, sb.st_dev, SP_DIR, dfd, name, -1) != 0) {
        return -1;
    }
    rc->dirs++;
    return 0;
}

static int recycle_file_op(void *ctx, int dfd, const char *name, const struct stat *sb)
{
    /* Truncating frees blocks (a discard to the device on this mount): wait while a restore
     * that has its spares runs. One short of spares does not wait: each recycled file is one
     * create less for it (measured: always yielding left image starts short of 4-6,000
     * spares, 3-4 s each). */
    struct recycler *rc = ctx;
    restore_yield(rc->ss, 1);
    return recycle_file(rc, dfd, name, sb);
}

static int recycle_dir_op(void *ctx, int fd, int dfd, const char *name)
{
    return recycle_dir(ctx, fd, dfd, name);
}

/* Remove dfd/name (any type, its whole tree however deep, never following a symlink: an
 * iterative fswalk_rm), recycling what can be (see above). 0, or -1 if something stayed. */
static int recycle_at(struct recycler *rc, int dfd, const char *name)
{
    struct fswalk_rm_ops ops = {.file = recycle_file_op, .dir = recycle_dir_op, .ctx = rc};
    return fswalk_rm(dfd, name, &ops) == 0 ? 0 : -1;
}

/* recycle_at() on a path. */
static int recycle_path(const char *path, struct recycler *rc)
{
    char *parent = NULL, *leaf = NULL;
    if (split_path(path, &parent, &leaf) != 0) {
        return -1;
    }
    int res = -1;
    int dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        res = recycle_at(rc, dfd, leaf);
        close(dfd);
    }
    free(parent);
    free(leaf);
    return res;
}

struct trash_job {
    struct snap_spares *ss;
    char *path;
    int recycle; /* nobody else can reach it: recycle its inodes (else delete) */
};

/* Remove the tree at path with rm_at (fd-relative, never following a symlink: a trash
 * directory holds what an agent made). */
static void rm_path(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : xstrdup(".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        rm_at(dfd, slash ? slash + 1 : path);
        close(dfd);
    }
    free(dir);
}

static void *trash_main(void *arg)
{
    struct trash_job *j = arg;
    pthread_setname_np(pthread_self(), j->recycle ? "snap-recycler" : "snap-trash");
    if (j->recycle) {
        struct recycler rc = {.ss = j->ss, .euid = geteuid(), .egid = getegid()};
        int64_t t0 = clock_mono_us();
        recycle_path(j->path, &rc);
        if (rc.files + rc.dirs > 0) {
            LOG_INFO("snap: discarded %s: %llu files and %llu dirs recycled as spares, %lld ms",
                     j->path, (unsigned long long)rc.files, (unsigned long long)rc.dirs,
                     (long long)(clock_mono_us() - t0) / 1000);
        }
    } else {
        rm_path(j->path);
    }
    free(j->path);
    free(j);
    return NULL;
}

/* Delete the tree at path (ours: a trash or staging directory) in the background, or now if
 * no thread can be started. Takes ownership of path. */
void trash_later(struct snap_spares *ss, char *path, int recycle)
{
    struct trash_job *j = xcalloc(1, sizeof(*j));
    j->ss = ss;
    j->path = path;
    j->recycle = recycle;
    if (bg_start(ss, trash_main, j) != 0) {
        rm_path(path);
        free(path);
        free(j);
    }
}

/* The tree of a discard waits in the directory of a spare directory of its file system, named
 * TRASH_PREFIX<random>: out of its caller's way at once, recycled by a janitor thread, and
 * found again by spares_check() after a crash. */

int snap_discard_tree(struct snap_ctx *ctx, const char *path)
{
    struct snap_spares *ss = ctx ? &ctx->spares : NULL;
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        return errno == ENOENT ? 0 : ERR_IO;
    }
    if (S_ISDIR(sb.st_mode)) {
        int pdfd = -1;
        struct spare_dir *p = recycle_spares(ss, sb.st_dev, SP_FILE, &pdfd);
        if (p) {
            char rnd[17], nm[24];
            util_random_hex(rnd, 8);
            snprintf(nm, sizeof(nm), TRASH_PREFIX "%s", rnd);
            char *tpath = NULL;
            if (renameat(AT_FDCWD, path, pdfd, nm) == 0) {
                tpath = xasprintf("%s/%s", p->dir, nm);
            }
            spares_release(p);
            if (tpath) {
                trash_later(ss, tpath, 1);
                return 0;
            }
        }
    }
    /* no spares with room on its file system (or not a directory): now, recycling if it can */
    struct recycler rc = {.ss = ss, .euid = geteuid(), .egid = getegid()};
    return recycle_path(path, &rc) == 0 ? 0 : ERR_IO;
}
