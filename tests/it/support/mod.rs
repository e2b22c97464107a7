//! Test peers and the `TestApp` harness (zero2prod's `spawn_app`): a real `App` on
//! 127.0.0.1:0 with a fresh SQLite file, every outbound client pointed at a local
//! fake, configured only through the variables of SPEC §2.
#![allow(dead_code)]

pub mod agent;
pub mod cut;
pub mod db;
pub mod discord;
pub mod openai;
pub mod process;
pub mod receiver;
pub mod slack;
pub mod slack_socket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_bridge::app::{App, Core};
use agent_bridge::config::Config;
use agent_bridge::core::ports::{ChatSink, SinkError};
use agent_bridge::core::{Inbound, Platform, Relay, TurnOutcome};
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::agent::FakeAgent;

pub const TOKEN: &str = "test-admin-token-5d41402abc4b2a76";

/// Builds a `Config` the way the binary does, from variables: test defaults first,
/// then `overrides` (an empty value counts as unset, as in the real environment).
pub fn config(vars: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = HashMap::new();
    for (k, v) in vars {
        map.insert((*k).to_string(), (*v).to_string());
    }
    Config::from_vars(|k| map.get(k).cloned())
        .unwrap_or_else(|e| panic!("test config is invalid: {e}"))
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub relay: Relay,
    pub agent: FakeAgent,
    pub db_url: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Keeps the SQLite file alive for the app's lifetime.
    _dir: Option<tempfile::TempDir>,
}

pub struct Spawn {
    vars: Vec<(String, String)>,
    agent: Option<FakeAgent>,
    db_url: Option<String>,
    subscriber: bool,
    header_timeout: Option<Duration>,
}

impl Spawn {
    pub fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.push((k.into(), v.into()));
        self
    }

    pub fn agent(mut self, agent: FakeAgent) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Use this database instead of a fresh SQLite file.
    pub fn database(mut self, url: &str) -> Self {
        self.db_url = Some(url.into());
        self
    }

    /// A shorter header timeout than SPEC's 10 s, so a test need not wait for it.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = Some(timeout);
        self
    }

    /// Without the catch-all webhook endpoint every app gets by default (for tests
    /// that count endpoints and deliveries themselves).
    pub fn no_subscriber(mut self) -> Self {
        self.subscriber = false;
        self
    }

    pub async fn start(self) -> TestApp {
        let agent = match self.agent {
            Some(a) => a,
            None => FakeAgent::start().await,
        };
        let (dir, db_url) = match self.db_url {
            Some(url) => (None, url),
            None => {
                let (dir, url) = db::sqlite_file_url().await;
                (Some(dir), url)
            }
        };
        let agent_url = agent.url();
        let mut vars: Vec<(&str, &str)> = vec![
            ("HTTP_BIND", "127.0.0.1:0"),
            ("DATABASE_URL", &db_url),
            ("AGENT_URL", &agent_url),
            ("AGENT_TIMEOUT_SECS", "5"),
            ("BRIDGE_API_TOKEN", TOKEN),
            ("WEBHOOK_RETRY_SCHEDULE", "10ms,20ms"),
            ("RUST_LOG", "warn"),
        ];
        vars.extend(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let cfg = config(&vars);
        let mut app = App::build(cfg).await.expect("app builds");
        if let Some(timeout) = self.header_timeout {
            app = app.with_header_timeout(timeout);
        }
        let addr = app.addr();
        if self.subscriber {
            subscribe_everything(&db_url).await;
        }
        let relay = app.relay().clone();
        // Tests run against the steady state: new conversations known to be new.
        for _ in 0..500 {
            if relay.preloaded() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(relay.preloaded(), "conversation keys preloaded");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(
            app.with_shutdown_grace(Duration::from_secs(5))
                .run(shutdown.clone()),
        );
        TestApp {
            addr,
            base: format!("http://{addr}"),
            relay,
            agent,
            db_url,
            client: reqwest::Client::new(),
            shutdown,
            server,
            _dir: dir,
        }
    }
}

impl TestApp {
    pub fn builder() -> Spawn {
        Spawn {
            vars: vec![],
            agent: None,
            db_url: None,
            subscriber: true,
            header_timeout: None,
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An admin request with the right token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    /// Sends one message to a conversation and waits for its turn to end.
    pub async fn turn(&self, channel: &str, text: &str, sink: &Arc<RecordingSink>) -> TurnOutcome {
        let handle = self
            .relay
            .submit(msg(channel, text), sink.clone())
            .expect("turn accepted");
        tokio::time::timeout(Duration::from_secs(20), handle.outcome())
            .await
            .expect("turn ends in time")
    }

    /// Cancels the app and asserts it stops cleanly within a bound.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.server)
            .await
            .expect("app stops within 15 s")
            .expect("app task did not panic");
        result.expect("app run returned Ok");
    }
}

/// Opens a second core on the same database, as a restarted process would.
pub async fn core_on(db_url: &str, agent_url: &str) -> Core {
    let cfg = config(&[
        ("DATABASE_URL", db_url),
        ("AGENT_URL", agent_url),
        ("HTTP_BIND", "127.0.0.1:0"),
    ]);
    Core::open(&cfg, None).await.expect("core opens")
}

static MESSAGE_IDS: AtomicU64 = AtomicU64::new(1);

/// A Slack-like message from user U1 in workspace T1.
pub fn msg(channel: &str, text: &str) -> Inbound {
    Inbound {
        platform: Platform::Slack,
        workspace: "T1".into(),
        channel: channel.into(),
        thread: None,
        user: "U1".into(),
        message_id: format!("m{}", MESSAGE_IDS.fetch_add(1, Ordering::Relaxed)),
        text: text.into(),
    }
}

/// A `ChatSink` that records what the relay does with it, in order.
#[derive(Default)]
pub struct RecordingSink {
    /// `working`, `send:<text>`, `finished`, in call order.
    calls: Mutex<Vec<String>>,
    changed: Notify,
    /// When set, `send` fails with this error.
    pub fail_with: Mutex<Option<String>>,
}

impl RecordingSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// The texts sent, in order.
    pub fn texts(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| c.strip_prefix("send:").map(str::to_string))
            .collect()
    }

    pub async fn wait_texts(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            let texts = self.texts();
            if texts.len() >= n {
                return texts;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("expected {n} replies within {within:?}, got {texts:?}");
            }
        }
    }

    fn push(&self, call: String) {
        self.calls.lock().unwrap().push(call);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl ChatSink for RecordingSink {
    async fn working(&self) {
        self.push("working".into());
    }

    async fn finished(&self) {
        self.push("finished".into());
    }

    async fn send(&self, text: &str) -> Result<Vec<String>, SinkError> {
        self.push(format!("send:{text}"));
        match self.fail_with.lock().unwrap().clone() {
            Some(e) => Err(SinkError(e.into())),
            None => Ok(vec![format!(
                "posted-{}",
                MESSAGE_IDS.fetch_add(1, Ordering::Relaxed)
            )]),
        }
    }
}

/// Bodies of the stored webhook events of one type, oldest first.
/// Registers an endpoint subscribed to `*` straight in the store: the bridge stores
/// an event only when some endpoint subscribes to it, and tests read the stored events
/// (`stored_events`). The URL is the dead port, so deliveries simply fail.
pub async fn subscribe_everything(db_url: &str) {
    let store = agent_bridge::store::connect(db_url)
        .await
        .expect("open store");
    let id = format!("ep_test_{}", uuid::Uuid::new_v4().simple());
    store
        .execute_raw(&format!(
            "INSERT INTO webhook_endpoints (id, url, secret, created_at) \
             VALUES ('{id}', 'http://127.0.0.1:1/events', 'whsec_dGVzdA==', 0); \
             INSERT INTO webhook_subscriptions (endpoint_id, event_type) VALUES ('{id}', '*');"
        ))
        .await
        .expect("catch-all endpoint");
}

pub async fn stored_events(db_url: &str, kind: &str) -> Vec<serde_json::Value> {
    use agent_bridge::store::Pool;
    let store = agent_bridge::store::connect(db_url)
        .await
        .expect("open store");
    let sql = "SELECT body FROM webhook_events WHERE type = $1 ORDER BY created_at, id";
    let rows: Vec<String> = match store.pool() {
        Pool::Sqlite(p) => sqlx::query_scalar(sql).bind(kind).fetch_all(p).await,
        Pool::Postgres(p) => sqlx::query_scalar(sql).bind(kind).fetch_all(p).await,
    }
    .expect("read events");
    rows.iter()
        .map(|b| serde_json::from_str(b).expect("event body is JSON"))
        .collect()
}
