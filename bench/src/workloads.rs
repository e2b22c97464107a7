//! The workloads of ../shared/BENCH.md. Each `wN` runs one round: the floor and the
//! bridge (alternating which goes first by round), each bridge measurement on a fresh
//! process with a fresh SQLite file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};

use crate::fakes::{Fakes, MAX_SEQ};
use crate::gen::{self, Load, LoadResult, Mode};
use crate::procs::{self, BridgeCfg, Proc, API_TOKEN, SIGNING_SECRET};
use crate::report::{Budget, Report};
use crate::slackev::EventMaker;
use crate::util::{hwm_mib, now_ns, request};

pub struct Ctx {
    pub bridge_bin: PathBuf,
    /// `--against PATH`: the baseline build W1AB compares `bridge_bin` with; or
    /// [`AGAINST_REFERENCE_JOURNAL`] / [`AGAINST_REFERENCE_STORE`], a W1 reference.
    pub against: Option<PathBuf>,
    pub self_bin: PathBuf,
    pub fakes: Fakes,
    pub duration: Duration,
    pub conns: usize,
    pub w1_rate: f64,
    pub w1_channels: u64,
    pub w3_rate: f64,
    pub w4_events: u64,
    pub w4_rate: f64,
    pub w4_lat_events: u64,
    pub w5_convs: u64,
    pub w6_starts: usize,
    pub w7_answers: u64,
    pub w7_pieces: u64,
    pub w7_chars: usize,
    pub w7_piece_ms: u64,
    pub w7_interval_ms: u64,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench {:>7.1}s] {}", now_ns() as f64 / 1e9, msg.as_ref());
}

fn settings_note(r: &LoadResult) -> String {
    let mut s = format!("{} ok, {} errors", r.ok, r.errors);
    if !r.statuses.is_empty() {
        s.push_str(&format!(" {:?}", r.statuses));
    }
    s
}

/// Samples VmRSS of a pid every 50 ms until stopped; returns the peak in MiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<f64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(crate::util::rss_mib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(crate::util::rss_mib(pid))
        });
        RssSampler { stop, handle }
    }
    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0.0)
    }
}

/// Waits until the fake Slack has at least `posts` postMessage calls, every added
/// reaction was removed, and nothing arrived for 250 ms.
async fn wait_replies(f: &Fakes, posts: u64, timeout: Duration) -> bool {
    let s = &f.slack.stats;
    let start = Instant::now();
    loop {
        let p = s.posts.load(Ordering::Relaxed);
        let add = s.react_add.load(Ordering::Relaxed);
        let rem = s.react_remove.load(Ordering::Relaxed);
        let quiet = now_ns().saturating_sub(s.last_call_ns.load(Ordering::Relaxed)) > 250_000_000;
        if p >= posts && rem >= add && quiet {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn acks() -> Arc<Vec<AtomicU8>> {
    Arc::new((0..MAX_SEQ).map(|_| AtomicU8::new(0)).collect())
}

/// Every acknowledged event answered exactly once, nothing else answered.
fn exactly_once(f: &Fakes, acks: &[AtomicU8], issued: u64) -> (bool, String) {
    let (mut good, mut missing, mut dup, mut unexpected) = (0u64, 0u64, 0u64, 0u64);
    let n = (issued as usize).min(MAX_SEQ);
    for (ack, posts) in acks.iter().zip(f.slack.per_seq.iter()).take(n) {
        let a = ack.load(Ordering::Relaxed) > 0;
        let c = posts.load(Ordering::Relaxed);
        match (a, c) {
            (true, 1) => good += 1,
            (true, 0) => missing += 1,
            (_, c) if c > 1 => dup += 1,
            (false, _) => unexpected += 1,
            _ => {}
        }
    }
    let stray = f.slack.stats.unknown_thread.load(Ordering::Relaxed);
    let busy = f.slack.stats.busy_posts.load(Ordering::Relaxed);
    let errs = f.slack.stats.error_posts.load(Ordering::Relaxed);
    let ok = missing == 0 && dup == 0 && unexpected == 0 && stray == 0 && good > 0;
    (
        ok,
        format!(
            "{good} answered once ({busy} of them with the busy reply, {errs} with ERROR_REPLY), {missing} unanswered, {dup} answered twice+, {unexpected} answered without a 200, {stray} posts to unknown threads"
        ),
    )
}

fn slack_cfg(f: &Fakes) -> BridgeCfg {
    BridgeCfg {
        echo: true,
        slack: Some(f.slack_addr),
        ..BridgeCfg::default()
    }
}

async fn probe_slack(ctx: &Ctx) -> Result<(), String> {
    let (b, _) = procs::start_bridge(&ctx.bridge_bin, &slack_cfg(&ctx.fakes))
        .await
        .map_err(|e| format!("bridge with Slack did not start: {e}"))?;
    let maker = EventMaker::new(SIGNING_SECRET, 1, "probe", b.addr);
    let req = maker.request(3_999_999);
    let (parts, body) = req.into_parts();
    let body: Bytes = http_body_util::BodyExt::collect(body)
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let hdr = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (ts, sig) = (hdr("x-slack-request-timestamp"), hdr("x-slack-signature"));
    let res = request(
        b.addr,
        Method::POST,
        "/slack/events",
        &[
            ("x-slack-request-timestamp", &ts),
            ("x-slack-signature", &sig),
        ],
        Some(body),
    )
    .await;
    b.stop(Duration::from_secs(3));
    match res {
        Ok((StatusCode::OK, _)) => Ok(()),
        Ok((s, body)) => Err(format!(
            "POST /slack/events answered {s}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(120)
                .collect::<String>()
        )),
        Err(e) => Err(format!("POST /slack/events failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------
// W1
// ---------------------------------------------------------------------------------

pub fn declare_w1(rep: &mut Report, ctx: &Ctx) {
    let w = "W1";
    rep.declare(
        w,
        &format!("throughput ({} conns)", ctx.conns),
        "req/s",
        Some(Budget::RatioAtLeast(0.5)),
    );
    rep.declare(w, &format!("p50 @{}/s", ctx.w1_rate), "ms", None);
    rep.declare(
        w,
        &format!("p99 @{}/s", ctx.w1_rate),
        "ms",
        Some(Budget::AtMost(1.0)),
    );
    rep.declare(w, &format!("p99.9 @{}/s", ctx.w1_rate), "ms", None);
    rep.declare(
        w,
        "CPU per event at max load, replies included",
        "µs",
        Some(Budget::AtMost(40.0)),
    );
    rep.declare(
        w,
        &format!("CPU per event @{}/s, replies included", ctx.w1_rate),
        "µs",
        None,
    );
    rep.declare(
        w,
        "context switches per event at max load (all threads)",
        "1",
        None,
    );
    rep.declare(
        w,
        &format!(
            "context switches per event @{}/s (all threads)",
            ctx.w1_rate
        ),
        "1",
        None,
    );
    rep.declare(w, W1_DISK, "KiB", None);
    rep.declare(w, W1_SYSCW, "1", None);
    rep.declare(w, W1_SYSCR, "1", None);
    rep.declare(
        w,
        "CPU per event at max load, SLACK_PROGRESS_REACTION= (off)",
        "µs",
        None,
    );
    rep.declare(
        w,
        "every event answered exactly once",
        "ok",
        Some(Budget::AllOk),
    );
    rep.declare(
        w,
        "RSS under load (peak)",
        "MiB",
        Some(Budget::AtMost(40.0)),
    );
    rep.declare(w, REF_W1_TPUT, "req/s", None);
    rep.declare(w, REF_W1_CPU, "µs", None);
    rep.declare(w, REF_W1S_TPUT, "req/s", None);
    rep.declare(w, REF_W1S_CPU, "µs", None);
    rep.declare(w, REF_W1J_TPUT, "req/s", None);
    rep.declare(w, REF_W1J_CPU, "µs", None);
    rep.declare(w, W1_VS_REF, "µs", Some(Budget::RatioAtMost(1.0)));
    rep.declare(w, W1_STORE, "µs", None);
}

/// Where a max-load event's cost goes besides CPU, bridge against the reference with
/// SQLite (the floor writes nothing): the store's WAL and checkpoint writes, and the
/// system calls (sockets and files) behind the kernel's share of the CPU figure.
const W1_DISK: &str =
    "storage written per event at max load; floor column: reference with SQLite and the journal";
const W1_SYSCW: &str = "write-like system calls per event at max load; floor column: the same";
const W1_SYSCR: &str = "read-like system calls per event at max load; floor column: the same";

/// Rows of the reference servers (`reference.rs`): their figure in the bridge column,
/// against the same round's floor.
const REF_W1_TPUT: &str =
    "REFERENCE, not the bridge: hyper HMAC + parse + chat.postMessage, no store";
const REF_W1_CPU: &str = "REFERENCE, not the bridge: its CPU per event at max load";
const REF_W1S_TPUT: &str =
    "REFERENCE, not the bridge: the same + SQLite dedupe, conversation, 2 transcript rows";
const REF_W1S_CPU: &str =
    "REFERENCE, not the bridge: the same + SQLite, its CPU per event at max load";
const REF_W1J_TPUT: &str = "REFERENCE, not the bridge: SPEC's work today: the turn journaled \
     before the 200, reply with metadata and feedback buttons, then conversation, \
     2 transcript rows, turn answered";
const REF_W1J_CPU: &str =
    "REFERENCE, not the bridge: the same with the journal, its CPU per event at max load";
/// BENCH.md's W1 budget: the bridge's CPU per event against the reference doing the
/// same work SPEC asks for (since SPEC §3, the turn journal: [`Who::ReferenceJournal`]).
const W1_VS_REF: &str =
    "CPU per event at max load; floor column: reference with SQLite and the journal";
/// The share of W1_VS_REF spent in the store's own threads (`STORE_THREADS`): what the
/// store's design costs against the plain one, apart from the HTTP and reply path.
const W1_STORE: &str = "CPU per event at max load in the store's threads (writer, checkpoints); \
     floor column: reference with SQLite and the journal";
const REF_W2_TPUT: &str = "REFERENCE, not the bridge: hyper proxy, body forwarded as is";
const REF_W2_CPU: &str = "REFERENCE, not the bridge: its CPU per request at max load";

/// Who serves a measurement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Floor,
    Bridge,
    /// W1AB's baseline build (`--against`).
    Against,
    /// The reference server of `reference.rs`.
    Reference,
    /// The reference server with its SQLite bookkeeping (`reference.rs`).
    ReferenceStore,
    /// The reference server doing what SPEC asks today: the turn journal too.
    ReferenceJournal,
}

struct Side {
    gen_cpu_us: f64,
    /// CPU per answered event of the store's own threads ([`STORE_THREADS`]).
    store_cpu_us: f64,
    ctx_per_req: f64,
    /// Bytes written to storage per answered event, in KiB (`/proc/<pid>/io`).
    disk_kib: f64,
    /// Write-like and read-like system calls per answered event.
    syscw: f64,
    syscr: f64,
    load: LoadResult,
    cpu_us: f64,
    rss_peak: f64,
    once: Option<(bool, String)>,
}

/// The threads that do a store's work, by name: the bridge's SQLite writer and its
/// sqlx connections' worker threads (the checkpointer's, the readers'), the
/// references' writer and checkpointer. The bridge's store work on its runtime threads
/// (a write an idle writer lets the caller make inline, and the hand-off to the
/// writer) is not among them: the figure is a lower bound for the bridge.
const STORE_THREADS: &[&str] = &[
    "sqlite-writer",
    "sqlx-sqlite",
    "ref-writer",
    "ref-checkpoint",
];

async fn w1_measure(ctx: &Ctx, who: Who, mode: Mode, reaction: Option<String>) -> Result<Side> {
    let f = &ctx.fakes;
    f.reset();
    let floor = who == Who::Floor;
    let db_dir = tempfile::Builder::new().prefix("bench-ref-db-").tempdir()?;
    let proc: Proc = match who {
        Who::Floor => procs::start_floor(&ctx.self_bin).await?,
        Who::Reference => {
            let api = f.slack_addr.to_string();
            procs::start_helper(
                &ctx.self_bin,
                "reference-slack",
                &[procs::SIGNING_SECRET, &api],
            )
            .await?
        }
        Who::ReferenceStore | Who::ReferenceJournal => {
            let api = f.slack_addr.to_string();
            let db = db_dir.path().join("ref.db").to_string_lossy().into_owned();
            let subcommand = match who {
                Who::ReferenceStore => "reference-slack-store",
                _ => "reference-slack-journal",
            };
            procs::start_helper(
                &ctx.self_bin,
                subcommand,
                &[procs::SIGNING_SECRET, &api, &db],
            )
            .await?
        }
        Who::Bridge | Who::Against => {
            let cfg = BridgeCfg {
                reaction,
                ..slack_cfg(f)
            };
            let bin = match (who, &ctx.against) {
                (Who::Against, Some(against)) => against,
                _ => &ctx.bridge_bin,
            };
            procs::start_bridge(bin, &cfg).await?.0
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let maker = Arc::new(EventMaker::new(
        SIGNING_SECRET,
        ctx.w1_channels,
        "",
        proc.addr,
    ));
    let acks = acks();
    let a2 = acks.clone();
    let sampler = RssSampler::start(proc.pid);
    let cpu0 = proc.cpu();
    let pid = proc.pid.to_string();
    let store0 = crate::util::threads_cpu_secs(&pid, STORE_THREADS);
    let ctx0 = crate::util::ctx_switches(proc.pid);
    let io0 = crate::util::io(proc.pid);
    let gen0 = crate::util::thread_cpu_secs("gen-");
    let load = gen::run(Load {
        addr: proc.addr,
        conns: ctx.conns,
        mode,
        duration: Some(ctx.duration),
        total: Some(MAX_SEQ as u64 - 10),
        make: Arc::new(move |seq| maker.request(seq)),
        on_resp: Some(Arc::new(move |seq, status, _| {
            if status == StatusCode::OK {
                a2[seq as usize].store(1, Ordering::Relaxed);
            }
        })),
        gate: None,
    })
    .await?;
    let gen_cpu_us =
        (crate::util::thread_cpu_secs("gen-") - gen0) / (load.ok + load.errors).max(1) as f64 * 1e6;
    let mut once = None;
    if !floor {
        let done = wait_replies(f, load.ok, Duration::from_secs(180)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The progress indicator shows only for answers slower than 500 ms: how many
        // got one tells whether the CPU figure includes its calls.
        if matches!(who, Who::Bridge | Who::Against) {
            let st = &f.slack.stats;
            log(format!(
                "W1 progress indicators: {} reactions added, {} calls the fake refuses (`assistant.threads.setStatus`, `chat.startStream`)",
                st.react_add.load(Ordering::Relaxed),
                st.other.load(Ordering::Relaxed),
            ));
        }
        let (ok, mut detail) = exactly_once(f, &acks, load.ok + load.errors);
        if !done {
            detail.push_str(" (timed out waiting for the replies)");
        }
        once = Some((ok && done, detail));
    }
    let cpu1 = proc.cpu();
    let ctx_per_req =
        crate::util::ctx_switches(proc.pid).saturating_sub(ctx0) as f64 / load.ok.max(1) as f64;
    let io1 = crate::util::io(proc.pid);
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / load.ok.max(1) as f64;
    let rss_peak = sampler.finish().max(hwm_mib(proc.pid));
    let cpu_us = (cpu1 - cpu0) / load.ok.max(1) as f64 * 1e6;
    let store_cpu_us =
        (crate::util::threads_cpu_secs(&pid, STORE_THREADS) - store0) / load.ok.max(1) as f64 * 1e6;
    proc.stop(Duration::from_secs(5));
    Ok(Side {
        gen_cpu_us,
        store_cpu_us,
        ctx_per_req,
        disk_kib: per(io0.write_bytes, io1.write_bytes) / 1024.0,
        syscw: per(io0.syscw, io1.syscw),
        syscr: per(io0.syscr, io1.syscr),
        load,
        cpu_us,
        rss_peak,
        once,
    })
}

pub async fn w1(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let w = "W1";
    if let Err(why) = probe_slack(ctx).await {
        rep.skip(w, &why);
        log(format!("W1 skipped: {why}"));
        return Ok(());
    }
    let tput = format!("throughput ({} conns)", ctx.conns);
    let rate = ctx.w1_rate;
    let order: [bool; 2] = if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    };
    for floor in order {
        let who = if floor { "floor" } else { "bridge" };
        log(format!(
            "W1 {who}: {} conns for {:?}",
            ctx.conns, ctx.duration
        ));
        let s = w1_measure(
            ctx,
            if floor { Who::Floor } else { Who::Bridge },
            Mode::Closed,
            None,
        )
        .await?;
        log(format!(
            "W1 {who}: {:.0} req/s, {:.1} µs CPU/event; {}",
            s.load.rps(),
            s.cpu_us,
            settings_note(&s.load)
        ));
        if floor {
            rep.floor(w, REF_W1_TPUT, s.load.rps());
            rep.floor(w, REF_W1_CPU, s.cpu_us);
            rep.floor(w, REF_W1S_TPUT, s.load.rps());
            rep.floor(w, REF_W1S_CPU, s.cpu_us);
            rep.floor(w, REF_W1J_TPUT, s.load.rps());
            rep.floor(w, REF_W1J_CPU, s.cpu_us);
        } else {
            rep.bridge(w, W1_VS_REF, s.cpu_us);
            rep.bridge(w, W1_STORE, s.store_cpu_us);
        }
        let push = |rep: &mut Report, m: &str, v: f64| {
            if floor {
                rep.floor(w, m, v)
            } else {
                rep.bridge(w, m, v)
            }
        };
        push(rep, &tput, s.load.rps());
        push(rep, "CPU per event at max load, replies included", s.cpu_us);
        push(
            rep,
            "context switches per event at max load (all threads)",
            s.ctx_per_req,
        );
        if !floor {
            rep.bridge(w, W1_DISK, s.disk_kib);
            rep.bridge(w, W1_SYSCW, s.syscw);
            rep.bridge(w, W1_SYSCR, s.syscr);
        }
        let rss_first = s.rss_peak;
        rep.note(
            w,
            &tput,
            format!(
                "{who} round {round}: the generator spent {:.1} µs CPU per request",
                s.gen_cpu_us
            ),
        );
        if s.load.errors > 0 {
            rep.note(
                w,
                &tput,
                format!("{who} round {round}: {}", settings_note(&s.load)),
            );
        }
        if let Some((ok, detail)) = s.once {
            rep.bridge(
                w,
                "every event answered exactly once",
                if ok { 1.0 } else { 0.0 },
            );
            rep.note(
                w,
                "every event answered exactly once",
                format!("round {round}, max load: {detail}"),
            );
        }

        log(format!("W1 {who}: {rate}/s for {:?}", ctx.duration));
        let s = w1_measure(
            ctx,
            if floor { Who::Floor } else { Who::Bridge },
            Mode::Rate(rate),
            None,
        )
        .await?;
        log(format!(
            "W1 {who}: p50 {:.3} p99 {:.3} p99.9 {:.3} ms, {:.1} µs CPU/event; {}",
            s.load.ms(0.5),
            s.load.ms(0.99),
            s.load.ms(0.999),
            s.cpu_us,
            settings_note(&s.load)
        ));
        push(rep, &format!("p50 @{rate}/s"), s.load.ms(0.5));
        push(rep, &format!("p99 @{rate}/s"), s.load.ms(0.99));
        push(rep, &format!("p99.9 @{rate}/s"), s.load.ms(0.999));
        push(
            rep,
            &format!("CPU per event @{rate}/s, replies included"),
            s.cpu_us,
        );
        push(
            rep,
            &format!("context switches per event @{rate}/s (all threads)"),
            s.ctx_per_req,
        );
        push(rep, "RSS under load (peak)", rss_first.max(s.rss_peak));
        if s.load.max_dispatch_lag_ns > 1_000_000 {
            rep.note(
                w,
                &format!("p99 @{rate}/s"),
                format!(
                    "{who} round {round}: pacer ran up to {:.1} ms late (counted in latency)",
                    s.load.max_dispatch_lag_ns as f64 / 1e6
                ),
            );
        }
        if let Some((ok, detail)) = s.once {
            rep.bridge(
                w,
                "every event answered exactly once",
                if ok { 1.0 } else { 0.0 },
            );
            rep.note(
                w,
                "every event answered exactly once",
                format!("round {round}, {rate}/s: {detail}"),
            );
        }
        if !floor {
            log(format!(
                "W1 bridge without the progress reaction: {} conns for {:?}",
                ctx.conns, ctx.duration
            ));
            let s = w1_measure(ctx, Who::Bridge, Mode::Closed, Some(String::new())).await?;
            log(format!(
                "W1 bridge, no reaction: {:.0} req/s, {:.1} µs CPU/event",
                s.load.rps(),
                s.cpu_us
            ));
            rep.bridge(
                w,
                "CPU per event at max load, SLACK_PROGRESS_REACTION= (off)",
                s.cpu_us,
            );
            if let Some((ok, detail)) = s.once {
                rep.bridge(
                    w,
                    "every event answered exactly once",
                    if ok { 1.0 } else { 0.0 },
                );
                rep.note(
                    w,
                    "every event answered exactly once",
                    format!("round {round}, max load, no reaction: {detail}"),
                );
            }
        }
    }
    w1_reference(
        ctx,
        rep,
        round,
        Who::Reference,
        "reference",
        [REF_W1_TPUT, REF_W1_CPU],
    )
    .await?;
    w1_reference(
        ctx,
        rep,
        round,
        Who::ReferenceStore,
        "reference with SQLite",
        [REF_W1S_TPUT, REF_W1S_CPU],
    )
    .await?;
    let s = w1_reference(
        ctx,
        rep,
        round,
        Who::ReferenceJournal,
        "reference with SQLite and the journal",
        [REF_W1J_TPUT, REF_W1J_CPU],
    )
    .await?;
    // The reference's figures in the floor column of the bridge's rows: the ratio is
    // then bridge ÷ reference.
    rep.floor(w, W1_VS_REF, s.cpu_us);
    rep.floor(w, W1_STORE, s.store_cpu_us);
    rep.floor(w, W1_DISK, s.disk_kib);
    rep.floor(w, W1_SYSCW, s.syscw);
    rep.floor(w, W1_SYSCR, s.syscr);
    Ok(())
}

/// One reference server's max-load run: its throughput and CPU rows (`rows`) in the
/// bridge column, against the round's floor, and whether it answered every event once.
async fn w1_reference(
    ctx: &Ctx,
    rep: &mut Report,
    round: usize,
    who: Who,
    name: &str,
    rows: [&str; 2],
) -> Result<Side> {
    let w = "W1";
    log(format!(
        "W1 {name}: {} conns for {:?}",
        ctx.conns, ctx.duration
    ));
    let s = w1_measure(ctx, who, Mode::Closed, None).await?;
    log(format!(
        "W1 {name}: {:.0} req/s, {:.1} µs CPU/event",
        s.load.rps(),
        s.cpu_us
    ));
    let [tput, cpu] = rows;
    rep.bridge(w, tput, s.load.rps());
    rep.bridge(w, cpu, s.cpu_us);
    if let Some((ok, detail)) = &s.once {
        rep.note(
            w,
            tput,
            format!("round {round}: answered exactly once: {ok} ({detail})"),
        );
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------
// W1AB: two builds of the bridge side by side
// ---------------------------------------------------------------------------------

const AB_CPU: &str = "CPU per event at max load; floor column: --against";
const AB_TPUT: &str = "throughput at max load; floor column: --against";
const AB_DISK: &str = "storage written per event at max load; floor column: --against";
const AB_SYSCW: &str = "write-like system calls per event at max load; floor column: --against";
const AB_STORE: &str = "CPU per event at max load in the store's threads; floor column: --against";
const AB_ONCE: &str = "every event answered exactly once, both builds";

/// `--against reference-journal`: W1AB pairs the bridge with W1's reference doing
/// what SPEC asks (SQLite and the turn journal) instead of another build, so BENCH.md's
/// W1 ratio (CPU per event ≤ 1.0× that reference) is read from runs seconds apart,
/// the order alternating by round. `reference-store`: the reference written before
/// the journal.
pub const AGAINST_REFERENCE_JOURNAL: &str = "reference-journal";
pub const AGAINST_REFERENCE_STORE: &str = "reference-store";

pub fn declare_w1ab(rep: &mut Report, _ctx: &Ctx) {
    let w = "W1AB";
    rep.declare(w, AB_CPU, "µs", None);
    rep.declare(w, AB_TPUT, "req/s", None);
    rep.declare(w, AB_DISK, "KiB", None);
    rep.declare(w, AB_SYSCW, "1", None);
    rep.declare(w, AB_STORE, "µs", None);
    rep.declare(w, AB_ONCE, "ok", Some(Budget::AllOk));
}

/// W1's max-load measurement for `--bridge` and for `--against`, one after the other
/// (the order alternating by round), so that a change can be judged on a noisy
/// machine: the ratio column is the median of the per-round ratios of two runs
/// seconds apart, which the machine's slow drifts mostly cancel out of.
pub async fn w1ab(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let w = "W1AB";
    if ctx.against.is_none() {
        rep.skip(w, "needs --against PATH (the baseline build)");
        return Ok(());
    }
    if let Err(why) = probe_slack(ctx).await {
        rep.skip(w, &why);
        return Ok(());
    }
    let against = match &ctx.against {
        Some(p) if p.as_os_str() == AGAINST_REFERENCE_JOURNAL => Who::ReferenceJournal,
        Some(p) if p.as_os_str() == AGAINST_REFERENCE_STORE => Who::ReferenceStore,
        _ => Who::Against,
    };
    let order = match round % 2 {
        0 => [against, Who::Bridge],
        _ => [Who::Bridge, against],
    };
    for who in order {
        let s = w1_measure(ctx, who, Mode::Closed, None).await?;
        let name = if who == Who::Bridge {
            "bridge"
        } else {
            "against"
        };
        log(format!(
            "W1AB {name}: {:.0} req/s, {:.1} µs CPU/event ({:.1} in the store's threads), {:.1} KiB written/event, {:.2} context switches/event",
            s.load.rps(),
            s.cpu_us,
            s.store_cpu_us,
            s.disk_kib,
            s.ctx_per_req
        ));
        let mut push = |m: &str, v: f64| match who {
            Who::Bridge => rep.bridge(w, m, v),
            _ => rep.floor(w, m, v),
        };
        push(AB_CPU, s.cpu_us);
        push(AB_TPUT, s.load.rps());
        push(AB_DISK, s.disk_kib);
        push(AB_SYSCW, s.syscw);
        push(AB_STORE, s.store_cpu_us);
        if let Some((ok, detail)) = s.once {
            rep.bridge(w, AB_ONCE, if ok { 1.0 } else { 0.0 });
            if !ok {
                rep.note(w, AB_ONCE, format!("round {round}, {name}: {detail}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// W2
// ---------------------------------------------------------------------------------

pub fn declare_w2(rep: &mut Report, ctx: &Ctx) {
    let w = "W2";
    rep.declare(
        w,
        &format!("throughput ({} conns)", ctx.conns),
        "req/s",
        Some(Budget::RatioAtLeast(0.4)),
    );
    rep.declare(
        w,
        &format!("p50 @{}/s", ctx.w1_rate),
        "ms",
        Some(Budget::AddedAtMost(0.2)),
    );
    rep.declare(w, &format!("p99 @{}/s", ctx.w1_rate), "ms", None);
    rep.declare(
        w,
        "CPU per request at max load (floor: fake agent)",
        "µs",
        None,
    );
    rep.declare(w, REF_W2_TPUT, "req/s", None);
    rep.declare(w, REF_W2_CPU, "µs", None);
}

fn w2_request(addr: std::net::SocketAddr, floor: bool, seq: u64) -> Request<Full<Bytes>> {
    let (path, body) = if floor {
        (
            "/query",
            format!(r#"{{"query":"bench query {seq}","max_results":3,"personality_id":null}}"#),
        )
    } else {
        (
            "/agent-query",
            format!(r#"{{"query":"bench query {seq}"}}"#),
        )
    };
    Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {API_TOKEN}"))
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

async fn w2_measure(ctx: &Ctx, who: Who, mode: Mode) -> Result<(LoadResult, f64)> {
    let f = &ctx.fakes;
    f.reset();
    let bridge = match who {
        Who::Floor => None,
        Who::Reference | Who::ReferenceStore | Who::ReferenceJournal => {
            let agent = f.agent_addr.to_string();
            Some(procs::start_helper(&ctx.self_bin, "reference-proxy", &[&agent]).await?)
        }
        Who::Bridge | Who::Against => {
            let cfg = BridgeCfg {
                echo: false,
                agent: Some(f.agent_addr),
                ..BridgeCfg::default()
            };
            Some(procs::start_bridge(&ctx.bridge_bin, &cfg).await?.0)
        }
    };
    // The reference forwards the body as is: it gets the agent's own request.
    let floor = who != Who::Bridge;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = bridge.as_ref().map(|b| b.addr).unwrap_or(f.agent_addr);
    let cpu = || {
        bridge
            .as_ref()
            .map(|b| b.cpu())
            .unwrap_or_else(|| f.cpu_secs())
    };
    let cpu0 = cpu();
    let load = gen::run(Load {
        addr,
        conns: ctx.conns,
        mode,
        duration: Some(ctx.duration),
        total: None,
        make: Arc::new(move |seq| w2_request(addr, floor, seq)),
        on_resp: None,
        gate: None,
    })
    .await?;
    let cpu_us = (cpu() - cpu0) / load.ok.max(1) as f64 * 1e6;
    if let Some(b) = bridge {
        b.stop(Duration::from_secs(5));
    }
    Ok((load, cpu_us))
}

pub async fn w2(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let w = "W2";
    let tput = format!("throughput ({} conns)", ctx.conns);
    let rate = ctx.w1_rate;
    let order: [bool; 2] = if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    };
    for floor in order {
        let who = if floor { "floor" } else { "bridge" };
        let push = |rep: &mut Report, m: &str, v: f64| {
            if floor {
                rep.floor(w, m, v)
            } else {
                rep.bridge(w, m, v)
            }
        };
        log(format!(
            "W2 {who}: {} conns for {:?}",
            ctx.conns, ctx.duration
        ));
        let (l, cpu_us) = w2_measure(
            ctx,
            if floor { Who::Floor } else { Who::Bridge },
            Mode::Closed,
        )
        .await?;
        log(format!(
            "W2 {who}: {:.0} req/s, {:.1} µs CPU/req; {}",
            l.rps(),
            cpu_us,
            settings_note(&l)
        ));
        push(rep, &tput, l.rps());
        push(
            rep,
            "CPU per request at max load (floor: fake agent)",
            cpu_us,
        );
        if floor {
            rep.floor(w, REF_W2_TPUT, l.rps());
            rep.floor(w, REF_W2_CPU, cpu_us);
        }
        if l.errors > 0 {
            rep.note(
                w,
                &tput,
                format!("{who} round {round}: {}", settings_note(&l)),
            );
        }
        log(format!("W2 {who}: {rate}/s for {:?}", ctx.duration));
        let (l, _) = w2_measure(
            ctx,
            if floor { Who::Floor } else { Who::Bridge },
            Mode::Rate(rate),
        )
        .await?;
        log(format!(
            "W2 {who}: p50 {:.3} p99 {:.3} ms; {}",
            l.ms(0.5),
            l.ms(0.99),
            settings_note(&l)
        ));
        push(rep, &format!("p50 @{rate}/s"), l.ms(0.5));
        push(rep, &format!("p99 @{rate}/s"), l.ms(0.99));
    }
    log(format!(
        "W2 reference: {} conns for {:?}",
        ctx.conns, ctx.duration
    ));
    let (l, cpu_us) = w2_measure(ctx, Who::Reference, Mode::Closed).await?;
    log(format!(
        "W2 reference: {:.0} req/s, {:.1} µs CPU/req; {}",
        l.rps(),
        cpu_us,
        settings_note(&l)
    ));
    rep.bridge(w, REF_W2_TPUT, l.rps());
    rep.bridge(w, REF_W2_CPU, cpu_us);
    Ok(())
}

// ---------------------------------------------------------------------------------
// W3
// ---------------------------------------------------------------------------------

pub fn declare_w3(rep: &mut Report, ctx: &Ctx) {
    let w = "W3";
    let r = ctx.w3_rate;
    rep.declare(
        w,
        &format!("turn overhead p99, in + out @{r}/s, 200 convs"),
        "ms",
        Some(Budget::Below(2.0)),
    );
    rep.declare(
        w,
        &format!("turn overhead p50, in + out @{r}/s"),
        "ms",
        None,
    );
    rep.declare(
        w,
        &format!("turn overhead p99.9, in + out @{r}/s"),
        "ms",
        None,
    );
    rep.declare(w, "in: event sent → agent call received, p99", "ms", None);
    rep.declare(
        w,
        "out: agent answered → chat.postMessage received, p99",
        "ms",
        None,
    );
    rep.declare(
        w,
        "W3 without the progress reaction: p99, in + out",
        "ms",
        None,
    );
    rep.declare(w, "ack (Slack's 200) p99 during W3", "ms", None);
}

async fn w3_measure(
    ctx: &Ctx,
    reaction: Option<String>,
) -> Result<(
    Histogram<u64>,
    Histogram<u64>,
    Histogram<u64>,
    String,
    (f64, f64),
)> {
    let f = &ctx.fakes;
    f.reset();
    let cfg = BridgeCfg {
        echo: false,
        agent: Some(f.agent_addr),
        slack: Some(f.slack_addr),
        reaction,
        ..BridgeCfg::default()
    };
    let (b, _) = procs::start_bridge(&ctx.bridge_bin, &cfg).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let maker = Arc::new(EventMaker::new(SIGNING_SECRET, 200, "w3id=", b.addr));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..MAX_SEQ).map(|_| AtomicU64::new(0)).collect());
    let s2 = sent.clone();
    let load = gen::run(Load {
        addr: b.addr,
        conns: 16,
        mode: Mode::Rate(ctx.w3_rate),
        duration: Some(ctx.duration),
        total: None,
        make: Arc::new(move |seq| {
            let r = maker.request(seq);
            s2[seq as usize].store(now_ns(), Ordering::Relaxed);
            r
        }),
        on_resp: None,
        gate: None,
    })
    .await?;
    let done = wait_replies(f, load.ok, Duration::from_secs(60)).await;
    b.stop(Duration::from_secs(5));
    let agent: std::collections::HashMap<u64, (u64, u64)> = f
        .agent
        .w3
        .lock()
        .unwrap()
        .iter()
        .map(|&(s, rx, tx)| (s, (rx, tx)))
        .collect();
    let posts = f.slack.w3.lock().unwrap().clone();
    let mk = || Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("hist");
    let (mut total, mut hin, mut hout) = (mk(), mk(), mk());
    let mut matched = 0;
    for (seq, post_rx) in posts {
        let Some(&(a_rx, a_tx)) = agent.get(&seq) else {
            continue;
        };
        let s = sent[seq as usize].load(Ordering::Relaxed);
        let din = a_rx.saturating_sub(s);
        let dout = post_rx.saturating_sub(a_tx);
        total.saturating_record((din + dout).max(1_000));
        hin.saturating_record(din.max(1_000));
        hout.saturating_record(dout.max(1_000));
        matched += 1;
    }
    let ack = (load.ms(0.5), load.ms(0.99));
    let note = format!(
        "{} events sent, {} turns matched (agent call + post){}",
        load.ok,
        matched,
        if done {
            ""
        } else {
            ", timed out waiting for replies"
        }
    );
    Ok((total, hin, hout, note, ack))
}

pub async fn w3(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let w = "W3";
    if let Err(why) = probe_slack(ctx).await {
        rep.skip(w, &why);
        return Ok(());
    }
    let r = ctx.w3_rate;
    log(format!(
        "W3: {r} turns/s over 200 conversations for {:?}",
        ctx.duration
    ));
    let (total, hin, hout, note, ack) = w3_measure(ctx, None).await?;
    let ms = |h: &Histogram<u64>, q| h.value_at_quantile(q) as f64 / 1e6;
    log(format!(
        "W3: p50 {:.3} p99 {:.3} ms (in p99 {:.3}, out p99 {:.3}); {note}",
        ms(&total, 0.5),
        ms(&total, 0.99),
        ms(&hin, 0.99),
        ms(&hout, 0.99)
    ));
    rep.bridge(
        w,
        &format!("turn overhead p99, in + out @{r}/s, 200 convs"),
        ms(&total, 0.99),
    );
    rep.bridge(
        w,
        &format!("turn overhead p50, in + out @{r}/s"),
        ms(&total, 0.5),
    );
    rep.bridge(
        w,
        &format!("turn overhead p99.9, in + out @{r}/s"),
        ms(&total, 0.999),
    );
    rep.bridge(
        w,
        "in: event sent → agent call received, p99",
        ms(&hin, 0.99),
    );
    rep.bridge(
        w,
        "out: agent answered → chat.postMessage received, p99",
        ms(&hout, 0.99),
    );
    rep.note(
        w,
        &format!("turn overhead p99, in + out @{r}/s, 200 convs"),
        format!(
            "round {round}: {note}; Slack only (W3 does not drive the fake Discord gateway yet)"
        ),
    );
    rep.bridge(w, "ack (Slack's 200) p99 during W3", ack.1);
    rep.note(
        w,
        "ack (Slack's 200) p99 during W3",
        format!(
            "round {round}: ack p50 {:.3} ms, p99 {:.3} ms (the figure is the p99)",
            ack.0, ack.1
        ),
    );
    let (total, _, _, _, _) = w3_measure(ctx, Some(String::new())).await?;
    rep.bridge(
        w,
        "W3 without the progress reaction: p99, in + out",
        ms(&total, 0.99),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// W4
// ---------------------------------------------------------------------------------

pub fn declare_w4(rep: &mut Report, ctx: &Ctx) {
    let w = "W4";
    let n = ctx.w4_events;
    rep.declare(
        w,
        &format!("deliveries/s, {n} events drained to a fast receiver (floor: direct posts)"),
        "1/s",
        Some(Budget::AtLeast(5000.0)),
    );
    rep.declare(
        w,
        &format!("events + deliveries end to end, {n} events"),
        "1/s",
        None,
    );
    rep.declare(w, &format!("healthy endpoint p99 delivery latency, {} events @{}/s, with a hanging endpoint (floor: alone)", ctx.w4_lat_events, ctx.w4_rate), "ms", Some(Budget::AddedBelow(100.0)));
}

async fn register(b: &Proc, url: &str) -> Result<(StatusCode, String)> {
    let body = serde_json::json!({"url": url, "events": ["*"], "description": "bench"}).to_string();
    let (s, body) = request(
        b.addr,
        Method::POST,
        "/webhooks",
        &[("authorization", &format!("Bearer {API_TOKEN}"))],
        Some(Bytes::from(body)),
    )
    .await?;
    Ok((s, String::from_utf8_lossy(&body).into_owned()))
}

fn w4_cfg(f: &Fakes, timeout_secs: Option<u64>) -> BridgeCfg {
    let mut cfg = BridgeCfg {
        echo: true,
        webhooks_private: true,
        agent: Some(f.agent_addr),
        ..BridgeCfg::default()
    };
    if let Some(t) = timeout_secs {
        cfg.extra
            .push(("WEBHOOK_TIMEOUT_SECS".into(), t.to_string()));
    }
    cfg
}

fn w4_request(addr: std::net::SocketAddr, seq: u64) -> Request<Full<Bytes>> {
    Request::post("/agent-query")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {API_TOKEN}"))
        .body(Full::new(Bytes::from(format!(
            r#"{{"query":"bench w4seq={seq}"}}"#
        ))))
        .expect("request")
}

async fn wait_hook(f: &Fakes, n: u64, timeout: Duration) -> bool {
    let start = Instant::now();
    while f.hook.received.load(Ordering::Relaxed) < n {
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Delivery latency p99 (ms) of the healthy endpoint at a fixed event rate.
async fn w4_latency(ctx: &Ctx, with_hanging: bool) -> Result<(f64, String)> {
    let f = &ctx.fakes;
    f.reset();
    let (b, _) = procs::start_bridge(&ctx.bridge_bin, &w4_cfg(f, None)).await?;
    let (s, body) = register(&b, &format!("http://{}/hook", f.hook_addr)).await?;
    if s != StatusCode::CREATED && s != StatusCode::OK {
        return Err(anyhow!("POST /webhooks answered {s}: {body}"));
    }
    if with_hanging {
        let (s, body) = register(&b, &format!("http://{}/hook", f.hang_addr)).await?;
        if !s.is_success() {
            return Err(anyhow!("POST /webhooks (hanging) answered {s}: {body}"));
        }
    }
    let n = ctx.w4_lat_events;
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n as usize).map(|_| AtomicU64::new(0)).collect());
    let (s2, addr) = (sent.clone(), b.addr);
    let load = gen::run(Load {
        addr,
        conns: ctx.conns,
        mode: Mode::Rate(ctx.w4_rate),
        duration: None,
        total: Some(n),
        make: Arc::new(move |seq| {
            s2[seq as usize].store(now_ns(), Ordering::Relaxed);
            w4_request(addr, seq)
        }),
        on_resp: None,
        gate: None,
    })
    .await?;
    let all = wait_hook(f, load.ok, Duration::from_secs(60)).await;
    let mut h = Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)?;
    let rx = f.hook.rx.lock().unwrap().clone();
    let mut seen = vec![false; n as usize];
    for (seq, t) in &rx {
        if let Some(s) = sent.get(*seq as usize) {
            seen[*seq as usize] = true;
            h.saturating_record(t.saturating_sub(s.load(Ordering::Relaxed)).max(1_000));
        }
    }
    // Never delivered within the wait: count them at the wait's end.
    let missing = seen.iter().filter(|x| !**x).count() as u64;
    let end = now_ns();
    for (i, s) in sent.iter().enumerate() {
        if !seen[i] {
            h.saturating_record(end.saturating_sub(s.load(Ordering::Relaxed)));
        }
    }
    let hang = f.hang.connections.load(Ordering::Relaxed);
    b.stop(Duration::from_secs(3));
    let note = format!(
        "{} events ({}), {} delivered to the healthy endpoint{}, {missing} missing; hanging endpoint got {hang} connection(s)",
        load.ok,
        settings_note(&load),
        rx.len(),
        if all { "" } else { " (gave up waiting)" }
    );
    Ok((h.value_at_quantile(0.99) as f64 / 1e6, note))
}

pub async fn w4(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let w = "W4";
    let f = &ctx.fakes;
    let n = ctx.w4_events;
    let m_rate =
        format!("deliveries/s, {n} events drained to a fast receiver (floor: direct posts)");
    let m_e2e = format!("events + deliveries end to end, {n} events");
    let m_lat = format!("healthy endpoint p99 delivery latency, {} events @{}/s, with a hanging endpoint (floor: alone)", ctx.w4_lat_events, ctx.w4_rate);

    // Probe: is the webhook API there?
    {
        f.reset();
        let (b, _) = procs::start_bridge(&ctx.bridge_bin, &w4_cfg(f, None)).await?;
        let res = register(&b, &format!("http://{}/hook", f.hook_addr)).await;
        b.stop(Duration::from_secs(3));
        match res {
            Ok((s, _)) if s.is_success() => {}
            Ok((s, body)) => {
                let why = format!(
                    "POST /webhooks answered {s} {}",
                    body.chars().take(80).collect::<String>()
                );
                log(format!("W4 skipped: {why}"));
                rep.skip(w, &why);
                return Ok(());
            }
            Err(e) => {
                rep.skip(w, &format!("POST /webhooks failed: {e}"));
                return Ok(());
            }
        }
    }

    // Floor: the receiver's own ceiling, posting webhook-shaped bodies directly.
    let floor_first = round.is_multiple_of(2);
    let floor = || async {
        f.reset();
        let addr = f.hook_addr;
        let l = gen::run(Load {
            addr,
            conns: ctx.conns,
            mode: Mode::Closed,
            duration: None,
            total: Some(n),
            make: Arc::new(move |seq| {
                let body = format!(
                    r#"{{"id":"evt_{seq:020}","type":"query","event":"query","timestamp":"2026-11-26T00:00:00Z","data":{{"request_id":"req_{seq:032}","query":"bench w4seq={seq}","response":"echo: bench w4seq={seq}","session_id":null,"error":null}}}}"#
                );
                Request::post("/hook")
                    .header(hyper::header::HOST, addr.to_string())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .header("webhook-id", format!("evt_{seq:020}"))
                    .header("webhook-timestamp", "1764115200")
                    .header("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
                    .body(Full::new(Bytes::from(body)))
                    .expect("request")
            }),
            on_resp: None,
            gate: None,
        })
        .await?;
        anyhow::Ok(l.rps())
    };
    if floor_first {
        rep.floor(w, &m_rate, floor().await?);
    }

    // Bridge: a backlog of n events behind a gated receiver, then released.
    log(format!(
        "W4: {n} events into the outbox behind a gated receiver"
    ));
    f.reset();
    let (b, _) = procs::start_bridge(&ctx.bridge_bin, &w4_cfg(f, Some(300))).await?;
    register(&b, &format!("http://{}/hook", f.hook_addr)).await?;
    f.hook.gated.store(true, Ordering::SeqCst);
    let addr = b.addr;
    let t_gen = Instant::now();
    let load = gen::run(Load {
        addr,
        conns: ctx.conns,
        mode: Mode::Closed,
        duration: None,
        total: Some(n),
        make: Arc::new(move |seq| w4_request(addr, seq)),
        on_resp: None,
        gate: None,
    })
    .await?;
    let gen_secs = t_gen.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = f.hook.held.load(Ordering::Relaxed);
    let t0 = now_ns();
    f.hook.release();
    let all = wait_hook(f, load.ok, Duration::from_secs(300)).await;
    let t1 = f.hook.last_ns.load(Ordering::Relaxed);
    let got = f.hook.received.load(Ordering::Relaxed);
    let rate = got as f64 / ((t1.saturating_sub(t0)) as f64 / 1e9).max(1e-3);
    let e2e = got as f64 / (gen_secs + (t1.saturating_sub(t0)) as f64 / 1e9 + 0.5);
    b.stop(Duration::from_secs(3));
    log(format!("W4: {rate:.0} deliveries/s from the backlog; {held} held at the gate; events made at {:.0}/s", load.ok as f64 / gen_secs));
    rep.bridge(w, &m_rate, rate);
    rep.bridge(w, &m_e2e, e2e);
    rep.note(w, &m_rate, format!(
        "round {round}: {got}/{} delivered{}; {held} requests were already in flight at the gate; /agent-query made the events at {:.0}/s",
        load.ok, if all { "" } else { " (gave up waiting)" }, load.ok as f64 / gen_secs
    ));
    if !floor_first {
        rep.floor(w, &m_rate, floor().await?);
    }

    // Latency: healthy alone vs. healthy + hanging.
    for hanging in if floor_first {
        [false, true]
    } else {
        [true, false]
    } {
        log(format!(
            "W4: {} events at {}/s, hanging endpoint: {hanging}",
            ctx.w4_lat_events, ctx.w4_rate
        ));
        let (p99, note) = w4_latency(ctx, hanging).await?;
        log(format!("W4: healthy p99 {p99:.2} ms; {note}"));
        if hanging {
            rep.bridge(w, &m_lat, p99);
        } else {
            rep.floor(w, &m_lat, p99);
        }
        rep.note(
            w,
            &m_lat,
            format!("round {round}, hanging {hanging}: {note}"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// W5
// ---------------------------------------------------------------------------------

pub fn declare_w5(rep: &mut Report, ctx: &Ctx) {
    rep.declare(
        "W5",
        "RSS idle after start (Slack on, echo agent)",
        "MiB",
        Some(Budget::AtMost(20.0)),
    );
    rep.declare(
        "W5",
        &format!(
            "RSS after {} conversations had one turn (Slack events route)",
            ctx.w5_convs
        ),
        "MiB",
        Some(Budget::AtMost(150.0)),
    );
    rep.declare(
        "W5",
        "CPU per turn while mapping them, replies included",
        "µs",
        None,
    );
}

pub async fn w5(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let w = "W5";
    let f = &ctx.fakes;
    let n = ctx.w5_convs;
    let m_after = format!("RSS after {n} conversations had one turn (Slack events route)");
    let slack_ok = probe_slack(ctx).await;
    f.reset();
    let (b, _) = procs::start_bridge(&ctx.bridge_bin, &slack_cfg(f)).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let idle = b.rss();
    rep.bridge(w, "RSS idle after start (Slack on, echo agent)", idle);
    log(format!("W5: idle RSS {idle:.1} MiB"));
    if let Err(why) = slack_ok {
        rep.note(w, &m_after, format!("skipped: {why}"));
        rep.skip(w, &why);
        b.stop(Duration::from_secs(3));
        return Ok(());
    }
    log(format!("W5: {n} conversations, one turn each"));
    let maker = Arc::new(EventMaker::new(SIGNING_SECRET, n, "", b.addr));
    let issued = Arc::new(AtomicU64::new(0));
    let (i2, i3) = (issued.clone(), issued.clone());
    let slack = f.slack.clone();
    let acks = acks();
    let a2 = acks.clone();
    let cpu0 = b.cpu();
    let t = Instant::now();
    let load = gen::run(Load {
        addr: b.addr,
        conns: 16,
        mode: Mode::Closed,
        duration: None,
        total: Some(n),
        make: Arc::new(move |seq| {
            i2.fetch_add(1, Ordering::Relaxed);
            maker.request(seq)
        }),
        on_resp: Some(Arc::new(move |seq, status, _| {
            if status == StatusCode::OK {
                a2[seq as usize].store(1, Ordering::Relaxed);
            }
        })),
        // Keep fewer turns in flight than the relay's queue admits, so every
        // conversation gets a real turn rather than the busy reply.
        gate: Some(Arc::new(move || {
            i3.load(Ordering::Relaxed) < slack.stats.posts.load(Ordering::Relaxed) + 192
        })),
    })
    .await?;
    let done = wait_replies(f, load.ok, Duration::from_secs(120)).await;
    let secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cpu_us = (b.cpu() - cpu0) / load.ok.max(1) as f64 * 1e6;
    let after = b.rss();
    let hwm = hwm_mib(b.pid);
    let (ok, detail) = exactly_once(f, &acks, load.ok + load.errors);
    b.stop(Duration::from_secs(5));
    log(format!(
        "W5: RSS {after:.1} MiB after {} turns ({:.0} turns/s), peak {hwm:.1}; {detail}",
        load.ok,
        load.ok as f64 / secs
    ));
    rep.bridge(w, &m_after, after);
    rep.bridge(
        w,
        "CPU per turn while mapping them, replies included",
        cpu_us,
    );
    rep.note(
        w,
        &m_after,
        format!(
            "round {round}: {} turns at {:.0}/s, peak RSS {hwm:.1} MiB; {detail}{}{}",
            load.ok,
            load.ok as f64 / secs,
            if ok {
                ""
            } else {
                " — NOT every event answered once"
            },
            if done {
                ""
            } else {
                " (timed out waiting for replies)"
            }
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// W6
// ---------------------------------------------------------------------------------

pub fn declare_w6(rep: &mut Report, ctx: &Ctx) {
    rep.declare(
        "W6",
        &format!(
            "start-up: spawn → /readyz 200, fresh SQLite, Slack on (median of {})",
            ctx.w6_starts
        ),
        "ms",
        Some(Budget::AtMost(200.0)),
    );
    rep.declare(
        "W6",
        "start-up without Slack (HTTP + store only)",
        "ms",
        None,
    );
}

pub async fn w6(ctx: &Ctx, rep: &mut Report, _round: usize) -> Result<()> {
    let f = &ctx.fakes;
    for slack in [true, false] {
        let mut v = Vec::new();
        for _ in 0..ctx.w6_starts {
            let cfg = if slack {
                slack_cfg(f)
            } else {
                BridgeCfg {
                    echo: true,
                    ..BridgeCfg::default()
                }
            };
            let (b, took) = procs::start_bridge(&ctx.bridge_bin, &cfg).await?;
            v.push(took.as_secs_f64() * 1e3);
            b.stop(Duration::from_secs(3));
        }
        let med = crate::util::median(&v).unwrap_or(f64::NAN);
        log(format!("W6 (slack {slack}): {v:.1?} ms → median {med:.1}"));
        if slack {
            rep.bridge(
                "W6",
                &format!(
                    "start-up: spawn → /readyz 200, fresh SQLite, Slack on (median of {})",
                    ctx.w6_starts
                ),
                med,
            );
        } else {
            rep.bridge("W6", "start-up without Slack (HTTP + store only)", med);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// W8: Slack over Socket Mode
// ---------------------------------------------------------------------------------

/// Envelopes sent but not yet acknowledged, at most: the socket's stand-in for W1's
/// 50 keep-alive connections (Slack itself sends without waiting for acks).
const W8_WINDOW: u64 = 50;

const W8_TPUT: &str = "events/s over one Socket Mode connection (floor: W1's HTTP path, same run)";
const W8_CPU: &str = "CPU per event, replies included (floor: W1's HTTP path, same run)";
const W8_ONCE: &str = "every acknowledged envelope answered exactly once";

pub fn declare_w8(rep: &mut Report, _ctx: &Ctx) {
    let w = "W8";
    rep.declare(w, W8_TPUT, "ev/s", None);
    rep.declare(w, W8_CPU, "µs", Some(Budget::RatioAtMost(1.2)));
    rep.declare(w, W8_ONCE, "ok", Some(Budget::AllOk));
}

/// W1's events as `events_api` envelopes over one connection, closed loop with
/// [`W8_WINDOW`] unacknowledged at most, for `--duration`; then every acknowledged
/// event must get its one `chat.postMessage`. CPU per event is read once the replies
/// are in, as W1 does.
async fn w8_socket(ctx: &Ctx) -> Result<Side> {
    let f = &ctx.fakes;
    f.reset();
    let cfg = BridgeCfg {
        socket: true,
        ..slack_cfg(f)
    };
    let (proc, _) = procs::start_bridge(&ctx.bridge_bin, &cfg).await?;
    let connected = Instant::now();
    while !f.socket.connected() {
        if connected.elapsed() > Duration::from_secs(10) {
            let tail = proc.log_tail();
            proc.stop(Duration::from_secs(3));
            return Err(anyhow!(
                "the bridge opened no Socket Mode connection: {tail}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let maker = EventMaker::new(SIGNING_SECRET, ctx.w1_channels, "", proc.addr);
    let sampler = RssSampler::start(proc.pid);
    let cpu0 = proc.cpu();
    let ctx0 = crate::util::ctx_switches(proc.pid);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let limit = MAX_SEQ as u64 - 10;
    while started.elapsed() < ctx.duration && sent < limit {
        let notified = f.socket.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let acked = f.socket.acks.load(Ordering::Relaxed);
        while sent < limit && sent - acked.min(sent) < W8_WINDOW {
            let envelope = format!(
                r#"{{"envelope_id":"e{sent}","type":"events_api","payload":{},"accepts_response_payload":false,"retry_attempt":0,"retry_reason":""}}"#,
                maker.body(sent)
            );
            if !f.socket.send(envelope) {
                break;
            }
            sent += 1;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
    let elapsed = started.elapsed();
    // The last envelopes' acks.
    let drain = Instant::now();
    while f.socket.acks.load(Ordering::Relaxed) < sent && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked = f.socket.acks.load(Ordering::Relaxed);
    let done = wait_replies(f, acked, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, mut detail) = exactly_once(f, &f.socket.acked, sent);
    if !done {
        detail.push_str(" (timed out waiting for the replies)");
    }
    let cpu1 = proc.cpu();
    let ctx_per_req =
        crate::util::ctx_switches(proc.pid).saturating_sub(ctx0) as f64 / acked.max(1) as f64;
    let rss_peak = sampler.finish().max(hwm_mib(proc.pid));
    let cpu_us = (cpu1 - cpu0) / acked.max(1) as f64 * 1e6;
    proc.stop(Duration::from_secs(5));
    let load = LoadResult {
        ok: acked,
        errors: sent - acked,
        statuses: Default::default(),
        elapsed,
        hist: Histogram::new(3)?,
        max_dispatch_lag_ns: 0,
    };
    Ok(Side {
        gen_cpu_us: 0.0,
        store_cpu_us: 0.0,
        ctx_per_req,
        // W8 reports CPU only.
        disk_kib: 0.0,
        syscw: 0.0,
        syscr: 0.0,
        load,
        cpu_us,
        rss_peak,
        once: Some((ok && done, detail)),
    })
}

pub async fn w8(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let w = "W8";
    let order: [bool; 2] = if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    };
    for http in order {
        if http {
            log(format!(
                "W8 HTTP path (W1's bridge): {} conns for {:?}",
                ctx.conns, ctx.duration
            ));
            let s = w1_measure(ctx, Who::Bridge, Mode::Closed, None).await?;
            log(format!(
                "W8 HTTP path: {:.0} req/s, {:.1} µs CPU/event",
                s.load.rps(),
                s.cpu_us
            ));
            rep.floor(w, W8_TPUT, s.load.rps());
            rep.floor(w, W8_CPU, s.cpu_us);
            if let Some((ok, detail)) = s.once {
                rep.note(
                    w,
                    W8_ONCE,
                    format!("round {round}, HTTP path: {ok}: {detail}"),
                );
            }
        } else {
            log(format!(
                "W8 Socket Mode: one connection, window {W8_WINDOW}, for {:?}",
                ctx.duration
            ));
            let s = w8_socket(ctx).await?;
            log(format!(
                "W8 Socket Mode: {:.0} ev/s, {:.1} µs CPU/event",
                s.load.rps(),
                s.cpu_us
            ));
            rep.bridge(w, W8_TPUT, s.load.rps());
            rep.bridge(w, W8_CPU, s.cpu_us);
            rep.note(
                w,
                W8_CPU,
                format!(
                    "round {round}: socket {:.2} context switches per event, peak RSS {:.1} MiB",
                    s.ctx_per_req, s.rss_peak
                ),
            );
            if let Some((ok, detail)) = s.once {
                rep.bridge(w, W8_ONCE, if ok { 1.0 } else { 0.0 });
                rep.note(w, W8_ONCE, format!("round {round}, socket: {detail}"));
            }
        }
    }
    Ok(())
}
