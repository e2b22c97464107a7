//! Slack: the Events API receiver at `POST /slack/events` and replies through the Web
//! API. (Being built; see issue "Slack".)

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::SlackConfig;
use crate::core::{Relay, Store};

/// A started Slack integration, ready to be mounted.
pub struct SlackApp {}

/// Starts Slack: `auth.test` (retried in the background until it succeeds; `ready`
/// is set then). Never fails start-up of the rest of the bridge.
pub async fn start(
    _cfg: SlackConfig,
    _relay: Relay,
    _store: Arc<dyn Store>,
    _ready: Arc<AtomicBool>,
    _shutdown: CancellationToken,
) -> SlackApp {
    tracing::error!("Slack support is not built yet; SLACK_BOT_TOKEN is ignored");
    SlackApp {}
}

/// The public routes Slack needs (`POST /slack/events`), with their own state and
/// body limit, to be merged into the server's router.
pub fn routes(_app: SlackApp) -> Router {
    Router::new()
}
