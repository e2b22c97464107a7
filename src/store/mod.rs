//! The [`Store`](crate::core::ports::Store) implementation: one [`SqlStore`] over
//! SQLite (the embedded default) or PostgreSQL (shared by replicas), picked by
//! `DATABASE_URL` in [`connect`].
//!
//! # Layout
//!
//! - `mod.rs` (this file): connecting, migrations, the backend handle, and the helpers
//!   every query shares (error mapping, millisecond timestamps, the `on_pool!` macro).
//! - `batch.rs`: group commit for SQLite (`commit` and `first_sighting` batched into
//!   one transaction by a single writer task, through rusqlite on a connection of its
//!   own), and the background WAL checkpoints.
//! - `chat.rs`: `impl Store for SqlStore` — conversations, transcripts, Slack event
//!   sightings, and the outbox fan-out of `commit`.
//! - `webhooks.rs`: endpoints, subscriptions and the delivery side of the outbox.
//!
//! Both backends run the **same SQL text**: sqlx's SQLite driver binds `$N` by number
//! just as PostgreSQL does, and the schema (`migrations/{sqlite,postgres}`) keeps the
//! same tables, columns and types (`BIGINT` unix milliseconds for every timestamp,
//! `INTEGER` 0/1 for booleans). Method bodies are written once and expanded per
//! backend by `on_pool!`, so each expansion is an ordinary monomorphic sqlx call that
//! hits the per-connection prepared-statement cache.
//!
//! # Why SQLite gets a pool of one connection
//!
//! SQLite admits one writer at a time, so several connections only add `SQLITE_BUSY`
//! waits between our own writers. One connection that never closes also makes
//! `sqlite::memory:` (a database that lives exactly as long as its connection) work.
//! Beside it, a file database has two more: the group-commit writer's own (turns and
//! sightings, `batch.rs`) and the checkpointer's. A transaction on the pool's
//! connection that writes must write first: one that reads first cannot wait for the
//! writer's connection (`SQLITE_BUSY_SNAPSHOT`).
//! sqlx's before-use ping is off for SQLite: each ping is a round-trip to the
//! connection's worker thread and measured as a large part of a Slack event's CPU
//! cost, and a local connection cannot be dropped by a server. Reads queue behind
//! writes, which at a chat bridge's rate costs nothing measurable. The one rule this
//! imposes: code holding the connection (an open transaction, a `PoolConnection`) must
//! not call another store method, which would wait for that same connection until
//! the acquire timeout.
//!
//! PostgreSQL keeps a real pool (several replicas, real concurrency) including sqlx's
//! before-use ping, which recovers from connections the server dropped (restart,
//! fail-over) instead of failing the next turn.
//!
//! What this module deliberately does not do: compile-time checked queries (there is
//! no database at build time), schema work per call, or any webhook delivery logic
//! (that belongs to `webhook::*`; `commit` only fills the outbox).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use time::OffsetDateTime;

use crate::core::ports::StoreError;

mod batch;
mod chat;
mod feedback;
mod webhooks;

/// How long a SQLite statement waits for another process's lock (a second
/// `agent-bridge migrate`, an operator's `sqlite3` shell) before giving up.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `wal_autocheckpoint` of the connections that write, in pages (4 KiB): a fallback
/// only (the checkpointer in `batch.rs` runs every 200 ms).
pub(crate) const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_000;
/// How long a caller waits for the pooled connection before the store reports itself
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Expands `$body` once per backend with `$pool` bound to the concrete pool, so each
/// method is written once and still compiles to plain, monomorphic sqlx calls.
/// `$body` must evaluate to the same type in both arms.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// The connection pool of one backend. Public so tests and tooling can run
/// backend-specific SQL; the application only needs [`SqlStore`]'s methods.
#[derive(Clone)]
pub enum Pool {
    /// Exactly one connection (see the module docs).
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The store: a cheap-to-clone handle over a connection pool (clones share the pool).
#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    /// SQLite only: the group-commit writer that `commit` and `first_sighting` go
    /// through (see `batch`). `None` for PostgreSQL, whose pool already writes in
    /// parallel, and for the writer's own fallback handle.
    batcher: Option<std::sync::Arc<batch::Batcher>>,
}

impl SqlStore {
    /// Tells the SQLite writer to stop trusting "no endpoint is enabled" (see
    /// `batch::NoEndpoints`); a no-op on PostgreSQL, which always asks.
    fn endpoints_changed(&self) {
        if let Some(batcher) = &self.batcher {
            batcher.endpoints_changed();
        }
    }
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
///   `synchronous=NORMAL`, WAL checkpoints on a second connection beside the writer,
///   statement journals in memory, a 5 s busy timeout and foreign keys on.
/// - `sqlite::memory:`: a private in-memory database that lives as long as the store.
/// - `postgres://…` or `postgresql://…`: a pool; one connection is opened here so that
///   a wrong host, password or database name fails now, with the server's reason.
///
/// Errors never contain the URL, so they are safe to log even when it holds a password.
/// Migrations are not run here; call [`SqlStore::migrate`].
pub async fn connect(url: &str) -> Result<SqlStore, StoreError> {
    let mut checkpoints = None;
    let pool = if url.starts_with("sqlite:") {
        let (pool, options) = connect_sqlite(url).await?;
        checkpoints = options;
        Pool::Sqlite(pool)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Pool::Postgres(connect_postgres(url).await?)
    } else {
        return Err(StoreError::Unavailable(format!(
            "DATABASE_URL must start with sqlite:, postgres:// or postgresql:// \
             (e.g. sqlite://agent-bridge.db), not {}",
            describe_scheme(url)
        )));
    };
    let batcher = match &pool {
        Pool::Sqlite(sqlite) => {
            if checkpoints.is_some() {
                // A file database: the writer gets a connection of its own beside it.
                batch::shorten_busy_waits(sqlite).await?;
            }
            Some(std::sync::Arc::new(batch::Batcher::start(
                sqlite.clone(),
                checkpoints,
            )))
        }
        Pool::Postgres(_) => None,
    };
    Ok(SqlStore { pool, batcher })
}

/// The pool, and for a file database the options of the checkpointing connection.
async fn connect_sqlite(
    url: &str,
) -> Result<(SqlitePool, Option<SqliteConnectOptions>), StoreError> {
    let mut options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("DATABASE_URL is not a SQLite URL: {e}")))?
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    let mut checkpoints = None;
    if !is_sqlite_memory(url) {
        options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        checkpoints = Some(options.clone());
        // Checkpoints run beside the writer, on their own connection (see
        // `batch::checkpointer`); the writer only checkpoints itself past ~64 MiB
        // of WAL, should that connection ever fall behind or fail.
        options = options.pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
    }
    // Statement journals (multi-row inserts keep one for a partial rollback) stay in
    // memory instead of going through a temporary file.
    options = options.pragma("temp_store", "memory");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot open SQLite database: {e}")))?;
    Ok((pool, checkpoints))
}

fn is_sqlite_memory(url: &str) -> bool {
    url == "sqlite::memory:" || url.starts_with("sqlite://:memory:") || url.contains("mode=memory")
}

async fn connect_postgres(url: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        StoreError::Unavailable(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))
    })?;
    // One connection made directly first: the pool would retry until its acquire
    // timeout and then report only "timed out", hiding the cause an operator needs
    // (refused, unknown host, authentication failed, no such database).
    let probe = options
        .connect()
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
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

impl SqlStore {
    /// Applies pending migrations. Safe to call on every start and from several
    /// processes at once: on PostgreSQL sqlx serialises runners with an advisory lock,
    /// on SQLite the database's write lock does.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let m = migrator(&self.pool);
        on_pool!(self, |p| m.run(p).await)
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// The underlying pool, for backend-specific SQL (tests, tooling).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `sql` (one or more statements, no parameters) and returns the rows it
    /// changed. Meant for tests and maintenance, never for request paths.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, StoreError> {
        let changed = on_pool!(self, |p| sqlx::raw_sql(sql)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        // It may have added endpoints.
        self.endpoints_changed();
        Ok(changed)
    }

    /// Closes every pooled connection, waiting for checked-out ones to come back
    /// (closing SQLite's checkpoints its WAL). Later calls fail with
    /// [`StoreError::Unavailable`].
    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }
}

/// Maps a driver error to [`StoreError::Unavailable`]. sqlx's messages name the failing
/// operation and the database's own message, never the connection URL.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
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
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms} ms out of range: {e}")))
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
