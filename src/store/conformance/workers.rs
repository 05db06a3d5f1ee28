//! Conformance of several workers on one campaign: joining, disjoint claims, exact counters,
//! rescue of a dead worker's claims, fencing of the rescued worker, the last worker's end.
//! On a store with one worker per campaign (SQLite) joining is refused, and that is checked.

use std::time::Duration;

use super::*;

conformance!(
    workers_join_claim_disjoint_chunks_and_keep_exact_counters,
    a_dead_worker_is_rescued_and_fenced_off,
    only_the_last_worker_ends_the_execution,
    a_heartbeat_renews_its_worker_and_the_lease_until_it_ends,
    a_takeover_judged_before_a_worker_joined_is_refused,
);

/// Joins the execution of `first` as worker on `host`, or `None` where a store refuses it.
async fn join(s: &dyn Store, first: WorkerToken, host: &str) -> Option<WorkerToken> {
    let how = Enlist::Join {
        execution: first.execution,
    };
    let joined = s
        .start_worker(first.campaign, &how, &process(host, 7))
        .await;
    if s.several_workers() {
        Some(joined.expect("join"))
    } else {
        let m = assert_conflict(joined, "join on a one-worker store");
        assert!(m.contains("one runner per campaign"), "{m}");
        None
    }
}

async fn workers_join_claim_disjoint_chunks_and_keep_exact_counters(s: Arc<dyn Store>) {
    let (c, a) = running(&*s, "seg", 200).await;
    let Some(b) = join(&*s, a, "host-b").await else {
        return;
    };
    assert_eq!((b.campaign, b.execution), (a.campaign, a.execution));
    assert_ne!(a.worker, b.worker);
    // Claims at the same moment: never the same message twice.
    let mut tasks = tokio::task::JoinSet::new();
    for w in [a, b, a, b, a, b] {
        let s = s.clone();
        tasks.spawn(async move { (w, claim(&*s, c, w, 30).await) });
    }
    let mut seen = std::collections::HashSet::new();
    let mut per_worker: Vec<(WorkerToken, Vec<ClaimedMessage>)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (w, got) = r.expect("join");
        assert_eq!(got.len(), 30);
        for m in &got {
            assert!(seen.insert(m.id), "message {} claimed twice", m.id);
        }
        per_worker.push((w, got));
    }
    for (w, got) in &per_worker {
        let sent: Vec<_> = got
            .iter()
            .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 0)]))
            .collect();
        s.commit_chunk(w, &sent).await.expect("commit");
    }
    // A worker cannot commit another's claim.
    let foreign = per_worker
        .iter()
        .find(|(w, _)| *w == b)
        .map(|(_, got)| got[0].id)
        .expect("b claimed");
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.sent, n.sending, n.pending), (180, 0, 20));
    let rows = s.workers(c).await.expect("workers");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows.iter().map(|r| r.sent).sum::<i64>(), 180);
    assert!(
        rows.iter().all(|r| r.sent == 90 && r.commits == 3),
        "{rows:?}"
    );
    let ex = &s.executions(c).await.expect("executions")[0];
    assert_eq!(
        (ex.sent, ex.commits),
        (180, 6),
        "the execution sums its workers"
    );
    let more = claim(&*s, c, a, 5).await;
    let stolen = [update(
        more[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    assert_lease_lost(
        s.commit_chunk(&b, &stolen).await,
        "commit of another's claim",
    );
    assert!(foreign > 0);
    assert_eq!(s.counts(c).await.expect("counts").sent, 180);
}

async fn a_dead_worker_is_rescued_and_fenced_off(s: Arc<dyn Store>) {
    let (c, a) = running(&*s, "seg", 10).await;
    let Some(b) = join(&*s, a, "host-b").await else {
        // One worker per campaign: a dead one is taken over whole, never rescued.
        assert_eq!(
            s.rescue(&a, 0, &[]).await.expect("rescue"),
            Rescued::default()
        );
        return;
    };
    let got = claim(&*s, c, a, 4).await;
    let b_claims = claim(&*s, c, b, 2).await;
    // Nothing to rescue while `a` beats within the timeout; b sees a's claims in flight.
    let r = s.rescue(&b, 3600, &[]).await.expect("rescue");
    assert_eq!((r.workers, r.messages, r.others_sending), (0, 0, 4));
    assert!(s.in_doubt(&b, 0, 10).await.expect("doubt").is_empty());
    // `a` is seen dead (its process gone): b rescues its four claims and settles them.
    let r = s.rescue(&b, 3600, &[a.worker]).await.expect("rescue");
    assert_eq!((r.workers, r.messages, r.others_sending), (1, 4, 0));
    let doubt: Vec<i64> = s
        .in_doubt(&b, 0, 10)
        .await
        .expect("doubt")
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(doubt, got.iter().map(|m| m.id).collect::<Vec<_>>());
    // The rescued worker writes nothing more.
    let late = [update(
        got[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    assert_lease_lost(s.commit_chunk(&a, &late).await, "rescued worker's commit");
    assert_lease_lost(s.heartbeat(&a).await, "rescued worker's heartbeat");
    assert_lease_lost(
        s.claim_chunk(ClaimRequest {
            worker: a,
            limit: 5,
            night_only: false,
            cap: None,
        })
        .await,
        "rescued worker's claim",
    );
    // The rescuer does: the rescued claims and its own.
    s.commit_chunk(&b, &late).await.expect("rescuer commit");
    let own = [update(
        b_claims[0].id,
        MessageState::Sent,
        vec![attempt("accepted", 0)],
    )];
    s.commit_chunk(&b, &own).await.expect("own commit");
    assert_eq!(s.counts(c).await.expect("counts").sent, 2);
    let rows = s.workers(c).await.expect("workers");
    let dead = rows.iter().find(|r| r.id == a.worker).expect("a");
    assert_eq!(dead.status, "ABANDONED");
    assert!(dead.ended_at.is_some());
    // A silent worker is rescued once it has been silent for the timeout by the store's
    // clock, and not a moment before; one that beats in time is left alone.
    let Some(d) = join(&*s, a, "host-d").await else {
        return;
    };
    claim(&*s, c, d, 1).await;
    // d sees b alive with a lower id: b, not d, is the one to end the execution.
    let r = s.rescue(&d, 30, &[]).await.expect("rescue");
    assert_eq!((r.others_started, r.lower_alive), (1, 1));
    let age = r.lower_beat_age_ms.expect("b's beat");
    assert!((0..30_000).contains(&age), "b beat {age} ms ago");
    s.clock().advance(Duration::from_secs(20));
    let r = s.rescue(&d, 30, &[]).await.expect("rescue");
    let age = r.lower_beat_age_ms.expect("b's beat");
    assert!(age >= 20_000, "b beat {age} ms ago by the store's clock");
    assert_eq!(
        s.rescue(&b, 30, &[])
            .await
            .expect("rescue")
            .lower_beat_age_ms,
        None
    );
    s.heartbeat(&b).await.expect("b beats");
    s.heartbeat(&d).await.expect("d beats");
    s.clock().advance(Duration::from_secs(25));
    let r = s.rescue(&b, 30, &[]).await.expect("rescue");
    let silent_but_within_the_timeout = (0, 0, 1, 1);
    assert_eq!(
        (r.workers, r.messages, r.others_sending, r.others_silent),
        silent_but_within_the_timeout
    );
    assert_eq!((r.others_started, r.lower_alive), (1, 0));
    s.heartbeat(&b).await.expect("b beats");
    s.clock().advance(Duration::from_secs(10));
    let r = s.rescue(&b, 30, &[]).await.expect("rescue");
    assert_eq!(
        (r.workers, r.messages, r.others_sending, r.others_silent),
        (1, 1, 0, 0)
    );
    assert_eq!(r.others_started, 0, "b is the last worker left");
    assert!(s.heartbeat(&b).await.is_ok(), "the rescuer beat 10 s ago");
}

async fn only_the_last_worker_ends_the_execution(s: Arc<dyn Store>) {
    let (c, a) = running(&*s, "seg", 4).await;
    let b = join(&*s, a, "host-b").await;
    if let Some(b) = b {
        assert!(
            !s.finish_worker(&a, "COMPLETED", "queue dry")
                .await
                .expect("finish a"),
            "b still runs"
        );
        assert_lease_lost(s.heartbeat(&a).await, "an ended worker's heartbeat");
        assert!(s.heartbeat(&b).await.is_ok(), "the execution goes on");
        assert!(
            s.finish_worker(&b, "COMPLETED", "queue dry")
                .await
                .expect("finish b")
        );
        s.finish_execution(&b, &ExecutionEnd::same("COMPLETED", "done"))
            .await
            .expect("finish execution");
    } else {
        assert!(
            s.finish_worker(&a, "COMPLETED", "done")
                .await
                .expect("finish")
        );
        s.finish_execution(&a, &ExecutionEnd::same("COMPLETED", "done"))
            .await
            .expect("finish execution");
    }
    let camp = s.campaign(c).await.expect("campaign");
    assert_eq!(camp.status, "COMPLETED");
    assert!(camp.lease.is_none());
    let rows = s.workers(c).await.expect("workers");
    assert!(rows.iter().all(|r| r.status == "COMPLETED"), "{rows:?}");
}

/// Seconds between `at` (RFC 3339, the store's clock) and the store's clock now.
fn age_secs(s: &dyn Store, at: &str) -> i64 {
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("a stored time");
    (s.clock().now() - at.with_timezone(&Utc)).num_seconds()
}

/// A heartbeat renews its worker's heartbeat and the lease, whichever worker of the execution
/// beats; the lease ages from the latest beat of any of them, and an ended worker's heartbeat
/// fails without renewing anything.
async fn a_heartbeat_renews_its_worker_and_the_lease_until_it_ends(s: Arc<dyn Store>) {
    let (c, a) = running(&*s, "seg", 4).await;
    let lease_age = |camp: &Campaign| {
        (Utc::now() - camp.lease.as_ref().expect("lease").heartbeat_at).num_seconds()
    };
    s.clock().advance(Duration::from_secs(40));
    let b = join(&*s, a, "host-b").await;
    s.heartbeat(&a).await.expect("a beats");
    let camp = s.campaign(c).await.expect("campaign");
    assert!(lease_age(&camp) <= 2, "renewed: {}s old", lease_age(&camp));
    let rows = s.workers(c).await.expect("workers");
    let row_a = rows.iter().find(|r| r.id == a.worker).expect("a");
    assert!(age_secs(&*s, &row_a.heartbeat_at) <= 2, "{row_a:?}");
    assert!(age_secs(&*s, &row_a.started_at) >= 39, "{row_a:?}");
    let Some(b) = b else {
        return;
    };
    // Only b beats from now on: the lease lives by b's beats, a's row ages.
    s.clock().advance(Duration::from_secs(40));
    s.heartbeat(&b).await.expect("b beats");
    let camp = s.campaign(c).await.expect("campaign");
    assert!(
        lease_age(&camp) <= 2,
        "b keeps the lease: {}s old",
        lease_age(&camp)
    );
    let rows = s.workers(c).await.expect("workers");
    let row_a = rows.iter().find(|r| r.id == a.worker).expect("a");
    assert!(
        (39..=42).contains(&age_secs(&*s, &row_a.heartbeat_at)),
        "{row_a:?}"
    );
    assert!(
        !s.finish_worker(&b, "COMPLETED", "queue dry")
            .await
            .expect("finish b"),
        "a still runs"
    );
    assert_lease_lost(s.heartbeat(&b).await, "an ended worker's heartbeat");
    s.clock().advance(Duration::from_secs(40));
    let camp = s.campaign(c).await.expect("campaign");
    assert!(
        lease_age(&camp) >= 39,
        "an ended worker's failed beat renews nothing: {}s old",
        lease_age(&camp)
    );
}

/// A takeover judged on the workers read before another one joined the execution must not
/// close that newcomer: the store refuses it as a conflict (the caller judges again and finds
/// the execution alive); judged with the newcomer in view, it goes ahead.
async fn a_takeover_judged_before_a_worker_joined_is_refused(s: Arc<dyn Store>) {
    let (c, a) = running(&*s, "seg", 10).await;
    let Some(b) = join(&*s, a, "host-b").await else {
        return;
    };
    let takeover = |judged: Vec<i64>| Enlist::New {
        expected: Some(a.execution),
        abandon_message: "judged gone".into(),
        judged_workers: judged,
    };
    let refused = s
        .start_worker(c, &takeover(vec![a.worker]), &process("host-c", 9))
        .await;
    let m = assert_conflict(refused, "takeover that missed a joined worker");
    assert!(m.contains(&format!("worker {} joined", b.worker)), "{m}");
    let rows = s.workers(c).await.expect("workers");
    assert!(rows.iter().all(|r| r.status == "STARTED"), "{rows:?}");
    let taken = s
        .start_worker(
            c,
            &takeover(vec![a.worker, b.worker]),
            &process("host-c", 9),
        )
        .await
        .expect("takeover that saw every worker");
    assert_ne!(taken.execution, a.execution);
    let rows = s.workers(c).await.expect("workers");
    let abandoned = rows.iter().filter(|r| r.status == "ABANDONED").count();
    assert_eq!(abandoned, 2, "{rows:?}");
}
