//! Conformance of what several gateways per campaign need: the campaign's gateway list and
//! split flag, the gateway recorded for each message (read back by `in_doubt`, so that a
//! message is looked up where it went, and shown by `audit`), and `requeue_in_doubt`
//! (`--resend-in-doubt`).

use super::*;

conformance!(
    a_campaign_keeps_its_gateways_and_split,
    in_doubt_names_the_gateway_of_the_last_request,
    requeue_in_doubt_returns_only_in_doubt_messages,
);

async fn a_campaign_keeps_its_gateways_and_split(s: Arc<dyn Store>) {
    import_segment(&*s, "seg", 0..2).await;
    let segment = s.segment("seg").await.expect("segment").expect("exists");
    let id = s
        .create_campaign(&NewCampaign {
            gateway: "nhn,kannel".into(),
            split: true,
            ad: false,
            ..new_campaign("two", "seg", &segment.imported_at)
        })
        .await
        .expect("create");
    let c = s.campaign(id).await.expect("campaign");
    assert_eq!(c.gateways(), vec!["nhn", "kannel"]);
    assert!(c.split);
    let plain = create_campaign(&*s, "seg", false).await;
    assert!(!s.campaign(plain).await.expect("campaign").split);
}

async fn in_doubt_names_the_gateway_of_the_last_request(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 3).await;
    let got = claim(&*s, c, e, 3).await;
    assert!(got.iter().all(|m| m.gateway.is_none()), "never sent yet");
    let mut u = update(
        got[0].id,
        MessageState::InDoubt,
        vec![attempt("timeout", 0)],
    );
    u.gateway = Some("kannel".into());
    s.commit_chunk(&e, &[u]).await.expect("commit");
    // The run dies; the next one settles what it left.
    let e = start(&*s, c, Some(e.execution), "host-b", 2, "died")
        .await
        .expect("takeover");
    let doubt = s.in_doubt(&e, 0, 10).await.expect("in doubt");
    assert_eq!(doubt.len(), 3, "one in doubt, two left sending");
    assert_eq!(doubt[0].gateway.as_deref(), Some("kannel"));
    assert!(doubt[1..].iter().all(|m| m.gateway.is_none()));
    // When it went in doubt is known (a bound on when the gateway may have taken it); not for
    // those left `sending`, whose last request was never recorded.
    let since = doubt[0]
        .in_doubt_at
        .expect("in doubt since its recorded attempt");
    assert!(
        (chrono::Utc::now() - since).num_seconds().abs() < 60,
        "{since}"
    );
    assert!(doubt[1..].iter().all(|m| m.in_doubt_at.is_none()));
    // A later update without a gateway keeps the recorded one.
    let mut again = update(got[0].id, MessageState::InDoubt, vec![]);
    again.gateway = None;
    s.commit_chunk(&e, &[again]).await.expect("commit");
    let doubt = s.in_doubt(&e, 0, 1).await.expect("in doubt");
    assert_eq!(doubt[0].gateway.as_deref(), Some("kannel"));
    // The audit says through whom.
    let rows = audit_page(&*s, c, 10).await;
    let first = rows.iter().find(|r| r.id == got[0].id).expect("row");
    assert_eq!(first.gateway.as_deref(), Some("kannel"));
    assert!(
        rows.iter()
            .filter(|r| r.id != got[0].id)
            .all(|r| r.gateway.is_none())
    );
    // `--split` carries on from the messages recorded per gateway.
    let mut u = update(got[1].id, MessageState::Sent, vec![attempt("accepted", 0)]);
    u.gateway = Some("nhn".into());
    let mut v = update(
        got[2].id,
        MessageState::Failed,
        vec![attempt("rejected", 0)],
    );
    v.gateway = Some("kannel".into());
    s.commit_chunk(&e, &[u, v]).await.expect("commit");
    assert_eq!(
        s.gateway_messages(c).await.expect("per gateway"),
        vec![("kannel".to_string(), 2), ("nhn".to_string(), 1)]
    );
}

async fn requeue_in_doubt_returns_only_in_doubt_messages(s: Arc<dyn Store>) {
    let (c, e) = running(&*s, "seg", 4).await;
    let got = claim(&*s, c, e, 4).await;
    let updates = vec![
        update(
            got[0].id,
            MessageState::InDoubt,
            vec![attempt("timeout", 0)],
        ),
        update(
            got[1].id,
            MessageState::InDoubt,
            vec![attempt("timeout", 0)],
        ),
        update(got[2].id, MessageState::Sent, vec![attempt("accepted", 0)]),
        update(
            got[3].id,
            MessageState::Failed,
            vec![attempt("rejected", 0)],
        ),
    ];
    s.commit_chunk(&e, &updates).await.expect("commit");
    assert_eq!(s.requeue_in_doubt(c).await.expect("requeue"), 2);
    let n = s.counts(c).await.expect("counts");
    assert_eq!((n.pending, n.in_doubt, n.sent, n.failed), (2, 0, 1, 1));
    assert_eq!(s.requeue_in_doubt(c).await.expect("again"), 0);
}
