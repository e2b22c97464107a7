//! The composition root: the only place that names concrete types. `App::build`
//! opens the store, picks the agent, wires the relay and binds the listener;
//! `addr()` tells tests where it listens; `run(shutdown)` serves until the token is
//! cancelled, then drains. Tests use exactly this path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentKind, Config};
use crate::core::access::AccessSettings;
use crate::core::ports::{Journal, Leases, RelayStore, Sightings, Transcripts};
use crate::core::{janitor, Agent, Relay, RelaySettings};
use crate::http::{self, AdminAuth, AppState, Readiness, RouteMounts};
use crate::store::SqlStore;
use crate::webhook::WebhookStore;
use crate::{agent, discord, slack, store, webhook};

/// How long shutdown waits for turns in flight before giving up on them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// The store, the agent and the relay: what every command (run, console) needs.
pub struct Core {
    /// The one store; each consumer is handed only the role it uses (`core::ports`,
    /// `webhook::WebhookStore`).
    pub store: Arc<SqlStore>,
    /// Seals webhook secrets at rest (`BRIDGE_SECRET_KEY`).
    pub sealer: Arc<webhook::Sealer>,
    pub relay: Relay,
}

impl Core {
    /// Opens the store (running migrations) and builds the relay. `agent_kind`
    /// overrides `AGENT_KIND` (the console's `--agent echo`).
    pub async fn open(cfg: &Config, agent_kind: Option<AgentKind>) -> anyhow::Result<Core> {
        use secrecy::ExposeSecret;
        let sql = store::connect(cfg.store.url.expose_secret())
            .await
            .context("open the store at DATABASE_URL")?;
        sql.migrate().await.context("apply store migrations")?;
        let store = Arc::new(sql);
        let sealer = Arc::new(webhook::Sealer::from_key(cfg.webhooks.secret_key.as_ref()));
        webhook::seal::prepare(&*store, &sealer)
            .await
            .context("check the webhook secrets in the store against BRIDGE_SECRET_KEY")?;
        let mut agent_cfg = cfg.agent.clone();
        if let Some(kind) = agent_kind {
            agent_cfg.kind = kind;
        }
        let agent: Arc<dyn Agent> =
            agent::from_config(&agent_cfg).context("set up the agent client")?;
        let settings = RelaySettings {
            scope: cfg.conversation.scope,
            error_reply: cfg.conversation.error_reply.clone(),
            default_personality: cfg.agent.personality.clone(),
            max_results: cfg.agent.max_results,
            max_concurrency: cfg.agent.max_concurrency,
            queue_capacity: RelaySettings::queue_for(cfg.agent.max_concurrency),
            edit_interval: cfg.conversation.edit_interval,
            max_reply_messages: cfg.conversation.max_reply_messages,
            feedback_buttons: cfg.conversation.feedback_buttons,
            recovery_window: cfg.conversation.recovery_window,
            history_turns: cfg.agent.history_turns,
            history_chars: cfg.agent.history_chars,
            access: AccessSettings {
                allowed_channels: cfg.conversation.allowed_channels.clone(),
                blocked_users: cfg.conversation.blocked_users.clone(),
                user_rate_limit: cfg.conversation.user_rate_limit.map(|r| (r.turns, r.per)),
            },
        };
        let ports = RelayStore {
            conversations: store.clone(),
            transcripts: store.clone(),
            turns: store.clone(),
            journal: store.clone(),
        };
        let relay = Relay::new(agent, ports, settings);
        relay.set_feedback_store(store.clone());
        let preloading = relay.clone();
        tokio::spawn(async move { preloading.preload().await });
        Ok(Core {
            store,
            sealer,
            relay,
        })
    }
}

pub struct App {
    cfg: Config,
    core: Core,
    listener: TcpListener,
    addr: SocketAddr,
    readiness: Readiness,
    shutdown_grace: Duration,
    /// SPEC §6: 10 s; shorter only in tests (`with_header_timeout`).
    header_timeout: Duration,
    /// Delivers the outbox; spawned by `run`.
    webhook_worker: webhook::Worker,
}

impl App {
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        let core = Core::open(&cfg, None).await?;
        let listener = TcpListener::bind(cfg.http.bind)
            .await
            .with_context(|| format!("bind HTTP_BIND {}", cfg.http.bind))?;
        let addr = listener.local_addr().context("read the bound address")?;
        let webhook_worker = webhook::Worker::new(
            core.store.clone(),
            webhook::WorkerSettings::from_config(&cfg.webhooks),
            core.relay.metrics().clone(),
        )
        .context("set up the webhook delivery worker")?;
        Ok(App {
            cfg,
            core,
            listener,
            addr,
            readiness: Readiness::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            header_timeout: http::serve::HEADER_TIMEOUT,
            webhook_worker,
        })
    }

    /// Where the HTTP server listens (the real port when `HTTP_BIND` asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn relay(&self) -> &Relay {
        &self.core.relay
    }

    /// How long shutdown waits for turns in flight.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long a client may take to send a request's headers (SPEC §6: 10 s, the
    /// default); tests shorten it so they need not wait.
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Serves until `shutdown` is cancelled, then stops intake (`/readyz` 503, new
    /// turns refused), waits up to the grace period for turns in flight, and stops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        use secrecy::ExposeSecret;
        let App {
            cfg,
            core,
            listener,
            addr,
            readiness,
            shutdown_grace,
            header_timeout,
            webhook_worker,
        } = self;
        let relay = core.relay.clone();
        let tasks = TaskTracker::new();
        // Cancelled by hand after the drain (not a child of `shutdown`, which would
        // cancel it at once): the webhook worker and the janitor keep going while turns
        // in flight finish and emit their events.
        let background = CancellationToken::new();

        // The worker keeps delivering while turns drain; it stops with `background`.
        let webhook_wake = webhook_worker.waker();
        let flush_wake = webhook_worker.waker();
        tasks.spawn(webhook_worker.run(background.clone()));
        // Async queries a stopped process answered 202 and never recorded.
        tokio::spawn(http::agent_query::recover(core.relay.clone()));
        let backlog_store: Arc<dyn WebhookStore> = core.store.clone();
        readiness.register_gauge(
            "bridge_webhook_outbox_backlog",
            "Webhook deliveries waiting to be delivered (pending).",
            Arc::new(move || {
                let store = backlog_store.clone();
                Box::pin(async move { store.outbox_backlog().await.unwrap_or(0) })
            }),
        );

        let outbox = webhook::OutboxSweep {
            store: core.store.clone(),
            retention: cfg.webhooks.retention,
        };
        tasks.spawn(janitor::run(
            core.store.clone() as Arc<dyn Transcripts>,
            core.store.clone() as Arc<dyn Sightings>,
            cfg.conversation.transcript_retention,
            vec![Arc::new(outbox)],
            background.clone(),
        ));

        if cfg.http.api_token.is_none() {
            tracing::warn!(
                "BRIDGE_API_TOKEN is not set: the admin API answers loopback clients only"
            );
        }
        tracing::info!(
            http = %addr,
            agent = %crate::config::redact_url(cfg.agent.url.as_str()),
            store = %crate::config::redact_url(cfg.store.url.expose_secret()),
            agent_kind = ?cfg.agent.kind,
            discord = cfg.discord.is_some(),
            slack = cfg.slack.is_some(),
            slack_events_api = cfg.slack.as_ref().is_some_and(|s| s.signing_secret.is_some()),
            slack_socket_mode = cfg.slack.as_ref().is_some_and(|s| s.socket.is_some()),
            "agent-bridge listening"
        );

        let mut mounts = RouteMounts::default();
        mounts.admin = mounts
            .admin
            .merge(http::webhooks::routes(webhook::WebhookService::new(
                core.store.clone(),
                core.sealer.clone(),
                cfg.webhooks.allow_private_targets,
                Some(webhook_wake),
            )));
        if let Some(slack_cfg) = cfg.slack.clone() {
            let ready = readiness.register("slack");
            let socket_ready = slack_cfg
                .socket
                .as_ref()
                .map(|_| readiness.register("slack_socket"));
            // The sockets take the top token, like Discord's gateway: intake stops as
            // soon as shutdown begins, while replies in flight still go out.
            // A thread the bot opened under a message is found by that message's
            // journal row, as long as the journal keeps it (transcripts' retention).
            let journal = (cfg.conversation.transcript_retention >= slack::dedupe::THREAD_TTL)
                .then(|| core.store.clone() as Arc<dyn Journal>);
            let slack_app = slack::start(
                slack_cfg,
                relay.clone(),
                core.store.clone(),
                journal,
                ready,
                socket_ready,
                shutdown.clone(),
                background.clone(),
            )
            .await;
            mounts.public = mounts.public.merge(slack::routes(slack_app));
        }
        if let Some(discord_cfg) = cfg.discord.clone() {
            let connected = readiness.register("discord");
            // Discord gets the top token: its gateway closes as soon as shutdown begins
            // (intake stops), while replies in flight still go out over REST.
            tasks.spawn(discord::run(
                discord_cfg,
                relay.clone(),
                core.store.clone() as Arc<dyn Leases>,
                connected,
                shutdown.clone(),
            ));
        }

        let state = AppState {
            relay: relay.clone(),
            conversations: core.store.clone(),
            transcripts: core.store.clone(),
            readiness: readiness.clone(),
            default_personality: cfg.agent.personality.clone(),
            default_max_results: cfg.agent.max_results,
        };
        let router = http::router(state, AdminAuth::new(cfg.http.api_token.clone()), mounts);
        let stop_serving = CancellationToken::new();
        let limits = http::serve::ServeLimits {
            header_timeout,
            request_timeout: cfg.http.request_timeout,
            max_connections: cfg.http.max_connections,
        };
        let mut server = tokio::spawn(http::serve::serve(
            listener,
            router,
            limits,
            stop_serving.clone(),
        ));

        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = &mut server => {
                // The server waits out accept errors; it only ends early if its task
                // panicked. Report that as fatal.
                background.cancel();
                return match result {
                    Ok(()) => Err(anyhow::anyhow!("HTTP server stopped unexpectedly")),
                    Err(e) => Err(e).context("HTTP server task failed"),
                };
            }
        }

        // Intake stops first while the server still answers, so load balancers see
        // /readyz turn 503 and Slack's retries go elsewhere.
        readiness.set_draining();
        relay.close();
        let drained = relay.drain(shutdown_grace).await;
        if drained {
            tracing::info!("all turns in flight finished");
        } else {
            tracing::warn!(
                pending = relay.pending_turns(),
                "shutdown grace elapsed with turns still running"
            );
        }
        flush_outbox(&*core.store, &flush_wake).await;
        background.cancel();
        stop_serving.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open after 5 s; closing them");
            server.abort();
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        tracing::info!("agent-bridge stopped");
        Ok(())
    }
}

/// How long shutdown waits at most for the outbox to empty after the last turns, and
/// how long it waits without progress (a hanging or failing endpoint) before leaving
/// the rest for the next start.
const FLUSH_BOUND: Duration = Duration::from_secs(3);
const FLUSH_STALL: Duration = Duration::from_millis(250);

/// Gives the webhook worker a bounded moment to deliver what the last turns emitted.
async fn flush_outbox(store: &dyn WebhookStore, wake: &tokio::sync::Notify) {
    let started = tokio::time::Instant::now();
    let mut last = u64::MAX;
    let mut progress = started;
    loop {
        wake.notify_one();
        let pending = match store.outbox_backlog().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the outbox before stopping");
                return;
            }
        };
        if pending == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        if pending < last {
            last = pending;
            progress = now;
        }
        if now - started >= FLUSH_BOUND || now - progress >= FLUSH_STALL {
            tracing::info!(pending, "webhook deliveries left for the next start");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
