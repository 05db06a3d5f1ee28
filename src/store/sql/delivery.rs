//! Delivery reports on either database: the report log and the message's delivery columns,
//! written together in the caller's transaction (`BEGIN IMMEDIATE` on SQLite; on PostgreSQL
//! the message row is locked `FOR UPDATE`), so two reports for one ref are serialised and a
//! final state is set once.

use async_trait::async_trait;

use super::{At, Backend, Dialect, Stamp, Stmt, query};
use crate::store::{
    Clock, DeliveryEffect, DeliveryReport, DeliveryStore, ReportCounts, ReportStatus, Result,
    StoredReport, delivery_effect, report_counts_from, split_ref,
};

/// Both stores' delivery reports: the statements below, in one transaction per report.
#[async_trait]
impl<B: Backend> DeliveryStore for B {
    async fn record_delivery(&self, r: &DeliveryReport) -> Result<DeliveryEffect> {
        let mut tx = self.begin().await?;
        let effect = record::<B::DB>(&mut tx, self.time(), r).await?;
        tx.commit().await?;
        Ok(effect)
    }

    async fn delivery_reports(&self, msg_ref: &str) -> Result<Vec<StoredReport>> {
        reports::<B::DB>(&mut *self.read().await?, msg_ref).await
    }

    async fn report_counts(&self, gateway: Option<&str>) -> Result<ReportCounts> {
        counts::<B::DB>(&mut *self.read().await?, gateway).await
    }
}

/// See [`crate::store::DeliveryStore::record_delivery`]; `tx` is the transaction of the report.
async fn record<DB: Dialect>(
    tx: &mut DB::Connection,
    clock: &Clock,
    r: &DeliveryReport,
) -> Result<DeliveryEffect> {
    let row = match split_ref(&r.msg_ref) {
        None => None,
        Some((uid, seq)) => query::<DB>(format!(
            "SELECT m.id, m.delivery, m.delivery_code FROM campaigns c \
             JOIN messages m ON m.campaign_id = c.id AND m.seq = $2 \
             WHERE c.uid = $1 AND m.ref = $3{}",
            if DB::ROW_LOCKS {
                " FOR UPDATE OF m"
            } else {
                ""
            }
        ))
        .arg(uid)
        .arg(seq)
        .arg(r.msg_ref.as_str())
        .first(&mut *tx)
        .await?
        .map(|m| -> Result<(i64, Option<String>, Option<String>)> {
            Ok((
                DB::col(&m, "id")?,
                DB::col(&m, "delivery")?,
                DB::col(&m, "delivery_code")?,
            ))
        })
        .transpose()?,
    };
    let effect = delivery_effect(&row, r);
    if let (Some((id, _, _)), ReportStatus::Final(d)) = (&row, r.status)
        && effect == DeliveryEffect::Applied
    {
        sqlx::query::<DB>(
            "UPDATE messages SET delivery = $1, delivery_code = $2, delivered_at = $3 \
             WHERE id = $4 AND delivery IS NULL",
        )
        .arg(d.as_str())
        .arg(r.code.clone())
        .arg(At(r.at))
        .arg(*id)
        .run(&mut *tx)
        .await?;
    }
    query::<DB>(format!(
        "INSERT INTO delivery_reports \
         (gateway, ref, message_id, status, code, reported_at, effect, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, {})",
        DB::now(8)
    ))
    .arg(r.gateway.as_str())
    .arg(r.msg_ref.as_str())
    .arg(row.map(|(id, _, _)| id))
    .arg(r.status.as_str())
    .arg(r.code.clone())
    .arg(At(r.at))
    .arg(effect.as_str())
    .now(clock)
    .run(&mut *tx)
    .await?;
    Ok(effect)
}

/// See [`crate::store::DeliveryStore::delivery_reports`].
async fn reports<DB: Dialect>(c: &mut DB::Connection, msg_ref: &str) -> Result<Vec<StoredReport>> {
    let rows = sqlx::query::<DB>(
        "SELECT gateway, status, code, reported_at, effect FROM delivery_reports \
         WHERE ref = $1 ORDER BY id",
    )
    .arg(msg_ref)
    .all(c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredReport {
                gateway: DB::col(r, "gateway")?,
                status: DB::col(r, "status")?,
                code: DB::col(r, "code")?,
                reported_at: DB::col::<Stamp>(r, "reported_at")?.0,
                effect: DB::col(r, "effect")?,
            })
        })
        .collect()
}

/// See [`crate::store::DeliveryStore::report_counts`].
async fn counts<DB: Dialect>(
    c: &mut DB::Connection,
    gateway: Option<&str>,
) -> Result<ReportCounts> {
    let rows = sqlx::query::<DB>(
        "SELECT effect, COUNT(*) AS n FROM delivery_reports \
         WHERE CAST($1 AS TEXT) IS NULL OR gateway = $1 GROUP BY effect",
    )
    .arg(gateway.map(str::to_string))
    .all(c)
    .await?;
    let rows = rows
        .iter()
        .map(|r| Ok((DB::col(r, "effect")?, DB::col(r, "n")?)))
        .collect::<Result<Vec<(String, i64)>>>()?;
    Ok(report_counts_from(rows))
}
