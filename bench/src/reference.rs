//! Reference implementations: the least work *any* bridge must do for W1 and W2,
//! written with nothing but hyper. They are not budgets; they show how far the floor
//! of BENCH.md is from what a bridge that really answers can reach on this machine,
//! so a ratio the bridge misses can be told apart from a ratio nobody could meet.
//!
//! - `reference-slack ADDR SECRET SLACK_API_ADDR`: the W1 floor's work (body, timestamp
//!   window, constant-time HMAC, 200), plus what a reply needs at the least: parse the
//!   event for its channel, `ts` and text, and post the text back in the thread with
//!   one pooled keep-alive `POST /api/chat.postMessage` in the background, reading the
//!   answer's `ok`. No store, no dedupe, no conversation, no transcript.
//! - `reference-proxy ADDR AGENT_ADDR`: W2's least work: read the request body, send it
//!   to the agent's `/query` over a pooled keep-alive connection, return the answer's
//!   body. No auth, no JSON, no events.
//!
//! Each runs as its own process on tokio's default multi-thread runtime, like the
//! bridge, so its CPU time and RSS are read from /proc the same way.

use std::net::SocketAddr;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::fakes::serve;
use crate::slackev::verify;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Event<'a>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    ts: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct Post<'a> {
    channel: &'a str,
    thread_ts: &'a str,
    text: &'a str,
}

#[derive(Deserialize)]
struct PostAnswer {
    ok: bool,
}

pub fn slack(bind: SocketAddr, secret: String, api: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(bind).await?;
        let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
        let client = client();
        let url: hyper::Uri = format!("http://{api}/api/chat.postMessage").parse()?;
        serve(listener, move |req: Request<hyper::body::Incoming>| {
            let key = key.clone();
            let client = client.clone();
            let url = url.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let ts = parts.headers.get("x-slack-request-timestamp").map(|v| v.as_bytes());
                let sig = parts.headers.get("x-slack-signature").map(|v| v.as_bytes());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs() as i64;
                let fresh = ts
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse::<i64>().ok())
                    .is_some_and(|t| (now - t).abs() <= 300);
                let ok = fresh
                    && match (ts, sig) {
                        (Some(ts), Some(sig)) => verify(&key, ts, &body, sig),
                        _ => false,
                    };
                if !ok {
                    return empty(StatusCode::UNAUTHORIZED);
                }
                let post = match serde_json::from_slice::<Envelope>(&body) {
                    Ok(env) => serde_json::to_vec(&Post {
                        channel: &env.event.channel,
                        thread_ts: &env.event.ts,
                        text: &env.event.text,
                    }),
                    Err(_) => return empty(StatusCode::BAD_REQUEST),
                };
                let Ok(post) = post else { return empty(StatusCode::INTERNAL_SERVER_ERROR) };
                tokio::spawn(async move {
                    let req = Request::post(url)
                        .header(hyper::header::CONTENT_TYPE, "application/json; charset=utf-8")
                        .header(hyper::header::AUTHORIZATION, "Bearer xoxb-bench")
                        .body(Full::new(Bytes::from(post)));
                    let Ok(req) = req else { return };
                    if let Ok(resp) = client.request(req).await {
                        if let Ok(body) = resp.into_body().collect().await {
                            let answer = serde_json::from_slice::<PostAnswer>(&body.to_bytes());
                            if !answer.is_ok_and(|a| a.ok) {
                                eprintln!("reference-slack: chat.postMessage not ok");
                            }
                        }
                    }
                });
                empty(StatusCode::OK)
            }
        })
        .await;
        Ok(())
    })
}

pub fn proxy(bind: SocketAddr, agent: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(bind).await?;
        let client = client();
        let url: hyper::Uri = format!("http://{agent}/query").parse()?;
        serve(listener, move |req: Request<hyper::body::Incoming>| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let out = Request::post(url)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body));
                let Ok(out) = out else { return empty(StatusCode::INTERNAL_SERVER_ERROR) };
                let answer = match client.request(out).await {
                    Ok(resp) => resp.into_body().collect().await.map(|b| b.to_bytes()),
                    Err(_) => return empty(StatusCode::BAD_GATEWAY),
                };
                match answer {
                    Ok(bytes) => {
                        let mut resp = Response::new(Full::new(bytes));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        resp
                    }
                    Err(_) => empty(StatusCode::BAD_GATEWAY),
                }
            }
        })
        .await;
        Ok(())
    })
}
