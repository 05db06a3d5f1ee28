//! Does munja's record agree with the gateway's? Each message of a campaign is looked up on the
//! simulator: a message munja calls `sent` must be there, any other must not, and the simulator
//! must hold nothing munja does not call sent.

use std::collections::BTreeMap;
use std::time::Duration;

use munja::gateway::{HttpJsonGateway, Lookup};

use super::{Env, n};

/// Per audit status: (messages the gateway has, messages).
pub async fn gateway_view(env: &Env, id: &str) -> BTreeMap<String, (u64, u64)> {
    let gw = HttpJsonGateway::new("check", &env.sim.url(), None, Duration::from_secs(10), 8)
        .expect("lookup client");
    let mut view: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for row in env.audit_json(id).await {
        let msg_ref = row["ref"].as_str().expect("ref");
        let found = match gw.lookup(msg_ref).await {
            Lookup::Found { .. } => true,
            Lookup::NotFound => false,
            other => panic!("lookup of {msg_ref} failed: {other:?}"),
        };
        let e = view
            .entry(row["status"].as_str().expect("status").to_string())
            .or_default();
        e.0 += u64::from(found);
        e.1 += 1;
    }
    view
}

/// `status` and `audit` equal what the gateway holds.
pub async fn assert_agrees(env: &Env, id: &str) {
    let accepted = env.sim.stats().accepted;
    let view = gateway_view(env, id).await;
    for (status, (on_gateway, total)) in &view {
        if status == "sent" {
            assert_eq!(
                on_gateway, total,
                "every sent message is on the gateway: {view:?}"
            );
        } else {
            assert_eq!(
                *on_gateway, 0,
                "no {status} message is on the gateway: {view:?}"
            );
        }
    }
    let sent = view.get("sent").map_or(0, |v| v.1);
    assert_eq!(sent, accepted, "the gateway holds nothing else: {view:?}");
    let st = env.status(id).await;
    assert_eq!(n(&st, "sent") as u64, accepted, "{st}");
}

/// The campaign has messages `in_doubt` and `other` (`cancelled`, `pending`); everything the
/// gateway took is in doubt, none of it `other`: what a halted run leaves for a lookup to settle.
pub async fn assert_taken_only_in_doubt(env: &Env, id: &str, other: &str) {
    let view = gateway_view(env, id).await;
    let on_gateway = |status: &str| {
        view.get(status)
            .unwrap_or_else(|| panic!("the campaign has no {status} message: {view:?}"))
            .0
    };
    assert_eq!(
        on_gateway(other),
        0,
        "no {other} message is on the gateway: {view:?}"
    );
    assert_eq!(
        on_gateway("in_doubt"),
        env.sim.stats().accepted,
        "every message the gateway took is in doubt: {view:?}"
    );
}
