//! The SQLite side of schedules: the shared statements (`store::sql::schedules`) on this
//! database, each write after the file check, and the launch claim, timed by this host's clock.

use super::*;
use crate::store::sql::schedules as sql;

impl SqliteStore {
    /// Inserts a campaign, CREATED or (with a time) SCHEDULED.
    pub(super) async fn insert_campaign(
        &self,
        c: &NewCampaign,
        at: Option<DateTime<Utc>>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        sql::insert_campaign::<Sqlite>(&mut conn, &self.clock, c, at, occurrence).await
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn create_scheduled_campaign(
        &self,
        c: &NewCampaign,
        at: DateTime<Utc>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64> {
        self.insert_campaign(c, Some(at), occurrence).await
    }

    async fn set_scheduled_at(&self, campaign: i64, at: Option<DateTime<Utc>>) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sql::set_scheduled_at::<Sqlite>(&mut tx, campaign, at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The claim's expiry is text in the times' RFC 3339 form, so comparing is text order.
    async fn claim_launch(&self, campaign: i64, status: &str, ttl_ms: i64) -> Result<bool> {
        self.check_file()?;
        let now = self.clock.now();
        let n = sqlx::query(
            "UPDATE campaigns SET launch_claim_until = ?1 WHERE id = ?2 AND status = ?3 \
             AND (launch_claim_until IS NULL OR launch_claim_until < ?4)",
        )
        .bind(ts(now + chrono::Duration::milliseconds(ttl_ms)))
        .bind(campaign)
        .bind(status)
        .bind(ts(now))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn due_campaigns(&self, at: DateTime<Utc>) -> Result<Vec<i64>> {
        sql::due_campaigns::<Sqlite>(&mut *self.pool.acquire().await?, at).await
    }

    async fn add_schedule(&self, s: &NewSchedule) -> Result<i64> {
        self.check_file()?;
        sql::add_schedule::<Sqlite>(&mut *self.pool.acquire().await?, &self.clock, s).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        sql::schedules::<Sqlite>(&mut *self.pool.acquire().await?).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<()> {
        self.check_file()?;
        sql::set_paused::<Sqlite>(&mut *self.pool.acquire().await?, name, paused).await
    }

    async fn remove_schedule(&self, name: &str) -> Result<()> {
        self.check_file()?;
        sql::remove::<Sqlite>(&mut *self.pool.acquire().await?, name).await
    }

    async fn mark_occurrence(&self, schedule: i64, at: DateTime<Utc>) -> Result<()> {
        self.check_file()?;
        sql::mark_occurrence::<Sqlite>(&mut *self.pool.acquire().await?, schedule, at).await
    }
}
