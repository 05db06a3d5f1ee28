//! Conformance of a campaign's run: lease, snapshot, claim, commit, fencing, stop, cancel,
//! in-doubt paging, requeue, finish, audit, purge and delete.

use super::*;

conformance!(
    start_execution_is_a_compare_and_swap,
    racing_starts_have_exactly_one_winner,
    heartbeat_reports_stop_and_cancel_requests,
    snapshot_is_idempotent_and_suppresses_opted_out,
    snapshot_refuses_a_reimported_segment_and_writes_nothing,
    claim_and_commit_keep_the_counters,
    claim_applies_optouts_night_consent_and_the_cap,
    stale_execution_is_fenced_off,
    a_commit_racing_a_takeover_is_all_or_nothing,
    cancel_live_and_dead_runs,
    in_doubt_pages_through_sending_and_in_doubt_messages,
    fresh_optouts_in_flight_are_the_claimed_ones_opted_out_since,
    failure_reasons_most_frequent_first,
    requeue_retryable_returns_only_retryable_failures,
    finish_execution_releases_the_lease,
    audit_filters_and_pages,
    purge_deletes_only_old_rows_of_finished_campaigns,
    delete_refuses_a_live_lease_and_removes_everything,
);

async fn start_execution_is_a_compare_and_swap(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let c = create_campaign(&*s, "seg", true).await;
    let e1 = s
        .start_execution(c, None, "host-a", 11, "unused")
        .await
        .expect("first start");
    let m = assert_conflict(
        s.start_execution(c, None, "host-b", 22, "unused").await,
        "start expecting no holder",
    );
    assert!(m.contains(&format!("execution {e1}")), "{m}");
    let lease = s.campaign(c).await.expect("campaign").lease.expect("lease");
    assert_eq!(
        (lease.execution, lease.host.as_str(), lease.pid),
        (e1, "host-a", 11)
    );
    let age = (Utc::now() - lease.heartbeat_at).num_seconds();
    assert!((0..5).contains(&age), "fresh heartbeat is {age}s old");

    let e2 = s
        .start_execution(c, Some(e1), "host-b", 22, "taken over")
        .await
        .expect("takeover");
    let c1 = s.campaign(c).await.expect("campaign");
    assert_eq!(c1.lease.expect("lease").execution, e2);
    assert_eq!(c1.status, "STARTED");
    let ex = s.executions(c).await.expect("executions");
    assert_eq!(ex.len(), 2);
    assert_eq!((ex[0].id, ex[0].status.as_str()), (e1, "ABANDONED"));
    assert_eq!(ex[0].exit_message.as_deref(), Some("taken over"));
    assert!(ex[0].ended_at.is_some());
    assert_eq!((ex[1].id, ex[1].status.as_str()), (e2, "STARTED"));
    assert_eq!((ex[1].host.as_str(), ex[1].pid), ("host-b", 22));
    assert_not_found(
        s.start_execution(c + 100, None, "h", 1, "x").await,
        "unknown campaign",
    );
}

async fn racing_starts_have_exactly_one_winner(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let c = create_campaign(&*s, "seg", true).await;
    let starts: Vec<_> = (0..6)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.start_execution(c, None, "host", i, "x").await })
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
        won[0]
    );
    assert_eq!(s.executions(c).await.expect("executions").len(), 1);
}

async fn heartbeat_reports_stop_and_cancel_requests(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let c = create_campaign(&*s, "seg", true).await;
    // A stop of a campaign nobody runs asks nothing of a later run.
    s.request_stop(c).await.expect("stop idle");
    assert!(!s.campaign(c).await.expect("campaign").stop_requested);
    let e = s
        .start_execution(c, None, "h", 1, "x")
        .await
        .expect("start");
    assert_eq!(s.heartbeat(c, e).await.expect("beat"), (false, false));
    s.request_stop(c).await.expect("stop");
    assert!(s.campaign(c).await.expect("campaign").stop_requested);
    assert_eq!(s.heartbeat(c, e).await.expect("beat"), (true, false));
    assert_lease_lost(s.heartbeat(c, e + 1).await, "heartbeat of a non-holder");
    assert_not_found(s.request_stop(c + 100).await, "stop of an unknown campaign");
}

async fn snapshot_is_idempotent_and_suppresses_opted_out(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..4).await;
    s.optout_add(&phone(2), "cli").await.expect("optout");
    let c = create_campaign(&*s, "seg", true).await;
    let e = s
        .start_execution(c, None, "h", 1, "x")
        .await
        .expect("start");
    assert_eq!(s.snapshot(c, e).await.expect("snapshot"), 4);
    assert_eq!(s.snapshot(c, e).await.expect("again"), 0, "done before");
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.total, n.pending, n.suppressed), (4, 3, 1));
    let camp = s.campaign(c).await.expect("campaign");
    assert_eq!(camp.total, 4);
    assert!(camp.snapshot_at.is_some());
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!((ex.read_count, ex.suppressed), (1, 1));
    let rows = s
        .audit(&AuditFilter {
            campaign: c,
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
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
    let e = s
        .start_execution(c, None, "h", 1, "x")
        .await
        .expect("start");
    let m = assert_conflict(s.snapshot(c, e).await, "snapshot of a re-imported segment");
    assert!(m.contains("re-imported"), "{m}");
    assert_eq!(s.counts(c).await.expect("counts").total, 0);
    assert!(s.campaign(c).await.expect("campaign").snapshot_at.is_none());
    assert_lease_lost(s.snapshot(c, e + 1).await, "snapshot by a non-holder");
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
    s.commit_chunk(c, e, &updates).await.expect("commit");
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
    let rows = s
        .audit(&AuditFilter {
            campaign: c,
            limit: 4,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
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
    s.commit_chunk(c, e, &[]).await.expect("empty commit");
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
    s.commit_chunk(other, oe, &sent).await.expect("commit old");

    import_segment(&*s, "seg", 0..6).await;
    let c = create_campaign(&*s, "seg", true).await;
    let e = s
        .start_execution(c, None, "h", 1, "x")
        .await
        .expect("start");
    s.snapshot(c, e).await.expect("snapshot");
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
            campaign: c,
            execution: e,
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
    let fresh = s
        .start_execution(c, Some(stale), "host-b", 2, "taken over")
        .await
        .expect("takeover");
    let late = [update(
        got[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    assert_lease_lost(s.commit_chunk(c, stale, &late).await, "stale commit");
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
            campaign: c,
            execution: stale,
            limit: 5,
            night_only: false,
            cap: None,
        })
        .await,
        "stale claim",
    );
    assert_eq!(s.counts(c).await.expect("counts").pending, 1);
    assert_lease_lost(s.heartbeat(c, stale).await, "stale heartbeat");
    assert_lease_lost(
        s.finish_execution(c, stale, "COMPLETED", "COMPLETED", "done", "COMPLETED")
            .await,
        "stale finish",
    );
    assert_eq!(s.campaign(c).await.expect("campaign").status, "STARTED");
    // The holder's own writes go through.
    s.commit_chunk(c, fresh, &late)
        .await
        .expect("holder commit");
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
            tokio::spawn(async move { s.commit_chunk(c, stale, &updates).await })
        };
        let taker = {
            let s = s.clone();
            tokio::spawn(async move { s.start_execution(c, Some(stale), "b", 2, "taken").await })
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

async fn cancel_live_and_dead_runs(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "live", 4).await;
    claim(&*s, c, e, 1).await;
    assert_eq!(s.cancel(c, None).await.expect("cancel live"), 3);
    let camp = s.campaign(c).await.expect("campaign");
    assert_eq!(camp.status, "STARTED", "the live run finishes it");
    assert!(camp.cancel_requested && camp.stop_requested);
    assert_eq!(camp.lease.expect("lease kept").execution, e);
    assert_eq!(s.heartbeat(c, e).await.expect("beat"), (true, true));
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.cancelled, n.sending, n.pending), (3, 1, 0));

    let (d, de) = running(&*s, "dead", 2).await;
    assert_eq!(s.cancel(d, Some(de)).await.expect("cancel dead"), 2);
    let camp = s.campaign(d).await.expect("campaign");
    assert_eq!(camp.status, "CANCELLED");
    assert!(camp.lease.is_none());
    let ex = &s.executions(d).await.expect("executions")[0];
    assert_eq!(
        (ex.status.as_str(), ex.exit_code.as_deref()),
        ("ABANDONED", Some("FAILED"))
    );
    assert_conflict(s.cancel(d, None).await, "cancel of a CANCELLED campaign");
    assert_not_found(
        s.cancel(d + 100, None).await,
        "cancel of an unknown campaign",
    );
}

async fn in_doubt_pages_through_sending_and_in_doubt_messages(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 7).await;
    let got = claim(&*s, c, e, 5).await;
    // Two outcomes unknown (a timeout): in doubt, out of the queue, not final.
    let doubt: Vec<_> = got[..2]
        .iter()
        .map(|m| update(m.id, MessageState::InDoubt, vec![attempt("timeout", 0)]))
        .collect();
    s.commit_chunk(c, e, &doubt).await.expect("commit in doubt");
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.in_doubt, n.sending, n.pending), (2, 3, 2));
    assert!(!n.all_final());
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!(
        (ex.read_count, ex.commits),
        (0, 1),
        "in doubt is not read yet"
    );
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.in_doubt(c, after, 2).await.expect("in doubt");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = last.id;
        seen.extend(page.iter().map(|m| m.id));
    }
    let want: Vec<i64> = got.iter().map(|m| m.id).collect();
    assert_eq!(
        seen, want,
        "every sending or in-doubt message once, in id order"
    );
    assert_eq!(
        s.in_doubt(c, 0, 1).await.expect("first")[0].attempts,
        1,
        "the timed-out attempt counts"
    );
    // In doubt is never claimed again, nor cancelled.
    let rest = claim(&*s, c, e, 10).await;
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|m| !want.contains(&m.id)));
    let (other, _) = running(&*s, "other", 2).await;
    assert!(s.in_doubt(other, 0, 10).await.expect("other").is_empty());
}

async fn fresh_optouts_in_flight_are_the_claimed_ones_opted_out_since(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 4).await;
    let (other, oe) = running(&*s, "other", 4).await;
    claim(&*s, c, e, 2).await; // phones 0 and 1 are in flight
    claim(&*s, other, oe, 4).await;
    let since = Utc::now() - chrono::Duration::seconds(60);
    assert!(
        s.fresh_optouts_in_flight(c, since)
            .await
            .expect("none")
            .is_empty()
    );
    s.optout_add(&phone(1), "cli")
        .await
        .expect("optout in flight");
    s.optout_add(&phone(3), "cli")
        .await
        .expect("optout still pending");
    let fresh = s.fresh_optouts_in_flight(c, since).await.expect("fresh");
    assert_eq!(fresh, [phone(1).as_str()]);
    let later = Utc::now() + chrono::Duration::seconds(60);
    assert!(
        s.fresh_optouts_in_flight(c, later)
            .await
            .expect("later")
            .is_empty()
    );
    let mut theirs = s
        .fresh_optouts_in_flight(other, since)
        .await
        .expect("other");
    theirs.sort();
    assert_eq!(theirs, [phone(1).as_str(), phone(3).as_str()]);
}

async fn failure_reasons_most_frequent_first(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 6).await;
    let got = claim(&*s, c, e, 6).await;
    let reasons = [
        Some("blocked"),
        Some("invalid"),
        Some("blocked"),
        None,
        Some("blocked"),
    ];
    let mut updates: Vec<_> = got
        .iter()
        .zip(reasons)
        .map(|(m, r)| {
            let mut u = update(m.id, MessageState::Failed, vec![attempt("rejected", 0)]);
            u.reason = r.map(str::to_string);
            u
        })
        .collect();
    updates.push(update(
        got[5].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    ));
    s.commit_chunk(c, e, &updates).await.expect("commit");
    let top = s.failure_reasons(c, 10).await.expect("reasons");
    assert_eq!(
        top,
        [
            ("blocked".to_string(), 3),
            ("invalid".to_string(), 1),
            ("unknown".to_string(), 1)
        ]
    );
    assert_eq!(s.failure_reasons(c, 1).await.expect("top 1").len(), 1);
}

async fn requeue_retryable_returns_only_retryable_failures(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 3).await;
    let got = claim(&*s, c, e, 3).await;
    let mut transient = update(
        got[0].id,
        MessageState::Failed,
        vec![attempt("transient", 0)],
    );
    transient.retryable = true;
    let updates = [
        transient,
        update(
            got[1].id,
            MessageState::Failed,
            vec![attempt("rejected", 0)],
        ),
        update(got[2].id, MessageState::Sent, vec![attempt("accepted", 0)]),
    ];
    s.commit_chunk(c, e, &updates).await.expect("commit");
    assert_eq!(s.requeue_retryable(c).await.expect("requeue"), 1);
    assert_eq!(s.requeue_retryable(c).await.expect("again"), 0);
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.pending, n.failed, n.sent), (1, 1, 1));
    assert_eq!(claim(&*s, c, e, 5).await[0].id, got[0].id);
}

async fn finish_execution_releases_the_lease(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 1).await;
    s.request_stop(c).await.expect("stop");
    s.finish_execution(c, e, "STOPPED", "STOPPED", "stopped by operator", "STOPPED")
        .await
        .expect("finish");
    let camp = s.campaign(c).await.expect("campaign");
    assert_eq!(camp.status, "STOPPED");
    assert_eq!(camp.exit_message.as_deref(), Some("stopped by operator"));
    assert!(camp.lease.is_none() && !camp.stop_requested);
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!(
        (ex.status.as_str(), ex.exit_code.as_deref()),
        ("STOPPED", Some("STOPPED"))
    );
    assert!(ex.ended_at.is_some());
    // The next run starts from an empty lease.
    let e2 = s
        .start_execution(c, None, "h", 2, "x")
        .await
        .expect("restart");
    assert!(e2 > e);
}

async fn audit_filters_and_pages(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 5).await;
    let got = claim(&*s, c, e, 2).await;
    let sent: Vec<_> = got
        .iter()
        .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 0)]))
        .collect();
    s.commit_chunk(c, e, &sent).await.expect("commit");
    let all = AuditFilter {
        campaign: c,
        limit: 2,
        ..AuditFilter::default()
    };
    let p1 = s.audit(&all).await.expect("page 1");
    let next = |last: &AuditRow| AuditFilter {
        after_id: last.id,
        after_seq: last.seq,
        ..all.clone()
    };
    let p2 = s.audit(&next(&p1[1])).await.expect("page 2");
    let p3 = s.audit(&next(&p2[1])).await.expect("page 3");
    assert_eq!(p3.len(), 1);
    assert!(
        s.audit(&next(&p3[0]))
            .await
            .expect("past the end")
            .is_empty()
    );
    let phones: Vec<String> = [p1, p2, p3].concat().into_iter().map(|r| r.phone).collect();
    let want: Vec<String> = (0..5).map(|i| phone(i).as_str().to_string()).collect();
    assert_eq!(phones, want);
    // A negative limit is no limit (SQLite's rule).
    let unlimited = s
        .audit(&AuditFilter {
            limit: -1,
            ..all.clone()
        })
        .await
        .expect("no limit");
    assert_eq!(unlimited.len(), 5);
    let by_phone = s
        .audit(&AuditFilter {
            phone: Some(phone(3).as_str().into()),
            limit: 10,
            ..all.clone()
        })
        .await
        .expect("by phone");
    assert_eq!(by_phone.len(), 1);
    assert_eq!(by_phone[0].status, "pending");
    let by_state = s
        .audit(&AuditFilter {
            state: Some(MessageState::Sent),
            limit: 10,
            ..all.clone()
        })
        .await
        .expect("by state");
    let ids: Vec<i64> = by_state.iter().map(|r| r.id).collect();
    assert_eq!(ids, [got[0].id, got[1].id]);
    let sent_p2 = s
        .audit(&AuditFilter {
            state: Some(MessageState::Sent),
            limit: 1,
            after_id: by_state[0].id,
            after_seq: by_state[0].seq,
            ..all.clone()
        })
        .await
        .expect("sent, page 2");
    assert_eq!(sent_p2.len(), 1);
    assert_eq!(sent_p2[0].id, got[1].id);
    let none = s
        .audit(&AuditFilter {
            phone: Some(phone(3).as_str().into()),
            state: Some(MessageState::Sent),
            limit: 10,
            ..all
        })
        .await
        .expect("both filters");
    assert!(none.is_empty());
}

async fn purge_deletes_only_old_rows_of_finished_campaigns(s: Arc<dyn Store>) {
    let (done, de) = running(&*s, "done", 3).await;
    let got = claim(&*s, done, de, 3).await;
    let sent: Vec<_> = got
        .iter()
        .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 0)]))
        .collect();
    s.commit_chunk(done, de, &sent).await.expect("commit");
    s.finish_execution(done, de, "COMPLETED", "COMPLETED", "all sent", "COMPLETED")
        .await
        .expect("finish");
    let (live, le) = running(&*s, "live", 1).await;
    let got = claim(&*s, live, le, 1).await;
    let live_sent = [update(
        got[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    s.commit_chunk(live, le, &live_sent)
        .await
        .expect("commit live");

    let past = Utc::now() - chrono::Duration::hours(1);
    let r = s.purge(past, 2).await.expect("purge nothing");
    assert_eq!((r.attempts_deleted, r.executions_deleted), (0, 0));
    let future = Utc::now() + chrono::Duration::hours(1);
    let r = s.purge(future, 2).await.expect("purge");
    assert_eq!((r.attempts_deleted, r.executions_deleted), (3, 1));
    assert!(r.db_bytes > 0 && r.free_bytes <= r.db_bytes, "{r:?}");
    assert!(s.disk_usage().await.expect("disk usage").db_bytes > 0);
    assert!(s.executions(done).await.expect("executions").is_empty());
    assert_eq!(s.executions(live).await.expect("executions").len(), 1);
    // Messages stay: the audit of a purged campaign still lists them.
    assert_eq!(s.counts(done).await.expect("counts").sent, 3);
}

async fn delete_refuses_a_live_lease_and_removes_everything(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 2).await;
    let got = claim(&*s, c, e, 1).await;
    let sent = [update(
        got[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    s.commit_chunk(c, e, &sent).await.expect("commit");
    let m = assert_conflict(s.delete_campaign(c, None).await, "delete while running");
    assert!(m.contains("stop it first"), "{m}");
    assert_eq!(s.counts(c).await.expect("counts").total, 2);
    s.delete_campaign(c, Some(e))
        .await
        .expect("delete, holder known dead");
    assert_not_found(s.campaign(c).await, "deleted campaign");
    assert_eq!(s.counts(c).await.expect("counts"), Counts::default());
    assert!(s.executions(c).await.expect("executions").is_empty());
    assert_not_found(s.delete_campaign(c, None).await, "delete twice");
    // The segment is untouched: a new campaign can use it (SQLite may reuse the id).
    let again = create_campaign(&*s, "seg", true).await;
    assert_eq!(s.campaign(again).await.expect("new").status, "CREATED");
}
