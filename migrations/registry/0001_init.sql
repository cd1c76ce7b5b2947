-- Registry schema, version 1: <data_dir>/registry.db
CREATE TABLE users (
    id         TEXT PRIMARY KEY,              -- provider:id, e.g. token:alice, slack:U123
    name       TEXT,
    email      TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,          -- SHA-256 hex of the secret; the secret is never stored
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,                 -- user | viewer | bot | admin
    created_at INTEGER NOT NULL,
    expires_at INTEGER                        -- epoch ms or NULL
);
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    title         TEXT,
    repo          TEXT,
    visibility    TEXT NOT NULL DEFAULT 'org', -- org | private
    agent         TEXT,
    state         TEXT NOT NULL DEFAULT 'active', -- active | ended | purged
    created_by    TEXT,
    created_at    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0,  -- updated lazily
    last_activity INTEGER                      -- updated lazily
);
CREATE INDEX sessions_created ON sessions(created_at DESC, id DESC);
CREATE TABLE members (
    session_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,                  -- writer | viewer
    PRIMARY KEY (session_id, user_id)
);
CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT,
    updated_at INTEGER NOT NULL
);
