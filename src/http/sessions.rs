//! `/sessions`: the conversations the bridge knows, a session's transcript (what a
//! poller reads), and resetting a session. Thin over the relay and the store.

use axum::extract::State;

use super::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::{ApiError, ApiResult};
use super::AppState;

#[derive(Deserialize)]
pub struct ListParams {
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> ApiResult<impl IntoResponse> {
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let conversations = state.relay.store().conversations(limit).await?;
    let sessions: Vec<_> = conversations
        .iter()
        .map(|c| {
            json!({
                "key": c.key.as_str(),
                "session_id": c.agent_session,
                "personality": c.personality,
                "last_activity": rfc3339(c.last_activity),
                "platform": c.platform.as_str(),
                "workspace": c.workspace,
                "channel_id": c.channel,
                "thread": c.thread,
                "user_id": c.user,
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": sessions })))
}

#[derive(Deserialize)]
pub struct HistoryParams {
    since: Option<String>,
}

pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HistoryParams>,
) -> ApiResult<impl IntoResponse> {
    let since = match params.since.as_deref() {
        None | Some("") => None,
        Some(s) => Some(OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
            ApiError::bad_request(format!(
                "since: {s:?} is not an RFC 3339 timestamp (e.g. 2026-01-31T12:00:00Z)"
            ))
        })?),
    };
    let store = state.relay.store();
    let rows = store.history(&id, since).await?;
    // An empty page is normal for a poller; an id nobody has ever used is a mistake
    // worth a 404.
    if rows.is_empty()
        && store.history(&id, None).await?.is_empty()
        && store.conversations_by_session(&id).await?.is_empty()
    {
        return Err(ApiError::not_found(format!("no session {id}")));
    }
    let messages: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "role": r.role.as_str(),
                "content": r.content,
                "timestamp": rfc3339(r.timestamp),
                "platform": r.platform.as_str(),
                "channel_id": r.channel,
                "thread": r.thread,
                "user_id": r.user,
                "message_id": r.message_id,
            })
        })
        .collect();
    Ok(Json(json!({ "session_id": id, "messages": messages })))
}

pub async fn reset(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    match state.relay.reset_session(&id).await? {
        0 => Err(ApiError::not_found(format!(
            "no conversation uses session {id}"
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
