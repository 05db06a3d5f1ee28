//! The PostgreSQL side of delivery reports: the shared statements (`store::sql::delivery`) in
//! one transaction that locks the message row (`FOR UPDATE`), so two reports for one ref are
//! serialised and a final state is set once.

use super::*;
use crate::store::sql::delivery;

#[async_trait]
impl DeliveryStore for PgStore {
    /// See [`DeliveryStore::record_delivery`].
    async fn record_delivery(&self, r: &DeliveryReport) -> Result<DeliveryEffect> {
        let mut tx = self.pool.begin().await?;
        let effect = delivery::record::<Postgres>(&mut tx, &self.clock, r).await?;
        tx.commit().await?;
        Ok(effect)
    }

    /// See [`DeliveryStore::delivery_reports`].
    async fn delivery_reports(&self, msg_ref: &str) -> Result<Vec<StoredReport>> {
        delivery::reports::<Postgres>(&mut *self.pool.acquire().await?, msg_ref).await
    }

    /// See [`DeliveryStore::report_counts`].
    async fn report_counts(&self, gateway: Option<&str>) -> Result<ReportCounts> {
        delivery::counts::<Postgres>(&mut *self.pool.acquire().await?, gateway).await
    }
}
