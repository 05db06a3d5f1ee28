//! Importing user files: opt-out lists and recipient segments, streamed from CSV into the store.
//!
//! Each row's number is normalised ([`crate::phone`]); a row that cannot be used is reported
//! with its line number and reason and skipped. The whole file goes into one transaction: a
//! fatal problem (unreadable file, undecodable bytes) leaves the database as it was.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::compliance::parse_consent;
use crate::csvin::{CsvSource, RowResult, TextEncoding};
use crate::phone::{self, Phone};
use crate::store::{NewMember, Store};

/// Rows sent to the store per batch.
const BATCH: usize = 2000;

/// The column that carries the night-consent flag of a segment.
pub const NIGHT_CONSENT_COLUMN: &str = "night_consent";

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub imported: u64,
    /// Opt-outs: already in the list. Segments: duplicate numbers merged into their first row.
    pub already_present: u64,
    pub rejected: u64,
    pub encoding: String,
}

impl ImportReport {
    /// Counts a rejected row and hands it to the caller's sink (printed as it comes, so a
    /// file with many bad rows is reported in full without holding them in memory).
    fn reject(&mut self, sink: &mut dyn FnMut(&Rejected), line: u64, reason: &str, detail: String) {
        self.rejected += 1;
        sink(&Rejected {
            line,
            reason: reason.to_string(),
            detail,
        });
    }
}

fn encoding_name(e: TextEncoding) -> String {
    e.to_string()
}

/// Imports an opt-out list (a CSV with a `phone` column); idempotent.
///
/// Only the phone column is used, so a row whose field count differs from the header (a stray
/// comma in a memo column, a missing trailing column) is still imported when its phone field is
/// present: losing an opt-out over a column we ignore would be the worse error.
/// `on_reject` receives each rejected row with its line number and reason.
pub async fn optouts(
    store: &dyn Store,
    path: &Path,
    on_reject: &mut dyn FnMut(&Rejected),
) -> anyhow::Result<ImportReport> {
    let src = CsvSource::open(path)?.lenient_fields();
    let mut report = ImportReport::default();
    let mut import = store
        .begin_optout_import(&path.display().to_string())
        .await?;
    let mut batch: Vec<Phone> = Vec::with_capacity(BATCH);
    let mut rows = src.rows();
    for row in rows.by_ref() {
        match row? {
            RowResult::Rejected {
                line,
                reason,
                detail,
            } => report.reject(on_reject, line, &reason, detail),
            RowResult::Ok(row) => match phone::normalize_mobile(&row.phone) {
                Ok(p) => batch.push(p),
                Err(e) => report.reject(
                    on_reject,
                    row.line,
                    e.code(),
                    format!("{}: {e}", phone::mask(&row.phone)),
                ),
            },
        }
        if batch.len() >= BATCH {
            let c = import.add_optouts(&batch).await?;
            report.imported += c.inserted;
            report.already_present += c.already_present;
            batch.clear();
        }
    }
    let c = import.add_optouts(&batch).await?;
    report.imported += c.inserted;
    report.already_present += c.already_present;
    report.encoding = encoding_name(rows.encoding());
    import
        .commit()
        .await
        .context("committing the opt-out import")?;
    Ok(report)
}

/// Imports (or atomically replaces) segment `name` from a CSV with a `phone` column.
/// `on_reject` receives each rejected row with its line number and reason.
pub async fn segment(
    store: &dyn Store,
    name: &str,
    path: &Path,
    on_reject: &mut dyn FnMut(&Rejected),
) -> anyhow::Result<ImportReport> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_'),
        "segment name {name:?} is not valid: use letters, digits, '-' and '_'"
    );
    let src = CsvSource::open(path)?;
    let mut report = ImportReport::default();
    let phone_col = src.phone_column().to_string();
    let columns: Vec<String> = src
        .columns()
        .iter()
        .filter(|c| **c != phone_col && !c.eq_ignore_ascii_case(NIGHT_CONSENT_COLUMN))
        .cloned()
        .collect();
    let mut import = store
        .begin_segment_import(name, &path.display().to_string(), &columns)
        .await?;
    let mut batch: Vec<NewMember> = Vec::with_capacity(BATCH);
    let mut rows = src.rows();
    for row in rows.by_ref() {
        let row = match row? {
            RowResult::Rejected {
                line,
                reason,
                detail,
            } => {
                report.reject(on_reject, line, &reason, detail);
                continue;
            }
            RowResult::Ok(row) => row,
        };
        let phone = match phone::normalize_mobile(&row.phone) {
            Ok(p) => p,
            Err(e) => {
                report.reject(
                    on_reject,
                    row.line,
                    e.code(),
                    format!("{}: {e}", phone::mask(&row.phone)),
                );
                continue;
            }
        };
        let mut vars = Map::new();
        let mut night_consent = false;
        let mut bad_consent = None;
        for (k, v) in row.fields {
            if k.eq_ignore_ascii_case(NIGHT_CONSENT_COLUMN) {
                match parse_consent(&v) {
                    Ok(b) => night_consent = b,
                    Err(e) => bad_consent = Some(e),
                }
            } else {
                vars.insert(k, Value::String(v));
            }
        }
        if let Some(e) = bad_consent {
            report.reject(on_reject, row.line, "invalid_night_consent", e);
            continue;
        }
        batch.push(NewMember {
            phone,
            vars: Value::Object(vars).to_string(),
            night_consent,
        });
        if batch.len() >= BATCH {
            let c = import.add_members(&batch).await?;
            report.imported += c.inserted;
            report.already_present += c.already_present;
            batch.clear();
        }
    }
    let c = import.add_members(&batch).await?;
    report.imported += c.inserted;
    report.already_present += c.already_present;
    report.encoding = encoding_name(rows.encoding());
    import
        .commit()
        .await
        .context("committing the segment import")?;
    Ok(report)
}
