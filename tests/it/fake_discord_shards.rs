//! The fake Discord's sharded gateway, seen by raw WebSocket clients: each IDENTIFY
//! gets a session of its own shard, a dispatch reaches every live session of its
//! guild's shard and no other, and RESUME continues only a shard's latest session.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::discord::{FakeDiscord, GUILD_ID};

const WAIT: Duration = Duration::from_secs(5);

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

const USER: &str = "3000000000000000001";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A gateway connection that has read HELLO.
async fn connect(fake: &FakeDiscord) -> Ws {
    let url = format!(
        "{}/gateway?v=10&encoding=json",
        fake.url().replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = next_frame(&mut ws).await.expect("HELLO");
    assert_eq!(hello["op"], 10, "{hello}");
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(WsMessage::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame, `None` when the connection ends or nothing comes within WAIT.
async fn next_frame(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Connects and identifies as `[shard, total]`; returns the connection and READY's `d`.
async fn identify(fake: &FakeDiscord, shard: u32, total: u32) -> (Ws, Value) {
    let mut ws = connect(fake).await;
    let d = json!({"token": "t", "intents": 0, "properties": {}, "shard": [shard, total]});
    send(&mut ws, json!({"op": 2, "d": d})).await;
    let ready = next_frame(&mut ws).await.expect("READY");
    assert_eq!(
        (&ready["op"], &ready["t"], &ready["s"]),
        (&json!(0), &json!("READY"), &json!(1))
    );
    (ws, ready["d"].clone())
}

/// The next MESSAGE_CREATE: its `s` and `d.id`.
async fn next_message(ws: &mut Ws) -> (u64, String) {
    let frame = next_frame(ws).await.expect("a MESSAGE_CREATE");
    assert_eq!(frame["t"], "MESSAGE_CREATE", "{frame}");
    (
        frame["s"].as_u64().unwrap(),
        frame["d"]["id"].as_str().unwrap().to_string(),
    )
}

/// Asserts nothing arrives on `ws` for QUIET.
async fn stays_quiet(ws: &mut Ws, who: &str) {
    if let Ok(Some(frame)) = tokio::time::timeout(QUIET, ws.next()).await {
        panic!("{who} got {frame:?}");
    }
}

fn ready_guilds(ready: &Value) -> Vec<String> {
    ready["guilds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            assert_eq!(g["unavailable"], true, "{g}");
            g["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn each_shard_gets_its_own_session_and_only_its_guilds_events_even_twice() {
    let fake = FakeDiscord::start_sharded(2).await;
    let gateway: Value = reqwest::get(format!("{}/api/v10/gateway/bot", fake.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gateway["shards"], 2, "{gateway}");
    assert_eq!(gateway["session_start_limit"]["max_concurrency"], 1);

    let (g0, g1) = (fake.guild_for_shard(0), fake.guild_for_shard(1));
    assert_ne!(g0, g1);
    for (guild, shard) in [(&g0, 0), (&g1, 1)] {
        let id: u64 = guild.parse().unwrap();
        assert_eq!((id >> 22) % 2, shard, "{guild}");
    }
    assert!([&g0, &g1].contains(&&GUILD_ID.to_string()));
    assert_eq!(fake.guild_for_shard(1), g1, "one guild per shard");

    let (mut a, ready_a) = identify(&fake, 0, 2).await;
    let (mut b, ready_b) = identify(&fake, 1, 2).await;
    assert_eq!(ready_a["shard"], json!([0, 2]));
    assert_eq!(ready_b["shard"], json!([1, 2]));
    assert_eq!(ready_guilds(&ready_a), vec![g0.clone()]);
    assert_eq!(ready_guilds(&ready_b), vec![g1.clone()]);
    assert_ne!(ready_a["session_id"], ready_b["session_id"]);
    fake.wait_shard_live(0, WAIT).await;
    fake.wait_shard_live(1, WAIT).await;
    assert_eq!((fake.live_sessions(0), fake.live_sessions(1)), (1, 1));

    // A guild of shard 1: the second client only.
    let id = fake.guild_message_in(&g1, "C1", USER, "on shard 1").await;
    assert_eq!(next_message(&mut b).await, (2, id));
    stays_quiet(&mut a, "shard 0").await;

    // A DM: shard 0 only.
    let id = fake.dm("D1", USER, "a dm").await;
    assert_eq!(next_message(&mut a).await, (2, id));
    stays_quiet(&mut b, "shard 1").await;

    // A second session of shard 1 (another replica): both get the event.
    let (mut c, ready_c) = identify(&fake, 1, 2).await;
    assert_eq!(ready_guilds(&ready_c), vec![g1.clone()]);
    assert_eq!(fake.live_sessions(1), 2);
    assert_eq!(fake.max_concurrent_sessions(1), 2);
    assert_eq!(fake.max_concurrent_sessions(0), 1);
    let id = fake.guild_message_in(&g1, "C1", USER, "twice").await;
    assert_eq!(next_message(&mut b).await, (3, id.clone()), "its own s");
    assert_eq!(next_message(&mut c).await, (2, id), "its own s");
    stays_quiet(&mut a, "shard 0").await;
    let shards: Vec<u32> = fake.identify_log().iter().map(|(s, _)| *s).collect();
    assert_eq!(shards, [0, 1, 1]);

    // Cutting shard 1 leaves shard 0 up; only shard 1's latest session resumes.
    fake.drop_shard(1).await;
    assert!(next_frame(&mut b).await.is_none(), "b cut");
    assert!(next_frame(&mut c).await.is_none(), "c cut");
    assert_eq!((fake.live_sessions(0), fake.live_sessions(1)), (1, 0));
    let mut stale = connect(&fake).await;
    let resume =
        |d: &Value| json!({"op": 6, "d": {"token": "t", "session_id": d["session_id"], "seq": 3}});
    send(&mut stale, resume(&ready_b)).await;
    assert_eq!(
        next_frame(&mut stale).await.unwrap(),
        json!({"op": 9, "d": false})
    );
    let mut resumed = connect(&fake).await;
    send(&mut resumed, resume(&ready_c)).await;
    let frame = next_frame(&mut resumed).await.unwrap();
    assert_eq!(
        (&frame["t"], &frame["s"]),
        (&json!("RESUMED"), &json!(3)),
        "{frame}"
    );
    fake.wait_shard_live(1, WAIT).await;
    let id = fake.guild_message_in(&g1, "C2", USER, "after resume").await;
    assert_eq!(next_message(&mut resumed).await, (4, id));
    assert_eq!(fake.resumes(), 1);
}
