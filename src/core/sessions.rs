//! The conversation map: a `DashMap` cache of recent conversations in front of the
//! store, written through after every change and filled from the store on a miss, so
//! a restart keeps every conversation's agent session. The cache is bounded
//! (`CACHE_MAX`); the store is the record.
//!
//! Only a conversation's lane worker changes its entry (see `lanes`), so a
//! read-modify-write here never races with another turn of the same conversation.
//! With a store shared by several replicas the cache is bypassed for reads: another
//! replica may have changed the conversation, and the cross-replica turn queue
//! guarantees the store's copy is the latest when a turn starts.
//!
//! Without replicas, a first message in a new conversation (every new Slack thread)
//! costs no store read either: the hashes of the keys stored before start-up are
//! loaded once (`preload`), and a key in neither that set nor the cache is new.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::{DashMap, DashSet};
use time::OffsetDateTime;

use super::message::{ConversationKey, Inbound, SessionScope};
use super::ports::{Conversation, Conversations, StoreError};

/// Keys read per store round-trip by [`SessionMap::preload`].
const PRELOAD_PAGE: u32 = 10_000;

/// The most conversations the cache holds; past it, it starts over empty and fills
/// again from the store as conversations come up. Every new Slack thread is a new
/// conversation, so without a bound the cache would grow for as long as the bridge
/// runs. 10k recent conversations are a few MiB.
const CACHE_MAX: usize = 10_000;

pub struct SessionMap {
    cache: DashMap<ConversationKey, Conversation>,
    /// About how many entries `cache` holds: counted on insert, so the size check
    /// does not lock every shard of the map on each turn as `len()` would.
    cached: AtomicUsize,
    store: Arc<dyn Conversations>,
    /// Other replicas write the same conversations: read the store on every turn
    /// (the turn queue makes that read current) instead of trusting the cache.
    shared: bool,
    /// Hashes of every key the store may hold: those stored before start-up
    /// ([`SessionMap::preload`]) and every one this process has used since (unshared
    /// stores only, where this process is the only writer). Once preloaded, a key not
    /// here is a new conversation, so its first turn skips the store read; a hash
    /// collision only costs a read. Eight bytes and change per conversation.
    known: DashSet<u64>,
    preloaded: AtomicBool,
}

impl SessionMap {
    pub fn new(store: Arc<dyn Conversations>, shared: bool) -> Self {
        SessionMap {
            cache: DashMap::new(),
            cached: AtomicUsize::new(0),
            store,
            shared,
            known: DashSet::new(),
            preloaded: AtomicBool::new(false),
        }
    }

    /// Reads the hashes of the stored conversation keys, a page at a time (the
    /// SQLite store has one connection; turns go on between pages). Does nothing for
    /// a shared store. On a store error the set stays unloaded: correct, just slower.
    pub async fn preload(&self) {
        if self.shared {
            return;
        }
        let mut after = String::new();
        loop {
            let page = match self.store.conversation_keys(&after, PRELOAD_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "could not preload the conversation keys");
                    return;
                }
            };
            for key in &page {
                self.known.insert(key_hash(key));
            }
            match page.last() {
                Some(last) if page.len() == PRELOAD_PAGE as usize => after.clone_from(last),
                _ => break,
            }
        }
        tracing::debug!(
            conversations = self.known.len(),
            "conversation keys preloaded"
        );
        self.preloaded.store(true, Ordering::Release);
    }

    /// Whether [`SessionMap::preload`] has finished.
    pub fn preloaded(&self) -> bool {
        self.shared || self.preloaded.load(Ordering::Acquire)
    }

    /// `true` when the store may hold `key` (so it must be read).
    fn maybe_stored(&self, key: &ConversationKey) -> bool {
        self.shared
            || !self.preloaded.load(Ordering::Acquire)
            || self.known.contains(&key_hash(key.as_str()))
    }

    /// The conversation for `key`: from the cache, else the store, else a new one
    /// (not stored until its first commit). Only [`SessionMap::put`] fills the cache:
    /// the conversation is only the lane's until its turn is recorded.
    pub async fn get(
        &self,
        key: &ConversationKey,
        scope: SessionScope,
        msg: &Inbound,
    ) -> Result<Conversation, StoreError> {
        if !self.shared {
            if let Some(conv) = self.cache.get(key) {
                return Ok(conv.clone());
            }
        }
        let stored = match self.maybe_stored(key) {
            true => self.store.conversation(key).await?,
            false => None,
        };
        let conv = match stored {
            Some(conv) => conv,
            None => Conversation {
                key: key.clone(),
                platform: msg.platform,
                workspace: msg.workspace.clone(),
                channel: msg.channel.clone(),
                thread: msg.thread.clone(),
                user: (scope == SessionScope::User).then(|| msg.user.clone()),
                agent_session: None,
                personality: None,
                last_activity: OffsetDateTime::now_utc(),
            },
        };
        if !self.shared {
            // Known before its first commit can store it: from now on a miss reads
            // the store.
            self.known.insert(key_hash(key.as_str()));
        }
        Ok(conv)
    }

    /// Records the new state of a conversation once the store has it.
    pub fn put(&self, conv: Conversation) {
        if !self.shared {
            self.known.insert(key_hash(conv.key.as_str()));
        }
        if self.cached.load(Ordering::Relaxed) >= CACHE_MAX && !self.cache.contains_key(&conv.key) {
            self.cached.store(0, Ordering::Relaxed);
            self.cache.clear();
        }
        if self.cache.insert(conv.key.clone(), conv).is_none() {
            self.cached.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// A stable hash (SipHash with fixed keys): the same key hashes the same at load and
/// at lookup. A collision only costs a store read.
fn key_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}
