//! Gateways: the one seam between the dispatcher and the SMS providers.
//!
//! [`Gateway`] is every kind munja speaks; the dispatcher sends and looks up only through it and
//! reads what a kind can do from [`Capabilities`]:
//! - how it batches: `http-json` takes many different texts per request; `kannel` and
//!   `nhn-cloud` take one text for many recipients, so only identical rendered texts share a
//!   request ([`Batching`]);
//! - whether the provider dedupes by munja's key (only `http-json`, by `Idempotency-Key`), which
//!   decides whether a message in doubt may be retried at once;
//! - how a message in doubt is proved sent or not sent ([`Proof`]): a lookup by ref
//!   (`http-json`), a search by `recipientGroupingKey` (`nhn-cloud`), or only a delivery report
//!   (`kannel`, which can be neither asked nor deduped).
//!
//! Each kind lives in its own module: [`client`] (`http-json`, the protocol in
//! `docs/gateway-http-json.md`), [`kannel`], [`nhn`], sharing [`http`]; the `http-json` simulator behind
//! `munja gateway-sim` (munja's `tools::sim`). Adding a kind means one module, one arm here, and its tests.
pub mod client;
pub mod http;
pub mod kannel;
pub mod nhn;
pub mod nhn_results;

use std::time::Duration;

pub use client::{Attempt, HttpJsonGateway, Lookup, OutMessage, Outcome};
pub use kannel::KannelGateway;
pub use nhn::NhnGateway;

use crate::config::{GatewayConfig, GatewayKind};

/// How a kind puts messages into one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Up to `max_batch` messages, each with its own text.
    ManyTexts,
    /// One text (and subject and type) for up to `max_batch` recipients.
    SameText,
}

/// How a message the gateway may have is proved sent or not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Ask the gateway by munja's ref (`GET /v1/messages/{ref}`).
    LookupByRef,
    /// Search the provider's send log by `recipientGroupingKey` = ref.
    LookupByGroupingKey,
    /// Nothing can be asked: only a delivery report for the ref proves it; without one the
    /// message stays `in_doubt` until an operator says `--resend-in-doubt`.
    DeliveryReport,
}

/// What a gateway kind can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub batching: Batching,
    /// Most messages (or recipients) in one request.
    pub max_batch: usize,
    /// The provider drops a second request with the same key: a retry after a timeout cannot
    /// make a duplicate.
    pub dedupes: bool,
    pub proof: Proof,
}

/// One configured gateway, of any kind. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Gateway {
    HttpJson(HttpJsonGateway),
    Kannel(KannelGateway),
    Nhn(NhnGateway),
}

impl Gateway {
    /// The client for gateway `g` (its secrets already read by `Config::gateway`).
    pub fn from_config(g: &GatewayConfig) -> anyhow::Result<Gateway> {
        let timeout = Duration::from_millis(g.timeout_ms);
        let kind = GatewayKind::parse(&g.kind)
            .ok_or_else(|| anyhow::anyhow!("gateway {}: unknown kind {:?}", g.name, g.kind))?;
        Ok(match kind {
            GatewayKind::HttpJson => Gateway::HttpJson(
                HttpJsonGateway::new(&g.name, &g.url, g.api_key.clone(), timeout, g.concurrency)?
                    .with_max_retry_after(Duration::from_secs(g.max_retry_after_secs)),
            ),
            GatewayKind::Kannel => Gateway::Kannel(KannelGateway::new(g)?),
            GatewayKind::NhnCloud => Gateway::Nhn(NhnGateway::new(g)?),
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Gateway::HttpJson(g) => g.name(),
            Gateway::Kannel(g) => g.name(),
            Gateway::Nhn(g) => g.name(),
        }
    }

    /// What this gateway can do; `batch_size` is the configured request size.
    pub fn capabilities(&self, batch_size: usize) -> Capabilities {
        match self {
            Gateway::HttpJson(_) => Capabilities {
                batching: Batching::ManyTexts,
                max_batch: batch_size,
                dedupes: true,
                proof: Proof::LookupByRef,
            },
            Gateway::Kannel(k) => Capabilities {
                batching: Batching::SameText,
                // A delivery report names one ref: with dlr_url every message goes alone.
                max_batch: if k.has_dlr_url() { 1 } else { batch_size },
                dedupes: false,
                proof: Proof::DeliveryReport,
            },
            Gateway::Nhn(_) => Capabilities {
                batching: Batching::SameText,
                max_batch: batch_size,
                dedupes: false,
                proof: Proof::LookupByGroupingKey,
            },
        }
    }

    /// One request for `msgs` (which the caller grouped as [`Capabilities`] allow); one
    /// attempt per message, in order.
    pub async fn send(&self, msgs: &[OutMessage]) -> Vec<Attempt> {
        match self {
            Gateway::HttpJson(g) if msgs.len() == 1 => vec![g.send(&msgs[0]).await],
            Gateway::HttpJson(g) => g.send_batch(msgs).await,
            Gateway::Kannel(g) => g.send(msgs).await,
            Gateway::Nhn(g) => g.send(msgs).await,
        }
    }

    /// Asks whether the gateway has the message with ref `msg_ref`.
    pub async fn lookup(&self, msg_ref: &str) -> Lookup {
        match self {
            Gateway::HttpJson(g) => g.lookup(msg_ref).await,
            Gateway::Kannel(g) => g.lookup(msg_ref),
            Gateway::Nhn(g) => g.lookup(msg_ref).await,
        }
    }
}

/// Whether two messages may share one request of a [`Batching::SameText`] gateway.
pub fn same_text(a: &OutMessage, b: &OutMessage) -> bool {
    a.text == b.text && a.kind == b.kind && a.subject == b.subject && a.ad == b.ad
}
