/*
 * ratelimit.h - per-key token buckets (e.g. session creations per user and minute).
 *
 * A bucket holds up to per_minute tokens, starts full and refills at per_minute per minute;
 * each allowed action takes one. A burst of per_minute actions is allowed, then one every
 * 60/per_minute seconds. Keys are kept while their bucket is not full again; the table is
 * pruned of full buckets, so its size follows the keys active in the last minute.
 *
 * Threads: every function is thread safe (one mutex per limiter).
 */
#ifndef SESSIOND_RATELIMIT_H
#define SESSIOND_RATELIMIT_H

#include <stdint.h>

struct ratelimit;

/** A limiter of per_minute actions per key (>= 1). *out: rl_free(). */
int rl_new(int64_t per_minute, struct ratelimit **out);
/** Free. NULL is a no-op. */
void rl_free(struct ratelimit *rl);
/** Take one token of key's bucket at now_ms (monotonic). 0, or ERR_LIMIT with
 * *retry_after_s = whole seconds until a token is back (>= 1). */
int rl_take(struct ratelimit *rl, const char *key, int64_t now_ms, int *retry_after_s);
/** Actions refused so far. */
uint64_t rl_refused(struct ratelimit *rl);

#endif
