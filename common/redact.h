/*
 * redact.h - finding secret values in text and replacing them by "[REDACTED:NAME]".
 *
 * A set holds named secret values. Each value is searched in several forms: as is, its base64
 * (standard and URL-safe alphabets, at the three alignments it can have inside a longer base64
 * text, so `printf %s "$V" | base64` and a value in the middle of a base64 blob are both
 * caught), percent-encoded (upper and lower case hex; the RFC 3986, encodeURIComponent and
 * Python quote choices of kept characters) and JSON-escaped, whichever differ from
 * the value. At a position the longest form wins.
 *
 * A redactor runs a set over a stream cut in arbitrary chunks: it holds back the last
 * (longest form - 1) bytes of what it was fed, so that a value split across two chunks is
 * still seen whole; redactor_flush() releases the rest at the end of the stream.
 *
 * Threads: a set is immutable once shared (redact_set_add only before) and may be used by any
 * number of threads at once; references are atomic. A redactor belongs to one thread at a time.
 */
#ifndef SESSIOND_REDACT_H
#define SESSIOND_REDACT_H

#include <stddef.h>

struct buf;
struct redact_set;
struct redactor;

/** Values shorter than this are not secrets we can find without scrubbing ordinary words. */
#define REDACT_MIN_LEN 8
/** Longest value a set takes (the base64 and escaped forms are longer). */
#define REDACT_MAX_LEN 4096

/** A new empty set with one reference. */
struct redact_set *redact_set_new(void);
/** Another reference to s (NULL: NULL). */
struct redact_set *redact_set_ref(struct redact_set *s);
/** Drop a reference; the last one wipes the values and frees. NULL is a no-op. */
void redact_set_unref(struct redact_set *s);
/** Add secret name with value (n bytes). ERR_INVALID if n < REDACT_MIN_LEN or
 * n > REDACT_MAX_LEN or name is empty. Only before the set is shared. */
int redact_set_add(struct redact_set *s, const char *name, const char *value, size_t n);
/** Number of secrets (not forms). 0 for NULL. */
size_t redact_set_count(const struct redact_set *s);
/** Secret i: its name, and its value (*n bytes, NUL terminated). Borrowed from the set. */
const char *redact_set_name(const struct redact_set *s, size_t i);
const char *redact_set_value(const struct redact_set *s, size_t i, size_t *n);
/** Length of the longest form (0 for an empty set). */
size_t redact_set_maxlen(const struct redact_set *s);

/** The first form of any secret in in[0..n): 1 and *off, *len, *name (borrowed) set, or 0. */
int redact_find(const struct redact_set *s, const char *in, size_t n, size_t *off, size_t *len,
                const char **name);
/** Append in[0..n) to out with every form replaced by its marker; returns the number of
 * replacements. s may be NULL or empty (a plain copy). */
size_t redact_buf(const struct redact_set *s, const char *in, size_t n, struct buf *out);
/** redact_buf into a new NUL-terminated string (caller frees); *outlen may be NULL. */
char *redact_str(const struct redact_set *s, const char *in, size_t n, size_t *outlen);

/** A streaming redactor over s (takes its own reference; s may be NULL: it passes bytes
 * through). *out: redactor_free(). */
struct redactor *redactor_new(struct redact_set *s);
/** Feed n bytes; appends to out what can be released now (possibly nothing). */
void redactor_feed(struct redactor *r, const char *in, size_t n, struct buf *out);
/** End of stream: appends the held-back rest to out. The redactor can be fed again. */
void redactor_flush(struct redactor *r, struct buf *out);
/** Bytes held back now. */
size_t redactor_held(const struct redactor *r);
/** Wipe and free. NULL is a no-op. */
void redactor_free(struct redactor *r);

#endif
