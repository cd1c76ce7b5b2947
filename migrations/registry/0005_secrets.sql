-- Registry schema, version 5: admin-managed secrets, global (repo = '') or per repository.
-- sealed is server/secrets.h "v1.…" bound to the aad "secret:<repo>:<name>", so a row copied
-- to another name or repository does not open. The value is never stored in clear and never
-- returned; set_by is the user id of the admin who last set it.
CREATE TABLE secrets (
    repo       TEXT NOT NULL DEFAULT '',        -- '' = global, else a repos.name
    name       TEXT NOT NULL,                   -- [A-Z_][A-Z0-9_]{0,63}
    sealed     TEXT NOT NULL,
    set_by     TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repo, name)
);
