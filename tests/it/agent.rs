//! The AI Agent API client against the fake agent: what goes over the wire, and how
//! every kind of failure is mapped onto `AgentError`.

use std::time::{Duration, Instant};

use agent_bridge::agent::{self, AiAgentApi};
use agent_bridge::config::{AgentConfig, AgentKind};
use agent_bridge::core::ports::{Agent, AgentError, AgentRequest};
use serde_json::{json, Value};

use crate::support::agent::{dead_url, FakeAgent};

const WAIT: Duration = Duration::from_secs(5);

fn config(url: &str, timeout: Duration) -> AgentConfig {
    AgentConfig {
        url: url.parse().unwrap(),
        kind: AgentKind::AiAgentApi,
        timeout,
        max_concurrency: 4,
        personality: None,
        max_results: 3,
        echo_delay: None,
        history_turns: 20,
        history_chars: 24_000,
        openai: None,
    }
}

fn client(url: &str) -> AiAgentApi {
    AiAgentApi::new(&config(url, Duration::from_secs(10))).unwrap()
}

fn ask(query: &str) -> AgentRequest {
    AgentRequest {
        query: query.to_owned(),
        ..AgentRequest::default()
    }
}

#[tokio::test]
async fn first_turn_creates_a_session_and_later_turns_send_it() {
    let fake = FakeAgent::start().await;
    let agent = client(&fake.url());

    let first = agent.converse(&ask("hello")).await.unwrap();
    assert_eq!(first.response, "answer to: hello");
    let session = first
        .session_id
        .clone()
        .expect("agent returns a session id");
    assert!(uuid::Uuid::parse_str(&session).is_ok(), "{session}");
    assert!(
        first.sources.is_array(),
        "sources pass through: {}",
        first.sources
    );

    let second = agent
        .converse(&AgentRequest {
            session_id: Some(session.clone()),
            ..ask("again")
        })
        .await
        .unwrap();
    assert_eq!(second.session_id.as_deref(), Some(session.as_str()));

    let seen = fake.requests_to("/conversation");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].session_id, None, "no session_id on the first turn");
    assert_eq!(
        seen[0].raw_query, None,
        "the parameter is omitted, not empty"
    );
    assert_eq!(seen[1].session_id.as_deref(), Some(session.as_str()));
    assert_eq!(seen[1].query(), Some("again"));
}

#[tokio::test]
async fn personality_and_max_results_are_sent_and_nulls_allowed() {
    let fake = FakeAgent::start().await;
    let agent = client(&fake.url());

    agent
        .converse(&AgentRequest {
            personality_id: Some("pirate".into()),
            max_results: Some(7),
            ..ask("arr")
        })
        .await
        .unwrap();
    agent.converse(&ask("plain")).await.unwrap();

    let seen = fake.wait_for_requests(2, WAIT).await;
    assert_eq!(seen[0].personality_id(), Some("pirate"));
    assert_eq!(seen[0].max_results(), Some(7));
    assert_eq!(
        seen[1].body,
        Some(json!({"query": "plain", "max_results": null, "personality_id": null}))
    );
}

#[tokio::test]
async fn query_is_stateless() {
    let fake = FakeAgent::start().await;
    fake.set_answer(|r| format!("stateless {}", r.query().unwrap_or_default()));
    let agent = client(&fake.url());

    let answer = agent
        .query(&AgentRequest {
            max_results: Some(2),
            ..ask("what time is it")
        })
        .await
        .unwrap();
    assert_eq!(answer.response, "stateless what time is it");
    assert_eq!(answer.session_id, None);
    assert_eq!(answer.sources, Value::Null);

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/query")
    );
    assert_eq!(seen[0].max_results(), Some(2));
}

#[tokio::test]
async fn query_answer_without_session_id_field_is_fine() {
    let fake = FakeAgent::start().await;
    fake.push_response(200, r#"{"response": "terse"}"#);
    let answer = client(&fake.url()).query(&ask("q")).await.unwrap();
    assert_eq!(answer.response, "terse");
    assert_eq!(answer.session_id, None);
}

#[tokio::test]
async fn personalities_parse_string_and_numeric_ids() {
    let fake = FakeAgent::start().await;
    let list = client(&fake.url()).personalities().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["default", "pirate", "3"]);
    assert_eq!(list[1].name, "Pirate");
    assert_eq!(list[1].kind.as_deref(), Some("custom"));
    assert_eq!(list[1].role.as_deref(), Some("talks like a pirate"));
    assert_eq!(fake.requests()[0].method, "GET");
}

#[tokio::test]
async fn health_is_ok_and_maps_errors() {
    let fake = FakeAgent::start().await;
    let agent = client(&fake.url());
    assert_eq!(agent.health().await, Ok(()));
    fake.push_response(503, r#"{"detail": "warming up"}"#);
    assert_eq!(
        agent.health().await,
        Err(AgentError::Status {
            status: 503,
            detail: "warming up".into()
        })
    );
}

#[tokio::test]
async fn base_url_with_trailing_slash_works() {
    let fake = FakeAgent::start().await;
    let agent = client(&format!("{}/", fake.url()));
    agent.converse(&ask("x")).await.unwrap();
    assert_eq!(fake.requests()[0].path, "/conversation");
}

#[tokio::test]
async fn url_credentials_become_basic_auth() {
    use base64::Engine as _;
    let fake = FakeAgent::start().await;
    let url = fake.url().replace("http://", "http://bridge:p%40ss@");
    let agent = client(&format!("{url}/"));
    agent.health().await.unwrap();
    let seen = &fake.requests()[0];
    assert_eq!(seen.path, "/health");
    let want = base64::engine::general_purpose::STANDARD.encode("bridge:p@ss");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Basic {want}").as_str())
    );
    assert!(seen
        .header("user-agent")
        .unwrap()
        .starts_with("agent-bridge/"));
}

#[tokio::test]
async fn error_status_surfaces_the_detail() {
    let fake = FakeAgent::start().await;
    fake.push_response(500, r#"{"detail": "Personality not found: ghost"}"#);
    let err = client(&fake.url()).converse(&ask("q")).await.unwrap_err();
    assert_eq!(
        err,
        AgentError::Status {
            status: 500,
            detail: "Personality not found: ghost".into()
        }
    );
    assert!(
        err.to_string().contains("Personality not found: ghost"),
        "{err}"
    );
}

#[tokio::test]
async fn a_redirect_is_an_error_status_not_followed() {
    let fake = FakeAgent::start().await;
    fake.push_response(307, "moved");
    let err = client(&fake.url()).converse(&ask("q")).await.unwrap_err();
    assert_eq!(
        err,
        AgentError::Status {
            status: 307,
            detail: "moved".into()
        }
    );
    // Only the one call: the redirect was not followed to `/health`.
    assert_eq!(fake.requests().len(), 1, "{:?}", fake.requests());
}

#[tokio::test]
async fn invalid_session_id_is_the_wrapped_500() {
    let fake = FakeAgent::start().await;
    let err = client(&fake.url())
        .converse(&AgentRequest {
            session_id: Some("not-a-uuid".into()),
            ..ask("q")
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AgentError::Status {
            status: 500,
            detail: "Error in conversation: 400: Invalid session ID format".into()
        }
    );
    assert_eq!(fake.requests()[0].session_id.as_deref(), Some("not-a-uuid"));
}

#[tokio::test]
async fn non_string_detail_is_rendered_as_compact_json() {
    let fake = FakeAgent::start().await;
    // FastAPI's validation error: `detail` is a list.
    fake.push_response(422, r#"{"detail": [ {"msg": "Field required"} ]}"#);
    let err = client(&fake.url()).query(&ask("q")).await.unwrap_err();
    assert_eq!(
        err,
        AgentError::Status {
            status: 422,
            detail: r#"[{"msg":"Field required"}]"#.into()
        }
    );
}

#[tokio::test]
async fn error_status_with_text_body_keeps_its_start() {
    let fake = FakeAgent::start().await;
    fake.push_response(400, "Bad Request: the proxy did not like it");
    fake.push_response(502, "x".repeat(10_000));
    let agent = client(&fake.url());

    let err = agent.converse(&ask("q")).await.unwrap_err();
    assert_eq!(
        err,
        AgentError::Status {
            status: 400,
            detail: "Bad Request: the proxy did not like it".into()
        }
    );

    let AgentError::Status { status, detail } = agent.converse(&ask("q")).await.unwrap_err() else {
        panic!("expected a status error");
    };
    assert_eq!(status, 502);
    assert!(
        detail.chars().count() <= 201,
        "detail is cut: {}",
        detail.len()
    );
    assert!(detail.starts_with("xxxx"));
}

#[tokio::test]
async fn slow_agent_times_out() {
    let fake = FakeAgent::start().await;
    fake.set_delay(Duration::from_secs(5));
    let agent = AiAgentApi::new(&config(&fake.url(), Duration::from_millis(200))).unwrap();

    let started = Instant::now();
    let err = agent.converse(&ask("slow")).await.unwrap_err();
    assert_eq!(err, AgentError::Timeout(Duration::from_millis(200)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up in time"
    );
}

#[tokio::test]
async fn hanging_agent_times_out_and_is_released() {
    let fake = FakeAgent::start().await;
    fake.hang(true);
    let agent = AiAgentApi::new(&config(&fake.url(), Duration::from_millis(200))).unwrap();
    let err = agent.query(&ask("hang")).await.unwrap_err();
    assert_eq!(err, AgentError::Timeout(Duration::from_millis(200)));

    fake.hang(false);
    let answer = agent.query(&ask("free")).await.unwrap();
    assert_eq!(answer.response, "answer to: free");
}

#[tokio::test]
async fn connection_refused_is_unreachable_without_credentials() {
    let url = dead_url()
        .await
        .replace("http://", "http://bridge:s3cret-pw@");
    let agent = AiAgentApi::new(&config(&url, Duration::from_secs(5))).unwrap();
    let err = agent.converse(&ask("anyone?")).await.unwrap_err();
    let AgentError::Unreachable(cause) = &err else {
        panic!("expected Unreachable, got {err:?}");
    };
    assert!(!cause.is_empty());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(!shown.contains("127.0.0.1"), "no URL in the cause: {shown}");
}

#[tokio::test]
async fn non_json_success_is_malformed() {
    let fake = FakeAgent::start().await;
    fake.push_response(200, "<html>proxy login</html>");
    let err = client(&fake.url()).converse(&ask("q")).await.unwrap_err();
    assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn success_without_response_is_malformed() {
    let fake = FakeAgent::start().await;
    fake.push_response(
        200,
        r#"{"session_id": "5f0c6bb4-4b1e-4a55-9a53-0c6ac4c0f1f1"}"#,
    );
    fake.push_response(200, r#"{"response": null}"#);
    fake.push_response(200, r#"["response"]"#);
    let agent = client(&fake.url());
    for _ in 0..3 {
        let err = agent.converse(&ask("q")).await.unwrap_err();
        assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
    }
}

#[tokio::test]
async fn long_answers_arrive_whole() {
    let fake = FakeAgent::start().await;
    let long = "word ".repeat(200_000);
    fake.set_answer_text(long.clone());
    let answer = client(&fake.url()).query(&ask("q")).await.unwrap();
    assert_eq!(answer.response, long);
}

#[tokio::test]
async fn oversized_answer_is_malformed_not_buffered() {
    let fake = FakeAgent::start().await;
    fake.set_answer_text("x".repeat(9 * 1024 * 1024));
    let err = client(&fake.url()).query(&ask("q")).await.unwrap_err();
    assert!(matches!(err, AgentError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn from_config_picks_the_backend() {
    let mut cfg = config("http://127.0.0.1:9", Duration::from_secs(1));
    cfg.kind = AgentKind::Echo;
    let echo = agent::from_config(&cfg).unwrap();
    let answer = echo.converse(&ask("hi")).await.unwrap();
    assert_eq!(answer.response, "echo (turn 1): hi");

    let fake = FakeAgent::start().await;
    let cfg = config(&fake.url(), Duration::from_secs(5));
    let api = agent::from_config(&cfg).unwrap();
    assert_eq!(
        api.query(&ask("hi")).await.unwrap().response,
        "answer to: hi"
    );
}

#[tokio::test]
async fn one_client_serves_concurrent_calls() {
    let fake = FakeAgent::start().await;
    fake.set_delay(Duration::from_millis(100));
    let agent = std::sync::Arc::new(client(&fake.url()));
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let agent = agent.clone();
            tokio::spawn(async move { agent.query(&ask(&format!("q{i}"))).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            call.await.unwrap().unwrap().response,
            format!("answer to: q{i}")
        );
    }
    assert!(fake.max_in_flight() > 1, "calls overlapped");
    assert_eq!(fake.in_flight(), 0);
}
