//! Two gateways in failover order: A down (connection refused, then 503s), B healthy. Every
//! message goes out exactly once, A's circuit breaker opens and, once A heals, closes again after
//! its cooldown so traffic returns to it; every attempt records its gateway.

use std::net::SocketAddr;

use munja::gateway::sim::{self, SimConfig};

use super::{add_gateway, free_port, sql, wait_until};
use crate::common::{Env, Gw, n};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_gateway_fails_over_and_comes_back_after_its_cooldown() {
    // B ("sim", the default gateway of the test config) is slow enough for A's phases to show.
    let gw = Gw {
        rate: 40,
        burst: 4,
        concurrency: 4,
        ..Gw::default()
    };
    let env = Env::with(SimConfig::default(), gw, "").await;
    let a_port = free_port();
    add_gateway(
        &env,
        &format!(
            "name = \"a\"\nkind = \"http-json\"\nurl = \"http://127.0.0.1:{a_port}\"\n\
             rate_per_sec = 1000\nburst = 20\nconcurrency = 4\ntimeout_ms = 1000\n\
             breaker_failures = 3\nbreaker_cooldown_secs = 1\n"
        ),
    );
    let seg = env.segment_csv("seg.csv", 0, 300);
    let id = env
        .campaign(&seg, "hello", &["--gateway", "a", "--gateway", "sim"])
        .await;
    let mut run = env.cmd(&["campaign", "run", &id]);
    let child = tokio::task::spawn_blocking(move || run.output());

    // Phase 1: nothing listens on A's port; B takes the traffic.
    wait_until("B to take traffic while A refuses", 30, || {
        env.sim.stats().accepted >= 20
    })
    .await;
    // Phase 2: A answers, but only 503s.
    let a_cfg = SimConfig {
        fail_rate: 1.0,
        ..SimConfig::default()
    };
    let a = sim::spawn(SocketAddr::from(([127, 0, 0, 1], a_port)), a_cfg)
        .await
        .expect("A on its port");
    wait_until("a probe to meet A's 503", 30, || a.stats().faults_503 >= 1).await;
    // Phase 3: A heals; after its cooldown a probe closes the breaker and traffic returns.
    a.set_faults(0.0, 0.0, 0.0);
    let out = child.await.expect("join").expect("munja run");
    let out = crate::common::Out::from(out);
    assert_eq!(out.code, 0, "{}", out.all());

    let (sa, sb) = (a.stats(), env.sim.stats());
    assert!(
        sa.accepted > 0,
        "A's breaker closed again and took traffic: {sa:?}"
    );
    assert!(sb.accepted > 0, "B took the traffic while A was down");
    assert_eq!(sa.accepted + sb.accepted, 300, "A {sa:?}\nB {sb:?}");
    assert_eq!(sa.distinct_numbers + sb.distinct_numbers, 300);
    assert_eq!(
        (sa.numbers_accepted_twice, sb.numbers_accepted_twice),
        (0, 0)
    );
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 300, "{st}");

    if env.pg.is_none() {
        let rows = sql(
            &env,
            "SELECT COALESCE(gateway, 'none'), COUNT(*) FROM attempts GROUP BY 1 ORDER BY 1",
        )
        .await;
        let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            names,
            vec!["a", "sim"],
            "every attempt names its gateway: {rows:?}"
        );
        let sent_at = sql(
            &env,
            "SELECT gateway, COUNT(*) FROM messages WHERE state = 'sent' GROUP BY 1 ORDER BY 1",
        )
        .await;
        let counts: Vec<u64> = sent_at.iter().map(|r| r[1].parse().unwrap_or(0)).collect();
        assert_eq!(counts, vec![sa.accepted, sb.accepted], "{sent_at:?}");
    }
}
