/*
 * test_redact.c - secret values and their encodings replaced by [REDACTED:NAME], in one
 * buffer and in a stream cut at every possible place.
 */
#include "testlib.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/redact.h"
#include "common/xmem.h"

#include <string.h>

static struct redact_set *one(const char *name, const char *value)
{
    struct redact_set *s = redact_set_new();
    ASSERT_EQ(redact_set_add(s, name, value, strlen(value)), 0);
    return s;
}

static char *red(struct redact_set *s, const char *in)
{
    return redact_str(s, in, strlen(in), NULL);
}

TEST(forms_are_replaced)
{
    struct redact_set *s = one("NPM_TOKEN", "s3cr3t-Value/42?");
    char *o = red(s, "a s3cr3t-Value/42? b");
    ASSERT_STREQ(o, "a [REDACTED:NPM_TOKEN] b");
    free(o);
    /* base64 as `printf %s V | base64` prints it: czNjcjN0LVZhbHVlLzQyPw== */
    o = red(s, "czNjcjN0LVZhbHVlLzQyPw==");
    ASSERT(strstr(o, "[REDACTED:NPM_TOKEN]") != NULL);
    ASSERT(strstr(o, "czNjcjN0LVZhbHVl") == NULL);
    free(o);
    /* inside a longer base64 text, at another alignment: base64("x" V) */
    o = red(s, "eHMzY3IzdC1WYWx1ZS80Mj8=");
    ASSERT(strstr(o, "[REDACTED:NPM_TOKEN]") != NULL);
    free(o);
    o = red(s, "q=s3cr3t-Value%2F42%3F&x=s3cr3t-Value%2f42%3f");
    ASSERT_STREQ(o, "q=[REDACTED:NPM_TOKEN]&x=[REDACTED:NPM_TOKEN]");
    free(o);
    redact_set_unref(s);
    /* JSON-escaped */
    s = one("Q", "quote\"back\\slash");
    o = red(s, "{\"v\":\"quote\\\"back\\\\slash\"}");
    ASSERT_STREQ(o, "{\"v\":\"[REDACTED:Q]\"}");
    free(o);
    redact_set_unref(s);
}

TEST(short_and_empty)
{
    struct redact_set *s = redact_set_new();
    ASSERT_EQ(redact_set_add(s, "A", "1234567", 7), ERR_INVALID);
    ASSERT_EQ(redact_set_add(s, "", "12345678", 8), ERR_INVALID);
    char *o = red(s, "12345678");
    ASSERT_STREQ(o, "12345678");
    free(o);
    o = red(NULL, "abc");
    ASSERT_STREQ(o, "abc");
    free(o);
    redact_set_unref(s);
}

TEST(longest_wins_and_two_secrets)
{
    struct redact_set *s = redact_set_new();
    ASSERT_EQ(redact_set_add(s, "SHORT", "abcdefgh", 8), 0);
    ASSERT_EQ(redact_set_add(s, "LONG", "abcdefghijkl", 12), 0);
    char *o = red(s, "abcdefghijkl abcdefghX");
    ASSERT_STREQ(o, "[REDACTED:LONG] [REDACTED:SHORT]X");
    free(o);
    redact_set_unref(s);
}

/* Every split of the text into two and three chunks gives the one-shot result. */
TEST(stream_split_everywhere)
{
    struct redact_set *s = one("TOK", "ghp_Zx9aQ7Lm2Pq");
    const char *text = "before ghp_Zx9aQ7Lm2Pq mid Z2hwX1p4OWFRN0xtMlBx end ghp_Zx9aQ7Lm2P";
    size_t n = strlen(text);
    char *want = red(s, text);
    ASSERT(strstr(want, "ghp_Zx9aQ7Lm2Pq") == NULL);
    for (size_t a = 0; a <= n; a++) {
        for (size_t b = a; b <= n; b += 3) {
            struct redactor *r = redactor_new(s);
            struct buf out;
            buf_init(&out, 0);
            redactor_feed(r, text, a, &out);
            redactor_feed(r, text + a, b - a, &out);
            redactor_feed(r, text + b, n - b, &out);
            redactor_flush(r, &out);
            buf_putc(&out, 0);
            ASSERT_STREQ(out.data, want);
            buf_free(&out);
            redactor_free(r);
        }
    }
    free(want);
    redact_set_unref(s);
}

TEST(stream_byte_by_byte_utf8)
{
    struct redact_set *s = one("K", "zzzzzzzzzz");
    const char *text = "é zzzzzzzzzz ü€ zzzzzzzzz";
    struct redactor *r = redactor_new(s);
    struct buf out;
    buf_init(&out, 0);
    for (size_t i = 0; text[i]; i++) {
        size_t before = out.len;
        redactor_feed(r, text + i, 1, &out);
        /* a release never ends inside a UTF-8 sequence */
        if (out.len > before) {
            size_t j = out.len - 1;
            while (j > 0 && ((unsigned char)out.data[j] & 0xC0) == 0x80) {
                j--;
            }
            unsigned char lead = (unsigned char)out.data[j];
            size_t need = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
            ASSERT_EQ(out.len - j, need);
        }
    }
    redactor_flush(r, &out);
    buf_putc(&out, 0);
    ASSERT_STREQ(out.data, "é [REDACTED:K] ü€ zzzzzzzzz");
    buf_free(&out);
    redactor_free(r);
    redact_set_unref(s);
}

static const struct test_case tests[] = {
    T(forms_are_replaced),      T(short_and_empty),          T(longest_wins_and_two_secrets),
    T(stream_split_everywhere), T(stream_byte_by_byte_utf8),
};
TEST_MAIN(tests)
