//! [`MessageSink`]: where the answer to one Discord message goes — a reply to it, a
//! thread opened on it, or the thread it was written in — with the typing indicator
//! shown while the agent works.
//!
//! Every message it posts carries `allowed_mentions` that parse nothing, so agent
//! output can never ping @everyone, @here, a role or a user (serenity's `reply` would
//! allow all three). Splitting is `core::chunk`'s; this module only posts the parts in
//! order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use serenity::all::{
    ButtonStyle, ChannelId, CreateActionRow, CreateAllowedMentions, CreateButton, CreateMessage,
    CreateThread, EditMessage, GuildId, Http, HttpError, LightMethod, MessageId, MessageReference,
    MessageReferenceKind, Nonce, ReactionType, Request, Route, StatusCode, UserId,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use super::channels::ChannelDirectory;
use super::{describe, discord_error_code, MESSAGE_LIMIT};
use crate::core::chunk::split_text;
use crate::core::error::Detail;
use crate::core::lock::lock;
use crate::core::ports::{AnswerFeed, ChatSink, SinkError};
use crate::core::render::{self, render, Shape};

/// Discord shows "typing…" for about 10 s after each POST; renewing a little earlier
/// keeps it on without a gap.
const TYPING_RENEWAL: Duration = Duration::from_secs(8);

/// A single typing POST may not hold up the turn for longer than this.
const TYPING_TIMEOUT: Duration = Duration::from_secs(5);

/// "A thread has already been created for this message": answer in that thread.
const THREAD_ALREADY_EXISTS: isize = 160_004;

/// After a 429 on an edit (whose `retry_after` serenity does not pass on), the one
/// retry waits this long.
const EDIT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Discord's rate-limit state of the edit route, per channel (its major parameter):
/// when a response said `X-RateLimit-Remaining: 0`, the instant the bucket refills
/// (`X-RateLimit-Reset-After`). serenity's own limiter does this against discord.com,
/// but with another base (`DISCORD_API_BASE`, a proxy) it is off and reads no
/// headers, so the edits of a streamed answer keep the pace here too. Shared by every
/// answer of the process, so two answers in one channel share the bucket as Discord
/// counts it.
#[derive(Default)]
pub struct EditBuckets(DashMap<ChannelId, Instant>);

impl EditBuckets {
    /// Waits until an edit in `channel` is allowed.
    async fn ready(&self, channel: ChannelId) {
        let until = self.0.get(&channel).map(|e| *e);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
            self.0.remove_if(&channel, |_, u| *u <= Instant::now());
        }
    }

    /// Reads the bucket's state from an edit's response headers.
    fn observe(&self, channel: ChannelId, headers: &reqwest::header::HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let remaining = header("x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok());
        let reset_after = header("x-ratelimit-reset-after")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(60.0)));
        if let (Some(0), Some(reset_after)) = (remaining, reset_after) {
            self.0.insert(channel, Instant::now() + reset_after);
        }
    }

    fn hold(&self, channel: ChannelId, wait: Duration) {
        self.0.insert(channel, Instant::now() + wait);
    }
}

/// The nonce of part `i` of the answer to message `answering`: at most 25 characters,
/// as Discord allows (a snowflake has at most 20 digits).
fn post_nonce(answering: MessageId, i: usize) -> String {
    format!("{}.{i}", answering.get())
}

fn is_rate_limited(e: &serenity::Error) -> bool {
    matches!(e, serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) if r.status_code == StatusCode::TOO_MANY_REQUESTS)
}

/// The prefix of the feedback buttons' `custom_id`: `feedback:{turn_id}:up|down`.
pub const FEEDBACK_PREFIX: &str = "feedback:";

/// 👍 and 👎 in one action row, their `custom_id`s naming the turn.
pub fn feedback_row(turn_id: &str) -> CreateActionRow {
    let button = |vote: &str, emoji: &str| {
        CreateButton::new(format!("{FEEDBACK_PREFIX}{turn_id}:{vote}"))
            .style(ButtonStyle::Secondary)
            .emoji(ReactionType::Unicode(emoji.to_owned()))
    };
    CreateActionRow::Buttons(vec![button("up", "👍"), button("down", "👎")])
}

/// `feedback:{turn_id}:up|down` → the turn and whether the vote is positive.
pub fn parse_feedback(custom_id: &str) -> Option<(String, bool)> {
    let rest = custom_id.strip_prefix(FEEDBACK_PREFIX)?;
    let (turn, vote) = rest.rsplit_once(':')?;
    let positive = match vote {
        "up" => true,
        "down" => false,
        _ => return None,
    };
    (!turn.is_empty()).then(|| (turn.to_owned(), positive))
}

/// Allowed mentions that allow nothing, not even the ping of a reply's author.
pub fn no_pings() -> CreateAllowedMentions {
    CreateAllowedMentions::new().replied_user(false)
}

/// Where the answer to a message belongs, as decided by the handler.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// Reply to the user's message where it was written (a channel, a DM or a thread).
    Reply {
        channel: ChannelId,
        message: MessageId,
        guild: Option<GuildId>,
    },
    /// Open a thread on the user's message and answer in it (`DISCORD_REPLY_MODE=thread`).
    NewThread {
        parent: ChannelId,
        message: MessageId,
        guild: Option<GuildId>,
        name: String,
    },
    /// Post straight into the thread the user wrote in.
    InThread { thread: ChannelId },
}

/// Where messages actually go, once a thread (if any) exists.
#[derive(Debug, Clone, Copy)]
enum Destination {
    Reply {
        channel: ChannelId,
        message: MessageId,
        guild: Option<GuildId>,
    },
    Channel(ChannelId),
}

impl Target {
    /// The channel the user's message was written in (where catch-up reads).
    pub fn written_in(&self) -> ChannelId {
        match self {
            Target::Reply { channel, .. } => *channel,
            Target::NewThread { parent, .. } => *parent,
            Target::InThread { thread } => *thread,
        }
    }
}

/// Where a Discord answer goes, as the journal keeps it (`ChatSink::reply_to`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DiscordReplyTo {
    pub target: Target,
    pub answering: MessageId,
}

impl Destination {
    fn channel(self) -> ChannelId {
        match self {
            Destination::Reply { channel, .. } | Destination::Channel(channel) => channel,
        }
    }
}

pub struct MessageSink {
    http: Arc<Http>,
    target: Target,
    /// The message being answered: with the part's index, the `nonce` of each post.
    answering: MessageId,
    /// Told about the thread this sink opens, so later messages there are answered.
    channels: Arc<ChannelDirectory>,
    /// The bot's own id: the owner of threads it opens.
    bot: UserId,
    /// Resolved on first use (`working` or `send`): for [`Target::NewThread`] that is
    /// when the thread is opened, exactly once even if both race.
    destination: OnceCell<Destination>,
    /// Stops the typing renewal task; replaced when `working` starts one.
    typing: Mutex<Option<CancellationToken>>,
    /// `DISCORD_EDIT_INTERVAL_MS`: overrides the relay's pace for streamed answers.
    edit_interval: Option<Duration>,
    /// The edit route's rate-limit state, shared by the process's sinks.
    buckets: Arc<EditBuckets>,
}

impl MessageSink {
    pub fn new(
        http: Arc<Http>,
        target: Target,
        answering: MessageId,
        channels: Arc<ChannelDirectory>,
        bot: UserId,
    ) -> Self {
        MessageSink {
            http,
            target,
            answering,
            channels,
            bot,
            destination: OnceCell::new(),
            typing: Mutex::new(None),
            edit_interval: None,
            buckets: Arc::default(),
        }
    }

    /// Shares the edit route's rate-limit state with the other sinks of the process.
    pub fn with_buckets(mut self, buckets: Arc<EditBuckets>) -> Self {
        self.buckets = buckets;
        self
    }

    /// Streamed answers are edited at most once per `interval` (when set).
    pub fn with_edit_interval(mut self, interval: Option<Duration>) -> Self {
        self.edit_interval = interval;
        self
    }

    /// Posts part `i` of an answer: the first one as a reply to the user's message
    /// (when the destination is a reply), every one with no pings.
    async fn post_part(
        &self,
        destination: Destination,
        i: usize,
        part: &str,
        feedback: Option<&str>,
    ) -> Result<MessageId, serenity::Error> {
        // The same answer posted again (a retry, a turn answered again after a crash)
        // carries the same nonce, and Discord returns the first message instead of
        // creating another (`enforce_nonce`, SPEC §3).
        let mut message = CreateMessage::new()
            .content(part)
            .allowed_mentions(no_pings())
            .nonce(Nonce::String(post_nonce(self.answering, i)))
            .enforce_nonce(true);
        if let Some(turn_id) = feedback {
            message = message.components(vec![feedback_row(turn_id)]);
        }
        if let (
            0,
            Destination::Reply {
                channel,
                message: replied,
                guild,
            },
        ) = (i, destination)
        {
            let mut reference = MessageReference::new(MessageReferenceKind::Default, channel)
                .message_id(replied)
                // The user may have deleted the question meanwhile; answer anyway.
                .fail_if_not_exists(false);
            if let Some(guild) = guild {
                reference = reference.guild_id(guild);
            }
            message = message.reference_message(reference);
        }
        destination
            .channel()
            .send_message(&*self.http, message)
            .await
            .map(|posted| posted.id)
    }

    async fn destination(&self) -> Destination {
        *self
            .destination
            .get_or_init(|| async {
                match &self.target {
                    Target::Reply {
                        channel,
                        message,
                        guild,
                    } => Destination::Reply {
                        channel: *channel,
                        message: *message,
                        guild: *guild,
                    },
                    Target::InThread { thread } => Destination::Channel(*thread),
                    Target::NewThread {
                        parent,
                        message,
                        guild,
                        name,
                    } => self.open_thread(*parent, *message, *guild, name).await,
                }
            })
            .await
    }

    /// Opens a thread on the user's message. If that fails, the answer still reaches
    /// the user as a reply in the channel: a missing thread is better than silence.
    async fn open_thread(
        &self,
        parent: ChannelId,
        message: MessageId,
        guild: Option<GuildId>,
        name: &str,
    ) -> Destination {
        match parent
            .create_thread_from_message(&*self.http, message, CreateThread::new(name))
            .await
        {
            Ok(thread) => {
                self.channels.remember_thread(thread.id, parent, self.bot);
                debug!(thread = %thread.id, "opened a thread for the answer");
                Destination::Channel(thread.id)
            }
            // Someone (perhaps a previous attempt) already opened it; its id is the
            // message's id.
            Err(e) if discord_error_code(&e) == Some(THREAD_ALREADY_EXISTS) => {
                Destination::Channel(ChannelId::new(message.get()))
            }
            Err(e) => {
                warn!(channel = %parent, error = %describe(&e), "could not open a thread; replying in the channel instead");
                Destination::Reply {
                    channel: parent,
                    message,
                    guild,
                }
            }
        }
    }

    fn stop_typing(&self) {
        let token = lock(&self.typing).take();
        if let Some(token) = token {
            token.cancel();
        }
    }
}

impl Drop for MessageSink {
    /// A turn that ends without `finished` (a panic) must not leave "typing…" running.
    fn drop(&mut self) {
        self.stop_typing();
    }
}

#[async_trait]
impl ChatSink for MessageSink {
    async fn working(&self) {
        let channel = self.destination().await.channel();
        // The first indicator is sent before returning, so it always precedes the answer
        // even when the agent is instant; renewals run beside the agent call.
        match tokio::time::timeout(TYPING_TIMEOUT, self.http.broadcast_typing(channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %describe(&e), "typing indicator failed"),
            Err(_) => debug!("typing indicator timed out"),
        }
        let token = CancellationToken::new();
        let previous = lock(&self.typing).replace(token.clone());
        if let Some(previous) = previous {
            previous.cancel();
        }
        let span = tracing::info_span!("discord_typing", channel = %channel);
        tokio::spawn(renew_typing(self.http.clone(), channel, token).instrument(span));
    }

    async fn finished(&self) {
        self.stop_typing();
    }

    async fn send(&self, text: &str) -> Result<Vec<String>, SinkError> {
        // Posting clears Discord's indicator; a renewal landing after the answer would
        // show "typing…" again for 10 s.
        self.stop_typing();
        let destination = self.destination().await;
        let parts = split_text(text, MESSAGE_LIMIT);
        if parts.is_empty() {
            debug!("nothing to post: the answer is empty");
            return Ok(Vec::new());
        }
        let total = parts.len();
        let mut ids = Vec::with_capacity(total);
        for (i, part) in parts.iter().enumerate() {
            match self.post_part(destination, i, part, None).await {
                Ok(id) => ids.push(id.to_string()),
                Err(e) => return Err(part_failed(i, total, &e)),
            }
        }
        Ok(ids)
    }

    fn reply_to(&self) -> Option<String> {
        let reply_to = DiscordReplyTo {
            target: self.target.clone(),
            answering: self.answering,
        };
        serde_json::to_string(&reply_to).ok()
    }

    async fn stream(&self, mut feed: AnswerFeed) -> Result<Vec<String>, SinkError> {
        if let Some(interval) = self.edit_interval {
            feed.interval = interval;
        }
        let surface = Surface {
            sink: self,
            destination: self.destination().await,
            posted: AtomicUsize::new(0),
            feedback: feed.feedback.clone(),
        };
        let identity = |text: &str| text.to_string();
        let shape = Shape {
            limit: MESSAGE_LIMIT,
            prepare: &identity,
        };
        render(&surface, feed, &shape).await
    }
}

/// One answer's messages on Discord: posts (the first a reply), then edits.
struct Surface<'a> {
    sink: &'a MessageSink,
    destination: Destination,
    /// Messages posted so far: the first is the reply to the user's message.
    posted: AtomicUsize,
    /// The turn id the last message's 👍/👎 buttons carry (`FEEDBACK_BUTTONS`).
    feedback: Option<String>,
}

impl Surface<'_> {
    async fn post_with(&self, text: &str, feedback: Option<&str>) -> Result<String, SinkError> {
        // The first text ends "typing…"; a renewal after it would show it again.
        self.sink.stop_typing();
        let i = self.posted.fetch_add(1, Ordering::Relaxed);
        match self
            .sink
            .post_part(self.destination, i, text, feedback)
            .await
        {
            Ok(id) => Ok(id.to_string()),
            Err(e) => Err(part_failed(i, i + 1, &e)),
        }
    }

    async fn edit_with(
        &self,
        id: &str,
        text: &str,
        feedback: Option<&str>,
    ) -> Result<(), SinkError> {
        let id: u64 = id
            .parse()
            .map_err(|_| SinkError(format!("not a Discord message id: {id}").into()))?;
        let mut edit = EditMessage::new()
            .content(text)
            .allowed_mentions(no_pings());
        if let Some(turn_id) = feedback {
            edit = edit.components(vec![feedback_row(turn_id)]);
        }
        let body =
            serde_json::to_vec(&edit).map_err(|e| SinkError(Detail::caused_by("edit", e)))?;
        let channel = self.destination.channel();
        let buckets = &self.sink.buckets;
        // The low-level call, for the response's rate-limit headers.
        let send = || {
            let route = Route::ChannelMessage {
                channel_id: channel,
                message_id: MessageId::new(id),
            };
            self.sink
                .http
                .request(Request::new(route, LightMethod::Patch).body(Some(body.clone())))
        };
        buckets.ready(channel).await;
        let mut result = send().await;
        if matches!(&result, Err(e) if is_rate_limited(e)) {
            debug!(channel = %channel, "an edit was rate limited; retrying once");
            buckets.hold(channel, EDIT_RETRY_AFTER);
            buckets.ready(channel).await;
            result = send().await;
        }
        match result {
            Ok(response) => {
                buckets.observe(channel, response.headers());
                Ok(())
            }
            // Text only: serenity's error would carry the request URL, which names an
            // interaction's token (see `part_failed`).
            Err(e) => Err(SinkError(format!("edit: {}", describe(&e)).into())),
        }
    }
}

#[async_trait]
impl render::Surface for Surface<'_> {
    async fn post(&self, text: &str) -> Result<String, SinkError> {
        self.post_with(text, None).await
    }

    async fn edit(&self, id: &str, text: &str) -> Result<(), SinkError> {
        self.edit_with(id, text, None).await
    }

    /// The answer's last message carries the 👍/👎 action row: in its post when the
    /// answer came in one piece, else in its last edit.
    async fn post_last(&self, text: &str) -> Result<String, SinkError> {
        self.post_with(text, self.feedback.as_deref()).await
    }

    async fn finish_last(&self, id: &str, text: &str, changed: bool) -> Result<(), SinkError> {
        match (changed, self.feedback.as_deref()) {
            (false, None) => Ok(()),
            (_, feedback) => self.edit_with(id, text, feedback).await,
        }
    }
}

/// Renews the typing indicator until `stop` is cancelled. A failed renewal is only
/// logged: the indicator is a courtesy, the answer is what matters.
async fn renew_typing(http: Arc<Http>, channel: ChannelId, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TYPING_RENEWAL) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            result = tokio::time::timeout(TYPING_TIMEOUT, http.broadcast_typing(channel)) => {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %describe(&e), "typing renewal failed"),
                    Err(_) => debug!("typing renewal timed out"),
                }
            }
        }
    }
}

/// The error for part `i` (0-based) of a `total`-part answer that Discord refused.
///
/// Text only, without serenity's error as the cause: its reqwest error names the
/// request URL, and an interaction's or webhook's URL holds its token; [`describe`]
/// is the part of it that is safe to show.
pub(super) fn part_failed(i: usize, total: usize, e: &serenity::Error) -> SinkError {
    let cause = describe(e);
    SinkError(
        if total > 1 {
            format!("part {} of {total}: {cause}", i + 1)
        } else {
            cause
        }
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_custom_ids_name_the_turn_and_the_vote() {
        assert_eq!(
            parse_feedback("feedback:t-1:up"),
            Some(("t-1".into(), true))
        );
        assert_eq!(
            parse_feedback("feedback:t-1:down"),
            Some(("t-1".into(), false))
        );
        assert_eq!(parse_feedback("feedback::up"), None);
        assert_eq!(parse_feedback("feedback:t-1:maybe"), None);
        assert_eq!(parse_feedback("other:t-1:up"), None);
    }
}
