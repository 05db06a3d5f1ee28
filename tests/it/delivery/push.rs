//! Reports pushed to `munja serve` as http-json and Kannel send them: twice, out of order,
//! before the send's own commit, for unknown refs, and with wrong secrets.

use serde_json::{Value, json};

use super::*;
use crate::common::{Env, Gw, n};
use munja::tools::sim::SimConfig;

async fn post(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("post");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("get");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn kannel_url(serve: &Serve, token: &str, r: &str, kind: u32, reply: &str) -> String {
    munja::run::delivery::kannel_dlr_url(&format!("{}/v1/dlr/kannel", serve.base), Some(token), r)
        .replace("%d", &kind.to_string())
        .replace("%A", reply)
        .replace("%T", "1795776555")
}

#[tokio::test]
async fn reports_twice_out_of_order_and_unknown_never_move_a_final_state() {
    let env = Env::new(SimConfig::default()).await;
    let (id, refs) = sent_campaign(&env, 4, "http://127.0.0.1:9").await;
    let serve = Serve::start(&env);
    let sim_url = format!("{}/v1/dlr/sim", serve.base);

    // Twice: the second is a duplicate; a later "failed" does not undo "delivered".
    let delivered = json!({"ref": refs[0], "gateway_id": "g0", "status": "delivered", "error": null,
                           "at": "2026-11-27T01:02:03Z"});
    let (code, body) = post(&sim_url, Some(SIM_TOKEN), delivered.clone()).await;
    assert_eq!((code, body["applied"].as_i64()), (200, Some(1)), "{body}");
    let (_, body) = post(&sim_url, Some(SIM_TOKEN), delivered).await;
    assert_eq!(body["duplicate"], 1, "{body}");
    let failed = json!({"ref": refs[0], "status": "failed", "error": "expired"});
    let (_, body) = post(&sim_url, Some(SIM_TOKEN), failed).await;
    assert_eq!(body["ignored"], 1, "{body}");
    // An array: an intermediate "accepted", then the final "failed" with the carrier's code.
    let two = json!([{"ref": refs[1], "status": "accepted"},
                     {"ref": refs[1], "status": "failed", "error": "3001"}]);
    let (_, body) = post(&sim_url, Some(SIM_TOKEN), two).await;
    assert_eq!(
        (body["intermediate"].as_i64(), body["applied"].as_i64()),
        (Some(1), Some(1)),
        "{body}"
    );

    // Kannel, out of order: the delivery (type 1) before the SMSC's acceptance (type 8).
    let (code, _) = get(&kannel_url(&serve, KANNEL_TOKEN, &refs[2], 1, "")).await;
    assert_eq!(code, 200);
    let (_, body) = get(&kannel_url(&serve, KANNEL_TOKEN, &refs[2], 8, "ACK%2F")).await;
    assert_eq!(body["intermediate"], 1, "{body}");

    // Unknown refs are answered, counted and logged, and change nothing.
    let (code, body) = get(&kannel_url(&serve, KANNEL_TOKEN, "feedfacecafe-77", 1, "")).await;
    assert_eq!((code, body["unknown"].as_i64()), (200, Some(1)), "{body}");
    let log = serve.log();
    assert!(log.contains("ref no message has"), "{log}");

    // Secrets: wrong or missing token 401, a gateway without one 403, no such gateway 404.
    let bad = json!({"ref": refs[3], "status": "delivered"});
    assert_eq!(post(&sim_url, Some("wrong"), bad.clone()).await.0, 401);
    assert_eq!(post(&sim_url, None, bad.clone()).await.0, 401);
    assert_eq!(
        get(&kannel_url(&serve, "wrong", &refs[3], 1, "")).await.0,
        401
    );
    let open = format!("{}/v1/dlr/open", serve.base);
    assert_eq!(post(&open, Some(SIM_TOKEN), bad.clone()).await.0, 403);
    let nosuch = format!("{}/v1/dlr/nosuch", serve.base);
    assert_eq!(post(&nosuch, Some(SIM_TOKEN), bad).await.0, 404);
    // The admin of munja never sees a secret in the log.
    let log = serve.log();
    assert!(
        !log.contains(SIM_TOKEN) && !log.contains(KANNEL_TOKEN),
        "{log}"
    );

    let st = super::ok(&env, &["campaign", "status", &id, "--json"]).await;
    let st: Value = serde_json::from_str(&st.stdout).expect("status json");
    assert_eq!(
        (n(&st, "sent"), n(&st, "delivered"), n(&st, "undelivered")),
        (4, 2, 1),
        "{st}"
    );
    let human = super::ok(&env, &["campaign", "status", &id]).await;
    assert!(
        human
            .stdout
            .contains("delivered 2, undelivered 1, none yet 1"),
        "{}",
        human.all()
    );

    let rows = audit(&env, &id, None).await;
    assert_eq!(rows[0]["delivery"], "delivered");
    assert_eq!(rows[0]["delivered_at"], "2026-11-27T01:02:03.000Z");
    assert_eq!(
        (
            rows[1]["delivery"].as_str(),
            rows[1]["delivery_code"].as_str()
        ),
        (Some("undelivered"), Some("3001"))
    );
    assert_eq!(rows[2]["delivery"], "delivered");
    assert!(rows[3]["delivery"].is_null());
    assert_eq!(
        refs_of(&audit(&env, &id, Some("delivered")).await),
        [refs[0].clone(), refs[2].clone()]
    );
    assert_eq!(
        refs_of(&audit(&env, &id, Some("undelivered")).await),
        [refs[1].clone()]
    );
    let csv = super::ok(&env, &["audit", "--campaign", &id, "--format", "csv"]).await;
    assert!(csv.stdout.starts_with("ref,phone,status,attempts,gateway,gateway_id,error,last_attempt_at,type,bytes,delivery,delivery_code,delivered_at\n"), "{}", csv.stdout);
    let bad = run(&env, &["audit", "--campaign", &id, "--status", "arrived"]).await;
    assert!(
        bad.code != 0 && bad.stderr.contains("delivered or undelivered"),
        "{}",
        bad.all()
    );

    let (code, log) = serve.stop().await;
    assert_eq!(code, 0, "graceful stop on SIGTERM: {log}");
    assert!(log.contains("1 for unknown refs"), "{log}");
}

fn refs_of(rows: &[Value]) -> Vec<String> {
    super::refs(rows)
}

/// The gateway accepts every message but munja never hears back (timeouts, lookups down): the
/// messages are in doubt when their delivery reports arrive. The reports are kept, and the run
/// that settles the messages as sent does not undo them.
#[tokio::test]
async fn a_report_before_the_send_commits_is_kept_when_it_commits() {
    let sim = crate::common::lookups_down();
    let gw = Gw::timing_out(200, 2);
    let env = Env::with(sim, gw, "max_consecutive_failures = 100000").await;
    let seg = env.segment_csv("seg.csv", 0, 3);
    let id = env.campaign(&seg, "hello", &[]).await;
    add_gateways(&env, "http://127.0.0.1:9");
    let o = run(&env, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    let rows = audit(&env, &id, Some("in_doubt")).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let refs = super::refs(&rows);

    let serve = Serve::start(&env);
    let url = format!("{}/v1/dlr/sim", serve.base);
    for (i, r) in refs.iter().enumerate() {
        let status = if i == 2 { "failed" } else { "delivered" };
        let (code, body) = post(
            &url,
            Some(SIM_TOKEN),
            json!({"ref": r, "status": status, "error": "E1"}),
        )
        .await;
        assert_eq!((code, body["applied"].as_i64()), (200, Some(1)), "{body}");
    }
    // The send commits now: lookups find every message, and the reports stay.
    env.sim.set_lookups(true);
    env.sim.set_faults(0.0, 0.0, 0.0);
    let o = run(&env, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = super::ok(&env, &["campaign", "status", &id, "--json"]).await;
    let st: Value = serde_json::from_str(&st.stdout).expect("status json");
    assert_eq!(
        (n(&st, "sent"), n(&st, "delivered"), n(&st, "undelivered")),
        (3, 2, 1),
        "{st}"
    );
    assert_eq!(env.sim.stats().accepted, 3, "nothing sent twice");
    assert_eq!(serve.stop().await.0, 0);
}
