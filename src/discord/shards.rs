//! The gateway shards this replica runs: one serenity client per shard, started and
//! stopped by `core::leases::hold_slots` (which decides, with the other replicas, which
//! shards are ours), and `/readyz`'s Discord flag: up when every shard held is
//! connected (holding none is fine).
//!
//! One client per shard rather than one client for a range: shards come and go one at
//! a time (a replica joins, dies, or shuts down), and serenity's shard manager can
//! start only ranges. The handler is shared, so the bot's id, the thread directory
//! and the edit buckets are the process's, not a shard's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serenity::all::{ClientBuilder, GatewayIntents};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, Instrument};

use super::handler::{self, Handler};
use super::{build_http, fatal_message};
use crate::config::DiscordConfig;
use crate::core::leases::{Pacer, SlotRunner};
use crate::core::lock;

/// How long a shard's close may take before its task is left behind.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Which shards this replica holds and whether each is connected; sets the readiness
/// flag it was given.
pub struct ShardBoard {
    shards: Mutex<BTreeMap<u32, bool>>,
    /// Set once the first share of shards is decided: before, the replica is not ready.
    settled: AtomicBool,
    ready: Arc<AtomicBool>,
}

impl ShardBoard {
    pub fn new(ready: Arc<AtomicBool>) -> ShardBoard {
        ShardBoard {
            shards: Mutex::default(),
            settled: AtomicBool::new(false),
            ready,
        }
    }

    fn update(&self, f: impl FnOnce(&mut BTreeMap<u32, bool>)) {
        let mut shards = lock::lock(&self.shards);
        f(&mut shards);
        let up = self.settled.load(Ordering::Acquire) && shards.values().all(|c| *c);
        self.ready.store(up, Ordering::Release);
    }

    fn hold(&self, shard: u32) {
        self.update(|s| {
            s.insert(shard, false);
        });
    }

    fn release(&self, shard: u32) {
        self.update(|s| {
            s.remove(&shard);
        });
    }

    /// A held shard's gateway session came up or went down (from the handler).
    pub fn set_connected(&self, shard: u32, connected: bool) {
        self.update(|s| {
            if let Some(c) = s.get_mut(&shard) {
                *c = connected;
            }
        });
    }

    fn settle(&self) {
        self.settled.store(true, Ordering::Release);
        self.update(|_| {});
    }

    /// Discord stopped (a fatal close or shutdown): not ready whatever was held.
    pub fn close(&self) {
        self.settled.store(false, Ordering::Release);
        self.update(|s| s.clear());
    }
}

/// What every shard's client is built from.
pub struct ShardRunner {
    pub cfg: DiscordConfig,
    pub intents: GatewayIntents,
    pub handler: Arc<Handler>,
    pub gateway_url: String,
    pub total: u32,
    /// Discord's `session_start_limit.max_concurrency`: IDENTIFY buckets.
    pub max_concurrency: u32,
    pub pacer: Pacer,
    pub board: Arc<ShardBoard>,
    /// Cancelled when a shard ends fatally (bad token, intents): Discord stops.
    pub fatal: CancellationToken,
    pub running: Mutex<HashMap<u32, (CancellationToken, JoinHandle<()>)>>,
}

#[async_trait]
impl SlotRunner for Arc<ShardRunner> {
    async fn start(&self, n: u32) {
        self.board.hold(n);
        let cancel = self.fatal.child_token();
        let span = tracing::info_span!("shard", shard = n);
        let task = tokio::spawn(self.clone().run(n, cancel.clone()).instrument(span));
        if let Some((old, _)) = lock::lock(&self.running).insert(n, (cancel, task)) {
            old.cancel();
        }
    }

    async fn stop(&self, n: u32) {
        let entry = lock::lock(&self.running).remove(&n);
        if let Some((cancel, task)) = entry {
            cancel.cancel();
            if tokio::time::timeout(STOP_WAIT, task).await.is_err() {
                error!(shard = n, "a Discord shard did not close within 10 s");
            }
        }
        self.board.release(n);
    }

    fn settled(&self) {
        self.board.settle();
    }
}

impl ShardRunner {
    /// One shard's client, from its IDENTIFY slot until `cancel` or a fatal close.
    async fn run(self: Arc<Self>, n: u32, cancel: CancellationToken) {
        let bucket = n % self.max_concurrency.max(1);
        if !self.pacer.wait(bucket, &cancel).await {
            return;
        }
        let mut client = match ClientBuilder::new_with_http(build_http(&self.cfg), self.intents)
            .event_handler_arc(self.handler.clone())
            .raw_event_handler(handler::Undecodable)
            .await
        {
            Ok(client) => client,
            Err(e) => {
                error!(error = %super::describe(&e), "could not set up the Discord client; Discord stays off");
                self.fatal.cancel();
                return;
            }
        };
        *client.ws_url.lock().await = self.gateway_url.clone();
        let manager = client.shard_manager.clone();
        info!(shards = self.total, "connecting the shard");
        let ended = {
            let start = client.start_shard(n, self.total);
            tokio::pin!(start);
            tokio::select! {
                result = &mut start => Some(result),
                _ = cancel.cancelled() => None,
            }
        };
        self.board.set_connected(n, false);
        match ended {
            None => {
                manager.shutdown_all().await;
                info!("Discord shard closed");
            }
            Some(Ok(())) => info!("Discord shard stopped"),
            Some(Err(e)) => {
                // The first shard to end fatally says why; the rest stop quietly.
                if !self.fatal.is_cancelled() {
                    error!("{}", fatal_message(&e));
                    self.fatal.cancel();
                }
                // serenity leaves its shard queuer idling after a fatal close; stop it,
                // but never let that hold anything up.
                let _ = tokio::time::timeout(STOP_WAIT, manager.shutdown_all()).await;
            }
        }
    }
}
