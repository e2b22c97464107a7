//! Slack end to end: signed Events API requests into the real HTTP server, the relay
//! and the fake agent, and replies through the slack-morphism client into the fake
//! Slack Web API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::slack::{
    now_unix, signed, signed_at, EventBuilder, FakeSlack, BOT_USER, DM, TEAM,
};
use crate::support::{stored_events, TestApp};

const SECRET: &str = "test-signing-secret-0123456789";
const ERROR_REPLY: &str = "Sorry, I encountered an error processing your request.";
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);

struct Setup {
    app: TestApp,
    slack: FakeSlack,
}

impl Setup {
    async fn start() -> Setup {
        Self::with(&[]).await
    }

    async fn with(vars: &[(&str, &str)]) -> Setup {
        let slack = FakeSlack::start().await;
        Self::with_slack(slack, vars).await
    }

    async fn with_slack(slack: FakeSlack, vars: &[(&str, &str)]) -> Setup {
        Self::on(slack, vars, None).await
    }

    /// `database`: a store that outlives this app (for restarts).
    async fn on(slack: FakeSlack, vars: &[(&str, &str)], database: Option<&str>) -> Setup {
        let mut builder = TestApp::builder()
            .var("SLACK_BOT_TOKEN", "xoxb-test")
            .var("SLACK_SIGNING_SECRET", SECRET)
            .var("SLACK_API_BASE", &slack.api_base())
            // The classic path (one post per answer, the reaction as progress);
            // streaming and the status have their own tests in `streaming`.
            .var("SLACK_STREAMING", "update")
            .var("SLACK_PROGRESS", "reaction");
        for (k, v) in vars {
            builder = builder.var(k, v);
        }
        if let Some(url) = database {
            builder = builder.database(url);
        }
        let app = builder.start().await;
        Setup { app, slack }
    }

    /// Waits until `n` turns have finished (answered, failed or a command), as
    /// `/metrics` counts them: after the answer is posted and the turn is recorded.
    async fn turns_done(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self
                .app
                .client
                .get(self.app.url("/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            let done: u64 = text
                .lines()
                .filter(|l| l.starts_with("bridge_turns_total{"))
                .filter(|l| {
                    ["answered", "failed", "command"]
                        .iter()
                        .any(|o| l.contains(&format!("\"{o}\"")))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} turns not done within {WAIT:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn events_url(&self) -> String {
        self.app.url("/slack/events")
    }

    /// Sends a correctly signed body; returns the status and the body as JSON (Null
    /// when empty).
    async fn send(&self, body: &str) -> (u16, Value) {
        let res = signed(&self.app.client, &self.events_url(), SECRET, body)
            .send()
            .await
            .expect("events request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn send_event(&self, ev: &EventBuilder) -> u16 {
        self.send(&ev.body()).await.0
    }

    async fn agent_calls_stay(&self, n: usize) {
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            self.app.agent.requests_to("/conversation").len(),
            n,
            "agent calls"
        );
    }

    async fn shutdown(self) {
        self.app.shutdown().await;
    }
}

#[tokio::test]
async fn an_app_mention_in_a_channel_gets_one_threaded_reply_in_mrkdwn() {
    let s = Setup::start().await;
    s.app
        .agent
        .set_answer_text("**Hello** from [the docs](https://example.com/a?b=1&c=2)\n- one\n- two");
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> what is up?"));

    assert_eq!(s.send_event(&ev).await, 200);

    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    let post = &posts[0];
    assert_eq!(post.param("channel").as_deref(), Some("C1"));
    assert_eq!(post.param("thread_ts").as_deref(), Some(ev.ts.as_str()));
    assert_eq!(
        post.text(),
        "*Hello* from <https://example.com/a?b=1&amp;c=2|the docs>\n• one\n• two"
    );
    assert_eq!(post.authorization.as_deref(), Some("Bearer xoxb-test"));
    let asked = s.app.agent.requests_to("/conversation");
    assert_eq!(
        asked[0].query(),
        Some("what is up?"),
        "the mention is stripped"
    );
    s.turns_done(1).await;
    s.slack.assert_stays("chat.postMessage", 1, QUIET).await;

    // The turn is recorded like any other: a `conversation` event with the transcript.
    let events = stored_events(&s.app.db_url, "conversation").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let data = events[0]["data"].to_string();
    assert!(data.contains("what is up?"), "{data}");
    assert!(data.contains("slack"), "{data}");
    assert!(data.contains(&ev.ts), "{data}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_direct_message_gets_a_reply() {
    let s = Setup::start().await;
    let ev = EventBuilder::message_im("hello bridge");

    assert_eq!(s.send_event(&ev).await, 200);

    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].param("channel").as_deref(), Some(DM));
    assert_eq!(posts[0].param("thread_ts").as_deref(), Some(ev.ts.as_str()));
    assert_eq!(posts[0].text(), "answer to: hello bridge");
    s.shutdown().await;
}

#[tokio::test]
async fn the_same_event_retried_three_times_is_answered_once() {
    let s = Setup::start().await;
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> once please"));
    let body = ev.body();

    assert_eq!(s.send(&body).await.0, 200);
    for retry in 1..=3 {
        let res = signed(&s.app.client, &s.events_url(), SECRET, &body)
            .header("x-slack-retry-num", retry.to_string())
            .header("x-slack-retry-reason", "http_timeout")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "retry {retry} is acknowledged");
    }

    s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    s.slack.assert_stays("chat.postMessage", 1, QUIET).await;
    s.agent_calls_stay(1).await;
    s.shutdown().await;
}

#[tokio::test]
async fn an_app_mention_and_its_message_event_are_answered_once() {
    // `all` makes the `message` event answerable on its own, so only the per-message
    // dedupe key keeps the pair to one answer.
    let s = Setup::with(&[("SLACK_RESPOND_TO", "all")]).await;
    let mention = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> pair"));
    let message = mention.as_message_event();

    let (a, b) = tokio::join!(s.send_event(&mention), s.send_event(&message));
    assert_eq!((a, b), (200, 200));

    s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    s.slack.assert_stays("chat.postMessage", 1, QUIET).await;
    s.agent_calls_stay(1).await;
    s.shutdown().await;
}

#[tokio::test]
async fn with_respond_to_mentions_the_pair_is_answered_once_through_app_mention() {
    let s = Setup::start().await;
    let mention = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> pair"));
    let message = mention.as_message_event();

    assert_eq!(s.send_event(&message).await, 200);
    assert_eq!(s.send_event(&mention).await, 200);

    s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    s.slack.assert_stays("chat.postMessage", 1, QUIET).await;
    s.shutdown().await;
}

#[tokio::test]
async fn bad_signature_stale_timestamp_and_missing_headers_get_401_and_no_agent_call() {
    let s = Setup::start().await;
    let body = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> hi")).body();
    let url = s.events_url();
    let client = &s.app.client;

    let wrong_secret = signed(client, &url, "not-the-secret", &body);
    let stale = signed_at(client, &url, SECRET, &body, now_unix() - 6 * 60);
    let future = signed_at(client, &url, SECRET, &body, now_unix() + 6 * 60);
    let tampered = signed(client, &url, SECRET, &body).body(body.replace("hi", "ho"));
    let ts = now_unix().to_string();
    let no_signature = client
        .post(&url)
        .header("x-slack-request-timestamp", &ts)
        .body(body.clone());
    let no_timestamp = client
        .post(&url)
        .header(
            "x-slack-signature",
            crate::support::slack::sign(SECRET, &ts, &body),
        )
        .body(body.clone());
    let nothing = client.post(&url).body(body.clone());

    for (name, request) in [
        ("wrong secret", wrong_secret),
        ("stale", stale),
        ("future", future),
        ("tampered body", tampered),
        ("no signature", no_signature),
        ("no timestamp", no_timestamp),
        ("no headers", nothing),
    ] {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 401, "{name}");
        let json: Value = res.json().await.unwrap();
        assert!(json["error"].is_string(), "{name}: {json}");
    }

    s.agent_calls_stay(0).await;
    assert!(s.slack.calls_of("chat.postMessage").is_empty());
    let metrics = s
        .app
        .client
        .get(s.app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "bridge_slack_signatures_refused_total 7"),
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_ack_returns_before_a_slow_agent_answers() {
    let s = Setup::start().await;
    s.app.agent.hang(true);
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> slow one"));

    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(2), s.send_event(&ev))
        .await
        .expect("the ack does not wait for the agent");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    s.app.agent.wait_for_requests(1, WAIT).await;
    assert!(s.slack.calls_of("chat.postMessage").is_empty());

    s.app.agent.hang(false);
    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].text(), "answer to: slow one");
    s.shutdown().await;
}

#[tokio::test]
async fn session_scope_thread_keeps_one_session_per_thread() {
    let s = Setup::with(&[("SESSION_SCOPE", "thread")]).await;
    let first = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> thread one"));
    let second = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> thread two"));
    let again =
        EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> one again")).thread(&first.ts);

    s.send_event(&first).await;
    s.turns_done(1).await;
    s.send_event(&second).await;
    s.turns_done(2).await;
    s.send_event(&again).await;
    s.turns_done(3).await;
    let posts = s.slack.calls_of("chat.postMessage");

    let calls = s.app.agent.requests_to("/conversation");
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].session_id, None, "thread one starts a session");
    assert_eq!(
        calls[1].session_id, None,
        "thread two starts its own session"
    );
    let sessions: Vec<Value> = stored_events(&s.app.db_url, "conversation")
        .await
        .iter()
        .map(|e| e["data"]["session_id"].clone())
        .collect();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_ne!(sessions[0], sessions[1], "two threads, two sessions");
    assert_eq!(
        calls[2].session_id.as_deref(),
        sessions[0].as_str(),
        "a later turn in thread one continues its session"
    );
    assert_eq!(
        posts[2].param("thread_ts").as_deref(),
        Some(first.ts.as_str())
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_follow_up_in_an_answered_thread_is_answered_without_a_mention() {
    let s = Setup::start().await;
    let mention = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> start"));
    s.send_event(&mention).await;
    s.turns_done(1).await;

    let follow_up = EventBuilder::message_thread("C1", &mention.ts, "and then?");
    assert_eq!(s.send_event(&follow_up).await, 200);

    let posts = s.slack.wait_for("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts[1].text(), "answer to: and then?");
    assert_eq!(
        posts[1].param("thread_ts").as_deref(),
        Some(mention.ts.as_str())
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_reply_in_a_thread_the_bot_never_joined_is_not_answered() {
    let s = Setup::start().await;
    let parent = crate::support::slack::next_ts();
    let stranger = EventBuilder::message_thread("C1", &parent, "talking among ourselves");
    let plain = EventBuilder::message_channel("C1", "no mention here");

    assert_eq!(s.send_event(&stranger).await, 200);
    assert_eq!(s.send_event(&plain).await, 200);

    s.agent_calls_stay(0).await;
    assert!(s.slack.calls_of("chat.postMessage").is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn a_followed_thread_survives_a_restart() {
    let slack = FakeSlack::start().await;
    let (_dir, db) = crate::support::db::sqlite_file_url().await;
    let s = Setup::on(slack.clone(), &[], Some(&db)).await;
    let mention = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> remember me"));
    s.send_event(&mention).await;
    s.turns_done(1).await;
    s.shutdown().await;

    let restarted = Setup::on(slack.clone(), &[], Some(&db)).await;
    let follow_up = EventBuilder::message_thread("C1", &mention.ts, "still there?");
    assert_eq!(restarted.send_event(&follow_up).await, 200);

    let posts = slack.wait_for("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts[1].text(), "answer to: still there?");
    restarted.shutdown().await;
}

/// Whether the store holds a live followed-thread sighting for `(channel, thread_ts)`.
async fn thread_sighted(db: &str, channel: &str, thread_ts: &str) -> bool {
    use agent_bridge::core::ports::Sightings;
    let store = agent_bridge::store::connect(db).await.unwrap();
    store
        .seen(&agent_bridge::slack::dedupe::thread_key(channel, thread_ts))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_thread_opened_under_an_answered_mention_is_followed_through_the_journal() {
    let slack = FakeSlack::start().await;
    let (_dir, db) = crate::support::db::sqlite_file_url().await;
    let s = Setup::on(slack.clone(), &[], Some(&db)).await;
    // Opened by the answer: the mention's journal row marks the thread.
    let mention = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> open a thread"));
    s.send_event(&mention).await;
    // Joined by a mention inside someone else's thread: that needs a sighting.
    let parent = crate::support::slack::next_ts();
    let joined = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> join in")).thread(&parent);
    s.send_event(&joined).await;
    s.turns_done(2).await;
    s.shutdown().await;
    assert!(!thread_sighted(&db, "C1", &mention.ts).await);
    assert!(thread_sighted(&db, "C1", &parent).await);

    let restarted = Setup::on(slack.clone(), &[], Some(&db)).await;
    let in_opened = EventBuilder::message_thread("C1", &mention.ts, "still there?");
    let in_joined = EventBuilder::message_thread("C1", &parent, "and here?");
    assert_eq!(restarted.send_event(&in_opened).await, 200);
    assert_eq!(restarted.send_event(&in_joined).await, 200);
    let posts = slack.wait_for("chat.postMessage", 4, WAIT).await;
    let answered: Vec<(String, Option<String>)> = posts[2..]
        .iter()
        .map(|p| (p.text(), p.param("thread_ts")))
        .collect();
    assert!(answered.contains(&("answer to: still there?".into(), Some(mention.ts.clone()))));
    assert!(answered.contains(&("answer to: and here?".into(), Some(parent.clone()))));
    restarted.shutdown().await;
}

#[tokio::test]
async fn with_a_retention_shorter_than_a_followed_thread_every_thread_gets_its_sighting() {
    let slack = FakeSlack::start().await;
    let (_dir, db) = crate::support::db::sqlite_file_url().await;
    let vars = [("TRANSCRIPT_RETENTION_DAYS", "7")];
    let s = Setup::on(slack.clone(), &vars, Some(&db)).await;
    let mention = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> keep it short"));
    s.send_event(&mention).await;
    s.turns_done(1).await;
    s.shutdown().await;
    // The journal row goes after 7 days; the thread is followed for 30.
    assert!(thread_sighted(&db, "C1", &mention.ts).await);
}

#[tokio::test]
async fn a_thread_marked_under_the_old_key_layout_is_still_followed() {
    use agent_bridge::core::ports::Sightings;
    let s = Setup::start().await;
    // Before keys started with the ts, a followed thread was `slack:thread:{channel}:{ts}`.
    let store = agent_bridge::store::connect(&s.app.db_url).await.unwrap();
    let thread_ts = "1600000000.000100";
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    assert!(store
        .first_sighting(&format!("slack:thread:C7:{thread_ts}"), later)
        .await
        .unwrap());

    let follow_up = EventBuilder::message_thread("C7", thread_ts, "from before the upgrade");
    assert_eq!(s.send_event(&follow_up).await, 200);
    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].text(), "answer to: from before the upgrade");
    assert_eq!(posts[0].param("thread_ts").as_deref(), Some(thread_ts));
    s.shutdown().await;
}

#[tokio::test]
async fn agent_text_that_could_ping_or_link_arrives_escaped() {
    let s = Setup::start().await;
    s.app
        .agent
        .set_answer_text("<!channel> & <b> <@U999> <https://evil.example|click>");
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> say it"));

    s.send_event(&ev).await;

    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    let text = posts[0].text();
    assert!(
        text.starts_with("&lt;!channel&gt; &amp; &lt;b&gt; &lt;@U999&gt;"),
        "{text}"
    );
    assert!(!text.contains("<!") && !text.contains("<@"), "{text}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_429_from_chat_post_message_is_waited_out_and_the_reply_arrives() {
    let s = Setup::start().await;
    s.slack.rate_limit("chat.postMessage", 1, 1);
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> busy slack"));

    s.send_event(&ev).await;

    let posts = s.slack.wait_for("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts[1].text(), "answer to: busy slack");
    let waited = posts[1].at.duration_since(posts[0].at);
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 is honoured, waited {waited:?}"
    );
    s.slack.assert_stays("chat.postMessage", 2, QUIET).await;
    assert!(stored_events(&s.app.db_url, "reply.failed")
        .await
        .is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn the_progress_reaction_goes_on_while_the_agent_works_and_comes_off_after() {
    let s = Setup::start().await;
    s.app.agent.hang(true);
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> think"));

    s.send_event(&ev).await;
    let added = s.slack.wait_for("reactions.add", 1, WAIT).await;
    assert_eq!(added[0].param("name").as_deref(), Some("eyes"));
    assert_eq!(added[0].param("channel").as_deref(), Some("C1"));
    assert_eq!(added[0].param("timestamp").as_deref(), Some(ev.ts.as_str()));
    assert!(
        s.slack.calls_of("reactions.remove").is_empty(),
        "still working"
    );

    s.app.agent.hang(false);
    let removed = s.slack.wait_for("reactions.remove", 1, WAIT).await;
    assert_eq!(removed[0].param("name").as_deref(), Some("eyes"));
    assert_eq!(
        removed[0].param("timestamp").as_deref(),
        Some(ev.ts.as_str())
    );
    let order: Vec<String> = s
        .slack
        .calls()
        .into_iter()
        .map(|c| c.method)
        .filter(|m| m != "auth.test")
        .collect();
    assert_eq!(
        order,
        ["reactions.add", "chat.postMessage", "reactions.remove"]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_quick_answer_gets_no_progress_reaction_unless_the_delay_is_zero() {
    // Default delay (500 ms): the fake agent answers at once, so no reaction at all.
    let s = Setup::start().await;
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> quick"));
    assert_eq!(s.send_event(&ev).await, 200);
    s.turns_done(1).await;
    let methods = |s: &Setup| -> Vec<String> {
        s.slack
            .calls()
            .into_iter()
            .map(|c| c.method)
            .filter(|m| m != "auth.test")
            .collect()
    };
    assert_eq!(methods(&s), ["chat.postMessage"]);
    s.shutdown().await;

    // SLACK_PROGRESS_REACTION_DELAY_MS=0: on at once, off after the answer.
    let s = Setup::with(&[("SLACK_PROGRESS_REACTION_DELAY_MS", "0")]).await;
    assert_eq!(s.send_event(&ev).await, 200);
    s.turns_done(1).await;
    assert_eq!(
        methods(&s),
        ["reactions.add", "chat.postMessage", "reactions.remove"]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn with_every_slot_taken_the_ack_waits_for_one_then_answers_busy() {
    // One agent call in flight + a queue of 8: nine turns fill every slot.
    let s = Setup::with(&[("AGENT_MAX_CONCURRENCY", "1")]).await;
    s.app.agent.hang(true);
    for i in 0..9 {
        let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> fill {i}"));
        assert_eq!(s.send_event(&ev).await, 200);
    }
    s.app
        .agent
        .wait_for_requests_to("/conversation", 1, WAIT)
        .await;

    // The tenth is held (backpressure) until a slot frees: here one does, so it is
    // queued and answered like any other.
    let waiting = EventBuilder::app_mention("C2", &format!("<@{BOT_USER}> patient"));
    let started = Instant::now();
    let (status, ()) = tokio::join!(s.send_event(&waiting), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.app.agent.hang(false);
    });
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the ack waited for room"
    );
    s.turns_done(10).await;
    let texts: Vec<String> = s
        .slack
        .calls_of("chat.postMessage")
        .iter()
        .map(|c| c.text())
        .collect();
    assert!(
        texts.contains(&"answer to: patient".to_string()),
        "{texts:?}"
    );
    assert!(
        !texts.iter().any(|t| t.contains("a lot of requests")),
        "{texts:?}"
    );

    // Full again and nothing frees within the wait: 200 after ~1 s, and the busy
    // answer in the thread.
    s.app.agent.hang(true);
    for i in 0..9 {
        let ev = EventBuilder::app_mention("C3", &format!("<@{BOT_USER}> refill {i}"));
        assert_eq!(s.send_event(&ev).await, 200);
    }
    let refused = EventBuilder::app_mention("C4", &format!("<@{BOT_USER}> too many"));
    let started = Instant::now();
    assert_eq!(s.send_event(&refused).await, 200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let posts = s.slack.wait_for("chat.postMessage", 11, WAIT).await;
    let busy = posts.last().expect("a post");
    assert_eq!(busy.param("channel").as_deref(), Some("C4"));
    assert_eq!(
        busy.param("thread_ts").as_deref(),
        Some(refused.ts.as_str())
    );
    assert!(busy.text().contains("a lot of requests"), "{}", busy.text());
    s.app.agent.hang(false);
    s.shutdown().await;
}

#[tokio::test]
async fn an_empty_progress_reaction_adds_none() {
    let s = Setup::with(&[("SLACK_PROGRESS_REACTION", "")]).await;
    let ev = EventBuilder::message_im("quietly");
    s.send_event(&ev).await;
    s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert!(s.slack.calls_of("reactions.add").is_empty());
    assert!(s.slack.calls_of("reactions.remove").is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn an_agent_failure_gives_the_error_reply_in_the_thread() {
    let s = Setup::start().await;
    s.app.agent.push_response(500, r#"{"detail": "boom"}"#);
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> fail please")).thread("42.0");

    s.send_event(&ev).await;

    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].text(), ERROR_REPLY);
    assert_eq!(posts[0].param("thread_ts").as_deref(), Some("42.0"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_slack_api_error_on_post_is_recorded_as_a_failed_reply() {
    let s = Setup::start().await;
    s.slack.fail("chat.postMessage", "not_in_channel");
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> hello"));

    s.send_event(&ev).await;

    s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let failed = stored_events(&s.app.db_url, "reply.failed").await;
        if let Some(event) = failed.first() {
            assert!(
                event["data"].to_string().contains("not_in_channel"),
                "{event}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no reply.failed event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_long_answer_is_split_into_several_posts_in_the_thread() {
    let s = Setup::start().await;
    let paragraph = "word ".repeat(300);
    s.app
        .agent
        .set_answer_text([paragraph.trim(); 6].join("\n\n"));
    let ev = EventBuilder::message_im("long please");

    s.send_event(&ev).await;

    let posts = s.slack.wait_for("chat.postMessage", 3, WAIT).await;
    s.slack.assert_stays("chat.postMessage", 3, QUIET).await;
    for post in &posts {
        assert!(post.text().chars().count() <= 3900);
        assert_eq!(post.param("thread_ts").as_deref(), Some(ev.ts.as_str()));
    }
    s.shutdown().await;
}

#[tokio::test]
async fn url_verification_is_answered_with_its_challenge() {
    let s = Setup::start().await;
    let body = json!({
        "token": "unused",
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
        "type": "url_verification"
    })
    .to_string();

    let (status, json) = s.send(&body).await;

    assert_eq!(status, 200);
    assert_eq!(
        json,
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    s.shutdown().await;
}

#[tokio::test]
async fn ssl_check_is_answered_200() {
    let s = Setup::start().await;
    let form = "ssl_check=1&token=unused";
    let res = signed(&s.app.client, &s.events_url(), SECRET, form)
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, _) = s.send(&json!({"type": "ssl_check"}).to_string()).await;
    assert_eq!(status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn malformed_json_gets_400() {
    let s = Setup::start().await;
    for body in ["{not json", "[]", r#"{"no_type": true}"#] {
        let (status, json) = s.send(body).await;
        assert_eq!(status, 400, "{body}");
        assert!(json["error"].is_string(), "{body}: {json}");
    }
    let (status, _) = s
        .send(&json!({"type": "event_callback", "event_id": "Ev1"}).to_string())
        .await;
    assert_eq!(status, 400, "an event_callback without its event");
    s.shutdown().await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_gets_413() {
    let s = Setup::start().await;
    let big = format!(
        r#"{{"type": "event_callback", "padding": "{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let (status, json) = s.send(&big).await;
    assert_eq!(status, 413);
    assert!(json["error"].is_string(), "{json}");
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_types_get_200_and_are_ignored() {
    let s = Setup::start().await;
    let (status, _) = s
        .send(&json!({"type": "something_new", "team_id": TEAM}).to_string())
        .await;
    assert_eq!(status, 200);
    let mut reaction = EventBuilder::message_channel("C1", "");
    reaction.kind = "reaction_added".into();
    assert_eq!(s.send_event(&reaction).await, 200);

    s.agent_calls_stay(0).await;
    assert!(s.slack.calls_of("chat.postMessage").is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn bot_messages_own_messages_and_edits_are_ignored() {
    let s = Setup::with(&[("SLACK_RESPOND_TO", "all")]).await;
    let bot = EventBuilder::bot_message("C1", "beep boop");
    let own = EventBuilder::message_channel("C1", "my own words").user(BOT_USER);
    let edit = EventBuilder::message_im("edited").subtype("message_changed");
    let join = EventBuilder::message_channel("C1", "<@U1> has joined").subtype("channel_join");
    let mut own_mention = EventBuilder::app_mention("C1", "self talk").user(BOT_USER);
    own_mention.bot_id = Some(crate::support::slack::BOT_ID.into());

    for ev in [&bot, &own, &edit, &join, &own_mention] {
        assert_eq!(s.send_event(ev).await, 200, "{:?}", ev.kind);
    }

    s.agent_calls_stay(0).await;
    assert!(s.slack.calls_of("chat.postMessage").is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn readyz_shows_slack_up_after_auth_test() {
    let s = Setup::start().await;
    let auth = s.slack.wait_for("auth.test", 1, WAIT).await;
    assert_eq!(auth[0].authorization.as_deref(), Some("Bearer xoxb-test"));

    let res = s.app.client.get(s.app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let json: Value = res.json().await.unwrap();
    assert_eq!(json["parts"]["slack"], "up", "{json}");
    s.shutdown().await;
}

#[tokio::test]
async fn events_before_auth_test_succeeds_get_503_then_slack_comes_up() {
    let slack = FakeSlack::start().await;
    slack.fail("auth.test", "invalid_auth");
    let s = Setup::with_slack(slack, &[]).await;
    let ev = EventBuilder::message_im("too early");

    let res = s.app.client.get(s.app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.json::<Value>().await.unwrap()["parts"]["slack"], "down");
    assert_eq!(s.send_event(&ev).await, 503, "Slack should retry later");

    s.slack.clear_failure("auth.test");
    s.slack.wait_for("auth.test", 2, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let res = s.app.client.get(s.app.url("/readyz")).send().await.unwrap();
        if res.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "Slack never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Slack's retry of the refused event is now answered: it was never marked seen.
    let retry = signed(&s.app.client, &s.events_url(), SECRET, &ev.body())
        .header("x-slack-retry-num", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].text(), "answer to: too early");
    s.shutdown().await;
}

#[tokio::test]
async fn events_while_shutting_down_get_503() {
    let s = Setup::start().await;
    s.app.relay.close();
    let ev = EventBuilder::message_im("late");
    assert_eq!(s.send_event(&ev).await, 503);
    s.agent_calls_stay(0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn blocked_users_and_channels_outside_allowed_channels_get_no_answer() {
    let s = Setup::with(&[("BLOCKED_USERS", "U666"), ("ALLOWED_CHANNELS", "C1,D1")]).await;
    let blocked = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> hi")).user("U666");
    assert_eq!(s.send_event(&blocked).await, 200);
    let elsewhere = EventBuilder::app_mention("C2", &format!("<@{BOT_USER}> hi"));
    assert_eq!(s.send_event(&elsewhere).await, 200);
    s.agent_calls_stay(0).await;
    let allowed = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> hi"));
    assert_eq!(s.send_event(&allowed).await, 200);
    let posts = s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].param("channel").as_deref(), Some("C1"));
    s.slack.assert_stays("chat.postMessage", 1, QUIET).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_user_over_the_rate_limit_is_told_so_in_the_thread() {
    let s = Setup::with(&[("USER_RATE_LIMIT", "1/min")]).await;
    for text in ["one", "two"] {
        let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> {text}"));
        assert_eq!(s.send_event(&ev).await, 200);
    }
    let posts = s.slack.wait_for("chat.postMessage", 2, WAIT).await;
    let texts: Vec<_> = posts.iter().map(|p| p.text()).collect();
    assert!(
        texts.iter().any(|t| t.contains("answer to: one")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("faster than I can answer")),
        "{texts:?}"
    );
    s.agent_calls_stay(1).await;
    s.shutdown().await;
}

#[tokio::test]
async fn events_for_another_workspace_or_app_are_acknowledged_and_ignored() {
    let s = Setup::with(&[("SLACK_APP_ID", "A1")]).await;
    let mention = |text: &str| EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> {text}"));

    let mut other_team = mention("other team").envelope();
    other_team["team_id"] = json!("T-OTHER");
    other_team["authorizations"] = json!([{"team_id": "T-OTHER", "user_id": "U9"}]);
    other_team["authorizations"][0]["team_id"] = json!("T-ELSE");
    let mut other_app = mention("other app").envelope();
    other_app["api_app_id"] = json!("A2");
    let mut no_app = mention("no app").envelope();
    no_app.as_object_mut().unwrap().remove("api_app_id");
    for (name, envelope) in [
        ("other team", other_team),
        ("other app", other_app),
        ("no app id", no_app),
    ] {
        let (status, _) = s.send(&envelope.to_string()).await;
        assert_eq!(status, 200, "{name}");
    }
    s.agent_calls_stay(0).await;

    // A workspace the app is authorized in (Enterprise Grid, shared channels) is fine.
    let mut shared_team = mention("shared").envelope();
    shared_team["team_id"] = json!("T2");
    shared_team["authorizations"] = json!([{"team_id": "T2", "user_id": BOT_USER}]);
    let (status, _) = s.send(&shared_team.to_string()).await;
    assert_eq!(status, 200);
    s.slack.wait_for("chat.postMessage", 1, WAIT).await;
    s.shutdown().await;
}
