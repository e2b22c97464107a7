//! The conversation map: a `DashMap` cache in front of the store, written through
//! after every change and filled from the store on a miss, so a restart keeps every
//! conversation's agent session.
//!
//! Only a conversation's lane worker changes its entry (see `lanes`), so a
//! read-modify-write here never races with another turn of the same conversation.
//! With a store shared by several replicas the cache is bypassed for reads: another
//! replica may have changed the conversation, and the cross-replica turn queue
//! guarantees the store's copy is the latest when a turn starts.

use std::sync::Arc;

use dashmap::DashMap;
use time::OffsetDateTime;

use super::message::{ConversationKey, Inbound, SessionScope};
use super::ports::{Conversation, Store, StoreError};

pub struct SessionMap {
    cache: DashMap<ConversationKey, Conversation>,
    store: Arc<dyn Store>,
    /// Other replicas write the same conversations: read the store on every turn
    /// (the turn queue makes that read current) instead of trusting the cache.
    shared: bool,
}

impl SessionMap {
    pub fn new(store: Arc<dyn Store>, shared: bool) -> Self {
        SessionMap {
            cache: DashMap::new(),
            store,
            shared,
        }
    }

    /// The conversation for `key`: from the cache, else the store, else a new one
    /// (not stored until its first commit).
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
        let conv = match self.store.conversation(key).await? {
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
        self.cache.insert(key.clone(), conv.clone());
        Ok(conv)
    }

    /// Records the new state of a conversation once the store has it.
    pub fn put(&self, conv: Conversation) {
        self.cache.insert(conv.key.clone(), conv);
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}
