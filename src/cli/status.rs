//! `campaign status` and `campaign list`: what the store knows of a campaign (counts, lease
//! holder, executions and their workers, SQL segment), printed as text or JSON.

use std::io::Write;

use crate::config::Config;
use crate::domain::model::{Campaign, Counts, Execution, WorkerRecord};
use crate::run::lease::Holder;
use crate::store::{CampaignSqlSegment, Store};

/// Everything `campaign status` shows of one campaign.
struct Status {
    c: Campaign,
    counts: Counts,
    execs: Vec<Execution>,
    workers: Vec<WorkerRecord>,
    sql: Option<CampaignSqlSegment>,
}

/// `campaign status`: counts, the lease holder and every execution with its workers.
pub(super) async fn campaign_status(
    store: &dyn Store,
    cfg: &Config,
    id: i64,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let st = Status {
        c: store.campaign(id).await?,
        counts: store.counts(id).await?,
        execs: store.executions(id).await?,
        workers: store.workers(id).await?,
        sql: store.campaign_sql_segment(id).await?,
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status_json(&st))?)?;
        return Ok(());
    }
    let holder_gone = match &st.c.lease {
        Some(_) => matches!(
            Holder::of(&st.c, cfg.policy.lease_timeout_secs, store).await?,
            Holder::Gone(..)
        ),
        None => false,
    };
    write_header(&st, out)?;
    write_counts(&st, holder_gone, out)?;
    write_executions(&st, out)?;
    Ok(())
}

fn status_json(st: &Status) -> serde_json::Value {
    let (c, counts) = (&st.c, &st.counts);
    serde_json::json!({
        "sql_segment": st.sql,
        "id": c.id, "name": c.name, "status": c.status, "exit_message": c.exit_message,
        "segment": c.segment_name, "template": c.template_name, "gateway": c.gateway,
        "gateways": c.gateways(), "split": c.split, "ad": c.ad,
        "total": counts.total, "pending": counts.pending, "sending": counts.sending,
        "in_doubt": counts.in_doubt,
        "delivered": counts.delivered, "undelivered": counts.undelivered,
        "sent": counts.sent, "failed": counts.failed, "suppressed": counts.suppressed,
        "cancelled": counts.cancelled, "executions": st.execs, "workers": st.workers,
        "lease": c.lease, "scheduled_at": c.scheduled_at, "schedule_id": c.schedule_id,
    })
}

/// Name, status, why it ended, its schedule, what it sends and from which SQL query.
fn write_header(st: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    let c = &st.c;
    writeln!(out, "campaign {} {:?}: {}", c.id, c.name, c.status)?;
    if let Some(m) = &c.exit_message {
        writeln!(out, "  {m}")?;
    }
    if let (Some(at), "SCHEDULED") = (&c.scheduled_at, c.status.as_str()) {
        writeln!(out, "  scheduled at {at} (started by `munja serve`)")?;
    }
    writeln!(
        out,
        "  segment {}, template {}, gateway {}{}, {}",
        c.segment_name,
        c.template_name,
        c.gateways().join(if c.split { " + " } else { " then " }),
        if c.split { " (split by weight)" } else { "" },
        if c.ad { "ad" } else { "informational" }
    )?;
    if let Some(l) = &st.sql {
        writeln!(
            out,
            "  SQL segment {} version {} on source {}: {}",
            l.segment.name,
            l.segment.version,
            l.segment.source,
            match (&l.as_of, l.rows_read) {
                (Some(at), Some(n)) => format!("read at {at} (:as_of), {n} rows"),
                _ => "read at the first run".to_string(),
            }
        )?;
    }
    Ok(())
}

/// Messages by state, delivery reports, messages left in doubt and the lease holder.
fn write_counts(st: &Status, holder_gone: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let (c, counts) = (&st.c, &st.counts);
    writeln!(
        out,
        "  total {}: pending {}, sending {}, in doubt {}, sent {}, failed {}, suppressed {}, cancelled {}",
        counts.total,
        counts.pending,
        counts.sending,
        counts.in_doubt,
        counts.sent,
        counts.failed,
        counts.suppressed,
        counts.cancelled
    )?;
    if counts.delivered + counts.undelivered > 0 {
        writeln!(
            out,
            "  delivery reports: delivered {}, undelivered {}, none yet {}",
            counts.delivered,
            counts.undelivered,
            counts.sent - counts.delivered - counts.undelivered
        )?;
    }
    if c.lease.is_none() && counts.sending > 0 {
        writeln!(
            out,
            "  {n} messages were left sending by a run that ended before recording them: \
             they are in doubt (the gateway may have them); `munja campaign run {id}` \
             settles them by lookup, `munja audit --campaign {id} --status sending` lists them",
            n = counts.sending,
            id = c.id
        )?;
    }
    if let Some(l) = &c.lease {
        writeln!(
            out,
            "  running: execution {} on {} pid {}, heartbeat {}{}",
            l.execution,
            l.host,
            l.pid,
            l.heartbeat_at.to_rfc3339(),
            if holder_gone {
                " (holder gone: `munja campaign run` takes over)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

/// Every execution, and its workers when it had several or lost one.
fn write_executions(st: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "  executions:")?;
    for e in &st.execs {
        writeln!(
            out,
            "   #{:<4} {:<10} {} → {}  read {} sent {} failed {} suppressed {} commits {}  {}",
            e.id,
            e.status,
            e.started_at,
            e.ended_at.as_deref().unwrap_or("…"),
            e.read_count,
            e.sent,
            e.failed,
            e.suppressed,
            e.commits,
            e.exit_message.as_deref().unwrap_or("")
        )?;
        let mine: Vec<_> = st
            .workers
            .iter()
            .filter(|w| w.execution_id == e.id)
            .collect();
        if mine.len() > 1 || mine.iter().any(|w| w.status == "ABANDONED") {
            for w in mine {
                writeln!(
                    out,
                    "      worker {:<4} {:<10} {} pid {}  sent {} failed {} suppressed {} commits {}  {}",
                    w.id,
                    w.status,
                    w.host,
                    w.pid,
                    w.sent,
                    w.failed,
                    w.suppressed,
                    w.commits,
                    w.exit_message.as_deref().unwrap_or("")
                )?;
            }
        }
    }
    Ok(())
}

/// `campaign list`.
pub(super) async fn campaign_list(
    store: &dyn Store,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let list = store.campaigns().await?;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|c| serde_json::json!({"id": c.id, "name": c.name, "status": c.status, "segment": c.segment_name, "template": c.template_name, "total": c.total, "created_at": c.created_at, "scheduled_at": c.scheduled_at}))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "{:>4}  {:<24} {:<10} {:<16} {:<16} {:>9}  CREATED",
            "ID", "NAME", "STATUS", "SEGMENT", "TEMPLATE", "MESSAGES"
        )?;
        for c in list {
            writeln!(
                out,
                "{:>4}  {:<24} {:<10} {:<16} {:<16} {:>9}  {}",
                c.id, c.name, c.status, c.segment_name, c.template_name, c.total, c.created_at
            )?;
        }
    }
    Ok(())
}
