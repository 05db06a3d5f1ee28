//! `munja segment list | define | show | preview`: printing for CSV and SQL segments, over
//! [`crate::input::segment_sql`].

use std::io::Write;

use anyhow::Context;
use serde_json::json;

use super::SegmentCmd;
use crate::config::Config;
use crate::input::segment_sql::{self, Definition};
use crate::store::{SqlSegment, Store};

/// `segment list`: CSV segments with their size, SQL segments with their source and version.
pub(super) async fn list(store: &dyn Store, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let csv = store.segments().await?;
    let sql = store.sql_segments().await?;
    if json {
        let mut all: Vec<serde_json::Value> = Vec::new();
        for s in &csv {
            let mut v = serde_json::to_value(s)?;
            v["kind"] = json!("csv");
            all.push(v);
        }
        for s in &sql {
            all.push(json!({
                "kind": "sql", "name": s.name, "source": s.source, "version": s.version,
                "phone_column": s.phone_column, "defined_at": s.defined_at,
                "member_count": null,
            }));
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<4} {:>10}  SOURCE",
        "NAME", "KIND", "RECIPIENTS"
    )?;
    for s in csv {
        writeln!(
            out,
            "{:<20} {:<4} {:>10}  {} (imported {}; columns: {})",
            s.name,
            "csv",
            s.member_count,
            s.source,
            s.imported_at,
            s.columns.join(", ")
        )?;
    }
    for s in sql {
        writeln!(
            out,
            "{:<20} {:<4} {:>10}  source {} (version {}, defined {}; read at each campaign's first run)",
            s.name, "sql", "-", s.source, s.version, s.defined_at
        )?;
    }
    Ok(())
}

/// `segment define | show | preview`.
pub(super) async fn run(
    cmd: SegmentCmd,
    cfg: &Config,
    store: &dyn Store,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match cmd {
        SegmentCmd::Define {
            name,
            source,
            query_file,
            query,
            phone_column,
        } => {
            let query = match (query_file, query) {
                (Some(f), _) => std::fs::read_to_string(&f).with_context(|| {
                    format!("--query-file {}: cannot read the query file", f.display())
                })?,
                (None, Some(q)) => q,
                (None, None) => anyhow::bail!(
                    "give the query with --query-file FILE.sql or --query \"SELECT …\""
                ),
            };
            let def = Definition {
                name,
                source,
                query,
                phone_column,
            };
            let seg = segment_sql::define(store, cfg, &def).await?;
            eprintln!(
                "segment {} (SQL on source {}) defined as version {}; `munja segment preview {}` runs it now",
                seg.name, seg.source, seg.version, seg.name
            );
        }
        SegmentCmd::Show {
            name,
            all_versions,
            json,
        } => show(store, &name, all_versions, json, out).await?,
        SegmentCmd::Preview { name, limit, json } => {
            let seg = sql_segment(store, &name).await?;
            let (rows, report) = segment_sql::preview(cfg, &seg, limit).await?;
            if json {
                let v = json!({"segment": seg.name, "version": seg.version, "rows": rows, "report": report});
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                for r in &rows {
                    writeln!(
                        out,
                        "row {:<6} {:<14} {:<22} night_consent={} {}",
                        r.row, r.phone, r.status, r.night_consent, r.vars
                    )?;
                }
                writeln!(out, "{}", report.summary())?;
                writeln!(out, "variables: {}", report.variables.join(", "))?;
            }
        }
        SegmentCmd::Import { .. } | SegmentCmd::List { .. } | SegmentCmd::Delete { .. } => {
            unreachable!("handled by the caller")
        }
    }
    Ok(0)
}

async fn show(
    store: &dyn Store,
    name: &str,
    all_versions: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut versions = store.sql_segment_versions(name).await?;
    if versions.is_empty() {
        sql_segment(store, name).await?;
    }
    if !all_versions {
        versions.drain(..versions.len() - 1);
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&versions)?)?;
        return Ok(());
    }
    for v in versions {
        writeln!(
            out,
            "-- segment {} version {} on source {} (phone column {}), defined {}",
            v.name, v.version, v.source, v.phone_column, v.defined_at
        )?;
        writeln!(out, "{}", v.query.trim_end())?;
    }
    Ok(())
}

/// The latest version of SQL segment `name`, or an error that says what `name` is.
async fn sql_segment(store: &dyn Store, name: &str) -> anyhow::Result<SqlSegment> {
    if let Some(s) = segment_sql::latest(store, name).await? {
        return Ok(s);
    }
    if store.segment(name).await?.is_some() {
        anyhow::bail!(
            "segment {name:?} is a CSV segment: it has no query; `munja template preview \
             TEMPLATE --segment {name}` shows its messages"
        );
    }
    anyhow::bail!(
        "no SQL segment named {name:?}; define one with `munja segment define {name} --source \
         SRC --query-file FILE.sql` (`munja segment list` shows the existing ones)"
    )
}
