-- Session file schema, version 1. One file per session: <data_dir>/sessions/<id>.db
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,        -- 1, 2, 3 ... no gaps
    type        TEXT    NOT NULL,
    data_json   TEXT    NOT NULL,           -- a serialized JSON object
    author_id   TEXT,
    author_name TEXT,
    created_at  INTEGER NOT NULL            -- epoch ms
);
CREATE TABLE messages (
    id           TEXT PRIMARY KEY,
    role         TEXT NOT NULL,             -- user | assistant | system
    content      TEXT NOT NULL,
    author_id    TEXT,
    author_name  TEXT,
    author_email TEXT,
    context_json TEXT,
    seq          INTEGER,                   -- the seq of its `message` event
    created_at   INTEGER NOT NULL
);
CREATE TABLE prompts (
    id           TEXT PRIMARY KEY,
    message_id   TEXT NOT NULL REFERENCES messages(id),
    author_id    TEXT,
    author_name  TEXT,
    author_email TEXT,
    state        TEXT NOT NULL DEFAULT 'queued', -- queued | running | completed | failed | cancelled
    queued_at    INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    exit_code    INTEGER,
    reason       TEXT
);
CREATE INDEX prompts_state ON prompts(state);
CREATE TABLE artifacts (
    id         TEXT PRIMARY KEY,
    type       TEXT NOT NULL,               -- diff | file | screenshot | dom_selection | pr | log
    path       TEXT,
    mime       TEXT NOT NULL DEFAULT 'application/octet-stream',
    content    BLOB,
    size       INTEGER NOT NULL DEFAULT 0,
    author_id  TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE participants (
    user_id   TEXT PRIMARY KEY,
    name      TEXT,
    email     TEXT,
    joined_at INTEGER NOT NULL,
    last_seen INTEGER
);
-- Idempotency of POST .../messages: a repeated client_request_id returns the first answer.
CREATE TABLE requests (
    client_request_id TEXT PRIMARY KEY,
    response_json     TEXT NOT NULL,
    created_at        INTEGER NOT NULL
);
