//! Opt-out lists (수신거부) and CSV segments on PostgreSQL: imports in one transaction each
//! (one `UNNEST` statement per batch), invisible until commit; the rest the shared statements
//! of `store::sql::imports`.

use super::*;
use std::collections::BTreeMap;

use crate::store::sql::imports as sql;

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
            let consent: Vec<Option<DateTime<Utc>>> =
                batch.iter().map(|m| m.ad_consent_at).collect();
            self.next_seq += batch.len() as i64;
            // A number seen earlier (in this batch or an earlier one) keeps its first row.
            let n = sqlx::query(
                "INSERT INTO segment_members \
                 (segment_id, seq, phone, vars, night_consent, ad_consent_at) \
                 SELECT $1, s, p, v, c, a \
                 FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BOOLEAN[], \
                             $6::TIMESTAMPTZ[]) AS u(s, p, v, c, a) \
                 ORDER BY s ON CONFLICT DO NOTHING",
            )
            .bind(segment)
            .bind(&seqs)
            .bind(&phones)
            .bind(&vars)
            .bind(&night)
            .bind(&consent)
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
            sql::end_segment::<Postgres>(&mut self.tx, id, self.total).await?;
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
        let mut c = self.pool.acquire().await?;
        sql::optout_add::<Postgres>(&mut c, &self.clock, phone, source).await
    }

    async fn optout_remove(&self, phone: &Phone) -> Result<bool> {
        sql::optout_remove::<Postgres>(&mut *self.pool.acquire().await?, phone).await
    }

    async fn optout_contains(&self, phone: &Phone) -> Result<bool> {
        sql::optout_contains::<Postgres>(&mut *self.pool.acquire().await?, phone).await
    }

    async fn optout_count(&self) -> Result<i64> {
        sql::optout_count::<Postgres>(&mut *self.pool.acquire().await?).await
    }

    async fn fresh_optouts_in_flight(
        &self,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        sql::fresh_optouts::<Postgres>(&mut *self.pool.acquire().await?, campaign, since).await
    }

    async fn begin_segment_import(
        &self,
        name: &str,
        source: &str,
        columns: &[String],
    ) -> Result<Box<dyn Import>> {
        let mut tx = self.pool.begin().await?;
        let id =
            sql::begin_segment::<Postgres>(&mut tx, &self.clock, name, source, columns).await?;
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
        sql::segments::<Postgres>(&mut *self.pool.acquire().await?).await
    }

    async fn segment_consent_counts(
        &self,
        segment_id: i64,
        cutoff: DateTime<Utc>,
    ) -> Result<BTreeMap<String, u64>> {
        let mut c = self.pool.acquire().await?;
        sql::consent_counts::<Postgres>(&mut c, segment_id, cutoff).await
    }

    async fn segment_members(
        &self,
        segment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, bool)>> {
        let mut c = self.pool.acquire().await?;
        sql::members::<Postgres>(&mut c, segment_id, after_seq, limit).await
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
