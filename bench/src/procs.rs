//! Child processes: the bridge (`agent-bridge run`, configured only through SPEC §2
//! variables, in a fresh temp dir with its own SQLite file) and the floor server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::util::{cpu_secs, free_port, rss_mib, wait_200, wait_listening};

/// Distinct bridge log lines (timestamps and numbers stripped) and how often they
/// appeared, over every bridge process of the run (RUST_LOG=warn).
pub static LOGS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn tally_log(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let mut logs = LOGS.lock().unwrap();
    for line in text.lines() {
        let line = strip_ansi(line);
        // Drop the timestamp and anything that varies per line.
        let rest = line
            .split_once(' ')
            .map(|(first, rest)| {
                if first.contains('T') && first.contains(':') {
                    rest
                } else {
                    line.as_str()
                }
            })
            .unwrap_or(&line);
        let key: String = rest
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(200)
            .collect();
        if key.trim().is_empty() {
            continue;
        }
        *logs.entry(key.trim().to_owned()).or_default() += 1;
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub const SIGNING_SECRET: &str = "bench-signing-secret-8f14e45fceea167a5a36dedd4bea2543";
pub const BOT_TOKEN: &str = "xoxb-bench-0000-token";
pub const APP_TOKEN: &str = "xapp-1-A0BENCH01-bench";
pub const API_TOKEN: &str = "bench-admin-token-1f0e3dad99908345";
pub const OPENAI_KEY: &str = "sk-bench-0000";
pub const DISCORD_TOKEN: &str = "bench.discord.token";

pub struct Proc {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub spawned: Instant,
    pub log: PathBuf,
    /// `perf record` attached to this process (BENCH_PERF).
    pub perf: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    pub fn cpu(&self) -> f64 {
        cpu_secs(self.pid).unwrap_or(f64::NAN)
    }
    pub fn rss(&self) -> f64 {
        rss_mib(self.pid)
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
    /// SIGTERM, then SIGKILL after `grace`; the log's lines are tallied in [`LOGS`].
    pub fn stop(mut self, grace: Duration) {
        self.stop_inner(grace);
        tally_log(&self.log);
    }

    fn stop_inner(&mut self, grace: Duration) {
        if let Some(mut perf) = self.perf.take() {
            unsafe {
                libc::kill(perf.id() as i32, libc::SIGINT);
            }
            let _ = perf.wait();
        }
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a workload's bridge needs.
#[derive(Clone, Debug, Default)]
pub struct BridgeCfg {
    pub echo: bool,
    pub agent: Option<SocketAddr>,
    pub slack: Option<SocketAddr>,
    /// `SLACK_PROGRESS_REACTION`; `None` keeps the default (`eyes`).
    pub reaction: Option<String>,
    pub webhooks_private: bool,
    /// `AGENT_KIND=openai` against the fake OpenAI-compatible server at this address
    /// (W7); overrides `echo`.
    pub openai: Option<SocketAddr>,
    /// Discord on, against the fake Discord (REST + gateway) at this address (W7).
    pub discord: Option<SocketAddr>,
    /// W8: Slack over Socket Mode only (`SLACK_APP_TOKEN`, one connection, no
    /// signing secret).
    pub socket: bool,
    pub extra: Vec<(String, String)>,
}

impl BridgeCfg {
    pub fn env(&self, port: u16, dir: &Path) -> Vec<(String, String)> {
        let mut v = vec![
            ("HTTP_BIND".into(), format!("127.0.0.1:{port}")),
            (
                "DATABASE_URL".into(),
                format!("sqlite://{}/b.db", dir.display()),
            ),
            ("RUST_LOG".into(), "warn".into()),
            ("BRIDGE_API_TOKEN".into(), API_TOKEN.into()),
        ];
        if let Some(o) = self.openai {
            v.push(("AGENT_KIND".into(), "openai".into()));
            v.push(("OPENAI_BASE_URL".into(), format!("http://{o}/v1")));
            v.push(("OPENAI_API_KEY".into(), OPENAI_KEY.into()));
            v.push(("OPENAI_MODEL".into(), "bench".into()));
        } else if self.echo {
            v.push(("AGENT_KIND".into(), "echo".into()));
        } else {
            v.push(("AGENT_KIND".into(), "ai-agent-api".into()));
        }
        if let Some(a) = self.agent {
            v.push(("AGENT_URL".into(), format!("http://{a}")));
        }
        if let Some(s) = self.slack {
            v.push(("SLACK_BOT_TOKEN".into(), BOT_TOKEN.into()));
            if self.socket {
                v.push(("SLACK_APP_TOKEN".into(), APP_TOKEN.into()));
                v.push(("SLACK_SOCKET_CONNECTIONS".into(), "1".into()));
            } else {
                v.push(("SLACK_SIGNING_SECRET".into(), SIGNING_SECRET.into()));
            }
            v.push(("SLACK_API_BASE".into(), format!("http://{s}/api")));
            if let Some(r) = &self.reaction {
                v.push(("SLACK_PROGRESS_REACTION".into(), r.clone()));
            }
        }
        if let Some(d) = self.discord {
            v.push(("DISCORD_TOKEN".into(), DISCORD_TOKEN.into()));
            v.push(("DISCORD_API_BASE".into(), crate::fake_discord::api_base(d)));
        }
        if self.webhooks_private {
            v.push(("WEBHOOK_ALLOW_PRIVATE_TARGETS".into(), "true".into()));
        }
        v.extend(self.extra.iter().cloned());
        v
    }
}

/// Spawns the bridge; does not wait for readiness.
pub fn spawn_bridge(bin: &Path, cfg: &BridgeCfg) -> Result<Proc> {
    let dir = tempfile::Builder::new().prefix("bench-bridge-").tempdir()?;
    let port = free_port()?;
    let log = dir.path().join("bridge.log");
    let logf = std::fs::File::create(&log)?;
    let mut cmd = command(bin, "bridge");
    cmd.arg("run")
        .current_dir(dir.path())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    for (k, v) in cfg.env(port, dir.path()) {
        cmd.env(k, v);
    }
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    Ok(Proc {
        pid: child.id(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        spawned,
        log,
        perf: None,
        _dir: Some(dir),
    })
}

/// `BENCH_CALLGRIND=DIR`: every bridge and reference server the harness starts runs
/// under `valgrind --tool=callgrind` (about 50 times slower), its instruction counts
/// zeroed once it is ready and written to `DIR/<what>.<pid>.cg` when it stops.
/// Counts are the same from run to run whatever else the machine does, so small
/// changes show that CPU times, on a shared machine, hide; `bench/tools/instructions.py`
/// turns the files into instructions per event.
fn callgrind_dir() -> Option<String> {
    std::env::var("BENCH_CALLGRIND")
        .ok()
        .filter(|d| !d.is_empty())
}

/// The command that runs `bin` (`what`: `bridge` or a helper's subcommand): under
/// callgrind with `BENCH_CALLGRIND`.
fn command(bin: &Path, what: &str) -> Command {
    let Some(dir) = callgrind_dir() else {
        return Command::new(bin);
    };
    let _ = std::fs::create_dir_all(&dir);
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={dir}/{what}.%p.cg"))
        .arg(bin);
    cmd
}

/// Zeroes a callgrind process's counts, so they leave out its start-up.
fn zero_counts(p: &Proc) {
    if callgrind_dir().is_none() {
        return;
    }
    let zeroed = Command::new("callgrind_control")
        .args(["-z", &p.pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !zeroed.is_ok_and(|s| s.success()) {
        eprintln!("[bench] could not zero the counts of pid {}", p.pid);
    }
}

/// With `BENCH_PERF=DIR`, attaches `perf record` to a started bridge; the profile goes
/// to `DIR/bridge-<n>.perf.data`. `BENCH_PERF_CALLGRAPH` picks the unwinder
/// (default `dwarf,16384`; `fp` or `none` are cheaper).
pub fn attach_perf(p: &mut Proc) {
    let Ok(dir) = std::env::var("BENCH_PERF") else {
        return;
    };
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = std::fs::create_dir_all(&dir);
    let out = format!("{dir}/bridge-{n}.perf.data");
    let cg = std::env::var("BENCH_PERF_CALLGRAPH").unwrap_or_else(|_| "dwarf,16384".into());
    let mut cmd = Command::new("perf");
    cmd.args([
        "record",
        "-q",
        "-e",
        "cpu-clock",
        "-F",
        "499",
        "-p",
        &p.pid.to_string(),
        "-o",
        &out,
    ]);
    if cg != "none" {
        cmd.args(["--call-graph", &cg]);
    }
    match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => {
            eprintln!("[bench] perf recording pid {} into {out}", p.pid);
            std::thread::sleep(Duration::from_millis(300));
            p.perf = Some(c);
        }
        Err(e) => eprintln!("[bench] cannot start perf: {e}"),
    }
}

/// Spawns the bridge and waits for `/readyz` 200; returns it and the time it took
/// from spawn.
pub async fn start_bridge(bin: &Path, cfg: &BridgeCfg) -> Result<(Proc, Duration)> {
    let mut p = spawn_bridge(bin, cfg)?;
    match wait_200(
        p.addr,
        "/readyz",
        Duration::from_secs(20),
        Duration::from_millis(1),
    )
    .await
    {
        Ok(_) => {
            let took = p.spawned.elapsed();
            zero_counts(&p);
            attach_perf(&mut p);
            Ok((p, took))
        }
        Err(e) => {
            let alive = p.alive();
            Err(anyhow!(
                "bridge not ready ({e}); alive: {alive}; log:\n{}",
                p.log_tail()
            ))
        }
    }
}

pub async fn start_floor(bench_bin: &Path) -> Result<Proc> {
    start_helper(bench_bin, "floor-slack", &[SIGNING_SECRET]).await
}

/// `bench SUBCOMMAND <free loopback addr> ARGS…` as its own process (the floor, the
/// reference servers), once it listens.
pub async fn start_helper(bench_bin: &Path, subcommand: &str, args: &[&str]) -> Result<Proc> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = tempfile::Builder::new().prefix("bench-floor-").tempdir()?;
    let log = dir.path().join("floor.log");
    let logf = std::fs::File::create(&log)?;
    let child = command(bench_bin, subcommand)
        .arg(subcommand)
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()?;
    let p = Proc {
        pid: child.id(),
        child,
        addr,
        spawned: Instant::now(),
        log,
        perf: None,
        _dir: Some(dir),
    };
    // Under valgrind a helper takes seconds to start.
    let start = match callgrind_dir() {
        Some(_) => Duration::from_secs(60),
        None => Duration::from_secs(10),
    };
    wait_listening(addr, start).await?;
    zero_counts(&p);
    Ok(p)
}
