//! Webhook event kinds and payloads: the one deliberately `Serialize` part of the
//! core, because these bodies are an external contract (SPEC §7).
//!
//! An event is serialised once, when it happens, into [`OutboxEvent::body`]; every
//! delivery attempt sends those same bytes, so a signature can be checked against
//! exactly what was stored.

use serde::Serialize;
use time::OffsetDateTime;

/// The kinds an endpoint can subscribe to (`*` means all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Conversation,
    Query,
    PersonalityChange,
    SessionReset,
    ReplyFailed,
    Feedback,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Conversation,
        EventKind::Query,
        EventKind::PersonalityChange,
        EventKind::SessionReset,
        EventKind::ReplyFailed,
        EventKind::Feedback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Conversation => "conversation",
            EventKind::Query => "query",
            EventKind::PersonalityChange => "personality_change",
            EventKind::SessionReset => "session.reset",
            EventKind::ReplyFailed => "reply.failed",
            EventKind::Feedback => "feedback",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `evt_` followed by 32 hex digits; the same on every delivery attempt (`webhook-id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(String);

impl EventId {
    pub fn new() -> Self {
        EventId(format!("evt_{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn from_stored(s: impl Into<String>) -> Self {
        EventId(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

/// An event ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub id: EventId,
    pub kind: EventKind,
    /// Events with the same key are delivered in order to `ordered` endpoints
    /// (the conversation key; `None` for events outside a conversation).
    pub ordering_key: Option<String>,
    pub created_at: OffsetDateTime,
    /// The serialised envelope `{id, type, event, timestamp, data}`.
    pub body: String,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    event: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: OffsetDateTime,
    data: &'a T,
}

impl OutboxEvent {
    pub fn new<T: Serialize>(
        kind: EventKind,
        ordering_key: Option<String>,
        data: &T,
        now: OffsetDateTime,
    ) -> Self {
        let id = EventId::new();
        let envelope = Envelope {
            id: id.as_str(),
            kind: kind.as_str(),
            event: kind.as_str(),
            timestamp: now,
            data,
        };
        // The payload types below are plain strings and options, which cannot fail to
        // serialise; the fallback only guards a future payload type that could.
        let body = serde_json::to_string(&envelope).unwrap_or_else(|e| {
            tracing::error!(error = %e, kind = kind.as_str(), "event payload did not serialise");
            format!(
                r#"{{"id":"{}","type":"{k}","event":"{k}","data":null}}"#,
                id.as_str(),
                k = kind.as_str()
            )
        });
        OutboxEvent {
            id,
            kind,
            ordering_key,
            created_at: now,
            body,
        }
    }
}

/// Where a conversation lives, repeated in every conversation-scoped event.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationRef {
    /// The conversation key (`slack/T1/C1`, ...).
    pub conversation: String,
    pub platform: String,
    pub workspace: String,
    pub channel: String,
    pub thread: Option<String>,
}

/// `conversation`: one chat turn.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationTurn {
    #[serde(flatten)]
    pub at: ConversationRef,
    pub user: String,
    pub message_id: String,
    pub session_id: Option<String>,
    pub personality_id: Option<String>,
    /// The bridge's id of this turn (also in feedback button ids).
    pub turn_id: String,
    pub query: String,
    /// The whole answer as shown (a cut answer with its note).
    pub response: String,
    /// `false` when the answer was cut short (agent failure mid-stream, `stop`,
    /// the shutdown deadline).
    pub complete: bool,
    /// Agent latency in milliseconds.
    pub latency_ms: u64,
}

/// `query`: an `/agent-query` answer.
#[derive(Debug, Clone, Serialize)]
pub struct QueryAnswered {
    pub request_id: String,
    pub query: String,
    pub response: Option<String>,
    pub session_id: Option<String>,
    pub error: Option<String>,
    /// The caller's `metadata` object, carried as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// `reply.failed` for an async `/agent-query` whose agent call failed.
#[derive(Debug, Clone, Serialize)]
pub struct QueryFailed {
    pub request_id: String,
    pub query: String,
    pub session_id: Option<String>,
    pub error: String,
    /// As [`ReplyFailed::reason`]: `agent_error`, or `abandoned` for a query cut by a
    /// crash and older than `RECOVERY_WINDOW` when the bridge came back.
    pub reason: &'static str,
}

/// `personality_change`.
#[derive(Debug, Clone, Serialize)]
pub struct PersonalityChanged {
    #[serde(flatten)]
    pub at: ConversationRef,
    pub user: Option<String>,
    pub previous: Option<String>,
    pub new: String,
}

/// `session.reset`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionReset {
    #[serde(flatten)]
    pub at: ConversationRef,
    pub previous_session_id: Option<String>,
    /// `command` (the chat command) or `api` (`DELETE /sessions/{id}`).
    pub reason: &'static str,
}

/// `feedback`: a user's 👍/👎 on an answer (the first click, or one that changed it).
#[derive(Debug, Clone, Serialize)]
pub struct FeedbackGiven {
    #[serde(flatten)]
    pub at: ConversationRef,
    pub session_id: Option<String>,
    pub turn_id: String,
    pub user: String,
    /// `positive` or `negative`.
    pub value: &'static str,
}

/// `reply.failed`: the agent or the platform failed a turn.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyFailed {
    #[serde(flatten)]
    pub at: ConversationRef,
    pub user: String,
    pub message_id: String,
    pub query: String,
    pub error: String,
    /// `agent_error` (the agent failed: the user got `ERROR_REPLY`), `post_failed`
    /// (the platform refused the answer), `abandoned` (a turn cut by a crash or
    /// downtime, older than `RECOVERY_WINDOW` when the bridge came back).
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_type_and_event_with_the_same_name() {
        let data = SessionReset {
            at: ConversationRef {
                conversation: "slack/T/C".into(),
                platform: "slack".into(),
                workspace: "T".into(),
                channel: "C".into(),
                thread: None,
            },
            previous_session_id: Some("s1".into()),
            reason: "command",
        };
        let now = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        let ev = OutboxEvent::new(
            EventKind::SessionReset,
            Some("slack/T/C".into()),
            &data,
            now,
        );
        let v: serde_json::Value = serde_json::from_str(&ev.body).unwrap();
        assert_eq!(v["id"], ev.id.as_str());
        assert!(ev.id.as_str().starts_with("evt_"));
        assert_eq!(v["type"], "session.reset");
        assert_eq!(v["event"], "session.reset");
        assert_eq!(v["timestamp"], "2026-01-02T03:04:05Z");
        assert_eq!(v["data"]["conversation"], "slack/T/C");
        assert_eq!(v["data"]["previous_session_id"], "s1");
    }

    #[test]
    fn kinds_round_trip_and_unknown_names_are_refused() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("*"), None);
        assert_eq!(EventKind::parse("conversation.created"), None);
    }
}
