//! `POST /slack/events`: the Events API receiver.
//!
//! Order matters and is the point of this module: before the body is read,
//! [`Signed`] refuses an announced body over 1 MiB (413) and a request without both
//! signature headers (401); then read the raw body under the 1 MiB limit (413) → verify the signature on those exact bytes (401, nothing parsed) →
//! parse (400) → `url_verification` / `ssl_check` answered at once → an
//! `event_callback` is filtered and handed to the relay with its dedupe write
//! (`Relay::submit_once`), and Slack gets its 200 at once: the dedupe write, the agent
//! call and the reply all happen in the background. Unknown envelope and event types
//! get 200 and are ignored, as Slack expects.
//!
//! A 503 asks Slack to retry later (it retries three times): while shutting down, and
//! before `auth.test` has told the bridge who it is (it could not recognise its own
//! mention or messages yet). A refused event is not marked as seen, and one taken
//! before shutdown began is answered: the drain waits for it.
//!
//! Wire types ([`Envelope`], [`EventBody`]) stay here and are converted by hand into
//! `core::Inbound`. They are lenient on purpose: Slack adds fields all the time.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tracing::{debug, warn};

use super::signature;
use super::web_api::{Identity, SlackReplyTo};
use super::Shared;
use crate::config::SlackRespondTo;
use crate::core::error::Detail;
use crate::core::{Inbound, Platform, Rejected};
use crate::http::error::ApiError;

/// The outer JSON of every Events API request (and the `payload` of a Socket Mode
/// `events_api` envelope, which is the same object), as [`Envelope::parse`] reads it:
/// its event read with it, or why that event cannot be read. Its strings borrow from
/// the request's body where they can (no escapes in them): only what a turn keeps is
/// copied, once, into its [`Inbound`].
pub(crate) type Envelope<'a> = Wire<'a, Result<EventBody<'a>, Detail>>;

/// The envelope's fields, with its `event` as `E`.
#[derive(Debug, Deserialize)]
pub(crate) struct Wire<'a, E> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "text")]
    challenge: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    event_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    team_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    api_app_id: Option<Cow<'a, str>>,
    /// The workspaces (and users) this event is delivered for.
    #[serde(default, borrow)]
    authorizations: Vec<Authorization<'a>>,
    // A path, not `default`: serde would ask `E: Default` of the bare attribute.
    #[serde(default = "Option::default")]
    event: Option<E>,
}

impl<'a> Envelope<'a> {
    /// Reads an envelope and its event in one pass. An envelope that fails to read
    /// is read again with its event left raw, to tell a malformed event (the
    /// envelope is still read) from a malformed envelope (the error); only bad input
    /// pays the second pass.
    ///
    /// The body is checked as UTF-8 once, up front, and read as text: read as bytes,
    /// serde_json checks each string of it on its own, which costs more. A body that
    /// is not UTF-8 is read as bytes, for serde_json's own error.
    pub(crate) fn parse(json: &'a [u8]) -> Result<Envelope<'a>, serde_json::Error> {
        let raw = match std::str::from_utf8(json) {
            Ok(text) => {
                if let Ok(read) = serde_json::from_str::<Wire<'_, EventBody<'_>>>(text) {
                    return Ok(read.with_event(Ok));
                }
                serde_json::from_str::<Wire<'_, &RawValue>>(text)?
            }
            Err(_) => serde_json::from_slice::<Wire<'_, &RawValue>>(json)?,
        };
        Ok(raw.with_event(|event| {
            serde_json::from_str(event.get()).map_err(|e| Detail::caused_by("malformed event", e))
        }))
    }

    /// `event_callback`, `url_verification`, …
    pub(crate) fn kind(&self) -> &str {
        &self.kind
    }
}

impl<'a, E> Wire<'a, E> {
    fn with_event(self, read: impl FnOnce(E) -> Result<EventBody<'a>, Detail>) -> Envelope<'a> {
        Wire {
            kind: self.kind,
            challenge: self.challenge,
            event_id: self.event_id,
            team_id: self.team_id,
            api_app_id: self.api_app_id,
            authorizations: self.authorizations,
            event: self.event.map(read),
        }
    }
}

/// An optional string field, borrowed from the body when it holds no escapes. (serde
/// borrows a bare `Cow<str>` field, but reads an `Option<Cow<str>>` as an owned copy.)
fn text<'de, D>(deserializer: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'de>>::deserialize(deserializer)?.map(|t| t.0))
}

/// One entry of an envelope's `authorizations`.
#[derive(Debug, Deserialize)]
pub(crate) struct Authorization<'a> {
    #[serde(default, borrow, deserialize_with = "text")]
    team_id: Option<Cow<'a, str>>,
}

/// Whether an envelope is for this app and a workspace it is installed in: a
/// `team_id` that is neither `auth.test`'s nor among the event's `authorizations`,
/// or an `api_app_id` other than `SLACK_APP_ID` (when set), is someone else's event.
fn foreign(
    team_id: Option<&str>,
    api_app_id: Option<&str>,
    authorizations: &[Authorization<'_>],
    me: &Identity,
    app_id: Option<&str>,
) -> Option<&'static str> {
    if let Some(team) = team_id {
        let authorized = team == me.team_id
            || authorizations
                .iter()
                .any(|a| a.team_id.as_deref() == Some(team));
        if !authorized {
            return Some("event for another workspace");
        }
    }
    if let Some(app_id) = app_id {
        if api_app_id != Some(app_id) {
            return Some("event for another app");
        }
    }
    None
}

/// The inner `event` of an `event_callback`: the fields of `app_mention` and `message`
/// the bridge reads. Everything is optional so any event object parses; what matters
/// is decided in [`classify`].
#[derive(Debug, Default, Clone, Deserialize)]
pub struct EventBody<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub subtype: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub channel: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub channel_type: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub user: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub bot_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub ts: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub thread_ts: Option<Cow<'a, str>>,
    #[serde(default)]
    pub hidden: Option<bool>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub team: Option<Cow<'a, str>>,
    /// `app_home_opened`: which tab (`messages` is the bot's DM).
    #[serde(default, borrow, deserialize_with = "text")]
    pub tab: Option<Cow<'a, str>>,
    /// `assistant_thread_started`: the thread the user opened.
    #[serde(default, borrow)]
    pub assistant_thread: Option<AssistantThread<'a>>,
}

/// The `assistant_thread` of `assistant_thread_started`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct AssistantThread<'a> {
    #[serde(default, borrow, deserialize_with = "text")]
    pub channel_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    pub thread_ts: Option<Cow<'a, str>>,
}

/// What the bridge does with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Answer(Candidate),
    /// Not for the bridge; the reason is logged at debug level.
    Ignore(&'static str),
}

/// A message the bridge answers (subject to dedupe and, for thread follow-ups, to the
/// bot having answered in that thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub channel: String,
    pub user: String,
    /// The message's own `ts` (its id).
    pub ts: String,
    /// Where the answer goes: the message's `thread_ts`, else its `ts`.
    pub reply_thread: String,
    /// The text with the bot's mention removed and Slack's escaping undone.
    pub text: String,
    /// Answer only if the bot has answered in this thread before.
    pub needs_followed_thread: bool,
    /// A message in the bot's DM (Slack's assistant / agent surface).
    pub dm: bool,
}

/// The routing rules of SPEC §5, pure: which events are answered.
pub fn classify(
    ev: &EventBody<'_>,
    me: &Identity,
    respond_to: SlackRespondTo,
    follow_threads: bool,
) -> Decision {
    let is_mention = match &*ev.kind {
        "app_mention" => true,
        "message" => false,
        _ => return Decision::Ignore("event type not handled"),
    };
    // Plain messages, replies also sent to the channel, and files with a comment are
    // people talking; every other subtype (edits, deletes, joins, bot posts…) is not.
    match ev.subtype.as_deref() {
        None | Some("thread_broadcast" | "file_share") => {}
        Some(_) => return Decision::Ignore("message subtype not handled"),
    }
    if ev.hidden == Some(true) {
        return Decision::Ignore("hidden message");
    }
    if ev.bot_id.is_some() {
        return Decision::Ignore("message from a bot");
    }
    let Some(user) = ev.user.as_deref().filter(|u| !u.is_empty()) else {
        return Decision::Ignore("message without a user");
    };
    if user == me.user_id {
        return Decision::Ignore("the bot's own message");
    }
    let (Some(channel), Some(ts)) = (ev.channel.as_deref(), ev.ts.as_deref()) else {
        return Decision::Ignore("message without channel or ts");
    };
    let raw_text = ev.text.as_deref().unwrap_or_default();
    if ev.subtype.as_deref() == Some("file_share") && raw_text.trim().is_empty() {
        return Decision::Ignore("file shared without text");
    }
    let thread_ts = ev.thread_ts.as_deref().filter(|t| !t.is_empty());
    let answer = |needs_followed_thread, dm| {
        Decision::Answer(Candidate {
            channel: channel.to_owned(),
            user: user.to_owned(),
            ts: ts.to_owned(),
            reply_thread: thread_ts.unwrap_or(ts).to_owned(),
            text: clean_text(raw_text, &me.user_id),
            needs_followed_thread,
            dm,
        })
    };
    if is_mention {
        return answer(false, false);
    }
    // Events API messages carry `channel_type`; fall back on the id's prefix (`D…` is
    // a DM) rather than drop a message.
    let is_dm = match ev.channel_type.as_deref() {
        Some("im") => true,
        Some("channel" | "group" | "mpim") => false,
        Some(_) => return Decision::Ignore("channel type not handled"),
        None => channel.starts_with('D'),
    };
    if is_dm {
        return answer(false, true);
    }
    if respond_to == SlackRespondTo::Mentions && mentions(raw_text, &me.user_id) {
        return Decision::Ignore("the app_mention event covers it");
    }
    if respond_to == SlackRespondTo::All {
        return answer(false, false);
    }
    match thread_ts {
        // A reply in a thread (not the thread's parent itself).
        Some(thread) if follow_threads && thread != ts => answer(true, false),
        _ => Decision::Ignore("channel message not addressed to the bot"),
    }
}

fn mentions(text: &str, bot_user: &str) -> bool {
    !bot_user.is_empty()
        && text
            .match_indices("<@")
            .any(|(at, _)| mention_start(&text[at..], bot_user).is_some())
}

/// What follows `<@{bot_user}` when `tail` (which starts with `<@`) opens the bot's
/// mention: `>` (`<@U1>`) or `|` (`<@U1|name>`).
fn mention_start(tail: &str, bot_user: &str) -> Option<u8> {
    let after = tail.get(2..)?.strip_prefix(bot_user)?;
    after
        .as_bytes()
        .first()
        .copied()
        .filter(|b| matches!(b, b'>' | b'|'))
}

/// The length of the bot's mention at the start of `tail`, if it is one.
fn mention_len(tail: &str, bot_user: &str) -> Option<usize> {
    match mention_start(tail, bot_user)? {
        b'>' => Some(2 + bot_user.len() + 1),
        _ => tail.find('>').map(|end| end + 1),
    }
}

/// Removes the bot's mentions (`<@U1>`, `<@U1|name>`) and undoes Slack's escaping of
/// `&`, `<`, `>`, so the agent reads what the person typed.
pub fn clean_text(text: &str, bot_user: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        let tail = &rest[start..];
        let skip = match bot_user.is_empty() {
            true => None,
            false => mention_len(tail, bot_user),
        };
        match skip {
            Some(len) => {
                out.push_str(&rest[..start]);
                rest = &tail[len..];
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = &tail[2..];
            }
        }
    }
    out.push_str(rest);
    if out.contains('&') {
        out = out
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
    }
    let kept = out.trim_end().len();
    out.truncate(kept);
    let lead = out.len() - out.trim_start().len();
    out.drain(..lead);
    out
}

/// The signature headers of a Slack request (`/slack/events`, `/slack/interactivity`),
/// taken before the body is read (SPEC §6): as an extractor that runs ahead of the
/// body's, a `Content-Length` over the 1 MiB limit is refused with 413, and a request
/// without both `X-Slack-Request-Timestamp` and `X-Slack-Signature` with 401, so
/// neither costs the bridge a read of the body. (An extractor, not a middleware: it
/// copies two header values instead of boxing the request through another service.)
pub(crate) struct Signed {
    timestamp: HeaderValue,
    signature: HeaderValue,
    /// `X-Slack-Retry-Num`, when Slack is delivering the event again.
    retry: Option<HeaderValue>,
}

impl FromRequestParts<Arc<Shared>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let announced = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|len| len > super::EVENTS_BODY_LIMIT as u64) {
            return Err(
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                    .into_response(),
            );
        }
        let header = |name: &str| headers.get(name).filter(|v| !v.is_empty()).cloned();
        match (
            header("x-slack-request-timestamp"),
            header("x-slack-signature"),
        ) {
            (Some(timestamp), Some(signature)) => Ok(Signed {
                timestamp,
                signature,
                retry: headers.get("x-slack-retry-num").cloned(),
            }),
            _ => {
                shared.signature_refused("missing signature headers");
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing X-Slack-Request-Timestamp or X-Slack-Signature",
                )
                .into_response())
            }
        }
    }
}

/// The body of a signed Slack request (`/slack/events`, `/slack/interactivity`):
/// read under the limit (413), then its v0 signature checked on those exact bytes
/// (401, counted and logged at most once a minute); the answer to send otherwise.
pub(crate) fn verified_body(
    shared: &Shared,
    signed: &Signed,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
        Err(rejection) => {
            return Err(ApiError::bad_request(format!(
                "could not read the body: {rejection}"
            )));
        }
    };
    // The routes are mounted only with a signing secret; without one nothing verifies.
    let Some(secret) = shared.signing_secret.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the Events API is not enabled",
        ));
    };
    if let Err(e) = signature::verify(
        secret.expose_secret().as_bytes(),
        signed.timestamp.to_str().ok(),
        signed.signature.to_str().ok(),
        &body,
        OffsetDateTime::now_utc().unix_timestamp(),
    ) {
        shared.signature_refused(&e.to_string());
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    Ok(body)
}

/// The handler of `POST /slack/events`.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    signed: Signed,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match verified_body(&shared, &signed, body) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };

    let envelope = match Envelope::parse(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            // Slack's SSL check is a form post (`ssl_check=1&token=…`), not JSON.
            if is_form_ssl_check(&body) {
                return StatusCode::OK.into_response();
            }
            return ApiError::bad_request(format!("malformed JSON body: {e}")).into_response();
        }
    };

    match &*envelope.kind {
        "url_verification" => match envelope.challenge {
            Some(challenge) => Json(json!({ "challenge": challenge })).into_response(),
            None => ApiError::bad_request("url_verification without a challenge").into_response(),
        },
        "ssl_check" => StatusCode::OK.into_response(),
        "event_callback" => {
            if let Some(retry) = signed.retry.as_ref().and_then(|v| v.to_str().ok()) {
                debug!(
                    event_id = envelope.event_id.as_deref(),
                    retry, "Slack is retrying a delivery"
                );
            }
            on_event_callback(&shared, envelope).await
        }
        "app_rate_limited" => {
            warn!("Slack reports that this app exceeded the Events API rate limit; events were dropped");
            StatusCode::OK.into_response()
        }
        other => {
            debug!(
                kind = other,
                "ignoring an Events API request of unknown type"
            );
            StatusCode::OK.into_response()
        }
    }
}

fn is_form_ssl_check(body: &[u8]) -> bool {
    url::form_urlencoded::parse(body).any(|(k, v)| k == "ssl_check" && v == "1")
}

async fn on_event_callback(shared: &Arc<Shared>, envelope: Envelope<'_>) -> Response {
    match accept(shared, envelope).await {
        Intake::Taken | Intake::Ignored => StatusCode::OK.into_response(),
        Intake::Unavailable(why) => unavailable(why),
        Intake::Malformed(why) => ApiError::bad_request(why.to_string()).into_response(),
    }
}

/// What became of one `event_callback`, whichever transport brought it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intake {
    /// Handed to the relay (a turn, or the dedupe found it a repeat).
    Taken,
    /// Not for the bridge (filtered); acknowledged and dropped.
    Ignored,
    /// The bridge cannot take it now (shutting down, `auth.test` pending): over HTTP
    /// a 503 asks Slack to deliver it again.
    Unavailable(&'static str),
    /// Not an event the bridge can read (the 400's text says why).
    Malformed(Detail),
}

/// The one pipeline of both transports (SPEC §5): an `event_callback` from
/// `POST /slack/events` or from a Socket Mode `events_api` envelope is filtered
/// (workspace, app, [`classify`], followed threads), deduplicated and handed to the
/// relay here, so a message that arrives both ways, or twice one way, is answered once.
pub(crate) async fn accept(shared: &Arc<Shared>, envelope: Envelope<'_>) -> Intake {
    let event = match envelope.event {
        Some(Ok(event)) => event,
        Some(Err(why)) => return Intake::Malformed(why),
        None => return Intake::Malformed("event_callback without an event".into()),
    };
    let event_id = envelope.event_id.as_deref();
    shared
        .relay
        .metrics()
        .event_received(Platform::Slack, &event.kind);
    if !shared.relay.is_accepting() {
        return Intake::Unavailable("shutting down");
    }
    let (Some(me), Some(api)) = (shared.identity.get(), shared.api.as_ref()) else {
        return Intake::Unavailable("not connected to Slack yet");
    };
    if let Some(reason) = foreign(
        envelope.team_id.as_deref(),
        envelope.api_app_id.as_deref(),
        &envelope.authorizations,
        me,
        shared.app_id.as_deref(),
    ) {
        debug!(
            event_id,
            team_id = envelope.team_id.as_deref(),
            api_app_id = envelope.api_app_id.as_deref(),
            reason,
            "ignoring Slack event"
        );
        return Intake::Ignored;
    }

    // The bot's DM opened, as an assistant thread or in the agent view: prompts, and
    // no agent call.
    match (&*event.kind, event.tab.as_deref()) {
        ("assistant_thread_started", _) => {
            let thread = event.assistant_thread.unwrap_or_default();
            if let (Some(channel), Some(thread_ts)) = (thread.channel_id, thread.thread_ts) {
                super::assistant::offer_prompts(
                    shared,
                    api,
                    channel.into_owned(),
                    Some(thread_ts.into_owned()),
                );
            }
            return Intake::Taken;
        }
        ("app_home_opened", Some("messages")) => {
            if let Some(channel) = event.channel {
                super::assistant::offer_prompts(shared, api, channel.into_owned(), None);
            }
            return Intake::Taken;
        }
        _ => {}
    }

    let candidate = match classify(&event, me, shared.respond_to, shared.follow_threads) {
        Decision::Answer(candidate) => candidate,
        Decision::Ignore(reason) => {
            debug!(event_id, kind = %event.kind, reason, "ignoring Slack event");
            return Intake::Ignored;
        }
    };
    let workspace = envelope
        .team_id
        .or(event.team)
        .map_or_else(|| me.team_id.clone(), Cow::into_owned);
    if candidate.needs_followed_thread
        && !shared
            .threads
            .contains(&workspace, &candidate.channel, &candidate.reply_thread)
            .await
    {
        debug!(
            event_id,
            "ignoring a reply in a thread the bot is not part of"
        );
        return Intake::Ignored;
    }
    if candidate.dm
        && !shared
            .threads
            .contains(&workspace, &candidate.channel, &candidate.reply_thread)
            .await
    {
        // The first question of a thread in the bot's DM names the thread.
        super::assistant::name_thread(
            shared,
            api,
            &candidate.channel,
            &candidate.reply_thread,
            &candidate.text,
        );
    }
    let sink = Arc::new(shared.thread_sink(
        api.clone(),
        SlackReplyTo {
            channel: candidate.channel.clone(),
            thread_ts: candidate.reply_thread.clone(),
            message_ts: candidate.ts.clone(),
            user: candidate.user.clone(),
            team: workspace.clone(),
        },
    ));
    let inbound = Inbound {
        platform: Platform::Slack,
        workspace,
        channel: candidate.channel,
        thread: Some(candidate.reply_thread),
        user: candidate.user,
        message_id: candidate.ts,
        text: candidate.text,
    };
    // Slack gets its acknowledgement now (unless every slot is taken: then as soon as
    // one frees); the dedupe write and the turn happen in the background.
    let (dedupe, event_id) = (&shared.dedupe, envelope.event_id);
    let first = |msg: &Inbound| {
        dedupe.first_delivery_owned(
            event_id.map(Cow::into_owned),
            msg.channel.clone(),
            msg.message_id.clone(),
        )
    };
    match shared.relay.submit_once(inbound, sink, first).await {
        Ok(_) => Intake::Taken,
        // The relay tells a first delivery it is busy, in the thread.
        Err(Rejected::Busy) => Intake::Taken,
        Err(Rejected::ShuttingDown) => Intake::Unavailable("shutting down"),
        Err(Rejected::Unavailable) => Intake::Unavailable("the store is unavailable"),
    }
}

fn unavailable(why: &str) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            user_id: "UBOT".into(),
            bot_id: Some("BBOT".into()),
            team_id: "T1".into(),
        }
    }

    fn event(kind: &str, channel_type: Option<&str>, text: &str) -> EventBody<'static> {
        EventBody {
            kind: kind.to_owned().into(),
            channel: Some(
                if channel_type == Some("im") {
                    "D1"
                } else {
                    "C1"
                }
                .into(),
            ),
            channel_type: channel_type.map(|t| t.to_owned().into()),
            user: Some("U1".into()),
            text: Some(text.to_owned().into()),
            ts: Some("100.1".into()),
            ..EventBody::default()
        }
    }

    fn decide(ev: &EventBody<'_>, respond_to: SlackRespondTo, follow: bool) -> Decision {
        classify(ev, &me(), respond_to, follow)
    }

    fn answered(d: &Decision) -> Option<&Candidate> {
        match d {
            Decision::Answer(c) => Some(c),
            Decision::Ignore(_) => None,
        }
    }

    #[test]
    fn an_app_mention_is_answered_in_a_new_thread_without_the_mention() {
        let d = decide(
            &event("app_mention", None, "<@UBOT> what is &lt;b&gt; &amp; co?"),
            SlackRespondTo::Mentions,
            true,
        );
        let c = answered(&d).expect("answered");
        assert_eq!(c.reply_thread, "100.1");
        assert_eq!(c.text, "what is <b> & co?");
        assert!(!c.needs_followed_thread);
    }

    #[test]
    fn a_mention_inside_a_thread_is_answered_in_that_thread() {
        let mut ev = event("app_mention", None, "<@UBOT|bridge> again");
        ev.thread_ts = Some("99.9".into());
        let c = answered(&decide(&ev, SlackRespondTo::Mentions, true))
            .cloned()
            .expect("answered");
        assert_eq!(c.reply_thread, "99.9");
        assert_eq!(c.text, "again");
    }

    #[test]
    fn dms_are_answered_in_both_modes() {
        for mode in [SlackRespondTo::Mentions, SlackRespondTo::All] {
            let d = decide(&event("message", Some("im"), "hello"), mode, false);
            assert!(answered(&d).is_some(), "{mode:?}");
        }
        let mut no_type = event("message", None, "hello");
        no_type.channel = Some("D9".into());
        assert!(answered(&decide(&no_type, SlackRespondTo::Mentions, false)).is_some());
    }

    #[test]
    fn channel_messages_follow_respond_to() {
        let ev = event("message", Some("channel"), "just chatting");
        assert_eq!(
            decide(&ev, SlackRespondTo::Mentions, true),
            Decision::Ignore("channel message not addressed to the bot")
        );
        assert!(answered(&decide(&ev, SlackRespondTo::All, true)).is_some());
    }

    #[test]
    fn a_channel_message_with_the_mention_is_left_to_app_mention() {
        let ev = event("message", Some("channel"), "<@UBOT> hi");
        assert_eq!(
            decide(&ev, SlackRespondTo::Mentions, true),
            Decision::Ignore("the app_mention event covers it")
        );
        // With `all` both events qualify; the per-message dedupe key keeps one.
        assert!(answered(&decide(&ev, SlackRespondTo::All, true)).is_some());
    }

    #[test]
    fn thread_replies_are_answered_only_when_following_threads() {
        let mut ev = event("message", Some("channel"), "follow-up");
        ev.thread_ts = Some("50.5".into());
        let c = answered(&decide(&ev, SlackRespondTo::Mentions, true))
            .cloned()
            .expect("candidate");
        assert!(c.needs_followed_thread);
        assert_eq!(c.reply_thread, "50.5");
        assert!(answered(&decide(&ev, SlackRespondTo::Mentions, false)).is_none());
        // A thread's parent message is not a reply in it.
        ev.thread_ts = ev.ts.clone();
        assert!(answered(&decide(&ev, SlackRespondTo::Mentions, true)).is_none());
    }

    #[test]
    fn bots_the_bot_itself_and_most_subtypes_are_ignored() {
        let mut bot = event("message", Some("im"), "beep");
        bot.bot_id = Some("B2".into());
        assert!(answered(&decide(&bot, SlackRespondTo::All, true)).is_none());

        let mut own = event("message", Some("im"), "my own answer");
        own.user = Some("UBOT".into());
        assert!(answered(&decide(&own, SlackRespondTo::All, true)).is_none());

        for subtype in [
            "message_changed",
            "message_deleted",
            "channel_join",
            "bot_message",
            "me_message",
        ] {
            let mut ev = event("message", Some("im"), "x");
            ev.subtype = Some(subtype.into());
            assert!(
                answered(&decide(&ev, SlackRespondTo::All, true)).is_none(),
                "{subtype}"
            );
        }
        for subtype in ["thread_broadcast", "file_share"] {
            let mut ev = event("message", Some("im"), "with text");
            ev.subtype = Some(subtype.into());
            assert!(
                answered(&decide(&ev, SlackRespondTo::All, true)).is_some(),
                "{subtype}"
            );
        }
        let mut file = event("message", Some("im"), "  ");
        file.subtype = Some("file_share".into());
        assert!(answered(&decide(&file, SlackRespondTo::All, true)).is_none());

        let mut hidden = event("message", Some("im"), "x");
        hidden.hidden = Some(true);
        assert!(answered(&decide(&hidden, SlackRespondTo::All, true)).is_none());

        assert!(answered(&decide(
            &event("reaction_added", None, ""),
            SlackRespondTo::All,
            true
        ))
        .is_none());
    }

    #[test]
    fn clean_text_strips_only_the_bots_mentions() {
        assert_eq!(clean_text("<@UBOT> hi <@U2>", "UBOT"), "hi <@U2>");
        assert_eq!(clean_text("ask <@UBOT|bridge> now", "UBOT"), "ask  now");
        assert_eq!(clean_text("<@UBOTX> hi", "UBOT"), "<@UBOTX> hi");
        assert_eq!(clean_text("<@", "UBOT"), "<@");
        assert_eq!(clean_text("<@UBOT>", "UBOT"), "");
        assert_eq!(clean_text("a &amp;lt; b", "UBOT"), "a &lt; b");
    }

    #[test]
    fn strings_with_escapes_read_as_well_as_plain_ones() {
        // Plain strings borrow from the body; escaped ones are unescaped copies.
        let body = br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention","channel":"C1","user":"U1","ts":"1.1","text":"<@UBOT> say \"hi\"\n\u00e9t\u00e9"}}"#;
        let read = Envelope::parse(body).expect("the envelope reads");
        assert!(matches!(read.event_id, Some(Cow::Borrowed("Ev1"))));
        let event = read.event.expect("an event").expect("the event reads");
        assert_eq!(
            event.text.as_deref(),
            Some("<@UBOT> say \"hi\"\n\u{e9}t\u{e9}")
        );
        let candidate = decide(&event, SlackRespondTo::Mentions, false);
        assert_eq!(
            answered(&candidate).map(|c| c.text.as_str()),
            Some("say \"hi\"\n\u{e9}t\u{e9}")
        );
    }

    #[test]
    fn a_malformed_event_is_told_from_a_malformed_envelope() {
        let read = Envelope::parse(br#"{"type":"event_callback","event":{"type":5}}"#)
            .expect("the envelope reads");
        assert_eq!(read.kind(), "event_callback");
        let why = read
            .event
            .expect("an event")
            .expect_err("a malformed event");
        assert!(why.to_string().starts_with("malformed event"), "{why}");

        let read = Envelope::parse(
            br#"{"type":"event_callback","event":{"type":"app_mention","channel":"C1"}}"#,
        )
        .expect("the envelope reads");
        let event = read.event.expect("an event").expect("the event reads");
        assert_eq!(
            (&*event.kind, event.channel.as_deref()),
            ("app_mention", Some("C1"))
        );

        assert!(Envelope::parse(br#"{"type":"event_callback","event":{}"#).is_err());
        assert!(Envelope::parse(br#"{"event":{}}"#).is_err(), "no type");
        // Not UTF-8 (a byte in a field the bridge skips): read as bytes, as serde_json does.
        let read = Envelope::parse(
            b"{\"type\":\"event_callback\",\"x\":\"\xff\",\"event\":{\"type\":\"message\"}}",
        )
        .expect("the envelope reads");
        assert!(matches!(read.event, Some(Ok(_))));
    }
}
