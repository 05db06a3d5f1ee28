//! The PostgreSQL side of schedules: campaigns with a due time, recurring schedules, and the
//! unique (schedule, occurrence) key that makes each occurrence one campaign at most.

use super::*;
use crate::store::sqlite::schedules::{
    found, is_unique_violation, not_schedulable, occurrence_taken, schedule_name_taken,
};

fn schedule_from_row(r: &PgRow) -> Result<Schedule> {
    Ok(Schedule {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        segment_name: r.try_get("segment_name")?,
        template_name: r.try_get("template_name")?,
        gateway: r.try_get("gateway")?,
        ad: r.try_get("ad")?,
        cron: r.try_get("cron")?,
        paused: r.try_get("paused")?,
        created_at: r.try_get("created_at")?,
        last_occurrence_at: r.try_get("last_occurrence_at")?,
    })
}

impl PgStore {
    /// Inserts a campaign, CREATED or (with a time) SCHEDULED.
    pub(super) async fn insert_campaign(
        &self,
        c: &NewCampaign,
        at: Option<DateTime<Utc>>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64> {
        let checked = DateTime::parse_from_rfc3339(&c.segment_imported_at)
            .map_err(|e| {
                StoreError::Conflict(format!(
                    "segment {:?}: imported_at {:?} is not an RFC 3339 time ({e}); import the segment again",
                    c.segment_name, c.segment_imported_at
                ))
            })?
            .with_timezone(&Utc);
        let uid = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let status = if at.is_some() { "SCHEDULED" } else { "CREATED" };
        sqlx::query_scalar(
            "INSERT INTO campaigns (uid, name, segment_name, segment_imported_at, template_name, \
             template_body, template_subject, gateway, ad, sender_number, brand, optout_number, \
             status, created_at, scheduled_at, schedule_id, occurrence_at, gateway_split) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, munja_now(), $14, $15, $16, $17) \
             RETURNING id",
        )
        .bind(uid)
        .bind(&c.name)
        .bind(&c.segment_name)
        .bind(checked)
        .bind(&c.template_name)
        .bind(&c.template_body)
        .bind(&c.template_subject)
        .bind(&c.gateway)
        .bind(c.ad)
        .bind(&c.sender_number)
        .bind(&c.brand)
        .bind(&c.optout_number)
        .bind(status)
        .bind(at)
        .bind(occurrence.map(|o| o.0))
        .bind(occurrence.map(|o| o.1))
        .bind(c.split)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match occurrence {
            Some((s, at)) if is_unique_violation(&e) => occurrence_taken(s, at),
            _ => e.into(),
        })
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

    async fn set_scheduled_at(&self, campaign: i64, at: Option<DateTime<Utc>>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1 FOR UPDATE")
                .bind(campaign)
                .fetch_optional(&mut *tx)
                .await?;
        let status = status.ok_or_else(|| no_campaign(campaign))?;
        if status != "CREATED" && status != "SCHEDULED" {
            return Err(not_schedulable(campaign, &status));
        }
        sqlx::query("UPDATE campaigns SET scheduled_at = $1, status = $2 WHERE id = $3")
            .bind(at)
            .bind(if at.is_some() { "SCHEDULED" } else { "CREATED" })
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

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
        Ok(sqlx::query_scalar(
            "SELECT id FROM campaigns WHERE status = 'SCHEDULED' AND scheduled_at <= $1 \
             ORDER BY scheduled_at, id",
        )
        .bind(at)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn add_schedule(&self, s: &NewSchedule) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO schedules (name, segment_name, template_name, gateway, ad, cron, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, munja_now()) RETURNING id",
        )
        .bind(&s.name)
        .bind(&s.segment_name)
        .bind(&s.template_name)
        .bind(&s.gateway)
        .bind(s.ad)
        .bind(&s.cron)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                schedule_name_taken(&s.name)
            } else {
                e.into()
            }
        })
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        let rows = sqlx::query("SELECT * FROM schedules ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<()> {
        let n = sqlx::query("UPDATE schedules SET paused = $1 WHERE name = $2")
            .bind(paused)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        found(n, name)
    }

    async fn remove_schedule(&self, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        found(n, name)
    }

    async fn mark_occurrence(&self, schedule: i64, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE schedules SET last_occurrence_at = $1 WHERE id = $2 \
             AND (last_occurrence_at IS NULL OR last_occurrence_at < $1)",
        )
        .bind(at)
        .bind(schedule)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
