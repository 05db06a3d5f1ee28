//! The PostgreSQL side of delivery reports: the report log and the message's delivery columns,
//! written in one transaction that locks the message row (`FOR UPDATE`), so two reports for one
//! ref are serialised and a final state is set once.

use super::*;

#[async_trait]
impl DeliveryStore for PgStore {
    /// See [`DeliveryStore::record_delivery`].
    async fn record_delivery(&self, r: &DeliveryReport) -> Result<DeliveryEffect> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, Option<String>, Option<String>)> = match split_ref(&r.msg_ref) {
            None => None,
            Some((uid, seq)) => {
                sqlx::query_as(
                    "SELECT m.id, m.delivery, m.delivery_code FROM campaigns c \
                     JOIN messages m ON m.campaign_id = c.id AND m.seq = $2 \
                     WHERE c.uid = $1 AND m.ref = $3 FOR UPDATE OF m",
                )
                .bind(uid)
                .bind(seq)
                .bind(&r.msg_ref)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let effect = delivery_effect(&row, r);
        if let (Some((id, _, _)), ReportStatus::Final(d)) = (&row, r.status)
            && effect == DeliveryEffect::Applied
        {
            sqlx::query(
                "UPDATE messages SET delivery = $1, delivery_code = $2, delivered_at = $3 \
                 WHERE id = $4 AND delivery IS NULL",
            )
            .bind(d.as_str())
            .bind(&r.code)
            .bind(r.at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO delivery_reports \
             (gateway, ref, message_id, status, code, reported_at, received_at, effect) \
             VALUES ($1, $2, $3, $4, $5, $6, munja_now(), $7)",
        )
        .bind(&r.gateway)
        .bind(&r.msg_ref)
        .bind(row.map(|(id, _, _)| id))
        .bind(r.status.as_str())
        .bind(&r.code)
        .bind(r.at)
        .bind(effect.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(effect)
    }

    /// See [`DeliveryStore::delivery_reports`].
    async fn delivery_reports(&self, msg_ref: &str) -> Result<Vec<StoredReport>> {
        let rows = sqlx::query(
            "SELECT gateway, status, code, reported_at, effect FROM delivery_reports \
             WHERE ref = $1 ORDER BY id",
        )
        .bind(msg_ref)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredReport {
                    gateway: r.try_get("gateway")?,
                    status: r.try_get("status")?,
                    code: r.try_get("code")?,
                    reported_at: ts(r.try_get("reported_at")?),
                    effect: r.try_get("effect")?,
                })
            })
            .collect()
    }

    /// See [`DeliveryStore::report_counts`].
    async fn report_counts(&self, gateway: Option<&str>) -> Result<ReportCounts> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT effect, COUNT(*) FROM delivery_reports \
             WHERE $1::text IS NULL OR gateway = $1 GROUP BY effect",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        Ok(crate::store::report_counts_from(rows))
    }
}
