//! The claim loop of one worker: claims chunks of pending messages (up to [`PIPELINE`] in
//! flight), hands each to the sender, and commits every chunk's outcomes, on PostgreSQL each
//! commit running while the next chunk is claimed. With several workers on one campaign it
//! also rescues the claims of dead workers (settling them by lookup before anything is
//! resent), and when the queue runs dry it stays until the other workers' claims are committed
//! or rescued, so that no claim of a worker that dies near the end is left behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tracing::{Instrument, debug, info, warn};

use super::control::StopReason;
use super::sender::{ChunkSent, SendCtx, quiet_stop, send_chunk};
use crate::domain::consent;
use crate::domain::message::Composer;
use crate::domain::model::{Campaign, Counts, MessageState, MessageUpdate, Rescued, WorkerToken};
use crate::run::lease::Process;
use crate::run::progress::Progress;
use crate::store::{ClaimRequest, Store};

/// Chunks in flight at once after the first, at most.
pub(super) const PIPELINE: usize = 4;

/// Messages claimed and not yet sent, at most, whatever the chunk size: a claimed message
/// holds its row, its rendered text and its result until its chunk commits, so large chunks are
/// pipelined less deeply (chunks of 1,000: 4 in flight; of 2,000: 2; of 4,000 or more: 1).
/// On PostgreSQL one more chunk, sent, may be committing meanwhile (its results only), except
/// with chunks of 4,000 or more, whose commit the next claim waits for.
const IN_FLIGHT_MESSAGES: usize = 4_000;

/// How many chunks of `chunk_size` may be in flight at once after the first.
pub(super) fn pipeline_depth(chunk_size: usize) -> usize {
    (IN_FLIGHT_MESSAGES / chunk_size.max(1)).clamp(1, PIPELINE)
}

/// How often a dry worker looks again whether it may leave: a thirtieth of the lease timeout,
/// from 50 to 250 ms (one small transaction each time, only while the queue is dry).
fn dry_poll(lease_timeout_secs: u64) -> Duration {
    Duration::from_millis((lease_timeout_secs * 1000 / 30).clamp(50, 250))
}

/// Whether a chunk's commit runs while the next chunk is claimed: on a store whose commits run
/// beside claims (PostgreSQL), unless chunks are so large that one is in flight at a time.
pub fn commit_beside_claim(store: &dyn Store, chunk_size: usize) -> bool {
    store.commit_beside_claim() && pipeline_depth(chunk_size) > 1
}

/// The claim/commit loop of one execution and what it shares with the in-doubt settlement.
pub(super) struct Runner<'a> {
    pub(super) store: Arc<dyn Store>,
    pub(super) campaign: &'a Campaign,
    pub(super) worker: WorkerToken,
    pub(super) lease_timeout_secs: u64,
    pub(super) chunk_size: usize,
    pub(super) cap: Option<crate::config::FrequencyCap>,
    /// `policy.ad_consent_max_age_days` for an ad (`None`: no consent check).
    pub(super) consent_max_age_days: Option<u32>,
    pub(super) composer: Arc<Composer>,
    pub(super) ctx: Arc<SendCtx>,
    pub(super) progress: Option<Box<dyn Progress>>,
    pub(super) sent_now: u64,
}

/// What claiming more chunks came to.
enum Fill {
    /// Chunks are in flight (none was claimed when `dry`: the queue is empty for now).
    InFlight { dry: bool },
    /// The run ends: the queue ran dry (`None`), or why it stops early.
    End(Option<StopReason>),
}

type InFlight = tokio::task::JoinSet<ChunkSent>;

/// A chunk's commit in flight while the claim loop claims the next chunk (one at a time): it
/// gives back the chunk's outcomes once they are committed.
type Committing = tokio::task::JoinHandle<anyhow::Result<Vec<MessageUpdate>>>;

impl Runner<'_> {
    /// Returns `None` when the queue ran dry, or why it stopped early.
    ///
    /// Up to [`PIPELINE`] chunks are in flight at once (claimed and committed separately), so one
    /// slow message does not idle the gateway; the first chunk runs alone, so that a template
    /// that fails every message stops the run before more is claimed. On PostgreSQL a chunk's
    /// commit runs while the next chunk is claimed (two backends work at once; SQLite's one
    /// writer would take them in turn, so there each commit ends before the next claim);
    /// whatever ends the run, the commit in flight ends first.
    pub(super) async fn drive(
        &mut self,
        retry_failed: bool,
        settle_only: bool,
    ) -> anyhow::Result<Option<StopReason>> {
        if settle_only {
            self.settle_in_doubt(true).await?;
            return Ok(Some(StopReason::Cancelled));
        }
        let mut counts = self.prepare(retry_failed).await?;
        let mut committing = None;
        let outcome = self.claim_and_send(&mut counts, &mut committing).await;
        let last = self.finish_commit(&mut committing, &mut counts).await;
        let why = outcome?;
        last?;
        Ok(why)
    }

    /// The claim loop of [`Runner::drive`]; leaves the last chunk's commit in `committing`.
    async fn claim_and_send(
        &mut self,
        counts: &mut Counts,
        committing: &mut Option<Committing>,
    ) -> anyhow::Result<Option<StopReason>> {
        let mut first_chunk = true;
        let mut in_flight = InFlight::new();
        let several = self.store.several_workers();
        let mut last_rescue = Instant::now();
        // When this worker last found the queue empty (cleared when it claims again).
        let mut dry_since: Option<Instant> = None;
        loop {
            if in_flight.is_empty() {
                release_freed_memory();
            }
            if several && last_rescue.elapsed() >= self.rescue_every() {
                last_rescue = Instant::now();
                self.finish_commit(committing, counts).await?;
                self.rescue().await?;
                self.refresh_counts(counts).await?;
            }
            let limit = if first_chunk {
                1
            } else {
                pipeline_depth(self.chunk_size)
            };
            let dry = match self.fill(&mut in_flight, limit, counts).await? {
                Fill::End(_) if committing.is_some() => {
                    // The commit in flight may put messages back in the queue (those quiet
                    // hours hold, say): the end is judged once it is committed.
                    self.finish_commit(committing, counts).await?;
                    continue;
                }
                Fill::End(None) if several => {
                    if !self
                        .others_still_working(*dry_since.get_or_insert_with(Instant::now))
                        .await?
                    {
                        return Ok(None);
                    }
                    self.refresh_counts(counts).await?;
                    continue;
                }
                Fill::End(why) => return Ok(why),
                Fill::InFlight { dry } => {
                    if !dry {
                        dry_since = None;
                    }
                    dry
                }
            };
            let Some(joined) = in_flight.join_next().await else {
                // Nothing in flight and told to stop.
                return Ok(self.ctx.ctl.reason());
            };
            let sent = joined.context("a send task panicked")?;
            log_refused(&sent.updates);
            if first_chunk
                && let Some(why) = self
                    .template_failed(&sent.updates, sent.first_error.clone())
                    .await?
            {
                return Ok(Some(why));
            }
            first_chunk = false;
            self.finish_commit(committing, counts).await?;
            *committing = Some(self.start_commit(sent, dry));
            if !commit_beside_claim(&*self.store, self.chunk_size) {
                // The next claim waits for this commit: on SQLite, whose one writer would take
                // them in turn anyway; and with chunks so large that one is in flight at a
                // time, so that their memory is not held at once (a chunk of 10,000 single
                // requests with 256 in flight peaked 11 MiB higher with the overlap).
                self.finish_commit(committing, counts).await?;
            }
        }
    }

    /// With several workers, the counts the progress display shows are read again from the
    /// database (the other workers' outcomes included); without a display, they are not read
    /// at all: a campaign's counts are a query over all its messages.
    async fn refresh_counts(&self, counts: &mut Counts) -> anyhow::Result<()> {
        if self.progress.is_some() {
            *counts = self.store.counts(self.campaign.id).await?;
        }
        Ok(())
    }

    /// How often a worker looks for dead workers to rescue: a third of the lease timeout.
    fn rescue_every(&self) -> Duration {
        Duration::from_millis((self.lease_timeout_secs * 1000 / 3).max(200))
    }

    /// Closes dead workers of the campaign (silent past the lease timeout, or their process seen
    /// gone on this host) and settles their claimed messages by lookup.
    async fn rescue(&mut self) -> anyhow::Result<Rescued> {
        let me = self.worker.worker;
        let dead: Vec<i64> = self
            .store
            .workers(self.campaign.id)
            .await?
            .iter()
            .filter(|k| k.status == "STARTED" && k.id != me)
            .filter(|k| Process::is_gone(&k.host, k.pid, k.process.as_deref()))
            .map(|k| k.id)
            .collect();
        let rescued = self
            .store
            .rescue(&self.worker, self.lease_timeout_secs, &dead)
            .await?;
        if rescued.workers > 0 {
            warn!(
                workers = rescued.workers,
                messages = rescued.messages,
                "rescued the claims of dead workers: settling them by lookup before anything is resent"
            );
            self.settle_in_doubt(false).await?;
        }
        Ok(rescued)
    }

    /// The queue is dry for this worker: `true` while it must wait (other workers hold claims,
    /// or it is the worker that ends the execution and others are still STARTED) or a rescue
    /// just gave it work.
    ///
    /// The execution is ended by its last worker, so one worker must outlive the rest, even a
    /// worker that died idle on another host, which only the lease timeout can close: that is
    /// the lowest-numbered live worker. Any other dry worker leaves once it sees a worker with
    /// a lower id that beat after this one ran dry (`dry_since`, against the beat's age on the
    /// database clock: a worker that died before then does not pass for live); the lowest one
    /// waits until every other worker has ended or has been rescued, then ends the execution.
    /// Both look again every [`dry_poll`], so the end of a run costs about one heartbeat
    /// interval, not a third of the lease.
    async fn others_still_working(&mut self, dry_since: Instant) -> anyhow::Result<bool> {
        let rescued = self.rescue().await?;
        if rescued.workers > 0 {
            return Ok(true);
        }
        if self.ctx.ctl.stopping() {
            return Ok(false);
        }
        if rescued.others_sending == 0 {
            // A lower worker that beat since this one ran dry (within a third of the lease).
            let dry_ms = i64::try_from(dry_since.elapsed().as_millis()).unwrap_or(i64::MAX);
            let lower_proven_alive = rescued.lower_alive > 0
                && rescued.lower_beat_age_ms.is_some_and(|age| age < dry_ms);
            if rescued.others_started == 0 || lower_proven_alive {
                return Ok(false);
            }
        }
        debug!(
            messages = rescued.others_sending,
            workers = rescued.others_started,
            "queue dry; waiting for the other workers' claims, or for them to end or be rescued"
        );
        self.ctx.ctl.sleep(dry_poll(self.lease_timeout_secs)).await;
        Ok(true)
    }

    /// Before the first claim: snapshot the segment, re-queue retryable failures when asked,
    /// settle messages in doubt; returns the counts the progress display starts from.
    async fn prepare(&mut self, retry_failed: bool) -> anyhow::Result<Counts> {
        let id = self.campaign.id;
        // As for an SQL segment: consent ages are judged at the campaign's scheduled time
        // (or now), read when the run starts.
        let as_of = crate::input::segment_sql::as_of_for(self.campaign, Utc::now());
        let cutoff = consent::cutoff(self.consent_max_age_days, self.campaign.ad, as_of);
        let total = self
            .store
            .snapshot(&self.worker, cutoff)
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
        if self.ctx.resend_in_doubt {
            let n = self.store.requeue_in_doubt(id).await?;
            info!(
                messages = n,
                "--resend-in-doubt: messages still in doubt are sent again"
            );
        }
        if self.ctx.lanes.split {
            // Exact shares over the whole campaign, not only this run's messages.
            let recorded = self.store.gateway_messages(id).await?;
            self.ctx.lanes.seed_shares(&recorded);
        }
        let counts = self.store.counts(id).await?;
        if let Some(p) = self.progress.as_mut() {
            p.start(&counts);
        }
        Ok(counts)
    }

    /// Claims chunks and starts sending them while fewer than `limit` are in flight and there
    /// is no reason to stop. Suppressions made by the claims are counted in `counts`.
    async fn fill(
        &self,
        in_flight: &mut InFlight,
        limit: usize,
        counts: &mut Counts,
    ) -> anyhow::Result<Fill> {
        let id = self.campaign.id;
        while in_flight.len() < limit && !self.ctx.ctl.stopping() {
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
                    worker: self.worker,
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
                if !in_flight.is_empty() {
                    return Ok(Fill::InFlight { dry: true });
                }
                if let Some(q) = quiet
                    && self.store.has_pending_without_consent(id).await?
                {
                    return Ok(Fill::End(Some(quiet_stop(q))));
                }
                return Ok(Fill::End(None));
            }
            debug!(
                messages = claim.messages.len(),
                first = claim.messages.first().map(|m| m.id),
                last = claim.messages.last().map(|m| m.id),
                "chunk claimed"
            );
            let ctx = self.ctx.clone();
            let composer = self.composer.clone();
            in_flight.spawn(
                async move { send_chunk(ctx, composer, claim.messages).await }
                    .instrument(tracing::Span::current()),
            );
        }
        Ok(Fill::InFlight { dry: false })
    }

    /// The first chunk: when the template failed every message, nothing was sent; the chunk
    /// goes back to the queue so that nothing is lost, and the run stops.
    async fn template_failed(
        &self,
        updates: &[MessageUpdate],
        first_error: Option<String>,
    ) -> anyhow::Result<Option<StopReason>> {
        let template_failures = updates
            .iter()
            .filter(|u| u.reason.as_deref() == Some("template_error"))
            .count();
        if updates.is_empty() || template_failures != updates.len() {
            return Ok(None);
        }
        let back: Vec<MessageUpdate> = updates
            .iter()
            .cloned()
            .map(|mut u| {
                u.state = MessageState::Pending;
                u.reason = None;
                u
            })
            .collect();
        self.store.commit_chunk(&self.worker, &back).await?;
        Ok(Some(StopReason::TemplateError(
            first_error.unwrap_or_default(),
        )))
    }

    /// Starts committing a sent chunk: first the numbers the gateway said opted out (so that
    /// none is lost with the chunk), then its outcomes.
    fn start_commit(&self, sent: ChunkSent, dry: bool) -> Committing {
        let store = self.store.clone();
        let worker = self.worker;
        tokio::spawn(
            async move {
                crate::run::delivery::optouts::add_all(&*store, &sent.opted_out)
                    .await
                    .context(
                        "adding numbers the gateway refused as opted out to the opt-out list",
                    )?;
                store.commit_chunk(&worker, &sent.updates).await?;
                let updates = sent.updates;
                debug!(
                    messages = updates.len(),
                    first = updates.first().map(|u| u.id),
                    last = updates.last().map(|u| u.id),
                    dry,
                    "chunk committed"
                );
                Ok(updates)
            }
            .instrument(tracing::Span::current()),
        )
    }

    /// Waits for the commit in flight, if any, then advances the running counts, the metrics
    /// and the progress display by its outcomes.
    async fn finish_commit(
        &mut self,
        committing: &mut Option<Committing>,
        counts: &mut Counts,
    ) -> anyhow::Result<()> {
        let Some(task) = committing.take() else {
            return Ok(());
        };
        let updates = task.await.context("a commit task panicked")??;
        for u in &updates {
            let slot = match u.state {
                MessageState::Sent => {
                    self.sent_now += 1;
                    &mut counts.sent
                }
                MessageState::Failed => &mut counts.failed,
                MessageState::Suppressed => &mut counts.suppressed,
                MessageState::InDoubt => &mut counts.in_doubt,
                _ => continue,
            };
            *slot += 1;
            counts.pending -= 1;
        }
        crate::run::metrics::record_outcomes(self.campaign.id, &self.campaign.gateway, &updates);
        if let Some(p) = self.progress.as_mut() {
            p.update(counts);
        }
        Ok(())
    }
}

/// Gives the allocator's free pages back to the OS. Called when no chunk is in flight (between
/// chunks of 4,000 messages or more, which are not pipelined): glibc keeps the pages a chunk's
/// messages, tasks and statements freed, and the next chunk's allocations do not all fit in
/// them, so a run's RSS crept up chunk after chunk, well past its heap (see docs/performance.md,
/// "Memory of a run of single requests").
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator to the OS; it takes the
    // allocator's locks like any malloc call and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Messages refused before any request (they cannot be composed) are logged per chunk.
fn log_refused(updates: &[MessageUpdate]) {
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
}

#[cfg(test)]
mod pipeline_tests {
    use super::pipeline_depth;

    #[test]
    fn large_chunks_are_pipelined_less_deeply() {
        assert_eq!(pipeline_depth(100), 4);
        assert_eq!(pipeline_depth(1000), 4);
        assert_eq!(pipeline_depth(2000), 2);
        assert_eq!(pipeline_depth(3000), 1);
        assert_eq!(pipeline_depth(10_000), 1);
        assert_eq!(pipeline_depth(0), 4);
    }
}
