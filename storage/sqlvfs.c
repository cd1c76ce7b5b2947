/*
 * sqlvfs.c - SQLite's "unix" VFS with a cheaper xFullPathname and xOpen, for the session files.
 *
 * Why: since 3.35 SQLite resolves symbolic links in xFullPathname by lstat()ing every
 * component of the path, on every sqlite3_open. Waking a hibernated session is an open, and
 * with 1,000 sessions over a cache of 256 three requests in four are wake-ups: strace of the
 * spread benchmark counted 14 stat calls per request, most of them these lstats. The store
 * resolves its sessions directory once (realpath at store_open) and session ids never hold a
 * '/', so a session path is already canonical: this VFS returns an absolute path unchanged
 * and hands anything else (a relative path) to the unix VFS.
 *
 * Everything else is the unix VFS itself: the copied struct keeps its pAppData (unixOpen reads
 * its locking-style finder from there) and its methods. WAL and journal files are named from
 * the database path, which is why it must not contain a symlink (they would be made beside
 * the link instead of beside the file): the store's realpath guarantees that.
 *
 * Global state: a VFS is registered process-wide by SQLite's design, so its struct lives in
 * this file, written once under pthread_once and read-only afterwards.
 */
#include "storage/sqlvfs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>

#define SQLVFS_NAME "sessiond-unix"

static sqlite3_vfs g_vfs;   /* written once in init(), then read-only */
static sqlite3_vfs *g_unix; /* the VFS we delegate to; idem */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_ok; /* idem */

static int full_pathname(sqlite3_vfs *vfs, const char *name, int nout, char *out)
{
    (void)vfs;
    if (name[0] == '/') {
        size_t n = strlen(name);
        if (n >= (size_t)nout) {
            return SQLITE_CANTOPEN;
        }
        memcpy(out, name, n + 1);
        return SQLITE_OK;
    }
    return g_unix->xFullPathname(g_unix, name, nout, out);
}

/* Open an existing WAL without SQLITE_OPEN_CREATE. Why: unixOpen marks a file opened with
 * CREATE as "sync the directory at the first fsync": with the WAL kept across hibernation
 * (SQLITE_FCNTL_PERSIST_WAL) that was a directory fdatasync at every close-time checkpoint,
 * for a name made durable long ago (SQLite syncs a new WAL's header, and with it the
 * directory, before the first commit in it). A WAL that does not exist yet is opened as usual.
 */
static int xopen(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *oflags)
{
    if ((flags & SQLITE_OPEN_WAL) && (flags & SQLITE_OPEN_CREATE) && name) {
        struct stat sb;
        if (stat(name, &sb) == 0 && S_ISREG(sb.st_mode)) {
            flags &= ~SQLITE_OPEN_CREATE;
        }
    }
    return g_unix->xOpen(vfs, name, f, flags, oflags);
}

static void init(void)
{
    g_unix = sqlite3_vfs_find("unix");
    if (!g_unix) {
        return;
    }
    g_vfs = *g_unix;
    g_vfs.pNext = NULL;
    g_vfs.zName = SQLVFS_NAME;
    g_vfs.xFullPathname = full_pathname;
    g_vfs.xOpen = xopen;
    g_ok = sqlite3_vfs_register(&g_vfs, 0) == SQLITE_OK;
}

const char *sqlvfs_name(void)
{
    pthread_once(&g_once, init);
    return g_ok ? SQLVFS_NAME : NULL;
}
