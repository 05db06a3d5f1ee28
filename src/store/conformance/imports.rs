//! Conformance of opt-outs, segment imports and campaign records.

use super::*;

conformance!(
    migrate_is_repeatable,
    optouts_add_remove_and_count,
    optout_import_is_visible_only_after_commit,
    segment_import_replaces_the_list_at_commit,
    segment_members_page_in_file_order,
    campaigns_round_trip,
);

async fn migrate_is_repeatable(s: Arc<dyn Store>) {
    s.migrate().await.expect("second migrate");
    assert_eq!(s.optout_count().await.expect("count"), 0);
}

async fn optouts_add_remove_and_count(s: Arc<dyn Store>) {
    assert!(s.optout_add(&phone(1), "cli").await.expect("add"));
    assert!(!s.optout_add(&phone(1), "cli").await.expect("add again"));
    assert!(s.optout_add(&phone(2), "cli").await.expect("add 2"));
    assert!(s.optout_contains(&phone(1)).await.expect("contains"));
    assert!(!s.optout_contains(&phone(3)).await.expect("contains 3"));
    assert_eq!(s.optout_count().await.expect("count"), 2);
    assert!(s.optout_remove(&phone(1)).await.expect("remove"));
    assert!(!s.optout_remove(&phone(1)).await.expect("remove again"));
    assert_eq!(s.optout_count().await.expect("count"), 1);
}

async fn optout_import_is_visible_only_after_commit(s: Arc<dyn Store>) {
    s.optout_add(&phone(1), "cli").await.expect("add");
    let mut imp = s.begin_optout_import("list.csv").await.expect("begin");
    // A duplicate inside the batch and one already stored count as already present.
    let c = imp
        .add_optouts(&[phone(1), phone(2), phone(3), phone(2)])
        .await
        .expect("add batch");
    assert_eq!((c.inserted, c.already_present), (2, 2));
    assert_eq!(s.optout_count().await.expect("count"), 1, "uncommitted");
    imp.commit().await.expect("commit");
    assert_eq!(s.optout_count().await.expect("count"), 3);

    // An import dropped without commit leaves nothing.
    let mut imp = s.begin_optout_import("list.csv").await.expect("begin");
    imp.add_optouts(&[phone(9)]).await.expect("add");
    drop(imp);
    assert!(!s.optout_contains(&phone(9)).await.expect("contains"));
    assert_eq!(s.optout_count().await.expect("count"), 3);
}

async fn segment_import_replaces_the_list_at_commit(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..3).await;
    let first = s.segment("seg").await.expect("segment").expect("exists");
    assert_eq!(first.member_count, 3);
    assert_eq!(first.columns, vec!["name".to_string()]);
    assert_eq!(first.source, "seg.csv");

    let mut imp = s
        .begin_segment_import("seg", "new.csv", &["a".into(), "b".into()])
        .await
        .expect("begin");
    let dup = NewMember {
        phone: phone(10),
        vars: "{\"first\":false}".into(),
        night_consent: true,
        ad_consent_at: None,
    };
    let c = imp
        .add_members(&[
            NewMember {
                phone: phone(10),
                vars: "{\"first\":true}".into(),
                night_consent: false,
                ad_consent_at: None,
            },
            dup,
        ])
        .await
        .expect("add");
    assert_eq!((c.inserted, c.already_present), (1, 1));
    // The old list stays whole until the new one commits.
    let seen = s.segment("seg").await.expect("segment").expect("exists");
    assert_eq!(seen.member_count, 3);
    assert_eq!(seen.source, "seg.csv");
    let rows = s.segment_members(first.id, 0, 100).await.expect("members");
    assert_eq!(rows.len(), 3);
    imp.commit().await.expect("commit");

    let now = s.segment("seg").await.expect("segment").expect("exists");
    assert_eq!((now.id, now.member_count), (first.id, 1));
    assert_eq!(now.source, "new.csv");
    assert_eq!(now.columns, vec!["a".to_string(), "b".to_string()]);
    let rows = s.segment_members(now.id, 0, 100).await.expect("members");
    assert_eq!(
        rows,
        vec![(
            1,
            phone(10).as_str().to_string(),
            "{\"first\":true}".to_string(),
            false
        )],
        "the first row of a duplicated number wins"
    );
    assert!(s.segment("nope").await.expect("segment").is_none());
}

async fn segment_members_page_in_file_order(s: Arc<dyn Store>) {
    import_segment(&*s, "b-seg", 0..5).await;
    import_segment(&*s, "a-seg", 100..101).await;
    let names: Vec<String> = s
        .segments()
        .await
        .expect("segments")
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["a-seg", "b-seg"], "segments sorted by name");
    let seg = s.segment("b-seg").await.expect("segment").expect("exists");
    let page1 = s.segment_members(seg.id, 0, 2).await.expect("page 1");
    let page2 = s
        .segment_members(seg.id, page1[1].0, 2)
        .await
        .expect("page 2");
    let page3 = s
        .segment_members(seg.id, page2[1].0, 2)
        .await
        .expect("page 3");
    let seqs: Vec<i64> = [page1, page2, page3].concat().iter().map(|r| r.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let first = &s.segment_members(seg.id, 0, 1).await.expect("first")[0];
    assert_eq!(first.1, phone(0).as_str());
    assert_eq!(first.2, "{\"n\":0}");
    assert!(first.3, "night consent round-trips");
}

async fn campaigns_round_trip(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let a = create_campaign(&*s, "seg", true).await;
    let b = create_campaign(&*s, "seg", false).await;
    assert!(b > a);
    let c = s.campaign(a).await.expect("campaign");
    assert_eq!(c.id, a);
    assert_eq!(c.uid.len(), 12);
    assert_eq!(
        (c.name.as_str(), c.segment_name.as_str(), c.status.as_str()),
        ("c-seg", "seg", "CREATED")
    );
    assert_eq!(c.template_body, "{{ name }}님");
    assert_eq!(c.template_subject.as_deref(), Some("제목"));
    assert_eq!(c.brand.as_deref(), Some("브랜드"));
    assert_eq!(c.optout_number, None);
    assert!(c.ad && !c.stop_requested && !c.cancel_requested);
    assert!(c.lease.is_none() && c.snapshot_at.is_none());
    assert_eq!(c.total, 0);
    assert!(DateTime::parse_from_rfc3339(&c.created_at).is_ok());
    let ids: Vec<i64> = s
        .campaigns()
        .await
        .expect("campaigns")
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, [a, b]);
    assert!(!s.campaign(b).await.expect("b").ad);
    assert_not_found(s.campaign(b + 100).await, "unknown campaign");
    assert_eq!(s.counts(a).await.expect("counts"), Counts::default());
    assert!(s.executions(a).await.expect("executions").is_empty());
}
