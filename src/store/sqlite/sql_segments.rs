//! SQLite side of SQL segments: versioned definitions, the campaign's link to the version it
//! uses, and the streamed snapshot (one `BEGIN IMMEDIATE` transaction, fenced by the lease).

use super::*;
use crate::store::segdefs::SNAPSHOT_INSERT_BATCH;

const SEGMENT_COLUMNS: &str = "id, name, version, source, query, phone_column, defined_at";

fn sql_segment_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<SqlSegment> {
    Ok(SqlSegment {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        source: r.try_get("source")?,
        query: r.try_get("query")?,
        phone_column: r.try_get("phone_column")?,
        defined_at: r.try_get("defined_at")?,
    })
}

struct SqliteSnapshot {
    tx: Transaction<'static, Sqlite>,
    campaign: i64,
    worker: WorkerToken,
    uid: String,
    total: u64,
    clock: Clock,
}

#[async_trait]
impl MessageSnapshot for SqliteSnapshot {
    async fn add(&mut self, rows: &[SnapshotRow]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        for batch in rows.chunks(SNAPSHOT_INSERT_BATCH) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (campaign_id, seq, ref, phone, vars, night_consent, state, reason) ",
            );
            qb.push_values(batch, |mut b, r| {
                b.push_bind(self.campaign)
                    .push_bind(r.seq)
                    .push_bind(format!("{}-{}", self.uid, r.seq))
                    .push_bind(r.member.phone.as_str().to_string())
                    .push_bind(r.member.vars.clone())
                    .push_bind(r.member.night_consent)
                    .push_bind(if r.suppress.is_some() {
                        "suppressed"
                    } else {
                        "pending"
                    })
                    .push_bind(r.suppress.clone());
            });
            qb.push(" ON CONFLICT DO NOTHING");
            let n = qb.build().execute(&mut *self.tx).await?.rows_affected();
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
            "UPDATE messages SET state = 'suppressed', reason = 'opted_out' \
             WHERE campaign_id = ? AND state = 'pending' AND phone IN (SELECT phone FROM optouts)",
        )
        .bind(self.campaign)
        .execute(&mut **tx)
        .await?;
        let suppressed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE campaign_id = ? AND state = 'suppressed'",
        )
        .bind(self.campaign)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query("UPDATE campaigns SET snapshot_at = ?, total = ? WHERE id = ?")
            .bind(ts(self.clock.now()))
            .bind(self.total as i64)
            .bind(self.campaign)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE campaign_sql_segments SET as_of = ?, rows_read = ? WHERE campaign_id = ?",
        )
        .bind(ts(as_of))
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
impl SqlSegmentStore for SqliteStore {
    async fn define_sql_segment(&self, def: &NewSqlSegment) -> Result<SqlSegment> {
        let mut tx = self.write_tx().await?;
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM sql_segments WHERE name = ?",
        )
        .bind(&def.name)
        .fetch_one(&mut *tx)
        .await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sql_segments (name, version, source, query, phone_column, defined_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING {SEGMENT_COLUMNS}"
        )))
        .bind(&def.name)
        .bind(version)
        .bind(&def.source)
        .bind(&def.query)
        .bind(&def.phone_column)
        .bind(self.now())
        .fetch_one(&mut *tx)
        .await?;
        let seg = sql_segment_from_row(&row)?;
        tx.commit().await?;
        Ok(seg)
    }

    async fn sql_segment_versions(&self, name: &str) -> Result<Vec<SqlSegment>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SEGMENT_COLUMNS} FROM sql_segments WHERE name = ? AND deleted_at IS NULL \
             ORDER BY version"
        )))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sql_segment_from_row).collect()
    }

    async fn sql_segments(&self) -> Result<Vec<SqlSegment>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SEGMENT_COLUMNS} FROM sql_segments s WHERE deleted_at IS NULL AND version = \
             (SELECT MAX(version) FROM sql_segments WHERE name = s.name) ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sql_segment_from_row).collect()
    }

    async fn link_sql_segment(&self, campaign: i64, sql_segment_id: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        lease_holder(&mut tx, campaign).await?;
        sqlx::query(
            "INSERT INTO campaign_sql_segments (campaign_id, sql_segment_id) VALUES (?, ?)",
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
             WHERE c.campaign_id = ?",
        )
        .bind(campaign)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(CampaignSqlSegment {
                segment: sql_segment_from_row(&r)?,
                as_of: r.try_get("as_of")?,
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
        let mut tx = self.write_tx().await?;
        fence(&mut tx, campaign, execution).await?;
        let (uid, done): (String, Option<String>) =
            sqlx::query_as("SELECT uid, snapshot_at FROM campaigns WHERE id = ?")
                .bind(campaign)
                .fetch_one(&mut *tx)
                .await?;
        if done.is_some() {
            return Ok(None);
        }
        sqlx::query("DELETE FROM messages WHERE campaign_id = ?")
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        Ok(Some(Box::new(SqliteSnapshot {
            tx,
            campaign,
            worker: *w,
            uid,
            total: 0,
            clock: self.clock.clone(),
        })))
    }
}
