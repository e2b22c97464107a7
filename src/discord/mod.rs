//! Discord: the serenity gateway client, turning mentions, DMs, messages in the bot's
//! threads and slash commands into relay turns, and posting the answers.
//!
//! # Layout
//!
//! - this file: [`run`] — builds the REST client (through `DISCORD_API_BASE`), asks
//!   `GET /gateway/bot` for the gateway, the shard count (`DISCORD_SHARDS=auto`) and
//!   the IDENTIFY rate, and hands the shards to `core::leases::hold_slots`; says which
//!   ends are fatal;
//! - `shards`: one serenity client per shard held, IDENTIFYs paced across replicas,
//!   and `/readyz`'s flag (every shard held connected);
//! - `handler`: the thin `EventHandler` (filter, convert, hand off to the relay);
//! - `sink`: the `ChatSink` for messages (reply | thread, typing, no pings);
//! - `slash`: slash-command registration, mapping to chat text, the interaction sink;
//! - `channels`: which channels are threads, their parents and owners;
//! - `text`: mention detection and stripping, thread names (pure).
//!
//! Deliberately absent: serenity's cache (the bridge needs only thread facts, kept in
//! `channels`), any ordering or concurrency limit (the relay's lanes own those), and a
//! reconnect loop of our own — serenity resumes or re-identifies by itself, and the
//! closes it gives up on (4004 bad token, 4013/4014 intents) must stay given up on,
//! because Discord resets a token after 1,000 IDENTIFYs a day.

mod channels;
mod handler;
mod shards;
mod sink;
mod slash;
mod text;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serenity::all::{BotGateway, GatewayError, GatewayIntents, Http, HttpBuilder, HttpError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::config::DiscordConfig;
use crate::core::leases::{hold_slots, Pacer, SlotSettings};
use crate::core::ports::Leases;
use crate::core::retry::Backoff;
use crate::core::Relay;

use self::handler::Handler;
use self::shards::{ShardBoard, ShardRunner};

/// Discord's limit on a message's content, in characters.
const MESSAGE_LIMIT: usize = 2000;

/// The REST base serenity talks to by default; any other base is a proxy (or a fake).
const DEFAULT_API_BASE: &str = "https://discord.com";

/// One REST call's limit, so a hung proxy cannot hold a turn forever.
const REST_TIMEOUT: Duration = Duration::from_secs(30);

/// Backoff bounds while Discord's REST API does not answer the gateway-URL request.
const GATEWAY_RETRY_FIRST: Duration = Duration::from_secs(1);
const GATEWAY_RETRY_MAX: Duration = Duration::from_secs(60);

/// Runs Discord until `shutdown` or a fatal close (bad token, disallowed intents):
/// the shards this replica holds — all of them on a store of its own, its share of
/// them when replicas share PostgreSQL (`leases`) — each on its own gateway
/// connection. Sets `connected` while every shard held is connected. Never panics and
/// never stops anything but Discord.
pub async fn run(
    cfg: DiscordConfig,
    relay: Relay,
    leases: Arc<dyn Leases>,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("discord");
    let board = Arc::new(ShardBoard::new(connected));
    supervise(cfg, relay, leases, board.clone(), shutdown)
        .instrument(span)
        .await;
    board.close();
}

async fn supervise(
    cfg: DiscordConfig,
    relay: Relay,
    leases: Arc<dyn Leases>,
    board: Arc<ShardBoard>,
    shutdown: CancellationToken,
) {
    let http = build_http(&cfg);
    // serenity asks for the gateway URL once, and on failure silently falls back to
    // the real gateway; with a proxy base that would be the wrong server. So wait
    // until REST answers, and make the URL it gave the one the shards use.
    let Some(gateway) = wait_for_gateway(&http, &shutdown).await else {
        return;
    };
    let total = cfg.shards.unwrap_or(gateway.shards).max(1);
    let max_concurrency = u32::try_from(gateway.session_start_limit.max_concurrency)
        .unwrap_or(1)
        .max(1);
    info!(
        shards = total,
        recommended = gateway.shards,
        max_concurrency,
        "Discord gateway found"
    );
    let intents = GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::DIRECT_MESSAGES;
    let metrics = relay.metrics().clone();
    let handler = Handler::new(relay, cfg.reply_mode, cfg.edit_interval, board.clone());
    // Stops Discord — the lease loop, and with it every shard — on shutdown or the
    // first fatal close.
    let fatal = shutdown.child_token();
    let runner = Arc::new(ShardRunner {
        cfg,
        intents,
        handler: Arc::new(handler),
        gateway_url: gateway.url,
        total,
        max_concurrency,
        pacer: Pacer::new(leases.clone(), "discord", IDENTIFY_PERIOD),
        board,
        fatal: fatal.clone(),
        running: Default::default(),
    });
    let settings = SlotSettings::new("discord", total);
    hold_slots(leases, Arc::new(runner), settings, metrics, fatal).await;
    if !shutdown.is_cancelled() {
        info!("Discord stopped; everything else keeps running");
    }
}

/// Discord allows `max_concurrency` IDENTIFYs per this period.
const IDENTIFY_PERIOD: Duration = Duration::from_secs(5);

/// The REST client: through `DISCORD_API_BASE` when it is not Discord itself. A proxy
/// owns rate limiting (and serenity only honours the proxy with its own limiter off).
fn build_http(cfg: &DiscordConfig) -> Http {
    let base = cfg.api_base.as_str().trim_end_matches('/');
    let mut builder = HttpBuilder::new(cfg.token.expose_secret());
    match reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(REST_TIMEOUT)
        .build()
    {
        Ok(client) => builder = builder.client(client),
        Err(e) => {
            warn!(error = %e, "could not build the Discord REST client with a timeout; using serenity's default")
        }
    }
    if base != DEFAULT_API_BASE {
        info!(api_base = %crate::config::redact_url(base), "Discord REST goes through DISCORD_API_BASE (client-side rate limiter off)");
        builder = builder.proxy(base).ratelimiter_disabled(true);
    }
    builder.build()
}

/// Waits until `GET /gateway/bot` answers with the gateway URL, the recommended shard
/// count and the IDENTIFY rate; `None` if shutdown came first.
async fn wait_for_gateway(http: &Http, shutdown: &CancellationToken) -> Option<BotGateway> {
    let backoff = Backoff {
        first: GATEWAY_RETRY_FIRST,
        max: GATEWAY_RETRY_MAX,
    };
    let report = |e: &serenity::Error, delay: Duration| {
        warn!(error = %describe(e), retry_in = ?delay, "Discord's REST API did not give the gateway URL; retrying");
    };
    backoff
        .retry(shutdown, || http.get_bot_gateway(), report)
        .await
}

/// The one line logged when the client gives up: what happened and what the operator
/// should do about it.
fn fatal_message(e: &serenity::Error) -> String {
    match e {
        serenity::Error::Gateway(GatewayError::DisallowedGatewayIntents) => {
            "Discord closed the gateway with 4014 (disallowed intents): enable the Message \
             Content intent in the Discord developer portal (Applications → your app → Bot → \
             Privileged Gateway Intents), then restart. Discord stays off; everything else \
             keeps running"
                .to_string()
        }
        serenity::Error::Gateway(GatewayError::InvalidAuthentication) => {
            "Discord closed the gateway with 4004 (authentication failed): DISCORD_TOKEN is \
             invalid; copy the bot token from the developer portal (Applications → your app \
             → Bot → Reset Token), then restart. Discord stays off; everything else keeps \
             running"
                .to_string()
        }
        serenity::Error::Gateway(GatewayError::InvalidGatewayIntents) => {
            "Discord closed the gateway with 4013 (invalid intents); this is a bug in the \
             bridge. Discord stays off; everything else keeps running"
                .to_string()
        }
        other => format!(
            "the Discord client stopped: {}. Discord stays off until restart; everything \
             else keeps running",
            describe(other)
        ),
    }
}

/// Discord's JSON error code of a failed REST call (e.g. 50013 Missing Permissions).
fn discord_error_code(e: &serenity::Error) -> Option<isize> {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            Some(response.error.code)
        }
        _ => None,
    }
}

/// A serenity error as one line, with Discord's own message for a failed REST call.
/// URLs are left out on purpose: interaction URLs carry the interaction's token.
fn describe(e: &serenity::Error) -> String {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => format!(
            "Discord answered {}: {} (code {})",
            response.status_code.as_u16(),
            response.error.message,
            response.error.code
        ),
        serenity::Error::Http(HttpError::Request(e)) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            match std::error::Error::source(e) {
                Some(cause) => format!("Discord request {what}: {cause}"),
                None => format!("Discord request {what}"),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_closes_tell_the_operator_what_to_fix() {
        let intents = fatal_message(&serenity::Error::Gateway(
            GatewayError::DisallowedGatewayIntents,
        ));
        assert!(intents.contains("Message Content intent"), "{intents}");
        assert!(intents.contains("developer portal"), "{intents}");
        assert!(intents.contains("Bot"), "{intents}");
        let token = fatal_message(&serenity::Error::Gateway(
            GatewayError::InvalidAuthentication,
        ));
        assert!(token.contains("DISCORD_TOKEN is invalid"), "{token}");
    }
}
