//! The real binary: the console chat, configuration errors, `migrate`, and graceful
//! shutdown on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::agent::FakeAgent;
use crate::support::process::free_port;
use crate::support::{db, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_agent-bridge");

/// The binary with a clean environment: nothing from the developer's shell or a
/// `.env` leaks in (the working directory is a temp dir without one).
fn bridge(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().current_dir(dir).env("RUST_LOG", "warn");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn console_chat_with_the_echo_agent_continues_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bridge(dir.path())
        .args(["console", "--agent", "echo"])
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"hello there\nand again\nhelp\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("agent> echo (turn 1): hello there"),
        "{stdout}"
    );
    assert!(
        stdout.contains("agent> echo (turn 2): and again"),
        "{stdout}"
    );
    assert!(
        stdout.contains("`reset`"),
        "help is answered by the bridge: {stdout}"
    );
    assert!(
        dir.path().join("agent-bridge.db").exists(),
        "the default SQLite store is created"
    );
}

#[tokio::test]
async fn a_bad_value_stops_start_up_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("AGENT_TIMEOUT_SECS", "abc"),
        ("AGENT_KIND", "magic"),
        ("AGENT_URL", "not a url"),
        ("SESSION_SCOPE", "guild"),
        ("HTTP_BIND", "everywhere"),
    ];
    for (var, value) in cases {
        let out = bridge(dir.path())
            .arg("migrate")
            .env(var, value)
            .env("DISCORD_TOKEN", "discord-secret-value")
            .env("SLACK_BOT_TOKEN", "xoxb-slack-secret-value")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
        assert!(
            stderr.contains("e.g."),
            "an example of a good value: {stderr}"
        );
        assert!(!stderr.contains("secret-value"), "no secret in: {stderr}");
    }
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (_db_dir, url) = db::sqlite_file_url().await;
    let out = bridge(dir.path())
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = url.trim_start_matches("sqlite://");
    assert!(std::path::Path::new(path).exists());
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start().await;
    agent.set_delay(Duration::from_millis(800));
    let port = free_port();
    let mut child = bridge(dir.path())
        .env("HTTP_BIND", format!("127.0.0.1:{port}"))
        .env("AGENT_URL", agent.url())
        .env("BRIDGE_API_TOKEN", TOKEN)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            ready = r.status() == 200;
            if ready {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the bridge became ready");

    let query = tokio::spawn(
        client
            .post(format!("{base}/agent-query"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"query": "slow one"}))
            .send(),
    );
    agent
        .wait_for_requests_to("/query", 1, Duration::from_secs(5))
        .await;
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());

    let resp = query
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(resp.status(), 200);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn check_prints_one_line_per_part_and_fails_on_a_dead_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start().await;
    let out = bridge(dir.path())
        .arg("check")
        .env("AGENT_URL", agent.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in ["config", "store", "agent", "slack", "discord"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(part)),
            "{part}: {stdout}"
        );
    }
    assert_eq!(agent.requests_to("/health").len(), 1);

    let dead = crate::support::agent::dead_url().await;
    let dead_with_credentials = dead.replacen("://", "://bridge:AGENT-PASSWORD-9@", 1);
    let out = bridge(dir.path())
        .arg("check")
        .env("AGENT_URL", &dead_with_credentials)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("agent")),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("AGENT-PASSWORD-9") && !stderr.contains("AGENT-PASSWORD-9"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("bridge:***@"), "{stdout}");
}

#[tokio::test]
async fn check_reaches_slack_and_discord_and_prints_the_invite_url() {
    use crate::support::discord::{FakeDiscord, BOT_ID};
    use crate::support::slack::FakeSlack;
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start().await;
    let slack = FakeSlack::start().await;
    let discord = FakeDiscord::start().await;
    let out = bridge(dir.path())
        .arg("check")
        .env("AGENT_URL", agent.url())
        .env("SLACK_BOT_TOKEN", "xoxb-check-token")
        .env("SLACK_SIGNING_SECRET", "check-secret")
        .env("SLACK_API_BASE", slack.api_base())
        .env("DISCORD_TOKEN", "discord-check-token")
        .env("DISCORD_API_BASE", discord.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slack_line = stdout.lines().find(|l| l.contains("slack")).unwrap();
    assert!(
        slack_line.starts_with("ok") && slack_line.contains("all scopes granted"),
        "{slack_line}"
    );
    let discord_line = stdout.lines().find(|l| l.contains("discord")).unwrap();
    let invite = format!(
        "client_id={BOT_ID}&scope=bot%20applications.commands&permissions={}",
        agent_bridge::check::DISCORD_PERMISSIONS
    );
    assert!(
        discord_line.starts_with("ok") && discord_line.contains(&invite),
        "{discord_line}"
    );
    assert!(!stdout.contains("xoxb-check-token") && !stdout.contains("discord-check-token"));

    // A Slack token the workspace refuses fails the check with Slack's reason.
    slack.fail("auth.test", "invalid_auth");
    let out = bridge(dir.path())
        .arg("check")
        .env("AGENT_URL", agent.url())
        .env("SLACK_BOT_TOKEN", "xoxb-check-token")
        .env("SLACK_SIGNING_SECRET", "check-secret")
        .env("SLACK_API_BASE", slack.api_base())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("invalid_auth")),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_console_honours_the_rate_limit_like_any_platform() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bridge(dir.path())
        .args(["console", "--agent", "echo"])
        .env("USER_RATE_LIMIT", "1/min")
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\nsecond\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("agent> echo (turn 1): first"), "{stdout}");
    assert!(stdout.contains("faster than I can answer"), "{stdout}");
    assert!(
        !stdout.contains("second"),
        "the second line never reached the agent: {stdout}"
    );
}

#[tokio::test]
async fn a_refused_app_token_stops_socket_mode_with_one_error_line_and_http_stays_up() {
    use crate::support::slack::{FakeSlack, BAD_APP_TOKEN};
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start().await;
    let slack = FakeSlack::start().await;
    let port = free_port();
    let mut child = bridge(dir.path())
        .env("HTTP_BIND", format!("127.0.0.1:{port}"))
        .env("AGENT_URL", agent.url())
        .env("BRIDGE_API_TOKEN", TOKEN)
        .env("SLACK_BOT_TOKEN", "xoxb-test")
        .env("SLACK_APP_TOKEN", BAD_APP_TOKEN)
        .env("SLACK_API_BASE", slack.api_base())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    slack
        .wait_for("apps.connections.open", 1, Duration::from_secs(10))
        .await;
    // Long enough for a reconnect storm to show (the backoff starts at 0.5 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["parts"]["slack_socket"], "down", "{body}");
    let opens = slack.calls_of("apps.connections.open").len();
    assert!(
        opens <= 2,
        "one attempt per connection, no retries: {opens}"
    );

    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("SLACK_APP_TOKEN"))
        .collect();
    assert_eq!(lines.len(), 1, "one line naming the variable:\n{stderr}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(lines[0].contains("invalid_auth"), "{}", lines[0]);
    assert!(!stderr.contains(BAD_APP_TOKEN), "{stderr}");
}

#[tokio::test]
async fn check_opens_a_socket_mode_url_and_names_a_refused_app_token() {
    use crate::support::slack::{FakeSlack, APP_TOKEN, BAD_APP_TOKEN};
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start().await;
    let slack = FakeSlack::start().await;
    for (token, ok) in [(APP_TOKEN, true), (BAD_APP_TOKEN, false)] {
        let out = bridge(dir.path())
            .arg("check")
            .env("AGENT_URL", agent.url())
            .env("SLACK_BOT_TOKEN", "xoxb-check-token")
            .env("SLACK_APP_TOKEN", token)
            .env("SLACK_API_BASE", slack.api_base())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), ok, "{stdout}");
        let line = stdout
            .lines()
            .find(|l| l.contains("Socket Mode"))
            .unwrap_or_else(|| panic!("a Socket Mode line: {stdout}"));
        if ok {
            assert!(line.starts_with("ok"), "{line}");
        } else {
            assert!(
                line.starts_with("FAIL") && line.contains("SLACK_APP_TOKEN"),
                "{line}"
            );
        }
        assert!(!stdout.contains(token), "{stdout}");
    }
}
