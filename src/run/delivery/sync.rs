//! Polling where a provider pushes nothing (or a push was missed): `munja campaign sync-results`
//! reads NHN Cloud's result search for a campaign's messages and records each final result as
//! a delivery report; `munja optout sync` pulls NHN's 080 opt-out list into munja's. Both are
//! idempotent: a second run finds every result already recorded and every number present.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::parse::{kst, nhn_msg_status_name, nhn_status};
use crate::config::{Config, GatewayConfig};
use crate::domain::model::{DeliveryReport, ReportCounts, ReportStatus};
use crate::domain::phone::{self, Phone};
use crate::gateway::nhn_results::{NhnReadError, NhnReader, PAGE_SIZE};
use crate::store::{Store, StoreError};

/// NHN's result search spans at most this many days per request.
const WINDOW_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Gateway(String),
    #[error(transparent)]
    Nhn(#[from] NhnReadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `campaign sync-results` did.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub campaign: i64,
    pub gateway: String,
    /// Results of this campaign's messages NHN listed.
    pub listed: u64,
    /// Listed without a final result yet (requesting, processing, waiting, duplicate).
    pub not_final: u64,
    /// Numbers added to munja's opt-out list because their result said opted out (-6001, 3006).
    pub opted_out: u64,
    #[serde(flatten)]
    pub effects: ReportCounts,
}

/// What `optout sync` did.
#[derive(Debug, Default, Serialize)]
pub struct OptoutSyncReport {
    pub gateway: String,
    pub listed: u64,
    pub added: u64,
    pub already_present: u64,
    /// Listed numbers that are not Korean mobile numbers (never sent to anyway).
    pub rejected: u64,
}

/// The `nhn-cloud` gateway named `name`.
fn nhn_gateway<'a>(
    cfg: &'a Config,
    name: &str,
    what: &str,
) -> Result<&'a GatewayConfig, SyncError> {
    let gw = cfg
        .gateways
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = cfg.gateways.iter().map(|g| g.name.as_str()).collect();
            SyncError::Gateway(format!(
                "no gateway named {name:?} in {}; configured: {names:?}",
                cfg.file_label()
            ))
        })?;
    if gw.kind != "nhn-cloud" {
        return Err(SyncError::Gateway(format!(
            "gateway {name:?} is kind {}: only nhn-cloud has {what}; {}",
            gw.kind,
            if gw.kind == "kannel" {
                "Kannel's reports arrive by push on `munja serve` (its dlr_url)"
            } else {
                "its reports arrive by push on `munja serve` (/v1/dlr/NAME)"
            }
        )));
    }
    Ok(gw)
}

/// Korea time as NHN's search wants it.
fn nhn_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono_tz::Asia::Seoul)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Reads NHN's results of campaign `id`'s messages (by their refs, NHN's
/// `recipientGroupingKey`) since the campaign was created and records the final ones.
#[tracing::instrument(skip_all, fields(campaign = id))]
pub async fn sync_results(
    store: &dyn Store,
    cfg: &Config,
    id: i64,
    gateway: Option<&str>,
) -> Result<SyncReport, SyncError> {
    let c = store.campaign(id).await?;
    let name = gateway.unwrap_or(&c.gateway);
    let gw = nhn_gateway(cfg, name, "a result search")?;
    let reader = NhnReader::new(gw)?;
    let prefix = format!("{}-", c.uid);
    let mut report = SyncReport {
        campaign: id,
        gateway: gw.name.clone(),
        ..Default::default()
    };
    let created = DateTime::parse_from_rfc3339(&c.created_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now() - Duration::days(WINDOW_DAYS));
    let end = Utc::now() + Duration::minutes(10);
    let mut from = created - Duration::minutes(10);
    while from < end {
        let to = (from + Duration::days(WINDOW_DAYS)).min(end);
        for kind in ["sms", "mms"] {
            sync_window(store, &reader, gw, &prefix, kind, (from, to), &mut report).await?;
        }
        from = to;
    }
    Ok(report)
}

async fn sync_window(
    store: &dyn Store,
    reader: &NhnReader,
    gw: &GatewayConfig,
    prefix: &str,
    kind: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let (start, end) = (nhn_time(from), nhn_time(to));
    for page in 1.. {
        let p = reader.results(kind, &start, &end, page).await?;
        let n = p.rows.len();
        for row in p.rows {
            let Some(msg_ref) = row.recipient_grouping_key.filter(|k| k.starts_with(prefix)) else {
                continue;
            };
            report.listed += 1;
            let status = nhn_status(
                nhn_msg_status_name(&row.msg_status),
                row.result_code.as_deref(),
            );
            if status == ReportStatus::Intermediate {
                report.not_final += 1;
                continue;
            }
            let r = DeliveryReport {
                gateway: gw.name.clone(),
                msg_ref,
                status,
                code: row.result_code.clone(),
                at: row
                    .result_date
                    .as_deref()
                    .and_then(kst)
                    .unwrap_or_else(Utc::now),
            };
            let effect = super::record(store, &r).await?;
            *super::routes::slot(&mut report.effects, effect) += 1;
            if super::optouts::from_nhn_report(store, Some(report.campaign), &r, effect).await? {
                report.opted_out += 1;
            }
        }
        if n == 0 || u64::from(page) * u64::from(PAGE_SIZE) >= p.total {
            break;
        }
    }
    Ok(())
}

/// Pulls the gateway's 080 opt-out list into munja's, in one import (all or nothing).
pub async fn optout_sync(
    store: &dyn Store,
    cfg: &Config,
    gateway: &str,
) -> Result<OptoutSyncReport, SyncError> {
    let gw = nhn_gateway(cfg, gateway, "an 080 opt-out list")?;
    let reader = NhnReader::new(gw)?;
    let mut report = OptoutSyncReport {
        gateway: gw.name.clone(),
        ..Default::default()
    };
    let mut import = store
        .begin_optout_import(&format!("nhn-080:{}", gw.name))
        .await?;
    for page in 1.. {
        let p = reader.blocked(page).await?;
        let n = p.rows.len();
        let mut phones: Vec<Phone> = Vec::with_capacity(n);
        for row in p.rows {
            report.listed += 1;
            match phone::normalize_mobile(&row.recipient_no) {
                Ok(ph) => phones.push(ph),
                Err(_) => {
                    tracing::warn!(gateway = %gw.name, phone = %phone::mask(&row.recipient_no), "080 opt-out list: not a Korean mobile number, skipped");
                    report.rejected += 1;
                }
            }
        }
        let counts = import.add_optouts(&phones).await?;
        report.added += counts.inserted;
        report.already_present += counts.already_present;
        if n == 0 || u64::from(page) * u64::from(PAGE_SIZE) >= p.total {
            break;
        }
    }
    import.commit().await?;
    Ok(report)
}
