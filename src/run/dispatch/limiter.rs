//! The gateway's rate limit, shared by every run on the job repository: each run takes small
//! slices of the gateway's token bucket from the database ([`CampaignStore::take_tokens`]) into a local
//! budget, spends them request by request, and waits for the bucket to refill when the database
//! grants nothing. However many runs and campaigns use a gateway, together they send at most
//! `rate_per_sec + burst` messages in any one second.
//!
//! A take is a round trip to the database (on SQLite, a write queued behind the chunk commits),
//! so a run asks for its next slice ahead of need, in the background, when the slices it holds
//! will not last two round trips at the pace it spends them; its senders wait for a take only
//! when that one comes too late.
//!
//! Why, with slices held by the runs: a slice may hold up to [`Budget::hold`] tokens beyond the
//! request it was taken for, and tokens a run took are spent within `hold / rate_per_sec`
//! seconds of the take ([`Budget::ttl`]) or given up (those of the request a take was made for
//! are spent when it returns, however long it took). The bucket holds at most `burst - hold`
//! ([`Budget::capacity`]). At any moment the tokens held by all runs were taken within the last
//! `ttl` (each slice's time counts from its take, [`Granted::at`], however many a run holds),
//! so they and the bucket's together are at most what the bucket held `ttl` ago plus what
//! refilled since: `burst - hold + rate * ttl = burst`. A second's sends are those tokens plus
//! the second's refill: at most `burst + rate_per_sec`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::config::GatewayConfig;
use crate::store::{Granted, Store, StoreError, Take};

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
/// the database that took them ([`Store::take_tokens`], those that got nothing included), how
/// many of those were made ahead of need in the background, and the time of the others, which
/// the run's senders waited for (one sender at a time makes them; the others wait for it).
/// Waits for an empty bucket to refill are the rate limit at work and are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct BudgetUse {
    pub requests: u64,
    pub takes: u64,
    pub takes_ahead: u64,
    pub take_secs: f64,
}

impl BudgetUse {
    /// The sum of two gateways' uses.
    pub(super) fn add(self, o: BudgetUse) -> BudgetUse {
        BudgetUse {
            requests: self.requests + o.requests,
            takes: self.takes + o.takes,
            takes_ahead: self.takes_ahead + o.takes_ahead,
            take_secs: self.take_secs + o.take_secs,
        }
    }
}

/// How many recent takes the latency estimate follows (an exponential average).
const LATENCY_WEIGHT: f64 = 0.25;

/// One run's share of a gateway's budget. Cheap to clone: clones share one budget.
#[derive(Clone)]
pub(super) struct SharedLimiter(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    gateway: String,
    budget: Budget,
    /// Slices taken and not yet spent or given up, oldest first.
    held: std::sync::Mutex<Held>,
    /// Queues the takes: one at a time asks the database, the senders that found no tokens
    /// wait here, and a take ahead of need holds it too.
    taking: Mutex<()>,
    /// [`BudgetUse`]: requests, takes, takes ahead, and nanoseconds senders waited for takes.
    requests: AtomicU64,
    takes: AtomicU64,
    takes_ahead: AtomicU64,
    take_nanos: AtomicU64,
}

/// The slices a run holds, and what it knows of how fast it spends them.
#[derive(Default)]
struct Held {
    slices: VecDeque<Slice>,
    /// A take ahead of need is in flight.
    ahead: bool,
    /// Recent round trip of a take (an exponential average), zero before the first.
    latency: Duration,
}

/// Tokens taken in one round trip; spent before `until` or given up.
struct Slice {
    tokens: u32,
    /// How many it held when taken.
    taken: u32,
    /// When the store took them ([`Granted::at`]).
    at: Instant,
    until: Instant,
}

impl Held {
    /// Gives up what expired, then spends `n` tokens, oldest slice first, if they are held.
    fn spend(&mut self, n: u32, now: Instant) -> bool {
        self.slices.retain(|s| s.until > now && s.tokens > 0);
        let total: u64 = self.slices.iter().map(|s| u64::from(s.tokens)).sum();
        if total < u64::from(n) {
            return false;
        }
        let mut left = n;
        for s in &mut self.slices {
            let k = s.tokens.min(left);
            s.tokens -= k;
            left -= k;
            if left == 0 {
                break;
            }
        }
        true
    }

    /// Whether the next slice should be asked for now, so that it arrives before the held ones
    /// expire or run out: the time they last (at the pace the newest has been spent) is under
    /// two round trips of a take, or a quarter of a slice's life (requests a few milliseconds
    /// apart would otherwise miss a window of two quick round trips). Never when a slice would
    /// not outlive two round trips: the tokens taken ahead would mostly be given up, lost to
    /// every run of the gateway.
    fn wants_ahead(&self, now: Instant, ttl: Duration) -> bool {
        let trips = self.latency * 2;
        if self.ahead || self.latency.is_zero() || trips >= ttl {
            return false;
        }
        let lead = trips.max(ttl / 4);
        let Some(newest) = self.slices.back() else {
            return true;
        };
        if newest.until.saturating_duration_since(now) < lead {
            return true;
        }
        let spent = newest.taken - newest.tokens;
        let age = now.saturating_duration_since(newest.at).as_secs_f64();
        let left: u64 = self.slices.iter().map(|s| u64::from(s.tokens)).sum();
        spent > 0 && (left as f64) * age / f64::from(spent) < lead.as_secs_f64()
    }

    fn observe(&mut self, took: Duration) {
        self.latency = if self.latency.is_zero() {
            took
        } else {
            self.latency.mul_f64(1.0 - LATENCY_WEIGHT) + took.mul_f64(LATENCY_WEIGHT)
        };
    }
}

impl SharedLimiter {
    pub(super) fn new(store: Arc<dyn Store>, g: &GatewayConfig) -> SharedLimiter {
        let batch = u32::try_from(g.batch_size).unwrap_or(u32::MAX);
        SharedLimiter(Arc::new(Inner {
            store,
            gateway: g.name.clone(),
            budget: Budget::new(g.rate_per_sec, g.burst, batch),
            held: std::sync::Mutex::default(),
            taking: Mutex::new(()),
            requests: AtomicU64::new(0),
            takes: AtomicU64::new(0),
            takes_ahead: AtomicU64::new(0),
            take_nanos: AtomicU64::new(0),
        }))
    }

    /// The gateway whose budget this is.
    pub(super) fn gateway(&self) -> &str {
        &self.0.gateway
    }

    /// What this budget cost the run so far.
    pub(super) fn used(&self) -> BudgetUse {
        let i = &self.0;
        BudgetUse {
            requests: i.requests.load(Ordering::Relaxed),
            takes: i.takes.load(Ordering::Relaxed),
            takes_ahead: i.takes_ahead.load(Ordering::Relaxed),
            take_secs: i.take_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spends `n` held tokens if there are; then asks for the next slice in the background
    /// when the held ones will not last two round trips of a take.
    fn spend(&self, n: u32) -> bool {
        let now = Instant::now();
        let mut held = self.held();
        if !held.spend(n, now) {
            return false;
        }
        if held.wants_ahead(now, self.0.budget.ttl) {
            held.ahead = true;
            let me = self.clone();
            tokio::spawn(async move {
                let _one = me.0.taking.lock().await;
                if let Err(e) = me.take(n, 0).await {
                    debug!(gateway = %me.0.gateway, "taking ahead from the shared rate budget failed: {e}");
                }
                me.held().ahead = false;
            });
        }
        true
    }

    /// One round trip to the bucket for `n` tokens and a slice beyond them, of which the
    /// caller spends `spend` at once (none: a take ahead of need) (its own request: those are sent whatever the round trip
    /// took); the rest is held until `ttl` after the take ([`Granted::at`]). Returns how many
    /// were granted.
    async fn take(&self, n: u32, spend: u32) -> Result<u32, StoreError> {
        let (i, b) = (&self.0, self.0.budget);
        let asked = Instant::now();
        let took = i
            .store
            .take_tokens(
                &i.gateway,
                Take {
                    need: n,
                    want: n + b.hold,
                    rate: b.rate,
                    capacity: b.capacity,
                },
            )
            .await;
        let elapsed = asked.elapsed();
        i.takes.fetch_add(1, Ordering::Relaxed);
        if spend == 0 {
            i.takes_ahead.fetch_add(1, Ordering::Relaxed);
        } else {
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            i.take_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        let mut held = self.held();
        held.observe(elapsed);
        let Granted { tokens, at } = took?;
        if tokens > 0 {
            held.slices.push_back(Slice {
                tokens: tokens - spend.min(tokens),
                taken: tokens,
                at,
                until: at + b.ttl,
            });
        }
        Ok(tokens)
    }

    /// Waits until `n` messages (at most one batch) may be sent, taking them from the budget.
    /// Fails when the database cannot be asked, `MAX_STORE_ERRORS` times in a row.
    pub(super) async fn until_n_ready(&self, n: u32) -> Result<(), StoreError> {
        let b = self.0.budget;
        // A batch never exceeds the capacity (`batch_size <= burst - hold`).
        let n = n.clamp(1, b.capacity);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        let mut errors = 0;
        loop {
            if self.spend(n) {
                return Ok(());
            }
            let _one = self.0.taking.lock().await;
            // A take made while this sender waited for its turn may have brought enough.
            if self.spend(n) {
                return Ok(());
            }
            match self.take(n, n).await {
                Ok(0) => {
                    errors = 0;
                    let missing = f64::from(n) / f64::from(b.rate);
                    tokio::time::sleep(Duration::from_secs_f64(missing).max(MIN_WAIT)).await;
                }
                // At least `n` (the take's need), spent by this request.
                Ok(_) => return Ok(()),
                Err(e) => {
                    errors += 1;
                    if errors >= MAX_STORE_ERRORS {
                        return Err(e);
                    }
                    warn!(gateway = %self.0.gateway, "taking from the shared rate budget failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100 << errors)).await;
                }
            }
        }
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

    fn slice(tokens: u32, asked: Instant, ttl: Duration) -> Slice {
        Slice {
            tokens,
            taken: tokens,
            at: asked,
            until: asked + ttl,
        }
    }

    #[test]
    fn a_request_spends_the_oldest_slices_first_and_expired_ones_are_given_up() {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(50);
        let mut h = Held::default();
        h.slices.push_back(slice(3, t0, ttl));
        h.slices
            .push_back(slice(5, t0 + Duration::from_millis(30), ttl));
        // 4 tokens: the 3 of the first slice and 1 of the second.
        assert!(h.spend(4, t0 + Duration::from_millis(10)));
        let left: Vec<u32> = h.slices.iter().map(|s| s.tokens).collect();
        assert_eq!(left, [0, 4]);
        // At 60 ms the first slice has expired; the second (until 80 ms) still holds 4.
        assert!(!h.spend(5, t0 + Duration::from_millis(60)));
        assert!(h.spend(4, t0 + Duration::from_millis(60)));
        // At 80 ms nothing is held any more: what is left is given up.
        h.slices
            .push_back(slice(2, t0 + Duration::from_millis(20), ttl));
        assert!(!h.spend(1, t0 + Duration::from_millis(80)));
        assert!(h.slices.is_empty());
    }

    #[test]
    fn the_next_take_is_asked_ahead_when_the_held_tokens_will_not_last_two_round_trips() {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(50);
        let ms = Duration::from_millis;
        let mut h = Held::default();
        h.slices.push_back(slice(1000, t0, ttl));
        // No take measured yet: nothing to plan with.
        assert!(!h.wants_ahead(t0 + ms(1), ttl));
        h.observe(ms(10));
        // Fresh, hardly spent: it lasts longer than two round trips (20 ms).
        h.slices[0].tokens = 990;
        assert!(!h.wants_ahead(t0 + ms(10), ttl));
        // Expires in 25 ms, then 15 ms: ask once it is under 20 ms.
        assert!(!h.wants_ahead(t0 + ms(25), ttl));
        assert!(h.wants_ahead(t0 + ms(35), ttl));
        // Spent fast: 500 tokens in 10 ms leave 500, 10 ms at that pace.
        h.slices[0].tokens = 500;
        assert!(h.wants_ahead(t0 + ms(10), ttl));
        // One take ahead at a time.
        h.ahead = true;
        assert!(!h.wants_ahead(t0 + ms(10), ttl));
        // Takes of 30 ms against slices of 50 ms: what is taken ahead would mostly expire.
        h.ahead = false;
        h.observe(ms(80));
        assert!(h.latency >= ms(25));
        assert!(!h.wants_ahead(t0 + ms(10), ttl));
    }
}
