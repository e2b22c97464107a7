//! The webhook side's port: [`WebhookStore`] (endpoints, subscriptions, the delivery
//! side of the outbox) and the records it exchanges. The store implements it
//! (`store::webhooks`); the service, the worker and the outbox sweep use it. Core never
//! does: filling the outbox is part of a turn's commit (`core::ports::Transcripts`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::core::janitor::Sweep;
use crate::core::ports::StoreError;

/// A registered webhook endpoint, as stored (secrets included: this record never
/// leaves the process; the HTTP layer renders its own view without them). Its
/// `Debug` shows `[REDACTED]` for the token and the secrets.
#[derive(Clone, PartialEq)]
pub struct WebhookEndpoint {
    /// `ep_` followed by 32 hex digits.
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// Sent as `x-webhook-token` on every delivery when set.
    pub token: Option<String>,
    /// Deliver one ordering key's events one at a time, in order.
    pub ordered: bool,
    /// The current `whsec_` signing secret.
    pub secret: String,
    /// The secret before the last rotation; it keeps signing until
    /// `previous_secret_expires_at`.
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// Secrets replaced before `previous_secret`, each with the time it stops signing
    /// (several rotations within 24 hours keep all of them valid).
    pub older_secrets: Vec<(String, OffsetDateTime)>,
    pub enabled: bool,
    /// Why the endpoint was disabled (a 410 from the receiver).
    pub disabled_reason: Option<String>,
    pub created_at: OffsetDateTime,
    /// Subscribed event types (`*` for all), sorted.
    pub events: Vec<String>,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const REDACTED: &str = "[REDACTED]";
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("description", &self.description)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("ordered", &self.ordered)
            .field("secret", &REDACTED)
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| REDACTED),
            )
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .field("older_secrets", &self.older_secrets.len())
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .field("created_at", &self.created_at)
            .field("events", &self.events)
            .finish()
    }
}

/// Where a delivery row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or in flight under a lease).
    Pending,
    Delivered,
    /// Gave up: attempts exhausted, or the endpoint answered 410. Retryable by hand.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// What a worker asks for when it claims due deliveries.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Rows due at or before this instant are eligible.
    pub now: OffsetDateTime,
    /// The lease written on every claimed row: until then no other worker takes it.
    pub lease_until: OffsetDateTime,
    /// At most this many rows.
    pub limit: u32,
    /// Endpoints this worker cannot take more work for right now (saturated).
    pub skip_endpoints: Vec<String>,
}

/// A delivery row taken under a lease, with the stored event body to send.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub event_id: String,
    pub endpoint_id: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The exact bytes every attempt sends (and signs).
    pub body: String,
    /// The lease this claim wrote, in unix ms; results and renewals must present it,
    /// so a worker whose lease expired (and whose row was re-claimed) changes nothing.
    pub lease: i64,
}

/// One HTTP attempt, as recorded in `webhook_attempts`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub attempted_at: OffsetDateTime,
    /// `None` when no response arrived (timeout, refused, private address).
    pub status_code: Option<u16>,
    /// The first 2 KB of the response body.
    pub response_body: Option<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// A finished attempt and what it means for its delivery row.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryResult {
    pub delivery_id: i64,
    pub endpoint_id: String,
    /// The lease from [`ClaimedDelivery::lease`].
    pub lease: i64,
    pub status: DeliveryStatus,
    /// When a `Pending` row is due again (ignored for the other states).
    pub next_attempt_at: OffsetDateTime,
    pub attempt: AttemptRecord,
    /// `Some(reason)` disables the endpoint (the receiver answered 410).
    pub disable_endpoint: Option<String>,
}

/// A delivery row with its latest attempt, for `GET /webhooks/{id}/deliveries`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: OffsetDateTime,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    /// Duration of the latest attempt.
    pub last_duration_ms: Option<u64>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Every recorded attempt, oldest first.
    pub attempt_log: Vec<AttemptRecord>,
}

/// Webhook endpoints and the delivery side of the outbox. The fan-out into the outbox
/// is [`Transcripts::commit`](crate::core::ports::Transcripts::commit)'s job; this
/// trait is what the admin API and the delivery worker need.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Inserts the endpoint and its subscriptions in one transaction.
    async fn create_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError>;
    async fn endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError>;
    /// Every endpoint, oldest first.
    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError>;
    /// Deletes the endpoint with its subscriptions and deliveries; `false` if unknown.
    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError>;
    /// Replaces the subscribed event types; `false` if the endpoint is unknown.
    async fn set_subscriptions(&self, id: &str, events: &[String]) -> Result<bool, StoreError>;
    /// Makes `secret` current and keeps the old one valid until `previous_expires_at`.
    async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        previous_expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Replaces the stored value `old` of endpoint `id` — its token, current, previous
    /// or an older secret — by `new` where it still is `old` (sealing rows written
    /// before `BRIDGE_SECRET_KEY` was set); expired older secrets are dropped first.
    /// Returns how many values were replaced.
    async fn replace_stored_secret(
        &self,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<u64, StoreError>;
    /// Enables (clearing the reason) or disables an endpoint; `false` if unknown.
    async fn set_endpoint_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Takes due pending rows of enabled endpoints under a lease, atomically with
    /// respect to every other worker (several replicas included). For `ordered`
    /// endpoints a row is due only when no earlier row of its ordering key is pending.
    async fn claim_deliveries(
        &self,
        claim: &ClaimRequest,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Moves a held lease forward (a row waited locally behind a slow endpoint);
    /// `false` when the lease was lost.
    async fn renew_lease(&self, id: i64, lease: i64, until: i64) -> Result<bool, StoreError>;
    /// Gives claimed rows back without an attempt (shutdown), each `(id, lease)`.
    async fn release_deliveries(&self, held: &[(i64, i64)]) -> Result<(), StoreError>;
    /// Records attempts and their outcomes in one transaction.
    async fn record_results(&self, results: &[DeliveryResult]) -> Result<(), StoreError>;

    /// The endpoint's most recent deliveries, newest first, each with its attempts.
    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// Makes a delivery due now (whatever its state): one more attempt, or, for a
    /// pending row, an earlier one. `false` if the pair is unknown.
    async fn retry_delivery(
        &self,
        endpoint_id: &str,
        delivery_id: i64,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Deliveries still pending, for the backlog gauge.
    async fn outbox_backlog(&self) -> Result<u64, StoreError>;
    /// Deletes deliveries that ended (`delivered` or `failed`) before `before`, with
    /// their attempts, and events older than `before` left without a delivery
    /// (`WEBHOOK_RETENTION_DAYS`). Returns the deliveries deleted.
    async fn purge_outbox(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
}

/// The janitor's hourly pass over the outbox: finished deliveries past
/// `WEBHOOK_RETENTION_DAYS` go, with their attempts and orphaned events.
pub struct OutboxSweep {
    pub store: Arc<dyn WebhookStore>,
    /// `WEBHOOK_RETENTION_DAYS`.
    pub retention: Duration,
}

#[async_trait]
impl Sweep for OutboxSweep {
    async fn sweep(&self) {
        match self
            .store
            .purge_outbox(OffsetDateTime::now_utc() - self.retention)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "purged old webhook deliveries"),
            Err(e) => tracing::warn!(error = %e, "could not purge the webhook outbox"),
        }
    }
}
