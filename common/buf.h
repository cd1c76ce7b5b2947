/*
 * buf.h - growable byte buffer with a hard cap (modelled on curl's dynbuf).
 *
 * The struct is public so it can live on the stack or inside another struct, but only these
 * functions touch its fields. The data is always NUL terminated (the NUL is not counted in
 * len). A buffer is not thread safe.
 */
#ifndef SESSIOND_BUF_H
#define SESSIOND_BUF_H

#include <stddef.h>

struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max; /* hard cap on len; appending past it fails with ERR_TOO_LARGE */
};

/** Initialise an empty buffer that may grow to max bytes (0 = no cap, for our own data). */
void buf_init(struct buf *b, size_t max);
/** Free the memory; the buffer may be reused after buf_init. buf_free on a zeroed buf is fine. */
void buf_free(struct buf *b);
/** Forget the contents, keep the memory. */
void buf_reset(struct buf *b);
/** Append n bytes. Returns 0 or ERR_TOO_LARGE (the buffer is unchanged then). */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_puts(struct buf *b, const char *s);
int buf_putc(struct buf *b, char c);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Append s as a JSON string literal, quotes included. */
int buf_json_str(struct buf *b, const char *s, size_t n);
/** Take the memory out of the buffer (caller frees); the buffer is left empty. Never NULL. */
char *buf_detach(struct buf *b, size_t *len);

#endif
