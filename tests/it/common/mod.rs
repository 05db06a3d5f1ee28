//! Test harness: a temp directory with munja.toml, templates and CSVs, the real `munja` binary,
//! and the real gateway simulator on loopback (in this process, so tests can read its stats).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use munja::store::postgres::scratch::{ScratchDb, test_server_url};
use munja::tools::sim::{self, SimConfig, SimHandle};

pub mod agree;
pub mod db;
pub mod fixture;
pub mod proxy;

pub use fixture::{Setup, create_args, exit_code};

pub const BIN: &str = env!("CARGO_BIN_EXE_munja");

/// Environment variable choosing the database of every test: `sqlite` (default) or
/// `postgres` (a fresh database per test on the server of `MUNJA_TEST_PG_URL`).
pub const BACKEND_ENV: &str = "MUNJA_TEST_BACKEND";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sim: SimHandle,
    /// The `database_url` written into munja.toml.
    pub db_url: String,
    /// The PostgreSQL database of this test, dropped with it.
    pub pg: Option<ScratchDb>,
}

/// Whether `MUNJA_TEST_BACKEND` asks for PostgreSQL.
pub fn on_postgres() -> bool {
    match std::env::var(BACKEND_ENV).as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{BACKEND_ENV}={other:?}: expected sqlite or postgres"),
    }
}

/// Gateway settings written into munja.toml.
#[derive(Clone)]
pub struct Gw {
    pub rate: u32,
    pub burst: u32,
    pub concurrency: usize,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub batch_size: usize,
    pub api_key_env: Option<String>,
}

impl Default for Gw {
    fn default() -> Self {
        Gw {
            rate: 5000,
            burst: 500,
            concurrency: 16,
            timeout_ms: 2000,
            max_attempts: 6,
            batch_size: 1,
            api_key_env: None,
        }
    }
}

impl Gw {
    /// A gateway limited to `rate` a second (bucket `burst`) and `concurrency` requests at once.
    pub fn limited(rate: u32, burst: u32, concurrency: usize) -> Gw {
        Gw {
            rate,
            burst,
            concurrency,
            ..Gw::default()
        }
    }

    /// A gateway whose requests time out after `timeout_ms`, tried `max_attempts` times.
    pub fn timing_out(timeout_ms: u64, max_attempts: u32) -> Gw {
        Gw {
            timeout_ms,
            max_attempts,
            ..Gw::default()
        }
    }

    /// Fast and patient: 4000/s, short timeouts, ten attempts (for runs killed and resumed).
    pub fn fast_retrying() -> Gw {
        Gw {
            rate: 4000,
            burst: 400,
            timeout_ms: 300,
            max_attempts: 10,
            ..Gw::default()
        }
    }
}

/// A simulator with a few failures and timeouts (1 % each, stalls of 800 ms), seeded.
pub fn flaky(seed: u64) -> SimConfig {
    SimConfig {
        fail_rate: 0.01,
        timeout_rate: 0.01,
        stall_ms: 800,
        seed: Some(seed),
        ..SimConfig::default()
    }
}

/// Reads a spawned child's piped stderr to its end.
pub fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    stderr
}

/// A simulator that fails a share `fail_rate` of the requests, seeded.
pub fn failing(fail_rate: f64, seed: u64) -> SimConfig {
    SimConfig {
        fail_rate,
        seed: Some(seed),
        ..SimConfig::default()
    }
}

/// A simulator that accepts every request and then times out, and whose lookups answer 503.
pub fn lookups_down() -> SimConfig {
    SimConfig {
        timeout_rate: 1.0,
        stall_ms: 1000,
        lookups_unavailable: true,
        ..SimConfig::default()
    }
}

impl Env {
    pub async fn new(sim_cfg: SimConfig) -> Env {
        Env::with(sim_cfg, Gw::default(), "").await
    }

    /// `policy`: extra lines for the [policy] table. Quiet hours are off unless `policy` sets
    /// them, so that tests do not depend on the time of day in Korea.
    pub async fn with(sim_cfg: SimConfig, gw: Gw, policy: &str) -> Env {
        Env::on(sim_cfg, gw, policy, on_postgres()).await
    }

    /// As [`Env::with`], on a fresh PostgreSQL database whatever `MUNJA_TEST_BACKEND` says
    /// (several workers need it).
    pub async fn on_pg(sim_cfg: SimConfig, gw: Gw, policy: &str) -> Env {
        Env::on(sim_cfg, gw, policy, true).await
    }

    /// As [`Env::with`], on a SQLite file whatever `MUNJA_TEST_BACKEND` says: for what only a
    /// file has (a full disk, a replaced file, free pages).
    pub async fn on_sqlite(sim_cfg: SimConfig, gw: Gw, policy: &str) -> Env {
        Env::on(sim_cfg, gw, policy, false).await
    }

    /// This test's database, to read what munja wrote.
    pub async fn db(&self) -> db::TestDb {
        db::TestDb::open(self).await
    }

    async fn on(sim_cfg: SimConfig, gw: Gw, policy: &str, postgres: bool) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = sim::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), sim_cfg)
            .await
            .expect("simulator");
        let pg = if postgres {
            Some(
                ScratchDb::create(&test_server_url())
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        } else {
            None
        };
        let db_url = pg
            .as_ref()
            .map_or_else(|| "sqlite://munja.db".to_string(), |db| db.url.clone());
        let env = Env {
            dir,
            sim,
            db_url,
            pg,
        };
        std::fs::create_dir_all(env.path("templates")).expect("templates dir");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/templates/recruit.txt"),
            env.path("templates/recruit.txt"),
        )
        .expect("copy template");
        env.write("templates/hello.txt", "{{ name }}님 안녕하세요");
        env.write_config(&gw, policy);
        env
    }

    pub fn write_config(&self, gw: &Gw, policy: &str) {
        let policy = if policy.contains("quiet_hours") {
            policy.to_string()
        } else {
            format!("quiet_hours = \"off\"\n{policy}")
        };
        let policy = if policy.contains("chunk_size") {
            policy
        } else {
            format!("chunk_size = 200\n{policy}")
        };
        let key = gw
            .api_key_env
            .as_ref()
            .map(|k| format!("api_key_env = \"{k}\"\n"))
            .unwrap_or_default();
        self.write(
            "munja.toml",
            &format!(
                r#"database_url = "{db_url}"

[sender]
number = "1588-1234"
brand = "토스페이먼츠"
optout_number = "080-600-5653"

[policy]
lease_timeout_secs = 5
{policy}

[pricing]
sms = 9.9
lms = 29.0

[[gateways]]
name = "sim"
kind = "http-json"
url = "{url}"
rate_per_sec = {rate}
burst = {burst}
concurrency = {conc}
timeout_ms = {timeout}
max_attempts = {attempts}
batch_size = {batch}
{key}"#,
                db_url = self.db_url,
                url = self.sim.url(),
                rate = gw.rate,
                burst = gw.burst,
                conc = gw.concurrency,
                timeout = gw.timeout_ms,
                attempts = gw.max_attempts,
                batch = gw.batch_size,
            ),
        );
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// A command for the real binary, configured for this environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.dir.path())
            .env("MUNJA_CONFIG", self.path("munja.toml"))
            .env_remove("MUNJA_DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Starts `munja campaign run ID EXTRA…` without waiting for it.
    pub fn spawn_run(&self, id: &str, extra: &[&str]) -> Child {
        let mut args = vec!["campaign", "run", id];
        args.extend_from_slice(extra);
        self.cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn munja")
    }

    /// Runs the binary to completion off the async runtime's threads.
    pub async fn run(&self, args: &[&str]) -> Out {
        let mut c = self.cmd(args);
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .expect("join")
            .expect("spawn munja");
        Out::from(out)
    }

    /// Runs and insists on exit code 0.
    pub async fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args).await;
        assert_eq!(o.code, 0, "munja {args:?} failed:\n{}", o.all());
        o
    }

    /// Writes a segment CSV with `n` distinct mobile numbers starting at `start`.
    pub fn segment_csv(&self, rel: &str, start: u64, n: u64) -> PathBuf {
        let mut s = String::from("phone,name\n");
        for i in start..start + n {
            s.push_str(&format!("{},고객{i}\n", number(i)));
        }
        self.write(rel, &s)
    }

    /// init + segment import + campaign create; returns the campaign id.
    pub async fn campaign(&self, segment_file: &Path, template: &str, extra: &[&str]) -> String {
        self.ok(&["init"]).await;
        self.import("seg", segment_file).await;
        let args = create_args("t", "seg", template, extra);
        self.ok(&args).await.stdout.trim().to_string()
    }

    /// Imports `csv` as segment `name` and creates campaign `name` on it (after
    /// [`Env::campaign`], which ran `init`); returns its id.
    pub async fn another_campaign(&self, name: &str, csv: &Path, template: &str) -> String {
        self.import(name, csv).await;
        self.create_ok(name, name, template).await
    }

    pub async fn status(&self, id: &str) -> serde_json::Value {
        let o = self.ok(&["campaign", "status", id, "--json"]).await;
        serde_json::from_str(&o.stdout).expect("status json")
    }

    pub async fn audit_json(&self, id: &str) -> Vec<serde_json::Value> {
        let o = self
            .ok(&["audit", "--campaign", id, "--format", "json"])
            .await;
        serde_json::from_str(&o.stdout).expect("audit json")
    }
}

/// Creates the SQLite database at `url` (a source for SQL segments) and runs `sql` on it.
pub async fn sqlite_crm(url: &str, sql: &'static str) {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let mut c = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .expect("url")
        .create_if_missing(true)
        .connect()
        .await
        .expect("create crm.db");
    sqlx::raw_sql(sql)
        .execute(&mut c)
        .await
        .expect("fill crm.db");
}

/// The i-th test number, canonical form: 010 + 8 digits.
/// One number from a query on the PostgreSQL database at `url`.
pub async fn pg_count(url: &str, sql: &str) -> i64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to the test database");
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&pool)
        .await
        .expect(sql);
    pool.close().await;
    n
}

/// Waits for a spawned munja off the async runtime's threads.
pub async fn wait(child: Child) -> Out {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait")
        .into()
}

/// Sends `sig` to a spawned munja.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub fn number(i: u64) -> String {
    format!("010{:08}", 20_000_000 + i)
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn n(v: &serde_json::Value, k: &str) -> i64 {
    v[k].as_i64()
        .unwrap_or_else(|| panic!("no integer {k} in {v}"))
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: std::time::Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = std::time::Instant::now();
    while !cond().await {
        assert!(
            t0.elapsed() < within,
            "waited {within:?} for {what}, in vain"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Env {
    /// Waits until the simulator has accepted at least `n` messages: a run is under way.
    pub async fn until_accepted(&self, n: u64) {
        let what = format!("the gateway to accept {n} messages");
        wait_until(&what, std::time::Duration::from_secs(30), || async {
            self.sim.stats().accepted >= n
        })
        .await;
    }
}
