/*
 * test_sbx.c - the sandbox layer without a server: sandbox-init protocol, the local
 * (bubblewrap) and process backends, limits, files, the output pump.
 */
#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/outpump.h"
#include "sandbox/sbx.h"
#include "testlib.h"

#include <signal.h>
#include <sys/stat.h>

static char tmpdir[256];
static struct outpump *pump;
static struct sbx_backend *be;

static void setup(const char *backend)
{
    log_set_level(LOG_LEVEL_WARN);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_sbx.XXXXXX");
    ASSERT(mkdtemp(tmpdir));
    ASSERT_EQ(outpump_start(&pump), 0);
    struct sbx_config c = {.backend = backend, .data_dir = tmpdir, .memory_mib = 256, .pids = 64};
    int rc = sbx_backend_open(&c, pump, &be);
    if (rc) {
        TFAIL("backend %s: %s", backend, err_str(rc));
    }
}

static void teardown(void)
{
    sbx_backend_free(be);
    outpump_stop(pump);
    util_rm_rf(tmpdir);
}

static struct sbx *mk(const char *name)
{
    struct sbx_spec spec = {.name = name};
    struct sbx *s = NULL;
    int rc = sbx_create(be, &spec, &s);
    if (rc) {
        TFAIL("create: %s", err_str(rc));
    }
    return s;
}

static long atoi_ok(const char *s)
{
    return s ? strtol(s, NULL, 10) : 0;
}

static struct sbx_result run_sh(struct sbx *s, const char *script, int timeout_ms)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    struct sbx_exec_req req = {.argv = argv, .timeout_ms = timeout_ms};
    struct sbx_result r;
    int rc = sbx_run(s, &req, 1 << 20, &r);
    if (rc) {
        TFAIL("run %s: %s", script, err_str(rc));
    }
    return r;
}

TEST(local_exec_basic)
{
    setup("local");
    struct sbx *s = mk("s1");
    struct sbx_result r = run_sh(s, "echo hello; echo err >&2; pwd; id -u; exit 3", 0);
    ASSERT_EQ(r.exit.exit_code, 3);
    ASSERT(strstr(r.out, "hello\n/workspace\n"));
    ASSERT(strcmp(strstr(r.out, "/workspace\n") + 11, "0\n") != 0); /* not root inside */
    ASSERT_STREQ(r.err, "err\n");
    sbx_result_free(&r);
    /* stdin */
    const char *argv[] = {"cat", NULL};
    struct sbx_exec_req req = {.argv = argv, .stdin_data = "piped\n", .stdin_len = 6};
    ASSERT_EQ(sbx_run(s, &req, 1024, &r), 0);
    ASSERT_STREQ(r.out, "piped\n");
    sbx_result_free(&r);
    /* a missing program */
    const char *bad[] = {"no-such-program-xyz", NULL};
    struct sbx_exec_req req2 = {.argv = bad};
    ASSERT_EQ(sbx_run(s, &req2, 1024, &r), 0);
    ASSERT_EQ(r.exit.exit_code, 127);
    ASSERT(r.exit.start_failed);
    sbx_result_free(&r);
    sbx_destroy(s);
    teardown();
}

TEST(local_isolation)
{
    setup("local");
    struct sbx *a = mk("a");
    struct sbx *b = mk("b");
    struct sbx_result r = run_sh(b, "echo secret > mine.txt", 0);
    sbx_result_free(&r);
    char script[1024];
    snprintf(script, sizeof script,
             "ls %s 2>/dev/null && echo SAW_DATA; ls /workspace/../b 2>/dev/null && echo SAW_B;"
             "cat %s/workspaces/b/mine.txt 2>/dev/null && echo SAW_B2;"
             "touch /usr/x 2>/dev/null && echo WROTE_USR; touch /etc/x 2>/dev/null && echo "
             "WROTE_ETC; cat /etc/shadow 2>/dev/null && echo READ_SHADOW;"
             "(exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null && echo TCP;"
             "ls /proc | grep -c '^[0-9]' ; echo done",
             tmpdir, tmpdir);
    const char *argv[] = {"/bin/bash", "-c", script, NULL};
    struct sbx_exec_req req = {.argv = argv};
    ASSERT_EQ(sbx_run(a, &req, 1 << 16, &r), 0);
    ASSERT(!strstr(r.out, "SAW_"));
    ASSERT(!strstr(r.out, "WROTE_"));
    ASSERT(!strstr(r.out, "READ_SHADOW"));
    ASSERT(!strstr(r.out, "TCP"));
    ASSERT(strstr(r.out, "done"));
    sbx_result_free(&r);
    sbx_destroy(a);
    sbx_destroy(b);
    teardown();
}

TEST(local_timeout_and_kill)
{
    setup("local");
    struct sbx *s = mk("t");
    int64_t t0 = clock_mono_ms();
    struct sbx_result r = run_sh(s, "sleep 30 & sleep 30", 300);
    ASSERT(r.exit.timed_out);
    ASSERT_EQ(r.exit.signal, SIGKILL);
    ASSERT(clock_mono_ms() - t0 < 5000);
    sbx_result_free(&r);
    /* the sandbox is still usable */
    r = run_sh(s, "echo ok", 0);
    ASSERT_STREQ(r.out, "ok\n");
    sbx_result_free(&r);
    sbx_destroy(s);
    teardown();
}

struct kctx {
    volatile int done;
    struct sbx_exit st;
    size_t bytes;
    size_t maxchunk;
};

static int k_out(void *ctx, struct sbx_exec *ex, int stream, const char *d, size_t n)
{
    (void)ex;
    (void)stream;
    (void)d;
    struct kctx *k = ctx;
    __atomic_fetch_add(&k->bytes, n, __ATOMIC_SEQ_CST);
    if (n > k->maxchunk) {
        k->maxchunk = n;
    }
    return 0;
}

static void k_exit(void *ctx, struct sbx_exec *ex, const struct sbx_exit *st)
{
    (void)ex;
    struct kctx *k = ctx;
    k->st = *st;
    __atomic_store_n(&k->done, 1, __ATOMIC_SEQ_CST);
}

TEST(local_cancel_term_then_kill)
{
    setup("local");
    struct sbx *s = mk("k");
    const char *argv[] = {"/bin/sh", "-c", "trap '' TERM; echo started; sleep 60", NULL};
    struct sbx_exec_req req = {.argv = argv};
    static const struct sbx_exec_cb cb = {k_out, k_exit};
    struct kctx k = {0};
    struct sbx_exec *ex;
    ASSERT_EQ(sbx_exec(s, &req, &cb, &k, &ex), 0);
    while (!__atomic_load_n(&k.bytes, __ATOMIC_SEQ_CST)) {
        usleep(1000);
    }
    int64_t t0 = clock_mono_ms();
    ASSERT_EQ(sbx_exec_kill(ex, SIGTERM, 200), 0);
    while (!__atomic_load_n(&k.done, __ATOMIC_SEQ_CST)) {
        usleep(1000);
    }
    ASSERT(k.st.killed);
    ASSERT_EQ(k.st.signal, SIGKILL);
    ASSERT(clock_mono_ms() - t0 >= 150);
    sbx_exec_put(ex);
    sbx_destroy(s);
    teardown();
}

TEST(local_limits)
{
    setup("local");
    struct sbx *s = mk("lim");
    /* fork bomb: capped by the pids cgroup / RLIMIT_NPROC (64 here); the sandbox survives */
    struct sbx_result r =
        run_sh(s, "for i in $(seq 1 300); do sleep 2 & done 2>/dev/null; jobs -p | wc -l", 20000);
    ASSERT(atoi_ok(r.out) < 64);
    sbx_result_free(&r);
    int alive = 0;
    for (int i = 0; i < 100 && !alive; i++) {
        r = run_sh(s, "echo alive", 0);
        alive = r.out && strstr(r.out, "alive");
        sbx_result_free(&r);
        if (!alive) {
            usleep(100000);
        }
    }
    ASSERT(alive);
    usleep(2500000); /* let the bomb's sleeps end */
    /* memory: 256 MiB cap; allocating 1 GiB fails or gets killed */
    r = run_sh(s, "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ALLOC_OK ${#x}", 20000);
    fprintf(stderr, "# memory: exit %d signal %d: %s %s\n", r.exit.exit_code, r.exit.signal, r.out,
            r.err);
    ASSERT(!strstr(r.out, "ALLOC_OK"));
    if (r.exit.signal == SIGKILL) {
        ASSERT(r.exit.oom); /* reported as the memory limit */
    }
    sbx_result_free(&r);
    sbx_destroy(s);
    teardown();
}

TEST(local_big_output_merged)
{
    setup("local");
    struct sbx *s = mk("big");
    const char *argv[] = {"/bin/sh", "-c", "head -c 52428800 /dev/zero | tr '\\0' x", NULL};
    struct sbx_exec_req req = {.argv = argv};
    static const struct sbx_exec_cb cb = {k_out, k_exit};
    struct kctx k = {0};
    struct sbx_exec *ex;
    int64_t t0 = clock_mono_us();
    ASSERT_EQ(sbx_exec(s, &req, &cb, &k, &ex), 0);
    while (!__atomic_load_n(&k.done, __ATOMIC_SEQ_CST)) {
        usleep(1000);
    }
    int64_t us = clock_mono_us() - t0;
    fprintf(stderr, "# 50 MB in %lld ms (%.0f MB/s)\n", (long long)us / 1000,
            50.0 * 1e6 / (double)us * 1.048576);
    ASSERT_EQ(k.bytes, 52428800);
    ASSERT(k.maxchunk <= OP_MERGE_MAX);
    ASSERT_EQ(k.st.exit_code, 0);
    sbx_exec_put(ex);
    sbx_destroy(s);
    teardown();
}

TEST(local_files)
{
    setup("local");
    struct sbx *s = mk("f");
    ASSERT_EQ(sbx_write_file(s, "dir/sub/a.txt", "hello", 5), 0);
    struct sbx_result r = run_sh(s,
                                 "cat dir/sub/a.txt; echo; echo more >> dir/sub/a.txt; "
                                 "ln -s /etc/passwd esc; ln -s ../../ up; ln -s dir/sub in",
                                 0);
    ASSERT(strstr(r.out, "hello"));
    ASSERT_EQ(r.exit.exit_code, 0); /* the sandbox user could append: ownership was set */
    sbx_result_free(&r);
    struct buf b;
    buf_init(&b, 1 << 20);
    ASSERT_EQ(sbx_read_file(s, "dir/sub/a.txt", &b), 0);
    ASSERT_STREQ(b.data, "hellomore\n");
    buf_reset(&b);
    ASSERT_EQ(sbx_read_file(s, "in/a.txt", &b), 0); /* a symlink inside is fine */
    buf_reset(&b);
    ASSERT_EQ(sbx_read_file(s, "esc", &b), ERR_INVALID);
    ASSERT_EQ(sbx_read_file(s, "up/etc/passwd", &b), ERR_INVALID);
    ASSERT_EQ(sbx_read_file(s, "../x", &b), ERR_INVALID);
    ASSERT_EQ(sbx_read_file(s, "/etc/passwd", &b), ERR_INVALID);
    ASSERT_EQ(sbx_read_file(s, "nope", &b), ERR_NOT_FOUND);
    ASSERT_EQ(sbx_read_file(s, "dir", &b), ERR_CONFLICT);
    ASSERT_EQ(sbx_write_file(s, "esc", "x", 1), ERR_INVALID);
    ASSERT_EQ(sbx_write_file(s, "up/x", "x", 1), ERR_INVALID);
    ASSERT_EQ(sbx_write_file(s, "a/../../x", "x", 1), ERR_INVALID);
    ASSERT_EQ(sbx_path_check("a\0b", 3), ERR_INVALID);
    json_t *l = NULL;
    ASSERT_EQ(sbx_list_files(s, "", &l), 0);
    ASSERT_EQ(json_array_size(json_object_get(l, "entries")), 4);
    json_decref(l);
    buf_free(&b);
    sbx_destroy(s);
    teardown();
}

TEST(process_backend)
{
    setup("process");
    struct sbx *s = mk("p");
    struct sbx_result r = run_sh(s, "echo hi; pwd", 0);
    ASSERT_EQ(r.exit.exit_code, 0);
    ASSERT(strstr(r.out, "hi\n"));
    ASSERT(strstr(r.out, "/workspaces/p"));
    sbx_result_free(&r);
    sbx_destroy(s);
    teardown();
}

/* Names in a workspace are bytes: a listing shows every entry (invalid UTF-8 as U+FFFD) and a
 * directory whose own name is not UTF-8 can be listed. */
TEST(list_files_names_not_utf8)
{
    setup("process");
    struct sbx *s = mk("names");
    char *p = xasprintf("%s/caf\xe9.sh", sbx_workspace_host(s));
    FILE *f = fopen(p, "w");
    ASSERT(f != NULL);
    fclose(f);
    free(p);
    p = xasprintf("%s/d-\xff\xfe", sbx_workspace_host(s));
    ASSERT_EQ(mkdir(p, 0755), 0);
    free(p);
    ASSERT_EQ(sbx_write_file(s, "ok.txt", "x", 1), 0);
    json_t *l = NULL;
    ASSERT_EQ(sbx_list_files(s, "", &l), 0);
    ASSERT(l != NULL);
    ASSERT_EQ(json_array_size(json_object_get(l, "entries")), 3);
    char *dump = json_dumps(l, JSON_COMPACT);
    ASSERT(strstr(dump, "\"caf\xef\xbf\xbd.sh\"") != NULL);
    free(dump);
    json_decref(l);
    l = NULL;
    ASSERT_EQ(sbx_list_files(s, "d-\xff\xfe", &l), 0);
    ASSERT(l != NULL);
    ASSERT_EQ(json_array_size(json_object_get(l, "entries")), 0);
    json_decref(l);
    sbx_destroy(s);
    teardown();
}

TEST(exec_after_destroy_of_other)
{
    setup("local");
    struct sbx *a = mk("x1");
    struct sbx *b = mk("x2");
    sbx_destroy(a);
    struct sbx_result r = run_sh(b, "echo still", 0);
    ASSERT_STREQ(r.out, "still\n");
    sbx_result_free(&r);
    ASSERT_EQ(sbx_stop(b), 0);
    ASSERT(!sbx_alive(b));
    const char *argv[] = {"true", NULL};
    struct sbx_exec_req req = {.argv = argv};
    ASSERT_EQ(sbx_run(b, &req, 10, &r), ERR_UNAVAILABLE);
    sbx_destroy(b);
    teardown();
}

TEST(local_fork_bomb_killed)
{
    setup("local");
    struct sbx *s = mk("bomb");
    struct sbx_result r = run_sh(s, "bomb() { bomb | bomb & }; bomb; sleep 1; echo survived", 2000);
    sbx_result_free(&r);
    r = run_sh(s, "ps -eo pid,pgid,stat,comm | head -20; ls /proc | grep -c '^[0-9]'", 0);
    fprintf(stderr, "# after the bomb: %s\n", r.out);
    long left = 0;
    const char *last = strrchr(r.out, '\n');
    while (last && last > r.out && last[-1] != '\n') {
        last--;
    }
    left = atoi_ok(last);
    ASSERT(left < 10);
    sbx_result_free(&r);
    sbx_destroy(s);
    teardown();
}

/* Multi-byte characters cut by pipe reads and 16 KiB merges come out intact. */
TEST(utf8_across_chunks)
{
    setup("local");
    struct sbx *s = mk("u");
    const char *argv[] = {"awk",
                          "BEGIN { for (i = 0; i < 200000; i++) printf \"\\303\\251\"; "
                          "for (i = 0; i < 50000; i++) printf \"\\360\\237\\230\\200\" }",
                          NULL};
    struct sbx_exec_req req = {.argv = argv};
    struct sbx_result r;
    ASSERT_EQ(sbx_run(s, &req, 4 << 20, &r), 0);
    ASSERT_EQ(r.exit.exit_code, 0);
    ASSERT_EQ(r.out_len, 200000 * 2 + 50000 * 4);
    for (size_t i = 0; i < 400000; i += 2) {
        ASSERT((unsigned char)r.out[i] == 0xc3 && (unsigned char)r.out[i + 1] == 0xa9);
    }
    for (size_t i = 400000; i < r.out_len; i += 4) {
        ASSERT(!memcmp(r.out + i, "\xf0\x9f\x98\x80", 4));
    }
    sbx_result_free(&r);
    sbx_destroy(s);
    teardown();
}

/* A sandbox with cpus=1 gets a cgroup cpu quota of one CPU. */
TEST(local_cpu_quota)
{
    setup("local");
    struct sbx_spec spec = {.name = "cpu1", .cpus = 1};
    struct sbx *s = NULL;
    ASSERT_EQ(sbx_create(be, &spec, &s), 0);
    FILE *f = popen("cat /sys/fs/cgroup/cpu/sessiond/cpu1/cpu.cfs_quota_us 2>/dev/null", "r");
    char line[64] = "";
    if (f) {
        if (!fgets(line, sizeof line, f)) {
            line[0] = 0;
        }
        pclose(f);
    }
    fprintf(stderr, "# cpu quota: %s\n", line);
    if (line[0]) { /* only where the v1 cpu controller is writable */
        ASSERT_EQ(strtol(line, NULL, 10), 100000);
    }
    sbx_destroy(s);
    teardown();
}

static const struct test_case tests[] = {
    T(local_cpu_quota),
    T(utf8_across_chunks),
    T(local_fork_bomb_killed),
    T(local_exec_basic),
    T(local_isolation),
    T(local_timeout_and_kill),
    T(local_cancel_term_then_kill),
    T(local_limits),
    T(local_big_output_merged),
    T(local_files),
    T(process_backend),
    T(list_files_names_not_utf8),
    T(exec_after_destroy_of_other),
};
TEST_MAIN(tests)
