//! Opt-out lists (수신거부) and CSV segments on PostgreSQL: imports in one transaction each
//! (one `UNNEST` statement per batch), invisible until commit; the rest the shared statements
//! of `store::sql::imports`.

use super::*;
use crate::store::sql::imports::ImportTx;

#[async_trait]
impl Import for ImportTx<Postgres> {
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

    async fn commit(self: Box<Self>) -> Result<()> {
        self.finish().await
    }
}
