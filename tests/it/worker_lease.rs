//! A live worker's lease against slow commits, and an execution whose last worker dies, on real
//! PostgreSQL with `munja serve` running beside the workers (its launcher takes over any
//! campaign whose lease has gone silent for `lease_timeout_secs`):
//! - a chunk commit held open by a lock for longer than the whole lease costs its worker
//!   nothing: its heartbeat has a row and connections of its own, so the lease stays fresh, no
//!   takeover, nothing ABANDONED, every number sent once;
//! - the lowest-numbered worker, which stays to end the execution, dies after the others have
//!   left: `munja serve` finishes the campaign within the lease timeout (plus its half-second
//!   tick), and every number is sent once.

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use munja::tools::sim::SimConfig;
use sqlx::Connection;

use crate::common::{Env, signal};
use crate::server::{TOKEN, free_port, wait_healthy};
use crate::worker_faults::{LEASE_TIMEOUT, Worker, slow_gateway, worker_value};
use crate::workers::{assert_exactly_once, pg_scalar, until};

/// `munja serve` on a free port, its stderr in `serve.stderr` of the test directory.
async fn serve(env: &Env) -> Child {
    let port = free_port();
    let child = env
        .cmd(&["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("MUNJA_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            File::create(env.path("serve.stderr")).expect("serve stderr file"),
        ))
        .spawn()
        .expect("spawn munja serve");
    wait_healthy(port).await;
    child
}

fn serve_log(env: &Env) -> String {
    std::fs::read_to_string(env.path("serve.stderr")).unwrap_or_default()
}

/// A connection of the test, in a transaction holding `FOR UPDATE` on worker `id`'s row: what a
/// chunk commit of that worker locks first (its fence), so its commits and claims wait.
async fn lock_worker_row(env: &Env, id: i64) -> sqlx::PgConnection {
    let url = &env.pg.as_ref().expect("a PostgreSQL test").url;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM workers WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut conn)
        .await
        .expect("lock the worker's row");
    conn
}

async fn release(mut conn: sqlx::PgConnection) {
    sqlx::query("ROLLBACK")
        .execute(&mut conn)
        .await
        .expect("rollback");
}

/// Milliseconds a statement of this database has been waiting for a lock (the longest), or 0.
async fn longest_lock_wait_ms(env: &Env) -> i64 {
    pg_scalar(
        env,
        "SELECT COALESCE(MAX((EXTRACT(EPOCH FROM clock_timestamp() - query_start) * 1000)::BIGINT), 0) \
         FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_open_past_the_lease_costs_its_worker_nothing() {
    let env = Env::on_pg(SimConfig::default(), slow_gateway(), "chunk_size = 50").await;
    let id = env
        .campaign(&env.segment_csv("seg.csv", 0, 600), "hello", &[])
        .await;
    let mut server = serve(&env).await;
    let mut worker = Worker::spawn(&env, &id, "worker", &[]);
    until(60, "the worker's first commits", || async {
        pg_scalar(&env, "SELECT COUNT(*) FROM messages WHERE state = 'sent'").await >= 50
    })
    .await;
    let me = pg_scalar(&env, "SELECT MIN(id) FROM workers").await;
    let lock = lock_worker_row(&env, me).await;
    // Held until a commit (or claim) of the worker has waited one and a half leases.
    let held = LEASE_TIMEOUT.as_millis() as i64 * 3 / 2;
    until(60, "a commit of the worker to wait 1.5 leases", || async {
        longest_lock_wait_ms(&env).await >= held
    })
    .await;
    let beat_age_ms = worker_value(
        &env,
        me,
        "EXTRACT(EPOCH FROM clock_timestamp() - h.heartbeat_at) * 1000",
    )
    .await;
    let sending = pg_scalar(
        &env,
        "SELECT COUNT(*) FROM messages WHERE state = 'sending'",
    )
    .await;
    release(lock).await;
    assert!(
        beat_age_ms < 2000,
        "the worker's heartbeat is {beat_age_ms} ms old after its commit waited {held} ms"
    );
    assert!(sending > 0, "the commit held claims");
    let code = worker.exit_within(Duration::from_secs(60)).await;
    let stderr = worker.stderr();
    assert_eq!(
        code,
        Some(0),
        "the worker:\n{stderr}\nserve:\n{}",
        serve_log(&env)
    );
    assert!(!stderr.contains("abandoned"), "{stderr}");
    let st = env.status(&id).await;
    let executions = st["executions"].as_array().expect("executions");
    assert_eq!(
        executions.len(),
        1,
        "no takeover: {st}\nserve:\n{}",
        serve_log(&env)
    );
    let workers = st["workers"].as_array().expect("workers");
    assert!(
        workers.iter().all(|w| w["status"] == "COMPLETED"),
        "nothing ABANDONED: {st}"
    );
    assert_exactly_once(&env, &id, 600).await;
    signal(&server, libc::SIGTERM);
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lowest_worker_dying_after_the_others_left_is_finished_by_serve() {
    let env = Env::on_pg(SimConfig::default(), slow_gateway(), "chunk_size = 50").await;
    let id = env
        .campaign(&env.segment_csv("seg.csv", 0, 300), "hello", &[])
        .await;
    let mut server = serve(&env).await;
    // The lowest worker runs on "another host": only the lease timeout can tell it died.
    let mut lowest = Worker::spawn(&env, &id, "lowest", &[("MUNJA_HOSTNAME", "elsewhere")]);
    until(60, "the lowest worker's first sends", || async {
        env.sim.stats().accepted >= 20
    })
    .await;
    let low = pg_scalar(&env, "SELECT MIN(id) FROM workers").await;
    let mut other = Worker::spawn(&env, &id, "other", &[]);
    // The other worker has joined (the lowest could otherwise send the rest alone first).
    until(60, "the other worker to join", || async {
        pg_scalar(
            &env,
            "SELECT COUNT(*) FROM workers WHERE status = 'STARTED'",
        )
        .await
            == 2
    })
    .await;
    until(60, "every message committed", || async {
        pg_scalar(
            &env,
            "SELECT COUNT(*) FROM messages WHERE state IN ('pending', 'sending')",
        )
        .await
            == 0
    })
    .await;
    // The lowest worker stays to end the execution; held on its row, it cannot end it before
    // the test kills it, while its heartbeat tells the other worker it is alive. The other may
    // already have left (a dry worker leaves once the lowest has beaten after it ran dry), but
    // the lowest must still run.
    let lock = lock_worker_row(&env, low).await;
    assert_eq!(
        pg_scalar(
            &env,
            &format!("SELECT COUNT(*) FROM workers WHERE id = {low} AND status = 'STARTED'")
        )
        .await,
        1,
        "the lowest worker still runs"
    );
    let code = other.exit_within(Duration::from_secs(60)).await;
    let other_err = other.stderr();
    assert_eq!(code, Some(0), "the other worker:\n{other_err}");
    assert!(
        other_err.contains("other workers still run"),
        "the other worker left first:\n{other_err}"
    );
    signal(&lowest.child, libc::SIGKILL);
    let killed = Instant::now();
    assert_eq!(lowest.exit_within(Duration::from_secs(10)).await, Some(-1));
    release(lock).await;
    until(60, "the campaign to be finished", || async {
        env.status(&id).await["status"] == "COMPLETED"
    })
    .await;
    let took = killed.elapsed();
    // The takeover began once the lease had been silent for lease_timeout_secs (database
    // clock), and within the launcher's tick and a second of slack after that.
    let taken_after_ms = pg_scalar(
        &env,
        &format!(
            "SELECT (EXTRACT(EPOCH FROM (SELECT MAX(started_at) FROM executions) - h.heartbeat_at) \
             * 1000)::BIGINT FROM worker_heartbeats h WHERE h.worker_id = {low}"
        ),
    )
    .await;
    let lease_ms = LEASE_TIMEOUT.as_millis() as i64;
    eprintln!(
        "COMPLETED {took:?} after the kill; taken over {taken_after_ms} ms after the last heartbeat"
    );
    assert!(
        (lease_ms..=lease_ms + 2000).contains(&taken_after_ms),
        "taken over {taken_after_ms} ms after the dead worker's last heartbeat \
         (lease_timeout_secs = {LEASE_TIMEOUT:?}); serve:\n{}",
        serve_log(&env)
    );
    assert!(
        took < LEASE_TIMEOUT + Duration::from_secs(5),
        "COMPLETED {took:?} after the kill; serve:\n{}",
        serve_log(&env)
    );
    let st = env.status(&id).await;
    let dead = st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| crate::common::n(w, "id") == low)
        .cloned()
        .expect("the lowest worker");
    assert_eq!(dead["status"], "ABANDONED", "{st}");
    assert_exactly_once(&env, &id, 300).await;
    signal(&server, libc::SIGTERM);
    let _ = server.wait();
}
