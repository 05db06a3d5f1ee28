//! The store's clock: what leases, claim expiries, launch claims and the rate budget are
//! judged by. On PostgreSQL that is the database server's clock (`munja_now()`), so that
//! workers on several hosts agree whatever their own clocks say; on SQLite, whose writers all
//! share one machine, it is that machine's clock.
//!
//! Either way the clock carries an offset that is zero in every munja process and that only
//! the store's own tests move ([`Clock::advance`]), so that the conformance suite checks
//! expiry at a chosen instant instead of waiting for it. PostgreSQL applies the offset in SQL:
//! `munja_now()` adds the session setting `munja.clock_offset_ms`, which the store sets on a
//! pooled connection only once the clock has been moved.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The PostgreSQL session setting `munja_now()` adds to the server's clock, in milliseconds.
pub const OFFSET_SETTING: &str = "munja.clock_offset_ms";

/// A shared handle on one store's clock offset (clones move together).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// How far the store's clock runs ahead of the real one.
    pub fn offset(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.offset_ms())
    }

    /// The offset in milliseconds; zero unless a test moved the clock.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// The time now by this clock, read on this host (SQLite's clock).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }

    /// A time read from this clock, as the caller's own clock (`Utc::now()`) puts it: what
    /// callers compare with `Utc::now()`, such as a lease's last heartbeat.
    pub fn to_local(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t - self.offset()
    }

    /// Moves the clock forward by `by`, as if that much time had passed for the store.
    #[cfg(test)]
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).expect("a test advances by less than 292 My");
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone_and_local_time_undoes_it() {
        let a = Clock::default();
        let b = a.clone();
        assert_eq!(b.offset_ms(), 0);
        a.advance(std::time::Duration::from_secs(90));
        assert_eq!(b.offset_ms(), 90_000);
        let t = b.now();
        let age = Utc::now() - b.to_local(t);
        assert!(age.num_seconds().abs() <= 1, "{age}");
    }
}
