/*
 * secrets.h - sealed storage of user secrets (GitHub tokens): AES-256-GCM with OpenSSL.
 *
 * The master key comes from a file (32 raw bytes, or 64 hex characters, or base64 of 32
 * bytes, surrounding whitespace ignored) or from an environment variable holding the hex or
 * base64 form; the config names which. A sealed value is the text
 *   "v1." base64(nonce[12] || ciphertext || tag[16])
 * and is bound to an "associated data" string (e.g. "github:token:alice"), so a sealed value
 * copied to another user's row does not open.
 *
 * Thread safety: a struct secrets is read-only after secrets_new_*; seal/unseal may be
 * called from any thread at once.
 */
#ifndef SESSIOND_SECRETS_H
#define SESSIOND_SECRETS_H

#include <stddef.h>

struct secrets;

/** Load the key from a file. create != 0: if the file does not exist, write a new random key
 * there (mode 0600). ERR_NOT_FOUND (missing, create == 0), ERR_INVALID (bad key), ERR_IO. */
int secrets_new_from_file(const char *path, int create, struct secrets **out);
/** Load the key from the environment variable named env. ERR_NOT_FOUND if unset. */
int secrets_new_from_env(const char *env, struct secrets **out);
/** Wipe and free. NULL is a no-op. */
void secrets_free(struct secrets *s);

/** Seal n bytes of pt bound to aad (may be NULL). *out is a NUL-terminated string the
 * caller frees. */
int secrets_seal(const struct secrets *s, const char *aad, const void *pt, size_t n, char **out);
/** Open a sealed string. *out (NUL terminated, *n bytes) is freed by the caller, ideally
 * after secrets_wipe(). ERR_AUTH if the value was tampered with, the aad differs or the
 * key is another one; ERR_INVALID if it is not a sealed value. */
int secrets_unseal(const struct secrets *s, const char *aad, const char *sealed, char **out,
                   size_t *n);
/** Zero n bytes (not optimised away) and free p. NULL is a no-op. */
void secrets_wipe(char *p, size_t n);

#endif
