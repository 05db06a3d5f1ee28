//! `munja gateway-sim`: an in-process or standalone HTTP server (axum) that serves the whole
//! `http-json` gateway protocol (`docs/gateway-http-json.md`) for tests, demos and benches.
//!
//! It owns fault injection (503, 429, accept-then-stall timeouts, accept-then-garble and
//! accept-then-reset answers, batch results that omit items, a fixed answer such as a redirect
//! or an account-level 400, invalid numbers, 401),
//! idempotent acceptance keyed by ref, lookups, and the counters behind `GET /stats` that
//! tests use to prove "no message was sent twice". Accepted refs are stored as 64-bit hashes
//! in compact sorted arrays (about 16 bytes per accepted message in total), never as bodies,
//! so a million-message bench stays well inside its memory budget.

mod handlers;
mod state;
mod store;

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use handlers::{count_request, lookup, not_found, send, stats};
use state::Shared;

/// How many seconds of per-second counts `SimStats::per_second` keeps.
const SECONDS_KEPT: usize = 120;
/// Request body limit per batch item (an LMS is at most ~3 KB of UTF-8 JSON).
const BODY_BYTES_PER_ITEM: usize = 8 * 1024;
/// How long `SimHandle::shutdown` waits for in-flight requests before aborting the server.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Simulator behaviour. Rates are probabilities in `0.0..=1.0`, drawn once per request.
#[derive(Clone)]
pub struct SimConfig {
    /// Share of requests answered 503.
    pub fail_rate: f64,
    /// Share of requests answered 429 with `Retry-After: retry_after_secs`.
    pub throttle_rate: f64,
    pub retry_after_secs: u64,
    /// The 503 answers carry `Retry-After: retry_after_secs` too.
    pub retry_after_on_503: bool,
    /// Share of requests whose messages are accepted and recorded, then answered only after
    /// `stall_ms` (so the client times out "in doubt").
    pub timeout_rate: f64,
    pub stall_ms: u64,
    /// Numbers starting with this prefix are rejected with `invalid_number`.
    pub invalid_prefix: Option<String>,
    /// When set, `/v1/*` requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Added to every `/v1/*` answer.
    pub latency_ms: u64,
    /// Largest batch accepted; bigger ones get 400 `invalid_request`.
    pub max_batch: usize,
    /// Seed for the fault draws (reproducible runs).
    pub seed: Option<u64>,
    /// Share of requests whose messages are accepted and recorded, then answered 200 with a
    /// body that is not the protocol's JSON (a proxy's error page).
    pub garble_rate: f64,
    /// Share of requests whose messages are accepted and recorded, then whose answer is broken
    /// off (the connection dies after the request was read).
    pub reset_rate: f64,
    /// Batches only: each accepted message is left out of the results with this probability.
    pub omit_rate: f64,
    /// When set, every send and batch request gets this answer and nothing is accepted.
    pub fixed_answer: Option<FixedAnswer>,
    /// Lookups answer 503 (the gateway cannot be asked); see [`SimHandle::set_lookups`].
    pub lookups_unavailable: bool,
}

/// One answer given to every send and batch request (see [`SimConfig::fixed_answer`]).
#[derive(Clone, Debug, Default)]
pub struct FixedAnswer {
    pub status: u16,
    /// `Location` header, for redirects.
    pub location: Option<String>,
    /// Response body (JSON or not).
    pub body: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_secs: 1,
            retry_after_on_503: false,
            timeout_rate: 0.0,
            stall_ms: 30_000,
            invalid_prefix: None,
            api_key: None,
            latency_ms: 0,
            max_batch: 1000,
            seed: None,
            garble_rate: 0.0,
            reset_rate: 0.0,
            omit_rate: 0.0,
            fixed_answer: None,
            lookups_unavailable: false,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("fail_rate", &self.fail_rate)
            .field("throttle_rate", &self.throttle_rate)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("retry_after_on_503", &self.retry_after_on_503)
            .field("timeout_rate", &self.timeout_rate)
            .field("stall_ms", &self.stall_ms)
            .field("invalid_prefix", &self.invalid_prefix)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("latency_ms", &self.latency_ms)
            .field("max_batch", &self.max_batch)
            .field("seed", &self.seed)
            .field("garble_rate", &self.garble_rate)
            .field("reset_rate", &self.reset_rate)
            .field("omit_rate", &self.omit_rate)
            .field("fixed_answer", &self.fixed_answer)
            .field("lookups_unavailable", &self.lookups_unavailable)
            .finish()
    }
}

/// Counters served by `GET /stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SimStats {
    /// Distinct refs accepted.
    pub accepted: u64,
    /// Messages for an already-accepted ref, answered `duplicate: true`.
    pub duplicate_replays: u64,
    /// Messages rejected (400 on a single send, `rejected` batch items, whole-batch 400s).
    pub rejected: u64,
    /// Requests answered 503 by fault injection.
    pub faults_503: u64,
    /// Requests answered 429 by fault injection.
    pub faults_429: u64,
    /// Requests accepted and then stalled by fault injection.
    pub faults_timeout: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Distinct `to` numbers accepted, over all campaigns.
    pub distinct_numbers: u64,
    /// `to` numbers accepted under two or more different refs of the same campaign: real
    /// double sends. Counted once per (campaign, number).
    pub numbers_accepted_twice: u64,
    /// Highest accepted+duplicate message count seen in one wall-clock second.
    pub max_per_second: u64,
    /// `(unix second, accepted+duplicate messages)` for the last 120 seconds, oldest first,
    /// seconds without traffic left out.
    pub per_second: Vec<(i64, u64)>,
    /// `/v1/*` requests received (sends, batches and lookups), and any other request except
    /// `GET /stats` (a redirected GET, a wrong path).
    pub requests: u64,
}

/// A running simulator. Dropping the handle stops the server, like [`SimHandle::shutdown`]
/// without the wait.
pub struct SimHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Base URL for clients, e.g. `http://127.0.0.1:PORT` (loopback when bound to a wildcard).
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Changes the fault rates of later requests (heal or sicken the gateway mid-test).
    pub fn set_faults(&self, fail_rate: f64, throttle_rate: f64, timeout_rate: f64) {
        self.shared
            .faults
            .set(fail_rate, throttle_rate, timeout_rate);
    }

    /// Makes later lookups answer normally (`true`) or 503 (`false`).
    pub fn set_lookups(&self, available: bool) {
        self.shared
            .lookups_unavailable
            .store(!available, Ordering::Relaxed);
    }

    /// Changes (or removes) the required bearer key for later requests.
    pub fn set_api_key(&self, key: Option<String>) {
        *self
            .shared
            .api_key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = key;
    }

    /// Stops accepting, ends stalled requests early, and waits (bounded) for the server task.
    pub async fn shutdown(self) {
        let SimHandle {
            shutdown_tx,
            mut task,
            addr,
            ..
        } = self;
        let _ = shutdown_tx.send(true);
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(%addr, error = %e, "gateway-sim server ended with an error")
            }
            Ok(Err(e)) => tracing::warn!(%addr, error = %e, "gateway-sim server task failed"),
            Err(_) => {
                tracing::warn!(%addr, "gateway-sim did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

/// Binds `listen` (port 0 picks a free port) and serves the protocol in a tokio task.
pub async fn spawn(listen: SocketAddr, cfg: SimConfig) -> anyhow::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("gateway-sim: cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("gateway-sim: no local address for {listen}"))?;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let body_limit = cfg
        .max_batch
        .max(1)
        .saturating_mul(BODY_BYTES_PER_ITEM)
        .saturating_add(1 << 20);
    let shared = Arc::new(Shared::new(cfg, shutdown_rx.clone()));
    let app = Router::new()
        .route("/v1/messages", post(send::<false>))
        .route("/v1/messages/batch", post(send::<true>))
        .route("/v1/messages/{ref}", get(lookup))
        .route("/stats", get(stats))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_request,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared.clone());
    let mut signal = shutdown_rx;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // Resolves on `true` and also when the handle (the sender) is dropped.
                let _ = signal.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::debug!(%addr, "gateway-sim listening");
    Ok(SimHandle {
        addr,
        shared,
        shutdown_tx,
        task,
    })
}

/// Runs the simulator for the CLI: prints the listening URL on stdout first, serves until
/// Ctrl-C, then logs the final counters.
pub async fn serve_until_ctrl_c(listen: SocketAddr, cfg: SimConfig) -> anyhow::Result<()> {
    let handle = spawn(listen, cfg).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", handle.url()).context("gateway-sim: writing the URL to stdout")?;
        out.flush().context("gateway-sim: flushing stdout")?;
    }
    tokio::signal::ctrl_c()
        .await
        .context("gateway-sim: waiting for Ctrl-C")?;
    let stats = handle.stats();
    tracing::info!(
        accepted = stats.accepted,
        duplicate_replays = stats.duplicate_replays,
        rejected = stats.rejected,
        numbers_accepted_twice = stats.numbers_accepted_twice,
        requests = stats.requests,
        "gateway-sim stopping"
    );
    handle.shutdown().await;
    Ok(())
}

/// `munja gateway-sim`: the simulator on a port of its own, with faults to inject.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Share of requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Seconds in Retry-After.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// Share of requests accepted and then left unanswered past the client's timeout.
    #[arg(long, default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// How long a timed-out request stalls, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub stall_ms: u64,
    /// Numbers starting with this are rejected as invalid_number (400).
    #[arg(long)]
    pub invalid_prefix: Option<String>,
    /// Require `Authorization: Bearer KEY` (401 without it).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Added latency per answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Random seed for fault injection.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SimArgs {
    pub fn sim_config(&self) -> anyhow::Result<SimConfig> {
        for (name, v) in [
            ("--fail-rate", self.fail_rate),
            ("--throttle-rate", self.throttle_rate),
            ("--timeout-rate", self.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("{name} {v}: expected a share between 0 and 1, e.g. 0.02 for 2%");
            }
        }
        Ok(SimConfig {
            fail_rate: self.fail_rate,
            throttle_rate: self.throttle_rate,
            retry_after_secs: self.retry_after,
            timeout_rate: self.timeout_rate,
            stall_ms: self.stall_ms,
            invalid_prefix: self.invalid_prefix.clone(),
            api_key: self.api_key.clone(),
            latency_ms: self.latency_ms,
            seed: self.seed,
            ..SimConfig::default()
        })
    }
}

#[cfg(test)]
mod tests;
