//! Slack over Socket Mode (SPEC §5): the bridge dials out, so it needs no public URL.
//!
//! Each of `SLACK_SOCKET_CONNECTIONS` slots keeps one connection: `apps.connections.open`
//! with the app token (through the configurable `SLACK_API_BASE`, like every Web API
//! call) → a WebSocket to the URL it returns → Slack's `hello` → envelopes. Every
//! envelope is acknowledged (`{"envelope_id": …}`) before anything else is done with
//! it; an `events_api` payload then goes through the same pipeline as
//! `POST /slack/events` ([`events::accept`]: filter, dedupe, turn), so a redelivered
//! envelope (`retry_attempt`, or the same event on the other connection) is answered
//! once. On a `disconnect` message the slot connects its replacement first and closes
//! the old connection only when the new one has said `hello`; a dropped connection is
//! opened again with a doubling backoff. An app token Slack refuses (`invalid_auth`,
//! `not_allowed_token_type`, …) stops Socket Mode with one error line naming
//! `SLACK_APP_TOKEN`: retrying cannot fix it, and the rest of the bridge keeps running.
//!
//! slack-morphism has a Socket Mode client, and it does open connections through the
//! configured API base; it is not used because it cannot do what SPEC asks: on
//! `disconnect` it shuts the old connection down before it starts the replacement,
//! it retries a refused token forever at a fixed interval (an error line every 30 s),
//! it acknowledges an envelope only after the handler returns, it tells its caller
//! nothing when a connection opens or drops (no readiness), and it decodes events into
//! its own strict types, where the bridge's pipeline reads Slack's JSON leniently.
//!
//! Shutdown: the slots stop at the first cancel (intake stops; an envelope that
//! arrives while closing is not acknowledged, so Slack delivers it again elsewhere).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;
use socket_ws::tungstenite::Message;
use socket_ws::{MaybeTlsStream, WebSocketStream};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::events::{self, Envelope, Intake};
use super::web_api::SlackApiError;
use super::Shared;
use crate::core::error::Detail;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A replacement connection being opened beside the current one.
type Connecting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Socket, ConnectError>> + Send + 'a>>;

/// How long one connection attempt (the WebSocket handshake, then `hello`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between attempts after a failure or a drop: doubling, capped.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A connection that lived this long resets the backoff; one that drops sooner keeps
/// doubling it, so a connection that opens and dies at once cannot spin.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// The bridge pings this often; a connection silent for [`SILENT_LIMIT`] (no frame,
/// not even a pong) is taken for dead and replaced.
const PING_EVERY: Duration = Duration::from_secs(10);
const SILENT_LIMIT: Duration = Duration::from_secs(45);

/// Slack's answers to `apps.connections.open` that no retry can fix: the token is
/// wrong, revoked, not an app-level token, or lacks `connections:write`.
const FATAL_OPEN_ERRORS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "not_allowed_token_type",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "missing_scope",
];

/// What the slots share.
pub(crate) struct SocketMode {
    shared: Arc<Shared>,
    app_token: SecretString,
    /// Connections that said `hello` and are open now; `/readyz` reads it through
    /// [`Shared::refresh_ready`].
    pub(crate) open: AtomicUsize,
    /// Set by the first slot to meet a refused app token: it alone logs the error.
    refused: AtomicBool,
    /// Cancelled at shutdown, or when the app token is refused (every slot stops).
    stop: CancellationToken,
}

/// Why a connection attempt failed.
enum ConnectError {
    /// The app token is refused (Slack's error code): stop Socket Mode.
    Fatal(String),
    Retry(Detail),
}

/// How serving one connection ended.
enum Ended {
    Stopped,
    /// The connection dropped or went silent; open a new one after the backoff.
    Dropped(Detail),
    /// A `disconnect` was answered with this connection, already past `hello`.
    Replaced(Box<Socket>),
}

/// The envelope fields the bridge reads; the payload stays raw until its type is known.
#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    retry_attempt: Option<u32>,
    /// Of a `disconnect`: `refresh_requested`, `warning`, `link_disabled`.
    #[serde(default)]
    reason: Option<String>,
}

/// Starts the slots. Called once `auth.test` has told the bridge who it is, so every
/// envelope can be classified as it arrives.
pub(crate) fn start(
    shared: Arc<Shared>,
    app_token: SecretString,
    connections: usize,
    shutdown: &CancellationToken,
) -> Arc<SocketMode> {
    let mode = Arc::new(SocketMode {
        shared,
        app_token,
        open: AtomicUsize::new(0),
        refused: AtomicBool::new(false),
        stop: shutdown.child_token(),
    });
    info!(connections, "Slack Socket Mode starting");
    for slot in 0..connections {
        let span = tracing::info_span!("slack_socket", slot);
        tokio::spawn(run_slot(mode.clone()).instrument(span));
    }
    mode
}

/// Keeps one connection open until shutdown or a refused token.
async fn run_slot(mode: Arc<SocketMode>) {
    let mut backoff = BACKOFF_FIRST;
    let mut next: Option<Socket> = None;
    loop {
        if mode.stop.is_cancelled() {
            return;
        }
        let socket = match next.take() {
            Some(socket) => socket,
            None => match mode.connect().await {
                Ok(socket) => socket,
                Err(ConnectError::Fatal(code)) => {
                    mode.refuse(&code);
                    return;
                }
                Err(ConnectError::Retry(why)) => {
                    warn!(
                        error = %why,
                        retry_in_ms = millis(backoff),
                        "could not open a Slack Socket Mode connection"
                    );
                    if !mode.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        mode.opened();
        let since = Instant::now();
        let ended = mode.serve(socket).await;
        mode.closed();
        if since.elapsed() >= HEALTHY_AFTER {
            backoff = BACKOFF_FIRST;
        }
        match ended {
            Ended::Stopped => return,
            Ended::Replaced(socket) => next = Some(*socket),
            Ended::Dropped(why) => {
                warn!(
                    reason = %why,
                    retry_in_ms = millis(backoff),
                    "Slack Socket Mode connection dropped; reconnecting"
                );
                if !mode.pause(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SocketMode {
    /// Sleeps `delay`, or returns `false` at once when the slots are stopping.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    fn opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.shared.refresh_ready();
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.refresh_ready();
    }

    /// The one error line for a refused app token; every slot stops.
    fn refuse(&self, code: &str) {
        if !self.refused.swap(true, Ordering::AcqRel) {
            error!(
                slack_error = code,
                "Slack refused SLACK_APP_TOKEN for Socket Mode ({code}); Slack over Socket \
                 Mode is stopped: set an App-Level Token (xapp-…) with the connections:write \
                 scope from the app's Basic Information page, and enable Socket Mode for the app"
            );
        }
        self.stop.cancel();
    }

    /// `apps.connections.open`, the WebSocket handshake, and Slack's `hello`.
    async fn connect(&self) -> Result<Socket, ConnectError> {
        let Some(api) = self.shared.api.as_ref() else {
            return Err(ConnectError::Retry("no Web API client".into()));
        };
        let url = match api.open_socket(&self.app_token).await {
            Ok(url) => url,
            Err(SlackApiError::Api(code)) if FATAL_OPEN_ERRORS.contains(&code.as_str()) => {
                return Err(ConnectError::Fatal(code));
            }
            Err(e) => {
                return Err(ConnectError::Retry(Detail::caused_by(
                    "apps.connections.open",
                    e,
                )))
            }
        };
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            return Err(ConnectError::Retry(
                "apps.connections.open returned no WebSocket URL".into(),
            ));
        }
        let handshake = async {
            let (mut socket, _) = socket_ws::connect_async(url.as_str())
                .await
                .map_err(|e| Detail::caused_by("WebSocket handshake", e))?;
            // Slack speaks first: `hello` says the connection is ready for envelopes.
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Frame = serde_json::from_str(text.as_str())
                            .map_err(|e| Detail::caused_by("unreadable first message", e))?;
                        if frame.kind == "hello" {
                            return Ok::<Socket, Detail>(socket);
                        }
                        return Err(format!("expected hello, got {:?}", frame.kind).into());
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        return Err("closed before hello".into());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(Detail::caused_by("before hello", e)),
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(socket)) => {
                debug!("Slack Socket Mode connection open");
                Ok(socket)
            }
            Ok(Err(why)) => Err(ConnectError::Retry(why)),
            Err(_) => Err(ConnectError::Retry(
                format!("no hello within {CONNECT_TIMEOUT:?}").into(),
            )),
        }
    }

    /// Reads one connection until it ends. A `disconnect` starts the replacement
    /// beside it; envelopes keep being read (and acknowledged) on the old connection
    /// until the new one is ready.
    async fn serve(&self, mut socket: Socket) -> Ended {
        let mut replacement: Option<Connecting<'_>> = None;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ended::Stopped;
                }
                ready = async {
                    match replacement.as_mut() {
                        Some(connecting) => connecting.await,
                        None => std::future::pending().await,
                    }
                } => {
                    replacement = None;
                    match ready {
                        Ok(new) => {
                            info!("Slack Socket Mode connection refreshed");
                            let _ = socket.close(None).await;
                            return Ended::Replaced(Box::new(new));
                        }
                        Err(ConnectError::Fatal(code)) => {
                            self.refuse(&code);
                            let _ = socket.close(None).await;
                            return Ended::Stopped;
                        }
                        Err(ConnectError::Retry(why)) => {
                            // The old connection serves until Slack closes it; then the
                            // slot reconnects with its backoff.
                            warn!(error = %why, "could not open the replacement Socket Mode connection");
                        }
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() >= SILENT_LIMIT {
                        let _ = socket.close(None).await;
                        return Ended::Dropped(format!("nothing heard for {SILENT_LIMIT:?}").into());
                    }
                    if let Err(e) = socket.send(Message::Ping(Vec::new().into())).await {
                        return Ended::Dropped(Detail::caused_by("ping", e));
                    }
                }
                next = socket.next() => {
                    heard = Instant::now();
                    let text = match next {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(close))) => {
                            let why = close.map(|c| format!("closed by Slack ({} {})", u16::from(c.code), c.reason))
                                .unwrap_or_else(|| "closed by Slack".to_owned());
                            return Ended::Dropped(why.into());
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Ended::Dropped(Detail::from_error(e)),
                        None => return Ended::Dropped("connection ended".into()),
                    };
                    match self.on_text(&mut socket, text.as_str()).await {
                        Ok(Some(reason)) => {
                            info!(reason = %reason, "Slack asks to reconnect; opening the replacement first");
                            if replacement.is_none() {
                                replacement = Some(Box::pin(self.connect()));
                            }
                        }
                        Ok(None) => {}
                        Err(why) => return Ended::Dropped(why),
                    }
                }
            }
        }
    }

    /// One text frame: acknowledged first when it is an envelope, then handled.
    /// `Ok(Some(reason))` for a `disconnect`; `Err` when the acknowledgement could not
    /// be sent (the connection is gone).
    async fn on_text(&self, socket: &mut Socket, text: &str) -> Result<Option<String>, Detail> {
        let frame: Frame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                warn!(error = %e, "unreadable Socket Mode message; ignored");
                return Ok(None);
            }
        };
        if frame.kind == "disconnect" {
            return Ok(Some(frame.reason.unwrap_or_else(|| "-".to_owned())));
        }
        let Some(envelope_id) = frame.envelope_id else {
            debug!(kind = %frame.kind, "Socket Mode message without an envelope; ignored");
            return Ok(None);
        };
        if !self.shared.relay.is_accepting() {
            // Not acknowledged: Slack delivers it again, to a replica that takes work.
            debug!(kind = %frame.kind, "shutting down; leaving a Socket Mode envelope unacknowledged");
            return Ok(None);
        }
        let ack = serde_json::json!({ "envelope_id": envelope_id }).to_string();
        socket
            .send(Message::Text(ack.into()))
            .await
            .map_err(|e| Detail::caused_by("acknowledge", e))?;
        if let Some(retry) = frame.retry_attempt.filter(|n| *n > 0) {
            debug!(retry, "Slack is redelivering an envelope");
        }
        let Some(payload) = frame.payload else {
            return Ok(None);
        };
        match frame.kind.as_str() {
            "events_api" => self.on_events_api(payload.get()).await,
            "interactive" => {
                if let Err(why) = super::interactivity::on_payload(&self.shared, payload.get()) {
                    warn!(error = %why, "malformed interactive envelope");
                }
            }
            other => debug!(
                kind = other,
                "Socket Mode envelope type not handled; acknowledged"
            ),
        }
        Ok(None)
    }

    async fn on_events_api(&self, payload: &str) {
        let envelope = match Envelope::parse(payload.as_bytes()) {
            Ok(envelope) => envelope,
            Err(e) => {
                warn!(error = %e, "malformed events_api payload; acknowledged and dropped");
                return;
            }
        };
        if envelope.kind() != "event_callback" {
            debug!(
                kind = envelope.kind(),
                "events_api payload not an event_callback"
            );
            return;
        }
        match events::accept(&self.shared, envelope).await {
            Intake::Taken | Intake::Ignored => {}
            Intake::Unavailable(why) => {
                debug!(why, "Socket Mode event acknowledged but not taken");
            }
            Intake::Malformed(why) => warn!(error = %why, "malformed Socket Mode event"),
        }
    }
}
