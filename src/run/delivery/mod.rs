//! Delivery reports and provider opt-outs (issue 9, items 6 and 7).
//!
//! A message's send state (`sent`: a gateway accepted it) is kept apart from its delivery state
//! (`delivered`, `undelivered` with the carrier's code, or none yet). Reports arrive by push on
//! `munja serve` (`POST|GET /v1/dlr/{gateway}`: [`routes`], parsed per gateway kind by
//! [`parse`]) or by polling NHN Cloud's result search ([`sync`], `munja campaign sync-results`).
//!
//! The rules, whatever the source:
//! - a report is applied by message ref regardless of the message's send state: a report that
//!   beats the send's own commit (the message is still `sending`) is applied at once, and the
//!   commit, which never writes the delivery columns, keeps it;
//! - `delivered` and `undelivered` are final: the first final report wins; a later intermediate
//!   one (Kannel's "buffered" or "SMSC accepted") or a contradicting final one is only logged;
//! - every report is logged (`delivery_reports`), those for refs no message has too: they are
//!   counted (`DeliveryStore::report_counts`) and logged with a masked number, never dropped in silence.
//!
//! NHN Cloud's `UNSUBSCRIBE` webhook and `munja optout sync` add numbers to munja's own opt-out
//! list, which every run checks right before sending; so do a send a gateway refused as
//! `opted_out` and an NHN result code that says so ([`optouts`]).

pub mod commands;
pub mod optouts;
pub mod parse;
pub mod routes;
pub mod serve;
pub mod sync;

use tracing::Instrument;

use crate::domain::model::{DeliveryEffect, DeliveryReport};
use crate::store::{Store, StoreError};

pub use routes::router;

/// Kannel's `dlr-url` for one message: munja serve's `/v1/dlr/{gateway}` (the gateway's
/// `dlr_url`) with the message ref and the gateway's token, and Kannel's escapes for the report
/// type (`%d`: 1 delivered, 2 undelivered, 4 buffered, 8 SMSC accepted, 16 SMSC rejected), the
/// SMSC's reply (`%A`) and the report's time (`%T`, Unix seconds). The send adapter passes it
/// (URL-encoded, with `dlr-mask=31`) to sendsms; [`parse::kannel`] reads it back.
///
/// `msg_ref` and `token` must be URL-safe as they are (letters, digits, `-._~`): Kannel would
/// read a `%` of an escaped character as one of its own escapes.
pub fn kannel_dlr_url(dlr_url: &str, token: Option<&str>, msg_ref: &str) -> String {
    crate::gateway::kannel::dlr_url_for(dlr_url, token, msg_ref)
}

/// Whether `s` can go into a Kannel `dlr-url` as it is (see [`kannel_dlr_url`]).
pub fn url_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether a message's logged reports prove a Kannel gateway had it: a type 8 (the SMSC
/// accepted it) or a final report (type 1, 2 or 16). Kannel can neither dedupe nor be asked, so
/// this log is the only proof that an in-doubt message must not be resent.
pub fn kannel_proves_sent(reports: &[crate::domain::model::StoredReport]) -> bool {
    reports.iter().any(|r| {
        r.status != "intermediate"
            || r.code
                .as_deref()
                .is_some_and(|c| c == "type 8" || c.starts_with("type 8:"))
    })
}

/// Records one report and logs what it did (unknown refs at warn level).
pub async fn record(store: &dyn Store, r: &DeliveryReport) -> Result<DeliveryEffect, StoreError> {
    let span = tracing::info_span!("delivery", gateway = %r.gateway, msg_ref = %r.msg_ref);
    let effect = store.record_delivery(r).instrument(span.clone()).await?;
    let _enter = span.enter();
    match effect {
        DeliveryEffect::Unknown => tracing::warn!(
            status = r.status.as_str(),
            code = r.code.as_deref().unwrap_or("-"),
            "delivery report for a ref no message has: logged and counted, nothing changed"
        ),
        DeliveryEffect::Ignored => tracing::info!(
            status = r.status.as_str(),
            "delivery report contradicts the final state already recorded: kept the first"
        ),
        e => tracing::debug!(
            effect = e.as_str(),
            status = r.status.as_str(),
            "delivery report"
        ),
    }
    Ok(effect)
}

/// Compares two secrets in time independent of where they differ.
pub(crate) fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ x);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kannel_dlr_url_carries_ref_token_and_escapes() {
        assert_eq!(
            kannel_dlr_url("http://m:8080/v1/dlr/kannel", Some("t0k"), "abc-12"),
            "http://m:8080/v1/dlr/kannel?ref=abc-12&token=t0k&type=%d&status=%A&at=%T"
        );
        assert!(kannel_dlr_url("http://m/x?a=1", None, "r").starts_with("http://m/x?a=1&ref=r&"));
        assert!(url_safe("Abc-1_2.3~") && !url_safe("a%2B") && !url_safe(""));
    }

    #[test]
    fn kannel_proof_of_send_is_type_8_or_final() {
        let r = |status: &str, code: &str| crate::domain::model::StoredReport {
            gateway: "k".into(),
            status: status.into(),
            code: Some(code.into()),
            reported_at: String::new(),
            effect: String::new(),
        };
        assert!(!kannel_proves_sent(&[]));
        assert!(!kannel_proves_sent(&[r("intermediate", "type 4")]));
        assert!(kannel_proves_sent(&[r("intermediate", "type 8: ACK/")]));
        assert!(kannel_proves_sent(&[r("delivered", "type 1")]));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("s3cretX", "s3cret"));
        assert!(!same_secret("", "s3cret"));
    }
}
