//! The `agent-bridge` binary: parses the command line and hands over to the library
//! (`agent_bridge::cli::main`), which loads the configuration and runs the command.

use std::process::ExitCode;

use agent_bridge::cli::{self, Command as Run};
use agent_bridge::config::AgentKind;
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
    let command = match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => Run::Run,
        Command::Console { agent } => Run::Console(agent.map(|a| match a {
            AgentArg::Echo => AgentKind::Echo,
            AgentArg::AiAgentApi => AgentKind::AiAgentApi,
        })),
        Command::Migrate => Run::Migrate,
        Command::Check => Run::Check,
        Command::Healthcheck => Run::Healthcheck,
    };
    cli::main(command, &mut std::io::stdout())
}
