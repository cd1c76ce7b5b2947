/*
 * sbx_files.c - workspace file access of the backends that run sandbox-init: read, write and
 * list files of the workspace from the host, every path resolved beneath the workspace root
 * (openat2 RESOLVE_BENEATH: no "..", no magic links, no symlink out of it), and the private
 * files (prompt files, scripts) put next to it.
 *
 * Threads: any thread; nothing here touches the protocol or s->lock.
 */
#include "sandbox/sbx_int.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- workspace files ---- */

static int open_beneath(int dirfd, const char *path, int flags, int mode, int nosymlinks)
{
    struct open_how how = {0};
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & O_CREAT) ? (uint64_t)mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (nosymlinks ? RESOLVE_NO_SYMLINKS : 0);
    long fd;
    do {
        fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (fd < 0 && errno == EAGAIN);
    return (int)fd;
}

static int map_errno(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return ERR_NOT_FOUND;
    case EXDEV:
    case ELOOP:
    case EINVAL:
    case ENAMETOOLONG:
        return ERR_INVALID; /* the path leaves the workspace */
    case EACCES:
    case EPERM:
        return ERR_FORBIDDEN;
    case EFBIG:
    case ENOSPC:
        return ERR_TOO_LARGE;
    default:
        return ERR_IO;
    }
}

/* Write all of data[0..n) to fd (a regular file); 0 or the error of the failed write. */
static int write_full(int fd, const void *data, size_t n)
{
    const char *c = data;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            return map_errno(errno);
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int ws_root(struct sbx *s)
{
    int fd = open(s->ws_host, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd;
}

int sbxi_read_file(struct sbx *s, const char *path, struct buf *out)
{
    int root = -1, fd = -1, rc = 0;
    if (sbx_path_check(path, strlen(path))) {
        return ERR_INVALID;
    }
    root = ws_root(s);
    if (root < 0) {
        return ERR_NOT_FOUND;
    }
    fd = open_beneath(root, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0, 0);
    if (fd < 0) {
        rc = map_errno(errno);
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = ERR_IO;
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = ERR_CONFLICT; /* a directory: the caller lists it instead */
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ERR_INVALID;
        goto out;
    }
    char tmp[65536];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            rc = ERR_IO;
            goto out;
        }
        if (r == 0) {
            break;
        }
        rc = buf_append(out, tmp, (size_t)r);
        if (rc) {
            goto out;
        }
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    if (root >= 0) {
        close(root);
    }
    return rc;
}

int sbxi_write_file(struct sbx *s, const char *path, const void *data, size_t n)
{
    int dir = -1, fd = -1, rc = 0;
    char *copy = NULL;
    if (sbx_path_check(path, strlen(path))) {
        return ERR_INVALID;
    }
    dir = ws_root(s);
    if (dir < 0) {
        return ERR_NOT_FOUND;
    }
    copy = xstrdup(path);
    /* Walk the parents one component at a time, creating them, never following a symlink:
     * the sandbox may be changing the tree while we write. */
    char *p = copy;
    for (;;) {
        char *slash = strchr(p, '/');
        if (!slash) {
            break;
        }
        *slash = 0;
        if (*p && strcmp(p, ".")) {
            if (mkdirat(dir, p, 0755) == 0 && s->uid != (uid_t)-1) {
                if (fchownat(dir, p, s->uid, s->gid, AT_SYMLINK_NOFOLLOW) < 0) {
                    LOG_WARN("sandbox: chown %s: %s", p, strerror(errno));
                }
            }
            int nd = open_beneath(dir, p, O_RDONLY | O_DIRECTORY, 0, 1);
            if (nd < 0) {
                rc = map_errno(errno);
                goto out;
            }
            close(dir);
            dir = nd;
        }
        p = slash + 1;
    }
    if (!*p || !strcmp(p, ".")) {
        rc = ERR_INVALID;
        goto out;
    }
    fd = open_beneath(dir, p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK,
                      0644, 1);
    if (fd < 0) {
        rc = errno == EISDIR ? ERR_CONFLICT : map_errno(errno);
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = ERR_INVALID;
        goto out;
    }
    if (s->uid != (uid_t)-1 && fchown(fd, s->uid, s->gid) < 0) {
        LOG_WARN("sandbox: chown %s: %s", path, strerror(errno));
    }
    rc = write_full(fd, data, n);
out:
    if (fd >= 0) {
        close(fd);
    }
    if (dir >= 0) {
        close(dir);
    }
    free(copy);
    return rc;
}

/* A file name as a JSON string. Names are bytes a sandbox chose: jansson refuses invalid
 * UTF-8, which would drop the entry from a listing (hiding it) or fail the whole listing, so
 * invalid bytes are shown as U+FFFD instead. Never NULL. */
static json_t *name_json(const char *name)
{
    json_t *v = json_string(name);
    if (v) {
        return v;
    }
    struct buf b;
    buf_init(&b, 0);
    util_utf8_sanitize(name, strlen(name), &b);
    v = json_stringn(b.data ? b.data : "", b.len);
    buf_free(&b);
    return v ? v : json_string("\xef\xbf\xbd");
}

int sbxi_list_files(struct sbx *s, const char *path, json_t **out)
{
    int root = -1, fd = -1, rc = 0;
    DIR *d = NULL;
    int is_root = !path || !*path || !strcmp(path, ".");
    if (!is_root && sbx_path_check(path, strlen(path))) {
        return ERR_INVALID;
    }
    root = ws_root(s);
    if (root < 0) {
        return ERR_NOT_FOUND;
    }
    fd = is_root ? dup(root) : open_beneath(root, path, O_RDONLY | O_DIRECTORY, 0, 0);
    if (fd < 0) {
        rc = map_errno(errno);
        goto out;
    }
    d = fdopendir(fd);
    if (!d) {
        rc = ERR_IO;
        goto out;
    }
    fd = -1;
    json_t *entries = json_array();
    struct dirent *de;
    int count = 0;
    while ((de = readdir(d)) != NULL && count < 10000) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) {
            continue;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            continue;
        }
        const char *type = S_ISREG(st.st_mode)   ? "file"
                           : S_ISDIR(st.st_mode) ? "dir"
                           : S_ISLNK(st.st_mode) ? "link"
                                                 : "other";
        json_array_append_new(entries, json_pack("{s:o,s:s,s:I}", "name", name_json(de->d_name),
                                                 "type", type, "size", (json_int_t)st.st_size));
        count++;
    }
    *out = json_pack("{s:o,s:o}", "path", name_json(is_root ? "" : path), "entries", entries);
out:
    if (d) {
        closedir(d);
    }
    if (fd >= 0) {
        close(fd);
    }
    if (root >= 0) {
        close(root);
    }
    return rc;
}

int sbxi_put_private(struct sbx *s, const char *name, const void *data, size_t n, int executable,
                     char **path_inside)
{
    if (!util_valid_id(name) && !(strchr(name, '.') && !strchr(name, '/') && name[0] != '.')) {
        return ERR_INVALID;
    }
    char *host = xasprintf("%s/%s", s->priv_host, name);
    char *tmp = xasprintf("%s/.%s.tmp", s->priv_host, name);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        rc = ERR_IO;
        goto out;
    }
    fchmod(fd, executable ? 0755 : 0644);
    if (write_full(fd, data, n)) {
        rc = ERR_IO;
    }
    close(fd);
    if (!rc && rename(tmp, host) < 0) {
        rc = ERR_IO;
    }
    if (!rc && path_inside) {
        *path_inside = xasprintf("%s/%s", s->priv_inside, name);
    }
out:
    if (rc) {
        unlink(tmp);
    }
    free(host);
    free(tmp);
    return rc;
}
