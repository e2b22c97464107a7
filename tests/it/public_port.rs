//! The limits of the public port (SPEC §6), seen from a raw TCP client: slow or
//! oversized requests are cut off by the server, not left to hang.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestApp, TOKEN};

/// Reads until the peer closes the connection (or `within` passes: then `None`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until a whole response head has arrived (or `within` passes: then `None`).
async fn read_head(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    while !String::from_utf8_lossy(&out).contains("\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn status_of(head: &str) -> Option<u16> {
    head.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_disconnected_after_the_header_timeout() {
    let app = TestApp::builder()
        .header_timeout(Duration::from_millis(500))
        .start()
        .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the connection was still open 5 s after the headers stalled"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before the header timeout: {:?}",
        started.elapsed()
    );
    // The server itself keeps serving.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_within_the_request_timeout_gets_408_json() {
    let app = TestApp::builder()
        .var("HTTP_REQUEST_TIMEOUT_SECS", "1")
        .start()
        .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /agent-query HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"query\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let response = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers and closes within 5 s");
    assert_eq!(status_of(&response), Some(408), "{response}");
    assert!(response.contains("{\"error\":"), "{response}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered before the request timeout: {:?}",
        started.elapsed()
    );
    assert!(
        app.agent.requests_to("/query").is_empty(),
        "the agent was called"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_that_arrives_in_pieces_within_the_request_timeout_is_served() {
    let app = TestApp::builder()
        .var("HTTP_REQUEST_TIMEOUT_SECS", "1")
        .start()
        .await;
    let body = br#"{"query":"in pieces"}"#;
    let (first, rest) = body.split_at(8);
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /agent-query HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    // The handler's read waits here (the deadline's timer runs), then the rest comes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream.write_all(rest).await.unwrap();
    let response = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers and closes within 5 s");
    assert_eq!(status_of(&response), Some(200), "{response}");
    assert_eq!(app.agent.requests_to("/query").len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_answer_is_not_cut_by_the_request_timeout() {
    let app = TestApp::builder()
        .var("HTTP_REQUEST_TIMEOUT_SECS", "1")
        .start()
        .await;
    app.agent.set_delay(Duration::from_millis(1500));
    let res = app
        .admin(reqwest::Method::POST, "/agent-query")
        .json(&serde_json::json!({"query": "slow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.shutdown().await;
}

async fn slack_app() -> TestApp {
    let slack = crate::support::slack::FakeSlack::start().await;
    TestApp::builder()
        .var("SLACK_BOT_TOKEN", "xoxb-test")
        .var("SLACK_SIGNING_SECRET", "test-signing-secret-0123456789")
        .var("SLACK_API_BASE", &slack.api_base())
        .start()
        .await
}

#[tokio::test]
async fn slack_events_refuse_an_oversized_content_length_before_reading_the_body() {
    let app = slack_app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Announces 2 MiB and sends none of it: the answer must not wait for the body.
    let head = format!(
        "POST /slack/events HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n\
         X-Slack-Request-Timestamp: {}\r\nX-Slack-Signature: v0=00\r\n\
         Content-Length: {}\r\n\r\n",
        crate::support::slack::now_unix(),
        2 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_head(&mut stream, Duration::from_secs(2))
        .await
        .expect("answered without the body");
    assert_eq!(status_of(&response), Some(413), "{response}");
    app.shutdown().await;
}

#[tokio::test]
async fn slack_events_without_signature_headers_get_401_before_reading_the_body() {
    let app = slack_app().await;
    for extra in [
        "",
        "X-Slack-Signature: v0=00\r\n",
        "X-Slack-Request-Timestamp: 1\r\n",
    ] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /slack/events HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n\
             {extra}Content-Length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let response = read_head(&mut stream, Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("{extra:?}: answered without the body"));
        assert_eq!(status_of(&response), Some(401), "{extra:?}: {response}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn connections_past_http_max_connections_wait_until_one_closes() {
    let app = TestApp::builder()
        .var("HTTP_MAX_CONNECTIONS", "1")
        .start()
        .await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n";
    // The first connection is served and kept alive.
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let head = read_head(&mut first, Duration::from_secs(2)).await.unwrap();
    assert_eq!(status_of(&head), Some(200));

    // The second one is not served while the first is open…
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    second.write_all(request).await.unwrap();
    assert!(
        read_head(&mut second, Duration::from_millis(500))
            .await
            .is_none(),
        "a second connection was served beside the first"
    );
    // …and is as soon as the first closes.
    drop(first);
    let head = read_head(&mut second, Duration::from_secs(2))
        .await
        .expect("served once the first connection closed");
    assert_eq!(status_of(&head), Some(200));
    drop(second);
    app.shutdown().await;
}
