//! Running a campaign: one execution of the job, chunk by chunk, crash-safe.
//!
//! The loop, per chunk (Spring Batch's commit interval = `policy.chunk_size`):
//! 1. claim: pending messages become `sending` in one committed transaction, after opt-outs
//!    (also those added mid-run) and the frequency cap have suppressed whoever they cover;
//! 2. compose and send, with no transaction open: one rate limiter per gateway checked right before
//!    each request, at most `concurrency` requests in flight, backoff with jitter (backon) for
//!    transient outcomes, `Retry-After` honoured;
//! 3. commit: every outcome, every attempt and the execution's counters in one transaction.
//!
//! A crash between 1 and 3 leaves messages `sending`: the next run settles them first by looking
//! them up on the gateway, and resends the rest under the same `ref`, which the gateway dedupes.
//! An answer that may mean "accepted" makes a message `in_doubt` instead of failed: [`doubt`]
//! settles those by lookup.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, Semaphore};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{Config, GatewayConfig};
use crate::gateway::{Attempt, HttpJsonGateway, OutMessage, Outcome};
use crate::lease;
use crate::message::{AdFrame, Composer};
use crate::phone;
use crate::progress::{PauseNotice, Progress};
use crate::store::{
    AttemptRecord, Campaign, ClaimRequest, ClaimedMessage, Counts, MessageState, MessageUpdate,
    Store, StoreError,
};
use crate::template::TemplateSource;

mod doubt;
use doubt::{leftover, look_up_exhausted, mark_aborted, note_rejections};

/// How an execution ended (Spring Batch's BatchStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Completed,
    Stopped,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "COMPLETED",
            RunStatus::Stopped => "STOPPED",
            RunStatus::Failed => "FAILED",
        }
    }
    /// The process exit code of `campaign run`: 0 completed, 2 stopped and resumable, 1 failed.
    pub fn exit_code(self) -> i32 {
        match self {
            RunStatus::Completed => 0,
            RunStatus::Stopped => 2,
            RunStatus::Failed => 1,
        }
    }
}

/// Why a run stops before every message is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Requested,
    Signal(&'static str),
    Cancelled,
    QuietHours(String),
    GatewayUnhealthy(u32),
    /// The same recipient-level rejection for `n` messages in a row: likely not about them.
    RepeatedRejection {
        code: String,
        n: u32,
    },
    /// An answer that applies to every message (credentials, redirect, sender, request size):
    /// the gateway's words, with what to fix in munja.toml.
    GatewayRefused(String),
    /// A second Ctrl-C / SIGTERM: in-flight requests were abandoned, their messages in doubt.
    Aborted(&'static str),
    TemplateError(String),
    LeaseLost,
}

impl StopReason {
    fn status(&self) -> RunStatus {
        match self {
            StopReason::GatewayRefused(_)
            | StopReason::TemplateError(_)
            | StopReason::LeaseLost => RunStatus::Failed,
            _ => RunStatus::Stopped,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            StopReason::Requested => "stop_requested",
            StopReason::Signal(_) => "signal",
            StopReason::Cancelled => "cancelled",
            StopReason::QuietHours(_) => "quiet_hours",
            StopReason::GatewayUnhealthy(_) => "gateway_unhealthy",
            StopReason::RepeatedRejection { .. } => "repeated_rejection",
            StopReason::GatewayRefused(_) => "gateway_refused",
            StopReason::Aborted(_) => "aborted",
            StopReason::TemplateError(_) => "template_error",
            StopReason::LeaseLost => "lease_lost",
        }
    }
    fn message(&self) -> String {
        match self {
            StopReason::Requested => {
                "stopped by `munja campaign stop`; run it again to resume".into()
            }
            StopReason::Signal(s) => format!("stopped by {s}; run it again to resume"),
            StopReason::Cancelled => "cancelled by `munja campaign cancel`".into(),
            StopReason::QuietHours(m) => m.clone(),
            StopReason::GatewayUnhealthy(n) => format!(
                "gateway_unhealthy: {n} transient failures in a row; paused instead of failing the list. \
                 Run it again when the gateway is healthy (add --retry-failed to re-send messages whose attempts ran out)"
            ),
            StopReason::RepeatedRejection { code, n } => format!(
                "repeated_rejection: the gateway rejected {n} messages in a row with {code}; paused \
                 instead of failing the list (see audit --status failed). Run it again once the \
                 cause is understood"
            ),
            StopReason::GatewayRefused(m) => format!(
                "{m}. The campaign stopped: no message was marked failed for it; run it again once fixed"
            ),
            StopReason::Aborted(s) => format!(
                "aborted by a second {s}: in-flight requests were abandoned and their messages are \
                 in doubt; run it again to settle them by lookup and resume"
            ),
            StopReason::TemplateError(m) => {
                format!("every message of the first chunk failed: {m}")
            }
            StopReason::LeaseLost => {
                "another run took over this campaign's lease; this run stopped without writing"
                    .into()
            }
        }
    }
}

/// Shared stop switch of one run: set by heartbeat, signals and the senders.
pub struct Control {
    reason: Mutex<Option<StopReason>>,
    notify: Notify,
    /// Set by a second signal: in-flight requests are abandoned at once.
    abort: tokio::sync::watch::Sender<bool>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            reason: Mutex::default(),
            notify: Notify::new(),
            abort: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Control {
    /// Records the first reason to stop (fatal reasons override non-fatal ones).
    pub fn stop(&self, why: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            let replace = match &*r {
                None => true,
                Some(old) => old.status() != RunStatus::Failed && why.status() == RunStatus::Failed,
            };
            if replace {
                *r = Some(why);
            }
        }
        self.notify.notify_waiters();
    }
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
    pub fn stopping(&self) -> bool {
        self.reason().is_some()
    }

    /// Stops the run and abandons its in-flight requests (their messages stay in doubt).
    pub fn abort(&self, why: StopReason) {
        if let Ok(mut r) = self.reason.lock()
            && r.as_ref()
                .is_none_or(|old| old.status() != RunStatus::Failed)
        {
            *r = Some(why);
        }
        self.abort.send_replace(true);
        self.notify.notify_waiters();
    }

    /// Runs `f` (a request) unless the run is aborted first (then `None`). A plain stop lets
    /// it finish.
    async fn unless_aborted<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let mut rx = self.abort.subscribe();
        if *rx.borrow_and_update() {
            return None;
        }
        tokio::select! {
            v = f => Some(v),
            _ = rx.wait_for(|a| *a) => None,
        }
    }
    /// Runs `f` unless the run is told to stop first (then `None`).
    async fn until<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let notified = self.notify.notified();
        if self.stopping() {
            return None;
        }
        tokio::select! {
            v = f => Some(v),
            _ = notified => None,
        }
    }

    /// Sleeps `d`, waking early when the run is told to stop.
    async fn sleep(&self, d: Duration) {
        let notified = self.notify.notified();
        if self.stopping() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = notified => {}
        }
    }
}

/// Options of `campaign run`.
#[derive(Default)]
pub struct RunOptions {
    pub retry_failed: bool,
    /// Install SIGINT/SIGTERM handlers that stop the run gracefully.
    pub handle_signals: bool,
    pub progress: Option<Box<dyn Progress>>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub campaign: i64,
    pub execution: i64,
    pub status: RunStatus,
    pub exit_message: String,
    pub counts: Counts,
    pub elapsed: Duration,
    /// Messages this execution moved to `sent`.
    pub sent_now: u64,
    /// The most frequent reasons of failed messages, most frequent first: (reason, count).
    pub failure_reasons: Vec<(String, i64)>,
}

/// `invalid_number 20, timeout 3`.
pub fn reasons_text(reasons: &[(String, i64)]) -> String {
    reasons
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything the senders of one run share.
struct SendCtx {
    gateway: HttpJsonGateway,
    limiter: DefaultDirectRateLimiter,
    in_flight: Semaphore,
    /// `Retry-After` slows the whole gateway: nobody sends before this instant.
    pause_until: Mutex<Option<Instant>>,
    /// Shows a gateway pause in the progress display.
    pause_notice: Option<PauseNotice>,
    consecutive_failures: AtomicU32,
    /// The last recipient-level rejection code and how many messages in a row got it.
    rejections: Mutex<(String, u32)>,
    max_consecutive_failures: u32,
    max_attempts: u32,
    batch_size: usize,
    from: String,
    ad: bool,
    campaign_uid: String,
    ctl: Arc<Control>,
    quiet: Option<QuietRule>,
    /// Numbers of this run's claimed messages opted out since the run started, replaced with
    /// every heartbeat: checked right before each request, so a chunk claimed earlier cannot
    /// send to them.
    fresh_optouts: FreshOptouts,
}

type FreshOptouts = Arc<RwLock<HashSet<String>>>;

#[derive(Clone, Copy)]
struct QuietRule {
    hours: crate::compliance::QuietHours,
    tz: chrono_tz::Tz,
}

impl QuietRule {
    fn now(&self) -> bool {
        self.hours.is_quiet_at(self.tz, Utc::now())
    }
}

/// Chunks in flight at once after the first.
const PIPELINE: usize = 4;

/// One message on its way: its composed wire form and what happened to it so far.
struct Item {
    id: i64,
    night_consent: bool,
    out: OutMessage,
    kind: String,
    bytes: i64,
    attempts: Vec<AttemptRecord>,
    backoff: backon::ExponentialBackoff,
    wait: Duration,
    /// The code of the last attempt that may have been accepted (timeout, reset, unreadable
    /// 2xx, ...), until a definitive answer (accepted, rejected) clears it: a later 503 does not.
    doubt: Option<String>,
}

/// Runs campaign `id` until every message is final or the run is stopped.
pub async fn run(
    store: Arc<dyn Store>,
    cfg: &Config,
    id: i64,
    mut opts: RunOptions,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let campaign = store.campaign(id).await?;
    // A cancelled campaign sends nothing more; it may only settle messages a crashed run left
    // in doubt, so that its audit says which of them went out.
    let settle_only = campaign.cancel_requested || campaign.status == "CANCELLED";
    if settle_only {
        let counts = store.counts(id).await?;
        let in_doubt = counts.sending + counts.in_doubt;
        if in_doubt == 0 {
            bail!(
                "campaign {id} ({}) was cancelled and cannot run",
                campaign.name
            );
        }
        warn!(
            messages = in_doubt,
            "campaign was cancelled: only settling messages left in doubt"
        );
    } else {
        match campaign.status.as_str() {
            // --retry-failed is how a completed campaign re-sends what the gateway never took.
            "COMPLETED" if opts.retry_failed => {}
            "COMPLETED" => bail!(
                "campaign {id} ({}) is COMPLETED: a completed campaign cannot run again; \
                 use --retry-failed to re-send messages whose attempts ran out on transient errors, \
                 or create a new campaign",
                campaign.name
            ),
            _ => {}
        }
    }
    let gw_cfg = cfg.gateway(Some(&campaign.gateway))?;
    let composer = composer_for(&campaign)?;
    let execution = acquire(&*store, cfg, &campaign).await?;
    let span = info_span!("run", campaign = id, execution);
    async move {
        info!(gateway = %gw_cfg.name, "execution started");
        let ctl = Arc::new(Control::default());
        let fresh: FreshOptouts = Arc::default();
        let heartbeat = spawn_heartbeat(
            store.clone(),
            id,
            execution,
            cfg,
            ctl.clone(),
            fresh.clone(),
        );
        let signals = opts
            .handle_signals
            .then(|| spawn_signal_handler(ctl.clone()));
        let mut runner = Runner {
            store: store.clone(),
            campaign: &campaign,
            execution,
            chunk_size: cfg.policy.chunk_size,
            // The frequency cap counts and limits ads only.
            cap: cfg.policy.max_ads_per_recipient.filter(|_| campaign.ad),
            composer: Arc::new(composer),
            ctx: Arc::new(SendCtx {
                pause_notice: opts.progress.as_ref().and_then(|p| p.pause_notice()),
                ..send_ctx(&gw_cfg, cfg, &campaign, ctl.clone(), fresh)?
            }),
            progress: opts.progress.take(),
            sent_now: 0,
        };
        let outcome = runner.drive(opts.retry_failed, settle_only).await;
        // A cancel that emptied the queue before the heartbeat saw it is still a cancel.
        let outcome = match outcome {
            Ok(None) if store.campaign(id).await.is_ok_and(|c| c.cancel_requested) => {
                Ok(Some(StopReason::Cancelled))
            }
            o => o,
        };
        heartbeat.abort();
        if let Some(s) = signals {
            s.abort();
        }
        let counts = store.counts(id).await.unwrap_or_default();
        if let Some(p) = runner.progress.as_mut() {
            p.finish(&counts);
        }
        let lease_lost = match &outcome {
            Err(e) => matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::LeaseLost { .. })
            ),
            Ok(why) => why.as_ref() == Some(&StopReason::LeaseLost),
        };
        if lease_lost {
            // Another execution holds the campaign now: write nothing more.
            warn!("lease lost; leaving the campaign to its new holder");
            return Ok(RunReport {
                campaign: id,
                execution,
                status: RunStatus::Failed,
                exit_message: StopReason::LeaseLost.message(),
                counts,
                elapsed: started.elapsed(),
                sent_now: runner.sent_now,
                failure_reasons: Vec::new(),
            });
        }
        let failure_reasons = store.failure_reasons(id, 3).await.unwrap_or_default();
        let (status, campaign_status, exit_code, message) =
            conclude(&*store, id, outcome, &counts, &failure_reasons).await?;
        store
            .finish_execution(
                id,
                execution,
                status.as_str(),
                &exit_code,
                &message,
                campaign_status,
            )
            .await
            .context("recording the end of the execution")?;
        let counts = store.counts(id).await?;
        info!(status = status.as_str(), %message, "execution ended");
        Ok(RunReport {
            campaign: id,
            execution,
            status,
            exit_message: message,
            counts,
            elapsed: started.elapsed(),
            sent_now: runner.sent_now,
            failure_reasons,
        })
    }
    .instrument(span)
    .await
}

/// How a run ends, from why its loop ended and the final counts: (status, campaign status,
/// exit code, exit message). A cancel is applied to the store here.
async fn conclude(
    store: &dyn Store,
    id: i64,
    outcome: anyhow::Result<Option<StopReason>>,
    counts: &Counts,
    failure_reasons: &[(String, i64)],
) -> anyhow::Result<(RunStatus, &'static str, String, String)> {
    // After a run, a message still `sending` was left by a crash: it is in doubt too.
    let in_doubt = counts.in_doubt + counts.sending;
    let settle_note = if in_doubt > 0 {
        format!(
            "; {in_doubt} messages are in doubt (the gateway may have them): \
             `munja campaign run {id}` settles them by lookup before anything else"
        )
    } else {
        String::new()
    };
    Ok(match outcome {
        Err(e) => {
            let m = format!("{e:#}");
            (RunStatus::Failed, "FAILED", "FAILED".to_string(), m)
        }
        // Nothing went out: say so, and why, with a non-zero exit.
        Ok(None) if counts.all_final() && counts.sent == 0 && counts.failed > 0 => (
            RunStatus::Failed,
            "FAILED",
            "ALL_FAILED".into(),
            format!(
                "no message was sent: {} failed (leading reasons: {}); see `munja audit --campaign {id} --status failed`",
                counts.failed,
                reasons_text(failure_reasons)
            ),
        ),
        Ok(None) if counts.all_final() => (
            RunStatus::Completed,
            "COMPLETED",
            "COMPLETED".into(),
            format!(
                "all {} messages final: {} sent, {} failed, {} suppressed, {} cancelled",
                counts.total, counts.sent, counts.failed, counts.suppressed, counts.cancelled
            ),
        ),
        Ok(None) if counts.pending == 0 => (
            RunStatus::Stopped,
            "STOPPED",
            "IN_DOUBT".into(),
            format!(
                "{in_doubt} messages are in doubt: the gateway could not be asked whether it has \
                 them; run it again to settle them by lookup"
            ),
        ),
        Ok(None) => (
            RunStatus::Stopped,
            "STOPPED",
            "STOPPED".into(),
            format!("{} messages still pending{settle_note}", counts.pending),
        ),
        Ok(Some(StopReason::Cancelled)) => {
            match store.cancel(id, None).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            (
                RunStatus::Stopped,
                "CANCELLED",
                "CANCELLED".into(),
                format!("{}{settle_note}", StopReason::Cancelled.message()),
            )
        }
        Ok(Some(why)) => {
            let status = why.status();
            (
                status,
                status.as_str(),
                why.code().to_uppercase(),
                format!("{}{settle_note}", why.message()),
            )
        }
    })
}

/// The composer of a campaign, from its template snapshot and its ad frame.
pub fn composer_for(c: &Campaign) -> anyhow::Result<Composer> {
    let src = TemplateSource {
        name: c.template_name.clone(),
        body: c.template_body.clone(),
        subject: c.template_subject.clone(),
    };
    let ad = if c.ad {
        Some(AdFrame {
            brand: c.brand.clone().context("ad campaign without a brand")?,
            optout_display: c
                .optout_number
                .clone()
                .context("ad campaign without an opt-out number")?,
        })
    } else {
        None
    };
    Ok(Composer::new(&src, ad)?)
}

/// Takes the campaign's lease: refuses while a live run holds it, takes over a dead one.
async fn acquire(store: &dyn Store, cfg: &Config, c: &Campaign) -> anyhow::Result<i64> {
    let host = lease::this_host();
    let pid = i64::from(std::process::id());
    let (expected, abandon) = match &c.lease {
        None => (None, String::new()),
        Some(l) => match lease::holder_gone(l, cfg.policy.lease_timeout_secs, &host, Utc::now()) {
            Some(why) => {
                warn!(previous = l.execution, "{why}; taking over");
                (Some(l.execution), why)
            }
            None => bail!(
                "campaign {} is already running: execution {} on {} (pid {}), last heartbeat {}; \
                 stop it with `munja campaign stop {}` or wait for it to finish",
                c.id,
                l.execution,
                l.host,
                l.pid,
                l.heartbeat_at.to_rfc3339(),
                c.id
            ),
        },
    };
    Ok(store
        .start_execution(c.id, expected, &host, pid, &abandon)
        .await?)
}

fn spawn_heartbeat(
    store: Arc<dyn Store>,
    campaign: i64,
    execution: i64,
    cfg: &Config,
    ctl: Arc<Control>,
    fresh: FreshOptouts,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_millis((cfg.policy.lease_timeout_secs * 1000 / 6).clamp(200, 1000));
    // A margin for clocks of other hosts that add opt-outs; older ones were checked at claim.
    let since = Utc::now() - chrono::Duration::seconds(60);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match store.fresh_optouts_in_flight(campaign, since).await {
                Ok(list) => {
                    if let Ok(mut set) = fresh.write() {
                        *set = list.into_iter().collect();
                    }
                }
                Err(e) => warn!("reading new opt-outs failed: {e}"),
            }
            match store.heartbeat(campaign, execution).await {
                Ok((_, true)) => ctl.stop(StopReason::Cancelled),
                Ok((true, false)) => ctl.stop(StopReason::Requested),
                Ok(_) => {}
                Err(StoreError::LeaseLost { .. }) => ctl.stop(StopReason::LeaseLost),
                Err(e) => warn!("heartbeat failed: {e}"),
            }
        }
    })
}

fn spawn_signal_handler(ctl: Arc<Control>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            if first {
                warn!(
                    "{name} received: finishing in-flight requests, then stopping (send it again to abort them)"
                );
                ctl.stop(StopReason::Signal(name));
                first = false;
            } else {
                warn!(
                    "second {name} received: abandoning in-flight requests; their messages stay in doubt and the next run settles them"
                );
                ctl.abort(StopReason::Aborted(name));
            }
        }
    })
}

fn send_ctx(
    g: &GatewayConfig,
    cfg: &Config,
    c: &Campaign,
    ctl: Arc<Control>,
    fresh_optouts: FreshOptouts,
) -> anyhow::Result<SendCtx> {
    let rate = NonZeroU32::new(g.rate_per_sec).context("rate_per_sec must be at least 1")?;
    let burst = NonZeroU32::new(g.burst).context("burst must be at least 1")?;
    Ok(SendCtx {
        gateway: HttpJsonGateway::new(
            &g.name,
            &g.url,
            g.api_key.clone(),
            Duration::from_millis(g.timeout_ms),
            g.concurrency,
        )?
        .with_max_retry_after(Duration::from_secs(g.max_retry_after_secs)),
        limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        in_flight: Semaphore::new(g.concurrency),
        pause_until: Mutex::new(None),
        pause_notice: None,
        consecutive_failures: AtomicU32::new(0),
        rejections: Mutex::default(),
        max_consecutive_failures: cfg.policy.max_consecutive_failures,
        max_attempts: g.max_attempts,
        batch_size: g.batch_size,
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

struct Runner<'a> {
    store: Arc<dyn Store>,
    campaign: &'a Campaign,
    execution: i64,
    chunk_size: usize,
    cap: Option<crate::config::FrequencyCap>,
    composer: Arc<Composer>,
    ctx: Arc<SendCtx>,
    progress: Option<Box<dyn Progress>>,
    sent_now: u64,
}

impl Runner<'_> {
    /// Returns `None` when the queue ran dry, or why it stopped early.
    ///
    /// Up to [`PIPELINE`] chunks are in flight at once (claimed and committed separately), so one
    /// slow message does not idle the gateway; the first chunk runs alone, so that a template
    /// that fails every message stops the run before more is claimed.
    async fn drive(
        &mut self,
        retry_failed: bool,
        settle_only: bool,
    ) -> anyhow::Result<Option<StopReason>> {
        let (id, exec) = (self.campaign.id, self.execution);
        if settle_only {
            self.settle_in_doubt(true).await?;
            return Ok(Some(StopReason::Cancelled));
        }
        let total = self
            .store
            .snapshot(id, exec)
            .await
            .context("snapshotting the segment")?;
        if total > 0 {
            info!(messages = total, "segment snapshotted");
        }
        if retry_failed {
            let n = self.store.requeue_retryable(id).await?;
            info!(
                messages = n,
                "re-queued messages whose attempts ran out on transient errors"
            );
        }
        self.settle_in_doubt(false).await?;
        let mut counts = self.store.counts(id).await?;
        if let Some(p) = self.progress.as_mut() {
            p.start(&counts);
        }
        let mut first_chunk = true;
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            // Claim while there is room and no reason to stop.
            let mut dry = false;
            while in_flight.len() < if first_chunk { 1 } else { PIPELINE }
                && !self.ctx.ctl.stopping()
            {
                let quiet = self.ctx.quiet.filter(|q| q.now());
                let cap = self.cap.map(|c| {
                    (
                        c.count,
                        Utc::now() - chrono::Duration::days(i64::from(c.days)),
                    )
                });
                let claim = self
                    .store
                    .claim_chunk(ClaimRequest {
                        campaign: id,
                        execution: exec,
                        limit: self.chunk_size,
                        night_only: quiet.is_some(),
                        cap,
                    })
                    .await?;
                let suppressed = (claim.suppressed_opted_out + claim.suppressed_capped) as i64;
                counts.suppressed += suppressed;
                counts.pending -= suppressed;
                if claim.suppressed_opted_out > 0 {
                    info!(
                        messages = claim.suppressed_opted_out,
                        "suppressed: opted out during the run"
                    );
                }
                if claim.messages.is_empty() {
                    if suppressed > 0 {
                        continue;
                    }
                    if in_flight.is_empty() {
                        if let Some(q) = quiet
                            && self.store.has_pending_without_consent(id).await?
                        {
                            return Ok(Some(quiet_stop(q)));
                        }
                        return Ok(None);
                    }
                    dry = true;
                    break;
                }
                let ctx = self.ctx.clone();
                let composer = self.composer.clone();
                in_flight.spawn(
                    async move { send_chunk(ctx, composer, claim.messages).await }
                        .instrument(tracing::Span::current()),
                );
            }
            let Some(joined) = in_flight.join_next().await else {
                // Nothing in flight and told to stop.
                return Ok(self.ctx.ctl.reason());
            };
            let (updates, first_error) = joined.context("a send task panicked")?;
            let template_failures = updates
                .iter()
                .filter(|u| u.reason.as_deref() == Some("template_error"))
                .count();
            let refused = updates
                .iter()
                .filter(|u| u.attempts.is_empty() && u.state == MessageState::Failed)
                .count();
            if refused > 0 {
                info!(
                    messages = refused,
                    "refused before sending (see audit --status failed)"
                );
            }
            if first_chunk && template_failures == updates.len() && !updates.is_empty() {
                let first = first_error.unwrap_or_default();
                // Nothing was sent: put the chunk back so that nothing is lost.
                let back: Vec<MessageUpdate> = updates
                    .into_iter()
                    .map(|mut u| {
                        u.state = MessageState::Pending;
                        u.reason = None;
                        u
                    })
                    .collect();
                self.store.commit_chunk(id, exec, &back).await?;
                return Ok(Some(StopReason::TemplateError(first)));
            }
            first_chunk = false;
            for u in &updates {
                match u.state {
                    MessageState::Sent => {
                        counts.sent += 1;
                        counts.pending -= 1;
                        self.sent_now += 1;
                    }
                    MessageState::Failed => {
                        counts.failed += 1;
                        counts.pending -= 1;
                    }
                    MessageState::Suppressed => {
                        counts.suppressed += 1;
                        counts.pending -= 1;
                    }
                    MessageState::InDoubt => {
                        counts.in_doubt += 1;
                        counts.pending -= 1;
                    }
                    _ => {}
                }
            }
            self.store.commit_chunk(id, exec, &updates).await?;
            debug!(messages = updates.len(), dry, "chunk committed");
            if let Some(p) = self.progress.as_mut() {
                p.update(&counts);
            }
        }
    }
}

/// Composes and sends one claimed chunk; returns one update per message, and the first
/// reason a message could not be composed.
async fn send_chunk(
    ctx: Arc<SendCtx>,
    composer: Arc<Composer>,
    messages: Vec<ClaimedMessage>,
) -> (Vec<MessageUpdate>, Option<String>) {
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
            }),
        }
    }
    let mut set = tokio::task::JoinSet::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let group: Vec<Item> = items.by_ref().take(ctx.batch_size).collect();
        set.spawn(send_group(ctx.clone(), group).instrument(tracing::Span::current()));
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok(mut u) => updates.append(&mut u),
            Err(e) => warn!("send task failed: {e}"),
        }
    }
    (updates, first_error)
}

/// A `Retry-After` pause at least this long is logged at default verbosity.
const LONG_PAUSE: Duration = Duration::from_secs(5);

/// Pauses the whole gateway for `wait` (a `Retry-After`, already cut to the gateway's
/// `max_retry_after_secs`). A pause that begins is shown in the progress display, and logged
/// when long. Cannot overflow or poison: a wait too long for the clock is no pause extension.
fn pause_gateway(ctx: &SendCtx, wait: Duration) {
    let now = Instant::now();
    let Some(until) = now.checked_add(wait) else {
        return;
    };
    let begins = {
        let mut p = ctx
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
                gateway = ctx.gateway.name(),
                "gateway Retry-After: pausing all sends for {}s",
                wait.as_secs()
            );
        }
        if let Some(notice) = &ctx.pause_notice {
            notice(wait);
        }
    }
}

fn quiet_stop(q: QuietRule) -> StopReason {
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
fn backoff_policy(max_attempts: u32) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .with_max_times(max_attempts.saturating_sub(1) as usize)
        .build()
}

fn update_for(
    item: &Item,
    state: MessageState,
    reason: Option<String>,
    retryable: bool,
    gateway_id: Option<String>,
) -> MessageUpdate {
    MessageUpdate {
        id: item.id,
        state,
        reason,
        retryable,
        gateway_id,
        kind: Some(item.kind.clone()),
        bytes: Some(item.bytes),
        attempts: item.attempts.clone(),
    }
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

/// Sends one group (one request: a single message, or a batch) until every item is final or
/// the run stops; unattempted or still-retryable items go back to `pending`.
async fn send_group(ctx: Arc<SendCtx>, mut items: Vec<Item>) -> Vec<MessageUpdate> {
    let mut done = Vec::with_capacity(items.len());
    while !items.is_empty() {
        let wait = items.iter().map(|i| i.wait).max().unwrap_or_default();
        if !wait.is_zero() {
            ctx.ctl.sleep(wait).await;
        }
        if ctx.ctl.stopping() {
            break;
        }
        let pause = *ctx
            .pause_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = pause {
            let now = Instant::now();
            if until > now {
                ctx.ctl.sleep(until - now).await;
                if ctx.ctl.stopping() {
                    break;
                }
            }
        }
        // A request slot first, then the rate limiter, then the request at once: the limiter is
        // the last thing checked before sending. Both waits end early when the run stops.
        let Some(Ok(permit)) = ctx.ctl.until(ctx.in_flight.acquire()).await else {
            break;
        };
        let n = NonZeroU32::new(items.len() as u32).unwrap_or(NonZeroU32::MIN);
        let limiter = async {
            if ctx.limiter.until_n_ready(n).await.is_err() {
                // Cannot happen: config guarantees batch_size <= burst. One at a time, then.
                for _ in 0..n.get() {
                    ctx.limiter.until_ready().await;
                }
            }
        };
        if ctx.ctl.until(limiter).await.is_none() {
            break;
        }
        // The night rule and opt-outs that arrived after the claim, at the moment of sending.
        if let Some(q) = ctx.quiet
            && items.iter().any(|i| !i.night_consent)
            && q.now()
        {
            items = set_aside(
                items,
                |i| !i.night_consent,
                MessageState::Pending,
                "quiet_hours",
                &mut done,
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
                &mut done,
            );
        }
        if items.is_empty() {
            drop(permit);
            break;
        }
        let t0 = Instant::now();
        let request = async {
            if items.len() == 1 {
                vec![ctx.gateway.send(&items[0].out).await]
            } else {
                let outs: Vec<OutMessage> = items.iter().map(|i| i.out.clone()).collect();
                ctx.gateway.send_batch(&outs).await
            }
        };
        let Some(attempts): Option<Vec<Attempt>> = ctx.ctl.unless_aborted(request).await else {
            mark_aborted(&mut items, t0);
            break;
        };
        drop(permit);
        // The health counter counts requests: a failed batch is one failure, not fifty.
        if attempts.iter().all(|a| a.outcome.is_transient()) {
            let n = ctx.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= ctx.max_consecutive_failures {
                ctx.ctl.stop(StopReason::GatewayUnhealthy(n));
            }
        } else if attempts.iter().any(|a| a.outcome.is_final()) {
            ctx.consecutive_failures.store(0, Ordering::Relaxed);
        }
        note_rejections(&ctx, &attempts);
        let mut again = Vec::new();
        for (mut item, a) in items.into_iter().zip(attempts) {
            let gateway_id = match &a.outcome {
                Outcome::Accepted { gateway_id, .. } => Some(gateway_id.clone()),
                _ => None,
            };
            item.attempts.push(AttemptRecord {
                at: a.at,
                outcome: a.outcome.code().to_string(),
                http_status: a.http_status,
                gateway_id: gateway_id.clone(),
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
            }
            let span = tracing::debug_span!("message", msg_ref = %item.out.msg_ref, phone = %phone::mask(&item.out.to));
            let _g = span.enter();
            match a.outcome {
                Outcome::Accepted { .. } => {
                    done.push(update_for(
                        &item,
                        MessageState::Sent,
                        None,
                        false,
                        gateway_id,
                    ));
                }
                Outcome::Rejected { code, message } => {
                    debug!(%code, "rejected: {}", phone::mask_in_text(&message));
                    done.push(update_for(
                        &item,
                        MessageState::Failed,
                        Some(code),
                        false,
                        None,
                    ));
                }
                Outcome::Halt { message, .. } => {
                    ctx.ctl.stop(StopReason::GatewayRefused(message));
                    done.push(leftover(&item));
                }
                transient => {
                    let retry_after = match &transient {
                        Outcome::Throttled { retry_after } => *retry_after,
                        _ => None,
                    };
                    if let Some(ra) = retry_after {
                        pause_gateway(&ctx, ra);
                    }
                    match item.backoff.next() {
                        Some(d) => {
                            item.wait = d.max(retry_after.unwrap_or_default());
                            debug!(
                                code = transient.code(),
                                "transient; retrying in {:?}", item.wait
                            );
                            again.push(item);
                        }
                        None if item.doubt.is_some() => {
                            debug!(code = transient.code(), "attempts exhausted in doubt");
                            done.push(look_up_exhausted(&ctx, item, transient.code()).await);
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
                }
            }
        }
        items = again;
    }
    // Stopped: whatever is left goes back to the queue under the same ref, or stays in doubt.
    done.extend(items.iter().map(leftover));
    done
}
