//! The SQLite side of the shared rate limit: one token bucket row per gateway name, refilled by
//! the database clock and taken from in one write transaction (`BEGIN IMMEDIATE`), so that every
//! process on the file draws from the same budget.

use super::*;

/// Unix seconds (with milliseconds) of the database clock; stable within one statement.
const NOW: &str = "((julianday('now') - 2440587.5) * 86400.0)";

impl SqliteStore {
    /// See [`Store::take_tokens`].
    pub(super) async fn take_bucket_tokens(
        &self,
        gateway: &str,
        want: u32,
        rate: u32,
        burst: u32,
    ) -> Result<u32> {
        let mut tx = self.write_tx().await?;
        // A new bucket starts full; an old one gains `rate` per elapsed second, up to `burst`
        // (a clock that went back adds nothing).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO gateway_buckets (gateway, tokens, refilled_at) VALUES (?1, ?3, {NOW}) \
             ON CONFLICT (gateway) DO UPDATE SET \
             tokens = MIN(?3, tokens + MAX(0.0, {NOW} - refilled_at) * ?2), refilled_at = {NOW}"
        )))
        .bind(gateway)
        .bind(f64::from(rate))
        .bind(f64::from(burst))
        .execute(&mut *tx)
        .await?;
        let tokens: f64 =
            sqlx::query_scalar("SELECT tokens FROM gateway_buckets WHERE gateway = ?")
                .bind(gateway)
                .fetch_one(&mut *tx)
                .await?;
        let granted = whole_tokens(tokens).min(want);
        if granted > 0 {
            sqlx::query("UPDATE gateway_buckets SET tokens = tokens - ? WHERE gateway = ?")
                .bind(f64::from(granted))
                .bind(gateway)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let s = SqliteStore::open(&url, true).await.expect("open");
        s.migrate().await.expect("migrate");
        s
    }

    /// Moves the bucket's last refill `secs` into the past, as if that much time had passed.
    async fn age(s: &SqliteStore, gateway: &str, secs: f64) {
        sqlx::query("UPDATE gateway_buckets SET refilled_at = refilled_at - ? WHERE gateway = ?")
            .bind(secs)
            .bind(gateway)
            .execute(&s.pool)
            .await
            .expect("age bucket");
    }

    #[tokio::test]
    async fn a_new_bucket_grants_its_burst_then_refills_at_the_rate_up_to_the_burst() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir).await;
        // 1 token a second, so that a slow test machine adds at most one.
        assert_eq!(s.take_tokens("g", 8, 1, 10).await.expect("take"), 8);
        let rest = s.take_tokens("g", 8, 1, 10).await.expect("take");
        assert!((2..=3).contains(&rest), "granted {rest}");
        age(&s, "g", 3.0).await;
        let refilled = s.take_tokens("g", 100, 1, 10).await.expect("take");
        assert!((3..=4).contains(&refilled), "granted {refilled}");
        // A long idle time fills the bucket to its burst, never beyond.
        age(&s, "g", 100.0).await;
        assert_eq!(s.take_tokens("g", 100, 1, 10).await.expect("take"), 10);
        // Another gateway has its own bucket.
        assert_eq!(s.take_tokens("h", 100, 1, 10).await.expect("take"), 10);
    }

    #[tokio::test]
    async fn two_stores_on_one_file_share_the_bucket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (store(&dir).await, store(&dir).await);
        let (x, y) = tokio::join!(a.take_tokens("g", 6, 1, 10), b.take_tokens("g", 6, 1, 10));
        let (x, y) = (x.expect("take a"), y.expect("take b"));
        // At 1 token a second, a test run cannot add a whole token beyond the burst of 10.
        assert!(x + y <= 11 && x + y >= 10, "granted {x} + {y}");
        assert!(x.min(y) >= 4, "both were served: {x} and {y}");
    }
}
