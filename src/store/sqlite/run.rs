//! The SQLite store's campaign life cycle: cancel, delete, snapshot, the messages in doubt,
//! claim and commit. Each write is one `BEGIN IMMEDIATE` transaction that checks the lease
//! first (fencing): SQLite has one writer, so a campaign has one worker at a time.

use super::workers::tally;
use super::*;
use crate::store::sql::run as sql;
use crate::store::sql::workers::{claim_picked, snapshot_in};

impl SqliteStore {
    pub(super) async fn cancel_campaign(
        &self,
        campaign: i64,
        dead_lease: Option<i64>,
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT status, lease_execution FROM campaigns WHERE id = ?")
                .bind(campaign)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((status, holder)) = row else {
            return Err(StoreError::NotFound(format!(
                "no campaign with id {campaign}; `munja campaign list` shows the existing ones"
            )));
        };
        if status == "COMPLETED" || status == "CANCELLED" {
            return Err(StoreError::Conflict(format!(
                "campaign {campaign} is {status}: there is nothing left to cancel"
            )));
        }
        let mut n = 0;
        loop {
            let batch = sqlx::query(
                "UPDATE messages SET state = 'cancelled', reason = 'cancelled' WHERE id IN \
                 (SELECT id FROM messages WHERE campaign_id = ? AND state = 'pending' LIMIT ?)",
            )
            .bind(campaign)
            .bind(TX_BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            n += batch;
            if batch == 0 {
                break;
            }
        }
        let dead = holder.is_some() && holder == dead_lease;
        let live = holder.is_some() && holder != dead_lease;
        sql::end_cancel::<Sqlite>(&mut tx, &self.clock, campaign, dead, live).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub(super) async fn delete(&self, campaign: i64, expected_lease: Option<i64>) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let holder = lease_holder(&mut tx, campaign).await?;
        if holder.is_some() && holder != expected_lease {
            return Err(StoreError::Conflict(format!(
                "campaign {campaign} is running (execution {}); stop it first with `munja campaign stop {campaign}`",
                holder.unwrap_or_default()
            )));
        }
        // Still one transaction, but in batches: one DELETE of ten million rows first gathers
        // every rowid it will delete, in memory.
        for sql in [
            "DELETE FROM delivery_reports WHERE id IN (SELECT r.id FROM delivery_reports r \
             JOIN messages m ON m.id = r.message_id WHERE m.campaign_id = ?1 LIMIT ?2)",
            "DELETE FROM attempts WHERE id IN \
             (SELECT id FROM attempts WHERE campaign_id = ?1 LIMIT ?2)",
            "DELETE FROM messages WHERE id IN \
             (SELECT id FROM messages WHERE campaign_id = ?1 LIMIT ?2)",
        ] {
            while sqlx::query(sql)
                .bind(campaign)
                .bind(TX_BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0
            {}
        }
        for sql in [
            "DELETE FROM executions WHERE campaign_id = ?",
            "DELETE FROM campaigns WHERE id = ?",
        ] {
            sqlx::query(sql).bind(campaign).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl ChunkStore for SqliteStore {
    /// One writer: a commit and a claim would take turns anyway.
    fn commit_beside_claim(&self) -> bool {
        false
    }

    async fn snapshot(
        &self,
        w: &WorkerToken,
        consent_cutoff: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        fence(&mut tx, w.campaign, w.execution).await?;
        snapshot_in(tx, &self.clock, w, consent_cutoff).await
    }

    async fn in_doubt(
        &self,
        w: &WorkerToken,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>> {
        // One worker per campaign: every `sending` message is a dead run's, never a live one's.
        let campaign = w.campaign;
        let rows = sqlx::query(
            "SELECT id, ref, phone, vars, night_consent, attempts, gateway, \
                    CASE WHEN state = 'in_doubt' THEN last_attempt_at END AS in_doubt_at \
             FROM messages \
             WHERE campaign_id = ? AND id > ? AND (state = 'in_doubt' \
                   OR (state = 'sending' AND (claimed_by IS NULL OR claimed_by <> ?))) \
             ORDER BY id LIMIT ?",
        )
        .bind(campaign)
        .bind(after_id)
        .bind(w.worker)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sql::claimed::<Sqlite>).collect()
    }

    async fn claim_chunk(&self, req: ClaimRequest) -> Result<Claim> {
        let w = req.worker;
        let mut tx = self.write_tx().await?;
        fence(&mut tx, w.campaign, w.execution).await?;
        let sql = format!(
            "SELECT m.id, m.ref, m.phone, m.vars, m.night_consent, m.attempts, m.gateway, \
                    (o.phone IS NOT NULL) AS opted_out \
             FROM messages m LEFT JOIN optouts o ON o.phone = m.phone \
             WHERE m.campaign_id = ? AND m.state = 'pending' {} ORDER BY m.id LIMIT ?",
            if req.night_only {
                "AND m.night_consent = 1"
            } else {
                ""
            }
        );
        let picked = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(w.campaign)
            .bind(req.limit as i64);
        claim_picked(tx, &req, picked).await
    }

    async fn commit_chunk(&self, w: &WorkerToken, updates: &[MessageUpdate]) -> Result<()> {
        let (campaign, execution) = (w.campaign, w.execution);
        let mut tx = self.write_tx().await?;
        fence(&mut tx, campaign, execution).await?;
        let (mut sent, mut failed, mut suppressed) = (0i64, 0i64, 0i64);
        for u in updates {
            match u.state {
                MessageState::Sent => sent += 1,
                MessageState::Failed => failed += 1,
                MessageState::Suppressed => suppressed += 1,
                _ => {}
            }
        }
        let at = self.now();
        // One statement per INSERT_BATCH messages, not one per message.
        for batch in updates.chunks(INSERT_BATCH) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "WITH u(id, state, reason, retryable, gateway_id, kind, bytes, sends, last_at, gateway) AS (",
            );
            qb.push_values(batch, |mut b, u| {
                b.push_bind(u.id)
                    .push_bind(u.state.as_str())
                    .push_bind(u.reason.clone())
                    .push_bind(u.retryable)
                    .push_bind(u.gateway_id.clone())
                    .push_bind(u.kind.clone())
                    .push_bind(u.bytes)
                    .push_bind(u.sends())
                    .push_bind(u.attempts.last().map(|a| ts(a.at)))
                    .push_bind(u.gateway.clone());
            });
            qb.push(
                ") UPDATE messages SET state = u.state, reason = u.reason, retryable = u.retryable, \
                 gateway_id = COALESCE(u.gateway_id, messages.gateway_id), \
                 type = COALESCE(u.kind, messages.type), bytes = COALESCE(u.bytes, messages.bytes), \
                 attempts = messages.attempts + u.sends, \
                 last_attempt_at = COALESCE(u.last_at, messages.last_attempt_at), \
                 gateway = COALESCE(u.gateway, messages.gateway), \
                 sent_at = CASE WHEN u.state = 'sent' THEN COALESCE(u.last_at, ",
            )
            .push_bind(at.clone())
            .push(") ELSE messages.sent_at END FROM u WHERE messages.id = u.id");
            qb.build().execute(&mut *tx).await?;
        }
        let attempts: Vec<(i64, &AttemptRecord)> = updates
            .iter()
            .flat_map(|u| u.attempts.iter().map(move |a| (u.id, a)))
            .collect();
        for batch in attempts.chunks(INSERT_BATCH) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO attempts (message_id, campaign_id, execution_id, at, outcome, http_status, gateway_id, error, latency_ms, gateway) ",
            );
            qb.push_values(batch, |mut b, (id, a)| {
                b.push_bind(*id)
                    .push_bind(campaign)
                    .push_bind(execution)
                    .push_bind(ts(a.at))
                    .push_bind(a.outcome.clone())
                    .push_bind(a.http_status.map(i64::from))
                    .push_bind(a.gateway_id.clone())
                    .push_bind(a.error.clone())
                    .push_bind(a.latency_ms)
                    .push_bind(a.gateway.clone());
            });
            qb.build().execute(&mut *tx).await?;
        }
        tally(
            &mut tx,
            w,
            Tally {
                read: sent + failed + suppressed,
                sent,
                failed,
                suppressed,
                commits: 1,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
