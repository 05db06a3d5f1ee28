//! Real gateway kinds: a Korean campaign through a real Kannel (bearerbox + smsbox + fakesmsc on
//! loopback), NHN Cloud SMS v3.0 against a fake built here from the documented request and
//! response shapes (plain `serde_json::Value`, never munja's own types), and failover between
//! two gateways with circuit breakers.

mod failover;
mod kannel;
mod nhn;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::{Env, Out};

/// Polls `cond` every 20 ms until it holds; fails after `secs`.
pub async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nothing listens on (the OS gave it and it was released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A loopback port held bound but not listening: connections to it are refused, and no other
/// test can take it until the socket is dropped.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = s.local_addr().expect("local addr").port();
    (s, port)
}

/// Appends a `[[gateways]]` entry (TOML text) to the test's munja.toml.
pub fn add_gateway(env: &Env, entry: &str) {
    let text = std::fs::read_to_string(env.path("munja.toml")).expect("config");
    env.write("munja.toml", &format!("{text}\n[[gateways]]\n{entry}\n"));
}

/// Runs munja with extra environment variables (the gateways' secrets).
pub async fn run_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Out {
    let mut c = env.cmd(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("join")
        .expect("spawn munja");
    Out::from(out)
}

/// init + segment import + campaign create with secrets set; returns the campaign id.
pub async fn create(env: &Env, vars: &[(&str, &str)], segment: &str, args: &[&str]) -> String {
    let ok = |o: Out, what: &str| {
        assert_eq!(o.code, 0, "{what} failed:\n{}", o.all());
        o
    };
    ok(run_with(env, vars, &["init"]).await, "init");
    ok(
        run_with(env, vars, &["segment", "import", "seg", segment]).await,
        "segment import",
    );
    let mut all = vec!["campaign", "create", "--name", "t", "--segment", "seg"];
    all.extend_from_slice(args);
    ok(run_with(env, vars, &all).await, "campaign create")
        .stdout
        .trim()
        .to_string()
}

/// Rows of a query on the test's SQLite database, each column as text.
pub async fn sql(env: &Env, query: &str) -> Vec<Vec<String>> {
    use sqlx::{Connection, Row};
    let url = format!("sqlite://{}", env.path("munja.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open db");
    let rows = sqlx::query(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_all(&mut c)
        .await
        .expect("query");
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .ok()
                        .flatten()
                        .or_else(|| r.try_get::<i64, _>(i).ok().map(|n| n.to_string()))
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect()
}
