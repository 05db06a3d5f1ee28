//! The store contract: [`Store`] and its parts by concern. What each operation needs from the
//! database (isolation, fencing, atomicity) is written on the operation and summed up in the
//! doc of the `store` module.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::*;

/// The job repository: the whole contract, in parts by concern ([`CampaignStore`], [`ImportStore`],
/// [`SqlSegmentStore`], [`WorkerStore`], [`ChunkStore`], [`DeliveryStore`], [`ScheduleStore`])
/// that each backend implements in the module of that concern, and these operations on
/// campaigns, the rate budget, the audit and retention.
#[async_trait]
pub trait Store:
    CampaignStore
    + ImportStore
    + SqlSegmentStore
    + WorkerStore
    + ChunkStore
    + DeliveryStore
    + ScheduleStore
    + Send
    + Sync
{
    /// Creates the schema or brings it up to date; harmless to repeat.
    async fn migrate(&self) -> Result<()>;
    /// Pending messages become `cancelled`. A live run is asked to stop; a dead holder's
    /// execution (`dead_lease`, checked by the caller) is closed as ABANDONED. Refused for
    /// COMPLETED and CANCELLED campaigns.
    async fn cancel(&self, campaign: i64, dead_lease: Option<i64>) -> Result<u64>;
    /// Deletes a campaign with all its messages, attempts, executions and delivery reports, in
    /// one transaction; refused while a lease other than
    /// `expected_lease` (a dead holder the caller has checked) is held.
    async fn delete_campaign(&self, campaign: i64, expected_lease: Option<i64>) -> Result<()>;
}

/// Campaigns and their executions, the end of an execution, requeues, the shared rate budget,
/// the audit and retention: written once for both databases (`sql::campaigns`).
#[async_trait]
pub trait CampaignStore: Send + Sync {
    /// The clock this store judges leases, claim expiries and the rate budget by (the
    /// database server's on PostgreSQL); its tests move it to check expiry at a chosen time.
    fn clock(&self) -> &Clock;
    async fn create_campaign(&self, c: &NewCampaign) -> Result<i64>;
    async fn campaign(&self, id: i64) -> Result<Campaign>;
    async fn campaigns(&self) -> Result<Vec<Campaign>>;
    async fn counts(&self, campaign: i64) -> Result<Counts>;
    async fn executions(&self, campaign: i64) -> Result<Vec<Execution>>;
    async fn request_stop(&self, campaign: i64) -> Result<()>;
    /// The shared rate limit: takes up to `take.want` tokens from gateway `gateway`'s bucket,
    /// which every run on this database draws from, but none unless it holds at least
    /// `take.need`. The bucket holds at most `take.capacity` tokens (full when new) and gains
    /// `take.rate` per second of the database clock; returns how many were granted (0 when
    /// fewer than `need` are there). Refill and take are one atomic write: two callers never get
    /// the same token.
    async fn take_tokens(&self, gateway: &str, take: Take) -> Result<Granted>;
    /// Whether pending messages without night consent remain.
    async fn has_pending_without_consent(&self, campaign: i64) -> Result<bool>;
    /// The most frequent reasons of failed messages, most frequent first: (reason, count).
    async fn failure_reasons(&self, campaign: i64, limit: i64) -> Result<Vec<(String, i64)>>;
    /// Messages of the campaign per gateway of their last request (`--split` carries on from
    /// them): (gateway, messages), by name; messages never sent are left out.
    async fn gateway_messages(&self, campaign: i64) -> Result<Vec<(String, i64)>>;
    /// `--resend-in-doubt`: messages `in_doubt` go back to `pending` (the operator accepts that
    /// a gateway which could not be asked may send them twice); returns how many.
    async fn requeue_in_doubt(&self, campaign: i64) -> Result<u64>;
    /// Failed messages whose attempts ran out on transient errors go back to `pending`.
    async fn requeue_retryable(&self, campaign: i64) -> Result<u64>;
    /// Records how the execution ended and releases the lease (fenced on the execution).
    async fn finish_execution(&self, w: &WorkerToken, end: &ExecutionEnd<'_>) -> Result<()>;

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>>;
    /// Deletes what finished (COMPLETED or CANCELLED, not running) campaigns logged before
    /// `before`: attempts, ended executions and delivery reports, plus reports of refs no
    /// message has; messages stay. Small auto-committed batches of `batch` rows, so a running
    /// campaign's writer waits for one batch at most.
    async fn purge(&self, before: DateTime<Utc>, batch: i64) -> Result<PurgeReport>;
    async fn disk_usage(&self) -> Result<DiskUsage>;
}

/// How an execution ended ([`CampaignStore::finish_execution`]): its status, exit code and
/// message, and the campaign's status from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionEnd<'a> {
    pub status: &'a str,
    pub exit_code: &'a str,
    pub exit_message: &'a str,
    pub campaign_status: &'a str,
}

impl<'a> ExecutionEnd<'a> {
    /// The execution, its exit code and the campaign all `status`, with `exit_message`.
    pub fn same(status: &'a str, exit_message: &'a str) -> ExecutionEnd<'a> {
        ExecutionEnd {
            status,
            exit_code: status,
            exit_message,
            campaign_status: status,
        }
    }
}

/// A take from a gateway's token bucket ([`CampaignStore::take_tokens`]): at least `need`
/// tokens or none, at most `want`, from a bucket of `capacity` tokens refilled at `rate` a
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub need: u32,
    pub want: u32,
    pub rate: u32,
    pub capacity: u32,
}

/// What [`CampaignStore::take_tokens`] granted, and when by this process's monotonic clock: a
/// moment no later than the take itself (taken once a SQLite writer holds the write lock, just
/// before the statement that reads the bucket), from which a run counts how long it may hold
/// the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub tokens: u32,
    pub at: std::time::Instant,
}

/// Opt-out lists (수신거부) and CSV segments: imports and reads.
#[async_trait]
pub trait ImportStore: Send + Sync {
    async fn begin_optout_import(&self, source: &str) -> Result<Box<dyn Import>>;
    /// Returns `true` when the number was newly added.
    async fn optout_add(&self, phone: &Phone, source: &str) -> Result<bool>;
    async fn optout_remove(&self, phone: &Phone) -> Result<bool>;
    async fn optout_contains(&self, phone: &Phone) -> Result<bool>;
    async fn optout_count(&self) -> Result<i64>;
    /// Numbers of the campaign's claimed (`sending`) messages that were opted out at or after
    /// `since`: the check right before sending. Bounded by the messages in flight, never by the
    /// length of the list (opt-outs older than a claim were suppressed by the claim itself).
    async fn fresh_optouts_in_flight(
        &self,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>>;

    /// Starts replacing segment `name`; the old members stay visible until commit. The
    /// segment records whether `columns` has an `ad_consent_at` column (any case): only then
    /// is a member without a consent time `consent_missing`.
    async fn begin_segment_import(
        &self,
        name: &str,
        source: &str,
        columns: &[String],
    ) -> Result<Box<dyn Import>>;
    async fn segment(&self, name: &str) -> Result<Option<Segment>>;
    async fn segments(&self) -> Result<Vec<Segment>>;
    /// How many members of segment `segment_id` an ad snapshot with consent `cutoff` suppresses
    /// for their consent, by reason (`consent_missing`, `consent_expired`; none absent): the
    /// snapshot's own rule, so members on the opt-out list (suppressed as `opted_out`) are not
    /// counted. `NotFound` when there is no such segment.
    async fn segment_consent_counts(
        &self,
        segment_id: i64,
        cutoff: DateTime<Utc>,
    ) -> Result<BTreeMap<String, u64>>;
    /// Members in file order, `after_seq` exclusive, at most `limit`: (seq, phone, vars, night_consent).
    async fn segment_members(
        &self,
        segment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, bool)>>;
    /// Deletes segment `name` in one transaction: a CSV segment with its members, and an SQL
    /// segment's versions from every list (kept for the campaigns created from them; a later
    /// `define` continues their numbering). Refused, deleting nothing, while a campaign that is
    /// not COMPLETED or CANCELLED was created from the name ([`SegmentDeletion::InUse`]).
    async fn delete_segment(&self, name: &str) -> Result<SegmentDeletion>;
}

/// What [`ImportStore::delete_segment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentDeletion {
    /// Deleted: the CSV segment's member count (`None`: there was none of that name) and the
    /// number of SQL segment versions taken off the lists (0: none).
    Deleted {
        csv_members: Option<i64>,
        sql_versions: u64,
    },
    /// Nothing deleted: these unfinished campaigns use it, oldest first.
    InUse(Vec<SegmentUser>),
    /// No CSV or SQL segment has this name.
    NotFound,
}

/// An unfinished campaign created from a segment.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SegmentUser {
    pub id: i64,
    pub name: String,
    pub status: String,
}

/// SQL segments (a query on a `[sources.NAME]` database; see `segdefs`) and the streamed
/// snapshot of a campaign created from one.
#[async_trait]
pub trait SqlSegmentStore: Send + Sync {
    /// Stores `def` as the next version of its name (version 1 when new) and returns it.
    async fn define_sql_segment(&self, def: &NewSqlSegment) -> Result<SqlSegment>;
    /// Every version of SQL segment `name`, oldest first (empty when there is none).
    async fn sql_segment_versions(&self, name: &str) -> Result<Vec<SqlSegment>>;
    /// The latest version of every SQL segment, by name.
    async fn sql_segments(&self) -> Result<Vec<SqlSegment>>;
    /// Records that `campaign` was created from SQL segment version `sql_segment_id`: its
    /// snapshot runs exactly that query text, whatever is defined later.
    async fn link_sql_segment(&self, campaign: i64, sql_segment_id: i64) -> Result<()>;
    /// The SQL segment version `campaign` was created from; `None` for a CSV segment.
    async fn campaign_sql_segment(&self, campaign: i64) -> Result<Option<CampaignSqlSegment>>;
    /// Opens the streamed snapshot of worker `w`'s campaign (fenced on its execution holding
    /// the lease); `None` when the campaign was snapshotted before. Its suppressions count on
    /// the worker and the execution.
    async fn begin_message_snapshot(
        &self,
        w: &WorkerToken,
    ) -> Result<Option<Box<dyn MessageSnapshot>>>;
}

/// Executions, workers and the lease: enlisting, heartbeats, rescue of dead workers and
/// each worker's end.
#[async_trait]
pub trait WorkerStore: Send + Sync {
    /// Whether several workers may run one campaign at once (PostgreSQL). Where not (SQLite,
    /// one writer), [`Enlist::Join`] is refused and a second runner fails at once.
    fn several_workers(&self) -> bool;
    /// Enlists a worker: starts a new execution holding the lease ([`Enlist::New`], a compare
    /// and swap: of two racing starts with the same `expected`, exactly one wins, the other gets
    /// [`StoreError::Conflict`]) or joins the live one ([`Enlist::Join`]; `Conflict` when that
    /// execution no longer holds the lease). Returns the worker's fencing token.
    async fn start_worker(&self, campaign: i64, how: &Enlist, me: &Process) -> Result<WorkerToken>;
    /// Refreshes the worker's heartbeat and the lease's; returns (stop_requested,
    /// cancel_requested). `LeaseLost` when the worker was rescued or the execution replaced.
    async fn heartbeat(&self, w: &WorkerToken) -> Result<(bool, bool)>;
    /// Closes the campaign's other STARTED workers that are dead as ABANDONED: those silent for
    /// more than `timeout_secs` of the database clock, and those in `dead` (whose process this
    /// host saw gone). Their `sending` messages become the in-doubt work of [`ChunkStore::in_doubt`].
    /// A no-op on stores with one worker.
    async fn rescue(&self, w: &WorkerToken, timeout_secs: u64, dead: &[i64]) -> Result<Rescued>;
    /// The workers of a campaign, oldest first.
    async fn workers(&self, campaign: i64) -> Result<Vec<WorkerRecord>>;
    /// Records how worker `w` ended; returns `true` when it was the execution's last STARTED
    /// worker, whose caller then records the end of the execution with `finish_execution`.
    async fn finish_worker(
        &self,
        w: &WorkerToken,
        status: &str,
        exit_message: &str,
    ) -> Result<bool>;
}

/// A run's messages: the snapshot of its segment, claims, commits and the messages in doubt.
#[async_trait]
pub trait ChunkStore: Send + Sync {
    /// Snapshots the segment into messages, all or nothing; returns the total (0 if done before).
    /// Members on the opt-out list are suppressed as `opted_out`; then, with `consent_cutoff`
    /// (an ad with `policy.ad_consent_max_age_days` on), members whose consent is older are
    /// `consent_expired` and, when the segment's file had an `ad_consent_at` column, those
    /// without one `consent_missing`.
    async fn snapshot(&self, w: &WorkerToken, consent_cutoff: Option<DateTime<Utc>>)
    -> Result<u64>;
    /// Messages to settle by lookup before anything is sent or cancelled: `in_doubt` ones and
    /// those an earlier execution left `sending` (it crashed), at most `limit`, id > after.
    ///
    /// With several workers these are claimed for `w` (`FOR UPDATE SKIP LOCKED`): `in_doubt`
    /// ones not held by another live worker, and `sending` ones of workers that are no longer
    /// STARTED (rescued, or of an earlier execution). A live worker's claims are never returned.
    async fn in_doubt(
        &self,
        w: &WorkerToken,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>>;
    /// Pending messages become `sending`, claimed by the request's worker, and the claim is
    /// committed before this returns. Concurrent claims by other workers never return the same
    /// message (`FOR UPDATE SKIP LOCKED` on PostgreSQL; one writer on SQLite).
    async fn claim_chunk(&self, req: ClaimRequest) -> Result<Claim>;
    /// Every outcome of a chunk, its attempts and the counters of the worker and the execution,
    /// in one transaction, fenced on the worker (and, per message, on `claimed_by`).
    async fn commit_chunk(&self, w: &WorkerToken, updates: &[MessageUpdate]) -> Result<()>;
    /// Whether one worker's commit and its next claim can run at once (PostgreSQL: two
    /// backends, the commit holding the worker row `FOR KEY SHARE`). Where not (SQLite's one
    /// writer would take them in turn anyway), the claim loop commits each chunk before it
    /// claims again.
    fn commit_beside_claim(&self) -> bool;
}

/// Delivery reports: the report log and each message's delivery state.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Records one delivery report by message ref, in one transaction: logs it in the report
    /// log and, when it is final and the message has no final delivery state yet, sets the
    /// message's `delivery`, `delivery_code` and `delivered_at`. Applied whatever the message's
    /// send state (a report may beat the send's own commit, which never touches these columns);
    /// a final state is never changed afterwards (the first final report wins). Two concurrent
    /// reports for one ref: exactly one is `Applied`.
    async fn record_delivery(&self, report: &DeliveryReport) -> Result<DeliveryEffect>;
    /// Every logged report naming `msg_ref`, oldest first: what the carrier said, and proof a
    /// gateway without lookups (Kannel) had the message.
    async fn delivery_reports(&self, msg_ref: &str) -> Result<Vec<StoredReport>>;
    /// How many reports came through `gateway` (all gateways when `None`), by effect.
    async fn report_counts(&self, gateway: Option<&str>) -> Result<ReportCounts>;
}

/// Schedules (`munja serve` starts what is due): scheduled campaigns, launch claims and
/// recurring schedules.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Creates a SCHEDULED campaign due at `at`. With `occurrence` = (schedule id, occurrence
    /// time) it is that occurrence's campaign: a second one for the same occurrence is
    /// refused with [`StoreError::Conflict`] (a unique key, so that holds across servers).
    async fn create_scheduled_campaign(
        &self,
        c: &NewCampaign,
        at: DateTime<Utc>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64>;
    /// Sets (`Some`: SCHEDULED) or clears (`None`: back to CREATED) the time of a campaign
    /// that never ran; [`StoreError::Conflict`] for any other status.
    async fn set_scheduled_at(&self, campaign: i64, at: Option<DateTime<Utc>>) -> Result<()>;
    /// Claims the launch of campaign `campaign` for `ttl_ms` milliseconds, if its status is
    /// still `status` and nobody holds an unexpired claim (one atomic conditional update):
    /// of several servers that saw it due or resumable at once, one launches it.
    async fn claim_launch(&self, campaign: i64, status: &str, ttl_ms: i64) -> Result<bool>;
    /// SCHEDULED campaigns due at `now`, earliest first.
    async fn due_campaigns(&self, now: DateTime<Utc>) -> Result<Vec<i64>>;
    /// Stores a recurring schedule; [`StoreError::Conflict`] when the name is taken.
    async fn add_schedule(&self, s: &NewSchedule) -> Result<i64>;
    async fn schedules(&self) -> Result<Vec<Schedule>>;
    /// Pauses or resumes schedule `name`; [`StoreError::NotFound`] when there is none.
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<()>;
    /// Deletes schedule `name` (its campaigns stay); [`StoreError::NotFound`] when there is none.
    async fn remove_schedule(&self, name: &str) -> Result<()>;
    /// Records that the occurrence at `at` was handled; never moves the mark back.
    async fn mark_occurrence(&self, schedule: i64, at: DateTime<Utc>) -> Result<()>;
}
