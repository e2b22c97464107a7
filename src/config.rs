//! Every environment variable of SPEC §2, read once and parsed into typed sub-configs.
//!
//! No other module reads the environment (`tests/tidy.rs` checks). A bad value stops
//! start-up with one line naming the variable, what is wrong and a good example.
//! Secrets are [`SecretString`]s, so `Debug` prints `[REDACTED]`.

use std::net::SocketAddr;
use std::time::Duration;

pub use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::core::error::Detail;
use crate::core::SessionScope;

#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentConfig,
    pub conversation: ConversationConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    /// `Some` when `DISCORD_TOKEN` is set.
    pub discord: Option<DiscordConfig>,
    /// `Some` when `SLACK_BOT_TOKEN` is set with `SLACK_SIGNING_SECRET` (Events API),
    /// `SLACK_APP_TOKEN` (Socket Mode), or both.
    pub slack: Option<SlackConfig>,
    pub webhooks: WebhookConfig,
    pub log: LogConfig,
    /// `TOKIO_WORKER_THREADS`: async worker threads; `None`: one per core.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    AiAgentApi,
    /// An OpenAI-compatible chat-completions server (SPEC §1.2).
    OpenAi,
    Echo,
}

#[derive(Clone)]
pub struct AgentConfig {
    /// `AGENT_URL`, default `http://127.0.0.1:5001`.
    pub url: Url,
    /// `AGENT_KIND`: `ai-agent-api` (default) or `echo`.
    pub kind: AgentKind,
    /// `AGENT_TIMEOUT_SECS`, default 60.
    pub timeout: Duration,
    /// `AGENT_MAX_CONCURRENCY`, default 64, at least 1.
    pub max_concurrency: usize,
    /// `AGENT_PERSONALITY`.
    pub personality: Option<String>,
    /// `AGENT_MAX_RESULTS`, default 3.
    pub max_results: u32,
    /// `ECHO_DELAY_MS`: pause between the echo agent's words; `None` when unset (0,
    /// or 40 ms in `console --agent echo`).
    pub echo_delay: Option<Duration>,
    /// `AGENT_HISTORY_TURNS` (20) / `AGENT_HISTORY_CHARS` (24000): the memory sent
    /// to a backend that keeps none.
    pub history_turns: usize,
    pub history_chars: usize,
    /// `Some` with `AGENT_KIND=openai`.
    pub openai: Option<OpenAiConfig>,
}

/// The OpenAI-compatible backend (SPEC §1.2).
#[derive(Clone)]
pub struct OpenAiConfig {
    /// `OPENAI_BASE_URL`, default `https://api.openai.com/v1`.
    pub base_url: Url,
    /// `OPENAI_API_KEY`; local servers need none.
    pub api_key: Option<SecretString>,
    /// `OPENAI_MODEL` (required for this kind).
    pub model: String,
    /// `AGENT_SYSTEM_PROMPT`: used when the conversation's personality has none.
    pub system_prompt: Option<String>,
    /// `PERSONALITIES_FILE`: TOML `[[personality]]` tables.
    pub personalities_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ConversationConfig {
    /// `SESSION_SCOPE`, default `channel`.
    pub scope: SessionScope,
    /// `ERROR_REPLY`.
    pub error_reply: String,
    /// `ALLOWED_CHANNELS` (empty: every channel).
    pub allowed_channels: Vec<String>,
    /// `BLOCKED_USERS`.
    pub blocked_users: Vec<String>,
    /// `USER_RATE_LIMIT`, e.g. `10/min`; `None` is off.
    pub user_rate_limit: Option<RateLimit>,
    /// `TRANSCRIPT_RETENTION_DAYS`, default 30.
    pub transcript_retention: Duration,
    /// `STREAM_EDIT_INTERVAL_MS`, default 1000.
    pub edit_interval: Duration,
    /// `MAX_REPLY_MESSAGES`, default 10.
    pub max_reply_messages: usize,
    /// `FEEDBACK_BUTTONS`, default `true`: 👍/👎 under the last message of each answer.
    pub feedback_buttons: bool,
    /// `RECOVERY_WINDOW`, default `10m`: how old a turn left unanswered by a crash or
    /// downtime may be and still be answered at the next start.
    pub recovery_window: Duration,
}

/// `N/sec|min|hour|day`: at most `turns` turns per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub turns: u32,
    pub per: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `HTTP_BIND`, default `0.0.0.0:3000`.
    pub bind: SocketAddr,
    /// `BRIDGE_API_TOKEN`; `None`: admin API for loopback clients only.
    pub api_token: Option<SecretString>,
    /// `HTTP_REQUEST_TIMEOUT_SECS`, default 30: a whole request must arrive within it.
    pub request_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`, default 1024: connections served at once.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `DATABASE_URL`, default `sqlite://agent-bridge.db`. Secret: it may hold a password.
    pub url: SecretString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscordReplyMode {
    Reply,
    Thread,
}

#[derive(Clone)]
pub struct DiscordConfig {
    /// `DISCORD_TOKEN`.
    pub token: SecretString,
    /// `DISCORD_API_BASE`, default `https://discord.com`.
    pub api_base: Url,
    /// `DISCORD_REPLY_MODE`, default `reply`.
    pub reply_mode: DiscordReplyMode,
    /// `DISCORD_EDIT_INTERVAL_MS`: overrides `STREAM_EDIT_INTERVAL_MS` on Discord.
    pub edit_interval: Option<Duration>,
    /// `DISCORD_SHARDS`: the shard count, or `None` for `auto` (the default: what
    /// `GET /gateway/bot` recommends).
    pub shards: Option<u32>,
}

/// `SLACK_STREAMING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackStreaming {
    /// `chat.startStream` / `appendStream` / `stopStream`, falling back to `Update`.
    Native,
    /// `chat.postMessage`, then `chat.update`.
    Update,
    /// One post at the end.
    Off,
}

/// `SLACK_PROGRESS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackProgress {
    /// `assistant.threads.setStatus`, the reaction when Slack refuses it.
    Status,
    Reaction,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackRespondTo {
    Mentions,
    All,
}

/// Slack over Socket Mode (SPEC §5): no public URL, the bridge dials out.
#[derive(Clone)]
pub struct SocketModeConfig {
    /// `SLACK_APP_TOKEN`: an app-level `xapp-` token with `connections:write`.
    pub app_token: SecretString,
    /// `SLACK_SOCKET_CONNECTIONS`, default 2: connections kept open at once.
    pub connections: usize,
}

impl std::fmt::Debug for SocketModeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketModeConfig")
            .field("app_token", &self.app_token)
            .field("connections", &self.connections)
            .finish()
    }
}

#[derive(Clone)]
pub struct SlackConfig {
    /// `SLACK_BOT_TOKEN`.
    pub bot_token: SecretString,
    /// `SLACK_SIGNING_SECRET`: `Some` runs the Events API at `POST /slack/events`.
    pub signing_secret: Option<SecretString>,
    /// `SLACK_APP_TOKEN` and `SLACK_SOCKET_CONNECTIONS`: `Some` runs Socket Mode.
    pub socket: Option<SocketModeConfig>,
    /// `SLACK_API_BASE`, default `https://slack.com/api`.
    pub api_base: Url,
    /// `SLACK_RESPOND_TO`, default `mentions`.
    pub respond_to: SlackRespondTo,
    /// `SLACK_FOLLOW_THREADS`, default `true`.
    pub follow_threads: bool,
    /// `SLACK_PROGRESS_REACTION`, default `eyes`; empty disables (`None`).
    pub progress_reaction: Option<String>,
    /// `SLACK_PROGRESS_REACTION_DELAY_MS`, default 500: the reaction goes on only when
    /// the agent takes longer (an instant answer needs no "working" sign, and each
    /// reaction is two Web API calls on Slack's tight `reactions.*` rate tier).
    pub progress_reaction_delay: Duration,
    /// `SLACK_STREAMING`, default `native`.
    pub streaming: SlackStreaming,
    /// `SLACK_PROGRESS`, default `status`.
    pub progress: SlackProgress,
    /// `SLACK_STATUS_TEXT`, default `is thinking…`.
    pub status_text: String,
    /// `SLACK_APP_ID`: events for another app id are acknowledged and ignored.
    pub app_id: Option<String>,
    /// `SLACK_SUGGESTED_PROMPTS`: (title, message) pairs offered when a user opens the
    /// bot's DM, at most four; empty offers none.
    pub suggested_prompts: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `WEBHOOK_RETRY_SCHEDULE`, default `5s,5m,30m,2h,5h,10h,10h`.
    pub retry_schedule: Vec<Duration>,
    /// `WEBHOOK_TIMEOUT_SECS`, default 15.
    pub timeout: Duration,
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS`, default `false`.
    pub allow_private_targets: bool,
    /// `WEBHOOK_RETENTION_DAYS`, default 30: delivered and failed events are purged
    /// after this.
    pub retention: Duration,
    /// `BRIDGE_SECRET_KEY`: when set, webhook secrets and endpoint tokens are stored
    /// encrypted with it (SPEC §8).
    pub secret_key: Option<SecretKey>,
}

/// `BRIDGE_SECRET_KEY`, decoded: 32 bytes, zeroed on drop, `[REDACTED]` in `Debug`.
pub type SecretKey = std::sync::Arc<secrecy::SecretBox<[u8; SECRET_KEY_LEN]>>;

/// AES-256: a key of 32 bytes.
pub const SECRET_KEY_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `RUST_LOG`, default `info`.
    pub filter: String,
    /// `LOG_FORMAT`, default `pretty`.
    pub format: LogFormat,
}

// `Debug` by hand for the configs that hold a URL: a URL may carry credentials
// (`http://user:password@host`), shown as `user:***@` (SPEC §6 "Secrets in URLs").
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("url", &redact_url(self.url.as_str()))
            .field("kind", &self.kind)
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("personality", &self.personality)
            .field("max_results", &self.max_results)
            .field("echo_delay", &self.echo_delay)
            .field("history_turns", &self.history_turns)
            .field("history_chars", &self.history_chars)
            .field("openai", &self.openai)
            .finish()
    }
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &redact_url(self.base_url.as_str()))
            .field("api_key", &self.api_key)
            .field("model", &self.model)
            .field("system_prompt", &self.system_prompt)
            .field("personalities_file", &self.personalities_file)
            .finish()
    }
}

impl std::fmt::Debug for DiscordConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordConfig")
            .field("token", &self.token)
            .field("api_base", &redact_url(self.api_base.as_str()))
            .field("reply_mode", &self.reply_mode)
            .field("edit_interval", &self.edit_interval)
            .field("shards", &self.shards)
            .finish()
    }
}

impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig")
            .field("bot_token", &self.bot_token)
            .field("signing_secret", &self.signing_secret)
            .field("socket", &self.socket)
            .field("api_base", &redact_url(self.api_base.as_str()))
            .field("respond_to", &self.respond_to)
            .field("follow_threads", &self.follow_threads)
            .field("progress_reaction", &self.progress_reaction)
            .field("progress_reaction_delay", &self.progress_reaction_delay)
            .field("app_id", &self.app_id)
            .field("streaming", &self.streaming)
            .field("progress", &self.progress)
            .field("status_text", &self.status_text)
            .field("suggested_prompts", &self.suggested_prompts)
            .finish()
    }
}

/// Masks the password of every URL in `text` (`scheme://user:secret@host/…` →
/// `scheme://user:***@host/…`; a user-only `scheme://token@host` → `scheme://***@host`).
/// For URLs and for messages that quote one (a client error naming its URL).
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the first `/`, `?`, `#` or whitespace.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str("***"),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A configuration error: one line naming the variable, the problem and an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(#[source] pub Detail);

impl ConfigError {
    /// An error with no underlying cause: the text is the whole line.
    fn new(text: impl Into<String>) -> Self {
        ConfigError(Detail::new(text))
    }
}

impl Config {
    /// Loads `.env` (searched from the working directory upwards, like `dotenvy::dotenv`)
    /// into the process environment without overriding variables already set, then reads
    /// the environment. A missing `.env` is fine; a malformed one is an error naming the
    /// file and line.
    pub fn from_env() -> Result<Config, ConfigError> {
        load_dotenv()?;
        Config::from_vars(|name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            // A value that is not UTF-8 is passed on mangled rather than dropped, so it
            // fails validation loudly instead of silently falling back to a default.
            Err(std::env::VarError::NotUnicode(raw)) => Some(raw.to_string_lossy().into_owned()),
        })
    }

    /// Parses and validates every SPEC §2 variable, reading them through `lookup`.
    ///
    /// Tests drive this with a map, so they never touch the process environment.
    /// Variables are checked in the order of the SPEC table and the first bad one is
    /// reported; platform variables are validated even when their platform is off, so a
    /// typo is caught before the platform is switched on.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let vars = Vars(&lookup);

        let agent = AgentConfig {
            url: http_url(&vars, "AGENT_URL", "http://127.0.0.1:5001")?,
            kind: agent_kind(&vars)?,
            timeout: Duration::from_secs(number(&vars, &AGENT_TIMEOUT_SECS)?),
            max_concurrency: to_usize(number(&vars, &AGENT_MAX_CONCURRENCY)?),
            personality: vars.get("AGENT_PERSONALITY"),
            max_results: to_u32(number(&vars, &AGENT_MAX_RESULTS)?),
            echo_delay: match vars.get(ECHO_DELAY_MS.var) {
                Some(_) => Some(Duration::from_millis(number(&vars, &ECHO_DELAY_MS)?)),
                None => None,
            },
            history_turns: to_usize(number(&vars, &AGENT_HISTORY_TURNS)?),
            history_chars: to_usize(number(&vars, &AGENT_HISTORY_CHARS)?),
            openai: None,
        };
        let openai_base_url = http_url(&vars, "OPENAI_BASE_URL", "https://api.openai.com/v1")?;
        let openai_api_key = secret(&vars, "OPENAI_API_KEY")?;
        let mut agent = agent;
        if agent.kind == AgentKind::OpenAi {
            let model = vars.get("OPENAI_MODEL").ok_or_else(|| {
                ConfigError::new(
                    "OPENAI_MODEL: not set, but AGENT_KIND=openai needs it \
                     (e.g. llama3.1 or gpt-4o-mini)",
                )
            })?;
            agent.openai = Some(OpenAiConfig {
                base_url: openai_base_url,
                api_key: openai_api_key,
                model,
                system_prompt: vars.get("AGENT_SYSTEM_PROMPT"),
                personalities_file: vars.get("PERSONALITIES_FILE").map(Into::into),
            });
        }

        let scope_value = vars.or("SESSION_SCOPE", "channel");
        let scope = SessionScope::parse(&scope_value.to_ascii_lowercase()).ok_or_else(|| {
            bad(
                "SESSION_SCOPE",
                &scope_value,
                "is not one of channel, thread, user",
                "thread",
            )
        })?;
        let error_reply = vars.or(
            "ERROR_REPLY",
            "Sorry, I encountered an error processing your request.",
        );

        let http = HttpConfig {
            bind: http_bind(&vars)?,
            api_token: admin_token(secret(&vars, "BRIDGE_API_TOKEN")?)?,
            request_timeout: Duration::from_secs(number(&vars, &HTTP_REQUEST_TIMEOUT_SECS)?),
            max_connections: to_usize(number(&vars, &HTTP_MAX_CONNECTIONS)?),
        };
        let store = StoreConfig {
            url: database_url(&vars)?,
        };

        let discord_token = secret(&vars, "DISCORD_TOKEN")?;
        let discord_api_base = http_url(&vars, "DISCORD_API_BASE", "https://discord.com")?;
        let discord_reply_mode = choice(
            &vars,
            "DISCORD_REPLY_MODE",
            "reply",
            &[
                ("reply", DiscordReplyMode::Reply),
                ("thread", DiscordReplyMode::Thread),
            ],
            "thread",
        )?;

        let discord_shards = discord_shards(&vars)?;

        let slack_bot_token = secret(&vars, "SLACK_BOT_TOKEN")?;
        let slack_signing_secret = secret(&vars, "SLACK_SIGNING_SECRET")?;
        let slack_app_token = app_token(secret(&vars, "SLACK_APP_TOKEN")?)?;
        let slack_socket_connections = to_usize(number(&vars, &SLACK_SOCKET_CONNECTIONS)?);
        let slack_api_base = http_url(&vars, "SLACK_API_BASE", "https://slack.com/api")?;
        let slack_respond_to = choice(
            &vars,
            "SLACK_RESPOND_TO",
            "mentions",
            &[
                ("mentions", SlackRespondTo::Mentions),
                ("all", SlackRespondTo::All),
            ],
            "all",
        )?;
        let slack_follow_threads = boolean(&vars, "SLACK_FOLLOW_THREADS", true)?;
        let slack_progress_reaction = progress_reaction(&vars)?;
        let slack_progress_reaction_delay =
            Duration::from_millis(number(&vars, &SLACK_PROGRESS_REACTION_DELAY_MS)?);
        let slack_app_id = vars.get("SLACK_APP_ID");

        let conversation = ConversationConfig {
            scope,
            error_reply,
            allowed_channels: list(&vars, "ALLOWED_CHANNELS"),
            blocked_users: list(&vars, "BLOCKED_USERS"),
            user_rate_limit: rate_limit(&vars)?,
            transcript_retention: Duration::from_secs(
                number(&vars, &TRANSCRIPT_RETENTION_DAYS)? * SECS_PER_DAY,
            ),
            edit_interval: Duration::from_millis(number(&vars, &STREAM_EDIT_INTERVAL_MS)?),
            max_reply_messages: to_usize(number(&vars, &MAX_REPLY_MESSAGES)?),
            feedback_buttons: boolean(&vars, "FEEDBACK_BUTTONS", true)?,
            recovery_window: recovery_window(&vars)?,
        };
        let discord_edit_interval = match vars.get(DISCORD_EDIT_INTERVAL_MS.var) {
            Some(_) => Some(Duration::from_millis(number(
                &vars,
                &DISCORD_EDIT_INTERVAL_MS,
            )?)),
            None => None,
        };
        let slack_streaming = choice(
            &vars,
            "SLACK_STREAMING",
            "native",
            &[
                ("native", SlackStreaming::Native),
                ("update", SlackStreaming::Update),
                ("off", SlackStreaming::Off),
            ],
            "update",
        )?;
        let slack_progress = choice(
            &vars,
            "SLACK_PROGRESS",
            "status",
            &[
                ("status", SlackProgress::Status),
                ("reaction", SlackProgress::Reaction),
                ("none", SlackProgress::None),
            ],
            "reaction",
        )?;
        let slack_status_text = vars.or("SLACK_STATUS_TEXT", "is thinking…");
        let slack_suggested_prompts = suggested_prompts(&vars)?;

        let webhooks = WebhookConfig {
            retry_schedule: retry_schedule(&vars)?,
            timeout: Duration::from_secs(number(&vars, &WEBHOOK_TIMEOUT_SECS)?),
            allow_private_targets: boolean(&vars, "WEBHOOK_ALLOW_PRIVATE_TARGETS", false)?,
            retention: Duration::from_secs(number(&vars, &WEBHOOK_RETENTION_DAYS)? * SECS_PER_DAY),
            secret_key: secret_key(secret(&vars, "BRIDGE_SECRET_KEY")?)?,
        };

        let log = LogConfig {
            // Handed to `EnvFilter` untouched: telemetry owns its syntax.
            filter: vars.or("RUST_LOG", "info"),
            format: choice(
                &vars,
                "LOG_FORMAT",
                "pretty",
                &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)],
                "json",
            )?,
        };

        let discord = discord_token.map(|token| DiscordConfig {
            token,
            api_base: discord_api_base,
            reply_mode: discord_reply_mode,
            edit_interval: discord_edit_interval,
            shards: discord_shards,
        });

        let socket = slack_app_token.map(|app_token| SocketModeConfig {
            app_token,
            connections: slack_socket_connections,
        });
        let slack = match slack_bot_token {
            Some(bot_token) if slack_signing_secret.is_some() || socket.is_some() => {
                Some(SlackConfig {
                    bot_token,
                    signing_secret: slack_signing_secret,
                    socket,
                    api_base: slack_api_base,
                    respond_to: slack_respond_to,
                    follow_threads: slack_follow_threads,
                    progress_reaction: slack_progress_reaction,
                    progress_reaction_delay: slack_progress_reaction_delay,
                    streaming: slack_streaming,
                    progress: slack_progress,
                    status_text: slack_status_text,
                    app_id: slack_app_id,
                    suggested_prompts: slack_suggested_prompts,
                })
            }
            None if slack_signing_secret.is_none() && socket.is_none() => None,
            // Half a Slack configuration is almost always a forgotten line, so it stops
            // start-up rather than silently running without Slack.
            Some(_) => {
                return Err(ConfigError::new(format!(
                    "SLACK_APP_TOKEN: not set, and neither is SLACK_SIGNING_SECRET, but \
                     SLACK_BOT_TOKEN is; Slack needs one of them (e.g. {SLACK_APP_TOKEN_HINT}, \
                     for Socket Mode)"
                )))
            }
            None => {
                let with = if socket.is_some() {
                    "SLACK_APP_TOKEN"
                } else {
                    "SLACK_SIGNING_SECRET"
                };
                return Err(ConfigError::new(format!(
                    "SLACK_BOT_TOKEN: not set, but {with} is; Slack needs both \
                     (e.g. {SLACK_BOT_TOKEN_HINT})"
                )));
            }
        };

        let worker_threads = match vars.get(TOKIO_WORKER_THREADS.var) {
            Some(_) => Some(to_usize(number(&vars, &TOKIO_WORKER_THREADS)?)),
            None => None,
        };

        Ok(Config {
            agent,
            conversation,
            http,
            store,
            discord,
            slack,
            webhooks,
            log,
            worker_threads,
        })
    }
}

/// Parses one duration of `WEBHOOK_RETRY_SCHEDULE`: a whole number followed by `ms`, `s`,
/// `m`, `h` or `d` (`500ms`, `5s`, `5m`, `2h`, `1d`); whitespace around and between the
/// two is tolerated. `None` when malformed or too large for a [`Duration`]. Zero is
/// accepted here; callers that need a positive delay check for it.
/// `DISCORD_SHARDS`: `auto` (the default) or a whole number of shards, 1 to 4096.
fn discord_shards(vars: &Vars<'_>) -> Result<Option<u32>, ConfigError> {
    let value = vars.or("DISCORD_SHARDS", "auto");
    if value.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    match value.parse::<u32>() {
        Ok(n @ 1..=MAX_DISCORD_SHARDS) => Ok(Some(n)),
        _ => Err(ConfigError::new(format!(
            "DISCORD_SHARDS: {value:?} is neither `auto` nor a number of shards from 1 to \
             {MAX_DISCORD_SHARDS} (e.g. auto, or 2)"
        ))),
    }
}

/// More shards than any bot is given (Discord asks for one per 1,000–2,500 guilds).
const MAX_DISCORD_SHARDS: u32 = 4096;

/// `RECOVERY_WINDOW`: a duration such as `10m` (the default), `90s` or `1h`.
fn recovery_window(vars: &Vars<'_>) -> Result<Duration, ConfigError> {
    let value = vars.or("RECOVERY_WINDOW", "10m");
    parse_duration(&value).ok_or_else(|| {
        ConfigError::new(format!(
            "RECOVERY_WINDOW: {value:?} is not a duration (e.g. 10m, 90s or 1h)"
        ))
    })
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let secs_per_unit = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => SECS_PER_DAY,
        _ => return None,
    };
    n.checked_mul(secs_per_unit).map(Duration::from_secs)
}

const SECS_PER_DAY: u64 = 24 * 60 * 60;

const SLACK_BOT_TOKEN_HINT: &str = "xoxb-… from the Slack app's OAuth & Permissions page";
const SLACK_SIGNING_SECRET_HINT: &str =
    "the Signing Secret from the Slack app's Basic Information page";
const SLACK_APP_TOKEN_HINT: &str =
    "xapp-… an App-Level Token with connections:write, from the Slack app's Basic Information page";

/// Reads variables through the caller's lookup, trimmed.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    /// The trimmed value, `None` when unset or empty: for optional variables an empty
    /// value means "use the default" (a common result of `FOO=` in `.env` or compose).
    fn get(&self, name: &str) -> Option<String> {
        self.get_raw(name).filter(|v| !v.is_empty())
    }

    /// The trimmed value, keeping an empty value as `Some("")`.
    fn get_raw(&self, name: &str) -> Option<String> {
        (self.0)(name).map(|v| v.trim().to_owned())
    }

    /// The value, or `default` when unset or empty.
    fn or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }
}

/// The one-line error for a non-secret value: `VAR: "value" <problem> (e.g. <example>)`.
/// `{:?}` quotes the value and escapes control characters, so the line stays one line.
fn bad(var: &str, value: &str, problem: &str, example: &str) -> ConfigError {
    ConfigError::new(format!("{var}: {value:?} {problem} (e.g. {example})"))
}

/// A whole-number variable with its bounds and the words for its error message.
struct Number {
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
    /// What the number counts, for "is not a number of …".
    noun: &'static str,
    example: &'static str,
}

const AGENT_TIMEOUT_SECS: Number = Number {
    var: "AGENT_TIMEOUT_SECS",
    default: 60,
    min: 1,
    // A day: anything longer is a typo, and it keeps `Instant + timeout` far from overflow.
    max: SECS_PER_DAY,
    noun: "seconds",
    example: "60",
};

const AGENT_MAX_CONCURRENCY: Number = Number {
    var: "AGENT_MAX_CONCURRENCY",
    default: 64,
    min: 1,
    max: 10_000,
    noun: "agent calls",
    example: "64",
};

const AGENT_MAX_RESULTS: Number = Number {
    var: "AGENT_MAX_RESULTS",
    default: 3,
    min: 1,
    max: u32::MAX as u64,
    noun: "results",
    example: "3",
};

const TRANSCRIPT_RETENTION_DAYS: Number = Number {
    var: "TRANSCRIPT_RETENTION_DAYS",
    default: 30,
    min: 1,
    // A century keeps `now - retention` inside the range every date type can represent.
    max: 36_500,
    noun: "days",
    example: "30",
};

const WEBHOOK_RETENTION_DAYS: Number = Number {
    var: "WEBHOOK_RETENTION_DAYS",
    default: 30,
    min: 1,
    max: 36_500,
    noun: "days",
    example: "30",
};

const SLACK_PROGRESS_REACTION_DELAY_MS: Number = Number {
    var: "SLACK_PROGRESS_REACTION_DELAY_MS",
    default: 500,
    min: 0,
    max: 60_000,
    noun: "milliseconds",
    example: "500",
};

const SLACK_SOCKET_CONNECTIONS: Number = Number {
    var: "SLACK_SOCKET_CONNECTIONS",
    default: 2,
    min: 1,
    // Slack allows at most 10 open connections per app.
    max: 10,
    noun: "connections",
    example: "2",
};

/// Read only when set; unset means one per core (tokio's default).
const TOKIO_WORKER_THREADS: Number = Number {
    var: "TOKIO_WORKER_THREADS",
    default: 1,
    min: 1,
    max: 256,
    noun: "threads",
    example: "2",
};

const ECHO_DELAY_MS: Number = Number {
    var: "ECHO_DELAY_MS",
    default: 0,
    min: 0,
    max: 60_000,
    noun: "milliseconds",
    example: "40",
};

const AGENT_HISTORY_TURNS: Number = Number {
    var: "AGENT_HISTORY_TURNS",
    default: 20,
    min: 0,
    max: 10_000,
    noun: "turns",
    example: "20",
};

const AGENT_HISTORY_CHARS: Number = Number {
    var: "AGENT_HISTORY_CHARS",
    default: 24_000,
    min: 0,
    max: 10_000_000,
    noun: "characters",
    example: "24000",
};

const STREAM_EDIT_INTERVAL_MS: Number = Number {
    var: "STREAM_EDIT_INTERVAL_MS",
    default: 1_000,
    min: 0,
    max: 60_000,
    noun: "milliseconds",
    example: "1000",
};

const DISCORD_EDIT_INTERVAL_MS: Number = Number {
    var: "DISCORD_EDIT_INTERVAL_MS",
    default: 1_000,
    min: 0,
    max: 60_000,
    noun: "milliseconds",
    example: "1000",
};

const MAX_REPLY_MESSAGES: Number = Number {
    var: "MAX_REPLY_MESSAGES",
    default: 10,
    min: 1,
    max: 1_000,
    noun: "messages",
    example: "10",
};

const HTTP_REQUEST_TIMEOUT_SECS: Number = Number {
    var: "HTTP_REQUEST_TIMEOUT_SECS",
    default: 30,
    min: 1,
    max: 3600,
    noun: "seconds",
    example: "30",
};

const HTTP_MAX_CONNECTIONS: Number = Number {
    var: "HTTP_MAX_CONNECTIONS",
    default: 1024,
    min: 1,
    max: 1_000_000,
    noun: "connections",
    example: "1024",
};

const WEBHOOK_TIMEOUT_SECS: Number = Number {
    var: "WEBHOOK_TIMEOUT_SECS",
    default: 15,
    min: 1,
    max: SECS_PER_DAY,
    noun: "seconds",
    example: "15",
};

fn number(vars: &Vars<'_>, spec: &Number) -> Result<u64, ConfigError> {
    let Some(value) = vars.get(spec.var) else {
        return Ok(spec.default);
    };
    let problem = match value.parse::<u64>() {
        Ok(n) if n < spec.min => format!("is less than {}", spec.min),
        Ok(n) if n > spec.max => format!("is more than {}", spec.max),
        Ok(n) => return Ok(n),
        // Say *why* a number is not accepted when it is one (negative, fractional, huge).
        Err(_) => match value.parse::<f64>() {
            Ok(f) if f.is_finite() && f < spec.min as f64 => {
                format!("is less than {}", spec.min)
            }
            Ok(f) if f.is_finite() && f > spec.max as f64 => {
                format!("is more than {}", spec.max)
            }
            Ok(f) if f.is_finite() && f.fract() != 0.0 => {
                format!("is not a whole number of {}", spec.noun)
            }
            _ => format!("is not a number of {}", spec.noun),
        },
    };
    Err(bad(spec.var, &value, &problem, spec.example))
}

/// `number` bounds every value well inside `usize` (≤ 1,000,000), so this never saturates.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `number` bounds every value inside `u32`, so this never saturates.
fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An http(s) URL with a host; the default doubles as the example in the error.
fn http_url(vars: &Vars<'_>, var: &str, default: &str) -> Result<Url, ConfigError> {
    let value = vars.or(var, default);
    match Url::parse(&value) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(url)
        }
        _ => Err(bad(var, &value, "is not an http(s) URL", default)),
    }
}

fn agent_kind(vars: &Vars<'_>) -> Result<AgentKind, ConfigError> {
    let value = vars.or("AGENT_KIND", "ai-agent-api");
    match value.to_ascii_lowercase().as_str() {
        "ai-agent-api" => Ok(AgentKind::AiAgentApi),
        "echo" => Ok(AgentKind::Echo),
        "openai" => Ok(AgentKind::OpenAi),
        _ => Err(bad(
            "AGENT_KIND",
            &value,
            "is not one of ai-agent-api, openai, echo",
            "ai-agent-api",
        )),
    }
}

/// An enumerated variable, matched case-insensitively against `options`.
fn choice<T: Copy>(
    vars: &Vars<'_>,
    var: &str,
    default: &str,
    options: &[(&str, T)],
    example: &str,
) -> Result<T, ConfigError> {
    let value = vars.or(var, default);
    let lower = value.to_ascii_lowercase();
    if let Some((_, t)) = options.iter().find(|(name, _)| *name == lower) {
        return Ok(*t);
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    Err(bad(
        var,
        &value,
        &format!("is not one of {}", names.join(", ")),
        example,
    ))
}

fn boolean(vars: &Vars<'_>, var: &str, default: bool) -> Result<bool, ConfigError> {
    let Some(value) = vars.get(var) else {
        return Ok(default);
    };
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(
            var,
            &value,
            "is not true or false",
            if default { "false" } else { "true" },
        )),
    }
}

fn http_bind(vars: &Vars<'_>) -> Result<SocketAddr, ConfigError> {
    let value = vars.or("HTTP_BIND", "0.0.0.0:3000");
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // `localhost:PORT` is what people type; resolving it would need DNS at config time,
    // and binding to the IPv4 loopback is what they mean.
    if let Some(port) = value
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(bad(
        "HTTP_BIND",
        &value,
        "is not an address and port",
        "0.0.0.0:3000",
    ))
}

/// `DATABASE_URL` may carry a password, so its errors never show the value.
fn database_url(vars: &Vars<'_>) -> Result<SecretString, ConfigError> {
    let value = vars.or("DATABASE_URL", "sqlite://agent-bridge.db");
    // Case-sensitive on purpose: sqlx strips the `sqlite:` prefix case-sensitively.
    if ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|scheme| value.starts_with(scheme))
    {
        Ok(SecretString::from(value))
    } else {
        Err(ConfigError::new(
            "DATABASE_URL: the scheme is not sqlite: or postgres:// \
             (e.g. sqlite://agent-bridge.db or postgres://user:password@host/db); \
             the value is not shown because it may hold a password",
        ))
    }
}

/// A secret variable: trimmed, empty means unset, never echoed in an error.
fn secret(vars: &Vars<'_>, var: &str) -> Result<Option<SecretString>, ConfigError> {
    let Some(value) = vars.get(var) else {
        return Ok(None);
    };
    // A control character inside a token (a pasted line break, say) would make every
    // HTTP header built from it invalid, far from here and with a confusing error.
    if value.chars().any(char::is_control) {
        let hint = match var {
            "DISCORD_TOKEN" => "the bot token from the Discord developer portal, Bot page",
            "SLACK_BOT_TOKEN" => SLACK_BOT_TOKEN_HINT,
            "SLACK_SIGNING_SECRET" => SLACK_SIGNING_SECRET_HINT,
            "SLACK_APP_TOKEN" => SLACK_APP_TOKEN_HINT,
            _ => "a random string such as the output of `openssl rand -hex 32`",
        };
        return Err(ConfigError::new(format!(
            "{var}: the value contains a control character such as a line break \
             (e.g. {hint}); the value is not shown because it is a secret"
        )));
    }
    Ok(Some(SecretString::from(value)))
}

/// `BRIDGE_SECRET_KEY`: 32 bytes in base64 (standard or URL-safe, padded or not). The
/// value is never shown.
fn secret_key(value: Option<SecretString>) -> Result<Option<SecretKey>, ConfigError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.expose_secret();
    let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok());
    let problem = match decoded {
        None => "is not base64".to_owned(),
        Some(bytes) => match <[u8; SECRET_KEY_LEN]>::try_from(bytes) {
            Ok(key) => {
                return Ok(Some(std::sync::Arc::new(secrecy::SecretBox::new(
                    Box::new(key),
                ))))
            }
            Err(bytes) => format!("decodes to {} bytes, not {SECRET_KEY_LEN}", bytes.len()),
        },
    };
    Err(ConfigError::new(format!(
        "BRIDGE_SECRET_KEY: the value {problem} (e.g. the output of `openssl rand -base64 32`); \
         the value is not shown because it is a secret"
    )))
}

/// SPEC §6 "Admin access": a set `BRIDGE_API_TOKEN` must be at least this long.
pub const MIN_API_TOKEN_LEN: usize = 24;

/// Refuses a `BRIDGE_API_TOKEN` that is short or a placeholder (`CHANGE-ME`,
/// `changeme`, `token`, `secret`, one repeated character): such a token guards
/// nothing. The value is never shown.
fn admin_token(token: Option<SecretString>) -> Result<Option<SecretString>, ConfigError> {
    const VAR: &str = "BRIDGE_API_TOKEN";
    const EXAMPLE: &str = "the output of `openssl rand -hex 32`";
    let Some(token) = token else {
        return Ok(None);
    };
    let value = token.expose_secret();
    let normalized: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut chars = value.chars();
    let repeated = chars.next().is_some_and(|first| chars.all(|c| c == first));
    let placeholder = repeated
        || normalized.contains("changeme")
        || ["token", "secret"].contains(&normalized.as_str());
    let problem = if placeholder {
        "is a placeholder".to_owned()
    } else if value.chars().count() < MIN_API_TOKEN_LEN {
        format!("is shorter than {MIN_API_TOKEN_LEN} characters")
    } else {
        return Ok(Some(token));
    };
    Err(ConfigError::new(format!(
        "{VAR}: the value {problem} (e.g. {EXAMPLE}); the value is not shown because it \
         is a secret"
    )))
}

/// Slack shows at most this many suggested prompts.
const MAX_SUGGESTED_PROMPTS: usize = 4;

/// `SLACK_SUGGESTED_PROMPTS`: `title=message` pairs separated by `;`.
fn suggested_prompts(vars: &Vars<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    const VAR: &str = "SLACK_SUGGESTED_PROMPTS";
    const EXAMPLE: &str = "Summarize=Summarize this thread;Explain=Explain it simply";
    let Some(value) = vars.get(VAR) else {
        return Ok(Vec::new());
    };
    let mut prompts = Vec::new();
    for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = pair
            .split_once('=')
            .map(|(t, m)| (t.trim(), m.trim()))
            .filter(|(t, m)| !t.is_empty() && !m.is_empty());
        let Some((title, message)) = parsed else {
            return Err(bad(
                VAR,
                &value,
                &format!("has {pair:?}, which is not title=message"),
                EXAMPLE,
            ));
        };
        prompts.push((title.to_owned(), message.to_owned()));
    }
    if prompts.len() > MAX_SUGGESTED_PROMPTS {
        return Err(bad(
            VAR,
            &value,
            &format!(
                "has {} prompts; Slack shows at most {MAX_SUGGESTED_PROMPTS}",
                prompts.len()
            ),
            EXAMPLE,
        ));
    }
    Ok(prompts)
}

/// `SLACK_APP_TOKEN` must be an app-level token: a bot token (`xoxb-`) pasted here is
/// the usual mistake, and Slack would refuse it with a less helpful `not_allowed_token_type`.
fn app_token(token: Option<SecretString>) -> Result<Option<SecretString>, ConfigError> {
    match token {
        Some(token) if !token.expose_secret().starts_with("xapp-") => {
            Err(ConfigError::new(format!(
            "SLACK_APP_TOKEN: the value does not start with xapp- (e.g. {SLACK_APP_TOKEN_HINT}); \
             the value is not shown because it is a secret"
        )))
        }
        other => Ok(other),
    }
}

/// Unset means `eyes`; set but empty means no reaction. Surrounding colons (`:eyes:`,
/// as people write emoji in Slack) are dropped because the Web API wants the bare name.
fn progress_reaction(vars: &Vars<'_>) -> Result<Option<String>, ConfigError> {
    let Some(value) = vars.get_raw("SLACK_PROGRESS_REACTION") else {
        return Ok(Some("eyes".to_owned()));
    };
    if value.is_empty() {
        return Ok(None);
    }
    let name = value.trim_matches(':');
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "SLACK_PROGRESS_REACTION",
            &value,
            "is not an emoji name (leave it empty to disable)",
            "eyes",
        ));
    }
    Ok(Some(name.to_owned()))
}

/// Comma-separated ids, trimmed, empty entries dropped.
fn list(vars: &Vars<'_>, var: &str) -> Vec<String> {
    vars.get(var)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn rate_limit(vars: &Vars<'_>) -> Result<Option<RateLimit>, ConfigError> {
    const VAR: &str = "USER_RATE_LIMIT";
    let Some(value) = vars.get(VAR) else {
        return Ok(None);
    };
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let malformed = || {
        bad(
            VAR,
            &value,
            "is not a rate like N/sec, N/min, N/hour, N/day or off",
            "10/min",
        )
    };
    let (count, unit) = value.split_once('/').ok_or_else(malformed)?;
    let turns: u32 = count.trim().parse().map_err(|_| malformed())?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 60 * 60,
        "d" | "day" | "days" => SECS_PER_DAY,
        _ => return Err(malformed()),
    };
    if turns == 0 {
        return Err(bad(
            VAR,
            &value,
            "allows no turns at all; use off to disable the limit",
            "10/min",
        ));
    }
    Ok(Some(RateLimit {
        turns,
        per: Duration::from_secs(secs),
    }))
}

/// SPEC §7: each delay of `WEBHOOK_RETRY_SCHEDULE` is at most 7 days.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * SECS_PER_DAY);

fn retry_schedule(vars: &Vars<'_>) -> Result<Vec<Duration>, ConfigError> {
    const VAR: &str = "WEBHOOK_RETRY_SCHEDULE";
    const EXAMPLE: &str = "5s,5m,30m,2h";
    let value = vars.or(VAR, "5s,5m,30m,2h,5h,10h,10h");
    let mut delays = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match parse_duration(entry) {
            Some(d) if d.is_zero() => {
                return Err(bad(
                    VAR,
                    entry,
                    "is zero; every delay must be positive",
                    EXAMPLE,
                ))
            }
            Some(d) if d > MAX_RETRY_DELAY => {
                return Err(bad(
                    VAR,
                    entry,
                    "is longer than 7 days; every delay must be at most 7d",
                    EXAMPLE,
                ))
            }
            Some(d) => delays.push(d),
            None => {
                return Err(bad(
                    VAR,
                    entry,
                    "is not a duration like 500ms, 5s, 5m, 2h or 1d",
                    EXAMPLE,
                ))
            }
        }
    }
    if delays.is_empty() {
        return Err(bad(VAR, &value, "has no delays", EXAMPLE));
    }
    Ok(delays)
}

/// Finds `.env` the way `dotenvy::dotenv` does (working directory, then its parents)
/// and loads it. We look the file up ourselves because dotenvy's parse error carries
/// the offending line's *text*, which may hold a secret, but neither the path nor the
/// line number we want to report instead.
fn load_dotenv() -> Result<(), ConfigError> {
    let Ok(cwd) = std::env::current_dir() else {
        return Ok(());
    };
    match cwd
        .ancestors()
        .map(|d| d.join(".env"))
        .find(|p| p.is_file())
    {
        Some(path) => load_dotenv_file(&path),
        None => Ok(()),
    }
}

fn load_dotenv_file(path: &std::path::Path) -> Result<(), ConfigError> {
    let shown = path.display();
    match dotenvy::from_path(path) {
        Ok(()) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(dotenvy::Error::LineParse(text, _)) => {
            let at = match dotenv_line_number(path, &text) {
                Some(n) => format!("line {n}"),
                None => "a line".to_owned(),
            };
            // The line itself is deliberately not shown: it may hold a secret.
            Err(ConfigError::new(format!(
                "{shown}: {at} is not KEY=VALUE (e.g. AGENT_URL=http://127.0.0.1:5001)"
            )))
        }
        Err(e) => Err(ConfigError(Detail::caused_by(
            format_args!("{shown}: cannot be read"),
            e,
        ))),
    }
}

/// The 1-based number of the first line of `path` that starts the text dotenvy
/// rejected (for a multi-line quoted value, the text spans several lines).
fn dotenv_line_number(path: &std::path::Path, rejected: &str) -> Option<usize> {
    let content = std::fs::read_to_string(path).ok()?;
    let first = rejected.lines().next()?.trim_end();
    let lines: Vec<&str> = content
        .lines()
        .map(|l| l.trim_start_matches('\u{feff}').trim_end())
        .collect();
    // An exact match first; dotenvy cuts a trailing `# comment` off, so fall back to
    // the first line that starts with the rejected text.
    lines
        .iter()
        .position(|l| *l == first)
        .or_else(|| {
            lines
                .iter()
                .position(|l| !first.is_empty() && l.starts_with(first))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|k| map.get(k).cloned())
    }

    fn ok(pairs: &[(&str, &str)]) -> Config {
        match load(pairs) {
            Ok(cfg) => cfg,
            Err(e) => panic!("{pairs:?} should load, got: {e}"),
        }
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        match load(pairs) {
            Ok(cfg) => panic!("{pairs:?} should fail, got: {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    const SECRETS: [(&str, &str); 7] = [
        ("DISCORD_TOKEN", "discord-TOKEN-b1c2d3e4f5"),
        ("SLACK_BOT_TOKEN", "xoxb-SLACKBOT-9f8e7d6c"),
        ("SLACK_SIGNING_SECRET", "SIGNING-SECRET-a1b2c3d4"),
        ("SLACK_APP_TOKEN", "xapp-APPTOKEN-5e6f7a8b"),
        ("BRIDGE_API_TOKEN", "BRIDGE-API-TOKEN-0f0e0d9c"),
        // 32 bytes: "BRIDGE-SECRET-KEY-00112233445566".
        (
            "BRIDGE_SECRET_KEY",
            "QlJJREdFLVNFQ1JFVC1LRVktMDAxMTIyMzM0NDU1NjY=",
        ),
        (
            "DATABASE_URL",
            "postgres://bridge:DBPASSWORD-77aa66bb@db.internal/bridge",
        ),
    ];

    #[test]
    fn an_empty_environment_gives_every_default() {
        let cfg = ok(&[]);

        assert_eq!(cfg.agent.url.as_str(), "http://127.0.0.1:5001/");
        assert_eq!(cfg.agent.kind, AgentKind::AiAgentApi);
        assert_eq!(cfg.agent.timeout, Duration::from_secs(60));
        assert_eq!(cfg.agent.max_concurrency, 64);
        assert_eq!(cfg.agent.personality, None);
        assert_eq!(cfg.agent.max_results, 3);
        assert_eq!(cfg.conversation.scope, SessionScope::Channel);
        assert_eq!(
            cfg.conversation.error_reply,
            "Sorry, I encountered an error processing your request."
        );
        assert!(cfg.conversation.allowed_channels.is_empty());
        assert!(cfg.conversation.blocked_users.is_empty());
        assert_eq!(cfg.conversation.user_rate_limit, None);
        assert_eq!(
            cfg.conversation.transcript_retention,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(cfg.http.bind, "0.0.0.0:3000".parse().unwrap());
        assert!(cfg.http.api_token.is_none());
        assert_eq!(cfg.http.request_timeout, Duration::from_secs(30));
        assert_eq!(cfg.http.max_connections, 1024);
        assert_eq!(cfg.store.url.expose_secret(), "sqlite://agent-bridge.db");
        assert!(cfg.discord.is_none());
        assert!(cfg.slack.is_none());
        let secs = |s: &[u64]| {
            s.iter()
                .map(|n| Duration::from_secs(*n))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cfg.webhooks.retry_schedule,
            secs(&[5, 300, 1800, 7200, 18_000, 36_000, 36_000])
        );
        assert_eq!(cfg.webhooks.timeout, Duration::from_secs(15));
        assert!(!cfg.webhooks.allow_private_targets);
        assert_eq!(cfg.webhooks.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(cfg.log.filter, "info");
        assert_eq!(cfg.log.format, LogFormat::Pretty);
    }

    /// Every SPEC §2 variable except `SLACK_PROGRESS_REACTION` (whose empty value means
    /// "off", not "default"), and the bridge's own additions.
    const OPTIONAL_VARS: [&str; 55] = [
        "AGENT_URL",
        "AGENT_KIND",
        "AGENT_TIMEOUT_SECS",
        "AGENT_MAX_CONCURRENCY",
        "AGENT_PERSONALITY",
        "AGENT_MAX_RESULTS",
        "SESSION_SCOPE",
        "ERROR_REPLY",
        "HTTP_BIND",
        "BRIDGE_API_TOKEN",
        "HTTP_REQUEST_TIMEOUT_SECS",
        "HTTP_MAX_CONNECTIONS",
        "DATABASE_URL",
        "DISCORD_TOKEN",
        "DISCORD_API_BASE",
        "DISCORD_REPLY_MODE",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_API_BASE",
        "SLACK_RESPOND_TO",
        "SLACK_FOLLOW_THREADS",
        "SLACK_PROGRESS_REACTION_DELAY_MS",
        "SLACK_APP_ID",
        "ALLOWED_CHANNELS",
        "BLOCKED_USERS",
        "USER_RATE_LIMIT",
        "TRANSCRIPT_RETENTION_DAYS",
        "WEBHOOK_RETRY_SCHEDULE",
        "WEBHOOK_TIMEOUT_SECS",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS",
        "WEBHOOK_RETENTION_DAYS",
        "BRIDGE_SECRET_KEY",
        "RUST_LOG",
        "LOG_FORMAT",
        "TOKIO_WORKER_THREADS",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_MODEL",
        "AGENT_SYSTEM_PROMPT",
        "PERSONALITIES_FILE",
        "AGENT_HISTORY_TURNS",
        "AGENT_HISTORY_CHARS",
        "ECHO_DELAY_MS",
        "STREAM_EDIT_INTERVAL_MS",
        "DISCORD_EDIT_INTERVAL_MS",
        "MAX_REPLY_MESSAGES",
        "SLACK_STREAMING",
        "SLACK_PROGRESS",
        "SLACK_STATUS_TEXT",
        "SLACK_APP_TOKEN",
        "SLACK_SOCKET_CONNECTIONS",
        "SLACK_SUGGESTED_PROMPTS",
        "FEEDBACK_BUTTONS",
        "RECOVERY_WINDOW",
        "DISCORD_SHARDS",
    ];

    #[test]
    fn empty_or_blank_optional_values_count_as_unset() {
        let pairs: Vec<(&str, &str)> = OPTIONAL_VARS.iter().map(|n| (*n, "  ")).collect();

        let cfg = ok(&pairs);

        assert_eq!(format!("{cfg:?}"), format!("{:?}", ok(&[])));
    }

    #[test]
    fn env_example_lists_every_variable_with_its_default() {
        let example = include_str!("../.env.example");
        // Uncomment every `# NAME=value` line and parse the result the way `.env` is.
        let uncommented: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once('=').is_some_and(|(k, _)| !k.contains(' ')))
            .map(|l| format!("{l}\n"))
            .collect();
        let map: HashMap<String, String> = dotenvy::from_read_iter(uncommented.as_bytes())
            .collect::<Result<_, _>>()
            .expect(".env.example parses");

        for name in OPTIONAL_VARS
            .iter()
            .chain(["SLACK_PROGRESS_REACTION"].iter())
        {
            assert!(map.contains_key(*name), "{name} missing from .env.example");
        }
        assert_eq!(map.len(), OPTIONAL_VARS.len() + 1, "{map:?}");
        let from_example = Config::from_vars(|k| map.get(k).cloned()).expect("defaults load");
        assert_eq!(format!("{from_example:?}"), format!("{:?}", ok(&[])));
    }

    #[test]
    fn every_variable_takes_a_good_value() {
        let cfg = ok(&[
            ("AGENT_URL", " https://agent.example.com:8443/base "),
            ("AGENT_KIND", "echo"),
            ("AGENT_TIMEOUT_SECS", "90"),
            ("AGENT_MAX_CONCURRENCY", "8"),
            ("TOKIO_WORKER_THREADS", "4"),
            ("AGENT_PERSONALITY", " pirate "),
            ("AGENT_MAX_RESULTS", "5"),
            ("SESSION_SCOPE", "thread"),
            ("ERROR_REPLY", "Oops."),
            ("HTTP_BIND", "127.0.0.1:8080"),
            ("BRIDGE_API_TOKEN", "admin-token-4f9c2a7e1b3d5f60"),
            ("DATABASE_URL", "sqlite::memory:"),
            ("DISCORD_TOKEN", "d-token"),
            ("DISCORD_API_BASE", "http://127.0.0.1:9001"),
            ("DISCORD_REPLY_MODE", "thread"),
            ("SLACK_BOT_TOKEN", "xoxb-1"),
            ("SLACK_SIGNING_SECRET", "s3cret"),
            ("SLACK_API_BASE", "http://127.0.0.1:9002/api"),
            ("SLACK_RESPOND_TO", "all"),
            ("SLACK_FOLLOW_THREADS", "off"),
            ("SLACK_PROGRESS_REACTION", ":hourglass:"),
            ("SLACK_PROGRESS_REACTION_DELAY_MS", "0"),
            ("ALLOWED_CHANNELS", " C1, ,C2 ,"),
            ("BLOCKED_USERS", "U1"),
            ("USER_RATE_LIMIT", "10/min"),
            ("TRANSCRIPT_RETENTION_DAYS", "7"),
            ("WEBHOOK_RETRY_SCHEDULE", " 10ms , 20ms,1s "),
            ("WEBHOOK_TIMEOUT_SECS", "3"),
            ("WEBHOOK_ALLOW_PRIVATE_TARGETS", "YES"),
            ("RUST_LOG", "agent_bridge=debug,tower_http=info"),
            ("LOG_FORMAT", "JSON"),
        ]);

        assert_eq!(
            cfg.agent.url.as_str(),
            "https://agent.example.com:8443/base"
        );
        assert_eq!(cfg.agent.kind, AgentKind::Echo);
        assert_eq!(cfg.agent.timeout, Duration::from_secs(90));
        assert_eq!(cfg.agent.max_concurrency, 8);
        assert_eq!(cfg.agent.personality.as_deref(), Some("pirate"));
        assert_eq!(cfg.agent.max_results, 5);
        assert_eq!(cfg.conversation.scope, SessionScope::Thread);
        assert_eq!(cfg.conversation.error_reply, "Oops.");
        assert_eq!(cfg.conversation.allowed_channels, ["C1", "C2"]);
        assert_eq!(cfg.conversation.blocked_users, ["U1"]);
        assert_eq!(
            cfg.conversation.user_rate_limit,
            Some(RateLimit {
                turns: 10,
                per: Duration::from_secs(60)
            })
        );
        assert_eq!(
            cfg.conversation.transcript_retention,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(cfg.http.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            cfg.http.api_token.as_ref().map(|t| t.expose_secret()),
            Some("admin-token-4f9c2a7e1b3d5f60")
        );
        assert_eq!(cfg.store.url.expose_secret(), "sqlite::memory:");
        let discord = cfg.discord.expect("discord enabled");
        assert_eq!(discord.token.expose_secret(), "d-token");
        assert_eq!(discord.api_base.as_str(), "http://127.0.0.1:9001/");
        assert_eq!(discord.reply_mode, DiscordReplyMode::Thread);
        let slack = cfg.slack.expect("slack enabled");
        assert_eq!(slack.bot_token.expose_secret(), "xoxb-1");
        assert_eq!(
            slack.signing_secret.as_ref().map(|s| s.expose_secret()),
            Some("s3cret")
        );
        assert_eq!(slack.api_base.as_str(), "http://127.0.0.1:9002/api");
        assert_eq!(slack.respond_to, SlackRespondTo::All);
        assert!(!slack.follow_threads);
        assert_eq!(slack.progress_reaction.as_deref(), Some("hourglass"));
        assert_eq!(slack.progress_reaction_delay, Duration::ZERO);
        assert_eq!(cfg.worker_threads, Some(4));
        assert_eq!(
            cfg.webhooks.retry_schedule,
            [
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_secs(1)
            ]
        );
        assert_eq!(cfg.webhooks.timeout, Duration::from_secs(3));
        assert!(cfg.webhooks.allow_private_targets);
        assert_eq!(cfg.log.filter, "agent_bridge=debug,tower_http=info");
        assert_eq!(cfg.log.format, LogFormat::Json);
    }

    #[test]
    fn alternative_good_values_are_accepted() {
        type Check = fn(&Config) -> bool;
        let cases: &[(&str, &str, Check)] = &[
            ("AGENT_KIND", "AI-Agent-API", |c| {
                c.agent.kind == AgentKind::AiAgentApi
            }),
            ("SESSION_SCOPE", "user", |c| {
                c.conversation.scope == SessionScope::User
            }),
            ("SESSION_SCOPE", "Channel", |c| {
                c.conversation.scope == SessionScope::Channel
            }),
            ("HTTP_BIND", "localhost:4000", |c| {
                c.http.bind == SocketAddr::from(([127, 0, 0, 1], 4000))
            }),
            ("HTTP_BIND", "[::1]:3000", |c| c.http.bind.is_ipv6()),
            ("HTTP_BIND", "127.0.0.1:0", |c| c.http.bind.port() == 0),
            ("DATABASE_URL", "sqlite://data/bridge.db", |c| {
                c.store.url.expose_secret() == "sqlite://data/bridge.db"
            }),
            ("DATABASE_URL", "postgresql://u@h/db", |c| {
                c.store.url.expose_secret() == "postgresql://u@h/db"
            }),
            ("USER_RATE_LIMIT", "off", |c| {
                c.conversation.user_rate_limit.is_none()
            }),
            ("USER_RATE_LIMIT", "OFF", |c| {
                c.conversation.user_rate_limit.is_none()
            }),
            ("USER_RATE_LIMIT", "3 / s", |c| {
                c.conversation.user_rate_limit
                    == Some(RateLimit {
                        turns: 3,
                        per: Duration::from_secs(1),
                    })
            }),
            ("USER_RATE_LIMIT", "100/hour", |c| {
                c.conversation.user_rate_limit
                    == Some(RateLimit {
                        turns: 100,
                        per: Duration::from_secs(3600),
                    })
            }),
            ("USER_RATE_LIMIT", "1000/d", |c| {
                c.conversation.user_rate_limit
                    == Some(RateLimit {
                        turns: 1000,
                        per: Duration::from_secs(86_400),
                    })
            }),
            ("WEBHOOK_RETRY_SCHEDULE", "1d", |c| {
                c.webhooks.retry_schedule == [Duration::from_secs(86_400)]
            }),
            ("WEBHOOK_ALLOW_PRIVATE_TARGETS", "1", |c| {
                c.webhooks.allow_private_targets
            }),
            ("WEBHOOK_ALLOW_PRIVATE_TARGETS", "On", |c| {
                c.webhooks.allow_private_targets
            }),
            ("WEBHOOK_ALLOW_PRIVATE_TARGETS", "no", |c| {
                !c.webhooks.allow_private_targets
            }),
            ("AGENT_MAX_CONCURRENCY", "10000", |c| {
                c.agent.max_concurrency == 10_000
            }),
        ];
        for (var, value, check) in cases {
            let cfg = ok(&[(var, value)]);
            assert!(check(&cfg), "{var}={value:?} gave {cfg:?}");
        }
    }

    #[test]
    fn slack_progress_reaction_is_eyes_when_unset_and_off_when_empty() {
        let slack = [("SLACK_BOT_TOKEN", "xoxb-1"), ("SLACK_SIGNING_SECRET", "s")];
        let reaction = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = slack.to_vec();
            pairs.extend_from_slice(extra);
            ok(&pairs).slack.expect("slack enabled").progress_reaction
        };

        assert_eq!(reaction(&[]).as_deref(), Some("eyes"));
        assert_eq!(reaction(&[("SLACK_PROGRESS_REACTION", "")]), None);
        assert_eq!(reaction(&[("SLACK_PROGRESS_REACTION", "  ")]), None);
        assert_eq!(
            reaction(&[("SLACK_PROGRESS_REACTION", "thumbsup::skin-tone-2")]).as_deref(),
            Some("thumbsup::skin-tone-2")
        );
    }

    #[test]
    fn discord_is_enabled_by_its_token_alone() {
        let cfg = ok(&[("DISCORD_TOKEN", "t")]);

        let discord = cfg.discord.expect("discord enabled");
        assert_eq!(discord.api_base.as_str(), "https://discord.com/");
        assert_eq!(discord.reply_mode, DiscordReplyMode::Reply);
        assert!(cfg.slack.is_none());
    }

    #[test]
    fn slack_defaults_apply_when_both_slack_variables_are_set() {
        let cfg = ok(&[("SLACK_BOT_TOKEN", "xoxb-1"), ("SLACK_SIGNING_SECRET", "s")]);

        let slack = cfg.slack.expect("slack enabled");
        assert_eq!(slack.api_base.as_str(), "https://slack.com/api");
        assert_eq!(slack.respond_to, SlackRespondTo::Mentions);
        assert!(slack.follow_threads);
        assert!(cfg.discord.is_none());
    }

    #[test]
    fn half_a_slack_configuration_names_the_missing_variable() {
        let msg = err(&[("SLACK_BOT_TOKEN", "xoxb-HALF-1234")]);
        assert!(msg.starts_with("SLACK_APP_TOKEN: not set"), "{msg}");
        assert!(msg.contains("SLACK_SIGNING_SECRET"), "{msg}");
        assert!(msg.contains("e.g."), "{msg}");
        assert!(!msg.contains("xoxb-HALF-1234"), "{msg}");

        let msg = err(&[("SLACK_SIGNING_SECRET", "HALF-SECRET-99")]);
        assert!(msg.starts_with("SLACK_BOT_TOKEN: not set"), "{msg}");
        assert!(msg.contains("e.g."), "{msg}");
        assert!(!msg.contains("HALF-SECRET-99"), "{msg}");

        // An empty value is unset, so this is half-configured too.
        let msg = err(&[("SLACK_BOT_TOKEN", "xoxb-1"), ("SLACK_SIGNING_SECRET", "")]);
        assert!(msg.starts_with("SLACK_APP_TOKEN: not set"), "{msg}");

        let msg = err(&[("SLACK_APP_TOKEN", "xapp-HALF-5678")]);
        assert!(
            msg.starts_with("SLACK_BOT_TOKEN: not set, but SLACK_APP_TOKEN is"),
            "{msg}"
        );
        assert!(!msg.contains("xapp-HALF-5678"), "{msg}");
    }

    #[test]
    fn socket_mode_needs_only_the_bot_and_app_tokens() {
        let cfg = ok(&[
            ("SLACK_BOT_TOKEN", "xoxb-1"),
            ("SLACK_APP_TOKEN", "xapp-1-A1-2"),
        ]);
        let slack = cfg.slack.expect("slack enabled");
        assert!(slack.signing_secret.is_none());
        let socket = slack.socket.expect("socket mode");
        assert_eq!(socket.app_token.expose_secret(), "xapp-1-A1-2");
        assert_eq!(socket.connections, 2);
        assert!(!format!("{socket:?}").contains("xapp-1-A1-2"));

        let both = ok(&[
            ("SLACK_BOT_TOKEN", "xoxb-1"),
            ("SLACK_APP_TOKEN", "xapp-1"),
            ("SLACK_SIGNING_SECRET", "s"),
            ("SLACK_SOCKET_CONNECTIONS", "3"),
        ]);
        let slack = both.slack.expect("slack enabled");
        assert!(slack.signing_secret.is_some());
        assert_eq!(slack.socket.map(|s| s.connections), Some(3));
    }

    #[test]
    fn suggested_prompts_are_title_message_pairs_at_most_four() {
        let base = [("SLACK_BOT_TOKEN", "xoxb-1"), ("SLACK_APP_TOKEN", "xapp-1")];
        let prompts = |value: &str| {
            let mut pairs = base.to_vec();
            pairs.push(("SLACK_SUGGESTED_PROMPTS", value));
            load(&pairs).map(|c| c.slack.expect("slack").suggested_prompts)
        };
        assert_eq!(
            prompts(" Summarize = Sum it up ; Explain=What does a=b mean?; ").unwrap(),
            vec![
                ("Summarize".to_owned(), "Sum it up".to_owned()),
                ("Explain".to_owned(), "What does a=b mean?".to_owned()),
            ]
        );
        assert!(ok(&base).slack.expect("slack").suggested_prompts.is_empty());
        let e = prompts("just a title").unwrap_err().to_string();
        assert!(
            e.starts_with("SLACK_SUGGESTED_PROMPTS:") && e.contains("title=message"),
            "{e}"
        );
        let e = prompts("a=1;b=2;c=3;d=4;e=5").unwrap_err().to_string();
        assert!(e.contains("at most 4") && e.contains("e.g."), "{e}");
    }

    #[test]
    fn a_bot_token_given_as_the_app_token_is_refused_without_showing_it() {
        let msg = err(&[
            ("SLACK_BOT_TOKEN", "xoxb-1"),
            ("SLACK_APP_TOKEN", "xoxb-WRONG-42"),
        ]);
        assert!(
            msg.starts_with("SLACK_APP_TOKEN: the value does not start with xapp-"),
            "{msg}"
        );
        assert!(!msg.contains("WRONG-42"), "{msg}");
        let msg = err(&[
            ("SLACK_BOT_TOKEN", "xoxb-1"),
            ("SLACK_APP_TOKEN", "xapp-1"),
            ("SLACK_SOCKET_CONNECTIONS", "11"),
        ]);
        assert!(
            msg.starts_with("SLACK_SOCKET_CONNECTIONS: \"11\" is more than 10"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_name_the_variable_the_problem_and_an_example() {
        // (variable, bad value, a fragment the message must contain)
        let cases: &[(&str, &str, &str)] = &[
            (
                "AGENT_URL",
                "localhost:5001",
                r#""localhost:5001" is not an http(s) URL"#,
            ),
            (
                "AGENT_URL",
                "ftp://agent",
                "is not an http(s) URL (e.g. http://127.0.0.1:5001)",
            ),
            ("AGENT_URL", "not a url", "is not an http(s) URL"),
            (
                "AGENT_KIND",
                "gpt",
                "is not one of ai-agent-api, openai, echo (e.g. ai-agent-api)",
            ),
            (
                "AGENT_TIMEOUT_SECS",
                "abc",
                r#""abc" is not a number of seconds (e.g. 60)"#,
            ),
            ("AGENT_TIMEOUT_SECS", "0", "is less than 1"),
            ("AGENT_TIMEOUT_SECS", "-3", "is less than 1"),
            (
                "AGENT_TIMEOUT_SECS",
                "1.5",
                "is not a whole number of seconds",
            ),
            (
                "AGENT_TIMEOUT_SECS",
                "99999999999999999999999",
                "is more than 86400",
            ),
            ("AGENT_MAX_CONCURRENCY", "0", "is less than 1 (e.g. 64)"),
            ("AGENT_MAX_CONCURRENCY", "10001", "is more than 10000"),
            (
                "AGENT_MAX_CONCURRENCY",
                "many",
                "is not a number of agent calls",
            ),
            ("AGENT_MAX_RESULTS", "0", "is less than 1 (e.g. 3)"),
            ("AGENT_MAX_RESULTS", "4294967296", "is more than 4294967295"),
            (
                "SESSION_SCOPE",
                "guild",
                r#""guild" is not one of channel, thread, user (e.g. thread)"#,
            ),
            (
                "HTTP_BIND",
                "3000",
                "is not an address and port (e.g. 0.0.0.0:3000)",
            ),
            ("HTTP_BIND", "localhost:99999", "is not an address and port"),
            ("HTTP_BIND", "example.com:80", "is not an address and port"),
            (
                "DATABASE_URL",
                "mysql://db/x",
                "the scheme is not sqlite: or postgres://",
            ),
            (
                "DATABASE_URL",
                "agent-bridge.db",
                "the scheme is not sqlite: or postgres://",
            ),
            (
                "DISCORD_API_BASE",
                "discord.com",
                "is not an http(s) URL (e.g. https://discord.com)",
            ),
            ("DISCORD_REPLY_MODE", "dm", "is not one of reply, thread"),
            (
                "SLACK_API_BASE",
                "ws://slack.com",
                "is not an http(s) URL (e.g. https://slack.com/api)",
            ),
            (
                "SLACK_RESPOND_TO",
                "everyone",
                "is not one of mentions, all",
            ),
            (
                "SLACK_FOLLOW_THREADS",
                "maybe",
                "is not true or false (e.g. false)",
            ),
            (
                "SLACK_PROGRESS_REACTION",
                "hour glass",
                "is not an emoji name",
            ),
            ("SLACK_PROGRESS_REACTION", "::", "is not an emoji name"),
            ("USER_RATE_LIMIT", "10", "is not a rate like N/sec"),
            ("USER_RATE_LIMIT", "ten/min", "is not a rate like"),
            ("USER_RATE_LIMIT", "10/fortnight", "is not a rate like"),
            ("USER_RATE_LIMIT", "-1/min", "is not a rate like"),
            ("USER_RATE_LIMIT", "0/min", "use off to disable"),
            ("TRANSCRIPT_RETENTION_DAYS", "0", "is less than 1 (e.g. 30)"),
            ("TRANSCRIPT_RETENTION_DAYS", "1w", "is not a number of days"),
            ("TRANSCRIPT_RETENTION_DAYS", "100000", "is more than 36500"),
            (
                "WEBHOOK_RETRY_SCHEDULE",
                "5s,5x",
                r#""5x" is not a duration"#,
            ),
            ("WEBHOOK_RETRY_SCHEDULE", "5", r#""5" is not a duration"#),
            ("WEBHOOK_RETRY_SCHEDULE", "5s,0m", r#""0m" is zero"#),
            ("WEBHOOK_RETRY_SCHEDULE", " , ,", "has no delays"),
            (
                "WEBHOOK_RETRY_SCHEDULE",
                "99999999999999999999d",
                "is not a duration",
            ),
            ("WEBHOOK_TIMEOUT_SECS", "0", "is less than 1 (e.g. 15)"),
            ("WEBHOOK_TIMEOUT_SECS", "fast", "is not a number of seconds"),
            (
                "WEBHOOK_ALLOW_PRIVATE_TARGETS",
                "sure",
                "is not true or false (e.g. true)",
            ),
            (
                "LOG_FORMAT",
                "xml",
                "is not one of pretty, json (e.g. json)",
            ),
            (
                "DISCORD_TOKEN",
                "abc\u{7}def",
                "contains a control character",
            ),
            (
                "SLACK_BOT_TOKEN",
                "xoxb\u{0}1",
                "contains a control character",
            ),
            (
                "SLACK_SIGNING_SECRET",
                "a\nb",
                "contains a control character",
            ),
            ("BRIDGE_API_TOKEN", "a\r\nb", "contains a control character"),
        ];
        let openai = err(&[("AGENT_KIND", "openai")]);
        assert!(openai.starts_with("OPENAI_MODEL: not set"), "{openai}");
        for (var, value, fragment) in cases {
            let msg = err(&[(var, value)]);
            assert!(
                msg.starts_with(&format!("{var}: ")),
                "{var}={value:?}: {msg}"
            );
            assert!(msg.contains(fragment), "{var}={value:?}: {msg}");
            assert!(msg.contains("e.g. "), "{var}={value:?}: {msg}");
            assert!(!msg.contains('\n'), "{var}={value:?}: {msg}");
        }
    }

    #[test]
    fn a_short_or_placeholder_admin_token_stops_start_up_naming_the_variable() {
        for (value, fragment) in [
            ("CHANGE-ME", "placeholder"),
            ("changeme", "placeholder"),
            ("token", "placeholder"),
            ("secret", "placeholder"),
            ("Secret", "placeholder"),
            ("CHANGE-ME-CHANGE-ME-CHANGE-ME", "placeholder"),
            ("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "placeholder"),
            ("short-but-random-9f2c", "shorter than 24"),
        ] {
            let msg = err(&[("BRIDGE_API_TOKEN", value)]);
            assert!(msg.starts_with("BRIDGE_API_TOKEN: "), "{value}: {msg}");
            assert!(msg.contains(fragment), "{value}: {msg}");
            if value.len() > 8 {
                assert!(!msg.contains(value), "{value} shown: {msg}");
            }
            assert!(!msg.contains('\n'), "{msg}");
        }
        assert!(load(&[("BRIDGE_API_TOKEN", "0123456789abcdef01234567")]).is_ok());
    }

    #[test]
    fn urls_with_credentials_are_shown_with_the_password_masked() {
        for (raw, shown) in [
            (
                "postgres://bridge:pw-77@db.internal:5432/bridge",
                "postgres://bridge:***@db.internal:5432/bridge",
            ),
            ("http://user:hunter2@h/x?y=1", "http://user:***@h/x?y=1"),
            (
                "https://tok-123@proxy.example/",
                "https://***@proxy.example/",
            ),
            ("http://127.0.0.1:5001/", "http://127.0.0.1:5001/"),
            (
                "error sending request for url (http://a:b@h:1/health): refused",
                "error sending request for url (http://a:***@h:1/health): refused",
            ),
            ("sqlite://agent-bridge.db", "sqlite://agent-bridge.db"),
            ("no url here", "no url here"),
        ] {
            assert_eq!(redact_url(raw), shown);
        }

        let cfg = ok(&[
            ("AGENT_URL", "http://agent:AGENTPW-1@agent.internal:5001"),
            ("DISCORD_TOKEN", "discord-TOKEN-b1c2d3e4f5"),
            (
                "DISCORD_API_BASE",
                "http://proxy:DISCORDPW-2@proxy.internal",
            ),
            ("SLACK_BOT_TOKEN", "xoxb-1"),
            ("SLACK_SIGNING_SECRET", "s3cret"),
            (
                "SLACK_API_BASE",
                "https://proxy:SLACKPW-3@proxy.internal/api",
            ),
        ]);
        let rendered = format!("{cfg:?}");
        for secret in ["AGENTPW-1", "DISCORDPW-2", "SLACKPW-3"] {
            assert!(!rendered.contains(secret), "{secret} leaked: {rendered}");
        }
        assert!(
            rendered.contains("http://agent:***@agent.internal:5001/"),
            "{rendered}"
        );
    }

    #[test]
    fn a_retry_delay_over_seven_days_stops_start_up() {
        for value in ["8d", "5s,169h", "604801s"] {
            let msg = err(&[("WEBHOOK_RETRY_SCHEDULE", value)]);
            assert!(msg.starts_with("WEBHOOK_RETRY_SCHEDULE: "), "{msg}");
            assert!(msg.contains("7 days"), "{msg}");
        }
        let cfg = ok(&[("WEBHOOK_RETRY_SCHEDULE", "5s,7d,168h")]);
        assert_eq!(cfg.webhooks.retry_schedule.len(), 3);
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let cfg = ok(&SECRETS);
        assert!(cfg.discord.is_some() && cfg.slack.is_some());

        for rendered in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            for (var, secret) in SECRETS {
                assert!(!rendered.contains(secret), "{var} leaked: {rendered}");
            }
            assert!(!rendered.contains("DBPASSWORD"), "{rendered}");
        }
    }

    #[test]
    fn recovery_window_is_a_duration() {
        assert_eq!(
            ok(&[]).conversation.recovery_window,
            Duration::from_secs(600)
        );
        let cfg = ok(&[("RECOVERY_WINDOW", "90s")]);
        assert_eq!(cfg.conversation.recovery_window, Duration::from_secs(90));
        let msg = err(&[("RECOVERY_WINDOW", "soon")]);
        assert!(
            msg.starts_with("RECOVERY_WINDOW: ") && msg.contains("e.g. 10m"),
            "{msg}"
        );
    }

    #[test]
    fn discord_shards_is_auto_or_a_count() {
        let token = ("DISCORD_TOKEN", "discord-TOKEN-b1c2d3e4f5");
        let shards = |v: &str| {
            ok(&[token, ("DISCORD_SHARDS", v)])
                .discord
                .and_then(|d| d.shards)
        };
        assert_eq!(ok(&[token]).discord.and_then(|d| d.shards), None);
        assert_eq!(shards("auto"), None);
        assert_eq!(shards("AUTO"), None);
        assert_eq!(shards("4"), Some(4));
        for bad in ["0", "-1", "two", "5000"] {
            let msg = err(&[token, ("DISCORD_SHARDS", bad)]);
            assert!(
                msg.starts_with("DISCORD_SHARDS: ") && msg.contains("e.g. auto"),
                "{msg}"
            );
        }
    }

    #[test]
    fn bridge_secret_key_is_32_bytes_of_base64() {
        let raw = [0x5au8; 32];
        use base64::Engine;
        for text in [
            base64::engine::general_purpose::STANDARD.encode(raw),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        ] {
            let cfg = ok(&[("BRIDGE_SECRET_KEY", &text)]);
            let key = cfg.webhooks.secret_key.clone().expect("key set");
            assert_eq!(key.expose_secret(), &raw);
            assert!(!format!("{cfg:?}").contains(&text));
        }
        assert!(ok(&[]).webhooks.secret_key.is_none());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        for (value, problem) in [
            (short.as_str(), "decodes to 16 bytes, not 32"),
            ("not base64 at all!", "is not base64"),
        ] {
            let msg = err(&[("BRIDGE_SECRET_KEY", value)]);
            assert!(msg.starts_with("BRIDGE_SECRET_KEY: "), "{msg}");
            assert!(
                msg.contains(problem) && msg.contains("openssl rand -base64 32"),
                "{msg}"
            );
            assert!(!msg.contains(value), "{msg}");
        }
    }

    #[test]
    fn secrets_never_appear_in_error_messages() {
        // Each secret made bad in its own way, plus every other error with all secrets set.
        let own_errors: &[(&str, &str)] = &[
            ("DATABASE_URL", "mysql://root:DBPASSWORD-77aa66bb@db/x"),
            ("DISCORD_TOKEN", "discord-TOKEN-b1c2d3e4f5\u{1}"),
            ("SLACK_BOT_TOKEN", "xoxb-SLACKBOT-9f8e7d6c\n2"),
            ("SLACK_SIGNING_SECRET", "SIGNING-SECRET-a1b2c3d4\t\u{7f}"),
            ("SLACK_APP_TOKEN", "xapp-APPTOKEN-5e6f7a8b\n"),
            ("BRIDGE_API_TOKEN", "BRIDGE-API-TOKEN-0f0e0d9c\u{1b}[0m"),
            ("BRIDGE_SECRET_KEY", "QlJJREdFLVNFQ1JFVC1LRVktMDAxMTIy"),
            (
                "BRIDGE_SECRET_KEY",
                "QlJJREdFLVNFQ1JFVC1LRVktMDAxMTIyMzM0NDU1NjY=!",
            ),
        ];
        let mut messages: Vec<String> = own_errors.iter().map(|pair| err(&[*pair])).collect();
        for (var, value) in [
            ("AGENT_URL", "nope"),
            ("SESSION_SCOPE", "guild"),
            ("WEBHOOK_RETRY_SCHEDULE", "x"),
        ] {
            let mut pairs = SECRETS.to_vec();
            pairs.push((var, value));
            messages.push(err(&pairs));
        }
        messages.push(err(&[SECRETS[1]]));
        messages.push(err(&[SECRETS[2]]));
        messages.push(err(&[SECRETS[3]]));
        messages.push(err(&[
            SECRETS[1],
            ("SLACK_APP_TOKEN", "APPTOKEN-without-prefix"),
        ]));

        for msg in messages {
            for (var, secret) in SECRETS {
                assert!(!msg.contains(secret), "{var} leaked: {msg}");
            }
            assert!(!msg.contains("DBPASSWORD"), "{msg}");
            assert!(
                !msg.contains("SLACKBOT")
                    && !msg.contains("SIGNING-SECRET")
                    && !msg.contains("APPTOKEN"),
                "{msg}"
            );
        }
    }

    #[test]
    fn parse_duration_reads_every_unit() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("500ms", Some(Duration::from_millis(500))),
            ("5s", Some(Duration::from_secs(5))),
            ("5m", Some(Duration::from_secs(300))),
            ("2h", Some(Duration::from_secs(7200))),
            ("1d", Some(Duration::from_secs(86_400))),
            (" 10 s ", Some(Duration::from_secs(10))),
            ("0s", Some(Duration::ZERO)),
            ("5", None),
            ("s", None),
            ("", None),
            ("1.5s", None),
            ("-1s", None),
            ("5 min", None),
            ("5S", None),
            ("99999999999999999999s", None),
            ("999999999999999999d", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_duration(input), *expected, "{input:?}");
        }
    }

    #[test]
    fn a_malformed_dotenv_file_is_reported_with_its_line_and_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "# agent bridge\n\nDISCORD_TOKEN='LEAKY-SECRET-VALUE\n",
        )
        .unwrap();

        let msg = load_dotenv_file(&path).unwrap_err().to_string();

        assert!(msg.contains(".env: line 3 is not KEY=VALUE"), "{msg}");
        assert!(!msg.contains("LEAKY"), "{msg}");
    }

    #[test]
    fn an_unreadable_dotenv_file_is_one_line_that_keeps_the_read_error_as_its_cause() {
        use std::error::Error as _;
        // A directory opens but cannot be read as a file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::create_dir(&path).unwrap();

        let e = load_dotenv_file(&path).unwrap_err();

        let line = e.to_string();
        let shown = format!("{}: cannot be read: ", path.display());
        assert!(line.starts_with(&shown) && !line.contains('\n'), "{line}");
        let cause = e.source().and_then(|detail| detail.source());
        assert!(cause.is_some_and(|c| c.is::<dotenvy::Error>()), "{e:?}");
        assert_eq!(crate::core::error::Report(&e).to_string(), line);
    }

    #[test]
    fn a_missing_dotenv_file_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();

        assert_eq!(load_dotenv_file(&dir.path().join(".env")), Ok(()));
    }
}
