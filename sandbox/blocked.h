/*
 * blocked.h - blocked_commands: programs the sandboxes' commands may not run, named by the
 * configuration as absolute paths or as program names found in a sandbox's PATH
 * (/usr/bin:/bin), and identified by the file they resolve to.
 *
 * This is a policy, not a boundary: the local backend masks each file with an empty,
 * non-executable one and sandbox-init refuses to start it, but a copy of the program (or of
 * its bytes, downloaded or rebuilt) in the workspace still runs.
 *
 * Resolution reads only the system directories a sandbox shares read-only with the host
 * (/usr, /bin, /sbin, /lib*, /etc, /opt): never a path a sandbox can write.
 * Thread safe (no state).
 */
#ifndef SESSIOND_BLOCKED_H
#define SESSIOND_BLOCKED_H

#include <stddef.h>

/** The file entry names inside a sandbox: an absolute path, or a name looked up in
 * /usr/bin:/bin; resolved through symlinks. *out (caller frees) is its canonical path. 0, or
 * ERR_NOT_FOUND when it is not a regular file under the system directories. */
int blocked_resolve(const char *entry, char **out);

/** Whether argv0, as a command's execvp() would find it (a name in /usr/bin:/bin, or an
 * absolute path), is the file one of entries[0..n) names. 1 with *hit (caller frees) set to
 * the file, else 0. Relative paths and paths outside the system directories are the
 * sandbox's own files: never blocked here (sandbox-init still checks them). */
int blocked_match(const char *const *entries, size_t n, const char *argv0, char **hit);

#endif
