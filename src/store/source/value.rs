//! One value of a source row, read from whichever driver by the column's type: text, whole
//! numbers, decimals (exact, as text), floats, booleans, dates and times. A type munja cannot
//! read is an error that names the column and says how to cast it.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, TypeInfo, ValueRef};

/// A value as read from the source, before the segment rules render it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i128),
    /// An exact decimal (NUMERIC/DECIMAL), as the database wrote it.
    Decimal(String),
    Float(f64),
    Bool(bool),
    Date(NaiveDate),
    Time(NaiveTime),
    /// A date and time without a zone (as stored).
    DateTime(NaiveDateTime),
    /// An instant (PostgreSQL `timestamptz`, MySQL `TIMESTAMP`).
    Timestamp(DateTime<Utc>),
}

/// A column whose type munja cannot read.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "column {column:?} has type {type_name}, which munja cannot read: cast it in the query \
     (PostgreSQL `{column}::text`, MySQL `CAST({column} AS CHAR)`)"
)]
pub struct UnsupportedType {
    pub column: String,
    pub type_name: String,
}

type Decoded = Result<Value, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The values of a PostgreSQL row.
pub fn pg_values(row: &PgRow) -> Result<Vec<Value>, UnsupportedType> {
    decode_row(row, |i, type_name| match type_name {
        "BOOL" => row.try_get(i).map(Value::Bool).map_err(err),
        "INT2" => row
            .try_get::<i16, _>(i)
            .map(|v| Value::Int(v.into()))
            .map_err(err),
        "INT4" => row
            .try_get::<i32, _>(i)
            .map(|v| Value::Int(v.into()))
            .map_err(err),
        "INT8" => row
            .try_get::<i64, _>(i)
            .map(|v| Value::Int(v.into()))
            .map_err(err),
        "FLOAT4" => row
            .try_get::<f32, _>(i)
            .map(|v| Value::Float(v.into()))
            .map_err(err),
        "FLOAT8" => row.try_get(i).map(Value::Float).map_err(err),
        "NUMERIC" => row
            .try_get_raw(i)
            .map_err(err)
            .and_then(|raw| raw.as_bytes().map_err(err))
            .and_then(pg_numeric),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "\"CHAR\"" => {
            row.try_get(i).map(Value::Text).map_err(err)
        }
        "DATE" => row.try_get(i).map(Value::Date).map_err(err),
        "TIME" => row.try_get(i).map(Value::Time).map_err(err),
        "TIMESTAMP" => row.try_get(i).map(Value::DateTime).map_err(err),
        "TIMESTAMPTZ" => row.try_get(i).map(Value::Timestamp).map_err(err),
        _ => Err(String::new()),
    })
}

/// The values of a MySQL/MariaDB row.
pub fn mysql_values(row: &MySqlRow) -> Result<Vec<Value>, UnsupportedType> {
    decode_row(row, |i, type_name| {
        match type_name {
            "BOOLEAN" => row
                .try_get_unchecked::<i64, _>(i)
                .map(|v| Value::Bool(v != 0))
                .map_err(err),
            t if t.ends_with("UNSIGNED") || t == "YEAR" || t == "BIT" => row
                .try_get_unchecked::<u64, _>(i)
                .map(|v| Value::Int(v.into()))
                .map_err(err),
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => row
                .try_get_unchecked::<i64, _>(i)
                .map(|v| Value::Int(v.into()))
                .map_err(err),
            "FLOAT" => row
                .try_get::<f32, _>(i)
                .map(|v| Value::Float(v.into()))
                .map_err(err),
            "DOUBLE" => row.try_get(i).map(Value::Float).map_err(err),
            "DECIMAL" => row.try_get_unchecked(i).map(Value::Decimal).map_err(err),
            "DATE" => row.try_get(i).map(Value::Date).map_err(err),
            "TIME" => row.try_get(i).map(Value::Time).map_err(err),
            "DATETIME" => row.try_get(i).map(Value::DateTime).map_err(err),
            "TIMESTAMP" => row.try_get(i).map(Value::Timestamp).map_err(err),
            // Text, and what the protocol sends as text (ENUM, SET, JSON, binary-collated
            // strings): readable as UTF-8 or refused.
            _ => row.try_get_unchecked(i).map(Value::Text).map_err(err),
        }
    })
}

/// Every value of `row`: NULL as [`Value::Null`], the rest by `decode(index, type name)`; a
/// value it cannot decode is an [`UnsupportedType`] naming the column.
fn decode_row<R: Row>(
    row: &R,
    decode: impl Fn(usize, &str) -> Decoded,
) -> Result<Vec<Value>, UnsupportedType>
where
    usize: sqlx::ColumnIndex<R>,
{
    (0..row.columns().len())
        .map(|i| {
            let col = &row.columns()[i];
            let type_name = col.type_info().name().to_string();
            let raw = row
                .try_get_raw(i)
                .map_err(|_| unsupported(col.name(), &type_name))?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            decode(i, &type_name).map_err(|_| unsupported(col.name(), &type_name))
        })
        .collect()
}

/// The values of a SQLite row, by each value's own storage class.
pub fn sqlite_values(row: &SqliteRow) -> Result<Vec<Value>, UnsupportedType> {
    (0..row.columns().len())
        .map(|i| {
            let col = &row.columns()[i];
            let declared = col.type_info().name().to_ascii_uppercase();
            let raw = row
                .try_get_raw(i)
                .map_err(|_| unsupported(col.name(), &declared))?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            let class = raw.type_info().name().to_string();
            let v: Decoded = match class.as_str() {
                "INTEGER" | "BOOLEAN" if declared == "BOOLEAN" => row
                    .try_get_unchecked::<i64, _>(i)
                    .map(|v| Value::Bool(v != 0))
                    .map_err(err),
                "INTEGER" | "BOOLEAN" => row
                    .try_get_unchecked::<i64, _>(i)
                    .map(|v| Value::Int(v.into()))
                    .map_err(err),
                "REAL" | "NUMERIC" => row.try_get_unchecked(i).map(Value::Float).map_err(err),
                "TEXT" | "DATE" | "TIME" | "DATETIME" => {
                    row.try_get_unchecked(i).map(Value::Text).map_err(err)
                }
                _ => Err(String::new()),
            };
            v.map_err(|_| unsupported(col.name(), &class))
        })
        .collect()
}

fn unsupported(column: &str, type_name: &str) -> UnsupportedType {
    UnsupportedType {
        column: column.to_string(),
        type_name: type_name.to_string(),
    }
}

/// PostgreSQL's binary NUMERIC: ndigits, weight, sign, dscale, then base-10000 digits.
fn pg_numeric(b: &[u8]) -> Decoded {
    let word = |i: usize| -> Result<u16, String> {
        b.get(i * 2..i * 2 + 2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
            .ok_or_else(|| "short NUMERIC value".to_string())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0xC000 => return Ok(Value::Text("NaN".into())),
        0xD000 => return Ok(Value::Text("Infinity".into())),
        0xF000 => return Ok(Value::Text("-Infinity".into())),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |pos: i64| -> u16 {
        usize::try_from(pos)
            .ok()
            .and_then(|p| digits.get(p).copied())
            .unwrap_or(0)
    };
    let mut int = String::new();
    for pos in 0..=weight.max(-1) {
        let d = digit(pos);
        if int.is_empty() {
            if d != 0 {
                int = d.to_string();
            }
        } else {
            int.push_str(&format!("{d:04}"));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut pos = weight + 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(pos)));
        pos += 1;
    }
    frac.truncate(dscale);
    let mut s = if sign == 0x4000 {
        format!("-{int}")
    } else {
        int
    };
    if dscale > 0 {
        s.push('.');
        s.push_str(&frac);
    }
    Ok(Value::Decimal(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(words: &[u16]) -> String {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        match pg_numeric(&bytes).unwrap() {
            Value::Decimal(s) | Value::Text(s) => s,
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn postgres_numerics_are_read_exactly() {
        // 12345.678: digits 1, 2345, 6780; weight 1; dscale 3.
        assert_eq!(numeric(&[3, 1, 0, 3, 1, 2345, 6780]), "12345.678");
        // -0.05: digit 500 at weight -1; dscale 2.
        assert_eq!(numeric(&[1, (-1i16) as u16, 0x4000, 2, 500]), "-0.05");
        // 120000: digits 12; weight 1 (12 * 10000).
        assert_eq!(numeric(&[1, 1, 0, 0, 12]), "120000");
        assert_eq!(numeric(&[0, 0, 0, 0]), "0");
        assert_eq!(numeric(&[0, 0, 0xC000, 0]), "NaN");
    }
}
