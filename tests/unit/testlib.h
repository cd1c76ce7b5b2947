/*
 * testlib.h - the unit-test harness (modelled on libuv's test/task.h).
 *
 * A test file defines TEST(name) functions and one list:
 *   static const struct test_case tests[] = { T(name), ... };
 *   TEST_MAIN(tests)
 * Each test runs in its own forked process with a timeout (TEST_TIMEOUT_S, default 60) and
 * prints one TAP-ish line, "ok - file:name" or "not ok - file:name", which tests/run.sh counts.
 * `prog NAME` runs only that test (in-process, for gdb).
 */
#ifndef SESSIOND_TESTLIB_H
#define SESSIOND_TESTLIB_H

#include <inttypes.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct test_case {
    const char *name;
    void (*fn)(void);
};

#define TEST(name) static void name(void)
/* clang-format off */
#define T(name) {#name, name}
/* clang-format on */

#define TFAIL(...)                                                                                 \
    do {                                                                                           \
        fprintf(stderr, "# %s:%d: ", __FILE__, __LINE__);                                          \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        fflush(stderr);                                                                            \
        _exit(1);                                                                                  \
    } while (0)

#define ASSERT(c)                                                                                  \
    do {                                                                                           \
        if (!(c))                                                                                  \
            TFAIL("assertion failed: %s", #c);                                                     \
    } while (0)

#define ASSERT_EQ(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            TFAIL("%s == %s: %lld != %lld", #a, #b, a_, b_);                                       \
    } while (0)

#define ASSERT_STREQ(a, b)                                                                         \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                     \
            TFAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");   \
    } while (0)

/* Shell helpers for tests that drive real tools (git, sqlite3): run a command and fail the
 * test if it exits non-zero; or return the first line of its output (caller frees). */
__attribute__((format(printf, 1, 2))) static inline void tsh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0) {
        TFAIL("command failed (%d): %s", rc, cmd);
    }
}

__attribute__((format(printf, 1, 2))) static inline char *tout1(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    FILE *f = popen(cmd, "r");
    ASSERT(f != NULL);
    char line[4096] = {0};
    if (!fgets(line, sizeof(line), f)) {
        line[0] = 0;
    }
    pclose(f);
    line[strcspn(line, "\n")] = 0;
    char *out = strdup(line);
    ASSERT(out != NULL);
    return out;
}

#ifndef TEST_TIMEOUT_S
#define TEST_TIMEOUT_S 60
#endif

static inline const char *testlib_base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static inline int testlib_run(const struct test_case *t, size_t n, int argc, char **argv)
{
    int failed = 0;
    const char *prog = testlib_base(argv[0]);
    for (size_t i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], t[i].name) != 0) {
            continue;
        }
        if (argc > 1) {
            t[i].fn();
            printf("ok - %s:%s\n", prog, t[i].name);
            return 0;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(TEST_TIMEOUT_S);
            t[i].fn();
            fflush(stdout);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!ok && WIFSIGNALED(st)) {
            fprintf(stderr, "# %s:%s killed by signal %d%s\n", prog, t[i].name, WTERMSIG(st),
                    WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
        }
        printf("%s - %s:%s\n", ok ? "ok" : "not ok", prog, t[i].name);
        fflush(stdout);
        failed += !ok;
    }
    return failed ? 1 : 0;
}

#define TEST_MAIN(list)                                                                            \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        return testlib_run(list, sizeof(list) / sizeof(list[0]), argc, argv);                      \
    }

#endif
