//! Reading a segment query from the company's own database (a `[sources.NAME]`): PostgreSQL,
//! MySQL/MariaDB or SQLite, always read-only, with a statement timeout, streamed row by row.
//!
//! What a source's owner can rely on:
//! - the query text is checked first ([`query::prepare`]): one statement that reads, or refused;
//! - it runs inside a read-only transaction (PostgreSQL `BEGIN READ ONLY`, MariaDB/MySQL
//!   `START TRANSACTION READ ONLY`, SQLite `PRAGMA query_only` on a read-only connection), so
//!   nothing it calls can change the source; the transaction is rolled back at the end;
//! - the server cuts it at `statement_timeout_secs` (PostgreSQL `SET LOCAL statement_timeout`,
//!   MariaDB `max_statement_time`, MySQL `max_execution_time`), and munja enforces the same
//!   deadline itself (the only one SQLite has);
//! - `:as_of` is bound as a parameter, never spliced;
//! - rows are streamed with the driver's cursor, never collected: memory stays flat;
//! - the URL's password never appears in a message: errors name the source and its redacted
//!   URL, and any driver text is scrubbed of the password before it is shown.

pub mod fixture;
pub mod query;
pub mod value;

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Column, ConnectOptions, Connection, Row};
use tokio::time::Instant;

pub use query::{Placeholder, Prepared, QueryTextError};
pub use value::Value;

pub use crate::config::SourceSpec;

/// How long connecting to a source may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a source could not be read. Every message names the source, never its password.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "source {source_name:?}: URL {url} is not supported: use postgres://, mysql:// (MariaDB \
         too) or sqlite://"
    )]
    Scheme { source_name: String, url: String },
    #[error("source {source_name:?} ({url}): cannot connect: {reason}")]
    Connect {
        source_name: String,
        url: String,
        reason: String,
    },
    #[error("source {source_name:?}: the query is refused: {0}", source_name = .1)]
    Text(#[source] QueryTextError, String),
    #[error(
        "source {source_name:?}: the query tried to change the database and was refused (it \
         runs in a read-only transaction; nothing was changed): {reason}"
    )]
    ReadOnly { source_name: String, reason: String },
    #[error(
        "source {source_name:?}: the query ran longer than statement_timeout_secs = {secs} and \
         was cancelled; make it faster (an index, a narrower WHERE) or raise \
         sources.{source_name}.statement_timeout_secs"
    )]
    Timeout { source_name: String, secs: u64 },
    #[error("source {source_name:?}: the query failed: {reason}")]
    Query { source_name: String, reason: String },
    #[error("source {source_name:?}: {0}", source_name = .1)]
    Type(#[source] value::UnsupportedType, String),
}

/// A row of the query: its column names (shared by every row) and values.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub columns: Arc<[String]>,
    pub values: Vec<Value>,
}

type RowStream<'a> = Pin<Box<dyn Stream<Item = Result<SourceRow, SourceError>> + Send + 'a>>;

enum Conn {
    Pg(PgConnection),
    MySql(MySqlConnection),
    Sqlite(SqliteConnection),
}

/// An open connection inside its read-only transaction, ready to stream one query.
pub struct SourceReader {
    spec: SourceSpec,
    conn: Conn,
    prepared: Prepared,
    as_of: DateTime<Utc>,
}

impl SourceSpec {
    fn placeholder(&self) -> Result<Placeholder, SourceError> {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Ok(Placeholder::Dollar)
        } else if self.url.starts_with("mysql://")
            || self.url.starts_with("mariadb://")
            || self.url.starts_with("sqlite:")
        {
            Ok(Placeholder::Question)
        } else {
            Err(SourceError::Scheme {
                source_name: self.name.clone(),
                url: self.redacted_url(),
            })
        }
    }

    /// Checks a query text for this source without connecting.
    pub fn check(&self, text: &str) -> Result<Prepared, SourceError> {
        query::prepare(text, self.placeholder()?)
            .map_err(|e| SourceError::Text(e, self.name.clone()))
    }

    /// `text` with the password of the URL (if any) replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        let password = self
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty());
        match password {
            Some(p) => text
                .replace(p, "***")
                .replace(&self.url, &self.redacted_url()),
            None => text.to_string(),
        }
    }

    fn connect_error(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Connect {
            source_name: self.name.clone(),
            url: self.redacted_url(),
            reason: self.scrub(&e.to_string()),
        }
    }

    /// The error of a failed statement, by what the database said.
    fn query_error(&self, e: sqlx::Error) -> SourceError {
        let reason = match &e {
            sqlx::Error::Database(d) => d.message().to_string(),
            other => other.to_string(),
        };
        let code = e
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.to_string()))
            .unwrap_or_default();
        let lower = reason.to_lowercase();
        let (source_name, reason) = (self.name.clone(), self.scrub(&reason));
        // PostgreSQL 57014 query_canceled; MariaDB 1969 max_statement_time; MySQL 3024.
        if code == "57014"
            || code == "1969"
            || code == "3024"
            || lower.contains("max_statement_time")
        {
            SourceError::Timeout {
                source_name,
                secs: self.statement_timeout.as_secs(),
            }
        // PostgreSQL 25006 read_only_sql_transaction; MySQL 1792; SQLite 8 SQLITE_READONLY.
        } else if code == "25006"
            || code == "1792"
            || code == "8"
            || lower.contains("read-only")
            || lower.contains("read only")
            || lower.contains("readonly")
        {
            SourceError::ReadOnly {
                source_name,
                reason,
            }
        } else {
            SourceError::Query {
                source_name,
                reason,
            }
        }
    }

    /// Connects, opens the read-only transaction with the timeout, and prepares `text` with
    /// `as_of` as its parameter.
    pub async fn open(
        &self,
        text: &str,
        as_of: DateTime<Utc>,
    ) -> Result<SourceReader, SourceError> {
        let prepared = self.check(text)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| {
                self.connect_error(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
            })??;
        let mut reader = SourceReader {
            spec: self.clone(),
            conn,
            prepared,
            as_of,
        };
        reader.begin().await?;
        Ok(reader)
    }

    async fn connect(&self) -> Result<Conn, SourceError> {
        let e = |e: sqlx::Error| self.connect_error(e);
        Ok(match self.placeholder()? {
            Placeholder::Dollar => {
                let opts = PgConnectOptions::from_str(&self.url)
                    .map_err(e)?
                    .application_name("munja segment");
                Conn::Pg(opts.connect().await.map_err(e)?)
            }
            Placeholder::Question if self.url.starts_with("sqlite:") => {
                let opts = SqliteConnectOptions::from_str(&self.url)
                    .map_err(e)?
                    .read_only(true)
                    .create_if_missing(false);
                Conn::Sqlite(opts.connect().await.map_err(e)?)
            }
            Placeholder::Question => {
                let url = self.url.replacen("mariadb://", "mysql://", 1);
                let opts = MySqlConnectOptions::from_str(&url).map_err(e)?;
                Conn::MySql(opts.connect().await.map_err(e)?)
            }
        })
    }
}

impl SourceReader {
    /// Starts the read-only transaction and sets the server-side timeout.
    async fn begin(&mut self) -> Result<(), SourceError> {
        let secs = self.spec.statement_timeout.as_secs().max(1);
        let spec = self.spec.clone();
        let e = |e: sqlx::Error| spec.query_error(e);
        match &mut self.conn {
            Conn::Pg(c) => {
                sqlx::raw_sql("BEGIN READ ONLY")
                    .execute(&mut *c)
                    .await
                    .map_err(e)?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "SET LOCAL statement_timeout = {}",
                    secs * 1000
                )))
                .execute(&mut *c)
                .await
                .map_err(e)?;
            }
            Conn::MySql(c) => {
                // MariaDB calls it max_statement_time (seconds), MySQL max_execution_time (ms).
                let maria = sqlx::raw_sql(AssertSqlSafe(format!(
                    "SET SESSION max_statement_time = {secs}"
                )))
                .execute(&mut *c)
                .await;
                if maria.is_err() {
                    sqlx::raw_sql(AssertSqlSafe(format!(
                        "SET SESSION max_execution_time = {}",
                        secs * 1000
                    )))
                    .execute(&mut *c)
                    .await
                    .map_err(e)?;
                }
                sqlx::raw_sql("START TRANSACTION READ ONLY")
                    .execute(&mut *c)
                    .await
                    .map_err(e)?;
            }
            Conn::Sqlite(c) => {
                sqlx::raw_sql("PRAGMA query_only = ON; BEGIN")
                    .execute(&mut *c)
                    .await
                    .map_err(e)?;
            }
        }
        Ok(())
    }

    /// The query's rows, streamed; the stream ends with a `Timeout` error when the deadline
    /// passes (whatever the server does).
    pub fn rows(&mut self) -> RowStream<'_> {
        let spec = self.spec.clone();
        let deadline = Instant::now() + self.spec.statement_timeout;
        let sql = self.prepared.sql.clone();
        let binds = self.prepared.binds;
        let as_of = self.as_of;
        let local = as_of.with_timezone(&spec.timezone).naive_local();
        let inner: RowStream<'_> = match &mut self.conn {
            Conn::Pg(c) => {
                let mut q = sqlx::query(AssertSqlSafe(sql));
                if binds > 0 {
                    q = q.bind(as_of);
                }
                let spec = spec.clone();
                let mut names = None;
                q.fetch(c)
                    .map(move |r| match r {
                        Ok(row) => to_row(&spec, &mut names, &row, value::pg_values(&row)),
                        Err(e) => Err(spec.query_error(e)),
                    })
                    .boxed()
            }
            Conn::MySql(c) => {
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for _ in 0..binds {
                    q = q.bind(local);
                }
                let spec = spec.clone();
                let mut names = None;
                q.fetch(c)
                    .map(move |r| match r {
                        Ok(row) => to_row(&spec, &mut names, &row, value::mysql_values(&row)),
                        Err(e) => Err(spec.query_error(e)),
                    })
                    .boxed()
            }
            Conn::Sqlite(c) => {
                let mut q = sqlx::query(AssertSqlSafe(sql));
                let text = as_of.format("%Y-%m-%d %H:%M:%S").to_string();
                for _ in 0..binds {
                    q = q.bind(text.clone());
                }
                let spec = spec.clone();
                let mut names = None;
                q.fetch(c)
                    .map(move |r| match r {
                        Ok(row) => to_row(&spec, &mut names, &row, value::sqlite_values(&row)),
                        Err(e) => Err(spec.query_error(e)),
                    })
                    .boxed()
            }
        };
        with_deadline(inner, deadline, spec)
    }

    /// Rolls the read-only transaction back and closes the connection.
    pub async fn close(self) {
        let _ = match self.conn {
            Conn::Pg(mut c) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut c).await;
                c.close().await
            }
            Conn::MySql(mut c) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut c).await;
                c.close().await
            }
            Conn::Sqlite(mut c) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut c).await;
                c.close().await
            }
        };
    }
}

/// The row with its column names, read from the first row and shared by the others.
fn to_row<R: Row>(
    spec: &SourceSpec,
    names: &mut Option<Arc<[String]>>,
    row: &R,
    values: Result<Vec<Value>, value::UnsupportedType>,
) -> Result<SourceRow, SourceError> {
    let values = values.map_err(|e| SourceError::Type(e, spec.name.clone()))?;
    let columns = names
        .get_or_insert_with(|| row.columns().iter().map(|c| c.name().to_string()).collect())
        .clone();
    Ok(SourceRow { columns, values })
}

/// Ends `inner` with a `Timeout` error once `deadline` passes.
fn with_deadline<'a>(inner: RowStream<'a>, deadline: Instant, spec: SourceSpec) -> RowStream<'a> {
    futures_util::stream::unfold(Some(inner), move |state| {
        let spec = spec.clone();
        async move {
            let mut s = state?;
            match tokio::time::timeout_at(deadline, s.next()).await {
                Ok(Some(item)) => Some((item, Some(s))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(SourceError::Timeout {
                        source_name: spec.name.clone(),
                        secs: spec.statement_timeout.as_secs(),
                    }),
                    None,
                )),
            }
        }
    })
    .boxed()
}
