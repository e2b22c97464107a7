//! The conversation core end to end: relay → fake agent → sink → store.

use std::time::{Duration, Instant};

use agent_bridge::core::relay::{Rejected, BUSY_REPLY};
use agent_bridge::core::TurnOutcome;

use crate::support::agent::{dead_url, FakeAgent};
use crate::support::{core_on, db, msg, stored_events, RecordingSink, TestApp};

const ERROR_REPLY: &str = "Sorry, I encountered an error processing your request.";

#[tokio::test]
async fn first_turn_creates_a_session_and_the_second_reuses_it() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();

    assert_eq!(app.turn("C1", "hello", &sink).await, TurnOutcome::Answered);
    assert_eq!(app.turn("C1", "again", &sink).await, TurnOutcome::Answered);

    let calls = app.agent.requests_to("/conversation");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].session_id, None,
        "first turn lets the agent create a session"
    );
    let session = calls[1]
        .session_id
        .clone()
        .expect("second turn sends the session");
    assert!(uuid::Uuid::parse_str(&session).is_ok(), "{session}");
    assert_eq!(calls[0].query(), Some("hello"));
    assert_eq!(calls[0].max_results(), Some(3));
    assert_eq!(sink.texts(), ["answer to: hello", "answer to: again"]);
    assert_eq!(
        sink.calls()[0],
        "working",
        "work is shown before the answer"
    );
    assert_eq!(sink.calls().last().map(String::as_str), Some("finished"));
    app.shutdown().await;
}

#[tokio::test]
async fn reset_makes_the_next_turn_start_a_new_session() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C1", "one", &sink).await;
    app.turn("C1", "two", &sink).await;
    assert_eq!(app.turn("C1", "reset", &sink).await, TurnOutcome::Command);
    app.turn("C1", "three", &sink).await;

    let calls = app.agent.requests_to("/conversation");
    assert_eq!(calls.len(), 3, "the command never reaches the agent");
    let first = calls[1].session_id.clone().unwrap();
    assert_eq!(
        calls[2].session_id, None,
        "after reset the agent creates a new session"
    );
    assert!(
        sink.texts()[2].contains("new conversation"),
        "{:?}",
        sink.texts()
    );

    let resets = stored_events(&app.db_url, "session.reset").await;
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0]["data"]["previous_session_id"], first.as_str());
    assert_eq!(resets[0]["data"]["reason"], "command");
    app.shutdown().await;
}

#[tokio::test]
async fn personality_command_switches_later_turns() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C1", "personality", &sink).await;
    assert!(
        sink.texts()[0].contains("`pirate`"),
        "the list names the agent's personalities"
    );
    app.turn("C1", "personality pirate", &sink).await;
    app.turn("C1", "ahoy?", &sink).await;
    app.turn("C1", "personality ninja", &sink).await;
    app.turn("C1", "still a pirate?", &sink).await;

    let calls = app.agent.requests_to("/conversation");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].personality_id(), Some("pirate"));
    assert_eq!(
        calls[1].personality_id(),
        Some("pirate"),
        "an unknown id changes nothing"
    );
    assert!(
        sink.texts()[3].contains("don't know the personality `ninja`"),
        "{:?}",
        sink.texts()
    );

    let changes = stored_events(&app.db_url, "personality_change").await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["data"]["new"], "pirate");
    app.shutdown().await;
}

#[tokio::test]
async fn agent_personality_default_is_sent_until_a_conversation_chooses() {
    let app = TestApp::builder()
        .var("AGENT_PERSONALITY", "default")
        .var("AGENT_MAX_RESULTS", "7")
        .start()
        .await;
    let sink = RecordingSink::new();
    app.turn("C1", "hi", &sink).await;
    let calls = app.agent.requests_to("/conversation");
    assert_eq!(calls[0].personality_id(), Some("default"));
    assert_eq!(calls[0].max_results(), Some(7));
    app.shutdown().await;
}

#[tokio::test]
async fn empty_message_and_help_are_answered_by_the_bridge() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C1", "   ", &sink).await;
    app.turn("C1", "help", &sink).await;
    assert!(app.agent.requests().is_empty());
    assert!(
        sink.texts().iter().all(|t| t.contains("`reset`")),
        "{:?}",
        sink.texts()
    );
    app.shutdown().await;
}

async fn restart_keeps_the_session(db_url: &str) {
    let agent = FakeAgent::start().await;
    let app = TestApp::builder()
        .agent(agent.clone())
        .database(db_url)
        .start()
        .await;
    let sink = RecordingSink::new();
    app.turn("C1", "remember me", &sink).await;
    app.shutdown().await;
    let session = agent.requests_to("/conversation")[0].session_id.clone();
    assert_eq!(session, None);

    // A new process on the same database.
    let core = core_on(db_url, &agent.url()).await;
    let handle = core
        .relay
        .submit(msg("C1", "still there?"), sink.clone())
        .unwrap();
    assert_eq!(handle.outcome().await, TurnOutcome::Answered);
    let calls = agent.requests_to("/conversation");
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1].session_id.is_some(),
        "the restarted core resumes the agent session"
    );
}

#[tokio::test]
async fn a_restart_on_the_same_sqlite_file_keeps_the_session() {
    let (_dir, url) = db::sqlite_file_url().await;
    restart_keeps_the_session(&url).await;
}

#[tokio::test]
async fn a_restart_on_the_same_postgres_database_keeps_the_session() {
    let Some(pg) = db::PgSchema::create().await else {
        return;
    };
    restart_keeps_the_session(&pg.url).await;
    pg.remove().await;
}

#[tokio::test]
async fn turns_of_one_conversation_reach_the_agent_in_order_one_at_a_time() {
    let app = TestApp::spawn().await;
    app.agent.set_delay(Duration::from_millis(20));
    let sink = RecordingSink::new();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            app.relay
                .submit(msg("C1", &format!("m{i}")), sink.clone())
                .unwrap()
        })
        .collect();
    for h in handles {
        assert_eq!(h.outcome().await, TurnOutcome::Answered);
    }
    let queries: Vec<_> = app
        .agent
        .requests_to("/conversation")
        .iter()
        .map(|r| r.query().unwrap().to_string())
        .collect();
    let expected: Vec<_> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(queries, expected);
    assert_eq!(app.agent.max_in_flight(), 1);
    let texts = sink.texts();
    assert_eq!(
        texts,
        expected
            .iter()
            .map(|q| format!("answer to: {q}"))
            .collect::<Vec<_>>()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn turns_of_different_conversations_overlap() {
    let app = TestApp::spawn().await;
    let delay = Duration::from_millis(200);
    app.agent.set_delay(delay);
    let sink = RecordingSink::new();
    let started = Instant::now();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            app.relay
                .submit(msg(&format!("C{i}"), "hi"), sink.clone())
                .unwrap()
        })
        .collect();
    for h in handles {
        assert_eq!(h.outcome().await, TurnOutcome::Answered);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < delay * 5,
        "20 conversations took {elapsed:?}, not concurrent"
    );
    assert!(app.agent.max_in_flight() > 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_nothing_is_lost() {
    let app = TestApp::builder()
        .var("AGENT_MAX_CONCURRENCY", "2")
        .start()
        .await;
    app.agent.hang(true);
    let sink = RecordingSink::new();
    let mut accepted = vec![];
    let mut busy_at = None;
    for i in 0..100 {
        match app.relay.submit(msg(&format!("C{i}"), "hi"), sink.clone()) {
            Ok(h) => accepted.push(h),
            Err(Rejected::Busy) => {
                busy_at = Some(i);
                break;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(busy_at, Some(10), "2 in flight + a queue of 8, then busy");
    assert_eq!(
        sink.wait_texts(1, Duration::from_secs(5)).await,
        [BUSY_REPLY]
    );
    app.agent.wait_for_requests(2, Duration::from_secs(5)).await;
    assert_eq!(
        app.agent.in_flight(),
        2,
        "the bound holds while the agent hangs"
    );

    app.agent.hang(false);
    for h in accepted {
        assert_eq!(h.outcome().await, TurnOutcome::Answered);
    }
    assert!(
        app.relay.submit(msg("C0", "after"), sink.clone()).is_ok(),
        "the queue drains"
    );
    app.shutdown().await;
}

async fn failure_then_recovery(app: &TestApp, channel: &str) {
    let sink = RecordingSink::new();
    assert_eq!(
        app.turn(channel, "fail please", &sink).await,
        TurnOutcome::Failed
    );
    assert_eq!(sink.texts(), [ERROR_REPLY]);
    assert_eq!(
        app.turn(channel, "and now?", &sink).await,
        TurnOutcome::Answered
    );
    assert_eq!(sink.texts()[1], "answer to: and now?");
}

#[tokio::test]
async fn each_agent_failure_gives_the_error_reply_and_the_next_turn_works() {
    let app = TestApp::builder()
        .var("AGENT_TIMEOUT_SECS", "1")
        .start()
        .await;
    let cases: [(&str, u16, &str); 5] = [
        (
            "500 with detail",
            500,
            r#"{"detail":"Error in conversation: boom"}"#,
        ),
        ("400", 400, r#"{"detail":"bad request"}"#),
        ("non-JSON", 200, "<html>hello</html>"),
        (
            "missing response",
            200,
            r#"{"session_id":null,"sources":null}"#,
        ),
        ("non-string response", 200, r#"{"response":42}"#),
    ];
    for (i, (name, status, body)) in cases.iter().enumerate() {
        app.agent.push_response(*status, *body);
        eprintln!("case: {name}");
        failure_then_recovery(&app, &format!("F{i}")).await;
    }
    let failures = stored_events(&app.db_url, "reply.failed").await;
    assert_eq!(failures.len(), cases.len());
    assert!(
        failures[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("boom"),
        "{}",
        failures[0]
    );
    assert!(failures[0]["data"]["error"]
        .as_str()
        .unwrap()
        .contains("500"));

    // Timeout: the agent answers after the 1 s limit.
    app.agent.set_delay(Duration::from_millis(1500));
    let sink = RecordingSink::new();
    assert_eq!(app.turn("T", "slow", &sink).await, TurnOutcome::Failed);
    assert_eq!(sink.texts(), [ERROR_REPLY]);
    app.agent.set_delay(Duration::ZERO);
    assert_eq!(app.turn("T", "fast", &sink).await, TurnOutcome::Answered);
    app.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_agent_gives_the_error_reply() {
    let dead = dead_url().await;
    let app = TestApp::builder().var("AGENT_URL", &dead).start().await;
    let sink = RecordingSink::new();
    assert_eq!(app.turn("C1", "anyone?", &sink).await, TurnOutcome::Failed);
    assert_eq!(sink.texts(), [ERROR_REPLY]);
    let failures = stored_events(&app.db_url, "reply.failed").await;
    assert!(
        failures[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        failures[0]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_custom_error_reply_is_used() {
    let app = TestApp::builder()
        .var("ERROR_REPLY", "Agent is down, sorry!")
        .start()
        .await;
    app.agent.push_response(503, r#"{"detail":"overloaded"}"#);
    let sink = RecordingSink::new();
    app.turn("C1", "hi", &sink).await;
    assert_eq!(sink.texts(), ["Agent is down, sorry!"]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_post_is_recorded_as_reply_failed_but_keeps_the_session() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    *sink.fail_with.lock().unwrap() = Some("channel_not_found".into());
    assert_eq!(app.turn("C1", "hi", &sink).await, TurnOutcome::Failed);
    let failures = stored_events(&app.db_url, "reply.failed").await;
    assert_eq!(failures[0]["data"]["error"], "channel_not_found");
    *sink.fail_with.lock().unwrap() = None;
    app.turn("C1", "again", &sink).await;
    assert!(app.agent.requests_to("/conversation")[1]
        .session_id
        .is_some());
    app.shutdown().await;
}

#[tokio::test]
async fn every_turn_is_a_transcript_and_a_conversation_event() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C1", "hello", &sink).await;
    let turns = stored_events(&app.db_url, "conversation").await;
    assert_eq!(turns.len(), 1);
    let data = &turns[0]["data"];
    assert_eq!(data["platform"], "slack");
    assert_eq!(data["channel"], "C1");
    assert_eq!(data["user"], "U1");
    assert_eq!(data["query"], "hello");
    assert_eq!(data["response"], "answer to: hello");
    assert!(data["session_id"].is_string());
    assert_eq!(turns[0]["type"], "conversation");
    app.shutdown().await;
}

#[tokio::test]
async fn only_allowed_channels_are_answered_and_blocked_users_never() {
    let app = TestApp::builder()
        .var("ALLOWED_CHANNELS", "C1, D7")
        .var("BLOCKED_USERS", "U666")
        .start()
        .await;
    let sink = RecordingSink::new();
    assert_eq!(app.turn("C2", "hello?", &sink).await, TurnOutcome::Ignored);
    let mut blocked = msg("C1", "hi");
    blocked.user = "U666".into();
    let handle = app.relay.submit(blocked, sink.clone()).unwrap();
    assert_eq!(handle.outcome().await, TurnOutcome::Ignored);
    assert!(
        sink.texts().is_empty(),
        "nothing is posted for ignored messages"
    );
    assert_eq!(app.turn("C1", "hi", &sink).await, TurnOutcome::Answered);
    assert_eq!(app.turn("D7", "dm", &sink).await, TurnOutcome::Answered);
    assert_eq!(app.agent.requests_to("/conversation").len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_user_over_the_rate_limit_gets_a_polite_answer() {
    let app = TestApp::builder()
        .var("USER_RATE_LIMIT", "2/min")
        .start()
        .await;
    let sink = RecordingSink::new();
    assert_eq!(app.turn("C1", "one", &sink).await, TurnOutcome::Answered);
    assert_eq!(app.turn("C2", "two", &sink).await, TurnOutcome::Answered);
    assert_eq!(
        app.turn("C1", "three", &sink).await,
        TurnOutcome::RateLimited
    );
    assert_eq!(
        sink.texts()[2],
        agent_bridge::core::relay::RATE_LIMITED_REPLY
    );
    assert_eq!(app.agent.requests_to("/conversation").len(), 2);
    let mut other = msg("C1", "someone else");
    other.user = "U2".into();
    let handle = app.relay.submit(other, sink.clone()).unwrap();
    assert_eq!(
        handle.outcome().await,
        TurnOutcome::Answered,
        "the limit is per user"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_flood_over_the_rate_limit_gets_one_notice_a_minute_per_conversation() {
    let app = TestApp::builder()
        .var("USER_RATE_LIMIT", "1/min")
        .start()
        .await;
    let sink = RecordingSink::new();
    assert_eq!(app.turn("C1", "one", &sink).await, TurnOutcome::Answered);
    for text in ["two", "three", "four", "five"] {
        assert_eq!(app.turn("C1", text, &sink).await, TurnOutcome::RateLimited);
    }
    let notices = sink
        .texts()
        .iter()
        .filter(|t| *t == agent_bridge::core::relay::RATE_LIMITED_REPLY)
        .count();
    assert_eq!(notices, 1, "{:?}", sink.texts());
    assert_eq!(app.agent.requests_to("/conversation").len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn an_api_reset_waits_for_the_turn_in_flight_and_is_not_undone_by_it() {
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    assert_eq!(app.turn("C1", "one", &sink).await, TurnOutcome::Answered);
    let sessions: serde_json::Value = app
        .admin(reqwest::Method::GET, "/sessions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = sessions["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A turn in flight (the agent is slow) when the reset arrives.
    app.agent.set_delay(Duration::from_millis(400));
    let in_flight = app
        .relay
        .submit(msg("C1", "two"), sink.clone())
        .expect("accepted");
    app.agent
        .wait_for_requests_to("/conversation", 2, Duration::from_secs(5))
        .await;
    let status = app
        .admin(reqwest::Method::DELETE, &format!("/sessions/{session}"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    assert_eq!(in_flight.outcome().await, TurnOutcome::Answered);
    app.agent.set_delay(Duration::ZERO);

    assert_eq!(app.turn("C1", "three", &sink).await, TurnOutcome::Answered);
    let calls = app.agent.requests_to("/conversation");
    assert_eq!(
        calls[2].session_id, None,
        "the reset holds although the turn in flight finished after it was asked"
    );
    app.shutdown().await;
}
