//! Importing user files: opt-out lists and recipient segments, streamed from CSV into the store.
//!
//! Each row's number is normalised ([`crate::domain::phone`]); a row that cannot be used is reported
//! with its line number and reason and skipped. A phone field that holds more than one number
//! or a line break is such a row, never merged into one number. The whole file goes into one
//! transaction: a fatal problem (unreadable file, undecodable bytes) leaves the database as it
//! was.
//!
//! Every physical line is accounted for: lines = header + imported + merged (already
//! present) + rejected + blank, checked before the commit (an import that does not add up is
//! refused, nothing is imported). An opt-out list whose lines are not one row each (a record
//! spanning lines, i.e. an unbalanced quote) is refused whole: importing the rest would let
//! the people on the swallowed lines receive ads.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value};

use chrono_tz::Tz;

use crate::domain::compliance::parse_consent;
use crate::domain::consent;
use crate::domain::phone::{self, Phone};
use crate::input::csvin::{CsvSource, Row, RowResult, Rows, TextEncoding};
use crate::store::{ImportCounts, NewMember, Store};

/// Rows sent to the store per batch.
const BATCH: usize = 2000;

/// The column that carries the night-consent flag of a segment.
pub const NIGHT_CONSENT_COLUMN: &str = "night_consent";

/// How many swallowed ranges a refused opt-out import names.
const NAMED_SPANS: usize = 5;

/// Characters that separate numbers in one field ("010-…; 010-…", "010-…/010-…"). Numbers
/// separated by spaces or line breaks are found by their digit count.
const NUMBER_SEPARATORS: &[char] = &[';', ',', '/', '|', '&'];

/// A Korean number has at most 13 digits even written with the country code and the trunk
/// zero (`+82 010 1234 5678`); two numbers have at least 20.
const TWO_NUMBERS_DIGITS: usize = 20;

/// A row that was not imported.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// First physical line of the row.
    pub line: u64,
    /// Last physical line of the row (`line` unless a quoted field ran over several lines).
    pub end_line: u64,
    pub reason: String,
    pub detail: String,
}

/// What an import did with the lines of its file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub imported: u64,
    /// Opt-outs: already in the list. Segments: duplicate numbers merged into their first row.
    pub already_present: u64,
    /// Rejected rows.
    pub rejected: u64,
    pub encoding: String,
    /// Physical lines of the file: `header_lines + imported + already_present +
    /// rejected_lines + blank_lines`.
    pub lines: u64,
    pub header_lines: u64,
    pub blank_lines: u64,
    /// Lines of the rejected rows (more than `rejected` when a row spans lines).
    pub rejected_lines: u64,
}

impl ImportReport {
    /// Counts a rejected row and hands it to the caller's sink (printed as it comes, so a
    /// file with many bad rows is reported in full without holding them in memory).
    fn reject(&mut self, sink: &mut dyn FnMut(&Rejected), rejected: Rejected) {
        self.rejected += 1;
        self.rejected_lines += rejected.end_line - rejected.line + 1;
        sink(&rejected);
    }

    fn add(&mut self, counts: ImportCounts) {
        self.imported += counts.inserted;
        self.already_present += counts.already_present;
    }

    /// The lines the rows, header and blank lines account for.
    pub fn accounted_lines(&self) -> u64 {
        self.header_lines
            + self.imported
            + self.already_present
            + self.rejected_lines
            + self.blank_lines
    }

    /// Records the file's encoding and line counts once every row has been read, and checks
    /// that every line is accounted for.
    fn finish(&mut self, rows: &Rows, path: &Path) -> anyhow::Result<()> {
        self.encoding = encoding_name(rows.encoding());
        let counts = rows.line_counts().with_context(|| {
            format!(
                "{}: refused, nothing imported: the file was not read to its end",
                path.display()
            )
        })?;
        self.lines = counts.lines;
        self.header_lines = counts.header;
        self.blank_lines = counts.blank;
        self.check_lines(path)
    }

    /// Every line of the file is accounted for, or the import is refused.
    fn check_lines(&self, path: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.accounted_lines() == self.lines,
            "{}: refused, nothing imported: the file has {} lines but the import accounts for \
             {} ({} header + {} imported + {} already present + {} rejected + {} blank); this \
             is a bug in munja, please report it",
            path.display(),
            self.lines,
            self.accounted_lines(),
            self.header_lines,
            self.imported,
            self.already_present,
            self.rejected_lines,
            self.blank_lines
        );
        Ok(())
    }
}

fn encoding_name(e: TextEncoding) -> String {
    e.to_string()
}

/// The row's number, normalised, or why the row is rejected: its phone field holds more
/// than one number or a line break, or is not a Korean mobile number.
fn row_phone(row: &Row) -> Result<Phone, Rejected> {
    let raw = row.phone.as_str();
    let masked = || phone::mask(raw).escape_debug().to_string();
    let reject = |reason: &str, detail: String| Rejected {
        line: row.line,
        end_line: row.line,
        reason: reason.to_string(),
        detail,
    };
    let numbered_parts = raw
        .split(NUMBER_SEPARATORS)
        .filter(|part| part.chars().any(char::is_numeric))
        .count();
    let digits = raw.chars().filter(|c| c.is_numeric()).count();
    if numbered_parts > 1 || digits >= TWO_NUMBERS_DIGITS {
        return Err(reject(
            "multiple_numbers",
            format!(
                "{}: the phone field holds more than one number; put each number on its own row",
                masked()
            ),
        ));
    }
    if raw.contains(['\n', '\r']) {
        return Err(reject(
            "line_break_in_phone",
            format!(
                "{}: the phone field holds a line break; put one number per row",
                masked()
            ),
        ));
    }
    phone::normalize_mobile(raw).map_err(|e| reject(e.code(), format!("{}: {e}", masked())))
}

/// The data row, or the row csvin rejected.
fn data_row(row: RowResult) -> Result<Row, Rejected> {
    match row {
        RowResult::Ok(row) => Ok(row),
        RowResult::Rejected {
            line,
            end_line,
            reason,
            detail,
        } => Err(Rejected {
            line,
            end_line,
            reason,
            detail,
        }),
    }
}

/// Imports an opt-out list (a CSV with a `phone` column); idempotent.
///
/// Only the phone column is used, so a row whose field count differs from the header (a stray
/// comma in a memo column, a missing trailing column) is still imported when its phone field is
/// present: losing an opt-out over a column we ignore would be the worse error. A record that
/// spans lines refuses the whole import (nothing is imported), naming its lines.
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
    let mut spans: Vec<String> = Vec::new();
    let mut spanning = 0u64;
    let mut rows = src.rows();
    for row in rows.by_ref() {
        match data_row(row?).and_then(|row| row_phone(&row)) {
            Ok(p) => batch.push(p),
            Err(r) => {
                if r.end_line != r.line {
                    spanning += 1;
                    if spans.len() < NAMED_SPANS {
                        spans.push(format!("lines {}-{}", r.line, r.end_line));
                    }
                }
                report.reject(on_reject, r);
            }
        }
        if batch.len() >= BATCH {
            report.add(import.add_optouts(&batch).await?);
            batch.clear();
        }
    }
    report.add(import.add_optouts(&batch).await?);
    // `import` is dropped without a commit on every error below: nothing is imported.
    anyhow::ensure!(
        spanning == 0,
        "{}: refused, nothing imported: {spanning} row(s) run over more than one line, so \
         some lines of this opt-out list cannot be read as one number each: {}{}. A quoted \
         field opened on the first line of each range runs to its last line; check those \
         lines for an unbalanced quote (\"), fix the file and import it again",
        path.display(),
        spans.join(", "),
        if spanning > spans.len() as u64 {
            format!(" and {} more", spanning - spans.len() as u64)
        } else {
            String::new()
        }
    );
    report.finish(&rows, path)?;
    import
        .commit()
        .await
        .context("committing the opt-out import")?;
    Ok(report)
}

/// Imports (or atomically replaces) segment `name` from a CSV with a `phone` column; an
/// `ad_consent_at` column's times without offset are local times in `tz` (`policy.timezone`).
/// `on_reject` receives each rejected row with its line number and reason.
pub async fn segment(
    store: &dyn Store,
    name: &str,
    path: &Path,
    tz: Tz,
    on_reject: &mut dyn FnMut(&Rejected),
) -> anyhow::Result<ImportReport> {
    check_segment_name(name)?;
    anyhow::ensure!(
        store.sql_segment_versions(name).await?.is_empty(),
        "segment {name:?} is an SQL segment (`munja segment show {name}`); a CSV import cannot \
         replace it: choose another name"
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
        match data_row(row?).and_then(|row| new_member(row, tz)) {
            Ok(m) => batch.push(m),
            Err(r) => report.reject(on_reject, r),
        }
        if batch.len() >= BATCH {
            report.add(import.add_members(&batch).await?);
            batch.clear();
        }
    }
    report.add(import.add_members(&batch).await?);
    // `import` is dropped without a commit if the lines do not add up: nothing is imported.
    report.finish(&rows, path)?;
    import
        .commit()
        .await
        .context("committing the segment import")?;
    Ok(report)
}

/// Refuses a segment name that is not letters, digits, '-' and '_'.
pub fn check_segment_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_'),
        "segment name {name:?} is not valid: use letters, digits, '-' and '_'"
    );
    Ok(())
}

/// The segment member of a data row: its number and its other columns as template
/// variables, `night_consent` apart; `ad_consent_at` is also read as the consent's time (a
/// time without offset is local in `tz`). CSV files and SQL segments
/// (`crate::input::segment_sql`) both go through here, so a row means the same whatever it
/// came from.
pub(crate) fn new_member(row: Row, tz: Tz) -> Result<NewMember, Rejected> {
    let phone = row_phone(&row)?;
    let mut vars = Map::new();
    let mut night_consent = false;
    let mut ad_consent_at = None;
    for (k, v) in row.fields {
        if k.eq_ignore_ascii_case(NIGHT_CONSENT_COLUMN) {
            night_consent = parse_consent(&v).map_err(|detail| Rejected {
                line: row.line,
                end_line: row.line,
                reason: "invalid_night_consent".to_string(),
                detail,
            })?;
        } else {
            if consent::is_consent_column(&k) {
                ad_consent_at = consent::parse_cell(&v, tz).map_err(|detail| Rejected {
                    line: row.line,
                    end_line: row.line,
                    reason: "invalid_ad_consent_at".to_string(),
                    detail,
                })?;
            }
            vars.insert(k, Value::String(v));
        }
    }
    Ok(NewMember {
        phone,
        vars: Value::Object(vars).to_string(),
        night_consent,
        ad_consent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phone: &str) -> Row {
        Row {
            line: 7,
            phone: phone.to_string(),
            fields: Vec::new(),
        }
    }

    #[test]
    fn a_phone_field_with_two_numbers_is_rejected_not_merged() {
        for field in [
            "010-1234-5678 010-2345-6789",
            "01012345678 01023456789",
            "010-1234-5678;010-2345-6789",
            "010-1234-5678, 010-2345-6789",
            "010-1234-5678/010-2345-6789",
            "010-1234-5678 | 010-2345-6789",
            "010 1234 5678 010 2345 6789",
            "010-1234-5678\n010-2345-6789",
        ] {
            let r = row_phone(&row(field)).expect_err(field);
            assert_eq!((r.line, r.end_line), (7, 7), "{field}");
            assert_eq!(r.reason, "multiple_numbers", "{field}");
            assert!(
                r.detail.ends_with(
                    "the phone field holds more than one number; put each number on its own row"
                ),
                "{}",
                r.detail
            );
            assert!(!r.detail.contains("1234"), "masked: {}", r.detail);
            assert!(!r.detail.contains('\n'), "one line: {}", r.detail);
        }
    }

    #[test]
    fn a_phone_field_with_a_line_break_is_rejected() {
        let r = row_phone(&row("010-1234-\r5678")).unwrap_err();
        assert_eq!(r.reason, "line_break_in_phone");
        assert!(r.detail.starts_with("010-****-\\r5678: "), "{}", r.detail);
    }

    #[test]
    fn a_csv_ad_consent_at_that_is_not_a_date_is_rejected_with_its_line() {
        let with = |v: &str| Row {
            fields: vec![("AD_CONSENT_AT".to_string(), v.to_string())],
            ..row("010-1234-5678")
        };
        for ok in [
            "",
            "2026-01-02",
            "2026-01-02 03:04:05",
            "2026-01-02T03:04:05+09:00",
        ] {
            let m = new_member(with(ok), chrono_tz::Asia::Seoul).expect(ok);
            assert!(
                m.vars.contains("AD_CONSENT_AT"),
                "kept as a variable: {}",
                m.vars
            );
        }
        let seoul = chrono_tz::Asia::Seoul;
        let at = |v: &str| new_member(with(v), seoul).unwrap().ad_consent_at;
        assert_eq!(at(""), None, "an empty cell is no consent");
        assert_eq!(
            at("2026-01-02").map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-01-01T15:00:00+00:00"),
            "a date is midnight in the policy timezone"
        );
        let r = new_member(with("02/01/2026"), seoul).unwrap_err();
        assert_eq!((r.line, r.reason.as_str()), (7, "invalid_ad_consent_at"));
        assert!(
            r.detail.contains("\"02/01/2026\" is not a date"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn one_number_in_any_form_is_accepted() {
        for field in [
            "010-1234-5678",
            "+82 10 1234 5678",
            "+82 010 1234 5678",
            "82-10-1234-5678",
            "(010) 1234.5678",
        ] {
            let p = row_phone(&row(field)).expect(field);
            assert_eq!(p.as_str(), "01012345678", "{field}");
        }
        let r = row_phone(&row("02-123-4567")).unwrap_err();
        assert_eq!(r.reason, "not_mobile");
    }

    #[test]
    fn an_import_whose_lines_do_not_add_up_is_refused() {
        let mut r = ImportReport {
            imported: 5,
            already_present: 1,
            rejected: 1,
            rejected_lines: 3,
            header_lines: 1,
            blank_lines: 2,
            lines: 12,
            ..ImportReport::default()
        };
        r.check_lines(Path::new("x.csv")).unwrap();
        r.lines = 13;
        let msg = r.check_lines(Path::new("x.csv")).unwrap_err().to_string();
        assert_eq!(
            msg,
            "x.csv: refused, nothing imported: the file has 13 lines but the import accounts \
             for 12 (1 header + 5 imported + 1 already present + 3 rejected + 2 blank); this is \
             a bug in munja, please report it"
        );
    }
}
