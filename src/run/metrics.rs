//! `GET /metrics`: the Prometheus (OpenMetrics text) exposition of munja, and the hooks
//! `dispatch` calls to count what it does.
//!
//! The counters live in one process-wide registry (a run reports into it whether a server
//! or the CLI started it; only `munja serve` exposes it). Gauges that describe the database
//! (`munja_campaign_pending`, `munja_runs`) are read from the store at each scrape. Labels carry
//! campaign ids, gateway names, outcomes and statuses: never a phone number or any other PII.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::model::{CampaignStatus, MessageState, MessageUpdate};
use crate::store::Store;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Metrics {
    registry: Registry,
    messages: Family<Labels, Counter>,
    request_seconds: Histograms,
    rate_wait_seconds: Histograms,
    inflight: Family<Labels, Gauge>,
    pending: Family<Labels, Gauge>,
    runs: Family<Labels, Gauge>,
}

/// Seconds from 1 ms to about 16 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let messages = Family::<Labels, Counter>::default();
    let request_seconds: Histograms = Family::new_with_constructor(seconds_histogram);
    let rate_wait_seconds: Histograms = Family::new_with_constructor(seconds_histogram);
    let inflight = Family::<Labels, Gauge>::default();
    let pending = Family::<Labels, Gauge>::default();
    let runs = Family::<Labels, Gauge>::default();
    registry.register(
        "munja_messages",
        "Messages that reached an outcome (sent, failed, suppressed, in_doubt), by campaign and gateway",
        messages.clone(),
    );
    registry.register(
        "munja_gateway_request_seconds",
        "Duration of gateway requests (sends, batches and lookups), per gateway",
        request_seconds.clone(),
    );
    registry.register(
        "munja_rate_limit_wait_seconds",
        "Time spent waiting for the gateway's rate budget before a request, per gateway",
        rate_wait_seconds.clone(),
    );
    registry.register(
        "munja_inflight_requests",
        "Gateway requests in flight now, per gateway",
        inflight.clone(),
    );
    registry.register(
        "munja_campaign_pending",
        "Messages still to send (pending, sending or in doubt) of each unfinished campaign",
        pending.clone(),
    );
    registry.register(
        "munja_runs",
        "Campaigns by status (STARTED is running)",
        runs.clone(),
    );
    Metrics {
        registry,
        messages,
        request_seconds,
        rate_wait_seconds,
        inflight,
        pending,
        runs,
    }
});

fn gateway_label(gateway: &str) -> Labels {
    vec![("gateway".into(), gateway.into())]
}

/// Counts the outcomes of one committed chunk (a message back in the queue counts nothing).
pub fn record_outcomes(campaign: i64, gateway: &str, updates: &[MessageUpdate]) {
    for u in updates {
        let outcome = match u.state {
            MessageState::Sent
            | MessageState::Failed
            | MessageState::Suppressed
            | MessageState::InDoubt => u.state.as_str(),
            _ => continue,
        };
        METRICS
            .messages
            .get_or_create(&vec![
                ("campaign".into(), campaign.to_string()),
                (
                    "gateway".into(),
                    u.gateway.as_deref().unwrap_or(gateway).into(),
                ),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }
}

/// Counts a request in flight until the returned guard is dropped, then records its duration.
pub fn request_started(gateway: &str) -> RequestGuard {
    let labels = gateway_label(gateway);
    METRICS.inflight.get_or_create(&labels).inc();
    RequestGuard {
        labels,
        started: std::time::Instant::now(),
    }
}

/// See [`request_started`].
pub struct RequestGuard {
    labels: Labels,
    started: std::time::Instant,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        METRICS.inflight.get_or_create(&self.labels).dec();
        METRICS
            .request_seconds
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Records a wait for the rate budget.
pub fn record_rate_wait(gateway: &str, waited: Duration) {
    METRICS
        .rate_wait_seconds
        .get_or_create(&gateway_label(gateway))
        .observe(waited.as_secs_f64());
}

/// The whole exposition, with the database gauges read now.
pub async fn render(store: &dyn Store) -> anyhow::Result<String> {
    let campaigns = store.campaigns().await?;
    METRICS.pending.clear();
    METRICS.runs.clear();
    for s in CampaignStatus::ALL {
        let n = campaigns.iter().filter(|c| c.status == s.as_str()).count();
        METRICS
            .runs
            .get_or_create(&vec![("status".into(), s.as_str().into())])
            .set(n as i64);
    }
    for c in campaigns
        .iter()
        .filter(|c| c.parsed_status().is_none_or(|s| !s.is_finished()))
    {
        let k = store.counts(c.id).await?;
        // Before its snapshot a campaign's messages are its segment's members, not yet counted.
        let pending = if c.snapshot_at.is_some() {
            k.pending + k.sending + k.in_doubt
        } else {
            c.total.max(k.total)
        };
        METRICS
            .pending
            .get_or_create(&vec![("campaign".into(), c.id.to_string())])
            .set(pending);
    }
    let mut out = String::new();
    encode(&mut out, &METRICS.registry)?;
    Ok(out)
}
