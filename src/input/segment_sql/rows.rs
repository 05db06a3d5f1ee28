//! One source row to one segment member, by the same rules as a CSV row: the row is rendered
//! into a [`crate::input::csvin::Row`] (every value as text, rendered sensibly) and handed to
//! [`crate::input::import::new_member`], so phone normalisation, rejection reasons, `night_consent` and
//! template variables are the CSV import's own. What only SQL segments have is here: the
//! rendering of typed values and the age of `ad_consent_at`.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::domain::consent::{self, local, local_date};
use crate::domain::model::NewMember;
use crate::input::csvin::Row;
use crate::input::import::{NIGHT_CONSENT_COLUMN, Rejected, new_member};
use crate::store::source::{SourceRow, Value};

pub use crate::domain::consent::{AD_CONSENT_COLUMN, CONSENT_EXPIRED, CONSENT_MISSING};

/// What the rules need besides the row.
#[derive(Debug, Clone)]
pub struct Rules {
    pub phone_column: String,
    pub timezone: Tz,
    /// Ad consents given before this instant are expired; `None`: no consent check (not an ad,
    /// or `policy.ad_consent_max_age_days = 0`).
    pub consent_cutoff: Option<DateTime<Utc>>,
}

/// Where the special columns of a result are, found once from its column names.
#[derive(Debug, Clone)]
pub struct Layout {
    phone: usize,
    consent: Option<usize>,
    /// Template variables: every column but the phone, `night_consent` and `ad_consent_at`.
    pub variables: Vec<String>,
}

impl Layout {
    /// Finds the phone column (case-insensitive) or says which columns there are.
    pub fn new(columns: &[String], rules: &Rules) -> anyhow::Result<Layout> {
        let find = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
        let Some(phone) = find(&rules.phone_column) else {
            anyhow::bail!(
                "the query returns no column named {:?} (its columns: {}); select the mobile \
                 number as {:?} (e.g. `SELECT mobile AS phone, …`) or define the segment with \
                 --phone-column",
                rules.phone_column,
                columns.join(", "),
                rules.phone_column
            );
        };
        let consent = find(AD_CONSENT_COLUMN);
        let variables = columns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                *i != phone && Some(*i) != consent && !c.eq_ignore_ascii_case(NIGHT_CONSENT_COLUMN)
            })
            .map(|(_, c)| c.clone())
            .collect();
        Ok(Layout {
            phone,
            consent,
            variables,
        })
    }
}

/// A row that became a member, with its suppression (if any) decided by the consent rule.
#[derive(Debug, Clone)]
pub struct Converted {
    pub member: NewMember,
    pub suppress: Option<&'static str>,
}

/// Applies the segment rules to row number `seq` (1-based).
pub fn convert(
    row: &SourceRow,
    seq: u64,
    layout: &Layout,
    rules: &Rules,
) -> Result<Converted, Rejected> {
    let mut fields = Vec::with_capacity(row.values.len());
    for (i, (name, value)) in row.columns.iter().zip(&row.values).enumerate() {
        if i != layout.phone && Some(i) != layout.consent {
            fields.push((name.clone(), render(value, rules.timezone)));
        }
    }
    let csv_row = Row {
        line: seq,
        phone: render_phone(&row.values[layout.phone]),
        fields,
    };
    let member = new_member(csv_row, rules.timezone)?;
    let suppress = match (rules.consent_cutoff, layout.consent) {
        (Some(cutoff), Some(i)) => {
            consent_state(&row.values[i], cutoff, rules.timezone).map_err(|detail| Rejected {
                line: seq,
                end_line: seq,
                reason: "invalid_ad_consent_at".into(),
                detail,
            })?
        }
        _ => None,
    };
    Ok(Converted { member, suppress })
}

/// `consent_expired` for a consent older than `cutoff`, `consent_missing` for none.
fn consent_state(v: &Value, cutoff: DateTime<Utc>, tz: Tz) -> Result<Option<&'static str>, String> {
    let at = match v {
        Value::Null => return Ok(Some(CONSENT_MISSING)),
        Value::Timestamp(t) => *t,
        Value::DateTime(t) => local(*t, tz),
        Value::Date(d) => local_date(*d, tz),
        Value::Text(t) => match consent::parse_cell(t, tz)? {
            Some(at) => at,
            None => return Ok(Some(CONSENT_MISSING)),
        },
        other => {
            return Err(format!(
                "{AD_CONSENT_COLUMN} {:?} is not a date: select a date or timestamp column",
                render(other, tz)
            ));
        }
    };
    Ok((at < cutoff).then_some(CONSENT_EXPIRED))
}

/// The phone value as text; a number column that lost the leading 0 (`1012345678`) gets it back.
fn render_phone(v: &Value) -> String {
    match v {
        Value::Int(n) => {
            let s = n.to_string();
            if s.starts_with('1') && (s.len() == 9 || s.len() == 10) {
                format!("0{s}")
            } else {
                s
            }
        }
        other => render(other, Tz::UTC),
    }
}

/// A value as a template variable: numbers without noise (`1500`, not `1500.00`), booleans as
/// `true`/`false`, dates `YYYY-MM-DD`, times to the second in `policy.timezone`, NULL empty.
pub fn render(v: &Value, tz: Tz) -> String {
    match v {
        Value::Null => String::new(),
        Value::Text(s) => s.trim().to_string(),
        Value::Int(n) => n.to_string(),
        Value::Decimal(s) => trim_decimal(s),
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => {
            format!("{f:.0}")
        }
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Date(d) => d.format("%Y-%m-%d").to_string(),
        Value::Time(t) => t.format("%H:%M:%S").to_string(),
        Value::DateTime(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        Value::Timestamp(t) => t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string(),
    }
}

/// `1500.00` → `1500`, `12.50` → `12.5`.
fn trim_decimal(s: &str) -> String {
    if !s.contains('.') {
        return s.to_string();
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::NaiveDate;

    use super::*;

    fn rules(cutoff: Option<&str>) -> Rules {
        Rules {
            phone_column: "phone".into(),
            timezone: chrono_tz::Asia::Seoul,
            consent_cutoff: cutoff.map(|c| c.parse().unwrap()),
        }
    }

    fn row(values: Vec<Value>) -> SourceRow {
        let columns: Arc<[String]> = ["phone", "name", "points", "night_consent", "ad_consent_at"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        SourceRow { columns, values }
    }

    #[test]
    fn typed_values_become_the_same_member_as_a_csv_row() {
        let r = rules(Some("2024-01-01T00:00:00Z"));
        let row = row(vec![
            Value::Text("+82 10-1234-5678".into()),
            Value::Text("김민준".into()),
            Value::Decimal("1500.00".into()),
            Value::Bool(true),
            Value::Date(NaiveDate::from_ymd_opt(2025, 3, 1).unwrap()),
        ]);
        let layout = Layout::new(&row.columns, &r).unwrap();
        assert_eq!(layout.variables, ["name", "points"]);
        let c = convert(&row, 1, &layout, &r).unwrap();
        assert_eq!(c.member.phone.as_str(), "01012345678");
        assert!(c.member.night_consent);
        assert_eq!(c.member.vars, r#"{"name":"김민준","points":"1500"}"#);
        assert_eq!(c.suppress, None);
    }

    #[test]
    fn old_or_missing_ad_consent_is_suppressed() {
        let r = rules(Some("2024-01-01T00:00:00Z"));
        let mk = |consent: Value| {
            row(vec![
                Value::Int(1012345678),
                Value::Null,
                Value::Float(3.0),
                Value::Int(0),
                consent,
            ])
        };
        let layout = Layout::new(&mk(Value::Null).columns, &r).unwrap();
        let state = |v: Value| convert(&mk(v), 3, &layout, &r).map(|c| c.suppress);
        assert_eq!(state(Value::Null).unwrap(), Some(CONSENT_MISSING));
        assert_eq!(
            state(Value::Text("2023-12-31".into())).unwrap(),
            Some(CONSENT_EXPIRED)
        );
        assert_eq!(
            state(Value::Text("2024-06-01 10:00:00".into())).unwrap(),
            None
        );
        let bad = state(Value::Text("soon".into())).unwrap_err();
        assert_eq!(
            (bad.reason.as_str(), bad.line),
            ("invalid_ad_consent_at", 3)
        );
        let c = convert(&mk(Value::Null), 3, &layout, &rules(None)).unwrap();
        assert_eq!(c.suppress, None, "no check when not an ad");
        assert_eq!(c.member.phone.as_str(), "01012345678");
        assert_eq!(c.member.vars, r#"{"name":"","points":"3"}"#);
    }

    #[test]
    fn a_missing_phone_column_names_the_columns() {
        let cols = vec!["mobile".to_string(), "name".to_string()];
        let e = Layout::new(&cols, &rules(None)).unwrap_err().to_string();
        assert!(
            e.contains("no column named \"phone\" (its columns: mobile, name)"),
            "{e}"
        );
    }
}
