//! `munja bench --sql-segment mariadb|postgres|both`: the SQL segment's two reads of a
//! `--recipients`-row source table, measured.
//!
//! The bench creates a scratch database on the server (MariaDB: `MUNJA_TEST_MARIADB_URL`,
//! default `mysql://root@127.0.0.1:3306/test`; PostgreSQL: `MUNJA_TEST_PG_URL`), fills a
//! `customers` table on the server itself, defines a segment on it, then times
//! `campaign create` (the whole query read and every message composed) and the first run's
//! snapshot (the query streamed into the campaign's messages in one SQLite transaction),
//! printing rows/s and the process's peak RSS (`VmHWM`). Each source runs in a process of its
//! own, so one's peak never hides in the other's.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::peak_rss_mib;
use crate::config::Config;
use crate::input::segment_sql::{self, Definition};
use crate::run::campaign::{self, CreateRequest};
use crate::store;
use crate::store::postgres::scratch::{ScratchDb, test_server_url};
use crate::store::source::fixture::{self, MariaScratch, test_mariadb_url};

/// Which server the SQL-segment bench reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlSource {
    Mariadb,
    Postgres,
    /// Both, one process each.
    Both,
}

/// What one source measured.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SegmentReport {
    pub source: String,
    pub rows: u64,
    pub fill_secs: f64,
    /// `campaign create`: the query read whole, every message composed.
    pub create_secs: f64,
    pub create_rows_per_sec: f64,
    /// The first run's snapshot: the query streamed into messages, one transaction.
    pub snapshot_secs: f64,
    pub snapshot_rows_per_sec: f64,
    pub messages: i64,
    /// Peak RSS of the process that did both, in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Runs the bench for `which` (`Both`: this executable once per source).
pub async fn run(which: SqlSource, rows: u64, json: bool) -> anyhow::Result<i32> {
    let reports = match which {
        SqlSource::Both => {
            let mut out = Vec::new();
            for s in ["mariadb", "postgres"] {
                out.push(child(s, rows)?);
            }
            out
        }
        SqlSource::Mariadb => vec![measure("mariadb", rows).await?],
        SqlSource::Postgres => vec![measure("postgres", rows).await?],
    };
    if json {
        let v = if reports.len() == 1 {
            serde_json::to_value(&reports[0])?
        } else {
            serde_json::to_value(&reports)?
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &reports {
            println!(
                "{:<9} {} rows: create {:.1}s ({:.0} rows/s), snapshot {:.1}s ({:.0} rows/s), \
                 {} messages, peak RSS {}",
                r.source,
                r.rows,
                r.create_secs,
                r.create_rows_per_sec,
                r.snapshot_secs,
                r.snapshot_rows_per_sec,
                r.messages,
                r.peak_rss_mib
                    .map_or("unknown".into(), |m| format!("{m:.1} MiB"))
            );
        }
    }
    Ok(0)
}

/// This executable, measuring one source in its own process.
fn child(source: &str, rows: u64) -> anyhow::Result<SegmentReport> {
    let exe = std::env::current_exe().context("finding the munja executable")?;
    let out = std::process::Command::new(exe)
        .args(["bench", "--sql-segment", source, "--json", "--recipients"])
        .arg(rows.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the bench for one source")?;
    anyhow::ensure!(
        out.status.success(),
        "the {source} bench failed ({})",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("reading the child bench's report")
}

/// Fills a scratch database on `source`'s server and measures create and snapshot.
async fn measure(source: &str, rows: u64) -> anyhow::Result<SegmentReport> {
    let (url, _maria, _pg) = if source == "mariadb" {
        let db = MariaScratch::create(&test_mariadb_url())
            .await
            .map_err(anyhow::Error::msg)?;
        (db.url.clone(), Some(db), None)
    } else {
        let db = ScratchDb::create(&test_server_url())
            .await
            .map_err(anyhow::Error::msg)?;
        (db.url.clone(), None, Some(db))
    };
    let mut r = SegmentReport {
        source: source.into(),
        rows,
        ..Default::default()
    };
    eprintln!("bench: filling {rows} customers on {source}");
    let t = Instant::now();
    fixture::fill_customers(&url, rows)
        .await
        .map_err(anyhow::Error::msg)?;
    r.fill_secs = t.elapsed().as_secs_f64();
    let dir = tempfile::Builder::new()
        .prefix("munja-bench-sql-")
        .tempdir()?;
    let cfg = config(dir.path())?;
    // SAFETY: nothing else in this process reads or writes the environment while the bench
    // sets the source's URL variable (the config names it; the URL exists only now).
    unsafe { std::env::set_var("MUNJA_BENCH_SOURCE_URL", &url) };
    let store = store::open(&cfg.database_url).await?;
    store.migrate().await?;
    segment_sql::define(
        &*store,
        &cfg,
        &Definition {
            name: "bench".into(),
            source: "bench".into(),
            query: "SELECT phone, name, points, grade, night_consent, ad_consent_at, joined_at \
                    FROM customers WHERE joined_at < :as_of ORDER BY id"
                .into(),
            phone_column: None,
        },
    )
    .await?;
    let t = Instant::now();
    let (id, _plan) = campaign::create(
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
    r.create_secs = t.elapsed().as_secs_f64();
    r.create_rows_per_sec = rows as f64 / r.create_secs;
    let c = store.campaign(id).await?;
    let how = crate::domain::model::Enlist::New {
        expected: None,
        abandon_message: "bench".into(),
        judged_workers: Vec::new(),
    };
    let worker = store
        .start_worker(id, &how, &crate::run::lease::Process::me())
        .await?;
    let t = Instant::now();
    segment_sql::snapshot_for_run(&*store, &cfg, &c, &worker).await?;
    r.snapshot_secs = t.elapsed().as_secs_f64();
    r.snapshot_rows_per_sec = rows as f64 / r.snapshot_secs;
    r.messages = store.counts(id).await?.total;
    r.peak_rss_mib = peak_rss_mib();
    Ok(r)
}

fn config(root: &std::path::Path) -> anyhow::Result<Config> {
    std::fs::create_dir_all(root.join("templates"))?;
    std::fs::write(
        root.join("templates/bench.txt"),
        "{{ name }}님({{ grade }}), 적립금 {{ points }}점이 {{ joined_at }} 가입 기념으로 남아 있어요.",
    )?;
    let path = root.join("munja.toml");
    std::fs::write(
        &path,
        r#"[sender]
number = "1588-1234"
brand = "munja"
optout_number = "080-600-5653"
[policy]
quiet_hours = "off"
[sources.bench]
url_env = "MUNJA_BENCH_SOURCE_URL"
statement_timeout_secs = 3600
[[gateways]]
name = "unused"
kind = "http-json"
url = "http://127.0.0.1:9"
rate_per_sec = 1000
"#,
    )?;
    Ok(Config::load(&path)?)
}
