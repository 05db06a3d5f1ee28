//! `munja demo`: the whole workflow in a temporary directory, against the built-in simulator.
//!
//! It uses the shipped examples (compiled into the binary, so it works from any directory):
//! 10,200 customers with invalid rows and duplicates, 600 opt-outs, and the recruiting template.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::domain::compliance::{DEFAULT_QUIET_HOURS, QuietHours};
use crate::domain::model::CampaignStatus;
use crate::domain::model::MessageState;
use crate::input::import;
use crate::run::audit::{self, Format};
use crate::run::campaign::{self, CreateRequest};
use crate::server::{self, AppState};
use crate::store::{self, AuditFilter, Store};
use crate::tools::sim::{self, SimConfig, SimHandle};

const CUSTOMERS: &str = include_str!("../../examples/customers.csv");
const OPTOUTS: &str = include_str!("../../examples/optouts.csv");
const TEMPLATE: &str = include_str!("../../templates/recruit.txt");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Messages per second allowed by the demo gateway.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Keep the demo directory, and the server up (dashboard and API) until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Where the demo's server listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Seconds ahead the demo campaign is scheduled.
    #[arg(long, default_value_t = 5)]
    pub delay: u64,
}

/// Prints the first five rejected rows of a file.
fn first_five(file: &'static str) -> impl FnMut(&import::Rejected) {
    let mut shown = 0;
    move |x| {
        shown += 1;
        if shown <= 5 {
            eprintln!("  {file} line {}: {} ({})", x.line, x.reason, x.detail);
        }
    }
}

fn step(n: u32, what: &str) {
    eprintln!("\n== {n}. {what}");
}

/// Runs the whole demo; the exit code is 0 when the campaign completed, 2 when it was stopped.
pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let dir = tempfile::Builder::new()
        .prefix("munja-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path();
    write_examples(root)?;
    let sim = spawn_sim().await?;
    let (cfg_path, quiet_now) = write_config(root, &sim.url(), args.rate)?;
    eprintln!(
        "munja demo in {} (gateway simulator at {})",
        root.display(),
        sim.url()
    );
    eprintln!(
        "simulator faults: 2% 503, 0.1% 429 Retry-After (pauses the whole gateway), 0.5% accepted-then-timeout, numbers 01099… rejected as invalid"
    );
    if quiet_now {
        eprintln!(
            "note: it is night in Korea (21:00-08:00): the demo's fictional recipients have the night \
             rule switched off in its config; a real munja.toml keeps quiet_hours = \"21:00-08:00\""
        );
    }
    let cfg = Config::load(&cfg_path)?;

    step(1, "munja init");
    let store = store::open(&cfg.database_url).await?;
    store.migrate().await?;
    eprintln!("database ready: {}", cfg.database_url);
    import_examples(&*store, root, cfg.policy.timezone).await?;
    preview(&*store, &cfg).await?;
    let id = create_campaign(&*store, &cfg, args.delay).await?;

    step(
        6,
        "munja serve (in this process): it starts the campaign at its time",
    );
    let token_file = root.join("token");
    let token = server::demo_token(&token_file)?;
    let state = AppState::new(store.clone(), Arc::new(cfg.clone()), token);
    let running = server::start(state, args.listen).await?;
    eprintln!(
        "dashboard: http://{}/  (admin token in {}; API at /v1, metrics at /metrics)",
        running.addr,
        token_file.display()
    );
    let signals = server::shutdown_on_signals(&running);
    let status = watch(&*store, id, &signals).await?;
    print_audit(&*store, id).await?;
    print_sim_stats(&sim);
    if args.keep && !signals.is_finished() {
        let kept = dir.keep();
        eprintln!(
            "\nkept {}: try `munja --config {}/munja.toml campaign status {id}`\n\
             the server stays up at http://{}/ until Ctrl-C",
            kept.display(),
            kept.display(),
            running.addr
        );
        running.wait().await?;
    } else {
        running.shutdown().await?;
    }
    sim.shutdown().await;
    Ok(match status {
        CampaignStatus::Completed => 0,
        CampaignStatus::Stopped => 2,
        _ => 1,
    })
}

/// Writes the shipped template and example files into the demo directory.
fn write_examples(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("templates"))?;
    std::fs::write(root.join("templates/recruit.txt"), TEMPLATE)?;
    std::fs::write(root.join("customers.csv"), CUSTOMERS)?;
    std::fs::write(root.join("optouts.csv"), OPTOUTS)?;
    Ok(())
}

/// The gateway simulator, with a few faults of every kind.
async fn spawn_sim() -> anyhow::Result<SimHandle> {
    sim::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimConfig {
            fail_rate: 0.02,
            throttle_rate: 0.001,
            timeout_rate: 0.005,
            stall_ms: 1500,
            retry_after_secs: 1,
            invalid_prefix: Some("01099".into()),
            ..SimConfig::default()
        },
    )
    .await
}

/// Writes the demo's `munja.toml`; also returns whether it is night in Korea now (the night
/// rule is then switched off for the demo's fictional recipients).
fn write_config(root: &Path, sim_url: &str, rate: u32) -> anyhow::Result<(PathBuf, bool)> {
    let night: QuietHours = DEFAULT_QUIET_HOURS.parse()?;
    let quiet_now = night.is_quiet_at(chrono_tz::Asia::Seoul, chrono::Utc::now());
    let quiet = if quiet_now { "off" } else { "21:00-08:00" };
    let toml = format!(
        r#"database_url = "sqlite://munja.db"
templates_dir = "templates"

[sender]
number = "1588-1234"
brand = "토스페이먼츠"
optout_number = "080-600-5653"

[policy]
chunk_size = 500
quiet_hours = "{quiet}"

[pricing]
sms = 9.9
lms = 29.0

[[gateways]]
name = "sim"
kind = "http-json"
url = "{url}"
rate_per_sec = {rate}
burst = {burst}
concurrency = 16
timeout_ms = 1000
max_attempts = 6
"#,
        url = sim_url,
        burst = (rate / 10).max(1),
    );
    let cfg_path = root.join("munja.toml");
    std::fs::write(&cfg_path, toml)?;
    Ok((cfg_path, quiet_now))
}

/// Steps 2 and 3: the opt-out list and the customer segment.
async fn import_examples(store: &dyn Store, root: &Path, tz: chrono_tz::Tz) -> anyhow::Result<()> {
    step(2, "munja optout import optouts.csv");
    let r = import::optouts(
        store,
        &root.join("optouts.csv"),
        &mut first_five("optouts.csv"),
    )
    .await?;
    eprintln!(
        "imported {}, already present {}, rejected {}",
        r.imported, r.already_present, r.rejected
    );

    step(3, "munja segment import customers customers.csv");
    let r = import::segment(
        store,
        "customers",
        &root.join("customers.csv"),
        tz,
        &mut first_five("customers.csv"),
    )
    .await?;
    if r.rejected > 5 {
        eprintln!("  ... and {} more rejected rows", r.rejected - 5);
    }
    eprintln!(
        "imported {}, merged duplicates {}, rejected {}",
        r.imported, r.already_present, r.rejected
    );
    Ok(())
}

/// Step 4: the first recipient's final text.
async fn preview(store: &dyn Store, cfg: &Config) -> anyhow::Result<()> {
    step(
        4,
        "munja template preview recruit --segment customers --limit 1",
    );
    for p in campaign::preview(store, cfg, "recruit", "customers", 1, false).await? {
        match p.result {
            Ok(t) => eprintln!("to {} [{} {} bytes]\n{}", p.phone, t.kind, t.bytes, t.text),
            Err(e) => eprintln!("to {}: REFUSED {e}", p.phone),
        }
    }
    Ok(())
}

/// Step 5: creates the campaign and schedules it `delay` seconds ahead; returns its id.
async fn create_campaign(store: &dyn Store, cfg: &Config, delay: u64) -> anyhow::Result<i64> {
    step(
        5,
        "munja campaign create --name demo --segment customers --template recruit",
    );
    let (id, plan) = campaign::create(
        store,
        cfg,
        &CreateRequest {
            name: "demo".into(),
            segment: "customers".into(),
            template: "recruit".into(),
            ..Default::default()
        },
    )
    .await?;
    eprintln!("{}\ncampaign id: {id}", plan.summary());

    let at = chrono::Utc::now() + chrono::Duration::seconds(delay as i64);
    store.set_scheduled_at(id, Some(at)).await?;
    eprintln!(
        "scheduled {}s ahead: munja campaign schedule {id} --at \"{}\"",
        delay,
        at.with_timezone(&cfg.policy.timezone)
            .format("%Y-%m-%d %H:%M:%S")
    );
    Ok(id)
}

/// Step 7: the first rows of the audit, then failed ones.
async fn print_audit(store: &dyn Store, id: i64) -> anyhow::Result<()> {
    step(
        7,
        &format!("munja audit --campaign {id} (first rows, then failed ones)"),
    );
    let filter = AuditFilter {
        campaign: id,
        limit: 5,
        ..Default::default()
    };
    print_some(store, filter.clone(), 5).await?;
    print_some(
        store,
        AuditFilter {
            state: Some(MessageState::Failed),
            ..filter
        },
        3,
    )
    .await?;
    Ok(())
}

/// Step 8: what the gateway simulator saw.
fn print_sim_stats(sim: &SimHandle) {
    step(8, "gateway simulator statistics");
    let s = sim.stats();
    eprintln!(
        "accepted {} distinct messages to {} numbers; {} duplicate replays answered from the idempotency store; \
         numbers accepted twice: {}; faults injected: {} x 503, {} x 429, {} x timeout",
        s.accepted,
        s.distinct_numbers,
        s.duplicate_replays,
        s.numbers_accepted_twice,
        s.faults_503,
        s.faults_429,
        s.faults_timeout
    );
}

/// Follows the campaign the server runs until it ends (or a signal stops the server),
/// printing its progress every two seconds; returns its status.
async fn watch(
    store: &dyn store::Store,
    id: i64,
    signals: &tokio::task::JoinHandle<()>,
) -> anyhow::Result<CampaignStatus> {
    let mut last_line = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let c = store.campaign(id).await?;
        let status = c.parsed_status().unwrap_or(CampaignStatus::Failed);
        let k = store.counts(id).await?;
        let running = matches!(status, CampaignStatus::Scheduled | CampaignStatus::Started);
        if !running || (signals.is_finished() && c.lease.is_none()) {
            eprintln!(
                "campaign {id}: {status}: {} sent, {} failed, {} suppressed of {}{}",
                k.sent,
                k.failed,
                k.suppressed,
                k.total,
                c.exit_message
                    .map(|m| format!("\n  {m}"))
                    .unwrap_or_default()
            );
            return Ok(status);
        }
        if last_line.elapsed() >= Duration::from_secs(2) {
            last_line = std::time::Instant::now();
            eprintln!(
                "  {status}: {} of {} final",
                k.total - k.pending - k.sending - k.in_doubt,
                k.total
            );
        }
    }
}

async fn print_some(store: &dyn store::Store, filter: AuditFilter, n: usize) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    audit::write_limited(store, filter, Format::Table, &mut buf, n).await?;
    eprint!("{}", String::from_utf8_lossy(&buf));
    Ok(())
}
