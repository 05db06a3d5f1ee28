//! PostgreSQL side of SQL segments: versioned definitions, the campaign's link to the version
//! it uses, and the streamed snapshot (one transaction holding the campaign row lock, fenced by
//! the lease; rows inserted with `UNNEST` arrays).

use super::*;
use crate::store::segdefs::SNAPSHOT_INSERT_BATCH;
use crate::store::sql::segments as sql;

struct PgSnapshot {
    tx: Transaction<'static, Postgres>,
    campaign: i64,
    worker: WorkerToken,
    uid: String,
    total: u64,
    clock: Clock,
}

/// The snapshot in `tx` (see [`Backend::message_snapshot`]).
pub(super) fn message_snapshot(
    tx: Transaction<'static, Postgres>,
    w: &WorkerToken,
    uid: String,
    clock: &Clock,
) -> Box<dyn MessageSnapshot> {
    Box::new(PgSnapshot {
        tx,
        campaign: w.campaign,
        worker: *w,
        uid,
        total: 0,
        clock: clock.clone(),
    })
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
        let total = self.total as i64;
        let suppressed =
            sql::end_snapshot::<Postgres>(tx, &self.clock, self.campaign, total).await?;
        sql::record_read::<Postgres>(tx, self.campaign, as_of, rows_read).await?;
        let counted = Tally::suppressed(suppressed);
        super::workers::tally(tx, &self.worker, counted).await?;
        self.tx.commit().await?;
        Ok(SnapshotTotals {
            messages: self.total,
            suppressed: suppressed as u64,
        })
    }
}
