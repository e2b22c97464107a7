//! The one retry loop with backoff, for start-up calls a platform cannot run without
//! (Slack's `auth.test`, Discord's gateway URL): try, and on failure wait `first`,
//! then twice as long each time up to `max`, until it succeeds or shutdown begins.
//!
//! Deliberately not for the hot path (replies, webhook deliveries have their own
//! schedules and limits) and not infinite in effect: every wait and every attempt
//! gives way to the shutdown token.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits between attempts: `first`, doubling, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Calls `attempt` until it succeeds; `failed` is told each error and the wait
    /// before the next attempt. `None` when `shutdown` came first.
    pub async fn retry<T, E, F, Fut>(
        self,
        shutdown: &CancellationToken,
        mut attempt: F,
        mut failed: impl FnMut(&E, Duration),
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = self.first;
        loop {
            let result = tokio::select! {
                result = attempt() => result,
                _ = shutdown.cancelled() => return None,
            };
            match result {
                Ok(value) => return Some(value),
                Err(e) => failed(&e, delay),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return None,
            }
            delay = (delay * 2).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_with_doubling_waits_until_it_succeeds() {
        let backoff = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(3),
        };
        let mut calls = 0;
        let mut waits = Vec::new();
        let out = backoff
            .retry(
                &CancellationToken::new(),
                || {
                    calls += 1;
                    let n = calls;
                    async move {
                        if n < 4 {
                            Err(n)
                        } else {
                            Ok(n)
                        }
                    }
                },
                |_, wait| waits.push(wait.as_millis()),
            )
            .await;
        assert_eq!(out, Some(4));
        assert_eq!(waits, [1, 2, 3]);
    }

    #[tokio::test]
    async fn shutdown_ends_the_waiting() {
        let stop = CancellationToken::new();
        stop.cancel();
        let backoff = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let out: Option<()> = backoff
            .retry(&stop, || async { Err::<(), _>("down") }, |_, _| {})
            .await;
        assert_eq!(out, None);
    }
}
