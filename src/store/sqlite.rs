//! The embedded default store: one SQLite file in WAL mode through sqlx.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, so it takes SQLite's single write lock
//! up front (waiting up to the busy timeout) instead of failing half-way when another process,
//! such as `munja campaign stop`, wrote in between.
//!
//! Only `init` (and the demo and bench) create the file. Every write first checks the file is
//! still the one opened (`file_identity`); a transaction SQLite rolled back by itself (a full
//! disk) never leaves its pooled connection looking busy, so the next write reports the real
//! error.
//!
//! Writes go through one connection of their own (a pool of one), reads through three others:
//! the writers of one process (chunk commits, claims, rate-budget takes, heartbeats) queue for
//! it in order, instead of meeting SQLite's write lock and polling it with the busy handler's
//! sleeps (1, 2, 5, 10, ... ms), which made a take of the rate budget wait about 60 ms behind the
//! chunk commits. The busy timeout still settles writers of other processes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite, Transaction};

use super::sql::Backend;
use super::sql::campaigns::{self as sql, FINISHED, fence, lease_holder};
use super::*;
use file_identity::FileIdentity;

mod file_identity;
mod import;
mod run;
mod workers;

mod sql_segments;

/// Rows per multi-row INSERT (SQLite allows 32,766 bound parameters).
const INSERT_BATCH: usize = 1000;

/// Test and diagnostic knob: caps the database at this many pages (`PRAGMA max_page_count`),
/// so that "disk full" can be reproduced without filling a disk.
pub const MAX_PAGE_COUNT_ENV: &str = "MUNJA_SQLITE_MAX_PAGE_COUNT";

/// Attempts at recording the end of an execution.
const FINISH_TRIES: u32 = 5;

/// Rows per statement of a large UPDATE or DELETE inside one transaction: a single statement
/// over a whole campaign collects every rowid it changes in memory first.
const TX_BATCH: i64 = 10_000;

pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// The process's one write connection.
    writer: SqlitePool,
    /// The database file as opened; every write checks it is still the same file.
    file: Option<FileIdentity>,
    clock: Clock,
}

/// A pool of `n` connections; see the module's documentation for why writes have their own.
fn pool_options(n: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(n)
        .after_release(|conn, _| {
            Box::pin(async move {
                // A transaction SQLite ended by itself (it rolls back on SQLITE_FULL) stays
                // open in sqlx's count, and the next BEGIN on this connection would fail
                // with a transaction-depth error hiding the real one: run the rollback that
                // a dropped transaction queued, and close the connection if still unsure.
                conn.ping().await?;
                Ok(!conn.is_in_transaction())
            })
        })
}

impl SqliteStore {
    /// Opens the database at `url`; `create` makes it when it does not exist (only `init`, the
    /// demo and the bench do), otherwise a missing file is [`StoreError::NoDatabase`].
    pub async fn open(url: &str, create: bool) -> Result<SqliteStore> {
        let mut opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // 2 MiB of page cache per connection (4 connections): the cache fills as the
            // database grows, so a larger one made a run's peak RSS grow with the campaign
            // (50 MiB at 100,000 messages, 63 MiB at 1,000,000 with 8 MiB each); pages past it
            // come from the OS's file cache.
            .pragma("cache_size", "-2000");
        if let Some(v) = std::env::var_os(MAX_PAGE_COUNT_ENV) {
            let pages = v
                .to_str()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "{MAX_PAGE_COUNT_ENV}={v:?}: expected a whole number of pages, or unset it"
                    ))
                })?;
            opts = opts.pragma("max_page_count", pages.to_string());
        }
        let path = opts.get_filename().to_path_buf();
        let on_disk = !path.as_os_str().is_empty()
            && path != Path::new(":memory:")
            && !path.to_string_lossy().starts_with("file:");
        if on_disk && !create && !path.exists() {
            return Err(StoreError::NoDatabase(path.display().to_string()));
        }
        let pool = pool_options(3).connect_with(opts.clone()).await?;
        let writer = pool_options(1).connect_with(opts).await?;
        let file = if on_disk {
            let id = FileIdentity::of(&path).map_err(|e| {
                StoreError::NotFound(format!("cannot read {}: {e}", path.display()))
            })?;
            Some(id)
        } else {
            None
        };
        Ok(SqliteStore {
            pool,
            writer,
            file,
            clock: Clock::default(),
        })
    }

    /// Fails when the database file was deleted or replaced since it was opened.
    fn check_file(&self) -> Result<()> {
        self.file.as_ref().map_or(Ok(()), FileIdentity::check)
    }

    /// The store's clock as the text every time column holds.
    fn now(&self) -> String {
        ts(self.clock.now())
    }

    /// Every write transaction starts here, after checking the file is still the one opened.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.check_file()?;
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[async_trait]
impl Backend for SqliteStore {
    type DB = Sqlite;

    fn time(&self) -> &Clock {
        &self.clock
    }

    async fn read(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.pool.acquire().await?)
    }

    async fn write(&self) -> Result<PoolConnection<Sqlite>> {
        self.check_file()?;
        Ok(self.writer.acquire().await?)
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.write_tx().await
    }

    /// The claim's expiry is text in the times' RFC 3339 form, so comparing is text order.
    async fn launch_claim(&self, campaign: i64, status: &str, ttl_ms: i64) -> Result<bool> {
        self.check_file()?;
        let now = self.clock.now();
        let n = sqlx::query(
            "UPDATE campaigns SET launch_claim_until = ?1 WHERE id = ?2 AND status = ?3 \
             AND (launch_claim_until IS NULL OR launch_claim_until < ?4)",
        )
        .bind(ts(now + chrono::Duration::milliseconds(ttl_ms)))
        .bind(campaign)
        .bind(status)
        .bind(ts(now))
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn usage(&self) -> Result<DiskUsage> {
        let mut conn = self.pool.acquire().await?;
        let mut pragma = async |name: &str| -> Result<u64> {
            let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
                .fetch_one(&mut *conn)
                .await?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        let page = pragma("page_size").await?;
        let pages = pragma("page_count").await?;
        let free = pragma("freelist_count").await?;
        Ok(DiskUsage {
            db_bytes: page * pages,
            free_bytes: page * free,
        })
    }

    async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<SqliteRow>> {
        Ok(audit_query(f).build().fetch_all(&self.pool).await?)
    }

    /// Deletes the attempts of finished campaigns older than `before`, walking each campaign's
    /// attempts once through the `(campaign_id, id)` index, `batch` ids per transaction (a scan
    /// of the table per batch would re-read every attempt that stays, batch after batch).
    async fn purge_attempts(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        let before = ts(before);
        let finished: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT c.id FROM campaigns c WHERE {FINISHED} ORDER BY c.id"
        )))
        .fetch_all(&self.pool)
        .await?;
        let delete = format!(
            "DELETE FROM attempts WHERE campaign_id = ?1 AND id > ?2 AND id <= ?3 AND at < ?4 \
             AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = ?1 AND {FINISHED})"
        );
        let mut total = 0;
        for campaign in finished {
            let mut after = 0i64;
            loop {
                let upto: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(id) FROM (SELECT id FROM attempts WHERE campaign_id = ? AND id > ? \
                     ORDER BY id LIMIT ?)",
                )
                .bind(campaign)
                .bind(after)
                .bind(batch)
                .fetch_one(&self.pool)
                .await?;
                let Some(upto) = upto else { break };
                total += sqlx::query(sqlx::AssertSqlSafe(delete.as_str()))
                    .bind(campaign)
                    .bind(after)
                    .bind(upto)
                    .bind(&before)
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                after = upto;
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }

    async fn retry_finish(&self, e: &StoreError, tries: u32) -> bool {
        if tries >= FINISH_TRIES || !matches!(e, StoreError::Db(_) | StoreError::Full) {
            return false;
        }
        if matches!(e, StoreError::Full) {
            // Copy the WAL into the database and start it over, so that the retry reuses the
            // WAL file's space instead of growing it on a full disk.
            let _ = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                .execute(&self.writer)
                .await;
        }
        true
    }
}

/// One page of the audit, each filter combination walking an index in output order, so a page
/// costs its own rows and never a sort of the whole campaign (ids and seqs of a campaign grow
/// together: its messages are inserted in seq order by one snapshot).
/// - `--phone`: the `(phone, sent_at)` index (the unary `+` keeps SQLite off the campaign
///   indexes), a handful of rows sorted;
/// - `--status`: the `(campaign_id, state, id)` index;
/// - neither: the `(campaign_id, seq)` unique index.
fn audit_query(f: &AuditFilter) -> QueryBuilder<Sqlite> {
    let mut qb = QueryBuilder::<Sqlite>::new(sql::AUDIT_COLUMNS);
    match (&f.phone, f.state, f.delivery) {
        (Some(p), state, delivery) => {
            qb.push("phone = ")
                .push_bind(p.as_str())
                .push(" AND +campaign_id = ")
                .push_bind(f.campaign);
            if let Some(s) = state {
                qb.push(" AND +state = ").push_bind(s.as_str());
            }
            if let Some(d) = delivery {
                qb.push(" AND +delivery = ").push_bind(d.as_str());
            }
            qb.push(" AND seq > ")
                .push_bind(f.after_seq)
                .push(" ORDER BY seq");
        }
        // `--status delivered|undelivered`: the partial `(campaign_id, delivery, id)` index.
        (None, state, Some(d)) => {
            qb.push("campaign_id = ")
                .push_bind(f.campaign)
                .push(" AND delivery = ")
                .push_bind(d.as_str());
            if let Some(s) = state {
                qb.push(" AND +state = ").push_bind(s.as_str());
            }
            qb.push(" AND id > ")
                .push_bind(f.after_id)
                .push(" ORDER BY id");
        }
        (None, Some(s), None) => {
            qb.push("campaign_id = ")
                .push_bind(f.campaign)
                .push(" AND state = ")
                .push_bind(s.as_str())
                .push(" AND id > ")
                .push_bind(f.after_id)
                .push(" ORDER BY id");
        }
        (None, None, None) => {
            qb.push("campaign_id = ")
                .push_bind(f.campaign)
                .push(" AND seq > ")
                .push_bind(f.after_seq)
                .push(" ORDER BY seq");
        }
    }
    qb.push(" LIMIT ").push_bind(f.limit);
    qb
}

#[async_trait]
impl Store for SqliteStore {
    async fn cancel(&self, campaign: i64, dead_lease: Option<i64>) -> Result<u64> {
        self.cancel_campaign(campaign, dead_lease).await
    }

    async fn delete_campaign(&self, campaign: i64, expected_lease: Option<i64>) -> Result<()> {
        self.delete(campaign, expected_lease).await
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
