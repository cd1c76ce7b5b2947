/*
 * storage_int.h - what the files of storage/ share and nobody above storage/ may use: the raw
 * SQLite connection and the statement cache of a session, inside a write (struct sess_tx) or
 * a read (struct sess_rd). The typed functions of prompts.c, messages.c, artifacts.c,
 * participants.c, meta.c and requests.c are built on these; callers above storage/ use those.
 *
 * It also gives repos_db.c the registry's one connection, under the registry's lock.
 *
 * Thread safety: as the handle they are given (the session's lock is held).
 */
#ifndef SESSIOND_STORAGE_INT_H
#define SESSIOND_STORAGE_INT_H

#include <sqlite3.h>

struct sess;
struct sess_tx;
struct sess_rd;

/** The session connection, for statements inside an operation. */
sqlite3 *sess_tx_db(struct sess_tx *tx);
/** A prepared statement for sql from the session's statement cache, reset and with its
 * bindings cleared. Owned by the session (do not finalize); valid until the operation returns.
 * The cache is keyed by the SQL text (copied), so prefer a fixed set of statements. NULL on a
 * prepare error. */
sqlite3_stmt *sess_tx_prepare(struct sess_tx *tx, const char *sql);
/** As sess_tx_prepare, inside a read. Reset the statement before the read returns (an
 * unreset SELECT keeps its snapshot open and holds back checkpoints). */
sqlite3_stmt *sess_rd_prepare(struct sess_rd *rd, const char *sql);
/** The session connection inside a read (sqlite3_changes and the like). */
sqlite3 *sess_rd_db(struct sess_rd *rd);

/** A read under the session lock with its raw connection: the spool and the callers not yet
 * moved to typed reads (sess_view). Keep it short (page big reads). */
typedef int (*sess_read_fn)(sqlite3 *db, void *arg);
int sess_read(struct sess *s, sess_read_fn fn, void *arg);

/** Bind s as text, or NULL when s is NULL. SQLITE_STATIC: s must outlive the statement's
 * next step (the usual case: a bind, a step, a reset). */
static inline void sql_bind_text_opt(sqlite3_stmt *st, int i, const char *s)
{
    if (s) {
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, i);
    }
}
struct registry;

/** Take the registry's lock and return its connection, for the other table families of
 * registry.db (repos_db.c): one connection and one lock for the whole file, so that their
 * statements serialize with the registry's instead of contending on SQLite's file lock.
 * Hold it for one short statement or a few; registry_db_unlock() gives it back. */
sqlite3 *registry_db_lock(struct registry *r);
void registry_db_unlock(struct registry *r);

#endif
