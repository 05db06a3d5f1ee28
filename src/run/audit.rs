//! The audit trail as the operator reads it: one row per message, as a table, CSV or JSON.
//!
//! Tables mask phone numbers (010-****-5678); CSV and JSON are explicit exports and carry them
//! in full. Rows are streamed: the store is asked for one page of at most [`PAGE`] rows at a
//! time (keyset pagination, each page an index walk), and each page is written out before the
//! next is asked for, so a ten-million-message export runs in the memory of one page.

use std::future::Future;
use std::io::Write;

use anyhow::Context;

use crate::domain::model::AuditRow;
use crate::domain::phone;
use crate::store::{AuditFilter, Store};

/// Output formats of `munja audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Rows asked of the store at once.
pub const PAGE: i64 = 5000;

/// Bytes gathered before a write to `out` (stdout is line-buffered: a write per row is slow).
const OUT_BUFFER: usize = 64 * 1024;

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
    filter: AuditFilter,
    format: Format,
    out: &mut dyn Write,
    max_rows: usize,
) -> anyhow::Result<u64> {
    write_pages(
        |f| async move { store.audit(&f).await.context("reading the audit log") },
        filter,
        format,
        out,
        u64::try_from(max_rows).unwrap_or(u64::MAX),
    )
    .await
}

/// The export loop, over any source of pages: asks `page` for the rows after the last one it
/// wrote, writes them, and only then asks for the next page.
pub async fn write_pages<F, Fut>(
    mut page: F,
    mut filter: AuditFilter,
    format: Format,
    out: &mut dyn Write,
    max_rows: u64,
) -> anyhow::Result<u64>
where
    F: FnMut(AuditFilter) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<AuditRow>>>,
{
    let mut out = std::io::BufWriter::with_capacity(OUT_BUFFER, out);
    let mut line = Vec::new();
    header(&mut out, format)?;
    let mut n = 0u64;
    while n < max_rows {
        // Never more than a page, however many rows are asked for.
        filter.limit = i64::try_from(max_rows - n).unwrap_or(i64::MAX).min(PAGE);
        let rows = page(filter.clone()).await?;
        let Some(last) = rows.last() else { break };
        filter.after_id = last.id;
        filter.after_seq = last.seq;
        for r in rows
            .iter()
            .take(usize::try_from(max_rows - n).unwrap_or(usize::MAX))
        {
            match format {
                Format::Table => table_row(&mut out, r)?,
                Format::Json => {
                    if n > 0 {
                        write!(out, ",")?;
                    }
                    write!(out, "\n{}", serde_json::to_string(r)?)?;
                }
                Format::Csv => {
                    // One row's CSV into a reused line buffer, then into `out`.
                    let mut w = csv::WriterBuilder::new()
                        .has_headers(false)
                        .buffer_capacity(512)
                        .from_writer(std::mem::take(&mut line));
                    w.serialize(r)?;
                    line = w.into_inner().context("writing CSV")?;
                    out.write_all(&line)?;
                    line.clear();
                }
            }
            n += 1;
        }
        if (rows.len() as i64) < filter.limit {
            break;
        }
    }
    if format == Format::Json {
        writeln!(out, "\n]")?;
    }
    out.flush().context("writing the audit")?;
    Ok(n)
}

fn header(out: &mut dyn Write, format: Format) -> std::io::Result<()> {
    match format {
        Format::Table => writeln!(
            out,
            "{:<22} {:<15} {:<10} {:>3} {:<10} {:<20} {:<24} {:<24} {:<4} {:>5} {:<11} {:<12} {:<24}",
            "REF",
            "PHONE",
            "STATUS",
            "TRY",
            "GATEWAY",
            "GATEWAY_ID",
            "ERROR",
            "LAST_ATTEMPT_AT",
            "TYPE",
            "BYTES",
            "DELIVERY",
            "DLR_CODE",
            "DELIVERED_AT"
        ),
        Format::Json => write!(out, "["),
        Format::Csv => writeln!(
            out,
            "ref,phone,status,attempts,gateway,gateway_id,error,last_attempt_at,type,bytes,\
             delivery,delivery_code,delivered_at"
        ),
    }
}

fn table_row(out: &mut dyn Write, r: &AuditRow) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<22} {:<15} {:<10} {:>3} {:<10} {:<20} {:<24} {:<24} {:<4} {:>5} {:<11} {:<12} {:<24}",
        r.msg_ref,
        masked(&r.phone),
        r.status,
        r.attempts,
        r.gateway.as_deref().unwrap_or("-"),
        r.gateway_id.as_deref().unwrap_or("-"),
        r.error.as_deref().unwrap_or("-"),
        r.last_attempt_at.as_deref().unwrap_or("-"),
        r.kind.as_deref().unwrap_or("-"),
        r.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
        r.delivery.as_deref().unwrap_or("-"),
        r.delivery_code.as_deref().unwrap_or("-"),
        r.delivered_at.as_deref().unwrap_or("-"),
    )
}

/// The table form of a stored number: `010-****-5678`.
pub fn masked(stored: &str) -> String {
    phone::normalize_mobile(stored)
        .map(|p| p.masked())
        .unwrap_or_else(|_| phone::mask(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that notes how many pages the store had been asked for when bytes arrived.
    struct Recorder {
        pages: std::rc::Rc<std::cell::Cell<u64>>,
        first_write_after_pages: Option<u64>,
        bytes: u64,
        lines: u64,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !buf.is_empty() && self.first_write_after_pages.is_none() {
                self.first_write_after_pages = Some(self.pages.get());
            }
            self.bytes += buf.len() as u64;
            self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn row(seq: i64) -> AuditRow {
        AuditRow {
            id: 1_000_000 + seq,
            seq,
            msg_ref: format!("0123456789ab-{seq}"),
            phone: format!("010{:08}", seq),
            status: "sent".into(),
            attempts: 1,
            gateway: Some("sim".into()),
            gateway_id: Some(format!("g{seq:016x}")),
            error: None,
            last_attempt_at: Some("2026-11-27T07:48:56.219Z".into()),
            kind: Some("LMS".into()),
            bytes: Some(93),
            delivery: None,
            delivery_code: None,
            delivered_at: None,
        }
    }

    /// Drives an export of `total` synthetic rows; returns the recorder and every page asked.
    async fn export(total: i64, format: Format, max_rows: u64) -> (Recorder, Vec<AuditFilter>) {
        let pages = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let mut rec = Recorder {
            pages: pages.clone(),
            first_write_after_pages: None,
            bytes: 0,
            lines: 0,
        };
        let mut asked = Vec::new();
        let n = write_pages(
            |f: AuditFilter| {
                asked.push(f.clone());
                pages.set(pages.get() + 1);
                async move {
                    anyhow::ensure!(f.limit > 0, "a page of limit {} asked", f.limit);
                    let from = f.after_seq + 1;
                    let to = (f.after_seq + f.limit).min(total);
                    Ok((from..=to).map(row).collect())
                }
            },
            AuditFilter {
                campaign: 1,
                ..Default::default()
            },
            format,
            &mut rec,
            max_rows,
        )
        .await
        .expect("export");
        assert_eq!(n, (total as u64).min(max_rows));
        (rec, asked)
    }

    #[tokio::test]
    async fn an_export_asks_for_bounded_pages_and_writes_each_before_asking_the_next() {
        for format in [Format::Csv, Format::Json, Format::Table] {
            let (rec, asked) = export(200_000, format, u64::MAX).await;
            // Every page is bounded: an unbounded page is the whole campaign in memory.
            assert!(
                asked.iter().all(|f| f.limit >= 1 && f.limit <= PAGE),
                "{format:?}: limits asked {:?}",
                asked.iter().map(|f| f.limit).collect::<Vec<_>>()
            );
            assert_eq!(asked.len() as i64, 200_000 / PAGE + 1, "{format:?}");
            // Rows reach the writer long before the last page is read: nothing is collected.
            let first = rec.first_write_after_pages.expect("bytes written");
            assert!(
                first == 1,
                "{format:?}: first bytes written after {first} of {} pages",
                asked.len()
            );
            // Keyset: each page starts after the last row of the one before.
            for (i, f) in asked.iter().enumerate() {
                assert_eq!(f.after_seq, i as i64 * PAGE, "{format:?} page {i}");
                assert_eq!(
                    f.after_id,
                    if i == 0 {
                        0
                    } else {
                        1_000_000 + i as i64 * PAGE
                    }
                );
            }
        }
    }

    #[tokio::test]
    async fn an_export_writes_every_row_once_and_stops_at_max_rows() {
        let (rec, _) = export(12_345, Format::Csv, u64::MAX).await;
        assert_eq!(rec.lines, 12_345 + 1, "header and one line per row");
        let (rec, asked) = export(12_345, Format::Table, 7).await;
        assert_eq!(rec.lines, 7 + 1);
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].limit, 7);
        let (rec, _) = export(3, Format::Json, u64::MAX).await;
        assert!(rec.bytes > 0);
    }
}
