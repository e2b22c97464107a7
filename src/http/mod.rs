//! The HTTP server: public routes (`/healthz`, `/readyz`, `/metrics`) and the admin API behind
//! bearer auth, with per-route body limits and JSON errors for everything, unknown
//! routes included. Handlers are thin: they parse, call the relay or the store, and
//! render.

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use std::sync::Arc;

use crate::core::ports::{Conversations, Transcripts};
use crate::core::Relay;

pub mod agent_query;
pub mod auth;
pub mod body;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod serve;
pub mod sessions;
pub mod ui;
pub mod webhooks;

pub use auth::AdminAuth;
pub use health::Readiness;
pub use Mounts as RouteMounts;

/// Admin request bodies above this are refused with 413.
pub const ADMIN_BODY_LIMIT: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub relay: Relay,
    /// The admin list and the readiness ping.
    pub conversations: Arc<dyn Conversations>,
    /// Session history pages.
    pub transcripts: Arc<dyn Transcripts>,
    pub readiness: Readiness,
    /// `AGENT_PERSONALITY` and `AGENT_MAX_RESULTS`, the proxy's defaults.
    pub default_personality: Option<String>,
    pub default_max_results: u32,
}

/// Routes other modules mount, each with its state already applied.
#[derive(Default)]
pub struct Mounts {
    /// Public routes (Slack's events endpoint).
    pub public: Router,
    /// Admin routes (webhooks); they get the admin auth and body limit.
    pub admin: Router,
}

pub fn router(state: AppState, auth: AdminAuth, mounts: Mounts) -> Router {
    // The console's static files: harmless when a token is configured (every API call
    // needs it anyway); without one, for loopback clients only, like the admin API.
    let console = if auth.has_token() {
        ui::routes()
    } else {
        ui::routes().route_layer(middleware::from_fn_with_state(
            auth.clone(),
            auth::require_admin,
        ))
    };
    let admin = Router::new()
        .route("/agent-query", post(agent_query::agent_query))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{id}/history", get(sessions::history))
        .route("/sessions/{id}", axum::routing::delete(sessions::reset))
        .with_state(state.clone())
        .merge(mounts.admin)
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(auth, auth::require_admin));

    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .with_state(state)
        .merge(mounts.public)
        .merge(admin)
        .merge(console)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("no such route")
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    )
}
