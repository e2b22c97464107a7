//! Slash commands: `/ask <text>`, `/reset` and `/personality [id]`, registered
//! globally at READY and answered through the same relay as chat messages.
//!
//! A command becomes the text the core already understands (`/reset` → `reset`,
//! `/personality x` → `personality x`, `/ask t` → `t`), so the core needs no
//! Discord-specific path. Discord wants an acknowledgement within 3 s and the agent may
//! take longer, so the handler defers first (callback type 5, "thinking…") and
//! [`InteractionSink`] later edits that deferred response with the answer.

use std::sync::Arc;

use async_trait::async_trait;
use serenity::all::{
    Command, CommandDataOptionValue, CommandInteraction, CommandOptionType, CreateCommand,
    CreateCommandOption, CreateInteractionResponse, CreateInteractionResponseFollowup,
    CreateInteractionResponseMessage, EditInteractionResponse, Http,
};

use super::sink::{feedback_row, no_pings, part_failed};
use super::MESSAGE_LIMIT;
use crate::core::chunk::split_text;
use crate::core::ports::{AnswerFeed, ChatSink, SinkError};

/// What a deferred response shows when the core's answer is empty: an edit must carry
/// something, and "thinking…" must not stay forever.
const EMPTY_ANSWER: &str = "(The agent returned an empty answer.)";

/// The commands, as sent in the bulk overwrite.
pub fn definitions() -> Vec<CreateCommand> {
    vec![
        CreateCommand::new("ask")
            .description("Ask the AI agent")
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "text", "Your question")
                    .required(true)
                    .max_length(4000),
            ),
        CreateCommand::new("reset").description("Start a new conversation with the agent"),
        CreateCommand::new("stop").description("Stop the answer being written here"),
        CreateCommand::new("personality")
            .description("List the agent's personalities, or switch to one")
            .add_option(CreateCommandOption::new(
                CommandOptionType::String,
                "id",
                "The personality to use from now on",
            )),
    ]
}

/// Replaces the application's global commands with ours (`PUT
/// /applications/{id}/commands`): idempotent, so a re-identify may safely repeat it.
pub async fn register(http: &Http) -> Result<usize, serenity::Error> {
    Command::set_global_commands(http, definitions())
        .await
        .map(|c| c.len())
}

/// Answers a command the bridge will not relay (a blocked user, a channel outside
/// `ALLOWED_CHANNELS`) at once, visible only to its user (callback type 4, ephemeral):
/// a deferred response would stay at "thinking…".
pub async fn refuse(
    http: &Http,
    command: &CommandInteraction,
    text: &str,
) -> Result<(), serenity::Error> {
    let message = CreateInteractionResponseMessage::new()
        .content(text)
        .ephemeral(true)
        .allowed_mentions(no_pings());
    command
        .create_response(http, CreateInteractionResponse::Message(message))
        .await
}

/// The chat text a command stands for, or `None` for a command that is not ours.
pub fn to_text(command: &CommandInteraction) -> Option<String> {
    let option = |name: &str| {
        command.data.options.iter().find_map(|o| match &o.value {
            CommandDataOptionValue::String(s) if o.name == name => Some(s.trim().to_string()),
            _ => None,
        })
    };
    match command.data.name.as_str() {
        "ask" => Some(option("text").unwrap_or_default()),
        "reset" => Some("reset".to_string()),
        "stop" => Some("stop".to_string()),
        "personality" => Some(match option("id").filter(|id| !id.is_empty()) {
            Some(id) => format!("personality {id}"),
            None => "personality".to_string(),
        }),
        _ => None,
    }
}

/// Answers a deferred interaction: the first part edits the "thinking…" response, the
/// rest follow as follow-up messages. Interactions have no typing indicator: the
/// deferred response already says the bot is working.
pub struct InteractionSink {
    http: Arc<Http>,
    /// The interaction's token (valid 15 minutes): it addresses the webhook that edits
    /// the response. Never logged.
    token: String,
}

impl InteractionSink {
    pub fn new(http: Arc<Http>, token: String) -> Self {
        InteractionSink { http, token }
    }
}

#[async_trait]
impl ChatSink for InteractionSink {
    async fn send(&self, text: &str) -> Result<Vec<String>, SinkError> {
        self.send_with(text, None).await
    }

    /// Waits for the whole answer (an interaction response is edited once), then
    /// posts it with the 👍/👎 row on its last message when `FEEDBACK_BUTTONS` is on.
    async fn stream(&self, feed: AnswerFeed) -> Result<Vec<String>, SinkError> {
        let feedback = feed.feedback.clone();
        let text = feed.finished().await;
        self.send_with(&text, feedback.as_deref()).await
    }
}

impl InteractionSink {
    async fn send_with(
        &self,
        text: &str,
        feedback: Option<&str>,
    ) -> Result<Vec<String>, SinkError> {
        let mut parts = split_text(text, MESSAGE_LIMIT);
        if parts.is_empty() {
            parts.push(EMPTY_ANSWER.to_string());
        }
        let total = parts.len();
        let mut ids = Vec::with_capacity(total);
        for (i, part) in parts.into_iter().enumerate() {
            let row = feedback
                .filter(|_| i + 1 == total)
                .map(|turn_id| vec![feedback_row(turn_id)]);
            let posted = if i == 0 {
                let mut edit = EditInteractionResponse::new()
                    .content(part)
                    .allowed_mentions(no_pings());
                if let Some(row) = row {
                    edit = edit.components(row);
                }
                self.http
                    .edit_original_interaction_response(&self.token, &edit, Vec::new())
                    .await
            } else {
                let mut follow = CreateInteractionResponseFollowup::new()
                    .content(part)
                    .allowed_mentions(no_pings());
                if let Some(row) = row {
                    follow = follow.components(row);
                }
                self.http
                    .create_followup_message(&self.token, &follow, Vec::new())
                    .await
            };
            match posted {
                Ok(message) => ids.push(message.id.to_string()),
                Err(e) => return Err(part_failed(i, total, &e)),
            }
        }
        Ok(ids)
    }
}
