-- Registry schema, version 4: the audit log of security-relevant actions (token mint/revoke,
-- participants, stored secrets, exec, admin-token rotation), and where each token came from.
-- The log is append-only; secrets never appear in it (detail_json names what changed, not the
-- value). actor_* are NULL for the server's own actions (the admin-token rotation at start).
CREATE TABLE audit (
    id             INTEGER PRIMARY KEY,         -- increasing: the paging key (newest first)
    at             INTEGER NOT NULL,            -- epoch ms
    actor_user_id  TEXT,
    actor_token_id TEXT,
    action         TEXT NOT NULL,               -- token.create, token.revoke, exec, ...
    target         TEXT,                        -- a token id, a session id, a user id
    detail_json    TEXT NOT NULL DEFAULT '{}',
    request_ip     TEXT
);
CREATE INDEX audit_action ON audit(action, id);
CREATE INDEX audit_actor ON audit(actor_user_id, id);
-- bootstrap: the admin token registered at start from SESSIOND_ADMIN_TOKEN / admin.token
-- (a changed one revokes the previous bootstrap token); api: minted through POST /v1/tokens.
-- Tokens registered before this version cannot be told apart and stay 'api'.
ALTER TABLE tokens ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
