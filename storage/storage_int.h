/*
 * storage_int.h - internals shared by the files of storage/ (never included outside it).
 */
#ifndef SESSIOND_STORAGE_INT_H
#define SESSIOND_STORAGE_INT_H

#include <sqlite3.h>

struct registry;

/** Take the registry's lock and return its connection, for the other table families of
 * registry.db (repos_db.c): one connection and one lock for the whole file, so that their
 * statements serialize with the registry's instead of contending on SQLite's file lock.
 * Hold it for one short statement or a few; registry_db_unlock() gives it back. */
sqlite3 *registry_db_lock(struct registry *r);
void registry_db_unlock(struct registry *r);

#endif
