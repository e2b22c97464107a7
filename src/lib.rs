//! agent-bridge: connects Discord and Slack to an AI agent, turns every conversation
//! into signed webhook events and exposes the agent through an authenticated proxy.
//!
//! # Layout
//!
//! - [`core`]: conversations, ordering, commands and the relay; I/O only through the
//!   traits in `core::ports`.
//! - [`agent`]: `Agent` implementations (the AI Agent API client, the echo agent).
//! - [`store`]: the store roles of `core::ports` and `webhook::WebhookStore` over
//!   SQLite or PostgreSQL: one catalogue of statements, one writer for SQLite.
//! - [`http`]: the axum server: health, admin API, and later the Slack events route.
//! - [`discord`], [`slack`]: the chat platforms, each a thin adapter onto the relay.
//! - [`console`]: the terminal chat, a `ChatSink` like any platform.
//! - [`config`]: every environment variable, parsed once into typed sub-configs.
//! - [`app`]: the composition root, the only place that names concrete types.
//! - [`cli`]: the commands behind the binary (`main.rs` only parses arguments).
//! - [`check`]: `agent-bridge check`, one line per configured part.
//! - [`webhook`]: endpoint management and the delivery worker (signed, retried POSTs
//!   of the outbox rows the store holds).
//! - [`shutdown`], [`telemetry`]: signals and logging.

pub mod agent;
pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod console;
pub mod core;
pub mod discord;
pub mod http;
pub mod shutdown;
pub mod slack;
pub mod store;
pub mod telemetry;
pub mod webhook;
