//! What every HTTP gateway kind shares: the client (no redirects, timeouts, keep-alive), how a
//! transport error is classified (never written: transient; maybe written: in doubt), the
//! attempts of one request, `Retry-After`, and text safe to show (no password, short excerpts).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};

use super::{Attempt, Outcome};

/// Longest gateway-supplied text kept in a rejection or authorization message.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;

/// The attempts of one request that started at `at` (`started` on the monotonic clock): one
/// per outcome, sharing the request's HTTP status and latency.
pub fn attempts(
    outcomes: Vec<Outcome>,
    http_status: Option<u16>,
    at: DateTime<Utc>,
    started: Instant,
) -> Vec<Attempt> {
    let latency = started.elapsed();
    outcomes
        .into_iter()
        .map(|outcome| Attempt {
            outcome,
            http_status,
            latency,
            at,
        })
        .collect()
}

/// The HTTP client of gateway `name`: `timeout` for every request (connect included), no
/// redirect ever followed (a 3xx is a configuration error, never a reason to send phone numbers
/// to another host), `idle` keep-alive connections, `headers` on every request.
pub(crate) fn http_client(
    name: &str,
    timeout: Duration,
    idle: usize,
    headers: HeaderMap,
) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(idle)
        .tcp_nodelay(true)
        .user_agent(concat!("munja/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .build()
        .with_context(|| format!("gateway {name}: building the HTTP client"))
}

/// The base URL as shown in logs: without the password of a `user:password@` URL.
pub(crate) fn shown_url(base: &Url) -> String {
    let mut shown = base.clone();
    if shown.password().is_some_and(|p| !p.is_empty()) {
        // Cannot fail: the URL has a host, since it has a password.
        let _ = shown.set_password(Some("redacted"));
    }
    shown.as_str().trim_end_matches('/').to_owned()
}

/// Appends path segments to a base URL (which may carry its own path prefix).
pub(crate) fn join(base: &Url, segments: &[&str]) -> anyhow::Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("URL cannot be a base"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Classifies a transport error. A connect failure (refused, reset, TLS or timed out while
/// connecting) means the request was never written, so it is `Transient` even when it was
/// a timeout. Any other failure (a timeout, a reset or a closed connection) may have hit after
/// the request went out: reqwest cannot tell, so it is `InDoubt`.
pub fn classify_error(e: &reqwest::Error) -> Outcome {
    if e.is_connect() || e.is_builder() {
        Outcome::Transient {
            code: "connect_error".into(),
        }
    } else if e.is_timeout() {
        Outcome::InDoubt {
            code: "timeout".into(),
        }
    } else {
        Outcome::InDoubt {
            code: "connection_lost".into(),
        }
    }
}

/// Rate limit of a repeated warning: `first_in(d)` is true at most once per `d`.
#[derive(Default)]
pub(crate) struct Throttle(std::sync::Mutex<Option<Instant>>);

impl Throttle {
    pub(crate) fn first_in(&self, d: Duration) -> bool {
        let Ok(mut last) = self.0.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < d) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// The error and its sources, `: `-separated (reqwest's own Display hides the cause).
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub(crate) fn body_excerpt(body: &[u8], status: StatusCode) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        text.chars().take(MAX_MESSAGE_CHARS).collect()
    }
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (a date in the past gives
/// zero). Anything else gives `None`. Never overflows: more seconds than fit in a `u64` give
/// `u64::MAX` seconds; callers cut the result to their maximum.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}
