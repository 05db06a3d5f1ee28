//! The gateway's rate limit, shared by every run on the job repository: each run takes small
//! slices of the gateway's token bucket from the database ([`Store::take_tokens`]) into a local
//! budget, spends them request by request, and waits for the bucket to refill when the database
//! grants nothing. However many runs and campaigns use a gateway, together they send at most
//! `rate_per_sec` messages per second plus `burst`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::warn;

use crate::config::GatewayConfig;
use crate::store::{Store, StoreError};

/// Slices are this fraction of a second's rate (and at most the burst), so that a run never
/// holds much of the budget that another run could use.
const SLICES_PER_SEC: u32 = 20;

/// Tokens a run took but left unspent this long are given up, never spent later in a burst.
const LEFTOVER_TTL: Duration = Duration::from_millis(100);

/// Shortest wait before asking an empty bucket again.
const MIN_WAIT: Duration = Duration::from_millis(5);

/// Consecutive failures to reach the bucket after which sending stops.
const MAX_STORE_ERRORS: u32 = 5;

/// One run's share of a gateway's budget.
pub(super) struct SharedLimiter {
    store: Arc<dyn Store>,
    gateway: String,
    rate: u32,
    burst: u32,
    slice: u32,
    /// Tokens taken and not yet spent, and when they were taken. The lock also queues the
    /// run's senders: one at a time asks the database.
    local: Mutex<(u32, Instant)>,
}

impl SharedLimiter {
    pub(super) fn new(store: Arc<dyn Store>, g: &GatewayConfig) -> SharedLimiter {
        let burst = g.burst.max(1);
        SharedLimiter {
            store,
            gateway: g.name.clone(),
            rate: g.rate_per_sec.max(1),
            burst,
            slice: (g.rate_per_sec / SLICES_PER_SEC).clamp(1, burst),
            local: Mutex::new((0, Instant::now())),
        }
    }

    /// The gateway whose budget this is.
    pub(super) fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Waits until `n` messages (at most the burst) may be sent, taking them from the budget.
    /// Fails when the database cannot be asked, `MAX_STORE_ERRORS` times in a row.
    pub(super) async fn until_n_ready(&self, n: u32) -> Result<(), StoreError> {
        let n = n.clamp(1, self.burst);
        let mut local = self.local.lock().await;
        if local.1.elapsed() > LEFTOVER_TTL {
            local.0 = 0;
        }
        let mut errors = 0;
        while local.0 < n {
            let want = (n - local.0).max(self.slice).min(self.burst);
            match self
                .store
                .take_tokens(&self.gateway, want, self.rate, self.burst)
                .await
            {
                Ok(0) => {
                    errors = 0;
                    let missing = f64::from(n - local.0) / f64::from(self.rate);
                    tokio::time::sleep(Duration::from_secs_f64(missing).max(MIN_WAIT)).await;
                }
                Ok(got) => {
                    errors = 0;
                    *local = (local.0 + got, Instant::now());
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
