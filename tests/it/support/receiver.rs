//! A webhook receiver (svix's `TestReceiver`): a real axum server on 127.0.0.1:0 that
//! records every request — headers, raw body, arrival time — and answers with a status
//! the test can flip at any time, a scripted queue of answers, `Retry-After`, or by
//! hanging until released.
//!
//! Order of decisions for each request: take the next scripted answer if the queue is
//! not empty, else the current status → record the request → hang while hang mode is
//! on → answer.
//!
//! ```ignore
//! let rx = Receiver::start().await;
//! rx.push(Reply::status(500));          // the first request fails
//! rx.set_status(200);                   // later ones succeed
//! let got = rx.wait_for(2, Duration::from_secs(5)).await;
//! assert!(got[0].verify(&secret));
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::sync::{watch, Notify};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names are lower-case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub arrived: Instant,
    /// The status it was answered with; `None` while (or because) it hung.
    pub answered: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }

    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").expect("webhook-id header")
    }

    pub fn timestamp(&self) -> i64 {
        self.header("webhook-timestamp")
            .expect("webhook-timestamp header")
            .parse()
            .expect("webhook-timestamp is a number")
    }

    /// The `v1,…` entries of `webhook-signature`.
    pub fn signatures(&self) -> Vec<&str> {
        self.header("webhook-signature")
            .expect("webhook-signature header")
            .split(' ')
            .collect()
    }

    /// Whether `webhook-signature` holds a valid signature made with `secret`.
    pub fn verify(&self, secret: &str) -> bool {
        agent_bridge::webhook::sign::verify(
            secret,
            self.webhook_id(),
            self.timestamp(),
            self.body.as_bytes(),
            self.header("webhook-signature").unwrap_or(""),
        )
    }

    /// `data.<field>` of the body as a string.
    pub fn data_str(&self, field: &str) -> Option<String> {
        self.json()["data"][field].as_str().map(str::to_string)
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Extra response headers (`retry-after`, `location`, …).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: vec![],
            body: format!("answered {status}"),
        }
    }

    pub fn retry_after(self, value: &str) -> Self {
        self.header("retry-after", value)
    }

    /// A 307 to `location` (a path on this receiver, or any URL).
    pub fn redirect(location: &str) -> Self {
        Reply::status(307).header("location", location)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

struct Inner {
    requests: Mutex<Vec<Received>>,
    changed: Notify,
    status: AtomicU16,
    script: Mutex<VecDeque<Reply>>,
    /// `true` while every request hangs; flipping it to `false` releases them.
    hang: watch::Sender<bool>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (hang, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            changed: Notify::new(),
            status: AtomicU16::new(200),
            script: Mutex::new(VecDeque::new()),
            hang,
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            addr,
            inner,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The status of every answer not taken from the script (default 200).
    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    /// Queues an answer for the next request.
    pub fn push(&self, reply: Reply) {
        self.inner.script.lock().unwrap().push_back(reply);
    }

    /// While on, every request hangs; turning it off releases the hung ones.
    pub fn set_hang(&self, on: bool) {
        self.inner.hang.send_replace(on);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.inner.requests.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived; panics after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait_until(within, |r| r.len() >= n)
            .await
            .unwrap_or_else(|got| {
                panic!(
                    "expected {n} webhook requests within {within:?}, got {}: {got:#?}",
                    got.len()
                )
            })
    }

    /// Waits until `done(requests)`; `Err(requests so far)` after `within`.
    pub async fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Result<Vec<Received>, Vec<Received>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.inner.changed.notified();
            // Judged under the lock: cloning thousands of recorded requests on every
            // arrival would make the receiver, not the bridge, the bottleneck.
            {
                let requests = self.inner.requests.lock().unwrap();
                if done(&requests) {
                    return Ok(requests.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.requests());
            }
        }
    }

    /// Asserts no request arrives beyond `n` during `period`.
    pub async fn expect_no_more_than(&self, n: usize, period: Duration) {
        tokio::time::sleep(period).await;
        let got = self.requests();
        assert!(
            got.len() <= n,
            "expected at most {n} webhook requests, got {}: {got:#?}",
            got.len()
        );
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = inner
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::status(inner.status.load(Ordering::SeqCst)));
    let mut hang = inner.hang.subscribe();
    let hangs = *hang.borrow();
    let index = {
        let mut requests = inner.requests.lock().unwrap();
        requests.push(Received {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
            arrived: Instant::now(),
            answered: (!hangs).then_some(reply.status),
        });
        requests.len() - 1
    };
    inner.changed.notify_waiters();
    if hangs {
        // Until hang mode is turned off, or the client gives up and the connection
        // (with this future) is dropped.
        let _ = hang.wait_for(|on| !*on).await;
        inner.requests.lock().unwrap()[index].answered = Some(reply.status);
        inner.changed.notify_waiters();
    }
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}
