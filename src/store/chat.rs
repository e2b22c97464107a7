//! The core's store roles for `SqlStore` (`Conversations`, `Transcripts`, `Sightings`,
//! `TurnQueue`): conversations, transcripts, Slack event sightings, and
//! the outbox fan-out of `commit` (one delivery row per subscribed, enabled endpoint).
//!
//! Every statement is a constant string shared by both backends, so each connection
//! prepares it once and reuses it from sqlx's statement cache; nothing here builds SQL
//! at run time. Delivering the outbox is not this module's business (`webhook::*`).

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{db_err, from_ms, on_pool, to_ms, SqlStore};
use crate::core::message::{ConversationKey, Platform};
use crate::core::ports::{
    Commit, Conversation, Conversations, Role, Sightings, StoreError, TranscriptEntry, Transcripts,
    TurnQueue,
};

const SELECT_CONVERSATION: &str = "\
    SELECT key, platform, workspace, channel, thread, user_id, agent_session, personality, \
           last_activity \
    FROM conversations WHERE key = $1";

const SELECT_CONVERSATIONS: &str = "\
    SELECT key, platform, workspace, channel, thread, user_id, agent_session, personality, \
           last_activity \
    FROM conversations ORDER BY last_activity DESC, key LIMIT $1";

const SELECT_CONVERSATIONS_BY_SESSION: &str = "\
    SELECT key, platform, workspace, channel, thread, user_id, agent_session, personality, \
           last_activity \
    FROM conversations WHERE agent_session = $1 ORDER BY last_activity DESC, key";

const UPSERT_CONVERSATION: &str = "\
    INSERT INTO conversations \
        (key, platform, workspace, channel, thread, user_id, agent_session, personality, \
         last_activity) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (key) DO UPDATE SET \
        platform = excluded.platform, workspace = excluded.workspace, \
        channel = excluded.channel, thread = excluded.thread, user_id = excluded.user_id, \
        agent_session = excluded.agent_session, personality = excluded.personality, \
        last_activity = excluded.last_activity";

const SELECT_CONVERSATION_KEYS: &str =
    "SELECT key FROM conversations WHERE key > $1 ORDER BY key LIMIT $2";

const INSERT_TRANSCRIPT: &str = "\
    INSERT INTO transcripts \
        (session_id, role, content, created_at, platform, channel, thread, user_id, message_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Two rows at once: a turn writes exactly two (the user's text and the reply), and
/// each statement is a round-trip to the database.
const INSERT_TRANSCRIPT_PAIR: &str = "\
    INSERT INTO transcripts \
        (session_id, role, content, created_at, platform, channel, thread, user_id, message_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9), ($10, $11, $12, $13, $14, $15, $16, $17, $18)";

const SELECT_HISTORY: &str = "\
    SELECT id, session_id, role, content, created_at, platform, channel, thread, user_id, \
           message_id \
    FROM transcripts WHERE session_id = $1 AND created_at >= $2 ORDER BY created_at, id";

/// A page for a poller: the `(session_id, …)` index bounds the range, so an empty
/// poll is an index lookup.
const SELECT_HISTORY_PAGE: &str = "\
    SELECT id, session_id, role, content, created_at, platform, channel, thread, user_id, \
           message_id \
    FROM transcripts WHERE session_id = $1 AND created_at >= $2 \
      AND (created_at > $3 OR (created_at = $3 AND id > $4)) \
    ORDER BY created_at, id LIMIT $5";

/// Where the row a page continues after sits in the `(created_at, id)` order.
const SELECT_CURSOR: &str = "SELECT created_at FROM transcripts WHERE id = $1";

const PURGE_TRANSCRIPTS: &str = "DELETE FROM transcripts WHERE created_at < $1";

/// The event row, only when an enabled endpoint subscribes to its type or to `*`
/// (nothing else reads it): without webhooks a turn writes no event at all.
const INSERT_EVENT: &str = "\
    INSERT INTO webhook_events (id, type, ordering_key, body, created_at) \
    SELECT $1, $2, $3, $4, $5 \
    WHERE EXISTS (SELECT 1 FROM webhook_endpoints e \
                  JOIN webhook_subscriptions s ON s.endpoint_id = e.id \
                  WHERE e.enabled = 1 AND s.event_type IN ($2, '*'))";

/// One pending delivery per enabled endpoint subscribed to the event's type or to `*`.
/// `EXISTS` (rather than a join) yields each endpoint once even when it subscribes to
/// both. The first attempt is due when the event happened. Only for an event that
/// `INSERT_EVENT` stored: an endpoint registered between the two statements (READ
/// COMMITTED on PostgreSQL) gets nothing rather than a delivery without its event.
const FAN_OUT_EVENT: &str = "\
    INSERT INTO webhook_deliveries \
        (event_id, endpoint_id, ordering_key, status, attempts, next_attempt_at, created_at, \
         updated_at) \
    SELECT $1, e.id, $3, 'pending', 0, $4, $4, $4 \
    FROM webhook_endpoints e \
    WHERE e.enabled = 1 \
      AND EXISTS (SELECT 1 FROM webhook_subscriptions s \
                  WHERE s.endpoint_id = e.id AND s.event_type IN ($2, '*')) \
      AND EXISTS (SELECT 1 FROM webhook_events v WHERE v.id = $1)";

/// Inserts a sighting, or revives one whose `expires_at` has passed; a live sighting
/// is left alone, so exactly one caller sees a changed row. The unique key decides
/// between concurrent callers on every backend: PostgreSQL re-checks the `WHERE`
/// against the row the winner committed, SQLite serialises writers.
const FIRST_SIGHTING: &str = "\
    INSERT INTO seen_events (key, expires_at) VALUES ($1, $2) \
    ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
    WHERE seen_events.expires_at < $3";

const PURGE_SIGHTINGS: &str = "DELETE FROM seen_events WHERE expires_at < $1";

const SEEN: &str = "SELECT COUNT(*) FROM seen_events WHERE key = $1 AND expires_at >= $2";

const TURN_ENTER: &str = "\
    INSERT INTO turn_queue (conversation, received_at, expires_at) VALUES ($1, $2, $3) \
    RETURNING id";

const TURN_TOUCH: &str = "UPDATE turn_queue SET expires_at = $2 WHERE id = $1";

/// Counts live tickets of the conversation ahead of this one; expired ones (a dead
/// replica's) are ignored, and removed by the janitor's sweep.
const TURN_AHEAD: &str = "\
    SELECT COUNT(*) FROM turn_queue \
    WHERE conversation = $1 AND expires_at >= $2 \
      AND (received_at < $3 OR (received_at = $3 AND id < $4))";

const TURN_LEAVE: &str = "DELETE FROM turn_queue WHERE id = $1";

const PURGE_TURNS: &str = "DELETE FROM turn_queue WHERE expires_at < $1";

#[derive(sqlx::FromRow)]
struct ConversationRow {
    key: String,
    platform: String,
    workspace: String,
    channel: String,
    thread: Option<String>,
    user_id: Option<String>,
    agent_session: Option<String>,
    personality: Option<String>,
    last_activity: i64,
}

impl TryFrom<ConversationRow> for Conversation {
    type Error = StoreError;

    fn try_from(r: ConversationRow) -> Result<Self, StoreError> {
        Ok(Conversation {
            key: ConversationKey::from_stored(&r.key),
            platform: parse_platform(&r.platform)?,
            workspace: r.workspace,
            channel: r.channel,
            thread: r.thread,
            user: r.user_id,
            agent_session: r.agent_session,
            personality: r.personality,
            last_activity: from_ms(r.last_activity)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TranscriptRow {
    id: i64,
    session_id: String,
    role: String,
    content: String,
    created_at: i64,
    platform: String,
    channel: String,
    thread: Option<String>,
    user_id: String,
    message_id: Option<String>,
}

impl TryFrom<TranscriptRow> for TranscriptEntry {
    type Error = StoreError;

    fn try_from(r: TranscriptRow) -> Result<Self, StoreError> {
        Ok(TranscriptEntry {
            id: r.id,
            session_id: r.session_id,
            role: Role::parse(&r.role).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown transcript role {:?}", r.role))
            })?,
            content: r.content,
            timestamp: from_ms(r.created_at)?,
            platform: parse_platform(&r.platform)?,
            channel: r.channel,
            thread: r.thread,
            user: r.user_id,
            message_id: r.message_id,
        })
    }
}

fn parse_platform(s: &str) -> Result<Platform, StoreError> {
    Platform::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown platform {s:?}")))
}

fn convert_all<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

#[async_trait]
impl Conversations for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query("SELECT 1").execute(p).await.map(drop)).map_err(db_err)
    }

    async fn conversation(
        &self,
        key: &ConversationKey,
    ) -> Result<Option<Conversation>, StoreError> {
        let row = on_pool!(self, |p| {
            sqlx::query_as::<_, ConversationRow>(SELECT_CONVERSATION)
                .bind(key.as_str())
                .fetch_optional(p)
                .await
        })
        .map_err(db_err)?;
        row.map(Conversation::try_from).transpose()
    }

    async fn conversations(&self, limit: u32) -> Result<Vec<Conversation>, StoreError> {
        let rows = on_pool!(self, |p| {
            sqlx::query_as::<_, ConversationRow>(SELECT_CONVERSATIONS)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await
        })
        .map_err(db_err)?;
        convert_all(rows)
    }

    async fn conversation_keys(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query_scalar(SELECT_CONVERSATION_KEYS)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await
        })
        .map_err(db_err)
    }

    async fn conversations_by_session(
        &self,
        agent_session: &str,
    ) -> Result<Vec<Conversation>, StoreError> {
        let rows = on_pool!(self, |p| {
            sqlx::query_as::<_, ConversationRow>(SELECT_CONVERSATIONS_BY_SESSION)
                .bind(agent_session)
                .fetch_all(p)
                .await
        })
        .map_err(db_err)?;
        convert_all(rows)
    }
}

#[async_trait]
impl Transcripts for SqlStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        if commit.is_empty() {
            return Ok(());
        }
        if let Some(batcher) = &self.batcher {
            return batcher.commit(commit).await;
        }
        on_pool!(self, |p| {
            async {
                let mut tx = p.begin().await?;
                for c in &commit.conversations {
                    sqlx::query(UPSERT_CONVERSATION)
                        .bind(c.key.as_str())
                        .bind(c.platform.as_str())
                        .bind(&c.workspace)
                        .bind(&c.channel)
                        .bind(c.thread.as_deref())
                        .bind(c.user.as_deref())
                        .bind(c.agent_session.as_deref())
                        .bind(c.personality.as_deref())
                        .bind(to_ms(c.last_activity))
                        .execute(&mut *tx)
                        .await?;
                }
                for pair in commit.transcript.chunks(2) {
                    let sql = if pair.len() == 2 {
                        INSERT_TRANSCRIPT_PAIR
                    } else {
                        INSERT_TRANSCRIPT
                    };
                    let mut q = sqlx::query(sql);
                    for t in pair {
                        q = q
                            .bind(&t.session_id)
                            .bind(t.role.as_str())
                            .bind(&t.content)
                            .bind(to_ms(t.timestamp))
                            .bind(t.platform.as_str())
                            .bind(&t.channel)
                            .bind(t.thread.as_deref())
                            .bind(&t.user)
                            .bind(t.message_id.as_deref());
                    }
                    q.execute(&mut *tx).await?;
                }
                for e in &commit.events {
                    let at = to_ms(e.created_at);
                    sqlx::query(INSERT_EVENT)
                        .bind(e.id.as_str())
                        .bind(e.kind.as_str())
                        .bind(e.ordering_key.as_deref())
                        .bind(&e.body)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(FAN_OUT_EVENT)
                        .bind(e.id.as_str())
                        .bind(e.kind.as_str())
                        .bind(e.ordering_key.as_deref())
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                }
                // Dropping `tx` on an early `?` rolls everything back.
                tx.commit().await
            }
            .await
        })
        .map_err(db_err)
    }

    fn wants_events(&self) -> bool {
        self.batcher.as_ref().is_none_or(|b| b.wants_events())
    }

    async fn history(
        &self,
        agent_session: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        let since = since.map_or(i64::MIN, to_ms);
        let rows = on_pool!(self, |p| {
            sqlx::query_as::<_, TranscriptRow>(SELECT_HISTORY)
                .bind(agent_session)
                .bind(since)
                .fetch_all(p)
                .await
        })
        .map_err(db_err)?;
        convert_all(rows)
    }

    async fn history_page(
        &self,
        agent_session: &str,
        since: Option<OffsetDateTime>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        let since = since.map_or(i64::MIN, to_ms);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = on_pool!(self, |p| {
            async {
                // Rows are in `(created_at, id)` order (ids are not: a turn's rows
                // are written together); a cursor row that was purged meanwhile
                // continues from its id alone.
                let cursor_at = match after {
                    Some(id) => sqlx::query_scalar::<_, i64>(SELECT_CURSOR)
                        .bind(id)
                        .fetch_optional(p)
                        .await?
                        .unwrap_or(i64::MIN),
                    None => i64::MIN,
                };
                sqlx::query_as::<_, TranscriptRow>(SELECT_HISTORY_PAGE)
                    .bind(agent_session)
                    .bind(since)
                    .bind(cursor_at)
                    .bind(after.unwrap_or(i64::MIN))
                    .bind(limit)
                    .fetch_all(p)
                    .await
            }
            .await
        })
        .map_err(db_err)?;
        convert_all(rows)
    }

    async fn purge_transcripts(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        on_pool!(self, |p| {
            sqlx::query(PURGE_TRANSCRIPTS)
                .bind(to_ms(before))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_err)
    }
}

#[async_trait]
impl Sightings for SqlStore {
    async fn first_sighting(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        if let Some(batcher) = &self.batcher {
            return batcher
                .first_sighting(key.to_string(), to_ms(expires_at))
                .await;
        }
        let now = to_ms(OffsetDateTime::now_utc());
        let changed = on_pool!(self, |p| {
            sqlx::query(FIRST_SIGHTING)
                .bind(key)
                .bind(to_ms(expires_at))
                .bind(now)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_err)?;
        Ok(changed > 0)
    }

    fn note_sighting(&self, key: String, expires_at: OffsetDateTime) {
        if let Some(batcher) = &self.batcher {
            // Queued now, so it lands in the same batch as the next commit or earlier.
            batcher.note_sighting(key, to_ms(expires_at));
            return;
        }
        // PostgreSQL: every write is its own round-trip anyway.
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.first_sighting(&key, expires_at).await {
                tracing::warn!(error = %e, key, "could not record a sighting");
            }
        });
    }

    async fn seen(&self, key: &str) -> Result<bool, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let n: i64 = on_pool!(self, |p| {
            sqlx::query_scalar(SEEN)
                .bind(key)
                .bind(now)
                .fetch_one(p)
                .await
        })
        .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn purge_sightings(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        // Expired turn tickets are sightings of a kind too: a dead replica's.
        on_pool!(self, |p| {
            async {
                let turns = sqlx::query(PURGE_TURNS).bind(to_ms(now)).execute(p).await?;
                let seen = sqlx::query(PURGE_SIGHTINGS)
                    .bind(to_ms(now))
                    .execute(p)
                    .await?;
                Ok(turns.rows_affected() + seen.rows_affected())
            }
            .await
        })
        .map_err(db_err)
    }
}

#[async_trait]
impl TurnQueue for SqlStore {
    fn is_shared(&self) -> bool {
        self.backend() == "postgres"
    }

    async fn turn_enter(
        &self,
        conversation: &ConversationKey,
        received: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        on_pool!(self, |p| {
            sqlx::query_scalar(TURN_ENTER)
                .bind(conversation.as_str())
                .bind(to_ms(received))
                .bind(to_ms(expires_at))
                .fetch_one(p)
                .await
        })
        .map_err(db_err)
    }

    async fn turn_is_next(
        &self,
        conversation: &ConversationKey,
        ticket: i64,
        received: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let ahead: i64 = on_pool!(self, |p| {
            async {
                sqlx::query(TURN_TOUCH)
                    .bind(ticket)
                    .bind(to_ms(expires_at))
                    .execute(p)
                    .await?;
                sqlx::query_scalar(TURN_AHEAD)
                    .bind(conversation.as_str())
                    .bind(now)
                    .bind(to_ms(received))
                    .bind(ticket)
                    .fetch_one(p)
                    .await
            }
            .await
        })
        .map_err(db_err)?;
        Ok(ahead == 0)
    }

    async fn turn_leave(&self, ticket: i64) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(TURN_LEAVE)
            .bind(ticket)
            .execute(p)
            .await
            .map(drop))
        .map_err(db_err)
    }
}
