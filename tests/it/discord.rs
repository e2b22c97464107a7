//! Discord, end to end: the real serenity client inside the real `App`, against the
//! fake Discord (REST + gateway) and the fake agent.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::discord::{
    capture_logs, message_json, user_json, FakeDiscord, APP_ID, BOT_ID, GUILD_ID,
};
use crate::support::{stored_events, TestApp};

/// The bound of every wait; the happy paths take milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// How long "nothing else happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);

const ERROR_REPLY: &str = "Sorry, I encountered an error processing your request.";

const USER: &str = "3000000000000000001";

async fn start(vars: &[(&str, &str)]) -> (FakeDiscord, TestApp) {
    let fake = FakeDiscord::start().await;
    let mut builder = TestApp::builder()
        .var("DISCORD_TOKEN", "test-token")
        .var("DISCORD_API_BASE", &fake.url());
    for (k, v) in vars {
        builder = builder.var(k, v);
    }
    let app = builder.start().await;
    fake.wait_ready(WAIT).await;
    (fake, app)
}

fn no_pings() -> Value {
    json!({"parse": [], "users": [], "roles": [], "replied_user": false})
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_guild_mention_gets_exactly_one_reply_to_the_message_with_no_pings() {
    let (fake, app) = start(&[]).await;

    let id = fake
        .guild_message("2001", USER, &format!("{} what is rust?", fake.mention()))
        .await;
    let posts = fake.wait_messages(1, WAIT).await;

    let reply = &posts[0];
    assert_eq!(reply.path, "/channels/2001/messages");
    assert_eq!(reply.content(), "answer to: what is rust?");
    assert_eq!(reply.body["message_reference"]["message_id"], id.as_str());
    assert_eq!(reply.body["message_reference"]["fail_if_not_exists"], false);
    assert_eq!(reply.body["allowed_mentions"], no_pings());
    assert_eq!(reply.authorization.as_deref(), Some("Bot test-token"));
    let asked = app.agent.requests_to("/conversation");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].query(), Some("what is rust?"));

    // A second mention is answered once too, and nothing else was posted meanwhile
    // (the bot's own echoed messages included).
    let second = fake
        .guild_message("2001", USER, &format!("{} and go?", fake.mention()))
        .await;
    let posts = fake.wait_messages(2, WAIT).await;
    tokio::time::sleep(QUIET).await;
    let posts_after = fake.messages();
    assert_eq!(posts_after.len(), 2, "{posts_after:#?}");
    assert_eq!(
        posts[1].body["message_reference"]["message_id"],
        second.as_str()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_nickname_mention_form_is_answered_and_stripped() {
    let (fake, app) = start(&[]).await;

    fake.guild_message("2002", USER, &format!("<@!{BOT_ID}> hello"))
        .await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].content(), "answer to: hello");
    app.shutdown().await;
}

#[tokio::test]
async fn a_reply_to_the_bots_message_is_answered_without_a_mention() {
    let (fake, app) = start(&[]).await;
    fake.guild_message("2004", USER, &format!("{} first", fake.mention()))
        .await;
    let answer = fake.wait_messages(1, WAIT).await.remove(0);
    let bot_message = message_json(
        "1500000000000000001",
        "2004",
        Some(GUILD_ID),
        user_json(BOT_ID, true),
        answer.content(),
    );

    fake.message(
        "2004",
        Some(GUILD_ID),
        user_json(USER, false),
        "tell me more",
        |m| {
            m["type"] = json!(19);
            m["message_reference"] =
                json!({"message_id": "1500000000000000001", "channel_id": "2004"});
            m["referenced_message"] = bot_message;
        },
    )
    .await;

    let posts = fake.wait_messages(2, WAIT).await;
    assert_eq!(posts[1].content(), "answer to: tell me more");
    app.shutdown().await;
}

#[tokio::test]
async fn a_bare_mention_gets_the_help_text_without_asking_the_agent() {
    let (fake, app) = start(&[]).await;

    fake.guild_message("2003", USER, &fake.mention()).await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert!(
        posts[0].content().contains("reset"),
        "{}",
        posts[0].content()
    );
    assert!(app.agent.requests_to("/conversation").is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_dm_is_answered_without_a_mention() {
    let (fake, app) = start(&[]).await;

    let id = fake.dm("2100", USER, "hello there").await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].path, "/channels/2100/messages");
    assert_eq!(posts[0].content(), "answer to: hello there");
    assert_eq!(
        posts[0].body["message_reference"]["message_id"],
        id.as_str()
    );
    assert_eq!(posts[0].body["allowed_mentions"], no_pings());
    app.shutdown().await;
}

#[tokio::test]
async fn a_forwarded_message_relays_the_forwarded_text() {
    let (fake, app) = start(&[]).await;

    fake.message(
        "2101",
        None,
        crate::support::discord::user_json(USER, false),
        "",
        |m| {
            m["message_reference"] = json!({
                "type": 1,
                "message_id": "999",
                "channel_id": "3000",
            });
            m["message_snapshots"] = json!([{
                "message": {
                    "content": "the forwarded question",
                    "timestamp": "2024-01-01T00:00:00.000000+00:00",
                    "edited_timestamp": null,
                    "mentions": [],
                    "mention_roles": [],
                    "attachments": [],
                    "embeds": [],
                    "type": 0,
                    "flags": 0,
                }
            }]);
        },
    )
    .await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].content(), "answer to: the forwarded question");
    app.shutdown().await;
}

#[tokio::test]
async fn bots_webhooks_system_messages_and_unmentioned_messages_get_no_answer() {
    let (fake, app) = start(&[]).await;
    let mention = fake.mention();

    fake.message(
        "2200",
        Some(GUILD_ID),
        user_json("3999", true),
        &format!("{mention} from another bot"),
        |_| {},
    )
    .await;
    fake.message(
        "2200",
        Some(GUILD_ID),
        user_json("3998", false),
        &format!("{mention} from a webhook"),
        |m| m["webhook_id"] = json!("3998"),
    )
    .await;
    fake.message(
        "2200",
        Some(GUILD_ID),
        user_json(USER, false),
        &format!("{mention} pinned a message"),
        |m| m["type"] = json!(6),
    )
    .await;
    fake.guild_message("2200", USER, "just chatting, no mention")
        .await;
    // A message that is answered proves the ones before it were seen and dropped.
    fake.guild_message("2200", USER, &format!("{mention} sentinel"))
        .await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].content(), "answer to: sentinel");
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.messages().len(), 1, "{:#?}", fake.messages());
    assert_eq!(app.agent.requests_to("/conversation").len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn typing_is_shown_before_the_reply() {
    let (fake, app) = start(&[]).await;

    fake.guild_message("2250", USER, &format!("{} think", fake.mention()))
        .await;

    let reply = fake.wait_messages(1, WAIT).await.remove(0);
    let typing = fake.typing();
    assert!(!typing.is_empty(), "no typing indicator");
    assert_eq!(typing[0].path, "/channels/2250/typing");
    assert!(typing[0].at <= reply.at, "typing came after the reply");
    app.shutdown().await;
}

#[tokio::test]
async fn agent_output_cannot_ping_everyone_roles_or_users() {
    let (fake, app) = start(&[]).await;
    app.agent
        .set_answer_text("@everyone @here <@&555> <@666> look at this");

    fake.guild_message("2260", USER, &format!("{} ping them", fake.mention()))
        .await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(
        posts[0].content(),
        "@everyone @here <@&555> <@666> look at this"
    );
    assert_eq!(posts[0].body["allowed_mentions"], no_pings());
    app.shutdown().await;
}

#[tokio::test]
async fn a_5000_character_answer_arrives_as_three_ordered_parts_within_the_limit() {
    let (fake, app) = start(&[]).await;
    let paragraphs: Vec<String> = (0..50)
        .map(|i| format!("Paragraph {i:02}: {}", "lorem ipsum ".repeat(7).trim_end()))
        .collect();
    let answer = paragraphs.join("\n\n");
    assert!(answer.chars().count() >= 4900, "{}", answer.len());
    app.agent.set_answer_text(answer.clone());

    let id = fake
        .guild_message("2270", USER, &format!("{} tell me a lot", fake.mention()))
        .await;

    let posts = fake.wait_messages(3, WAIT).await;
    tokio::time::sleep(QUIET).await;
    let posts_after = fake.messages();
    assert_eq!(posts_after.len(), 3);
    for (i, post) in posts.iter().enumerate() {
        assert!(post.content().chars().count() <= 2000, "part {i} too long");
        assert!(!post.content().is_empty());
        assert_eq!(post.body["allowed_mentions"], no_pings());
        assert_eq!(post.path, "/channels/2270/messages");
    }
    assert_eq!(
        posts[0].body["message_reference"]["message_id"],
        id.as_str()
    );
    assert!(posts[1].body.get("message_reference").is_none());
    assert!(posts[0].content().starts_with("Paragraph 00"));
    assert!(posts[2].content().ends_with(paragraphs[49].as_str()));
    let rejoined: Vec<String> = posts
        .iter()
        .flat_map(|p| {
            p.content()
                .split("\n\n")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(rejoined, paragraphs, "parts are in order and lose nothing");
    // Each part carries its own nonce, enforced: posting it again cannot duplicate it.
    for (i, post) in posts.iter().enumerate() {
        assert_eq!(post.body["nonce"], format!("{id}.{i}"), "part {i}");
        assert_eq!(post.body["enforce_nonce"], true, "part {i}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_post_repeated_with_an_enforced_nonce_returns_the_first_message_as_discord_does() {
    let fake = FakeDiscord::start().await;
    let client = reqwest::Client::new();
    let post = |nonce: &str, enforce: bool| {
        client
            .post(format!("{}/api/v10/channels/2280/messages", fake.url()))
            .json(&json!({"content": "once", "nonce": nonce, "enforce_nonce": enforce}))
            .send()
    };
    let first: Value = post("42.0", true).await.unwrap().json().await.unwrap();
    let again: Value = post("42.0", true).await.unwrap().json().await.unwrap();
    let other: Value = post("42.1", true).await.unwrap().json().await.unwrap();
    let unenforced: Value = post("42.0", false).await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_ne!(other["id"], first["id"]);
    assert_ne!(unenforced["id"], first["id"]);
    assert_eq!(
        fake.final_texts().len(),
        3,
        "one message per distinct nonce"
    );
}

#[tokio::test]
async fn thread_mode_opens_a_thread_and_follow_ups_in_it_continue_the_session() {
    let (fake, app) = start(&[("DISCORD_REPLY_MODE", "thread")]).await;

    let id = fake
        .guild_message("2300", USER, &format!("{} first question", fake.mention()))
        .await;

    let opened = fake
        .wait_call(
            "POST",
            &format!("/channels/2300/messages/{id}/threads"),
            WAIT,
        )
        .await;
    assert_eq!(opened.body["name"], "first question");
    let first = fake.wait_messages(1, WAIT).await.remove(0);
    assert_eq!(first.path, format!("/channels/{id}/messages"));
    assert_eq!(first.content(), "answer to: first question");
    assert!(first.body.get("message_reference").is_none());
    assert_eq!(first.body["allowed_mentions"], no_pings());
    let typing = fake.typing();
    assert_eq!(typing[0].path, format!("/channels/{id}/typing"));

    // The thread's id is the question's id; a follow-up there needs no mention.
    fake.guild_message(&id, USER, "second question").await;

    let posts = fake.wait_messages(2, WAIT).await;
    assert_eq!(posts[1].path, format!("/channels/{id}/messages"));
    assert_eq!(posts[1].content(), "answer to: second question");
    let asked = app.agent.requests_to("/conversation");
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].session_id, None);
    assert!(
        asked[1].session_id.is_some(),
        "the follow-up continues a session"
    );
    let threads_opened = fake
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/threads"))
        .count();
    assert_eq!(threads_opened, 1, "no second thread for the follow-up");
    app.shutdown().await;
}

#[tokio::test]
async fn a_mention_inside_someone_elses_thread_is_answered_there_without_a_new_thread() {
    let (fake, app) = start(&[("DISCORD_REPLY_MODE", "thread")]).await;
    fake.add_thread("2801", "2800", USER);

    fake.guild_message("2801", USER, "talking among ourselves")
        .await;
    fake.guild_message("2801", USER, &format!("{} now you", fake.mention()))
        .await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].path, "/channels/2801/messages");
    assert_eq!(posts[0].content(), "answer to: now you");
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        fake.messages().len(),
        1,
        "the unmentioned message got no answer"
    );
    assert!(!fake.calls().iter().any(|c| c.path.ends_with("/threads")));
    app.shutdown().await;
}

#[tokio::test]
async fn two_channels_keep_two_sessions() {
    let (fake, app) = start(&[]).await;
    let mention = fake.mention();

    for (n, channel) in ["2401", "2402", "2401", "2402"].iter().enumerate() {
        fake.guild_message(channel, USER, &format!("{mention} q{n}"))
            .await;
        fake.wait_messages(n + 1, WAIT).await;
    }

    let asked = app.agent.requests_to("/conversation");
    assert_eq!(asked.len(), 4);
    assert_eq!(asked[0].session_id, None);
    assert_eq!(
        asked[1].session_id, None,
        "the second channel starts its own"
    );
    let first = asked[2].session_id.clone().expect("channel 1 continues");
    let second = asked[3].session_id.clone().expect("channel 2 continues");
    assert_ne!(first, second);
    app.shutdown().await;
}

#[tokio::test]
async fn an_agent_failure_gives_the_error_reply() {
    let (fake, app) = start(&[]).await;
    app.agent.push_response(500, r#"{"detail": "boom"}"#);

    let id = fake
        .guild_message("2500", USER, &format!("{} break", fake.mention()))
        .await;

    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].content(), ERROR_REPLY);
    assert_eq!(
        posts[0].body["message_reference"]["message_id"],
        id.as_str()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_discord_error_on_the_reply_is_recorded_with_discords_message() {
    let (fake, app) = start(&[]).await;
    fake.fail_next(
        "POST",
        "/channels/2550/messages",
        403,
        50013,
        "Missing Permissions",
    );

    fake.guild_message("2550", USER, &format!("{} hi", fake.mention()))
        .await;

    fake.wait_messages(1, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let failed = loop {
        let events = stored_events(&app.db_url, "reply.failed").await;
        if let Some(e) = events.into_iter().next() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reply.failed event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = failed["data"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("Missing Permissions"), "{failed}");
    assert!(error.contains("50013"), "{failed}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_dropped_gateway_connection_resumes_and_the_next_mention_is_answered() {
    let (fake, app) = start(&[]).await;

    fake.drop_connection().await;
    fake.wait_count("resumes", 1, WAIT, FakeDiscord::resumes)
        .await;
    fake.wait_live(WAIT).await;

    fake.guild_message("2600", USER, &format!("{} still there?", fake.mention()))
        .await;
    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].content(), "answer to: still there?");
    assert_eq!(fake.identifies(), 1, "resumed, not re-identified");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn close_4014_stops_discord_with_an_actionable_message_and_the_rest_keeps_running() {
    let logs = capture_logs();
    let (fake, app) = start(&[]).await;

    fake.close_with(4014).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = readyz(&app).await;
        if status == 503 && body["parts"]["discord"] == "down" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz still {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    match logs {
        Some(logs) => {
            let line = logs.wait_for("Message Content intent", WAIT).await;
            assert!(line.starts_with("ERROR"), "{line}");
            assert!(line.contains("developer portal"), "{line}");
        }
        None => eprintln!("another global tracing subscriber is installed; log line not checked"),
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.identifies(), 1, "no reconnect after 4014");
    app.shutdown().await;
}

#[tokio::test]
async fn a_message_serenity_cannot_decode_is_logged_at_warn_with_its_ids_and_the_next_is_answered()
{
    let logs = capture_logs();
    let (fake, app) = start(&[]).await;

    // `author` of the wrong type: serenity cannot decode the message at all.
    let bad = fake
        .message(
            "2730",
            Some(GUILD_ID),
            user_json(USER, false),
            &format!("{} undecodable", fake.mention()),
            |p| p["author"] = json!("not-a-user"),
        )
        .await;
    fake.guild_message("2730", USER, &format!("{} fine", fake.mention()))
        .await;
    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].content(), "answer to: fine");
    match logs {
        Some(logs) => {
            let line = logs.wait_for("could not be decoded", WAIT).await;
            assert!(line.starts_with("WARN"), "{line}");
            assert!(line.contains("channel=2730"), "{line}");
            assert!(line.contains(&format!("message_id={bad}")), "{line}");
            assert!(line.contains("event=MESSAGE_CREATE"), "{line}");
        }
        None => eprintln!("another global tracing subscriber is installed; log line not checked"),
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        fake.messages().len(),
        1,
        "the undecodable message is not answered"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn close_4004_stops_discord_saying_the_token_is_invalid() {
    let logs = capture_logs();
    let (fake, app) = start(&[]).await;

    fake.close_with(4004).await;

    if let Some(logs) = logs {
        let line = logs.wait_for("DISCORD_TOKEN is invalid", WAIT).await;
        assert!(line.starts_with("ERROR"), "{line}");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while readyz(&app).await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "readyz stays ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.identifies(), 1, "no reconnect after 4004");
    app.shutdown().await;
}

#[tokio::test]
async fn readyz_reports_discord_up_after_ready_and_identify_asks_for_the_right_intents() {
    let (fake, app) = start(&[]).await;

    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["parts"]["discord"], "up");
    let identify = &fake.identify_payloads()[0];
    // GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT
    assert_eq!(identify["intents"], 1 | (1 << 9) | (1 << 12) | (1 << 15));
    assert!(identify["token"].as_str().unwrap().ends_with("test-token"));
    let registered = fake
        .wait_call("PUT", &format!("/applications/{APP_ID}/commands"), WAIT)
        .await;
    let names: Vec<&str> = registered
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ask", "reset", "stop", "personality"]);
    app.shutdown().await;
}

#[tokio::test]
async fn slash_ask_is_deferred_then_answered_by_editing_the_response() {
    let (fake, app) = start(&[]).await;

    let sent = fake
        .slash_command(
            "2700",
            USER,
            "ask",
            json!([{"name": "text", "type": 3, "value": "what is up?"}]),
        )
        .await;

    let callback = fake
        .wait_call(
            "POST",
            &format!("/interactions/{}/{}/callback", sent.id, sent.token),
            WAIT,
        )
        .await;
    assert_eq!(callback.body["type"], 5);
    let edit = fake
        .wait_call(
            "PATCH",
            &format!("/webhooks/{APP_ID}/{}/messages/@original", sent.token),
            WAIT,
        )
        .await;
    assert_eq!(edit.content(), "answer to: what is up?");
    assert_eq!(edit.body["allowed_mentions"], no_pings());
    assert!(callback.at <= edit.at);
    // An answer, so it ends with the feedback buttons.
    let buttons = &edit.body["components"][0]["components"];
    assert!(
        buttons[0]["custom_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("feedback:") && id.ends_with(":up")),
        "{}",
        edit.body
    );
    assert_eq!(app.agent.requests_to("/conversation").len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_slash_command_from_a_blocked_user_or_another_channel_is_answered_privately_with_the_reason(
) {
    let (fake, app) = start(&[("BLOCKED_USERS", "666"), ("ALLOWED_CHANNELS", "2720")]).await;

    for (channel, user, reason) in [
        ("2720", "666", "You are not allowed to use this bot."),
        ("2721", USER, "This bot does not answer in this channel."),
    ] {
        let sent = fake
            .slash_command(
                channel,
                user,
                "ask",
                json!([{"name": "text", "type": 3, "value": "let me in"}]),
            )
            .await;
        let callback = fake
            .wait_call(
                "POST",
                &format!("/interactions/{}/{}/callback", sent.id, sent.token),
                WAIT,
            )
            .await;
        // An immediate message (type 4), ephemeral (flag 64), not a deferral that would
        // stay at "thinking…".
        assert_eq!(callback.body["type"], 4, "{}", callback.body);
        let data = &callback.body["data"];
        assert!(
            data["content"].as_str().unwrap().starts_with(reason),
            "{data}"
        );
        assert_eq!(data["flags"].as_u64().unwrap() & 64, 64, "{data}");
        assert_eq!(data["allowed_mentions"], no_pings());
    }
    // An allowed user in an allowed channel is still answered.
    let sent = fake
        .slash_command(
            "2720",
            USER,
            "ask",
            json!([{"name": "text", "type": 3, "value": "hello"}]),
        )
        .await;
    let edit = fake
        .wait_call(
            "PATCH",
            &format!("/webhooks/{APP_ID}/{}/messages/@original", sent.token),
            WAIT,
        )
        .await;
    assert_eq!(edit.content(), "answer to: hello");
    assert_eq!(app.agent.requests_to("/conversation").len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn slash_reset_and_personality_are_the_chat_commands() {
    let (fake, app) = start(&[]).await;

    let reset = fake.slash_command("2710", USER, "reset", json!([])).await;
    let edit = fake
        .wait_call(
            "PATCH",
            &format!("/webhooks/{APP_ID}/{}/messages/@original", reset.token),
            WAIT,
        )
        .await;
    assert!(edit.content().starts_with("Done."), "{}", edit.content());

    let personality = fake
        .slash_command(
            "2710",
            USER,
            "personality",
            json!([{"name": "id", "type": 3, "value": "pirate"}]),
        )
        .await;
    let edit = fake
        .wait_call(
            "PATCH",
            &format!(
                "/webhooks/{APP_ID}/{}/messages/@original",
                personality.token
            ),
            WAIT,
        )
        .await;
    assert!(edit.content().contains("`pirate`"), "{}", edit.content());

    let stop = fake.slash_command("2710", USER, "stop", json!([])).await;
    let edit = fake
        .wait_call(
            "PATCH",
            &format!("/webhooks/{APP_ID}/{}/messages/@original", stop.token),
            WAIT,
        )
        .await;
    assert!(
        edit.content().contains("no answer being written"),
        "{}",
        edit.content()
    );
    assert!(app.agent.requests_to("/conversation").is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn only_allowed_channels_are_answered_and_blocked_users_never() {
    let (fake, app) = start(&[
        ("ALLOWED_CHANNELS", "2001"),
        ("BLOCKED_USERS", "3000000000000000666"),
    ])
    .await;
    fake.guild_message("2002", USER, &format!("{} elsewhere", fake.mention()))
        .await;
    fake.guild_message(
        "2001",
        "3000000000000000666",
        &format!("{} blocked", fake.mention()),
    )
    .await;
    fake.guild_message("2001", USER, &format!("{} allowed", fake.mention()))
        .await;
    let posts = fake.wait_messages(1, WAIT).await;
    assert_eq!(posts[0].path, "/channels/2001/messages");
    assert_eq!(posts[0].content(), "answer to: allowed");
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.messages().len(), 1, "{:#?}", fake.messages());
    assert_eq!(app.agent.requests_to("/conversation").len(), 1);
    app.shutdown().await;
}

/// A Discord app on `db_url`, as a restarted process would open it.
async fn start_on(fake: &FakeDiscord, db_url: &str) -> TestApp {
    let app = TestApp::builder()
        .var("DISCORD_TOKEN", "test-token")
        .var("DISCORD_API_BASE", &fake.url())
        .database(db_url)
        .start()
        .await;
    fake.wait_live(WAIT).await;
    app
}

#[tokio::test]
async fn a_mention_sent_while_the_bridge_was_down_is_answered_once_after_it_comes_back() {
    let (_keep, db_url) = crate::support::db::sqlite_file_url().await;
    let fake = FakeDiscord::start().await;
    let app = start_on(&fake, &db_url).await;
    let first = fake
        .guild_message("2740", USER, &format!("{} first", fake.mention()))
        .await;
    fake.wait_messages(1, WAIT).await;
    app.shutdown().await;

    // Written while the bridge was away: Discord replays none of it.
    let missed = fake.missed_message(
        "2740",
        USER,
        &format!("{} while you were away", fake.mention()),
    );
    fake.missed_message("2740", USER, "not for the bot");
    let app = start_on(&fake, &db_url).await;

    let posts = fake.wait_messages(2, WAIT).await;
    assert_eq!(posts[1].content(), "answer to: while you were away");
    assert_eq!(
        posts[1].body["message_reference"]["message_id"],
        missed.as_str()
    );
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.method == "GET" && c.path == "/channels/2740/messages"),
        "the channel was read"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        fake.messages().len(),
        2,
        "the first message is not answered again"
    );
    assert_ne!(first, missed);
    app.shutdown().await;

    // A third start reads the channel again and answers nothing twice.
    let app = start_on(&fake, &db_url).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.messages().len(), 2);
    app.shutdown().await;
}
