//! Conformance of SQL segments: versioned definitions, the campaign's link to its version, and
//! the streamed snapshot (duplicates merged, opt-outs and given suppressions, all or nothing,
//! fenced).

use super::*;

conformance!(
    definitions_are_versioned_and_kept,
    a_campaign_keeps_the_version_it_was_created_from,
    streamed_snapshot_merges_suppresses_and_records,
    streamed_snapshot_is_all_or_nothing_and_fenced,
);

fn def(name: &str, query: &str) -> NewSqlSegment {
    NewSqlSegment {
        name: name.into(),
        source: "crm".into(),
        query: query.into(),
        phone_column: "phone".into(),
    }
}

fn row(seq: i64, i: u64, suppress: Option<&str>) -> SnapshotRow {
    SnapshotRow {
        seq,
        member: NewMember {
            phone: phone(i),
            vars: format!("{{\"seq\":\"{seq}\"}}"),
            night_consent: seq % 2 == 0,
            ad_consent_at: None,
        },
        suppress: suppress.map(str::to_string),
    }
}

/// A campaign linked to a fresh SQL segment, and a started execution.
async fn sql_campaign(s: &dyn Store) -> (i64, WorkerToken) {
    let v = s
        .define_sql_segment(&def("crm-vip", "SELECT phone FROM customers"))
        .await
        .expect("define");
    let c = s
        .create_campaign(&NewCampaign {
            template_body: "{{ seq }}".into(),
            ..new_campaign("sql", &v.name, &v.defined_at)
        })
        .await
        .expect("create");
    s.link_sql_segment(c, v.id).await.expect("link");
    let e = start(s, c, None, "host-a", 1, "abandoned")
        .await
        .expect("start");
    (c, e)
}

async fn definitions_are_versioned_and_kept(s: Arc<dyn Store>) {
    assert!(s.sql_segments().await.expect("list").is_empty());
    let v1 = s
        .define_sql_segment(&def("vip", "SELECT 1"))
        .await
        .expect("v1");
    let v2 = s
        .define_sql_segment(&def("vip", "SELECT 2"))
        .await
        .expect("v2");
    s.define_sql_segment(&def("all", "SELECT 3"))
        .await
        .expect("other");
    assert_eq!((v1.version, v2.version), (1, 2));
    let versions = s.sql_segment_versions("vip").await.expect("versions");
    let texts: Vec<&str> = versions.iter().map(|v| v.query.as_str()).collect();
    assert_eq!(texts, ["SELECT 1", "SELECT 2"]);
    assert_eq!(versions[1], v2);
    let latest = s.sql_segments().await.expect("list");
    let names: Vec<(&str, i64)> = latest
        .iter()
        .map(|v| (v.name.as_str(), v.version))
        .collect();
    assert_eq!(names, [("all", 1), ("vip", 2)]);
    assert!(
        s.sql_segment_versions("none")
            .await
            .expect("none")
            .is_empty()
    );
}

async fn a_campaign_keeps_the_version_it_was_created_from(s: Arc<dyn Store>) {
    let (c, _) = sql_campaign(&*s).await;
    s.define_sql_segment(&def("crm-vip", "SELECT phone FROM everyone"))
        .await
        .expect("redefine");
    let link = s
        .campaign_sql_segment(c)
        .await
        .expect("link")
        .expect("linked");
    assert_eq!(link.segment.query, "SELECT phone FROM customers");
    assert_eq!(link.segment.version, 1);
    assert_eq!((link.as_of, link.rows_read), (None, None));
    import_segment(&*s, "csv", 0..1).await;
    let csv = create_campaign(&*s, "csv", true).await;
    assert!(s.campaign_sql_segment(csv).await.expect("csv").is_none());
}

async fn streamed_snapshot_merges_suppresses_and_records(s: Arc<dyn Store>) {
    let (c, e) = sql_campaign(&*s).await;
    s.optout_add(&phone(3), "cli").await.expect("opt out");
    let mut snap = s
        .begin_message_snapshot(&e)
        .await
        .expect("begin")
        .expect("not done yet");
    let first = snap
        .add(&[
            row(1, 1, None),
            row(2, 2, Some("consent_expired")),
            row(3, 1, None),
        ])
        .await
        .expect("add");
    assert_eq!((first.inserted, first.already_present), (2, 1));
    let second = snap
        .add(&[row(5, 3, None), row(6, 4, None)])
        .await
        .expect("add");
    assert_eq!((second.inserted, second.already_present), (2, 0));
    let as_of = Utc::now();
    let totals = snap.commit(as_of, 6).await.expect("commit");
    assert_eq!((totals.messages, totals.suppressed), (4, 2));
    let counts = s.counts(c).await.expect("counts");
    assert_eq!((counts.total, counts.pending, counts.suppressed), (4, 2, 2));
    // The suppressions count on the worker that snapshotted and on its execution.
    let worker = &s.workers(c).await.expect("workers")[0];
    assert_eq!((worker.id, worker.suppressed), (e.worker, 2));
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!(ex.suppressed, 2);
    let link = s
        .campaign_sql_segment(c)
        .await
        .expect("link")
        .expect("linked");
    assert_eq!(link.rows_read, Some(6));
    assert_eq!(link.as_of.as_deref(), Some(ts(as_of).as_str()));
    let camp = s.campaign(c).await.expect("campaign");
    assert_eq!(camp.total, 4);
    assert!(camp.snapshot_at.is_some());
    let rows = audit_page(&*s, c, 10).await;
    let got: Vec<(String, String, Option<String>)> = rows
        .into_iter()
        .map(|r| (r.phone, r.status, r.error))
        .collect();
    assert_eq!(
        got,
        [
            (phone(1).as_str().into(), "pending".into(), None),
            (
                phone(2).as_str().into(),
                "suppressed".into(),
                Some("consent_expired".into())
            ),
            (
                phone(3).as_str().into(),
                "suppressed".into(),
                Some("opted_out".into())
            ),
            (phone(4).as_str().into(), "pending".into(), None),
        ]
    );
    assert!(
        s.begin_message_snapshot(&e).await.expect("again").is_none(),
        "a snapshotted campaign is never snapshotted again"
    );
    assert_eq!(s.snapshot(&e, None).await.expect("csv snapshot path"), 0);
}

async fn streamed_snapshot_is_all_or_nothing_and_fenced(s: Arc<dyn Store>) {
    let (c, e) = sql_campaign(&*s).await;
    {
        let mut snap = s
            .begin_message_snapshot(&e)
            .await
            .expect("begin")
            .expect("open");
        snap.add(&[row(1, 1, None), row(2, 2, None)])
            .await
            .expect("add");
        // Dropped without commit: the source failed half way.
    }
    assert_eq!(s.counts(c).await.expect("counts").total, 0);
    assert!(s.campaign(c).await.expect("campaign").snapshot_at.is_none());
    let e2 = start(&*s, c, Some(e.execution), "host-b", 2, "taken over")
        .await
        .expect("takeover");
    assert_lease_lost(
        s.begin_message_snapshot(&e).await.map(|o| o.is_some()),
        "a stale execution's snapshot",
    );
    let mut snap = s
        .begin_message_snapshot(&e2)
        .await
        .expect("begin")
        .expect("open");
    snap.add(&[row(1, 1, None)]).await.expect("add");
    snap.commit(Utc::now(), 1).await.expect("commit");
    assert_eq!(s.counts(c).await.expect("counts").total, 1);
}
