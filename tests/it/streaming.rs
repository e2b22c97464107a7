//! Answers that stream (SPEC §1.1, §1.2, §3, §4, §5): the OpenAI-compatible backend
//! against the fake OpenAI server, shown on the fake Discord and the fake Slack as
//! they are written, with `stop`, cut answers and `MAX_REPLY_MESSAGES`.

use std::time::{Duration, Instant};

use agent_bridge::core::chunk::split_text;
use agent_bridge::core::TurnOutcome;
use serde_json::Value;

use crate::support::discord::FakeDiscord;
use crate::support::openai::{FakeOpenAi, Script};
use crate::support::slack::{signed, EventBuilder, FakeSlack, BOT_USER};
use crate::support::{stored_events, RecordingSink, TestApp};

const WAIT: Duration = Duration::from_secs(15);
const USER: &str = "3000000000000000001";
const SIGNING_SECRET: &str = "streaming-signing-secret";

fn openai_vars(fake: &FakeOpenAi) -> Vec<(String, String)> {
    vec![
        ("AGENT_KIND".into(), "openai".into()),
        ("OPENAI_BASE_URL".into(), fake.base_url()),
        ("OPENAI_MODEL".into(), "test-model".into()),
    ]
}

async fn app_with(vars: &[(String, String)]) -> TestApp {
    let mut builder = TestApp::builder();
    for (k, v) in vars {
        builder = builder.var(k, v);
    }
    builder.start().await
}

/// Waits until `n` `conversation` events are stored (a turn's record, at its end).
async fn conversation_events(app: &TestApp, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = stored_events(&app.db_url, "conversation").await;
        if events.len() >= n {
            return events;
        }
        assert!(Instant::now() < deadline, "{n} turns not recorded in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("word{i} ")).collect()
}

async fn discord_app(
    extra: &[(&str, &str)],
    openai: Option<&FakeOpenAi>,
) -> (FakeDiscord, TestApp) {
    let fake = FakeDiscord::start().await;
    let mut vars: Vec<(String, String)> = vec![
        ("DISCORD_TOKEN".into(), "test-token".into()),
        ("DISCORD_API_BASE".into(), fake.url()),
    ];
    if let Some(openai) = openai {
        vars.extend(openai_vars(openai));
    }
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let app = app_with(&vars).await;
    fake.wait_ready(WAIT).await;
    (fake, app)
}

#[tokio::test]
async fn a_streamed_answer_on_discord_is_one_post_then_paced_edits_ending_in_the_whole_answer() {
    let openai = FakeOpenAi::start().await;
    let pieces = words(20);
    openai.script(Script {
        pieces: pieces.clone(),
        pause: Duration::from_millis(40),
        ..Script::default()
    });
    let (fake, app) = discord_app(&[("DISCORD_EDIT_INTERVAL_MS", "200")], Some(&openai)).await;

    fake.guild_message("2001", USER, &format!("{} tell me", fake.mention()))
        .await;
    let events = conversation_events(&app, 1).await;

    let whole = pieces.concat();
    assert_eq!(events[0]["data"]["response"], whole.as_str());
    assert_eq!(events[0]["data"]["complete"], true);
    let posts = fake.messages();
    let edits = fake.edits();
    assert_eq!(posts.len(), 1, "one message");
    assert!(!edits.is_empty(), "the answer grew by edits");
    assert_eq!(fake.final_texts(), split_text(&whole, 2000));
    assert!(
        posts[0].content().len() < whole.len(),
        "the first post came before the whole answer"
    );
    // At most one update per interval (a little slack for the clock).
    let mut times: Vec<Instant> = vec![posts[0].at];
    times.extend(edits.iter().map(|e| e.at));
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(gap >= Duration::from_millis(180), "updates {gap:?} apart");
    }
    for call in posts.iter().chain(&edits) {
        assert_eq!(
            call.body["allowed_mentions"]["parse"],
            serde_json::json!([])
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn discord_edits_wait_for_the_routes_rate_limit_bucket_and_are_never_refused() {
    let openai = FakeOpenAi::start().await;
    let pieces = words(30);
    openai.script(Script {
        pieces: pieces.clone(),
        pause: Duration::from_millis(50),
        ..Script::default()
    });
    // An interval far shorter than the bucket allows: the headers set the pace.
    let (fake, app) = discord_app(&[("DISCORD_EDIT_INTERVAL_MS", "60")], Some(&openai)).await;
    fake.set_edit_bucket(2, Duration::from_millis(800));

    fake.guild_message("2001", USER, &format!("{} tell me slowly", fake.mention()))
        .await;
    conversation_events(&app, 1).await;

    let whole = pieces.concat();
    assert_eq!(fake.final_texts(), split_text(&whole, 2000));
    assert_eq!(
        fake.rate_limited(),
        0,
        "no edit was sent into an empty bucket"
    );
    let edits = fake.edits();
    assert!(
        edits.len() >= 2,
        "the answer grew by edits: {}",
        edits.len()
    );
    // Never more than the bucket's 2 edits in any 800 ms.
    for trio in edits.windows(3) {
        let span = trio[2].at.duration_since(trio[0].at);
        assert!(
            span >= Duration::from_millis(750),
            "3 edits within {span:?}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_long_streamed_answer_ends_as_the_same_messages_as_the_non_streamed_split() {
    let openai = FakeOpenAi::start().await;
    let paragraph = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(10);
    let answer = format!("{paragraph}\n\n").repeat(9);
    assert!(answer.chars().count() > 4_500);
    openai.answer_in_pieces(&answer, 100, Duration::from_millis(5));
    let (fake, app) = discord_app(&[("DISCORD_EDIT_INTERVAL_MS", "100")], Some(&openai)).await;

    fake.guild_message("2001", USER, &format!("{} long", fake.mention()))
        .await;
    conversation_events(&app, 1).await;

    let expected = split_text(&answer, 2000);
    assert_eq!(expected.len(), 3);
    assert_eq!(fake.final_texts(), expected);
    app.shutdown().await;
}

#[tokio::test]
async fn max_reply_messages_caps_an_answer_and_marks_it_truncated() {
    let openai = FakeOpenAi::start().await;
    let answer = "x ".repeat(3_000);
    openai.answer_in_pieces(&answer, 500, Duration::ZERO);
    let (fake, app) = discord_app(&[("MAX_REPLY_MESSAGES", "2")], Some(&openai)).await;

    fake.guild_message("2001", USER, &format!("{} flood", fake.mention()))
        .await;
    let events = conversation_events(&app, 1).await;

    let texts = fake.final_texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].ends_with("… (answer truncated)"), "{}", texts[1]);
    assert!(texts.iter().all(|t| t.chars().count() <= 2000));
    assert_eq!(
        events[0]["data"]["response"],
        answer.as_str(),
        "the record keeps the whole answer"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_answer_in_one_piece_is_posted_once_with_no_edit() {
    // The AI Agent API answers whole.
    let (fake, app) = discord_app(&[], None).await;
    fake.guild_message("2001", USER, &format!("{} hi", fake.mention()))
        .await;
    conversation_events(&app, 1).await;
    assert_eq!(fake.messages().len(), 1);
    assert_eq!(fake.final_texts(), ["answer to: hi"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.edits().is_empty(), "no edit: {:?}", fake.edits());
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------

async fn slack_app(openai: &FakeOpenAi, extra: &[(&str, &str)]) -> (FakeSlack, TestApp) {
    let slack = FakeSlack::start().await;
    let mut vars: Vec<(String, String)> = vec![
        ("SLACK_BOT_TOKEN".into(), "xoxb-test".into()),
        ("SLACK_SIGNING_SECRET".into(), SIGNING_SECRET.into()),
        ("SLACK_API_BASE".into(), slack.api_base()),
        ("STREAM_EDIT_INTERVAL_MS".into(), "100".into()),
    ];
    vars.extend(openai_vars(openai));
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let app = app_with(&vars).await;
    // auth.test must have answered before events are taken.
    slack.wait_for("auth.test", 1, WAIT).await;
    (slack, app)
}

async fn mention(app: &TestApp, text: &str) -> EventBuilder {
    let ev = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> {text}"));
    let deadline = Instant::now() + WAIT;
    loop {
        let status = signed(
            &app.client,
            &app.url("/slack/events"),
            SIGNING_SECRET,
            &ev.body(),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
        if status == 200 {
            return ev;
        }
        assert!(Instant::now() < deadline, "event refused with {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn slack_native_streaming_is_start_appends_stop_with_the_whole_answer() {
    let openai = FakeOpenAi::start().await;
    let pieces = words(20);
    openai.script(Script {
        pieces: pieces.clone(),
        pause: Duration::from_millis(30),
        ..Script::default()
    });
    let (slack, app) = slack_app(&openai, &[]).await;

    let ev = mention(&app, "stream please").await;
    conversation_events(&app, 1).await;

    let methods: Vec<String> = slack
        .calls()
        .into_iter()
        .map(|c| c.method)
        .filter(|m| m.starts_with("chat."))
        .collect();
    assert_eq!(
        methods.first().map(String::as_str),
        Some("chat.startStream")
    );
    assert_eq!(methods.last().map(String::as_str), Some("chat.stopStream"));
    assert!(
        methods.iter().any(|m| m == "chat.appendStream"),
        "{methods:?}"
    );
    assert!(methods.iter().all(|m| m.ends_with("Stream")), "{methods:?}");
    let start = &slack.calls_of("chat.startStream")[0];
    assert_eq!(start.param("thread_ts").as_deref(), Some(ev.ts.as_str()));
    assert_eq!(start.param("recipient_user_id"), ev.user);
    assert!(start.param("recipient_team_id").is_some());
    assert_eq!(
        unescape(&slack.streamed_markdown().concat()),
        pieces.concat()
    );
    // The status showed while the agent worked? Quick answers need none; but it is
    // never the reaction by default.
    assert!(slack.calls_of("reactions.add").is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn slack_refusing_native_streaming_gets_the_answer_by_update_with_the_same_text() {
    let openai = FakeOpenAi::start().await;
    let pieces = words(10);
    openai.script(Script {
        pieces: pieces.clone(),
        pause: Duration::from_millis(30),
        ..Script::default()
    });
    let (slack, app) = slack_app(&openai, &[]).await;
    slack.fail("chat.startStream", "unknown_method");

    mention(&app, "fallback").await;
    conversation_events(&app, 1).await;

    let posts = slack.calls_of("chat.postMessage");
    assert_eq!(posts.len(), 1);
    let last = slack
        .calls_of("chat.update")
        .last()
        .map(|c| c.text())
        .unwrap_or_else(|| posts[0].text());
    assert_eq!(last, pieces.concat());
    app.shutdown().await;
}

#[tokio::test]
async fn a_429_from_chat_update_is_waited_out_and_the_answer_still_ends_whole() {
    let openai = FakeOpenAi::start().await;
    let pieces = words(10);
    openai.script(Script {
        pieces: pieces.clone(),
        pause: Duration::from_millis(30),
        ..Script::default()
    });
    let (slack, app) = slack_app(&openai, &[("SLACK_STREAMING", "update")]).await;
    slack.rate_limit("chat.update", 1, 1);

    mention(&app, "slow down").await;
    let events = conversation_events(&app, 1).await;

    assert_eq!(events[0]["data"]["complete"], true);
    let posts = slack.calls_of("chat.postMessage");
    assert_eq!(posts.len(), 1, "one message, updated");
    assert_eq!(posts[0].authorization.as_deref(), Some("Bearer xoxb-test"));
    let updates = slack.calls_of("chat.update");
    assert!(updates.len() >= 2, "the refused update, then more");
    let waited = updates[1].at.duration_since(updates[0].at);
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 is honoured, waited {waited:?}"
    );
    assert_eq!(updates.last().map(|c| c.text()), Some(pieces.concat()));
    // Every update (the refused one too) is of the one message posted.
    assert!(updates
        .iter()
        .all(|c| c.param("ts") == updates[0].param("ts")));
    app.shutdown().await;
}

#[tokio::test]
async fn an_expired_slack_stream_continues_by_update_without_loss_or_repeat() {
    let openai = FakeOpenAi::start().await;
    let pieces = words(20);
    openai.script(Script {
        pieces: pieces.clone(),
        pause: Duration::from_millis(30),
        ..Script::default()
    });
    let (slack, app) = slack_app(&openai, &[]).await;
    slack.fail_after("chat.appendStream", 1, "message_not_in_streaming_state");

    mention(&app, "expire").await;
    conversation_events(&app, 1).await;

    let streamed = unescape(
        &slack
            .calls()
            .into_iter()
            .filter(|c| {
                c.method == "chat.startStream"
                    || (c.method == "chat.appendStream"
                        && slack.calls_of("chat.appendStream")[0].at == c.at)
            })
            .filter_map(|c| c.param("markdown_text"))
            .collect::<String>(),
    );
    let rest = slack
        .calls_of("chat.update")
        .last()
        .map(|c| c.text())
        .or_else(|| slack.calls_of("chat.postMessage").last().map(|c| c.text()))
        .expect("the rest was posted");
    let whole = pieces.concat();
    assert!(whole.starts_with(&streamed), "{streamed:?}");
    assert_eq!(format!("{streamed}{rest}").trim_end(), whole.trim_end());
    app.shutdown().await;
}

#[tokio::test]
async fn mass_mentions_from_the_model_never_reach_slack_as_such() {
    let openai = FakeOpenAi::start().await;
    openai.script(Script {
        pieces: vec![
            "hey <".into(),
            "!channel> and <@U".into(),
            "123> <#C1>".into(),
        ],
        pause: Duration::from_millis(20),
        ..Script::default()
    });
    let (slack, app) = slack_app(&openai, &[]).await;
    mention(&app, "ping everyone").await;
    conversation_events(&app, 1).await;
    let sent: String = slack
        .calls()
        .into_iter()
        .flat_map(|c| [c.param("markdown_text"), c.param("text")])
        .flatten()
        .collect();
    for token in ["<!channel>", "<@U123>", "<#C1>", "<!"] {
        assert!(!sent.contains(token), "{token} in {sent:?}");
    }
    assert!(sent.contains("&lt;!channel&gt;"), "{sent:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn slack_status_shows_while_the_agent_works() {
    let openai = FakeOpenAi::start().await;
    openai.script(Script {
        pieces: vec!["slow".into(), " answer".into()],
        pause: Duration::from_millis(700),
        ..Script::default()
    });
    let (slack, app) = slack_app(&openai, &[]).await;
    let ev = mention(&app, "think").await;
    conversation_events(&app, 1).await;
    let status = slack.calls_of("assistant.threads.setStatus");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].param("status").as_deref(), Some("is thinking…"));
    assert_eq!(
        status[0].param("thread_ts").as_deref(),
        Some(ev.ts.as_str())
    );
    assert!(slack.calls_of("reactions.add").is_empty());
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------
// The OpenAI-compatible backend through the relay
// ---------------------------------------------------------------------------------

fn messages_of(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn openai_gets_the_history_and_the_personality_prompt_and_reset_empties_it() {
    let openai = FakeOpenAi::start().await;
    openai.script(Script {
        pieces: vec!["Ahoy".into(), "!".into()],
        ..Script::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("personalities.toml");
    std::fs::write(
        &file,
        "[[personality]]\nid = \"pirate\"\nname = \"Pirate\"\nprompt = \"Talk like a pirate.\"\n",
    )
    .unwrap();
    let mut vars = openai_vars(&openai);
    vars.push(("AGENT_SYSTEM_PROMPT".into(), "Be brief.".into()));
    vars.push(("PERSONALITIES_FILE".into(), file.display().to_string()));
    let app = app_with(&vars).await;
    let sink = RecordingSink::new();

    assert_eq!(app.turn("C1", "one", &sink).await, TurnOutcome::Answered);
    assert_eq!(app.turn("C1", "two", &sink).await, TurnOutcome::Answered);
    assert_eq!(
        app.turn("C1", "personality pirate", &sink).await,
        TurnOutcome::Command
    );
    assert_eq!(app.turn("C1", "three", &sink).await, TurnOutcome::Answered);
    assert_eq!(app.turn("C1", "reset", &sink).await, TurnOutcome::Command);
    assert_eq!(app.turn("C1", "four", &sink).await, TurnOutcome::Answered);

    let requests = openai.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[0]["model"], "test-model");
    assert_eq!(requests[0]["stream"], true);
    let s = |r: &str, c: &str| (r.to_string(), c.to_string());
    assert_eq!(
        messages_of(&requests[0]),
        [s("system", "Be brief."), s("user", "one")]
    );
    assert_eq!(
        messages_of(&requests[1]),
        [
            s("system", "Be brief."),
            s("user", "one"),
            s("assistant", "Ahoy!"),
            s("user", "two")
        ]
    );
    let third = messages_of(&requests[2]);
    assert_eq!(third[0], s("system", "Talk like a pirate."));
    assert_eq!(third.len(), 6, "{third:?}");
    assert_eq!(
        messages_of(&requests[3]),
        [s("system", "Talk like a pirate."), s("user", "four")],
        "reset starts with an empty history"
    );
    assert!(sink.texts().iter().any(|t| t == "Ahoy!"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_stream_broken_half_way_keeps_the_pieces_with_a_note_and_is_recorded_incomplete() {
    let openai = FakeOpenAi::start().await;
    openai.script(Script {
        pieces: words(10),
        pause: Duration::from_millis(20),
        break_after: Some(5),
        ..Script::default()
    });
    let app = app_with(&openai_vars(&openai)).await;
    let sink = RecordingSink::new();
    app.turn("C1", "go", &sink).await;

    let shown: String = words(5).concat();
    let texts = sink.texts();
    assert_eq!(texts.len(), 1);
    assert!(texts[0].starts_with(&shown), "{texts:?}");
    assert!(texts[0].contains("cut off"), "{texts:?}");
    let events = conversation_events(&app, 1).await;
    assert_eq!(events[0]["data"]["complete"], false);
    assert_eq!(events[0]["data"]["response"], texts[0].as_str());
    app.shutdown().await;
}

#[tokio::test]
async fn stop_ends_a_slow_answer_with_what_was_shown() {
    let openai = FakeOpenAi::start().await;
    openai.script(Script {
        pieces: words(50),
        pause: Duration::from_millis(100),
        ..Script::default()
    });
    let app = app_with(&openai_vars(&openai)).await;
    let sink = RecordingSink::new();
    let handle = app
        .relay
        .submit(crate::support::msg("C1", "long story"), sink.clone())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let stop = RecordingSink::new();
    assert_eq!(app.turn("C1", "stop", &stop).await, TurnOutcome::Command);
    assert_eq!(handle.outcome().await, TurnOutcome::Answered);

    assert_eq!(stop.texts(), ["Stopped."]);
    let answer = &sink.texts()[0];
    assert!(answer.ends_with(" (stopped)"), "{answer}");
    assert!(answer.starts_with("word0 "), "{answer}");
    assert!(!answer.contains("word49"), "{answer}");
    let events = conversation_events(&app, 1).await;
    assert_eq!(events[0]["data"]["complete"], false);

    let nothing = RecordingSink::new();
    app.turn("C1", "stop", &nothing).await;
    assert_eq!(
        nothing.texts(),
        ["There is no answer being written here to stop."]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_refused_key_gets_the_error_reply_and_a_busy_server_is_waited_out_once() {
    let openai = FakeOpenAi::start().await;
    openai.script(Script {
        pieces: vec!["fine".into()],
        ..Script::default()
    });
    let mut vars = openai_vars(&openai);
    vars.push(("OPENAI_API_KEY".into(), "sk-test-key".into()));
    let app = app_with(&vars).await;
    let sink = RecordingSink::new();

    openai.status_next(401, None);
    assert_eq!(app.turn("C1", "a", &sink).await, TurnOutcome::Failed);
    assert_eq!(
        sink.texts(),
        ["Sorry, I encountered an error processing your request."]
    );
    assert_eq!(
        openai.authorizations()[0].as_deref(),
        Some("Bearer sk-test-key")
    );

    openai.status_next(429, Some(1));
    let started = Instant::now();
    assert_eq!(app.turn("C1", "b", &sink).await, TurnOutcome::Answered);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(sink.texts().last().map(String::as_str), Some("fine"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_server_that_ignores_stream_is_read_as_plain_json() {
    let openai = FakeOpenAi::start().await;
    openai.script(Script {
        pieces: vec!["plain ".into(), "answer".into()],
        plain_json: true,
        ..Script::default()
    });
    let app = app_with(&openai_vars(&openai)).await;
    let sink = RecordingSink::new();
    assert_eq!(app.turn("C1", "q", &sink).await, TurnOutcome::Answered);
    assert_eq!(sink.texts(), ["plain answer"]);
    app.shutdown().await;
}

#[tokio::test]
async fn agent_query_streams_the_models_pieces_as_they_are_written() {
    let openai = FakeOpenAi::start().await;
    let pieces = words(8);
    openai.script(Script {
        pieces: pieces.clone(),
        pause: Duration::from_millis(30),
        ..Script::default()
    });
    let app = app_with(&openai_vars(&openai)).await;
    let resp = app
        .admin(reqwest::Method::POST, "/agent-query")
        .json(&serde_json::json!({"query": "stream it", "stream": true, "user": "U1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = crate::http_api::sse_events(resp).await;
    let deltas: Vec<String> = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, pieces, "one delta per piece, in order");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(done["response"], pieces.concat().as_str());
    app.shutdown().await;
}
