//! The gateways of one run ("lanes"): each with its client, its rate limits (this run's pace
//! and the budget shared with every run, keyed by the gateway's name), its request slots, its
//! `Retry-After` pause and its circuit breaker; and the choice of a lane for each request:
//! failover (the first lane whose breaker is closed) or `--split` (each message's lane dealt by
//! `weight`, exactly: [`super::split`]); and how a chunk's messages are grouped into requests,
//! as the lanes batch.
//!
//! The breaker: `breaker_failures` requests in a row that failed transiently open it; after
//! `breaker_cooldown_secs` one probe request may pass, and its success closes it (a failure
//! opens it again); an answer about the account (401/403, a redirect, a refused sender) opens it
//! for the rest of the run. With a single gateway there is nowhere to fail over to: its breaker
//! never opens on transient failures (`max_consecutive_failures` decides), and an account answer
//! stops the run as before.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::limiter::SharedLimiter;
use super::sender::{Item, SendCtx};
use super::split::Shares;
use crate::config::GatewayConfig;
use crate::gateway::{Attempt, Batching, Capabilities, Gateway, Outcome};
use crate::store::Store;

/// One gateway of the run.
pub(super) struct Lane {
    pub(super) gateway: Gateway,
    pub(super) caps: Capabilities,
    /// This run's pace: at most the gateway's rate, spread evenly.
    pub(super) limiter: DefaultDirectRateLimiter,
    /// The gateway's budget shared with every other run on the job repository.
    pub(super) shared: SharedLimiter,
    pub(super) in_flight: Semaphore,
    /// The gateway's `concurrency`: the permits of `in_flight`.
    pub(super) slots: usize,
    /// `Retry-After` slows the whole gateway: nobody sends before this instant.
    pub(super) pause_until: Mutex<Option<Instant>>,
    pub(super) max_attempts: u32,
    /// `lookup_delay_ms`: how long after a request a lookup's "not found" may still be wrong.
    pub(super) lookup_delay: Duration,
    weight: u32,
    breaker: Breaker,
}

struct Breaker {
    /// `None`: never opens on transient failures (a single gateway).
    failures_to_open: Option<u32>,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    /// Why it is open for the rest of the run.
    for_run: Option<String>,
    /// When the probe of a half-open breaker was let through (one at a time).
    probing: Option<Instant>,
}

impl Lane {
    pub(super) fn new(
        store: Arc<dyn Store>,
        g: &GatewayConfig,
        several: bool,
    ) -> anyhow::Result<Lane> {
        let rate = NonZeroU32::new(g.rate_per_sec).context("rate_per_sec must be at least 1")?;
        let burst = NonZeroU32::new(g.burst).context("burst must be at least 1")?;
        let gateway = Gateway::from_config(g)?;
        Ok(Lane {
            caps: gateway.capabilities(g.batch_size),
            gateway,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            shared: SharedLimiter::new(store, g),
            in_flight: Semaphore::new(g.concurrency),
            slots: g.concurrency,
            pause_until: Mutex::new(None),
            max_attempts: g.max_attempts,
            lookup_delay: Duration::from_millis(g.lookup_delay_ms),
            weight: g.weight.max(1),
            breaker: Breaker {
                failures_to_open: several.then_some(g.breaker_failures.max(1)),
                cooldown: Duration::from_secs(g.breaker_cooldown_secs),
                state: Mutex::default(),
            },
        })
    }

    pub(super) fn name(&self) -> &str {
        self.gateway.name()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.breaker
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request may go to this lane now; an open breaker past its cooldown lets the
    /// first caller through as the probe.
    fn admit(&self) -> bool {
        let mut s = self.state();
        if s.for_run.is_some() {
            return false;
        }
        let now = Instant::now();
        // A probe that never reported (its run stopping) frees the slot after a cooldown.
        let probe_free = s
            .probing
            .is_none_or(|p| now.duration_since(p) > self.breaker.cooldown);
        match s.open_until {
            None => true,
            Some(t) if now >= t && probe_free => {
                s.probing = Some(now);
                info!(
                    gateway = self.name(),
                    "circuit breaker half-open: sending a probe"
                );
                true
            }
            Some(_) => false,
        }
    }

    /// Whether the breaker opened (and is still cooling down, or open for the run): a request
    /// that picked this lane before it opened goes elsewhere.
    pub(super) fn opened_since_pick(&self) -> bool {
        let s = self.state();
        s.for_run.is_some() || s.open_until.is_some_and(|t| Instant::now() < t)
    }

    /// A request let through as the probe went elsewhere after all: another may probe.
    pub(super) fn release_probe(&self) {
        self.state().probing = None;
    }

    /// Feeds the breaker with a request's attempts.
    pub(super) fn note(&self, attempts: &[Attempt]) {
        let mut s = self.state();
        if let Some(Outcome::Halt { message, .. }) = attempts
            .iter()
            .map(|a| &a.outcome)
            .find(|o| matches!(o, Outcome::Halt { .. }))
        {
            if s.for_run.is_none() {
                warn!(
                    gateway = self.name(),
                    "circuit breaker open for the rest of the run: {message}"
                );
            }
            s.for_run = Some(message.clone());
            return;
        }
        let failed = !attempts.is_empty() && attempts.iter().all(|a| a.outcome.is_transient());
        s.probing = None;
        if !failed {
            if s.open_until.take().is_some() {
                info!(gateway = self.name(), "circuit breaker closed");
            }
            s.failures = 0;
            return;
        }
        s.failures += 1;
        let Some(limit) = self.breaker.failures_to_open else {
            return;
        };
        if s.failures >= limit || s.open_until.is_some() {
            if s.open_until.is_none() {
                warn!(
                    gateway = self.name(),
                    failures = s.failures,
                    "circuit breaker open for {}s",
                    self.breaker.cooldown.as_secs()
                );
            }
            s.open_until = Some(Instant::now() + self.breaker.cooldown);
        }
    }
}

/// The lanes of a run and how traffic is shared between them.
pub(super) struct Lanes {
    pub(super) lanes: Vec<Lane>,
    pub(super) split: bool,
    /// `--split`: the messages dealt to each lane so far.
    shares: Mutex<Shares>,
}

/// Where a request goes.
pub(super) enum Pick<'a> {
    Lane(usize, &'a Lane),
    /// The messages in doubt at this lane cannot go there now (its breaker is open), nor
    /// anywhere else: they stay in doubt, settled by the next run's lookup.
    StickyClosed(usize),
    /// Every lane is open: the run pauses. `for_run` holds the account answer when every lane
    /// is open for the rest of the run.
    NoneOpen {
        for_run: Option<String>,
    },
}

impl Lanes {
    pub(super) fn new(
        store: Arc<dyn Store>,
        gateways: &[GatewayConfig],
        split: bool,
    ) -> anyhow::Result<Lanes> {
        let several = gateways.len() > 1;
        let lanes = gateways
            .iter()
            .map(|g| Lane::new(store.clone(), g, several))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let weights: Vec<u32> = lanes.iter().map(|l| l.weight).collect();
        Ok(Lanes {
            lanes,
            split,
            shares: Mutex::new(Shares::new(&weights)),
        })
    }

    /// What the shared rate budgets cost the run so far, over every lane.
    pub(super) fn budget_used(&self) -> super::BudgetUse {
        self.lanes
            .iter()
            .fold(super::BudgetUse::default(), |sum, l| {
                sum.add(l.shared.used())
            })
    }

    /// `--split` carries on from the messages the campaign's earlier runs recorded at each
    /// gateway (`(gateway, messages)`; names no longer among the lanes are left out).
    pub(super) fn seed_shares(&self, recorded: &[(String, i64)]) {
        let counts: Vec<u64> = self
            .lanes
            .iter()
            .map(|l| {
                recorded
                    .iter()
                    .find(|(g, _)| g == l.name())
                    .map_or(0, |(_, n)| (*n).max(0) as u64)
            })
            .collect();
        let weights: Vec<u32> = self.lanes.iter().map(|l| l.weight).collect();
        *self.shares.lock().unwrap_or_else(PoisonError::into_inner) =
            Shares::seeded(&weights, &counts);
    }

    /// Under `--split`, the lane each item should go to: the gateway its last request went to
    /// when one is recorded (a message resumed after a crash, a lookup or `--resend-in-doubt`
    /// keeps going where it was), else its share ([`Shares`]). Without `--split`, none: the
    /// failover order decides.
    pub(super) fn assign(&self, items: &mut [Item]) {
        if !self.split {
            return;
        }
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        for item in items {
            item.prefer = item
                .gateway
                .as_deref()
                .and_then(|g| self.by_name(g))
                .or_else(|| Some(shares.next()));
        }
    }

    /// Requests the run may have in flight at once: every lane's `concurrency` together.
    pub(super) fn slots(&self) -> usize {
        self.lanes.iter().map(|l| l.slots).sum::<usize>().max(1)
    }

    pub(super) fn by_name(&self, name: &str) -> Option<usize> {
        self.lanes.iter().position(|l| l.name() == name)
    }

    /// The lane for a request: `sticky` when a message of it may be at that gateway (it must be
    /// retried there, or nowhere), else its `prefer`red lane (`--split`) and then the others in
    /// configured order (failover), skipping lanes whose breaker is open.
    pub(super) fn pick(&self, prefer: Option<usize>, sticky: Option<usize>) -> Pick<'_> {
        if let Some(i) = sticky {
            return match self.lanes.get(i) {
                Some(l) if l.admit() => Pick::Lane(i, l),
                _ if self.lanes.len() > 1 => Pick::StickyClosed(i),
                _ => self.none_open(),
            };
        }
        let first = prefer.filter(|&i| i < self.lanes.len());
        let order = first
            .into_iter()
            .chain((0..self.lanes.len()).filter(|&i| Some(i) != first));
        for i in order {
            if self.lanes[i].admit() {
                return Pick::Lane(i, &self.lanes[i]);
            }
        }
        self.none_open()
    }

    fn none_open(&self) -> Pick<'_> {
        let reasons: Vec<String> = self
            .lanes
            .iter()
            .map(|l| l.state().for_run.clone())
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        Pick::NoneOpen {
            for_run: (!reasons.is_empty()).then(|| reasons.join("; ")),
        }
    }
}

/// Groups items into requests as the campaign's gateways batch: up to the largest batch of
/// its lanes, and only identical texts together when any lane sends one text per request.
pub(super) fn group_items(ctx: &SendCtx, items: Vec<Item>) -> Vec<Vec<Item>> {
    // Every item for the same lane (always, without `--split`): grouped as they are, without
    // a second vector of the chunk's items (a few MiB for a chunk of 10,000).
    if items.windows(2).all(|w| w[0].prefer == w[1].prefer) {
        return group_lane_items(ctx, items);
    }
    // Under `--split` a request goes to one lane: only items for the same lane share one.
    let mut by_lane: Vec<(Option<usize>, Vec<Item>)> = Vec::new();
    for item in items {
        match by_lane.iter_mut().find(|(p, _)| *p == item.prefer) {
            Some((_, v)) => v.push(item),
            None => by_lane.push((item.prefer, vec![item])),
        }
    }
    by_lane
        .into_iter()
        .flat_map(|(_, items)| group_lane_items(ctx, items))
        .collect()
}

/// [`group_items`] for items bound for one lane (or, in failover order, any).
fn group_lane_items(ctx: &SendCtx, items: Vec<Item>) -> Vec<Vec<Item>> {
    let lanes = &ctx.lanes.lanes;
    let max = lanes
        .iter()
        .map(|l| l.caps.max_batch)
        .max()
        .unwrap_or(1)
        .max(1);
    if lanes.iter().all(|l| l.caps.batching == Batching::ManyTexts) {
        let mut groups = Vec::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            groups.push(items.by_ref().take(max).collect());
        }
        return groups;
    }
    let mut groups: Vec<Vec<Item>> = Vec::new();
    let mut open: HashMap<(String, String, Option<String>), usize> = HashMap::new();
    for item in items {
        let key = (
            item.out.text.clone(),
            item.out.kind.clone(),
            item.out.subject.clone(),
        );
        match open.get(&key) {
            Some(&g) if groups[g].len() < max => groups[g].push(item),
            _ => {
                open.insert(key, groups.len());
                groups.push(vec![item]);
            }
        }
    }
    groups
}
