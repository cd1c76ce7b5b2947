/*
 * xmem.c - abort-on-failure allocation. Thread safe.
 */

#include "xmem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(void)
{
    static const char msg[] = "{\"level\":\"fatal\",\"msg\":\"xmem: out of memory\"}\n";
    (void)!fwrite(msg, 1, sizeof(msg) - 1, stderr);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        oom();
    }
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        oom();
    }
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        oom();
    }
    return q;
}

char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p) {
        oom();
    }
    return p;
}

char *xstrndup(const char *s, size_t n)
{
    char *p = strndup(s ? s : "", n);
    if (!p) {
        oom();
    }
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0) {
        oom();
    }
    return out;
}
