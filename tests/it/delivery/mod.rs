//! Delivery reports end to end: the real `munja serve` receiving reports pushed as each
//! gateway kind sends them (http-json callback, Kannel's dlr-url GET from a real Kannel, NHN
//! Cloud's webhook), `campaign sync-results` and `optout sync` against a fake NHN Cloud built
//! here from the documented shapes (TOAST-DOCS/SMS), and what `status` and `audit` then say.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, Out};

mod kannel;
mod nhn;
mod push;

pub const SIM_TOKEN: &str = "sim-dlr-token-1";
pub const KANNEL_TOKEN: &str = "kannel-dlr-token-2";
pub const NHN_APP_KEY: &str = "appKeyXyz";
pub const NHN_SECRET: &str = "nhn-secret-key";
pub const NHN_SIGNATURE: &str = "nhn-webhook-signature-3";

/// Secrets every munja process of these tests gets, by the env var names munja.toml names.
const SECRETS: [(&str, &str); 6] = [
    ("MUNJA_T_SIM_DLR", SIM_TOKEN),
    ("MUNJA_T_KANNEL_PASSWORD", "kannel-password"),
    ("MUNJA_T_KANNEL_DLR", KANNEL_TOKEN),
    ("MUNJA_T_NHN_APP", NHN_APP_KEY),
    ("MUNJA_T_NHN_SECRET", NHN_SECRET),
    ("MUNJA_T_NHN_SIG", NHN_SIGNATURE),
];

/// Adds to the test's munja.toml: a delivery token for the `sim` gateway (the last table
/// written), and the gateways `kannel`, `nhn` (at `nhn_url`) and `open` (no token: refused).
pub fn add_gateways(env: &Env, nhn_url: &str) {
    let path = env.path("munja.toml");
    let mut text = std::fs::read_to_string(&path).expect("read munja.toml");
    text.push_str(&format!(
        r#"dlr_token_env = "MUNJA_T_SIM_DLR"

[[gateways]]
name = "kannel"
kind = "kannel"
url = "http://127.0.0.1:9"
username = "munja"
password_env = "MUNJA_T_KANNEL_PASSWORD"
rate_per_sec = 100
dlr_token_env = "MUNJA_T_KANNEL_DLR"

[[gateways]]
name = "nhn"
kind = "nhn-cloud"
url = "{nhn_url}"
rate_per_sec = 100
app_key_env = "MUNJA_T_NHN_APP"
secret_key_env = "MUNJA_T_NHN_SECRET"
webhook_signature_env = "MUNJA_T_NHN_SIG"

[[gateways]]
name = "open"
kind = "http-json"
url = "http://127.0.0.1:9"
rate_per_sec = 10
"#
    ));
    std::fs::write(&path, text).expect("write munja.toml");
}

/// Runs munja with the test secrets in its environment.
pub async fn run(env: &Env, args: &[&str]) -> Out {
    let mut c = env.cmd(args);
    c.envs(SECRETS);
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("join")
        .expect("spawn munja");
    Out::from(out)
}

pub async fn ok(env: &Env, args: &[&str]) -> Out {
    let o = run(env, args).await;
    assert_eq!(o.code, 0, "munja {args:?} failed:\n{}", o.all());
    o
}

/// A running `munja serve --listen 127.0.0.1:0`; SIGKILLed if the test ends without `stop`.
pub struct Serve {
    child: Option<Child>,
    pub base: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Serve {
    pub fn start(env: &Env) -> Serve {
        Serve::start_with(env, &[])
    }

    /// [`Serve::start`] with more environment variables (other gateways' secrets).
    pub fn start_with(env: &Env, vars: &[(&str, &str)]) -> Serve {
        let mut c = env.cmd(&["serve", "--listen", "127.0.0.1:0", "-v"]);
        c.envs(SECRETS)
            .envs(vars.iter().copied())
            .env("MUNJA_TOKEN", "delivery-tests-admin-token")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = c.spawn().expect("spawn munja serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("munja serve: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                let mut l = sink.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("munja serve did not start: {}", log.lock().expect("log")));
        Serve {
            child: Some(child),
            base,
            stderr: log,
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().expect("log lock").clone()
    }

    /// SIGTERM, then waits for a graceful exit; returns the exit code and everything it logged.
    pub async fn stop(mut self) -> (i32, String) {
        let mut child = self.child.take().expect("child");
        let pid = child.id() as libc::pid_t;
        // SAFETY: signals the process this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait munja serve");
        let code = status.code().unwrap_or(-1);
        // The reader thread sees the pipe close after the exit: wait for the last line.
        let log = eventually(10, "munja serve's last words", || async {
            let log = self.log();
            log.contains("munja serve: stopped").then_some(log)
        })
        .await;
        (code, log)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The campaign's audit rows (JSON export), by ref.
pub async fn audit(env: &Env, id: &str, status: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "--campaign", id, "--format", "json"];
    if let Some(s) = status {
        args.extend(["--status", s]);
    }
    let o = ok(env, &args).await;
    serde_json::from_str(&o.stdout).expect("audit json")
}

pub fn refs(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["ref"].as_str().expect("ref").to_string())
        .collect()
}

/// A sent campaign of `n` recipients on the simulator, with [`add_gateways`] configured once
/// it is created; returns its id and refs in seq order.
pub async fn sent_campaign(env: &Env, n: u64, nhn_url: &str) -> (String, Vec<String>) {
    let seg = env.segment_csv("seg.csv", 0, n);
    let id = env.campaign(&seg, "hello", &[]).await;
    add_gateways(env, nhn_url);
    ok(env, &["campaign", "run", &id]).await;
    let rows = audit(env, &id, None).await;
    (id, refs(&rows))
}
