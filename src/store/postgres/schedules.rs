//! The PostgreSQL side of schedules: the shared statements (`store::sql::schedules`) on this
//! database, and the launch claim, timed by the database clock.

use super::*;
use crate::store::sql::schedules as sql;

impl PgStore {
    /// Inserts a campaign, CREATED or (with a time) SCHEDULED.
    pub(super) async fn insert_campaign(
        &self,
        c: &NewCampaign,
        at: Option<DateTime<Utc>>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        sql::insert_campaign::<Postgres>(&mut conn, &self.clock, c, at, occurrence).await
    }
}

#[async_trait]
impl ScheduleStore for PgStore {
    async fn create_scheduled_campaign(
        &self,
        c: &NewCampaign,
        at: DateTime<Utc>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64> {
        self.insert_campaign(c, Some(at), occurrence).await
    }

    /// The campaign row is locked (`FOR UPDATE`) from the status check to the write.
    async fn set_scheduled_at(&self, campaign: i64, at: Option<DateTime<Utc>>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sql::set_scheduled_at::<Postgres>(&mut tx, campaign, at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The claim's expiry is the database clock plus `ttl_ms`, as an interval.
    async fn claim_launch(&self, campaign: i64, status: &str, ttl_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE campaigns SET launch_claim_until = munja_now() + $1 * INTERVAL '1 millisecond' \
             WHERE id = $2 AND status = $3 \
             AND (launch_claim_until IS NULL OR launch_claim_until < munja_now())",
        )
        .bind(ttl_ms as f64)
        .bind(campaign)
        .bind(status)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn due_campaigns(&self, at: DateTime<Utc>) -> Result<Vec<i64>> {
        sql::due_campaigns::<Postgres>(&mut *self.pool.acquire().await?, at).await
    }

    async fn add_schedule(&self, s: &NewSchedule) -> Result<i64> {
        sql::add_schedule::<Postgres>(&mut *self.pool.acquire().await?, &self.clock, s).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        sql::schedules::<Postgres>(&mut *self.pool.acquire().await?).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<()> {
        sql::set_paused::<Postgres>(&mut *self.pool.acquire().await?, name, paused).await
    }

    async fn remove_schedule(&self, name: &str) -> Result<()> {
        sql::remove::<Postgres>(&mut *self.pool.acquire().await?, name).await
    }

    async fn mark_occurrence(&self, schedule: i64, at: DateTime<Utc>) -> Result<()> {
        sql::mark_occurrence::<Postgres>(&mut *self.pool.acquire().await?, schedule, at).await
    }
}
