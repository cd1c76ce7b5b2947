/*
 * redact.c - secret values and their encodings found in text (redact.h).
 *
 * Matching (Wu-Manber): every form is at least 8 bytes; a window of the shortest form's length
 * moves over the text by a shift looked up from its last two bytes, which is its full length
 * minus one for nearly every pair, so most bytes are never looked at. Where the shift is 0, the
 * forms sharing the window's first two bytes (next to each other in a sorted array, longest
 * first) are compared in full. For the tens of secrets a server holds this needs no automaton
 * and runs at memory speed (bench/redact.c).
 *
 * Threads: see redact.h. Invariant: a set's forms, table and order only change in
 * redact_set_add, which runs before the set is shared.
 */
#include "common/redact.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/xmem.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SHIFT_WINDOW 200 /* longest scan window (shifts are bytes) */

struct secret {
    char *name;
    char *value;
    size_t n;
    char *marker; /* "[REDACTED:NAME]" */
    size_t marker_len;
};

struct form {
    char *text;
    size_t len;
    uint16_t pfx;  /* the first two bytes */
    size_t secret; /* index into secrets */
};

struct redact_set {
    _Atomic int refs;
    struct secret *secrets;
    size_t nsecrets;
    struct form *forms; /* sorted by (pfx, len descending) */
    size_t nforms;
    size_t maxlen;
    size_t minlen;              /* of the forms, at most SHIFT_WINDOW: the scan's window */
    uint64_t table[65536 / 64]; /* bit pfx set: some form starts with these two bytes */
    /* Wu-Manber: how far the window may move when its last two bytes are these; 0 where a
     * form's first minlen bytes end with them (a candidate, checked in full). */
    uint8_t shift[65536];
};

struct redactor {
    struct redact_set *set;
    struct buf pend; /* held back: may be the start of a form */
};

static uint16_t pfx_of(const char *p)
{
    return (uint16_t)((unsigned char)p[0] << 8 | (unsigned char)p[1]);
}

struct redact_set *redact_set_new(void)
{
    struct redact_set *s = xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    return s;
}

struct redact_set *redact_set_ref(struct redact_set *s)
{
    if (s) {
        atomic_fetch_add(&s->refs, 1);
    }
    return s;
}

static void wipe_free(char *p, size_t n)
{
    if (p) {
        explicit_bzero(p, n);
        free(p);
    }
}

void redact_set_unref(struct redact_set *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1) {
        return;
    }
    for (size_t i = 0; i < s->nsecrets; i++) {
        free(s->secrets[i].name);
        wipe_free(s->secrets[i].value, s->secrets[i].n);
        free(s->secrets[i].marker);
    }
    for (size_t i = 0; i < s->nforms; i++) {
        wipe_free(s->forms[i].text, s->forms[i].len);
    }
    free(s->secrets);
    free(s->forms);
    free(s);
}

static int form_cmp(const void *a, const void *b)
{
    const struct form *x = a, *y = b;
    if (x->pfx != y->pfx) {
        return x->pfx < y->pfx ? -1 : 1;
    }
    return x->len > y->len ? -1 : x->len < y->len ? 1 : 0;
}

/* Add form text (taken over) of secret idx unless it is too short or already there. */
static void add_form(struct redact_set *s, size_t idx, char *text, size_t len)
{
    for (size_t i = 0; i < s->nforms; i++) {
        if (s->forms[i].len == len && memcmp(s->forms[i].text, text, len) == 0) {
            wipe_free(text, len);
            return;
        }
    }
    if (len < 2) {
        wipe_free(text, len);
        return;
    }
    s->forms = xrealloc(s->forms, (s->nforms + 1) * sizeof(*s->forms));
    s->forms[s->nforms++] = (struct form){text, len, pfx_of(text), idx};
    if (len > s->maxlen) {
        s->maxlen = len;
    }
}

/* The base64 characters fully determined by v when it follows k bytes of something else
 * inside a longer base64 text (k = 0, 1, 2: the three alignments). */
static void add_base64(struct redact_set *s, size_t idx, const char *v, size_t n, int k,
                       const char *alpha)
{
    size_t total = (size_t)k + n, bits = total * 8;
    size_t start = k == 0 ? 0 : k == 1 ? 2 : 3, end = bits / 6;
    unsigned char *in = xcalloc(total + 2, 1);
    memcpy(in + k, v, n);
    char *txt = xmalloc(end + 1);
    for (size_t c = 0; c < end; c++) {
        size_t bit = c * 6, byte = bit / 8, sh = bit % 8;
        unsigned w = (unsigned)in[byte] << 8 | in[byte + 1];
        txt[c] = alpha[(w >> (10 - sh)) & 63];
    }
    wipe_free((char *)in, total + 2);
    if (end <= start) {
        wipe_free(txt, end + 1);
        return;
    }
    char *form = xmalloc(end - start + 1);
    memcpy(form, txt + start, end - start);
    form[end - start] = 0;
    wipe_free(txt, end + 1);
    add_form(s, idx, form, end - start);
}

/* Percent-encoding with hex digits from hex, keeping the unreserved characters and those of
 * keep: encoders differ there (RFC 3986 keeps none, encodeURIComponent and jq keep !*'(),
 * Python's quote keeps /). */
static void add_percent(struct redact_set *s, size_t idx, const char *v, size_t n, const char *hex,
                        const char *keep)
{
    struct buf b;
    buf_init(&b, 0);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || (c && strchr(keep, c))) {
            buf_putc(&b, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            buf_append(&b, e, 3);
        }
    }
    size_t len = 0;
    char *t = buf_detach(&b, &len);
    add_form(s, idx, t, len);
}

/* The value as it appears inside a JSON string (the form our events store). */
static void add_json(struct redact_set *s, size_t idx, const char *v, size_t n)
{
    struct buf b;
    buf_init(&b, 0);
    buf_json_str(&b, v, n);
    size_t len = 0;
    char *t = buf_detach(&b, &len);
    if (len >= 2) { /* without the quotes */
        char *inner = xmalloc(len - 1);
        memcpy(inner, t + 1, len - 2);
        inner[len - 2] = 0;
        add_form(s, idx, inner, len - 2);
    }
    wipe_free(t, len);
}

int redact_set_add(struct redact_set *s, const char *name, const char *value, size_t n)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if (!name || !*name || n < REDACT_MIN_LEN || n > REDACT_MAX_LEN) {
        return ERR_INVALID;
    }
    size_t idx = s->nsecrets;
    s->secrets = xrealloc(s->secrets, (idx + 1) * sizeof(*s->secrets));
    struct secret *sec = &s->secrets[idx];
    sec->name = xstrdup(name);
    sec->value = xmalloc(n + 1);
    memcpy(sec->value, value, n);
    sec->value[n] = 0;
    sec->n = n;
    sec->marker = xasprintf("[REDACTED:%s]", name);
    sec->marker_len = strlen(sec->marker);
    s->nsecrets++;
    add_form(s, idx, xstrdup(sec->value), n);
    for (int k = 0; k < 3; k++) {
        add_base64(s, idx, value, n, k, std);
        add_base64(s, idx, value, n, k, url);
    }
    static const char *const keeps[] = {"", "!*'()", "/"};
    for (int k = 0; k < 3; k++) {
        add_percent(s, idx, value, n, "0123456789ABCDEF", keeps[k]);
        add_percent(s, idx, value, n, "0123456789abcdef", keeps[k]);
    }
    add_json(s, idx, value, n);
    qsort(s->forms, s->nforms, sizeof(*s->forms), form_cmp);
    memset(s->table, 0, sizeof(s->table));
    s->minlen = SHIFT_WINDOW;
    for (size_t i = 0; i < s->nforms; i++) {
        s->table[s->forms[i].pfx >> 6] |= (uint64_t)1 << (s->forms[i].pfx & 63);
        if (s->forms[i].len < s->minlen) {
            s->minlen = s->forms[i].len;
        }
    }
    size_t m = s->minlen;
    memset(s->shift, (int)(m - 1), sizeof(s->shift));
    for (size_t i = 0; i < s->nforms; i++) {
        const unsigned char *t = (const unsigned char *)s->forms[i].text;
        for (size_t q = 0; q + 2 <= m; q++) {
            unsigned x = (unsigned)t[q] << 8 | t[q + 1];
            if (m - 2 - q < s->shift[x]) {
                s->shift[x] = (uint8_t)(m - 2 - q);
            }
        }
    }
    return 0;
}

size_t redact_set_count(const struct redact_set *s)
{
    return s ? s->nsecrets : 0;
}

const char *redact_set_name(const struct redact_set *s, size_t i)
{
    return s->secrets[i].name;
}

const char *redact_set_value(const struct redact_set *s, size_t i, size_t *n)
{
    if (n) {
        *n = s->secrets[i].n;
    }
    return s->secrets[i].value;
}

size_t redact_set_maxlen(const struct redact_set *s)
{
    return s ? s->maxlen : 0;
}

/* The longest form starting at p (avail bytes there), or NULL. */
static const struct form *match_at(const struct redact_set *s, const char *p, size_t avail)
{
    uint16_t k = pfx_of(p);
    if (!(s->table[k >> 6] & ((uint64_t)1 << (k & 63)))) {
        return NULL;
    }
    size_t lo = 0, hi = s->nforms;
    while (lo < hi) { /* the first form with prefix k */
        size_t mid = (lo + hi) / 2;
        if (s->forms[mid].pfx < k) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for (size_t i = lo; i < s->nforms && s->forms[i].pfx == k; i++) {
        const struct form *f = &s->forms[i];
        if (f->len <= avail && memcmp(p, f->text, f->len) == 0) {
            return f;
        }
    }
    return NULL;
}

/* The first form starting at or after *pos in in[0..n): 1 with *pos its start and *fo the
 * form. 0 when there is none: *pos is then the first position not proven free of a form start,
 * n when final (nothing more will come), else a position from which more bytes are needed
 * (n - *pos < maxlen). The window of minlen bytes moves by the shift of its last two bytes;
 * only a shift of 0 costs a look at the forms. */
static int next_form(const struct redact_set *s, const char *in, size_t n, int final, size_t *pos,
                     const struct form **fo)
{
    const unsigned char *u = (const unsigned char *)in;
    size_t i = *pos, m = s->minlen;
    while (i + m <= n) {
        unsigned sh = s->shift[(unsigned)u[i + m - 2] << 8 | u[i + m - 1]];
        if (sh) {
            i += sh;
            continue;
        }
        if (!final && i + s->maxlen > n) {
            break; /* a longer form may start here: wait for more */
        }
        const struct form *f = match_at(s, in + i, n - i);
        if (f) {
            *pos = i;
            *fo = f;
            return 1;
        }
        i++;
    }
    *pos = final ? n : i;
    return 0;
}

int redact_find(const struct redact_set *s, const char *in, size_t n, size_t *off, size_t *len,
                const char **name)
{
    size_t i = 0;
    const struct form *f = NULL;
    if (!s || !s->nforms || !next_form(s, in, n, 1, &i, &f)) {
        return 0;
    }
    *off = i;
    *len = f->len;
    *name = s->secrets[f->secret].name;
    return 1;
}

/* Redact in[start..n) into out; final: the stream ends here. Returns up to where in was
 * released (n when final; otherwise the rest may be the start of a form) and counts hits. */
static size_t scan(const struct redact_set *s, const char *in, size_t start, size_t n, int final,
                   struct buf *out, size_t *hits)
{
    size_t i = start, copied = start;
    const struct form *f = NULL;
    while (next_form(s, in, n, final, &i, &f)) {
        buf_append(out, in + copied, i - copied);
        buf_append(out, s->secrets[f->secret].marker, s->secrets[f->secret].marker_len);
        i += f->len;
        copied = i;
        (*hits)++;
    }
    buf_append(out, in + copied, i - copied);
    return i;
}

size_t redact_buf(const struct redact_set *s, const char *in, size_t n, struct buf *out)
{
    size_t hits = 0;
    if (!s || !s->nforms) {
        buf_append(out, in, n);
        return 0;
    }
    scan(s, in, 0, n, 1, out, &hits);
    return hits;
}

char *redact_str(const struct redact_set *s, const char *in, size_t n, size_t *outlen)
{
    struct buf b;
    buf_init(&b, 0);
    redact_buf(s, in, n, &b);
    buf_putc(&b, 0);
    b.len--;
    return buf_detach(&b, outlen);
}

struct redactor *redactor_new(struct redact_set *s)
{
    struct redactor *r = xcalloc(1, sizeof(*r));
    r->set = redact_set_ref(s);
    buf_init(&r->pend, 0);
    return r;
}

/* Bytes at the end of p[0..n) that begin a UTF-8 sequence without finishing it (0 to 3). */
static size_t utf8_cut(const char *p, size_t n)
{
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)p[n - k];
        if ((c & 0xC0) == 0x80) {
            continue; /* a continuation byte: look further back */
        }
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

/* End of a feed: hold back a[0..an) then b[0..bn), preceded by the unfinished UTF-8 sequence
 * at the end of what this feed released (out from base on): the event that carries a release
 * is JSON text. a may point into the held bytes: the new ones are built apart. */
static void hold(struct redactor *r, struct buf *out, size_t base, const char *a, size_t an,
                 const char *b, size_t bn)
{
    struct buf nb;
    size_t k = out->len > base ? utf8_cut(out->data + base, out->len - base) : 0;
    buf_init(&nb, 0);
    buf_append(&nb, out->data + out->len - k, k);
    out->len -= k;
    buf_append(&nb, a, an);
    buf_append(&nb, b, bn);
    if (r->pend.data) {
        explicit_bzero(r->pend.data, r->pend.len);
    }
    buf_free(&r->pend);
    r->pend = nb;
}

void redactor_feed(struct redactor *r, const char *in, size_t n, struct buf *out)
{
    const struct redact_set *s = r->set;
    size_t hits = 0, start = 0, base = out->len;
    if (!s || !s->nforms) {
        buf_append(out, in, n);
        return;
    }
    if (r->pend.len) {
        /* The held bytes and the chunk's first maxlen bytes: enough to decide every position
         * of the held part, without copying the whole chunk behind them. */
        size_t plen = r->pend.len, take = n < s->maxlen ? n : s->maxlen;
        buf_append(&r->pend, in, take);
        size_t d = scan(s, r->pend.data, 0, r->pend.len, 0, out, &hits);
        if (d < plen) { /* a short chunk: still undecided, hold it all */
            hold(r, out, base, r->pend.data + d, r->pend.len - d, in + take, n - take);
            return;
        }
        start = d - plen; /* in[0..start) went out with the held part */
    }
    /* What may be the start of a form cut by the chunk's end (less than the longest form) is
     * held back for the next chunk. */
    size_t done = scan(s, in, start, n, 0, out, &hits);
    hold(r, out, base, NULL, 0, in + done, n - done);
}

void redactor_flush(struct redactor *r, struct buf *out)
{
    size_t hits = 0;
    if (!r->pend.len) {
        return;
    }
    scan(r->set, r->pend.data, 0, r->pend.len, 1, out, &hits);
    explicit_bzero(r->pend.data, r->pend.len);
    r->pend.len = 0;
}

size_t redactor_held(const struct redactor *r)
{
    return r->pend.len;
}

void redactor_free(struct redactor *r)
{
    if (!r) {
        return;
    }
    if (r->pend.data) {
        explicit_bzero(r->pend.data, r->pend.len);
    }
    buf_free(&r->pend);
    redact_set_unref(r->set);
    free(r);
}
