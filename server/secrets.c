/*
 * secrets.c - AES-256-GCM sealing of stored user secrets (see secrets.h).
 *
 * A fresh 96-bit random nonce per seal (RAND_bytes); with one key and random nonces the
 * safe number of seals is ~2^32, far beyond a token store. The key lives in one heap block
 * wiped on free. Threads: read-only after creation; EVP contexts are per call.
 */

#include "server/secrets.h"

#include "common/err.h"
#include "common/util.h"
#include "common/log.h"
#include "common/xmem.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_LEN   32
#define NONCE_LEN 12
#define TAG_LEN   16
#define PREFIX    "v1."

struct secrets {
    unsigned char key[KEY_LEN];
};

void secrets_wipe(char *p, size_t n)
{
    if (p) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

/* Decode standard base64 (with padding) into out (cap bytes). Returns the length or -1. */
static int b64_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    if (len % 4 != 0 || len / 4 * 3 > cap + 2) {
        return -1;
    }
    unsigned char *tmp = xmalloc(len / 4 * 3 + 1);
    int n = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)len);
    if (n >= 0 && len >= 1 && in[len - 1] == '=') {
        n--;
    }
    if (n >= 0 && len >= 2 && in[len - 2] == '=') {
        n--;
    }
    if (n < 0 || (size_t)n > cap) {
        OPENSSL_cleanse(tmp, len / 4 * 3 + 1);
        free(tmp);
        return -1;
    }
    memcpy(out, tmp, (size_t)n);
    OPENSSL_cleanse(tmp, len / 4 * 3 + 1);
    free(tmp);
    return n;
}

/* The key from its text or raw form (whitespace around it ignored). */
static int parse_key(const unsigned char *data, size_t len, int allow_raw, unsigned char *key)
{
    if (allow_raw && len == KEY_LEN) {
        memcpy(key, data, KEY_LEN);
        return 0;
    }
    while (len > 0 && isspace(data[len - 1])) {
        len--;
    }
    while (len > 0 && isspace(data[0])) {
        data++;
        len--;
    }
    if (len == 2 * KEY_LEN) {
        for (size_t i = 0; i < KEY_LEN; i++) {
            int a = util_hexval(data[2 * i]), b = util_hexval(data[2 * i + 1]);
            if (a < 0 || b < 0) {
                goto b64;
            }
            key[i] = (unsigned char)(a * 16 + b);
        }
        return 0;
    }
b64:
    if (b64_decode((const char *)data, len, key, KEY_LEN) == KEY_LEN) {
        return 0;
    }
    return ERR_INVALID;
}

int secrets_new_from_file(const char *path, int create, struct secrets **out)
{
    struct secrets *s = xcalloc(1, sizeof(*s));
    unsigned char buf[256];
    int rc = 0;
    ssize_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *out = NULL;
    if (fd < 0 && errno == ENOENT && create) {
        if (RAND_bytes(s->key, KEY_LEN) != 1) {
            rc = ERR_INTERNAL;
            goto out;
        }
        char hex[2 * KEY_LEN + 2];
        for (int i = 0; i < KEY_LEN; i++) {
            snprintf(hex + 2 * i, 3, "%02x", s->key[i]);
        }
        hex[2 * KEY_LEN] = '\n';
        hex[2 * KEY_LEN + 1] = 0;
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, hex, 2 * KEY_LEN + 1) != 2 * KEY_LEN + 1 || fsync(fd) != 0) {
            rc = ERR_IO;
        }
        OPENSSL_cleanse(hex, sizeof(hex));
        if (rc == 0) {
            LOG_INFO("secrets: created a new master key in %s", path);
        }
        goto out;
    }
    if (fd < 0) {
        rc = errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
        goto out;
    }
    struct stat sb;
    if (fstat(fd, &sb) == 0 && (sb.st_mode & 077)) {
        LOG_WARN("secrets: the master key file %s is readable by others (chmod 600)", path);
    }
    n = read(fd, buf, sizeof(buf));
    if (n <= 0 || (size_t)n == sizeof(buf)) {
        rc = ERR_INVALID;
        goto out;
    }
    rc = parse_key(buf, (size_t)n, 1, s->key);
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (fd >= 0) {
        close(fd);
    }
    if (rc != 0) {
        secrets_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int secrets_new_from_env(const char *env, struct secrets **out)
{
    const char *v = env && *env ? getenv(env) : NULL;
    *out = NULL;
    if (!v || !*v) {
        return ERR_NOT_FOUND;
    }
    struct secrets *s = xcalloc(1, sizeof(*s));
    int rc = parse_key((const unsigned char *)v, strlen(v), 0, s->key);
    if (rc != 0) {
        secrets_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void secrets_free(struct secrets *s)
{
    if (s) {
        OPENSSL_cleanse(s, sizeof(*s));
        free(s);
    }
}

int secrets_seal(const struct secrets *s, const char *aad, const void *pt, size_t n, char **out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    size_t raw_len = NONCE_LEN + n + TAG_LEN;
    unsigned char *raw = xmalloc(raw_len);
    int len = 0, rc = 0;
    *out = NULL;
    if (!c || n > (1u << 30)) {
        rc = n > (1u << 30) ? ERR_TOO_LARGE : ERR_NOMEM;
        goto out;
    }
    if (RAND_bytes(raw, NONCE_LEN) != 1 ||
        EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
        EVP_EncryptInit_ex(c, NULL, NULL, s->key, raw) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    if (aad && *aad &&
        EVP_EncryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    if (EVP_EncryptUpdate(c, raw + NONCE_LEN, &len, pt, (int)n) != 1 ||
        EVP_EncryptFinal_ex(c, raw + NONCE_LEN + len, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, raw + NONCE_LEN + n) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    size_t b64_len = 4 * ((raw_len + 2) / 3);
    char *txt = xmalloc(strlen(PREFIX) + b64_len + 1);
    memcpy(txt, PREFIX, strlen(PREFIX));
    EVP_EncodeBlock((unsigned char *)txt + strlen(PREFIX), raw, (int)raw_len);
    *out = txt;
out:
    EVP_CIPHER_CTX_free(c);
    OPENSSL_cleanse(raw, raw_len);
    free(raw);
    return rc;
}

int secrets_unseal(const struct secrets *s, const char *aad, const char *sealed, char **out,
                   size_t *n)
{
    EVP_CIPHER_CTX *c = NULL;
    unsigned char *raw = NULL;
    char *pt = NULL;
    int rc = 0, len = 0, raw_len;
    size_t b64_len, ct_len = 0;
    *out = NULL;
    if (n) {
        *n = 0;
    }
    if (!sealed || strncmp(sealed, PREFIX, strlen(PREFIX)) != 0) {
        return ERR_INVALID;
    }
    sealed += strlen(PREFIX);
    b64_len = strlen(sealed);
    if (b64_len > (1u << 31) / 2) {
        return ERR_INVALID;
    }
    raw = xmalloc(b64_len / 4 * 3 + 3);
    raw_len = b64_decode(sealed, b64_len, raw, b64_len / 4 * 3 + 3);
    if (raw_len < NONCE_LEN + TAG_LEN) {
        rc = ERR_INVALID;
        goto out;
    }
    ct_len = (size_t)raw_len - NONCE_LEN - TAG_LEN;
    pt = xmalloc(ct_len + 1);
    c = EVP_CIPHER_CTX_new();
    if (!c || EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
        EVP_DecryptInit_ex(c, NULL, NULL, s->key, raw) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    if (aad && *aad &&
        EVP_DecryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    if (EVP_DecryptUpdate(c, (unsigned char *)pt, &len, raw + NONCE_LEN, (int)ct_len) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, raw + NONCE_LEN + ct_len) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    int fin = 0;
    if (EVP_DecryptFinal_ex(c, (unsigned char *)pt + len, &fin) != 1) {
        rc = ERR_AUTH; /* tag mismatch: wrong key, wrong aad or tampered */
        goto out;
    }
    pt[ct_len] = 0;
    *out = pt;
    pt = NULL;
    if (n) {
        *n = ct_len;
    }
out:
    EVP_CIPHER_CTX_free(c);
    if (raw) {
        OPENSSL_cleanse(raw, b64_len / 4 * 3 + 3);
        free(raw);
    }
    if (pt) {
        secrets_wipe(pt, ct_len + 1);
    }
    return rc;
}
