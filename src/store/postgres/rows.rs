//! Reading PostgreSQL rows into the store's types, and the audit's page query. Times are
//! TIMESTAMPTZ in the database and RFC 3339 text (milliseconds, `Z`) in the types, as SQLite
//! stores them.

use super::*;

/// RFC 3339 text of an optional stored time.
pub(super) fn opt_ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

/// Columns of a worker row (`k`) with its heartbeat (`h`, its own row: migration 0011).
pub(super) const WORKER_COLS: &str = "k.*, h.heartbeat_at";

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
    crate::store::sql::run::claimed::<Postgres>(r)
}

/// One page of the audit, each filter combination walking an index in output order (as in
/// SQLite; ids and seqs of a campaign grow together, one snapshot inserts them in seq order):
/// `--phone` the `(phone, sent_at)` index, `--status` the `(campaign_id, state, id)` index,
/// neither the `(campaign_id, seq)` unique index.
pub(super) fn audit_query(f: &AuditFilter) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::<Postgres>::new(crate::store::sql::campaigns::AUDIT_COLUMNS);
    qb.push("campaign_id = ").push_bind(f.campaign);
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
