//! `impl WebhookStore for SqlStore`: webhook endpoints and their subscriptions, and the
//! delivery side of the outbox — claiming due rows under a lease, recording attempts,
//! listing and retrying deliveries. Each method is a read on a pooled connection or
//! one write (`ops::Op`); the statements (the claim's per-back-end pair included) are
//! in `sql.rs`.
//!
//! Filling the outbox is not here: a commit (`ops::apply`, `Op::Commit`) writes the
//! event and its delivery rows in the transaction of the change that caused them.
//! Deciding *what* an attempt's outcome means (retry schedule, 410, `Retry-After`) is
//! not here either: that is `webhook::worker`; this module only writes what it is
//! told.
//!
//! A worker that dies holding a lease simply lets it expire; the row is then due again
//! (at least once). Results and renewals present the lease they were given, so a
//! worker whose lease expired and whose row was re-claimed cannot overwrite the new
//! holder's state.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::ops::{self, Op};
use super::{to_ms, SqlStore};
use crate::core::ports::StoreError;
use crate::webhook::store::{
    ClaimRequest, ClaimedDelivery, DeliveryRecord, DeliveryResult, WebhookEndpoint, WebhookStore,
};

#[async_trait]
impl WebhookStore for SqlStore {
    async fn create_endpoint(&self, ep: &WebhookEndpoint) -> Result<(), StoreError> {
        self.write(Op::CreateEndpoint(Box::new(ep.clone())))
            .await?
            .done()
    }

    async fn endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        ops::endpoint(&mut self.reader().await?, id).await
    }

    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        ops::endpoints(&mut self.reader().await?).await
    }

    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        self.write(Op::DeleteEndpoint(id.to_owned())).await?.yes()
    }

    async fn set_subscriptions(&self, id: &str, events: &[String]) -> Result<bool, StoreError> {
        let op = Op::SetSubscriptions {
            id: id.to_owned(),
            events: events.to_vec(),
        };
        self.write(op).await?.yes()
    }

    async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        previous_expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let op = Op::RotateSecret {
            id: id.to_owned(),
            secret: secret.to_owned(),
            previous_expires_at: to_ms(previous_expires_at),
        };
        self.write(op).await?.yes()
    }

    async fn replace_stored_secret(
        &self,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<u64, StoreError> {
        let op = Op::ReplaceSecret {
            id: id.to_owned(),
            old: old.to_owned(),
            new: new.to_owned(),
        };
        self.write(op).await?.count()
    }

    async fn set_endpoint_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let op = Op::SetEnabled {
            id: id.to_owned(),
            enabled,
            reason: reason.map(str::to_owned),
        };
        self.write(op).await?.yes()
    }

    async fn claim_deliveries(
        &self,
        claim: &ClaimRequest,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // Only an enabled endpoint's deliveries are claimed: while the SQLite writer
        // knows none is, the idle worker's poll costs no transaction.
        if self.writer.as_ref().is_some_and(|w| !w.wants_claims()) {
            return Ok(Vec::new());
        }
        self.write(Op::Claim(claim.clone())).await?.claimed()
    }

    async fn renew_lease(&self, id: i64, lease: i64, until: i64) -> Result<bool, StoreError> {
        self.write(Op::RenewLease { id, lease, until }).await?.yes()
    }

    async fn release_deliveries(&self, held: &[(i64, i64)]) -> Result<(), StoreError> {
        if held.is_empty() {
            return Ok(());
        }
        self.write(Op::Release(held.to_vec())).await?.done()
    }

    async fn record_results(&self, results: &[DeliveryResult]) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        self.write(Op::RecordResults(results.to_vec()))
            .await?
            .done()
    }

    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        ops::deliveries(&mut self.reader().await?, endpoint_id, limit).await
    }

    async fn retry_delivery(
        &self,
        endpoint_id: &str,
        delivery_id: i64,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let op = Op::RetryDelivery {
            endpoint_id: endpoint_id.to_owned(),
            delivery_id,
            now: to_ms(now),
        };
        self.write(op).await?.yes()
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        ops::outbox_backlog(&mut self.reader().await?).await
    }

    async fn purge_outbox(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.write(Op::PurgeOutbox(to_ms(before))).await?.count()
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use time::Duration;

    use super::*;
    use crate::core::events::{EventKind, OutboxEvent};
    use crate::core::ports::{Commit, Transcripts};
    use crate::webhook::store::{AttemptRecord, DeliveryStatus};

    const T0: OffsetDateTime = datetime!(2026-06-01 10:00:00 UTC);

    async fn count(s: &SqlStore, statement: &'static str) -> i64 {
        let statement = super::super::sql::Sql::new(statement);
        ops::scalar(&mut s.reader().await.unwrap(), &statement, &[])
            .await
            .unwrap()
    }

    async fn store() -> SqlStore {
        let s = super::super::connect("sqlite::memory:").await.unwrap();
        s.migrate().await.unwrap();
        s
    }

    fn endpoint(id: &str, ordered: bool, events: &[&str]) -> WebhookEndpoint {
        WebhookEndpoint {
            id: id.into(),
            url: format!("http://r.test/{id}"),
            description: None,
            token: None,
            ordered,
            secret: "whsec_AAAA".into(),
            previous_secret: None,
            previous_secret_expires_at: None,
            older_secrets: Vec::new(),
            enabled: true,
            disabled_reason: None,
            created_at: T0,
            events: events.iter().map(|e| e.to_string()).collect(),
        }
    }

    async fn emit(s: &SqlStore, key: &str, at: OffsetDateTime) -> String {
        let ev = OutboxEvent::new(
            EventKind::Conversation,
            Some(key.into()),
            &serde_json::json!({ "key": key }),
            at,
        );
        let id = ev.id.as_str().to_owned();
        s.commit(Commit {
            events: vec![ev],
            ..Commit::default()
        })
        .await
        .unwrap();
        id
    }

    fn claim(now: OffsetDateTime, skip: &[&str]) -> ClaimRequest {
        ClaimRequest {
            now,
            lease_until: now + Duration::seconds(20),
            limit: 100,
            skip_endpoints: skip.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn result(row: &ClaimedDelivery, status: DeliveryStatus, at: OffsetDateTime) -> DeliveryResult {
        DeliveryResult {
            delivery_id: row.id,
            endpoint_id: row.endpoint_id.clone(),
            lease: row.lease,
            status,
            next_attempt_at: at,
            attempt: AttemptRecord {
                attempted_at: at,
                status_code: Some(if status == DeliveryStatus::Delivered {
                    200
                } else {
                    500
                }),
                response_body: Some("ok".into()),
                duration_ms: 3,
                error: None,
            },
            disable_endpoint: None,
        }
    }

    #[tokio::test]
    async fn webhook_claims_lease_rows_and_give_them_back_when_the_lease_expires() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_a", false, &["*"]))
            .await
            .unwrap();
        let event = emit(&s, "k1", T0).await;

        let rows = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, event);
        assert_eq!(rows[0].attempts, 0);
        assert!(rows[0].body.contains("\"k1\""));
        // Leased: nobody else gets it, until the lease has passed.
        assert!(s
            .claim_deliveries(&claim(T0, &[]))
            .await
            .unwrap()
            .is_empty());
        let later = T0 + Duration::seconds(21);
        let again = s.claim_deliveries(&claim(later, &[])).await.unwrap();
        assert_eq!(again.len(), 1);
        // The first holder's result no longer counts: its lease is stale.
        s.record_results(&[result(&rows[0], DeliveryStatus::Delivered, later)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 1);
        s.record_results(&[result(&again[0], DeliveryStatus::Delivered, later)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 0);
        let log = s.deliveries("ep_a", 10).await.unwrap();
        assert_eq!(log[0].status, DeliveryStatus::Delivered);
        assert_eq!(log[0].attempts, 1);
        // Both attempts happened and are on record.
        assert_eq!(log[0].attempt_log.len(), 2);
    }

    #[tokio::test]
    async fn the_outbox_purge_removes_finished_deliveries_past_retention_and_keeps_the_rest() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_a", false, &["*"]))
            .await
            .unwrap();
        let delivered = emit(&s, "k1", T0).await;
        let failed = emit(&s, "k2", T0).await;
        let pending = emit(&s, "k3", T0).await;
        let rows = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        assert_eq!(rows.len(), 3);
        let row = |id: &str| rows.iter().find(|r| r.event_id == id).unwrap();
        let done_at = T0 + Duration::seconds(1);
        s.record_results(&[
            result(row(&delivered), DeliveryStatus::Delivered, done_at),
            result(row(&failed), DeliveryStatus::Failed, done_at),
            result(row(&pending), DeliveryStatus::Pending, done_at),
        ])
        .await
        .unwrap();

        // Nothing has ended before the cut-off yet.
        assert_eq!(s.purge_outbox(T0).await.unwrap(), 0);
        assert_eq!(s.deliveries("ep_a", 10).await.unwrap().len(), 3);

        // A row's end is stamped with the real clock; a cut-off just after it takes it.
        let purged = s
            .purge_outbox(OffsetDateTime::now_utc() + Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(purged, 2, "the delivered and the failed one");
        let left = s.deliveries("ep_a", 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].event_id, pending);
        assert_eq!(left[0].status, DeliveryStatus::Pending);
        assert_eq!(left[0].attempt_log.len(), 1, "its attempts stay");
        assert_eq!(s.outbox_backlog().await.unwrap(), 1);
        let events = count(&s, "SELECT COUNT(*) FROM webhook_events").await;
        assert_eq!(events, 1, "only the pending delivery's event is kept");
        let attempts = count(&s, "SELECT COUNT(*) FROM webhook_attempts").await;
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn webhook_claims_keep_an_ordered_endpoints_key_in_order() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_o", true, &["conversation"]))
            .await
            .unwrap();
        let first = emit(&s, "conv-a", T0).await;
        let second = emit(&s, "conv-a", T0 + Duration::milliseconds(1)).await;
        let other = emit(&s, "conv-b", T0 + Duration::milliseconds(2)).await;
        let now = T0 + Duration::seconds(1);

        let rows = s.claim_deliveries(&claim(now, &[])).await.unwrap();
        let mut ids: Vec<_> = rows.iter().map(|r| r.event_id.clone()).collect();
        ids.sort();
        let mut expected = vec![first.clone(), other];
        expected.sort();
        assert_eq!(ids, expected, "conv-a's second event waits for its first");

        // A retry pending later still blocks the key.
        let a1 = rows.iter().find(|r| r.event_id == first).unwrap();
        let retry_at = now + Duration::seconds(5);
        s.record_results(&[result(a1, DeliveryStatus::Pending, retry_at)])
            .await
            .unwrap();
        assert!(s
            .claim_deliveries(&claim(now, &[]))
            .await
            .unwrap()
            .is_empty());

        let rows = s.claim_deliveries(&claim(retry_at, &[])).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, first);
        assert_eq!(rows[0].attempts, 1);
        s.record_results(&[result(&rows[0], DeliveryStatus::Delivered, retry_at)])
            .await
            .unwrap();
        let rows = s.claim_deliveries(&claim(retry_at, &[])).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, second);
    }

    #[tokio::test]
    async fn webhook_claims_skip_disabled_and_saturated_endpoints_and_future_rows() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_on", false, &["*"]))
            .await
            .unwrap();
        s.create_endpoint(&endpoint("ep_busy", false, &["*"]))
            .await
            .unwrap();
        s.create_endpoint(&endpoint("ep_off", false, &["*"]))
            .await
            .unwrap();
        emit(&s, "k", T0).await;
        s.set_endpoint_enabled("ep_off", false, Some("410"))
            .await
            .unwrap();

        // Not due before the event happened.
        assert!(s
            .claim_deliveries(&claim(T0 - Duration::seconds(1), &[]))
            .await
            .unwrap()
            .is_empty());
        let rows = s.claim_deliveries(&claim(T0, &["ep_busy"])).await.unwrap();
        let endpoints: Vec<_> = rows.iter().map(|r| r.endpoint_id.as_str()).collect();
        assert_eq!(endpoints, ["ep_on"]);

        // Re-enabled, its pending row goes out.
        s.set_endpoint_enabled("ep_off", true, None).await.unwrap();
        let rows = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        let mut endpoints: Vec<_> = rows.iter().map(|r| r.endpoint_id.as_str()).collect();
        endpoints.sort();
        assert_eq!(endpoints, ["ep_busy", "ep_off"]);
        assert_eq!(
            s.endpoint("ep_off").await.unwrap().unwrap().disabled_reason,
            None
        );
    }

    #[tokio::test]
    async fn webhook_leases_can_be_renewed_and_released_only_by_their_holder() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_a", false, &["*"]))
            .await
            .unwrap();
        emit(&s, "k", T0).await;
        let row = s.claim_deliveries(&claim(T0, &[])).await.unwrap().remove(0);
        assert!(!s
            .renew_lease(row.id, row.lease + 1, row.lease + 100)
            .await
            .unwrap());
        assert!(s
            .renew_lease(row.id, row.lease, row.lease + 100)
            .await
            .unwrap());
        // The old lease value no longer releases it.
        s.release_deliveries(&[(row.id, row.lease)]).await.unwrap();
        assert!(s
            .claim_deliveries(&claim(T0, &[]))
            .await
            .unwrap()
            .is_empty());
        s.release_deliveries(&[(row.id, row.lease + 100)])
            .await
            .unwrap();
        assert_eq!(s.claim_deliveries(&claim(T0, &[])).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn webhook_endpoints_round_trip_rotate_resubscribe_retry_and_delete() {
        let s = store().await;
        let mut ep = endpoint("ep_r", true, &["query", "conversation"]);
        ep.token = Some("tok".into());
        ep.description = Some("d".into());
        ep.events.sort();
        s.create_endpoint(&ep).await.unwrap();
        assert_eq!(s.endpoint("ep_r").await.unwrap().unwrap(), ep);
        assert_eq!(s.endpoints().await.unwrap(), vec![ep.clone()]);

        let until = T0 + Duration::hours(24);
        assert!(s.rotate_secret("ep_r", "whsec_BBBB", until).await.unwrap());
        let rotated = s.endpoint("ep_r").await.unwrap().unwrap();
        assert_eq!(rotated.secret, "whsec_BBBB");
        assert_eq!(rotated.previous_secret.as_deref(), Some("whsec_AAAA"));
        assert_eq!(rotated.previous_secret_expires_at, Some(until));

        assert!(s
            .set_subscriptions("ep_r", &["*".to_string()])
            .await
            .unwrap());
        assert_eq!(s.endpoint("ep_r").await.unwrap().unwrap().events, ["*"]);
        assert!(!s
            .set_subscriptions("ep_nope", &["*".to_string()])
            .await
            .unwrap());

        emit(&s, "k", T0).await;
        let row = s.claim_deliveries(&claim(T0, &[])).await.unwrap().remove(0);
        s.record_results(&[result(&row, DeliveryStatus::Failed, T0)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 0);
        assert!(!s.retry_delivery("ep_other", row.id, T0).await.unwrap());
        assert!(s.retry_delivery("ep_r", row.id, T0).await.unwrap());
        assert_eq!(s.outbox_backlog().await.unwrap(), 1);
        let again = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        assert_eq!(again[0].attempts, 1);

        assert!(s.delete_endpoint("ep_r").await.unwrap());
        assert!(!s.delete_endpoint("ep_r").await.unwrap());
        assert_eq!(s.endpoint("ep_r").await.unwrap(), None);
        // The in-flight result of a deleted endpoint is dropped without an error.
        s.record_results(&[result(&again[0], DeliveryStatus::Delivered, T0)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 0);
    }
}
