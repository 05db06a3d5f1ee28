//! The PostgreSQL store's workers: several `campaign run` processes on one campaign.
//!
//! A worker enlists by starting a new execution (compare and swap of the campaign's lease, as
//! on SQLite) or by joining the live one. Every write it makes afterwards is fenced on its own
//! row: [`fence_worker`] locks it and requires it STARTED and its execution still
//! holding the lease. A takeover or a rescue locks that row `FOR UPDATE` before it changes
//! it, so it waits for a write in flight, and every later write of the stale worker fails
//! with `LeaseLost`; a chunk's commit holds the row more lightly ([`Fence::Commit`]) so that
//! it runs beside its worker's next claim. Workers never lock the campaign row to write, so
//! their claims and commits run side by side.
//!
//! A claim expires with its worker: the worker's heartbeat older than the lease timeout on the
//! database clock (or its process seen gone on this host) lets any surviving worker close it as
//! ABANDONED and take over its `sending` messages, in one transaction ([`WorkerStore::rescue`]).
//!
//! The heartbeat has a row of its own (`worker_heartbeats`, migration 0011) that no commit,
//! claim, snapshot or end locks, and a connection pool of its own (`PgStore::beats`): however
//! long its worker's commit waits for locks, the heartbeat neither waits for it nor for a
//! connection it holds, so a slow commit never costs a live worker its lease. The lease's age
//! is that of the latest beat of any worker of its execution.

use super::*;
pub(super) use crate::store::sql::workers::tally;
use crate::store::sql::workers::worker_from_row;

/// How a write holds its worker's row while it runs ([`fence_worker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fence {
    /// `FOR NO KEY UPDATE`: a takeover or a rescue waits for the write, and the worker's
    /// other writes of this kind take turns. Claims, snapshots, in-doubt claims and the end.
    Exclusive,
    /// `FOR KEY SHARE`, for a chunk's commit: it runs beside the same worker's next claim
    /// (the claim loop overlaps them), and they meet only at the counters, which the commit
    /// updates last. A plain `UPDATE` of the row does not wait for this lock, so whatever
    /// closes a worker locks its row `FOR UPDATE` first: a rescue (`SKIP LOCKED`: a worker
    /// whose commit is in flight is alive) and a takeover or a cancel
    /// ([`crate::store::sql::workers::wait_for_commits`]: the commit ends, committed or rolled
    /// back, before its messages are judged). Per message, a commit also writes only what
    /// this worker still has claimed.
    Commit,
}

/// Fails with `LeaseLost` unless worker `w` is STARTED and its execution holds the lease; the
/// worker row stays locked, as `fence` says, until the transaction ends (other workers'
/// writes never wait for it).
pub(super) async fn fence_worker(
    tx: &mut Transaction<'static, Postgres>,
    w: &WorkerToken,
    fence: Fence,
) -> Result<()> {
    let lock = match fence {
        Fence::Exclusive => "FOR NO KEY UPDATE OF k",
        Fence::Commit => "FOR KEY SHARE OF k",
    };
    let ok: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT k.status = 'STARTED' AND c.lease_execution IS NOT DISTINCT FROM k.execution_id \
         FROM workers k JOIN campaigns c ON c.id = k.campaign_id \
         WHERE k.id = $1 AND k.campaign_id = $2 AND k.execution_id = $3 {lock}"
    )))
    .bind(w.worker)
    .bind(w.campaign)
    .bind(w.execution)
    .fetch_optional(&mut **tx)
    .await?;
    match ok {
        Some(true) => Ok(()),
        _ => {
            explain_lease_lost(tx, w, &[]).await;
            Err(StoreError::LeaseLost {
                campaign: w.campaign,
                execution: w.execution,
            })
        }
    }
}

/// Logs why worker `w` lost its place: its row (status and exit message, which names the
/// worker that rescued it), the execution now holding the lease, and, for `ids` of its
/// claimed messages, those no longer claimed by it (state and claimer). An operator reads it
/// beside the `LeaseLost` error; a failure to read is only logged.
pub(super) async fn explain_lease_lost(
    tx: &mut Transaction<'static, Postgres>,
    w: &WorkerToken,
    ids: &[i64],
) {
    let why = async {
        let (status, exit, lease): (Option<String>, Option<String>, Option<i64>) = sqlx::query_as(
            "SELECT k.status, k.exit_message, c.lease_execution FROM campaigns c \
                 LEFT JOIN workers k ON k.id = $1 WHERE c.id = $2",
        )
        .bind(w.worker)
        .bind(w.campaign)
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or_default();
        let lost: Vec<(i64, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, state, claimed_by FROM messages WHERE id = ANY($1) \
             AND claimed_by IS DISTINCT FROM $2 ORDER BY id LIMIT 5",
        )
        .bind(ids)
        .bind(w.worker)
        .fetch_all(&mut **tx)
        .await?;
        Ok::<_, sqlx::Error>((status, exit, lease, lost))
    };
    match why.await {
        Ok((status, exit, lease, lost)) => tracing::warn!(
            worker = w.worker,
            execution = w.execution,
            ?status,
            ?exit,
            lease_execution = ?lease,
            ?lost,
            "this worker lost its place in the run"
        ),
        Err(e) => tracing::warn!(error = %e, "could not read why this worker lost its place"),
    }
}

/// Fails with a conflict when `execution` has a STARTED worker that is not in `judged`: it
/// joined after its execution was judged gone, so the execution may be alive after all and the
/// caller must judge again. The caller holds the campaign row, which a join locks too, so no
/// worker can join between this check and the takeover.
async fn joined_since(
    tx: &mut Transaction<'static, Postgres>,
    execution: i64,
    judged: &[i64],
) -> Result<()> {
    let started: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM workers WHERE execution_id = $1 AND status = 'STARTED' ORDER BY id",
    )
    .bind(execution)
    .fetch_all(&mut **tx)
    .await?;
    match started.iter().find(|id| !judged.contains(id)) {
        None => Ok(()),
        Some(id) => Err(StoreError::Conflict(format!(
            "worker {id} joined execution {execution} after it was judged abandoned"
        ))),
    }
}

impl PgStore {
    /// Closes what an earlier holder left STARTED and starts a new execution holding the lease.
    async fn new_execution(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        campaign: i64,
        me: &Process,
        abandon_message: &str,
    ) -> Result<i64> {
        // Workers first: a commit in flight holds its worker row, then updates the execution's
        // counters; taking the rows in the other order would deadlock with it. And it waits for
        // such a commit to end, so that the messages it holds are not skipped by the settlement.
        crate::store::sql::workers::wait_for_commits::<Postgres>(&mut **tx, campaign).await?;
        for sql in [
            "UPDATE workers SET status = 'ABANDONED', exit_message = $1, \
             ended_at = munja_now() WHERE campaign_id = $2 AND status = 'STARTED'",
            "UPDATE executions SET status = 'ABANDONED', exit_code = 'FAILED', exit_message = $1, \
             ended_at = munja_now() WHERE campaign_id = $2 AND status = 'STARTED'",
        ] {
            sqlx::query(sql)
                .bind(abandon_message)
                .bind(campaign)
                .execute(&mut **tx)
                .await?;
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO executions (campaign_id, status, started_at, host, pid) \
             VALUES ($1, 'STARTED', munja_now(), $2, $3) RETURNING id",
        )
        .bind(campaign)
        .bind(&me.host)
        .bind(me.pid)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE campaigns SET lease_execution = $1, lease_host = $2, lease_pid = $3, \
             lease_process = $4, lease_heartbeat_at = munja_now(), status = 'STARTED', \
             stop_requested = FALSE, exit_message = NULL WHERE id = $5",
        )
        .bind(id)
        .bind(&me.host)
        .bind(me.pid)
        .bind(&me.identity)
        .bind(campaign)
        .execute(&mut **tx)
        .await?;
        Ok(id)
    }

    /// [`ChunkStore::in_doubt`]: claims the messages this worker must settle by lookup, skipping
    /// those another transaction holds.
    ///
    /// Two statements, because PostgreSQL's row-lock recheck cannot judge a claimer. When
    /// another worker takes a message over and commits between this statement's snapshot and
    /// its row lock, `FOR UPDATE` rechecks the new row version, but the test "its claimer is not
    /// a live worker" (an anti-join, whether written `LEFT JOIN … IS NULL` or `NOT EXISTS`) is
    /// then evaluated without the workers' rows, and passes: a live worker's message was taken
    /// (reproduced with two sessions; it was the flake of `workers::three_workers_killed_at_random`).
    /// So the first statement only locks candidates, and the second, whose snapshot is taken
    /// after the locks, claims those of them that still qualify: no one can change them between.
    pub(super) async fn claim_in_doubt(
        &self,
        w: &WorkerToken,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>> {
        const QUALIFIES: &str = "m.state IN ('in_doubt', 'sending') \
            AND NOT EXISTS (SELECT 1 FROM workers k WHERE k.id = m.claimed_by \
                            AND k.status = 'STARTED' AND (m.state = 'sending' OR k.id <> $2))";
        let mut after_id = after_id;
        loop {
            let mut tx = self.pool.begin().await?;
            fence_worker(&mut tx, w, Fence::Exclusive).await?;
            let locked: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT m.id FROM messages m WHERE m.campaign_id = $1 AND m.id > $3 AND {QUALIFIES} \
                 ORDER BY m.id LIMIT $4 FOR UPDATE OF m SKIP LOCKED"
            )))
            .bind(w.campaign)
            .bind(w.worker)
            .bind(after_id)
            .bind(row_limit(limit))
            .fetch_all(&mut *tx)
            .await?;
            let Some(&last) = locked.last() else {
                return Ok(Vec::new());
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE messages m SET claimed_by = $2 WHERE m.id = ANY($1) AND {QUALIFIES} \
                 RETURNING id, ref, phone, vars, night_consent, attempts, gateway, \
                           CASE WHEN state = 'in_doubt' THEN last_attempt_at END AS in_doubt_at"
            )))
            .bind(&locked)
            .bind(w.worker)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            if rows.is_empty() {
                // Every candidate was another live worker's after all: look further on, since
                // an empty answer tells the caller there is nothing left to settle.
                after_id = last;
                continue;
            }
            let mut claimed = rows
                .iter()
                .map(claimed_from_row)
                .collect::<Result<Vec<_>>>()?;
            claimed.sort_by_key(|m| m.id);
            return Ok(claimed);
        }
    }
}

#[async_trait]
impl WorkerStore for PgStore {
    fn several_workers(&self) -> bool {
        true
    }

    /// [`WorkerStore::start_worker`].
    async fn start_worker(&self, campaign: i64, how: &Enlist, me: &Process) -> Result<WorkerToken> {
        let mut tx = self.pool.begin().await?;
        let holder = lease_holder(&mut tx, campaign).await?;
        let execution = match how {
            Enlist::Join { execution } => {
                if holder != Some(*execution) {
                    return Err(StoreError::Conflict(format!(
                        "execution {execution} of campaign {campaign} has just ended or been taken over"
                    )));
                }
                *execution
            }
            Enlist::New {
                expected,
                abandon_message,
                judged_workers,
            } => {
                if holder != *expected {
                    return Err(StoreError::Conflict(format!(
                        "campaign {campaign} was just started by another run (execution {})",
                        holder.unwrap_or_default()
                    )));
                }
                if let Some(execution) = expected {
                    joined_since(&mut tx, *execution, judged_workers).await?;
                }
                self.new_execution(&mut tx, campaign, me, abandon_message)
                    .await?
            }
        };
        let worker: i64 = sqlx::query_scalar(
            "INSERT INTO workers (campaign_id, execution_id, status, host, pid, process, started_at) \
             VALUES ($1, $2, 'STARTED', $3, $4, $5, munja_now()) RETURNING id",
        )
        .bind(campaign)
        .bind(execution)
        .bind(&me.host)
        .bind(me.pid)
        .bind(&me.identity)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO worker_heartbeats (worker_id, heartbeat_at) VALUES ($1, munja_now())",
        )
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(WorkerToken {
            campaign,
            execution,
            worker,
        })
    }

    /// [`WorkerStore::heartbeat`]: one statement on the heartbeat's own pool, writing only the
    /// worker's heartbeat row; the worker's status and the campaign's lease and requests are
    /// read, never locked, so no commit, claim, snapshot or end in flight delays it.
    async fn heartbeat(&self, w: &WorkerToken) -> Result<(bool, bool)> {
        let row: Option<(bool, bool, bool)> = sqlx::query_as(
            "WITH beat AS ( \
                UPDATE worker_heartbeats h SET heartbeat_at = munja_now() FROM workers k \
                WHERE h.worker_id = $1 AND k.id = h.worker_id AND k.status = 'STARTED' \
                RETURNING h.worker_id) \
             SELECT stop_requested, cancel_requested, EXISTS (SELECT 1 FROM beat) \
             FROM campaigns WHERE id = $2 AND lease_execution = $3",
        )
        .bind(w.worker)
        .bind(w.campaign)
        .bind(w.execution)
        .fetch_optional(&self.beats)
        .await?;
        match row {
            Some((stop, cancel, true)) => Ok((stop, cancel)),
            _ => Err(StoreError::LeaseLost {
                campaign: w.campaign,
                execution: w.execution,
            }),
        }
    }

    /// [`WorkerStore::rescue`].
    async fn rescue(&self, w: &WorkerToken, timeout_secs: u64, dead: &[i64]) -> Result<Rescued> {
        let mut tx = self.pool.begin().await?;
        fence_worker(&mut tx, w, Fence::Exclusive).await?;
        // SKIP LOCKED: a worker in the middle of a write, or of a beat, is alive, whatever its
        // heartbeat says.
        let gone: Vec<i64> = sqlx::query_scalar(
            "SELECT k.id FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id \
             WHERE k.campaign_id = $1 AND k.status = 'STARTED' AND k.id <> $2 \
             AND (h.heartbeat_at < munja_now() - make_interval(secs => $3) OR k.id = ANY($4)) \
             FOR UPDATE OF k, h SKIP LOCKED",
        )
        .bind(w.campaign)
        .bind(w.worker)
        .bind(timeout_secs as f64)
        .bind(dead)
        .fetch_all(&mut *tx)
        .await?;
        let mut rescued = Rescued::default();
        if !gone.is_empty() {
            sqlx::query(
                "UPDATE workers SET status = 'ABANDONED', ended_at = munja_now(), \
                 exit_message = 'no heartbeat within lease_timeout_secs (or its process was gone); \
                 its claims were rescued by worker ' || $2 WHERE id = ANY($1)",
            )
            .bind(&gone)
            .bind(w.worker.to_string())
            .execute(&mut *tx)
            .await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages \
                 WHERE campaign_id = $2 AND state = 'sending' AND claimed_by = ANY($1)",
            )
            .bind(&gone)
            .bind(w.campaign)
            .fetch_one(&mut *tx)
            .await?;
            rescued.workers = gone.len() as u64;
            rescued.messages = n as u64;
        }
        // The other workers left STARTED: how many, how many are silent, and how many with a
        // lower id are alive (see `Rescued`).
        // Silent: no beat for a third of the timeout (a live worker beats every sixth).
        let third = timeout_secs as f64 / 3.0;
        (
            rescued.others_started,
            rescued.others_silent,
            rescued.lower_alive,
            rescued.lower_beat_age_ms,
        ) = sqlx::query_as(
            "SELECT COUNT(*), \
             COUNT(*) FILTER (WHERE h.heartbeat_at < munja_now() - make_interval(secs => $3)), \
             COUNT(*) FILTER (WHERE k.id < $2 AND h.heartbeat_at >= munja_now() - make_interval(secs => $3)), \
             MIN((EXTRACT(EPOCH FROM munja_now() - h.heartbeat_at) * 1000)::BIGINT) FILTER (WHERE k.id < $2) \
             FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id \
             WHERE k.campaign_id = $1 AND k.status = 'STARTED' AND k.id <> $2",
        )
        .bind(w.campaign)
        .bind(w.worker)
        .bind(third)
        .fetch_one(&mut *tx)
        .await?;
        rescued.others_sending = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages m JOIN workers k ON k.id = m.claimed_by \
             WHERE m.campaign_id = $1 AND m.state = 'sending' AND k.status = 'STARTED' AND k.id <> $2",
        )
        .bind(w.campaign)
        .bind(w.worker)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rescued)
    }

    /// [`WorkerStore::workers`].
    async fn workers(&self, campaign: i64) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKER_COLS} FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id \
             WHERE k.campaign_id = $1 ORDER BY k.id"
        )))
        .bind(campaign)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from_row::<Postgres>).collect()
    }

    /// [`WorkerStore::finish_worker`]: the campaign row serializes the last workers of an execution,
    /// so exactly one of them learns it was the last.
    async fn finish_worker(
        &self,
        w: &WorkerToken,
        status: &str,
        exit_message: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let holder = lease_holder(&mut tx, w.campaign).await?;
        if holder != Some(w.execution) {
            return Err(StoreError::LeaseLost {
                campaign: w.campaign,
                execution: w.execution,
            });
        }
        let ended: Option<i64> = sqlx::query_scalar(
            "UPDATE workers SET status = $1, exit_message = $2, ended_at = munja_now() \
             WHERE id = $3 AND status = 'STARTED' RETURNING id",
        )
        .bind(status)
        .bind(exit_message)
        .bind(w.worker)
        .fetch_optional(&mut *tx)
        .await?;
        if ended.is_none() {
            return Err(StoreError::LeaseLost {
                campaign: w.campaign,
                execution: w.execution,
            });
        }
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM workers WHERE execution_id = $1 AND status = 'STARTED'",
        )
        .bind(w.execution)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(others == 0)
    }
}
