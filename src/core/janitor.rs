//! Periodic clean-up: transcript rows past `TRANSCRIPT_RETENTION_DAYS` and expired
//! platform-event sightings. Runs at start and then hourly until cancelled.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::ports::Store;

const EVERY: Duration = Duration::from_secs(3600);

pub async fn run(store: Arc<dyn Store>, retention: Duration, shutdown: CancellationToken) {
    loop {
        sweep(&*store, retention).await;
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
