/*
 * migrate.h - schema migrations embedded at build time (tools/embed_migrations.sh).
 *
 * migrations/<kind>/NNNN_name.sql has version NNNN. migrate_apply() runs every migration newer
 * than PRAGMA user_version, each in its own transaction that also bumps user_version. A file
 * whose user_version is newer than the newest migration is refused with ERR_NEWER.
 * Not thread safe: call with exclusive use of the connection.
 */
#ifndef SESSIOND_MIGRATE_H
#define SESSIOND_MIGRATE_H

#include <sqlite3.h>

struct migration {
    int version;
    const char *name;
    const char *sql;
};

/* Terminated by an entry with version 0. Generated. */
extern const struct migration migrations_session[];
extern const struct migration migrations_registry[];
extern const struct migration migrations_spool[];

/** Apply pending migrations from list (one of the arrays above). 0, ERR_NEWER or ERR_DB. */
int migrate_apply(sqlite3 *db, const struct migration *list, const char *what);
/** The newest version in list. */
int migrate_latest(const struct migration *list);

#endif
