//! The SQLite store's campaign life cycle: cancel, delete, snapshot, the messages in doubt,
//! claim and commit. Each write is one `BEGIN IMMEDIATE` transaction that checks the lease
//! first (fencing): SQLite has one writer, so a campaign has one worker at a time.

use super::workers::tally;
use super::*;

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
        let at = self.now();
        if holder.is_some() && holder == dead_lease {
            sqlx::query(
                "UPDATE executions SET status = 'ABANDONED', exit_code = 'FAILED', ended_at = ?, \
                 exit_message = 'its process was gone when the campaign was cancelled' \
                 WHERE campaign_id = ? AND status = 'STARTED'",
            )
            .bind(&at)
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE workers SET status = 'ABANDONED', ended_at = ?, \
                 exit_message = 'its process was gone when the campaign was cancelled' \
                 WHERE campaign_id = ? AND status = 'STARTED'",
            )
            .bind(&at)
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        }
        let live = holder.is_some() && holder != dead_lease;
        sqlx::query(
            "UPDATE campaigns SET cancel_requested = 1, stop_requested = ?2, \
             status = CASE WHEN ?2 THEN status ELSE 'CANCELLED' END, \
             exit_message = CASE WHEN ?2 THEN exit_message ELSE 'cancelled by operator' END, \
             lease_execution = CASE WHEN ?2 THEN lease_execution END, \
             lease_host = CASE WHEN ?2 THEN lease_host END, \
             lease_pid = CASE WHEN ?2 THEN lease_pid END, \
             lease_heartbeat_at = CASE WHEN ?2 THEN lease_heartbeat_at END \
             WHERE id = ?1",
        )
        .bind(campaign)
        .bind(live)
        .execute(&mut *tx)
        .await?;
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
    async fn snapshot(&self, w: &WorkerToken) -> Result<u64> {
        let (campaign, execution) = (w.campaign, w.execution);
        let mut tx = self.write_tx().await?;
        fence(&mut tx, campaign, execution).await?;
        let (uid, segment, done): (String, String, Option<String>) =
            sqlx::query_as("SELECT uid, segment_name, snapshot_at FROM campaigns WHERE id = ?")
                .bind(campaign)
                .fetch_one(&mut *tx)
                .await?;
        if done.is_some() {
            return Ok(0);
        }
        let checked: Option<String> =
            sqlx::query_scalar("SELECT segment_imported_at FROM campaigns WHERE id = ?")
                .bind(campaign)
                .fetch_one(&mut *tx)
                .await?;
        let found: Option<(i64, String)> =
            sqlx::query_as("SELECT id, imported_at FROM segments WHERE name = ?")
                .bind(&segment)
                .fetch_optional(&mut *tx)
                .await?;
        if let (Some(checked), Some((_, imported))) = (&checked, &found)
            && checked != imported
        {
            return Err(StoreError::Conflict(format!(
                "segment {segment:?} was re-imported at {imported}, after campaign {campaign} was created \
                 (its checks and estimate covered the import of {checked}); create a new campaign for the new list"
            )));
        }
        let segment_id = found.map(|(id, _)| id);
        let Some(segment_id) = segment_id else {
            return Err(StoreError::NotFound(format!(
                "segment {segment:?} of campaign {campaign} does not exist any more; import it again with \
                 `munja segment import {segment} FILE`"
            )));
        };
        // A half-written snapshot cannot exist (this is one transaction), but be explicit.
        sqlx::query("DELETE FROM messages WHERE campaign_id = ?")
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        let total = sqlx::query(
            "INSERT INTO messages (campaign_id, seq, ref, phone, vars, night_consent, state, reason) \
             SELECT ?1, m.seq, ?2 || '-' || m.seq, m.phone, m.vars, m.night_consent, \
                    CASE WHEN o.phone IS NULL THEN 'pending' ELSE 'suppressed' END, \
                    CASE WHEN o.phone IS NULL THEN NULL ELSE 'opted_out' END \
             FROM segment_members m LEFT JOIN optouts o ON o.phone = m.phone \
             WHERE m.segment_id = ?3 ORDER BY m.seq",
        )
        .bind(campaign)
        .bind(&uid)
        .bind(segment_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let suppressed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE campaign_id = ? AND state = 'suppressed'",
        )
        .bind(campaign)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE campaigns SET snapshot_at = ?, total = ? WHERE id = ?")
            .bind(self.now())
            .bind(total as i64)
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        tally(
            &mut tx,
            w,
            Tally {
                read: suppressed,
                suppressed,
                ..Tally::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(total)
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
        rows.iter().map(claimed_from_row).collect()
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(w.campaign)
            .bind(req.limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        let mut claim = Claim::default();
        let mut opted = Vec::new();
        for r in &rows {
            if r.try_get::<bool, _>("opted_out")? {
                opted.push(r.try_get::<i64, _>("id")?);
            } else {
                claim.messages.push(claimed_from_row(r)?);
            }
        }
        let mut capped = Vec::new();
        if let (Some((count, since)), false) = (req.cap, claim.messages.is_empty()) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT m.phone, COUNT(*) FROM messages m JOIN campaigns c ON c.id = m.campaign_id \
                 WHERE c.ad = 1 AND m.state = 'sent' AND m.sent_at >= ",
            );
            qb.push_bind(ts(since)).push(" AND m.phone IN (");
            let mut sep = qb.separated(", ");
            for m in &claim.messages {
                sep.push_bind(m.phone.clone());
            }
            qb.push(") GROUP BY m.phone");
            let over: std::collections::HashSet<String> = qb
                .build_query_as::<(String, i64)>()
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .filter(|(_, n)| *n >= i64::from(count))
                .map(|(p, _)| p)
                .collect();
            if !over.is_empty() {
                claim.messages.retain(|m| {
                    if over.contains(&m.phone) {
                        capped.push(m.id);
                        false
                    } else {
                        true
                    }
                });
            }
        }
        for (ids, reason) in [(&opted, "opted_out_during_run"), (&capped, "frequency_cap")] {
            if ids.is_empty() {
                continue;
            }
            let mut qb =
                QueryBuilder::<Sqlite>::new("UPDATE messages SET state = 'suppressed', reason = ");
            qb.push_bind(reason).push(" WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(*id);
            }
            qb.push(")");
            qb.build().execute(&mut *tx).await?;
        }
        if !claim.messages.is_empty() {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "UPDATE messages SET state = 'sending', execution_id = ",
            );
            qb.push_bind(w.execution)
                .push(", claimed_by = ")
                .push_bind(w.worker)
                .push(" WHERE id IN (");
            let mut sep = qb.separated(", ");
            for m in &claim.messages {
                sep.push_bind(m.id);
            }
            qb.push(")");
            qb.build().execute(&mut *tx).await?;
        }
        claim.suppressed_opted_out = opted.len() as u64;
        claim.suppressed_capped = capped.len() as u64;
        let suppressed = (opted.len() + capped.len()) as i64;
        // Read = made final by this execution; claimed messages count when committed.
        tally(
            &mut tx,
            &w,
            Tally {
                read: suppressed,
                suppressed,
                ..Tally::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(claim)
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
