/*
 * fswalk.h - iterative, bounded walks over directory trees that a sandbox may have built.
 *
 * A sandbox can build any tree: 100,000 nested directories, symlink loops, FIFOs, sockets,
 * 255-byte names, directories of a million entries, unreadable directories, entries swapped
 * for symlinks while we look. Host code walks such trees as root, so a walk here
 *   - never recurses: its stack is a heap array of frames (a few bytes of machine stack,
 *     whatever the depth);
 *   - never enters a directory deeper than FSWALK_MAX_DEPTH below the root (callers bound
 *     what they record much lower; see fswalk_fn);
 *   - keeps at most FSWALK_MAX_FDS directory fds open: a frame whose fd was closed to make
 *     room is reopened through ".." of its child and checked by device and inode;
 *   - never follows a symlink (lstat, O_NOFOLLOW), never opens anything but a directory
 *     (O_DIRECTORY: a FIFO, socket or device is stat'ed, never opened), and enters a
 *     directory only if the inode opened is the one stat'ed.
 * Memory grows with the entries still to visit (the names of the pending siblings of each
 * directory on the stack), never with the depth alone.
 *
 * Thread safety: a walk touches only its own state and the callbacks' context; walks of
 * distinct trees may run on several threads.
 */
#ifndef SESSIOND_FSWALK_H
#define SESSIOND_FSWALK_H

#include <stddef.h>
#include <sys/stat.h>

/** Directories at this depth are reported but never entered (the root's children are at
 * depth 1). Enough for any tree a path (PATH_MAX 4096) can name. */
#define FSWALK_MAX_DEPTH 4096
/** Directory fds one walk keeps open at most. */
#define FSWALK_MAX_FDS 32

/** pre's answer for a directory to walk its contents. */
#define FSWALK_ENTER 1

/** One entry, valid during the callback only. */
struct fswalk_ent {
    const char *path;      /* prefix + relative path ("a/b/c"), NUL-terminated */
    size_t path_len;       /* strlen(path): may exceed PATH_MAX (use dirfd + name) */
    const char *name;      /* last component */
    int depth;             /* 1 for a child of the root (plus the walk's depth0) */
    int dirfd;             /* the parent directory, open */
    int fd;                /* post only: the directory itself, open; else -1 */
    const struct stat *st; /* lstat of the entry (pre); fstat of the directory (post) */
};

/** pre: return FSWALK_ENTER to walk a directory's contents (ignored for other types and at
 * FSWALK_MAX_DEPTH), 0 to go on, or a negative code from err.h to stop the walk, which then
 * returns that code. post: 0 or a negative code, likewise. A callback may remove or rename
 * the entry it is handed (and, in post, empty directories), nothing else of the tree. */
typedef int (*fswalk_fn)(void *ctx, const struct fswalk_ent *e);

struct fswalk {
    const char *prefix; /* prepended to every path with a '/' (NULL or "": none) */
    int depth0;         /* depth of the root itself (0 unless it is a subtree of a walk) */
    fswalk_fn pre;      /* each entry, before the contents of a directory; required */
    fswalk_fn post;     /* each directory entered, after its contents; may be NULL */
    void *ctx;
};

/** Walk the tree under rootfd (not closed; the root itself is not reported) in pre-order:
 * each directory's entries in the order the file system lists them, a directory's subtree
 * right after it. A directory that cannot be opened or read, or that changed under us, is
 * reported but its contents are not. 0, ERR_IO if the root cannot be read, or the first
 * negative code a callback returned. */
int fswalk_run(int rootfd, const struct fswalk *w);

/** How fswalk_rm disposes of plain files and emptied directories, instead of unlinking them
 * (the snapshot code recycles their inodes). Each returns 0 if it disposed of the entry, else
 * fswalk_rm unlinks it. Either may be NULL. */
struct fswalk_rm_ops {
    int (*file)(void *ctx, int dirfd, const char *name, const struct stat *st);
    int (*dir)(void *ctx, int fd, int dirfd, const char *name);
    void *ctx;
};

/** Remove dirfd/name (any type; a directory with its whole tree, however deep: what lies
 * beyond FSWALK_MAX_DEPTH is moved up into the directory and removed by a further pass)
 * without following a symlink. ops may be NULL. 0 (also when it did not exist), or ERR_IO if
 * something stayed. */
int fswalk_rm(int dirfd, const char *name, const struct fswalk_rm_ops *ops);

#endif
