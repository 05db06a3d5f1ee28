//! The SQLite store's workers and lease: SQLite has one writer, so a campaign has one runner at
//! a time and an execution exactly one worker. Its row records the process and counts what it
//! did, as on PostgreSQL, so that `campaign status` reads the same on both.

use super::*;
pub(super) use crate::store::sql::workers::tally;
use crate::store::sql::workers::worker_from_row;

#[async_trait]
impl WorkerStore for SqliteStore {
    fn several_workers(&self) -> bool {
        false
    }

    /// [`WorkerStore::start_worker`]: a new execution with its one worker (compare and swap of the
    /// lease); joining a live one is refused with what to do instead.
    async fn start_worker(&self, campaign: i64, how: &Enlist, me: &Process) -> Result<WorkerToken> {
        let (expected, abandon_message) = match how {
            // One worker per campaign: nobody can join a live run, so `judged_workers` says
            // nothing more than `expected`.
            Enlist::New {
                expected,
                abandon_message,
                ..
            } => (*expected, abandon_message.as_str()),
            Enlist::Join { execution } => {
                return Err(StoreError::Conflict(format!(
                    "campaign {campaign} is already running (execution {execution}), and a SQLite \
                     database allows one runner per campaign: wait for it, stop it with \
                     `munja campaign stop {campaign}`, or use PostgreSQL \
                     (database_url = \"postgres://…\") to run several workers on one campaign"
                )));
            }
        };
        let mut tx = self.write_tx().await?;
        let holder = lease_holder(&mut tx, campaign).await?;
        if holder != expected {
            return Err(StoreError::Conflict(format!(
                "campaign {campaign} was just started by another run (execution {})",
                holder.unwrap_or_default()
            )));
        }
        let at = self.now();
        // Close whatever an earlier holder left STARTED: a dead run is never left STARTED.
        for table in ["executions", "workers"] {
            let extra = if table == "executions" {
                ", exit_code = 'FAILED'"
            } else {
                ""
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET status = 'ABANDONED'{extra}, exit_message = ?, ended_at = ? \
                 WHERE campaign_id = ? AND status = 'STARTED'"
            )))
            .bind(abandon_message)
            .bind(&at)
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        }
        let execution: i64 = sqlx::query_scalar(
            "INSERT INTO executions (campaign_id, status, started_at, host, pid) \
             VALUES (?, 'STARTED', ?, ?, ?) RETURNING id",
        )
        .bind(campaign)
        .bind(&at)
        .bind(&me.host)
        .bind(me.pid)
        .fetch_one(&mut *tx)
        .await?;
        let worker: i64 = sqlx::query_scalar(
            "INSERT INTO workers (campaign_id, execution_id, status, host, pid, process, started_at, heartbeat_at) \
             VALUES (?1, ?2, 'STARTED', ?3, ?4, ?5, ?6, ?6) RETURNING id",
        )
        .bind(campaign)
        .bind(execution)
        .bind(&me.host)
        .bind(me.pid)
        .bind(&me.identity)
        .bind(&at)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE campaigns SET lease_execution = ?, lease_host = ?, lease_pid = ?, lease_process = ?, \
             lease_heartbeat_at = ?, status = 'STARTED', stop_requested = 0, exit_message = NULL WHERE id = ?",
        )
        .bind(execution)
        .bind(&me.host)
        .bind(me.pid)
        .bind(&me.identity)
        .bind(&at)
        .bind(campaign)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(WorkerToken {
            campaign,
            execution,
            worker,
        })
    }

    /// [`WorkerStore::heartbeat`].
    async fn heartbeat(&self, w: &WorkerToken) -> Result<(bool, bool)> {
        self.check_file()?;
        let at = self.now();
        let row: Option<(bool, bool)> = sqlx::query_as(
            "UPDATE campaigns SET lease_heartbeat_at = ? WHERE id = ? AND lease_execution = ? \
             RETURNING stop_requested, cancel_requested",
        )
        .bind(&at)
        .bind(w.campaign)
        .bind(w.execution)
        .fetch_optional(&self.writer)
        .await?;
        let row = row.ok_or(StoreError::LeaseLost {
            campaign: w.campaign,
            execution: w.execution,
        })?;
        sqlx::query("UPDATE workers SET heartbeat_at = ? WHERE id = ?")
            .bind(&at)
            .bind(w.worker)
            .execute(&self.writer)
            .await?;
        Ok(row)
    }

    async fn rescue(&self, _w: &WorkerToken, _timeout_secs: u64, _dead: &[i64]) -> Result<Rescued> {
        // One worker per campaign: a dead one's execution is taken over whole (`start_worker`).
        Ok(Rescued::default())
    }

    /// [`WorkerStore::workers`].
    async fn workers(&self, campaign: i64) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query("SELECT * FROM workers WHERE campaign_id = ? ORDER BY id")
            .bind(campaign)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(worker_from_row::<Sqlite>).collect()
    }

    /// [`WorkerStore::finish_worker`]: the one worker of its execution is always the last.
    async fn finish_worker(
        &self,
        w: &WorkerToken,
        status: &str,
        exit_message: &str,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        fence(&mut tx, w.campaign, w.execution).await?;
        sqlx::query(
            "UPDATE workers SET status = ?, exit_message = ?, ended_at = ? WHERE id = ? AND status = 'STARTED'",
        )
        .bind(status)
        .bind(exit_message)
        .bind(self.now())
        .bind(w.worker)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
