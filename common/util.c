/*
 * util.c - ids, hashing, UTF-8 repair, paths. Thread safe.
 */

#include "util.h"

#include "buf.h"
#include "err.h"
#include "fswalk.h"
#include "xmem.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

int util_valid_id(const char *s)
{
    size_t n = 0;
    if (!s) {
        return 0;
    }
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= 64) {
            return 0;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            return 0;
        }
    }
    return n > 0;
}

static void to_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = 0;
}

void util_random_hex(char *out, size_t nbytes)
{
    unsigned char raw[64];
    size_t done = 0;
    if (nbytes > sizeof(raw)) {
        nbytes = sizeof(raw);
    }
    while (done < nbytes) {
        ssize_t r = getrandom(raw + done, nbytes - done, 0);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            abort(); /* no entropy source: nothing safe to do */
        }
        done += (size_t)r;
    }
    to_hex(raw, nbytes, out);
}

char *util_new_id(const char *prefix)
{
    char hex[21];
    util_random_hex(hex, 10);
    return xasprintf("%s%s", prefix ? prefix : "", hex);
}

void util_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    to_hex(md, sizeof(md), out);
}

void util_hmac_sha256_hex(const void *key, size_t klen, const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), key, (int)klen, data, len, md, &mdlen);
    to_hex(md, mdlen, out);
}

int util_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen) {
        return 0;
    }
    return CRYPTO_memcmp(a, b, alen) == 0;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid/incomplete. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        len = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

int util_utf8_sanitize(const char *s, size_t n, struct buf *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, start = 0;
    int rc;
    while (i < n) {
        if (p[i] < 0x80 && p[i] != 0) {
            i++;
            continue;
        }
        size_t l = p[i] ? utf8_seq(p + i, n - i) : 0;
        if (l) {
            i += l;
            continue;
        }
        rc = buf_append(out, s + start, i - start);
        if (rc) {
            return rc;
        }
        rc = buf_append(out, "\xef\xbf\xbd", 3);
        if (rc) {
            return rc;
        }
        i++;
        start = i;
    }
    return buf_append(out, s + start, i - start);
}

size_t util_utf8_complete_prefix(const char *s, size_t n)
{
    /* Look back at most 3 bytes for a lead byte whose sequence runs past the end. */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xc0) == 0x80) {
            continue;
        }
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        if (need > back) {
            return n - back;
        }
        return n;
    }
    return n;
}

int util_mkdir_p(const char *path, unsigned mode)
{
    char tmp[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(tmp)) {
        return ERR_INVALID;
    }
    memcpy(tmp, path, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, mode) != 0 && errno != EEXIST) {
                return ERR_IO;
            }
            *p = '/';
        }
    }
    if (mkdir(tmp, mode) != 0 && errno != EEXIST) {
        return ERR_IO;
    }
    return 0;
}

int util_file_private(const char *path)
{
    struct stat st;
    int rc = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        return ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        rc = ERR_IO;
        goto out;
    }
    if ((st.st_mode & 077) && fchmod(fd, st.st_mode & 0700) != 0) {
        rc = ERR_IO;
    }
out:
    close(fd);
    return rc;
}

int util_dir_private(const char *path, unsigned *was)
{
    struct stat st;
    *was = 0;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        return ERR_IO;
    }
    *was = st.st_mode & 07777;
    /* Group search (x) alone is kept: the local sandbox grants it to its own group. */
    if ((st.st_mode & 07067) && chmod(path, st.st_mode & 0710) != 0) {
        return ERR_IO;
    }
    return 0;
}

int util_parse_i64(const char *s, int64_t *out)
{
    char *end = NULL;
    if (!s || !*s) {
        return ERR_INVALID;
    }
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || *end) {
        return ERR_INVALID;
    }
    *out = (int64_t)v;
    return 0;
}

int util_rm_rf(const char *path)
{
    /* Iterative and bounded whatever the tree (a workspace is built by a sandbox). */
    return fswalk_rm(AT_FDCWD, path, NULL);
}

int util_hexval(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}
