//! SQLite side of SQL segments: versioned definitions, the campaign's link to the version it
//! uses, and the streamed snapshot (one `BEGIN IMMEDIATE` transaction, fenced by the lease).

use super::*;
use crate::store::segdefs::SNAPSHOT_INSERT_BATCH;
use crate::store::sql::segments as sql;

struct SqliteSnapshot {
    tx: Transaction<'static, Sqlite>,
    campaign: i64,
    worker: WorkerToken,
    uid: String,
    total: u64,
    clock: Clock,
}

/// The snapshot in `tx` (see [`Backend::message_snapshot`]).
pub(super) fn message_snapshot(
    tx: Transaction<'static, Sqlite>,
    w: &WorkerToken,
    uid: String,
    clock: &Clock,
) -> Box<dyn MessageSnapshot> {
    Box::new(SqliteSnapshot {
        tx,
        campaign: w.campaign,
        worker: *w,
        uid,
        total: 0,
        clock: clock.clone(),
    })
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
        let total = self.total as i64;
        let suppressed = sql::end_snapshot::<Sqlite>(tx, &self.clock, self.campaign, total).await?;
        sql::record_read::<Sqlite>(tx, self.campaign, as_of, rows_read).await?;
        let counted = Tally::suppressed(suppressed);
        super::workers::tally(tx, &self.worker, counted).await?;
        self.tx.commit().await?;
        Ok(SnapshotTotals {
            messages: self.total,
            suppressed: suppressed as u64,
        })
    }
}
