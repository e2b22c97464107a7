//! Signed Slack Events API requests: one distinct `event_callback` / `app_mention` per
//! sequence number (unique `event_id` and `ts`, a spread of channels), ≈1 KB like a
//! real one (Slack sends the text twice: as `text` and as rich-text `blocks`).

use std::net::SocketAddr;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::Request;
use sha2::Sha256;

pub const BOT_USER: &str = "UBOT";
pub const TEAM: &str = "T1";
/// `ts` of event `seq` is `TS_BASE + seq µs`, so the fake Slack can map a
/// `thread_ts` back to the event.
pub const TS_BASE_SECS: u64 = 1_700_000_000;

pub fn ts_of(seq: u64) -> String {
    format!("{}.{:06}", TS_BASE_SECS + seq / 1_000_000, seq % 1_000_000)
}

pub fn seq_of_ts(ts: &str) -> Option<u64> {
    let (s, f) = ts.split_once('.')?;
    let s: u64 = s.parse().ok()?;
    let f: u64 = f.parse().ok()?;
    Some((s.checked_sub(TS_BASE_SECS)?) * 1_000_000 + f)
}

pub struct EventMaker {
    pub nonce: String,
    /// Channels are `C{n:06}` for n in 0..channels, round robin by seq.
    pub channels: u64,
    /// Added to the text (e.g. `w3id=`), followed by the seq.
    pub tag: &'static str,
    pub addr: SocketAddr,
    padding: String,
    key: Hmac<Sha256>,
}

impl EventMaker {
    pub fn new(secret: &str, channels: u64, tag: &'static str, addr: SocketAddr) -> Self {
        let nonce = uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase();
        let mut m = EventMaker {
            nonce,
            channels: channels.max(1),
            tag,
            addr,
            padding: String::new(),
            key: Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key"),
        };
        // Size the text so the whole body is about 1 KB.
        let probe = m.body(0).len();
        let want = 1024usize.saturating_sub(probe) / 2;
        m.padding = "lorem ipsum dolor sit amet ".repeat(want / 27 + 1)[..want].to_string();
        m
    }

    pub fn channel(&self, seq: u64) -> String {
        format!("C{:06}", seq % self.channels)
    }

    pub fn body(&self, seq: u64) -> String {
        let ts = ts_of(seq);
        let ch = self.channel(seq);
        let text = format!("<@{BOT_USER}> bench {}{seq} {}", self.tag, self.padding);
        let plain = format!(" bench {}{seq} {}", self.tag, self.padding);
        let nonce = &self.nonce;
        format!(
            concat!(
                r#"{{"token":"vErIfIcAtIoNtOkEn","team_id":"{team}","context_team_id":"{team}","api_app_id":"A0BENCH01","#,
                r#""event":{{"user":"U0USER{u:04}","type":"app_mention","ts":"{ts}","client_msg_id":"{nonce}-{seq}","#,
                r#""text":"{text}","team":"{team}","blocks":[{{"type":"rich_text","block_id":"b{seq}","elements":[{{"type":"rich_text_section","elements":["#,
                r#"{{"type":"user","user_id":"{bot}"}},{{"type":"text","text":"{plain}"}}]}}]}}],"#,
                r#""channel":"{ch}","event_ts":"{ts}"}},"type":"event_callback","event_id":"Ev{nonce}{seq}","event_time":{et},"#,
                r#""authorizations":[{{"enterprise_id":null,"team_id":"{team}","user_id":"{bot}","is_bot":true,"is_enterprise_install":false}}],"#,
                r#""is_ext_shared_channel":false,"event_context":"4-eyJldCI6ImFwcF9tZW50aW9uIiwidGlkIjoiVDEiLCJhaWQiOiJBMEJFTkNIMDEiLCJjaWQiOiJ{ch}In0"}}"#
            ),
            team = TEAM,
            bot = BOT_USER,
            u = seq % 997,
            ts = ts,
            nonce = nonce,
            seq = seq,
            text = text,
            plain = plain,
            ch = ch,
            et = TS_BASE_SECS,
        )
    }

    /// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut mac = self.key.clone();
        mac.update(b"v0:");
        mac.update(timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    pub fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let body = self.body(seq);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let sig = self.sign(&now, body.as_bytes());
        Request::post("/slack/events")
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-slack-request-timestamp", now)
            .header("x-slack-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .expect("request")
    }
}

/// Constant-time comparison of the expected signature and the header (floor).
pub fn verify(key: &Hmac<Sha256>, ts: &[u8], body: &[u8], sig: &[u8]) -> bool {
    let Some(hex_sig) = sig.strip_prefix(b"v0=") else {
        return false;
    };
    let Ok(raw) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = key.clone();
    mac.update(b"v0:");
    mac.update(ts);
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&raw).is_ok()
}

/// What every receiver must check: the timestamp is within 5 minutes of now and the
/// signature matches (floor and reference servers).
pub fn accept(key: &Hmac<Sha256>, headers: &hyper::HeaderMap, body: &[u8]) -> bool {
    let ts = headers
        .get("x-slack-request-timestamp")
        .map(|v| v.as_bytes());
    let sig = headers.get("x-slack-signature").map(|v| v.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let fresh = ts
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| (now - t).abs() <= 300);
    fresh
        && match (ts, sig) {
            (Some(ts), Some(sig)) => verify(key, ts, body, sig),
            _ => false,
        }
}
