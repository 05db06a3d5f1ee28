//! Numbers a gateway says opted out join munja's own opt-out list (수신거부 must be honoured at
//! once and by every later campaign, see docs on Korean ad SMS):
//! - a send the gateway rejected as `opted_out` (NHN Cloud's per-recipient result -6001 or
//!   3006, [`crate::gateway::nhn::recipient_outcome`]): the message stays failed with that
//!   reason, and its number is added once the run commits the chunk;
//! - an NHN Cloud delivery result with code -6001 or 3006 (webhook or `campaign sync-results`,
//!   also when `munja serve` runs it): the message stays undelivered, and the number of the
//!   message the report names (read from munja's own messages, never from the report) is added.
//!
//! Numbers are added as `munja optout add` adds them ([`ImportStore::optout_add`], idempotent),
//! with the source `result:GATEWAY`, and logged masked.
//!
//! [`ImportStore::optout_add`]: crate::store::ImportStore::optout_add

use std::collections::HashMap;

use tracing::{debug, info, warn};

use crate::domain::model::{
    DeliveryEffect, DeliveryReport, MessageState, MessageUpdate, ReportStatus,
};
use crate::domain::phone;
use crate::store::{AuditFilter, Store, StoreError};

pub use crate::domain::model::OPTED_OUT;

/// The opt-out list's source of a number learnt from gateway `gateway`'s results.
pub fn source(gateway: &str) -> String {
    format!("result:{gateway}")
}

/// Whether an NHN Cloud result code says the recipient opted out: -6001 (on NHN's 080
/// opt-out list) or 3006 (refused by the recipient).
pub fn nhn_code_opted_out(code: &str) -> bool {
    matches!(code.trim(), "-6001" | "3006")
}

/// A recipient a gateway refused as opted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayOptout {
    /// The message's number, as munja stored it.
    pub phone: String,
    /// The configured name of the gateway that said so.
    pub gateway: String,
    pub msg_ref: String,
}

/// The recipients of a chunk's `updates` a gateway refused as opted out (failed with reason
/// [`OPTED_OUT`]); `phones`: message id -> (phone, ref).
pub fn refused_in(
    updates: &[MessageUpdate],
    phones: &HashMap<i64, (String, String)>,
) -> Vec<GatewayOptout> {
    updates
        .iter()
        .filter(|u| u.state == MessageState::Failed && u.reason.as_deref() == Some(OPTED_OUT))
        .filter_map(|u| {
            let (phone, msg_ref) = phones.get(&u.id)?;
            Some(GatewayOptout {
                phone: phone.clone(),
                gateway: u.gateway.clone()?,
                msg_ref: msg_ref.clone(),
            })
        })
        .collect()
}

/// Adds every number of `list`; returns how many were not on the list before.
pub async fn add_all(store: &dyn Store, list: &[GatewayOptout]) -> Result<u64, StoreError> {
    let mut added = 0;
    for o in list {
        let why = "the gateway refused the send: the recipient opted out";
        if add(store, &o.phone, &o.gateway, &o.msg_ref, why).await? {
            added += 1;
        }
    }
    Ok(added)
}

/// Adds one number (with the source of `gateway`); `true` when it was not on the list before.
async fn add(
    store: &dyn Store,
    raw: &str,
    gateway: &str,
    msg_ref: &str,
    why: &str,
) -> Result<bool, StoreError> {
    let Ok(p) = phone::normalize_mobile(raw) else {
        warn!(gateway, msg_ref, phone = %phone::mask(raw), "{why}, but the number is not a Korean mobile number: not added to the opt-out list");
        return Ok(false);
    };
    let new = store.optout_add(&p, &source(gateway)).await?;
    if new {
        info!(gateway, msg_ref, phone = %p.masked(), "{why}: added to munja's opt-out list");
    } else {
        debug!(gateway, msg_ref, phone = %p.masked(), "{why}: already on the opt-out list");
    }
    Ok(new)
}

/// An NHN Cloud delivery report whose result code says opted out: the number of the message it
/// names joins the list. `campaign`: the id of the campaign the ref belongs to, when the
/// caller knows it (otherwise it is found by the ref's campaign uid). Returns `true` when the
/// number was added; reports for unknown refs, intermediate ones and other codes change nothing.
pub async fn from_nhn_report(
    store: &dyn Store,
    campaign: Option<i64>,
    r: &DeliveryReport,
    effect: DeliveryEffect,
) -> Result<bool, StoreError> {
    if effect == DeliveryEffect::Unknown
        || !matches!(r.status, ReportStatus::Final(_))
        || !r.code.as_deref().is_some_and(nhn_code_opted_out)
    {
        return Ok(false);
    }
    let Some((uid, seq)) = crate::store::split_ref(&r.msg_ref) else {
        return Ok(false);
    };
    let id = match campaign {
        Some(id) => id,
        None => match store.campaigns().await?.into_iter().find(|c| c.uid == uid) {
            Some(c) => c.id,
            None => return Ok(false),
        },
    };
    let filter = AuditFilter {
        campaign: id,
        after_seq: seq - 1,
        limit: 1,
        ..Default::default()
    };
    let Some(m) = store
        .audit(&filter)
        .await?
        .into_iter()
        .find(|m| m.msg_ref == r.msg_ref)
    else {
        warn!(gateway = %r.gateway, msg_ref = %r.msg_ref, "NHN result says opted out, but no message of campaign {id} has the ref: nothing added");
        return Ok(false);
    };
    let why = format!(
        "NHN delivery result {} says the recipient opted out",
        r.code.as_deref().unwrap_or_default()
    );
    add(store, &m.phone, &r.gateway, &r.msg_ref, &why).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhn_opt_out_codes() {
        assert!(nhn_code_opted_out("-6001") && nhn_code_opted_out("3006"));
        assert!(nhn_code_opted_out(" 3006 "));
        assert!(!nhn_code_opted_out("3001") && !nhn_code_opted_out("1000"));
        assert_eq!(source("nhn"), "result:nhn");
    }

    #[test]
    fn only_failed_opted_out_sends_with_a_gateway_count() {
        let u = |id, state, reason: &str, gateway: Option<&str>| MessageUpdate {
            id,
            state,
            reason: Some(reason.to_string()),
            retryable: false,
            gateway_id: None,
            gateway: gateway.map(str::to_string),
            kind: None,
            bytes: None,
            attempts: Vec::new(),
        };
        let phones: HashMap<i64, (String, String)> = (1..=4)
            .map(|i| (i, (format!("0101234000{i}"), format!("r-{i}"))))
            .collect();
        let updates = [
            u(1, MessageState::Failed, OPTED_OUT, Some("nhn")),
            u(2, MessageState::Suppressed, OPTED_OUT, None),
            u(3, MessageState::Failed, "invalid_number", Some("nhn")),
            u(4, MessageState::Failed, OPTED_OUT, None),
        ];
        assert_eq!(
            refused_in(&updates, &phones),
            vec![GatewayOptout {
                phone: "01012340001".into(),
                gateway: "nhn".into(),
                msg_ref: "r-1".into(),
            }]
        );
    }
}
