//! The delivery worker: claims due outbox rows from the store, POSTs them with
//! Standard Webhooks headers, and records every attempt and its consequence (delivered,
//! retry at a time, failed, endpoint disabled).
//!
//! # Shape
//!
//! ```text
//!   run loop ──claim (lease)──► one task per row ──► per-endpoint semaphore ──► POST
//!      ▲                                                                        │
//!      └──── wake (a slot freed, results written, admin retry) ◄── recorder ◄───┘
//!                                                   (one transaction per batch)
//! ```
//!
//! - **Claiming** takes up to a batch of due rows under a lease (`locked_until`), so no
//!   other worker — another replica included — sends them meanwhile. A worker that
//!   dies simply lets its leases expire and the rows become due again: at least once.
//! - **Isolation**: every endpoint has its own semaphore of
//!   [`WorkerSettings::per_endpoint_concurrency`] requests, and a *window* of rows the
//!   worker may hold for it (queued + in flight). An endpoint whose window is full is
//!   left out of the next claims, so a hanging endpoint holds at most its window and
//!   never the worker's attention: rows of other endpoints keep being claimed and
//!   sent at once. There is no global request pool for a dead endpoint to exhaust;
//!   the only global bound is on rows held ([`WorkerSettings::max_held`]).
//! - **Recording** goes through one task that writes results in batches, one
//!   transaction each: thousands of deliveries a second would otherwise mean
//!   thousands of commits on SQLite's single writer.
//! - **Waking**: idle, the loop polls every [`WorkerSettings::idle_poll`]; it claims
//!   again at once after a full batch, and is poked when a saturated endpoint frees a
//!   slot, when results were written (an ordered endpoint's next row may now be due)
//!   and when an admin asks for a retry.
//!
//! [`Worker::tick`] is the same pipeline as one synchronous step (claim, send all,
//! record), for tests that want to drain deterministically.
//!
//! Deliveries to a disabled endpoint are not claimed at all: they stay `pending` and go
//! out once the endpoint is enabled again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};
use url::Url;

use super::schedule::{parse_retry_after, random_jitter, RetrySchedule};
use super::seal::Sealer;
use super::sign::{signature_header, SigningKey};
use super::store::{
    AttemptRecord, ClaimRequest, ClaimedDelivery, DeliveryResult, DeliveryStatus, WebhookEndpoint,
    WebhookStore,
};
use super::target::{check_literal, PublicOnlyResolver};
use crate::config::WebhookConfig;
use crate::core::lock::lock;
use crate::core::metrics::Metrics;
use crate::core::ports::StoreError;

/// Sent as `user-agent` on every delivery.
pub const USER_AGENT: &str = concat!("agent-bridge/", env!("CARGO_PKG_VERSION"));

/// How much of a response body an attempt keeps.
pub const RESPONSE_BODY_LIMIT: usize = 2048;

/// A response body is read (and discarded past the first 2 KB) up to this size so the
/// connection can go back to the pool; a larger one is cut off with its connection.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Results waiting for the recorder; delivery tasks wait when it is full.
const RESULT_QUEUE: usize = 4096;

/// Results written per recorder transaction at most.
const RECORD_BATCH: usize = 512;

/// How long the recorder waits for more results before writing a batch.
const RECORD_LINGER: Duration = Duration::from_millis(2);

/// Tuning of the worker. [`WorkerSettings::from_config`] fills it from
/// `WEBHOOK_*`; the rest are defaults sized for one process on a small machine.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `WEBHOOK_RETRY_SCHEDULE`.
    pub schedule: RetrySchedule,
    /// `WEBHOOK_TIMEOUT_SECS`: one attempt, connect to last body byte.
    pub timeout: Duration,
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS`.
    pub allow_private_targets: bool,
    /// Rows per claim.
    pub batch_size: u32,
    /// Requests in flight to one endpoint.
    pub per_endpoint_concurrency: usize,
    /// Rows held for one endpoint (queued behind its semaphore + in flight) before
    /// claims skip it.
    pub per_endpoint_window: usize,
    /// Rows held in all.
    pub max_held: usize,
    /// Poll interval when nothing wakes the loop.
    pub idle_poll: Duration,
    /// A lease is the timeout plus this: time for the result to be written after the
    /// request ended.
    pub lease_margin: Duration,
    /// On shutdown, how long requests in flight may finish before they are abandoned
    /// (their rows are released for the next start).
    pub shutdown_grace: Duration,
    /// Opens the stored secrets and token (`BRIDGE_SECRET_KEY`).
    pub sealer: Arc<Sealer>,
}

impl WorkerSettings {
    pub fn from_config(cfg: &WebhookConfig) -> Self {
        WorkerSettings {
            schedule: RetrySchedule::new(cfg.retry_schedule.clone()),
            timeout: cfg.timeout,
            allow_private_targets: cfg.allow_private_targets,
            batch_size: 256,
            per_endpoint_concurrency: 64,
            per_endpoint_window: 256,
            max_held: 4096,
            idle_poll: Duration::from_millis(50),
            lease_margin: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
            sealer: Arc::new(Sealer::from_key(cfg.secret_key.as_ref())),
        }
    }

    fn lease(&self) -> Duration {
        self.timeout + self.lease_margin
    }
}

/// Why the worker could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct BuildError(#[source] reqwest::Error);

/// The delivery worker; cheap to clone (clones share everything).
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn WebhookStore>,
    /// One pooled client for every endpoint: keep-alive connections per host, no
    /// redirects, no proxy, and (unless private targets are allowed) a resolver that
    /// only returns public addresses.
    client: reqwest::Client,
    settings: WorkerSettings,
    metrics: Arc<Metrics>,
    /// Per endpoint id: its request semaphore and how many rows this worker holds for
    /// it. An entry lives while rows are held, so the map stays as small as the set of
    /// endpoints with work in flight.
    slots: Mutex<HashMap<String, Slot>>,
    /// Claimed rows whose delivery has not ended: id → the lease values the row may
    /// carry in the store. An entry leaves when its delivery ends, so what remains
    /// after abandoned deliveries at shutdown is exactly what to give back.
    held: Mutex<HashMap<i64, Leases>>,
    /// Live [`Hold`]s (rows counted against the bounds), readable without a lock on
    /// the claim path.
    held_total: AtomicUsize,
    /// Poked when claimable work may have appeared (see the module docs). `Notify`
    /// keeps one permit when nobody waits, so a poke between a claim and the next
    /// wait is not lost.
    wake: Arc<Notify>,
}

/// The lease of a held row, and the one a renewal in flight may have written: a
/// delivery abandoned during `renew_lease` leaves it unknown which of the two the
/// store holds, so shutdown presents both when it releases the row.
#[derive(Debug, Clone, Copy)]
struct Leases {
    current: i64,
    renewing: Option<i64>,
}

impl Leases {
    fn held(current: i64) -> Self {
        Leases {
            current,
            renewing: None,
        }
    }
}

struct Slot {
    /// Requests in flight to this endpoint; rows queue here in claim order.
    permits: Arc<Semaphore>,
    /// Rows held for this endpoint (queued + in flight).
    held: usize,
}

/// What a delivery needs to know about its endpoint, read once per claim.
struct Target {
    endpoint_id: String,
    /// `Err` holds why the stored URL cannot be used (every attempt fails with it).
    url: Result<Url, String>,
    token: Option<String>,
    /// The current key first, then the previous one while its rotation window lasts.
    keys: Vec<SigningKey>,
    permits: Arc<Semaphore>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        settings: WorkerSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Worker, BuildError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the target itself, out of the resolver's reach.
            .no_proxy()
            .pool_max_idle_per_host(settings.per_endpoint_concurrency)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(USER_AGENT);
        if !settings.allow_private_targets {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let client = builder.build().map_err(BuildError)?;
        Ok(Worker {
            shared: Arc::new(Shared {
                store,
                client,
                settings,
                metrics,
                slots: Mutex::new(HashMap::new()),
                held: Mutex::new(HashMap::new()),
                held_total: AtomicUsize::new(0),
                wake: Arc::new(Notify::new()),
            }),
        })
    }

    /// Poke this to make the worker look for due rows now (e.g. after an admin retry).
    pub fn waker(&self) -> Arc<Notify> {
        self.shared.wake.clone()
    }

    /// One synchronous step: claims a batch, sends it (per-endpoint limits apply),
    /// records the results, and returns how many rows were attempted. `Ok(0)` means
    /// nothing is due. Meant for tests and tools; a running app uses [`Worker::run`].
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let shared = &self.shared;
        let limit = shared.settings.batch_size;
        let claimed = shared.claim(limit).await?;
        let n = claimed.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (row, target) in claimed {
            let shared = shared.clone();
            tasks.spawn(async move { shared.deliver(row, target).await });
        }
        // Each result is written as soon as its attempt ends, as the running worker's
        // recorder would: a row must not sit finished but unmarked while its lease
        // runs out behind a slower one.
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Some(result)) = joined {
                shared
                    .store
                    .record_results(std::slice::from_ref(&result))
                    .await?;
            }
        }
        Ok(n)
    }

    /// Delivers until `shutdown` is cancelled; then lets requests in flight finish for
    /// [`WorkerSettings::shutdown_grace`], writes their results, and releases the
    /// leases of the rest so the next start sends them at once.
    #[tracing::instrument(name = "webhook_worker", skip_all)]
    pub async fn run(self, shutdown: CancellationToken) {
        let shared = self.shared;
        let (results_tx, results_rx) = mpsc::channel(RESULT_QUEUE);
        let recorder = tokio::spawn(
            record_loop(shared.clone(), results_rx)
                .instrument(tracing::info_span!("webhook_recorder")),
        );
        // Deliveries run as tracked tasks so shutdown can wait for them; `abandon`
        // cuts short those still running after the grace period.
        let deliveries = TaskTracker::new();
        let abandon = CancellationToken::new();
        let mut failures: u32 = 0;
        debug!("webhook worker started");

        while !shutdown.is_cancelled() {
            let room = shared
                .settings
                .max_held
                .saturating_sub(shared.held_total.load(Ordering::Acquire));
            let limit = u32::try_from(room)
                .unwrap_or(u32::MAX)
                .min(shared.settings.batch_size);
            let mut full = false;
            if limit > 0 {
                match shared.claim(limit).await {
                    Ok(claimed) => {
                        failures = 0;
                        full = u32::try_from(claimed.len()).unwrap_or(u32::MAX) >= limit;
                        for (row, target) in claimed {
                            let shared = shared.clone();
                            let results = results_tx.clone();
                            let abandon = abandon.clone();
                            deliveries.spawn(async move {
                                tokio::select! {
                                    // Dropping the delivery future drops its hold
                                    // (the row stays in `held` and is released).
                                    _ = abandon.cancelled() => {}
                                    result = shared.deliver(row, target) => {
                                        if let Some(result) = result {
                                            // Only fails once the recorder is gone,
                                            // i.e. never before shutdown's end; the
                                            // lease then expires and the row is sent
                                            // again (at least once).
                                            let _ = results.send(result).await;
                                        }
                                    }
                                }
                            });
                        }
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        warn!(error = %e, failures, "webhook claim failed; backing off");
                        let backoff = shared.settings.idle_poll * failures.min(100);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff.min(Duration::from_secs(5))) => {}
                        }
                        continue;
                    }
                }
            }
            if full {
                // More may be due right now; let the spawned deliveries start first.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(shared.settings.idle_poll) => {}
            }
        }

        // Shutdown: no more claims. Requests in flight get a grace period.
        deliveries.close();
        if tokio::time::timeout(shared.settings.shutdown_grace, deliveries.wait())
            .await
            .is_err()
        {
            // Rows still queued must not start as the abandoned requests free their
            // permits: close the semaphores first, then cut the requests short.
            for slot in lock(&shared.slots).values() {
                slot.permits.close();
            }
            abandon.cancel();
            deliveries.wait().await;
        }
        // Every sender is gone once the tasks are: the recorder drains and ends.
        drop(results_tx);
        if let Err(e) = recorder.await {
            warn!(error = %e, "webhook recorder task failed");
        }
        let leftover: Vec<(i64, Leases)> = lock(&shared.held).drain().collect();
        if !leftover.is_empty() {
            // Every lease value the row may carry; only the one it does matches.
            let pairs: Vec<(i64, i64)> = leftover
                .iter()
                .flat_map(|&(id, l)| {
                    std::iter::once((id, l.current)).chain(l.renewing.map(|r| (id, r)))
                })
                .collect();
            match shared.store.release_deliveries(&pairs).await {
                Ok(()) => info!(
                    released = leftover.len(),
                    "webhook deliveries released for the next start"
                ),
                // The leases then simply expire.
                Err(e) => warn!(error = %e, "could not release webhook leases"),
            }
        }
        debug!("webhook worker stopped");
    }
}

/// The worker's hold on one claimed row: counts it against its endpoint's window and
/// the global bound until dropped — on every path out of a delivery, abandonment and
/// panics included.
struct Hold {
    shared: Arc<Shared>,
    endpoint_id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let window = self.shared.settings.per_endpoint_window;
        let mut slots = lock(&self.shared.slots);
        let mut was_blocked = false;
        if let Some(slot) = slots.get_mut(&self.endpoint_id) {
            was_blocked = slot.held >= window;
            slot.held = slot.held.saturating_sub(1);
            if slot.held == 0 {
                slots.remove(&self.endpoint_id);
            }
        }
        drop(slots);
        let before = self.shared.held_total.fetch_sub(1, Ordering::AcqRel);
        // The loop skips saturated endpoints and stops claiming at `max_held`; tell it
        // when either bound loosens rather than waiting for the next poll.
        if was_blocked || before >= self.shared.settings.max_held {
            self.shared.wake.notify_one();
        }
    }
}

impl Shared {
    /// Claims up to `limit` rows, skipping endpoints whose window is full, and returns
    /// each with its endpoint's target. Every returned row is counted as held.
    async fn claim(self: &Arc<Self>, limit: u32) -> Result<Vec<(Held, Arc<Target>)>, StoreError> {
        let window = self.settings.per_endpoint_window;
        let skip_endpoints: Vec<String> = lock(&self.slots)
            .iter()
            .filter(|(_, slot)| slot.held >= window)
            .map(|(id, _)| id.clone())
            .collect();
        let now = OffsetDateTime::now_utc();
        let request = ClaimRequest {
            now,
            lease_until: now + self.settings.lease(),
            limit,
            skip_endpoints,
        };
        let rows = self.store.claim_deliveries(&request).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }

        // Endpoint details are read per claim (not cached), so a rotated secret, a new
        // token or a changed URL applies from the next batch on.
        let mut endpoints: HashMap<String, Option<WebhookEndpoint>> = HashMap::new();
        for row in &rows {
            if !endpoints.contains_key(&row.endpoint_id) {
                let opened = match self.store.endpoint(&row.endpoint_id).await {
                    Ok(ep) => ep
                        .map(|ep| self.settings.sealer.open_endpoint(&ep))
                        .transpose()
                        .map_err(StoreError::from),
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(ep) => {
                        endpoints.insert(row.endpoint_id.clone(), ep);
                    }
                    Err(e) => {
                        // Give the rows back rather than sit on them for a lease.
                        let held: Vec<_> = rows.iter().map(|r| (r.id, r.lease)).collect();
                        let _ = self.store.release_deliveries(&held).await;
                        return Err(e);
                    }
                }
            }
        }

        let mut targets: HashMap<String, Arc<Target>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        let mut slots = lock(&self.slots);
        let mut held = lock(&self.held);
        for row in rows {
            // A deleted endpoint's rows are gone with it (cascade); nothing to send.
            let Some(Some(endpoint)) = endpoints.get(&row.endpoint_id) else {
                continue;
            };
            let slot = slots
                .entry(row.endpoint_id.clone())
                .or_insert_with(|| Slot {
                    permits: Arc::new(Semaphore::new(
                        self.settings.per_endpoint_concurrency.max(1),
                    )),
                    held: 0,
                });
            slot.held += 1;
            let target = targets
                .entry(row.endpoint_id.clone())
                .or_insert_with(|| Arc::new(Target::new(endpoint, slot.permits.clone(), now)))
                .clone();
            held.insert(row.id, Leases::held(row.lease));
            self.held_total.fetch_add(1, Ordering::AcqRel);
            out.push((
                Held {
                    hold: Hold {
                        shared: self.clone(),
                        endpoint_id: row.endpoint_id.clone(),
                    },
                    row,
                },
                target,
            ));
        }
        Ok(out)
    }

    /// One attempt of one row, see [`Shared::deliver_inner`]. Unless it is abandoned
    /// (shutdown closed the semaphore, or dropped this future), the row leaves `held`:
    /// either the recorder now owns its fate, or its lease is lost or left to expire.
    /// An abandoned row stays in `held` and is released by shutdown.
    async fn deliver(self: Arc<Self>, held: Held, target: Arc<Target>) -> Option<DeliveryResult> {
        let id = held.row.id;
        match self.clone().deliver_inner(held, target).await {
            Ok(result) => {
                lock(&self.held).remove(&id);
                result
            }
            Err(Abandoned) => None,
        }
    }

    /// Waits for the endpoint's semaphore, renews the lease if the wait ate into it,
    /// sends, and decides what the outcome means. `Ok(None)` when the lease was lost
    /// meanwhile (another worker owns the row now).
    async fn deliver_inner(
        self: Arc<Self>,
        held: Held,
        target: Arc<Target>,
    ) -> Result<Option<DeliveryResult>, Abandoned> {
        let Held { hold, mut row } = held;
        // FIFO per endpoint. Shutdown closes the semaphores first, so rows still
        // queued give up here instead of starting (and renewing) as the abandoned
        // requests free their permits.
        let _permit = target
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Abandoned)?;

        let lease = self.settings.lease();
        let now_ms = unix_ms(OffsetDateTime::now_utc());
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let margin_ms = i64::try_from(self.settings.lease_margin.as_millis() / 2).unwrap_or(0);
        if row.lease - now_ms < lease_ms - margin_ms {
            // Queued long enough that the request might outlive the lease: extend it,
            // presenting the old one so a lost lease is noticed.
            let until = now_ms.saturating_add(lease_ms);
            lock(&self.held).insert(
                row.id,
                Leases {
                    current: row.lease,
                    renewing: Some(until),
                },
            );
            match self.store.renew_lease(row.id, row.lease, until).await {
                Ok(true) => {
                    lock(&self.held).insert(row.id, Leases::held(until));
                    row.lease = until;
                }
                Ok(false) => {
                    debug!(delivery = row.id, "webhook lease lost while queued");
                    return Ok(None);
                }
                Err(e) => {
                    warn!(error = %e, delivery = row.id, "could not renew a webhook lease");
                    return Ok(None);
                }
            }
        }

        let attempt = self.attempt(&row, &target).await;
        let made = row.attempts.saturating_add(1);
        let plan = plan(
            &self.settings.schedule,
            made,
            &attempt,
            OffsetDateTime::now_utc(),
            random_jitter(),
        );
        self.metrics.delivery(plan.outcome);
        if plan.outcome == "disabled" {
            warn!(endpoint = %target.endpoint_id, "webhook endpoint answered 410 Gone; disabled");
        }
        drop(hold);
        Ok(Some(DeliveryResult {
            delivery_id: row.id,
            endpoint_id: target.endpoint_id.clone(),
            lease: row.lease,
            status: plan.status,
            next_attempt_at: plan.next_attempt_at,
            attempt: attempt.record,
            disable_endpoint: plan.disable_reason,
        }))
    }

    /// Sends the request and reads the answer; never fails, every problem becomes the
    /// attempt's `error`.
    async fn attempt(&self, row: &ClaimedDelivery, target: &Target) -> Attempt {
        let attempted_at = OffsetDateTime::now_utc();
        let started = Instant::now();
        let outcome = self.send(row, target, attempted_at).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status_code, response_body, retry_after, error) = match outcome {
            Ok(answer) => {
                let error = (!(200..300).contains(&answer.status)).then(|| {
                    if (300..400).contains(&answer.status) {
                        format!("HTTP {} (redirects are not followed)", answer.status)
                    } else {
                        format!("HTTP {}", answer.status)
                    }
                });
                (
                    Some(answer.status),
                    Some(answer.body),
                    answer.retry_after,
                    error,
                )
            }
            Err(e) => (None, None, None, Some(e)),
        };
        Attempt {
            retry_after,
            record: AttemptRecord {
                attempted_at,
                status_code,
                response_body,
                duration_ms,
                error,
            },
        }
    }

    async fn send(
        &self,
        row: &ClaimedDelivery,
        target: &Target,
        attempted_at: OffsetDateTime,
    ) -> Result<Answer, String> {
        let url = target.url.as_ref().map_err(Clone::clone)?;
        if !self.settings.allow_private_targets {
            // reqwest does not consult the resolver for IP literals; refuse them here.
            check_literal(url).map_err(|e| e.to_string())?;
        }
        if target.keys.is_empty() {
            return Err("the endpoint has no valid signing secret".to_owned());
        }
        let timestamp = attempted_at.unix_timestamp();
        let signature =
            signature_header(&target.keys, &row.event_id, timestamp, row.body.as_bytes());
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", &row.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(row.body.clone());
        if let Some(token) = &target.token {
            request = request.header("x-webhook-token", token);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| describe(&e, self.settings.timeout))?;
        let status = response.status().as_u16();
        let retry_after = if status == 429 || status == 503 {
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()))
        } else {
            None
        };
        // Keep the first 2 KB; read on (discarding) so the connection can be reused. A
        // failure while reading the body does not change the verdict: the status has
        // arrived and the receiver has decided.
        let mut kept: Vec<u8> = Vec::new();
        let mut read = 0usize;
        while read <= DRAIN_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = RESPONSE_BODY_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Answer {
            status,
            retry_after,
            body: truncate_utf8(&kept, RESPONSE_BODY_LIMIT),
        })
    }
}

/// A delivery given up at shutdown; its row is released rather than left to its lease.
struct Abandoned;

/// A claimed row and the worker's hold on it.
struct Held {
    hold: Hold,
    row: ClaimedDelivery,
}

impl Target {
    fn new(endpoint: &WebhookEndpoint, permits: Arc<Semaphore>, now: OffsetDateTime) -> Self {
        let mut keys = Vec::with_capacity(2);
        let mut secrets = vec![endpoint.secret.as_str()];
        if let (Some(previous), Some(until)) = (
            &endpoint.previous_secret,
            endpoint.previous_secret_expires_at,
        ) {
            if until > now {
                secrets.push(previous);
            }
        }
        secrets.extend(
            endpoint
                .older_secrets
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(secret, _)| secret.as_str()),
        );
        for secret in secrets {
            match SigningKey::parse(secret) {
                Ok(key) => keys.push(key),
                Err(e) => warn!(endpoint = %endpoint.id, error = %e, "unusable webhook secret"),
            }
        }
        Target {
            endpoint_id: endpoint.id.clone(),
            url: Url::parse(&endpoint.url).map_err(|e| format!("stored URL is invalid: {e}")),
            token: endpoint.token.clone(),
            keys,
            permits,
        }
    }
}

/// What came back from the receiver.
struct Answer {
    status: u16,
    /// Only read for 429 and 503.
    retry_after: Option<Duration>,
    body: String,
}

/// An attempt as recorded, plus what the planner needs beyond it.
struct Attempt {
    retry_after: Option<Duration>,
    record: AttemptRecord,
}

/// What an attempt means for its row.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    status: DeliveryStatus,
    next_attempt_at: OffsetDateTime,
    disable_reason: Option<String>,
    /// The `bridge_webhook_deliveries_total` label.
    outcome: &'static str,
}

/// The rules of SPEC §7, pure: 2xx delivered; 410 fails the row and disables the
/// endpoint; anything else is retried on the schedule — no sooner than `Retry-After`
/// (only read on 429/503) — until `made` reaches the schedule's attempts, then failed.
fn plan(
    schedule: &RetrySchedule,
    made: u32,
    attempt: &Attempt,
    now: OffsetDateTime,
    jitter: f64,
) -> Plan {
    let status_code = attempt.record.status_code;
    if status_code.is_some_and(|c| (200..300).contains(&c)) {
        return Plan {
            status: DeliveryStatus::Delivered,
            next_attempt_at: now,
            disable_reason: None,
            outcome: "delivered",
        };
    }
    if status_code == Some(410) {
        return Plan {
            status: DeliveryStatus::Failed,
            next_attempt_at: now,
            disable_reason: Some(format!(
                "the endpoint answered 410 Gone at {}",
                rfc3339(now)
            )),
            outcome: "disabled",
        };
    }
    match schedule.next_attempt(made, now, jitter) {
        Some(at) => {
            let floor = attempt.retry_after.map(|wait| now + wait);
            Plan {
                status: DeliveryStatus::Pending,
                next_attempt_at: floor.map_or(at, |f| at.max(f)),
                disable_reason: None,
                outcome: "retrying",
            }
        }
        None => Plan {
            status: DeliveryStatus::Failed,
            next_attempt_at: now,
            disable_reason: None,
            outcome: "failed",
        },
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Unix milliseconds, as the store keeps them.
fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A reqwest error as one line without the URL (it may carry credentials in its
/// query), with its causes: "error sending request: client error (Connect): tcp
/// connect error: Connection refused (os error 111)".
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    let mut out = String::from(if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The first `limit` bytes as text, cut at a character boundary; invalid UTF-8 is
/// replaced.
fn truncate_utf8(bytes: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]);
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Writes results in batches, one transaction each, until every sender is gone.
///
/// After the first result of a batch arrives it waits [`RECORD_LINGER`] for more
/// (unless the batch is already full): under load this turns hundreds of one-row
/// transactions a second into a few large ones, which matters because every write
/// transaction takes SQLite's single write lock that turns also need. The linger only
/// delays marking (what an ordered endpoint's next row waits for), never a send.
async fn record_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<DeliveryResult>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, RECORD_BATCH).await == 0 {
            return;
        }
        if batch.len() < RECORD_BATCH {
            tokio::time::sleep(RECORD_LINGER).await;
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(result) => batch.push(result),
                    Err(_) => break,
                }
            }
        }
        write_results(&shared, &batch).await;
        // An ordered endpoint's next row (or a retry due at once) may be claimable now.
        shared.wake.notify_one();
    }
}

/// Writes a batch, retrying briefly; if the batch keeps failing, writes row by row so
/// one bad row cannot sink the others. A row that cannot be written keeps its lease
/// and is sent again when the lease expires (at least once).
async fn write_results(shared: &Shared, batch: &[DeliveryResult]) {
    let mut delay = Duration::from_millis(50);
    for _ in 0..3 {
        match shared.store.record_results(batch).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, results = batch.len(), "could not record webhook results; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
    for result in batch {
        if let Err(e) = shared
            .store
            .record_results(std::slice::from_ref(result))
            .await
        {
            warn!(error = %e, delivery = result.delivery_id, "webhook result lost; the row will be retried after its lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

    fn attempt(code: Option<u16>, retry_after: Option<Duration>) -> Attempt {
        Attempt {
            retry_after,
            record: AttemptRecord {
                attempted_at: NOW,
                status_code: code,
                response_body: None,
                duration_ms: 1,
                error: None,
            },
        }
    }

    fn check(
        made: u32,
        code: Option<u16>,
        retry_after: Option<u64>,
        expected: (&str, DeliveryStatus, i64),
    ) {
        let schedule = RetrySchedule::parse("10s,1m").unwrap();
        let p = plan(
            &schedule,
            made,
            &attempt(code, retry_after.map(Duration::from_secs)),
            NOW,
            0.0,
        );
        assert_eq!(p.outcome, expected.0, "{made} {code:?}");
        assert_eq!(p.status, expected.1, "{made} {code:?}");
        assert_eq!(
            (p.next_attempt_at - NOW).whole_seconds(),
            expected.2,
            "{made} {code:?}"
        );
    }

    #[test]
    fn webhook_plan_follows_the_delivery_rules() {
        use DeliveryStatus::*;
        check(1, Some(200), None, ("delivered", Delivered, 0));
        check(3, Some(204), None, ("delivered", Delivered, 0));
        check(1, Some(500), None, ("retrying", Pending, 10));
        check(2, None, None, ("retrying", Pending, 60));
        check(3, Some(500), None, ("failed", Failed, 0));
        check(1, Some(302), None, ("retrying", Pending, 10));
        check(1, Some(410), None, ("disabled", Failed, 0));
        // Retry-After is a floor, never a shortcut.
        check(1, Some(429), Some(30), ("retrying", Pending, 30));
        check(1, Some(503), Some(1), ("retrying", Pending, 10));
        // …and cannot add attempts.
        check(3, Some(429), Some(30), ("failed", Failed, 0));
    }

    #[test]
    fn webhook_disable_reason_names_the_410() {
        let schedule = RetrySchedule::parse("10s").unwrap();
        let p = plan(&schedule, 1, &attempt(Some(410), None), NOW, 0.0);
        assert!(p.disable_reason.unwrap().contains("410"));
    }

    #[test]
    fn webhook_response_bodies_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_utf8(b"hello", 2048), "hello");
        assert_eq!(truncate_utf8("héllo".as_bytes(), 2), "h");
        assert_eq!(truncate_utf8(&[b'a'; 5000], 2048).len(), 2048);
    }
}
