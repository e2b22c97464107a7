//! Group commit for SQLite: every `commit` and `first_sighting` goes through one
//! writer task, which takes whatever has queued up (up to [`MAX_BATCH`]) and applies
//! it in **one transaction**, then answers each caller. Nothing waits on a timer: an
//! idle store writes a batch of one at once, a busy one writes bigger batches.
//! Callers still get "done means durable" — they are answered after the transaction
//! commits.
//!
//! The batch runs through SQLite's C API (rusqlite) on this task, on a connection of
//! the writer's own for a file database: single-row statements prepared once and
//! stepped per row, and no hand-off to another thread. Measured before: sqlx ran each
//! statement on its connection's worker thread (two thread switches per statement,
//! ~19 switches per Slack event at 1,000 events/s); a multi-row multi-statement query
//! avoided those but was compiled afresh for every batch shape (~10 µs per event at
//! full load). An in-memory database lives on the pool's connection only, so there
//! the writer borrows that connection's raw handle per batch (sqlx's `lock_handle`).
//!
//! A commit that fails (a constraint, say) fails only its own caller: the batch is
//! rolled back and written again with each commit in a savepoint. When the pool's
//! connection (webhook deliveries, admin changes) or another process holds the write
//! lock, the writer waits with async sleeps, never in SQLite's busy handler, which
//! would block a runtime thread; the pool's connection, for its part, waits in short
//! steps on its own thread (`shorten_busy_waits`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool};
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{db_err, to_ms, SQLITE_BUSY_TIMEOUT, WAL_AUTOCHECKPOINT_PAGES};
use crate::core::ports::{Commit, StoreError};

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
    /// Bumped by every `forget`: a reading taken before a change is not recorded.
    generation: AtomicU64,
}

const NO_ENDPOINTS_FOR: Duration = Duration::from_secs(1);

impl NoEndpoints {
    fn new() -> Self {
        NoEndpoints {
            until: AtomicU64::new(0),
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `true` while "none enabled" is known.
    fn known(&self) -> bool {
        self.now_ms() < self.until.load(Ordering::Acquire)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records a reading taken at `generation`. Endpoints change through the pool's
    /// connection, beside the writer's: a change (its `forget`) made after the reading
    /// was taken wins, whichever order the two calls land in.
    fn saw(&self, any: bool, generation: u64) {
        if any {
            self.until.store(0, Ordering::Release);
            return;
        }
        if self.generation() != generation {
            return;
        }
        let until = self.now_ms() + NO_ENDPOINTS_FOR.as_millis() as u64;
        self.until.store(until, Ordering::Release);
        if self.generation() != generation {
            // A `forget` ran in between; it may have cleared before this store.
            self.until.store(0, Ordering::Release);
        }
    }

    fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.until.store(0, Ordering::Release);
    }
}

impl Batcher {
    /// Starts the writer.
    /// `checkpoints`: how to open the checkpointing connection (file databases).
    pub(crate) fn start(pool: SqlitePool, checkpoints: Option<SqliteConnectOptions>) -> Batcher {
        let (ops, rx) = mpsc::unbounded_channel();
        let endpoints = Arc::new(NoEndpoints::new());
        // A file database gets a connection of the writer's own; an in-memory one
        // exists only on the pool's connection, which the writer then borrows.
        let conn = match checkpoints.as_ref().map(|o| open_own(o.get_filename())) {
            Some(Ok(db)) => Conn::Own(db),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot open the writer's own SQLite connection; it borrows the pool's");
                Conn::Borrowed(pool)
            }
            None => Conn::Borrowed(pool),
        };
        tokio::spawn(writer(conn, rx, endpoints.clone()));
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

    /// `false` while "no endpoint is enabled" is known.
    pub(crate) fn wants_events(&self) -> bool {
        !self.endpoints.known()
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

fn sql_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The connection the writer writes through.
enum Conn {
    /// Its own (file databases): statements stay prepared from batch to batch, and no
    /// batch waits for sqlx's worker thread.
    Own(rusqlite::Connection),
    /// The pool's one connection, borrowed per batch (`sqlite::memory:`, whose
    /// database lives on that connection only).
    Borrowed(SqlitePool),
}

/// Opens the writer's connection on the database file the pool opened (and migrated,
/// or will migrate: statements are prepared at first use).
fn open_own(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Waiting for the write lock happens in `apply`, asynchronously; inside a write
    // transaction nothing waits in WAL mode.
    db.busy_timeout(Duration::ZERO)?;
    db.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA temp_store = memory; \
         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
    ))?;
    Ok(db)
}

async fn writer(mut conn: Conn, mut rx: mpsc::UnboundedReceiver<Op>, endpoints: Arc<NoEndpoints>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.recv().await {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match apply(&mut conn, &batch, &endpoints).await {
            Ok(results) => answer(&mut batch, results),
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "a store batch failed; its callers get the error");
                let n = batch.len();
                answer(&mut batch, (0..n).map(|_| Err(e.clone())).collect());
            }
        }
    }
}

/// Answers every caller of a batch, in order; `results` holds one entry per operation
/// (for a sighting: whether it was the first).
fn answer(batch: &mut Vec<Op>, results: Vec<Result<bool, StoreError>>) {
    for (op, result) in batch.drain(..).zip(results) {
        match op {
            Op::Commit(_, reply) => {
                let _ = reply.send(result.map(drop));
            }
            Op::Sighting {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(result);
            }
            Op::Sighting { reply: None, .. } => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not record a sighting");
                }
            }
        }
    }
}

/// Applies a whole batch in one transaction; returns one result per operation.
///
/// The batch runs through SQLite's C API (rusqlite) on this task: single-row
/// statements stepped per row, prepared once (per batch on a borrowed connection).
/// When another connection holds the write lock, it waits here, asynchronously.
async fn apply(
    conn: &mut Conn,
    batch: &[Op],
    endpoints: &NoEndpoints,
) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
    let skip_events = endpoints.known();
    let deadline = Instant::now() + SQLITE_BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        let generation = endpoints.generation();
        let written = match conn {
            Conn::Own(db) => {
                let written = run(db, batch, skip_events);
                if let Ok(Some((_, Some(any)))) = &written {
                    endpoints.saw(*any, generation);
                }
                written
            }
            Conn::Borrowed(pool) => {
                with_borrowed(pool, |db| {
                    // Only an in-memory database (no other connection, never busy) or
                    // a file whose own connection failed to open comes here; the
                    // latter waits in the pool connection's busy handler.
                    let written = run(db, batch, skip_events);
                    if let Ok(Some((_, Some(any)))) = &written {
                        // Noted before the connection goes back, so an endpoint created
                        // through it afterwards is not forgotten.
                        endpoints.saw(*any, generation);
                    }
                    written
                })
                .await?
            }
        };
        match written? {
            Some((results, _)) => return Ok(results),
            None if Instant::now() < deadline => {
                // Another connection holds the write lock: wait here, not in SQLite's
                // busy handler, which would block this runtime thread.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            None => {
                return Err(StoreError::Unavailable(
                    "database is locked by another connection".into(),
                ))
            }
        }
    }
}

/// Runs `f` on the pool's one connection through rusqlite, while sqlx is kept off it.
async fn with_borrowed<T>(
    pool: &SqlitePool,
    f: impl FnOnce(&rusqlite::Connection) -> T,
) -> Result<T, StoreError> {
    let mut pooled = pool.acquire().await.map_err(db_err)?;
    let mut handle = pooled.lock_handle().await.map_err(db_err)?;
    let raw = handle.as_raw_handle();
    // SAFETY: while `handle` lives, sqlx's worker thread makes no call on this
    // connection or its statements (`LockedSqliteHandle`'s contract), and `db` is
    // dropped, finalising the statements it prepared, before `handle` is.
    // `from_handle` never closes the connection, which sqlx keeps owning.
    #[allow(unsafe_code)]
    let db = unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) }.map_err(sql_err)?;
    let out = f(&db);
    drop(db);
    drop(handle);
    Ok(out)
}

/// Gives the pool's connection a busy handler that waits in short steps: beside the
/// writer's own connection, the pool's writes (webhook deliveries, admin changes)
/// sometimes find the write lock taken for the few hundred microseconds of a batch,
/// and SQLite's stock handler (`busy_timeout`) sleeps 1, 2, 5, 10… ms each time. Runs
/// on sqlx's worker thread, never on the runtime's.
pub(crate) async fn shorten_busy_waits(pool: &SqlitePool) -> Result<(), StoreError> {
    with_borrowed(pool, |db| db.busy_handler(Some(short_busy_wait)))
        .await?
        .map_err(sql_err)
}

/// 250 waits of 200 µs (50 ms), then 5 ms steps up to about [`SQLITE_BUSY_TIMEOUT`].
fn short_busy_wait(count: i32) -> bool {
    const FINE: i32 = 250;
    let coarse = i32::try_from(SQLITE_BUSY_TIMEOUT.as_millis() / 5).unwrap_or(i32::MAX);
    if count < FINE {
        std::thread::sleep(Duration::from_micros(200));
        true
    } else if count < FINE.saturating_add(coarse) {
        std::thread::sleep(Duration::from_millis(5));
        true
    } else {
        false
    }
}

/// One attempt at the batch: `None` when the write lock is taken. Rolls back whatever
/// it began if it fails.
fn run(db: &rusqlite::Connection, batch: &[Op], skip_events: bool) -> BatchResult {
    let written = (|| {
        if !begin(db)? {
            return Ok(None);
        }
        if let Written::Done(results, any) = write(db, batch, skip_events, false)? {
            return Ok(Some((results, any)));
        }
        db.execute_batch("ROLLBACK").map_err(sql_err)?;
        if !begin(db)? {
            return Ok(None);
        }
        match write(db, batch, skip_events, true)? {
            Written::Done(results, any) => Ok(Some((results, any))),
            Written::Redo => Err(StoreError::Unavailable("a batch failed twice".into())),
        }
    })();
    if written.is_err() && !db.is_autocommit() {
        if let Err(e) = db.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "rollback after a failed batch");
        }
    }
    written
}

/// Per operation its result, and (when events were offered) whether any endpoint is
/// enabled; `None`: the write lock was taken.
type BatchResult = Result<Option<(Vec<Result<bool, StoreError>>, Option<bool>)>, StoreError>;

/// `BEGIN IMMEDIATE`: `false` when another connection holds the write lock (at once
/// on the writer's own connection, whose busy timeout is zero).
fn begin(db: &rusqlite::Connection) -> Result<bool, StoreError> {
    let began = db
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut st| st.execute([]));
    match began {
        Ok(_) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(false)
        }
        Err(e) => Err(sql_err(e)),
    }
}

const SIGHTING: &str = "INSERT INTO seen_events (key, expires_at) VALUES (?1, ?2) \
     ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
     WHERE seen_events.expires_at < ?3";

const CONVERSATION: &str = "INSERT INTO conversations (key, platform, workspace, channel, \
     thread, user_id, agent_session, personality, last_activity) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (key) DO UPDATE SET platform = excluded.platform, \
     workspace = excluded.workspace, channel = excluded.channel, \
     thread = excluded.thread, user_id = excluded.user_id, \
     agent_session = excluded.agent_session, personality = excluded.personality, \
     last_activity = excluded.last_activity";

const TRANSCRIPT: &str = "INSERT INTO transcripts (session_id, role, content, created_at, \
     platform, channel, thread, user_id, message_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// The event row, only if some enabled endpoint subscribes to its type (or `*`).
const EVENT: &str = "INSERT INTO webhook_events (id, type, ordering_key, body, created_at) \
     SELECT ?1, ?2, ?3, ?4, ?5 \
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints e \
                   JOIN webhook_subscriptions s ON s.endpoint_id = e.id \
                   WHERE e.enabled = 1 AND s.event_type IN (?2, '*'))";

/// One pending delivery per enabled endpoint subscribed to the type or `*`.
const DELIVERIES: &str = "INSERT INTO webhook_deliveries (event_id, endpoint_id, ordering_key, \
     status, attempts, next_attempt_at, created_at, updated_at) \
     SELECT ?1, e.id, ?3, 'pending', 0, ?4, ?4, ?4 FROM webhook_endpoints e \
     WHERE e.enabled = 1 AND EXISTS (SELECT 1 FROM webhook_subscriptions s \
                                     WHERE s.endpoint_id = e.id AND s.event_type IN (?2, '*')) \
     ORDER BY e.id";

/// What [`write`] did.
enum Written {
    /// Committed: one result per operation, and (when events were offered) whether
    /// any endpoint is enabled.
    Done(Vec<Result<bool, StoreError>>, Option<bool>),
    /// A commit failed outside a savepoint (so its partial writes cannot be undone
    /// alone): the caller rolls back and writes again with `isolate`.
    Redo,
}

/// Writes the batch in one transaction (begun by the caller). With `isolate`, each
/// commit runs inside a savepoint so that one failing commit (a constraint, say) fails
/// only its own caller; without, a failure asks for that second pass. Savepoints cost
/// every page a copy to the statement journal, so the common, failure-free batch
/// goes without.
fn write(
    db: &rusqlite::Connection,
    batch: &[Op],
    skip_events: bool,
    isolate: bool,
) -> Result<Written, StoreError> {
    let now = to_ms(time::OffsetDateTime::now_utc());
    let mut results = Vec::with_capacity(batch.len());
    let mut offered_events = false;
    for op in batch {
        let result = match op {
            // One statement: SQLite undoes a failed statement by itself.
            Op::Sighting {
                key, expires_at, ..
            } => db
                .prepare_cached(SIGHTING)
                .and_then(|mut st| st.execute(rusqlite::params![key, expires_at, now]))
                .map(|changed| changed == 1),
            Op::Commit(commit, _) => {
                let events = !skip_events && !commit.events.is_empty();
                offered_events |= events;
                let result = match isolate {
                    true => savepoint(db, |db| write_commit(db, commit, events)),
                    false => write_commit(db, commit, events),
                };
                if result.is_err() && !isolate {
                    return Ok(Written::Redo);
                }
                result.map(|()| true)
            }
        };
        if let Err(e) = &result {
            if db.is_autocommit() {
                // Some errors (I/O, disk full) end the transaction themselves: what
                // follows would be written outside it, so the whole batch fails.
                return Err(StoreError::Unavailable(format!(
                    "the batch was aborted: {e}"
                )));
            }
        }
        results.push(result.map_err(sql_err));
    }
    let any_endpoint = match offered_events {
        true => Some(
            db.prepare_cached(ANY_ENABLED_ENDPOINT)
                .and_then(|mut st| st.query_row([], |row| row.get::<_, bool>(0)))
                .map_err(sql_err)?,
        ),
        false => None,
    };
    db.prepare_cached("COMMIT")
        .and_then(|mut st| st.execute([]))
        .map_err(sql_err)?;
    Ok(Written::Done(results, any_endpoint))
}

/// Runs `body` inside a savepoint: released on success, rolled back on failure.
fn savepoint(
    db: &rusqlite::Connection,
    body: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    db.prepare_cached("SAVEPOINT op")?.execute([])?;
    match body(db) {
        Ok(()) => db.prepare_cached("RELEASE op")?.execute([]).map(drop),
        Err(e) => {
            db.prepare_cached("ROLLBACK TO op")?.execute([])?;
            db.prepare_cached("RELEASE op")?.execute([])?;
            Err(e)
        }
    }
}

fn write_commit(db: &rusqlite::Connection, commit: &Commit, events: bool) -> rusqlite::Result<()> {
    for c in &commit.conversations {
        db.prepare_cached(CONVERSATION)?.execute(rusqlite::params![
            c.key.as_str(),
            c.platform.as_str(),
            c.workspace,
            c.channel,
            c.thread,
            c.user,
            c.agent_session,
            c.personality,
            to_ms(c.last_activity),
        ])?;
    }
    for t in &commit.transcript {
        db.prepare_cached(TRANSCRIPT)?.execute(rusqlite::params![
            t.session_id,
            t.role.as_str(),
            t.content,
            to_ms(t.timestamp),
            t.platform.as_str(),
            t.channel,
            t.thread,
            t.user,
            t.message_id,
        ])?;
    }
    // Events in the order they happened, so an ordered endpoint's deliveries keep it.
    for e in commit.events.iter().filter(|_| events) {
        let at = to_ms(e.created_at);
        let stored = db.prepare_cached(EVENT)?.execute(rusqlite::params![
            e.id.as_str(),
            e.kind.as_str(),
            e.ordering_key,
            e.body,
            at,
        ])?;
        if stored == 1 {
            db.prepare_cached(DELIVERIES)?.execute(rusqlite::params![
                e.id.as_str(),
                e.kind.as_str(),
                e.ordering_key,
                at,
            ])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_taken_before_an_endpoint_change_is_not_recorded() {
        let none = NoEndpoints::new();
        let before = none.generation();
        none.forget(); // an endpoint created while the batch ran
        none.saw(false, before);
        assert!(!none.known(), "a stale 'none enabled' must not stick");

        let now = none.generation();
        none.saw(false, now);
        assert!(none.known());
        none.forget();
        assert!(!none.known());
        none.saw(true, none.generation());
        assert!(!none.known());
    }
}
