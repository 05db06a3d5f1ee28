//! The gateway's rate limit, shared by every run on the job repository: each run takes small
//! slices of the gateway's token bucket from the database ([`CampaignStore::take_tokens`]) into a local
//! budget, spends them request by request, and waits for the bucket to refill when the database
//! grants nothing. However many runs and campaigns use a gateway, together they send at most
//! `rate_per_sec + burst` messages in any one second.
//!
//! Why, with slices held by the runs: a slice may hold up to [`Budget::hold`] tokens beyond the
//! request it was taken for, and tokens a run took are spent within `hold / rate_per_sec`
//! seconds of the take ([`Budget::ttl`]) or given up. The bucket holds at most `burst - hold`
//! ([`Budget::capacity`]). At any moment the tokens held by all runs were taken within the last
//! `ttl`, so they and the bucket's together are at most what the bucket held `ttl` ago plus what
//! refilled since: `burst - hold + rate * ttl = burst`. A second's sends are those tokens plus
//! the second's refill: at most `burst + rate_per_sec`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::warn;

use crate::config::GatewayConfig;
use crate::store::{Store, StoreError, Take};

/// Slices hold at most this fraction of a second's rate beyond their request (and at most half
/// the burst), so that a run never holds much of the budget that another run could use.
const SLICES_PER_SEC: u32 = 20;

/// Shortest wait before asking an empty bucket again.
const MIN_WAIT: Duration = Duration::from_millis(5);

/// Consecutive failures to reach the bucket after which sending stops.
const MAX_STORE_ERRORS: u32 = 5;

/// How one gateway's `rate_per_sec`, `burst` and `batch_size` split between the shared bucket
/// and the slices runs hold (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Budget {
    pub(super) rate: u32,
    /// Tokens a slice may take beyond its request.
    pub(super) hold: u32,
    /// The bucket's capacity: `burst - hold`, at least one batch.
    pub(super) capacity: u32,
    /// How long taken tokens may wait to be spent: `hold / rate`.
    pub(super) ttl: Duration,
}

impl Budget {
    pub(super) fn new(rate: u32, burst: u32, batch_size: u32) -> Budget {
        let rate = rate.max(1);
        let burst = burst.max(1);
        let batch = batch_size.clamp(1, burst);
        let hold = (rate / SLICES_PER_SEC).min(burst / 2).min(burst - batch);
        Budget {
            rate,
            hold,
            capacity: burst - hold,
            ttl: Duration::from_secs_f64(f64::from(hold) / f64::from(rate)),
        }
    }
}

/// What the shared budget cost a run: the requests that spent its tokens, the round trips to
/// the database that took them ([`Store::take_tokens`], those that got nothing included), and
/// the time of those round trips (one sender at a time makes them; the others wait for it).
/// Waits for an empty bucket to refill are the rate limit at work and are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct BudgetUse {
    pub requests: u64,
    pub takes: u64,
    pub take_secs: f64,
}

impl BudgetUse {
    /// The sum of two gateways' uses.
    pub(super) fn add(self, o: BudgetUse) -> BudgetUse {
        BudgetUse {
            requests: self.requests + o.requests,
            takes: self.takes + o.takes,
            take_secs: self.take_secs + o.take_secs,
        }
    }
}

/// One run's share of a gateway's budget.
pub(super) struct SharedLimiter {
    store: Arc<dyn Store>,
    gateway: String,
    budget: Budget,
    /// Tokens of the latest slice not yet spent, and when it was taken. The lock also queues
    /// the run's senders: one at a time asks the database.
    local: Mutex<(u32, Instant)>,
    /// [`BudgetUse`]: requests, takes, and nanoseconds spent taking.
    requests: AtomicU64,
    takes: AtomicU64,
    take_nanos: AtomicU64,
}

impl SharedLimiter {
    pub(super) fn new(store: Arc<dyn Store>, g: &GatewayConfig) -> SharedLimiter {
        let batch = u32::try_from(g.batch_size).unwrap_or(u32::MAX);
        SharedLimiter {
            store,
            gateway: g.name.clone(),
            budget: Budget::new(g.rate_per_sec, g.burst, batch),
            local: Mutex::new((0, Instant::now())),
            requests: AtomicU64::new(0),
            takes: AtomicU64::new(0),
            take_nanos: AtomicU64::new(0),
        }
    }

    /// The gateway whose budget this is.
    pub(super) fn gateway(&self) -> &str {
        &self.gateway
    }

    /// What this budget cost the run so far.
    pub(super) fn used(&self) -> BudgetUse {
        BudgetUse {
            requests: self.requests.load(Ordering::Relaxed),
            takes: self.takes.load(Ordering::Relaxed),
            take_secs: self.take_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Waits until `n` messages (at most one batch) may be sent, taking them from the budget.
    /// Fails when the database cannot be asked, `MAX_STORE_ERRORS` times in a row.
    pub(super) async fn until_n_ready(&self, n: u32) -> Result<(), StoreError> {
        let b = self.budget;
        // A batch never exceeds the capacity (`batch_size <= burst - hold`).
        let n = n.clamp(1, b.capacity);
        let mut local = self.local.lock().await;
        // Tokens too few for this request, or held too long, are given up (see the module).
        if local.0 < n || local.1.elapsed() > b.ttl {
            local.0 = 0;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut errors = 0;
        while local.0 < n {
            let asked = Instant::now();
            let took = self
                .store
                .take_tokens(
                    &self.gateway,
                    Take {
                        need: n,
                        want: n + b.hold,
                        rate: b.rate,
                        capacity: b.capacity,
                    },
                )
                .await;
            self.takes.fetch_add(1, Ordering::Relaxed);
            let nanos = u64::try_from(asked.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.take_nanos.fetch_add(nanos, Ordering::Relaxed);
            match took {
                Ok(0) => {
                    errors = 0;
                    let missing = f64::from(n) / f64::from(b.rate);
                    tokio::time::sleep(Duration::from_secs_f64(missing).max(MIN_WAIT)).await;
                }
                Ok(got) => {
                    errors = 0;
                    *local = (got, Instant::now());
                }
                Err(e) => {
                    errors += 1;
                    if errors >= MAX_STORE_ERRORS {
                        return Err(e);
                    }
                    warn!(gateway = %self.gateway, "taking from the shared rate budget failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100 << errors)).await;
                }
            }
        }
        local.0 -= n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_slices_and_the_bucket_never_exceed_the_burst_together() {
        for (rate, burst, batch) in [
            (100, 10, 1),
            (5000, 500, 1),
            (5000, 100, 1),
            (100, 1, 1),
            (1000, 1000, 1000),
            (7, 3, 2),
            (1, 1, 1),
        ] {
            let b = Budget::new(rate, burst, batch);
            let held_at_most = f64::from(b.rate) * b.ttl.as_secs_f64();
            assert!(
                f64::from(b.capacity) + held_at_most <= f64::from(burst) + 1e-9,
                "{rate}/s burst {burst}: {b:?}"
            );
            assert!(b.capacity >= batch, "a batch fits the bucket: {b:?}");
        }
        let b = Budget::new(100, 10, 1);
        assert_eq!((b.hold, b.capacity), (5, 5));
        assert_eq!(b.ttl, Duration::from_millis(50));
        // A burst of one leaves nothing to hold: each request takes its own token.
        assert_eq!(Budget::new(100, 1, 1).hold, 0);
    }
}
