-- The spool (<data_dir>/spool.db), version 1: comments written to hibernated sessions, parked
-- here so the write does not wake the session file; folded into it (and deleted here) when
-- the session next opens, or in the background. Rows are only appended: the store keeps the
-- rowids of each session's rows in memory, so the table needs no secondary index (every
-- insert touches the last page only). See storage/spool.h.
CREATE TABLE parked (
    session_id        TEXT    NOT NULL,
    seq               INTEGER NOT NULL,   -- the event's seq in its session
    created_at        INTEGER NOT NULL,   -- epoch ms
    type              TEXT    NOT NULL,   -- the event's type ('message')
    data_json         TEXT    NOT NULL,   -- the event's data
    author_id         TEXT,
    author_name       TEXT,
    author_email      TEXT,
    message_id        TEXT    NOT NULL,
    content           TEXT    NOT NULL,
    client_request_id TEXT,               -- NULL when the request had none
    response_json     TEXT                -- its stored answer (idempotent replays)
);
