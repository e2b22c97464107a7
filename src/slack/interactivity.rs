//! Clicks on the bridge's messages (SPEC §5 feedback): `block_actions` payloads from
//! `POST /slack/interactivity` (a signed form with one `payload` field, limited and
//! verified like `/slack/events`) or from Socket Mode `interactive` envelopes. Both
//! end in [`on_payload`]: a `feedback_buttons` click `{turn_id}:up|down` becomes a
//! [`FeedbackClick`] for the relay, recorded in the background — Slack has its
//! acknowledgement before the store is touched.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::{debug, warn};

use super::web_api::FEEDBACK_ACTION;
use super::Shared;
use crate::core::error::Detail;
use crate::core::ports::FeedbackClick;
use crate::core::Platform;
use crate::http::error::ApiError;

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    user: Option<Id>,
    #[serde(default)]
    team: Option<Id>,
    #[serde(default)]
    channel: Option<Id>,
    #[serde(default)]
    container: Option<Container>,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
struct Id {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Container {
    #[serde(default)]
    message_ts: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    thread_ts: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Action {
    #[serde(default)]
    action_id: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

/// `POST /slack/interactivity`: verify, then hand the `payload` field on.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    signed: super::events::Signed,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match super::events::verified_body(&shared, &signed, body) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    let Some(payload) = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
    else {
        return ApiError::bad_request("no payload field").into_response();
    };
    match on_payload(&shared, &payload) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(why) => ApiError::bad_request(why.to_string()).into_response(),
    }
}

/// One interaction payload, from either transport. Feedback clicks are recorded on
/// the relay's tracker (shutdown waits for them); everything else is acknowledged and
/// ignored.
pub(crate) fn on_payload(shared: &Arc<Shared>, payload: &str) -> Result<(), Detail> {
    let payload: Payload =
        serde_json::from_str(payload).map_err(|e| Detail::caused_by("malformed payload", e))?;
    if payload.kind != "block_actions" {
        debug!(kind = %payload.kind, "interaction type not handled");
        return Ok(());
    }
    let Some(user) = payload.user.and_then(|u| u.id) else {
        return Err("block_actions without a user".into());
    };
    let container = payload.container;
    let channel = container
        .as_ref()
        .and_then(|c| c.channel_id.clone())
        .or_else(|| payload.channel.and_then(|c| c.id));
    let message_ts = container.as_ref().and_then(|c| c.message_ts.clone());
    let (Some(channel), Some(message_ts)) = (channel, message_ts) else {
        debug!("block_actions outside a message; ignored");
        return Ok(());
    };
    let workspace = payload
        .team
        .and_then(|t| t.id)
        .or_else(|| shared.identity.get().map(|me| me.team_id.clone()))
        .unwrap_or_default();
    let thread = container
        .and_then(|c| c.thread_ts)
        .or_else(|| Some(message_ts.clone()));
    for action in payload.actions {
        if action.action_id.as_deref() != Some(FEEDBACK_ACTION) {
            continue;
        }
        let Some((turn_id, positive)) = action.value.as_deref().and_then(parse_value) else {
            warn!(
                value = action.value.as_deref(),
                "feedback click with an unknown value"
            );
            continue;
        };
        let click = FeedbackClick {
            turn_id,
            platform: Platform::Slack,
            workspace: workspace.clone(),
            channel: channel.clone(),
            thread: thread.clone(),
            user: user.clone(),
            message_id: message_ts.clone(),
            positive,
        };
        let relay = shared.relay.clone();
        shared.relay.spawn(async move {
            if let Err(e) = relay.feedback(click).await {
                warn!(error = %e, "could not record feedback");
            }
        });
    }
    Ok(())
}

/// `{turn_id}:up` / `{turn_id}:down` (the buttons' values).
pub fn parse_value(value: &str) -> Option<(String, bool)> {
    let (turn, vote) = value.rsplit_once(':')?;
    let positive = match vote {
        "up" => true,
        "down" => false,
        _ => return None,
    };
    (!turn.is_empty()).then(|| (turn.to_owned(), positive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn button_values_name_the_turn_and_the_vote() {
        assert_eq!(parse_value("t-1:up"), Some(("t-1".into(), true)));
        assert_eq!(parse_value("t-1:down"), Some(("t-1".into(), false)));
        assert_eq!(parse_value("t-1:sideways"), None);
        assert_eq!(parse_value(":up"), None);
        assert_eq!(parse_value("up"), None);
    }
}
