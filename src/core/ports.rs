//! The traits through which the core does all of its I/O: [`Agent`], [`ChatSink`]
//! and the store, seen by role ([`Conversations`], [`Transcripts`], [`Sightings`],
//! [`TurnQueue`]), with the plain records they exchange. Each consumer gets only the
//! roles it uses (`app.rs` hands them out); the webhook side's port lives with it
//! (`webhook::store`).
//!
//! Implementations live outside `core` (`agent/`, `store/`, `discord/`, `slack/`,
//! `console.rs`); `app.rs` picks them. Dynamic dispatch is deliberate: one vtable call
//! costs nothing next to the network or disk round-trip behind every method.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::error::Detail;
use super::events::OutboxEvent;
use super::message::{ConversationKey, Inbound, Platform};

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
    /// The conversation's earlier turns, oldest first, for backends that keep no
    /// memory of their own ([`Agent::wants_history`]); empty otherwise.
    pub history: Vec<HistoryTurn>,
}

/// One earlier message of a conversation, as a stateless backend is shown it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryTurn {
    pub role: Role,
    pub content: String,
}

/// What an answer stream yields: text as it is written, then the whole answer once.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerEvent {
    /// The next piece of text (appended to the pieces before it).
    Delta(String),
    /// The end: the whole answer, with the session id and sources where the backend
    /// has them. Nothing follows it.
    Done(AgentAnswer),
}

/// An answer being written. A stream that ends without [`AnswerEvent::Done`], or
/// with an error, was cut short: what arrived before stays valid.
pub type AnswerStream = BoxStream<'static, Result<AnswerEvent, AgentError>>;

/// A stream of one answer that arrived whole: one piece, then the end.
pub fn whole_answer(answer: AgentAnswer) -> AnswerStream {
    let piece = AnswerEvent::Delta(answer.response.clone());
    Box::pin(futures_util::stream::iter([
        Ok(piece),
        Ok(AnswerEvent::Done(answer)),
    ]))
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
    Unreachable(#[source] Detail),
    #[error("agent answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("agent answer malformed: {0}")]
    Malformed(#[source] Detail),
}

#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// `POST /conversation`: a turn of a session (created when `session_id` is `None`).
    async fn converse(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError>;
    /// `POST /query`: a stateless question.
    async fn query(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError>;
    async fn personalities(&self) -> Result<Vec<Personality>, AgentError>;
    async fn health(&self) -> Result<(), AgentError>;

    /// `converse` as a stream of pieces. The default yields the whole answer as one
    /// piece; backends that can stream override it.
    async fn converse_stream(&self, req: &AgentRequest) -> Result<AnswerStream, AgentError> {
        self.converse(req).await.map(whole_answer)
    }
    /// `query` as a stream of pieces (see [`Agent::converse_stream`]).
    async fn query_stream(&self, req: &AgentRequest) -> Result<AnswerStream, AgentError> {
        self.query(req).await.map(whole_answer)
    }
    /// `true` for a backend that keeps no memory (an OpenAI-compatible API): the
    /// relay then fills [`AgentRequest::history`] from the transcript.
    fn wants_history(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------
// Chat sink
// ---------------------------------------------------------------------------------

/// Why a sink could not post or edit: what failed, and the platform's error as the
/// source where that is safe to keep (see `core::error`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(#[source] pub Detail);

/// Where the answer to one inbound message goes. A platform builds one per message,
/// already knowing the channel, thread and message to answer; the relay only says
/// *what* to post and *when* it is working.
#[async_trait]
pub trait ChatSink: Send + Sync + 'static {
    /// The agent is working on the message (typing indicator, progress reaction).
    /// Runs beside the agent call and always completes before `send`.
    async fn working(&self) {}
    /// The bridge finished (stop typing, remove the reaction). Called after `send`,
    /// and only when `working` was.
    async fn finished(&self) {}
    /// How long the agent may take before `working` is shown at all; zero shows it at
    /// once. An answer faster than this gets no progress indicator.
    fn progress_after(&self) -> Duration {
        Duration::ZERO
    }
    /// Posts `text` (agent Markdown) where the answer belongs, converted and split as the
    /// platform needs. Returns the platform ids of the messages it posted.
    async fn send(&self, text: &str) -> Result<Vec<String>, SinkError>;
    /// Shows an answer while it is written: `feed` holds the text so far and closes
    /// with the final text. The finished messages must read exactly as `send` of the
    /// final text would (same text, same splitting), at most
    /// [`AnswerFeed::max_messages`] of them. The default waits for the end and posts
    /// once; platforms that can edit override it.
    async fn stream(&self, feed: AnswerFeed) -> Result<Vec<String>, SinkError> {
        let text = feed.finished().await;
        self.send(&text).await
    }
    /// Where the answer goes, as the platform's [`Resume`] can rebuild a sink from it
    /// after a restart (the journal keeps it). `None`: the turn is not journaled
    /// (nothing could answer it in another process, like the console).
    fn reply_to(&self) -> Option<String> {
        None
    }
}

/// What a platform's [`Resume`] found for a journaled turn left unanswered by a
/// previous process.
pub enum Resumed {
    /// Answer it through this sink.
    Answer(Arc<dyn ChatSink>),
    /// Its answer is already on the platform (posted before the crash, not recorded):
    /// nothing to post again.
    AlreadyAnswered,
    /// Cannot be answered any more (the reply target is unreadable or gone).
    Unanswerable(Detail),
}

/// A platform's way back to a journaled turn's conversation after a restart.
#[async_trait]
pub trait Resume: Send + Sync + 'static {
    async fn resume(&self, turn: &JournalTurn) -> Resumed;
}

/// An answer as the relay hands it to a [`ChatSink`]: the text so far (agent
/// Markdown, growing), and how it may be shown.
pub struct AnswerFeed {
    /// The whole text so far; the sender is dropped once the final text is in.
    pub text: watch::Receiver<String>,
    /// `STREAM_EDIT_INTERVAL_MS`: least time between two visible updates.
    pub interval: Duration,
    /// `MAX_REPLY_MESSAGES`: most platform messages the answer may take.
    pub max_messages: usize,
    /// `FEEDBACK_BUTTONS`: the turn id the last message's 👍/👎 buttons carry;
    /// `None`: no buttons.
    pub feedback: Option<String>,
    /// The turn is in the journal: its row, keyed by the asking message, ends
    /// `answered` or `failed` with the answer's record.
    pub journaled: bool,
}

impl AnswerFeed {
    /// Waits for the final text.
    pub async fn finished(mut self) -> String {
        while self.text.changed().await.is_ok() {}
        let text = self.text.borrow().clone();
        text
    }
}

// ---------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------

/// A 👍/👎 click on an answer, as a platform reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackClick {
    /// The turn whose answer carried the buttons.
    pub turn_id: String,
    pub platform: Platform,
    pub workspace: String,
    pub channel: String,
    /// The thread the answer is in (Slack's `thread_ts`), if any.
    pub thread: Option<String>,
    /// Who clicked.
    pub user: String,
    /// The platform id of the message that carried the buttons (the answer's last).
    pub message_id: String,
    pub positive: bool,
}

/// One user's feedback on an answer, for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackEntry {
    /// The message that carried the buttons.
    pub message_id: String,
    pub user: String,
    pub positive: bool,
}

/// Feedback on answers: one row per (turn, user), a second click replaces the first.
/// Its own small port (not [`Store`]): only the relay's feedback path and the history
/// use it.
#[async_trait]
pub trait FeedbackStore: Send + Sync + 'static {
    /// Records `click`; `true` when it is new or changed the user's earlier value
    /// (a repeated click changes nothing and emits no event).
    async fn record_feedback(&self, click: &FeedbackClick) -> Result<bool, StoreError>;
    /// The feedback on the messages `message_ids` of `channel`.
    async fn feedback_on(
        &self,
        channel: &str,
        message_ids: &[String],
    ) -> Result<Vec<FeedbackEntry>, StoreError>;
}

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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed the statement; worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Detail),
    /// A row did not hold what the schema promises.
    #[error("store data corrupt: {0}")]
    Corrupt(#[source] Detail),
}

/// Conversation rows: the session map's misses and preload, resets, the admin list.
#[async_trait]
pub trait Conversations: Send + Sync + 'static {
    /// Cheap round-trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn conversation(&self, key: &ConversationKey)
        -> Result<Option<Conversation>, StoreError>;
    /// Most recently active first, at most `limit`.
    async fn conversations(&self, limit: u32) -> Result<Vec<Conversation>, StoreError>;
    /// Conversation keys greater than `after`, in key order, at most `limit`: pages
    /// through every key without holding the store for long.
    async fn conversation_keys(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError>;
    async fn conversations_by_session(
        &self,
        agent_session: &str,
    ) -> Result<Vec<Conversation>, StoreError>;
}

/// The record of what happened: a change's [`Commit`] (conversations, transcript
/// rows, outbox events in one transaction), and the transcript read back.
#[async_trait]
pub trait Transcripts: Send + Sync + 'static {
    /// Applies a [`Commit`] atomically.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    /// `commit` and the journal's move of turn `turn` to `state`, in one transaction.
    async fn commit_turn(
        &self,
        commit: Commit,
        turn: &str,
        state: TurnState,
    ) -> Result<(), StoreError>;

    /// `false` while the store knows that no enabled webhook endpoint would take an
    /// event, so a caller may skip building events a commit would drop anyway. A hint
    /// for the hot path, never a promise: a commit still decides by itself.
    fn wants_events(&self) -> bool {
        true
    }

    /// Transcript rows of an agent session at or after `since`, oldest first.
    async fn history(
        &self,
        agent_session: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<TranscriptEntry>, StoreError>;
    /// One page of an agent session's transcript: rows at or after `since`, oldest
    /// first (`history`'s order), following the row with id `after`, at most `limit`
    /// (an index range on the session).
    async fn history_page(
        &self,
        agent_session: &str,
        since: Option<OffsetDateTime>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError>;
    /// Deletes transcript rows older than `before`; returns how many.
    async fn purge_transcripts(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
}

/// Platform event ids already handled (Slack retries, followed threads).
#[async_trait]
pub trait Sightings: Send + Sync + 'static {
    /// Records a platform event id (e.g. `slack:Ev123`); `true` the first time it is
    /// seen, `false` for every later sighting until it expires — across restarts and
    /// replicas, because the store's unique key decides.
    async fn first_sighting(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Records `key` like [`Sightings::first_sighting`] without waiting for the
    /// answer: the write happens in the background, no later than any commit made
    /// after this call returns. For marks nobody waits on (a thread the bot answered
    /// in).
    fn note_sighting(&self, key: String, expires_at: OffsetDateTime);
    /// Whether `key` has a sighting that has not expired (read only).
    async fn seen(&self, key: &str) -> Result<bool, StoreError>;
    /// Forgets sightings that expired before `now`, and expired turn tickets (a dead
    /// replica's, see [`TurnQueue`]); returns how many.
    async fn purge_sightings(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}

/// The cross-replica order of a conversation's turns (a shared PostgreSQL).
#[async_trait]
pub trait TurnQueue: Send + Sync + 'static {
    /// `true` when other processes may run turns on the same data (a shared
    /// PostgreSQL): then the relay orders turns through the tickets below and reloads
    /// a conversation from the store before each turn.
    fn is_shared(&self) -> bool {
        false
    }
    /// Takes a ticket in the conversation's cross-replica queue, ordered by
    /// `received` (when the message arrived) and then by ticket id.
    async fn turn_enter(
        &self,
        conversation: &ConversationKey,
        received: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<i64, StoreError>;
    /// Extends the ticket to `expires_at` and answers whether it is the oldest live
    /// ticket of its conversation (a ticket past its expiry no longer counts: its
    /// replica died).
    async fn turn_is_next(
        &self,
        conversation: &ConversationKey,
        ticket: i64,
        received: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Gives the ticket back (the turn is done).
    async fn turn_leave(&self, ticket: i64) -> Result<(), StoreError>;
    /// Extends the tickets to `expires_at` (their turns are still running here).
    async fn turn_extend(
        &self,
        tickets: &[i64],
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError>;
}

/// The store roles a relay works with, handed over together by `app`.
#[derive(Clone)]
pub struct RelayStore {
    pub conversations: Arc<dyn Conversations>,
    pub transcripts: Arc<dyn Transcripts>,
    pub turns: Arc<dyn TurnQueue>,
    pub journal: Arc<dyn Journal>,
}

/// A turn as the journal holds it: the message, where its answer goes (the
/// platform's own description, [`ChatSink::reply_to`]) and when it arrived.
#[derive(Debug, Clone)]
pub struct JournalTurn {
    /// [`Inbound::turn_id`]: the same for every delivery of one message.
    pub id: String,
    /// Shared with the turn that answers it: journaling copies no text.
    pub msg: Arc<Inbound>,
    pub reply_to: String,
    pub received: OffsetDateTime,
}

/// A recent turn as a catch-up needs it (`Journal::recent_turns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentTurn {
    /// [`ChatSink::reply_to`] of the turn.
    pub reply_to: String,
    pub message_id: String,
    /// [`Inbound::workspace`] (a Discord guild; empty for a DM).
    pub workspace: String,
}

/// Where a journaled turn stands. Only the relay moves a turn: `Accepted` when it is
/// taken (before the platform's acknowledgement), then `Answered` or `Failed` in the
/// turn's own record (one transaction with its transcript and events), or
/// `Abandoned` by recovery when it is older than `RECOVERY_WINDOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnState {
    Accepted,
    Answered,
    Failed,
    Abandoned,
}

impl TurnState {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnState::Accepted => "accepted",
            TurnState::Answered => "answered",
            TurnState::Failed => "failed",
            TurnState::Abandoned => "abandoned",
        }
    }
}

/// The turn journal (SPEC §3): nothing accepted is lost.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Records an accepted turn; `false` when the message is journaled already (a
    /// redelivery: answered, or being answered, once).
    async fn accept_turn(&self, turn: JournalTurn) -> Result<bool, StoreError>;
    /// The turns of `platform` still `Accepted` and untouched since
    /// `untouched_since` (left by a process that is gone), oldest first, at most
    /// `limit`.
    async fn open_turns(
        &self,
        platform: Platform,
        untouched_since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<JournalTurn>, StoreError>;
    /// Takes such a turn for this process; `false` when another one took it first.
    async fn claim_turn(
        &self,
        id: &str,
        untouched_since: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Where every turn of `platform` received since `since` was answered.
    async fn recent_turns(
        &self,
        platform: Platform,
        since: OffsetDateTime,
    ) -> Result<Vec<RecentTurn>, StoreError>;
    /// Marks this replica's turns in flight as alive (a shared store: see
    /// `claim_turn`).
    async fn touch_turns(&self, ids: &[String]) -> Result<(), StoreError>;
    /// Moves a turn on (with no record to go with it: a command, a recovery).
    async fn end_turn(&self, id: &str, state: TurnState) -> Result<(), StoreError>;
    /// Whether turn `id`, received at or after `since`, has ended `answered` or
    /// `failed` (read only).
    async fn turn_ended(&self, id: &str, since: OffsetDateTime) -> Result<bool, StoreError>;
}

/// A named lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    /// The process holding it (a replica id).
    pub owner: String,
    /// When it is free again unless renewed.
    pub expires_at: OffsetDateTime,
}

/// Named leases shared by the processes of one store (SPEC §4: a Discord shard on one
/// replica at a time, live replicas, IDENTIFY pacing). The store's unique key decides
/// between processes racing for one lease.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// `true` when other processes may share the store (PostgreSQL); on a store of its
    /// own a process needs no leases.
    fn is_shared(&self) -> bool;
    /// Every lease whose name starts with `prefix`, by name, expired ones included.
    async fn leases(&self, prefix: &str) -> Result<Vec<Lease>, StoreError>;
    /// Takes `name` for `owner` until `until` when it is free, expired, or `owner`'s
    /// already (a renewal); `true` when held.
    async fn hold_lease(
        &self,
        name: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Like [`Leases::hold_lease`], but only when free or expired, even for `owner`:
    /// one use of a rate (an IDENTIFY slot), not a claim to renew.
    async fn hold_free_lease(
        &self,
        name: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Gives `name` back, when `owner` holds it.
    async fn drop_lease(&self, name: &str, owner: &str) -> Result<(), StoreError>;
}
