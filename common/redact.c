/*
 * redact.c - secret values and their encodings found in text (redact.h).
 *
 * Matching: every form is at least REDACT_MIN_LEN - 2 bytes, so its first two bytes index a
 * 65536-bit table; a position whose two bytes are not in the table (nearly all of them) costs
 * one load and one test. The forms sharing a two-byte prefix sit next to each other in a
 * sorted array, longest first, and are compared in full only on a table hit. For the tens of
 * secrets a server holds this is faster than an automaton and needs no construction.
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
    uint64_t table[65536 / 64]; /* bit pfx set: some form starts with these two bytes */
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
    for (size_t i = 0; i < s->nforms; i++) {
        s->table[s->forms[i].pfx >> 6] |= (uint64_t)1 << (s->forms[i].pfx & 63);
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

int redact_find(const struct redact_set *s, const char *in, size_t n, size_t *off, size_t *len,
                const char **name)
{
    if (!s || !s->nforms) {
        return 0;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const struct form *f = match_at(s, in + i, n - i);
        if (f) {
            *off = i;
            *len = f->len;
            *name = s->secrets[f->secret].name;
            return 1;
        }
    }
    return 0;
}

/* Redact in[0..limit) (forms may extend to n); appends to out. Returns where it stopped
 * (>= limit unless limit == 0) and counts hits. */
static size_t scan(const struct redact_set *s, const char *in, size_t n, size_t limit,
                   struct buf *out, size_t *hits)
{
    size_t i = 0, copied = 0;
    while (i < limit) {
        const struct form *f = i + 1 < n ? match_at(s, in + i, n - i) : NULL;
        if (!f) {
            i++;
            continue;
        }
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
    scan(s, in, n, n, out, &hits);
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

void redactor_feed(struct redactor *r, const char *in, size_t n, struct buf *out)
{
    const struct redact_set *s = r->set;
    if (!s || !s->nforms) {
        buf_append(out, in, n);
        return;
    }
    const char *p = in;
    size_t len = n;
    if (r->pend.len) {
        buf_append(&r->pend, in, n);
        p = r->pend.data;
        len = r->pend.len;
    }
    /* A form starting before limit lies wholly inside p[0..len); one starting later may
     * still be cut: hold those bytes back for the next chunk. */
    size_t keep = s->maxlen - 1, limit = len > keep ? len - keep : 0;
    size_t hits = 0;
    size_t done = scan(s, p, len, limit, out, &hits);
    /* Never end a release inside a UTF-8 sequence: the event that carries it is JSON text. */
    size_t back = 0;
    while (done > 0 && back < 3 && done < len && ((unsigned char)p[done] & 0xC0) == 0x80 &&
           out->len > 0 && ((unsigned char)out->data[out->len - 1] & 0x80)) {
        done--;
        out->len--;
        back++;
    }
    if (p == in) {
        buf_append(&r->pend, in + done, len - done);
    } else {
        memmove(r->pend.data, r->pend.data + done, len - done);
        explicit_bzero(r->pend.data + (len - done), done);
        r->pend.len = len - done;
    }
}

void redactor_flush(struct redactor *r, struct buf *out)
{
    size_t hits = 0;
    if (!r->pend.len) {
        return;
    }
    scan(r->set, r->pend.data, r->pend.len, r->pend.len, out, &hits);
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
