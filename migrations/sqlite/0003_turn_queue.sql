-- Cross-replica turn order (PostgreSQL uses it; created here too so both schemas
-- keep the same tables). A ticket per turn waiting or running, ordered by arrival.
CREATE TABLE turn_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX turn_queue_conversation ON turn_queue (conversation, received_at, id);
