-- SQLite's 0011 re-cuts turn_journal and transcripts for how SQLite stores rows
-- (rowid tables, no AUTOINCREMENT). PostgreSQL's heap tables and identity column
-- already are what that migration makes, so nothing changes here; the file keeps the
-- two back-ends' migration numbers in step.
SELECT 1;
