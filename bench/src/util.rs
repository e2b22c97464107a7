//! Small helpers: /proc readings, free ports, one-off HTTP requests, statistics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clk_tck() -> u64 {
    // SAFETY-free: sysconf is a plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of a process (all its threads, dead ones included), in seconds.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    cpu_secs_of_stat(&stat)
}

pub fn cpu_secs_of_stat(stat: &str) -> Result<f64> {
    let rest = stat.rsplit(')').next().ok_or_else(|| anyhow!("bad stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = f.get(11).ok_or_else(|| anyhow!("bad stat"))?.parse()?;
    let stime: u64 = f.get(12).ok_or_else(|| anyhow!("bad stat"))?.parse()?;
    Ok((utime + stime) as f64 / clk_tck() as f64)
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
pub fn thread_cpu_secs(prefix: &str) -> f64 {
    threads_cpu_secs("self", &[prefix])
}

/// CPU seconds (user + sys) of the live threads of process `pid` (or `self`) whose
/// name starts with one of `prefixes`.
pub fn threads_cpu_secs(pid: &str, prefixes: &[&str]) -> f64 {
    let mut total = 0.0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if prefixes
                .iter()
                .any(|prefix| comm.trim_end().starts_with(prefix))
            {
                if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
                    total += cpu_secs_of_stat(&stat).unwrap_or(0.0);
                }
            }
        }
    }
    total
}

/// A field of /proc/<pid>/status in kB (e.g. `VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            if let Some(rest) = rest.strip_prefix(':') {
                let n = rest.trim().trim_end_matches("kB").trim();
                return Ok(n.parse()?);
            }
        }
    }
    Err(anyhow!("{field} not in /proc/{pid}/status"))
}

pub fn rss_mib(pid: u32) -> f64 {
    status_kb(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

pub fn hwm_mib(pid: u32) -> f64 {
    status_kb(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One request on a fresh connection (control plane: readiness, registration).
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = b.body(Full::new(body.unwrap_or_default()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    drop(sender);
    conn.abort();
    Ok((status, bytes))
}

/// Polls `GET path` until it answers 200; returns how long it took.
pub async fn wait_200(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    every: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok((StatusCode::OK, _)) = request(addr, Method::GET, path, &[], None).await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(anyhow!("{addr}{path} not 200 within {timeout:?}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until something can connect to `addr`.
pub async fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(anyhow!("nothing listens on {addr} after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Monotonic nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_nanos() as u64
}

/// Finds `key` followed by decimal digits in `hay`; returns the number.
pub fn find_num(hay: &[u8], key: &[u8]) -> Option<u64> {
    let pos = hay.windows(key.len()).position(|w| w == key)?;
    let mut n: u64 = 0;
    let mut any = false;
    for &c in &hay[pos + key.len()..] {
        if c.is_ascii_digit() {
            n = n * 10 + u64::from(c - b'0');
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

/// A process's I/O counters (`/proc/<pid>/io`): `write_bytes` (bytes it sent to the
/// storage layer: the SQLite WAL and checkpoints), `syscw` and `syscr` (write- and
/// read-like system calls, sockets included). Zeros when the file cannot be read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Io {
    pub write_bytes: u64,
    pub syscw: u64,
    pub syscr: u64,
}

pub fn io(pid: u32) -> Io {
    let mut io = Io::default();
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().parse::<u64>().unwrap_or(0);
            match key {
                "write_bytes" => io.write_bytes = value,
                "syscw" => io.syscw = value,
                "syscr" => io.syscr = value,
                _ => {}
            }
        }
    }
    io
}

/// Voluntary + involuntary context switches of every live thread of a process.
pub fn ctx_switches(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            if let Ok(status) = std::fs::read_to_string(e.path().join("status")) {
                for line in status.lines() {
                    if line.starts_with("voluntary_ctxt_switches")
                        || line.starts_with("nonvoluntary_ctxt_switches")
                    {
                        total += line
                            .split_whitespace()
                            .nth(1)
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
            }
        }
    }
    total
}
