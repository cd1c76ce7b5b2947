/*
 * xmem.h - allocation wrappers that abort on failure (we do not limp on after OOM).
 * Thread safe.
 */
#ifndef SESSIOND_XMEM_H
#define SESSIOND_XMEM_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/** printf into a fresh allocation; the caller frees. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
