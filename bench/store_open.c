/*
 * bench/store_open.c - where the time of a session wake-up goes: creates S session files
 * through the store, writes W events into each, closes the store, then reopens the files
 * one after another with raw SQLite calls mirroring storage/store.c and times each phase
 * (open, pragmas, schema load, first write, close). It explains the cost of an LRU miss.
 * Usage: build/bench/store_open [sessions] [events_each] [rounds]
 */
#include "common/clock.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { P_OPEN, P_PRAGMA, P_SCHEMA, P_WRITE, P_CLOSE, P_N };
static const char *names[P_N] = {"open_v2", "pragmas", "schema+last_seq", "first write (tx)",
                                 "close"};

/* Phases are timed in thread CPU time (user + kernel on behalf of this thread), so the figures
 * stay meaningful while other processes compete for the cores; WALL=1 times wall clock. */
static int use_wall;
static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(use_wall ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void exec1(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, msg);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    int many = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 1000;
    int events = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 20;
    int rounds = argc > 3 ? (int)strtol(argv[3], NULL, 10) : 3;
    char dir[] = "/tmp/sessiond-bench-open.XXXXXX";
    char data[300];
    if (!mkdtemp(dir) || many < 1) {
        return 2;
    }
    snprintf(data, sizeof(data), "{\"content\":\"%0200d\"}", 0);
    /* GLOOKASIDE=SIZE,COUNT: the process-wide default lookaside (before SQLite initializes). */
    if (getenv("GLOOKASIDE")) {
        int gsz = 0, gn = 0;
        sscanf(getenv("GLOOKASIDE"), "%d,%d", &gsz, &gn);
        sqlite3_config(SQLITE_CONFIG_LOOKASIDE, gsz, gn);
    }
    struct store *st = NULL;
    struct store_config cfg = {.data_dir = dir, .max_open = 16};
    if (store_open(&cfg, &st)) {
        return 1;
    }
    char id[32];
    for (int i = 0; i < many; i++) {
        snprintf(id, sizeof(id), "b%d", i);
        struct session_new n = {.id = id, .created_by = "bench"};
        registry_session_create(store_registry(st), &n, NULL);
        store_session_create(st, id);
        struct sess *s = NULL;
        if (store_session_get(st, id, &s) == 0) {
            for (int k = 0; k < events; k++) {
                sess_append(s, "message", NULL, data, NULL);
            }
            sess_put(s);
        }
    }
    store_close(st);

    int64_t tot[P_N] = {0};
    int64_t jm = 0;
    int ckpt = getenv("CKPT") != NULL;
    use_wall = getenv("WALL") != NULL;
    /* VFS=name: open with that VFS (e.g. sessiond-unix, registered by the store). */
    const char *vfs = getenv("VFS");
    /* LOOKASIDE=SIZE,COUNT: the connection's lookaside allocator (SQLite default 1200,100). */
    int la_sz = -1, la_n = 0;
    if (getenv("LOOKASIDE")) {
        sscanf(getenv("LOOKASIDE"), "%d,%d", &la_sz, &la_n);
    }
    long n = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < many; i++) {
            char path[256];
            snprintf(path, sizeof(path), "%s/sessions/b%d.db", dir, i);
            sqlite3 *db = NULL;
            sqlite3_stmt *q = NULL;
            int64_t t0 = now_ns();
            if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, vfs)) {
                return 1;
            }
            if (la_sz >= 0) {
                sqlite3_db_config(db, SQLITE_DBCONFIG_LOOKASIDE, NULL, la_sz, la_n);
            }
            int64_t t1 = now_ns();
            sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
            int one = 1;
            sqlite3_file_control(db, "main", SQLITE_FCNTL_PERSIST_WAL, &one);
            exec1(db, "PRAGMA locking_mode=EXCLUSIVE");
            int64_t ta = now_ns();
            exec1(db, "PRAGMA journal_mode=WAL");
            int64_t tb = now_ns();
            exec1(db, "PRAGMA synchronous=NORMAL");
            exec1(db, "PRAGMA foreign_keys=ON; PRAGMA cache_size=-512");
            int64_t t2 = now_ns();
            jm += tb - ta;
            exec1(db, "PRAGMA user_version");
            sqlite3_prepare_v2(db, "SELECT seq, created_at FROM events ORDER BY seq DESC LIMIT 1",
                               -1, &q, NULL);
            sqlite3_step(q);
            int64_t seq = sqlite3_column_int64(q, 0);
            sqlite3_finalize(q);
            int64_t t3 = now_ns();
            exec1(db, "BEGIN IMMEDIATE");
            sqlite3_prepare_v2(db,
                               "INSERT INTO events(seq,type,data_json,author_id,author_name,"
                               "created_at) VALUES(?,?,?,?,?,?)",
                               -1, &q, NULL);
            sqlite3_bind_int64(q, 1, seq + 1);
            sqlite3_bind_text(q, 2, "message", -1, SQLITE_STATIC);
            sqlite3_bind_text(q, 3, data, -1, SQLITE_STATIC);
            sqlite3_bind_null(q, 4);
            sqlite3_bind_null(q, 5);
            sqlite3_bind_int64(q, 6, clock_now_ms());
            if (sqlite3_step(q) != SQLITE_DONE) {
                fprintf(stderr, "insert: %s\n", sqlite3_errmsg(db));
                return 1;
            }
            sqlite3_finalize(q);
            exec1(db, "COMMIT");
            int64_t t4 = now_ns();
            if (ckpt) {
                sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
            }
            sqlite3_close(db);
            int64_t t5 = now_ns();
            tot[P_OPEN] += t1 - t0;
            tot[P_PRAGMA] += t2 - t1;
            tot[P_SCHEMA] += t3 - t2;
            tot[P_WRITE] += t4 - t3;
            tot[P_CLOSE] += t5 - t4;
            n++;
        }
    }
    int64_t all = 0;
    for (int p = 0; p < P_N; p++) {
        all += tot[p];
        printf("%-18s %8.1f us\n", names[p], (double)tot[p] / 1e3 / (double)n);
    }
    printf("(%s)\n", use_wall ? "wall clock" : "thread CPU time");
    printf("%-18s %8.1f us per wake-up (%ld wake-ups, %d sessions x %d rounds)\n", "total",
           (double)all / 1e3 / (double)n, n, many, rounds);
    printf("  of which journal_mode=WAL %.1f us\n", (double)jm / 1e3 / (double)n);
    printf("data dir: %s\n", dir);
    return 0;
}
