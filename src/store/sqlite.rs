//! The embedded default store: one SQLite file in WAL mode through sqlx.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, so it takes SQLite's single write lock
//! up front (waiting up to the busy timeout) instead of failing half-way when another process,
//! such as `munja campaign stop`, wrote in between.
//!
//! Only `init` (and the demo and bench) create the file. Every write first checks the file is
//! still the one opened (`file_identity`); a transaction SQLite rolled back by itself (a full
//! disk) never leaves its pooled connection looking busy, so the next write reports the real
//! error.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, Transaction};

use super::*;
use file_identity::FileIdentity;

mod buckets;
mod delivery;
mod file_identity;
mod import;
mod run;
mod workers;

pub(super) mod schedules;
mod sql_segments;

/// A campaign whose logs `purge` may delete (SQL condition on `campaigns c`).
const FINISHED: &str = "c.status IN ('COMPLETED', 'CANCELLED') AND c.lease_execution IS NULL";

/// Rows per multi-row INSERT (SQLite allows 32,766 bound parameters).
const INSERT_BATCH: usize = 1000;

/// Test and diagnostic knob: caps the database at this many pages (`PRAGMA max_page_count`),
/// so that "disk full" can be reproduced without filling a disk.
pub const MAX_PAGE_COUNT_ENV: &str = "MUNJA_SQLITE_MAX_PAGE_COUNT";

/// Attempts at recording the end of an execution.
const FINISH_TRIES: u32 = 5;

/// Rows per statement of a large UPDATE or DELETE inside one transaction: a single statement
/// over a whole campaign collects every rowid it changes in memory first.
const TX_BATCH: i64 = 10_000;

pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file as opened; every write checks it is still the same file.
    file: Option<FileIdentity>,
    clock: Clock,
}

impl SqliteStore {
    /// Opens the database at `url`; `create` makes it when it does not exist (only `init`, the
    /// demo and the bench do), otherwise a missing file is [`StoreError::NoDatabase`].
    pub async fn open(url: &str, create: bool) -> Result<SqliteStore> {
        let mut opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            .pragma("cache_size", "-8000");
        if let Some(v) = std::env::var_os(MAX_PAGE_COUNT_ENV) {
            let pages = v
                .to_str()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "{MAX_PAGE_COUNT_ENV}={v:?}: expected a whole number of pages, or unset it"
                    ))
                })?;
            opts = opts.pragma("max_page_count", pages.to_string());
        }
        let path = opts.get_filename().to_path_buf();
        let on_disk = !path.as_os_str().is_empty()
            && path != Path::new(":memory:")
            && !path.to_string_lossy().starts_with("file:");
        if on_disk && !create && !path.exists() {
            return Err(StoreError::NoDatabase(path.display().to_string()));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_release(|conn, _| {
                Box::pin(async move {
                    // A transaction SQLite ended by itself (it rolls back on SQLITE_FULL) stays
                    // open in sqlx's count, and the next BEGIN on this connection would fail
                    // with a transaction-depth error hiding the real one: run the rollback that
                    // a dropped transaction queued, and close the connection if still unsure.
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(opts)
            .await?;
        let file = if on_disk {
            let id = FileIdentity::of(&path).map_err(|e| {
                StoreError::NotFound(format!("cannot read {}: {e}", path.display()))
            })?;
            Some(id)
        } else {
            None
        };
        Ok(SqliteStore {
            pool,
            file,
            clock: Clock::default(),
        })
    }

    /// One attempt of [`Store::finish_execution`].
    async fn finish_once(
        &self,
        w: &WorkerToken,
        status: &str,
        exit_code: &str,
        exit_message: &str,
        campaign_status: &str,
    ) -> Result<()> {
        let (campaign, execution) = (w.campaign, w.execution);
        let mut tx = self.write_tx().await?;
        fence(&mut tx, campaign, execution).await?;
        sqlx::query(
            "UPDATE executions SET status = ?, exit_code = ?, exit_message = ?, ended_at = ? WHERE id = ?",
        )
        .bind(status)
        .bind(exit_code)
        .bind(exit_message)
        .bind(self.now())
        .bind(execution)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE campaigns SET status = ?, exit_message = ?, lease_execution = NULL, lease_host = NULL, \
             lease_pid = NULL, lease_process = NULL, lease_heartbeat_at = NULL, stop_requested = 0 WHERE id = ?",
        )
        .bind(campaign_status)
        .bind(exit_message)
        .bind(campaign)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fails when the database file was deleted or replaced since it was opened.
    fn check_file(&self) -> Result<()> {
        self.file.as_ref().map_or(Ok(()), FileIdentity::check)
    }

    /// Runs a `DELETE ... WHERE id IN (SELECT ... < ? LIMIT ?)` until it deletes nothing.
    async fn delete_in_batches(&self, sql: &str, before: &str, batch: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(before)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n == 0 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Deletes the attempts of finished campaigns older than `before`, walking each campaign's
    /// attempts once through the `(campaign_id, id)` index, `batch` ids per transaction (a scan
    /// of the table per batch would re-read every attempt that stays, batch after batch).
    async fn purge_attempts(&self, before: &str, batch: i64) -> Result<u64> {
        let finished: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT c.id FROM campaigns c WHERE {FINISHED} ORDER BY c.id"
        )))
        .fetch_all(&self.pool)
        .await?;
        let delete = format!(
            "DELETE FROM attempts WHERE campaign_id = ?1 AND id > ?2 AND id <= ?3 AND at < ?4 \
             AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = ?1 AND {FINISHED})"
        );
        let mut total = 0;
        for campaign in finished {
            let mut after = 0i64;
            loop {
                let upto: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(id) FROM (SELECT id FROM attempts WHERE campaign_id = ? AND id > ? \
                     ORDER BY id LIMIT ?)",
                )
                .bind(campaign)
                .bind(after)
                .bind(batch)
                .fetch_one(&self.pool)
                .await?;
                let Some(upto) = upto else { break };
                total += sqlx::query(sqlx::AssertSqlSafe(delete.as_str()))
                    .bind(campaign)
                    .bind(after)
                    .bind(upto)
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                after = upto;
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }

    /// The store's clock as the text every time column holds.
    fn now(&self) -> String {
        ts(self.clock.now())
    }

    /// Every write transaction starts here, after checking the file is still the one opened.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.check_file()?;
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// The execution holding the campaign's lease, if any; `NotFound` for an unknown campaign.
async fn lease_holder(tx: &mut Transaction<'static, Sqlite>, campaign: i64) -> Result<Option<i64>> {
    let holder: Option<Option<i64>> =
        sqlx::query_scalar("SELECT lease_execution FROM campaigns WHERE id = ?")
            .bind(campaign)
            .fetch_optional(&mut **tx)
            .await?;
    holder.ok_or_else(|| StoreError::NotFound(format!("no campaign with id {campaign}")))
}

/// Fails with `LeaseLost` unless `execution` holds the campaign's lease.
async fn fence(tx: &mut Transaction<'static, Sqlite>, campaign: i64, execution: i64) -> Result<()> {
    match lease_holder(tx, campaign).await {
        Ok(Some(holder)) if holder == execution => Ok(()),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(StoreError::LeaseLost {
            campaign,
            execution,
        }),
        Err(e) => Err(e),
    }
}

/// A campaign row; its lease's heartbeat as the caller's clock puts it (see [`Clock::to_local`]).
fn campaign_from_row(r: &sqlx::sqlite::SqliteRow, clock: &Clock) -> Result<Campaign> {
    let lease = match r.try_get::<Option<i64>, _>("lease_execution")? {
        Some(execution) => Some(Lease {
            execution,
            host: r
                .try_get::<Option<String>, _>("lease_host")?
                .unwrap_or_default(),
            pid: r
                .try_get::<Option<i64>, _>("lease_pid")?
                .unwrap_or_default(),
            process: r.try_get("lease_process")?,
            heartbeat_at: r
                .try_get::<Option<String>, _>("lease_heartbeat_at")?
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                .map(|t| clock.to_local(t.with_timezone(&Utc)))
                .unwrap_or_else(Utc::now),
        }),
        None => None,
    };
    Ok(Campaign {
        id: r.try_get("id")?,
        uid: r.try_get("uid")?,
        name: r.try_get("name")?,
        segment_name: r.try_get("segment_name")?,
        template_name: r.try_get("template_name")?,
        template_body: r.try_get("template_body")?,
        template_subject: r.try_get("template_subject")?,
        gateway: r.try_get("gateway")?,
        split: r.try_get("gateway_split")?,
        ad: r.try_get("ad")?,
        sender_number: r.try_get("sender_number")?,
        brand: r.try_get("brand")?,
        optout_number: r.try_get("optout_number")?,
        status: r.try_get("status")?,
        exit_message: r.try_get("exit_message")?,
        created_at: r.try_get("created_at")?,
        snapshot_at: r.try_get("snapshot_at")?,
        total: r.try_get("total")?,
        stop_requested: r.try_get("stop_requested")?,
        cancel_requested: r.try_get("cancel_requested")?,
        lease,
        scheduled_at: r.try_get("scheduled_at")?,
        schedule_id: r.try_get("schedule_id")?,
    })
}

fn claimed_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ClaimedMessage> {
    Ok(ClaimedMessage {
        id: r.try_get("id")?,
        msg_ref: r.try_get("ref")?,
        phone: r.try_get("phone")?,
        vars: r.try_get("vars")?,
        night_consent: r.try_get("night_consent")?,
        attempts: r.try_get("attempts")?,
        gateway: r.try_get("gateway").unwrap_or(None),
        // Only `in_doubt` selects it.
        in_doubt_at: r
            .try_get::<Option<String>, _>("in_doubt_at")
            .ok()
            .flatten()
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
    })
}

/// One page of the audit, each filter combination walking an index in output order, so a page
/// costs its own rows and never a sort of the whole campaign (ids and seqs of a campaign grow
/// together: its messages are inserted in seq order by one snapshot).
/// - `--phone`: the `(phone, sent_at)` index (the unary `+` keeps SQLite off the campaign
///   indexes), a handful of rows sorted;
/// - `--status`: the `(campaign_id, state, id)` index;
/// - neither: the `(campaign_id, seq)` unique index.
fn audit_query(f: &AuditFilter) -> QueryBuilder<Sqlite> {
    let mut qb = QueryBuilder::<Sqlite>::new(
        "SELECT id, seq, ref, phone, state, reason, attempts, gateway, gateway_id, last_attempt_at, \
         type, bytes, delivery, delivery_code, delivered_at FROM messages WHERE ",
    );
    match (&f.phone, f.state, f.delivery) {
        (Some(p), state, delivery) => {
            qb.push("phone = ")
                .push_bind(p.as_str())
                .push(" AND +campaign_id = ")
                .push_bind(f.campaign);
            if let Some(s) = state {
                qb.push(" AND +state = ").push_bind(s.as_str());
            }
            if let Some(d) = delivery {
                qb.push(" AND +delivery = ").push_bind(d.as_str());
            }
            qb.push(" AND seq > ")
                .push_bind(f.after_seq)
                .push(" ORDER BY seq");
        }
        // `--status delivered|undelivered`: the partial `(campaign_id, delivery, id)` index.
        (None, state, Some(d)) => {
            qb.push("campaign_id = ")
                .push_bind(f.campaign)
                .push(" AND delivery = ")
                .push_bind(d.as_str());
            if let Some(s) = state {
                qb.push(" AND +state = ").push_bind(s.as_str());
            }
            qb.push(" AND id > ")
                .push_bind(f.after_id)
                .push(" ORDER BY id");
        }
        (None, Some(s), None) => {
            qb.push("campaign_id = ")
                .push_bind(f.campaign)
                .push(" AND state = ")
                .push_bind(s.as_str())
                .push(" AND id > ")
                .push_bind(f.after_id)
                .push(" ORDER BY id");
        }
        (None, None, None) => {
            qb.push("campaign_id = ")
                .push_bind(f.campaign)
                .push(" AND seq > ")
                .push_bind(f.after_seq)
                .push(" ORDER BY seq");
        }
    }
    qb.push(" LIMIT ").push_bind(f.limit);
    qb
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn create_campaign(&self, c: &NewCampaign) -> Result<i64> {
        self.insert_campaign(c, None, None).await
    }

    async fn campaign(&self, id: i64) -> Result<Campaign> {
        let row = sqlx::query("SELECT * FROM campaigns WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no campaign with id {id}; `munja campaign list` shows the existing ones"
                ))
            })?;
        campaign_from_row(&row, &self.clock)
    }

    async fn campaigns(&self) -> Result<Vec<Campaign>> {
        let rows = sqlx::query("SELECT * FROM campaigns ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| campaign_from_row(r, &self.clock))
            .collect()
    }

    async fn counts(&self, campaign: i64) -> Result<Counts> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM messages WHERE campaign_id = ? GROUP BY state",
        )
        .bind(campaign)
        .fetch_all(&self.pool)
        .await?;
        let mut c = Counts::default();
        for (state, n) in rows {
            c.total += n;
            match MessageState::parse(&state) {
                Some(MessageState::Pending) => c.pending = n,
                Some(MessageState::Sending) => c.sending = n,
                Some(MessageState::InDoubt) => c.in_doubt = n,
                Some(MessageState::Sent) => c.sent = n,
                Some(MessageState::Failed) => c.failed = n,
                Some(MessageState::Suppressed) => c.suppressed = n,
                Some(MessageState::Cancelled) => c.cancelled = n,
                None => {}
            }
        }
        let delivery: Vec<(String, i64)> = sqlx::query_as(
            "SELECT delivery, COUNT(*) FROM messages WHERE campaign_id = ? \
             AND delivery IS NOT NULL GROUP BY delivery",
        )
        .bind(campaign)
        .fetch_all(&self.pool)
        .await?;
        crate::store::add_delivery_counts(&mut c, delivery);
        Ok(c)
    }

    async fn executions(&self, campaign: i64) -> Result<Vec<Execution>> {
        let rows = sqlx::query("SELECT * FROM executions WHERE campaign_id = ? ORDER BY id")
            .bind(campaign)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Execution {
                    id: r.try_get("id")?,
                    campaign_id: r.try_get("campaign_id")?,
                    status: r.try_get("status")?,
                    exit_code: r.try_get("exit_code")?,
                    exit_message: r.try_get("exit_message")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    host: r.try_get("host")?,
                    pid: r.try_get("pid")?,
                    read_count: r.try_get("read_count")?,
                    sent: r.try_get("sent")?,
                    failed: r.try_get("failed")?,
                    suppressed: r.try_get("suppressed")?,
                    commits: r.try_get("commits")?,
                })
            })
            .collect()
    }

    async fn request_stop(&self, campaign: i64) -> Result<()> {
        self.campaign(campaign).await?;
        sqlx::query(
            "UPDATE campaigns SET stop_requested = 1 WHERE id = ? AND lease_execution IS NOT NULL",
        )
        .bind(campaign)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn cancel(&self, campaign: i64, dead_lease: Option<i64>) -> Result<u64> {
        self.cancel_campaign(campaign, dead_lease).await
    }

    async fn delete_campaign(&self, campaign: i64, expected_lease: Option<i64>) -> Result<()> {
        self.delete(campaign, expected_lease).await
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    async fn take_tokens(
        &self,
        gateway: &str,
        need: u32,
        want: u32,
        rate: u32,
        capacity: u32,
    ) -> Result<u32> {
        self.take_bucket_tokens(gateway, need, want, rate, capacity)
            .await
    }

    async fn has_pending_without_consent(&self, campaign: i64) -> Result<bool> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM messages WHERE campaign_id = ? AND state = 'pending' AND night_consent = 0 LIMIT 1",
        )
        .bind(campaign)
        .fetch_optional(&self.pool)
        .await?;
        Ok(n.is_some())
    }

    async fn failure_reasons(&self, campaign: i64, limit: i64) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT COALESCE(reason, 'unknown'), COUNT(*) AS n FROM messages \
             WHERE campaign_id = ? AND state = 'failed' GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?",
        )
        .bind(campaign)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn gateway_messages(&self, campaign: i64) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT gateway, COUNT(*) FROM messages \
             WHERE campaign_id = ? AND gateway IS NOT NULL GROUP BY gateway ORDER BY gateway",
        )
        .bind(campaign)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn requeue_in_doubt(&self, campaign: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE messages SET state = 'pending', reason = NULL, retryable = 0 \
             WHERE campaign_id = ? AND state = 'in_doubt'",
        )
        .bind(campaign)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn requeue_retryable(&self, campaign: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE messages SET state = 'pending', retryable = 0 \
             WHERE campaign_id = ? AND state = 'failed' AND retryable = 1",
        )
        .bind(campaign)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn finish_execution(
        &self,
        w: &WorkerToken,
        status: &str,
        exit_code: &str,
        exit_message: &str,
        campaign_status: &str,
    ) -> Result<()> {
        // The end of a run is a small in-place update, and a run that cannot record it would
        // stay STARTED: retry what may pass (a full disk that a checkpoint or cleanup relieves,
        // a busy database), never a lost lease or a replaced file.
        let mut wait = Duration::from_millis(100);
        let mut tries = 1;
        loop {
            let r = self
                .finish_once(w, status, exit_code, exit_message, campaign_status)
                .await;
            match r {
                Err(e @ (StoreError::Db(_) | StoreError::Full)) if tries < FINISH_TRIES => {
                    tracing::warn!(error = %e, "recording the end of the execution failed; retrying");
                    if matches!(e, StoreError::Full) {
                        // Copy the WAL into the database and start it over, so that the retry
                        // reuses the WAL file's space instead of growing it on a full disk.
                        let _ = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                            .execute(&self.pool)
                            .await;
                    }
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let rows = audit_query(f).build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get("id")?,
                    seq: r.try_get("seq")?,
                    msg_ref: r.try_get("ref")?,
                    phone: r.try_get("phone")?,
                    status: r.try_get("state")?,
                    attempts: r.try_get("attempts")?,
                    gateway: r.try_get("gateway")?,
                    gateway_id: r.try_get("gateway_id")?,
                    error: r.try_get("reason")?,
                    last_attempt_at: r.try_get("last_attempt_at")?,
                    kind: r.try_get("type")?,
                    bytes: r.try_get("bytes")?,
                    delivery: r.try_get("delivery")?,
                    delivery_code: r.try_get("delivery_code")?,
                    delivered_at: r.try_get("delivered_at")?,
                })
            })
            .collect()
    }

    async fn purge(&self, before: DateTime<Utc>, batch: i64) -> Result<PurgeReport> {
        let before = ts(before);
        // Small auto-committed batches: a running campaign's writer waits for one batch at most.
        let attempts_deleted = self.purge_attempts(&before, batch).await?;
        let executions_deleted = self
            .delete_in_batches(
                &format!(
                    "DELETE FROM executions WHERE id IN (SELECT e.id FROM executions e \
                     JOIN campaigns c ON c.id = e.campaign_id WHERE {FINISHED} \
                     AND e.ended_at IS NOT NULL AND e.ended_at < ? LIMIT ?)"
                ),
                &before,
                batch,
            )
            .await?;
        let reports_deleted = self
            .delete_in_batches(
                &format!(
                    "DELETE FROM delivery_reports WHERE id IN (SELECT r.id FROM delivery_reports r \
                     LEFT JOIN messages m ON m.id = r.message_id \
                     LEFT JOIN campaigns c ON c.id = m.campaign_id \
                     WHERE r.received_at < ? AND (m.id IS NULL OR {FINISHED}) LIMIT ?)"
                ),
                &before,
                batch,
            )
            .await?;
        let usage = self.disk_usage().await?;
        let report = PurgeReport {
            attempts_deleted,
            executions_deleted,
            reports_deleted,
            db_bytes: usage.db_bytes,
            free_bytes: usage.free_bytes,
        };
        Ok(report)
    }

    async fn disk_usage(&self) -> Result<DiskUsage> {
        let mut conn = self.pool.acquire().await?;
        let mut pragma = async |name: &str| -> Result<u64> {
            let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
                .fetch_one(&mut *conn)
                .await?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        let page = pragma("page_size").await?;
        let pages = pragma("page_count").await?;
        let free = pragma("freelist_count").await?;
        Ok(DiskUsage {
            db_bytes: page * pages,
            free_bytes: page * free,
        })
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
