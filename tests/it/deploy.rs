//! The deployment files agree with the code: ports, probe paths, variable names and
//! the Slack app's scopes and events.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

/// Every variable `.env.example` documents (it is checked against the config parser
/// by the config unit tests).
fn known_variables() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(".env.example")).unwrap();
    text.lines()
        .filter_map(|l| l.trim_start_matches('#').trim().split_once('='))
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        })
        .collect()
}

fn assert_known(var: &str, file: &str) {
    assert!(
        known_variables().contains(var),
        "{file} sets {var}, which the bridge does not read"
    );
}

#[test]
fn kubernetes_probes_and_port_match_the_server() {
    let deployment = yaml("deploy/k8s/deployment.yaml");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], Value::from(3000));
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        Value::from("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        Value::from("/readyz")
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    for env in container["env"].as_sequence().unwrap() {
        let name = env["name"].as_str().unwrap();
        assert_known(name, "deployment.yaml");
        if name == "HTTP_BIND" {
            assert!(env["value"].as_str().unwrap().ends_with(":3000"));
        }
    }
    let secret = yaml("deploy/k8s/secret.example.yaml");
    let mut values = std::collections::HashMap::new();
    for (k, v) in secret["stringData"].as_mapping().unwrap() {
        assert_known(k.as_str().unwrap(), "secret.example.yaml");
        values.insert(
            k.as_str().unwrap().to_owned(),
            v.as_str().unwrap_or_default().to_owned(),
        );
    }
    // Applied as it stands, the example starts (no placeholder admin token).
    if let Err(e) = agent_bridge::config::Config::from_vars(|k| values.get(k).cloned()) {
        panic!("secret.example.yaml does not pass start-up validation: {e}");
    }
    let service = yaml("deploy/k8s/service.yaml");
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        container["ports"][0]["name"]
    );
}

#[test]
fn compose_and_systemd_use_real_variables() {
    let compose = yaml("deploy/docker-compose.yml");
    for (k, _) in compose["services"]["bridge"]["environment"]
        .as_mapping()
        .unwrap()
    {
        assert_known(k.as_str().unwrap(), "docker-compose.yml");
    }
    assert_eq!(
        compose["services"]["bridge"]["ports"][0],
        Value::from("3000:3000")
    );
    let unit = std::fs::read_to_string(root().join("deploy/agent-bridge.service")).unwrap();
    for line in unit.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        let (k, _) = line.split_once('=').unwrap();
        assert_known(k, "agent-bridge.service");
    }
    assert!(unit.contains("ExecStart=/usr/local/bin/agent-bridge run"));
    assert!(unit.contains("NoNewPrivileges=yes"));
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_healthcheck() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(text.matches("FROM ").count() >= 2, "multi-stage");
    assert!(text.contains("USER 10001"));
    assert!(text.contains("HEALTHCHECK") && text.contains("healthcheck"));
    assert!(text.contains("EXPOSE 3000"));
    assert!(
        Path::new(&root().join("migrations")).exists(),
        "the Dockerfile copies migrations/"
    );
}

/// A manifest's bot scopes and bot events.
fn scopes_and_events(manifest: &serde_yaml::Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let strings = |v: &serde_yaml::Value| -> BTreeSet<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    (
        strings(&manifest["oauth_config"]["scopes"]["bot"]),
        strings(&manifest["settings"]["event_subscriptions"]["bot_events"]),
    )
}

#[test]
fn both_slack_manifests_ask_for_exactly_the_scopes_and_events_the_bridge_uses() {
    let scopes: BTreeSet<_> = agent_bridge::check::SLACK_SCOPES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let events: BTreeSet<_> = agent_bridge::check::SLACK_EVENTS
        .iter()
        .map(|s| s.to_string())
        .collect();
    for path in [
        "deploy/slack-app-manifest.yml",
        "deploy/slack-app-manifest-socket-mode.yml",
    ] {
        let manifest = yaml(path);
        let (have_scopes, have_events) = scopes_and_events(&manifest);
        assert_eq!(have_scopes, scopes, "{path}: scopes");
        assert_eq!(have_events, events, "{path}: events");
    }

    let events_api = yaml("deploy/slack-app-manifest.yml");
    let url = events_api["settings"]["event_subscriptions"]["request_url"]
        .as_str()
        .unwrap();
    assert!(url.ends_with("/slack/events"));
    assert_eq!(events_api["settings"]["socket_mode_enabled"], false);
    // The feedback buttons need interactivity, at the route the bridge serves.
    let interactivity = &events_api["settings"]["interactivity"];
    assert_eq!(interactivity["is_enabled"], true);
    assert!(interactivity["request_url"]
        .as_str()
        .unwrap()
        .ends_with("/slack/interactivity"));

    let socket = yaml("deploy/slack-app-manifest-socket-mode.yml");
    assert_eq!(socket["settings"]["socket_mode_enabled"], true);
    assert_eq!(socket["settings"]["interactivity"]["is_enabled"], true);
    assert!(socket["settings"]["interactivity"]["request_url"].is_null());
    assert!(
        socket["settings"]["event_subscriptions"]["request_url"].is_null(),
        "Socket Mode needs no request URL"
    );
}

/// Every Slack Web API method the code calls, with the bot scope it needs (`None`:
/// no bot scope — `auth.test`, and `apps.connections.open`, which takes the app-level
/// token's `connections:write`). A new call fails the test below until it is added
/// here, and so in `check::SLACK_SCOPES` and both manifests.
const METHOD_SCOPES: &[(&str, Option<&str>)] = &[
    ("apps.connections.open", None),
    ("auth.test", None),
    ("chat.postMessage", Some("chat:write")),
    ("chat.update", Some("chat:write")),
    ("chat.startStream", Some("chat:write")),
    ("chat.appendStream", Some("chat:write")),
    ("chat.stopStream", Some("chat:write")),
    // Accepted with chat:write since 2026-03-05 (PLATFORM-NOTES).
    ("assistant.threads.setStatus", Some("chat:write")),
    (
        "assistant.threads.setSuggestedPrompts",
        Some("assistant:write"),
    ),
    ("assistant.threads.setTitle", Some("assistant:write")),
    // A recovered turn's earlier answer is looked up (SPEC §3); the *:history scopes
    // the message events need already cover it.
    ("conversations.replies", Some("channels:history")),
    ("reactions.add", Some("reactions:write")),
    ("reactions.remove", Some("reactions:write")),
];

/// Every event subscription, with the scope it needs and the event `type` the code
/// must handle.
const EVENT_SCOPES: &[(&str, &str, Option<&str>)] = &[
    ("app_mention", "app_mention", Some("app_mentions:read")),
    ("message.channels", "message", Some("channels:history")),
    ("message.groups", "message", Some("groups:history")),
    ("message.im", "message", Some("im:history")),
    ("message.mpim", "message", Some("mpim:history")),
    (
        "assistant_thread_started",
        "assistant_thread_started",
        Some("assistant:write"),
    ),
    ("app_home_opened", "app_home_opened", None),
];

#[test]
fn the_slack_scopes_are_exactly_those_the_code_calls_and_subscribes_to() {
    let dir = root().join("src/slack");
    let mut code = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        code.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    // `self.call("method", …)` is how every Web API call is made (web_api.rs).
    let called: BTreeSet<String> = code
        .split(".call(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(called.contains("chat.postMessage"), "{called:?}");
    let mut needed = BTreeSet::new();
    for method in &called {
        let Some((_, scope)) = METHOD_SCOPES.iter().find(|(m, _)| m == method) else {
            panic!("the code calls {method}: add it and its scope to METHOD_SCOPES");
        };
        needed.extend(scope.map(str::to_owned));
    }
    for (method, _) in METHOD_SCOPES {
        assert!(
            called.contains(*method),
            "{method} is in METHOD_SCOPES but never called"
        );
    }
    let subscribed: BTreeSet<&str> = agent_bridge::check::SLACK_EVENTS.iter().copied().collect();
    for event in &subscribed {
        let Some((_, kind, scope)) = EVENT_SCOPES.iter().find(|(e, _, _)| e == event) else {
            panic!("the bridge subscribes to {event}: add it and its scope to EVENT_SCOPES");
        };
        assert!(
            code.contains(&format!("\"{kind}\"")),
            "{event} is subscribed but no code handles `{kind}`"
        );
        needed.extend(scope.map(str::to_owned));
    }
    let declared: BTreeSet<String> = agent_bridge::check::SLACK_SCOPES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        declared, needed,
        "check::SLACK_SCOPES (and so both manifests) must be exactly the scopes used"
    );
}
