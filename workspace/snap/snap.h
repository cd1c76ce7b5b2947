/*
 * snap.h - incremental, immutable workspace snapshots (ext4 has no reflink, so no CoW).
 *
 * A snapshot store is a directory:
 *   objects/xx/<sha256>   file contents, content-addressed, read-only, shared by every
 *                         snapshot of the store (never hard-linked into a live workspace)
 *   packs/p-<r>.pack/.idx many small objects in one read-only file + its index (hash ->
 *                         offset, length): what a snapshot that reads many files writes
 *   snaps/<id>.m          one manifest per snapshot (text; see snap_int.h), immutable
 *   cache                 the last known state of the workspace (path -> stat -> hash)
 *
 * snap_create() walks the workspace and reads only files whose (size, mtime, ctime, inode)
 * differ from the cache, so a snapshot after a prompt that touched 1% of the files costs a
 * directory walk plus 1% of the hashing. snap_restore() of an existing workspace updates it
 * *in place* (the directory may be bind-mounted into a running sandbox), touching only
 * entries that differ from the snapshot: changed files are rewritten in place, entries to
 * remove are moved to a trash directory beside the workspace and deleted in the background.
 * A workspace that does not exist is built beside it (".<name>.snap-restore") and renamed
 * into place, so a crash never leaves half of one. Restored files are copies: an in-place
 * edit in the workspace can never reach the store.
 *
 * New files and directories (objects and restored entries) take pre-made empty inodes from a
 * spare directory (<parent of the store>/.snap-spare, topped up in the background, or from a
 * sibling spare directory on the same file system when it is empty), because ext4 without a
 * journal makes every create slow for minutes after a mass delete (see spares.c).
 * snap_discard_tree() deletes dead workspaces by recycling their inodes into those spare
 * directories. Callers must serialize restores into one workspace (the session actor does).
 *
 * Stores are opened through a context (struct snap_ctx) that its owner creates and frees (the
 * repository layer in the server, the test or the benchmark otherwise): it holds the settings
 * below, the open stores (one instance per directory) and the spares: the spare directories and
 * the background threads that fill them or delete and recycle dead trees, all joined when the
 * context is freed. Use one context per data directory: two would share spare directories
 * without knowing of each other.
 *
 * Limits (a sandbox builds any tree; docs/repos.md "Snapshots", Limits): a snapshot records
 * entries down to SNAP_MAX_DEPTH levels below the workspace whose path (relative) is at most
 * SNAP_MAX_PATH bytes, and regular files up to SNAP_MAX_FILE bytes; FIFOs, sockets and
 * devices are never recorded nor opened. What lies beyond is left out (counted in snap_info,
 * logged as a warning): the snapshot is still made. A restore makes the workspace identical
 * to the snapshot, so it removes such entries from a workspace it updates in place. Every
 * walk is iterative (common/fswalk), with a bounded number of open fds.
 *
 * Paths inside the workspace are resolved beneath it without following symlinks
 * (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so a sandbox that swaps a directory for a
 * symlink cannot make a restore write outside the workspace. The walk of snap_create (and the
 * opening of the files it reads) runs in a child process that cannot write as root (see
 * walker.c): chrooted into the workspace, uid 65534 with CAP_DAC_READ_SEARCH alone, holding the
 * workspace and a socket only; it passes the server the fds of the files to read, and the
 * server, root, writes the store.
 *
 * Thread safety: a store serializes its operations with an internal mutex; distinct stores
 * are independent. Operations use a few worker threads of their own for hashing/copying. A
 * context is thread safe; it must outlive every store opened through it.
 */
#ifndef SESSIOND_SNAP_H
#define SESSIOND_SNAP_H

#include <jansson.h>
#include <stdint.h>

struct snap_ctx;
struct snap_store;

/** Deepest entry a snapshot records (1 = a child of the workspace). */
#define SNAP_MAX_DEPTH 1024
/** Longest path (relative to the workspace, bytes) a snapshot records: PATH_MAX - 1, so that
 * every recorded entry can be opened by its path. */
#define SNAP_MAX_PATH 4095
/** Largest regular file a snapshot records (logical size: a sparse file counts whole). */
#define SNAP_MAX_FILE (1ULL << 30)

/** Figures of one snapshot (from its manifest header), filled by snap_create/snap_get. */
struct snap_info {
    char id[32];        /* "snap-000001"; ids increase with creation order */
    int64_t created_ms; /* wall clock */
    uint64_t files;     /* regular files in the snapshot */
    uint64_t entries;   /* files + directories + symlinks */
    uint64_t bytes;     /* logical size of its files */
    uint64_t hashed;    /* files read and hashed (cache misses) while creating it */
    uint64_t new_bytes; /* bytes of objects it added to the store */
    int64_t duration_us;
    char label[128]; /* caller's label (e.g. "turn 3"), truncated */
    /* Phases of snap_create (this call only; not stored in the manifest): */
    int64_t walk_us;     /* directory walk + stat cache lookups */
    int64_t hash_us;     /* reading, hashing and storing the changed files */
    int64_t manifest_us; /* writing the manifest and the cache */
    int64_t lock_us;     /* of walk_us: waiting for the store (another operation on it) */
    int64_t cache_us;    /* of walk_us: loading the stat cache */
    int64_t cpu_us;      /* CPU time of the calling thread (its workers not counted) */
    /* Entries of the workspace left out of this snapshot (see "Limits" above): */
    uint64_t special;  /* FIFOs, sockets, devices (never recorded) */
    uint64_t too_deep; /* deeper than SNAP_MAX_DEPTH (their contents not even walked) */
    uint64_t too_long; /* path longer than SNAP_MAX_PATH (likewise) */
    uint64_t too_big;  /* regular files larger than SNAP_MAX_FILE */
};

/** What a restore did. */
struct snap_restore_info {
    uint64_t copied; /* files copied out of the store */
    uint64_t copied_bytes;
    uint64_t kept;    /* files already identical in the workspace */
    uint64_t removed; /* workspace entries removed (a directory counts once) */
    int64_t duration_us;
    uint64_t rewritten; /* of copied: existing files rewritten in place (no new inode) */
    uint64_t spares;    /* of copied: new files that took a pre-made inode (see below) */
    int fresh;          /* 1: the workspace did not exist; built aside, renamed into place */
    /* Phases (microseconds): */
    int64_t walk_us;   /* manifest load + walk of the live workspace */
    int64_t remove_us; /* moving entries the snapshot lacks out of the workspace */
    int64_t dirs_us;   /* directories, symlinks, metadata fixes of kept entries */
    int64_t copy_us;   /* file contents (parallel) */
    int64_t meta_us;   /* directory modes/mtimes, the new cache, the final rename */
};

/** A new context with the default settings. *out is freed with snap_ctx_free(). */
int snap_ctx_new(struct snap_ctx **out);
/** Stop the spare fillers (the spares made so far stay for the next context), wait for the trees
 * being deleted or recycled, join every background thread, then free. No store may be open and
 * no operation running. NULL is a no-op. */
void snap_ctx_free(struct snap_ctx *ctx);

/** Open (creating if missing) the store at dir through ctx (the same instance for every opener
 * of that directory). *out is freed with snap_store_close(). */
int snap_store_open(struct snap_ctx *ctx, const char *dir, struct snap_store **out);
/** Close the store. NULL is a no-op. No operation may be running. */
void snap_store_close(struct snap_store *st);

/** Snapshot the directory workspace. label may be NULL. out (may be NULL) gets the figures.
 * ERR_NOT_FOUND if the workspace does not exist, ERR_IO on a file system failure. */
int snap_create(struct snap_store *st, const char *workspace, const char *label,
                struct snap_info *out);

/** Make workspace (created if missing) identical to snapshot id: contents, symlinks,
 * permission bits, mtimes and (when running as root) owners. Entries not in the snapshot
 * are removed. ERR_NOT_FOUND for an unknown id, ERR_IO if an object is missing or short. */
int snap_restore(struct snap_store *st, const char *id, const char *workspace,
                 struct snap_restore_info *out);

/** snap_restore(), then make seed_dir (created) a snapshot store ready to snapshot this
 * workspace cheaply: its stat cache describes the restored files and its first snap_create()
 * hard-links their objects from st instead of reading and hashing the files (used when a
 * session starts from a repository image: its first snapshot costs a directory walk). */
int snap_restore_seed(struct snap_store *st, const char *id, const char *workspace,
                      const char *seed_dir, struct snap_restore_info *out);

/** Delete the tree at path like util_rm_rf(), but give its plain files and empty directories
 * (one link, ours, no xattrs, open nowhere) to a spare directory of ctx on the same file system
 * instead of freeing their inodes (see spares.c "Recycling"). Only for a tree nobody else can
 * reach any more (the workspace of a destroyed sandbox, a build directory): never for a live
 * workspace, nor for a snapshot store. Files with several links (objects shared with a store)
 * are unlinked, never truncated. When a spare directory of ctx lives on the same file system,
 * the tree is renamed into it and recycled in the background (snap_background_wait() waits for
 * that; a crash or snap_ctx_free() leaves the rest to the next context that opens that spare
 * directory); else (or ctx NULL) it is removed now. Either way path is gone on return. 0, or
 * ERR_IO if something could not be removed. */
int snap_discard_tree(struct snap_ctx *ctx, const char *path);

/** Header figures of snapshot id. ERR_NOT_FOUND if unknown. */
int snap_get(struct snap_store *st, const char *id, struct snap_info *out);
/** The newest snapshot's id into id (size n). ERR_NOT_FOUND when the store is empty. */
int snap_latest(struct snap_store *st, char *id, size_t n);
/** *out = [{id, created_at(ms), label, files, bytes, new_bytes, hashed, duration_ms}, ...]
 * oldest first; a new reference the caller decrefs. */
int snap_list(struct snap_store *st, json_t **out);
/** Delete one snapshot's manifest (objects go at the next snap_gc). ERR_NOT_FOUND. */
int snap_delete(struct snap_store *st, const char *id);

/** Keep at most keep snapshots (0 = no count limit) and, when quota_bytes > 0, delete the
 * oldest until the objects fit in quota_bytes (the newest snapshot is always kept); then
 * collect garbage. *used_out (may be NULL) gets the object bytes left. */
int snap_prune(struct snap_store *st, int keep, uint64_t quota_bytes, uint64_t *used_out);
/** Delete objects no manifest (nor the workspace cache) references: object files, packs with
 * no live object; packs less than half live are rewritten with their live objects. Kept bytes
 * count packs whole. */
int snap_gc(struct snap_store *st, uint64_t *kept_bytes, uint64_t *freed_bytes);

/** 1 if s is a well-formed snapshot id ("snap-" + digits), else 0. */
int snap_valid_id(const char *s);

/** Durability of snap_create() through ctx (default 0). 0: an acknowledged snapshot
 * survives a crash or SIGKILL of the server (it is complete before its manifest exists; the
 * page cache outlives the process), not a power loss. 1: also a power loss -- syncfs() of the
 * store's file system before the manifest is written, then fsync of the manifest and its
 * directory (set it with `durability: full`). Restores are never synced: a workspace is as
 * durable as any file the agent writes. */
void snap_set_durable(struct snap_ctx *ctx, int on);

/** Snapshots that read at least n files (default 1: every snapshot that reads a file; 0:
 * never) put their new objects of up to 4 MiB into one pack file instead of one file each, so
 * that a first snapshot of 10,000 files creates two inodes, not 10,000, and a later one that
 * read a few hundred none (the pack, its index and the manifest take spare inodes; see
 * pack.c). For the stores of ctx; for benchmarks and tests. */
void snap_set_pack_min(struct snap_ctx *ctx, size_t n);

/** Upper bound of each spare directory of ctx (default 65536; 0 disables the spare directories:
 * every file is created where it lands). For benchmarks and tests. */
void snap_set_spare_max(struct snap_ctx *ctx, size_t n);
/** Wait until the background work started by the operations of ctx is done (spare inodes being
 * created, trees removed by restores being deleted). For tests and benchmarks. */
void snap_background_wait(struct snap_ctx *ctx);

#endif
