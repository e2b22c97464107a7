-- Indexes for the webhook delivery worker and the admin API (additive only).

-- The ordered-endpoint check in the claim ("is an earlier row of this ordering key
-- still pending?") looks only at pending rows, so a long conversation's delivered
-- history is never scanned.
CREATE INDEX webhook_deliveries_pending_order
    ON webhook_deliveries (endpoint_id, ordering_key, id)
    WHERE status = 'pending';

-- GET /webhooks/{id}/deliveries: an endpoint's newest deliveries first.
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
