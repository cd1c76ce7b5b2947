/*
 * snap_int.h - internals shared by the files of workspace/snap/ (never by its callers).
 *
 * The snapshot store: incremental immutable snapshots, a content-addressed object store +
 * manifests.
 *
 * Manifest format (snaps/<id>.m, text, one entry a line, fields separated by one space):
 *   sessiond-snap 1 <created_ms> <started_ns> <dev> <root_ino> <files> <entries> <bytes>
 *                 <new_bytes> <hashed> <duration_us> <label>
 *   <type f|d|l> <mode octal> <uid> <gid> <size> <mtime_ns> <ctime_ns> <ino> <hash|target|-> <path>
 * Paths, symlink targets and the label are escaped: bytes <= 0x20, 0x7f and '%' become %XX;
 * an empty string is "-" (and "-" itself is "%2D"). Entries are in pre-order (a directory
 * before its contents). The root directory itself is not an entry.
 *
 * Invariants:
 * - An object's name is the SHA-256 of its bytes; objects are created complete (written into
 *   a spare inode or an O_TMPFILE, then renamed/linked to their name) and never modified, so
 *   a manifest that names an object names those bytes. A manifest is written after all its
 *   objects exist (see snap_set_durable for power loss).
 * - An object is either a file objects/xx/<hash> or a range of a pack (packs/p-*.pack, listed
 *   in its .idx; see "packs" below). A pack is complete before its index exists, and never
 *   modified; manifests do not say where an object lives.
 * - Workspace files are never hard-linked to objects: restore copies (copy_file_range).
 * - The stat cache is only a hint: an entry is trusted only if size, mtime, ctime and inode
 *   all match and its mtime is older than the cache's creation minus RACY_NS (the "racily
 *   clean" rule of git: a file modified within the same timestamp tick as our stat could
 *   otherwise keep identical stat data with new contents).
 * - GC treats every manifest and the cache as roots.
 * - Restores never write through a symlink (openat2 beneath the root, O_NOFOLLOW) nor through
 *   a hard link (a file is rewritten in place only if its link count is 1); a spare is used
 *   only if it is still an empty, singly-linked file (or empty directory) of ours.
 *
 * Threads: the public functions take st->lock. Inside, walking, hashing and copying are
 * spread over a few short-lived worker threads that share nothing but an atomic job index and
 * atomic counters. Spare-inode directories (shared by sibling stores, each guarded by its own
 * mutex) are topped up by filler threads, and trash is deleted (or recycled into the spare
 * directories) by janitor threads; both belong to the snap_ctx's spares (struct snap_spares),
 * which joins them (snap_background_wait() waits for them, snap_ctx_free() joins them all).
 * Fillers wait while a restore or a snapshot runs, recyclers unless it is short of spares
 * (restore_yield).
 */
#ifndef SESSIOND_SNAP_INT_H
#define SESSIOND_SNAP_INT_H

#include "workspace/snap/snap.h"

#include "common/buf.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <openssl/evp.h>

#define RACY_NS        (100LL * 1000 * 1000) /* 100 ms: well above a jiffy-coarse timestamp */
#define SMALL_FILE     (4u << 20)            /* read whole files up to this size */
#define CHUNK          (1u << 20)
#define MAX_WORKERS    4
#define PAR_MIN_JOBS   32
#define MANIFEST_MAGIC "sessiond-snap"

struct snap_store {
    pthread_mutex_t lock;
    char *dir;
    int dirfd;       /* the store directory */
    int objfd;       /* objects/ */
    int snapfd;      /* snaps/ */
    int packfd;      /* packs/ */
    struct pidx *px; /* pack index, loaded on first use (pidx_load); guarded by lock */
    int64_t next_seq;
    struct snap_ctx *ctx;     /* what it was opened through; outlives it */
    struct spare_dir *spares; /* spare inodes (shared with sibling stores) */
    /* One instance per directory in its ctx (ctx->stores), so that every user of a store
     * shares its lock: a GC must never run while another writer links objects that its
     * manifest does not name yet, and two creates must not pick the same id. */
    dev_t dev;
    ino_t ino;
    int refs;                /* guarded by ctx->stores_mu */
    struct snap_store *next; /* guarded by ctx->stores_mu */
};

/* One workspace entry (or manifest line). */
struct ent {
    char *path;         /* relative, no leading '/'; owned */
    char *target;       /* symlink target; owned; NULL otherwise */
    char type;          /* 'f' 'd' 'l'; 'x' (walk only): left out, see walk_pre */
    unsigned char flag; /* per-operation marks */
    unsigned char omit; /* type 'x' (walk only): OMIT_* */
    uint32_t mode;
    uint32_t uid, gid;
    uint64_t size;
    int64_t mtime_ns, ctime_ns;
    uint64_t ino;
    uint32_t nlink; /* from the walk; not stored */
    uint64_t poff;  /* F_PACKED: offset of its new object in the snapshot's pack */
    char hash[65];
};

enum {
    F_NONE = 0,
    F_HASH = 1,
    F_GONE = 2,
    F_PRESENT = 4,
    F_REWRITE = 8,
    F_FIXMETA = 16,
    F_PACKED = 32
};

/* Why the walk left an entry out of snapshots (type 'x'). */
enum { OMIT_NONE = 0, OMIT_SPECIAL, OMIT_DEEP, OMIT_LONG, OMIT_BIG };

struct entv {
    struct ent *v;
    size_t n, cap;
    /* path -> index + 1 (0 = empty slot), open addressing */
    uint32_t *map;
    size_t mapcap;
};

struct mhdr {
    int64_t created_ms, started_ns;
    uint64_t dev, root_ino, files, entries, bytes, new_bytes, hashed;
    int64_t duration_us;
    char label[128];
};

/* A cached handle on the parent directory of the entries being processed (one per thread). */
struct pdir {
    char *path; /* "" = root */
    int fd;
};

#define SPARE_MODE 0644 /* the usual mode of a file: most restored files need no chmod */

enum { SP_FILE = 0, SP_DIR = 1 }; /* kinds of spares: empty files "f-<hex>", empty dirs "d-<hex>" */

/* One spare-inode directory (<parent of a store>/.snap-spare), shared by the stores beside it. */
struct spare_dir {
    struct snap_spares *ss; /* the set it belongs to; immutable */
    pthread_mutex_t mu;
    char *dir;              /* immutable */
    int dfd;                /* the spare directory, -1 until opened; guarded by mu */
    unsigned gen;           /* bumped when dfd is reopened; guarded by mu */
    uint64_t *names[2];     /* spares ready to take, per kind (stacks); guarded by mu */
    size_t n[2], cap[2];    /* guarded by mu */
    uint64_t next_name;     /* next name to create (shared by the kinds); guarded by mu */
    size_t want[2];         /* target sizes; guarded by mu */
    int filling;            /* a filler thread runs; guarded by mu */
    int users;              /* operations between spares_check and spares_release; guarded by mu */
    dev_t dev;              /* file system of dfd (recycling only goes there); guarded by mu */
    struct spare_dir *next; /* set before it is published in ss->dirs, then immutable */
};

/* A background thread of a snap_spares (a filler or a janitor), joined by whoever finds it done
 * (bg_start, snap_background_wait, snap_ctx_free). */
struct bg_thread {
    struct bg_thread *next; /* guarded by ss->mu */
    struct snap_spares *ss;
    pthread_t th;
    int done; /* fn returned; guarded by ss->mu */
    void *(*fn)(void *);
    void *arg;
};

/* The spare directories of a snap_ctx, the threads that fill them or recycle dead trees into them,
 * and the restores (and snapshots) running now, which those threads yield to. Lock order: a
 * spare_dir's mu, then mu; rest_mu is taken alone. */
struct snap_spares {
    pthread_mutex_t mu;        /* guards dirs, threads, running */
    pthread_cond_t bg_cv;      /* a background thread ended */
    struct spare_dir *dirs;    /* created on first use, freed with the ctx */
    struct bg_thread *threads; /* started and not joined yet */
    int running;               /* background threads whose fn has not returned */
    _Atomic int stopping;      /* snap_ctx_free began: fillers stop, nobody yields */
    _Atomic size_t max;        /* cap of each spare directory (snap_set_spare_max); 0: none */
    pthread_mutex_t rest_mu;   /* with rest_cv: restore_yield's wait */
    pthread_cond_t rest_cv;
    _Atomic int restoring;     /* restores/snapshots running now; written under rest_mu */
    _Atomic int restore_short; /* a running restore found its spares empty */
};

/* The shared side of a set of stores (snap.h). */
struct snap_ctx {
    struct snap_spares spares;
    _Atomic int durable;     /* snap_set_durable */
    _Atomic size_t pack_min; /* snap_set_pack_min */
    pthread_mutex_t stores_mu;
    struct snap_store *stores; /* open stores, one per directory; guarded by stores_mu */
};

struct par_job {
    size_t n;
    /* Optional grouping: jobs [starts[g], starts[g + 1]) go to one thread together (files of
     * one directory, so that threads do not fight over the same directory's lock). */
    const size_t *starts;
    size_t ngroups;
    _Atomic size_t next;
    size_t par_min; /* fewer jobs than this run on the calling thread (0: PAR_MIN_JOBS) */
    int cpus;       /* CPUs to count with (0: ask sysconf; a chrooted walk child cannot) */
    void *ctx;
    void (*fn)(void *ctx, size_t i, void *tls);
    void *(*tls_new)(void *ctx);
    void (*tls_free)(void *tls);
};

/*
 * Why packs: a snapshot that adds thousands of objects (the first snapshot of a store, an
 * `npm install`) would create thousands of inodes, and on ext4 without a journal every create
 * scans past the inodes freed in the last minutes (see the spare directories above): 10,000
 * creates took 3.4-6.9 s under load right after a mass delete. A snapshot (one that reads at least
 * pack_min files (snap_set_pack_min: by default any) instead appends its new small objects (up to
 * SMALL_FILE) to one pack file, packs/p-<random>.pack, written in parallel at reserved offsets, and
 * lists them in packs/p-<random>.idx ("sessiond-pack 1 <count> <size>" then "<hash> <offset>
 * <length>" a line), written atomically after the pack is complete and before the manifest. A pack
 * without an index is an unfinished one (a crash) and is deleted by the GC. Packs are
 * immutable like objects: a restore copies ranges out of them (copy_file_range), a seeded
 * store hard-links the seed's packs (never a workspace file). GC deletes packs with no live
 * object and rewrites those less than half live; their whole size counts for the quota.
 * Big files keep one object file each (loose objects), and so do all objects when packs are
 * off (snap_set_pack_min(0)).
 * Small snapshots pack too: in the server, a turn that changed 1% of 10,000 files made ~200
 * loose objects (its files plus git's), i.e. ~200 inode creates and ~140 mkdirs of objects/xx/
 * while a warm-spares refill and the spare filler ran: 300-530 ms instead of ~50 ms (perf: 35% of
 * all samples in find_inode_bit/recently_deleted). The pack and its index (and the manifest)
 * are written into spare inodes and renamed into place, so such a snapshot creates no inode.
 */
#define PACK_MAGIC "sessiond-pack"

struct ploc {
    char hash[65]; /* "" = empty slot */
    uint32_t pack; /* index into pidx.packs */
    uint64_t off, len;
};

struct pack {
    char name[32]; /* "p-<hex>" (files <name>.pack and <name>.idx) */
    int fd;        /* read-only */
    uint64_t size;
};

/* The packs of a store and where each packed object is (hash -> pack, offset, length; the
 * first pack listing a hash wins). Read by a store's worker threads, changed only by the
 * thread holding the store's lock while no worker runs. */
struct pidx {
    struct ploc *v;
    size_t cap, n;
    struct pack *packs;
    size_t np, pcap;
};

/* One pack being written by a snapshot's workers. The pack is written into a spare inode
 * when its spare directory has one (renamed to packs/<name>.pack by pack_finish), else created in
 * place: a snapshot then creates no inode at all (see the spare directories above). */
struct pwriter {
    pthread_mutex_t mu;
    int packfd;               /* the store's packs/ */
    struct spare_dir *spares; /* held by the caller's spares_check, or NULL */
    int fd;                   /* -1 until the first object; guarded by mu */
    int failed;               /* guarded by mu */
    char name[32];            /* set with fd */
    char spare[24];           /* fd is this spare of spares (sparedfd) until renamed; "" if not */
    int sparedfd;             /* valid until the caller's spares_release */
    int named;                /* packs/<name>.pack is ours (created or renamed there) */
    _Atomic uint64_t end;     /* next free offset */
};

/* io.c */
int64_t now_real_ns(void);

int64_t thread_cpu_us(void);

int64_t ts_ns(const struct timespec *t);

void ent_free_fields(struct ent *e);

void entv_free(struct entv *v);

struct ent *entv_push(struct entv *v);

uint64_t fnv1a(const char *s);

void entv_index(struct entv *v);

struct ent *entv_find(const struct entv *v, const char *path);

int esc_put(struct buf *b, const char *s);

/* Unescape s (NUL terminated) in place. Returns 0 or ERR_INVALID. */
int unesc(char *s);

int64_t id_seq(const char *id);

/* Open path beneath rootfd without following any symlink or leaving the tree. */
int open_beneath(int rootfd, const char *path, int flags, mode_t mode);

void pdir_close(struct pdir *p);

/* Set *leaf to the last component of path and return an fd on its parent (cached in pd;
 * do not close it). -1 with errno on failure. */
int pdir_get(struct pdir *pd, int rootfd, const char *path, const char **leaf);

int write_all(int fd, const void *p, size_t n);

/* Read a whole small file relative to dirfd. Caller frees *out. */
int read_file_at(int dirfd, const char *name, char **out, size_t *len);

/* Write data to dirfd/name atomically (tmp + rename; with fsyncs if durable). */
int write_file_atomic_d(int dirfd, const char *name, const char *data, size_t len, int durable);

int write_file_atomic(int dirfd, const char *name, const char *data, size_t len);

/* Make dirfd/name another name of fromfd/from (atomically replacing it). Best effort. */
void link_atomic(int fromfd, const char *from, int dirfd, const char *name);

/* spares.c */
void spares_init(struct snap_spares *ss);

/* Stop the fillers, let the janitors finish, join every background thread and free the spare
 * directories. */
void spares_fini(struct snap_spares *ss);

/* Background threads alive now (for the timing log of a snapshot). */
int bg_running(struct snap_spares *ss);

/* A restore or a snapshot begins / ends: the fillers and recyclers of ss wait meanwhile. */
void restoring_begin(struct snap_spares *ss);

void restoring_end(struct snap_spares *ss);

/* A restore found its spares empty: wake the recyclers that wait in restore_yield(). */
void restore_mark_short(struct snap_spares *ss);

/* The spare directory of ss for the store directory store_dir (created on first use; freed
 * with ss). */
struct spare_dir *spares_for(struct snap_spares *ss, const char *store_dir);

/* Make sure the spare directory is open and still linked (someone may have deleted the tree
 * it lives in); on (re)open, take stock of the spares a previous process left. */
void spares_check(struct spare_dir *p);

/* The end of an operation that called spares_check(). */
void spares_release(struct spare_dir *p);

/* Ask for at least files spare files and dirs spare directories (capped); starts a filler if
 * none runs. */
void spares_kick(struct spare_dir *p, size_t files, size_t dirs);

/* Take a spare file: an fd open for reading and writing on an empty file of ours with
 * SPARE_MODE, and its name in name. -1 if the spare directory is empty or unusable. The caller
 * renames it away or gives it back (spare_put). The spare directory fd stays valid until the
 * caller's spares_release(). */
int spare_take(struct spare_dir *p, char name[24], int *sparedfd);

/* Take a spare file from another open spare directory on own's file system when own is empty: the
 * sessions' spares and each repository's share one file system, and a rename from a sibling
 * spare directory costs what one from our own does, where a create may cost milliseconds (a restore
 * short of a few hundred spares took 3 s more). Like spare_take(); *from gets the spare directory
 * it came from, held (spares_release() after the rename; spare_put() to it if unused). */
int spare_borrow(struct spare_dir *own, char name[24], int *sparedfd, struct spare_dir **from);

/* The spare files a restore from own's spares can take: its own and those spare_borrow() may
 * take from the other open spare directories on its file system. */
size_t spares_in_reach(struct spare_dir *own);

/* Give an unused spare file back (its contents are dropped). */
void spare_put(struct spare_dir *p, int fd, const char *name);

/* Make the directory pfd/name (mode 0700, as mkdirat(..., 0700)) from a spare if there is
 * one. Returns like mkdirat. */
int spare_mkdir(struct spare_dir *p, int pfd, const char *name);

/* Give the complete file fd, the spare sparedfd/spare, the name dirfd/name (which must not
 * exist: a random or new name). If the rename fails (EXDEV: the store is a mount point of
 * its own), the bytes are copied into a file created under that name. 0 or ERR_IO; either way
 * the spare is no longer in the spare directory on success. */
int file_commit(int fd, int sparedfd, const char *spare, int dirfd, const char *name);

/* write_file_atomic_d() into a spare of spares (NULL: none) when there is one, so that writing a
 * manifest or a pack index allocates no inode; the spare is renamed over name (replacing it).
 * Caller holds spares (spares_check). */
int write_new_file(struct spare_dir *sp, int dirfd, const char *name, const char *data, size_t len,
                   int durable);

/* Delete the tree at path (ours: a trash or staging directory) in the background, or now if
 * no thread can be started. Takes ownership of path. */
void trash_later(struct snap_spares *ss, char *path, int recycle);

/* manifest.c */
void put_header(struct buf *b, const struct mhdr *h);

void put_ent(struct buf *b, const struct ent *e);

/* Split line (modified in place) into at most max space-separated fields. */
int split(char *line, char **f, int max);

int parse_u64(const char *s, uint64_t *out);

int load_manifest_at(int dirfd, const char *name, struct mhdr *h, struct entv *v);

/* Read only the header line of a manifest. */
int load_header_at(int dirfd, const char *name, struct mhdr *h);

/* walker.c: the walk of snap_create in a child that cannot write as root (see walker.c) */
#define WALK_UID 65534 /* "nobody": owns no file of the server's nor of a sandbox's */
#define WALK_GID 65534
struct walker;

/* Fork the walk child on the workspace rootfd (not closed; the child keeps its own copy).
 * *out is freed with walker_free(). 0 or ERR_IO. */
int walker_start(int rootfd, struct walker **out);

/* Receive the walk into out: what walk_tree() would have listed. 0, or ERR_IO if the child
 * failed (logged) or sent anything malformed. */
int walker_entries(struct walker *w, struct entv *out);

/* The files to read, in the order the child should open them (jobs borrowed until
 * walker_free). */
void walker_plan(struct walker *w, struct ent **jobs, size_t n);

/* *fd = a read-only fd on jobs[i] opened by the child (the caller closes it; each taken once),
 * or -1 if the child could not open it (vanished, swapped for a symlink). ERR_IO if the child
 * died or broke the protocol. Thread safe. */
int walker_fd(struct walker *w, size_t i, int *fd);

/* The child's pid (for tests that inspect it). */
pid_t walker_pid(const struct walker *w);

/* Kill and reap the child; close the fds nobody took. NULL is a no-op. */
void walker_free(struct walker *w);

/* What the child does before it walks (exposed for the test that attacks from inside it): name
 * it, reset signals, keep rootfd and sock only (as fds 3 and 4), chroot into rootfd, become
 * WALK_UID/WALK_GID with CAP_DAC_READ_SEARCH only (when root), RLIMIT_FSIZE 0, no_new_privs,
 * not dumpable, no open by handle (seccomp), die with parent. 0, or -1 with errno and *step naming
 * the failed step. */
int walker_confine(int rootfd, int sock, pid_t parent, const char **step);

/* create.c */
/* 1 if a manifest entry lies within the bounds of a snapshot. Manifests written before the
 * bounds existed may name deeper or longer paths: a restore leaves those out, as a snapshot
 * taken now would (and open_beneath could not reach them anyway). */
int within_bounds(const struct ent *e);

/* Group consecutive jobs with the same parent directory (at most 128 a group). Returns the
 * starts array (ngroups + 1 entries, caller frees). */
size_t *group_by_dir(struct ent **jobs, size_t n, size_t *ngroups);

/* Run fn(ctx, i) for i in [0, n) on up to MAX_WORKERS threads (the caller is one of them). */
void par_run(struct par_job *j);

/* Walk the tree under rootfd into out, in pre-order, without following symlinks or crossing
 * mount points, bounded (SNAP_MAX_*: see walk_pre). The top-level directories are walked in
 * parallel (a walk is stat-bound: on a loaded 2-core machine two walkers get twice the CPU), then
 * stitched back in order. */
int walk_tree(int rootfd, struct entv *out);

/* walk_tree() counting with cpus CPUs (0: ask sysconf). */
int walk_tree_n(int rootfd, struct entv *out, int cpus);

void obj_name(const char *hash, char out[68]);

/* Load the workspace stat cache if it describes this very workspace directory. */
int load_cache(struct snap_store *st, const struct stat *root, struct mhdr *h, struct entv *v);

/* The cache entry for e proves e's content hash without reading the file. */
int cache_trusted(const struct ent *c, const struct ent *e, int64_t cache_ns);

/* pack.c */
void pidx_free(struct pidx *x);

const struct ploc *pidx_get(const struct pidx *x, const char *hash);

/* Load every pack of the directory dfd into a new index. */
struct pidx *pidx_read(int dfd);

/* The store's pack index (loaded on first use). Caller holds st->lock. */
struct pidx *pidx_of(struct snap_store *st);

/* Drop the loaded index (it is read again on next use). Caller holds st->lock. */
void pidx_reset(struct snap_store *st);

/* Append len bytes to the pack (created on first use); *off gets their offset. */
int pack_append(struct pwriter *w, const void *data, size_t len, uint64_t *off);

/* Finish the pack of a snapshot: write its index (jobs flagged F_PACKED) and add it to the
 * store's index. On failure (or fail != 0) the pack is deleted. Caller holds st->lock. */
int pack_finish(struct snap_store *st, struct pwriter *w, struct ent **jobs, size_t nj, int fail);

/* Make our own the pack of the seed store (seedpacks = its packs/) holding hash: hard links
 * of its .pack then its .idx (immutable, like objects). 0 if the object is ours now,
 * ERR_NOT_FOUND if the seed has no pack with it. Caller holds st->lock. */
int pack_adopt(struct snap_store *st, int seedpacks, const struct pidx *seedx, const char *hash);

/* snap.c */
void snap_id_of(int64_t seq, char *out, size_t n);

/* Ids of all manifests, sorted by seq ascending. Caller frees *ids. */
int list_seqs(struct snap_store *st, int64_t **ids, size_t *n);

int delete_locked(struct snap_store *st, const char *id);

/* restore.c */
/* Remove name (any type, its whole tree, however deep) relative to dfd without following
 * symlinks. */
int rm_at(int dfd, const char *name);

/* Split path into its parent directory and last component (both new strings). */
int split_path(const char *path, char **parent, char **leaf);

#endif
