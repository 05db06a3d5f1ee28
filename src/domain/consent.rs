//! The age of ad consent (`ad_consent_at`): how a consent time is read from a cell, and which
//! ad recipients it suppresses. CSV imports and SQL segments both read it here, so a date
//! means the same instant whatever it came from.
//!
//! A consent older than the cutoff (the read's `as_of` minus `policy.ad_consent_max_age_days`)
//! is `consent_expired`; an empty cell in a segment that has the column is `consent_missing`.
//! Only ads are checked, and a maximum age of 0 turns the check off.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The optional column with the time the recipient last gave (or confirmed) ad consent.
pub const AD_CONSENT_COLUMN: &str = "ad_consent_at";

/// Suppression reason of an ad recipient whose consent is older than the policy allows.
pub const CONSENT_EXPIRED: &str = "consent_expired";
/// Suppression reason of an ad recipient with an `ad_consent_at` column but no date in it.
pub const CONSENT_MISSING: &str = "consent_missing";

/// Ad consents given before this instant are expired: `as_of` minus `max_age_days`; `None`
/// when nothing is checked (not an ad, or no maximum age).
pub fn cutoff(max_age_days: Option<u32>, ad: bool, as_of: DateTime<Utc>) -> Option<DateTime<Utc>> {
    max_age_days
        .filter(|_| ad)
        .map(|days| as_of - chrono::Duration::days(i64::from(days)))
}

/// Whether `column` is the consent column (case-insensitive, as every special column).
pub fn is_consent_column(column: &str) -> bool {
    column.eq_ignore_ascii_case(AD_CONSENT_COLUMN)
}

/// A consent cell as text: `None` when empty, else the instant it names (a date or a time
/// without offset is local time in `tz`), or what is wrong with it.
pub fn parse_cell(text: &str, tz: Tz) -> Result<Option<DateTime<Utc>>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    parse_time(t, tz).map(Some).ok_or_else(|| {
        format!(
            "{AD_CONSENT_COLUMN} {t:?} is not a date: expected YYYY-MM-DD, \
             YYYY-MM-DD HH:MM:SS or an RFC 3339 time"
        )
    })
}

/// A date-time without offset as local time in `tz` (the earlier of an ambiguous hour; a time
/// skipped by a DST gap is read as UTC).
pub fn local(t: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    tz.from_local_datetime(&t)
        .earliest()
        .map_or_else(|| t.and_utc(), |l| l.with_timezone(&Utc))
}

/// Midnight of `d` in `tz`.
pub fn local_date(d: NaiveDate, tz: Tz) -> DateTime<Utc> {
    local(d.and_time(NaiveTime::MIN), tz)
}

/// RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]`, `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DD`.
fn parse_time(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(local(t, tz));
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(|d| local_date(d, tz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_read_in_the_policy_timezone() {
        let seoul = chrono_tz::Asia::Seoul;
        let at = |s: &str| parse_cell(s, seoul).unwrap().map(|t| t.to_rfc3339());
        assert_eq!(at(" "), None);
        assert_eq!(
            at("2024-03-01").as_deref(),
            Some("2024-02-29T15:00:00+00:00")
        );
        assert_eq!(
            at("2024-03-01 10:00:00").as_deref(),
            Some("2024-03-01T01:00:00+00:00")
        );
        assert_eq!(
            at("2024-03-01T10:00:00Z").as_deref(),
            Some("2024-03-01T10:00:00+00:00")
        );
        let e = parse_cell("01/03/2024", seoul).unwrap_err();
        assert!(e.contains("\"01/03/2024\" is not a date"), "{e}");
    }

    #[test]
    fn only_ads_with_a_maximum_age_have_a_cutoff() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            cutoff(Some(730), true, now)
                .map(|t| t.to_rfc3339())
                .as_deref(),
            Some("2024-01-02T00:00:00+00:00")
        );
        assert_eq!(cutoff(Some(730), false, now), None);
        assert_eq!(cutoff(None, true, now), None);
    }
}
