//! The audit trail as the operator reads it: one row per message, as a table, CSV or JSON.
//!
//! Tables mask phone numbers (010-****-5678); CSV and JSON are explicit exports and carry them
//! in full. Rows are streamed page by page, so a million-message campaign exports in bounded memory.

use std::io::Write;

use anyhow::Context;

use crate::phone;
use crate::store::{AuditFilter, AuditRow, Store};

/// Output formats of `munja audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

const PAGE: i64 = 5000;

/// Writes every message matching `filter` to `out`; returns the number of rows.
pub async fn write(
    store: &dyn Store,
    filter: AuditFilter,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    write_limited(store, filter, format, out, usize::MAX).await
}

/// Like [`write`], stopping after `max_rows` rows.
pub async fn write_limited(
    store: &dyn Store,
    mut filter: AuditFilter,
    format: Format,
    out: &mut dyn Write,
    max_rows: usize,
) -> anyhow::Result<u64> {
    filter.limit = PAGE.min(max_rows as i64);
    let mut n = 0u64;
    match format {
        Format::Table => writeln!(
            out,
            "{:<22} {:<15} {:<10} {:>3} {:<20} {:<24} {:<24} {:<4} {:>5}",
            "REF",
            "PHONE",
            "STATUS",
            "TRY",
            "GATEWAY_ID",
            "ERROR",
            "LAST_ATTEMPT_AT",
            "TYPE",
            "BYTES"
        )?,
        Format::Json => write!(out, "[")?,
        Format::Csv => writeln!(
            out,
            "ref,phone,status,attempts,gateway_id,error,last_attempt_at,type,bytes"
        )?,
    }
    loop {
        let rows = store.audit(&filter).await?;
        if n as usize >= max_rows {
            break;
        }
        let Some(last) = rows.last() else { break };
        filter.after_id = last.id;
        let mut csv = (format == Format::Csv).then(|| {
            csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(Vec::new())
        });
        for r in &rows {
            match format {
                Format::Table => table_row(out, r)?,
                Format::Json => {
                    if n > 0 {
                        write!(out, ",")?;
                    }
                    write!(out, "\n{}", serde_json::to_string(r)?)?;
                }
                Format::Csv => {
                    if let Some(w) = csv.as_mut() {
                        w.serialize(r)?;
                    }
                }
            }
            n += 1;
            if n as usize >= max_rows {
                break;
            }
        }
        if let Some(w) = csv {
            out.write_all(&w.into_inner().context("writing CSV")?)?;
        }
    }
    if format == Format::Json {
        writeln!(out, "\n]")?;
    }
    out.flush().context("writing the audit")?;
    Ok(n)
}

fn table_row(out: &mut dyn Write, r: &AuditRow) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<22} {:<15} {:<10} {:>3} {:<20} {:<24} {:<24} {:<4} {:>5}",
        r.msg_ref,
        masked(&r.phone),
        r.status,
        r.attempts,
        r.gateway_id.as_deref().unwrap_or("-"),
        r.error.as_deref().unwrap_or("-"),
        r.last_attempt_at.as_deref().unwrap_or("-"),
        r.kind.as_deref().unwrap_or("-"),
        r.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
    )
}

/// The table form of a stored number: `010-****-5678`.
pub fn masked(stored: &str) -> String {
    phone::normalize_mobile(stored)
        .map(|p| p.masked())
        .unwrap_or_else(|_| phone::mask(stored))
}
