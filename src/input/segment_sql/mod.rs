//! SQL segments: a segment that is a query on the company's own database, read when a campaign
//! snapshots it (its first run) rather than exported by hand.
//!
//! This module owns the flow: defining a segment (versioned: a redefinition keeps the earlier
//! texts, and each campaign records the version it used), previewing it, checking a campaign
//! over it (`campaign create`), and the streamed snapshot. The query runs through
//! [`crate::store::source`] (read-only, timed, `:as_of` bound); each row goes through
//! [`rows::convert`], which applies the CSV import's row rules plus the ad-consent age.

pub mod rows;

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tracing::{Instrument, info, info_span, warn};

use crate::config::Config;
use crate::domain::consent;
use crate::domain::model::{Campaign, NewMember, WorkerToken};
use crate::input::import::{Rejected, check_segment_name};
use crate::store::source::SourceRow;
use crate::store::{NewSqlSegment, SnapshotRow, SqlSegment, Store};
pub use rows::{AD_CONSENT_COLUMN, CONSENT_EXPIRED, CONSENT_MISSING, Layout, Rules};

/// Rows handed to the store per batch during a snapshot.
const BATCH: usize = 2000;
/// Rejected rows named one by one in the log of a snapshot; the rest are counted.
const NAMED_REJECTIONS: u64 = 20;
/// The default phone column.
pub const PHONE_COLUMN: &str = "phone";

/// What `segment define` asks for.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    pub source: String,
    pub query: String,
    pub phone_column: Option<String>,
}

/// Stores the next version of SQL segment `def.name` after checking its name, source and text.
pub async fn define(
    store: &dyn Store,
    cfg: &Config,
    def: &Definition,
) -> anyhow::Result<SqlSegment> {
    check_segment_name(&def.name)?;
    anyhow::ensure!(
        store.segment(&def.name).await?.is_none(),
        "segment {:?} is a CSV segment (imported with `munja segment import`); an SQL segment \
         cannot replace it: choose another name",
        def.name
    );
    anyhow::ensure!(
        cfg.sources.contains_key(&def.source),
        "{}: no [sources.{}] in the config; add it with url_env = \"…\" (configured sources: {})",
        cfg.file_label(),
        def.source,
        if cfg.sources.is_empty() {
            "none".to_string()
        } else {
            cfg.sources.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    );
    crate::store::source::query::prepare(&def.query, crate::store::source::Placeholder::Question)
        .with_context(|| format!("segment {:?}: the query is refused", def.name))?;
    let phone_column = def
        .phone_column
        .clone()
        .unwrap_or_else(|| PHONE_COLUMN.to_string());
    anyhow::ensure!(
        !phone_column.trim().is_empty(),
        "--phone-column must name a column of the query"
    );
    Ok(store
        .define_sql_segment(&NewSqlSegment {
            name: def.name.clone(),
            source: def.source.clone(),
            query: def.query.clone(),
            phone_column,
        })
        .await?)
}

/// The latest version of SQL segment `name`, if it is one.
pub async fn latest(store: &dyn Store, name: &str) -> anyhow::Result<Option<SqlSegment>> {
    Ok(store.sql_segment_versions(name).await?.pop())
}

/// The consent rules for an ad (`ad`) or informational campaign reading at `as_of`.
pub fn rules(cfg: &Config, seg: &SqlSegment, ad: bool, as_of: DateTime<Utc>) -> Rules {
    Rules {
        phone_column: seg.phone_column.clone(),
        timezone: cfg.policy.timezone,
        consent_cutoff: consent::cutoff(cfg.policy.ad_consent_max_age_days, ad, as_of),
    }
}

/// Counts of a whole read of the query (preview and `campaign create`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub rows: u64,
    /// Rows that became a recipient (duplicates not merged yet: the snapshot merges them).
    pub members: u64,
    /// Rejected rows by reason (`not_mobile`, `invalid_number`, …).
    pub rejected: BTreeMap<String, u64>,
    /// Recipients suppressed by the ad-consent rule, by reason.
    pub suppressed: BTreeMap<String, u64>,
    /// Template variables: every column but the phone and the consent flags.
    pub variables: Vec<String>,
}

impl ScanReport {
    fn count(&mut self, r: &Result<rows::Converted, Rejected>) {
        self.rows += 1;
        match r {
            Ok(c) => {
                self.members += 1;
                if let Some(s) = c.suppress {
                    *self.suppressed.entry(s.to_string()).or_default() += 1;
                }
            }
            Err(x) => *self.rejected.entry(x.reason.clone()).or_default() += 1,
        }
    }

    /// The lines printed after a preview or a create.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} rows: {} recipients, {} rejected",
            self.rows,
            self.members,
            self.rejected.values().sum::<u64>()
        );
        for (reason, n) in &self.rejected {
            s.push_str(&format!("\n  rejected {reason}: {n}"));
        }
        for (reason, n) in &self.suppressed {
            s.push_str(&format!(
                "\n  suppressed {reason}: {n} (ad consent, see policy.ad_consent_max_age_days)"
            ));
        }
        s
    }
}

/// What [`scan`] calls with each row: the result's layout, the row's number and what the row
/// became; returns whether to go on reading.
pub type RowVisitor<'a> =
    dyn FnMut(&Layout, u64, &Result<rows::Converted, Rejected>) -> bool + Send + 'a;

/// Reads the whole query once at `as_of`, calling `each` with every converted row (in order,
/// `seq` from 1) until it returns `false`; returns the counts. Memory stays flat.
pub async fn scan(
    cfg: &Config,
    seg: &SqlSegment,
    ad: bool,
    as_of: DateTime<Utc>,
    each: &mut RowVisitor<'_>,
) -> anyhow::Result<ScanReport> {
    let spec = cfg.source(&seg.source)?;
    let mut conv = Converter::new(rules(cfg, seg, ad, as_of));
    let mut reader = spec.open(&seg.query, as_of).await?;
    let result = async {
        let mut stream = reader.rows();
        while let Some(row) = stream.next().await {
            let (seq, converted) = conv.next(&row?)?;
            if !each(conv.layout()?, seq, &converted) {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    reader.close().await;
    result.with_context(|| format!("reading segment {:?}", seg.name))?;
    Ok(conv.finish())
}

/// Numbers the rows of a result and applies the rules to each, counting the outcomes.
struct Converter {
    rules: Rules,
    layout: Option<Layout>,
    report: ScanReport,
}

impl Converter {
    fn new(rules: Rules) -> Converter {
        Converter {
            rules,
            layout: None,
            report: ScanReport::default(),
        }
    }

    /// The next row's number and what it became (the layout is read from the first row).
    fn next(
        &mut self,
        row: &SourceRow,
    ) -> anyhow::Result<(u64, Result<rows::Converted, Rejected>)> {
        let layout = match &mut self.layout {
            Some(l) => &*l,
            None => self.layout.insert(Layout::new(&row.columns, &self.rules)?),
        };
        let seq = self.report.rows + 1;
        let converted = rows::convert(row, seq, layout, &self.rules);
        self.report.count(&converted);
        Ok((seq, converted))
    }

    fn layout(&self) -> anyhow::Result<&Layout> {
        self.layout
            .as_ref()
            .context("no row read yet: this is a bug in munja")
    }

    /// The counts, with the result's template variables.
    fn finish(mut self) -> ScanReport {
        self.report.variables = self.layout.map(|l| l.variables).unwrap_or_default();
        self.report
    }
}

/// One previewed row.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewRow {
    pub row: u64,
    /// Masked.
    pub phone: String,
    /// `recipient`, a suppression reason or `rejected: reason`.
    pub status: String,
    pub night_consent: bool,
    /// The template variables (or the rejection's detail, masked).
    pub vars: serde_json::Value,
}

/// The first `limit` rows of the segment and the counts of the whole result (as for an ad).
pub async fn preview(
    cfg: &Config,
    seg: &SqlSegment,
    limit: usize,
) -> anyhow::Result<(Vec<PreviewRow>, ScanReport)> {
    let mut rows = Vec::new();
    let report = scan(cfg, seg, true, Utc::now(), &mut |_, seq, r| {
        if rows.len() < limit {
            rows.push(match r {
                Ok(c) => PreviewRow {
                    row: seq,
                    phone: c.member.phone.masked(),
                    status: c.suppress.unwrap_or("recipient").to_string(),
                    night_consent: c.member.night_consent,
                    vars: serde_json::from_str(&c.member.vars).unwrap_or_default(),
                },
                Err(x) => PreviewRow {
                    row: seq,
                    phone: String::new(),
                    status: format!("rejected: {}", x.reason),
                    night_consent: false,
                    vars: serde_json::Value::String(x.detail.clone()),
                },
            });
        }
        true
    })
    .await?;
    Ok((rows, report))
}

/// The first `limit` recipients (rejected rows skipped) and the variable names, for
/// `template preview`.
pub async fn first_members(
    cfg: &Config,
    seg: &SqlSegment,
    limit: usize,
    ad: bool,
) -> anyhow::Result<(Vec<NewMember>, Vec<String>)> {
    let mut members = Vec::new();
    let report = scan(cfg, seg, ad, Utc::now(), &mut |_, _, r| {
        if let Ok(c) = r {
            members.push(c.member.clone());
        }
        members.len() < limit
    })
    .await?;
    Ok((members, report.variables))
}

/// The `:as_of` of campaign `c`'s query: its scheduled time (a recurring schedule's occurrence
/// selects "customers who signed up before this run"), else `now`.
pub fn as_of_for(c: &Campaign, now: DateTime<Utc>) -> DateTime<Utc> {
    c.scheduled_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(now, |t| t.with_timezone(&Utc))
}

/// Snapshots campaign `c`'s SQL segment into its messages, if it has one and was not
/// snapshotted yet: the query runs now with `:as_of` = the campaign's scheduled time (or now),
/// rows stream into one transaction of munja's database, which commits only when every row is
/// in.
pub async fn snapshot_for_run(
    store: &dyn Store,
    cfg: &Config,
    c: &Campaign,
    worker: &WorkerToken,
) -> anyhow::Result<()> {
    if c.snapshot_at.is_some() {
        return Ok(());
    }
    let Some(link) = store.campaign_sql_segment(c.id).await? else {
        return Ok(());
    };
    let seg = link.segment;
    let span =
        info_span!("sql_snapshot", campaign = c.id, segment = %seg.name, version = seg.version);
    snapshot(store, cfg, c, worker, &seg)
        .instrument(span)
        .await
        .with_context(|| {
            format!(
                "snapshotting SQL segment {:?} (version {}) from source {:?}; nothing was \
                 stored, the next run reads it again",
                seg.name, seg.version, seg.source
            )
        })
}

async fn snapshot(
    store: &dyn Store,
    cfg: &Config,
    c: &Campaign,
    worker: &WorkerToken,
    seg: &SqlSegment,
) -> anyhow::Result<()> {
    let as_of = as_of_for(c, Utc::now());
    let spec = cfg.source(&seg.source)?;
    let mut conv = Converter::new(rules(cfg, seg, c.ad, as_of));
    // Connect to the source before taking munja's write transaction.
    let mut reader = spec.open(&seg.query, as_of).await?;
    let Some(mut snap) = store.begin_message_snapshot(worker).await? else {
        reader.close().await;
        return Ok(());
    };
    let mut merged = 0u64;
    let result = async {
        let mut batch: Vec<SnapshotRow> = Vec::with_capacity(BATCH);
        let mut stream = reader.rows();
        while let Some(row) = stream.next().await {
            let (seq, converted) = conv.next(&row?)?;
            match converted {
                Ok(m) => batch.push(SnapshotRow {
                    seq: seq as i64,
                    member: m.member,
                    suppress: m.suppress.map(str::to_string),
                }),
                Err(x) => log_rejected(&conv.report, &x),
            }
            if batch.len() >= BATCH {
                merged += snap.add(&batch).await?.already_present;
                batch.clear();
            }
        }
        merged += snap.add(&batch).await?.already_present;
        anyhow::Ok(())
    }
    .await;
    reader.close().await;
    result?;
    let report = conv.finish();
    let totals = snap.commit(as_of, report.rows).await?;
    info!(
        rows = report.rows,
        messages = totals.messages,
        suppressed = totals.suppressed,
        merged,
        "SQL segment snapshotted"
    );
    eprintln!(
        "segment {} (SQL, version {}) read at {}: {}; {} duplicate numbers merged; {} messages, \
         {} suppressed",
        seg.name,
        seg.version,
        as_of.to_rfc3339(),
        report.summary(),
        merged,
        totals.messages,
        totals.suppressed
    );
    Ok(())
}

/// Names the first rejected rows (masked), then only counts.
fn log_rejected(report: &ScanReport, x: &Rejected) {
    let n: u64 = report.rejected.values().sum();
    if n <= NAMED_REJECTIONS {
        warn!(row = x.line, reason = %x.reason, detail = %x.detail, "segment row rejected");
    }
    if n == NAMED_REJECTIONS + 1 {
        warn!("more rows rejected: counted in the snapshot's summary");
    }
}
