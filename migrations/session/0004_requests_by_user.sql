-- Version 4: an idempotency key belongs to the user who sent it. Keyed by client_request_id
-- alone, one user's key answered (and silently dropped) another user's message that happened
-- to reuse it. A row also keeps the request's fingerprint (SHA-256 of the canonical JSON of
-- content, context, run, author and agent), so a key reused for a different request is
-- refused (422 idempotency_mismatch) instead of answered with the first request's result.
-- Rows from before are kept under user_id '' (no token has that id): never matched again.
CREATE TABLE requests_by_user (
    user_id           TEXT    NOT NULL,   -- the token's user id
    client_request_id TEXT    NOT NULL,
    fingerprint       TEXT,               -- hex SHA-256; NULL for rows from before version 4
    response_json     TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (user_id, client_request_id)
);
INSERT INTO requests_by_user(user_id, client_request_id, fingerprint, response_json, created_at)
    SELECT '', client_request_id, NULL, response_json, created_at FROM requests;
DROP TABLE requests;
ALTER TABLE requests_by_user RENAME TO requests;
CREATE INDEX requests_created ON requests(created_at);
