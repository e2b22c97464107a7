//! Webhooks end to end (SPEC §6, §7): registration and its validation, signed
//! deliveries of the events chat turns and `/agent-query` emit, retries on the
//! schedule, `Retry-After`, 410, secret rotation, ordered endpoints, isolation from a
//! hanging endpoint, at-least-once across a `kill -9`, and the claim on PostgreSQL.
//! Every receiver is a real server on 127.0.0.1:0 (`support::receiver`).

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_bridge::core::events::{EventKind, OutboxEvent};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::process::Command;

use crate::support::agent::FakeAgent;
use crate::support::process::free_port;
use crate::support::receiver::{Receiver, Reply};
use crate::support::{db, RecordingSink, TestApp, TOKEN};

const WAIT: Duration = Duration::from_secs(10);

/// A test app whose webhooks may target 127.0.0.1 (where the receivers live).
async fn app_with(vars: &[(&str, &str)]) -> TestApp {
    let mut b = TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true");
    for (k, v) in vars {
        b = b.var(k, v);
    }
    b.start().await
}

/// Registers an endpoint and returns the 201 body (`id`, `secret`, …).
async fn register(app: &TestApp, body: Value) -> Value {
    let resp = app
        .admin(Method::POST, "/webhooks")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );
    resp.json().await.unwrap()
}

async fn get_json(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let resp = app.admin(Method::GET, path).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls the endpoint's delivery log until `done` holds for it.
async fn wait_deliveries(app: &TestApp, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get_json(app, &format!("/webhooks/{id}/deliveries")).await;
        assert_eq!(status, 200, "{body}");
        let list = body["deliveries"].as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "delivery log never matched: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn agent_query(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

fn gap(a: &crate::support::receiver::Received, b: &crate::support::receiver::Received) -> Duration {
    b.arrived.duration_since(a.arrived)
}

#[tokio::test]
async fn a_registered_endpoint_receives_a_signed_conversation_event_for_a_chat_turn() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    let created = register(
        &app,
        json!({"url": rx.url(), "events": ["conversation"], "token": "tok-123",
               "description": "crm sync"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(id.starts_with("ep_"), "{created}");
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["url"], rx.url());
    assert_eq!(created["events"], json!(["conversation"]));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["ordered"], false);
    assert_eq!(created["description"], "crm sync");
    assert!(created["created_at"].is_string());

    let sink = RecordingSink::new();
    let ended = Instant::now();
    app.turn("C-hello", "hello webhooks", &sink).await;

    let got = rx.wait_for(1, WAIT).await;
    let req = &got[0];
    assert!(
        req.arrived.duration_since(ended) < Duration::from_secs(1),
        "delivered well under a second after the turn"
    );
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hook");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("x-webhook-token"), Some("tok-123"));
    assert!(req
        .header("user-agent")
        .unwrap()
        .starts_with("agent-bridge/"));
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - req.timestamp()).abs() < 60,
        "webhook-timestamp is now in seconds"
    );
    assert!(
        req.verify(secret),
        "signature valid for the endpoint's secret"
    );
    assert!(!req.verify(&agent_bridge::webhook::sign::generate_secret()));

    let body = req.json();
    assert_eq!(body["id"], req.webhook_id());
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(body["type"], "conversation");
    assert_eq!(body["event"], "conversation");
    let ts = body["timestamp"].as_str().unwrap();
    OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(body["data"]["query"], "hello webhooks");
    assert_eq!(body["data"]["channel"], "C-hello");
    assert!(body["data"]["response"].is_string());

    let log = wait_deliveries(&app, id, |l| l.len() == 1 && l[0]["status"] == "delivered").await;
    assert_eq!(log[0]["event_id"], req.webhook_id());
    assert_eq!(log[0]["event_type"], "conversation");
    assert_eq!(log[0]["attempts"], 1);
    assert_eq!(log[0]["response_code"], 200);
    assert!(log[0]["latency_ms"].is_u64());
    assert_eq!(log[0]["next_attempt_at"], Value::Null);

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bridge_webhook_outbox_backlog 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bridge_webhook_deliveries_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_registered_right_after_turns_nobody_heard_gets_the_next_turn() {
    let app = app_with(&[]).await;
    let sink = RecordingSink::new();
    // No endpoint yet: these events are not stored (and the store remembers that
    // nobody listens).
    app.turn("C-early", "nobody hears this", &sink).await;
    app.turn("C-early", "nor this", &sink).await;

    let rx = Receiver::start().await;
    register(&app, json!({"url": rx.url(), "events": ["*"]})).await;
    app.turn("C-early", "but this one", &sink).await;

    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["data"]["query"], "but this one");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rx.requests().len(),
        1,
        "the earlier turns were never stored"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn unsubscribed_events_are_not_sent_until_the_subscription_changes() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    let created = register(&app, json!({"url": rx.url(), "events": ["query"]})).await;
    let id = created["id"].as_str().unwrap().to_string();
    let sink = RecordingSink::new();

    // A conversation event (not subscribed), then a query event (subscribed).
    app.turn("C-sub", "not for this endpoint", &sink).await;
    let (status, _) = agent_query(&app, json!({"query": "for this endpoint"})).await;
    assert_eq!(status, 200);
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["type"], "query");
    rx.expect_no_more_than(1, Duration::from_millis(300)).await;
    let log = wait_deliveries(&app, &id, |l| !l.is_empty()).await;
    assert_eq!(
        log.len(),
        1,
        "only the subscribed event has a delivery: {log:#?}"
    );

    let resp = app
        .admin(Method::POST, &format!("/webhooks/{id}/events"))
        .json(&json!({"events": ["conversation"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["events"], json!(["conversation"]));
    assert_eq!(updated["id"], id);

    let (status, _) = agent_query(&app, json!({"query": "no longer subscribed"})).await;
    assert_eq!(status, 200);
    app.turn("C-sub", "now subscribed", &sink).await;
    let got = rx.wait_for(2, WAIT).await;
    assert_eq!(got[1].json()["type"], "conversation");
    assert_eq!(got[1].data_str("query").as_deref(), Some("now subscribed"));
    rx.expect_no_more_than(2, Duration::from_millis(300)).await;

    // Bad subscriptions are refused and change nothing.
    for events in [json!([]), json!(["nope"])] {
        let resp = app
            .admin(Method::POST, &format!("/webhooks/{id}/events"))
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
    }
    let resp = app
        .admin(Method::POST, "/webhooks/ep_unknown/events")
        .json(&json!({"events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_receiver_failing_twice_then_succeeding_gets_three_attempts_with_the_same_id_spaced_by_the_schedule(
) {
    let app = app_with(&[("WEBHOOK_RETRY_SCHEDULE", "300ms,600ms")]).await;
    let rx = Receiver::start().await;
    rx.push(Reply::status(500));
    // A redirect is a failure, never followed.
    rx.push(Reply::redirect("/elsewhere"));
    let created = register(&app, json!({"url": rx.url(), "events": ["*"]})).await;
    let secret = created["secret"].as_str().unwrap();

    app.turn("C-retry", "try hard", &RecordingSink::new()).await;
    let got = rx.wait_for(3, WAIT).await;
    rx.expect_no_more_than(3, Duration::from_millis(300)).await;

    let ids: HashSet<_> = got.iter().map(|r| r.webhook_id().to_string()).collect();
    assert_eq!(ids.len(), 1, "the same webhook-id on every attempt");
    assert!(got.iter().all(|r| r.verify(secret)));
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the same bytes every time"
    );
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [Some(500), Some(307), Some(200)]
    );
    // ±20% jitter, plus the worker's poll and the turn-around on the slow side.
    let (first, second) = (gap(&got[0], &got[1]), gap(&got[1], &got[2]));
    assert!(
        first >= Duration::from_millis(240) && first < Duration::from_millis(700),
        "{first:?}"
    );
    assert!(
        second >= Duration::from_millis(480) && second < Duration::from_millis(1100),
        "{second:?}"
    );

    let id = created["id"].as_str().unwrap();
    let log = wait_deliveries(&app, id, |l| l.len() == 1 && l[0]["status"] == "delivered").await;
    assert_eq!(log[0]["attempts"], 3);
    let codes: Vec<_> = log[0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["response_code"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(307), json!(200)]);
    assert_eq!(log[0]["attempt_log"][0]["response_body"], "answered 500");
    assert_eq!(log[0]["attempt_log"][0]["error"], "HTTP 500");
    assert!(log[0]["attempt_log"][1]["error"]
        .as_str()
        .unwrap()
        .contains("redirect"));
    assert!(
        got.iter().all(|r| r.path == "/hook"),
        "the redirect was not followed"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_always_fails_ends_failed_and_a_manual_retry_redelivers() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    rx.set_status(500);
    let created = register(&app, json!({"url": rx.url(), "events": ["conversation"]})).await;
    let id = created["id"].as_str().unwrap();

    app.turn("C-fail", "doomed", &RecordingSink::new()).await;
    // "10ms,20ms": two delays, three attempts, then failed.
    let got = rx.wait_for(3, WAIT).await;
    let log = wait_deliveries(&app, id, |l| l.len() == 1 && l[0]["status"] == "failed").await;
    assert_eq!(log[0]["attempts"], 3);
    assert_eq!(log[0]["response_code"], 500);
    assert_eq!(log[0]["error"], "HTTP 500");
    assert_eq!(log[0]["next_attempt_at"], Value::Null);
    assert_eq!(log[0]["attempt_log"].as_array().unwrap().len(), 3);
    rx.expect_no_more_than(3, Duration::from_millis(300)).await;

    rx.set_status(200);
    let delivery = log[0]["id"].as_i64().unwrap();
    let resp = app
        .admin(
            Method::POST,
            &format!("/webhooks/{id}/deliveries/{delivery}/retry"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let again = rx.wait_for(4, WAIT).await;
    assert_eq!(again[3].webhook_id(), got[0].webhook_id());
    assert_eq!(again[3].answered, Some(200));
    let log = wait_deliveries(&app, id, |l| l[0]["status"] == "delivered").await;
    assert_eq!(log[0]["attempts"], 4);

    for path in [
        format!("/webhooks/{id}/deliveries/999999/retry"),
        format!("/webhooks/{id}/deliveries/abc/retry"),
        format!("/webhooks/ep_other/deliveries/{delivery}/retry"),
    ] {
        let resp = app.admin(Method::POST, &path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    let (status, _) = get_json(&app, "/webhooks/ep_other/deliveries").await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_410_disables_the_endpoint_until_it_is_enabled_again() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    rx.set_status(410);
    let created = register(&app, json!({"url": rx.url(), "events": ["*"]})).await;
    let id = created["id"].as_str().unwrap();
    let sink = RecordingSink::new();

    app.turn("C-gone", "anyone there?", &sink).await;
    rx.wait_for(1, WAIT).await;
    let log = wait_deliveries(&app, id, |l| l.len() == 1 && l[0]["status"] == "failed").await;
    assert_eq!(log[0]["attempts"], 1, "a 410 is not retried");
    let (_, endpoint) = get_json(&app, &format!("/webhooks/{id}")).await;
    assert_eq!(endpoint["enabled"], false, "{endpoint}");
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{endpoint}"
    );

    // Disabled: later events are not sent.
    app.turn("C-gone", "still there?", &sink).await;
    rx.expect_no_more_than(1, Duration::from_millis(300)).await;

    rx.set_status(200);
    let resp = app
        .admin(Method::POST, &format!("/webhooks/{id}/enable"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let endpoint: Value = resp.json().await.unwrap();
    assert_eq!(endpoint["enabled"], true);
    assert_eq!(endpoint["disabled_reason"], Value::Null);

    app.turn("C-gone", "back again", &sink).await;
    let got = rx.wait_for(2, WAIT).await;
    assert_eq!(got[1].data_str("query").as_deref(), Some("back again"));
    assert_eq!(got[1].answered, Some(200));
    let resp = app
        .admin(Method::POST, "/webhooks/ep_unknown/enable")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_not_retried_sooner() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    rx.push(Reply::status(429).retry_after("1"));
    let created = register(&app, json!({"url": rx.url(), "events": ["*"]})).await;

    app.turn("C-slow-down", "easy", &RecordingSink::new()).await;
    let got = rx.wait_for(2, WAIT).await;
    assert!(
        gap(&got[0], &got[1]) >= Duration::from_secs(1),
        "the schedule says 10 ms, Retry-After says 1 s: {:?}",
        gap(&got[0], &got[1])
    );
    assert_eq!(got[1].answered, Some(200));
    let id = created["id"].as_str().unwrap();
    let log = wait_deliveries(&app, id, |l| l[0]["status"] == "delivered").await;
    assert_eq!(log[0]["attempt_log"][0]["response_code"], 429);
    app.shutdown().await;
}

#[tokio::test]
async fn two_rotations_in_a_day_sign_with_all_three_secrets() {
    three_secrets_after_two_rotations(app_with(&[]).await).await;
}

#[tokio::test]
async fn postgres_two_rotations_in_a_day_sign_with_all_three_secrets() {
    let Some(pg) = db::PgSchema::create().await else {
        return;
    };
    let app = TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .database(&pg.url)
        .start()
        .await;
    three_secrets_after_two_rotations(app).await;
    pg.remove().await;
}

async fn three_secrets_after_two_rotations(app: TestApp) {
    let rx = Receiver::start().await;
    let created = register(&app, json!({"url": rx.url(), "events": ["*"]})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut secrets = vec![created["secret"].as_str().unwrap().to_owned()];
    for _ in 0..2 {
        let resp = app
            .admin(Method::POST, &format!("/webhooks/{id}/secret/rotate"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let rotated: Value = resp.json().await.unwrap();
        secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    }

    app.turn("C-rotate-twice", "three keys", &RecordingSink::new())
        .await;
    let got = rx.wait_for(1, WAIT).await;
    let req = &got[0];
    let sigs = req.signatures();
    assert_eq!(sigs.len(), 3, "{sigs:?}");
    for secret in &secrets {
        assert!(req.verify(secret), "{secret} does not sign");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn after_a_secret_rotation_a_delivery_carries_two_signatures_each_valid_for_its_key() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    let created = register(&app, json!({"url": rx.url(), "events": ["*"]})).await;
    let id = created["id"].as_str().unwrap();
    let old = created["secret"].as_str().unwrap();

    let resp = app
        .admin(Method::POST, &format!("/webhooks/{id}/secret/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_") && new != old);
    let until = OffsetDateTime::parse(
        rotated["previous_secret_expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let window = until - OffsetDateTime::now_utc();
    assert!(window > time::Duration::hours(23) && window <= time::Duration::hours(24));
    let (_, shown) = get_json(&app, &format!("/webhooks/{id}")).await;
    assert!(shown["previous_secret_expires_at"].is_string(), "{shown}");
    assert!(shown.get("secret").is_none(), "{shown}");

    app.turn("C-rotate", "two keys", &RecordingSink::new())
        .await;
    let got = rx.wait_for(1, WAIT).await;
    let req = &got[0];
    let sigs = req.signatures();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    let check = |secret: &str, sig: &str| {
        agent_bridge::webhook::sign::verify(
            secret,
            req.webhook_id(),
            req.timestamp(),
            req.body.as_bytes(),
            sig,
        )
    };
    assert!(check(new, sigs[0]) && !check(old, sigs[0]));
    assert!(check(old, sigs[1]) && !check(new, sigs[1]));
    assert!(req.verify(old) && req.verify(new));

    let resp = app
        .admin(Method::POST, "/webhooks/ep_unknown/secret/rotate")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn an_ordered_endpoint_gets_a_conversations_next_event_only_after_the_previous_succeeds() {
    let app = app_with(&[("WEBHOOK_RETRY_SCHEDULE", "600ms,600ms")]).await;
    let rx = Receiver::start().await;
    rx.push(Reply::status(500));
    register(
        &app,
        json!({"url": rx.url(), "events": ["conversation"], "ordered": true}),
    )
    .await;
    let sink = RecordingSink::new();

    app.turn("C-A", "a1", &sink).await;
    rx.wait_for(1, WAIT).await;
    // a1 failed once and waits ~600 ms for its retry; meanwhile:
    app.turn("C-A", "a2", &sink).await;
    app.turn("C-B", "b1", &sink).await;
    app.turn("C-B", "b2", &sink).await;

    let got = rx
        .wait_until(WAIT, |r| r.len() >= 5)
        .await
        .unwrap_or_else(|r| panic!("{r:#?}"));
    let queries: Vec<_> = got.iter().map(|r| r.data_str("query").unwrap()).collect();
    let at = |q: &str, nth: usize| {
        got.iter()
            .filter(|r| r.data_str("query").as_deref() == Some(q))
            .nth(nth)
            .unwrap_or_else(|| panic!("{q} #{nth} in {queries:?}"))
            .arrived
    };
    assert_eq!(
        queries.iter().filter(|q| *q == "a1").count(),
        2,
        "{queries:?}"
    );
    assert!(
        at("a2", 0) > at("a1", 1),
        "a2 only after a1 succeeded: {queries:?}"
    );
    assert!(
        at("b1", 0) < at("a1", 1),
        "the other conversation flows meanwhile: {queries:?}"
    );
    assert!(at("b2", 0) < at("a1", 1), "{queries:?}");
    assert!(at("b1", 0) < at("b2", 0), "{queries:?}");
    rx.expect_no_more_than(5, Duration::from_millis(200)).await;
    app.shutdown().await;
}

/// `n` conversation events written straight into the outbox (as a turn's commit
/// would), each under its own ordering key; returns when each was written.
async fn emit_events(app: &TestApp, n: usize, tag: &str) -> HashMap<String, Instant> {
    let mut written = HashMap::new();
    for i in 0..n {
        let event = OutboxEvent::new(
            EventKind::Conversation,
            Some(format!("test/{tag}/{}", i % 50)),
            &json!({ "n": i, "tag": tag }),
            OffsetDateTime::now_utc(),
        );
        let id = event.id.as_str().to_string();
        app.relay.record(vec![event]).await.unwrap();
        written.insert(id, Instant::now());
    }
    written
}

#[tokio::test]
async fn a_hanging_receiver_does_not_delay_another_endpoint() {
    // Our own database file: it must outlive the app (checked after shutdown).
    let (_keep, db_url) = db::sqlite_file_url().await;
    let app = TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .database(&db_url)
        .start()
        .await;
    let hanging = Receiver::start().await;
    hanging.set_hang(true);
    let healthy = Receiver::start().await;
    register(&app, json!({"url": hanging.url(), "events": ["*"]})).await;
    register(&app, json!({"url": healthy.url(), "events": ["*"]})).await;

    // More events than the hanging endpoint's window, so its rows pile up.
    const N: usize = 400;
    let written = emit_events(&app, N, "hang").await;
    let got = healthy.wait_for(N, Duration::from_secs(20)).await;

    let mut latencies: Vec<Duration> = got
        .iter()
        .map(|r| r.arrived.duration_since(written[r.webhook_id()]))
        .collect();
    latencies.sort();
    let worst = *latencies.last().unwrap();
    let p50 = latencies[latencies.len() / 2];
    assert!(
        worst < Duration::from_secs(1),
        "healthy endpoint delayed: p50 {p50:?}, max {worst:?}"
    );
    let hung = hanging.count();
    assert!(hung >= 1, "the hanging endpoint was tried");
    assert!(
        hung <= 64,
        "at most the per-endpoint limit in flight: {hung}"
    );

    // Shutting down with requests still hanging: after a short grace they are
    // abandoned and their rows released, so the next start sends them at once.
    let started = Instant::now();
    app.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let store = open_store(&db_url).await;
    let sql = "SELECT COUNT(*) FROM webhook_deliveries WHERE locked_until IS NOT NULL";
    let leased: i64 = match store.pool() {
        agent_bridge::store::Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        agent_bridge::store::Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap();
    assert_eq!(leased, 0, "every lease was given back");
    assert_eq!(
        store.outbox_backlog().await.unwrap(),
        N as u64,
        "the hanging endpoint's rows wait"
    );
    hanging.set_hang(false);
}

#[tokio::test]
async fn two_apps_on_one_sqlite_file_deliver_each_event_exactly_once() {
    let first = app_with(&[]).await;
    let second = app_with(&[]).await;
    // Same database: the second app on the first one's file.
    let second = {
        second.shutdown().await;
        TestApp::builder()
            .no_subscriber()
            .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
            .database(&first.db_url)
            .start()
            .await
    };
    exactly_once_across_two_workers(first, second).await;
}

/// Registers through one app, writes 200 events, and checks the receiver saw each
/// event id exactly once although two workers compete for the rows.
async fn exactly_once_across_two_workers(first: TestApp, second: TestApp) {
    let rx = Receiver::start().await;
    register(&first, json!({"url": rx.url(), "events": ["*"]})).await;
    let written = emit_events(&second, 200, "twice").await;
    let got = rx.wait_for(200, Duration::from_secs(20)).await;
    rx.expect_no_more_than(200, Duration::from_millis(500))
        .await;
    let ids: HashSet<_> = got.iter().map(|r| r.webhook_id().to_string()).collect();
    assert_eq!(ids.len(), 200);
    assert!(ids.iter().all(|id| written.contains_key(id)));
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn registration_refuses_bad_urls_private_targets_and_unknown_events() {
    // Private targets disallowed: the default.
    let app = TestApp::builder().no_subscriber().start().await;
    let cases = [
        json!({"url": "ftp://example.com/hook", "events": ["*"]}),
        json!({"url": "not a url", "events": ["*"]}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        json!({"url": "http://169.254.169.254/latest/meta-data", "events": ["*"]}),
        json!({"url": "http://localhost:8080/hook", "events": ["*"]}),
        json!({"url": "http://[::1]/hook", "events": ["*"]}),
        json!({"url": "http://[::ffff:10.0.0.1]/hook", "events": ["*"]}),
        json!({"url": "http://192.168.1.10/hook", "events": ["*"]}),
        json!({"url": "https://hooks.example.invalid/x", "events": ["conversation.created"]}),
        json!({"url": "https://hooks.example.invalid/x", "events": []}),
        json!({"url": "https://hooks.example.invalid/x", "events": ["*"], "token": "a\nb"}),
    ];
    for body in cases {
        let resp = app
            .admin(Method::POST, "/webhooks")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert!(err["error"].is_string(), "{err}");
    }
    // A name that does not resolve is accepted (delivery re-checks where it goes).
    let resp = app
        .admin(Method::POST, "/webhooks")
        .json(&json!({"url": "https://hooks.example.invalid/x", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (_, list) = get_json(&app, "/webhooks").await;
    assert_eq!(
        list["webhooks"].as_array().unwrap().len(),
        1,
        "nothing refused was stored"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn registration_refuses_malformed_json_and_a_missing_or_wrong_token() {
    let app = app_with(&[]).await;
    let resp = app
        .admin(Method::POST, "/webhooks")
        .header("content-type", "application/json")
        .body("{\"url\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

    let body = json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]});
    let resp = app
        .client
        .post(app.url("/webhooks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app
        .client
        .post(app.url("/webhooks"))
        .bearer_auth("not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app.client.get(app.url("/webhooks")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let huge = json!({"url": "http://127.0.0.1:9/hook", "events": ["*"],
                      "description": "x".repeat(70 * 1024)});
    let resp = app
        .admin(Method::POST, "/webhooks")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    app.shutdown().await;
}

#[tokio::test]
async fn registration_aliases_listing_and_deletion_never_reveal_secrets() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    let mut ids = vec![];
    for path in ["/webhooks", "/webhooks/register", "/register-webhook"] {
        let resp = app
            .admin(Method::POST, path)
            .json(&json!({"url": rx.url(), "events": ["query"], "token": "t0k"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["secret"].as_str().unwrap().starts_with("whsec_"));
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let (status, list) = get_json(&app, "/webhooks").await;
    assert_eq!(status, 200);
    let listed = list["webhooks"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    let text = list.to_string();
    assert!(!text.contains("whsec_") && !text.contains("t0k"), "{text}");
    assert!(listed
        .iter()
        .all(|e| e["has_token"] == true && e["enabled"] == true));

    let (status, one) = get_json(&app, &format!("/webhooks/{}", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], ids[0]);
    assert_eq!(one["disabled_reason"], Value::Null);
    assert!(one.get("secret").is_none());

    let resp = app
        .admin(Method::DELETE, &format!("/webhooks/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, err) = get_json(&app, &format!("/webhooks/{}", ids[0])).await;
    assert_eq!(status, 404);
    assert!(err["error"].is_string());
    let resp = app
        .admin(Method::DELETE, &format!("/webhooks/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let (_, list) = get_json(&app, "/webhooks").await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 2);

    // A deleted endpoint receives nothing; the remaining two each get the event once.
    let (status, _) = agent_query(&app, json!({"query": "fan out"})).await;
    assert_eq!(status, 200);
    rx.wait_for(2, WAIT).await;
    rx.expect_no_more_than(2, Duration::from_millis(300)).await;
    app.shutdown().await;
}

#[tokio::test]
async fn agent_query_sync_and_async_both_emit_a_query_event() {
    let app = app_with(&[]).await;
    let rx = Receiver::start().await;
    let created = register(&app, json!({"url": rx.url(), "events": ["query"]})).await;
    let secret = created["secret"].as_str().unwrap();

    let (status, sync) = agent_query(&app, json!({"query": "sync question"})).await;
    assert_eq!(status, 200, "{sync}");
    let (status, accepted) =
        agent_query(&app, json!({"query": "async question", "async": true})).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "processing");

    let got = rx.wait_for(2, WAIT).await;
    assert!(got.iter().all(|r| r.verify(secret)));
    let by_query: HashMap<_, _> = got
        .iter()
        .map(|r| (r.data_str("query").unwrap(), r.json()))
        .collect();
    let s = &by_query["sync question"];
    assert_eq!(s["type"], "query");
    assert_eq!(s["data"]["request_id"], sync["request_id"]);
    assert_eq!(s["data"]["response"], sync["response"]);
    let a = &by_query["async question"];
    assert_eq!(a["type"], "query");
    assert_eq!(a["data"]["request_id"], accepted["request_id"]);
    assert!(a["data"]["response"].is_string());
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------
// The real binary: kill -9 with deliveries in flight
// ---------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_agent-bridge");

/// Starts the binary on `db_url` and waits for `/readyz`; returns it and its base URL.
async fn start_bridge(
    dir: &std::path::Path,
    db_url: &str,
    agent: &FakeAgent,
) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .env_clear()
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("HTTP_BIND", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", db_url)
        .env("AGENT_URL", agent.url())
        .env("BRIDGE_API_TOKEN", TOKEN)
        .env("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        // Hung requests give up after 1 s; the lease (timeout + margin) after ~6 s.
        .env("WEBHOOK_TIMEOUT_SECS", "1")
        .env("WEBHOOK_RETRY_SCHEDULE", "1h")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return (child, base);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the bridge did not become ready");
}

#[tokio::test]
async fn killing_the_process_with_deliveries_in_flight_delivers_them_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_db_dir, db_url) = db::sqlite_file_url().await;
    let agent = FakeAgent::start().await;
    let rx = Receiver::start().await;
    rx.set_hang(true);
    let client = reqwest::Client::new();

    let (mut child, base) = start_bridge(dir.path(), &db_url, &agent).await;
    let resp = client
        .post(format!("{base}/webhooks"))
        .bearer_auth(TOKEN)
        .json(&json!({"url": rx.url(), "events": ["query"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let mut request_ids = HashSet::new();
    for i in 0..3 {
        let resp = client
            .post(format!("{base}/agent-query"))
            .bearer_auth(TOKEN)
            .json(&json!({"query": format!("question {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        request_ids.insert(body["request_id"].as_str().unwrap().to_string());
    }
    // All three are in flight (hanging) when the process dies without a word.
    let in_flight = rx.wait_for(3, WAIT).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let event_ids: HashSet<_> = in_flight
        .iter()
        .map(|r| r.webhook_id().to_string())
        .collect();
    assert_eq!(event_ids.len(), 3);

    rx.set_hang(false);
    let (mut child, _base) = start_bridge(dir.path(), &db_url, &agent).await;
    let got = rx
        .wait_until(Duration::from_secs(20), |r| {
            let ok: HashSet<_> = r
                .iter()
                .filter(|r| r.answered == Some(200))
                .map(|r| r.webhook_id().to_string())
                .collect();
            event_ids.iter().all(|id| ok.contains(id))
        })
        .await
        .unwrap_or_else(|r| panic!("not redelivered after restart: {r:#?}"));
    let delivered: HashSet<_> = got
        .iter()
        .filter(|r| r.answered == Some(200))
        .map(|r| r.data_str("request_id").unwrap())
        .collect();
    assert_eq!(delivered, request_ids);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

// ---------------------------------------------------------------------------------
// PostgreSQL (with TEST_DATABASE_URL)
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn postgres_an_endpoint_receives_a_signed_conversation_event() {
    let Some(pg) = db::PgSchema::create().await else {
        return;
    };
    let app = TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .database(&pg.url)
        .start()
        .await;
    let rx = Receiver::start().await;
    rx.push(Reply::status(503));
    let created = register(
        &app,
        json!({"url": rx.url(), "events": ["conversation"], "ordered": true}),
    )
    .await;
    app.turn("C-pg", "hello postgres", &RecordingSink::new())
        .await;
    let got = rx.wait_for(2, WAIT).await;
    assert_eq!(got[0].webhook_id(), got[1].webhook_id());
    assert!(got[1].verify(created["secret"].as_str().unwrap()));
    assert_eq!(got[1].data_str("query").as_deref(), Some("hello postgres"));
    let id = created["id"].as_str().unwrap();
    let log = wait_deliveries(&app, id, |l| l.len() == 1 && l[0]["status"] == "delivered").await;
    assert_eq!(log[0]["attempts"], 2);
    app.shutdown().await;
    pg.remove().await;
}

#[tokio::test]
async fn postgres_two_workers_on_one_schema_deliver_each_of_200_events_exactly_once() {
    let Some(pg) = db::PgSchema::create().await else {
        return;
    };
    let start = || {
        TestApp::builder()
            .no_subscriber()
            .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
            .database(&pg.url)
            .start()
    };
    let first = start().await;
    let second = start().await;
    exactly_once_across_two_workers(first, second).await;
    pg.remove().await;
}

// ---------------------------------------------------------------------------------
// The worker and the store's claim, driven directly
// ---------------------------------------------------------------------------------

use std::sync::Arc;

use agent_bridge::core::metrics::Metrics;
use agent_bridge::core::ports::{Commit, Transcripts};
use agent_bridge::store::SqlStore;
use agent_bridge::webhook::store::{ClaimRequest, WebhookEndpoint, WebhookStore};
use agent_bridge::webhook::{Worker, WorkerSettings};

async fn open_store(url: &str) -> SqlStore {
    let s = agent_bridge::store::connect(url).await.unwrap();
    s.migrate().await.unwrap();
    s
}

fn endpoint_at(id: &str, url: &str, ordered: bool) -> WebhookEndpoint {
    WebhookEndpoint {
        id: id.into(),
        url: url.into(),
        description: None,
        token: None,
        ordered,
        secret: agent_bridge::webhook::sign::generate_secret(),
        previous_secret: None,
        previous_secret_expires_at: None,
        older_secrets: Vec::new(),
        enabled: true,
        disabled_reason: None,
        created_at: OffsetDateTime::now_utc(),
        events: vec!["*".into()],
    }
}

/// Writes one conversation event per key through `Store::commit` (the outbox
/// fan-out); returns the event ids in order.
async fn commit_events(s: &SqlStore, keys: &[&str]) -> Vec<String> {
    let mut ids = vec![];
    for key in keys {
        let ev = OutboxEvent::new(
            EventKind::Conversation,
            Some(key.to_string()),
            &json!({ "key": key }),
            OffsetDateTime::now_utc() - time::Duration::seconds(1),
        );
        ids.push(ev.id.as_str().to_string());
        s.commit(Commit {
            events: vec![ev],
            ..Commit::default()
        })
        .await
        .unwrap();
    }
    ids
}

fn settings(f: impl FnOnce(&mut WorkerSettings)) -> WorkerSettings {
    let cfg = crate::support::config(&[
        ("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
        ("WEBHOOK_RETRY_SCHEDULE", "10ms"),
    ]);
    let mut s = WorkerSettings::from_config(&cfg.webhooks);
    f(&mut s);
    s
}

fn claim_now(skip: &[&str], lease: Duration) -> ClaimRequest {
    let now = OffsetDateTime::now_utc();
    ClaimRequest {
        now,
        lease_until: now + lease,
        limit: 100,
        skip_endpoints: skip.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn worker_tick_drains_due_rows_step_by_step() {
    let (_dir, url) = db::sqlite_file_url().await;
    let store = open_store(&url).await;
    let rx = Receiver::start().await;
    rx.push(Reply::status(500));
    store
        .create_endpoint(&endpoint_at("ep_tick", &rx.url(), false))
        .await
        .unwrap();
    let ids = commit_events(&store, &["a", "b", "c"]).await;
    let metrics = Arc::new(Metrics::default());
    let worker = Worker::new(Arc::new(store.clone()), settings(|_| {}), metrics.clone()).unwrap();

    assert_eq!(worker.tick().await.unwrap(), 3);
    assert_eq!(rx.count(), 3);
    // One failed and is due again after ~10 ms; the others are done.
    assert_eq!(store.outbox_backlog().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(worker.tick().await.unwrap(), 1);
    assert_eq!(worker.tick().await.unwrap(), 0);
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);
    let seen: HashSet<_> = rx
        .requests()
        .iter()
        .map(|r| r.webhook_id().to_string())
        .collect();
    assert_eq!(seen, ids.into_iter().collect());
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(
        out.contains("bridge_webhook_deliveries_total{outcome=\"delivered\"} 3"),
        "{out}"
    );
    assert!(
        out.contains("bridge_webhook_deliveries_total{outcome=\"retrying\"} 1"),
        "{out}"
    );
}

#[tokio::test]
async fn a_row_queued_behind_a_slow_endpoint_renews_its_lease_before_it_is_sent() {
    let (_dir, url) = db::sqlite_file_url().await;
    let store = open_store(&url).await;
    let rx = Receiver::start().await;
    rx.set_hang(true);
    store
        .create_endpoint(&endpoint_at("ep_slow", &rx.url(), false))
        .await
        .unwrap();
    let ids = commit_events(&store, &["one", "two", "three"]).await;
    // One request at a time, each timing out after 1 s; leases last 1.2 s.
    let worker = Worker::new(
        Arc::new(store.clone()),
        settings(|s| {
            s.per_endpoint_concurrency = 1;
            s.timeout = Duration::from_secs(1);
            s.lease_margin = Duration::from_millis(200);
            s.schedule = agent_bridge::webhook::schedule::RetrySchedule::parse("1h").unwrap();
        }),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let tick = tokio::spawn(async move { worker.tick().await });

    // At ~1.35 s the first row has timed out and the second, sent at ~1 s, renewed its
    // lease before going out; the third still waits with its original, expired lease.
    tokio::time::sleep(Duration::from_millis(1350)).await;
    let other = store
        .claim_deliveries(&claim_now(&[], Duration::from_secs(60)))
        .await
        .unwrap();
    let taken: Vec<_> = other.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(
        taken,
        [ids[2].clone()],
        "only the un-renewed row is up for grabs"
    );

    // The worker notices it lost the third row and leaves it to its new holder.
    assert_eq!(tick.await.unwrap().unwrap(), 3);
    let sent: Vec<_> = rx
        .requests()
        .iter()
        .map(|r| r.webhook_id().to_string())
        .collect();
    assert_eq!(sent, [ids[0].clone(), ids[1].clone()]);
    rx.set_hang(false);
}

/// The store's claim semantics, for SQLite and PostgreSQL alike.
async fn claim_contract(s: &SqlStore) {
    // With no endpoint there is nothing to claim (on SQLite, the writer then answers
    // the next claims without a transaction for a while); one created through the
    // store is claimed for at once.
    let idle = claim_now(&[], Duration::from_secs(30));
    for _ in 0..3 {
        assert!(s.claim_deliveries(&idle).await.unwrap().is_empty());
    }
    s.create_endpoint(&endpoint_at("ep_o", "http://r.test/o", true))
        .await
        .unwrap();
    s.create_endpoint(&endpoint_at("ep_u", "http://r.test/u", false))
        .await
        .unwrap();
    let ids = commit_events(s, &["k1", "k1", "k2"]).await;
    let lease = Duration::from_secs(30);

    // Ordered: k1's second event waits for its first; the unordered endpoint gets all.
    let rows = s
        .claim_deliveries(&claim_now(&["ep_u"], lease))
        .await
        .unwrap();
    let mut got: Vec<_> = rows.iter().map(|r| r.event_id.clone()).collect();
    got.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(got, want);
    assert!(rows
        .iter()
        .all(|r| r.endpoint_id == "ep_o" && r.body.contains("\"key\"")));
    // Leased rows are not claimed twice; the skipped endpoint's rows are still there.
    assert!(s
        .claim_deliveries(&claim_now(&["ep_u"], lease))
        .await
        .unwrap()
        .is_empty());
    let unordered = s.claim_deliveries(&claim_now(&[], lease)).await.unwrap();
    assert_eq!(unordered.len(), 3);
    assert!(unordered.iter().all(|r| r.endpoint_id == "ep_u"));

    // Delivering k1's first event releases its second.
    let first = rows.iter().find(|r| r.event_id == ids[0]).unwrap();
    let now = OffsetDateTime::now_utc();
    s.record_results(&[agent_bridge::webhook::store::DeliveryResult {
        delivery_id: first.id,
        endpoint_id: first.endpoint_id.clone(),
        lease: first.lease,
        status: agent_bridge::webhook::store::DeliveryStatus::Delivered,
        next_attempt_at: now,
        attempt: agent_bridge::webhook::store::AttemptRecord {
            attempted_at: now,
            status_code: Some(200),
            response_body: Some("ok".into()),
            duration_ms: 1,
            error: None,
        },
        disable_endpoint: None,
    }])
    .await
    .unwrap();
    let next = s.claim_deliveries(&claim_now(&[], lease)).await.unwrap();
    assert_eq!(
        next.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>(),
        [ids[1].clone()]
    );

    // Disabled endpoints are not claimed.
    s.release_deliveries(&[(next[0].id, next[0].lease)])
        .await
        .unwrap();
    s.set_endpoint_enabled("ep_o", false, Some("gone"))
        .await
        .unwrap();
    assert!(s
        .claim_deliveries(&claim_now(&[], lease))
        .await
        .unwrap()
        .is_empty());
    let log = s.deliveries("ep_o", 10).await.unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log.iter().filter(|d| d.attempt_log.len() == 1).count(), 1);
}

/// Two store handles claim concurrently until nothing is left; no row is handed out
/// twice.
async fn concurrent_claims_never_overlap(a: SqlStore, b: SqlStore) {
    a.create_endpoint(&endpoint_at("ep_c", "http://r.test/c", false))
        .await
        .unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    commit_events(&a, &keys).await;
    let drain = |s: SqlStore| async move {
        let mut mine = vec![];
        loop {
            let mut req = claim_now(&[], Duration::from_secs(60));
            req.limit = 7;
            let rows = s.claim_deliveries(&req).await.unwrap();
            if rows.is_empty() {
                return mine;
            }
            mine.extend(rows.into_iter().map(|r| r.id));
            tokio::task::yield_now().await;
        }
    };
    let (x, y) = tokio::join!(tokio::spawn(drain(a)), tokio::spawn(drain(b)));
    let (x, y) = (x.unwrap(), y.unwrap());
    let all: HashSet<_> = x.iter().chain(y.iter()).collect();
    assert_eq!(x.len() + y.len(), 200, "{} + {}", x.len(), y.len());
    assert_eq!(all.len(), 200, "no row claimed twice");
}

#[tokio::test]
async fn store_claims_honour_leases_order_skips_and_disabled_endpoints_on_sqlite() {
    let (_dir, url) = db::sqlite_file_url().await;
    claim_contract(&open_store(&url).await).await;
}

#[tokio::test]
async fn store_claims_honour_leases_order_skips_and_disabled_endpoints_on_postgres() {
    let Some(pg) = db::PgSchema::create().await else {
        return;
    };
    claim_contract(&open_store(&pg.url).await).await;
    pg.remove().await;
}

#[tokio::test]
async fn concurrent_claims_on_one_sqlite_file_never_overlap() {
    let (_dir, url) = db::sqlite_file_url().await;
    let a = open_store(&url).await;
    let b = open_store(&url).await;
    concurrent_claims_never_overlap(a, b).await;
}

/// An idle SQLite worker's claims cost no transaction while its writer knows no
/// endpoint is enabled, but that knowledge expires: an endpoint another process
/// created (with deliveries queued for it) is claimed within a few seconds, not never.
#[tokio::test]
async fn deliveries_for_an_endpoint_another_process_created_are_claimed_soon() {
    let (_dir, url) = db::sqlite_file_url().await;
    let idle = open_store(&url).await;
    let other = open_store(&url).await;
    let lease = Duration::from_secs(30);
    assert!(idle
        .claim_deliveries(&claim_now(&[], lease))
        .await
        .unwrap()
        .is_empty());

    other
        .create_endpoint(&endpoint_at("ep_other", "http://r.test/o", false))
        .await
        .unwrap();
    let ids = commit_events(&other, &["k1"]).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let claimed = loop {
        let rows = idle.claim_deliveries(&claim_now(&[], lease)).await.unwrap();
        if !rows.is_empty() || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        claimed
            .iter()
            .map(|r| r.event_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
}

#[tokio::test]
async fn concurrent_claims_on_one_postgres_schema_never_overlap() {
    let Some(pg) = db::PgSchema::create().await else {
        return;
    };
    let a = open_store(&pg.url).await;
    let b = open_store(&pg.url).await;
    concurrent_claims_never_overlap(a, b).await;
    pg.remove().await;
}

#[tokio::test]
async fn a_url_that_turns_private_after_registration_is_refused_at_delivery_time() {
    // Private targets disallowed. The endpoint is written straight to the store, as if
    // its name had resolved to a public address at registration and changed since.
    let app = TestApp::builder().no_subscriber().start().await;
    let rx = Receiver::start().await;
    let store = open_store(&app.db_url).await;
    for (id, url) in [
        ("ep_literal", rx.url()),
        (
            "ep_name",
            format!("http://localhost:{}/hook", rx.addr.port()),
        ),
    ] {
        store
            .create_endpoint(&endpoint_at(id, &url, false))
            .await
            .unwrap();
    }
    app.turn("C-ssrf", "where does this go?", &RecordingSink::new())
        .await;

    for id in ["ep_literal", "ep_name"] {
        let log = wait_deliveries(&app, id, |l| l.len() == 1 && l[0]["status"] == "failed").await;
        let error = log[0]["error"].as_str().unwrap();
        assert!(error.contains("private"), "{id}: {error}");
        assert_eq!(log[0]["response_code"], Value::Null);
    }
    assert_eq!(rx.count(), 0, "nothing reached the private address");
    app.shutdown().await;
}

#[tokio::test]
async fn metrics_count_delivery_outcomes_and_show_the_outbox_backlog() {
    let app = app_with(&[("WEBHOOK_RETRY_SCHEDULE", "10ms")]).await;
    let ok = Receiver::start().await;
    let dead = Receiver::start().await;
    dead.set_status(500);
    register(&app, json!({"url": ok.url(), "events": ["conversation"]})).await;
    register(&app, json!({"url": dead.url(), "events": ["conversation"]})).await;
    let sink = crate::support::RecordingSink::new();
    app.turn("C1", "count me", &sink).await;
    ok.wait_for(1, WAIT).await;
    dead.wait_for(2, WAIT).await;

    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Outcomes are counted when decided and written to the store a moment later.
        let settled = text.contains("bridge_webhook_deliveries_total{outcome=\"failed\"} 1")
            && text.lines().any(|l| l == "bridge_webhook_outbox_backlog 0");
        if settled || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in [
        "bridge_webhook_deliveries_total{outcome=\"delivered\"} 1",
        "bridge_webhook_deliveries_total{outcome=\"retrying\"} 1",
        "bridge_webhook_deliveries_total{outcome=\"failed\"} 1",
        "bridge_webhook_outbox_backlog 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    app.shutdown().await;
}

/// `BRIDGE_SECRET_KEY` values: 32 bytes each, in base64.
const SECRET_KEY: &str = "c2VhbGVkLWJ5LXRoZS1icmlkZ2Uta2V5LTAxMjM0NTY=";
const OTHER_SECRET_KEY: &str = "YW5vdGhlci1rZXktbm90LXRoZS1zYW1lLW9uZS0wMDA=";

/// The raw `(token, secret, previous_secret)` of every endpoint, and the older secrets.
async fn stored_secrets(
    db_url: &str,
) -> (Vec<(Option<String>, String, Option<String>)>, Vec<String>) {
    use agent_bridge::store::Pool;
    let store = agent_bridge::store::connect(db_url).await.unwrap();
    let endpoints = "SELECT token, secret, previous_secret FROM webhook_endpoints ORDER BY id";
    let older = "SELECT secret FROM webhook_older_secrets";
    match store.pool() {
        Pool::Sqlite(p) => (
            sqlx::query_as(endpoints).fetch_all(p).await.unwrap(),
            sqlx::query_scalar(older).fetch_all(p).await.unwrap(),
        ),
        Pool::Postgres(p) => (
            sqlx::query_as(endpoints).fetch_all(p).await.unwrap(),
            sqlx::query_scalar(older).fetch_all(p).await.unwrap(),
        ),
    }
}

fn is_sealed(value: &str, plain: &[&str]) -> bool {
    value.starts_with("sealed:v1:") && plain.iter().all(|p| !value.contains(p))
}

async fn rotate(app: &TestApp, id: &str) -> String {
    let resp = app
        .admin(Method::POST, &format!("/webhooks/{id}/secret/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    rotated["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn with_bridge_secret_key_secrets_and_tokens_are_stored_encrypted_and_still_sign() {
    let (_keep, db_url) = db::sqlite_file_url().await;
    let app = TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .var("BRIDGE_SECRET_KEY", SECRET_KEY)
        .database(&db_url)
        .start()
        .await;
    let rx = Receiver::start().await;
    let created = register(
        &app,
        json!({"url": rx.url(), "events": ["*"], "token": "tok-kept-secret-42"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let first = created["secret"].as_str().unwrap().to_owned();
    let second = rotate(&app, id).await;
    let third = rotate(&app, id).await;

    let (endpoints, older) = stored_secrets(&db_url).await;
    let plain = ["tok-kept-secret-42", &first, &second, &third, "whsec_"];
    let (token, secret, previous) = &endpoints[0];
    assert!(is_sealed(token.as_deref().unwrap(), &plain), "{token:?}");
    assert!(is_sealed(secret, &plain), "{secret}");
    assert!(
        is_sealed(previous.as_deref().unwrap(), &plain),
        "{previous:?}"
    );
    assert_eq!(older.len(), 1, "{older:?}");
    assert!(is_sealed(&older[0], &plain), "{older:?}");

    // Deliveries carry the real token and are signed with every key still valid.
    app.turn("C-sealed", "sealed secrets", &RecordingSink::new())
        .await;
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("x-webhook-token"), Some("tok-kept-secret-42"));
    for secret in [&first, &second, &third] {
        assert!(got[0].verify(secret), "{secret} does not sign");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn setting_bridge_secret_key_later_encrypts_existing_rows_and_a_wrong_or_missing_key_refuses_to_start(
) {
    let (_keep, db_url) = db::sqlite_file_url().await;
    let start = |key: Option<&'static str>| {
        let mut b = TestApp::builder()
            .no_subscriber()
            .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
            .database(&db_url);
        if let Some(key) = key {
            b = b.var("BRIDGE_SECRET_KEY", key);
        }
        b.start()
    };
    let rx = Receiver::start().await;
    let app = start(None).await;
    let created = register(
        &app,
        json!({"url": rx.url(), "events": ["*"], "token": "tok-from-before"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let old = created["secret"].as_str().unwrap().to_owned();
    let new = rotate(&app, &id).await;
    app.shutdown().await;
    let (endpoints, _) = stored_secrets(&db_url).await;
    assert_eq!(endpoints[0].1, new, "stored as given without a key");

    // With the key: the rows written before it are sealed at start, and still sign.
    let app = start(Some(SECRET_KEY)).await;
    let (endpoints, _) = stored_secrets(&db_url).await;
    let plain = ["tok-from-before", old.as_str(), new.as_str()];
    let (token, secret, previous) = &endpoints[0];
    assert!(is_sealed(token.as_deref().unwrap(), &plain), "{token:?}");
    assert!(is_sealed(secret, &plain), "{secret}");
    assert!(
        is_sealed(previous.as_deref().unwrap(), &plain),
        "{previous:?}"
    );
    app.turn("C-sealed-later", "sealed at start", &RecordingSink::new())
        .await;
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("x-webhook-token"), Some("tok-from-before"));
    assert!(got[0].verify(&old) && got[0].verify(&new));
    app.shutdown().await;

    // A sealed store does not start without its key, nor with another one; the
    // error names the variable and touches nothing.
    for (key, expected) in [
        (None, "BRIDGE_SECRET_KEY is not set"),
        (Some(OTHER_SECRET_KEY), "not the key they were sealed with"),
    ] {
        let mut vars = vec![
            ("HTTP_BIND", "127.0.0.1:0"),
            ("DATABASE_URL", db_url.as_str()),
            ("BRIDGE_API_TOKEN", TOKEN),
        ];
        if let Some(key) = key {
            vars.push(("BRIDGE_SECRET_KEY", key));
        }
        let err = match agent_bridge::app::App::build(crate::support::config(&vars)).await {
            Ok(_) => panic!("started with {key:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expected), "{err}");
        assert!(
            !err.contains(&new) && !err.contains("tok-from-before"),
            "{err}"
        );
    }
    let (after, _) = stored_secrets(&db_url).await;
    assert_eq!(after, endpoints, "a refused start changes nothing");
}

#[tokio::test]
async fn bridge_secret_key_seals_existing_rows_on_postgres() {
    let Some(pg) = db::PgSchema::create().await else {
        return;
    };
    let app = TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .database(&pg.url)
        .start()
        .await;
    let rx = Receiver::start().await;
    let created = register(&app, json!({"url": rx.url(), "events": ["*"]})).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    app.shutdown().await;

    let app = TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .var("BRIDGE_SECRET_KEY", SECRET_KEY)
        .database(&pg.url)
        .start()
        .await;
    let (endpoints, _) = stored_secrets(&pg.url).await;
    assert!(is_sealed(&endpoints[0].1, &[&secret]), "{endpoints:?}");
    app.turn("C-sealed-pg", "sealed on postgres", &RecordingSink::new())
        .await;
    let got = rx.wait_for(1, WAIT).await;
    assert!(got[0].verify(&secret));
    app.shutdown().await;
    pg.remove().await;
}
