//! NHN Cloud: the webhook (`MESSAGE_RESULT_UPDATE` with its signature header, `UNSUBSCRIBE`)
//! on `munja serve`, and `campaign sync-results` / `optout sync` against a fake NHN Cloud
//! written from the documented request and response shapes (TOAST-DOCS/SMS en/api-guide.md and
//! en/webhook.md) as plain JSON, independent of munja's own types.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde_json::{Value, json};

use super::*;
use crate::common::{Env, n, number};
use munja::tools::sim::SimConfig;

struct Fake {
    /// Rows of `GET /sender/sms` (the documented `body.data[]`).
    sms: Vec<Value>,
    /// Rows of `GET /blockservice/recipients`.
    blocked: Vec<Value>,
    requests: AtomicU64,
}

fn page(rows: &[Value], q: &HashMap<String, String>) -> Value {
    let num: usize = q.get("pageNum").and_then(|v| v.parse().ok()).unwrap_or(1);
    let size: usize = q
        .get("pageSize")
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
        .min(1000);
    let data: Vec<Value> = rows
        .iter()
        .skip((num - 1) * size)
        .take(size)
        .cloned()
        .collect();
    json!({
        "header": {"resultCode": 0, "resultMessage": "SUCCESS", "isSuccessful": true},
        "body": {"pageNum": num, "pageSize": size, "totalCount": rows.len(), "data": data}
    })
}

fn authorised(app_key: &str, headers: &HeaderMap) -> bool {
    app_key == NHN_APP_KEY
        && headers.get("X-Secret-Key").and_then(|v| v.to_str().ok()) == Some(NHN_SECRET)
}

async fn sender_list(
    State(f): State<Arc<Fake>>,
    Path((app_key, kind)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    f.requests.fetch_add(1, Ordering::SeqCst);
    if !authorised(&app_key, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"header": {"isSuccessful": false, "resultCode": -1, "resultMessage": "bad key"}}),
            ),
        );
    }
    // "requestId or startRequestDate + endRequestDate ... is required."
    if !(q.contains_key("requestId")
        || q.contains_key("startRequestDate") && q.contains_key("endRequestDate"))
    {
        return (
            StatusCode::OK,
            axum::Json(
                json!({"header": {"isSuccessful": false, "resultCode": -1000, "resultMessage": "date required"}}),
            ),
        );
    }
    let rows: &[Value] = if kind == "sms" { &f.sms } else { &[] };
    (StatusCode::OK, axum::Json(page(rows, &q)))
}

async fn blocked_list(
    State(f): State<Arc<Fake>>,
    Path(app_key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    if !authorised(&app_key, &headers) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
    }
    (StatusCode::OK, axum::Json(page(&f.blocked, &q)))
}

async fn spawn_fake(fake: Fake) -> (String, Arc<Fake>) {
    let fake = Arc::new(fake);
    let app = Router::new()
        .route(
            "/sms/v3.0/appKeys/{app_key}/sender/{kind}",
            get(sender_list),
        )
        .route(
            "/sms/v3.0/appKeys/{app_key}/blockservice/recipients",
            get(blocked_list),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake NHN");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

fn result_row(grouping_key: &str, msg_status: &str, result_code: Value) -> Value {
    json!({
        "requestId": "20261127100630ReZQ6KZzAH0", "requestDate": "2026-11-27 10:06:30.0",
        "resultDate": "2026-11-27 10:06:42.0", "body": "(광고) ...", "sendNo": "15881234",
        "countryCode": "82", "recipientNo": "01000000000", "msgStatus": msg_status,
        "msgStatusName": "x", "resultCode": result_code, "recipientSeq": 1, "sendType": "0",
        "messageType": "SMS", "messageCount": 1, "adYn": "Y", "senderGroupingKey": "c",
        "recipientGroupingKey": grouping_key
    })
}

async fn sync_json(env: &Env, id: &str) -> Value {
    let o = ok(
        env,
        &["campaign", "sync-results", id, "--gateway", "nhn", "--json"],
    )
    .await;
    serde_json::from_str(&o.stdout).expect("sync-results json")
}

#[tokio::test]
async fn sync_results_records_final_results_once_across_pages() {
    // The fake needs the campaign's refs, which exist only once it ran: start it with another
    // account's 1,200 rows first (two pages), then the campaign's behind them.
    let env = Env::new(SimConfig::default()).await;
    let seg = env.segment_csv("seg.csv", 0, 3);
    let id = env.campaign(&seg, "hello", &[]).await;
    ok(&env, &["campaign", "run", &id]).await;
    let refs = refs(&audit(&env, &id, None).await);
    let mut sms: Vec<Value> = (0..1200)
        .map(|i| result_row(&format!("0123456789ab-{i}"), "3", json!("1000")))
        .collect();
    sms.push(result_row(&refs[0], "3", json!("1000")));
    sms.push(result_row(&refs[1], "0", json!("3001")));
    sms.push(result_row(&refs[2], "2", Value::Null));
    let (url, fake) = spawn_fake(Fake {
        sms,
        blocked: vec![],
        requests: AtomicU64::new(0),
    })
    .await;
    add_gateways(&env, &url);

    let r = sync_json(&env, &id).await;
    assert_eq!(
        (n(&r, "listed"), n(&r, "applied"), n(&r, "not_final")),
        (3, 2, 1),
        "{r}"
    );
    assert!(
        fake.requests.load(Ordering::SeqCst) >= 3,
        "both sms pages and mms asked"
    );
    let r = sync_json(&env, &id).await;
    assert_eq!(
        (n(&r, "applied"), n(&r, "duplicate")),
        (0, 2),
        "idempotent: {r}"
    );

    let st = env.status(&id).await;
    assert_eq!((n(&st, "delivered"), n(&st, "undelivered")), (1, 1), "{st}");
    let rows = audit(&env, &id, None).await;
    assert_eq!(
        rows[0]["delivered_at"], "2026-11-27T01:06:42.000Z",
        "Korea time read as such"
    );
    assert_eq!(rows[1]["delivery_code"], "3001");

    // The campaign's own gateway is http-json: it has no result search.
    let o = run(&env, &["campaign", "sync-results", &id]).await;
    assert!(
        o.code != 0 && o.stderr.contains("only nhn-cloud"),
        "{}",
        o.all()
    );
}

#[tokio::test]
async fn optout_sync_pulls_the_080_list_idempotently() {
    let blocked = vec![
        json!({"unsubscribeNo": "0808888888", "recipientNo": number(10), "requestDate": "2026-11-01 17:07:29.0"}),
        json!({"unsubscribeNo": "0808888888", "recipientNo": number(11), "requestDate": "2026-11-02 17:07:29.0"}),
        json!({"unsubscribeNo": "0808888888", "recipientNo": "0212345678", "requestDate": "2026-11-03 17:07:29.0"}),
    ];
    let (url, _fake) = spawn_fake(Fake {
        sms: vec![],
        blocked,
        requests: AtomicU64::new(0),
    })
    .await;
    let env = Env::new(SimConfig::default()).await;
    add_gateways(&env, &url);
    ok(&env, &["init"]).await;
    ok(&env, &["optout", "add", &number(11)]).await;
    let o = ok(&env, &["optout", "sync", "--gateway", "nhn", "--json"]).await;
    let r: Value = serde_json::from_str(&o.stdout).expect("json");
    let got = (
        n(&r, "listed"),
        n(&r, "added"),
        n(&r, "already_present"),
        n(&r, "rejected"),
    );
    assert_eq!(got, (3, 1, 1, 1), "{r}");
    let o = ok(&env, &["optout", "sync", "--gateway", "nhn"]).await;
    assert!(
        o.stdout.contains("0 added, 2 already present"),
        "{}",
        o.all()
    );
    assert_eq!(run(&env, &["optout", "check", &number(10)]).await.code, 0);
    let o = run(&env, &["optout", "sync", "--gateway", "sim"]).await;
    assert!(
        o.code != 0 && o.stderr.contains("only nhn-cloud"),
        "{}",
        o.all()
    );
}

async fn webhook(serve: &Serve, signature: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/dlr/nhn", serve.base))
        .header("X-Toast-Webhook-Signature", signature)
        .header("Content-Type", "application/json;charset=UTF-8")
        .json(&body)
        .send()
        .await
        .expect("post webhook");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn result_hook(key: &str, status: &str, code: &str) -> Value {
    // As documented, including the example's spelling of the grouping key.
    json!({"hookId": "20240429205809GcSUXthVA00", "senderType": "NORMAL_SMS",
           "requestId": "20240429205802y0Tl7Gbz0e0", "recipientSeq": 1,
           "requestDate": "2026-11-27T10:58:02", "receiveDate": "2026-11-27T10:58:04",
           "sendNo": "15446859", "recipientNo": "01012341234", "messageStatus": status,
           "recipientGropuingKey": key, "senderGroupingKey": "c", "resultCode": code,
           "messageCount": 1})
}

#[tokio::test]
async fn nhn_webhook_checks_its_signature_and_unsubscribes_at_once() {
    let env = Env::new(SimConfig::default()).await;
    let (id, refs) = sent_campaign(&env, 2, "http://127.0.0.1:9").await;
    let serve = Serve::start(&env);
    let results = json!({"hooksId": "h1", "webhookConfigId": "w", "productName": "SMS",
        "appKey": NHN_APP_KEY, "event": "MESSAGE_RESULT_UPDATE",
        "hooks": [result_hook(&refs[0], "COMPLETED", "1000"), result_hook(&refs[1], "FAILED", "3006")]});

    let (code, _) = webhook(&serve, "not-the-signature", results.clone()).await;
    assert_eq!(code, 401);
    let st = env.status(&id).await;
    assert_eq!(
        (n(&st, "delivered"), n(&st, "undelivered")),
        (0, 0),
        "a bad signature changes nothing"
    );

    let (code, body) = webhook(&serve, NHN_SIGNATURE, results).await;
    assert_eq!((code, body["applied"].as_i64()), (200, Some(2)), "{body}");
    let st = env.status(&id).await;
    assert_eq!((n(&st, "delivered"), n(&st, "undelivered")), (1, 1), "{st}");
    let rows = audit(&env, &id, Some("undelivered")).await;
    assert_eq!(rows[0]["delivery_code"], "3006");
    // 3006: the recipient refused; the message's own number (not the hook's) is opted out.
    let refused = rows[0]["phone"].as_str().expect("phone");
    assert_eq!(run(&env, &["optout", "check", refused]).await.code, 0);
    assert_eq!(run(&env, &["optout", "check", "01012341234"]).await.code, 1);

    let unsub = json!({"hooksId": "h2", "productName": "SMS", "appKey": NHN_APP_KEY,
        "event": "UNSUBSCRIBE", "hooks": [{"hookId": "x", "recipientNo": number(7),
        "unsubscribeNo": "0808888888", "enterpriseName": "NHN Cloud",
        "createdDateTime": "2026-11-27T11:25:10.000+09:00"}]});
    let (code, _) = webhook(&serve, "wrong", unsub.clone()).await;
    assert_eq!(code, 401);
    assert_eq!(run(&env, &["optout", "check", &number(7)]).await.code, 1);
    let (code, body) = webhook(&serve, NHN_SIGNATURE, unsub).await;
    assert_eq!((code, body["added"].as_i64()), (200, Some(1)), "{body}");
    assert_eq!(
        run(&env, &["optout", "check", &number(7)]).await.code,
        0,
        "opted out at once"
    );
    let log = serve.log();
    assert!(
        !log.contains(&number(7)),
        "numbers are masked in the log: {log}"
    );
    assert!(!log.contains(NHN_SIGNATURE), "{log}");
    assert_eq!(serve.stop().await.0, 0);
}
