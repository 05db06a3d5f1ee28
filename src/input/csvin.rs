//! Reading user CSV files (segments and opt-out lists), streamed row by row.
//!
//! This module owns: detecting the text encoding (UTF-8 with or without BOM, or
//! CP949/EUC-KR as exported by Korean Excel) from the first 64 KiB (or, when those are
//! plain ASCII, from the first line that is not), the header (a
//! `phone` column is required, matched case-insensitively), and turning each record
//! into a [`Row`] with its physical line number, or a rejected row for per-row
//! problems (wrong number of fields, unless [`CsvSource::lenient_fields`] is set and
//! the phone field is present). Fatal problems (I/O, bytes that are not text in
//! the detected encoding) are [`CsvError`]s naming the file and line and saying how to
//! fix them; the caller aborts the whole import on them.
//!
//! Every physical line of the file is accounted for ([`LineCounts`]): it is the header, a
//! blank line, or part of exactly one data row ([`RowResult`]). A record that spans more than
//! one line (a quoted field holding a line break, nearly always an unbalanced quote that
//! swallowed the lines after it) is a rejected row (`multiline_record`) covering all of those
//! lines, never a row whose fields hold other rows.
//!
//! Memory stays bounded whatever the file size: only the 64 KiB sniff window and one
//! record at a time (at most [`raw::MAX_RECORD_BYTES`]) are held.
//!
//! Rules: fields are trimmed; rows whose fields are all empty (blank lines, `,,,`) are
//! skipped as blank; LF and CRLF line endings are accepted (CR-only files are refused).

mod error;
mod header;
mod raw;
mod sniff;

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

pub use error::CsvError;
use header::check_header;
use raw::{RawReader, RawRecord};
use sniff::detect_encoding;

/// How many bytes are inspected to detect the encoding.
const SNIFF_LEN: usize = 64 * 1024;
/// UTF-8 byte order mark.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// The fix we suggest for every encoding problem.
const SAVE_AS_UTF8: &str = "open it in Excel and choose Save As > \"CSV UTF-8 (Comma delimited) (*.csv)\", then import that file";
/// The required column.
const PHONE: &str = "phone";

/// Text encoding of a CSV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// UTF-8, with or without a byte order mark.
    Utf8,
    /// CP949 (Windows Korean, a superset of EUC-KR; WHATWG `euc-kr`).
    Cp949,
}

impl fmt::Display for TextEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextEncoding::Utf8 => "UTF-8",
            TextEncoding::Cp949 => "CP949",
        })
    }
}

impl TextEncoding {
    /// Decode `bytes` strictly: `None` if they are not valid in this encoding.
    fn decode(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            TextEncoding::Utf8 => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            TextEncoding::Cp949 => {
                encoding_rs::EUC_KR.decode_without_bom_handling_and_without_replacement(bytes)
            }
        }
    }
}

/// One data row of the file: always exactly one physical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based physical line of the row (the header is normally line 1).
    pub line: u64,
    /// The `phone` column, trimmed, not yet normalised.
    pub phone: String,
    /// Every other column as (header name, trimmed value), in header order.
    pub fields: Vec<(String, String)>,
}

/// A data row, or a row that cannot be used (reported, not fatal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowResult {
    /// A usable row.
    Ok(Row),
    /// A row that was skipped, with a machine-readable `reason` (e.g.
    /// `"wrong_field_count"`, `"multiline_record"`) and a human `detail`.
    Rejected {
        /// 1-based physical line where the record starts.
        line: u64,
        /// Last physical line of the record (`line` unless it spans lines).
        end_line: u64,
        /// Machine-readable reason code.
        reason: String,
        /// What is wrong with the row.
        detail: String,
    },
}

/// How the physical lines of a file were used, once all its rows have been read: `lines`
/// = `header` + `blank` + the lines of every row yielded (one per [`Row`], `end_line - line
/// + 1` per rejected row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Physical lines in the file (a last line without a final newline counts).
    pub lines: u64,
    /// Lines of the header (1).
    pub header: u64,
    /// Empty lines and lines whose fields are all empty, before or after the header.
    pub blank: u64,
}

/// An open CSV file whose encoding and header have been read; iterate its data rows
/// with [`CsvSource::rows`].
pub struct CsvSource {
    path: PathBuf,
    encoding: TextEncoding,
    basis: Basis,
    columns: Vec<String>,
    phone_index: usize,
    /// Accept rows whose field count differs from the header when their phone field is
    /// present (see [`CsvSource::lenient_fields`]).
    lenient: bool,
    reader: RawReader,
    /// Last line covered by the header or a record read so far.
    covered: u64,
    /// Blank lines met so far.
    blank: u64,
}

impl fmt::Debug for CsvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvSource")
            .field("path", &self.path)
            .field("encoding", &self.encoding)
            .field("columns", &self.columns)
            .field("phone_index", &self.phone_index)
            .field("lenient", &self.lenient)
            .finish_non_exhaustive()
    }
}

/// What the encoding was decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// The first 64 KiB (or the whole file) had non-ASCII text, or were the whole file.
    Sniff,
    /// The first 64 KiB were plain ASCII, which reads the same in UTF-8 and CP949: the
    /// first line that is not decides.
    Open,
    /// Decided by this line, the first one with non-ASCII text.
    Line(u64),
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Basis::Sniff => f.write_str("from its first 64 KiB"),
            Basis::Open => f.write_str("from its plain ASCII start"),
            Basis::Line(l) => write!(f, "from line {l}, its first line that is not plain ASCII"),
        }
    }
}

impl CsvSource {
    /// Open `path`, detect its encoding and read its header.
    pub fn open(path: &Path) -> Result<CsvSource, CsvError> {
        let io_err = |source| CsvError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();

        let mut sniff = Vec::with_capacity(SNIFF_LEN);
        (&mut file)
            .take(SNIFF_LEN as u64)
            .read_to_end(&mut sniff)
            .map_err(io_err)?;
        let complete = sniff.len() as u64 >= file_len;
        let encoding = detect_encoding(path, &sniff, complete)?;
        let basis = if !complete && sniff.is_ascii() {
            Basis::Open
        } else {
            Basis::Sniff
        };
        file.rewind().map_err(io_err)?;
        drop(sniff);

        let mut source = CsvSource {
            path: path.to_path_buf(),
            encoding,
            basis,
            columns: Vec::new(),
            phone_index: 0,
            lenient: false,
            reader: RawReader::new(file, SNIFF_LEN),
            covered: 0,
            blank: 0,
        };
        let mut record = RawRecord::default();
        let (line, columns) = source.read_header(&mut record)?;
        source.phone_index = check_header(&source.path, line, &columns)?;
        source.columns = columns;
        Ok(source)
    }

    /// Reads the next record, counting the empty lines skipped before it; `Ok(false)` at the
    /// end of the file, where the lines after the last record are counted as blank.
    fn read_record(&mut self, record: &mut RawRecord) -> Result<bool, CsvError> {
        let more = self.reader.read(record).map_err(|source| CsvError::Read {
            path: self.path.clone(),
            line: self.reader.line(),
            source,
        })?;
        let (start, end) = if more {
            (record.start, record.end)
        } else {
            let lines = self.reader.lines();
            (lines + 1, lines)
        };
        self.blank += start.saturating_sub(self.covered + 1);
        self.covered = self.covered.max(end);
        Ok(more)
    }

    /// Reads the header record (skipping blank lines) and decodes its column names.
    fn read_header(&mut self, record: &mut RawRecord) -> Result<(u64, Vec<String>), CsvError> {
        let header_error = |path: &Path, line, problem: String| CsvError::Header {
            path: path.to_path_buf(),
            line,
            problem,
        };
        loop {
            if !self.read_record(record)? {
                return Err(CsvError::Empty {
                    path: self.path.clone(),
                });
            }
            let line = record.start;
            if record.spans_lines() {
                let problem = format!(
                    "the header runs on to line {}: a quoted column name is not closed; check \
                     the header for an unbalanced quote (\")",
                    record.end
                );
                return Err(header_error(&self.path, line, problem));
            }
            if record.oversized {
                let problem = format!(
                    "the header line is longer than {} MiB or has more than {} columns; \
                     check that this is the right file",
                    raw::MAX_RECORD_BYTES >> 20,
                    raw::MAX_FIELDS
                );
                return Err(header_error(&self.path, line, problem));
            }
            let mut columns = Vec::with_capacity(record.len());
            for (i, raw) in record.fields().enumerate() {
                let raw = if i == 0 {
                    raw.strip_prefix(UTF8_BOM).unwrap_or(raw)
                } else {
                    raw
                };
                let name = self
                    .encoding
                    .decode(raw)
                    .ok_or_else(|| CsvError::Undecodable {
                        path: self.path.clone(),
                        line,
                        column: format!("header column {}", i + 1),
                        encoding: self.encoding,
                        basis: self.basis.to_string(),
                    })?;
                columns.push(name.trim().to_string());
            }
            // A line of only whitespace (e.g. "\r" of a CRLF blank line) is not the header.
            if columns.iter().any(|c| !c.is_empty()) {
                return Ok((line, columns));
            }
            self.blank += 1;
        }
    }

    /// The file this source reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The encoding detected so far: when the first 64 KiB are plain ASCII, the first
    /// line that is not may still turn it from UTF-8 to CP949 (see [`Rows::encoding`]).
    pub fn encoding(&self) -> TextEncoding {
        self.encoding
    }

    /// Decides the encoding from the first record with non-ASCII bytes: UTF-8 when every
    /// field is UTF-8, else CP949 when every field is CP949, else the line is refused.
    fn settle(&mut self, record: &RawRecord, line: u64) -> Result<(), CsvError> {
        let all = |e: TextEncoding| record.fields().all(|f| e.decode(f).is_some());
        self.encoding = if all(TextEncoding::Utf8) {
            TextEncoding::Utf8
        } else if all(TextEncoding::Cp949) {
            TextEncoding::Cp949
        } else {
            return Err(CsvError::NotText {
                path: self.path.clone(),
                line: Some(line),
                problem: "this line is neither UTF-8 nor CP949 (EUC-KR) text".to_string(),
            });
        };
        self.basis = Basis::Line(line);
        Ok(())
    }

    /// All header names (trimmed, BOM stripped), in file order, `phone` included.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The header name of the phone column as written in the file (e.g. `Phone`).
    pub fn phone_column(&self) -> &str {
        &self.columns[self.phone_index]
    }

    /// Accept rows whose number of fields differs from the header, as long as their phone
    /// field (at the header's phone position) is present and not empty: for files where only
    /// the phone matters (opt-out lists), a stray comma in another column must not lose the
    /// row. Such rows keep the columns they have (missing ones empty, extra values dropped).
    /// By default (segments) they are rejected as `wrong_field_count`.
    pub fn lenient_fields(mut self) -> Self {
        self.lenient = true;
        self
    }

    /// Stream the data rows. Yields `Err` only for fatal problems (I/O, undecodable
    /// bytes), after which the iterator ends.
    pub fn rows(self) -> Rows {
        Rows {
            source: self,
            record: RawRecord::default(),
            done: false,
            counts: None,
        }
    }

    /// A record that cannot be one row of one line: it spans lines, or is too large to hold.
    fn structural_reject(&self, record: &RawRecord) -> Option<RowResult> {
        let (line, end_line) = (record.start, record.end);
        let (reason, detail) = if record.spans_lines() {
            (
                "multiline_record",
                format!(
                    "a quoted field opened on line {line} runs to line {end_line}, so lines \
                     {line}-{end_line} read as one row: check line {line} for an unbalanced \
                     quote (\"); none of these lines was used"
                ),
            )
        } else if record.oversized {
            (
                "line_too_long",
                format!(
                    "the line is longer than {} MiB or has more than {} fields",
                    raw::MAX_RECORD_BYTES >> 20,
                    raw::MAX_FIELDS
                ),
            )
        } else {
            return None;
        };
        Some(RowResult::Rejected {
            line,
            end_line,
            reason: reason.to_string(),
            detail,
        })
    }

    /// The trimmed text of every field of a one-line record.
    fn decode(&self, record: &RawRecord) -> Result<Vec<String>, CsvError> {
        let line = record.start;
        let mut values = Vec::with_capacity(record.len());
        for (i, raw) in record.fields().enumerate() {
            let value = self
                .encoding
                .decode(raw)
                .ok_or_else(|| CsvError::Undecodable {
                    path: self.path.clone(),
                    line,
                    column: match self.columns.get(i) {
                        Some(name) => format!("column '{name}'"),
                        None => format!("field {}", i + 1),
                    },
                    encoding: self.encoding,
                    basis: self.basis.to_string(),
                })?;
            values.push(value.trim().to_string());
        }
        Ok(values)
    }

    /// The row of line `line` from its (non-blank) field values.
    fn to_row(&self, line: u64, mut values: Vec<String>) -> RowResult {
        let has_phone = values.get(self.phone_index).is_some_and(|v| !v.is_empty());
        if values.len() != self.columns.len() && !(self.lenient && has_phone) {
            return RowResult::Rejected {
                line,
                end_line: line,
                reason: "wrong_field_count".to_string(),
                detail: format!(
                    "expected {} fields (as in the header), found {}",
                    self.columns.len(),
                    values.len()
                ),
            };
        }
        // A lenient row drops its extra values; never one that is another number (an opt-out
        // list written `010-1234-5678,010-2345-6789` under a `phone` header).
        if let Some(extra) = values
            .iter()
            .skip(self.columns.len())
            .position(|v| crate::domain::phone::normalize_mobile(v).is_ok())
        {
            return RowResult::Rejected {
                line,
                end_line: line,
                reason: "multiple_numbers".to_string(),
                detail: format!(
                    "field {} (the header has {}) holds another number; put each number on its \
                     own row",
                    self.columns.len() + extra + 1,
                    self.columns.len()
                ),
            };
        }
        let mut phone = String::new();
        let mut fields = Vec::with_capacity(values.len().saturating_sub(1));
        values.resize(self.columns.len(), String::new());
        for (i, (value, name)) in values.into_iter().zip(&self.columns).enumerate() {
            if i == self.phone_index {
                phone = value;
            } else {
                fields.push((name.clone(), value));
            }
        }
        RowResult::Ok(Row {
            line,
            phone,
            fields,
        })
    }
}

/// The data rows of a [`CsvSource`], streamed.
pub struct Rows {
    source: CsvSource,
    record: RawRecord,
    done: bool,
    counts: Option<LineCounts>,
}

impl Rows {
    /// The file's encoding, final once the rows have been read.
    pub fn encoding(&self) -> TextEncoding {
        self.source.encoding
    }

    /// How the file's lines were used; `None` until every row has been read.
    pub fn line_counts(&self) -> Option<LineCounts> {
        self.counts
    }

    /// Read the next non-blank record; `Ok(None)` at end of file.
    fn next_row(&mut self) -> Result<Option<RowResult>, CsvError> {
        let src = &mut self.source;
        let record = &mut self.record;
        loop {
            if !src.read_record(record)? {
                self.counts = Some(LineCounts {
                    lines: src.reader.lines(),
                    header: 1,
                    blank: src.blank,
                });
                return Ok(None);
            }
            if let Some(rejected) = src.structural_reject(record) {
                return Ok(Some(rejected));
            }
            let line = record.start;
            if src.basis == Basis::Open && !record.bytes().is_ascii() {
                src.settle(record, line)?;
            }
            let values = src.decode(record)?;
            if values.iter().all(String::is_empty) {
                src.blank += 1;
                continue;
            }
            return Ok(Some(src.to_row(line, values)));
        }
    }
}

impl Iterator for Rows {
    type Item = Result<RowResult, CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_row() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
