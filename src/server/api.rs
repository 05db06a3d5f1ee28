//! The admin API under `/v1` (JSON, bearer token checked by the caller's route layer).
//!
//! Every refusal is a 4xx with `{"error": …, "field": …}` naming what to fix, and a refused
//! request changes nothing stored: each handler checks all its input before its one write.
//! Phone numbers are masked in every answer unless `?full=true` asks for them.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::launcher::Launch;
use crate::domain::model::{Campaign, MessageState};
use crate::domain::phone;
use crate::run::audit::masked;
use crate::run::campaign::{self, CreateRequest};
use crate::run::lease::{self, StopRequest};
use crate::run::schedule;
use crate::store::{AuditFilter, StoreError};

/// Audit rows per page by default, and at most.
const PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns", get(list).post(create))
        .route("/v1/campaigns/{id}", get(show))
        .route("/v1/campaigns/{id}/run", post(run))
        .route("/v1/campaigns/{id}/stop", post(stop))
        .route("/v1/campaigns/{id}/cancel", post(cancel))
        .route("/v1/campaigns/{id}/schedule", post(set_schedule))
        .route("/v1/campaigns/{id}/messages", get(messages))
        .route("/v1/optouts", post(optout_add))
        .route("/v1/optouts/{phone}", get(optout_get).delete(optout_remove))
        .route("/v1/schedules", get(schedules))
        .route("/v1/segments/{name}", delete(segment_delete))
        .route("/v1/events", get(super::live::events))
}

/// A refused request: its status, the field (or part of the request) to fix, and why.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: String,
    message: String,
}

impl ApiError {
    /// Why the request was refused.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "field": self.field});
        (self.status, Json(body)).into_response()
    }
}

/// A JSON error naming the field (or part of the request) to fix.
pub fn error(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        field: field.to_string(),
        message: message.into(),
    }
}

type ApiResult = Result<Response, ApiError>;

/// A store or library error as a response: 404 for unknown things, 409 for conflicts.
fn failed(field: &str, e: anyhow::Error) -> ApiError {
    let status = match e.downcast_ref::<StoreError>() {
        Some(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
        Some(StoreError::Conflict(_)) => StatusCode::CONFLICT,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        None => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, field, format!("{e:#}"))
}

/// Parses a JSON body, naming the field that is wrong.
fn body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let text = e.inner().to_string();
        // `missing field `name``, `unknown field `colour``: the field is in the message.
        let named = text
            .split_once("field `")
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(f, _)| f.to_string());
        let field = match (path.as_str(), &named) {
            (".", Some(f)) => f.as_str(),
            (".", None) => "body",
            (p, _) => p,
        };
        error(
            StatusCode::BAD_REQUEST,
            field,
            format!("invalid JSON body: {}", e.inner()),
        )
    })
}

async fn campaign_or_404(s: &AppState, id: i64) -> Result<Campaign, ApiError> {
    s.store
        .campaign(id)
        .await
        .map_err(|e| failed("id", e.into()))
}

/// One campaign with its counts, for lists.
async fn summary(s: &AppState, c: &Campaign) -> Result<Value, ApiError> {
    let k = s
        .store
        .counts(c.id)
        .await
        .map_err(|e| failed("id", e.into()))?;
    Ok(json!({
        "id": c.id, "name": c.name, "status": c.status, "exit_message": c.exit_message,
        "segment": c.segment_name, "template": c.template_name, "gateway": c.gateway, "ad": c.ad,
        "created_at": c.created_at, "scheduled_at": c.scheduled_at, "schedule_id": c.schedule_id,
        "running": c.lease.is_some(), "counts": k,
        "deliveries": (k.delivered + k.undelivered > 0).then(|| json!({
            "delivered": k.delivered, "undelivered": k.undelivered,
            "no_report_yet": k.sent - k.delivered - k.undelivered,
        })),
    }))
}

async fn list(State(s): State<AppState>) -> ApiResult {
    Ok(Json(campaigns_json(&s).await?).into_response())
}

/// `{"campaigns": [...]}`, newest first: what `GET /v1/campaigns` answers and the dashboard's
/// stream sends.
pub(super) async fn campaigns_json(s: &AppState) -> Result<Value, ApiError> {
    let all = s
        .store
        .campaigns()
        .await
        .map_err(|e| failed("-", e.into()))?;
    let mut out = Vec::with_capacity(all.len());
    for c in all.iter().rev() {
        out.push(summary(s, c).await?);
    }
    Ok(json!({ "campaigns": out }))
}

async fn show(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult {
    Ok(Json(campaign_json(&s, id).await?).into_response())
}

/// One campaign with its executions, failure reasons, schedule and lease: what
/// `GET /v1/campaigns/{id}` answers and the dashboard's stream sends for the open campaign.
pub(super) async fn campaign_json(s: &AppState, id: i64) -> Result<Value, ApiError> {
    let c = campaign_or_404(s, id).await?;
    let mut v = summary(s, &c).await?;
    let execs = s
        .store
        .executions(id)
        .await
        .map_err(|e| failed("id", e.into()))?;
    let reasons = s
        .store
        .failure_reasons(id, 10)
        .await
        .map_err(|e| failed("id", e.into()))?;
    let sched = match c.schedule_id {
        Some(sid) => s
            .store
            .schedules()
            .await
            .map_err(|e| failed("id", e.into()))?
            .into_iter()
            .find(|x| x.id == sid)
            .map(|x| json!({"name": x.name, "cron": x.cron})),
        None => None,
    };
    v["executions"] = json!(execs);
    v["failure_reasons"] = reasons
        .into_iter()
        .map(|(reason, count)| json!({"reason": reason, "count": count}))
        .collect();
    v["schedule"] = json!(sched);
    v["lease"] = json!(c.lease);
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    segment: String,
    template: String,
    gateway: Option<String>,
    #[serde(default)]
    no_ad: bool,
    subject: Option<String>,
    /// `YYYY-MM-DD HH:MM` in policy.timezone, or RFC 3339.
    at: Option<String>,
}

async fn create(State(s): State<AppState>, raw: axum::body::Bytes) -> ApiResult {
    let b: CreateBody = body(&raw)?;
    let bad =
        |field: &str, e: anyhow::Error| error(StatusCode::BAD_REQUEST, field, format!("{e:#}"));
    if b.name.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "name",
            "name must not be empty",
        ));
    }
    campaign::segment(&*s.store, &b.segment)
        .await
        .map_err(|e| bad("segment", e))?;
    s.cfg
        .gateway(b.gateway.as_deref())
        .map_err(|e| bad("gateway", e.into()))?;
    campaign::load_template(&s.cfg, &b.template, !b.no_ad, b.subject.as_deref())
        .map_err(|e| bad("template", e))?;
    let at = match &b.at {
        Some(t) => Some(schedule::parse_at(t, s.cfg.policy.timezone).map_err(|e| bad("at", e))?),
        None => None,
    };
    let req = CreateRequest {
        name: b.name,
        segment: b.segment,
        template: b.template,
        gateways: b.gateway.into_iter().collect(),
        split: false,
        no_ad: b.no_ad,
        subject: b.subject,
    };
    let made = match at {
        Some(at) => schedule::create_at(&*s.store, &s.cfg, &req, at)
            .await
            .map_err(|e| bad("at", e))?,
        None => campaign::create(&*s.store, &s.cfg, &req)
            .await
            .map_err(|e| failed("segment", e))?,
    };
    let (id, plan) = made;
    let c = campaign_or_404(&s, id).await?;
    let v = json!({"id": id, "status": c.status, "scheduled_at": c.scheduled_at, "plan": plan});
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn run(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult {
    let c = campaign_or_404(&s, id).await?;
    if c.parsed_status().is_some_and(|st| st.is_finished()) {
        return Err(error(
            StatusCode::CONFLICT,
            "id",
            format!("campaign {id} is {}: nothing left to run", c.status),
        ));
    }
    match s.launcher.launch(id) {
        Launch::Started => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "launched": true})),
        )
            .into_response()),
        Launch::AlreadyRunning => Err(error(
            StatusCode::CONFLICT,
            "id",
            format!("campaign {id} is already running on this server"),
        )),
        Launch::Busy => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "id",
            format!(
                "this server already runs {} campaigns ([server] max_concurrent_runs); try again \
                 when one ends",
                s.cfg.server.max_concurrent_runs
            ),
        )),
        Launch::ShuttingDown => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "id",
            "the server is shutting down",
        )),
    }
}

async fn stop(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult {
    campaign_or_404(&s, id).await?;
    let timeout = s.cfg.policy.lease_timeout_secs;
    match lease::request_stop(&*s.store, id, timeout).await {
        Ok(StopRequest::Requested) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "stop_requested": true})),
        )
            .into_response()),
        Ok(StopRequest::NotRunning(status)) => Err(error(
            StatusCode::CONFLICT,
            "id",
            format!("campaign {id} is not running (status {status})"),
        )),
        Ok(StopRequest::HolderGone) => Err(error(
            StatusCode::CONFLICT,
            "id",
            format!("campaign {id} is not running: its process is gone (a server resumes it)"),
        )),
        Err(e) => Err(failed("id", e)),
    }
}

async fn cancel(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult {
    campaign_or_404(&s, id).await?;
    let r = lease::cancel(&*s.store, id, s.cfg.policy.lease_timeout_secs)
        .await
        .map_err(|e| failed("id", e))?;
    Ok(Json(json!({"id": id, "cancelled": r.cancelled, "in_doubt": r.in_doubt})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    /// A time, or null to unschedule.
    at: Option<String>,
    #[serde(default)]
    now: bool,
}

async fn set_schedule(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    raw: axum::body::Bytes,
) -> ApiResult {
    let b: ScheduleBody = body(&raw)?;
    campaign_or_404(&s, id).await?;
    let at = match (&b.at, b.now) {
        (Some(_), true) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "now",
                "give either \"at\" or \"now\": true, not both",
            ));
        }
        (_, true) => {
            schedule::set_now(&*s.store, id)
                .await
                .map_err(|e| failed("id", e))?;
            let c = campaign_or_404(&s, id).await?;
            let v = json!({"id": id, "status": c.status, "scheduled_at": c.scheduled_at});
            return Ok(Json(v).into_response());
        }
        (Some(t), false) => Some(
            schedule::parse_at(t, s.cfg.policy.timezone)
                .map_err(|e| error(StatusCode::BAD_REQUEST, "at", format!("{e:#}")))?,
        ),
        (None, false) => None,
    };
    schedule::set(&*s.store, &s.cfg, id, at)
        .await
        .map_err(|e| {
            let field = if e.downcast_ref::<StoreError>().is_some() {
                "id"
            } else {
                "at"
            };
            match e.downcast_ref::<StoreError>() {
                Some(_) => failed(field, e),
                None => error(StatusCode::BAD_REQUEST, field, format!("{e:#}")),
            }
        })?;
    let c = campaign_or_404(&s, id).await?;
    Ok(Json(json!({"id": id, "status": c.status, "scheduled_at": c.scheduled_at})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    status: Option<String>,
    phone: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
    #[serde(default)]
    full: bool,
}

async fn messages(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    q: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| error(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
    let bad = |field: &str, m: String| error(StatusCode::BAD_REQUEST, field, m);
    let state = match q.status.as_deref().filter(|x| !x.is_empty()) {
        Some(x) => Some(MessageState::parse(x).ok_or_else(|| {
            bad(
                "status",
                format!("status {x:?}: expected pending, sending, in_doubt, sent, failed, suppressed or cancelled"),
            )
        })?),
        None => None,
    };
    let phone = match q.phone.as_deref().filter(|x| !x.is_empty()) {
        Some(p) => Some(
            phone::normalize_mobile(p)
                .map_err(|e| bad("phone", format!("{}: {e}", phone::mask(p))))?
                .as_str()
                .to_string(),
        ),
        None => None,
    };
    let (after_id, after_seq) = match q.cursor.as_deref().filter(|x| !x.is_empty()) {
        Some(c) => c
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| {
                bad(
                    "cursor",
                    format!("cursor {c:?}: pass the next_cursor of the previous page"),
                )
            })?,
        None => (0, 0),
    };
    let limit = q.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad(
            "limit",
            format!("limit {limit}: expected 1 to {MAX_PAGE}"),
        ));
    }
    campaign_or_404(&s, id).await?;
    let filter = AuditFilter {
        campaign: id,
        phone,
        state,
        after_id,
        after_seq,
        limit,
        ..AuditFilter::default()
    };
    let rows = s
        .store
        .audit(&filter)
        .await
        .map_err(|e| failed("id", e.into()))?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| format!("{}.{}", r.id, r.seq)))
        .flatten();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            if !q.full {
                r.phone = masked(&r.phone);
            }
            json!(r)
        })
        .collect();
    Ok(Json(json!({"messages": rows, "next_cursor": next})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptoutBody {
    phone: String,
}

fn parse_phone(p: &str) -> Result<crate::domain::phone::Phone, ApiError> {
    phone::normalize_mobile(p).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "phone",
            format!("{}: {e}", phone::mask(p)),
        )
    })
}

async fn optout_add(State(s): State<AppState>, raw: axum::body::Bytes) -> ApiResult {
    let b: OptoutBody = body(&raw)?;
    let p = parse_phone(&b.phone)?;
    let added = s
        .store
        .optout_add(&p, "api")
        .await
        .map_err(|e| failed("phone", e.into()))?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"phone": p.masked(), "opted_out": true, "added": added})),
    )
        .into_response())
}

async fn optout_get(State(s): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let p = parse_phone(&raw)?;
    let opted = s
        .store
        .optout_contains(&p)
        .await
        .map_err(|e| failed("phone", e.into()))?;
    Ok(Json(json!({"phone": p.masked(), "opted_out": opted})).into_response())
}

async fn optout_remove(State(s): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let p = parse_phone(&raw)?;
    let removed = s
        .store
        .optout_remove(&p)
        .await
        .map_err(|e| failed("phone", e.into()))?;
    if !removed {
        return Err(error(
            StatusCode::NOT_FOUND,
            "phone",
            format!("{} is not on the opt-out list", p.masked()),
        ));
    }
    Ok(Json(json!({"phone": p.masked(), "opted_out": false, "removed": true})).into_response())
}

/// Deletes a CSV or SQL segment: 200 with what went, 404 unknown, 409 naming the unfinished
/// campaigns that use it (nothing deleted).
async fn segment_delete(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let done = crate::run::segments::delete(&*s.store, &name)
        .await
        .map_err(|e| failed("name", e))?;
    Ok(Json(json!({
        "deleted": done.name, "csv_members": done.csv_members, "sql_versions": done.sql_versions,
    }))
    .into_response())
}

async fn schedules(State(s): State<AppState>) -> ApiResult {
    Ok(Json(schedules_json(&s).await?).into_response())
}

/// `{"schedules": [...]}` with each one's next three runs.
pub(super) async fn schedules_json(s: &AppState) -> Result<Value, ApiError> {
    let tz = s.cfg.policy.timezone;
    let list = s
        .store
        .schedules()
        .await
        .map_err(|e| failed("-", e.into()))?;
    let now = chrono::Utc::now();
    let out: Vec<Value> = list
        .iter()
        .map(|x| {
            let next: Vec<String> = schedule::next_runs(x, tz, now, 3)
                .into_iter()
                .map(|t| t.with_timezone(&tz).to_rfc3339())
                .collect();
            json!({
                "name": x.name, "segment": x.segment_name, "template": x.template_name,
                "gateway": x.gateway, "ad": x.ad, "cron": x.cron, "paused": x.paused,
                "last_occurrence_at": x.last_occurrence_at, "next_runs": if x.paused { vec![] } else { next },
            })
        })
        .collect();
    Ok(json!({ "schedules": out }))
}
