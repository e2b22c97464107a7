//! Group commit for SQLite: every `commit` and `first_sighting` goes through one
//! writer task, which takes whatever has queued up (up to [`MAX_BATCH`]) and applies
//! it in **one transaction with a handful of multi-row statements**, then answers each
//! caller. Nothing waits on a timer: an idle store writes a batch of one at once, a
//! busy one writes bigger batches. Callers still get "done means durable" — they are
//! answered after the transaction commits.
//!
//! Why: sqlx runs each SQLite statement on the connection's worker thread, and the
//! hand-off, not SQLite, dominated a Slack event's cost (two sightings and a turn
//! commit were ~8 statements and 3 transactions). A batch of N turns is now ~6
//! statements and one transaction.
//!
//! If a batch fails (a constraint, say), every operation in it is retried alone, so
//! one bad commit fails only its own caller, exactly as without batching.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool};
use sqlx::{Column, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{db_err, to_ms, SqlStore};
use crate::core::ports::{Commit, Conversation, Store, StoreError};

const ANY_ENABLED_ENDPOINT: &str =
    "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled = 1) AS any_endpoint";

/// The most operations one transaction takes.
const MAX_BATCH: usize = 256;

enum Op {
    Commit(Commit, oneshot::Sender<Result<(), StoreError>>),
    Sighting {
        key: String,
        expires_at: i64,
        /// `None`: nobody waits for the answer (`note_sighting`).
        reply: Option<oneshot::Sender<Result<bool, StoreError>>>,
    },
}

/// Handle to the writer task; the task ends when the last handle is dropped.
pub(crate) struct Batcher {
    ops: mpsc::UnboundedSender<Op>,
    endpoints: Arc<NoEndpoints>,
    /// Stops the checkpointer when the last handle goes.
    _checkpoints: Option<DropGuard>,
}

/// "No webhook endpoint is enabled", as last read, trusted for [`NO_ENDPOINTS_FOR`]:
/// commits then skip the event rows (and the query) altogether. Endpoint changes made
/// through this store forget it at once (`endpoints_changed`); the time limit covers
/// another process writing the same file.
pub(crate) struct NoEndpoints {
    /// Milliseconds since `epoch` until which "none" holds; 0: ask the database.
    until: AtomicU64,
    epoch: Instant,
}

const NO_ENDPOINTS_FOR: Duration = Duration::from_secs(1);

impl NoEndpoints {
    fn new() -> Self {
        NoEndpoints {
            until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `true` while "none enabled" is known.
    fn known(&self) -> bool {
        self.now_ms() < self.until.load(Ordering::Acquire)
    }

    fn saw(&self, any: bool) {
        let until = match any {
            true => 0,
            false => self.now_ms() + NO_ENDPOINTS_FOR.as_millis() as u64,
        };
        self.until.store(until, Ordering::Release);
    }

    fn forget(&self) {
        self.until.store(0, Ordering::Release);
    }
}

impl Batcher {
    /// Starts the writer. `direct` is the same store without a batcher: the fallback
    /// for a failed batch.
    /// `checkpoints`: how to open the checkpointing connection (file databases).
    pub(crate) fn start(
        pool: SqlitePool,
        direct: SqlStore,
        checkpoints: Option<SqliteConnectOptions>,
    ) -> Batcher {
        let (ops, rx) = mpsc::unbounded_channel();
        let endpoints = Arc::new(NoEndpoints::new());
        tokio::spawn(writer(pool, direct, rx, endpoints.clone()));
        let checkpoints = checkpoints.map(|options| {
            let stop = CancellationToken::new();
            tokio::spawn(checkpointer(options, stop.clone()));
            stop.drop_guard()
        });
        Batcher {
            ops,
            endpoints,
            _checkpoints: checkpoints,
        }
    }

    /// An endpoint was created, enabled or resubscribed through this store.
    pub(crate) fn endpoints_changed(&self) {
        self.endpoints.forget();
    }

    pub(crate) async fn commit(&self, mut commit: Commit) -> Result<(), StoreError> {
        if self.endpoints.known() {
            commit.events.clear();
            if commit.is_empty() {
                return Ok(());
            }
        }
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Commit(commit, reply))
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// `true` when `key` was a first sighting.
    pub(crate) async fn first_sighting(
        &self,
        key: String,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Sighting {
                key,
                expires_at,
                reply: Some(reply),
            })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Queues a sighting nobody waits for; it is written with the next batch.
    pub(crate) fn note_sighting(&self, key: String, expires_at: i64) {
        let op = Op::Sighting {
            key,
            expires_at,
            reply: None,
        };
        if self.ops.send(op).is_err() {
            tracing::warn!("the store's writer has stopped; a sighting was not recorded");
        }
    }
}

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` every [`CHECKPOINT_EVERY`] on a connection of
/// its own. A passive checkpoint never blocks the writer, so the writer's transactions
/// (and the turns waiting on them) no longer stall while megabytes of WAL are copied,
/// and the WAL stays a fraction of what `wal_autocheckpoint` would let it reach.
async fn checkpointer(options: SqliteConnectOptions, stop: CancellationToken) {
    let mut conn = match SqliteConnection::connect_with(&options).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the checkpointing connection; the writer will checkpoint");
            return;
        }
    };
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
        }
    }
    let _ = conn.close().await;
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

async fn writer(
    pool: SqlitePool,
    direct: SqlStore,
    mut rx: mpsc::UnboundedReceiver<Op>,
    endpoints: Arc<NoEndpoints>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.recv().await {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match apply(&pool, &batch, &endpoints).await {
            Ok(first) => answer(&mut batch, &first),
            Err(e) => {
                tracing::debug!(error = %e, size = batch.len(), "batch failed; applying its operations one by one");
                for op in batch.drain(..) {
                    match op {
                        Op::Commit(commit, reply) => {
                            let _ = reply.send(direct.commit(commit).await);
                        }
                        Op::Sighting {
                            key,
                            expires_at,
                            reply,
                        } => {
                            let result = match super::from_ms(expires_at) {
                                Ok(at) => direct.first_sighting(&key, at).await,
                                Err(e) => Err(e),
                            };
                            match reply {
                                Some(reply) => {
                                    let _ = reply.send(result);
                                }
                                None => {
                                    if let Err(e) = result {
                                        tracing::warn!(error = %e, "could not record a sighting");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Answers every caller of a batch that committed; `first` holds the sighting keys
/// this batch recorded first.
fn answer(batch: &mut Vec<Op>, first: &HashSet<String>) {
    // Within a batch only the first caller of a key can be first.
    let mut answered: HashSet<String> = HashSet::new();
    for op in batch.drain(..) {
        match op {
            Op::Commit(_, reply) => {
                let _ = reply.send(Ok(()));
            }
            Op::Sighting { key, reply, .. } => {
                let is_first = first.contains(&key) && answered.insert(key);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(is_first));
                }
            }
        }
    }
}

/// The most rows one statement takes: statements of 1, 2, 4, … [`MAX_ROWS`] rows
/// (a batch's rows split by powers of two) are few enough shapes that every one stays
/// in sqlx's statement cache, where any row count would be prepared afresh each time.
const MAX_ROWS: usize = 32;

/// Splits `items` into chunks whose lengths are powers of two up to [`MAX_ROWS`],
/// longest first, in order.
fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = items.len().min(MAX_ROWS);
        // The largest power of two not above n.
        let take = 1 << (usize::BITS - 1 - n.leading_zeros());
        let (chunk, rest) = items.split_at(take);
        items = rest;
        Some(chunk)
    })
}

/// Applies a whole batch in one transaction; returns the sighting keys it recorded.
///
/// The transaction is **one** multi-statement query (`BEGIN; …; COMMIT`): sqlx runs a
/// SQLite query on the connection's worker thread, and each round-trip there is two
/// thread switches, which cost more than the statements themselves at low load.
async fn apply(
    pool: &SqlitePool,
    batch: &[Op],
    endpoints: &NoEndpoints,
) -> Result<HashSet<String>, StoreError> {
    let now = to_ms(time::OffsetDateTime::now_utc());
    let mut q = QueryBuilder::<Sqlite>::new("BEGIN; ");
    let mut statements = 0;

    // Sightings: one upsert for every distinct key, RETURNING the rows it wrote (a
    // live sighting is left alone and not returned).
    let mut sightings: HashMap<&str, i64> = HashMap::new();
    for op in batch {
        if let Op::Sighting {
            key, expires_at, ..
        } = op
        {
            sightings.entry(key.as_str()).or_insert(*expires_at);
        }
    }
    let sightings: Vec<(&str, i64)> = sightings.into_iter().collect();
    for chunk in chunks(&sightings) {
        q.push("INSERT INTO seen_events (key, expires_at) ");
        q.push_values(chunk, |mut row, (key, expires_at)| {
            row.push_bind(*key).push_bind(*expires_at);
        });
        q.push(" ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE seen_events.expires_at < ")
            .push_bind(now)
            .push(" RETURNING key; ");
        statements += 1;
    }

    let commits: Vec<&Commit> = batch
        .iter()
        .filter_map(|op| match op {
            Op::Commit(c, _) => Some(c),
            Op::Sighting { .. } => None,
        })
        .collect();

    // Conversations: the last state of each key wins, as it would committing in order.
    let mut latest = HashMap::new();
    for c in commits.iter().flat_map(|c| &c.conversations) {
        latest.insert(c.key.as_str(), c);
    }
    let latest: Vec<&Conversation> = latest.into_values().collect();
    for chunk in chunks(&latest) {
        q.push(
            "INSERT INTO conversations (key, platform, workspace, channel, thread, user_id, \
             agent_session, personality, last_activity) ",
        );
        q.push_values(chunk, |mut row, c| {
            row.push_bind(c.key.as_str())
                .push_bind(c.platform.as_str())
                .push_bind(&c.workspace)
                .push_bind(&c.channel)
                .push_bind(c.thread.as_deref())
                .push_bind(c.user.as_deref())
                .push_bind(c.agent_session.as_deref())
                .push_bind(c.personality.as_deref())
                .push_bind(to_ms(c.last_activity));
        });
        q.push(
            " ON CONFLICT (key) DO UPDATE SET platform = excluded.platform, \
             workspace = excluded.workspace, channel = excluded.channel, \
             thread = excluded.thread, user_id = excluded.user_id, \
             agent_session = excluded.agent_session, personality = excluded.personality, \
             last_activity = excluded.last_activity; ",
        );
        statements += 1;
    }

    let rows: Vec<_> = commits.iter().flat_map(|c| &c.transcript).collect();
    for chunk in chunks(&rows) {
        q.push(
            "INSERT INTO transcripts (session_id, role, content, created_at, platform, channel, \
             thread, user_id, message_id) ",
        );
        q.push_values(chunk, |mut row, t| {
            row.push_bind(&t.session_id)
                .push_bind(t.role.as_str())
                .push_bind(&t.content)
                .push_bind(to_ms(t.timestamp))
                .push_bind(t.platform.as_str())
                .push_bind(&t.channel)
                .push_bind(t.thread.as_deref())
                .push_bind(&t.user)
                .push_bind(t.message_id.as_deref());
        });
        q.push("; ");
        statements += 1;
    }

    // Events: only for the endpoints that subscribe to them (filtered in SQL), and not
    // even bound while "no endpoint is enabled" is known. Chunks go in event order, so
    // an ordered endpoint's delivery rows keep the order in which events happened.
    let events: Vec<_> = commits.iter().flat_map(|c| &c.events).collect();
    let check_endpoints = !events.is_empty() && !endpoints.known();
    for chunk in chunks(&events).filter(|_| check_endpoints) {
        // The event rows of subscribed types…
        q.push("WITH ev(seq, id, type, ordering_key, body, at) AS (");
        q.push_values(chunk.iter().enumerate(), |mut row, (seq, e)| {
            row.push_bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .push_bind(e.id.as_str())
                .push_bind(e.kind.as_str())
                .push_bind(e.ordering_key.as_deref())
                .push_bind(&e.body)
                .push_bind(to_ms(e.created_at));
        });
        q.push(
            ") INSERT INTO webhook_events (id, type, ordering_key, body, created_at) \
             SELECT ev.id, ev.type, ev.ordering_key, ev.body, ev.at FROM ev \
             WHERE EXISTS (SELECT 1 FROM webhook_endpoints e \
                           JOIN webhook_subscriptions s ON s.endpoint_id = e.id \
                           WHERE e.enabled = 1 AND s.event_type IN (ev.type, '*')) \
             ORDER BY ev.seq; ",
        );
        // …then one pending delivery per enabled endpoint subscribed to the type or
        // `*`, in event order (`seq`).
        q.push("WITH ev(seq, id, type, ordering_key, at) AS (");
        q.push_values(chunk.iter().enumerate(), |mut row, (seq, e)| {
            row.push_bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .push_bind(e.id.as_str())
                .push_bind(e.kind.as_str())
                .push_bind(e.ordering_key.as_deref())
                .push_bind(to_ms(e.created_at));
        });
        q.push(
            ") INSERT INTO webhook_deliveries (event_id, endpoint_id, ordering_key, status, \
             attempts, next_attempt_at, created_at, updated_at) \
             SELECT ev.id, e.id, ev.ordering_key, 'pending', 0, ev.at, ev.at, ev.at \
             FROM ev JOIN webhook_endpoints e ON e.enabled = 1 \
             WHERE EXISTS (SELECT 1 FROM webhook_subscriptions s \
                           WHERE s.endpoint_id = e.id AND s.event_type IN (ev.type, '*')) \
             ORDER BY ev.seq, e.id; ",
        );
        statements += 2;
    }
    if check_endpoints {
        q.push(ANY_ENABLED_ENDPOINT).push("; ");
        statements += 1;
    }
    if statements == 0 {
        return Ok(HashSet::new());
    }
    q.push("COMMIT");

    let mut conn = pool.acquire().await.map_err(db_err)?;
    // A batch of one operation comes in a handful of shapes (one sighting, one turn)
    // and is worth caching prepared; bigger ones vary, and caching them filled the
    // statement cache with multi-statement programs (+7 MiB RSS under load).
    let query = q.build().persistent(batch.len() == 1);
    let mut first = HashSet::new();
    let mut any_endpoint = None;
    let failed = match query.fetch_all(&mut *conn).await {
        Ok(rows) => rows.iter().try_for_each(|row| {
            match row.columns().first().map(|c| c.name()) {
                Some("key") => {
                    first.insert(row.try_get::<String, _>(0)?);
                }
                _ => any_endpoint = Some(row.try_get::<bool, _>(0)?),
            }
            Ok(())
        }),
        Err(e) => Err(e),
    }
    .err();
    if let Some(e) = failed {
        // The statement that failed left the transaction open on the only connection.
        if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            tracing::debug!(error = %rollback, "rollback after a failed batch");
        }
        return Err(db_err(e));
    }
    if let Some(any) = any_endpoint {
        // Noted before the connection goes back: an endpoint created afterwards
        // forgets it (`endpoints_changed`) only once this is written.
        endpoints.saw(any);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_up_to_the_cap_in_order() {
        let items: Vec<usize> = (0..103).collect();
        let lens: Vec<usize> = chunks(&items).map(<[usize]>::len).collect();
        assert_eq!(lens, [32, 32, 32, 4, 2, 1]);
        let flat: Vec<usize> = chunks(&items).flatten().copied().collect();
        assert_eq!(flat, items);
        assert_eq!(chunks::<u8>(&[]).count(), 0);
    }
}
