//! Several workers on one campaign, on real PostgreSQL (whatever `MUNJA_TEST_BACKEND` says):
//! `munja campaign run ID` started three times shares the campaign; workers killed with SIGKILL
//! at random moments are rescued by the survivors and restarted; the shared rate holds across
//! workers and campaigns; a worker frozen past its lease races the one that rescued it and no
//! message reaches a phone twice. On SQLite a second runner fails at once, saying why.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::{Env, Gw, n, number, pg_count, signal, wait};
use munja::tools::sim::SimConfig;
use rand::{RngExt, SeedableRng};

pub(crate) async fn pg_scalar(env: &Env, sql: &str) -> i64 {
    pg_count(&env.pg.as_ref().expect("a PostgreSQL test").url, sql).await
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `secs`.
pub(crate) async fn until<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !cond().await {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every eligible message sent once, the counters of executions and workers exact, and the
/// simulator's holdings equal to the audit.
pub(crate) async fn assert_exactly_once(env: &Env, id: &str, eligible: i64) {
    let st = env.status(id).await;
    assert_eq!(st["status"], "COMPLETED", "{st}");
    assert_eq!(n(&st, "sent"), eligible, "0 lost: {st}");
    assert_eq!(n(&st, "failed"), 0, "{st}");
    let stats = env.sim.stats();
    assert_eq!(stats.accepted as i64, eligible, "the gateway has each once");
    assert_eq!(stats.numbers_accepted_twice, 0, "no phone got it twice");
    let executions: i64 = st["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .map(|e| n(e, "sent"))
        .sum();
    let workers: i64 = st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| n(w, "sent"))
        .sum();
    assert_eq!(
        (executions, workers),
        (eligible, eligible),
        "exact counters"
    );
    crate::common::agree::assert_agrees(env, id).await;
}

/// The acceptance test: three workers, SIGKILL of one at random moments, restarted each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_killed_at_random_send_every_message_exactly_once() {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sim = crate::common::flaky(seed);
    let gw = Gw::fast_retrying();
    let env = Env::on_pg(sim, gw, "max_consecutive_failures = 100000").await;
    let seg = env.segment_csv("seg.csv", 0, 20_000);
    let mut opt = String::from("phone\n");
    for i in (0..20_000).step_by(100) {
        opt.push_str(&format!("{}\n", number(i)));
    }
    env.write("opt.csv", &opt);
    let id = env.campaign(&seg, "hello", &[]).await;
    env.ok(&["optout", "import", env.path("opt.csv").to_str().unwrap()])
        .await;
    let mut workers: Vec<Child> = (0..3).map(|_| env.spawn_run(&id, &[])).collect();
    let mut kills = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        if env.status(&id).await["status"] == "COMPLETED" {
            break;
        }
        let victim = rng.random_range(0..workers.len());
        let child = workers.swap_remove(victim);
        signal(&child, libc::SIGKILL);
        let o = wait(child).await;
        if o.code == -1 {
            kills += 1;
        }
        workers.push(env.spawn_run(&id, &[]));
    }
    let mut outputs = Vec::new();
    for child in workers {
        outputs.push(wait(child).await);
    }
    for o in &outputs {
        // A worker that started after the campaign completed is refused; any other exits 0.
        // None loses its execution to a takeover judged before it joined (the store refuses
        // such a takeover, see `Enlist::New`).
        assert!(
            o.code == 0 || o.all().contains("is COMPLETED"),
            "a surviving worker failed:\n{}",
            o.all()
        );
    }
    assert!(kills >= 4, "only {kills} kills landed before the end");
    assert_exactly_once(&env, &id, 19_800).await;
    let st = env.status(&id).await;
    assert_eq!(n(&st, "suppressed"), 200);
    let rows = st["workers"].as_array().expect("workers");
    assert!(
        rows.iter().filter(|w| w["status"] == "ABANDONED").count() >= 4,
        "each killed worker is closed as ABANDONED: {rows:?}"
    );
    assert!(
        rows.iter().filter(|w| n(w, "sent") > 0).count() >= 3,
        "the work was shared: {rows:?}"
    );
}

/// Three workers of one campaign and two of another on one gateway: together within its rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_and_two_campaigns_share_one_gateway_rate() {
    let gw = Gw::limited(100, 10, 8);
    let env = Env::on_pg(SimConfig::default(), gw, "chunk_size = 20").await;
    let a = env
        .campaign(&env.segment_csv("a.csv", 0, 400), "hello", &[])
        .await;
    let b = env
        .another_campaign("b", &env.segment_csv("b.csv", 1000, 300), "hello")
        .await;
    let t = Instant::now();
    let runs: Vec<Child> = [&a, &a, &a, &b, &b]
        .iter()
        .map(|id| env.spawn_run(id, &[]))
        .collect();
    for child in runs {
        let o = wait(child).await;
        assert_eq!(o.code, 0, "{}", o.all());
    }
    let took = t.elapsed().as_secs_f64();
    assert_eq!(env.sim.stats().numbers_accepted_twice, 0);
    env.assert_shared_100_a_second(700, took);
    let st = env.status(&a).await;
    let busy = st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter(|w| n(w, "sent") > 0)
        .count();
    assert_eq!(busy, 3, "all three workers of a sent: {st}");
}

/// Starts two workers on a slow campaign and waits until the first holds claims in flight.
async fn two_workers_with_claims(env: &Env, id: &str) -> (Child, Child, i64) {
    let first = env.spawn_run(id, &[]);
    until(60, "the first worker's claims", || async {
        pg_scalar(env, "SELECT COUNT(*) FROM messages WHERE state = 'sending'").await > 0
    })
    .await;
    let worker = pg_scalar(env, "SELECT MIN(id) FROM workers").await;
    let second = env.spawn_run(id, &[]);
    until(60, "the second worker", || async {
        pg_scalar(env, "SELECT COUNT(*) FROM workers WHERE status = 'STARTED'").await == 2
    })
    .await;
    (first, second, worker)
}

fn slow_gateway() -> Gw {
    Gw::limited(150, 10, 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_claims_are_rescued_by_the_survivor() {
    let env = Env::on_pg(SimConfig::default(), slow_gateway(), "chunk_size = 100").await;
    let id = env
        .campaign(&env.segment_csv("seg.csv", 0, 600), "hello", &[])
        .await;
    let (first, second, dead) = two_workers_with_claims(&env, &id).await;
    signal(&first, libc::SIGKILL);
    assert_eq!(wait(first).await.code, -1);
    let o = wait(second).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr.contains("rescued the claims of dead workers"),
        "{}",
        o.all()
    );
    let (status, message): (String, String) = {
        let st = env.status(&id).await;
        let w = st["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .find(|w| n(w, "id") == dead)
            .cloned()
            .expect("the killed worker");
        (
            w["status"].as_str().unwrap_or_default().to_string(),
            w["exit_message"].as_str().unwrap_or_default().to_string(),
        )
    };
    assert_eq!(status, "ABANDONED");
    assert!(message.contains("rescued by worker"), "{message}");
    assert_exactly_once(&env, &id, 600).await;
}

/// A worker frozen (SIGSTOP) past the lease timeout is rescued; thawed, it races its rescuer
/// with the requests it had queued, is fenced off at its next write, and no phone gets a
/// message twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_racing_a_frozen_worker_never_sends_twice() {
    let env = Env::on_pg(SimConfig::default(), slow_gateway(), "chunk_size = 100").await;
    let id = env
        .campaign(&env.segment_csv("seg.csv", 0, 600), "hello", &[])
        .await;
    let (frozen, second, worker) = two_workers_with_claims(&env, &id).await;
    signal(&frozen, libc::SIGSTOP);
    let t = Instant::now();
    let rescued =
        format!("SELECT COUNT(*) FROM workers WHERE id = {worker} AND status = 'ABANDONED'");
    // Frozen between transactions it is rescued once silent for lease_timeout_secs; frozen
    // inside one, once the server has also ended its idle transaction (60 s).
    until(150, "the rescue of the frozen worker", || async {
        pg_scalar(&env, &rescued).await == 1
    })
    .await;
    let silence = pg_scalar(
        &env,
        &format!(
            "SELECT (EXTRACT(EPOCH FROM k.ended_at - h.heartbeat_at) * 1000)::BIGINT \
             FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id WHERE k.id = {worker}"
        ),
    )
    .await;
    assert!(
        silence >= 5000,
        "rescued after {silence} ms of silence, {:?} after the freeze: before lease_timeout_secs (5 s)",
        t.elapsed()
    );
    signal(&frozen, libc::SIGCONT);
    let thawed = wait(frozen).await;
    assert_eq!(thawed.code, 1, "the stale worker fails: {}", thawed.all());
    assert!(
        thawed.stderr.contains("stopped without writing"),
        "{}",
        thawed.all()
    );
    let o = wait(second).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert_exactly_once(&env, &id, 600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_second_runner_fails_at_once_saying_why() {
    let env = Env::with(SimConfig::default(), slow_gateway(), "").await;
    if env.pg.is_some() {
        return; // MUNJA_TEST_BACKEND=postgres: the workers tests above cover it.
    }
    let id = env
        .campaign(&env.segment_csv("seg.csv", 0, 300), "hello", &[])
        .await;
    let first = env.spawn_run(&id, &[]);
    until(60, "the first run", || async {
        env.status(&id).await["status"] == "STARTED"
    })
    .await;
    let t = Instant::now();
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(t.elapsed() < Duration::from_secs(5), "failed at once");
    assert!(o.stderr.contains("already running"), "{}", o.all());
    assert!(o.stderr.contains("SQLite"), "{}", o.all());
    signal(&first, libc::SIGTERM);
    wait(first).await;
}
