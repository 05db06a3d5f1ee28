//! Detecting the text encoding of a CSV file from its first bytes, and refusing files that
//! are not CSV text (UTF-16, Excel workbooks, NUL bytes, CR-only line endings).

use std::path::Path;

use super::{CsvError, TextEncoding, UTF8_BOM};

/// Why a file is not CSV text: the offending line, if one can be named, and what was found.
type NotText = (Option<u64>, String);

/// Decide the encoding from the first bytes of the file. `complete` is true when
/// `sniff` holds the whole file.
pub(super) fn detect_encoding(
    path: &Path,
    sniff: &[u8],
    complete: bool,
) -> Result<TextEncoding, CsvError> {
    let not_text = |(line, problem): NotText| CsvError::NotText {
        path: path.to_path_buf(),
        line,
        problem,
    };
    if sniff.starts_with(UTF8_BOM) {
        return Ok(TextEncoding::Utf8);
    }
    refuse_non_csv(sniff).map_err(not_text)?;

    let window = complete_lines(sniff, complete);
    match std::str::from_utf8(window) {
        Ok(_) => return Ok(TextEncoding::Utf8),
        // A multi-byte character cut by the end of the sniff window is fine.
        Err(e) if e.error_len().is_none() && !complete => return Ok(TextEncoding::Utf8),
        Err(_) => {}
    }
    if TextEncoding::Cp949.decode(window).is_some() {
        return Ok(TextEncoding::Cp949);
    }
    Err(not_text(neither_encoding(window)))
}

/// Refuses what is surely not a CSV text file: UTF-16, an Excel workbook, NUL bytes, CR-only
/// line endings.
fn refuse_non_csv(sniff: &[u8]) -> Result<(), NotText> {
    let not_text = |line: Option<u64>, problem: &str| Err((line, problem.to_string()));
    if sniff.starts_with(b"\xFF\xFE") || sniff.starts_with(b"\xFE\xFF") {
        return not_text(
            None,
            "the file is UTF-16 text (Excel \"Unicode Text\"), not a UTF-8 or CP949 CSV file",
        );
    }
    if sniff.starts_with(b"PK\x03\x04") {
        return not_text(
            None,
            "the file is an Excel workbook (.xlsx), not a CSV file",
        );
    }
    if let Some(pos) = sniff.iter().position(|&b| b == 0) {
        return not_text(
            Some(line_of(sniff, pos)),
            "the file contains NUL bytes, so it is not a CSV text file (a spreadsheet or UTF-16 file?)",
        );
    }
    if !sniff.contains(&b'\n') && sniff.contains(&b'\r') {
        return not_text(
            None,
            "the file uses old Macintosh line endings (CR only); munja reads LF or CRLF line endings",
        );
    }
    Ok(())
}

/// Only judge complete lines: cut a partial last line off a full window.
fn complete_lines(sniff: &[u8], complete: bool) -> &[u8] {
    if complete {
        sniff
    } else {
        match sniff.iter().rposition(|&b| b == b'\n') {
            Some(pos) => &sniff[..=pos],
            None => sniff,
        }
    }
}

/// Why a window that is neither UTF-8 nor CP949 is refused: the first line that is neither,
/// or a mix of both.
fn neither_encoding(window: &[u8]) -> NotText {
    let mut first_not_utf8 = None;
    let mut first_not_cp949 = None;
    for (i, line) in window.split(|&b| b == b'\n').enumerate() {
        let n = i as u64 + 1;
        let utf8 = TextEncoding::Utf8.decode(line).is_some();
        let cp949 = TextEncoding::Cp949.decode(line).is_some();
        if !utf8 && !cp949 {
            return (
                Some(n),
                "this line is neither UTF-8 nor CP949 (EUC-KR) text".to_string(),
            );
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
    (None, problem)
}

/// 1-based line of byte offset `pos` in `bytes`.
fn line_of(bytes: &[u8], pos: usize) -> u64 {
    bytes[..pos].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}
