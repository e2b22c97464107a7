//! The bot's DM as Slack's assistant / agent surface (SPEC §5): suggested prompts when
//! a user opens it, and a title for each thread from its first question. Neither calls
//! the agent, and neither delays the event that caused it: the Web API calls run on
//! their own tasks, and a failure is a log line, never a failed turn.
//!
//! Which call takes a `thread_ts` follows Slack's reference: the (legacy) assistant
//! view's `assistant_thread_started` names its thread, so the prompts go to that
//! thread; the agent view's `app_home_opened` (`tab: "messages"`) has none, and
//! `setSuggestedPrompts` must go without one there. `setTitle` always names a thread:
//! the one the answer goes into.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn, Instrument};

use super::web_api::{SlackApiError, WebApi};
use super::Shared;

/// Slack's limit for a thread title, in characters.
pub const TITLE_LIMIT: usize = 60;

/// Refusals of `assistant.threads.setTitle` that hold for the whole app (it has no
/// assistant feature, or lacks `assistant:write`): titles stop being tried.
const TITLE_REFUSALS: &[&str] = &[
    "unknown_method",
    "not_allowed",
    "missing_scope",
    "not_allowed_token_type",
    "method_not_supported_for_channel_type",
];

/// `assistant.threads.setSuggestedPrompts` with `SLACK_SUGGESTED_PROMPTS`, if any.
pub(crate) fn offer_prompts(
    shared: &Shared,
    api: &Arc<WebApi>,
    channel: String,
    thread_ts: Option<String>,
) {
    if shared.suggested_prompts.is_empty() {
        debug!("the bot's DM was opened; SLACK_SUGGESTED_PROMPTS is empty");
        return;
    }
    let api = api.clone();
    let prompts = shared.suggested_prompts.clone();
    let task = async move {
        if let Err(e) = api
            .set_suggested_prompts(&channel, thread_ts.as_deref(), &prompts)
            .await
        {
            warn!(
                slack_error = e.code(),
                error = %e,
                channel = %channel,
                "could not set the suggested prompts"
            );
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("slack_prompts")));
}

/// `assistant.threads.setTitle` from the thread's first question.
pub(crate) fn name_thread(
    shared: &Arc<Shared>,
    api: &Arc<WebApi>,
    channel: &str,
    thread_ts: &str,
    question: &str,
) {
    if shared.titles_refused.load(Ordering::Relaxed) {
        return;
    }
    let title = title_of(question);
    if title.is_empty() {
        return;
    }
    let (shared, api) = (shared.clone(), api.clone());
    let (channel, thread_ts) = (channel.to_owned(), thread_ts.to_owned());
    let task = async move {
        match api.set_title(&channel, &thread_ts, &title).await {
            Ok(()) => {}
            Err(SlackApiError::Api(code)) if TITLE_REFUSALS.contains(&code.as_str()) => {
                if !shared.titles_refused.swap(true, Ordering::Relaxed) {
                    warn!(
                        slack_error = %code,
                        "Slack refuses assistant.threads.setTitle for this app (enable \
                         the assistant / agent feature and the assistant:write scope); \
                         threads are not titled from now on"
                    );
                }
            }
            Err(e) => warn!(
                slack_error = e.code(),
                error = %e,
                channel = %channel,
                "could not set the thread title"
            ),
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("slack_title")));
}

/// The question on one line, at most [`TITLE_LIMIT`] characters (cut at a word with
/// `…` when longer).
pub fn title_of(question: &str) -> String {
    let one_line = question.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= TITLE_LIMIT {
        return one_line;
    }
    let room: String = one_line.chars().take(TITLE_LIMIT - 1).collect();
    // A word that ends exactly at the limit is kept; one that runs past it is dropped
    // (unless that would leave less than half the room).
    let word_ends = one_line.chars().nth(TITLE_LIMIT - 1) == Some(' ');
    let cut = match room.rfind(' ') {
        _ if word_ends => room.as_str(),
        Some(space) if space > TITLE_LIMIT / 2 => &room[..space],
        _ => room.as_str(),
    };
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_line_and_at_most_sixty_characters() {
        let check = |question: &str, expected: &str| {
            let title = title_of(question);
            assert_eq!(title, expected);
            assert!(title.chars().count() <= TITLE_LIMIT, "{title}");
        };
        check("  What is\nSocket   Mode? ", "What is Socket Mode?");
        check(
            "How do I configure the bridge to answer in every channel of my workspace please",
            "How do I configure the bridge to answer in every channel of…",
        );
        let long_word = "é".repeat(80);
        check(&long_word, &format!("{}…", "é".repeat(59)));
        check("", "");
    }
}
