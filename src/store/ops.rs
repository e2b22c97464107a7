//! What the store does, written once for both back-ends against [`Exec`]: every
//! write as an [`Op`] (applied by [`apply`], on PostgreSQL in a transaction of its
//! own, on SQLite by the writer inside its group-committed batch), every read as a
//! function, and the decoding of rows into the port's records.
//!
//! The SQL itself is in `sql.rs`; how a statement reaches a connection is `exec.rs`.

use std::collections::HashMap;

use time::OffsetDateTime;

use super::exec::{args, Cols, Exec};
use super::sql::{self, Sql};
use super::{from_ms, to_ms};
use crate::core::message::Inbound;
use crate::core::message::{ConversationKey, Platform};
use crate::core::ports::{
    Commit, Conversation, FeedbackClick, FeedbackEntry, JournalTurn, Lease, RecentTurn, Role,
    StoreError, TranscriptEntry, TurnState,
};
use crate::webhook::store::{
    AttemptRecord, ClaimRequest, ClaimedDelivery, DeliveryRecord, DeliveryResult, DeliveryStatus,
    WebhookEndpoint,
};

/// Every write the store makes.
#[derive(Debug)]
pub(crate) enum Op {
    /// A turn's (or any change's) record. [`apply`] with `events: false` leaves its
    /// events out (SQLite's writer knows no endpoint is enabled).
    Commit(Commit),
    /// Answers `true` for the first sighting.
    Sighting {
        key: String,
        expires_at: i64,
    },
    PurgeTranscripts(i64),
    /// Expired sightings and expired turn tickets.
    PurgeSightings(i64),
    TurnEnter {
        conversation: String,
        received: i64,
        expires_at: i64,
    },
    /// Extends the ticket; `true` when no live ticket is ahead of it.
    TurnIsNext {
        conversation: String,
        ticket: i64,
        received: i64,
        expires_at: i64,
    },
    TurnLeave(i64),
    TurnExtend {
        tickets: Vec<i64>,
        expires_at: i64,
    },
    CreateEndpoint(Box<WebhookEndpoint>),
    DeleteEndpoint(String),
    SetSubscriptions {
        id: String,
        events: Vec<String>,
    },
    RotateSecret {
        id: String,
        secret: String,
        previous_expires_at: i64,
    },
    /// A turn's record and its journal move, in one transaction.
    CommitTurn {
        commit: Commit,
        turn: String,
        state: TurnState,
    },
    /// Answers whether the turn is new (not journaled yet).
    AcceptTurn(Box<JournalTurn>),
    TouchTurns(Vec<String>),
    /// Answers whether this process took the left turn (see `sql::CLAIM_TURN`).
    ClaimTurn {
        turn: String,
        untouched_since: i64,
    },
    EndTurn {
        turn: String,
        state: TurnState,
    },
    /// A 👍/👎 click; answers whether it was new or changed the user's value.
    Feedback(Box<FeedbackClick>),
    /// A stored secret or token value `old` becomes `new` wherever it still is.
    ReplaceSecret {
        id: String,
        old: String,
        new: String,
    },
    SetEnabled {
        id: String,
        enabled: bool,
        reason: Option<String>,
    },
    Claim(ClaimRequest),
    RenewLease {
        id: i64,
        lease: i64,
        until: i64,
    },
    Release(Vec<(i64, i64)>),
    RecordResults(Vec<DeliveryResult>),
    RetryDelivery {
        endpoint_id: String,
        delivery_id: i64,
        now: i64,
    },
    PurgeOutbox(i64),
    /// Takes or renews a named lease (see `sql::HOLD_LEASE`); answers whether it is
    /// held. `free_only`: taken only when free or expired, even for its owner.
    HoldLease {
        name: String,
        owner: String,
        until: i64,
        free_only: bool,
    },
    /// Gives a lease back (its owner only).
    DropLease {
        name: String,
        owner: String,
    },
    /// Tests and maintenance: statements without parameters.
    Raw(String),
}

/// What an [`Op`] answers.
#[derive(Debug)]
pub(crate) enum Out {
    Done,
    /// Whether it took effect (a first sighting, a known endpoint, the turn's turn).
    Yes(bool),
    /// Rows changed.
    Count(u64),
    /// A new row's id.
    Id(i64),
    Claimed(Vec<ClaimedDelivery>),
}

impl Out {
    pub(crate) fn yes(self) -> Result<bool, StoreError> {
        match self {
            Out::Yes(b) => Ok(b),
            other => Err(mismatch(&other)),
        }
    }

    pub(crate) fn count(self) -> Result<u64, StoreError> {
        match self {
            Out::Count(n) => Ok(n),
            other => Err(mismatch(&other)),
        }
    }

    pub(crate) fn id(self) -> Result<i64, StoreError> {
        match self {
            Out::Id(n) => Ok(n),
            other => Err(mismatch(&other)),
        }
    }

    pub(crate) fn claimed(self) -> Result<Vec<ClaimedDelivery>, StoreError> {
        match self {
            Out::Claimed(rows) => Ok(rows),
            other => Err(mismatch(&other)),
        }
    }

    pub(crate) fn done(self) -> Result<(), StoreError> {
        match self {
            Out::Done => Ok(()),
            other => Err(mismatch(&other)),
        }
    }
}

/// An operation answered with another operation's kind of result: a bug here.
fn mismatch(out: &Out) -> StoreError {
    StoreError::Unavailable(format!("internal: unexpected store result {out:?}").into())
}

impl Op {
    /// More than one statement that must land together: PostgreSQL runs it in a
    /// transaction of its own. (Extending a ticket and counting the ones ahead need
    /// not: that poll runs every turn on a shared store, two round-trips, not four.)
    pub(crate) fn atomic(&self) -> bool {
        !matches!(
            self,
            Op::Sighting { .. }
                | Op::Feedback(_)
                | Op::AcceptTurn(_)
                | Op::ClaimTurn { .. }
                | Op::TouchTurns(_)
                | Op::EndTurn { .. }
                | Op::PurgeTranscripts(_)
                | Op::TurnEnter { .. }
                | Op::TurnIsNext { .. }
                | Op::TurnLeave(_)
                | Op::TurnExtend { .. }
                | Op::SetEnabled { .. }
                | Op::Claim(_)
                | Op::RenewLease { .. }
                | Op::RetryDelivery { .. }
                | Op::HoldLease { .. }
                | Op::DropLease { .. }
                | Op::Raw(_)
        )
    }

    /// May change which endpoints take events (SQLite's writer then asks again).
    pub(crate) fn changes_endpoints(&self) -> bool {
        match self {
            Op::CreateEndpoint(_)
            | Op::DeleteEndpoint(_)
            | Op::SetSubscriptions { .. }
            | Op::SetEnabled { .. }
            | Op::Raw(_) => true,
            Op::RecordResults(results) => results.iter().any(|r| r.disable_endpoint.is_some()),
            _ => false,
        }
    }

    /// A commit with events to fan out.
    pub(crate) fn offers_events(&self) -> bool {
        matches!(self, Op::Commit(c) | Op::CommitTurn { commit: c, .. } if !c.events.is_empty())
    }
}

/// Applies one write on `db`; `events: false` drops a commit's events unwritten.
pub(crate) async fn apply(db: &mut dyn Exec, op: &Op, events: bool) -> Result<Out, StoreError> {
    let now = to_ms(OffsetDateTime::now_utc());
    Ok(match op {
        Op::Commit(c) => {
            commit(db, c, events).await?;
            Out::Done
        }
        Op::CommitTurn {
            commit: c,
            turn,
            state,
        } => {
            commit(db, c, events).await?;
            db.execute(&sql::END_TURN, args![turn, state.as_str(), now])
                .await?;
            Out::Done
        }
        Op::AcceptTurn(t) => {
            let m = &t.msg;
            let inserted = db
                .execute(
                    &sql::ACCEPT_TURN,
                    args![
                        &t.id,
                        m.platform.as_str(),
                        &m.workspace,
                        &m.channel,
                        &m.thread,
                        &m.user,
                        &m.message_id,
                        &m.text,
                        &t.reply_to,
                        to_ms(t.received),
                    ],
                )
                .await?;
            Out::Yes(inserted > 0)
        }
        Op::TouchTurns(ids) => {
            let statement = match db.is_sqlite() {
                true => &sql::TOUCH_TURNS.sqlite,
                false => &sql::TOUCH_TURNS.postgres,
            };
            Out::Count(db.execute(statement, args![ids.as_slice(), now]).await?)
        }
        Op::ClaimTurn {
            turn,
            untouched_since,
        } => {
            let taken = db
                .execute(&sql::CLAIM_TURN, args![turn, now, *untouched_since])
                .await?;
            Out::Yes(taken > 0)
        }
        Op::EndTurn { turn, state } => {
            db.execute(&sql::END_TURN, args![turn, state.as_str(), now])
                .await?;
            Out::Done
        }
        Op::Feedback(click) => {
            let changed = db
                .execute(
                    &sql::UPSERT_FEEDBACK,
                    args![
                        &click.turn_id,
                        &click.user,
                        click.platform.as_str(),
                        &click.channel,
                        &click.message_id,
                        click.positive,
                        now
                    ],
                )
                .await?;
            Out::Yes(changed > 0)
        }
        Op::Sighting { key, expires_at } => {
            let changed = db
                .execute(&sql::FIRST_SIGHTING, args![key, *expires_at, now])
                .await?;
            Out::Yes(changed > 0)
        }
        Op::PurgeTranscripts(before) => {
            let rows = db.execute(&sql::PURGE_TRANSCRIPTS, args![*before]).await?;
            let turns = db.execute(&sql::PURGE_TURN_JOURNAL, args![*before]).await?;
            Out::Count(rows + turns)
        }
        Op::PurgeSightings(at) => {
            // Expired turn tickets are sightings of a kind too: a dead replica's.
            let turns = db.execute(&sql::PURGE_TURNS, args![*at]).await?;
            let seen = db.execute(&sql::PURGE_SIGHTINGS, args![*at]).await?;
            Out::Count(turns + seen)
        }
        Op::TurnEnter {
            conversation,
            received,
            expires_at,
        } => {
            let row = db
                .fetch(
                    &sql::TURN_ENTER,
                    args![conversation, *received, *expires_at],
                )
                .await?;
            Out::Id(first(row)?.int()?)
        }
        Op::TurnIsNext {
            conversation,
            ticket,
            received,
            expires_at,
        } => {
            db.execute(&sql::TURN_TOUCH, args![*ticket, *expires_at])
                .await?;
            let ahead = scalar(
                db,
                &sql::TURN_AHEAD,
                args![conversation, now, *received, *ticket],
            )
            .await?;
            Out::Yes(ahead == 0)
        }
        Op::TurnLeave(ticket) => {
            db.execute(&sql::TURN_LEAVE, args![*ticket]).await?;
            Out::Done
        }
        Op::TurnExtend {
            tickets,
            expires_at,
        } => {
            // A replica's turns in flight: a handful, each its own row.
            for ticket in tickets {
                db.execute(&sql::TURN_TOUCH, args![*ticket, *expires_at])
                    .await?;
            }
            Out::Done
        }
        Op::CreateEndpoint(ep) => {
            db.execute(
                &sql::INSERT_ENDPOINT,
                args![
                    &ep.id,
                    &ep.url,
                    &ep.description,
                    &ep.token,
                    ep.ordered,
                    &ep.secret,
                    &ep.previous_secret,
                    ep.previous_secret_expires_at.map(to_ms),
                    ep.enabled,
                    &ep.disabled_reason,
                    to_ms(ep.created_at),
                ],
            )
            .await?;
            for event in &ep.events {
                db.execute(&sql::INSERT_SUBSCRIPTION, args![&ep.id, event])
                    .await?;
            }
            Out::Done
        }
        Op::DeleteEndpoint(id) => {
            db.execute(&sql::DELETE_OLDER_SECRETS, args![id]).await?;
            Out::Yes(db.execute(&sql::DELETE_ENDPOINT, args![id]).await? > 0)
        }
        Op::SetSubscriptions { id, events } => {
            if scalar(db, &sql::ENDPOINT_EXISTS, args![id]).await? == 0 {
                Out::Yes(false)
            } else {
                db.execute(&sql::DELETE_SUBSCRIPTIONS, args![id]).await?;
                for event in events {
                    db.execute(&sql::INSERT_SUBSCRIPTION, args![id, event])
                        .await?;
                }
                Out::Yes(true)
            }
        }
        Op::RotateSecret {
            id,
            secret,
            previous_expires_at,
        } => {
            db.execute(&sql::DROP_EXPIRED_SECRETS, args![id, now])
                .await?;
            db.execute(&sql::KEEP_PREVIOUS_SECRET, args![id, now])
                .await?;
            let n = db
                .execute(&sql::ROTATE_SECRET, args![id, secret, *previous_expires_at])
                .await?;
            Out::Yes(n > 0)
        }
        Op::ReplaceSecret { id, old, new } => {
            db.execute(&sql::DROP_EXPIRED_SECRETS, args![id, now])
                .await?;
            let mut n = 0;
            for statement in [
                &sql::REPLACE_TOKEN,
                &sql::REPLACE_SECRET,
                &sql::REPLACE_PREVIOUS_SECRET,
                &sql::REPLACE_OLDER_SECRET,
            ] {
                n += db.execute(statement, args![id, old, new]).await?;
            }
            Out::Count(n)
        }
        Op::SetEnabled {
            id,
            enabled,
            reason,
        } => {
            let n = db
                .execute(&sql::SET_ENABLED, args![id, *enabled, reason])
                .await?;
            Out::Yes(n > 0)
        }
        Op::Claim(claim) => Out::Claimed(claim_deliveries(db, claim).await?),
        Op::RenewLease { id, lease, until } => {
            let n = db
                .execute(&sql::RENEW_LEASE, args![*id, *lease, *until])
                .await?;
            Out::Yes(n > 0)
        }
        Op::HoldLease {
            name,
            owner,
            until,
            free_only,
        } => {
            let statement = match free_only {
                true => &sql::HOLD_FREE_LEASE,
                false => &sql::HOLD_LEASE,
            };
            let n = db
                .execute(statement, args![name, owner, *until, now])
                .await?;
            Out::Yes(n > 0)
        }
        Op::DropLease { name, owner } => {
            db.execute(&sql::DROP_LEASE, args![name, owner]).await?;
            Out::Done
        }
        Op::Release(held) => {
            for (id, lease) in held {
                db.execute(&sql::RELEASE_LEASE, args![*id, *lease]).await?;
            }
            Out::Done
        }
        Op::RecordResults(results) => {
            // One transaction for the whole batch: at thousands of deliveries a second,
            // a commit per row would be the bottleneck.
            for r in results {
                let a = &r.attempt;
                let code = a.status_code.map(i64::from);
                db.execute(
                    &sql::MARK_DELIVERY,
                    args![
                        r.delivery_id,
                        r.status.as_str(),
                        to_ms(r.next_attempt_at),
                        code,
                        &a.error,
                        now,
                        r.lease,
                    ],
                )
                .await?;
                db.execute(
                    &sql::INSERT_ATTEMPT,
                    args![
                        r.delivery_id,
                        to_ms(a.attempted_at),
                        code,
                        &a.response_body,
                        i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
                        &a.error,
                    ],
                )
                .await?;
                if let Some(reason) = &r.disable_endpoint {
                    db.execute(&sql::DISABLE_ENDPOINT, args![&r.endpoint_id, reason])
                        .await?;
                }
            }
            Out::Done
        }
        Op::RetryDelivery {
            endpoint_id,
            delivery_id,
            now,
        } => {
            let n = db
                .execute(&sql::RETRY_DELIVERY, args![*delivery_id, endpoint_id, *now])
                .await?;
            Out::Yes(n > 0)
        }
        Op::PurgeOutbox(before) => {
            db.execute(&sql::PURGE_ATTEMPTS, args![*before]).await?;
            let deliveries = db.execute(&sql::PURGE_DELIVERIES, args![*before]).await?;
            db.execute(&sql::PURGE_EVENTS, args![*before]).await?;
            Out::Count(deliveries)
        }
        Op::Raw(text) => Out::Count(db.raw(text).await?),
    })
}

/// Conversations upserted, transcript rows appended, each event stored (only if an
/// enabled endpoint subscribes) with one delivery per subscribed endpoint.
async fn commit(db: &mut dyn Exec, commit: &Commit, events: bool) -> Result<(), StoreError> {
    for c in &commit.conversations {
        db.execute(
            &sql::UPSERT_CONVERSATION,
            args![
                c.key.as_str(),
                c.platform.as_str(),
                &c.workspace,
                &c.channel,
                &c.thread,
                &c.user,
                &c.agent_session,
                &c.personality,
                to_ms(c.last_activity),
            ],
        )
        .await?;
    }
    for t in &commit.transcript {
        db.execute(
            &sql::INSERT_TRANSCRIPT,
            args![
                &t.session_id,
                t.role.as_str(),
                &t.content,
                to_ms(t.timestamp),
                t.platform.as_str(),
                &t.channel,
                &t.thread,
                &t.user,
                &t.message_id,
            ],
        )
        .await?;
    }
    // Events in the order they happened, so an ordered endpoint's deliveries keep it.
    for e in commit.events.iter().filter(|_| events) {
        let at = to_ms(e.created_at);
        let kind = e.kind.as_str();
        let stored = db
            .execute(
                &sql::INSERT_EVENT,
                args![e.id.as_str(), kind, &e.ordering_key, &e.body, at],
            )
            .await?;
        if stored > 0 {
            db.execute(
                &sql::FAN_OUT_EVENT,
                args![e.id.as_str(), kind, &e.ordering_key, at],
            )
            .await?;
        }
    }
    Ok(())
}

async fn claim_deliveries(
    db: &mut dyn Exec,
    claim: &ClaimRequest,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let lease = to_ms(claim.lease_until);
    let statement = match db.is_sqlite() {
        true => &sql::CLAIM.sqlite,
        false => &sql::CLAIM.postgres,
    };
    let rows = db
        .fetch(
            statement,
            args![
                to_ms(claim.now),
                lease,
                i64::from(claim.limit),
                claim.skip_endpoints.as_slice(),
            ],
        )
        .await?;
    rows.into_iter()
        .map(|mut r| {
            let id = r.int()?;
            Ok(ClaimedDelivery {
                id,
                event_id: r.text()?,
                endpoint_id: r.text()?,
                attempts: count(r.int()?),
                body: r.opt_text()?.ok_or_else(|| {
                    StoreError::Corrupt(format!("delivery {id} has no event body").into())
                })?,
                lease,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------

pub(crate) async fn ping(db: &mut dyn Exec) -> Result<(), StoreError> {
    db.fetch(&sql::PING, &[]).await.map(drop)
}

pub(crate) async fn conversation(
    db: &mut dyn Exec,
    key: &ConversationKey,
) -> Result<Option<Conversation>, StoreError> {
    let rows = db
        .fetch(&sql::SELECT_CONVERSATION, args![key.as_str()])
        .await?;
    rows.into_iter().next().map(decode_conversation).transpose()
}

pub(crate) async fn conversations(
    db: &mut dyn Exec,
    statement: &Sql,
    arg: super::exec::Arg<'_>,
) -> Result<Vec<Conversation>, StoreError> {
    let rows = db.fetch(statement, &[arg]).await?;
    rows.into_iter().map(decode_conversation).collect()
}

pub(crate) async fn conversation_keys(
    db: &mut dyn Exec,
    after: &str,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let rows = db
        .fetch(
            &sql::SELECT_CONVERSATION_KEYS,
            args![after, i64::from(limit)],
        )
        .await?;
    rows.into_iter().map(|mut r| r.text()).collect()
}

pub(crate) async fn history(
    db: &mut dyn Exec,
    agent_session: &str,
    since: Option<OffsetDateTime>,
) -> Result<Vec<TranscriptEntry>, StoreError> {
    let since = since.map_or(i64::MIN, to_ms);
    let rows = db
        .fetch(&sql::SELECT_HISTORY, args![agent_session, since])
        .await?;
    rows.into_iter().map(decode_transcript).collect()
}

pub(crate) async fn history_page(
    db: &mut dyn Exec,
    agent_session: &str,
    since: Option<OffsetDateTime>,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<TranscriptEntry>, StoreError> {
    let since = since.map_or(i64::MIN, to_ms);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Rows are in `(created_at, id)` order (ids are not: a turn's rows are written
    // together); a cursor row that was purged meanwhile continues from its id alone.
    let cursor_at = match after {
        Some(id) => match db.fetch(&sql::SELECT_CURSOR, args![id]).await?.pop() {
            Some(mut r) => r.int()?,
            None => i64::MIN,
        },
        None => i64::MIN,
    };
    let rows = db
        .fetch(
            &sql::SELECT_HISTORY_PAGE,
            args![
                agent_session,
                since,
                cursor_at,
                after.unwrap_or(i64::MIN),
                limit
            ],
        )
        .await?;
    rows.into_iter().map(decode_transcript).collect()
}

pub(crate) async fn open_turns(
    db: &mut dyn Exec,
    platform: Platform,
    untouched_since: OffsetDateTime,
    limit: u32,
) -> Result<Vec<JournalTurn>, StoreError> {
    let since = to_ms(untouched_since);
    let rows = db
        .fetch(
            &sql::OPEN_TURNS,
            args![platform.as_str(), since, i64::from(limit)],
        )
        .await?;
    rows.into_iter()
        .map(|mut r| {
            let id = r.text()?;
            let platform = parse_platform(&r.text()?)?;
            let msg = Inbound {
                platform,
                workspace: r.text()?,
                channel: r.text()?,
                thread: r.opt_text()?,
                user: r.text()?,
                message_id: r.text()?,
                text: r.text()?,
            };
            Ok(JournalTurn {
                id,
                msg: msg.into(),
                reply_to: r.text()?,
                received: from_ms(r.int()?)?,
            })
        })
        .collect()
}

pub(crate) async fn recent_turns(
    db: &mut dyn Exec,
    platform: Platform,
    since: OffsetDateTime,
) -> Result<Vec<RecentTurn>, StoreError> {
    let rows = db
        .fetch(&sql::RECENT_TURNS, args![platform.as_str(), to_ms(since)])
        .await?;
    rows.into_iter()
        .map(|mut r| {
            Ok(RecentTurn {
                reply_to: r.text()?,
                message_id: r.text()?,
                workspace: r.text()?,
            })
        })
        .collect()
}

/// Every lease whose name starts with `prefix`, by name.
pub(crate) async fn leases(db: &mut dyn Exec, prefix: &str) -> Result<Vec<Lease>, StoreError> {
    let rows = db.fetch(&sql::LEASES, args![prefix]).await?;
    rows.into_iter()
        .map(|mut r| {
            Ok(Lease {
                name: r.text()?,
                owner: r.text()?,
                expires_at: from_ms(r.int()?)?,
            })
        })
        .collect()
}

pub(crate) async fn feedback_on(
    db: &mut dyn Exec,
    channel: &str,
    message_ids: &[String],
) -> Result<Vec<FeedbackEntry>, StoreError> {
    let statement = match db.is_sqlite() {
        true => &sql::SELECT_FEEDBACK.sqlite,
        false => &sql::SELECT_FEEDBACK.postgres,
    };
    let rows = db.fetch(statement, args![channel, message_ids]).await?;
    rows.into_iter()
        .map(|mut r| {
            Ok(FeedbackEntry {
                message_id: r.text()?,
                user: r.text()?,
                positive: r.int()? != 0,
            })
        })
        .collect()
}

pub(crate) async fn turn_ended(
    db: &mut dyn Exec,
    id: &str,
    since: OffsetDateTime,
) -> Result<bool, StoreError> {
    Ok(scalar(db, &sql::TURN_ENDED, args![id, to_ms(since)]).await? > 0)
}

pub(crate) async fn seen(db: &mut dyn Exec, key: &str) -> Result<bool, StoreError> {
    let now = to_ms(OffsetDateTime::now_utc());
    Ok(scalar(db, &sql::SEEN, args![key, now]).await? > 0)
}

pub(crate) async fn endpoint(
    db: &mut dyn Exec,
    id: &str,
) -> Result<Option<WebhookEndpoint>, StoreError> {
    let Some(row) = db.fetch(&sql::SELECT_ENDPOINT, args![id]).await?.pop() else {
        return Ok(None);
    };
    let events = db
        .fetch(&sql::SELECT_SUBSCRIPTIONS, args![id])
        .await?
        .into_iter()
        .map(|mut r| r.text())
        .collect::<Result<_, _>>()?;
    let now = to_ms(OffsetDateTime::now_utc());
    let older = db
        .fetch(&sql::SELECT_OLDER_SECRETS, args![id, now])
        .await?
        .into_iter()
        .map(|mut r| Ok((r.text()?, from_ms(r.int()?)?)))
        .collect::<Result<_, StoreError>>()?;
    decode_endpoint(row, events, older).map(Some)
}

pub(crate) async fn endpoints(db: &mut dyn Exec) -> Result<Vec<WebhookEndpoint>, StoreError> {
    let now = to_ms(OffsetDateTime::now_utc());
    let rows = db.fetch(&sql::SELECT_ENDPOINTS, &[]).await?;
    let mut subscriptions: HashMap<String, Vec<String>> = HashMap::new();
    for mut r in db.fetch(&sql::SELECT_ALL_SUBSCRIPTIONS, &[]).await? {
        let endpoint = r.text()?;
        subscriptions.entry(endpoint).or_default().push(r.text()?);
    }
    let mut older: HashMap<String, Vec<(String, OffsetDateTime)>> = HashMap::new();
    for mut r in db.fetch(&sql::SELECT_ALL_OLDER_SECRETS, args![now]).await? {
        let endpoint = r.text()?;
        let secret = r.text()?;
        older
            .entry(endpoint)
            .or_default()
            .push((secret, from_ms(r.int()?)?));
    }
    rows.into_iter()
        .map(|row| {
            // The id is the first column; peek at it without consuming the row.
            let id = row.first_text().unwrap_or_default();
            let events = subscriptions.remove(&id).unwrap_or_default();
            let older = older.remove(&id).unwrap_or_default();
            decode_endpoint(row, events, older)
        })
        .collect()
}

pub(crate) async fn deliveries(
    db: &mut dyn Exec,
    endpoint_id: &str,
    limit: u32,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let limit = i64::from(limit);
    let rows = db
        .fetch(&sql::SELECT_DELIVERIES, args![endpoint_id, limit])
        .await?;
    let mut log: HashMap<i64, Vec<AttemptRecord>> = HashMap::new();
    for mut a in db
        .fetch(&sql::SELECT_ATTEMPTS, args![endpoint_id, limit])
        .await?
    {
        let delivery = a.int()?;
        log.entry(delivery).or_default().push(AttemptRecord {
            attempted_at: from_ms(a.int()?)?,
            status_code: a.opt_int()?.map(status_code).transpose()?,
            response_body: a.opt_text()?,
            duration_ms: u64::try_from(a.int()?).unwrap_or(0),
            error: a.opt_text()?,
        });
    }
    rows.into_iter()
        .map(|mut r| {
            let id = r.int()?;
            let event_id = r.text()?;
            let event_type = r.text()?;
            let status = r.text()?;
            Ok(DeliveryRecord {
                id,
                event_id,
                event_type,
                status: DeliveryStatus::parse(&status).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown delivery status {status:?}").into())
                })?,
                attempts: count(r.int()?),
                next_attempt_at: from_ms(r.int()?)?,
                last_status_code: r.opt_int()?.map(status_code).transpose()?,
                last_error: r.opt_text()?,
                created_at: from_ms(r.int()?)?,
                updated_at: from_ms(r.int()?)?,
                last_duration_ms: r.opt_int()?.and_then(|d| u64::try_from(d).ok()),
                attempt_log: log.remove(&id).unwrap_or_default(),
            })
        })
        .collect()
}

pub(crate) async fn outbox_backlog(db: &mut dyn Exec) -> Result<u64, StoreError> {
    Ok(u64::try_from(scalar(db, &sql::OUTBOX_BACKLOG, &[]).await?).unwrap_or(0))
}

// ---------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------

/// The single integer a `COUNT(*)` (or similar) answers.
pub(crate) async fn scalar(
    db: &mut dyn Exec,
    statement: &Sql,
    args: &[super::exec::Arg<'_>],
) -> Result<i64, StoreError> {
    first(db.fetch(statement, args).await?)?.int()
}

fn first(rows: Vec<Cols>) -> Result<Cols, StoreError> {
    rows.into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt("a statement returned no row".into()))
}

fn decode_conversation(mut r: Cols) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        key: ConversationKey::from_stored(&r.text()?),
        platform: parse_platform(&r.text()?)?,
        workspace: r.text()?,
        channel: r.text()?,
        thread: r.opt_text()?,
        user: r.opt_text()?,
        agent_session: r.opt_text()?,
        personality: r.opt_text()?,
        last_activity: from_ms(r.int()?)?,
    })
}

fn decode_transcript(mut r: Cols) -> Result<TranscriptEntry, StoreError> {
    let id = r.int()?;
    let session_id = r.text()?;
    let role = r.text()?;
    Ok(TranscriptEntry {
        id,
        session_id,
        role: Role::parse(&role).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown transcript role {role:?}").into())
        })?,
        content: r.text()?,
        timestamp: from_ms(r.int()?)?,
        platform: parse_platform(&r.text()?)?,
        channel: r.text()?,
        thread: r.opt_text()?,
        user: r.text()?,
        message_id: r.opt_text()?,
    })
}

fn decode_endpoint(
    mut r: Cols,
    events: Vec<String>,
    older_secrets: Vec<(String, OffsetDateTime)>,
) -> Result<WebhookEndpoint, StoreError> {
    Ok(WebhookEndpoint {
        id: r.text()?,
        url: r.text()?,
        description: r.opt_text()?,
        token: r.opt_text()?,
        ordered: r.int()? != 0,
        secret: r.text()?,
        previous_secret: r.opt_text()?,
        previous_secret_expires_at: r.opt_int()?.map(from_ms).transpose()?,
        older_secrets,
        enabled: r.int()? != 0,
        disabled_reason: r.opt_text()?,
        created_at: from_ms(r.int()?)?,
        events,
    })
}

fn parse_platform(s: &str) -> Result<Platform, StoreError> {
    Platform::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown platform {s:?}").into()))
}

fn status_code(code: i64) -> Result<u16, StoreError> {
    u16::try_from(code)
        .map_err(|_| StoreError::Corrupt(format!("HTTP status {code} stored").into()))
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}
