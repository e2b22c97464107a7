//! `/healthz` (the process is alive) and `/readyz` (the store answers, every enabled
//! platform is connected, and the bridge is not shutting down). The agent is probed
//! and reported in the body, but its outage alone does not make the bridge unready
//! (SPEC §6): users still get `ERROR_REPLY`, and taking every replica out of the load
//! balancer would only turn that into connection errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};

use super::AppState;

/// What `/readyz` reports besides the store: one flag per enabled part, flipped by
/// the part itself (a platform sets its flag when connected), plus the draining flag
/// set at shutdown so load balancers stop sending work.
/// A part's name and its "connected" flag.
type Part = (&'static str, Arc<AtomicBool>);

/// A gauge read at scrape time (e.g. the webhook outbox backlog, which lives in the
/// store): name, help, and an async reader.
pub type GaugeFn =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> + Send + Sync>;

/// A registered gauge: name, help text, reader.
type Gauge = (&'static str, &'static str, GaugeFn);

#[derive(Clone, Default)]
pub struct Readiness {
    parts: Arc<std::sync::RwLock<Vec<Part>>>,
    gauges: Arc<std::sync::RwLock<Vec<Gauge>>>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Registers a part (e.g. `discord`), initially down; returns its flag.
    pub fn register(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut parts) = self.parts.write() {
            parts.push((name, flag.clone()));
        }
        flag
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Registers a gauge for `/metrics`.
    pub fn register_gauge(&self, name: &'static str, help: &'static str, read: GaugeFn) {
        if let Ok(mut gauges) = self.gauges.write() {
            gauges.push((name, help, read));
        }
    }

    pub(crate) async fn gauges(&self) -> Vec<(&'static str, &'static str, u64)> {
        let readers: Vec<_> = self
            .gauges
            .read()
            .map(|g| g.iter().map(|(n, h, f)| (*n, *h, f.clone())).collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(readers.len());
        for (name, help, read) in readers {
            out.push((name, help, read().await));
        }
        out
    }

    pub(crate) fn parts(&self) -> Vec<(&'static str, bool)> {
        self.snapshot()
    }

    fn snapshot(&self) -> Vec<(&'static str, bool)> {
        self.parts
            .read()
            .map(|p| {
                p.iter()
                    .map(|(n, f)| (*n, f.load(Ordering::Acquire)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

const AGENT_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut parts = Map::new();
    let mut ready = true;
    match state.conversations.ping().await {
        Ok(()) => {
            parts.insert("store".into(), json!("up"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            parts.insert("store".into(), json!("down"));
            ready = false;
        }
    }
    // The agent is reachable when `/health` answers within a short bound; a slow agent
    // must not make the probe itself time out.
    let agent = tokio::time::timeout(AGENT_PROBE_TIMEOUT, state.relay.agent().health()).await;
    match agent {
        Ok(Ok(())) => {
            parts.insert("agent".into(), json!("up"));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: agent unhealthy");
            parts.insert("agent".into(), json!("down"));
        }
        Err(_) => {
            tracing::warn!("readiness: agent health check timed out");
            parts.insert("agent".into(), json!("down"));
        }
    }
    for (name, up) in state.readiness.snapshot() {
        parts.insert(name.into(), json!(if up { "up" } else { "down" }));
        ready &= up;
    }
    let draining = state.readiness.draining.load(Ordering::Acquire);
    ready &= !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let label = match (ready, draining) {
        (true, _) => "ready",
        (false, true) => "draining",
        (false, false) => "not ready",
    };
    (
        status,
        Json(json!({ "status": label, "parts": Value::Object(parts) })),
    )
}
