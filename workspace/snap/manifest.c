/*
 * manifest.c - manifest text: writing, parsing and loading.
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

/* ---------------------------------------------------------------- manifests */

void put_header(struct buf *b, const struct mhdr *h)
{
    buf_printf(b, "%s 1 %lld %lld %llu %llu %llu %llu %llu %llu %llu %lld ", MANIFEST_MAGIC,
               (long long)h->created_ms, (long long)h->started_ns, (unsigned long long)h->dev,
               (unsigned long long)h->root_ino, (unsigned long long)h->files,
               (unsigned long long)h->entries, (unsigned long long)h->bytes,
               (unsigned long long)h->new_bytes, (unsigned long long)h->hashed,
               (long long)h->duration_us);
    esc_put(b, h->label);
    buf_putc(b, '\n');
}

void put_ent(struct buf *b, const struct ent *e)
{
    buf_printf(b, "%c %04o %u %u %llu %lld %lld %llu ", e->type, (unsigned)e->mode, e->uid, e->gid,
               (unsigned long long)e->size, (long long)e->mtime_ns, (long long)e->ctime_ns,
               (unsigned long long)e->ino);
    if (e->type == 'f') {
        buf_puts(b, e->hash);
    } else if (e->type == 'l') {
        esc_put(b, e->target);
    } else {
        buf_putc(b, '-');
    }
    buf_putc(b, ' ');
    esc_put(b, e->path);
    buf_putc(b, '\n');
}

/* Split line (modified in place) into at most max space-separated fields. */
int split(char *line, char **f, int max)
{
    int n = 0;
    char *p = line;
    while (n < max) {
        f[n++] = p;
        char *sp = strchr(p, ' ');
        if (!sp) {
            break;
        }
        *sp = 0;
        p = sp + 1;
    }
    return n;
}

int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) {
        return ERR_INVALID;
    }
    *out = v;
    return 0;
}

static int parse_i64f(const char *s, int64_t *out)
{
    return util_parse_i64(s, out);
}

static int parse_header(char *line, struct mhdr *h)
{
    char *f[13];
    memset(h, 0, sizeof(*h));
    if (split(line, f, 13) != 13 || strcmp(f[0], MANIFEST_MAGIC) != 0 || strcmp(f[1], "1") != 0) {
        return ERR_INVALID;
    }
    if (parse_i64f(f[2], &h->created_ms) || parse_i64f(f[3], &h->started_ns) ||
        parse_u64(f[4], &h->dev) || parse_u64(f[5], &h->root_ino) || parse_u64(f[6], &h->files) ||
        parse_u64(f[7], &h->entries) || parse_u64(f[8], &h->bytes) ||
        parse_u64(f[9], &h->new_bytes) || parse_u64(f[10], &h->hashed) ||
        parse_i64f(f[11], &h->duration_us) || unesc(f[12])) {
        return ERR_INVALID;
    }
    snprintf(h->label, sizeof(h->label), "%s", f[12]);
    return 0;
}

/* Parse a manifest (data is modified). Entries are appended to v (if not NULL). */
static int parse_manifest(char *data, size_t len, struct mhdr *h, struct entv *v)
{
    char *end = data + len;
    char *nl = memchr(data, '\n', len);
    if (!nl) {
        return ERR_INVALID;
    }
    *nl = 0;
    int rc = parse_header(data, h);
    if (rc != 0 || !v) {
        return rc;
    }
    for (char *p = nl + 1; p < end;) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) {
            return ERR_INVALID;
        }
        *e = 0;
        char *f[10];
        uint64_t mode = 0, uid = 0, gid = 0, ino = 0;
        struct ent *x = NULL;
        if (split(p, f, 10) != 10 || strlen(f[0]) != 1) {
            return ERR_INVALID;
        }
        x = entv_push(v);
        x->type = f[0][0];
        char *mend = NULL;
        mode = strtoull(f[1], &mend, 8);
        if (*mend || parse_u64(f[2], &uid) || parse_u64(f[3], &gid) || parse_u64(f[4], &x->size) ||
            parse_i64f(f[5], &x->mtime_ns) || parse_i64f(f[6], &x->ctime_ns) ||
            parse_u64(f[7], &ino) || unesc(f[9]) || !f[9][0]) {
            return ERR_INVALID;
        }
        x->mode = (uint32_t)mode;
        x->uid = (uint32_t)uid;
        x->gid = (uint32_t)gid;
        x->ino = ino;
        if (x->type == 'f') {
            if (strlen(f[8]) != 64) {
                return ERR_INVALID;
            }
            memcpy(x->hash, f[8], 65);
        } else if (x->type == 'l') {
            if (unesc(f[8])) {
                return ERR_INVALID;
            }
            x->target = xstrdup(f[8]);
        } else if (x->type != 'd') {
            return ERR_INVALID;
        }
        x->path = xstrdup(f[9]);
        p = e + 1;
    }
    return 0;
}

int load_manifest_at(int dirfd, const char *name, struct mhdr *h, struct entv *v)
{
    char *data = NULL;
    size_t len = 0;
    int rc = read_file_at(dirfd, name, &data, &len);
    if (rc == 0) {
        rc = parse_manifest(data, len, h, v);
        if (rc != 0) {
            LOG_WARN("snap: corrupt manifest %s", name);
            rc = ERR_IO;
        }
    }
    free(data);
    return rc;
}

/* Read only the header line of a manifest. */
int load_header_at(int dirfd, const char *name, struct mhdr *h)
{
    char line[1024];
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        return errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
    }
    ssize_t r = pread(fd, line, sizeof(line) - 1, 0);
    close(fd);
    if (r <= 0) {
        return ERR_IO;
    }
    line[r] = 0;
    char *nl = strchr(line, '\n');
    if (!nl) {
        return ERR_IO;
    }
    *nl = 0;
    return parse_header(line, h) == 0 ? 0 : ERR_IO;
}
