//! Message sizing: byte length in EUC-KR (CP949), detection of characters
//! carriers cannot encode, and the SMS/LMS decision with its byte limits.

use std::fmt;
use std::str::FromStr;

use encoding_rs::{EUC_KR, EncoderResult};

/// Largest SMS body in EUC-KR bytes.
pub const SMS_MAX_BYTES: usize = 90;
/// Largest LMS body in EUC-KR bytes.
pub const LMS_MAX_BYTES: usize = 2000;
/// Largest LMS subject in EUC-KR bytes.
pub const SUBJECT_MAX_BYTES: usize = 40;

/// The carrier message type chosen for a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MessageType {
    Sms,
    Lms,
}

impl MessageType {
    /// `"SMS"` or `"LMS"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageType::Sms => "SMS",
            MessageType::Lms => "LMS",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message type name that is neither SMS nor LMS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown message type {0:?}: expected SMS or LMS")]
pub struct UnknownMessageType(pub String);

impl FromStr for MessageType {
    type Err = UnknownMessageType;

    /// Case-insensitive `SMS` / `LMS`, surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "SMS" => Ok(MessageType::Sms),
            "LMS" => Ok(MessageType::Lms),
            _ => Err(UnknownMessageType(s.to_string())),
        }
    }
}

/// A character EUC-KR (CP949) cannot encode; `position` is the 1-based
/// character index in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} at character {position} cannot be encoded in EUC-KR", describe(*.ch))]
pub struct Unencodable {
    pub ch: char,
    pub position: usize,
}

/// Length of `text` in EUC-KR (CP949) bytes: Hangul 2, ASCII 1.
///
/// encoding_rs would silently replace unmappable characters by `&#NNNN;`;
/// this reports the first one instead. No heap allocation: ASCII is counted
/// directly, everything else is encoded through a small stack buffer.
pub fn euckr_len(text: &str) -> Result<usize, Unencodable> {
    if text.is_ascii() {
        return Ok(text.len());
    }
    let mut encoder = EUC_KR.new_encoder();
    let mut buf = [0u8; 256];
    let (mut consumed, mut bytes) = (0, 0);
    loop {
        let rest = &text[consumed..];
        let (result, read, written) =
            encoder.encode_from_utf8_without_replacement(rest, &mut buf, true);
        bytes += written;
        match result {
            EncoderResult::InputEmpty => return Ok(bytes),
            EncoderResult::OutputFull => consumed += read,
            EncoderResult::Unmappable(ch) => {
                // `read` includes the unmappable character itself.
                let before = &text[..consumed + read - ch.len_utf8()];
                let position = before.chars().count() + 1;
                return Err(Unencodable { ch, position });
            }
        }
    }
}

/// Why a text cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error(
        "{} at character {position} of the {field} cannot be sent: carriers only accept \
         characters of the Korean EUC-KR set; replace it (e.g. use 원 or W for ₩) or remove it \
         (emoji are not supported)",
        describe(*.ch)
    )]
    Unencodable {
        ch: char,
        position: usize,
        field: &'static str,
    },
    #[error(
        "the text is {bytes} bytes in EUC-KR, more than the LMS limit of {LMS_MAX_BYTES} \
         (Hangul counts 2 bytes, ASCII 1); shorten it"
    )]
    TooLong { bytes: usize },
    #[error(
        "the subject is {bytes} bytes in EUC-KR, more than the limit of {SUBJECT_MAX_BYTES} \
         (Hangul counts 2 bytes, ASCII 1); shorten it"
    )]
    SubjectTooLong { bytes: usize },
}

impl SizeError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SizeError::Unencodable { .. } => "unencodable_char",
            SizeError::TooLong { .. } => "too_long",
            SizeError::SubjectTooLong { .. } => "subject_too_long",
        }
    }
}

/// The type a text goes out as and its size in EUC-KR bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sized {
    pub kind: MessageType,
    pub bytes: usize,
}

/// Chooses SMS (≤ 90 bytes) or LMS (≤ 2000 bytes) for `text`.
///
/// The subject is only sent, and so only checked (encodable, ≤ 40 bytes),
/// when the message is an LMS.
pub fn classify(text: &str, subject: Option<&str>) -> Result<Sized, SizeError> {
    let bytes = measure(text, "text")?;
    if bytes <= SMS_MAX_BYTES {
        return Ok(Sized {
            kind: MessageType::Sms,
            bytes,
        });
    }
    if bytes > LMS_MAX_BYTES {
        return Err(SizeError::TooLong { bytes });
    }
    if let Some(subject) = subject {
        let subject_bytes = measure(subject, "subject")?;
        if subject_bytes > SUBJECT_MAX_BYTES {
            return Err(SizeError::SubjectTooLong {
                bytes: subject_bytes,
            });
        }
    }
    Ok(Sized {
        kind: MessageType::Lms,
        bytes,
    })
}

fn measure(text: &str, field: &'static str) -> Result<usize, SizeError> {
    euckr_len(text).map_err(|Unencodable { ch, position }| SizeError::Unencodable {
        ch,
        position,
        field,
    })
}

/// `'₩' (U+20A9)`
fn describe(ch: char) -> String {
    format!("{ch:?} (U+{:04X})", u32::from(ch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms(bytes: usize) -> Sized {
        Sized {
            kind: MessageType::Sms,
            bytes,
        }
    }

    #[test]
    fn counts_euckr_bytes() {
        assert_eq!(euckr_len("(광고) 토스페이먼츠"), Ok(19));
        assert_eq!(euckr_len(""), Ok(0));
        assert_eq!(euckr_len("abc\n"), Ok(4));
        assert_eq!(euckr_len("한글\n"), Ok(5));
        assert_eq!(euckr_len("똠방각하"), Ok(8)); // CP949 extension syllables
        assert_eq!(euckr_len("￦1000"), Ok(6)); // full-width won is mappable
        assert_eq!(euckr_len(&"가".repeat(1000)), Ok(2000)); // spans many buffers
    }

    #[test]
    fn finds_unencodable_chars_with_position() {
        let err = euckr_len("가격은 10,000₩입니다").unwrap_err();
        assert_eq!(
            err,
            Unencodable {
                ch: '₩',
                position: 11
            }
        );
        assert_eq!(
            euckr_len("😀"),
            Err(Unencodable {
                ch: '😀',
                position: 1
            })
        );
        let long = format!("{}🎉", "가".repeat(300));
        assert_eq!(
            euckr_len(&long),
            Err(Unencodable {
                ch: '🎉',
                position: 301
            })
        );
    }

    #[test]
    fn sms_lms_boundaries() {
        let hangul = |n: usize| "가".repeat(n);
        assert_eq!(classify(&format!("{}ab", hangul(44)), None), Ok(sms(90)));
        let lms = classify(&format!("{}a", hangul(45)), None).unwrap();
        assert_eq!((lms.kind, lms.bytes), (MessageType::Lms, 91));
        let at_limit = format!("{}a", hangul(999)) + "b";
        assert_eq!(classify(&at_limit, None).unwrap().bytes, 2000);
        let over = format!("{}a", hangul(1000));
        assert_eq!(
            classify(&over, None),
            Err(SizeError::TooLong { bytes: 2001 })
        );
    }

    #[test]
    fn subject_only_checked_for_lms() {
        let long_text = "가".repeat(50);
        let subject40 = format!("{}ab", "제".repeat(19));
        let subject41 = format!("{}a", "제".repeat(20));
        assert!(classify(&long_text, Some(&subject40)).is_ok());
        assert_eq!(
            classify(&long_text, Some(&subject41)),
            Err(SizeError::SubjectTooLong { bytes: 41 })
        );
        assert_eq!(classify("짧은 문자", Some(&subject41)), Ok(sms(9)));
        assert_eq!(classify("짧은 문자", Some("😀")), Ok(sms(9)));
        let err = classify(&long_text, Some("할인😀")).unwrap_err();
        assert_eq!(
            err,
            SizeError::Unencodable {
                ch: '😀',
                position: 3,
                field: "subject"
            }
        );
    }

    #[test]
    fn error_codes_and_messages() {
        let err = classify("총 10,000₩", None).unwrap_err();
        assert_eq!(err.code(), "unencodable_char");
        let msg = err.to_string();
        assert!(
            msg.contains("'₩' (U+20A9) at character 9 of the text"),
            "{msg}"
        );
        assert!(msg.contains("원"), "{msg}");
        assert_eq!(SizeError::TooLong { bytes: 2001 }.code(), "too_long");
        assert_eq!(
            SizeError::SubjectTooLong { bytes: 41 }.code(),
            "subject_too_long"
        );
    }

    #[test]
    fn message_type_names() {
        assert_eq!(MessageType::Sms.as_str(), "SMS");
        assert_eq!("lms".parse(), Ok(MessageType::Lms));
        assert!("MMS".parse::<MessageType>().is_err());
        assert_eq!(
            serde_json::to_string(&MessageType::Lms).ok(),
            Some("\"LMS\"".into())
        );
        let back: MessageType = serde_json::from_str("\"SMS\"").unwrap();
        assert_eq!(back, MessageType::Sms);
    }
}
