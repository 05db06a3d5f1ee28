//! Throw-away PostgreSQL databases for tests: the conformance suite and the integration tests
//! (`MUNJA_TEST_BACKEND=postgres`) each create `munja_t_<pid>_<random>` on the server named by
//! `MUNJA_TEST_PG_URL` and drop it afterwards, so runs never see each other's rows.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use super::server_name;

/// Environment variable naming the server (any existing database on it) tests may use.
pub const TEST_URL_ENV: &str = "MUNJA_TEST_PG_URL";

/// The server tests use when [`TEST_URL_ENV`] is not set: the project machine's and CI's.
pub const DEFAULT_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database created for one test; [`ScratchDb::drop_now`] (or dropping it) removes it.
pub struct ScratchDb {
    /// URL of the new database, with the server's credentials.
    pub url: String,
    admin: PgConnectOptions,
    name: String,
}

/// The admin URL tests use: [`TEST_URL_ENV`] or [`DEFAULT_TEST_URL`].
pub fn test_server_url() -> String {
    std::env::var(TEST_URL_ENV).unwrap_or_else(|_| DEFAULT_TEST_URL.to_string())
}

/// `url` with its database (the path) replaced by `name`; the query string is kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl ScratchDb {
    /// Creates a fresh, empty database on the server of `admin_url`. The error says how to
    /// start the server when it cannot be reached.
    pub async fn create(admin_url: &str) -> Result<ScratchDb, String> {
        let admin = PgConnectOptions::from_str(admin_url)
            .map_err(|e| format!("{TEST_URL_ENV}: not a PostgreSQL URL ({e})"))?;
        let server = server_name(&admin);
        let mut conn = admin.connect().await.map_err(|e| {
            format!(
                "PostgreSQL is not reachable at {server} ({e}). The PostgreSQL half of the tests \
                 needs a server with trust authentication: start it (`service postgresql start` or \
                 `pg_ctlcluster 15 main start`), or point {TEST_URL_ENV} at one, e.g. \
                 {TEST_URL_ENV}=postgres://postgres@127.0.0.1:5432/test"
            )
        })?;
        let name = format!(
            "munja_t_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .map_err(|e| format!("creating database {name} on {server}: {e}"))?;
        let _ = conn.close().await;
        Ok(ScratchDb {
            url: with_database(admin_url, &name),
            admin,
            name,
        })
    }

    /// Drops the database, closing the connections still open to it.
    pub async fn drop_now(&self) -> Result<(), String> {
        let mut conn = self
            .admin
            .connect()
            .await
            .map_err(|e| format!("dropping {}: {e}", self.name))?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .await
        .map_err(|e| format!("dropping {}: {e}", self.name))?;
        let _ = conn.close().await;
        Ok(())
    }
}

impl Drop for ScratchDb {
    /// Best effort, on a thread of its own: `Drop` may run inside an async runtime.
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        // The copy's name is cleared once it is dropped, so its own `drop` does nothing.
        let mut db = ScratchDb {
            url: std::mem::take(&mut self.url),
            admin: self.admin.clone(),
            name: std::mem::take(&mut self.name),
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt
                && let Err(e) = rt.block_on(db.drop_now())
            {
                eprintln!("warning: {e}");
            }
            db.name.clear();
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/test", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgresql://h/db?sslmode=disable", "x"),
            "postgresql://h/x?sslmode=disable"
        );
    }
}
