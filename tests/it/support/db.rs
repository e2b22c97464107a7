//! Databases for tests: a fresh SQLite file in a temporary directory, and — when
//! `TEST_DATABASE_URL` names a PostgreSQL database — a fresh schema in it, so every
//! test gets an empty store without creating databases (which needs more privileges).
//!
//! ```ignore
//! let (_dir, url) = db::sqlite_file_url().await;
//! let Some(pg) = db::PgSchema::create().await else { return };
//! // ... use pg.url ...
//! pg.remove().await;
//! ```

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The variable that opts the PostgreSQL store tests in (`.ci/run` sets it).
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// A `sqlite://` URL of a not-yet-existing file; the file lives as long as the
/// returned directory.
pub async fn sqlite_file_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let url = format!("sqlite://{}", dir.path().join("bridge.db").display());
    (dir, url)
}

/// A fresh, empty schema in the `TEST_DATABASE_URL` database, or `None` (after saying
/// so on stderr) when the variable is not set.
pub async fn postgres_url() -> Option<String> {
    PgSchema::create().await.map(|s| s.url)
}

/// One uniquely named schema, selected through `search_path` in [`PgSchema::url`], so
/// that everything the store creates (including `_sqlx_migrations`) lands inside it.
pub struct PgSchema {
    /// The base URL plus `options=-c search_path=<name>`.
    pub url: String,
    pub name: String,
    base: String,
}

impl PgSchema {
    pub async fn create() -> Option<PgSchema> {
        let Ok(base) = std::env::var(TEST_DATABASE_URL) else {
            eprintln!("skipped: {TEST_DATABASE_URL} not set, PostgreSQL store tests not run");
            return None;
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin_connection(&base).await;
        sqlx::raw_sql(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await
            .expect("create test schema");
        conn.close().await.ok();
        let sep = if base.contains('?') { '&' } else { '?' };
        // sqlx passes `options` to the server as the startup `options` parameter.
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Some(PgSchema { url, name, base })
    }

    /// Drops the schema and everything in it (best effort: a test that panicked before
    /// calling this leaves a schema behind, harmless in a test database).
    pub async fn remove(self) {
        let mut conn = admin_connection(&self.base).await;
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .execute(&mut conn)
            .await
            .expect("drop test schema");
        conn.close().await.ok();
    }
}

async fn admin_connection(base: &str) -> sqlx::PgConnection {
    PgConnectOptions::from_str(base)
        .expect("TEST_DATABASE_URL is a PostgreSQL URL")
        .connect()
        .await
        .expect("connect to TEST_DATABASE_URL")
}
