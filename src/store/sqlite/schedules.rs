//! The SQLite side of schedules: campaigns with a due time, recurring schedules, and the
//! unique (schedule, occurrence) key that makes each occurrence one campaign at most.

use super::*;

/// The text of a unique-key refusal of an occurrence.
pub(in crate::store) fn occurrence_taken(schedule: i64, at: DateTime<Utc>) -> StoreError {
    StoreError::Conflict(format!(
        "schedule {schedule} already has a campaign for its occurrence at {}",
        ts(at)
    ))
}

/// Whether `e` is a unique-key violation.
pub(in crate::store) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

fn schedule_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Schedule> {
    let time = |s: String| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| StoreError::Conflict(format!("stored time {s:?} unreadable: {e}")))
    };
    Ok(Schedule {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        segment_name: r.try_get("segment_name")?,
        template_name: r.try_get("template_name")?,
        gateway: r.try_get("gateway")?,
        ad: r.try_get("ad")?,
        cron: r.try_get("cron")?,
        paused: r.try_get("paused")?,
        created_at: time(r.try_get("created_at")?)?,
        last_occurrence_at: r
            .try_get::<Option<String>, _>("last_occurrence_at")?
            .map(time)
            .transpose()?,
    })
}

impl SqliteStore {
    /// Inserts a campaign, CREATED or (with a time) SCHEDULED.
    pub(super) async fn insert_campaign(
        &self,
        c: &NewCampaign,
        at: Option<DateTime<Utc>>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64> {
        let uid = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let status = if at.is_some() { "SCHEDULED" } else { "CREATED" };
        sqlx::query_scalar(
            "INSERT INTO campaigns (uid, name, segment_name, segment_imported_at, template_name, template_body, \
             template_subject, gateway, ad, sender_number, brand, optout_number, status, created_at, \
             scheduled_at, schedule_id, occurrence_at, gateway_split) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(uid)
        .bind(&c.name)
        .bind(&c.segment_name)
        .bind(&c.segment_imported_at)
        .bind(&c.template_name)
        .bind(&c.template_body)
        .bind(&c.template_subject)
        .bind(&c.gateway)
        .bind(c.ad)
        .bind(&c.sender_number)
        .bind(&c.brand)
        .bind(&c.optout_number)
        .bind(status)
        .bind(self.now())
        .bind(at.map(ts))
        .bind(occurrence.map(|o| o.0))
        .bind(occurrence.map(|o| ts(o.1)))
        .bind(c.split)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match occurrence {
            Some((s, at)) if is_unique_violation(&e) => occurrence_taken(s, at),
            _ => e.into(),
        })
    }
}

/// Refusal of a time change on a campaign that already ran.
pub(in crate::store) fn not_schedulable(campaign: i64, status: &str) -> StoreError {
    StoreError::Conflict(format!(
        "campaign {campaign} is {status}: only a CREATED or SCHEDULED campaign (one that never \
         ran) can be scheduled or unscheduled; `munja campaign run {campaign}` runs it now"
    ))
}

pub(in crate::store) fn schedule_name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "a schedule named {name:?} already exists; pick another name or `munja schedule remove {name}` first"
    ))
}

/// `NotFound` naming the schedule when no row changed.
pub(in crate::store) fn found(rows: u64, name: &str) -> Result<()> {
    if rows == 0 {
        return Err(StoreError::NotFound(format!(
            "no schedule named {name:?}; `munja schedule list` shows them"
        )));
    }
    Ok(())
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
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM campaigns WHERE id = ?")
                .bind(campaign)
                .fetch_optional(&mut *tx)
                .await?;
        let status = status
            .ok_or_else(|| StoreError::NotFound(format!("no campaign with id {campaign}")))?;
        if status != "CREATED" && status != "SCHEDULED" {
            return Err(not_schedulable(campaign, &status));
        }
        sqlx::query("UPDATE campaigns SET scheduled_at = ?, status = ? WHERE id = ?")
            .bind(at.map(ts))
            .bind(if at.is_some() { "SCHEDULED" } else { "CREATED" })
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

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
        Ok(sqlx::query_scalar(
            "SELECT id FROM campaigns WHERE status = 'SCHEDULED' AND scheduled_at <= ? \
             ORDER BY scheduled_at, id",
        )
        .bind(ts(at))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn add_schedule(&self, s: &NewSchedule) -> Result<i64> {
        self.check_file()?;
        sqlx::query_scalar(
            "INSERT INTO schedules (name, segment_name, template_name, gateway, ad, cron, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&s.name)
        .bind(&s.segment_name)
        .bind(&s.template_name)
        .bind(&s.gateway)
        .bind(s.ad)
        .bind(&s.cron)
        .bind(self.now())
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
        self.check_file()?;
        let n = sqlx::query("UPDATE schedules SET paused = ? WHERE name = ?")
            .bind(paused)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        found(n, name)
    }

    async fn remove_schedule(&self, name: &str) -> Result<()> {
        self.check_file()?;
        let n = sqlx::query("DELETE FROM schedules WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        found(n, name)
    }

    async fn mark_occurrence(&self, schedule: i64, at: DateTime<Utc>) -> Result<()> {
        self.check_file()?;
        sqlx::query(
            "UPDATE schedules SET last_occurrence_at = ?1 WHERE id = ?2 \
             AND (last_occurrence_at IS NULL OR last_occurrence_at < ?1)",
        )
        .bind(ts(at))
        .bind(schedule)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
