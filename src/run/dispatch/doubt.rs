//! Messages the gateway may or may not have: settled by lookup at the start of a run and when
//! attempts run out, kept `in_doubt` (never failed, cancelled or resent) while it cannot be asked,
//! and the streak of identical rejections that pauses a run.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tracing::{debug, info};

use super::claim::Runner;
use super::control::StopReason;
use super::lanes::Lane;
use super::lookup::look_up_patiently;
use super::sender::{Item, SendCtx, backoff_policy};
use super::update::update_for;
use crate::gateway::{Attempt, Lookup, Outcome, Proof};
use crate::store::{AttemptRecord, ClaimedMessage, MessageState, MessageUpdate, Store};

impl Runner<'_> {
    /// Settles messages in doubt (and those an earlier execution left `sending`) by lookup:
    /// found on the gateway means sent; not found goes back to pending, to be resent under the
    /// same ref, or becomes `cancelled` with `cancelled`; no answer leaves it in doubt.
    pub(super) async fn settle_in_doubt(&mut self, cancelled: bool) -> anyhow::Result<()> {
        // Every request of an earlier run (or of a rescued worker) went out before now.
        let started = Utc::now();
        let mut after = 0;
        loop {
            let batch = self
                .store
                .in_doubt(&self.worker, after, self.chunk_size as i64)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            if self.ctx.ctl.stopping() {
                // Unsettled messages stay as they are (`sending` or `in_doubt`): still in doubt.
                return Ok(());
            }
            after = last.id;
            info!(
                messages = batch.len(),
                first = batch.first().map(|m| m.id),
                last = after,
                "settling in-doubt messages by lookup"
            );
            let mut set = tokio::task::JoinSet::new();
            for m in batch {
                let (ctx, store) = (self.ctx.clone(), self.store.clone());
                set.spawn(async move {
                    let t0 = Instant::now();
                    let at = Utc::now();
                    let since = m.in_doubt_at.unwrap_or(started);
                    let found = look_up_anywhere(&ctx, &*store, &m, since);
                    let found = ctx.ctl.until(found).await.flatten()?;
                    Some((m, found, at, t0.elapsed()))
                });
            }
            let mut updates = Vec::new();
            while let Some(joined) = set.join_next().await {
                // A lookup cut short by a stop leaves its message `sending`, still in doubt.
                let Some((m, found, at, took)) = joined.context("lookup task panicked")? else {
                    continue;
                };
                // Already recorded in doubt at a gateway nobody can ask, and no delivery report
                // since: nothing new to record (no attempt is added run after run).
                if found.unaskable && m.in_doubt_at.is_some() {
                    continue;
                }
                updates.push(self.settled(m, found, cancelled, at, took));
            }
            if !updates.is_empty() {
                self.store.commit_chunk(&self.worker, &updates).await?;
            }
        }
    }

    /// The update of message `m` after its lookup `found` (made at `at`, taking `took`).
    fn settled(
        &mut self,
        m: ClaimedMessage,
        found: Found,
        cancelled: bool,
        at: chrono::DateTime<Utc>,
        took: Duration,
    ) -> MessageUpdate {
        let gateway = found.gateway;
        let (state, outcome, gateway_id, error) = match found.lookup {
            Lookup::Found { gateway_id, .. } => {
                (MessageState::Sent, "lookup_found", Some(gateway_id), None)
            }
            Lookup::NotFound if cancelled => {
                (MessageState::Cancelled, "lookup_missing", None, None)
            }
            Lookup::NotFound => (MessageState::Pending, "lookup_missing", None, None),
            // Still in doubt: neither resent nor cancelled until the gateway answers.
            Lookup::Unavailable { reason } => (
                MessageState::InDoubt,
                "lookup_unavailable",
                None,
                Some(reason),
            ),
        };
        if state == MessageState::Sent {
            self.sent_now += 1;
        }
        // The audit row of a message found on the gateway shows what was sent.
        let composed = self.composer.compose_json(&m.vars).ok();
        MessageUpdate {
            id: m.id,
            state,
            reason: (state == MessageState::InDoubt).then(|| outcome.to_string()),
            retryable: false,
            gateway_id: gateway_id.clone(),
            gateway: gateway.clone(),
            kind: composed.as_ref().map(|c| c.kind.as_str().to_string()),
            bytes: composed.as_ref().map(|c| c.bytes as i64),
            attempts: vec![AttemptRecord {
                at,
                outcome: outcome.into(),
                http_status: None,
                gateway_id,
                gateway,
                error,
                latency_ms: took.as_millis() as i64,
            }],
        }
    }
}

/// A message left unfinished by a stop: `in_doubt` when the gateway may have it, else `pending`.
pub(super) fn leftover(item: &Item) -> MessageUpdate {
    match &item.doubt {
        Some(code) => update_for(item, MessageState::InDoubt, Some(code.clone()), false, None),
        None => update_for(item, MessageState::Pending, None, false, None),
    }
}

/// A request abandoned by an abort may have been written: its messages are in doubt.
pub(super) fn mark_aborted(items: &mut [Item], t0: Instant) {
    let at = Utc::now() - chrono::Duration::from_std(t0.elapsed()).unwrap_or_default();
    for item in items {
        item.doubt = Some("aborted".into());
        item.attempts.push(AttemptRecord {
            at,
            outcome: "aborted".into(),
            http_status: None,
            gateway_id: None,
            gateway: item.gateway.clone(),
            error: None,
            latency_ms: t0.elapsed().as_millis() as i64,
        });
    }
}

/// Attempts ran out while the gateway may have the message: ask it. Found is `sent`; not found
/// is a retryable failure (the gateway does not have it); no answer leaves it in doubt.
pub(super) async fn look_up_exhausted(
    ctx: &SendCtx,
    lane: &Lane,
    mut item: Item,
    last_code: &str,
) -> MessageUpdate {
    let at = Utc::now();
    let t0 = Instant::now();
    let last_request = item.attempts.last().map_or(at, |a| a.at);
    let found = look_up_patiently(&ctx.ctl, lane, &item.out.msg_ref, last_request).await;
    let (state, outcome, gateway_id, error) = match found {
        None => return leftover(&item),
        Some(Lookup::Found { gateway_id, .. }) => {
            (MessageState::Sent, "lookup_found", Some(gateway_id), None)
        }
        Some(Lookup::NotFound) => (MessageState::Failed, "lookup_missing", None, None),
        Some(Lookup::Unavailable { reason }) => (
            MessageState::InDoubt,
            "lookup_unavailable",
            None,
            Some(reason),
        ),
    };
    debug!(outcome, "looked up after the last attempt");
    item.attempts.push(AttemptRecord {
        at,
        outcome: outcome.into(),
        http_status: None,
        gateway_id: gateway_id.clone(),
        gateway: Some(lane.name().to_string()),
        error,
        latency_ms: t0.elapsed().as_millis() as i64,
    });
    let reason = match state {
        MessageState::Sent => None,
        MessageState::Failed => Some(last_code.to_string()),
        _ => item.doubt.clone(),
    };
    let retryable = state == MessageState::Failed;
    update_for(&item, state, reason, retryable, gateway_id)
}

/// What [`look_up_anywhere`] came to.
struct Found {
    lookup: Lookup,
    /// The gateway the answer came from.
    gateway: Option<String>,
    /// Every gateway it may be at cannot be asked (Kannel) and no delivery report proves it.
    unaskable: bool,
}

/// Looks message `m` up where it may be: at the gateway its last request went to, or, when
/// none is recorded (a crash between the claim and the commit), at every gateway of the
/// campaign. Found anywhere is found; not found only when every gateway asked says so, each
/// asked patiently (its last request went out at `since` at the latest). Returns `None` when
/// the run stops first.
async fn look_up_anywhere(
    ctx: &SendCtx,
    store: &dyn Store,
    m: &ClaimedMessage,
    since: chrono::DateTime<Utc>,
) -> Option<Found> {
    let lanes = &ctx.lanes.lanes;
    let at: Vec<&Lane> = match m.gateway.as_deref().map(|g| ctx.lanes.by_name(g)) {
        Some(Some(i)) => vec![&lanes[i]],
        Some(None) => {
            let reason = format!(
                "gateway {:?} is no longer a gateway of this campaign",
                m.gateway.as_deref().unwrap_or_default()
            );
            let lookup = Lookup::Unavailable { reason };
            return Some(Found {
                lookup,
                gateway: m.gateway.clone(),
                unaskable: false,
            });
        }
        None => lanes.iter().collect(),
    };
    let mut unavailable: Option<Found> = None;
    for lane in at {
        let found = |lookup| Found {
            lookup,
            gateway: Some(lane.name().to_string()),
            unaskable: false,
        };
        // A gateway that cannot be asked (Kannel) proves a message sent by its delivery
        // reports: a type 8 (the SMSC took it) or a final report for its ref.
        if lane.caps.proof == Proof::DeliveryReport {
            if let Ok(reports) = store.delivery_reports(&m.msg_ref).await
                && crate::run::delivery::kannel_proves_sent(&reports)
            {
                return Some(found(Lookup::Found {
                    gateway_id: "delivery-report".into(),
                    status: "accepted".into(),
                }));
            }
            let reason = format!(
                "gateway {} (kannel) cannot be asked whether it has a message; it waits for a \
                 delivery report, or for --resend-in-doubt",
                lane.name()
            );
            let keep = unavailable.as_ref().is_none_or(|u| u.unaskable);
            if keep {
                unavailable = Some(Found {
                    unaskable: true,
                    ..found(Lookup::Unavailable { reason })
                });
            }
            continue;
        }
        match look_up_patiently(&ctx.ctl, lane, &m.msg_ref, since).await? {
            f @ Lookup::Found { .. } => return Some(found(f)),
            Lookup::NotFound => {}
            // A gateway that could be asked but did not answer: asked again next run.
            u @ Lookup::Unavailable { .. } => {
                if unavailable.as_ref().is_none_or(|u| u.unaskable) {
                    unavailable = Some(found(u));
                }
            }
        }
    }
    Some(unavailable.unwrap_or(Found {
        lookup: Lookup::NotFound,
        gateway: m.gateway.clone(),
        unaskable: false,
    }))
}

/// Counts recipient-level rejections with the same code in a row; at
/// `max_consecutive_failures` the run pauses (STOPPED) instead of walking the list.
pub(super) fn note_rejections(ctx: &SendCtx, attempts: &[Attempt]) {
    let Ok(mut streak) = ctx.rejections.lock() else {
        return;
    };
    for a in attempts {
        match &a.outcome {
            Outcome::Rejected { code, .. } => {
                if streak.0 == *code {
                    streak.1 += 1;
                } else {
                    *streak = (code.clone(), 1);
                }
                if streak.1 >= ctx.max_consecutive_failures {
                    ctx.ctl.stop(StopReason::RepeatedRejection {
                        code: code.clone(),
                        n: streak.1,
                    });
                }
            }
            Outcome::Accepted { .. } => *streak = (String::new(), 0),
            _ => {}
        }
    }
}

/// A message that may have reached `lane`, which does not dedupe: never retried blindly. Where
/// the gateway can be asked it is looked up patiently (from the gateway's `lookup_delay_ms`
/// after the request on, and again with backoff: time for the provider to list what it took):
/// found is `sent`; not found is retried at once (anywhere: the gateway proved it never got it);
/// no answer, or a gateway that cannot be asked, leaves it `in_doubt`, never resent on its own.
/// A message out of attempts that is not found is a retryable failure.
pub(super) async fn settle_now(
    ctx: &SendCtx,
    lane: &Lane,
    mut item: Item,
    done: &mut Vec<MessageUpdate>,
) -> Option<Item> {
    let code = item.doubt.clone().unwrap_or_else(|| "in_doubt".into());
    // The attempt counts; the lookup waits for the gateway to list what it took.
    let wait = item.backoff.next();
    let update = look_up_exhausted(ctx, lane, item_clone(&item), &code).await;
    if update.state != MessageState::Failed {
        done.push(update);
        return None;
    }
    if wait.is_none() {
        // Not found and out of attempts: a retryable failure (`--retry-failed`).
        done.push(update);
        return None;
    }
    // Not found: the lookup is recorded and the message is free to go again.
    item.attempts = update.attempts;
    item.doubt = None;
    item.sticky = None;
    item.wait = Duration::ZERO;
    Some(item)
}

fn item_clone(item: &Item) -> Item {
    Item {
        id: item.id,
        night_consent: item.night_consent,
        out: item.out.clone(),
        kind: item.kind.clone(),
        bytes: item.bytes,
        attempts: item.attempts.clone(),
        backoff: backoff_policy(1),
        wait: item.wait,
        doubt: item.doubt.clone(),
        lane: item.lane,
        gateway: item.gateway.clone(),
        sticky: item.sticky,
        prefer: item.prefer,
    }
}
