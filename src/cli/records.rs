//! `munja optout …`, `munja audit` and `munja purge`: the opt-out list, the audit trail of a
//! campaign, and purging the records of old finished campaigns.

use std::io::Write;

use anyhow::Context;

use super::{AuditArgs, OptoutCmd, print_import, print_rejected};
use crate::config::Config;
use crate::domain::phone;
use crate::input::import;
use crate::run::audit::{self, Format};
use crate::run::delivery;
use crate::store::{AuditFilter, Store};

/// `munja optout import | add | remove | check`: the opt-out list (수신거부).
pub(super) async fn optout(
    cmd: OptoutCmd,
    store: &dyn Store,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let parse = |p: &str| {
        phone::normalize_mobile(p).map_err(|e| anyhow::anyhow!("{}: {e}", phone::mask(p)))
    };
    match cmd {
        OptoutCmd::Import { file } => {
            let r = import::optouts(store, &file, &mut print_rejected(&file)).await?;
            print_import(&r, "already present");
        }
        OptoutCmd::Add { phone } => {
            let p = parse(&phone)?;
            let new = store.optout_add(&p, "cli").await?;
            writeln!(
                out,
                "{} {}",
                p.masked(),
                if new {
                    "opted out"
                } else {
                    "was already opted out"
                }
            )?;
        }
        OptoutCmd::Remove { phone } => {
            let p = parse(&phone)?;
            let gone = store.optout_remove(&p).await?;
            writeln!(
                out,
                "{} {}",
                p.masked(),
                if gone {
                    "removed from the opt-out list"
                } else {
                    "was not opted out"
                }
            )?;
        }
        OptoutCmd::Check { phone } => {
            // Exit 1 means "not opted out": bad input must not look like that to a script.
            let p = match parse(&phone) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(2);
                }
            };
            let opted = store.optout_contains(&p).await?;
            writeln!(
                out,
                "{} {}",
                p.masked(),
                if opted {
                    "is opted out"
                } else {
                    "is not opted out"
                }
            )?;
            return Ok(if opted { 0 } else { 1 });
        }
        OptoutCmd::Sync { .. } => unreachable!("handled by run_command"),
    }
    Ok(0)
}

/// `munja audit`: every message of a campaign (optionally one number or one state), as a
/// masked table or a full CSV or JSON export.
pub(super) async fn audit(
    a: &AuditArgs,
    store: &dyn Store,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let phone = match &a.phone {
        Some(p) => Some(
            phone::normalize_mobile(p)
                .map_err(|e| anyhow::anyhow!("--phone {}: {e}", phone::mask(p)))?
                .as_str()
                .to_string(),
        ),
        None => None,
    };
    let (state, delivery) = match &a.status {
        Some(s) => delivery::commands::audit_status(s)?,
        None => (None, None),
    };
    store.campaign(a.campaign).await?;
    let filter = AuditFilter {
        campaign: a.campaign,
        phone,
        state,
        delivery,
        ..Default::default()
    };
    let n = audit::write(store, filter, a.format, out).await?;
    if a.format == Format::Table {
        eprintln!("{n} messages");
    }
    Ok(())
}

/// `munja purge`: deletes the attempts and executions of campaigns finished before `before`.
pub(super) async fn purge(
    before: &str,
    batch: i64,
    json: bool,
    cfg: &Config,
    store: &dyn Store,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let t = parse_date(before, cfg)?;
    anyhow::ensure!(batch > 0, "--batch must be at least 1");
    let r = store.purge(t, batch).await?;
    eprintln!(
        "purged {} attempts, {} executions and {} delivery reports of finished campaigns \
         before {}; {:.1} MB of the {:.1} MB database are free for new campaigns (VACUUM \
         shrinks the file)",
        r.attempts_deleted,
        r.executions_deleted,
        r.reports_deleted,
        t.to_rfc3339(),
        r.free_bytes as f64 / 1e6,
        r.db_bytes as f64 / 1e6
    );
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

fn parse_date(s: &str, cfg: &Config) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").with_context(|| {
        format!("--before {s:?}: expected a date YYYY-MM-DD or an RFC 3339 time")
    })?;
    let local = d
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(cfg.policy.timezone).earliest())
        .context("--before: that midnight does not exist in policy.timezone")?;
    Ok(local.with_timezone(&chrono::Utc))
}
