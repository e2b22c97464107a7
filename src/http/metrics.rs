//! `GET /metrics`: the relay's counters plus gauges read at scrape time, in the
//! Prometheus text format (version 0.0.4).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    state.relay.metrics().render(&mut out);
    gauge(
        &mut out,
        "bridge_queue_depth",
        "Turns accepted and not yet answered.",
        state.relay.pending_turns(),
    );
    gauge(
        &mut out,
        "bridge_conversations_cached",
        "Conversations in the in-memory map.",
        state.relay.cached_conversations(),
    );
    let _ = writeln!(
        out,
        "# HELP bridge_part_up Whether each enabled part is connected (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE bridge_part_up gauge");
    for (name, up) in state.readiness.parts() {
        let _ = writeln!(out, "bridge_part_up{{part=\"{name}\"}} {}", u8::from(up));
    }
    for (name, help, value) in state.readiness.gauges().await {
        gauge(&mut out, name, help, value);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}
