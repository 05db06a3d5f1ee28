//! The job repository: the one seam between munja and its database.
//!
//! [`Store`] is what the rest of munja sees; [`sqlite::SqliteStore`] is the embedded default,
//! [`postgres::PgStore`] the server one (`database_url = "postgres://…"`), with the same
//! semantics: the conformance suite (`conformance`, tests only) runs every operation on both.
//! All SQL lives behind this seam; the rules (what to claim, when a lease is dead, what a
//! suppressed message means) live in `dispatch`, `lease` and the domain modules.
//!
//! Crash safety rests on three promises every implementation keeps:
//! - a segment snapshot is all-or-nothing (one transaction);
//! - `claim_chunk` moves messages to `sending` and commits before any HTTP request is made;
//! - `commit_chunk` writes every message's outcome, its attempts and the execution counters in
//!   one transaction, and only while the caller still holds the campaign's lease (fencing).
//!
//! What each operation needs from the database, whatever it is:
//! - `claim_chunk`, `commit_chunk`, `snapshot`, `in_doubt`, `finish_*`: the fencing check of
//!   the worker (its row still STARTED, its execution still holding the lease) and the writes
//!   in one transaction that excludes a concurrent takeover or rescue of that worker (a stale
//!   worker gets [`StoreError::LeaseLost`] and writes nothing). Claims by different workers run
//!   concurrently and never return the same message;
//! - `start_worker`: compare and swap of the lease holder: of two racing starts with the same
//!   `expected`, exactly one wins, the other gets [`StoreError::Conflict`];
//! - `rescue`: closing a dead worker and taking over its claims in one transaction, judged by
//!   the database clock;
//! - `heartbeat`: one atomic conditional update; `cancel` and `delete_campaign`: the holder
//!   check and the writes in one transaction;
//! - imports: one transaction each, invisible until `commit`; a segment's old members stay
//!   readable until then;
//! - reads (`counts`, `audit`, `in_doubt`, …): one statement each, committed data only.
//!
//! Times: every comparison of a lease, claim or launch with "now" is made by the store's
//! [`Clock`], never by the caller's; a time handed back for the caller to compare with its own
//! clock (a lease's last heartbeat) is converted to it first ([`Clock::to_local`]).

pub mod clock;
#[cfg(test)]
mod conformance;
pub mod postgres;
pub mod segdefs;
pub mod source;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::model::{
    AttemptRecord, AuditRow, Campaign, CampaignStatus, ClaimedMessage, Counts, DeliveryEffect,
    DeliveryReport, DeliveryState, Enlist, Execution, ExecutionStatus, Lease, MessageState,
    MessageUpdate, NewCampaign, NewMember, NewSchedule, Process, ReportCounts, ReportStatus,
    Rescued, Schedule, Segment, StoredReport, WorkerRecord, WorkerToken,
};
use crate::phone::Phone;
pub use clock::Clock;
pub use segdefs::{
    CampaignSqlSegment, MessageSnapshot, NewSqlSegment, SnapshotRow, SnapshotTotals, SqlSegment,
};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// SQLite's `SQLITE_FULL`: the disk, or the database's page limit, is full.
    #[error(
        "database or disk is full: free disk space (or move database_url to a disk with room) \
         and try again; the failed write was rolled back, earlier commits are kept"
    )]
    Full,
    /// No database where the config points; only `munja init` creates one.
    #[error(
        "no database at {0}: run `munja init` first (or point database_url, --config or \
         MUNJA_DATABASE_URL at the right file)"
    )]
    NoDatabase(String),
    /// The database file was deleted or replaced while munja had it open.
    #[error("{0}")]
    FileChanged(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The database server cannot be reached or refuses the connection (names host and port,
    /// never a password).
    #[error("{0}")]
    Unreachable(String),
    /// The caller's execution no longer holds the campaign's lease: it must stop at once.
    #[error("execution {execution} lost the lease of campaign {campaign}: another run took over")]
    LeaseLost { campaign: i64, execution: i64 },
}

/// SQLite's primary result code for a full disk or database.
const SQLITE_FULL: &str = "13";

impl From<sqlx::Error> for StoreError {
    /// A full disk is named as such; everything else stays a database error.
    fn from(e: sqlx::Error) -> StoreError {
        match e.as_database_error() {
            Some(d) if d.code().as_deref() == Some(SQLITE_FULL) => StoreError::Full,
            _ => StoreError::Db(e),
        }
    }
}

/// Opens the store named by a database URL, creating the database when it does not exist
/// (`munja init`, the demo and the bench): `sqlite://PATH` or `postgres://…` (also
/// `postgresql://…`; a PostgreSQL database is never created, it must exist: `migrate` creates
/// the tables, and only `open` accepts a database without them).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, true).await
}

/// Opens an existing store; a missing database is [`StoreError::NoDatabase`], never created.
pub async fn open_existing(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, false).await
}

async fn open_with(url: &str, create: bool) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, create).await?))
    } else if is_postgres(url) {
        Ok(Arc::new(postgres::PgStore::open(url, create).await?))
    } else {
        Err(StoreError::NotFound(format!(
            "database_url {:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE; \
             set database_url = \"sqlite://munja.db\" for the embedded default",
            redact(url)
        )))
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A database URL fit for messages and logs: the password of a `scheme://user:password@host`
/// URL is replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// What `claim_chunk` should do.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    pub worker: WorkerToken,
    pub limit: usize,
    /// Quiet hours: claim only recipients with night consent.
    pub night_only: bool,
    /// Frequency cap: suppress recipients with `count` ad messages sent since `since`.
    pub cap: Option<(u32, DateTime<Utc>)>,
}

#[derive(Debug, Default)]
pub struct Claim {
    pub messages: Vec<ClaimedMessage>,
    pub suppressed_opted_out: u64,
    pub suppressed_capped: u64,
}

/// Filters of `audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub campaign: i64,
    pub phone: Option<String>,
    pub state: Option<MessageState>,
    /// Only messages with this delivery state (`--status delivered|undelivered`).
    pub delivery: Option<DeliveryState>,
    /// Keyset pagination: rows after the last row of the previous page, given by its id and
    /// its seq (the store walks whichever its index for these filters is ordered by).
    pub after_id: i64,
    pub after_seq: i64,
    pub limit: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    pub attempts_deleted: u64,
    pub executions_deleted: u64,
    /// Size of the database after the purge, in bytes.
    pub db_bytes: u64,
    /// Bytes of the database that are free for new rows (the file does not shrink by itself).
    pub free_bytes: u64,
}

/// How large the database is, as its pages count (a write-ahead log not included).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DiskUsage {
    pub db_bytes: u64,
    /// Pages freed by deletes, reused by new rows before the file grows.
    pub free_bytes: u64,
}

/// Outcome of an opt-out or segment import batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportCounts {
    pub inserted: u64,
    pub already_present: u64,
}

/// An open import: batches go into one transaction, visible only after `commit`.
#[async_trait]
pub trait Import: Send {
    async fn add_optouts(&mut self, phones: &[Phone]) -> Result<ImportCounts>;
    async fn add_members(&mut self, members: &[NewMember]) -> Result<ImportCounts>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// The job repository.
#[async_trait]
pub trait Store: Send + Sync {
    /// Creates the schema or brings it up to date; harmless to repeat.
    async fn migrate(&self) -> Result<()>;
    /// The clock this store judges leases, claim expiries and the rate budget by (the
    /// database server's on PostgreSQL); its tests move it to check expiry at a chosen time.
    fn clock(&self) -> &Clock;

    // Opt-outs (수신거부).
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

    // Segments.
    /// Starts replacing segment `name`; the old members stay visible until commit.
    async fn begin_segment_import(
        &self,
        name: &str,
        source: &str,
        columns: &[String],
    ) -> Result<Box<dyn Import>>;
    async fn segment(&self, name: &str) -> Result<Option<Segment>>;
    async fn segments(&self) -> Result<Vec<Segment>>;
    /// Members in file order, `after_seq` exclusive, at most `limit`: (seq, phone, vars, night_consent).
    async fn segment_members(
        &self,
        segment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, bool)>>;

    // SQL segments (a query on a `[sources.NAME]` database; see `segdefs`).
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
    /// Opens the streamed snapshot of `campaign` for its lease holder `execution`; `None` when
    /// the campaign was snapshotted before.
    async fn begin_message_snapshot(
        &self,
        campaign: i64,
        execution: i64,
    ) -> Result<Option<Box<dyn MessageSnapshot>>>;

    // Campaigns (job instances).
    async fn create_campaign(&self, c: &NewCampaign) -> Result<i64>;
    async fn campaign(&self, id: i64) -> Result<Campaign>;
    async fn campaigns(&self) -> Result<Vec<Campaign>>;
    async fn counts(&self, campaign: i64) -> Result<Counts>;
    async fn executions(&self, campaign: i64) -> Result<Vec<Execution>>;
    async fn request_stop(&self, campaign: i64) -> Result<()>;
    /// Pending messages become `cancelled`. A live run is asked to stop; a dead holder's
    /// execution (`dead_lease`, checked by the caller) is closed as ABANDONED. Refused for
    /// COMPLETED and CANCELLED campaigns.
    async fn cancel(&self, campaign: i64, dead_lease: Option<i64>) -> Result<u64>;
    /// Deletes a campaign with all its messages; refused while a lease other than
    /// `expected_lease` (a dead holder the caller has checked) is held.
    async fn delete_campaign(&self, campaign: i64, expected_lease: Option<i64>) -> Result<()>;

    // Executions, workers and the lease.
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
    /// Snapshots the segment into messages, all or nothing; returns the total (0 if done before).
    async fn snapshot(&self, w: &WorkerToken) -> Result<u64>;
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
    /// Closes the campaign's other STARTED workers that are dead as ABANDONED: those silent for
    /// more than `timeout_secs` of the database clock, and those in `dead` (whose process this
    /// host saw gone). Their `sending` messages become the in-doubt work of [`Store::in_doubt`].
    /// A no-op on stores with one worker.
    async fn rescue(&self, w: &WorkerToken, timeout_secs: u64, dead: &[i64]) -> Result<Rescued>;
    /// The workers of a campaign, oldest first.
    async fn workers(&self, campaign: i64) -> Result<Vec<WorkerRecord>>;
    /// The shared rate limit: takes up to `want` tokens from gateway `gateway`'s bucket, which
    /// every run on this database draws from. The bucket holds at most `burst` tokens (full when
    /// new) and gains `rate` per second of the database clock; returns how many were granted
    /// (0 when it is empty). Refill and take are one atomic write: two callers never get the
    /// same token.
    async fn take_tokens(&self, gateway: &str, want: u32, rate: u32, burst: u32) -> Result<u32>;
    /// Whether pending messages without night consent remain.
    async fn has_pending_without_consent(&self, campaign: i64) -> Result<bool>;
    /// The most frequent reasons of failed messages, most frequent first: (reason, count).
    async fn failure_reasons(&self, campaign: i64, limit: i64) -> Result<Vec<(String, i64)>>;
    /// `--resend-in-doubt`: messages `in_doubt` go back to `pending` (the operator accepts that
    /// a gateway which could not be asked may send them twice); returns how many.
    async fn requeue_in_doubt(&self, campaign: i64) -> Result<u64>;
    /// Failed messages whose attempts ran out on transient errors go back to `pending`.
    async fn requeue_retryable(&self, campaign: i64) -> Result<u64>;
    /// Records how worker `w` ended; returns `true` when it was the execution's last STARTED
    /// worker, whose caller then records the end of the execution with `finish_execution`.
    async fn finish_worker(
        &self,
        w: &WorkerToken,
        status: &str,
        exit_message: &str,
    ) -> Result<bool>;
    /// Records how the execution ended and releases the lease (fenced on the execution).
    async fn finish_execution(
        &self,
        w: &WorkerToken,
        status: &str,
        exit_code: &str,
        exit_message: &str,
        campaign_status: &str,
    ) -> Result<()>;

    // Delivery reports.
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
    // Schedules (`munja serve` starts what is due).
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

    // Audit and retention.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>>;
    async fn purge(&self, before: DateTime<Utc>, batch: i64) -> Result<PurgeReport>;
    async fn disk_usage(&self) -> Result<DiskUsage>;
}

/// The whole tokens of a rate bucket's level (0 for a negative or NaN level), for
/// [`Store::take_tokens`] implementations.
pub(crate) fn whole_tokens(level: f64) -> u32 {
    if level >= 1.0 {
        // Saturates at u32::MAX; a bucket never holds more than its burst.
        level.floor() as u32
    } else {
        0
    }
}

/// The parts of a message ref as the snapshot writes it, `{campaign uid}-{seq}`; `None` for
/// any other text (a ref no message has).
pub(crate) fn split_ref(r: &str) -> Option<(&str, i64)> {
    let (uid, seq) = r.rsplit_once('-')?;
    Some((uid, seq.parse().ok()?)).filter(|(uid, _)| !uid.is_empty())
}

/// What a report does to the message it names, given the message's `(id, delivery,
/// delivery_code)` (`None`: no message has the ref), for [`Store::record_delivery`]
/// implementations: only `Applied` writes the message.
pub(crate) fn delivery_effect(
    message: &Option<(i64, Option<String>, Option<String>)>,
    r: &DeliveryReport,
) -> DeliveryEffect {
    match (message, r.status) {
        (None, _) => DeliveryEffect::Unknown,
        (Some(_), ReportStatus::Intermediate) => DeliveryEffect::Intermediate,
        (Some((_, None, _)), ReportStatus::Final(_)) => DeliveryEffect::Applied,
        (Some((_, Some(have), code)), ReportStatus::Final(d)) => {
            if have == d.as_str() && *code == r.code {
                DeliveryEffect::Duplicate
            } else {
                DeliveryEffect::Ignored
            }
        }
    }
}

/// Adds `(delivery, count)` rows to a campaign's counts, for [`Store::counts`] implementations.
pub(crate) fn add_delivery_counts(c: &mut Counts, rows: Vec<(String, i64)>) {
    for (d, n) in rows {
        match DeliveryState::parse(&d) {
            Some(DeliveryState::Delivered) => c.delivered = n,
            Some(DeliveryState::Undelivered) => c.undelivered = n,
            None => {}
        }
    }
}

/// Report counts from `(effect, count)` rows, for [`Store::report_counts`] implementations.
pub(crate) fn report_counts_from(rows: Vec<(String, i64)>) -> ReportCounts {
    let mut c = ReportCounts::default();
    for (effect, n) in rows {
        match DeliveryEffect::parse(&effect) {
            Some(DeliveryEffect::Applied) => c.applied = n,
            Some(DeliveryEffect::Duplicate) => c.duplicate = n,
            Some(DeliveryEffect::Ignored) => c.ignored = n,
            Some(DeliveryEffect::Intermediate) => c.intermediate = n,
            Some(DeliveryEffect::Unknown) => c.unknown = n,
            None => {}
        }
    }
    c
}

/// RFC 3339 text of a time, as stored.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://munja:s3cret@db:5432/jobs"),
            "postgres://munja:***@db:5432/jobs"
        );
        assert_eq!(
            redact("postgres://munja@db/jobs"),
            "postgres://munja@db/jobs"
        );
        assert_eq!(redact("sqlite:///var/m.db"), "sqlite:///var/m.db");
    }

    #[test]
    fn refs_split_into_campaign_uid_and_seq() {
        assert_eq!(split_ref("0123456789ab-42"), Some(("0123456789ab", 42)));
        assert_eq!(split_ref("a-b-7"), Some(("a-b", 7)));
        assert_eq!(split_ref("nodash"), None);
        assert_eq!(split_ref("-7"), None);
        assert_eq!(split_ref("abc-x"), None);
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_without_the_password() {
        let e = match open("mysql://u:s3cret@h/db").await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened mysql"),
        };
        assert!(e.contains("expected sqlite://PATH or postgres://"), "{e}");
        assert!(e.contains("u:***@h") && !e.contains("s3cret"), "{e}");
    }
}
