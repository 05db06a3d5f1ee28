//! The simulator's HTTP side: the wire types of the `http-json` protocol and the axum
//! handlers for a single send, a batch, a lookup, `GET /stats` and anything else, with the
//! injected faults applied to their answers (stall, garble, reset, a fixed answer).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::state::{Fault, Shared, bump};
use super::store::hash_ref;

#[derive(Deserialize)]
pub(super) struct WireMessage {
    #[serde(rename = "ref")]
    pub(super) msg_ref: String,
    pub(super) to: String,
    pub(super) from: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default, rename = "subject")]
    _subject: Option<String>,
    pub(super) text: String,
    #[serde(rename = "ad")]
    _ad: bool,
    pub(super) campaign: String,
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

pub(super) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
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
pub(super) async fn count_request(
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

/// `POST /v1/messages` (`BATCH` false) and `POST /v1/messages/batch`: the fixed answer when one
/// is set, otherwise the answer with the fault drawn for it applied.
pub(super) async fn send<const BATCH: bool>(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(resp) = fixed(&sh) {
        return resp;
    }
    let (resp, fault) = match sh.check_auth(&headers) {
        Some(resp) => (resp, Fault::None),
        None if BATCH => batch(&sh, &body),
        None => single(&sh, &headers, &body),
    };
    deliver(&sh, resp, fault).await
}

/// Handles an authorized single send up to the answer, and the fault to apply to that answer.
fn single(sh: &Shared, headers: &HeaderMap, body: &[u8]) -> (Response, Fault) {
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

/// Handles an authorized batch up to the answer, and the fault to apply to that answer.
fn batch(sh: &Shared, body: &[u8]) -> (Response, Fault) {
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

pub(super) async fn lookup(
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

pub(super) async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(sh.stats()).into_response()
}

pub(super) async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
