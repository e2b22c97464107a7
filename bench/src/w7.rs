//! W7 — streamed answers (../shared/BENCH.md): `--w7-answers` (50) concurrent answers of
//! `--w7-chars` (1,500) characters in `--w7-pieces` (100) pieces, one every
//! `--w7-piece-ms` (25 ms; spread 0.75–1.25× across the answers, so that they end at
//! every phase of the edit interval), from the fake OpenAI-compatible server (SSE,
//! `stream: true`), shown by the bridge on Slack (`SLACK_STREAMING=update`, then
//! `native`) and on Discord (post + edits), with `STREAM_EDIT_INTERVAL_MS` =
//! `DISCORD_EDIT_INTERVAL_MS` = `--w7-interval-ms` (1,000).
//!
//! Per answer, on the one process clock of the harness: the fake OpenAI server stamps
//! when it handed its first and its last piece to hyper; the platform fakes stamp every
//! call and attribute it to its answer (Slack: `thread_ts` of the event, then the
//! message `ts` the fake handed out; Discord: one channel per answer).
//!
//! Floor ("the fake's own latency"): the harness itself relays each stream with the
//! least any implementation must do — read the SSE, make the first platform call with
//! the first text, the final call right after `[DONE]` (`chat.postMessage` +
//! `chat.update`; `chat.startStream` + `chat.stopStream`; Discord POST + PATCH), over
//! keep-alive connections opened beforehand — through the same fakes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::fake_discord::{self, BOT_ID};
use crate::fakes::{w7_answer, AiTiming, W7Call};
use crate::gen::{self, Load, Mode};
use crate::procs::{self, BridgeCfg, BOT_TOKEN, SIGNING_SECRET};
use crate::report::{Budget, Report};
use crate::slackev::{ts_of, EventMaker};
use crate::util::now_ns;
use crate::workloads::Ctx;

const W: &str = "W7";

/// SPEC §5: native mode batches `chat.appendStream` at most every 250 ms; that is its
/// pace (it has no edit interval).
const NATIVE_APPEND_MS: u64 = 250;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plat {
    SlackUpdate,
    SlackNative,
    Discord,
}

const PLATS: [Plat; 3] = [Plat::SlackUpdate, Plat::SlackNative, Plat::Discord];

impl Plat {
    fn label(self) -> &'static str {
        match self {
            Plat::SlackUpdate => "Slack update",
            Plat::SlackNative => "Slack native",
            Plat::Discord => "Discord",
        }
    }

    /// How long the final call may wait for the pace after the last piece.
    fn pace_ms(self, ctx: &Ctx) -> u64 {
        match self {
            Plat::SlackNative => NATIVE_APPEND_MS,
            _ => ctx.w7_interval_ms.max(50),
        }
    }

    /// Calls that show answer text.
    fn shows_text(self, method: &str) -> bool {
        matches!(
            method,
            "chat.postMessage"
                | "chat.update"
                | "chat.startStream"
                | "chat.appendStream"
                | "chat.stopStream"
                | "POST message"
                | "PATCH message"
        )
    }
}

fn m_first(p: Plat, q: &str) -> String {
    format!(
        "{}: first piece → first platform call with text, {q}",
        p.label()
    )
}
fn m_final(p: Plat, q: &str) -> String {
    format!("{}: last piece → final platform call, {q}", p.label())
}
fn m_calls(p: Plat) -> String {
    format!(
        "{}: platform calls per answer (all, incl. typing/status/lookups)",
        p.label()
    )
}
fn m_text_calls(p: Plat) -> String {
    format!("{}: platform calls with text per answer", p.label())
}
fn m_complete(p: Plat) -> String {
    format!(
        "{}: every answer shown whole (final text = the answer)",
        p.label()
    )
}
fn m_cpu(p: Plat) -> String {
    format!("{}: bridge CPU per answer (floor: none)", p.label())
}
fn m_window(ctx: &Ctx) -> String {
    format!(
        "Discord: most calls to one message within any {} ms (DISCORD_EDIT_INTERVAL_MS)",
        ctx.w7_interval_ms
    )
}
const M_GAP: &str = "Discord: least time between two calls to one message";

pub fn declare_w7(rep: &mut Report, ctx: &Ctx) {
    for p in PLATS {
        rep.declare(W, &m_first(p, "p99"), "ms", Some(Budget::AddedAtMost(50.0)));
        rep.declare(W, &m_first(p, "p50"), "ms", None);
        rep.declare(
            W,
            &m_final(p, "p99"),
            "ms",
            Some(Budget::AtMost((p.pace_ms(ctx) + 50) as f64)),
        );
        rep.declare(W, &m_final(p, "p50"), "ms", None);
        rep.declare(W, &m_calls(p), "calls", None);
        rep.declare(W, &m_text_calls(p), "calls", None);
        if p == Plat::Discord {
            rep.declare(W, &m_window(ctx), "calls", Some(Budget::AtMost(1.0)));
            rep.declare(W, M_GAP, "ms", None);
        }
        rep.declare(W, &m_complete(p), "ok", Some(Budget::AllOk));
        rep.declare(W, &m_cpu(p), "ms", None);
    }
}

/// What one measurement (floor or bridge) of one platform found.
struct Figures {
    first: Histogram<u64>,
    last: Histogram<u64>,
    calls: f64,
    text_calls: f64,
    by_method: BTreeMap<&'static str, u64>,
    /// Discord: most calls to one message within one interval; least gap (ms).
    window_max: u64,
    min_gap_ms: f64,
    complete: usize,
    answers: usize,
    problems: Vec<String>,
    cpu_ms: Option<f64>,
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1e6
}

fn analyse(ctx: &Ctx, p: Plat, timings: &HashMap<u64, AiTiming>, calls: &[W7Call]) -> Figures {
    let n = ctx.w7_answers;
    let mut per: Vec<Vec<&W7Call>> = vec![Vec::new(); n as usize];
    let mut by_method = BTreeMap::new();
    for c in calls {
        if let Some(v) = per.get_mut(c.seq as usize) {
            v.push(c);
            *by_method.entry(c.method).or_insert(0u64) += 1;
        }
    }
    let (mut first, mut last) = (hist(), hist());
    let (mut complete, mut text_calls, mut all_calls) = (0usize, 0usize, 0usize);
    let mut problems = Vec::new();
    let (mut window_max, mut min_gap) = (0u64, u64::MAX);
    let interval_ns = ctx.w7_interval_ms * 1_000_000;
    for (seq, calls) in per.iter_mut().enumerate() {
        let seq = seq as u64;
        calls.sort_by_key(|c| c.at);
        all_calls += calls.len();
        let texts: Vec<&&W7Call> = calls.iter().filter(|c| p.shows_text(c.method)).collect();
        text_calls += texts.len();
        let Some(t) = timings.get(&seq).filter(|t| t.first > 0 && t.last > 0) else {
            problems.push(format!(
                "answer {seq}: the fake OpenAI server never finished streaming it"
            ));
            continue;
        };
        let (Some(a), Some(z)) = (texts.first(), texts.last()) else {
            problems.push(format!("answer {seq}: no platform call with text"));
            continue;
        };
        first.saturating_record(a.at.saturating_sub(t.first).max(1_000));
        last.saturating_record(z.at.saturating_sub(t.last).max(1_000));
        let expected = w7_answer(seq, ctx.w7_chars);
        let shown = shown_text(&texts);
        let bare = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        if bare(&shown) == bare(&expected) {
            complete += 1;
        } else if problems.len() < 5 {
            problems.push(format!(
                "answer {seq}: shown {} chars, expected {} (calls: {:?})",
                shown.len(),
                expected.len(),
                texts.iter().map(|c| c.method).collect::<Vec<_>>()
            ));
        }
        if p == Plat::Discord {
            let mut by_msg: HashMap<&str, Vec<u64>> = HashMap::new();
            for c in &texts {
                by_msg.entry(c.message.as_str()).or_default().push(c.at);
            }
            for times in by_msg.values() {
                for (i, t0) in times.iter().enumerate() {
                    let within = times[i..]
                        .iter()
                        .take_while(|t| **t - t0 < interval_ns)
                        .count() as u64;
                    window_max = window_max.max(within);
                    if let Some(t1) = times.get(i + 1) {
                        min_gap = min_gap.min(t1 - t0);
                    }
                }
            }
        }
    }
    Figures {
        first,
        last,
        calls: all_calls as f64 / n.max(1) as f64,
        text_calls: text_calls as f64 / n.max(1) as f64,
        by_method,
        window_max,
        min_gap_ms: if min_gap == u64::MAX {
            f64::NAN
        } else {
            min_gap as f64 / 1e6
        },
        complete,
        answers: n as usize,
        problems,
        cpu_ms: None,
    }
}

/// What a reader sees at the end: each message's final text (a native stream's: its
/// pieces concatenated; an edited message's: its last text), the messages in the order
/// they were started. A long answer takes several messages, split at white space, so
/// callers compare without white space.
fn shown_text(texts: &[&&W7Call]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut finals: HashMap<&str, String> = HashMap::new();
    for c in texts {
        let id = c.message.as_str();
        if !finals.contains_key(id) {
            order.push(id);
        }
        let text = finals.entry(id).or_default();
        if c.method.ends_with("Stream") {
            text.push_str(&c.text);
        } else {
            text.clone_from(&c.text);
        }
    }
    order
        .iter()
        .map(|id| finals[id].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn arm(ctx: &Ctx, p: Plat) {
    let f = &ctx.fakes;
    f.reset();
    f.openai.pieces.store(ctx.w7_pieces, Ordering::Relaxed);
    f.openai.chars.store(ctx.w7_chars as u64, Ordering::Relaxed);
    f.openai
        .pause_us
        .store(ctx.w7_piece_ms * 1000, Ordering::Relaxed);
    f.openai.spread.store(ctx.w7_answers, Ordering::Relaxed);
    f.slack.record.store(p != Plat::Discord, Ordering::Relaxed);
    f.slack
        .streaming
        .store(p != Plat::Discord, Ordering::Relaxed);
    f.discord
        .record
        .store(p == Plat::Discord, Ordering::Relaxed);
}

fn disarm(ctx: &Ctx) {
    ctx.fakes.slack.record.store(false, Ordering::Relaxed);
    ctx.fakes.slack.streaming.store(false, Ordering::Relaxed);
    ctx.fakes.discord.record.store(false, Ordering::Relaxed);
}

fn recorded(ctx: &Ctx, p: Plat) -> (HashMap<u64, AiTiming>, Vec<W7Call>) {
    let f = &ctx.fakes;
    let timings = f.openai.timings.lock().unwrap().clone();
    let calls = if p == Plat::Discord {
        f.discord.w7.lock().unwrap().clone()
    } else {
        f.slack.w7.lock().unwrap().clone()
    };
    (timings, calls)
}

/// Waits until every answer was streamed whole by the fake OpenAI server and nothing
/// reached the platform fake for a pace + 300 ms; `false` on timeout.
async fn wait_done(ctx: &Ctx, p: Plat, timeout: Duration) -> bool {
    let quiet = (p.pace_ms(ctx) + 300) * 1_000_000;
    let start = Instant::now();
    loop {
        let (timings, calls) = {
            let f = &ctx.fakes;
            let t: Vec<u64> = f
                .openai
                .timings
                .lock()
                .unwrap()
                .values()
                .map(|t| t.last)
                .collect();
            let last_call = if p == Plat::Discord {
                f.discord.w7.lock().unwrap().iter().map(|c| c.at).max()
            } else {
                f.slack.w7.lock().unwrap().iter().map(|c| c.at).max()
            };
            (t, last_call.unwrap_or(0))
        };
        let now = now_ns();
        let streamed = timings.len() as u64 >= ctx.w7_answers && timings.iter().all(|t| *t > 0);
        let latest = timings.iter().copied().max().unwrap_or(0).max(calls);
        if streamed && now.saturating_sub(latest) > quiet {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn answer_window(ctx: &Ctx) -> Duration {
    // The slowest answer's pieces come 1.25 × --w7-piece-ms apart (FakeOpenAi::spread).
    Duration::from_millis(ctx.w7_piece_ms * ctx.w7_pieces * 5 / 4 + ctx.w7_interval_ms)
        + Duration::from_secs(60)
}

async fn measure_bridge(ctx: &Ctx, p: Plat) -> Result<Figures> {
    let f = &ctx.fakes;
    arm(ctx, p);
    let interval = ctx.w7_interval_ms.to_string();
    let mut extra = vec![
        ("STREAM_EDIT_INTERVAL_MS".to_string(), interval.clone()),
        ("DISCORD_EDIT_INTERVAL_MS".to_string(), interval),
    ];
    match p {
        Plat::SlackUpdate => extra.push(("SLACK_STREAMING".into(), "update".into())),
        Plat::SlackNative => extra.push(("SLACK_STREAMING".into(), "native".into())),
        Plat::Discord => {}
    }
    let cfg = BridgeCfg {
        openai: Some(f.openai_addr),
        slack: (p != Plat::Discord).then_some(f.slack_addr),
        discord: (p == Plat::Discord).then_some(f.discord_addr),
        extra,
        ..BridgeCfg::default()
    };
    let (b, _) = procs::start_bridge(&ctx.bridge_bin, &cfg).await?;
    if p == Plat::Discord {
        let start = Instant::now();
        while f.discord.commands.load(Ordering::Relaxed) == 0 || !f.discord.is_live() {
            if start.elapsed() > Duration::from_secs(20) {
                let tail = b.log_tail();
                b.stop(Duration::from_secs(3));
                disarm(ctx);
                return Err(anyhow!("the bridge did not connect to the fake Discord gateway within 20 s; log:\n{tail}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu0 = b.cpu();
    let n = ctx.w7_answers;
    let mut trigger_note = String::new();
    match p {
        Plat::Discord => {
            for seq in 0..n {
                if !f.discord.w7_message(
                    seq,
                    &format!("<@{BOT_ID}> bench w7id={seq} please write a long answer"),
                ) {
                    trigger_note = format!("the gateway session dropped before message {seq}");
                    break;
                }
            }
        }
        _ => {
            let maker = Arc::new(EventMaker::new(SIGNING_SECRET, n, "w7id=", b.addr));
            let load = gen::run(Load {
                addr: b.addr,
                conns: n as usize,
                mode: Mode::Closed,
                duration: None,
                total: Some(n),
                make: Arc::new(move |seq| maker.request(seq)),
                on_resp: None,
                gate: None,
            })
            .await?;
            if load.ok != n {
                trigger_note = format!(
                    "{} of {n} events acknowledged ({} errors {:?})",
                    load.ok, load.errors, load.statuses
                );
            }
        }
    }
    let done = wait_done(ctx, p, answer_window(ctx)).await;
    let cpu1 = b.cpu();
    let (timings, calls) = recorded(ctx, p);
    let unknown = (
        f.openai.unknown.load(Ordering::Relaxed),
        f.discord.unknown.load(Ordering::Relaxed),
        f.slack.stats.unknown_thread.load(Ordering::Relaxed),
    );
    b.stop(Duration::from_secs(5));
    disarm(ctx);
    let mut fig = analyse(ctx, p, &timings, &calls);
    fig.cpu_ms = Some((cpu1 - cpu0) / n.max(1) as f64 * 1e3);
    if !done {
        fig.problems
            .push("timed out waiting for the answers".into());
    }
    if !trigger_note.is_empty() {
        fig.problems.push(trigger_note);
    }
    if unknown != (0, 0, 0) {
        fig.problems.push(format!(
            "unattributed: {} OpenAI requests without w7id=, {} Discord calls to unknown routes, {} Slack calls to unknown threads",
            unknown.0, unknown.1, unknown.2
        ));
    }
    Ok(fig)
}

// ---------------------------------------------------------------------------------
// The floor: the harness relays each stream itself with two platform calls
// ---------------------------------------------------------------------------------

/// One keep-alive client connection.
struct Conn {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { tx, addr })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        auth: &str,
        body: &Value,
    ) -> Result<Response<Incoming>> {
        self.tx.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, auth)
            .body(Full::new(Bytes::from(body.to_string())))?;
        Ok(self.tx.send_request(req).await?)
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        auth: &str,
        body: &Value,
    ) -> Result<Value> {
        let resp = self.send(method, path, auth, body).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// The first platform call of the floor: returns the message's ts / id.
async fn floor_first(pf: &mut Conn, p: Plat, seq: u64, text: &str) -> Result<String> {
    let slack_auth = format!("Bearer {BOT_TOKEN}");
    let channel = format!("C{seq:06}");
    let v = match p {
        Plat::SlackUpdate => {
            let body = json!({"channel": channel, "thread_ts": ts_of(seq), "text": text});
            pf.call(Method::POST, "/api/chat.postMessage", &slack_auth, &body)
                .await?
        }
        Plat::SlackNative => {
            let body = json!({"channel": channel, "thread_ts": ts_of(seq), "markdown_text": text,
                              "recipient_user_id": "U0USER0001", "recipient_team_id": "T1"});
            pf.call(Method::POST, "/api/chat.startStream", &slack_auth, &body)
                .await?
        }
        Plat::Discord => {
            let path = format!(
                "/api/v10/channels/{}/messages",
                fake_discord::channel_of(seq)
            );
            pf.call(Method::POST, &path, "Bot floor", &json!({"content": text}))
                .await?
        }
    };
    let key = if p == Plat::Discord { "id" } else { "ts" };
    v[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("floor: no {key} in the answer {v}"))
}

/// The floor's final call: the whole text (native: what the stream does not hold yet).
async fn floor_final(
    pf: &mut Conn,
    p: Plat,
    seq: u64,
    id: &str,
    text: &str,
    shown: usize,
) -> Result<()> {
    let slack_auth = format!("Bearer {BOT_TOKEN}");
    let channel = format!("C{seq:06}");
    match p {
        Plat::SlackUpdate => {
            let body = json!({"channel": channel, "ts": id, "text": text});
            pf.call(Method::POST, "/api/chat.update", &slack_auth, &body)
                .await?;
        }
        Plat::SlackNative => {
            let body = json!({"channel": channel, "ts": id, "markdown_text": &text[shown..]});
            pf.call(Method::POST, "/api/chat.stopStream", &slack_auth, &body)
                .await?;
        }
        Plat::Discord => {
            let path = format!(
                "/api/v10/channels/{}/messages/{id}",
                fake_discord::channel_of(seq)
            );
            pf.call(Method::PATCH, &path, "Bot floor", &json!({"content": text}))
                .await?;
        }
    }
    Ok(())
}

async fn floor_answer(openai: SocketAddr, platform: SocketAddr, p: Plat, seq: u64) -> Result<()> {
    let mut ai = Conn::open(openai).await?;
    let mut pf = Conn::open(platform).await?;
    let body = json!({"model": "bench", "stream": true, "messages": [{"role": "user", "content": format!("bench w7id={seq}")}]});
    let resp = ai
        .send(Method::POST, "/v1/chat/completions", "Bearer floor", &body)
        .await?;
    let mut body = resp.into_body();
    let (mut buf, mut text) = (Vec::<u8>::new(), String::new());
    let mut msg: Option<(String, usize)> = None;
    let mut done = false;
    while !done {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let line = std::str::from_utf8(&event)?.trim();
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = serde_json::from_str(data)?;
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
            }
        }
        if msg.is_none() && !text.is_empty() {
            msg = Some((floor_first(&mut pf, p, seq, &text).await?, text.len()));
        }
    }
    let (id, shown) = msg.ok_or_else(|| anyhow!("floor: answer {seq} had no text"))?;
    floor_final(&mut pf, p, seq, &id, &text, shown).await
}

async fn measure_floor(ctx: &Ctx, p: Plat) -> Result<Figures> {
    let f = &ctx.fakes;
    arm(ctx, p);
    let platform = if p == Plat::Discord {
        f.discord_addr
    } else {
        f.slack_addr
    };
    let tasks: Vec<_> = (0..ctx.w7_answers)
        .map(|seq| tokio::spawn(floor_answer(f.openai_addr, platform, p, seq)))
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let done = wait_done(ctx, p, answer_window(ctx)).await;
    let (timings, calls) = recorded(ctx, p);
    disarm(ctx);
    let mut fig = analyse(ctx, p, &timings, &calls);
    if !done {
        fig.problems
            .push("timed out waiting for the answers".into());
    }
    if let Some(e) = errors.first() {
        fig.problems
            .push(format!("{} floor answers failed, first: {e}", errors.len()));
    }
    Ok(fig)
}

// ---------------------------------------------------------------------------------

pub async fn w7(ctx: &Ctx, rep: &mut Report, round: usize) -> Result<()> {
    let order: [bool; 2] = if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    };
    for p in PLATS {
        for floor in order {
            let who = if floor { "floor" } else { "bridge" };
            eprintln!(
                "[bench {:>7.1}s] W7 {} {who}: {} answers × {} pieces, {} ms apart, interval {} ms",
                now_ns() as f64 / 1e9,
                p.label(),
                ctx.w7_answers,
                ctx.w7_pieces,
                ctx.w7_piece_ms,
                ctx.w7_interval_ms
            );
            let fig = if floor {
                measure_floor(ctx, p).await
            } else {
                measure_bridge(ctx, p).await
            }
            .with_context(|| format!("{} {who}", p.label()))?;
            eprintln!(
                "[bench {:>7.1}s] W7 {} {who}: first p50 {:.2} p99 {:.2} ms, final p50 {:.2} p99 {:.2} ms, {:.1} calls/answer ({:.1} with text), {}/{} whole{}{}",
                now_ns() as f64 / 1e9,
                p.label(),
                ms(&fig.first, 0.5),
                ms(&fig.first, 0.99),
                ms(&fig.last, 0.5),
                ms(&fig.last, 0.99),
                fig.calls,
                fig.text_calls,
                fig.complete,
                fig.answers,
                if p == Plat::Discord { format!(", ≤ {} calls per message per interval (least gap {:.1} ms)", fig.window_max, fig.min_gap_ms) } else { String::new() },
                if fig.problems.is_empty() { String::new() } else { format!("; {}", fig.problems.join("; ")) }
            );
            let push = |rep: &mut Report, m: &str, v: f64| {
                if floor {
                    rep.floor(W, m, v)
                } else {
                    rep.bridge(W, m, v)
                }
            };
            push(rep, &m_first(p, "p99"), ms(&fig.first, 0.99));
            push(rep, &m_first(p, "p50"), ms(&fig.first, 0.5));
            push(rep, &m_final(p, "p99"), ms(&fig.last, 0.99));
            push(rep, &m_final(p, "p50"), ms(&fig.last, 0.5));
            push(rep, &m_calls(p), fig.calls);
            push(rep, &m_text_calls(p), fig.text_calls);
            if p == Plat::Discord {
                push(rep, &m_window(ctx), fig.window_max as f64);
                if !floor {
                    rep.bridge(W, M_GAP, fig.min_gap_ms);
                }
            }
            if !floor {
                rep.bridge(
                    W,
                    &m_complete(p),
                    if fig.complete == fig.answers && fig.answers > 0 {
                        1.0
                    } else {
                        0.0
                    },
                );
                if let Some(cpu) = fig.cpu_ms {
                    rep.bridge(W, &m_cpu(p), cpu);
                }
            }
            rep.note(
                W,
                &m_calls(p),
                format!("{who} round {round}: calls by method {:?}", fig.by_method),
            );
            rep.note(
                W,
                &m_complete(p),
                format!(
                    "{who} round {round}: {}/{} answers shown whole{}",
                    fig.complete,
                    fig.answers,
                    if fig.problems.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", fig.problems.join("; "))
                    }
                ),
            );
        }
    }
    Ok(())
}
