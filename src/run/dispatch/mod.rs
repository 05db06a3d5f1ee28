//! Running a campaign: one execution of the job, chunk by chunk, crash-safe.
//!
//! The loop, per chunk (Spring Batch's commit interval = `policy.chunk_size`):
//! 1. claim: pending messages become `sending` in one committed transaction, after opt-outs
//!    (also those added mid-run) and the frequency cap have suppressed whoever they cover;
//! 2. compose and send, with no transaction open: the gateway's rate budget, shared by every run
//!    on the job repository ([`limiter`]), checked right before each request, at most
//!    `concurrency` requests in flight, backoff with jitter (backon) for transient outcomes,
//!    `Retry-After` honoured;
//! 3. commit: every outcome, every attempt and the execution's counters in one transaction.
//!
//! A crash between 1 and 3 leaves messages `sending`: the next run settles them first by looking
//! them up on the gateway, and resends the rest under the same `ref`, which the gateway dedupes.
//! An answer that may mean "accepted" makes a message `in_doubt` instead of failed: [`doubt`]
//! settles those by lookup.
//!
//! This module owns [`run`] (one execution from start to end) and the end-of-run decision
//! ([`RunStatus`], the exit code and message); [`control`] the stop switch and signals,
//! [`lease`] taking and keeping the lease, [`claim`] the claim/commit loop, [`sender`] the
//! requests, [`lanes`] the campaign's gateways (failover, split, circuit breakers), [`limiter`]
//! the rate budget shared with other runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, GatewayConfig};
use crate::domain::message::{AdFrame, Composer};
use crate::domain::model::{Campaign, CampaignStatus, Counts, ExecutionStatus, WorkerToken};
use crate::domain::template::TemplateSource;
use crate::run::progress::Progress;
use crate::store::{ExecutionEnd, Store, StoreError};

mod claim;
pub mod control;
mod doubt;
mod lanes;
mod lease;
mod limiter;
mod lookup;
mod sender;
mod split;
mod unaskable;
mod update;

use claim::Runner;
pub use claim::commit_beside_claim;
pub use control::{Control, StopReason};
use lease::{FreshOptouts, acquire, spawn_heartbeat};
pub use limiter::BudgetUse;
use sender::{SendCtx, send_ctx};
use unaskable::{Unaskable, in_doubt_message};

/// How an execution ended (Spring Batch's BatchStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Completed,
    Stopped,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        self.execution_status().as_str()
    }
    /// The status recorded for the execution.
    pub fn execution_status(self) -> ExecutionStatus {
        match self {
            RunStatus::Completed => ExecutionStatus::Completed,
            RunStatus::Stopped => ExecutionStatus::Stopped,
            RunStatus::Failed => ExecutionStatus::Failed,
        }
    }
    /// The campaign's status after an execution that ended so (a cancel aside).
    pub fn campaign_status(self) -> CampaignStatus {
        match self {
            RunStatus::Completed => CampaignStatus::Completed,
            RunStatus::Stopped => CampaignStatus::Stopped,
            RunStatus::Failed => CampaignStatus::Failed,
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

/// Options of `campaign run`.
#[derive(Default)]
pub struct RunOptions {
    pub retry_failed: bool,
    /// `--resend-in-doubt`: after the lookups, messages still in doubt (a gateway that cannot
    /// be asked, such as Kannel without a delivery report) are sent again. May duplicate them.
    pub resend_in_doubt: bool,
    /// Install SIGINT/SIGTERM handlers that stop the run gracefully.
    pub handle_signals: bool,
    pub progress: Option<Box<dyn Progress>>,
    /// Set to `true` by `munja serve` when it shuts down: the run stops like on a signal, as
    /// SHUTDOWN, which the next server resumes by itself.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub campaign: i64,
    pub execution: i64,
    pub status: RunStatus,
    pub exit_message: String,
    /// The campaign's counts at the end; `None` when they could not be read (the worker
    /// stopped because the database did not answer).
    pub counts: Option<Counts>,
    pub elapsed: Duration,
    /// Messages this execution moved to `sent`.
    pub sent_now: u64,
    /// What the rate budget shared with other runs cost this run (every gateway's).
    pub rate_budget: BudgetUse,
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

/// Runs campaign `id` until every message is final or the run is stopped.
pub async fn run(
    store: Arc<dyn Store>,
    cfg: &Config,
    id: i64,
    opts: RunOptions,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let campaign = store.campaign(id).await?;
    let settle_only = check_runnable(&*store, &campaign, opts.retry_failed).await?;
    let gateways = campaign
        .gateways()
        .into_iter()
        .map(|g| cfg.gateway(Some(g)))
        .collect::<Result<Vec<_>, _>>()?;
    let composer = composer_for(&campaign)?;
    let worker = acquire(&*store, cfg, &campaign).await?;
    let span = info_span!(
        "run",
        campaign = id,
        execution = worker.execution,
        worker = worker.worker
    );
    let run = LeasedRun {
        store,
        cfg,
        campaign: &campaign,
        gateways,
        worker,
        started,
    };
    run.execute(composer, opts, settle_only)
        .instrument(span)
        .await
}

/// Whether campaign `c` may run now; `Ok(true)` when it may only settle messages in doubt.
///
/// A cancelled campaign sends nothing more; it may only settle messages a crashed run left in
/// doubt, so that its audit says which of them went out. A completed one runs again only with
/// `--retry-failed`, which re-sends what the gateway never took.
async fn check_runnable(
    store: &dyn Store,
    c: &Campaign,
    retry_failed: bool,
) -> anyhow::Result<bool> {
    let status = c.parsed_status();
    if c.cancel_requested || status == Some(CampaignStatus::Cancelled) {
        let counts = store.counts(c.id).await?;
        let in_doubt = counts.sending + counts.in_doubt;
        if in_doubt == 0 {
            bail!(
                "campaign {} ({}) was cancelled and cannot run",
                c.id,
                c.name
            );
        }
        warn!(
            messages = in_doubt,
            "campaign was cancelled: only settling messages left in doubt"
        );
        return Ok(true);
    }
    if status == Some(CampaignStatus::Completed) && !retry_failed {
        bail!(
            "campaign {} ({}) is COMPLETED: a completed campaign cannot run again; \
             use --retry-failed to re-send messages whose attempts ran out on transient errors, \
             or create a new campaign",
            c.id,
            c.name
        );
    }
    Ok(false)
}

/// One worker of the execution that holds the campaign's lease.
struct LeasedRun<'a> {
    store: Arc<dyn Store>,
    cfg: &'a Config,
    campaign: &'a Campaign,
    gateways: Vec<GatewayConfig>,
    worker: WorkerToken,
    started: Instant,
}

impl LeasedRun<'_> {
    /// Runs the claim loop with its heartbeat (and signal handler), then records the end.
    async fn execute(
        &self,
        composer: Composer,
        mut opts: RunOptions,
        settle_only: bool,
    ) -> anyhow::Result<RunReport> {
        let (store, campaign) = (&self.store, self.campaign);
        info!(gateway = %self.campaign.gateway, split = self.campaign.split, "execution started");
        let ctl = Arc::new(Control::default());
        let fresh: FreshOptouts = Arc::default();
        let mut heartbeat = spawn_heartbeat(
            store.clone(),
            self.worker,
            self.cfg,
            ctl.clone(),
            fresh.clone(),
        );
        let signals = opts
            .handle_signals
            .then(|| control::spawn_signal_handler(ctl.clone()));
        let shutdown = opts
            .shutdown
            .take()
            .map(|rx| control::spawn_shutdown_watch(rx, ctl.clone()));
        let mut runner = self.runner(composer, &mut opts, ctl.clone(), fresh)?;
        // An SQL segment is read now, at the first run (a CSV one was imported before).
        let outcome = if settle_only {
            Ok(())
        } else {
            crate::input::segment_sql::snapshot_for_run(&**store, self.cfg, campaign, &self.worker)
                .await
        };
        let outcome = match outcome {
            // The heartbeat ends only once it gave up: the database is out of reach and the
            // claims about to expire, whatever the claim loop waits for.
            Ok(()) => tokio::select! {
                o = runner.drive(opts.retry_failed, settle_only) => o,
                why = &mut heartbeat => Ok(Some(why.unwrap_or_else(|e| {
                    StopReason::HeartbeatLost(format!("the heartbeat task failed: {e}"))
                }))),
            },
            Err(e) => Err(e),
        };
        // A cancel that emptied the queue before the heartbeat saw it is still a cancel.
        let outcome = match outcome {
            Ok(None)
                if store
                    .campaign(campaign.id)
                    .await
                    .is_ok_and(|c| c.cancel_requested) =>
            {
                Ok(Some(StopReason::Cancelled))
            }
            o => o,
        };
        heartbeat.abort();
        for s in [signals, shutdown].into_iter().flatten() {
            s.abort();
        }
        // Without a heartbeat the database may answer nothing: the counts are not asked for;
        // counts that cannot be read are shown as such, never as zeros.
        let counts = if matches!(outcome, Ok(Some(StopReason::HeartbeatLost(_)))) {
            None
        } else {
            store.counts(campaign.id).await.ok()
        };
        if let (Some(p), Some(counts)) = (runner.progress.as_mut(), &counts) {
            p.finish(counts);
        }
        let budget = runner.ctx.lanes.budget_used();
        self.record_end(outcome, counts, runner.sent_now, budget)
            .await
    }

    /// The claim/commit loop of this execution, with what its sends share.
    fn runner(
        &self,
        composer: Composer,
        opts: &mut RunOptions,
        ctl: Arc<Control>,
        fresh: FreshOptouts,
    ) -> anyhow::Result<Runner<'_>> {
        let (store, campaign) = (&self.store, self.campaign);
        Ok(Runner {
            store: store.clone(),
            campaign,
            worker: self.worker,
            lease_timeout_secs: self.cfg.policy.lease_timeout_secs,
            chunk_size: self.cfg.policy.chunk_size,
            // The frequency cap counts and limits ads only.
            cap: self
                .cfg
                .policy
                .max_ads_per_recipient
                .filter(|_| campaign.ad),
            consent_max_age_days: self.cfg.policy.ad_consent_max_age_days,
            composer: Arc::new(composer),
            ctx: Arc::new(SendCtx {
                pause_notice: opts.progress.as_ref().and_then(|p| p.pause_notice()),
                resend_in_doubt: opts.resend_in_doubt,
                ..send_ctx(
                    store.clone(),
                    &self.gateways,
                    campaign.split,
                    self.cfg,
                    campaign,
                    ctl.clone(),
                    fresh,
                )?
            }),
            progress: opts.progress.take(),
            sent_now: 0,
        })
    }

    /// Writes how the execution ended (unless another run took the lease) and reports it.
    async fn record_end(
        &self,
        outcome: anyhow::Result<Option<StopReason>>,
        counts: Option<Counts>,
        sent_now: u64,
        rate_budget: BudgetUse,
    ) -> anyhow::Result<RunReport> {
        let (store, id) = (&*self.store, self.campaign.id);
        let report = |status, exit_message, counts, failure_reasons| RunReport {
            campaign: id,
            execution: self.worker.execution,
            status,
            exit_message,
            counts,
            elapsed: self.started.elapsed(),
            sent_now,
            rate_budget,
            failure_reasons,
        };
        let lease_lost = match &outcome {
            Err(e) => matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::LeaseLost { .. })
            ),
            Ok(why) => matches!(
                why,
                Some(StopReason::LeaseLost | StopReason::HeartbeatLost(_))
            ),
        };
        if lease_lost {
            // Another execution or worker holds its messages now: write nothing more.
            let why = match &outcome {
                Ok(Some(why)) => why.clone(),
                _ => StopReason::LeaseLost,
            };
            warn!("{}", why.message());
            return Ok(report(RunStatus::Failed, why.message(), counts, Vec::new()));
        }
        let failure_reasons = store.failure_reasons(id, 3).await.unwrap_or_default();
        if matches!(outcome, Ok(Some(StopReason::Cancelled))) {
            match store.cancel(id, None).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // How the run ends depends on the counts: never judged from counts nobody could read.
        let counts = match counts {
            Some(c) => c,
            None => store.counts(id).await.map_err(|e| {
                let run = match &outcome {
                    Err(run) => format!("{run:#}; "),
                    Ok(_) => String::new(),
                };
                anyhow::anyhow!("{run}reading the campaign's counts to record the end failed: {e}")
            })?,
        };
        let ended = self.end_worker(&outcome, counts, failure_reasons).await?;
        Ok(report(
            ended.status,
            ended.message,
            Some(ended.counts),
            ended.failure_reasons,
        ))
    }

    /// Records this worker's end and, when it was the execution's last worker, the
    /// execution's: how it ended, and the counts to report.
    async fn end_worker(
        &self,
        outcome: &anyhow::Result<Option<StopReason>>,
        counts: Counts,
        failure_reasons: Vec<(String, i64)>,
    ) -> anyhow::Result<Ended> {
        let (store, id) = (&*self.store, self.campaign.id);
        let end = ending(id, outcome, &counts, &failure_reasons, &self.unaskable());
        let finished = store
            .finish_worker(
                &self.worker,
                end.status.execution_status().as_str(),
                &end.message,
            )
            .await;
        let last = match finished {
            Ok(last) => last,
            // Rescued or taken over while it failed: its messages are another worker's now.
            Err(StoreError::LeaseLost { .. }) => {
                let message = format!("{}; {}", end.message, StopReason::LeaseLost.message());
                warn!("{message}");
                return Ok(Ended {
                    status: RunStatus::Failed,
                    message,
                    counts,
                    failure_reasons: Vec::new(),
                });
            }
            // Say why the run ended too: that failure is often the cause of this one.
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "{}; recording the end of this worker failed too",
                    end.message
                )));
            }
        };
        if !last {
            let message = format!(
                "{}; this worker ended, other workers still run execution {}",
                end.message, self.worker.execution
            );
            info!(status = end.status.as_str(), message = %message, "worker ended");
            let counts = store.counts(id).await?;
            return Ok(Ended {
                status: end.status,
                message,
                counts,
                failure_reasons,
            });
        }
        // The last worker: the other workers' commits all precede their ends, so fresh counts
        // are final for this execution.
        let counts = store.counts(id).await?;
        let end = ending(id, outcome, &counts, &failure_reasons, &self.unaskable());
        store
            .finish_execution(
                &self.worker,
                &ExecutionEnd {
                    status: end.status.execution_status().as_str(),
                    exit_code: &end.exit_code,
                    exit_message: &end.message,
                    campaign_status: end.campaign.as_str(),
                },
            )
            .await
            .with_context(|| {
                format!("{}; recording the end of the execution failed", end.message)
            })?;
        let counts = store.counts(id).await?;
        info!(status = end.status.as_str(), message = %end.message, "execution ended");
        Ok(Ended {
            status: end.status,
            message: end.message,
            counts,
            failure_reasons,
        })
    }
}

/// What [`LeasedRun::end_worker`] recorded.
struct Ended {
    status: RunStatus,
    message: String,
    counts: Counts,
    failure_reasons: Vec<(String, i64)>,
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ending {
    status: RunStatus,
    campaign: CampaignStatus,
    exit_code: String,
    message: String,
}

/// How a run of campaign `id` ends, from why its loop ended and the final counts.
fn ending(
    id: i64,
    outcome: &anyhow::Result<Option<StopReason>>,
    counts: &Counts,
    failure_reasons: &[(String, i64)],
    unaskable: &Unaskable,
) -> Ending {
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
    let end = |status: RunStatus, campaign, code: &str, message| Ending {
        status,
        campaign,
        exit_code: code.to_string(),
        message,
    };
    match outcome {
        Err(e) => end(
            RunStatus::Failed,
            CampaignStatus::Failed,
            "FAILED",
            format!("{e:#}"),
        ),
        // Nothing went out: say so, and why, with a non-zero exit.
        Ok(None) if counts.all_final() && counts.sent == 0 && counts.failed > 0 => end(
            RunStatus::Failed,
            CampaignStatus::Failed,
            "ALL_FAILED",
            format!(
                "no message was sent: {} failed (leading reasons: {}); see `munja audit --campaign {id} --status failed`",
                counts.failed,
                reasons_text(failure_reasons)
            ),
        ),
        Ok(None) if counts.all_final() => end(
            RunStatus::Completed,
            CampaignStatus::Completed,
            "COMPLETED",
            format!(
                "all {} messages final: {} sent, {} failed, {} suppressed, {} cancelled",
                counts.total, counts.sent, counts.failed, counts.suppressed, counts.cancelled
            ),
        ),
        Ok(None) if counts.pending == 0 => end(
            RunStatus::Stopped,
            CampaignStatus::Stopped,
            "IN_DOUBT",
            in_doubt_message(id, in_doubt, unaskable),
        ),
        Ok(None) => end(
            RunStatus::Stopped,
            CampaignStatus::Stopped,
            "STOPPED",
            format!("{} messages still pending{settle_note}", counts.pending),
        ),
        Ok(Some(StopReason::Cancelled)) => end(
            RunStatus::Stopped,
            CampaignStatus::Cancelled,
            "CANCELLED",
            format!("{}{settle_note}", StopReason::Cancelled.message()),
        ),
        Ok(Some(why)) => {
            let status = why.status();
            end(
                status,
                status.campaign_status(),
                &why.code().to_uppercase(),
                format!("{}{settle_note}", why.message()),
            )
        }
    }
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
