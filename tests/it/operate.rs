//! Operating the real binary: graceful shutdown with a turn in flight, JSON logs that
//! carry the turn's context, and no secret in any log line even at trace level.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::support::agent::FakeAgent;
use crate::support::discord::FakeDiscord;
use crate::support::process::free_port;
use crate::support::slack::{signed, EventBuilder, FakeSlack, BOT_USER};
use crate::support::TOKEN;

const BIN: &str = env!("CARGO_BIN_EXE_agent-bridge");
const SIGNING_SECRET: &str = "signing-secret-9f8e7d6c5b4a";
const SLACK_TOKEN: &str = "xoxb-slack-token-1a2b3c4d5e";
const DISCORD_TOKEN: &str = "discord-token-ZZ99.YY88.XX77";

struct Bridge {
    child: Child,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Bridge {
    async fn start(agent: &FakeAgent, slack: &FakeSlack, extra: &[(&str, &str)]) -> Bridge {
        // `free_port` can hand out a port another test takes before the bridge binds
        // it; then the bridge exits and someone else's server answers `/readyz`. Only
        // a bridge that is still running and has asked this test's fake Slack who it
        // is counts as started.
        for _ in 0..3 {
            let mut bridge = Self::spawn(agent, slack, extra);
            if bridge.wait_ready().await
                && matches!(bridge.child.try_wait(), Ok(None))
                && !slack.calls_of("auth.test").is_empty()
            {
                return bridge;
            }
            let _ = bridge.child.kill().await;
        }
        panic!("the bridge did not become ready");
    }

    fn spawn(agent: &FakeAgent, slack: &FakeSlack, extra: &[(&str, &str)]) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .current_dir(dir.path())
            .env("HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("AGENT_URL", agent.url())
            .env("BRIDGE_API_TOKEN", TOKEN)
            .env("SLACK_BOT_TOKEN", SLACK_TOKEN)
            .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            .env("SLACK_API_BASE", slack.api_base())
            .env("SLACK_STREAMING", "update")
            .env("SLACK_PROGRESS", "reaction")
            .env("RUST_LOG", "info");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Bridge {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// `true` once `/readyz` answers 200 on the bridge's port.
    async fn wait_ready(&self) -> bool {
        for _ in 0..200 {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
            {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn mention(&self, text: &str) -> reqwest::StatusCode {
        let body = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> {text}"))
            .envelope()
            .to_string();
        signed(
            &self.client,
            &format!("{}/slack/events", self.base),
            SIGNING_SECRET,
            &body,
        )
        .send()
        .await
        .unwrap()
        .status()
    }

    async fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success());
    }
}

#[tokio::test]
async fn sigterm_stops_intake_but_the_answer_in_flight_is_still_posted() {
    let agent = FakeAgent::start().await;
    let slack = FakeSlack::start().await;
    let bridge = Bridge::start(&agent, &slack, &[]).await;
    agent.set_delay(Duration::from_millis(1500));

    assert_eq!(bridge.mention("slow question").await, 200);
    agent
        .wait_for_requests_to("/conversation", 1, Duration::from_secs(5))
        .await;
    bridge.terminate().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Draining: new events are refused so Slack retries elsewhere, and /readyz says
    // not ready. (The event goes first: /readyz asks the slowed agent's /health.)
    assert_eq!(bridge.mention("too late").await, 503);
    let ready = bridge
        .client
        .get(format!("{}/readyz", bridge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    let posted = slack
        .wait_for("chat.postMessage", 1, Duration::from_secs(10))
        .await;
    assert!(
        posted[0].text().contains("answer to: slow question"),
        "{:?}",
        posted[0]
    );
    let out = tokio::time::timeout(Duration::from_secs(15), bridge.child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        agent.requests_to("/conversation").len(),
        1,
        "the refused event never reached the agent"
    );
}

#[tokio::test]
async fn json_logs_carry_the_turn_and_no_log_line_ever_holds_a_secret() {
    let agent = FakeAgent::start().await;
    let slack = FakeSlack::start().await;
    let discord = FakeDiscord::start().await;
    let discord_url = discord.url();
    let bridge = Bridge::start(
        &agent,
        &slack,
        &[
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "trace"),
            ("DISCORD_TOKEN", DISCORD_TOKEN),
            ("DISCORD_API_BASE", &discord_url),
        ],
    )
    .await;
    assert_eq!(bridge.mention("hello").await, 200);
    slack
        .wait_for("chat.postMessage", 1, Duration::from_secs(10))
        .await;
    discord.wait_ready(Duration::from_secs(10)).await;
    discord
        .guild_message("2009", "3009", &format!("{} hi discord", discord.mention()))
        .await;
    let answered = tokio::spawn({
        let discord = discord.clone();
        async move { discord.wait_messages(1, Duration::from_secs(10)).await }
    })
    .await;
    if answered.is_err() {
        bridge.terminate().await;
        let out = bridge.child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr
            .lines()
            .filter(|l| l.contains("discord") || l.contains("MESSAGE"))
            .take(40)
            .collect();
        panic!("discord not answered:\n{}", lines.join("\n"));
    }
    let resp = bridge
        .client
        .get(format!("{}/sessions", bridge.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    bridge.terminate().await;
    let out = tokio::time::timeout(Duration::from_secs(15), bridge.child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() > 20, "trace logging produced output");

    for secret in [SIGNING_SECRET, SLACK_TOKEN, DISCORD_TOKEN, TOKEN] {
        let leaks: Vec<_> = stderr.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "secret {secret:?} in logs:\n{}",
            leaks.join("\n")
        );
    }

    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"))
        })
        .collect();
    let turn = lines
        .iter()
        .find(|l| l["message"] == "turn answered" && l["span"]["platform"] == "slack")
        .unwrap_or_else(|| panic!("no turn line in:\n{stderr}"));
    assert_eq!(turn["span"]["conversation"], "slack/T1/C1");
    assert!(
        turn["session"].as_str().is_some_and(|s| !s.is_empty()),
        "{turn}"
    );
    assert!(turn["latency_ms"].is_u64(), "{turn}");
}

#[tokio::test]
async fn the_event_of_a_turn_finished_during_shutdown_is_still_delivered() {
    use crate::support::receiver::Receiver;
    let agent = FakeAgent::start().await;
    let slack = FakeSlack::start().await;
    let receiver = Receiver::start().await;
    let bridge = Bridge::start(&agent, &slack, &[("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")]).await;
    let resp = bridge
        .client
        .post(format!("{}/webhooks", bridge.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"url": receiver.url(), "events": ["conversation"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    agent.set_delay(Duration::from_millis(1000));

    assert_eq!(bridge.mention("last words").await, 200);
    agent
        .wait_for_requests_to("/conversation", 1, Duration::from_secs(5))
        .await;
    bridge.terminate().await;

    let out = tokio::time::timeout(Duration::from_secs(20), bridge.child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "delivered before the process exited");
    assert_eq!(got[0].json()["data"]["query"], "last words");
}
