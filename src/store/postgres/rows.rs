//! Reading PostgreSQL rows into the store's types, and the audit's page query. Times are
//! TIMESTAMPTZ in the database and RFC 3339 text (milliseconds, `Z`) in the types, as SQLite
//! stores them.

use super::*;

/// RFC 3339 text of an optional stored time.
pub(super) fn opt_ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

/// Columns of a campaign row plus the age of its lease by the store's clock, read at the call
/// (`munja_clock_now()`, migration 0008): since the latest heartbeat of any worker of the
/// execution holding it (its own row, migration 0011), or since the execution started.
pub(super) const CAMPAIGN_COLS: &str = "*, (EXTRACT(EPOCH FROM (munja_clock_now() - GREATEST(lease_heartbeat_at, \
     (SELECT MAX(h.heartbeat_at) FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id \
      WHERE k.execution_id = campaigns.lease_execution)))) * 1000)::BIGINT AS lease_age_ms";

/// Columns of a worker row (`k`) with its heartbeat (`h`, its own row: migration 0011).
pub(super) const WORKER_COLS: &str = "k.*, h.heartbeat_at";

pub(super) fn campaign_from_row(r: &PgRow) -> Result<Campaign> {
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
            heartbeat_at: Utc::now()
                - chrono::Duration::milliseconds(
                    r.try_get::<Option<i64>, _>("lease_age_ms")?
                        .unwrap_or_default(),
                ),
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
        created_at: ts(r.try_get("created_at")?),
        snapshot_at: opt_ts(r.try_get("snapshot_at")?),
        total: r.try_get("total")?,
        stop_requested: r.try_get("stop_requested")?,
        cancel_requested: r.try_get("cancel_requested")?,
        lease,
        scheduled_at: opt_ts(r.try_get("scheduled_at")?),
        schedule_id: r.try_get("schedule_id")?,
    })
}

pub(super) fn execution_from_row(r: &PgRow) -> Result<Execution> {
    Ok(Execution {
        id: r.try_get("id")?,
        campaign_id: r.try_get("campaign_id")?,
        status: r.try_get("status")?,
        exit_code: r.try_get("exit_code")?,
        exit_message: r.try_get("exit_message")?,
        started_at: ts(r.try_get("started_at")?),
        ended_at: opt_ts(r.try_get("ended_at")?),
        host: r.try_get("host")?,
        pid: r.try_get("pid")?,
        read_count: r.try_get("read_count")?,
        sent: r.try_get("sent")?,
        failed: r.try_get("failed")?,
        suppressed: r.try_get("suppressed")?,
        commits: r.try_get("commits")?,
    })
}

pub(super) fn worker_from_row(r: &PgRow) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: r.try_get("id")?,
        execution_id: r.try_get("execution_id")?,
        status: r.try_get("status")?,
        exit_message: r.try_get("exit_message")?,
        host: r.try_get("host")?,
        pid: r.try_get("pid")?,
        process: r.try_get("process")?,
        started_at: ts(r.try_get("started_at")?),
        heartbeat_at: ts(r.try_get("heartbeat_at")?),
        ended_at: opt_ts(r.try_get("ended_at")?),
        read_count: r.try_get("read_count")?,
        sent: r.try_get("sent")?,
        failed: r.try_get("failed")?,
        suppressed: r.try_get("suppressed")?,
        commits: r.try_get("commits")?,
    })
}

pub(super) fn claimed_from_row(r: &PgRow) -> Result<ClaimedMessage> {
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
            .try_get::<Option<DateTime<Utc>>, _>("in_doubt_at")
            .unwrap_or(None),
    })
}

pub(super) fn audit_from_row(r: &PgRow) -> Result<AuditRow> {
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
        last_attempt_at: opt_ts(r.try_get("last_attempt_at")?),
        kind: r.try_get("type")?,
        bytes: r.try_get("bytes")?,
        delivery: r.try_get("delivery")?,
        delivery_code: r.try_get("delivery_code")?,
        delivered_at: opt_ts(r.try_get("delivered_at")?),
    })
}

/// One page of the audit, each filter combination walking an index in output order (as in
/// SQLite; ids and seqs of a campaign grow together, one snapshot inserts them in seq order):
/// `--phone` the `(phone, sent_at)` index, `--status` the `(campaign_id, state, id)` index,
/// neither the `(campaign_id, seq)` unique index.
pub(super) fn audit_query(f: &AuditFilter) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT id, seq, ref, phone, state, reason, attempts, gateway, gateway_id, last_attempt_at, \
         type, bytes, delivery, delivery_code, delivered_at FROM messages WHERE campaign_id = ",
    );
    qb.push_bind(f.campaign);
    match (&f.phone, f.state, f.delivery) {
        (Some(p), state, delivery) => {
            qb.push(" AND phone = ").push_bind(p.as_str());
            if let Some(s) = state {
                qb.push(" AND state = ").push_bind(s.as_str());
            }
            if let Some(d) = delivery {
                qb.push(" AND delivery = ").push_bind(d.as_str());
            }
            qb.push(" AND seq > ")
                .push_bind(f.after_seq)
                .push(" ORDER BY seq");
        }
        // `--status delivered|undelivered`: the partial `(campaign_id, delivery, id)` index.
        (None, state, Some(d)) => {
            qb.push(" AND delivery = ").push_bind(d.as_str());
            if let Some(s) = state {
                qb.push(" AND state = ").push_bind(s.as_str());
            }
            qb.push(" AND id > ")
                .push_bind(f.after_id)
                .push(" ORDER BY id");
        }
        (None, Some(s), None) => {
            qb.push(" AND state = ")
                .push_bind(s.as_str())
                .push(" AND id > ")
                .push_bind(f.after_id)
                .push(" ORDER BY id");
        }
        (None, None, None) => {
            qb.push(" AND seq > ")
                .push_bind(f.after_seq)
                .push(" ORDER BY seq");
        }
    }
    qb.push(" LIMIT ").push_bind(row_limit(f.limit));
    qb
}
