//! Conformance of delivery reports (`record_delivery`, `delivery_reports`, `report_counts`,
//! and the delivery side of `counts` and `audit`): a report applies whatever the send state,
//! twice is a duplicate, a final state never moves, unknown refs are logged and counted, and of
//! concurrent reports for one ref exactly one applies.

use super::*;

conformance!(
    reports_apply_once_and_never_move_a_final_state,
    a_report_before_the_send_commits_survives_the_commit,
    unknown_refs_are_logged_and_counted_per_gateway,
    concurrent_reports_for_one_ref_apply_once,
    audit_and_counts_show_the_delivery_state,
);

fn report(r: &str, status: ReportStatus, code: Option<&str>) -> DeliveryReport {
    DeliveryReport {
        gateway: "kannel".into(),
        msg_ref: r.into(),
        status,
        code: code.map(str::to_string),
        at: Utc::now(),
    }
}

const DELIVERED: ReportStatus = ReportStatus::Final(DeliveryState::Delivered);
const UNDELIVERED: ReportStatus = ReportStatus::Final(DeliveryState::Undelivered);

/// Sends the campaign's first `n` messages (committed `sent`); returns their refs.
async fn sent(s: &dyn Store, c: i64, e: WorkerToken, n: usize) -> Vec<String> {
    let msgs = claim(s, c, e, n).await;
    let updates: Vec<MessageUpdate> = msgs
        .iter()
        .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 1)]))
        .collect();
    s.commit_chunk(&e, &updates).await.expect("commit");
    msgs.into_iter().map(|m| m.msg_ref).collect()
}

async fn delivery_of(s: &dyn Store, c: i64, r: &str) -> AuditRow {
    let rows = audit_page(s, c, 1000).await;
    rows.into_iter()
        .find(|row| row.msg_ref == r)
        .expect("row of ref")
}

async fn reports_apply_once_and_never_move_a_final_state(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "dl", 3).await;
    let refs = sent(&*s, c, e, 3).await;
    let r0 = &refs[0];
    let rec = |r: DeliveryReport| {
        let s = s.clone();
        async move { s.record_delivery(&r).await.expect("record") }
    };
    // Out of order: the SMSC's intermediate ack after the final report changes nothing.
    assert_eq!(
        rec(report(r0, DELIVERED, Some("1000"))).await,
        DeliveryEffect::Applied
    );
    assert_eq!(
        rec(report(r0, DELIVERED, Some("1000"))).await,
        DeliveryEffect::Duplicate
    );
    assert_eq!(
        rec(report(r0, ReportStatus::Intermediate, Some("ACK"))).await,
        DeliveryEffect::Intermediate
    );
    assert_eq!(
        rec(report(r0, UNDELIVERED, Some("3001"))).await,
        DeliveryEffect::Ignored
    );
    let row = delivery_of(&*s, c, r0).await;
    assert_eq!(row.delivery.as_deref(), Some("delivered"));
    assert_eq!(row.delivery_code.as_deref(), Some("1000"));
    assert!(row.delivered_at.is_some());
    assert_eq!(row.status, "sent", "the send state is untouched");
    let log = s.delivery_reports(r0).await.expect("log");
    let effects: Vec<&str> = log.iter().map(|l| l.effect.as_str()).collect();
    assert_eq!(effects, ["applied", "duplicate", "intermediate", "ignored"]);
    // An intermediate report first leaves the delivery state open for the final one.
    assert_eq!(
        rec(report(&refs[1], ReportStatus::Intermediate, None)).await,
        DeliveryEffect::Intermediate
    );
    assert_eq!(delivery_of(&*s, c, &refs[1]).await.delivery, None);
    assert_eq!(
        rec(report(&refs[1], UNDELIVERED, Some("3003"))).await,
        DeliveryEffect::Applied
    );
    let row = delivery_of(&*s, c, &refs[1]).await;
    assert_eq!(row.delivery.as_deref(), Some("undelivered"));
    assert_eq!(row.delivery_code.as_deref(), Some("3003"));
}

async fn a_report_before_the_send_commits_survives_the_commit(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "early", 2).await;
    let msgs = claim(&*s, c, e, 2).await;
    // The gateway's report beats the run's commit (the message is still `sending`).
    let early = report(&msgs[0].msg_ref, DELIVERED, Some("1000"));
    assert_eq!(
        s.record_delivery(&early).await.expect("record"),
        DeliveryEffect::Applied
    );
    let updates: Vec<MessageUpdate> = msgs
        .iter()
        .map(|m| update(m.id, MessageState::Sent, vec![attempt("accepted", 1)]))
        .collect();
    s.commit_chunk(&e, &updates).await.expect("commit");
    let row = delivery_of(&*s, c, &msgs[0].msg_ref).await;
    assert_eq!(row.status, "sent");
    assert_eq!(row.delivery.as_deref(), Some("delivered"));
    let counts = s.counts(c).await.expect("counts");
    assert_eq!(
        (counts.sent, counts.delivered, counts.undelivered),
        (2, 1, 0)
    );
}

async fn unknown_refs_are_logged_and_counted_per_gateway(s: Arc<dyn Store>) {
    let mut r = report("nobody-1", DELIVERED, None);
    assert_eq!(
        s.record_delivery(&r).await.expect("record"),
        DeliveryEffect::Unknown
    );
    r.gateway = "nhn".into();
    assert_eq!(
        s.record_delivery(&r).await.expect("record"),
        DeliveryEffect::Unknown
    );
    // Not a ref munja writes, or one past the campaign's last message.
    let (c, e) = running(&*s, "few", 1).await;
    let real = sent(&*s, c, e, 1).await.remove(0);
    let (uid, _) = real.rsplit_once('-').expect("uid-seq");
    for bad in ["nodash", "-5", "abc-x", &format!("{uid}-99")] {
        r.msg_ref = bad.to_string();
        assert_eq!(
            s.record_delivery(&r).await.expect("record"),
            DeliveryEffect::Unknown,
            "{bad}"
        );
    }
    assert_eq!(
        s.report_counts(Some("nhn")).await.expect("counts").unknown,
        5
    );
    assert_eq!(s.report_counts(None).await.expect("counts").unknown, 6);
    let kannel = s.report_counts(Some("kannel")).await.expect("counts");
    assert_eq!(
        kannel,
        ReportCounts {
            unknown: 1,
            ..Default::default()
        }
    );
    assert_eq!(s.delivery_reports("nobody-1").await.expect("log").len(), 2);
}

async fn concurrent_reports_for_one_ref_apply_once(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "race", 1).await;
    let refs = sent(&*s, c, e, 1).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let s = s.clone();
        let status = if i % 2 == 0 { DELIVERED } else { UNDELIVERED };
        let r = report(&refs[0], status, Some("x"));
        set.spawn(async move { s.record_delivery(&r).await });
    }
    let mut applied = 0;
    while let Some(res) = set.join_next().await {
        if res.expect("join").expect("record") == DeliveryEffect::Applied {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(s.report_counts(None).await.expect("counts").applied, 1);
}

async fn audit_and_counts_show_the_delivery_state(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "au", 5).await;
    let refs = sent(&*s, c, e, 5).await;
    for (i, r) in refs.iter().enumerate() {
        let status = if i < 3 { DELIVERED } else { UNDELIVERED };
        s.record_delivery(&report(r, status, Some("c")))
            .await
            .expect("record");
    }
    let counts = s.counts(c).await.expect("counts");
    assert_eq!((counts.delivered, counts.undelivered), (3, 2));
    let page = |after_id: i64, d: DeliveryState| AuditFilter {
        campaign: c,
        delivery: Some(d),
        after_id,
        limit: 2,
        ..Default::default()
    };
    let first = s
        .audit(&page(0, DeliveryState::Delivered))
        .await
        .expect("audit");
    assert_eq!(first.len(), 2);
    let rest = s
        .audit(&page(first[1].id, DeliveryState::Delivered))
        .await
        .expect("audit");
    assert_eq!(rest.len(), 1);
    let undelivered = s
        .audit(&page(0, DeliveryState::Undelivered))
        .await
        .expect("audit");
    assert!(
        undelivered
            .iter()
            .all(|r| r.delivery.as_deref() == Some("undelivered"))
    );
    let by_phone = s
        .audit(&AuditFilter {
            campaign: c,
            phone: Some(phone(0).as_str().to_string()),
            delivery: Some(DeliveryState::Delivered),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(by_phone.len(), 1);
}
