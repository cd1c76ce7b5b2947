-- Registry schema, version 2: repositories, their images, the repository state of sessions,
-- and users' stored (sealed) credentials. Owned by sandbox/repos.c.
CREATE TABLE repos (
    name               TEXT PRIMARY KEY,          -- [A-Za-z0-9_-]{1,64}
    url                TEXT NOT NULL,             -- https://…, file:// or a path (tests)
    default_branch     TEXT NOT NULL DEFAULT 'main',
    setup              TEXT NOT NULL DEFAULT '[]', -- JSON array of shell commands
    hints              TEXT NOT NULL DEFAULT '[]', -- JSON array of classification hints
    description        TEXT NOT NULL DEFAULT '',
    pool_size          INTEGER NOT NULL DEFAULT 2,
    image_interval_min INTEGER NOT NULL DEFAULT 30, -- 0 = only on request
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    repo        TEXT NOT NULL,
    state       TEXT NOT NULL,                    -- building | ready | failed | deleted
    step        TEXT,                             -- what the build is doing now
    commit_sha  TEXT,
    snapshot_id TEXT,                             -- in <data_dir>/repos/<repo>/images
    started_at  INTEGER NOT NULL,
    built_at    INTEGER,
    duration_ms INTEGER,
    size_bytes  INTEGER,
    files       INTEGER,
    log         TEXT NOT NULL DEFAULT '',         -- setup output (capped), kept on failure
    error       TEXT
);
CREATE INDEX images_repo ON images(repo, started_at DESC);
CREATE TABLE session_repos (
    session_id  TEXT PRIMARY KEY,
    repo        TEXT NOT NULL,
    branch      TEXT NOT NULL,                    -- sessiond/<session-id>
    source      TEXT,                             -- warm | snapshot | image | clone
    ready_ms    INTEGER,
    image_id    TEXT,
    turn        INTEGER NOT NULL DEFAULT 0,
    pushed_sha  TEXT,
    pr_url      TEXT,
    created_at  INTEGER NOT NULL
);
CREATE TABLE user_credentials (
    user_id    TEXT NOT NULL,
    provider   TEXT NOT NULL,                     -- github
    sealed     TEXT NOT NULL,                     -- server/secrets.h "v1.…"; never returned
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, provider)
);
