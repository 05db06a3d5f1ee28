//! Tests of the gateway simulator: its compact sets and store, and the whole protocol driven
//! through [`HttpJsonGateway`] with every fault.

use std::collections::HashSet;

use super::store::{CompactSet, Store};
use super::*;
use crate::gateway::client::{Attempt, HttpJsonGateway, Lookup, OutMessage, Outcome};

async fn sim(cfg: SimConfig) -> SimHandle {
    spawn("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap()
}

fn client(sim: &SimHandle, key: Option<&str>, timeout_ms: u64) -> HttpJsonGateway {
    HttpJsonGateway::new(
        "sim",
        &sim.url(),
        key.map(str::to_owned),
        Duration::from_millis(timeout_ms),
        8,
    )
    .unwrap()
}

fn msg(r: &str, to: &str) -> OutMessage {
    OutMessage {
        msg_ref: r.into(),
        to: to.into(),
        from: "15881234".into(),
        kind: "SMS".into(),
        subject: None,
        text: "(광고) 봄 세일 무료수신거부 0801234567".into(),
        ad: true,
        campaign: "spring".into(),
    }
}

/// A simulator with `cfg`, a client of it that gives up after `timeout_ms`, and the attempt of
/// the client's first send (ref `r1`).
async fn first_send(cfg: SimConfig, timeout_ms: u64) -> (SimHandle, HttpJsonGateway, Attempt) {
    let sim = sim(cfg).await;
    let gw = client(&sim, None, timeout_ms);
    let a = gw.send(&msg("r1", "01012345678")).await;
    (sim, gw, a)
}

fn accepted(o: &Outcome) -> (String, bool) {
    match o {
        Outcome::Accepted {
            gateway_id,
            duplicate,
        } => (gateway_id.clone(), *duplicate),
        other => panic!("expected accepted, got {other:?}"),
    }
}

#[test]
fn compact_set_behaves_like_a_set() {
    let mut set = CompactSet::default();
    let mut reference = HashSet::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..40_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = if i % 5 == 0 { x % 1000 } else { x };
        assert_eq!(set.insert(key), reference.insert(key), "insert {key}");
    }
    assert_eq!(set.len(), reference.len());
    assert!(set.sorted.len() > CompactSet::MIN_RECENT, "merges happened");
    assert!(set.sorted.windows(2).all(|w| w[0] < w[1]));
    for key in &reference {
        assert!(set.contains(*key));
    }
    assert!(!set.contains(1001) || reference.contains(&1001));
}

#[test]
fn store_counts_numbers_and_doubles() {
    let mut s = Store::default();
    assert!(!s.record("r1", "c1", "01011112222").1);
    assert!(s.record("r1", "c1", "01011112222").1);
    assert!(!s.record("r2", "c1", "01011112222").1);
    assert!(!s.record("r3", "c1", "01011112222").1);
    assert!(!s.record("r4", "c2", "01011112222").1);
    assert!(!s.record("r5", "c2", "01033334444").1);
    assert_eq!(s.accepted, 5);
    assert_eq!(s.duplicate_replays, 1);
    assert_eq!(s.distinct_numbers, 2);
    assert_eq!(
        s.numbers_accepted_twice, 1,
        "counted once per (campaign, number)"
    );
    s.count_second(1000, 3);
    s.count_second(1000, 2);
    s.count_second(1001, 1);
    s.count_second(1000 + SECONDS_KEPT as i64, 1);
    assert_eq!(s.max_per_second, 5);
    assert_eq!(
        s.recent_seconds(1000 + SECONDS_KEPT as i64),
        vec![(1001, 1), (1120, 1)]
    );
}

#[test]
fn config_debug_hides_the_key() {
    let cfg = SimConfig {
        api_key: Some("s3cr3t".into()),
        ..SimConfig::default()
    };
    let dbg = format!("{cfg:?}");
    assert!(
        !dbg.contains("s3cr3t") && dbg.contains("<redacted>"),
        "{dbg}"
    );
}

#[tokio::test]
async fn accept_duplicate_and_lookup() {
    let sim = sim(SimConfig::default()).await;
    let gw = client(&sim, None, 5000);
    let first = gw.send(&msg("spring:1", "01012345678")).await;
    assert_eq!(first.http_status, Some(200));
    let (id, dup) = accepted(&first.outcome);
    assert!(!dup);
    assert_eq!(first.outcome.code(), "accepted");
    let again = gw.send(&msg("spring:1", "01012345678")).await;
    assert_eq!(accepted(&again.outcome), (id.clone(), true));
    assert_eq!(again.outcome.code(), "duplicate");
    assert_eq!(
        gw.lookup("spring:1").await,
        Lookup::Found {
            gateway_id: id,
            status: "accepted".into()
        }
    );
    assert_eq!(gw.lookup("spring:404").await, Lookup::NotFound);
    // Refs with characters that need escaping in a path still round-trip.
    let odd = "spring/2 ?#%";
    let (odd_id, _) = accepted(&gw.send(&msg(odd, "01012340000")).await.outcome);
    assert_eq!(
        gw.lookup(odd).await,
        Lookup::Found {
            gateway_id: odd_id,
            status: "accepted".into()
        }
    );
    let st = sim.stats();
    assert_eq!(st.accepted, 2);
    assert_eq!(st.duplicate_replays, 1);
    assert_eq!(st.distinct_numbers, 2);
    assert_eq!(st.numbers_accepted_twice, 0);
    assert_eq!(st.requests, 6);
    assert!(st.max_per_second >= 1);
    assert_eq!(st.per_second.iter().map(|p| p.1).sum::<u64>(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn api_key_required_when_configured() {
    let sim = sim(SimConfig {
        api_key: Some("k-123".into()),
        ..SimConfig::default()
    })
    .await;
    let anonymous = client(&sim, None, 5000);
    let wrong = client(&sim, Some("nope"), 5000);
    let good = client(&sim, Some("k-123"), 5000);
    let a = anonymous.send(&msg("r1", "01012345678")).await;
    assert!(matches!(a.outcome, Outcome::Halt { .. }), "{a:?}");
    assert_eq!(a.http_status, Some(401));
    assert!(!a.outcome.is_final() && !a.outcome.is_transient());
    let w = wrong.send_batch(&[msg("r1", "01012345678")]).await;
    assert_eq!(w[0].outcome.code(), "unauthorized");
    if let Outcome::Halt { message, .. } = &w[0].outcome {
        assert!(!message.contains("nope"), "{message}");
    }
    assert!(matches!(
        anonymous.lookup("r1").await,
        Lookup::Unavailable { .. }
    ));
    accepted(&good.send(&msg("r1", "01012345678")).await.outcome);
    sim.set_api_key(None);
    let (_, dup) = accepted(&anonymous.send(&msg("r1", "01012345678")).await.outcome);
    assert!(dup);
    let st = sim.stats();
    assert_eq!((st.unauthorized, st.accepted), (3, 1));
}

#[tokio::test]
async fn outage_then_heal() {
    let cfg = SimConfig {
        fail_rate: 1.0,
        ..SimConfig::default()
    };
    let (sim, gw, a) = first_send(cfg, 5000).await;
    assert_eq!(
        a.outcome,
        Outcome::Transient {
            code: "http_503".into()
        }
    );
    assert_eq!(a.http_status, Some(503));
    let b = gw
        .send_batch(&[msg("r2", "01012345679"), msg("r3", "01012345670")])
        .await;
    assert!(b.iter().all(|x| x.outcome.code() == "http_503"));
    assert_eq!(
        gw.lookup("r1").await,
        Lookup::NotFound,
        "faults come before acceptance"
    );
    sim.set_faults(0.0, 0.0, 0.0);
    accepted(&gw.send(&msg("r1", "01012345678")).await.outcome);
    let st = sim.stats();
    assert_eq!((st.faults_503, st.accepted), (2, 1));
}

#[tokio::test]
async fn throttling_reports_retry_after() {
    let cfg = SimConfig {
        throttle_rate: 1.0,
        ..SimConfig::default()
    };
    let (sim, gw, a) = first_send(cfg, 5000).await;
    assert_eq!(
        a.outcome,
        Outcome::Throttled {
            retry_after: Some(Duration::from_secs(1))
        }
    );
    let b = gw.send_batch(&[msg("r2", "01012345679")]).await;
    assert_eq!(b[0].outcome, a.outcome);
    let st = sim.stats();
    assert_eq!((st.faults_429, st.accepted), (2, 0));
}

#[tokio::test]
async fn timeout_is_in_doubt_but_recorded() {
    let cfg = SimConfig {
        timeout_rate: 1.0,
        stall_ms: 1000,
        ..SimConfig::default()
    };
    let (sim, gw, a) = first_send(cfg, 200).await;
    assert_eq!(
        a.outcome,
        Outcome::InDoubt {
            code: "timeout".into()
        }
    );
    assert_eq!(a.http_status, None);
    assert!(a.latency < Duration::from_millis(900), "{:?}", a.latency);
    let b = gw
        .send_batch(&[msg("r2", "01012345679"), msg("r3", "01012345670")])
        .await;
    assert!(b.iter().all(|x| x.outcome.code() == "timeout"));
    for r in ["r1", "r2", "r3"] {
        assert!(
            matches!(gw.lookup(r).await, Lookup::Found { .. }),
            "{r} was accepted before the stall"
        );
    }
    sim.set_faults(0.0, 0.0, 0.0);
    let (_, dup) = accepted(&gw.send(&msg("r1", "01012345678")).await.outcome);
    assert!(
        dup,
        "the retry after an in-doubt attempt is a replay, not a second send"
    );
    let st = sim.stats();
    assert_eq!(
        (st.faults_timeout, st.accepted, st.duplicate_replays),
        (2, 3, 1)
    );
    sim.shutdown().await;
}

/// Accepted, then answered with a proxy's error page, broken off, or left out of the batch
/// results: the client cannot tell, so it is in doubt, and the lookup finds it.
#[tokio::test]
async fn garbled_reset_and_omitted_answers_are_in_doubt_and_found_by_lookup() {
    for (cfg, code) in [
        (
            SimConfig {
                garble_rate: 1.0,
                ..SimConfig::default()
            },
            "bad_response",
        ),
        (
            SimConfig {
                reset_rate: 1.0,
                ..SimConfig::default()
            },
            "",
        ),
        (
            SimConfig {
                omit_rate: 1.0,
                ..SimConfig::default()
            },
            "missing_result",
        ),
    ] {
        let sim = sim(cfg.clone()).await;
        let gw = client(&sim, None, 5000);
        let batch = gw
            .send_batch(&[msg("b1", "01011112222"), msg("b2", "01011113333")])
            .await;
        let mut outcomes: Vec<Outcome> = batch.into_iter().map(|a| a.outcome).collect();
        if cfg.omit_rate == 0.0 {
            outcomes.push(gw.send(&msg("s1", "01011114444")).await.outcome);
        }
        for o in &outcomes {
            assert!(matches!(o, Outcome::InDoubt { .. }), "{cfg:?}: {o:?}");
            if !code.is_empty() {
                assert_eq!(o.code(), code);
            }
        }
        for r in ["b1", "b2"] {
            assert!(
                matches!(gw.lookup(r).await, Lookup::Found { .. }),
                "{cfg:?}"
            );
        }
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_fixed_answer_is_given_to_every_send_and_accepts_nothing() {
    let sim = sim(SimConfig {
        fixed_answer: Some(FixedAnswer {
            status: 302,
            location: Some("http://127.0.0.1:9/v1/messages".into()),
            body: String::new(),
        }),
        ..SimConfig::default()
    })
    .await;
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/v1/messages/batch", sim.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "http://127.0.0.1:9/v1/messages");
    let a = client(&sim, None, 5000)
        .send(&msg("r1", "01012345678"))
        .await;
    assert_eq!(a.outcome.code(), "redirect");
    let st = sim.stats();
    assert_eq!((st.accepted, st.requests), (0, 2));
}

#[tokio::test]
async fn invalid_numbers_are_rejected() {
    let sim = sim(SimConfig {
        invalid_prefix: Some("0109".into()),
        ..SimConfig::default()
    })
    .await;
    let gw = client(&sim, None, 5000);
    let a = gw.send(&msg("r1", "01099998888")).await;
    assert_eq!(a.http_status, Some(400));
    assert_eq!(a.outcome.code(), "invalid_number");
    assert!(a.outcome.is_final());
    let b = gw.send(&msg("r2", "010-1234-5678")).await;
    assert_eq!(b.outcome.code(), "invalid_number");
    let mut bad_sender = msg("r3", "01012345678");
    bad_sender.from = "1588-1234".into();
    assert_eq!(gw.send(&bad_sender).await.outcome.code(), "invalid_sender");
    let mut bad_type = msg("r4", "01012345678");
    bad_type.kind = "MMS".into();
    assert_eq!(gw.send(&bad_type).await.outcome.code(), "invalid_request");
    assert_eq!(gw.lookup("r1").await, Lookup::NotFound);
    assert_eq!(sim.stats().rejected, 4);
}

#[tokio::test]
async fn batch_results_in_order() {
    let sim = sim(SimConfig {
        invalid_prefix: Some("0109".into()),
        max_batch: 5,
        ..SimConfig::default()
    })
    .await;
    let gw = client(&sim, None, 5000);
    accepted(&gw.send(&msg("b2", "01022222222")).await.outcome);
    let batch = [
        msg("b1", "01011111111"),
        msg("b2", "01022222222"),
        msg("b3", "01099999999"),
        msg("b4", "0104444444x"),
        msg("b5", "01055555555"),
    ];
    let out = gw.send_batch(&batch).await;
    let codes: Vec<_> = out.iter().map(|a| a.outcome.code().to_owned()).collect();
    assert_eq!(
        codes,
        [
            "accepted",
            "duplicate",
            "invalid_number",
            "invalid_number",
            "accepted"
        ]
    );
    assert!(out.iter().all(|a| a.http_status == Some(200)));
    let (b2_first, _) = accepted(&gw.send(&msg("b2", "01022222222")).await.outcome);
    assert_eq!(accepted(&out[1].outcome).0, b2_first);
    let too_big: Vec<_> = (0..6)
        .map(|i| msg(&format!("x{i}"), "01012345678"))
        .collect();
    let out = gw.send_batch(&too_big).await;
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|a| a.outcome.code() == "invalid_request"));
    let st = sim.stats();
    assert_eq!(st.accepted, 3);
    assert_eq!(st.duplicate_replays, 2);
    assert_eq!(st.rejected, 3);
    assert_eq!(st.requests, 4);
}

#[tokio::test]
async fn same_number_under_two_refs_is_a_double_send() {
    let sim = sim(SimConfig::default()).await;
    let gw = client(&sim, None, 5000);
    accepted(&gw.send(&msg("a", "01012345678")).await.outcome);
    accepted(&gw.send(&msg("a", "01012345678")).await.outcome);
    assert_eq!(
        sim.stats().numbers_accepted_twice,
        0,
        "a replay is not a double send"
    );
    accepted(&gw.send(&msg("b", "01012345678")).await.outcome);
    let mut other_campaign = msg("c", "01012345678");
    other_campaign.campaign = "summer".into();
    accepted(&gw.send(&other_campaign).await.outcome);
    let st = sim.stats();
    assert_eq!(st.numbers_accepted_twice, 1);
    assert_eq!(st.distinct_numbers, 1);
    assert_eq!(st.accepted, 3);
}

#[tokio::test]
async fn malformed_requests_get_invalid_request() {
    let sim = sim(SimConfig::default()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/messages", sim.url());
    let cases: [(Option<&str>, &str); 4] = [
        (Some("r1"), "{not json"),
        (Some("r1"), r#"{"ref":"r1","to":"01012345678"}"#),
        (
            None,
            r#"{"ref":"r1","to":"01012345678","from":"1588","type":"SMS","text":"t","ad":true,"campaign":"c"}"#,
        ),
        (
            Some("r2"),
            r#"{"ref":"r1","to":"01012345678","from":"1588","type":"SMS","text":"t","ad":true,"campaign":"c"}"#,
        ),
    ];
    for (key, body) in cases {
        let mut req = http.post(&url).body(body.to_owned());
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request", "{body}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let resp = http
        .post(format!("{}/v1/messages/batch", sim.url()))
        .body(r#"{"messages": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .get(format!("{}/nowhere", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(sim.stats().accepted, 0);
}

#[tokio::test]
async fn stats_endpoint_json_shape() {
    let sim = sim(SimConfig::default()).await;
    let gw = client(&sim, None, 5000);
    accepted(&gw.send(&msg("r1", "01012345678")).await.outcome);
    let v: serde_json::Value = reqwest::get(format!("{}/stats", sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "accepted",
        "duplicate_replays",
        "rejected",
        "faults_503",
        "faults_429",
        "faults_timeout",
        "unauthorized",
        "distinct_numbers",
        "numbers_accepted_twice",
        "max_per_second",
        "per_second",
        "requests",
    ];
    want.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["per_second"][0][1], 1);
    assert!(v["per_second"][0][0].as_i64().unwrap() > 1_600_000_000);
    let parsed: SimStats = serde_json::from_value(v).unwrap();
    assert_eq!(parsed.accepted, 1);
    assert_eq!(parsed.requests, 1, "/stats itself is not counted");
}

#[tokio::test]
async fn throughput_batches_stay_exactly_once() {
    let sim = sim(SimConfig::default()).await;
    let gw = client(&sim, None, 10_000);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..5 {
                let msgs: Vec<_> = (0..1000)
                    .map(|i| msg(&format!("t{t}b{b}i{i}"), &format!("010{t}{b}{i:06}")))
                    .collect();
                let out = gw.send_batch(&msgs).await;
                assert!(out.iter().all(|a| a.outcome.code() == "accepted"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let st = sim.stats();
    assert_eq!(st.accepted, 20_000);
    assert_eq!(st.distinct_numbers, 20_000);
    assert_eq!(st.numbers_accepted_twice, 0);
    // Debug builds are slow; this only guards against pathological slowness.
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}
