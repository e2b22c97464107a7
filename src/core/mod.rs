//! The platform-neutral heart of the bridge: conversations, ordering, commands, the
//! relay of a turn to the agent and back, and the events a turn emits.
//!
//! `core` does I/O only through the traits in [`ports`]. It never imports serenity,
//! slack-morphism, axum, hyper, reqwest or sqlx — `tests/tidy.rs` fails the build if it
//! does — so every platform, agent and store plugs in from outside.

pub mod access;
pub mod chunk;
pub mod commands;
pub mod error;
pub mod events;
pub mod fence;
pub mod janitor;
pub mod lanes;
pub mod leases;
pub mod lock;
pub mod message;
pub mod metrics;
pub mod ports;
pub mod relay;
pub mod render;
pub mod retry;
pub mod sessions;

pub use message::{ConversationKey, Inbound, Platform, SessionScope};
pub use ports::{Agent, ChatSink};
pub use relay::{Rejected, Relay, RelaySettings, TurnHandle, TurnOutcome};
