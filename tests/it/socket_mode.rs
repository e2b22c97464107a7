//! Slack over Socket Mode end to end: the real `App` with `SLACK_APP_TOKEN`, the fake
//! Slack's `apps.connections.open` and WebSocket server, the fake agent, and replies
//! through the Web API fake. No request is ever sent to the bridge's HTTP port unless
//! a test says so.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::slack::{callback, EventBuilder, FakeSlack, APP_TOKEN, BOT_USER, DM};
use crate::support::TestApp;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(400);
const SECRET: &str = "test-signing-secret-0123456789";

struct Setup {
    app: TestApp,
    slack: FakeSlack,
}

impl Setup {
    /// Socket Mode only (no signing secret), with `vars` on top.
    async fn start(vars: &[(&str, &str)]) -> Setup {
        let slack = FakeSlack::start().await;
        let mut builder = TestApp::builder()
            .var("SLACK_BOT_TOKEN", "xoxb-test")
            .var("SLACK_APP_TOKEN", APP_TOKEN)
            .var("SLACK_API_BASE", &slack.api_base())
            .var("SLACK_STREAMING", "update")
            .var("SLACK_PROGRESS", "none");
        for (k, v) in vars {
            builder = builder.var(k, v);
        }
        let app = builder.start().await;
        Setup { app, slack }
    }

    /// Waits for `n` connections open at once.
    async fn connected(&self, n: usize) {
        self.slack
            .socket()
            .wait(WAIT, &format!("{n} open connections"), |s| {
                s.open_conns().len() >= n
            })
            .await;
    }

    async fn readyz(&self) -> (u16, Value) {
        let res = self
            .app
            .client
            .get(self.app.url("/readyz"))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn socket_mode_answers_a_mention_in_its_thread_with_no_request_to_the_bridge() {
    let s = Setup::start(&[]).await;
    s.connected(2).await;
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> over the socket"));

    let envelope = s.slack.socket().send_event(ev.envelope());

    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].param("channel").as_deref(), Some("C1"));
    assert_eq!(posts[0].param("thread_ts").as_deref(), Some(ev.ts.as_str()));
    assert_eq!(posts[0].text(), "answer to: over the socket");
    let acks = s.slack.socket().acks();
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].envelope_id, envelope);
    let opens = s.slack.calls_of("apps.connections.open");
    assert_eq!(opens.len(), 2, "one per connection");
    assert_eq!(
        opens[0].authorization.as_deref(),
        Some(format!("Bearer {APP_TOKEN}").as_str()),
        "apps.connections.open takes the app-level token"
    );
    s.slack.assert_stays("chat.postMessage", 1, QUIET).await;

    // Only now does the test talk to the bridge: ready, and no Events API route.
    let (status, body) = s.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["parts"]["slack"], "up");
    assert_eq!(body["parts"]["slack_socket"], "up");
    let events = s
        .app
        .client
        .post(s.app.url("/slack/events"))
        .header("x-slack-request-timestamp", "1")
        .header("x-slack-signature", "v0=00")
        .body(ev.body())
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 404, "no signing secret, no Events API");
    s.app.shutdown().await;
}

#[tokio::test]
async fn every_envelope_is_acknowledged_while_the_agent_is_still_working() {
    let s = Setup::start(&[]).await;
    s.connected(2).await;
    // The agent takes the questions and does not answer until released.
    s.app.agent.hang(true);
    let socket = s.slack.socket();
    let envelopes: Vec<String> = (0..3)
        .map(|i| {
            let ev =
                EventBuilder::app_mention(&format!("C{i}"), &format!("<@{BOT_USER}> slow {i}"));
            socket.send_event(ev.envelope())
        })
        .collect();

    socket.wait(WAIT, "3 acks", |s| s.acks().len() >= 3).await;
    s.app
        .agent
        .wait_for_requests_to("/conversation", 3, WAIT)
        .await;

    let acks = socket.acks();
    for envelope in &envelopes {
        let ack = acks
            .iter()
            .find(|a| &a.envelope_id == envelope)
            .unwrap_or_else(|| panic!("{envelope} acknowledged: {acks:?}"));
        // Slack wants an acknowledgement within 3 s; the bridge sends it on arrival.
        assert!(ack.delay < Duration::from_millis(500), "{ack:?}");
    }
    assert!(
        s.slack.calls_of("chat.postMessage").is_empty(),
        "acknowledged while no answer exists yet"
    );
    s.app.agent.hang(false);
    s.slack.wait_for("chat.postMessage", 3, WAIT).await;
    s.app.shutdown().await;
}

#[tokio::test]
async fn an_unacknowledged_envelope_redelivered_on_the_other_connection_is_answered_once() {
    let s = Setup::start(&[]).await;
    s.connected(2).await;
    let socket = s.slack.socket();
    let first = socket.open_conns()[0];
    // The bridge's acknowledgement on the first connection is lost on the way, so
    // Slack delivers the envelope again, on the other connection, `retry_attempt` 1.
    socket.deafen(first);
    socket.set_redeliver_after(Duration::from_millis(300));
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> only once"));

    let envelope = socket.send_envelope(first, "events_api", ev.envelope());

    socket
        .wait(WAIT, "the redelivery acknowledged", |s| {
            s.acks()
                .iter()
                .any(|a| a.envelope_id == envelope && a.attempt == 1)
        })
        .await;
    let ack = socket
        .acks()
        .into_iter()
        .find(|a| a.envelope_id == envelope)
        .unwrap();
    assert_ne!(ack.conn, first, "redelivered on the other connection");
    s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    s.slack.assert_stays("chat.postMessage", 1, QUIET).await;
    assert_eq!(s.app.agent.requests_to("/conversation").len(), 1);
    s.app.shutdown().await;
}

#[tokio::test]
async fn refresh_requested_opens_the_new_connection_before_the_old_one_closes() {
    let s = Setup::start(&[("SLACK_SOCKET_CONNECTIONS", "1")]).await;
    s.connected(1).await;
    let socket = s.slack.socket();
    let old = socket.open_conns()[0];
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> across the switch"));

    socket.disconnect(old, "refresh_requested");
    // Sent right after the warning: still on the old connection, which Slack keeps
    // open for a while.
    let envelope = socket.send_envelope(old, "events_api", ev.envelope());

    socket
        .wait(WAIT, "the old connection closed", |s| {
            s.conns().get(old).is_some_and(|c| c.closed_at.is_some())
        })
        .await;
    let conns = socket.conns();
    let new = conns
        .iter()
        .find(|c| c.id != old)
        .expect("a new connection");
    let old_closed = conns[old].closed_at.unwrap();
    assert!(
        new.opened_at < old_closed,
        "the replacement opened before the old connection closed: {conns:?}"
    );
    assert!(socket.acks().iter().any(|a| a.envelope_id == envelope));
    s.slack.wait_for("chat.postMessage", 1, WAIT).await;

    // The replacement serves: a mention on it is answered too, each once.
    let next = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> after the switch"));
    socket.send_envelope(new.id, "events_api", next.envelope());
    s.slack.wait_for("chat.postMessage", 2, WAIT).await;
    s.slack.assert_stays("chat.postMessage", 2, QUIET).await;
    assert_eq!(s.slack.calls_of("apps.connections.open").len(), 2);
    assert_eq!(socket.open_conns(), vec![new.id]);
    let (status, body) = s.readyz().await;
    assert_eq!(status, 200, "{body}");
    s.app.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_is_opened_again_and_readyz_follows() {
    let s = Setup::start(&[("SLACK_SOCKET_CONNECTIONS", "1")]).await;
    s.connected(1).await;
    let socket = s.slack.socket();
    let old = socket.open_conns()[0];

    socket.kill(old);

    socket
        .wait(WAIT, "a second connection", |s| {
            s.conns().len() >= 2 && !s.open_conns().is_empty()
        })
        .await;
    let ev = EventBuilder::message_im("still there?");
    socket.send_event(ev.envelope());
    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].text(), "answer to: still there?");
    let (status, body) = s.readyz().await;
    assert_eq!(status, 200, "{body}");
    s.app.shutdown().await;
}

#[tokio::test]
async fn with_both_transports_each_message_is_answered_once() {
    let s = Setup::start(&[("SLACK_SIGNING_SECRET", SECRET)]).await;
    s.connected(2).await;
    let socket = s.slack.socket();
    let both = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> both ways"));
    let http_only = EventBuilder::app_mention("C2", &format!("<@{BOT_USER}> over http"));
    let socket_only = EventBuilder::message_im("over the socket");

    // The same event over both transports (as during a migration), then one each.
    socket.send_event(both.envelope());
    let res = crate::support::slack::signed(
        &s.app.client,
        &s.app.url("/slack/events"),
        SECRET,
        &both.body(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let res = crate::support::slack::signed(
        &s.app.client,
        &s.app.url("/slack/events"),
        SECRET,
        &http_only.body(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    socket.send_event(socket_only.envelope());

    let posts = s.slack.wait_for("chat.postMessage", 3, WAIT).await;
    s.slack.assert_stays("chat.postMessage", 3, QUIET).await;
    let mut texts: Vec<String> = posts.iter().map(|p| p.text()).collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            "answer to: both ways",
            "answer to: over http",
            "answer to: over the socket"
        ]
    );
    s.app.shutdown().await;
}

#[tokio::test]
async fn opening_the_bots_dm_offers_the_suggested_prompts_and_calls_no_agent() {
    let s = Setup::start(&[(
        "SLACK_SUGGESTED_PROMPTS",
        "Summarize=Summarize this channel;Explain=Explain Socket Mode",
    )])
    .await;
    s.connected(2).await;
    let socket = s.slack.socket();

    // The assistant view: a thread opened in the bot's DM.
    socket.send_event(callback(json!({
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": "U1",
            "channel_id": DM,
            "thread_ts": "1710000000.000900",
            "context": {"channel_id": "C1", "team_id": "T1"},
        },
        "event_ts": "1710000000.000901",
    })));
    let calls = s
        .slack
        .wait_for("assistant.threads.setSuggestedPrompts", 1, WAIT)
        .await;
    assert_eq!(calls[0].param("channel_id").as_deref(), Some(DM));
    assert_eq!(
        calls[0].param("thread_ts").as_deref(),
        Some("1710000000.000900")
    );
    assert_eq!(
        calls[0].params["prompts"],
        json!([
            {"title": "Summarize", "message": "Summarize this channel"},
            {"title": "Explain", "message": "Explain Socket Mode"},
        ])
    );

    // The agent view: the DM's Messages tab opened; no thread, so no `thread_ts`.
    let opened = |tab: &str| {
        callback(json!({
            "type": "app_home_opened",
            "user": "U1",
            "channel": DM,
            "tab": tab,
            "event_ts": "1710000000.000902",
        }))
    };
    socket.send_event(opened("messages"));
    let calls = s
        .slack
        .wait_for("assistant.threads.setSuggestedPrompts", 2, WAIT)
        .await;
    assert_eq!(calls[1].param("channel_id").as_deref(), Some(DM));
    assert!(!calls[1].params.contains_key("thread_ts"), "{:?}", calls[1]);
    // The Home tab is not the DM.
    socket.send_event(opened("home"));
    s.slack
        .assert_stays("assistant.threads.setSuggestedPrompts", 2, QUIET)
        .await;
    assert!(s.app.agent.requests().is_empty(), "no agent call");
    assert!(s.slack.calls_of("chat.postMessage").is_empty());
    s.app.shutdown().await;
}

#[tokio::test]
async fn the_first_question_of_a_dm_thread_becomes_its_title() {
    let s = Setup::start(&[]).await;
    s.connected(2).await;
    let socket = s.slack.socket();
    let question =
        "How do I move my Slack app from the Events API to Socket Mode without downtime?";
    let first = EventBuilder::message_im(question).thread("1710000000.000500");

    socket.send_event(first.envelope());

    let titles = s
        .slack
        .wait_for("assistant.threads.setTitle", 1, WAIT)
        .await;
    assert_eq!(titles[0].param("channel_id").as_deref(), Some(DM));
    assert_eq!(
        titles[0].param("thread_ts").as_deref(),
        Some("1710000000.000500")
    );
    let title = titles[0].param("title").unwrap();
    assert!(title.chars().count() <= 60, "{title}");
    assert!(title.starts_with("How do I move my Slack app"), "{title}");
    s.slack.wait_for("chat.postMessage", 1, WAIT).await;

    // A follow-up in the same thread keeps the title.
    let next = EventBuilder::message_im("and back?").thread("1710000000.000500");
    socket.send_event(next.envelope());
    s.slack.wait_for("chat.postMessage", 2, WAIT).await;
    s.slack
        .assert_stays("assistant.threads.setTitle", 1, QUIET)
        .await;
    s.app.shutdown().await;
}
