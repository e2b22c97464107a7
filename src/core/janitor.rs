//! Periodic clean-up: transcript rows past `TRANSCRIPT_RETENTION_DAYS` and expired
//! platform-event sightings, plus whatever other sweeps `app` hands over (the webhook
//! outbox's, `webhook::OutboxSweep`). Runs at start and then hourly until cancelled.
//!
//! What it deliberately does not know: the webhook side's tables — a [`Sweep`] is all
//! it sees of them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::ports::{Sightings, Transcripts};

const EVERY: Duration = Duration::from_secs(3600);

/// One more thing to clean up hourly; errors are its own to log.
#[async_trait]
pub trait Sweep: Send + Sync + 'static {
    async fn sweep(&self);
}

pub async fn run(
    transcripts: Arc<dyn Transcripts>,
    sightings: Arc<dyn Sightings>,
    retention: Duration,
    others: Vec<Arc<dyn Sweep>>,
    shutdown: CancellationToken,
) {
    loop {
        sweep(&*transcripts, &*sightings, retention).await;
        for other in &others {
            other.sweep().await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One pass; errors are logged, the next pass tries again.
pub async fn sweep(transcripts: &dyn Transcripts, sightings: &dyn Sightings, retention: Duration) {
    let now = OffsetDateTime::now_utc();
    match transcripts.purge_transcripts(now - retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "purged old transcript rows"),
        Err(e) => tracing::warn!(error = %e, "could not purge transcripts"),
    }
    match sightings.purge_sightings(now).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "purged expired event sightings"),
        Err(e) => tracing::warn!(error = %e, "could not purge event sightings"),
    }
}
