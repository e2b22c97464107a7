//! The load generator: N keep-alive HTTP/1.1 connections (hyper client), closed loop
//! (as fast as the server answers) or open loop at a fixed rate with latency measured
//! from each request's *intended* send time (no coordinated omission), HDR histogram.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;

use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

pub type MakeReq = Arc<dyn Fn(u64) -> Request<Full<Bytes>> + Send + Sync>;
pub type OnResp = Arc<dyn Fn(u64, StatusCode, &Bytes) + Send + Sync>;
/// Returns `true` when the next request may go (W5's back-pressure window).
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Each connection sends its next request when the previous one is answered.
    Closed,
    /// Requests are due at `start + i / rate`; any free connection takes the next
    /// due request; latency counts from the due time.
    Rate(f64),
}

pub struct Load {
    pub addr: SocketAddr,
    pub conns: usize,
    pub mode: Mode,
    pub duration: Option<Duration>,
    pub total: Option<u64>,
    pub make: MakeReq,
    pub on_resp: Option<OnResp>,
    pub gate: Option<Gate>,
}

pub struct LoadResult {
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers and transport errors.
    pub errors: u64,
    pub statuses: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Latency in nanoseconds.
    pub hist: Histogram<u64>,
    /// How late the pacer was, worst case (open loop only), in ns.
    pub max_dispatch_lag_ns: u64,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }
}

struct Shared {
    next: AtomicU64,
    stop: AtomicBool,
    statuses: Mutex<BTreeMap<String, u64>>,
}

type ConnFut = hyper::client::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>;

/// A client connection whose I/O is driven inside the task that sends on it (no
/// separate connection task: one wake-up per response instead of two).
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    conn: std::pin::Pin<Box<ConnFut>>,
}

async fn connect(addr: SocketAddr) -> Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    Ok(Conn {
        sender,
        conn: Box::pin(conn),
    })
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram bounds")
}

/// One request on a connection; reconnects once when the connection is gone.
async fn one(
    c: &mut Conn,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    if c.sender.is_closed() {
        *c = connect(addr).await?;
    }
    let Conn { sender, conn } = c;
    let request = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::select! {
        biased;
        r = request => r,
        r = conn.as_mut() => {
            Err(anyhow::anyhow!("connection closed: {:?}", r.err()))
        }
    }
}

fn note(shared: &Shared, key: String) {
    *shared.statuses.lock().unwrap().entry(key).or_default() += 1;
}

/// Runs a load; must be called inside a tokio runtime.
pub async fn run(load: Load) -> Result<LoadResult> {
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        statuses: Mutex::new(BTreeMap::new()),
    });
    // Connect everything before the clock starts.
    let mut senders = Vec::with_capacity(load.conns);
    for _ in 0..load.conns {
        senders.push(connect(load.addr).await?);
    }
    let total = load.total.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = load.duration.map(|d| start + d);

    let (tx, rx) = flume::unbounded::<(u64, Instant)>();
    let lag = Arc::new(AtomicU64::new(0));
    let pacer = if let Mode::Rate(rate) = load.mode {
        let lag = lag.clone();
        let shared = shared.clone();
        Some(
            std::thread::Builder::new()
                .name("gen-pacer".into())
                .spawn(move || {
                    // 1 µs timer slack: the default 50 µs would add to every measured latency.
                    unsafe {
                        libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64);
                    }
                    let period = 1.0 / rate;
                    let mut i: u64 = 0;
                    while i < total && !shared.stop.load(Ordering::Relaxed) {
                        let due = start + Duration::from_secs_f64(period * i as f64);
                        if let Some(d) = deadline {
                            if due >= d {
                                break;
                            }
                        }
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        } else {
                            lag.fetch_max((now - due).as_nanos() as u64, Ordering::Relaxed);
                        }
                        if tx.send((i, due)).is_err() {
                            break;
                        }
                        i += 1;
                    }
                    drop(tx);
                })?,
        )
    } else {
        drop(tx);
        None
    };

    let mut tasks = Vec::new();
    for mut sender in senders {
        let shared = shared.clone();
        let make = load.make.clone();
        let on_resp = load.on_resp.clone();
        let gate = load.gate.clone();
        let rx = rx.clone();
        let addr = load.addr;
        let mode = load.mode;
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                let (seq, t0) = match mode {
                    Mode::Closed => {
                        if shared.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Some(d) = deadline {
                            if Instant::now() >= d {
                                break;
                            }
                        }
                        if let Some(g) = &gate {
                            let mut waited = 0u32;
                            while !g() {
                                waited += 1;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                if waited > 120_000 {
                                    break;
                                }
                            }
                        }
                        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
                        if seq >= total {
                            break;
                        }
                        (seq, Instant::now())
                    }
                    Mode::Rate(_) => match rx.recv_async().await {
                        Ok(x) => x,
                        Err(_) => break,
                    },
                };
                let req = make(seq);
                match one(&mut sender, addr, req).await {
                    Ok((status, body)) => {
                        let done = Instant::now();
                        hist.saturating_record(
                            (done.saturating_duration_since(t0).as_nanos() as u64).max(1_000),
                        );
                        if status.is_success() {
                            ok += 1;
                        } else {
                            errors += 1;
                            note(&shared, status.as_u16().to_string());
                        }
                        if let Some(cb) = &on_resp {
                            cb(seq, status, &body);
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        note(&shared, format!("error: {e}"));
                        if let Ok(s) = connect(addr).await {
                            sender = s;
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut hist = new_hist();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await?;
        hist.add(&h).ok();
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(p) = pacer {
        let _ = p.join();
    }
    let statuses = shared.statuses.lock().unwrap().clone();
    Ok(LoadResult {
        ok,
        errors,
        statuses,
        elapsed,
        hist,
        max_dispatch_lag_ns: lag.load(Ordering::Relaxed),
    })
}
