//! The command-line side of delivery reports, called by `cli`:
//! `munja campaign sync-results ID` and `munja optout sync --gateway NAME`, and the audit's
//! `--status` words. Printing only; the work is in [`super::sync`] and [`super::serve`].

use std::io::Write;

use anyhow::Context;

use crate::config::Config;
use crate::domain::model::{DeliveryState, MessageState};
use crate::store::Store;

/// `munja campaign sync-results ID [--gateway NAME] [--json]`.
pub async fn sync_results(
    store: &dyn Store,
    cfg: &Config,
    id: i64,
    gateway: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let r = super::sync::sync_results(store, cfg, id, gateway)
        .await
        .with_context(|| format!("syncing delivery results of campaign {id}"))?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        writeln!(
            out,
            "campaign {id} via {}: {} results listed, {} newly recorded, {} already recorded, \
             {} contradicting a recorded result (kept the first), {} not final yet, {} unknown refs, \
             {} numbers newly opted out",
            r.gateway,
            r.listed,
            r.effects.applied,
            r.effects.duplicate,
            r.effects.ignored,
            r.not_final,
            r.effects.unknown,
            r.opted_out
        )?;
    }
    Ok(0)
}

/// `munja optout sync --gateway NAME [--json]`.
pub async fn optout_sync(
    store: &dyn Store,
    cfg: &Config,
    gateway: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let r = super::sync::optout_sync(store, cfg, gateway)
        .await
        .with_context(|| format!("syncing the 080 opt-out list of gateway {gateway:?}"))?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        writeln!(
            out,
            "{}: {} numbers listed, {} added, {} already present, {} rejected (not mobile)",
            r.gateway, r.listed, r.added, r.already_present, r.rejected
        )?;
    }
    Ok(0)
}

/// The audit's `--status`: a send state, or a delivery state (`delivered`, `undelivered`).
pub fn audit_status(s: &str) -> anyhow::Result<(Option<MessageState>, Option<DeliveryState>)> {
    if let Some(d) = DeliveryState::parse(s) {
        return Ok((None, Some(d)));
    }
    MessageState::parse(s)
        .map(|m| (Some(m), None))
        .with_context(|| {
            format!(
                "--status {s:?}: expected pending, sending, in_doubt, sent, failed, suppressed, \
             cancelled, delivered or undelivered"
            )
        })
}
