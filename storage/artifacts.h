/*
 * artifacts.h - the `artifacts` table of a session file: diffs, files, screenshots, DOM
 * selections and pull-request links, with their bytes.
 *
 * Thread safety: as sess_tx / sess_rd (the session's lock is held).
 */
#ifndef SESSIOND_ARTIFACTS_H
#define SESSIOND_ARTIFACTS_H

#include <stddef.h>
#include <stdint.h>

struct buf;
struct sess_rd;
struct sess_tx;

/** An artifact; strings borrowed (NULL = SQL NULL). */
struct artifact_row {
    const char *id;
    const char *type; /* diff | file | screenshot | dom_selection | pr | log */
    const char *path;
    const char *mime;
    const void *data; /* artifacts_insert only (NULL with len 0: empty) */
    size_t len;       /* the content's size */
    const char *author_id;
    int64_t created_at; /* epoch ms (artifacts_insert: the transaction's time) */
};

/** Insert a (created_at is the transaction's time; a->created_at is ignored). */
int artifacts_insert(struct sess_tx *tx, const struct artifact_row *a);

/** Called for each row (data is NULL); valid during the call only. */
typedef int (*artifacts_row_fn)(void *ctx, const struct artifact_row *a);
/** fn for every artifact, oldest first, without their bytes; fn's error stops the walk. */
int artifacts_list(struct sess_rd *rd, artifacts_row_fn fn, void *ctx);
/** The bytes of artifact id appended to data, and its type in mime (truncated to mimecap).
 * ERR_NOT_FOUND when there is none. */
int artifacts_get(struct sess_rd *rd, const char *id, struct buf *data, char *mime, size_t mimecap);

#endif
