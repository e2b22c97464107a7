//! Reference implementations: the least work *any* bridge must do for W1 and W2,
//! written with nothing but hyper. They are not budgets; they show how far the floor
//! of BENCH.md is from what a bridge that really answers can reach on this machine,
//! so a ratio the bridge misses can be told apart from a ratio nobody could meet.
//!
//! - `reference-slack ADDR SECRET SLACK_API_ADDR`: the W1 floor's work (body, timestamp
//!   window, constant-time HMAC, 200), plus what a reply needs at the least: parse the
//!   event for its channel, `ts` and text, and post the text back in the thread with
//!   one pooled keep-alive `POST /api/chat.postMessage` in the background, reading the
//!   answer's `ok`. No store, no dedupe, no conversation, no transcript.
//! - `reference-slack-store ADDR SECRET SLACK_API_ADDR DB`: the same, plus SQLite
//!   bookkeeping ([`RefStore`]): a dedupe row in the background, then the conversation
//!   and the two transcript rows. Written before SPEC §3 asked for the turn journal.
//! - `reference-slack-journal ADDR SECRET SLACK_API_ADDR DB`: what SPEC asks of an
//!   answered Slack event today, written plainly: the turn in the journal before the
//!   200 (§3; its insert is the dedupe), the reply with the turn's `metadata` (§3) and
//!   the feedback buttons (`FEEDBACK_BUTTONS` defaults to on, §5), then the
//!   conversation, the two transcript rows and the turn marked answered in one write.
//! - `reference-proxy ADDR AGENT_ADDR`: W2's least work: read the request body, send it
//!   to the agent's `/query` over a pooled keep-alive connection, return the answer's
//!   body. No auth, no JSON, no events.
//!
//! Each runs as its own process on tokio's default multi-thread runtime, like the
//! bridge, so its CPU time and RSS are read from /proc the same way.

use std::net::SocketAddr;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::fakes::serve;
use crate::slackev::accept;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Event<'a>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, default)]
    user: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    ts: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct Post<'a> {
    channel: &'a str,
    thread_ts: &'a str,
    text: &'a str,
}

/// The reply as SPEC asks it with the journal: the text as a section, the feedback
/// buttons after it (§5), the turn as message metadata (§3). W1's texts are short, so
/// one section holds the text (Slack takes up to 3,000 characters in one). Typed
/// structs, as a careful plain implementation would write them (a `json!` tree per
/// reply would cost the reference more than it needs).
#[derive(Serialize)]
struct PostWithTurn<'a> {
    channel: &'a str,
    thread_ts: &'a str,
    text: &'a str,
    blocks: (Section<'a>, Actions<'a>),
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Section<'a> {
    r#type: &'static str,
    text: TypedText<'a>,
}

#[derive(Serialize)]
struct TypedText<'a> {
    r#type: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct Actions<'a> {
    r#type: &'static str,
    elements: [FeedbackButtons<'a>; 1],
}

#[derive(Serialize)]
struct FeedbackButtons<'a> {
    r#type: &'static str,
    action_id: &'static str,
    positive_button: Button<'a>,
    negative_button: Button<'a>,
}

#[derive(Serialize)]
struct Button<'a> {
    text: TypedText<'a>,
    value: String,
    accessibility_label: &'static str,
}

#[derive(Serialize)]
struct Metadata<'a> {
    event_type: &'static str,
    event_payload: TurnPayload<'a>,
}

#[derive(Serialize)]
struct TurnPayload<'a> {
    turn_id: &'a str,
}

fn post_with_turn<'a>(
    channel: &'a str,
    thread_ts: &'a str,
    text: &'a str,
    turn: &'a str,
) -> PostWithTurn<'a> {
    let button = |emoji: &'static str, vote: &str, label: &'static str| Button {
        text: TypedText {
            r#type: "plain_text",
            text: emoji,
        },
        value: format!("{turn}:{vote}"),
        accessibility_label: label,
    };
    PostWithTurn {
        channel,
        thread_ts,
        text,
        blocks: (
            Section {
                r#type: "section",
                text: TypedText {
                    r#type: "mrkdwn",
                    text,
                },
            },
            Actions {
                r#type: "context_actions",
                elements: [FeedbackButtons {
                    r#type: "feedback_buttons",
                    action_id: "feedback",
                    positive_button: button("👍", "up", "Good answer"),
                    negative_button: button("👎", "down", "Bad answer"),
                }],
            },
        ),
        metadata: Metadata {
            event_type: "agent_bridge_turn",
            event_payload: TurnPayload { turn_id: turn },
        },
    }
}

#[derive(Deserialize)]
struct PostAnswer {
    ok: bool,
}

pub fn proxy(bind: SocketAddr, agent: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(bind).await?;
        let client = client();
        let url: hyper::Uri = format!("http://{agent}/query").parse()?;
        serve(listener, move |req: Request<hyper::body::Incoming>| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let out = Request::post(url)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body));
                let Ok(out) = out else {
                    return empty(StatusCode::INTERNAL_SERVER_ERROR);
                };
                let answer = match client.request(out).await {
                    Ok(resp) => resp.into_body().collect().await.map(|b| b.to_bytes()),
                    Err(_) => return empty(StatusCode::BAD_GATEWAY),
                };
                match answer {
                    Ok(bytes) => {
                        let mut resp = Response::new(Full::new(bytes));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        resp
                    }
                    Err(_) => empty(StatusCode::BAD_GATEWAY),
                }
            }
        })
        .await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------
// W1 reference with a store
// ---------------------------------------------------------------------------------

/// The least durable bookkeeping SPEC asks of a reply, on SQLite: a dedupe row per
/// event (written and read back before answering), then the conversation row and
/// two transcript rows, with the bridge's own tables and indexes. One writer thread
/// owns the connection, group-commits whatever has queued (one transaction per
/// batch, statements prepared once), WAL with `synchronous=NORMAL` like the bridge.
pub struct RefStore {
    ops: flume::Sender<StoreOp>,
}

enum StoreOp {
    /// `true` to the reply when the key was new.
    Sighting(String, tokio::sync::oneshot::Sender<bool>),
    /// The turn into the journal (SPEC §3); `true` to the reply when it was new.
    /// `None` when the batch failed.
    Accept(Accepted, tokio::sync::oneshot::Sender<Option<bool>>),
    Turn(Turn, tokio::sync::oneshot::Sender<()>),
}

/// What answering a journaled turn after a crash needs.
pub struct Accepted {
    id: String,
    channel: String,
    thread: String,
    user: String,
    text: String,
}

pub struct Turn {
    key: String,
    channel: String,
    thread: String,
    session: String,
    query: String,
    answer: String,
    /// With the journal: the turn's id, marked answered in the same transaction.
    journaled: Option<String>,
}

const REF_SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA wal_autocheckpoint = 16000;
PRAGMA temp_store = memory;
CREATE TABLE IF NOT EXISTS conversations (
    key TEXT PRIMARY KEY NOT NULL, platform TEXT NOT NULL, workspace TEXT NOT NULL,
    channel TEXT NOT NULL, thread TEXT, user_id TEXT, agent_session TEXT,
    personality TEXT, last_activity BIGINT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_last_activity ON conversations (last_activity);
CREATE TABLE IF NOT EXISTS transcripts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL, role TEXT NOT NULL,
    content TEXT NOT NULL, created_at BIGINT NOT NULL, platform TEXT NOT NULL,
    channel TEXT NOT NULL, thread TEXT, user_id TEXT NOT NULL, message_id TEXT);
CREATE INDEX IF NOT EXISTS transcripts_session ON transcripts (session_id, created_at, id);
CREATE INDEX IF NOT EXISTS transcripts_created_at ON transcripts (created_at);
CREATE TABLE IF NOT EXISTS seen_events (
    key TEXT PRIMARY KEY NOT NULL, expires_at BIGINT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_events_expires_at ON seen_events (expires_at);
CREATE TABLE IF NOT EXISTS turn_journal (
    id TEXT NOT NULL PRIMARY KEY, platform TEXT NOT NULL, workspace TEXT NOT NULL,
    channel TEXT NOT NULL, thread TEXT, user_id TEXT NOT NULL, message_id TEXT NOT NULL,
    body TEXT NOT NULL, reply_to TEXT NOT NULL, state TEXT NOT NULL,
    received_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl RefStore {
    pub fn open(path: &str) -> anyhow::Result<RefStore> {
        let db = rusqlite::Connection::open(path)?;
        db.execute_batch(REF_SCHEMA)?;
        let (ops, rx) = flume::unbounded();
        std::thread::Builder::new()
            .name("ref-writer".into())
            .spawn(move || writer(db, rx))?;
        // Checkpoints beside the writer, as the bridge does (a PASSIVE one every
        // 200 ms on a connection of its own), so the writer never copies the WAL back.
        let checkpoints = rusqlite::Connection::open(path)?;
        std::thread::Builder::new()
            .name("ref-checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let _ = checkpoints.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            })?;
        Ok(RefStore { ops })
    }

    pub async fn first_sighting(&self, key: String) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.ops.send(StoreOp::Sighting(key, tx));
        rx.await.unwrap_or(false)
    }

    /// `None` when the store failed: the event is then not acknowledged.
    pub async fn accept(&self, turn: Accepted) -> Option<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.ops.send(StoreOp::Accept(turn, tx));
        rx.await.ok().flatten()
    }

    pub async fn commit(&self, turn: Turn) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.ops.send(StoreOp::Turn(turn, tx));
        let _ = rx.await;
    }
}

fn writer(db: rusqlite::Connection, rx: flume::Receiver<StoreOp>) {
    let mut batch = Vec::new();
    while let Ok(op) = rx.recv() {
        batch.push(op);
        batch.extend(rx.try_iter().take(255));
        let now = now_ms();
        let mut first = Vec::with_capacity(batch.len());
        let result = (|| -> rusqlite::Result<()> {
            db.execute_batch("BEGIN IMMEDIATE")?;
            for op in &batch {
                match op {
                    StoreOp::Sighting(key, _) => {
                        let n = db
                            .prepare_cached(
                                "INSERT INTO seen_events (key, expires_at) VALUES (?1, ?2) \
                                 ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
                                 WHERE seen_events.expires_at < ?3",
                            )?
                            .execute(rusqlite::params![key, now + 3_600_000, now])?;
                        first.push(n == 1);
                    }
                    StoreOp::Accept(a, _) => {
                        let n = db
                            .prepare_cached(
                                "INSERT INTO turn_journal (id, platform, workspace, channel, \
                                 thread, user_id, message_id, body, reply_to, state, \
                                 received_at, updated_at) \
                                 VALUES (?1, 'slack', 'T1', ?2, ?3, ?4, ?3, ?5, ?2, 'accepted', \
                                 ?6, ?6) ON CONFLICT (id) DO NOTHING",
                            )?
                            .execute(rusqlite::params![
                                a.id, a.channel, a.thread, a.user, a.text, now
                            ])?;
                        first.push(n == 1);
                    }
                    StoreOp::Turn(t, _) => {
                        db.prepare_cached(
                            "INSERT INTO conversations (key, platform, workspace, channel, thread, \
                             user_id, agent_session, personality, last_activity) \
                             VALUES (?1, 'slack', 'T1', ?2, ?3, NULL, ?4, NULL, ?5) \
                             ON CONFLICT (key) DO UPDATE SET agent_session = excluded.agent_session, \
                             last_activity = excluded.last_activity",
                        )?
                        .execute(rusqlite::params![t.key, t.channel, t.thread, t.session, now])?;
                        let mut ins = db.prepare_cached(
                            "INSERT INTO transcripts (session_id, role, content, created_at, \
                             platform, channel, thread, user_id, message_id) \
                             VALUES (?1, ?2, ?3, ?4, 'slack', ?5, ?6, 'U', NULL)",
                        )?;
                        ins.execute(rusqlite::params![
                            t.session, "user", t.query, now, t.channel, t.thread
                        ])?;
                        ins.execute(rusqlite::params![
                            t.session,
                            "assistant",
                            t.answer,
                            now,
                            t.channel,
                            t.thread
                        ])?;
                        if let Some(id) = &t.journaled {
                            db.prepare_cached(
                                "UPDATE turn_journal SET state = 'answered', updated_at = ?2 \
                                 WHERE id = ?1 AND state = 'accepted'",
                            )?
                            .execute(rusqlite::params![id, now])?;
                        }
                        first.push(true);
                    }
                }
            }
            db.execute_batch("COMMIT")
        })();
        if let Err(e) = &result {
            eprintln!("reference store: batch failed: {e}");
            let _ = db.execute_batch("ROLLBACK");
        }
        for (op, first) in batch
            .drain(..)
            .zip(first.into_iter().chain(std::iter::repeat(false)))
        {
            match op {
                StoreOp::Sighting(_, tx) => {
                    let _ = tx.send(first && result.is_ok());
                }
                StoreOp::Accept(_, tx) => {
                    let _ = tx.send(result.is_ok().then_some(first));
                }
                StoreOp::Turn(_, tx) => {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// What a W1 reference keeps in SQLite besides answering.
pub enum Bookkeeping {
    None,
    /// [`RefStore`]: dedupe before answering, the turn's rows after posting.
    Store(String),
    /// SPEC §3 today: the turn journaled before the 200, the reply carrying it, the
    /// turn's rows and its end written together after posting.
    Journal(String),
}

/// The W1 reference: check, parse, acknowledge; in the background post the text back
/// in its thread, with the [`Bookkeeping`] asked for.
pub fn slack(
    bind: SocketAddr,
    secret: String,
    api: SocketAddr,
    books: Bookkeeping,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(bind).await?;
        let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
        let client = client();
        let url: hyper::Uri = format!("http://{api}/api/chat.postMessage").parse()?;
        let (store, journal) = match books {
            Bookkeeping::None => (None, false),
            Bookkeeping::Store(db) => (Some(std::sync::Arc::new(RefStore::open(&db)?)), false),
            Bookkeeping::Journal(db) => (Some(std::sync::Arc::new(RefStore::open(&db)?)), true),
        };
        serve(listener, move |req: Request<hyper::body::Incoming>| {
            let key = key.clone();
            let client = client.clone();
            let url = url.clone();
            let store = store.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if !accept(&key, &parts.headers, &body) {
                    return empty(StatusCode::UNAUTHORIZED);
                }
                let Ok(env) = serde_json::from_slice::<Envelope>(&body) else {
                    return empty(StatusCode::BAD_REQUEST);
                };
                let (channel, ts, text) = (
                    env.event.channel.into_owned(),
                    env.event.ts.into_owned(),
                    env.event.text.into_owned(),
                );
                match &store {
                    Some(store) if journal => {
                        let id = format!("slack:T1:{channel}:{ts}");
                        let accepted = Accepted {
                            id: id.clone(),
                            channel: channel.clone(),
                            thread: ts.clone(),
                            user: env.event.user.into_owned(),
                            text: text.clone(),
                        };
                        match store.accept(accepted).await {
                            // Journaled before: answered, or being answered.
                            Some(false) => return empty(StatusCode::OK),
                            None => return empty(StatusCode::INTERNAL_SERVER_ERROR),
                            Some(true) => {}
                        }
                        let store = store.clone();
                        tokio::spawn(async move {
                            let post = post_with_turn(&channel, &ts, &text, &id);
                            post_reply(&client, url, &post).await;
                            store.commit(turn(channel, ts, text, Some(id))).await;
                        });
                    }
                    _ => {
                        tokio::spawn(async move {
                            if let Some(store) = &store {
                                if !store
                                    .first_sighting(format!("slack:msg:{ts}:{channel}"))
                                    .await
                                {
                                    return;
                                }
                            }
                            let post = Post {
                                channel: &channel,
                                thread_ts: &ts,
                                text: &text,
                            };
                            post_reply(&client, url, &post).await;
                            if let Some(store) = &store {
                                store.commit(turn(channel, ts, text, None)).await;
                            }
                        });
                    }
                }
                empty(StatusCode::OK)
            }
        })
        .await;
        Ok(())
    })
}

/// The rows of an answered turn: the echo's answer is the query.
fn turn(channel: String, ts: String, text: String, journaled: Option<String>) -> Turn {
    Turn {
        key: format!("slack/T1/{channel}/t:{ts}"),
        session: uuid::Uuid::new_v4().to_string(),
        channel,
        thread: ts,
        answer: text.clone(),
        query: text,
        journaled,
    }
}

/// One `chat.postMessage` in the thread, reading the answer's `ok`.
async fn post_reply(client: &HttpClient, url: hyper::Uri, post: &impl Serialize) {
    let Ok(post) = serde_json::to_vec(post) else {
        return;
    };
    let req = Request::post(url)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .header(hyper::header::AUTHORIZATION, "Bearer xoxb-bench")
        .body(Full::new(Bytes::from(post)));
    let Ok(req) = req else { return };
    if let Ok(resp) = client.request(req).await {
        if let Ok(body) = resp.into_body().collect().await {
            let answer = serde_json::from_slice::<PostAnswer>(&body.to_bytes());
            if !answer.is_ok_and(|a| a.ok) {
                eprintln!("reference-slack: chat.postMessage not ok");
            }
        }
    }
}
