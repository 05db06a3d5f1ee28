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
//! Memory stays bounded whatever the file size: only the 64 KiB sniff window and one
//! record at a time are held.
//!
//! Rules: fields are trimmed; rows whose fields are all empty (blank lines, `,,,`) are
//! skipped; LF and CRLF line endings are accepted (CR-only files are refused).

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// One data row of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based physical line where the record starts (the header is normally line 1).
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
    /// `"wrong_field_count"`) and a human `detail`.
    Rejected {
        /// 1-based physical line where the record starts.
        line: u64,
        /// Machine-readable reason code.
        reason: String,
        /// What is wrong with the row.
        detail: String,
    },
}

/// A fatal problem with a CSV file. Messages read `path line N: what (how to fix)`.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The file cannot be opened or read.
    #[error("{}: cannot read the file: {source} (check the path and its permissions)", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading failed part way through.
    #[error("{} line {line}: cannot read the file: {source} (check the disk and retry the import)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Line being read when it failed.
        line: u64,
        /// The underlying error.
        #[source]
        source: csv::Error,
    },
    /// The file is not text in a supported encoding, or not a CSV file at all.
    #[error("{}{}: {problem}; {SAVE_AS_UTF8}", path.display(), line_suffix(.line))]
    NotText {
        /// The file.
        path: PathBuf,
        /// First offending line, if one can be named.
        line: Option<u64>,
        /// What was found.
        problem: String,
    },
    /// A field is not valid text in the encoding detected earlier in the file.
    #[error(
        "{} line {line}: {column} is not valid {encoding} text (the file was detected as {encoding} {basis}); {SAVE_AS_UTF8}",
        path.display()
    )]
    Undecodable {
        /// The file.
        path: PathBuf,
        /// Line where the record starts.
        line: u64,
        /// Which field, e.g. `column 'name'` or `header column 2`.
        column: String,
        /// The detected encoding.
        encoding: TextEncoding,
        /// Where it was detected, e.g. `from its first 64 KiB`.
        basis: String,
    },
    /// The file has no header line.
    #[error("{}: the file is empty; it needs a header line naming its columns, one of them 'phone'", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The header has no `phone` column (or more than one).
    #[error("{} line {line}: {problem}; header columns found: {}{hint}", path.display(), columns.join(", "))]
    PhoneColumn {
        /// The file.
        path: PathBuf,
        /// Header line.
        line: u64,
        /// What is wrong.
        problem: String,
        /// Header columns found.
        columns: Vec<String>,
        /// Extra advice (may be empty).
        hint: String,
    },
    /// The header is unusable (empty or duplicate column names).
    #[error("{} line {line}: {problem}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// Header line.
        line: u64,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

fn line_suffix(line: &Option<u64>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
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
    lines: LineTracker,
    reader: csv::Reader<File>,
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

/// Computes the physical start line of each record.
///
/// The reader uses `\n` as the only terminator, so a record consumes its own `\n`; the
/// start line is the line count after the record minus the newlines inside quoted
/// fields minus the terminating newline (absent only for a last line without `\n`).
/// Blank lines skipped before a record are therefore accounted for.
#[derive(Debug, Clone, Copy)]
struct LineTracker {
    file_len: u64,
    ends_with_newline: bool,
}

impl LineTracker {
    fn start_line(&self, record: &csv::ByteRecord, after: &csv::Position) -> u64 {
        let inner = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
        let terminated = after.byte() < self.file_len || self.ends_with_newline;
        after
            .line()
            .saturating_sub(inner + u64::from(terminated))
            .max(1)
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

        let ends_with_newline = if file_len == 0 {
            false
        } else if sniff.len() as u64 >= file_len {
            sniff.last() == Some(&b'\n')
        } else {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1)).map_err(io_err)?;
            file.read_exact(&mut last).map_err(io_err)?;
            last[0] == b'\n'
        };
        file.rewind().map_err(io_err)?;
        drop(sniff);

        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .buffer_capacity(SNIFF_LEN)
            .from_reader(file);
        let mut source = CsvSource {
            path: path.to_path_buf(),
            encoding,
            basis,
            columns: Vec::new(),
            phone_index: 0,
            lenient: false,
            lines: LineTracker {
                file_len,
                ends_with_newline,
            },
            reader,
        };
        source.read_header()?;
        Ok(source)
    }

    fn read_header(&mut self) -> Result<(), CsvError> {
        let path = self.path.clone();
        let mut record = csv::ByteRecord::new();
        let (line, columns) = loop {
            let more = self
                .reader
                .read_byte_record(&mut record)
                .map_err(|source| CsvError::Read {
                    path: path.clone(),
                    line: self.reader.position().line(),
                    source,
                })?;
            if !more {
                return Err(CsvError::Empty { path });
            }
            let line = self.lines.start_line(&record, self.reader.position());
            let mut columns = Vec::with_capacity(record.len());
            for (i, raw) in record.iter().enumerate() {
                let raw = if i == 0 {
                    raw.strip_prefix(UTF8_BOM).unwrap_or(raw)
                } else {
                    raw
                };
                let name = self
                    .encoding
                    .decode(raw)
                    .ok_or_else(|| CsvError::Undecodable {
                        path: path.clone(),
                        line,
                        column: format!("header column {}", i + 1),
                        encoding: self.encoding,
                        basis: self.basis.to_string(),
                    })?;
                columns.push(name.trim().to_string());
            }
            // A line of only whitespace (e.g. "\r" of a CRLF blank line) is not the header.
            if columns.iter().any(|c| !c.is_empty()) {
                break (line, columns);
            }
        };

        if let Some(i) = columns.iter().position(String::is_empty) {
            return Err(CsvError::Header {
                path,
                line,
                problem: format!(
                    "header column {} has no name (header: {}); give every column a name, \
                     or delete the empty columns",
                    i + 1,
                    columns.join(", ")
                ),
            });
        }
        for (i, name) in columns.iter().enumerate() {
            if let Some(j) = columns[..i].iter().position(|c| c == name) {
                return Err(CsvError::Header {
                    path,
                    line,
                    problem: format!(
                        "columns {} and {} are both named '{name}'; rename one so every \
                         header name is unique",
                        j + 1,
                        i + 1
                    ),
                });
            }
        }
        let phones: Vec<usize> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eq_ignore_ascii_case(PHONE))
            .map(|(i, _)| i)
            .collect();
        match phones.as_slice() {
            [i] => self.phone_index = *i,
            [] => {
                let hint = if columns.len() == 1 && columns[0].contains([';', '\t']) {
                    " (the file seems to use ';' or tab separators; munja reads comma-separated files)"
                        .to_string()
                } else {
                    " (rename the column that holds the mobile numbers, e.g. '휴대폰번호', to 'phone')"
                        .to_string()
                };
                return Err(CsvError::PhoneColumn {
                    path,
                    line,
                    problem: "a 'phone' column is required".to_string(),
                    columns,
                    hint,
                });
            }
            _ => {
                return Err(CsvError::PhoneColumn {
                    path,
                    line,
                    problem: "more than one column is named 'phone' (names are matched \
                              ignoring case)"
                        .to_string(),
                    columns,
                    hint: " (keep one 'phone' column and rename the others)".to_string(),
                });
            }
        }
        self.columns = columns;
        Ok(())
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
    fn settle(&mut self, record: &csv::ByteRecord, line: u64) -> Result<(), CsvError> {
        let all = |e: TextEncoding| record.iter().all(|f| e.decode(f).is_some());
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
            record: csv::ByteRecord::new(),
            done: false,
        }
    }
}

/// The data rows of a [`CsvSource`], streamed.
pub struct Rows {
    source: CsvSource,
    record: csv::ByteRecord,
    done: bool,
}

impl Rows {
    /// The file's encoding, final once the rows have been read.
    pub fn encoding(&self) -> TextEncoding {
        self.source.encoding
    }

    /// Read the next non-blank record; `Ok(None)` at end of file.
    fn next_row(&mut self) -> Result<Option<RowResult>, CsvError> {
        let src = &mut self.source;
        loop {
            let more = src
                .reader
                .read_byte_record(&mut self.record)
                .map_err(|source| CsvError::Read {
                    path: src.path.clone(),
                    line: src.reader.position().line(),
                    source,
                })?;
            if !more {
                return Ok(None);
            }
            let line = src.lines.start_line(&self.record, src.reader.position());
            if src.basis == Basis::Open && !self.record.as_slice().is_ascii() {
                src.settle(&self.record, line)?;
            }

            let mut values = Vec::with_capacity(self.record.len());
            for (i, raw) in self.record.iter().enumerate() {
                let value = src
                    .encoding
                    .decode(raw)
                    .ok_or_else(|| CsvError::Undecodable {
                        path: src.path.clone(),
                        line,
                        column: match src.columns.get(i) {
                            Some(name) => format!("column '{name}'"),
                            None => format!("field {}", i + 1),
                        },
                        encoding: src.encoding,
                        basis: src.basis.to_string(),
                    })?;
                values.push(value.trim().to_string());
            }
            if values.iter().all(String::is_empty) {
                continue;
            }
            let has_phone = values.get(src.phone_index).is_some_and(|v| !v.is_empty());
            if values.len() != src.columns.len() && !(src.lenient && has_phone) {
                return Ok(Some(RowResult::Rejected {
                    line,
                    reason: "wrong_field_count".to_string(),
                    detail: format!(
                        "expected {} fields (as in the header), found {}",
                        src.columns.len(),
                        values.len()
                    ),
                }));
            }
            let mut phone = String::new();
            let mut fields = Vec::with_capacity(values.len().saturating_sub(1));
            values.resize(src.columns.len(), String::new());
            for (i, (value, name)) in values.into_iter().zip(&src.columns).enumerate() {
                if i == src.phone_index {
                    phone = value;
                } else {
                    fields.push((name.clone(), value));
                }
            }
            return Ok(Some(RowResult::Ok(Row {
                line,
                phone,
                fields,
            })));
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

/// Decide the encoding from the first bytes of the file. `complete` is true when
/// `sniff` holds the whole file.
fn detect_encoding(path: &Path, sniff: &[u8], complete: bool) -> Result<TextEncoding, CsvError> {
    let not_text = |line: Option<u64>, problem: &str| CsvError::NotText {
        path: path.to_path_buf(),
        line,
        problem: problem.to_string(),
    };
    if sniff.starts_with(UTF8_BOM) {
        return Ok(TextEncoding::Utf8);
    }
    if sniff.starts_with(b"\xFF\xFE") || sniff.starts_with(b"\xFE\xFF") {
        return Err(not_text(
            None,
            "the file is UTF-16 text (Excel \"Unicode Text\"), not a UTF-8 or CP949 CSV file",
        ));
    }
    if sniff.starts_with(b"PK\x03\x04") {
        return Err(not_text(
            None,
            "the file is an Excel workbook (.xlsx), not a CSV file",
        ));
    }
    if let Some(pos) = sniff.iter().position(|&b| b == 0) {
        return Err(not_text(
            Some(line_of(sniff, pos)),
            "the file contains NUL bytes, so it is not a CSV text file (a spreadsheet or UTF-16 file?)",
        ));
    }
    if !sniff.contains(&b'\n') && sniff.contains(&b'\r') {
        return Err(not_text(
            None,
            "the file uses old Macintosh line endings (CR only); munja reads LF or CRLF line endings",
        ));
    }

    // Only judge complete lines: cut a partial last line off a full window.
    let window = if complete {
        sniff
    } else {
        match sniff.iter().rposition(|&b| b == b'\n') {
            Some(pos) => &sniff[..=pos],
            None => sniff,
        }
    };
    match std::str::from_utf8(window) {
        Ok(_) => return Ok(TextEncoding::Utf8),
        // A multi-byte character cut by the end of the sniff window is fine.
        Err(e) if e.error_len().is_none() && !complete => return Ok(TextEncoding::Utf8),
        Err(_) => {}
    }
    if TextEncoding::Cp949.decode(window).is_some() {
        return Ok(TextEncoding::Cp949);
    }

    // Neither: name the first line that is neither, or explain a mix of both.
    let mut first_not_utf8 = None;
    let mut first_not_cp949 = None;
    for (i, line) in window.split(|&b| b == b'\n').enumerate() {
        let n = i as u64 + 1;
        let utf8 = TextEncoding::Utf8.decode(line).is_some();
        let cp949 = TextEncoding::Cp949.decode(line).is_some();
        if !utf8 && !cp949 {
            return Err(not_text(
                Some(n),
                "this line is neither UTF-8 nor CP949 (EUC-KR) text",
            ));
        }
        if !utf8 {
            first_not_utf8.get_or_insert(n);
        }
        if !cp949 {
            first_not_cp949.get_or_insert(n);
        }
    }
    let problem = match (first_not_utf8, first_not_cp949) {
        (Some(a), Some(b)) => {
            format!("the file mixes encodings: line {a} is CP949 (EUC-KR) but line {b} is UTF-8")
        }
        _ => "the file is neither UTF-8 nor CP949 (EUC-KR) text".to_string(),
    };
    Err(not_text(None, &problem))
}

/// 1-based line of byte offset `pos` in `bytes`.
fn line_of(bytes: &[u8], pos: usize) -> u64 {
    bytes[..pos].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".csv")
            .tempfile()
            .expect("temp file");
        f.write_all(bytes).expect("write");
        f.flush().expect("flush");
        f
    }

    fn cp949(text: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = encoding_rs::EUC_KR.encode(text);
        assert!(!unmappable, "test text must be CP949-encodable");
        bytes.into_owned()
    }

    fn all_rows(src: CsvSource) -> Vec<RowResult> {
        src.rows().collect::<Result<Vec<_>, _>>().expect("rows")
    }

    fn ok_rows(rows: &[RowResult]) -> Vec<&Row> {
        rows.iter()
            .filter_map(|r| match r {
                RowResult::Ok(row) => Some(row),
                RowResult::Rejected { .. } => None,
            })
            .collect()
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn utf8_without_bom() {
        let f = write_file("phone,name\n010-1234-5678,김민수\n 01098765432 , 이영희 \n".as_bytes());
        let src = CsvSource::open(f.path()).unwrap();
        assert_eq!(src.encoding(), TextEncoding::Utf8);
        assert_eq!(src.encoding().to_string(), "UTF-8");
        assert_eq!(src.columns(), ["phone", "name"]);
        let rows = all_rows(src);
        assert_eq!(
            rows,
            vec![
                RowResult::Ok(Row {
                    line: 2,
                    phone: "010-1234-5678".into(),
                    fields: fields(&[("name", "김민수")]),
                }),
                RowResult::Ok(Row {
                    line: 3,
                    phone: "01098765432".into(),
                    fields: fields(&[("name", "이영희")]),
                }),
            ]
        );
    }

    #[test]
    fn utf8_with_bom_is_stripped_from_first_header() {
        let mut bytes = UTF8_BOM.to_vec();
        bytes.extend_from_slice(" Phone ,name\r\n010-1234-5678,김민수\r\n".as_bytes());
        let f = write_file(&bytes);
        let src = CsvSource::open(f.path()).unwrap();
        assert_eq!(src.encoding(), TextEncoding::Utf8);
        assert_eq!(src.columns(), ["Phone", "name"]);
        assert_eq!(src.phone_column(), "Phone");
        let rows = all_rows(src);
        let rows = ok_rows(&rows);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].phone, "010-1234-5678");
        assert_eq!(rows[0].fields, fields(&[("name", "김민수")]));
    }

    #[test]
    fn cp949_hangul_decodes() {
        // 똠 and 햏 are CP949 extensions outside EUC-KR's KS X 1001 set.
        let bytes =
            cp949("이름,phone,지역\n김민수,010-1234-5678,서울\n똠방각하,010-2222-3333,햏\n");
        let f = write_file(&bytes);
        let src = CsvSource::open(f.path()).unwrap();
        assert_eq!(src.encoding(), TextEncoding::Cp949);
        assert_eq!(src.encoding().to_string(), "CP949");
        assert_eq!(src.columns(), ["이름", "phone", "지역"]);
        let rows = all_rows(src);
        let rows = ok_rows(&rows);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].fields,
            fields(&[("이름", "김민수"), ("지역", "서울")])
        );
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].phone, "010-2222-3333");
        assert_eq!(
            rows[1].fields,
            fields(&[("이름", "똠방각하"), ("지역", "햏")])
        );
    }

    #[test]
    fn large_files_sniff_only_the_window() {
        // A Hangul character straddles the 64 KiB boundary in both encodings.
        for encoding in [TextEncoding::Utf8, TextEncoding::Cp949] {
            let mut text = String::from("phone,name\n");
            let mut n = 0;
            while text.len() < SNIFF_LEN * 2 {
                text.push_str(&format!("010{n:08},홍길동{n}\n"));
                n += 1;
            }
            let bytes = match encoding {
                TextEncoding::Utf8 => text.into_bytes(),
                TextEncoding::Cp949 => cp949(&text),
            };
            let f = write_file(&bytes);
            let src = CsvSource::open(f.path()).unwrap();
            assert_eq!(src.encoding(), encoding);
            let rows = all_rows(src);
            assert_eq!(rows.len(), n);
            let last = ok_rows(&rows).pop().unwrap().clone();
            assert_eq!(last.line, n as u64 + 1);
            assert_eq!(
                last.fields,
                fields(&[("name", &format!("홍길동{}", n - 1))])
            );
        }
    }

    #[test]
    fn latin1_garbage_is_refused_naming_the_line() {
        let f = write_file(b"phone,name\n01012345678,Kim\n01012345679,Jos\xe9\n");
        let err = CsvSource::open(f.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, CsvError::NotText { line: Some(3), .. }),
            "{msg}"
        );
        assert!(
            msg.starts_with(&format!("{} line 3: ", f.path().display())),
            "{msg}"
        );
        assert!(msg.contains("neither UTF-8 nor CP949"), "{msg}");
        assert!(msg.contains("CSV UTF-8"), "{msg}");
    }

    #[test]
    fn mixed_encodings_are_refused() {
        let mut bytes = "phone,name\n010,김\n".as_bytes().to_vec();
        bytes.extend_from_slice(&cp949("011,이\n"));
        let f = write_file(&bytes);
        let msg = CsvSource::open(f.path()).unwrap_err().to_string();
        assert!(msg.contains("line 3 is CP949"), "{msg}");
        assert!(msg.contains("line 2 is UTF-8"), "{msg}");
    }

    #[test]
    fn non_csv_files_are_refused() {
        let f = write_file(b"\xFF\xFEp\0h\0o\0n\0e\0\n\0");
        let msg = CsvSource::open(f.path()).unwrap_err().to_string();
        assert!(msg.contains("UTF-16"), "{msg}");
        let f = write_file(b"PK\x03\x04\x14\x00\x06\x00");
        let msg = CsvSource::open(f.path()).unwrap_err().to_string();
        assert!(msg.contains(".xlsx"), "{msg}");
        let f = write_file(b"phone\r010\r");
        let msg = CsvSource::open(f.path()).unwrap_err().to_string();
        assert!(msg.contains("CR only"), "{msg}");
        let f = write_file(b"");
        let err = CsvSource::open(f.path()).unwrap_err();
        assert!(matches!(err, CsvError::Empty { .. }), "{err}");
        let f = write_file(b"\n\r\n\n");
        let err = CsvSource::open(f.path()).unwrap_err();
        assert!(matches!(err, CsvError::Empty { .. }), "{err}");
        let err = CsvSource::open(Path::new("/nonexistent/munja.csv")).unwrap_err();
        assert!(matches!(err, CsvError::Io { .. }), "{err}");
        assert!(
            err.to_string().starts_with("/nonexistent/munja.csv: "),
            "{err}"
        );
    }

    #[test]
    fn missing_phone_column_lists_header() {
        let f = write_file("tel,이름\n010,김\n".as_bytes());
        let err = CsvSource::open(f.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, CsvError::PhoneColumn { line: 1, .. }),
            "{msg}"
        );
        assert!(
            msg.starts_with(&format!("{} line 1: ", f.path().display())),
            "{msg}"
        );
        assert!(msg.contains("a 'phone' column is required"), "{msg}");
        assert!(msg.contains("header columns found: tel, 이름"), "{msg}");

        let f = write_file(b"phone;name\n010;kim\n");
        let msg = CsvSource::open(f.path()).unwrap_err().to_string();
        assert!(msg.contains("';'"), "{msg}");

        let f = write_file(b"phone,PHONE\n010,011\n");
        let msg = CsvSource::open(f.path()).unwrap_err().to_string();
        assert!(msg.contains("more than one"), "{msg}");
    }

    #[test]
    fn bad_header_names_are_refused() {
        let f = write_file(b"phone,name, name \n010,a,b\n");
        let err = CsvSource::open(f.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CsvError::Header { line: 1, .. }), "{msg}");
        assert!(
            msg.contains("columns 2 and 3 are both named 'name'"),
            "{msg}"
        );

        let f = write_file(b"phone,,name\n010,a,b\n");
        let msg = CsvSource::open(f.path()).unwrap_err().to_string();
        assert!(msg.contains("header column 2 has no name"), "{msg}");
    }

    #[test]
    fn extra_columns_become_fields_in_header_order() {
        let f = write_file("name,phone,city,grade\n김민수,010-1234-5678,서울,VIP\n".as_bytes());
        let src = CsvSource::open(f.path()).unwrap();
        assert_eq!(src.columns(), ["name", "phone", "city", "grade"]);
        let rows = all_rows(src);
        let rows = ok_rows(&rows);
        assert_eq!(
            rows[0].fields,
            fields(&[("name", "김민수"), ("city", "서울"), ("grade", "VIP")])
        );
    }

    #[test]
    fn wrong_field_count_is_rejected_with_line() {
        let f = write_file(b"phone,name,city\n010-1,a,b\n010-2,a\n010-3,a,b,c\n010-4,a,b\n");
        let rows = all_rows(CsvSource::open(f.path()).unwrap());
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[1],
            RowResult::Rejected {
                line: 3,
                reason: "wrong_field_count".into(),
                detail: "expected 3 fields (as in the header), found 2".into(),
            }
        );
        assert!(matches!(
            &rows[2],
            RowResult::Rejected { line: 4, reason, detail }
                if reason == "wrong_field_count" && detail.contains("found 4")
        ));
        assert!(matches!(&rows[3], RowResult::Ok(Row { line: 5, .. })));
    }

    #[test]
    fn lenient_fields_keeps_rows_with_a_phone() {
        let text = "name,phone,memo\n\
                    a,010-1,고객 요청, 전화\n\
                    b,010-2\n\
                    c\n\
                    d,,x,y\n\
                    e,010-5,ok\n";
        let f = write_file(text.as_bytes());
        let rows = all_rows(CsvSource::open(f.path()).unwrap().lenient_fields());
        assert_eq!(
            rows[..2],
            [
                RowResult::Ok(Row {
                    line: 2,
                    phone: "010-1".into(),
                    fields: fields(&[("name", "a"), ("memo", "고객 요청")]),
                }),
                RowResult::Ok(Row {
                    line: 3,
                    phone: "010-2".into(),
                    fields: fields(&[("name", "b"), ("memo", "")]),
                }),
            ]
        );
        // No phone field, or an empty one: still rejected.
        assert!(matches!(
            &rows[2],
            RowResult::Rejected { line: 4, reason, .. } if reason == "wrong_field_count"
        ));
        assert!(matches!(
            &rows[3],
            RowResult::Rejected { line: 5, reason, .. } if reason == "wrong_field_count"
        ));
        assert!(matches!(&rows[4], RowResult::Ok(Row { line: 6, .. })));
        assert_eq!(rows.len(), 5);

        // The default (segments) rejects both rows with a phone.
        let rows = all_rows(CsvSource::open(f.path()).unwrap());
        let rejected = rows
            .iter()
            .filter(|r| matches!(r, RowResult::Rejected { .. }))
            .count();
        assert_eq!(rejected, 4);
    }

    #[test]
    fn quoted_fields_with_commas_and_newlines_keep_line_numbers() {
        let text = "phone,memo\n\
                    010-1,\"a, b\"\n\
                    010-2,\"line one\nline two\n\nline four\"\n\
                    \n\
                    010-3,\"say \"\"hi\"\"\"\n\
                    010-4,plain";
        for crlf in [false, true] {
            let text = if crlf {
                text.replace('\n', "\r\n")
            } else {
                text.to_string()
            };
            let f = write_file(text.as_bytes());
            let rows = all_rows(CsvSource::open(f.path()).unwrap());
            let rows = ok_rows(&rows);
            let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
            assert_eq!(lines, [2, 3, 8, 9], "crlf={crlf}");
            assert_eq!(rows[0].fields, fields(&[("memo", "a, b")]));
            let nl = if crlf { "\r\n" } else { "\n" };
            assert_eq!(
                rows[1].fields,
                fields(&[("memo", &format!("line one{nl}line two{nl}{nl}line four"))])
            );
            assert_eq!(rows[2].fields, fields(&[("memo", "say \"hi\"")]));
            assert_eq!(rows[3].phone, "010-4");
        }
    }

    #[test]
    fn blank_and_empty_lines_are_ignored() {
        let f = write_file(b"\nphone,name\n\n010-1,a\n,\n  ,  \n010-2,b\n\n\n\r\n");
        let src = CsvSource::open(f.path()).unwrap();
        let rows = all_rows(src);
        let lines: Vec<u64> = ok_rows(&rows).iter().map(|r| r.line).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(lines, [4, 7]);
    }

    /// `header`, then ASCII rows past the 64 KiB sniff window; returns the bytes and the
    /// number of the next line.
    fn ascii_start(header: &str) -> (Vec<u8>, u64) {
        let mut bytes = header.as_bytes().to_vec();
        let mut line = 2;
        while bytes.len() < SNIFF_LEN + 100 {
            bytes.extend_from_slice(format!("010{line:08},kim\n").as_bytes());
            line += 1;
        }
        (bytes, line)
    }

    fn first_error(src: CsvSource) -> (usize, CsvError, Rows) {
        let mut rows = src.rows();
        let mut ok = 0;
        let err = loop {
            match rows.next() {
                Some(Ok(_)) => ok += 1,
                Some(Err(e)) => break e,
                None => panic!("expected an error"),
            }
        };
        (ok, err, rows)
    }

    #[test]
    fn plain_ascii_start_leaves_the_encoding_to_the_first_non_ascii_line() {
        for encoding in [TextEncoding::Cp949, TextEncoding::Utf8] {
            let (mut bytes, line) = ascii_start("phone,name\n");
            let late = "01099999999,김민수\n01088888888,똠방\n";
            match encoding {
                TextEncoding::Cp949 => bytes.extend_from_slice(&cp949(late)),
                TextEncoding::Utf8 => bytes.extend_from_slice(late.as_bytes()),
            }
            let f = write_file(&bytes);
            let src = CsvSource::open(f.path()).unwrap();
            let mut rows = src.rows();
            let all: Vec<RowResult> = rows.by_ref().collect::<Result<_, _>>().unwrap();
            assert_eq!(rows.encoding(), encoding);
            let ok = ok_rows(&all);
            assert_eq!(ok.len() as u64, line, "{encoding}");
            assert_eq!(ok[ok.len() - 2].line, line);
            assert_eq!(ok[ok.len() - 2].fields, fields(&[("name", "김민수")]));
            assert_eq!(ok[ok.len() - 1].fields, fields(&[("name", "똠방")]));
        }
    }

    #[test]
    fn a_later_line_in_the_other_encoding_is_fatal_with_its_line() {
        // Decided as UTF-8 by the sniff window (Hangul on line 2), CP949 much later.
        let mut bytes = "phone,name\n01000000000,김민수\n".as_bytes().to_vec();
        let (rest, _) = ascii_start("");
        bytes.extend_from_slice(&rest);
        let line = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        bytes.extend_from_slice(&cp949("01099999999,김민수\n"));
        bytes.extend_from_slice(b"01088888888,lee\n");
        let f = write_file(&bytes);
        let src = CsvSource::open(f.path()).unwrap();
        assert_eq!(src.encoding(), TextEncoding::Utf8);
        let (ok, err, mut rows) = first_error(src);
        assert_eq!(ok as u64, line - 2);
        let msg = err.to_string();
        assert!(
            matches!(err, CsvError::Undecodable { line: l, .. } if l == line),
            "{msg}"
        );
        assert!(
            msg.starts_with(&format!(
                "{} line {line}: column 'name' is not valid UTF-8 text (the file was detected \
                 as UTF-8 from its first 64 KiB)",
                f.path().display()
            )),
            "{msg}"
        );
        assert!(msg.contains("CSV UTF-8"), "{msg}");
        assert!(rows.next().is_none(), "iteration stops after a fatal error");

        // Decided as CP949 by a line after an ASCII start, UTF-8 later.
        let (mut bytes, line) = ascii_start("phone,name\n");
        bytes.extend_from_slice(&cp949("01099999999,김민수\n"));
        bytes.extend_from_slice("01088888888,이영희\n".as_bytes());
        let f = write_file(&bytes);
        let (_, err, _) = first_error(CsvSource::open(f.path()).unwrap());
        let msg = err.to_string();
        let next = line + 1;
        assert!(
            msg.contains(&format!(
                "line {next}: column 'name' is not valid CP949 text (the file was detected as \
                 CP949 from line {line}, its first line that is not plain ASCII)"
            )),
            "{msg}"
        );
    }

    #[test]
    fn a_late_line_in_neither_encoding_is_refused_with_its_line() {
        let (mut bytes, line) = ascii_start("phone,name\n");
        bytes.extend_from_slice(b"01099999999,Jos\xe9\n");
        let f = write_file(&bytes);
        let (ok, err, _) = first_error(CsvSource::open(f.path()).unwrap());
        assert_eq!(ok as u64, line - 2);
        let msg = err.to_string();
        assert!(
            matches!(err, CsvError::NotText { line: Some(l), .. } if l == line),
            "{msg}"
        );
        assert!(msg.contains("neither UTF-8 nor CP949"), "{msg}");
    }

    #[test]
    fn last_line_without_newline() {
        let f = write_file(b"phone\n010-1\n010-2");
        let rows = all_rows(CsvSource::open(f.path()).unwrap());
        let lines: Vec<u64> = ok_rows(&rows).iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3]);
        let f = write_file(b"phone\n010-1\n\"010\n-2\"");
        let rows = all_rows(CsvSource::open(f.path()).unwrap());
        let lines: Vec<u64> = ok_rows(&rows).iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3]);
    }
}
