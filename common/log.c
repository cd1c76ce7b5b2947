/*
 * log.c - JSON-lines logger. Thread safe: a line is formatted into a local buffer and written
 * with one write(2) to fd 2, so lines from different threads never interleave.
 */
#include "log.h"

#include "buf.h"
#include "clock.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

int log_threshold = LOG_LEVEL_INFO;

static const char *names[] = {"debug", "info", "warn", "error", "off"};

int log_parse_level(const char *s, int *out)
{
    for (int i = 0; i <= LOG_LEVEL_OFF; i++) {
        if (s && strcasecmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    return ERR_INVALID;
}

void log_set_level(int level)
{
    log_threshold = level;
}

void log_write(int level, const char *fields_json, const char *fmt, ...)
{
    char msg[2048];
    char ts[32];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n >= sizeof(msg)) {
        n = sizeof(msg) - 1;
    }
    /* Strip trailing newlines that library messages (MHD, lws) carry. */
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) {
        msg[--n] = 0;
    }
    clock_iso8601(clock_now_ms(), ts, sizeof(ts));
    struct buf b;
    buf_init(&b, 0);
    buf_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts,
               names[level < 0 ? 0 : (level > 3 ? 3 : level)]);
    buf_json_str(&b, msg, (size_t)n);
    if (fields_json && *fields_json) {
        buf_putc(&b, ',');
        buf_puts(&b, fields_json);
    }
    buf_puts(&b, "}\n");
    (void)!write(2, b.data, b.len);
    buf_free(&b);
}

void log_redact_uri(const char *uri, char *out, size_t n)
{
    size_t o = 0;
    if (n == 0) {
        return;
    }
    const char *q = strchr(uri, '?');
    if (!q) {
        snprintf(out, n, "%s", uri);
        return;
    }
    for (const char *p = uri; *p && o + 1 < n;) {
        out[o++] = *p;
        if (p >= q && (*p == '?' || *p == '&')) {
            p++;
            if (strncmp(p, "token=", 6) == 0 || strncmp(p, "ticket=", 7) == 0) {
                const char *eq = strchr(p, '=');
                while (p <= eq && o + 1 < n) {
                    out[o++] = *p++;
                }
                const char *red = "REDACTED";
                while (*red && o + 1 < n) {
                    out[o++] = *red++;
                }
                while (*p && *p != '&') {
                    p++;
                }
            }
            continue;
        }
        p++;
    }
    out[o] = 0;
}
