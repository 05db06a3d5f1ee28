//! Conformance of the ad-consent age of CSV segments: each member's `ad_consent_at` stored and
//! compared to the cutoff to the millisecond, `consent_missing` only where the file had the
//! column, opt-outs first, and `segment_consent_counts` agreeing with the snapshot.

use std::collections::BTreeMap;

use super::*;

conformance!(
    old_or_missing_consent_is_counted_and_suppressed_after_optouts,
    without_the_column_or_the_check_no_consent_is_suppressed,
);

/// The cutoff of the checks: consents before it are expired.
fn cutoff() -> DateTime<Utc> {
    "2024-06-01T00:00:00.500Z".parse().expect("time")
}

/// Imports segment `name` (columns `name` and, with `column`, `AD_CONSENT_AT`) whose member
/// `i` has consent `consents[i]` (milliseconds from the cutoff).
async fn import(s: &dyn Store, name: &str, column: bool, consents: &[Option<i64>]) -> i64 {
    let mut columns = vec!["name".to_string()];
    if column {
        columns.push("AD_CONSENT_AT".to_string());
    }
    let mut imp = s
        .begin_segment_import(name, &format!("{name}.csv"), &columns)
        .await
        .expect("begin segment import");
    let members: Vec<NewMember> = consents
        .iter()
        .enumerate()
        .map(|(i, ms)| NewMember {
            phone: phone(i as u64),
            vars: format!("{{\"n\":{i}}}"),
            night_consent: false,
            ad_consent_at: ms.map(|ms| cutoff() + chrono::Duration::milliseconds(ms)),
        })
        .collect();
    imp.add_members(&members).await.expect("add members");
    imp.commit().await.expect("commit segment import");
    s.segment(name).await.expect("segment").expect("exists").id
}

/// (status, reason) of each message of campaign `c`, in file order.
async fn outcomes(s: &dyn Store, c: i64) -> Vec<(String, Option<String>)> {
    let rows = s
        .audit(&AuditFilter {
            campaign: c,
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    rows.into_iter().map(|r| (r.status, r.error)).collect()
}

/// Snapshots a new campaign on `seg` (an ad) with `cutoff`; returns it.
async fn snapshot(s: &dyn Store, seg: &str, cutoff: Option<DateTime<Utc>>) -> i64 {
    let c = create_campaign(s, seg, true).await;
    let e = start(s, c, None, "h", 1, "x").await.expect("start");
    s.snapshot(&e, cutoff).await.expect("snapshot");
    c
}

async fn old_or_missing_consent_is_counted_and_suppressed_after_optouts(s: Arc<dyn Store>) {
    let day = 86_400_000;
    let id = import(
        &*s,
        "seg",
        true,
        &[
            Some(day),  // recent
            Some(-day), // old
            None,       // empty cell
            Some(-day), // old, opted out
            None,       // empty, opted out
            Some(0),    // exactly the cutoff: not older
            Some(-1),   // a millisecond older
        ],
    )
    .await;
    let seg = s.segment("seg").await.expect("segment").expect("exists");
    assert_eq!(seg.ad_consent_column, Some(true));
    s.optout_add(&phone(3), "cli").await.expect("optout");
    s.optout_add(&phone(4), "cli").await.expect("optout");
    let want: BTreeMap<String, u64> =
        [("consent_expired".into(), 2), ("consent_missing".into(), 1)]
            .into_iter()
            .collect();
    let counted = s.segment_consent_counts(id, cutoff()).await.expect("count");
    assert_eq!(counted, want);

    let c = snapshot(&*s, "seg", Some(cutoff())).await;
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.total, n.pending, n.suppressed), (7, 2, 5));
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!(ex.suppressed, 5, "counted on the execution");
    let want = [
        ("pending", None),
        ("suppressed", Some("consent_expired")),
        ("suppressed", Some("consent_missing")),
        ("suppressed", Some("opted_out")),
        ("suppressed", Some("opted_out")),
        ("pending", None),
        ("suppressed", Some("consent_expired")),
    ]
    .map(|(st, r)| (st.to_string(), r.map(str::to_string)));
    assert_eq!(outcomes(&*s, c).await, want, "in file order");
    assert!(
        matches!(
            s.segment_consent_counts(id + 1000, cutoff()).await,
            Err(StoreError::NotFound(_))
        ),
        "no such segment"
    );
}

async fn without_the_column_or_the_check_no_consent_is_suppressed(s: Arc<dyn Store>) {
    let id = import(&*s, "plain", false, &[None, None]).await;
    let seg = s.segment("plain").await.expect("segment").expect("exists");
    assert_eq!(seg.ad_consent_column, Some(false));
    let counted = s.segment_consent_counts(id, cutoff()).await.expect("count");
    assert!(
        counted.is_empty(),
        "no column, nothing missing: {counted:?}"
    );
    let c = snapshot(&*s, "plain", Some(cutoff())).await;
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.total, n.pending, n.suppressed), (2, 2, 0));

    // The column, but no check (informational, or policy.ad_consent_max_age_days = 0).
    import(&*s, "seg", true, &[None, Some(-1)]).await;
    let c = snapshot(&*s, "seg", None).await;
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.total, n.pending, n.suppressed), (2, 2, 0));
}
