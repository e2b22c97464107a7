//! The serenity [`EventHandler`]: filter, convert, hand off — nothing else.
//!
//! A message is answered when a human wrote it and it is a DM, mentions the bot, replies
//! to one of the bot's messages, or sits in a thread the bot opened. It becomes a
//! `core::Inbound` plus a [`MessageSink`] that knows where the answer goes, and the
//! relay does the rest. Ordering is the relay's job: serenity runs every event on its
//! own task, so two messages of one channel may arrive here out of order.
//!
//! Keys: a thread's turns belong to the thread's *parent* channel with the thread in
//! `Inbound::thread`, as Slack's do, so `SESSION_SCOPE=channel` keeps one session per
//! channel, threads included, and `SESSION_SCOPE=thread` one per thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serenity::all::{
    ChannelId, CommandInteraction, ComponentInteraction, ConnectionStage, Context,
    CreateInteractionResponse, Event, EventHandler, GetMessages, Guild, GuildChannel, Http,
    Interaction, Message, MessageId, MessageType, PartialGuildChannel, RawEventHandler, Ready,
    ResumedEvent, ShardStageUpdateEvent, UserId,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::channels::{is_thread, ChannelDirectory, ChannelKind};
use super::shards::ShardBoard;
use super::sink::{self, DiscordReplyTo, EditBuckets, MessageSink, Target};
use super::slash::{self, InteractionSink};
use super::{describe, text};
use crate::config::DiscordReplyMode;
use crate::core::error::Detail;
use crate::core::ports::{FeedbackClick, JournalTurn, Resume, Resumed};
use crate::core::{ChatSink, Inbound, Platform, Rejected, Relay};

/// What an interaction shows when the bridge is shutting down: the deferred response
/// must not say "thinking…" forever.
const RESTARTING: &str = "The bridge is restarting. Please try again in a moment.";

/// How long a message that overtook READY waits for the bot's id. serenity runs READY
/// and the first messages on separate tasks, so a message handler may start first.
const READY_WAIT: Duration = Duration::from_secs(5);

pub struct Handler {
    relay: Relay,
    reply_mode: DiscordReplyMode,
    /// `DISCORD_EDIT_INTERVAL_MS`, when set: the pace of streamed answers' edits.
    edit_interval: Option<Duration>,
    /// Each held shard's connection, for `/readyz`: set at READY/RESUMED, cleared
    /// when the shard leaves the connected stage.
    board: Arc<ShardBoard>,
    /// The bot's user id from READY; `None` until then. Messages wait for it (briefly),
    /// because mentions cannot be recognised without it.
    bot: watch::Sender<Option<UserId>>,
    /// Threads, parents and owners; shared with every sink, which records the threads
    /// it opens.
    channels: Arc<ChannelDirectory>,
    /// Discord's edit-route buckets, shared by every answer's sink.
    edit_buckets: Arc<EditBuckets>,
    /// Set once the slash commands were registered, so a re-identify does not repeat it.
    commands_registered: AtomicBool,
    /// Set once recovery of the journal's left turns has started (at the first READY).
    recovering: AtomicBool,
}

/// Where a message was written.
enum Place {
    Dm,
    Channel,
    Thread {
        parent: serenity::all::ChannelId,
        bot_owned: bool,
    },
}

impl Handler {
    pub fn new(
        relay: Relay,
        reply_mode: DiscordReplyMode,
        edit_interval: Option<Duration>,
        board: Arc<ShardBoard>,
    ) -> Self {
        Handler {
            relay,
            reply_mode,
            edit_interval,
            board,
            bot: watch::Sender::new(None),
            channels: Arc::new(ChannelDirectory::default()),
            edit_buckets: Arc::default(),
            commands_registered: AtomicBool::new(false),
            recovering: AtomicBool::new(false),
        }
    }

    /// After a new gateway session (READY, not RESUMED) of shard `shard` of `total`:
    /// Discord replays nothing, so every channel of the shard's guilds (DMs are shard
    /// 0's) that had a turn within `RECOVERY_WINDOW` is read after the last message
    /// the bridge saw there, and what would have been answered live is answered now,
    /// oldest first. A message answered already is in the journal and is not
    /// answered again.
    async fn catch_up(&self, http: &Arc<Http>, shard: u32, total: u32) {
        let turns = match self.relay.recent_turns(Platform::Discord).await {
            Ok(turns) => turns,
            Err(e) => {
                warn!(error = %e, "could not read the turn journal; no catch-up");
                return;
            }
        };
        // The newest journaled message of each channel: where its catch-up starts.
        let mut last_seen: std::collections::HashMap<ChannelId, MessageId> = Default::default();
        for turn in turns {
            if !on_shard(&turn.workspace, shard, total) {
                continue;
            }
            let (Ok(to), Some(id)) = (
                serde_json::from_str::<DiscordReplyTo>(&turn.reply_to),
                turn.message_id
                    .parse::<u64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .map(MessageId::new),
            ) else {
                continue;
            };
            let seen = last_seen.entry(to.target.written_in()).or_insert(id);
            *seen = (*seen).max(id);
        }
        for (channel, after) in last_seen {
            let request = GetMessages::new().after(after).limit(CATCH_UP_LIMIT);
            let mut missed = match channel.messages(&**http, request).await {
                Ok(missed) => missed,
                Err(e) => {
                    warn!(channel = %channel, error = %describe(&e), "catch-up could not read the channel");
                    continue;
                }
            };
            if missed.is_empty() {
                continue;
            }
            missed.sort_by_key(|m| m.id);
            info!(channel = %channel, messages = missed.len(), "catching up on messages sent while disconnected");
            for msg in missed {
                self.on_message(http, msg).await;
            }
        }
    }

    /// The bot's id, waiting up to [`READY_WAIT`] for READY to be handled.
    async fn bot(&self) -> Option<UserId> {
        let mut rx = self.bot.subscribe();
        let ready = tokio::time::timeout(READY_WAIT, rx.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(id)) => *id,
            _ => None,
        }
    }

    async fn on_message(&self, http: &Arc<Http>, msg: Message) {
        let Some(bot) = self.bot().await else {
            debug!("message before READY; ignored");
            return;
        };
        if !written_by_a_person(&msg, bot) {
            return;
        }
        let bot_id = bot.get();
        let content = relayed_content(&msg);
        let addressed = text::mentions(&content, bot_id) || replies_to(&msg, bot);
        let place = match msg.guild_id {
            None => Place::Dm,
            Some(_) => match self.channels.kind(http, msg.channel_id).await {
                ChannelKind::Plain => Place::Channel,
                ChannelKind::Thread { parent, owner } => Place::Thread {
                    parent,
                    bot_owned: owner == Some(bot),
                },
            },
        };
        let answer = match place {
            Place::Dm => true,
            Place::Channel => addressed,
            Place::Thread { bot_owned, .. } => addressed || bot_owned,
        };
        if !answer {
            return;
        }

        let text = text::strip_mention(&content, bot_id);
        let (channel, thread, target) = match (place, self.reply_mode) {
            (Place::Dm, _) | (Place::Channel, DiscordReplyMode::Reply) => {
                (msg.channel_id, None, self.reply_to(&msg))
            }
            (Place::Channel, DiscordReplyMode::Thread) => (
                msg.channel_id,
                // The thread will carry the message's id, so the turn is keyed by it now.
                Some(msg.id.to_string()),
                Target::NewThread {
                    parent: msg.channel_id,
                    message: msg.id,
                    guild: msg.guild_id,
                    name: text::thread_name(&text),
                },
            ),
            (Place::Thread { parent, .. }, DiscordReplyMode::Reply) => (
                parent,
                Some(msg.channel_id.to_string()),
                self.reply_to(&msg),
            ),
            (Place::Thread { parent, .. }, DiscordReplyMode::Thread) => (
                parent,
                Some(msg.channel_id.to_string()),
                Target::InThread {
                    thread: msg.channel_id,
                },
            ),
        };
        let inbound = Inbound {
            platform: Platform::Discord,
            workspace: msg.guild_id.map(|g| g.to_string()).unwrap_or_default(),
            channel: channel.to_string(),
            thread,
            user: msg.author.id.to_string(),
            message_id: msg.id.to_string(),
            text,
        };
        let sink = MessageSink::new(http.clone(), target, msg.id, self.channels.clone(), bot)
            .with_edit_interval(self.edit_interval)
            .with_buckets(self.edit_buckets.clone());
        self.submit(inbound, Arc::new(sink));
    }

    fn reply_to(&self, msg: &Message) -> Target {
        Target::Reply {
            channel: msg.channel_id,
            message: msg.id,
            guild: msg.guild_id,
        }
    }

    fn submit(&self, inbound: Inbound, sink: Arc<dyn ChatSink>) {
        match self.relay.submit(inbound, sink) {
            Ok(_) => {}
            // The relay has already told the user through the sink.
            Err(Rejected::Busy) => debug!("turn refused: busy"),
            Err(Rejected::ShuttingDown) => debug!("turn refused: shutting down"),
            Err(Rejected::Unavailable) => debug!("turn refused: store unavailable"),
        }
    }

    /// A click on one of the bridge's buttons: the feedback buttons
    /// (`feedback:{turn_id}:up|down`), acknowledged at once (type 6, the message stays
    /// as it is) and recorded in the background.
    async fn on_component(&self, http: &Arc<Http>, component: ComponentInteraction) {
        let Some((turn_id, positive)) = sink::parse_feedback(&component.data.custom_id) else {
            debug!(custom_id = %component.data.custom_id, "not one of our buttons; ignored");
            return;
        };
        if let Err(e) = component
            .create_response(&**http, CreateInteractionResponse::Acknowledge)
            .await
        {
            warn!(error = %describe(&e), "could not acknowledge a feedback click");
        }
        // Keyed like the turn: a thread's answers belong to its parent channel.
        let (channel, thread) = match component.guild_id {
            None => (component.channel_id, None),
            Some(_) => match self.channels.kind(http, component.channel_id).await {
                ChannelKind::Thread { parent, .. } => {
                    (parent, Some(component.channel_id.to_string()))
                }
                ChannelKind::Plain => (component.channel_id, None),
            },
        };
        let click = FeedbackClick {
            turn_id,
            platform: Platform::Discord,
            workspace: component
                .guild_id
                .map(|g| g.to_string())
                .unwrap_or_default(),
            channel: channel.to_string(),
            thread,
            user: component.user.id.to_string(),
            message_id: component.message.id.to_string(),
            positive,
        };
        let relay = self.relay.clone();
        self.relay.spawn(async move {
            if let Err(e) = relay.feedback(click).await {
                warn!(error = %e, "could not record feedback");
            }
        });
    }

    async fn on_command(&self, http: &Arc<Http>, command: CommandInteraction) {
        let Some(text) = slash::to_text(&command) else {
            debug!(command = %command.data.name, "not one of our commands; ignored");
            return;
        };
        let (channel, thread) = match &command.channel {
            Some(c) if is_thread(c.kind) => match c.parent_id {
                Some(parent) => (parent, Some(command.channel_id.to_string())),
                None => (command.channel_id, None),
            },
            _ => (command.channel_id, None),
        };
        let inbound = Inbound {
            platform: Platform::Discord,
            workspace: command.guild_id.map(|g| g.to_string()).unwrap_or_default(),
            channel: channel.to_string(),
            thread,
            user: command.user.id.to_string(),
            message_id: command.id.to_string(),
            text,
        };
        if let Some(refusal) = self.relay.refusal(&inbound) {
            debug!(command = %command.data.name, ?refusal, "slash command refused");
            if let Err(e) = slash::refuse(http, &command, refusal.reply()).await {
                warn!(command = %command.data.name, error = %describe(&e), "could not answer a refused slash command");
            }
            return;
        }
        // Acknowledge first: Discord drops an interaction not answered within 3 s.
        if let Err(e) = command.defer(&**http).await {
            warn!(command = %command.data.name, error = %describe(&e), "could not acknowledge a slash command");
            return;
        }
        let sink = Arc::new(InteractionSink::new(http.clone(), command.token.clone()));
        if let Err(Rejected::ShuttingDown) = self.relay.submit(inbound, sink.clone()) {
            if let Err(e) = sink.send(RESTARTING).await {
                debug!(error = %e, "could not say that the bridge is restarting");
            }
        }
    }
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        self.bot.send_replace(Some(ready.user.id));
        ctx.http.set_application_id(ready.application.id);
        let (shard, total) = ready
            .shard
            .map_or((ctx.shard_id.0, 1), |s| (s.id.0, s.total));
        self.board.set_connected(shard, true);
        info!(
            bot = %ready.user.name,
            bot_id = %ready.user.id,
            guilds = ready.guilds.len(),
            shard,
            shards = total,
            "connected to the Discord gateway"
        );
        if !self.recovering.swap(true, Ordering::AcqRel) {
            let resume = Arc::new(DiscordResume {
                http: ctx.http.clone(),
                channels: self.channels.clone(),
                bot: ready.user.id,
                edit_interval: self.edit_interval,
                buckets: self.edit_buckets.clone(),
            });
            self.relay.keep_recovering(Platform::Discord, resume);
        }
        self.catch_up(&ctx.http, shard, total).await;
        if self.commands_registered.load(Ordering::Acquire) {
            return;
        }
        match slash::register(&ctx.http).await {
            Ok(n) => {
                self.commands_registered.store(true, Ordering::Release);
                info!(commands = n, "slash commands registered");
            }
            Err(e) => warn!(error = %describe(&e), "could not register the slash commands"),
        }
    }

    async fn resume(&self, ctx: Context, _event: ResumedEvent) {
        self.board.set_connected(ctx.shard_id.0, true);
        info!(shard = ctx.shard_id.0, "Discord gateway session resumed");
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        if event.new != ConnectionStage::Connected {
            self.board.set_connected(event.shard_id.0, false);
            debug!(shard = event.shard_id.0, stage = %event.new, "Discord gateway not connected");
        }
    }

    async fn message(&self, ctx: Context, msg: Message) {
        self.relay
            .metrics()
            .event_received(Platform::Discord, "MESSAGE_CREATE");
        self.on_message(&ctx.http, msg).await;
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        self.relay
            .metrics()
            .event_received(Platform::Discord, "INTERACTION_CREATE");
        match interaction {
            Interaction::Command(command) => self.on_command(&ctx.http, command).await,
            Interaction::Component(component) => self.on_component(&ctx.http, component).await,
            _ => {}
        }
    }

    async fn guild_create(&self, _ctx: Context, guild: Guild, _is_new: Option<bool>) {
        for channel in guild.channels.values().chain(guild.threads.iter()) {
            self.channels.learn(channel);
        }
    }

    async fn thread_create(&self, _ctx: Context, thread: GuildChannel) {
        self.channels.learn(&thread);
    }

    async fn thread_update(&self, _ctx: Context, _old: Option<GuildChannel>, new: GuildChannel) {
        self.channels.learn(&new);
    }

    async fn thread_delete(
        &self,
        _ctx: Context,
        thread: PartialGuildChannel,
        _full: Option<GuildChannel>,
    ) {
        self.channels.forget(thread.id);
    }
}

/// A person's chat message: not a bot (the bridge itself included), not a webhook, and
/// not a system message (joins, pins, boosts…); plain messages and replies only.
fn written_by_a_person(msg: &Message, bot: UserId) -> bool {
    !msg.author.bot
        && !msg.author.system
        && msg.author.id != bot
        && msg.webhook_id.is_none()
        && matches!(msg.kind, MessageType::Regular | MessageType::InlineReply)
}

/// What a message says: its own content, followed by the text of the messages it
/// forwards (`message_reference.type` 1 with `message_snapshots`), whose own content
/// is empty.
fn relayed_content(msg: &Message) -> String {
    let forwarded = msg
        .message_reference
        .as_ref()
        .is_some_and(|r| r.kind == serenity::model::channel::MessageReferenceKind::Forward);
    if !forwarded || msg.message_snapshots.is_empty() {
        return msg.content.clone();
    }
    let mut parts: Vec<&str> = Vec::new();
    if !msg.content.trim().is_empty() {
        parts.push(&msg.content);
    }
    parts.extend(
        msg.message_snapshots
            .iter()
            .map(|s| s.content.as_str())
            .filter(|c| !c.trim().is_empty()),
    );
    parts.join("\n\n")
}

/// A reply to one of the bot's own messages addresses the bot like a mention does.
fn replies_to(msg: &Message, bot: UserId) -> bool {
    msg.kind == MessageType::InlineReply
        && msg
            .referenced_message
            .as_ref()
            .is_some_and(|m| m.author.id == bot)
}

/// Serenity hands a dispatch it cannot decode (a field of an unexpected type, say) to
/// raw handlers only, as `Event::Unknown` — its untagged fallback — and otherwise logs
/// it at debug. A message addressed to the bot must not vanish without a word (SPEC
/// §4): this says which one, at warn. Event types the bridge never handles stay at
/// debug.
pub struct Undecodable;

#[async_trait]
impl RawEventHandler for Undecodable {
    async fn raw_event(&self, _ctx: Context, event: Event) {
        if let Event::Unknown(unknown) = event {
            log_undecodable(&unknown.kind, &unknown.value);
        }
    }
}

fn log_undecodable(kind: &str, value: &serde_json::Value) {
    let reason = match kind {
        "MESSAGE_CREATE" => serde_json::from_value::<Message>(value.clone()).err(),
        "INTERACTION_CREATE" => serde_json::from_value::<Interaction>(value.clone()).err(),
        _ => {
            debug!(event = kind, "a Discord event the bridge does not handle");
            return;
        }
    };
    let id = |field: &str| {
        value
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned()
    };
    warn!(
        event = kind,
        channel = %id("channel_id"),
        message_id = %id("id"),
        error = %reason.map_or_else(|| "unknown".to_owned(), |e| e.to_string()),
        "a Discord event could not be decoded; it is not answered"
    );
}

/// Whether a turn of `workspace` (a guild id; empty for a DM) came through shard
/// `shard` of `total`: Discord's `(guild_id >> 22) % shards`, DMs on shard 0. A
/// workspace that is no guild id counts everywhere (the journal keeps a message
/// answered once whoever reads it).
fn on_shard(workspace: &str, shard: u32, total: u32) -> bool {
    if workspace.is_empty() {
        return shard == 0;
    }
    match workspace.parse::<u64>() {
        Ok(guild) => (guild >> 22) % u64::from(total.max(1)) == u64::from(shard),
        Err(_) => true,
    }
}

/// Messages read per channel by a catch-up (Discord's page): a longer outage than
/// that in one busy channel leaves the oldest unanswered.
const CATCH_UP_LIMIT: u8 = 50;

/// Rebuilds where a journaled Discord turn's answer goes; a reply that is already in
/// the channel (posted before a crash, not recorded) is not posted again. Posts carry
/// the turn's nonce too, so a repeat within Discord's window returns the first.
struct DiscordResume {
    http: Arc<Http>,
    channels: Arc<ChannelDirectory>,
    bot: UserId,
    edit_interval: Option<Duration>,
    buckets: Arc<EditBuckets>,
}

#[async_trait]
impl Resume for DiscordResume {
    async fn resume(&self, turn: &JournalTurn) -> Resumed {
        let to: DiscordReplyTo = match serde_json::from_str(&turn.reply_to) {
            Ok(to) => to,
            Err(e) => {
                return Resumed::Unanswerable(Detail::caused_by("unreadable reply target", e))
            }
        };
        if let Target::Reply {
            channel, message, ..
        } = &to.target
        {
            let request = GetMessages::new().after(*message).limit(CATCH_UP_LIMIT);
            match channel.messages(&*self.http, request).await {
                Ok(after) => {
                    let replied = after.iter().any(|m| {
                        m.author.id == self.bot
                            && m.message_reference.as_ref().and_then(|r| r.message_id)
                                == Some(*message)
                    });
                    if replied {
                        return Resumed::AlreadyAnswered;
                    }
                }
                Err(e) => {
                    debug!(error = %describe(&e), "could not look for an earlier reply; answering")
                }
            }
        }
        let sink = MessageSink::new(
            self.http.clone(),
            to.target,
            to.answering,
            self.channels.clone(),
            self.bot,
        )
        .with_edit_interval(self.edit_interval)
        .with_buckets(self.buckets.clone());
        Resumed::Answer(Arc::new(sink))
    }
}

#[cfg(test)]
mod tests {
    use super::on_shard;

    #[test]
    fn a_guild_belongs_to_discords_shard_and_a_dm_to_shard_0() {
        // (1300000000000000003 >> 22) % 2 == 0, and one more in the shard bits is 1.
        let guild = "1300000000000000003";
        let next = ((1_300_000_000_000_000_003u64 >> 22) + 1) << 22;
        assert!(on_shard(guild, 0, 2) && !on_shard(guild, 1, 2));
        assert!(on_shard(&next.to_string(), 1, 2));
        assert!(on_shard(guild, 0, 1));
        assert!(on_shard("", 0, 2) && !on_shard("", 1, 2));
        assert!(on_shard("not-a-guild", 1, 2), "unknown: read everywhere");
    }
}
