//! SQLite's one writer: a thread that owns the write connection and performs every
//! write the store makes ([`Op`]) — turn commits, sightings, endpoint changes,
//! claims, delivery results — in group-committed batches. Reads never come here: they
//! go through the read-only pool beside it, and in WAL mode never wait for it.
//!
//! The writer takes whatever has queued up (up to [`MAX_BATCH`]), applies it in **one
//! transaction** and only then answers each caller: "done means durable". Nothing
//! waits on a timer: an idle store writes a batch of one at once, a busy one writes
//! bigger batches. A write that fails (a constraint, say) fails only its own caller:
//! the batch is rolled back and written again with each write in a savepoint
//! (savepoints cost a statement journal, so the failure-free batch goes without).
//!
//! The operations are `ops::apply`, the same code PostgreSQL runs, on a rusqlite
//! connection (`exec::Lite`) whose calls never wait: the writer drives each one to
//! completion with a single poll, on its own thread, and another process holding the
//! lock (a `migrate`, an operator's shell) is waited for by SQLite's own busy timeout,
//! there.
//!
//! One shortcut: a caller that finds the writer idle — nothing sent to it unanswered,
//! its last batch small, writes not running side by side ([`OVERLAP_BUSY`]; a turn's
//! journal row only needs the thread to have nothing unanswered), the connection
//! free — writes its operation itself, on its own thread, in a transaction that
//! cannot wait (busy timeout 0; in WAL mode with `synchronous=NORMAL` a commit syncs
//! nothing). An idle store then costs a write no thread hand-offs: two wake-ups fewer,
//! which on a small machine are most of a Slack acknowledgement's journal write; a
//! busy one batches, since a commit per write would rewrite the same pages over and
//! over. A runtime thread is thus busy with SQLite for one
//! short transaction at a time, and never blocks on it: whatever would wait (the
//! connection taken, the file locked by another process) goes to the thread.
//!
//! It also knows, as plain state, whether any webhook endpoint is enabled: every
//! endpoint change passes through it. While none is, commits skip their events (and
//! callers may skip building them: [`Writer::wants_events`]), and the webhook worker's
//! claims are answered "nothing" without a transaction. The knowledge is trusted for
//! [`NO_ENDPOINTS_FOR`] only, for the sake of another process writing the file: an idle
//! worker's claim renews it once that long.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::exec::{lite_err, Lite};
use super::ops::{self, Op, Out};
use super::sql;
use super::{SQLITE_BUSY_TIMEOUT, WAL_AUTOCHECKPOINT_PAGES};
use crate::core::error::Detail;
use crate::core::ports::StoreError;

/// The most operations one transaction takes.
const MAX_BATCH: usize = 256;

/// A batch of this many awaited writes means a busy store: callers then leave their
/// writes to the thread (see [`Writer::write_idle`]). Measured in W1: a batch holds
/// 1–4 at 1,000 events/s and 80 or more at full load.
const CROWDED: usize = 8;

/// When at least half of the recent writes began while another was still in progress
/// (a moving average, in 1/[`OVERLAP_SCALE`]ths), writes run side by side: a caller
/// finding the connection free then still sends its write to the thread, where the
/// concurrent ones share a transaction instead of committing one by one (every commit
/// writes the pages it dirtied, so a commit per write multiplies the WAL's page
/// writes). A turn's journal row, which an acknowledgement waits for, is the
/// exception: it is written inline whenever the thread has nothing unanswered, since
/// a Socket Mode connection journals its envelopes one after another and would pay
/// the thread's two wake-ups on each. Figures in `bench/README.md`.
const OVERLAP_BUSY: u32 = OVERLAP_SCALE / 2;

/// The fixed-point scale of [`Load`]'s overlap average.
const OVERLAP_SCALE: u32 = 1024;

/// How long "no endpoint is enabled" is trusted after it was read.
const NO_ENDPOINTS_FOR: Duration = Duration::from_secs(1);

/// How often the checkpointer wakes: it hands queued writes to the writer, and copies
/// the WAL back into the database file unless writes are heavy ([`Pace`]). While a
/// checkpoint copies, the writer's transactions wait on the disk — and a Slack
/// acknowledgement waits for the writer (the journal) — so checkpoints are kept small
/// and frequent: measured, a 1 s interval made W1's p99 ack 5× worse than 200 ms.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// WAL growth, in frames (pages) per [`CHECKPOINT_EVERY`], above which writes count as
/// heavy: 4 MiB per 50 ms. Slack events at 1,000/s, each written on its own, grow it by
/// about 470 (W1); at full load, by 1,500 to 2,700.
const HEAVY_FRAMES: i64 = 1024;

/// While writes are heavy, a checkpoint every this many wakes (200 ms): a page the
/// writer changes again and again (a table's last page, an index's right edge) is
/// then copied once for many transactions instead of once every 50 ms.
const HEAVY_EVERY: u32 = 4;

type Reply = oneshot::Sender<Result<Out, StoreError>>;

/// Writes nobody waits for (`Writer::queue`): they wait here, without waking the
/// writer, for the next batch (which takes them first) or the next tick of
/// [`background`], whichever comes first.
type Deferred = Arc<std::sync::Mutex<Vec<Op>>>;

struct Job {
    op: Op,
    /// `None`: nobody waits for the answer (`note_sighting`).
    reply: Option<Reply>,
}

impl Job {
    /// A write nobody waits for.
    fn queued(op: Op) -> Job {
        Job { op, reply: None }
    }
}

/// Handle to the writer thread; the thread ends when the last handle is dropped.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    /// The write connection: the thread holds it for each batch, and a caller that
    /// finds the writer idle writes through it itself ([`Writer::write_idle`]).
    db: Arc<Mutex<rusqlite::Connection>>,
    /// How busy the thread is, for [`Writer::write_idle`].
    load: Arc<Load>,
    deferred: Deferred,
    endpoints: Arc<NoEndpoints>,
    /// Stops the background task (queued writes, checkpoints) when the last handle goes.
    _checkpoints: DropGuard,
}

/// "No webhook endpoint is enabled", as the writer last read it: written only by
/// whoever holds the write connection (the thread, or a caller in
/// [`Writer::write_idle`]), read by anyone for the hot-path hint.
struct NoEndpoints {
    epoch: Instant,
    /// Milliseconds since `epoch` until which "none" holds; 0: unknown.
    until: AtomicU64,
    /// The same for the webhook worker's claims, renewed also by a claim that found
    /// nothing: a claim skipped wrongly only waits (an endpoint another process
    /// enabled is claimed for within [`NO_ENDPOINTS_FOR`]), where an event skipped
    /// wrongly would be lost, so only endpoint changes and offered events renew
    /// `until`.
    claims_until: AtomicU64,
}

impl NoEndpoints {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn known(&self) -> bool {
        self.now_ms() < self.until.load(Ordering::Acquire)
    }

    fn known_for_claims(&self) -> bool {
        self.now_ms() < self.claims_until.load(Ordering::Acquire)
    }

    fn saw(&self, any: bool) {
        let until = self.until_for(any);
        self.until.store(until, Ordering::Release);
        self.claims_until.store(until, Ordering::Release);
    }

    /// What a claim that found nothing read: renews only the claims' knowledge.
    fn saw_after_claim(&self, any: bool) {
        match any {
            true => self.saw(true),
            false => self
                .claims_until
                .store(self.until_for(false), Ordering::Release),
        }
    }

    fn until_for(&self, any: bool) -> u64 {
        match any {
            true => 0,
            false => self.now_ms() + NO_ENDPOINTS_FOR.as_millis() as u64,
        }
    }
}

/// A database that lives as long as the store (`sqlite::memory:`): a file in the
/// temporary directory, removed with its WAL when the writer ends.
pub(crate) struct TempDb(pub(crate) PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Writer {
    /// Opens the write connection (creating the file, in WAL mode) and starts the
    /// writer thread and the checkpointer beside it. `options` open the same file.
    pub(crate) fn start(
        options: &SqliteConnectOptions,
        synchronous: &str,
        temp: Option<TempDb>,
    ) -> Result<Writer, StoreError> {
        let db = open(options.get_filename(), synchronous).map_err(|e| {
            StoreError::Unavailable(Detail::caused_by("cannot open SQLite database", e))
        })?;
        let (jobs, rx) = mpsc::channel();
        let endpoints = Arc::new(NoEndpoints {
            epoch: Instant::now(),
            until: AtomicU64::new(0),
            claims_until: AtomicU64::new(0),
        });
        let state = endpoints.clone();
        let deferred = Deferred::default();
        let db = Arc::new(Mutex::new(db));
        let load = Arc::new(Load::default());
        let (waiting, conn, busy) = (deferred.clone(), db.clone(), load.clone());
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                run(&conn, &busy, rx, &waiting, &state);
                drop(temp);
            })
            .map_err(|e| {
                StoreError::Unavailable(Detail::caused_by("cannot start the SQLite writer", e))
            })?;
        let stop = CancellationToken::new();
        tokio::spawn(background(
            options.clone(),
            deferred.clone(),
            jobs.clone(),
            load.clone(),
            stop.clone(),
        ));
        Ok(Writer {
            jobs,
            db,
            load,
            deferred,
            endpoints,
            _checkpoints: stop.drop_guard(),
        })
    }

    /// `false` while "no endpoint is enabled" is known.
    pub(crate) fn wants_events(&self) -> bool {
        !self.endpoints.known()
    }

    /// `false` while "no endpoint is enabled" is known for the webhook worker's
    /// claims (see [`NoEndpoints::claims_until`]).
    pub(crate) fn wants_claims(&self) -> bool {
        !self.endpoints.known_for_claims()
    }

    /// Applies `op` with the next batch and waits until it is committed.
    pub(crate) async fn write(&self, op: Op) -> Result<Out, StoreError> {
        let alone = self.load.begin();
        // Counted until this write is answered, or given up by a dropped caller.
        let _active = Active(&self.load);
        let op = match self.write_idle(op, alone) {
            Ok(written) => return written,
            Err(op) => op,
        };
        let (reply, answer) = oneshot::channel();
        self.load.sent.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            op,
            reply: Some(reply),
        };
        if self.jobs.send(job).is_err() {
            self.load.sent.fetch_sub(1, Ordering::AcqRel);
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }

    /// An idle writer — nothing sent to it unanswered, nobody holding the connection —
    /// lets the caller write `op` itself, after the queued writes, in a transaction
    /// that never waits: the busy timeout is 0 and `synchronous=NORMAL` in WAL mode
    /// syncs nothing at commit. That saves two thread hand-offs, the most of what one
    /// write costs an idle store, and of a Slack acknowledgement's latency (measured
    /// in `bench/README.md`). Whatever would wait goes to the thread instead
    /// (`Err(op)`): the writer busy, or another process holding the lock; and so do
    /// writes running side by side (`alone`: none other was in progress when this one
    /// began; see [`OVERLAP_BUSY`]), which batch better there.
    fn write_idle(&self, op: Op, alone: bool) -> Result<Result<Out, StoreError>, Op> {
        // A turn's journal row is what an acknowledgement waits for (Slack's 200, a
        // Socket Mode connection's next envelope): it is written here whenever the
        // thread has nothing unanswered. Any other write only when writes are not
        // running side by side, where batches beat writing one by one.
        let waited_for = matches!(op, Op::AcceptTurn(_));
        let inline = match waited_for {
            true => self.load.sent.load(Ordering::Acquire) == 0,
            false => alone && self.load.idle(),
        };
        if !inline || !is_short(&op) {
            return Err(op);
        }
        let Ok(mut db) = self.db.try_lock() else {
            return Err(op);
        };
        let queued = std::mem::take(&mut *crate::core::lock::lock(&self.deferred));
        let mut batch: Vec<Job> = queued.into_iter().map(Job::queued).collect();
        batch.push(Job { op, reply: None });
        let _ = db.busy_timeout(Duration::ZERO);
        let written = write(&mut db, &batch, &self.endpoints);
        let _ = db.busy_timeout(SQLITE_BUSY_TIMEOUT);
        drop(db);
        let Ok(mut results) = written else {
            // Back to the thread, which waits as it must: the queued writes first, as
            // they came, then `op`.
            let own = batch.pop();
            let mut deferred = crate::core::lock::lock(&self.deferred);
            deferred.splice(0..0, batch.into_iter().map(|job| job.op));
            return match own {
                Some(job) => Err(job.op),
                None => Ok(Err(stopped())),
            };
        };
        self.load.committed();
        let own = results.pop().unwrap_or_else(|| Err(stopped()));
        for result in results {
            if let Err(e) = result {
                tracing::warn!(error = %e, "a background store write failed");
            }
        }
        Ok(own)
    }

    /// Queues `op` without waiting and without waking the writer: it is written
    /// first in the next batch, or within [`CHECKPOINT_EVERY`] when none comes.
    pub(crate) fn queue(&self, op: Op) {
        crate::core::lock::lock(&self.deferred).push(op);
    }
}

/// A write of a few rows, known in advance. The purges, raw statements and secret
/// rotations touch as many rows as they find: they always go to the thread.
fn is_short(op: &Op) -> bool {
    !matches!(
        op,
        Op::PurgeTranscripts(_)
            | Op::PurgeSightings(_)
            | Op::PurgeOutbox(_)
            | Op::Raw(_)
            | Op::ReplaceSecret { .. }
    )
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

/// The write connection. SQLite's busy timeout waits here, on the writer's thread,
/// for a lock another process holds.
fn open(path: &Path, synchronous: &str) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    // Every catalogue statement the writer runs stays prepared.
    db.set_prepared_statement_cache_capacity(64);
    // The durability first: switching a new file to WAL is a rollback-journal commit,
    // which the default (FULL) would sync more often than the store ever does.
    db.execute_batch(&format!("PRAGMA synchronous = {synchronous};"))?;
    db.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    // The checkpointer copies the WAL back every 50 to 200 ms; the writer only
    // checkpoints itself past ~64 MiB of WAL: when writes never pause (see
    // `background`), or should that connection fail.
    db.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = {synchronous}; \
         PRAGMA temp_store = memory; PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
    ))?;
    Ok(db)
}

/// How busy the writer thread is: counted by callers and the thread, read by
/// callers deciding whether to write themselves.
#[derive(Default)]
struct Load {
    /// Jobs sent to the thread that someone waits for and that are not answered yet.
    sent: AtomicUsize,
    /// The thread's last batch held [`CROWDED`] awaited writes or more: the store is
    /// busy, and batches beat writing one by one.
    crowded: AtomicBool,
    /// Awaited writes in progress, written inline or by the thread.
    active: AtomicUsize,
    /// How often a write began while another was in progress: a moving average over
    /// the last few, in 1/[`OVERLAP_SCALE`]ths (concurrent updates may lose one,
    /// which only blurs it).
    overlap: AtomicU32,
    /// Batches committed, by the thread or inline: the checkpointer skips its work
    /// while this has not moved since a checkpoint that copied everything.
    commits: AtomicU64,
}

impl Load {
    /// Counts an awaited write as begun (see [`Active`] for its end); `true` when no
    /// other was in progress.
    fn begin(&self) -> bool {
        let alone = self.active.fetch_add(1, Ordering::AcqRel) == 0;
        let average = self.overlap.load(Ordering::Relaxed);
        let sample = if alone { 0 } else { OVERLAP_SCALE };
        // An eighth of the way to the new sample: a change of pattern shows within a
        // few writes, one coincidence does not.
        self.overlap
            .store(average - average / 8 + sample / 8, Ordering::Relaxed);
        alone
    }

    fn idle(&self) -> bool {
        self.sent.load(Ordering::Acquire) == 0
            && !self.crowded.load(Ordering::Relaxed)
            && self.overlap.load(Ordering::Relaxed) < OVERLAP_BUSY
    }

    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Release);
    }
}

/// An awaited write in progress ([`Load::begin`]); dropped when it is answered or
/// its caller gives up.
struct Active<'a>(&'a Load);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn run(
    db: &Mutex<rusqlite::Connection>,
    load: &Load,
    jobs: mpsc::Receiver<Job>,
    deferred: &Deferred,
    endpoints: &NoEndpoints,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let take_deferred = |batch: &mut Vec<Job>| {
        let ops = std::mem::take(&mut *crate::core::lock::lock(deferred));
        batch.extend(ops.into_iter().map(Job::queued));
    };
    loop {
        let job = match jobs.recv() {
            Ok(job) => job,
            // Every handle is gone: what was queued last is written, then the thread ends.
            Err(_) => {
                take_deferred(&mut batch);
                if batch.is_empty() {
                    return;
                }
                let _ = write(&mut crate::core::lock::lock(db), &batch, endpoints);
                return;
            }
        };
        let mut db = crate::core::lock::lock(db);
        // Queued before this job was sent, so written before (or with) it.
        take_deferred(&mut batch);
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = match write(&mut db, &batch, endpoints) {
            Ok(results) => {
                load.committed();
                results
            }
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "a store batch failed; its callers get the error");
                batch.iter().map(|_| Err(e.clone())).collect()
            }
        };
        drop(db);
        let awaited = batch.iter().filter(|job| job.reply.is_some()).count();
        load.crowded.store(awaited >= CROWDED, Ordering::Relaxed);
        load.sent.fetch_sub(awaited, Ordering::AcqRel);
        for (job, result) in batch.drain(..).zip(results) {
            match job.reply {
                Some(reply) => {
                    let _ = reply.send(result);
                }
                None => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "a background store write failed");
                    }
                }
            }
        }
    }
}

/// The batch in one transaction: one result per job. Rolls back whatever it began if
/// it fails as a whole.
fn write(
    db: &mut rusqlite::Connection,
    batch: &[Job],
    endpoints: &NoEndpoints,
) -> Result<Vec<Result<Out, StoreError>>, StoreError> {
    let none_known = endpoints.known();
    let written = (|| {
        step(db, "BEGIN IMMEDIATE")?;
        let results = match pass(db, batch, none_known, false)? {
            Some(results) => results,
            None => {
                step(db, "ROLLBACK")?;
                step(db, "BEGIN IMMEDIATE")?;
                pass(db, batch, none_known, true)?
                    .ok_or_else(|| StoreError::Unavailable("a batch failed twice".into()))?
            }
        };
        // Every endpoint change comes through here: after one (or when events were
        // offered, or a claim found nothing) the writer reads the answer again, inside
        // the same transaction.
        let for_events = batch
            .iter()
            .any(|j| j.op.changes_endpoints() || j.op.offers_events());
        let for_claims = results
            .iter()
            .any(|result| matches!(result, Ok(Out::Claimed(rows)) if rows.is_empty()));
        let any = match for_events || for_claims {
            true => Some(poll(ops::scalar(&mut Lite(db), &sql::ANY_ENABLED_ENDPOINT, &[]))? > 0),
            false => None,
        };
        step(db, "COMMIT")?;
        match any {
            Some(any) if for_events => endpoints.saw(any),
            Some(any) => endpoints.saw_after_claim(any),
            None => {}
        }
        Ok(results)
    })();
    if written.is_err() && !db.is_autocommit() {
        if let Err(e) = db.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "rollback after a failed batch");
        }
    }
    written
}

/// One pass over the batch inside the open transaction. With `isolate`, each job runs
/// in a savepoint, so a failing one fails alone; without, a failure returns `None`
/// (its partial writes cannot be undone alone) and the caller redoes the batch.
fn pass(
    db: &mut rusqlite::Connection,
    batch: &[Job],
    none_known: bool,
    isolate: bool,
) -> Result<Option<Vec<Result<Out, StoreError>>>, StoreError> {
    let mut results = Vec::with_capacity(batch.len());
    let mut events = !none_known;
    for job in batch {
        let result = match isolate {
            true => savepoint(db, |db| poll(ops::apply(&mut Lite(db), &job.op, events))),
            false => poll(ops::apply(&mut Lite(db), &job.op, events)),
        };
        if let Err(e) = &result {
            if db.is_autocommit() {
                // Some errors (I/O, disk full) end the transaction themselves: what
                // follows would be written outside it, so the whole batch fails.
                return Err(StoreError::Unavailable(Detail::caused_by(
                    "the batch was aborted",
                    e.clone(),
                )));
            }
            if !isolate {
                return Ok(None);
            }
        }
        // An endpoint added earlier in this batch takes the events after it.
        events |= job.op.changes_endpoints();
        results.push(result);
    }
    Ok(Some(results))
}

/// Runs `body` inside a savepoint: released on success, rolled back on failure.
fn savepoint<T>(
    db: &mut rusqlite::Connection,
    body: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    step(db, "SAVEPOINT op")?;
    match body(db) {
        Ok(out) => {
            step(db, "RELEASE op")?;
            Ok(out)
        }
        Err(e) => {
            step(db, "ROLLBACK TO op")?;
            step(db, "RELEASE op")?;
            Err(e)
        }
    }
}

/// One transaction-control statement, kept prepared.
fn step(db: &rusqlite::Connection, statement: &str) -> Result<(), StoreError> {
    db.prepare_cached(statement)
        .and_then(|mut st| st.execute([]))
        .map(drop)
        .map_err(lite_err)
}

/// Drives an operation on [`Lite`] to its end: nothing in it awaits, so one poll does.
fn poll<T>(
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    operation.now_or_never().unwrap_or_else(|| {
        Err(StoreError::Unavailable(
            "internal: a SQLite write did not complete at once".into(),
        ))
    })
}

/// Every [`CHECKPOINT_EVERY`]: hands the writer the queued writes no batch took
/// ([`Deferred`]), and runs `PRAGMA wal_checkpoint(PASSIVE)` on a connection of its
/// own, as often as [`Pace`] says. A passive checkpoint never blocks the writer, so its
/// transactions (and the turns waiting on them) do not stall while megabytes of WAL
/// are copied. The WAL goes back to its start when the writer begins a transaction
/// after a checkpoint copied all of it: whenever writes pause. Under writes that never
/// pause, a checkpoint never catches up with them, and the writer's own
/// `wal_autocheckpoint` ([`WAL_AUTOCHECKPOINT_PAGES`], after this one copied nearly
/// everything) is what sends it back.
async fn background(
    options: SqliteConnectOptions,
    deferred: Deferred,
    jobs: mpsc::Sender<Job>,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    // The first checkpoint one period from now, not at once: at start-up it would
    // sync the WAL and the file while the migrations and the first requests run. Its
    // connection is opened then too, off start-up's path (`None` inside: it failed).
    let mut conn: Option<Option<SqliteConnection>> = None;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + CHECKPOINT_EVERY,
        CHECKPOINT_EVERY,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pace = Pace::default();
    // The commit count as read before the last checkpoint that copied the whole WAL
    // back: while it stays, there is nothing to copy, and an idle store costs no
    // checkpoint (no hand-off to the connection's thread, no locks) every wake.
    // `None` until the first one, which also copies what the migrations wrote.
    let mut copied_through: Option<u64> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ops = std::mem::take(&mut *crate::core::lock::lock(&deferred));
        for op in ops {
            let _ = jobs.send(Job::queued(op));
        }
        if conn.is_none() {
            conn = Some(match SqliteConnection::connect_with(&options).await {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the checkpointing connection; the writer will checkpoint");
                    None
                }
            });
        }
        let Some(Some(conn)) = conn.as_mut() else {
            continue;
        };
        let commits = load.commits.load(Ordering::Acquire);
        if copied_through == Some(commits) || !pace.due() {
            continue;
        }
        // (busy, frames in the WAL, frames copied back)
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut *conn)
            .await
        {
            // -1: it could not run (the writer's own checkpoint was running).
            Ok((_, frames, copied)) if frames >= 0 => {
                pace.checkpointed(frames);
                if copied == frames {
                    copied_through = Some(commits);
                }
            }
            Ok(_) => pace.failed(),
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
                pace.failed();
            }
        }
    }
    if let Some(Some(conn)) = conn {
        let _ = conn.close().await;
    }
}

/// When the checkpointer copies the WAL back: at every wake while writes are light,
/// at every [`HEAVY_EVERY`]th while the WAL grew by more than [`HEAVY_FRAMES`] a wake
/// between the last two checkpoints. The growth is read off each checkpoint's answer:
/// the frames the WAL holds, counted from its start, which a writer goes back to once
/// a checkpoint has copied everything.
#[derive(Debug, Default)]
struct Pace {
    /// Wakes since the last checkpoint.
    waited: u32,
    /// Frames in the WAL at the last checkpoint.
    frames: i64,
    heavy: bool,
}

impl Pace {
    /// Counts a wake; `true` when it is time to checkpoint.
    fn due(&mut self) -> bool {
        self.waited += 1;
        !self.heavy || self.waited >= HEAVY_EVERY
    }

    /// A checkpoint ran, and found `frames` in the WAL.
    fn checkpointed(&mut self, frames: i64) {
        // Fewer than last time: the WAL went back to its start since, so all are new.
        // (Gone back and grown past the last count, it reads as less than it grew: a
        // checkpoint 50 ms early once, and the next one knows.)
        let grown = match frames >= self.frames {
            true => frames - self.frames,
            false => frames,
        };
        self.heavy = grown > HEAVY_FRAMES * i64::from(self.waited.max(1));
        self.frames = frames;
        self.waited = 0;
    }

    /// A checkpoint failed or could not run: the next is as far away as after one
    /// that ran.
    fn failed(&mut self) {
        self.waited = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_space_out_while_the_wal_grows_fast_and_come_back_when_it_slows() {
        let mut pace = Pace::default();
        // Light: every wake.
        for frames in [100, 300, 350] {
            assert!(pace.due());
            pace.checkpointed(frames);
        }
        // A burst: more than HEAVY_FRAMES in one wake.
        assert!(pace.due());
        pace.checkpointed(350 + HEAVY_FRAMES + 1);
        let waits: Vec<bool> = (0..HEAVY_EVERY).map(|_| pace.due()).collect();
        assert_eq!(waits, [false, false, false, true]);
        // Still heavy: the growth is measured per wake.
        pace.checkpointed(350 + HEAVY_FRAMES + 1 + i64::from(HEAVY_EVERY) * HEAVY_FRAMES + 1);
        assert!(!pace.due());
        for _ in 1..HEAVY_EVERY {
            pace.due();
        }
        // The WAL went back to its start and holds little: light again.
        pace.checkpointed(200);
        assert!(pace.due());
        pace.checkpointed(300);
        assert!(pace.due());
    }

    #[test]
    fn writes_side_by_side_go_to_the_thread_and_writes_in_turn_do_not() {
        let load = Load::default();
        // One after another: each finds none in progress.
        for _ in 0..20 {
            assert!(load.begin());
            drop(Active(&load));
        }
        assert!(load.idle(), "writes in turn write themselves");
        // Side by side: each begins while the one before is still in progress.
        let first = load.begin();
        let mut held = vec![Active(&load)];
        for _ in 0..20 {
            assert!(!load.begin());
            held.push(Active(&load));
        }
        assert!(first);
        assert!(!load.idle(), "concurrent writes are batched by the thread");
        drop(held);
        assert_eq!(load.active.load(Ordering::Relaxed), 0);
        // Back to writes in turn: idle again within a few.
        for _ in 0..10 {
            load.begin();
            drop(Active(&load));
        }
        assert!(load.idle());
    }

    #[test]
    fn no_endpoints_is_known_for_a_while_and_forgotten_when_one_appears() {
        let none = NoEndpoints {
            epoch: Instant::now(),
            until: AtomicU64::new(0),
            claims_until: AtomicU64::new(0),
        };
        assert!(!none.known());
        assert!(!none.known_for_claims());
        none.saw(false);
        assert!(none.known());
        assert!(none.known_for_claims());
        none.saw(true);
        assert!(!none.known());
        assert!(!none.known_for_claims());
        // A claim that found nothing renews only the claims' knowledge: events are
        // never dropped on its word.
        none.saw_after_claim(false);
        assert!(!none.known());
        assert!(none.known_for_claims());
        none.saw_after_claim(true);
        assert!(!none.known_for_claims());
    }
}
