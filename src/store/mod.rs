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
//! - `heartbeat`: atomic conditional updates (the lease's, then the worker's); `cancel` and `delete_campaign`: the holder
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
mod contract;
pub mod postgres;
pub mod segdefs;
pub mod source;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::domain::model::{
    AttemptRecord, AuditRow, Campaign, CampaignStatus, ClaimedMessage, Counts, DeliveryEffect,
    DeliveryReport, DeliveryState, Enlist, Execution, ExecutionStatus, Lease, MessageState,
    MessageUpdate, NewCampaign, NewMember, NewSchedule, Process, ReportCounts, ReportStatus,
    Rescued, Schedule, Segment, StoredReport, WorkerRecord, WorkerToken,
};
use crate::domain::phone::Phone;
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

pub use crate::config::redact;

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
    /// Logged delivery reports of finished campaigns, and of refs no message has.
    pub reports_deleted: u64,
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

/// Counter increments of one write, added to a worker's and its execution's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub read: i64,
    pub sent: i64,
    pub failed: i64,
    pub suppressed: i64,
    pub commits: i64,
}

impl Tally {
    /// `n` messages made final as suppressed (by a snapshot or a claim).
    pub fn suppressed(n: i64) -> Tally {
        Tally {
            read: n,
            suppressed: n,
            ..Tally::default()
        }
    }
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

pub use contract::*;

/// What [`CampaignStore::take_tokens`] grants from a bucket at `level`: up to `want` whole tokens, none
/// unless there are `need`.
pub(crate) fn granted_tokens(level: f64, need: u32, want: u32) -> u32 {
    let whole = whole_tokens(level);
    if whole < need { 0 } else { whole.min(want) }
}

/// The whole tokens of a rate bucket's level (0 for a negative or NaN level).
fn whole_tokens(level: f64) -> u32 {
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
/// delivery_code)` (`None`: no message has the ref), for [`DeliveryStore::record_delivery`]
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

/// Adds `(delivery, count)` rows to a campaign's counts, for [`CampaignStore::counts`] implementations.
pub(crate) fn add_delivery_counts(c: &mut Counts, rows: Vec<(String, i64)>) {
    for (d, n) in rows {
        match DeliveryState::parse(&d) {
            Some(DeliveryState::Delivered) => c.delivered = n,
            Some(DeliveryState::Undelivered) => c.undelivered = n,
            None => {}
        }
    }
}

/// Report counts from `(effect, count)` rows, for [`DeliveryStore::report_counts`] implementations.
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
