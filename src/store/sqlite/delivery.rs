//! The SQLite side of delivery reports: the shared statements (`store::sql::delivery`) in one
//! `BEGIN IMMEDIATE` transaction, so two reports for one ref are serialised and a final state
//! is set once.

use super::*;
use crate::store::sql::delivery;

#[async_trait]
impl DeliveryStore for SqliteStore {
    /// See [`DeliveryStore::record_delivery`].
    async fn record_delivery(&self, r: &DeliveryReport) -> Result<DeliveryEffect> {
        let mut tx = self.write_tx().await?;
        let effect = delivery::record::<Sqlite>(&mut tx, &self.clock, r).await?;
        tx.commit().await?;
        Ok(effect)
    }

    /// See [`DeliveryStore::delivery_reports`].
    async fn delivery_reports(&self, msg_ref: &str) -> Result<Vec<StoredReport>> {
        delivery::reports::<Sqlite>(&mut *self.pool.acquire().await?, msg_ref).await
    }

    /// See [`DeliveryStore::report_counts`].
    async fn report_counts(&self, gateway: Option<&str>) -> Result<ReportCounts> {
        delivery::counts::<Sqlite>(&mut *self.pool.acquire().await?, gateway).await
    }
}
