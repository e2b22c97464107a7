//! Managing webhook endpoints: registration (URL and event validation, the target
//! check, a fresh `whsec_` secret), listing, subscriptions, secret rotation,
//! re-enabling, and the delivery log with manual retries.
//!
//! The HTTP layer (`http::webhooks`) is a thin adapter over [`WebhookService`]; this
//! module knows nothing of axum. Errors say what the caller does next:
//! [`ServiceError::Invalid`] (422), [`ServiceError::NotFound`] (404), or a store
//! failure.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::seal::{SealError, Sealer};
use super::sign::generate_secret;
use super::store::{DeliveryRecord, WebhookEndpoint, WebhookStore};
use super::target::{check_registration, parse_url};
use crate::core::events::EventKind;
use crate::core::ports::StoreError;

/// After a rotation, the previous secret keeps signing this long (SPEC §7).
pub const PREVIOUS_SECRET_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest `description` and `token` accepted.
const MAX_TEXT_LEN: usize = 1024;

/// Subscribes to every event kind.
pub const ALL_EVENTS: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A well-formed request the bridge will not take.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// What a registration asks for.
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub token: Option<String>,
    pub ordered: bool,
}

/// The result of a rotation.
#[derive(Debug, Clone)]
pub struct RotatedSecret {
    pub secret: String,
    pub previous_expires_at: OffsetDateTime,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct WebhookService {
    store: Arc<dyn WebhookStore>,
    /// Seals the secret and token before they are stored.
    sealer: Arc<Sealer>,
    allow_private_targets: bool,
    /// Pokes the delivery worker after a manual retry so it goes out now, not at the
    /// next poll. `None` when no worker runs in this process.
    wake: Option<Arc<Notify>>,
}

impl WebhookService {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        sealer: Arc<Sealer>,
        allow_private_targets: bool,
        wake: Option<Arc<Notify>>,
    ) -> Self {
        WebhookService {
            store,
            sealer,
            allow_private_targets,
            wake,
        }
    }

    /// Validates and stores a new endpoint; the returned record holds the secret,
    /// which is shown to the caller this once.
    pub async fn register(&self, req: NewEndpoint) -> Result<WebhookEndpoint, ServiceError> {
        let url = parse_url(&req.url).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let events = validate_events(&req.events)?;
        let description = optional_text("description", req.description)?;
        let token = optional_text("token", req.token)?;
        if let Some(token) = &token {
            // Sent as a header on every delivery, so it must be a valid header value.
            if !token
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err(ServiceError::Invalid(
                    "token must be printable ASCII (it is sent as x-webhook-token)".into(),
                ));
            }
        }
        check_registration(&url, self.allow_private_targets)
            .await
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let endpoint = WebhookEndpoint {
            id: format!("ep_{}", uuid::Uuid::new_v4().simple()),
            url: url.to_string(),
            description,
            token,
            ordered: req.ordered,
            secret: generate_secret(),
            previous_secret: None,
            previous_secret_expires_at: None,
            older_secrets: Vec::new(),
            enabled: true,
            disabled_reason: None,
            created_at: now_ms(),
            events,
        };
        self.store
            .create_endpoint(&self.sealer.seal_endpoint(&endpoint)?)
            .await?;
        tracing::info!(endpoint = %endpoint.id, ordered = endpoint.ordered, "webhook endpoint registered");
        Ok(endpoint)
    }

    pub async fn list(&self) -> Result<Vec<WebhookEndpoint>, ServiceError> {
        Ok(self.store.endpoints().await?)
    }

    pub async fn get(&self, id: &str) -> Result<WebhookEndpoint, ServiceError> {
        self.store.endpoint(id).await?.ok_or_else(|| not_found(id))
    }

    pub async fn delete(&self, id: &str) -> Result<(), ServiceError> {
        if self.store.delete_endpoint(id).await? {
            tracing::info!(endpoint = %id, "webhook endpoint deleted");
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// Replaces the subscribed events; deliveries already queued are unaffected.
    pub async fn set_events(
        &self,
        id: &str,
        events: &[String],
    ) -> Result<WebhookEndpoint, ServiceError> {
        let events = validate_events(events)?;
        if !self.store.set_subscriptions(id, &events).await? {
            return Err(not_found(id));
        }
        self.get(id).await
    }

    /// The endpoint's most recent deliveries (newest first) with their attempts.
    pub async fn deliveries(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, ServiceError> {
        self.get(id).await?;
        Ok(self.store.deliveries(id, limit).await?)
    }

    /// Makes a delivery due now, whatever its state (a failed one gets one more
    /// attempt; a delivered one is sent again).
    pub async fn retry(&self, id: &str, delivery_id: i64) -> Result<(), ServiceError> {
        if !self.store.retry_delivery(id, delivery_id, now_ms()).await? {
            return Err(ServiceError::NotFound(format!(
                "no delivery {delivery_id} for webhook endpoint {id}"
            )));
        }
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
    }

    /// Issues a new secret; the current one keeps signing for
    /// [`PREVIOUS_SECRET_VALIDITY`].
    pub async fn rotate_secret(&self, id: &str) -> Result<RotatedSecret, ServiceError> {
        let secret = generate_secret();
        let previous_expires_at = now_ms() + PREVIOUS_SECRET_VALIDITY;
        if !self
            .store
            .rotate_secret(id, &self.sealer.seal(id, &secret)?, previous_expires_at)
            .await?
        {
            return Err(not_found(id));
        }
        tracing::info!(endpoint = %id, "webhook secret rotated");
        Ok(RotatedSecret {
            secret,
            previous_expires_at,
        })
    }

    /// Turns an endpoint back on (after a 410 disabled it); its pending deliveries go
    /// out from the next claim.
    pub async fn enable(&self, id: &str) -> Result<WebhookEndpoint, ServiceError> {
        if !self.store.set_endpoint_enabled(id, true, None).await? {
            return Err(not_found(id));
        }
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        self.get(id).await
    }
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no webhook endpoint {id}"))
}

/// The store keeps milliseconds; so does every time this module hands out, so what a
/// caller sees equals what a later read returns.
fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(u32::from(now.millisecond()) * 1_000_000)
        .unwrap_or(now)
}

/// Event names must be known kinds or `*`; at least one; duplicates dropped; sorted.
pub fn validate_events(events: &[String]) -> Result<Vec<String>, ServiceError> {
    if events.is_empty() {
        return Err(ServiceError::Invalid(
            "events must name at least one event type (or \"*\" for all)".into(),
        ));
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let e = e.trim();
        if e != ALL_EVENTS && EventKind::parse(e).is_none() {
            let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(ServiceError::Invalid(format!(
                "unknown event type {e:?}; known: {}, or \"*\"",
                known.join(", ")
            )));
        }
        out.push(e.to_owned());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Trims; an empty value counts as absent; too long is refused.
fn optional_text(field: &str, value: Option<String>) -> Result<Option<String>, ServiceError> {
    let Some(value) = value else { return Ok(None) };
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_TEXT_LEN {
        return Err(ServiceError::Invalid(format!(
            "{field} must not be longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(Some(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(list: &[&str]) -> Result<Vec<String>, ServiceError> {
        validate_events(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn an_endpoints_debug_output_hides_its_token_and_secrets() {
        let ep = crate::webhook::store::WebhookEndpoint {
            id: "ep_1".into(),
            url: "https://receiver.example/hook".into(),
            description: None,
            token: Some("TOKEN-abc123".into()),
            ordered: false,
            secret: "whsec_CURRENT-xyz".into(),
            previous_secret: Some("whsec_PREVIOUS-xyz".into()),
            previous_secret_expires_at: None,
            older_secrets: Vec::new(),
            enabled: true,
            disabled_reason: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            events: vec!["*".into()],
        };
        for shown in [format!("{ep:?}"), format!("{ep:#?}")] {
            for secret in ["TOKEN-abc123", "CURRENT-xyz", "PREVIOUS-xyz"] {
                assert!(!shown.contains(secret), "{secret} leaked: {shown}");
            }
            assert!(shown.contains("receiver.example"), "{shown}");
        }
    }

    #[test]
    fn webhook_events_must_be_known_kinds_or_star() {
        assert_eq!(
            events(&["query", "conversation", "query"]).unwrap(),
            ["conversation", "query"]
        );
        assert_eq!(events(&["*"]).unwrap(), ["*"]);
        assert_eq!(
            events(&["session.reset", "reply.failed", "personality_change"]).unwrap(),
            ["personality_change", "reply.failed", "session.reset"]
        );
        let err = events(&["conversation.created"]).unwrap_err().to_string();
        assert!(
            err.contains("conversation.created") && err.contains("known"),
            "{err}"
        );
        assert!(events(&[]).is_err());
    }

    #[test]
    fn webhook_optional_texts_are_trimmed_and_bounded() {
        assert_eq!(
            optional_text("d", Some("  x ".into())).unwrap(),
            Some("x".into())
        );
        assert_eq!(optional_text("d", Some("   ".into())).unwrap(), None);
        assert!(optional_text("d", Some("a".repeat(2000))).is_err());
    }
}
