//! Logging set-up: `RUST_LOG` filter, `LOG_FORMAT` pretty or JSON, always to stderr
//! so that the console chat owns stdout.
//!
//! Secrets never reach a log line: they only exist as `SecretString`s, whose `Debug`
//! is redacted, no code of ours logs a request's headers, and the SDK and transport
//! crates that might (at debug/trace) are capped whatever `RUST_LOG` says.

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

/// Installs the global subscriber. Calling it twice is harmless (the second call is
/// ignored), which lets tests and `main` share it.
pub fn init(cfg: &LogConfig) {
    let mut filter = EnvFilter::try_new(&cfg.filter).unwrap_or_else(|e| {
        eprintln!("RUST_LOG: {e}; falling back to \"info\"");
        EnvFilter::new("info")
    });
    for cap in SECRET_SAFE_CAPS {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
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
