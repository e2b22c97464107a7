//! The one way the bridge takes a `std::sync::Mutex`: [`lock`] recovers the data when
//! a panicking holder poisoned it. Every such mutex here guards plain values (counters,
//! ids, a cancellation token) that are consistent after each statement, and a turn
//! that panicked is already caught and logged (`relay`); refusing the lock forever
//! after would turn one bug into a stuck feature.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
