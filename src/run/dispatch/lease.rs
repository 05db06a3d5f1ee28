//! The lease of a running campaign: enlisting this worker when the run starts (a new
//! execution, taking over a dead holder, or joining the live one on a store with several
//! workers) and the heartbeat task that keeps it, reads stop and cancel requests, refreshes the
//! opt-outs that arrived since the run started, and stops this worker when its heartbeat keeps
//! failing, before its claims could expire and be rescued by another worker. The rules
//! themselves are in [`crate::run::lease`].

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::warn;

use super::control::{Control, StopReason};
use crate::config::Config;
use crate::domain::model::{Campaign, Enlist, WorkerToken};
use crate::run::lease::{Holder, Process};
use crate::store::{Store, StoreError};

/// Numbers of this run's claimed messages opted out since the run started.
pub(super) type FreshOptouts = Arc<RwLock<HashSet<String>>>;

/// Enlists this process as a worker of campaign `c`: refuses while a live run holds it on a
/// store with one worker per campaign, joins it on one with several, takes over a dead one.
/// Workers started at the same moment race for the lease: the losers look again and join the
/// winner (or, with one worker per campaign, are refused).
pub(super) async fn acquire(
    store: &dyn Store,
    cfg: &Config,
    c: &Campaign,
) -> anyhow::Result<WorkerToken> {
    let me = Process::me();
    let several = store.several_workers();
    let mut c = c.clone();
    let mut tries = 0;
    loop {
        // The workers are read before the lease: a worker that joins after this read is not in
        // `judged`, and one that joined before it beats in the lease read below. Either way a
        // takeover can never close a worker that joined a live execution (see `Enlist::New`).
        let judged = match several {
            true => started_workers(store, c.id).await?,
            false => Vec::new(),
        };
        if several {
            c = store.campaign(c.id).await?;
        }
        let holder = Holder::of(&c, cfg.policy.lease_timeout_secs, store).await?;
        let mut how = holder.enlist(c.id, several)?;
        if let Enlist::New { judged_workers, .. } = &mut how {
            *judged_workers = judged;
        }
        match store.start_worker(c.id, &how, &me).await {
            Ok(w) => {
                log_enlisted(&how);
                return Ok(w);
            }
            Err(StoreError::Conflict(m)) if tries < 5 => {
                tries += 1;
                tracing::debug!("{m}; looking again");
                c = store.campaign(c.id).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The ids of campaign `id`'s STARTED workers.
async fn started_workers(store: &dyn Store, id: i64) -> anyhow::Result<Vec<i64>> {
    Ok(store
        .workers(id)
        .await?
        .into_iter()
        .filter(|w| w.status == "STARTED")
        .map(|w| w.id)
        .collect())
}

fn log_enlisted(how: &Enlist) {
    match how {
        Enlist::New {
            expected: Some(previous),
            abandon_message,
            ..
        } => warn!(previous, "{abandon_message}; taking over"),
        Enlist::Join { execution } => {
            tracing::info!(execution, "joined the running execution as another worker")
        }
        Enlist::New { .. } => {}
    }
}

/// Renews the lease every sixth of `lease_timeout_secs` (0.2 to 1 s), turns stop and cancel
/// requests and a lost lease into a stop, and refreshes the fresh opt-outs. When no heartbeat
/// has passed for half of `lease_timeout_secs` (the database is unreachable, say), the worker
/// aborts its in-flight requests and stops: well before its claims could expire and another
/// worker rescue them, so the two never send the same message at once. A heartbeat that gets
/// no answer at all (a partition) counts as failed (see [`beat`]); once it gave up, the task
/// ends at three quarters of the lease with the reason, and the run, which waits on it too,
/// ends without touching the database even if its claim loop is stuck on it.
pub(super) fn spawn_heartbeat(
    store: Arc<dyn Store>,
    w: WorkerToken,
    cfg: &Config,
    ctl: Arc<Control>,
    fresh: FreshOptouts,
) -> tokio::task::JoinHandle<StopReason> {
    let every = Duration::from_millis((cfg.policy.lease_timeout_secs * 1000 / 6).clamp(200, 1000));
    // A margin for clocks of other hosts that add opt-outs; older ones were checked at claim.
    let since = Utc::now() - chrono::Duration::seconds(60);
    let give_up = Duration::from_millis(cfg.policy.lease_timeout_secs * 1000 / 2);
    let stop_by = Duration::from_millis(cfg.policy.lease_timeout_secs * 1000 * 3 / 4);
    tokio::spawn(async move {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let left = give_up.saturating_sub(last_ok.elapsed()).max(every);
            match beat(&*store, &w, left, every).await {
                Ok(flags) => {
                    last_ok = Instant::now();
                    match flags {
                        (_, true) => ctl.stop(StopReason::Cancelled),
                        (true, false) => ctl.stop(StopReason::Requested),
                        _ => {}
                    }
                }
                Err(StoreError::LeaseLost { .. }) => ctl.abort(StopReason::LeaseLost),
                Err(e) if last_ok.elapsed() >= give_up => {
                    warn!(
                        "heartbeat failed for {:?}: {e}; stopping this worker before its claims expire",
                        last_ok.elapsed()
                    );
                    let why = StopReason::HeartbeatLost(e.to_string());
                    ctl.abort(why.clone());
                    // The claim loop may be stuck on a database that answers nothing: this
                    // task ends at three quarters of the lease, and the run with it.
                    tokio::time::sleep(stop_by.saturating_sub(last_ok.elapsed())).await;
                    return why;
                }
                Err(e) => warn!("heartbeat failed: {e}"),
            }
            // A plain read: one beat is plenty, unless the database answers nothing.
            match within(every, store.fresh_optouts_in_flight(w.campaign, since)).await {
                Ok(list) => {
                    if let Ok(mut set) = fresh.write() {
                        *set = list.into_iter().collect();
                    }
                }
                Err(e) => warn!("reading new opt-outs failed: {e}"),
            }
        }
    })
}

/// One heartbeat. A database that answers nothing (a partition drops the packets) would hold
/// it for the pool's timeout, or for ever on an open connection; but on a busy database it
/// may also wait seconds for row locks. So once it has waited `patience`, a plain read tells
/// the two apart: while the database answers that within `probe`, the heartbeat is waited
/// for; otherwise it fails as unreachable.
async fn beat(
    store: &dyn Store,
    w: &WorkerToken,
    patience: Duration,
    probe: Duration,
) -> Result<(bool, bool), StoreError> {
    let heartbeat = store.heartbeat(w);
    tokio::pin!(heartbeat);
    let mut wait = patience;
    loop {
        if let Ok(done) = tokio::time::timeout(wait, &mut heartbeat).await {
            return done;
        }
        if let Err(e) = within(probe, store.campaign(w.campaign)).await {
            return Err(StoreError::Unreachable(format!(
                "the heartbeat got no answer within {patience:?}, nor a read within {probe:?} ({e})"
            )));
        }
        wait = probe;
    }
}

/// `call`, or an [`StoreError::Unreachable`] when the database has not answered within `limit`.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(StoreError::Unreachable(format!(
            "the database did not answer within {limit:?}"
        )))
    })
}
