//! `POST /agent-query`: the agent through the bridge's auth and concurrency bound.
//! Synchronous by default; with `"async": true` it answers 202 at once and the answer
//! arrives as a `query` webhook event. Every answer is also a `query` event.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::core::events::{EventKind, OutboxEvent, QueryAnswered, QueryFailed};
use crate::core::ports::{AgentAnswer, AgentError, AgentRequest};
use crate::core::Relay;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    query: String,
    session_id: Option<String>,
    personality_id: Option<String>,
    max_results: Option<u32>,
    #[serde(default, rename = "async")]
    asynchronous: bool,
}

pub async fn agent_query(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<AgentQuery>,
) -> ApiResult<Response> {
    if !state.relay.is_accepting() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        ));
    }
    if body.query.trim().is_empty() {
        return Err(ApiError::unprocessable("query must not be empty"));
    }
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let request = AgentRequest {
        query: body.query,
        session_id: body.session_id.filter(|s| !s.is_empty()),
        personality_id: body
            .personality_id
            .or_else(|| state.default_personality.clone()),
        max_results: body.max_results.or(Some(state.default_max_results)),
        ..AgentRequest::default()
    };
    let relay = state.relay.clone();
    if body.asynchronous {
        let id = request_id.clone();
        state.relay.spawn(async move {
            let result = relay.ask(&request).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, request_id = %id, "async agent query failed");
            }
            if let Err(e) = relay.record(events_for(&id, &request, &result)).await {
                tracing::error!(error = %e, request_id = %id, "could not record the query event");
            }
        });
        let body = json!({ "status": "processing", "request_id": request_id });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let result = relay.ask(&request).await;
    record(&relay, &request_id, &request, &result).await?;
    match result {
        Ok(answer) => Ok(Json(json!({
            "request_id": request_id,
            "response": answer.response,
            "session_id": answer.session_id,
            "sources": answer.sources,
        }))
        .into_response()),
        Err(e) => {
            tracing::warn!(error = %e, request_id = %request_id, "agent query failed");
            Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
        }
    }
}

async fn record(
    relay: &Relay,
    request_id: &str,
    request: &AgentRequest,
    result: &Result<AgentAnswer, AgentError>,
) -> ApiResult<()> {
    if !relay.wants_events() {
        return Ok(());
    }
    relay
        .record(events_for(request_id, request, result))
        .await
        .map_err(ApiError::from)
}

/// A `query` event for every outcome, plus `reply.failed` when the agent failed.
fn events_for(
    request_id: &str,
    request: &AgentRequest,
    result: &Result<AgentAnswer, AgentError>,
) -> Vec<OutboxEvent> {
    let now = OffsetDateTime::now_utc();
    let (response, session_id, error) = match result {
        Ok(a) => (
            Some(a.response.clone()),
            a.session_id.clone().or(request.session_id.clone()),
            None,
        ),
        Err(e) => (None, request.session_id.clone(), Some(e.to_string())),
    };
    let ordering = session_id.clone();
    let mut events = vec![OutboxEvent::new(
        EventKind::Query,
        ordering.clone(),
        &QueryAnswered {
            request_id: request_id.to_string(),
            query: request.query.clone(),
            response,
            session_id: session_id.clone(),
            error: error.clone(),
        },
        now,
    )];
    if let Some(error) = error {
        events.push(OutboxEvent::new(
            EventKind::ReplyFailed,
            ordering,
            &QueryFailed {
                request_id: request_id.to_string(),
                query: request.query.clone(),
                session_id,
                error,
            },
            now,
        ));
    }
    events
}
