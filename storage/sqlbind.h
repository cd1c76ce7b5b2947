/*
 * sqlbind.h - small SQLite binding helpers shared by the store's users.
 */
#ifndef SESSIOND_SQLBIND_H
#define SESSIOND_SQLBIND_H

#include <sqlite3.h>

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

#endif
