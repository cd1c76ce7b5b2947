/*
 * test_ratelimit.c - per-key token buckets: burst, refill, Retry-After, keys apart, pruning.
 */
#include "common/err.h"
#include "server/ratelimit.h"
#include "testlib.h"

#include <stdio.h>

TEST(burst_then_refill)
{
    struct ratelimit *rl = NULL;
    int retry = 0;
    ASSERT_EQ(rl_new(3, &rl), 0);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(rl_take(rl, "token:alice", 1000, &retry), 0);
    }
    ASSERT_EQ(rl_take(rl, "token:alice", 1000, &retry), ERR_LIMIT);
    ASSERT_EQ(retry, 20); /* one token per 20 s */
    ASSERT_EQ(rl_take(rl, "token:alice", 1000 + 19000, &retry), ERR_LIMIT);
    ASSERT_EQ(retry, 1);
    ASSERT_EQ(rl_take(rl, "token:alice", 1000 + 20000, &retry), 0);
    ASSERT_EQ(rl_take(rl, "token:alice", 1000 + 20000, &retry), ERR_LIMIT);
    ASSERT_EQ(rl_refused(rl), 3);
    rl_free(rl);
}

TEST(frequent_calls_still_refill)
{
    /* One per minute, asked every 10 ms: the refill must not be lost to rounding. */
    struct ratelimit *rl = NULL;
    int retry = 0, ok = 0;
    ASSERT_EQ(rl_new(1, &rl), 0);
    ASSERT_EQ(rl_take(rl, "k", 0, &retry), 0);
    for (int64_t t = 10; t <= 60000; t += 10) {
        ok += rl_take(rl, "k", t, &retry) == 0;
    }
    ASSERT_EQ(ok, 1);
    rl_free(rl);
}

TEST(keys_apart_and_pruned)
{
    struct ratelimit *rl = NULL;
    int retry = 0;
    char key[32];
    ASSERT_EQ(rl_new(1, &rl), 0);
    ASSERT_EQ(rl_take(rl, "a", 0, &retry), 0);
    ASSERT_EQ(rl_take(rl, "b", 0, &retry), 0);
    ASSERT_EQ(rl_take(rl, "a", 0, &retry), ERR_LIMIT);
    /* Many keys a minute later: the full buckets are dropped, "a" starts full again. */
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "u%d", i);
        ASSERT_EQ(rl_take(rl, key, 61000 + i, &retry), 0);
    }
    ASSERT_EQ(rl_take(rl, "a", 200000, &retry), 0);
    ASSERT(rl_new(0, &(struct ratelimit *){NULL}) == ERR_INVALID);
    rl_free(rl);
    rl_free(NULL);
}

static const struct test_case tests[] = {
    T(burst_then_refill),
    T(frequent_calls_still_refill),
    T(keys_apart_and_pruned),
};
TEST_MAIN(tests)
