//! What the store keeps of SQL segments: their versioned definitions, which version each
//! campaign was created from, and the streamed snapshot that turns the query's rows into the
//! campaign's messages in one transaction.
//!
//! The query itself runs on the company's database through [`super::source`]; this module only
//! describes what munja's own database records about it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{ImportCounts, Result};
use crate::domain::model::NewMember;

/// One version of a named SQL segment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SqlSegment {
    pub id: i64,
    pub name: String,
    /// 1 for the first definition, then one more for each redefinition.
    pub version: i64,
    /// The `[sources.NAME]` it reads (never a URL).
    pub source: String,
    /// The query text, exactly as defined.
    pub query: String,
    pub phone_column: String,
    pub defined_at: String,
}

/// A definition to store as the next version of `name`.
#[derive(Debug, Clone)]
pub struct NewSqlSegment {
    pub name: String,
    pub source: String,
    pub query: String,
    pub phone_column: String,
}

/// One row of a streamed snapshot, ready to become a message.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    /// The row's number in the query's result (1-based): the message's `seq`.
    pub seq: i64,
    pub member: NewMember,
    /// A suppression decided before the snapshot (e.g. `consent_expired`): the message is
    /// stored `suppressed` with this reason and never sent.
    pub suppress: Option<String>,
}

/// What a finished streamed snapshot stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotTotals {
    /// Messages stored (duplicates merged).
    pub messages: u64,
    /// Of those, suppressed: opted out, or suppressed by the caller.
    pub suppressed: u64,
}

/// An open streamed snapshot of one campaign: one transaction in munja's database that holds
/// the campaign's lease (fenced) until `commit`; dropped without `commit`, nothing is stored.
#[async_trait]
pub trait MessageSnapshot: Send {
    /// Inserts a batch; a number already in the snapshot is merged into its first row
    /// (counted as `already_present`).
    async fn add(&mut self, rows: &[SnapshotRow]) -> Result<ImportCounts>;
    /// Suppresses opted-out numbers, records the snapshot (time, total, `as_of`, rows read) on
    /// the campaign and its execution, and commits.
    async fn commit(
        self: Box<Self>,
        as_of: DateTime<Utc>,
        rows_read: u64,
    ) -> Result<SnapshotTotals>;
}

/// Rows per insert statement of a streamed snapshot (8 parameters per row).
pub(crate) const SNAPSHOT_INSERT_BATCH: usize = 1000;

/// The SQL segment version a campaign uses, and what its snapshot read.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignSqlSegment {
    pub segment: SqlSegment,
    /// The `:as_of` value of the snapshot; `None` before the first run.
    pub as_of: Option<String>,
    /// Rows the snapshot read from the source; `None` before the first run.
    pub rows_read: Option<i64>,
}
