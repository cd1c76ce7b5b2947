/*
 * requests.h - the `requests` table of a session file: the idempotency records of
 * POST …/messages (and the WebSocket `prompt`). A record is keyed by (the token's user id, the
 * client's client_request_id): keys of different users never meet. It keeps the request's
 * fingerprint (a hex SHA-256 the caller computes from the request's canonical JSON) and the
 * 202 answer given, replayed for a retry of the same request.
 *
 * Thread safety: as sess_tx (the session's lock is held by the group commit that runs the
 * transaction function these are called from).
 */
#ifndef SESSIOND_REQUESTS_H
#define SESSIOND_REQUESTS_H

#include <stddef.h>

struct sess_tx;

/** Inside a session transaction: the record of (user_id, key). 0 when found: *response (the
 * stored answer) and *fingerprint (NULL for a record from before fingerprints) are the
 * caller's to free. ERR_NOT_FOUND when there is none, ERR_DB on failure. */
int requests_tx_find(struct sess_tx *tx, const char *user_id, const char *key, char **fingerprint,
                     char **response);
/** Inside a session transaction: record (user_id, key) with its fingerprint and answer. */
int requests_tx_insert(struct sess_tx *tx, const char *user_id, const char *key,
                       const char *fingerprint, const char *response, size_t response_len);

#endif
