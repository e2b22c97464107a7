//! A fake Slack: the Web API methods the bridge calls, as a real axum server on
//! 127.0.0.1:0, and the other direction — Events API requests signed exactly as Slack
//! signs them, with builders for the event payloads.
//!
//! The Web API answers like Slack where the bridge can tell: `application/json`,
//! `{"ok": true, ...}` bodies, `x-oauth-scopes` on `auth.test`, increasing `ts` values
//! from `chat.postMessage`. Every call is recorded (method, parameters from the query,
//! a JSON or a form body, the `Authorization` header, arrival time), including calls
//! answered with a scripted 429 or error.
//!
//! ```ignore
//! let slack = FakeSlack::start().await;
//! slack.rate_limit("chat.postMessage", 1, 1); // next call: 429, Retry-After: 1
//! slack.fail("reactions.add", "missing_scope"); // until `clear_failure`
//! let posts = slack.wait_for("chat.postMessage", 1, Duration::from_secs(5)).await;
//! let body = EventBuilder::app_mention("C1", "<@UBOT> hi").body();
//! signed(&client, &url, SECRET, &body).send().await;
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::sync::Notify;

pub use super::slack_socket::SocketServer;

/// The app-level token the fake's `apps.connections.open` accepts (any `xapp-` token
/// but [`BAD_APP_TOKEN`]).
pub const APP_TOKEN: &str = "xapp-1-A1-test";
pub const BAD_APP_TOKEN: &str = "xapp-1-A1-revoked";

/// The bot the fake's `auth.test` describes.
pub const BOT_USER: &str = "UBOT";
pub const BOT_ID: &str = "BBOT";
pub const TEAM: &str = "T1";
/// A DM channel and two ordinary channels used by the builders.
pub const DM: &str = "D1";
pub const SCOPES: &str = "app_mentions:read,assistant:write,channels:history,chat:write,groups:history,im:history,mpim:history,reactions:write";

/// One Web API call as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, `auth.test`, …
    pub method: String,
    /// `GET` or `POST`.
    pub http_method: String,
    /// Query, JSON body and form body parameters, merged.
    pub params: Map<String, Value>,
    pub authorization: Option<String>,
    pub at: Instant,
}

impl Call {
    /// A parameter as a string (numbers and booleans rendered).
    pub fn param(&self, name: &str) -> Option<String> {
        match self.params.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    pub fn text(&self) -> String {
        self.param("text").unwrap_or_default()
    }
}

#[derive(Default)]
struct Knobs {
    /// Method → (calls still to answer 429, Retry-After seconds).
    rate_limits: HashMap<String, (u32, u64)>,
    /// Method → Slack error code to answer with, until cleared.
    failures: HashMap<String, String>,
    /// Method → (calls still answered normally, then the error code for the rest).
    failures_after: HashMap<String, (u32, String)>,
    /// How long `chat.postMessage` waits before it answers (the message is posted
    /// at once): widens the window between a post and the bridge knowing of it.
    post_delay: Duration,
}

struct Inner {
    /// Socket Mode: the WebSocket server `apps.connections.open` points at.
    socket: Arc<SocketServer>,
    knobs: Mutex<Knobs>,
    calls: Mutex<Vec<Call>>,
    arrived: Notify,
    /// The next `chat.postMessage` ts, in microseconds.
    next_ts: AtomicU64,
    /// Every posted message (with its `metadata`, when it had some), for
    /// `conversations.replies`.
    posted: Mutex<Vec<Value>>,
}

/// Aborts the server when the last handle goes away.
struct ServerTask(tokio::task::JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
pub struct FakeSlack {
    addr: SocketAddr,
    inner: Arc<Inner>,
    _task: Arc<ServerTask>,
}

impl FakeSlack {
    pub async fn start() -> FakeSlack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake slack");
        let addr = listener.local_addr().expect("fake slack address");
        let inner = Arc::new(Inner {
            socket: SocketServer::start().await,
            knobs: Mutex::new(Knobs::default()),
            calls: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            next_ts: AtomicU64::new(1_700_000_000_000_100),
            posted: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSlack {
            addr,
            inner,
            _task: Arc::new(ServerTask(task)),
        }
    }

    /// `http://127.0.0.1:PORT`; the Web API lives under `/api`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `SLACK_API_BASE` should be.
    pub fn api_base(&self) -> String {
        format!("{}/api", self.url())
    }

    /// The Socket Mode server (connections, envelopes, acks).
    pub fn socket(&self) -> &SocketServer {
        &self.inner.socket
    }

    /// The next `n` calls of `method` answer 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit(&self, method: &str, n: u32, retry_after_secs: u64) {
        self.inner
            .knobs
            .lock()
            .unwrap()
            .rate_limits
            .insert(method.into(), (n, retry_after_secs));
    }

    /// Every later call of `method` answers `{"ok": false, "error": error}`.
    pub fn fail(&self, method: &str, error: &str) {
        self.inner
            .knobs
            .lock()
            .unwrap()
            .failures
            .insert(method.into(), error.into());
    }

    /// Answers `method` normally `n` times, then with `error` (a stream that expires).
    /// `chat.postMessage` posts at once but answers only after `delay`.
    pub fn delay_posts(&self, delay: Duration) {
        self.inner.knobs.lock().unwrap().post_delay = delay;
    }

    /// Messages posted in `thread` of `channel`, as `conversations.replies` keeps
    /// them (with their metadata).
    pub fn thread_messages(&self, channel: &str, thread: &str) -> Vec<Value> {
        self.inner
            .posted
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["channel"] == channel && m["thread_ts"] == thread)
            .cloned()
            .collect()
    }

    pub fn fail_after(&self, method: &str, n: u32, error: &str) {
        self.inner
            .knobs
            .lock()
            .unwrap()
            .failures_after
            .insert(method.to_owned(), (n, error.to_owned()));
    }

    /// The `markdown_text` of every streaming call (`chat.startStream`,
    /// `chat.appendStream`, `chat.stopStream`), in order.
    pub fn streamed_markdown(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.method.starts_with("chat.") && c.method.ends_with("Stream"))
            .filter_map(|c| c.param("markdown_text"))
            .collect()
    }

    pub fn clear_failure(&self, method: &str) {
        self.inner.knobs.lock().unwrap().failures.remove(method);
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// The calls of one method, in arrival order.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// The texts posted with `chat.postMessage`, in order.
    pub fn posted_texts(&self) -> Vec<String> {
        self.calls_of("chat.postMessage")
            .iter()
            .map(Call::text)
            .collect()
    }

    /// Waits until `method` was called at least `n` times; returns those calls, or
    /// panics after `timeout` listing what did arrive.
    pub async fn wait_for(&self, method: &str, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = self.calls_of(method);
            if seen.len() >= n {
                return seen;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let seen = self.calls_of(method);
                if seen.len() >= n {
                    return seen;
                }
                let all: Vec<String> = self.calls().iter().map(|c| c.method.clone()).collect();
                panic!(
                    "fake slack: expected {n} {method} call(s) within {timeout:?}, got {}; all calls: {all:?}",
                    seen.len()
                );
            }
        }
    }

    /// Asserts that `method` stays at `n` calls for `quiet` (nothing more arrives).
    pub async fn assert_stays(&self, method: &str, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let seen = self.calls_of(method);
        assert_eq!(
            seen.len(),
            n,
            "fake slack: expected exactly {n} {method} call(s), got {:?}",
            seen.iter().map(Call::text).collect::<Vec<_>>()
        );
    }
}

fn json_ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = uri
        .path()
        .strip_prefix("/api/")
        .unwrap_or(uri.path())
        .to_owned();
    let mut params = Map::new();
    if let Some(q) = uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) {
            params.extend(map);
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in url::form_urlencoded::parse(&body) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let call = Call {
        method: name.clone(),
        http_method: method.to_string(),
        params,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        at: Instant::now(),
    };
    inner.calls.lock().unwrap().push(call.clone());
    inner.arrived.notify_waiters();

    {
        let mut knobs = inner.knobs.lock().unwrap();
        if let Some((left, retry_after)) = knobs.rate_limits.get_mut(&name) {
            if *left > 0 {
                *left -= 1;
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry_after.to_string())],
                    axum::Json(json!({"ok": false, "error": "ratelimited"})),
                )
                    .into_response();
            }
        }
        if let Some(error) = knobs.failures.get(&name) {
            return json_ok(json!({"ok": false, "error": error}));
        }
        if let Some((left, error)) = knobs.failures_after.get_mut(&name) {
            if *left == 0 {
                return json_ok(json!({"ok": false, "error": error.clone()}));
            }
            *left -= 1;
        }
    }

    if name == "apps.connections.open" {
        // Socket Mode takes the app-level token, never the bot token.
        return match call.authorization.as_deref() {
            Some(a) if a == format!("Bearer {BAD_APP_TOKEN}") => {
                json_ok(json!({"ok": false, "error": "invalid_auth"}))
            }
            Some(a) if a.starts_with("Bearer xapp-") => {
                json_ok(json!({"ok": true, "url": inner.socket.url()}))
            }
            Some(a) if a.starts_with("Bearer xoxb-") => {
                json_ok(json!({"ok": false, "error": "not_allowed_token_type"}))
            }
            _ => json_ok(json!({"ok": false, "error": "not_authed"})),
        };
    }
    if call
        .authorization
        .as_deref()
        .is_none_or(|a| !a.starts_with("Bearer xoxb-"))
    {
        return json_ok(json!({"ok": false, "error": "not_authed"}));
    }

    match name.as_str() {
        "auth.test" => (
            StatusCode::OK,
            [("x-oauth-scopes", SCOPES)],
            axum::Json(json!({
                "ok": true,
                "url": "https://fake-workspace.slack.com/",
                "team": "Fake Workspace",
                "user": "bridge",
                "team_id": TEAM,
                "user_id": BOT_USER,
                "bot_id": BOT_ID,
                "is_enterprise_install": false,
            })),
        )
            .into_response(),
        "chat.postMessage" => {
            let Some(channel) = call.param("channel") else {
                return json_ok(json!({"ok": false, "error": "channel_not_found"}));
            };
            let text = call.text();
            if text.is_empty() {
                return json_ok(json!({"ok": false, "error": "no_text"}));
            }
            let micros = inner.next_ts.fetch_add(100, Ordering::SeqCst);
            let ts = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
            let mut message = json!({
                "type": "message",
                "text": text,
                "user": BOT_USER,
                "bot_id": BOT_ID,
                "ts": ts,
            });
            if let Some(thread) = call.param("thread_ts") {
                message["thread_ts"] = Value::String(thread);
            }
            let metadata = match call.params.get("metadata") {
                // A form body carries it as JSON text.
                Some(Value::String(s)) => serde_json::from_str(s).ok(),
                Some(v @ Value::Object(_)) => Some(v.clone()),
                _ => None,
            };
            if let Some(metadata) = metadata {
                message["metadata"] = metadata;
            }
            let mut stored = message.clone();
            stored["channel"] = Value::String(channel.clone());
            inner.posted.lock().unwrap().push(stored);
            let delay = inner.knobs.lock().unwrap().post_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            json_ok(json!({"ok": true, "channel": channel, "ts": ts, "message": message}))
        }
        "chat.update" => match (call.param("channel"), call.param("ts")) {
            (Some(channel), Some(ts)) if !call.text().is_empty() => json_ok(json!({
                "ok": true,
                "channel": channel,
                "ts": ts,
                "text": call.text(),
                "message": {"type": "message", "text": call.text(), "user": BOT_USER, "bot_id": BOT_ID, "ts": ts},
            })),
            _ => json_ok(json!({"ok": false, "error": "invalid_arguments"})),
        },
        "chat.startStream" => {
            let Some(channel) = call.param("channel") else {
                return json_ok(json!({"ok": false, "error": "channel_not_found"}));
            };
            if call.param("thread_ts").is_none() {
                return json_ok(json!({"ok": false, "error": "invalid_arguments"}));
            }
            let micros = inner.next_ts.fetch_add(100, Ordering::SeqCst);
            let ts = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
            json_ok(json!({"ok": true, "channel": channel, "ts": ts}))
        }
        "chat.appendStream" | "chat.stopStream" => {
            match (call.param("channel"), call.param("ts")) {
                (Some(channel), Some(ts)) => {
                    json_ok(json!({"ok": true, "channel": channel, "ts": ts}))
                }
                _ => json_ok(json!({"ok": false, "error": "invalid_arguments"})),
            }
        }
        "assistant.threads.setStatus" => {
            if call.param("channel_id").is_none() || call.param("thread_ts").is_none() {
                return json_ok(json!({"ok": false, "error": "invalid_arguments"}));
            }
            json_ok(json!({"ok": true}))
        }
        "assistant.threads.setSuggestedPrompts" => {
            let prompts_ok = call
                .params
                .get("prompts")
                .and_then(Value::as_array)
                .is_some_and(|p| {
                    !p.is_empty()
                        && p.len() <= 4
                        && p.iter()
                            .all(|p| p["title"].is_string() && p["message"].is_string())
                });
            if call.param("channel_id").is_none() || !prompts_ok {
                return json_ok(json!({"ok": false, "error": "invalid_arguments"}));
            }
            json_ok(json!({"ok": true}))
        }
        "assistant.threads.setTitle" => {
            let ok = ["channel_id", "thread_ts", "title"]
                .iter()
                .all(|p| call.param(p).is_some_and(|v| !v.is_empty()));
            if !ok {
                return json_ok(json!({"ok": false, "error": "invalid_arguments"}));
            }
            json_ok(json!({"ok": true}))
        }
        "reactions.add" | "reactions.remove" => {
            if call.param("name").is_none() || call.param("timestamp").is_none() {
                return json_ok(json!({"ok": false, "error": "invalid_arguments"}));
            }
            json_ok(json!({"ok": true}))
        }
        "conversations.replies" => {
            let (Some(channel), Some(thread)) = (call.param("channel"), call.param("ts")) else {
                return json_ok(json!({"ok": false, "error": "invalid_arguments"}));
            };
            let with_metadata = call.param("include_all_metadata").as_deref() == Some("true");
            let messages: Vec<Value> = inner
                .posted
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m["channel"] == channel.as_str() && m["thread_ts"] == thread.as_str())
                .map(|m| {
                    let mut m = m.clone();
                    if let Some(o) = m.as_object_mut() {
                        o.remove("channel");
                        if !with_metadata {
                            o.remove("metadata");
                        }
                    }
                    m
                })
                .collect();
            json_ok(json!({"ok": true, "messages": messages, "has_more": false}))
        }
        _ => json_ok(json!({"ok": false, "error": "unknown_method"})),
    }
}

// ---------------------------------------------------------------------------------
// The Events API side: signing and payloads
// ---------------------------------------------------------------------------------

/// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`, as Slack computes it. Written
/// independently of the bridge's own verifier on purpose.
pub fn sign(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v0={hex}")
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A POST of `body` to `url` with Slack's headers, signed at the current time.
pub fn signed(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    signed_at(client, url, secret, body, now_unix())
}

/// Like [`signed`], with the timestamp given (for stale requests).
pub fn signed_at(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &str,
    timestamp: i64,
) -> reqwest::RequestBuilder {
    let ts = timestamp.to_string();
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", sign(secret, &ts, body))
        .body(body.to_owned())
}

static SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh message `ts` (`1710000000.000123`), unique in the test process.
pub fn next_ts() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("1710000000.{n:06}")
}

/// Builds `event_callback` envelopes for the events the bridge handles.
#[derive(Debug, Clone)]
pub struct EventBuilder {
    pub event_id: String,
    pub kind: String,
    pub channel: String,
    pub channel_type: Option<String>,
    pub user: Option<String>,
    pub text: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub bot_id: Option<String>,
    pub subtype: Option<String>,
}

impl EventBuilder {
    fn new(kind: &str, channel: &str, channel_type: Option<&str>, text: &str) -> Self {
        EventBuilder {
            event_id: format!("Ev{:08}", SEQ.fetch_add(1, Ordering::Relaxed)),
            kind: kind.into(),
            channel: channel.into(),
            channel_type: channel_type.map(Into::into),
            user: Some("U1".into()),
            text: text.into(),
            ts: next_ts(),
            thread_ts: None,
            bot_id: None,
            subtype: None,
        }
    }

    /// `app_mention` in a channel (text usually starts with `<@UBOT>`).
    pub fn app_mention(channel: &str, text: &str) -> Self {
        Self::new("app_mention", channel, None, text)
    }

    /// `message` in the DM channel [`DM`] (`message.im`).
    pub fn message_im(text: &str) -> Self {
        Self::new("message", DM, Some("im"), text)
    }

    /// `message` in a public channel (`message.channels`).
    pub fn message_channel(channel: &str, text: &str) -> Self {
        Self::new("message", channel, Some("channel"), text)
    }

    /// A reply in a thread of a public channel.
    pub fn message_thread(channel: &str, thread_ts: &str, text: &str) -> Self {
        Self::message_channel(channel, text).thread(thread_ts)
    }

    /// A message posted by a bot (`bot_id` set, subtype `bot_message`).
    pub fn bot_message(channel: &str, text: &str) -> Self {
        let mut b = Self::new("message", channel, Some("channel"), text);
        b.bot_id = Some("B999".into());
        b.subtype = Some("bot_message".into());
        b.user = None;
        b
    }

    /// The `message` event Slack sends alongside this `app_mention` (same message:
    /// same `ts`, a different `event_id`).
    pub fn as_message_event(&self) -> Self {
        let mut b = self.clone();
        b.event_id = format!("Ev{:08}", SEQ.fetch_add(1, Ordering::Relaxed));
        b.kind = "message".into();
        b.channel_type = Some("channel".into());
        b
    }

    pub fn thread(mut self, thread_ts: &str) -> Self {
        self.thread_ts = Some(thread_ts.into());
        self
    }

    pub fn ts(mut self, ts: &str) -> Self {
        self.ts = ts.into();
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn subtype(mut self, subtype: &str) -> Self {
        self.subtype = Some(subtype.into());
        self
    }

    pub fn event(&self) -> Value {
        let mut ev = json!({
            "type": self.kind,
            "channel": self.channel,
            "text": self.text,
            "ts": self.ts,
            "event_ts": self.ts,
            "team": TEAM,
        });
        if let Some(u) = &self.user {
            ev["user"] = json!(u);
        }
        if let Some(t) = &self.channel_type {
            ev["channel_type"] = json!(t);
        }
        if let Some(t) = &self.thread_ts {
            ev["thread_ts"] = json!(t);
        }
        if let Some(b) = &self.bot_id {
            ev["bot_id"] = json!(b);
        }
        if let Some(s) = &self.subtype {
            ev["subtype"] = json!(s);
        }
        ev
    }

    /// The whole `event_callback` envelope.
    pub fn envelope(&self) -> Value {
        json!({
            "token": "verification-token-unused",
            "team_id": TEAM,
            "api_app_id": "A1",
            "event": self.event(),
            "type": "event_callback",
            "event_id": self.event_id,
            "event_time": 1_710_000_000,
            "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": true}],
        })
    }

    pub fn body(&self) -> String {
        self.envelope().to_string()
    }
}

/// An `event_callback` envelope around any `event` object (assistant events, …).
pub fn callback(event: Value) -> Value {
    json!({
        "token": "verification-token-unused",
        "team_id": TEAM,
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": format!("Ev{:08}", SEQ.fetch_add(1, Ordering::Relaxed)),
        "event_time": 1_710_000_000,
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": true}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_matches_slacks_published_example() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            sign("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }
}
