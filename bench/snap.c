/*
 * bench/snap.c - snapshot/restore timings on a generated tree (default 10,000 files, 100 MiB).
 *
 * Usage: build/bench/snap [--files N] [--mib M] [--dir D] [--rounds R]
 * Prints one line per measurement (with its phases) and a JSON summary line with the 1-minute
 * load average. Page cache is warm (the tree has just been written), as it is at the end of a
 * prompt. Restores are measured with the spare inodes (see workspace/snap/spares.c) and without
 * them. The first snapshot into a fresh store (its own, empty spare directory) is also measured
 * right after a mass delete (10,000 files deleted just before each round; ext4 without a journal is
 * slow to create files then), with packs (the default) and once without (snap_set_pack_min(ctx, 0):
 * one object file per file).
 */
#include "common/clock.h"
#include "common/util.h"
#include "common/xmem.h"
#include "workspace/snap/snap.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng = 88172645463325252ULL;

static uint64_t xr(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fill(char *b, size_t n)
{
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v = xr();
        memcpy(b + i, &v, 8);
    }
}

static void write_file(const char *path, size_t size, int old)
{
    static char *blk;
    if (!blk) {
        blk = xmalloc(1 << 20);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(path);
        exit(1);
    }
    size_t left = size;
    while (left > 0) {
        size_t n = left < (1 << 20) ? left : (1 << 20);
        fill(blk, (n + 7) & ~(size_t)7);
        if (write(fd, blk, n) != (ssize_t)n) {
            perror("write");
            exit(1);
        }
        left -= n;
    }
    if (old) {
        struct timespec ts[2] = {{time(NULL) - 7200, 0}, {time(NULL) - 7200, 0}};
        futimens(fd, ts);
    }
    close(fd);
}

static void print_create_phases(const struct snap_info *si)
{
    printf("  [walk %.1f (of which lock %.1f, cache load %.1f), hash+store %.1f, manifest %.1f ms; "
           "cpu of the calling thread %.1f ms]\n",
           si->walk_us / 1000.0, si->lock_us / 1000.0, si->cache_us / 1000.0, si->hash_us / 1000.0,
           si->manifest_us / 1000.0, si->cpu_us / 1000.0);
}

static void print_restore_phases(const struct snap_restore_info *ri)
{
    printf("  [walk %.1f, remove %.1f, dirs %.1f, copy %.1f, meta+rename %.1f ms]\n",
           ri->walk_us / 1000.0, ri->remove_us / 1000.0, ri->dirs_us / 1000.0, ri->copy_us / 1000.0,
           ri->meta_us / 1000.0);
}

/* CPU time of this process (all threads), ms: on a loaded machine the wall time is mostly
 * waiting for a CPU; this says what the operation itself costs. */
static double cpu_ms(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e3 +
           (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e3;
}

static double load1(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) {
            l = -1;
        }
        fclose(f);
    }
    return l;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int files = 10000, rounds = 5;
    int64_t mib = 100;
    const char *dir = "/tmp/sessiond-bench-snap";
    for (int i = 1; i + 1 < argc; i += 2) {
        int64_t v = 0;
        if (!strcmp(argv[i], "--files") && util_parse_i64(argv[i + 1], &v) == 0) {
            files = (int)v;
        } else if (!strcmp(argv[i], "--mib") && util_parse_i64(argv[i + 1], &v) == 0) {
            mib = v;
        } else if (!strcmp(argv[i], "--rounds") && util_parse_i64(argv[i + 1], &v) == 0) {
            rounds = (int)v;
        } else if (!strcmp(argv[i], "--dir")) {
            dir = argv[i + 1];
        }
    }
    util_rm_rf(dir);
    char *ws = xasprintf("%s/ws", dir), *store = xasprintf("%s/store", dir);
    char *ws2 = xasprintf("%s/ws-restored", dir);
    util_mkdir_p(ws, 0755);
    /* 100 directories, sizes uniform in [0, 2 * mean) */
    size_t mean = (size_t)(mib << 20) / (size_t)files;
    uint64_t total = 0;
    char **paths = xcalloc((size_t)files, sizeof(*paths));
    for (int i = 0; i < files; i++) {
        char *d = xasprintf("%s/dir%03d", ws, i % 100);
        mkdir(d, 0755);
        paths[i] = xasprintf("%s/file%05d.dat", d, i);
        size_t sz = (size_t)(xr() % (2 * mean + 1));
        write_file(paths[i], sz, 1);
        total += sz;
        free(d);
    }
    printf("tree: %d files, %.1f MiB in %s\n", files, (double)total / (1 << 20), ws);

    struct snap_ctx *ctx = NULL;
    snap_ctx_new(&ctx);
    struct snap_store *st = NULL;
    if (snap_store_open(ctx, store, &st) != 0) {
        return 1;
    }
    struct snap_info si;
    double c0 = cpu_ms();
    int64_t t0 = clock_mono_us();
    if (snap_create(st, ws, "first", &si) != 0) {
        return 1;
    }
    int64_t first_us = clock_mono_us() - t0;
    printf("first snapshot: %.1f ms, cpu %.0f ms (%llu files hashed, %.1f MiB new)",
           first_us / 1000.0, cpu_ms() - c0, (unsigned long long)si.hashed,
           (double)si.new_bytes / (1 << 20));
    print_create_phases(&si);
    /* Spare inodes are made in the background after each operation; between two prompts there
     * is time for that, so the steady-state figures below wait for it. */
    snap_background_wait(ctx);

    t0 = clock_mono_us();
    snap_create(st, ws, "unchanged", &si);
    int64_t nochange_us = clock_mono_us() - t0;
    printf("snapshot, nothing changed: %.1f ms (%llu hashed)", nochange_us / 1000.0,
           (unsigned long long)si.hashed);
    print_create_phases(&si);

    int64_t *inc = xcalloc((size_t)rounds, sizeof(*inc));
    int changed = files / 100;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < changed; k++) {
            int i = (int)(xr() % (uint64_t)files);
            write_file(paths[i], (size_t)(xr() % (2 * mean + 1)), 0);
        }
        snap_background_wait(ctx);
        c0 = cpu_ms();
        t0 = clock_mono_us();
        snap_create(st, ws, "1pct", &si);
        inc[r] = clock_mono_us() - t0;
        printf("snapshot, 1%% changed (%d files): %.1f ms, cpu %.0f ms (%llu hashed)", changed,
               inc[r] / 1000.0, cpu_ms() - c0, (unsigned long long)si.hashed);
        print_create_phases(&si);
    }
    qsort(inc, (size_t)rounds, sizeof(*inc), cmp_i64);
    /* as the server does it: a store opened for each snapshot (its pack index is read again) */
    snap_store_close(st);
    for (int k = 0; k < changed; k++) {
        int i = (int)(xr() % (uint64_t)files);
        write_file(paths[i], (size_t)(xr() % (2 * mean + 1)), 0);
    }
    snap_background_wait(ctx);
    t0 = clock_mono_us();
    if (snap_store_open(ctx, store, &st) != 0 || snap_create(st, ws, "1pct reopened", &si) != 0) {
        return 1;
    }
    int64_t reopen_us = clock_mono_us() - t0;
    printf("open store + snapshot, 1%% changed: %.1f ms (%llu hashed)", reopen_us / 1000.0,
           (unsigned long long)si.hashed);
    print_create_phases(&si);
    char last[32];
    snprintf(last, sizeof(last), "%s", si.id);

    struct snap_restore_info ri;
    int64_t rs[3], rs_nospare[3];
    char *dirs[6];
    for (int r = 0; r < 6; r++) {
        /* fresh directories; odd rounds without spare inodes (every file created in place:
         * what a restore costs when the spares are used up) */
        int nospare = r % 2;
        dirs[r] = xasprintf("%s-%d", ws2, r);
        snap_background_wait(ctx);
        sync();
        snap_set_spare_max(ctx, nospare ? 0 : 65536);
        c0 = cpu_ms();
        t0 = clock_mono_us();
        if (snap_restore(st, last, dirs[r], &ri) != 0) {
            return 1;
        }
        int64_t us = clock_mono_us() - t0;
        double cpu = cpu_ms() - c0;
        snap_set_spare_max(ctx, 65536);
        if (nospare) {
            rs_nospare[r / 2] = us;
        } else {
            rs[r / 2] = us;
        }
        printf("restore into a new dir%s: %.1f ms, cpu %.0f ms (%llu files, %.1f MiB, %llu "
               "spares)",
               nospare ? ", no spares" : "", us / 1000.0, cpu, (unsigned long long)ri.copied,
               (double)ri.copied_bytes / (1 << 20), (unsigned long long)ri.spares);
        print_restore_phases(&ri);
    }
    for (int r = 0; r < 6; r++) {
        util_rm_rf(dirs[r]);
        free(dirs[r]);
    }
    /* right after a mass delete (60,000 inodes freed just now): the case ext4 without a
     * journal makes slow (recently_deleted() scans), with and without spares */
    int64_t after_del_us[2];
    for (int nospare = 0; nospare < 2; nospare++) {
        char *d = xasprintf("%s-del%d", ws2, nospare);
        snap_background_wait(ctx);
        snap_set_spare_max(ctx, nospare ? 0 : 65536);
        t0 = clock_mono_us();
        double c1 = cpu_ms();
        snap_restore(st, last, d, &ri);
        after_del_us[nospare] = clock_mono_us() - t0;
        c1 = cpu_ms() - c1;
        snap_set_spare_max(ctx, 65536);
        printf("restore into a new dir right after deleting 60,000 files%s: %.1f ms, cpu %.0f "
               "ms (%llu spares)",
               nospare ? ", no spares" : "", after_del_us[nospare] / 1000.0, c1,
               (unsigned long long)ri.spares);
        print_restore_phases(&ri);
        free(d);
    }
    /* back-to-back restores (an image-start burst): the previous restore drained the spares and
     * its filler runs, while the workspace of an ended session goes away -- deleted (its
     * inodes freed, so the creates that follow scan past them) or discarded (its inodes
     * recycled as spares, see snap_discard_tree) */
    int64_t b2b_us[2][2];
    for (int round = 0; round < 2; round++) {
        for (int recycle = 0; recycle < 2; recycle++) {
            char *old = xasprintf("%s-b2b-old%d%d", ws2, round, recycle);
            char *a = xasprintf("%s-b2b-a%d%d", ws2, round, recycle);
            char *c = xasprintf("%s-b2b-c%d%d", ws2, round, recycle);
            snap_restore(st, last, old, &ri); /* the ended session's workspace */
            snap_background_wait(ctx);        /* the spares are topped up again */
            snap_restore(st, last, a, &ri);   /* drains them; the filler starts */
            int64_t t1 = clock_mono_us();
            if (recycle) {
                snap_discard_tree(ctx, old); /* recycled in the background from now on */
            } else {
                util_rm_rf(old);
            }
            int64_t gone_us = clock_mono_us() - t1;
            t0 = clock_mono_us();
            snap_restore(st, last, c, &ri);
            b2b_us[recycle][round] = clock_mono_us() - t0;
            printf("back-to-back restore after %s a workspace (%.0f ms): %.1f ms "
                   "(%llu spares), load %.2f",
                   recycle ? "discarding" : "deleting", gone_us / 1000.0,
                   b2b_us[recycle][round] / 1000.0, (unsigned long long)ri.spares, load1());
            print_restore_phases(&ri);
            snap_background_wait(ctx);
            util_rm_rf(a);
            util_rm_rf(c);
            free(old);
            free(a);
            free(c);
        }
    }

    /* first snapshot of a fresh store right after a mass delete: rounds with packs, then one
     * without */
    int64_t *fad = xcalloc((size_t)rounds, sizeof(*fad));
    int64_t fad_nopack = 0;
    for (int r = 0; r <= rounds; r++) {
        int nopack = r == rounds;
        char *victim = xasprintf("%s/victim-%d", dir, r);
        char *fstore = xasprintf("%s/fresh-%d/store", dir, r);
        snap_restore(st, last, victim, &ri);
        snap_background_wait(ctx);
        util_rm_rf(victim); /* 10,000 files freed just now */
        snap_set_pack_min(ctx, nopack ? 0 : 1);
        struct snap_store *fs = NULL;
        if (snap_store_open(ctx, fstore, &fs) != 0) {
            return 1;
        }
        c0 = cpu_ms();
        t0 = clock_mono_us();
        if (snap_create(fs, ws, "first", &si) != 0) {
            return 1;
        }
        int64_t us = clock_mono_us() - t0;
        double cpu = cpu_ms() - c0;
        snap_set_pack_min(ctx, 1); /* the default */
        if (nopack) {
            fad_nopack = us;
        } else {
            fad[r] = us;
        }
        printf("first snapshot into a fresh store right after deleting 10,000 files%s: %.1f ms, "
               "cpu %.0f ms (%llu hashed, %.1f MiB new), load %.2f",
               nopack ? ", no packs" : "", us / 1000.0, cpu, (unsigned long long)si.hashed,
               (double)si.new_bytes / (1 << 20), load1());
        print_create_phases(&si);
        snap_store_close(fs);
        snap_background_wait(ctx);
        free(victim);
        free(fstore);
    }
    qsort(fad, (size_t)rounds, sizeof(*fad), cmp_i64);

    qsort(rs, 3, sizeof(*rs), cmp_i64);
    qsort(rs_nospare, 3, sizeof(*rs_nospare), cmp_i64);
    int64_t restore_us = rs[1];

    /* rollback in place: snapshot, change 1%, restore that snapshot over the workspace */
    snap_create(st, ws, "before rollback", &si);
    snprintf(last, sizeof(last), "%s", si.id);
    for (int k = 0; k < changed; k++) {
        write_file(paths[xr() % (uint64_t)files], 100, 0);
    }
    snap_background_wait(ctx);
    t0 = clock_mono_us();
    snap_restore(st, last, ws, &ri);
    int64_t rollback_us = clock_mono_us() - t0;
    printf("rollback in place after 1%% changed: %.1f ms (%llu copied, %llu rewritten, %llu "
           "kept)",
           rollback_us / 1000.0, (unsigned long long)ri.copied, (unsigned long long)ri.rewritten,
           (unsigned long long)ri.kept);
    print_restore_phases(&ri);

    uint64_t used = 0;
    t0 = clock_mono_us();
    snap_prune(st, 3, 0, &used);
    int64_t prune_us = clock_mono_us() - t0;
    printf("prune to 3 + gc: %.1f ms (%.1f MiB of objects left)\n", prune_us / 1000.0,
           (double)used / (1 << 20));

    printf("{\"bench\":\"snap\",\"files\":%d,\"mib\":%.1f,\"first_ms\":%.1f,"
           "\"unchanged_ms\":%.1f,\"pct1_p50_ms\":%.1f,\"pct1_max_ms\":%.1f,"
           "\"restore_p50_ms\":%.1f,\"restore_nospare_p50_ms\":%.1f,"
           "\"restore_after_delete_ms\":%.1f,\"restore_after_delete_nospare_ms\":%.1f,"
           "\"rollback_1pct_ms\":%.1f,\"prune_ms\":%.1f,\"first_after_delete_p50_ms\":%.1f,"
           "\"first_after_delete_max_ms\":%.1f,\"first_after_delete_nopack_ms\":%.1f,"
           "\"reopen_pct1_ms\":%.1f,\"b2b_delete_max_ms\":%.1f,\"b2b_discard_max_ms\":%.1f,"
           "\"load1\":%.2f}\n",
           files, (double)total / (1 << 20), first_us / 1000.0, nochange_us / 1000.0,
           inc[rounds / 2] / 1000.0, inc[rounds - 1] / 1000.0, restore_us / 1000.0,
           rs_nospare[1] / 1000.0, after_del_us[0] / 1000.0, after_del_us[1] / 1000.0,
           rollback_us / 1000.0, prune_us / 1000.0, fad[rounds / 2] / 1000.0,
           fad[rounds - 1] / 1000.0, fad_nopack / 1000.0, reopen_us / 1000.0,
           (b2b_us[0][0] > b2b_us[0][1] ? b2b_us[0][0] : b2b_us[0][1]) / 1000.0,
           (b2b_us[1][0] > b2b_us[1][1] ? b2b_us[1][0] : b2b_us[1][1]) / 1000.0, load1());
    snap_background_wait(ctx);
    snap_store_close(st);
    snap_ctx_free(ctx);
    util_rm_rf(dir);
    for (int i = 0; i < files; i++) {
        free(paths[i]);
    }
    free(paths);
    free(inc);
    free(fad);
    free(ws);
    free(ws2);
    free(store);
    return 0;
}
