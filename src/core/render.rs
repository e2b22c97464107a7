//! Showing an answer while it is written, on a platform that can post and edit
//! messages (Discord, Slack's `update` mode): [`render`] turns the growing text of an
//! [`AnswerFeed`] into posts and edits of a [`Surface`], paced by the feed's interval.
//!
//! The rules it keeps:
//! - the first text is shown at once; later updates come at most once per interval
//!   (the final one too), and a message whose text did not change is not touched;
//! - the text is split as [`final_parts`] splits the finished answer; a part that is
//!   no longer the last is final and gets its last edit, the answer goes on in a new
//!   message — so the finished messages read exactly as a non-streamed answer would;
//! - the open (last) part of a partial text has its code fence or emphasis closed for
//!   display ([`close_for_display`]), so half an answer never renders broken;
//! - at most `max_messages` messages, the last ending with [`TRUNCATED`].
//!
//! Pure but for the clock: the platform's calls (and their own rate-limit waits) are
//! behind [`Surface`].

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::chunk::split_text;
use super::fence::Fence;
use super::ports::{AnswerFeed, SinkError};

/// How the last message of a capped answer ends.
pub const TRUNCATED: &str = "… (answer truncated)";

/// A place messages can be posted and edited (one conversation's thread or channel).
#[async_trait]
pub trait Surface: Send + Sync {
    /// Posts a new message; returns its platform id.
    async fn post(&self, text: &str) -> Result<String, SinkError>;
    /// Replaces the text of a message this surface posted.
    async fn edit(&self, id: &str, text: &str) -> Result<(), SinkError>;
    /// Posts the answer's last message, complete (a platform adds what only the
    /// finished answer carries, such as its feedback buttons).
    async fn post_last(&self, text: &str) -> Result<String, SinkError> {
        self.post(text).await
    }
    /// The answer's last message is complete: `text` is its final text, `changed`
    /// whether that differs from what it shows. By default only a change is edited.
    async fn finish_last(&self, id: &str, text: &str, changed: bool) -> Result<(), SinkError> {
        match changed {
            true => self.edit(id, text).await,
            false => Ok(()),
        }
    }
}

/// The platform's text rules: its message limit, and the conversion from agent
/// Markdown (identity on Discord, mrkdwn on Slack).
pub struct Shape<'a> {
    pub limit: usize,
    pub prepare: &'a (dyn Fn(&str) -> String + Send + Sync),
}

/// The messages a finished answer takes: converted, split at `shape.limit`, at most
/// `max_messages` of them, the last ending with [`TRUNCATED`] when parts were cut.
pub fn final_parts(text: &str, shape: &Shape<'_>, max_messages: usize) -> Vec<String> {
    cap(
        split_text(&(shape.prepare)(text), shape.limit),
        shape.limit,
        max_messages,
    )
}

/// Keeps the first `max` parts; when any were dropped, the last kept one ends with
/// [`TRUNCATED`] (shortened, at a character boundary, to make room).
pub fn cap(mut parts: Vec<String>, limit: usize, max: usize) -> Vec<String> {
    let max = max.max(1);
    if parts.len() <= max {
        return parts;
    }
    parts.truncate(max);
    if let Some(last) = parts.last_mut() {
        let suffix = format!("\n\n{TRUNCATED}");
        let room = limit.saturating_sub(suffix.chars().count());
        if last.chars().count() > room {
            let cut = last.char_indices().nth(room).map_or(last.len(), |(i, _)| i);
            last.truncate(cut);
        }
        let kept = last.trim_end().len();
        last.truncate(kept);
        last.push_str(&suffix);
    }
    parts
}

/// Closes what a partial Markdown text leaves open, for display only: an unclosed
/// code fence (```` ``` ```` or `~~~`), else an unclosed code span, `**`, `__` or
/// `~~` in its last paragraph.
pub fn close_for_display(partial: &str) -> String {
    let mut open_fence: Option<Fence> = None;
    let mut prose_start = 0;
    let mut offset = 0;
    for line in partial.split_inclusive('\n') {
        match &open_fence {
            Some(open) if open.is_closed_by(line) => {
                open_fence = None;
                prose_start = offset + line.len();
            }
            Some(_) => {}
            None => {
                if let Some((open, _)) = Fence::opened_by(line) {
                    open_fence = Some(open);
                } else if line.trim().is_empty() {
                    prose_start = offset + line.len();
                }
            }
        }
        offset += line.len();
    }
    let mut out = partial.to_string();
    if let Some(fence) = open_fence {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&fence.text());
        return out;
    }
    let paragraph = &partial[prose_start.min(partial.len())..];
    if paragraph.matches('`').count() % 2 == 1 {
        out.push('`');
        return out;
    }
    for mark in ["**", "__", "~~"] {
        if paragraph.matches(mark).count() % 2 == 1 {
            out.push_str(mark);
        }
    }
    out
}

/// Shows `feed` on `surface` as it grows (see the module documentation); returns the
/// ids of the messages the answer took.
pub async fn render(
    surface: &dyn Surface,
    mut feed: AnswerFeed,
    shape: &Shape<'_>,
) -> Result<Vec<String>, SinkError> {
    let mut shown: Vec<(String, String)> = Vec::new();
    let interval = feed.interval.max(MIN_INTERVAL);
    let mut last_round: Option<Instant> = None;
    // The messages `text` takes now: the final split, or a partial one with its open
    // markup closed for display.
    let parts_of = |text: &str, done: bool| {
        if done {
            final_parts(text, shape, feed.max_messages)
        } else {
            final_parts(&close_for_display(text), shape, feed.max_messages)
        }
    };
    loop {
        let mut done = feed.text.changed().await.is_err();
        if !done && last_round.is_none() {
            // An answer that came in one piece is complete at its first round (the
            // sender already gone): its one message is posted as the last.
            done = feed.text.has_changed().is_err();
        }
        if let Some(at) = last_round {
            if !done && !changes(&shown, &parts_of(&feed.text.borrow(), false)) {
                // Nothing new to show yet: no call, and no wait.
                continue;
            }
            // Keep the pace (the final round too: finishing the last message may be a
            // call even when its text is already shown); the text grows meanwhile.
            tokio::time::sleep_until(at + interval).await;
            done = done || feed.text.has_changed().is_err();
        }
        let text = feed.text.borrow_and_update().clone();
        let parts = parts_of(&text, done);
        update(surface, &mut shown, &parts, done).await?;
        last_round = Some(Instant::now());
        if done {
            return Ok(shown.into_iter().map(|(id, _)| id).collect());
        }
    }
}

/// Whether showing `parts` needs any call.
fn changes(shown: &[(String, String)], parts: &[String]) -> bool {
    parts
        .iter()
        .enumerate()
        .any(|(i, part)| match shown.get(i) {
            Some((_, text)) => text != part,
            None => !part.trim().is_empty(),
        })
}

/// Brings the posted messages to `parts`: edits the ones whose text changed, posts
/// the new ones, in order. A failed edit of a partial text is only logged (the next
/// round edits again); in the final round every failure counts.
async fn update(
    surface: &dyn Surface,
    shown: &mut Vec<(String, String)>,
    parts: &[String],
    final_round: bool,
) -> Result<(), SinkError> {
    for (i, part) in parts.iter().enumerate() {
        let last = final_round && i + 1 == parts.len();
        match shown.get_mut(i) {
            Some((id, text)) if last => {
                surface.finish_last(id, part, text != part).await?;
                text.clone_from(part);
            }
            None if last && !part.trim().is_empty() => {
                let id = surface.post_last(part).await?;
                shown.push((id, part.clone()));
            }
            Some((_, text)) if text == part => {}
            Some((id, text)) => match surface.edit(id, part).await {
                Ok(()) => text.clone_from(part),
                Err(e) if !final_round => {
                    tracing::debug!(error = %e, "could not update a partial answer; trying again");
                }
                Err(e) => return Err(e),
            },
            None if part.trim().is_empty() => {}
            None => {
                let id = surface.post(part).await?;
                shown.push((id, part.clone()));
            }
        }
    }
    Ok(())
}

/// The least time between two updates when the configuration says zero: a platform
/// call per piece would be a flood.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn check_close(input: &str, expected: &str) {
        assert_eq!(close_for_display(input), expected, "input: {input:?}");
    }

    #[test]
    fn open_markup_is_closed_for_display() {
        check_close("plain text", "plain text");
        check_close("some **bold", "some **bold**");
        check_close("a `span", "a `span`");
        check_close("```rust\nfn main()", "```rust\nfn main()\n```");
        check_close("```\ncode\n```\nafter **x", "```\ncode\n```\nafter **x**");
        check_close("~~~\nx\n", "~~~\nx\n~~~");
        check_close("**done** and more", "**done** and more");
        check_close("**a**\n\nnew ~~par", "**a**\n\nnew ~~par~~");
    }

    #[test]
    fn capped_answers_end_with_the_note_within_the_limit() {
        let parts: Vec<String> = (0..5).map(|i| format!("part {i}")).collect();
        let capped = cap(parts.clone(), 2000, 2);
        assert_eq!(capped.len(), 2);
        assert_eq!(capped[0], "part 0");
        assert!(capped[1].ends_with(TRUNCATED));
        assert_eq!(cap(parts.clone(), 2000, 10), parts);
        let long = cap(vec!["x".repeat(100), "y".into()], 100, 1);
        assert!(long[0].chars().count() <= 100);
        assert!(long[0].ends_with(TRUNCATED));
    }
}
