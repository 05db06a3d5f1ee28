//! A run's messages on either database: the snapshot of a CSV segment, the parts of a claim
//! that do not depend on how messages are picked, and the end of a cancel. Each runs in the
//! caller's transaction, after the caller's fencing check; the caller adds the counters.
//!
//! What stays in each backend: picking the pending messages (PostgreSQL locks them `FOR UPDATE
//! SKIP LOCKED`, so that workers claiming at once get other messages; SQLite has one writer),
//! the messages in doubt, and the writes of a chunk's outcomes (set-based: `UNNEST` arrays on
//! PostgreSQL, multi-row `VALUES` on SQLite).

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{At, Dialect, Stamp, Stmt, imports, query, segments};
use crate::store::{Claim, ClaimRequest, ClaimedMessage, Clock, Result, StoreError};

/// A claimed message from a row of `messages` (`gateway` only where the query selects it).
pub(crate) fn claimed<DB: Dialect>(r: &DB::Row) -> Result<ClaimedMessage> {
    Ok(ClaimedMessage {
        id: DB::col(r, "id")?,
        msg_ref: DB::col(r, "ref")?,
        phone: DB::col(r, "phone")?,
        vars: DB::col(r, "vars")?,
        night_consent: DB::col(r, "night_consent")?,
        attempts: DB::col(r, "attempts")?,
        // Only `in_doubt` selects it.
        gateway: DB::col(r, "gateway").unwrap_or(None),
        // Only `in_doubt` selects it.
        in_doubt_at: DB::col::<Option<At>>(r, "in_doubt_at")
            .unwrap_or(None)
            .map(|t| t.0),
    })
}

/// Snapshots the campaign's CSV segment into messages (numbers on the opt-out list
/// suppressed, then, with `consent_cutoff`, old or missing ad consents: see
/// [`imports::member_reason`]); returns (messages, suppressed), or `None` when it was
/// snapshotted before. On PostgreSQL the segment row is read `FOR SHARE`: that waits for an
/// import of this segment in flight, then reads its result.
pub(crate) async fn snapshot<DB: Dialect>(
    tx: &mut DB::Connection,
    clock: &Clock,
    campaign: i64,
    consent_cutoff: Option<DateTime<Utc>>,
) -> Result<Option<(u64, i64)>> {
    // Its old messages go first: a half-written snapshot cannot exist (this is one
    // transaction), but be explicit.
    let Some(uid) = segments::open_snapshot::<DB>(&mut *tx, campaign).await? else {
        return Ok(None);
    };
    let row =
        sqlx::query::<DB>("SELECT segment_name, segment_imported_at FROM campaigns WHERE id = $1")
            .arg(campaign)
            .first(&mut *tx)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
    let segment: String = DB::col(&row, "segment_name")?;
    let checked: Option<Stamp> = DB::col(&row, "segment_imported_at")?;
    let found = query::<DB>(format!(
        "SELECT id, imported_at, ad_consent_column FROM segments WHERE name = $1{}",
        if DB::ROW_LOCKS { " FOR SHARE" } else { "" }
    ))
    .arg(segment.as_str())
    .first(&mut *tx)
    .await?;
    let Some(found) = found else {
        return Err(StoreError::NotFound(format!(
            "segment {segment:?} of campaign {campaign} does not exist any more; import it again with \
             `munja segment import {segment} FILE`"
        )));
    };
    let segment_id: i64 = DB::col(&found, "id")?;
    let Stamp(imported) = DB::col(&found, "imported_at")?;
    if let Some(Stamp(checked)) = checked
        && checked != imported
    {
        return Err(StoreError::Conflict(format!(
            "segment {segment:?} was re-imported at {imported}, after campaign {campaign} was created \
             (its checks and estimate covered the import of {checked}); create a new campaign for the new list"
        )));
    }
    let missing = DB::col::<Option<bool>>(&found, "ad_consent_column")? == Some(true);
    let reason = imports::member_reason(missing, consent_cutoff.map(|_| 4));
    let q = query::<DB>(format!(
        "INSERT INTO messages (campaign_id, seq, ref, phone, vars, night_consent, state, reason) \
         SELECT $1, m.seq, CAST($2 AS TEXT) || '-' || m.seq, m.phone, m.vars, m.night_consent, \
                CASE WHEN {reason} IS NULL THEN 'pending' ELSE 'suppressed' END, {reason} \
         FROM segment_members m LEFT JOIN optouts o ON o.phone = m.phone \
         WHERE m.segment_id = $3 ORDER BY m.seq"
    ))
    .arg(campaign)
    .arg(uid)
    .arg(segment_id);
    let q = match consent_cutoff {
        Some(cutoff) => q.arg(At(cutoff)),
        None => q,
    };
    let total = q.run(&mut *tx).await?;
    let suppressed = segments::end_snapshot::<DB>(tx, clock, campaign, total as i64).await?;
    Ok(Some((total, suppressed)))
}

/// The rest of a claim, once the caller has picked (and on PostgreSQL locked) the pending
/// `rows`, each with an `opted_out` column: numbers opted out since the snapshot and numbers
/// over the frequency cap are suppressed, the others claimed (`sending`) for the request's
/// worker. Returns the claim; its suppressed messages are for the caller to count.
pub(crate) async fn claim<DB: Dialect>(
    tx: &mut DB::Connection,
    req: &ClaimRequest,
    rows: &[DB::Row],
) -> Result<Claim> {
    let w = req.worker;
    let mut claim = Claim::default();
    let mut opted = Vec::new();
    for r in rows {
        if DB::col::<bool>(r, "opted_out")? {
            opted.push(DB::col::<i64>(r, "id")?);
        } else {
            claim.messages.push(claimed::<DB>(r)?);
        }
    }
    let mut capped = Vec::new();
    if let (Some((count, since)), false) = (req.cap, claim.messages.is_empty()) {
        let phones: Vec<&str> = claim.messages.iter().map(|m| m.phone.as_str()).collect();
        let q = query::<DB>(format!(
            "SELECT m.phone FROM messages m JOIN campaigns c ON c.id = m.campaign_id \
             WHERE c.ad = TRUE AND m.state = 'sent' AND m.sent_at >= $1 AND m.phone {} \
             GROUP BY m.phone HAVING COUNT(*) >= $2",
            DB::in_list(3, phones.len())
        ))
        .arg(At(since))
        .arg(i64::from(count));
        let over: HashSet<String> = DB::bind_texts(q, &phones)
            .all(&mut *tx)
            .await?
            .iter()
            .map(|r| DB::col(r, "phone"))
            .collect::<Result<_>>()?;
        claim.messages.retain(|m| {
            let keep = !over.contains(&m.phone);
            if !keep {
                capped.push(m.id);
            }
            keep
        });
    }
    for (ids, reason) in [(&opted, "opted_out_during_run"), (&capped, "frequency_cap")] {
        if !ids.is_empty() {
            let q = query::<DB>(format!(
                "UPDATE messages SET state = 'suppressed', reason = $1 WHERE id {}",
                DB::in_list(2, ids.len())
            ))
            .arg(reason);
            DB::bind_ids(q, ids).run(&mut *tx).await?;
        }
    }
    if !claim.messages.is_empty() {
        let ids: Vec<i64> = claim.messages.iter().map(|m| m.id).collect();
        let q = query::<DB>(format!(
            "UPDATE messages SET state = 'sending', execution_id = $1, claimed_by = $2 WHERE id {}",
            DB::in_list(3, ids.len())
        ))
        .arg(w.execution)
        .arg(w.worker);
        DB::bind_ids(q, &ids).run(&mut *tx).await?;
    }
    claim.suppressed_opted_out = opted.len() as u64;
    claim.suppressed_capped = capped.len() as u64;
    Ok(claim)
}

/// The end of a cancel, in the caller's transaction: with `dead` (the lease holder's process
/// is gone) its STARTED workers and execution are closed as ABANDONED; then the campaign is
/// CANCELLED and its lease released, or, with a `live` holder, asked to stop and cancel.
pub(crate) async fn end_cancel<DB: Dialect>(
    tx: &mut DB::Connection,
    clock: &Clock,
    campaign: i64,
    dead: bool,
    live: bool,
) -> Result<()> {
    if dead {
        super::workers::wait_for_commits::<DB>(&mut *tx, campaign).await?;
        let now = clock.now();
        for table in ["workers", "executions"] {
            query::<DB>(format!(
                "UPDATE {table} SET status = 'ABANDONED', ended_at = {}, {}\
                 exit_message = 'its process was gone when the campaign was cancelled' \
                 WHERE campaign_id = $1 AND status = 'STARTED'",
                DB::now(2),
                if table == "executions" {
                    "exit_code = 'FAILED', "
                } else {
                    ""
                }
            ))
            .arg(campaign)
            .now_at(now)
            .run(&mut *tx)
            .await?;
        }
    }
    sqlx::query::<DB>(
        "UPDATE campaigns SET cancel_requested = TRUE, stop_requested = $2, \
         status = CASE WHEN $2 THEN status ELSE 'CANCELLED' END, \
         exit_message = CASE WHEN $2 THEN exit_message ELSE 'cancelled by operator' END, \
         lease_execution = CASE WHEN $2 THEN lease_execution END, \
         lease_host = CASE WHEN $2 THEN lease_host END, \
         lease_pid = CASE WHEN $2 THEN lease_pid END, \
         lease_heartbeat_at = CASE WHEN $2 THEN lease_heartbeat_at END \
         WHERE id = $1",
    )
    .arg(campaign)
    .arg(live)
    .run(tx)
    .await?;
    Ok(())
}
