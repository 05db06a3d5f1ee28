//! The PostgreSQL store: the same job repository as [`super::sqlite`], for a server that several
//! processes (and later several workers) write to at the same time.
//!
//! Isolation is PostgreSQL's default READ COMMITTED; what SQLite gets from its single write lock
//! (`BEGIN IMMEDIATE`) this store gets from row locks:
//! - every write that depends on the lease (claim, commit, snapshot, finish) first locks the
//!   campaign row with `SELECT … FOR UPDATE` and checks the holder in the same transaction
//!   (fencing); `start_execution`, `cancel`, `delete_campaign` and `requeue_retryable` lock the
//!   same row first, so a takeover waits for an in-flight commit, the loser of two racing starts
//!   sees the winner, and all of them take their row locks in one order (campaign, messages,
//!   executions);
//! - the heartbeat writes only its worker's heartbeat row, on connections of its own (see
//!   `workers`);
//! - a segment import holds its segment row (upsert) until it commits; a snapshot reads the
//!   segment `FOR SHARE`, so it never copies a half-replaced list.
//!
//! Times that leases and expiries are compared by come from the database clock (`munja_now()`,
//! milliseconds, and `munja_clock_now()` where the moment of the call matters), plus the
//! [`Clock`]'s offset, which only tests move (migration 0008). A [`Lease`]'s `heartbeat_at` is handed out in this machine's clock: now minus
//! the age the database measured, so a caller comparing it with `Utc::now()` gets the true age
//! even when the two clocks disagree.
//!
//! Writes are set-based: one statement per chunk with `UNNEST` arrays, never one per message.

mod import;
mod rows;
mod run;
pub mod scratch;
mod sql_segments;
mod workers;
#[cfg(test)]
mod workers_tests;

use rows::*;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Postgres, QueryBuilder, Transaction};

use super::sql::Backend;
use super::sql::campaigns::{self as sql, lease_holder};
use super::*;

/// Rows per `UNNEST` statement of an import (arrays, so no bound-parameter limit; this bounds
/// the memory of one statement).
const INSERT_BATCH: usize = 5000;

/// How long a session of munja may sit idle inside a transaction before the server ends it
/// (munja's transactions issue their statements back to back; the longest pauses are between
/// the batches of an import or a snapshot).
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// How long opening waits for a connection before naming the server as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgStore {
    pool: PgPool,
    /// The heartbeats' own connections (opened on first use): a heartbeat never waits for a
    /// connection that a commit stuck on a lock holds (see `workers`).
    beats: PgPool,
    clock: Clock,
}

/// `host:port/database` of a PostgreSQL URL, for messages: never the user's password.
pub fn server_name(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or(opts.get_username())
    )
}

/// Has every connection the pool hands out read the clock's offset (`munja.clock_offset_ms`,
/// added by `munja_now()`) once a test has moved it; an unmoved clock costs nothing.
fn with_clock(pool: PgPoolOptions, clock: &Clock) -> PgPoolOptions {
    let (on_connect, on_acquire) = (clock.clone(), clock.clone());
    pool.after_connect(move |conn, _| {
        let clock = on_connect.clone();
        Box::pin(async move { set_clock_offset(conn, &clock).await })
    })
    .before_acquire(move |conn, _| {
        let clock = on_acquire.clone();
        Box::pin(async move { set_clock_offset(conn, &clock).await.map(|()| true) })
    })
}

async fn set_clock_offset(conn: &mut sqlx::PgConnection, clock: &Clock) -> sqlx::Result<()> {
    let offset = clock.offset_ms();
    if offset != 0 {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(clock::OFFSET_SETTING)
            .bind(offset.to_string())
            .execute(conn)
            .await?;
    }
    Ok(())
}

impl PgStore {
    /// Connects to the server of a `postgres://` URL; the database must exist (`munja init`
    /// creates the tables, not the database). Unless `init` is true, a database without
    /// munja's tables is [`StoreError::NoDatabase`], as a missing SQLite file is.
    pub async fn open(url: &str, init: bool) -> Result<PgStore> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Unreachable(format!(
                    "database_url is not a valid PostgreSQL URL ({e}); expected \
                     postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
                ))
            })?
            // A worker frozen inside a transaction (stopped, partitioned) would hold its row
            // lock, and so its claims, for ever: the server ends such a session instead.
            .options([(
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            )]);
        let server = server_name(&opts);
        let unreachable = |e: sqlx::Error| {
            StoreError::Unreachable(format!(
                "cannot connect to PostgreSQL at {server}: {}; check that the server runs \
                 and accepts this user, and that the database exists (createdb), or fix \
                 database_url / MUNJA_DATABASE_URL",
                connect_reason(&e)
            ))
        };
        // One direct connection first: the pool would retry a refused connection until its
        // timeout and then report only the timeout.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect())
            .await
            .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
            .map_err(unreachable)?;
        let _ = probe.close().await;
        let clock = Clock::default();
        let pool = with_clock(PgPoolOptions::new(), &clock)
            .max_connections(8)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts.clone())
            .await
            .map_err(unreachable)?;
        let beats = with_clock(PgPoolOptions::new(), &clock)
            .max_connections(2)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(opts);
        if !init {
            let migrated: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(&pool)
                    .await?;
            if !migrated {
                return Err(StoreError::NoDatabase(format!(
                    "{server} (the database exists but has no munja tables)"
                )));
            }
        }
        Ok(PgStore { pool, beats, clock })
    }
}

#[async_trait]
impl Backend for PgStore {
    type DB = Postgres;

    fn time(&self) -> &Clock {
        &self.clock
    }

    async fn read(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// The claim's expiry is the database clock plus `ttl_ms`, as an interval.
    async fn launch_claim(&self, campaign: i64, status: &str, ttl_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE campaigns SET launch_claim_until = munja_now() + $1 * INTERVAL '1 millisecond' \
             WHERE id = $2 AND status = $3 \
             AND (launch_claim_until IS NULL OR launch_claim_until < munja_now())",
        )
        .bind(ttl_ms as f64)
        .bind(campaign)
        .bind(status)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The size of the database on the server. `free_bytes` is 0: PostgreSQL reuses the space
    /// of deleted rows after (auto)VACUUM and does not report it without an extension.
    async fn usage(&self) -> Result<DiskUsage> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await?;
        Ok(DiskUsage {
            db_bytes: u64::try_from(bytes).unwrap_or(0),
            free_bytes: 0,
        })
    }

    async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<PgRow>> {
        Ok(audit_query(f).build().fetch_all(&self.pool).await?)
    }

    /// Batches picked by a join of the attempts with their finished campaigns.
    async fn purge_attempts(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        let delete = format!(
            "DELETE FROM attempts WHERE id IN (SELECT a.id FROM attempts a \
             JOIN campaigns c ON c.id = a.campaign_id WHERE {} AND a.at < $1 LIMIT $2)",
            sql::FINISHED
        );
        sql::delete_in_batches(self, &delete, before, batch).await
    }
    async fn retry_finish(&self, _: &StoreError, _: u32) -> bool {
        false
    }
}

/// The cause of a failed connection, without anything from the URL.
fn connect_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

/// A `LIMIT` value: a negative limit means none, as in SQLite (PostgreSQL refuses it; `LIMIT
/// NULL` is its "no limit").
fn row_limit(limit: i64) -> Option<i64> {
    (limit >= 0).then_some(limit)
}

fn no_campaign(id: i64) -> StoreError {
    StoreError::NotFound(format!(
        "no campaign with id {id}; `munja campaign list` shows the existing ones"
    ))
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn cancel(&self, campaign: i64, dead_lease: Option<i64>) -> Result<u64> {
        self.cancel_campaign(campaign, dead_lease).await
    }

    async fn delete_campaign(&self, campaign: i64, expected_lease: Option<i64>) -> Result<()> {
        self.delete(campaign, expected_lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_server_is_named_without_the_password() {
        // Port 1 on loopback: nothing listens there.
        let e = match PgStore::open("postgres://munja:s3cret@127.0.0.1:1/jobs", true).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connected to 127.0.0.1:1"),
        };
        assert!(
            e.contains("cannot connect to PostgreSQL at 127.0.0.1:1/jobs"),
            "{e}"
        );
        assert!(e.contains("database_url / MUNJA_DATABASE_URL"), "{e}");
        assert!(e.contains("refused"), "the cause is named: {e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn a_malformed_url_is_refused_without_echoing_it() {
        let e = match PgStore::open("postgres://munja:s3cret@127.0.0.1:notaport/jobs", true).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened a malformed URL"),
        };
        assert!(e.contains("not a valid PostgreSQL URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
