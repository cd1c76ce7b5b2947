/*
 * util.h - small helpers: ids, hashing, constant-time compare, UTF-8 repair, paths.
 * Thread safe.
 */
#ifndef SESSIOND_UTIL_H
#define SESSIOND_UTIL_H

#include <stddef.h>
#include <stdint.h>

struct buf;

/** 1 if s matches [A-Za-z0-9_-]{1,64}, else 0. */
int util_valid_id(const char *s);
/** Fill out with 2*nbytes random hex characters + NUL (getrandom). out needs 2*nbytes+1. */
void util_random_hex(char *out, size_t nbytes);
/** A new random id with a prefix ("s_" + 20 hex). Caller frees. */
char *util_new_id(const char *prefix);
/** SHA-256 of data as 64 lowercase hex chars + NUL (out needs 65 bytes). */
void util_sha256_hex(const void *data, size_t len, char out[65]);
/** HMAC-SHA256(key, data) as 64 hex chars + NUL. */
void util_hmac_sha256_hex(const void *key, size_t klen, const void *data, size_t len, char out[65]);
/** Constant-time equality of two byte strings (length leaks, content does not). */
int util_ct_equal(const void *a, size_t alen, const void *b, size_t blen);
/** Append s to out with invalid UTF-8 sequences replaced by U+FFFD (untrusted output). */
int util_utf8_sanitize(const char *s, size_t n, struct buf *out);
/** Length of the longest prefix of s[0..n) that does not end inside a UTF-8 sequence. */
size_t util_utf8_complete_prefix(const char *s, size_t n);
/** mkdir -p with mode. Returns 0 or ERR_IO. */
int util_mkdir_p(const char *path, unsigned mode);
/** Make path a private file: create it empty with mode 0600 if missing, else take every
 * group and other bit off it. Never follows a symlink. Returns 0 or ERR_IO. */
int util_file_private(const char *path);
/** Take group read/write, every other bit and setuid/setgid/sticky off the directory path
 * (group search stays). *was gets the mode before. Returns 0 or ERR_IO. */
int util_dir_private(const char *path, unsigned *was);
/** Parse a decimal int64 (whole string). Returns 0 or ERR_INVALID. */
int util_parse_i64(const char *s, int64_t *out);
/** The value of a hex digit (0-9, a-f, A-F), or -1. */
int util_hexval(int c);
/** Remove a directory tree, however deep (fswalk_rm: iterative, no symlink following, at most
 * FSWALK_MAX_FDS fds). Returns 0 (also if path does not exist) or ERR_IO. */
int util_rm_rf(const char *path);

#endif
