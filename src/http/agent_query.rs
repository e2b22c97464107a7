//! `POST /agent-query`: the agent through the bridge's auth and concurrency bound.
//! Synchronous by default; with `"async": true` it answers 202 at once and the answer
//! arrives as a `query` webhook event; with `"stream": true` (or `Accept:
//! text/event-stream`) it answers server-sent events framed by [`sse_answer`]. Every
//! answer is also a `query` event.

use std::convert::Infallible;
use std::future::Future;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::core::events::{EventKind, OutboxEvent, QueryAnswered, QueryFailed};
use crate::core::ports::{AgentAnswer, AgentError, AgentRequest, AnswerEvent, TurnState};
use crate::core::Relay;

/// `metadata` above this, serialized, is refused with 422.
pub const METADATA_LIMIT: usize = 4 * 1024;

/// The body. Unknown fields are ignored: clients of the proxy pattern send `user`,
/// `channel`, `context`, ….
#[derive(Debug, Deserialize)]
pub struct AgentQuery {
    query: String,
    session_id: Option<String>,
    personality_id: Option<String>,
    max_results: Option<u32>,
    #[serde(default, rename = "async")]
    asynchronous: bool,
    #[serde(default)]
    stream: bool,
    metadata: Option<Value>,
}

pub async fn agent_query(
    State(state): State<AppState>,
    headers: HeaderMap,
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
    let metadata = match body.metadata {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let size = serde_json::to_vec(&map)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > METADATA_LIMIT {
                return Err(ApiError::unprocessable("metadata is over 4 KiB"));
            }
            Some(Value::Object(map))
        }
        Some(_) => return Err(ApiError::unprocessable("metadata must be a JSON object")),
    };
    let wants_stream = body.stream || accepts_event_stream(&headers);
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
        // In the journal before the 202: a crash after it loses nothing (the next
        // start asks again and delivers the `query` event).
        let left = LeftQuery {
            request_id: request_id.clone(),
            query: request.query.clone(),
            session_id: request.session_id.clone(),
            personality_id: request.personality_id.clone(),
            max_results: request.max_results,
            metadata,
        };
        let journaled = serde_json::to_string(&left).map_err(ApiError::internal)?;
        let turn = relay
            .journal_query(&request_id, journaled)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        state.relay.spawn(answer_left(relay, turn, left));
        let body = json!({ "status": "processing", "request_id": request_id });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    if wants_stream {
        return Ok(stream_answer(relay, request_id, request, metadata).into_response());
    }
    let result = relay.ask(&request).await;
    record(&relay, &request_id, &request, metadata, &result).await?;
    match result {
        Ok(answer) => Ok(Json(answer_body(&request_id, &answer)).into_response()),
        Err(e) => {
            tracing::warn!(error = %e, request_id = %request_id, "agent query failed");
            Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
        }
    }
}

/// The JSON a plain call returns; also the `done` event of a streamed one.
fn answer_body(request_id: &str, answer: &AgentAnswer) -> Value {
    json!({
        "request_id": request_id,
        "response": answer.response,
        "session_id": answer.session_id,
        "sources": answer.sources,
    })
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// A streamed answer. The agent call runs on a task of the relay's (so the `query`
/// event is recorded even when the client goes away); its text arrives through
/// `pieces` and its outcome through `outcome`. Today `Relay::ask` gives a whole answer,
/// sent as one piece; a streaming agent port sends each piece into `tx` instead.
fn stream_answer(
    relay: Relay,
    request_id: String,
    request: AgentRequest,
    metadata: Option<Value>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, pieces) = mpsc::channel::<String>(64);
    let (outcome_tx, outcome) = oneshot::channel::<Result<Value, String>>();
    let task_relay = relay.clone();
    relay.spawn(async move {
        let relay = task_relay;
        let result = ask_streaming(&relay, &request, &tx).await;
        drop(tx);
        let recorded = record(&relay, &request_id, &request, metadata, &result).await;
        let end = match (result, recorded) {
            (Ok(answer), Ok(())) => Ok(answer_body(&request_id, &answer)),
            (Err(e), _) => {
                tracing::warn!(error = %e, request_id = %request_id, "agent query failed");
                Err(e.to_string())
            }
            (Ok(_), Err(e)) => Err(e.message),
        };
        let _ = outcome_tx.send(end);
    });
    let outcome = async move {
        outcome
            .await
            .unwrap_or_else(|_| Err("the answer was lost".to_string()))
    };
    sse_answer(receiver_stream(pieces), outcome)
}

/// Asks the agent through the relay and sends each piece of the answer to `tx` as it
/// is written; returns the whole answer. A client that went away is no reason to stop
/// reading: the `query` event still gets the whole answer.
async fn ask_streaming(
    relay: &Relay,
    request: &AgentRequest,
    tx: &mpsc::Sender<String>,
) -> Result<AgentAnswer, AgentError> {
    let mut answer = relay.ask_stream(request).await?;
    while let Some(event) = answer.next().await {
        match event? {
            AnswerEvent::Delta(piece) => {
                let _ = tx.send(piece).await;
            }
            AnswerEvent::Done(whole) => return Ok(whole),
        }
    }
    Err(AgentError::Malformed(
        "the answer ended before it was complete".into(),
    ))
}

/// The text pieces a channel receives, as a stream that ends when every sender is gone.
pub fn receiver_stream(rx: mpsc::Receiver<String>) -> impl Stream<Item = String> {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) })
}

/// The SSE framing of an answer: `event: delta` with `{"text": piece}` for each piece
/// as it arrives, then, once `pieces` ends, `event: done` with the JSON `outcome`
/// resolves to, or `event: error` with `{"error": ...}`.
pub fn sse_answer<P, O>(pieces: P, outcome: O) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    P: Stream<Item = String> + Send + 'static,
    O: Future<Output = Result<Value, String>> + Send + 'static,
{
    let deltas = pieces
        .filter(|p| std::future::ready(!p.is_empty()))
        .map(|text| {
            Event::default()
                .event("delta")
                .data(json!({ "text": text }).to_string())
        });
    let end = stream::once(async move {
        match outcome.await {
            Ok(done) => Event::default().event("done").data(done.to_string()),
            Err(error) => Event::default()
                .event("error")
                .data(json!({ "error": error }).to_string()),
        }
    });
    Sse::new(deltas.chain(end).map(Ok)).keep_alive(KeepAlive::default())
}

/// An async query as the journal keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeftQuery {
    request_id: String,
    query: String,
    session_id: Option<String>,
    personality_id: Option<String>,
    max_results: Option<u32>,
    metadata: Option<Value>,
}

impl LeftQuery {
    fn request(&self) -> AgentRequest {
        AgentRequest {
            query: self.query.clone(),
            session_id: self.session_id.clone(),
            personality_id: self.personality_id.clone(),
            max_results: self.max_results,
            ..AgentRequest::default()
        }
    }
}

/// Asks the agent for a journaled async query and records its events with the
/// journal's move, in one transaction.
async fn answer_left(relay: Relay, turn: String, left: LeftQuery) {
    let request = left.request();
    let id = left.request_id;
    let result = relay.ask(&request).await;
    let state = match &result {
        Ok(_) => TurnState::Answered,
        Err(e) => {
            tracing::warn!(error = %e, request_id = %id, "async agent query failed");
            TurnState::Failed
        }
    };
    let outcome = result.map_err(|e| (e.to_string(), "agent_error"));
    let events = events_for(&id, &request, left.metadata, &outcome);
    if let Err(e) = relay.finish_query(&turn, events, state).await {
        tracing::error!(error = %e, request_id = %id, "could not record the query event");
    }
}

/// At start-up (and, with replicas sharing the store, every 10 s until shutdown):
/// the async queries a stopped process answered 202 and never recorded are asked
/// again (their `query` event delivered after all); one older than
/// `RECOVERY_WINDOW` is given up (`reply.failed`, `abandoned`).
pub async fn recover(relay: Relay) {
    loop {
        recover_once(&relay).await;
        let Some(every) = relay.takeover_every() else {
            return;
        };
        tokio::time::sleep(every).await;
        if !relay.is_accepting() {
            return;
        }
    }
}

async fn recover_once(relay: &Relay) {
    let left = match relay.left_queries().await {
        Ok(left) => left,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the turn journal; left async queries wait for the next start");
            return;
        }
    };
    let now = OffsetDateTime::now_utc();
    for (turn, body, received) in left {
        let Ok(query) = serde_json::from_str::<LeftQuery>(&body) else {
            tracing::warn!(turn, "an unreadable journaled query is given up");
            if let Err(e) = relay
                .finish_query(&turn, Vec::new(), TurnState::Failed)
                .await
            {
                tracing::warn!(error = %e, turn, "could not give the query up");
            }
            continue;
        };
        if now - received > relay.recovery_window() {
            tracing::warn!(request_id = %query.request_id, "an async query older than RECOVERY_WINDOW is given up");
            let cause = "not answered before the bridge stopped; older than RECOVERY_WINDOW when it came back";
            let outcome = Err((cause.to_owned(), "abandoned"));
            let events = events_for(
                &query.request_id,
                &query.request(),
                query.metadata,
                &outcome,
            );
            if let Err(e) = relay
                .finish_query(&turn, events, TurnState::Abandoned)
                .await
            {
                tracing::error!(error = %e, "could not record the abandoned query");
            }
            continue;
        }
        tracing::info!(request_id = %query.request_id, "asking again an async query the previous process did not answer");
        relay.spawn(answer_left(relay.clone(), turn, query));
    }
}

async fn record(
    relay: &Relay,
    request_id: &str,
    request: &AgentRequest,
    metadata: Option<Value>,
    result: &Result<AgentAnswer, AgentError>,
) -> ApiResult<()> {
    if !relay.wants_events() {
        return Ok(());
    }
    let outcome = match result {
        Ok(answer) => Ok(answer.clone()),
        Err(e) => Err((e.to_string(), "agent_error")),
    };
    relay
        .record(events_for(request_id, request, metadata, &outcome))
        .await
        .map_err(ApiError::from)
}

/// A `query` event for every outcome, plus `reply.failed` when the agent failed.
fn events_for(
    request_id: &str,
    request: &AgentRequest,
    metadata: Option<Value>,
    result: &Result<AgentAnswer, (String, &'static str)>,
) -> Vec<OutboxEvent> {
    let now = OffsetDateTime::now_utc();
    let (response, session_id, error) = match result {
        Ok(a) => (
            Some(a.response.clone()),
            a.session_id.clone().or(request.session_id.clone()),
            None,
        ),
        Err((e, _)) => (None, request.session_id.clone(), Some(e.clone())),
    };
    let reason = match result {
        Err((_, reason)) => *reason,
        Ok(_) => "agent_error",
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
            metadata,
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
                reason,
            },
            now,
        ));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn sse_answer_frames_each_piece_then_done_or_error() {
        let (tx, rx) = mpsc::channel(4);
        let sending = async move {
            for piece in ["Hel", "", "lo"] {
                tx.send(piece.to_string()).await.ok();
            }
        };
        sending.await;
        let done = async { Ok(json!({"response": "Hello"})) };
        let resp = sse_answer(receiver_stream(rx), done).into_response();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let text = String::from_utf8(body.unwrap_or_default().to_vec()).unwrap_or_default();
        assert_eq!(
            text,
            "event: delta\ndata: {\"text\":\"Hel\"}\n\n\
             event: delta\ndata: {\"text\":\"lo\"}\n\n\
             event: done\ndata: {\"response\":\"Hello\"}\n\n"
        );

        let failed = async { Err("agent down".to_string()) };
        let resp = sse_answer(stream::empty(), failed).into_response();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let text = String::from_utf8(body.unwrap_or_default().to_vec()).unwrap_or_default();
        assert_eq!(text, "event: error\ndata: {\"error\":\"agent down\"}\n\n");
    }
}
