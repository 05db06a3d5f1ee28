//! Opt-out lists (수신거부) and CSV segments on PostgreSQL: imports in one transaction each
//! (one `UNNEST` statement per batch), invisible until commit, and their reads.

use super::*;

pub(super) struct PgImport {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) segment_id: Option<i64>,
    pub(super) next_seq: i64,
    pub(super) total: i64,
}

#[async_trait]
impl Import for PgImport {
    async fn add_optouts(&mut self, phones: &[Phone]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        for batch in phones.chunks(INSERT_BATCH) {
            let list: Vec<&str> = batch.iter().map(Phone::as_str).collect();
            let n = sqlx::query(
                "INSERT INTO optouts (phone, source, created_at) \
                 SELECT p, 'import', munja_now() FROM UNNEST($1::TEXT[]) AS p \
                 ON CONFLICT (phone) DO NOTHING",
            )
            .bind(&list)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            counts.inserted += n;
            counts.already_present += batch.len() as u64 - n;
        }
        Ok(counts)
    }

    async fn add_members(&mut self, members: &[NewMember]) -> Result<ImportCounts> {
        let segment = self
            .segment_id
            .ok_or_else(|| StoreError::Conflict("not a segment import".into()))?;
        let mut counts = ImportCounts::default();
        for batch in members.chunks(INSERT_BATCH) {
            let start = self.next_seq;
            let seqs: Vec<i64> = (start..start + batch.len() as i64).collect();
            let phones: Vec<&str> = batch.iter().map(|m| m.phone.as_str()).collect();
            let vars: Vec<&str> = batch.iter().map(|m| m.vars.as_str()).collect();
            let night: Vec<bool> = batch.iter().map(|m| m.night_consent).collect();
            self.next_seq += batch.len() as i64;
            // A number seen earlier (in this batch or an earlier one) keeps its first row.
            let n = sqlx::query(
                "INSERT INTO segment_members (segment_id, seq, phone, vars, night_consent) \
                 SELECT $1, s, p, v, c \
                 FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BOOLEAN[]) AS u(s, p, v, c) \
                 ORDER BY s ON CONFLICT DO NOTHING",
            )
            .bind(segment)
            .bind(&seqs)
            .bind(&phones)
            .bind(&vars)
            .bind(&night)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            counts.inserted += n;
            counts.already_present += batch.len() as u64 - n;
            self.total += n as i64;
        }
        Ok(counts)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Some(id) = self.segment_id {
            sqlx::query("UPDATE segments SET member_count = $1 WHERE id = $2")
                .bind(self.total)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl ImportStore for PgStore {
    async fn begin_optout_import(&self, _source: &str) -> Result<Box<dyn Import>> {
        Ok(Box::new(PgImport {
            tx: self.pool.begin().await?,
            segment_id: None,
            next_seq: 0,
            total: 0,
        }))
    }

    async fn optout_add(&self, phone: &Phone, source: &str) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO optouts (phone, source, created_at) VALUES ($1, $2, munja_now()) \
             ON CONFLICT (phone) DO NOTHING",
        )
        .bind(phone.as_str())
        .bind(source)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn optout_remove(&self, phone: &Phone) -> Result<bool> {
        let r = sqlx::query("DELETE FROM optouts WHERE phone = $1")
            .bind(phone.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn optout_contains(&self, phone: &Phone) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM optouts WHERE phone = $1)")
                .bind(phone.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn optout_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM optouts")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn fresh_optouts_in_flight(
        &self,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        // The claimed messages drive the join: one primary-key probe of the list each.
        Ok(sqlx::query_scalar(
            "SELECT m.phone FROM messages m JOIN optouts o ON o.phone = m.phone \
             WHERE m.campaign_id = $1 AND m.state = 'sending' AND o.created_at >= $2",
        )
        .bind(campaign)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn begin_segment_import(
        &self,
        name: &str,
        source: &str,
        columns: &[String],
    ) -> Result<Box<dyn Import>> {
        let mut tx = self.pool.begin().await?;
        let cols = serde_json::to_string(columns).unwrap_or_else(|_| "[]".into());
        // The upsert locks the segment row until commit: a second import of the same name
        // waits, and a snapshot (FOR SHARE) never reads a half-replaced list.
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO segments (name, source, columns, member_count, imported_at) \
             VALUES ($1, $2, $3, 0, munja_now()) \
             ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, columns = EXCLUDED.columns, \
             member_count = 0, imported_at = EXCLUDED.imported_at RETURNING id",
        )
        .bind(name)
        .bind(source)
        .bind(&cols)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM segment_members WHERE segment_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgImport {
            tx,
            segment_id: Some(id),
            next_seq: 1,
            total: 0,
        }))
    }

    async fn segment(&self, name: &str) -> Result<Option<Segment>> {
        Ok(self.segments().await?.into_iter().find(|s| s.name == name))
    }

    async fn segments(&self) -> Result<Vec<Segment>> {
        let rows = sqlx::query(
            "SELECT id, name, source, columns, member_count, imported_at FROM segments ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let cols: String = r.try_get("columns")?;
                Ok(Segment {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    source: r.try_get("source")?,
                    columns: serde_json::from_str(&cols).unwrap_or_default(),
                    member_count: r.try_get("member_count")?,
                    imported_at: ts(r.try_get("imported_at")?),
                })
            })
            .collect()
    }

    async fn segment_members(
        &self,
        segment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, bool)>> {
        Ok(sqlx::query_as(
            "SELECT seq, phone, vars, night_consent FROM segment_members \
             WHERE segment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(segment_id)
        .bind(after_seq)
        .bind(row_limit(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_segment(&self, name: &str) -> Result<SegmentDeletion> {
        let mut tx = self.pool.begin().await?;
        let users: Vec<SegmentUser> = sqlx::query_as(
            "SELECT id, name, status FROM campaigns WHERE segment_name = $1 \
             AND status NOT IN ('COMPLETED', 'CANCELLED') ORDER BY id",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            return Ok(SegmentDeletion::InUse(users));
        }
        sqlx::query(
            "DELETE FROM segment_members WHERE segment_id IN (SELECT id FROM segments WHERE name = $1)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let csv_members: Option<i64> =
            sqlx::query_scalar("DELETE FROM segments WHERE name = $1 RETURNING member_count")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let sql_versions = sqlx::query(
            "UPDATE sql_segments SET deleted_at = munja_now() WHERE name = $1 AND deleted_at IS NULL",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
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
