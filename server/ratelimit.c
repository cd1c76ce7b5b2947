/*
 * ratelimit.c - per-key token buckets (ratelimit.h).
 *
 * Thread context: any thread; rl->lock guards the table. A token is UNIT units and a bucket
 * gains per_minute units per millisecond, so the refill is exact integer arithmetic. The table is a
 * chained hash; when it holds more than PRUNE_AT keys, buckets that have refilled completely
 * (indistinguishable from a key never seen) are dropped, so memory is bounded by the keys active
 * within the last minute.
 */
#include "server/ratelimit.h"

#include "common/err.h"
#include "common/xmem.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 256
#define PRUNE_AT 4096
#define UNIT     60000 /* units per token: per_minute units refill per ms */

struct bucket {
    char *key;
    int64_t units;   /* tokens x UNIT at last_ms */
    int64_t last_ms; /* monotonic */
    struct bucket *next;
};

struct ratelimit {
    int64_t per_minute;
    pthread_mutex_t lock;
    struct bucket *tab[NBUCKETS];
    size_t nkeys;
    uint64_t refused;
};

int rl_new(int64_t per_minute, struct ratelimit **out)
{
    if (per_minute < 1) {
        return ERR_INVALID;
    }
    struct ratelimit *rl = xcalloc(1, sizeof *rl);
    rl->per_minute = per_minute;
    pthread_mutex_init(&rl->lock, NULL);
    *out = rl;
    return 0;
}

void rl_free(struct ratelimit *rl)
{
    if (!rl) {
        return;
    }
    for (size_t i = 0; i < NBUCKETS; i++) {
        struct bucket *b = rl->tab[i];
        while (b) {
            struct bucket *n = b->next;
            free(b->key);
            free(b);
            b = n;
        }
    }
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

/* Units of b at now_ms, capped at the burst. */
static int64_t refilled(const struct ratelimit *rl, const struct bucket *b, int64_t now_ms)
{
    int64_t cap = rl->per_minute * UNIT;
    int64_t dt = now_ms > b->last_ms ? now_ms - b->last_ms : 0;
    if (dt >= 60000) {
        return cap;
    }
    int64_t u = b->units + dt * rl->per_minute;
    return u < cap ? u : cap;
}

/* Drop the buckets that are full again. rl->lock held. */
static void prune(struct ratelimit *rl, int64_t now_ms)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        for (struct bucket **pp = &rl->tab[i]; *pp;) {
            struct bucket *b = *pp;
            if (refilled(rl, b, now_ms) >= rl->per_minute * UNIT) {
                *pp = b->next;
                free(b->key);
                free(b);
                rl->nkeys--;
            } else {
                pp = &b->next;
            }
        }
    }
}

int rl_take(struct ratelimit *rl, const char *key, int64_t now_ms, int *retry_after_s)
{
    int rc = 0;
    pthread_mutex_lock(&rl->lock);
    struct bucket **head = &rl->tab[hash(key) % NBUCKETS];
    struct bucket *b = *head;
    while (b && strcmp(b->key, key)) {
        b = b->next;
    }
    if (!b) {
        if (rl->nkeys >= PRUNE_AT) {
            prune(rl, now_ms);
        }
        b = xcalloc(1, sizeof *b);
        b->key = xstrdup(key);
        b->units = rl->per_minute * UNIT;
        b->last_ms = now_ms;
        b->next = *head;
        *head = b;
        rl->nkeys++;
    }
    b->units = refilled(rl, b, now_ms);
    b->last_ms = now_ms;
    if (b->units >= UNIT) {
        b->units -= UNIT;
    } else {
        /* ms until the bucket holds one whole token, rounded up to seconds */
        int64_t ms = (UNIT - b->units + rl->per_minute - 1) / rl->per_minute;
        *retry_after_s = (int)((ms + 999) / 1000);
        if (*retry_after_s < 1) {
            *retry_after_s = 1;
        }
        rl->refused++;
        rc = ERR_LIMIT;
    }
    pthread_mutex_unlock(&rl->lock);
    return rc;
}

uint64_t rl_refused(struct ratelimit *rl)
{
    pthread_mutex_lock(&rl->lock);
    uint64_t n = rl->refused;
    pthread_mutex_unlock(&rl->lock);
    return n;
}
