//! `impl FeedbackStore for SqlStore`: 👍/👎 clicks, one row per (turn, user), and the
//! history's lookup of them by the message that carried the buttons. Self-contained
//! on purpose (its own table, `migrations/*/0007_feedback.sql`): nothing else in the
//! store reads or writes it.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{db_err, on_pool, to_ms, SqlStore};
use crate::core::ports::{FeedbackClick, FeedbackEntry, FeedbackStore, StoreError};

/// Inserts the click, or replaces the user's earlier value when it differs; a click
/// that repeats the stored value touches no row (so `rows_affected` says "changed").
const UPSERT: &str = "INSERT INTO feedback \
     (turn_id, user_id, platform, channel, message_id, positive, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (turn_id, user_id) DO UPDATE \
     SET positive = excluded.positive, updated_at = excluded.updated_at \
     WHERE feedback.positive <> excluded.positive";

/// The history asks for at most one page of answers at once; more ids are asked in
/// slices of this many (well under both back-ends' parameter limits).
const IDS_PER_QUERY: usize = 500;

#[async_trait]
impl FeedbackStore for SqlStore {
    async fn record_feedback(&self, click: &FeedbackClick) -> Result<bool, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let positive = i64::from(click.positive);
        let done = on_pool!(self, |p| {
            sqlx::query(UPSERT)
                .bind(&click.turn_id)
                .bind(&click.user)
                .bind(click.platform.as_str())
                .bind(&click.channel)
                .bind(&click.message_id)
                .bind(positive)
                .bind(now)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_err)?;
        Ok(done > 0)
    }

    async fn feedback_on(
        &self,
        channel: &str,
        message_ids: &[String],
    ) -> Result<Vec<FeedbackEntry>, StoreError> {
        let mut out = Vec::new();
        for ids in message_ids.chunks(IDS_PER_QUERY) {
            let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT message_id, user_id, positive FROM feedback \
                 WHERE channel = $1 AND message_id IN ({}) ORDER BY updated_at, user_id",
                placeholders.join(", ")
            );
            let rows: Vec<(String, String, i64)> = on_pool!(self, |p| {
                let mut query = sqlx::query_as(&sql).bind(channel);
                for id in ids {
                    query = query.bind(id);
                }
                query.fetch_all(p).await
            })
            .map_err(db_err)?;
            out.extend(
                rows.into_iter()
                    .map(|(message_id, user, positive)| FeedbackEntry {
                        message_id,
                        user,
                        positive: positive != 0,
                    }),
            );
        }
        Ok(out)
    }
}
