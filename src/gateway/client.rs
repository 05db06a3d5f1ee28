//! Client for one `http-json` gateway (see `docs/gateway-http-json.md`): single, batch and
//! lookup requests, each made exactly once, with every HTTP answer or transport failure
//! classified into an [`Outcome`]. Retries, backoff and rate limiting belong to the dispatcher.
//!
//! The API key is only ever held inside a sensitive [`HeaderValue`]; it never appears in
//! `Debug` output, error strings or log lines.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::http::{Throttle, attempts, error_chain, http_client, join, shown_url};
pub use super::http::{classify_error, parse_retry_after};

mod answer;

/// Header carrying the message's stable key on single sends.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// One message as it goes on the wire (`POST /v1/messages`, or one item of a batch).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutMessage {
    /// Stable key of this (campaign, recipient) message; the same on every attempt.
    #[serde(rename = "ref")]
    pub msg_ref: String,
    /// Recipient number, digits only.
    pub to: String,
    /// Registered sender number.
    pub from: String,
    /// `"SMS"` or `"LMS"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// LMS subject, if any.
    pub subject: Option<String>,
    /// Rendered message text.
    pub text: String,
    /// Whether this is an advertising message.
    pub ad: bool,
    /// Campaign name.
    pub campaign: String,
}

/// An advertising SMS to `to` from `from`, ref `msg_ref`, of campaign `c1`: the message the
/// gateways' tests send.
#[cfg(test)]
pub(crate) fn test_message(msg_ref: &str, to: &str, from: &str) -> OutMessage {
    OutMessage {
        msg_ref: msg_ref.into(),
        to: to.into(),
        from: from.into(),
        kind: "SMS".into(),
        subject: None,
        text: "(광고) 안녕하세요".into(),
        ad: true,
        campaign: "c1".into(),
    }
}

/// How one attempt to hand a message to the gateway ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The gateway has the message (`duplicate`: it had it already from an earlier attempt).
    Accepted { gateway_id: String, duplicate: bool },
    /// 400/422 about the recipient or the content: permanent for this message, never retry.
    Rejected { code: String, message: String },
    /// An answer that applies to every message, so the campaign must stop rather than walk
    /// the list: 401/403 (credentials), a 3xx redirect, 400 `invalid_sender` /
    /// `invalid_request`, 413. `message` names the gateway, the cause and what to fix.
    Halt { code: String, message: String },
    /// 429, or 503 with a `Retry-After`: retry the same ref no sooner than `retry_after` (when
    /// the gateway said; cut to the gateway's `max_retry_after_secs`).
    Throttled { retry_after: Option<Duration> },
    /// 5xx, or a connection that failed before the request was written: retry with backoff.
    Transient { code: String },
    /// The gateway may have accepted it: a timeout or a broken connection after the request
    /// may have been written, a 2xx that cannot be read or lacks the gateway id, a batch
    /// result that omits the message or gives it an unknown status. Never a failure.
    InDoubt { code: String },
}

impl Outcome {
    /// Short machine-readable code: `"accepted"`, `"duplicate"`, the rejection code,
    /// the halt code (`"unauthorized"`, `"redirect"`, ...), `"throttled"`, or the transient /
    /// in-doubt code.
    pub fn code(&self) -> &str {
        match self {
            Outcome::Accepted {
                duplicate: false, ..
            } => "accepted",
            Outcome::Accepted {
                duplicate: true, ..
            } => "duplicate",
            Outcome::Rejected { code, .. } | Outcome::Halt { code, .. } => code,
            Outcome::Throttled { .. } => "throttled",
            Outcome::Transient { code } | Outcome::InDoubt { code } => code,
        }
    }

    /// The message is settled for good: accepted (or duplicate) or permanently rejected.
    /// `Halt` is not final: the message was not looked at and must be sent later.
    pub fn is_final(&self) -> bool {
        matches!(self, Outcome::Accepted { .. } | Outcome::Rejected { .. })
    }

    /// Worth retrying with the same ref: `Throttled`, `Transient` or `InDoubt`.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Outcome::Throttled { .. } | Outcome::Transient { .. } | Outcome::InDoubt { .. }
        )
    }
}

/// The result of one attempt, with what is needed for the audit log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcome: Outcome,
    /// HTTP status of the answer, `None` when no answer arrived.
    pub http_status: Option<u16>,
    /// Wall time from sending the request to classifying the answer.
    pub latency: Duration,
    /// When the attempt started.
    pub at: DateTime<Utc>,
}

/// What `GET /v1/messages/{ref}` said.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The gateway has this ref; `status` is `accepted`, `delivered` or `failed`.
    Found { gateway_id: String, status: String },
    /// 404: the gateway never received this ref.
    NotFound,
    /// No usable answer (network error, 5xx, 401, bad body): the question stays open.
    Unavailable { reason: String },
}

/// One `http-json` gateway. Cheap to clone: all clones share one connection pool.
#[derive(Clone)]
pub struct HttpJsonGateway {
    inner: Arc<Inner>,
    /// Longest `Retry-After` honoured; longer ones are cut to this (and logged).
    max_retry_after: Duration,
}

/// Longest error code kept from a gateway's answer.
const MAX_CODE_CHARS: usize = 64;

/// `max_retry_after` until [`HttpJsonGateway::with_max_retry_after`] sets it.
const DEFAULT_MAX_RETRY_AFTER: Duration =
    Duration::from_secs(crate::config::DEFAULT_MAX_RETRY_AFTER_SECS);

struct Inner {
    name: String,
    base_url: String,
    send_url: Url,
    batch_url: Url,
    lookup_base: Url,
    /// `Bearer <key>`, marked sensitive.
    auth: Option<HeaderValue>,
    /// The password of a `user:password@` base URL, removed from everything shown.
    url_password: Option<String>,
    timeout: Duration,
    client: reqwest::Client,
    /// Connect errors are warned about at most every few seconds.
    warned: Throttle,
}

impl fmt::Debug for HttpJsonGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpJsonGateway")
            .field("name", &self.inner.name)
            .field("base_url", &self.inner.base_url)
            .field("api_key", &self.inner.auth.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    messages: &'a [OutMessage],
}

#[derive(Deserialize)]
struct AcceptedBody {
    gateway_id: String,
    #[serde(default)]
    duplicate: bool,
}

#[derive(Deserialize)]
struct BatchResponse {
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    #[serde(rename = "ref")]
    msg_ref: String,
    status: String,
    #[serde(default)]
    gateway_id: Option<String>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct LookupBody {
    gateway_id: String,
    status: String,
}

/// A whole request that did not produce a readable 2xx answer: the classified outcome
/// (applies to every message of the request) and the HTTP status, if one arrived.
type Failed = (Outcome, Option<u16>);

impl HttpJsonGateway {
    /// Builds the client for the gateway at `base_url` (`http://host:port`, optionally with a
    /// path prefix). `timeout` bounds every request, connect included; `max_idle_per_host`
    /// keep-alive connections are kept in the pool.
    pub fn new(
        name: &str,
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_idle_per_host: usize,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(base_url)
            .with_context(|| format!("gateway {name}: invalid base URL {base_url:?}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!(
                "gateway {name}: base URL {base_url:?} must use http or https, not {}",
                base.scheme()
            );
        }
        let send_url = join(&base, &["v1", "messages"])
            .with_context(|| format!("gateway {name}: base URL {base_url:?} cannot take a path"))?;
        let batch_url = join(&base, &["v1", "messages", "batch"])
            .with_context(|| format!("gateway {name}: base URL {base_url:?} cannot take a path"))?;
        let auth = match api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    anyhow::anyhow!(
                        "gateway {name}: the API key contains characters not allowed in an HTTP header"
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let mut default_headers = HeaderMap::new();
        default_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // A redirect would turn the POST into a GET, or post the message (phone number
        // included) to a host that is not in munja.toml: a 3xx is a configuration error.
        let client = http_client(name, timeout, max_idle_per_host, default_headers)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                base_url: shown_url(&base),
                url_password: base.password().filter(|p| !p.is_empty()).map(str::to_owned),
                lookup_base: send_url.clone(),
                send_url,
                batch_url,
                auth,
                timeout,
                client,
                warned: Throttle::default(),
            }),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        })
    }

    /// Cuts every `Retry-After` to at most `max` (the gateway's `max_retry_after_secs`).
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The pause a `Retry-After` header asks for, cut to the configured maximum; a cut is
    /// logged at default verbosity, since the gateway asked for more than munja will wait.
    pub fn retry_after(&self, value: &str) -> Option<Duration> {
        let asked = parse_retry_after(value, Utc::now())?;
        if asked > self.max_retry_after {
            tracing::warn!(
                gateway = %self.inner.name,
                "the gateway asked to wait {}s (Retry-After: {}); waiting {}s, its max_retry_after_secs",
                asked.as_secs(),
                value.trim().chars().take(40).collect::<String>(),
                self.max_retry_after.as_secs()
            );
        }
        Some(asked.min(self.max_retry_after))
    }

    /// The gateway's configured name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// `POST {url}/v1/messages` once, with `Idempotency-Key: {ref}`.
    pub async fn send(&self, msg: &OutMessage) -> Attempt {
        let at = Utc::now();
        let started = Instant::now();
        let (outcome, http_status) = self.send_once(msg).await;
        Attempt {
            outcome,
            http_status,
            latency: started.elapsed(),
            at,
        }
    }

    async fn send_once(&self, msg: &OutMessage) -> (Outcome, Option<u16>) {
        let Ok(key) = HeaderValue::from_str(&msg.msg_ref) else {
            return (
                Outcome::Rejected {
                    code: "invalid_request".into(),
                    message: "ref is not a valid HTTP header value".into(),
                },
                None,
            );
        };
        let body = match serde_json::to_vec(msg) {
            Ok(body) => body,
            Err(e) => return (self.unserialisable(&e), None),
        };
        let request = self
            .inner
            .client
            .post(self.inner.send_url.clone())
            .header(IDEMPOTENCY_KEY, key)
            .body(body);
        match self.exchange::<AcceptedBody>(request, "send").await {
            Err(failed) => failed,
            Ok((b, status)) => (
                Outcome::Accepted {
                    gateway_id: b.gateway_id,
                    duplicate: b.duplicate,
                },
                Some(status),
            ),
        }
    }

    /// `POST {url}/v1/messages/batch` once. Returns one attempt per input message, in input
    /// order. A whole-request answer (401/403, 400/422, 429, 5xx, timeout, network error,
    /// unreadable body) applies to every message. An empty slice sends nothing.
    pub async fn send_batch(&self, msgs: &[OutMessage]) -> Vec<Attempt> {
        if msgs.is_empty() {
            return Vec::new();
        }
        let at = Utc::now();
        let started = Instant::now();
        let (outcomes, http_status) = self.send_batch_once(msgs).await;
        attempts(outcomes, http_status, at, started)
    }

    async fn send_batch_once(&self, msgs: &[OutMessage]) -> (Vec<Outcome>, Option<u16>) {
        let all = |outcome: Outcome| vec![outcome; msgs.len()];
        let body = match serde_json::to_vec(&BatchRequest { messages: msgs }) {
            Ok(body) => body,
            Err(e) => return (all(self.unserialisable(&e)), None),
        };
        let request = self
            .inner
            .client
            .post(self.inner.batch_url.clone())
            .body(body);
        match self.exchange::<BatchResponse>(request, "batch").await {
            Err((outcome, status)) => (all(outcome), status),
            Ok((parsed, status)) => (self.match_results(msgs, parsed.results), Some(status)),
        }
    }

    /// Puts per-item results in input order: positionally when the refs line up (the normal
    /// case), by ref otherwise. A message without a result is `InDoubt("missing_result")`: the
    /// gateway may have taken it.
    fn match_results(&self, msgs: &[OutMessage], results: Vec<BatchItem>) -> Vec<Outcome> {
        let aligned = results.len() == msgs.len()
            && results
                .iter()
                .zip(msgs)
                .all(|(r, m)| r.msg_ref == m.msg_ref);
        if aligned {
            return results.into_iter().map(|r| self.item_outcome(&r)).collect();
        }
        tracing::warn!(
            gateway = %self.inner.name,
            sent = msgs.len(),
            results = results.len(),
            "batch results do not line up with the request; matching them by ref"
        );
        let by_ref: HashMap<&str, &BatchItem> =
            results.iter().map(|r| (r.msg_ref.as_str(), r)).collect();
        msgs.iter()
            .map(|m| match by_ref.get(m.msg_ref.as_str()) {
                Some(r) => self.item_outcome(r),
                None => Outcome::InDoubt {
                    code: "missing_result".into(),
                },
            })
            .collect()
    }

    fn item_outcome(&self, item: &BatchItem) -> Outcome {
        match item.status.as_str() {
            "accepted" => match &item.gateway_id {
                Some(id) => Outcome::Accepted {
                    gateway_id: id.clone(),
                    duplicate: item.duplicate,
                },
                None => Outcome::InDoubt {
                    code: "bad_response".into(),
                },
            },
            "rejected" => {
                let code = item
                    .error
                    .clone()
                    .unwrap_or_else(|| "invalid_request".into());
                let message = item.message.clone().unwrap_or_else(|| code.clone());
                self.rejection(code, &message)
            }
            _ => Outcome::InDoubt {
                code: "bad_response".into(),
            },
        }
    }

    /// `GET {url}/v1/messages/{ref}` once, to settle an in-doubt message.
    pub async fn lookup(&self, msg_ref: &str) -> Lookup {
        let mut url = self.inner.lookup_base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(msg_ref);
        }
        let mut request = self.inner.client.get(url);
        if let Some(auth) = &self.inner.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return self.lookup_failed(&e),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return self.lookup_failed(&e),
        };
        if status == StatusCode::NOT_FOUND {
            return Lookup::NotFound;
        }
        if !status.is_success() {
            return Lookup::Unavailable {
                reason: format!("gateway {} answered HTTP {status}", self.inner.name),
            };
        }
        match serde_json::from_slice::<LookupBody>(&body) {
            Ok(b) => Lookup::Found {
                gateway_id: b.gateway_id,
                status: b.status,
            },
            Err(e) => Lookup::Unavailable {
                reason: format!("gateway {}: unreadable lookup answer: {e}", self.inner.name),
            },
        }
    }

    fn lookup_failed(&self, e: &reqwest::Error) -> Lookup {
        Lookup::Unavailable {
            reason: format!(
                "gateway {}: {}: {}",
                self.inner.name,
                classify_error(e).code(),
                error_chain(e)
            ),
        }
    }
}

#[cfg(test)]
mod tests;
