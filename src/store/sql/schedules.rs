//! Schedules on either database: campaigns with a due time, recurring schedules, and the unique
//! (schedule, occurrence) key that makes each occurrence one campaign at most. The launch claim
//! stays in each backend: it adds a duration to "now", which the two write differently.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{At, Backend, Dialect, Stmt, query};
use crate::store::{
    Clock, NewCampaign, NewSchedule, Result, Schedule, ScheduleStore, StoreError, ts,
};

/// Both stores' schedules: the statements below, each write after SQLite's file check; the
/// launch claim is the backend's ([`Backend::launch_claim`]).
#[async_trait]
impl<B: Backend> ScheduleStore for B {
    async fn create_scheduled_campaign(
        &self,
        c: &NewCampaign,
        at: DateTime<Utc>,
        occurrence: Option<(i64, DateTime<Utc>)>,
    ) -> Result<i64> {
        create(self, c, Some(at), occurrence).await
    }

    async fn set_scheduled_at(&self, campaign: i64, at: Option<DateTime<Utc>>) -> Result<()> {
        let mut tx = self.begin().await?;
        set_scheduled_at::<B::DB>(&mut tx, campaign, at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_launch(&self, campaign: i64, status: &str, ttl_ms: i64) -> Result<bool> {
        self.launch_claim(campaign, status, ttl_ms).await
    }

    async fn due_campaigns(&self, at: DateTime<Utc>) -> Result<Vec<i64>> {
        due_campaigns::<B::DB>(&mut *self.read().await?, at).await
    }

    async fn add_schedule(&self, s: &NewSchedule) -> Result<i64> {
        add_schedule::<B::DB>(&mut *self.write().await?, self.time(), s).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        schedules::<B::DB>(&mut *self.read().await?).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<()> {
        set_paused::<B::DB>(&mut *self.write().await?, name, paused).await
    }

    async fn remove_schedule(&self, name: &str) -> Result<()> {
        remove::<B::DB>(&mut *self.write().await?, name).await
    }

    async fn mark_occurrence(&self, schedule: i64, at: DateTime<Utc>) -> Result<()> {
        mark_occurrence::<B::DB>(&mut *self.write().await?, schedule, at).await
    }
}

/// Creates a campaign, CREATED or (with a time) SCHEDULED; returns its id.
pub(crate) async fn create<B: Backend>(
    b: &B,
    c: &NewCampaign,
    at: Option<DateTime<Utc>>,
    occurrence: Option<(i64, DateTime<Utc>)>,
) -> Result<i64> {
    insert_campaign::<B::DB>(&mut *b.read().await?, b.time(), c, at, occurrence).await
}

/// The text of a unique-key refusal of an occurrence.
fn occurrence_taken(schedule: i64, at: DateTime<Utc>) -> StoreError {
    StoreError::Conflict(format!(
        "schedule {schedule} already has a campaign for its occurrence at {}",
        ts(at)
    ))
}

/// Whether `e` is a unique-key violation.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Refusal of a time change on a campaign that already ran.
fn not_schedulable(campaign: i64, status: &str) -> StoreError {
    StoreError::Conflict(format!(
        "campaign {campaign} is {status}: only a CREATED or SCHEDULED campaign (one that never \
         ran) can be scheduled or unscheduled; `munja campaign run {campaign}` runs it now"
    ))
}

fn schedule_name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "a schedule named {name:?} already exists; pick another name or `munja schedule remove {name}` first"
    ))
}

/// `NotFound` naming the schedule when no row changed.
fn found(rows: u64, name: &str) -> Result<()> {
    if rows == 0 {
        return Err(StoreError::NotFound(format!(
            "no schedule named {name:?}; `munja schedule list` shows them"
        )));
    }
    Ok(())
}

/// Inserts a campaign, CREATED or (with a time) SCHEDULED; returns its id.
async fn insert_campaign<DB: Dialect>(
    conn: &mut DB::Connection,
    clock: &Clock,
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
    let row = query::<DB>(format!(
        "INSERT INTO campaigns (uid, name, segment_name, segment_imported_at, template_name, \
         template_body, template_subject, gateway, ad, sender_number, brand, optout_number, \
         status, scheduled_at, schedule_id, occurrence_at, gateway_split, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, {}) \
         RETURNING id",
        DB::now(18)
    ))
    .arg(uid)
    .arg(c.name.as_str())
    .arg(c.segment_name.as_str())
    .arg(At(checked))
    .arg(c.template_name.as_str())
    .arg(c.template_body.as_str())
    .arg(c.template_subject.clone())
    .arg(c.gateway.as_str())
    .arg(c.ad)
    .arg(c.sender_number.as_str())
    .arg(c.brand.clone())
    .arg(c.optout_number.clone())
    .arg(status)
    .arg(at.map(At))
    .arg(occurrence.map(|o| o.0))
    .arg(occurrence.map(|o| At(o.1)))
    .arg(c.split)
    .now(clock)
    .first(conn)
    .await
    .map_err(|e| match occurrence {
        Some((s, at)) if is_unique_violation(&e) => occurrence_taken(s, at),
        _ => e.into(),
    })?;
    DB::col(&row.ok_or(sqlx::Error::RowNotFound)?, "id")
}

/// See [`crate::store::ScheduleStore::set_scheduled_at`]; `tx` is the caller's transaction.
async fn set_scheduled_at<DB: Dialect>(
    tx: &mut DB::Connection,
    campaign: i64,
    at: Option<DateTime<Utc>>,
) -> Result<()> {
    let row = query::<DB>(format!(
        "SELECT status FROM campaigns WHERE id = $1{}",
        if DB::ROW_LOCKS { " FOR UPDATE" } else { "" }
    ))
    .arg(campaign)
    .first(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(format!(
            "no campaign with id {campaign}; `munja campaign list` shows the existing ones"
        )));
    };
    let status: String = DB::col(&row, "status")?;
    if status != "CREATED" && status != "SCHEDULED" {
        return Err(not_schedulable(campaign, &status));
    }
    sqlx::query::<DB>("UPDATE campaigns SET scheduled_at = $1, status = $2 WHERE id = $3")
        .arg(at.map(At))
        .arg(if at.is_some() { "SCHEDULED" } else { "CREATED" })
        .arg(campaign)
        .run(tx)
        .await?;
    Ok(())
}

/// See [`crate::store::ScheduleStore::due_campaigns`].
async fn due_campaigns<DB: Dialect>(c: &mut DB::Connection, at: DateTime<Utc>) -> Result<Vec<i64>> {
    let rows = sqlx::query::<DB>(
        "SELECT id FROM campaigns WHERE status = 'SCHEDULED' AND scheduled_at <= $1 \
         ORDER BY scheduled_at, id",
    )
    .arg(At(at))
    .all(c)
    .await?;
    rows.iter().map(|r| DB::col(r, "id")).collect()
}

/// See [`crate::store::ScheduleStore::add_schedule`].
async fn add_schedule<DB: Dialect>(
    c: &mut DB::Connection,
    clock: &Clock,
    s: &NewSchedule,
) -> Result<i64> {
    let row = query::<DB>(format!(
        "INSERT INTO schedules (name, segment_name, template_name, gateway, ad, cron, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, {}) RETURNING id",
        DB::now(7)
    ))
    .arg(s.name.as_str())
    .arg(s.segment_name.as_str())
    .arg(s.template_name.as_str())
    .arg(s.gateway.clone())
    .arg(s.ad)
    .arg(s.cron.as_str())
    .now(clock)
    .first(c)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            schedule_name_taken(&s.name)
        } else {
            e.into()
        }
    })?;
    DB::col(&row.ok_or(sqlx::Error::RowNotFound)?, "id")
}

/// See [`crate::store::ScheduleStore::schedules`].
async fn schedules<DB: Dialect>(c: &mut DB::Connection) -> Result<Vec<Schedule>> {
    let rows = sqlx::query::<DB>("SELECT * FROM schedules ORDER BY name")
        .all(c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Schedule {
                id: DB::col(r, "id")?,
                name: DB::col(r, "name")?,
                segment_name: DB::col(r, "segment_name")?,
                template_name: DB::col(r, "template_name")?,
                gateway: DB::col(r, "gateway")?,
                ad: DB::col(r, "ad")?,
                cron: DB::col(r, "cron")?,
                paused: DB::col(r, "paused")?,
                created_at: DB::col::<At>(r, "created_at")?.0,
                last_occurrence_at: DB::col::<Option<At>>(r, "last_occurrence_at")?.map(|t| t.0),
            })
        })
        .collect()
}

/// See [`crate::store::ScheduleStore::set_schedule_paused`].
async fn set_paused<DB: Dialect>(c: &mut DB::Connection, name: &str, paused: bool) -> Result<()> {
    let n = sqlx::query::<DB>("UPDATE schedules SET paused = $1 WHERE name = $2")
        .arg(paused)
        .arg(name)
        .run(c)
        .await?;
    found(n, name)
}

/// See [`crate::store::ScheduleStore::remove_schedule`].
async fn remove<DB: Dialect>(c: &mut DB::Connection, name: &str) -> Result<()> {
    let n = sqlx::query::<DB>("DELETE FROM schedules WHERE name = $1")
        .arg(name)
        .run(c)
        .await?;
    found(n, name)
}

/// See [`crate::store::ScheduleStore::mark_occurrence`].
async fn mark_occurrence<DB: Dialect>(
    c: &mut DB::Connection,
    schedule: i64,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query::<DB>(
        "UPDATE schedules SET last_occurrence_at = $1 WHERE id = $2 \
         AND (last_occurrence_at IS NULL OR last_occurrence_at < $1)",
    )
    .arg(At(at))
    .arg(schedule)
    .run(c)
    .await?;
    Ok(())
}
