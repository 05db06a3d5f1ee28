//! The lease of a running campaign: taking it when the run starts (taking over a dead holder)
//! and the heartbeat task that keeps it, reads stop and cancel requests, and refreshes the
//! opt-outs that arrived since the run started. The rules themselves are in [`crate::lease`].

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tracing::warn;

use super::control::{Control, StopReason};
use crate::config::Config;
use crate::lease::{self, Holder};
use crate::model::Campaign;
use crate::store::{Store, StoreError};

/// Numbers of this run's claimed messages opted out since the run started.
pub(super) type FreshOptouts = Arc<RwLock<HashSet<String>>>;

/// Takes the campaign's lease: refuses while a live run holds it, takes over a dead one.
pub(super) async fn acquire(store: &dyn Store, cfg: &Config, c: &Campaign) -> anyhow::Result<i64> {
    let host = lease::this_host();
    let pid = i64::from(std::process::id());
    let holder = Holder::judge(
        c.lease.as_ref(),
        cfg.policy.lease_timeout_secs,
        &host,
        Utc::now(),
    );
    let (expected, abandon) = holder.takeover(c.id)?;
    if let Some(previous) = expected {
        warn!(previous, "{abandon}; taking over");
    }
    Ok(store
        .start_execution(c.id, expected, &host, pid, &abandon)
        .await?)
}

/// Renews the lease every sixth of `lease_timeout_secs` (0.2 to 1 s), turns stop and cancel
/// requests and a lost lease into a stop, and refreshes the fresh opt-outs.
pub(super) fn spawn_heartbeat(
    store: Arc<dyn Store>,
    campaign: i64,
    execution: i64,
    cfg: &Config,
    ctl: Arc<Control>,
    fresh: FreshOptouts,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_millis((cfg.policy.lease_timeout_secs * 1000 / 6).clamp(200, 1000));
    // A margin for clocks of other hosts that add opt-outs; older ones were checked at claim.
    let since = Utc::now() - chrono::Duration::seconds(60);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match store.fresh_optouts_in_flight(campaign, since).await {
                Ok(list) => {
                    if let Ok(mut set) = fresh.write() {
                        *set = list.into_iter().collect();
                    }
                }
                Err(e) => warn!("reading new opt-outs failed: {e}"),
            }
            match store.heartbeat(campaign, execution).await {
                Ok((_, true)) => ctl.stop(StopReason::Cancelled),
                Ok((true, false)) => ctl.stop(StopReason::Requested),
                Ok(_) => {}
                Err(StoreError::LeaseLost { .. }) => ctl.stop(StopReason::LeaseLost),
                Err(e) => warn!("heartbeat failed: {e}"),
            }
        }
    })
}
