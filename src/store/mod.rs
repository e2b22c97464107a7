//! The store: the core's roles (`core::ports::{Conversations, Transcripts, Sightings,
//! TurnQueue}`) and the webhook side's (`webhook::WebhookStore`) in one [`SqlStore`]
//! over SQLite (the embedded default) or PostgreSQL (shared by replicas), picked by
//! `DATABASE_URL` in [`connect`].
//!
//! # Layout
//!
//! - `sql.rs`: the catalogue — every statement, written once for both back-ends.
//! - `ops.rs`: what the store does, written once: every write as an `Op`, every read
//!   as a function, rows decoded into the ports' records.
//! - `exec.rs`: the `Exec` seam those run on (a sqlx connection of either back-end,
//!   or the SQLite writer's rusqlite connection).
//! - `writer.rs`: SQLite's one writer thread (group commit) and its checkpointer.
//! - `chat.rs`, `webhooks.rs`: the port impls, thin: a read on a pooled connection
//!   or a write through [`SqlStore::write`].
//! - `mod.rs` (this file): connecting, migrations, the dispatch between back-ends.
//!
//! # The shape per back-end
//!
//! - SQLite: one writer thread owns the write connection and makes every write, in
//!   group-committed batches (`writer.rs`); reads go through a pool of `query_only`
//!   connections that, in WAL mode, never wait for it. So nothing else ever holds the
//!   write lock (bar another process), and no caller ever blocks a runtime thread on
//!   SQLite. `sqlite::memory:` is a temporary file that lives as long as the store.
//!   sqlx's before-use ping is off: each ping is a round-trip to a connection's
//!   worker thread, and a local file cannot be dropped by a server.
//! - PostgreSQL: a pool (several replicas, real concurrency) with sqlx's before-use
//!   ping, which recovers from connections the server dropped (restart, fail-over);
//!   each write runs in a transaction of its own when it has several statements.
//!
//! What this module deliberately does not do: compile-time checked queries (there is
//! no database at build time), schema work per call, or any webhook delivery logic
//! (that belongs to `webhook::*`; a commit only fills the outbox).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Postgres, Sqlite};
use time::OffsetDateTime;

use crate::core::error::Detail;
use crate::core::ports::StoreError;
use exec::{db_err, Arg, Cols, Exec, Sqlx};
use ops::{Op, Out};

mod chat;
mod exec;
mod feedback;
mod ops;
mod sql;
mod webhooks;
mod writer;

/// How long a SQLite statement waits for another process's lock (a second
/// `agent-bridge migrate`, an operator's `sqlite3` shell) before giving up.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `wal_autocheckpoint` of the write connection, in pages (4 KiB). The checkpointer
/// copies the WAL back every 50 to 200 ms; this sends the WAL back to its start under
/// writes that never pause (see `writer::background`), and stands in for the
/// checkpointer should its connection fail.
pub(crate) const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_000;

/// How long a caller waits for a pooled connection before the store reports itself
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite's read connections: reads of different callers run side by side (a chat
/// bridge reads rarely: admin calls, the janitor, cache misses), each with its own
/// page cache and sqlx worker thread.
const SQLITE_READERS: u32 = 2;

/// The reading pool of one backend. Public so tests and tooling can run
/// backend-specific SQL (on SQLite, reads only); the application only needs
/// [`SqlStore`]'s methods.
#[derive(Clone)]
pub enum Pool {
    /// `query_only` connections beside the writer (see the module docs).
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The store: a cheap-to-clone handle (clones share the pool and the writer).
#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    /// SQLite only: the writer every write goes through.
    writer: Option<Arc<writer::Writer>>,
    /// SQLite only: how to open a read-write connection (migrations).
    sqlite_options: Option<SqliteConnectOptions>,
}

impl fmt::Debug for SqlStore {
    // Only the backend: connect options can hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Opens the database named by `DATABASE_URL`:
///
/// - `sqlite://PATH` or `sqlite:PATH`: the file is created if missing; WAL journal,
///   `synchronous=NORMAL`, the writer thread and WAL checkpoints beside it, statement
///   journals in memory, a 5 s busy timeout and foreign keys on.
/// - `sqlite::memory:`: a private database that lives as long as the store (a
///   temporary file, so that the writer and the readers share it).
/// - `postgres://…` or `postgresql://…`: a pool; one connection is opened here so that
///   a wrong host, password or database name fails now, with the server's reason.
///
/// Errors never contain the URL, so they are safe to log even when it holds a password.
/// Migrations are not run here; call [`SqlStore::migrate`].
pub async fn connect(url: &str) -> Result<SqlStore, StoreError> {
    if url.starts_with("sqlite:") {
        connect_sqlite(url).await
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(SqlStore {
            pool: Pool::Postgres(connect_postgres(url).await?),
            writer: None,
            sqlite_options: None,
        })
    } else {
        Err(StoreError::Unavailable(
            format!(
                "DATABASE_URL must start with sqlite:, postgres:// or postgresql:// \
                 (e.g. sqlite://agent-bridge.db), not {}",
                describe_scheme(url)
            )
            .into(),
        ))
    }
}

async fn connect_sqlite(url: &str) -> Result<SqlStore, StoreError> {
    let mut options = SqliteConnectOptions::from_str(url)
        .map_err(|e| {
            StoreError::Unavailable(Detail::caused_by("DATABASE_URL is not a SQLite URL", e))
        })?
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        // Statement journals stay in memory instead of going through a temporary file.
        .pragma("temp_store", "memory");
    let (temp, synchronous) = match is_sqlite_memory(url) {
        true => {
            let path = std::env::temp_dir()
                .join(format!("agent-bridge-{}.db", uuid::Uuid::new_v4().simple()));
            options = options.filename(&path).in_memory(false).shared_cache(false);
            // Nothing to keep across a crash: no syncs at all.
            (Some(writer::TempDb(path)), "OFF")
        }
        false => (None, "NORMAL"),
    };
    // The writer's durability for every other connection that writes (migrations):
    // sqlx's default, FULL, would sync the WAL at each of the migrations' commits —
    // most of a fresh start. NORMAL in WAL mode keeps the file consistent whatever
    // happens and syncs at checkpoints.
    options = options.synchronous(match temp {
        Some(_) => SqliteSynchronous::Off,
        None => SqliteSynchronous::Normal,
    });
    // The writer creates the file and puts it in WAL mode before anyone reads it.
    let writer = writer::Writer::start(&options, synchronous, temp)?;
    let readers = options
        .clone()
        .create_if_missing(false)
        .pragma("query_only", "ON");
    // Lazy: the first reader opens in the background (`min_connections`) while the
    // migrations run on their own connection, instead of one after the other at every
    // start. The writer has opened the file already, so a reader that cannot open it
    // is unexpected; it would fail the first read (`/readyz` says so).
    let pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_READERS)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(readers);
    Ok(SqlStore {
        pool: Pool::Sqlite(pool),
        writer: Some(Arc::new(writer)),
        sqlite_options: Some(options),
    })
}

fn is_sqlite_memory(url: &str) -> bool {
    url == "sqlite::memory:" || url.starts_with("sqlite://:memory:") || url.contains("mode=memory")
}

async fn connect_postgres(url: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        StoreError::Unavailable(Detail::caused_by(
            "DATABASE_URL is not a valid PostgreSQL URL",
            e,
        ))
    })?;
    // One connection made directly first: the pool would retry until its acquire
    // timeout and then report only "timed out", hiding the cause an operator needs
    // (refused, unknown host, authentication failed, no such database).
    let probe = options.connect().await.map_err(|e| {
        StoreError::Unavailable(Detail::caused_by("cannot connect to PostgreSQL", e))
    })?;
    // The probe only proves the server accepts us; the pool opens its own connections.
    let _ = probe.close().await;
    Ok(PgPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Names the scheme of a URL we refuse, without echoing anything after it (which may
/// be a password).
fn describe_scheme(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme.len() <= 16
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)) =>
        {
            format!("{scheme:?}")
        }
        _ => "a value without a URL scheme".to_owned(),
    }
}

/// Migrations for one backend. Missing migrations are ignored so that, during a
/// rolling upgrade, an older replica keeps running against a schema a newer one has
/// already extended (every migration must therefore be additive).
fn migrator(pool: &Pool) -> Migrator {
    let mut m = match pool {
        Pool::Sqlite(_) => sqlx::migrate!("migrations/sqlite"),
        Pool::Postgres(_) => sqlx::migrate!("migrations/postgres"),
    };
    m.set_ignore_missing(true);
    m
}

/// Runs the SQLite migrations in one `BEGIN IMMEDIATE` transaction (each migration
/// a savepoint in it, as sqlx nests them), which does two things:
/// - it serialises runners: the write lock is taken before sqlx reads which
///   migrations are applied, so a second process (a `migrate` next to a server, two
///   starts at once) waits for the first, sees them applied and does nothing;
/// - a fresh file is one commit, not two per migration (each migration's own, then
///   sqlx's update of its `execution_time`).
///
/// On an error nothing is applied: the transaction rolls back.
async fn migrate_sqlite(
    m: &Migrator,
    conn: &mut sqlx::SqliteConnection,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    m.run_direct(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// A pooled read connection of either back-end.
enum Reader {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

#[async_trait::async_trait]
impl Exec for Reader {
    fn is_sqlite(&self) -> bool {
        matches!(self, Reader::Sqlite(_))
    }

    async fn execute(&mut self, sql: &sql::Sql, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        match self {
            Reader::Sqlite(c) => Sqlx(&mut **c).execute(sql, args).await,
            Reader::Postgres(c) => Sqlx(&mut **c).execute(sql, args).await,
        }
    }

    async fn fetch(&mut self, sql: &sql::Sql, args: &[Arg<'_>]) -> Result<Vec<Cols>, StoreError> {
        match self {
            Reader::Sqlite(c) => Sqlx(&mut **c).fetch(sql, args).await,
            Reader::Postgres(c) => Sqlx(&mut **c).fetch(sql, args).await,
        }
    }

    async fn raw(&mut self, text: &str) -> Result<u64, StoreError> {
        match self {
            Reader::Sqlite(c) => Sqlx(&mut **c).raw(text).await,
            Reader::Postgres(c) => Sqlx(&mut **c).raw(text).await,
        }
    }
}

impl SqlStore {
    /// A connection to read on (never the SQLite writer's).
    async fn reader(&self) -> Result<Reader, StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => p.acquire().await.map(Reader::Sqlite),
            Pool::Postgres(p) => p.acquire().await.map(Reader::Postgres),
        }
        .map_err(db_err)
    }

    /// Makes one write: on SQLite through the writer (with the next batch), on
    /// PostgreSQL on a pooled connection, in a transaction when it has several
    /// statements.
    async fn write(&self, op: Op) -> Result<Out, StoreError> {
        match (&self.writer, &self.pool) {
            (Some(writer), _) => writer.write(op).await,
            (None, Pool::Postgres(pool)) if op.atomic() => {
                let mut tx = pool.begin().await.map_err(db_err)?;
                let out = ops::apply(&mut Sqlx(&mut *tx), &op, true).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(out)
            }
            (None, Pool::Postgres(pool)) => {
                let mut conn = pool.acquire().await.map_err(db_err)?;
                ops::apply(&mut Sqlx(&mut *conn), &op, true).await
            }
            (None, Pool::Sqlite(_)) => Err(StoreError::Unavailable(
                "internal: a SQLite store without its writer".into(),
            )),
        }
    }

    /// Applies pending migrations. Safe to call on every start and from several
    /// processes at once: on PostgreSQL sqlx serialises runners with an advisory lock,
    /// on SQLite the database's write lock does (on a connection of its own, beside
    /// the writer, for as long as it takes).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let m = migrator(&self.pool);
        let ran = match (&self.pool, &self.sqlite_options) {
            (Pool::Sqlite(_), Some(options)) => {
                let mut conn = sqlx::SqliteConnection::connect_with(options)
                    .await
                    .map_err(db_err)?;
                let ran = migrate_sqlite(&m, &mut conn).await;
                let _ = conn.close().await;
                ran
            }
            (Pool::Postgres(p), _) => m.run(p).await,
            (Pool::Sqlite(p), None) => m.run(p).await,
        };
        ran.map_err(|e| StoreError::Unavailable(Detail::caused_by("migration failed", e)))
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// The reading pool, for backend-specific SQL (tests, tooling).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `sql` (one or more statements, no parameters) as a write and returns the
    /// rows it changed. Meant for tests and maintenance, never for request paths.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, StoreError> {
        self.write(Op::Raw(sql.to_owned())).await?.count()
    }

    /// Closes every pooled connection, waiting for checked-out ones to come back.
    /// Later reads fail with [`StoreError::Unavailable`]; the SQLite writer ends with
    /// the last handle.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

/// Unix milliseconds, the one timestamp representation in both schemas.
pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    // `OffsetDateTime` spans ±9999 years, about ±3·10¹⁴ ms, well inside i64; the
    // saturation only exists to avoid a cast.
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// The inverse of [`to_ms`]; a value outside `OffsetDateTime`'s range is corrupt data.
pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|e| {
        StoreError::Corrupt(Detail::caused_by(
            format!("timestamp {ms} ms out of range"),
            e,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_and_floor() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.678_9 UTC);
        assert_eq!(to_ms(t), 1_767_323_045_678);
        assert_eq!(
            from_ms(to_ms(t)).unwrap(),
            time::macros::datetime!(2026-01-02 03:04:05.678 UTC)
        );
        let before_epoch = time::macros::datetime!(1969-12-31 23:59:59.999_5 UTC);
        assert_eq!(to_ms(before_epoch), -1);
    }

    #[test]
    fn refused_schemes_are_named_without_the_rest_of_the_url() {
        assert_eq!(describe_scheme("mysql://u:secret@h/db"), "\"mysql\"");
        assert_eq!(describe_scheme("u:secret@h/db"), "\"u\"");
        assert_eq!(describe_scheme("nothing"), "a value without a URL scheme");
        assert_eq!(
            describe_scheme("a b:secret"),
            "a value without a URL scheme"
        );
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused_with_a_hint_naming_database_url() {
        let err = connect("mysql://root:hunter2@localhost/db")
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("DATABASE_URL"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}
