-- Listing conversations by last activity is an admin operation (GET /sessions, the
-- console), while the index cost every turn two writes, one of them at a random
-- place: the conversation's old entry, wherever its previous turn left it. A sort of
-- the conversations table on those rare calls is the better trade (as 0005 did for
-- the agent-session index). Dropping an index is additive for running replicas.
DROP INDEX IF EXISTS conversations_last_activity;
