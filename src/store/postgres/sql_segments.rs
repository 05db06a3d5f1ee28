//! PostgreSQL side of SQL segments: a streamed snapshot's batches as `UNNEST` arrays (the rest
//! is `store::sql::segments`; its transaction holds the campaign row lock).

use super::*;
use crate::store::sql::segments::{SnapshotBatch, SnapshotTx};

#[async_trait]
impl SnapshotBatch for Postgres {
    async fn insert_batch(s: &mut SnapshotTx<Postgres>, rows: &[SnapshotRow]) -> Result<u64> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let phones: Vec<&str> = rows.iter().map(|r| r.member.phone.as_str()).collect();
        let vars: Vec<&str> = rows.iter().map(|r| r.member.vars.as_str()).collect();
        let night: Vec<bool> = rows.iter().map(|r| r.member.night_consent).collect();
        let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.suppress.as_deref()).collect();
        let n = sqlx::query(
            "INSERT INTO messages (campaign_id, seq, ref, phone, vars, night_consent, state, reason) \
             SELECT $1, r.seq, $2::TEXT || '-' || r.seq, r.phone, r.vars, r.night, \
                    CASE WHEN r.reason IS NULL THEN 'pending' ELSE 'suppressed' END, r.reason \
             FROM UNNEST($3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BOOLEAN[], $7::TEXT[]) \
                  WITH ORDINALITY AS r(seq, phone, vars, night, reason, ord) \
             ORDER BY r.ord \
             ON CONFLICT DO NOTHING",
        )
        .bind(s.campaign)
        .bind(&s.uid)
        .bind(&seqs)
        .bind(&phones)
        .bind(&vars)
        .bind(&night)
        .bind(&reasons)
        .execute(&mut *s.tx)
        .await?
        .rows_affected();
        Ok(n)
    }
}
