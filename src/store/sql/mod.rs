//! The SQL both backends run. Where PostgreSQL and SQLite agree, an operation is written once
//! here, generic over the [`Dialect`]: one statement text (numbered `$N` parameters, which
//! sqlx's SQLite driver maps to argument N as PostgreSQL does) and one mapping of its rows.
//! What the two databases do not agree on is the [`Dialect`], written once per database in
//! `dialect`, each with the reason:
//! - times: TIMESTAMPTZ read by the database clock (`munja_now()`) on PostgreSQL, RFC 3339 text
//!   and this host's clock on SQLite ([`At`], [`Stamp`], [`Dialect::now`]);
//! - row locks: PostgreSQL's writers run side by side and lock the rows they read
//!   ([`Dialect::ROW_LOCKS`]), SQLite's take its one write lock up front (`BEGIN IMMEDIATE`);
//! - `LIMIT` without a limit ([`Dialect::limit`]);
//! - join order: SQLite's planner keeps a `CROSS JOIN`'s ([`Dialect::ORDERED_JOIN`]);
//! - lists of values: PostgreSQL binds an array, SQLite one parameter each
//!   ([`Dialect::in_list`]).
//!
//! Transactions are opened by the backend (`BEGIN IMMEDIATE` and the file check on SQLite);
//! the operations here run on the connection they are given. Statements that differ in more
//! than a fragment (set-based writes with `UNNEST` arrays on PostgreSQL, multi-row `VALUES` on
//! SQLite; `FOR UPDATE SKIP LOCKED` claims) stay in the backend modules.

mod dialect;

pub(crate) mod campaigns;
pub(crate) mod delivery;
pub(crate) mod imports;
pub(crate) mod run;
pub(crate) mod schedules;
pub(crate) mod segments;
pub(crate) mod workers;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Database, Transaction};

use super::{AuditFilter, Clock, DiskUsage, Result, Take};

/// A store on one database, as the contract's parts written once for both (the operations of
/// `delivery` and `schedules`) see it: where its connections come from, and the one such
/// operation the two write differently.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    type DB: Dialect;
    /// The store's clock (see [`crate::store::CampaignStore::clock`]).
    fn time(&self) -> &Clock;
    /// A pooled connection, for reads.
    async fn read(&self) -> Result<PoolConnection<Self::DB>>;
    /// A pooled connection for a one-statement write: a read's, unless the database has more
    /// to check first (SQLite, that its file is still the one it opened).
    async fn write(&self) -> Result<PoolConnection<Self::DB>> {
        self.read().await
    }
    /// A write transaction: `BEGIN IMMEDIATE` on SQLite, after the file check; a plain `BEGIN`
    /// on PostgreSQL, whose statements lock the rows they need.
    async fn begin(&self) -> Result<Transaction<'static, Self::DB>>;
    /// [`crate::store::ScheduleStore::claim_launch`]: its expiry is "now" plus a duration,
    /// which the two databases add differently (an interval on PostgreSQL's clock, RFC 3339
    /// text of this host's on SQLite).
    async fn launch_claim(&self, campaign: i64, status: &str, ttl_ms: i64) -> Result<bool>;
    /// Whether recording the end of an execution is tried again after `e` on try `tries`: on
    /// SQLite a full disk (after a WAL checkpoint) or a busy database may pass on a later try,
    /// and a run that cannot record its end would stay STARTED; PostgreSQL's server-side
    /// errors are not retried.
    async fn retry_finish(&self, e: &crate::store::StoreError, tries: u32) -> bool;
    /// One page of [`crate::store::Store::audit`], as rows for [`campaigns::audit_from_row`]:
    /// each filter combination walks an index in output order, which each planner is led to
    /// differently (see each backend's `audit_query`).
    async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<<Self::DB as Database>::Row>>;
    /// The attempts part of [`crate::store::Store::purge`]: SQLite walks each finished
    /// campaign's attempts through its index (a scan per batch would re-read every attempt
    /// that stays); PostgreSQL deletes batches picked by a join.
    async fn purge_attempts(&self, before: DateTime<Utc>, batch: i64) -> Result<u64>;
    /// [`crate::store::Store::disk_usage`]: SQLite counts its pages; PostgreSQL asks the
    /// server the database's size and cannot tell its free space.
    async fn usage(&self) -> Result<DiskUsage>;
}

/// A token bucket to refill ([`Dialect::refill_bucket`]): the gateway's, as `take` sizes it,
/// by the store's `clock`.
pub(crate) struct Bucket<'a> {
    pub gateway: &'a str,
    pub take: Take,
    pub clock: &'a Clock,
}

/// A statement with its arguments, as [`Dialect`] runs it.
pub(crate) type Q<'q, DB> = Query<'q, DB, <DB as Database>::Arguments>;

/// A time bound to a statement or read from a row: TIMESTAMPTZ on PostgreSQL, RFC 3339 text
/// with milliseconds on SQLite (the text [`super::ts`] writes, so that text order is time
/// order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At(pub DateTime<Utc>);

/// A stored time read as the RFC 3339 text the store's types hold: SQLite's column text as
/// stored, PostgreSQL's TIMESTAMPTZ written by [`super::ts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp(pub String);

/// What differs between PostgreSQL and SQLite in the statements they share, and what a
/// statement generic over the database needs of it: the values it binds ([`Bind`]) and reads
/// ([`Get`]), and running it on a connection.
pub(crate) trait Dialect:
    Database
    + Bind<i64>
    + Bind<f64>
    + Bind<bool>
    + Bind<String>
    + Bind<Option<i64>>
    + Bind<Option<String>>
    + for<'a> Bind<&'a str>
    + Bind<At>
    + Bind<Option<At>>
    + Get<i64>
    + Get<bool>
    + Get<Option<bool>>
    + Get<String>
    + Get<Option<i64>>
    + Get<Option<String>>
    + Get<At>
    + Get<Option<At>>
    + Get<Stamp>
    + Get<Option<Stamp>>
{
    /// Whether statements lock the rows they read for a later write (`FOR UPDATE`, `FOR
    /// SHARE`): PostgreSQL's writers run side by side and need the row locks; SQLite's
    /// transactions hold its single write lock from `BEGIN IMMEDIATE` on, so it has none.
    const ROW_LOCKS: bool;

    /// A join that keeps the order it is written in (the left table the outer loop): SQLite's
    /// planner keeps it only for a `CROSS JOIN`; PostgreSQL's finds it by itself, and its
    /// `CROSS JOIN` takes no `ON`.
    const ORDERED_JOIN: &str;

    /// The columns of a campaign row: all of them, and on PostgreSQL the age of the lease's
    /// heartbeat by the database clock (`lease_age_ms`, read at the call), which is how a
    /// lease's heartbeat reaches the caller's clock there (see [`Dialect::lease_heartbeat`]).
    const CAMPAIGN_COLS: &str;

    /// The lease's last heartbeat of a campaign row, as the caller's clock puts it: on
    /// PostgreSQL now minus the age the database measured (the two clocks may disagree); on
    /// SQLite the stored time, moved back by the store clock's offset ([`Clock::to_local`]).
    fn lease_heartbeat(r: &Self::Row, clock: &Clock) -> Result<DateTime<Utc>>;

    /// "Now" in a statement, as SQL: `munja_now()` on PostgreSQL (the database clock, so that
    /// workers on several hosts agree), parameter `$n` on SQLite (the store's clock on this
    /// host, bound by [`Dialect::bind_now`]). `n` is the statement's last parameter.
    fn now(n: usize) -> String;

    /// Binds SQLite's "now" ([`Dialect::now`]), read from the store's clock; PostgreSQL binds
    /// nothing.
    fn bind_now<'q>(q: Q<'q, Self>, now: DateTime<Utc>) -> Q<'q, Self>;

    /// A `LIMIT` argument for `n`, where a negative `n` means none: SQLite takes a negative
    /// limit as none, PostgreSQL refuses it and takes `NULL` as none.
    fn limit(n: i64) -> Option<i64>;

    /// A list of `n` values to test a column against, its first parameter `$first`: one
    /// array parameter on PostgreSQL (`= ANY($first)`), `n` parameters on SQLite, which has
    /// no arrays (`IN ($first, …)`). Bound by [`Dialect::bind_ids`] or
    /// [`Dialect::bind_texts`].
    fn in_list(first: usize, n: usize) -> String;
    /// Binds the ids of an [`Dialect::in_list`].
    fn bind_ids<'q>(q: Q<'q, Self>, ids: &[i64]) -> Q<'q, Self>;
    /// Binds the texts of an [`Dialect::in_list`].
    fn bind_texts<'q>(q: Q<'q, Self>, texts: &[&str]) -> Q<'q, Self>;

    /// Refills the bucket of gateway `b.gateway` in the caller's transaction and returns its
    /// level: a new bucket starts full (`capacity`), an old one gains `rate` per elapsed second
    /// of the store's clock, up to `capacity` (a clock that went back adds nothing). The
    /// clocks differ: SQLite reads this host's (`julianday('now')`) plus the store clock's
    /// offset, bound; PostgreSQL reads `munja_clock_now()` (the store's clock at the call, see
    /// migration 0008), so that a taker that waited on the bucket's row lock refills from the
    /// moment it got the row.
    fn refill_bucket<'c>(
        c: &'c mut Self::Connection,
        b: Bucket<'c>,
    ) -> BoxFuture<'c, sqlx::Result<f64>>;

    /// Runs a statement; returns how many rows it changed.
    fn run<'c>(q: Q<'c, Self>, c: &'c mut Self::Connection) -> BoxFuture<'c, sqlx::Result<u64>>;
    /// Runs a query; returns all its rows.
    fn all<'c>(
        q: Q<'c, Self>,
        c: &'c mut Self::Connection,
    ) -> BoxFuture<'c, sqlx::Result<Vec<Self::Row>>>;
    /// Runs a query; returns its first row, if any.
    fn first<'c>(
        q: Q<'c, Self>,
        c: &'c mut Self::Connection,
    ) -> BoxFuture<'c, sqlx::Result<Option<Self::Row>>>;

    /// Column `col` of row `r`.
    fn col<T>(r: &Self::Row, col: &str) -> Result<T>
    where
        Self: Get<T>,
    {
        Ok(<Self as Get<T>>::get(r, col)?)
    }
}

/// A value a statement of database `Self` can bind.
pub(crate) trait Bind<T>: Database {
    fn bind_value<'q>(q: Q<'q, Self>, v: T) -> Q<'q, Self>;
}

impl<DB: Database, T> Bind<T> for DB
where
    T: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
{
    fn bind_value<'q>(q: Q<'q, DB>, v: T) -> Q<'q, DB> {
        q.bind(v)
    }
}

/// A value a row of database `Self` can be read as.
pub(crate) trait Get<T>: Database {
    fn get(r: &Self::Row, col: &str) -> sqlx::Result<T>;
}

impl<DB: Database, T> Get<T> for DB
where
    T: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::ColumnIndex<DB::Row>,
{
    fn get(r: &DB::Row, col: &str) -> sqlx::Result<T> {
        sqlx::Row::try_get(r, col)
    }
}

/// Binding and running a statement of any [`Dialect`], as sqlx's `bind` and `fetch_*` do for
/// one database.
pub(crate) trait Stmt<'q, DB: Dialect>: Sized {
    /// Binds the next parameter.
    fn arg<T>(self, v: T) -> Self
    where
        DB: Bind<T>;
    /// Binds "now" where the dialect binds it (see [`Dialect::now`]).
    fn now(self, clock: &Clock) -> Self;
    /// Binds "now" where the dialect binds it, as read once for several statements.
    fn now_at(self, now: DateTime<Utc>) -> Self;
    /// Runs the statement; how many rows it changed.
    fn run<'c>(self, c: &'c mut DB::Connection) -> BoxFuture<'c, sqlx::Result<u64>>
    where
        'q: 'c;
    /// Runs the query; all its rows.
    fn all<'c>(self, c: &'c mut DB::Connection) -> BoxFuture<'c, sqlx::Result<Vec<DB::Row>>>
    where
        'q: 'c;
    /// Runs the query; its first row, if any.
    fn first<'c>(self, c: &'c mut DB::Connection) -> BoxFuture<'c, sqlx::Result<Option<DB::Row>>>
    where
        'q: 'c;
}

impl<'q, DB: Dialect> Stmt<'q, DB> for Q<'q, DB> {
    fn arg<T>(self, v: T) -> Self
    where
        DB: Bind<T>,
    {
        <DB as Bind<T>>::bind_value(self, v)
    }

    fn now(self, clock: &Clock) -> Self {
        DB::bind_now(self, clock.now())
    }

    fn now_at(self, now: DateTime<Utc>) -> Self {
        DB::bind_now(self, now)
    }

    fn run<'c>(self, c: &'c mut DB::Connection) -> BoxFuture<'c, sqlx::Result<u64>>
    where
        'q: 'c,
    {
        DB::run(self, c)
    }

    fn all<'c>(self, c: &'c mut DB::Connection) -> BoxFuture<'c, sqlx::Result<Vec<DB::Row>>>
    where
        'q: 'c,
    {
        DB::all(self, c)
    }

    fn first<'c>(self, c: &'c mut DB::Connection) -> BoxFuture<'c, sqlx::Result<Option<DB::Row>>>
    where
        'q: 'c,
    {
        DB::first(self, c)
    }
}

/// A statement from text built at run time (a dialect's fragment in it).
pub(crate) fn query<'q, DB: Dialect>(sql: String) -> Q<'q, DB> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
}
