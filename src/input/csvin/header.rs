//! Checking the column names of a CSV header: every column named, no name twice (found in
//! one pass, whatever the number of columns), exactly one `phone` column.

use std::collections::HashMap;
use std::path::Path;

use super::{CsvError, PHONE};

/// Checks the header's column names (every one named, no name twice, exactly one `phone`
/// ignoring case) and returns the index of the phone column. Linear in the number of
/// columns: duplicates are found with a map from name to first position.
pub(super) fn check_header(path: &Path, line: u64, columns: &[String]) -> Result<usize, CsvError> {
    let header_error = |problem: String| CsvError::Header {
        path: path.to_path_buf(),
        line,
        problem,
    };
    if let Some(i) = columns.iter().position(String::is_empty) {
        return Err(header_error(format!(
            "header column {} has no name (header: {}); give every column a name, \
             or delete the empty columns",
            i + 1,
            columns.join(", ")
        )));
    }
    if let Some((first, i)) = first_duplicate(columns) {
        return Err(header_error(format!(
            "columns {} and {} are both named '{}'; rename one so every header name is unique",
            first + 1,
            i + 1,
            columns[i]
        )));
    }
    let phone_error = |problem: &str, hint: &str| CsvError::PhoneColumn {
        path: path.to_path_buf(),
        line,
        problem: problem.to_string(),
        columns: columns.to_vec(),
        hint: hint.to_string(),
    };
    let mut phones = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.eq_ignore_ascii_case(PHONE))
        .map(|(i, _)| i);
    match (phones.next(), phones.next()) {
        (Some(i), None) => Ok(i),
        (None, _) => {
            let hint = if columns.len() == 1 && columns[0].contains([';', '\t']) {
                " (the file seems to use ';' or tab separators; munja reads comma-separated files)"
            } else {
                " (rename the column that holds the mobile numbers, e.g. '휴대폰번호', to 'phone')"
            };
            Err(phone_error("a 'phone' column is required", hint))
        }
        (Some(_), Some(_)) => Err(phone_error(
            "more than one column is named 'phone' (names are matched ignoring case)",
            " (keep one 'phone' column and rename the others)",
        )),
    }
}

/// The first name that repeats an earlier one, as (index of the earlier, index of the
/// repeat), in one pass over the names.
pub(super) fn first_duplicate(names: &[String]) -> Option<(usize, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if let Some(&first) = seen.get(name.as_str()) {
            return Some((first, i));
        }
        seen.insert(name, i);
    }
    None
}
