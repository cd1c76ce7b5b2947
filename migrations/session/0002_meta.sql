-- Version 2: per-session settings (agent, repository, branch, ...) as key/value pairs.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
