/*
 * fuzzlib.h - helpers shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.c).
 *
 * Inputs are split into newline-separated fields, so that seed files stay readable and the
 * fuzzer can still grow or shrink any one field. A harness checks properties of the code
 * under test with FZ_CHECK, which aborts (a crash libFuzzer records) with the failed
 * expression, so a broken invariant is reported like a memory error.
 *
 * One harness = one process: these helpers keep no state of their own.
 */
#ifndef SESSIOND_FUZZLIB_H
#define SESSIOND_FUZZLIB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/** The unread rest of a fuzz input. */
struct fz {
    const uint8_t *p;
    size_t n;
};

/** The next field: the bytes up to the next '\n' (or the end), copied and NUL terminated
 * (it may contain NULs: *len has its length; len may be NULL). The caller frees. */
static inline char *fz_field(struct fz *f, size_t *len)
{
    const uint8_t *nl = memchr(f->p, '\n', f->n);
    size_t k = nl ? (size_t)(nl - f->p) : f->n;
    char *s = malloc(k + 1);
    if (!s) {
        abort();
    }
    memcpy(s, f->p, k);
    s[k] = 0;
    f->p += nl ? k + 1 : k;
    f->n -= nl ? k + 1 : k;
    if (len) {
        *len = k;
    }
    return s;
}

/** The rest of the input, copied and NUL terminated (see fz_field). The caller frees. */
static inline char *fz_rest(struct fz *f, size_t *len)
{
    char *s = malloc(f->n + 1);
    if (!s) {
        abort();
    }
    memcpy(s, f->p, f->n);
    s[f->n] = 0;
    if (len) {
        *len = f->n;
    }
    f->p += f->n;
    f->n = 0;
    return s;
}

/** The next byte, 0 when the input is exhausted. */
static inline uint8_t fz_byte(struct fz *f)
{
    if (!f->n) {
        return 0;
    }
    f->n--;
    return *f->p++;
}

/** A property of the code under test: abort with the expression when it does not hold. */
#define FZ_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif
