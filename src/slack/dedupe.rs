//! Once-only handling of Slack deliveries, and the memory of threads the bot answered
//! in — both kept in the store (`Sightings::first_sighting`), so they hold across restarts
//! and, with PostgreSQL, across replicas: the store's unique key decides who goes first.
//!
//! One key per answered message, `slack:msg:{channel}:{ts}`: Slack's retries
//! (`X-Slack-Retry-Num`) and duplicate deliveries repeat the `event_id` and the
//! message, and one message arriving as two events (`app_mention` and `message`, with
//! different ids) shares its `ts` — so the message key catches every duplicate an
//! `event_id` key would, and the pair as well.
//!
//! Threads the bot answered in are remembered as `slack:thread:{channel}:{thread_ts}`
//! sightings, with an in-memory map in front; a miss asks the store (`Sightings::seen`).
//! Most threads need no sighting: one the bot opened under a message it answered is
//! rooted at that message, whose turn the journal holds under the message's id (the
//! thread's `thread_ts`) until the transcripts' retention; a miss asks the journal
//! (`Journal::turn_ended`) too. A thread is "answered in" once the bot posted there:
//! the root's turn ended `answered` or `failed` (a failed turn's error reply is
//! posted in the thread).

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use time::OffsetDateTime;
use tracing::{debug, warn};

use crate::core::message::{turn_id, Platform};
use crate::core::ports::{Journal, Sightings, StoreError};

/// How long an event id and a message key are remembered. Slack retries within about
/// five minutes and SPEC asks for at least an hour; two leave a margin for clock skew
/// between replicas.
pub const EVENT_TTL: Duration = Duration::from_secs(2 * 60 * 60);

/// How long the bot keeps following a thread it answered in after its last answer.
pub const THREAD_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The in-memory map of followed threads is a cache; past this many entries it is
/// cleared and refilled from the store as threads come up again.
const THREAD_CACHE_MAX: usize = 10_000;

/// Decides whether a delivery is the first one for its event and its message.
#[derive(Clone)]
pub struct Dedupe {
    store: Arc<dyn Sightings>,
}

impl Dedupe {
    pub fn new(store: Arc<dyn Sightings>) -> Self {
        Dedupe { store }
    }

    /// `true` when this message was not seen before, and records it.
    ///
    /// One key covers both duplicate kinds: a retry or a second delivery carries the
    /// same `event_id` *and* the same message, and the `app_mention` + `message` pair
    /// carries two ids but one message. So the message (`channel`, `ts`) is the key;
    /// storing the event id as well would only cost a second row per event.
    pub async fn first_delivery(&self, channel: &str, ts: &str) -> Result<bool, StoreError> {
        let expires = OffsetDateTime::now_utc() + EVENT_TTL;
        self.store
            .first_sighting(&message_key(channel, ts), expires)
            .await
    }

    /// [`Dedupe::first_delivery`] as an owned future, for a delivery that has already
    /// been acknowledged: Slack will not send it again, so when the store cannot say,
    /// the message is answered (a rare second answer beats a certain silence).
    /// `event_id` is only logged.
    pub fn first_delivery_owned(
        &self,
        event_id: Option<String>,
        channel: String,
        ts: String,
    ) -> impl Future<Output = bool> + Send + 'static {
        let this = self.clone();
        async move {
            match this.first_delivery(&channel, &ts).await {
                Ok(first) => {
                    if !first {
                        debug!(event_id, "duplicate Slack delivery ignored");
                    }
                    first
                }
                Err(e) => {
                    warn!(error = %e, event_id, "dedupe store unavailable; answering anyway");
                    true
                }
            }
        }
    }
}

// Keys start with the message's `ts` (Slack's clock, ever increasing) rather than the
// channel: new keys then land at the end of the store's index instead of at one spot
// per channel, so a batch of turns dirties a page or two there instead of one page
// per channel (the figure is in bench/README.md).

pub fn message_key(channel: &str, ts: &str) -> String {
    format!("slack:msg:{ts}:{channel}")
}

pub fn thread_key(channel: &str, thread_ts: &str) -> String {
    format!("slack:thread:{thread_ts}:{channel}")
}

/// How threads were keyed before the `ts`-first keys; still read, so a thread
/// answered before an upgrade stays followed.
fn legacy_thread_key(channel: &str, thread_ts: &str) -> String {
    format!("slack:thread:{channel}:{thread_ts}")
}

/// A thread's key in [`AnsweredThreads`]'s memory. Two threads share one only by a
/// 64-bit collision (about 1 in 10^15 for a full map of 10,000), which would make the
/// bot follow a thread it never answered in.
fn thread_hash(channel: &str, thread_ts: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (channel, thread_ts).hash(&mut h);
    h.finish()
}

/// Threads `(channel, thread_ts)` the bot has answered in (`SLACK_FOLLOW_THREADS`).
pub struct AnsweredThreads {
    store: Arc<dyn Sightings>,
    /// Where a thread rooted at a journaled turn's message is found; `None` when the
    /// journal forgets turns sooner than [`THREAD_TTL`] (a shorter transcript
    /// retention): then every thread gets its sighting.
    journal: Option<Arc<dyn Journal>>,
    /// Threads known to be answered, so the common case costs no store round-trip.
    /// Only positive answers are cached: another replica may answer in a thread at any
    /// time. Keyed by [`thread_hash`], so remembering a thread allocates nothing.
    known: DashMap<u64, ()>,
    /// About how many entries `known` holds: counted on insert, so the size check
    /// does not lock every shard of the map on each answer as `len()` would.
    size: AtomicUsize,
}

impl AnsweredThreads {
    pub fn new(store: Arc<dyn Sightings>, journal: Option<Arc<dyn Journal>>) -> Self {
        AnsweredThreads {
            store,
            journal,
            known: DashMap::new(),
            size: AtomicUsize::new(0),
        }
    }

    /// Records that the bot answered in this thread: in memory at once, in the store
    /// in the background (with the turn's commit). `rooted_at_turn`: the thread is
    /// rooted at the message of the journaled turn just answered, whose journal row
    /// says so already (see the module's notes).
    pub fn mark(&self, channel: &str, thread_ts: &str, rooted_at_turn: bool) {
        // The store keeps a live key as it is (a thread answered again keeps its
        // first expiry; THREAD_TTL is long enough for that), so a thread known here —
        // marked by this process, or read from the store — needs no write.
        if !self.remember(channel, thread_ts) || (rooted_at_turn && self.journal.is_some()) {
            return;
        }
        let expires = OffsetDateTime::now_utc() + THREAD_TTL;
        self.store
            .note_sighting(thread_key(channel, thread_ts), expires);
    }

    /// Whether the bot has answered in this thread (here, after a restart, or on
    /// another replica). A store failure counts as "no": staying quiet is the safe
    /// mistake.
    /// `workspace`: the team the thread's turns were journaled under.
    pub async fn contains(&self, workspace: &str, channel: &str, thread_ts: &str) -> bool {
        if self.known.contains_key(&thread_hash(channel, thread_ts)) {
            return true;
        }
        let seen = match self.store.seen(&thread_key(channel, thread_ts)).await {
            Ok(false) => self.rooted_at_turn(workspace, channel, thread_ts).await,
            other => other,
        };
        let seen = match seen {
            Ok(false) => {
                self.store
                    .seen(&legacy_thread_key(channel, thread_ts))
                    .await
            }
            other => other,
        };
        match seen {
            Ok(false) => false,
            Ok(true) => {
                self.remember(channel, thread_ts);
                true
            }
            Err(e) => {
                warn!(error = %e, channel, thread = thread_ts, "could not check the thread");
                false
            }
        }
    }

    /// Whether the thread is rooted at a message whose journaled turn ended within
    /// [`THREAD_TTL`].
    async fn rooted_at_turn(
        &self,
        workspace: &str,
        channel: &str,
        thread_ts: &str,
    ) -> Result<bool, StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(false);
        };
        let root = turn_id(Platform::Slack, workspace, channel, thread_ts);
        journal
            .turn_ended(&root, OffsetDateTime::now_utc() - THREAD_TTL)
            .await
    }

    /// Remembers the thread in memory; `true` when it was not remembered yet.
    fn remember(&self, channel: &str, thread_ts: &str) -> bool {
        if self.size.load(Ordering::Relaxed) >= THREAD_CACHE_MAX {
            self.size.store(0, Ordering::Relaxed);
            self.known.clear();
        }
        let new = self
            .known
            .insert(thread_hash(channel, thread_ts), ())
            .is_none();
        if new {
            self.size.fetch_add(1, Ordering::Relaxed);
        }
        new
    }
}
