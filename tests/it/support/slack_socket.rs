//! The fake Slack's Socket Mode side: a WebSocket server on 127.0.0.1:0 whose URLs
//! `apps.connections.open` hands out. Each connection gets `hello` at once; the test
//! pushes `events_api` / `interactive` envelopes and `disconnect` messages, and the
//! server records every acknowledgement with its delay. An envelope left
//! unacknowledged (its connection closed first, or acks "lost" on purpose) is
//! delivered again on another open connection with `retry_attempt` + 1, as Slack does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// One WebSocket connection as the fake saw it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: usize,
    pub opened_at: Instant,
    pub closed_at: Option<Instant>,
}

/// One acknowledgement the bridge sent.
#[derive(Debug, Clone)]
pub struct Ack {
    pub envelope_id: String,
    /// The connection it came on.
    pub conn: usize,
    /// Time from sending the envelope (this attempt) to its acknowledgement.
    pub delay: Duration,
    pub at: Instant,
    /// `retry_attempt` of the delivery it acknowledged.
    pub attempt: u32,
}

#[derive(Debug, Clone)]
struct Sent {
    kind: String,
    payload: Value,
    attempt: u32,
    conn: usize,
    at: Instant,
    acked: bool,
}

enum Command {
    Text(String),
    Close(u16),
    Drop,
}

#[derive(Default)]
struct State {
    conns: Vec<Conn>,
    senders: HashMap<usize, mpsc::UnboundedSender<Command>>,
    envelopes: HashMap<String, Sent>,
    acks: Vec<Ack>,
    /// Acks from these connections are dropped unread (a lost acknowledgement).
    deaf: Vec<usize>,
}

pub struct SocketServer {
    pub port: u16,
    state: Mutex<State>,
    changed: Notify,
    seq: AtomicU64,
    /// Unacknowledged envelopes are delivered again after this.
    redeliver_after: Mutex<Duration>,
}

static ENVELOPES: AtomicU64 = AtomicU64::new(1);

impl SocketServer {
    pub async fn start() -> Arc<SocketServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake socket mode");
        let port = listener.local_addr().expect("socket mode address").port();
        let server = Arc::new(SocketServer {
            port,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            seq: AtomicU64::new(1),
            redeliver_after: Mutex::new(Duration::from_secs(3600)),
        });
        let accepting = Arc::downgrade(&server);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Some(server) = accepting.upgrade() else {
                    return;
                };
                tokio::spawn(connection(server, stream));
            }
        });
        let redelivering = Arc::downgrade(&server);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Some(server) = redelivering.upgrade() else {
                    return;
                };
                server.redeliver_due();
            }
        });
        server
    }

    /// A fresh URL, as `apps.connections.open` returns it.
    pub fn url(&self) -> String {
        let ticket = self.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "ws://127.0.0.1:{}/link/?ticket=t{ticket}&app_id=A1",
            self.port
        )
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    pub fn conns(&self) -> Vec<Conn> {
        self.state.lock().unwrap().conns.clone()
    }

    pub fn open_conns(&self) -> Vec<usize> {
        let state = self.state.lock().unwrap();
        state
            .conns
            .iter()
            .filter(|c| c.closed_at.is_none() && state.senders.contains_key(&c.id))
            .map(|c| c.id)
            .collect()
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.state.lock().unwrap().acks.clone()
    }

    pub fn set_redeliver_after(&self, d: Duration) {
        *self.redeliver_after.lock().unwrap() = d;
    }

    pub fn deafen(&self, conn: usize) {
        self.state.lock().unwrap().deaf.push(conn);
    }

    /// Waits until `cond` holds over the state, or panics after `within`.
    pub async fn wait(&self, within: Duration, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() && !cond(self) {
                panic!(
                    "fake socket mode: {what} not seen within {within:?}; connections {:?}, acks {:?}",
                    self.conns(),
                    self.acks()
                );
            }
        }
    }

    /// Sends an envelope of `kind` with `payload` on `conn`; returns its envelope id.
    pub fn send_envelope(&self, conn: usize, kind: &str, payload: Value) -> String {
        let id = format!("env-{}", ENVELOPES.fetch_add(1, Ordering::Relaxed));
        assert!(
            self.deliver(&id, conn, kind, payload, 0),
            "fake socket mode: connection {conn} is not open"
        );
        id
    }

    /// Sends an `events_api` envelope carrying `event_callback` on the first open
    /// connection; returns its envelope id.
    pub fn send_event(&self, event_callback: Value) -> String {
        let conn = *self
            .open_conns()
            .first()
            .expect("fake socket mode: no open connection");
        self.send_envelope(conn, "events_api", event_callback)
    }

    fn deliver(&self, id: &str, conn: usize, kind: &str, payload: Value, attempt: u32) -> bool {
        let frame = json!({
            "envelope_id": id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": false,
            "retry_attempt": attempt,
            "retry_reason": if attempt > 0 { "timeout" } else { "" },
        });
        let mut state = self.state.lock().unwrap();
        state.envelopes.insert(
            id.to_owned(),
            Sent {
                kind: kind.to_owned(),
                payload,
                attempt,
                conn,
                at: Instant::now(),
                acked: false,
            },
        );
        match state.senders.get(&conn) {
            Some(sender) => sender.send(Command::Text(frame.to_string())).is_ok(),
            None => false,
        }
    }

    /// Sends `disconnect` with `reason` on `conn`.
    pub fn disconnect(&self, conn: usize, reason: &str) {
        let frame = json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "fake"}});
        if let Some(sender) = self.state.lock().unwrap().senders.get(&conn) {
            let _ = sender.send(Command::Text(frame.to_string()));
        }
    }

    /// Closes `conn` with a close frame.
    pub fn close(&self, conn: usize, code: u16) {
        if let Some(sender) = self.state.lock().unwrap().senders.get(&conn) {
            let _ = sender.send(Command::Close(code));
        }
    }

    /// Drops `conn`'s TCP connection without a close frame.
    pub fn kill(&self, conn: usize) {
        if let Some(sender) = self.state.lock().unwrap().senders.get(&conn) {
            let _ = sender.send(Command::Drop);
        }
    }

    /// Every unacknowledged envelope older than the redelivery delay goes out again on
    /// another open connection (the same one if it is the only one), attempt + 1.
    fn redeliver_due(&self) {
        let after = *self.redeliver_after.lock().unwrap();
        let due: Vec<(String, Sent)> = {
            let state = self.state.lock().unwrap();
            state
                .envelopes
                .iter()
                .filter(|(_, s)| !s.acked && s.at.elapsed() >= after && s.attempt < 3)
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect()
        };
        for (id, sent) in due {
            let open = self.open_conns();
            let Some(conn) = open
                .iter()
                .copied()
                .find(|c| *c != sent.conn)
                .or(open.first().copied())
            else {
                continue;
            };
            self.deliver(&id, conn, &sent.kind, sent.payload, sent.attempt + 1);
        }
    }

    fn on_text(&self, conn: usize, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Some(id) = frame["envelope_id"].as_str() else {
            return;
        };
        let mut state = self.state.lock().unwrap();
        if state.deaf.contains(&conn) {
            return;
        }
        let Some(sent) = state.envelopes.get_mut(id) else {
            return;
        };
        sent.acked = true;
        let ack = Ack {
            envelope_id: id.to_owned(),
            conn,
            delay: sent.at.elapsed(),
            at: Instant::now(),
            attempt: sent.attempt,
        };
        state.acks.push(ack);
        drop(state);
        self.notify();
    }
}

async fn connection(server: Arc<SocketServer>, stream: tokio::net::TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut out, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut state = server.state.lock().unwrap();
        let id = state.conns.len();
        state.conns.push(Conn {
            id,
            opened_at: Instant::now(),
            closed_at: None,
        });
        state.senders.insert(id, tx);
        id
    };
    let hello = json!({
        "type": "hello",
        "num_connections": server.open_conns().len(),
        "debug_info": {"host": "fake", "approximate_connection_time": 18060},
        "connection_info": {"app_id": "A1"},
    });
    if out.send(Message::text(hello.to_string())).await.is_ok() {
        server.notify();
        loop {
            tokio::select! {
                frame = incoming.next() => match frame {
                    Some(Ok(Message::Text(text))) => server.on_text(id, text.as_str()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                command = rx.recv() => match command {
                    Some(Command::Text(text)) => {
                        if out.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    Some(Command::Close(code)) => {
                        let frame = CloseFrame { code: CloseCode::from(code), reason: "closed by the test".into() };
                        let _ = out.send(Message::Close(Some(frame))).await;
                        let _ = out.flush().await;
                        break;
                    }
                    Some(Command::Drop) | None => break,
                }
            }
        }
    }
    let mut state = server.state.lock().unwrap();
    state.senders.remove(&id);
    if let Some(c) = state.conns.get_mut(id) {
        c.closed_at = Some(Instant::now());
    }
    drop(state);
    server.notify();
}
