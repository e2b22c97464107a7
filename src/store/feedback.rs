//! `impl FeedbackStore for SqlStore`: 👍/👎 clicks, one row per (turn, user), and the
//! history's lookup of them by the message that carried the buttons (its own table,
//! `migrations/*/0007_feedback.sql`; the SQL is in `sql.rs`, the logic in `ops.rs`).

use async_trait::async_trait;

use super::ops::{self, Op};
use super::SqlStore;
use crate::core::ports::{FeedbackClick, FeedbackEntry, FeedbackStore, StoreError};

#[async_trait]
impl FeedbackStore for SqlStore {
    async fn record_feedback(&self, click: &FeedbackClick) -> Result<bool, StoreError> {
        self.write(Op::Feedback(Box::new(click.clone())))
            .await?
            .yes()
    }

    async fn feedback_on(
        &self,
        channel: &str,
        message_ids: &[String],
    ) -> Result<Vec<FeedbackEntry>, StoreError> {
        ops::feedback_on(&mut self.reader().await?, channel, message_ids).await
    }
}
