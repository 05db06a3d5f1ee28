//! SQLite side of SQL segments: a streamed snapshot's batches as multi-row `VALUES` (the rest
//! is `store::sql::segments`).

use super::*;
use crate::store::sql::segments::{SnapshotBatch, SnapshotTx};

#[async_trait]
impl SnapshotBatch for Sqlite {
    async fn insert_batch(s: &mut SnapshotTx<Sqlite>, rows: &[SnapshotRow]) -> Result<u64> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (campaign_id, seq, ref, phone, vars, night_consent, state, reason) ",
        );
        qb.push_values(rows, |mut b, r| {
            b.push_bind(s.campaign)
                .push_bind(r.seq)
                .push_bind(format!("{}-{}", s.uid, r.seq))
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
        Ok(qb.build().execute(&mut *s.tx).await?.rows_affected())
    }
}
