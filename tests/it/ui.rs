//! The operator console (`GET /ui`): its headers, and the page itself in a real headless
//! Chromium driven through chromedriver. Without chromium/chromedriver on the machine
//! the browser tests say `SKIPPED` and pass. `UPDATE_SCREENSHOTS=1` rewrites
//! docs/screenshots/*.png.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::receiver::Receiver;
use crate::support::{RecordingSink, TestApp, TOKEN};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(15);

/// One browser at a time: the machine is small.
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn console_is_served_from_the_binary_with_a_strict_csp() {
    let app = TestApp::spawn().await;
    for (path, ct) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ct),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h.contains_key("cache-control"));
        let body = resp.text().await.unwrap();
        assert!(!body.contains(TOKEN), "no secret in the assets");
    }
    let html = app.client.get(app.url("/ui")).send().await.unwrap();
    let html = html.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no CDN"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_token_the_console_is_for_loopback_clients_like_the_admin_api() {
    let app = TestApp::builder().var("BRIDGE_API_TOKEN", "").start().await;
    let resp = app.client.get(app.url("/ui")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "127.0.0.1 is loopback");
    // Through a proxy the page answers exactly as the admin API does (same auth layer).
    let get = |path: &str| {
        app.client
            .get(app.url(path))
            .header("x-forwarded-for", "203.0.113.9")
            .send()
    };
    let page = get("/ui/app.js").await.unwrap().status();
    let api = get("/sessions").await.unwrap().status();
    assert_eq!(page, api);
    app.shutdown().await;
}

/// A chromedriver of our own and a headless Chromium session on it.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (after saying SKIPPED) when the machine has no browser.
    async fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            println!("SKIPPED: chromium/chromedriver not installed");
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver listens"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a chromium session");
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }

    async fn sign_in(&self, app: &TestApp, token: &str) {
        self.client.goto(&app.url("/ui")).await.unwrap();
        let field = self.wait_for("#token").await;
        field.send_keys(token).await.unwrap();
        self.click("#signin-button").await;
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} appears: {e}"))
    }

    async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.unwrap();
    }

    /// Waits until the element's visible text satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if let Ok(t) = e.text().await {
                    if ok(&t) {
                        return t;
                    }
                    last = t;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css}: text never matched; last {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        if std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), png).unwrap();
        }
    }
}

async fn webhook_app() -> TestApp {
    TestApp::builder()
        .no_subscriber()
        .var("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .start()
        .await
}

#[tokio::test]
async fn console_signs_in_and_shows_each_part_and_the_counters() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C1", "hello", &sink).await;
    b.sign_in(&app, TOKEN).await;
    b.wait_text("#parts", |t| t.contains("store") && t.contains("up"))
        .await;
    b.wait_text("#parts", |t| t.contains("agent")).await;
    b.wait_text("#m-p50", |t| t.ends_with("ms") || t.ends_with(" s"))
        .await;
    b.wait_text("#m-queue", |t| t == "0").await;
    b.wait_text("#m-backlog", |t| !t.is_empty() && t != "–")
        .await;
    let stored: Value = b
        .client
        .execute(
            "return sessionStorage.getItem('agent-bridge-token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!(TOKEN), "the token is kept for the tab");
    b.screenshot("overview.png").await;
    b.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn console_refuses_a_wrong_token() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    b.sign_in(&app, "not-the-right-token-at-all").await;
    b.wait_text("#error", |t| t.to_lowercase().contains("not signed in"))
        .await;
    let nav_hidden: Value = b
        .client
        .execute("return document.getElementById('nav').hidden", vec![])
        .await
        .unwrap();
    assert_eq!(nav_hidden, json!(true), "still at sign-in");
    b.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn console_transcript_shows_a_new_turn_without_reloading() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let sink = RecordingSink::new();
    app.turn("C-live", "first question", &sink).await;
    b.sign_in(&app, TOKEN).await;
    b.wait_for("#parts li").await;
    b.click("a[data-view=conversations]").await;
    b.wait_text("#conv-list", |t| t.contains("C-live")).await;
    b.click("#conv-list li").await;
    b.wait_text("#transcript", |t| t.contains("first question"))
        .await;
    app.turn("C-live", "second question", &sink).await;
    b.wait_text("#transcript", |t| {
        t.contains("second question") && t.contains("answer to: second question")
    })
    .await;
    b.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn console_creates_a_webhook_shows_its_secret_once_and_redelivers() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = webhook_app().await;
    let rx = Receiver::start().await;
    rx.set_status(500);
    b.sign_in(&app, TOKEN).await;
    b.wait_for("#parts li").await;
    b.click("a[data-view=webhooks]").await;
    b.wait_for("#wh-url")
        .await
        .send_keys(&rx.url())
        .await
        .unwrap();
    b.click("#wh-create").await;
    let secret = b
        .wait_text("#wh-secret-value", |t| t.starts_with("whsec_"))
        .await;
    b.click("#wh-secret-dismiss").await;
    let shown: Value = b
        .client
        .execute("return document.body.innerText", vec![])
        .await
        .unwrap();
    assert!(
        !shown.as_str().unwrap().contains(&secret),
        "the secret is gone once dismissed"
    );
    let listed = app
        .admin(Method::GET, "/webhooks")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&secret), "the API never shows it again");

    // An event the broken receiver refuses, then its log and a redelivery.
    let resp = app
        .admin(Method::POST, "/agent-query")
        .json(&json!({"query": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    rx.wait_for(1, WAIT).await;
    b.click("#wh-list li").await;
    b.wait_text("#deliveries tbody", |t| t.contains("500"))
        .await;
    b.screenshot("deliveries.png").await;
    rx.set_status(200);
    let before = rx.count();
    b.click("#deliveries button.redeliver").await;
    rx.wait_for(before + 1, WAIT).await;
    b.wait_text("#deliveries tbody", |t| t.contains("200"))
        .await;
    b.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn console_streams_an_answer_in_try_it() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    b.sign_in(&app, TOKEN).await;
    b.wait_for("#parts li").await;
    b.click("a[data-view=try]").await;
    b.wait_for("#try-prompt")
        .await
        .send_keys("what is up?")
        .await
        .unwrap();
    b.click("#try-send").await;
    b.wait_text("#try-answer", |t| t == "answer to: what is up?")
        .await;
    b.wait_text("#try-status", |t| t.contains("done")).await;
    b.close().await;
    app.shutdown().await;
}
