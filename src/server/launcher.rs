//! The launcher of `munja serve` (Spring Batch's JobLauncher behind a trigger): twice a second it
//! creates the campaigns of due schedule occurrences, then starts, up to
//! `[server] max_concurrent_runs` at once,
//! - SCHEDULED campaigns whose time has come;
//! - campaigns STOPPED by quiet hours, once the window has ended;
//! - campaigns STOPPED because a server shut down (SHUTDOWN);
//! - STARTED campaigns whose holder is gone (killed, or silent past `lease_timeout_secs`).
//!
//! Several servers on one database may pick the same campaign: the lease decides
//! (`start_execution` is a compare and swap), the loser logs and moves on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn};

use crate::config::Config;
use crate::domain::model::CampaignStatus;
use crate::run::dispatch::{self, RunOptions};
use crate::run::lease::Holder;
use crate::run::schedule;
use crate::store::Store;

/// How the exit message of a run stopped by a server shutdown begins.
const SHUTDOWN_MESSAGE: &str = "stopped because `munja serve` shut down";

/// How long a launch claim keeps other servers off a campaign: far longer than the moment
/// between a claim and the run's lease, short enough for a restart to take over quickly.
const CLAIM_TTL_MS: i64 = 5000;

/// How often the launcher looks for work.
const TICK: Duration = Duration::from_millis(500);
/// How long a campaign whose run could not start (or ended in an error) is left alone before
/// the launcher tries it again, so that one broken campaign does not fill the log.
const COOLDOWN: Duration = Duration::from_secs(30);

/// Why a campaign was (not) launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    Started,
    /// This server already runs it.
    AlreadyRunning,
    /// `max_concurrent_runs` runs are going on; it waits its turn.
    Busy,
    /// The server is shutting down.
    ShuttingDown,
}

pub struct Launcher {
    store: Arc<dyn Store>,
    cfg: Arc<Config>,
    running: Mutex<HashMap<i64, JoinHandle<()>>>,
    shutdown: Mutex<Option<watch::Receiver<bool>>>,
    /// Campaigns whose last run here failed with an error, and when.
    failed: Arc<Mutex<HashMap<i64, std::time::Instant>>>,
}

impl Launcher {
    pub fn new(store: Arc<dyn Store>, cfg: Arc<Config>) -> Arc<Launcher> {
        Arc::new(Launcher {
            store,
            cfg,
            running: Mutex::default(),
            shutdown: Mutex::default(),
            failed: Arc::default(),
        })
    }

    /// Campaign ids this server runs now.
    pub fn running(&self) -> Vec<i64> {
        let mut map = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, h| !h.is_finished());
        let mut ids: Vec<i64> = map.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The loop: looks for work every [`TICK`] until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        *self.shutdown.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop.clone());
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.tick().await {
                warn!("launcher: {e:#}");
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.wait_for(|down| *down) => break,
            }
        }
    }

    /// Waits for every run of this server to end.
    pub async fn drain(&self) {
        let handles: Vec<JoinHandle<()>> = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            let _ = h.await;
        }
    }

    /// One look for work.
    pub async fn tick(self: &Arc<Self>) -> anyhow::Result<()> {
        let now = Utc::now();
        schedule::tick(&*self.store, &self.cfg, now).await?;
        let mut work: Vec<(i64, CampaignStatus)> = self
            .store
            .due_campaigns(now)
            .await?
            .into_iter()
            .map(|id| (id, CampaignStatus::Scheduled))
            .collect();
        work.extend(self.resumable().await?);
        for (id, status) in work {
            if self.cooling_down(id) || self.running().contains(&id) {
                continue;
            }
            if self.running().len() >= self.cfg.server.max_concurrent_runs {
                break;
            }
            // Of several servers that saw it at once, the one with the claim launches it.
            if self
                .store
                .claim_launch(id, status.as_str(), CLAIM_TTL_MS)
                .await?
                && self.launch(id) == Launch::Busy
            {
                break;
            }
        }
        Ok(())
    }

    /// Whether campaign `id` failed here less than [`COOLDOWN`] ago.
    fn cooling_down(&self, id: i64) -> bool {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed.retain(|_, at| at.elapsed() < COOLDOWN);
        failed.contains_key(&id)
    }

    /// Campaigns to resume or take over now.
    async fn resumable(&self) -> anyhow::Result<Vec<(i64, CampaignStatus)>> {
        let (q, tz) = (self.cfg.policy.quiet_hours, self.cfg.policy.timezone);
        let quiet_now = q.is_quiet_at(tz, Utc::now());
        let mut ids = Vec::new();
        for c in self.store.campaigns().await? {
            match c.parsed_status() {
                Some(CampaignStatus::Started) => {
                    let holder =
                        Holder::of(&c, self.cfg.policy.lease_timeout_secs, &*self.store).await?;
                    if matches!(holder, Holder::Gone(..)) {
                        ids.push((c.id, CampaignStatus::Started));
                    }
                }
                // The exit message says why it stopped; the execution's code confirms it (and
                // campaigns stopped for any other reason cost no query).
                Some(CampaignStatus::Stopped)
                    if !c.cancel_requested
                        && c.exit_message.as_deref().is_some_and(|m| {
                            m.starts_with("quiet_hours") || m.starts_with(SHUTDOWN_MESSAGE)
                        }) =>
                {
                    let last = self.store.executions(c.id).await?.into_iter().last();
                    let code = last.and_then(|e| e.exit_code).unwrap_or_default();
                    if code == "SHUTDOWN" || (code == "QUIET_HOURS" && !quiet_now) {
                        ids.push((c.id, CampaignStatus::Stopped));
                    }
                }
                _ => {}
            }
        }
        Ok(ids)
    }

    /// Starts a run of campaign `id` in the background, unless busy or already running it.
    pub fn launch(self: &Arc<Self>, id: i64) -> Launch {
        let shutdown = self
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if shutdown.as_ref().is_some_and(|rx| *rx.borrow()) {
            return Launch::ShuttingDown;
        }
        let mut map = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, h| !h.is_finished());
        if map.contains_key(&id) {
            return Launch::AlreadyRunning;
        }
        if map.len() >= self.cfg.server.max_concurrent_runs {
            return Launch::Busy;
        }
        let (store, cfg, failed) = (self.store.clone(), self.cfg.clone(), self.failed.clone());
        let span = info_span!("serve_run", campaign = id);
        // A run's future is not `Send` (its progress display is not `Sync`): it runs on a
        // blocking thread of its own, driving the shared runtime.
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            let opts = RunOptions {
                shutdown,
                ..Default::default()
            };
            let _entered = span.enter();
            match handle.block_on(dispatch::run(store, &cfg, id, opts)) {
                Ok(r) => info!(
                    status = r.status.as_str(),
                    sent = r.sent_now,
                    "run ended: {}",
                    r.exit_message
                ),
                // Another server (or a `campaign run`) won the lease: nothing to do here.
                Err(e)
                    if format!("{e:#}").contains("already running")
                        || format!("{e:#}").contains("just started by another run") =>
                {
                    debug!("not started: {e:#}")
                }
                Err(e) => {
                    warn!(
                        "run failed to start or ended in error (next try in {}s): {e:#}",
                        COOLDOWN.as_secs()
                    );
                    failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, std::time::Instant::now());
                }
            }
        });
        map.insert(id, task);
        Launch::Started
    }
}
