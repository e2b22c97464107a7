//! The traits through which the core does all of its I/O: [`Agent`], [`Store`] and
//! [`ChatSink`], with the plain records they exchange.
//!
//! Implementations live outside `core` (`agent/`, `store/`, `discord/`, `slack/`,
//! `console.rs`); `app.rs` picks them. Dynamic dispatch is deliberate: one vtable call
//! costs nothing next to the network or disk round-trip behind every method.

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::events::OutboxEvent;
use super::message::{ConversationKey, Platform};

// ---------------------------------------------------------------------------------
// Agent
// ---------------------------------------------------------------------------------

/// One call to the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRequest {
    pub query: String,
    /// `None` on `converse` asks the agent to create a session.
    pub session_id: Option<String>,
    pub personality_id: Option<String>,
    pub max_results: Option<u32>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentAnswer {
    pub response: String,
    /// The session the agent used (`None` for stateless `/query`).
    pub session_id: Option<String>,
    /// `sources` exactly as the agent sent them (`null` or a list), passed through.
    pub sources: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personality {
    pub id: String,
    pub name: String,
    pub kind: Option<String>,
    pub role: Option<String>,
}

/// Why an agent call failed, by what the caller does next: every variant ends a chat
/// turn with `ERROR_REPLY`; the HTTP proxy maps them to 502/504 with the detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    #[error("agent answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("agent answer malformed: {0}")]
    Malformed(String),
}

#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// `POST /conversation`: a turn of a session (created when `session_id` is `None`).
    async fn converse(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError>;
    /// `POST /query`: a stateless question.
    async fn query(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError>;
    async fn personalities(&self) -> Result<Vec<Personality>, AgentError>;
    async fn health(&self) -> Result<(), AgentError>;
}

// ---------------------------------------------------------------------------------
// Chat sink
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where the answer to one inbound message goes. A platform builds one per message,
/// already knowing the channel, thread and message to answer; the relay only says
/// *what* to post and *when* it is working.
#[async_trait]
pub trait ChatSink: Send + Sync + 'static {
    /// The bridge started working on the message (typing indicator, progress reaction).
    async fn working(&self) {}
    /// The bridge finished (stop typing, remove the reaction). Called after `send`.
    async fn finished(&self) {}
    /// Posts `text` (agent Markdown) where the answer belongs, converted and split as the
    /// platform needs. Returns the platform ids of the messages it posted.
    async fn send(&self, text: &str) -> Result<Vec<String>, SinkError>;
}

// ---------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------

/// A conversation's durable state: one row per [`ConversationKey`].
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub key: ConversationKey,
    pub platform: Platform,
    pub workspace: String,
    pub channel: String,
    pub thread: Option<String>,
    /// Set when `SESSION_SCOPE=user`.
    pub user: Option<String>,
    /// The agent's session id; `None` until the first answer or after a reset.
    pub agent_session: Option<String>,
    /// `personality <id>` chosen in this conversation; `None` means `AGENT_PERSONALITY`.
    pub personality: Option<String>,
    pub last_activity: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One transcript row: a user's text or the agent's reply.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptEntry {
    /// Assigned by the store; ignored on insert.
    pub id: i64,
    pub session_id: String,
    pub role: Role,
    pub content: String,
    pub timestamp: OffsetDateTime,
    pub platform: Platform,
    pub channel: String,
    pub thread: Option<String>,
    pub user: String,
    /// The platform's message id(s) (several, comma-separated, for a split reply).
    pub message_id: Option<String>,
}

/// Everything one state change writes, applied in **one transaction**: conversation
/// rows upserted, transcript rows appended, events stored with one outbox row per
/// subscribed endpoint. Either all of it is visible or none of it.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub conversations: Vec<Conversation>,
    pub transcript: Vec<TranscriptEntry>,
    pub events: Vec<OutboxEvent>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty() && self.transcript.is_empty() && self.events.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed the statement; worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row did not hold what the schema promises.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round-trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn conversation(&self, key: &ConversationKey)
        -> Result<Option<Conversation>, StoreError>;
    /// Most recently active first, at most `limit`.
    async fn conversations(&self, limit: u32) -> Result<Vec<Conversation>, StoreError>;
    async fn conversations_by_session(
        &self,
        agent_session: &str,
    ) -> Result<Vec<Conversation>, StoreError>;

    /// Applies a [`Commit`] atomically.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;

    /// Transcript rows of an agent session at or after `since`, oldest first.
    async fn history(
        &self,
        agent_session: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<TranscriptEntry>, StoreError>;
    /// Deletes transcript rows older than `before`; returns how many.
    async fn purge_transcripts(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Records a platform event id (e.g. `slack:Ev123`); `true` the first time it is
    /// seen, `false` for every later sighting until it expires — across restarts and
    /// replicas, because the store's unique key decides.
    async fn first_sighting(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Forgets sightings that expired before `now`; returns how many.
    async fn purge_sightings(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}
