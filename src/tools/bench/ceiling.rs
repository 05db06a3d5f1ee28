//! The two ceilings `munja bench` measures munja's run against, in the same run on the same
//! machine, so that its throughput is judged as a share of what this machine allows rather
//! than as an absolute figure:
//!
//! - the HTTP ceiling: a bare load loop (no database, no template, no rate budget) against a
//!   fresh gateway simulator of the same kind, through the same gateway client, with the run's
//!   concurrency and batch size;
//! - the store ceiling: the run's claims and commits alone on a database of its own (the
//!   snapshot, then chunk after chunk claimed and committed as sent, each message with its
//!   attempt row: the full per-message log), every request answered in-process, no HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;

use super::child::{Bench, Stdout};
use super::inputs::write_config;
use super::{BenchArgs, Report};
use crate::config::Config;
use crate::domain::model::{AttemptRecord, Enlist, MessageState, MessageUpdate};
use crate::gateway::{Gateway, OutMessage, Outcome};
use crate::run::lease::Process;
use crate::store::{self, ClaimRequest};
use crate::tools::sim::{self, SimConfig};

/// Messages per second of a bare load loop: `messages` messages, `batch` per request,
/// `concurrency` requests in flight, against a fresh simulator, through the client of the
/// gateway `config` names (its first gateway, pointed at that simulator).
///
/// The loop runs on a runtime of its own, as a `campaign run` process has (the simulator stays
/// on the bench's runtime, as it does during the run).
///
/// With `own_gateway` (`--kannel`) the loop goes to the gateway the configuration names
/// instead, with no simulator.
pub(super) async fn http(
    config: &std::path::Path,
    messages: u64,
    own_gateway: bool,
) -> anyhow::Result<f64> {
    // The first gateway, its secrets read from the environment.
    let mut gw = Config::load(config)?.gateway(None)?;
    let sim = if own_gateway {
        None
    } else {
        let sim = sim::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), SimConfig::default()).await?;
        gw.url = sim.url();
        Some(sim)
    };
    let gateway = Gateway::from_config(&gw)?;
    let (batch, concurrency) = (gw.batch_size.max(1) as u64, gw.concurrency.max(1));
    let measured = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the load loop's runtime")?;
        rt.block_on(load_loop(gateway, messages, batch, concurrency))
    })
    .await?;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    let (accepted, secs) = measured?;
    anyhow::ensure!(
        accepted == messages,
        "the HTTP ceiling's load loop had {accepted} of {messages} messages accepted: the \
         gateway refused some (see its log)"
    );
    Ok(messages as f64 / secs.max(1e-9))
}

/// `concurrency` tasks taking the next `batch` messages until `messages` went out; returns
/// the messages accepted and the seconds it took.
async fn load_loop(
    gateway: Gateway,
    messages: u64,
    batch: u64,
    concurrency: usize,
) -> anyhow::Result<(u64, f64)> {
    let gateway = Arc::new(gateway);
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (gateway, next, accepted) = (gateway.clone(), next.clone(), accepted.clone());
        tasks.spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= messages {
                    break;
                }
                let outs: Vec<OutMessage> = (first..(first + batch).min(messages))
                    .map(message)
                    .collect();
                let ok = gateway
                    .send(&outs)
                    .await
                    .iter()
                    .filter(|a| matches!(a.outcome, Outcome::Accepted { .. }))
                    .count();
                accepted.fetch_add(ok as u64, Ordering::Relaxed);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a load loop task panicked")?;
    }
    Ok((
        accepted.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

/// Message `i` of the load loop: the bench template's text as rendered, a number of its own.
fn message(i: u64) -> OutMessage {
    OutMessage {
        msg_ref: format!("ceiling-{i}"),
        to: format!("0109{:07}", i % 10_000_000),
        from: "15881234".into(),
        kind: "SMS".into(),
        subject: None,
        text: format!(
            "(광고) munja\n고객{i}님, 이번 주 회원 전용 할인 쿠폰이 도착했어요.\n무료수신거부 0806005653"
        ),
        ad: true,
        campaign: "ceiling".into(),
    }
}

/// Messages per second of the store alone on campaign `campaign` of the database `config`
/// names: the snapshot, then chunks of `chunk_size` claimed and committed as sent, each with
/// one attempt row, until none is pending; as in munja's claim loop, on PostgreSQL a chunk's
/// commit runs while the next chunk is claimed. Returns (messages committed, messages per second).
pub(super) async fn store(
    config: &std::path::Path,
    campaign: i64,
    chunk_size: usize,
) -> anyhow::Result<(u64, f64)> {
    let cfg = Config::load(config)?;
    let store = store::open_existing(&cfg.database_url).await?;
    let how = Enlist::New {
        expected: None,
        abandon_message: "bench".into(),
        judged_workers: Vec::new(),
    };
    let worker = store.start_worker(campaign, &how, &Process::me()).await?;
    let started = Instant::now();
    store.snapshot(&worker, None).await?; // no consent check: the bench times the store
    let mut committed = 0u64;
    let mut committing: Option<tokio::task::JoinHandle<anyhow::Result<u64>>> = None;
    let beside = crate::run::dispatch::commit_beside_claim(&*store, chunk_size);
    loop {
        let claim = store
            .claim_chunk(ClaimRequest {
                worker,
                limit: chunk_size,
                night_only: false,
                cap: None,
            })
            .await?;
        if claim.messages.is_empty() {
            break;
        }
        let at = Utc::now();
        let updates: Vec<MessageUpdate> = claim
            .messages
            .iter()
            .map(|m| {
                let gateway_id = Some(format!("ceil-{}", m.id));
                MessageUpdate {
                    id: m.id,
                    state: MessageState::Sent,
                    reason: None,
                    retryable: false,
                    gateway_id: gateway_id.clone(),
                    gateway: Some("sim".into()),
                    kind: Some("SMS".into()),
                    bytes: Some(80),
                    attempts: vec![AttemptRecord {
                        at,
                        outcome: "accepted".into(),
                        http_status: Some(202),
                        gateway_id,
                        gateway: Some("sim".into()),
                        error: None,
                        latency_ms: 0,
                    }],
                }
            })
            .collect();
        if let Some(task) = committing.take() {
            committed += task.await??;
        }
        let store = store.clone();
        committing = Some(tokio::spawn(async move {
            store.commit_chunk(&worker, &updates).await?;
            Ok(updates.len() as u64)
        }));
        if !beside && let Some(task) = committing.take() {
            committed += task.await??;
        }
    }
    if let Some(task) = committing.take() {
        committed += task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    store
        .finish_worker(&worker, "COMPLETED", "bench store ceiling")
        .await?;
    Ok((committed, committed as f64 / secs.max(1e-9)))
}

/// Measures both ceilings into `r`, before munja's run: the HTTP one against a simulator of
/// its own, the store one on a database of its own (a SQLite file next to the bench's, or a
/// second scratch database on the bench's PostgreSQL server), filled by the same commands.
pub(super) async fn measure(
    b: &Bench,
    args: &BenchArgs,
    gateway_url: &str,
    r: &mut Report,
) -> anyhow::Result<()> {
    let against = if args.kannel {
        "Kannel"
    } else {
        "the simulator"
    };
    eprintln!("bench: HTTP ceiling (a bare load loop against {against})");
    r.http_ceiling_msgs_per_sec = Some(http(&b.config, args.recipients, args.kannel).await?);
    let scratch = super::scratch_db(args.database_url.as_deref()).await?;
    let url = scratch
        .as_ref()
        .map_or_else(|| "sqlite://ceiling.db".to_string(), |d| d.url.clone());
    let ceiling = Bench {
        config: write_config(&b.root, "ceiling.toml", args, gateway_url, Some(&url))?,
        ..b.clone()
    };
    let result = store_on(&ceiling, args).await;
    if let Some(db) = scratch {
        db.drop_now().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    r.store_ceiling_msgs_per_sec = Some(result?);
    Ok(())
}

/// The store ceiling on the database of `b`: init, the segment, a campaign, then [`store`].
async fn store_on(b: &Bench, args: &BenchArgs) -> anyhow::Result<f64> {
    eprintln!("bench: store ceiling (claims and commits alone, no HTTP)");
    let segment = ["segment", "import", "bench", "segment.csv"];
    for (name, cmd) in [
        ("ceiling init", &["init"][..]),
        ("ceiling import", &segment[..]),
    ] {
        b.phase(name, cmd, Stdout::Keep, &[0]).await?;
    }
    let create = [
        "campaign",
        "create",
        "--name",
        "ceiling",
        "--segment",
        "bench",
        "--template",
        "bench",
    ];
    let (_, run) = b
        .phase("ceiling create", &create, Stdout::Keep, &[0])
        .await?;
    let id: i64 = run
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("campaign create printed {:?}, not an id", run.stdout))?;
    let (committed, per_sec) = store(&b.config, id, args.chunk_size).await?;
    anyhow::ensure!(
        committed == args.recipients,
        "the store ceiling committed {committed} of {} messages",
        args.recipients
    );
    Ok(per_sec)
}
