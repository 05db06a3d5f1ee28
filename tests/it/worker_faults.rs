//! Faults of one worker among several, on real PostgreSQL: a worker cut off its database (its
//! connections reset, or black-holed as by a network partition) stops by itself before its
//! claims could expire, and a worker on another host that dies idle is closed by the survivor
//! only once `lease_timeout_secs` of silence have passed. Every number reaches the gateway
//! exactly once either way.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use munja::tools::sim::SimConfig;
use sqlx::postgres::PgConnectOptions;

use crate::common::proxy::{Mode, Proxy};
use crate::common::{Env, Gw, n, signal};
use crate::workers::{assert_exactly_once, pg_scalar, until};

/// `policy.lease_timeout_secs` of every test here (written by [`Env`]).
pub(crate) const LEASE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn slow_gateway() -> Gw {
    Gw::limited(100, 10, 4)
}

/// A `munja campaign run ID` whose stdout and stderr go to files of the test directory, so
/// that it never blocks on a full pipe while the test polls it.
pub(crate) struct Worker {
    pub(crate) child: Child,
    stderr: std::path::PathBuf,
}

impl Worker {
    pub(crate) fn spawn(env: &Env, id: &str, name: &str, vars: &[(&str, &str)]) -> Worker {
        let stderr = env.path(&format!("{name}.stderr"));
        let mut cmd = env.cmd(&["campaign", "run", id]);
        cmd.envs(vars.iter().copied())
            .stdout(Stdio::from(
                File::create(env.path(&format!("{name}.stdout"))).expect("stdout file"),
            ))
            .stderr(Stdio::from(File::create(&stderr).expect("stderr file")));
        Worker {
            child: cmd.spawn().expect("spawn munja"),
            stderr,
        }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls for the exit for up to `limit`: its exit code (-1: killed by a signal), or `None`
    /// when it still runs.
    pub(crate) async fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.code().unwrap_or(-1));
            }
            if t0.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of this test's PostgreSQL server and its `host:port` as its URL spells it.
async fn upstream(env: &Env) -> (SocketAddr, String) {
    let url = &env.pg.as_ref().expect("a PostgreSQL test").url;
    let opts = PgConnectOptions::from_str(url).expect("test database URL");
    let authority = format!("{}:{}", opts.get_host(), opts.get_port());
    let addr = tokio::net::lookup_host(&authority)
        .await
        .expect("resolve the test server")
        .next()
        .expect("an address of the test server");
    (addr, authority)
}

/// A worker reaching PostgreSQL through a proxy that is cut (`mode`) while it sends: it stops
/// by itself, saying why, before its claims could expire; a worker started afterwards on the
/// database finishes the campaign and every number is accepted once.
async fn cut_off_worker_stops_before_its_claims_expire(mode: Mode) {
    let env = Env::on_pg(SimConfig::default(), slow_gateway(), "chunk_size = 50").await;
    let id = env
        .campaign(&env.segment_csv("seg.csv", 0, 600), "hello", &[])
        .await;
    let (addr, authority) = upstream(&env).await;
    let proxy = Proxy::start(addr).await;
    let url = proxy.url(&env.db_url, &authority);
    let mut cut_off = Worker::spawn(&env, &id, "cut", &[("MUNJA_DATABASE_URL", &url)]);
    until(60, "the worker's first sends", || async {
        env.sim.stats().accepted >= 50
            && pg_scalar(
                &env,
                "SELECT COUNT(*) FROM messages WHERE state = 'sending'",
            )
            .await
                > 0
    })
    .await;
    proxy.set(mode);
    let cut = Instant::now();
    // Its claims expire LEASE_TIMEOUT after its last heartbeat, at most one beat before the
    // cut: it must be gone by then. A generous second bound tells a late exit from a hang.
    let code = cut_off.exit_within(Duration::from_secs(30)).await;
    let took = cut.elapsed();
    let stderr = cut_off.stderr();
    let Some(code) = code else {
        panic!(
            "{mode:?}: the cut-off worker still runs {took:?} after the cut \
             (lease_timeout_secs = {LEASE_TIMEOUT:?}); its stderr:\n{stderr}"
        );
    };
    assert!(
        took < LEASE_TIMEOUT,
        "{mode:?}: the cut-off worker exited {took:?} after the cut, not before its claims \
         could expire ({LEASE_TIMEOUT:?}); stderr:\n{stderr}"
    );
    assert_ne!(code, 0, "{mode:?}: stderr:\n{stderr}");
    // Cut in the middle of a write, the claim loop fails first; otherwise the heartbeat
    // gives up after half of lease_timeout_secs. Either way stderr says the database failed.
    let heartbeat = stderr.contains("heartbeat failed") && stderr.contains("before its claims");
    let write = stderr.contains("error: ") && stderr.contains("error communicating with database");
    assert!(
        heartbeat || write,
        "{mode:?}: exit {code} after {took:?} without saying the database failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("total 0:"),
        "{mode:?}: a summary of counts nobody could read:\n{stderr}"
    );
    eprintln!("{mode:?}: the cut-off worker exited {code} {took:?} after the cut:\n{stderr}");
    drop(proxy);
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert_exactly_once(&env, &id, 600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_database_connections_reset_stops_by_itself() {
    cut_off_worker_stops_before_its_claims_expire(Mode::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_database_is_black_holed_stops_by_itself() {
    cut_off_worker_stops_before_its_claims_expire(Mode::BlackHole).await;
}

/// One integer of worker `id`'s row: `expr` over its columns and its `heartbeat_at`.
pub(crate) async fn worker_value(env: &Env, id: i64, expr: &str) -> i64 {
    pg_scalar(
        env,
        &format!(
            "SELECT ({expr})::BIGINT FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id \
             WHERE k.id = {id}"
        ),
    )
    .await
}

/// A worker on another host (`MUNJA_HOSTNAME`) joins a run whose queue is already claimed and
/// dies idle, holding nothing, when the survivor still has `left_at_kill` messages in flight
/// (at most; at least 100 when `None`): its process cannot be seen from here, so the survivor
/// finishes every message, then waits out `lease_timeout_secs` of the dead worker's silence
/// before it closes it as ABANDONED and ends the execution COMPLETED.
async fn remote_worker_dies_idle(left_at_kill: Option<i64>) {
    let env = Env::on_pg(SimConfig::default(), slow_gateway(), "chunk_size = 100").await;
    let id = env
        .campaign(&env.segment_csv("seg.csv", 0, 500), "hello", &[])
        .await;
    let mut survivor = Worker::spawn(&env, &id, "survivor", &[]);
    until(60, "the survivor to claim the whole queue", || async {
        pg_scalar(
            &env,
            "SELECT COUNT(*) FROM messages WHERE state <> 'pending'",
        )
        .await
            == 500
    })
    .await;
    let mut remote = Worker::spawn(&env, &id, "remote", &[("MUNJA_HOSTNAME", "elsewhere")]);
    let dead = "(SELECT id FROM workers WHERE host = 'elsewhere')";
    until(60, "the remote worker's heartbeat", || async {
        pg_scalar(
            &env,
            &format!(
                "SELECT COUNT(*) FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id \
                 WHERE k.id = {dead} AND h.heartbeat_at > k.started_at"
            ),
        )
        .await
            == 1
    })
    .await;
    let dead = pg_scalar(&env, dead).await;
    let claims =
        format!("SELECT COUNT(*) FROM messages WHERE state = 'sending' AND claimed_by = {dead}");
    assert_eq!(pg_scalar(&env, &claims).await, 0, "it holds no claims");
    let sending = "SELECT COUNT(*) FROM messages WHERE state = 'sending'";
    if let Some(most) = left_at_kill {
        until(60, "the survivor's last messages", || async {
            pg_scalar(&env, sending).await <= most
        })
        .await;
    }
    let left = pg_scalar(&env, sending).await;
    assert!(
        left > 0 && (left_at_kill.is_some() || left >= 100),
        "the survivor has work left: {left}"
    );
    signal(&remote.child, libc::SIGKILL);
    assert_eq!(remote.exit_within(Duration::from_secs(10)).await, Some(-1));
    let code = survivor.exit_within(Duration::from_secs(60)).await;
    let stderr = survivor.stderr();
    assert_eq!(code, Some(0), "the survivor:\n{stderr}");
    let st = env.status(&id).await;
    assert_eq!(
        st["status"], "COMPLETED",
        "killed with {left} messages left in flight; the survivor:\n{stderr}\n{st}"
    );
    assert!(
        stderr.contains("rescued the claims of dead workers"),
        "{stderr}"
    );
    let row = st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| n(w, "id") == dead)
        .cloned()
        .expect("the remote worker");
    assert_eq!(row["status"], "ABANDONED", "{st}");
    assert_eq!(row["host"], "elsewhere", "{st}");
    assert_eq!(n(&row, "sent"), 0, "{st}");
    assert!(
        row["exit_message"]
            .as_str()
            .is_some_and(|m| m.contains("no heartbeat")),
        "{st}"
    );
    // Closed, and the execution ended, only after a full lease of silence (database clock).
    let silent_ms = worker_value(
        &env,
        dead,
        "EXTRACT(EPOCH FROM k.ended_at - h.heartbeat_at) * 1000",
    )
    .await;
    assert!(
        silent_ms >= LEASE_TIMEOUT.as_millis() as i64,
        "closed after {silent_ms} ms of silence"
    );
    let execution_after_ms = pg_scalar(
        &env,
        &format!(
            "SELECT (EXTRACT(EPOCH FROM e.ended_at - h.heartbeat_at) * 1000)::BIGINT \
             FROM executions e JOIN workers k ON k.execution_id = e.id \
             JOIN worker_heartbeats h ON h.worker_id = k.id WHERE k.id = {dead}"
        ),
    )
    .await;
    assert!(
        execution_after_ms >= LEASE_TIMEOUT.as_millis() as i64,
        "the execution ended {execution_after_ms} ms after the dead worker's last heartbeat"
    );
    eprintln!(
        "killed with {left} messages left in flight; closed after {silent_ms} ms of silence, \
         the execution ended {execution_after_ms} ms after its last heartbeat"
    );
    assert_exactly_once(&env, &id, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_host_that_dies_idle_is_closed_after_the_lease_timeout() {
    remote_worker_dies_idle(None).await;
}

/// As above, but the remote worker dies while the survivor sends its last chunk (at most 1 s
/// of work at 100/s): the survivor runs dry before the dead worker has been silent for a third
/// of the lease, when `others_still_working` does not count it as silent yet.
///
/// (This once left the execution STARTED: the survivor ended as "other workers still run".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_host_that_dies_idle_near_the_end_is_closed_all_the_same() {
    remote_worker_dies_idle(Some(100)).await;
}
