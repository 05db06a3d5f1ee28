//! Conformance of `segment delete`: CSV and SQL segments, refused while an unfinished campaign
//! uses the name, and what stays for the campaigns created from it.

use super::*;

conformance!(
    a_csv_segment_is_deleted_with_its_members_once_its_campaigns_are_finished,
    an_sql_segment_leaves_the_lists_and_stays_for_its_campaigns,
);

async fn a_csv_segment_is_deleted_with_its_members_once_its_campaigns_are_finished(
    s: Arc<dyn Store>,
) {
    assert_eq!(
        s.delete_segment("vip").await.expect("delete"),
        SegmentDeletion::NotFound
    );
    import_segment(&*s, "vip", 0..3).await;
    import_segment(&*s, "other", 10..12).await;
    let id = s.segment("vip").await.expect("segment").expect("exists").id;
    let a = create_campaign(&*s, "vip", true).await;
    let b = create_campaign(&*s, "vip", false).await;
    create_campaign(&*s, "other", true).await;
    let in_use = s.delete_segment("vip").await.expect("delete");
    let SegmentDeletion::InUse(users) = in_use else {
        panic!("deleted under unfinished campaigns: {in_use:?}")
    };
    let named: Vec<(i64, &str, &str)> = users
        .iter()
        .map(|u| (u.id, u.name.as_str(), u.status.as_str()))
        .collect();
    assert_eq!(named, [(a, "c-vip", "CREATED"), (b, "c-vip", "CREATED")]);
    assert_eq!(
        s.segment_members(id, 0, 10).await.expect("members").len(),
        3
    );

    s.cancel(a, None).await.expect("cancel a");
    let in_use = s.delete_segment("vip").await.expect("delete");
    assert!(
        matches!(&in_use, SegmentDeletion::InUse(u) if u.len() == 1 && u[0].id == b),
        "{in_use:?}"
    );
    s.cancel(b, None).await.expect("cancel b");
    assert_eq!(
        s.delete_segment("vip").await.expect("delete"),
        SegmentDeletion::Deleted {
            csv_members: Some(3),
            sql_versions: 0
        }
    );
    assert!(s.segment("vip").await.expect("segment").is_none());
    assert!(
        s.segment_members(id, 0, 10)
            .await
            .expect("members")
            .is_empty()
    );
    assert_eq!(s.campaign(a).await.expect("kept").segment_name, "vip");
    let names: Vec<String> = s
        .segments()
        .await
        .expect("list")
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["other"], "the other segment is untouched");
    // The name can be imported again.
    import_segment(&*s, "vip", 5..6).await;
    assert_eq!(
        s.segment("vip")
            .await
            .expect("segment")
            .expect("new")
            .member_count,
        1
    );
}

async fn an_sql_segment_leaves_the_lists_and_stays_for_its_campaigns(s: Arc<dyn Store>) {
    let def = |query: &str| NewSqlSegment {
        name: "crm".into(),
        source: "src".into(),
        query: query.into(),
        phone_column: "phone".into(),
    };
    s.define_sql_segment(&def("SELECT 1")).await.expect("v1");
    let v2 = s.define_sql_segment(&def("SELECT 2")).await.expect("v2");
    let c = create_campaign_on(&*s, "crm", &v2.defined_at).await;
    s.link_sql_segment(c, v2.id).await.expect("link");
    let in_use = s.delete_segment("crm").await.expect("delete");
    assert!(
        matches!(&in_use, SegmentDeletion::InUse(u) if u.len() == 1 && u[0].id == c),
        "{in_use:?}"
    );
    assert_eq!(s.sql_segment_versions("crm").await.expect("kept").len(), 2);

    s.cancel(c, None).await.expect("cancel");
    assert_eq!(
        s.delete_segment("crm").await.expect("delete"),
        SegmentDeletion::Deleted {
            csv_members: None,
            sql_versions: 2
        }
    );
    assert!(
        s.sql_segment_versions("crm")
            .await
            .expect("versions")
            .is_empty()
    );
    assert!(s.sql_segments().await.expect("list").is_empty());
    let kept = s
        .campaign_sql_segment(c)
        .await
        .expect("campaign's segment")
        .expect("kept for the campaign");
    assert_eq!(
        (kept.segment.version, kept.segment.query.as_str()),
        (2, "SELECT 2")
    );
    assert_eq!(
        s.delete_segment("crm").await.expect("again"),
        SegmentDeletion::NotFound
    );
    // Defined again, it continues the numbering and is listed again.
    let v3 = s.define_sql_segment(&def("SELECT 3")).await.expect("v3");
    assert_eq!(v3.version, 3);
    let listed = s.sql_segments().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].version, 3);
    assert_eq!(
        s.sql_segment_versions("crm").await.expect("versions").len(),
        1
    );
}

/// A campaign on SQL segment `seg` (defined at `defined_at`), as `campaign create` makes it.
async fn create_campaign_on(s: &dyn Store, seg: &str, defined_at: &str) -> i64 {
    s.create_campaign(&new_campaign(&format!("c-{seg}"), seg, defined_at))
        .await
        .expect("create campaign")
}
