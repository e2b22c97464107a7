//! Periodic clean-up: transcript rows past `TRANSCRIPT_RETENTION_DAYS`, expired
//! platform-event sightings, and webhook events delivered or failed more than
//! `WEBHOOK_RETENTION_DAYS` ago (with their attempts). Runs at start and then hourly
//! until cancelled.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::ports::{Store, WebhookStore};

const EVERY: Duration = Duration::from_secs(3600);

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// `TRANSCRIPT_RETENTION_DAYS`.
    pub transcripts: Duration,
    /// `WEBHOOK_RETENTION_DAYS`.
    pub webhooks: Duration,
}

pub async fn run(
    store: Arc<dyn Store>,
    webhooks: Arc<dyn WebhookStore>,
    retention: Retention,
    shutdown: CancellationToken,
) {
    loop {
        sweep(&*store, retention.transcripts).await;
        sweep_outbox(&*webhooks, retention.webhooks).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One pass; errors are logged, the next pass tries again.
pub async fn sweep(store: &dyn Store, retention: Duration) {
    let now = OffsetDateTime::now_utc();
    match store.purge_transcripts(now - retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "purged old transcript rows"),
        Err(e) => tracing::warn!(error = %e, "could not purge transcripts"),
    }
    match store.purge_sightings(now).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "purged expired event sightings"),
        Err(e) => tracing::warn!(error = %e, "could not purge event sightings"),
    }
}

/// One pass over the webhook outbox; errors are logged, the next pass tries again.
pub async fn sweep_outbox(webhooks: &dyn WebhookStore, retention: Duration) {
    match webhooks
        .purge_outbox(OffsetDateTime::now_utc() - retention)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(deliveries = n, "purged old webhook deliveries"),
        Err(e) => tracing::warn!(error = %e, "could not purge the webhook outbox"),
    }
}
