//! The text of a segment query, checked before it goes anywhere near a database: exactly one
//! statement that reads (`SELECT`, `WITH`, `VALUES`, `TABLE`), and every `:as_of` outside
//! string literals, quoted identifiers and comments rewritten to the driver's placeholder, so
//! the value is always bound as a parameter and never spliced into the text.

/// How a driver spells a positional parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// PostgreSQL: `$1` (every `:as_of` is the same parameter).
    Dollar,
    /// MySQL/MariaDB and SQLite: `?` (one bound value per occurrence).
    Question,
}

/// A query ready to run: its text with placeholders, and how many values to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub sql: String,
    /// How many times the `:as_of` value is bound (0 when the query does not use it).
    pub binds: usize,
}

/// Why a query text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryTextError {
    #[error("the query is empty: give one SELECT statement")]
    Empty,
    #[error(
        "the query holds more than one statement (a `;` at byte {at} is followed by more SQL): \
         a segment is exactly one SELECT; remove everything after the first statement"
    )]
    MultipleStatements { at: usize },
    #[error(
        "the query starts with {found:?}: a segment query must read, not write; start it with \
         SELECT or WITH (munja also runs it in a read-only transaction)"
    )]
    NotARead { found: String },
    #[error(
        "the query has an unterminated {what}: close it (a quote, a quoted name or a /* comment)"
    )]
    Unterminated { what: &'static str },
}

/// The parameter name a query may use for the run's time.
pub const AS_OF: &str = ":as_of";

/// First words a read may begin with.
const READ_KEYWORDS: &[&str] = &["select", "with", "values", "table"];

/// Checks `text` and rewrites its `:as_of` to `placeholder`.
pub fn prepare(text: &str, placeholder: Placeholder) -> Result<Prepared, QueryTextError> {
    let body = statement_body(text)?;
    let first = first_word(body);
    if first.is_empty() {
        return Err(QueryTextError::Empty);
    }
    if !READ_KEYWORDS.contains(&first.to_ascii_lowercase().as_str()) {
        return Err(QueryTextError::NotARead {
            found: first.to_string(),
        });
    }
    let mut sql = String::with_capacity(body.len());
    let mut binds = 0;
    let mut last = 0;
    for at in code_positions(body)?
        .into_iter()
        .filter(|&i| is_as_of_at(body, i))
    {
        sql.push_str(&body[last..at]);
        binds += 1;
        sql.push_str(match placeholder {
            Placeholder::Dollar => "$1",
            Placeholder::Question => "?",
        });
        last = at + AS_OF.len();
    }
    sql.push_str(&body[last..]);
    if placeholder == Placeholder::Dollar {
        binds = binds.min(1);
    }
    Ok(Prepared { sql, binds })
}

/// The statement without a trailing `;` (and what follows it, if only blanks and comments);
/// any other `;` outside literals and comments means a second statement.
fn statement_body(text: &str) -> Result<&str, QueryTextError> {
    let semis: Vec<usize> = code_positions(text)?
        .into_iter()
        .filter(|&i| text.as_bytes()[i] == b';')
        .collect();
    let Some(&first) = semis.first() else {
        return Ok(text.trim());
    };
    let rest = &text[first + 1..];
    let rest_has_code = code_positions(rest)?
        .into_iter()
        .any(|i| !rest.as_bytes()[i].is_ascii_whitespace() && rest.as_bytes()[i] != b';');
    if rest_has_code {
        return Err(QueryTextError::MultipleStatements { at: first });
    }
    Ok(text[..first].trim())
}

/// The first word of the code (comments skipped), `(` counting as a separator.
fn first_word(text: &str) -> &str {
    let Ok(code) = code_positions(text) else {
        return "";
    };
    let Some(&start) = code
        .iter()
        .find(|&&i| !(text.as_bytes()[i].is_ascii_whitespace() || text.as_bytes()[i] == b'('))
    else {
        return "";
    };
    let end = text[start..]
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(text.len(), |n| start + n);
    &text[start..end]
}

/// Whether `:as_of` starts at byte `i` as a whole name (not `::as_of`, not `:as_of_day`).
fn is_as_of_at(text: &str, i: usize) -> bool {
    let b = text.as_bytes();
    text[i..].starts_with(AS_OF)
        && (i == 0 || b[i - 1] != b':')
        && b.get(i + AS_OF.len())
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
}

/// Byte offsets of the characters that are SQL code: outside '…' and "…" and `…` quotes,
/// `--` and `#` line comments, `/* */` comments and PostgreSQL `$tag$…$tag$` strings.
fn code_positions(text: &str) -> Result<Vec<usize>, QueryTextError> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i = skip_quoted(b, i, q)?;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line(b, i),
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..]
                    .find("*/")
                    .ok_or(QueryTextError::Unterminated { what: "comment" })?;
                i = i + 2 + end + 2;
            }
            b'$' => match dollar_tag(text, i) {
                Some(tag) => {
                    let body = i + tag.len();
                    let end = text[body..]
                        .find(tag)
                        .ok_or(QueryTextError::Unterminated { what: "$$ string" })?;
                    i = body + end + tag.len();
                }
                None => {
                    out.push(i);
                    i += 1;
                }
            },
            _ => {
                out.push(i);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The end (exclusive) of a quoted run starting at `start`; a doubled quote is an escaped one,
/// and a backslash escapes the next byte in '…' (MySQL's default).
fn skip_quoted(b: &[u8], start: usize, q: u8) -> Result<usize, QueryTextError> {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && q == b'\'' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(QueryTextError::Unterminated {
        what: if q == b'\'' {
            "string literal"
        } else {
            "quoted name"
        },
    })
}

fn skip_line(b: &[u8], start: usize) -> usize {
    b[start..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |n| start + n + 1)
}

/// `$tag$` (or `$$`) opening a PostgreSQL dollar-quoted string at `i`; `$1` is a parameter.
fn dollar_tag(text: &str, i: usize) -> Option<&str> {
    let rest = &text[i + 1..];
    let close = rest.find('$')?;
    let tag = &rest[..close];
    let valid = tag.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !tag.starts_with(|c: char| c.is_ascii_digit());
    valid.then(|| &text[i..i + close + 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Prepared, QueryTextError> {
        prepare(s, Placeholder::Question)
    }

    #[test]
    fn as_of_is_rewritten_outside_literals_only() {
        let p = q(
            "SELECT phone, ':as_of' AS t FROM c WHERE joined < :as_of -- :as_of\n\
                   AND /* :as_of */ left_at > :as_of;",
        )
        .unwrap();
        assert_eq!(
            p.sql,
            "SELECT phone, ':as_of' AS t FROM c WHERE joined < ? -- :as_of\n\
                   AND /* :as_of */ left_at > ?"
        );
        assert_eq!(p.binds, 2);
        let p = prepare(
            "SELECT 1 WHERE a < :as_of AND b < :as_of",
            Placeholder::Dollar,
        )
        .unwrap();
        assert_eq!(p.sql, "SELECT 1 WHERE a < $1 AND b < $1");
        assert_eq!(p.binds, 1);
        let p = q("SELECT x::as_of, :as_of_day FROM t").unwrap();
        assert_eq!(p.binds, 0, "{}", p.sql);
    }

    #[test]
    fn more_than_one_statement_is_refused() {
        assert_eq!(
            q("SELECT 1; DELETE FROM customers"),
            Err(QueryTextError::MultipleStatements { at: 8 })
        );
        assert!(q("SELECT ';' AS semi;  -- done\n ;").is_ok());
        assert!(q("SELECT $$;$$ AS s").is_ok());
        assert_eq!(q("  ;"), Err(QueryTextError::Empty));
    }

    #[test]
    fn only_reads_are_accepted() {
        for bad in [
            "DELETE FROM c",
            "update c set x = 1",
            "/* hi */ DROP TABLE c",
            "CALL p()",
        ] {
            assert!(
                matches!(q(bad), Err(QueryTextError::NotARead { .. })),
                "{bad}"
            );
        }
        for good in [
            "select 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "(SELECT 1)",
        ] {
            assert!(q(good).is_ok(), "{good}");
        }
        assert!(matches!(
            q("SELECT 'open"),
            Err(QueryTextError::Unterminated { .. })
        ));
    }
}
