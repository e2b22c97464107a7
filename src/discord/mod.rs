//! Discord: the serenity gateway client, turning mentions and DMs into relay turns.
//! (Being built; see issue "Discord".)

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::DiscordConfig;
use crate::core::Relay;

/// Runs the Discord client until `shutdown` or a fatal close (bad token, disallowed
/// intents). Sets `connected` while a gateway session is up. Never panics and never
/// stops anything but Discord.
pub async fn run(
    _cfg: DiscordConfig,
    _relay: Relay,
    _connected: Arc<AtomicBool>,
    _shutdown: CancellationToken,
) {
    tracing::error!("Discord support is not built yet; DISCORD_TOKEN is ignored");
}
