-- Registry schema, version 6: automatic pull requests. repos.pr says what sessiond does after a
-- prompt that changed files: off (nothing; what repositories registered before this version
-- keep), draft or ready (push the session branch and open or update one pull request per
-- session). pull_requests holds that pull request of each session (one row per session; a row
-- without a number records only the last failure, so pr.failed is said once), kept after the
-- session ends for the adoption figures (created, merged, time to merge, repository).
-- Owned by storage/prs_db.c.
ALTER TABLE repos ADD COLUMN pr TEXT NOT NULL DEFAULT 'off';
CREATE TABLE pull_requests (
    session_id    TEXT PRIMARY KEY,
    repo          TEXT NOT NULL,                  -- the registered repository's name
    number        INTEGER,                        -- NULL: none opened yet
    url           TEXT,                           -- https://github.com/OWNER/REPO/pull/N
    api_url       TEXT,
    node_id       TEXT,                           -- GraphQL id (draft <-> ready)
    state         TEXT NOT NULL DEFAULT 'open',   -- open | merged | closed
    draft         INTEGER NOT NULL DEFAULT 0,
    ci_state      TEXT,                           -- combined checks: pending | success | failure | error
    head_sha      TEXT,                           -- the commit last pushed for it
    title         TEXT,
    files         TEXT NOT NULL DEFAULT '[]',     -- JSON array of changed paths (capped)
    credentials   TEXT,                           -- user | app | token: who opened it
    created_at    INTEGER,
    updated_at    INTEGER,
    merged_at     INTEGER,
    closed_at     INTEGER,
    failed_reason TEXT,                           -- last pr.failed reason; NULL after a success
    failed_at     INTEGER
);
CREATE INDEX pull_requests_repo ON pull_requests(repo, created_at);
CREATE INDEX pull_requests_url ON pull_requests(url);
