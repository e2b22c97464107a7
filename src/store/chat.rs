//! The core's store roles for `SqlStore` (`Conversations`, `Transcripts`, `Sightings`,
//! `TurnQueue`, `Journal`, `Leases`): each method a read on a pooled connection or one write (`ops::Op`)
//! through [`SqlStore::write`]. The SQL is in `sql.rs`, the logic in `ops.rs`.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::exec::Arg;
use super::ops::{self, Op};
use super::{sql, to_ms, SqlStore};
use crate::core::message::ConversationKey;
use crate::core::message::Platform;
use crate::core::ports::{
    Commit, Conversation, Conversations, Journal, JournalTurn, Lease, Leases, RecentTurn,
    Sightings, StoreError, TranscriptEntry, Transcripts, TurnQueue, TurnState,
};

#[async_trait]
impl Conversations for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        ops::ping(&mut self.reader().await?).await
    }

    async fn conversation(
        &self,
        key: &ConversationKey,
    ) -> Result<Option<Conversation>, StoreError> {
        ops::conversation(&mut self.reader().await?, key).await
    }

    async fn conversations(&self, limit: u32) -> Result<Vec<Conversation>, StoreError> {
        let limit = Arg::from(i64::from(limit));
        ops::conversations(&mut self.reader().await?, &sql::SELECT_CONVERSATIONS, limit).await
    }

    async fn conversation_keys(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        ops::conversation_keys(&mut self.reader().await?, after, limit).await
    }

    async fn conversations_by_session(
        &self,
        agent_session: &str,
    ) -> Result<Vec<Conversation>, StoreError> {
        let session = Arg::from(agent_session);
        let statement = &sql::SELECT_CONVERSATIONS_BY_SESSION;
        ops::conversations(&mut self.reader().await?, statement, session).await
    }
}

#[async_trait]
impl Transcripts for SqlStore {
    async fn commit(&self, mut commit: Commit) -> Result<(), StoreError> {
        if !self.wants_events() {
            // Nobody would take them (the SQLite writer knows): not even sent.
            commit.events.clear();
        }
        if commit.is_empty() {
            return Ok(());
        }
        self.write(Op::Commit(commit)).await?.done()
    }

    async fn commit_turn(
        &self,
        mut commit: Commit,
        turn: &str,
        state: TurnState,
    ) -> Result<(), StoreError> {
        if !self.wants_events() {
            commit.events.clear();
        }
        let op = Op::CommitTurn {
            commit,
            turn: turn.to_owned(),
            state,
        };
        self.write(op).await?.done()
    }

    fn wants_events(&self) -> bool {
        self.writer.as_ref().is_none_or(|w| w.wants_events())
    }

    async fn history(
        &self,
        agent_session: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        ops::history(&mut self.reader().await?, agent_session, since).await
    }

    async fn history_page(
        &self,
        agent_session: &str,
        since: Option<OffsetDateTime>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        let mut db = self.reader().await?;
        ops::history_page(&mut db, agent_session, since, after, limit).await
    }

    async fn purge_transcripts(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.write(Op::PurgeTranscripts(to_ms(before)))
            .await?
            .count()
    }
}

#[async_trait]
impl Sightings for SqlStore {
    async fn first_sighting(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let op = Op::Sighting {
            key: key.to_owned(),
            expires_at: to_ms(expires_at),
        };
        self.write(op).await?.yes()
    }

    fn note_sighting(&self, key: String, expires_at: OffsetDateTime) {
        let op = Op::Sighting {
            key,
            expires_at: to_ms(expires_at),
        };
        if let Some(writer) = &self.writer {
            // Queued now, so it lands in the same batch as the next commit or earlier.
            writer.queue(op);
            return;
        }
        // PostgreSQL: every write is its own round-trip anyway.
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.write(op).await {
                tracing::warn!(error = %e, "could not record a sighting");
            }
        });
    }

    async fn seen(&self, key: &str) -> Result<bool, StoreError> {
        ops::seen(&mut self.reader().await?, key).await
    }

    async fn purge_sightings(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.write(Op::PurgeSightings(to_ms(now))).await?.count()
    }
}

#[async_trait]
impl TurnQueue for SqlStore {
    fn is_shared(&self) -> bool {
        self.backend() == "postgres"
    }

    async fn turn_enter(
        &self,
        conversation: &ConversationKey,
        received: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let op = Op::TurnEnter {
            conversation: conversation.as_str().to_owned(),
            received: to_ms(received),
            expires_at: to_ms(expires_at),
        };
        self.write(op).await?.id()
    }

    async fn turn_is_next(
        &self,
        conversation: &ConversationKey,
        ticket: i64,
        received: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let op = Op::TurnIsNext {
            conversation: conversation.as_str().to_owned(),
            ticket,
            received: to_ms(received),
            expires_at: to_ms(expires_at),
        };
        self.write(op).await?.yes()
    }

    async fn turn_leave(&self, ticket: i64) -> Result<(), StoreError> {
        self.write(Op::TurnLeave(ticket)).await?.done()
    }

    async fn turn_extend(
        &self,
        tickets: &[i64],
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let op = Op::TurnExtend {
            tickets: tickets.to_vec(),
            expires_at: to_ms(expires_at),
        };
        self.write(op).await?.done()
    }
}

#[async_trait]
impl Journal for SqlStore {
    async fn accept_turn(&self, turn: JournalTurn) -> Result<bool, StoreError> {
        self.write(Op::AcceptTurn(Box::new(turn))).await?.yes()
    }

    async fn open_turns(
        &self,
        platform: Platform,
        untouched_since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<JournalTurn>, StoreError> {
        let mut db = self.reader().await?;
        ops::open_turns(&mut db, platform, untouched_since, limit).await
    }

    async fn claim_turn(
        &self,
        id: &str,
        untouched_since: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let op = Op::ClaimTurn {
            turn: id.to_owned(),
            untouched_since: to_ms(untouched_since),
        };
        self.write(op).await?.yes()
    }

    async fn recent_turns(
        &self,
        platform: Platform,
        since: OffsetDateTime,
    ) -> Result<Vec<RecentTurn>, StoreError> {
        ops::recent_turns(&mut self.reader().await?, platform, since).await
    }

    async fn touch_turns(&self, ids: &[String]) -> Result<(), StoreError> {
        self.write(Op::TouchTurns(ids.to_vec())).await.map(drop)
    }

    async fn end_turn(&self, id: &str, state: TurnState) -> Result<(), StoreError> {
        let op = Op::EndTurn {
            turn: id.to_owned(),
            state,
        };
        self.write(op).await?.done()
    }

    async fn turn_ended(&self, id: &str, since: OffsetDateTime) -> Result<bool, StoreError> {
        ops::turn_ended(&mut self.reader().await?, id, since).await
    }
}

#[async_trait]
impl Leases for SqlStore {
    fn is_shared(&self) -> bool {
        TurnQueue::is_shared(self)
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<Lease>, StoreError> {
        ops::leases(&mut self.reader().await?, prefix).await
    }

    async fn hold_lease(
        &self,
        name: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.write(hold(name, owner, until, false)).await?.yes()
    }

    async fn hold_free_lease(
        &self,
        name: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.write(hold(name, owner, until, true)).await?.yes()
    }

    async fn drop_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let op = Op::DropLease {
            name: name.to_owned(),
            owner: owner.to_owned(),
        };
        self.write(op).await?.done()
    }
}

fn hold(name: &str, owner: &str, until: OffsetDateTime, free_only: bool) -> Op {
    Op::HoldLease {
        name: name.to_owned(),
        owner: owner.to_owned(),
        until: to_ms(until),
        free_only,
    }
}
