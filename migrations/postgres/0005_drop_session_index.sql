-- Looking conversations up by agent session is an admin operation (DELETE
-- /sessions/{id}, and the 404 check of an unknown history id), while the index cost
-- every turn a write at a random place (session ids are random): a scan of the
-- conversations table on those rare calls is the better trade.
DROP INDEX IF EXISTS conversations_agent_session;
