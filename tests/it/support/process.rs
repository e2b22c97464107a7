//! The real binary as a child process, configured only through SPEC §2's variables,
//! for the tests that stop it for real: `kill -9` ([`BridgeProcess::kill`]) or SIGTERM
//! ([`BridgeProcess::terminate`]). Its stderr goes to a file, read by
//! [`BridgeProcess::log`] (a failing test shows it).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use super::TOKEN;

const BIN: &str = env!("CARGO_BIN_EXE_agent-bridge");

/// A port nothing listens on now (for `HTTP_BIND` of a child process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct BridgeProcess {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    log: tempfile::NamedTempFile,
}

impl BridgeProcess {
    /// Starts the binary with nothing but `HTTP_BIND` (a free port),
    /// `BRIDGE_API_TOKEN`, `RUST_LOG=warn` and `vars` (which may override them).
    pub fn spawn(vars: &[(&str, &str)]) -> BridgeProcess {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("BRIDGE_API_TOKEN", TOKEN)
            .env("RUST_LOG", "warn");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true);
        BridgeProcess {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/readyz`'s status and body, or `None` while nothing listens.
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        let resp = self.client.get(self.url("/readyz")).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.readyz().await;
            if answer.as_ref().is_some_and(|(s, _)| *s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge did not become ready within {timeout:?}: {answer:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let resp = self.client.get(self.url("/metrics")).bearer_auth(TOKEN);
        resp.send().await.unwrap().text().await.unwrap()
    }

    /// The value of an unlabelled metric, e.g. `bridge_discord_shards_held`; `None`
    /// while the process does not answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let resp = self.client.get(self.url("/metrics")).bearer_auth(TOKEN);
        let text = resp.send().await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `kill -9`: no shutdown, no drain, nothing flushed.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, as an orchestrator stops a container; returns at once.
    pub async fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await;
        assert!(sent.unwrap().success());
    }

    /// Waits for the process to exit; its exit code.
    pub async fn exited(mut self, timeout: Duration) -> Option<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await;
        status.expect("the bridge exits in time").unwrap().code()
    }
}
