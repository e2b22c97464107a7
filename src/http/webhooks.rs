//! `/webhooks`: the admin API over [`WebhookService`] — register (and its aliases
//! `/webhooks/register`, `/register-webhook`), list, show, delete, replace the
//! subscribed events, the delivery log, manual retry, secret rotation, enable.
//!
//! Thin: parse the body with [`JsonBody`] (400/413/415 as JSON), call the service,
//! render. Secrets appear in exactly two answers: registration and rotation. The
//! router adds admin auth and the 64 KiB body limit to everything mounted here.

use axum::extract::State;

use super::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use crate::webhook::store::{AttemptRecord, DeliveryRecord, DeliveryStatus, WebhookEndpoint};
use crate::webhook::{NewEndpoint, ServiceError, WebhookService};

/// The routes, with their state applied, for `RouteMounts::admin`.
pub fn routes(service: WebhookService) -> Router {
    Router::new()
        .route("/webhooks", post(create).get(list))
        .route("/webhooks/register", post(create))
        .route("/register-webhook", post(create))
        .route("/webhooks/{id}", get(show).delete(remove))
        .route("/webhooks/{id}/events", post(set_events))
        .route("/webhooks/{id}/deliveries", get(deliveries))
        .route("/webhooks/{id}/deliveries/{delivery_id}/retry", post(retry))
        .route("/webhooks/{id}/secret/rotate", post(rotate_secret))
        .route("/webhooks/{id}/enable", post(enable))
        .with_state(service)
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(m) => ApiError::unprocessable(m),
            ServiceError::NotFound(m) => ApiError::not_found(m),
            ServiceError::Store(e) => ApiError::from(e),
            ServiceError::Seal(e) => ApiError::internal(e),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    url: String,
    events: Vec<String>,
    description: Option<String>,
    token: Option<String>,
    #[serde(default)]
    ordered: bool,
}

async fn create(
    State(service): State<WebhookService>,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<Response> {
    let endpoint = service
        .register(NewEndpoint {
            url: body.url,
            events: body.events,
            description: body.description,
            token: body.token,
            ordered: body.ordered,
        })
        .await?;
    let mut view = endpoint_json(&endpoint);
    // Shown once: no later answer carries it.
    view["secret"] = json!(endpoint.secret);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list(State(service): State<WebhookService>) -> ApiResult<Json<Value>> {
    let endpoints = service.list().await?;
    let views: Vec<_> = endpoints.iter().map(endpoint_json).collect();
    Ok(Json(json!({ "webhooks": views })))
}

async fn show(
    State(service): State<WebhookService>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(endpoint_json(&service.get(&id).await?)))
}

async fn remove(
    State(service): State<WebhookService>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    events: Vec<String>,
}

async fn set_events(
    State(service): State<WebhookService>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<EventsBody>,
) -> ApiResult<Json<Value>> {
    Ok(Json(endpoint_json(
        &service.set_events(&id, &body.events).await?,
    )))
}

#[derive(Debug, Deserialize)]
pub struct DeliveriesParams {
    limit: Option<u32>,
}

async fn deliveries(
    State(service): State<WebhookService>,
    Path(id): Path<String>,
    Query(params): Query<DeliveriesParams>,
) -> ApiResult<Json<Value>> {
    let limit = params.limit.unwrap_or(50).clamp(1, 500);
    let records = service.deliveries(&id, limit).await?;
    let views: Vec<_> = records.iter().map(delivery_json).collect();
    Ok(Json(json!({ "endpoint_id": id, "deliveries": views })))
}

async fn retry(
    State(service): State<WebhookService>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    // Delivery ids are integers; anything else names no delivery.
    let delivery = delivery_id.parse::<i64>().map_err(|_| {
        ApiError::not_found(format!(
            "no delivery {delivery_id} for webhook endpoint {id}"
        ))
    })?;
    service.retry(&id, delivery).await?;
    let body = json!({ "id": delivery, "endpoint_id": id, "status": "pending" });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn rotate_secret(
    State(service): State<WebhookService>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let rotated = service.rotate_secret(&id).await?;
    Ok(Json(json!({
        "id": id,
        "secret": rotated.secret,
        "previous_secret_expires_at": rfc3339(rotated.previous_expires_at),
    })))
}

async fn enable(
    State(service): State<WebhookService>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(endpoint_json(&service.enable(&id).await?)))
}

/// An endpoint without its secrets (the token is only said to exist).
fn endpoint_json(e: &WebhookEndpoint) -> Value {
    let rotation_ends = e
        .previous_secret_expires_at
        .filter(|t| *t > OffsetDateTime::now_utc() && e.previous_secret.is_some());
    json!({
        "id": e.id,
        "url": e.url,
        "events": e.events,
        "description": e.description,
        "ordered": e.ordered,
        "enabled": e.enabled,
        "disabled_reason": e.disabled_reason,
        "has_token": e.token.is_some(),
        "created_at": rfc3339(e.created_at),
        "previous_secret_expires_at": rotation_ends.map(rfc3339),
    })
}

fn delivery_json(d: &DeliveryRecord) -> Value {
    let next = (d.status == DeliveryStatus::Pending).then(|| rfc3339(d.next_attempt_at));
    let log: Vec<_> = d.attempt_log.iter().map(attempt_json).collect();
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "response_code": d.last_status_code,
        "latency_ms": d.last_duration_ms,
        "error": d.last_error,
        "next_attempt_at": next,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
        "attempt_log": log,
    })
}

fn attempt_json(a: &AttemptRecord) -> Value {
    json!({
        "attempted_at": rfc3339(a.attempted_at),
        "response_code": a.status_code,
        "latency_ms": a.duration_ms,
        "error": a.error,
        "response_body": a.response_body,
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
