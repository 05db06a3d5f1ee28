//! `munja bench`: throughput, peak memory and resume latency, measured end to end.
//!
//! It generates a segment CSV (streamed to disk), imports it, creates a campaign, runs it against
//! the in-process simulator with the rate limit out of the way, and prints messages per second
//! (with the full per-message log: every message row and every attempt row is written) and the
//! process's peak RSS. With `--resume-at`, the run is stopped once that many messages are sent,
//! and the bench measures how long a resume takes to commit its first chunk.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::campaign::{self, CreateRequest};
use crate::config::Config;
use crate::dispatch::{self, RunOptions, RunStatus};
use crate::gateway::sim::{self, SimConfig};
use crate::import;
use crate::progress::Progress;
use crate::store::{self, Counts};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Recipients in the generated segment.
    #[arg(long, default_value_t = 100_000)]
    pub recipients: u64,
    /// Messages per gateway request (1 = the single-message endpoint).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Messages per chunk (commit interval).
    #[arg(long, default_value_t = 1000)]
    pub chunk_size: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Stop the run after this many messages are sent, then measure the resume.
    #[arg(long)]
    pub resume_at: Option<i64>,
    /// Keep the bench directory.
    #[arg(long)]
    pub keep: bool,
}

/// Peak resident set size of this process, in MiB (Linux: VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Records when the first chunk of a run was committed; asks for a stop at a sent count.
struct Probe {
    started: Instant,
    first_commit: Arc<Mutex<Option<Duration>>>,
    stop_at: Option<(i64, Arc<dyn store::Store>, i64)>,
    stop_sent: bool,
}

impl Progress for Probe {
    fn start(&mut self, _c: &Counts) {}
    fn update(&mut self, c: &Counts) {
        if let Ok(mut f) = self.first_commit.lock()
            && f.is_none()
        {
            *f = Some(self.started.elapsed());
        }
        if let Some((at, store, id)) = &self.stop_at
            && c.sent >= *at
            && !self.stop_sent
        {
            self.stop_sent = true;
            let (store, id) = (store.clone(), *id);
            tokio::spawn(async move {
                let _ = store.request_stop(id).await;
            });
        }
    }
    fn finish(&mut self, _c: &Counts) {}
}

/// Runs the campaign with a [`Probe`]; returns the report and when the first chunk committed.
async fn run_probed(
    store: Arc<dyn store::Store>,
    cfg: &Config,
    id: i64,
    stop_at: Option<(i64, Arc<dyn store::Store>, i64)>,
) -> anyhow::Result<(dispatch::RunReport, Option<Duration>)> {
    let first = Arc::new(Mutex::new(None));
    let probe = Probe {
        started: Instant::now(),
        first_commit: first.clone(),
        stop_at,
        stop_sent: false,
    };
    let report = dispatch::run(
        store,
        cfg,
        id,
        RunOptions {
            progress: Some(Box::new(probe)),
            ..Default::default()
        },
    )
    .await?;
    let to_first = first.lock().ok().and_then(|f| *f);
    Ok((report, to_first))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let dir = tempfile::Builder::new().prefix("munja-bench-").tempdir()?;
    let root = dir.path();
    std::fs::create_dir_all(root.join("templates"))?;
    std::fs::write(
        root.join("templates/bench.txt"),
        "{{ name }}님, 이번 주 회원 전용 할인 쿠폰이 도착했어요.",
    )?;
    let sim = sim::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), SimConfig::default()).await?;
    let cfg_path = root.join("munja.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"[sender]
number = "1588-1234"
brand = "munja"
optout_number = "080-600-5653"
[policy]
chunk_size = {chunk}
quiet_hours = "off"
lease_timeout_secs = 3
[[gateways]]
name = "sim"
kind = "http-json"
url = "{url}"
rate_per_sec = 1000000
burst = 100000
concurrency = {conc}
timeout_ms = 10000
max_attempts = 5
batch_size = {batch}
"#,
            chunk = args.chunk_size,
            url = sim.url(),
            conc = args.concurrency,
            batch = args.batch_size,
        ),
    )?;
    let cfg = Config::load(&cfg_path)?;
    eprintln!(
        "bench: {} recipients, batch {}, chunk {}, concurrency {}, SQLite at {}",
        args.recipients, args.batch_size, args.chunk_size, args.concurrency, cfg.database_url
    );

    let t = Instant::now();
    let csv_path = root.join("segment.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&csv_path)?);
        writeln!(w, "phone,name")?;
        for i in 0..args.recipients {
            writeln!(
                w,
                "010-{:04}-{:04},고객{}",
                1000 + i / 10_000,
                i % 10_000,
                i
            )?;
        }
        w.flush()?;
    }
    let generated = t.elapsed();

    let store = store::open(&cfg.database_url).await?;
    store.migrate().await?;
    let t = Instant::now();
    let r = import::segment(&*store, "bench", &csv_path, &mut |_| {}).await?;
    let imported = t.elapsed();
    anyhow::ensure!(
        r.imported == args.recipients,
        "imported {} of {}",
        r.imported,
        args.recipients
    );

    let t = Instant::now();
    let (id, _) = campaign::create(
        &*store,
        &cfg,
        &CreateRequest {
            name: "bench".into(),
            segment: "bench".into(),
            template: "bench".into(),
            ..Default::default()
        },
    )
    .await?;
    let planned = t.elapsed();

    let t = Instant::now();
    let stop_at = args.resume_at.map(|n| (n, store.clone(), id));
    let (report, _) = run_probed(store.clone(), &cfg, id, stop_at)
        .await
        .context("running the bench campaign")?;
    let secs = t.elapsed().as_secs_f64();
    let attempts = sim.stats();
    println!("recipients:           {}", args.recipients);
    println!("csv generated:        {:.2}s", generated.as_secs_f64());
    println!(
        "segment import:       {:.2}s ({:.0} rows/s)",
        imported.as_secs_f64(),
        args.recipients as f64 / imported.as_secs_f64()
    );
    println!("create (full check):  {:.2}s", planned.as_secs_f64());
    println!(
        "run:                  {} in {:.2}s (snapshot included): {:.0} messages/s sent, {} accepted at the gateway",
        report.status.as_str(),
        secs,
        report.sent_now as f64 / secs,
        attempts.accepted
    );

    if args.resume_at.is_some() && report.status == RunStatus::Stopped {
        let t = Instant::now();
        let (resumed, to_first) = run_probed(store.clone(), &cfg, id, None).await?;
        println!(
            "resume:               stopped with {} sent of {}; the resumed run committed its first chunk after {} and ended {} in {:.2}s",
            report.counts.sent,
            report.counts.total,
            to_first
                .map(|d| format!("{:.3}s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            resumed.status.as_str(),
            t.elapsed().as_secs_f64()
        );
    }
    let s = sim.stats();
    println!(
        "gateway:              accepted {}, numbers accepted twice {}",
        s.accepted, s.numbers_accepted_twice
    );
    match peak_rss_mib() {
        Some(m) => println!("peak RSS:             {m:.1} MiB (whole process, simulator included)"),
        None => println!("peak RSS:             unavailable (no /proc/self/status)"),
    }
    if args.keep {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    sim.shutdown().await;
    Ok(0)
}
