//! The HTTP server as a client sees it: health, admin auth, sessions, history and the
//! agent proxy, including bad input.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::cut::CutRelay;
use crate::support::db::PgSchema;
use crate::support::{stored_events, RecordingSink, TestApp};

async fn json_of(resp: reqwest::Response) -> Value {
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "every answer is JSON"
    );
    resp.json().await.unwrap()
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["parts"]["store"], "up");
    app.shutdown().await;
}

/// The status and body of `/readyz`, once it answers as `want` says (within 30 s:
/// the store's pool gives up on a connection after its 10 s acquire timeout).
async fn readyz_until(app: &TestApp, want: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
        if resp.status() == want {
            return json_of(resp).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SPEC §6: `/readyz` is 200 only while the store answers. The store is PostgreSQL
/// reached through a relay the test cuts: the probe turns 503 with the store down,
/// and ready again once the store is back (the pool reconnects on its own).
#[tokio::test]
async fn readiness_follows_the_store() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let mut url = url::Url::parse(&pg.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let upstream = tokio::net::lookup_host(&upstream)
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = CutRelay::start(upstream).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(relay.addr.port())).unwrap();
    let app = TestApp::builder()
        .database(url.as_str())
        .no_subscriber()
        .start()
        .await;

    let body = readyz_until(&app, StatusCode::OK).await;
    assert_eq!(body["parts"]["store"], "up");

    relay.cut();
    let body = readyz_until(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["parts"]["store"], "down");
    assert_ne!(body["status"], "ready");

    relay.mend();
    let body = readyz_until(&app, StatusCode::OK).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["parts"]["store"], "up");

    app.shutdown().await;
    drop(relay);
    pg.remove().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(json_of(resp).await["error"].is_string());
    let resp = app.client.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(json_of(resp).await["error"].is_string());
    app.shutdown().await;
}

#[tokio::test]
async fn admin_routes_refuse_a_missing_or_wrong_token() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(json_of(resp).await["error"].is_string());
    let resp = app
        .client
        .get(app.url("/sessions"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app
        .client
        .post(app.url("/agent-query"))
        .json(&json!({"query": "q"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        app.agent.requests().is_empty(),
        "nothing reaches the agent unauthenticated"
    );
    let resp = app.admin(Method::GET, "/sessions").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_token_loopback_clients_are_admitted() {
    let app = TestApp::builder().var("BRIDGE_API_TOKEN", "").start().await;
    let resp = app.client.get(app.url("/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "127.0.0.1 is loopback");
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_token_a_request_through_a_proxy_is_refused_with_401() {
    let app = TestApp::builder().var("BRIDGE_API_TOKEN", "").start().await;
    for (name, value) in [
        ("forwarded", "for=203.0.113.7"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
    ] {
        let resp = app
            .client
            .get(app.url("/sessions"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{name}");
        let body = json_of(resp).await;
        assert!(body["error"].is_string(), "{name}: {body}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_token_an_ipv4_mapped_loopback_client_is_admitted() {
    // A dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1.
    if std::net::TcpListener::bind("[::]:0").is_err() {
        return;
    }
    let app = TestApp::builder()
        .var("BRIDGE_API_TOKEN", "")
        .var("HTTP_BIND", "[::]:0")
        .start()
        .await;
    let url = format!("http://127.0.0.1:{}/sessions", app.addr.port());
    let resp = app.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "::ffff:127.0.0.1 is loopback");
    app.shutdown().await;
}

#[tokio::test]
async fn a_query_string_the_bridge_rejects_gets_a_json_400() {
    let app = TestApp::spawn().await;
    for path in [
        "/sessions?limit=x",
        "/sessions?limit=-1",
        "/webhooks/ep_1/deliveries?limit=many",
    ] {
        let resp = app.admin(Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body = json_of(resp).await;
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn history_pages_follow_next_until_it_is_null() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    for text in ["one", "two", "three"] {
        app.turn("C-pages", text, &sink).await;
    }
    let sessions = json_of(app.admin(Method::GET, "/sessions").send().await.unwrap()).await;
    let id = sessions["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut path = format!("/sessions/{id}/history?limit=4");
    let mut contents = Vec::new();
    let mut pages = 0;
    loop {
        let page = json_of(app.admin(Method::GET, &path).send().await.unwrap()).await;
        pages += 1;
        assert_eq!(page["session_id"], id.as_str());
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= 4, "{page}");
        contents.extend(
            messages
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => {
                assert!(next.contains("after="), "{next}");
                path = next.to_owned();
            }
            None => {
                assert!(page["next"].is_null(), "{page}");
                break;
            }
        }
        assert!(pages < 5, "paging does not end");
    }
    assert_eq!(pages, 2);
    assert_eq!(
        contents,
        [
            "one",
            "answer to: one",
            "two",
            "answer to: two",
            "three",
            "answer to: three"
        ]
    );

    // An empty poll after the last id is a 200 with no messages, not a 404.
    let last = json_of(
        app.admin(Method::GET, &format!("/sessions/{id}/history"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(last["next"].is_null());
    let last_id = last["messages"][5]["id"].as_i64().unwrap();
    let resp = app
        .admin(
            Method::GET,
            &format!("/sessions/{id}/history?after={last_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(resp).await["messages"], json!([]));

    for bad in ["limit=0", "limit=1001", "limit=x", "after=y"] {
        let resp = app
            .admin(Method::GET, &format!("/sessions/{id}/history?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert!(json_of(resp).await["error"].is_string(), "{bad}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn history_of_an_id_without_messages_is_a_404_read_from_the_transcript_alone() {
    let app = TestApp::spawn().await;
    app.turn("C-purged", "soon gone", &RecordingSink::new())
        .await;
    let sessions = json_of(app.admin(Method::GET, "/sessions").send().await.unwrap()).await;
    let id = sessions["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/sessions/{id}/history");
    let resp = app.admin(Method::GET, &path).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // Every message purged: the conversation still names the session, but the history
    // answers from the transcript's index only (an unknown id costs no scan of the
    // conversations), so the id reads as unknown.
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    use agent_bridge::core::ports::Transcripts;
    let store = agent_bridge::store::connect(&app.db_url).await.unwrap();
    store.purge_transcripts(later).await.unwrap();
    let resp = app.admin(Method::GET, &path).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let error = json_of(resp).await["error"].as_str().unwrap().to_owned();
    assert!(error.contains("TRANSCRIPT_RETENTION_DAYS"), "{error}");
    app.shutdown().await;
}

#[tokio::test]
async fn sessions_history_and_reset_over_http() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C1", "first", &sink).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    app.turn("C1", "second", &sink).await;

    let sessions = json_of(app.admin(Method::GET, "/sessions").send().await.unwrap()).await;
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["key"], "slack/T1/C1");
    let id = list[0]["session_id"].as_str().unwrap().to_string();
    assert!(list[0]["last_activity"].is_string());

    let history = json_of(
        app.admin(Method::GET, &format!("/sessions/{id}/history"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(history["session_id"], id.as_str());
    let messages = history["messages"].as_array().unwrap();
    let seen: Vec<_> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("user", "first"),
            ("assistant", "answer to: first"),
            ("user", "second"),
            ("assistant", "answer to: second")
        ]
    );
    assert_eq!(messages[0]["platform"], "slack");
    assert_eq!(messages[0]["channel_id"], "C1");
    assert_eq!(messages[0]["user_id"], "U1");

    // `since` is inclusive: from the second question on.
    let since = messages[2]["timestamp"].as_str().unwrap();
    let resp = app
        .admin(Method::GET, &format!("/sessions/{id}/history"))
        .query(&[("since", since)])
        .send()
        .await
        .unwrap();
    let later = json_of(resp).await;
    let contents: Vec<_> = later["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!("second"), json!("answer to: second")]);

    let resp = app
        .admin(
            Method::GET,
            &format!("/sessions/{id}/history?since=yesterday"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(json_of(resp).await["error"]
        .as_str()
        .unwrap()
        .contains("since"));
    let resp = app
        .admin(Method::GET, "/sessions/no-such-session/history")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let resp = app
        .admin(Method::DELETE, &format!("/sessions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    app.turn("C1", "third", &sink).await;
    assert_eq!(
        app.agent.requests_to("/conversation")[2].session_id,
        None,
        "the reset took effect"
    );
    let resets = stored_events(&app.db_url, "session.reset").await;
    assert_eq!(resets[0]["data"]["reason"], "api");
    let resp = app
        .admin(Method::DELETE, &format!("/sessions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn agent_query_answers_synchronously_and_emits_a_query_event() {
    let app = TestApp::spawn().await;
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&json!({"query": "what?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(body["response"], "answer to: what?");
    assert!(body["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(
        app.agent.requests_to("/query").len(),
        1,
        "no session: stateless /query"
    );

    let session = uuid::Uuid::new_v4().to_string();
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&json!({"query": "more", "session_id": session, "personality_id": "pirate", "max_results": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let call = &app.agent.requests_to("/conversation")[0];
    assert_eq!(call.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(call.personality_id(), Some("pirate"));
    assert_eq!(call.max_results(), Some(9));

    let events = stored_events(&app.db_url, "query").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"]["request_id"], body["request_id"]);
    assert_eq!(events[0]["data"]["response"], "answer to: what?");
    app.shutdown().await;
}

#[tokio::test]
async fn agent_query_async_answers_202_and_delivers_the_answer_as_an_event() {
    let app = TestApp::spawn().await;
    app.agent.set_delay(Duration::from_millis(200));
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&json!({"query": "later", "async": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body = json_of(resp).await;
    assert_eq!(body["status"], "processing");
    let request_id = body["request_id"].as_str().unwrap().to_string();
    assert!(
        stored_events(&app.db_url, "query").await.is_empty(),
        "answered before the agent"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let events = loop {
        let events = stored_events(&app.db_url, "query").await;
        if !events.is_empty() || tokio::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(events[0]["data"]["request_id"], request_id.as_str());
    assert_eq!(events[0]["data"]["response"], "answer to: later");
    app.shutdown().await;
}

#[tokio::test]
async fn agent_query_failures_are_502_with_the_agents_detail() {
    let app = TestApp::spawn().await;
    app.agent
        .push_response(500, r#"{"detail":"Personality not found: x"}"#);
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&json!({"query": "q"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let error = json_of(resp).await["error"].as_str().unwrap().to_string();
    assert!(error.contains("Personality not found: x"), "{error}");
    assert_eq!(stored_events(&app.db_url, "reply.failed").await.len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_get_400_413_and_422_as_json() {
    let app = TestApp::spawn().await;
    let send = |body: String| {
        app.admin(Method::POST, "/agent-query")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = send("{not json".into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(json_of(resp).await["error"]
        .as_str()
        .unwrap()
        .contains("malformed"));
    let resp = send(r#"{"no_query": 1}"#.into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = send(r#"{"query": "   "}"#.into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let big = format!(r#"{{"query": "{}"}}"#, "x".repeat(70 * 1024));
    let resp = send(big).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json_of(resp).await["error"].is_string());
    assert!(
        app.agent.requests().is_empty(),
        "no bad body reaches the agent"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn metrics_count_turns_and_agent_latency_in_prometheus_text() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C1", "hi", &sink).await;
    app.agent.push_response(500, r#"{"detail":"x"}"#);
    app.turn("C1", "fail", &sink).await;
    app.turn("C1", "help", &sink).await;

    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.unwrap();
    for line in [
        "bridge_turns_total{outcome=\"answered\"} 1",
        "bridge_turns_total{outcome=\"failed\"} 1",
        "bridge_turns_total{outcome=\"command\"} 1",
        "bridge_agent_latency_seconds_count 2",
        "bridge_queue_depth 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn readiness_stays_200_while_only_the_agent_is_unreachable_and_reports_it() {
    let dead = crate::support::agent::dead_url().await;
    let app = TestApp::builder().var("AGENT_URL", &dead).start().await;
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "an agent outage alone is not unready");
    let body = json_of(resp).await;
    assert_eq!(body["parts"]["agent"], "down");
    assert_eq!(body["parts"]["store"], "up");
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.shutdown().await;
}

/// Reads an SSE answer the way a client does: `(event, data)` pairs until the stream ends.
pub(crate) async fn sse_events(resp: reqwest::Response) -> Vec<(String, Value)> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let mut stream = resp.bytes_stream().eventsource();
    let mut out = vec![];
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
    {
        let ev = ev.expect("well-formed SSE");
        out.push((ev.event, serde_json::from_str(&ev.data).expect("JSON data")));
    }
    out
}

#[tokio::test]
async fn agent_query_streams_deltas_then_done_as_server_sent_events() {
    let app = TestApp::spawn().await;
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&json!({"query": "what?", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(resp).await;
    let (last, done) = events.last().expect("some events");
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["response"], "answer to: what?");
    assert!(done["request_id"].as_str().unwrap().starts_with("req_"));
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "answer to: what?");
    assert_eq!(stored_events(&app.db_url, "query").await.len(), 1);

    // `Accept: text/event-stream` asks for the same; a failing agent ends with `error`.
    app.agent
        .push_response(500, r#"{"detail":"Personality not found: x"}"#);
    let resp = app
        .admin(Method::POST, "/agent-query")
        .header("accept", "text/event-stream")
        .json(&json!({"query": "q"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    let (last, error) = events.last().expect("some events");
    assert_eq!(last, "error", "{events:?}");
    assert!(error["error"]
        .as_str()
        .unwrap()
        .contains("Personality not found: x"));
    app.shutdown().await;
}

#[tokio::test]
async fn agent_query_ignores_unknown_fields_and_carries_metadata_into_the_query_event() {
    let app = TestApp::spawn().await;
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&json!({
            "query": "q", "user": "u1", "channel": "c1", "context": {"a": 1},
            "metadata": {"ticket": 42, "source": "crm"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = stored_events(&app.db_url, "query").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["data"]["metadata"],
        json!({"ticket": 42, "source": "crm"})
    );

    for bad in [
        json!({"query": "q", "metadata": "not an object"}),
        json!({"query": "q", "metadata": {"big": "x".repeat(5000)}}),
    ] {
        let resp = app
            .admin(Method::POST, "/agent-query")
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(json_of(resp).await["error"]
            .as_str()
            .unwrap()
            .contains("metadata"));
    }
    assert_eq!(stored_events(&app.db_url, "query").await.len(), 1);
    app.shutdown().await;
}
