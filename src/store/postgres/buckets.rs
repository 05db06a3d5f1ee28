//! The PostgreSQL side of the shared rate limit: one token bucket row per gateway name, refilled
//! by the database clock and taken from in one transaction. The upsert locks the bucket's row
//! until commit, so concurrent takers (any worker, any campaign) queue on it and never share a
//! token. `munja_clock_now()` (the store's clock read at the call, see migration 0008), not
//! `munja_now()`: a taker that waited on the lock must refill from the moment it got the row,
//! not from when its transaction began.

use super::*;

impl PgStore {
    /// See [`Store::take_tokens`].
    pub(super) async fn take_bucket_tokens(
        &self,
        gateway: &str,
        need: u32,
        want: u32,
        rate: u32,
        capacity: u32,
    ) -> Result<u32> {
        let mut tx = self.pool.begin().await?;
        // A new bucket starts full; an old one gains `rate` per elapsed second, up to `capacity`
        // (a clock that went back adds nothing).
        let tokens: f64 = sqlx::query_scalar(
            "INSERT INTO gateway_buckets (gateway, tokens, refilled_at) \
             VALUES ($1, $3, munja_clock_now()) \
             ON CONFLICT (gateway) DO UPDATE SET \
             tokens = LEAST($3, gateway_buckets.tokens + GREATEST(0.0, \
                 EXTRACT(EPOCH FROM munja_clock_now() - gateway_buckets.refilled_at)::float8) * $2), \
             refilled_at = munja_clock_now() \
             RETURNING tokens",
        )
        .bind(gateway)
        .bind(f64::from(rate))
        .bind(f64::from(capacity))
        .fetch_one(&mut *tx)
        .await?;
        let granted = granted_tokens(tokens, need, want);
        if granted > 0 {
            sqlx::query("UPDATE gateway_buckets SET tokens = tokens - $1 WHERE gateway = $2")
                .bind(f64::from(granted))
                .bind(gateway)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(granted)
    }
}
