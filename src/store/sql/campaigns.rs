//! Campaigns on either database: their rows, counts and executions, the end of an execution,
//! requeues, the audit's rows and what a purge deletes. Each runs on the connection (or in
//! the transaction, after the caller's fencing check) the backend gives it.

use super::{Dialect, Stamp, Stmt, query};
use crate::store::{
    AuditRow, Campaign, Clock, Counts, Execution, Lease, MessageState, Result, StoreError,
    WorkerToken, add_delivery_counts,
};

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

/// See [`crate::store::Store::campaign`].
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

/// See [`crate::store::Store::campaigns`].
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

/// See [`crate::store::Store::counts`].
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

/// See [`crate::store::Store::executions`].
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

/// See [`crate::store::Store::request_stop`]: one conditional update, so a campaign that
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

/// See [`crate::store::Store::has_pending_without_consent`].
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

/// See [`crate::store::Store::failure_reasons`].
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

/// See [`crate::store::Store::requeue_in_doubt`] (in the caller's transaction).
pub(crate) async fn requeue_in_doubt<DB: Dialect>(
    tx: &mut DB::Connection,
    campaign: i64,
) -> Result<u64> {
    Ok(sqlx::query::<DB>(
        "UPDATE messages SET state = 'pending', reason = NULL, retryable = FALSE \
         WHERE campaign_id = $1 AND state = 'in_doubt'",
    )
    .arg(campaign)
    .run(tx)
    .await?)
}

/// See [`crate::store::Store::requeue_retryable`] (in the caller's transaction).
pub(crate) async fn requeue_retryable<DB: Dialect>(
    tx: &mut DB::Connection,
    campaign: i64,
) -> Result<u64> {
    Ok(sqlx::query::<DB>(
        "UPDATE messages SET state = 'pending', retryable = FALSE \
         WHERE campaign_id = $1 AND state = 'failed' AND retryable = TRUE",
    )
    .arg(campaign)
    .run(tx)
    .await?)
}

/// Records how worker `w`'s execution ended and releases the lease, in the caller's fenced
/// transaction.
pub(crate) async fn finish_execution<DB: Dialect>(
    tx: &mut DB::Connection,
    clock: &Clock,
    w: &WorkerToken,
    status: &str,
    exit_code: &str,
    exit_message: &str,
    campaign_status: &str,
) -> Result<()> {
    query::<DB>(format!(
        "UPDATE executions SET status = $1, exit_code = $2, exit_message = $3, ended_at = {} \
         WHERE id = $4",
        DB::now(5)
    ))
    .arg(status)
    .arg(exit_code)
    .arg(exit_message)
    .arg(w.execution)
    .now(clock)
    .run(&mut *tx)
    .await?;
    sqlx::query::<DB>(
        "UPDATE campaigns SET status = $1, exit_message = $2, lease_execution = NULL, \
         lease_host = NULL, lease_pid = NULL, lease_process = NULL, lease_heartbeat_at = NULL, \
         stop_requested = FALSE WHERE id = $3",
    )
    .arg(campaign_status)
    .arg(exit_message)
    .arg(w.campaign)
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
