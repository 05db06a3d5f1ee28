//! NHN Cloud SMS v3.0 against a fake written here from the documented shapes (TOAST-DOCS/SMS
//! `api-guide.md`: `POST /sms/v3.0/appKeys/{appKey}/sender/{sms|mms|ad-sms|ad-mms}` with
//! `X-Secret-Key`, `recipientList[]`, `sendResultList[]`; `GET /sender/{sms|mms}` searched by
//! `recipientGroupingKey`), on `serde_json::Value` only, so that a wrong field name in the
//! adapter cannot be mirrored here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use munja::tools::sim::SimConfig;
use serde_json::{Value, json};

use super::{add_gateway, create, run_with};
use crate::common::{Env, Gw, n, number};

const APP_KEY: &str = "appkey-test-1";
const SECRET: &str = "secret-test-1";
const VARS: [(&str, &str); 2] = [
    ("MUNJA_TEST_NHN_APP", APP_KEY),
    ("MUNJA_TEST_NHN_SECRET", SECRET),
];

/// How the fake answers one send request.
#[derive(Clone, Copy, PartialEq)]
enum Stall {
    /// Takes the recipients, then answers too late for the client.
    AfterTaking,
    /// Answers too late and takes nothing.
    WithoutTaking,
}

#[derive(Default)]
struct Fake {
    /// Every send request: (endpoint, body).
    sends: Vec<(String, Value)>,
    lookups: u32,
    /// recipientGroupingKey -> the stored row (as the list API returns it).
    taken: HashMap<String, Value>,
    /// How many times each recipientGroupingKey was taken.
    times: HashMap<String, u32>,
    invalid: HashSet<String>,
    /// Numbers on NHN's 080 opt-out list: per-recipient result -6001.
    refused: HashSet<String>,
    /// Numbers the carrier refuses as opted out: per-recipient result 3006.
    refused_3006: HashSet<String>,
    stalls: VecDeque<Option<Stall>>,
    seq: i64,
    /// Taken rows start as "processing" (msgStatus 2, no result yet) instead of successful.
    results_later: bool,
    /// Result searches over a time window (no recipientGroupingKey): `sync-results`.
    window_searches: u32,
    /// A taken message is listed by the search only this long after it was taken (NHN queues
    /// what it takes), and when it was taken.
    list_after: Duration,
    taken_at: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Fake>>;

fn header(ok: bool, code: i64, message: &str) -> Value {
    json!({"isSuccessful": ok, "resultCode": code, "resultMessage": message})
}

async fn send(
    State(fake): State<Shared>,
    Path((app, ep)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    if app != APP_KEY || headers.get("X-Secret-Key").and_then(|v| v.to_str().ok()) != Some(SECRET) {
        return Json(json!({"header": header(false, -1000, "Invalid appKey.")}));
    }
    let list = body["recipientList"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if list.len() > 1000 {
        return Json(json!({"header": header(false, -2016, "The max recipient size is 1000.")}));
    }
    let stall = {
        let mut f = fake.lock().expect("fake");
        f.sends.push((ep.clone(), body.clone()));
        f.stalls.pop_front().flatten()
    };
    if stall == Some(Stall::WithoutTaking) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return Json(json!({"header": header(false, -9999, "System error.")}));
    }
    let request_id = format!("20261127{:012}", rand_id(&fake));
    let mut results = Vec::new();
    {
        let mut f = fake.lock().expect("fake");
        for r in &list {
            let no = r["recipientNo"].as_str().unwrap_or("").to_string();
            let key = r["recipientGroupingKey"].as_str().unwrap_or("").to_string();
            f.seq += 1;
            let seq = f.seq;
            let code = if f.invalid.contains(&no) {
                3003
            } else if f.refused.contains(&no) {
                -6001
            } else if f.refused_3006.contains(&no) {
                3006
            } else {
                0
            };
            if code == 0 {
                *f.times.entry(key.clone()).or_insert(0) += 1;
                let (status, name) = if f.results_later {
                    ("2", "processing")
                } else {
                    ("3", "successful")
                };
                let kind = if ep.ends_with("mms") { "LMS" } else { "SMS" };
                let row = json!({"requestId": request_id, "recipientSeq": seq, "recipientNo": no,
                    "msgStatus": status, "msgStatusName": name, "recipientGroupingKey": key,
                    "messageType": kind, "senderGroupingKey": body["senderGroupingKey"],
                    "body": body["body"]});
                f.taken.insert(key.clone(), row);
                f.taken_at.insert(key.clone(), Instant::now());
            }
            results.push(json!({"recipientNo": no, "resultCode": code,
                "resultMessage": if code == 0 { "SUCCESS" } else { "FAILED" },
                "recipientSeq": seq, "recipientGroupingKey": key}));
        }
    }
    if stall == Some(Stall::AfterTaking) {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Json(
        json!({"header": header(true, 0, "SUCCESS"), "body": {"data": {
        "requestId": request_id, "statusCode": "2",
        "senderGroupingKey": body["senderGroupingKey"], "sendResultList": results}}}),
    )
}

fn rand_id(fake: &Shared) -> i64 {
    fake.lock().expect("fake").sends.len() as i64
}

async fn search(
    State(fake): State<Shared>,
    Path((_app, ep)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let mut f = fake.lock().expect("fake");
    f.lookups += 1;
    let window = q.contains_key("startRequestDate") && q.contains_key("endRequestDate");
    if !window && !q.contains_key("requestId") {
        return Json(
            json!({"header": header(false, -2011, "RequestId or start/endRequestDate is required.")}),
        );
    }
    if let Some(key) = q.get("recipientGroupingKey") {
        let listed = f
            .taken_at
            .get(key)
            .is_some_and(|t| t.elapsed() >= f.list_after);
        let data: Vec<Value> = f
            .taken
            .get(key)
            .filter(|_| listed)
            .cloned()
            .into_iter()
            .collect();
        return Json(json!({"header": header(true, 0, "SUCCESS"),
            "body": {"pageNum": 1, "pageSize": 15, "totalCount": data.len(), "data": data}}));
    }
    // The whole window, a page at a time, of this endpoint's message type.
    f.window_searches += 1;
    let kind = if ep.ends_with("mms") { "LMS" } else { "SMS" };
    let mut rows: Vec<&Value> = f
        .taken
        .values()
        .filter(|r| r["messageType"] == kind)
        .collect();
    rows.sort_by_key(|r| r["recipientSeq"].as_i64());
    let num: usize = q.get("pageNum").and_then(|v| v.parse().ok()).unwrap_or(1);
    let size: usize = q.get("pageSize").and_then(|v| v.parse().ok()).unwrap_or(15);
    let data: Vec<&Value> = rows
        .iter()
        .skip((num - 1) * size)
        .take(size)
        .copied()
        .collect();
    Json(json!({"header": header(true, 0, "SUCCESS"),
        "body": {"pageNum": num, "pageSize": size, "totalCount": rows.len(), "data": data}}))
}

/// The fake's carrier reports the final result of the message with ref `key`.
fn report(fake: &Shared, key: &str, msg_status: &str, result_code: &str) {
    let mut f = fake.lock().expect("fake");
    let row = f.taken.get_mut(key).expect("a taken message");
    row["msgStatus"] = json!(msg_status);
    row["resultCode"] = json!(result_code);
    row["resultDate"] = json!("2026-11-27 10:06:42.0");
}

async fn spawn_fake(fake: Shared) -> SocketAddr {
    let app = Router::new()
        .route(
            "/sms/v3.0/appKeys/{app}/sender/{ep}",
            post(send).get(search),
        )
        .with_state(fake);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

async fn nhn_env(policy: &str, addr: SocketAddr, extra: &str) -> Env {
    let env = Env::with(SimConfig::default(), Gw::default(), policy).await;
    add_gateway(
        &env,
        &format!(
            "name = \"nhn\"\nkind = \"nhn-cloud\"\nurl = \"http://{addr}\"\n\
             app_key_env = \"MUNJA_TEST_NHN_APP\"\nsecret_key_env = \"MUNJA_TEST_NHN_SECRET\"\n{extra}"
        ),
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_campaign_goes_1000_recipients_per_request_with_each_result_mapped() {
    let fake = Shared::default();
    {
        let mut f = fake.lock().expect("fake");
        f.invalid.extend([number(7), number(1500)]);
        f.refused.insert(number(9));
    }
    let addr = spawn_fake(fake.clone()).await;
    let env = nhn_env(
        "chunk_size = 2500",
        addr,
        "rate_per_sec = 100000\nburst = 1000\nconcurrency = 4\n",
    )
    .await;
    env.write("templates/same.txt", "봄맞이 특가 안내");
    let seg = env.segment_csv("seg.csv", 0, 2500);
    let id = create(
        &env,
        &VARS,
        seg.to_str().expect("utf-8"),
        &["--template", "same", "--gateway", "nhn"],
    )
    .await;
    let o = run_with(&env, &VARS, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let audit = env.audit_json(&id).await;
    let st = env.status(&id).await;

    let f = fake.lock().expect("fake");
    let mut sizes: Vec<usize> = f
        .sends
        .iter()
        .map(|(_, b)| b["recipientList"].as_array().map_or(0, Vec::len))
        .collect();
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        vec![500, 1000, 1000],
        "identical texts share requests"
    );
    assert!(
        f.sends.iter().all(|(ep, _)| ep == "ad-sms"),
        "ads go to ad-sms"
    );
    let body = &f.sends[0].1;
    let text = body["body"].as_str().expect("body");
    assert!(
        text.starts_with("(광고)") && text.contains("무료수신거부"),
        "{text}"
    );
    assert_eq!(body["sendNo"], "15881234");
    let campaign_key = body["senderGroupingKey"]
        .as_str()
        .expect("senderGroupingKey");
    assert!(!campaign_key.is_empty());
    assert!(
        f.sends
            .iter()
            .all(|(_, b)| b["senderGroupingKey"] == campaign_key)
    );

    assert_eq!(audit.len(), 2500);
    let by_phone: HashMap<&str, &Value> = audit
        .iter()
        .map(|r| (r["phone"].as_str().expect("phone"), r))
        .collect();
    // Each message's ref is its recipientGroupingKey, taken exactly once.
    for r in &audit {
        let key = r["ref"].as_str().expect("ref");
        if r["status"] == "sent" {
            assert_eq!(f.times.get(key), Some(&1), "{r}");
            let gid = r["gateway_id"].as_str().expect("gateway id");
            assert!(gid.contains('/'), "requestId/recipientSeq: {gid}");
        }
    }
    assert_eq!(by_phone[number(7).as_str()]["error"], "invalid_number");
    assert_eq!(by_phone[number(1500).as_str()]["error"], "invalid_number");
    assert_eq!(by_phone[number(9).as_str()]["error"], "opted_out");
    assert_eq!((n(&st, "sent"), n(&st, "failed")), (2497, 3), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lms_times_out_and_is_looked_up_before_any_resend() {
    let fake = Shared::default();
    fake.lock()
        .expect("fake")
        .stalls
        .extend([Some(Stall::AfterTaking), Some(Stall::WithoutTaking)]);
    let addr = spawn_fake(fake.clone()).await;
    let env = nhn_env(
        "",
        addr,
        "rate_per_sec = 100\nconcurrency = 1\ntimeout_ms = 500\nmax_attempts = 4\n\
         lookup_delay_ms = 100\n",
    )
    .await;
    env.write(
        "templates/long.txt",
        "---\nsubject: 봄 채용 안내\n---\n{{ name }}님, 안녕하세요. 올봄 새로 문을 여는 매장에서 \
         함께 일할 동료를 찾습니다. 자세한 내용은 홈페이지의 채용 공고를 확인해 주시기 바랍니다.",
    );
    let seg = env.segment_csv("seg.csv", 0, 6);
    let id = create(
        &env,
        &VARS,
        seg.to_str().expect("utf-8"),
        &["--template", "long", "--gateway", "nhn", "--no-ad"],
    )
    .await;
    let o = run_with(&env, &VARS, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 6, "{st}");

    let f = fake.lock().expect("fake");
    assert!(f.sends.iter().all(|(ep, _)| ep == "mms"), "LMS goes to mms");
    assert!(f.sends.iter().all(|(_, b)| b["title"] == "봄 채용 안내"));
    // The timed-out request was found by lookup, the stalled-and-lost one resent: once each.
    assert!(f.lookups >= 2, "looked up before resending: {}", f.lookups);
    assert_eq!(f.times.len(), 6);
    assert!(f.times.values().all(|&t| t == 1), "{:?}", f.times);
    assert_eq!(
        f.sends.len(),
        7,
        "six messages, one lost request sent again"
    );
}

/// `status`, `sent`, `error` of each number's message in `audit`.
fn by_number(audit: &[Value]) -> HashMap<String, &Value> {
    audit
        .iter()
        .map(|r| (r["phone"].as_str().expect("phone").to_string(), r))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_nhn_refuses_as_opted_out_join_the_optout_list_and_are_skipped_next_time() {
    let fake = Shared::default();
    {
        let mut f = fake.lock().expect("fake");
        f.refused.insert(number(2));
        f.refused_3006.insert(number(4));
    }
    let addr = spawn_fake(fake.clone()).await;
    let env = nhn_env("", addr, "rate_per_sec = 1000\n").await;
    let seg = env.segment_csv("seg.csv", 0, 6);
    let id = create(
        &env,
        &VARS,
        seg.to_str().expect("utf-8"),
        &["--template", "hello", "--gateway", "nhn"],
    )
    .await;
    assert_eq!(
        run_with(&env, &VARS, &["optout", "check", &number(2)])
            .await
            .code,
        1,
        "not opted out before the run"
    );
    let o = run_with(&env, &VARS, &["campaign", "run", &id, "-v"]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.all().contains("added to munja's opt-out list"),
        "{}",
        o.all()
    );
    for i in [2, 4] {
        assert!(!o.all().contains(&number(i)), "numbers masked: {}", o.all());
    }
    let audit = env.audit_json(&id).await;
    let rows = by_number(&audit);
    for i in [2, 4] {
        let r = rows[&number(i)];
        assert_eq!(
            (&r["status"], &r["error"]),
            (&json!("failed"), &json!("opted_out")),
            "{r}"
        );
        let o = run_with(&env, &VARS, &["optout", "check", &number(i)]).await;
        assert_eq!(o.code, 0, "number {i} opted out: {}", o.all());
    }
    assert_eq!(
        run_with(&env, &VARS, &["optout", "check", &number(1)])
            .await
            .code,
        1
    );

    // A second campaign on the same segment never sends to them.
    let o = run_with(
        &env,
        &VARS,
        &[
            "campaign",
            "create",
            "--name",
            "t2",
            "--segment",
            "seg",
            "--template",
            "hello",
            "--gateway",
            "nhn",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.all());
    let id2 = o.stdout.trim().to_string();
    let o = run_with(&env, &VARS, &["campaign", "run", &id2]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&id2).await;
    assert_eq!((n(&st, "sent"), n(&st, "suppressed")), (4, 2), "{st}");
    let audit = env.audit_json(&id2).await;
    let rows = by_number(&audit);
    for i in [2, 4] {
        assert_eq!(
            rows[&number(i)]["status"],
            "suppressed",
            "{}",
            rows[&number(i)]
        );
    }
    let f = fake.lock().expect("fake");
    for i in [2, 4] {
        let sends = f
            .sends
            .iter()
            .flat_map(|(_, b)| b["recipientList"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["recipientNo"] == number(i))
            .count();
        assert_eq!(
            sends, 1,
            "number {i} was sent to by the first campaign only"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_syncs_nhn_delivery_results_by_itself() {
    let fake = Shared::default();
    fake.lock().expect("fake").results_later = true;
    let addr = spawn_fake(fake.clone()).await;
    let env = nhn_env("", addr, "rate_per_sec = 1000\n").await;
    let text = std::fs::read_to_string(env.path("munja.toml")).expect("config");
    env.write(
        "munja.toml",
        &format!("{text}\n[server]\nsync_results_every_secs = 1\n"),
    );
    let seg = env.segment_csv("seg.csv", 0, 4);
    let id = create(
        &env,
        &VARS,
        seg.to_str().expect("utf-8"),
        &["--template", "hello", "--gateway", "nhn"],
    )
    .await;
    let o = run_with(&env, &VARS, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let refs: HashMap<String, String> = env
        .audit_json(&id)
        .await
        .iter()
        .map(|r| {
            let phone = r["phone"].as_str().expect("phone").to_string();
            (phone, r["ref"].as_str().expect("ref").to_string())
        })
        .collect();

    let serve = crate::delivery::Serve::start_with(&env, &VARS);
    // The server searches by itself; nothing is final at NHN yet.
    let searched = |want: u32| {
        let fake = fake.clone();
        move || fake.lock().expect("fake").window_searches >= want
    };
    super::wait_until("a first sync round", 30, searched(2)).await;
    let st = env.status(&id).await;
    assert_eq!((n(&st, "delivered"), n(&st, "undelivered")), (0, 0), "{st}");

    // Then the carrier reports: delivered, no subscriber, refused (opted out); one still open.
    report(&fake, &refs[&number(0)], "3", "1000");
    report(&fake, &refs[&number(1)], "0", "3001");
    report(&fake, &refs[&number(2)], "0", "3006");
    crate::delivery::eventually(30, "the server to record the results", || async {
        let st = env.status(&id).await;
        (n(&st, "delivered") == 1 && n(&st, "undelivered") == 2).then_some(())
    })
    .await;
    let audit = env.audit_json(&id).await;
    let rows = by_number(&audit);
    assert_eq!(rows[&number(0)]["delivery"], "delivered");
    assert_eq!(rows[&number(1)]["delivery_code"], "3001");
    assert_eq!(rows[&number(2)]["delivery_code"], "3006");
    assert!(
        rows[&number(3)]["delivery"].is_null(),
        "{}",
        rows[&number(3)]
    );
    let o = run_with(&env, &VARS, &["optout", "check", &number(2)]).await;
    assert_eq!(o.code, 0, "a 3006 result opts the number out: {}", o.all());
    assert_eq!(
        run_with(&env, &VARS, &["optout", "check", &number(1)])
            .await
            .code,
        1
    );

    let (code, log) = serve.stop().await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("delivery results synced"), "{log}");
    assert!(!log.contains(&number(2)), "numbers masked: {log}");
    assert!(!log.contains(APP_KEY) && !log.contains(SECRET), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nhn_lists_only_later_is_looked_up_again_and_never_resent() {
    // NHN takes the message, answers too late, and lists it only 1.5 s after taking it: a
    // lookup right after the timeout says "not found", which must not be believed.
    let fake = Shared::default();
    {
        let mut f = fake.lock().expect("fake");
        f.stalls.push_back(Some(Stall::AfterTaking));
        f.list_after = Duration::from_millis(1500);
    }
    let addr = spawn_fake(fake.clone()).await;
    let env = nhn_env(
        "",
        addr,
        "rate_per_sec = 100\nconcurrency = 1\ntimeout_ms = 400\nmax_attempts = 3\n\
         lookup_delay_ms = 500\n",
    )
    .await;
    let seg = env.segment_csv("seg.csv", 0, 3);
    let id = create(
        &env,
        &VARS,
        seg.to_str().expect("utf-8"),
        &["--template", "hello", "--gateway", "nhn", "--no-ad"],
    )
    .await;
    let o = run_with(&env, &VARS, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 3, "{st}");
    let f = fake.lock().expect("fake");
    assert_eq!(f.times.len(), 3, "{:?}", f.times);
    assert!(
        f.times.values().all(|&t| t == 1),
        "the message NHN listed late was not sent again: {:?}",
        f.times
    );
    assert_eq!(f.sends.len(), 3, "one request per message, none resent");
    assert!(
        f.lookups >= 3,
        "asked again until NHN listed it: {} lookups",
        f.lookups
    );
}
