//! Counters and histograms for `/metrics`, kept as atomics so the hot path pays one
//! relaxed increment. `http::metrics` renders them in the Prometheus text format;
//! gauges that are cheaper to read than to maintain (queue depth, outbox backlog)
//! are read at scrape time instead.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use super::message::Platform;
use super::relay::TurnOutcome;

/// Upper bounds of the agent latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Platform events received, by `platform` (the index, see [`platform_index`])
    /// and `kind` (`app_mention`, `message`, …).
    events: [DashMap<String, AtomicU64>; 3],
    /// Turns by how they ended.
    turns: DashMap<&'static str, AtomicU64>,
    /// Agent call latency.
    agent_latency: Histogram,
    /// Webhook delivery attempts by outcome (`delivered`, `retrying`, `failed`, `disabled`).
    deliveries: DashMap<&'static str, AtomicU64>,
    /// Slack requests refused for a missing or bad signature.
    slack_signatures_refused: AtomicU64,
    /// Journaled turns answered after a restart, and given up past `RECOVERY_WINDOW`.
    turns_recovered: AtomicU64,
    turns_abandoned: AtomicU64,
    /// Discord shards this replica holds now, and shards it took from a replica whose
    /// lease had run out.
    shards_held: AtomicU64,
    shard_takeovers: AtomicU64,
}

fn platform_index(platform: Platform) -> usize {
    match platform {
        Platform::Discord => 0,
        Platform::Slack => 1,
        Platform::Console | Platform::Api => 2,
    }
}

impl Metrics {
    pub fn event_received(&self, platform: Platform, kind: &str) {
        let events = &self.events[platform_index(platform)];
        // Look up without allocating; the key is only built the first time.
        if let Some(counter) = events.get(kind) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        events
            .entry(kind.to_string())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn turn_recovered(&self) {
        self.turns_recovered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn turn_abandoned(&self) {
        self.turns_abandoned.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_shards_held(&self, n: usize) {
        self.shards_held.store(n as u64, Ordering::Relaxed);
    }

    pub fn shard_taken_over(&self) {
        self.shard_takeovers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn turn_ended(&self, outcome: TurnOutcome) {
        let label = match outcome {
            TurnOutcome::Answered => "answered",
            TurnOutcome::Command => "command",
            TurnOutcome::Failed => "failed",
            TurnOutcome::Lost => "lost",
            TurnOutcome::Ignored => "ignored",
            TurnOutcome::RateLimited => "rate_limited",
            TurnOutcome::Duplicate => "duplicate",
        };
        bump(&self.turns, label);
    }

    pub fn turn_busy(&self) {
        bump(&self.turns, "busy");
    }

    pub fn agent_call(&self, took: Duration) {
        self.agent_latency.observe(took);
    }

    /// Counts a Slack request refused for its signature.
    pub fn slack_signature_refused(&self) {
        self.slack_signatures_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn delivery(&self, outcome: &'static str) {
        bump(&self.deliveries, outcome);
    }

    /// Appends the counters and histograms in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP bridge_events_received_total Platform events received."
        );
        let _ = writeln!(out, "# TYPE bridge_events_received_total counter");
        let mut events: Vec<_> = [Platform::Discord, Platform::Slack, Platform::Console]
            .into_iter()
            .flat_map(|platform| {
                self.events[platform_index(platform)].iter().map(move |e| {
                    (
                        platform.as_str(),
                        e.key().clone(),
                        e.value().load(Ordering::Relaxed),
                    )
                })
            })
            .collect();
        events.sort();
        for (platform, kind, n) in events {
            let _ = writeln!(
                out,
                "bridge_events_received_total{{platform=\"{platform}\",kind=\"{}\"}} {n}",
                escape(&kind)
            );
        }
        render_labelled(
            out,
            "bridge_turns_total",
            "Chat turns by outcome.",
            "outcome",
            &self.turns,
        );
        render_labelled(
            out,
            "bridge_webhook_deliveries_total",
            "Webhook delivery attempts by outcome.",
            "outcome",
            &self.deliveries,
        );
        let _ = writeln!(
            out,
            "# HELP bridge_slack_signatures_refused_total Slack requests refused for a missing or bad signature."
        );
        let _ = writeln!(out, "# TYPE bridge_slack_signatures_refused_total counter");
        let _ = writeln!(
            out,
            "bridge_slack_signatures_refused_total {}",
            self.slack_signatures_refused.load(Ordering::Relaxed)
        );
        for (name, help, counter) in [
            (
                "bridge_turns_recovered_total",
                "Turns a previous process accepted and this one answered.",
                &self.turns_recovered,
            ),
            (
                "bridge_turns_abandoned_total",
                "Turns older than RECOVERY_WINDOW when the bridge came back, given up.",
                &self.turns_abandoned,
            ),
            (
                "bridge_discord_shard_takeovers_total",
                "Discord shards taken over from a replica whose lease ran out.",
                &self.shard_takeovers,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP bridge_discord_shards_held Discord shards this replica holds."
        );
        let _ = writeln!(out, "# TYPE bridge_discord_shards_held gauge");
        let _ = writeln!(
            out,
            "bridge_discord_shards_held {}",
            self.shards_held.load(Ordering::Relaxed)
        );
        self.agent_latency
            .render(out, "bridge_agent_latency_seconds", "Agent call latency.");
    }
}

fn bump(map: &DashMap<&'static str, AtomicU64>, label: &'static str) {
    if let Some(counter) = map.get(label) {
        counter.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.entry(label)
        .or_default()
        .fetch_add(1, Ordering::Relaxed);
}

fn render_labelled(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    map: &DashMap<&'static str, AtomicU64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let mut rows: Vec<_> = map
        .iter()
        .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
        .collect();
    rows.sort();
    for (value, n) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Label values come from platforms (event kinds); quote them safely.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.event_received(Platform::Slack, "app_mention");
        m.event_received(Platform::Slack, "app_mention");
        m.event_received(Platform::Discord, "MESSAGE_CREATE");
        m.turn_ended(TurnOutcome::Answered);
        m.turn_busy();
        m.agent_call(Duration::from_millis(3));
        m.agent_call(Duration::from_millis(300));
        m.agent_call(Duration::from_secs(60));
        m.delivery("delivered");
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "bridge_events_received_total{platform=\"slack\",kind=\"app_mention\"} 2",
            "bridge_events_received_total{platform=\"discord\",kind=\"MESSAGE_CREATE\"} 1",
            "bridge_turns_total{outcome=\"answered\"} 1",
            "bridge_turns_total{outcome=\"busy\"} 1",
            "bridge_agent_latency_seconds_bucket{le=\"0.005\"} 1",
            "bridge_agent_latency_seconds_bucket{le=\"0.5\"} 2",
            "bridge_agent_latency_seconds_bucket{le=\"30\"} 2",
            "bridge_agent_latency_seconds_bucket{le=\"+Inf\"} 3",
            "bridge_agent_latency_seconds_count 3",
            "bridge_webhook_deliveries_total{outcome=\"delivered\"} 1",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
    }
}
