//! Conformance of a campaign's run: lease, heartbeat, snapshot, claim, commit and fencing.

use super::*;

conformance!(
    start_execution_is_a_compare_and_swap,
    racing_starts_have_exactly_one_winner,
    heartbeat_reports_stop_and_cancel_requests,
    a_lease_ages_by_the_store_clock_until_its_holder_beats,
    snapshot_is_idempotent_and_suppresses_opted_out,
    snapshot_refuses_a_reimported_segment_and_writes_nothing,
    claim_and_commit_keep_the_counters,
    claim_applies_optouts_night_consent_and_the_cap,
    stale_execution_is_fenced_off,
    a_commit_racing_a_takeover_is_all_or_nothing,
);

async fn start_execution_is_a_compare_and_swap(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let c = create_campaign(&*s, "seg", true).await;
    let e1 = start(&*s, c, None, "host-a", 11, "unused")
        .await
        .expect("first start");
    let m = assert_conflict(
        start(&*s, c, None, "host-b", 22, "unused").await,
        "start expecting no holder",
    );
    assert!(m.contains(&format!("execution {}", e1.execution)), "{m}");
    let lease = s.campaign(c).await.expect("campaign").lease.expect("lease");
    assert_eq!(
        (lease.execution, lease.host.as_str(), lease.pid),
        (e1.execution, "host-a", 11)
    );
    let age = (Utc::now() - lease.heartbeat_at).num_seconds();
    assert!((0..5).contains(&age), "fresh heartbeat is {age}s old");

    let e2 = start(&*s, c, Some(e1.execution), "host-b", 22, "taken over")
        .await
        .expect("takeover");
    let c1 = s.campaign(c).await.expect("campaign");
    assert_eq!(c1.lease.expect("lease").execution, e2.execution);
    assert_eq!(c1.status, "STARTED");
    let ex = s.executions(c).await.expect("executions");
    assert_eq!(ex.len(), 2);
    assert_eq!(
        (ex[0].id, ex[0].status.as_str()),
        (e1.execution, "ABANDONED")
    );
    assert_eq!(ex[0].exit_message.as_deref(), Some("taken over"));
    assert!(ex[0].ended_at.is_some());
    assert_eq!((ex[1].id, ex[1].status.as_str()), (e2.execution, "STARTED"));
    assert_eq!((ex[1].host.as_str(), ex[1].pid), ("host-b", 22));
    assert_not_found(
        start(&*s, c + 100, None, "h", 1, "x").await,
        "unknown campaign",
    );
}

async fn racing_starts_have_exactly_one_winner(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let c = create_campaign(&*s, "seg", true).await;
    let starts: Vec<_> = (0..6)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { start(&*s, c, None, "host", i, "x").await })
        })
        .collect();
    let mut won = Vec::new();
    for h in starts {
        match h.await.expect("join") {
            Ok(e) => won.push(e),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("a racing start failed with {e:?}, expected Conflict"),
        }
    }
    assert_eq!(won.len(), 1, "winners: {won:?}");
    assert_eq!(
        s.campaign(c)
            .await
            .expect("campaign")
            .lease
            .expect("lease")
            .execution,
        won[0].execution
    );
    assert_eq!(s.executions(c).await.expect("executions").len(), 1);
}

async fn heartbeat_reports_stop_and_cancel_requests(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let c = create_campaign(&*s, "seg", true).await;
    // A stop of a campaign nobody runs asks nothing of a later run.
    s.request_stop(c).await.expect("stop idle");
    assert!(!s.campaign(c).await.expect("campaign").stop_requested);
    let e = start(&*s, c, None, "h", 1, "x").await.expect("start");
    assert_eq!(s.heartbeat(&e).await.expect("beat"), (false, false));
    s.request_stop(c).await.expect("stop");
    assert!(s.campaign(c).await.expect("campaign").stop_requested);
    assert_eq!(s.heartbeat(&e).await.expect("beat"), (true, false));
    assert_lease_lost(s.heartbeat(&stranger(e)).await, "heartbeat of a non-holder");
    assert_not_found(s.request_stop(c + 100).await, "stop of an unknown campaign");
}

/// The lease's last heartbeat comes back on the caller's clock, aged by the store's: a holder
/// silent 59 s is within a 60 s timeout, at 62 s past it (the run layer's `Holder::judge`
/// compares this age with `lease_timeout_secs`), and one heartbeat makes it fresh again.
async fn a_lease_ages_by_the_store_clock_until_its_holder_beats(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let c = create_campaign(&*s, "seg", true).await;
    let e = start(&*s, c, None, "elsewhere", 1, "x")
        .await
        .expect("start");
    let age = |camp: &Campaign| {
        let lease = camp.lease.as_ref().expect("lease");
        (Utc::now() - lease.heartbeat_at).num_seconds()
    };
    let camp = s.campaign(c).await.expect("campaign");
    assert!(age(&camp) <= 2, "a fresh lease is {}s old", age(&camp));
    s.clock().advance(std::time::Duration::from_secs(59));
    let camp = s.campaign(c).await.expect("campaign");
    assert!((59..=61).contains(&age(&camp)), "aged {}s", age(&camp));
    s.clock().advance(std::time::Duration::from_secs(3));
    let camp = s.campaign(c).await.expect("campaign");
    assert!(age(&camp) > 60, "aged {}s: past 60 s", age(&camp));
    s.heartbeat(&e).await.expect("beat");
    let camp = s.campaign(c).await.expect("campaign");
    assert!(age(&camp) <= 2, "a renewed lease is {}s old", age(&camp));
}

async fn snapshot_is_idempotent_and_suppresses_opted_out(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..4).await;
    s.optout_add(&phone(2), "cli").await.expect("optout");
    let c = create_campaign(&*s, "seg", true).await;
    let e = start(&*s, c, None, "h", 1, "x").await.expect("start");
    assert_eq!(s.snapshot(&e, None).await.expect("snapshot"), 4);
    assert_eq!(s.snapshot(&e, None).await.expect("again"), 0, "done before");
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.total, n.pending, n.suppressed), (4, 3, 1));
    let camp = s.campaign(c).await.expect("campaign");
    assert_eq!(camp.total, 4);
    assert!(camp.snapshot_at.is_some());
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!((ex.read_count, ex.suppressed), (1, 1));
    let rows = audit_page(&*s, c, 10).await;
    let refs: Vec<String> = rows.iter().map(|r| r.msg_ref.clone()).collect();
    let want: Vec<String> = (1..=4).map(|i| format!("{}-{i}", camp.uid)).collect();
    assert_eq!(refs, want, "one ref per member, in file order");
    assert_eq!(rows[2].status, "suppressed");
    assert_eq!(rows[2].error.as_deref(), Some("opted_out"));
}

async fn snapshot_refuses_a_reimported_segment_and_writes_nothing(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..3).await;
    let c = create_campaign(&*s, "seg", true).await;
    // imported_at has millisecond precision: make sure the re-import is a later instant.
    let first = s.segment("seg").await.expect("segment").expect("exists");
    loop {
        import_segment(&*s, "seg", 10..12).await;
        let again = s.segment("seg").await.expect("segment").expect("exists");
        if again.imported_at != first.imported_at {
            break;
        }
    }
    let e = start(&*s, c, None, "h", 1, "x").await.expect("start");
    let m = assert_conflict(
        s.snapshot(&e, None).await,
        "snapshot of a re-imported segment",
    );
    assert!(m.contains("re-imported"), "{m}");
    assert_eq!(s.counts(c).await.expect("counts").total, 0);
    assert!(s.campaign(c).await.expect("campaign").snapshot_at.is_none());
    assert_lease_lost(
        s.snapshot(&stranger(e), None).await,
        "snapshot by a non-holder",
    );
}

async fn claim_and_commit_keep_the_counters(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 6).await;
    let got = claim(&*s, c, e, 4).await;
    let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "claimed in id order");
    assert_eq!(got[0].phone, phone(0).as_str());
    assert_eq!(got[0].vars, "{\"n\":0}");
    assert!(got[0].night_consent && !got[1].night_consent);
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.pending, n.sending), (2, 4));

    let mut back = update(ids[3], MessageState::Pending, vec![]);
    back.kind = None;
    let updates = [
        update(
            ids[0],
            MessageState::Sent,
            vec![attempt("timeout", 3), attempt("accepted", 1)],
        ),
        update(ids[1], MessageState::Failed, vec![attempt("rejected", 1)]),
        // A lookup that finds nothing is not a send.
        update(
            ids[2],
            MessageState::Suppressed,
            vec![attempt("lookup_missing", 1)],
        ),
        back,
    ];
    s.commit_chunk(&e, &updates).await.expect("commit");
    let n = s.counts(c).await.expect("counts");
    assert_eq!(
        (n.pending, n.sending, n.sent, n.failed, n.suppressed),
        (3, 0, 1, 1, 1)
    );
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!(
        (ex.read_count, ex.sent, ex.failed, ex.suppressed, ex.commits),
        (3, 1, 1, 1, 1)
    );
    let rows = audit_page(&*s, c, 4).await;
    assert_eq!(rows[0].status, "sent");
    assert_eq!(rows[0].attempts, 2);
    assert_eq!(
        rows[0].gateway_id.as_deref(),
        Some(&*format!("gw-{}", ids[0]))
    );
    assert_eq!(
        (rows[0].kind.as_deref(), rows[0].bytes),
        (Some("SMS"), Some(40))
    );
    let last = rows[0].last_attempt_at.as_deref().expect("last attempt");
    assert_eq!(last, ts(updates[0].attempts[1].at));
    assert_eq!(
        (rows[1].status.as_str(), rows[1].error.as_deref()),
        ("failed", Some("rejected"))
    );
    assert_eq!(
        (rows[2].status.as_str(), rows[2].attempts),
        ("suppressed", 0)
    );
    assert_eq!((rows[3].status.as_str(), rows[3].attempts), ("pending", 0));
    assert!(rows[3].last_attempt_at.is_none());
    // The returned message is claimed again first.
    assert_eq!(claim(&*s, c, e, 1).await[0].id, ids[3]);
    // An empty chunk is a commit too.
    s.commit_chunk(&e, &[]).await.expect("empty commit");
    assert_eq!(s.executions(c).await.expect("executions")[0].commits, 2);
}

async fn claim_applies_optouts_night_consent_and_the_cap(s: Arc<dyn Store>) {
    // Phone 1 received an ad of another campaign a minute ago.
    let (other, oe) = running(&*s, "old", 2).await;
    let old = claim(&*s, other, oe, 2).await;
    let sent: Vec<_> = old
        .iter()
        .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 60)]))
        .collect();
    s.commit_chunk(&oe, &sent).await.expect("commit old");

    import_segment(&*s, "seg", 0..6).await;
    let c = create_campaign(&*s, "seg", true).await;
    let e = start(&*s, c, None, "h", 1, "x").await.expect("start");
    s.snapshot(&e, None).await.expect("snapshot");
    s.optout_add(&phone(4), "cli")
        .await
        .expect("optout during run");
    assert!(
        s.has_pending_without_consent(c)
            .await
            .expect("without consent")
    );
    let night = s
        .claim_chunk(ClaimRequest {
            worker: e,
            limit: 10,
            night_only: true,
            cap: Some((1, Utc::now() - chrono::Duration::hours(1))),
        })
        .await
        .expect("night claim");
    let phones: Vec<&str> = night.messages.iter().map(|m| m.phone.as_str()).collect();
    // Even numbers have night consent; 0 was capped by the other campaign, 4 opted out.
    assert_eq!(phones, [phone(2).as_str()]);
    assert_eq!(
        (night.suppressed_opted_out, night.suppressed_capped),
        (1, 1)
    );
    assert!(s.has_pending_without_consent(c).await.expect("still"));
    let day = claim(&*s, c, e, 10).await;
    let phones: Vec<&str> = day.iter().map(|m| m.phone.as_str()).collect();
    assert_eq!(
        phones,
        [phone(1).as_str(), phone(3).as_str(), phone(5).as_str()]
    );
    assert!(!s.has_pending_without_consent(c).await.expect("none left"));
    let rows = s
        .audit(&AuditFilter {
            campaign: c,
            state: Some(MessageState::Suppressed),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let reasons: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.phone.as_str(), r.error.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            (phone(0).as_str(), Some("frequency_cap")),
            (phone(4).as_str(), Some("opted_out_during_run"))
        ]
    );
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!((ex.read_count, ex.suppressed), (2, 2));
}

async fn stale_execution_is_fenced_off(s: Arc<dyn Store>) {
    let (c, stale) = running(&*s, "seg", 3).await;
    let got = claim(&*s, c, stale, 2).await;
    let fresh = start(&*s, c, Some(stale.execution), "host-b", 2, "taken over")
        .await
        .expect("takeover");
    let late = [update(
        got[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    assert_lease_lost(s.commit_chunk(&stale, &late).await, "stale commit");
    let n = s.counts(c).await.expect("counts");
    assert_eq!(
        (n.sent, n.sending),
        (0, 2),
        "the refused commit wrote nothing"
    );
    let ex = s.executions(c).await.expect("executions");
    assert_eq!(ex[0].commits, 0);
    assert_lease_lost(
        s.claim_chunk(ClaimRequest {
            worker: stale,
            limit: 5,
            night_only: false,
            cap: None,
        })
        .await,
        "stale claim",
    );
    assert_eq!(s.counts(c).await.expect("counts").pending, 1);
    assert_lease_lost(s.heartbeat(&stale).await, "stale heartbeat");
    assert_lease_lost(
        s.finish_execution(&stale, &ExecutionEnd::same("COMPLETED", "done"))
            .await,
        "stale finish",
    );
    assert_eq!(s.campaign(c).await.expect("campaign").status, "STARTED");
    // The new holder settles what the stale one left in flight; then its writes go through.
    let settled = s.in_doubt(&fresh, 0, 10).await.expect("in doubt");
    assert_eq!(
        settled.len(),
        2,
        "the stale run's claims are the new one's to settle"
    );
    s.commit_chunk(&fresh, &late).await.expect("holder commit");
    assert_eq!(s.counts(c).await.expect("counts").sent, 1);
}

/// A commit and a takeover at the same moment: either the commit lands whole before the
/// takeover, or it is refused and writes nothing; never a half.
async fn a_commit_racing_a_takeover_is_all_or_nothing(s: Arc<dyn Store>) {
    for round in 0..8 {
        let seg = format!("seg{round}");
        let (c, stale) = running(&*s, &seg, 40).await;
        let got = claim(&*s, c, stale, 40).await;
        let updates: Vec<_> = got
            .iter()
            .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 0)]))
            .collect();
        let committer = {
            let s = s.clone();
            tokio::spawn(async move { s.commit_chunk(&stale, &updates).await })
        };
        let taker = {
            let s = s.clone();
            tokio::spawn(async move { start(&*s, c, Some(stale.execution), "b", 2, "taken").await })
        };
        let committed = committer.await.expect("join commit");
        taker.await.expect("join takeover").expect("takeover");
        let n = s.counts(c).await.expect("counts");
        let ex = &s.executions(c).await.expect("executions")[0];
        match committed {
            Ok(()) => {
                assert_eq!((n.sent, n.sending), (40, 0), "round {round}");
                assert_eq!((ex.sent, ex.commits), (40, 1), "round {round}");
            }
            Err(StoreError::LeaseLost { .. }) => {
                assert_eq!((n.sent, n.sending), (0, 40), "round {round}");
                assert_eq!((ex.sent, ex.commits), (0, 0), "round {round}");
            }
            Err(e) => panic!("round {round}: commit failed with {e:?}"),
        }
    }
}
