//! The one seam between the store's logic (`ops.rs`) and a database connection:
//! [`Exec`] runs a catalogue statement ([`Sql`]) with [`Arg`]s and returns rows of
//! [`Value`]s. Three connections implement it — a PostgreSQL connection (sqlx), a
//! pooled SQLite read connection (sqlx), and the SQLite writer's own connection
//! (rusqlite) — so every operation is written, bound and decoded once.
//!
//! What it deliberately is not: an ORM or a query builder. Values are the three
//! kinds the schema uses (64-bit integers, text, NULL); rows come back positional.

use async_trait::async_trait;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::sql::Sql;
use crate::core::error::Detail;
use crate::core::ports::StoreError;

/// One bound parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    /// A list of ids: a JSON array on SQLite (read with `json_each`), a `text[]` on
    /// PostgreSQL.
    List(&'a [String]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a [String]> for Arg<'a> {
    fn from(v: &'a [String]) -> Self {
        Arg::List(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref())
    }
}

/// `args![a, b, …]`: the parameters `$1`, `$2`, … of a statement.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::store::exec::Arg::from($a)),*] };
}
pub(crate) use args;

/// One column of a result row.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum Value {
    #[default]
    Null,
    Int(i64),
    Text(String),
}

/// A result row, read left to right.
pub(crate) struct Cols(std::vec::IntoIter<Value>);

impl Cols {
    pub(crate) fn new(row: Vec<Value>) -> Cols {
        Cols(row.into_iter())
    }

    fn next(&mut self) -> Value {
        self.0.next().unwrap_or_default()
    }

    pub(crate) fn opt_int(&mut self) -> Result<Option<i64>, StoreError> {
        match self.next() {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(v)),
            Value::Text(t) => Err(StoreError::Corrupt(
                format!("{t:?} where a number belongs").into(),
            )),
        }
    }

    pub(crate) fn int(&mut self) -> Result<i64, StoreError> {
        self.opt_int()?
            .ok_or_else(|| StoreError::Corrupt("NULL where a number belongs".into()))
    }

    pub(crate) fn opt_text(&mut self) -> Result<Option<String>, StoreError> {
        match self.next() {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t)),
            Value::Int(v) => Err(StoreError::Corrupt(
                format!("{v} where text belongs").into(),
            )),
        }
    }

    /// The first column, if it is text, without reading the row.
    pub(crate) fn first_text(&self) -> Option<String> {
        match self.0.as_slice().first() {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }

    pub(crate) fn text(&mut self) -> Result<String, StoreError> {
        self.opt_text()?
            .ok_or_else(|| StoreError::Corrupt("NULL where text belongs".into()))
    }
}

/// Runs catalogue statements on one connection (inside a transaction or not: the
/// caller decides).
#[async_trait]
pub(crate) trait Exec: Send {
    /// `true` for SQLite (the statements that differ per back-end pick by it).
    fn is_sqlite(&self) -> bool;
    /// Runs a statement that returns no rows; how many rows it changed.
    async fn execute(&mut self, sql: &Sql, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    /// Runs a statement and returns its rows.
    async fn fetch(&mut self, sql: &Sql, args: &[Arg<'_>]) -> Result<Vec<Cols>, StoreError>;
    /// Runs statements without parameters (tests, maintenance); rows changed.
    async fn raw(&mut self, text: &str) -> Result<u64, StoreError>;
}

/// Maps a driver error to [`StoreError::Unavailable`]. The drivers' messages name the
/// failing operation and the database's own message, never the connection URL.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Detail::from_error(e))
}

pub(crate) fn lite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(Detail::from_error(e))
}

// ---------------------------------------------------------------------------------
// sqlx: PostgreSQL, and SQLite's read connections
// ---------------------------------------------------------------------------------

/// A sqlx connection of either back-end. Written once for both by `sqlx_exec!`:
/// only the types differ.
pub(crate) struct Sqlx<'c, C>(pub(crate) &'c mut C);

macro_rules! sqlx_exec {
    ($conn:ty, $db:ty, $sqlite:tt) => {
        #[async_trait]
        impl Exec for Sqlx<'_, $conn> {
            fn is_sqlite(&self) -> bool {
                $sqlite
            }

            async fn execute(&mut self, sql: &Sql, args: &[Arg<'_>]) -> Result<u64, StoreError> {
                let json = list_as_json(args);
                let q = bound!($db, sql, args, json, $sqlite);
                q.execute(&mut *self.0)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(db_err)
            }

            async fn fetch(
                &mut self,
                sql: &Sql,
                args: &[Arg<'_>],
            ) -> Result<Vec<Cols>, StoreError> {
                let json = list_as_json(args);
                let q = bound!($db, sql, args, json, $sqlite);
                let rows = q.fetch_all(&mut *self.0).await.map_err(db_err)?;
                rows.iter()
                    .map(|row| {
                        (0..row.columns().len())
                            .map(|i| sqlx_value(row, i))
                            .collect::<Result<Vec<_>, _>>()
                            .map(Cols::new)
                    })
                    .collect()
            }

            async fn raw(&mut self, text: &str) -> Result<u64, StoreError> {
                // Several statements, no parameters: the simple query protocol.
                sqlx::Executor::execute(&mut *self.0, text)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(db_err)
            }
        }
    };
}

/// The statement with its arguments bound.
macro_rules! bound {
    ($db:ty, $sql:expr, $args:expr, $json:expr, $sqlite:tt) => {{
        let mut q = sqlx::query::<$db>($sql.text());
        for a in $args {
            q = match *a {
                Arg::Int(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::List(l) => bind_list!(q, l, $json, $sqlite),
            };
        }
        q
    }};
}

/// SQLite reads a list as JSON; PostgreSQL binds the array itself.
macro_rules! bind_list {
    ($q:expr, $l:expr, $json:expr, true) => {{
        let _ = $l;
        $q.bind($json.clone())
    }};
    ($q:expr, $l:expr, $json:expr, false) => {{
        let _ = &$json;
        $q.bind($l)
    }};
}

/// The JSON form of the (at most one) list argument.
fn list_as_json(args: &[Arg<'_>]) -> String {
    args.iter()
        .find_map(|a| match a {
            // A JSON array of strings cannot fail to serialise.
            Arg::List(l) => Some(serde_json::to_string(l).unwrap_or_else(|_| "[]".into())),
            _ => None,
        })
        .unwrap_or_default()
}

sqlx_exec!(sqlx::PgConnection, sqlx::Postgres, false);
sqlx_exec!(sqlx::SqliteConnection, sqlx::Sqlite, true);

/// One column as a [`Value`]: integers of any width (and PostgreSQL's booleans) as
/// `Int`, text as `Text`.
fn sqlx_value<R>(row: &R, i: usize) -> Result<Value, StoreError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let raw = row.try_get_raw(i).map_err(db_err)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().name().to_ascii_uppercase();
    let value = match kind.as_str() {
        "INT8" | "BIGINT" | "INTEGER" | "INT" => {
            Value::Int(row.try_get::<i64, _>(i).map_err(db_err)?)
        }
        "INT4" | "INT2" => Value::Int(i64::from(row.try_get::<i32, _>(i).map_err(db_err)?)),
        "BOOL" | "BOOLEAN" => Value::Int(i64::from(row.try_get::<bool, _>(i).map_err(db_err)?)),
        _ => Value::Text(row.try_get::<String, _>(i).map_err(|e| {
            let column = row.columns().get(i).map(|c| c.name()).unwrap_or("?");
            StoreError::Corrupt(Detail::caused_by(
                format!("column {column} of type {kind}"),
                e,
            ))
        })?),
    };
    Ok(value)
}

// ---------------------------------------------------------------------------------
// rusqlite: the SQLite writer's connection
// ---------------------------------------------------------------------------------

/// The writer's connection (`writer.rs`). Every call completes at once: nothing here
/// awaits, which is what lets the writer thread drive it without a runtime.
pub(crate) struct Lite<'c>(pub(crate) &'c mut rusqlite::Connection);

impl Lite<'_> {
    fn prepare(
        &self,
        sql: &Sql,
        args: &[Arg<'_>],
    ) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        let mut st = self.0.prepare_cached(sql.sqlite())?;
        for (i, a) in args.iter().enumerate() {
            match *a {
                Arg::Int(v) => st.raw_bind_parameter(i + 1, v)?,
                Arg::Text(v) => st.raw_bind_parameter(i + 1, v)?,
                Arg::List(l) => st.raw_bind_parameter(
                    i + 1,
                    serde_json::to_string(l).unwrap_or_else(|_| "[]".into()),
                )?,
            }
        }
        Ok(st)
    }
}

#[async_trait]
impl Exec for Lite<'_> {
    fn is_sqlite(&self) -> bool {
        true
    }

    async fn execute(&mut self, sql: &Sql, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let mut st = self.prepare(sql, args).map_err(lite_err)?;
        let changed = st.raw_execute().map_err(lite_err)?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    async fn fetch(&mut self, sql: &Sql, args: &[Arg<'_>]) -> Result<Vec<Cols>, StoreError> {
        let mut st = self.prepare(sql, args).map_err(lite_err)?;
        let width = st.column_count();
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(lite_err)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                use rusqlite::types::ValueRef as V;
                values.push(match row.get_ref(i).map_err(lite_err)? {
                    V::Null => Value::Null,
                    V::Integer(v) => Value::Int(v),
                    V::Real(v) => Value::Text(v.to_string()),
                    V::Text(t) | V::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                });
            }
            out.push(Cols::new(values));
        }
        Ok(out)
    }

    async fn raw(&mut self, text: &str) -> Result<u64, StoreError> {
        let before = self.0.total_changes();
        self.0.execute_batch(text).map_err(lite_err)?;
        Ok(self.0.total_changes().saturating_sub(before))
    }
}
