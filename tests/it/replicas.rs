//! Several replicas on one PostgreSQL (SPEC §8): a Slack event delivered to both is
//! answered once, and the turns of one conversation spread across both run one at a
//! time, in arrival order, continuing one agent session.

use std::time::Duration;

use crate::support::agent::FakeAgent;
use crate::support::db::PgSchema;
use crate::support::slack::{signed, EventBuilder, FakeSlack, BOT_USER};
use crate::support::TestApp;

const SECRET: &str = "replica-signing-secret";

async fn replica(agent: &FakeAgent, slack: &FakeSlack, db: &str) -> TestApp {
    TestApp::builder()
        .agent(agent.clone())
        .database(db)
        .var("SLACK_BOT_TOKEN", "xoxb-replicas")
        .var("SLACK_SIGNING_SECRET", SECRET)
        .var("SLACK_API_BASE", &slack.api_base())
        .var("SLACK_PROGRESS_REACTION", "")
        .var("SLACK_STREAMING", "update")
        .var("SLACK_PROGRESS", "reaction")
        .start()
        .await
}

async fn deliver(app: &TestApp, body: &str) -> u16 {
    signed(&app.client, &app.url("/slack/events"), SECRET, body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn until_ready(app: &TestApp) {
    for _ in 0..100 {
        if app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("replica not ready");
}

#[tokio::test]
async fn one_event_delivered_to_two_replicas_is_answered_once() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let (agent, slack) = (FakeAgent::start().await, FakeSlack::start().await);
    let a = replica(&agent, &slack, &pg.url).await;
    let b = replica(&agent, &slack, &pg.url).await;
    until_ready(&a).await;
    until_ready(&b).await;

    let body = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> once please"))
        .envelope()
        .to_string();
    let (sa, sb) = tokio::join!(deliver(&a, &body), deliver(&b, &body));
    assert_eq!((sa, sb), (200, 200), "both acknowledge");
    slack
        .wait_for("chat.postMessage", 1, Duration::from_secs(10))
        .await;
    slack
        .assert_stays("chat.postMessage", 1, Duration::from_millis(300))
        .await;
    assert_eq!(agent.requests_to("/conversation").len(), 1);

    a.shutdown().await;
    b.shutdown().await;
    pg.remove().await;
}

#[tokio::test]
async fn turns_of_one_conversation_across_replicas_run_in_order_one_at_a_time() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let (agent, slack) = (FakeAgent::start().await, FakeSlack::start().await);
    let a = replica(&agent, &slack, &pg.url).await;
    let b = replica(&agent, &slack, &pg.url).await;
    until_ready(&a).await;
    until_ready(&b).await;
    agent.set_delay(Duration::from_millis(80));

    let n = 10;
    for i in 0..n {
        let body = EventBuilder::app_mention("C1", &format!("<@{BOT_USER}> m{i}"))
            .envelope()
            .to_string();
        let to = if i % 2 == 0 { &a } else { &b };
        assert_eq!(deliver(to, &body).await, 200);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    slack
        .wait_for("chat.postMessage", n, Duration::from_secs(20))
        .await;
    slack
        .assert_stays("chat.postMessage", n, Duration::from_millis(300))
        .await;

    let calls = agent.requests_to("/conversation");
    let queries: Vec<_> = calls
        .iter()
        .map(|c| c.query().unwrap().to_string())
        .collect();
    let expected: Vec<_> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(queries, expected, "arrival order across both replicas");
    assert_eq!(
        agent.max_in_flight(),
        1,
        "never two turns of one conversation at once"
    );
    let session = calls[1]
        .session_id
        .clone()
        .expect("the second turn continues the session");
    assert!(
        calls[2..]
            .iter()
            .all(|c| c.session_id.as_deref() == Some(session.as_str())),
        "one session throughout"
    );

    a.shutdown().await;
    b.shutdown().await;
    pg.remove().await;
}
