//! Webhook delivery: outbox rows in the store → the worker → signed POSTs, and the
//! endpoint management behind the admin API.
//!
//! # Layout
//!
//! - [`service`]: register / list / delete endpoints, subscriptions, secret rotation,
//!   enable, the delivery log and manual retries (`http::webhooks` is a thin adapter).
//! - [`worker`]: claims due rows under a lease, delivers them concurrently with a
//!   per-endpoint limit, records every attempt, retries, disables on 410.
//! - [`schedule`]: `WEBHOOK_RETRY_SCHEDULE` with jitter and `Retry-After` (pure).
//! - [`sign`]: Standard Webhooks `v1,` signatures and their verifier (pure).
//! - [`seal`]: secrets and tokens at rest, AES-256-GCM with `BRIDGE_SECRET_KEY`, and
//!   the start-up check that seals rows written before the key was set.
//! - [`target`]: which URLs may be called — `http(s)` only, no private addresses
//!   unless allowed, checked at registration and again at connection time.
//! - [`store`]: the port this side needs of the store, [`WebhookStore`], with its
//!   records; and [`OutboxSweep`], the janitor's hourly purge of old deliveries.
//!
//! What this module deliberately does not do: write the outbox (a turn's commit does,
//! `core::ports::Transcripts::commit`, in the transaction of the change that caused
//! the event — a turn never delivers a webhook itself), or speak SQL (it goes through
//! [`WebhookStore`]).

pub mod schedule;
pub mod seal;
pub mod service;
pub mod sign;
pub mod store;
pub mod target;
pub mod worker;

pub use seal::Sealer;
pub use service::{NewEndpoint, ServiceError, WebhookService};
pub use store::{OutboxSweep, WebhookStore};
pub use worker::{Worker, WorkerSettings};
