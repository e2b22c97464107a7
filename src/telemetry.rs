//! Logging set-up: `RUST_LOG` filter, `LOG_FORMAT` pretty or JSON, always to stderr
//! so that the console chat owns stdout.
//!
//! Secrets never reach a log line: they only exist as `SecretString`s, whose `Debug`
//! is redacted, no code of ours logs a request's headers, and the SDK and transport
//! crates that might (at debug/trace) are capped whatever `RUST_LOG` says.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Caps applied over any `RUST_LOG`, so that even `RUST_LOG=trace` cannot print a
/// secret: serenity's HTTP spans carry interaction routes (whose path holds a
/// 15-minute interaction token), and the transport crates log frames and headers
/// (a gateway IDENTIFY carries the bot token) at debug and trace.
const SECRET_SAFE_CAPS: [&str; 10] = [
    "serenity::http=warn",
    "serenity::gateway=info",
    "tungstenite=info",
    "tokio_tungstenite=info",
    "h2=info",
    "hyper=info",
    "hyper_util=info",
    "reqwest=info",
    "rustls=info",
    "slack_morphism=info",
];

/// The filter for `RUST_LOG`: its directives, with every one that names a capped
/// crate or one of its modules (`tungstenite::protocol=trace`, or a bare
/// `hyper::proto`, which means trace) lowered to the cap, and then the caps
/// themselves. EnvFilter lets the most specific directive win, so appending the caps
/// alone would not hold against a directive for a submodule.
pub fn filter(spec: &str) -> EnvFilter {
    let capped = cap_directives(spec);
    let mut filter = EnvFilter::try_new(&capped).unwrap_or_else(|e| {
        eprintln!("RUST_LOG: {e}; falling back to \"info\"");
        EnvFilter::new("info")
    });
    for cap in SECRET_SAFE_CAPS {
        if let Ok(directive) = lowered_cap(&capped, cap).parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// A cap never *raises* its crate: with `RUST_LOG=warn` serenity's gateway stays at
/// warn, not the cap's info. The crate gets the lower of its cap and what `spec`
/// already gives it — its own directive, else the bare default level (EnvFilter's
/// `error` when there is none).
fn lowered_cap(spec: &str, cap: &str) -> String {
    let Some((crate_target, cap_level)) = cap.split_once('=') else {
        return cap.to_owned();
    };
    let cap_level: LevelFilter = cap_level.parse().unwrap_or(LevelFilter::INFO);
    let mut default = LevelFilter::ERROR;
    // The most specific directive naming the crate or a parent of it (`serenity` for
    // `serenity::gateway`); submodules were lowered already.
    let mut own: Option<(usize, LevelFilter)> = None;
    for directive in spec.split(',').map(str::trim) {
        match directive.split_once('=') {
            Some((target, level)) => {
                let target = target.trim();
                let covers = crate_target == target
                    || crate_target
                        .strip_prefix(target)
                        .is_some_and(|rest| rest.starts_with("::"));
                if let (true, Ok(level)) = (covers, level.trim().parse::<LevelFilter>()) {
                    if own.is_none_or(|(len, _)| target.len() >= len) {
                        own = Some((target.len(), level));
                    }
                }
            }
            None => {
                if let Ok(level) = directive.parse::<LevelFilter>() {
                    default = level;
                }
            }
        }
    }
    let asked = own.map_or(default, |(_, level)| level);
    format!("{crate_target}={}", asked.min(cap_level))
}

/// Rewrites `spec` so that no directive enables a capped target above its cap.
fn cap_directives(spec: &str) -> String {
    spec.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|directive| {
            let (selector, level) = match directive.rsplit_once('=') {
                // `=` inside a field filter (`[span{x=1}]`) is not the level's.
                Some((selector, level)) if !level.contains(']') => (selector, Some(level)),
                _ => (directive, None),
            };
            let target = selector.split('[').next().unwrap_or_default().trim();
            let cap = SECRET_SAFE_CAPS.iter().find_map(|cap| {
                let (crate_target, cap_level) = cap.split_once('=')?;
                let names_it = target == crate_target
                    || target
                        .strip_prefix(crate_target)
                        .is_some_and(|rest| rest.starts_with("::"));
                names_it.then_some(cap_level)
            });
            let Some(cap_level) = cap else {
                return directive.to_owned();
            };
            let cap_filter: LevelFilter = cap_level.parse().unwrap_or(LevelFilter::INFO);
            // A bare target means "everything" (trace); an unreadable level is lowered too.
            let asked = match level {
                None => LevelFilter::TRACE,
                Some(level) => level.trim().parse().unwrap_or(LevelFilter::TRACE),
            };
            format!("{selector}={}", asked.min(cap_filter))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the global subscriber. Calling it twice is harmless (the second call is
/// ignored), which lets tests and `main` share it.
pub fn init(cfg: &LogConfig) {
    let filter = filter(&cfg.filter);
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the filter built from `spec` lets through of one event per level.
    fn printed(spec: &str, target_events: impl Fn()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = fmt()
            .with_env_filter(filter(spec))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, target_events);
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn rust_log_cannot_raise_a_capped_crate_or_its_modules_above_its_cap() {
        for spec in [
            "trace",
            "info,tungstenite::protocol=trace",
            "tungstenite::protocol",
            "tungstenite=trace",
            "info,tungstenite::protocol[frame]=trace",
            "debug,hyper::proto::h1=trace,h2::codec=debug,reqwest::connect=trace",
            "serenity::gateway::shard=trace,serenity::http::client=debug",
            "slack_morphism::hyper_tokio=trace,rustls::client=trace",
            "tokio_tungstenite::compat=trace",
        ] {
            let out = printed(spec, || {
                tracing::trace!(target: "tungstenite::protocol", "SECRET-tungstenite");
                tracing::debug!(target: "tungstenite::protocol", "SECRET-tungstenite-debug");
                tracing::trace!(target: "hyper::proto::h1", "SECRET-hyper");
                tracing::debug!(target: "h2::codec", "SECRET-h2");
                tracing::trace!(target: "reqwest::connect", "SECRET-reqwest");
                tracing::trace!(target: "serenity::gateway::shard", "SECRET-gateway");
                tracing::info!(target: "serenity::http::client", "SECRET-http");
                tracing::trace!(target: "slack_morphism::hyper_tokio", "SECRET-slack");
                tracing::debug!(target: "rustls::client", "SECRET-rustls");
                tracing::trace!(target: "tokio_tungstenite::compat", "SECRET-tt");
                tracing::info!(target: "tungstenite::protocol", "info is allowed");
            });
            assert!(!out.contains("SECRET"), "RUST_LOG={spec} printed: {out}");
        }
        let out = printed("info,tungstenite::protocol=trace", || {
            tracing::info!(target: "tungstenite::protocol", "info is allowed");
            tracing::trace!(target: "agent_bridge::relay", "ours at trace");
        });
        assert!(out.contains("info is allowed"), "{out}");
        assert!(!out.contains("ours at trace"), "{out}");
        // A cap only ever lowers: under `warn`, a capped crate's info stays out.
        let out = printed("warn", || {
            tracing::info!(target: "serenity::gateway::shard", "gateway info");
            tracing::warn!(target: "serenity::gateway::shard", "gateway warn");
            tracing::info!(target: "hyper::proto", "hyper info");
        });
        assert!(out.contains("gateway warn"), "{out}");
        assert!(
            !out.contains("gateway info") && !out.contains("hyper info"),
            "{out}"
        );
        for spec in [
            "info",
            "warn,serenity=info",
            "error,serenity::gateway=debug",
        ] {
            let out = printed(spec, || {
                tracing::info!(target: "serenity::gateway::shard", "gateway info");
            });
            assert!(out.contains("gateway info"), "RUST_LOG={spec}: {out}");
        }
        let out = printed("agent_bridge=trace", || {
            tracing::trace!(target: "agent_bridge::relay", "ours at trace");
        });
        assert!(out.contains("ours at trace"), "{out}");
    }
}
