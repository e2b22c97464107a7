//! A minimal fake Discord for W7: REST under `/api/v10` and the gateway WebSocket on one
//! port of 127.0.0.1, enough of the real protocol for serenity's client to run
//! unmodified against it (adapted from the test suite's `tests/it/support/discord.rs`,
//! stripped to what W7 needs).
//!
//! - Gateway: HELLO; IDENTIFY → READY; heartbeat → ACK; RESUME → invalid session
//!   (identify again); dispatches (`MESSAGE_CREATE`) injected by the harness with
//!   increasing `s`.
//! - REST: `GET /gateway`, `/gateway/bot`, `/users/@me`, `/oauth2/applications/@me`,
//!   `/channels/{id}`; `POST /channels/{id}/typing` (204), `POST /channels/{id}/messages`,
//!   `PATCH /channels/{id}/messages/{id}`; `PUT /applications/{id}/commands`. Messages
//!   are not echoed back on the gateway (the bridge ignores its own anyway).
//!
//! Each W7 answer has its own channel, `W7_CHANNEL_BASE + seq`, so every call maps back to
//! its answer; while `record` is set, calls go to `w7` ([`W7Call`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::fakes::{json as json_resp, serve_conn, Resp, W7Call};
use crate::util::now_ns;

pub const BOT_ID: &str = "1100000000000000001";
pub const APP_ID: &str = "1200000000000000002";
pub const GUILD_ID: &str = "1300000000000000003";
/// Channel of W7 answer `seq`: `W7_CHANNEL_BASE + seq`.
pub const W7_CHANNEL_BASE: u64 = 1_500_000_000_000_000_000;
const TIMESTAMP: &str = "2026-12-01T12:00:00.000000+00:00";

pub fn channel_of(seq: u64) -> String {
    (W7_CHANNEL_BASE + seq).to_string()
}

fn seq_of_channel(ch: &str) -> Option<u64> {
    ch.parse::<u64>().ok()?.checked_sub(W7_CHANNEL_BASE)
}

pub struct FakeDiscord {
    pub record: AtomicBool,
    pub w7: Mutex<Vec<W7Call>>,
    pub identifies: AtomicU64,
    /// `PUT /applications/{id}/commands`: the bot handled READY.
    pub commands: AtomicU64,
    /// REST calls that matched no route.
    pub unknown: AtomicU64,
    next_id: AtomicU64,
    seq: AtomicU64,
    /// The identified gateway connection: frames to send on it.
    live: Mutex<Option<mpsc::UnboundedSender<String>>>,
    port: AtomicU64,
}

impl FakeDiscord {
    pub fn new() -> Self {
        FakeDiscord {
            record: AtomicBool::new(false),
            w7: Mutex::new(Vec::new()),
            identifies: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            next_id: AtomicU64::new(1_400_000_000_000_000_000),
            seq: AtomicU64::new(0),
            live: Mutex::new(None),
            port: AtomicU64::new(0),
        }
    }

    pub fn reset(&self) {
        self.w7.lock().unwrap().clear();
        self.identifies.store(0, Ordering::Relaxed);
        self.commands.store(0, Ordering::Relaxed);
        self.unknown.store(0, Ordering::Relaxed);
        *self.live.lock().unwrap() = None;
    }

    fn new_id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Whether a gateway session is up.
    pub fn is_live(&self) -> bool {
        self.live
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Sends a dispatch on the live session; `false` when there is none.
    pub fn dispatch(&self, event: &str, d: Value) -> bool {
        let live = self.live.lock().unwrap();
        let Some(tx) = live.as_ref() else {
            return false;
        };
        let s = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        tx.send(json!({"op": 0, "t": event, "s": s, "d": d}).to_string())
            .is_ok()
    }

    /// A person's guild message mentioning the bot in W7 answer `seq`'s channel.
    pub fn w7_message(&self, seq: u64, content: &str) -> bool {
        let id = self.new_id();
        let author = user_json(&format!("{}", 1_600_000_000_000_000_000 + seq), false);
        let m = message_json(&id, &channel_of(seq), author, content);
        self.dispatch("MESSAGE_CREATE", m)
    }

    fn record_call(
        &self,
        seq: Option<u64>,
        method: &'static str,
        message: &str,
        text: &str,
        at: u64,
    ) {
        if !self.record.load(Ordering::Relaxed) {
            return;
        }
        if let Some(seq) = seq {
            self.w7.lock().unwrap().push(W7Call {
                seq,
                method,
                message: message.to_owned(),
                text: text.to_owned(),
                at,
            });
        }
    }

    async fn rest(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let rx = now_ns();
        let method = req.method().clone();
        let path = req
            .uri()
            .path()
            .strip_prefix("/api/v10")
            .unwrap_or(req.uri().path())
            .to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let content = body["content"].as_str().unwrap_or_default();
        let port = self.port.load(Ordering::Relaxed);
        let ok = |v: Value| json_resp(StatusCode::OK, v.to_string());
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["gateway"]) => ok(json!({"url": format!("ws://127.0.0.1:{port}/gateway")})),
            ("GET", ["gateway", "bot"]) => ok(json!({
                "url": format!("ws://127.0.0.1:{port}/gateway"),
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
            })),
            ("GET", ["users", "@me"]) => ok(user_json(BOT_ID, true)),
            ("GET", ["oauth2", "applications", "@me"]) => ok(json!({
                "id": APP_ID, "name": "agent-bridge bench", "icon": null, "description": "",
                "bot_public": true, "bot_require_code_grant": false, "verify_key": "0000", "flags": 0,
                "owner": user_json("1", false),
            })),
            ("GET", ["channels", id]) => {
                self.record_call(seq_of_channel(id), "GET channel", "", "", rx);
                ok(json!({
                    "id": id, "type": 0, "guild_id": GUILD_ID, "name": "general", "position": 0,
                    "permission_overwrites": [], "parent_id": null, "nsfw": false, "topic": null,
                    "last_message_id": null, "rate_limit_per_user": 0, "flags": 0,
                }))
            }
            ("POST", ["channels", ch, "typing"]) => {
                self.record_call(seq_of_channel(ch), "POST typing", "", "", rx);
                hyper::Response::builder()
                    .status(204)
                    .body(Full::new(Bytes::new()))
                    .expect("response")
            }
            ("POST", ["channels", ch, "messages"]) => {
                let id = self.new_id();
                self.record_call(seq_of_channel(ch), "POST message", &id, content, rx);
                let mut m = message_json(&id, ch, user_json(BOT_ID, true), content);
                if let Some(reference) = body.get("message_reference") {
                    m["type"] = json!(19);
                    m["message_reference"] = reference.clone();
                }
                ok(m)
            }
            ("PATCH", ["channels", ch, "messages", id]) => {
                self.record_call(seq_of_channel(ch), "PATCH message", id, content, rx);
                ok(message_json(id, ch, user_json(BOT_ID, true), content))
            }
            ("PUT", ["applications", app, "commands"]) => {
                self.commands.fetch_add(1, Ordering::Relaxed);
                let commands: Vec<Value> = body
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut c| {
                        c["id"] = json!(self.new_id());
                        c["application_id"] = json!(app);
                        c["version"] = json!(self.new_id());
                        if c.get("type").is_none() {
                            c["type"] = json!(1);
                        }
                        c
                    })
                    .collect();
                ok(Value::Array(commands))
            }
            _ => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
                json_resp(
                    StatusCode::NOT_FOUND,
                    r#"{"code":0,"message":"404: Not Found"}"#,
                )
            }
        }
    }

    async fn gateway(self: Arc<Self>, stream: TcpStream) {
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let (mut out, mut incoming) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let hello = json!({"op": 10, "d": {"heartbeat_interval": 41_250}});
        if out.send(WsMessage::text(hello.to_string())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                frame = incoming.next() => {
                    let text = match frame {
                        Some(Ok(WsMessage::Text(t))) => t.to_string(),
                        Some(Ok(WsMessage::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                        Some(Ok(WsMessage::Close(_))) => {
                            // Sends the close reply tungstenite queued.
                            let _ = out.close().await;
                            break;
                        }
                        Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    let reply = match frame["op"].as_u64() {
                        Some(1) => Some(json!({"op": 11}).to_string()),
                        Some(2) => {
                            let session = format!("session-{}", self.new_id());
                            let port = self.port.load(Ordering::Relaxed);
                            let ready = json!({
                                "v": 10,
                                "user": {"id": BOT_ID, "username": "agent-bridge", "discriminator": "0", "global_name": null,
                                         "avatar": null, "bot": true, "verified": true, "mfa_enabled": false, "flags": 0},
                                "guilds": [{"id": GUILD_ID, "unavailable": true}],
                                "session_id": session,
                                "resume_gateway_url": format!("ws://127.0.0.1:{port}/gateway"),
                                "shard": [0, 1],
                                "application": {"id": APP_ID, "flags": 0},
                            });
                            // READY goes out before the session counts as live, so every
                            // dispatch follows it.
                            let mut live = self.live.lock().unwrap();
                            self.seq.store(1, Ordering::SeqCst);
                            let _ = tx.send(json!({"op": 0, "t": "READY", "s": 1, "d": ready}).to_string());
                            *live = Some(tx.clone());
                            self.identifies.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        // No resuming here: identify again.
                        Some(6) => Some(json!({"op": 9, "d": false}).to_string()),
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        if out.send(WsMessage::text(reply)).await.is_err() {
                            break;
                        }
                    }
                }
                frame = rx.recv() => match frame {
                    Some(f) => {
                        if out.send(WsMessage::text(f)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                }
            }
        }
        let mut live = self.live.lock().unwrap();
        if live.as_ref().is_some_and(|l| l.same_channel(&tx)) {
            *live = None;
        }
    }
}

/// Accepts on `listener`: a connection starting `GET /gateway` is the WebSocket, any
/// other is REST.
pub async fn serve(fake: Arc<FakeDiscord>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        fake.port.store(u64::from(addr.port()), Ordering::Relaxed);
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let fake = fake.clone();
        tokio::spawn(async move {
            if is_gateway_request(&stream).await {
                fake.gateway(stream).await;
            } else {
                serve_conn(stream, move |r| fake.clone().rest(r)).await;
            }
        });
    }
}

async fn is_gateway_request(stream: &TcpStream) -> bool {
    const PREFIX: &[u8] = b"GET /gateway";
    let mut buf = [0u8; 12];
    let peek = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(n) if n >= PREFIX.len() => return true,
                Ok(0) | Err(_) => return false,
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), peek)
        .await
        .unwrap_or(false)
        && buf == PREFIX
}

pub fn user_json(id: &str, bot: bool) -> Value {
    json!({"id": id, "username": format!("user{id}"), "discriminator": "0", "global_name": null, "avatar": null, "bot": bot})
}

pub fn message_json(id: &str, channel: &str, author: Value, content: &str) -> Value {
    json!({
        "id": id, "channel_id": channel, "guild_id": GUILD_ID, "author": author, "content": content,
        "timestamp": TIMESTAMP, "edited_timestamp": null, "tts": false, "mention_everyone": false,
        "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "pinned": false,
        "type": 0, "flags": 0,
    })
}

/// The address serenity is pointed at (`DISCORD_API_BASE`).
pub fn api_base(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
