//! Numbered slots — Discord's shards — spread over the live replicas of one store by
//! named leases (SPEC §4): each slot runs in exactly one process at a time.
//!
//! Every replica that runs slots announces itself with a lease `{kind}-replica:{id}`
//! and holds slot `n` with a lease `{kind}-slot:{n}`, both renewed every
//! [`SlotSettings::renew_every`] and free after [`SlotSettings::ttl`] without renewal.
//! A replica takes at most ⌈slots ÷ live replicas⌉ (lowest free first), gives the
//! excess back when another live replica has fewer than that, stops a slot before its
//! lease is given back (so two processes never run it at once), stops all of them
//! when it cannot renew for most of a ttl (its leases may be someone else's by then),
//! and gives everything back on shutdown. A slot left free for a whole ttl (its
//! taker never came) is taken by anyone, whatever the share.
//!
//! On a store of its own ([`Leases::is_shared`] false: SQLite) there is nobody to
//! share with: every slot runs, no lease is written, and a restart does not wait for
//! the previous process's leases to run out.
//!
//! [`plan`] is the pure decision; [`hold_slots`] the loop that carries it out through a
//! [`SlotRunner`]. [`Pacer`] spaces out starts (Discord's IDENTIFY rate) across
//! replicas with short leases of the same table.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::metrics::Metrics;
use super::ports::{Lease, Leases};

/// Starts and stops what runs in a slot (a Discord shard's gateway connection).
#[async_trait]
pub trait SlotRunner: Send + Sync + 'static {
    /// Starts slot `n` in the background and returns at once (a start may wait for
    /// its turn, see [`Pacer`], while leases keep being renewed).
    async fn start(&self, n: u32);
    /// Stops slot `n` and returns once it no longer runs.
    async fn stop(&self, n: u32);
    /// This process's share is decided (after each round): a replica that holds no
    /// slot is then complete as it is.
    fn settled(&self) {}
}

/// How slots are shared.
#[derive(Debug, Clone)]
pub struct SlotSettings {
    /// The leases' name prefix (`discord`).
    pub kind: &'static str,
    /// How many slots there are (`DISCORD_SHARDS`).
    pub slots: u32,
    /// SPEC §4: renewed every 5 s…
    pub renew_every: Duration,
    /// …and free after 15 s without renewal.
    pub ttl: Duration,
    /// How often the leases are read for free slots and replicas come and gone.
    pub poll: Duration,
}

impl SlotSettings {
    /// SPEC §4's figures for `slots` slots of `kind`.
    pub fn new(kind: &'static str, slots: u32) -> SlotSettings {
        SlotSettings {
            kind,
            slots,
            renew_every: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
            poll: Duration::from_secs(1),
        }
    }

    fn replica_prefix(&self) -> String {
        format!("{}-replica:", self.kind)
    }

    fn replica(&self, id: &str) -> String {
        format!("{}{id}", self.replica_prefix())
    }

    fn slot_prefix(&self) -> String {
        format!("{}-slot:", self.kind)
    }

    fn slot(&self, n: u32) -> String {
        format!("{}{n}", self.slot_prefix())
    }
}

/// What one round does: slots to give back, then slots to take.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub release: Vec<u32>,
    pub take: Vec<u32>,
}

/// The leases of slots and replicas as one round reads them.
#[derive(Debug, Default)]
pub struct View {
    /// Live replicas, this one included.
    pub live: usize,
    /// The live holder of each held slot.
    pub holders: HashMap<u32, String>,
    /// The holder of each slot whose lease ran out (not given back).
    pub expired: HashMap<u32, String>,
}

impl View {
    /// Reads `leases` (every lease of the kind) at `now`; `me` counts as live.
    pub fn read(settings: &SlotSettings, leases: &[Lease], me: &str, now: OffsetDateTime) -> View {
        let (replicas, slots) = (settings.replica_prefix(), settings.slot_prefix());
        let mut view = View::default();
        let mut me_seen = false;
        for lease in leases {
            let live = lease.expires_at > now;
            if let Some(id) = lease.name.strip_prefix(&replicas) {
                if live {
                    view.live += 1;
                    me_seen |= id == me;
                }
            } else if let Some(n) = lease.name.strip_prefix(&slots) {
                let Some(n) = n.parse::<u32>().ok().filter(|n| *n < settings.slots) else {
                    continue;
                };
                let holders = match live {
                    true => &mut view.holders,
                    false => &mut view.expired,
                };
                holders.insert(n, lease.owner.clone());
            }
        }
        if !me_seen {
            view.live += 1;
        }
        view
    }

    /// The share of each live replica: ⌈slots ÷ live⌉.
    pub fn share(&self, slots: u32) -> usize {
        (slots as usize).div_ceil(self.live.max(1))
    }
}

/// One round's decision for replica `me`, holding `held`: give back what is over its
/// share when another live replica is under it — unless `keep` is not empty (slots
/// this replica took lately because nobody else did: a replica under its share is
/// not taking any) — take the lowest free slots up to the share, and take every slot
/// in `stale` (free for a whole ttl) whatever the share.
pub fn plan(
    slots: u32,
    view: &View,
    me: &str,
    held: &BTreeSet<u32>,
    keep: &BTreeSet<u32>,
    stale: &BTreeSet<u32>,
) -> Plan {
    let share = view.share(slots);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for owner in view.holders.values() {
        *counts.entry(owner.as_str()).or_default() += 1;
    }
    let others_live = view.live.saturating_sub(1);
    // Live replicas that hold nothing do not appear among the holders.
    let others_holding = counts.keys().filter(|o| **o != me).count();
    let others_under = counts
        .iter()
        .filter(|(o, n)| **o != me && **n < share)
        .map(|(_, n)| share - n)
        .sum::<usize>()
        + others_live.saturating_sub(others_holding) * share;

    let mut plan = Plan::default();
    if held.len() > share && others_under > 0 && keep.is_empty() {
        let excess = (held.len() - share).min(others_under);
        plan.release = held.iter().rev().take(excess).copied().collect();
    }
    let free = (0..slots).filter(|n| !held.contains(n) && !view.holders.contains_key(n));
    let room = share.saturating_sub(held.len());
    let mut take: BTreeSet<u32> = free.clone().take(room).collect();
    take.extend(free.filter(|n| stale.contains(n)));
    plan.take = take.into_iter().collect();
    plan
}

/// How long after taking a slot nobody else took this replica gives nothing back, so
/// a replica that announces itself but never takes its share cannot make slots go
/// back and forth.
const KEEP_STALE: Duration = Duration::from_secs(300);

/// Runs `settings.slots` slots through `runner` until `shutdown`, sharing them with
/// the other replicas of `leases` (see the module doc). Returns after every slot this
/// process ran is stopped and, on a shared store, its leases are given back.
pub async fn hold_slots(
    leases: Arc<dyn Leases>,
    runner: Arc<dyn SlotRunner>,
    settings: SlotSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if !leases.is_shared() {
        for n in 0..settings.slots {
            runner.start(n).await;
        }
        metrics.set_shards_held(settings.slots as usize);
        runner.settled();
        shutdown.cancelled().await;
        for n in 0..settings.slots {
            runner.stop(n).await;
        }
        metrics.set_shards_held(0);
        return;
    }
    let mut holder = Holder {
        me: uuid::Uuid::new_v4().simple().to_string(),
        leases,
        runner,
        settings,
        metrics,
        held: BTreeSet::new(),
        keep: HashMap::new(),
        free_since: HashMap::new(),
        renewed: None,
        renew_tried: None,
    };
    info!(replica = %holder.me, slots = holder.settings.slots, "sharing Discord shards with the other replicas");
    loop {
        holder.round().await;
        tokio::select! {
            _ = tokio::time::sleep(holder.settings.poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    holder.give_back().await;
}

struct Holder {
    me: String,
    leases: Arc<dyn Leases>,
    runner: Arc<dyn SlotRunner>,
    settings: SlotSettings,
    metrics: Arc<Metrics>,
    held: BTreeSet<u32>,
    /// Slots taken as stale, and when: kept for [`KEEP_STALE`].
    keep: HashMap<u32, Instant>,
    /// When each slot was first seen free (for `stale`).
    free_since: HashMap<u32, Instant>,
    /// The last renewal that went through, and the last one tried.
    renewed: Option<Instant>,
    renew_tried: Option<Instant>,
}

impl Holder {
    fn until(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.settings.ttl
    }

    async fn round(&mut self) {
        let due = self
            .renew_tried
            .is_none_or(|at| at.elapsed() >= self.settings.renew_every);
        if due {
            self.renew().await;
        }
        if self.renewed.is_none() {
            return;
        }
        let prefix = format!("{}-", self.settings.kind);
        let leases = match self.leases.leases(&prefix).await {
            Ok(leases) => leases,
            Err(e) => {
                warn!(error = %e, "could not read the shard leases; trying again");
                return;
            }
        };
        let view = View::read(&self.settings, &leases, &self.me, OffsetDateTime::now_utc());
        // A lease renewed under us by someone else: the slot is theirs now.
        let lost: Vec<u32> = self
            .held
            .iter()
            .filter(|n| view.holders.get(n).is_some_and(|o| *o != self.me))
            .copied()
            .collect();
        for n in lost {
            warn!(
                shard = n,
                "another replica holds this shard's lease now; stopping it here"
            );
            self.stop(n).await;
        }
        let now = Instant::now();
        let ttl = self.settings.ttl;
        self.free_since.retain(|n, _| !view.holders.contains_key(n));
        let mut stale = BTreeSet::new();
        for n in 0..self.settings.slots {
            if view.holders.contains_key(&n) || self.held.contains(&n) {
                continue;
            }
            let since = *self.free_since.entry(n).or_insert(now);
            if now - since >= ttl {
                stale.insert(n);
            }
        }
        self.keep.retain(|_, at| at.elapsed() < KEEP_STALE);
        let keep: BTreeSet<u32> = self.keep.keys().copied().collect();
        let plan = plan(
            self.settings.slots,
            &view,
            &self.me,
            &self.held,
            &keep,
            &stale,
        );
        for n in plan.release {
            info!(
                shard = n,
                live_replicas = view.live,
                "handing this shard to a replica with fewer"
            );
            self.stop(n).await;
            let name = self.settings.slot(n);
            if let Err(e) = self.leases.drop_lease(&name, &self.me).await {
                warn!(shard = n, error = %e, "could not give the shard's lease back; it frees itself in 15 s");
            }
        }
        for n in plan.take {
            let name = self.settings.slot(n);
            match self.leases.hold_lease(&name, &self.me, self.until()).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(shard = n, error = %e, "could not take a free shard's lease");
                    continue;
                }
            }
            match view.expired.get(&n) {
                Some(owner) if *owner != self.me => {
                    self.metrics.shard_taken_over();
                    info!(shard = n, from = %owner, "took over a shard whose replica stopped renewing its lease");
                }
                _ => info!(shard = n, "took a free shard"),
            }
            if stale.contains(&n) {
                self.keep.insert(n, Instant::now());
            }
            self.free_since.remove(&n);
            self.held.insert(n);
            self.runner.start(n).await;
        }
        self.metrics.set_shards_held(self.held.len());
        self.runner.settled();
    }

    /// Renews this replica's announcement and its slots; a slot whose lease is gone
    /// to another replica is stopped. Without a renewal for most of a ttl, every slot
    /// is stopped: by the time the store answers again, they may be someone else's.
    async fn renew(&mut self) {
        self.renew_tried = Some(Instant::now());
        let until = self.until();
        let me = self.me.clone();
        let mut ok = match self
            .leases
            .hold_lease(&self.settings.replica(&me), &me, until)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "could not renew this replica's lease");
                false
            }
        };
        for n in self.held.clone() {
            match self
                .leases
                .hold_lease(&self.settings.slot(n), &me, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    warn!(
                        shard = n,
                        "this shard's lease ran out and another replica took it; stopping it here"
                    );
                    self.stop(n).await;
                }
                Err(e) => {
                    warn!(shard = n, error = %e, "could not renew a shard's lease");
                    ok = false;
                }
            }
        }
        if ok {
            self.renewed = Some(Instant::now());
            return;
        }
        let margin = self.settings.ttl.saturating_sub(self.settings.renew_every);
        let silent = self.renewed.map_or(Duration::MAX, |at| at.elapsed());
        if silent >= margin && !self.held.is_empty() {
            warn!(
                shards = self.held.len(),
                "the store has not renewed this replica's shard leases for {} s; stopping its shards so no other replica runs them twice",
                silent.as_secs()
            );
            for n in self.held.clone() {
                self.stop(n).await;
            }
            self.metrics.set_shards_held(0);
        }
    }

    async fn stop(&mut self, n: u32) {
        self.runner.stop(n).await;
        self.held.remove(&n);
        self.keep.remove(&n);
    }

    /// Shutdown: stops every slot, then gives its lease and the announcement back, so
    /// another replica takes over at once.
    async fn give_back(&mut self) {
        let me = self.me.clone();
        for n in self.held.clone() {
            self.stop(n).await;
            if let Err(e) = self.leases.drop_lease(&self.settings.slot(n), &me).await {
                warn!(shard = n, error = %e, "could not give the shard's lease back; it frees itself in 15 s");
            }
        }
        if let Err(e) = self
            .leases
            .drop_lease(&self.settings.replica(&me), &me)
            .await
        {
            warn!(error = %e, "could not withdraw this replica's lease");
        }
        self.metrics.set_shards_held(0);
        info!("Discord shards handed back");
    }
}

/// Spaces out starts across replicas: at most one per `bucket` every `period`
/// (Discord: IDENTIFYs of shard `n` use bucket `n % max_concurrency`, one per 5 s).
/// On a shared store the slot is a short lease `{kind}-pace:{bucket}`; in any case
/// this process keeps its own pace too.
pub struct Pacer {
    leases: Arc<dyn Leases>,
    kind: &'static str,
    period: Duration,
    me: String,
    last: tokio::sync::Mutex<HashMap<u32, Instant>>,
}

impl Pacer {
    pub fn new(leases: Arc<dyn Leases>, kind: &'static str, period: Duration) -> Pacer {
        Pacer {
            leases,
            kind,
            period,
            me: uuid::Uuid::new_v4().simple().to_string(),
            last: Default::default(),
        }
    }

    /// Waits for `bucket`'s next slot; `false` if `cancel` came first.
    pub async fn wait(&self, bucket: u32, cancel: &CancellationToken) -> bool {
        // Held across the wait: this process's starts of one bucket go one by one.
        let mut last = self.last.lock().await;
        if let Some(at) = last.get(&bucket) {
            let next = *at + self.period;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = cancel.cancelled() => return false,
            }
        }
        if self.leases.is_shared() {
            let name = format!("{}-pace:{bucket}", self.kind);
            loop {
                let until = OffsetDateTime::now_utc() + self.period;
                match self.leases.hold_free_lease(&name, &self.me, until).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    // The pace is a courtesy to Discord; a store outage must not keep
                    // a shard from connecting.
                    Err(e) => {
                        warn!(error = %e, "could not take an IDENTIFY slot in the store; going ahead");
                        break;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = cancel.cancelled() => return false,
                }
            }
        }
        last.insert(bucket, Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ports::StoreError;

    fn settings(slots: u32) -> SlotSettings {
        SlotSettings::new("discord", slots)
    }

    fn lease(name: &str, owner: &str, live: bool) -> Lease {
        let now = OffsetDateTime::now_utc();
        Lease {
            name: name.into(),
            owner: owner.into(),
            expires_at: if live {
                now + time::Duration::seconds(10)
            } else {
                now - time::Duration::seconds(1)
            },
        }
    }

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    fn view(leases: &[Lease], me: &str, slots: u32) -> View {
        View::read(&settings(slots), leases, me, OffsetDateTime::now_utc())
    }

    #[test]
    fn alone_a_replica_takes_every_slot() {
        let v = view(&[lease("discord-replica:a", "a", true)], "a", 3);
        let p = plan(3, &v, "a", &set(&[]), &set(&[]), &set(&[]));
        assert_eq!(p.take, vec![0, 1, 2]);
        assert!(p.release.is_empty());
    }

    #[test]
    fn a_new_replica_gets_its_share_handed_over() {
        let leases = [
            lease("discord-replica:a", "a", true),
            lease("discord-replica:b", "b", true),
            lease("discord-slot:0", "a", true),
            lease("discord-slot:1", "a", true),
        ];
        // a gives its highest slot back…
        let v = view(&leases, "a", 2);
        let p = plan(2, &v, "a", &set(&[0, 1]), &set(&[]), &set(&[]));
        assert_eq!(p.release, vec![1]);
        // …and b, with none, takes nothing until it is free.
        let v = view(&leases, "b", 2);
        assert_eq!(
            plan(2, &v, "b", &set(&[]), &set(&[]), &set(&[])),
            Plan::default()
        );
        let v = view(&leases[..3], "b", 2);
        assert_eq!(
            plan(2, &v, "b", &set(&[]), &set(&[]), &set(&[])).take,
            vec![1]
        );
    }

    #[test]
    fn a_dead_replicas_slots_are_taken_after_its_lease_runs_out() {
        let leases = [
            lease("discord-replica:a", "a", true),
            lease("discord-replica:b", "b", false),
            lease("discord-slot:0", "a", true),
            lease("discord-slot:1", "b", false),
        ];
        let v = view(&leases, "a", 2);
        assert_eq!(v.live, 1);
        assert_eq!(v.expired.get(&1).map(String::as_str), Some("b"));
        let p = plan(2, &v, "a", &set(&[0]), &set(&[]), &set(&[]));
        assert_eq!(p.take, vec![1]);
    }

    #[test]
    fn nothing_is_given_back_when_nobody_is_short() {
        // Three slots, two replicas: shares of 2; a holds 2, b holds 1 — both fine.
        let leases = [
            lease("discord-replica:a", "a", true),
            lease("discord-replica:b", "b", true),
            lease("discord-slot:0", "a", true),
            lease("discord-slot:1", "a", true),
            lease("discord-slot:2", "b", true),
        ];
        let v = view(&leases, "a", 3);
        assert_eq!(
            plan(3, &v, "a", &set(&[0, 1]), &set(&[]), &set(&[])),
            Plan::default()
        );
    }

    #[test]
    fn a_slot_nobody_took_is_taken_whatever_the_share_and_kept() {
        let leases = [
            lease("discord-replica:a", "a", true),
            lease("discord-replica:b", "b", true),
            lease("discord-slot:0", "a", true),
        ];
        let v = view(&leases, "a", 2);
        let p = plan(2, &v, "a", &set(&[0]), &set(&[]), &set(&[1]));
        assert_eq!(p.take, vec![1]);
        // Over its share, with b short, a gives nothing back while it keeps a slot it
        // took as stale.
        let leases = [
            lease("discord-replica:a", "a", true),
            lease("discord-replica:b", "b", true),
            lease("discord-slot:0", "a", true),
            lease("discord-slot:1", "a", true),
        ];
        let v = view(&leases, "a", 2);
        let p = plan(2, &v, "a", &set(&[0, 1]), &set(&[1]), &set(&[]));
        assert!(p.release.is_empty(), "{p:?}");
    }

    #[test]
    fn leases_of_slots_beyond_the_count_are_ignored() {
        let leases = [
            lease("discord-slot:7", "x", true),
            lease("discord-slot:x", "x", true),
        ];
        let v = view(&leases, "a", 2);
        assert!(v.holders.is_empty());
        assert_eq!(v.live, 1);
    }

    /// Replicas joining one by one, each round every replica reading the table and
    /// carrying out its plan: the slots end spread, each held once.
    #[test]
    fn rounds_converge_to_an_even_spread() {
        for replicas in 1..=4usize {
            for slots in 1..=6u32 {
                let names: Vec<String> = (0..replicas).map(|r| format!("r{r}")).collect();
                let mut table: HashMap<String, String> = HashMap::new();
                let mut held: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); replicas];
                for round in 0..(replicas * 6) {
                    // Replica r joins at round 2r.
                    for r in (0..replicas).filter(|r| round >= 2 * r) {
                        table.insert(format!("discord-replica:{}", names[r]), names[r].clone());
                        let leases: Vec<Lease> =
                            table.iter().map(|(n, o)| lease(n, o, true)).collect();
                        let v = view(&leases, &names[r], slots);
                        let p = plan(slots, &v, &names[r], &held[r], &set(&[]), &set(&[]));
                        for n in p.release {
                            table.remove(&format!("discord-slot:{n}"));
                            held[r].remove(&n);
                        }
                        for n in p.take {
                            let name = format!("discord-slot:{n}");
                            assert!(!table.contains_key(&name), "took a held slot");
                            table.insert(name, names[r].clone());
                            held[r].insert(n);
                        }
                    }
                }
                let share = (slots as usize).div_ceil(replicas);
                let all: usize = held.iter().map(BTreeSet::len).sum();
                assert_eq!(
                    all, slots as usize,
                    "{replicas} replicas, {slots} slots: {held:?}"
                );
                for h in &held {
                    assert!(
                        h.len() <= share,
                        "{replicas} replicas, {slots} slots: {held:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn shares_round_up() {
        let v = View {
            live: 2,
            ..View::default()
        };
        assert_eq!(v.share(3), 2);
        assert_eq!(v.share(4), 2);
        assert_eq!(View::default().share(4), 4);
    }

    /// The leases of one store, in memory; `down` makes every call fail.
    #[derive(Default)]
    struct MemLeases {
        down: std::sync::atomic::AtomicBool,
        map: std::sync::Mutex<HashMap<String, Lease>>,
    }

    impl MemLeases {
        fn up(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Lease>>, StoreError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the store is down".into()));
            }
            Ok(self.map.lock().unwrap())
        }

        fn take(
            &self,
            name: &str,
            owner: &str,
            until: OffsetDateTime,
            renew: bool,
        ) -> Result<bool, StoreError> {
            let mut map = self.up()?;
            let free = map.get(name).is_none_or(|l| {
                l.expires_at <= OffsetDateTime::now_utc() || (renew && l.owner == owner)
            });
            if free {
                let lease = Lease {
                    name: name.into(),
                    owner: owner.into(),
                    expires_at: until,
                };
                map.insert(name.into(), lease);
            }
            Ok(free)
        }
    }

    #[async_trait]
    impl Leases for MemLeases {
        fn is_shared(&self) -> bool {
            true
        }
        async fn leases(&self, prefix: &str) -> Result<Vec<Lease>, StoreError> {
            let mut all: Vec<Lease> = self
                .up()?
                .values()
                .filter(|l| l.name.starts_with(prefix))
                .cloned()
                .collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(all)
        }
        async fn hold_lease(
            &self,
            name: &str,
            owner: &str,
            until: OffsetDateTime,
        ) -> Result<bool, StoreError> {
            self.take(name, owner, until, true)
        }
        async fn hold_free_lease(
            &self,
            name: &str,
            owner: &str,
            until: OffsetDateTime,
        ) -> Result<bool, StoreError> {
            self.take(name, owner, until, false)
        }
        async fn drop_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
            let mut map = self.up()?;
            if map.get(name).is_some_and(|l| l.owner == owner) {
                map.remove(name);
            }
            Ok(())
        }
    }

    /// The slots running in this process.
    #[derive(Default)]
    struct Running(std::sync::Mutex<BTreeSet<u32>>);

    #[async_trait]
    impl SlotRunner for Running {
        async fn start(&self, n: u32) {
            self.0.lock().unwrap().insert(n);
        }
        async fn stop(&self, n: u32) {
            self.0.lock().unwrap().remove(&n);
        }
    }

    impl Running {
        fn now(&self) -> BTreeSet<u32> {
            self.0.lock().unwrap().clone()
        }
    }

    /// SPEC §4's leases are free 15 s after their last renewal: a replica cut off
    /// from the store must have stopped its shards by then, or the replica that takes
    /// them over would run them a second time.
    #[tokio::test(start_paused = true)]
    async fn a_replica_that_cannot_renew_stops_its_slots_before_their_leases_run_out() {
        let leases = Arc::new(MemLeases::default());
        let running = Arc::new(Running::default());
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let holding = tokio::spawn(hold_slots(
            leases.clone(),
            running.clone(),
            settings(2),
            metrics.clone(),
            shutdown.clone(),
        ));
        // Renewed at 0 s (the first round), due again at 5 s, 10 s…
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(running.now(), set(&[0, 1]));

        leases.down.store(true, std::sync::atomic::Ordering::SeqCst);
        // 8 s: one renewal failed, 8 s since the last one went through.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            running.now(),
            set(&[0, 1]),
            "a single failed renewal stops nothing"
        );
        // 14 s: the leases written at 0 s are still live (until 15 s), and both
        // slots are stopped.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(running.now(), set(&[]));
        let mut shown = String::new();
        metrics.render(&mut shown);
        assert!(shown.contains("bridge_discord_shards_held 0"), "{shown}");

        shutdown.cancel();
        holding.await.unwrap();
    }
}
