//! Scratch source databases for the tests and `munja bench segment`: a fresh MariaDB/MySQL
//! database (created on the server of `MUNJA_TEST_MARIADB_URL`, default
//! `mysql://root@127.0.0.1:3306/test`, dropped afterwards), statements run on any source URL,
//! and a `customers` table filled with N generated rows on the server itself.

use std::str::FromStr;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};

use crate::store::postgres::scratch::with_database;
use crate::store::redact;

/// Environment variable naming the MariaDB/MySQL server of the tests and the bench.
pub const TEST_MARIADB_URL_ENV: &str = "MUNJA_TEST_MARIADB_URL";
const DEFAULT_MARIADB_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// The MariaDB server of the tests and the bench.
pub fn test_mariadb_url() -> String {
    std::env::var(TEST_MARIADB_URL_ENV).unwrap_or_else(|_| DEFAULT_MARIADB_URL.to_string())
}

/// A fresh MariaDB/MySQL database, dropped with this value.
pub struct MariaScratch {
    /// URL of the new database, with the server's credentials.
    pub url: String,
    pub name: String,
    admin: String,
}

impl MariaScratch {
    /// Creates a fresh database; the error says how to start the server if it is down.
    pub async fn create(admin_url: &str) -> Result<MariaScratch, String> {
        let name = format!(
            "munja_s_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        exec(
            admin_url,
            &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"),
        )
        .await
        .map_err(|e| {
            format!(
                "{e}. The MariaDB half of the tests needs a server (root without password): \
                     start it (`service mariadb start`), or point {TEST_MARIADB_URL_ENV} at one"
            )
        })?;
        Ok(MariaScratch {
            url: with_database(admin_url, &name),
            name,
            admin: admin_url.to_string(),
        })
    }
}

impl Drop for MariaScratch {
    /// Best effort, on a thread of its own: `Drop` may run inside an async runtime.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(exec(&admin, &format!("DROP DATABASE IF EXISTS {name}")));
            }
        })
        .join();
    }
}

/// Runs `sql` (one or more statements) on the PostgreSQL or MariaDB/MySQL database of `url`.
pub async fn exec(url: &str, sql: &str) -> Result<(), String> {
    let fail = |e: sqlx::Error| format!("{}: {e}", redact(url));
    let raw = sqlx::raw_sql(AssertSqlSafe(sql.to_string()));
    match connect(url).await? {
        Admin::Pg(mut c) => {
            c.execute(raw).await.map_err(fail)?;
            let _ = c.close().await;
        }
        Admin::MySql(mut c) => {
            c.execute(raw).await.map_err(fail)?;
            let _ = c.close().await;
        }
    }
    Ok(())
}

/// One number read back from the database of `url`.
pub async fn scalar(url: &str, sql: &str) -> Result<i64, String> {
    let fail = |e: sqlx::Error| format!("{}: {e}", redact(url));
    let sql = AssertSqlSafe(sql.to_string());
    match connect(url).await? {
        Admin::Pg(mut c) => sqlx::query_scalar(sql)
            .fetch_one(&mut c)
            .await
            .map_err(fail),
        Admin::MySql(mut c) => sqlx::query_scalar(sql)
            .fetch_one(&mut c)
            .await
            .map_err(fail),
    }
}

enum Admin {
    Pg(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

async fn connect(url: &str) -> Result<Admin, String> {
    let fail = |e: sqlx::Error| format!("{}: {e}", redact(url));
    Ok(if url.starts_with("postgres") {
        Admin::Pg(
            PgConnectOptions::from_str(url)
                .map_err(fail)?
                .connect()
                .await
                .map_err(fail)?,
        )
    } else {
        let opts = MySqlConnectOptions::from_str(url).map_err(fail)?;
        Admin::MySql(opts.connect().await.map_err(fail)?)
    })
}

/// Creates table `customers` (id, phone, name, points, grade, night_consent, ad_consent_at,
/// joined_at) with `rows` generated customers, filled by the server itself: distinct mobile
/// numbers `010` + 8 digits, every tenth customer with night consent, consents within a year.
pub async fn fill_customers(url: &str, rows: u64) -> Result<(), String> {
    let sql = if url.starts_with("postgres") {
        format!(
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, phone TEXT NOT NULL, name TEXT, \
               points NUMERIC(12,2), grade TEXT, night_consent BOOLEAN, \
               ad_consent_at TIMESTAMPTZ, joined_at DATE);
             INSERT INTO customers SELECT i, '010' || lpad((30000000 + i)::text, 8, '0'), \
               '고객' || i, (i % 1000) * 10.5, CASE WHEN i % 5 = 0 THEN 'VIP' ELSE 'basic' END, \
               i % 10 = 0, now() - make_interval(days => (i % 365)::int), \
               DATE '2020-01-01' + (i % 1500)::int \
             FROM generate_series(1, {rows}) AS i;"
        )
    } else {
        format!(
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, phone VARCHAR(20) NOT NULL, \
               name VARCHAR(40), points DECIMAL(12,2), grade VARCHAR(10), \
               night_consent TINYINT(1), ad_consent_at DATETIME, joined_at DATE) \
               CHARACTER SET utf8mb4;
             INSERT INTO customers SELECT seq, CONCAT('010', LPAD(30000000 + seq, 8, '0')), \
               CONCAT('고객', seq), (seq % 1000) * 10.5, IF(seq % 5 = 0, 'VIP', 'basic'), \
               seq % 10 = 0, NOW() - INTERVAL (seq % 365) DAY, \
               DATE '2020-01-01' + INTERVAL (seq % 1500) DAY \
             FROM seq_1_to_{rows};"
        )
    };
    exec(url, &sql).await
}
