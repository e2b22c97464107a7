//! The peers the bridge talks to, as minimal hyper servers on 127.0.0.1, run in the
//! harness process on their own runtime (threads named `fake-*`): a fake AI Agent API,
//! a fake Slack Web API, a fast webhook receiver (with a gate that holds answers) and
//! a hanging one. Each counts what it saw so the harness can check the bridge's work.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

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
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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

pub struct FakeSlack {
    /// W8: where `apps.connections.open` points (set once the socket server binds).
    pub socket_url: Mutex<String>,
    pub stats: SlackStats,
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
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
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
            params
                .get(name)
                .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
        };
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
                        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(1));
                    }
                    _ => {
                        self.stats.unknown_thread.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(seq) = find_num(text.as_bytes(), b"w3id=") {
                    self.w3.lock().unwrap().push((seq, rx));
                }
                let micros = self.ts.fetch_add(1, Ordering::Relaxed);
                let ts = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
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
                json(StatusCode::OK, serde_json::json!({"ok": true, "url": url}).to_string())
            }
            "reactions.add" | "reactions.remove" => {
                if method == "reactions.add" {
                    self.stats.react_add.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.react_remove.fetch_add(1, Ordering::Relaxed);
                }
                json(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
            }
            _ => {
                self.stats.other.fetch_add(1, Ordering::Relaxed);
                json(StatusCode::OK, Bytes::from_static(br#"{"ok":false,"error":"unknown_method"}"#))
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
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
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
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
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
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
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
    pub slack_addr: SocketAddr,
    pub agent_addr: SocketAddr,
    pub hook_addr: SocketAddr,
    pub hang_addr: SocketAddr,
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
                    let Ok((stream, _)) = lw.accept().await else { continue };
                    tokio::spawn(w.clone().serve(stream));
                }
            });
        }
        let (slack_addr, agent_addr, hook_addr, hang_addr) =
            (ls.local_addr()?, la.local_addr()?, lh.local_addr()?, lg.local_addr()?);
        {
            let s = slack.clone();
            rt.spawn(serve(ls, move |r| s.clone().handle(r)));
            let a = agent.clone();
            rt.spawn(serve(la, move |r| a.clone().handle(r)));
            let h = hook.clone();
            rt.spawn(serve(lh, move |r| h.clone().handle(r)));
            let g = hang.clone();
            rt.spawn(async move {
                loop {
                    let Ok((mut stream, _)) = lg.accept().await else { continue };
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
            slack_addr,
            agent_addr,
            hook_addr,
            hang_addr,
            _rt: rt,
        })
    }

    pub fn reset(&self) {
        self.slack.reset();
        self.socket.reset();
        self.agent.reset();
        self.hook.reset();
        self.hang.connections.store(0, Ordering::Relaxed);
        self.hang.bytes.store(0, Ordering::Relaxed);
    }

    /// CPU seconds spent by the fakes' threads.
    pub fn cpu_secs(&self) -> f64 {
        crate::util::thread_cpu_secs("fake-rt")
    }
}
