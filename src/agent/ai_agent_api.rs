//! The default backend: a client of the AI Agent API (SPEC §1) over reqwest.
//!
//! One pooled [`reqwest::Client`] is built at start-up and shared by every call, so
//! turns reuse keep-alive connections instead of paying a TCP handshake each. Every
//! failure is mapped onto [`AgentError`] by what the caller does next:
//!
//! - no answer within `AGENT_TIMEOUT_SECS` → [`AgentError::Timeout`];
//! - cannot connect / transport broke → [`AgentError::Unreachable`] with a short cause
//!   that never contains the URL (it may carry credentials);
//! - a non-2xx status → [`AgentError::Status`] with the agent's `detail` (FastAPI's
//!   `{"detail": ...}` error shape), else the start of the body; a redirect is such a
//!   status too (not followed: reqwest would resend a POST as a GET);
//! - a 2xx that is not the documented JSON → [`AgentError::Malformed`].
//!
//! Bodies are read chunk by chunk up to a cap, so a runaway agent cannot make the
//! bridge allocate without bound. Nothing here panics on any input.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use url::Url;

use crate::config::AgentConfig;
use crate::core::error::Detail;
use crate::core::ports::{Agent, AgentAnswer, AgentError, AgentRequest, Personality};

/// Largest 2xx body accepted; answers are text, 8 MiB is far beyond any real one.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Largest error body read: only its `detail` or first characters are kept anyway.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Characters of a non-JSON error body kept as the detail.
const ERROR_TEXT_CHARS: usize = 200;
/// Characters of a JSON `detail` kept: enough for any message, bounded for log lines.
const DETAIL_CHARS: usize = 1_000;
/// How long an idle pooled connection is kept (reqwest's default, made explicit).
/// Connections the agent closes sooner (uvicorn drops idle ones after 5 s) are seen
/// closed by the pool and replaced, so a longer idle time only saves handshakes.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The body of `POST /conversation` and `POST /query`. `None` is sent as `null`, which
/// the agent reads as "use your default".
#[derive(Debug, Serialize)]
struct QueryBody<'a> {
    query: &'a str,
    max_results: Option<u32>,
    personality_id: Option<&'a str>,
}

/// Credentials given in `AGENT_URL` (`http://user:pass@host`), sent as HTTP basic
/// auth. They are taken out of the URLs so that no URL the client holds, logs or puts
/// in an error can leak them; reqwest marks the `Authorization` header sensitive.
#[derive(Clone)]
struct BasicAuth {
    user: String,
    password: Option<String>,
}

/// [`Agent`] over the AI Agent API's HTTP interface.
#[derive(Clone)]
pub struct AiAgentApi {
    client: Client,
    timeout: Duration,
    /// The base URL without credentials, for `Debug`.
    base: Url,
    conversation_url: Url,
    query_url: Url,
    personalities_url: Url,
    health_url: Url,
    auth: Option<BasicAuth>,
}

/// By hand, because a derived `Debug` would print the credentials.
impl std::fmt::Debug for AiAgentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiAgentApi")
            .field("base", &self.base.as_str())
            .field("timeout", &self.timeout)
            .field("auth", &self.auth.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl AiAgentApi {
    /// Builds the client for `cfg.url`. Fails only if the TLS backend cannot be set up.
    pub fn new(cfg: &AgentConfig) -> Result<Self, AgentError> {
        let client = client(
            Client::builder()
                .timeout(cfg.timeout)
                .tcp_keepalive(Duration::from_secs(60))
                .pool_idle_timeout(POOL_IDLE_TIMEOUT),
        )?;
        let (base, auth) = split_credentials(&cfg.url);
        Ok(Self {
            client,
            timeout: cfg.timeout,
            conversation_url: join(&base, "conversation"),
            query_url: join(&base, "query"),
            personalities_url: join(&base, "personalities"),
            health_url: join(&base, "health"),
            base,
            auth,
        })
    }

    /// Sends one request and returns the 2xx body, or the mapped error.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&QueryBody<'_>>,
    ) -> Result<Vec<u8>, AgentError> {
        let mut request = self.client.request(method, url);
        if let Some(auth) = &self.auth {
            request = request.basic_auth(&auth.user, auth.password.as_ref());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            let (bytes, complete) = read_capped(response, MAX_ANSWER_BYTES)
                .await
                .map_err(|e| self.transport_error(e))?;
            if !complete {
                return Err(AgentError::Malformed(
                    format!(
                        "answer larger than {} MiB",
                        MAX_ANSWER_BYTES / (1024 * 1024)
                    )
                    .into(),
                ));
            }
            Ok(bytes)
        } else {
            // A body we cannot read still leaves the status, which is the real news.
            let bytes = match read_capped(response, MAX_ERROR_BYTES).await {
                Ok((bytes, _)) => bytes,
                Err(e) if e.is_timeout() => return Err(AgentError::Timeout(self.timeout)),
                Err(_) => Vec::new(),
            };
            Err(AgentError::Status {
                status: status.as_u16(),
                detail: error_detail(status, &bytes),
            })
        }
    }

    /// Maps a reqwest failure: its timeout is ours; anything else means the agent could
    /// not be reached or the exchange broke.
    fn transport_error(&self, err: reqwest::Error) -> AgentError {
        if err.is_timeout() {
            return AgentError::Timeout(self.timeout);
        }
        // The URLs hold no credentials, but a cause could still quote a password
        // (a proxy's error page, say): scrub it to be sure.
        let err = err.without_url();
        let mut text = short_cause(&err);
        let password = self.auth.as_ref().and_then(|a| a.password.as_deref());
        let password = password.filter(|p| !p.is_empty());
        if let Some(password) = password {
            text = text.replace(password, "***");
        }
        // The error is kept as the cause only when nothing in it (any level's text,
        // its `Debug`) quotes the password; otherwise the scrubbed text is all there is.
        match password {
            Some(password) if quotes(&err, password) => AgentError::Unreachable(text.into()),
            _ => AgentError::Unreachable(Detail::with_cause(text, err)),
        }
    }

    async fn ask(&self, url: Url, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        let body = QueryBody {
            query: &req.query,
            max_results: req.max_results,
            personality_id: req.personality_id.as_deref(),
        };
        let bytes = self.call(Method::POST, url, Some(&body)).await?;
        parse_answer(&bytes)
    }
}

#[async_trait]
impl Agent for AiAgentApi {
    async fn converse(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        let mut url = self.conversation_url.clone();
        if let Some(id) = &req.session_id {
            url.query_pairs_mut().append_pair("session_id", id);
        }
        let mut answer = self.ask(url, req).await?;
        // An agent that omits the id kept the one it was given; the caller must not
        // lose the session because the answer was terse.
        if answer.session_id.is_none() {
            answer.session_id.clone_from(&req.session_id);
        }
        Ok(answer)
    }

    async fn query(&self, req: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        self.ask(self.query_url.clone(), req).await
    }

    async fn personalities(&self) -> Result<Vec<Personality>, AgentError> {
        let bytes = self
            .call(Method::GET, self.personalities_url.clone(), None)
            .await?;
        parse_personalities(&bytes)
    }

    async fn health(&self) -> Result<(), AgentError> {
        // Any 2xx is healthy: the body's shape varies between agent versions.
        self.call(Method::GET, self.health_url.clone(), None)
            .await
            .map(drop)
    }
}

/// `base` + `/endpoint`, whether or not `base` ends with `/` or has a path prefix
/// (`http://host/agent` → `http://host/agent/conversation`). `Url::join` alone would
/// drop the last segment of a prefix without a trailing slash; a query or fragment on
/// the base is dropped, since it cannot be meant for every endpoint.
pub(crate) fn join(base: &Url, endpoint: &str) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    let path = format!("{}/{}", base.path().trim_end_matches('/'), endpoint);
    url.set_path(&path);
    url
}

/// `url` without its user name and password, and those (percent-decoded) apart.
fn split_credentials(url: &Url) -> (Url, Option<BasicAuth>) {
    if url.username().is_empty() && url.password().is_none() {
        return (url.clone(), None);
    }
    let auth = BasicAuth {
        user: percent_decode(url.username()),
        password: url.password().map(percent_decode),
    };
    let mut bare = url.clone();
    // Both fail only for URLs that cannot have credentials, which then had none.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    (bare, Some(auth))
}

/// `%XX` → byte; anything malformed is kept as written. The `url` crate stores user
/// names and passwords percent-encoded but does not export a decoder.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match bytes.get(i + 1..i + 3) {
            Some(hex) if b == b'%' && hex.iter().all(u8::is_ascii_hexdigit) => {
                std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            }
            _ => None,
        };
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads at most `cap` bytes of the body; `false` when more was left unread.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let announced = response.content_length().unwrap_or(0);
    let announced = usize::try_from(announced).unwrap_or(usize::MAX);
    if announced > cap {
        return Ok((Vec::new(), false));
    }
    let mut bytes = Vec::with_capacity(announced);
    while let Some(chunk) = response.chunk().await? {
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok((bytes, false));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, true))
}

/// Whether `secret` appears in `err`'s `Debug` or in the text of any level of its chain.
fn quotes(err: &reqwest::Error, secret: &str) -> bool {
    if format!("{err:?}").contains(secret) {
        return true;
    }
    let mut level: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = level {
        if e.to_string().contains(secret) {
            return true;
        }
        level = e.source();
    }
    false
}

/// An agent backend's HTTP client: `builder` (its timeouts) plus what every backend
/// sets. A redirect is reported, not followed: reqwest would turn a redirected POST
/// into a GET without the query, and following costs every call a policy check.
pub(crate) fn client(builder: reqwest::ClientBuilder) -> Result<Client, AgentError> {
    builder
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("agent-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            AgentError::Unreachable(Detail::caused_by(
                "cannot build HTTP client",
                e.without_url(),
            ))
        })
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"),
/// which is what an operator needs; the outer layers only say "error sending request".
pub(crate) fn short_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let text = cause.to_string();
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "answer interrupted"
    } else {
        "request failed"
    };
    if text.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {text}")
    }
}

/// The detail of an error answer: FastAPI's `detail` (a string as is, anything else as
/// compact JSON), else the first characters of the body, else the status's reason.
pub(crate) fn error_detail(status: StatusCode, body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        if let Some(detail) = map.get("detail") {
            let text = match detail {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            return truncate_chars(&text, DETAIL_CHARS);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("(empty body)")
            .to_owned()
    } else {
        truncate_chars(text, ERROR_TEXT_CHARS)
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A short description of what a body looked like, for `Malformed` messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `{response, session_id, sources}` → [`AgentAnswer`]. `response` must be a string;
/// `session_id` may be null, missing or (leniently) a number; `sources` passes through.
pub(crate) fn parse_answer(body: &[u8]) -> Result<AgentAnswer, AgentError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        AgentError::Malformed(Detail::with_cause(format!("answer is not JSON ({e})"), e))
    })?;
    let Value::Object(mut map) = value else {
        return Err(AgentError::Malformed(
            format!("answer is {}, expected an object", describe(&value)).into(),
        ));
    };
    let response = match map.remove("response") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(AgentError::Malformed(
                format!("`response` is {}, expected a string", describe(&other)).into(),
            ))
        }
        None => return Err(AgentError::Malformed("answer has no `response`".into())),
    };
    let session_id = match map.remove("session_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let sources = map.remove("sources").unwrap_or(Value::Null);
    Ok(AgentAnswer {
        response,
        session_id,
        sources,
    })
}

/// `[{id, name, type, role}]` → personalities. `id` may be a string or a number;
/// entries without a usable id are skipped (they could not be selected anyway). An
/// object wrapping the list in `personalities` is accepted too.
pub(crate) fn parse_personalities(body: &[u8]) -> Result<Vec<Personality>, AgentError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        AgentError::Malformed(Detail::with_cause(
            format!("personalities are not JSON ({e})"),
            e,
        ))
    })?;
    let list = match value {
        Value::Array(list) => list,
        Value::Object(mut map) => match map.remove("personalities") {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(AgentError::Malformed(
                    "personalities: expected a list".into(),
                ))
            }
        },
        other => {
            return Err(AgentError::Malformed(
                format!("personalities are {}, expected a list", describe(&other)).into(),
            ))
        }
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let personalities = list
        .iter()
        .filter_map(|item| {
            let Value::Object(map) = item else {
                return None;
            };
            let id = text(map.get("id"))?;
            Some(Personality {
                name: text(map.get("name")).unwrap_or_else(|| id.clone()),
                kind: text(map.get("type")),
                role: text(map.get("role")),
                id,
            })
        })
        .collect();
    Ok(personalities)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn join_handles_slashes_and_prefixes() {
        let cases = [
            (
                "http://127.0.0.1:5001",
                "http://127.0.0.1:5001/conversation",
            ),
            (
                "http://127.0.0.1:5001/",
                "http://127.0.0.1:5001/conversation",
            ),
            ("http://h/agent", "http://h/agent/conversation"),
            ("http://h/agent/", "http://h/agent/conversation"),
            ("http://h/a/b//", "http://h/a/b/conversation"),
            (
                "https://u:p@h:8443/x?k=v#f",
                "https://u:p@h:8443/x/conversation",
            ),
        ];
        for (base, want) in cases {
            assert_eq!(join(&url(base), "conversation").as_str(), want, "{base}");
        }
    }

    #[test]
    fn credentials_leave_the_url() {
        let (bare, auth) = split_credentials(&url("https://bridge:p%40ss%2x@h/agent"));
        assert_eq!(bare.as_str(), "https://h/agent");
        let auth = auth.unwrap();
        assert_eq!(auth.user, "bridge");
        assert_eq!(auth.password.as_deref(), Some("p@ss%2x"));
        let (bare, auth) = split_credentials(&url("http://h:1/"));
        assert_eq!(bare.as_str(), "http://h:1/");
        assert!(auth.is_none());
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%C3%A9%ff"), "é\u{fffd}");
    }

    #[test]
    fn debug_hides_credentials() {
        let cfg = AgentConfig {
            url: url("http://user:hunter2@h/"),
            kind: crate::config::AgentKind::AiAgentApi,
            timeout: Duration::from_secs(1),
            max_concurrency: 1,
            personality: None,
            max_results: 3,
            echo_delay: None,
            history_turns: 20,
            history_chars: 24_000,
            openai: None,
        };
        let api = AiAgentApi::new(&cfg).unwrap();
        let shown = format!("{api:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("http://h/"), "{shown}");
    }

    #[test]
    fn session_id_is_encoded_in_the_query() {
        let mut u = join(&url("http://h/p/"), "conversation");
        u.query_pairs_mut().append_pair("session_id", "a b&c");
        assert_eq!(u.as_str(), "http://h/p/conversation?session_id=a+b%26c");
    }

    #[test]
    fn detail_is_taken_from_json_or_text() {
        let s = StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(error_detail(s, br#"{"detail":"boom"}"#), "boom");
        assert_eq!(
            error_detail(s, br#"{"detail":[{"loc":["body"],"msg":"x"}]}"#),
            r#"[{"loc":["body"],"msg":"x"}]"#
        );
        assert_eq!(error_detail(s, b"  plain failure \n"), "plain failure");
        assert_eq!(error_detail(s, b""), "Internal Server Error");
        assert_eq!(error_detail(s, br#"{"error":"x"}"#), r#"{"error":"x"}"#);
        let long = "é".repeat(500);
        let got = error_detail(s, long.as_bytes());
        assert_eq!(got.chars().count(), ERROR_TEXT_CHARS + 1);
        assert!(got.ends_with('…'));
        // Invalid UTF-8 never panics.
        assert!(!error_detail(s, &[0xff, 0xfe, 0x41]).is_empty());
    }

    #[test]
    fn answers_parse_leniently_but_require_a_response_string() {
        let a = parse_answer(br#"{"response":"hi","session_id":"s1","sources":[1]}"#).unwrap();
        assert_eq!(a.response, "hi");
        assert_eq!(a.session_id.as_deref(), Some("s1"));
        assert_eq!(a.sources, serde_json::json!([1]));

        let a = parse_answer(br#"{"response":"hi","session_id":null}"#).unwrap();
        assert_eq!(a.session_id, None);
        assert_eq!(a.sources, Value::Null);

        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"response":null}"#,
            br#"{"response":42}"#,
            b"",
        ] {
            assert!(
                matches!(parse_answer(bad), Err(AgentError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_answer_that_is_not_json_keeps_the_parser_error_as_its_cause() {
        let err = parse_answer(b"not json").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("agent answer malformed: answer is not JSON ("));
        let AgentError::Malformed(detail) = &err else {
            panic!("expected Malformed, got {err:?}");
        };
        assert!(detail.cause().is_some_and(|c| c.is::<serde_json::Error>()));
        assert_eq!(
            crate::core::error::Report(&err).to_string(),
            err.to_string()
        );
    }

    #[test]
    fn personalities_accept_numeric_ids() {
        let body = br#"[{"id":1,"name":"One","type":"default","role":"helper"},
                        {"id":"two","name":"Two"},
                        {"name":"no id"}, 7]"#;
        let p = parse_personalities(body).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].id, "1");
        assert_eq!(p[0].kind.as_deref(), Some("default"));
        assert_eq!(p[0].role.as_deref(), Some("helper"));
        assert_eq!(p[1].id, "two");
        assert_eq!(p[1].kind, None);
        assert!(matches!(
            parse_personalities(b"{}"),
            Err(AgentError::Malformed(_))
        ));
        assert!(matches!(
            parse_personalities(b"nope"),
            Err(AgentError::Malformed(_))
        ));
    }
}
