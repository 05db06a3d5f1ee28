//! `munja serve`'s periodic delivery-result sync: every `[server] sync_results_every_secs`
//! (0: off) it does what `munja campaign sync-results` does ([`sync_results`]) for each
//! campaign that
//! - sends through an `nhn-cloud` gateway (the one kind with a result search; each of the
//!   campaign's NHN gateways is searched),
//! - has sent messages without a final delivery state yet, and
//! - still runs, or whose last run ended within `[server] sync_results_days` days.
//!
//! A round's errors (NHN unreachable, refused keys, a store error) are logged per campaign and
//! tried again next round; they never stop the server. Messages are as `sync-results` gives
//! them: no key, and numbers only masked.
//!
//! Several servers on one database: a finished campaign (COMPLETED, CANCELLED, FAILED) is
//! claimed for most of one interval with the launch claim
//! ([`ScheduleStore::claim_launch`](crate::store::ScheduleStore::claim_launch), which nothing
//! launches for those statuses), so one server syncs it per round. A STARTED or STOPPED
//! campaign is not claimed (the launcher needs that claim free to take it over or resume it):
//! each server syncs it, which is harmless because recording a report is idempotent.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::domain::model::{Campaign, CampaignStatus};
use crate::domain::phone;
use crate::run::delivery::sync::sync_results;
use crate::store::Store;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// (campaign, gateway) searches made.
    pub synced: u64,
    /// Reports newly recorded.
    pub applied: u64,
    /// Numbers newly opted out by their result.
    pub opted_out: u64,
    /// Searches that failed (logged).
    pub failed: u64,
}

/// The loop: a round at once, then one every `sync_results_every_secs` until `stop` turns true.
pub async fn run(store: Arc<dyn Store>, cfg: Arc<Config>, mut stop: watch::Receiver<bool>) {
    let every = cfg.server.sync_results_every_secs;
    if every == 0 {
        info!("delivery-result sync off ([server] sync_results_every_secs = 0)");
        return;
    }
    loop {
        if *stop.borrow() {
            break;
        }
        // A round cut short by a shutdown loses nothing: the next one records the rest.
        tokio::select! {
            r = round(&*store, &cfg, Utc::now()) => match r {
                Ok(r) if r != Round::default() => debug!(?r, "delivery-result sync round"),
                Ok(_) => {}
                Err(e) => warn!(
                    "delivery-result sync: {} (next try in {every}s)",
                    phone::mask_in_text(&format!("{e:#}"))
                ),
            },
            _ = stop.wait_for(|down| *down) => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = stop.wait_for(|down| *down) => break,
        }
    }
}

/// One round at `now`: syncs every campaign due (see the module doc).
pub async fn round(store: &dyn Store, cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<Round> {
    let since = now - chrono::Duration::days(i64::from(cfg.server.sync_results_days));
    // Most of one interval: the next round of the same server claims again.
    let ttl_ms = (cfg.server.sync_results_every_secs * 900).max(500) as i64;
    let mut r = Round::default();
    for c in store.campaigns().await? {
        let gateways = nhn_gateways(cfg, &c);
        let Some(status) = c.parsed_status() else {
            continue;
        };
        if gateways.is_empty() || !due(store, &c, status, since).await? {
            continue;
        }
        if claimed_when_finished(status) && !store.claim_launch(c.id, &c.status, ttl_ms).await? {
            debug!(
                campaign = c.id,
                "another server syncs its results this round"
            );
            continue;
        }
        for gw in gateways {
            sync_one(store, cfg, &c, gw, &mut r).await;
        }
    }
    Ok(r)
}

/// Syncs campaign `c` on gateway `gw`, logging what it did or why it failed.
async fn sync_one(store: &dyn Store, cfg: &Config, c: &Campaign, gw: &str, r: &mut Round) {
    r.synced += 1;
    match sync_results(store, cfg, c.id, Some(gw)).await {
        Ok(s) => {
            let applied = u64::try_from(s.effects.applied).unwrap_or(0);
            r.applied += applied;
            r.opted_out += s.opted_out;
            if applied > 0 || s.opted_out > 0 {
                info!(
                    campaign = c.id,
                    gateway = gw,
                    listed = s.listed,
                    applied,
                    not_final = s.not_final,
                    opted_out = s.opted_out,
                    "delivery results synced"
                );
            } else {
                debug!(
                    campaign = c.id,
                    gateway = gw,
                    listed = s.listed,
                    not_final = s.not_final,
                    "delivery results synced: nothing new"
                );
            }
        }
        Err(e) => {
            r.failed += 1;
            warn!(
                campaign = c.id,
                gateway = gw,
                "delivery-result sync failed (next round tries again): {}",
                phone::mask_in_text(&e.to_string())
            );
        }
    }
}

/// The campaign's gateways of kind `nhn-cloud`, in its order.
fn nhn_gateways<'a>(cfg: &'a Config, c: &Campaign) -> Vec<&'a str> {
    c.gateways()
        .into_iter()
        .filter_map(|name| cfg.gateways.iter().find(|g| g.name == name))
        .filter(|g| g.kind == "nhn-cloud")
        .map(|g| g.name.as_str())
        .collect()
}

/// Statuses no launcher claims, so the launch claim can keep other servers off the sync.
fn claimed_when_finished(status: CampaignStatus) -> bool {
    matches!(
        status,
        CampaignStatus::Completed | CampaignStatus::Cancelled | CampaignStatus::Failed
    )
}

/// Whether campaign `c` is synced this round: it ran, its last run still runs or ended at or
/// after `since`, and some sent message has no final delivery state.
async fn due(
    store: &dyn Store,
    c: &Campaign,
    status: CampaignStatus,
    since: DateTime<Utc>,
) -> anyhow::Result<bool> {
    if matches!(status, CampaignStatus::Created | CampaignStatus::Scheduled) {
        return Ok(false);
    }
    let Some(last) = store.executions(c.id).await?.into_iter().last() else {
        return Ok(false);
    };
    if !ended_since(last.ended_at.as_deref(), since) {
        return Ok(false);
    }
    let n = store.counts(c.id).await?;
    Ok(n.sent > n.delivered + n.undelivered)
}

/// A run still going (`None`), or one that ended at or after `since`. An unreadable time
/// counts as recent (a sync too many costs less than results never read).
fn ended_since(ended_at: Option<&str>, since: DateTime<Utc>) -> bool {
    match ended_at.map(DateTime::parse_from_rfc3339) {
        None | Some(Err(_)) => true,
        Some(Ok(t)) => t >= since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_runs_are_synced() {
        let since = DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert!(ended_since(None, since));
        assert!(ended_since(Some("2026-01-10T00:00:00Z"), since));
        assert!(ended_since(Some("2026-01-12T09:00:00.123+09:00"), since));
        assert!(!ended_since(Some("2026-01-09T23:59:59Z"), since));
        assert!(ended_since(Some("garbage"), since));
    }

    #[test]
    fn only_finished_campaigns_take_the_claim() {
        assert!(claimed_when_finished(CampaignStatus::Completed));
        assert!(claimed_when_finished(CampaignStatus::Failed));
        assert!(!claimed_when_finished(CampaignStatus::Stopped));
        assert!(!claimed_when_finished(CampaignStatus::Started));
    }

    #[test]
    fn config_defaults_and_bounds() {
        let c = Config::from_toml_str("", None).expect("defaults");
        assert_eq!(c.server.sync_results_every_secs, 300);
        assert_eq!(c.server.sync_results_days, 4);
        let c =
            Config::from_toml_str("[server]\nsync_results_every_secs = 0\n", None).expect("off");
        assert_eq!(c.server.sync_results_every_secs, 0);
        let e = Config::from_toml_str("[server]\nsync_results_every_secs = -1\n", None)
            .expect_err("negative");
        assert_eq!(e.key, "server.sync_results_every_secs");
        let e = Config::from_toml_str("[server]\nsync_results_days = 0\n", None)
            .expect_err("zero days");
        assert_eq!(e.key, "server.sync_results_days");
    }
}
