//! The command line of schedules and the server: `campaign create --at`, `campaign schedule`,
//! `munja schedule add|list|pause|resume|remove` and `munja serve`. Thin over [`crate::run::schedule`]
//! and [`crate::server`].

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::domain::model::NewSchedule;
use crate::run::campaign::{self, CreateRequest};
use crate::run::schedule;
use crate::server::{self, AppState};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Add a recurring schedule: at every occurrence of CRON (in policy.timezone) `munja serve`
    /// creates a new campaign from the segment as it is then, and runs it.
    Add {
        /// A unique name; each occurrence's campaign is named NAME-YYYYMMDD-HHMMSS.
        name: String,
        /// The segment, snapshotted anew at every occurrence.
        #[arg(long)]
        segment: String,
        /// The template (read from templates_dir at every occurrence).
        #[arg(long)]
        template: String,
        /// 5 fields ("0 10 * * MON": Mondays 10:00) or 6 with seconds first ("*/30 * * * * *").
        #[arg(long)]
        cron: String,
        /// Gateway name from munja.toml (default: the first one).
        #[arg(long)]
        gateway: Option<String>,
        /// Informational, not an ad.
        #[arg(long)]
        no_ad: bool,
    },
    /// List schedules with their next run times.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop creating campaigns for NAME (occurrences while paused are skipped, never made up).
    Pause { name: String },
    /// Resume NAME from its next occurrence.
    Resume { name: String },
    /// Delete NAME (the campaigns it created stay).
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: [server] listen, 127.0.0.1:8070). Examples:
    /// `munja serve`, `MUNJA_TOKEN=… munja serve --listen 0.0.0.0:8070`; then open the
    /// dashboard at http://ADDRESS/ or call the API under /v1 with `Authorization: Bearer`.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
}

/// `campaign create`, with `--at` a SCHEDULED campaign; prints the plan; returns the id.
pub async fn create(
    store: &dyn Store,
    cfg: &Config,
    req: &CreateRequest,
    at: Option<&str>,
) -> anyhow::Result<i64> {
    let (id, plan) = match at {
        Some(t) => {
            let at = schedule::parse_at(t, cfg.policy.timezone)?;
            let made = schedule::create_at(store, cfg, req, at).await?;
            eprintln!(
                "scheduled for {} (`munja serve` starts it)",
                at.with_timezone(&cfg.policy.timezone)
                    .format("%Y-%m-%d %H:%M:%S %Z")
            );
            made
        }
        None => campaign::create(store, cfg, req).await?,
    };
    eprintln!("{}", plan.summary());
    Ok(id)
}

/// `campaign schedule ID --at T | --now`.
pub async fn set(
    store: &dyn Store,
    cfg: &Config,
    id: i64,
    at: Option<&str>,
    now: bool,
) -> anyhow::Result<()> {
    let at = match at {
        Some(t) if !now => {
            let at = schedule::parse_at(t, cfg.policy.timezone)?;
            schedule::set(store, cfg, id, Some(at)).await?;
            at
        }
        _ => schedule::set_now(store, id).await?,
    };
    eprintln!(
        "campaign {id} scheduled for {} (`munja serve` starts it)",
        at.with_timezone(&cfg.policy.timezone)
            .format("%Y-%m-%d %H:%M:%S %Z")
    );
    Ok(())
}

pub async fn schedule_cmd(
    cmd: ScheduleCmd,
    cfg: &Config,
    store: Arc<dyn Store>,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match cmd {
        ScheduleCmd::Add {
            name,
            segment,
            template,
            cron,
            gateway,
            no_ad,
        } => {
            let s = NewSchedule {
                name,
                segment_name: segment,
                template_name: template,
                gateway,
                ad: !no_ad,
                cron,
            };
            schedule::add(&*store, cfg, &s).await?;
            let all = store.schedules().await?;
            let next = all
                .iter()
                .find(|x| x.name == s.name)
                .map(|x| schedule::next_runs(x, cfg.policy.timezone, Utc::now(), 1))
                .unwrap_or_default();
            eprintln!(
                "schedule {} added; next run {} (`munja serve` runs it)",
                s.name,
                next.first().map_or("never".into(), |t| t
                    .with_timezone(&cfg.policy.timezone)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string())
            );
        }
        ScheduleCmd::List { json } => list(&*store, cfg, json, out).await?,
        ScheduleCmd::Pause { name } => {
            store.set_schedule_paused(&name, true).await?;
            eprintln!("schedule {name} paused");
        }
        ScheduleCmd::Resume { name } => {
            // Occurrences during the pause are skipped, not made up.
            let s = store
                .schedules()
                .await?
                .into_iter()
                .find(|s| s.name == name);
            if let Some(s) = s {
                store.mark_occurrence(s.id, Utc::now()).await?;
            }
            store.set_schedule_paused(&name, false).await?;
            eprintln!("schedule {name} resumed");
        }
        ScheduleCmd::Remove { name } => {
            store.remove_schedule(&name).await?;
            eprintln!("schedule {name} removed; the campaigns it created stay");
        }
    }
    Ok(0)
}

async fn list(
    store: &dyn Store,
    cfg: &Config,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let tz = cfg.policy.timezone;
    let now = Utc::now();
    let all = store.schedules().await?;
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|s| {
                let next: Vec<String> = schedule::next_runs(s, tz, now, 3)
                    .into_iter()
                    .map(|t| t.with_timezone(&tz).to_rfc3339())
                    .collect();
                serde_json::json!({"name": s.name, "cron": s.cron, "segment": s.segment_name,
                    "template": s.template_name, "gateway": s.gateway, "ad": s.ad,
                    "paused": s.paused, "next_runs": next})
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<18} {:<14} {:<14} {:<7} NEXT RUN",
        "NAME", "CRON", "SEGMENT", "TEMPLATE", "STATE"
    )?;
    for s in all {
        let next = schedule::next_runs(&s, tz, now, 1)
            .first()
            .map_or("-".into(), |t| {
                t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
            });
        writeln!(
            out,
            "{:<20} {:<18} {:<14} {:<14} {:<7} {}",
            s.name,
            s.cron,
            s.segment_name,
            s.template_name,
            if s.paused { "paused" } else { "active" },
            if s.paused { "-".into() } else { next }
        )?;
    }
    Ok(())
}

/// `munja serve`: until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs, cfg: &Config, store: Arc<dyn Store>) -> anyhow::Result<i32> {
    let token = server::token_from_env(cfg)?;
    let listen = args.listen.unwrap_or(cfg.server.listen);
    crate::run::delivery::serve::warn_missing_secrets(cfg);
    let store_for_summary = store.clone();
    let state = AppState::new(store, Arc::new(cfg.clone()), token);
    let running = server::start(state, listen).await?;
    eprintln!("munja serve: listening on http://{}", running.addr);
    eprintln!(
        "  dashboard /, API /v1, metrics /metrics; SIGTERM or Ctrl-C stops it (runs stay resumable)"
    );
    for g in &cfg.gateways {
        eprintln!(
            "  delivery reports of {:?} ({}): http://{}/v1/dlr/{}",
            g.name, g.kind, running.addr, g.name
        );
    }
    print_result_sync(cfg);
    server::shutdown_on_signals(&running);
    running.wait().await.context("munja serve")?;
    crate::run::delivery::serve::report_summary(&*store_for_summary).await;
    Ok(0)
}

/// Says at start whether and how often NHN delivery results are synced.
fn print_result_sync(cfg: &Config) {
    let nhn: Vec<&str> = cfg
        .gateways
        .iter()
        .filter(|g| g.kind == "nhn-cloud")
        .map(|g| g.name.as_str())
        .collect();
    if nhn.is_empty() {
        return;
    }
    match cfg.server.sync_results_every_secs {
        0 => eprintln!(
            "  NHN delivery results of {nhn:?}: not synced ([server] sync_results_every_secs = 0); \
             run `munja campaign sync-results ID`"
        ),
        every => eprintln!(
            "  NHN delivery results of {nhn:?}: synced every {every}s for campaigns run in the \
             last {} days",
            cfg.server.sync_results_days
        ),
    }
}
