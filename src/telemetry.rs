//! Logging set-up: `RUST_LOG` filter, `LOG_FORMAT` pretty or JSON, always to stderr
//! so that the console chat owns stdout.
//!
//! Secrets never reach a log line because they only exist as `SecretString`s, whose
//! `Debug` is redacted, and no code logs a request's headers.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it twice is harmless (the second call is
/// ignored), which lets tests and `main` share it.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.filter).unwrap_or_else(|e| {
        eprintln!("RUST_LOG: {e}; falling back to \"info\"");
        EnvFilter::new("info")
    });
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
