//! The store contract: one generic suite, [`store_contract`], run against a SQLite
//! file, `sqlite::memory:` and — when `TEST_DATABASE_URL` is set — a fresh PostgreSQL
//! schema; plus what only makes sense per backend (restarts, concurrent migrations,
//! connection errors).

use agent_bridge::core::events::{EventId, EventKind, OutboxEvent};
use agent_bridge::core::message::{ConversationKey, Platform};
use agent_bridge::core::ports::{
    Commit, Conversation, Conversations, Role, Sightings, StoreError, TranscriptEntry, Transcripts,
    TurnQueue,
};
use agent_bridge::store::{self, Pool, SqlStore};
use agent_bridge::webhook::WebhookStore;
use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::support::db::{self, PgSchema};

// ---------------------------------------------------------------------------------
// Per-backend entry points
// ---------------------------------------------------------------------------------

async fn open(url: &str) -> SqlStore {
    let s = store::connect(url).await.unwrap();
    s.migrate().await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_store_meets_the_contract() {
    let (_dir, url) = db::sqlite_file_url().await;
    let s = open(&url).await;
    assert_eq!(s.backend(), "sqlite");
    store_contract(&s).await;
}

/// A database made by an earlier release (migrations up to 0010, with the journal
/// `WITHOUT ROWID` and transcripts `AUTOINCREMENT`) keeps every row through 0011's
/// re-cut: the same transcript ids, the open turn still open, its id still unique,
/// and new transcript rows numbered after the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_upgrade_keeps_transcripts_and_journal_rows() {
    use agent_bridge::core::ports::{Journal, JournalTurn};
    let (_dir, url) = db::sqlite_file_url().await;
    {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
            .await
            .unwrap();
        let mut earlier = sqlx::migrate!("migrations/sqlite");
        earlier.migrations = earlier
            .migrations
            .iter()
            .filter(|m| m.version <= 10)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        earlier.run(&pool).await.unwrap();
        for statement in [
            "INSERT INTO transcripts (id, session_id, role, content, created_at, platform, \
             channel, thread, user_id, message_id) \
             VALUES (7, 'sess-up', 'user', 'before', 4102444800000, 'slack', 'C1', NULL, 'U1', 'm1'), \
                    (9, 'sess-up', 'assistant', 'answer', 4102444800001, 'slack', 'C1', NULL, 'U1', NULL)",
            "INSERT INTO turn_journal (id, platform, workspace, channel, thread, user_id, \
             message_id, body, reply_to, state, received_at, updated_at) \
             VALUES ('slack-1.1-T1-C1', 'slack', 'T1', 'C1', NULL, 'U1', '1.1', 'left open', \
                     '{\"channel\":\"C1\"}', 'accepted', 1000, 1000)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }

    let s = open(&url).await;
    let ids = |h: Vec<TranscriptEntry>| {
        h.iter()
            .map(|e| (e.id, e.content.clone()))
            .collect::<Vec<_>>()
    };
    let history = s.history("sess-up", None).await.unwrap();
    assert_eq!(
        ids(history),
        [(7, "before".to_string()), (9, "answer".to_string())]
    );
    let open_turns = s
        .open_turns(Platform::Slack, OffsetDateTime::now_utc(), 10)
        .await
        .unwrap();
    assert_eq!(open_turns.len(), 1);
    assert_eq!(open_turns[0].id, "slack-1.1-T1-C1");
    assert_eq!(open_turns[0].msg.text, "left open");
    let mut again: JournalTurn = open_turns[0].clone();
    assert!(
        !s.accept_turn(again.clone()).await.unwrap(),
        "still journaled once"
    );
    again.id = "slack-1.2-T1-C1".into();
    assert!(s.accept_turn(again).await.unwrap());
    let later = datetime!(2100-01-01 00:00 UTC) + Duration::seconds(1);
    s.commit(Commit {
        transcript: vec![entry("sess-up", Role::User, "after", later)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let history = s.history("sess-up", None).await.unwrap();
    assert_eq!(
        history.last().map(|e| e.id),
        Some(10),
        "numbered after the old rows"
    );
}

/// The SQLite writer commits turns on a connection of its own while the pool's
/// connection changes subscriptions (a transaction that also reads): both must
/// succeed, however their transactions interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_subscription_changes_and_turn_commits_interleave_without_errors() {
    let (_dir, url) = db::sqlite_file_url().await;
    let s = open(&url).await;
    s.execute_raw(
        "INSERT INTO webhook_endpoints (id, url, ordered, secret, enabled, created_at) \
         VALUES ('ep_race', 'http://r/race', 0, 'whsec_r', 1, 0)",
    )
    .await
    .unwrap();
    let at = datetime!(2026-06-01 00:00 UTC);
    let writers: Vec<_> = (0..400)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move {
                let c = conv(&format!("console/-/race-{n}"), Some("sess-race"), at);
                let event = OutboxEvent::new(
                    EventKind::Conversation,
                    Some(c.key.to_string()),
                    &json!({"n": n}),
                    at,
                );
                s.commit(Commit {
                    conversations: vec![c],
                    transcript: vec![entry("sess-race", Role::User, "hi", at)],
                    events: vec![event],
                })
                .await
            })
        })
        .collect();
    for n in 0..100 {
        let events = if n % 2 == 0 {
            vec!["*".to_string()]
        } else {
            vec!["conversation".to_string()]
        };
        let changed = s.set_subscriptions("ep_race", &events).await;
        assert!(
            matches!(changed, Ok(true)),
            "resubscription {n}: {changed:?}"
        );
    }
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(s.history("sess-race", None).await.unwrap().len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_wal_is_checkpointed_in_the_background_while_the_store_stays_open() {
    let (dir, url) = db::sqlite_file_url().await;
    let s = open(&url).await;
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .expect("the database file");
    let before = std::fs::metadata(&file).unwrap().len();
    let at = datetime!(2026-06-01 00:00 UTC);
    let commit = Commit {
        conversations: (0..2_000)
            .map(|i| conv(&format!("console/-/wal{i}"), Some("sess-wal"), at))
            .collect(),
        ..Commit::default()
    };
    s.commit(commit).await.unwrap();

    // Far below the writer's own checkpoint threshold: only the checkpointer copies
    // these pages into the database file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = std::fs::metadata(&file).unwrap().len();
        if now > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "database file still {now} bytes: the WAL was not checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory_store_meets_the_contract() {
    let s = open("sqlite::memory:").await;
    assert_eq!(s.backend(), "sqlite");
    store_contract(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_meets_the_contract() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let s = open(&pg.url).await;
    assert_eq!(s.backend(), "postgres");
    store_contract(&s).await;
    s.close().await;
    pg.remove().await;
}

#[tokio::test]
async fn sqlite_file_store_keeps_data_across_restarts() {
    let (_dir, url) = db::sqlite_file_url().await;
    restart_keeps_data(&url).await;
}

#[tokio::test]
async fn postgres_store_keeps_data_across_restarts() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    restart_keeps_data(&pg.url).await;
    pg.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_sqlite_file_agree_on_the_first_sighting() {
    // Two processes (or a `migrate` run next to a server) share one file: the unique
    // key decides between their connections, with the busy timeout absorbing the lock.
    let (_dir, url) = db::sqlite_file_url().await;
    let a = open(&url).await;
    let b = open(&url).await;
    let expires = OffsetDateTime::now_utc() + Duration::hours(1);

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { s.first_sighting("slack:EvShared", expires).await })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap().unwrap());
    }

    assert_eq!(winners, 1);
}

/// A turn accepted while another process holds SQLite's write lock (a `migrate`, an
/// operator's shell) waits for the lock and is journaled once it is free: it is never
/// refused for the lock (an idle writer lets the caller write at once, without
/// waiting; a busy database sends the write to the writer's thread, which waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_accepted_while_another_process_writes_waits_for_the_lock() {
    use agent_bridge::core::ports::{Journal, JournalTurn};
    use sqlx::Connection;
    let (_dir, url) = db::sqlite_file_url().await;
    let s = open(&url).await;
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    let mut msg = crate::support::msg("C-busy", "while the file is locked");
    msg.message_id = "200.1".into();
    let turn = JournalTurn {
        id: msg.turn_id(),
        msg: msg.into(),
        reply_to: "{}".into(),
        received: OffsetDateTime::now_utc(),
    };
    let accepting = tokio::spawn({
        let (s, turn) = (s.clone(), turn.clone());
        async move { s.accept_turn(turn).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!accepting.is_finished(), "the accept waits for the lock");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    assert!(accepting.await.unwrap().unwrap(), "journaled");
    assert!(!s.accept_turn(turn).await.unwrap(), "and only once");
}

#[tokio::test]
async fn two_memory_stores_are_separate_databases() {
    let a = open("sqlite::memory:").await;
    let b = open("sqlite::memory:").await;
    let c = conv("console/-/a", Some("s1"), datetime!(2026-01-01 00:00 UTC));
    a.commit(Commit {
        conversations: vec![c.clone()],
        ..Commit::default()
    })
    .await
    .unwrap();

    assert_eq!(a.conversation(&c.key).await.unwrap(), Some(c.clone()));
    assert_eq!(b.conversation(&c.key).await.unwrap(), None);
}

/// Two processes starting at once on a fresh file (or `migrate` next to a starting
/// server): the second waits for the first's migrations, finds them applied and
/// applies nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_migrations_run_by_two_processes_at_once_both_succeed() {
    let (_dir, url) = db::sqlite_file_url().await;
    let a = store::connect(&url).await.unwrap();
    let b = store::connect(&url).await.unwrap();

    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());

    ra.unwrap();
    rb.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (rows, versions): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT version) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, versions, "each migration recorded once");
    assert_eq!(
        rows as usize,
        sqlx::migrate!("migrations/sqlite").iter().count()
    );
    pool.close().await;
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn postgres_migrations_run_by_two_replicas_at_once_both_succeed() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let a = store::connect(&pg.url).await.unwrap();
    let b = store::connect(&pg.url).await.unwrap();

    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());

    ra.unwrap();
    rb.unwrap();
    a.ping().await.unwrap();
    a.close().await;
    b.close().await;
    pg.remove().await;
}

#[tokio::test]
async fn unknown_database_url_scheme_is_refused_naming_database_url() {
    let err = store::connect("mysql://root:hunter2@localhost/bridge")
        .await
        .unwrap_err();

    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(msg.contains("DATABASE_URL"), "{msg}");
    assert!(msg.contains("mysql"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable_and_the_password_is_not_echoed() {
    // Port 1 on loopback refuses connections immediately.
    let err = store::connect("postgres://bridge:hunter2@127.0.0.1:1/bridge")
        .await
        .unwrap_err();

    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("cannot connect to PostgreSQL"), "{msg}");
}

#[tokio::test]
async fn sqlite_file_in_a_missing_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("no/such/dir/bridge.db").display()
    );

    let err = store::connect(&url).await.unwrap_err();

    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn sqlite_file_is_created_when_missing() {
    let (dir, url) = db::sqlite_file_url().await;
    assert!(!dir.path().join("bridge.db").exists());

    open(&url).await.ping().await.unwrap();

    assert!(dir.path().join("bridge.db").exists());
}

// ---------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------

/// Everything a `Store` must do, on any backend. Expects a freshly migrated, empty
/// store; the parts use disjoint keys, except `conversations_are_listed_newest_first`,
/// which runs first because it lists every conversation.
async fn store_contract(s: &SqlStore) {
    conversations_are_listed_newest_first(s).await;
    migrating_again_is_harmless(s).await;
    conversation_round_trips_and_upserts(s).await;
    conversations_are_found_by_agent_session(s).await;
    history_is_oldest_first_and_honours_since(s).await;
    purge_transcripts_deletes_only_older_rows(s).await;
    sightings_are_first_once_until_they_expire(s).await;
    empty_commit_is_a_no_op(s).await;
    events_nobody_subscribes_to_are_not_stored(s).await;
    commit_fans_events_out_to_subscribed_enabled_endpoints(s).await;
    failed_commit_leaves_nothing_behind(s).await;
    a_failed_commit_among_concurrent_ones_fails_alone(s).await;
    unknown_stored_values_are_reported_as_corrupt(s).await;
    concurrent_sightings_of_one_key_have_exactly_one_winner(s).await;
    seen_reads_a_live_sighting_without_writing(s).await;
    the_turn_queue_is_ordered_by_arrival_and_skips_expired_tickets(s).await;
    the_turn_journal_takes_a_message_once_and_hands_a_left_turn_to_one_claimer(s).await;
    a_lease_has_one_holder_until_it_runs_out_or_is_given_back(s).await;
}

/// SPEC §4's shard leases: one holder at a time, renewable by it, free once expired or
/// given back; a pace lease is never renewed early, even by its holder; concurrent
/// takers of one free lease have exactly one winner.
async fn a_lease_has_one_holder_until_it_runs_out_or_is_given_back(s: &SqlStore) {
    use agent_bridge::core::ports::Leases;
    let soon = || OffsetDateTime::now_utc() + Duration::seconds(15);
    assert!(s.hold_lease("t-slot:0", "a", soon()).await.unwrap());
    assert!(
        !s.hold_lease("t-slot:0", "b", soon()).await.unwrap(),
        "held by a"
    );
    assert!(
        s.hold_lease("t-slot:0", "a", soon()).await.unwrap(),
        "a renews"
    );
    s.drop_lease("t-slot:0", "b").await.unwrap();
    assert!(
        !s.hold_lease("t-slot:0", "b", soon()).await.unwrap(),
        "only a gives it back"
    );
    s.drop_lease("t-slot:0", "a").await.unwrap();
    assert!(
        s.hold_lease("t-slot:0", "b", soon()).await.unwrap(),
        "given back"
    );
    // Expired: anyone may take it.
    let past = OffsetDateTime::now_utc() - Duration::seconds(1);
    assert!(s.hold_lease("t-slot:1", "a", past).await.unwrap());
    assert!(s.hold_lease("t-slot:1", "b", soon()).await.unwrap());
    let leases = s.leases("t-").await.unwrap();
    let owners: Vec<(&str, &str)> = leases
        .iter()
        .map(|l| (l.name.as_str(), l.owner.as_str()))
        .collect();
    assert_eq!(owners, [("t-slot:0", "b"), ("t-slot:1", "b")]);
    assert!(leases
        .iter()
        .all(|l| l.expires_at > OffsetDateTime::now_utc()));
    assert!(s.leases("u-").await.unwrap().is_empty());
    // A pace slot: free once, then not even for its holder until it runs out.
    assert!(s.hold_free_lease("t-pace:0", "a", soon()).await.unwrap());
    assert!(!s.hold_free_lease("t-pace:0", "a", soon()).await.unwrap());
    assert!(s.hold_free_lease("t-pace:1", "a", past).await.unwrap());
    assert!(s.hold_free_lease("t-pace:1", "a", soon()).await.unwrap());
    // Racing takers: one wins.
    let takers = (0..8).map(|i| {
        let owner = format!("r{i}");
        async move { s.hold_lease("t-slot:race", &owner, soon()).await.unwrap() }
    });
    let won = futures_util::future::join_all(takers).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
}

/// SPEC §3: a message is journaled once; a turn left `accepted` and untouched since a
/// moment is open to recovery, claimed by exactly one process; a touched, answered
/// or failed one is not; the purge removes old rows.
async fn the_turn_journal_takes_a_message_once_and_hands_a_left_turn_to_one_claimer(s: &SqlStore) {
    use agent_bridge::core::ports::{Journal, JournalTurn, TurnState};
    let at = |secs: i64| OffsetDateTime::now_utc() - Duration::seconds(secs);
    let turn = |ts: &str, received| {
        let mut msg = crate::support::msg("C-journal", "journal me");
        msg.message_id = ts.into();
        JournalTurn {
            id: msg.turn_id(),
            msg: msg.into(),
            reply_to: "{\"where\":\"here\"}".into(),
            received,
        }
    };
    let (a, b, c) = (
        turn("100.1", at(60)),
        turn("100.2", at(50)),
        turn("100.3", at(40)),
    );
    assert!(s.accept_turn(a.clone()).await.unwrap());
    assert!(
        !s.accept_turn(a.clone()).await.unwrap(),
        "a redelivery is journaled once"
    );
    assert!(s.accept_turn(b.clone()).await.unwrap());
    assert!(s.accept_turn(c.clone()).await.unwrap());
    // b is answered with its record, c fails: only a stays open.
    s.commit_turn(Commit::default(), &b.id, TurnState::Answered)
        .await
        .unwrap();
    s.end_turn(&c.id, TurnState::Failed).await.unwrap();
    // Ended turns, answered or failed, are found by id when received since a moment;
    // an open one, an older one or an unknown id is not.
    assert!(s.turn_ended(&b.id, at(3600)).await.unwrap());
    assert!(s.turn_ended(&c.id, at(3600)).await.unwrap());
    assert!(!s.turn_ended(&a.id, at(3600)).await.unwrap());
    assert!(!s.turn_ended(&b.id, at(45)).await.unwrap());
    assert!(!s.turn_ended("slack-0.0-T0-C0", at(3600)).await.unwrap());
    // Left turns: untouched since `cut` (a's row was last written 60 s ago).
    let cut = OffsetDateTime::now_utc();
    let open = s.open_turns(Platform::Slack, cut, 100).await.unwrap();
    let ids: Vec<&str> = open.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [a.id.as_str()], "{ids:?}");
    assert_eq!(open[0].msg.text, "journal me");
    assert_eq!(open[0].msg.channel, "C-journal");
    assert_eq!(open[0].reply_to, a.reply_to);
    assert_eq!(
        open[0].received.unix_timestamp(),
        a.received.unix_timestamp()
    );
    // One claimer of a left turn wins; the claim touches it.
    let (first, second) = tokio::join!(s.claim_turn(&a.id, cut), s.claim_turn(&a.id, cut));
    assert!(first.unwrap() ^ second.unwrap(), "exactly one claim wins");
    assert!(!s.claim_turn(&a.id, cut).await.unwrap());
    assert!(s
        .open_turns(Platform::Slack, cut, 100)
        .await
        .unwrap()
        .is_empty());
    // A live replica's touch keeps its turn from being left.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let later = OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        s.open_turns(Platform::Slack, later, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    s.touch_turns(std::slice::from_ref(&a.id)).await.unwrap();
    assert!(s
        .open_turns(Platform::Slack, later, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(!s.claim_turn(&a.id, later).await.unwrap());
    // A recent turn is where a catch-up reads.
    let recent = s.recent_turns(Platform::Slack, at(120)).await.unwrap();
    assert_eq!(recent.len(), 3, "{recent:?}");
    // The purge (with the transcripts' retention) removes them.
    s.purge_transcripts(OffsetDateTime::now_utc() + Duration::seconds(5))
        .await
        .unwrap();
    assert!(s
        .recent_turns(Platform::Slack, at(120))
        .await
        .unwrap()
        .is_empty());
}

async fn seen_reads_a_live_sighting_without_writing(s: &SqlStore) {
    let now = OffsetDateTime::now_utc();
    assert!(!s.seen("seen:a").await.unwrap());
    assert!(!s.seen("seen:a").await.unwrap(), "reading does not record");
    assert!(s
        .first_sighting("seen:a", now + Duration::seconds(60))
        .await
        .unwrap());
    assert!(s.seen("seen:a").await.unwrap());
    assert!(s
        .first_sighting("seen:old", now - Duration::seconds(1))
        .await
        .unwrap());
    assert!(
        !s.seen("seen:old").await.unwrap(),
        "an expired sighting is not seen"
    );
}

async fn the_turn_queue_is_ordered_by_arrival_and_skips_expired_tickets(s: &SqlStore) {
    let key = ConversationKey::from_stored("slack/T/queue");
    let other = ConversationKey::from_stored("slack/T/other");
    let now = OffsetDateTime::now_utc();
    let live = now + Duration::seconds(60);
    let t1 = now - Duration::milliseconds(30);
    let t2 = now - Duration::milliseconds(20);
    // Taken out of arrival order: the later message's ticket first.
    let second = s.turn_enter(&key, t2, live).await.unwrap();
    let first = s.turn_enter(&key, t1, live).await.unwrap();
    let elsewhere = s.turn_enter(&other, t2, live).await.unwrap();
    assert!(s.turn_is_next(&key, first, t1, live).await.unwrap());
    assert!(!s.turn_is_next(&key, second, t2, live).await.unwrap());
    assert!(
        s.turn_is_next(&other, elsewhere, t2, live).await.unwrap(),
        "conversations are independent"
    );
    s.turn_leave(first).await.unwrap();
    assert!(s.turn_is_next(&key, second, t2, live).await.unwrap());

    // A dead replica's ticket stops counting once it expires.
    let dead = s
        .turn_enter(&key, t1, now - Duration::seconds(1))
        .await
        .unwrap();
    assert!(
        s.turn_is_next(&key, second, t2, live).await.unwrap(),
        "ticket {dead} expired"
    );
    assert!(
        s.purge_sightings(OffsetDateTime::now_utc()).await.unwrap() >= 1,
        "the janitor removes it"
    );
    s.turn_leave(second).await.unwrap();
    s.turn_leave(elsewhere).await.unwrap();
}

async fn migrating_again_is_harmless(s: &SqlStore) {
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    s.ping().await.unwrap();
}

async fn conversation_round_trips_and_upserts(s: &SqlStore) {
    let mut c = Conversation {
        key: ConversationKey::from_stored("slack/T1/C1/t:170.1"),
        platform: Platform::Slack,
        workspace: "T1".into(),
        channel: "C1".into(),
        thread: Some("170.1".into()),
        user: Some("U1".into()),
        agent_session: None,
        personality: None,
        last_activity: datetime!(2026-01-01 10:00:00.123 UTC),
    };
    assert_eq!(s.conversation(&c.key).await.unwrap(), None);

    s.commit(Commit {
        conversations: vec![c.clone()],
        ..Commit::default()
    })
    .await
    .unwrap();
    assert_eq!(s.conversation(&c.key).await.unwrap(), Some(c.clone()));

    c.agent_session = Some("sess-rt".into());
    c.personality = Some("pirate".into());
    c.user = None;
    c.last_activity = datetime!(2026-01-01 10:05:00.456 UTC);
    s.commit(Commit {
        conversations: vec![c.clone()],
        ..Commit::default()
    })
    .await
    .unwrap();
    assert_eq!(s.conversation(&c.key).await.unwrap(), Some(c.clone()));
    assert_eq!(
        count(
            s,
            "SELECT COUNT(*) FROM conversations WHERE key = 'slack/T1/C1/t:170.1'"
        )
        .await,
        1
    );
}

async fn conversations_are_listed_newest_first(s: &SqlStore) {
    let old = conv(
        "discord/G/old",
        Some("s-old"),
        datetime!(2026-01-01 00:00 UTC),
    );
    let mid = conv(
        "discord/G/mid",
        Some("s-mid"),
        datetime!(2026-01-02 00:00 UTC),
    );
    let new = conv(
        "discord/G/new",
        Some("s-new"),
        datetime!(2026-01-03 00:00 UTC),
    );
    let commit = Commit {
        conversations: vec![mid.clone(), new.clone(), old.clone()],
        ..Commit::default()
    };
    s.commit(commit).await.unwrap();

    assert_eq!(
        s.conversations(10).await.unwrap(),
        vec![new.clone(), mid.clone(), old]
    );
    assert_eq!(s.conversations(2).await.unwrap(), vec![new, mid]);
    assert_eq!(s.conversations(0).await.unwrap(), vec![]);
}

async fn conversations_are_found_by_agent_session(s: &SqlStore) {
    let a = conv(
        "slack/T/by-a",
        Some("shared-session"),
        datetime!(2026-02-01 00:00 UTC),
    );
    let b = conv(
        "slack/T/by-b",
        Some("shared-session"),
        datetime!(2026-02-02 00:00 UTC),
    );
    let other = conv(
        "slack/T/by-c",
        Some("other-session"),
        datetime!(2026-02-03 00:00 UTC),
    );
    let none = conv("slack/T/by-d", None, datetime!(2026-02-04 00:00 UTC));
    let commit = Commit {
        conversations: vec![a.clone(), b.clone(), other, none],
        ..Commit::default()
    };
    s.commit(commit).await.unwrap();

    let found = s.conversations_by_session("shared-session").await.unwrap();

    assert_eq!(found, vec![b, a]);
    assert_eq!(
        s.conversations_by_session("no-such-session").await.unwrap(),
        vec![]
    );
}

async fn history_is_oldest_first_and_honours_since(s: &SqlStore) {
    let t0 = datetime!(2026-03-01 12:00:00.000 UTC);
    let rows = vec![
        // Inserted out of order; two rows share a timestamp (the id breaks the tie).
        entry("hist", Role::Assistant, "second", t0 + Duration::seconds(1)),
        entry("hist", Role::User, "first", t0),
        entry("hist", Role::User, "third", t0 + Duration::seconds(2)),
        entry("hist", Role::Assistant, "fourth", t0 + Duration::seconds(2)),
        entry("other-session", Role::User, "elsewhere", t0),
    ];
    s.commit(Commit {
        transcript: rows,
        ..Commit::default()
    })
    .await
    .unwrap();

    let all = s.history("hist", None).await.unwrap();
    let contents: Vec<_> = all.iter().map(|e| e.content.as_str()).collect();
    assert_eq!(contents, ["first", "second", "third", "fourth"]);
    assert!(all.windows(2).all(|w| w[0].id != w[1].id));

    let first = &all[0];
    let mut expected = entry("hist", Role::User, "first", t0);
    expected.id = first.id;
    assert_eq!(first, &expected);
    assert_eq!(all[1].role, Role::Assistant);

    let since = s
        .history("hist", Some(t0 + Duration::seconds(1)))
        .await
        .unwrap();
    let contents: Vec<_> = since.iter().map(|e| e.content.as_str()).collect();
    assert_eq!(contents, ["second", "third", "fourth"]);
    assert_eq!(s.history("no-such-session", None).await.unwrap(), vec![]);

    // Pages: `after` an id, at most `limit`, `since` still applies.
    let page = s.history_page("hist", None, None, 2).await.unwrap();
    assert_eq!(page, all[..2].to_vec());
    let page = s
        .history_page("hist", None, Some(all[1].id), 10)
        .await
        .unwrap();
    assert_eq!(page, all[2..].to_vec());
    let page = s
        .history_page("hist", Some(t0 + Duration::seconds(1)), None, 1)
        .await
        .unwrap();
    assert_eq!(page[0].content, "second");
    assert!(s
        .history_page("hist", None, Some(all[3].id), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .history_page("no-such-session", None, None, 1)
        .await
        .unwrap()
        .is_empty());
}

async fn purge_transcripts_deletes_only_older_rows(s: &SqlStore) {
    let cut = datetime!(2000-06-01 00:00 UTC);
    let rows = vec![
        entry("purge", Role::User, "ancient", cut - Duration::days(40)),
        entry(
            "purge",
            Role::Assistant,
            "old",
            cut - Duration::milliseconds(1),
        ),
        entry("purge", Role::User, "at the cut", cut),
        entry("purge", Role::Assistant, "recent", cut + Duration::days(1)),
    ];
    s.commit(Commit {
        transcript: rows,
        ..Commit::default()
    })
    .await
    .unwrap();

    let purged = s.purge_transcripts(cut).await.unwrap();

    assert_eq!(purged, 2);
    let left: Vec<_> = s
        .history("purge", None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.content)
        .collect();
    assert_eq!(left, ["at the cut", "recent"]);
    assert_eq!(s.purge_transcripts(cut).await.unwrap(), 0);
}

async fn sightings_are_first_once_until_they_expire(s: &SqlStore) {
    let now = OffsetDateTime::now_utc();
    let later = now + Duration::hours(1);

    assert!(s.first_sighting("slack:EvOnce", later).await.unwrap());
    assert!(!s.first_sighting("slack:EvOnce", later).await.unwrap());
    assert!(!s
        .first_sighting("slack:EvOnce", later + Duration::hours(1))
        .await
        .unwrap());

    // A sighting whose expiry has passed counts as new again, and then holds anew.
    assert!(s
        .first_sighting("slack:EvStale", now - Duration::minutes(1))
        .await
        .unwrap());
    assert!(s.first_sighting("slack:EvStale", later).await.unwrap());
    assert!(!s.first_sighting("slack:EvStale", later).await.unwrap());

    assert!(s
        .first_sighting("slack:EvGone", now - Duration::minutes(5))
        .await
        .unwrap());
    let purged = s.purge_sightings(now).await.unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        count(
            s,
            "SELECT COUNT(*) FROM seen_events WHERE key = 'slack:EvGone'"
        )
        .await,
        0
    );
    assert!(!s.first_sighting("slack:EvOnce", later).await.unwrap());
}

async fn empty_commit_is_a_no_op(s: &SqlStore) {
    let before = count(s, "SELECT COUNT(*) FROM transcripts").await;

    s.commit(Commit::default()).await.unwrap();

    assert_eq!(count(s, "SELECT COUNT(*) FROM transcripts").await, before);
}

/// Runs while no endpoint exists: the turn is recorded, its event is not (nothing
/// would ever read it).
async fn events_nobody_subscribes_to_are_not_stored(s: &SqlStore) {
    let at = datetime!(2026-04-02 00:00 UTC);
    let c = conv("console/-/unheard", Some("sess-unheard"), at);
    let event = OutboxEvent::new(
        EventKind::Conversation,
        Some(c.key.to_string()),
        &json!({"n": 1}),
        at,
    );
    s.commit(Commit {
        conversations: vec![c.clone()],
        transcript: vec![entry("sess-unheard", Role::User, "hello?", at)],
        events: vec![event],
    })
    .await
    .unwrap();

    assert!(s.conversation(&c.key).await.unwrap().is_some());
    assert_eq!(s.history("sess-unheard", None).await.unwrap().len(), 1);
    assert_eq!(count(s, "SELECT COUNT(*) FROM webhook_events").await, 0);
    assert_eq!(count(s, "SELECT COUNT(*) FROM webhook_deliveries").await, 0);
}

async fn failed_commit_leaves_nothing_behind(s: &SqlStore) {
    let at = datetime!(2026-04-01 00:00 UTC);
    let c = conv("console/-/atomic", Some("sess-atomic"), at);
    let event = OutboxEvent::new(
        EventKind::SessionReset,
        Some(c.key.to_string()),
        &json!({"n": 1}),
        at,
    );
    // The same event id twice violates the primary key of webhook_events (endpoints
    // subscribe to it by now), after the conversation, the transcript and the first
    // event were already written.
    let broken = Commit {
        conversations: vec![c.clone()],
        transcript: vec![entry("sess-atomic", Role::User, "hello", at)],
        events: vec![event.clone(), event.clone()],
    };

    let err = s.commit(broken).await.unwrap_err();

    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(s.conversation(&c.key).await.unwrap(), None);
    assert_eq!(s.history("sess-atomic", None).await.unwrap(), vec![]);
    let sql = format!(
        "SELECT COUNT(*) FROM webhook_events WHERE id = '{}'",
        event.id.as_str()
    );
    assert_eq!(count(s, &sql).await, 0);

    // The store (on SQLite memory: its only connection) is usable after the rollback.
    let fixed = Commit {
        conversations: vec![c.clone()],
        transcript: vec![entry("sess-atomic", Role::User, "hello", at)],
        events: vec![event],
    };
    s.commit(fixed).await.unwrap();
    assert_eq!(s.conversation(&c.key).await.unwrap(), Some(c));
    assert_eq!(s.history("sess-atomic", None).await.unwrap().len(), 1);
    assert_eq!(count(s, &sql).await, 1);
}

/// On SQLite concurrent commits share one transaction (group commit): a broken one
/// among them must fail alone, leaving nothing behind, and the others must land.
async fn a_failed_commit_among_concurrent_ones_fails_alone(s: &SqlStore) {
    let at = datetime!(2026-04-02 00:00 UTC);
    let commit = |n: usize, broken: bool| {
        let c = conv(
            &format!("console/-/together-{n}"),
            Some(&format!("sess-together-{n}")),
            at,
        );
        let event = OutboxEvent::new(
            EventKind::SessionReset,
            Some(c.key.to_string()),
            &json!({"n": n}),
            at,
        );
        let events = match broken {
            // A duplicate event id breaks webhook_events' key after the other rows.
            true => vec![event.clone(), event],
            false => vec![event],
        };
        Commit {
            conversations: vec![c.clone()],
            transcript: vec![entry(&format!("sess-together-{n}"), Role::User, "hi", at)],
            events,
        }
    };
    let tasks: Vec<_> = (0..9)
        .map(|n| {
            let s = s.clone();
            let commit = commit(n, n == 4);
            tokio::spawn(async move { s.commit(commit).await })
        })
        .collect();
    for (n, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        let key = conv(&format!("console/-/together-{n}"), None, at).key;
        let stored = s.conversation(&key).await.unwrap();
        let history = s
            .history(&format!("sess-together-{n}"), None)
            .await
            .unwrap();
        if n == 4 {
            assert!(result.is_err(), "the broken commit must fail");
            assert_eq!(stored, None);
            assert_eq!(history, vec![]);
        } else {
            result.unwrap_or_else(|e| panic!("commit {n} failed with its neighbour: {e}"));
            assert!(stored.is_some(), "commit {n} must be stored");
            assert_eq!(history.len(), 1, "commit {n}");
        }
    }
}

async fn commit_fans_events_out_to_subscribed_enabled_endpoints(s: &SqlStore) {
    s.execute_raw(
        "INSERT INTO webhook_endpoints (id, url, ordered, secret, enabled, created_at) VALUES
            ('ep_all',   'http://r/all',   0, 'whsec_a', 1, 0),
            ('ep_conv',  'http://r/conv',  1, 'whsec_b', 1, 0),
            ('ep_both',  'http://r/both',  0, 'whsec_c', 1, 0),
            ('ep_off',   'http://r/off',   0, 'whsec_d', 0, 0),
            ('ep_query', 'http://r/query', 0, 'whsec_e', 1, 0),
            ('ep_none',  'http://r/none',  0, 'whsec_f', 1, 0);
         INSERT INTO webhook_subscriptions (endpoint_id, event_type) VALUES
            ('ep_all', '*'),
            ('ep_conv', 'conversation'),
            ('ep_both', '*'), ('ep_both', 'conversation'),
            ('ep_off', '*'),
            ('ep_query', 'query');",
    )
    .await
    .unwrap();
    let at = datetime!(2026-05-01 08:00:00.250 UTC);
    let turn = OutboxEvent::new(
        EventKind::Conversation,
        Some("slack/T/fan".into()),
        &json!({"q": "hi"}),
        at,
    );
    let query = OutboxEvent::new(
        EventKind::Query,
        None,
        &json!({"q": "?"}),
        at + Duration::seconds(1),
    );
    let reset = OutboxEvent::new(
        EventKind::SessionReset,
        Some("slack/T/fan".into()),
        &json!({}),
        at,
    );
    let commit = Commit {
        conversations: vec![conv("slack/T/fan", Some("sess-fan"), at)],
        transcript: vec![entry("sess-fan", Role::User, "hi", at)],
        events: vec![turn.clone(), query.clone(), reset.clone()],
    };

    s.commit(commit).await.unwrap();

    let d = deliveries(s, &turn.id).await;
    assert_eq!(endpoints(&d), ["ep_all", "ep_both", "ep_conv"]);
    for (_, status, attempts, next_attempt_at, ordering_key) in &d {
        assert_eq!(status, "pending");
        assert_eq!(*attempts, 0);
        assert_eq!(*next_attempt_at, at.unix_timestamp() * 1000 + 250);
        assert_eq!(ordering_key.as_deref(), Some("slack/T/fan"));
    }
    let d = deliveries(s, &query.id).await;
    assert_eq!(endpoints(&d), ["ep_all", "ep_both", "ep_query"]);
    assert!(d.iter().all(|row| row.4.is_none()));
    assert_eq!(
        endpoints(&deliveries(s, &reset.id).await),
        ["ep_all", "ep_both"]
    );

    let (kind, body) = event_row(s, &turn.id).await;
    assert_eq!(kind, "conversation");
    assert_eq!(body, turn.body);
}

async fn unknown_stored_values_are_reported_as_corrupt(s: &SqlStore) {
    s.execute_raw(
        "INSERT INTO conversations (key, platform, workspace, channel, last_activity)
         VALUES ('irc/x/y', 'irc', 'x', 'y', 0);
         INSERT INTO transcripts (session_id, role, content, created_at, platform, channel, user_id)
         VALUES ('sess-corrupt', 'system', 'hi', 0, 'slack', 'C', 'U');",
    )
    .await
    .unwrap();

    let err = s
        .conversation(&ConversationKey::from_stored("irc/x/y"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let err = s.history("sess-corrupt", None).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

    s.execute_raw("DELETE FROM conversations WHERE key = 'irc/x/y'")
        .await
        .unwrap();
}

async fn concurrent_sightings_of_one_key_have_exactly_one_winner(s: &SqlStore) {
    let now = OffsetDateTime::now_utc();
    for (key, seed_expiry) in [
        ("slack:EvRace", None),
        ("slack:EvRaceStale", Some(now - Duration::minutes(1))),
    ] {
        if let Some(expired) = seed_expiry {
            assert!(s.first_sighting(key, expired).await.unwrap());
        }
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.first_sighting(key, now + Duration::hours(1)).await })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "{key}");
    }
}

async fn restart_keeps_data(url: &str) {
    let c = conv(
        "discord/G1/C1",
        Some("sess-restart"),
        datetime!(2026-06-01 00:00 UTC),
    );
    let first = open(url).await;
    first
        .commit(Commit {
            conversations: vec![c.clone()],
            transcript: vec![entry(
                "sess-restart",
                Role::User,
                "remember me",
                c.last_activity,
            )],
            events: vec![],
        })
        .await
        .unwrap();
    assert!(first
        .first_sighting(
            "slack:EvRestart",
            OffsetDateTime::now_utc() + Duration::hours(1)
        )
        .await
        .unwrap());
    first.close().await;
    drop(first);

    let second = open(url).await;

    assert_eq!(second.conversation(&c.key).await.unwrap(), Some(c));
    assert_eq!(
        second.history("sess-restart", None).await.unwrap()[0].content,
        "remember me"
    );
    assert!(!second
        .first_sighting(
            "slack:EvRestart",
            OffsetDateTime::now_utc() + Duration::hours(1)
        )
        .await
        .unwrap());
    second.close().await;
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn conv(key: &str, session: Option<&str>, at: OffsetDateTime) -> Conversation {
    let mut parts = key.splitn(3, '/');
    let platform = Platform::parse(parts.next().unwrap()).unwrap();
    Conversation {
        key: ConversationKey::from_stored(key),
        platform,
        workspace: parts.next().unwrap().to_owned(),
        channel: parts.next().unwrap().to_owned(),
        thread: None,
        user: None,
        agent_session: session.map(Into::into),
        personality: None,
        last_activity: at,
    }
}

fn entry(session: &str, role: Role, content: &str, at: OffsetDateTime) -> TranscriptEntry {
    TranscriptEntry {
        id: 0,
        session_id: session.into(),
        role,
        content: content.into(),
        timestamp: at,
        platform: Platform::Discord,
        channel: "C1".into(),
        thread: Some("th".into()),
        user: "U1".into(),
        message_id: (role == Role::User).then(|| "m1,m2".into()),
    }
}

/// `(endpoint_id, status, attempts, next_attempt_at, ordering_key)` per delivery.
type DeliveryRow = (String, String, i32, i64, Option<String>);

async fn deliveries(s: &SqlStore, event: &EventId) -> Vec<DeliveryRow> {
    const SQL: &str = "SELECT endpoint_id, status, attempts, next_attempt_at, ordering_key \
                       FROM webhook_deliveries WHERE event_id = $1 ORDER BY endpoint_id";
    match s.pool() {
        Pool::Sqlite(p) => sqlx::query_as(SQL)
            .bind(event.as_str())
            .fetch_all(p)
            .await
            .unwrap(),
        Pool::Postgres(p) => sqlx::query_as(SQL)
            .bind(event.as_str())
            .fetch_all(p)
            .await
            .unwrap(),
    }
}

fn endpoints(rows: &[DeliveryRow]) -> Vec<&str> {
    rows.iter().map(|r| r.0.as_str()).collect()
}

async fn event_row(s: &SqlStore, event: &EventId) -> (String, String) {
    const SQL: &str = "SELECT type, body FROM webhook_events WHERE id = $1";
    match s.pool() {
        Pool::Sqlite(p) => sqlx::query_as(SQL)
            .bind(event.as_str())
            .fetch_one(p)
            .await
            .unwrap(),
        Pool::Postgres(p) => sqlx::query_as(SQL)
            .bind(event.as_str())
            .fetch_one(p)
            .await
            .unwrap(),
    }
}

async fn count(s: &SqlStore, sql: &str) -> i64 {
    match s.pool() {
        Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    }
}
