//! Chat commands (`reset`, `personality [id]`, `help`), recognised only when they are
//! the whole message, so "help me write a poem" still goes to the agent. Pure.

/// A command the bridge answers itself; never sent to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The next turn starts a new agent session.
    Reset,
    /// `None` lists the agent's personalities; `Some(id)` switches to one.
    Personality(Option<String>),
    Help,
    /// Ends the conversation's answer in flight.
    Stop,
}

/// What a message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    Command(Command),
    /// Text for the agent, trimmed.
    Chat(&'a str),
}

/// Parses the text of a message whose mention has already been stripped. An empty
/// message asks for help: the user mentioned the bot and said nothing.
pub fn parse(text: &str) -> Parsed<'_> {
    let text = text.trim();
    // A leading `/` lets people type `/reset` out of slash-command habit.
    let body = text.strip_prefix('/').unwrap_or(text);
    let mut words = body.split_whitespace();
    let Some(first) = words.next() else {
        return Parsed::Command(Command::Help);
    };
    // Compared case-blind where it stands: most messages are no command, and need no
    // lowercased copy of their first word.
    let is = |word: &str| first.eq_ignore_ascii_case(word);
    let second = words.next();
    let rest = words.next();
    match (second, rest) {
        (None, _) if is("reset") => Parsed::Command(Command::Reset),
        (None, _) if is("help") => Parsed::Command(Command::Help),
        (None, _) if is("stop") => Parsed::Command(Command::Stop),
        (None, _) if is("personality") || is("personalities") => {
            Parsed::Command(Command::Personality(None))
        }
        (Some(id), None) if is("personality") => {
            Parsed::Command(Command::Personality(Some(id.to_string())))
        }
        _ => Parsed::Chat(text),
    }
}

/// What `help` (and an empty mention) answers.
pub const HELP_TEXT: &str =
    "I relay your messages to an AI agent and keep one conversation per channel.\n\
Commands:\n\
• `reset` — start a new conversation with the agent\n\
• `personality` — list the agent's personalities\n\
• `personality <id>` — use that personality from now on\n\
• `stop` — stop the answer being written\n\
• `help` — this message\n\
Anything else is sent to the agent.";

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Parsed<'_>) {
        assert_eq!(parse(input), expected, "input: {input:?}");
    }

    #[test]
    fn whole_message_commands_are_recognised() {
        check("reset", Parsed::Command(Command::Reset));
        check("  RESET ", Parsed::Command(Command::Reset));
        check("/reset", Parsed::Command(Command::Reset));
        check("help", Parsed::Command(Command::Help));
        check("", Parsed::Command(Command::Help));
        check("   ", Parsed::Command(Command::Help));
        check("personality", Parsed::Command(Command::Personality(None)));
        check("personalities", Parsed::Command(Command::Personality(None)));
        check(
            "personality pirate",
            Parsed::Command(Command::Personality(Some("pirate".into()))),
        );
    }

    #[test]
    fn sentences_that_start_like_a_command_go_to_the_agent() {
        check("help me write a poem", Parsed::Chat("help me write a poem"));
        check("reset the router?", Parsed::Chat("reset the router?"));
        check(
            "personality of a cat is",
            Parsed::Chat("personality of a cat is"),
        );
        check(" what is rust ", Parsed::Chat("what is rust"));
    }
}
