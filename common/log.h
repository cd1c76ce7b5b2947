/*
 * log.h - structured logging: one JSON object per line on stderr.
 *
 * Messages start with "module: ". The macros check the level before evaluating their
 * arguments. Thread safe (each line is written with a single write(2)).
 * Never log secrets: tokens, API keys, the ?token= query parameter (log_redact_uri helps).
 */
#ifndef SESSIOND_LOG_H
#define SESSIOND_LOG_H

#include <stddef.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
    LOG_LEVEL_OFF
};

/** Current threshold. Written once at start (main), read everywhere. */
extern int log_threshold;

/** Parse "debug|info|warn|error|off"; returns 0 or ERR_INVALID. */
int log_parse_level(const char *s, int *out);
void log_set_level(int level);

/** Write {"ts":…,"level":…,"msg":…} plus fields_json (a JSON object's members without braces,
 * e.g. "\"status\":200", or NULL). */
void log_write(int level, const char *fields_json, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_AT(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) >= log_threshold)                                                                \
            log_write((lvl), NULL, __VA_ARGS__);                                                   \
    } while (0)
#define LOG_DEBUG(...) LOG_AT(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define LOG_INFO(...)  LOG_AT(LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_WARN(...)  LOG_AT(LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_ERROR(...) LOG_AT(LOG_LEVEL_ERROR, __VA_ARGS__)

/** Copy uri into out (size n) with the values of token= and ticket= query parameters
 * replaced by "REDACTED". Always NUL terminates. */
void log_redact_uri(const char *uri, char *out, size_t n);

#endif
