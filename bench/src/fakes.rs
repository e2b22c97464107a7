//! The peers the bridge talks to, as minimal hyper servers on 127.0.0.1, run in the
//! harness process on their own runtime (threads named `fake-*`): a fake AI Agent API,
//! a fake Slack Web API, a fast webhook receiver (with a gate that holds answers) and
//! a hanging one. Each counts what it saw so the harness can check the bridge's work.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::slackev::seq_of_ts;
use crate::util::{find_num, now_ns};

/// Highest event sequence number the per-event tables track.
pub const MAX_SEQ: usize = 4_000_000;

pub type Resp = Response<Full<Bytes>>;

/// Serves HTTP/1.1 with keep-alive on `listener`, one task per connection.
pub async fn serve<F, Fut, B>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_conn(stream, handler.clone()));
    }
}

/// Serves one accepted connection (HTTP/1.1, keep-alive) with `handler`.
pub async fn serve_conn<F, Fut, B>(stream: tokio::net::TcpStream, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let h = handler.clone();
        async move { Ok::<_, Infallible>(h(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("response")
}

fn counters(n: usize) -> Vec<AtomicU8> {
    (0..n).map(|_| AtomicU8::new(0)).collect()
}

// ---------------------------------------------------------------------------------
// Fake Slack Web API
// ---------------------------------------------------------------------------------

#[derive(Default)]
pub struct SlackStats {
    pub auth: AtomicU64,
    pub posts: AtomicU64,
    pub busy_posts: AtomicU64,
    pub error_posts: AtomicU64,
    pub react_add: AtomicU64,
    pub react_remove: AtomicU64,
    pub other: AtomicU64,
    /// Posts whose `thread_ts` is not one of the harness's events.
    pub unknown_thread: AtomicU64,
    /// `now_ns()` of the latest call.
    pub last_call_ns: AtomicU64,
}

/// W7: one platform call the fakes attributed to an answer (by its sequence number).
#[derive(Clone, Debug)]
pub struct W7Call {
    pub seq: u64,
    /// `chat.update`, `POST message`, …
    pub method: &'static str,
    /// The message the call creates or changes (Slack `ts`, Discord message id); empty
    /// for the others.
    pub message: String,
    /// The text it carries (`text`, `markdown_text`, `content`).
    pub text: String,
    /// `now_ns()` at receipt.
    pub at: u64,
}

/// While W7 records, a message `ts` the fake Slack hands out is
/// `W7_TS_BASE + seq` seconds (plus a counter in the micros), so later calls naming the
/// message (`chat.update`, `chat.appendStream`, …) map back to the answer.
pub const W7_TS_BASE: u64 = 1_900_000_000;

pub fn w7_seq_of_msg_ts(ts: &str) -> Option<u64> {
    let (s, _) = ts.split_once('.')?;
    s.parse::<u64>().ok()?.checked_sub(W7_TS_BASE)
}

pub struct FakeSlack {
    /// W8: where `apps.connections.open` points (set once the socket server binds).
    pub socket_url: Mutex<String>,
    pub stats: SlackStats,
    /// W7: record every call in `w7` (off otherwise: W1 pays nothing).
    pub record: AtomicBool,
    /// W7: answer `chat.update`, `chat.startStream` / `appendStream` / `stopStream` and
    /// `assistant.threads.setStatus`. Off, they answer `unknown_method` as they always
    /// did for W1–W6, so those workloads keep measuring what they measured: the bridge
    /// falls back from native streaming to `chat.postMessage` (one post per echo answer)
    /// and from the status to the reaction.
    pub streaming: AtomicBool,
    pub w7: Mutex<Vec<W7Call>>,
    /// chat.postMessage calls per event seq (by `thread_ts`), saturating at 255.
    pub per_seq: Vec<AtomicU8>,
    /// W3: (seq, now_ns at receipt) of posts whose text carries `w3id=`.
    pub w3: Mutex<Vec<(u64, u64)>>,
    ts: AtomicU64,
}

pub const BUSY_PREFIX: &str = "I'm handling a lot of requests";
pub const SCOPES: &str = "app_mentions:read,channels:history,chat:write,groups:history,im:history,mpim:history,reactions:write";

impl FakeSlack {
    pub fn new() -> Self {
        FakeSlack {
            socket_url: Mutex::new(String::new()),
            stats: SlackStats::default(),
            per_seq: counters(MAX_SEQ),
            w3: Mutex::new(Vec::new()),
            record: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            w7: Mutex::new(Vec::new()),
            ts: AtomicU64::new(1_800_000_000_000_000),
        }
    }

    pub fn reset(&self) {
        let s = &self.stats;
        for c in [
            &s.auth,
            &s.posts,
            &s.busy_posts,
            &s.error_posts,
            &s.react_add,
            &s.react_remove,
            &s.other,
            &s.unknown_thread,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for c in &self.per_seq {
            c.store(0, Ordering::Relaxed);
        }
        self.w3.lock().unwrap().clear();
        self.w7.lock().unwrap().clear();
    }

    /// A fresh message `ts`; while W7 records, one that names the answer.
    fn new_ts(&self, seq: Option<u64>) -> String {
        let micros = self.ts.fetch_add(1, Ordering::Relaxed);
        match seq {
            Some(seq) if self.record.load(Ordering::Relaxed) => {
                format!("{}.{:06}", W7_TS_BASE + seq, micros % 1_000_000)
            }
            _ => format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000),
        }
    }

    /// W7: attributes a call to its answer and records it.
    fn record_w7(
        &self,
        method: &str,
        param: &dyn Fn(&str) -> Option<String>,
        new_ts: Option<&str>,
        rx: u64,
    ) {
        let by_thread = || param("thread_ts").as_deref().and_then(seq_of_ts);
        let by_msg = || param("ts").as_deref().and_then(w7_seq_of_msg_ts);
        let (name, seq, text): (&'static str, Option<u64>, Option<String>) = match method {
            "chat.postMessage" => ("chat.postMessage", by_thread(), param("text")),
            "chat.update" => ("chat.update", by_msg(), param("text")),
            "chat.startStream" => ("chat.startStream", by_thread(), param("markdown_text")),
            "chat.appendStream" => ("chat.appendStream", by_msg(), param("markdown_text")),
            "chat.stopStream" => ("chat.stopStream", by_msg(), param("markdown_text")),
            "assistant.threads.setStatus" => {
                ("assistant.threads.setStatus", by_thread(), param("status"))
            }
            "reactions.add" => (
                "reactions.add",
                param("timestamp").as_deref().and_then(seq_of_ts),
                None,
            ),
            "reactions.remove" => (
                "reactions.remove",
                param("timestamp").as_deref().and_then(seq_of_ts),
                None,
            ),
            _ => ("other", None, None),
        };
        let Some(seq) = seq else {
            if name != "other" {
                self.stats.unknown_thread.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let message = new_ts
            .map(str::to_owned)
            .or_else(|| param("ts"))
            .unwrap_or_default();
        self.w7.lock().unwrap().push(W7Call {
            seq,
            method: name,
            message,
            text: text.unwrap_or_default(),
            at: rx,
        });
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let rx = now_ns();
        self.stats.last_call_ns.store(rx, Ordering::Relaxed);
        let path = req.uri().path().to_owned();
        let method = path.strip_prefix("/api/").unwrap_or(&path).to_owned();
        let query = req.uri().query().map(str::to_owned);
        let form = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut params = serde_json::Map::new();
        let mut add_pairs = |raw: &str| {
            for kv in raw.split('&') {
                if let Some((k, v)) = kv.split_once('=') {
                    params.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
                }
            }
        };
        if let Some(q) = &query {
            add_pairs(q);
        }
        if form {
            add_pairs(std::str::from_utf8(&body).unwrap_or(""));
        } else if !body.is_empty() {
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(&body) {
                params.extend(m);
            }
        }
        let param = |name: &str| -> Option<String> {
            params.get(name).map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
        };
        // The ts of the message this call creates, if it creates one.
        let new_ts = matches!(method.as_str(), "chat.postMessage" | "chat.startStream")
            .then(|| self.new_ts(param("thread_ts").as_deref().and_then(seq_of_ts)));
        if self.record.load(Ordering::Relaxed) {
            self.record_w7(&method, &param, new_ts.as_deref(), rx);
        }
        match method.as_str() {
            "auth.test" => {
                self.stats.auth.fetch_add(1, Ordering::Relaxed);
                Response::builder()
                    .status(200)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .header("x-oauth-scopes", SCOPES)
                    .body(Full::new(Bytes::from_static(
                        br#"{"ok":true,"url":"https://bench.slack.com/","user_id":"UBOT","bot_id":"BBOT","team_id":"T1","user":"bot","team":"t"}"#,
                    )))
                    .expect("response")
            }
            "chat.postMessage" => {
                self.stats.posts.fetch_add(1, Ordering::Relaxed);
                let channel = param("channel").unwrap_or_default();
                let text = param("text").unwrap_or_default();
                if text.starts_with(BUSY_PREFIX) {
                    self.stats.busy_posts.fetch_add(1, Ordering::Relaxed);
                } else if text.starts_with("Sorry") {
                    self.stats.error_posts.fetch_add(1, Ordering::Relaxed);
                }
                match param("thread_ts").as_deref().and_then(seq_of_ts) {
                    Some(seq) if (seq as usize) < MAX_SEQ => {
                        let c = &self.per_seq[seq as usize];
                        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                            v.checked_add(1)
                        });
                    }
                    _ => {
                        self.stats.unknown_thread.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(seq) = find_num(text.as_bytes(), b"w3id=") {
                    self.w3.lock().unwrap().push((seq, rx));
                }
                let ts = new_ts.unwrap_or_default();
                // What Slack answers (slack-morphism requires `message`).
                let mut message = serde_json::json!({
                    "type": "message", "subtype": "bot_message", "text": text, "user": "UBOT",
                    "bot_id": "BBOT", "app_id": "A0BENCH01", "team": "T1", "ts": ts,
                });
                if let Some(t) = param("thread_ts") {
                    message["thread_ts"] = serde_json::Value::String(t);
                }
                let body = serde_json::json!({"ok": true, "channel": channel, "ts": ts, "message": message}).to_string();
                json(StatusCode::OK, body)
            }
            "apps.connections.open" => {
                let url = self.socket_url.lock().unwrap().clone();
                json(
                    StatusCode::OK,
                    serde_json::json!({"ok": true, "url": url}).to_string(),
                )
            }
            "reactions.add" | "reactions.remove" => {
                if method == "reactions.add" {
                    self.stats.react_add.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.react_remove.fetch_add(1, Ordering::Relaxed);
                }
                json(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
            }
            "chat.update" if self.streaming.load(Ordering::Relaxed) => {
                self.stats.other.fetch_add(1, Ordering::Relaxed);
                let (channel, ts, text) = (
                    param("channel").unwrap_or_default(),
                    param("ts").unwrap_or_default(),
                    param("text").unwrap_or_default(),
                );
                let body = serde_json::json!({
                    "ok": true, "channel": channel, "ts": ts, "text": text,
                    "message": {"type": "message", "text": text, "user": "UBOT", "bot_id": "BBOT", "ts": ts},
                });
                json(StatusCode::OK, body.to_string())
            }
            "chat.startStream" if self.streaming.load(Ordering::Relaxed) => {
                self.stats.other.fetch_add(1, Ordering::Relaxed);
                let (channel, ts) = (
                    param("channel").unwrap_or_default(),
                    new_ts.unwrap_or_default(),
                );
                json(
                    StatusCode::OK,
                    serde_json::json!({"ok": true, "channel": channel, "ts": ts}).to_string(),
                )
            }
            "chat.appendStream" | "chat.stopStream" if self.streaming.load(Ordering::Relaxed) => {
                self.stats.other.fetch_add(1, Ordering::Relaxed);
                let (channel, ts) = (
                    param("channel").unwrap_or_default(),
                    param("ts").unwrap_or_default(),
                );
                json(
                    StatusCode::OK,
                    serde_json::json!({"ok": true, "channel": channel, "ts": ts}).to_string(),
                )
            }
            "assistant.threads.setStatus" if self.streaming.load(Ordering::Relaxed) => {
                self.stats.other.fetch_add(1, Ordering::Relaxed);
                json(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
            }
            _ => {
                self.stats.other.fetch_add(1, Ordering::Relaxed);
                json(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"ok":false,"error":"unknown_method"}"#),
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Fake AI Agent API
// ---------------------------------------------------------------------------------

#[derive(Default)]
pub struct FakeAgent {
    pub conversation: AtomicU64,
    pub query: AtomicU64,
    /// W3: (seq, receipt ns, answer ns) for queries carrying `w3id=`.
    pub w3: Mutex<Vec<(u64, u64, u64)>>,
}

#[derive(serde::Deserialize)]
struct AgentReq {
    query: String,
}

impl FakeAgent {
    pub fn reset(&self) {
        self.conversation.store(0, Ordering::Relaxed);
        self.query.store(0, Ordering::Relaxed);
        self.w3.lock().unwrap().clear();
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let rx = now_ns();
        let path = req.uri().path().to_owned();
        let session = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("session_id=").map(str::to_owned))
        });
        let is_post = req.method() == hyper::Method::POST;
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match (is_post, path.as_str()) {
            (true, "/conversation") | (true, "/query") => {
                let Ok(q) = serde_json::from_slice::<AgentReq>(&body) else {
                    return json(StatusCode::UNPROCESSABLE_ENTITY, r#"{"detail":"bad body"}"#);
                };
                let conv = path == "/conversation";
                let sid = if conv {
                    self.conversation.fetch_add(1, Ordering::Relaxed);
                    Some(session.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
                } else {
                    self.query.fetch_add(1, Ordering::Relaxed);
                    None
                };
                let body = serde_json::json!({
                    "response": format!("echo: {}", q.query),
                    "session_id": sid,
                    "sources": null,
                })
                .to_string();
                if let Some(seq) = find_num(q.query.as_bytes(), b"w3id=") {
                    self.w3.lock().unwrap().push((seq, rx, now_ns()));
                }
                json(StatusCode::OK, body)
            }
            (false, "/health") => json(StatusCode::OK, r#"{"status":"healthy"}"#),
            (false, "/personalities") => json(StatusCode::OK, "[]"),
            _ => json(StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#),
        }
    }
}

// ---------------------------------------------------------------------------------
// Fake OpenAI-compatible server (W7)
// ---------------------------------------------------------------------------------

/// When the fake OpenAI server handled one answer (`now_ns()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct AiTiming {
    /// The first content piece was handed to hyper.
    pub first: u64,
    /// The last content piece (with `finish_reason` and `[DONE]` in the same write).
    pub last: u64,
}

/// `POST /v1/chat/completions` with `stream: true`: the answer of the request whose
/// last message carries `w7id=N` (text from [`w7_answer`]) as server-sent events, one
/// `choices[0].delta.content` piece every pause; `GET /v1/models`.
///
/// With `spread` = n > 1, answer `seq`'s pause is `pause_us × (0.75 + 0.5 × seq/(n−1))`,
/// so the answers end at every phase of the platforms' edit interval (with one pace
/// they would all end at the same point of it, and the final-call latency would be one
/// value decided by the answer's length, not the worst case).
pub struct FakeOpenAi {
    pub pieces: AtomicU64,
    pub chars: AtomicU64,
    pub pause_us: AtomicU64,
    pub spread: AtomicU64,
    pub requests: AtomicU64,
    /// Requests without `w7id=`.
    pub unknown: AtomicU64,
    pub timings: Mutex<std::collections::HashMap<u64, AiTiming>>,
}

/// The answer the fake OpenAI server streams for answer `seq`: lowercase words and
/// paragraphs (nothing a Markdown or mrkdwn conversion changes), `chars` long.
pub fn w7_answer(seq: u64, chars: usize) -> String {
    const WORDS: [&str; 16] = [
        "stream", "answer", "bridge", "piece", "model", "slack", "discord", "edit", "token",
        "latency", "message", "thread", "budget", "floor", "render", "interval",
    ];
    let mut out = String::with_capacity(chars + 16);
    let mut i = seq as usize;
    let mut para = 0usize;
    while out.len() < chars {
        out.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
        para += 1;
        if para.is_multiple_of(50) {
            out.push_str(".\n\n");
        } else if para.is_multiple_of(10) {
            out.push_str(". ");
        } else {
            out.push(' ');
        }
    }
    out.truncate(chars);
    let kept = out.trim_end().len();
    out.truncate(kept);
    out.push('.');
    out
}

/// `text` in `n` pieces of (nearly) equal length (ASCII text).
pub fn w7_pieces(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let len = text.len();
    (0..n)
        .map(|i| &text[i * len / n..(i + 1) * len / n])
        .filter(|p| !p.is_empty())
        .collect()
}

impl FakeOpenAi {
    pub fn new() -> Self {
        FakeOpenAi {
            pieces: AtomicU64::new(100),
            chars: AtomicU64::new(1500),
            pause_us: AtomicU64::new(25_000),
            spread: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            timings: Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.unknown.store(0, Ordering::Relaxed);
        self.timings.lock().unwrap().clear();
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<PacedBody> {
        let path = req.uri().path().to_owned();
        let is_post = req.method() == hyper::Method::POST;
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let plain = |status: u16, body: &'static str| {
            Response::builder()
                .status(status)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(PacedBody::whole(Bytes::from_static(body.as_bytes())))
                .expect("response")
        };
        match (is_post, path.as_str()) {
            (true, "/v1/chat/completions") => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                // The last occurrence: the new message comes after any history.
                let seq = body
                    .windows(5)
                    .rposition(|w| w == b"w7id=")
                    .and_then(|at| find_num(&body[at..], b"w7id="));
                let Some(seq) = seq else {
                    self.unknown.fetch_add(1, Ordering::Relaxed);
                    return plain(
                        400,
                        r#"{"error":{"message":"no w7id= in the request","type":"bench"}}"#,
                    );
                };
                let text = w7_answer(seq, self.chars.load(Ordering::Relaxed) as usize);
                let pieces = w7_pieces(&text, self.pieces.load(Ordering::Relaxed) as usize);
                let event = |v: serde_json::Value| format!("data: {v}\n\n");
                let mut frames = std::collections::VecDeque::with_capacity(pieces.len() + 1);
                frames.push_back(Bytes::from(event(serde_json::json!(
                    {"id": "chatcmpl-w7", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
                ))));
                let n = pieces.len();
                for (i, piece) in pieces.into_iter().enumerate() {
                    let mut f = event(serde_json::json!(
                        {"id": "chatcmpl-w7", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
                    ));
                    if i + 1 == n {
                        f.push_str(&event(serde_json::json!(
                            {"id": "chatcmpl-w7", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                        )));
                        f.push_str("data: [DONE]\n\n");
                    }
                    frames.push_back(Bytes::from(f));
                }
                self.timings
                    .lock()
                    .unwrap()
                    .insert(seq, AiTiming::default());
                let (base, n) = (
                    self.pause_us.load(Ordering::Relaxed),
                    self.spread.load(Ordering::Relaxed),
                );
                let pause_us = if n > 1 {
                    base * (750 + 500 * seq.min(n - 1) / (n - 1)) / 1000
                } else {
                    base
                };
                let paced = PacedBody {
                    frames,
                    start: tokio::time::Instant::now(),
                    pause: Duration::from_micros(pause_us),
                    sleep: None,
                    yielded: 0,
                    track: Some((self.clone(), seq)),
                };
                Response::builder()
                    .status(200)
                    .header(hyper::header::CONTENT_TYPE, "text/event-stream")
                    .header(hyper::header::CACHE_CONTROL, "no-cache")
                    .body(paced)
                    .expect("response")
            }
            (false, "/v1/models") => plain(
                200,
                r#"{"object":"list","data":[{"id":"bench","object":"model"}]}"#,
            ),
            _ => plain(404, r#"{"error":{"message":"not found","type":"bench"}}"#),
        }
    }
}

/// A response body handed out frame by frame: frame 0 at once, frame *i* at
/// `start + i × pause` (an absolute schedule: no drift). With `track`, the fake OpenAI
/// server's [`AiTiming`] of the answer is stamped as frame 1 (the first piece) and the
/// last frame leave.
pub struct PacedBody {
    frames: std::collections::VecDeque<Bytes>,
    start: tokio::time::Instant,
    pause: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    yielded: u32,
    track: Option<(Arc<FakeOpenAi>, u64)>,
}

impl PacedBody {
    fn whole(b: Bytes) -> Self {
        PacedBody {
            frames: std::collections::VecDeque::from([b]),
            start: tokio::time::Instant::now(),
            pause: Duration::ZERO,
            sleep: None,
            yielded: 0,
            track: None,
        }
    }
}

impl hyper::body::Body for PacedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.frames.is_empty() {
            return std::task::Poll::Ready(None);
        }
        if this.yielded > 0 && !this.pause.is_zero() {
            let due = this.start + this.pause * this.yielded;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if sleep.deadline() != due {
                sleep.as_mut().reset(due);
            }
            std::task::ready!(sleep.as_mut().poll(cx));
        }
        let frame = this.frames.pop_front().expect("a frame");
        this.yielded += 1;
        if let Some((fake, seq)) = &this.track {
            let t = now_ns();
            let last = this.frames.is_empty();
            if this.yielded == 2 || last {
                if let Some(tm) = fake.timings.lock().unwrap().get_mut(seq) {
                    if this.yielded == 2 {
                        tm.first = t;
                    }
                    if last {
                        tm.last = t;
                    }
                }
            }
        }
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

// ---------------------------------------------------------------------------------
// Webhook receivers
// ---------------------------------------------------------------------------------

pub struct FakeHook {
    pub received: AtomicU64,
    /// While set, answers are held until [`FakeHook::release`].
    pub gated: AtomicBool,
    pub held: AtomicU64,
    gate: Notify,
    /// (seq from `w4seq=`, receipt ns) per delivery.
    pub rx: Mutex<Vec<(u64, u64)>>,
    pub last_ns: AtomicU64,
}

impl FakeHook {
    pub fn new() -> Self {
        FakeHook {
            received: AtomicU64::new(0),
            gated: AtomicBool::new(false),
            held: AtomicU64::new(0),
            gate: Notify::new(),
            rx: Mutex::new(Vec::new()),
            last_ns: AtomicU64::new(0),
        }
    }

    pub fn reset(&self) {
        self.received.store(0, Ordering::Relaxed);
        self.held.store(0, Ordering::Relaxed);
        self.gated.store(false, Ordering::Relaxed);
        self.rx.lock().unwrap().clear();
        self.gate.notify_waiters();
    }

    pub fn release(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.notify_waiters();
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if self.gated.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::Relaxed);
            let notified = self.gate.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.gated.load(Ordering::SeqCst) {
                notified.await;
            }
        }
        let t = now_ns();
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_ns.store(t, Ordering::Relaxed);
        if let Some(seq) = find_num(&body, b"w4seq=") {
            self.rx.lock().unwrap().push((seq, t));
        }
        json(StatusCode::OK, Bytes::from_static(b"{}"))
    }
}

/// Accepts connections and reads them forever without ever answering.
#[derive(Default)]
pub struct HangingHook {
    pub connections: AtomicU64,
    pub bytes: AtomicU64,
}

// ---------------------------------------------------------------------------------

/// W8: Socket Mode. One WebSocket connection at a time (the bridge runs with
/// `SLACK_SOCKET_CONNECTIONS=1`): `hello` on connect, then whatever the workload
/// sends through [`FakeSocket::send`]; acknowledgements (`{"envelope_id": "e{seq}"}`)
/// are counted per seq.
pub struct FakeSocket {
    conn: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    pub acked: Vec<AtomicU8>,
    pub acks: AtomicU64,
    pub changed: tokio::sync::Notify,
}

impl FakeSocket {
    fn new() -> Self {
        FakeSocket {
            conn: Mutex::new(None),
            acked: counters(MAX_SEQ),
            acks: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn reset(&self) {
        *self.conn.lock().unwrap() = None;
        for c in &self.acked {
            c.store(0, Ordering::Relaxed);
        }
        self.acks.store(0, Ordering::Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.conn.lock().unwrap().is_some()
    }

    /// Sends a text frame on the open connection; `false` when there is none.
    pub fn send(&self, text: String) -> bool {
        match self.conn.lock().unwrap().as_ref() {
            Some(tx) => tx.send(text).is_ok(),
            None => false,
        }
    }

    async fn serve(self: Arc<Self>, stream: tokio::net::TcpStream) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let (mut out, mut incoming) = ws.split();
        let hello = r#"{"type":"hello","num_connections":1,"debug_info":{"host":"bench"},"connection_info":{"app_id":"A0BENCH01"}}"#;
        if out.send(Message::text(hello)).await.is_err() {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        *self.conn.lock().unwrap() = Some(tx);
        self.changed.notify_waiters();
        loop {
            tokio::select! {
                frame = incoming.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(seq) = find_num(t.as_bytes(), b"\"envelope_id\":\"e") {
                            if let Some(c) = self.acked.get(seq as usize) {
                                c.store(1, Ordering::Relaxed);
                            }
                            self.acks.fetch_add(1, Ordering::Relaxed);
                            self.changed.notify_waiters();
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                text = rx.recv() => match text {
                    Some(text) => {
                        if out.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    }
}

pub struct Fakes {
    pub socket: Arc<FakeSocket>,
    pub slack: Arc<FakeSlack>,
    pub agent: Arc<FakeAgent>,
    pub hook: Arc<FakeHook>,
    pub hang: Arc<HangingHook>,
    pub openai: Arc<FakeOpenAi>,
    pub discord: Arc<crate::fake_discord::FakeDiscord>,
    pub slack_addr: SocketAddr,
    pub agent_addr: SocketAddr,
    pub hook_addr: SocketAddr,
    pub hang_addr: SocketAddr,
    pub openai_addr: SocketAddr,
    pub discord_addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl Fakes {
    /// Starts every fake on its own 2-thread runtime.
    pub fn start() -> anyhow::Result<Fakes> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-rt")
            .enable_all()
            .build()?;
        let slack = Arc::new(FakeSlack::new());
        let agent = Arc::new(FakeAgent::default());
        let hook = Arc::new(FakeHook::new());
        let hang = Arc::new(HangingHook::default());
        let openai = Arc::new(FakeOpenAi::new());
        let discord = Arc::new(crate::fake_discord::FakeDiscord::new());
        let bind = |rt: &tokio::runtime::Runtime| -> anyhow::Result<TcpListener> {
            let std = std::net::TcpListener::bind("127.0.0.1:0")?;
            std.set_nonblocking(true)?;
            let _g = rt.enter();
            Ok(TcpListener::from_std(std)?)
        };
        let (ls, la, lh, lg) = (bind(&rt)?, bind(&rt)?, bind(&rt)?, bind(&rt)?);
        let socket = Arc::new(FakeSocket::new());
        let lw = bind(&rt)?;
        *slack.socket_url.lock().unwrap() = format!("ws://{}/link/?ticket=bench", lw.local_addr()?);
        {
            let w = socket.clone();
            rt.spawn(async move {
                loop {
                    let Ok((stream, _)) = lw.accept().await else {
                        continue;
                    };
                    tokio::spawn(w.clone().serve(stream));
                }
            });
        }
        let (slack_addr, agent_addr, hook_addr, hang_addr) = (
            ls.local_addr()?,
            la.local_addr()?,
            lh.local_addr()?,
            lg.local_addr()?,
        );
        let (lo, ld) = (bind(&rt)?, bind(&rt)?);
        let (openai_addr, discord_addr) = (lo.local_addr()?, ld.local_addr()?);
        {
            let o = openai.clone();
            rt.spawn(serve(lo, move |r| o.clone().handle(r)));
            rt.spawn(crate::fake_discord::serve(discord.clone(), ld));
            let s = slack.clone();
            rt.spawn(serve(ls, move |r| s.clone().handle(r)));
            let a = agent.clone();
            rt.spawn(serve(la, move |r| a.clone().handle(r)));
            let h = hook.clone();
            rt.spawn(serve(lh, move |r| h.clone().handle(r)));
            let g = hang.clone();
            rt.spawn(async move {
                loop {
                    let Ok((mut stream, _)) = lg.accept().await else {
                        continue;
                    };
                    g.connections.fetch_add(1, Ordering::Relaxed);
                    let g = g.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            g.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    });
                }
            });
        }
        Ok(Fakes {
            socket,
            slack,
            agent,
            hook,
            hang,
            openai,
            discord,
            slack_addr,
            agent_addr,
            hook_addr,
            hang_addr,
            openai_addr,
            discord_addr,
            _rt: rt,
        })
    }

    pub fn reset(&self) {
        self.slack.reset();
        self.socket.reset();
        self.agent.reset();
        self.hook.reset();
        self.openai.reset();
        self.discord.reset();
        self.hang.connections.store(0, Ordering::Relaxed);
        self.hang.bytes.store(0, Ordering::Relaxed);
    }

    /// CPU seconds spent by the fakes' threads.
    pub fn cpu_secs(&self) -> f64 {
        crate::util::thread_cpu_secs("fake-rt")
    }
}
