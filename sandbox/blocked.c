/*
 * blocked.c - resolving blocked_commands entries and exec's argv[0] (blocked.h).
 *
 * A sandbox's system directories are read-only binds of the host's, so the host's view of
 * /usr/bin/curl is the sandbox's: resolving there as root reads only root-owned system files.
 * Anything else (the workspace, /tmp) differs between host and sandbox and is never looked at.
 * Thread safe: no state.
 */
#include "sandbox/blocked.h"

#include "common/err.h"
#include "common/xmem.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const system_dirs[] = {"/usr",   "/bin",    "/sbin", "/lib", "/lib64",
                                          "/lib32", "/libx32", "/etc",  "/opt"};

static int in_system_dirs(const char *path)
{
    for (size_t i = 0; i < sizeof system_dirs / sizeof system_dirs[0]; i++) {
        size_t l = strlen(system_dirs[i]);
        if (!strncmp(path, system_dirs[i], l) && path[l] == '/') {
            return 1;
        }
    }
    return 0;
}

/* realpath of path if both it and its target lie in the system directories and the target is
 * a regular file; NULL otherwise. Caller frees. */
static char *system_file(const char *path)
{
    struct stat st;
    if (!in_system_dirs(path)) {
        return NULL;
    }
    char *r = realpath(path, NULL);
    if (r && (!in_system_dirs(r) || stat(r, &st) < 0 || !S_ISREG(st.st_mode))) {
        free(r);
        r = NULL;
    }
    return r;
}

int blocked_resolve(const char *entry, char **out)
{
    *out = NULL;
    if (entry[0] == '/') {
        *out = system_file(entry);
    } else if (!strchr(entry, '/') && strcmp(entry, ".") && strcmp(entry, "..")) {
        /* the sandbox's PATH, in order: the first file found is what execvp runs */
        static const char *const path[] = {"/usr/bin", "/bin"};
        for (size_t i = 0; i < 2 && !*out; i++) {
            char *p = xasprintf("%s/%s", path[i], entry);
            *out = system_file(p);
            free(p);
        }
    }
    return *out ? 0 : ERR_NOT_FOUND;
}

int blocked_match(const char *const *entries, size_t n, const char *argv0, char **hit)
{
    char *a = NULL;
    int found = 0;
    *hit = NULL;
    if (!n || blocked_resolve(argv0, &a)) {
        goto out;
    }
    for (size_t i = 0; i < n && !found; i++) {
        char *e = NULL;
        if (!blocked_resolve(entries[i], &e) && !strcmp(e, a)) {
            found = 1;
        }
        free(e);
    }
    if (found) {
        *hit = a;
        a = NULL;
    }
out:
    free(a);
    return found;
}
