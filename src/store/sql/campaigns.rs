//! Campaigns on either database ([`CampaignStore`], written once for both): their rows, counts
//! and executions, the end of an execution, requeues, the shared rate budget, the audit's rows
//! and what a purge deletes. Each runs on the connection (or in the transaction, after the
//! caller's fencing check) the backend gives it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Transaction;

use super::{At, Backend, Bucket, Dialect, Stamp, Stmt, query};
use crate::store::{
    AuditFilter, AuditRow, Campaign, CampaignStore, Clock, Counts, DiskUsage, Execution,
    ExecutionEnd, Granted, Lease, MessageState, NewCampaign, PurgeReport, Result, StoreError, Take,
    WorkerToken, add_delivery_counts, granted_tokens,
};

#[async_trait]
impl<B: Backend> CampaignStore for B {
    fn clock(&self) -> &Clock {
        self.time()
    }

    async fn create_campaign(&self, c: &NewCampaign) -> Result<i64> {
        super::schedules::create(self, c, None, None).await
    }

    async fn campaign(&self, id: i64) -> Result<Campaign> {
        campaign::<B::DB>(&mut *self.read().await?, self.time(), id).await
    }

    async fn campaigns(&self) -> Result<Vec<Campaign>> {
        campaigns::<B::DB>(&mut *self.read().await?, self.time()).await
    }

    async fn counts(&self, campaign: i64) -> Result<Counts> {
        counts::<B::DB>(&mut *self.read().await?, campaign).await
    }

    async fn executions(&self, campaign: i64) -> Result<Vec<Execution>> {
        executions::<B::DB>(&mut *self.read().await?, campaign).await
    }

    async fn request_stop(&self, campaign: i64) -> Result<()> {
        request_stop::<B::DB>(&mut *self.read().await?, campaign).await
    }

    /// In one write transaction: `BEGIN IMMEDIATE` on SQLite, so that every process on the
    /// file draws from the same budget; on PostgreSQL the refill's upsert locks the bucket's
    /// row until commit, so concurrent takers (any worker, any campaign) queue on it.
    async fn take_tokens(&self, gateway: &str, take: Take) -> Result<Granted> {
        let mut tx = self.begin().await?;
        let at = std::time::Instant::now();
        let bucket = Bucket {
            gateway,
            take,
            clock: self.time(),
        };
        let tokens = B::DB::refill_bucket(&mut tx, bucket).await?;
        let granted = granted_tokens(tokens, take.need, take.want);
        if granted > 0 {
            sqlx::query::<B::DB>(
                "UPDATE gateway_buckets SET tokens = tokens - $1 WHERE gateway = $2",
            )
            .arg(f64::from(granted))
            .arg(gateway)
            .run(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Granted {
            tokens: granted,
            at,
        })
    }

    async fn has_pending_without_consent(&self, campaign: i64) -> Result<bool> {
        has_pending_without_consent::<B::DB>(&mut *self.read().await?, campaign).await
    }

    async fn failure_reasons(&self, campaign: i64, limit: i64) -> Result<Vec<(String, i64)>> {
        failure_reasons::<B::DB>(&mut *self.read().await?, campaign, limit).await
    }

    async fn gateway_messages(&self, campaign: i64) -> Result<Vec<(String, i64)>> {
        grouped::<B::DB>(
            &mut *self.read().await?,
            "SELECT gateway AS k, COUNT(*) AS n FROM messages \
             WHERE campaign_id = $1 AND gateway IS NOT NULL GROUP BY gateway ORDER BY gateway",
            campaign,
        )
        .await
    }

    async fn requeue_in_doubt(&self, campaign: i64) -> Result<u64> {
        requeue(
            self,
            campaign,
            "UPDATE messages SET state = 'pending', reason = NULL, retryable = FALSE \
             WHERE campaign_id = $1 AND state = 'in_doubt'",
        )
        .await
    }

    async fn requeue_retryable(&self, campaign: i64) -> Result<u64> {
        requeue(
            self,
            campaign,
            "UPDATE messages SET state = 'pending', retryable = FALSE \
             WHERE campaign_id = $1 AND state = 'failed' AND retryable = TRUE",
        )
        .await
    }

    /// Tried again while [`Backend::retry_finish`] says so, waiting twice as long each time.
    async fn finish_execution(&self, w: &WorkerToken, end: &ExecutionEnd<'_>) -> Result<()> {
        let mut wait = Duration::from_millis(100);
        let mut tries = 1;
        loop {
            let once = async || -> Result<()> {
                let mut tx = self.begin().await?;
                fence(&mut tx, w.campaign, w.execution).await?;
                finish::<B::DB>(&mut tx, self.time(), w, end).await?;
                end_lease::<B::DB>(&mut tx, w.campaign, end.campaign_status, end.exit_message)
                    .await?;
                tx.commit().await?;
                Ok(())
            };
            match once().await {
                Err(e) if self.retry_finish(&e, tries).await => {
                    tracing::warn!(error = %e, "recording the end of the execution failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let rows = self.audit_page(f).await?;
        rows.iter().map(audit_from_row::<B::DB>).collect()
    }

    /// Small auto-committed batches: a running campaign's writer waits for one batch at most.
    async fn purge(&self, before: DateTime<Utc>, batch: i64) -> Result<PurgeReport> {
        let attempts_deleted = self.purge_attempts(before, batch).await?;
        let executions_deleted =
            delete_in_batches(self, &purge_executions(), before, batch).await?;
        let reports_deleted = delete_in_batches(self, &purge_reports(), before, batch).await?;
        let usage = self.usage().await?;
        Ok(PurgeReport {
            attempts_deleted,
            executions_deleted,
            reports_deleted,
            db_bytes: usage.db_bytes,
            free_bytes: usage.free_bytes,
        })
    }

    async fn disk_usage(&self) -> Result<DiskUsage> {
        self.usage().await
    }
}

/// Runs a `DELETE … WHERE id IN (SELECT … < $1 LIMIT $2)` until it deletes nothing, each batch
/// committed by itself.
pub(crate) async fn delete_in_batches<B: Backend>(
    b: &B,
    sql: &str,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = query::<B::DB>(sql.to_string())
            .arg(At(before))
            .arg(batch)
            .run(&mut *b.read().await?)
            .await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// The execution holding the campaign's lease, if any, with the campaign row locked until the
/// transaction ends where the database locks rows ([`Dialect::ROW_LOCKS`]); `NotFound` for an
/// unknown campaign.
pub(crate) async fn lease_holder<DB: Dialect>(
    tx: &mut Transaction<'static, DB>,
    campaign: i64,
) -> Result<Option<i64>> {
    let lock = if DB::ROW_LOCKS { " FOR UPDATE" } else { "" };
    let row = query::<DB>(format!(
        "SELECT lease_execution FROM campaigns WHERE id = $1{lock}"
    ))
    .arg(campaign)
    .first(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("no campaign with id {campaign}")))?;
    DB::col(&row, "lease_execution")
}

/// Fails with `LeaseLost` unless `execution` holds the campaign's lease (the campaign row
/// locked first, see [`lease_holder`]).
pub(crate) async fn fence<DB: Dialect>(
    tx: &mut Transaction<'static, DB>,
    campaign: i64,
    execution: i64,
) -> Result<()> {
    match lease_holder(tx, campaign).await {
        Ok(Some(holder)) if holder == execution => Ok(()),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(StoreError::LeaseLost {
            campaign,
            execution,
        }),
        Err(e) => Err(e),
    }
}

/// A requeue: statement `sql` on campaign `$1`, in one write transaction that locks the
/// campaign row first where rows are locked (the order of every lock taker).
async fn requeue<B: Backend>(b: &B, campaign: i64, sql: &'static str) -> Result<u64> {
    let mut tx = b.begin().await?;
    if B::DB::ROW_LOCKS {
        lease_holder(&mut tx, campaign).await?;
    }
    let n = sqlx::query::<B::DB>(sql).arg(campaign).run(&mut tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// A campaign whose logs `purge` may delete (SQL condition on `campaigns c`).
pub(crate) const FINISHED: &str =
    "c.status IN ('COMPLETED', 'CANCELLED') AND c.lease_execution IS NULL";

fn no_campaign(id: i64) -> StoreError {
    StoreError::NotFound(format!(
        "no campaign with id {id}; `munja campaign list` shows the existing ones"
    ))
}

/// A campaign row, selected with [`Dialect::CAMPAIGN_COLS`].
fn campaign_from_row<DB: Dialect>(r: &DB::Row, clock: &Clock) -> Result<Campaign> {
    let lease = match DB::col::<Option<i64>>(r, "lease_execution")? {
        Some(execution) => Some(Lease {
            execution,
            host: DB::col::<Option<String>>(r, "lease_host")?.unwrap_or_default(),
            pid: DB::col::<Option<i64>>(r, "lease_pid")?.unwrap_or_default(),
            process: DB::col(r, "lease_process")?,
            heartbeat_at: DB::lease_heartbeat(r, clock)?,
        }),
        None => None,
    };
    Ok(Campaign {
        id: DB::col(r, "id")?,
        uid: DB::col(r, "uid")?,
        name: DB::col(r, "name")?,
        segment_name: DB::col(r, "segment_name")?,
        template_name: DB::col(r, "template_name")?,
        template_body: DB::col(r, "template_body")?,
        template_subject: DB::col(r, "template_subject")?,
        gateway: DB::col(r, "gateway")?,
        split: DB::col(r, "gateway_split")?,
        ad: DB::col(r, "ad")?,
        sender_number: DB::col(r, "sender_number")?,
        brand: DB::col(r, "brand")?,
        optout_number: DB::col(r, "optout_number")?,
        status: DB::col(r, "status")?,
        exit_message: DB::col(r, "exit_message")?,
        created_at: DB::col::<Stamp>(r, "created_at")?.0,
        snapshot_at: DB::col::<Option<Stamp>>(r, "snapshot_at")?.map(|t| t.0),
        total: DB::col(r, "total")?,
        stop_requested: DB::col(r, "stop_requested")?,
        cancel_requested: DB::col(r, "cancel_requested")?,
        lease,
        scheduled_at: DB::col::<Option<Stamp>>(r, "scheduled_at")?.map(|t| t.0),
        schedule_id: DB::col(r, "schedule_id")?,
    })
}

/// See [`crate::store::CampaignStore::campaign`].
pub(crate) async fn campaign<DB: Dialect>(
    c: &mut DB::Connection,
    clock: &Clock,
    id: i64,
) -> Result<Campaign> {
    let row = query::<DB>(format!(
        "SELECT {} FROM campaigns WHERE id = $1",
        DB::CAMPAIGN_COLS
    ))
    .arg(id)
    .first(c)
    .await?
    .ok_or_else(|| no_campaign(id))?;
    campaign_from_row::<DB>(&row, clock)
}

/// See [`crate::store::CampaignStore::campaigns`].
pub(crate) async fn campaigns<DB: Dialect>(
    c: &mut DB::Connection,
    clock: &Clock,
) -> Result<Vec<Campaign>> {
    let rows = query::<DB>(format!(
        "SELECT {} FROM campaigns ORDER BY id",
        DB::CAMPAIGN_COLS
    ))
    .all(c)
    .await?;
    rows.iter()
        .map(|r| campaign_from_row::<DB>(r, clock))
        .collect()
}

/// `(text, count)` rows of a `GROUP BY` query on one campaign.
async fn grouped<DB: Dialect>(
    c: &mut DB::Connection,
    sql: &'static str,
    campaign: i64,
) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query::<DB>(sql).arg(campaign).all(c).await?;
    rows.iter()
        .map(|r| Ok((DB::col(r, "k")?, DB::col(r, "n")?)))
        .collect()
}

/// See [`crate::store::CampaignStore::counts`].
pub(crate) async fn counts<DB: Dialect>(c: &mut DB::Connection, campaign: i64) -> Result<Counts> {
    let rows = grouped::<DB>(
        &mut *c,
        "SELECT state AS k, COUNT(*) AS n FROM messages WHERE campaign_id = $1 GROUP BY state",
        campaign,
    )
    .await?;
    let mut counts = Counts::default();
    for (state, n) in rows {
        counts.total += n;
        match MessageState::parse(&state) {
            Some(MessageState::Pending) => counts.pending = n,
            Some(MessageState::Sending) => counts.sending = n,
            Some(MessageState::InDoubt) => counts.in_doubt = n,
            Some(MessageState::Sent) => counts.sent = n,
            Some(MessageState::Failed) => counts.failed = n,
            Some(MessageState::Suppressed) => counts.suppressed = n,
            Some(MessageState::Cancelled) => counts.cancelled = n,
            None => {}
        }
    }
    let delivery = grouped::<DB>(
        c,
        "SELECT delivery AS k, COUNT(*) AS n FROM messages WHERE campaign_id = $1 \
         AND delivery IS NOT NULL GROUP BY delivery",
        campaign,
    )
    .await?;
    add_delivery_counts(&mut counts, delivery);
    Ok(counts)
}

/// See [`crate::store::CampaignStore::executions`].
pub(crate) async fn executions<DB: Dialect>(
    c: &mut DB::Connection,
    campaign: i64,
) -> Result<Vec<Execution>> {
    let rows = sqlx::query::<DB>("SELECT * FROM executions WHERE campaign_id = $1 ORDER BY id")
        .arg(campaign)
        .all(c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Execution {
                id: DB::col(r, "id")?,
                campaign_id: DB::col(r, "campaign_id")?,
                status: DB::col(r, "status")?,
                exit_code: DB::col(r, "exit_code")?,
                exit_message: DB::col(r, "exit_message")?,
                started_at: DB::col::<Stamp>(r, "started_at")?.0,
                ended_at: DB::col::<Option<Stamp>>(r, "ended_at")?.map(|t| t.0),
                host: DB::col(r, "host")?,
                pid: DB::col(r, "pid")?,
                read_count: DB::col(r, "read_count")?,
                sent: DB::col(r, "sent")?,
                failed: DB::col(r, "failed")?,
                suppressed: DB::col(r, "suppressed")?,
                commits: DB::col(r, "commits")?,
            })
        })
        .collect()
}

/// See [`crate::store::CampaignStore::request_stop`]: one conditional update, so a campaign that
/// starts meanwhile is either asked to stop or not yet running.
pub(crate) async fn request_stop<DB: Dialect>(c: &mut DB::Connection, campaign: i64) -> Result<()> {
    let found = sqlx::query::<DB>(
        "UPDATE campaigns SET stop_requested = (lease_execution IS NOT NULL) OR stop_requested \
         WHERE id = $1 RETURNING id",
    )
    .arg(campaign)
    .first(c)
    .await?;
    found.map(|_| ()).ok_or_else(|| no_campaign(campaign))
}

/// See [`crate::store::CampaignStore::has_pending_without_consent`].
pub(crate) async fn has_pending_without_consent<DB: Dialect>(
    c: &mut DB::Connection,
    campaign: i64,
) -> Result<bool> {
    let row = sqlx::query::<DB>(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE campaign_id = $1 AND state = 'pending' \
         AND night_consent = FALSE) AS found",
    )
    .arg(campaign)
    .first(c)
    .await?;
    row.map_or(Ok(false), |r| DB::col(&r, "found"))
}

/// See [`crate::store::CampaignStore::failure_reasons`].
pub(crate) async fn failure_reasons<DB: Dialect>(
    c: &mut DB::Connection,
    campaign: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query::<DB>(
        "SELECT COALESCE(reason, 'unknown') AS k, COUNT(*) AS n FROM messages \
         WHERE campaign_id = $1 AND state = 'failed' GROUP BY 1 ORDER BY n DESC, 1 LIMIT $2",
    )
    .arg(campaign)
    .arg(DB::limit(limit))
    .all(c)
    .await?;
    rows.iter()
        .map(|r| Ok((DB::col(r, "k")?, DB::col(r, "n")?)))
        .collect()
}

/// Records how worker `w`'s execution ended, in the caller's fenced transaction.
async fn finish<DB: Dialect>(
    tx: &mut DB::Connection,
    clock: &Clock,
    w: &WorkerToken,
    end: &ExecutionEnd<'_>,
) -> Result<()> {
    query::<DB>(format!(
        "UPDATE executions SET status = $1, exit_code = $2, exit_message = $3, ended_at = {} \
         WHERE id = $4",
        DB::now(5)
    ))
    .arg(end.status)
    .arg(end.exit_code)
    .arg(end.exit_message)
    .arg(w.execution)
    .now(clock)
    .run(tx)
    .await?;
    Ok(())
}

/// Releases the campaign's lease with its new status, in the caller's fenced transaction.
async fn end_lease<DB: Dialect>(
    tx: &mut DB::Connection,
    campaign: i64,
    status: &str,
    exit_message: &str,
) -> Result<()> {
    sqlx::query::<DB>(
        "UPDATE campaigns SET status = $1, exit_message = $2, lease_execution = NULL, \
         lease_host = NULL, lease_pid = NULL, lease_process = NULL, lease_heartbeat_at = NULL, \
         stop_requested = FALSE WHERE id = $3",
    )
    .arg(status)
    .arg(exit_message)
    .arg(campaign)
    .run(tx)
    .await?;
    Ok(())
}

/// The columns of an audit page ([`audit_from_row`]).
pub(crate) const AUDIT_COLUMNS: &str = "SELECT id, seq, ref, phone, state, reason, attempts, \
     gateway, gateway_id, last_attempt_at, type, bytes, delivery, delivery_code, delivered_at \
     FROM messages WHERE ";

/// A row of an audit page.
pub(crate) fn audit_from_row<DB: Dialect>(r: &DB::Row) -> Result<AuditRow> {
    Ok(AuditRow {
        id: DB::col(r, "id")?,
        seq: DB::col(r, "seq")?,
        msg_ref: DB::col(r, "ref")?,
        phone: DB::col(r, "phone")?,
        status: DB::col(r, "state")?,
        attempts: DB::col(r, "attempts")?,
        gateway: DB::col(r, "gateway")?,
        gateway_id: DB::col(r, "gateway_id")?,
        error: DB::col(r, "reason")?,
        last_attempt_at: DB::col::<Option<Stamp>>(r, "last_attempt_at")?.map(|t| t.0),
        kind: DB::col(r, "type")?,
        bytes: DB::col(r, "bytes")?,
        delivery: DB::col(r, "delivery")?,
        delivery_code: DB::col(r, "delivery_code")?,
        delivered_at: DB::col::<Option<Stamp>>(r, "delivered_at")?.map(|t| t.0),
    })
}

/// A batch of a purge: ended executions of finished campaigns older than `$1`, `$2` at most.
pub(crate) fn purge_executions() -> String {
    format!(
        "DELETE FROM executions WHERE id IN (SELECT e.id FROM executions e \
         JOIN campaigns c ON c.id = e.campaign_id WHERE {FINISHED} \
         AND e.ended_at IS NOT NULL AND e.ended_at < $1 LIMIT $2)"
    )
}

/// A batch of a purge: delivery reports older than `$1` of finished campaigns and of refs no
/// message has, `$2` at most.
pub(crate) fn purge_reports() -> String {
    format!(
        "DELETE FROM delivery_reports WHERE id IN (SELECT r.id FROM delivery_reports r \
         LEFT JOIN messages m ON m.id = r.message_id \
         LEFT JOIN campaigns c ON c.id = m.campaign_id \
         WHERE r.received_at < $1 AND (m.id IS NULL OR {FINISHED}) LIMIT $2)"
    )
}
