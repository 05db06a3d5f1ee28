//! The store conformance suite: every [`Store`] operation, run in-process against a fresh
//! SQLite file and a fresh PostgreSQL database (created on the server of `MUNJA_TEST_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`, and dropped afterwards).
//!
//! Time is injected: a check moves the store's clock ([`Clock::advance`]) to see a lease, a
//! worker's claims, a launch claim or the rate budget expire or refill at a chosen instant, on
//! both backends, instead of sleeping or relying on zero timeouts.
//!
//! Each check is an `async fn(Arc<dyn Store>)`; [`conformance!`] makes one `#[tokio::test]` per
//! backend of it. The PostgreSQL half fails, never skips, when the server is unreachable: the
//! message says how to start it. Run with `cargo test --lib store::conformance`.

use std::sync::Arc;

use super::postgres::scratch::{ScratchDb, test_server_url};
use super::*;
use crate::domain::phone::normalize_mobile;

/// A migrated store and what keeps its database alive.
pub(super) struct Backend {
    pub store: Arc<dyn Store>,
    _sqlite_dir: Option<tempfile::TempDir>,
    _pg: Option<ScratchDb>,
}

impl Backend {
    pub async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("munja.db").display());
        let store = open(&url).await.expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        Backend {
            store,
            _sqlite_dir: Some(dir),
            _pg: None,
        }
    }

    pub async fn postgres() -> Backend {
        let db = match ScratchDb::create(&test_server_url()).await {
            Ok(db) => db,
            Err(e) => panic!("{e}"),
        };
        let store = open(&db.url).await.expect("open postgres");
        store.migrate().await.expect("migrate postgres");
        Backend {
            store,
            _sqlite_dir: None,
            _pg: Some(db),
        }
    }
}

/// One `#[tokio::test]` per backend for each listed check, in modules `sqlite` and `postgres`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let b = $crate::store::conformance::Backend::sqlite().await;
                    super::$check(b.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let b = $crate::store::conformance::Backend::postgres().await;
                    super::$check(b.store.clone()).await;
                }
            )*
        }
    };
}

mod buckets;
mod consent;
mod delivery;
mod gateways;
mod imports;
mod lifecycle;
mod outcomes;
mod schedules;
mod segment_delete;
mod sql_segments;
mod workers;

/// The i-th test mobile number.
pub(super) fn phone(i: u64) -> Phone {
    normalize_mobile(&format!("010{:08}", 30_000_000 + i)).expect("test number")
}

/// Imports segment `name` with members `range` (vars `{"n": i}`, night consent on even i).
pub(super) async fn import_segment(s: &dyn Store, name: &str, range: std::ops::Range<u64>) {
    let mut imp = s
        .begin_segment_import(name, &format!("{name}.csv"), &["name".to_string()])
        .await
        .expect("begin segment import");
    let members: Vec<NewMember> = range
        .map(|i| NewMember {
            phone: phone(i),
            vars: format!("{{\"n\":{i}}}"),
            night_consent: i % 2 == 0,
            ad_consent_at: None,
        })
        .collect();
    imp.add_members(&members).await.expect("add members");
    imp.commit().await.expect("commit segment import");
}

/// An ad campaign `name` on segment `seg` (imported or defined at `imported_at`) through
/// gateway `sim`, as `campaign create` makes it.
pub(crate) fn new_campaign(name: &str, seg: &str, imported_at: &str) -> NewCampaign {
    NewCampaign {
        name: name.into(),
        segment_name: seg.into(),
        segment_imported_at: imported_at.into(),
        template_name: "hello".into(),
        template_body: "{{ name }}님".into(),
        template_subject: None,
        gateway: "sim".into(),
        split: false,
        ad: true,
        sender_number: "15881234".into(),
        brand: Some("브랜드".into()),
        optout_number: None,
    }
}

/// A campaign on segment `seg` as `campaign create` makes it.
pub(super) async fn create_campaign(s: &dyn Store, seg: &str, ad: bool) -> i64 {
    let segment = s.segment(seg).await.expect("segment").expect("exists");
    s.create_campaign(&NewCampaign {
        template_subject: Some("제목".into()),
        ad,
        ..new_campaign(&format!("c-{seg}"), seg, &segment.imported_at)
    })
    .await
    .expect("create campaign")
}

/// The first `limit` rows of campaign `campaign`'s audit.
pub(super) async fn audit_page(s: &dyn Store, campaign: i64, limit: i64) -> Vec<AuditRow> {
    let f = AuditFilter {
        campaign,
        limit,
        ..AuditFilter::default()
    };
    s.audit(&f).await.expect("audit")
}

/// Starts worker 1 of a new execution of campaign `c`, replacing `expected`, as process
/// `pid` on `host`.
pub(crate) async fn start(
    s: &dyn Store,
    c: i64,
    expected: Option<i64>,
    host: &str,
    pid: i64,
    abandon_message: &str,
) -> Result<WorkerToken> {
    // A takeover judges the workers it can see, as `run::dispatch::lease::acquire` does.
    let judged_workers = s
        .workers(c)
        .await?
        .into_iter()
        .filter(|w| w.status == "STARTED")
        .map(|w| w.id)
        .collect();
    let how = Enlist::New {
        expected,
        abandon_message: abandon_message.into(),
        judged_workers,
    };
    s.start_worker(c, &how, &process(host, pid)).await
}

/// A process without an identity: only heartbeats tell whether it lives.
pub(super) fn process(host: &str, pid: i64) -> Process {
    Process {
        host: host.into(),
        pid,
        identity: None,
    }
}

/// A token nobody holds: the next execution and worker ids of `w`'s campaign.
pub(super) fn stranger(w: WorkerToken) -> WorkerToken {
    WorkerToken {
        execution: w.execution + 1,
        worker: w.worker + 1,
        ..w
    }
}

/// Segment `seg` of `n` members, a campaign on it, a started worker and its snapshot.
pub(super) async fn running(s: &dyn Store, seg: &str, n: u64) -> (i64, WorkerToken) {
    import_segment(s, seg, 0..n).await;
    let c = create_campaign(s, seg, true).await;
    let e = start(s, c, None, "host-a", 4242, "abandoned")
        .await
        .expect("start");
    s.snapshot(&e, None).await.expect("snapshot");
    (c, e)
}

/// Claims up to `limit` messages without night or cap rules.
pub(super) async fn claim(
    s: &dyn Store,
    _c: i64,
    e: WorkerToken,
    limit: usize,
) -> Vec<ClaimedMessage> {
    s.claim_chunk(ClaimRequest {
        worker: e,
        limit,
        night_only: false,
        cap: None,
    })
    .await
    .expect("claim")
    .messages
}

pub(super) fn attempt(outcome: &str, secs_ago: i64) -> AttemptRecord {
    AttemptRecord {
        at: Utc::now() - chrono::Duration::seconds(secs_ago),
        outcome: outcome.into(),
        http_status: Some(200),
        gateway_id: Some("gw-1".into()),
        gateway: Some("sim".into()),
        error: None,
        latency_ms: 12,
    }
}

/// An update to `state` with the given attempts.
pub(super) fn update(id: i64, state: MessageState, attempts: Vec<AttemptRecord>) -> MessageUpdate {
    MessageUpdate {
        id,
        state,
        reason: (state == MessageState::Failed).then(|| "rejected".to_string()),
        retryable: false,
        gateway_id: (state == MessageState::Sent).then(|| format!("gw-{id}")),
        gateway: Some("sim".into()),
        kind: Some("SMS".into()),
        bytes: Some(40),
        attempts,
    }
}

pub(super) fn assert_lease_lost(r: Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Err(StoreError::LeaseLost { .. }) => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

pub(super) fn assert_conflict(r: Result<impl std::fmt::Debug>, what: &str) -> String {
    match r {
        Err(StoreError::Conflict(m)) => m,
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

pub(super) fn assert_not_found(r: Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}
