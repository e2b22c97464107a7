//! A fake OpenAI-compatible server: `POST /v1/chat/completions` streaming server-sent
//! events (`data: {"choices":[{"delta":{"content":…}}]}` … `data: [DONE]`), and
//! `GET /v1/models`. Knobs: the pieces and the pause between them, a break after N
//! pieces, an end without `[DONE]`, a status (with `Retry-After`) for the next calls,
//! a plain-JSON answer, a hang. Every request's JSON body is recorded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone, Default)]
pub struct Script {
    /// The answer's pieces, in order.
    pub pieces: Vec<String>,
    /// Pause before each piece.
    pub pause: Duration,
    /// Break the connection after this many pieces.
    pub break_after: Option<usize>,
    /// End the stream without `data: [DONE]`.
    pub no_done: bool,
    /// Answer plain JSON (a server that ignores `stream`).
    pub plain_json: bool,
}

#[derive(Default)]
struct Inner {
    script: Mutex<Script>,
    /// Statuses (with an optional `Retry-After`) for the next calls, in order.
    statuses: Mutex<VecDeque<(u16, Option<u64>)>>,
    requests: Mutex<Vec<Value>>,
    authorization: Mutex<Vec<Option<String>>>,
}

#[derive(Clone)]
pub struct FakeOpenAi {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FakeOpenAi {
    pub async fn start() -> FakeOpenAi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/models", get(|| async { Json(json!({"data": []})) }))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenAi { addr, inner }
    }

    /// `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn script(&self, script: Script) {
        *self.inner.script.lock().unwrap() = script;
    }

    /// The answer `text` in pieces of `size` characters, `pause` apart.
    pub fn answer_in_pieces(&self, text: &str, size: usize, pause: Duration) {
        let chars: Vec<char> = text.chars().collect();
        let pieces = chars
            .chunks(size.max(1))
            .map(|c| c.iter().collect())
            .collect();
        self.script(Script {
            pieces,
            pause,
            ..Script::default()
        });
    }

    pub fn status_next(&self, status: u16, retry_after: Option<u64>) {
        self.inner
            .statuses
            .lock()
            .unwrap()
            .push_back((status, retry_after));
    }

    /// Every recorded request body, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.inner.authorization.lock().unwrap().clone()
    }
}

async fn completions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.requests.lock().unwrap().push(value);
    inner.authorization.lock().unwrap().push(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    if let Some((status, retry_after)) = inner.statuses.lock().unwrap().pop_front() {
        let status = StatusCode::from_u16(status).unwrap();
        let mut response = (
            status,
            Json(json!({"error": {"message": "scripted failure", "type": "test"}})),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
        }
        return response;
    }
    let script = inner.script.lock().unwrap().clone();
    if script.plain_json {
        let text: String = script.pieces.concat();
        return Json(json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }))
        .into_response();
    }
    let stream = async_stream(script);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn async_stream(
    script: Script,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let event = |v: Value| Bytes::from(format!("data: {v}\n\n"));
    let mut items: Vec<(Duration, Result<Bytes, std::io::Error>)> = vec![(
        Duration::ZERO,
        Ok(event(
            json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        )),
    )];
    for (i, piece) in script.pieces.iter().enumerate() {
        if script.break_after == Some(i) {
            items.push((
                script.pause,
                Err(std::io::Error::other("connection broken by the test")),
            ));
            break;
        }
        items.push((
            script.pause,
            Ok(event(
                json!({"choices": [{"index": 0, "delta": {"content": piece}}]}),
            )),
        ));
    }
    let broke = script.break_after.is_some_and(|n| n < script.pieces.len());
    if !broke && !script.no_done {
        items.push((
            Duration::ZERO,
            Ok(event(
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            )),
        ));
        items.push((Duration::ZERO, Ok(Bytes::from("data: [DONE]\n\n"))));
    }
    futures_util::stream::iter(items).then(|(pause, item)| async move {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        item
    })
}

use futures_util::StreamExt as _;
