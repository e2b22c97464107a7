//! The one integration-test binary: every suite is a module, every peer a small real
//! server on 127.0.0.1:0 under `support/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod agent;
mod cli;
mod deploy;
mod discord;
mod fake_discord_shards;
mod feedback;
mod http_api;
mod operate;
mod public_port;
mod recovery;
mod relay;
mod replicas;
mod shards;
mod slack;
mod socket_mode;
mod store;
mod streaming;
mod ui;
mod webhooks;
