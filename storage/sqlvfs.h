/*
 * sqlvfs.h - the SQLite VFS the session files are opened with: SQLite's own "unix" VFS with
 * two methods replaced, xFullPathname and xOpen (see sqlvfs.c for why).
 */
#ifndef SESSIOND_SQLVFS_H
#define SESSIOND_SQLVFS_H

/** Register the VFS once per process (thread safe, idempotent) and return its name for
 * sqlite3_open_v2(), or NULL when SQLite has no "unix" VFS (then use the default). Paths
 * given to it must be absolute and free of symbolic links (realpath'd) to take the fast
 * path; any other path is resolved by SQLite as usual. */
const char *sqlvfs_name(void);

#endif
