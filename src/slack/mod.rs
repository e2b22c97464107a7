//! Slack: events over Socket Mode (`SLACK_APP_TOKEN`) and/or the Events API receiver at
//! `POST /slack/events` (`SLACK_SIGNING_SECRET`), and replies through the Web API
//! (slack-morphism), in the thread of the message they answer.
//!
//! # Layout
//!
//! - `events`: the HTTP handler — limit, verify, parse — and `accept`, the intake both
//!   transports share: filter, dedupe, hand off.
//! - `socket`: Socket Mode connections — open, acknowledge, refresh, reconnect.
//! - `interactivity`: clicks (`block_actions`) from `POST /slack/interactivity` and
//!   `interactive` envelopes — the feedback buttons.
//! - `assistant`: the bot's DM as Slack's assistant surface — suggested prompts,
//!   thread titles.
//! - `signature`: Slack's v0 request signature (pure).
//! - `dedupe`: once-only deliveries and followed threads, decided by the store.
//! - `mrkdwn`: agent Markdown → Slack mrkdwn with everything Slack could expand
//!   escaped (pure).
//! - `web_api`: `auth.test`, `chat.postMessage`, `reactions.*` with 429 handling, and
//!   the `ChatSink` that answers in a thread.
//!
//! Slack never blocks the rest of the bridge: [`start`] tries `auth.test` once and then
//! keeps retrying in the background; until it succeeds `/readyz` shows Slack down,
//! events are answered 503 so Slack delivers them again later, and no socket is opened. This module depends on
//! `core` (relay, store port, chunking) and its SDK, never on another platform.

pub mod assistant;
pub mod dedupe;
pub mod events;
pub mod interactivity;
pub mod mrkdwn;
pub mod signature;
pub mod socket;
pub mod web_api;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::Router;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::config::{SlackConfig, SlackProgress, SlackRespondTo, SlackStreaming, SocketModeConfig};
use crate::core::error::Detail;
use crate::core::message::Platform;
use crate::core::ports::{Journal, Sightings};
use crate::core::ports::{JournalTurn, Resume, Resumed};
use crate::core::retry::Backoff;
use crate::core::Relay;

use self::dedupe::{AnsweredThreads, Dedupe};
use self::web_api::{Identity, WebApi};

/// Events API request bodies above this are refused with 413 (SPEC §6).
pub const EVENTS_BODY_LIMIT: usize = 1024 * 1024;

/// How long start-up waits for the first `auth.test` before moving on and retrying
/// in the background.
const FIRST_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff between `auth.test` attempts after a failure: doubling, capped.
const AUTH_RETRY_FIRST: Duration = Duration::from_secs(1);
const AUTH_RETRY_MAX: Duration = Duration::from_secs(60);

/// A started Slack integration, ready to be mounted.
pub struct SlackApp {
    shared: Arc<Shared>,
}

/// What the events handler reads; shared with the `auth.test` task.
pub(crate) struct Shared {
    /// `SLACK_SIGNING_SECRET`: `None` when Slack runs over Socket Mode only (then
    /// `/slack/events` is not mounted).
    signing_secret: Option<SecretString>,
    /// `/readyz`'s `slack`: `auth.test` succeeded and, in Socket Mode, a connection
    /// is open. Written only by [`Shared::refresh_ready`].
    ready: Arc<AtomicBool>,
    /// `/readyz`'s `slack_socket` (Socket Mode only): a connection is open.
    socket_ready: Option<Arc<AtomicBool>>,
    /// Socket Mode, once started (after the first successful `auth.test`).
    socket: OnceLock<Arc<socket::SocketMode>>,
    relay: Relay,
    /// `None` when the HTTP client could not be built (no root certificates); Slack
    /// then stays down and events get 503.
    api: Option<Arc<WebApi>>,
    /// Set once, by the first successful `auth.test`. Until then the bridge cannot
    /// recognise its own mention or messages, so events are refused with 503.
    identity: OnceLock<Identity>,
    dedupe: Dedupe,
    threads: Arc<AnsweredThreads>,
    respond_to: SlackRespondTo,
    follow_threads: bool,
    progress_reaction: Option<Arc<str>>,
    progress_reaction_delay: Duration,
    progress: SlackProgress,
    status_text: Arc<str>,
    streaming: SlackStreaming,
    /// `SLACK_APP_ID`: events for another app are ignored.
    app_id: Option<String>,
    /// `SLACK_SUGGESTED_PROMPTS`.
    suggested_prompts: Vec<(String, String)>,
    /// Set when Slack refused `assistant.threads.setTitle` for the whole app.
    titles_refused: AtomicBool,
    /// Refused signatures since the last log line, and when that line was written.
    refusals: std::sync::Mutex<Refusals>,
}

/// Refused signatures are logged at most once a minute, with their count.
#[derive(Default)]
pub(crate) struct Refusals {
    pub(crate) unlogged: u64,
    pub(crate) logged_at: Option<std::time::Instant>,
}

/// The least time between two "refused signatures" log lines.
pub(crate) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Shared {
    /// The sink of one answer, with this app's progress and streaming settings.
    pub(crate) fn thread_sink(
        &self,
        api: Arc<WebApi>,
        to: web_api::SlackReplyTo,
    ) -> web_api::ThreadSink {
        web_api::ThreadSink {
            api,
            to,
            reaction: self.progress_reaction.clone(),
            reaction_after: self.progress_reaction_delay,
            progress: self.progress,
            status_text: self.status_text.clone(),
            streaming: self.streaming,
            threads: self.threads.clone(),
            reacted: Default::default(),
        }
    }

    /// Recomputes the readiness flags from their parts: who the bridge is (from
    /// `auth.test`) and, in Socket Mode, how many connections are open.
    pub(crate) fn refresh_ready(&self) {
        let open = self
            .socket
            .get()
            .map(|s| s.open.load(Ordering::Acquire) > 0);
        if let Some(flag) = &self.socket_ready {
            flag.store(open.unwrap_or(false), Ordering::Release);
        }
        let socket_ok = self.socket_ready.is_none() || open.unwrap_or(false);
        self.ready.store(
            self.identity.get().is_some() && socket_ok,
            Ordering::Release,
        );
    }

    /// Counts a request refused for its signature in `/metrics`, and logs the refusals
    /// at most once a minute (a flood of forged requests must not flood the log).
    pub(crate) fn signature_refused(&self, reason: &str) {
        self.relay.metrics().slack_signature_refused();
        let mut refusals = crate::core::lock::lock(&self.refusals);
        refusals.unlogged += 1;
        let now = std::time::Instant::now();
        if refusals
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        warn!(
            refused = refusals.unlogged,
            last_reason = reason,
            "refused Slack requests without a valid signature"
        );
        refusals.unlogged = 0;
        refusals.logged_at = Some(now);
    }
}

/// Starts Slack: `auth.test` (retried in the background until it succeeds), then, with
/// `SLACK_APP_TOKEN`, the Socket Mode connections. `ready` is Slack's `/readyz` flag
/// and `socket_ready` Socket Mode's; `intake` stops the sockets at the start of
/// shutdown, `shutdown` the background retries. `journal` finds the threads rooted
/// at a journaled turn's message (`dedupe::AnsweredThreads`); `None` when it keeps
/// turns for less than [`dedupe::THREAD_TTL`]. Never fails start-up of the rest of
/// the bridge.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    cfg: SlackConfig,
    relay: Relay,
    store: Arc<dyn Sightings>,
    journal: Option<Arc<dyn Journal>>,
    ready: Arc<AtomicBool>,
    socket_ready: Option<Arc<AtomicBool>>,
    intake: CancellationToken,
    shutdown: CancellationToken,
) -> SlackApp {
    let api = match WebApi::new(&cfg.api_base, &cfg.bot_token) {
        Ok(api) => Some(Arc::new(api)),
        Err(e) => {
            error!(error = %e, "cannot build the Slack Web API client; Slack stays down");
            None
        }
    };
    let shared = Arc::new(Shared {
        signing_secret: cfg.signing_secret,
        ready,
        socket_ready,
        socket: OnceLock::new(),
        relay,
        api: api.clone(),
        identity: OnceLock::new(),
        dedupe: Dedupe::new(store.clone()),
        threads: Arc::new(AnsweredThreads::new(store, journal)),
        respond_to: cfg.respond_to,
        follow_threads: cfg.follow_threads,
        progress_reaction: cfg.progress_reaction.map(Arc::from),
        progress_reaction_delay: cfg.progress_reaction_delay,
        progress: cfg.progress,
        status_text: cfg.status_text.into(),
        streaming: cfg.streaming,
        app_id: cfg.app_id,
        suggested_prompts: cfg.suggested_prompts,
        titles_refused: AtomicBool::new(false),
        refusals: std::sync::Mutex::new(Refusals::default()),
    });
    let Some(api) = api else {
        return SlackApp { shared };
    };
    let on_identity = OnIdentity {
        socket: cfg.socket,
        intake,
    };

    // One attempt inline: in the common case Slack is ready before the HTTP server
    // takes its first event, so nothing is refused with 503 at start-up.
    match tokio::time::timeout(FIRST_AUTH_TIMEOUT, api.auth_test()).await {
        Ok(Ok(identity)) => authenticated(&shared, identity, on_identity),
        first => {
            match first {
                Ok(Err(e)) => warn!(
                    slack_error = e.code(),
                    error = %e,
                    "Slack auth.test failed; retrying in the background"
                ),
                _ => warn!("Slack auth.test timed out; retrying in the background"),
            }
            let task = authenticate_until_done(shared.clone(), api, on_identity, shutdown);
            tokio::spawn(task.instrument(tracing::info_span!("slack_auth")));
        }
    }
    SlackApp { shared }
}

/// What starts once the bridge knows who it is.
struct OnIdentity {
    socket: Option<SocketModeConfig>,
    intake: CancellationToken,
}

/// Retries `auth.test` (after the inline attempt failed) with a doubling backoff
/// until it succeeds or shutdown.
async fn authenticate_until_done(
    shared: Arc<Shared>,
    api: Arc<WebApi>,
    on_identity: OnIdentity,
    shutdown: CancellationToken,
) {
    let report = |e: &web_api::SlackApiError, delay: Duration| {
        warn!(
            slack_error = e.code(),
            error = %e,
            retry_in_secs = delay.as_secs(),
            "Slack auth.test failed"
        );
    };
    // The inline attempt was the first: wait, then go on at twice the wait.
    tokio::select! {
        _ = tokio::time::sleep(AUTH_RETRY_FIRST) => {}
        _ = shutdown.cancelled() => {}
    }
    let backoff = Backoff {
        first: AUTH_RETRY_FIRST * 2,
        max: AUTH_RETRY_MAX,
    };
    match backoff.retry(&shutdown, || api.auth_test(), report).await {
        Some(identity) => authenticated(&shared, identity, on_identity),
        None => info!("shutdown before Slack auth.test succeeded"),
    }
}

fn authenticated(shared: &Arc<Shared>, identity: Identity, on_identity: OnIdentity) {
    info!(
        user_id = %identity.user_id,
        bot_id = identity.bot_id.as_deref().unwrap_or("-"),
        team_id = %identity.team_id,
        "connected to Slack"
    );
    // Only this function sets it, once per start; a second value could not differ.
    let _ = shared.identity.set(identity);
    if let Some(socket) = on_identity.socket {
        // Envelopes are classified as they arrive, so the sockets open only now.
        let mode = socket::start(
            shared.clone(),
            socket.app_token,
            socket.connections,
            &on_identity.intake,
        );
        let _ = shared.socket.set(mode);
    }
    shared.refresh_ready();
    // Turns a stopped process took and never answered: now that replies can go out.
    let resume = Arc::new(SlackResume {
        shared: shared.clone(),
    });
    shared.relay.keep_recovering(Platform::Slack, resume);
}

/// Rebuilds where a journaled Slack turn's answer goes, and finds an answer that was
/// posted but not recorded (its metadata names the turn).
struct SlackResume {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl Resume for SlackResume {
    async fn resume(&self, turn: &JournalTurn) -> Resumed {
        let Some(api) = self.shared.api.clone() else {
            return Resumed::Unanswerable("no Slack client".into());
        };
        let reply: web_api::SlackReplyTo = match serde_json::from_str(&turn.reply_to) {
            Ok(reply) => reply,
            Err(e) => {
                return Resumed::Unanswerable(Detail::caused_by("unreadable reply target", e))
            }
        };
        match api
            .turn_posted(&reply.channel, &reply.thread_ts, &turn.id)
            .await
        {
            Ok(true) => return Resumed::AlreadyAnswered,
            Ok(false) => {}
            // Better a rare second answer than none.
            Err(e) => {
                warn!(error = %e, turn = %turn.id, "could not look for an earlier answer; answering")
            }
        }
        Resumed::Answer(Arc::new(self.shared.thread_sink(api, reply)))
    }
}

/// The public routes Slack needs (`POST /slack/events`), with their own state and
/// body limit, to be merged into the server's router. Every Slack route takes
/// [`events::Signed`] first: an announced body over the limit (413) or a request
/// without both signature headers (401) is refused before a byte of its body is read.
pub fn routes(app: SlackApp) -> Router {
    if app.shared.signing_secret.is_none() {
        // Socket Mode only: nothing arrives over HTTP, and nothing could be verified.
        return Router::new();
    }
    Router::new()
        .route("/slack/events", post(events::handle))
        .route("/slack/interactivity", post(interactivity::handle))
        .with_state(app.shared)
        .layer(DefaultBodyLimit::max(EVENTS_BODY_LIMIT))
}
