//! Opt-out lists (수신거부) and CSV segments on either database ([`ImportStore`], written once
//! for both): single-number writes, the start and end of a segment import, deleting a segment
//! and the reads. The batches of an import stay in each backend (`UNNEST` arrays on
//! PostgreSQL, multi-row `VALUES` on SQLite; [`Backend::import`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Transaction;

use super::{At, Backend, Dialect, Stamp, Stmt, query};
use crate::domain::consent::{CONSENT_EXPIRED, CONSENT_MISSING, is_consent_column};
use crate::domain::phone::Phone;
use crate::store::{
    Clock, Import, ImportStore, Result, Segment, SegmentDeletion, SegmentUser, StoreError,
};

/// An import in one write transaction, invisible until it commits; each backend writes its
/// batches (`impl Import for ImportTx<…>` in its `import` module).
pub(crate) struct ImportTx<DB: Dialect> {
    pub tx: Transaction<'static, DB>,
    /// The CSV segment imported; `None` for opt-outs.
    pub segment_id: Option<i64>,
    /// The seq of the next member: members are numbered from 1, in file order.
    pub next_seq: i64,
    /// Members inserted so far.
    pub total: i64,
    pub clock: Clock,
}

impl<DB: Dialect> ImportTx<DB> {
    fn open(tx: Transaction<'static, DB>, segment_id: Option<i64>, clock: &Clock) -> Box<Self> {
        Box::new(ImportTx {
            tx,
            segment_id,
            next_seq: 1,
            total: 0,
            clock: clock.clone(),
        })
    }

    /// [`Import::commit`]: records a segment's member count, then commits.
    pub(crate) async fn finish(mut self: Box<Self>) -> Result<()> {
        if let Some(id) = self.segment_id {
            end_segment::<DB>(&mut self.tx, id, self.total).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl<B: Backend> ImportStore for B
where
    ImportTx<B::DB>: Import,
{
    async fn begin_optout_import(&self, _source: &str) -> Result<Box<dyn Import>> {
        Ok(ImportTx::open(self.begin().await?, None, self.time()))
    }

    async fn optout_add(&self, phone: &Phone, source: &str) -> Result<bool> {
        optout_add::<B::DB>(&mut *self.read().await?, self.time(), phone, source).await
    }

    async fn optout_remove(&self, phone: &Phone) -> Result<bool> {
        optout_remove::<B::DB>(&mut *self.read().await?, phone).await
    }

    async fn optout_contains(&self, phone: &Phone) -> Result<bool> {
        optout_contains::<B::DB>(&mut *self.read().await?, phone).await
    }

    async fn optout_count(&self) -> Result<i64> {
        optout_count::<B::DB>(&mut *self.read().await?).await
    }

    async fn fresh_optouts_in_flight(
        &self,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        fresh_optouts::<B::DB>(&mut *self.read().await?, campaign, since).await
    }

    async fn begin_segment_import(
        &self,
        name: &str,
        source: &str,
        columns: &[String],
    ) -> Result<Box<dyn Import>> {
        let mut tx = self.begin().await?;
        let id = begin_segment::<B::DB>(&mut tx, self.time(), name, source, columns).await?;
        Ok(ImportTx::open(tx, Some(id), self.time()))
    }

    async fn segment(&self, name: &str) -> Result<Option<Segment>> {
        Ok(self.segments().await?.into_iter().find(|s| s.name == name))
    }

    async fn segments(&self) -> Result<Vec<Segment>> {
        segments::<B::DB>(&mut *self.read().await?).await
    }

    async fn segment_consent_counts(
        &self,
        segment_id: i64,
        cutoff: DateTime<Utc>,
    ) -> Result<BTreeMap<String, u64>> {
        consent_counts::<B::DB>(&mut *self.read().await?, segment_id, cutoff).await
    }

    async fn segment_members(
        &self,
        segment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, bool)>> {
        members::<B::DB>(&mut *self.read().await?, segment_id, after_seq, limit).await
    }

    async fn delete_segment(&self, name: &str) -> Result<SegmentDeletion> {
        let mut tx = self.begin().await?;
        let users = sqlx::query::<B::DB>(
            "SELECT id, name, status FROM campaigns WHERE segment_name = $1 \
             AND status NOT IN ('COMPLETED', 'CANCELLED') ORDER BY id",
        )
        .arg(name)
        .all(&mut tx)
        .await?;
        if !users.is_empty() {
            let users = users.iter().map(|r| {
                Ok(SegmentUser {
                    id: B::DB::col(r, "id")?,
                    name: B::DB::col(r, "name")?,
                    status: B::DB::col(r, "status")?,
                })
            });
            return Ok(SegmentDeletion::InUse(users.collect::<Result<_>>()?));
        }
        sqlx::query::<B::DB>(
            "DELETE FROM segment_members WHERE segment_id IN (SELECT id FROM segments WHERE name = $1)",
        )
        .arg(name)
        .run(&mut tx)
        .await?;
        let csv_members =
            sqlx::query::<B::DB>("DELETE FROM segments WHERE name = $1 RETURNING member_count")
                .arg(name)
                .first(&mut tx)
                .await?
                .map(|r| B::DB::col::<i64>(&r, "member_count"))
                .transpose()?;
        let sql_versions = query::<B::DB>(format!(
            "UPDATE sql_segments SET deleted_at = {} WHERE name = $1 AND deleted_at IS NULL",
            B::DB::now(2)
        ))
        .arg(name)
        .now(self.time())
        .run(&mut tx)
        .await?;
        if csv_members.is_none() && sql_versions == 0 {
            return Ok(SegmentDeletion::NotFound);
        }
        tx.commit().await?;
        Ok(SegmentDeletion::Deleted {
            csv_members,
            sql_versions,
        })
    }
}

/// One primary-key probe of the opt-out list.
pub(crate) const OPTOUT_CONTAINS: &str =
    "SELECT EXISTS (SELECT 1 FROM optouts WHERE phone = $1) AS found";

/// Numbers of the campaign's claimed messages opted out since `$2`: the claimed messages are
/// the outer loop (a walk of the (campaign_id, state) index), one primary-key probe of the list
/// each, however long the list or however many numbers were just imported into it.
pub(crate) fn fresh_optouts_in_flight<DB: Dialect>() -> String {
    format!(
        "SELECT m.phone FROM messages m {} optouts o ON o.phone = m.phone \
         WHERE m.campaign_id = $1 AND m.state = 'sending' AND o.created_at >= $2",
        DB::ORDERED_JOIN
    )
}

/// See [`crate::store::ImportStore::optout_add`].
pub(crate) async fn optout_add<DB: Dialect>(
    c: &mut DB::Connection,
    clock: &Clock,
    phone: &Phone,
    source: &str,
) -> Result<bool> {
    let n = query::<DB>(format!(
        "INSERT INTO optouts (phone, source, created_at) VALUES ($1, $2, {}) \
         ON CONFLICT (phone) DO NOTHING",
        DB::now(3)
    ))
    .arg(phone.as_str())
    .arg(source)
    .now(clock)
    .run(c)
    .await?;
    Ok(n == 1)
}

/// See [`crate::store::ImportStore::optout_remove`].
pub(crate) async fn optout_remove<DB: Dialect>(
    c: &mut DB::Connection,
    phone: &Phone,
) -> Result<bool> {
    let n = sqlx::query::<DB>("DELETE FROM optouts WHERE phone = $1")
        .arg(phone.as_str())
        .run(c)
        .await?;
    Ok(n == 1)
}

/// See [`crate::store::ImportStore::optout_contains`].
pub(crate) async fn optout_contains<DB: Dialect>(
    c: &mut DB::Connection,
    phone: &Phone,
) -> Result<bool> {
    let row = sqlx::query::<DB>(OPTOUT_CONTAINS)
        .arg(phone.as_str())
        .first(c)
        .await?;
    row.map_or(Ok(false), |r| DB::col(&r, "found"))
}

/// See [`crate::store::ImportStore::optout_count`].
pub(crate) async fn optout_count<DB: Dialect>(c: &mut DB::Connection) -> Result<i64> {
    let row = sqlx::query::<DB>("SELECT COUNT(*) AS n FROM optouts")
        .first(c)
        .await?;
    row.map_or(Ok(0), |r| DB::col(&r, "n"))
}

/// See [`crate::store::ImportStore::fresh_optouts_in_flight`].
pub(crate) async fn fresh_optouts<DB: Dialect>(
    c: &mut DB::Connection,
    campaign: i64,
    since: DateTime<Utc>,
) -> Result<Vec<String>> {
    let rows = query::<DB>(fresh_optouts_in_flight::<DB>())
        .arg(campaign)
        .arg(At(since))
        .all(c)
        .await?;
    rows.iter().map(|r| DB::col(r, "phone")).collect()
}

/// Starts replacing segment `name` in the caller's transaction `tx`: its row is upserted (on
/// PostgreSQL that locks it until commit: a second import of the same name waits, and a
/// snapshot, `FOR SHARE`, never reads a half-replaced list) and its members deleted. Returns the
/// segment's id.
pub(crate) async fn begin_segment<DB: Dialect>(
    tx: &mut DB::Connection,
    clock: &Clock,
    name: &str,
    source: &str,
    columns: &[String],
) -> Result<i64> {
    let cols = serde_json::to_string(columns).unwrap_or_else(|_| "[]".into());
    let consent_column = columns.iter().any(|c| is_consent_column(c));
    let row = query::<DB>(format!(
        "INSERT INTO segments (name, source, columns, ad_consent_column, member_count, \
         imported_at) VALUES ($1, $2, $3, $4, 0, {}) \
         ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, columns = EXCLUDED.columns, \
         ad_consent_column = EXCLUDED.ad_consent_column, member_count = 0, \
         imported_at = EXCLUDED.imported_at RETURNING id",
        DB::now(5)
    ))
    .arg(name)
    .arg(source)
    .arg(cols)
    .arg(consent_column)
    .now(clock)
    .first(&mut *tx)
    .await?;
    let id: i64 = DB::col(&row.ok_or(sqlx::Error::RowNotFound)?, "id")?;
    sqlx::query::<DB>("DELETE FROM segment_members WHERE segment_id = $1")
        .arg(id)
        .run(tx)
        .await?;
    Ok(id)
}

/// Records the member count of segment `id` at the end of its import (in `tx`, before commit).
pub(crate) async fn end_segment<DB: Dialect>(
    tx: &mut DB::Connection,
    id: i64,
    total: i64,
) -> Result<()> {
    sqlx::query::<DB>("UPDATE segments SET member_count = $1 WHERE id = $2")
        .arg(total)
        .arg(id)
        .run(tx)
        .await?;
    Ok(())
}

/// See [`crate::store::ImportStore::segments`].
pub(crate) async fn segments<DB: Dialect>(c: &mut DB::Connection) -> Result<Vec<Segment>> {
    let rows = sqlx::query::<DB>(
        "SELECT id, name, source, columns, member_count, imported_at, ad_consent_column \
         FROM segments ORDER BY name",
    )
    .all(c)
    .await?;
    rows.iter()
        .map(|r| {
            let cols: String = DB::col(r, "columns")?;
            Ok(Segment {
                id: DB::col(r, "id")?,
                name: DB::col(r, "name")?,
                source: DB::col(r, "source")?,
                columns: serde_json::from_str(&cols).unwrap_or_default(),
                member_count: DB::col(r, "member_count")?,
                imported_at: DB::col::<Stamp>(r, "imported_at")?.0,
                ad_consent_column: DB::col(r, "ad_consent_column")?,
            })
        })
        .collect()
}

/// See [`crate::store::ImportStore::segment_members`].
pub(crate) async fn members<DB: Dialect>(
    c: &mut DB::Connection,
    segment_id: i64,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String, bool)>> {
    let rows = sqlx::query::<DB>(
        "SELECT seq, phone, vars, night_consent FROM segment_members \
         WHERE segment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .arg(segment_id)
    .arg(after_seq)
    .arg(DB::limit(limit))
    .all(c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                DB::col(r, "seq")?,
                DB::col(r, "phone")?,
                DB::col(r, "vars")?,
                DB::col(r, "night_consent")?,
            ))
        })
        .collect()
}

/// Why a snapshot suppresses member `m` (`o`: its row of the opt-out list, if any), as an SQL
/// expression, NULL when it does not: `opted_out` first; then, with `cutoff` (the parameter
/// number of the consent cutoff: an ad with the check on), `consent_missing` for no consent
/// time when the segment has the column (`missing`), and `consent_expired` for an older one.
/// Consent times are TIMESTAMPTZ on PostgreSQL and RFC 3339 UTC text on SQLite ([`At`]), so
/// one comparison orders both.
pub(crate) fn member_reason(missing: bool, cutoff: Option<usize>) -> String {
    let mut sql = "CASE WHEN o.phone IS NOT NULL THEN 'opted_out'".to_string();
    if let Some(n) = cutoff {
        if missing {
            sql.push_str(&format!(
                " WHEN m.ad_consent_at IS NULL THEN '{CONSENT_MISSING}'"
            ));
        }
        sql.push_str(&format!(
            " WHEN m.ad_consent_at < ${n} THEN '{CONSENT_EXPIRED}'"
        ));
    }
    sql.push_str(" END");
    sql
}

/// Whether segment `segment_id`'s file had an `ad_consent_at` column (`None`: imported before
/// munja kept consent times); `NotFound` when there is no such segment.
pub(crate) async fn consent_column<DB: Dialect>(
    c: &mut DB::Connection,
    segment_id: i64,
) -> Result<Option<bool>> {
    let row = sqlx::query::<DB>("SELECT ad_consent_column FROM segments WHERE id = $1")
        .arg(segment_id)
        .first(c)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("segment {segment_id} does not exist")))?;
    DB::col(&row, "ad_consent_column")
}

/// See [`crate::store::ImportStore::segment_consent_counts`]: the snapshot's own expression.
pub(crate) async fn consent_counts<DB: Dialect>(
    c: &mut DB::Connection,
    segment_id: i64,
    cutoff: DateTime<Utc>,
) -> Result<BTreeMap<String, u64>> {
    let missing = consent_column::<DB>(&mut *c, segment_id).await? == Some(true);
    let rows = query::<DB>(format!(
        "SELECT reason, COUNT(*) AS n FROM (SELECT {} AS reason FROM segment_members m \
         LEFT JOIN optouts o ON o.phone = m.phone WHERE m.segment_id = $1) r \
         WHERE reason <> 'opted_out' GROUP BY reason",
        member_reason(missing, Some(2))
    ))
    .arg(segment_id)
    .arg(At(cutoff))
    .all(c)
    .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = DB::col(r, "n")?;
            Ok((DB::col(r, "reason")?, n as u64))
        })
        .collect()
}
