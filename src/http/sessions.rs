//! `/sessions`: the conversations the bridge knows, a session's transcript (what a
//! poller reads), and resetting a session. Thin over the relay and the store.

use std::collections::{BTreeMap, HashMap};

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
use crate::core::ports::{Role, TranscriptEntry};

#[derive(Deserialize)]
pub struct ListParams {
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> ApiResult<impl IntoResponse> {
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let conversations = state.conversations.conversations(limit).await?;
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
    limit: Option<u32>,
    after: Option<i64>,
}

/// `limit` of a history page: 100 by default, at most 1000.
const HISTORY_DEFAULT_LIMIT: u32 = 100;
const HISTORY_MAX_LIMIT: u32 = 1000;

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
    let limit = params.limit.unwrap_or(HISTORY_DEFAULT_LIMIT);
    if !(1..=HISTORY_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is not between 1 and {HISTORY_MAX_LIMIT}"
        )));
    }
    let rows = state
        .transcripts
        .history_page(&id, since, params.after, limit as usize)
        .await?;
    // An empty page is normal for a poller; an id with no messages at all is a
    // mistake worth a 404. One row of the session (an index lookup on the transcript,
    // never a scan of the conversations) tells them apart, so a session whose every
    // message was purged (`TRANSCRIPT_RETENTION_DAYS`) reads as unknown too.
    if rows.is_empty()
        && state
            .transcripts
            .history_page(&id, None, None, 1)
            .await?
            .is_empty()
    {
        return Err(ApiError::not_found(format!(
            "no session {id} (or every message of it is older than TRANSCRIPT_RETENTION_DAYS)"
        )));
    }
    // A full page may have a following one; its path continues after the last id.
    let next = match rows.last() {
        Some(last) if rows.len() == limit as usize => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(since) = params.since.as_deref().filter(|s| !s.is_empty()) {
                query.append_pair("since", since);
            }
            query.append_pair("limit", &limit.to_string());
            query.append_pair("after", &last.id.to_string());
            let path_id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
            serde_json::Value::from(format!("/sessions/{path_id}/history?{}", query.finish()))
        }
        _ => serde_json::Value::Null,
    };
    // Feedback hangs on an answer's last message (the one with the buttons): one
    // lookup per channel on the page, none for a page without answers.
    let last_message = |r: &TranscriptEntry| {
        (r.role == Role::Assistant)
            .then(|| {
                r.message_id
                    .as_deref()?
                    .rsplit(',')
                    .next()
                    .map(str::to_owned)
            })
            .flatten()
    };
    let mut by_channel: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in &rows {
        if let Some(id) = last_message(r) {
            by_channel.entry(r.channel.as_str()).or_default().push(id);
        }
    }
    let mut feedback: HashMap<(String, String), Vec<serde_json::Value>> = HashMap::new();
    for (channel, ids) in by_channel {
        for f in state.relay.feedback_on(channel, &ids).await? {
            feedback
                .entry((channel.to_owned(), f.message_id))
                .or_default()
                .push(json!({
                    "user_id": f.user,
                    "value": if f.positive { "positive" } else { "negative" },
                }));
        }
    }
    let messages: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut message = json!({
                "id": r.id,
                "role": r.role.as_str(),
                "content": r.content,
                "timestamp": rfc3339(r.timestamp),
                "platform": r.platform.as_str(),
                "channel_id": r.channel,
                "thread": r.thread,
                "user_id": r.user,
                "message_id": r.message_id,
            });
            let given = last_message(r).and_then(|id| feedback.get(&(r.channel.clone(), id)));
            if let Some(given) = given {
                message["feedback"] = serde_json::Value::from(given.clone());
            }
            message
        })
        .collect();
    Ok(Json(
        json!({ "session_id": id, "messages": messages, "next": next }),
    ))
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
