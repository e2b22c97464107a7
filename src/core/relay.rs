//! The relay: takes an [`Inbound`] message and a [`ChatSink`], puts the turn in its
//! conversation's lane, and runs it — a command answered by the bridge, or a call to
//! the agent whose answer goes back through the sink — then writes the conversation,
//! the transcript and the turn's events in one store commit.
//!
//! A turn never delivers webhooks itself: it only writes outbox rows, and
//! `webhook::worker` delivers them, so a slow endpoint can never slow a reply.
//! A failure never escapes a turn: it becomes `ERROR_REPLY`, a `reply.failed` event
//! and one `warn!` with the cause.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::{FutureExt, StreamExt};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, warn, Instrument};
use uuid::Uuid;

use super::access::{Access, AccessSettings, Verdict};
use super::commands::{self, Command, Parsed, HELP_TEXT};
use super::events::{
    ConversationRef, ConversationTurn, EventKind, FeedbackGiven, OutboxEvent, PersonalityChanged,
    ReplyFailed, SessionReset,
};
use super::lanes::{Admission, Lanes};
use super::message::{ConversationKey, Inbound, Platform, SessionScope};
use super::metrics::Metrics;
use super::ports::{
    Agent, AgentAnswer, AgentError, AgentRequest, AnswerEvent, AnswerFeed, AnswerStream, ChatSink,
    Commit, Conversation, FeedbackClick, FeedbackEntry, FeedbackStore, HistoryTurn, JournalTurn,
    RecentTurn, RelayStore, Resume, Resumed, Role, StoreError, TranscriptEntry, TurnState,
};
use super::sessions::SessionMap;

/// How long [`Relay::submit_once`] holds a platform's acknowledgement while every
/// slot is taken, before answering busy (Slack wants its 200 within 3 s).
pub const INTAKE_WAIT: Duration = Duration::from_secs(1);

/// How often a turn waiting behind another replica's turn asks the store again.
const QUEUE_POLL: Duration = Duration::from_millis(20);

/// What users over `USER_RATE_LIMIT` see.
pub const RATE_LIMITED_REPLY: &str =
    "You're sending messages faster than I can answer them. Please wait a moment and try again.";

/// What users see when every slot is taken.
pub const BUSY_REPLY: &str =
    "I'm handling a lot of requests right now. Please try again in a moment.";

/// What follows the text of an answer the agent stopped writing half-way.
pub const CUT_NOTE: &str = "\n\n_(the answer was cut off: the agent failed)_";

/// What follows the text of an answer ended by `stop` or by shutdown.
pub const STOPPED_NOTE: &str = " (stopped)";

/// The answer to `stop` with nothing in flight.
pub const NOTHING_TO_STOP: &str = "There is no answer being written here to stop.";

/// The answer to `stop` that ended an answer.
/// Journaled turns read per recovery: more than any crash leaves behind.
const RECOVERY_BATCH: u32 = 10_000;

/// With replicas sharing the store: a journaled turn untouched this long belongs to
/// a replica that is gone (a live one touches its turns every [`TOUCH_EVERY`]).
const TAKEOVER_AFTER: time::Duration = time::Duration::seconds(30);

/// How often a replica touches its journaled turns in flight (shared store only).
pub const TOUCH_EVERY: Duration = Duration::from_secs(10);

pub const STOPPED_REPLY: &str = "Stopped.";

/// A conversation is told about a rate limit or a busy bridge at most this often.
const NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// Conversations whose last notice is remembered before old ones are forgotten.
const NOTICES_KEPT: usize = 10_000;

/// How long the drain waits for cut answers to be recorded after the deadline.
const CUT_GRACE: Duration = Duration::from_secs(3);

/// How an answer ended.
enum End {
    Complete(AgentAnswer),
    /// The backend failed (before any text, or half-way).
    Failed(AgentError),
    /// `stop`, or the shutdown deadline.
    Stopped,
}

/// An answer as far as it was written, and how it ended.
struct Written {
    text: String,
    end: End,
}

/// The relay's part of the configuration.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub scope: SessionScope,
    /// `ERROR_REPLY`.
    pub error_reply: String,
    /// `AGENT_PERSONALITY`, used when a conversation has not chosen one.
    pub default_personality: Option<String>,
    /// `AGENT_MAX_RESULTS`.
    pub max_results: u32,
    /// `AGENT_MAX_CONCURRENCY`: agent calls in flight at once.
    pub max_concurrency: usize,
    /// Turns that may wait for a slot beyond those in flight; past it users get
    /// [`BUSY_REPLY`].
    pub queue_capacity: usize,
    /// `ALLOWED_CHANNELS`, `BLOCKED_USERS`, `USER_RATE_LIMIT`.
    pub access: AccessSettings,
    /// `STREAM_EDIT_INTERVAL_MS`: least time between two updates of a streamed answer.
    pub edit_interval: Duration,
    /// `MAX_REPLY_MESSAGES`.
    pub max_reply_messages: usize,
    /// `FEEDBACK_BUTTONS`: answers carry the turn id their 👍/👎 buttons report.
    pub feedback_buttons: bool,
    /// `AGENT_HISTORY_TURNS` / `AGENT_HISTORY_CHARS`: memory sent to a backend that
    /// keeps none.
    pub history_turns: usize,
    pub history_chars: usize,
    /// `RECOVERY_WINDOW`: how old a journaled turn may be and still be answered by
    /// [`Relay::recover`].
    pub recovery_window: Duration,
}

impl RelaySettings {
    /// The queue holds four turns per concurrent slot: enough to absorb a burst in one
    /// busy channel, small enough that nobody waits minutes behind a stuck agent.
    pub fn queue_for(max_concurrency: usize) -> usize {
        max_concurrency.saturating_mul(4).max(8)
    }
}

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The queue is full; the user has been sent [`BUSY_REPLY`].
    Busy,
    /// Shutdown has begun; the platform should let its peer retry elsewhere.
    ShuttingDown,
    /// The turn could not be journaled (the store is down): the platform should let
    /// its peer retry, since nothing was taken.
    Unavailable,
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The agent answered and the answer was posted.
    Answered,
    /// A command was answered by the bridge.
    Command,
    /// The agent, the store or the platform failed; the user got `ERROR_REPLY` if
    /// the platform let us post it.
    Failed,
    /// The turn was lost without an outcome (it panicked).
    Lost,
    /// Not relayed: a channel outside `ALLOWED_CHANNELS` or a blocked user.
    Ignored,
    /// Not relayed: the user is over `USER_RATE_LIMIT` and was told so.
    RateLimited,
    /// Not relayed: the platform delivered this message before (`submit_once`).
    Duplicate,
}

/// Resolves when the turn has been answered; dropping it changes nothing.
pub struct TurnHandle(oneshot::Receiver<TurnOutcome>);

impl TurnHandle {
    pub async fn outcome(self) -> TurnOutcome {
        self.0.await.unwrap_or(TurnOutcome::Lost)
    }
}

/// Cheap to clone: every platform and the HTTP server hold one.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

/// A turn's place in the journal.
enum Journaling {
    /// Not journaled: nothing could answer it in another process (the console, an
    /// API reset).
    Off,
    /// To be journaled when it starts (Discord: no acknowledgement waits for it, and
    /// its lane keeps the arrival order); a message journaled already is a duplicate.
    Pending(JournalTurn),
    /// Journaled before the platform was acknowledged (Slack), or by an earlier
    /// process (a recovered turn).
    Accepted(String),
}

impl Journaling {
    fn for_message(msg: &Arc<Inbound>, sink: &dyn ChatSink, received: OffsetDateTime) -> Self {
        match sink.reply_to() {
            Some(reply_to) => Journaling::Pending(JournalTurn {
                id: msg.turn_id(),
                msg: msg.clone(),
                reply_to,
                received,
            }),
            None => Journaling::Off,
        }
    }

    /// The id of a turn already in the journal.
    fn accepted(&self) -> Option<String> {
        match self {
            Journaling::Accepted(id) => Some(id.clone()),
            _ => None,
        }
    }
}

struct Turn {
    key: ConversationKey,
    msg: Arc<Inbound>,
    journal: Journaling,
    sink: Arc<dyn ChatSink>,
    received: OffsetDateTime,
    /// Told how the turn ended; the receiver may be gone.
    done: oneshot::Sender<TurnOutcome>,
    /// `DELETE /sessions/{id}`: reset the conversation in its lane, so a turn in
    /// flight cannot undo it.
    api_reset: bool,
}

/// The sink of a lane job that answers nobody (an API reset).
struct Silent;

#[async_trait::async_trait]
impl ChatSink for Silent {
    async fn send(&self, _text: &str) -> Result<Vec<String>, super::ports::SinkError> {
        Ok(Vec::new())
    }
}

struct Inner {
    agent: Arc<dyn Agent>,
    store: RelayStore,
    sessions: SessionMap,
    lanes: Lanes<Turn>,
    /// One permit per agent call in flight, across all conversations
    /// (`AGENT_MAX_CONCURRENCY`). Lane workers wait here, in FIFO order.
    permits: Arc<Semaphore>,
    settings: RelaySettings,
    access: Access,
    metrics: Arc<Metrics>,
    /// Every lane worker, turn and busy reply; shutdown waits for it to empty.
    tracker: TaskTracker,
    /// Cleared by [`Relay::close`]: from then on `submit` refuses new turns.
    accepting: AtomicBool,
    /// The answer being written in each conversation: cancelling it (`stop`, or the
    /// shutdown deadline) ends the answer with what was shown so far.
    in_flight: DashMap<ConversationKey, CancellationToken>,
    /// When this relay started: journaled turns from before it were taken by
    /// another process.
    started: OffsetDateTime,
    /// The journaled turns this process holds (queued or running), touched every
    /// [`TOUCH_EVERY`] on a shared store so no other replica takes them over.
    holding: DashMap<String, ()>,
    /// The cross-replica queue tickets this process holds (shared store), extended
    /// with the journal's touch: a dead replica's tickets stop counting within
    /// `TAKEOVER_AFTER`, so the turns it left are not held up behind its own.
    tickets: DashMap<i64, ()>,
    /// When each conversation was last told about a rate limit or a busy bridge:
    /// at most one such notice a minute per conversation (a flood gets one answer).
    notices: DashMap<ConversationKey, Instant>,
    /// Where 👍/👎 clicks are kept; set once by the composition root.
    feedback: std::sync::OnceLock<Arc<dyn FeedbackStore>>,
}

impl Relay {
    pub fn new(agent: Arc<dyn Agent>, store: RelayStore, mut settings: RelaySettings) -> Self {
        let max_concurrency = settings.max_concurrency.max(1);
        let capacity = max_concurrency.saturating_add(settings.queue_capacity);
        let relay = Relay {
            inner: Arc::new(Inner {
                agent,
                sessions: SessionMap::new(store.conversations.clone(), store.turns.is_shared()),
                store,
                lanes: Lanes::new(capacity),
                permits: Arc::new(Semaphore::new(max_concurrency)),
                access: Access::new(std::mem::take(&mut settings.access)),
                metrics: Arc::new(Metrics::default()),
                settings,
                tracker: TaskTracker::new(),
                accepting: AtomicBool::new(true),
                in_flight: DashMap::new(),
                notices: DashMap::new(),
                started: OffsetDateTime::now_utc(),
                holding: DashMap::new(),
                tickets: DashMap::new(),
                feedback: std::sync::OnceLock::new(),
            }),
        };
        if relay.inner.store.turns.is_shared() {
            tokio::spawn(touch_turns(Arc::downgrade(&relay.inner)));
        }
        relay
    }

    /// Queues a message behind the earlier turns of its conversation and returns at
    /// once. When the queue is full the user is told so through `sink`.
    pub fn submit(&self, msg: Inbound, sink: Arc<dyn ChatSink>) -> Result<TurnHandle, Rejected> {
        if !self.is_accepting() {
            return Err(Rejected::ShuttingDown);
        }
        let (done, handle) = oneshot::channel();
        let msg = Arc::new(msg);
        let journal = Journaling::for_message(&msg, &*sink, OffsetDateTime::now_utc());
        self.inner.enqueue(msg, sink, done, false, journal)?;
        Ok(TurnHandle(handle))
    }

    /// For a platform that acknowledges a message before working on it (Slack): waits
    /// up to [`INTAKE_WAIT`] for room among the accepted turns — so an overloaded
    /// bridge slows its acknowledgements down instead of piling up work — then
    /// journals the turn (awaited: the acknowledgement follows the journal; a message
    /// journaled already is a duplicate). A turn the sink cannot journal runs `first`
    /// (the platform's own dedupe write) in the background instead; a journaled one
    /// never calls it (the journal's id is the message's: it deduplicates by itself).
    /// Either way the turn is queued as [`Relay::submit`] does only if it is a first
    /// delivery; a duplicate ends as [`TurnOutcome::Duplicate`]. Still no room: a first
    /// delivery gets [`BUSY_REPLY`]. A message taken here is not refused by a shutdown
    /// that begins later: the drain waits for it like for any turn.
    pub async fn submit_once<F, Fut>(
        &self,
        msg: Inbound,
        sink: Arc<dyn ChatSink>,
        first: F,
    ) -> Result<TurnHandle, Rejected>
    where
        F: FnOnce(&Inbound) -> Fut,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let inner = &self.inner;
        if !self.is_accepting() {
            return Err(Rejected::ShuttingDown);
        }
        let reserved = inner.lanes.try_reserve() || inner.lanes.reserve_within(INTAKE_WAIT).await;
        if !reserved {
            warn!(
                pending = inner.lanes.pending(),
                "no room for the turn, answering busy"
            );
            // Only a first delivery is told: a duplicate was answered already.
            let key = ConversationKey::derive(inner.settings.scope, &msg);
            inner.answer_busy(&key, sink, first(&msg));
            return Err(Rejected::Busy);
        }
        if !self.is_accepting() {
            inner.lanes.release();
            return Err(Rejected::ShuttingDown);
        }
        let (done, handle) = oneshot::channel();
        let msg = Arc::new(msg);
        // In the journal before the acknowledgement: from here on, a crash loses
        // nothing (the next start answers it). A message journaled already is a
        // redelivery.
        let journal = match Journaling::for_message(&msg, &*sink, OffsetDateTime::now_utc()) {
            Journaling::Pending(turn) if inner.access.refusal(&msg).is_none() => {
                let id = turn.id.clone();
                match inner.store.journal.accept_turn(turn).await {
                    Ok(true) => {
                        inner.holding.insert(id.clone(), ());
                        Journaling::Accepted(id)
                    }
                    Ok(false) => {
                        inner.lanes.release();
                        inner.metrics.turn_ended(TurnOutcome::Duplicate);
                        let _ = done.send(TurnOutcome::Duplicate);
                        return Ok(TurnHandle(handle));
                    }
                    Err(e) => {
                        inner.lanes.release();
                        warn!(error = %e, "could not journal the turn; asking the platform to retry");
                        return Err(Rejected::Unavailable);
                    }
                }
            }
            other => other,
        };
        if matches!(journal, Journaling::Accepted(_)) {
            // Never busy: the slot is already reserved.
            let _ = inner.enqueue(msg, sink, done, true, journal);
            return Ok(TurnHandle(handle));
        }
        let first = first(&msg);
        let worker = inner.clone();
        inner.tracker.spawn(async move {
            if first.await {
                // Never busy: the slot is already reserved.
                let _ = worker.enqueue(msg, sink, done, true, journal);
            } else {
                // Answered already (the sighting says so); not journaled, so no
                // journal row to move.
                worker.lanes.release();
                worker.metrics.turn_ended(TurnOutcome::Duplicate);
                let _ = done.send(TurnOutcome::Duplicate);
            }
        });
        Ok(TurnHandle(handle))
    }

    /// Answers the turns of `platform` a previous process accepted and never answered
    /// (a crash, `kill -9`, downtime), oldest first, each in its conversation's lane;
    /// one older than `window` is given up (`abandoned`: a `reply.failed` event and a
    /// log line). `resume` rebuilds where each answer goes, and finds an answer that
    /// was posted but not recorded. Returns (answered again, abandoned).
    pub async fn recover(
        &self,
        platform: Platform,
        resume: &dyn Resume,
    ) -> Result<(usize, usize), StoreError> {
        let inner = &self.inner;
        let window = inner.settings.recovery_window;
        let now = OffsetDateTime::now_utc();
        let untouched_since = inner.left_since(now);
        let journal = &inner.store.journal;
        let turns = journal
            .open_turns(platform, untouched_since, RECOVERY_BATCH)
            .await?;
        let (mut recovered, mut abandoned) = (0, 0);
        for turn in turns {
            if !journal.claim_turn(&turn.id, untouched_since).await? {
                continue;
            }
            inner.holding.insert(turn.id.clone(), ());
            let age = now - turn.received;
            if age > window {
                warn!(turn = %turn.id, age_secs = age.whole_seconds(), "a turn older than RECOVERY_WINDOW is given up");
                let key = ConversationKey::derive(inner.settings.scope, &turn.msg);
                let msg = &turn.msg;
                let at = conversation_ref(
                    &key,
                    msg.platform,
                    &msg.workspace,
                    &msg.channel,
                    msg.thread.as_deref(),
                );
                let cause = "not answered before the bridge stopped; older than RECOVERY_WINDOW when it came back";
                let event = reply_failed(&key, at, msg, &msg.text, cause, "abandoned", now);
                let commit = Commit {
                    events: vec![event],
                    ..Commit::default()
                };
                inner
                    .record(commit, Some(&turn.id), TurnState::Abandoned)
                    .await;
                inner.metrics.turn_abandoned();
                abandoned += 1;
                continue;
            }
            match resume.resume(&turn).await {
                Resumed::Answer(sink) => {
                    tracing::info!(turn = %turn.id, age_ms = age.whole_milliseconds(), "answering a turn the previous process did not");
                    let (done, _handle) = oneshot::channel();
                    let journal = Journaling::Accepted(turn.id.clone());
                    if inner.enqueue(turn.msg, sink, done, false, journal).is_ok() {
                        inner.metrics.turn_recovered();
                        recovered += 1;
                    }
                }
                Resumed::AlreadyAnswered => {
                    tracing::info!(turn = %turn.id, "its answer was posted before the stop; not posting it again");
                    inner
                        .store
                        .journal
                        .end_turn(&turn.id, TurnState::Answered)
                        .await?;
                }
                Resumed::Unanswerable(why) => {
                    warn!(turn = %turn.id, reason = %why, "a turn cannot be answered after the restart");
                    inner
                        .store
                        .journal
                        .end_turn(&turn.id, TurnState::Failed)
                        .await?;
                }
            }
        }
        Ok((recovered, abandoned))
    }

    /// Journals an async `/agent-query` before its 202: `body` is what recovery needs
    /// to ask again (the request, as the HTTP layer writes it). Returns its turn id.
    pub async fn journal_query(
        &self,
        request_id: &str,
        body: String,
    ) -> Result<String, StoreError> {
        let msg = Inbound {
            platform: Platform::Api,
            workspace: String::new(),
            channel: "agent-query".into(),
            thread: None,
            user: String::new(),
            message_id: request_id.to_owned(),
            text: body,
        };
        let turn = JournalTurn {
            id: msg.turn_id(),
            msg: msg.into(),
            reply_to: String::new(),
            received: OffsetDateTime::now_utc(),
        };
        let id = turn.id.clone();
        self.inner.store.journal.accept_turn(turn).await?;
        self.inner.holding.insert(id.clone(), ());
        Ok(id)
    }

    /// The async queries a stopped process answered 202 and never recorded, claimed
    /// for this one, oldest first: `(turn id, body, received)`. Taken as
    /// [`Relay::recover`] takes chat turns.
    pub async fn left_queries(&self) -> Result<Vec<(String, String, OffsetDateTime)>, StoreError> {
        let inner = &self.inner;
        let untouched_since = inner.left_since(OffsetDateTime::now_utc());
        let journal = &inner.store.journal;
        let mut left = Vec::new();
        for turn in journal
            .open_turns(Platform::Api, untouched_since, RECOVERY_BATCH)
            .await?
        {
            if journal.claim_turn(&turn.id, untouched_since).await? {
                inner.holding.insert(turn.id.clone(), ());
                left.push((turn.id, turn.msg.text.clone(), turn.received));
            }
        }
        Ok(left)
    }

    /// A journaled query's events and its move to `state`, in one transaction.
    pub async fn finish_query(
        &self,
        turn: &str,
        events: Vec<OutboxEvent>,
        state: TurnState,
    ) -> Result<(), StoreError> {
        self.inner.holding.remove(turn);
        let commit = Commit {
            events,
            ..Commit::default()
        };
        self.inner
            .store
            .transcripts
            .commit_turn(commit, turn, state)
            .await
    }

    /// `RECOVERY_WINDOW`.
    pub fn recovery_window(&self) -> Duration {
        self.inner.settings.recovery_window
    }

    /// How often a replica sharing the store looks for another's left turns; `None`
    /// on a store of its own (only the start-up has any).
    pub fn takeover_every(&self) -> Option<Duration> {
        self.inner.store.turns.is_shared().then_some(TOUCH_EVERY)
    }

    /// The turns of `platform` within `RECOVERY_WINDOW`: where a catch-up after
    /// downtime reads.
    pub async fn recent_turns(&self, platform: Platform) -> Result<Vec<RecentTurn>, StoreError> {
        let since = OffsetDateTime::now_utc() - self.inner.settings.recovery_window;
        self.inner.store.journal.recent_turns(platform, since).await
    }

    /// [`Relay::recover`] now and, with replicas sharing the store, again every
    /// [`TOUCH_EVERY`] (a replica that died leaves its turns to the others, taken
    /// within 10 s of going untouched for `TAKEOVER_AFTER`), until
    /// shutdown begins. Logs what it did; runs on its own task.
    pub fn keep_recovering(&self, platform: Platform, resume: Arc<dyn Resume>) {
        let relay = self.clone();
        tokio::spawn(async move {
            loop {
                match relay.recover(platform, &*resume).await {
                    Ok((0, 0)) => {}
                    Ok((answered, abandoned)) => tracing::info!(
                        %platform,
                        answered,
                        abandoned,
                        "turns left by a stopped process recovered"
                    ),
                    Err(e) => warn!(
                        %platform,
                        error = %e,
                        "could not read the turn journal; left turns wait for the next try"
                    ),
                }
                let Some(every) = relay.takeover_every() else {
                    return;
                };
                tokio::time::sleep(every).await;
                if !relay.is_accepting() {
                    return;
                }
            }
        });
    }

    /// Resets every conversation using `agent_session` (`DELETE /sessions/{id}`);
    /// returns how many there were. Each reset runs in its conversation's lane, after
    /// the turns already accepted there, so a turn in flight cannot undo it.
    pub async fn reset_session(&self, agent_session: &str) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let conversations = inner
            .store
            .conversations
            .conversations_by_session(agent_session)
            .await?;
        let mut waits = Vec::with_capacity(conversations.len());
        for conv in conversations {
            waits.push(inner.enqueue_reset(conv));
        }
        let count = waits.len();
        for wait in waits {
            if wait.await != Ok(TurnOutcome::Command) {
                return Err(StoreError::Unavailable("the session reset failed".into()));
            }
        }
        Ok(count)
    }

    /// One agent call outside any conversation (`/agent-query`): `/conversation` when
    /// a session is given, else `/query`. It takes a slot like a chat turn does.
    pub async fn ask(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| AgentError::Unreachable("relay closed".into()))?;
        let started = Instant::now();
        let answer = match req.session_id {
            Some(_) => self.inner.agent.converse(req).await,
            None => self.inner.agent.query(req).await,
        };
        self.inner.metrics.agent_call(started.elapsed());
        answer
    }

    /// [`Relay::ask`] as a stream of pieces (`/agent-query` with `stream`); the slot
    /// is held until the stream is dropped.
    pub async fn ask_stream(&self, req: &AgentRequest) -> Result<AnswerStream, AgentError> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AgentError::Unreachable("relay closed".into()))?;
        let stream = match req.session_id {
            Some(_) => self.inner.agent.converse_stream(req).await?,
            None => self.inner.agent.query_stream(req).await?,
        };
        Ok(Box::pin(stream.map(move |event| {
            let _slot = &permit;
            event
        })))
    }

    /// Where feedback clicks are recorded (set once; later calls are ignored).
    pub fn set_feedback_store(&self, store: Arc<dyn FeedbackStore>) {
        let _ = self.inner.feedback.set(store);
    }

    /// Records a 👍/👎 click: once per user and answer, a second click changes the
    /// value. A new or changed value emits the `feedback` event; `Ok(true)` then.
    pub async fn feedback(&self, click: FeedbackClick) -> Result<bool, StoreError> {
        let Some(store) = self.inner.feedback.get() else {
            return Ok(false);
        };
        if !store.record_feedback(&click).await? {
            return Ok(false);
        }
        if !self.wants_events() {
            return Ok(true);
        }
        let msg = Inbound {
            platform: click.platform,
            workspace: click.workspace.clone(),
            channel: click.channel.clone(),
            thread: click.thread.clone(),
            user: click.user.clone(),
            message_id: click.message_id.clone(),
            text: String::new(),
        };
        let scope = self.inner.settings.scope;
        let key = ConversationKey::derive(scope, &msg);
        // The conversation's current session: the one the answer belongs to unless
        // the conversation was reset since.
        let conv = self.inner.sessions.get(&key, scope, &msg).await?;
        let event = OutboxEvent::new(
            EventKind::Feedback,
            Some(key.to_string()),
            &FeedbackGiven {
                at: conv_ref(&conv),
                session_id: conv.agent_session.clone(),
                turn_id: click.turn_id.clone(),
                user: click.user.clone(),
                value: if click.positive {
                    "positive"
                } else {
                    "negative"
                },
            },
            OffsetDateTime::now_utc(),
        );
        self.record(vec![event]).await?;
        Ok(true)
    }

    /// The feedback on the messages `message_ids` of `channel` (for the history).
    pub async fn feedback_on(
        &self,
        channel: &str,
        message_ids: &[String],
    ) -> Result<Vec<FeedbackEntry>, StoreError> {
        match self.inner.feedback.get() {
            Some(store) => store.feedback_on(channel, message_ids).await,
            None => Ok(Vec::new()),
        }
    }

    /// Stores events that belong to no conversation change (e.g. `query`).
    pub async fn record(&self, events: Vec<OutboxEvent>) -> Result<(), StoreError> {
        self.inner
            .store
            .transcripts
            .commit(Commit {
                events,
                ..Commit::default()
            })
            .await
    }

    /// Runs background work that shutdown must wait for (an async `/agent-query`).
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(work);
    }

    /// `false` while no webhook endpoint would take an event ([`Transcripts::wants_events`](super::ports::Transcripts::wants_events)):
    /// then events need not be built.
    pub fn wants_events(&self) -> bool {
        self.inner.store.transcripts.wants_events()
    }

    /// `false` once shutdown has begun.
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    /// Stops taking new turns; turns already accepted still run.
    pub fn close(&self) {
        self.inner.accepting.store(false, Ordering::Release);
    }

    /// Waits up to `within` for accepted turns to finish; `true` if they all did.
    /// Answers still being written at the deadline are cut (` (stopped)`) and get a
    /// few more seconds to be posted and recorded.
    pub async fn drain(&self, within: Duration) -> bool {
        self.close();
        self.inner.tracker.close();
        if tokio::time::timeout(within, self.inner.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        for entry in self.inner.in_flight.iter() {
            entry.value().cancel();
        }
        tokio::time::timeout(CUT_GRACE, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    /// Turns accepted and not yet answered.
    pub fn pending_turns(&self) -> usize {
        self.inner.lanes.pending()
    }

    /// Loads what the session map needs to skip store reads for new conversations
    /// (see `sessions`); run once in the background at start-up.
    pub async fn preload(&self) {
        self.inner.sessions.preload().await;
    }

    /// Whether [`Relay::preload`] has finished.
    pub fn preloaded(&self) -> bool {
        self.inner.sessions.preloaded()
    }

    /// Conversations held in the in-memory map (the most recent, at most 10k).
    pub fn cached_conversations(&self) -> usize {
        self.inner.sessions.len()
    }

    /// The counters behind `/metrics`; platforms count the events they receive here.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn agent(&self) -> &Arc<dyn Agent> {
        &self.inner.agent
    }

    /// Why `msg` would be ignored (`BLOCKED_USERS`, `ALLOWED_CHANNELS`), for a
    /// platform that must answer anyway (a slash command).
    pub fn refusal(&self, msg: &Inbound) -> Option<super::access::Refusal> {
        self.inner.access.refusal(msg)
    }
}

impl Inner {
    /// A journaled turn untouched since this was left by a process that is gone.
    /// Never a turn of a live process: on a store of its own (SQLite) every turn
    /// from before this start; replicas sharing the store touch their turns in
    /// flight (`touch_turns`), so one untouched for `TAKEOVER_AFTER` is left — by a
    /// replica that died before or after this one started, or by this one's own
    /// previous run.
    fn left_since(&self, now: OffsetDateTime) -> OffsetDateTime {
        match self.store.turns.is_shared() {
            true => now - TAKEOVER_AFTER,
            false => self.started,
        }
    }

    /// Access checks, then the conversation's lane (or the busy reply). `reserved`:
    /// the caller holds a lane slot already (`Lanes::try_reserve`), used or given back
    /// here.
    fn enqueue(
        self: &Arc<Self>,
        msg: Arc<Inbound>,
        sink: Arc<dyn ChatSink>,
        done: oneshot::Sender<TurnOutcome>,
        reserved: bool,
        journal: Journaling,
    ) -> Result<(), Rejected> {
        let verdict = self.access.check(&msg);
        if reserved && verdict != Verdict::Allowed {
            self.lanes.release();
        }
        if verdict != Verdict::Allowed {
            self.end_journal(journal.accepted(), TurnState::Failed);
        }
        match verdict {
            Verdict::Allowed => {}
            Verdict::Ignored => {
                self.metrics.turn_ended(TurnOutcome::Ignored);
                let _ = done.send(TurnOutcome::Ignored);
                return Ok(());
            }
            Verdict::Limited => {
                self.metrics.turn_ended(TurnOutcome::RateLimited);
                tracing::info!(user = %msg.user, platform = %msg.platform, "user over the rate limit");
                let key = ConversationKey::derive(self.settings.scope, &msg);
                let tell = self.may_notify(&key);
                self.tracker.spawn(async move {
                    if tell {
                        if let Err(e) = sink.send(RATE_LIMITED_REPLY).await {
                            warn!(error = %e, "could not post the rate-limit reply");
                        }
                    }
                    let _ = done.send(TurnOutcome::RateLimited);
                });
                return Ok(());
            }
        }
        let key = ConversationKey::derive(self.settings.scope, &msg);
        // `stop` cannot wait in the lane behind the answer it is meant to end.
        if commands::parse(&msg.text) == Parsed::Command(Command::Stop) {
            if reserved {
                self.lanes.release();
            }
            self.end_journal(journal.accepted(), TurnState::Answered);
            let stopped = match self.in_flight.get(&key) {
                Some(token) => {
                    token.cancel();
                    true
                }
                None => false,
            };
            self.metrics.turn_ended(TurnOutcome::Command);
            self.tracker.spawn(async move {
                let reply = if stopped {
                    STOPPED_REPLY
                } else {
                    NOTHING_TO_STOP
                };
                if let Err(e) = sink.send(reply).await {
                    warn!(error = %e, "could not answer `stop`");
                }
                let _ = done.send(TurnOutcome::Command);
            });
            return Ok(());
        }
        let received = match &journal {
            Journaling::Pending(turn) => turn.received,
            _ => OffsetDateTime::now_utc(),
        };
        let turn = Turn {
            key: key.clone(),
            msg,
            journal,
            sink,
            received,
            done,
            api_reset: false,
        };
        let admission = match reserved {
            true => self.lanes.admit_reserved(&key, turn),
            false => self.lanes.admit(&key, turn),
        };
        match admission {
            Admission::StartWorker(turn) => {
                // Boxed: a lane's future holds a whole answer's state machine (agent
                // stream, render, platform calls), and the task's own cell would
                // otherwise copy all of it on every move into and out of the
                // scheduler; a box moves one pointer.
                self.tracker
                    .spawn(Box::pin(self.clone().run_lane(key, turn)));
                Ok(())
            }
            Admission::Queued => Ok(()),
            Admission::Full(turn) => {
                warn!(conversation = %key, pending = self.lanes.pending(), "queue full, answering busy");
                self.end_journal(turn.journal.accepted(), TurnState::Failed);
                self.answer_busy(&key, turn.sink, std::future::ready(true));
                Err(Rejected::Busy)
            }
        }
    }

    /// Whether `key` may be told about a limit now (then it is noted as told).
    fn may_notify(&self, key: &ConversationKey) -> bool {
        let now = Instant::now();
        if self.notices.len() >= NOTICES_KEPT {
            self.notices
                .retain(|_, at| now.duration_since(*at) < NOTICE_INTERVAL);
        }
        let mut told = false;
        self.notices
            .entry(key.clone())
            .and_modify(|at| {
                if now.duration_since(*at) >= NOTICE_INTERVAL {
                    *at = now;
                    told = true;
                }
            })
            .or_insert_with(|| {
                told = true;
                now
            });
        told
    }

    /// Queues an API reset of `conv` in its lane; resolves when it is done. With the
    /// lane full it runs at once instead (an operator's reset is never refused).
    fn enqueue_reset(self: &Arc<Self>, conv: Conversation) -> oneshot::Receiver<TurnOutcome> {
        let (done, wait) = oneshot::channel();
        let key = conv.key.clone();
        let turn = Turn {
            key: key.clone(),
            msg: Arc::new(Inbound {
                platform: conv.platform,
                workspace: conv.workspace,
                channel: conv.channel,
                thread: conv.thread,
                user: conv.user.unwrap_or_default(),
                message_id: String::new(),
                text: String::new(),
            }),
            journal: Journaling::Off,
            sink: Arc::new(Silent),
            received: OffsetDateTime::now_utc(),
            done,
            api_reset: true,
        };
        match self.lanes.admit(&key, turn) {
            Admission::StartWorker(turn) => {
                self.tracker.spawn(self.clone().run_lane(key, turn));
            }
            Admission::Queued => {}
            Admission::Full(turn) => {
                let inner = self.clone();
                self.tracker.spawn(async move { inner.process(turn).await });
            }
        }
        wait
    }

    /// The reset itself: the conversation as stored now loses its agent session,
    /// with a `session.reset` event (`reason: "api"`).
    async fn reset_by_api(&self, key: &ConversationKey) -> Result<(), String> {
        let stored = self
            .store
            .conversations
            .conversation(key)
            .await
            .map_err(|e| e.to_string())?;
        let Some(conv) = stored else {
            return Ok(());
        };
        let (conv, event) = session_reset(conv, "api");
        self.save(conv, event).await
    }

    /// Counts a busy turn and posts [`BUSY_REPLY`] in the background, if `tell`
    /// resolves to `true` and the conversation was not told in the last minute.
    fn answer_busy<F>(&self, key: &ConversationKey, sink: Arc<dyn ChatSink>, tell: F)
    where
        F: Future<Output = bool> + Send + 'static,
    {
        self.metrics.turn_busy();
        let allowed = self.may_notify(key);
        self.tracker.spawn(async move {
            if tell.await && allowed {
                if let Err(e) = sink.send(BUSY_REPLY).await {
                    warn!(error = %e, "could not post the busy reply");
                }
            }
        });
    }

    /// Runs a lane's turns one after another until the lane is empty.
    async fn run_lane(self: Arc<Self>, key: ConversationKey, mut turn: Turn) {
        // With a shared store, other replicas may hold turns of this conversation too:
        // each turn then also takes a ticket in the store's queue and waits for it.
        let shared = self.store.turns.is_shared();
        let mut ticket = match shared {
            true => self.enter_queue(&key, &turn).await,
            false => None,
        };
        loop {
            if let Some(ticket) = ticket {
                self.wait_in_queue(&key, ticket, turn.received).await;
            }
            // A panic in a turn (a bug) must not wedge the conversation: it is caught
            // here and the lane moves on to the next turn. (Its `done` sender is dropped
            // in the unwind, so the submitter sees `TurnOutcome::Lost`.)
            let span = info_span!("turn", conversation = %key, platform = %turn.msg.platform);
            let run = AssertUnwindSafe(self.process(turn).instrument(span)).catch_unwind();
            if let Err(panic) = run.await {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(conversation = %key, panic = %what, "turn panicked");
            }
            let next = self.lanes.next(&key);
            // The next local turn queues *before* this one leaves, so a later turn on
            // another replica cannot slip in between two turns of this lane.
            let next_ticket = match (&next, shared) {
                (Some(next), true) => self.enter_queue(&key, next).await,
                _ => None,
            };
            if let Some(ticket) = ticket {
                self.tickets.remove(&ticket);
                if let Err(e) = self.store.turns.turn_leave(ticket).await {
                    warn!(error = %e, "could not leave the turn queue; the ticket will expire");
                }
            }
            match next {
                Some(next) => {
                    turn = next;
                    ticket = next_ticket;
                }
                None => return,
            }
        }
    }

    /// Takes a ticket for `turn` in the store's cross-replica queue. On a store error
    /// the turn runs without one: order across replicas is then best effort, which
    /// beats not answering.
    async fn enter_queue(&self, key: &ConversationKey, turn: &Turn) -> Option<i64> {
        let expires = OffsetDateTime::now_utc() + TAKEOVER_AFTER;
        match self
            .store
            .turns
            .turn_enter(key, turn.received, expires)
            .await
        {
            Ok(ticket) => {
                self.tickets.insert(ticket, ());
                Some(ticket)
            }
            Err(e) => {
                warn!(error = %e, conversation = %key, "could not queue the turn across replicas");
                None
            }
        }
    }

    /// Polls until the ticket is the oldest live one of its conversation. Each poll
    /// extends the ticket (and the touch loop does, while the turn runs), so a ticket
    /// never expires while its replica lives; a dead replica's stop counting
    /// `TAKEOVER_AFTER` after the last extension.
    async fn wait_in_queue(&self, key: &ConversationKey, ticket: i64, received: OffsetDateTime) {
        loop {
            let expires = OffsetDateTime::now_utc() + TAKEOVER_AFTER;
            match self
                .store
                .turns
                .turn_is_next(key, ticket, received, expires)
                .await
            {
                Ok(true) => return,
                Ok(false) => tokio::time::sleep(QUEUE_POLL).await,
                Err(e) => {
                    warn!(error = %e, conversation = %key, "turn queue unavailable; running the turn now");
                    return;
                }
            }
        }
    }

    async fn process(&self, turn: Turn) {
        let Turn {
            key,
            msg,
            journal,
            sink,
            received,
            done,
            api_reset,
        } = turn;
        // A Discord message is journaled as its turn starts; one journaled already
        // (a catch-up read of a message answered live, another replica's delivery) is
        // not answered again.
        let journal = match journal {
            Journaling::Pending(turn) => {
                let id = turn.id.clone();
                match self.store.journal.accept_turn(turn).await {
                    Ok(true) => {
                        self.holding.insert(id.clone(), ());
                        Some(id)
                    }
                    Ok(false) => {
                        tracing::debug!(turn = %id, "journaled already; not answered again");
                        self.metrics.turn_ended(TurnOutcome::Duplicate);
                        let _ = done.send(TurnOutcome::Duplicate);
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "could not journal the turn; answering it anyway");
                        None
                    }
                }
            }
            Journaling::Accepted(id) => Some(id),
            Journaling::Off => None,
        };
        if api_reset {
            let outcome = match self.reset_by_api(&key).await {
                Ok(()) => TurnOutcome::Command,
                Err(e) => {
                    warn!(error = %e, conversation = %key, "could not reset the session");
                    TurnOutcome::Failed
                }
            };
            let _ = done.send(outcome);
            return;
        }
        let sink = &*sink;
        let outcome = match commands::parse(&msg.text) {
            Parsed::Chat(text) => {
                let stop = CancellationToken::new();
                self.in_flight.insert(key.clone(), stop.clone());
                let shown = AtomicBool::new(false);
                let outcome = self
                    .chat(
                        &key,
                        &msg,
                        journal.as_deref(),
                        text,
                        received,
                        sink,
                        &shown,
                        &stop,
                    )
                    .await;
                self.in_flight.remove(&key);
                if shown.load(Ordering::Relaxed) {
                    sink.finished().await;
                }
                outcome
            }
            Parsed::Command(command) => {
                let outcome = self.command(&key, &msg, command, sink).await;
                self.end_journal(journal, TurnState::Answered);
                outcome
            }
        };
        self.metrics.turn_ended(outcome);
        // The submitter may have stopped listening; that is fine.
        let _ = done.send(outcome);
    }

    /// The conversation's earlier turns for a backend without memory: newest kept,
    /// at most `history_turns` exchanges and `history_chars` characters, oldest first.
    async fn history_of(&self, conv: &Conversation) -> Vec<HistoryTurn> {
        let Some(session) = conv.agent_session.as_deref() else {
            return Vec::new();
        };
        let rows = match self.store.transcripts.history(session, None).await {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "could not read the conversation's history; sending none");
                return Vec::new();
            }
        };
        let mut kept = Vec::new();
        let mut chars = 0usize;
        let max_messages = self.settings.history_turns.saturating_mul(2);
        for row in rows.iter().rev() {
            let len = row.content.chars().count();
            if kept.len() >= max_messages || chars + len > self.settings.history_chars {
                break;
            }
            chars += len;
            kept.push(HistoryTurn {
                role: row.role,
                content: row.content.clone(),
            });
        }
        // Never start with an answer whose question was cut off.
        while kept.last().is_some_and(|t| t.role == Role::Assistant) {
            kept.pop();
        }
        kept.reverse();
        kept
    }

    #[allow(clippy::too_many_arguments)]
    async fn chat(
        &self,
        key: &ConversationKey,
        msg: &Inbound,
        journal: Option<&str>,
        query: &str,
        received: OffsetDateTime,
        sink: &dyn ChatSink,
        progress_shown: &AtomicBool,
        stop: &CancellationToken,
    ) -> TurnOutcome {
        let conv = match self.sessions.get(key, self.settings.scope, msg).await {
            Ok(conv) => conv,
            Err(e) => {
                return self
                    .fail(key, msg, journal, query, &e.to_string(), sink)
                    .await
            }
        };
        let history = match self.agent.wants_history() {
            true => self.history_of(&conv).await,
            false => Vec::new(),
        };
        let request = AgentRequest {
            query: query.to_string(),
            session_id: conv.agent_session.clone(),
            personality_id: self.personality_of(&conv),
            max_results: Some(self.settings.max_results),
            history,
        };
        let started = Instant::now();
        // The permit is held for the whole answer: a streaming turn occupies its
        // slot until the last piece.
        let Ok(_permit) = self.permits.acquire().await else {
            return self
                .fail(key, msg, journal, query, "relay closed", sink)
                .await;
        };
        let (text_tx, text_rx) = watch::channel(String::new());
        // Known before the answer is shown: its last message's buttons carry it, and
        // (journaled) the same as the journal's, so a restart finds it again.
        let turn_id = journal.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        let feed = AnswerFeed {
            text: text_rx,
            interval: self.settings.edit_interval,
            max_messages: self.settings.max_reply_messages,
            feedback: self.settings.feedback_buttons.then(|| turn_id.clone()),
            journaled: journal.is_some(),
        };
        let written = async {
            let written = self
                .write_answer(&request, sink, progress_shown, stop, &text_tx)
                .await;
            let final_text = match &written.end {
                End::Complete(_) => written.text.clone(),
                End::Failed(_) if written.text.is_empty() => self.settings.error_reply.clone(),
                End::Failed(_) => format!("{}{CUT_NOTE}", written.text),
                End::Stopped => format!("{}{STOPPED_NOTE}", written.text)
                    .trim_start()
                    .to_string(),
            };
            // The final text is set without a notification (tokio's "silent
            // modification"): closing the channel next wakes the sink, which reads the
            // latest text once it finds the channel closed. One wake-up of the sink
            // and one notification of the channel's eight-way `BigNotify`, not two.
            text_tx.send_if_modified(|shown| {
                if *shown != final_text {
                    shown.clone_from(&final_text);
                }
                false
            });
            drop(text_tx);
            (written, final_text)
        };
        let ((written, final_text), sent) = tokio::join!(written, sink.stream(feed));
        let took = started.elapsed();
        self.metrics.agent_call(took);
        let latency_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);

        let (answer, complete) = match written.end {
            End::Complete(answer) => (Some(answer), true),
            End::Failed(e) if written.text.is_empty() => {
                warn!(error = %e, latency_ms, "agent call failed");
                if let Err(e) = &sent {
                    warn!(error = %e, "could not post the error reply");
                }
                return self
                    .record_failure(key, msg, journal, query, &e.to_string())
                    .await;
            }
            End::Failed(e) => {
                warn!(error = %e, latency_ms, shown = written.text.len(), "agent failed mid-answer; keeping what was shown");
                (None, false)
            }
            End::Stopped => {
                tracing::info!(latency_ms, "answer stopped");
                (None, false)
            }
        };
        let now = OffsetDateTime::now_utc();
        let mut updated = conv;
        // The agent may answer with another session id (a new one after it expired its
        // own); the map follows it.
        let new_session = answer.as_ref().and_then(|a| a.session_id.clone());
        updated.agent_session = new_session.or(updated.agent_session);
        updated.last_activity = now;
        let session = updated.agent_session.clone().unwrap_or_default();
        // Built only for an event: most turns write none.
        let at = || conv_ref(&updated);
        let mut events = Vec::new();
        if self.store.transcripts.wants_events() {
            events.push(OutboxEvent::new(
                EventKind::Conversation,
                Some(key.to_string()),
                &ConversationTurn {
                    at: at(),
                    user: msg.user.clone(),
                    message_id: msg.message_id.clone(),
                    session_id: updated.agent_session.clone(),
                    personality_id: request.personality_id.clone(),
                    turn_id,
                    query: query.to_string(),
                    response: final_text.clone(),
                    complete,
                    latency_ms,
                },
                now,
            ));
        }
        let (outcome, state) = match &sent {
            Ok(_) => (TurnOutcome::Answered, TurnState::Answered),
            Err(e) => {
                warn!(error = %e, "could not post the answer");
                let cause = e.to_string();
                events.push(reply_failed(
                    key,
                    at(),
                    msg,
                    query,
                    &cause,
                    "post_failed",
                    now,
                ));
                (TurnOutcome::Failed, TurnState::Failed)
            }
        };
        let row = |role, content: &str, timestamp, message_id| TranscriptEntry {
            id: 0,
            session_id: session.clone(),
            role,
            content: content.to_string(),
            timestamp,
            platform: msg.platform,
            channel: msg.channel.clone(),
            thread: msg.thread.clone(),
            user: msg.user.clone(),
            message_id,
        };
        let commit = Commit {
            conversations: vec![updated.clone()],
            transcript: vec![
                row(Role::User, query, received, Some(msg.message_id.clone())),
                row(
                    Role::Assistant,
                    &final_text,
                    now,
                    sent.ok().map(|ids| ids.join(",")),
                ),
            ],
            events,
        };
        self.record(commit, journal, state).await;
        tracing::info!(session = %session, latency_ms, complete, "turn answered");
        self.sessions.put(updated);
        outcome
    }

    /// Reads the agent's answer into `text` as it is written, with the progress
    /// indicator beside the wait for the first piece, until the answer ends, fails or
    /// `stop` fires.
    async fn write_answer(
        &self,
        request: &AgentRequest,
        sink: &dyn ChatSink,
        progress_shown: &AtomicBool,
        stop: &CancellationToken,
        text: &watch::Sender<String>,
    ) -> Written {
        let mut written = String::new();
        let opening = async {
            let mut stream = self.agent.converse_stream(request).await?;
            // The first piece with text (or the end) ends the wait the indicator covers.
            let mut early = Vec::new();
            loop {
                match stream.next().await {
                    Some(Ok(AnswerEvent::Delta(piece))) if piece.is_empty() => {}
                    Some(event) => {
                        early.push(event);
                        break;
                    }
                    None => break,
                }
            }
            Ok::<_, AgentError>((stream, early))
        };
        let opened = tokio::select! {
            opened = with_progress(sink, progress_shown, opening) => opened,
            () = stop.cancelled() => return Written { text: written, end: End::Stopped },
        };
        let (mut stream, early) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                return Written {
                    text: written,
                    end: End::Failed(e),
                }
            }
        };
        let mut pending = early.into_iter();
        // An event read ahead: it was ready when the pieces before it were taken.
        let mut ahead = None;
        loop {
            let event = match ahead.take() {
                Some(event) => event,
                None => match pending.next() {
                    Some(event) => Some(event),
                    None => tokio::select! {
                        event = stream.next() => event,
                        () = stop.cancelled() => return Written { text: written, end: End::Stopped },
                    },
                },
            };
            match event {
                Some(Ok(AnswerEvent::Delta(piece))) => {
                    if piece.is_empty() {
                        continue;
                    }
                    written.push_str(&piece);
                    // What the agent has sent already goes out with this piece: one
                    // publication, one wake of the sink. An end that is there too is
                    // published by the caller, with the final text. (Not once `stop`
                    // fired: the next round's select sees it.)
                    let ready = match stop.is_cancelled() {
                        true => None,
                        false => stream.next().now_or_never(),
                    };
                    match ready {
                        Some(next) => ahead = Some(next),
                        None => {
                            text.send_replace(written.clone());
                        }
                    }
                }
                Some(Ok(AnswerEvent::Done(answer))) => {
                    // The whole answer is the backend's word; it normally equals the
                    // pieces.
                    let end_text = if answer.response.is_empty() {
                        written
                    } else {
                        answer.response.clone()
                    };
                    return Written {
                        text: end_text,
                        end: End::Complete(answer),
                    };
                }
                Some(Err(e)) => {
                    return Written {
                        text: written,
                        end: End::Failed(e),
                    }
                }
                None => {
                    let e = AgentError::Malformed("the answer ended before it was complete".into());
                    return Written {
                        text: written,
                        end: End::Failed(e),
                    };
                }
            }
        }
    }

    async fn command(
        &self,
        key: &ConversationKey,
        msg: &Inbound,
        command: Command,
        sink: &dyn ChatSink,
    ) -> TurnOutcome {
        let reply = match command {
            Command::Help => Ok(HELP_TEXT.to_string()),
            // Answered in `enqueue`, before the lane; not reached.
            Command::Stop => Ok(NOTHING_TO_STOP.to_string()),
            Command::Reset => self.reset(key, msg).await,
            Command::Personality(None) => self.list_personalities(key, msg).await,
            Command::Personality(Some(id)) => self.set_personality(key, msg, id).await,
        };
        let text = match reply {
            Ok(text) => text,
            Err(cause) => {
                warn!(error = %cause, "command failed");
                self.settings.error_reply.clone()
            }
        };
        if let Err(e) = sink.send(&text).await {
            warn!(error = %e, "could not post the command's answer");
        }
        TurnOutcome::Command
    }

    async fn reset(&self, key: &ConversationKey, msg: &Inbound) -> Result<String, String> {
        let conv = self.load(key, msg).await?;
        let (conv, event) = session_reset(conv, "command");
        self.save(conv, event).await?;
        Ok("Done. Your next message starts a new conversation.".into())
    }

    async fn list_personalities(
        &self,
        key: &ConversationKey,
        msg: &Inbound,
    ) -> Result<String, String> {
        let conv = self.load(key, msg).await?;
        let list = {
            let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
            self.agent
                .personalities()
                .await
                .map_err(|e| e.to_string())?
        };
        let current = self.personality_of(&conv);
        let mut text = String::from("Personalities:\n");
        for p in &list {
            let marker = if current.as_deref() == Some(p.id.as_str()) {
                " (current)"
            } else {
                ""
            };
            text.push_str(&format!("• `{}` — {}{marker}\n", p.id, p.name));
        }
        if list.is_empty() {
            text.push_str("(the agent offers none)\n");
        }
        text.push_str("Say `personality <id>` to switch.");
        Ok(text)
    }

    async fn set_personality(
        &self,
        key: &ConversationKey,
        msg: &Inbound,
        id: String,
    ) -> Result<String, String> {
        let mut conv = self.load(key, msg).await?;
        // An unknown id would make every later turn fail at the agent; check it while
        // the user is here to see the mistake. If the agent cannot list personalities,
        // trust the user rather than refuse.
        let known = {
            let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
            self.agent.personalities().await
        };
        match known {
            Ok(list) if !list.iter().any(|p| p.id == id) => {
                let ids: Vec<_> = list.iter().map(|p| format!("`{}`", p.id)).collect();
                return Ok(format!(
                    "I don't know the personality `{id}`. Available: {}.",
                    ids.join(", ")
                ));
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not list personalities; accepting the id as given"),
        }
        let now = OffsetDateTime::now_utc();
        let previous = self.personality_of(&conv);
        conv.personality = Some(id.clone());
        conv.last_activity = now;
        let event = OutboxEvent::new(
            EventKind::PersonalityChange,
            Some(key.to_string()),
            &PersonalityChanged {
                at: conv_ref(&conv),
                user: Some(msg.user.clone()),
                previous,
                new: id.clone(),
            },
            now,
        );
        self.save(conv, event).await?;
        Ok(format!(
            "From now on this conversation uses the personality `{id}`."
        ))
    }

    /// Commits a command's change of a conversation with its event, then caches it.
    async fn save(&self, conv: Conversation, event: OutboxEvent) -> Result<(), String> {
        let commit = Commit {
            conversations: vec![conv.clone()],
            transcript: vec![],
            events: vec![event],
        };
        self.store
            .transcripts
            .commit(commit)
            .await
            .map_err(|e| e.to_string())?;
        self.sessions.put(conv);
        Ok(())
    }

    async fn load(&self, key: &ConversationKey, msg: &Inbound) -> Result<Conversation, String> {
        self.sessions
            .get(key, self.settings.scope, msg)
            .await
            .map_err(|e| e.to_string())
    }

    fn personality_of(&self, conv: &Conversation) -> Option<String> {
        conv.personality
            .clone()
            .or_else(|| self.settings.default_personality.clone())
    }

    /// Answers `ERROR_REPLY` and records a `reply.failed` event.
    async fn fail(
        &self,
        key: &ConversationKey,
        msg: &Inbound,
        journal: Option<&str>,
        query: &str,
        cause: &str,
        sink: &dyn ChatSink,
    ) -> TurnOutcome {
        if let Err(e) = sink.send(&self.settings.error_reply).await {
            warn!(error = %e, "could not post the error reply");
        }
        self.record_failure(key, msg, journal, query, cause).await
    }

    /// Records a `reply.failed` event for a turn that got `ERROR_REPLY`.
    async fn record_failure(
        &self,
        key: &ConversationKey,
        msg: &Inbound,
        journal: Option<&str>,
        query: &str,
        cause: &str,
    ) -> TurnOutcome {
        // Where the message was (its thread too, whatever the session scope).
        let at = conversation_ref(
            key,
            msg.platform,
            &msg.workspace,
            &msg.channel,
            msg.thread.as_deref(),
        );
        let now = OffsetDateTime::now_utc();
        let event = reply_failed(key, at, msg, query, cause, "agent_error", now);
        let commit = Commit {
            events: vec![event],
            ..Commit::default()
        };
        self.record(commit, journal, TurnState::Failed).await;
        TurnOutcome::Failed
    }

    /// A turn's record, and its journal move when it is journaled, in one transaction.
    async fn record(&self, commit: Commit, journal: Option<&str>, state: TurnState) {
        let Some(turn) = journal else {
            return self.commit(commit).await;
        };
        self.holding.remove(turn);
        let transcripts = &self.store.transcripts;
        if let Err(e) = transcripts.commit_turn(commit, turn, state).await {
            tracing::error!(error = %e, turn, "could not record the turn");
        }
    }

    /// Moves a journaled turn on with nothing else to record (a command, a turn that
    /// was not relayed). In the background: nothing waits for it.
    fn end_journal(&self, journal: Option<String>, state: TurnState) {
        let Some(turn) = journal else {
            return;
        };
        self.holding.remove(&turn);
        let journal_store = self.store.journal.clone();
        self.tracker.spawn(async move {
            if let Err(e) = journal_store.end_turn(&turn, state).await {
                warn!(error = %e, turn, "could not move the turn on in the journal");
            }
        });
    }

    /// A turn has already been answered when it commits; a store failure here loses
    /// the record, not the reply, so it is logged loudly and the turn goes on.
    async fn commit(&self, commit: Commit) {
        if let Err(e) = self.store.transcripts.commit(commit).await {
            tracing::error!(error = %e, "could not record the turn");
        }
    }
}

/// Shared store only: every [`TOUCH_EVERY`], marks the journaled turns and the queue
/// tickets this replica holds as alive, so no other replica takes them over or waits
/// behind them once it is gone; ends with the relay.
async fn touch_turns(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(TOUCH_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let tickets: Vec<i64> = inner.tickets.iter().map(|e| *e.key()).collect();
        if !tickets.is_empty() {
            let expires = OffsetDateTime::now_utc() + TAKEOVER_AFTER;
            if let Err(e) = inner.store.turns.turn_extend(&tickets, expires).await {
                warn!(error = %e, tickets = tickets.len(), "could not extend the turn queue tickets");
            }
        }
        let ids: Vec<String> = inner.holding.iter().map(|e| e.key().clone()).collect();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = inner.store.journal.touch_turns(&ids).await {
            warn!(error = %e, turns = ids.len(), "could not mark the turns in flight as alive");
        }
    }
}

/// Runs `work` (the agent call) and, beside it, the sink's progress indicator once
/// `work` has taken `sink.progress_after()`. An indicator that has begun is always
/// completed before this returns, so it never lands after the answer; `shown` tells
/// the caller to call `finished` after posting.
async fn with_progress<T>(
    sink: &dyn ChatSink,
    shown: &AtomicBool,
    work: impl Future<Output = T>,
) -> T {
    let after = sink.progress_after();
    let progress = async {
        if !after.is_zero() {
            tokio::time::sleep(after).await;
        }
        shown.store(true, Ordering::Relaxed);
        sink.working().await;
    };
    tokio::pin!(work);
    tokio::pin!(progress);
    tokio::select! {
        biased;
        out = &mut work => {
            if shown.load(Ordering::Relaxed) {
                progress.await;
            }
            out
        }
        () = &mut progress => work.await,
    }
}

/// `conv` without its agent session, and the `session.reset` event saying why.
fn session_reset(mut conv: Conversation, reason: &'static str) -> (Conversation, OutboxEvent) {
    let now = OffsetDateTime::now_utc();
    let previous = conv.agent_session.take();
    conv.last_activity = now;
    let event = OutboxEvent::new(
        EventKind::SessionReset,
        Some(conv.key.to_string()),
        &SessionReset {
            at: conv_ref(&conv),
            previous_session_id: previous,
            reason,
        },
        now,
    );
    (conv, event)
}

fn conv_ref(conv: &Conversation) -> ConversationRef {
    conversation_ref(
        &conv.key,
        conv.platform,
        &conv.workspace,
        &conv.channel,
        conv.thread.as_deref(),
    )
}

/// The one construction of an event's [`ConversationRef`].
fn conversation_ref(
    key: &ConversationKey,
    platform: Platform,
    workspace: &str,
    channel: &str,
    thread: Option<&str>,
) -> ConversationRef {
    ConversationRef {
        conversation: key.to_string(),
        platform: platform.as_str().to_string(),
        workspace: workspace.to_owned(),
        channel: channel.to_owned(),
        thread: thread.map(str::to_owned),
    }
}

fn reply_failed(
    key: &ConversationKey,
    at: ConversationRef,
    msg: &Inbound,
    query: &str,
    cause: &str,
    reason: &'static str,
    now: OffsetDateTime,
) -> OutboxEvent {
    OutboxEvent::new(
        EventKind::ReplyFailed,
        Some(key.to_string()),
        &ReplyFailed {
            at,
            user: msg.user.clone(),
            message_id: msg.message_id.clone(),
            query: query.to_string(),
            error: cause.to_string(),
            reason,
        },
        now,
    )
}
