/*
 * clock.h - time helpers. Thread safe.
 */
#ifndef SESSIOND_CLOCK_H
#define SESSIOND_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/** Wall clock, milliseconds since the epoch. */
int64_t clock_now_ms(void);
/** CLOCK_MONOTONIC in nanoseconds / microseconds / milliseconds. */
int64_t clock_mono_ns(void);
int64_t clock_mono_us(void);
int64_t clock_mono_ms(void);
/** Format epoch ms as "2026-11-23T12:00:00.123Z" (needs n >= 25). */
void clock_iso8601(int64_t ms, char *out, size_t n);

#endif
