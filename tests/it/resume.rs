//! Crash safety: kill -9 and resume, in-doubt settling, the lease, stop, cancel, mid-run
//! opt-outs, auto-pause and --retry-failed. Real binary, real simulator, real SQLite file.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{Env, Gw, Setup, create_args, exit_code, n, number, signal, wait, wait_until};
use munja::tools::sim::SimConfig;
use rand::{RngExt, SeedableRng};

/// A campaign of `n` on simulator `sim` through gateway `gw`, never paused for quiet hours.
async fn unpaused(n: u64, sim: SimConfig, gw: Gw) -> (Env, String) {
    Setup::new(n).sim(sim).gw(gw).never_pause().campaign().await
}

/// A campaign of 300 on a gateway that accepts every request and then never answers (within
/// the 30 s request timeout): its run has messages in doubt as soon as it sends.
async fn stalled_gateway() -> (Env, String) {
    let sim = SimConfig {
        timeout_rate: 1.0,
        stall_ms: 60_000,
        ..SimConfig::default()
    };
    let gw = Gw {
        timeout_ms: 30_000,
        concurrency: 8,
        ..Gw::default()
    };
    Setup::new(300).sim(sim).gw(gw).campaign().await
}

/// A campaign of 300 whose run was killed while its first requests were accepted by the
/// gateway but not yet answered: those messages are left `sending`, in doubt.
async fn leave_in_doubt() -> (Env, String) {
    let (env, id) = stalled_gateway().await;
    let child = env.start(&id, 8).await;
    signal(&child, libc::SIGKILL);
    wait(child).await;
    (env, id)
}

/// A campaign of `recipients` on a gateway at `rate` messages a second (burst 10), whose run
/// is under way: the gateway has accepted `accepted` of its messages.
async fn under_way(
    recipients: u64,
    rate: u32,
    accepted: u64,
) -> (Env, String, std::process::Child) {
    let (env, id) = Setup::new(recipients).rate(rate, 10).campaign().await;
    let child = env.start(&id, accepted).await;
    (env, id, child)
}

/// The acceptance test of resume: SIGKILL at random moments, one during the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    // MUNJA_TEST_SEED replays a failure's seed (the kill moments still race the run).
    let seed: u64 = std::env::var("MUNJA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("seed {seed} (the simulator's faults and the kill moments)");
    let sim = crate::common::flaky(seed);
    let gw = Gw::fast_retrying();
    let env = Setup::new(0).sim(sim).gw(gw).never_pause().env().await;
    let seg = env.segment_csv("seg.csv", 0, 20_000);
    let mut opt = String::from("phone\n");
    for i in (0..20_000).step_by(100) {
        opt.push_str(&format!("{}\n", number(i)));
    }
    env.write("opt.csv", &opt);
    env.ok(&["init"]).await;
    env.ok(&["optout", "import", env.path("opt.csv").to_str().unwrap()])
        .await;
    let id = env.campaign(&seg, "hello", &[]).await;
    let pool = env.db().await;

    // 1. During the snapshot: the execution has started but the snapshot is not committed.
    // (Polled every 300 µs, not with wait_until's 20 ms: the window is short.)
    let child = env.spawn_run(&id, &[]);
    let t0 = Instant::now();
    loop {
        let started = pool.scalar("SELECT COUNT(*) FROM executions").await;
        let snap = pool
            .scalar("SELECT COUNT(*) FROM campaigns WHERE snapshot_at IS NOT NULL")
            .await;
        if started > 0 && snap == 0 {
            signal(&child, libc::SIGKILL);
            break;
        }
        assert!(
            snap == 0 && t0.elapsed() < Duration::from_secs(20),
            "missed the snapshot window"
        );
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    exit_code(child, -1).await;
    assert_eq!(
        pool.scalar("SELECT COUNT(*) FROM campaigns WHERE snapshot_at IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        pool.scalar("SELECT COUNT(*) FROM messages").await,
        0,
        "no half-snapshot left behind"
    );

    // 2. Kill while sending, at random moments, and resume each time. A moment is a point of
    // progress, not a time: once the gateway has accepted 1 to 3,000 more messages (so the run
    // is a recorded worker, and six rounds never finish the 19,800).
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 1;
    for _ in 0..6 {
        let target = env.sim.stats().accepted + rng.random_range(1..3000);
        let child = env.spawn_run(&id, &[]);
        let what = format!("the gateway to accept {target} messages in all");
        wait_until(&what, Duration::from_secs(30), || async {
            env.sim.stats().accepted >= target
        })
        .await;
        signal(&child, libc::SIGKILL);
        let o = wait(child).await;
        if o.code == -1 {
            kills += 1;
        } else {
            assert_eq!(o.code, 0, "{}", o.all());
            break;
        }
    }
    assert!(
        kills >= 5,
        "only {kills} kills landed before the campaign completed"
    );
    // The final resume completes it.
    let st = env.status(&id).await;
    if st["status"] != "COMPLETED" {
        let o = env.run(&["campaign", "run", &id]).await;
        assert_eq!(o.code, 0, "{}", o.all());
    }
    let st = env.status(&id).await;
    let stats = env.sim.stats();
    assert_eq!(st["status"], "COMPLETED");
    assert_eq!(n(&st, "suppressed"), 200);
    assert_eq!(n(&st, "sent"), 19_800, "0 lost");
    assert_eq!(n(&st, "failed"), 0);
    assert_eq!(
        stats.accepted, 19_800,
        "the simulator accepted every eligible number"
    );
    assert_eq!(stats.distinct_numbers, 19_800);
    assert_eq!(stats.numbers_accepted_twice, 0, "0 duplicate");
    // Every killed run was closed, none left STARTED. A run is one worker of an execution:
    // on SQLite each resume takes over with a new execution; on PostgreSQL it may also join
    // the dead one's execution and rescue its claims.
    let execs = st["executions"].as_array().unwrap();
    assert!(execs.iter().all(|e| e["status"] != "STARTED"), "{execs:?}");
    let workers = st["workers"].as_array().unwrap();
    assert!(workers.len() > kills, "{workers:?}");
    // Each worker's counters add up, and together they count every message once.
    for w in workers {
        assert_eq!(
            n(w, "read_count"),
            n(w, "sent") + n(w, "failed") + n(w, "suppressed"),
            "{w}"
        );
    }
    let sent: i64 = workers.iter().map(|w| n(w, "sent")).sum();
    assert_eq!(sent, 19_800, "{workers:?}");
    let sent: i64 = execs.iter().map(|e| n(e, "sent")).sum();
    assert_eq!(sent, 19_800, "{execs:?}");
    let abandoned: Vec<_> = workers
        .iter()
        .filter(|w| w["status"] == "ABANDONED")
        .collect();
    assert_eq!(
        abandoned.len(),
        kills,
        "each killed run is closed as ABANDONED"
    );
    for w in abandoned {
        let why = w["exit_message"].as_str().unwrap();
        assert!(
            why.contains("no longer exist") || why.contains("rescued by worker"),
            "{why}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_messages_are_settled_by_lookup_not_resent() {
    // Every request is accepted and then stalls: the run has messages in flight, in doubt.
    let (env, id) = leave_in_doubt().await;
    let accepted_before = env.sim.stats().accepted;
    let st = env.status(&id).await;
    assert!(
        n(&st, "sending") >= accepted_before as i64,
        "claimed messages are left in doubt: {st}"
    );

    env.sim.set_faults(0.0, 0.0, 0.0);
    env.exits(0, &["campaign", "run", &id]).await;
    let stats = env.sim.stats();
    assert_eq!(stats.accepted, 300);
    assert_eq!(
        stats.duplicate_replays, 0,
        "found by lookup, so never sent again"
    );
    let pool = env.db().await;
    let found = pool
        .scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'lookup_found'")
        .await;
    assert_eq!(found, accepted_before as i64);
    let missing = pool
        .scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'lookup_missing'")
        .await;
    assert!(
        missing > 0,
        "claimed but never sent: looked up, not found, resent"
    );
}

/// Stops `child` (SIGSTOP) at a moment it holds no write transaction on the SQLite database. A
/// process frozen inside one keeps SQLite's only write lock, and no other process can write
/// (take over included) until it runs again: a limit of SQLite (docs/known-gaps.md), not what
/// the lease test is about. Each retry lets it run on until its transaction ends.
async fn freeze_outside_a_write(env: &Env, child: &std::process::Child) {
    use sqlx::Connection;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(env.path("munja.db"))
        .busy_timeout(Duration::ZERO);
    let mut db = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .expect("open the database");
    for attempt in 0.. {
        signal(child, libc::SIGSTOP);
        if sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut db)
            .await
            .is_ok()
        {
            sqlx::query("ROLLBACK")
                .execute(&mut db)
                .await
                .expect("rollback");
            return;
        }
        assert!(attempt < 500, "the holder never left its write transaction");
        signal(child, libc::SIGCONT);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_at_a_time_and_a_hung_holder_is_taken_over_after_the_lease_timeout() {
    let (env, id) = Setup::new(400).rate(50, 5).on_sqlite().campaign().await;
    let first = env.start(&id, 5).await;
    let t = Instant::now();
    let o = env.exits(1, &["campaign", "run", &id]).await;
    o.assert_stderr_has("already running");
    assert!(t.elapsed() < Duration::from_secs(3), "fails at once");

    // Freeze the holder: its process exists but its heartbeat stops.
    freeze_outside_a_write(&env, &first).await;
    let frozen = Instant::now();
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 1, "a fresh heartbeat still holds: {}", o.all());
    // Retried until the lease times out (lease_timeout_secs = 5): refused until then.
    let o = loop {
        let o = env.run(&["campaign", "run", &id]).await;
        if o.code != 1 || frozen.elapsed() > Duration::from_secs(20) {
            break o;
        }
        o.assert_stderr_has("already running");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(o.code, 0, "taken over after the lease timeout: {}", o.all());
    assert!(
        frozen.elapsed() >= Duration::from_secs(4),
        "taken over {:?} after the holder froze, before its lease timed out",
        frozen.elapsed()
    );
    signal(&first, libc::SIGKILL);
    wait(first).await;
    let st = env.status_is(&id, "COMPLETED").await;
    let execs = st["executions"].as_array().unwrap();
    assert_eq!(execs[0]["status"], "ABANDONED");
    assert!(
        execs[0]["exit_message"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{execs:?}"
    );
    env.assert_accepted_once(400);
}

async fn stop_with(how: &str) {
    let gw = Gw {
        rate: 100,
        burst: 10,
        timeout_ms: 1000,
        ..Gw::default()
    };
    let (env, id) = Setup::new(1000).gw(gw).campaign().await;
    let child = env.start(&id, 50).await;
    let t = Instant::now();
    match how {
        "stop" => {
            env.ok(&["campaign", "stop", &id]).await;
        }
        "SIGTERM" => signal(&child, libc::SIGTERM),
        _ => signal(&child, libc::SIGINT),
    }
    exit_code(child, 2).await;
    assert!(
        t.elapsed() < Duration::from_secs(2 + 2),
        "within twice the gateway timeout (plus the heartbeat)"
    );
    let st = env.status_is(&id, "STOPPED").await;
    assert_eq!(
        n(&st, "sending"),
        0,
        "in-flight requests finished and were committed"
    );
    assert!(n(&st, "pending") > 0);
    assert_eq!(
        n(&st, "sent") as u64,
        env.sim.stats().accepted,
        "status agrees with the gateway"
    );
    env.exits(0, &["campaign", "run", &id]).await;
    let st = env.status(&id).await;
    assert_eq!(st["executions"].as_array().unwrap().len(), 2);
    env.assert_accepted_once(1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_stop_from_another_process_stops_and_resumes() {
    stop_with("stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully() {
    stop_with("SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_never_sends_the_pending_messages() {
    let (env, id, child) = under_way(1000, 100, 50).await;
    env.ok(&["campaign", "cancel", &id]).await;
    exit_code(child, 2).await;
    let st = env.status_is(&id, "CANCELLED").await;
    assert_eq!((n(&st, "pending"), n(&st, "sending")), (0, 0));
    assert!(n(&st, "cancelled") > 500, "{st}");
    let accepted = env.sim.stats().accepted;
    assert_eq!(n(&st, "sent") as u64, accepted);
    let o = env.exits(1, &["campaign", "run", &id]).await;
    o.assert_stderr_has("cancelled");
    assert_eq!(env.sim.stats().accepted, accepted, "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optout_added_mid_run_suppresses_the_rest() {
    // With chunks of 200 and four chunks in flight, every message is claimed at once: the
    // opt-out must still be honoured right before sending.
    let (env, id, child) = under_way(600, 200, 20).await;
    let late = number(599);
    env.ok(&["optout", "add", &late]).await;
    exit_code(child, 0).await;
    let rows = env.audit_json(&id).await;
    let row = rows.iter().find(|r| r["phone"] == late.as_str()).unwrap();
    assert_eq!(row["status"], "suppressed");
    assert_eq!(row["error"], "opted_out_during_run");
    let s = env.sim.stats();
    assert_eq!(s.accepted, 599);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_gateway_pauses_the_run_and_retry_failed_resends_only_transient_failures() {
    // 1. Every request fails: the run stops after 50 failures in a row instead of failing the list.
    let sim = SimConfig {
        fail_rate: 1.0,
        ..SimConfig::default()
    };
    let gw = Gw {
        max_attempts: 3,
        ..Gw::default()
    };
    let (env, id) = Setup::new(500).sim(sim).gw(gw.clone()).campaign().await;
    let o = env.exits(2, &["campaign", "run", &id]).await;
    o.assert_stderr_has("gateway_unhealthy");
    let st = env.status_is(&id, "STOPPED").await;
    assert!(n(&st, "pending") > 300, "the list was not walked: {st}");

    // 2. A flaky gateway and a permanent rejection: attempts run out on some messages.
    env.sim.set_faults(0.6, 0.0, 0.0);
    env.write_config(
        &Gw {
            max_attempts: 1,
            ..gw
        },
        "quiet_hours = \"off\"\nmax_consecutive_failures = 100000",
    );
    env.exits(0, &["campaign", "run", &id]).await;
    let st = env.status(&id).await;
    let failed = n(&st, "failed");
    assert!(failed > 50, "{st}");

    // 3. Healed: --retry-failed re-sends exactly the transient failures.
    env.sim.set_faults(0.0, 0.0, 0.0);
    env.exits(0, &["campaign", "run", &id, "--retry-failed"])
        .await;
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "failed")), (500, 0));
    env.assert_accepted_once(500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_never_resends_permanent_rejections() {
    let sim = SimConfig {
        invalid_prefix: Some("0102000001".into()),
        ..SimConfig::default()
    };
    let (env, id) = Setup::new(50).sim(sim).campaign().await;
    env.ok(&["campaign", "run", &id]).await;
    let st = env.status(&id).await;
    assert_eq!(n(&st, "failed"), 10);
    let rejected = env.sim.stats().rejected;
    env.ok(&["campaign", "run", &id, "--retry-failed"]).await;
    assert_eq!(
        env.sim.stats().rejected,
        rejected,
        "invalid_number is never retried"
    );
    assert_eq!(n(&env.status(&id).await, "failed"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_keeps_final_states_and_delete_is_refused_while_running() {
    let (env, id, child) = under_way(300, 100, 10).await;
    let o = env.exits(1, &["campaign", "delete", &id]).await;
    o.assert_stderr_has("running");
    exit_code(child, 0).await;
    let pool = env.db().await;
    assert!(pool.scalar("SELECT COUNT(*) FROM attempts").await >= 300);
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let o = env
        .ok(&["purge", "--before", &tomorrow, "--batch", "50"])
        .await;
    o.assert_stderr_has("purged");
    assert_eq!(pool.scalar("SELECT COUNT(*) FROM attempts").await, 0);
    let rows = env.audit_json(&id).await;
    assert_eq!(rows.len(), 300);
    assert!(
        rows.iter().all(|r| r["status"] == "sent"),
        "final states stay"
    );
    env.ok(&["campaign", "delete", &id]).await;
    assert_eq!(pool.scalar("SELECT COUNT(*) FROM messages").await, 0);
    env.exits(1, &["campaign", "status", &id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_crashed_run_closes_it_and_nothing_more_is_sent() {
    let (env, id, child) = under_way(1000, 200, 50).await;
    signal(&child, libc::SIGKILL);
    wait(child).await;
    let o = env.ok(&["campaign", "cancel", &id]).await;
    o.assert_stderr_has("cancelled");
    let st = env.status_is(&id, "CANCELLED").await;
    assert!(
        st["lease"].is_null(),
        "the dead run's lease is released: {st}"
    );
    let execs = st["executions"].as_array().unwrap();
    assert_eq!(execs[0]["status"], "ABANDONED");
    let accepted = env.sim.stats().accepted;
    // The crashed run left claimed messages in doubt: a run only settles them, sends nothing.
    assert!(n(&st, "sending") > 0, "{st}");
    assert!(
        o.stderr
            .contains(&format!("{} messages are in doubt", n(&st, "sending"))),
        "cancel says what is left to settle: {}",
        o.all()
    );
    let text = env.ok(&["campaign", "status", &id]).await.stdout;
    assert!(
        text.contains(&format!(
            "{} messages were left sending by a run that ended before recording them: they are in doubt",
            n(&st, "sending")
        )),
        "status says what `sending` means when no run holds them: {text}"
    );
    env.exits(2, &["campaign", "run", &id]).await;
    let st = env.status_is(&id, "CANCELLED").await;
    assert_eq!(n(&st, "sending"), 0, "{st}");
    assert_eq!(
        n(&st, "sent") as u64,
        accepted,
        "found by lookup = what the gateway took"
    );
    let o = env.exits(1, &["campaign", "run", &id]).await;
    o.assert_stderr_has("cancelled");
    assert_eq!(
        env.sim.stats().accepted,
        accepted,
        "nothing is sent after a cancel"
    );
    // Cancelling again, or an unknown or completed campaign, is refused and changes nothing.
    env.exits(1, &["campaign", "cancel", &id]).await;
    env.exits(1, &["campaign", "cancel", "999"]).await;
    let seg2 = env.segment_csv("seg2.csv", 5000, 10);
    env.import("small", &seg2).await;
    let done = env.create_ok("d", "small", "hello").await;
    env.ok(&["campaign", "run", &done]).await;
    env.exits(1, &["campaign", "cancel", &done]).await;
    env.status_is(&done, "COMPLETED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_in_the_first_chunk_do_not_block_the_rest() {
    let env = Env::new(SimConfig::default()).await;
    let mut csv = String::from("phone,name\n");
    for i in 0..250 {
        csv.push_str(&format!("{},김😀{i}\n", number(i)));
    }
    for i in 250..260 {
        csv.push_str(&format!("{},김민수\n", number(i)));
    }
    let seg = env.write("emoji.csv", &csv);
    let id = env.campaign(&seg, "hello", &[]).await;
    let o = env.exits(0, &["campaign", "run", &id]).await;
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "failed")), (10, 250));
    let rows = env.audit_json(&id).await;
    assert_eq!(rows[0]["error"], "unencodable_char");
    assert!(
        o.stderr.lines().count() < 20,
        "no line per refused message: {}",
        o.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_reimported_after_create_is_refused_at_run() {
    let (env, id) = Setup::new(20).campaign().await;
    let other = env.segment_csv("other.csv", 100, 5);
    env.import("seg", &other).await;
    let o = env.exits(1, &["campaign", "run", &id]).await;
    o.assert_stderr_has("re-imported");
    assert_eq!(env.sim.stats().accepted, 0);
    assert_eq!(
        n(&env.status(&id).await, "total"),
        0,
        "nothing was snapshotted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cuts_the_in_doubt_lookups_short() {
    // Leave 8+ messages in doubt, as in the lookup test.
    let (env, id) = leave_in_doubt().await;
    // Now the gateway hangs: it accepts connections and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    let _held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hole.incoming().flatten() {
            conns.push(c);
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let cfg = std::fs::read_to_string(env.path("munja.toml")).unwrap();
    let cfg = cfg
        .replace(&env.sim.url(), &hole_url)
        .replace("timeout_ms = 30000", "timeout_ms = 1000");
    env.write("munja.toml", &cfg);
    let child = env.spawn_run(&id, &[]);
    let what = "the run's first lookup at the hanging gateway";
    wait_until(what, Duration::from_secs(20), || async {
        connections.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    exit_code(child, 2).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stopped after {:?}",
        t.elapsed()
    );
    let st = env.status_is(&id, "STOPPED").await;
    assert!(
        n(&st, "sending") > 0,
        "unsettled messages stay in doubt: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_empties_the_queue_before_the_heartbeat_still_ends_cancelled() {
    let (env, id) = Setup::new(2000)
        .rate(1000, 50)
        .policy("chunk_size = 20")
        .campaign()
        .await;
    let child = env.start(&id, 100).await;
    env.ok(&["campaign", "cancel", &id]).await;
    exit_code(child, 2).await;
    let st = env.status_is(&id, "CANCELLED").await;
    assert!(n(&st, "cancelled") > 0);
    assert_eq!(n(&st, "sent") as u64, env.sim.stats().accepted);
    env.exits(1, &["campaign", "run", &id, "--retry-failed"])
        .await;
}

/// The simulator's seed for a test, printed so that a failure can be replayed.
fn seeded(seed: u64) -> u64 {
    eprintln!("simulator seed {seed}");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_that_run_out_of_attempts_are_looked_up_never_failed() {
    // Many requests are accepted and then time out, some answer 503; two attempts per message.
    // A timeout then a 503 is still in doubt: the 503 says nothing about the first attempt.
    let sim = SimConfig {
        timeout_rate: 0.5,
        fail_rate: 0.2,
        stall_ms: 1500,
        seed: Some(seeded(11)),
        ..SimConfig::default()
    };
    let gw = Gw::timing_out(200, 2);
    let (env, id) = unpaused(300, sim, gw).await;
    env.exits(0, &["campaign", "run", &id]).await;
    let st = env.status_is(&id, "COMPLETED").await;
    let failed = n(&st, "failed");
    assert_eq!(n(&st, "sent") + failed, 300, "{st}");
    assert_eq!(env.sim.stats().accepted, 300 - failed as u64);
    let pool = env.db().await;
    let missing = pool
        .scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'lookup_missing'")
        .await;
    // Only messages that were never in doubt (503 twice) or that the gateway was asked about
    // and does not have may fail.
    let never_in_doubt = pool
        .scalar(
            "SELECT COUNT(*) FROM messages m WHERE m.state = 'failed' AND m.reason = 'http_503' \
         AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.outcome = 'timeout')",
        )
        .await;
    assert_eq!(failed, missing + never_in_doubt, "{st}");
    assert!(
        pool.scalar(
            "SELECT COUNT(*) FROM messages m WHERE m.state = 'sent' AND EXISTS \
             (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.outcome = 'http_503' \
              AND a.id = (SELECT MAX(id) FROM attempts WHERE message_id = m.id AND outcome <> 'lookup_found'))",
        )
        .await
            > 0,
        "some messages timed out, then got a 503, and were found sent"
    );
    assert!(
        pool.scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'lookup_found'")
            .await
            > 0,
        "some messages timed out twice and were found by lookup"
    );
    crate::common::agree::assert_agrees(&env, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_broken_or_missing_answers_are_never_failures() {
    // Accepted, then a proxy's error page or a connection broken off mid-answer (single sends);
    // accepted and left out of the results (batches).
    let cases = [
        (
            SimConfig {
                garble_rate: 0.3,
                reset_rate: 0.3,
                seed: Some(seeded(5)),
                ..SimConfig::default()
            },
            1,
        ),
        (
            SimConfig {
                omit_rate: 0.3,
                seed: Some(seeded(6)),
                ..SimConfig::default()
            },
            20,
        ),
    ];
    for (sim, batch_size) in cases {
        let gw = Gw {
            max_attempts: 2,
            batch_size,
            ..Gw::default()
        };
        let (env, id) = unpaused(200, sim, gw).await;
        let o = env.run(&["campaign", "run", &id]).await;
        assert_eq!(o.code, 0, "batch {batch_size}: {}", o.all());
        let st = env.status(&id).await;
        assert_eq!((n(&st, "sent"), n(&st, "failed")), (200, 0), "{st}");
        crate::common::agree::assert_agrees(&env, &id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_cancels_what_the_gateway_accepted_and_a_later_run_settles_it() {
    // Every request is accepted and then times out: every message sent so far is in doubt.
    let sim = SimConfig {
        timeout_rate: 1.0,
        stall_ms: 5000,
        ..SimConfig::default()
    };
    let gw = Gw {
        timeout_ms: 300,
        max_attempts: 50,
        concurrency: 8,
        ..Gw::default()
    };
    let (env, id) = unpaused(300, sim, gw).await;
    let child = env.start(&id, 20).await;
    env.ok(&["campaign", "cancel", &id]).await;
    let o = exit_code(child, 2).await;
    let st = env.status_is(&id, "CANCELLED").await;
    let in_doubt = n(&st, "in_doubt");
    assert!(in_doubt >= 20, "{st}");
    assert!(
        o.stderr.contains(&format!("in doubt {in_doubt}")),
        "the summary counts them apart: {}",
        o.all()
    );
    let listed = env
        .ok(&[
            "audit",
            "--campaign",
            &id,
            "--status",
            "in_doubt",
            "--format",
            "json",
        ])
        .await;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.len() as i64, in_doubt);
    crate::common::agree::assert_taken_only_in_doubt(&env, &id, "cancelled").await;

    // The next run only settles them: found means sent, not found means cancelled.
    env.sim.set_faults(0.0, 0.0, 0.0);
    let accepted = env.sim.stats().accepted;
    env.exits(2, &["campaign", "run", &id]).await;
    let st = env.status_is(&id, "CANCELLED").await;
    assert_eq!((n(&st, "in_doubt"), n(&st, "pending")), (0, 0), "{st}");
    assert_eq!(env.sim.stats().accepted, accepted, "nothing more was sent");
    crate::common::agree::assert_agrees(&env, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_abandons_a_stalled_gateway_and_the_next_run_settles() {
    let (env, id) = stalled_gateway().await;
    let mut child = env.spawn_run(&id, &[]);
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    env.until_accepted(8).await;
    signal(&child, libc::SIGTERM);
    // The second signal must come after the first was handled (two could merge into one).
    let t0 = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the first SIGTERM is acknowledged on stderr");
        if line.contains("SIGTERM received") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("exits well before the 30 s gateway timeout")
    .expect("join")
    .expect("wait");
    let took = t.elapsed();
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert!(stderr.contains("aborted"), "{stderr}");
    let st = env.status_is(&id, "STOPPED").await;
    assert_eq!(n(&st, "sending"), 0, "{st}");
    assert!(
        n(&st, "in_doubt") as u64 >= env.sim.stats().accepted,
        "abandoned requests are in doubt: {st}"
    );

    env.sim.set_faults(0.0, 0.0, 0.0);
    env.exits(0, &["campaign", "run", &id]).await;
    env.assert_accepted_once(300);
    assert_eq!(
        env.sim.stats().duplicate_replays,
        0,
        "found by lookup, never resent"
    );
    crate::common::agree::assert_agrees(&env, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_messages_the_gateway_cannot_be_asked_about_stay_in_doubt_until_it_can() {
    // Every request is accepted and then times out, and lookups answer 503.
    let sim = crate::common::lookups_down();
    let gw = Gw::timing_out(200, 2);
    let (env, id) = unpaused(100, sim, gw).await;
    let o = env.exits(2, &["campaign", "run", &id]).await;
    o.assert_stderr_has("run it again to settle");
    let st = env.status_is(&id, "STOPPED").await;
    assert_eq!((n(&st, "in_doubt"), n(&st, "failed")), (100, 0), "{st}");
    let human = env.ok(&["campaign", "status", &id]).await;
    human.assert_stdout_has("in doubt 100");
    // Still unreachable: they stay in doubt, nothing is resent.
    let requests = env.sim.stats().requests;
    env.exits(2, &["campaign", "run", &id]).await;
    assert_eq!(n(&env.status(&id).await, "in_doubt"), 100);
    assert_eq!(
        env.sim.stats().requests,
        requests + 100,
        "one lookup each, nothing resent"
    );
    let replays = env.sim.stats().duplicate_replays;

    env.sim.set_lookups(true);
    env.sim.set_faults(0.0, 0.0, 0.0);
    env.exits(0, &["campaign", "run", &id]).await;
    env.status_is(&id, "COMPLETED").await;
    assert_eq!(
        env.sim.stats().duplicate_replays,
        replays,
        "found by lookup, not resent"
    );
    crate::common::agree::assert_agrees(&env, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_keeps_what_the_gateway_may_have_in_doubt_not_pending() {
    const KEY_ENV: &str = "MUNJA_TEST_HALT_KEY";
    let sim = SimConfig {
        timeout_rate: 1.0,
        stall_ms: 1000,
        api_key: Some("k-right".into()),
        ..SimConfig::default()
    };
    let gw = Gw {
        timeout_ms: 200,
        max_attempts: 50,
        concurrency: 4,
        api_key_env: Some(KEY_ENV.into()),
        ..Gw::default()
    };
    let env = Setup::new(200)
        .sim(sim)
        .gw(gw)
        .never_pause()
        .segment()
        .await;
    let key = [(KEY_ENV, "k-right")];
    let o = env
        .run_with(&create_args("h", "seg", "hello", &[]), &key)
        .await;
    assert_eq!(o.code, 0, "{}", o.all());
    let id = o.stdout.trim().to_string();
    let child = env
        .cmd(&["campaign", "run", &id])
        .env(KEY_ENV, "k-right")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn munja");
    env.until_accepted(20).await;
    // The account is suspended mid-run: every later answer is 401.
    env.sim.set_api_key(Some("k-rotated".into()));
    let o = exit_code(child, 1).await;
    o.assert_stderr_has("credentials");
    let st = env.status_is(&id, "FAILED").await;
    assert_eq!(n(&st, "failed"), 0, "{st}");
    env.sim.set_api_key(None);
    crate::common::agree::assert_taken_only_in_doubt(&env, &id, "pending").await;

    // Restored: the next run finds them by lookup and sends the rest.
    env.sim.set_faults(0.0, 0.0, 0.0);
    let replays = env.sim.stats().duplicate_replays;
    let o = env.run_with(&["campaign", "run", &id], &key).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        env.sim.stats().duplicate_replays,
        replays,
        "found by lookup, not resent"
    );
    crate::common::agree::assert_agrees(&env, &id).await;
}
