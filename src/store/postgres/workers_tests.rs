//! A PostgreSQL worker's row locks against the heartbeat and the takeover: a commit stuck
//! behind a lock holds its worker's row (and a connection), a snapshot or a worker's end holds
//! the campaign's row, and the heartbeat waits for none of them; a takeover waits for a
//! killed worker's commit still in flight, so that its messages are settled, not skipped.

use std::sync::Arc;

use super::scratch::{ScratchDb, test_server_url};
use super::*;
use crate::store::conformance::{claim, running, start};

/// A migrated store on a scratch database, and what keeps the database alive.
async fn scratch_store() -> (ScratchDb, Arc<PgStore>) {
    let db = ScratchDb::create(&test_server_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(PgStore::open(&db.url, true).await.expect("open"));
    store.migrate().await.expect("migrate");
    (db, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_never_waits_behind_its_own_workers_locks_or_connections() {
    let (db, store) = scratch_store().await;
    let (c, a) = running(&*store, "seg", 20).await;
    let mut holder = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let mut tx = holder.begin().await.expect("begin");
    for (table, id) in [
        ("workers", a.worker),
        ("campaigns", c),
        ("executions", a.execution),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("lock");
    }
    // Claims of this worker stuck on its row, holding connections of the main pool.
    let mut stuck = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let store = store.clone();
        stuck.spawn(async move {
            store
                .claim_chunk(ClaimRequest {
                    worker: a,
                    limit: 1,
                    night_only: false,
                    cap: None,
                })
                .await
        });
    }
    until_one_waits_on_a_lock(&mut tx, "a claim to wait for the worker's row", || false).await;
    for _ in 0..3 {
        let beat = tokio::time::timeout(Duration::from_secs(2), store.heartbeat(&a))
            .await
            .expect("the heartbeat waited behind its own worker's locks");
        assert_eq!(beat.expect("beat"), (false, false));
    }
    tx.rollback().await.expect("rollback");
    while let Some(done) = stuck.join_next().await {
        done.expect("join")
            .expect("a claim once the locks are gone");
    }
    let rows = store.workers(c).await.expect("workers");
    assert_eq!(rows[0].status, "STARTED");
}

/// Polls (every 20 ms, at most 20 s) until a session of the test database waits on a lock, or
/// `done` says there is nothing left to wait for.
async fn until_one_waits_on_a_lock(
    c: &mut sqlx::PgConnection,
    what: &str,
    done: impl Fn() -> bool,
) {
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let t0 = std::time::Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(waiting)
            .fetch_one(&mut *c)
            .await
            .expect("pg_stat_activity");
        if n >= 1 || done() {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker is killed while its chunk's commit is in flight: the server has run the commit's
/// `UPDATE` (the chunk's messages are locked, the worker row held `FOR KEY SHARE`, as
/// `Fence::Commit` does) and has not yet seen the client gone. A takeover starting then waits
/// for that transaction to end; once it rolls back, the new worker's settlement by lookup gets
/// every message of the chunk. (Had the takeover not waited, the settlement would have skipped
/// the locked messages, and they would have stayed `sending` to the end of the new run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_a_killed_workers_commit_and_then_settles_its_chunk() {
    let (db, store) = scratch_store().await;
    let (c, dead) = running(&*store, "seg", 40).await;
    let chunk = claim(&*store, c, dead, 40).await;
    assert_eq!(chunk.len(), 40);
    let mut killed = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let mut tx = killed.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM workers WHERE id = $1 FOR KEY SHARE")
        .bind(dead.worker)
        .execute(&mut *tx)
        .await
        .expect("the commit's fence");
    sqlx::query("UPDATE messages SET state = 'sent' WHERE claimed_by = $1")
        .bind(dead.worker)
        .execute(&mut *tx)
        .await
        .expect("the commit's update");
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let takeover = {
        let (store, finished) = (store.clone(), finished.clone());
        tokio::spawn(async move {
            let new = start(&*store, c, Some(dead.execution), "host-b", 7, "killed").await;
            let new = new.expect("takeover");
            let settle = store.in_doubt(&new, 0, 100).await.expect("in doubt");
            finished.store(true, std::sync::atomic::Ordering::SeqCst);
            settle
        })
    };
    let mut watch = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    until_one_waits_on_a_lock(&mut watch, "the takeover to wait or finish", || {
        finished.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    // The server sees the killed client gone: its transaction rolls back.
    tx.rollback().await.expect("rollback");
    let settle = takeover.await.expect("join");
    let ids = |v: &[ClaimedMessage]| v.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&settle),
        ids(&chunk),
        "the takeover's settlement gets the killed worker's whole chunk"
    );
}
