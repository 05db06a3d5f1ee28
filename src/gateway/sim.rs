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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, DefaultHasher, Hasher};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
        .route("/v1/messages", post(send_one))
        .route("/v1/messages/batch", post(send_batch))
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

// ---------------------------------------------------------------------------------------
// Shared state

/// Fault rates, changeable at runtime (stored as `f64` bits).
struct Faults {
    fail: AtomicU64,
    throttle: AtomicU64,
    timeout: AtomicU64,
    /// Accept-then-garble and accept-then-reset rates, fixed at start.
    garble: f64,
    reset: f64,
}

impl Faults {
    fn set(&self, fail: f64, throttle: f64, timeout: f64) {
        let clamp = |r: f64| if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        self.fail.store(clamp(fail).to_bits(), Ordering::Relaxed);
        self.throttle
            .store(clamp(throttle).to_bits(), Ordering::Relaxed);
        self.timeout
            .store(clamp(timeout).to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> (f64, f64, f64) {
        (
            f64::from_bits(self.fail.load(Ordering::Relaxed)),
            f64::from_bits(self.throttle.load(Ordering::Relaxed)),
            f64::from_bits(self.timeout.load(Ordering::Relaxed)),
        )
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    Unavailable,
    Throttle,
    Stall,
    Garble,
    Reset,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    rejected: AtomicU64,
    faults_503: AtomicU64,
    faults_429: AtomicU64,
    faults_timeout: AtomicU64,
    unauthorized: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    retry_after_secs: u64,
    retry_after_on_503: bool,
    stall: Duration,
    latency: Duration,
    invalid_prefix: Option<String>,
    max_batch: usize,
    omit_rate: f64,
    fixed_answer: Option<FixedAnswer>,
    lookups_unavailable: std::sync::atomic::AtomicBool,
    faults: Faults,
    api_key: RwLock<Option<String>>,
    rng: Mutex<StdRng>,
    counters: Counters,
    store: Mutex<Store>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn new(cfg: SimConfig, shutdown: watch::Receiver<bool>) -> Self {
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let rate = |r: f64| if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        let faults = Faults {
            fail: AtomicU64::new(0),
            throttle: AtomicU64::new(0),
            timeout: AtomicU64::new(0),
            garble: rate(cfg.garble_rate),
            reset: rate(cfg.reset_rate),
        };
        faults.set(cfg.fail_rate, cfg.throttle_rate, cfg.timeout_rate);
        Self {
            retry_after_secs: cfg.retry_after_secs,
            retry_after_on_503: cfg.retry_after_on_503,
            stall: Duration::from_millis(cfg.stall_ms),
            latency: Duration::from_millis(cfg.latency_ms),
            invalid_prefix: cfg.invalid_prefix.filter(|p| !p.is_empty()),
            max_batch: cfg.max_batch,
            omit_rate: cfg.omit_rate,
            fixed_answer: cfg.fixed_answer,
            lookups_unavailable: std::sync::atomic::AtomicBool::new(cfg.lookups_unavailable),
            faults,
            api_key: RwLock::new(cfg.api_key),
            rng: Mutex::new(rng),
            counters: Counters::default(),
            store: Mutex::new(Store::default()),
            shutdown,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> SimStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let store = self.store();
        SimStats {
            accepted: store.accepted,
            duplicate_replays: store.duplicate_replays,
            rejected: load(&c.rejected),
            faults_503: load(&c.faults_503),
            faults_429: load(&c.faults_429),
            faults_timeout: load(&c.faults_timeout),
            unauthorized: load(&c.unauthorized),
            distinct_numbers: store.distinct_numbers,
            numbers_accepted_twice: store.numbers_accepted_twice,
            max_per_second: store.max_per_second,
            per_second: store.recent_seconds(unix_now()),
            requests: load(&c.requests),
        }
    }

    /// Checks the bearer key; `Some(response)` is the 401 to send.
    fn check_auth(&self, headers: &HeaderMap) -> Option<Response> {
        let guard = self.api_key.read().unwrap_or_else(PoisonError::into_inner);
        let key = guard.as_deref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given == Some(key) {
            return None;
        }
        drop(guard);
        bump(&self.counters.unauthorized, 1);
        Some(error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ))
    }

    /// A uniform draw in `0.0..1.0` from the seeded generator.
    fn draw(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random()
    }

    /// One draw per request decides its fault.
    fn draw_fault(&self) -> Fault {
        let (fail, throttle, timeout) = self.faults.get();
        let (garble, reset) = (self.faults.garble, self.faults.reset);
        if fail + throttle + timeout + garble + reset <= 0.0 {
            return Fault::None;
        }
        let r: f64 = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random();
        if r < fail {
            Fault::Unavailable
        } else if r < fail + throttle {
            Fault::Throttle
        } else if r < fail + throttle + timeout {
            Fault::Stall
        } else if r < fail + throttle + timeout + garble {
            Fault::Garble
        } else if r < fail + throttle + timeout + garble + reset {
            Fault::Reset
        } else {
            Fault::None
        }
    }

    /// Answers a 503/429 fault; `None` when the request goes on (possibly to stall later).
    fn fault_response(&self, fault: Fault) -> Option<Response> {
        match fault {
            Fault::Unavailable => {
                bump(&self.counters.faults_503, 1);
                let mut resp = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "simulated outage",
                );
                if self.retry_after_on_503 {
                    resp.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(self.retry_after_secs),
                    );
                }
                Some(resp)
            }
            Fault::Throttle => {
                bump(&self.counters.faults_429, 1);
                let mut resp = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    "simulated rate limit",
                );
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(self.retry_after_secs),
                );
                Some(resp)
            }
            Fault::Stall => {
                bump(&self.counters.faults_timeout, 1);
                None
            }
            Fault::Garble | Fault::Reset | Fault::None => None,
        }
    }

    /// Sleeps `stall` (cut short by shutdown).
    async fn stall(&self) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(self.stall) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    async fn add_latency(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    /// Validates one message; `Err((code, message))` is a rejection.
    fn validate(&self, m: &WireMessage) -> Result<(), (&'static str, String)> {
        if m.msg_ref.is_empty() {
            return Err(("invalid_request", "ref is empty".into()));
        }
        if m.kind != "SMS" && m.kind != "LMS" {
            return Err((
                "invalid_request",
                format!("type must be SMS or LMS, not {:?}", m.kind),
            ));
        }
        if m.campaign.is_empty() {
            return Err(("invalid_request", "campaign is empty".into()));
        }
        if m.text.is_empty() {
            return Err(("invalid_request", "text is empty".into()));
        }
        if m.from.is_empty() || !m.from.bytes().all(|b| b.is_ascii_digit()) {
            return Err((
                "invalid_sender",
                format!("sender {:?} is not a digits-only number", m.from),
            ));
        }
        if m.to.is_empty() || !m.to.bytes().all(|b| b.is_ascii_digit()) {
            return Err((
                "invalid_number",
                format!("recipient {:?} is not a digits-only number", m.to),
            ));
        }
        if let Some(prefix) = &self.invalid_prefix
            && m.to.starts_with(prefix.as_str())
        {
            return Err((
                "invalid_number",
                format!("recipient {:?} does not exist", m.to),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

#[derive(Deserialize)]
struct WireMessage {
    #[serde(rename = "ref")]
    msg_ref: String,
    to: String,
    from: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, rename = "subject")]
    _subject: Option<String>,
    text: String,
    #[serde(rename = "ad")]
    _ad: bool,
    campaign: String,
}

#[derive(Deserialize)]
struct WireBatch {
    messages: Vec<WireMessage>,
}

#[derive(Serialize)]
struct ItemResult<'a> {
    #[serde(rename = "ref")]
    msg_ref: &'a str,
    status: &'static str,
    gateway_id: Option<String>,
    duplicate: bool,
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Serialize)]
struct BatchResults<'a> {
    results: Vec<ItemResult<'a>>,
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

fn gateway_id(ref_hash: u64) -> String {
    format!("g{ref_hash:016x}")
}

/// Counts every request but `GET /stats` (so that a redirected or misrouted one shows too).
async fn count_request(
    State(sh): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path() != "/stats" {
        bump(&sh.counters.requests, 1);
    }
    next.run(req).await
}

/// The configured fixed answer, if any.
fn fixed(sh: &Shared) -> Option<Response> {
    let f = sh.fixed_answer.as_ref()?;
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, f.body.clone()).into_response();
    if let Some(loc) = f
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Some(resp)
}

/// Finishes an answer after the request was processed: stalled, garbled or broken off.
async fn deliver(sh: &Shared, resp: Response, fault: Fault) -> Response {
    match fault {
        Fault::Stall => sh.stall().await,
        Fault::Garble => {
            return (StatusCode::OK, "<html><body>502 Bad Gateway</body></html>").into_response();
        }
        Fault::Reset => {
            let mut broken = Response::new(axum::body::Body::new(BrokenBody));
            broken.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return broken;
        }
        _ => {}
    }
    sh.add_latency().await;
    resp
}

/// A response body that fails at once: hyper breaks the connection off mid-answer.
struct BrokenBody;

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "gateway-sim: simulated connection reset",
        ))))
    }
}

async fn send_one(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(resp) = fixed(&sh) {
        return resp;
    }
    let (resp, fault) = single(&sh, &headers, &body);
    deliver(&sh, resp, fault).await
}

/// Handles a single send up to the answer, and the fault to apply to that answer.
fn single(sh: &Shared, headers: &HeaderMap, body: &[u8]) -> (Response, Fault) {
    if let Some(resp) = sh.check_auth(headers) {
        return (resp, Fault::None);
    }
    let invalid = |message: String| {
        bump(&sh.counters.rejected, 1);
        error_response(StatusCode::BAD_REQUEST, "invalid_request", &message)
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.is_empty() => key,
        _ => {
            return (
                invalid("missing Idempotency-Key header".into()),
                Fault::None,
            );
        }
    };
    let msg: WireMessage = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => {
            return (
                invalid(format!("body is not a valid message: {e}")),
                Fault::None,
            );
        }
    };
    if msg.msg_ref != key {
        return (
            invalid(format!(
                "Idempotency-Key {key:?} does not match ref {:?}",
                msg.msg_ref
            )),
            Fault::None,
        );
    }
    let fault = sh.draw_fault();
    if let Some(resp) = sh.fault_response(fault) {
        return (resp, Fault::None);
    }
    if let Err((code, message)) = sh.validate(&msg) {
        bump(&sh.counters.rejected, 1);
        return (
            error_response(StatusCode::BAD_REQUEST, code, &message),
            fault,
        );
    }
    let (ref_hash, duplicate) = {
        let mut store = sh.store();
        let result = store.record(key, &msg.campaign, &msg.to);
        store.count_second(unix_now(), 1);
        result
    };
    let resp = (
        StatusCode::OK,
        axum::Json(json!({
            "gateway_id": gateway_id(ref_hash),
            "status": "accepted",
            "duplicate": duplicate,
        })),
    )
        .into_response();
    (resp, fault)
}

async fn send_batch(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(resp) = fixed(&sh) {
        return resp;
    }
    let (resp, fault) = batch(&sh, &headers, &body);
    deliver(&sh, resp, fault).await
}

/// Handles a batch up to the answer, and the fault to apply to that answer.
fn batch(sh: &Shared, headers: &HeaderMap, body: &[u8]) -> (Response, Fault) {
    if let Some(resp) = sh.check_auth(headers) {
        return (resp, Fault::None);
    }
    let invalid = |message: String| {
        bump(&sh.counters.rejected, 1);
        error_response(StatusCode::BAD_REQUEST, "invalid_request", &message)
    };
    let req: WireBatch = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return (
                invalid(format!("body is not a valid batch: {e}")),
                Fault::None,
            );
        }
    };
    if req.messages.len() > sh.max_batch {
        return (
            invalid(format!(
                "batch of {} messages exceeds max_batch {}",
                req.messages.len(),
                sh.max_batch
            )),
            Fault::None,
        );
    }
    let fault = sh.draw_fault();
    if let Some(resp) = sh.fault_response(fault) {
        return (resp, Fault::None);
    }
    let mut results = Vec::with_capacity(req.messages.len());
    let mut rejected = 0;
    {
        let mut store = sh.store();
        for m in &req.messages {
            match sh.validate(m) {
                Err((code, message)) => {
                    rejected += 1;
                    results.push(ItemResult {
                        msg_ref: &m.msg_ref,
                        status: "rejected",
                        gateway_id: None,
                        duplicate: false,
                        error: Some(code),
                        message: Some(message),
                    });
                }
                Ok(()) => {
                    let (ref_hash, duplicate) = store.record(&m.msg_ref, &m.campaign, &m.to);
                    if sh.omit_rate > 0.0 && sh.draw() < sh.omit_rate {
                        continue;
                    }
                    results.push(ItemResult {
                        msg_ref: &m.msg_ref,
                        status: "accepted",
                        gateway_id: Some(gateway_id(ref_hash)),
                        duplicate,
                        error: None,
                        message: None,
                    });
                }
            }
        }
        let sent = req.messages.len() as u64 - rejected;
        store.count_second(unix_now(), sent);
    }
    bump(&sh.counters.rejected, rejected);
    let resp = (StatusCode::OK, axum::Json(BatchResults { results })).into_response();
    (resp, fault)
}

async fn lookup(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(msg_ref): Path<String>,
) -> Response {
    let resp = match sh.check_auth(&headers) {
        Some(resp) => resp,
        None if sh.lookups_unavailable.load(Ordering::Relaxed) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "simulated lookup outage",
        ),
        None => {
            let ref_hash = hash_ref(&msg_ref);
            if sh.store().refs.contains(ref_hash) {
                axum::Json(json!({
                    "gateway_id": gateway_id(ref_hash),
                    "status": "accepted",
                    "error": null,
                }))
                .into_response()
            } else {
                error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no message with this ref",
                )
            }
        }
    };
    sh.add_latency().await;
    resp
}

async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(sh.stats()).into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Acceptance store

fn hash_ref(msg_ref: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(msg_ref.as_bytes());
    h.finish()
}

fn pair_key(campaign: u32, to: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u32(campaign);
    h.write(to.as_bytes());
    h.finish()
}

#[derive(Default)]
struct Store {
    /// Hashes of accepted refs.
    refs: CompactSet,
    /// `pair_key(campaign index, to)` of every accepted message.
    pairs: CompactSet,
    /// Pair keys already counted in `numbers_accepted_twice`.
    doubles: HashSet<u64, IdentityBuild>,
    /// Campaign name → index used in pair keys.
    campaigns: HashMap<String, u32>,
    accepted: u64,
    duplicate_replays: u64,
    distinct_numbers: u64,
    numbers_accepted_twice: u64,
    max_per_second: u64,
    /// Ring of `(unix second, count)`, slot = second % SECONDS_KEPT.
    seconds: Vec<(i64, u64)>,
}

impl Store {
    /// Records an accepted message; returns its ref hash and whether it was a replay.
    fn record(&mut self, msg_ref: &str, campaign: &str, to: &str) -> (u64, bool) {
        let ref_hash = hash_ref(msg_ref);
        if !self.refs.insert(ref_hash) {
            self.duplicate_replays += 1;
            return (ref_hash, true);
        }
        self.accepted += 1;
        let campaign_count = self.campaigns.len();
        let idx = match self.campaigns.get(campaign) {
            Some(&idx) => idx,
            None => {
                let idx = u32::try_from(campaign_count).unwrap_or(u32::MAX);
                self.campaigns.insert(campaign.to_owned(), idx);
                idx
            }
        };
        let key = pair_key(idx, to);
        if !self.pairs.insert(key) {
            // A second ref for a (campaign, number) that already got a message.
            if self.doubles.insert(key) {
                self.numbers_accepted_twice += 1;
            }
        } else {
            let seen_elsewhere = (0..self.campaigns.len() as u32)
                .filter(|&other| other != idx)
                .any(|other| self.pairs.contains(pair_key(other, to)));
            if !seen_elsewhere {
                self.distinct_numbers += 1;
            }
        }
        (ref_hash, false)
    }

    fn count_second(&mut self, now: i64, n: u64) {
        if n == 0 {
            return;
        }
        if self.seconds.is_empty() {
            self.seconds = vec![(0, 0); SECONDS_KEPT];
        }
        let slot = &mut self.seconds[now.rem_euclid(SECONDS_KEPT as i64) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += n;
        self.max_per_second = self.max_per_second.max(slot.1);
    }

    fn recent_seconds(&self, now: i64) -> Vec<(i64, u64)> {
        let oldest = now - SECONDS_KEPT as i64 + 1;
        let mut out: Vec<(i64, u64)> = self
            .seconds
            .iter()
            .copied()
            .filter(|&(sec, n)| n > 0 && sec >= oldest && sec <= now)
            .collect();
        out.sort_unstable();
        out
    }
}

/// `Hasher` for keys that already are uniform 64-bit hashes.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdentityBuild = BuildHasherDefault<IdentityHasher>;

/// A set of 64-bit hashes in about 8 bytes each: a sorted array plus a small hash set of
/// recent inserts, merged into the array when it reaches 1/16 of its size (amortised O(1)
/// per insert, no transient copy of the whole set).
#[derive(Default)]
struct CompactSet {
    sorted: Vec<u64>,
    recent: HashSet<u64, IdentityBuild>,
}

impl CompactSet {
    const MIN_RECENT: usize = 4096;

    fn contains(&self, key: u64) -> bool {
        self.recent.contains(&key) || self.sorted.binary_search(&key).is_ok()
    }

    /// Inserts `key`; `false` when it was already present.
    fn insert(&mut self, key: u64) -> bool {
        if self.contains(key) {
            return false;
        }
        self.recent.insert(key);
        if self.recent.len() >= Self::MIN_RECENT.max(self.sorted.len() / 16) {
            self.merge();
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Merges `recent` into `sorted` in place, from the back.
    fn merge(&mut self) {
        let mut tail: Vec<u64> = self.recent.drain().collect();
        tail.sort_unstable();
        let mut read = self.sorted.len();
        self.sorted.resize(read + tail.len(), 0);
        let mut write = self.sorted.len();
        let mut pending = tail.len();
        while pending > 0 {
            write -= 1;
            if read > 0 && self.sorted[read - 1] > tail[pending - 1] {
                read -= 1;
                self.sorted[write] = self.sorted[read];
            } else {
                pending -= 1;
                self.sorted[write] = tail[pending];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::client::{HttpJsonGateway, Lookup, OutMessage, Outcome};

    async fn sim(cfg: SimConfig) -> SimHandle {
        spawn("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap()
    }

    fn client(sim: &SimHandle, key: Option<&str>, timeout_ms: u64) -> HttpJsonGateway {
        HttpJsonGateway::new(
            "sim",
            &sim.url(),
            key.map(str::to_owned),
            Duration::from_millis(timeout_ms),
            8,
        )
        .unwrap()
    }

    fn msg(r: &str, to: &str) -> OutMessage {
        OutMessage {
            msg_ref: r.into(),
            to: to.into(),
            from: "15881234".into(),
            kind: "SMS".into(),
            subject: None,
            text: "(광고) 봄 세일 무료수신거부 0801234567".into(),
            ad: true,
            campaign: "spring".into(),
        }
    }

    fn accepted(o: &Outcome) -> (String, bool) {
        match o {
            Outcome::Accepted {
                gateway_id,
                duplicate,
            } => (gateway_id.clone(), *duplicate),
            other => panic!("expected accepted, got {other:?}"),
        }
    }

    #[test]
    fn compact_set_behaves_like_a_set() {
        let mut set = CompactSet::default();
        let mut reference = HashSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..40_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = if i % 5 == 0 { x % 1000 } else { x };
            assert_eq!(set.insert(key), reference.insert(key), "insert {key}");
        }
        assert_eq!(set.len(), reference.len());
        assert!(set.sorted.len() > CompactSet::MIN_RECENT, "merges happened");
        assert!(set.sorted.windows(2).all(|w| w[0] < w[1]));
        for key in &reference {
            assert!(set.contains(*key));
        }
        assert!(!set.contains(1001) || reference.contains(&1001));
    }

    #[test]
    fn store_counts_numbers_and_doubles() {
        let mut s = Store::default();
        assert!(!s.record("r1", "c1", "01011112222").1);
        assert!(s.record("r1", "c1", "01011112222").1);
        assert!(!s.record("r2", "c1", "01011112222").1);
        assert!(!s.record("r3", "c1", "01011112222").1);
        assert!(!s.record("r4", "c2", "01011112222").1);
        assert!(!s.record("r5", "c2", "01033334444").1);
        assert_eq!(s.accepted, 5);
        assert_eq!(s.duplicate_replays, 1);
        assert_eq!(s.distinct_numbers, 2);
        assert_eq!(
            s.numbers_accepted_twice, 1,
            "counted once per (campaign, number)"
        );
        s.count_second(1000, 3);
        s.count_second(1000, 2);
        s.count_second(1001, 1);
        s.count_second(1000 + SECONDS_KEPT as i64, 1);
        assert_eq!(s.max_per_second, 5);
        assert_eq!(
            s.recent_seconds(1000 + SECONDS_KEPT as i64),
            vec![(1001, 1), (1120, 1)]
        );
    }

    #[test]
    fn config_debug_hides_the_key() {
        let cfg = SimConfig {
            api_key: Some("s3cr3t".into()),
            ..SimConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("s3cr3t") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }

    #[tokio::test]
    async fn accept_duplicate_and_lookup() {
        let sim = sim(SimConfig::default()).await;
        let gw = client(&sim, None, 5000);
        let first = gw.send(&msg("spring:1", "01012345678")).await;
        assert_eq!(first.http_status, Some(200));
        let (id, dup) = accepted(&first.outcome);
        assert!(!dup);
        assert_eq!(first.outcome.code(), "accepted");
        let again = gw.send(&msg("spring:1", "01012345678")).await;
        assert_eq!(accepted(&again.outcome), (id.clone(), true));
        assert_eq!(again.outcome.code(), "duplicate");
        assert_eq!(
            gw.lookup("spring:1").await,
            Lookup::Found {
                gateway_id: id,
                status: "accepted".into()
            }
        );
        assert_eq!(gw.lookup("spring:404").await, Lookup::NotFound);
        // Refs with characters that need escaping in a path still round-trip.
        let odd = "spring/2 ?#%";
        let (odd_id, _) = accepted(&gw.send(&msg(odd, "01012340000")).await.outcome);
        assert_eq!(
            gw.lookup(odd).await,
            Lookup::Found {
                gateway_id: odd_id,
                status: "accepted".into()
            }
        );
        let st = sim.stats();
        assert_eq!(st.accepted, 2);
        assert_eq!(st.duplicate_replays, 1);
        assert_eq!(st.distinct_numbers, 2);
        assert_eq!(st.numbers_accepted_twice, 0);
        assert_eq!(st.requests, 6);
        assert!(st.max_per_second >= 1);
        assert_eq!(st.per_second.iter().map(|p| p.1).sum::<u64>(), 3);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn api_key_required_when_configured() {
        let sim = sim(SimConfig {
            api_key: Some("k-123".into()),
            ..SimConfig::default()
        })
        .await;
        let anonymous = client(&sim, None, 5000);
        let wrong = client(&sim, Some("nope"), 5000);
        let good = client(&sim, Some("k-123"), 5000);
        let a = anonymous.send(&msg("r1", "01012345678")).await;
        assert!(matches!(a.outcome, Outcome::Halt { .. }), "{a:?}");
        assert_eq!(a.http_status, Some(401));
        assert!(!a.outcome.is_final() && !a.outcome.is_transient());
        let w = wrong.send_batch(&[msg("r1", "01012345678")]).await;
        assert_eq!(w[0].outcome.code(), "unauthorized");
        if let Outcome::Halt { message, .. } = &w[0].outcome {
            assert!(!message.contains("nope"), "{message}");
        }
        assert!(matches!(
            anonymous.lookup("r1").await,
            Lookup::Unavailable { .. }
        ));
        accepted(&good.send(&msg("r1", "01012345678")).await.outcome);
        sim.set_api_key(None);
        let (_, dup) = accepted(&anonymous.send(&msg("r1", "01012345678")).await.outcome);
        assert!(dup);
        let st = sim.stats();
        assert_eq!((st.unauthorized, st.accepted), (3, 1));
    }

    #[tokio::test]
    async fn outage_then_heal() {
        let sim = sim(SimConfig {
            fail_rate: 1.0,
            ..SimConfig::default()
        })
        .await;
        let gw = client(&sim, None, 5000);
        let a = gw.send(&msg("r1", "01012345678")).await;
        assert_eq!(
            a.outcome,
            Outcome::Transient {
                code: "http_503".into()
            }
        );
        assert_eq!(a.http_status, Some(503));
        let b = gw
            .send_batch(&[msg("r2", "01012345679"), msg("r3", "01012345670")])
            .await;
        assert!(b.iter().all(|x| x.outcome.code() == "http_503"));
        assert_eq!(
            gw.lookup("r1").await,
            Lookup::NotFound,
            "faults come before acceptance"
        );
        sim.set_faults(0.0, 0.0, 0.0);
        accepted(&gw.send(&msg("r1", "01012345678")).await.outcome);
        let st = sim.stats();
        assert_eq!((st.faults_503, st.accepted), (2, 1));
    }

    #[tokio::test]
    async fn throttling_reports_retry_after() {
        let sim = sim(SimConfig {
            throttle_rate: 1.0,
            ..SimConfig::default()
        })
        .await;
        let gw = client(&sim, None, 5000);
        let a = gw.send(&msg("r1", "01012345678")).await;
        assert_eq!(
            a.outcome,
            Outcome::Throttled {
                retry_after: Some(Duration::from_secs(1))
            }
        );
        let b = gw.send_batch(&[msg("r2", "01012345679")]).await;
        assert_eq!(b[0].outcome, a.outcome);
        let st = sim.stats();
        assert_eq!((st.faults_429, st.accepted), (2, 0));
    }

    #[tokio::test]
    async fn timeout_is_in_doubt_but_recorded() {
        let sim = sim(SimConfig {
            timeout_rate: 1.0,
            stall_ms: 1000,
            ..SimConfig::default()
        })
        .await;
        let gw = client(&sim, None, 200);
        let a = gw.send(&msg("r1", "01012345678")).await;
        assert_eq!(
            a.outcome,
            Outcome::InDoubt {
                code: "timeout".into()
            }
        );
        assert_eq!(a.http_status, None);
        assert!(a.latency < Duration::from_millis(900), "{:?}", a.latency);
        let b = gw
            .send_batch(&[msg("r2", "01012345679"), msg("r3", "01012345670")])
            .await;
        assert!(b.iter().all(|x| x.outcome.code() == "timeout"));
        for r in ["r1", "r2", "r3"] {
            assert!(
                matches!(gw.lookup(r).await, Lookup::Found { .. }),
                "{r} was accepted before the stall"
            );
        }
        sim.set_faults(0.0, 0.0, 0.0);
        let (_, dup) = accepted(&gw.send(&msg("r1", "01012345678")).await.outcome);
        assert!(
            dup,
            "the retry after an in-doubt attempt is a replay, not a second send"
        );
        let st = sim.stats();
        assert_eq!(
            (st.faults_timeout, st.accepted, st.duplicate_replays),
            (2, 3, 1)
        );
        sim.shutdown().await;
    }

    /// Accepted, then answered with a proxy's error page, broken off, or left out of the batch
    /// results: the client cannot tell, so it is in doubt, and the lookup finds it.
    #[tokio::test]
    async fn garbled_reset_and_omitted_answers_are_in_doubt_and_found_by_lookup() {
        for (cfg, code) in [
            (
                SimConfig {
                    garble_rate: 1.0,
                    ..SimConfig::default()
                },
                "bad_response",
            ),
            (
                SimConfig {
                    reset_rate: 1.0,
                    ..SimConfig::default()
                },
                "",
            ),
            (
                SimConfig {
                    omit_rate: 1.0,
                    ..SimConfig::default()
                },
                "missing_result",
            ),
        ] {
            let sim = sim(cfg.clone()).await;
            let gw = client(&sim, None, 5000);
            let batch = gw
                .send_batch(&[msg("b1", "01011112222"), msg("b2", "01011113333")])
                .await;
            let mut outcomes: Vec<Outcome> = batch.into_iter().map(|a| a.outcome).collect();
            if cfg.omit_rate == 0.0 {
                outcomes.push(gw.send(&msg("s1", "01011114444")).await.outcome);
            }
            for o in &outcomes {
                assert!(matches!(o, Outcome::InDoubt { .. }), "{cfg:?}: {o:?}");
                if !code.is_empty() {
                    assert_eq!(o.code(), code);
                }
            }
            for r in ["b1", "b2"] {
                assert!(
                    matches!(gw.lookup(r).await, Lookup::Found { .. }),
                    "{cfg:?}"
                );
            }
            sim.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_fixed_answer_is_given_to_every_send_and_accepts_nothing() {
        let sim = sim(SimConfig {
            fixed_answer: Some(FixedAnswer {
                status: 302,
                location: Some("http://127.0.0.1:9/v1/messages".into()),
                body: String::new(),
            }),
            ..SimConfig::default()
        })
        .await;
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/v1/messages/batch", sim.url()))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(resp.headers()["location"], "http://127.0.0.1:9/v1/messages");
        let a = client(&sim, None, 5000)
            .send(&msg("r1", "01012345678"))
            .await;
        assert_eq!(a.outcome.code(), "redirect");
        let st = sim.stats();
        assert_eq!((st.accepted, st.requests), (0, 2));
    }

    #[tokio::test]
    async fn invalid_numbers_are_rejected() {
        let sim = sim(SimConfig {
            invalid_prefix: Some("0109".into()),
            ..SimConfig::default()
        })
        .await;
        let gw = client(&sim, None, 5000);
        let a = gw.send(&msg("r1", "01099998888")).await;
        assert_eq!(a.http_status, Some(400));
        assert_eq!(a.outcome.code(), "invalid_number");
        assert!(a.outcome.is_final());
        let b = gw.send(&msg("r2", "010-1234-5678")).await;
        assert_eq!(b.outcome.code(), "invalid_number");
        let mut bad_sender = msg("r3", "01012345678");
        bad_sender.from = "1588-1234".into();
        assert_eq!(gw.send(&bad_sender).await.outcome.code(), "invalid_sender");
        let mut bad_type = msg("r4", "01012345678");
        bad_type.kind = "MMS".into();
        assert_eq!(gw.send(&bad_type).await.outcome.code(), "invalid_request");
        assert_eq!(gw.lookup("r1").await, Lookup::NotFound);
        assert_eq!(sim.stats().rejected, 4);
    }

    #[tokio::test]
    async fn batch_results_in_order() {
        let sim = sim(SimConfig {
            invalid_prefix: Some("0109".into()),
            max_batch: 5,
            ..SimConfig::default()
        })
        .await;
        let gw = client(&sim, None, 5000);
        accepted(&gw.send(&msg("b2", "01022222222")).await.outcome);
        let batch = [
            msg("b1", "01011111111"),
            msg("b2", "01022222222"),
            msg("b3", "01099999999"),
            msg("b4", "0104444444x"),
            msg("b5", "01055555555"),
        ];
        let out = gw.send_batch(&batch).await;
        let codes: Vec<_> = out.iter().map(|a| a.outcome.code().to_owned()).collect();
        assert_eq!(
            codes,
            [
                "accepted",
                "duplicate",
                "invalid_number",
                "invalid_number",
                "accepted"
            ]
        );
        assert!(out.iter().all(|a| a.http_status == Some(200)));
        let (b2_first, _) = accepted(&gw.send(&msg("b2", "01022222222")).await.outcome);
        assert_eq!(accepted(&out[1].outcome).0, b2_first);
        let too_big: Vec<_> = (0..6)
            .map(|i| msg(&format!("x{i}"), "01012345678"))
            .collect();
        let out = gw.send_batch(&too_big).await;
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|a| a.outcome.code() == "invalid_request"));
        let st = sim.stats();
        assert_eq!(st.accepted, 3);
        assert_eq!(st.duplicate_replays, 2);
        assert_eq!(st.rejected, 3);
        assert_eq!(st.requests, 4);
    }

    #[tokio::test]
    async fn same_number_under_two_refs_is_a_double_send() {
        let sim = sim(SimConfig::default()).await;
        let gw = client(&sim, None, 5000);
        accepted(&gw.send(&msg("a", "01012345678")).await.outcome);
        accepted(&gw.send(&msg("a", "01012345678")).await.outcome);
        assert_eq!(
            sim.stats().numbers_accepted_twice,
            0,
            "a replay is not a double send"
        );
        accepted(&gw.send(&msg("b", "01012345678")).await.outcome);
        let mut other_campaign = msg("c", "01012345678");
        other_campaign.campaign = "summer".into();
        accepted(&gw.send(&other_campaign).await.outcome);
        let st = sim.stats();
        assert_eq!(st.numbers_accepted_twice, 1);
        assert_eq!(st.distinct_numbers, 1);
        assert_eq!(st.accepted, 3);
    }

    #[tokio::test]
    async fn malformed_requests_get_invalid_request() {
        let sim = sim(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let url = format!("{}/v1/messages", sim.url());
        let cases: [(Option<&str>, &str); 4] = [
            (Some("r1"), "{not json"),
            (Some("r1"), r#"{"ref":"r1","to":"01012345678"}"#),
            (
                None,
                r#"{"ref":"r1","to":"01012345678","from":"1588","type":"SMS","text":"t","ad":true,"campaign":"c"}"#,
            ),
            (
                Some("r2"),
                r#"{"ref":"r1","to":"01012345678","from":"1588","type":"SMS","text":"t","ad":true,"campaign":"c"}"#,
            ),
        ];
        for (key, body) in cases {
            let mut req = http.post(&url).body(body.to_owned());
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 400, "{body}");
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["error"], "invalid_request", "{body}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let resp = http
            .post(format!("{}/v1/messages/batch", sim.url()))
            .body(r#"{"messages": 3}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let resp = http
            .get(format!("{}/nowhere", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(sim.stats().accepted, 0);
    }

    #[tokio::test]
    async fn stats_endpoint_json_shape() {
        let sim = sim(SimConfig::default()).await;
        let gw = client(&sim, None, 5000);
        accepted(&gw.send(&msg("r1", "01012345678")).await.outcome);
        let v: serde_json::Value = reqwest::get(format!("{}/stats", sim.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "accepted",
            "duplicate_replays",
            "rejected",
            "faults_503",
            "faults_429",
            "faults_timeout",
            "unauthorized",
            "distinct_numbers",
            "numbers_accepted_twice",
            "max_per_second",
            "per_second",
            "requests",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["accepted"], 1);
        assert_eq!(v["per_second"][0][1], 1);
        assert!(v["per_second"][0][0].as_i64().unwrap() > 1_600_000_000);
        let parsed: SimStats = serde_json::from_value(v).unwrap();
        assert_eq!(parsed.accepted, 1);
        assert_eq!(parsed.requests, 1, "/stats itself is not counted");
    }

    #[tokio::test]
    async fn throughput_batches_stay_exactly_once() {
        let sim = sim(SimConfig::default()).await;
        let gw = client(&sim, None, 10_000);
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for t in 0..4 {
            let gw = gw.clone();
            tasks.push(tokio::spawn(async move {
                for b in 0..5 {
                    let msgs: Vec<_> = (0..1000)
                        .map(|i| msg(&format!("t{t}b{b}i{i}"), &format!("010{t}{b}{i:06}")))
                        .collect();
                    let out = gw.send_batch(&msgs).await;
                    assert!(out.iter().all(|a| a.outcome.code() == "accepted"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed();
        let st = sim.stats();
        assert_eq!(st.accepted, 20_000);
        assert_eq!(st.distinct_numbers, 20_000);
        assert_eq!(st.numbers_accepted_twice, 0);
        // Debug builds are slow; this only guards against pathological slowness.
        assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    }
}
