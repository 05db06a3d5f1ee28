//! Reading delivery reports as each gateway kind sends them, into [`DeliveryReport`]s:
//! - `http-json`: the callback of docs/gateway-http-json.md (one JSON object, or an array);
//! - `kannel`: the query of the `dlr-url` munja gave Kannel ([`super::kannel_dlr_url`]);
//! - `nhn-cloud`: the webhook body (`MESSAGE_RESULT_UPDATE`, `UNSUBSCRIBE`), and the same
//!   status rule for the result search of `campaign sync-results`.
//!
//! Every error says what was wrong and what shape was expected; none carries a phone number.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::domain::model::{DeliveryReport, DeliveryState, ReportStatus};

/// Longest result code kept (an SMSC reply can be long).
const MAX_CODE: usize = 120;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn code(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(MAX_CODE).collect())
}

// ---- http-json ----

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(HttpJsonReport),
    Many(Vec<HttpJsonReport>),
}

#[derive(Debug, Deserialize)]
struct HttpJsonReport {
    #[serde(rename = "ref")]
    msg_ref: String,
    status: String,
    error: Option<String>,
    at: Option<String>,
}

/// The http-json callback: `{"ref", "gateway_id", "status": "delivered" | "failed" |
/// "accepted", "error", "at"}`, or an array of them.
pub fn http_json(
    gateway: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Vec<DeliveryReport>, ParseError> {
    let parsed: OneOrMany = serde_json::from_slice(body).map_err(|e| {
        ParseError(format!(
            "expected a JSON object {{\"ref\", \"status\": \"delivered\"|\"failed\", \"error\", \
             \"at\"}} or an array of them (docs/gateway-http-json.md): {e}"
        ))
    })?;
    let items = match parsed {
        OneOrMany::One(r) => vec![r],
        OneOrMany::Many(v) => v,
    };
    items
        .into_iter()
        .map(|r| {
            let status = match r.status.as_str() {
                "delivered" => ReportStatus::Final(DeliveryState::Delivered),
                "failed" | "undelivered" => ReportStatus::Final(DeliveryState::Undelivered),
                "accepted" => ReportStatus::Intermediate,
                other => {
                    return Err(ParseError(format!(
                        "ref {}: status {other:?}; expected \"delivered\", \"failed\" or \"accepted\"",
                        r.msg_ref
                    )));
                }
            };
            let at = match r.at.as_deref() {
                Some(t) => DateTime::parse_from_rfc3339(t)
                    .map_err(|e| {
                        ParseError(format!(
                            "ref {}: at {t:?} is not an RFC 3339 time ({e})",
                            r.msg_ref
                        ))
                    })?
                    .with_timezone(&Utc),
                None => now,
            };
            Ok(DeliveryReport {
                gateway: gateway.to_string(),
                msg_ref: r.msg_ref,
                status,
                code: code(r.error.as_deref()),
                at,
            })
        })
        .collect()
}

// ---- Kannel ----

/// Kannel's report: `ref`, `type` (its `%d`), `status` (`%A`) and `at` (`%T`) of the query.
/// The code keeps the type and the SMSC's reply (`type 8: ACK/`, `type 16: NACK/...`), so
/// that [`super::kannel_proves_sent`] can read the log.
pub fn kannel(
    gateway: &str,
    query: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<DeliveryReport, ParseError> {
    let msg_ref = query.get("ref").filter(|r| !r.is_empty()).ok_or_else(|| {
        ParseError(
            "no ref in the query: Kannel's dlr-url must be the one munja builds \
                 (…?ref=REF&token=…&type=%d&status=%A&at=%T)"
                .into(),
        )
    })?;
    let kind = query.get("type").map(String::as_str).unwrap_or("");
    let kind: u32 = kind.parse().map_err(|_| {
        ParseError(format!(
            "type {kind:?} is not Kannel's report type (%d: 1, 2, 4, 8 or 16); was dlr-mask \
             set and the dlr-url passed unchanged?"
        ))
    })?;
    let status = match kind {
        1 => ReportStatus::Final(DeliveryState::Delivered),
        2 | 16 => ReportStatus::Final(DeliveryState::Undelivered),
        _ => ReportStatus::Intermediate,
    };
    let reply = query.get("status").map(String::as_str).unwrap_or("");
    let at = query
        .get("at")
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(|t| Utc.timestamp_opt(t, 0).single())
        .unwrap_or(now);
    Ok(DeliveryReport {
        gateway: gateway.to_string(),
        msg_ref: msg_ref.clone(),
        status,
        code: code(Some(&match code(Some(reply)) {
            Some(reply) => format!("type {kind}: {reply}"),
            None => format!("type {kind}"),
        })),
        at,
    })
}

// ---- NHN Cloud ----

/// What one NHN Cloud webhook call carries.
#[derive(Debug, PartialEq, Eq)]
pub enum NhnHook {
    /// `MESSAGE_RESULT_UPDATE`: the reports, and how many hooks named no ref (not ours).
    Results {
        reports: Vec<DeliveryReport>,
        without_ref: usize,
    },
    /// `UNSUBSCRIBE`: numbers as NHN sent them (normalised by the caller).
    Unsubscribe(Vec<String>),
    /// Any other event (`CONVERSION_BLOCK`, …): acknowledged, nothing to do.
    Other(String),
}

#[derive(Debug, Deserialize)]
struct Webhook {
    event: String,
    #[serde(default)]
    hooks: Vec<Hook>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hook {
    recipient_no: Option<String>,
    message_status: Option<String>,
    result_code: Option<serde_json::Value>,
    recipient_grouping_key: Option<String>,
    /// NHN's own webhook example spells it so; accepted too.
    recipient_gropuing_key: Option<String>,
    receive_date: Option<String>,
}

/// The webhook body (`{"event", "hooks": [...]}`).
pub fn nhn(gateway: &str, body: &[u8], now: DateTime<Utc>) -> Result<NhnHook, ParseError> {
    let w: Webhook = serde_json::from_slice(body).map_err(|e| {
        ParseError(format!(
            "expected NHN Cloud's webhook body {{\"event\", \"hooks\": [...]}}: {e}"
        ))
    })?;
    match w.event.as_str() {
        "MESSAGE_RESULT_UPDATE" => {
            let mut reports = Vec::new();
            let mut without_ref = 0;
            for h in w.hooks {
                let Some(msg_ref) = h
                    .recipient_grouping_key
                    .or(h.recipient_gropuing_key)
                    .filter(|k| !k.is_empty())
                else {
                    without_ref += 1;
                    continue;
                };
                let result = h.result_code.as_ref().map(json_text);
                let status =
                    nhn_status(h.message_status.as_deref().unwrap_or(""), result.as_deref());
                reports.push(DeliveryReport {
                    gateway: gateway.to_string(),
                    msg_ref,
                    status,
                    code: code(result.as_deref()).or_else(|| code(h.message_status.as_deref())),
                    at: h.receive_date.as_deref().and_then(kst).unwrap_or(now),
                });
            }
            Ok(NhnHook::Results {
                reports,
                without_ref,
            })
        }
        "UNSUBSCRIBE" => Ok(NhnHook::Unsubscribe(
            w.hooks.into_iter().filter_map(|h| h.recipient_no).collect(),
        )),
        other => Ok(NhnHook::Other(other.to_string())),
    }
}

pub use crate::gateway::nhn_results::json_text;

/// NHN's message status (the webhook's `messageStatus`) and result code as a report status:
/// `COMPLETED` with result 1000 (or none) is delivered, with another result undelivered;
/// `FAILED`, `FAILED_AD` and `CANCEL` are undelivered; `DUPLICATED` (NHN refused a duplicate
/// request: an earlier one may have been delivered) and anything else change nothing.
pub fn nhn_status(message_status: &str, result_code: Option<&str>) -> ReportStatus {
    match message_status {
        "COMPLETED" => match result_code {
            None | Some("1000") | Some("") => ReportStatus::Final(DeliveryState::Delivered),
            Some(_) => ReportStatus::Final(DeliveryState::Undelivered),
        },
        "FAILED" | "FAILED_AD" | "CANCEL" => ReportStatus::Final(DeliveryState::Undelivered),
        _ => ReportStatus::Intermediate,
    }
}

/// The result search's `msgStatus` code as the webhook's `messageStatus` name (0 failed,
/// 1 requesting, 2 processing, 3 successful, 4 cancelled, 5 duplicate, 6 failed (ad), 7 waiting).
pub fn nhn_msg_status_name(code: &str) -> &'static str {
    match code {
        "0" => "FAILED",
        "3" => "COMPLETED",
        "4" => "CANCEL",
        "5" => "DUPLICATED",
        "6" => "FAILED_AD",
        _ => "PENDING",
    }
}

/// An NHN time without zone (`2024-04-29T20:58:04`, `2018-08-10 10:06:42.0`), in Korea time.
pub fn kst(s: &str) -> Option<DateTime<Utc>> {
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())?;
    chrono_tz::Asia::Seoul
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kannel_types_map_to_final_or_intermediate() {
        let now = Utc::now();
        let r = kannel(
            "k",
            &q(&[
                ("ref", "a-1"),
                ("type", "1"),
                ("status", "ACK/"),
                ("at", "1700000000"),
            ]),
            now,
        )
        .expect("parse");
        assert_eq!(r.status, ReportStatus::Final(DeliveryState::Delivered));
        assert_eq!(r.at.timestamp(), 1_700_000_000);
        assert_eq!(r.code.as_deref(), Some("type 1: ACK/"));
        for (t, want) in [
            ("2", ReportStatus::Final(DeliveryState::Undelivered)),
            ("16", ReportStatus::Final(DeliveryState::Undelivered)),
            ("8", ReportStatus::Intermediate),
            ("4", ReportStatus::Intermediate),
        ] {
            let r = kannel("k", &q(&[("ref", "a-1"), ("type", t)]), now).expect("parse");
            assert_eq!(r.status, want, "type {t}");
            assert_eq!(r.code.as_deref(), Some(format!("type {t}").as_str()));
        }
        let e = kannel("k", &q(&[("ref", "a-1"), ("type", "%d")]), now).unwrap_err();
        assert!(e.to_string().contains("dlr-mask"), "{e}");
        assert!(kannel("k", &q(&[("type", "1")]), now).is_err());
    }

    #[test]
    fn http_json_reads_one_or_many() {
        let now = Utc::now();
        let one = br#"{"ref":"a-1","gateway_id":"g","status":"failed","error":"expired","at":"2026-01-02T03:04:05Z"}"#;
        let r = http_json("h", one, now).expect("parse");
        assert_eq!(r[0].status, ReportStatus::Final(DeliveryState::Undelivered));
        assert_eq!(r[0].code.as_deref(), Some("expired"));
        let many = br#"[{"ref":"a-1","status":"delivered"},{"ref":"a-2","status":"accepted"}]"#;
        assert_eq!(http_json("h", many, now).expect("parse").len(), 2);
        assert!(http_json("h", br#"{"ref":"a","status":"lost"}"#, now).is_err());
        assert!(http_json("h", b"nope", now).is_err());
    }

    #[test]
    fn nhn_statuses_and_the_documented_misspelling() {
        let body = br#"{"event":"MESSAGE_RESULT_UPDATE","hooks":[
            {"recipientGropuingKey":"a-1","messageStatus":"COMPLETED","resultCode":"1000","receiveDate":"2024-04-29T20:58:04"},
            {"recipientGroupingKey":"a-2","messageStatus":"FAILED","resultCode":"3001"},
            {"recipientGroupingKey":"a-3","messageStatus":"DUPLICATED"},
            {"recipientNo":"01012341234","messageStatus":"COMPLETED"}]}"#;
        let NhnHook::Results {
            reports,
            without_ref,
        } = nhn("n", body, Utc::now()).expect("parse")
        else {
            panic!("not results")
        };
        assert_eq!(without_ref, 1);
        assert_eq!(
            reports[0].status,
            ReportStatus::Final(DeliveryState::Delivered)
        );
        assert_eq!(reports[0].at.to_rfc3339(), "2024-04-29T11:58:04+00:00");
        assert_eq!(
            reports[1].status,
            ReportStatus::Final(DeliveryState::Undelivered)
        );
        assert_eq!(reports[1].code.as_deref(), Some("3001"));
        assert_eq!(reports[2].status, ReportStatus::Intermediate);
        let unsub = br#"{"event":"UNSUBSCRIBE","hooks":[{"recipientNo":"01012341234","unsubscribeNo":"0801234"}]}"#;
        assert_eq!(
            nhn("n", unsub, Utc::now()).expect("parse"),
            NhnHook::Unsubscribe(vec!["01012341234".into()])
        );
        assert_eq!(
            nhn_status("COMPLETED", Some("3006")),
            ReportStatus::Final(DeliveryState::Undelivered)
        );
        assert_eq!(nhn_msg_status_name("3"), "COMPLETED");
    }
}
