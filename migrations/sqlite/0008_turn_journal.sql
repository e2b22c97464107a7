-- The turn journal (SPEC §3 "Nothing accepted is lost, nothing is answered twice"):
-- every accepted message is a row before its platform is acknowledged; the turn's
-- record (transcript, events) marks it answered or failed in the same commit; a row
-- left `accepted` by a crash is answered at the next start, or given up
-- (`abandoned`) past RECOVERY_WINDOW. `reply_to` is the platform's own description
-- of where the answer goes, so a restarted process can rebuild it. Additive.
--
-- One B-tree keyed by the turn id (WITHOUT ROWID), and no second index: a turn costs
-- one insert and one in-place update on the hot path, and the rare reads (recovery
-- at start-up, a Discord catch-up, the hourly purge) scan. Ids start with the
-- message's time-ordered id, so new rows land at the end of the tree.
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
) WITHOUT ROWID;
