//! `agent-bridge check`: validates the configuration (already done by loading it) and
//! reaches each configured part — the store, the agent's `/health`, Slack's
//! `auth.test`, Discord's `/users/@me` — printing one line each. Deliberately plain
//! HTTP calls rather than the platform SDKs: a check must say *what* is wrong in
//! words an operator can act on, and must not connect a gateway.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::{Config, DiscordConfig, SlackConfig, SocketModeConfig};
use crate::{agent, store};

/// Discord permissions the bot needs: View Channels, Send Messages, Send Messages in
/// Threads, Create Public Threads, Read Message History.
pub const DISCORD_PERMISSIONS: u64 = (1 << 10) | (1 << 11) | (1 << 38) | (1 << 35) | (1 << 16);

/// The Slack scopes the bridge uses (see `deploy/slack-app-manifest.yml`).
pub const SLACK_SCOPES: [&str; 8] = [
    "app_mentions:read",
    // assistant.threads.setSuggestedPrompts / setTitle (setStatus needs only chat:write).
    "assistant:write",
    "chat:write",
    "reactions:write",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
];

/// The Slack event subscriptions the bridge handles: mentions, DMs, and channel
/// messages (for `SLACK_RESPOND_TO=all` and threads it follows), and the bot's DM
/// opened (suggested prompts).
pub const SLACK_EVENTS: [&str; 7] = [
    "app_home_opened",
    "app_mention",
    "assistant_thread_started",
    "message.channels",
    "message.groups",
    "message.im",
    "message.mpim",
];

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub part: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{status} {:<8} {}", self.part, self.detail)
    }
}

/// Every detail goes through `redact_url`: a check's error may quote a URL with its
/// credentials (AGENT_URL, DATABASE_URL, …).
fn line(part: &'static str, result: Result<String, String>) -> Line {
    let result = result
        .map(|d| crate::config::redact_url(&d))
        .map_err(|d| crate::config::redact_url(&d));
    match result {
        Ok(detail) => Line {
            part,
            ok: true,
            detail,
        },
        Err(detail) => Line {
            part,
            ok: false,
            detail,
        },
    }
}

/// Runs every check; the caller prints the lines and exits non-zero if any failed.
pub async fn run(cfg: &Config) -> Vec<Line> {
    let mut lines = vec![Line {
        part: "config",
        ok: true,
        detail: "every variable parsed".into(),
    }];
    lines.push(line("store", check_store(cfg).await));
    lines.push(line("agent", check_agent(cfg).await));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build();
    let http = match http {
        Ok(http) => http,
        Err(e) => {
            lines.push(Line {
                part: "http",
                ok: false,
                detail: format!("cannot build an HTTP client: {e}"),
            });
            return lines;
        }
    };
    match &cfg.slack {
        Some(slack) => {
            lines.push(line("slack", check_slack(&http, slack).await));
            if let Some(socket) = &slack.socket {
                lines.push(line(
                    "socket",
                    check_socket_mode(&http, slack, socket).await,
                ));
            }
        }
        None => lines.push(Line {
            part: "slack",
            ok: true,
            detail: "disabled (SLACK_BOT_TOKEN unset, or neither SLACK_APP_TOKEN nor \
                     SLACK_SIGNING_SECRET set)"
                .into(),
        }),
    }
    match &cfg.discord {
        Some(discord) => lines.push(line("discord", check_discord(&http, discord).await)),
        None => lines.push(Line {
            part: "discord",
            ok: true,
            detail: "disabled (DISCORD_TOKEN unset)".into(),
        }),
    }
    lines
}

/// `agent-bridge healthcheck` (the container's HEALTHCHECK): `GET /healthz` on the
/// local server, so the runtime image needs no curl.
pub async fn liveness(cfg: &Config) -> Result<(), String> {
    let bind = cfg.http.bind;
    let host = if bind.ip().is_unspecified() {
        match bind {
            std::net::SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        bind.ip()
    };
    let url = format!(
        "http://{}/healthz",
        std::net::SocketAddr::new(host, bind.port())
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", short(&e)))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", resp.status()))
    }
}

async fn check_store(cfg: &Config) -> Result<String, String> {
    use crate::core::ports::Conversations;
    let sql = store::connect(cfg.store.url.expose_secret())
        .await
        .map_err(|e| e.to_string())?;
    sql.ping().await.map_err(|e| e.to_string())?;
    Ok(format!("{} reachable", sql.backend()))
}

async fn check_agent(cfg: &Config) -> Result<String, String> {
    let agent = agent::from_config(&cfg.agent).map_err(|e| e.to_string())?;
    // The OpenAI-compatible backend is healthy when `GET /models` answers 2xx.
    let target = match &cfg.agent.openai {
        Some(openai) => format!(
            "{}/models (model {})",
            openai.base_url.as_str().trim_end_matches('/'),
            openai.model
        ),
        None => cfg.agent.url.to_string(),
    };
    let target = crate::config::redact_url(&target);
    agent
        .health()
        .await
        .map_err(|e| format!("{target} — {e}"))?;
    Ok(format!("{target} healthy"))
}

async fn check_slack(http: &reqwest::Client, slack: &SlackConfig) -> Result<String, String> {
    let url = format!(
        "{}/auth.test",
        slack.api_base.as_str().trim_end_matches('/')
    );
    let resp = http
        .post(&url)
        .bearer_auth(slack.bot_token.expose_secret())
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", short(&e)))?;
    let scopes = resp
        .headers()
        .get("x-oauth-scopes")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        });
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("auth.test answered non-JSON: {}", short(&e)))?;
    if body["ok"] != Value::Bool(true) {
        let error = body["error"].as_str().unwrap_or("unknown error");
        return Err(format!("auth.test failed: {error} (check SLACK_BOT_TOKEN)"));
    }
    let mut detail = format!(
        "authenticated as {} ({}) in team {}",
        body["user"].as_str().unwrap_or("?"),
        body["user_id"].as_str().unwrap_or("?"),
        body["team"]
            .as_str()
            .or(body["team_id"].as_str())
            .unwrap_or("?"),
    );
    if let Some(scopes) = scopes {
        let missing: Vec<_> = SLACK_SCOPES
            .iter()
            .filter(|s| !scopes.iter().any(|have| have == *s))
            .collect();
        if !missing.is_empty() {
            let missing: Vec<_> = missing.iter().map(|s| s.to_string()).collect();
            return Err(format!(
                "{detail}, but the token lacks scopes: {}",
                missing.join(", ")
            ));
        }
        detail.push_str(", all scopes granted");
    }
    Ok(detail)
}

/// Socket Mode: `apps.connections.open` with the app token must answer a WebSocket
/// URL. The check does not connect to it (a connection would take events from the
/// running bridge).
async fn check_socket_mode(
    http: &reqwest::Client,
    slack: &SlackConfig,
    socket: &SocketModeConfig,
) -> Result<String, String> {
    let url = format!(
        "{}/apps.connections.open",
        slack.api_base.as_str().trim_end_matches('/')
    );
    let resp = http
        .post(&url)
        .bearer_auth(socket.app_token.expose_secret())
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", short(&e)))?;
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("apps.connections.open answered non-JSON: {}", short(&e)))?;
    if body["ok"] != Value::Bool(true) {
        let error = body["error"].as_str().unwrap_or("unknown error");
        return Err(format!(
            "Socket Mode: apps.connections.open failed: {error} (check SLACK_APP_TOKEN: an \
             App-Level Token with connections:write, and Socket Mode enabled for the app)"
        ));
    }
    let ws = body["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("wss://") || u.starts_with("ws://"));
    if !ws {
        return Err("Socket Mode: apps.connections.open answered no WebSocket URL".into());
    }
    Ok(format!(
        "Socket Mode: apps.connections.open answered a WebSocket URL; {} connection(s) \
         will be kept open",
        socket.connections
    ))
}

async fn check_discord(http: &reqwest::Client, discord: &DiscordConfig) -> Result<String, String> {
    let url = format!(
        "{}/api/v10/users/@me",
        discord.api_base.as_str().trim_end_matches('/')
    );
    let resp = http
        .get(&url)
        .header(
            "authorization",
            format!("Bot {}", discord.token.expose_secret()),
        )
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", short(&e)))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err("Discord refused DISCORD_TOKEN (401): reset the token on the Bot page of the developer portal".into());
    }
    if !resp.status().is_success() {
        return Err(format!("/users/@me answered {}", resp.status()));
    }
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("/users/@me answered non-JSON: {}", short(&e)))?;
    let id = body["id"].as_str().ok_or("/users/@me has no id")?;
    Ok(format!(
        "authenticated as {} ({id}); invite: https://discord.com/oauth2/authorize?client_id={id}&scope=bot%20applications.commands&permissions={DISCORD_PERMISSIONS}",
        body["username"].as_str().unwrap_or("?"),
    ))
}

/// reqwest's `Display` names the URL, which may carry credentials; say the kind of
/// failure only.
fn short(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection refused or unreachable"
    } else if e.is_decode() {
        "could not decode the answer"
    } else {
        "request failed"
    }
}
