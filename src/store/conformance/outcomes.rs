//! Conformance of what follows a run's chunks: cancel, in-doubt paging, fresh opt-outs, failure
//! reasons, requeue, finish, audit, purge and delete.

use super::*;

conformance!(
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

async fn cancel_live_and_dead_runs(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "live", 4).await;
    claim(&*s, c, e, 1).await;
    assert_eq!(s.cancel(c, None).await.expect("cancel live"), 3);
    let camp = s.campaign(c).await.expect("campaign");
    assert_eq!(camp.status, "STARTED", "the live run finishes it");
    assert!(camp.cancel_requested && camp.stop_requested);
    assert_eq!(camp.lease.expect("lease kept").execution, e.execution);
    assert_eq!(s.heartbeat(&e).await.expect("beat"), (true, true));
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.cancelled, n.sending, n.pending), (3, 1, 0));

    let (d, de) = running(&*s, "dead", 2).await;
    assert_eq!(
        s.cancel(d, Some(de.execution)).await.expect("cancel dead"),
        2
    );
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
    s.commit_chunk(&e, &doubt).await.expect("commit in doubt");
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.in_doubt, n.sending, n.pending), (2, 3, 2));
    assert!(!n.all_final());
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!(
        (ex.read_count, ex.commits),
        (0, 1),
        "in doubt is not read yet"
    );
    // A live worker's own claims are not in doubt, to it or to anyone.
    let own: Vec<i64> = s
        .in_doubt(&e, 0, 100)
        .await
        .expect("in doubt")
        .iter()
        .map(|m| m.id)
        .collect();
    let doubted: Vec<i64> = got[..2].iter().map(|m| m.id).collect();
    assert_eq!(
        own, doubted,
        "only the in-doubt ones, not its own in flight"
    );
    // The run dies; the next one settles all five, a page at a time.
    let e2 = start(&*s, c, Some(e.execution), "host-b", 2, "died")
        .await
        .expect("takeover");
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.in_doubt(&e2, after, 2).await.expect("in doubt");
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
        s.in_doubt(&e2, 0, 1).await.expect("first")[0].attempts,
        1,
        "the timed-out attempt counts"
    );
    // In doubt is never claimed again, nor cancelled.
    let rest = claim(&*s, c, e2, 10).await;
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|m| !want.contains(&m.id)));
    let (_, other) = running(&*s, "other", 2).await;
    assert!(s.in_doubt(&other, 0, 10).await.expect("other").is_empty());
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
    s.commit_chunk(&e, &updates).await.expect("commit");
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
    s.commit_chunk(&e, &updates).await.expect("commit");
    assert_eq!(s.requeue_retryable(c).await.expect("requeue"), 1);
    assert_eq!(s.requeue_retryable(c).await.expect("again"), 0);
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.pending, n.failed, n.sent), (1, 1, 1));
    assert_eq!(claim(&*s, c, e, 5).await[0].id, got[0].id);
}

async fn finish_execution_releases_the_lease(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 1).await;
    s.request_stop(c).await.expect("stop");
    s.finish_execution(&e, &ExecutionEnd::same("STOPPED", "stopped by operator"))
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
    let e2 = start(&*s, c, None, "h", 2, "x").await.expect("restart");
    assert!(e2.execution > e.execution);
}

async fn audit_filters_and_pages(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 5).await;
    let got = claim(&*s, c, e, 2).await;
    let sent: Vec<_> = got
        .iter()
        .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 0)]))
        .collect();
    s.commit_chunk(&e, &sent).await.expect("commit");
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
    let done_refs: Vec<String> = got.iter().map(|m| m.msg_ref.clone()).collect();
    let sent: Vec<_> = got
        .iter()
        .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 0)]))
        .collect();
    s.commit_chunk(&de, &sent).await.expect("commit");
    s.finish_execution(&de, &ExecutionEnd::same("COMPLETED", "all sent"))
        .await
        .expect("finish");
    let (live, le) = running(&*s, "live", 1).await;
    let got = claim(&*s, live, le, 1).await;
    let live_sent = [update(
        got[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    s.commit_chunk(&le, &live_sent).await.expect("commit live");
    let live_ref = got[0].msg_ref.clone();
    // Delivery reports for every sent message, and one for a ref no message has.
    for r in done_refs.iter().chain([&live_ref, &"nobody-1".to_string()]) {
        s.record_delivery(&delivered(r)).await.expect("report");
    }

    let past = Utc::now() - chrono::Duration::hours(1);
    let r = s.purge(past, 2).await.expect("purge nothing");
    let counts = (r.attempts_deleted, r.executions_deleted, r.reports_deleted);
    assert_eq!(counts, (0, 0, 0));
    let future = Utc::now() + chrono::Duration::hours(1);
    let r = s.purge(future, 2).await.expect("purge");
    let counts = (r.attempts_deleted, r.executions_deleted, r.reports_deleted);
    assert_eq!(counts, (3, 1, 4), "the running campaign's report stays");
    assert!(
        s.delivery_reports(&done_refs[0])
            .await
            .expect("reports")
            .is_empty()
    );
    assert_eq!(
        s.delivery_reports(&live_ref).await.expect("reports").len(),
        1
    );
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
    s.commit_chunk(&e, &sent).await.expect("commit");
    s.record_delivery(&delivered(&got[0].msg_ref))
        .await
        .expect("report");
    let m = assert_conflict(s.delete_campaign(c, None).await, "delete while running");
    assert!(m.contains("stop it first"), "{m}");
    assert_eq!(s.counts(c).await.expect("counts").total, 2);
    s.delete_campaign(c, Some(e.execution))
        .await
        .expect("delete, holder known dead");
    assert_not_found(s.campaign(c).await, "deleted campaign");
    assert_eq!(s.counts(c).await.expect("counts"), Counts::default());
    assert!(s.executions(c).await.expect("executions").is_empty());
    let reports = s.delivery_reports(&got[0].msg_ref).await.expect("reports");
    assert!(
        reports.is_empty(),
        "its delivery reports go with it: {reports:?}"
    );
    assert_not_found(s.delete_campaign(c, None).await, "delete twice");
    // The segment is untouched: a new campaign can use it (SQLite may reuse the id).
    let again = create_campaign(&*s, "seg", true).await;
    assert_eq!(s.campaign(again).await.expect("new").status, "CREATED");
}

/// A final "delivered" report for `msg_ref`, as a gateway sends it.
fn delivered(msg_ref: &str) -> DeliveryReport {
    DeliveryReport {
        gateway: "sim".into(),
        msg_ref: msg_ref.into(),
        status: ReportStatus::Final(DeliveryState::Delivered),
        code: Some("0".into()),
        at: Utc::now(),
    }
}
