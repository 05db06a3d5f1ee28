//! PostgreSQL side of SQL segments: versioned definitions, the campaign's link to the version
//! it uses, and the streamed snapshot (one transaction holding the campaign row lock, fenced by
//! the lease; rows inserted with `UNNEST` arrays).

use super::*;
use crate::store::segdefs::SNAPSHOT_INSERT_BATCH;

const SEGMENT_COLUMNS: &str = "id, name, version, source, query, phone_column, defined_at";

fn sql_segment_from_row(r: &PgRow) -> Result<SqlSegment> {
    Ok(SqlSegment {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        source: r.try_get("source")?,
        query: r.try_get("query")?,
        phone_column: r.try_get("phone_column")?,
        defined_at: ts(r.try_get::<DateTime<Utc>, _>("defined_at")?),
    })
}

struct PgSnapshot {
    tx: Transaction<'static, Postgres>,
    campaign: i64,
    worker: WorkerToken,
    uid: String,
    total: u64,
}

#[async_trait]
impl MessageSnapshot for PgSnapshot {
    async fn add(&mut self, rows: &[SnapshotRow]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        for batch in rows.chunks(SNAPSHOT_INSERT_BATCH) {
            let seqs: Vec<i64> = batch.iter().map(|r| r.seq).collect();
            let phones: Vec<&str> = batch.iter().map(|r| r.member.phone.as_str()).collect();
            let vars: Vec<&str> = batch.iter().map(|r| r.member.vars.as_str()).collect();
            let night: Vec<bool> = batch.iter().map(|r| r.member.night_consent).collect();
            let reasons: Vec<Option<&str>> = batch.iter().map(|r| r.suppress.as_deref()).collect();
            let n = sqlx::query(
                "INSERT INTO messages (campaign_id, seq, ref, phone, vars, night_consent, state, reason) \
                 SELECT $1, r.seq, $2::TEXT || '-' || r.seq, r.phone, r.vars, r.night, \
                        CASE WHEN r.reason IS NULL THEN 'pending' ELSE 'suppressed' END, r.reason \
                 FROM UNNEST($3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BOOLEAN[], $7::TEXT[]) \
                      WITH ORDINALITY AS r(seq, phone, vars, night, reason, ord) \
                 ORDER BY r.ord \
                 ON CONFLICT DO NOTHING",
            )
            .bind(self.campaign)
            .bind(&self.uid)
            .bind(&seqs)
            .bind(&phones)
            .bind(&vars)
            .bind(&night)
            .bind(&reasons)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            counts.inserted += n;
            counts.already_present += batch.len() as u64 - n;
        }
        self.total += counts.inserted;
        Ok(counts)
    }

    async fn commit(
        mut self: Box<Self>,
        as_of: DateTime<Utc>,
        rows_read: u64,
    ) -> Result<SnapshotTotals> {
        let tx = &mut self.tx;
        sqlx::query(
            "UPDATE messages m SET state = 'suppressed', reason = 'opted_out' FROM optouts o \
             WHERE m.campaign_id = $1 AND m.state = 'pending' AND o.phone = m.phone",
        )
        .bind(self.campaign)
        .execute(&mut **tx)
        .await?;
        let suppressed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE campaign_id = $1 AND state = 'suppressed'",
        )
        .bind(self.campaign)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query("UPDATE campaigns SET snapshot_at = munja_now(), total = $1 WHERE id = $2")
            .bind(self.total as i64)
            .bind(self.campaign)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE campaign_sql_segments SET as_of = $1, rows_read = $2 WHERE campaign_id = $3",
        )
        .bind(as_of)
        .bind(rows_read as i64)
        .bind(self.campaign)
        .execute(&mut **tx)
        .await?;
        let counted = Tally {
            read: suppressed,
            suppressed,
            ..Tally::default()
        };
        super::workers::tally(tx, &self.worker, counted).await?;
        self.tx.commit().await?;
        Ok(SnapshotTotals {
            messages: self.total,
            suppressed: suppressed as u64,
        })
    }
}

#[async_trait]
impl SqlSegmentStore for PgStore {
    async fn define_sql_segment(&self, def: &NewSqlSegment) -> Result<SqlSegment> {
        let mut tx = self.pool.begin().await?;
        // Two concurrent definitions of one name: the loser's insert hits UNIQUE (name,
        // version) and is reported as a conflict, never a silent overwrite.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sql_segments (name, version, source, query, phone_column, defined_at) \
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, munja_now() \
             FROM sql_segments WHERE name = $1 RETURNING {SEGMENT_COLUMNS}"
        )))
        .bind(&def.name)
        .bind(&def.source)
        .bind(&def.query)
        .bind(&def.phone_column)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match e.as_database_error() {
            Some(d) if d.is_unique_violation() => StoreError::Conflict(format!(
                "segment {:?} was defined by someone else at the same moment; run the \
                 definition again",
                def.name
            )),
            _ => StoreError::from(e),
        })?;
        let seg = sql_segment_from_row(&row)?;
        tx.commit().await?;
        Ok(seg)
    }

    async fn sql_segment_versions(&self, name: &str) -> Result<Vec<SqlSegment>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SEGMENT_COLUMNS} FROM sql_segments WHERE name = $1 AND deleted_at IS NULL \
             ORDER BY version"
        )))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sql_segment_from_row).collect()
    }

    async fn sql_segments(&self) -> Result<Vec<SqlSegment>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT ON (name) {SEGMENT_COLUMNS} FROM sql_segments \
             WHERE deleted_at IS NULL ORDER BY name, version DESC"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sql_segment_from_row).collect()
    }

    async fn link_sql_segment(&self, campaign: i64, sql_segment_id: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        lock_campaign(&mut tx, campaign).await?;
        sqlx::query(
            "INSERT INTO campaign_sql_segments (campaign_id, sql_segment_id) VALUES ($1, $2)",
        )
        .bind(campaign)
        .bind(sql_segment_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn campaign_sql_segment(&self, campaign: i64) -> Result<Option<CampaignSqlSegment>> {
        let row = sqlx::query(
            "SELECT s.id, s.name, s.version, s.source, s.query, s.phone_column, s.defined_at, \
                    c.as_of, c.rows_read \
             FROM campaign_sql_segments c JOIN sql_segments s ON s.id = c.sql_segment_id \
             WHERE c.campaign_id = $1",
        )
        .bind(campaign)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(CampaignSqlSegment {
                segment: sql_segment_from_row(&r)?,
                as_of: r.try_get::<Option<DateTime<Utc>>, _>("as_of")?.map(ts),
                rows_read: r.try_get("rows_read")?,
            })
        })
        .transpose()
    }

    async fn begin_message_snapshot(
        &self,
        w: &WorkerToken,
    ) -> Result<Option<Box<dyn MessageSnapshot>>> {
        let (campaign, execution) = (w.campaign, w.execution);
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, campaign, execution).await?;
        let (uid, done): (String, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT uid, snapshot_at FROM campaigns WHERE id = $1")
                .bind(campaign)
                .fetch_one(&mut *tx)
                .await?;
        if done.is_some() {
            return Ok(None);
        }
        sqlx::query("DELETE FROM messages WHERE campaign_id = $1")
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        Ok(Some(Box::new(PgSnapshot {
            tx,
            campaign,
            worker: *w,
            uid,
            total: 0,
        })))
    }
}
