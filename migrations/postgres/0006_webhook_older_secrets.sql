-- Secrets replaced before an endpoint's `previous_secret`, each signing until its
-- expiry: every secret issued in the last 24 hours keeps signing, however many
-- rotations happened in them (SPEC §7). Additive; old replicas ignore it.
CREATE TABLE webhook_older_secrets (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    secret      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX webhook_older_secrets_endpoint ON webhook_older_secrets (endpoint_id, expires_at);
