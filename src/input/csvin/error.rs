//! [`CsvError`], the fatal problems with a CSV file, each message naming the file and line
//! and saying how to fix it.

use std::io;
use std::path::PathBuf;

use super::{SAVE_AS_UTF8, TextEncoding};

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
        source: io::Error,
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
