//! The SQLite side of the shared rate limit: one token bucket row per gateway name, refilled by
//! the database clock and taken from in one write transaction (`BEGIN IMMEDIATE`), so that every
//! process on the file draws from the same budget.

use super::*;

/// Unix seconds (with milliseconds) of the store's clock (`?4` is its offset in seconds);
/// stable within one statement.
const NOW: &str = "((julianday('now') - 2440587.5) * 86400.0 + ?4)";

impl SqliteStore {
    /// See [`Store::take_tokens`].
    pub(super) async fn take_bucket_tokens(
        &self,
        gateway: &str,
        need: u32,
        want: u32,
        rate: u32,
        capacity: u32,
    ) -> Result<u32> {
        let mut tx = self.write_tx().await?;
        // A new bucket starts full; an old one gains `rate` per elapsed second, up to `capacity`
        // (a clock that went back adds nothing).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO gateway_buckets (gateway, tokens, refilled_at) VALUES (?1, ?3, {NOW}) \
             ON CONFLICT (gateway) DO UPDATE SET \
             tokens = MIN(?3, tokens + MAX(0.0, {NOW} - refilled_at) * ?2), refilled_at = {NOW}"
        )))
        .bind(gateway)
        .bind(f64::from(rate))
        .bind(f64::from(capacity))
        .bind(self.clock.offset_ms() as f64 / 1000.0)
        .execute(&mut *tx)
        .await?;
        let tokens: f64 =
            sqlx::query_scalar("SELECT tokens FROM gateway_buckets WHERE gateway = ?")
                .bind(gateway)
                .fetch_one(&mut *tx)
                .await?;
        let granted = granted_tokens(tokens, need, want);
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

    #[tokio::test]
    async fn two_stores_on_one_file_share_the_bucket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (store(&dir).await, store(&dir).await);
        let (x, y) = tokio::join!(
            a.take_tokens("g", 1, 6, 1, 10),
            b.take_tokens("g", 1, 6, 1, 10)
        );
        let (x, y) = (x.expect("take a"), y.expect("take b"));
        // At 1 token a second, a test run cannot add a whole token beyond the burst of 10.
        assert!(x + y <= 11 && x + y >= 10, "granted {x} + {y}");
        assert!(x.min(y) >= 4, "both were served: {x} and {y}");
    }
}
