//! A fake AI Agent API (SPEC §1): a real axum server on 127.0.0.1:0 that behaves like
//! the reference agent where the bridge can tell, records every request, and lets a
//! test change how it answers at any time.
//!
//! One fallback handler serves every path, so unknown routes and wrong methods are
//! recorded too (a bridge calling the wrong URL shows up in `requests()`).
//!
//! Order of decisions for each request: record it → wait while `hang` is on → sleep
//! the delay → answer from the scripted queue if it is not empty → the routes.
//!
//! ```ignore
//! let agent = FakeAgent::start().await;
//! agent.set_delay(Duration::from_millis(50));
//! agent.push_response(500, r#"{"detail":"boom"}"#);
//! let seen = agent.wait_for_requests(2, Duration::from_secs(5)).await;
//! assert_eq!(agent.max_in_flight(), 1);
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The `session_id` query parameter, if any.
    pub session_id: Option<String>,
    /// The raw query string, if any.
    pub raw_query: Option<String>,
    /// The body parsed as JSON; `None` when empty or not JSON.
    pub body: Option<Value>,
    pub raw_body: String,
    /// Header names are lower-case; values that are not UTF-8 are replaced lossily.
    pub headers: Vec<(String, String)>,
    pub arrived: Instant,
}

impl Recorded {
    /// `body.query`.
    pub fn query(&self) -> Option<&str> {
        self.field("query")?.as_str()
    }

    /// `body.personality_id` when it is a string.
    pub fn personality_id(&self) -> Option<&str> {
        self.field("personality_id")?.as_str()
    }

    /// `body.max_results` when it is a number.
    pub fn max_results(&self) -> Option<u64> {
        self.field("max_results")?.as_u64()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A field of the JSON body (`Some(Value::Null)` for an explicit `null`).
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.body.as_ref()?.get(name)
    }
}

type AnswerFn = Arc<dyn Fn(&Recorded) -> String + Send + Sync>;

struct Knobs {
    delay: Duration,
    script: VecDeque<(u16, String)>,
    answer: AnswerFn,
    personalities: Value,
}

struct Inner {
    knobs: Mutex<Knobs>,
    requests: Mutex<Vec<Recorded>>,
    arrived: Notify,
    hang: watch::Sender<bool>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Aborts the server task when the last [`FakeAgent`] clone goes away.
struct ServerTask(tokio::task::JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handle to a running fake agent; clones share the same server and state.
#[derive(Clone)]
pub struct FakeAgent {
    addr: SocketAddr,
    inner: Arc<Inner>,
    _task: Arc<ServerTask>,
}

/// The default answer: `answer to: <query>`.
fn default_answer(r: &Recorded) -> String {
    format!("answer to: {}", r.query().unwrap_or_default())
}

fn default_personalities() -> Value {
    // Ids as the real agent serves them in practice: some strings, some numbers.
    json!([
        {"id": "default", "name": "Default Assistant", "type": "default", "role": "assistant"},
        {"id": "pirate", "name": "Pirate", "type": "custom", "role": "talks like a pirate"},
        {"id": 3, "name": "Numbered", "type": "custom", "role": "has a numeric id"}
    ])
}

impl FakeAgent {
    /// Binds 127.0.0.1:0 and serves until the last handle is dropped.
    pub async fn start() -> FakeAgent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake agent");
        let addr = listener.local_addr().expect("fake agent address");
        let (hang, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            knobs: Mutex::new(Knobs {
                delay: Duration::ZERO,
                script: VecDeque::new(),
                answer: Arc::new(default_answer),
                personalities: default_personalities(),
            }),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            hang,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAgent {
            addr,
            inner,
            _task: Arc::new(ServerTask(task)),
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Requests to one path (e.g. `/conversation`), in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until at least `n` requests arrived and returns them all; panics after
    /// `timeout` with what did arrive.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(None, n, timeout).await
    }

    /// Waits until at least `n` requests to `path` arrived (other paths, such as the
    /// readiness probe's `/health`, do not count) and returns those.
    pub async fn wait_for_requests_to(
        &self,
        path: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<Recorded> {
        self.wait_until(Some(path), n, timeout).await
    }

    async fn wait_until(&self, path: Option<&str>, n: usize, timeout: Duration) -> Vec<Recorded> {
        let matching = || match path {
            Some(p) => self.requests_to(p),
            None => self.requests(),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so an arrival in between is not missed.
            let notified = self.inner.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = matching();
            if seen.len() >= n {
                return seen;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let seen = matching();
                if seen.len() >= n {
                    return seen;
                }
                let paths: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect();
                panic!(
                    "fake agent: expected {n} request(s) to {} within {timeout:?}, got {}: {paths:?}",
                    path.unwrap_or("any path"),
                    seen.len()
                );
            }
        }
    }

    /// Forgets the recorded requests (the in-flight maximum too).
    pub fn clear_requests(&self) {
        self.inner.requests.lock().unwrap().clear();
        self.inner.max_in_flight.store(
            self.inner.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// Every later request waits this long before being answered.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.knobs.lock().unwrap().delay = delay;
    }

    /// `true`: requests are recorded but not answered until `hang(false)`, which
    /// releases the waiting ones too.
    pub fn hang(&self, on: bool) {
        self.inner.hang.send_replace(on);
    }

    /// Queues a raw answer (status + body), used before any route; queued answers are
    /// consumed one per request, in order. A body that parses as JSON is sent as
    /// `application/json`, anything else as `text/plain`.
    pub fn push_response(&self, status: u16, body: impl Into<String>) {
        self.inner
            .knobs
            .lock()
            .unwrap()
            .script
            .push_back((status, body.into()));
    }

    /// The answer text of `/conversation` and `/query`, computed from the request.
    pub fn set_answer(&self, f: impl Fn(&Recorded) -> String + Send + Sync + 'static) {
        self.inner.knobs.lock().unwrap().answer = Arc::new(f);
    }

    /// A fixed answer text (e.g. a long one) for `/conversation` and `/query`.
    pub fn set_answer_text(&self, text: impl Into<String>) {
        let text = text.into();
        self.set_answer(move |_| text.clone());
    }

    /// Replaces what `GET /personalities` serves (and which `personality_id`s are known).
    pub fn set_personalities(&self, list: Value) {
        self.inner.knobs.lock().unwrap().personalities = list;
    }

    /// The most requests that were being handled at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }
}

/// A URL where nothing listens, so connecting is refused.
pub async fn dead_url() -> String {
    // Port 1 (tcpmux) is below the ephemeral range, so no test's listener can ever
    // take it, unlike a port bound and released here, which a parallel test's fake
    // may pick up a moment later.
    "http://127.0.0.1:1".to_string()
}

/// Counts a request as in flight for as long as it lives, also when the client gives
/// up and the server drops the handler midway.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn enter(inner: &Arc<Inner>) -> Self {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn detail(status: u16, text: impl Into<String>) -> Response {
    json_response(status, json!({ "detail": text.into() }))
}

fn raw_response(status: u16, body: String) -> Response {
    let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type);
    if (300..400).contains(&status) {
        // Somewhere that answers, so a client that follows redirects would succeed.
        builder = builder.header(header::LOCATION, "/health");
    }
    builder.body(Body::from(body)).unwrap()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let session_id = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "session_id")
            .map(|(_, v)| v.into_owned())
    });
    let rec = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        session_id,
        raw_query: uri.query().map(str::to_owned),
        body: serde_json::from_slice(&body).ok(),
        raw_body,
        headers: headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect(),
        arrived: Instant::now(),
    };
    inner.requests.lock().unwrap().push(rec.clone());
    inner.arrived.notify_waiters();
    let _in_flight = InFlight::enter(&inner);

    let mut hang = inner.hang.subscribe();
    // Err only if the sender is gone, i.e. the server is shutting down.
    let _ = hang.wait_for(|on| !*on).await;

    let delay = inner.knobs.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let scripted = inner.knobs.lock().unwrap().script.pop_front();
    if let Some((status, body)) = scripted {
        return raw_response(status, body);
    }
    route(&inner, &method, &rec)
}

fn route(inner: &Inner, method: &Method, rec: &Recorded) -> Response {
    let path = rec.path.as_str();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let known = matches!(
        segments.as_slice(),
        ["conversation"]
            | ["query"]
            | ["personalities"]
            | ["personalities", _, "prompt"]
            | ["health"]
    );
    if !known {
        return detail(404, "Not Found");
    }
    let wanted = if matches!(segments.as_slice(), ["conversation"] | ["query"]) {
        Method::POST
    } else {
        Method::GET
    };
    if *method != wanted {
        return detail(405, "Method Not Allowed");
    }
    match segments.as_slice() {
        ["conversation"] => ask(inner, rec, true),
        ["query"] => ask(inner, rec, false),
        ["personalities"] => json_response(200, inner.knobs.lock().unwrap().personalities.clone()),
        ["personalities", id, "prompt"] => match find_personality(inner, id) {
            Some(p) => {
                let name = p.get("name").and_then(Value::as_str).unwrap_or(id);
                raw_response(200, format!("You are {name}, a helpful assistant."))
            }
            None => detail(404, format!("Personality not found: {id}")),
        },
        _ => json_response(200, json!({"status": "healthy", "service": "fake-agent"})),
    }
}

fn find_personality(inner: &Inner, id: &str) -> Option<Value> {
    let knobs = inner.knobs.lock().unwrap();
    knobs.personalities.as_array()?.iter().find_map(|p| {
        let pid = match p.get("id")? {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (pid == id).then(|| p.clone())
    })
}

/// `/conversation` (`stateful`) and `/query`, with the reference agent's validation.
fn ask(inner: &Inner, rec: &Recorded, stateful: bool) -> Response {
    let Some(Value::Object(body)) = &rec.body else {
        return json_response(
            422,
            json!({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]}),
        );
    };
    if !matches!(body.get("query"), Some(Value::String(_))) {
        return json_response(
            422,
            json!({"detail": [{"type": "missing", "loc": ["body", "query"], "msg": "Field required"}]}),
        );
    }
    let session_id = if stateful {
        match &rec.session_id {
            None => Some(uuid::Uuid::new_v4().to_string()),
            Some(id) if uuid::Uuid::parse_str(id).is_ok() => Some(id.clone()),
            // The real agent wraps its own 400 in a 500.
            Some(_) => return detail(500, "Error in conversation: 400: Invalid session ID format"),
        }
    } else {
        None
    };
    if let Some(p) = rec.personality_id() {
        if find_personality(inner, p).is_none() {
            return detail(500, format!("Personality not found: {p}"));
        }
    }
    let answer = inner.knobs.lock().unwrap().answer.clone();
    let response = answer(rec);
    if stateful {
        json_response(
            200,
            json!({
                "response": response,
                "session_id": session_id,
                "sources": [{"content": "fake source", "metadata": {"source": "fake-agent"}}],
            }),
        )
    } else {
        json_response(
            200,
            json!({"response": response, "session_id": null, "sources": null}),
        )
    }
}
