//! The test's own database, whichever backend it is on, for reading what munja wrote (and for
//! the few tests that move time by rewriting a timestamp).

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use super::Env;

pub enum TestDb {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

impl TestDb {
    pub async fn open(env: &Env) -> TestDb {
        match &env.pg {
            Some(db) => TestDb::Pg(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&db.url)
                    .await
                    .expect("connect to the test database"),
            ),
            None => TestDb::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&format!("sqlite://{}", env.path("munja.db").display()))
                    .await
                    .expect("open the test database"),
            ),
        }
    }

    /// One integer that `sql` (no parameters) selects.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let q = sqlx::AssertSqlSafe(sql);
        match self {
            TestDb::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await,
            TestDb::Pg(p) => sqlx::query_scalar(q).fetch_one(p).await,
        }
        .expect(sql)
    }

    /// Runs `sql` (no parameters); returns the rows it changed.
    pub async fn execute(&self, sql: &str) -> u64 {
        let q = sqlx::AssertSqlSafe(sql);
        match self {
            TestDb::Sqlite(p) => sqlx::query(q).execute(p).await.map(|r| r.rows_affected()),
            TestDb::Pg(p) => sqlx::query(q).execute(p).await.map(|r| r.rows_affected()),
        }
        .expect(sql)
    }
}
