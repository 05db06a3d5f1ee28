//! Sending one claimed chunk: composing each message, grouping them as the gateways batch
//! (many texts per request, or one text for many recipients), one request per group on the lane
//! [`lanes`](super::lanes) picks (failover or split), that gateway's rate limiters (this run's,
//! then the budget shared by all runs), request slots and `Retry-After` pauses, backoff with
//! jitter for transient outcomes, and the checks made right before each request (the night
//! rule, opt-outs that arrived after the claim). A message that may have reached a gateway that
//! does not dedupe is never retried blindly: it is looked up, or stays in doubt.

use std::collections::HashMap;
use std::mem::take;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use tokio::sync::SemaphorePermit;
use tracing::{Instrument, debug, warn};

use super::control::{Control, StopReason};
use super::doubt::{leftover, look_up_exhausted, mark_aborted, note_rejections, settle_now};
use super::lanes::{Lane, Lanes, Pick, group_items};
use super::lease::FreshOptouts;
use super::update::{update_for, update_from};
use crate::config::{Config, GatewayConfig};
use crate::domain::message::Composer;
use crate::domain::model::{AttemptRecord, Campaign, ClaimedMessage, MessageState, MessageUpdate};
use crate::domain::phone;
use crate::gateway::{Attempt, OutMessage, Outcome};
use crate::run::delivery::optouts::{self, GatewayOptout};
use crate::run::progress::PauseNotice;
use crate::store::Store;

/// Everything the senders of one run share.
pub(super) struct SendCtx {
    /// The campaign's gateways, in the order given at `campaign create`.
    pub(super) lanes: Lanes,
    /// `--resend-in-doubt`: after settling, messages still in doubt go back to the queue.
    pub(super) resend_in_doubt: bool,
    /// Shows a gateway pause in the progress display.
    pub(super) pause_notice: Option<PauseNotice>,
    pub(super) consecutive_failures: AtomicU32,
    /// The last recipient-level rejection code and how many messages in a row got it.
    pub(super) rejections: Mutex<(String, u32)>,
    pub(super) max_consecutive_failures: u32,
    pub(super) max_attempts: u32,
    pub(super) from: String,
    pub(super) ad: bool,
    pub(super) campaign_uid: String,
    pub(super) ctl: Arc<Control>,
    pub(super) quiet: Option<QuietRule>,
    /// Numbers of this run's claimed messages opted out since the run started, replaced with
    /// every heartbeat: checked right before each request, so a chunk claimed earlier cannot
    /// send to them.
    pub(super) fresh_optouts: FreshOptouts,
}

#[derive(Clone, Copy)]
pub(super) struct QuietRule {
    pub(super) hours: crate::domain::compliance::QuietHours,
    pub(super) tz: chrono_tz::Tz,
}

impl QuietRule {
    pub(super) fn now(&self) -> bool {
        self.hours.is_quiet_at(self.tz, Utc::now())
    }
}

/// One message on its way: its composed wire form and what happened to it so far.
pub(super) struct Item {
    pub(super) id: i64,
    pub(super) night_consent: bool,
    pub(super) out: OutMessage,
    pub(super) kind: String,
    pub(super) bytes: i64,
    pub(super) attempts: Vec<AttemptRecord>,
    pub(super) backoff: backon::ExponentialBackoff,
    pub(super) wait: Duration,
    /// The code of the last attempt that may have been accepted (timeout, reset, unreadable
    /// 2xx, ...), until a definitive answer (accepted, rejected) clears it: a later 503 does not.
    pub(super) doubt: Option<String>,
    /// The lane of the last request, and its gateway's name (recorded with the message).
    pub(super) lane: Option<usize>,
    pub(super) gateway: Option<String>,
    /// The lane the message may be at while `doubt` holds (a deduping gateway, where a retry
    /// with the same ref is safe): it is retried there or nowhere.
    pub(super) sticky: Option<usize>,
    /// `--split`: the lane this message is dealt to (tried first; others if its breaker is open).
    pub(super) prefer: Option<usize>,
}

pub(super) fn send_ctx(
    store: Arc<dyn Store>,
    gateways: &[GatewayConfig],
    split: bool,
    cfg: &Config,
    c: &Campaign,
    ctl: Arc<Control>,
    fresh_optouts: FreshOptouts,
) -> anyhow::Result<SendCtx> {
    let lanes = Lanes::new(store, gateways, split)?;
    Ok(SendCtx {
        max_attempts: lanes.lanes.first().map_or(1, |l| l.max_attempts),
        lanes,
        resend_in_doubt: false,
        pause_notice: None,
        consecutive_failures: AtomicU32::new(0),
        rejections: Mutex::default(),
        max_consecutive_failures: cfg.policy.max_consecutive_failures,
        from: c.sender_number.clone(),
        ad: c.ad,
        campaign_uid: c.uid.clone(),
        ctl,
        quiet: c.ad.then_some(QuietRule {
            hours: cfg.policy.quiet_hours,
            tz: cfg.policy.timezone,
        }),
        fresh_optouts,
    })
}

/// What sending one claimed chunk came to.
pub(super) struct ChunkSent {
    /// One update per message.
    pub(super) updates: Vec<MessageUpdate>,
    /// The first reason a message could not be composed.
    pub(super) first_error: Option<String>,
    /// Recipients a gateway refused as opted out: they join munja's opt-out list.
    pub(super) opted_out: Vec<GatewayOptout>,
}

/// Send tasks a chunk keeps at once per request slot, and at least (see [`send_chunk`]).
const TASKS_PER_SLOT: usize = 2;
const MIN_TASKS: usize = 64;

/// Composes and sends one claimed chunk.
pub(super) async fn send_chunk(
    ctx: Arc<SendCtx>,
    composer: Arc<Composer>,
    messages: Vec<ClaimedMessage>,
) -> ChunkSent {
    let phones: HashMap<i64, (String, String)> = messages
        .iter()
        .map(|m| (m.id, (m.phone.clone(), m.msg_ref.clone())))
        .collect();
    let mut first_error = None;
    let mut updates = Vec::with_capacity(messages.len());
    let mut items = Vec::with_capacity(messages.len());
    for m in messages {
        match composer.compose_json(&m.vars) {
            Err(e) => {
                debug!(msg_ref = %m.msg_ref, phone = %phone::mask(&m.phone), code = %e.code, "message cannot be sent: {e}");
                updates.push(MessageUpdate {
                    id: m.id,
                    state: MessageState::Failed,
                    reason: Some(e.code.clone()),
                    retryable: false,
                    gateway_id: None,
                    gateway: None,
                    kind: None,
                    bytes: None,
                    attempts: Vec::new(),
                });
                first_error.get_or_insert(e.message);
            }
            Ok(composed) => items.push(Item {
                id: m.id,
                night_consent: m.night_consent,
                kind: composed.kind.as_str().to_string(),
                bytes: composed.bytes as i64,
                out: OutMessage {
                    msg_ref: m.msg_ref,
                    to: m.phone,
                    from: ctx.from.clone(),
                    kind: composed.kind.as_str().to_string(),
                    subject: composed.subject,
                    text: composed.text,
                    ad: ctx.ad,
                    campaign: ctx.campaign_uid.clone(),
                },
                attempts: Vec::new(),
                backoff: backoff_policy(ctx.max_attempts),
                wait: Duration::ZERO,
                doubt: None,
                lane: None,
                // The gateway of its last request, if any (a resumed message).
                gateway: m.gateway,
                sticky: None,
                prefer: None,
            }),
        }
    }
    ctx.lanes.assign(&mut items);
    // A few senders per request slot, each sending one request group after another: a
    // group's future is kilobytes, and a chunk of 10,000 single requests spawned as as many
    // tasks held every one of them (times the chunks in flight) while only `concurrency` could
    // send; a task per group also cost an allocation of that size and its copy per message. The
    // headroom over the slots keeps requests flowing while some senders wait out a retry's
    // backoff (which holds no request slot): with exactly one sender per slot, a gateway that
    // times out every request left every sender backing off and nothing new sent.
    let limit = ctx
        .lanes
        .slots()
        .saturating_mul(TASKS_PER_SLOT)
        .max(MIN_TASKS);
    let groups = group_items(&ctx, items);
    let senders = limit.min(groups.len());
    let groups = Arc::new(Mutex::new(groups.into_iter()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (ctx, groups) = (ctx.clone(), groups.clone());
        let sender = async move {
            let mut done = Vec::new();
            loop {
                let next = groups.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some(group) = next else { break };
                done.append(&mut send_group(ctx.clone(), group).await);
            }
            done
        };
        set.spawn(sender.instrument(tracing::Span::current()));
    }
    while let Some(sent) = set.join_next().await {
        match sent {
            Ok(mut u) => updates.append(&mut u),
            Err(e) => warn!("send task failed: {e}"),
        }
    }
    let opted_out = optouts::refused_in(&updates, &phones);
    ChunkSent {
        updates,
        first_error,
        opted_out,
    }
}

/// A `Retry-After` pause at least this long is logged at default verbosity.
const LONG_PAUSE: Duration = Duration::from_secs(5);

/// Pauses the whole gateway for `wait` (a `Retry-After`, already cut to the gateway's
/// `max_retry_after_secs`). A pause that begins is shown in the progress display, and logged
/// when long. Cannot overflow or poison: a wait too long for the clock is no pause extension.
fn pause_gateway(ctx: &SendCtx, lane: &Lane, wait: Duration) {
    let now = Instant::now();
    let Some(until) = now.checked_add(wait) else {
        return;
    };
    let begins = {
        let mut p = lane
            .pause_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let begins = p.is_none_or(|old| old <= now);
        if p.is_none_or(|old| old < until) {
            *p = Some(until);
        }
        begins
    };
    if begins && !wait.is_zero() {
        if wait >= LONG_PAUSE {
            warn!(
                gateway = lane.name(),
                "gateway Retry-After: pausing all sends for {}s",
                wait.as_secs()
            );
        }
        if let Some(notice) = &ctx.pause_notice {
            notice(wait);
        }
    }
}

pub(super) fn quiet_stop(q: QuietRule) -> StopReason {
    let opens = q.hours.next_open(q.tz, Utc::now());
    StopReason::QuietHours(format!(
        "quiet_hours: ads cannot be sent to recipients without night consent during {} ({}); \
         they wait. Run again after {}",
        q.hours,
        q.tz,
        opens.with_timezone(&q.tz).format("%Y-%m-%d %H:%M %Z")
    ))
}

/// Exponential backoff with jitter: 200 ms doubling to 10 s, `max_attempts` tries in all.
pub(super) fn backoff_policy(max_attempts: u32) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .with_max_times(max_attempts.saturating_sub(1) as usize)
        .build()
}

/// Moves the items matching `aside` out of the request, recording them with `state` and `reason`;
/// returns the rest.
fn set_aside(
    items: Vec<Item>,
    aside: impl Fn(&Item) -> bool,
    state: MessageState,
    reason: &str,
    done: &mut Vec<MessageUpdate>,
) -> Vec<Item> {
    let (out, keep): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| aside(i));
    // One the gateway may already have stays in doubt: the next run settles it by lookup.
    done.extend(out.iter().map(|i| match i.doubt {
        Some(_) => leftover(i),
        None => update_for(i, state, Some(reason.to_string()), false, None),
    }));
    keep
}

/// Sends one group (requests of a single message, or a batch) until every item is final or
/// the run stops; unattempted or still-retryable items go back to `pending`.
async fn send_group(ctx: Arc<SendCtx>, mut items: Vec<Item>) -> Vec<MessageUpdate> {
    let mut done = Vec::with_capacity(items.len());
    while !items.is_empty() {
        let wait = items.iter().map(|i| i.wait).max().unwrap_or_default();
        if !wait.is_zero() {
            ctx.ctl.sleep(wait).await;
            for item in &mut items {
                item.wait = Duration::ZERO;
            }
        }
        if ctx.ctl.stopping() {
            break;
        }
        let sticky = items.iter().find_map(|i| i.sticky);
        let (li, lane) = match ctx.lanes.pick(items[0].prefer, sticky) {
            Pick::Lane(i, lane) => (i, lane),
            Pick::StickyClosed(i) => {
                let (stuck, rest): (Vec<Item>, Vec<Item>) =
                    items.into_iter().partition(|it| it.sticky == Some(i));
                done.extend(stuck.iter().map(leftover));
                items = rest;
                continue;
            }
            Pick::NoneOpen { for_run: Some(why) } => {
                ctx.ctl.stop(StopReason::GatewayRefused(why));
                break;
            }
            Pick::NoneOpen { for_run: None } => {
                let n = ctx.consecutive_failures.load(Ordering::Relaxed);
                ctx.ctl.stop(StopReason::GatewayUnhealthy(n));
                break;
            }
        };
        // A message that may be at another gateway is not sent here: it stays in doubt.
        items = set_aside(
            items,
            |i| i.sticky.is_some_and(|s| s != li),
            MessageState::InDoubt,
            "in_doubt",
            &mut done,
        );
        let rest = items.split_off(lane.caps.max_batch.clamp(1, items.len().max(1)));
        let permit = match wait_turn(&ctx, lane, &items).await {
            Turn::Go(permit) => permit,
            Turn::Repick => {
                lane.release_probe();
                items.extend(rest);
                continue;
            }
            Turn::Stop => {
                items.extend(rest);
                break;
            }
        };
        items = screen(&ctx, items, &mut done);
        if items.is_empty() {
            drop(permit);
            items = rest;
            continue;
        }
        for item in &mut items {
            item.lane = Some(li);
            item.gateway = Some(lane.name().to_string());
        }
        let t0 = Instant::now();
        // The request borrows the messages' wire forms; they go back to their items after it.
        let outs: Vec<OutMessage> = items.iter_mut().map(|i| take(&mut i.out)).collect();
        let metered = crate::run::metrics::request_started(lane.shared.gateway());
        let sent = ctx.ctl.unless_aborted(lane.gateway.send(&outs)).await;
        drop(metered);
        for (item, out) in items.iter_mut().zip(outs) {
            item.out = out;
        }
        let Some(attempts) = sent else {
            mark_aborted(&mut items, t0);
            items.extend(rest);
            break;
        };
        drop(permit);
        lane.note(&attempts);
        note_health(&ctx, &attempts);
        note_rejections(&ctx, &attempts);
        let mut again = Vec::new();
        for (item, a) in items.into_iter().zip(attempts) {
            if let Some(item) = apply_attempt(&ctx, lane, item, a, &mut done).await {
                again.push(item);
            }
        }
        again.extend(rest);
        items = again;
    }
    // Stopped: whatever is left goes back to the queue under the same ref, or stays in doubt.
    done.extend(items.iter().map(leftover));
    done
}

/// What [`wait_turn`] came to.
enum Turn<'c> {
    Go(SemaphorePermit<'c>),
    /// The lane's request slots stayed busy: pick a lane again (another may have closed its
    /// breaker meanwhile, such as the first gateway of a failover list).
    Repick,
    Stop,
}

/// How long a request waits for a slot of its lane before the lane is picked again.
const REPICK: Duration = Duration::from_millis(100);

/// Waits until `items` may be sent on `lane`: the gateway's pause, a request slot, then the
/// rate limiter, the last thing checked before sending.
async fn wait_turn<'c>(ctx: &SendCtx, lane: &'c Lane, items: &[Item]) -> Turn<'c> {
    let pause = *lane
        .pause_until
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(until) = pause {
        let now = Instant::now();
        if until > now {
            ctx.ctl.sleep(until - now).await;
            if ctx.ctl.stopping() {
                return Turn::Stop;
            }
        }
    }
    // Both waits end early when the run stops. With one lane there is nowhere else to go: no
    // timer to pick again.
    let permit = if ctx.lanes.lanes.len() > 1 {
        let slot = tokio::time::timeout(REPICK, lane.in_flight.acquire());
        match ctx.ctl.until(slot).await {
            None | Some(Ok(Err(_))) => return Turn::Stop,
            Some(Err(_)) => return Turn::Repick,
            Some(Ok(Ok(permit))) => permit,
        }
    } else {
        match ctx.ctl.until(lane.in_flight.acquire()).await {
            Some(Ok(permit)) => permit,
            _ => return Turn::Stop,
        }
    };
    if ctx.lanes.lanes.len() > 1 && lane.opened_since_pick() {
        return Turn::Repick;
    }
    let n = NonZeroU32::new(items.len() as u32).unwrap_or(NonZeroU32::MIN);
    let waiting = Instant::now();
    let limiter = async {
        if lane.limiter.until_n_ready(n).await.is_err() {
            // Cannot happen: config guarantees batch_size <= burst. One at a time, then.
            for _ in 0..n.get() {
                lane.limiter.until_ready().await;
            }
        }
        // Then the budget every run on this gateway shares.
        lane.shared.until_n_ready(n.get()).await
    };
    match ctx.ctl.until(limiter).await {
        None => Turn::Stop,
        Some(Err(e)) => {
            ctx.ctl.stop(StopReason::RateBudget(e.to_string()));
            Turn::Stop
        }
        Some(Ok(())) => {
            crate::run::metrics::record_rate_wait(lane.shared.gateway(), waiting.elapsed());
            Turn::Go(permit)
        }
    }
}

/// The night rule and opt-outs that arrived after the claim, at the moment of sending: the
/// items they cover are set aside; returns the rest.
fn screen(ctx: &SendCtx, mut items: Vec<Item>, done: &mut Vec<MessageUpdate>) -> Vec<Item> {
    if let Some(q) = ctx.quiet
        && items.iter().any(|i| !i.night_consent)
        && q.now()
    {
        items = set_aside(
            items,
            |i| !i.night_consent,
            MessageState::Pending,
            "quiet_hours",
            done,
        );
    }
    if let Ok(fresh) = ctx.fresh_optouts.read()
        && !fresh.is_empty()
    {
        items = set_aside(
            items,
            |i| fresh.contains(&i.out.to),
            MessageState::Suppressed,
            "opted_out_during_run",
            done,
        );
    }
    items
}

/// The health counter counts requests: a failed batch is one failure, not fifty. At
/// `max_consecutive_failures` a run on one gateway stops as gateway_unhealthy.
fn note_health(ctx: &SendCtx, attempts: &[Attempt]) {
    if attempts.iter().all(|a| a.outcome.is_transient()) {
        let n = ctx.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // With several gateways the breakers decide: the run pauses when all are open.
        if n >= ctx.max_consecutive_failures && ctx.lanes.lanes.len() == 1 {
            ctx.ctl.stop(StopReason::GatewayUnhealthy(n));
        }
    } else if attempts.iter().any(|a| a.outcome.is_final()) {
        ctx.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// Records attempt `a` of `item` and what it means: a final update goes to `done`; an item to
/// try again (after its backoff) is returned.
async fn apply_attempt(
    ctx: &SendCtx,
    lane: &Lane,
    mut item: Item,
    a: Attempt,
    done: &mut Vec<MessageUpdate>,
) -> Option<Item> {
    let gateway_id = match &a.outcome {
        Outcome::Accepted { gateway_id, .. } => Some(gateway_id.clone()),
        _ => None,
    };
    item.attempts.push(AttemptRecord {
        at: a.at,
        outcome: a.outcome.code().to_string(),
        http_status: a.http_status,
        gateway_id: gateway_id.clone(),
        gateway: item.gateway.clone(),
        error: match &a.outcome {
            Outcome::Rejected { message, .. } | Outcome::Halt { message, .. } => {
                Some(message.clone())
            }
            _ => None,
        },
        latency_ms: a.latency.as_millis() as i64,
    });
    if let Outcome::InDoubt { code } = &a.outcome {
        item.doubt = Some(code.clone());
        item.sticky = item.lane;
    }
    let span = tracing::debug_span!("message", msg_ref = %item.out.msg_ref, phone = %phone::mask(&item.out.to));
    let _g = span.enter();
    match a.outcome {
        Outcome::Accepted { .. } => {
            done.push(update_from(item, MessageState::Sent, None, gateway_id));
        }
        Outcome::Rejected { code, message } => {
            debug!(%code, "rejected: {}", phone::mask_in_text(&message));
            done.push(update_from(item, MessageState::Failed, Some(code), None));
        }
        // With other gateways to go to, the lane's breaker is open for the run: try elsewhere.
        Outcome::Halt { .. } if ctx.lanes.lanes.len() > 1 && item.doubt.is_none() => {
            return Some(item);
        }
        Outcome::Halt { message, .. } => {
            ctx.ctl.stop(StopReason::GatewayRefused(message));
            done.push(leftover(&item));
        }
        // No dedupe at this gateway: a retry could make a duplicate. Prove it first.
        Outcome::InDoubt { .. } if !lane.caps.dedupes => {
            return settle_now(ctx, lane, item, done).await;
        }
        transient => return retry_or_give_up(ctx, lane, item, &transient, done).await,
    }
    None
}

/// A transient outcome: the item is returned to try again after its backoff (and any
/// `Retry-After`, which also pauses the whole gateway); when its attempts ran out it is
/// looked up if the gateway may have it, else failed as retryable.
async fn retry_or_give_up(
    ctx: &SendCtx,
    lane: &Lane,
    mut item: Item,
    transient: &Outcome,
    done: &mut Vec<MessageUpdate>,
) -> Option<Item> {
    let retry_after = match transient {
        Outcome::Throttled { retry_after } => *retry_after,
        _ => None,
    };
    if let Some(ra) = retry_after {
        pause_gateway(ctx, lane, ra);
    }
    match item.backoff.next() {
        Some(d) => {
            item.wait = d.max(retry_after.unwrap_or_default());
            debug!(
                code = transient.code(),
                "transient; retrying in {:?}", item.wait
            );
            return Some(item);
        }
        None if item.doubt.is_some() => {
            debug!(code = transient.code(), "attempts exhausted in doubt");
            done.push(look_up_exhausted(ctx, lane, item, transient.code()).await);
        }
        None => {
            debug!(code = transient.code(), "attempts exhausted");
            done.push(update_for(
                &item,
                MessageState::Failed,
                Some(transient.code().to_string()),
                true,
                None,
            ));
        }
    }
    None
}
