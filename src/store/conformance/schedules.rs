//! Conformance of schedules: a scheduled campaign is due at its time and not before, only a
//! campaign that never ran can be (un)scheduled, one occurrence of a schedule is one campaign
//! even when two servers create it at once, and schedules are added, paused and removed by name.

use chrono::Duration;

use super::*;

conformance!(
    one_of_several_servers_claims_a_launch_until_it_expires,
    a_scheduled_campaign_is_due_at_its_time_and_only_until_it_starts,
    an_occurrence_is_created_once_even_by_racing_servers,
    schedules_are_added_paused_marked_and_removed_by_name,
);

fn scheduled(seg: &Segment) -> NewCampaign {
    NewCampaign {
        ad: false,
        brand: None,
        ..new_campaign("scheduled", &seg.name, &seg.imported_at)
    }
}

async fn a_scheduled_campaign_is_due_at_its_time_and_only_until_it_starts(s: Arc<dyn Store>) {
    import_segment(&*s, "sch", 0..3).await;
    let seg = s.segment("sch").await.expect("segment").expect("exists");
    let at = Utc::now() + Duration::seconds(60);
    let c = s
        .create_scheduled_campaign(&scheduled(&seg), at, None)
        .await
        .expect("create");
    let got = s.campaign(c).await.expect("campaign");
    assert_eq!(got.status, "SCHEDULED");
    assert_eq!(got.scheduled_at.as_deref(), Some(ts(at).as_str()));
    assert!(s.due_campaigns(Utc::now()).await.expect("due").is_empty());
    assert_eq!(s.due_campaigns(at).await.expect("due"), vec![c]);
    // Unscheduled it is CREATED and never due; scheduled again it is.
    s.set_scheduled_at(c, None).await.expect("unschedule");
    assert_eq!(s.campaign(c).await.expect("campaign").status, "CREATED");
    assert!(s.due_campaigns(at).await.expect("due").is_empty());
    s.set_scheduled_at(c, Some(at)).await.expect("schedule");
    assert_eq!(s.due_campaigns(at).await.expect("due"), vec![c]);
    // Once started it is no longer due, and its time cannot change any more.
    let e = start(&*s, c, None, "host-a", 1, "").await.expect("start");
    assert!(e.execution > 0);
    assert!(s.due_campaigns(at).await.expect("due").is_empty());
    let m = assert_conflict(s.set_scheduled_at(c, None).await, "unschedule a started");
    assert!(m.contains("STARTED"), "{m}");
    assert_not_found(s.set_scheduled_at(c + 100, None).await, "unknown campaign");
}

async fn an_occurrence_is_created_once_even_by_racing_servers(s: Arc<dyn Store>) {
    import_segment(&*s, "occ", 0..2).await;
    let seg = s.segment("occ").await.expect("segment").expect("exists");
    let occurrence = Utc::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (s, c) = (s.clone(), scheduled(&seg));
        set.spawn(async move {
            s.create_scheduled_campaign(&c, occurrence, Some((7, occurrence)))
                .await
        });
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.expect("join") {
            Ok(_) => won += 1,
            Err(StoreError::Conflict(m)) => {
                assert!(m.contains("already has a campaign"), "{m}");
                refused += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((won, refused), (1, 3));
    // Another occurrence, or another schedule's, is another campaign.
    let later = occurrence + Duration::seconds(1);
    s.create_scheduled_campaign(&scheduled(&seg), later, Some((7, later)))
        .await
        .expect("next occurrence");
    s.create_scheduled_campaign(&scheduled(&seg), occurrence, Some((8, occurrence)))
        .await
        .expect("other schedule");
    let list = s.campaigns().await.expect("campaigns");
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|c| c.schedule_id.is_some()));
}

async fn schedules_are_added_paused_marked_and_removed_by_name(s: Arc<dyn Store>) {
    let new = NewSchedule {
        name: "weekly".into(),
        segment_name: "vip".into(),
        template_name: "hello".into(),
        gateway: None,
        ad: true,
        cron: "0 10 * * MON".into(),
    };
    let id = s.add_schedule(&new).await.expect("add");
    let m = assert_conflict(s.add_schedule(&new).await, "same name");
    assert!(m.contains("weekly"), "{m}");
    s.set_schedule_paused("weekly", true).await.expect("pause");
    let at = Utc::now();
    s.mark_occurrence(id, at).await.expect("mark");
    // The mark never moves back.
    s.mark_occurrence(id, at - Duration::seconds(10))
        .await
        .expect("mark older");
    let list = s.schedules().await.expect("list");
    assert_eq!(list.len(), 1);
    let got = &list[0];
    assert_eq!((got.id, got.paused, got.ad), (id, true, true));
    assert_eq!(got.cron, "0 10 * * MON");
    assert_eq!(got.gateway, None);
    let mark = got.last_occurrence_at.expect("marked");
    assert!((mark - at).num_milliseconds().abs() < 2, "{mark} vs {at}");
    assert_not_found(s.set_schedule_paused("nope", false).await, "pause unknown");
    s.remove_schedule("weekly").await.expect("remove");
    assert_not_found(s.remove_schedule("weekly").await, "remove twice");
    assert!(s.schedules().await.expect("list").is_empty());
}

async fn one_of_several_servers_claims_a_launch_until_it_expires(s: Arc<dyn Store>) {
    const TTL_MS: i64 = 60_000;
    import_segment(&*s, "cl", 0..2).await;
    let seg = s.segment("cl").await.expect("segment").expect("exists");
    let c = s
        .create_scheduled_campaign(&scheduled(&seg), Utc::now(), None)
        .await
        .expect("create");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let s = s.clone();
        set.spawn(async move { s.claim_launch(c, "SCHEDULED", TTL_MS).await });
    }
    let mut won = 0;
    while let Some(r) = set.join_next().await {
        won += u32::from(r.expect("join").expect("claim"));
    }
    assert_eq!(won, 1, "exactly one claim wins");
    // A claim for a status the campaign no longer has, or for an unknown one, never wins.
    assert!(!s.claim_launch(c, "STOPPED", TTL_MS).await.expect("claim"));
    assert!(
        !s.claim_launch(c + 100, "SCHEDULED", TTL_MS)
            .await
            .expect("claim")
    );
    // Until it expires by the store's clock nobody else wins; then the next claim does.
    s.clock().advance(std::time::Duration::from_secs(58));
    assert!(!s.claim_launch(c, "SCHEDULED", TTL_MS).await.expect("claim"));
    s.clock().advance(std::time::Duration::from_secs(3));
    assert!(s.claim_launch(c, "SCHEDULED", TTL_MS).await.expect("claim"));
    assert!(!s.claim_launch(c, "SCHEDULED", TTL_MS).await.expect("claim"));
}
