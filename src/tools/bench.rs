//! `munja bench`: throughput, peak memory per phase and resume latency, measured end to end.
//!
//! It generates a segment CSV and, with `--optouts N`, an opt-out list of N numbers (every tenth
//! recipient is on it, the rest of the list are other numbers), both streamed to disk. Each phase
//! then runs as its own `munja` process, exactly the command an operator types (segment import,
//! opt-out import, campaign create, campaign run, status, audit export, audit of one number,
//! opt-out check, purge, delete), against the in-process gateway simulator with the rate limit
//! out of the way, and reports each one's wall time and peak RSS (its own `VmHWM`, sampled while
//! it runs), so every figure is that command's alone, the simulator excluded.
//! With `--resume-at`, the run is stopped once that many messages are sent, and the bench
//! measures how long a resumed run takes to commit its first chunk.
//!
//! Before the run it measures the machine's two ceilings for the run's shape ([`ceiling`]):
//! a bare HTTP load loop and the store's claims and commits alone; the report gives munja's
//! rate as a share of each.

mod ceiling;
mod child;
mod inputs;
pub mod kannel;
mod peak;
mod report;
mod segment;

pub use kannel::Received;
pub use peak::{PEAK_RSS_FILE_ENV, PeakReport, PeakWatch, peak_rss_mib};
pub use report::Report;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::config::Config;
use crate::store;
use crate::store::postgres::scratch::ScratchDb;
use crate::tools::sim::{self, SimConfig};
use child::{Bench, ChildRun, Stdout};
use inputs::{generate, number, write_config};
use report::print_report;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Recipients in the generated segment.
    #[arg(long, default_value_t = 100_000)]
    pub recipients: u64,
    /// Numbers on the opt-out list: every tenth recipient (up to N), the rest other numbers.
    #[arg(long, default_value_t = 0)]
    pub optouts: u64,
    /// Messages per gateway request (1 = the single-message endpoint).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Messages per chunk (commit interval).
    #[arg(long, default_value_t = 1000)]
    pub chunk_size: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The gateway's `rate_per_sec` (the default keeps the rate limit out of the way).
    #[arg(long, default_value_t = 1_000_000)]
    pub rate_per_sec: u32,
    /// The gateway's `burst`: with `--rate-per-sec`, how large the slices of the shared rate
    /// budget a run takes from the database may be (see the report's rate budget line).
    #[arg(long, default_value_t = 100_000)]
    pub burst: u32,
    /// Stop the run after this many messages are sent, then measure the resume.
    #[arg(long)]
    pub resume_at: Option<i64>,
    /// Skip the HTTP and store ceilings measured before the run.
    #[arg(long)]
    pub no_ceilings: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep the bench directory.
    #[arg(long)]
    pub keep: bool,
    /// The job repository: with a postgres:// URL the bench creates a scratch database on
    /// that server and drops it afterwards (the URL's own database is not touched). Default: a
    /// SQLite file in the bench directory.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// `campaign run` processes working the campaign at once (more than one needs PostgreSQL);
    /// the report gives each one's peak RSS and their combined rate.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Send through a real Kannel the bench starts on loopback (bearerbox, smsbox, and
    /// kannel-extras' fakesmsc as the SMSC) instead of the simulator: the HTTP ceiling is then a
    /// bare load loop on its sendsms, and the report counts what reached fakesmsc.
    #[arg(long)]
    pub kannel: bool,
    /// Instead: measure an SQL segment of --recipients rows on MariaDB, PostgreSQL or both
    /// (the bench creates and fills the source table itself): campaign create and the first
    /// run's snapshot, rows/s and peak RSS.
    #[arg(long, value_enum, value_name = "SERVER")]
    pub sql_segment: Option<segment::SqlSource>,
}

/// One measured command.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub secs: f64,
    pub peak_rss_mib: f64,
    /// Rows or messages the phase handled, when it has a count.
    pub rows: Option<u64>,
    /// `rows / secs`.
    pub per_sec: Option<f64>,
}

fn with_rows(mut p: Phase, rows: u64, secs: f64) -> Phase {
    p.rows = Some(rows);
    p.per_sec = Some(rows as f64 / secs.max(1e-9));
    p
}

/// Size of the database in bytes, as its pages count (free pages included).
async fn db_bytes(b: &Bench) -> anyhow::Result<u64> {
    let cfg = Config::load(&b.config)?;
    let store = store::open(&cfg.database_url).await?;
    Ok(store.disk_usage().await?.db_bytes)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    if let Some(which) = args.sql_segment {
        return segment::run(which, args.recipients, args.json).await;
    }
    let dir = tempfile::Builder::new().prefix("munja-bench-").tempdir()?;
    let root = dir.path().to_path_buf();
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(
        args.workers == 1 || args.resume_at.is_none(),
        "--resume-at measures one worker's resume: use it without --workers"
    );
    let scratch = scratch_db(args.database_url.as_deref()).await?;
    anyhow::ensure!(
        args.workers == 1 || scratch.is_some(),
        "--workers {} needs PostgreSQL: add --database-url postgres://USER@HOST/DB",
        args.workers
    );
    let sim = sim::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), SimConfig::default()).await?;
    let kannel = if args.kannel {
        // SAFETY: set before the bench starts any task or process that reads the environment
        // (its commands inherit it: the configuration names the variable).
        unsafe { std::env::set_var(kannel::PASSWORD_ENV, kannel::PASSWORD) };
        Some(kannel::Kannel::start(&root).await?)
    } else {
        None
    };
    let gateway_url = kannel.as_ref().map_or_else(|| sim.url(), |k| k.url());
    let config = write_config(
        &root,
        "munja.toml",
        &args,
        &gateway_url,
        scratch.as_ref().map(|d| d.url.as_str()),
    )?;
    let bench = Bench {
        exe: std::env::current_exe().context("finding the munja executable")?,
        root: root.clone(),
        config,
    };
    eprintln!(
        "bench: {} recipients, {} opt-outs, batch {}, chunk {}, concurrency {}, in {}",
        args.recipients,
        args.optouts,
        args.batch_size,
        args.chunk_size,
        args.concurrency,
        root.display()
    );
    let inside = generate(&root, args.recipients, args.optouts)?;
    let mut report = Report {
        recipients: args.recipients,
        optouts: args.optouts,
        optouts_in_segment: inside,
        batch_size: args.batch_size,
        chunk_size: args.chunk_size,
        concurrency: args.concurrency,
        workers: args.workers,
        ..Default::default()
    };
    let result = if args.no_ceilings {
        Ok(())
    } else {
        ceiling::measure(&bench, &args, &gateway_url, &mut report).await
    };
    let result = match result {
        Ok(()) => phases(&bench, &args, &mut report).await,
        e => e,
    };
    let result = match (result, &kannel) {
        (Ok(()), Some(k)) => k.received(args.recipients).await.map(|got| {
            report.kannel = Some(got);
        }),
        (result, _) => result,
    };
    drop(kannel);
    let s = sim.stats();
    report.accepted_at_gateway = s.accepted;
    report.numbers_accepted_twice = s.numbers_accepted_twice;
    report.bench_process_peak_rss_mib = peak_rss_mib();
    sim.shutdown().await;
    if args.keep {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    if let Some(db) = scratch {
        db.drop_now().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(0)
}

/// The PostgreSQL scratch database the bench creates on the server of `database_url`;
/// `None` (a SQLite file) without one.
async fn scratch_db(database_url: Option<&str>) -> anyhow::Result<Option<ScratchDb>> {
    Ok(match database_url {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Some(
            ScratchDb::create(u)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        Some(u) => bail!(
            "--database-url {}: the bench takes a postgres:// server URL (it creates its own \
             database there); without it, it uses a SQLite file",
            store::redact(u)
        ),
        None => None,
    })
}

/// Runs every phase in order, filling `report`.
async fn phases(b: &Bench, args: &BenchArgs, r: &mut Report) -> anyhow::Result<()> {
    let n = args.recipients;
    let (p, _) = b.phase("init", &["init"], Stdout::Keep, &[0]).await?;
    r.phases.push(p);
    let (p, run) = b
        .phase(
            "segment import",
            &["segment", "import", "bench", "segment.csv"],
            Stdout::Keep,
            &[0],
        )
        .await?;
    r.phases.push(with_rows(p, n, run.secs));
    if args.optouts > 0 {
        let (p, run) = b
            .phase(
                "opt-out import",
                &["optout", "import", "optouts.csv"],
                Stdout::Keep,
                &[0],
            )
            .await?;
        r.phases.push(with_rows(p, args.optouts, run.secs));
    }
    r.db_bytes_after_imports = db_bytes(b).await?;
    let create = [
        "campaign",
        "create",
        "--name",
        "bench",
        "--segment",
        "bench",
        "--template",
        "bench",
    ];
    let (p, run) = b
        .phase("campaign create", &create, Stdout::Keep, &[0])
        .await?;
    r.phases.push(with_rows(p, n, run.secs));
    let id = run.stdout.trim().to_string();
    id.parse::<i64>()
        .with_context(|| format!("campaign create printed {id:?}, not an id"))?;
    run_phases(b, args, r, &id).await?;
    r.db_bytes_after_run = db_bytes(b).await?;
    r.db_bytes_per_million_messages = r
        .db_bytes_after_run
        .saturating_sub(r.db_bytes_after_imports) as f64
        * 1e6
        / n.max(1) as f64;
    read_phases(b, args, r, &id).await?;
    Ok(())
}

/// The run (and, with `--resume-at`, the stop and the resume).
async fn run_phases(b: &Bench, args: &BenchArgs, r: &mut Report, id: &str) -> anyhow::Result<()> {
    let run_args = ["campaign", "run", id, "--json"];
    let (p, run, resumed) = match args.resume_at {
        None if args.workers > 1 => return run_workers(b, args, r, id).await,
        None => {
            let (p, run) = b
                .phase("campaign run", &run_args, Stdout::Keep, &[0])
                .await?;
            (p, run, None)
        }
        Some(at) => {
            let cfg = Config::load(&b.config)?;
            let store = store::open(&cfg.database_url).await?;
            let campaign: i64 = id.parse()?;
            let stopper = {
                let store = store.clone();
                tokio::spawn(async move { stop_when_sent(&*store, campaign, at).await })
            };
            let (p, run) = b
                .phase("campaign run (stopped)", &run_args, Stdout::Keep, &[0, 2])
                .await?;
            if stopper.is_finished() {
                stopper.await?.context("asking the run to stop")?;
            } else {
                stopper.abort();
            }
            if run.status.code() != Some(2) {
                eprintln!(
                    "bench: the run completed before it could be stopped at {at} sent: no resume measured"
                );
                return finish_run(b, r, id, p, run, None).await;
            }
            let before = store.executions(campaign).await?.len();
            let watch = {
                let store = store.clone();
                tokio::spawn(async move { first_commit(&*store, campaign, before).await })
            };
            let (rp, _) = b
                .phase("campaign run (resumed)", &run_args, Stdout::Keep, &[0])
                .await?;
            let first = watch.await??;
            r.resume_first_commit_secs = Some(first.as_secs_f64());
            (p, run, Some(rp))
        }
    };
    finish_run(b, r, id, p, run, resumed).await
}

/// `--workers N`: N `campaign run` processes at once; the rate is every message sent over the
/// span from the first worker's run start to the last worker's end. As with one worker (whose
/// rate is over its run's own `elapsed_secs`), each process's start-up before its run began
/// (the part of its wall time beyond `elapsed_secs`) is left out.
async fn run_workers(b: &Bench, args: &BenchArgs, r: &mut Report, id: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for k in 1..=args.workers {
        let (b, id) = (b.clone(), id.to_string());
        set.spawn(async move {
            let name = format!("campaign run (worker {k})");
            let run_args = ["campaign", "run", id.as_str(), "--json"];
            let spawned = started.elapsed().as_secs_f64();
            let done = b.phase(&name, &run_args, Stdout::Keep, &[0]).await;
            done.map(|(p, run)| (p, run, spawned))
        });
    }
    let mut runs = Vec::new();
    while let Some(done) = set.join_next().await {
        runs.push(done??);
    }
    runs.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let (mut sent, mut first_start, mut last_end) = (0, f64::MAX, 0f64);
    for (p, run, spawned) in runs {
        let summary: serde_json::Value = serde_json::from_str(&run.stdout)
            .with_context(|| format!("campaign run --json printed {:?}", run.stdout))?;
        let sent_now = summary["sent_this_run"].as_u64().unwrap_or(0);
        let elapsed = summary["elapsed_secs"].as_f64().unwrap_or(run.secs);
        first_start = first_start.min(spawned + run.secs - elapsed);
        last_end = last_end.max(spawned + run.secs);
        sent += sent_now;
        r.add_rate_budget(&summary, elapsed);
        r.phases.push(with_rows(p, sent_now, elapsed));
    }
    r.set_rate(sent as f64 / (last_end - first_start).max(1e-9));
    status_phase(b, r, id).await
}

/// Records the run's throughput and the campaign's final counts.
async fn finish_run(
    b: &Bench,
    r: &mut Report,
    id: &str,
    p: Phase,
    run: ChildRun,
    resumed: Option<Phase>,
) -> anyhow::Result<()> {
    let summary: serde_json::Value = serde_json::from_str(&run.stdout)
        .with_context(|| format!("campaign run --json printed {:?}", run.stdout))?;
    let sent_now = summary["sent_this_run"].as_u64().unwrap_or(0);
    let elapsed = summary["elapsed_secs"].as_f64().unwrap_or(run.secs);
    r.set_rate(sent_now as f64 / elapsed.max(1e-9));
    r.add_rate_budget(&summary, elapsed);
    r.phases.push(with_rows(p, sent_now, elapsed));
    r.phases.extend(resumed);
    status_phase(b, r, id).await
}

/// `campaign status`: the campaign's final counts.
async fn status_phase(b: &Bench, r: &mut Report, id: &str) -> anyhow::Result<()> {
    let (p, run) = b
        .phase(
            "campaign status",
            &["campaign", "status", id, "--json"],
            Stdout::Keep,
            &[0],
        )
        .await?;
    let st: serde_json::Value = serde_json::from_str(&run.stdout)?;
    r.sent = st["sent"].as_i64().unwrap_or(0);
    r.suppressed = st["suppressed"].as_i64().unwrap_or(0);
    r.phases.push(p);
    Ok(())
}

/// Audit export, one-number lookups, purge and delete.
async fn read_phases(b: &Bench, args: &BenchArgs, r: &mut Report, id: &str) -> anyhow::Result<()> {
    let n = args.recipients;
    let (p, run) = b
        .phase(
            "audit --format csv",
            &["audit", "--campaign", id, "--format", "csv"],
            Stdout::CountLines,
            &[0],
        )
        .await?;
    anyhow::ensure!(
        run.lines == n + 1,
        "the audit export has {} lines, expected {} rows and a header",
        run.lines,
        n
    );
    r.phases.push(with_rows(p, n, run.secs));
    let last = number(n.saturating_sub(1));
    let (p, _) = b
        .phase(
            "audit --phone",
            &["audit", "--campaign", id, "--phone", &last],
            Stdout::Keep,
            &[0],
        )
        .await?;
    r.phases.push(p);
    let (p, _) = b
        .phase(
            "optout check",
            &["optout", "check", &last],
            Stdout::Keep,
            &[0, 1],
        )
        .await?;
    r.phases.push(p);
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let (p, run) = b
        .phase(
            "purge",
            &["purge", "--before", &tomorrow, "--json"],
            Stdout::Keep,
            &[0],
        )
        .await?;
    let purged: serde_json::Value = serde_json::from_str(&run.stdout)
        .with_context(|| format!("purge --json printed {:?}", run.stdout))?;
    r.purge_freed_bytes = purged["free_bytes"].as_u64();
    r.phases.push(p);
    let (p, _) = b
        .phase(
            "campaign delete",
            &["campaign", "delete", id],
            Stdout::Keep,
            &[0],
        )
        .await?;
    r.phases.push(p);
    Ok(())
}

/// Asks the run to stop once `at` messages are sent.
async fn stop_when_sent(store: &dyn store::Store, campaign: i64, at: i64) -> anyhow::Result<()> {
    loop {
        let sent: i64 = store
            .executions(campaign)
            .await?
            .iter()
            .map(|e| e.sent)
            .sum();
        if sent >= at {
            store.request_stop(campaign).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time until an execution after the first `before` ones has committed a chunk.
async fn first_commit(
    store: &dyn store::Store,
    campaign: i64,
    before: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let execs = store.executions(campaign).await?;
        if execs.iter().skip(before).any(|e| e.commits > 0) {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the resumed run committed nothing in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
