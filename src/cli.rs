//! The commands behind the binary (`agent-bridge run | console | migrate | check |
//! healthcheck`): load the configuration, start the runtime and logging, run the
//! command, turn the outcome into an exit code. `main.rs` only parses arguments into a
//! [`Command`] and calls [`main`]; `anyhow` lives only here and in `app`.
//!
//! What a command prints for the operator (check lines, "migrations applied") goes to
//! the writer it is given (stdout), not to the log.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::app::{App, Core, DEFAULT_SHUTDOWN_GRACE};
use crate::config::{AgentKind, Config};
use crate::core::error::Report;
use crate::{check, console, shutdown, telemetry};

/// What the binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start every configured part (the default).
    Run,
    /// Chat with the agent from the terminal; `Some` overrides `AGENT_KIND`.
    Console(Option<AgentKind>),
    /// Apply store migrations and exit.
    Migrate,
    /// Reach each configured part; fails if any is not reachable.
    Check,
    /// Succeeds if the local server answers `/healthz` (container probes).
    Healthcheck,
}

/// Runs `command` to its end: exit code 2 for a configuration error, 1 for any other
/// failure (logged, and printed to stderr).
pub fn main(command: Command, out: &mut dyn Write) -> ExitCode {
    let cfg = match Config::from_env() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // `TOKIO_WORKER_THREADS` (default: one per core; bench/README.md has the trade).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        telemetry::init(&cfg.log);
        match run(command, cfg, out).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // A cause may quote a configured URL with its credentials. `Report`,
                // not `{e:#}`: the store's and agent's errors show their cause already.
                let shown = crate::config::redact_url(&Report(e.as_ref()).to_string());
                tracing::error!(error = %shown, "agent-bridge failed");
                eprintln!("error: {shown}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(command: Command, mut cfg: Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        Command::Run => App::build(cfg).await?.run(shutdown::on_signal()).await,
        Command::Console(kind) => {
            if kind == Some(AgentKind::Echo) && cfg.agent.echo_delay.is_none() {
                // The demo shows an answer being written.
                cfg.agent.echo_delay = Some(Duration::from_millis(40));
            }
            let core = Core::open(&cfg, kind).await?;
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let options = console::ConsoleOptions {
                prompt: std::io::stdin().is_terminal(),
                grace: DEFAULT_SHUTDOWN_GRACE,
            };
            let stdout = tokio::io::stdout();
            console::run(core.relay, stdin, stdout, options, shutdown::on_signal()).await?;
            Ok(())
        }
        Command::Check => {
            let lines = check::run(&cfg).await;
            for line in &lines {
                writeln!(out, "{line}")?;
            }
            match lines.iter().filter(|l| !l.ok).count() {
                0 => Ok(()),
                n => Err(anyhow::anyhow!("{n} check(s) failed")),
            }
        }
        Command::Healthcheck => check::liveness(&cfg).await.map_err(anyhow::Error::msg),
        Command::Migrate => {
            Core::open(&cfg, Some(AgentKind::Echo)).await?;
            writeln!(out, "migrations applied")?;
            Ok(())
        }
    }
}
