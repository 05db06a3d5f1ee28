//! Korean phone numbers: parsing any common written form into one canonical
//! national-digits value ([`Phone`]), telling mobile numbers (campaign
//! recipients) from other Korean numbers (senders, 080 opt-out lines), and
//! masking numbers so they never leak into logs or error messages.

use std::fmt;

use phonenumber::{Type, country, metadata::DATABASE};

/// A valid Korean number in canonical national digits, e.g. `01012345678`,
/// legacy `0111234567`, `0806005653`, `021234567` or `15881234`.
///
/// `Debug` and `Display` print the masked form; use [`Phone::as_str`] for the
/// full number (storage and exports only).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

impl Phone {
    /// The full canonical digits, for storage and exports. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hyphenated form with all but the first 3 and last 4 digits masked,
    /// e.g. `010-****-5678`, `011-***-4567` (see [`mask`]).
    pub fn masked(&self) -> String {
        mask(&format_display(self))
    }

    /// International form, e.g. `+821012345678`.
    pub fn e164(&self) -> String {
        format!("+82{}", self.0.strip_prefix('0').unwrap_or(&self.0))
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Phone").field(&self.masked()).finish()
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Why a string is not an acceptable phone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error(
        "not a valid Korean phone number; write it like 010-1234-5678, 01012345678, \
         +82 10-1234-5678 or 82-10-1234-5678"
    )]
    InvalidNumber,
    #[error(
        "not a Korean mobile number (010/011/016/017/018/019); landlines, 070, 050x, 080 \
         and 15xx/16xx/18xx numbers cannot receive campaign SMS"
    )]
    NotMobile,
}

impl PhoneError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PhoneError::InvalidNumber => "invalid_number",
            PhoneError::NotMobile => "not_mobile",
        }
    }
}

/// Masks anything that may be a phone number: with at least 9 digits the
/// first 3 and last 4 stay visible, otherwise only the last 2. Every masked
/// digit becomes one `*`; other characters are kept.
pub fn mask(raw: &str) -> String {
    let total = raw.chars().filter(|c| c.is_numeric()).count();
    let visible = |i: usize| {
        if total >= 9 {
            i < 3 || i + 4 >= total
        } else {
            i + 2 >= total
        }
    };
    let mut index = 0;
    raw.chars()
        .map(|c| {
            if !c.is_numeric() {
                return c;
            }
            index += 1;
            if visible(index - 1) { c } else { '*' }
        })
        .collect()
}

/// Masks every number-like run of free text (9 or more digits, possibly written with spaces,
/// `-`, `.`, `(`, `)` and a leading `+`) with [`mask`], leaving the rest as it is. For text
/// munja does not control, such as a gateway's error message that echoes the recipient
/// (`recipient "01012345678" does not exist`), before it is logged or shown.
pub fn mask_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit() || c == '+') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        // The run ends at its last digit; separators after it are not part of it.
        let mut end = 0;
        for (i, c) in tail.char_indices() {
            if c.is_ascii_digit() {
                end = i + 1;
            } else if !(i == 0 && c == '+' || " -.()".contains(c)) {
                break;
            }
        }
        if end == 0 {
            // A '+' without digits.
            out.push('+');
            rest = &tail[1..];
            continue;
        }
        let run = &tail[..end];
        if run.chars().filter(char::is_ascii_digit).count() >= 9 {
            out.push_str(&mask(run));
        } else {
            out.push_str(run);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Parses a mobile number (a campaign recipient).
pub fn normalize_mobile(input: &str) -> Result<Phone, PhoneError> {
    match parse_kr(input)? {
        (national, true) => Ok(Phone(national)),
        (_, false) => Err(PhoneError::NotMobile),
    }
}

/// Parses any valid Korean number (sender numbers, 080 opt-out lines).
pub fn normalize_any(input: &str) -> Result<Phone, PhoneError> {
    parse_kr(input).map(|(national, _)| Phone(national))
}

/// True for 080 toll-free numbers (the free opt-out line of an ad).
pub fn is_toll_free_080(p: &Phone) -> bool {
    p.0.starts_with("080")
}

/// Full hyphenated form for the ad footer: `010-1234-5678`, `080-600-5653`,
/// `02-123-4567`, `0505-123-4567`, `1588-1234`.
pub fn format_display(p: &Phone) -> String {
    let d = p.as_str();
    let head = if !d.starts_with('0') {
        4 // 15xx/16xx/18xx
    } else if d.starts_with("02") {
        2
    } else if d.starts_with("050") && d.len() >= 11 {
        4 // 050x personal numbers
    } else {
        3
    };
    if !d.is_ascii() || d.len() < head + 4 {
        return d.to_string();
    }
    let tail = d.len() - 4;
    match &d[head..tail] {
        "" => format!("{}-{}", &d[..head], &d[tail..]),
        mid => format!("{}-{mid}-{}", &d[..head], &d[tail..]),
    }
}

/// Parses a Korean number into (national digits, is mobile).
///
/// The prefix rule decides what is mobile: `010` + 8 digits, or legacy
/// `011/016/017/018/019` + 7 or 8 digits; other lengths with these prefixes
/// are invalid. libphonenumber's metadata decides whether any other number is
/// a valid Korean number. Where the two disagree the prefix rule wins:
/// libphonenumber also types `010` + 7 digits and `012` (M2M/IoT lines) as
/// mobile, which munja rejects, and a metadata quirk must never reject a
/// well-formed `010` number (the test `libphonenumber_agrees_on_mobile`
/// reports drift).
fn parse_kr(input: &str) -> Result<(String, bool), PhoneError> {
    let national = national_digits(input).ok_or(PhoneError::InvalidNumber)?;
    let len = national.len();
    match national.get(..3).unwrap_or("") {
        "010" if len == 11 => Ok((national, true)),
        "011" | "016" | "017" | "018" | "019" if (10..=11).contains(&len) => Ok((national, true)),
        "010" | "011" | "016" | "017" | "018" | "019" => Err(PhoneError::InvalidNumber),
        _ if kr_type(&national).is_some() => Ok((national, false)),
        _ => Err(PhoneError::InvalidNumber),
    }
}

/// libphonenumber's type of a national number if it is a valid Korean one.
fn kr_type(national: &str) -> Option<Type> {
    let n = phonenumber::parse(Some(country::KR), national).ok()?;
    (n.code().value() == 82 && n.is_valid()).then(|| n.number_type(&DATABASE))
}

/// Reduces a written number to national digits (`0…`, or 8 digits for
/// 15xx/16xx/18xx). Accepts digits, whitespace, `-`, `.`, `(`, `)` and one
/// leading `+`. A country code (`+82`, or a bare `82`, which cannot start a
/// Korean national number) is replaced by the trunk `0`, also when the
/// trunk `0` was kept (`+82 010…`). A mobile number whose leading 0 was
/// dropped by a spreadsheet (`1012345678`) gets it back.
fn national_digits(input: &str) -> Option<String> {
    let folded = fold_width(input);
    let s = folded.trim();
    let (plus, rest) = match s.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let allowed = |c: char| c.is_ascii_digit() || c.is_whitespace() || "-.()".contains(c);
    if !rest.chars().all(allowed) {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let national = if let Some(after_cc) = digits.strip_prefix("82") {
        let after_cc = after_cc.strip_prefix('0').unwrap_or(after_cc);
        match after_cc.len() == 8 && after_cc.starts_with('1') {
            true => after_cc.to_string(), // +82 1588-1234
            false => format!("0{after_cc}"),
        }
    } else if plus {
        return None; // another country: not deliverable as a Korean number
    } else if is_mobile_prefix(&digits) && (9..=10).contains(&digits.len()) {
        format!("0{digits}")
    } else {
        digits
    };
    let len_ok = match national.starts_with('0') {
        true => (9..=12).contains(&national.len()),
        false => national.len() == 8,
    };
    len_ok.then_some(national)
}

/// Full-width digits and signs (from Korean IMEs) and Unicode dashes become their ASCII forms.
fn fold_width(input: &str) -> std::borrow::Cow<'_, str> {
    if input.is_ascii() {
        return std::borrow::Cow::Borrowed(input);
    }
    input
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            '＋' => '+',
            '（' => '(',
            '）' => ')',
            '．' => '.',
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '－' => '-',
            '\u{3000}' => ' ',
            c => c,
        })
        .collect()
}

/// `1[016789]…`: a mobile number that lost its leading 0.
fn is_mobile_prefix(digits: &str) -> bool {
    let b = digits.as_bytes();
    b.len() >= 2 && b[0] == b'1' && b"016789".contains(&b[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_digits_and_unicode_dashes_are_the_same_number() {
        let want = normalize_mobile("010-1234-5678").expect("plain");
        for raw in [
            "０１０－１２３４－５６７８",
            "010–1234–5678",
            "＋８２ １０ １２３４ ５６７８",
            "010‐1234‐5678",
        ] {
            assert_eq!(normalize_mobile(raw).expect(raw), want, "{raw}");
        }
    }
    use proptest::prelude::*;

    fn ok(input: &str) -> String {
        normalize_mobile(input).unwrap().as_str().to_string()
    }

    #[test]
    fn accepts_every_written_form() {
        for input in [
            "010-1234-5678",
            "01012345678",
            "010 1234 5678",
            "+82 10-1234-5678",
            "+821012345678",
            "82-10-1234-5678",
            "821012345678",
            "8201012345678",
            "+82 010-1234-5678",
            "+82 (0)10 1234 5678",
            "010.1234.5678",
            "(010) 1234-5678",
            "  010-1234-5678\t",
            "1012345678",
        ] {
            assert_eq!(ok(input), "01012345678", "{input}");
        }
    }

    #[test]
    fn legacy_numbers() {
        assert_eq!(ok("011-123-4567"), "0111234567");
        assert_eq!(ok("016-1234-5678"), "01612345678");
        assert_eq!(ok("+82 17 123 4567"), "0171234567");
        assert_eq!(ok("018-123-4567"), "0181234567");
        assert_eq!(ok("019.1234.5678"), "01912345678");
    }

    #[test]
    fn not_mobile_categories() {
        for input in [
            "02-123-4567",
            "02-1234-5678",
            "031-123-4567",
            "051-123-4567",
            "070-1234-5678",
            "0505-123-4567",
            "080-600-5653",
            "1588-1234",
            "1644-1234",
            "1800-1234",
            "012-1234-5678",
            "+82 2 123 4567",
        ] {
            assert_eq!(
                normalize_mobile(input),
                Err(PhoneError::NotMobile),
                "{input}"
            );
        }
    }

    #[test]
    fn garbage_is_invalid() {
        for input in [
            "",
            "   ",
            "abc",
            "010-1234-567a",
            "010",
            "010-123-4567",
            "010-1234-56789",
            "011-12-3456",
            "0101234567890123",
            "+1 650 253 0000",
            "+86 10 1234 5678",
            "030-1234-5678",
            "++821012345678",
            "010-1234-5678 ext 1",
            "010/1234/5678",
        ] {
            assert_eq!(
                normalize_mobile(input),
                Err(PhoneError::InvalidNumber),
                "{input}"
            );
            assert_eq!(
                normalize_any(input),
                Err(PhoneError::InvalidNumber),
                "{input}"
            );
        }
    }

    #[test]
    fn any_accepts_senders_and_optout_lines() {
        let p = normalize_any("080-600-5653").unwrap();
        assert!(is_toll_free_080(&p));
        assert_eq!(format_display(&p), "080-600-5653");
        let cases = [
            ("02-123-4567", "02-123-4567"),
            ("0212345678", "02-1234-5678"),
            ("031 123 4567", "031-123-4567"),
            ("070-1234-5678", "070-1234-5678"),
            ("0505-123-4567", "0505-123-4567"),
            ("1588-1234", "1588-1234"),
            ("+82 1588-1234", "1588-1234"),
            ("012-1234-5678", "012-1234-5678"),
            ("+82 10 1234 5678", "010-1234-5678"),
            ("011-123-4567", "011-123-4567"),
        ];
        for (input, display) in cases {
            let p = normalize_any(input).unwrap();
            assert_eq!(format_display(&p), display, "{input}");
            assert!(!is_toll_free_080(&p) || input.starts_with("080"));
        }
        assert_eq!(
            normalize_any("030-1234-5678"),
            Err(PhoneError::InvalidNumber)
        );
        assert_eq!(normalize_any("1588"), Err(PhoneError::InvalidNumber));
    }

    #[test]
    fn libphonenumber_agrees_on_mobile() {
        for national in ["01012345678", "01099998888", "0111234567", "01912345678"] {
            assert_eq!(kr_type(national), Some(Type::Mobile), "{national}");
        }
        assert_eq!(kr_type("0806005653"), Some(Type::TollFree));
        assert_eq!(kr_type("0212345678"), Some(Type::FixedLine));
    }

    #[test]
    fn representations() {
        let p = normalize_mobile("010-1234-5678").unwrap();
        assert_eq!(p.as_str(), "01012345678");
        assert_eq!(p.masked(), "010-****-5678");
        assert_eq!(p.to_string(), "010-****-5678");
        assert_eq!(format!("{p:?}"), "Phone(\"010-****-5678\")");
        assert_eq!(p.e164(), "+821012345678");
        let legacy = normalize_mobile("0111234567").unwrap();
        assert_eq!(legacy.masked(), "011-***-4567");
        assert_eq!(legacy.e164(), "+82111234567");
        assert_eq!(normalize_any("1588-1234").unwrap().e164(), "+8215881234");
    }

    #[test]
    fn mask_raw_strings() {
        assert_eq!(mask("010-1234-5678"), "010-****-5678");
        assert_eq!(mask("+82 10 1234 5678"), "+82 1* **** 5678");
        assert_eq!(mask("1234567"), "*****67");
        assert_eq!(mask("tel: 12-34"), "tel: **-34");
        assert_eq!(mask(""), "");
    }

    #[test]
    fn mask_numbers_inside_text() {
        let cases = [
            (
                "recipient \"01012345678\" does not exist",
                "recipient \"010****5678\" does not exist",
            ),
            ("to +82 10-1234-5678.", "to +82 1*-****-5678."),
            ("번호 010 1234 5678 없음", "번호 010 **** 5678 없음"),
            (
                "(010)1234-5678, 011-123-4567",
                "(010)****-5678, 011-***-4567",
            ),
            (
                "batch of 50 at 12:00, ref c4b1-123, 2026-11-25",
                "batch of 50 at 12:00, ref c4b1-123, 2026-11-25",
            ),
            ("1 + 1 = 2 +", "1 + 1 = 2 +"),
            ("", ""),
        ];
        for (text, masked) in cases {
            assert_eq!(mask_in_text(text), masked, "{text}");
        }
    }

    #[test]
    fn error_codes_and_messages() {
        assert_eq!(PhoneError::InvalidNumber.code(), "invalid_number");
        assert_eq!(PhoneError::NotMobile.code(), "not_mobile");
        assert!(PhoneError::NotMobile.to_string().contains("080"));
        assert!(
            PhoneError::InvalidNumber
                .to_string()
                .contains("010-1234-5678")
        );
    }

    proptest! {
        #[test]
        fn variants_normalise_alike(mid in "[0-9]{4}", last in "[0-9]{4}", variant in 0usize..10) {
            let expected = format!("010{mid}{last}");
            let input = match variant {
                0 => format!("010-{mid}-{last}"),
                1 => format!("010{mid}{last}"),
                2 => format!("010 {mid} {last}"),
                3 => format!("010.{mid}.{last}"),
                4 => format!("+82 10-{mid}-{last}"),
                5 => format!("+8210{mid}{last}"),
                6 => format!("82-10-{mid}-{last}"),
                7 => format!("+82 010 {mid} {last}"),
                8 => format!("(010) {mid}-{last}"),
                _ => format!("  010-{mid}-{last} "),
            };
            let phone = normalize_mobile(&input).unwrap();
            prop_assert_eq!(phone.as_str(), expected.as_str());
            prop_assert_eq!(normalize_any(&input).unwrap(), phone);
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = normalize_mobile(&s);
            let _ = normalize_any(&s);
            let _ = mask(&s);
            let _ = mask_in_text(&s);
        }

        #[test]
        fn legacy_variants_normalise_alike(
            prefix in prop::sample::select(vec!["011", "016", "017", "018", "019"]),
            mid in "[0-9]{3,4}",
            last in "[0-9]{4}",
            variant in 0usize..7,
        ) {
            let expected = format!("{prefix}{mid}{last}");
            let p = &prefix[1..];
            let input = match variant {
                0 => format!("{prefix}-{mid}-{last}"),
                1 => expected.clone(),
                2 => format!("{prefix} {mid} {last}"),
                3 => format!("+82 {p}-{mid}-{last}"),
                4 => format!("+82{p}{mid}{last}"),
                5 => format!("82-{p}-{mid}-{last}"),
                _ => format!("{p}{mid}{last}"), // leading 0 lost by a spreadsheet
            };
            let phone = normalize_mobile(&input).unwrap();
            prop_assert_eq!(phone.as_str(), expected.as_str());
        }

        #[test]
        fn non_mobile_numbers_are_not_mobile_in_every_form(
            national in prop::sample::select(vec![
                "0212345678", "021234567", "0311234567", "0512345678", "07012345678",
                "0806005653", "15881234", "16441234", "18001234",
            ]),
            variant in 0usize..4,
        ) {
            let intl = national.strip_prefix('0').unwrap_or(national);
            let input = match variant {
                0 => national.to_string(),
                1 => format!("+82 {intl}"),
                2 => format!("82-{intl}"),
                _ => format_display(&normalize_any(national).unwrap()),
            };
            prop_assert_eq!(normalize_mobile(&input), Err(PhoneError::NotMobile), "{}", input);
            let any = normalize_any(&input).unwrap();
            prop_assert_eq!(any.as_str(), national);
        }

        #[test]
        fn numbers_in_text_never_show_their_middle_digits(
            mid in "[0-9]{4}",
            last in "[0-9]{4}",
            variant in 0usize..5,
            before in "[a-z가-힣 :\"]{0,8}",
            after in "[a-z가-힣 :\".]{0,8}",
        ) {
            let number = match variant {
                0 => format!("010{mid}{last}"),
                1 => format!("010-{mid}-{last}"),
                2 => format!("+82 10 {mid} {last}"),
                3 => format!("+8210{mid}{last}"),
                _ => format!("(010) {mid}.{last}"),
            };
            let text = format!("{before}{number}{after}");
            let masked = mask_in_text(&text);
            prop_assert!(masked.starts_with(&before) && masked.ends_with(&after), "{}", masked);
            prop_assert!(!masked.contains(&format!("{mid}{last}")), "{}", masked);
            let digits: String = masked.chars().filter(char::is_ascii_digit).collect();
            prop_assert!(digits.ends_with(&last), "{}", masked);
            prop_assert_eq!(masked.matches('*').count(), 4 + usize::from(variant == 2 || variant == 3), "{}", masked);
        }

        #[test]
        fn masked_hides_middle_digits(mid in "[0-9]{4}", last in "[0-9]{4}") {
            let phone = normalize_mobile(&format!("010{mid}{last}")).unwrap();
            let shown = format!("{phone} {phone:?} {}", mask(phone.as_str()));
            prop_assert!(!shown.contains(phone.as_str()));
            prop_assert_eq!(phone.masked(), format!("010-****-{last}"));
            prop_assert_eq!(mask(phone.as_str()), format!("010****{last}"));
        }
    }
}
