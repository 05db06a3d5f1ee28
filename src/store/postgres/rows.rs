//! Reading PostgreSQL rows into the store's types, and the audit's page query. Times are
//! TIMESTAMPTZ in the database and RFC 3339 text (milliseconds, `Z`) in the types, as SQLite
//! stores them.

use super::*;

/// Columns of a worker row (`k`) with its heartbeat (`h`, its own row: migration 0011).
pub(super) const WORKER_COLS: &str = "k.*, h.heartbeat_at";

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
