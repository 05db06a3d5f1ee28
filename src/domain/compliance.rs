//! Korean advertising law applied to message text (정보통신망법 제50조): the
//! `(광고)` header and free opt-out footer munja adds, detection of templates
//! that write their own, the final check on every rendered ad, the night
//! rule (quiet hours in Korea time) and parsing of consent columns.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The exact header every ad must start with.
pub const AD_HEADER: &str = "(광고)";
/// Night window in which ads need a separate night consent (Asia/Seoul).
pub const DEFAULT_QUIET_HOURS: &str = "21:00-08:00";

/// The free opt-out footer, e.g. `무료수신거부 080-600-5653`.
pub fn ad_footer(optout_display: &str) -> String {
    format!("무료수신거부 {}", optout_display.trim())
}

/// The lawful ad: `(광고) {brand}`, the body without surrounding blank lines,
/// and the opt-out footer.
pub fn frame_ad(body: &str, brand: &str, optout_display: &str) -> String {
    format!(
        "{AD_HEADER} {}\n{}\n{}",
        brand.trim(),
        trim_blank_lines(body),
        ad_footer(optout_display)
    )
}

/// `body` without leading blank lines and trailing whitespace; the indentation of its first
/// line of content is kept.
pub fn trim_blank_lines(body: &str) -> &str {
    let body = body.trim_end();
    let first_content = body
        .char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(body.len(), |(i, _)| i);
    let body_start = body[..first_content].rfind('\n').map_or(0, |i| i + 1);
    &body[body_start..]
}

/// What kind of ad boilerplate a template wrote itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdMarkerKind {
    Header,
    OptOutFooter,
}

/// Ad boilerplate found in a template; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdMarker {
    pub found: String,
    pub line: usize,
    pub kind: AdMarkerKind,
}

impl fmt::Display for AdMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            AdMarkerKind::Header => "its own ad header",
            AdMarkerKind::OptOutFooter => "its own opt-out text",
        };
        write!(
            f,
            "line {} of the template writes {what} {:?}: munja adds the \"(광고) <brand>\" \
             header and the \"무료수신거부 080-…\" footer itself, so the template must contain \
             only the message body; remove it",
            self.line, self.found
        )
    }
}

impl std::error::Error for AdMarker {}

const OPENERS: &str = "([{<（［｛＜【〔〈《「『";
const CLOSERS: &str = ")]}>）］｝＞】〕〉》」』";

/// Finds the first header (`광고` in any brackets, spaces allowed) or opt-out
/// text (`수신거부`, `무료거부`, with or without a space, or an `080` number)
/// that a template wrote itself.
pub fn find_ad_marker(template_source: &str) -> Option<AdMarker> {
    template_source.lines().enumerate().find_map(|(i, line)| {
        let marker = |kind, found: &str| AdMarker {
            found: found.to_string(),
            line: i + 1,
            kind,
        };
        if let Some(found) = find_bracketed_ad(line) {
            return Some(marker(AdMarkerKind::Header, found));
        }
        find_spaced(line, "수신", "거부")
            .or_else(|| find_spaced(line, "무료", "거부"))
            .or_else(|| find_080(line))
            .map(|found| marker(AdMarkerKind::OptOutFooter, found))
    })
}

fn find_bracketed_ad(line: &str) -> Option<&str> {
    line.char_indices()
        .filter(|&(_, c)| OPENERS.contains(c))
        .find_map(|(start, open)| {
            let rest = line[start + open.len_utf8()..].trim_start();
            let rest = rest.strip_prefix('광')?.trim_start();
            let rest = rest.strip_prefix('고')?.trim_start();
            let close = rest.chars().next().filter(|&c| CLOSERS.contains(c))?;
            let end = line.len() - rest.len() + close.len_utf8();
            Some(&line[start..end])
        })
}

/// `first`, optional whitespace, `second`.
fn find_spaced<'a>(line: &'a str, first: &str, second: &str) -> Option<&'a str> {
    line.match_indices(first).find_map(|(start, _)| {
        let rest = line[start + first.len()..].trim_start();
        rest.starts_with(second)
            .then(|| &line[start..line.len() - rest.len() + second.len()])
    })
}

/// `080` (not inside a longer number), an optional `-`, `.` or space, then
/// digits: the whole number is returned.
fn find_080(line: &str) -> Option<&str> {
    line.match_indices("080").find_map(|(start, _)| {
        let before = line[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_digit() || c == ',' || c == '.') {
            return None;
        }
        let after = &line[start + 3..];
        let after = after.strip_prefix(['-', '.', ' ']).unwrap_or(after);
        if !after.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let run = after
            .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.'))
            .unwrap_or(after.len());
        Some(&line[start..line.len() - after.len() + run])
    })
}

/// A rendered ad that breaks the advertising law.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdLawViolation {
    #[error("the ad does not start with exactly \"(광고)\"")]
    MissingHeader,
    #[error("the \"(광고)\" header is not followed by the sender's brand name")]
    HeaderNotFollowedByBrand,
    #[error(
        "the ad does not end with a free opt-out line (e.g. \"무료수신거부 080-600-5653\") \
         naming the opt-out number"
    )]
    MissingOptOutFooter,
}

impl AdLawViolation {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AdLawViolation::MissingHeader => "missing_ad_header",
            AdLawViolation::HeaderNotFollowedByBrand => "header_not_followed_by_brand",
            AdLawViolation::MissingOptOutFooter => "missing_opt_out_footer",
        }
    }
}

/// Last line of defence, run on every rendered ad: it starts with exactly
/// `(광고)`, optional whitespace and the brand, and its last non-blank line
/// contains 무료, 거부 and the digits of the opt-out number.
pub fn check_rendered_ad(
    text: &str,
    brand: &str,
    optout_display: &str,
) -> Result<(), AdLawViolation> {
    let after_header = text
        .strip_prefix(AD_HEADER)
        .ok_or(AdLawViolation::MissingHeader)?;
    let brand = brand.trim();
    if brand.is_empty() || !after_header.trim_start().starts_with(brand) {
        return Err(AdLawViolation::HeaderNotFollowedByBrand);
    }
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let optout_digits = digits(optout_display);
    let last_line = text.trim_end().lines().next_back().unwrap_or("");
    let footer_ok = !optout_digits.is_empty()
        && last_line.contains("무료")
        && last_line.contains("거부")
        && digits(last_line).contains(&optout_digits);
    if !footer_ok {
        return Err(AdLawViolation::MissingOptOutFooter);
    }
    Ok(())
}

/// A daily window of local time in which ads are held; it may wrap midnight.
/// `start` is inclusive, `end` exclusive. The rule is switched off only by writing `off`
/// ([`QuietHours::OFF`], an empty window); a window that starts and ends at the same time is
/// refused, because it reads like a rule but holds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

/// A quiet-hours string that is neither `HH:MM-HH:MM` nor `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuietHoursParseError {
    #[error(
        "invalid quiet hours {0:?}: expected HH:MM-HH:MM (24-hour clock, Korea time), \
         e.g. 21:00-08:00, or \"off\" to turn the night rule off"
    )]
    Invalid(String),
    #[error(
        "quiet hours {0:?} start and end at the same time, which is no night rule at all; \
         write \"off\" to turn the night rule off, or a real window such as \"21:00-08:00\""
    )]
    Empty(String),
}

impl FromStr for QuietHours {
    type Err = QuietHoursParseError;

    /// `HH:MM-HH:MM`, `HH:MM:SS-HH:MM:SS`, or `off` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(QuietHours::OFF);
        }
        let err = || QuietHoursParseError::Invalid(s.to_string());
        let time = |t: &str| {
            let t = t.trim();
            NaiveTime::parse_from_str(t, "%H:%M:%S")
                .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
                .map_err(|_| err())
        };
        let (start, end) = s.split_once('-').ok_or_else(err)?;
        let (start, end) = (time(start)?, time(end)?);
        if start == end {
            return Err(QuietHoursParseError::Empty(s.to_string()));
        }
        Ok(QuietHours { start, end })
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        let show = |t: NaiveTime| match t.second() {
            0 => t.format("%H:%M"),
            _ => t.format("%H:%M:%S"),
        };
        write!(f, "{}-{}", show(self.start), show(self.end))
    }
}

impl QuietHours {
    /// No night rule (`quiet_hours = "off"`): the empty window.
    pub const OFF: QuietHours = QuietHours {
        start: NaiveTime::MIN,
        end: NaiveTime::MIN,
    };

    /// Whether this is [`QuietHours::OFF`].
    pub fn is_off(&self) -> bool {
        self.start == self.end
    }

    /// Whether the local time `t` falls in the window.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// Whether `now` is inside the window in the time zone `tz`.
    pub fn is_quiet_at(&self, tz: Tz, now: DateTime<Utc>) -> bool {
        self.contains(now.with_timezone(&tz).time())
    }

    /// When the window next ends (`now` when it is not quiet).
    pub fn next_open(&self, tz: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
        let local = now.with_timezone(&tz).naive_local();
        if !self.contains(local.time()) {
            return now;
        }
        let mut date = local.date();
        if self.start > self.end && local.time() >= self.start {
            date = date.succ_opt().unwrap_or(date);
        }
        let end = date.and_time(self.end);
        // A DST gap may skip the end time: take the first local time after it.
        (0..=180)
            .find_map(|m| {
                tz.from_local_datetime(&(end + TimeDelta::minutes(m)))
                    .earliest()
            })
            .map_or(now, |t| t.with_timezone(&Utc).max(now))
    }
}

/// Parses a consent cell: true/false, Y/N, yes/no, 1/0, 동의/미동의
/// (case-insensitive, trimmed); an empty cell means no consent.
pub fn parse_consent(value: &str) -> Result<bool, String> {
    match value.trim().to_lowercase().as_str() {
        "true" | "y" | "yes" | "1" | "동의" => Ok(true),
        "" | "false" | "n" | "no" | "0" | "미동의" => Ok(false),
        _ => Err(format!(
            "invalid consent value {value:?}: expected one of true/false, Y/N, yes/no, 1/0, \
             동의/미동의 (an empty cell means no consent)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTOUT: &str = "080-600-5653";

    #[test]
    fn frames_and_checks_ads() {
        let ad = frame_ad("\n  \n  봄 세일 50%\n둘째 줄\n\n", " 토스 ", OPTOUT);
        assert_eq!(
            ad,
            "(광고) 토스\n  봄 세일 50%\n둘째 줄\n무료수신거부 080-600-5653"
        );
        assert_eq!(check_rendered_ad(&ad, "토스", OPTOUT), Ok(()));
        assert_eq!(ad_footer(OPTOUT), "무료수신거부 080-600-5653");
        assert_eq!(trim_blank_lines("\r\n \n  본문\n끝 \n\n"), "  본문\n끝");
        assert_eq!(trim_blank_lines(" \n\t\n"), "");
        assert_eq!(
            check_rendered_ad(&format!("{ad}\n \n"), "토스", OPTOUT),
            Ok(())
        );
        let other_brand = "(광고)토스\n본문\n무료거부 0806005653";
        assert_eq!(check_rendered_ad(other_brand, "토스", OPTOUT), Ok(()));
    }

    #[test]
    fn rendered_ad_violations() {
        use AdLawViolation::*;
        let cases = [
            (
                "[광고] 토스\n본문\n무료수신거부 080-600-5653",
                MissingHeader,
            ),
            (
                " (광고) 토스\n본문\n무료수신거부 080-600-5653",
                MissingHeader,
            ),
            (
                "(광 고) 토스\n본문\n무료수신거부 080-600-5653",
                MissingHeader,
            ),
            (
                "(광고) 당근\n본문\n무료수신거부 080-600-5653",
                HeaderNotFollowedByBrand,
            ),
            ("(광고) 토스\n본문", MissingOptOutFooter),
            (
                "(광고) 토스\n무료수신거부 080-600-5653\n본문",
                MissingOptOutFooter,
            ),
            (
                "(광고) 토스\n본문\n무료수신거부 080-600-5654",
                MissingOptOutFooter,
            ),
            (
                "(광고) 토스\n본문\n수신거부 080-600-5653",
                MissingOptOutFooter,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                check_rendered_ad(text, "토스", OPTOUT),
                Err(expected),
                "{text}"
            );
        }
        assert_eq!(
            check_rendered_ad("(광고) 토스\n무료수신거부", "토스", ""),
            Err(MissingOptOutFooter)
        );
        assert_eq!(MissingHeader.code(), "missing_ad_header");
        assert_eq!(
            HeaderNotFollowedByBrand.code(),
            "header_not_followed_by_brand"
        );
        assert_eq!(MissingOptOutFooter.code(), "missing_opt_out_footer");
    }

    #[test]
    fn finds_header_markers() {
        for header in [
            "(광고)",
            "[광고]",
            "(광 고)",
            "( 광고 )",
            "<광고>",
            "【광고】",
            "（광고）",
        ] {
            let source = format!("안녕하세요\n{header} 토스\n본문");
            let marker = find_ad_marker(&source).unwrap();
            assert_eq!(
                marker,
                AdMarker {
                    found: header.to_string(),
                    line: 2,
                    kind: AdMarkerKind::Header
                }
            );
        }
    }

    #[test]
    fn finds_optout_markers() {
        let cases = [
            ("수신거부는 여기로", "수신거부"),
            ("수신 거부", "수신 거부"),
            ("무료거부 안내", "무료거부"),
            ("무료 거부", "무료 거부"),
            ("전화 080-600-5653 으로", "080-600-5653"),
            ("전화:0806005653", "0806005653"),
        ];
        for (line, found) in cases {
            let marker = find_ad_marker(&format!("본문\n\n{line}")).unwrap();
            assert_eq!(marker.kind, AdMarkerKind::OptOutFooter, "{line}");
            assert_eq!((marker.found.as_str(), marker.line), (found, 3), "{line}");
        }
    }

    #[test]
    fn plain_bodies_have_no_marker() {
        for body in [
            "광고 문의는 1588-1234",
            "{{ name }}님, 봄 세일!",
            "010-8080-1234로 연락",
            "가격 1,080,000원",
            "(광고 아님)",
            "080 번 버스",
        ] {
            assert_eq!(find_ad_marker(body), None, "{body}");
        }
        let marker = find_ad_marker("(광고) 토스").unwrap();
        let msg = marker.to_string();
        assert!(
            msg.contains("line 1") && msg.contains("only the message body"),
            "{msg}"
        );
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn quiet_hours_parse_and_display() {
        let q: QuietHours = DEFAULT_QUIET_HOURS.parse().unwrap();
        assert_eq!(q.to_string(), "21:00-08:00");
        let q: QuietHours = " 22:30:15 - 07:00:00 ".parse().unwrap();
        assert_eq!(q.to_string(), "22:30:15-07:00");
        assert_eq!(q.to_string().parse(), Ok(q));
        for bad in [
            "",
            "21:00",
            "21-08",
            "25:00-08:00",
            "21:00-08:00-09:00",
            "9pm-8am",
        ] {
            let err = bad.parse::<QuietHours>().unwrap_err();
            assert!(err.to_string().contains("HH:MM-HH:MM"), "{bad}");
        }
    }

    #[test]
    fn equal_start_and_end_is_refused_and_off_turns_the_rule_off() {
        for same in ["21:00-21:00", "00:00-00:00", "08:00:00-08:00"] {
            let err = same.parse::<QuietHours>().unwrap_err().to_string();
            assert!(
                err.contains("same time") && err.contains("\"off\""),
                "{same}: {err}"
            );
        }
        for off in ["off", " OFF ", "Off"] {
            let q: QuietHours = off.parse().unwrap();
            assert_eq!(q, QuietHours::OFF);
            assert_eq!(q.to_string(), "off");
            assert_eq!(q.to_string().parse(), Ok(q));
        }
        let seoul = chrono_tz::Asia::Seoul;
        let now = utc("2026-03-08T14:00:00Z");
        assert!(!QuietHours::OFF.is_quiet_at(seoul, now));
        assert_eq!(QuietHours::OFF.next_open(seoul, now), now);
    }

    #[test]
    fn contains_handles_wrap_and_empty() {
        let t = |s: &str| NaiveTime::parse_from_str(s, "%H:%M:%S").unwrap();
        let night: QuietHours = "21:00-08:00".parse().unwrap();
        assert!(night.contains(t("21:00:00")));
        assert!(night.contains(t("00:00:00")));
        assert!(night.contains(t("07:59:59")));
        assert!(!night.contains(t("08:00:00")));
        assert!(!night.contains(t("20:59:59")));
        let day: QuietHours = "13:00-14:00".parse().unwrap();
        assert!(day.contains(t("13:00:00")) && !day.contains(t("14:00:00")));
        let off: QuietHours = "off".parse().unwrap();
        assert!(off.is_off() && !night.is_off());
        assert!(!off.contains(t("00:00:00")) && !off.contains(t("23:00:00")));
    }

    #[test]
    fn seoul_night_rule_from_utc() {
        let seoul = chrono_tz::Asia::Seoul; // UTC+9
        let night: QuietHours = DEFAULT_QUIET_HOURS.parse().unwrap();
        let cases = [
            ("2026-03-01T11:59:59Z", false, "2026-03-01T11:59:59Z"), // 20:59:59
            ("2026-03-01T12:00:00Z", true, "2026-03-01T23:00:00Z"),  // 21:00
            ("2026-03-01T15:00:00Z", true, "2026-03-01T23:00:00Z"),  // 00:00 next day
            ("2026-03-01T22:59:59Z", true, "2026-03-01T23:00:00Z"),  // 07:59:59
            ("2026-03-01T23:00:00Z", false, "2026-03-01T23:00:00Z"), // 08:00
            ("2026-12-31T14:30:00Z", true, "2026-12-31T23:00:00Z"),  // 23:30, new year
        ];
        for (now, quiet, open) in cases {
            assert_eq!(night.is_quiet_at(seoul, utc(now)), quiet, "{now}");
            assert_eq!(night.next_open(seoul, utc(now)), utc(open), "{now}");
        }
    }

    #[test]
    fn next_open_skips_dst_gap() {
        // 02:30 does not exist in New York on 2026-03-08; the window opens at 03:00 EDT.
        let q: QuietHours = "01:00-02:30".parse().unwrap();
        let now = utc("2026-03-08T06:30:00Z"); // 01:30 EST
        let tz = chrono_tz::America::New_York;
        assert!(q.is_quiet_at(tz, now));
        assert_eq!(q.next_open(tz, now), utc("2026-03-08T07:00:00Z"));
    }

    #[test]
    fn consent_values() {
        for yes in ["true", "Y", " yes ", "1", "동의", "TRUE"] {
            assert_eq!(parse_consent(yes), Ok(true), "{yes}");
        }
        for no in ["false", "n", "No", "0", "미동의", "", "  "] {
            assert_eq!(parse_consent(no), Ok(false), "{no}");
        }
        let err = parse_consent("maybe").unwrap_err();
        assert!(err.contains("Y/N") && err.contains("동의/미동의"), "{err}");
    }
}
