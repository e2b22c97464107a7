//! `AGENT_KIND=echo`: a built-in agent that answers with the question, for trying the
//! bridge without any agent and for benchmarks that must measure the bridge alone.
//!
//! It behaves like the AI Agent API where the bridge can tell: `converse` creates a
//! session (a UUID v4) when given none and counts the turns of each session, `query`
//! is stateless, a `personality_id` shows in the answer. No network, no I/O.
//!
//! Benchmarks drive 100k conversations through it, so a session costs one small map
//! entry: the 16 bytes of its UUID and a 4-byte counter. Ids that are not UUIDs (kept
//! from another backend, say) go to a second map keyed by the string.

use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::core::ports::{
    whole_answer, Agent, AgentAnswer, AgentError, AgentRequest, AnswerEvent, AnswerStream,
    Personality,
};

/// [`Agent`] that echoes; see the module documentation.
#[derive(Debug, Default)]
pub struct EchoAgent {
    /// `ECHO_DELAY_MS`: pause between two streamed words.
    delay: Duration,
    /// Turns per session whose id is a UUID, keyed by its bytes.
    turns: DashMap<[u8; 16], u32>,
    /// Turns per session whose id is not a UUID.
    other_turns: DashMap<Box<str>, u32>,
}

impl EchoAgent {
    pub fn new() -> Self {
        Self::default()
    }

    /// An echo agent that streams its words `delay` apart.
    pub fn with_delay(delay: Duration) -> Self {
        EchoAgent {
            delay,
            ..Self::default()
        }
    }

    /// `answer` as a stream of its words (each with the whitespace before it), then
    /// the whole answer.
    fn words(&self, answer: AgentAnswer) -> AnswerStream {
        let delay = self.delay;
        // Without a pause the words arrive together: one piece, as a platform would
        // show them (one post, no edit).
        if delay.is_zero() {
            return whole_answer(answer);
        }
        let mut pieces: Vec<String> = Vec::new();
        let mut current = String::new();
        for ch in answer.response.chars() {
            if ch.is_whitespace() && !current.trim().is_empty() {
                pieces.push(std::mem::take(&mut current));
            }
            current.push(ch);
        }
        if !current.is_empty() {
            pieces.push(current);
        }
        let count = pieces.len();
        let words = futures_util::stream::iter(pieces.into_iter().enumerate()).then(
            move |(i, piece)| async move {
                if i > 0 && !delay.is_zero() && i < count {
                    tokio::time::sleep(delay).await;
                }
                Ok(AnswerEvent::Delta(piece))
            },
        );
        Box::pin(words.chain(futures_util::stream::once(async move {
            Ok(AnswerEvent::Done(answer))
        })))
    }

    /// Counts a turn of `session` and returns its number (1 for the first).
    fn next_turn(&self, session: &str) -> u32 {
        let bump = |n: &mut u32| {
            *n = n.saturating_add(1);
            *n
        };
        match Uuid::parse_str(session) {
            Ok(id) => bump(&mut self.turns.entry(id.into_bytes()).or_insert(0)),
            Err(_) => {
                // `get_mut` first: most turns hit an existing session and need no
                // allocation for the key.
                if let Some(mut n) = self.other_turns.get_mut(session) {
                    return bump(&mut n);
                }
                bump(&mut self.other_turns.entry(session.into()).or_insert(0))
            }
        }
    }

    /// How many sessions the agent has seen (for tests and benchmarks).
    pub fn sessions(&self) -> usize {
        self.turns.len() + self.other_turns.len()
    }
}

/// `[pirate] ` for a personality, nothing otherwise.
fn prefix(req: &AgentRequest) -> String {
    match req.personality_id.as_deref() {
        Some(p) if !p.is_empty() => format!("[{p}] "),
        _ => String::new(),
    }
}

#[async_trait]
impl Agent for EchoAgent {
    async fn converse(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        let session = match req.session_id.as_deref() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => Uuid::new_v4().to_string(),
        };
        let turn = self.next_turn(&session);
        Ok(AgentAnswer {
            response: format!("{}echo (turn {turn}): {}", prefix(req), req.query),
            session_id: Some(session),
            sources: serde_json::Value::Null,
        })
    }

    async fn query(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        Ok(AgentAnswer {
            response: format!("{}echo: {}", prefix(req), req.query),
            session_id: None,
            sources: serde_json::Value::Null,
        })
    }

    async fn personalities(&self) -> Result<Vec<Personality>, AgentError> {
        let p = |id: &str, name: &str, role: &str| Personality {
            id: id.to_owned(),
            name: name.to_owned(),
            kind: Some("builtin".to_owned()),
            role: Some(role.to_owned()),
        };
        Ok(vec![
            p("default", "Default", "Repeats what you say"),
            p(
                "pirate",
                "Pirate",
                "Repeats what you say, in a pirate's voice",
            ),
        ])
    }

    async fn health(&self) -> Result<(), AgentError> {
        Ok(())
    }

    async fn converse_stream(&self, req: &AgentRequest) -> Result<AnswerStream, AgentError> {
        let answer = self.converse(req).await?;
        Ok(self.words(answer))
    }

    async fn query_stream(&self, req: &AgentRequest) -> Result<AnswerStream, AgentError> {
        let answer = self.query(req).await?;
        Ok(self.words(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &str, session: Option<&str>, personality: Option<&str>) -> AgentRequest {
        AgentRequest {
            query: query.to_owned(),
            session_id: session.map(str::to_owned),
            personality_id: personality.map(str::to_owned),
            max_results: None,
            history: Vec::new(),
        }
    }

    #[tokio::test]
    async fn converse_creates_a_session_and_counts_turns() {
        let agent = EchoAgent::new();
        let first = agent.converse(&req("hi", None, None)).await.unwrap();
        let session = first.session_id.clone().unwrap();
        assert!(Uuid::parse_str(&session).is_ok());
        assert_eq!(first.response, "echo (turn 1): hi");

        let second = agent
            .converse(&req("again", Some(&session), None))
            .await
            .unwrap();
        assert_eq!(second.session_id.as_deref(), Some(session.as_str()));
        assert_eq!(second.response, "echo (turn 2): again");

        let other = agent.converse(&req("x", None, None)).await.unwrap();
        assert_ne!(other.session_id, first.session_id);
        assert_eq!(other.response, "echo (turn 1): x");
        assert_eq!(agent.sessions(), 2);
    }

    #[tokio::test]
    async fn non_uuid_sessions_are_counted_too() {
        let agent = EchoAgent::new();
        for n in 1..=3 {
            let a = agent
                .converse(&req("q", Some("not-a-uuid"), None))
                .await
                .unwrap();
            assert_eq!(a.response, format!("echo (turn {n}): q"));
            assert_eq!(a.session_id.as_deref(), Some("not-a-uuid"));
        }
        assert_eq!(agent.sessions(), 1);
    }

    #[tokio::test]
    async fn personality_prefixes_the_answer() {
        let agent = EchoAgent::new();
        let a = agent
            .converse(&req("ahoy", None, Some("pirate")))
            .await
            .unwrap();
        assert_eq!(a.response, "[pirate] echo (turn 1): ahoy");
        let q = agent.query(&req("q", None, Some("pirate"))).await.unwrap();
        assert_eq!(q.response, "[pirate] echo: q");
    }

    #[tokio::test]
    async fn query_is_stateless() {
        let agent = EchoAgent::new();
        let a = agent.query(&req("what", Some("s"), None)).await.unwrap();
        assert_eq!(a.response, "echo: what");
        assert_eq!(a.session_id, None);
        assert_eq!(agent.sessions(), 0);
    }

    #[tokio::test]
    async fn personalities_and_health() {
        let agent = EchoAgent::new();
        let ids: Vec<_> = agent
            .personalities()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, ["default", "pirate"]);
        assert_eq!(agent.health().await, Ok(()));
    }

    #[tokio::test]
    async fn concurrent_turns_of_one_session_are_all_counted() {
        let agent = std::sync::Arc::new(EchoAgent::new());
        let session = Uuid::new_v4().to_string();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let agent = agent.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    agent
                        .converse(&req("q", Some(&session), None))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let last = agent
            .converse(&req("q", Some(&session), None))
            .await
            .unwrap();
        assert_eq!(last.response, "echo (turn 51): q");
    }

    #[tokio::test]
    async fn with_a_delay_the_answer_streams_word_by_word_and_without_one_whole() {
        use futures_util::StreamExt;
        let pieces = |agent: EchoAgent| async move {
            let mut stream = agent
                .converse_stream(&req("one two three", None, None))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut deltas = Vec::new();
            let mut done = None;
            while let Some(event) = stream.next().await {
                match event.unwrap_or_else(|e| panic!("{e}")) {
                    AnswerEvent::Delta(d) => deltas.push(d),
                    AnswerEvent::Done(a) => done = Some(a.response),
                }
            }
            (deltas, done)
        };
        let (deltas, done) = pieces(EchoAgent::with_delay(Duration::from_millis(1))).await;
        assert!(deltas.len() > 3, "{deltas:?}");
        assert_eq!(Some(deltas.concat()), done);
        let (deltas, done) = pieces(EchoAgent::new()).await;
        assert_eq!(deltas.len(), 1);
        assert_eq!(Some(deltas.concat()), done);
    }
}
