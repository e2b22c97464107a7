//! Platform-neutral message and conversation types.
//!
//! Platforms convert their own wire types into [`Inbound`] by hand; nothing here is
//! `Serialize`, so a change of a platform's payload never leaks into the core.

use std::fmt;
use std::sync::Arc;

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Discord,
    Slack,
    Console,
    /// An async `/agent-query`: journaled like a chat message (nothing answered 202 is
    /// lost), never a conversation.
    Api,
}

impl Inbound {
    /// The journal's id of this message's turn: the same for every delivery of the
    /// message (a Slack retry, the app_mention and message events of one post, a
    /// Discord catch-up), so it is journaled — and answered — once. Only ASCII
    /// letters, digits, `-`, `_` and `.` (Discord's `custom_id` and Slack's metadata
    /// carry it).
    pub fn turn_id(&self) -> String {
        turn_id(
            self.platform,
            &self.workspace,
            &self.channel,
            &self.message_id,
        )
    }
}

/// [`Inbound::turn_id`] of the message `message_id` of `channel` (a platform that
/// needs it where it has no `Inbound`, such as a sink).
pub fn turn_id(platform: Platform, workspace: &str, channel: &str, message_id: &str) -> String {
    let platform = platform.as_str();
    let mut id = String::with_capacity(
        platform.len() + message_id.len() + workspace.len() + channel.len() + 3,
    );
    id.push_str(platform);
    // The message's id first: Slack's `ts` and Discord's snowflakes grow with time,
    // so new journal rows land together at the end of its index.
    for part in [message_id, workspace, channel] {
        id.push('-');
        // One `_` per char outside the set: a char's first byte stands for it, and
        // the bytes that continue a longer char are skipped.
        for b in part.bytes().filter(|b| !is_utf8_continuation(*b)) {
            id.push(match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' => char::from(b),
                _ => '_',
            });
        }
    }
    id
}

fn is_utf8_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Discord => "discord",
            Platform::Slack => "slack",
            Platform::Console => "console",
            Platform::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "discord" => Some(Platform::Discord),
            "slack" => Some(Platform::Slack),
            "console" => Some(Platform::Console),
            "api" => Some(Platform::Api),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one agent session covers (`SESSION_SCOPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionScope {
    #[default]
    Channel,
    Thread,
    User,
}

impl SessionScope {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "channel" => Some(SessionScope::Channel),
            "thread" => Some(SessionScope::Thread),
            "user" => Some(SessionScope::User),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionScope::Channel => "channel",
            SessionScope::Thread => "thread",
            SessionScope::User => "user",
        }
    }
}

/// A message a platform hands to the relay.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub platform: Platform,
    /// Guild (Discord) or team (Slack) id; empty for a Discord DM or the console.
    pub workspace: String,
    /// Channel id; a DM is its own channel.
    pub channel: String,
    /// The thread the answer will be posted in, if any. Platforms fill it with the
    /// thread the *reply* lands in (Slack: `thread_ts`, else the message's own `ts`),
    /// so that `SESSION_SCOPE=thread` keys a conversation by where it is visible.
    pub thread: Option<String>,
    /// The author's platform id.
    pub user: String,
    /// The platform's id of this message (kept in the transcript).
    pub message_id: String,
    /// The text with the bot's mention already stripped.
    pub text: String,
}

/// The identity of one conversation: platform + workspace + channel, plus thread or
/// user depending on the [`SessionScope`].
///
/// Kept as one canonical string (`slack/T1/C1`, `slack/T1/C1/t:170.1`,
/// `discord/G1/C1/u:42`) because it is the store's primary key and the map's key;
/// an `Arc<str>` makes the many clones on the hot path a reference-count bump.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationKey(Arc<str>);

impl ConversationKey {
    pub fn derive(scope: SessionScope, msg: &Inbound) -> Self {
        let mut key = format!(
            "{}/{}/{}",
            msg.platform.as_str(),
            clean(&msg.workspace),
            clean(&msg.channel)
        );
        match scope {
            SessionScope::Channel => {}
            SessionScope::Thread => {
                if let Some(thread) = &msg.thread {
                    key.push_str("/t:");
                    key.push_str(&clean(thread));
                }
            }
            SessionScope::User => {
                key.push_str("/u:");
                key.push_str(&clean(&msg.user));
            }
        }
        ConversationKey(key.into())
    }

    /// Rebuilds a key read back from the store.
    pub fn from_stored(s: &str) -> Self {
        ConversationKey(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Platform ids never contain `/`; replacing it keeps the key unambiguous even for
/// console input.
fn clean(part: &str) -> String {
    part.replace('/', "_")
}

impl fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationKey({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(thread: Option<&str>) -> Inbound {
        Inbound {
            platform: Platform::Slack,
            workspace: "T1".into(),
            channel: "C1".into(),
            thread: thread.map(Into::into),
            user: "U1".into(),
            message_id: "1.1".into(),
            text: "hi".into(),
        }
    }

    fn check(scope: SessionScope, thread: Option<&str>, expected: &str) {
        assert_eq!(
            ConversationKey::derive(scope, &msg(thread)).as_str(),
            expected
        );
    }

    #[test]
    fn keys_follow_the_session_scope() {
        check(SessionScope::Channel, None, "slack/T1/C1");
        check(SessionScope::Channel, Some("9.9"), "slack/T1/C1");
        check(SessionScope::Thread, Some("9.9"), "slack/T1/C1/t:9.9");
        check(SessionScope::Thread, None, "slack/T1/C1");
        check(SessionScope::User, Some("9.9"), "slack/T1/C1/u:U1");
    }

    #[test]
    fn slashes_in_ids_cannot_forge_another_key() {
        let mut m = msg(None);
        m.channel = "C1/t:9".into();
        assert_eq!(
            ConversationKey::derive(SessionScope::Channel, &m).as_str(),
            "slack/T1/C1_t:9"
        );
    }

    #[test]
    fn turn_ids_keep_their_format() {
        // Journal rows written by an earlier release are found by this id after an
        // upgrade: its text must never change.
        assert_eq!(msg(None).turn_id(), "slack-1.1-T1-C1");
        assert_eq!(
            turn_id(Platform::Discord, "G/1", "c h", "1234:5é"),
            "discord-1234_5_-G_1-c_h"
        );
    }

    #[test]
    fn scope_names_round_trip() {
        for s in [
            SessionScope::Channel,
            SessionScope::Thread,
            SessionScope::User,
        ] {
            assert_eq!(SessionScope::parse(s.as_str()), Some(s));
        }
        assert_eq!(SessionScope::parse("guild"), None);
    }
}
