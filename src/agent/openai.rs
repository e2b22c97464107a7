//! `AGENT_KIND=openai`: any OpenAI-compatible chat-completions server (OpenAI, Ollama,
//! vLLM, llama.cpp, LiteLLM), streamed (SPEC §1.2).
//!
//! The API is stateless, so the bridge keeps the memory: each call sends the system
//! prompt (the personality's, else `AGENT_SYSTEM_PROMPT`), the conversation's earlier
//! turns the relay put in [`AgentRequest::history`], and the new message. The session
//! id is the bridge's own UUID per conversation.
//!
//! The answer is read as server-sent events (`data: {...}` with
//! `choices[0].delta.content`, ending with `data: [DONE]`) through `eventsource-stream`;
//! a server that ignores `stream` and answers plain JSON is read too. A stream that
//! breaks or ends without `[DONE]` yields what arrived, then an error (a cut answer).
//! 401/403 say the server refused `OPENAI_API_KEY`; 429/503 with `Retry-After` ≤ 10 s
//! are waited out once. `AGENT_TIMEOUT_SECS` bounds the wait for the answer to begin
//! and each pause between two pieces, not the whole answer.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{error, warn};
use url::Url;
use uuid::Uuid;

use super::ai_agent_api::{client, error_detail, join, read_capped, short_cause};
use crate::config::{AgentConfig, OpenAiConfig};
use crate::core::error::Detail;
use crate::core::ports::{
    Agent, AgentAnswer, AgentError, AgentRequest, AnswerEvent, AnswerStream, Personality, Role,
};

/// The longest `Retry-After` waited out (once) before failing the call.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Largest plain-JSON answer read.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Largest streamed answer kept: past it the stream is cut (the platforms show at
/// most `MAX_REPLY_MESSAGES` messages anyway).
const MAX_STREAMED_CHARS: usize = 1024 * 1024;
/// Pieces buffered between the reading task and the relay.
const PIECES_BUFFERED: usize = 64;

/// One personality of `PERSONALITIES_FILE`.
#[derive(Debug, Clone, Deserialize)]
struct PersonalityEntry {
    id: String,
    name: String,
    prompt: String,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PersonalitiesFile {
    #[serde(default)]
    personality: Vec<PersonalityEntry>,
}

/// [`Agent`] over an OpenAI-compatible `/chat/completions`.
pub struct OpenAi {
    client: Client,
    timeout: Duration,
    completions_url: Url,
    models_url: Url,
    /// `OPENAI_API_KEY`; never logged.
    api_key: Option<SecretString>,
    model: String,
    system_prompt: Option<String>,
    /// From `PERSONALITIES_FILE`, in file order.
    personalities: Vec<PersonalityEntry>,
    by_id: HashMap<String, usize>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("completions_url", &self.completions_url.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl OpenAi {
    /// Builds the client; reads `PERSONALITIES_FILE` when set (a missing or malformed
    /// file is an error naming it).
    pub fn new(agent: &AgentConfig, cfg: &OpenAiConfig) -> Result<Self, AgentError> {
        let client = client(
            Client::builder()
                .connect_timeout(agent.timeout)
                .read_timeout(agent.timeout),
        )?;
        let personalities = match &cfg.personalities_file {
            Some(path) => load_personalities(path)?,
            None => Vec::new(),
        };
        let by_id = personalities
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect();
        Ok(OpenAi {
            client,
            timeout: agent.timeout,
            completions_url: join(&cfg.base_url, "chat/completions"),
            models_url: join(&cfg.base_url, "models"),
            api_key: cfg.api_key.clone(),
            model: cfg.model.clone(),
            system_prompt: cfg.system_prompt.clone(),
            personalities,
            by_id,
        })
    }

    fn personality(&self, id: Option<&str>) -> Option<&PersonalityEntry> {
        id.and_then(|id| self.by_id.get(id))
            .and_then(|i| self.personalities.get(*i))
    }

    /// The request body: system prompt, history (for a conversation), the message.
    fn body(&self, req: &AgentRequest, with_history: bool) -> Value {
        let personality = self.personality(req.personality_id.as_deref());
        let system = personality
            .map(|p| p.prompt.clone())
            .or_else(|| self.system_prompt.clone());
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(json!({"role": "system", "content": system}));
        }
        if with_history {
            for turn in &req.history {
                let role = match turn.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                messages.push(json!({"role": role, "content": turn.content}));
            }
        }
        messages.push(json!({"role": "user", "content": req.query}));
        let model = personality
            .and_then(|p| p.model.clone())
            .unwrap_or_else(|| self.model.clone());
        json!({"model": model, "messages": messages, "stream": true})
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => builder.bearer_auth(key.expose_secret()),
            None => builder,
        }
    }

    fn transport_error(&self, err: reqwest::Error) -> AgentError {
        if err.is_timeout() {
            AgentError::Timeout(self.timeout)
        } else {
            let err = err.without_url();
            AgentError::Unreachable(Detail::with_cause(short_cause(&err), err))
        }
    }

    /// Sends the completion request, waiting out one short `Retry-After`; returns the
    /// 2xx response.
    async fn send(&self, body: &Value) -> Result<reqwest::Response, AgentError> {
        let mut waited = false;
        loop {
            let response = self
                .request(self.client.post(self.completions_url.clone()))
                .json(body)
                .send()
                .await
                .map_err(|e| self.transport_error(e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = retry_after(&response);
            let (bytes, _) = read_capped(response, 64 * 1024).await.unwrap_or_default();
            match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    error!(
                        status = status.as_u16(),
                        "the OpenAI-compatible server refused OPENAI_API_KEY; check the key"
                    );
                    return Err(AgentError::Status {
                        status: status.as_u16(),
                        detail: "the server refused OPENAI_API_KEY".into(),
                    });
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE if !waited => {
                    if let Some(wait) = retry_after.filter(|w| *w <= MAX_RETRY_AFTER) {
                        warn!(
                            status = status.as_u16(),
                            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            "OpenAI-compatible server busy; waiting Retry-After once"
                        );
                        waited = true;
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                _ => {}
            }
            return Err(AgentError::Status {
                status: status.as_u16(),
                detail: openai_error_detail(status, &bytes),
            });
        }
    }

    /// Starts the call and returns the answer as a stream; the reading happens in a
    /// task that ends when the stream is dropped.
    async fn complete(
        &self,
        req: &AgentRequest,
        session_id: Option<String>,
    ) -> Result<AnswerStream, AgentError> {
        let body = self.body(req, session_id.is_some());
        let response = self.send(&body).await?;
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            let (bytes, complete) = read_capped(response, MAX_ANSWER_BYTES)
                .await
                .map_err(|e| self.transport_error(e))?;
            if !complete {
                return Err(AgentError::Malformed("answer larger than 8 MiB".into()));
            }
            let text = plain_answer(&bytes)?;
            return Ok(crate::core::ports::whole_answer(AgentAnswer {
                response: text,
                session_id,
                sources: Value::Null,
            }));
        }
        let (tx, rx) = mpsc::channel(PIECES_BUFFERED);
        let timeout = self.timeout;
        tokio::spawn(read_events(response, tx, session_id, timeout));
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|event| (event, rx)) },
        )))
    }
}

/// Reads the server-sent events into `tx` until `[DONE]`, an error, or the reader
/// is gone.
async fn read_events(
    response: reqwest::Response,
    tx: mpsc::Sender<Result<AnswerEvent, AgentError>>,
    session_id: Option<String>,
    timeout: Duration,
) {
    let mut events = response.bytes_stream().eventsource();
    let mut text = String::new();
    loop {
        let next = match tokio::time::timeout(timeout, events.next()).await {
            Ok(next) => next,
            Err(_) => {
                let _ = tx.send(Err(AgentError::Timeout(timeout))).await;
                return;
            }
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(AgentError::Unreachable(Detail::caused_by(
                        "answer interrupted",
                        e,
                    ))))
                    .await;
                return;
            }
            None => {
                let _ = tx
                    .send(Err(AgentError::Malformed(
                        "the stream ended without [DONE]".into(),
                    )))
                    .await;
                return;
            }
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            let answer = AgentAnswer {
                response: text,
                session_id,
                sources: Value::Null,
            };
            let _ = tx.send(Ok(AnswerEvent::Done(answer))).await;
            return;
        }
        if data.is_empty() {
            continue;
        }
        let piece = match delta_content(data) {
            Ok(piece) => piece,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Some(piece) = piece.filter(|p| !p.is_empty()) else {
            continue;
        };
        if text.len() + piece.len() > MAX_STREAMED_CHARS {
            let _ = tx
                .send(Err(AgentError::Malformed(
                    "answer larger than 1 MiB".into(),
                )))
                .await;
            return;
        }
        text.push_str(&piece);
        if tx.send(Ok(AnswerEvent::Delta(piece))).await.is_err() {
            // The relay stopped listening (`stop`, shutdown): dropping the response
            // closes the connection, which tells the server to stop generating.
            return;
        }
    }
}

/// `choices[0].delta.content` of one event; `None` for events without text (the role
/// announcement, a finish reason). An `error` object is an error.
fn delta_content(data: &str) -> Result<Option<String>, AgentError> {
    let value: Value = serde_json::from_str(data)
        .map_err(|e| AgentError::Malformed(Detail::caused_by("stream event is not JSON", e)))?;
    if let Some(err) = value.get("error") {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| err.to_string(), str::to_owned);
        return Err(AgentError::Status {
            status: 500,
            detail: message,
        });
    }
    let choice = value.get("choices").and_then(|c| c.get(0));
    let content = choice
        .and_then(|c| c.get("delta").or_else(|| c.get("message")))
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str);
    Ok(content.map(str::to_owned))
}

/// The text of a plain (not streamed) answer: `choices[0].message.content`.
fn plain_answer(bytes: &[u8]) -> Result<String, AgentError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| AgentError::Malformed(Detail::caused_by("answer is not JSON", e)))?;
    value
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| AgentError::Malformed("answer has no choices[0].message.content".into()))
}

/// OpenAI's `{"error": {"message"}}`, else the AI Agent API's rules.
fn openai_error_detail(status: StatusCode, body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(message) = value
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
        {
            return message.chars().take(1_000).collect();
        }
    }
    error_detail(status, body)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these servers).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn load_personalities(path: &std::path::Path) -> Result<Vec<PersonalityEntry>, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        AgentError::Malformed(Detail::caused_by(
            format!("PERSONALITIES_FILE {}: cannot read it", path.display()),
            e,
        ))
    })?;
    let file: PersonalitiesFile = toml::from_str(&text).map_err(|e| {
        AgentError::Malformed(Detail::caused_by(
            format!(
                "PERSONALITIES_FILE {}: not valid ([[personality]] tables with id, name, prompt)",
                path.display()
            ),
            e,
        ))
    })?;
    Ok(file.personality)
}

#[async_trait]
impl Agent for OpenAi {
    async fn converse(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        collect(self.converse_stream(req).await?).await
    }

    async fn query(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        collect(self.query_stream(req).await?).await
    }

    async fn personalities(&self) -> Result<Vec<Personality>, AgentError> {
        Ok(self
            .personalities
            .iter()
            .map(|p| Personality {
                id: p.id.clone(),
                name: p.name.clone(),
                kind: Some("openai".into()),
                role: p.model.clone(),
            })
            .collect())
    }

    async fn health(&self) -> Result<(), AgentError> {
        let response = self
            .request(self.client.get(self.models_url.clone()))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(AgentError::Status {
                status: status.as_u16(),
                detail: "GET /models did not answer 2xx".into(),
            })
        }
    }

    async fn converse_stream(&self, req: &AgentRequest) -> Result<AnswerStream, AgentError> {
        // The bridge's own session: kept when given, made on the first turn.
        let session = match req.session_id.as_deref() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => Uuid::new_v4().to_string(),
        };
        self.complete(req, Some(session)).await
    }

    async fn query_stream(&self, req: &AgentRequest) -> Result<AnswerStream, AgentError> {
        self.complete(req, None).await
    }

    fn wants_history(&self) -> bool {
        true
    }
}

/// Reads a stream to its end: the whole answer, or the first error.
async fn collect(mut stream: AnswerStream) -> Result<AgentAnswer, AgentError> {
    while let Some(event) = stream.next().await {
        if let AnswerEvent::Done(answer) = event? {
            return Ok(answer);
        }
    }
    Err(AgentError::Malformed(
        "the stream ended without [DONE]".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_content_reads_pieces_and_skips_empty_events() {
        let piece = r#"{"choices":[{"delta":{"content":"Hel"}}]}"#;
        assert_eq!(delta_content(piece).ok().flatten().as_deref(), Some("Hel"));
        let role = r#"{"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert_eq!(delta_content(role).ok().flatten(), None);
        let finish = r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(delta_content(finish).ok().flatten(), None);
        assert!(delta_content("not json").is_err());
        assert!(delta_content(r#"{"error":{"message":"overloaded"}}"#).is_err());
    }

    #[test]
    fn plain_answers_are_read() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Hi"}}]}"#;
        assert_eq!(plain_answer(body).ok().as_deref(), Some("Hi"));
        assert!(plain_answer(b"{}").is_err());
    }

    #[test]
    fn personalities_file_is_parsed() {
        let text = "[[personality]]\nid = \"pirate\"\nname = \"Pirate\"\nprompt = \"Talk like a pirate.\"\nmodel = \"m2\"\n";
        let file: PersonalitiesFile = toml::from_str(text).unwrap_or(PersonalitiesFile {
            personality: vec![],
        });
        assert_eq!(file.personality.len(), 1);
        assert_eq!(file.personality[0].model.as_deref(), Some("m2"));
    }
}
