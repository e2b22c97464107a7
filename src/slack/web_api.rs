//! The Slack Web API calls the bridge makes (`auth.test`, `chat.postMessage`,
//! `reactions.add`, `reactions.remove`) through slack-morphism, and [`ThreadSink`],
//! the [`ChatSink`] that answers one Slack message in its thread.
//!
//! An answer's own calls, `chat.postMessage` and `chat.update`, skip slack-morphism's
//! connector ([`Posting`]): they are a JSON body and an `{ok, error, ts}` answer over
//! the same kind of pooled hyper client, and the connector's per-call work (the URL
//! parsed again, the body copied, the headers cloned, the answer decoded twice) was a
//! tenth of a Slack event's CPU at full load. Everything else stays slack-morphism's.
//!
//! The client talks to `SLACK_API_BASE` over a hyper-rustls connector that also allows
//! plain http, so tests run it against a local fake. Every call has a time limit (the
//! hyper client has none, and a hung Slack must not wedge a conversation's lane) and
//! waits out `429 Retry-After` a few times instead of failing the reply. Other API
//! errors are logged with Slack's error code (`channel_not_found`, `not_in_channel`…),
//! never with the token.
//!
//! Deliberately absent: Slack's proactive per-tier throttling (slack-morphism's rate
//! controller would delay every post by its own estimate; the bridge posts a few
//! messages per turn and relies on Slack's `Retry-After` instead).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};
use url::Url;

use super::dedupe::AnsweredThreads;
use super::mrkdwn;
use crate::config::{SlackProgress, SlackStreaming};
use crate::core::chunk::split_text;
use crate::core::error::Detail;
use crate::core::message::Platform;
use crate::core::ports::{AnswerFeed, ChatSink, SinkError};
use crate::core::render::{final_parts, render, Shape, Surface};

/// Slack truncates messages past 40,000 characters and advises staying under 4,000;
/// 3,900 leaves room for the code-fence repair the splitter may add.
pub const MESSAGE_LIMIT: usize = 3_900;

/// How many times one call waits out a `429` before giving up.
const MAX_RATE_LIMIT_RETRIES: u32 = 5;

/// `Retry-After` is honoured up to this; a longer wait means Slack is throttling hard,
/// and the reply is better failed (and logged) than held for minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Used when a `429` comes without a readable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One Web API call's limit, retries excluded.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Web API calls in flight at once. Slack allows about one post per second per
/// channel; 32 concurrent calls keep hundreds of posts a second moving.
const MAX_CALLS_IN_FLIGHT: usize = 32;

/// Why a Web API call failed, by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackApiError {
    /// Still rate limited after the retries.
    #[error("rate limited by Slack (Retry-After {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// Slack answered `{"ok": false, "error": code}`.
    #[error("Slack answered `{0}`")]
    Api(String),
    #[error("Slack did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection, TLS, HTTP status or decoding failure.
    #[error("Slack request failed: {0}")]
    Transport(#[source] Detail),
}

impl SlackApiError {
    /// Slack's error code, for logs (`ratelimited` for a 429, `-` for transport).
    pub fn code(&self) -> &str {
        match self {
            SlackApiError::Api(code) => code,
            SlackApiError::RateLimited { .. } => "ratelimited",
            SlackApiError::Timeout(_) => "timeout",
            SlackApiError::Transport(_) => "-",
        }
    }
}

impl From<SlackClientError> for SlackApiError {
    fn from(e: SlackClientError) -> Self {
        match e {
            SlackClientError::ApiError(api) => SlackApiError::Api(api.code),
            SlackClientError::RateLimitError(rl) => SlackApiError::RateLimited {
                retry_after: rl.retry_after,
            },
            other => SlackApiError::Transport(Detail::from_error(other)),
        }
    }
}

/// Who the bridge is in the workspace, from `auth.test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The bot user's id (`U…`): how it is mentioned, and how its own messages are told apart.
    pub user_id: String,
    /// The bot's id (`B…`).
    pub bot_id: Option<String>,
    pub team_id: String,
}

/// The Web API client with the bot token. Not `Debug`: it holds the token.
pub struct WebApi {
    client: SlackClient<SlackClientHyperHttpsConnector>,
    /// `chat.postMessage` and `chat.update`, without the connector's overhead.
    posting: Posting,
    token: SlackApiToken,
    /// At most [`MAX_CALLS_IN_FLIGHT`] calls at once, so at most that many
    /// connections to Slack: a burst of turns queues here instead of opening a
    /// connection (and its buffers) per turn.
    in_flight: Semaphore,
    /// Set when Slack refused `chat.startStream` for the whole app (an unknown
    /// method, a missing scope): later answers go straight to `update` mode instead
    /// of paying a refused call each.
    native_refused: AtomicBool,
}

/// Slack's limit for the text of one section block.
const SECTION_LIMIT: usize = 3_000;

/// The `action_id` of the feedback buttons; a click's value is `{turn_id}:up|down`.
pub const FEEDBACK_ACTION: &str = "feedback";

/// The `event_type` of the metadata on every answer (SPEC §3).
pub const TURN_METADATA: &str = "agent_bridge_turn";

/// The body of `chat.postMessage` and `chat.update` as the bridge sends them: only the
/// fields it sets. (slack-morphism's request types flatten a content struct of a dozen
/// optional fields and are serialized as a map: measurable on the hot path, where
/// every answer is one of these calls; the transport stays slack-morphism's.)
#[derive(serde::Serialize)]
struct MessageBody<'a> {
    channel: &'a str,
    /// `chat.update`: the message replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
    /// `chat.postMessage`: the thread posted into.
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_ts: Option<&'a str>,
    /// The message's text, or with blocks the notification fallback Slack asks for.
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<Vec<Block<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<TurnMetadata<'a>>,
}

/// Message `metadata` naming the turn an answer belongs to (SPEC §3).
#[derive(serde::Serialize)]
struct TurnMetadata<'a> {
    event_type: &'static str,
    event_payload: TurnPayload<'a>,
}

#[derive(serde::Serialize)]
struct TurnPayload<'a> {
    turn_id: &'a str,
}

fn turn_metadata(turn: &str) -> TurnMetadata<'_> {
    TurnMetadata {
        event_type: TURN_METADATA,
        event_payload: TurnPayload { turn_id: turn },
    }
}

/// What the bridge reads of a Web API answer: `ok`, Slack's error code, and the
/// message's `ts` (Slack also returns the whole message, which is skipped, not
/// decoded).
#[derive(serde::Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

/// `chat.postMessage` and `chat.update` over a pooled hyper client (see the module
/// documentation): their URIs and the bearer header are built once.
struct Posting {
    client: LegacyClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    post_message: Uri,
    update: Uri,
    /// `Bearer {token}`, marked sensitive (never shown by `Debug`).
    auth: HeaderValue,
}

impl Posting {
    fn new(
        https: HttpsConnector<HttpConnector>,
        base: &str,
        token: &SecretString,
    ) -> Result<Posting, SlackApiError> {
        let uri = |method: &str| {
            format!("{base}/{method}").parse::<Uri>().map_err(|e| {
                SlackApiError::Transport(Detail::caused_by("SLACK_API_BASE is not a URI", e))
            })
        };
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", token.expose_secret())).map_err(|_| {
                SlackApiError::Transport(
                    "SLACK_BOT_TOKEN has characters no HTTP header may carry".into(),
                )
            })?;
        auth.set_sensitive(true);
        Ok(Posting {
            client: LegacyClient::builder(TokioExecutor::new()).build(https),
            post_message: uri("chat.postMessage")?,
            update: uri("chat.update")?,
            auth,
        })
    }

    /// One attempt: `body` as JSON to `uri`; the answer's `ts`. Errors as
    /// slack-morphism's would map them: `ok: false` → [`SlackApiError::Api`], 429 →
    /// [`SlackApiError::RateLimited`] with its `Retry-After`, anything else that is
    /// not an `ok` JSON answer → [`SlackApiError::Transport`].
    async fn send(
        &self,
        uri: &Uri,
        body: &(impl serde::Serialize + Sync),
    ) -> Result<Option<String>, SlackApiError> {
        // Room for a typical answer with its blocks at once (`to_vec` starts at 128
        // bytes and grows by copying).
        let mut json = Vec::with_capacity(2048);
        serde_json::to_writer(&mut json, body)
            .map_err(|e| SlackApiError::Transport(Detail::caused_by("encode the request", e)))?;
        let request = hyper::Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .header(AUTHORIZATION, self.auth.clone())
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| SlackApiError::Transport(Detail::caused_by("build the request", e)))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| SlackApiError::Transport(Detail::caused_by("send the request", e)))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs);
            return Err(SlackApiError::RateLimited { retry_after });
        }
        let text = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SlackApiError::Transport(Detail::caused_by("read the answer", e)))?
            .to_bytes();
        if !status.is_success() {
            return Err(SlackApiError::Transport(
                format!("Slack answered HTTP {status}").into(),
            ));
        }
        let answer: Answer = serde_json::from_slice(&text)
            .map_err(|e| SlackApiError::Transport(Detail::caused_by("decode the answer", e)))?;
        match (answer.ok, answer.error) {
            (true, _) => Ok(answer.ts),
            (false, Some(code)) => Err(SlackApiError::Api(code)),
            (false, None) => Err(SlackApiError::Api("unknown_error".to_owned())),
        }
    }
}

/// With `feedback`, a message's blocks: its text as section blocks (a section holds
/// at most 3,000 characters), then the buttons.
fn blocks_with<'a>(text: &str, feedback: Option<&'a str>) -> Option<Vec<Block<'a>>> {
    let turn_id = feedback?;
    let mut blocks: Vec<Block<'a>> = split_text(text, SECTION_LIMIT)
        .into_iter()
        .map(|text| Block::Section {
            text: Text::Mrkdwn { text },
        })
        .collect();
    let [positive_button, negative_button] =
        FEEDBACK_BUTTONS.map(|(emoji, label, vote)| Button::new(emoji, label, Vote(turn_id, vote)));
    blocks.push(Block::ContextActions {
        elements: [Element::FeedbackButtons {
            action_id: FEEDBACK_ACTION,
            positive_button,
            negative_button,
        }],
    });
    Some(blocks)
}

/// The blocks of an answer (`chat.postMessage`, `chat.update`), written as
/// slack-morphism's `SlackBlock`s serialize (a test pins the two together) but as
/// plain structs: its blocks are internally tagged enums of newtypes, which serde
/// serializes through an intermediate tagging serializer, on every answer.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Section { text: Text<String> },
    ContextActions { elements: [Element<'a>; 1] },
}

#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Text<T> {
    Mrkdwn { text: T },
    PlainText { text: T },
}

#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Element<'a> {
    FeedbackButtons {
        action_id: &'static str,
        positive_button: Button<'a>,
        negative_button: Button<'a>,
    },
}

#[derive(serde::Serialize)]
struct Button<'a> {
    text: Text<&'static str>,
    value: Vote<'a>,
    accessibility_label: &'static str,
}

impl<'a> Button<'a> {
    fn new(emoji: &'static str, label: &'static str, value: Vote<'a>) -> Self {
        Button {
            text: Text::PlainText { text: emoji },
            value,
            accessibility_label: label,
        }
    }
}

/// A feedback button's value, `{turn_id}:up` or `{turn_id}:down`
/// (`interactivity::on_payload` reads it back), written without a copy.
struct Vote<'a>(&'a str, &'static str);

impl serde::Serialize for Vote<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}:{}", self.0, self.1))
    }
}

/// The feedback buttons, positive then negative: the emoji shown, the accessibility
/// label, and the vote their value carries after the turn id.
const FEEDBACK_BUTTONS: [(&str, &str, &str); 2] =
    [("👍", "Good answer", "up"), ("👎", "Bad answer", "down")];

/// Slack's `feedback_buttons` in a `context_actions` block, as slack-morphism's block
/// (`chat.stopStream`).
fn feedback_block(turn_id: &str) -> SlackBlock {
    let [positive, negative] = FEEDBACK_BUTTONS.map(|(emoji, label, vote)| {
        SlackFeedbackButtonItem::new(emoji.into(), format!("{turn_id}:{vote}"))
            .with_accessibility_label(SlackAccessibilityLabel(label.to_owned()))
    });
    let buttons = SlackBlockFeedbackButtonsElement::new(positive, negative)
        .with_action_id(SlackActionId(FEEDBACK_ACTION.to_owned()));
    SlackContextActionsBlock::new(vec![buttons.into()]).into()
}

/// `assistant.threads.setSuggestedPrompts` with an optional `thread_ts`
/// (slack-morphism's request type requires one).
#[derive(serde::Serialize)]
struct SuggestedPrompts<'a> {
    channel_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_ts: Option<&'a str>,
    prompts: Vec<Prompt<'a>>,
}

#[derive(serde::Serialize)]
struct Prompt<'a> {
    title: &'a str,
    message: &'a str,
}

/// Refusals of `chat.startStream` that hold for every channel (unlike
/// `method_not_supported_for_channel_type`, which is tried again next time).
const NATIVE_REFUSALS: &[&str] = &[
    "unknown_method",
    "not_allowed",
    "missing_scope",
    "not_allowed_token_type",
];

impl WebApi {
    /// A client for `api_base` (e.g. `https://slack.com/api`). Fails only when the TLS
    /// configuration cannot be built (no usable root certificates), or when the token
    /// or `api_base` cannot go into a request at all.
    pub fn new(api_base: &Url, token: &SecretString) -> Result<Self, SlackApiError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| SlackApiError::Transport(Detail::caused_by("load root certificates", e)))?
            // Plain http only reaches a base the operator configured (a proxy or a
            // fake in tests); Slack itself is https.
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let base = api_base.as_str().trim_end_matches('/');
        let posting = Posting::new(https.clone(), base, token)?;
        let connector = SlackClientHyperConnector::with_connector(https).with_slack_api_url(base);
        Ok(WebApi {
            client: SlackClient::new(connector),
            posting,
            token: SlackApiToken::new(SlackApiTokenValue(token.expose_secret().to_owned())),
            in_flight: Semaphore::new(MAX_CALLS_IN_FLIGHT),
            native_refused: AtomicBool::new(false),
        })
    }

    /// `auth.test`: the bot's own ids.
    pub async fn auth_test(&self) -> Result<Identity, SlackApiError> {
        let answer = self
            .call("auth.test", || async {
                self.client.open_session(&self.token).auth_test().await
            })
            .await?;
        Ok(Identity {
            user_id: answer.user_id.0,
            bot_id: answer.bot_id.map(|b| b.0),
            team_id: answer.team_id.0,
        })
    }

    /// `apps.connections.open` with the app-level token: a fresh Socket Mode
    /// WebSocket URL (valid for one connection, for a short while).
    pub async fn open_socket(&self, app_token: &SecretString) -> Result<String, SlackApiError> {
        let token = SlackApiToken::new(SlackApiTokenValue(app_token.expose_secret().to_owned()));
        let answer = self
            .call("apps.connections.open", || async {
                self.client
                    .open_session(&token)
                    .apps_connections_open(&SlackApiAppsConnectionOpenRequest::new())
                    .await
            })
            .await?;
        Ok(answer.url.0.to_string())
    }

    /// `chat.postMessage` in a thread; returns the posted message's `ts`.
    pub async fn post_in_thread(
        &self,
        channel: &str,
        thread_ts: &str,
        text: &str,
    ) -> Result<String, SlackApiError> {
        self.post_in_thread_with(channel, thread_ts, text, None, None)
            .await
    }

    /// `chat.postMessage` in a thread; with `feedback` (a turn id) the message is
    /// blocks — its text, then the 👍/👎 buttons — with `text` as the notification.
    /// With `turn`, the message carries it as metadata (`agent_bridge_turn`), so a
    /// restarted bridge finds the answer it posted (SPEC §3).
    pub async fn post_in_thread_with(
        &self,
        channel: &str,
        thread_ts: &str,
        text: &str,
        feedback: Option<&str>,
        turn: Option<&str>,
    ) -> Result<String, SlackApiError> {
        let body = MessageBody {
            channel,
            ts: None,
            thread_ts: Some(thread_ts),
            text,
            blocks: blocks_with(text, feedback),
            metadata: turn.map(turn_metadata),
        };
        let posting = &self.posting;
        let ts = self
            .call("chat.postMessage", || {
                posting.send(&posting.post_message, &body)
            })
            .await?;
        ts.ok_or_else(|| {
            SlackApiError::Transport("chat.postMessage answered ok without a ts".into())
        })
    }

    /// Whether the thread holds an answer carrying `turn` as metadata
    /// (`conversations.replies` with `include_all_metadata`): a turn recovered after
    /// a crash is looked up before it is posted again. Rare (only such turns), which
    /// keeps it inside the method's tight limits; the first 200 replies are read.
    pub async fn turn_posted(
        &self,
        channel: &str,
        thread_ts: &str,
        turn: &str,
    ) -> Result<bool, SlackApiError> {
        let params = [
            ("channel", Some(channel)),
            ("ts", Some(thread_ts)),
            ("include_all_metadata", Some("true")),
            ("limit", Some("200")),
        ];
        let answer: SlackApiConversationsRepliesResponse = self
            .call("conversations.replies", || async {
                self.client
                    .open_session(&self.token)
                    .http_session_api
                    .http_get("conversations.replies", &params, None)
                    .await
            })
            .await?;
        Ok(answer.messages.iter().any(|m| {
            m.content.metadata.as_ref().is_some_and(|meta| {
                meta.event_type == TURN_METADATA
                    && meta
                        .event_payload
                        .as_ref()
                        .and_then(|p| p.get("turn_id"))
                        .is_some_and(|id| id == turn)
            })
        }))
    }

    /// `chat.update`: replaces a message's text.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
    ) -> Result<(), SlackApiError> {
        self.update_message_with(channel, ts, text, None).await
    }

    /// `chat.update`, with the 👍/👎 buttons under the text when `feedback` is set.
    pub async fn update_message_with(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        feedback: Option<&str>,
    ) -> Result<(), SlackApiError> {
        let body = MessageBody {
            channel,
            ts: Some(ts),
            thread_ts: None,
            text,
            blocks: blocks_with(text, feedback),
            metadata: None,
        };
        let posting = &self.posting;
        self.call("chat.update", || posting.send(&posting.update, &body))
            .await
            .map(drop)
    }

    /// `chat.startStream` in a thread, addressed to the user who asked; returns the
    /// streaming message's `ts`.
    pub async fn start_stream(
        &self,
        channel: &str,
        thread_ts: &str,
        recipient: (&str, &str),
        markdown: &str,
    ) -> Result<String, SlackApiError> {
        let (user, team) = recipient;
        let request = SlackApiChatStartStreamRequest::new(SlackChannelId(channel.to_owned()))
            .with_thread_ts(SlackTs(thread_ts.to_owned()))
            .with_recipient_user_id(SlackUserId(user.to_owned()))
            .with_recipient_team_id(SlackTeamId(team.to_owned()))
            .with_markdown_text(markdown.to_owned());
        let answer = self
            .call("chat.startStream", || async {
                self.client
                    .open_session(&self.token)
                    .chat_start_stream(&request)
                    .await
            })
            .await?;
        Ok(answer.ts.0)
    }

    /// `chat.appendStream`: appends Markdown to a streaming message.
    pub async fn append_stream(
        &self,
        channel: &str,
        ts: &str,
        markdown: &str,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiChatAppendStreamRequest::new(
            SlackChannelId(channel.to_owned()),
            SlackTs(ts.to_owned()),
        )
        .with_markdown_text(markdown.to_owned());
        self.call("chat.appendStream", || async {
            self.client
                .open_session(&self.token)
                .chat_append_stream(&request)
                .await
        })
        .await
        .map(drop)
    }

    /// `chat.stopStream`: ends a streaming message, appending `markdown` if any, and
    /// the 👍/👎 buttons below it when `feedback` is set.
    pub async fn stop_stream(
        &self,
        channel: &str,
        ts: &str,
        markdown: Option<&str>,
        feedback: Option<&str>,
    ) -> Result<(), SlackApiError> {
        let mut content = SlackMessageContent::new();
        if let Some(markdown) = markdown.filter(|m| !m.is_empty()) {
            content = content.with_markdown_text(markdown.to_owned());
        }
        if let Some(turn_id) = feedback {
            content = content.with_blocks(vec![feedback_block(turn_id)]);
        }
        let request = SlackApiChatStopStreamRequest::new(
            SlackChannelId(channel.to_owned()),
            SlackTs(ts.to_owned()),
            content,
        );
        self.call("chat.stopStream", || async {
            self.client
                .open_session(&self.token)
                .chat_stop_stream(&request)
                .await
        })
        .await
        .map(drop)
    }

    /// `assistant.threads.setStatus`: the loading status under a thread.
    pub async fn set_status(
        &self,
        channel: &str,
        thread_ts: &str,
        status: &str,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiAssistantThreadsSetStatusRequest::new(
            SlackChannelId(channel.to_owned()),
            status.to_owned(),
            SlackTs(thread_ts.to_owned()),
        );
        self.call("assistant.threads.setStatus", || async {
            self.client
                .open_session(&self.token)
                .assistant_threads_set_status(&request)
                .await
        })
        .await
        .map(drop)
    }

    /// `assistant.threads.setSuggestedPrompts`. Slack's reference: `thread_ts` belongs
    /// to the (legacy) assistant view's threads only; in the agent view the call must
    /// go without it (with it, Slack silently ignores the call). So `None` for the agent
    /// view's DM (`app_home_opened`), `Some` for `assistant_thread_started`.
    pub async fn set_suggested_prompts(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        prompts: &[(String, String)],
    ) -> Result<(), SlackApiError> {
        let request = SuggestedPrompts {
            channel_id: channel,
            thread_ts,
            prompts: prompts
                .iter()
                .map(|(title, message)| Prompt { title, message })
                .collect(),
        };
        self.call("assistant.threads.setSuggestedPrompts", || async {
            self.client
                .open_session(&self.token)
                .http_session_api
                .http_post::<_, serde_json::Value>(
                    "assistant.threads.setSuggestedPrompts",
                    &request,
                    None,
                )
                .await
        })
        .await
        .map(drop)
    }

    /// `assistant.threads.setTitle`: the title a thread shows in the DM's history.
    pub async fn set_title(
        &self,
        channel: &str,
        thread_ts: &str,
        title: &str,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiAssistantThreadSetTitleRequest::new(
            SlackChannelId(channel.to_owned()),
            SlackTs(thread_ts.to_owned()),
            title.to_owned(),
        );
        self.call("assistant.threads.setTitle", || async {
            self.client
                .open_session(&self.token)
                .assistant_threads_set_title(&request)
                .await
        })
        .await
        .map(drop)
    }

    /// `reactions.add` on a message.
    pub async fn add_reaction(
        &self,
        channel: &str,
        ts: &str,
        name: &str,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiReactionsAddRequest::new(
            SlackChannelId(channel.to_owned()),
            SlackReactionName(name.to_owned()),
            SlackTs(ts.to_owned()),
        );
        self.call("reactions.add", || async {
            self.client
                .open_session(&self.token)
                .reactions_add(&request)
                .await
        })
        .await
        .map(|_| ())
    }

    /// `reactions.remove` from a message.
    pub async fn remove_reaction(
        &self,
        channel: &str,
        ts: &str,
        name: &str,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiReactionsRemoveRequest::new(SlackReactionName(name.to_owned()))
            .with_channel(SlackChannelId(channel.to_owned()))
            .with_timestamp(SlackTs(ts.to_owned()));
        self.call("reactions.remove", || async {
            self.client
                .open_session(&self.token)
                .reactions_remove(&request)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Runs one call with a time limit, waiting out `429 Retry-After` up to
    /// [`MAX_RATE_LIMIT_RETRIES`] times.
    async fn call<T, E, F, Fut>(&self, method: &'static str, attempt: F) -> Result<T, SlackApiError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        SlackApiError: From<E>,
    {
        let mut retries = 0;
        loop {
            let permit = self.in_flight.acquire().await;
            let result = match tokio::time::timeout(CALL_TIMEOUT, attempt()).await {
                Ok(result) => result.map_err(SlackApiError::from),
                Err(_) => Err(SlackApiError::Timeout(CALL_TIMEOUT)),
            };
            // Not held while waiting out a rate limit.
            drop(permit);
            match result {
                Err(SlackApiError::RateLimited { retry_after })
                    if retries < MAX_RATE_LIMIT_RETRIES =>
                {
                    let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                    if wait > MAX_RETRY_AFTER {
                        return Err(SlackApiError::RateLimited { retry_after });
                    }
                    retries += 1;
                    warn!(
                        method,
                        retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        retry = retries,
                        "Slack rate limit; waiting Retry-After before retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }
}

/// Answers one Slack message: in its thread, streamed per `SLACK_STREAMING`, with
/// the progress indicator per `SLACK_PROGRESS` while the agent works. Built per
/// inbound message.
pub struct ThreadSink {
    pub api: Arc<WebApi>,
    /// Where the answer goes (kept as it is in the journal).
    pub to: SlackReplyTo,
    /// `SLACK_PROGRESS_REACTION`; `None` disables it.
    pub reaction: Option<Arc<str>>,
    /// `SLACK_PROGRESS_REACTION_DELAY_MS`: answers faster than this get no indicator.
    pub reaction_after: Duration,
    /// `SLACK_PROGRESS`.
    pub progress: SlackProgress,
    /// `SLACK_STATUS_TEXT`.
    pub status_text: Arc<str>,
    /// `SLACK_STREAMING`.
    pub streaming: SlackStreaming,
    /// Told when an answer was posted, so later messages in the thread are followed.
    pub threads: Arc<AnsweredThreads>,
    /// Set when the progress reaction was added (and so must be removed).
    pub reacted: AtomicBool,
}

/// Slack refusals of `assistant.threads.setStatus` are logged once per process.
static STATUS_REFUSAL_LOGGED: AtomicBool = AtomicBool::new(false);

/// Least time between two `chat.appendStream` calls of one answer.
const APPEND_INTERVAL: Duration = Duration::from_millis(250);

/// Where a Slack answer goes, as the journal keeps it (`ChatSink::reply_to`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SlackReplyTo {
    pub channel: String,
    /// The thread the answer goes into (the message's `thread_ts`, else its `ts`).
    pub thread_ts: String,
    /// The user's message, which gets the progress reaction.
    pub message_ts: String,
    /// Who asked, and in which team: the recipient of a native stream.
    pub user: String,
    pub team: String,
}

impl ThreadSink {
    /// The journal's id of the turn this sink answers (`Inbound::turn_id`).
    pub fn turn_id(&self) -> String {
        crate::core::message::turn_id(
            Platform::Slack,
            &self.to.team,
            &self.to.channel,
            &self.to.message_ts,
        )
    }

    async fn add_reaction(&self) {
        let Some(name) = &self.reaction else { return };
        match self
            .api
            .add_reaction(&self.to.channel, &self.to.message_ts, name)
            .await
        {
            Ok(()) => self.reacted.store(true, Ordering::Relaxed),
            // Another replica or an earlier attempt already put it there.
            Err(SlackApiError::Api(code)) if code == "already_reacted" => {
                self.reacted.store(true, Ordering::Relaxed);
            }
            Err(e) => warn!(
                slack_error = e.code(),
                error = %e,
                channel = %self.to.channel,
                "could not add the progress reaction"
            ),
        }
    }

    fn shape_limit(&self) -> usize {
        MESSAGE_LIMIT
    }

    /// Marks the thread as answered once an answer's messages are posted (one mark per
    /// answer: the callers of [`ThreadSink::post_parts`] and of `render` do it).
    /// `journaled`: the answer is a journaled turn's (`AnswerFeed::journaled`).
    fn mark_answered(&self, result: &Result<Vec<String>, SinkError>, journaled: bool) {
        if matches!(result, Ok(ids) if !ids.is_empty()) {
            self.mark_thread(journaled);
        }
    }

    /// A thread rooted at the asking message of a journaled turn needs no mark in the
    /// store: the turn's journal row is one (`AnsweredThreads::mark`).
    fn mark_thread(&self, journaled: bool) {
        let rooted = journaled && self.to.thread_ts == self.to.message_ts;
        self.threads
            .mark(&self.to.channel, &self.to.thread_ts, rooted);
    }

    /// `chat.postMessage` of each part, the last with the feedback buttons when
    /// `feedback` is set.
    async fn post_parts(
        &self,
        parts: &[String],
        feedback: Option<&str>,
    ) -> Result<Vec<String>, SinkError> {
        let mut posted = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let buttons = feedback.filter(|_| i + 1 == parts.len());
            match self
                .api
                .post_in_thread_with(
                    &self.to.channel,
                    &self.to.thread_ts,
                    part,
                    buttons,
                    Some(&self.turn_id()),
                )
                .await
            {
                Ok(ts) => posted.push(ts),
                Err(e) => {
                    warn!(
                        slack_error = e.code(),
                        error = %e,
                        channel = %self.to.channel,
                        thread = %self.to.thread_ts,
                        posted = posted.len(),
                        "chat.postMessage failed"
                    );
                    return Err(SinkError(Detail::caused_by("chat.postMessage", e)));
                }
            }
        }
        Ok(posted)
    }

    /// `update` mode: post, then `chat.update`, paced by the feed's interval.
    async fn stream_by_update(&self, feed: AnswerFeed) -> Result<Vec<String>, SinkError> {
        let shape = Shape {
            limit: self.shape_limit(),
            prepare: &mrkdwn::to_mrkdwn,
        };
        // The last message gets the buttons as it is completed (see `Finishing`).
        let surface = Finishing {
            sink: self,
            feedback: feed.feedback.clone(),
        };
        let journaled = feed.journaled;
        let result = render(&surface, feed, &shape).await;
        self.mark_answered(&result, journaled);
        result
    }

    /// `native` mode: `chat.startStream`, appends at most every 250 ms, `chat.stopStream`.
    /// Refused or expired, the rest of the answer continues in `update` mode, starting
    /// exactly after the text the stream already holds. An answer longer than one
    /// message continues the same way once the stream holds a message's worth.
    async fn stream_natively(&self, mut feed: AnswerFeed) -> Result<Vec<String>, SinkError> {
        let mut ts: Option<String> = None;
        // Bytes of the agent text the stream holds.
        let mut sent = 0usize;
        let mut last_call: Option<tokio::time::Instant> = None;
        // `Some(offset)`: the answer continues in `update` mode from there.
        let handover = loop {
            let mut done = feed.text.changed().await.is_err();
            if let (false, Some(at)) = (done, last_call) {
                // Appends are batched: at most one per APPEND_INTERVAL.
                tokio::time::sleep_until(at + APPEND_INTERVAL).await;
                done = feed.text.has_changed().is_err();
            }
            let text = feed.text.borrow_and_update().clone();
            // Never more than a message's worth in one stream.
            let room = stream_room(&text, self.shape_limit());
            let upto = room.unwrap_or(text.len()).max(sent);
            let ending = done || room.is_some();
            let fresh = text.get(sent..upto).unwrap_or_default();
            match &ts {
                None if fresh.is_empty() => {
                    if ending {
                        break None;
                    }
                    continue;
                }
                None => {
                    let markdown = mrkdwn::escape_markdown(fresh);
                    match self
                        .api
                        .start_stream(
                            &self.to.channel,
                            &self.to.thread_ts,
                            (&self.to.user, &self.to.team),
                            &markdown,
                        )
                        .await
                    {
                        Ok(started) => {
                            ts = Some(started);
                            sent = upto;
                        }
                        Err(e) => {
                            if matches!(&e, SlackApiError::Api(code) if NATIVE_REFUSALS.contains(&code.as_str()))
                                && !self.api.native_refused.swap(true, Ordering::Relaxed)
                            {
                                warn!(slack_error = e.code(), "Slack refuses native streaming for this app; answers stream by chat.update from now on");
                            }
                            debug!(slack_error = e.code(), error = %e, "chat.startStream refused; answering with chat.update");
                            break Some(sent);
                        }
                    }
                }
                Some(stream) if !fresh.is_empty() && !ending => {
                    let markdown = mrkdwn::escape_markdown(fresh);
                    match self
                        .api
                        .append_stream(&self.to.channel, stream, &markdown)
                        .await
                    {
                        Ok(()) => sent = upto,
                        Err(e) => {
                            debug!(slack_error = e.code(), error = %e, "chat.appendStream refused; continuing with chat.update");
                            break Some(sent);
                        }
                    }
                }
                Some(_) => {}
            }
            last_call = Some(tokio::time::Instant::now());
            if !ending {
                continue;
            }
            let Some(stream) = &ts else { break None };
            let rest = text.get(sent..upto).unwrap_or_default();
            let tail = (!rest.is_empty()).then(|| mrkdwn::escape_markdown(rest));
            match self
                .api
                .stop_stream(
                    &self.to.channel,
                    stream,
                    tail.as_deref(),
                    // The buttons go under the answer's last message: this one,
                    // unless the answer continues in another.
                    feed.feedback.as_deref().filter(|_| room.is_none()),
                )
                .await
            {
                Ok(()) => sent = upto,
                Err(e) => {
                    debug!(slack_error = e.code(), error = %e, "chat.stopStream refused; continuing with chat.update");
                    break Some(sent);
                }
            }
            break room.map(|_| sent);
        };
        let mut ids: Vec<String> = ts.into_iter().collect();
        if !ids.is_empty() {
            self.mark_thread(feed.journaled);
        }
        let Some(from) = handover else {
            return Ok(ids);
        };
        // The rest of the answer, after what the stream holds, in `update` mode.
        let (tx, rx) = watch::channel(String::new());
        let rest = AnswerFeed {
            text: rx,
            interval: feed.interval,
            max_messages: feed.max_messages.saturating_sub(ids.len()).max(1),
            feedback: feed.feedback.clone(),
            journaled: feed.journaled,
        };
        let forward = async move {
            loop {
                let text = feed.text.borrow_and_update().clone();
                tx.send_replace(text.get(from..).unwrap_or_default().to_string());
                if feed.text.changed().await.is_err() {
                    let text = feed.text.borrow().clone();
                    tx.send_replace(text.get(from..).unwrap_or_default().to_string());
                    return;
                }
            }
        };
        let (_, more) = tokio::join!(forward, self.stream_by_update(rest));
        ids.extend(more?);
        Ok(ids)
    }
}

/// Where a stream must end when `text` no longer fits one message: the end of the
/// first part the splitter would make (as a byte offset into `text`); `None` while
/// it fits.
fn stream_room(text: &str, limit: usize) -> Option<usize> {
    if mrkdwn::to_mrkdwn(text).chars().count() <= limit {
        return None;
    }
    // Cut at the last paragraph or line break before the limit, else a space.
    let window_end = text
        .char_indices()
        .nth(limit.saturating_sub(200))
        .map_or(text.len(), |(i, _)| i);
    let window = &text[..window_end];
    let cut = window
        .rfind("\n\n")
        .map(|i| i + 2)
        .or_else(|| window.rfind('\n').map(|i| i + 1))
        .or_else(|| window.rfind(' ').map(|i| i + 1))
        .unwrap_or(window_end);
    Some(cut)
}

/// `update` mode's surface: the thread, with the answer's last message completed
/// with the feedback buttons (when `FEEDBACK_BUTTONS` gave a turn id) — in the post
/// itself when the answer came in one piece, else in its last `chat.update`.
struct Finishing<'a> {
    sink: &'a ThreadSink,
    feedback: Option<String>,
}

#[async_trait]
impl Surface for Finishing<'_> {
    async fn post(&self, text: &str) -> Result<String, SinkError> {
        self.sink.post(text).await
    }

    async fn edit(&self, id: &str, text: &str) -> Result<(), SinkError> {
        self.sink.edit(id, text).await
    }

    async fn post_last(&self, text: &str) -> Result<String, SinkError> {
        let mut ids = self
            .sink
            .post_parts(
                std::slice::from_ref(&text.to_string()),
                self.feedback.as_deref(),
            )
            .await?;
        ids.pop()
            .ok_or_else(|| SinkError("chat.postMessage returned no ts".into()))
    }

    async fn finish_last(&self, id: &str, text: &str, changed: bool) -> Result<(), SinkError> {
        if !changed && self.feedback.is_none() {
            return Ok(());
        }
        self.sink
            .api
            .update_message_with(&self.sink.to.channel, id, text, self.feedback.as_deref())
            .await
            .map_err(|e| SinkError(Detail::caused_by("chat.update", e)))
    }
}

#[async_trait]
impl Surface for ThreadSink {
    /// One `chat.postMessage`; the thread is marked as answered once, by the caller,
    /// not per message (each mark is a store write).
    async fn post(&self, text: &str) -> Result<String, SinkError> {
        self.api
            .post_in_thread_with(
                &self.to.channel,
                &self.to.thread_ts,
                text,
                None,
                Some(&self.turn_id()),
            )
            .await
            .map_err(|e| {
                warn!(
                    slack_error = e.code(),
                    error = %e,
                    channel = %self.to.channel,
                    thread = %self.to.thread_ts,
                    "chat.postMessage failed"
                );
                SinkError(Detail::caused_by("chat.postMessage", e))
            })
    }

    async fn edit(&self, id: &str, text: &str) -> Result<(), SinkError> {
        self.api
            .update_message(&self.to.channel, id, text)
            .await
            .map_err(|e| SinkError(Detail::caused_by("chat.update", e)))
    }
}

#[async_trait]
impl ChatSink for ThreadSink {
    fn progress_after(&self) -> Duration {
        self.reaction_after
    }

    fn reply_to(&self) -> Option<String> {
        serde_json::to_string(&self.to).ok()
    }

    async fn working(&self) {
        match self.progress {
            SlackProgress::None => {}
            SlackProgress::Reaction => self.add_reaction().await,
            SlackProgress::Status => {
                match self
                    .api
                    .set_status(&self.to.channel, &self.to.thread_ts, &self.status_text)
                    .await
                {
                    Ok(()) => {}
                    Err(e) => {
                        if !STATUS_REFUSAL_LOGGED.swap(true, Ordering::Relaxed) {
                            warn!(
                                slack_error = e.code(),
                                error = %e,
                                "Slack refused assistant.threads.setStatus; using the progress reaction instead"
                            );
                        }
                        self.add_reaction().await;
                    }
                }
            }
        }
    }

    async fn finished(&self) {
        if !self.reacted.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(name) = &self.reaction else { return };
        match self
            .api
            .remove_reaction(&self.to.channel, &self.to.message_ts, name)
            .await
        {
            Ok(()) => {}
            Err(SlackApiError::Api(code)) if code == "no_reaction" => {}
            Err(e) => warn!(
                slack_error = e.code(),
                error = %e,
                channel = %self.to.channel,
                "could not remove the progress reaction"
            ),
        }
    }

    async fn send(&self, text: &str) -> Result<Vec<String>, SinkError> {
        let converted = mrkdwn::to_mrkdwn(text);
        let parts = split_text(&converted, MESSAGE_LIMIT);
        if parts.is_empty() {
            debug!(channel = %self.to.channel, "empty answer; nothing to post");
        }
        let result = self.post_parts(&parts, None).await;
        self.mark_answered(&result, false);
        result
    }

    async fn stream(&self, feed: AnswerFeed) -> Result<Vec<String>, SinkError> {
        match self.streaming {
            SlackStreaming::Native if self.api.native_refused.load(Ordering::Relaxed) => {
                self.stream_by_update(feed).await
            }
            SlackStreaming::Native => self.stream_natively(feed).await,
            SlackStreaming::Update => self.stream_by_update(feed).await,
            SlackStreaming::Off => {
                let max = feed.max_messages;
                let (feedback, journaled) = (feed.feedback.clone(), feed.journaled);
                let text = feed.finished().await;
                let shape = Shape {
                    limit: MESSAGE_LIMIT,
                    prepare: &mrkdwn::to_mrkdwn,
                };
                let result = self
                    .post_parts(&final_parts(&text, &shape, max), feedback.as_deref())
                    .await;
                self.mark_answered(&result, journaled);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks as slack-morphism builds them: what Slack has been sent all along.
    fn morphism_blocks(text: &str, turn_id: &str) -> Vec<SlackBlock> {
        let mut blocks: Vec<SlackBlock> = split_text(text, SECTION_LIMIT)
            .into_iter()
            .map(|part| {
                SlackSectionBlock::new()
                    .with_text(SlackBlockText::MarkDown(SlackBlockMarkDownText::new(part)))
                    .into()
            })
            .collect();
        blocks.push(feedback_block(turn_id));
        blocks
    }

    #[test]
    fn answer_blocks_are_what_slack_morphism_would_send() -> serde_json::Result<()> {
        let long = "word \"quoted\" <b> & é\n".repeat(400);
        for (text, turn) in [
            ("hello *world*", "slack-1.2-T-C"),
            ("", "slack-1.2-T-C"),
            (long.as_str(), "discord-9-G_1-c\"h"),
        ] {
            let lean = serde_json::to_value(blocks_with(text, Some(turn)))?;
            let morphism = serde_json::to_value(morphism_blocks(text, turn))?;
            assert_eq!(lean, morphism, "text {text:?}");
        }
        assert!(blocks_with("hello", None).is_none());
        Ok(())
    }
}
