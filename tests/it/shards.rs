//! Discord's shards (SPEC §4), with the real binary: one replica runs every shard
//! `GET /gateway/bot` asks for; replicas sharing PostgreSQL run each shard on exactly
//! one of them — split evenly, one reply per mention, a `kill -9`ed replica's shard
//! taken over within 20 s, a SIGTERMed one's handed over at once — and IDENTIFYs keep
//! to `max_concurrency` per 5 s across them.

use std::time::{Duration, Instant};

use crate::support::agent::FakeAgent;
use crate::support::db::{self, PgSchema};
use crate::support::discord::FakeDiscord;
use crate::support::process::BridgeProcess;

const WAIT: Duration = Duration::from_secs(30);
const USER: &str = "3000000000000000001";

fn replica(db_url: &str, agent: &FakeAgent, discord: &FakeDiscord) -> BridgeProcess {
    BridgeProcess::spawn(&[
        ("DATABASE_URL", db_url),
        ("AGENT_URL", &agent.url()),
        ("DISCORD_TOKEN", "discord-token-SH11.AR22.DS33"),
        ("DISCORD_API_BASE", &discord.url()),
        ("RUST_LOG", "info"),
    ])
}

/// Waits until `bridge` reports holding `n` shards.
async fn wait_held(bridge: &BridgeProcess, n: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let held = bridge.metric("bridge_discord_shards_held").await;
        if held == Some(f64::from(n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} shards held within {within:?}, saw {held:?}\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A mention in a guild of `shard`; waits for the `n`th bot post overall and
/// returns its content.
async fn mention_on(discord: &FakeDiscord, shard: u32, text: &str, n: usize) -> String {
    let guild = discord.guild_for_shard(shard);
    let channel = format!("27{shard}0");
    let mention = format!("{} {text}", discord.mention());
    discord
        .guild_message_in(&guild, &channel, USER, &mention)
        .await;
    let posts = discord.wait_messages(n, WAIT).await;
    posts[n - 1].content().to_owned()
}

/// IDENTIFYs of one bucket (here every shard: `max_concurrency` 1) at least 5 s apart.
fn assert_identifies_paced(discord: &FakeDiscord) {
    let log = discord.identify_log();
    for pair in log.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= Duration::from_millis(4900),
            "IDENTIFYs {gap:?} apart: {log:?}"
        );
    }
}

#[tokio::test]
async fn one_replica_runs_every_shard_gateway_bot_asks_for() {
    let (_dir, db_url) = db::sqlite_file_url().await;
    let (agent, discord) = (
        FakeAgent::start().await,
        FakeDiscord::start_sharded(2).await,
    );
    let bridge = replica(&db_url, &agent, &discord);
    bridge.wait_ready(WAIT).await;
    // Ready means every shard held is connected.
    assert_eq!(discord.live_sessions(0), 1);
    assert_eq!(discord.live_sessions(1), 1);
    let shards: Vec<_> = discord
        .identify_payloads()
        .iter()
        .map(|d| d["shard"].clone())
        .collect();
    assert_eq!(shards.len(), 2, "{shards:?}");
    assert!(shards.contains(&serde_json::json!([0, 2])), "{shards:?}");
    assert!(shards.contains(&serde_json::json!([1, 2])), "{shards:?}");
    assert_identifies_paced(&discord);

    assert_eq!(
        mention_on(&discord, 1, "on one", 1).await,
        "answer to: on one"
    );
    assert_eq!(
        mention_on(&discord, 0, "on zero", 2).await,
        "answer to: on zero"
    );
    assert_eq!(bridge.metric("bridge_discord_shards_held").await, Some(2.0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(discord.messages().len(), 2, "one reply per mention");
    bridge.kill().await;
}

#[tokio::test]
async fn two_replicas_split_the_shards_and_a_killed_ones_shard_is_taken_over_within_20_s() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let (agent, discord) = (
        FakeAgent::start().await,
        FakeDiscord::start_sharded(2).await,
    );
    let a = replica(&pg.url, &agent, &discord);
    a.wait_ready(WAIT).await;
    wait_held(&a, 2, WAIT).await;
    let b = replica(&pg.url, &agent, &discord);
    // a hands its highest shard to b, which then connects it.
    wait_held(&b, 1, WAIT).await;
    wait_held(&a, 1, WAIT).await;
    b.wait_ready(WAIT).await;
    discord.wait_shard_live(1, WAIT).await;
    assert_eq!(discord.live_sessions(0), 1);
    assert_eq!(discord.live_sessions(1), 1);

    assert_eq!(mention_on(&discord, 0, "zero", 1).await, "answer to: zero");
    assert_eq!(mention_on(&discord, 1, "one", 2).await, "answer to: one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(discord.messages().len(), 2, "one reply per mention");

    // a dies holding shard 0: b takes it once a's lease runs out.
    let killed = Instant::now();
    a.kill().await;
    wait_held(&b, 2, Duration::from_secs(20)).await;
    discord.wait_shard_live(0, Duration::from_secs(20)).await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(20), "took over after {took:?}");
    assert_eq!(
        mention_on(&discord, 0, "after", 3).await,
        "answer to: after"
    );
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("bridge_discord_shard_takeovers_total 1"),
        "{metrics}"
    );

    // Never two sessions of one shard, and IDENTIFYs paced across both replicas.
    assert_eq!(discord.max_concurrent_sessions(0), 1);
    assert_eq!(discord.max_concurrent_sessions(1), 1);
    assert_identifies_paced(&discord);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(discord.messages().len(), 3, "one reply per mention");
    b.kill().await;
    pg.remove().await;
}

#[tokio::test]
async fn a_replica_stopped_with_sigterm_hands_its_shard_over_at_once() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let (agent, discord) = (
        FakeAgent::start().await,
        FakeDiscord::start_sharded(1).await,
    );
    let a = replica(&pg.url, &agent, &discord);
    a.wait_ready(WAIT).await;
    wait_held(&a, 1, WAIT).await;
    // A replica holding no shard is ready all the same.
    let b = replica(&pg.url, &agent, &discord);
    b.wait_ready(WAIT).await;
    let (_, body) = b.readyz().await.unwrap();
    assert_eq!(body["parts"]["discord"], "up", "{body}");
    assert_eq!(b.metric("bridge_discord_shards_held").await, Some(0.0));

    // Past the pace of the first IDENTIFY, so only the handover is timed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stopped = Instant::now();
    a.terminate().await;
    wait_held(&b, 1, Duration::from_secs(5)).await;
    discord.wait_shard_live(0, Duration::from_secs(5)).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "handed over after {:?}",
        stopped.elapsed()
    );
    assert_eq!(a.exited(WAIT).await, Some(0));
    assert_eq!(
        mention_on(&discord, 0, "still here", 1).await,
        "answer to: still here"
    );
    assert_eq!(discord.max_concurrent_sessions(0), 1);
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("bridge_discord_shard_takeovers_total 0"),
        "a handover is not a takeover: {metrics}"
    );
    b.kill().await;
    pg.remove().await;
}
