//! The catalogue: every statement the store runs, each written once, for both
//! back-ends. "Where is the SQL for X?" — here.
//!
//! Statements are written with PostgreSQL's placeholders (`$1`, `$2`, …), which sqlx
//! takes on both back-ends. SQLite's C API (the writer's rusqlite connection) reads
//! `$1` as a *named* parameter numbered by first appearance, so [`Sql::sqlite`]
//! rewrites each `$N` to `?N` (SQLite's "parameter number N") once, on first use:
//! the one mechanical adaptation. Only the delivery claim differs per back-end in
//! substance (row locks, SQLite's `INDEXED BY`), so it is the one [`Dialects`] pair.
//!
//! Why not a query builder (sea-query): the statements are fixed text with no
//! optional clauses; a builder would add a dependency and a second language for the
//! same SQL, and hide the text a DBA wants to read. Binding is written once too, in
//! `ops.rs`, through the `Exec` seam (`exec.rs`).
//!
//! Schema conventions both back-ends keep (`migrations/{sqlite,postgres}`): the same
//! tables and columns, `BIGINT` unix milliseconds for every timestamp, `INTEGER` 0/1
//! for booleans.

use std::sync::OnceLock;

/// One statement, with its SQLite form made on first use.
pub(crate) struct Sql {
    text: &'static str,
    sqlite: OnceLock<String>,
}

impl Sql {
    pub(crate) const fn new(text: &'static str) -> Sql {
        Sql {
            text,
            sqlite: OnceLock::new(),
        }
    }

    /// With `$N` placeholders: PostgreSQL, and sqlx on either back-end.
    pub(crate) fn text(&self) -> &'static str {
        self.text
    }

    /// With `?N` placeholders, for SQLite's C API.
    pub(crate) fn sqlite(&self) -> &str {
        self.sqlite.get_or_init(|| numbered(self.text))
    }
}

/// A statement that differs per back-end in more than placeholders.
pub(crate) struct Dialects {
    pub(crate) sqlite: Sql,
    pub(crate) postgres: Sql,
}

/// `$N` → `?N`. The statements hold no `$` inside string literals.
fn numbered(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------------

pub(crate) static PING: Sql = Sql::new("SELECT 1");

pub(crate) static SELECT_CONVERSATION: Sql = Sql::new(
    "SELECT key, platform, workspace, channel, thread, user_id, agent_session, personality, \
            last_activity \
     FROM conversations WHERE key = $1",
);

pub(crate) static SELECT_CONVERSATIONS: Sql = Sql::new(
    "SELECT key, platform, workspace, channel, thread, user_id, agent_session, personality, \
            last_activity \
     FROM conversations ORDER BY last_activity DESC, key LIMIT $1",
);

/// A scan: looking up by session is an admin operation (see migration 0005).
pub(crate) static SELECT_CONVERSATIONS_BY_SESSION: Sql = Sql::new(
    "SELECT key, platform, workspace, channel, thread, user_id, agent_session, personality, \
            last_activity \
     FROM conversations WHERE agent_session = $1 ORDER BY last_activity DESC, key",
);

pub(crate) static SELECT_CONVERSATION_KEYS: Sql =
    Sql::new("SELECT key FROM conversations WHERE key > $1 ORDER BY key LIMIT $2");

pub(crate) static UPSERT_CONVERSATION: Sql = Sql::new(
    "INSERT INTO conversations \
         (key, platform, workspace, channel, thread, user_id, agent_session, personality, \
          last_activity) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (key) DO UPDATE SET \
         platform = excluded.platform, workspace = excluded.workspace, \
         channel = excluded.channel, thread = excluded.thread, user_id = excluded.user_id, \
         agent_session = excluded.agent_session, personality = excluded.personality, \
         last_activity = excluded.last_activity",
);

// ---------------------------------------------------------------------------------
// Transcripts
// ---------------------------------------------------------------------------------

pub(crate) static INSERT_TRANSCRIPT: Sql = Sql::new(
    "INSERT INTO transcripts \
         (session_id, role, content, created_at, platform, channel, thread, user_id, message_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
);

pub(crate) static SELECT_HISTORY: Sql = Sql::new(
    "SELECT id, session_id, role, content, created_at, platform, channel, thread, user_id, \
            message_id \
     FROM transcripts WHERE session_id = $1 AND created_at >= $2 ORDER BY created_at, id",
);

/// A page for a poller: the `(session_id, …)` index bounds the range, so an empty
/// poll is an index lookup.
pub(crate) static SELECT_HISTORY_PAGE: Sql = Sql::new(
    "SELECT id, session_id, role, content, created_at, platform, channel, thread, user_id, \
            message_id \
     FROM transcripts WHERE session_id = $1 AND created_at >= $2 \
       AND (created_at > $3 OR (created_at = $3 AND id > $4)) \
     ORDER BY created_at, id LIMIT $5",
);

/// Where the row a page continues after sits in the `(created_at, id)` order.
pub(crate) static SELECT_CURSOR: Sql = Sql::new("SELECT created_at FROM transcripts WHERE id = $1");

pub(crate) static PURGE_TRANSCRIPTS: Sql =
    Sql::new("DELETE FROM transcripts WHERE created_at < $1");

// ---------------------------------------------------------------------------------
// The outbox fan-out of a commit
// ---------------------------------------------------------------------------------

/// Whether any endpoint is enabled: SQLite's writer keeps the answer (see `writer`).
pub(crate) static ANY_ENABLED_ENDPOINT: Sql =
    Sql::new("SELECT COUNT(*) FROM webhook_endpoints WHERE enabled = 1");

/// The event row, only when an enabled endpoint subscribes to its type or to `*`
/// (nothing else reads it): without webhooks a turn writes no event at all.
pub(crate) static INSERT_EVENT: Sql = Sql::new(
    "INSERT INTO webhook_events (id, type, ordering_key, body, created_at) \
     SELECT $1, $2, $3, $4, $5 \
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints e \
                   JOIN webhook_subscriptions s ON s.endpoint_id = e.id \
                   WHERE e.enabled = 1 AND s.event_type IN ($2, '*'))",
);

/// One pending delivery per enabled endpoint subscribed to the event's type or to `*`,
/// run only after [`INSERT_EVENT`] stored the event (an endpoint registered between
/// the two statements, READ COMMITTED on PostgreSQL, then gets nothing rather than a
/// delivery without its event). `EXISTS` (rather than a join) yields each endpoint
/// once even when it subscribes to both. The first attempt is due when the event
/// happened.
pub(crate) static FAN_OUT_EVENT: Sql = Sql::new(
    "INSERT INTO webhook_deliveries \
         (event_id, endpoint_id, ordering_key, status, attempts, next_attempt_at, created_at, \
          updated_at) \
     SELECT $1, e.id, $3, 'pending', 0, $4, $4, $4 \
     FROM webhook_endpoints e \
     WHERE e.enabled = 1 \
       AND EXISTS (SELECT 1 FROM webhook_subscriptions s \
                   WHERE s.endpoint_id = e.id AND s.event_type IN ($2, '*')) \
     ORDER BY e.id",
);

// ---------------------------------------------------------------------------------
// Sightings and the turn queue
// ---------------------------------------------------------------------------------

/// Inserts a sighting, or revives one whose `expires_at` has passed; a live sighting
/// is left alone, so exactly one caller sees a changed row. The unique key decides
/// between concurrent callers on every backend: PostgreSQL re-checks the `WHERE`
/// against the row the winner committed, SQLite serialises writers.
pub(crate) static FIRST_SIGHTING: Sql = Sql::new(
    "INSERT INTO seen_events (key, expires_at) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
     WHERE seen_events.expires_at < $3",
);

pub(crate) static PURGE_SIGHTINGS: Sql = Sql::new("DELETE FROM seen_events WHERE expires_at < $1");

pub(crate) static SEEN: Sql =
    Sql::new("SELECT COUNT(*) FROM seen_events WHERE key = $1 AND expires_at >= $2");

pub(crate) static TURN_ENTER: Sql = Sql::new(
    "INSERT INTO turn_queue (conversation, received_at, expires_at) VALUES ($1, $2, $3) \
     RETURNING id",
);

pub(crate) static TURN_TOUCH: Sql = Sql::new("UPDATE turn_queue SET expires_at = $2 WHERE id = $1");

/// Counts live tickets of the conversation ahead of this one; expired ones (a dead
/// replica's) are ignored, and removed by the janitor's sweep.
pub(crate) static TURN_AHEAD: Sql = Sql::new(
    "SELECT COUNT(*) FROM turn_queue \
     WHERE conversation = $1 AND expires_at >= $2 \
       AND (received_at < $3 OR (received_at = $3 AND id < $4))",
);

pub(crate) static TURN_LEAVE: Sql = Sql::new("DELETE FROM turn_queue WHERE id = $1");

pub(crate) static PURGE_TURNS: Sql = Sql::new("DELETE FROM turn_queue WHERE expires_at < $1");

// ---------------------------------------------------------------------------------
// Webhook endpoints
// ---------------------------------------------------------------------------------

pub(crate) static SELECT_ENDPOINT: Sql = Sql::new(
    "SELECT id, url, description, token, ordered, secret, previous_secret, \
            previous_secret_expires_at, enabled, disabled_reason, created_at \
     FROM webhook_endpoints WHERE id = $1",
);

pub(crate) static SELECT_ENDPOINTS: Sql = Sql::new(
    "SELECT id, url, description, token, ordered, secret, previous_secret, \
            previous_secret_expires_at, enabled, disabled_reason, created_at \
     FROM webhook_endpoints ORDER BY created_at, id",
);

pub(crate) static INSERT_ENDPOINT: Sql = Sql::new(
    "INSERT INTO webhook_endpoints \
         (id, url, description, token, ordered, secret, previous_secret, \
          previous_secret_expires_at, enabled, disabled_reason, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
);

pub(crate) static INSERT_SUBSCRIPTION: Sql =
    Sql::new("INSERT INTO webhook_subscriptions (endpoint_id, event_type) VALUES ($1, $2)");

pub(crate) static DELETE_SUBSCRIPTIONS: Sql =
    Sql::new("DELETE FROM webhook_subscriptions WHERE endpoint_id = $1");

pub(crate) static SELECT_SUBSCRIPTIONS: Sql = Sql::new(
    "SELECT event_type FROM webhook_subscriptions WHERE endpoint_id = $1 ORDER BY event_type",
);

pub(crate) static SELECT_ALL_SUBSCRIPTIONS: Sql = Sql::new(
    "SELECT endpoint_id, event_type FROM webhook_subscriptions ORDER BY endpoint_id, event_type",
);

pub(crate) static ENDPOINT_EXISTS: Sql =
    Sql::new("SELECT COUNT(*) FROM webhook_endpoints WHERE id = $1");

/// Subscriptions, deliveries and (through deliveries) attempts go with it:
/// `ON DELETE CASCADE` in the schema.
pub(crate) static DELETE_ENDPOINT: Sql = Sql::new("DELETE FROM webhook_endpoints WHERE id = $1");

/// Not left to `ON DELETE CASCADE` (SQLite enforces it only with `foreign_keys` on).
pub(crate) static DELETE_OLDER_SECRETS: Sql =
    Sql::new("DELETE FROM webhook_older_secrets WHERE endpoint_id = $1");

/// In an `UPDATE`, every right-hand side sees the row as it was, so the old secret
/// moves to `previous_secret` while the new one replaces it.
pub(crate) static ROTATE_SECRET: Sql = Sql::new(
    "UPDATE webhook_endpoints \
     SET previous_secret = secret, previous_secret_expires_at = $3, secret = $2 \
     WHERE id = $1",
);

/// The previous secret, still signing, joins the older ones before it is replaced.
pub(crate) static KEEP_PREVIOUS_SECRET: Sql = Sql::new(
    "INSERT INTO webhook_older_secrets (endpoint_id, secret, expires_at) \
     SELECT id, previous_secret, previous_secret_expires_at FROM webhook_endpoints \
     WHERE id = $1 AND previous_secret IS NOT NULL AND previous_secret_expires_at > $2",
);

pub(crate) static DROP_EXPIRED_SECRETS: Sql =
    Sql::new("DELETE FROM webhook_older_secrets WHERE endpoint_id = $1 AND expires_at <= $2");

pub(crate) static SELECT_OLDER_SECRETS: Sql = Sql::new(
    "SELECT secret, expires_at FROM webhook_older_secrets \
     WHERE endpoint_id = $1 AND expires_at > $2 ORDER BY expires_at DESC",
);

pub(crate) static SELECT_ALL_OLDER_SECRETS: Sql = Sql::new(
    "SELECT endpoint_id, secret, expires_at FROM webhook_older_secrets \
     WHERE expires_at > $1 ORDER BY expires_at DESC",
);

/// Compare-and-set of one stored secret value, in each place it can be (sealing the
/// values written before `BRIDGE_SECRET_KEY` was set).
pub(crate) static REPLACE_TOKEN: Sql =
    Sql::new("UPDATE webhook_endpoints SET token = $3 WHERE id = $1 AND token = $2");

pub(crate) static REPLACE_SECRET: Sql =
    Sql::new("UPDATE webhook_endpoints SET secret = $3 WHERE id = $1 AND secret = $2");

pub(crate) static REPLACE_PREVIOUS_SECRET: Sql = Sql::new(
    "UPDATE webhook_endpoints SET previous_secret = $3 WHERE id = $1 AND previous_secret = $2",
);

pub(crate) static REPLACE_OLDER_SECRET: Sql =
    Sql::new("UPDATE webhook_older_secrets SET secret = $3 WHERE endpoint_id = $1 AND secret = $2");

pub(crate) static SET_ENABLED: Sql =
    Sql::new("UPDATE webhook_endpoints SET enabled = $2, disabled_reason = $3 WHERE id = $1");

pub(crate) static DISABLE_ENDPOINT: Sql =
    Sql::new("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $2 WHERE id = $1");

// ---------------------------------------------------------------------------------
// Webhook deliveries
// ---------------------------------------------------------------------------------

/// Takes due rows under a lease: `$1` now, `$2` the lease, `$3` the limit, `$4` the
/// endpoint ids to skip (a JSON array on SQLite, a `text[]` on PostgreSQL: `Arg::List`
/// binds it either way). The body comes back with the row (a correlated subquery in
/// `RETURNING`), so a claim is one round-trip.
///
/// A row is due when it is pending, its `next_attempt_at` has passed, no live lease
/// holds it, its endpoint is enabled and not skipped, and — for an ordered endpoint
/// — no earlier row of its ordering key is pending. The candidates are looked up
/// endpoint by endpoint through the partial index `webhook_deliveries_pending_due
/// (endpoint_id, next_attempt_at) WHERE status = 'pending'`, so a skipped (saturated,
/// e.g. hanging) endpoint's backlog is never scanned; there is deliberately no
/// `ORDER BY` across endpoints (the worker skips an endpoint once it holds a window
/// of its rows). The ordered check reads only pending rows
/// (`webhook_deliveries_pending_order`).
///
/// - SQLite: one `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING` is atomic (one
///   writer at a time, across processes too); `INDEXED BY` pins the plan above
///   (without statistics SQLite would prefer `webhook_deliveries_due`) and turns a
///   missing index into an error instead of a silent slowdown.
/// - PostgreSQL: the candidates are picked with `FOR UPDATE SKIP LOCKED`, so
///   concurrent claimers (replicas) skip each other's rows instead of waiting; a row
///   another claimer leased after our snapshot is re-checked against the `WHERE`
///   once its lock is released (READ COMMITTED), and then excluded.
pub(crate) static CLAIM: Dialects = Dialects {
    sqlite: Sql::new(
        "UPDATE webhook_deliveries SET locked_until = $2, updated_at = $1 \
         WHERE id IN ( \
             SELECT d.id FROM webhook_deliveries d INDEXED BY webhook_deliveries_pending_due \
             WHERE d.status = 'pending' \
               AND d.endpoint_id IN (SELECT e.id FROM webhook_endpoints e WHERE e.enabled = 1 \
                                     AND e.id NOT IN (SELECT value FROM json_each($4))) \
               AND d.next_attempt_at <= $1 \
               AND (d.locked_until IS NULL OR d.locked_until <= $1) \
               AND (d.ordering_key IS NULL \
                    OR NOT EXISTS (SELECT 1 FROM webhook_endpoints o \
                                   WHERE o.id = d.endpoint_id AND o.ordered = 1) \
                    OR NOT EXISTS (SELECT 1 FROM webhook_deliveries p \
                                   WHERE p.endpoint_id = d.endpoint_id \
                                     AND p.ordering_key = d.ordering_key \
                                     AND p.status = 'pending' AND p.id < d.id)) \
             LIMIT $3) \
         RETURNING id, event_id, endpoint_id, attempts, \
             (SELECT ev.body FROM webhook_events ev \
              WHERE ev.id = webhook_deliveries.event_id) AS body",
    ),
    postgres: Sql::new(
        "WITH due AS ( \
             SELECT d.id FROM webhook_deliveries d \
             WHERE d.status = 'pending' \
               AND d.endpoint_id IN (SELECT e.id FROM webhook_endpoints e WHERE e.enabled = 1 \
                                     AND NOT (e.id = ANY($4))) \
               AND d.next_attempt_at <= $1 \
               AND (d.locked_until IS NULL OR d.locked_until <= $1) \
               AND (d.ordering_key IS NULL \
                    OR NOT EXISTS (SELECT 1 FROM webhook_endpoints o \
                                   WHERE o.id = d.endpoint_id AND o.ordered = 1) \
                    OR NOT EXISTS (SELECT 1 FROM webhook_deliveries p \
                                   WHERE p.endpoint_id = d.endpoint_id \
                                     AND p.ordering_key = d.ordering_key \
                                     AND p.status = 'pending' AND p.id < d.id)) \
             LIMIT $3 \
             FOR UPDATE OF d SKIP LOCKED) \
         UPDATE webhook_deliveries w SET locked_until = $2, updated_at = $1 \
         FROM due WHERE w.id = due.id \
         RETURNING w.id, w.event_id, w.endpoint_id, w.attempts, \
             (SELECT ev.body FROM webhook_events ev WHERE ev.id = w.event_id) AS body",
    ),
};

pub(crate) static RENEW_LEASE: Sql = Sql::new(
    "UPDATE webhook_deliveries SET locked_until = $3 \
     WHERE id = $1 AND locked_until = $2 AND status = 'pending'",
);

pub(crate) static RELEASE_LEASE: Sql = Sql::new(
    "UPDATE webhook_deliveries SET locked_until = NULL WHERE id = $1 AND locked_until = $2",
);

/// Only the lease holder may mark the row (a worker whose lease expired and whose row
/// was re-claimed changes nothing).
pub(crate) static MARK_DELIVERY: Sql = Sql::new(
    "UPDATE webhook_deliveries \
     SET status = $2, attempts = attempts + 1, next_attempt_at = $3, locked_until = NULL, \
         last_status_code = $4, last_error = $5, updated_at = $6 \
     WHERE id = $1 AND locked_until = $7",
);

/// The attempt happened whoever holds the row now, so it is always recorded — unless
/// the endpoint (and with it the delivery) was deleted meanwhile, which would break
/// the foreign key and with it the whole batch.
pub(crate) static INSERT_ATTEMPT: Sql = Sql::new(
    "INSERT INTO webhook_attempts \
         (delivery_id, attempted_at, status_code, response_body, duration_ms, error) \
     SELECT $1, $2, $3, $4, $5, $6 \
     WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1)",
);

pub(crate) static SELECT_DELIVERIES: Sql = Sql::new(
    "SELECT d.id, d.event_id, ev.type AS event_type, d.status, d.attempts, d.next_attempt_at, \
            d.last_status_code, d.last_error, d.created_at, d.updated_at, \
            (SELECT a.duration_ms FROM webhook_attempts a WHERE a.delivery_id = d.id \
             ORDER BY a.id DESC LIMIT 1) AS last_duration_ms \
     FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id \
     WHERE d.endpoint_id = $1 ORDER BY d.id DESC LIMIT $2",
);

pub(crate) static SELECT_ATTEMPTS: Sql = Sql::new(
    "SELECT a.delivery_id, a.attempted_at, a.status_code, a.response_body, a.duration_ms, \
            a.error \
     FROM webhook_attempts a \
     WHERE a.delivery_id IN (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 \
                             ORDER BY id DESC LIMIT $2) \
     ORDER BY a.delivery_id, a.id",
);

/// The lease is left alone: a row in flight keeps its holder, whose result then wins.
pub(crate) static RETRY_DELIVERY: Sql = Sql::new(
    "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, updated_at = $3 \
     WHERE id = $1 AND endpoint_id = $2",
);

pub(crate) static OUTBOX_BACKLOG: Sql =
    Sql::new("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'");

/// `WEBHOOK_RETENTION_DAYS`: finished deliveries, their attempts, then events no
/// delivery refers to any more. Attempts first: nothing relies on `ON DELETE CASCADE`
/// (SQLite enforces it only with `foreign_keys` on).
pub(crate) static PURGE_ATTEMPTS: Sql = Sql::new(
    "DELETE FROM webhook_attempts WHERE delivery_id IN (\
         SELECT id FROM webhook_deliveries \
         WHERE status IN ('delivered', 'failed') AND updated_at < $1)",
);

pub(crate) static PURGE_DELIVERIES: Sql = Sql::new(
    "DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'failed') AND updated_at < $1",
);

pub(crate) static PURGE_EVENTS: Sql = Sql::new(
    "DELETE FROM webhook_events \
     WHERE created_at < $1 \
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
);

// ---------------------------------------------------------------------------------
// Feedback (👍/👎 on answers)
// ---------------------------------------------------------------------------------

/// Inserts the click, or replaces the user's earlier value when it differs; a click
/// that repeats the stored value touches no row (so the count says "changed").
pub(crate) static UPSERT_FEEDBACK: Sql = Sql::new(
    "INSERT INTO feedback \
     (turn_id, user_id, platform, channel, message_id, positive, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (turn_id, user_id) DO UPDATE \
     SET positive = excluded.positive, updated_at = excluded.updated_at \
     WHERE feedback.positive <> excluded.positive",
);

/// The feedback on some messages of a channel (`$2`: the list of message ids).
pub(crate) static SELECT_FEEDBACK: Dialects = Dialects {
    sqlite: Sql::new(
        "SELECT message_id, user_id, positive FROM feedback \
         WHERE channel = $1 AND message_id IN (SELECT value FROM json_each($2)) \
         ORDER BY updated_at, user_id",
    ),
    postgres: Sql::new(
        "SELECT message_id, user_id, positive FROM feedback \
         WHERE channel = $1 AND message_id = ANY($2) \
         ORDER BY updated_at, user_id",
    ),
};

// ---------------------------------------------------------------------------------
// The turn journal
// ---------------------------------------------------------------------------------

/// A redelivered message (same turn id) inserts nothing: `0` rows says "journaled".
pub(crate) static ACCEPT_TURN: Sql = Sql::new(
    "INSERT INTO turn_journal \
     (id, platform, workspace, channel, thread, user_id, message_id, body, reply_to, \
      state, received_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'accepted', $10, $10) \
     ON CONFLICT (id) DO NOTHING",
);

/// Only an `accepted` turn moves: an answered one is never reopened.
pub(crate) static END_TURN: Sql = Sql::new(
    "UPDATE turn_journal SET state = $2, updated_at = $3 \
     WHERE id = $1 AND state = 'accepted'",
);

/// Turns nobody has touched since `$2`: left by a process that is gone.
pub(crate) static OPEN_TURNS: Sql = Sql::new(
    "SELECT id, platform, workspace, channel, thread, user_id, message_id, body, reply_to, \
            received_at \
     FROM turn_journal WHERE state = 'accepted' AND platform = $1 AND updated_at < $2 \
     ORDER BY received_at, id LIMIT $3",
);

/// Takes a left turn for this process: only one of several recovering replicas wins
/// (the row is touched, so it is no longer "untouched since `$3`").
pub(crate) static CLAIM_TURN: Sql = Sql::new(
    "UPDATE turn_journal SET updated_at = $2 \
     WHERE id = $1 AND state = 'accepted' AND updated_at < $3",
);

/// Where the recent turns of a platform were answered, with their message ids: the
/// channels a Discord catch-up reads.
pub(crate) static RECENT_TURNS: Sql = Sql::new(
    "SELECT reply_to, message_id, workspace FROM turn_journal \
     WHERE platform = $1 AND received_at >= $2",
);

/// A replica's turns in flight, touched so no other replica takes them over.
pub(crate) static TOUCH_TURNS: Dialects = Dialects {
    sqlite: Sql::new(
        "UPDATE turn_journal SET updated_at = $2 \
         WHERE state = 'accepted' AND id IN (SELECT value FROM json_each($1))",
    ),
    postgres: Sql::new(
        "UPDATE turn_journal SET updated_at = $2 WHERE state = 'accepted' AND id = ANY($1)",
    ),
};

/// Whether the turn `$1`, received since `$2`, has ended with its answer or its
/// failure recorded: a Slack thread rooted at that message is one the bot answered
/// in (`slack::dedupe`), with no sighting of its own.
pub(crate) static TURN_ENDED: Sql = Sql::new(
    "SELECT COUNT(*) FROM turn_journal \
     WHERE id = $1 AND state IN ('answered', 'failed') AND received_at >= $2",
);

/// Finished turns go with the transcript's retention; an `accepted` one that old is
/// long past any recovery window too.
pub(crate) static PURGE_TURN_JOURNAL: Sql =
    Sql::new("DELETE FROM turn_journal WHERE updated_at < $1");

// ---------------------------------------------------------------------------------
// Leases shared by replicas (Discord's shards, live replicas, IDENTIFY pacing)
// ---------------------------------------------------------------------------------

/// Takes `$1` for `$2` until `$3` when it is free, past its expiry at `$4`, or already
/// `$2`'s (a renewal): `1` row means held.
pub(crate) static HOLD_LEASE: Sql = Sql::new(
    "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
     WHERE leases.expires_at <= $4 OR leases.owner = excluded.owner",
);

/// Like [`HOLD_LEASE`], but only when free or expired, even for its owner: a slot of
/// a rate (one IDENTIFY per bucket per 5 s), not a claim to renew.
pub(crate) static HOLD_FREE_LEASE: Sql = Sql::new(
    "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
     WHERE leases.expires_at <= $4",
);

/// Gives a lease back; only its owner can.
pub(crate) static DROP_LEASE: Sql = Sql::new("DELETE FROM leases WHERE name = $1 AND owner = $2");

/// Every lease whose name starts with `$1` (a handful of rows).
pub(crate) static LEASES: Sql = Sql::new(
    "SELECT name, owner, expires_at FROM leases \
     WHERE substr(name, 1, length($1)) = $1 ORDER BY name",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_placeholders_are_numbered() {
        let s = Sql::new("SELECT $1, e.id, $3 WHERE x IN ($2, '*') AND y = $12");
        assert_eq!(
            s.sqlite(),
            "SELECT ?1, e.id, ?3 WHERE x IN (?2, '*') AND y = ?12"
        );
        assert_eq!(
            s.text(),
            "SELECT $1, e.id, $3 WHERE x IN ($2, '*') AND y = $12"
        );
    }
}
