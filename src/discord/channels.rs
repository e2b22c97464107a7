//! What the bridge knows about guild channels: whether a channel is a thread, its
//! parent, and who opened it.
//!
//! A MESSAGE_CREATE does not say whether its channel is a thread, yet the bridge needs
//! that to answer in the bot's threads without a mention, to key a thread's turns to its
//! parent channel, and to avoid opening a thread inside a thread. Without serenity's
//! cache, this directory learns it from the events the gateway sends anyway
//! (GUILD_CREATE, THREAD_CREATE/UPDATE/DELETE), from the threads the bot opens itself,
//! and, for a channel it has never heard of, from one `GET /channels/{id}`.
//!
//! It is memory only: after a restart the first message of each channel costs one
//! lookup, which also rediscovers the threads the bot owns (`owner_id`).

use std::time::{Duration, Instant};

use dashmap::DashMap;
use serenity::all::{ChannelId, ChannelType, GuildChannel, Http, UserId};
use tracing::warn;

use super::describe;

/// How long a failed lookup is remembered as "a plain channel" before it is tried
/// again, so a flaky proxy costs one request per channel every few minutes, not one
/// per message.
const RETRY_FAILED_LOOKUP: Duration = Duration::from_secs(300);

/// A guild channel, as far as answering goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// A text channel, forum, voice text chat…: anything that is not a thread.
    Plain,
    /// A thread: where it hangs from and who opened it.
    Thread {
        parent: ChannelId,
        owner: Option<UserId>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Known(ChannelKind),
    /// The lookup failed at this instant; treated as [`ChannelKind::Plain`] meanwhile.
    Failed(Instant),
}

#[derive(Default)]
pub struct ChannelDirectory {
    entries: DashMap<ChannelId, Entry>,
}

impl ChannelDirectory {
    /// What `channel` is, from memory or, the first time, from Discord. A failed lookup
    /// answers [`ChannelKind::Plain`]: the bot then still answers mentions there.
    pub async fn kind(&self, http: &Http, channel: ChannelId) -> ChannelKind {
        match self.entries.get(&channel).map(|e| *e) {
            Some(Entry::Known(kind)) => return kind,
            Some(Entry::Failed(at)) if at.elapsed() < RETRY_FAILED_LOOKUP => {
                return ChannelKind::Plain
            }
            _ => {}
        }
        match http.get_channel(channel).await {
            Ok(serenity::all::Channel::Guild(gc)) => {
                let kind = classify(&gc);
                self.entries.insert(channel, Entry::Known(kind));
                kind
            }
            Ok(_) => {
                self.entries
                    .insert(channel, Entry::Known(ChannelKind::Plain));
                ChannelKind::Plain
            }
            Err(e) => {
                warn!(channel = %channel, error = %describe(&e), "could not look up a Discord channel; treating it as a plain channel");
                self.entries.insert(channel, Entry::Failed(Instant::now()));
                ChannelKind::Plain
            }
        }
    }

    /// Records a channel or thread the gateway told us about.
    pub fn learn(&self, channel: &GuildChannel) {
        self.entries
            .insert(channel.id, Entry::Known(classify(channel)));
    }

    /// Records a thread opened by the bot (its id is the message it was opened on).
    pub fn remember_thread(&self, thread: ChannelId, parent: ChannelId, owner: UserId) {
        self.entries.insert(
            thread,
            Entry::Known(ChannelKind::Thread {
                parent,
                owner: Some(owner),
            }),
        );
    }

    pub fn forget(&self, channel: ChannelId) {
        self.entries.remove(&channel);
    }
}

fn classify(channel: &GuildChannel) -> ChannelKind {
    match channel.parent_id {
        Some(parent) if is_thread(channel.kind) => ChannelKind::Thread {
            parent,
            owner: channel.owner_id,
        },
        _ => ChannelKind::Plain,
    }
}

pub fn is_thread(kind: ChannelType) -> bool {
    matches!(
        kind,
        ChannelType::PublicThread | ChannelType::PrivateThread | ChannelType::NewsThread
    )
}
