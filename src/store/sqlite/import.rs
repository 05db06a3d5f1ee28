//! Opt-out lists (수신거부) and CSV segments on SQLite: imports in one write transaction each,
//! invisible until commit (a segment's old members stay readable until then): the batches as
//! multi-row `VALUES`, the rest the shared statements of `store::sql::imports`.

use super::*;
use crate::store::sql::At;
use crate::store::sql::imports::ImportTx;

#[async_trait]
impl Import for ImportTx<Sqlite> {
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

    async fn commit(self: Box<Self>) -> Result<()> {
        self.finish().await
    }
}
