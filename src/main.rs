//! The `agent-bridge` binary: parses the command line, loads the configuration, and
//! hands over to the library. `anyhow` lives only here and in `app`.

use std::io::IsTerminal;
use std::process::ExitCode;

use agent_bridge::app::{App, Core, DEFAULT_SHUTDOWN_GRACE};
use agent_bridge::config::{AgentKind, Config};
use agent_bridge::{console, shutdown, telemetry};
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc: the hot path allocates small, short-lived
/// buffers on several threads (tokio workers, SQLite's), where glibc's per-thread
/// arenas cost CPU in free/consolidate and keep freed memory resident.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "agent-bridge",
    version,
    about = "Connects Discord and Slack to an AI agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start every configured part (the default).
    Run,
    /// Chat with the agent from the terminal, through the same relay and store.
    Console {
        /// Use this agent instead of AGENT_KIND.
        #[arg(long, value_enum)]
        agent: Option<AgentArg>,
    },
    /// Apply store migrations and exit.
    Migrate,
    /// Validate the configuration and reach each configured part; exit 1 on any failure.
    Check,
    /// Exit 0 if the local server answers /healthz (for container health checks).
    Healthcheck,
}

#[derive(Clone, Copy, ValueEnum)]
enum AgentArg {
    Echo,
    AiAgentApi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::from_env() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // `TOKIO_WORKER_THREADS` (default: one per core). Measured on 2 cores: one worker
    // costs W1 less CPU per Slack event (112 vs 126 µs: fewer cross-thread wake-ups)
    // but halves webhook delivery throughput (W4: 4,400 vs 12,500/s), so the default
    // stays tokio's.
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
    runtime.block_on(main_async(cli, cfg))
}

async fn main_async(cli: Cli, cfg: Config) -> ExitCode {
    telemetry::init(&cfg.log);
    match run(cli.command.unwrap_or(Command::Run), cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A cause may quote a configured URL with its credentials.
            let shown = agent_bridge::config::redact_url(&format!("{e:#}"));
            tracing::error!(error = %shown, "agent-bridge failed");
            eprintln!("error: {shown}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Run => App::build(cfg).await?.run(shutdown::on_signal()).await,
        Command::Console { agent } => {
            let kind = agent.map(|a| match a {
                AgentArg::Echo => AgentKind::Echo,
                AgentArg::AiAgentApi => AgentKind::AiAgentApi,
            });
            let mut cfg = cfg;
            if kind == Some(AgentKind::Echo) && cfg.agent.echo_delay.is_none() {
                // The demo shows an answer being written.
                cfg.agent.echo_delay = Some(std::time::Duration::from_millis(40));
            }
            let core = Core::open(&cfg, kind).await?;
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let options = console::ConsoleOptions {
                prompt: std::io::stdin().is_terminal(),
                grace: DEFAULT_SHUTDOWN_GRACE,
            };
            console::run(
                core.relay,
                stdin,
                tokio::io::stdout(),
                options,
                shutdown::on_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Check => {
            let lines = agent_bridge::check::run(&cfg).await;
            for line in &lines {
                println!("{line}");
            }
            match lines.iter().filter(|l| !l.ok).count() {
                0 => Ok(()),
                n => Err(anyhow::anyhow!("{n} check(s) failed")),
            }
        }
        Command::Healthcheck => agent_bridge::check::liveness(&cfg)
            .await
            .map_err(anyhow::Error::msg),
        Command::Migrate => {
            Core::open(&cfg, Some(AgentKind::Echo)).await?;
            println!("migrations applied");
            Ok(())
        }
    }
}
