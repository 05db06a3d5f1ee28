//! The heartbeat of a PostgreSQL worker against the locks its own work takes: a commit stuck
//! behind a lock holds its worker's row (and a connection), a snapshot or a worker's end holds
//! the campaign's row; the heartbeat waits for none of them.

use std::sync::Arc;

use super::scratch::{ScratchDb, test_server_url};
use super::*;
use crate::store::conformance::running;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_never_waits_behind_its_own_workers_locks_or_connections() {
    let db = ScratchDb::create(&test_server_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(PgStore::open(&db.url, true).await.expect("open"));
    store.migrate().await.expect("migrate");
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
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let t0 = std::time::Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(waiting)
            .fetch_one(&mut *tx)
            .await
            .expect("pg_stat_activity");
        if n >= 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{n} claims waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
