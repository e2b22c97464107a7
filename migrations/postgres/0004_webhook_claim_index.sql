-- The delivery claim looks candidates up endpoint by endpoint (enabled endpoints the
-- worker is not skipping), so a skipped endpoint's backlog — say, one that hangs — is
-- never scanned; with only (status, next_attempt_at) every claim would wade through
-- it (see src/store/webhooks.rs). Partial: only pending rows, so it stays small however
-- much delivered history accumulates.
CREATE INDEX webhook_deliveries_pending_due
    ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
