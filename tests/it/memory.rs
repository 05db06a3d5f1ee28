//! Memory that does not grow with the data, measured on the real binary: the peak RSS of each
//! `munja` process (its own `VmHWM`) exporting a 200,000-message campaign.
//! An export that collects its rows before writing needs over 400 MB here; one that streams
//! needs the memory of one page. Also what `purge` gives back, and the peak of a run of single
//! requests (one task per request used to be spawned for every message of every chunk in
//! flight).

use std::io::Read;
use std::process::Stdio;

use crate::common::{Env, Gw, n};
use chrono::{TimeDelta, Utc};
use munja::tools::bench::PeakWatch;
use munja::tools::sim::SimConfig;

const MESSAGES: u64 = 200_000;

/// The bound of the issue ("at most 100 MB in every phase"), far below a collecting export.
const BOUND_MIB: u64 = 100;

/// Runs `munja ARGS`, counting its stdout lines as they come; returns (exit code, lines, peak RSS MiB).
async fn measured(env: &Env, args: &[&str]) -> (i32, u64, u64) {
    let mut cmd = env.cmd(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let report = env.path("peak-rss");
    tokio::task::spawn_blocking(move || {
        let (mut child, watch) = PeakWatch::spawn(&mut cmd, report).expect("spawn munja");
        let mut out = child.stdout.take().expect("stdout");
        let (mut buf, mut lines) = (vec![0u8; 64 * 1024], 0u64);
        loop {
            let k = out.read(&mut buf).expect("read stdout");
            if k == 0 {
                break;
            }
            lines += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
        }
        let (status, kib) = watch.finish(child).expect("wait for munja");
        (status.code().unwrap_or(-1), lines, kib / 1024)
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_exports_of_200000_messages_stream_in_bounded_memory() {
    let gw = Gw::default();
    let env = Env::with(SimConfig::default(), gw.clone(), "").await;
    let seg = env.segment_csv("seg.csv", 0, MESSAGES);
    let id = env.campaign(&seg, "hello", &[]).await;
    // Quiet hours around now and nobody with night consent: the run snapshots every message
    // and stops at once, so the campaign has 200,000 message rows without sending them.
    let seoul = Utc::now().with_timezone(&chrono_tz::Asia::Seoul);
    env.write_config(
        &gw,
        &format!(
            "quiet_hours = \"{}-{}\"",
            (seoul - TimeDelta::hours(1)).format("%H:%M:%S"),
            (seoul + TimeDelta::hours(1)).format("%H:%M:%S")
        ),
    );
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    assert_eq!(n(&env.status(&id).await, "pending"), MESSAGES as i64);

    for (args, rows) in [
        (vec!["--format", "csv"], MESSAGES + 1),
        // JSON: "[", one row per line, then "]" on its own line.
        (vec!["--format", "json"], MESSAGES + 2),
        (vec!["--format", "csv", "--status", "pending"], MESSAGES + 1),
        (vec![], MESSAGES + 1),
    ] {
        let mut all = vec!["audit", "--campaign", &id];
        all.extend(args.iter().copied());
        let (code, lines, peak) = measured(&env, &all).await;
        eprintln!("munja {all:?}: {lines} lines, peak RSS {peak} MiB");
        assert_eq!(code, 0, "munja {all:?}");
        assert_eq!(lines, rows, "munja {all:?}");
        assert!(
            peak < BOUND_MIB,
            "munja {all:?} peaked at {peak} MiB exporting {MESSAGES} messages (bound {BOUND_MIB} MiB)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_reports_the_space_it_gives_back() {
    let env = Env::on_sqlite(SimConfig::default(), Gw::default(), "").await;
    let seg = env.segment_csv("seg.csv", 0, 300);
    let id = env.campaign(&seg, "hello", &[]).await;
    env.ok(&["campaign", "run", &id]).await;
    let tomorrow = (Utc::now() + TimeDelta::days(1)).to_rfc3339();
    let o = env.ok(&["purge", "--before", &tomorrow, "--json"]).await;
    let r: serde_json::Value = serde_json::from_str(&o.stdout).expect("purge json");
    assert_eq!(r["attempts_deleted"], 300, "{}", o.all());
    let (db, free) = (
        r["db_bytes"].as_u64().expect("db_bytes"),
        r["free_bytes"].as_u64().expect("free_bytes"),
    );
    // 300 attempt rows and their two indexes fill several 4 KiB pages, now free.
    assert!(free >= 3 * 4096 && free < db, "{r}");
    assert!(
        o.stderr.contains("purged 300 attempts") && o.stderr.contains("free for new campaigns"),
        "{}",
        o.all()
    );
    // The messages stay: the audit still has every one.
    assert_eq!(env.audit_json(&id).await.len(), 300);
}

/// Messages of the run below: enough chunks of 1,000 for the peak to settle.
const RUN_MESSAGES: u64 = 20_000;

/// The peak of that run (debug build): about 100 MiB when a chunk spawned one task per message
/// (4 chunks in flight: 4,000 futures of several KiB, and the allocator's arenas around them),
/// about 40 MiB with at most `concurrency` tasks per chunk.
const RUN_BOUND_MIB: u64 = 70;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_single_requests_in_chunks_of_1000_stays_in_bounded_memory() {
    let gw = Gw {
        rate: 1_000_000,
        burst: 100_000,
        concurrency: 64,
        timeout_ms: 10_000,
        batch_size: 1,
        ..Gw::default()
    };
    let env = Env::with(SimConfig::default(), gw, "chunk_size = 1000").await;
    let seg = env.segment_csv("seg.csv", 0, RUN_MESSAGES);
    let id = env.campaign(&seg, "hello", &[]).await;
    let (code, _, peak) = measured(&env, &["campaign", "run", &id]).await;
    eprintln!("campaign run of {RUN_MESSAGES} single requests: peak RSS {peak} MiB");
    assert_eq!(code, 0, "campaign run exited {code}");
    assert_eq!(n(&env.status(&id).await, "sent"), RUN_MESSAGES as i64);
    assert_eq!(env.sim.stats().accepted, RUN_MESSAGES);
    assert!(
        peak < RUN_BOUND_MIB,
        "campaign run of {RUN_MESSAGES} single requests in chunks of 1,000, 64 in flight, \
         peaked at {peak} MiB (bound {RUN_BOUND_MIB} MiB)"
    );
}
