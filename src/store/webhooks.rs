//! `impl WebhookStore for SqlStore`: webhook endpoints and their subscriptions, and the
//! delivery side of the outbox — claiming due rows under a lease, recording attempts,
//! listing and retrying deliveries.
//!
//! Filling the outbox is not here: `Store::commit` (`chat.rs`) writes the event and its
//! delivery rows in the transaction of the change that caused them. Deciding *what* an
//! attempt's outcome means (retry schedule, 410, `Retry-After`) is not here either: that
//! is `webhook::worker`; this module only writes what it is told.
//!
//! # Claiming
//!
//! A row is due when it is `pending`, its `next_attempt_at` has passed, no live lease
//! (`locked_until` in the future) holds it, its endpoint is enabled, and — for an
//! `ordered` endpoint — no earlier row of the same `(endpoint, ordering_key)` is still
//! pending. Claiming writes `locked_until` (the lease) in the same statement that picks
//! the rows, so no two workers ever hold a row at once:
//!
//! - PostgreSQL: the candidates are picked in a CTE with `FOR UPDATE SKIP LOCKED`, so
//!   concurrent claimers (several replicas) skip each other's rows instead of waiting,
//!   and the `UPDATE ... RETURNING` that sets the lease runs on exactly the locked rows.
//!   A row another claimer leased after our snapshot is re-checked against the `WHERE`
//!   once its lock is released (READ COMMITTED's re-evaluation), and then excluded.
//! - SQLite: one `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING` is atomic,
//!   because SQLite runs one writer at a time (across processes too: the file lock).
//!
//! A worker that dies holding a lease simply lets it expire; the row is then due again
//! (at least once). Results and renewals present the lease they were given, so a
//! worker whose lease expired and whose row was re-claimed cannot overwrite the new
//! holder's state.
//!
//! The two claim statements differ only in those locking details, in how the "skip
//! these endpoints" list is passed (`json_each` vs. a `text[]`) and in SQLite's
//! `INDEXED BY` (the index comes from migration 0004); every other statement is shared
//! text, expanded per backend by `on_pool!`.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{db_err, from_ms, on_pool, to_ms, Pool, SqlStore};
use crate::core::ports::{
    AttemptRecord, ClaimRequest, ClaimedDelivery, DeliveryRecord, DeliveryResult, DeliveryStatus,
    StoreError, WebhookEndpoint, WebhookStore,
};

macro_rules! endpoint_columns {
    () => {
        "id, url, description, token, ordered, secret, previous_secret, \
         previous_secret_expires_at, enabled, disabled_reason, created_at"
    };
}

const SELECT_ENDPOINT: &str = concat!(
    "SELECT ",
    endpoint_columns!(),
    " FROM webhook_endpoints WHERE id = $1"
);

const SELECT_ENDPOINTS: &str = concat!(
    "SELECT ",
    endpoint_columns!(),
    " FROM webhook_endpoints ORDER BY created_at, id"
);

const INSERT_ENDPOINT: &str = "\
    INSERT INTO webhook_endpoints \
        (id, url, description, token, ordered, secret, previous_secret, \
         previous_secret_expires_at, enabled, disabled_reason, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

const INSERT_SUBSCRIPTION: &str =
    "INSERT INTO webhook_subscriptions (endpoint_id, event_type) VALUES ($1, $2)";

const DELETE_SUBSCRIPTIONS: &str = "DELETE FROM webhook_subscriptions WHERE endpoint_id = $1";

const SELECT_SUBSCRIPTIONS: &str = "\
    SELECT event_type FROM webhook_subscriptions WHERE endpoint_id = $1 ORDER BY event_type";

const SELECT_ALL_SUBSCRIPTIONS: &str = "\
    SELECT endpoint_id, event_type FROM webhook_subscriptions ORDER BY endpoint_id, event_type";

const ENDPOINT_EXISTS: &str = "SELECT COUNT(*) FROM webhook_endpoints WHERE id = $1";

/// Subscriptions, deliveries and (through deliveries) attempts go with it:
/// `ON DELETE CASCADE` in the schema.
/// `WEBHOOK_RETENTION_DAYS`: finished deliveries, their attempts, then events no
/// delivery refers to any more. Attempts first: nothing relies on `ON DELETE CASCADE`
/// (SQLite enforces it only with `foreign_keys` on).
const PURGE_ATTEMPTS: &str = "\
    DELETE FROM webhook_attempts WHERE delivery_id IN (\
        SELECT id FROM webhook_deliveries \
        WHERE status IN ('delivered', 'failed') AND updated_at < $1)";
const PURGE_DELIVERIES: &str = "\
    DELETE FROM webhook_deliveries \
    WHERE status IN ('delivered', 'failed') AND updated_at < $1";
const PURGE_EVENTS: &str = "\
    DELETE FROM webhook_events \
    WHERE created_at < $1 \
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)";

const DELETE_ENDPOINT: &str = "DELETE FROM webhook_endpoints WHERE id = $1";

/// In an `UPDATE`, every right-hand side sees the row as it was, so the old secret
/// moves to `previous_secret` while the new one replaces it.
const ROTATE_SECRET: &str = "\
    UPDATE webhook_endpoints \
    SET previous_secret = secret, previous_secret_expires_at = $3, secret = $2 \
    WHERE id = $1";

/// The previous secret, still signing, joins the older ones before it is replaced;
/// expired older secrets go.
const KEEP_PREVIOUS_SECRET: &str = "\
    INSERT INTO webhook_older_secrets (endpoint_id, secret, expires_at) \
    SELECT id, previous_secret, previous_secret_expires_at FROM webhook_endpoints \
    WHERE id = $1 AND previous_secret IS NOT NULL AND previous_secret_expires_at > $2";
const DROP_EXPIRED_SECRETS: &str =
    "DELETE FROM webhook_older_secrets WHERE endpoint_id = $1 AND expires_at <= $2";
const SELECT_OLDER_SECRETS: &str = "\
    SELECT secret, expires_at FROM webhook_older_secrets \
    WHERE endpoint_id = $1 AND expires_at > $2 ORDER BY expires_at DESC";
const SELECT_ALL_OLDER_SECRETS: &str = "\
    SELECT endpoint_id, secret, expires_at FROM webhook_older_secrets \
    WHERE expires_at > $1 ORDER BY expires_at DESC";
/// Compare-and-set of one stored secret value, in each place it can be.
const REPLACE_TOKEN: &str = "UPDATE webhook_endpoints SET token = $3 WHERE id = $1 AND token = $2";
const REPLACE_SECRET: &str =
    "UPDATE webhook_endpoints SET secret = $3 WHERE id = $1 AND secret = $2";
const REPLACE_PREVIOUS_SECRET: &str = "\
    UPDATE webhook_endpoints SET previous_secret = $3 WHERE id = $1 AND previous_secret = $2";
const REPLACE_OLDER_SECRET: &str =
    "UPDATE webhook_older_secrets SET secret = $3 WHERE endpoint_id = $1 AND secret = $2";
const DELETE_OLDER_SECRETS: &str = "DELETE FROM webhook_older_secrets WHERE endpoint_id = $1";

const SET_ENABLED: &str =
    "UPDATE webhook_endpoints SET enabled = $2, disabled_reason = $3 WHERE id = $1";

/// The due-row predicate shared by both claim statements (`d` is the candidate row,
/// `$1` now; `skipped` is the backend's "id is in the `$4` skip list" test).
///
/// It is shaped for the partial index `webhook_deliveries_pending_due (endpoint_id,
/// next_attempt_at) WHERE status = 'pending'`: the candidates are looked up endpoint
/// by endpoint, only for endpoints that are enabled and not skipped. So a large
/// backlog of a skipped (saturated, e.g. hanging) endpoint is never scanned — with a
/// single `(status, next_attempt_at)` range every claim would wade through it. There
/// is deliberately no `ORDER BY` across endpoints: within one endpoint the index hands
/// rows out oldest first, and the worker skips an endpoint once it holds a window of
/// its rows, so no endpoint can monopolise the claims.
///
/// The ordered check reads only pending rows, through the partial index
/// `webhook_deliveries_pending_order`.
macro_rules! due_rows {
    ($skipped:literal) => {
        concat!(
            "d.status = 'pending' \
             AND d.endpoint_id IN ( \
                 SELECT e.id FROM webhook_endpoints e \
                 WHERE e.enabled = 1 AND NOT ",
            $skipped,
            ") \
             AND d.next_attempt_at <= $1 \
             AND (d.locked_until IS NULL OR d.locked_until <= $1) \
             AND (d.ordering_key IS NULL \
                  OR NOT EXISTS (SELECT 1 FROM webhook_endpoints o \
                                 WHERE o.id = d.endpoint_id AND o.ordered = 1) \
                  OR NOT EXISTS (SELECT 1 FROM webhook_deliveries p \
                                 WHERE p.endpoint_id = d.endpoint_id \
                                   AND p.ordering_key = d.ordering_key \
                                   AND p.status = 'pending' \
                                   AND p.id < d.id))"
        )
    };
}

/// `$1` now, `$2` the lease, `$3` the limit, `$4` a JSON array of endpoint ids to skip.
/// The body comes back with the row (a correlated subquery in `RETURNING`), so a claim
/// is one round-trip. `INDEXED BY` pins the plan described at [`due_rows`] (without
/// statistics SQLite would prefer `webhook_deliveries_due`), and turns a missing index
/// into an error instead of a silent slowdown.
const CLAIM_SQLITE: &str = concat!(
    "UPDATE webhook_deliveries SET locked_until = $2, updated_at = $1 \
     WHERE id IN ( \
         SELECT d.id FROM webhook_deliveries d INDEXED BY webhook_deliveries_pending_due \
         WHERE ",
    due_rows!("e.id IN (SELECT value FROM json_each($4))"),
    " LIMIT $3) \
     RETURNING id, event_id, endpoint_id, attempts, \
         (SELECT ev.body FROM webhook_events ev \
          WHERE ev.id = webhook_deliveries.event_id) AS body"
);

/// `$1` now, `$2` the lease, `$3` the limit, `$4` a `text[]` of endpoint ids to skip.
/// `SKIP LOCKED` makes concurrent claimers partition the due rows between them.
const CLAIM_POSTGRES: &str = concat!(
    "WITH due AS ( \
         SELECT d.id FROM webhook_deliveries d \
         WHERE ",
    due_rows!("(e.id = ANY($4))"),
    " LIMIT $3 \
         FOR UPDATE OF d SKIP LOCKED) \
     UPDATE webhook_deliveries w SET locked_until = $2, updated_at = $1 \
     FROM due WHERE w.id = due.id \
     RETURNING w.id, w.event_id, w.endpoint_id, w.attempts, \
         (SELECT ev.body FROM webhook_events ev WHERE ev.id = w.event_id) AS body"
);

const RENEW_LEASE: &str = "\
    UPDATE webhook_deliveries SET locked_until = $3 \
    WHERE id = $1 AND locked_until = $2 AND status = 'pending'";

const RELEASE_LEASE: &str =
    "UPDATE webhook_deliveries SET locked_until = NULL WHERE id = $1 AND locked_until = $2";

/// Only the lease holder may mark the row (see the module docs).
const MARK_DELIVERY: &str = "\
    UPDATE webhook_deliveries \
    SET status = $2, attempts = attempts + 1, next_attempt_at = $3, locked_until = NULL, \
        last_status_code = $4, last_error = $5, updated_at = $6 \
    WHERE id = $1 AND locked_until = $7";

/// The attempt happened whoever holds the row now, so it is always recorded — unless
/// the endpoint (and with it the delivery) was deleted meanwhile, which would break
/// the foreign key and with it the whole batch.
const INSERT_ATTEMPT: &str = "\
    INSERT INTO webhook_attempts \
        (delivery_id, attempted_at, status_code, response_body, duration_ms, error) \
    SELECT $1, $2, $3, $4, $5, $6 \
    WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1)";

const DISABLE_ENDPOINT: &str =
    "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $2 WHERE id = $1";

const SELECT_DELIVERIES: &str = "\
    SELECT d.id, d.event_id, ev.type AS event_type, d.status, d.attempts, d.next_attempt_at, \
           d.last_status_code, d.last_error, d.created_at, d.updated_at, \
           (SELECT a.duration_ms FROM webhook_attempts a WHERE a.delivery_id = d.id \
            ORDER BY a.id DESC LIMIT 1) AS last_duration_ms \
    FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id \
    WHERE d.endpoint_id = $1 ORDER BY d.id DESC LIMIT $2";

const SELECT_ATTEMPTS: &str = "\
    SELECT a.delivery_id, a.attempted_at, a.status_code, a.response_body, a.duration_ms, \
           a.error \
    FROM webhook_attempts a \
    WHERE a.delivery_id IN (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 \
                            ORDER BY id DESC LIMIT $2) \
    ORDER BY a.delivery_id, a.id";

/// The lease is left alone: a row in flight keeps its holder, whose result then wins.
const RETRY_DELIVERY: &str = "\
    UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, updated_at = $3 \
    WHERE id = $1 AND endpoint_id = $2";

const OUTBOX_BACKLOG: &str = "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'";

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: String,
    url: String,
    description: Option<String>,
    token: Option<String>,
    ordered: i32,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<i64>,
    enabled: i32,
    disabled_reason: Option<String>,
    created_at: i64,
}

impl EndpointRow {
    fn into_endpoint(
        self,
        events: Vec<String>,
        older: Vec<(String, i64)>,
    ) -> Result<WebhookEndpoint, StoreError> {
        let older_secrets = older
            .into_iter()
            .map(|(secret, until)| from_ms(until).map(|until| (secret, until)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WebhookEndpoint {
            id: self.id,
            url: self.url,
            description: self.description,
            token: self.token,
            ordered: self.ordered != 0,
            secret: self.secret,
            previous_secret: self.previous_secret,
            previous_secret_expires_at: self.previous_secret_expires_at.map(from_ms).transpose()?,
            older_secrets,
            enabled: self.enabled != 0,
            disabled_reason: self.disabled_reason,
            created_at: from_ms(self.created_at)?,
            events,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: i64,
    event_id: String,
    endpoint_id: String,
    attempts: i32,
    body: Option<String>,
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    event_id: String,
    event_type: String,
    status: String,
    attempts: i32,
    next_attempt_at: i64,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    last_duration_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: i64,
    attempted_at: i64,
    status_code: Option<i32>,
    response_body: Option<String>,
    duration_ms: i64,
    error: Option<String>,
}

impl TryFrom<AttemptRow> for AttemptRecord {
    type Error = StoreError;

    fn try_from(r: AttemptRow) -> Result<Self, StoreError> {
        Ok(AttemptRecord {
            attempted_at: from_ms(r.attempted_at)?,
            status_code: r.status_code.map(status_code).transpose()?,
            response_body: r.response_body,
            duration_ms: u64::try_from(r.duration_ms).unwrap_or(0),
            error: r.error,
        })
    }
}

fn status_code(code: i32) -> Result<u16, StoreError> {
    u16::try_from(code).map_err(|_| StoreError::Corrupt(format!("HTTP status {code} stored")))
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// Attempts never exceed the retry schedule's length, far below `i32::MAX`; the
/// saturation only avoids a cast.
fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqlStore {
    async fn subscriptions(&self, id: &str) -> Result<Vec<String>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query_scalar::<_, String>(SELECT_SUBSCRIPTIONS)
                .bind(id)
                .fetch_all(p)
                .await
        })
        .map_err(db_err)
    }
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn create_endpoint(&self, ep: &WebhookEndpoint) -> Result<(), StoreError> {
        on_pool!(self, |p| {
            async {
                let mut tx = p.begin().await?;
                sqlx::query(INSERT_ENDPOINT)
                    .bind(&ep.id)
                    .bind(&ep.url)
                    .bind(ep.description.as_deref())
                    .bind(ep.token.as_deref())
                    .bind(i32::from(ep.ordered))
                    .bind(&ep.secret)
                    .bind(ep.previous_secret.as_deref())
                    .bind(ep.previous_secret_expires_at.map(to_ms))
                    .bind(i32::from(ep.enabled))
                    .bind(ep.disabled_reason.as_deref())
                    .bind(to_ms(ep.created_at))
                    .execute(&mut *tx)
                    .await?;
                for event in &ep.events {
                    sqlx::query(INSERT_SUBSCRIPTION)
                        .bind(&ep.id)
                        .bind(event)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await
        })
        .map_err(db_err)?;
        self.endpoints_changed();
        Ok(())
    }

    async fn endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        let row = on_pool!(self, |p| {
            sqlx::query_as::<_, EndpointRow>(SELECT_ENDPOINT)
                .bind(id)
                .fetch_optional(p)
                .await
        })
        .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let events = self.subscriptions(id).await?;
                let now = to_ms(OffsetDateTime::now_utc());
                let older = on_pool!(self, |p| {
                    sqlx::query_as::<_, (String, i64)>(SELECT_OLDER_SECRETS)
                        .bind(id)
                        .bind(now)
                        .fetch_all(p)
                        .await
                })
                .map_err(db_err)?;
                row.into_endpoint(events, older).map(Some)
            }
        }
    }

    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let (rows, subs, older) = on_pool!(self, |p| {
            async {
                let rows = sqlx::query_as::<_, EndpointRow>(SELECT_ENDPOINTS)
                    .fetch_all(p)
                    .await?;
                let subs = sqlx::query_as::<_, (String, String)>(SELECT_ALL_SUBSCRIPTIONS)
                    .fetch_all(p)
                    .await?;
                let older = sqlx::query_as::<_, (String, String, i64)>(SELECT_ALL_OLDER_SECRETS)
                    .bind(now)
                    .fetch_all(p)
                    .await?;
                Ok::<_, sqlx::Error>((rows, subs, older))
            }
            .await
        })
        .map_err(db_err)?;
        let mut older_by_endpoint: std::collections::HashMap<String, Vec<(String, i64)>> =
            Default::default();
        for (endpoint, secret, until) in older {
            older_by_endpoint
                .entry(endpoint)
                .or_default()
                .push((secret, until));
        }
        let mut by_endpoint: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (endpoint, event) in subs {
            by_endpoint.entry(endpoint).or_default().push(event);
        }
        rows.into_iter()
            .map(|row| {
                let events = by_endpoint.remove(&row.id).unwrap_or_default();
                let older = older_by_endpoint.remove(&row.id).unwrap_or_default();
                row.into_endpoint(events, older)
            })
            .collect()
    }

    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_pool!(self, |p| {
            async {
                // Not left to `ON DELETE CASCADE`: SQLite enforces it only with
                // `foreign_keys` on.
                sqlx::query(DELETE_OLDER_SECRETS)
                    .bind(id)
                    .execute(p)
                    .await?;
                sqlx::query(DELETE_ENDPOINT)
                    .bind(id)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            }
            .await
        })
        .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn set_subscriptions(&self, id: &str, events: &[String]) -> Result<bool, StoreError> {
        let changed = on_pool!(self, |p| {
            async {
                let mut tx = p.begin().await?;
                // A write first: on SQLite a transaction that reads first cannot wait
                // for the group-commit writer's connection (SQLITE_BUSY_SNAPSHOT).
                sqlx::query(DELETE_SUBSCRIPTIONS)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let exists: i64 = sqlx::query_scalar(ENDPOINT_EXISTS)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                if exists == 0 {
                    // Dropping `tx` rolls the delete back (there was nothing to delete).
                    return Ok(false);
                }
                for event in events {
                    sqlx::query(INSERT_SUBSCRIPTION)
                        .bind(id)
                        .bind(event)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await.map(|()| true)
            }
            .await
        })
        .map_err(db_err)?;
        self.endpoints_changed();
        Ok(changed)
    }

    async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        previous_expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let n = on_pool!(self, |p| {
            async {
                let mut tx = p.begin().await?;
                // A write first (see `set_subscriptions`).
                sqlx::query(DROP_EXPIRED_SECRETS)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(KEEP_PREVIOUS_SECRET)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let n = sqlx::query(ROTATE_SECRET)
                    .bind(id)
                    .bind(secret)
                    .bind(to_ms(previous_expires_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await.map(|()| n)
            }
            .await
        })
        .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn replace_stored_secret(
        &self,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<u64, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        on_pool!(self, |p| {
            async {
                let mut tx = p.begin().await?;
                // A write first (see `set_subscriptions`).
                sqlx::query(DROP_EXPIRED_SECRETS)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let mut n = 0;
                for statement in [
                    REPLACE_TOKEN,
                    REPLACE_SECRET,
                    REPLACE_PREVIOUS_SECRET,
                    REPLACE_OLDER_SECRET,
                ] {
                    n += sqlx::query(statement)
                        .bind(id)
                        .bind(old)
                        .bind(new)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await.map(|()| n)
            }
            .await
        })
        .map_err(db_err)
    }

    async fn set_endpoint_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(self, |p| {
            sqlx::query(SET_ENABLED)
                .bind(id)
                .bind(i32::from(enabled))
                .bind(reason)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_err)?;
        if enabled {
            self.endpoints_changed();
        }
        Ok(n > 0)
    }

    async fn claim_deliveries(
        &self,
        claim: &ClaimRequest,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let now = to_ms(claim.now);
        let lease = to_ms(claim.lease_until);
        let limit = i64::from(claim.limit);
        let rows = match &self.pool {
            Pool::Sqlite(p) => {
                // A JSON array of strings cannot fail to serialise.
                let skip = serde_json::to_string(&claim.skip_endpoints)
                    .unwrap_or_else(|_| "[]".to_owned());
                sqlx::query_as::<_, ClaimRow>(CLAIM_SQLITE)
                    .bind(now)
                    .bind(lease)
                    .bind(limit)
                    .bind(skip)
                    .fetch_all(p)
                    .await
            }
            Pool::Postgres(p) => {
                sqlx::query_as::<_, ClaimRow>(CLAIM_POSTGRES)
                    .bind(now)
                    .bind(lease)
                    .bind(limit)
                    .bind(&claim.skip_endpoints)
                    .fetch_all(p)
                    .await
            }
        }
        .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                Ok(ClaimedDelivery {
                    body: r.body.ok_or_else(|| {
                        StoreError::Corrupt(format!("delivery {} has no event body", r.id))
                    })?,
                    id: r.id,
                    event_id: r.event_id,
                    endpoint_id: r.endpoint_id,
                    attempts: count(r.attempts),
                    lease,
                })
            })
            .collect()
    }

    async fn renew_lease(&self, id: i64, lease: i64, until: i64) -> Result<bool, StoreError> {
        let n = on_pool!(self, |p| {
            sqlx::query(RENEW_LEASE)
                .bind(id)
                .bind(lease)
                .bind(until)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn release_deliveries(&self, held: &[(i64, i64)]) -> Result<(), StoreError> {
        if held.is_empty() {
            return Ok(());
        }
        on_pool!(self, |p| {
            async {
                let mut tx = p.begin().await?;
                for (id, lease) in held {
                    sqlx::query(RELEASE_LEASE)
                        .bind(id)
                        .bind(lease)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await
        })
        .map_err(db_err)
    }

    async fn record_results(&self, results: &[DeliveryResult]) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        let now = to_ms(OffsetDateTime::now_utc());
        on_pool!(self, |p| {
            async {
                // One transaction for the whole batch: at thousands of deliveries a
                // second, a commit per row would be the bottleneck (SQLite has a
                // single writer).
                let mut tx = p.begin().await?;
                for r in results {
                    let a = &r.attempt;
                    let code = a.status_code.map(i32::from);
                    sqlx::query(MARK_DELIVERY)
                        .bind(r.delivery_id)
                        .bind(r.status.as_str())
                        .bind(to_ms(r.next_attempt_at))
                        .bind(code)
                        .bind(a.error.as_deref())
                        .bind(now)
                        .bind(r.lease)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(INSERT_ATTEMPT)
                        .bind(r.delivery_id)
                        .bind(to_ms(a.attempted_at))
                        .bind(code)
                        .bind(a.response_body.as_deref())
                        .bind(as_i64(a.duration_ms))
                        .bind(a.error.as_deref())
                        .execute(&mut *tx)
                        .await?;
                    if let Some(reason) = &r.disable_endpoint {
                        sqlx::query(DISABLE_ENDPOINT)
                            .bind(&r.endpoint_id)
                            .bind(reason)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await
            }
            .await
        })
        .map_err(db_err)
    }

    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let limit = i64::from(limit);
        let (rows, attempts) = on_pool!(self, |p| {
            async {
                let rows = sqlx::query_as::<_, DeliveryRow>(SELECT_DELIVERIES)
                    .bind(endpoint_id)
                    .bind(limit)
                    .fetch_all(p)
                    .await?;
                let attempts = sqlx::query_as::<_, AttemptRow>(SELECT_ATTEMPTS)
                    .bind(endpoint_id)
                    .bind(limit)
                    .fetch_all(p)
                    .await?;
                Ok::<_, sqlx::Error>((rows, attempts))
            }
            .await
        })
        .map_err(db_err)?;
        let mut log: std::collections::HashMap<i64, Vec<AttemptRecord>> = Default::default();
        for a in attempts {
            let id = a.delivery_id;
            log.entry(id).or_default().push(AttemptRecord::try_from(a)?);
        }
        rows.into_iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    status: DeliveryStatus::parse(&r.status).ok_or_else(|| {
                        StoreError::Corrupt(format!("unknown delivery status {:?}", r.status))
                    })?,
                    attempt_log: log.remove(&r.id).unwrap_or_default(),
                    id: r.id,
                    event_id: r.event_id,
                    event_type: r.event_type,
                    attempts: count(r.attempts),
                    next_attempt_at: from_ms(r.next_attempt_at)?,
                    last_status_code: r.last_status_code.map(status_code).transpose()?,
                    last_error: r.last_error,
                    last_duration_ms: r.last_duration_ms.and_then(|d| u64::try_from(d).ok()),
                    created_at: from_ms(r.created_at)?,
                    updated_at: from_ms(r.updated_at)?,
                })
            })
            .collect()
    }

    async fn retry_delivery(
        &self,
        endpoint_id: &str,
        delivery_id: i64,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(self, |p| {
            sqlx::query(RETRY_DELIVERY)
                .bind(delivery_id)
                .bind(endpoint_id)
                .bind(to_ms(now))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 = on_pool!(self, |p| {
            sqlx::query_scalar(OUTBOX_BACKLOG).fetch_one(p).await
        })
        .map_err(db_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn purge_outbox(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let before = to_ms(before);
        on_pool!(self, |p| {
            async {
                let mut tx = p.begin().await?;
                sqlx::query(PURGE_ATTEMPTS)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                let deliveries = sqlx::query(PURGE_DELIVERIES)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(PURGE_EVENTS)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await.map(|()| deliveries)
            }
            .await
        })
        .map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use time::Duration;

    use super::*;
    use crate::core::events::{EventKind, OutboxEvent};
    use crate::core::ports::{Commit, Store};

    const T0: OffsetDateTime = datetime!(2026-06-01 10:00:00 UTC);

    async fn store() -> SqlStore {
        let s = super::super::connect("sqlite::memory:").await.unwrap();
        s.migrate().await.unwrap();
        s
    }

    fn endpoint(id: &str, ordered: bool, events: &[&str]) -> WebhookEndpoint {
        WebhookEndpoint {
            id: id.into(),
            url: format!("http://r.test/{id}"),
            description: None,
            token: None,
            ordered,
            secret: "whsec_AAAA".into(),
            previous_secret: None,
            previous_secret_expires_at: None,
            older_secrets: Vec::new(),
            enabled: true,
            disabled_reason: None,
            created_at: T0,
            events: events.iter().map(|e| e.to_string()).collect(),
        }
    }

    async fn emit(s: &SqlStore, key: &str, at: OffsetDateTime) -> String {
        let ev = OutboxEvent::new(
            EventKind::Conversation,
            Some(key.into()),
            &serde_json::json!({ "key": key }),
            at,
        );
        let id = ev.id.as_str().to_owned();
        s.commit(Commit {
            events: vec![ev],
            ..Commit::default()
        })
        .await
        .unwrap();
        id
    }

    fn claim(now: OffsetDateTime, skip: &[&str]) -> ClaimRequest {
        ClaimRequest {
            now,
            lease_until: now + Duration::seconds(20),
            limit: 100,
            skip_endpoints: skip.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn result(row: &ClaimedDelivery, status: DeliveryStatus, at: OffsetDateTime) -> DeliveryResult {
        DeliveryResult {
            delivery_id: row.id,
            endpoint_id: row.endpoint_id.clone(),
            lease: row.lease,
            status,
            next_attempt_at: at,
            attempt: AttemptRecord {
                attempted_at: at,
                status_code: Some(if status == DeliveryStatus::Delivered {
                    200
                } else {
                    500
                }),
                response_body: Some("ok".into()),
                duration_ms: 3,
                error: None,
            },
            disable_endpoint: None,
        }
    }

    #[tokio::test]
    async fn webhook_claims_lease_rows_and_give_them_back_when_the_lease_expires() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_a", false, &["*"]))
            .await
            .unwrap();
        let event = emit(&s, "k1", T0).await;

        let rows = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, event);
        assert_eq!(rows[0].attempts, 0);
        assert!(rows[0].body.contains("\"k1\""));
        // Leased: nobody else gets it, until the lease has passed.
        assert!(s
            .claim_deliveries(&claim(T0, &[]))
            .await
            .unwrap()
            .is_empty());
        let later = T0 + Duration::seconds(21);
        let again = s.claim_deliveries(&claim(later, &[])).await.unwrap();
        assert_eq!(again.len(), 1);
        // The first holder's result no longer counts: its lease is stale.
        s.record_results(&[result(&rows[0], DeliveryStatus::Delivered, later)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 1);
        s.record_results(&[result(&again[0], DeliveryStatus::Delivered, later)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 0);
        let log = s.deliveries("ep_a", 10).await.unwrap();
        assert_eq!(log[0].status, DeliveryStatus::Delivered);
        assert_eq!(log[0].attempts, 1);
        // Both attempts happened and are on record.
        assert_eq!(log[0].attempt_log.len(), 2);
    }

    #[tokio::test]
    async fn the_outbox_purge_removes_finished_deliveries_past_retention_and_keeps_the_rest() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_a", false, &["*"]))
            .await
            .unwrap();
        let delivered = emit(&s, "k1", T0).await;
        let failed = emit(&s, "k2", T0).await;
        let pending = emit(&s, "k3", T0).await;
        let rows = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        assert_eq!(rows.len(), 3);
        let row = |id: &str| rows.iter().find(|r| r.event_id == id).unwrap();
        let done_at = T0 + Duration::seconds(1);
        s.record_results(&[
            result(row(&delivered), DeliveryStatus::Delivered, done_at),
            result(row(&failed), DeliveryStatus::Failed, done_at),
            result(row(&pending), DeliveryStatus::Pending, done_at),
        ])
        .await
        .unwrap();

        // Nothing has ended before the cut-off yet.
        assert_eq!(s.purge_outbox(T0).await.unwrap(), 0);
        assert_eq!(s.deliveries("ep_a", 10).await.unwrap().len(), 3);

        // A row's end is stamped with the real clock; a cut-off just after it takes it.
        let purged = s
            .purge_outbox(OffsetDateTime::now_utc() + Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(purged, 2, "the delivered and the failed one");
        let left = s.deliveries("ep_a", 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].event_id, pending);
        assert_eq!(left[0].status, DeliveryStatus::Pending);
        assert_eq!(left[0].attempt_log.len(), 1, "its attempts stay");
        assert_eq!(s.outbox_backlog().await.unwrap(), 1);
        let events: i64 = on_pool!(&s, |p| {
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events")
                .fetch_one(p)
                .await
        })
        .unwrap();
        assert_eq!(events, 1, "only the pending delivery's event is kept");
        let attempts: i64 = on_pool!(&s, |p| {
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_attempts")
                .fetch_one(p)
                .await
        })
        .unwrap();
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn webhook_claims_keep_an_ordered_endpoints_key_in_order() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_o", true, &["conversation"]))
            .await
            .unwrap();
        let first = emit(&s, "conv-a", T0).await;
        let second = emit(&s, "conv-a", T0 + Duration::milliseconds(1)).await;
        let other = emit(&s, "conv-b", T0 + Duration::milliseconds(2)).await;
        let now = T0 + Duration::seconds(1);

        let rows = s.claim_deliveries(&claim(now, &[])).await.unwrap();
        let mut ids: Vec<_> = rows.iter().map(|r| r.event_id.clone()).collect();
        ids.sort();
        let mut expected = vec![first.clone(), other];
        expected.sort();
        assert_eq!(ids, expected, "conv-a's second event waits for its first");

        // A retry pending later still blocks the key.
        let a1 = rows.iter().find(|r| r.event_id == first).unwrap();
        let retry_at = now + Duration::seconds(5);
        s.record_results(&[result(a1, DeliveryStatus::Pending, retry_at)])
            .await
            .unwrap();
        assert!(s
            .claim_deliveries(&claim(now, &[]))
            .await
            .unwrap()
            .is_empty());

        let rows = s.claim_deliveries(&claim(retry_at, &[])).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, first);
        assert_eq!(rows[0].attempts, 1);
        s.record_results(&[result(&rows[0], DeliveryStatus::Delivered, retry_at)])
            .await
            .unwrap();
        let rows = s.claim_deliveries(&claim(retry_at, &[])).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, second);
    }

    #[tokio::test]
    async fn webhook_claims_skip_disabled_and_saturated_endpoints_and_future_rows() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_on", false, &["*"]))
            .await
            .unwrap();
        s.create_endpoint(&endpoint("ep_busy", false, &["*"]))
            .await
            .unwrap();
        s.create_endpoint(&endpoint("ep_off", false, &["*"]))
            .await
            .unwrap();
        emit(&s, "k", T0).await;
        s.set_endpoint_enabled("ep_off", false, Some("410"))
            .await
            .unwrap();

        // Not due before the event happened.
        assert!(s
            .claim_deliveries(&claim(T0 - Duration::seconds(1), &[]))
            .await
            .unwrap()
            .is_empty());
        let rows = s.claim_deliveries(&claim(T0, &["ep_busy"])).await.unwrap();
        let endpoints: Vec<_> = rows.iter().map(|r| r.endpoint_id.as_str()).collect();
        assert_eq!(endpoints, ["ep_on"]);

        // Re-enabled, its pending row goes out.
        s.set_endpoint_enabled("ep_off", true, None).await.unwrap();
        let rows = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        let mut endpoints: Vec<_> = rows.iter().map(|r| r.endpoint_id.as_str()).collect();
        endpoints.sort();
        assert_eq!(endpoints, ["ep_busy", "ep_off"]);
        assert_eq!(
            s.endpoint("ep_off").await.unwrap().unwrap().disabled_reason,
            None
        );
    }

    #[tokio::test]
    async fn webhook_leases_can_be_renewed_and_released_only_by_their_holder() {
        let s = store().await;
        s.create_endpoint(&endpoint("ep_a", false, &["*"]))
            .await
            .unwrap();
        emit(&s, "k", T0).await;
        let row = s.claim_deliveries(&claim(T0, &[])).await.unwrap().remove(0);
        assert!(!s
            .renew_lease(row.id, row.lease + 1, row.lease + 100)
            .await
            .unwrap());
        assert!(s
            .renew_lease(row.id, row.lease, row.lease + 100)
            .await
            .unwrap());
        // The old lease value no longer releases it.
        s.release_deliveries(&[(row.id, row.lease)]).await.unwrap();
        assert!(s
            .claim_deliveries(&claim(T0, &[]))
            .await
            .unwrap()
            .is_empty());
        s.release_deliveries(&[(row.id, row.lease + 100)])
            .await
            .unwrap();
        assert_eq!(s.claim_deliveries(&claim(T0, &[])).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn webhook_endpoints_round_trip_rotate_resubscribe_retry_and_delete() {
        let s = store().await;
        let mut ep = endpoint("ep_r", true, &["query", "conversation"]);
        ep.token = Some("tok".into());
        ep.description = Some("d".into());
        ep.events.sort();
        s.create_endpoint(&ep).await.unwrap();
        assert_eq!(s.endpoint("ep_r").await.unwrap().unwrap(), ep);
        assert_eq!(s.endpoints().await.unwrap(), vec![ep.clone()]);

        let until = T0 + Duration::hours(24);
        assert!(s.rotate_secret("ep_r", "whsec_BBBB", until).await.unwrap());
        let rotated = s.endpoint("ep_r").await.unwrap().unwrap();
        assert_eq!(rotated.secret, "whsec_BBBB");
        assert_eq!(rotated.previous_secret.as_deref(), Some("whsec_AAAA"));
        assert_eq!(rotated.previous_secret_expires_at, Some(until));

        assert!(s
            .set_subscriptions("ep_r", &["*".to_string()])
            .await
            .unwrap());
        assert_eq!(s.endpoint("ep_r").await.unwrap().unwrap().events, ["*"]);
        assert!(!s
            .set_subscriptions("ep_nope", &["*".to_string()])
            .await
            .unwrap());

        emit(&s, "k", T0).await;
        let row = s.claim_deliveries(&claim(T0, &[])).await.unwrap().remove(0);
        s.record_results(&[result(&row, DeliveryStatus::Failed, T0)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 0);
        assert!(!s.retry_delivery("ep_other", row.id, T0).await.unwrap());
        assert!(s.retry_delivery("ep_r", row.id, T0).await.unwrap());
        assert_eq!(s.outbox_backlog().await.unwrap(), 1);
        let again = s.claim_deliveries(&claim(T0, &[])).await.unwrap();
        assert_eq!(again[0].attempts, 1);

        assert!(s.delete_endpoint("ep_r").await.unwrap());
        assert!(!s.delete_endpoint("ep_r").await.unwrap());
        assert_eq!(s.endpoint("ep_r").await.unwrap(), None);
        // The in-flight result of a deleted endpoint is dropped without an error.
        s.record_results(&[result(&again[0], DeliveryStatus::Delivered, T0)])
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), 0);
    }
}
