-- The spool, version 2: a parked comment's idempotency key belongs to the user who sent it
-- (the token's user id, not the author a bot may name), and carries the request's fingerprint;
-- both are folded into the session's `requests` with the row (session migration 0004).
-- Rows parked before have NULL in both and fold under user_id '' (never matched again).
ALTER TABLE parked ADD COLUMN request_user TEXT;
ALTER TABLE parked ADD COLUMN request_fingerprint TEXT;
