//! A fake Discord: REST under `/api/v10` and the WebSocket gateway on one port of
//! 127.0.0.1, speaking enough of the real protocol for serenity's client to run
//! unmodified against it.
//!
//! - REST records every call (method, path, JSON body, `Authorization`, arrival time)
//!   and answers with payloads complete enough for serenity's models: messages posted
//!   by the bot, typing (204), threads opened on a message (thread id = message id),
//!   channel lookups, command registration, interaction callbacks and follow-ups. A
//!   test can script one failure for a route (`fail_next`).
//! - The gateway sends HELLO, answers IDENTIFY with a complete READY, heartbeats with
//!   ACK, RESUME of a shard's latest session with RESUMED, and lets a test inject
//!   dispatches (MESSAGE_CREATE, INTERACTION_CREATE) with increasing `s`, drop the TCP
//!   connection, or close with a code. Like Discord, it echoes the bot's own messages
//!   back as MESSAGE_CREATE.
//! - Sharding: `start_sharded(n)` recommends `n` shards (`start` is one). Each IDENTIFY
//!   names its `[shard, total]` and gets a session of its own (id, `s`, READY listing
//!   that shard's guilds). Any number of sessions may be live at once; a dispatch goes
//!   to every live session of its guild's shard, `(guild_id >> 22) % n` (DMs: shard
//!   0), so two sessions of one shard both get it, as on Discord. `guild_for_shard`
//!   and the `*_in` helpers put messages in other guilds than GUILD_ID.
//!
//! One TCP port serves both: each accepted connection is peeked, `GET /gateway` goes
//! to the WebSocket side (tokio-tungstenite), anything else to the axum router.
//!
//! ```ignore
//! let fake = FakeDiscord::start().await;
//! // ... start the app with DISCORD_API_BASE = fake.url() ...
//! fake.wait_ready(WAIT).await;
//! let id = fake.guild_message("C1", "U1", &format!("{} hi", fake.mention())).await;
//! let posts = fake.wait_messages(1, WAIT).await;
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The bot's user id (what `<@ID>` must name).
pub const BOT_ID: &str = "1100000000000000001";
/// The application id; deliberately not the bot's, so a path built from the wrong one
/// shows up.
pub const APP_ID: &str = "1200000000000000002";
/// The guild every guild message belongs to unless a test names another.
pub const GUILD_ID: &str = "1300000000000000003";

/// Where the ids of the guilds `guild_for_shard` makes start: above GUILD_ID, far
/// below the ids `new_id` hands out.
const MADE_GUILDS_FROM: u64 = 1_310_000_000_000_000_000;

/// How long the fake waits for the bot to (re)connect before a test's dispatch fails.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

const TIMESTAMP: &str = "2024-05-01T12:00:00.000000+00:00";

/// One REST call as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The path below `/api/v10`, e.g. `/channels/42/messages`.
    pub path: String,
    /// The JSON body; `Value::Null` when empty or not JSON.
    pub body: Value,
    pub authorization: Option<String>,
    pub at: Instant,
}

impl Call {
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }

    /// `POST /channels/{id}/messages`: a message the bot posted.
    pub fn is_message_post(&self) -> bool {
        let parts: Vec<&str> = self.path.split('/').collect();
        self.method == "POST"
            && parts.len() == 4
            && parts[1] == "channels"
            && parts[3] == "messages"
    }

    /// The channel id of a `/channels/{id}/...` call.
    pub fn channel(&self) -> Option<&str> {
        let mut parts = self.path.split('/').skip(1);
        match parts.next() {
            Some("channels") => parts.next(),
            _ => None,
        }
    }

    /// `body.content` of a message post or edit.
    pub fn content(&self) -> &str {
        self.body["content"].as_str().unwrap_or_default()
    }
}

/// A failure scripted for the next call that matches.
struct Failure {
    method: String,
    path_suffix: String,
    status: u16,
    code: u64,
    message: String,
}

/// A command for a live gateway connection.
enum Command {
    Dispatch(String, Value),
    Close(u16),
    Drop,
}

/// A gateway session: its id and the last `s` sent in it (shared by the connection
/// that identified it and any that resumed it).
#[derive(Clone)]
struct Session {
    id: String,
    seq: Arc<AtomicU64>,
}

/// A connection with a session up on it (after READY or RESUMED).
#[derive(Clone)]
struct Live {
    /// The connection, unique per accepted WebSocket.
    conn: u64,
    shard: u32,
    session_id: String,
    tx: mpsc::UnboundedSender<Command>,
}

struct Thread {
    parent: String,
    owner: String,
}

struct Inner {
    port: u16,
    calls: Mutex<Vec<Call>>,
    /// Woken on every recorded call and every gateway state change.
    changed: Notify,
    next_id: AtomicU64,
    identifies: AtomicUsize,
    resumes: AtomicUsize,
    /// The `d` of every IDENTIFY, in order.
    identify_payloads: Mutex<Vec<Value>>,
    /// The shard count `GET /gateway/bot` recommends; dispatches are routed by it.
    shards: u32,
    /// `session_start_limit.max_concurrency` of `GET /gateway/bot`.
    max_concurrency: AtomicU32,
    /// Every connection with a session up now, of any shard; a dispatch goes to all
    /// of its shard's, waiting for one if there is none.
    live: watch::Sender<Vec<Live>>,
    next_conn: AtomicU64,
    /// Per shard, the latest session IDENTIFY started: the one RESUME may continue.
    sessions: Mutex<HashMap<u32, Session>>,
    /// Per shard, the most sessions ever live at once.
    max_live: Mutex<HashMap<u32, usize>>,
    /// The shard of every IDENTIFY and when it arrived, in order.
    identify_log: Mutex<Vec<(u32, Instant)>>,
    /// The guilds the fake knows (GUILD_ID, those made for a shard, those a test
    /// wrote in), listed in the READY of their shard.
    guilds: Mutex<Vec<String>>,
    /// Threads by id (opened by the bot, or declared by a test).
    threads: Mutex<HashMap<String, Thread>>,
    /// Which guild each channel a test wrote in belongs to (`None`: a DM).
    channel_guilds: Mutex<HashMap<String, Option<String>>>,
    failures: Mutex<VecDeque<Failure>>,
    heartbeat_interval_ms: u64,
    /// The bot's messages as they stand now (posts, with edits applied): id, content.
    bot_messages: Mutex<Vec<(String, String)>>,
    /// A rate-limit bucket on message edits, per channel, when a test sets one.
    edit_bucket: Mutex<Option<EditBucket>>,
    /// Edits answered 429 because the bucket was empty.
    rate_limited: AtomicUsize,
    /// How long a message post takes to be answered after it is made (`delay_posts`).
    post_delay: Mutex<Duration>,
    /// Messages created with a nonce, by (channel, nonce): a repeat with
    /// `enforce_nonce` gets the first one back, as Discord answers.
    nonces: Mutex<HashMap<(String, String), Value>>,
    /// Every message of each channel (people's, injected by tests, and the bot's), in
    /// creation order, for `GET /channels/{id}/messages`.
    channel_log: Mutex<HashMap<String, Vec<Value>>>,
}

/// `limit` edits per `window` per channel, counted from the window's first edit, with
/// Discord's headers on every answer and a 429 past the limit.
struct EditBucket {
    limit: u32,
    window: Duration,
    /// Per channel: when its window started and the edits in it.
    used: HashMap<String, (Instant, u32)>,
}

/// Aborts the server tasks when the last handle goes away.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Handle to a running fake Discord; clones share it.
#[derive(Clone)]
pub struct FakeDiscord {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

/// An interaction the fake sent, for matching the bot's callback and edits.
#[derive(Debug, Clone)]
pub struct SentInteraction {
    pub id: String,
    pub token: String,
}

impl FakeDiscord {
    /// Binds 127.0.0.1:0 and serves REST and the gateway until the last handle drops;
    /// one shard.
    pub async fn start() -> FakeDiscord {
        Self::start_sharded(1).await
    }

    /// Like `start`, but `GET /gateway/bot` recommends `shards` shards and dispatches
    /// are routed to the sessions of their guild's shard, `(guild_id >> 22) % shards`
    /// (shard 0 for DMs).
    pub async fn start_sharded(shards: u32) -> FakeDiscord {
        assert!(shards >= 1, "a bot has at least one shard");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake discord");
        let addr = listener.local_addr().expect("fake discord address");
        let (live, _) = watch::channel(Vec::new());
        let inner = Arc::new(Inner {
            port: addr.port(),
            calls: Mutex::new(Vec::new()),
            changed: Notify::new(),
            next_id: AtomicU64::new(1_400_000_000_000_000_000),
            identifies: AtomicUsize::new(0),
            resumes: AtomicUsize::new(0),
            identify_payloads: Mutex::new(Vec::new()),
            shards,
            max_concurrency: AtomicU32::new(1),
            live,
            next_conn: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            max_live: Mutex::new(HashMap::new()),
            identify_log: Mutex::new(Vec::new()),
            guilds: Mutex::new(vec![GUILD_ID.into()]),
            threads: Mutex::new(HashMap::new()),
            channel_guilds: Mutex::new(HashMap::new()),
            failures: Mutex::new(VecDeque::new()),
            heartbeat_interval_ms: 41_250,
            bot_messages: Mutex::new(Vec::new()),
            edit_bucket: Mutex::new(None),
            rate_limited: AtomicUsize::new(0),
            post_delay: Mutex::new(Duration::ZERO),
            nonces: Mutex::new(HashMap::new()),
            channel_log: Mutex::new(HashMap::new()),
        });

        let (http_tx, http_rx) = mpsc::channel(64);
        let acceptor = {
            let inner = inner.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    let inner = inner.clone();
                    let http_tx = http_tx.clone();
                    tokio::spawn(async move {
                        if is_gateway_request(&stream).await {
                            gateway_connection(inner, stream).await;
                        } else {
                            let _ = http_tx.send((stream, peer)).await;
                        }
                    });
                }
            })
        };
        let router = Router::new().fallback(rest).with_state(inner.clone());
        let server = tokio::spawn(async move {
            let listener = SortedListener { rx: http_rx, addr };
            let _ = axum::serve(listener, router).await;
        });
        FakeDiscord {
            inner,
            _tasks: Arc::new(Tasks(vec![acceptor, server])),
        }
    }

    /// The value for `DISCORD_API_BASE`: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    /// `<@BOT_ID>`.
    pub fn mention(&self) -> String {
        format!("<@{BOT_ID}>")
    }

    /// A fresh snowflake-like id.
    pub fn new_id(&self) -> String {
        self.inner.new_id()
    }

    // -- recorded REST calls --------------------------------------------------------

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// Messages the bot posted (`POST /channels/{id}/messages`), in order.
    pub fn messages(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(Call::is_message_post)
            .collect()
    }

    /// Edits of the bot's messages (`PATCH /channels/{id}/messages/{id}`), in order.
    pub fn edits(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "PATCH" && c.path.starts_with("/channels/"))
            .collect()
    }

    /// The ids of the bot's messages, in posting order.
    pub fn bot_message_ids(&self) -> Vec<String> {
        self.inner
            .bot_messages
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The bot's messages as a user sees them now: each post with its edits applied.
    pub fn final_texts(&self) -> Vec<String> {
        self.inner
            .bot_messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Typing calls (`POST /channels/{id}/typing`), in order.
    pub fn typing(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/typing"))
            .collect()
    }

    /// Waits until `f` finds what it looks for in the calls so far; panics after
    /// `timeout` with the calls that did arrive.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[Call]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a change in between is not missed.
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = f(&self.calls()) {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if let Some(found) = f(&self.calls()) {
                    return found;
                }
                let seen: Vec<String> = self
                    .calls()
                    .iter()
                    .map(|c| format!("{} {} {}", c.method, c.path, c.body))
                    .collect();
                panic!("fake discord: expected {what} within {timeout:?}; calls: {seen:#?}");
            }
        }
    }

    /// Waits for at least `n` posted messages and returns them all.
    pub async fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Call> {
        self.wait_for(&format!("{n} posted message(s)"), timeout, |calls| {
            let posts: Vec<Call> = calls
                .iter()
                .filter(|c| c.is_message_post())
                .cloned()
                .collect();
            (posts.len() >= n).then_some(posts)
        })
        .await
    }

    /// Waits for the first call with this method whose path ends with `suffix`.
    pub async fn wait_call(&self, method: &str, suffix: &str, timeout: Duration) -> Call {
        self.wait_for(&format!("{method} …{suffix}"), timeout, |calls| {
            calls
                .iter()
                .find(|c| c.method == method && c.path.ends_with(suffix))
                .cloned()
        })
        .await
    }

    /// Scripts the next `method` call whose path ends with `path_suffix` to fail with
    /// Discord's JSON error `{code, message}` and `status`.
    pub fn fail_next(
        &self,
        method: &str,
        path_suffix: &str,
        status: u16,
        code: u64,
        message: &str,
    ) {
        self.inner.failures.lock().unwrap().push_back(Failure {
            method: method.into(),
            path_suffix: path_suffix.into(),
            status,
            code,
            message: message.into(),
        });
    }

    /// Puts message edits behind a bucket of `limit` per `window` per channel, answered
    /// with `X-RateLimit-*` headers (and 429 past the limit), as Discord's are.
    pub fn set_edit_bucket(&self, limit: u32, window: Duration) {
        *self.inner.edit_bucket.lock().unwrap() = Some(EditBucket {
            limit,
            window,
            used: HashMap::new(),
        });
    }

    /// Message posts take effect at once (in the channel, its nonce kept) but are
    /// answered only after `delay`: a bot killed meanwhile posted without knowing.
    pub fn delay_posts(&self, delay: Duration) {
        *self.inner.post_delay.lock().unwrap() = delay;
    }

    /// Edits refused with 429 because the bucket was empty.
    pub fn rate_limited(&self) -> usize {
        self.inner.rate_limited.load(Ordering::SeqCst)
    }

    /// Declares `thread` a thread of `parent` opened by `owner`, as `GET /channels`
    /// will then report it.
    pub fn add_thread(&self, thread: &str, parent: &str, owner: &str) {
        self.inner.threads.lock().unwrap().insert(
            thread.into(),
            Thread {
                parent: parent.into(),
                owner: owner.into(),
            },
        );
    }

    // -- gateway --------------------------------------------------------------------

    pub fn identifies(&self) -> usize {
        self.inner.identifies.load(Ordering::SeqCst)
    }

    pub fn resumes(&self) -> usize {
        self.inner.resumes.load(Ordering::SeqCst)
    }

    /// The `d` of every IDENTIFY so far.
    pub fn identify_payloads(&self) -> Vec<Value> {
        self.inner.identify_payloads.lock().unwrap().clone()
    }

    /// The shard of every IDENTIFY so far (`d.shard[0]`, 0 when absent) and when it
    /// arrived, in order.
    pub fn identify_log(&self) -> Vec<(u32, Instant)> {
        self.inner.identify_log.lock().unwrap().clone()
    }

    /// The shard count the fake recommends and routes dispatches by.
    pub fn shards(&self) -> u32 {
        self.inner.shards
    }

    /// Sets `session_start_limit.max_concurrency` of `GET /gateway/bot` (1 unless set).
    pub fn set_max_concurrency(&self, n: u32) {
        self.inner.max_concurrency.store(n, Ordering::SeqCst);
    }

    /// The shard Discord sends a guild's events on: `(guild_id >> 22) % shards`; 0 for
    /// an id that is not a number.
    pub fn shard_of(&self, guild: &str) -> u32 {
        shard_of(guild, self.inner.shards)
    }

    /// How many sessions of `shard` are live now.
    pub fn live_sessions(&self, shard: u32) -> usize {
        self.inner
            .live
            .borrow()
            .iter()
            .filter(|l| l.shard == shard)
            .count()
    }

    /// The most sessions of `shard` ever live at the same moment.
    pub fn max_concurrent_sessions(&self, shard: u32) -> usize {
        self.inner
            .max_live
            .lock()
            .unwrap()
            .get(&shard)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until a counter reaches `n`.
    pub async fn wait_count(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        f: impl Fn(&Self) -> usize,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if f(self) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                assert!(
                    f(self) >= n,
                    "fake discord: expected {n} {what} within {timeout:?}, saw {}",
                    f(self)
                );
                return;
            }
        }
    }

    /// Waits until the bot has identified and handled READY: its `ready` handler
    /// registers the slash commands, which is the visible proof.
    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_call("PUT", &format!("/applications/{APP_ID}/commands"), timeout)
            .await;
        self.wait_live(timeout).await;
    }

    /// Waits until a session of any shard is up (after READY or RESUMED).
    pub async fn wait_live(&self, timeout: Duration) {
        let mut rx = self.inner.live.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|all| !all.is_empty()))
            .await
            .expect("the bot connects to the fake gateway in time")
            .expect("fake gateway state is alive");
    }

    /// Waits until at least one session of `shard` is up; panics after `timeout`
    /// saying which shards were live.
    pub async fn wait_shard_live(&self, shard: u32, timeout: Duration) {
        let mut rx = self.inner.live.subscribe();
        let up = tokio::time::timeout(
            timeout,
            rx.wait_for(|all| all.iter().any(|l| l.shard == shard)),
        )
        .await;
        if up.is_err() {
            let live: Vec<u32> = self.inner.live.borrow().iter().map(|l| l.shard).collect();
            panic!(
                "fake discord: no session of shard {shard} live within {timeout:?}; \
                 live sessions' shards: {live:?}; IDENTIFY shards so far: {:?}",
                self.identify_log()
                    .iter()
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
            );
        }
    }

    /// Sends a dispatch to every live session of its shard (the shard of `d.guild_id`,
    /// 0 without one), waiting for one if none is up.
    pub async fn dispatch(&self, event: &str, d: Value) {
        self.inner.dispatch(event, d).await;
    }

    /// Cuts the TCP connection of every live session (waiting for one if none is
    /// up) without a close frame, as a network failure would.
    pub async fn drop_connection(&self) {
        for live in self.inner.take_live(|_| true).await {
            live.tx.send(Command::Drop).ok();
        }
    }

    /// Cuts, as `drop_connection` does, only the connections of `shard`'s sessions
    /// (waiting for one if none is up).
    pub async fn drop_shard(&self, shard: u32) {
        for live in self.inner.take_live(|l| l.shard == shard).await {
            live.tx.send(Command::Drop).ok();
        }
    }

    /// Closes every live session's connection with `code` (e.g. 4014, 4004), waiting
    /// for one if none is up.
    pub async fn close_with(&self, code: u16) {
        for live in self.inner.take_live(|_| true).await {
            live.tx.send(Command::Close(code)).ok();
        }
    }

    // -- injected messages and interactions -----------------------------------------

    /// A guild whose events Discord sends on `shard`: a known one (GUILD_ID when it
    /// maps there), else a new snowflake-like id the fake then knows (listed in that
    /// shard's READY). The same shard gets the same guild.
    pub fn guild_for_shard(&self, shard: u32) -> String {
        let total = self.inner.shards;
        assert!(shard < total, "shard {shard} of {total}");
        let mut guilds = self.inner.guilds.lock().unwrap();
        if let Some(guild) = guilds.iter().find(|g| shard_of(g, total) == shard) {
            return guild.clone();
        }
        let mut high = (MADE_GUILDS_FROM >> 22) + guilds.len() as u64 * u64::from(total);
        loop {
            let id = ((high << 22) | 3).to_string();
            if high % u64::from(total) == u64::from(shard) && !guilds.contains(&id) {
                guilds.push(id.clone());
                return id;
            }
            high += 1;
        }
    }

    /// A person's message in a guild channel; returns its id.
    pub async fn guild_message(&self, channel: &str, user: &str, content: &str) -> String {
        self.guild_message_in(GUILD_ID, channel, user, content)
            .await
    }

    /// A person's message in `channel` of `guild`: the channel belongs to that guild
    /// from now on (`GET /channels`, the bot's posts in it and their echo), and the
    /// message goes to the guild's shard. Returns its id.
    pub async fn guild_message_in(
        &self,
        guild: &str,
        channel: &str,
        user: &str,
        content: &str,
    ) -> String {
        self.message(
            channel,
            Some(guild),
            user_json(user, false),
            content,
            |_| {},
        )
        .await
    }

    /// A person's direct message to the bot; returns its id.
    pub async fn dm(&self, channel: &str, user: &str, content: &str) -> String {
        self.message(channel, None, user_json(user, false), content, |_| {})
            .await
    }

    /// A message dispatched as MESSAGE_CREATE, with `edit` adjusting the payload
    /// (`bot`, `webhook_id`, `type`, …) before it is sent; returns its id.
    pub async fn message(
        &self,
        channel: &str,
        guild: Option<&str>,
        author: Value,
        content: &str,
        edit: impl FnOnce(&mut Value),
    ) -> String {
        self.inner.place(channel, guild);
        let id = self.new_id();
        let mut payload = message_json(&id, channel, guild, author, content);
        edit(&mut payload);
        self.inner.log(channel, &payload);
        self.dispatch("MESSAGE_CREATE", payload).await;
        id
    }

    /// A person's message in a guild channel written while the bot is not connected:
    /// in the channel's history (`GET /channels/{id}/messages`) but never dispatched,
    /// as Discord does not replay it on a new session. Returns its id.
    pub fn missed_message(&self, channel: &str, user: &str, content: &str) -> String {
        self.missed_message_in(GUILD_ID, channel, user, content)
    }

    /// `missed_message` in `channel` of `guild` (which the channel then belongs to).
    pub fn missed_message_in(
        &self,
        guild: &str,
        channel: &str,
        user: &str,
        content: &str,
    ) -> String {
        self.inner.place(channel, Some(guild));
        let id = self.new_id();
        let payload = message_json(&id, channel, Some(guild), user_json(user, false), content);
        self.inner.log(channel, &payload);
        id
    }

    /// A slash command used in a guild channel by `user`; `options` is Discord's
    /// `data.options` array.
    pub async fn slash_command(
        &self,
        channel: &str,
        user: &str,
        name: &str,
        options: Value,
    ) -> SentInteraction {
        let id = self.new_id();
        let token = format!("interaction-token-{id}");
        let payload = json!({
            "id": id,
            "application_id": APP_ID,
            "type": 2,
            "data": {"id": self.new_id(), "name": name, "type": 1, "options": options},
            "guild_id": GUILD_ID,
            "channel_id": channel,
            "channel": {"id": channel, "type": 0, "name": "general"},
            "member": {
                "user": user_json(user, false),
                "roles": [],
                "joined_at": TIMESTAMP,
                "deaf": false,
                "mute": false,
                "flags": 0,
            },
            "token": token,
            "version": 1,
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "context": 0,
            "attachment_size_limit": 8_388_608,
        });
        self.dispatch("INTERACTION_CREATE", payload).await;
        SentInteraction { id, token }
    }
}

impl FakeDiscord {
    /// A click by `user` on a button (`custom_id`) of the bot's message `message_id`
    /// in the guild channel `channel` (an INTERACTION_CREATE of type 3).
    pub async fn button_click(
        &self,
        channel: &str,
        message_id: &str,
        user: &str,
        custom_id: &str,
    ) -> SentInteraction {
        let id = self.new_id();
        let token = format!("interaction-token-{id}");
        let message = message_json(
            message_id,
            channel,
            Some(GUILD_ID),
            user_json(BOT_ID, true),
            "the answer",
        );
        let payload = json!({
            "id": id,
            "application_id": APP_ID,
            "type": 3,
            "data": {"custom_id": custom_id, "component_type": 2},
            "guild_id": GUILD_ID,
            "channel_id": channel,
            "channel": {"id": channel, "type": 0, "name": "general"},
            "member": {
                "user": user_json(user, false),
                "roles": [],
                "joined_at": TIMESTAMP,
                "deaf": false,
                "mute": false,
                "flags": 0,
            },
            "message": message,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "context": 0,
            "attachment_size_limit": 8_388_608,
        });
        self.dispatch("INTERACTION_CREATE", payload).await;
        SentInteraction { id, token }
    }
}

/// A user object as Discord sends it.
pub fn user_json(id: &str, bot: bool) -> Value {
    json!({
        "id": id,
        "username": format!("user{id}"),
        "discriminator": "0",
        "global_name": null,
        "avatar": null,
        "bot": bot,
    })
}

/// A complete message object.
pub fn message_json(
    id: &str,
    channel: &str,
    guild: Option<&str>,
    author: Value,
    content: &str,
) -> Value {
    let mut m = json!({
        "id": id,
        "channel_id": channel,
        "author": author,
        "content": content,
        "timestamp": TIMESTAMP,
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
        "flags": 0,
    });
    if let Some(guild) = guild {
        m["guild_id"] = json!(guild);
    }
    m
}

impl Inner {
    fn new_id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::SeqCst).to_string()
    }

    fn log(&self, channel: &str, message: &Value) {
        self.channel_log
            .lock()
            .unwrap()
            .entry(channel.into())
            .or_default()
            .push(message.clone());
    }

    /// `GET /channels/{id}/messages?after=&limit=`: newest first, as Discord answers.
    fn history(&self, channel: &str, query: Option<&str>) -> Value {
        let params: HashMap<String, String> = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let after: u64 = params
            .get("after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let limit: usize = params
            .get("limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
            .clamp(1, 100);
        let log = self.channel_log.lock().unwrap();
        let mut newer: Vec<Value> = log
            .get(channel)
            .into_iter()
            .flatten()
            .filter(|m| {
                m["id"]
                    .as_str()
                    .and_then(|id| id.parse::<u64>().ok())
                    .is_some_and(|id| id > after)
            })
            .cloned()
            .collect();
        // With `after`, Discord pages forward from it: the oldest `limit` after it.
        newer.truncate(limit);
        newer.reverse();
        Value::Array(newer)
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
        self.changed.notify_waiters();
    }

    /// Records that `channel` is in `guild` (`None`: a DM), and knows the guild.
    fn place(&self, channel: &str, guild: Option<&str>) {
        self.channel_guilds
            .lock()
            .unwrap()
            .insert(channel.into(), guild.map(Into::into));
        if let Some(guild) = guild {
            let mut guilds = self.guilds.lock().unwrap();
            if !guilds.iter().any(|g| g == guild) {
                guilds.push(guild.into());
            }
        }
    }

    /// The shard a dispatch goes to: its `guild_id`'s, 0 without one (a DM).
    fn shard_of_payload(&self, d: &Value) -> u32 {
        d["guild_id"]
            .as_str()
            .map_or(0, |guild| shard_of(guild, self.shards))
    }

    /// `live` is up on its connection, in place of any earlier connection of the same
    /// session (a RESUME takes the session over).
    fn go_live(&self, live: Live) {
        let shard = live.shard;
        self.live.send_modify(|all| {
            all.retain(|l| l.conn != live.conn && l.session_id != live.session_id);
            all.push(live);
            let now = all.iter().filter(|l| l.shard == shard).count();
            let mut max = self.max_live.lock().unwrap();
            let most = max.entry(shard).or_default();
            *most = (*most).max(now);
        });
        self.changed.notify_waiters();
    }

    /// Connection `conn` has no live session any more.
    fn leave(&self, conn: u64) {
        self.live.send_if_modified(|all| {
            let before = all.len();
            all.retain(|l| l.conn != conn);
            all.len() != before
        });
        self.changed.notify_waiters();
    }

    /// The live sessions `which` picks, waiting (up to CONNECT_WAIT) for at least one.
    async fn wait_live(&self, what: &str, which: impl Fn(&Live) -> bool) -> Vec<Live> {
        let mut rx = self.live.subscribe();
        let live = tokio::time::timeout(CONNECT_WAIT, rx.wait_for(|all| all.iter().any(&which)))
            .await
            .unwrap_or_else(|_| {
                panic!("fake discord: no live gateway session {what} within {CONNECT_WAIT:?}")
            })
            .expect("fake gateway state is alive");
        live.iter().filter(|l| which(l)).cloned().collect()
    }

    /// The live sessions `which` picks (waiting for one), which from now on no longer
    /// count as live.
    async fn take_live(&self, which: impl Fn(&Live) -> bool) -> Vec<Live> {
        loop {
            self.wait_live("to cut", &which).await;
            let mut taken = Vec::new();
            self.live.send_if_modified(|all| {
                let (picked, kept) = all.drain(..).partition(|l| which(l));
                (taken, *all) = (picked, kept);
                !taken.is_empty()
            });
            self.changed.notify_waiters();
            if !taken.is_empty() {
                return taken;
            }
        }
    }

    /// Sends `event` to every live session of its shard, as Discord does: two
    /// sessions of one shard both get it.
    async fn dispatch(&self, event: &str, d: Value) {
        let shard = self.shard_of_payload(&d);
        let what = format!("of shard {shard} for {event}");
        for live in self.wait_live(&what, |l| l.shard == shard).await {
            live.tx
                .send(Command::Dispatch(event.into(), d.clone()))
                .expect("the live gateway connection takes the dispatch");
        }
    }

    fn thread_json(&self, id: &str, thread: &Thread, name: &str) -> Value {
        json!({
            "id": id,
            "type": 11,
            "guild_id": self.channel_guild(&thread.parent),
            "parent_id": thread.parent,
            "owner_id": thread.owner,
            "name": name,
            "last_message_id": null,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": false,
                "auto_archive_duration": 1440,
                "archive_timestamp": TIMESTAMP,
                "locked": false,
            },
        })
    }

    fn channel_json(&self, id: &str) -> Value {
        if let Some(thread) = self.threads.lock().unwrap().get(id) {
            return self.thread_json(id, thread, "a thread");
        }
        json!({
            "id": id,
            "type": 0,
            "guild_id": self.channel_guild(id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "parent_id": null,
            "nsfw": false,
            "topic": null,
            "last_message_id": null,
            "rate_limit_per_user": 0,
            "flags": 0,
        })
    }

    /// The guild `GET /channels/{id}` names for a channel that is not a thread: the
    /// one a test wrote in it under, else GUILD_ID (a DM channel too, as before).
    fn channel_guild(&self, channel: &str) -> String {
        match self.channel_guilds.lock().unwrap().get(channel) {
            Some(Some(guild)) => guild.clone(),
            _ => GUILD_ID.into(),
        }
    }

    /// The guild of a channel the bot posts in: a thread's parent's, a channel a test
    /// used, else GUILD_ID.
    fn guild_of(&self, channel: &str) -> Option<String> {
        let parent = self
            .threads
            .lock()
            .unwrap()
            .get(channel)
            .map(|t| t.parent.clone());
        if let Some(parent) = parent {
            return Some(self.channel_guild(&parent));
        }
        match self.channel_guilds.lock().unwrap().get(channel) {
            Some(guild) => guild.clone(),
            None => Some(GUILD_ID.into()),
        }
    }

    fn bot_message(&self, channel: &str, body: &Value) -> Value {
        let id = self.new_id();
        let guild = self.guild_of(channel);
        let mut m = message_json(
            &id,
            channel,
            guild.as_deref(),
            user_json(BOT_ID, true),
            body["content"].as_str().unwrap_or_default(),
        );
        if let Some(reference) = body.get("message_reference") {
            m["type"] = json!(19);
            m["message_reference"] = reference.clone();
        }
        m
    }
}

// ---------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------

fn discord_error(status: u16, code: u64, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

async fn rest(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path()
        .strip_prefix("/api/v10")
        .unwrap_or(uri.path())
        .to_string();
    let call = Call {
        method: method.to_string(),
        path: path.clone(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(Into::into),
        at: Instant::now(),
    };
    inner.record(call.clone());

    let scripted = {
        let mut failures = inner.failures.lock().unwrap();
        let at = failures
            .iter()
            .position(|f| f.method == call.method && path.ends_with(&f.path_suffix));
        at.and_then(|i| failures.remove(i))
    };
    if let Some(f) = scripted {
        return discord_error(f.status, f.code, &f.message);
    }

    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (call.method.as_str(), segments.as_slice()) {
        ("GET", ["gateway"]) => {
            Json(json!({"url": format!("ws://127.0.0.1:{}/gateway", inner.port)})).into_response()
        }
        ("GET", ["gateway", "bot"]) => Json(json!({
            "url": format!("ws://127.0.0.1:{}/gateway", inner.port),
            "shards": inner.shards,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 0,
                "max_concurrency": inner.max_concurrency.load(Ordering::SeqCst),
            },
        }))
        .into_response(),
        ("GET", ["users", "@me"]) => Json(user_json(BOT_ID, true)).into_response(),
        ("GET", ["oauth2", "applications", "@me"]) => Json(json!({
            "id": APP_ID,
            "name": "agent-bridge test",
            "icon": null,
            "description": "",
            "bot_public": true,
            "bot_require_code_grant": false,
            "verify_key": "0000",
            "flags": 0,
            "owner": user_json("1", false),
        }))
        .into_response(),
        ("GET", ["channels", id]) => Json(inner.channel_json(id)).into_response(),
        ("GET", ["channels", id, "messages"]) => {
            Json(inner.history(id, uri.query())).into_response()
        }
        ("POST", ["channels", _, "typing"]) => StatusCode::NO_CONTENT.into_response(),
        ("POST", ["channels", channel, "messages"]) => {
            let nonce = match &call.body["nonce"] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            let enforced = call.body["enforce_nonce"] == json!(true);
            if let (Some(nonce), true) = (&nonce, enforced) {
                let key = ((*channel).to_string(), nonce.clone());
                if let Some(first) = inner.nonces.lock().unwrap().get(&key) {
                    return Json(first.clone()).into_response();
                }
            }
            let mut message = inner.bot_message(channel, &call.body);
            inner.log(channel, &message);
            if let Some(nonce) = nonce {
                message["nonce"] = json!(nonce);
                inner
                    .nonces
                    .lock()
                    .unwrap()
                    .insert(((*channel).to_string(), nonce), message.clone());
            }
            inner.bot_messages.lock().unwrap().push((
                message["id"].as_str().unwrap_or_default().to_string(),
                call.content().to_string(),
            ));
            // Discord sends the bot its own messages too; the bot must ignore them.
            let echo = inner.clone();
            let payload = message.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let shard = echo.shard_of_payload(&payload);
                    if echo.live.borrow().iter().any(|l| l.shard == shard) {
                        echo.dispatch("MESSAGE_CREATE", payload).await;
                    }
                })
                .await;
            });
            let delay = *inner.post_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            Json(message).into_response()
        }
        ("PATCH", ["channels", channel, "messages", id]) => {
            let limits = inner.edit_bucket.lock().unwrap().as_mut().map(|bucket| {
                let now = Instant::now();
                let (start, used) = bucket.used.entry((*channel).into()).or_insert((now, 0));
                if now >= *start + bucket.window {
                    (*start, *used) = (now, 0);
                }
                let reset_after = (*start + bucket.window).saturating_duration_since(now);
                let allowed = *used < bucket.limit;
                if allowed {
                    *used += 1;
                }
                (allowed, bucket.limit, bucket.limit - *used, reset_after)
            });
            let headers = limits.map(|(_, limit, remaining, reset_after)| {
                [
                    ("x-ratelimit-limit", limit.to_string()),
                    ("x-ratelimit-remaining", remaining.to_string()),
                    (
                        "x-ratelimit-reset-after",
                        format!("{:.3}", reset_after.as_secs_f64()),
                    ),
                    ("x-ratelimit-bucket", "fake-edit-bucket".to_string()),
                ]
            });
            if let Some((false, _, _, reset_after)) = limits {
                inner.rate_limited.fetch_add(1, Ordering::SeqCst);
                let retry = format!("{:.3}", reset_after.as_secs_f64());
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"message": "You are being rate limited.", "retry_after": reset_after.as_secs_f64(), "global": false})),
                )
                    .into_response();
                for (name, value) in headers
                    .into_iter()
                    .flatten()
                    .chain([("retry-after", retry)])
                {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                return response;
            }
            for (posted, content) in inner.bot_messages.lock().unwrap().iter_mut() {
                if posted == id {
                    *content = call.content().to_string();
                }
            }
            let mut message = inner.bot_message(channel, &call.body);
            message["id"] = json!(id);
            let mut response = Json(message).into_response();
            for (name, value) in headers.into_iter().flatten() {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        ("POST", ["channels", parent, "messages", message, "threads"]) => {
            let mut threads = inner.threads.lock().unwrap();
            if threads.contains_key(*parent) {
                return discord_error(400, 50024, "Cannot execute action on this channel type");
            }
            if threads.contains_key(*message) {
                return discord_error(
                    400,
                    160_004,
                    "A thread has already been created for this message",
                );
            }
            let thread = Thread {
                parent: (*parent).into(),
                owner: BOT_ID.into(),
            };
            let name = call.body["name"].as_str().unwrap_or("thread").to_string();
            let json = inner.thread_json(message, &thread, &name);
            threads.insert((*message).into(), thread);
            Json(json).into_response()
        }
        ("PUT", ["applications", app, "commands"]) => {
            let commands: Vec<Value> = call
                .body
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    c["id"] = json!(inner.new_id());
                    c["application_id"] = json!(app);
                    c["version"] = json!(inner.new_id());
                    if c.get("type").is_none() {
                        c["type"] = json!(1);
                    }
                    c
                })
                .collect();
            Json(Value::Array(commands)).into_response()
        }
        ("POST", ["interactions", _id, _token, "callback"]) => {
            StatusCode::NO_CONTENT.into_response()
        }
        ("PATCH", ["webhooks", _app, _token, "messages", "@original"])
        | ("POST", ["webhooks", _app, _token]) => {
            // Interaction responses live in the interaction's channel, which this route
            // does not name; the message's channel does not matter to the bot.
            Json(inner.bot_message("0", &call.body)).into_response()
        }
        _ => discord_error(404, 0, "404: Not Found"),
    }
}

/// Hands axum the connections that are not for the gateway.
struct SortedListener {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for SortedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The acceptor is gone (the fake is shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Peeks at a new connection's first bytes: `GET /gateway` is the WebSocket.
async fn is_gateway_request(stream: &TcpStream) -> bool {
    const PREFIX: &[u8] = b"GET /gateway";
    let mut buf = [0u8; 12];
    let peek = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(n) if n >= PREFIX.len() => return true,
                Ok(0) | Err(_) => return false,
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), peek)
        .await
        .unwrap_or(false)
        && buf == PREFIX
}

// ---------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------

/// `(guild_id >> 22) % total`, Discord's shard formula; 0 for an id that is not a
/// number.
fn shard_of(guild: &str, total: u32) -> u32 {
    guild.parse::<u64>().map_or(0, |id| {
        u32::try_from((id >> 22) % u64::from(total.max(1))).expect("below a u32 total")
    })
}

/// `d.shard` of an IDENTIFY: `[id, total]`, `[0, 1]` when absent.
fn identify_shard(d: &Value) -> (u32, u32) {
    let part = |i: usize, default: u32| {
        d["shard"][i]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default)
    };
    (part(0, 0), part(1, 1))
}

async fn gateway_connection(inner: Arc<Inner>, stream: TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut out, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = inner.next_conn.fetch_add(1, Ordering::SeqCst);
    let hello = json!({"op": 10, "d": {"heartbeat_interval": inner.heartbeat_interval_ms}});
    if out.send(WsMessage::text(hello.to_string())).await.is_err() {
        return;
    }
    // The session up on this connection, once READY or RESUMED is sent.
    let mut session: Option<Session> = None;
    loop {
        tokio::select! {
            frame = incoming.next() => {
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    Some(Ok(WsMessage::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                let reply = match frame["op"].as_u64() {
                    Some(1) => Some(json!({"op": 11})),
                    Some(2) => {
                        inner.identify_payloads.lock().unwrap().push(frame["d"].clone());
                        let (shard, total) = identify_shard(&frame["d"]);
                        inner.identify_log.lock().unwrap().push((shard, Instant::now()));
                        if shard >= total {
                            let frame = CloseFrame { code: CloseCode::from(4010), reason: "Invalid shard.".into() };
                            let _ = out.send(WsMessage::Close(Some(frame))).await;
                            let _ = out.flush().await;
                            break;
                        }
                        let new = Session {
                            id: format!("session-{}", inner.new_id()),
                            seq: Arc::new(AtomicU64::new(0)),
                        };
                        inner.sessions.lock().unwrap().insert(shard, new.clone());
                        let ready = ready_payload(&inner, &new.id, shard, total);
                        let s = new.seq.fetch_add(1, Ordering::SeqCst) + 1;
                        // Live before READY is out, so a client holding READY is counted;
                        // a dispatch queued meanwhile is sent after it, by this loop.
                        inner.go_live(Live { conn, shard, session_id: new.id.clone(), tx: tx.clone() });
                        if out.send(WsMessage::text(json!({"op": 0, "t": "READY", "s": s, "d": ready}).to_string())).await.is_err() {
                            break;
                        }
                        inner.identifies.fetch_add(1, Ordering::SeqCst);
                        session = Some(new);
                        None
                    }
                    Some(6) => {
                        let asked = frame["d"]["session_id"].as_str().unwrap_or_default();
                        let resumable = inner
                            .sessions
                            .lock()
                            .unwrap()
                            .iter()
                            .find(|(_, s)| s.id == asked)
                            .map(|(shard, s)| (*shard, s.clone()));
                        if let Some((shard, resumed)) = resumable {
                            let s = resumed.seq.fetch_add(1, Ordering::SeqCst) + 1;
                            inner.go_live(Live { conn, shard, session_id: resumed.id.clone(), tx: tx.clone() });
                            if out.send(WsMessage::text(json!({"op": 0, "t": "RESUMED", "s": s, "d": {}}).to_string())).await.is_err() {
                                break;
                            }
                            inner.resumes.fetch_add(1, Ordering::SeqCst);
                            session = Some(resumed);
                            None
                        } else {
                            // Unknown or superseded session: not resumable, identify again.
                            Some(json!({"op": 9, "d": false}))
                        }
                    }
                    _ => None,
                };
                if let Some(reply) = reply {
                    if out.send(WsMessage::text(reply.to_string())).await.is_err() {
                        break;
                    }
                }
            }
            command = rx.recv() => match command {
                Some(Command::Dispatch(event, d)) => {
                    let Some(session) = &session else { continue };
                    let s = session.seq.fetch_add(1, Ordering::SeqCst) + 1;
                    let frame = json!({"op": 0, "t": event, "s": s, "d": d});
                    if out.send(WsMessage::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
                Some(Command::Close(code)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: "closed by the test".into() };
                    let _ = out.send(WsMessage::Close(Some(frame))).await;
                    let _ = out.flush().await;
                    break;
                }
                Some(Command::Drop) | None => break,
            }
        }
    }
    // A connection that ended by itself (the bot closed it) is no longer live; one a
    // test cut was taken out already.
    inner.leave(conn);
}

/// READY for a session of `[shard, total]`: the known guilds of that shard, as
/// unavailable (their GUILD_CREATE would follow on a real gateway).
fn ready_payload(inner: &Inner, session: &str, shard: u32, total: u32) -> Value {
    let guilds: Vec<Value> = inner
        .guilds
        .lock()
        .unwrap()
        .iter()
        .filter(|g| shard_of(g, total) == shard)
        .map(|g| json!({"id": g, "unavailable": true}))
        .collect();
    json!({
        "v": 10,
        "user": {
            "id": BOT_ID,
            "username": "agent-bridge",
            "discriminator": "0",
            "global_name": null,
            "avatar": null,
            "bot": true,
            "verified": true,
            "mfa_enabled": false,
            "flags": 0,
        },
        "guilds": guilds,
        "session_id": session,
        "resume_gateway_url": format!("ws://127.0.0.1:{}/gateway", inner.port),
        "shard": [shard, total],
        "application": {"id": APP_ID, "flags": 0},
    })
}

// ---------------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------------

/// WARN and ERROR lines logged by `agent_bridge::discord`, captured process-wide.
#[derive(Default)]
pub struct CapturedLogs {
    lines: Mutex<Vec<String>>,
}

impl CapturedLogs {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a captured line contains `needle`.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?} within {timeout:?}; captured: {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Installs the capture as the global subscriber, once. `None` when another global
/// subscriber was installed first (then log lines cannot be asserted).
pub fn capture_logs() -> Option<Arc<CapturedLogs>> {
    static CAPTURE: OnceLock<Option<Arc<CapturedLogs>>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let logs = Arc::new(CapturedLogs::default());
            tracing_subscriber::registry()
                .with(CaptureLayer(logs.clone()))
                .try_init()
                .ok()
                .map(|()| logs)
        })
        .clone()
}

struct CaptureLayer(Arc<CapturedLogs>);

fn captured(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_event()
        && *meta.level() <= tracing::Level::WARN
        && meta.target().starts_with("agent_bridge::discord")
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if captured(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        captured(meta)
    }

    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.insert_str(0, &format!("{value:?}"));
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0.insert_str(0, value);
                } else {
                    self.0.push_str(&format!(" {}={value}", field.name()));
                }
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0
            .lines
            .lock()
            .unwrap()
            .push(format!("{} {}", event.metadata().level(), fields.0));
    }
}
