//! The push routes: `POST|GET /v1/dlr/{gateway}`, one per configured gateway, each reading its
//! kind's shape ([`super::parse`]) behind its own secret, never the admin token:
//! - `http-json`: POST of the JSON callback, `Authorization: Bearer {token}` (or `?token=`);
//! - `kannel`: GET (or POST) of the `dlr-url` munja built, `?token=` in it;
//! - `nhn-cloud`: POST of the webhook, `X-Toast-Webhook-Signature` equal to the signature set
//!   in NHN's console.
//!
//! The token comes from the gateway's `dlr_token_env`, the signature from its
//! `webhook_signature_env`; a gateway without one refuses every report (403), so that reports
//! are never taken unauthenticated. Answers are JSON counts of what the reports did; a store
//! error is a 503 so that the gateway retries.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use chrono::Utc;
use serde_json::json;

use super::parse::{self, NhnHook};
use crate::config::{Config, GatewayConfig, read_secret_env};
use crate::domain::model::{DeliveryEffect, DeliveryReport, ReportCounts};
use crate::domain::phone;
use crate::store::Store;

/// The header NHN Cloud puts the webhook signature in.
pub const NHN_SIGNATURE_HEADER: &str = "x-toast-webhook-signature";

#[derive(Clone)]
struct Dlr {
    store: Arc<dyn Store>,
    cfg: Arc<Config>,
}

/// The delivery-report routes with their state applied, ready to `.merge` into a server.
pub fn router(store: Arc<dyn Store>, cfg: Arc<Config>) -> Router {
    Router::new()
        .route("/v1/dlr/{gateway}", any(report))
        .with_state(Dlr { store, cfg })
}

fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn report(
    State(st): State<Dlr>,
    Path(name): Path<String>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::GET && method != Method::POST {
        return fail(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let Some(gw) = st.cfg.gateways.iter().find(|g| g.name == name) else {
        return fail(
            StatusCode::NOT_FOUND,
            format!("no gateway named {name:?} in munja.toml"),
        );
    };
    if let Err(r) = authorize(gw, &query, &headers) {
        return r;
    }
    let now = Utc::now();
    match gw.kind.as_str() {
        "http-json" if method == Method::POST => match parse::http_json(&gw.name, &body, now) {
            Ok(reports) => apply(&*st.store, &reports, 0, false).await,
            Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string()),
        },
        "kannel" => match parse::kannel(&gw.name, &query, now) {
            Ok(r) => apply(&*st.store, &[r], 0, false).await,
            Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string()),
        },
        "nhn-cloud" if method == Method::POST => match parse::nhn(&gw.name, &body, now) {
            Ok(NhnHook::Results {
                reports,
                without_ref,
            }) => apply(&*st.store, &reports, without_ref, true).await,
            Ok(NhnHook::Unsubscribe(numbers)) => unsubscribe(&*st.store, &gw.name, &numbers).await,
            Ok(NhnHook::Other(event)) => {
                tracing::info!(gateway = %gw.name, event, "NHN webhook event ignored");
                axum::Json(json!({ "ignored_event": event })).into_response()
            }
            Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string()),
        },
        kind => fail(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("gateway {name:?} is kind {kind}: its reports are POSTed"),
        ),
    }
}

/// Checks the gateway's own secret: the token (http-json, kannel) or NHN's signature header.
#[allow(clippy::result_large_err)]
fn authorize(
    gw: &GatewayConfig,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let (env, key, given) = if gw.kind == "nhn-cloud" {
        let given = headers
            .get(NHN_SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        (&gw.webhook_signature_env, "webhook_signature_env", given)
    } else {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or(query.get("token").map(String::as_str));
        (&gw.dlr_token_env, "dlr_token_env", given)
    };
    let Some(var) = env else {
        tracing::warn!(gateway = %gw.name, "delivery report refused: the gateway has no {key}");
        return Err(fail(
            StatusCode::FORBIDDEN,
            format!(
                "gateway {:?} takes no delivery reports: set {key} in its [[gateways]] entry",
                gw.name
            ),
        ));
    };
    let expected = read_secret_env(var).map_err(|m| {
        tracing::error!(gateway = %gw.name, "{key} {m}");
        fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "munja serve cannot check reports of {:?}: its {key} is not set",
                gw.name
            ),
        )
    })?;
    match given {
        Some(g) if super::same_secret(g, &expected) => Ok(()),
        _ => {
            tracing::warn!(gateway = %gw.name, "delivery report refused: wrong or missing secret");
            Err(fail(
                StatusCode::UNAUTHORIZED,
                "wrong or missing secret for this gateway's delivery reports",
            ))
        }
    }
}

/// Records reports; answers what they did. `without_ref`: reports that named no ref at all.
/// `nhn`: NHN Cloud's, whose result codes -6001 and 3006 also opt the number out.
async fn apply(
    store: &dyn Store,
    reports: &[DeliveryReport],
    without_ref: usize,
    nhn: bool,
) -> Response {
    let mut c = ReportCounts::default();
    for r in reports {
        let recorded = match super::record(store, r).await {
            Ok(e) if nhn => super::optouts::from_nhn_report(store, None, r, e)
                .await
                .map(|_| e),
            other => other,
        };
        match recorded {
            Ok(DeliveryEffect::Unknown) => {
                c.unknown += 1;
                if let Ok(all) = store.report_counts(Some(&r.gateway)).await {
                    tracing::warn!(gateway = %r.gateway, unknown_so_far = all.unknown, "reports for unknown refs");
                }
            }
            Ok(e) => *slot(&mut c, e) += 1,
            Err(e) => {
                tracing::error!(gateway = %r.gateway, msg_ref = %r.msg_ref, "recording a delivery report: {e}");
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the report could not be stored; send it again",
                );
            }
        }
    }
    if without_ref > 0 {
        tracing::warn!(
            without_ref,
            "delivery reports without a message ref ignored"
        );
    }
    let mut v = serde_json::to_value(c).unwrap_or_default();
    v["without_ref"] = json!(without_ref);
    axum::Json(v).into_response()
}

/// The counter of one effect.
pub fn slot(c: &mut ReportCounts, e: DeliveryEffect) -> &mut i64 {
    match e {
        DeliveryEffect::Applied => &mut c.applied,
        DeliveryEffect::Duplicate => &mut c.duplicate,
        DeliveryEffect::Ignored => &mut c.ignored,
        DeliveryEffect::Intermediate => &mut c.intermediate,
        DeliveryEffect::Unknown => &mut c.unknown,
    }
}

/// NHN's `UNSUBSCRIBE`: each number joins munja's opt-out list at once.
async fn unsubscribe(store: &dyn Store, gateway: &str, numbers: &[String]) -> Response {
    let (mut added, mut present, mut rejected) = (0u64, 0u64, 0u64);
    let source = format!("nhn-webhook:{gateway}");
    for n in numbers {
        let Ok(p) = phone::normalize_mobile(n) else {
            tracing::warn!(gateway, phone = %phone::mask(n), "UNSUBSCRIBE for a number that is not a Korean mobile: ignored");
            rejected += 1;
            continue;
        };
        match store.optout_add(&p, &source).await {
            Ok(true) => {
                tracing::info!(gateway, phone = %p.masked(), "opted out by NHN 080 webhook");
                added += 1;
            }
            Ok(false) => present += 1,
            Err(e) => {
                tracing::error!(gateway, phone = %p.masked(), "adding an opt-out: {e}");
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the opt-out could not be stored; send it again",
                );
            }
        }
    }
    axum::Json(json!({ "added": added, "already_present": present, "rejected": rejected }))
        .into_response()
}
