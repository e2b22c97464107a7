-- agent-bridge schema, SQLite dialect. Same logical tables as migrations/postgres.
-- Timestamps are unix milliseconds (BIGINT); booleans are INTEGER 0/1.

-- One row per conversation key (platform/workspace/channel[/t:thread|/u:user]).
CREATE TABLE conversations (
    key           TEXT PRIMARY KEY NOT NULL,
    platform      TEXT NOT NULL,
    workspace     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    thread        TEXT,
    user_id       TEXT,
    agent_session TEXT,
    personality   TEXT,
    last_activity BIGINT NOT NULL
) WITHOUT ROWID;
CREATE INDEX conversations_agent_session ON conversations (agent_session);
CREATE INDEX conversations_last_activity ON conversations (last_activity);

-- Every relayed turn: the user's text and the agent's reply.
CREATE TABLE transcripts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE INDEX transcripts_session ON transcripts (session_id, created_at, id);
CREATE INDEX transcripts_created_at ON transcripts (created_at);

-- Platform event ids already handled (Slack retries), until expires_at.
CREATE TABLE seen_events (
    key        TEXT PRIMARY KEY NOT NULL,
    expires_at BIGINT NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_events_expires_at ON seen_events (expires_at);

-- Webhook endpoints and what they subscribe to (`*` = every event type).
CREATE TABLE webhook_endpoints (
    id                         TEXT PRIMARY KEY NOT NULL,
    url                        TEXT NOT NULL,
    description                TEXT,
    token                      TEXT,
    ordered                    INTEGER NOT NULL DEFAULT 0 CHECK (ordered IN (0, 1)),
    secret                     TEXT NOT NULL,
    previous_secret            TEXT,
    previous_secret_expires_at BIGINT,
    enabled                    INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    disabled_reason            TEXT,
    created_at                 BIGINT NOT NULL
);

CREATE TABLE webhook_subscriptions (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type  TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, event_type)
) WITHOUT ROWID;

-- The durable outbox: one event row, one delivery row per subscribed endpoint,
-- written in the transaction of the change that caused them.
CREATE TABLE webhook_events (
    id           TEXT PRIMARY KEY NOT NULL,
    type         TEXT NOT NULL,
    ordering_key TEXT,
    body         TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX webhook_events_created_at ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    ordering_key     TEXT,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    locked_until     BIGINT,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, ordering_key, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   INTEGER NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at  BIGINT NOT NULL,
    status_code   INTEGER,
    response_body TEXT,
    duration_ms   BIGINT NOT NULL,
    error         TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
