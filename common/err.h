/*
 * err.h - the one error enum of sessiond.
 *
 * Every function returns 0 or a negative value from this enum. The mapping from an error to
 * an HTTP status and to a WebSocket close code lives here and nowhere else.
 */
#ifndef SESSIOND_ERR_H
#define SESSIOND_ERR_H

enum err {
    ERR_OK = 0,
    ERR_NOMEM = -1,          /* allocation failed */
    ERR_INVALID = -2,        /* bad input: 400 */
    ERR_NOT_FOUND = -3,      /* 404 */
    ERR_CONFLICT = -4,       /* state conflict / already exists: 409 */
    ERR_IO = -5,             /* file system or socket failure: 500 */
    ERR_DB = -6,             /* SQLite failure: 500 */
    ERR_TOO_LARGE = -7,      /* a cap was hit: 413 */
    ERR_LIMIT = -8,          /* too many (queued prompts, rate): 429 */
    ERR_AUTH = -9,           /* no or bad credentials: 401 */
    ERR_FORBIDDEN = -10,     /* authenticated but not allowed: 403 */
    ERR_GONE = -11,          /* purged: 410 */
    ERR_UNSUPPORTED = -12,   /* unsupported media type: 415 */
    ERR_METHOD = -13,        /* method not allowed: 405 */
    ERR_UNPROCESSABLE = -14, /* well-formed but semantically wrong: 422 */
    ERR_UNAVAILABLE = -15,   /* not configured / shutting down: 503 */
    ERR_TIMEOUT = -16,       /* 504 */
    ERR_CANCELLED = -17,     /* operation cancelled */
    ERR_INTERNAL = -18,      /* a bug or an unexpected state: 500 */
    ERR_NEWER = -19,         /* a file written by a newer build: 500 */
    ERR_CORRUPT = -20,       /* a corrupt data file, moved to quarantine: 500 "storage" */
    ERR_NOSPACE = -21,       /* the data volume is full: 507 */
    ERR_LAST = -22
};

/** A short human sentence for the error ("not found"). Static storage. */
const char *err_str(int err);

/** The stable machine code used in JSON error bodies ("not_found"). Static storage. */
const char *err_code(int err);

/** The HTTP status for the error (200 for ERR_OK). */
int err_http_status(int err);

/** The WebSocket close code for the error (4401 auth, 4403 forbidden, 4404 not found, ...). */
int err_ws_close(int err);

#endif
