//! 👍/👎 on answers: the buttons under an answer's last message, clicks over
//! `POST /slack/interactivity` and Socket Mode `interactive` envelopes, one record per
//! user and answer (a second click changes it), the `feedback` event and the history.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::slack::{now_unix, sign, EventBuilder, FakeSlack, APP_TOKEN, BOT_USER, TEAM};
use crate::support::{stored_events, TestApp, TOKEN};

const SECRET: &str = "test-signing-secret-0123456789";
const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

async fn start(slack: &FakeSlack, vars: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder()
        .var("SLACK_BOT_TOKEN", "xoxb-test")
        .var("SLACK_API_BASE", &slack.api_base())
        .var("SLACK_PROGRESS", "none");
    for (k, v) in vars {
        builder = builder.var(k, v);
    }
    builder.start().await
}

/// The `value`s of the feedback buttons in `blocks`, if any.
fn button_values(blocks: &Value) -> Option<(String, String)> {
    let actions = blocks
        .as_array()?
        .iter()
        .find(|b| b["type"] == "context_actions")?;
    let buttons = actions["elements"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "feedback_buttons")?;
    assert_eq!(buttons["action_id"], "feedback");
    Some((
        buttons["positive_button"]["value"].as_str()?.to_owned(),
        buttons["negative_button"]["value"].as_str()?.to_owned(),
    ))
}

/// A `block_actions` payload as Slack sends it for a click on a feedback button.
fn click(user: &str, channel: &str, message_ts: &str, thread_ts: &str, value: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user, "team_id": TEAM},
        "team": {"id": TEAM},
        "api_app_id": "A1",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": false,
            "thread_ts": thread_ts,
        },
        "channel": {"id": channel},
        "message": {"ts": message_ts, "thread_ts": thread_ts},
        "actions": [{
            "type": "feedback_buttons",
            "action_id": "feedback",
            "block_id": "b1",
            "value": value,
            "action_ts": "1710000001.000001",
        }],
    })
}

/// POSTs `payload` to `/slack/interactivity` as Slack does: a signed form.
async fn post_click(app: &TestApp, payload: &Value) -> u16 {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let ts = now_unix().to_string();
    app.client
        .post(app.url("/slack/interactivity"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", sign(SECRET, &ts, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn feedback_events(app: &TestApp, n: usize) -> Vec<Value> {
    events_of(app, "feedback", n).await
}

/// Waits for `n` stored events of `kind` (a turn's are written after its post).
async fn events_of(app: &TestApp, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = stored_events(&app.db_url, kind).await;
        if events.len() >= n {
            return events;
        }
        assert!(Instant::now() < deadline, "{n} {kind} events: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn history(app: &TestApp, session: &str) -> Value {
    app.client
        .get(app.url(&format!("/sessions/{session}/history")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_feedback_click_over_the_events_api_is_recorded_once_and_can_change() {
    let slack = FakeSlack::start().await;
    let app = start(
        &slack,
        &[("SLACK_SIGNING_SECRET", SECRET), ("SLACK_STREAMING", "off")],
    )
    .await;
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> rate me"));
    let res =
        crate::support::slack::signed(&app.client, &app.url("/slack/events"), SECRET, &ev.body())
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);

    let posts = slack.wait_for("chat.postMessage", 1, WAIT).await;
    let post = &posts[0];
    assert_eq!(
        post.text(),
        "answer to: rate me",
        "the text stays the fallback"
    );
    let blocks = &post.params["blocks"];
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["text"], "answer to: rate me");
    let (up, down) = button_values(blocks).expect("feedback buttons");
    let turn_id = up.strip_suffix(":up").expect("{turn_id}:up").to_owned();
    assert_eq!(down, format!("{turn_id}:down"));
    let conversation = events_of(&app, "conversation", 1).await;
    assert_eq!(conversation[0]["data"]["turn_id"], turn_id.as_str());

    // The answer's ts, as Slack would name the clicked message.
    let answer_ts = "1700000000.000100";
    let payload = click("U2", "C1", answer_ts, &ev.ts, &up);
    assert_eq!(post_click(&app, &payload).await, 200);
    let events = feedback_events(&app, 1).await;
    let data = &events[0]["data"];
    assert_eq!(data["turn_id"], turn_id.as_str());
    assert_eq!(data["user"], "U2");
    assert_eq!(data["value"], "positive");
    assert_eq!(data["conversation"], "slack/T1/C1");
    let session = data["session_id"].as_str().expect("session id").to_owned();

    // The same click again changes nothing; the other button changes the value.
    assert_eq!(post_click(&app, &payload).await, 200);
    tokio::time::sleep(QUIET).await;
    assert_eq!(stored_events(&app.db_url, "feedback").await.len(), 1);
    assert_eq!(
        post_click(&app, &click("U2", "C1", answer_ts, &ev.ts, &down)).await,
        200
    );
    let events = feedback_events(&app, 2).await;
    assert_eq!(events[1]["data"]["value"], "negative");

    let history = history(&app, &session).await;
    let answer = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the answer")
        .clone();
    assert_eq!(
        answer["feedback"],
        json!([{"user_id": "U2", "value": "negative"}]),
        "{answer}"
    );
    let question = &history["messages"][0];
    assert!(question.get("feedback").is_none(), "{question}");

    // Unsigned clicks are refused like events.
    let res = app
        .client
        .post(app.url("/slack/interactivity"))
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    app.shutdown().await;
}

#[tokio::test]
async fn a_feedback_click_arrives_as_an_interactive_envelope_in_socket_mode() {
    let slack = FakeSlack::start().await;
    let app = start(
        &slack,
        &[
            ("SLACK_APP_TOKEN", APP_TOKEN),
            ("SLACK_STREAMING", "native"),
        ],
    )
    .await;
    let socket = slack.socket();
    socket
        .wait(WAIT, "2 connections", |s| s.open_conns().len() >= 2)
        .await;
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> streamed"));
    socket.send_event(ev.envelope());

    // Native streaming: the buttons ride on chat.stopStream.
    let stops = slack.wait_for("chat.stopStream", 1, WAIT).await;
    let (up, _) = button_values(&stops[0].params["blocks"]).expect("buttons on stopStream");
    let stream_ts = stops[0].param("ts").unwrap();
    let envelope = socket.send_envelope(
        socket.open_conns()[0],
        "interactive",
        click("U3", "C1", &stream_ts, &ev.ts, &up),
    );

    let events = feedback_events(&app, 1).await;
    assert_eq!(events[0]["data"]["value"], "positive");
    assert_eq!(events[0]["data"]["user"], "U3");
    // The ack went out before the click was recorded, but the fake reads it on its
    // own task: it may land a moment after the event is stored.
    socket
        .wait(WAIT, "the click's envelope acknowledged", |s| {
            s.acks().iter().any(|a| a.envelope_id == envelope)
        })
        .await;
    app.shutdown().await;
}

#[tokio::test]
async fn feedback_buttons_off_posts_plain_text() {
    let slack = FakeSlack::start().await;
    let app = start(
        &slack,
        &[
            ("SLACK_SIGNING_SECRET", SECRET),
            ("SLACK_STREAMING", "update"),
            ("FEEDBACK_BUTTONS", "false"),
        ],
    )
    .await;
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> no buttons"));
    crate::support::slack::signed(&app.client, &app.url("/slack/events"), SECRET, &ev.body())
        .send()
        .await
        .unwrap();
    let posts = slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert!(posts[0].params.get("blocks").is_none(), "{:?}", posts[0]);
    tokio::time::sleep(QUIET).await;
    assert!(slack
        .calls_of("chat.update")
        .iter()
        .all(|c| c.params.get("blocks").is_none()));
    app.shutdown().await;
}

/// The feedback table on both back-ends: once per (turn, user), a repeat changes
/// nothing, the other value replaces it, lookups by message.
async fn feedback_store_contract(store: &agent_bridge::store::SqlStore) {
    use agent_bridge::core::ports::{FeedbackClick, FeedbackStore};
    use agent_bridge::core::Platform;
    let click = |user: &str, positive: bool| FeedbackClick {
        turn_id: "turn-1".into(),
        platform: Platform::Slack,
        workspace: "T1".into(),
        channel: "C1".into(),
        thread: Some("1.0".into()),
        user: user.into(),
        message_id: "1.5".into(),
        positive,
    };
    assert!(store.record_feedback(&click("U1", true)).await.unwrap());
    assert!(
        !store.record_feedback(&click("U1", true)).await.unwrap(),
        "a repeat"
    );
    assert!(
        store.record_feedback(&click("U1", false)).await.unwrap(),
        "a change"
    );
    assert!(store.record_feedback(&click("U2", true)).await.unwrap());
    let found = store
        .feedback_on("C1", &["1.5".to_owned(), "9.9".to_owned()])
        .await
        .unwrap();
    let mut got: Vec<(String, bool)> = found.iter().map(|f| (f.user.clone(), f.positive)).collect();
    got.sort();
    assert_eq!(got, [("U1".to_owned(), false), ("U2".to_owned(), true)]);
    assert!(store
        .feedback_on("C2", &["1.5".to_owned()])
        .await
        .unwrap()
        .is_empty());
    assert!(store.feedback_on("C1", &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_feedback_store_keeps_one_value_per_user_and_answer_on_both_back_ends() {
    let (_dir, url) = crate::support::db::sqlite_file_url().await;
    let store = agent_bridge::store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    feedback_store_contract(&store).await;

    let Some(pg) = crate::support::db::PgSchema::create().await else {
        return;
    };
    let store = agent_bridge::store::connect(&pg.url).await.unwrap();
    store.migrate().await.unwrap();
    feedback_store_contract(&store).await;
    store.close().await;
    pg.remove().await;
}

#[tokio::test]
async fn a_discord_answer_carries_the_buttons_and_a_click_is_acknowledged_and_recorded() {
    use crate::support::discord::FakeDiscord;
    const USER: &str = "3000000000000000001";
    let fake = FakeDiscord::start().await;
    let app = TestApp::builder()
        .var("DISCORD_TOKEN", "test-token")
        .var("DISCORD_API_BASE", &fake.url())
        .start()
        .await;
    fake.wait_ready(WAIT).await;

    fake.guild_message("2001", USER, &format!("{} rate this", fake.mention()))
        .await;
    let posts = fake.wait_messages(1, WAIT).await;
    let row = &posts[0].body["components"][0];
    assert_eq!(row["type"], 1, "an action row: {}", posts[0].body);
    let ids: Vec<&str> = row["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["custom_id"].as_str().unwrap())
        .collect();
    let up = ids[0].to_owned();
    let turn_id = up
        .strip_prefix("feedback:")
        .and_then(|r| r.strip_suffix(":up"))
        .expect("feedback:{turn_id}:up")
        .to_owned();
    assert_eq!(ids[1], format!("feedback:{turn_id}:down"));
    let answer_id = fake.bot_message_ids()[0].clone();
    // The turn is recorded just after its post; a click before that has no session.
    events_of(&app, "conversation", 1).await;

    let sent = fake
        .button_click("2001", &answer_id, "3000000000000000002", &up)
        .await;
    let callback = fake
        .wait_call(
            "POST",
            &format!("/interactions/{}/{}/callback", sent.id, sent.token),
            WAIT,
        )
        .await;
    assert_eq!(
        callback.body["type"], 6,
        "acknowledged without a new message"
    );
    let events = feedback_events(&app, 1).await;
    let data = &events[0]["data"];
    assert_eq!(data["turn_id"], turn_id.as_str());
    assert_eq!(data["user"], "3000000000000000002");
    assert_eq!(data["value"], "positive");
    assert_eq!(data["platform"], "discord");

    // The same user once more, then the other way: one record, changed.
    fake.button_click("2001", &answer_id, "3000000000000000002", &up)
        .await;
    fake.button_click(
        "2001",
        &answer_id,
        "3000000000000000002",
        &format!("feedback:{turn_id}:down"),
    )
    .await;
    let events = feedback_events(&app, 2).await;
    assert_eq!(events[1]["data"]["value"], "negative");
    tokio::time::sleep(QUIET).await;
    assert_eq!(stored_events(&app.db_url, "feedback").await.len(), 2);
    let session = data["session_id"].as_str().unwrap().to_owned();
    let history = history(&app, &session).await;
    let answer = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap()
        .clone();
    assert_eq!(
        answer["feedback"],
        json!([{"user_id": "3000000000000000002", "value": "negative"}])
    );
    app.shutdown().await;
}
