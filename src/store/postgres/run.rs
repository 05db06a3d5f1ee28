//! The PostgreSQL store's campaign life cycle: create, snapshot, claim, commit, cancel and
//! delete (starting and fencing workers is in `workers`). Locks are always taken in one order,
//! campaign row, then worker rows, then messages, then executions, so they cannot deadlock;
//! claims and commits lock only their worker's row (shared) and their messages, so the workers
//! of one campaign write side by side.

use super::workers::{Fence, explain_lease_lost, fence_worker, tally};
use super::*;
use crate::store::sql::run as sql;
use crate::store::sql::workers::{claim_picked, snapshot_in};

impl PgStore {
    pub(super) async fn cancel_campaign(
        &self,
        campaign: i64,
        dead_lease: Option<i64>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT status, lease_execution FROM campaigns WHERE id = $1 FOR UPDATE",
        )
        .bind(campaign)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, holder)) = row else {
            return Err(no_campaign(campaign));
        };
        if status == "COMPLETED" || status == "CANCELLED" {
            return Err(StoreError::Conflict(format!(
                "campaign {campaign} is {status}: there is nothing left to cancel"
            )));
        }
        let n = sqlx::query(
            "UPDATE messages SET state = 'cancelled', reason = 'cancelled' \
             WHERE campaign_id = $1 AND state = 'pending'",
        )
        .bind(campaign)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let dead = holder.is_some() && holder == dead_lease;
        let live = holder.is_some() && holder != dead_lease;
        sql::end_cancel::<Postgres>(&mut tx, &self.clock, campaign, dead, live).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub(super) async fn delete(&self, campaign: i64, expected_lease: Option<i64>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let holder = lease_holder(&mut tx, campaign).await?;
        if let Some(h) = holder
            && holder != expected_lease
        {
            return Err(StoreError::Conflict(format!(
                "campaign {campaign} is running (execution {h}); stop it first with `munja campaign stop {campaign}`"
            )));
        }
        for sql in [
            "DELETE FROM delivery_reports r USING messages m \
             WHERE m.id = r.message_id AND m.campaign_id = $1",
            "DELETE FROM attempts WHERE campaign_id = $1",
            "DELETE FROM messages WHERE campaign_id = $1",
            "DELETE FROM executions WHERE campaign_id = $1",
            "DELETE FROM campaigns WHERE id = $1",
        ] {
            sqlx::query(sql).bind(campaign).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The message updates of a chunk as one array per column, for `UNNEST`.
#[derive(Default)]
struct UpdateColumns<'a> {
    id: Vec<i64>,
    state: Vec<&'static str>,
    reason: Vec<Option<&'a str>>,
    retryable: Vec<bool>,
    gateway_id: Vec<Option<&'a str>>,
    gateway: Vec<Option<&'a str>>,
    kind: Vec<Option<&'a str>>,
    bytes: Vec<Option<i64>>,
    sends: Vec<i64>,
    last_at: Vec<Option<DateTime<Utc>>>,
    sent: i64,
    failed: i64,
    suppressed: i64,
}

impl<'a> UpdateColumns<'a> {
    fn push(&mut self, u: &'a MessageUpdate) {
        match u.state {
            MessageState::Sent => self.sent += 1,
            MessageState::Failed => self.failed += 1,
            MessageState::Suppressed => self.suppressed += 1,
            _ => {}
        }
        self.id.push(u.id);
        self.state.push(u.state.as_str());
        self.reason.push(u.reason.as_deref());
        self.retryable.push(u.retryable);
        self.gateway_id.push(u.gateway_id.as_deref());
        self.gateway.push(u.gateway.as_deref());
        self.kind.push(u.kind.as_deref());
        self.bytes.push(u.bytes);
        self.sends.push(u.sends());
        self.last_at.push(u.attempts.last().map(|a| a.at));
    }
}

/// The attempts of a chunk as one array per column, for `UNNEST`.
#[derive(Default)]
struct AttemptColumns<'a> {
    message_id: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    outcome: Vec<&'a str>,
    http_status: Vec<Option<i32>>,
    gateway_id: Vec<Option<&'a str>>,
    error: Vec<Option<&'a str>>,
    latency_ms: Vec<i64>,
    gateway: Vec<Option<&'a str>>,
}

impl<'a> AttemptColumns<'a> {
    fn of(updates: &'a [MessageUpdate]) -> AttemptColumns<'a> {
        let mut c = AttemptColumns::default();
        for u in updates {
            for a in &u.attempts {
                c.message_id.push(u.id);
                c.at.push(a.at);
                c.outcome.push(&a.outcome);
                c.http_status.push(a.http_status.map(i32::from));
                c.gateway_id.push(a.gateway_id.as_deref());
                c.error.push(a.error.as_deref());
                c.latency_ms.push(a.latency_ms);
                c.gateway.push(a.gateway.as_deref());
            }
        }
        c
    }
}

#[async_trait]
impl ChunkStore for PgStore {
    /// Two backends: the commit holds the worker row `FOR KEY SHARE`, a claim `FOR NO KEY UPDATE`.
    fn commit_beside_claim(&self) -> bool {
        true
    }

    /// The campaign row first (it serializes the workers that snapshot at once), then the
    /// worker's fence: the lock order of a takeover.
    async fn snapshot(
        &self,
        w: &WorkerToken,
        consent_cutoff: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        let campaign = w.campaign;
        let mut tx = self.pool.begin().await?;
        lease_holder(&mut tx, campaign).await?;
        fence_worker(&mut tx, w, Fence::Exclusive).await?;
        snapshot_in(tx, &self.clock, w, consent_cutoff).await
    }

    async fn in_doubt(
        &self,
        w: &WorkerToken,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>> {
        self.claim_in_doubt(w, after_id, limit).await
    }

    /// Pending messages locked with `FOR UPDATE SKIP LOCKED`: workers claiming at once each
    /// get other messages, and none waits for another's claim.
    async fn claim_chunk(&self, req: ClaimRequest) -> Result<Claim> {
        let w = req.worker;
        let mut tx = self.pool.begin().await?;
        fence_worker(&mut tx, &w, Fence::Exclusive).await?;
        let picked = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH picked AS (SELECT id FROM messages WHERE campaign_id = $1 AND state = 'pending' {} \
                             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             SELECT m.id, m.ref, m.phone, m.vars, m.night_consent, m.attempts, m.gateway, \
                    (o.phone IS NOT NULL) AS opted_out \
             FROM picked JOIN messages m ON m.id = picked.id LEFT JOIN optouts o ON o.phone = m.phone \
             ORDER BY m.id",
            if req.night_only { "AND night_consent" } else { "" }
        )))
        .bind(w.campaign)
        .bind(req.limit as i64);
        claim_picked(tx, &req, picked).await
    }

    /// Every outcome of a chunk, its attempts and the counters: a few statements in one
    /// transaction fenced on the worker, whatever the size of the chunk. Each message is
    /// written only while this worker still has it claimed; otherwise nothing is.
    async fn commit_chunk(&self, w: &WorkerToken, updates: &[MessageUpdate]) -> Result<()> {
        let (campaign, execution) = (w.campaign, w.execution);
        let mut tx = self.pool.begin().await?;
        fence_worker(&mut tx, w, Fence::Commit).await?;
        let mut cols = UpdateColumns::default();
        for u in updates {
            cols.push(u);
        }
        let written = sqlx::query(
            "UPDATE messages m SET state = u.state, reason = u.reason, retryable = u.retryable, \
             gateway_id = COALESCE(u.gateway_id, m.gateway_id), type = COALESCE(u.kind, m.type), \
             bytes = COALESCE(u.bytes, m.bytes), attempts = m.attempts + u.sends, \
             last_attempt_at = COALESCE(u.last_at, m.last_attempt_at), \
             sent_at = CASE WHEN u.state = 'sent' THEN COALESCE(u.last_at, munja_now()) ELSE m.sent_at END, \
             gateway = COALESCE(u.gateway, m.gateway) \
             FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BOOLEAN[], $5::TEXT[], $6::TEXT[], \
                         $7::BIGINT[], $8::BIGINT[], $9::TIMESTAMPTZ[], $11::TEXT[]) \
                  AS u(id, state, reason, retryable, gateway_id, kind, bytes, sends, last_at, gateway) \
             WHERE m.id = u.id AND m.campaign_id = $10 AND m.claimed_by = $12",
        )
        .bind(&cols.id)
        .bind(&cols.state)
        .bind(&cols.reason)
        .bind(&cols.retryable)
        .bind(&cols.gateway_id)
        .bind(&cols.kind)
        .bind(&cols.bytes)
        .bind(&cols.sends)
        .bind(&cols.last_at)
        .bind(campaign)
        .bind(&cols.gateway)
        .bind(w.worker)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if written != updates.len() as u64 {
            // Some message is no longer this worker's: it was rescued. Write nothing.
            explain_lease_lost(&mut tx, w, &cols.id).await;
            return Err(StoreError::LeaseLost {
                campaign,
                execution,
            });
        }
        let a = AttemptColumns::of(updates);
        if !a.message_id.is_empty() {
            sqlx::query(
                "INSERT INTO attempts (message_id, campaign_id, execution_id, at, outcome, \
                 http_status, gateway_id, error, latency_ms, gateway) \
                 SELECT u.message_id, $1, $2, u.at, u.outcome, u.http_status, u.gateway_id, u.error, \
                        u.latency_ms, u.gateway \
                 FROM UNNEST($3::BIGINT[], $4::TIMESTAMPTZ[], $5::TEXT[], $6::INTEGER[], $7::TEXT[], \
                             $8::TEXT[], $9::BIGINT[], $10::TEXT[]) \
                      AS u(message_id, at, outcome, http_status, gateway_id, error, latency_ms, gateway)",
            )
            .bind(campaign)
            .bind(execution)
            .bind(&a.message_id)
            .bind(&a.at)
            .bind(&a.outcome)
            .bind(&a.http_status)
            .bind(&a.gateway_id)
            .bind(&a.error)
            .bind(&a.latency_ms)
            .bind(&a.gateway)
            .execute(&mut *tx)
            .await?;
        }
        tally(
            &mut tx,
            w,
            Tally {
                read: cols.sent + cols.failed + cols.suppressed,
                sent: cols.sent,
                failed: cols.failed,
                suppressed: cols.suppressed,
                commits: 1,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
