//! Opt-out lists (수신거부) and CSV segments on SQLite: imports in one write transaction each,
//! invisible until commit (a segment's old members stay readable until then): the batches as
//! multi-row `VALUES`, the rest the shared statements of `store::sql::imports`.

use super::*;
use std::collections::BTreeMap;

use crate::store::sql::At;
use crate::store::sql::imports as sql;

struct SqliteImport {
    tx: Transaction<'static, Sqlite>,
    segment_id: Option<i64>,
    next_seq: i64,
    total: i64,
    clock: Clock,
}

#[async_trait]
impl Import for SqliteImport {
    async fn add_optouts(&mut self, phones: &[Phone]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        let at = ts(self.clock.now());
        for batch in phones.chunks(INSERT_BATCH) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO optouts (phone, source, created_at) ");
            qb.push_values(batch, |mut b, p| {
                b.push_bind(p.as_str().to_string())
                    .push_bind("import")
                    .push_bind(at.clone());
            });
            qb.push(" ON CONFLICT(phone) DO NOTHING");
            let n = qb.build().execute(&mut *self.tx).await?.rows_affected();
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
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT OR IGNORE INTO segment_members \
                 (segment_id, seq, phone, vars, night_consent, ad_consent_at) ",
            );
            let start = self.next_seq;
            qb.push_values(batch.iter().enumerate(), |mut b, (i, m)| {
                b.push_bind(segment)
                    .push_bind(start + i as i64)
                    .push_bind(m.phone.as_str().to_string())
                    .push_bind(m.vars.clone())
                    .push_bind(m.night_consent)
                    .push_bind(m.ad_consent_at.map(At));
            });
            self.next_seq += batch.len() as i64;
            let n = qb.build().execute(&mut *self.tx).await?.rows_affected();
            counts.inserted += n;
            counts.already_present += batch.len() as u64 - n;
            self.total += n as i64;
        }
        Ok(counts)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Some(id) = self.segment_id {
            sql::end_segment::<Sqlite>(&mut self.tx, id, self.total).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl ImportStore for SqliteStore {
    async fn begin_optout_import(&self, _source: &str) -> Result<Box<dyn Import>> {
        Ok(Box::new(SqliteImport {
            tx: self.write_tx().await?,
            segment_id: None,
            next_seq: 0,
            total: 0,
            clock: self.clock.clone(),
        }))
    }

    async fn optout_add(&self, phone: &Phone, source: &str) -> Result<bool> {
        let mut c = self.pool.acquire().await?;
        sql::optout_add::<Sqlite>(&mut c, &self.clock, phone, source).await
    }

    async fn optout_remove(&self, phone: &Phone) -> Result<bool> {
        sql::optout_remove::<Sqlite>(&mut *self.pool.acquire().await?, phone).await
    }

    async fn optout_contains(&self, phone: &Phone) -> Result<bool> {
        sql::optout_contains::<Sqlite>(&mut *self.pool.acquire().await?, phone).await
    }

    async fn optout_count(&self) -> Result<i64> {
        sql::optout_count::<Sqlite>(&mut *self.pool.acquire().await?).await
    }

    async fn fresh_optouts_in_flight(
        &self,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        sql::fresh_optouts::<Sqlite>(&mut *self.pool.acquire().await?, campaign, since).await
    }

    async fn begin_segment_import(
        &self,
        name: &str,
        source: &str,
        columns: &[String],
    ) -> Result<Box<dyn Import>> {
        let mut tx = self.write_tx().await?;
        let id = sql::begin_segment::<Sqlite>(&mut tx, &self.clock, name, source, columns).await?;
        Ok(Box::new(SqliteImport {
            tx,
            segment_id: Some(id),
            next_seq: 1,
            total: 0,
            clock: self.clock.clone(),
        }))
    }

    async fn segment(&self, name: &str) -> Result<Option<Segment>> {
        Ok(self.segments().await?.into_iter().find(|s| s.name == name))
    }

    async fn segments(&self) -> Result<Vec<Segment>> {
        sql::segments::<Sqlite>(&mut *self.pool.acquire().await?).await
    }

    async fn segment_consent_counts(
        &self,
        segment_id: i64,
        cutoff: DateTime<Utc>,
    ) -> Result<BTreeMap<String, u64>> {
        let mut c = self.pool.acquire().await?;
        sql::consent_counts::<Sqlite>(&mut c, segment_id, cutoff).await
    }

    async fn segment_members(
        &self,
        segment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, bool)>> {
        let mut c = self.pool.acquire().await?;
        sql::members::<Sqlite>(&mut c, segment_id, after_seq, limit).await
    }

    async fn delete_segment(&self, name: &str) -> Result<SegmentDeletion> {
        let mut tx = self.write_tx().await?;
        let users: Vec<SegmentUser> = sqlx::query_as(
            "SELECT id, name, status FROM campaigns WHERE segment_name = ? \
             AND status NOT IN ('COMPLETED', 'CANCELLED') ORDER BY id",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            return Ok(SegmentDeletion::InUse(users));
        }
        sqlx::query(
            "DELETE FROM segment_members WHERE segment_id IN (SELECT id FROM segments WHERE name = ?)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let csv_members: Option<i64> =
            sqlx::query_scalar("DELETE FROM segments WHERE name = ? RETURNING member_count")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let sql_versions = sqlx::query(
            "UPDATE sql_segments SET deleted_at = ? WHERE name = ? AND deleted_at IS NULL",
        )
        .bind(self.now())
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
