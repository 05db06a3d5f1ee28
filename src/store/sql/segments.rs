//! SQL segments on either database ([`SqlSegmentStore`], written once for both): versioned
//! definitions, the campaign's link to the version it uses, and the statements a snapshot of
//! a campaign's messages shares with the other backend (opening it, counting and recording
//! it). The batches of a streamed snapshot stay in each backend ([`SnapshotBatch`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Transaction;

use super::campaigns::{fence, lease_holder};
use super::workers::tally;
use super::{At, Backend, Dialect, Stamp, Stmt, query};
use crate::store::segdefs::SNAPSHOT_INSERT_BATCH;
use crate::store::{
    CampaignSqlSegment, Clock, ImportCounts, MessageSnapshot, NewSqlSegment, Result, SnapshotRow,
    SnapshotTotals, SqlSegment, SqlSegmentStore, StoreError, Tally, WorkerToken,
};

/// The streamed snapshot of a campaign's messages from an SQL segment, in one write
/// transaction fenced by the lease (see [`SqlSegmentStore::begin_message_snapshot`]).
pub(crate) struct SnapshotTx<DB: Dialect> {
    pub tx: Transaction<'static, DB>,
    pub campaign: i64,
    pub worker: WorkerToken,
    /// The campaign's uid, which prefixes each message's ref (`uid-seq`).
    pub uid: String,
    /// Messages inserted so far.
    pub total: u64,
    pub clock: Clock,
}

/// How a database inserts a batch of a snapshot's messages (each backend's `sql_segments`):
/// multi-row `VALUES` on SQLite, `UNNEST` arrays on PostgreSQL.
#[async_trait]
pub(crate) trait SnapshotBatch: Dialect {
    /// Inserts `rows` as messages (those with `suppress` as suppressed for that reason),
    /// skipping seqs already there; returns how many were inserted.
    async fn insert_batch(s: &mut SnapshotTx<Self>, rows: &[SnapshotRow]) -> Result<u64>;
}

#[async_trait]
impl<DB: SnapshotBatch> MessageSnapshot for SnapshotTx<DB> {
    async fn add(&mut self, rows: &[SnapshotRow]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        for batch in rows.chunks(SNAPSHOT_INSERT_BATCH) {
            let n = DB::insert_batch(self, batch).await?;
            counts.inserted += n;
            counts.already_present += batch.len() as u64 - n;
        }
        self.total += counts.inserted;
        Ok(counts)
    }

    /// Suppresses the numbers opted out by now, then counts, records what was read and tallies
    /// the suppressed on the worker and its execution.
    async fn commit(
        mut self: Box<Self>,
        as_of: DateTime<Utc>,
        rows_read: u64,
    ) -> Result<SnapshotTotals> {
        let (campaign, tx) = (self.campaign, &mut self.tx);
        sqlx::query::<DB>(
            "UPDATE messages SET state = 'suppressed', reason = 'opted_out' \
             WHERE campaign_id = $1 AND state = 'pending' AND phone IN (SELECT phone FROM optouts)",
        )
        .arg(campaign)
        .run(tx)
        .await?;
        let total = self.total as i64;
        let suppressed = end_snapshot::<DB>(tx, &self.clock, campaign, total).await?;
        record_read::<DB>(tx, campaign, as_of, rows_read).await?;
        tally(tx, &self.worker, Tally::suppressed(suppressed)).await?;
        self.tx.commit().await?;
        Ok(SnapshotTotals {
            messages: self.total,
            suppressed: suppressed as u64,
        })
    }
}

#[async_trait]
impl<B: Backend> SqlSegmentStore for B
where
    B::DB: SnapshotBatch,
{
    async fn define_sql_segment(&self, def: &NewSqlSegment) -> Result<SqlSegment> {
        let mut tx = self.begin().await?;
        let seg = define::<B::DB>(&mut tx, self.time(), def).await?;
        tx.commit().await?;
        Ok(seg)
    }

    async fn sql_segment_versions(&self, name: &str) -> Result<Vec<SqlSegment>> {
        versions::<B::DB>(&mut *self.read().await?, name).await
    }

    async fn sql_segments(&self) -> Result<Vec<SqlSegment>> {
        latest::<B::DB>(&mut *self.read().await?).await
    }

    async fn link_sql_segment(&self, campaign: i64, sql_segment_id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        lease_holder(&mut tx, campaign).await?;
        link::<B::DB>(&mut tx, campaign, sql_segment_id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn campaign_sql_segment(&self, campaign: i64) -> Result<Option<CampaignSqlSegment>> {
        of_campaign::<B::DB>(&mut *self.read().await?, campaign).await
    }

    async fn begin_message_snapshot(
        &self,
        w: &WorkerToken,
    ) -> Result<Option<Box<dyn MessageSnapshot>>> {
        let mut tx = self.begin().await?;
        fence(&mut tx, w.campaign, w.execution).await?;
        let Some(uid) = open_snapshot::<B::DB>(&mut tx, w.campaign).await? else {
            return Ok(None);
        };
        Ok(Some(Box::new(SnapshotTx {
            tx,
            campaign: w.campaign,
            worker: *w,
            uid,
            total: 0,
            clock: self.time().clone(),
        })))
    }
}

const SEGMENT_COLUMNS: &str = "id, name, version, source, query, phone_column, defined_at";

fn sql_segment_from_row<DB: Dialect>(r: &DB::Row) -> Result<SqlSegment> {
    Ok(SqlSegment {
        id: DB::col(r, "id")?,
        name: DB::col(r, "name")?,
        version: DB::col(r, "version")?,
        source: DB::col(r, "source")?,
        query: DB::col(r, "query")?,
        phone_column: DB::col(r, "phone_column")?,
        defined_at: DB::col::<Stamp>(r, "defined_at")?.0,
    })
}

/// See [`crate::store::SqlSegmentStore::define_sql_segment`]: the next version in one
/// statement. Of two concurrent definitions of one name (PostgreSQL), the loser's insert hits
/// UNIQUE (name, version) and is reported as a conflict, never a silent overwrite.
pub(crate) async fn define<DB: Dialect>(
    c: &mut DB::Connection,
    clock: &Clock,
    def: &NewSqlSegment,
) -> Result<SqlSegment> {
    let row = query::<DB>(format!(
        "INSERT INTO sql_segments (name, version, source, query, phone_column, defined_at) \
         SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, {} \
         FROM sql_segments WHERE name = $1 RETURNING {SEGMENT_COLUMNS}",
        DB::now(5)
    ))
    .arg(def.name.as_str())
    .arg(def.source.as_str())
    .arg(def.query.as_str())
    .arg(def.phone_column.as_str())
    .now(clock)
    .first(c)
    .await
    .map_err(|e| match e.as_database_error() {
        Some(d) if d.is_unique_violation() => StoreError::Conflict(format!(
            "segment {:?} was defined by someone else at the same moment; run the \
             definition again",
            def.name
        )),
        _ => StoreError::from(e),
    })?;
    sql_segment_from_row::<DB>(&row.ok_or(sqlx::Error::RowNotFound)?)
}

/// See [`crate::store::SqlSegmentStore::sql_segment_versions`].
pub(crate) async fn versions<DB: Dialect>(
    c: &mut DB::Connection,
    name: &str,
) -> Result<Vec<SqlSegment>> {
    let rows = query::<DB>(format!(
        "SELECT {SEGMENT_COLUMNS} FROM sql_segments WHERE name = $1 AND deleted_at IS NULL \
         ORDER BY version"
    ))
    .arg(name)
    .all(c)
    .await?;
    rows.iter().map(sql_segment_from_row::<DB>).collect()
}

/// See [`crate::store::SqlSegmentStore::sql_segments`].
pub(crate) async fn latest<DB: Dialect>(c: &mut DB::Connection) -> Result<Vec<SqlSegment>> {
    let rows = query::<DB>(format!(
        "SELECT {SEGMENT_COLUMNS} FROM sql_segments s WHERE deleted_at IS NULL AND version = \
         (SELECT MAX(version) FROM sql_segments WHERE name = s.name) ORDER BY name"
    ))
    .all(c)
    .await?;
    rows.iter().map(sql_segment_from_row::<DB>).collect()
}

/// Links `campaign` to SQL segment version `sql_segment_id`, in the caller's transaction
/// (which has checked the campaign exists).
pub(crate) async fn link<DB: Dialect>(
    tx: &mut DB::Connection,
    campaign: i64,
    sql_segment_id: i64,
) -> Result<()> {
    sqlx::query::<DB>(
        "INSERT INTO campaign_sql_segments (campaign_id, sql_segment_id) VALUES ($1, $2)",
    )
    .arg(campaign)
    .arg(sql_segment_id)
    .run(tx)
    .await?;
    Ok(())
}

/// See [`crate::store::SqlSegmentStore::campaign_sql_segment`].
pub(crate) async fn of_campaign<DB: Dialect>(
    c: &mut DB::Connection,
    campaign: i64,
) -> Result<Option<CampaignSqlSegment>> {
    let row = sqlx::query::<DB>(
        "SELECT s.id, s.name, s.version, s.source, s.query, s.phone_column, s.defined_at, \
                c.as_of, c.rows_read \
         FROM campaign_sql_segments c JOIN sql_segments s ON s.id = c.sql_segment_id \
         WHERE c.campaign_id = $1",
    )
    .arg(campaign)
    .first(c)
    .await?;
    row.map(|r| {
        Ok(CampaignSqlSegment {
            segment: sql_segment_from_row::<DB>(&r)?,
            as_of: DB::col::<Option<Stamp>>(&r, "as_of")?.map(|t| t.0),
            rows_read: DB::col(&r, "rows_read")?,
        })
    })
    .transpose()
}

/// Opens the snapshot of `campaign` in the caller's fenced transaction: the campaign's uid (its
/// messages' refs start with it), its old messages deleted; `None` when it was snapshotted
/// before.
pub(crate) async fn open_snapshot<DB: Dialect>(
    tx: &mut DB::Connection,
    campaign: i64,
) -> Result<Option<String>> {
    let row = sqlx::query::<DB>("SELECT uid, snapshot_at FROM campaigns WHERE id = $1")
        .arg(campaign)
        .first(&mut *tx)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    if DB::col::<Option<Stamp>>(&row, "snapshot_at")?.is_some() {
        return Ok(None);
    }
    sqlx::query::<DB>("DELETE FROM messages WHERE campaign_id = $1")
        .arg(campaign)
        .run(tx)
        .await?;
    Ok(Some(DB::col(&row, "uid")?))
}

/// Ends a snapshot of `total` messages (in the caller's transaction): records it on the
/// campaign; returns how many of its messages are suppressed.
pub(crate) async fn end_snapshot<DB: Dialect>(
    tx: &mut DB::Connection,
    clock: &Clock,
    campaign: i64,
    total: i64,
) -> Result<i64> {
    let row = sqlx::query::<DB>(
        "SELECT COUNT(*) AS n FROM messages WHERE campaign_id = $1 AND state = 'suppressed'",
    )
    .arg(campaign)
    .first(&mut *tx)
    .await?
    .ok_or(sqlx::Error::RowNotFound)?;
    query::<DB>(format!(
        "UPDATE campaigns SET total = $1, snapshot_at = {} WHERE id = $2",
        DB::now(3)
    ))
    .arg(total)
    .arg(campaign)
    .now(clock)
    .run(tx)
    .await?;
    DB::col(&row, "n")
}

/// Records what the query of a SQL segment snapshot read (in the caller's transaction).
pub(crate) async fn record_read<DB: Dialect>(
    tx: &mut DB::Connection,
    campaign: i64,
    as_of: DateTime<Utc>,
    rows_read: u64,
) -> Result<()> {
    sqlx::query::<DB>(
        "UPDATE campaign_sql_segments SET as_of = $1, rows_read = $2 WHERE campaign_id = $3",
    )
    .arg(At(as_of))
    .arg(rows_read as i64)
    .arg(campaign)
    .run(tx)
    .await?;
    Ok(())
}
