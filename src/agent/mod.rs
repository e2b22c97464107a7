//! [`Agent`] implementations, picked by `AGENT_KIND`:
//!
//! - [`AiAgentApi`] (`ai-agent-api`, the default): the AI Agent API over HTTP;
//! - [`OpenAi`] (`openai`): an OpenAI-compatible chat-completions server, streamed;
//! - [`EchoAgent`] (`echo`): built in, answers with the question, no network.
//!
//! The rest of the bridge sees only `Arc<dyn Agent>`; [`from_config`] is the one place
//! that turns the configuration into a concrete backend.

use std::sync::Arc;

use crate::config::{AgentConfig, AgentKind};
use crate::core::ports::{Agent, AgentError};

pub mod ai_agent_api;
pub mod echo;
pub mod openai;

pub use ai_agent_api::AiAgentApi;
pub use echo::EchoAgent;
pub use openai::OpenAi;

/// The backend `cfg.kind` names. Fails only if the HTTP client cannot be built.
///
/// Request defaults (`AGENT_PERSONALITY`, `AGENT_MAX_RESULTS`) are the caller's to
/// fill in: backends send exactly what each [`AgentRequest`](crate::core::ports::AgentRequest) holds.
pub fn from_config(cfg: &AgentConfig) -> Result<Arc<dyn Agent>, AgentError> {
    Ok(match cfg.kind {
        AgentKind::AiAgentApi => Arc::new(AiAgentApi::new(cfg)?),
        AgentKind::OpenAi => match &cfg.openai {
            Some(openai) => Arc::new(OpenAi::new(cfg, openai)?),
            None => {
                return Err(AgentError::Malformed(
                    "AGENT_KIND=openai without OPENAI_MODEL".into(),
                ))
            }
        },
        AgentKind::Echo => Arc::new(EchoAgent::with_delay(cfg.echo_delay.unwrap_or_default())),
    })
}

/// A fresh [`EchoAgent`].
pub fn echo() -> Arc<dyn Agent> {
    Arc::new(EchoAgent::new())
}
