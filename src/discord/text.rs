//! Pure text helpers for Discord: recognising and stripping the bot's mention, and
//! naming the thread opened for an answer.
//!
//! No serenity types here (ids are plain `u64`), so the rules are unit-tested without a
//! gateway. Markdown and splitting are not this module's business (`core::chunk`).

/// The longest thread name we derive from a question. Discord allows 100; a shorter
/// name keeps the channel's thread list readable.
const THREAD_NAME_CHARS: usize = 50;

/// The name of a thread opened when the question is empty (a bare mention).
const DEFAULT_THREAD_NAME: &str = "Conversation";

/// The two spellings of a user mention: `<@ID>` and the legacy nickname form `<@!ID>`.
fn mention_forms(bot: u64) -> [String; 2] {
    [format!("<@{bot}>"), format!("<@!{bot}>")]
}

/// `true` when `content` mentions user `bot` in either spelling. Role mentions and
/// `@everyone` do not count: they address a group, not the bot.
pub fn mentions(content: &str, bot: u64) -> bool {
    mention_forms(bot)
        .iter()
        .any(|m| content.contains(m.as_str()))
}

/// Removes every mention of `bot` and trims the result. Where a mention sat between two
/// words, one of the spaces around it goes too, so "ask <@1> about X" reads "ask about
/// X"; other whitespace (line breaks, code indentation) is kept.
pub fn strip_mention(content: &str, bot: u64) -> String {
    let mut text = content.to_string();
    for form in mention_forms(bot) {
        while let Some(at) = text.find(&form) {
            let end = at + form.len();
            let space_before = text[..at].ends_with(' ');
            let space_after = text[end..].starts_with(' ');
            let end = if space_before && space_after {
                end + 1
            } else {
                end
            };
            text.replace_range(at..end, "");
        }
    }
    text.trim().to_string()
}

/// A thread name from the question: its first line-joined ~50 characters, cut at a word
/// boundary when one is near, with an ellipsis when shortened.
pub fn thread_name(question: &str) -> String {
    let flat: String = question.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return DEFAULT_THREAD_NAME.to_string();
    }
    if flat.chars().count() <= THREAD_NAME_CHARS {
        return flat;
    }
    let cut: String = flat.chars().take(THREAD_NAME_CHARS - 1).collect();
    // Prefer ending at a space unless that would throw away most of the name.
    let cut = match cut.rfind(' ') {
        Some(space) if space >= THREAD_NAME_CHARS / 2 => cut[..space].to_string(),
        _ => cut,
    };
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: u64 = 42;

    fn check_strip(input: &str, expected: &str) {
        assert_eq!(strip_mention(input, BOT), expected, "input: {input:?}");
    }

    #[test]
    fn both_mention_spellings_are_recognised() {
        assert!(mentions("<@42> hi", BOT));
        assert!(mentions("hi <@!42>", BOT));
        assert!(!mentions("<@420> hi", BOT));
        assert!(!mentions("<@&42> role", BOT));
        assert!(!mentions("@everyone 42", BOT));
    }

    #[test]
    fn mentions_are_stripped_wherever_they_are() {
        check_strip("<@42> what is rust?", "what is rust?");
        check_strip("<@!42>   what", "what");
        check_strip("ask <@42> about X", "ask about X");
        check_strip("thanks <@42>", "thanks");
        check_strip("<@42>", "");
        check_strip("<@42><@!42> twice", "twice");
        check_strip("<@420> other user", "<@420> other user");
        check_strip("<@42>\n```\n  code\n```", "```\n  code\n```");
    }

    #[test]
    fn thread_names_are_short_single_lines() {
        assert_eq!(thread_name("  what is\nrust?  "), "what is rust?");
        assert_eq!(thread_name(""), "Conversation");
        let long = "word ".repeat(30);
        let name = thread_name(&long);
        assert!(name.chars().count() <= THREAD_NAME_CHARS, "{name}");
        assert!(name.ends_with("word…"), "{name}");
        let unbroken = "x".repeat(80);
        assert_eq!(thread_name(&unbroken).chars().count(), THREAD_NAME_CHARS);
        let wide = "é".repeat(80);
        assert!(thread_name(&wide).ends_with('…'));
    }
}
