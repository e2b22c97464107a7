//! Per-conversation FIFO lanes with one global bound on accepted turns.
//!
//! Serenity and the HTTP server hand us every message on its own task, so two
//! messages of one conversation can arrive concurrently; the lanes put them back in
//! arrival order. A conversation's key is present in the map exactly while a worker
//! owns it: the first job for an idle key tells the caller to start a worker, later
//! jobs queue behind it, and the worker removes the key when it finds the queue
//! empty. Both decisions are made under the map shard's lock, so a job can never be
//! queued on a lane whose worker has just left.
//!
//! Idle conversations cost nothing here (no task, no entry), which keeps 100k mapped
//! conversations cheap.

use std::collections::VecDeque;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::Semaphore;

use super::message::ConversationKey;

/// What [`Lanes::admit`] decided.
#[derive(Debug)]
pub enum Admission<J> {
    /// The lane was idle: the caller must start a worker that runs this job first.
    StartWorker(J),
    /// Queued behind the lane's running worker.
    Queued,
    /// The global bound is reached; the job is handed back untouched.
    Full(J),
}

pub struct Lanes<J> {
    /// Conversations with a running worker, each with the jobs waiting behind the one
    /// it is running.
    queues: DashMap<ConversationKey, VecDeque<J>>,
    /// One permit per job that may still be accepted: a job takes one (and forgets
    /// it) when admitted and gives it back when finished. A semaphore rather than a
    /// counter so that callers can also *wait* for room, in FIFO order.
    slots: Semaphore,
    capacity: usize,
}

impl<J> Lanes<J> {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Lanes {
            queues: DashMap::new(),
            slots: Semaphore::new(capacity),
            capacity,
        }
    }

    /// Takes a slot if one is free now.
    pub fn try_reserve(&self) -> bool {
        self.slots.try_acquire().map(|p| p.forget()).is_ok()
    }

    /// Waits up to `within` for a slot (in the order callers began waiting).
    pub async fn reserve_within(&self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.slots.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                true
            }
            // Timed out, or closed (never done).
            _ => false,
        }
    }

    /// Gives back a slot taken by a reservation that will not be admitted.
    pub fn release(&self) {
        self.slots.add_permits(1);
    }

    pub fn admit(&self, key: &ConversationKey, job: J) -> Admission<J> {
        if !self.try_reserve() {
            return Admission::Full(job);
        }
        self.admit_reserved(key, job)
    }

    /// Like [`Lanes::admit`] with a slot the caller already holds.
    pub fn admit_reserved(&self, key: &ConversationKey, job: J) -> Admission<J> {
        match self.queues.entry(key.clone()) {
            Entry::Occupied(mut lane) => {
                lane.get_mut().push_back(job);
                Admission::Queued
            }
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                Admission::StartWorker(job)
            }
        }
    }

    /// Called by a lane's worker when a job is finished: the next job of the lane, or
    /// `None` after which the worker must exit (the lane is gone).
    pub fn next(&self, key: &ConversationKey) -> Option<J> {
        self.release();
        match self.queues.entry(key.clone()) {
            Entry::Occupied(mut lane) => {
                let next = lane.get_mut().pop_front();
                if next.is_none() {
                    lane.remove();
                }
                next
            }
            // Unreachable while workers follow the protocol; nothing to do if not.
            Entry::Vacant(_) => None,
        }
    }

    /// Jobs accepted and not finished.
    pub fn pending(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Conversations with a running worker.
    pub fn active(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ConversationKey {
        ConversationKey::from_stored(s)
    }

    #[test]
    fn first_job_starts_a_worker_and_later_ones_queue_in_order() {
        let lanes = Lanes::new(10);
        let a = key("a");
        assert!(matches!(lanes.admit(&a, 1), Admission::StartWorker(1)));
        assert!(matches!(lanes.admit(&a, 2), Admission::Queued));
        assert!(matches!(lanes.admit(&a, 3), Admission::Queued));
        assert_eq!(lanes.next(&a), Some(2));
        assert_eq!(lanes.next(&a), Some(3));
        assert_eq!(lanes.next(&a), None);
        assert_eq!(lanes.active(), 0);
        assert_eq!(lanes.pending(), 0);
        // The lane is idle again: the next job starts a new worker.
        assert!(matches!(lanes.admit(&a, 4), Admission::StartWorker(4)));
    }

    #[test]
    fn lanes_of_different_conversations_are_independent() {
        let lanes = Lanes::new(10);
        assert!(matches!(
            lanes.admit(&key("a"), 1),
            Admission::StartWorker(1)
        ));
        assert!(matches!(
            lanes.admit(&key("b"), 2),
            Admission::StartWorker(2)
        ));
        assert_eq!(lanes.active(), 2);
    }

    #[tokio::test]
    async fn a_reservation_waits_for_a_finished_job_and_times_out_without_one() {
        let lanes = Lanes::new(1);
        let a = key("a");
        assert!(matches!(lanes.admit(&a, 1), Admission::StartWorker(1)));
        assert!(!lanes.try_reserve());
        assert!(!lanes.reserve_within(Duration::from_millis(20)).await);
        let (reserved, next) = tokio::join!(lanes.reserve_within(Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            lanes.next(&a)
        });
        assert_eq!(next, None);
        assert!(reserved, "the finished job's slot went to the waiter");
        assert_eq!(lanes.pending(), 1);
        assert!(matches!(
            lanes.admit_reserved(&a, 2),
            Admission::StartWorker(2)
        ));
        assert_eq!(lanes.next(&a), None);
        assert_eq!(lanes.pending(), 0);
    }

    #[test]
    fn the_global_bound_refuses_and_then_recovers() {
        let lanes = Lanes::new(2);
        let a = key("a");
        assert!(matches!(lanes.admit(&a, 1), Admission::StartWorker(1)));
        assert!(matches!(
            lanes.admit(&key("b"), 2),
            Admission::StartWorker(2)
        ));
        assert!(matches!(lanes.admit(&a, 3), Admission::Full(3)));
        assert_eq!(lanes.next(&a), None);
        assert!(matches!(lanes.admit(&a, 4), Admission::StartWorker(4)));
    }
}
