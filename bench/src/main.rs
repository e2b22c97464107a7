//! agent-bridge benchmark harness. See bench/README.md.
//!
//! ```text
//! bench run [--bridge PATH] [--rounds N] [--duration SECS] [--only W1,W3] [--out DIR]
//! bench run --only W1AB --bridge NEW --against OLD [--rounds N]   two builds side by side
//! bench run --only W1AB --against reference-journal   the bridge beside W1's reference doing
//!           SPEC's work (SQLite, the turn journal); `reference-store`: the one without the journal
//!           [--w4-events N] [--w4-rate R] [--w4-latency-events N] [--w5-conversations N] [--w6-starts N]
//!           [--w7-answers N] [--w7-pieces N] [--w7-chars N] [--w7-piece-ms MS] [--w7-interval-ms MS]
//! bench summarize FILE.json...        medians across earlier runs
//! bench floor-slack ADDR SECRET       the W1 floor server (started by `run`)
//! bench reference-slack ADDR SECRET SLACK_API_ADDR   W1's least work with a reply (see reference.rs)
//! bench reference-slack-store ADDR SECRET SLACK_API_ADDR DB   the same plus SQLite bookkeeping
//! bench reference-slack-journal ADDR SECRET SLACK_API_ADDR DB   SPEC's: the turn journal too
//! bench reference-proxy ADDR AGENT_ADDR              W2's least work (see reference.rs)
//! ```

mod fake_discord;
mod fakes;
mod floor;
mod gen;
mod procs;
mod reference;
mod report;
mod slackev;
mod util;
mod w7;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::report::Report;
use crate::workloads::Ctx;

fn usage() -> ! {
    eprintln!(
        "usage:\n  bench run [--bridge PATH] [--against PATH] [--rounds N] [--duration SECS] [--only W1,W2,...] [--out DIR]\n            [--conns N] [--w1-rate R] [--w3-rate R] [--w4-events N] [--w4-rate R] [--w4-latency-events N] [--w5-conversations N] [--w6-starts N] [--round-offset N]\n            [--w7-answers N] [--w7-pieces N] [--w7-chars N] [--w7-piece-ms MS] [--w7-interval-ms MS]\n  bench summarize FILE.json...\n  bench floor-slack ADDR SECRET\n  bench reference-slack ADDR SECRET SLACK_API_ADDR\n  bench reference-slack-store ADDR SECRET SLACK_API_ADDR DB_PATH\n  bench reference-slack-journal ADDR SECRET SLACK_API_ADDR DB_PATH\n  bench reference-proxy ADDR AGENT_ADDR"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("floor-slack") => {
            let addr = args.get(1).unwrap_or_else(|| usage()).parse()?;
            let secret = args.get(2).unwrap_or_else(|| usage()).clone();
            floor::main(addr, secret)
        }
        Some("reference-slack") => {
            let addr = args.get(1).unwrap_or_else(|| usage()).parse()?;
            let secret = args.get(2).unwrap_or_else(|| usage()).clone();
            let api = args.get(3).unwrap_or_else(|| usage()).parse()?;
            reference::slack(addr, secret, api, reference::Bookkeeping::None)
        }
        Some(command @ ("reference-slack-store" | "reference-slack-journal")) => {
            let addr = args.get(1).unwrap_or_else(|| usage()).parse()?;
            let secret = args.get(2).unwrap_or_else(|| usage()).clone();
            let api = args.get(3).unwrap_or_else(|| usage()).parse()?;
            let db = args.get(4).unwrap_or_else(|| usage()).clone();
            let books = match command {
                "reference-slack-store" => reference::Bookkeeping::Store(db),
                _ => reference::Bookkeeping::Journal(db),
            };
            reference::slack(addr, secret, api, books)
        }
        Some("reference-proxy") => {
            let addr = args.get(1).unwrap_or_else(|| usage()).parse()?;
            let agent = args.get(2).unwrap_or_else(|| usage()).parse()?;
            reference::proxy(addr, agent)
        }
        Some("summarize") => {
            let rep = report::summarize(&args[1..])?;
            print!("{}", rep.table());
            Ok(())
        }
        Some("run") => run(&args[1..]),
        _ => usage(),
    }
}

fn run(args: &[String]) -> Result<()> {
    let mut bridge = PathBuf::from("target/release/agent-bridge");
    let mut against: Option<PathBuf> = None;
    let mut rounds = 3usize;
    let mut duration = 10.0f64;
    let mut only: Option<Vec<String>> = None;
    let mut out = PathBuf::from("bench/results");
    let mut conns = 50usize;
    let mut w1_rate = 1000.0;
    let mut w3_rate = 200.0;
    let mut w4_events = 20_000u64;
    let mut w4_rate = 500.0;
    let mut w4_lat_events = 10_000u64;
    let mut w5 = 100_000u64;
    let mut w6 = 5usize;
    let mut offset = 0usize;
    let (mut w7_answers, mut w7_pieces, mut w7_chars, mut w7_piece_ms, mut w7_interval_ms) =
        (50u64, 100u64, 1500usize, 25u64, 1000u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--bridge" => bridge = PathBuf::from(val()?),
            "--against" => {
                let v = val()?;
                against = Some(
                    if [
                        workloads::AGAINST_REFERENCE_JOURNAL,
                        workloads::AGAINST_REFERENCE_STORE,
                    ]
                    .contains(&v.as_str())
                    {
                        PathBuf::from(v)
                    } else {
                        std::fs::canonicalize(v)?
                    },
                )
            }
            "--rounds" => rounds = val()?.parse()?,
            "--duration" => duration = val()?.parse()?,
            "--only" => only = Some(val()?.split(',').map(|s| s.trim().to_uppercase()).collect()),
            "--out" => out = PathBuf::from(val()?),
            "--conns" => conns = val()?.parse()?,
            "--w1-rate" => w1_rate = val()?.parse()?,
            "--w3-rate" => w3_rate = val()?.parse()?,
            "--w4-events" => w4_events = val()?.parse()?,
            "--w4-rate" => w4_rate = val()?.parse()?,
            "--w4-latency-events" => w4_lat_events = val()?.parse()?,
            "--w5-conversations" => w5 = val()?.parse()?,
            "--w6-starts" => w6 = val()?.parse()?,
            "--round-offset" => offset = val()?.parse()?,
            "--w7-answers" => w7_answers = val()?.parse()?,
            "--w7-pieces" => w7_pieces = val()?.parse()?,
            "--w7-chars" => w7_chars = val()?.parse()?,
            "--w7-piece-ms" => w7_piece_ms = val()?.parse()?,
            "--w7-interval-ms" => w7_interval_ms = val()?.parse()?,
            _ => usage(),
        }
    }
    if !bridge.exists() {
        bail!(
            "bridge binary {} not found (build it with cargo build --release)",
            bridge.display()
        );
    }
    let bridge = std::fs::canonicalize(&bridge)?;
    let self_bin = std::env::current_exe()?;
    let want = |w: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == w));

    let started = now_stamp();
    let mut rep = Report {
        started: started.clone(),
        nproc: util::nproc(),
        loadavg_start: util::loadavg(),
        rounds,
        bridge_binary: bridge.display().to_string(),
        git: std::env::var("BENCH_GIT").unwrap_or_default(),
        settings: serde_json::json!({
            "duration_s": duration, "conns": conns, "w1_rate": w1_rate, "w3_rate": w3_rate,
            "w4_events": w4_events, "w4_rate": w4_rate, "w4_latency_events": w4_lat_events, "w5_conversations": w5, "w6_starts": w6,
            "w7_answers": w7_answers, "w7_pieces": w7_pieces, "w7_chars": w7_chars, "w7_piece_ms": w7_piece_ms, "w7_interval_ms": w7_interval_ms,
            "only": only,
        }),
        ..Report::default()
    };

    util::now_ns();
    let fakes = fakes::Fakes::start()?;
    let ctx = Ctx {
        bridge_bin: bridge,
        against,
        self_bin,
        fakes,
        duration: Duration::from_secs_f64(duration),
        conns,
        w1_rate,
        w1_channels: 500,
        w3_rate,
        w4_events,
        w4_rate,
        w4_lat_events,
        w5_convs: w5,
        w6_starts: w6,
        w7_answers,
        w7_pieces,
        w7_chars,
        w7_piece_ms,
        w7_interval_ms,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gen-rt")
        .enable_all()
        .build()?;
    type Step = (&'static str, fn(&mut Report, &Ctx));
    let decls: [Step; 9] = [
        ("W1", workloads::declare_w1),
        ("W1AB", workloads::declare_w1ab),
        ("W2", workloads::declare_w2),
        ("W3", workloads::declare_w3),
        ("W4", workloads::declare_w4),
        ("W5", workloads::declare_w5),
        ("W6", workloads::declare_w6),
        ("W7", w7::declare_w7),
        ("W8", workloads::declare_w8),
    ];
    for (w, d) in decls {
        if want(w) && (w != "W1AB" || only.is_some()) {
            d(&mut rep, &ctx);
        }
    }
    rt.block_on(async {
        for round in offset..offset + rounds {
            eprintln!(
                "=== round {} of {rounds} (load avg {}) ===",
                round - offset + 1,
                util::loadavg()
            );
            for w in ["W1", "W1AB", "W2", "W3", "W4", "W5", "W6", "W7", "W8"] {
                // W1AB only when asked for by name.
                if !want(w) || (w == "W1AB" && only.is_none()) {
                    continue;
                }
                let res = match w {
                    "W1" => workloads::w1(&ctx, &mut rep, round).await,
                    "W1AB" => workloads::w1ab(&ctx, &mut rep, round).await,
                    "W2" => workloads::w2(&ctx, &mut rep, round).await,
                    "W3" => workloads::w3(&ctx, &mut rep, round).await,
                    "W4" => workloads::w4(&ctx, &mut rep, round).await,
                    "W5" => workloads::w5(&ctx, &mut rep, round).await,
                    "W6" => workloads::w6(&ctx, &mut rep, round).await,
                    "W8" => workloads::w8(&ctx, &mut rep, round).await,
                    _ => w7::w7(&ctx, &mut rep, round).await,
                };
                if let Err(e) = res {
                    eprintln!("{w} round {round} failed: {e:#}");
                    let first = rep.rows.iter().position(|r| r.workload == w);
                    if let Some(i) = first {
                        let note = format!("round {round} failed: {e:#}");
                        let n: String = note.chars().take(400).collect();
                        rep.rows[i].notes.push(n);
                    }
                }
            }
        }
    });
    rep.loadavg_end = util::loadavg();
    rep.bridge_log = procs::LOGS
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    rep.finished = now_stamp();
    rep.finish();
    print!("{}", rep.table());
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let file = out.join(format!("{}.json", started.replace(':', "-")));
    std::fs::write(&file, serde_json::to_string_pretty(&rep)?)?;
    println!("\nJSON: {}", file.display());
    Ok(())
}

/// UTC `YYYY-MM-DDTHH:MM:SSZ` without a date crate.
fn now_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
