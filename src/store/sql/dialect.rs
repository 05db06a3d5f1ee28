//! The [`Dialect`] of each database, side by side: what PostgreSQL and SQLite do not agree
//! on in the statements they share, each difference written once per database.

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnection, PgRow, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteConnection, SqliteRow, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Database, Decode, Encode, Executor, Postgres, Row, Sqlite, Type, encode::IsNull};

use chrono::{DateTime, Utc};

use super::{At, Bucket, Dialect, Q, Stamp};
use crate::store::{Clock, Result, ts};

/// [`Dialect::run`], [`Dialect::all`] and [`Dialect::first`]: alike on both databases but for
/// their types (sqlx's executors are per database).
macro_rules! executor_methods {
    ($db:ty, $conn:ty, $row:ty) => {
        fn run<'c>(q: Q<'c, $db>, c: &'c mut $conn) -> BoxFuture<'c, sqlx::Result<u64>> {
            Box::pin(async move { Ok(c.execute(q).await?.rows_affected()) })
        }

        fn all<'c>(q: Q<'c, $db>, c: &'c mut $conn) -> BoxFuture<'c, sqlx::Result<Vec<$row>>> {
            Box::pin(c.fetch_all(q))
        }

        fn first<'c>(q: Q<'c, $db>, c: &'c mut $conn) -> BoxFuture<'c, sqlx::Result<Option<$row>>> {
            Box::pin(c.fetch_optional(q))
        }
    };
}

impl Dialect for Sqlite {
    const ROW_LOCKS: bool = false;
    const ORDERED_JOIN: &str = "CROSS JOIN";
    const CAMPAIGN_COLS: &str = "*";

    fn lease_heartbeat(r: &SqliteRow, clock: &Clock) -> Result<DateTime<Utc>> {
        Ok(r.try_get::<Option<String>, _>("lease_heartbeat_at")?
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| clock.to_local(t.with_timezone(&Utc)))
            .unwrap_or_else(Utc::now))
    }

    fn now(n: usize) -> String {
        format!("${n}")
    }

    fn bind_now<'q>(q: Q<'q, Sqlite>, now: DateTime<Utc>) -> Q<'q, Sqlite> {
        q.bind(At(now))
    }

    fn limit(n: i64) -> Option<i64> {
        Some(n)
    }

    fn in_list(first: usize, n: usize) -> String {
        let params: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
        format!("IN ({})", params.join(", "))
    }

    fn bind_ids<'q>(q: Q<'q, Sqlite>, ids: &[i64]) -> Q<'q, Sqlite> {
        ids.iter().fold(q, |q, id| q.bind(*id))
    }

    fn bind_texts<'q>(q: Q<'q, Sqlite>, texts: &[&str]) -> Q<'q, Sqlite> {
        texts.iter().fold(q, |q, t| q.bind(t.to_string()))
    }

    fn refill_bucket<'c>(
        c: &'c mut SqliteConnection,
        b: Bucket<'c>,
    ) -> BoxFuture<'c, sqlx::Result<f64>> {
        // Unix seconds (with milliseconds) of the store's clock (`?4` is its offset in
        // seconds); stable within one statement.
        const NOW: &str = "((julianday('now') - 2440587.5) * 86400.0 + ?4)";
        let offset = b.clock.offset_ms() as f64 / 1000.0;
        let Bucket { gateway, take, .. } = b;
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO gateway_buckets (gateway, tokens, refilled_at) VALUES (?1, ?3, {NOW}) \
                 ON CONFLICT (gateway) DO UPDATE SET \
                 tokens = MIN(?3, tokens + MAX(0.0, {NOW} - refilled_at) * ?2), refilled_at = {NOW}"
            )))
            .bind(gateway)
            .bind(f64::from(take.rate))
            .bind(f64::from(take.capacity))
            .bind(offset)
            .execute(&mut *c)
            .await?;
            sqlx::query_scalar("SELECT tokens FROM gateway_buckets WHERE gateway = ?")
                .bind(gateway)
                .fetch_one(&mut *c)
                .await
        })
    }

    executor_methods!(Sqlite, SqliteConnection, SqliteRow);
}

impl Dialect for Postgres {
    const ROW_LOCKS: bool = true;
    const ORDERED_JOIN: &str = "JOIN";
    /// The age of the lease by the store's clock, read at the call (`munja_clock_now()`,
    /// migration 0008): since the latest heartbeat of any worker of the execution holding it
    /// (its own row, migration 0011), or since the execution started.
    const CAMPAIGN_COLS: &str = "*, (EXTRACT(EPOCH FROM (munja_clock_now() - GREATEST(lease_heartbeat_at, \
         (SELECT MAX(h.heartbeat_at) FROM workers k JOIN worker_heartbeats h ON h.worker_id = k.id \
          WHERE k.execution_id = campaigns.lease_execution)))) * 1000)::BIGINT AS lease_age_ms";

    fn lease_heartbeat(r: &PgRow, _: &Clock) -> Result<DateTime<Utc>> {
        let age_ms = r.try_get::<Option<i64>, _>("lease_age_ms")?;
        Ok(Utc::now() - chrono::Duration::milliseconds(age_ms.unwrap_or_default()))
    }

    fn now(_: usize) -> String {
        "munja_now()".into()
    }

    fn bind_now<'q>(q: Q<'q, Postgres>, _: DateTime<Utc>) -> Q<'q, Postgres> {
        q
    }

    fn limit(n: i64) -> Option<i64> {
        (n >= 0).then_some(n)
    }

    fn in_list(first: usize, _: usize) -> String {
        format!("= ANY(${first})")
    }

    fn bind_ids<'q>(q: Q<'q, Postgres>, ids: &[i64]) -> Q<'q, Postgres> {
        q.bind(ids.to_vec())
    }

    fn bind_texts<'q>(q: Q<'q, Postgres>, texts: &[&str]) -> Q<'q, Postgres> {
        q.bind(texts.iter().map(|t| t.to_string()).collect::<Vec<String>>())
    }

    fn refill_bucket<'c>(
        c: &'c mut PgConnection,
        b: Bucket<'c>,
    ) -> BoxFuture<'c, sqlx::Result<f64>> {
        Box::pin(
            sqlx::query_scalar(
                "INSERT INTO gateway_buckets (gateway, tokens, refilled_at) \
                 VALUES ($1, $3, munja_clock_now()) \
                 ON CONFLICT (gateway) DO UPDATE SET \
                 tokens = LEAST($3, gateway_buckets.tokens + GREATEST(0.0, \
                     EXTRACT(EPOCH FROM munja_clock_now() - gateway_buckets.refilled_at)::float8) * $2), \
                 refilled_at = munja_clock_now() \
                 RETURNING tokens",
            )
            .bind(b.gateway)
            .bind(f64::from(b.take.rate))
            .bind(f64::from(b.take.capacity))
            .fetch_one(c),
        )
    }

    executor_methods!(Postgres, PgConnection, PgRow);
}

// Times: SQLite has no time type; its columns hold the RFC 3339 text `ts` writes.

impl Type<Sqlite> for At {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for At {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(ts(self.0), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for At {
    fn decode(v: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&str as Decode<Sqlite>>::decode(v)?;
        let t = DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("stored time {s:?} unreadable: {e}"))?;
        Ok(At(t.with_timezone(&Utc)))
    }
}

impl Type<Sqlite> for Stamp {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Sqlite> for Stamp {
    fn decode(v: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Stamp(<String as Decode<Sqlite>>::decode(v)?))
    }
}

// PostgreSQL: TIMESTAMPTZ, handed out as the text `ts` writes.

impl Type<Postgres> for At {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for At {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for At {
    fn decode(v: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(At(<DateTime<Utc> as Decode<Postgres>>::decode(v)?))
    }
}

impl Type<Postgres> for Stamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for Stamp {
    fn decode(v: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Stamp(ts(<DateTime<Utc> as Decode<Postgres>>::decode(v)?)))
    }
}
