//! The simulator's state shared by all requests: fault rates (changeable at runtime) and the
//! seeded draws that pick a request's fault, the request counters, the bearer key, message
//! validation, and the acceptance [`Store`] behind a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;

use super::handlers::{WireMessage, error_response, unix_now};
use super::store::Store;
use super::{FixedAnswer, SimConfig, SimStats};

/// Fault rates, changeable at runtime (stored as `f64` bits).
pub(super) struct Faults {
    fail: AtomicU64,
    throttle: AtomicU64,
    timeout: AtomicU64,
    /// Accept-then-garble and accept-then-reset rates, fixed at start.
    garble: f64,
    reset: f64,
}

impl Faults {
    pub(super) fn set(&self, fail: f64, throttle: f64, timeout: f64) {
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
pub(super) enum Fault {
    None,
    Unavailable,
    Throttle,
    Stall,
    Garble,
    Reset,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) rejected: AtomicU64,
    faults_503: AtomicU64,
    faults_429: AtomicU64,
    faults_timeout: AtomicU64,
    unauthorized: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(super) struct Shared {
    retry_after_secs: u64,
    retry_after_on_503: bool,
    stall: Duration,
    latency: Duration,
    invalid_prefix: Option<String>,
    pub(super) max_batch: usize,
    pub(super) omit_rate: f64,
    pub(super) fixed_answer: Option<FixedAnswer>,
    pub(super) lookups_unavailable: AtomicBool,
    pub(super) faults: Faults,
    pub(super) api_key: RwLock<Option<String>>,
    rng: Mutex<StdRng>,
    pub(super) counters: Counters,
    store: Mutex<Store>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(super) fn new(cfg: SimConfig, shutdown: watch::Receiver<bool>) -> Self {
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
            lookups_unavailable: AtomicBool::new(cfg.lookups_unavailable),
            faults,
            api_key: RwLock::new(cfg.api_key),
            rng: Mutex::new(rng),
            counters: Counters::default(),
            store: Mutex::new(Store::default()),
            shutdown,
        }
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stats(&self) -> SimStats {
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
    pub(super) fn check_auth(&self, headers: &HeaderMap) -> Option<Response> {
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
    pub(super) fn draw(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random()
    }

    /// One draw per request decides its fault.
    pub(super) fn draw_fault(&self) -> Fault {
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
    pub(super) fn fault_response(&self, fault: Fault) -> Option<Response> {
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
    pub(super) async fn stall(&self) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(self.stall) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    pub(super) async fn add_latency(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    /// Validates one message; `Err((code, message))` is a rejection.
    pub(super) fn validate(&self, m: &WireMessage) -> Result<(), (&'static str, String)> {
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
