-- The two tables every turn writes, re-cut (figures in bench/README.md, "Figures
-- behind design choices"):
--
-- - turn_journal becomes a rowid table, its turn id a unique index. A row carries the
--   message itself (hundreds of bytes), and SQLite's own advice is that WITHOUT ROWID
--   pays for rows under about a twentieth of a page: as a rowid table the insert and
--   the update that ends the turn each cost less (the update rewrites the row in place
--   and leaves the id's index alone), and fewer pages are written per turn.
-- - transcripts keeps `id INTEGER PRIMARY KEY` without AUTOINCREMENT, which updated
--   sqlite_sequence on every insert. Ids still grow: a new row takes the largest id
--   plus one. Rows leave only by the retention purge, so an id is given again only
--   after the row that held the largest one was itself past retention.
--
-- Both are copied as they are (same columns, same ids, same indexes), inside the
-- migration's transaction, through a temporary table rather than built under another
-- name and renamed: a rename rewrites and re-parses the whole schema, which made a
-- fresh database's start-up about 2.4 ms slower; this way, about 0.7 ms.
-- PostgreSQL's tables are unchanged (its 0011 is empty).

CREATE TEMP TABLE turn_journal_0010 AS
SELECT id, platform, workspace, channel, thread, user_id, message_id, body, reply_to,
    state, received_at, updated_at
FROM turn_journal;
DROP TABLE turn_journal;
CREATE TABLE turn_journal (
    id          TEXT NOT NULL PRIMARY KEY,
    platform    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    thread      TEXT,
    user_id     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    body        TEXT NOT NULL,
    reply_to    TEXT NOT NULL,
    state       TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
INSERT INTO turn_journal (id, platform, workspace, channel, thread, user_id, message_id, body, reply_to,
    state, received_at, updated_at)
SELECT id, platform, workspace, channel, thread, user_id, message_id, body, reply_to,
    state, received_at, updated_at
FROM temp.turn_journal_0010 ORDER BY id;
DROP TABLE temp.turn_journal_0010;

CREATE TEMP TABLE transcripts_0010 AS
SELECT id, session_id, role, content, created_at, platform, channel, thread, user_id,
    message_id
FROM transcripts;
DROP TABLE transcripts;
CREATE TABLE transcripts (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    platform   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    thread     TEXT,
    user_id    TEXT NOT NULL,
    message_id TEXT
);
INSERT INTO transcripts (id, session_id, role, content, created_at, platform, channel, thread, user_id,
    message_id)
SELECT id, session_id, role, content, created_at, platform, channel, thread, user_id,
    message_id
FROM temp.transcripts_0010 ORDER BY id;
DROP TABLE temp.transcripts_0010;
CREATE INDEX transcripts_session ON transcripts (session_id, created_at, id);
CREATE INDEX transcripts_created_at ON transcripts (created_at);
