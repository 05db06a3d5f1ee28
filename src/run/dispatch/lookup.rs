//! Asking a gateway whether it has a message, patiently: a provider may list what it took only
//! a while later (NHN Cloud queues what its send API takes), so "not found" is believed only
//! from a lookup made at least the gateway's `lookup_delay_ms` after the message's last
//! request, confirmed by lookups half, one and two delays later. Until then the message stays
//! in doubt: never resent, never failed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::control::Control;
use super::lanes::Lane;
use crate::gateway::Lookup;

/// Lookups made after the delay that must all say "not found" before it is believed.
const TRUSTED_TRIES: u32 = 4;

/// Asks `lane` whether it has `msg_ref`, whose last request went out at `last_request` at the
/// latest. "Found", or no answer (`Unavailable`), is returned at once; "not found" only as said
/// above. `None`: the run stopped or was aborted first; the message stays in doubt.
pub(super) async fn look_up_patiently(
    ctl: &Control,
    lane: &Lane,
    msg_ref: &str,
    last_request: DateTime<Utc>,
) -> Option<Lookup> {
    let delay = lane.lookup_delay;
    let trusted_from = last_request + chrono::Duration::from_std(delay).unwrap_or_default();
    let mut trusted = 0;
    let mut pause = delay / 2;
    loop {
        let asked_at = Utc::now();
        let answer = ctl
            .unless_aborted(async {
                let _permit = lane.in_flight.acquire().await.ok()?;
                Some(lane.gateway.lookup(msg_ref).await)
            })
            .await
            .flatten()?;
        if !matches!(answer, Lookup::NotFound) || delay.is_zero() {
            return Some(answer);
        }
        let wait = if asked_at >= trusted_from {
            trusted += 1;
            if trusted >= TRUSTED_TRIES {
                return Some(Lookup::NotFound);
            }
            let wait = pause;
            pause = pause.saturating_mul(2);
            wait
        } else {
            (trusted_from - asked_at).to_std().unwrap_or(Duration::ZERO)
        };
        tracing::debug!(
            gateway = lane.name(),
            "not listed yet; asking again in {wait:?} (lookup_delay_ms = {})",
            delay.as_millis()
        );
        ctl.sleep(wait).await;
        if ctl.stopping() {
            return None;
        }
    }
}
