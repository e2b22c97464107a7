//! Nothing lost, nothing twice (SPEC §3), with the real binary killed for real: a
//! mention acknowledged just before a `kill -9` is answered after the restart, once;
//! an answer posted but not recorded before the kill is found (its metadata) and not
//! posted again; a turn older than `RECOVERY_WINDOW` is given up with `reply.failed`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::agent::FakeAgent;
use crate::support::discord::FakeDiscord;
use crate::support::process::BridgeProcess;
use crate::support::slack::{signed, EventBuilder, FakeSlack, BOT_USER};
use crate::support::{stored_events, TOKEN};

const SIGNING_SECRET: &str = "signing-secret-5e4d3c2b1a09";
const SLACK_TOKEN: &str = "xoxb-slack-token-9z8y7x6w5v";
const WAIT: Duration = Duration::from_secs(15);

/// The binary on a database file that outlives it, against the fakes.
struct Bridge(BridgeProcess);

impl std::ops::Deref for Bridge {
    type Target = BridgeProcess;
    fn deref(&self) -> &BridgeProcess {
        &self.0
    }
}

impl Bridge {
    async fn start(
        db_url: &str,
        agent: &FakeAgent,
        slack: &FakeSlack,
        extra: &[(&str, &str)],
    ) -> Bridge {
        let (agent_url, slack_base) = (agent.url(), slack.api_base());
        let mut vars = vec![
            ("DATABASE_URL", db_url),
            ("AGENT_URL", agent_url.as_str()),
            ("SLACK_BOT_TOKEN", SLACK_TOKEN),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
            ("SLACK_API_BASE", slack_base.as_str()),
            ("SLACK_STREAMING", "update"),
            ("SLACK_PROGRESS", "reaction"),
        ];
        vars.extend_from_slice(extra);
        let bridge = BridgeProcess::spawn(&vars);
        bridge.wait_ready(WAIT).await;
        Bridge(bridge)
    }

    async fn mention(&self, channel: &str, text: &str) -> (reqwest::StatusCode, String) {
        let event = EventBuilder::app_mention(channel, &format!("<@{BOT_USER}> {text}"));
        let ts = event.ts.clone();
        let body = event.envelope().to_string();
        let status = signed(
            &self.client,
            &format!("{}/slack/events", self.base),
            SIGNING_SECRET,
            &body,
        )
        .send()
        .await
        .unwrap()
        .status();
        (status, ts)
    }

    async fn kill(self) {
        self.0.kill().await;
    }
}

/// A database file that outlives each process, and the peers every test needs.
async fn peers() -> (tempfile::TempDir, String, FakeAgent, FakeSlack) {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/bridge.db", dir.path().display());
    (
        dir,
        db_url,
        FakeAgent::start().await,
        FakeSlack::start().await,
    )
}

/// The stored events of `kind`, once there is one.
async fn wait_events(db_url: &str, kind: &str) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = stored_events(db_url, kind).await;
        if !events.is_empty() {
            return events;
        }
        assert!(Instant::now() < deadline, "no {kind} event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn answers(slack: &FakeSlack, channel: &str, thread: &str) -> Vec<Value> {
    slack
        .thread_messages(channel, thread)
        .into_iter()
        .filter(|m| {
            m["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("answer to:"))
        })
        .collect()
}

async fn wait_answers(slack: &FakeSlack, channel: &str, thread: &str, n: usize) -> Vec<Value> {
    wait_answers_within(slack, channel, thread, n, WAIT).await
}

async fn wait_answers_within(
    slack: &FakeSlack,
    channel: &str,
    thread: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let got = answers(slack, channel, thread);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{n} answer(s) never came: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_mention_acknowledged_just_before_kill_9_is_answered_once_after_the_restart() {
    let (_dir, db_url, agent, slack) = peers().await;
    // The agent is slow: the answer cannot be out when the process dies.
    agent.set_delay(Duration::from_secs(30));
    let bridge = Bridge::start(&db_url, &agent, &slack, &[]).await;

    let (status, ts) = bridge.mention("C-crash", "survive this").await;
    assert_eq!(status, 200, "Slack got its acknowledgement");
    agent.wait_for_requests_to("/conversation", 1, WAIT).await;
    bridge.kill().await;
    assert!(answers(&slack, "C-crash", &ts).is_empty());

    agent.set_delay(Duration::ZERO);
    let bridge = Bridge::start(&db_url, &agent, &slack, &[]).await;
    let got = wait_answers(&slack, "C-crash", &ts, 1).await;
    assert_eq!(got[0]["text"], "answer to: survive this");
    // The answer carries its turn, so another restart would find it.
    assert_eq!(got[0]["metadata"]["event_type"], "agent_bridge_turn");
    assert_eq!(
        got[0]["metadata"]["event_payload"]["turn_id"],
        format!("slack-{ts}-T1-C_crash"),
        "{got:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(answers(&slack, "C-crash", &ts).len(), 1, "answered once");
    let metrics = bridge.metrics().await;
    assert!(
        metrics.contains("bridge_turns_recovered_total 1"),
        "{metrics}"
    );
    bridge.kill().await;
}

#[tokio::test]
async fn an_answer_posted_but_not_recorded_before_kill_9_is_not_posted_again() {
    let (_dir, db_url, agent, slack) = peers().await;
    // Slack takes the post at once but answers late: the bridge dies in between.
    slack.delay_posts(Duration::from_secs(30));
    let bridge = Bridge::start(&db_url, &agent, &slack, &[]).await;

    let (status, ts) = bridge.mention("C-posted", "only once").await;
    assert_eq!(status, 200);
    wait_answers(&slack, "C-posted", &ts, 1).await;
    bridge.kill().await;

    slack.delay_posts(Duration::ZERO);
    let before = agent.requests_to("/conversation").len();
    let bridge = Bridge::start(&db_url, &agent, &slack, &[]).await;
    // The restart looks the turn up (its answer carries the turn id) and leaves it.
    let deadline = Instant::now() + WAIT;
    while !slack
        .calls()
        .iter()
        .any(|c| c.method == "conversations.replies")
    {
        assert!(Instant::now() < deadline, "the turn was never looked up");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        answers(&slack, "C-posted", &ts).len(),
        1,
        "not posted twice"
    );
    assert_eq!(
        agent.requests_to("/conversation").len(),
        before,
        "no second agent call"
    );
    bridge.kill().await;
}

#[tokio::test]
async fn a_turn_older_than_recovery_window_is_given_up_with_reply_failed_abandoned() {
    let (_dir, db_url, agent, slack) = peers().await;
    agent.set_delay(Duration::from_secs(30));
    let window = [("RECOVERY_WINDOW", "1s")];
    let bridge = Bridge::start(&db_url, &agent, &slack, &window).await;
    // Something subscribes, so the event is stored.
    crate::support::subscribe_everything(&db_url).await;
    let (status, ts) = bridge.mention("C-late", "too late").await;
    assert_eq!(status, 200);
    agent.wait_for_requests_to("/conversation", 1, WAIT).await;
    bridge.kill().await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.set_delay(Duration::ZERO);
    let bridge = Bridge::start(&db_url, &agent, &slack, &window).await;
    let failed = wait_events(&db_url, "reply.failed").await;
    assert_eq!(failed[0]["data"]["reason"], "abandoned", "{failed:?}");
    assert_eq!(failed[0]["data"]["message_id"], ts.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(answers(&slack, "C-late", &ts).is_empty(), "not answered");
    let metrics = bridge.metrics().await;
    assert!(
        metrics.contains("bridge_turns_abandoned_total 1"),
        "{metrics}"
    );
    bridge.kill().await;
}

/// Once the bridge is connected: a mention of the bot in `channel`; its message id.
async fn discord_mention(discord: &FakeDiscord, channel: &str, text: &str) -> String {
    discord.wait_live(WAIT).await;
    let mention = format!("{} {text}", discord.mention());
    discord
        .guild_message(channel, "3000000000000000001", &mention)
        .await
}

#[tokio::test]
async fn a_discord_mention_cut_by_kill_9_is_answered_once_after_the_restart() {
    let (_dir, db_url, agent, slack) = peers().await;
    let discord = FakeDiscord::start().await;
    agent.set_delay(Duration::from_secs(30));
    let vars = [
        ("DISCORD_TOKEN", "discord-token-QQ11.RR22.SS33"),
        ("DISCORD_API_BASE", &discord.url()),
    ];
    let bridge = Bridge::start(&db_url, &agent, &slack, &vars).await;
    let id = discord_mention(&discord, "2750", "hold on").await;
    agent.wait_for_requests_to("/conversation", 1, WAIT).await;
    bridge.kill().await;
    assert!(discord.messages().is_empty());

    agent.set_delay(Duration::ZERO);
    let bridge = Bridge::start(&db_url, &agent, &slack, &vars).await;
    let posts = discord.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].content(), "answer to: hold on");
    assert_eq!(
        posts[0].body["message_reference"]["message_id"],
        id.as_str()
    );
    assert_eq!(posts[0].body["nonce"], format!("{id}.0"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(discord.messages().len(), 1, "answered once");
    bridge.kill().await;
}

#[tokio::test]
async fn a_discord_answer_posted_but_not_recorded_before_kill_9_is_not_posted_again() {
    let (_dir, db_url, agent, slack) = peers().await;
    let discord = FakeDiscord::start().await;
    // Discord takes the post at once but answers late: the bridge dies in between.
    discord.delay_posts(Duration::from_secs(30));
    let vars = [
        ("DISCORD_TOKEN", "discord-token-QQ11.RR22.SS33"),
        ("DISCORD_API_BASE", &discord.url()),
    ];
    let bridge = Bridge::start(&db_url, &agent, &slack, &vars).await;
    let id = discord_mention(&discord, "2760", "just once").await;
    discord.wait_messages(1, WAIT).await;
    bridge.kill().await;

    discord.delay_posts(Duration::ZERO);
    let before = agent.requests_to("/conversation").len();
    let bridge = Bridge::start(&db_url, &agent, &slack, &vars).await;
    // The restart reads the channel after the message, finds the reply, and leaves it.
    discord
        .wait_call("GET", "/channels/2760/messages", WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = discord.messages();
    assert_eq!(posts.len(), 1, "not posted twice: {posts:?}");
    assert_eq!(
        posts[0].body["message_reference"]["message_id"],
        id.as_str()
    );
    assert_eq!(
        agent.requests_to("/conversation").len(),
        before,
        "no second agent call"
    );
    bridge.kill().await;
}

#[tokio::test]
async fn an_async_agent_query_answered_202_before_kill_9_is_answered_after_the_restart() {
    let (_dir, db_url, agent, slack) = peers().await;
    agent.set_delay(Duration::from_secs(30));
    let bridge = Bridge::start(&db_url, &agent, &slack, &[]).await;
    crate::support::subscribe_everything(&db_url).await;
    let resp = bridge
        .client
        .post(format!("{}/agent-query", bridge.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"query": "keep me", "async": true, "metadata": {"ticket": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    let request_id = accepted["request_id"].as_str().unwrap().to_owned();
    agent.wait_for_requests(1, WAIT).await;
    bridge.kill().await;
    assert!(stored_events(&db_url, "query").await.is_empty());

    agent.set_delay(Duration::ZERO);
    let bridge = Bridge::start(&db_url, &agent, &slack, &[]).await;
    let events = wait_events(&db_url, "query").await;
    let data = &events[0]["data"];
    assert_eq!(data["request_id"], request_id.as_str());
    assert_eq!(data["response"], "answer to: keep me");
    assert_eq!(data["metadata"]["ticket"], 7);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_events(&db_url, "query").await.len(), 1, "once");
    bridge.kill().await;
}

/// SPEC §3 with replicas: a turn a killed replica acknowledged is answered by another
/// one once it has gone untouched for 30 s — once, with the restarted replica's
/// recovery racing it for the claim.
#[tokio::test]
async fn a_turn_left_by_a_killed_replica_is_answered_once_by_another_on_postgres() {
    let Some(pg) = crate::support::db::PgSchema::create().await else {
        return;
    };
    let (agent, slack) = (FakeAgent::start().await, FakeSlack::start().await);
    agent.set_delay(Duration::from_secs(60));
    let a = Bridge::start(&pg.url, &agent, &slack, &[]).await;
    let b = Bridge::start(&pg.url, &agent, &slack, &[]).await;
    let (status, ts) = a.mention("C-replica", "carry on").await;
    assert_eq!(status, 200);
    agent.wait_for_requests_to("/conversation", 1, WAIT).await;
    let killed = Instant::now();
    a.kill().await;
    agent.set_delay(Duration::ZERO);
    // A restarted replica races the survivor for the claim.
    let a = Bridge::start(&pg.url, &agent, &slack, &[]).await;
    let got = wait_answers_within(&slack, "C-replica", &ts, 1, Duration::from_secs(50)).await;
    assert_eq!(got[0]["text"], "answer to: carry on");
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(20),
        "not while it may still run: {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(answers(&slack, "C-replica", &ts).len(), 1, "answered once");
    a.kill().await;
    b.kill().await;
    pg.remove().await;
}
