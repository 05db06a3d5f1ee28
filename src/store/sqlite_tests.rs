//! Tests of the SQLite store's reads that must stay index walks at ten million messages: their
//! query plans (no scan, no sort of a whole campaign) and the audit's keyset pages.

use super::*;
use crate::domain::phone::normalize_mobile;
use crate::store::conformance::{new_campaign, start};
use crate::store::sql::imports::{OPTOUT_CONTAINS, fresh_optouts_in_flight};
use sqlx::Row;

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let s = SqliteStore::open(&url, true).await.expect("open");
    s.migrate().await.expect("migrate");
    (dir, s)
}

/// The `detail` lines of `EXPLAIN QUERY PLAN sql` (parameters unbound: plans do not depend on
/// values without ANALYZE statistics, and munja never runs ANALYZE).
async fn plan(s: &SqliteStore, sql: &str) -> Vec<String> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
        .fetch_all(&s.pool)
        .await
        .expect("explain");
    rows.iter()
        .map(|r| r.try_get::<String, _>("detail").expect("detail"))
        .collect()
}

fn filter(phone: Option<&str>, state: Option<MessageState>) -> AuditFilter {
    AuditFilter {
        campaign: 1,
        phone: phone.map(str::to_string),
        state,
        after_id: 0,
        after_seq: 0,
        limit: 5000,
        ..Default::default()
    }
}

#[tokio::test]
async fn audit_pages_walk_an_index_in_output_order() {
    let (_d, s) = store().await;
    for (f, index) in [
        (filter(None, None), "sqlite_autoindex_messages_1"),
        (
            filter(None, Some(MessageState::Failed)),
            "messages_by_state",
        ),
    ] {
        let p = plan(&s, audit_query(&f).sql().as_str()).await;
        assert!(
            p.iter()
                .any(|l| l.starts_with("SEARCH") && l.contains(index)),
            "{f:?}: {p:?}"
        );
        // A sort here would read and order the whole campaign for every page.
        assert!(
            !p.iter()
                .any(|l| l.contains("SCAN") || l.contains("TEMP B-TREE")),
            "{f:?}: {p:?}"
        );
    }
    // One number: its few messages through the phone index, never the campaign's.
    for f in [
        filter(Some("01012345678"), None),
        filter(Some("01012345678"), Some(MessageState::Sent)),
    ] {
        let p = plan(&s, audit_query(&f).sql().as_str()).await;
        assert!(
            p.iter()
                .any(|l| l.starts_with("SEARCH") && l.contains("messages_by_phone (phone=?")),
            "{f:?}: {p:?}"
        );
        assert!(!p.iter().any(|l| l.contains("SCAN")), "{f:?}: {p:?}");
    }
}

#[tokio::test]
async fn opt_out_lookups_probe_the_primary_key() {
    let (_d, s) = store().await;
    let p = plan(&s, OPTOUT_CONTAINS).await;
    assert!(
        p.iter().any(|l| l.contains("USING PRIMARY KEY (phone=?)")),
        "{p:?}"
    );
    // The check before sending walks the claimed messages and probes the list for each.
    let p = plan(&s, &fresh_optouts_in_flight::<Sqlite>()).await;
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].starts_with("SEARCH m USING")
            && p[0].contains("messages_by_state (campaign_id=? AND state=?)"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("SEARCH o USING PRIMARY KEY (phone=?)"),
        "{p:?}"
    );
}

/// A campaign of `n` recipients snapshotted by execution 1; every third number opted out.
async fn campaign(s: &SqliteStore, n: u64) -> (i64, WorkerToken) {
    let phones: Vec<Phone> = (0..n)
        .map(|i| {
            normalize_mobile(&format!("010-{:04}-{:04}", 2000 + i / 10_000, i % 10_000))
                .expect("phone")
        })
        .collect();
    let mut imp = s.begin_optout_import("t").await.expect("optouts");
    let opted: Vec<Phone> = phones.iter().step_by(3).cloned().collect();
    imp.add_optouts(&opted).await.expect("add optouts");
    imp.commit().await.expect("commit");
    let mut imp = s
        .begin_segment_import("seg", "t.csv", &[])
        .await
        .expect("segment");
    let members: Vec<NewMember> = phones
        .iter()
        .map(|p| NewMember {
            phone: p.clone(),
            vars: "{}".into(),
            night_consent: false,
            ad_consent_at: None,
        })
        .collect();
    imp.add_members(&members).await.expect("members");
    imp.commit().await.expect("commit");
    let seg = s.segment("seg").await.expect("segment").expect("exists");
    let id = s
        .create_campaign(&NewCampaign {
            gateway: "g".into(),
            ad: false,
            ..new_campaign("t", "seg", &seg.imported_at)
        })
        .await
        .expect("create");
    let exec = start(s, id, None, "h", 1, "").await.expect("start");
    assert_eq!(s.snapshot(&exec, None).await.expect("snapshot"), n);
    (id, exec)
}

/// Every page of `f`, `limit` rows at a time, the way `audit::write` asks for them.
async fn pages(s: &SqliteStore, mut f: AuditFilter, limit: i64) -> Vec<Vec<AuditRow>> {
    f.limit = limit;
    let mut out = Vec::new();
    loop {
        let rows = s.audit(&f).await.expect("audit");
        assert!(rows.len() as i64 <= limit, "a page of {} rows", rows.len());
        let Some(last) = rows.last() else { break };
        (f.after_id, f.after_seq) = (last.id, last.seq);
        out.push(rows);
    }
    out
}

#[tokio::test]
async fn audit_pages_cover_every_message_once_in_order_for_every_filter() {
    let (_d, s) = store().await;
    // Two campaigns: the second one's pages must not leak into the first's.
    let (_, w) = campaign(&s, 23).await;
    s.finish_execution(&w, &ExecutionEnd::same("COMPLETED", ""))
        .await
        .expect("finish");
    let (id, _) = campaign(&s, 23).await;
    let all: Vec<AuditRow> = pages(
        &s,
        AuditFilter {
            campaign: id,
            ..filter(None, None)
        },
        5,
    )
    .await
    .concat();
    assert_eq!(all.len(), 23);
    assert!(
        all.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].id < w[1].id)
    );
    let suppressed: Vec<AuditRow> = pages(
        &s,
        AuditFilter {
            campaign: id,
            ..filter(None, Some(MessageState::Suppressed))
        },
        2,
    )
    .await
    .concat();
    // Every third number (0, 3, ..., 21) is on the list.
    assert_eq!(suppressed.len(), 8);
    assert!(suppressed.iter().all(|r| r.status == "suppressed"));
    assert!(suppressed.windows(2).all(|w| w[0].seq < w[1].seq));
    let one = &all[7];
    let by_phone: Vec<AuditRow> = pages(
        &s,
        AuditFilter {
            campaign: id,
            ..filter(Some(&one.phone), None)
        },
        5,
    )
    .await
    .concat();
    assert_eq!(by_phone.len(), 1);
    assert_eq!(by_phone[0].msg_ref, one.msg_ref);
}

#[tokio::test]
async fn two_stores_on_one_file_share_the_bucket() {
    let (dir, a) = store().await;
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let b = SqliteStore::open(&url, false).await.expect("open");
    let take = Take {
        need: 1,
        want: 6,
        rate: 1,
        capacity: 10,
    };
    let (x, y) = tokio::join!(a.take_tokens("g", take), b.take_tokens("g", take));
    let (x, y) = (x.expect("take a").tokens, y.expect("take b").tokens);
    // At 1 token a second, a test run cannot add a whole token beyond the burst of 10.
    assert!(x + y <= 11 && x + y >= 10, "granted {x} + {y}");
    assert!(x.min(y) >= 4, "both were served: {x} and {y}");
}
