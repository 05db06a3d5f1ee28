//! `munja serve` as a real process: metrics counted against the simulator, SIGKILL mid-run
//! and a restart with no duplicate, SIGTERM stopping runs resumably, and the demo.

use std::process::Child;
use std::time::{Duration, Instant};

use munja::tools::sim::SimConfig;

use crate::common::{Env, n};
use crate::server::{
    campaign, free_port, slow_env_gw, spawn_serve, status_of, wait_for, wait_healthy,
};

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Waits for a child to exit, off the runtime's threads; returns its exit code (-1: signal).
async fn wait_exit(mut child: Child) -> i32 {
    tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join")
        .code()
        .unwrap_or(-1)
}

/// Sums the samples of `name` whose labels contain every `want` pair.
fn sum_samples(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name
                && want
                    .iter()
                    .all(|(k, v)| labels.split(',').any(|p| p == format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().expect("sample value"))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_as_prometheus_text_and_count_what_the_simulator_counted() {
    let env = Env::new(SimConfig {
        invalid_prefix: Some("0102000001".into()),
        ..SimConfig::default()
    })
    .await;
    let id = campaign(&env, 40).await;
    let port = free_port();
    let child = spawn_serve(&env, port);
    wait_healthy(port).await;
    env.ok(&["campaign", "schedule", &id, "--now"]).await;
    wait_for("the campaign to end", 30, || async {
        status_of(&env, &id).await == "COMPLETED"
    })
    .await;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // Every line is a comment or `name{labels} value` with a number.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {l:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {l:?}");
        assert!(series.starts_with("munja_"), "{l:?}");
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let st = env.status(&id).await;
    let sim = env.sim.stats();
    let sent = sum_samples(
        &text,
        "munja_messages_total",
        &[("campaign", &id), ("outcome", "sent")],
    );
    let failed = sum_samples(
        &text,
        "munja_messages_total",
        &[("campaign", &id), ("outcome", "failed")],
    );
    assert_eq!(sent as u64, sim.accepted, "{text}");
    assert_eq!(sent as i64, n(&st, "sent"));
    assert_eq!(failed as u64, sim.rejected, "{text}");
    assert_eq!(failed, 10.0, "numbers 0102000001x are invalid");
    let requests = sum_samples(
        &text,
        "munja_gateway_request_seconds_count",
        &[("gateway", "sim")],
    );
    assert_eq!(requests as u64, sim.requests, "{text}");
    assert!(
        sum_samples(
            &text,
            "munja_rate_limit_wait_seconds_count",
            &[("gateway", "sim")]
        ) >= 40.0
    );
    assert_eq!(
        sum_samples(&text, "munja_inflight_requests", &[("gateway", "sim")]),
        0.0
    );
    assert_eq!(
        sum_samples(&text, "munja_runs", &[("status", "COMPLETED")]),
        1.0
    );
    assert!(!text.contains("01020"), "no phone number in metrics");
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(child).await, 0);
}

/// A slow campaign of 400 (rate 100/s) started by a server process.
async fn slow_campaign_on_a_server(env: &Env) -> (String, u16, Child) {
    let id = campaign(env, 400).await;
    let port = free_port();
    let child = spawn_serve(env, port);
    wait_healthy(port).await;
    env.ok(&["campaign", "schedule", &id, "--now"]).await;
    wait_for("the first messages", 30, || async {
        env.sim.stats().accepted >= 50
    })
    .await;
    (id, port, child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_run_and_a_restart_resume_with_no_duplicate() {
    let env = Env::with(SimConfig::default(), slow_env_gw(), "").await;
    let (id, port, child) = slow_campaign_on_a_server(&env).await;
    signal(&child, libc::SIGKILL);
    assert_eq!(wait_exit(child).await, -1);
    let before = env.sim.stats().accepted;
    assert!(before < 400, "killed mid-run ({before} sent)");
    assert_eq!(
        status_of(&env, &id).await,
        "STARTED",
        "the dead run left its lease"
    );
    let child = spawn_serve(&env, port);
    wait_for(
        "the restarted server to finish the campaign",
        60,
        || async { status_of(&env, &id).await == "COMPLETED" },
    )
    .await;
    let sim = env.sim.stats();
    assert_eq!(sim.accepted, 400);
    assert_eq!(sim.numbers_accepted_twice, 0);
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 400);
    let execs = st["executions"].as_array().expect("executions");
    assert_eq!(execs.len(), 2);
    assert_eq!(execs[0]["status"], "ABANDONED");
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(child).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_runs_resumably_and_the_next_server_resumes_them() {
    let env = Env::with(SimConfig::default(), slow_env_gw(), "").await;
    let (id, port, child) = slow_campaign_on_a_server(&env).await;
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(child).await, 0, "a clean exit");
    let st = env.status(&id).await;
    assert_eq!(st["status"], "STOPPED", "{st}");
    let last = st["executions"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("exec");
    assert_eq!(last["exit_code"], "SHUTDOWN", "{last}");
    assert!(n(&st, "sent") < 400);
    assert_eq!(
        n(&st, "sending"),
        0,
        "in-flight requests were finished and committed"
    );
    let child = spawn_serve(&env, port);
    wait_for("the next server to resume and finish", 60, || async {
        status_of(&env, &id).await == "COMPLETED"
    })
    .await;
    assert_eq!(env.sim.stats().accepted, 400);
    assert_eq!(env.sim.stats().numbers_accepted_twice, 0);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(child).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_schedules_its_campaign_and_runs_it_through_the_server() {
    let env = Env::new(SimConfig::default()).await;
    let t0 = Instant::now();
    let o = env.run(&["demo", "--rate", "5000", "--delay", "2"]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr.contains("dashboard: http://127.0.0.1:"),
        "{}",
        o.all()
    );
    assert!(o.stderr.contains("scheduled 2s ahead"), "{}", o.all());
    assert!(o.stderr.contains(": COMPLETED:"), "{}", o.all());
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "not before its time"
    );
    assert!(!o.stderr.contains("test-token"), "no token in the output");
}
