//! Workers on either database: the counters a worker and its execution keep, and a worker's
//! row. Enlisting, heartbeats and rescue stay in each backend (several workers with row locks
//! on PostgreSQL, one on SQLite).

use chrono::{DateTime, Utc};
use sqlx::Transaction;

use super::{Dialect, Q, Stamp, Stmt, query};
use crate::store::{Claim, ClaimRequest, Clock, Result, Tally, WorkerRecord, WorkerToken};

/// Snapshots worker `w`'s campaign in the caller's fenced transaction `tx` ([`super::run::snapshot`]),
/// tallies the suppressed as read, and commits; the messages inserted (0 when the campaign was
/// snapshotted before).
pub(crate) async fn snapshot_in<DB: Dialect>(
    mut tx: Transaction<'static, DB>,
    clock: &Clock,
    w: &WorkerToken,
    consent_cutoff: Option<DateTime<Utc>>,
) -> Result<u64> {
    let Some((total, suppressed)) =
        super::run::snapshot::<DB>(&mut tx, clock, w.campaign, consent_cutoff).await?
    else {
        return Ok(0);
    };
    tally(&mut tx, w, Tally::suppressed(suppressed)).await?;
    tx.commit().await?;
    Ok(total)
}

/// Ends a claim in the caller's fenced transaction `tx`: the pending messages the `picked`
/// query returns become the request's worker's ([`super::run::claim`]), those suppressed
/// count as read, and the claim commits.
pub(crate) async fn claim_picked<DB: Dialect>(
    mut tx: Transaction<'static, DB>,
    req: &ClaimRequest,
    picked: Q<'_, DB>,
) -> Result<Claim> {
    let rows = picked.all(&mut tx).await?;
    let claim = super::run::claim::<DB>(&mut tx, req, &rows).await?;
    let suppressed = (claim.suppressed_opted_out + claim.suppressed_capped) as i64;
    // Read = made final by this execution; claimed messages count when committed.
    tally(&mut tx, &req.worker, Tally::suppressed(suppressed)).await?;
    tx.commit().await?;
    Ok(claim)
}

/// Waits, in the caller's transaction, for the commits in flight of campaign `campaign`'s
/// STARTED workers, before the caller closes them (a takeover, or a cancel whose holder is
/// gone). On PostgreSQL a chunk's commit holds its worker row `FOR KEY SHARE`, so that it runs
/// beside its worker's next claim; a plain `UPDATE` of the row does not wait for that lock,
/// `FOR UPDATE` does. Without this wait a takeover could close a killed worker while the
/// worker's last commit still held its chunk's messages (the server had not yet seen the
/// client gone): the takeover's settlement by lookup skips locked messages, and once that
/// commit rolled back they stayed `sending` to the end of the run. SQLite has one writer:
/// nothing is in flight there.
pub(crate) async fn wait_for_commits<DB: Dialect>(
    c: &mut DB::Connection,
    campaign: i64,
) -> Result<()> {
    if DB::ROW_LOCKS {
        query::<DB>(
            "SELECT id FROM workers WHERE campaign_id = $1 AND status = 'STARTED' FOR UPDATE"
                .into(),
        )
        .arg(campaign)
        .all(c)
        .await?;
    }
    Ok(())
}

/// Adds `t` to the counters of worker `w` and of its execution, in the caller's transaction:
/// the worker's row first, the lock order of every PostgreSQL writer (see `postgres::run`).
/// Nothing to add writes nothing: a claim that suppressed nothing (the usual one) does not
/// lock the execution's row, which every worker of the execution shares.
pub(crate) async fn tally<DB: Dialect>(
    tx: &mut Transaction<'static, DB>,
    w: &WorkerToken,
    t: Tally,
) -> Result<()> {
    if t == Tally::default() {
        return Ok(());
    }
    for (table, id) in [("workers", w.worker), ("executions", w.execution)] {
        query::<DB>(format!(
            "UPDATE {table} SET read_count = read_count + $1, sent = sent + $2, failed = failed + $3, \
             suppressed = suppressed + $4, commits = commits + $5 WHERE id = $6"
        ))
        .arg(t.read)
        .arg(t.sent)
        .arg(t.failed)
        .arg(t.suppressed)
        .arg(t.commits)
        .arg(id)
        .run(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A worker's row, with its `heartbeat_at` (on PostgreSQL from its own row, migration 0011).
pub(crate) fn worker_from_row<DB: Dialect>(r: &DB::Row) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: DB::col(r, "id")?,
        execution_id: DB::col(r, "execution_id")?,
        status: DB::col(r, "status")?,
        exit_message: DB::col(r, "exit_message")?,
        host: DB::col(r, "host")?,
        pid: DB::col(r, "pid")?,
        process: DB::col(r, "process")?,
        started_at: DB::col::<Stamp>(r, "started_at")?.0,
        heartbeat_at: DB::col::<Stamp>(r, "heartbeat_at")?.0,
        ended_at: DB::col::<Option<Stamp>>(r, "ended_at")?.map(|t| t.0),
        read_count: DB::col(r, "read_count")?,
        sent: DB::col(r, "sent")?,
        failed: DB::col(r, "failed")?,
        suppressed: DB::col(r, "suppressed")?,
        commits: DB::col(r, "commits")?,
    })
}
